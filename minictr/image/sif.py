"""Apptainer's Singularity Image Format (SIF): find the root filesystem's squashfs partition.

A SIF file is a 128-byte global header, a table of fixed-size data object descriptors, and
the objects' data (the reference implementation is github.com/sylabs/sif, pkg/sif; Debian's
golang-github-sylabs-sif-dev). All integers are little-endian, written by Go's encoding/binary
without padding:

    header       launch script [32], magic "SIF_MAGIC\\0" [10], version "01\\0" [3], arch [3],
                 id [16], created, modified, descriptors free, total, offset, size,
                 data offset, data size (8 x int64)
    descriptor   data type (int32), used (bool, 1 byte), id, group id, link (3 x uint32),
                 offset, size, size with padding, created, modified, uid, gid (7 x int64),
                 name [128], extra [384]  -> 585 bytes
    partition    (the start of ``extra`` for data type 0x4004) fs type, partition type
                 (2 x int32), arch [3]

Apptainer runs the *primary system partition* (partition type 2) when its filesystem is
squashfs (fs type 1). The file is untrusted input: every count, offset and size is checked
against the file's real size before it is used, and nothing is read but the header and the
descriptor table (bounded by ``MAX_DESCRIPTORS``).
"""
from __future__ import annotations

import os
import struct

from minictr.errors import ImageError
from minictr.records import record

MAGIC = b"SIF_MAGIC\0"
MAGIC_OFFSET = 32
HEADER = struct.Struct("<32s10s3s3s16s8q")              # 128 bytes
DESCRIPTOR = struct.Struct("<i?IIIqqqqqqq128s384s")     # 585 bytes
PARTITION = struct.Struct("<ii3s")
DATA_PARTITION = 0x4004
FS_SQUASH, FS_EXT3, FS_IMMUOBJ, FS_RAW, FS_ENCRYPTED_SQUASH = 1, 2, 3, 4, 5
PART_SYSTEM, PART_PRIMSYS, PART_DATA, PART_OVERLAY = 1, 2, 3, 4
MAX_DESCRIPTORS = 4096           # apptainer creates 48; the table is read whole
SQUASHFS_MAGIC = b"hsqs"


@record
class Partition:
    offset: int
    size: int
    fs_type: int
    part_type: int
    arch: str
    name: str


def is_sif(head: bytes) -> bool:
    """Whether the first bytes of a file (at least 42) are a SIF header's."""
    return head[MAGIC_OFFSET:MAGIC_OFFSET + len(MAGIC)] == MAGIC


def partitions(data_at, file_size: int, where: str = "SIF file") -> list[Partition]:
    """The used partition descriptors. ``data_at(offset, length)`` reads the file."""
    if file_size < HEADER.size:
        raise ImageError(f"{where}: too short for a SIF header ({file_size} bytes)")
    fields = HEADER.unpack(data_at(0, HEADER.size))
    magic, version = fields[1], fields[2]
    if magic != MAGIC:
        raise ImageError(f"{where}: not a SIF file (no SIF_MAGIC)")
    if version != b"01\0":
        raise ImageError(f"{where}: SIF version {version.rstrip(bytes(1)).decode(errors='replace')!r}"
                         " is not supported", hint="minictr reads SIF version 01")
    _created, _modified, _free, total, offset, size, _data_offset, _data_size = fields[5:]
    if not 0 <= total <= MAX_DESCRIPTORS:
        raise ImageError(f"{where}: {total} descriptors (at most {MAX_DESCRIPTORS} are read)")
    if size != total * DESCRIPTOR.size or offset < HEADER.size or offset > file_size - size:
        raise ImageError(f"{where}: its descriptor table (offset {offset}, {size} bytes for "
                         f"{total} descriptors) does not fit the file ({file_size} bytes)")
    table = data_at(offset, size)
    out = []
    for i in range(total):
        (dtype, used, _id, _group, _link, d_offset, d_size, _padded, _c, _m, _u, _g, name,
         extra) = DESCRIPTOR.unpack_from(table, i * DESCRIPTOR.size)
        if not used or dtype != DATA_PARTITION:
            continue
        if d_offset < 0 or d_size < 0 or d_offset > file_size or d_size > file_size - d_offset:
            raise ImageError(f"{where}: partition {i} (offset {d_offset}, {d_size} bytes) lies "
                             f"outside the file ({file_size} bytes)")
        fs_type, part_type, arch = PARTITION.unpack_from(extra)
        out.append(Partition(offset=d_offset, size=d_size, fs_type=fs_type,
                             part_type=part_type, arch=arch.rstrip(b"\0").decode("ascii", "replace"),
                             name=name.rstrip(b"\0").decode("utf-8", "replace")))
    return out


def root_partition(parts: list[Partition], where: str = "SIF file") -> Partition:
    """The primary system partition, which must be squashfs (as Apptainer requires)."""
    primary = [p for p in parts if p.part_type == PART_PRIMSYS]
    if len(primary) != 1:
        raise ImageError(f"{where}: {len(primary) or 'no'} primary system partitions"
                         + (f" ({len(parts)} partitions in all)" if parts else ""),
                         hint="a SIF runs its one primary system partition; "
                              "`siftool setprim FILE ID` marks one")
    part = primary[0]
    if part.fs_type == FS_ENCRYPTED_SQUASH:
        raise ImageError(f"{where}: its root partition is encrypted squashfs",
                         hint="minictr does not decrypt SIF partitions; "
                              "`apptainer build --decrypt` or use a plain image")
    if part.fs_type != FS_SQUASH:
        raise ImageError(f"{where}: its root partition's filesystem type is {part.fs_type}, "
                         "not squashfs (1)", hint="minictr mounts squashfs partitions only")
    return part


def squashfs_offset(path: str) -> int:
    """Where the root squashfs of the SIF file at ``path`` starts, checked for its magic."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size

        def data_at(offset: int, length: int) -> bytes:
            data = os.pread(fd, length, offset)
            if len(data) != length:
                raise ImageError(f"{path}: truncated at byte {offset + len(data)}")
            return data

        part = root_partition(partitions(data_at, size, path), path)
        if part.size < 96 or data_at(part.offset, 4) != SQUASHFS_MAGIC:
            raise ImageError(f"{path}: its root partition (offset {part.offset}) does not start "
                             "with a squashfs superblock")
        return part.offset
    finally:
        os.close(fd)
