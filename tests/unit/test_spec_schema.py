"""The plan validates against the OCI runtime-spec's own JSON schema (config-schema.json).

The schema ships in Debian's golang-github-opencontainers-specs-dev (Makefile DEB_TEST); the
validator is the ``jsonschema`` package (the test extra). This checks the plan's shape, the same
file crun and runc are given: key names, types, enums (namespace types, rlimit names...).
"""
import json
import os
import pathlib

import pytest

from minictr.spec import devices
from minictr.spec.builder import build_spec
from minictr.spec.edits import ContainerEdits, apply_edits
from minictr.spec.options import RunOptions

SCHEMA_DIR = pathlib.Path("/usr/share/gocode/src/github.com/opencontainers/runtime-spec/schema")

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed (pip '.[test]')")
referencing = pytest.importorskip("referencing", reason="jsonschema too old (< 4.18)")
if not (SCHEMA_DIR / "config-schema.json").exists():
    pytest.skip("OCI schema absent: apt-get install golang-github-opencontainers-specs-dev",
                allow_module_level=True)


@pytest.fixture(scope="module")
def validator():
    def retrieve(uri):
        name = uri.rsplit("/", 1)[-1]
        return referencing.Resource.from_contents(
            json.loads((SCHEMA_DIR / name).read_text()),
            default_specification=referencing.jsonschema.DRAFT4)
    schema = json.loads((SCHEMA_DIR / "config-schema.json").read_text())
    registry = referencing.Registry(retrieve=retrieve)
    base = (SCHEMA_DIR / "config-schema.json").as_uri()
    schema["$id"] = base
    return jsonschema.Draft4Validator(schema, registry=registry)


def stat_dir(path):
    return os.stat_result((0o40755, 0, 0, 1, 0, 0, 0, 0, 0, 0))


IMAGE = {"config": {"Entrypoint": ["/e"], "Cmd": ["c"], "Env": ["A=1"], "WorkingDir": "/w",
                    "Labels": {"org.opencontainers.image.title": "t"}}}

CASES = {
    "plain": (dict(), False),
    "rootless": (dict(network="none"), True),
    "everything": (dict(tty=True, user="4242:4242", hostname="h", read_only=True,
                        volumes=("/d:/d:ro",), mounts=("type=tmpfs,dst=/t,tmpfs-size=1m",),
                        tmpfs=("/run:size=1m",), cap_add=("ALL",), cap_drop=("SYS_ADMIN",),
                        ulimits=("nofile=10:20", "core=-1"), memory="64m", memory_swap="-1",
                        pids_limit=10, cpus=0.5, cpu_shares=512, cpuset_cpus="0",
                        cgroup_parent="/p", annotations=("k=v",)), False),
    "privileged": (dict(privileged=True, cpu_weight=100), False),
}


@pytest.mark.parametrize("name", CASES)
def test_spec_matches_the_oci_schema(validator, name):
    kw, rootless = CASES[name]
    spec = build_spec(IMAGE, RunOptions(image="x", **kw), rootless=rootless,
                      container_id="c" * 64, rootfs_path="/r", read_file=lambda p: None,
                      host_env={}, host_stat=stat_dir, host_ids=(1000, 1000))
    spec = apply_edits(spec, devices.edits_for_host_devices(["/dev/null:/dev/x:rw"]))
    spec = apply_edits(spec, ContainerEdits.from_cdi(
        {"env": ["B=2"], "mounts": [{"hostPath": "/h", "containerPath": "/c",
                                     "options": ["ro", "bind"]}],
         "hooks": [{"hookName": "createContainer", "path": "/bin/true", "timeout": 5}],
         "additionalGids": [5]}))
    errors = sorted(validator.iter_errors(spec), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_validator_catches_a_bad_spec(validator):
    """The validator itself must be able to fail (a null device major, a bad namespace)."""
    bad = {"ociVersion": "1.0.2", "linux": {"namespaces": [{"type": "bogus"}],
                                            "resources": {"devices": [{"allow": True,
                                                                       "major": None}]}}}
    assert len(list(validator.iter_errors(bad))) >= 2
