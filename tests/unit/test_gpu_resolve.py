"""The one GPU request path (minictr/gpu/resolve.py): a spec in, the spec with its GPUs out,
for requests written the ways engines write them (docker --gpus, -e, CDI annotations, device
list mounts) and the way `minictr run --gpus` writes them, against the fake driver."""
import json
import os
import subprocess
import sys

import pytest

from minictr import api, bundles
from minictr.errors import GPUError
from minictr.gpu import cdi, discover, resolve
from minictr.gpu.request import GpuSettings
from minictr.hpc.slurm import Allocation
from minictr.spec import gpu_request
from minictr.spec.options import RunOptions

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "gpu"))
import fakedriver  # noqa: E402

A = fakedriver.GPUS[1][2]            # index 0: bus 01, minor 1
B = fakedriver.GPUS[0][2]            # index 1: bus 41, minor 0
DEBIAN = {"/etc/os-release": b"ID=debian\n"}
HOOK = {"path": "/usr/bin/nvidia-container-runtime-hook",
        "args": ["nvidia-container-runtime-hook", "prestart"]}


@pytest.fixture
def fake(tmp_path):
    return fakedriver.build(str(tmp_path / "drv"))


def bundle_spec(env=(), annotations=None, mounts=(), hooks=None, caps=("CAP_CHOWN",)):
    """A config.json as an engine hands it over (docker's shape, trimmed)."""
    spec = {"ociVersion": "1.0.2", "process": {"args": ["sh"], "env": ["PATH=/bin", *env],
                                                "capabilities": {"bounding": list(caps)}},
            "root": {"path": "rootfs"}, "mounts": [{"destination": "/proc", "type": "proc",
                                                    "source": "proc"}, *mounts],
            "linux": {"resources": {"devices": [{"allow": False, "access": "rwm"}]}}}
    if annotations:
        spec["annotations"] = dict(annotations)
    if hooks:
        spec["hooks"] = {"prestart": list(hooks)}
    return spec


def run_resolve(spec, tmp_path, settings, *, allocation=None, warn=None, files=DEBIAN):
    inputs = gpu_request.find(spec)
    if inputs is None:
        return None
    return resolve.resolve(spec, inputs, read_file=files.get, files_dir=str(tmp_path / "state"),
                           settings=settings, allocation=allocation and (lambda: allocation),
                           warn=warn)


def gpu_nodes(spec):
    return sorted(d["path"] for d in spec.get("linux", {}).get("devices", [])
                  if d["path"].startswith("/dev/nvidia") and d["path"][11:].isdigit())


def env_of(spec):
    return dict(e.partition("=")[::2] for e in spec["process"]["env"])


def test_docker_gpus_hook_is_replaced_by_the_injection(fake, tmp_path):
    """docker run --gpus device=1 writes NVIDIA_VISIBLE_DEVICES=1 and the prestart hook; the
    hook is never run: the same injection as `minictr run --gpus 1` takes its place."""
    spec = bundle_spec(env=["NVIDIA_VISIBLE_DEVICES=1"], hooks=[HOOK])
    got = run_resolve(spec, tmp_path, GpuSettings(fake.roots))
    assert "prestart" not in got.spec.get("hooks", {})
    assert gpu_nodes(got.spec) == ["/dev/nvidia0"]              # index 1 is minor 0
    allowed = [(r.get("major"), r.get("minor")) for r in
               got.spec["linux"]["resources"]["devices"] if r.get("allow")]
    assert (195, 0) in allowed and (195, 1) not in allowed
    cache = [m for m in got.spec["mounts"] if m["destination"] == "/etc/ld.so.cache"]
    assert cache[0]["source"] == str(tmp_path / "state" / "ld.so.cache")
    assert [name for name, _ in got.files] == ["ld.so.cache"]
    assert not (tmp_path / "state").exists()                    # planning wrote nothing
    assert env_of(got.spec)["NVIDIA_VISIBLE_DEVICES"] == B


def test_a_hook_with_nothing_requested_is_still_removed(fake, tmp_path):
    spec = bundle_spec(env=["NVIDIA_VISIBLE_DEVICES=void"], hooks=[HOOK, {"path": "/bin/true"}])
    got = run_resolve(spec, tmp_path, GpuSettings(fake.roots))
    assert got.spec["hooks"]["prestart"] == [{"path": "/bin/true"}] and not got.files


