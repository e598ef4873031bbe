"""Deterministic layer tars, and hand-made tars for tests (whiteouts, odd entries).

An OCI layer is a tar archive of a filesystem changeset (image-spec ``layer.md``). Two layers built
from the same tree must be byte-identical, so that their digests match and a store deduplicates
them: entries are written in sorted order, owners and mtimes can be fixed, user/group *names* are
left empty (a runtime uses the numeric ids), and compression headers carry no timestamp.

Deletions are whiteouts (``layer.md``, "Whiteouts"): an empty file ``.wh.NAME`` deletes ``NAME``
from the layers below, and ``DIR/.wh..wh..opq`` ("opaque") hides everything below in ``DIR``.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from . import ToolError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
COMPRESSIONS = ("gzip", "zstd", "none")


@dataclass(frozen=True)
class Normalize:
    """How entries are rewritten: ``owner`` (uid, gid) for every entry unless ``owners`` names the
    path; None keeps the file's own ids. ``mtime`` None keeps the file's mtime."""

    owner: tuple[int, int] | None = (0, 0)
    owners: dict[str, tuple[int, int]] = field(default_factory=dict)
    mtime: int | None = None

    def apply(self, info: tarfile.TarInfo) -> tarfile.TarInfo:
        ids = self.owners.get(info.name.rstrip("/"), self.owner)
        if ids is not None:
            info.uid, info.gid = ids
        info.uname = info.gname = ""
        if self.mtime is not None:
            info.mtime = self.mtime
        return info


def walk_tree(root: str, *, exclude: Iterable[str] = ()) -> Iterator[str]:
    """Yield every path below ``root`` relative to it, a directory before its children, names
    sorted bytewise at each level. ``exclude`` lists relative paths to leave out with their
    subtrees."""
    skip = {p.strip("/") for p in exclude}

    def visit(rel: str) -> Iterator[str]:
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            entries = sorted(it, key=lambda e: os.fsencode(e.name))
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            if child in skip:
                continue
            yield child
            if entry.is_dir(follow_symlinks=False):
                yield from visit(child)

    yield from visit("")


def add_tree(tf: tarfile.TarFile, root: str, paths: Iterable[str], norm: Normalize) -> None:
    """Add ``paths`` (relative to ``root``) to ``tf`` in the given order.

    A regular file whose inode was already added becomes a hardlink entry (``tarfile`` tracks
    inodes per archive), so hardlinks survive. Sockets cannot be archived and are skipped.
    """
    for rel in paths:
        full = os.path.join(root, rel)
        info = tf.gettarinfo(full, arcname=rel)
        if info is None:            # a socket
            continue
        norm.apply(info)
        if info.isreg():
            with open(full, "rb") as f:
                tf.addfile(info, f)
        else:
            tf.addfile(info)


class CompressingWriter(io.RawIOBase):
    """A write-only stream that hashes what it is given (the layer's DiffID: sha256 of the
    uncompressed tar, image-spec ``config.md``), compresses it, writes the result to ``out`` and
    hashes that too (the blob digest)."""

    def __init__(self, out, compression: str = "gzip", level: int | None = None):
        super().__init__()
        if compression not in COMPRESSIONS:
            raise ToolError(f"unknown compression {compression!r}",
                            hint=f"use one of {', '.join(COMPRESSIONS)}")
        self.out, self.compression = out, compression
        self.diff_hash, self.blob_hash, self.size = hashlib.sha256(), hashlib.sha256(), 0
        if compression == "gzip":
            # wbits 16+15: a gzip wrapper with MTIME 0 and no file name (RFC 1952) -> reproducible
            self._comp = zlib.compressobj(6 if level is None else level, zlib.DEFLATED, 31)
        elif compression == "zstd":
            import zstandard
            self._comp = zstandard.ZstdCompressor(level=3 if level is None else level).compressobj()
        else:
            self._comp = None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        data = bytes(data)
        self.diff_hash.update(data)
        self._emit(self._comp.compress(data) if self._comp else data)
        return len(data)

    def _emit(self, chunk: bytes) -> None:
        if chunk:
            self.out.write(chunk)
            self.blob_hash.update(chunk)
            self.size += len(chunk)

    def finish(self) -> tuple[str, str, int]:
        """Flush the compressor; return (diff_id, digest, compressed size)."""
        if self._comp:
            self._emit(self._comp.flush())
        return ("sha256:" + self.diff_hash.hexdigest(), "sha256:" + self.blob_hash.hexdigest(),
                self.size)


def tar_tree(out, root: str, *, paths: Iterable[str] | None = None,
             norm: Normalize = Normalize()) -> None:
    """Write a deterministic tar of ``root`` (or of ``paths`` below it) to the stream ``out``."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        add_tree(tf, root, walk_tree(root) if paths is None else paths, norm)


