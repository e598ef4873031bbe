"""Find the shared libraries a host binary loads, the way the dynamic loader does.

Read from the ELF file itself (elf(5)): the program header ``PT_INTERP`` names the loader
(``/lib64/ld-linux-x86-64.so.2``); the ``PT_DYNAMIC`` segment lists ``DT_NEEDED`` sonames and the
``DT_RPATH`` / ``DT_RUNPATH`` search paths. Each soname is then searched as ld.so(8), "Shared object
dependencies" describes: DT_RPATH (only without DT_RUNPATH), DT_RUNPATH, /etc/ld.so.cache, then the
default directories. ``ldd`` would give the same answer but works by *running* the loader on the
file; parsing never executes what it inspects.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from . import ToolError

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_RPATH, DT_RUNPATH = 0, 1, 5, 15, 29
CACHE_MAGIC = b"glibc-ld.so.cache1.1"


@dataclass(frozen=True)
class ElfInfo:
    elf_class: int               # 1 = 32-bit, 2 = 64-bit (EI_CLASS)
    machine: int                 # e_machine
    interp: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]


def read_elf(path: str) -> ElfInfo:
    """Parse the ELF header, program headers and dynamic section of ``path`` (elf(5))."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF":
        raise ToolError(f"{path} is not an ELF file")
    elf_class, endian = data[4], "<" if data[5] == 1 else ">"
    if elf_class == 2:
        e_machine, e_phoff = struct.unpack_from(endian + "H", data, 18)[0], \
            struct.unpack_from(endian + "Q", data, 32)[0]
        e_phentsize, e_phnum = struct.unpack_from(endian + "HH", data, 54)
        ph_fmt, dyn_fmt = endian + "IIQQQQQQ", endian + "qQ"
    else:
        e_machine, e_phoff = struct.unpack_from(endian + "H", data, 18)[0], \
            struct.unpack_from(endian + "I", data, 28)[0]
        e_phentsize, e_phnum = struct.unpack_from(endian + "HH", data, 42)
        ph_fmt, dyn_fmt = endian + "IIIIIIII", endian + "iI"
    segments = []
    for i in range(e_phnum):
        fields = struct.unpack_from(ph_fmt, data, e_phoff + i * e_phentsize)
        if elf_class == 2:
            p_type, _, p_offset, p_vaddr, _, p_filesz = fields[:6]
        else:
            p_type, p_offset, p_vaddr, _, p_filesz = fields[:5]
        segments.append((p_type, p_offset, p_vaddr, p_filesz))

    interp = None
    dynamic: list[tuple[int, int]] = []
    for p_type, off, _, size in segments:
        if p_type == PT_INTERP:
            interp = data[off:off + size].split(b"\0", 1)[0].decode()
        elif p_type == PT_DYNAMIC:
            step = struct.calcsize(dyn_fmt)
            for pos in range(off, off + size, step):
                tag, val = struct.unpack_from(dyn_fmt, data, pos)
                if tag == DT_NULL:
                    break
                dynamic.append((tag, val))

    def file_offset(vaddr: int) -> int:
        # DT_STRTAB holds a virtual address: map it back through the PT_LOAD segment holding it
        for p_type, off, seg_vaddr, size in segments:
            if p_type == PT_LOAD and seg_vaddr <= vaddr < seg_vaddr + size:
                return vaddr - seg_vaddr + off
        raise ToolError(f"{path}: DT_STRTAB address {vaddr:#x} is outside every PT_LOAD segment")

    strtab = next((file_offset(v) for t, v in dynamic if t == DT_STRTAB), None)

    def string(offset: int) -> str:
        start = strtab + offset
        return data[start:data.index(b"\0", start)].decode()

    def strings(tag: int) -> tuple[str, ...]:
        if strtab is None:
            return ()
        out: list[str] = []
        for t, v in dynamic:
            if t == tag:
                out.extend(string(v).split(":") if tag in (DT_RPATH, DT_RUNPATH) else [string(v)])
        return tuple(out)

    return ElfInfo(elf_class, e_machine, interp, strings(DT_NEEDED), strings(DT_RPATH),
                   strings(DT_RUNPATH))


def read_ld_cache(path: str = "/etc/ld.so.cache") -> dict[str, list[str]]:
    """soname -> library paths, in cache order, from glibc's ld.so.cache (new format: a 48-byte
    header, then 24-byte entries whose key/value are string offsets from the header's start;
    glibc ``sysdeps/generic/dl-cache.h``). An old-format prefix, if any, is skipped."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    base = data.find(CACHE_MAGIC)
    if base < 0:
        return {}
    nlibs = struct.unpack_from("<I", data, base + 20)[0]
    entries: dict[str, list[str]] = {}

    def cstr(offset: int) -> str:
        start = base + offset
        return data[start:data.index(b"\0", start)].decode()

    for i in range(nlibs):
        _flags, key, value, _osv, _hwcap = struct.unpack_from("<iIIIQ", data, base + 48 + 24 * i)
        entries.setdefault(cstr(key), []).append(cstr(value))
    return entries


def default_dirs(info: ElfInfo) -> list[str]:
    """The loader's built-in directories; Debian's glibc adds the multiarch ones."""
    triplet = {(2, 62): "x86_64-linux-gnu", (2, 183): "aarch64-linux-gnu",
               (1, 3): "i386-linux-gnu"}.get((info.elf_class, info.machine))
    dirs = [f"/lib/{triplet}", f"/usr/lib/{triplet}"] if triplet else []
    return dirs + (["/lib64", "/usr/lib64"] if info.elf_class == 2 else []) + ["/lib", "/usr/lib"]


def _compatible(path: str, info: ElfInfo) -> bool:
    try:
        other = read_elf(path)
    except (OSError, ToolError):
        return False
    return (other.elf_class, other.machine) == (info.elf_class, info.machine)


def _expand_origin(dirs: tuple[str, ...], origin: str) -> list[str]:
    return [d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin) for d in dirs]


def find_library(soname: str, info: ElfInfo, origin: str,
                 cache: dict[str, list[str]]) -> str:
    """Where the loader would find ``soname`` for an object described by ``info``."""
    if "/" in soname:
        return soname
    dirs = [] if info.runpath else _expand_origin(info.rpath, origin)
    dirs += _expand_origin(info.runpath, origin)
    candidates = [os.path.join(d, soname) for d in dirs]
    candidates += cache.get(soname, [])
    candidates += [os.path.join(d, soname) for d in default_dirs(info)]
    for path in candidates:
        if os.path.isfile(path) and _compatible(path, info):
            return path
    raise ToolError(f"cannot find {soname}, needed by an object in {origin}",
                    hint="is the library installed? ldd shows what the loader finds")


def dependencies(binaries: list[str], *, cache_path: str = "/etc/ld.so.cache") -> list[str]:
    """Every file the loader opens to start ``binaries``: their loaders and, transitively, their
    DT_NEEDED libraries, as the paths the loader uses (not resolved through symlinks)."""
    cache = read_ld_cache(cache_path)
    seen: dict[str, None] = {}
    todo = list(binaries)
    while todo:
        path = todo.pop(0)
        info = read_elf(path)
        if info.interp and info.interp not in seen:
            seen[info.interp] = None
        origin = os.path.dirname(os.path.realpath(path))
        for soname in info.needed:
            lib = find_library(soname, info, origin, cache)
            if lib not in seen:
                seen[lib] = None
                todo.append(lib)
    return list(seen)
