"""A one-pass reader of layer tar streams: POSIX.1-2001 pax, ustar and GNU long names.

Why not ``tarfile``: a layer is untrusted input read exactly once from a pipe, and the caller
hashes that pipe (the layer's diff_id covers every byte, padding included). This reader pulls
large chunks (1 MiB) from the stream, hands file data out as memoryviews of those chunks (no
copy), decodes only the header fields a layer needs, and reads the stream to its end afterwards
so the caller's hash sees the trailing padding. Format references: POSIX.1-2001 ``pax``
(ustar header, extended header records ``"%d key=value\\n"``), GNU tar manual "Basic Tar Format"
(``L``/``K`` long names, base-256 numbers), libarchive ``tar(5)``.
"""
from __future__ import annotations

import base64
import urllib.parse
from _collections_abc import Iterator

from minictr.errors import ImageError

BLOCK = 512
READ_SIZE = 1 << 20
MAX_META = 1 << 20          # longest pax / GNU long-name record we accept (memory bound)

REGULAR, HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIRECTORY, FIFO = (
    "file", "hardlink", "symlink", "char", "block", "dir", "fifo")
_TYPES = {b"0": REGULAR, b"\0": REGULAR, b"7": REGULAR, b"1": HARDLINK, b"2": SYMLINK,
          b"3": CHAR, b"4": BLOCKDEV, b"5": DIRECTORY, b"6": FIFO, b"S": REGULAR}
_ZERO_BLOCK = bytes(BLOCK)
_HINT = "the layer blob is damaged or not a tar archive; pull or load the image again"


class TarEntry:
    """One archive member with the metadata an OCI layer can carry."""

    __slots__ = ("name", "type", "mode", "uid", "gid", "size", "mtime_ns", "linkname",
                 "devmajor", "devminor", "xattrs", "typeflag", "sparse")
    # sparse: None, or the data regions [(offset, length), ...] of a sparse file of ``size``
    # bytes; data() then yields only those regions' bytes, one after the other

    def __repr__(self) -> str:
        return f"TarEntry({self.name!r}, {self.type}, mode={self.mode:o}, size={self.size})"


def _text(raw: bytes) -> str:
    """Tar names are bytes; surrogateescape keeps non-UTF-8 names byte-exact through os.*."""
    return raw.decode("utf-8", "surrogateescape")


def _cstr(field: bytes) -> bytes:
    end = field.find(b"\0")
    return field if end < 0 else field[:end]


def parse_number(field: bytes) -> int:
    """An octal field, or GNU base-256 when the top bit of the first byte is set."""
    if field and field[0] & 0x80:
        value = int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
        if field[0] & 0x40:                    # two's complement negative
            value -= 1 << (len(field) * 8 - 1)
        return value
    try:
        return int(field.partition(b"\0")[0], 8)   # int() ignores the spaces tar pads with
    except ValueError:
        if not field.partition(b"\0")[0].strip():
            return 0
        raise ImageError(f"layer tar: bad numeric field {field!r}", hint=_HINT) from None


