"""Describe the host's NVIDIA driver from files alone: no NVML, no libcuda loaded.

Sources (see docs/gpus.md and libnvidia-container ``src/nvc_info.c``):

* ``PROC/driver/nvidia/version``: the kernel module's version.
* ``PROC/driver/nvidia/gpus/<pci bus id>/information``: Model, GPU UUID, Bus Location, Device
  Minor. The index of a GPU is its rank in PCI bus order (nvidia-smi's order); its device node
  is ``/dev/nvidia<Device Minor>``, which need not equal the index.
* ``PROC/devices``: majors of ``nvidia-uvm`` and ``nvidia-caps`` (dynamic); ``nvidia-frontend``
  (or ``nvidia``) is 195.
* ``PROC/driver/nvidia/capabilities/gpu<minor>/mig/gi<G>/ci<C>/access``: MIG instances and the
  minors of their ``/dev/nvidia-caps/nvidia-cap<N>`` nodes.
* ``DRIVER/etc/ld.so.cache``: the driver's libraries (driverlibs.py); only files whose version
  suffix equals the kernel module's are used (a mismatch means a driver upgrade without reboot).

Every file is read through one ``HostFiles`` (driver.py), which keeps what it saw, so that the
result can be cached and trusted only while the host still shows the same (driver_cache.py).
The records themselves are in driver.py.
"""
from __future__ import annotations

import os
import re
import stat

from minictr.errors import GPUError
from minictr.gpu import capabilities as caps
from minictr.gpu.driver import (CTL_MINOR, GPU, MODESET_MINOR, NVIDIA_MAJOR, Driver,
                                DriverRoots, HostFiles, Library, MigDevice)
from minictr.gpu.driverlibs import read_libraries
from minictr.gpu.require import cuda_version_for_driver
from minictr.spec.edits import DeviceNode

BIN_DIRS = ("usr/bin", "usr/sbin", "bin", "sbin")
_VERSION_RE = re.compile(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)")
__all__ = ["CTL_MINOR", "GPU", "MODESET_MINOR", "NVIDIA_MAJOR", "Driver", "DriverRoots",
           "Library", "MigDevice", "discover"]


def read_driver_version(roots: DriverRoots, host: HostFiles) -> str:
    path = os.path.join(roots.proc_root, "driver/nvidia/version")
    text = host.text(path)
    if text is None:
        raise GPUError(f"no NVIDIA driver: {path} does not exist",
                       hint="is the nvidia kernel module loaded (lsmod | grep nvidia)? For a "
                       "driver elsewhere see --nvidia-driver-root / --nvidia-proc-root")
    m = _VERSION_RE.search(text)
    if not m:
        raise GPUError(f"cannot read the driver version from {path}: {text.strip()[:80]!r}")
    return m.group(1)


def char_majors(roots: DriverRoots, host: HostFiles) -> dict[str, int]:
    """Character device majors by name from PROC/devices (proc(5))."""
    text = host.text(os.path.join(roots.proc_root, "devices")) or ""
    block = text.split("Block devices:")[0]
    majors = {}
    for line in block.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdecimal():
            majors[parts[1]] = int(parts[0])
    return majors


def _node(roots: DriverRoots, host_files: HostFiles, path: str, major: int, minor: int,
          missing: set[str]) -> DeviceNode:
    """The device node the container gets at ``path`` (the model apply_edits and the device
    filter use, spec/edits.py), and the host node it copies: under the dev root, so a rootless
    runtime bind-mounts that one (it cannot mknod)."""
    host = roots.host(roots.dev_root, path)
    mode = host_files.mode(host)
    if mode is None:
        missing.add(path)
        mode = 0o666
    else:
        mode = stat.S_IMODE(mode)
    return DeviceNode(path=path, type="c", major=major, minor=minor, file_mode=mode, uid=0,
                      gid=0, host_path=host if host != path else None)


def _info_fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _mig_devices(roots: DriverRoots, host: HostFiles, gpu_index: int, minor: int,
                 caps_major: int | None, missing: set[str]):
    base = os.path.join(roots.proc_root, f"driver/nvidia/capabilities/gpu{minor}/mig")
    found = []
    for gi in host.listdir(base):
        if not gi.startswith("gi") or not gi[2:].isdecimal():
            continue
        gi_minor = _access_minor(host, os.path.join(base, gi, "access"))
        for ci in host.listdir(os.path.join(base, gi)):
            if not ci.startswith("ci") or not ci[2:].isdecimal():
                continue
            ci_minor = _access_minor(host, os.path.join(base, gi, ci, "access"))
            if gi_minor is None or ci_minor is None or caps_major is None:
                continue
            found.append((int(gi[2:]), int(ci[2:]), gi_minor, ci_minor))
    return tuple(
        MigDevice(gpu_index, i, g, c, tuple(
            _node(roots, host, f"/dev/nvidia-caps/nvidia-cap{m}", caps_major, m, missing)
            for m in (gm, cm)))
        for i, (g, c, gm, cm) in enumerate(sorted(found)))


