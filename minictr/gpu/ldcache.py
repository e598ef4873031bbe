"""Read and write the dynamic loader's cache, /etc/ld.so.cache (ldconfig(8), ld.so(8)).

The loader looks a library's SONAME up in this file before it searches the default directories.
Two layouts exist (glibc ``elf/cache.c``, ``sysdeps/generic/dl-cache.h``):

* ``ld.so-1.7.0`` (old): 12-byte magic, ``uint32 nlibs``, then ``nlibs`` entries of
  ``{int32 flags; uint32 key; uint32 value}``; string offsets count from the end of the entries.
* ``glibc-ld.so.cache1.1`` (new, the only one glibc >= 2.32 writes): a 48-byte header
  ``{char magic[17]; char version[3]; uint32 nlibs; uint32 len_strings; uint8 flags;
  uint8 pad[3]; uint32 extension_offset; uint32 unused[3]}``, then entries of
  ``{int32 flags; uint32 key; uint32 value; uint32 osversion; uint64 hwcap}``; string offsets
  count from the start of this header. Old glibc wrote both: the old block, then the new one
  8-byte aligned.

Entries are sorted *descending* in ``_dl_cache_libcmp`` order (digit runs compare as numbers and
sort after letters) because ``dl-cache.c`` binary-searches them. minictr writes this file itself
instead of running ``ldconfig`` inside the container: no binary from an untrusted image runs, no
symlink planted by the image is followed (CVE-2025-23267), and it costs microseconds.
"""
from __future__ import annotations

import struct
from array import array
from itertools import groupby

from minictr.errors import GPUError
from minictr.records import record

OLD_MAGIC = b"ld.so-1.7.0"
NEW_MAGIC = b"glibc-ld.so.cache1.1"
_OLD_HEADER = struct.Struct("<12sI")
_OLD_ENTRY = struct.Struct("<iII")
_NEW_HEADER = struct.Struct("<20sIIB3sI12s")
_NEW_ENTRY = struct.Struct("<iIIIQ")

FLAG_ELF_LIBC6 = 0x0003
FLAG_X8664_LIB64 = 0x0300
FLAG_ARCH_MASK = 0xFF00
FLAG_X86_64 = FLAG_ELF_LIBC6 | FLAG_X8664_LIB64
ENDIAN_LITTLE = 2
# hwcap bit marking an entry that lives in a glibc-hwcaps subdirectory named by the extension
# section (glibc >= 2.33, dl-cache.h DL_CACHE_HWCAP_EXTENSION)
HWCAP_EXTENSION = 1 << 62


@record
class Entry:
    """One cache line: ``ldconfig -p`` prints it as ``key (libc6,x86-64) => value``.
    (A NamedTuple rather than a dataclass: parsing makes hundreds, and this is 5x cheaper.)"""

    key: str              # the name the loader looks up: a SONAME, or a dev link like libz.so
    value: str            # the path it opens
    flags: int = FLAG_X86_64
    osversion: int = 0
    hwcap: int = 0

    @property
    def is_x86_64(self) -> bool:
        return self.flags & FLAG_ARCH_MASK == FLAG_X8664_LIB64


class LdCacheError(GPUError, ValueError):
    """The bytes are not a loader cache this module understands."""


def _cstr(data: bytes, off: int) -> str:
    end = data.find(b"\0", off)
    if off >= len(data) or end < 0:
        raise LdCacheError(f"string offset {off} outside the cache")
    return data[off:end].decode("utf-8", "surrogateescape")


def _key_filter(data: bytes, base: int, keep: re.Pattern | None):
    """Offsets (relative to ``base``) of the strings ``keep`` matches, or None for all: one regex
    pass over the file is much cheaper than decoding every key in Python."""
    if keep is None:
        return None
    return {m.start() - base for m in keep.finditer(data)}


