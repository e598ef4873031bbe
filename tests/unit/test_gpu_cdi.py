"""CDI spec generation and reading (minictr/gpu/cdi.py), and the `gpus` / `cdi` commands."""
import argparse
import json
import os
import sys

import pytest
import yaml

from minictr import cli
from minictr.errors import GPUError
from minictr.gpu import cdi, discover

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "gpu"))
import fakedriver  # noqa: E402


@pytest.fixture
def fake(tmp_path):
    return fakedriver.build(str(tmp_path / "drv"), mig=True)


def test_generated_spec_has_devices_by_index_uuid_mig_and_all(fake):
    doc = json.loads(cdi.generate(discover.discover(fake.roots), fmt="json"))
    assert doc["cdiVersion"] == "1.1.0" and doc["kind"] == "nvidia.com/gpu"
    names = [d["name"] for d in doc["devices"]]
    assert names == ["0", fakedriver.GPUS[1][2], "1", fakedriver.GPUS[0][2], "1:0", "1:1", "all"]
    dev0 = doc["devices"][0]["containerEdits"]["deviceNodes"]
    assert [(n["path"], n["major"], n["minor"]) for n in dev0] == [("/dev/nvidia1", 195, 1)]
    common = doc["containerEdits"]
    assert "NVIDIA_VISIBLE_DEVICES=void" in common["env"]
    assert {n["path"] for n in common["deviceNodes"]} >= {"/dev/nvidiactl", "/dev/nvidia-uvm"}
    targets = {m["containerPath"] for m in common["mounts"]}
    assert "/usr/lib/x86_64-linux-gnu/libcuda.so.580.65.06" in targets
    assert "/usr/lib/x86_64-linux-gnu/libcuda.so.1" in targets
    assert not any("570.00.00" in m["hostPath"] for m in common["mounts"])


def test_yaml_and_json_read_back_to_the_same_edits(fake, tmp_path):
    d = discover.discover(fake.roots)
    for fmt, name in (("yaml", "nvidia.yaml"), ("json", "nvidia.json")):
        spec_dir = tmp_path / fmt
        spec_dir.mkdir()
        (spec_dir / name).write_text(cdi.generate(d, fmt=fmt))
    a = cdi.edits_for_names(["nvidia.com/gpu=0"], [str(tmp_path / "yaml")])
    b = cdi.edits_for_names(["nvidia.com/gpu=0"], [str(tmp_path / "json")])
    assert a == b
    paths = [n.path for n in a.device_nodes]
    assert "/dev/nvidia1" in paths and "/dev/nvidia0" not in paths and "/dev/nvidiactl" in paths
    assert all(n.type == "c" for n in a.device_nodes)
    assert any(m.container_path == "/usr/lib/x86_64-linux-gnu/libcuda.so.1" for m in a.mounts)
    assert "NVIDIA_VISIBLE_DEVICES=void" in a.env
    both = cdi.edits_for_names(["nvidia.com/gpu=0", "nvidia.com/gpu=1"], [str(tmp_path / "yaml")])
    # the spec-level edits come once, each device's nodes once
    assert [n.path for n in both.device_nodes].count("/dev/nvidiactl") == 1
    assert {"/dev/nvidia0", "/dev/nvidia1"} <= {n.path for n in both.device_nodes}
    assert yaml.safe_load(cdi.generate(d)) == json.loads(cdi.generate(d, fmt="json"))


def _spec(kind, devices, common=None):
    return {"cdiVersion": "0.6.0", "kind": kind, "devices": devices,
            "containerEdits": common or {}}


