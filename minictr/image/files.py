"""Crash-safe file operations for the store: atomic replacement, flock(2) files that gc may
unlink, tree removal that works without CAP_DAC_OVERRIDE, and a hashing reader.

rename(2) within one filesystem is atomic: readers see the old name or the new one, never a part
(rename(2), DESCRIPTION). flock(2) locks belong to an open file description, so two opens in one
process exclude each other too (flock(2), NOTES), which lets threads and processes share one rule.
"""
from __future__ import annotations

import contextlib
import fcntl
import os

_CHUNK = 1 << 20


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a temporary in ``path``'s directory, fsync it, and rename(2) it over
    ``path``: a reader sees the old file or the new one, never a part."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.urandom(16).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)     # the umask narrowed O_CREAT's mode
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def lock_file(path: str, operation: int) -> int:
    """flock(2) ``path`` (created if needed) and return the fd. gc unlinks lock files while
    holding them, so after locking check the path still names the inode we locked, else retry
    on the new file (a lock on an unlinked file excludes no one)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, operation)
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def remove_tree(path: str) -> int:
    """Remove ``path`` and return the bytes freed. Image directories may be mode 0555: without
    CAP_DAC_OVERRIDE (rootless) their entries can only be unlinked after a chmod u+rwx."""
    freed = 0
    for dirpath, dirnames, filenames in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o700)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            with contextlib.suppress(OSError):
                freed += os.lstat(os.path.join(dirpath, name)).st_size
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if not os.path.islink(full):
                with contextlib.suppress(OSError):
                    os.chmod(full, 0o700)
    import shutil       # lazily: `minictr run` never removes trees

    shutil.rmtree(path, ignore_errors=True)
    return freed


class HashingReader:
    """A read-only stream that hashes (and optionally copies) every byte read through it.
    With ``limit``, reading more than ``limit`` bytes is an error (a blob larger than its
    descriptor says is refused before the excess is stored or unpacked)."""

    def __init__(self, raw, copy_to=None, limit: int | None = None, what: str = "the blob"):
        self._raw = raw
        self._copy = copy_to
        self._limit, self._what = limit, what
        import hashlib  # not at module level: it is off the run path
        self.hash = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._limit is not None:     # ask for one byte past the limit at most
            left = self._limit + 1 - self.size
            n = left if n is None or n < 0 else min(n, left)
        data = self._raw.read(n if n is not None and n >= 0 else -1)
        if self._limit is not None and self.size + len(data) > self._limit:
            from minictr.errors import ImageError

            raise ImageError(f"{self._what} is larger than its descriptor's size "
                             f"({self._limit} bytes): refused",
                             hint="the source is corrupt, or lies about the blob")
        if data:
            self.hash.update(data)
            self.size += len(data)
            if self._copy is not None:
                self._copy.write(data)
        return data

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Read to the end, so the digest covers what follows the part a parser needed
        (a tar's end-of-archive padding, a compressor's trailer)."""
        while self.read(_CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def unlink_size(path: str) -> int:
    try:
        size = os.lstat(path).st_size
        os.unlink(path)
        return size
    except FileNotFoundError:
        return 0
