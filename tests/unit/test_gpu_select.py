"""Which GPUs a request means: --gpus / NVIDIA_VISIBLE_DEVICES / NVIDIA_DRIVER_CAPABILITIES
written into a spec (api._gpu_request), read back once (spec/gpu_request.find, gpu/request.py),
and resolved to host GPUs (gpu/select.py)."""
import os
import sys

import pytest

from minictr import api
from minictr.errors import GPUError
from minictr.gpu import discover
from minictr.gpu.request import GpuSettings, from_inputs, parse_gpus_flag
from minictr.gpu.select import select
from minictr.hpc.slurm import Allocation
from minictr.spec import gpu_request
from minictr.spec.edits import merge_env
from minictr.spec.options import RunOptions

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "gpu"))
import fakedriver  # noqa: E402

SETTINGS = GpuSettings(roots=discover.DriverRoots())


def request_for(flag, image_env: dict, user_env: dict, settings=SETTINGS, memory=None):
    """What `minictr run [--gpus FLAG] [-e K=V]` on an image with ``image_env`` asks for: the
    spec as plan builds it, read back as every path reads it."""
    image = [f"{k}={v}" for k, v in image_env.items()]
    env = merge_env(image, [f"{k}={v}" for k, v in user_env.items()])
    spec = api._gpu_request({"process": {"env": env}},
                            RunOptions(image="x", gpus=flag, gpu_memory=memory),
                            {"config": {"Env": image}})
    inputs = gpu_request.find(spec)
    return None if inputs is None else from_inputs(inputs, settings)


UC = frozenset({"utility", "compute"})
A = "GPU-aaaaaaaa-0000-4000-8000-000000000001"     # index 0, minor 1
B = "GPU-bbbbbbbb-0000-4000-8000-000000000041"     # index 1, minor 0


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    return discover.discover(fakedriver.build(str(tmp_path_factory.mktemp("drv")), mig=True).roots)


@pytest.mark.parametrize("flag, image_env, user_env, devices, caps, source", [
    (None, {}, {}, None, None, None),
    (None, {"NVIDIA_VISIBLE_DEVICES": "void"}, {}, None, None, None),
    (None, {"NVIDIA_VISIBLE_DEVICES": ""}, {}, None, None, None),
    (None, {"NVIDIA_VISIBLE_DEVICES": "all"}, {}, ("all",), UC, "image"),
    (None, {"NVIDIA_VISIBLE_DEVICES": "all"}, {"NVIDIA_VISIBLE_DEVICES": "void"},
     None, None, None),
    (None, {}, {"NVIDIA_VISIBLE_DEVICES": "0,1"}, ("0", "1"), UC, "-e"),
    (None, {"NVIDIA_DRIVER_CAPABILITIES": "all", "NVIDIA_VISIBLE_DEVICES": "none"}, {},
     ("none",), frozenset({"compute", "compat32", "graphics", "utility", "video", "display",
                           "ngx"}), "image"),
    (None, {"CUDA_VERSION": "9.0.176"}, {}, ("all",), UC, "image"),        # legacy image
    (None, {"CUDA_VERSION": "9.0.176", "NVIDIA_REQUIRE_CUDA": "cuda>=9.0"}, {}, None, None, None),
    (None, {"CUDA_VERSION": "9.0"}, {"NVIDIA_VISIBLE_DEVICES": "void"}, None, None, None),
    ("all", {}, {}, ("all",), UC, "--gpus"),
    ("0", {"NVIDIA_VISIBLE_DEVICES": "void"}, {}, ("0",), UC, "--gpus"),
    ("device=0,1", {}, {}, ("0", "1"), UC, "--gpus"),
    ('"device=1,0",capabilities=utility', {}, {}, ("1", "0"), frozenset({"utility"}),
     "--gpus"),
    ("count=1", {}, {"NVIDIA_DRIVER_CAPABILITIES": "video"}, ("all",), frozenset({"video"}),
     "--gpus"),
    (A, {}, {}, (A,), UC, "--gpus"),
])
def test_request_table(flag, image_env, user_env, devices, caps, source):
    r = request_for(flag, image_env, user_env)
    if devices is None:
        assert r is None
        return
    assert (r.devices, r.capabilities, r.source) == (devices, caps, source)