def _entries_with_keys(region: bytes, size: int, offsets: set[int]) -> list[int]:
    """Indices of the entries whose key field (bytes 4-8 of each) holds one of ``offsets``,
    in file order. A few C-speed searches instead of unpacking every entry in Python."""
    found = set()
    for off in offsets:
        needle = struct.pack("<I", off)
        pos = region.find(needle)
        while pos >= 0:
            if pos % size == 4:
                found.add(pos // size)
            pos = region.find(needle, pos + 1)
    return sorted(found)


def _parse_new(data: bytes, base: int, keep: re.Pattern | None = None) -> list[Entry]:
    if len(data) < base + _NEW_HEADER.size:
        raise LdCacheError("truncated glibc-ld.so.cache1.1 header")
    magic, nlibs, _strlen, endian, _p, _ext, _u = _NEW_HEADER.unpack_from(data, base)
    if endian & 3 not in (0, ENDIAN_LITTLE):
        raise LdCacheError("big-endian ld.so.cache")
    first = base + _NEW_HEADER.size
    if first + nlibs * _NEW_ENTRY.size > len(data):
        raise LdCacheError(f"ld.so.cache claims {nlibs} entries, file too short")
    region = data[first:first + nlibs * _NEW_ENTRY.size]
    rows = _rows(region, _NEW_ENTRY, _key_filter(data, base, keep))
    return [Entry(_cstr(data, base + key), _cstr(data, base + value), flags, osv, hwcap)
            for flags, key, value, osv, hwcap in rows]


def _rows(region: bytes, entry: struct.Struct, wanted):
    """The entry tuples of ``region``: all of them, or only those whose key offset is in
    ``wanted`` (None: no filter)."""
    if wanted is None:
        return entry.iter_unpack(region)
    return (entry.unpack_from(region, i * entry.size)
            for i in _entries_with_keys(region, entry.size, wanted))


def parse(data: bytes, keep: re.Pattern | None = None) -> list[Entry]:
    """Entries of a cache in either layout, in file order (the new block wins when both exist).

    ``keep``, a bytes regex such as ``key_pattern(["libcuda"])``, limits the result to entries
    whose key starts where it matches: discovery only wants the driver's libraries. (ldconfig
    shares string tails, so a key usually starts inside its own value's path, not after a NUL.)
    """
    if data.startswith(NEW_MAGIC):
        return _parse_new(data, 0, keep)
    if not data.startswith(OLD_MAGIC):
        raise LdCacheError("not an ld.so.cache (unknown magic)")
    if len(data) < _OLD_HEADER.size:
        raise LdCacheError("truncated ld.so-1.7.0 header")
    _magic, nlibs = _OLD_HEADER.unpack_from(data, 0)
    strings = _OLD_HEADER.size + nlibs * _OLD_ENTRY.size
    if strings > len(data):
        raise LdCacheError(f"ld.so.cache claims {nlibs} entries, file too short")
    new_at = (strings + 7) & ~7      # glibc aligns the appended new block (cache.c ALIGN_CACHE)
    if data[new_at:new_at + len(NEW_MAGIC)] == NEW_MAGIC:
        return _parse_new(data, new_at, keep)
    region = data[_OLD_HEADER.size:strings]
    rows = _rows(region, _OLD_ENTRY, _key_filter(data, strings, keep))
    return [Entry(_cstr(data, strings + key), _cstr(data, strings + value), flags)
            for flags, key, value in rows]


def libcmp(a: str, b: str) -> int:
    """glibc's ``_dl_cache_libcmp``: runs of digits compare as numbers and sort after letters.
    Digits are ASCII ones, as C's isdigit: "²" is a letter here (and no int())."""
    isdigit = _ASCII_DIGITS.__contains__
    i = j = 0
    while i < len(a):
        if isdigit(a[i]):
            if j >= len(b) or not isdigit(b[j]):
                return 1
            i2, j2 = i, j
            while i2 < len(a) and isdigit(a[i2]):
                i2 += 1
            while j2 < len(b) and isdigit(b[j2]):
                j2 += 1
            va, vb = int(a[i:i2]), int(b[j:j2])
            if va != vb:
                return va - vb
            i, j = i2, j2
        elif j < len(b) and isdigit(b[j]):
            return -1
        elif j >= len(b) or a[i] != b[j]:
            return ord(a[i]) - (ord(b[j]) if j < len(b) else 0)
        else:
            i += 1
            j += 1
    return 0 - (ord(b[j]) if j < len(b) else 0)


def key_pattern(stems) -> re.Pattern:
    """A ``keep`` pattern for :func:`parse`: keys ``STEM.so...`` for the given stems."""
    import re              # only a scan needs it (~2 ms of imports a GPU run would pay)

    alts = b"|".join(re.escape(s.encode()[3:]) for s in sorted(stems, key=len, reverse=True)
                     if s.startswith("lib"))
    return re.compile(rb"lib(?:" + alts + rb")\.so[^\0/]*\0")


_ASCII_DIGITS = frozenset("0123456789")
_TOP = "\U0010ffff"     # sorts after every character


def sort_key(key: str) -> tuple:
    """A key whose tuple order is :func:`libcmp`'s: digit runs as (1, number), letter runs as
    (0, text). A letter run followed by digits gets a top character appended, because libcmp
    ranks a digit above any letter at the same position ("ab1" > "abc")."""
    runs = ["".join(run) for _, run in groupby(key, _ASCII_DIGITS.__contains__)]
    last = len(runs) - 1
    return tuple((1, int(r)) if r[0] in _ASCII_DIGITS else (0, r + _TOP if i < last else r)
                 for i, r in enumerate(runs))


def sort_entries(entries) -> list[Entry]:
    """ldconfig's order (cache.c ``compare``): descending by name, then ascending flags and
    hwcap. Two stable sorts give the mixed direction."""
    by_flags = sorted(entries, key=lambda e: (e.flags, e.hwcap))
    return sorted(by_flags, key=lambda e: sort_key(e.key), reverse=True)


def _header(nlibs: int, len_strings: int) -> bytes:
    return _NEW_HEADER.pack(NEW_MAGIC, nlibs, len_strings, ENDIAN_LITTLE, b"\0" * 3, 0,
                            b"\0" * 12)


def _strings(entries, table_at: int) -> tuple[bytes, list[tuple[int, int]]]:
    """The string table for ``entries`` placed at offset ``table_at``, and each entry's
    (key, value) offsets."""
    table = bytearray()
    seen: dict[str, int] = {}
    offsets = []

    def intern(text: str) -> int:
        if text not in seen:
            seen[text] = table_at + len(table)
            table.extend(text.encode("utf-8", "surrogateescape") + b"\0")
        return seen[text]

    for e in entries:
        offsets.append((intern(e.key), intern(e.value)))
    return bytes(table), offsets


def write(entries) -> bytes:
    """A ``glibc-ld.so.cache1.1`` file holding ``entries``, sorted as the loader expects.

    Entries that point into a glibc-hwcaps subdirectory are dropped: they need the extension
    section this writer does not produce; the loader then takes the baseline copy of the same
    library, which ldconfig always lists too.
    """
    kept = sort_entries(e for e in entries if not e.hwcap & HWCAP_EXTENSION)
    table, offsets = _strings(kept, _NEW_HEADER.size + len(kept) * _NEW_ENTRY.size)
    body = b"".join(_NEW_ENTRY.pack(e.flags, k, v, e.osversion, e.hwcap)
                    for e, (k, v) in zip(kept, offsets))
    return _header(len(kept), len(table)) + body + table


def _new_block(data: bytes) -> int | None:
    if data.startswith(NEW_MAGIC):
        return 0
    if data.startswith(OLD_MAGIC) and len(data) >= _OLD_HEADER.size:
        nlibs = _OLD_HEADER.unpack_from(data, 0)[1]
        at = (_OLD_HEADER.size + nlibs * _OLD_ENTRY.size + 7) & ~7
        if data[at:at + len(NEW_MAGIC)] == NEW_MAGIC:
            return at
    return None


def _add_to_offsets(entries: bytes, nlibs: int, shift: int) -> bytes:
    """Add ``shift`` to the key and value offsets of every entry at once: read the array as
    one little-endian integer and add a pattern holding ``shift`` in each offset field. No
    carry crosses a field because no offset overflows 32 bits (the file is far smaller)."""
    one = b"\0" * 4 + shift.to_bytes(4, "little") * 2 + b"\0" * 12
    total = int.from_bytes(entries, "little") + int.from_bytes(one * nlibs, "little")
    return total.to_bytes(len(entries), "little")


def splice(image_cache: bytes | None, injected) -> bytes:
    """The image's cache with ``injected`` entries added, each replacing the image's entries of
    the same key and architecture (so a driver copy baked into the image cannot win).

    The image's entries and string table are copied as bytes, their string offsets shifted by
    the size the entry array grew; only the few injected keys are placed by binary search (the
    image's array is in ldconfig's order already). This keeps a run's cost independent of the
    image's cache size in Python terms: ~0.1 ms for a 750-entry cache instead of ~8 ms for
    decoding, sorting and re-encoding every entry. Old-format-only and hwcap-extension caches
    take the slow, general path.
    """
    injected = sort_entries(injected)
    base = _new_block(image_cache) if image_cache else None
    if base is None:
        image = parse(image_cache) if image_cache else []
        return write(merge(image, injected))
    if len(image_cache) < base + _NEW_HEADER.size:
        raise LdCacheError("truncated glibc-ld.so.cache1.1 header")
    _m, nlibs, _len, _flags, _p, ext, _u = _NEW_HEADER.unpack_from(image_cache, base)
    first = base + _NEW_HEADER.size
    old = image_cache[first:first + nlibs * _NEW_ENTRY.size]
    if len(old) != nlibs * _NEW_ENTRY.size:
        raise LdCacheError("truncated ld.so.cache")
    hwcaps = array("Q", old)[2::3]
    if max(hwcaps, default=0) >= HWCAP_EXTENSION and any(h & HWCAP_EXTENSION for h in hwcaps):
        return write(merge(_parse_new(image_cache, base), injected))

    def key_at(i: int) -> str:
        return _cstr(image_cache, base + struct.unpack_from("<I", old, i * _NEW_ENTRY.size + 4)[0])

    def flags_at(i: int) -> int:
        return struct.unpack_from("<i", old, i * _NEW_ENTRY.size)[0]

    drop: set[int] = set()
    inserts: list[tuple[int, Entry]] = []
    for e in injected:
        want = sort_key(e.key)
        lo, hi = 0, nlibs                       # first index whose key is <= e.key (descending)
        while lo < hi:
            mid = (lo + hi) // 2
            if sort_key(key_at(mid)) > want:
                lo = mid + 1
            else:
                hi = mid
        i, at = lo, lo
        while i < nlibs and key_at(i) == e.key:
            if flags_at(i) & FLAG_ARCH_MASK == e.flags & FLAG_ARCH_MASK:
                drop.add(i)
            elif flags_at(i) < e.flags:
                at = i + 1                      # equal names: ascending flags, as ldconfig
            i += 1
        inserts.append((at, e))
    count = nlibs - len(drop) + len(inserts)
    shift = (count - nlibs) * _NEW_ENTRY.size   # image strings move by what the array grew
    shifted = _add_to_offsets(old, nlibs, shift)
    tail = image_cache[first + nlibs * _NEW_ENTRY.size:]
    table_at = _NEW_HEADER.size + count * _NEW_ENTRY.size + len(tail)
    table, offsets = _strings([e for _, e in inserts], table_at)
    # copy the image's entries in runs, cutting where an entry is dropped or one is inserted
    marks = sorted([(at, 0, n) for n, (at, _) in enumerate(inserts)] +
                   [(i, 1, 0) for i in drop])
    out, pos = [], 0
    for index, kind, n in marks:
        out.append(shifted[pos * _NEW_ENTRY.size:index * _NEW_ENTRY.size])
        if kind == 0:
            e, (k, v) = inserts[n][1], offsets[n]
            out.append(_NEW_ENTRY.pack(e.flags, k, v, e.osversion, e.hwcap))
            pos = index
        else:
            pos = index + 1
    out.append(shifted[pos * _NEW_ENTRY.size:])
    return _header(count, len(tail) + len(table)) + b"".join(out) + tail + table


def merge(image_entries: list[Entry], injected: list[Entry]) -> list[Entry]:
    """The image's own entries plus ``injected``; an injected key replaces the image's entries
    of the same key and architecture (so a driver copy baked into the image cannot win)."""
    taken = {(e.key, e.flags & FLAG_ARCH_MASK) for e in injected}
    return [e for e in image_entries if (e.key, e.flags & FLAG_ARCH_MASK) not in taken] + \
        list(injected)
