"""A resolved GPU request -> container edits (minictr/gpu/inject.py) against the fake driver.
The request is made as every path makes it (test_gpu_select.request_for: written into a spec,
read back); the cache bytes are written where the mount says, as the runtime does at create."""
import os
import shutil
import subprocess
import sys

import pytest

from minictr.errors import GPUError
from minictr.gpu import discover, inject, ldcache
from minictr.gpu.request import GpuSettings
from minictr.gpu.select import select

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "gpu"))
sys.path.insert(0, os.path.dirname(__file__))
import fakedriver  # noqa: E402
from test_gpu_select import request_for  # noqa: E402

DEB = "/usr/lib/x86_64-linux-gnu"
DEBIAN_FILES = {"/etc/os-release": b'ID=debian\nVERSION_ID="12"\n',
                "/etc/ld.so.cache": ldcache.write([
                    ldcache.Entry("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"),
                    ldcache.Entry("libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1")])}


@pytest.fixture
def fake(tmp_path):
    return fakedriver.build(str(tmp_path / "drv"), mig=True)


def edits(fake, tmp_path, *, gpus=None, env=(), image_env=(), files=DEBIAN_FILES, warn=None,
          gpu_memory=None, read_file=None, allocation=None):
    """The edits `minictr run [--gpus GPUS] [-e ENV]` makes on an image with ``image_env``, or
    None when nothing asks for a GPU."""
    settings = GpuSettings(roots=fake.roots)
    request = request_for(gpus, dict(e.split("=", 1) for e in image_env),
                          dict(e.split("=", 1) for e in env), settings, memory=gpu_memory)
    if request is None:
        return None
    driver = discover.discover(fake.roots)
    cache = str(tmp_path / "state" / "ld.so.cache")
    got = inject.inject(request, driver, select(driver, request, allocation),
                        read_file or files.get, cache, warn=warn)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with open(cache, "wb") as f:                  # what the runtime does at create
        f.write(got.cache)
    return got.edits


def dests(e):
    return {m.container_path: m for m in e.mounts}


def test_gpu_0_gets_its_own_minor_and_control_nodes_only(fake, tmp_path):
    e = edits(fake, tmp_path, gpus="0")
    assert [(d.path, d.major, d.minor) for d in e.device_nodes] == [
        ("/dev/nvidia1", 195, 1), ("/dev/nvidiactl", 195, 255),
        ("/dev/nvidia-uvm", fakedriver.UVM_MAJOR, 0),
        ("/dev/nvidia-uvm-tools", fakedriver.UVM_MAJOR, 1)]
    assert all(d.type == "c" for d in e.device_nodes)
    # rootless runtimes bind-mount the host node, which lives under the fake dev root here
    assert e.device_nodes[0].host_path == os.path.join(fake.dev_root, "dev/nvidia1")
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in e.env
    assert f"NVIDIA_VISIBLE_DEVICES={fakedriver.GPUS[1][2]}" in e.env


def test_libraries_mounted_at_real_name_and_soname_read_only(fake, tmp_path):
    m = dests(edits(fake, tmp_path, gpus="all"))
    real = os.path.join(fake.driver_root, DEB.lstrip("/"), "libcuda.so.580.65.06")
    for name in ("libcuda.so.580.65.06", "libcuda.so.1", "libcuda.so", "libnvidia-ml.so.1",
                 "libnvidia-ml.so.580.65.06"):
        mount = m[f"{DEB}/{name}"]
        assert mount.type == "bind" and mount.options == ("rbind", "ro", "nosuid", "nodev")
    assert m[f"{DEB}/libcuda.so.1"].host_path == real
    assert not any("570.00.00" in x.host_path for x in m.values())
    assert m["/usr/bin/nvidia-smi"].host_path.endswith("driver/usr/bin/nvidia-smi")
    assert "/lib/firmware/nvidia/580.65.06/gsp_ga10x.bin" in m
    assert "/run/nvidia-persistenced/socket" in m


def test_generated_cache_is_image_plus_injected(fake, tmp_path):
    m = dests(edits(fake, tmp_path, gpus="0"))
    cache = m["/etc/ld.so.cache"]
    assert "ro" in cache.options
    with open(cache.host_path, "rb") as f:
        got = {(e.key, e.value) for e in ldcache.parse(f.read())}
    assert got == {("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"),
                   ("libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1"),
                   ("libcuda.so.1", f"{DEB}/libcuda.so.1"), ("libcuda.so", f"{DEB}/libcuda.so"),
                   ("libnvidia-ml.so.1", f"{DEB}/libnvidia-ml.so.1")}
    if shutil.which("ldconfig"):
        out = subprocess.run(["ldconfig", "-p", "-C", cache.host_path], capture_output=True,
                             text=True, check=True).stdout
        assert f"libcuda.so.1 (libc6,x86-64) => {DEB}/libcuda.so.1" in out


