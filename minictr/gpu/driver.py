"""The driver's records, and the one reader of host files that discovery goes through.

Every record a discovered driver is made of lives here: where to look (``DriverRoots``), the
GPUs, their MIG devices, the libraries, and the ``Driver`` that holds them; ``to_plain`` and
``from_plain`` turn a ``Driver`` into JSON-ready data and back, for the discovery cache
(driver_cache.py).

``HostFiles`` is the only way discovery (discover.py, driverlibs.py, elf.py) touches the host.
Besides answering, it keeps a *witness* of every answer: the text of a file under the proc root
(procfs sizes and times say nothing), a directory's listing, a symlink's target, else the file's
identity (dev, ino, mtime, size, mode, rdev) or its absence. ``witnesses.still_holds`` asks the
host the same questions again: while every answer is unchanged, a discovery made from them would
find the same driver, so its result can be reused (driver_cache.py).
"""
from __future__ import annotations

import os
import stat

from minictr.gpu.witnesses import ask
from minictr.records import record
from minictr.spec.edits import DeviceNode

NVIDIA_MAJOR = 195
CTL_MINOR = 255
MODESET_MINOR = 254


@record
class DriverRoots:
    """Where to look. Tests point these at a fake driver; real hosts use the defaults, or a
    containerised driver (``/run/nvidia/driver``) as the driver root."""

    driver_root: str = "/"
    dev_root: str = "/"
    proc_root: str = "/proc"
    mps_pipe_dir: str | None = None       # None: $CUDA_MPS_PIPE_DIRECTORY or /tmp/nvidia-mps

    @classmethod
    def from_args(cls, driver_root=None, dev_root=None, proc_root=None) -> "DriverRoots":
        return cls(driver_root or "/", dev_root or "/", proc_root or "/proc")

    def host(self, root: str, path: str) -> str:
        return os.path.join(root, path.lstrip("/"))


@record
class Library:
    stem: str                 # libcuda
    capability: str
    x86_64: bool              # False: the i386 copy (compat32)
    host_path: str            # the real file, under driver_root
    real_name: str            # libcuda.so.580.65.06
    sonames: tuple[str, ...]  # libcuda.so.1 (the cache keys that name this file)


@record
class MigDevice:
    gpu_index: int
    index: int                # rank among this GPU's MIG devices, for NVIDIA_VISIBLE_DEVICES=g:m
    gi: int
    ci: int
    nodes: tuple[DeviceNode, ...]   # /dev/nvidia-caps/nvidia-capN of the GI and the CI access


@record
class GPU:
    index: int
    minor: int
    uuid: str
    model: str
    bus_id: str
    proc_dir: str             # PROC/driver/nvidia/gpus/<bus>
    node: DeviceNode
    mig: tuple[MigDevice, ...] = ()


@record
class Driver:
    roots: DriverRoots
    version: str
    cuda_version: str | None
    gpus: tuple[GPU, ...]
    control: dict[str, DeviceNode]      # nvidiactl, nvidia-modeset, nvidia-uvm, nvidia-uvm-tools
    libraries: tuple[Library, ...]
    binaries: dict[str, str]            # name -> host path
    firmware: tuple[str, ...]           # host paths (container path: minus driver_root)
    ipc: tuple[str, ...]                # host socket paths (container path: minus driver_root)
    stale: tuple[str, ...] = ()         # library files whose version is not the module's
    warnings: tuple[str, ...] = ()
    missing: frozenset[str] = frozenset()   # container paths of nodes the dev root lacks

    def container_path(self, host_path: str) -> str:
        """The path a driver file gets inside the container: its path under driver_root."""
        rel = os.path.relpath(host_path, self.roots.driver_root)
        return "/" + rel

    def to_dict(self) -> dict:
        by_cap: dict[str, list[str]] = {}
        for lib in self.libraries:
            key = lib.capability if lib.x86_64 else "compat32"
            by_cap.setdefault(key, []).append(lib.host_path)
        return {
            "driver_version": self.version,
            "cuda_version": self.cuda_version,
            "gpus": [{"index": g.index, "minor": g.minor, "uuid": g.uuid, "model": g.model,
                      "bus_id": g.bus_id, "device": g.node.path,
                      "mig": [f"{m.gpu_index}:{m.index} (gi {m.gi}, ci {m.ci})"
                              for m in g.mig]} for g in self.gpus],
            "control_nodes": {n.path: f"{n.major}:{n.minor}" + (" missing" if n.path in
                                                                 self.missing else "")
                              for n in self.control.values()},
            "libraries": by_cap,
            "binaries": dict(self.binaries),
            "firmware": list(self.firmware),
            "ipc_sockets": list(self.ipc),
            "stale_libraries": list(self.stale),
            "warnings": list(self.warnings),
        }