def test_minictr_run_and_a_bundle_take_the_same_path(fake, tmp_path):
    """`minictr run --gpus 1` (api writes the request into the spec) and docker -e
    NVIDIA_VISIBLE_DEVICES=1 resolve to the same devices, mounts and env."""
    ours = api._gpu_request(bundle_spec(), RunOptions(image="x", gpus="1"), {})
    a = run_resolve(ours, tmp_path, GpuSettings(fake.roots)).spec
    b = run_resolve(bundle_spec(env=["NVIDIA_VISIBLE_DEVICES=1"]), tmp_path,
                    GpuSettings(fake.roots)).spec
    assert a["linux"] == b["linux"] and a["mounts"] == b["mounts"]
    assert a["process"]["env"] == b["process"]["env"]
    assert a["annotations"][gpu_request.ANNOTATION_SOURCE] == "--gpus"


def test_a_bundle_s_explain_hears_the_discovery_notes_as_run_s_does(fake, tmp_path):
    """minictr-runc create --debug says whether the driver came from the discovery cache,
    as `minictr run --explain` does (the notes were made, then dropped)."""
    (tmp_path / "bundle" / "rootfs").mkdir(parents=True)
    said = []
    for _ in range(2):
        bundles.with_gpus(bundle_spec(env=["NVIDIA_VISIBLE_DEVICES=1"]), str(tmp_path / "bundle"),
                          str(tmp_path / "state"), settings=GpuSettings(fake.roots),
                          allocation=lambda: None, cache_dir=str(tmp_path / "cache"),
                          explain=said.append)
    assert any("discovered" in note for note in said), said
    assert any("from the discovery cache" in note for note in said), said


def test_resolving_its_own_output_again_changes_nothing(fake, tmp_path):
    """A bundle written by `minictr spec --gpus` and handed to minictr-runc is resolved again:
    the same devices, one allow rule each, the cache mount pointing at the new place."""
    once = run_resolve(bundle_spec(env=["NVIDIA_VISIBLE_DEVICES=all"]), tmp_path,
                       GpuSettings(fake.roots)).spec
    twice = run_resolve(once, tmp_path / "again", GpuSettings(fake.roots)).spec
    assert twice["linux"] == once["linux"]
    assert len(twice["mounts"]) == len(once["mounts"])


def test_env_request_without_a_driver(tmp_path):
    nothing = GpuSettings(discover.DriverRoots(str(tmp_path), str(tmp_path), str(tmp_path)))
    with pytest.raises(GPUError, match="no NVIDIA driver"):
        run_resolve(bundle_spec(env=["NVIDIA_VISIBLE_DEVICES=all"]), tmp_path, nothing)
    # only the image declares it (minictr run marks the source): a note, no GPUs
    spec = api._gpu_request(bundle_spec(env=["NVIDIA_VISIBLE_DEVICES=all"]),
                            RunOptions(image="x"),
                            {"config": {"Env": ["NVIDIA_VISIBLE_DEVICES=all"]}})
    said = []
    got = run_resolve(spec, tmp_path, nothing, warn=said.append)
    assert got.spec["linux"] == spec["linux"] and "no NVIDIA driver" in said[0]
    # the same value given with -e (or --env-file) is the user's: an error
    spec = api._gpu_request(bundle_spec(env=["NVIDIA_VISIBLE_DEVICES=0"]),
                            RunOptions(image="x"),
                            {"config": {"Env": ["NVIDIA_VISIBLE_DEVICES=all"]}})
    assert spec["annotations"][gpu_request.ANNOTATION_SOURCE] == "-e"
    with pytest.raises(GPUError, match="no NVIDIA driver"):
        run_resolve(spec, tmp_path, nothing)


def test_cdi_annotation_wins_over_the_env(fake, tmp_path):
    spec_dir = tmp_path / "cdi"
    spec_dir.mkdir()
    (spec_dir / "nvidia.json").write_text(cdi.generate(discover.discover(fake.roots), "json"))
    settings = GpuSettings(fake.roots, cdi_spec_dirs=(str(spec_dir),))
    spec = bundle_spec(env=["NVIDIA_VISIBLE_DEVICES=all"],
                       annotations={"cdi.k8s.io/test": "nvidia.com/gpu=0"})
    got = run_resolve(spec, tmp_path, settings)
    assert gpu_nodes(got.spec) == ["/dev/nvidia1"]             # index 0 = minor 1
    assert env_of(got.spec)["NVIDIA_VISIBLE_DEVICES"] == "void"  # the CDI spec says so
    assert not got.files
    # NVIDIA_VISIBLE_DEVICES may hold CDI names too
    got = run_resolve(bundle_spec(env=["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=1"]), tmp_path,
                      settings)
    assert gpu_nodes(got.spec) == ["/dev/nvidia0"]
    said = []
    got = run_resolve(spec, tmp_path, settings._replace(accept_cdi_annotations=False),
                      warn=said.append)
    assert gpu_nodes(got.spec) == ["/dev/nvidia0", "/dev/nvidia1"]
    assert "accept-cdi-annotations" in said[0]


