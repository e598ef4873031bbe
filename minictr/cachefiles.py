"""Private cache files under ``STATE/.cache`` (``cache_dir``): the compiled seccomp programs
(runtime/seccomp_cache.py), the discovered GPU driver (gpu/driver_cache.py), the plans of
repeated runs (plancache.py) and the mount-point layers (mountpoints.py, directories).

What they keep is trusted as it is (a seccomp program is loaded into containers), so a cache
directory counts only when it is this user's and writable by no one else (it is made 0700),
and an entry only when it is a regular file of this user's, opened without following a link.
Entries are named by a sha256 of what they are made from (``key_of``: of its JSON, with the C
sha256), the code that makes them by its files' identities (``code_identity``).
Entries are written to a temporary name (one per pid: a leftover is a dead process's) and
renamed, so a reader sees a whole entry or none. A cache that cannot be read or written only
costs time: every failure here is None or False, never an error.
"""
from __future__ import annotations

import os
import stat

from minictr import jsonio

try:                                    # the C sha256 alone: hashlib would load OpenSSL (~4 ms)
    from _sha256 import sha256
except ImportError:                     # Python 3.12 renamed it
    try:
        from _sha2 import sha256
    except ImportError:
        from hashlib import sha256


def key_of(material: list) -> str:
    """The hex sha256 of ``material`` as JSON: what names a cache entry."""
    return sha256(jsonio.dumps(material).encode()).hexdigest()


def code_identity(paths) -> list | None:
    """[inode, size, mtime] of each file of ``paths``, for a key that changes with the code
    that made the entry; None when one cannot be read (then: no cache)."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            return None
        out.append([st.st_ino, st.st_size, st.st_mtime_ns])
    return out


def cache_dir(state: str, name: str) -> str:
    """The directory of the cache ``name`` (seccomp, gpu, plan) under the state root ``state``:
    the one place that says where minictr's caches live."""
    return os.path.join(state, ".cache", name)


def ours(st: os.stat_result, kind) -> bool:
    """A file of ``kind`` (stat.S_ISDIR...) of this user's that no one else can write."""
    return (kind(st.st_mode) and st.st_uid == os.geteuid()
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def trusted_dir(path: str) -> bool:
    try:
        return ours(os.stat(path), stat.S_ISDIR)
    except OSError:
        return False


def read(path: str) -> bytes | None:
    """The entry at ``path`` (in a trusted directory, of this user's), or None."""
    if not trusted_dir(os.path.dirname(path)):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not ours(os.fstat(fd), stat.S_ISREG):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError:
        return None
    finally:
        os.close(fd)


def write(path: str, data: bytes) -> bool:
    """Store ``data`` at ``path``, making its directory 0700 if missing; False if it could not."""
    directory = os.path.dirname(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if not trusted_dir(directory):
            return False
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(tmp, path)
        return True
    except OSError:
        return False
