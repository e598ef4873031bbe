"""Reading a few small files out of a squashfs image without mounting it.

``minictr run FILE.sqsh`` plans the container before anything is mounted, and the plan needs
the image's config, /etc/passwd and /etc/group (and, for enroot images, /etc/environment and
/etc/rc). This reader follows only the metadata on the path to each file (superblock, the
directory blocks on the way, one inode, the file's own blocks), so the cost does not grow
with the image. The format is the kernel's (Documentation/filesystems/squashfs.rst; the
on-disk structures in fs/squashfs/squashfs_fs.h), version 4.0, little-endian.

The image is untrusted: every offset is checked against the image's bounds, every block's
decompressed size against its limit (8 KiB for metadata, the block size for data), symlinks
are followed inside the image only (at most 40), and a file is read only up to ``max_size``.

Decompressors: gzip (zlib), xz and lzma (lzma), zstd (the zstandard package). lzo and lz4
(enroot's default is lzo) have no Python module here: for those ``read_file`` asks
``unsquashfs -cat`` (squashfs-tools), which reads the whole inode table first.
"""
from __future__ import annotations

import os
import stat
import struct

from minictr.errors import ImageError
from minictr.records import record

MAGIC = 0x73717368
SUPERBLOCK = struct.Struct("<IIIIIHHHHHHQQQQQQQQ")       # 96 bytes
METADATA_SIZE = 8192
GZIP, LZMA, LZO, XZ, LZ4, ZSTD = 1, 2, 3, 4, 5, 6
COMPRESSORS = {GZIP: "gzip", LZMA: "lzma", LZO: "lzo", XZ: "xz", LZ4: "lz4", ZSTD: "zstd"}
NO_FRAGMENT = 0xFFFFFFFF
MAX_SYMLINKS = 40
MAX_READ = 64 << 20
# inode types (squashfs_fs.h)
DIR, FILE, SYMLINK = 1, 2, 3
LDIR, LFILE, LSYMLINK = 8, 9, 10
TYPE_MODE = {1: stat.S_IFDIR, 2: stat.S_IFREG, 3: stat.S_IFLNK, 4: stat.S_IFBLK, 5: stat.S_IFCHR,
             6: stat.S_IFIFO, 7: stat.S_IFSOCK, 8: stat.S_IFDIR, 9: stat.S_IFREG,
             10: stat.S_IFLNK, 11: stat.S_IFBLK, 12: stat.S_IFCHR, 13: stat.S_IFIFO,
             14: stat.S_IFSOCK}


class Unsupported(ImageError):
    """The image uses a compressor this process cannot decode."""


@record
class Inode:
    kind: int
    mode: int                # with the file type bits
    size: int = 0
    # directories
    dir_block: int = 0
    dir_offset: int = 0
    parent: int = 0
    # regular files
    blocks_start: int = 0
    fragment: int = NO_FRAGMENT
    frag_offset: int = 0
    block_sizes: tuple = ()
    # symlinks
    target: bytes = b""