def test_device_list_mounts_only_when_accepted(fake, tmp_path):
    mount = {"destination": "/var/run/nvidia-container-devices/1", "type": "bind",
             "source": "/dev/null", "options": ["bind", "ro"]}
    spec = bundle_spec(env=["NVIDIA_VISIBLE_DEVICES=all"], mounts=[mount])
    said = []
    got = run_resolve(spec, tmp_path, GpuSettings(fake.roots), warn=said.append)
    assert gpu_nodes(got.spec) == ["/dev/nvidia0", "/dev/nvidia1"]
    assert "accept-nvidia-visible-devices-as-volume-mounts" in said[0]
    got = run_resolve(spec, tmp_path, GpuSettings(fake.roots, accept_volume_mounts=True))
    assert gpu_nodes(got.spec) == ["/dev/nvidia0"]


def test_env_from_an_unprivileged_container_by_policy(fake, tmp_path):
    strict = GpuSettings(fake.roots, accept_envvar_unprivileged=False)
    said = []
    spec = bundle_spec(env=["NVIDIA_VISIBLE_DEVICES=all"])
    got = run_resolve(spec, tmp_path, strict, warn=said.append)
    assert gpu_nodes(got.spec) == [] and "unprivileged" in said[0]
    privileged = bundle_spec(env=["NVIDIA_VISIBLE_DEVICES=all"], caps=["CAP_SYS_ADMIN"])
    assert gpu_nodes(run_resolve(privileged, tmp_path, strict).spec) == [
        "/dev/nvidia0", "/dev/nvidia1"]
    # minictr's own --gpus is the caller's request, not the container's env
    ours = api._gpu_request(bundle_spec(), RunOptions(image="x", gpus="0"), {})
    assert gpu_nodes(run_resolve(ours, tmp_path, strict).spec) == ["/dev/nvidia1"]


@pytest.mark.parametrize("env, match", [
    (["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_IMEX_CHANNELS=0"], "NVIDIA_IMEX_CHANNELS=0 is not"),
    (["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_MIG_CONFIG_DEVICES=all"], "NVIDIA_MIG_CONFIG"),
    (["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_GDS=enabled"], "NVIDIA_GDS"),
    (["NVIDIA_VISIBLE_DEVICES=all,0"], "'all' cannot be combined"),
    (["NVIDIA_VISIBLE_DEVICES=0,nvidia.com/gpu=1"], "mixes CDI names"),
    (["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=gaming"], "unknown driver cap"),
])
def test_what_minictr_does_not_implement_is_an_error(fake, tmp_path, env, match):
    with pytest.raises(GPUError, match=match):
        run_resolve(bundle_spec(env=env), tmp_path, GpuSettings(fake.roots))


def test_unknown_minictr_annotation_is_an_error(fake, tmp_path):
    spec = bundle_spec(env=["NVIDIA_VISIBLE_DEVICES=all"],
                       annotations={"org.minictr.gpus.cuont": "2"})
    with pytest.raises(GPUError, match="org.minictr.gpus.cuont is not supported"):
        run_resolve(spec, tmp_path, GpuSettings(fake.roots))