def test_docker_count_and_capabilities_fields():
    assert parse_gpus_flag("count=2") == (("all",), 2, None)
    assert parse_gpus_flag("count=all") == (("all",), None, None)
    assert parse_gpus_flag("capabilities=compute,utility,device=0") == (
        ("0",), None, "compute,utility")
    with pytest.raises(GPUError, match="cannot be combined"):
        parse_gpus_flag("count=1,device=0")
    with pytest.raises(GPUError, match="unknown field"):
        parse_gpus_flag("devices=0")
    with pytest.raises(GPUError, match="count=two"):
        parse_gpus_flag("count=two")
    with pytest.raises(GPUError, match="unknown driver capability"):
        parse_gpus_flag("capabilities=compute,gaming")


def test_unknown_capability_names_the_known_ones():
    with pytest.raises(GPUError, match="unknown driver capability graphic .*known: compute"):
        request_for(None, {"NVIDIA_VISIBLE_DEVICES": "all",
                           "NVIDIA_DRIVER_CAPABILITIES": "graphic"}, {})


@pytest.mark.parametrize("flag, expect", [
    ("all", [0, 1]), ("0", [0]), ("1", [1]), ("1,0", [1, 0]), ("0,0", [0]),
    (B, [1]), (B[:12], [1]), ("41:00.0", [1]), ("0000:01:00.0", [0]), ("count=1", [0]),
    ("none", []),
])
def test_selection_resolves_to_host_gpus(driver, flag, expect):
    sel = select(driver, request_for(flag, {}, {}))
    assert [g.index for g in sel.gpus] == expect
    assert [g.minor for g in sel.gpus] == [{0: 1, 1: 0}[i] for i in expect]


@pytest.mark.parametrize("flag", ["2", "GPU-cccc", "count=3", "0000:99:00.0"])
def test_unknown_gpu_names_the_gpus_that_exist(driver, flag):
    with pytest.raises(GPUError) as err:
        select(driver, request_for(flag, {}, {}))
    assert "0 (GPU-aaaaaaaa" in str(err.value) or "count=3" in str(err.value)
    assert "1 (GPU-bbbbbbbb" in str(err.value) + (err.value.hint or "")


def test_mig_by_index_and_by_uuid(driver):
    sel = select(driver, request_for("1:1", {}, {}))
    assert [g.index for g in sel.gpus] == [1] and [(m.gi, m.ci) for m in sel.mig] == [(2, 0)]
    sel = select(driver, request_for("MIG-0f0e0d0c-1111-2222-3333-444455556666", {}, {}))
    assert [g.index for g in sel.gpus] == [1] and len(sel.mig) == 2
    assert sel.mig_uuids == ("MIG-0f0e0d0c-1111-2222-3333-444455556666",)
    with pytest.raises(GPUError, match="unknown MIG device '0:0': 1:0; 1:1"):
        select(driver, request_for("0:0", {}, {}))


def test_allocation_narrows_all_and_refuses_outside(driver):
    alloc = Allocation(frozenset({0}), "Slurm job 7: SLURM_STEP_GPUS=0 = /dev/nvidia0")
    every = select(driver, request_for("all", {}, {}), alloc)
    assert [g.minor for g in every.gpus] == [0]
    assert [g.minor for g in select(driver, request_for("1", {}, {}), alloc).gpus] == [0]
    with pytest.raises(GPUError) as info:
        select(driver, request_for("0", {}, {}), alloc)       # index 0 is minor 1
    assert "outside the job's allocation" in str(info.value)
    assert "1 (GPU-bbbbbbbb" in str(info.value) and "GPU-aaaaaaaa" not in str(info.value)


def test_hints_list_only_the_allocated_gpus(driver):
    alloc = Allocation(frozenset({0}), "Slurm job 7: SLURM_STEP_GPUS=0 = /dev/nvidia0")
    with pytest.raises(GPUError) as info:
        select(driver, request_for("count=2", {}, {}), alloc)
    text = str(info.value) + (info.value.hint or "")
    assert "only 1 GPUs are in reach" in text
    assert "GPU-bbbbbbbb" in text and "GPU-aaaaaaaa" not in text
    with pytest.raises(GPUError) as info:
        select(driver, request_for("7", {}, {}), alloc)
    assert "GPU-aaaaaaaa" not in str(info.value) and "Slurm job 7" in str(info.value)


def test_an_allocated_gpu_the_driver_does_not_know_is_an_error(driver):
    alloc = Allocation(frozenset({0, 5}), "Slurm job 7: SLURM_STEP_GPUS=0,1")
    with pytest.raises(GPUError, match="/dev/nvidia5, which the driver does not know"):
        select(driver, request_for("all", {}, {}), alloc)