class TarBuilder:
    """Build a layer tar entry by entry, in the order given: for tests that need whiteouts,
    opaque directories, devices or hostile entries (``..`` names, absolute symlinks) that no
    directory on disk could produce. Names are written exactly as given."""

    def __init__(self, *, uid: int = 0, gid: int = 0, mtime: int = 0):
        self.entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
        self._defaults = (uid, gid, mtime)

    def _info(self, name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode = kind, mode
        info.uid, info.gid, info.mtime = self._defaults
        return info

    def add(self, info: tarfile.TarInfo, data: bytes | None = None) -> "TarBuilder":
        """Add a prepared entry as it is."""
        if data is not None:
            info.size = len(data)
        self.entries.append((info, data))
        return self

    def dir(self, name: str, mode: int = 0o755) -> "TarBuilder":
        return self.add(self._info(name, tarfile.DIRTYPE, mode))

    def file(self, name: str, data: bytes = b"", mode: int = 0o644) -> "TarBuilder":
        return self.add(self._info(name, tarfile.REGTYPE, mode), data)

    def symlink(self, name: str, target: str) -> "TarBuilder":
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        return self.add(info)

    def hardlink(self, name: str, target: str) -> "TarBuilder":
        info = self._info(name, tarfile.LNKTYPE, 0o644)
        info.linkname = target
        return self.add(info)

    def device(self, name: str, kind: str, major: int, minor: int,
               mode: int = 0o666) -> "TarBuilder":
        info = self._info(name, tarfile.CHRTYPE if kind == "c" else tarfile.BLKTYPE, mode)
        info.devmajor, info.devminor = major, minor
        return self.add(info)

    def fifo(self, name: str, mode: int = 0o644) -> "TarBuilder":
        return self.add(self._info(name, tarfile.FIFOTYPE, mode))

    def whiteout(self, path: str) -> "TarBuilder":
        """Delete ``path`` from the layers below: an empty ``DIR/.wh.NAME`` (layer.md)."""
        head, _, name = path.strip("/").rpartition("/")
        return self.file(f"{head}/{WHITEOUT_PREFIX}{name}" if head else WHITEOUT_PREFIX + name)

    def opaque(self, directory: str) -> "TarBuilder":
        """Hide everything the layers below have in ``directory``: ``DIR/.wh..wh..opq``."""
        return self.file(f"{directory.strip('/')}/{OPAQUE_MARKER}")

    def write_to(self, out) -> None:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            for info, data in self.entries:
                tf.addfile(info, io.BytesIO(data) if data is not None else None)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.write_to(buf)
        return buf.getvalue()


def changeset(*, deleted: Iterable[str] = (), opaque: Iterable[str] = (),
              files: dict[str, bytes] | None = None) -> TarBuilder:
    """A layer that deletes ``deleted`` paths (whiteouts), empties ``opaque`` directories (opaque
    markers) and adds ``files``; parent directories are written once each, before their
    children, as image builders do."""
    tb, have = TarBuilder(), set()

    def parents(rel: str) -> None:
        parts = rel.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in have:
                tb.dir(parent)
                have.add(parent)

    for directory in opaque:
        parents(directory.strip("/") + "/" + OPAQUE_MARKER)
        tb.opaque(directory)
    for path in deleted:
        parents(path)
        tb.whiteout(path)
    for path, data in (files or {}).items():
        parents(path)
        tb.file(path.strip("/"), data)
    return tb


def is_whiteout(name: str) -> bool:
    return os.path.basename(name.rstrip("/")).startswith(WHITEOUT_PREFIX)