def test_count_is_an_annotation_and_takes_the_first_in_reach(fake, tmp_path):
    ours = api._gpu_request(bundle_spec(), RunOptions(image="x", gpus="count=1"), {})
    assert ours["annotations"][gpu_request.ANNOTATION_COUNT] == "1"
    assert env_of(ours)["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert gpu_nodes(run_resolve(ours, tmp_path, GpuSettings(fake.roots)).spec) == \
        ["/dev/nvidia1"]                                          # index 0
    alloc = Allocation(frozenset({0}), "Slurm job 3: SLURM_STEP_GPUS=1 = /dev/nvidia0")
    got = run_resolve(ours, tmp_path, GpuSettings(fake.roots), allocation=alloc)
    assert gpu_nodes(got.spec) == ["/dev/nvidia0"]                # the first *allocated*


# ---------------------------------------------------------------- issue 14: fail closed


def test_job_without_gpus_injects_none_and_says_so(fake, tmp_path):
    empty = Allocation(frozenset(), "Slurm job 9 step 0: no SLURM_STEP_GPUS")
    ours = api._gpu_request(bundle_spec(env=["CUDA_VISIBLE_DEVICES=0,1"]),
                            RunOptions(image="x", gpus="all"), {})
    said = []
    got = run_resolve(ours, tmp_path, GpuSettings(fake.roots), allocation=empty,
                      warn=said.append)
    assert gpu_nodes(got.spec) == [] and not got.files
    assert "no GPU injected" in said[0] and "Slurm job 9" in said[0]
    assert "CUDA_VISIBLE_DEVICES" not in env_of(got.spec)
    for flag in ("0", "count=1", A):
        ours = api._gpu_request(bundle_spec(), RunOptions(image="x", gpus=flag), {})
        with pytest.raises(GPUError, match="this job has no GPU on this node"):
            run_resolve(ours, tmp_path, GpuSettings(fake.roots), allocation=empty)


def test_cuda_visible_devices_is_the_containers_numbering_in_a_job(fake, tmp_path):
    """The job exported CUDA_VISIBLE_DEVICES=2,3 (its node's numbering): inside, the two
    injected GPUs are CUDA devices 0 and 1."""
    both = Allocation(frozenset({0, 1}), "Slurm job 9: SLURM_STEP_GPUS=2,3")
    ours = api._gpu_request(bundle_spec(env=["CUDA_VISIBLE_DEVICES=2,3"]),
                            RunOptions(image="x", gpus="all"), {})
    got = run_resolve(ours, tmp_path, GpuSettings(fake.roots), allocation=both)
    assert env_of(got.spec)["CUDA_VISIBLE_DEVICES"] == "0,1"
    one = Allocation(frozenset({1}), "Slurm job 9: SLURM_STEP_GPUS=3")
    got = run_resolve(ours, tmp_path, GpuSettings(fake.roots), allocation=one)
    assert env_of(got.spec)["CUDA_VISIBLE_DEVICES"] == "0"
    # outside a job the user's own value is left alone
    got = run_resolve(ours, tmp_path, GpuSettings(fake.roots))
    assert env_of(got.spec)["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_cdi_devices_stay_inside_the_allocation(fake, tmp_path):
    spec_dir = tmp_path / "cdi"
    spec_dir.mkdir()
    (spec_dir / "nvidia.json").write_text(cdi.generate(discover.discover(fake.roots), "json"))
    settings = GpuSettings(fake.roots, cdi_spec_dirs=(str(spec_dir),))
    spec = bundle_spec(annotations={"cdi.k8s.io/x": "nvidia.com/gpu=0"})     # minor 1
    alloc = Allocation(frozenset({0}), "Slurm job 9")
    with pytest.raises(GPUError, match="outside the job's allocation"):
        run_resolve(spec, tmp_path, settings, allocation=alloc)
    assert gpu_nodes(run_resolve(spec, tmp_path, settings,
                                 allocation=alloc._replace(minors=frozenset({1}))).spec)


# ---------------------------------------------------------------- cost


def test_a_spec_without_a_request_loads_no_gpu_code():
    """Both front ends read the request through spec.gpu_request.find, which imports nothing:
    a run without GPUs never imports minictr.gpu (start latency, bench/README.md)."""
    code = """
import json, sys
from minictr import api, bundles
from minictr.spec import gpu_request
from minictr.spec.options import RunOptions
spec = {"process": {"args": ["sh"], "env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=void",
        "CUDA_VERSION=12.4", "NVIDIA_REQUIRE_CUDA=cuda>=12.4"]}, "root": {"path": "/"}}
spec = api._gpu_request(spec, RunOptions(image="x"), {"config": {"Env": spec["process"]["env"]}})
assert gpu_request.find(spec) is None
assert bundles.with_gpus(spec, "/nonexistent", "/nonexistent") == (spec, ())
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("minictr.gpu", "minictr.hpc",
                                                                  "tomllib")))))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert json.loads(res.stdout) == []
