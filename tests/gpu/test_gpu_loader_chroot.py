"""The loader inside an image finds the injected driver through minictr's edits alone.

No container runtime needed: the edits' bind mounts are applied in a private mount namespace
(unshare -m) and the probe runs chrooted into the image's root. This checks the part of GPU
injection that is about the dynamic loader: SONAME bind mounts and the generated ld.so.cache.
"""
import os
import shlex
import shutil
import subprocess

import pytest

from minictr import api
from minictr.gpu import resolve
from minictr.gpu.request import GpuSettings
from minictr.spec import gpu_request
from minictr.spec.edits import Mount
from minictr.spec.options import RunOptions

from probeimage import build_probe_rootfs

pytestmark = pytest.mark.root


def _needs_root():
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("gcc"):
        pytest.skip("needs root, unshare and gcc")


def _image(tmp_path, os_release: str, libdir: str):
    rootfs = build_probe_rootfs(str(tmp_path / "rootfs"), libdir, os_release)

    def read_file(path):
        try:
            with open(os.path.join(rootfs, path.lstrip("/")), "rb") as f:
                return f.read()
        except OSError:
            return None
    return rootfs, read_file


def _run_chrooted(rootfs, mounts, *args):
    lines = ["set -e"]
    for m in mounts:
        dest = os.path.join(rootfs, m.container_path.lstrip("/"))
        lines.append(f"mkdir -p {shlex.quote(os.path.dirname(dest))}")
        lines.append(f"[ -e {shlex.quote(dest)} ] || touch {shlex.quote(dest)}")
        lines.append(f"mount --bind {shlex.quote(m.host_path)} {shlex.quote(dest)}")
        if "ro" in m.options:
            lines.append(f"mount -o remount,bind,ro {shlex.quote(dest)}")
    lines.append(f"exec chroot {shlex.quote(rootfs)} /probe " + " ".join(args))
    res = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                          "\n".join(lines)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


class _Edits:
    def __init__(self, mounts):
        self.mounts = mounts


def _edits(fake_driver, tmp_path, read_file):
    """`--gpus 0` through the one request path; its files written where the runtime would."""
    spec = api._gpu_request({"process": {"env": []}, "mounts": []},
                            RunOptions(image="x", gpus="0"), {})
    files_dir = tmp_path / "state"
    files_dir.mkdir(exist_ok=True)
    got = resolve.resolve(spec, gpu_request.find(spec), read_file=read_file,
                          files_dir=str(files_dir), settings=GpuSettings(fake_driver.roots))
    for name, data in got.files:
        (files_dir / name).write_bytes(data)
    return _Edits([Mount.from_cdi(m) for m in got.spec["mounts"]])


def test_debian_image_loads_injected_libcuda(fake_driver, tmp_path):
    _needs_root()
    rootfs, read_file = _image(tmp_path, "ID=debian\n", "/usr/lib/x86_64-linux-gnu")
    assert "dlopen failed" in _run_chrooted(rootfs, [])         # nothing injected: not found
    out = _run_chrooted(rootfs, _edits(fake_driver, tmp_path, read_file).mounts)
    assert "cuDeviceGetCount=2 from /usr/lib/x86_64-linux-gnu/libcuda.so.1" in out


def test_lib64_image_finds_libcuda_only_through_the_generated_cache(fake_driver, tmp_path):
    """/usr/lib64 is not in this (Debian-built) loader's default path: only the cache finds
    libcuda there, and the image's own entry for libc (in /usr/lib64 too) must survive."""
    _needs_root()
    rootfs, read_file = _image(tmp_path, "ID=fedora\n", "/usr/lib64")
    mounts = _edits(fake_driver, tmp_path, read_file).mounts
    assert any(m.container_path == "/usr/lib64/libcuda.so.1" for m in mounts)
    without_cache = [m for m in mounts if m.container_path != "/etc/ld.so.cache"]
    assert "dlopen failed" in _run_chrooted(rootfs, without_cache)
    assert "cuDeviceGetCount=2 from /usr/lib64/libcuda.so.1" in _run_chrooted(rootfs, mounts)