def _access_minor(host: HostFiles, path: str) -> int | None:
    text = host.text(path)
    m = re.search(r"DeviceFileMinor:\s*(\d+)", text or "")
    return int(m.group(1)) if m else None


def read_gpus(roots: DriverRoots, host: HostFiles, nvidia_major: int, caps_major: int | None,
              warnings: list[str], missing: set[str]) -> tuple[GPU, ...]:
    gpus_dir = os.path.join(roots.proc_root, "driver/nvidia/gpus")
    out = []
    # the directory names are PCI bus ids; sorted = PCI bus order = nvidia-smi's index order
    for index, bus in enumerate(sorted(host.listdir(gpus_dir), key=str.lower)):
        proc_dir = os.path.join(gpus_dir, bus)
        info = _info_fields(host.text(os.path.join(proc_dir, "information")) or "")
        try:
            minor = int(info["Device Minor"])
        except (KeyError, ValueError):
            warnings.append(f"{proc_dir}/information has no Device Minor; GPU skipped")
            continue
        node = _node(roots, host, f"/dev/nvidia{minor}", nvidia_major, minor, missing)
        if node.path in missing:
            warnings.append(f"{node.host_path or node.path} is missing (GPU {index}); "
                            "create it with nvidia-modprobe -c=" + str(minor))
        out.append(GPU(index=index, minor=minor, uuid=info.get("GPU UUID", ""),
                       model=info.get("Model", ""), bus_id=info.get("Bus Location", bus),
                       proc_dir=proc_dir, node=node,
                       mig=_mig_devices(roots, host, index, minor, caps_major, missing)))
    return tuple(out)


def control_nodes(roots: DriverRoots, host: HostFiles, majors: dict[str, int],
                  warnings: list[str], missing: set[str]):
    nv = majors.get("nvidia-frontend", majors.get("nvidia", NVIDIA_MAJOR))
    nodes = {"nvidiactl": _node(roots, host, "/dev/nvidiactl", nv, CTL_MINOR, missing),
             "nvidia-modeset": _node(roots, host, "/dev/nvidia-modeset", nv, MODESET_MINOR, missing)}
    uvm = majors.get("nvidia-uvm")
    if uvm is None:
        warnings.append("nvidia-uvm is not loaded (no entry in /proc/devices): CUDA will fail; "
                        "load it with nvidia-modprobe -u -c=0")
    else:
        nodes["nvidia-uvm"] = _node(roots, host, "/dev/nvidia-uvm", uvm, 0, missing)
        nodes["nvidia-uvm-tools"] = _node(roots, host, "/dev/nvidia-uvm-tools", uvm, 1, missing)
    if "/dev/nvidiactl" in missing:
        warnings.append(f"{nodes['nvidiactl'].host_path or '/dev/nvidiactl'} is missing: "
                        "run nvidia-modprobe")
    return nv, nodes


def find_binaries(roots: DriverRoots, host: HostFiles) -> dict[str, str]:
    found = {}
    for names in caps.BINARIES.values():
        for name in names:
            for d in BIN_DIRS:
                path = os.path.join(roots.driver_root, d, name)
                if host.isfile(path):
                    found[name] = path
                    break
    return found


def discover(roots: DriverRoots | None = None, host: HostFiles | None = None) -> Driver:
    """Everything minictr knows about the host's driver, read from files (no NVML) through
    ``host`` (a new HostFiles when None; pass one to keep what was read)."""
    roots = roots or DriverRoots()
    host = host or HostFiles(roots)
    version = read_driver_version(roots, host)
    warnings: list[str] = []
    cuda, note = cuda_version_for_driver(version)
    if note:
        warnings.append(note)
    majors = char_majors(roots, host)
    missing: set[str] = set()
    nv_major, control = control_nodes(roots, host, majors, warnings, missing)
    gpus = read_gpus(roots, host, nv_major, majors.get("nvidia-caps"), warnings, missing)
    libraries, stale = read_libraries(roots, version, warnings, host)
    fw_dir = os.path.join(roots.driver_root, "lib/firmware/nvidia", version)
    firmware = tuple(os.path.join(fw_dir, n) for n in host.listdir(fw_dir) if n.endswith(".bin"))
    ipc = tuple(roots.host(roots.driver_root, p) for sockets in caps.IPC_SOCKETS.values()
                for p in sockets if host.exists(roots.host(roots.driver_root, p)))
    return Driver(roots=roots, version=version, cuda_version=cuda, gpus=gpus, control=control,
                  libraries=libraries, binaries=find_binaries(roots, host), firmware=firmware,
                  ipc=ipc, stale=stale, warnings=tuple(warnings), missing=frozenset(missing))
