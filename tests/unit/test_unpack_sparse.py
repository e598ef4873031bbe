"""Sparse files in layers, as Go's archive/tar (so docker and umoci) reads them (issue 12,
item 2.3): GNU tar's old 'S' type and its PAX formats 0.0, 0.1 and 1.0."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile

import pytest

from minictr.errors import ImageError
from minictr.image.unpack import unpack_layer

SIZE = 1_000_000
REGIONS = [(i * 100_000 + 3, 5000) for i in range(7)]      # 7 > 4: GNU extension blocks


def make_sparse_file(path) -> bytes:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        for i, (offset, length) in enumerate(REGIONS):
            os.pwrite(fd, bytes([65 + i]) * length, offset)
        os.ftruncate(fd, SIZE)
    finally:
        os.close(fd)
    return open(path, "rb").read()


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")
@pytest.mark.parametrize("fmt", ["gnu", "pax-0.0", "pax-0.1", "pax-1.0", "pax"])
def test_gnu_tar_sparse_formats(tmp_path, fmt):
    src = tmp_path / "src"
    src.mkdir()
    content = make_sparse_file(src / "sparse.img")
    archive = tmp_path / "layer.tar"
    kind, _, version = fmt.partition("-")
    args = ["tar", "--sparse", f"--format={kind}", "--numeric-owner", "-cf", str(archive),
            "-C", str(src), "sparse.img", "--owner=0", "--group=0"]
    if version:
        args.insert(2, f"--sparse-version={version}")
    subprocess.run(args, check=True)
    dest = tmp_path / "layer"
    dest.mkdir()
    with open(archive, "rb") as f:
        stats = unpack_layer(f, str(dest), rootless=False)
    out = dest / "sparse.img"
    assert out.read_bytes() == content
    st = os.stat(out)
    assert st.st_size == SIZE and st.st_mode & 0o777 == 0o640 and stats.files == 1
    assert st.st_blocks * 512 < SIZE // 2          # the holes stayed holes


def pax_sparse(name: str, data: bytes, records: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("GNUSparseFile.0/" + name)
        info.size = len(data)
        info.pax_headers = records
        tf.addfile(info, io.BytesIO(data))
        after = tarfile.TarInfo("after")
        after.size = 2
        tf.addfile(after, io.BytesIO(b"ok"))
    return buf.getvalue()


def v01(size, regions, **extra):
    flat = ",".join(f"{o},{n}" for o, n in regions)
    return {"GNU.sparse.major": "0", "GNU.sparse.minor": "1", "GNU.sparse.name": "x",
            "GNU.sparse.size": str(size), "GNU.sparse.numblocks": str(len(regions)),
            "GNU.sparse.map": flat, **extra}


def unpack_bytes(data: bytes, dest):
    dest.mkdir(exist_ok=True)
    return unpack_layer(io.BytesIO(data), str(dest), rootless=False)


def test_pax_sparse_by_hand_and_the_next_member(tmp_path):
    unpack_bytes(pax_sparse("x", b"abcdefg", v01(100, [(0, 3), (50, 4)])), tmp_path / "l")
    assert (tmp_path / "l/x").read_bytes() == b"abc" + bytes(47) + b"defg" + bytes(46)
    assert (tmp_path / "l/after").read_bytes() == b"ok"


def test_pax_1_0_map_in_the_data(tmp_path):
    body = b"2\n0\n3\n50\n4\n".ljust(512, b"\0") + b"abcdefg"
    records = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "x",
               "GNU.sparse.realsize": "60"}
    unpack_bytes(pax_sparse("x", body, records), tmp_path / "l")
    assert (tmp_path / "l/x").read_bytes() == b"abc" + bytes(47) + b"defg" + bytes(6)


@pytest.mark.parametrize("regions,data,why", [
    ([(0, 3), (50, 4)], b"abcdef", "covers 7 bytes, the archive holds 6"),   # errMissData
    ([(0, 3), (50, 4)], b"abcdefgh", "covers 7 bytes, the archive holds 8"),  # errUnrefData
    ([(0, 3), (2, 4)], b"abcdefg", "bad sparse map"),                        # overlapping
    ([(50, 4), (0, 3)], b"abcdefg", "bad sparse map"),                       # out of order
    ([(0, 3), (98, 4)], b"abcdefg", "bad sparse map"),                       # past the end
])
def test_bad_sparse_maps_are_refused(tmp_path, regions, data, why):
    with pytest.raises(ImageError, match=why):
        unpack_bytes(pax_sparse("x", data, v01(100, regions)), tmp_path / "l")


@pytest.mark.parametrize("records", [
    v01(100, [(0, 3)], **{"GNU.sparse.numblocks": "2"}),
    v01(100, [(0, 3)], **{"GNU.sparse.size": "1e3"}),
    {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "9"},  # no map
])
def test_malformed_sparse_headers_are_refused(tmp_path, records):
    with pytest.raises(ImageError):
        unpack_bytes(pax_sparse("x", b"abc", records), tmp_path / "l")
