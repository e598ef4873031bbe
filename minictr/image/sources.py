"""Read-only access to the files of an image source: a directory, or a tar archive read in
place (no extraction).

A tar archive is indexed once with tarfile (headers only: it seeks over the data); each member
is then read through its own file descriptor from ``offset_data``, so several threads can read
several layers of one archive at once. Names inside a source come from untrusted documents
(manifest.json's paths): they are normalised and must stay inside the source.
"""
from __future__ import annotations

import os
import posixpath
import tarfile

from minictr.errors import ImageError

_COMPRESSED = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"\xfd7zXZ": "xz",
               b"BZh": "bzip2"}
MAX_LINKS = 16


def _clean(name: str, where: str) -> str:
    norm = posixpath.normpath("/" + name).lstrip("/")
    if not norm or norm.startswith("..") or "\0" in name:
        raise ImageError(f"{where}: invalid path {name!r} in the archive's documents")
    return norm


class _Section:
    """A bounded, sequential reader of one tar member, on its own fd."""

    def __init__(self, path: str, offset: int, size: int, name: str):
        self._f = open(path, "rb")
        self._f.seek(offset)
        self._left = size
        self._name = name

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self._left:
            n = self._left
        if n == 0:
            return b""
        data = self._f.read(n)
        if len(data) < n:
            raise ImageError(f"{self._name} is truncated in the archive")
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TarSource:
    def __init__(self, path: str):
        self.where = path
        self._path = path
        try:
            with open(path, "rb") as f:
                head = f.read(6)
        except OSError as err:
            raise ImageError(f"cannot read {path}: {err.strerror}") from err
        for magic, kind in _COMPRESSED.items():
            if head.startswith(magic):
                raise ImageError(f"{path} is a {kind}-compressed archive; minictr reads "
                                 "archives in place, uncompressed",
                                 hint=f"decompress it first (e.g. `{kind} -dk {path}`)")
        try:
            with tarfile.open(path, "r:") as tar:
                members = tar.getmembers()
        except (tarfile.TarError, OSError) as err:
            raise ImageError(f"{path} is not a readable tar archive: {err}") from err
        self._members = {}
        for m in members:
            name = posixpath.normpath("/" + m.name).lstrip("/")
            if name:
                self._members[name] = m

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def _member(self, name: str) -> tarfile.TarInfo:
        name = _clean(name, self.where)
        for _ in range(MAX_LINKS):
            m = self._members.get(name)
            if m is None:
                raise ImageError(f"{self.where}: {name} is missing from the archive")
            if m.issym():     # docker save links a repeated layer.tar to its first copy
                name = _clean(posixpath.join(posixpath.dirname(name), m.linkname), self.where)
            elif m.islnk():
                name = _clean(m.linkname, self.where)
            elif m.isreg() and not m.issparse():
                return m
            else:
                raise ImageError(f"{self.where}: {name} is not a regular file")
        raise ImageError(f"{self.where}: too many links at {name}")

    def exists(self, name: str) -> bool:
        try:
            self._member(name)
            return True
        except ImageError:
            return False

    def size(self, name: str) -> int:
        return self._member(name).size

    def open(self, name: str) -> _Section:
        m = self._member(name)
        return _Section(self._path, m.offset_data, m.size, f"{self.where}:{name}")

    def head(self, name: str, n: int) -> bytes:
        with self.open(name) as f:
            return f.read(min(n, self.size(name)))

    def read(self, name: str, limit: int) -> bytes:
        size = self.size(name)
        if size > limit:
            raise ImageError(f"{self.where}: {name} is {size} bytes, more than {limit}: refused")
        with self.open(name) as f:
            return f.read(size)


class DirSource:
    def __init__(self, path: str):
        if not os.path.isdir(path):
            raise ImageError(f"{path} is not a directory")
        self.where = path
        self._root = os.path.realpath(path)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def _path(self, name: str) -> str:
        full = os.path.realpath(os.path.join(self._root, _clean(name, self.where)))
        if not full.startswith(self._root + os.sep):
            raise ImageError(f"{self.where}: {name} leads outside the directory: refused")
        return full

    def exists(self, name: str) -> bool:
        try:
            return os.path.isfile(self._path(name))
        except ImageError:
            return False

    def size(self, name: str) -> int:
        return os.stat(self._path(name)).st_size

    def open(self, name: str):
        try:
            return open(self._path(name), "rb")
        except OSError as err:
            raise ImageError(f"{self.where}: cannot read {name}: {err.strerror}") from err

    def head(self, name: str, n: int) -> bytes:
        with self.open(name) as f:
            return f.read(n)

    def read(self, name: str, limit: int) -> bytes:
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ImageError(f"{self.where}: {name} is more than {limit} bytes: refused")
        return data


def open_source(path: str, kind: str | None):
    """The source at ``path``; ``kind`` is the transport (oci, oci-archive, docker-archive)
    or None for a plain path, whose type (directory or file) decides."""
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file or directory")
    if kind == "oci":
        return DirSource(path)
    if kind == "oci-archive" or (kind is None and not os.path.isdir(path)):
        return TarSource(path)
    return DirSource(path) if os.path.isdir(path) else TarSource(path)