class SquashFS:
    """A squashfs filesystem that starts ``offset`` bytes into the file at ``path``."""

    def __init__(self, path: str, offset: int = 0):
        self.path, self.offset = path, offset
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.file_size = os.fstat(self.fd).st_size
            raw = self._pread(offset, SUPERBLOCK.size, "superblock")
            (magic, self.inode_count, _mtime, self.block_size, self.frag_count, self.compressor,
             block_log, self.flags, _ids, major, _minor, self.root_inode, bytes_used, _id_table,
             _xattr, self.inode_table, self.dir_table, self.frag_table,
             _export) = SUPERBLOCK.unpack(raw)
            if magic != MAGIC:
                raise ImageError(f"{path}: not a squashfs image (at offset {offset})")
            if major != 4:
                raise ImageError(f"{path}: squashfs version {major} is not supported",
                                 hint="squashfs 4.0 (mksquashfs since 2009) is read")
            if not (4096 <= self.block_size <= 1 << 20) or 1 << block_log != self.block_size:
                raise ImageError(f"{path}: bad squashfs block size {self.block_size}")
            self.end = offset + bytes_used
            if bytes_used < SUPERBLOCK.size or self.end > self.file_size:
                raise ImageError(f"{path}: the squashfs claims {bytes_used} bytes; "
                                 "the file is shorter (truncated?)")
            self._decompress = _decompressor(self.compressor, path)
            self._cache: dict[tuple[int, int], tuple[bytes, int]] = {}
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "SquashFS":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ blocks

    def _pread(self, at: int, length: int, what: str) -> bytes:
        if at < self.offset or length < 0 or at + length > getattr(self, "end", self.file_size):
            raise ImageError(f"{self.path}: {what} at byte {at} ({length} bytes) lies outside "
                             "the squashfs")
        data = os.pread(self.fd, length, at)
        if len(data) != length:
            raise ImageError(f"{self.path}: truncated at byte {at + len(data)}")
        return data

    def _metadata_block(self, at: int) -> tuple[bytes, int]:
        """The metadata block at absolute ``at``: (its data, where the next one starts)."""
        key = (at, 0)
        if key not in self._cache:
            (header,) = struct.unpack("<H", self._pread(at, 2, "metadata header"))
            length = header & 0x7FFF
            raw = self._pread(at + 2, length, "metadata block")
            data = raw if header & 0x8000 else self._decompress(raw, METADATA_SIZE)
            if len(data) > METADATA_SIZE:
                raise ImageError(f"{self.path}: metadata block at {at} is too large")
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = (data, at + 2 + length)
        return self._cache[key]

    def _metadata(self, table: int, block: int, offset: int, length: int) -> tuple[bytes, int, int]:
        """``length`` bytes of a metadata table from (block, offset), which may run into the
        following blocks; returns them and the (block, offset) after them."""
        out = b""
        at = self.offset + table + block
        while True:
            data, following = self._metadata_block(at)
            if offset > len(data):
                raise ImageError(f"{self.path}: metadata offset {offset} beyond its block")
            take = data[offset:offset + length - len(out)]
            out += take
            offset += len(take)
            if len(out) == length:
                return out, at - self.offset - table, offset
            if offset < len(data) or not data:
                raise ImageError(f"{self.path}: metadata ends early")
            at, offset = following, 0

    # ------------------------------------------------------------ inodes

    def inode(self, ref: int) -> Inode:
        block, offset = ref >> 16, ref & 0xFFFF
        head, block, offset = self._metadata(self.inode_table, block, offset, 16)
        kind, mode = struct.unpack_from("<HH", head)
        if kind not in TYPE_MODE:
            raise ImageError(f"{self.path}: unknown inode type {kind}")
        mode = TYPE_MODE[kind] | (mode & 0o7777)

        def take(fmt: str):
            nonlocal block, offset
            raw, block, offset = self._metadata(self.inode_table, block, offset,
                                                struct.calcsize(fmt))
            return struct.unpack(fmt, raw)

        if kind == DIR:
            start, _links, size, dir_offset, parent = take("<IIHHI")
            return Inode(kind, mode, size=size, dir_block=start, dir_offset=dir_offset,
                         parent=parent)
        if kind == LDIR:
            _links, size, start, parent, _count, dir_offset, _xattr = take("<IIIIHHI")
            return Inode(kind, mode, size=size, dir_block=start, dir_offset=dir_offset,
                         parent=parent)
        if kind in (FILE, LFILE):
            if kind == FILE:
                start, frag, frag_offset, size = take("<IIII")
            else:
                start, size, _sparse, _links, frag, frag_offset, _xattr = take("<QQQIIII")
            count = size // self.block_size
            if frag == NO_FRAGMENT and size % self.block_size:
                count += 1
            if count > (self.end - self.offset) // 4:
                raise ImageError(f"{self.path}: a file of {size} bytes cannot fit the image")
            sizes = take(f"<{count}I") if count else ()
            return Inode(kind, mode, size=size, blocks_start=start, fragment=frag,
                         frag_offset=frag_offset, block_sizes=tuple(sizes))
        if kind in (SYMLINK, LSYMLINK):
            _links, length = take("<II")
            if length > 4096:
                raise ImageError(f"{self.path}: symlink target of {length} bytes")
            (target,) = take(f"<{length}s")
            return Inode(kind, mode, size=length, target=target)
        return Inode(kind, mode)

    def _entries(self, directory: Inode):
        """(name, inode ref, type) of each entry of ``directory``."""
        left = directory.size - 3          # the size counts "." and ".." (3 bytes)
        block, offset = directory.dir_block, directory.dir_offset
        seen = 0
        while left > 0:
            raw, block, offset = self._metadata(self.dir_table, block, offset, 12)
            count, start, _number = struct.unpack("<IIi", raw)
            left -= 12
            if count >= 256:
                raise ImageError(f"{self.path}: directory header of {count + 1} entries")
            for _ in range(count + 1):
                raw, block, offset = self._metadata(self.dir_table, block, offset, 8)
                ino_offset, _delta, kind, name_size = struct.unpack("<HhHH", raw)
                name, block, offset = self._metadata(self.dir_table, block, offset,
                                                     name_size + 1)
                left -= 8 + name_size + 1
                seen += 1
                if seen > self.inode_count + 1:
                    raise ImageError(f"{self.path}: a directory with too many entries")
                yield name, (start << 16) | ino_offset, kind

    def lookup(self, path: str, follow_last: bool = True) -> Inode | None:
        """The inode ``path`` names inside the image, symlinks resolved inside it; None if
        there is no such file."""
        todo = [p for p in path.split("/") if p not in ("", ".")]
        stack = [self.inode(self.root_inode)]          # the directories from the root
        links = 0
        while todo:
            name = todo.pop(0)
            if name == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            current = stack[-1]
            if current.kind not in (DIR, LDIR):
                return None
            found = None
            wanted = os.fsencode(name)
            for entry, ref, _kind in self._entries(current):
                if entry == wanted:
                    found = self.inode(ref)
                    break
            if found is None:
                return None
            if found.kind in (SYMLINK, LSYMLINK) and (todo or follow_last):
                links += 1
                if links > MAX_SYMLINKS:
                    raise ImageError(f"{self.path}: too many symlinks resolving {path}")
                target = os.fsdecode(found.target)
                if target.startswith("/"):
                    del stack[1:]
                todo = [p for p in target.split("/") if p not in ("", ".")] + todo
                continue
            stack.append(found)
        return stack[-1]

    # ------------------------------------------------------------ file data

    def _fragment(self, index: int) -> tuple[int, int]:
        if index >= self.frag_count:
            raise ImageError(f"{self.path}: fragment {index} of {self.frag_count}")
        pointer_at = self.offset + self.frag_table + (index // 512) * 8
        (block,) = struct.unpack("<Q", self._pread(pointer_at, 8, "fragment table"))
        raw, _, _ = self._metadata(0, block, (index % 512) * 16, 16)
        start, size, _unused = struct.unpack("<QII", raw)
        return start, size

    def _data_block(self, at: int, size_word: int) -> bytes:
        length = size_word & 0xFFFFFF
        if length > self.block_size:
            raise ImageError(f"{self.path}: data block of {length} bytes")
        raw = self._pread(self.offset + at, length, "data block")
        data = raw if size_word & 0x1000000 else self._decompress(raw, self.block_size)
        if len(data) > self.block_size:
            raise ImageError(f"{self.path}: data block grows past the block size")
        return data

    def read(self, inode: Inode, max_size: int = MAX_READ) -> bytes:
        if inode.size > max_size:
            raise ImageError(f"{self.path}: file of {inode.size} bytes (at most {max_size} "
                             "are read)")
        out = []
        at = inode.blocks_start
        for word in inode.block_sizes:
            if word == 0:                                  # a sparse block
                out.append(bytes(self.block_size))
                continue
            out.append(self._data_block(at, word))
            at += word & 0xFFFFFF
        if inode.fragment != NO_FRAGMENT:
            start, word = self._fragment(inode.fragment)
            data = self._data_block(start, word)
            tail = inode.size % self.block_size
            if inode.frag_offset + tail > len(data):
                raise ImageError(f"{self.path}: fragment shorter than the file's tail")
            out.append(data[inode.frag_offset:inode.frag_offset + tail])
        data = b"".join(out)
        if len(data) < inode.size:
            raise ImageError(f"{self.path}: file data shorter than its size")
        return data[:inode.size]

    def read_file(self, path: str, max_size: int = MAX_READ) -> bytes | None:
        """The content of regular file ``path``, or None when it is missing or not one."""
        inode = self.lookup(path)
        if inode is None or inode.kind not in (FILE, LFILE):
            return None
        return self.read(inode, max_size)


def _decompressor(kind: int, path: str):
    """A function (data, limit) -> bytes for this image's compressor."""
    if kind == GZIP:
        import zlib

        return _checked(lambda data, limit: zlib.decompressobj().decompress(data, limit + 1),
                        path)
    if kind in (XZ, LZMA):
        import lzma

        fmt = lzma.FORMAT_XZ if kind == XZ else lzma.FORMAT_ALONE
        return _checked(lambda data, limit: lzma.LZMADecompressor(fmt).decompress(data, limit + 1),
                        path)
    if kind == ZSTD:
        try:
            import zstandard
        except ImportError:
            raise Unsupported(f"{path}: zstd-compressed, and the zstandard module is missing",
                              hint="pip install zstandard") from None
        import io

        return _checked(lambda data, limit: zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(data)).read(limit + 1), path)
    raise Unsupported(f"{path}: {COMPRESSORS.get(kind, f'compressor {kind}')}-compressed "
                      "squashfs cannot be read in process")


def _checked(fn, path: str):
    def decompress(data: bytes, limit: int) -> bytes:
        try:
            return fn(data, limit)
        except Exception as err:                 # noqa: BLE001 - any codec error is bad input
            raise ImageError(f"{path}: corrupt compressed block ({type(err).__name__})") from err
    return decompress


def read_file(path: str, offset: int, name: str, max_size: int = MAX_READ) -> bytes | None:
    """One file out of an image, with ``unsquashfs -cat`` for compressors Python lacks."""
    try:
        with SquashFS(path, offset) as fs:
            return fs.read_file(name, max_size)
    except Unsupported:
        if offset:
            raise
    return _unsquashfs_cat(path, name, max_size)


def _unsquashfs_cat(path: str, name: str, max_size: int) -> bytes | None:
    import shutil
    import subprocess

    tool = shutil.which("unsquashfs")
    if tool is None:
        raise Unsupported(f"{path}: its compressor needs unsquashfs to read files",
                          hint="apt-get install squashfs-tools")
    res = subprocess.run([tool, "-cat", path, name.lstrip("/")], stdin=subprocess.DEVNULL,
                         capture_output=True)
    if res.returncode != 0:
        return None
    return res.stdout[:max_size]
