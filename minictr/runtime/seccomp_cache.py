"""Compiled seccomp filters on disk, keyed by what they are compiled from.

Compiling Docker's default profile through libseccomp takes ~16 ms (bench/README.md, "Seccomp"),
as long as the rest of a container's kernel setup; reading a cached program takes ~0.1 ms and
does not load libseccomp at all. An entry's name is the sha256 of:

- the ``linux.seccomp`` object as canonical JSON (sorted keys), so a changed profile, a
  different capability set (which changes the resolved rules) or architecture is a new entry;
- the identity (inode, size, mtime) of the libseccomp shared object that compiled the filters,
  recorded in ``DIR/libseccomp`` on the first compile: an upgraded library knows more syscalls
  and makes different programs, and its new file does not match the record;
- the identity of the compiler (minictr/runtime/seccomp.py) itself.

Entries are written to a temporary name and renamed into place, so a reader sees a whole entry
or none; a damaged one is recompiled. The directory must belong to this user and be writable by
no one else (it is made 0700): a program read from it is loaded into containers as it is.
"""
from __future__ import annotations

import os

from minictr import cachefiles, jsonio
from minictr.cachefiles import sha256
from minictr.runtime import seccomp as seccomp_mod
from minictr.runtime.seccomp import CompiledFilter

_RECORD = "libseccomp"
_MAGIC = b"minictr-seccomp 1\n"


def cached_filter(seccomp: dict, cache_dir: str) -> CompiledFilter:
    """The compiled filter for ``seccomp``, from ``cache_dir`` when it holds it, else compiled
    (and stored there)."""
    text = jsonio.dumps(seccomp, sort_keys=True, separators=(",", ":")).encode()
    ident = _identity(cache_dir)
    if ident is not None:
        hit = _read(_entry(cache_dir, text, ident))
        if hit is not None:
            return hit
    compiled = seccomp_mod.compile_filter(seccomp)
    ident = _record_library(cache_dir)
    if ident is not None:
        _write(_entry(cache_dir, text, ident), compiled)
    return compiled


def _entry(cache_dir: str, text: bytes, ident: str) -> str:
    return os.path.join(cache_dir, sha256(ident.encode() + b"\0" + text).hexdigest() + ".bpf")


def _file_id(path: str) -> str:
    st = os.stat(path)
    return f"{path}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _identity(cache_dir: str) -> str | None:
    """libseccomp's and the compiler's identity, or None (no record, untrusted dir, stale)."""
    recorded = cachefiles.read(os.path.join(cache_dir, _RECORD))
    if recorded is None:
        return None
    try:
        library = recorded.decode().strip()
        return _file_id(library) + "\0" + _file_id(seccomp_mod.__file__)
    except (OSError, ValueError):
        return None


def _loaded_library() -> str | None:
    """The libseccomp file this process has mapped (it has, after a compile)."""
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split(None, 5)[-1].strip()
            if "/libseccomp.so" in path:
                return path
    return None


def _record_library(cache_dir: str) -> str | None:
    try:
        library = _loaded_library()
        if library is None or not cachefiles.write(os.path.join(cache_dir, _RECORD),
                                                   library.encode() + b"\n"):
            return None
        return _file_id(library) + "\0" + _file_id(seccomp_mod.__file__)
    except OSError:
        return None           # a cache we cannot write is only slower


def _read(path: str) -> CompiledFilter | None:
    data = cachefiles.read(path)
    try:
        if data is None or not data.startswith(_MAGIC):
            return None
        header, _, bpf = data[len(_MAGIC):].partition(b"\n")
        meta = jsonio.loads(header)
        if not bpf or len(bpf) % 8 or len(bpf) != meta["size"]:
            return None
        return CompiledFilter(bpf, int(meta["flags"]), tuple(meta["unknown"]),
                              tuple(tuple(pair) for pair in meta["enosys_above"]),
                              tuple(meta["overridden"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(path: str, compiled: CompiledFilter) -> None:
    meta = {"flags": compiled.flags, "unknown": list(compiled.unknown_syscalls),
            "enosys_above": [list(p) for p in compiled.enosys_above],
            "overridden": list(compiled.overridden), "size": len(compiled.bpf)}
    cachefiles.write(path, _MAGIC + jsonio.dumps(meta).encode() + b"\n" + compiled.bpf)