# ------------------------------------------------------------------ the cache's plain form

def to_plain(driver: Driver) -> dict:
    """``driver`` as JSON-ready data (its roots are left out: the cache is keyed on them)."""
    return {"version": driver.version, "cuda_version": driver.cuda_version,
            "gpus": [[*g[:6], list(g.node), [[*m[:4], [list(n) for n in m.nodes]]
                                               for m in g.mig]] for g in driver.gpus],
            "control": {k: list(n) for k, n in driver.control.items()},
            "libraries": [[*lib[:5], list(lib.sonames)] for lib in driver.libraries],
            "binaries": driver.binaries, "firmware": list(driver.firmware),
            "ipc": list(driver.ipc), "stale": list(driver.stale),
            "warnings": list(driver.warnings), "missing": sorted(driver.missing)}


def from_plain(data: dict, roots: DriverRoots) -> Driver:
    """The inverse of ``to_plain``; raises (KeyError, TypeError, ValueError) on data of
    another shape, which the cache treats as no entry."""
    def node(fields) -> DeviceNode:
        return DeviceNode(*fields)

    gpus = tuple(GPU(*g[:6], node(g[6]), tuple(
        MigDevice(*m[:4], tuple(node(n) for n in m[4])) for m in g[7])) for g in data["gpus"])
    libraries = tuple(Library(*lib[:5], tuple(lib[5])) for lib in data["libraries"])
    driver = Driver(roots=roots, version=str(data["version"]),
                    cuda_version=data["cuda_version"], gpus=gpus,
                    control={str(k): node(v) for k, v in data["control"].items()},
                    libraries=libraries, binaries=dict(data["binaries"]),
                    firmware=tuple(data["firmware"]), ipc=tuple(data["ipc"]),
                    stale=tuple(data["stale"]), warnings=tuple(data["warnings"]),
                    missing=frozenset(data["missing"]))
    if to_plain(driver) != data:           # a field of the wrong type or count
        raise ValueError("discovery cache entry of another shape")
    return driver


# ------------------------------------------------------------------ the one reader of the host

class HostFiles:
    """Reads the host for discovery and remembers what it saw (``witnesses``)."""

    def __init__(self, roots: DriverRoots):
        self.proc_prefix = os.path.join(roots.proc_root, "")
        self.seen: dict[tuple[str, str], object] = {}

    def _ask(self, kind: str, path: str):
        key = (kind, path)
        if key not in self.seen:
            self.seen[key] = ask(kind, path)
        return self.seen[key]

    def text(self, path: str) -> str | None:
        """A file's text, or None when it does not exist. A file outside the proc root is
        witnessed by its identity, not its text (a library is not read whole)."""
        if path.startswith(self.proc_prefix):
            return self._ask("text", path)
        self._ask("stat", path)
        return _text(path)

    def data(self, path: str) -> bytes | None:
        """A (non-proc) file's bytes, witnessed by its identity; None when it is missing."""
        if self._ask("stat", path) is None:
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def open_binary(self, path: str):
        """An open binary file (an ELF header to read), witnessed by its identity."""
        self._ask("stat", path)
        return open(path, "rb")

    def listdir(self, path: str) -> list[str]:
        return self._ask("list", path)

    def stat(self, path: str) -> list | None:
        """(dev, ino, mtime_ns, size, mode, rdev) of ``path`` (symlinks followed), or None."""
        return self._ask("stat", path)

    def mode(self, path: str) -> int | None:
        ident = self.stat(path)
        return None if ident is None else ident[4]

    def exists(self, path: str) -> bool:
        return self.stat(path) is not None

    def isfile(self, path: str) -> bool:
        ident = self.stat(path)
        return ident is not None and stat.S_ISREG(ident[4])

    def readlink(self, path: str) -> str | None:
        return self._ask("link", path)

    @property
    def witnesses(self) -> list[list]:
        return [[kind, path, value] for (kind, path), value in self.seen.items()]
