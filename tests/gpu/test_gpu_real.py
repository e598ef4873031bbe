"""On a machine with a real NVIDIA driver: the same probe and nvidia-smi inside a container.

Skips without /dev/nvidiactl. The driver root comes from MINICTR_NVIDIA_DRIVER_ROOT when set
(e.g. a driver under /usr/local/nvidia); discovery lists directories when the loader cache does
not know the driver's libraries.
"""
import os
import re
import shutil
import subprocess

import pytest

from probeimage import runtime_available, write_oci_layout

pytestmark = [pytest.mark.gpu, pytest.mark.root,
              pytest.mark.skipif(not os.path.exists("/dev/nvidiactl") or
                                 not os.path.exists("/proc/driver/nvidia/version"),
                                 reason="needs a real NVIDIA GPU and driver"),
              pytest.mark.skipif(not runtime_available(), reason="needs runtime")]


@pytest.fixture(scope="module")
def layout(probe_rootfs, tmp_path_factory):
    return write_oci_layout(probe_rootfs, str(tmp_path_factory.mktemp("oci") / "probe"))


def _run(cli, tmp_path, layout, *args, gpus="all"):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    env = {**os.environ, "MINICTR_ROOT": str(tmp_path / "store"),
           "MINICTR_STATE": str(tmp_path / "state")}
    res = subprocess.run([cli, "run", "--rm", "--gpus", gpus, f"oci:{layout}", *args], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def _host_gpu_count() -> int:
    return len([d for d in os.listdir("/proc/driver/nvidia/gpus")])


def test_cuda_inside_sees_the_selected_gpus(minictr_cli, tmp_path, layout):
    out = _run(minictr_cli, tmp_path, layout, "/probe")
    m = re.search(r"cuDeviceGetCount=(\d+) from (\S+)", out)
    assert m, out
    assert int(m.group(1)) == _host_gpu_count()
    out = _run(minictr_cli, tmp_path, layout, "/probe", gpus="0")
    assert "cuDeviceGetCount=1 " in out, out


def test_nvidia_smi_inside_matches_outside(minictr_cli, tmp_path, layout):
    smi = shutil.which("nvidia-smi")
    if not smi:
        pytest.skip("no nvidia-smi on the host")
    outside = subprocess.run([smi, "-L"], capture_output=True, text=True, check=True).stdout
    inside = _run(minictr_cli, tmp_path, layout, "/usr/bin/nvidia-smi", "-L")
    assert inside.strip() == outside.strip()