@pytest.mark.parametrize("files, libdir", [
    ({}, "/usr/lib64"),                                           # no cache, no os-release
    ({"/etc/os-release": b"ID=fedora\n"}, "/usr/lib64"),
    ({"/etc/os-release": b'ID="rocky"\nID_LIKE="rhel centos fedora"\n'}, "/usr/lib64"),
    ({"/etc/os-release": b"ID=pop\nID_LIKE=ubuntu debian\n"}, DEB),
    ({"/etc/ld.so.cache": ldcache.write([ldcache.Entry("libc.so.6",
                                                       "/lib/x86_64-linux-gnu/libc.so.6")])}, DEB),
])
def test_image_lib_dir_is_decided_from_its_files(fake, tmp_path, files, libdir):
    m = dests(edits(fake, tmp_path, gpus="0", files=files))
    assert f"{libdir}/libcuda.so.1" in m


def test_no_request_no_edits(fake, tmp_path):
    assert edits(fake, tmp_path) is None
    assert edits(fake, tmp_path, image_env=["NVIDIA_VISIBLE_DEVICES=void"]) is None


def test_none_gives_driver_files_but_no_gpu(fake, tmp_path):
    e = edits(fake, tmp_path, env=["NVIDIA_VISIBLE_DEVICES=none"])
    assert [d.path for d in e.device_nodes] == ["/dev/nvidiactl", "/dev/nvidia-uvm",
                                                  "/dev/nvidia-uvm-tools"]
    assert "NVIDIA_VISIBLE_DEVICES=none" in e.env and f"{DEB}/libcuda.so.1" in dests(e)


def test_capabilities_choose_nodes_and_libraries(fake, tmp_path):
    e = edits(fake, tmp_path, gpus="capabilities=utility,device=1")
    assert [d.path for d in e.device_nodes] == ["/dev/nvidia0", "/dev/nvidiactl"]
    m = dests(e)
    assert f"{DEB}/libnvidia-ml.so.1" in m and f"{DEB}/libcuda.so.1" not in m
    e = edits(fake, tmp_path, gpus="0", env=["NVIDIA_DRIVER_CAPABILITIES=display"])
    assert "/dev/nvidia-modeset" in [d.path for d in e.device_nodes]


def test_requirement_mismatch_names_requirement_and_cuda(fake, tmp_path):
    with pytest.raises(GPUError) as err:
        edits(fake, tmp_path, gpus="0", image_env=["NVIDIA_REQUIRE_CUDA=cuda>=13.1"])
    assert "NVIDIA_REQUIRE_CUDA=cuda>=13.1" in str(err.value) and "CUDA 13.0" in str(err.value)
    assert "NVIDIA_DISABLE_REQUIRE" in err.value.hint
    assert edits(fake, tmp_path, gpus="0", image_env=["NVIDIA_REQUIRE_CUDA=cuda>=13.1"],
                 env=["NVIDIA_DISABLE_REQUIRE=true"]) is not None
    with pytest.raises(GPUError, match="cuda>=13.1"):          # legacy image
        edits(fake, tmp_path, gpus="0", image_env=["CUDA_VERSION=13.1.0"])


def test_only_a_stale_libcuda_is_an_upgrade_without_reboot(fake, tmp_path):
    os.unlink(os.path.join(fake.driver_root, DEB.lstrip("/"), "libcuda.so.580.65.06"))
    with pytest.raises(GPUError) as err:
        edits(fake, tmp_path, gpus="0")
    assert "libcuda.so.570.00.00 does not match the loaded kernel module 580.65.06" in \
        str(err.value)
    assert "reboot" in err.value.hint


def test_baked_driver_library_is_replaced_and_explained(fake, tmp_path):
    files = dict(DEBIAN_FILES)
    files["/etc/ld.so.cache"] = ldcache.write([
        ldcache.Entry("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"),
        ldcache.Entry("libcuda.so.1", "/usr/local/nvidia/lib64/libcuda.so.1")])
    said = []
    m = dests(edits(fake, tmp_path, gpus="0", files=files, warn=said.append))
    assert any("/usr/local/nvidia/lib64/libcuda.so.1" in s for s in said)
    with open(m["/etc/ld.so.cache"].host_path, "rb") as f:
        assert [e.value for e in ldcache.parse(f.read()) if e.key == "libcuda.so.1"] == \
            [f"{DEB}/libcuda.so.1"]


