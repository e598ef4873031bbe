"""CDI hooks from `minictr run --device VENDOR/CLASS=NAME`: the spec's hooks are kept at their
OCI stage (docs/gpus.md, "CDI") and actually run there, each once, in order."""
import json
import os

import pytest

pytestmark = pytest.mark.root

STAGES = ("createRuntime", "createContainer", "poststart", "poststop")


def test_cdi_hooks_run_at_their_stages(mc, tmp_path):
    log = tmp_path / "hooks.log"
    script = tmp_path / "hook.sh"
    # each hook logs its stage and the status it read from its stdin (the OCI state)
    script.write_text("#!/bin/sh\nread state\nstatus=$(echo \"$state\" | tr , '\\n' | "
                      "grep '\"status\"' | cut -d'\"' -f4)\n"
                      f"echo \"$1 $status\" >> {log}\n")
    script.chmod(0o755)
    cdi = tmp_path / "cdi"
    cdi.mkdir()
    (cdi / "test.json").write_text(json.dumps({
        "cdiVersion": "0.6.0", "kind": "example.com/marker",
        "devices": [{"name": "one", "containerEdits": {
            "env": ["MARKER_DEVICE=one"],
            "hooks": [{"hookName": s, "path": str(script), "args": ["hook.sh", s]}
                      for s in STAGES[2:]]}}],
        "containerEdits": {
            "hooks": [{"hookName": s, "path": str(script), "args": ["hook.sh", s]}
                      for s in STAGES[:2]]}}))
    config = tmp_path / "config.toml"
    config.write_text(f"[nvidia]\ncdi-spec-dirs = [{json.dumps(str(cdi))}]\n")
    env = dict(os.environ, MINICTR_CONFIG=str(config))
    res = mc("run", "--rm", "--device", "example.com/marker=one", "busybox:test",
             "sh", "-c", "echo $MARKER_DEVICE", env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "one\n"                   # the device's edits were applied
    lines = log.read_text().splitlines()
    assert [line.split()[0] for line in lines] == list(STAGES), lines
    assert dict(line.split() for line in lines)["createContainer"] == "creating", lines
    # an unknown device of the kind is an error listing the known ones, and runs nothing
    log.unlink()
    res = mc("run", "--rm", "--device", "example.com/marker=two", "busybox:test", "true",
             env=env)
    assert res.returncode != 0 and "example.com/marker=one" in res.stderr, res.stderr
    assert not log.exists()
