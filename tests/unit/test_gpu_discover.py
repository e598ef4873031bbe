"""Driver discovery from files (minictr/gpu/discover.py) against the fake driver."""
import os
import sys

import pytest

from minictr.errors import GPUError
from minictr.gpu import discover, driverlibs, elf, ldcache
from minictr.gpu.require import cuda_version_for_driver

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "gpu"))
import fakedriver  # noqa: E402


@pytest.fixture
def fake(tmp_path):
    return fakedriver.build(str(tmp_path), mig=True)


def test_gpus_in_pci_order_with_their_own_minors(fake):
    d = discover.discover(fake.roots)
    assert d.version == "580.65.06"
    assert d.cuda_version == "13.0"
    assert [(g.index, g.bus_id, g.minor, g.node.path) for g in d.gpus] == [
        (0, "0000:01:00.0", 1, "/dev/nvidia1"), (1, "0000:41:00.0", 0, "/dev/nvidia0")]
    assert d.gpus[0].uuid == "GPU-aaaaaaaa-0000-4000-8000-000000000001"
    assert d.gpus[0].model == "NVIDIA H200"


def test_control_nodes_take_majors_from_proc_devices(fake):
    d = discover.discover(fake.roots)
    got = {n: (d.control[n].major, d.control[n].minor, d.control[n].path not in d.missing)
           for n in d.control}
    assert got == {"nvidiactl": (195, 255, True), "nvidia-modeset": (195, 254, True),
                   "nvidia-uvm": (fakedriver.UVM_MAJOR, 0, True),
                   "nvidia-uvm-tools": (fakedriver.UVM_MAJOR, 1, True)}


def test_missing_uvm_module_is_a_warning_with_the_fix(tmp_path):
    d = discover.discover(fakedriver.build(str(tmp_path), with_uvm=False).roots)
    assert "nvidia-uvm" not in d.control
    assert any("nvidia-modprobe -u" in w for w in d.warnings)


def test_libraries_only_of_the_module_version_and_stale_reported(fake):
    d = discover.discover(fake.roots)
    libs = {lib.stem: lib for lib in d.libraries}
    assert set(libs) == {"libcuda", "libnvidia-ml"}
    assert libs["libcuda"].real_name == "libcuda.so.580.65.06"
    assert libs["libcuda"].sonames == ("libcuda.so.1",)
    assert libs["libcuda"].capability == "compute"
    assert libs["libnvidia-ml"].capability == "utility"
    assert [os.path.basename(p) for p in d.stale] == ["libcuda.so.570.00.00"]
    assert any("570.00.00" in w and "580.65.06" in w for w in d.warnings)


def test_binaries_firmware_ipc_and_mig(fake):
    d = discover.discover(fake.roots)
    assert set(d.binaries) == {"nvidia-smi"}
    assert [os.path.basename(p) for p in d.firmware] == ["gsp_ga10x.bin"]
    assert [d.container_path(p) for p in d.ipc] == ["/run/nvidia-persistenced/socket"]
    mig = d.gpus[1].mig          # capabilities/gpu0 = minor 0 = index 1
    assert [(m.gpu_index, m.index, m.gi, m.ci) for m in mig] == [(1, 0, 1, 0), (1, 1, 2, 0)]
    assert [n.path for n in mig[0].nodes] == ["/dev/nvidia-caps/nvidia-cap12",
                                             "/dev/nvidia-caps/nvidia-cap13"]
    assert mig[0].nodes[0].major == fakedriver.CAPS_MAJOR
    assert d.gpus[0].mig == ()


def test_to_dict_has_the_cli_fields(fake):
    info = discover.discover(fake.roots).to_dict()
    assert info["driver_version"] == "580.65.06" and info["cuda_version"] == "13.0"
    assert {k for k in info["gpus"][0]} >= {"index", "minor", "uuid", "model", "bus_id"}
    assert info["warnings"]


def test_no_driver_is_a_gpu_error_with_a_hint(tmp_path):
    with pytest.raises(GPUError) as err:
        discover.discover(discover.DriverRoots(str(tmp_path), str(tmp_path), str(tmp_path)))
    assert "no NVIDIA driver" in str(err.value) and "lsmod" in err.value.hint


def test_from_args_defaults():
    want = discover.DriverRoots("/", "/", "/proc")
    assert discover.DriverRoots.from_args(None, None, None) == want


