"""The layer tar reader's format corners (POSIX pax, GNU base-256, libarchive xattrs)."""
from __future__ import annotations

import base64
import io
import tarfile

import pytest

from layertar import F, make_tar
from minictr.errors import ImageError
from minictr.image.tarstream import TarReader, parse_number, parse_pax


def test_numbers_octal_padded_and_base256():
    assert parse_number(b"0000644\0") == 0o644
    assert parse_number(b"  755 \0\0") == 0o755
    assert parse_number(b"\0" * 8) == 0 and parse_number(b"        ") == 0
    assert parse_number(b"\x80" + (2**40).to_bytes(11, "big")) == 2**40
    assert parse_number(b"\xff" * 12) == -1
    with pytest.raises(ImageError):
        parse_number(b"12x4\0")


def record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body)
    while n != len(body) + len(str(n)):     # the length counts its own digits
        n = len(body) + len(str(n))
    return str(n).encode() + body


def test_pax_records():
    body = record(b"path", b"a b=c/d.txt") + record(b"SCHILY.xattr.user.k", b"v\0\n\0")
    assert parse_pax(body + b"\0" * 20) == {"path": b"a b=c/d.txt",
                                            "SCHILY.xattr.user.k": b"v\0\n\0"}
    for bad in (b"99 path=x\n", b"x path=y\n", b"12 pathxxxx\n"):
        with pytest.raises(ImageError):
            parse_pax(bad)


def test_libarchive_xattrs_and_large_uid():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("f")
        info.uid = 3_000_000_000                           # beyond 8 octal digits: pax uid
        info.pax_headers = {"LIBARCHIVE.xattr.user.a%3Db": base64.b64encode(b"\x00\xff").decode()
                            .rstrip("=")}
        tf.addfile(info)
    (entry,) = list(TarReader(io.BytesIO(buf.getvalue())))
    assert entry.uid == 3_000_000_000
    assert entry.xattrs == {"user.a=b": b"\x00\xff"}


def test_bad_checksum_is_an_image_error():
    data = bytearray(make_tar([F("f", b"x")]))
    data[10] ^= 0xFF
    with pytest.raises(ImageError, match="checksum"):
        list(TarReader(io.BytesIO(bytes(data))))


def test_unknown_gnu_sparse_version_is_a_plain_file():
    # as Go's archive/tar: a version it does not know leaves the member a plain file
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("s")
        info.size = 3
        info.pax_headers = {"GNU.sparse.major": "1"}
        tf.addfile(info, io.BytesIO(b"abc"))
    reader = TarReader(io.BytesIO(buf.getvalue()))
    (entry,) = [(e, b"".join(reader.data(e))) for e in reader]
    assert entry[0].sparse is None and entry[1] == b"abc"


def test_global_pax_headers_apply_to_later_members():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"uid": "4242"}) as tf:
        tf.addfile(tarfile.TarInfo("a"))
        tf.addfile(tarfile.TarInfo("b"))
    assert [e.uid for e in TarReader(io.BytesIO(buf.getvalue()))] == [4242, 4242]