def test_later_directory_wins_and_hooks_keep_their_stage(tmp_path):
    first, second = tmp_path / "etc", tmp_path / "run"
    first.mkdir()
    second.mkdir()
    node = {"path": "/dev/fake0", "type": "c", "major": 1, "minor": 3}
    (first / "a.json").write_text(json.dumps(_spec("example.com/dev", [
        {"name": "x", "containerEdits": {"env": ["FROM=etc"], "deviceNodes": [node]}}])))
    (second / "b.yaml").write_text(yaml.safe_dump(_spec("example.com/dev", [
        {"name": "x", "containerEdits": {"env": ["FROM=run"], "deviceNodes": [node]}}],
        {"hooks": [{"hookName": "createContainer", "path": "/bin/true", "args": ["true"]}],
         "additionalGids": [44],
         "mounts": [{"hostPath": "/etc/hosts", "containerPath": "/etc/hosts2"}]})))
    e = cdi.edits_for_names(["example.com/dev=x"], [str(first), str(second)])
    assert "FROM=run" in e.env and "FROM=etc" not in e.env
    assert [h.to_cdi() for h in e.hooks] == [
        {"hookName": "createContainer", "path": "/bin/true", "args": ["true"]}]
    assert e.additional_gids == (44,)
    m = e.mounts[0]
    assert (m.container_path, m.host_path, m.type, m.options) == \
        ("/etc/hosts2", "/etc/hosts", "bind", ("rbind",))
    assert (e.device_nodes[0].major, e.device_nodes[0].minor) == (1, 3)


def test_device_numbers_are_read_from_the_host_node_when_absent(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps(_spec("example.com/null", [
        {"name": "n", "containerEdits": {"deviceNodes": [{"path": "/dev/null"}]}}])))
    node = cdi.edits_for_names(["example.com/null=n"], [str(tmp_path)]).device_nodes[0]
    assert (node.type, node.major, node.minor) == ("c", 1, 3)


def test_unknown_device_lists_known_ones(fake, tmp_path):
    (tmp_path / "nvidia.json").write_text(cdi.generate(discover.discover(fake.roots), "json"))
    with pytest.raises(GPUError) as err:
        cdi.edits_for_names(["nvidia.com/gpu=7"], [str(tmp_path)])
    assert "nvidia.com/gpu=0" in str(err.value) and "nvidia.com/gpu=all" in str(err.value)
    with pytest.raises(GPUError, match="no spec for amd.com/gpu"):
        cdi.edits_for_names(["amd.com/gpu=0"], [str(tmp_path)])
    with pytest.raises(GPUError, match="not a CDI device name"):
        cdi.edits_for_names(["gpu0"], [str(tmp_path)])


def test_broken_spec_and_bad_hook_are_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("kind: [unclosed\n")
    with pytest.raises(GPUError, match="cannot parse CDI spec"):
        cdi.edits_for_names(["x.com/y=z"], [str(tmp_path)])
    (tmp_path / "bad.yaml").unlink()
    (tmp_path / "hook.json").write_text(json.dumps(_spec("x.com/y", [
        {"name": "z", "containerEdits": {"hooks": [{"hookName": "whenever", "path": "/x"}]}}])))
    with pytest.raises(GPUError, match="hookName"):
        cdi.edits_for_names(["x.com/y=z"], [str(tmp_path)])


def _args(fake, **kw):
    """The parsed arguments cmd_gpus / cmd_cdi receive (built directly: the commands, not
    argparse, are under test)."""
    return argparse.Namespace(nvidia_driver_root=fake.driver_root, nvidia_dev_root=fake.dev_root,
                              nvidia_proc_root=fake.proc_root, **kw)


def test_cli_gpus_lists_index_minor_uuid(fake, capsys):
    assert cli.cmd_gpus(_args(fake, json=False)) == 0
    out, err = capsys.readouterr()
    assert "driver 580.65.06  CUDA 13.0" in out
    lines = out.splitlines()
    assert lines[1].split()[:2] == ["INDEX", "MINOR"]
    assert lines[2].split()[:3] == ["0", "1", fakedriver.GPUS[1][2]]
    assert "570.00.00" in err
    assert cli.cmd_gpus(_args(fake, json=True)) == 0
    assert json.loads(capsys.readouterr().out)["gpus"][1]["minor"] == 0


def test_cli_cdi_generate(fake, capsys, tmp_path):
    assert cli.cmd_cdi(_args(fake, action="generate", format="json", output=None)) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "nvidia.com/gpu"


def test_cli_gpus_without_driver_is_a_gpu_error(tmp_path):
    args = argparse.Namespace(nvidia_driver_root=None, nvidia_dev_root=None,
                              nvidia_proc_root=str(tmp_path), json=False)
    with pytest.raises(GPUError, match="no NVIDIA driver"):
        cli.cmd_gpus(args)
