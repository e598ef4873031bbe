"""Read a shared library's SONAME from its ELF dynamic section (elf(5)), without loading it.

Needed only for driver libraries found by scanning directories instead of through the loader
cache (whose keys already are the SONAMEs). The path: the program headers give PT_DYNAMIC
(where the dynamic entries are in the file) and the PT_LOAD segments (to turn the DT_STRTAB
address into a file offset); DT_SONAME is an offset into that string table. 64-bit
little-endian objects only, which is what x86-64 drivers are.
"""
from __future__ import annotations

import os
import struct

PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_STRTAB, DT_SONAME = 0, 5, 14
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_DYN = struct.Struct("<qQ")


def _read(f, offset: int, size: int) -> bytes:
    """At most ``size`` bytes at ``offset``, never past the end of the file: the offsets and
    sizes come from the file's own headers (64-bit, and not to be trusted)."""
    end = os.fstat(f.fileno()).st_size
    if offset >= end:
        return b""
    f.seek(offset)
    return f.read(min(size, end - offset))


def _open_binary(path: str):
    return open(path, "rb")


def soname(path: str, opener=None) -> str | None:
    """The DT_SONAME of the ELF file at ``path``, or None (not ELF64-LE, or no SONAME).
    ``opener(path)`` opens it for binary reading (default ``open(path, "rb")``)."""
    try:
        with (opener or _open_binary)(path) as f:
            head = f.read(_EHDR.size)
            if len(head) < _EHDR.size or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
                return None
            e = _EHDR.unpack(head)
            phoff, phentsize, phnum = e[5], e[9], e[10]
            table = _read(f, phoff, phentsize * phnum)
            loads, dynamic = [], None
            for i in range(phnum):
                p_type, _fl, p_offset, p_vaddr, _pa, p_filesz, _mem, _al = _PHDR.unpack_from(
                    table, i * phentsize)
                if p_type == PT_LOAD:
                    loads.append((p_vaddr, p_offset, p_filesz))
                elif p_type == PT_DYNAMIC:
                    dynamic = (p_offset, p_filesz)
            if dynamic is None:
                return None
            strtab = name_at = None
            raw = _read(f, *dynamic)
            for tag, value in _DYN.iter_unpack(raw[:len(raw) - len(raw) % _DYN.size]):
                if tag == DT_NULL:
                    break
                if tag == DT_STRTAB:
                    strtab = value
                elif tag == DT_SONAME:
                    name_at = value
            if strtab is None or name_at is None:
                return None
            for vaddr, offset, filesz in loads:
                if vaddr <= strtab < vaddr + filesz:
                    text = _read(f, offset + (strtab - vaddr) + name_at, 256)
                    return text.split(b"\0", 1)[0].decode("utf-8", "replace") or None
    except (OSError, struct.error):
        return None
    return None