def test_symlinks_resolve_inside_the_driver_root(tmp_path):
    root = tmp_path / "root"
    (root / "lib").mkdir(parents=True)
    (root / "lib/real.so.1").write_bytes(b"")
    os.symlink("/lib/real.so.1", root / "lib/abs.so")       # absolute: re-rooted
    os.symlink("../../../../etc/passwd", root / "lib/escape")  # .. stops at the root
    assert driverlibs.resolve_in_root(str(root), "/lib/abs.so") == str(root / "lib/real.so.1")
    assert driverlibs.resolve_in_root(str(root), "/lib/escape") == str(root / "etc/passwd")


def test_library_symlink_escaping_root_is_not_injected(tmp_path):
    fake = fakedriver.build(str(tmp_path), extra_cache_entries=[
        ldcache.Entry("libnvidia-cfg.so.1", "/usr/lib/x86_64-linux-gnu/libnvidia-cfg.so.1")])
    outside = tmp_path / "outside"          # a real file beside (not under) the driver root
    outside.mkdir()
    (outside / "libnvidia-cfg.so.580.65.06").write_bytes(b"")
    os.symlink("../../../../outside/libnvidia-cfg.so.580.65.06",
               os.path.join(fake.driver_root, "usr/lib/x86_64-linux-gnu/libnvidia-cfg.so.1"))
    d = discover.discover(fake.roots)
    assert "libnvidia-cfg" not in {lib.stem for lib in d.libraries}


@pytest.mark.parametrize("driver, cuda", [("580.65.06", "13.0"), ("570.133.20", "12.8"),
                                          ("550.54.15", "12.4"), ("535.104.05", "12.2"),
                                          ("470.256.02", "11.4"), ("525.60.13", "12.0")])
def test_cuda_version_from_driver_branch(driver, cuda):
    assert cuda_version_for_driver(driver) == (cuda, None)


def test_cuda_version_of_unknown_branch_is_flagged():
    cuda, note = cuda_version_for_driver("999.1")
    assert cuda == "13.1" and "newer than minictr's CUDA table" in note
    assert cuda_version_for_driver("340.108")[0] is None


def test_libraries_outside_the_loader_cache_are_found_by_listing(tmp_path):
    """A platform-mounted driver (/usr/local/nvidia/lib64, found through LD_LIBRARY_PATH on
    the host) is not in ld.so.cache: the usual directories are listed, SONAMEs read from ELF."""
    fake = fakedriver.build(str(tmp_path), libdir="/usr/local/nvidia/lib64", in_cache=False,
                            stale=False)
    d = discover.discover(fake.roots)
    libs = {lib.stem: lib for lib in d.libraries}
    assert set(libs) == {"libcuda", "libnvidia-ml"}
    assert libs["libcuda"].sonames == ("libcuda.so.1",)
    assert libs["libcuda"].host_path.endswith("usr/local/nvidia/lib64/libcuda.so.580.65.06")
    assert any("/usr/local/nvidia/lib64" in w for w in d.warnings)   # a cache that omits them


def test_a_driver_root_without_a_loader_cache_is_listed_without_a_warning(tmp_path):
    """--nvidia-driver-root /usr/local/nvidia as container platforms mount it (seen on a GPU
    machine): no etc/ld.so.cache of its own, so listing lib64 is the designed path, not a fault
    to warn about on every run."""
    fake = fakedriver.build(str(tmp_path), libdir="/lib64", in_cache=False, stale=False)
    os.unlink(os.path.join(fake.roots.driver_root, "etc/ld.so.cache"))
    d = discover.discover(fake.roots)
    libs = {lib.stem: lib for lib in d.libraries}
    assert set(libs) == {"libcuda", "libnvidia-ml"}
    assert libs["libcuda"].host_path.endswith("/lib64/libcuda.so.580.65.06")
    assert not any("ld.so.cache" in w for w in d.warnings), d.warnings


def test_elf_soname_reader():
    libs = fakedriver.compiled_libraries()
    assert elf.soname(libs["libcuda.so.580.65.06"]) == "libcuda.so.1"
    assert elf.soname(libs["libnvidia-ml.so.580.65.06"]) == "libnvidia-ml.so.1"
    assert elf.soname(__file__) is None
