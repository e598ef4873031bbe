"""Counting what containers leave on the host, before and after many of them (the soak tier).

``Census.take()`` returns everything a container may leave, as sets; ``diff`` names what a
later census holds that an earlier one did not. BPF programs are listed the kernel's way,
bpf(2) BPF_PROG_GET_NEXT_ID / BPF_PROG_GET_FD_BY_ID / BPF_OBJ_GET_INFO_BY_FD (bpf(2);
union bpf_attr and struct bpf_prog_info in include/uapi/linux/bpf.h), through minictr's own
syscall face.
"""
from __future__ import annotations

import errno
import os
import struct

from minictr.runtime import syscalls

# enum bpf_cmd (include/uapi/linux/bpf.h)
BPF_PROG_GET_NEXT_ID, BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD = 11, 13, 15
ATTR_SIZE = 128
INFO_SIZE = 80          # struct bpf_prog_info up to and including name[16] (offset 64)
PROGRAM_NAME = b"minictr_devices"


def _bpf(kernel, cmd: int, fields: list[tuple[int, str, int]], buf=None):
    ffi = syscalls.ffi
    attr = ffi.new("char[]", ATTR_SIZE)
    view = ffi.buffer(attr)
    for offset, fmt, value in fields:
        struct.pack_into("<" + fmt, view, offset, value)
    rc = kernel.bpf(cmd, attr, ATTR_SIZE)
    return rc, view


def device_programs(kernel=None) -> set[int]:
    """IDs of the loaded BPF_PROG_TYPE_CGROUP_DEVICE programs named as minictr names them."""
    kernel = kernel or syscalls.Syscalls()
    ffi = syscalls.ffi
    found, prog_id = set(), 0
    while True:
        try:
            _, view = _bpf(kernel, BPF_PROG_GET_NEXT_ID, [(0, "I", prog_id)])
        except OSError as err:
            if err.errno == errno.ENOENT:       # no program after prog_id
                return found
            raise
        prog_id = struct.unpack_from("<I", view, 4)[0]
        try:
            fd, _ = _bpf(kernel, BPF_PROG_GET_FD_BY_ID, [(0, "I", prog_id)])
        except OSError as err:
            if err.errno == errno.ENOENT:       # unloaded meanwhile
                continue
            raise
        try:
            info = ffi.new("char[]", INFO_SIZE)
            _bpf(kernel, BPF_OBJ_GET_INFO_BY_FD,
                 [(0, "I", fd), (4, "I", INFO_SIZE), (8, "Q", int(ffi.cast("uintptr_t", info)))])
            raw = bytes(ffi.buffer(info))
        finally:
            os.close(fd)
        prog_type = struct.unpack_from("<I", raw, 0)[0]
        if prog_type == syscalls.BPF_PROG_TYPE_CGROUP_DEVICE and \
                raw[64:80].split(b"\0")[0] == PROGRAM_NAME:
            found.add(prog_id)


def zombies() -> set[int]:
    out = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    out.add(int(pid))
        except (OSError, IndexError):
            pass
    return out


def processes_mentioning(marker: str) -> set[int]:
    out = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    out.add(int(pid))
        except OSError:
            pass
    return out


def _walk(top: str, depth: int = 12) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(top):
        rel = os.path.relpath(dirpath, top)
        if rel.count("/") >= depth:
            dirnames[:] = []
        out.update(os.path.normpath(os.path.join(rel, n)) for n in dirnames + filenames)
    return out


def _listing(path: str) -> set[str]:
    try:
        return set(os.listdir(path))
    except FileNotFoundError:
        return set()


def cgroup_dirs(parent: str) -> set[str]:
    """Every cgroup directory below ``parent`` (a --cgroup-parent), in each v1 hierarchy and
    the v2 tree."""
    found = set()
    top = "/sys/fs/cgroup"       # v1 controllers and, on hybrid hosts, unified/ beside them
    for ctl in os.listdir(top) if os.path.isdir(top) else ():
        for dirpath, dirnames, _ in os.walk(os.path.join(top, ctl, parent)):
            found.update(os.path.join(dirpath, d) for d in dirnames)
    if os.path.exists(os.path.join(top, "cgroup.controllers")):     # pure v2
        for dirpath, dirnames, _ in os.walk(os.path.join(top, parent)):
            found.update(os.path.join(dirpath, d) for d in dirnames)
    return found


class Census:
    """What a set of containers started with ``store``/``state`` paths may leave behind."""

    def __init__(self, store: str, state: str, tmpdir: str, marker: str, cgroup_parent: str):
        self.store, self.state, self.tmpdir = store, state, tmpdir
        self.marker, self.cgroup_parent = marker, cgroup_parent

    def take(self) -> dict[str, set]:
        with open("/proc/self/mountinfo") as f:
            mounts = {line.split()[4] for line in f
                      if self.store in line or self.state in line}
        return {
            "mounts": mounts,
            "cgroups": cgroup_dirs(self.cgroup_parent),
            "bpf programs": device_programs() if os.geteuid() == 0 else set(),
            "state entries": {n for n in _listing(self.state) if n not in ("names", ".cache")},
            "names": _listing(os.path.join(self.state, "names")),      # and claim files
            "writable layers": _listing(os.path.join(self.store, "containers")),
            "store temporaries": _listing(os.path.join(self.store, "tmp")),
            "tmpdir": _walk(self.tmpdir),
            "zombies": zombies(),
            "processes": processes_mentioning(self.marker),
        }


def diff(before: dict[str, set], after: dict[str, set]) -> dict[str, set]:
    """What ``after`` holds that ``before`` did not, by kind (empty kinds left out)."""
    return {k: after[k] - before[k] for k in after if after[k] - before[k]}