def parse_pax(data: bytes) -> dict[str, bytes]:
    """Extended header records: ``"<len> <key>=<value>\\n"``, len counting the whole record."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:                      # NUL padding after the last record
            break
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise ImageError("layer tar: malformed pax record", hint=_HINT) from None
        end = pos + length
        if space < 0 or length <= 0 or end > len(data) or data[end - 1:end] != b"\n":
            raise ImageError("layer tar: malformed pax record", hint=_HINT)
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq:
            raise ImageError("layer tar: pax record without '='", hint=_HINT)
        if key in _SPARSE_00:
            _add_sparse_00(records, key, value)
        else:
            records[_text(key)] = value
        pos = end
    return records


_SPARSE_00 = (b"GNU.sparse.offset", b"GNU.sparse.numbytes")


def _add_sparse_00(records: dict[str, bytes], key: bytes, value: bytes) -> None:
    """GNU's PAX sparse format 0.0 repeats an offset and a numbytes record per region; they
    are kept, in order, as the comma list of format 0.1 (as Go's archive/tar does)."""
    have = records.get("GNU.sparse.map")
    count = 0 if have is None else have.count(b",") + 1
    if (key == _SPARSE_00[0]) != (count % 2 == 0) or b"," in value:
        raise ImageError("layer tar: GNU.sparse.offset/numbytes records out of order",
                         hint=_HINT)
    records["GNU.sparse.map"] = value if have is None else have + b"," + value


def _pax_xattr(key: str, value: bytes) -> tuple[str, bytes] | None:
    """``SCHILY.xattr.NAME`` (GNU tar, Go archive/tar) carries raw bytes; libarchive writes
    ``LIBARCHIVE.xattr.<url-encoded name>`` with a base64 value."""
    if key.startswith("SCHILY.xattr."):
        return key[len("SCHILY.xattr."):], value
    if key.startswith("LIBARCHIVE.xattr."):
        try:
            return (urllib.parse.unquote(key[len("LIBARCHIVE.xattr."):]),
                    base64.b64decode(value + b"=" * (-len(value) % 4)))
        except ValueError:
            raise ImageError(f"layer tar: bad {key} record", hint=_HINT) from None
    return None


_MIN_NS, _MAX_NS = -(2**63), 2**63 - 1


def _pax_time_ns(value: bytes) -> int:
    text = value.decode("ascii", "replace")
    whole, _, frac = text.partition(".")
    try:
        sign = -1 if whole.startswith("-") else 1
        return int(whole) * 1_000_000_000 + sign * int((frac + "000000000")[:9] or 0)
    except ValueError:
        raise ImageError(f"layer tar: bad pax mtime {text!r}", hint=_HINT) from None


def _pax_int(pax: dict[str, bytes], key: str, field: bytes | int) -> int:
    if key not in pax:
        return field if isinstance(field, int) else parse_number(field)
    try:
        return int(pax[key])
    except ValueError:
        raise ImageError(f"layer tar: bad pax {key} {pax[key]!r}", hint=_HINT) from None


class TarReader:
    """Iterate the members of a tar stream read sequentially once.

    After an entry is yielded the caller may take its data with :meth:`data`; whatever it leaves
    is skipped before the next header is read.
    """

    def __init__(self, stream):
        self._stream = stream
        self._buf = b""
        self._pos = 0
        self._pending = 0          # data + padding of the current entry not yet consumed
        self.bytes_read = 0
        self._global: dict[str, bytes] = {}

    # ---------------------------------------------------------------- raw stream
    def _fill(self) -> bool:
        chunk = self._stream.read(READ_SIZE)
        if not chunk:
            return False
        self.bytes_read += len(chunk)
        self._buf, self._pos = chunk, 0
        return True

    def _take(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or b"" at a clean end of stream; ImageError if cut short."""
        end = self._pos + n
        if end <= len(self._buf):
            out = self._buf[self._pos:end]
            self._pos = end
            return out
        parts = [self._buf[self._pos:]]
        have = len(parts[0])
        while have < n:
            if not self._fill():
                if have == 0:
                    return b""
                raise ImageError("layer tar is truncated", hint=_HINT)
            part = self._buf[:n - have]
            self._pos = len(part)
            parts.append(part)
            have += len(part)
        return b"".join(parts)

    def _chunks(self, n: int) -> Iterator[memoryview]:
        """``n`` bytes as views into the read chunks (no copy)."""
        while n > 0:
            if self._pos >= len(self._buf) and not self._fill():
                raise ImageError("layer tar is truncated inside a file", hint=_HINT)
            end = min(len(self._buf), self._pos + n)
            view = memoryview(self._buf)[self._pos:end]
            n -= end - self._pos
            self._pos = end
            yield view

    def _skip(self, n: int) -> None:
        for _ in self._chunks(n):
            pass

    def data(self, entry: TarEntry) -> Iterator[memoryview]:
        """The entry's contents (of a sparse file: its data regions, one after the other); each
        view is valid until the next one is requested."""
        size = entry.size if entry.sparse is None else sum(n for _, n in entry.sparse)
        self._pending = 0
        yield from self._chunks(size)
        self._skip(-size % BLOCK)

    def drain(self) -> int:
        """Read the stream to its end (the caller's diff_id hash must see every byte)."""
        self._pos = len(self._buf)
        while self._fill():
            pass
        return self.bytes_read

    # ---------------------------------------------------------------- headers
    def __iter__(self) -> Iterator[TarEntry]:
        pax: dict[str, bytes] = {}
        longname = longlink = None
        while True:
            if self._pending:
                self._skip(self._pending)
                self._pending = 0
            header = self._take(BLOCK)
            if not header:
                return                          # EOF on a block boundary: Go's reader accepts it
            if header == _ZERO_BLOCK:
                return                          # end-of-archive marker; drain() reads the rest
            flag, size = self._check(header)
            if flag in (b"x", b"g", b"L", b"K"):
                if size > MAX_META:
                    raise ImageError(f"layer tar: {size}-byte metadata record", hint=_HINT)
                body = self._take(size + (-size % BLOCK))[:size] if size else b""
                if flag == b"x":
                    pax.update(parse_pax(body))
                elif flag == b"g":
                    self._global.update(parse_pax(body))
                elif flag == b"L":
                    longname = _cstr(body)
                else:
                    longlink = _cstr(body)
                continue
            entry = self._entry(header, flag, size, pax, longname, longlink)
            pax, longname, longlink = {}, None, None
            stored = entry.size if entry.sparse is None else sum(n for _, n in entry.sparse)
            self._pending = stored + (-stored % BLOCK)
            yield entry

    def _check(self, header: bytes) -> tuple[bytes, int]:
        stored = parse_number(header[148:156])
        unsigned = sum(header) - sum(header[148:156]) + 8 * 32
        if stored != unsigned:
            signed = unsigned - 2 * sum(b for b in header if b >= 128)
            signed += 2 * sum(b for b in header[148:156] if b >= 128)
            if stored != signed:
                raise ImageError("layer tar: header checksum mismatch (not a tar stream?)",
                                 hint=_HINT)
        size = parse_number(header[124:136])
        if size < 0:    # base-256 can say so; a negative skip would re-read old headers forever
            raise ImageError(f"layer tar: a header with a negative size ({size})", hint=_HINT)
        return header[156:157], size

    def _entry(self, header: bytes, flag: bytes, size: int, pax: dict[str, bytes],
               longname: bytes | None, longlink: bytes | None) -> TarEntry:
        if self._global:
            pax = {**self._global, **pax}
        e = TarEntry()
        name = _cstr(header[0:100])
        if header[257:263] == b"ustar\0":      # POSIX ustar: prefix holds the leading path
            prefix = _cstr(header[345:500])
            if prefix:
                name = prefix + b"/" + name
        e.name = _text(pax["path"] if "path" in pax else longname if longname is not None
                       else name)
        e.linkname = _text(pax["linkpath"] if "linkpath" in pax else longlink
                           if longlink is not None else _cstr(header[157:257]))
        e.typeflag = flag
        e.type = _TYPES.get(flag, "other")
        if flag == b"\0" and e.name.endswith("/"):
            e.type = DIRECTORY                 # pre-POSIX archives mark directories this way
        e.mode = parse_number(header[100:108]) & 0o7777
        e.uid = _pax_int(pax, "uid", header[108:116])
        e.gid = _pax_int(pax, "gid", header[116:124])
        e.size = _pax_int(pax, "size", size)
        if e.size < 0:
            raise ImageError("layer tar: negative size", hint=_HINT)
        mtime_ns = (_pax_time_ns(pax["mtime"]) if "mtime" in pax
                    else parse_number(header[136:148]) * 1_000_000_000)
        # a base-256 or pax time past what a 64-bit timespec holds is clamped, not a crash at
        # utime(2) (GNU tar warns and goes on likewise)
        e.mtime_ns = min(max(mtime_ns, _MIN_NS), _MAX_NS)
        if e.type in (CHAR, BLOCKDEV):
            e.devmajor = parse_number(header[329:337])
            e.devminor = parse_number(header[337:345])
        else:
            e.devmajor = e.devminor = 0
        e.xattrs = {}
        for key, value in pax.items():
            xattr = _pax_xattr(key, value)
            if xattr:
                e.xattrs[xattr[0]] = xattr[1]
        e.sparse = None
        if flag == b"S":
            self._old_gnu_sparse(header, e)
        elif pax and ("GNU.sparse.major" in pax or "GNU.sparse.map" in pax):
            self._pax_sparse(pax, e)
        return e

    # ---------------------------------------------------------------- sparse files
    # As Go's archive/tar (reader.go, handleSparseFile) reads them, so as docker and umoci do:
    # the old GNU 'S' type with its map in the header and extension blocks, and GNU tar's PAX
    # formats 0.0, 0.1 (map in pax records) and 1.0 (map at the start of the data).

    def _old_gnu_sparse(self, header: bytes, e: TarEntry) -> None:
        if header[257:265] != b"ustar  \0":
            raise ImageError(f"layer tar: {e.name!r}: sparse type 'S' outside a GNU header",
                             hint=_HINT)
        stored, e.size = e.size, parse_number(header[483:495])     # the real size
        regions = _gnu_sparse_regions(header[386:482])
        extended = header[482]
        while extended:
            if len(regions) > MAX_META // 24:
                raise ImageError(f"layer tar: {e.name!r}: sparse map too large", hint=_HINT)
            block = self._take(BLOCK)
            if len(block) != BLOCK:
                raise ImageError("layer tar is truncated in a sparse map", hint=_HINT)
            regions += _gnu_sparse_regions(block[:504])
            extended = block[504]
        e.sparse = _check_regions(e, regions, stored)

    def _pax_sparse(self, pax: dict[str, bytes], e: TarEntry) -> None:
        version = (pax.get("GNU.sparse.major"), pax.get("GNU.sparse.minor"))
        if version not in ((b"1", b"0"), (b"0", b"0"), (b"0", b"1"), (None, None)):
            return      # an unknown version: Go reads the entry as a plain file
        if pax.get("GNU.sparse.name"):
            e.name = _text(pax["GNU.sparse.name"])
        stored = e.size
        size = pax.get("GNU.sparse.size") or pax.get("GNU.sparse.realsize")
        if size is not None:
            e.size = _decimal(size, e)
        if version == (b"1", b"0"):
            numbers, used = self._sparse_map_1x0(e, stored)
            stored -= used
        else:
            count = _decimal(pax.get("GNU.sparse.numblocks", b""), e)
            numbers = [_decimal(n, e) for n in pax.get("GNU.sparse.map", b"").split(b",")
                       if n or count]
            if len(numbers) != 2 * count:
                raise ImageError(f"layer tar: {e.name!r}: sparse map of {len(numbers)} "
                                 f"numbers for {count} regions", hint=_HINT)
        e.sparse = _check_regions(e, list(zip(numbers[::2], numbers[1::2])), stored)

    def _sparse_map_1x0(self, e: TarEntry, stored: int) -> tuple[list[int], int]:
        """PAX 1.0: decimal numbers, one per line (the region count, then offset and length of
        each), at the start of the data, padded to a whole block."""
        blocks, lines, count = [], 0, None
        while count is None or lines < 1 + 2 * count:
            if (len(blocks) + 1) * BLOCK > min(stored, MAX_META):
                raise ImageError(f"layer tar: {e.name!r}: sparse map too large or truncated",
                                 hint=_HINT)
            block = self._take(BLOCK)
            if len(block) != BLOCK:
                raise ImageError("layer tar is truncated in a sparse map", hint=_HINT)
            blocks.append(block)
            lines += block.count(b"\n")
            if count is None and lines:
                count = _decimal(b"".join(blocks).partition(b"\n")[0], e)
        tokens = b"".join(blocks).split(b"\n")[1:1 + 2 * count]
        return [_decimal(t, e) for t in tokens], len(blocks) * BLOCK


def _gnu_sparse_regions(table: bytes) -> list[tuple[int, int]]:
    """(offset, length) pairs of 12-byte numbers; an offset starting with NUL ends the table."""
    out = []
    for pos in range(0, len(table) - 23, 24):
        if table[pos] == 0:
            break
        out.append((parse_number(table[pos:pos + 12]), parse_number(table[pos + 12:pos + 24])))
    return out


def _decimal(text: bytes, e: TarEntry) -> int:
    if not text.isdigit():
        raise ImageError(f"layer tar: {e.name!r}: bad number {text[:20]!r} in a sparse "
                         "header", hint=_HINT)
    return int(text)


def _check_regions(e: TarEntry, regions: list[tuple[int, int]],
                   stored: int) -> list[tuple[int, int]]:
    """In order, not overlapping, inside the file, and exactly the data the archive holds
    (Go's validateSparseEntries, and its errMissData/errUnrefData)."""
    end = 0
    for offset, length in regions:
        if offset < end or length < 0 or offset + length > e.size:
            raise ImageError(f"layer tar: {e.name!r}: bad sparse map", hint=_HINT)
        end = offset + length
    if sum(n for _, n in regions) != stored or e.size < 0:
        raise ImageError(f"layer tar: {e.name!r}: its sparse map covers "
                         f"{sum(n for _, n in regions)} bytes, the archive holds {stored}",
                         hint=_HINT)
    return regions