def test_cuda_compat_libraries_win_only_when_newer(fake, tmp_path):
    files = {**DEBIAN_FILES, "/usr/local/cuda/compat/libcuda.so.1": b"\x7fELF"}

    def libcuda_target(image_env):
        m = dests(edits(fake, tmp_path, gpus="0", files=files, image_env=image_env))
        with open(m["/etc/ld.so.cache"].host_path, "rb") as f:
            return [e.value for e in ldcache.parse(f.read()) if e.key == "libcuda.so.1"]

    newer = ["CUDA_VERSION=13.2.0", "NVIDIA_DISABLE_REQUIRE=1"]
    assert libcuda_target(newer) == ["/usr/local/cuda/compat/libcuda.so.1"]
    assert libcuda_target(["CUDA_VERSION=12.8.1"]) == [f"{DEB}/libcuda.so.1"]


def test_musl_image_is_refused(fake, tmp_path):
    with pytest.raises(GPUError, match="musl"):
        edits(fake, tmp_path, gpus="0", files={"/etc/os-release": b"ID=alpine\n"})


def test_gpu_memory_needs_a_running_mps_daemon(fake, tmp_path):
    with pytest.raises(GPUError) as err:
        edits(fake, tmp_path, gpus="1,0", gpu_memory="0=20G,1=10G")
    assert "MPS" in str(err.value) and "nvidia-cuda-mps-control -d" in err.value.hint
    pipe = fake.roots.mps_pipe_dir
    os.makedirs(pipe)
    open(os.path.join(pipe, "control"), "w").close()
    e = edits(fake, tmp_path, gpus="1,0", gpu_memory="0=20G,1=10G")
    # host GPU 1 is the container's CUDA device 0
    assert "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=10G,1=20G" in e.env
    assert f"CUDA_MPS_PIPE_DIRECTORY={pipe}" in e.env
    assert dests(e)[pipe].options == ("rbind", "nosuid", "nodev")
    with pytest.raises(GPUError, match="not selected"):
        edits(fake, tmp_path, gpus="0", gpu_memory="1=1G")
    with pytest.raises(GPUError, match="cannot parse"):
        edits(fake, tmp_path, gpus="0", gpu_memory="0=lots")


def test_mig_device_nodes(fake, tmp_path):
    e = edits(fake, tmp_path, gpus="1:0")
    assert [d.path for d in e.device_nodes][:3] == [
        "/dev/nvidia0", "/dev/nvidia-caps/nvidia-cap12", "/dev/nvidia-caps/nvidia-cap13"]
    assert "NVIDIA_VISIBLE_DEVICES=1:0" in e.env


def test_legacy_cuda_image_gets_every_gpu_and_its_cuda_requirement(fake, tmp_path):
    e = edits(fake, tmp_path, image_env=["CUDA_VERSION=12.2.2"])
    assert {d.path for d in e.device_nodes} >= {"/dev/nvidia0", "/dev/nvidia1"}
    with pytest.raises(GPUError, match="cuda>=13.1"):
        edits(fake, tmp_path, image_env=["CUDA_VERSION=13.1.0"])


def test_compat_library_too_large_for_the_store_still_counts(fake, tmp_path):
    from minictr.errors import ImageError

    def read_file(path):
        if path == "/usr/local/cuda/compat/libcuda.so.1":
            raise ImageError(f"{path} in the image is 99999999 bytes, more than minictr reads")
        return DEBIAN_FILES.get(path)

    e = edits(fake, tmp_path, gpus="0", image_env=["CUDA_VERSION=13.2.0",
                                                   "NVIDIA_DISABLE_REQUIRE=1"],
              read_file=read_file)
    with open(dests(e)["/etc/ld.so.cache"].host_path, "rb") as f:
        assert [x.value for x in ldcache.parse(f.read()) if x.key == "libcuda.so.1"] == \
            ["/usr/local/cuda/compat/libcuda.so.1"]


def test_device_nodes_are_discoverys_records(fake, tmp_path):
    """One model of a device from /proc to the filter: the edits hold discovery's DeviceNode."""
    driver = discover.discover(fake.roots)
    e = edits(fake, tmp_path, gpus="0")
    assert e.device_nodes[0] is driver.gpus[0].node or e.device_nodes[0] == driver.gpus[0].node
    assert type(e.device_nodes[0]).__name__ == "DeviceNode"
