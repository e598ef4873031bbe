"""A fake NVIDIA driver under a temporary directory, for tests on machines without a GPU.

``build(tmp)`` lays out three roots, the way discovery sees a real host:

* proc root: ``driver/nvidia/version`` (580.65.06), ``driver/nvidia/gpus/<bus>/information``
  for two GPUs whose PCI order differs from their minor order (index 0 = bus 01, minor 1;
  index 1 = bus 41, minor 0), ``devices`` with nvidia-uvm / nvidia-caps majors, and MIG
  capability files for GPU index 1 when ``mig=True``.
* dev root: ``dev/nvidia0``, ``dev/nvidia1``, ``dev/nvidiactl``, ``dev/nvidia-uvm(-tools)``,
  ``dev/nvidia-modeset`` made with mknod (plain files when mknod is not permitted).
* driver root: ``libcuda.so.580.65.06`` (SONAME libcuda.so.1, exports cuInit and
  cuDeviceGetCount: $FAKE_CUDA_DEVICE_COUNT or 2) and ``libnvidia-ml.so.580.65.06`` compiled with
  gcc, a stale ``libcuda.so.570.00.00`` in another directory, an ``etc/ld.so.cache`` listing them
  (written with minictr's writer), an ``nvidia-smi`` shell script, GSP firmware and the
  persistenced socket path.
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from minictr.gpu import ldcache
from minictr.gpu.driver import DriverRoots

VERSION = "580.65.06"
STALE = "570.00.00"
UVM_MAJOR = 237
CAPS_MAJOR = 238
LIBDIR = "/usr/lib/x86_64-linux-gnu"
# (bus id, minor, uuid, model): listed in minor order, which is not PCI order
GPUS = (("0000:41:00.0", 0, "GPU-bbbbbbbb-0000-4000-8000-000000000041", "NVIDIA H200"),
        ("0000:01:00.0", 1, "GPU-aaaaaaaa-0000-4000-8000-000000000001", "NVIDIA H200"))
# four GPUs for the Slurm tier (gres.conf File=.../nvidia[0-3]): the two above plus minors 2 and 3,
# again not in PCI order
FOUR_GPUS = GPUS + (
    ("0000:c1:00.0", 2, "GPU-dddddddd-0000-4000-8000-0000000000c1", "NVIDIA H200"),
    ("0000:81:00.0", 3, "GPU-cccccccc-0000-4000-8000-000000000081", "NVIDIA H200"))

LIBCUDA_C = r"""
#include <stdlib.h>
int cuInit(unsigned int flags) { (void)flags; return 0; }
int cuDeviceGetCount(int *count) {
    const char *e = getenv("FAKE_CUDA_DEVICE_COUNT");
    *count = e ? atoi(e) : 2;
    return 0;
}
int cuDriverGetVersion(int *v) { *v = VERSION_INT; return 0; }
"""
LIBNVML_C = r"""
int nvmlInit_v2(void) { return 0; }
int nvmlDeviceGetCount_v2(unsigned int *count) { *count = 2; return 0; }
"""
NVIDIA_SMI = """#!/bin/sh
echo "NVIDIA-SMI {v} (minictr fake)   Driver Version: {v}   CUDA Version: 13.0"
"""


@dataclass(frozen=True)
class FakeDriver:
    root: str
    roots: DriverRoots
    version: str = VERSION

    @property
    def driver_root(self) -> str:
        return self.roots.driver_root

    @property
    def dev_root(self) -> str:
        return self.roots.dev_root

    @property
    def proc_root(self) -> str:
        return self.roots.proc_root

    def config_toml(self, **extra) -> str:
        """A minictr config.toml [nvidia] table pointing at this driver (for runtimes that
        engines start, whose environment the test does not control); ``extra``: more keys of
        the table (underscores for dashes), e.g. cdi_spec_dirs=[...]."""
        import json

        lines = ["[nvidia]", f"driver-root = {json.dumps(self.driver_root)}",
                 f"dev-root = {json.dumps(self.dev_root)}",
                 f"proc-root = {json.dumps(self.proc_root)}"]
        lines += [f"{k.replace('_', '-')} = {json.dumps(v)}" for k, v in extra.items()]
        return "\n".join(lines) + "\n"

    def env(self) -> dict[str, str]:
        """MINICTR_NVIDIA_*_ROOT variables pointing the CLI at this driver."""
        return {"MINICTR_NVIDIA_DRIVER_ROOT": self.driver_root,
                "MINICTR_NVIDIA_DEV_ROOT": self.dev_root,
                "MINICTR_NVIDIA_PROC_ROOT": self.proc_root}


def _write(path: str, text: str | bytes, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
    os.chmod(path, mode)


def _compile(src: str, soname: str, out: str, defines=()) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".c", delete=False) as f:
        f.write(src)
    try:
        subprocess.run(["gcc", "-shared", "-fPIC", "-O1", *defines, f"-Wl,-soname,{soname}",
                        "-o", out, f.name], check=True, capture_output=True)
    finally:
        os.unlink(f.name)


@functools.lru_cache(maxsize=None)
def compiled_libraries() -> dict[str, str]:
    """Compile the fake libraries once per process; return {file name: path}."""
    d = tempfile.mkdtemp(prefix="minictr-fakedrv-")
    owner = os.getpid()                 # not in a forked child that exits through atexit
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(d, ignore_errors=True))
    out = {}
    for version in (VERSION, STALE):
        vint = f"-DVERSION_INT={1300 if version == VERSION else 1208}"
        path = os.path.join(d, f"libcuda.so.{version}")
        _compile(LIBCUDA_C, "libcuda.so.1", path, [vint])
        out[os.path.basename(path)] = path
    path = os.path.join(d, f"libnvidia-ml.so.{VERSION}")
    _compile(LIBNVML_C, "libnvidia-ml.so.1", path)
    out[os.path.basename(path)] = path
    return out


def _node(path: str, major: int, minor: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.mknod(path, 0o666 | 0o020000, os.makedev(major, minor))
    except PermissionError:
        _write(path, b"", 0o666)
    os.chmod(path, 0o666)


def _information(bus: str, minor: int, uuid: str, model: str) -> str:
    return (f"Model: \t\t {model}\nIRQ:   \t\t 0\nGPU UUID: \t {uuid}\n"
            f"Video BIOS: \t 96.00.af.00.01\nBus Type: \t PCIe\nDMA Size: \t 52 bits\n"
            f"DMA Mask: \t 0xfffffffffffff\nBus Location: \t {bus}\nDevice Minor: \t {minor}\n"
            "GPU Firmware: \t 580.65.06\nGPU Excluded:\t No\n")


def build(tmp: str, *, mig: bool = False, stale: bool = True, with_uvm: bool = True,
          extra_cache_entries=(), libdir: str = LIBDIR, in_cache: bool = True,
          gpus=GPUS) -> FakeDriver:
    """Lay out the fake driver under ``tmp`` and return its roots. ``libdir`` and
    ``in_cache=False`` model a driver mounted by a container platform (/usr/local/nvidia/lib64,
    not in the loader cache). ``gpus``: (bus id, minor, uuid, model) rows, GPUS or FOUR_GPUS."""
    driver_root, dev_root, proc_root = (os.path.join(tmp, n) for n in ("driver", "dev", "proc"))
    nv = os.path.join(proc_root, "driver/nvidia")
    _write(os.path.join(nv, "version"),
           f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {VERSION}  Release Build"
           "  (dvs-builder@U16-I3-B03-4-3)  Tue Jul  8 18:10:53 UTC 2025\n"
           "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    for name in ("params", "registry"):
        _write(os.path.join(nv, name), "ResmanDebugLevel: 4294967295\n")
    for bus, minor, uuid, model in gpus:
        _write(os.path.join(nv, "gpus", bus, "information"), _information(bus, minor, uuid, model))
        _node(os.path.join(dev_root, "dev", f"nvidia{minor}"), 195, minor)
    devices = "Character devices:\n  1 mem\n195 nvidia-frontend\n"
    if with_uvm:
        devices += f"{UVM_MAJOR} nvidia-uvm\n"
    devices += f"{CAPS_MAJOR} nvidia-caps\n\nBlock devices:\n  7 loop\n"
    _write(os.path.join(proc_root, "devices"), devices)
    _node(os.path.join(dev_root, "dev/nvidiactl"), 195, 255)
    _node(os.path.join(dev_root, "dev/nvidia-modeset"), 195, 254)
    if with_uvm:
        _node(os.path.join(dev_root, "dev/nvidia-uvm"), UVM_MAJOR, 0)
        _node(os.path.join(dev_root, "dev/nvidia-uvm-tools"), UVM_MAJOR, 1)
    if mig:
        caps = os.path.join(nv, "capabilities/gpu0/mig")   # minor 0 = index 1 (bus 41)
        for gi, ci, gm, cm in ((1, 0, 12, 13), (2, 0, 21, 22)):
            _write(os.path.join(caps, f"gi{gi}/access"), f"DeviceFileMinor: {gm}\n"
                   "DeviceFileMode: 292\n")
            _write(os.path.join(caps, f"gi{gi}/ci{ci}/access"), f"DeviceFileMinor: {cm}\n"
                   "DeviceFileMode: 292\n")
            for m in (gm, cm):
                _node(os.path.join(dev_root, f"dev/nvidia-caps/nvidia-cap{m}"), CAPS_MAJOR, m)

    libs = compiled_libraries()
    host_libdir = os.path.join(driver_root, libdir.lstrip("/"))
    os.makedirs(host_libdir, exist_ok=True)
    entries = [ldcache.Entry("libc.so.6", f"{LIBDIR}/libc.so.6")]
    listed = []
    for stem in ("libcuda", "libnvidia-ml"):
        real = f"{stem}.so.{VERSION}"
        shutil.copy(libs[real], os.path.join(host_libdir, real))
        os.symlink(real, os.path.join(host_libdir, f"{stem}.so.1"))
        listed.append(ldcache.Entry(f"{stem}.so.1", f"{libdir}/{stem}.so.1"))
    os.symlink("libcuda.so.1", os.path.join(host_libdir, "libcuda.so"))
    listed.append(ldcache.Entry("libcuda.so", f"{libdir}/libcuda.so"))
    if in_cache:
        entries += listed
    if stale:
        old = os.path.join(driver_root, "usr/local/lib")
        os.makedirs(old, exist_ok=True)
        shutil.copy(libs[f"libcuda.so.{STALE}"], os.path.join(old, f"libcuda.so.{STALE}"))
        os.symlink(f"libcuda.so.{STALE}", os.path.join(old, "libcuda.so.1"))
        entries.append(ldcache.Entry("libcuda.so.1", "/usr/local/lib/libcuda.so.1"))
    entries.extend(extra_cache_entries)
    _write(os.path.join(driver_root, "etc/ld.so.cache"), ldcache.write(entries))
    _write(os.path.join(driver_root, "usr/bin/nvidia-smi"), NVIDIA_SMI.format(v=VERSION), 0o755)
    _write(os.path.join(driver_root, f"lib/firmware/nvidia/{VERSION}/gsp_ga10x.bin"), b"\0" * 16)
    _write(os.path.join(driver_root, "run/nvidia-persistenced/socket"), b"")
    return FakeDriver(root=tmp, roots=DriverRoots(driver_root, dev_root, proc_root,
                                                  mps_pipe_dir=os.path.join(tmp, "mps")))
