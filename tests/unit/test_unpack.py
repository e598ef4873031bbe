"""Layer unpacking into overlay form: the normal cases (OCI image-spec layer.md)."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile

import pytest
import zstandard

from layertar import D, F, H, M, S, make_tar
from minictr.errors import ImageError
from minictr.image.unpack import open_layer, unpack_layer

OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_GZIP = OCI_TAR + "+gzip"
OCI_ZSTD = OCI_TAR + "+zstd"
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_TAR = "application/vnd.docker.image.rootfs.diff.tar"


@pytest.fixture
def dest(tmp_path):
    d = tmp_path / "layer"
    d.mkdir()
    return d


def unpack(members, dest, *, rootless=False, **kw):
    return unpack_layer(io.BytesIO(make_tar(members)), str(dest), rootless=rootless, **kw)


def test_files_dirs_symlinks_modes_and_owners(dest):
    stats = unpack([D("etc", mode=0o750, uid=3, gid=4),
                    F("etc/conf", b"hello", mode=0o640, uid=1000, gid=1001),
                    F("bin/tool", b"#!/bin/sh\n", mode=0o4755),   # parent not in the tar
                    S("etc/link", "../bin/tool", uid=5, gid=6)], dest)
    conf = os.stat(dest / "etc/conf")
    assert (dest / "etc/conf").read_bytes() == b"hello"
    assert (stat.S_IMODE(conf.st_mode), conf.st_uid, conf.st_gid) == (0o640, 1000, 1001)
    etc = os.stat(dest / "etc")
    assert (stat.S_IMODE(etc.st_mode), etc.st_uid, etc.st_gid) == (0o750, 3, 4)
    assert stat.S_IMODE(os.stat(dest / "bin/tool").st_mode) == 0o4755   # root keeps setuid
    assert os.readlink(dest / "etc/link") == "../bin/tool"
    link = os.lstat(dest / "etc/link")
    assert (link.st_uid, link.st_gid) == (5, 6)
    assert (stats.files, stats.bytes, stats.symlinks) == (2, 15, 1)


def test_mtimes_with_directory_mtimes_set_last(dest):
    unpack([D("d", mtime=1000), F("d/f", b"x", mtime=2000), S("d/s", "f", mtime=3000),
            D("d/sub", mtime=4000), F("d/sub/g", mtime=5000)], dest)
    assert os.stat(dest / "d").st_mtime == 1000
    assert os.stat(dest / "d/f").st_mtime == 2000
    assert os.lstat(dest / "d/s").st_mtime == 3000
    assert os.stat(dest / "d/sub").st_mtime == 4000


def test_pax_fractional_mtime_and_long_names(dest):
    long = "a" * 120 + "/" + "b" * 130
    data = make_tar([F(long, b"deep", mtime=1_600_000_000.5)])
    unpack_layer(io.BytesIO(data), str(dest), rootless=False)
    assert os.stat(dest / long).st_mtime_ns == 1_600_000_000_500_000_000
    gnu = make_tar([F("c" * 150, b"gnu"), S("l" * 110, "t" * 120)], fmt=tarfile.GNU_FORMAT)
    unpack_layer(io.BytesIO(gnu), str(dest), rootless=False)
    assert (dest / ("c" * 150)).read_bytes() == b"gnu"
    assert os.readlink(dest / ("l" * 110)) == "t" * 120


def test_large_file_spanning_read_chunks(dest):
    blob = os.urandom(3 << 20) + b"tail"
    unpack([F("big", blob), F("after", b"ok")], dest)
    assert (dest / "big").read_bytes() == blob
    assert (dest / "after").read_bytes() == b"ok"


def test_hardlink_in_the_same_layer(dest):
    stats = unpack([F("a", b"data", mode=0o600), H("b", "a"), H("/c", "./a")], dest)
    assert os.stat(dest / "a").st_ino == os.stat(dest / "b").st_ino == os.stat(dest / "c").st_ino
    assert stats.links == 2


def test_hardlink_into_a_lower_layer_is_copied_up(tmp_path, dest):
    upper_lower, bottom = tmp_path / "l2", tmp_path / "l1"
    (bottom / "usr/bin").mkdir(parents=True)
    (bottom / "usr/bin/perl").write_bytes(b"bottom perl")
    (upper_lower / "usr/bin").mkdir(parents=True)
    (upper_lower / "usr/bin/perl").write_bytes(b"upper perl")
    os.chmod(upper_lower / "usr/bin/perl", 0o751)
    os.utime(upper_lower / "usr/bin/perl", (99, 99))
    calls = []

    def lowers():
        calls.append(1)
        return [str(upper_lower), str(bottom)]

    unpack([D("."), H("usr/bin/perl5", "usr/bin/perl", mode=0o644, mtime=1234)], dest,
           lower_lookup=lowers)
    copy, link = os.stat(dest / "usr/bin/perl"), os.stat(dest / "usr/bin/perl5")
    assert (dest / "usr/bin/perl5").read_bytes() == b"upper perl"      # topmost lower wins
    assert copy.st_ino == link.st_ino and link.st_nlink == 2          # one inode, as overlay
    assert stat.S_IMODE(link.st_mode) == 0o751 and link.st_mtime == 99  # the target's metadata
    assert link.st_ino != os.stat(upper_lower / "usr/bin/perl").st_ino
    assert calls == [1]


def test_lower_lookup_only_when_the_layer_reaches_below(dest):
    def lowers():
        raise AssertionError("lower_lookup called")
    unpack([D("."), F("a", b"1"), H("b", "a"), D("d"), F("d/e"), F("d/.wh..wh..opq")],
           dest, lower_lookup=lowers)


def test_without_a_root_entry_lower_lookup_is_asked_at_the_end(dest):
    # the root's metadata then comes from the layer below; asked after the entries, so the
    # layer is unpacked while the lower ones still are
    calls = []
    unpack([F("a", b"1"), H("b", "a")], dest,
           lower_lookup=lambda: calls.append((dest / "b").exists()) or [])
    assert calls == [True]


def test_hardlink_to_a_file_whited_out_in_a_higher_lower_fails(tmp_path, dest):
    top, bottom = tmp_path / "top", tmp_path / "bottom"
    bottom.mkdir()
    (bottom / "f").write_bytes(b"hidden")
    top.mkdir()
    os.mknod(top / "f", stat.S_IFCHR, os.makedev(0, 0))
    with pytest.raises(ImageError, match="neither this layer nor a lower one"):
        unpack([H("g", "f")], dest, lower_lookup=lambda: [str(top), str(bottom)])


def test_xattrs_as_root(dest):
    unpack([F("f", b"x", xattrs={"user.note": "hi", "trusted.tag": "t"})], dest)
    assert os.getxattr(dest / "f", "user.note") == b"hi"
    assert os.getxattr(dest / "f", "trusted.tag") == b"t"


def test_rootless_keeps_user_xattrs_only_and_does_not_chown(dest):
    warnings = []
    unpack([F("f", b"x", uid=1234, gid=1234, mode=0o4755,
              xattrs={"user.note": "hi", "trusted.tag": "t", "security.x": "y"})],
           dest, rootless=True, warn=warnings.append)
    st = os.stat(dest / "f")
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    assert stat.S_IMODE(st.st_mode) == 0o4755        # setuid to the unpacking user only
    assert os.listxattr(dest / "f") == ["user.note"]
    assert any("trusted.tag" in w for w in warnings)


def test_rootless_read_only_directory_still_gets_its_children(dest):
    unpack([D("ro", mode=0o555), F("ro/f", b"x")], dest, rootless=True)
    assert (dest / "ro/f").read_bytes() == b"x"
    assert stat.S_IMODE(os.stat(dest / "ro").st_mode) == 0o555


def test_device_nodes_and_fifos_as_root(dest):
    unpack([M("dev/null", "char", mode=0o666, devmajor=1, devminor=3),
            M("dev/sda", "block", mode=0o660, devmajor=8, devminor=0, gid=6),
            M("run/fifo", "fifo", mode=0o620)], dest)
    null = os.lstat(dest / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(null.st_mode) == 0o666
    sda = os.lstat(dest / "dev/sda")
    assert stat.S_ISBLK(sda.st_mode) and sda.st_gid == 6
    assert stat.S_ISFIFO(os.lstat(dest / "run/fifo").st_mode)


# ---------------------------------------------------------------- whiteouts and opaque dirs
def is_whiteout(path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


def test_whiteout_becomes_a_0_0_char_device(dest):
    stats = unpack([D("etc"), F("etc/.wh.passwd"), F(".wh..bashrc")], dest)
    assert is_whiteout(dest / "etc/passwd") and is_whiteout(dest / ".bashrc")
    assert not os.path.lexists(dest / "etc/.wh.passwd")
    assert stats.whiteouts == 2


@pytest.mark.parametrize("rootless,key", [(False, "trusted.overlay.opaque"),
                                          (True, "user.overlay.opaque")])
@pytest.mark.parametrize("marker_first", [True, False])
def test_opaque_marker_keeps_same_layer_siblings(dest, rootless, key, marker_first):
    marker = [F("d/.wh..wh..opq")]
    siblings = [F("d/kept", b"1"), D("d/sub"), F("d/sub/deep", b"2")]
    members = [D("d")] + (marker + siblings if marker_first else siblings + marker)
    stats = unpack(members, dest, rootless=rootless)
    assert os.getxattr(dest / "d", key) == b"y"
    assert (dest / "d/kept").read_bytes() == b"1" and (dest / "d/sub/deep").read_bytes() == b"2"
    assert sorted(os.listdir(dest / "d")) == ["kept", "sub"]
    assert stats.opaque_dirs == 1


def test_opaque_marker_without_its_directory_entry(dest):
    # without a lower_lookup nothing is known of the layers below: the marker is kept
    unpack([F("x/y/.wh..wh..opq")], dest)
    assert os.getxattr(dest / "x/y", "trusted.overlay.opaque") == b"y"


@pytest.mark.parametrize("name", ["d/.wh..wh..plnk", ".wh..wh.foo", "d/.wh.", "d/.wh..."])
def test_reserved_whiteout_names_are_rejected(dest, name):
    with pytest.raises(ImageError, match="reserved"):
        unpack([F(name)], dest)


def test_whiteout_and_entry_of_the_same_name_in_one_layer(dest):
    unpack([F("a", b"kept"), F(".wh.a"), F(".wh.b"), F("b", b"added later")], dest)
    assert (dest / "a").read_bytes() == b"kept"
    assert (dest / "b").read_bytes() == b"added later"


def test_later_entries_replace_earlier_ones(dest):
    unpack([F("x", b"file"), D("x"), F("x/inner", b"1"),
            D("y"), F("y/inner", b"2"), F("y", b"now a file"),
            D("z", mode=0o700), D("z", mode=0o711), F("z/f")], dest)
    assert (dest / "x/inner").read_bytes() == b"1"
    assert (dest / "y").read_bytes() == b"now a file"
    assert stat.S_IMODE(os.stat(dest / "z").st_mode) == 0o711 and (dest / "z/f").exists()


def test_root_directory_entry_sets_the_layer_root_metadata(dest):
    unpack([D(".", mode=0o711, mtime=42), F("f")], dest)
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o711 and os.stat(dest).st_mtime == 42


# ---------------------------------------------------------------- compression and the stream
def compress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


@pytest.mark.parametrize("media_type,kind", [
    (OCI_TAR, "tar"), (OCI_GZIP, "gzip"), (OCI_ZSTD, "zstd"), (DOCKER_GZIP, "gzip"),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", "zstd"),
    (DOCKER_TAR, "tar"), (DOCKER_TAR, "gzip")])
def test_media_types(dest, media_type, kind):
    raw = make_tar([F("f", os.urandom(100_000) * 30), F("g", b"end")])
    stream = open_layer(io.BytesIO(compress(kind, raw)), media_type)
    stats = unpack_layer(stream, str(dest), rootless=False)
    assert (dest / "g").read_bytes() == b"end" and stats.tar_bytes == len(raw)


@pytest.mark.parametrize("media_type,kind", [
    (OCI_TAR, "tar"), (OCI_GZIP, "gzip"), (OCI_ZSTD, "zstd"), (DOCKER_TAR, "gzip")])
def test_tar_hash_covers_every_uncompressed_byte(dest, media_type, kind):
    """The diff_id is hashed on the decoder's thread: complete, padding and trailer included,
    once a read has returned b"" (as the store reads it)."""
    raw = make_tar([F("f", os.urandom(3 << 20)), F("g", b"end")]) + b"\0" * 10240
    tar_hash = hashlib.sha256()
    stream = open_layer(io.BytesIO(compress(kind, raw)), media_type, tar_hash=tar_hash)
    unpack_layer(stream, str(dest), rootless=False)
    assert stream.read(1 << 20) == b""
    assert tar_hash.hexdigest() == hashlib.sha256(raw).hexdigest()
    assert stream.size == len(raw)


def test_multi_member_gzip_and_multi_frame_zstd(dest):
    raw = make_tar([F("f", b"x" * 5000), F("g", b"y")])
    half = len(raw) // 2
    for kind, blob in [("gz", gzip.compress(raw[:half]) + gzip.compress(raw[half:])),
                       ("zst", zstandard.ZstdCompressor().compress(raw[:half])
                        + zstandard.ZstdCompressor().compress(raw[half:]))]:
        out = dest / kind
        out.mkdir()
        stream = open_layer(io.BytesIO(blob), OCI_GZIP if kind == "gz" else OCI_ZSTD)
        unpack_layer(stream, str(out), rootless=False)
        assert (out / "g").read_bytes() == b"y"


def test_unknown_media_type_has_a_hint():
    with pytest.raises(ImageError) as err:
        open_layer(io.BytesIO(b""), "application/vnd.oci.image.layer.v1.tar+bzip2")
    assert err.value.hint and "zstd" in err.value.hint


def test_stream_is_read_to_its_end_for_the_callers_hash(dest):
    raw = make_tar([F("f", b"x")]) + b"\0" * 10240 + b"trailing junk"
    source = io.BytesIO(raw)
    stats = unpack_layer(source, str(dest), rootless=False)
    assert source.read() == b"" and stats.tar_bytes == len(raw)


@pytest.mark.parametrize("media_type,blob", [
    (OCI_GZIP, gzip.compress(make_tar([F("f", os.urandom(50_000))]))[:-100]),
    (OCI_GZIP, gzip.compress(make_tar([F("f", b"x")]))[:20]),
    (OCI_GZIP, b"\x1f\x8b" + b"garbage" * 100),
    (OCI_GZIP, b""),
    (OCI_ZSTD, zstandard.ZstdCompressor().compress(make_tar([F("f", os.urandom(50_000))]))[:-50]),
    (OCI_ZSTD, b"\x28\xb5\x2f\xfd" + b"\xff" * 300),
    (OCI_TAR, b"this is not a tar archive" * 100),
    (OCI_TAR, make_tar([F("f", os.urandom(10_000))])[:4096]),
])
def test_corrupt_or_truncated_layers_raise_image_error(dest, media_type, blob):
    with pytest.raises(ImageError):
        unpack_layer(open_layer(io.BytesIO(blob), media_type), str(dest), rootless=False)


def test_entries_inside_a_whiteout_marker_are_rejected(dest):
    with pytest.raises(ImageError, match="inside a whiteout marker"):
        unpack([F(".wh.d/f")], dest)


def test_unknown_member_types_are_skipped_with_a_warning(dest):
    info = tarfile.TarInfo("weird")
    info.type = b"Z"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        tf.addfile(info)
        tf.addfile(tarfile.TarInfo("after"))
    warnings = []
    stats = unpack_layer(io.BytesIO(buf.getvalue()), str(dest), rootless=False,
                         warn=warnings.append)
    assert stats.skipped == 1 and "weird" in warnings[0] and (dest / "after").exists()


def test_decoder_thread_stops_when_the_reader_is_closed():
    blob = gzip.compress(b"x" * (16 << 20), compresslevel=1)
    stream = open_layer(io.BytesIO(blob), OCI_GZIP)
    assert stream.read(10)
    stream.close()
    assert not stream._thread.is_alive()


def test_hardlink_target_under_an_opaque_lower_directory_is_hidden(tmp_path, dest):
    top, bottom = tmp_path / "top", tmp_path / "bottom"
    (bottom / "d").mkdir(parents=True)
    (bottom / "d/f").write_bytes(b"hidden")
    (top / "d").mkdir(parents=True)
    os.setxattr(top / "d", "trusted.overlay.opaque", b"y")
    with pytest.raises(ImageError, match="neither this layer nor a lower one"):
        unpack([H("g", "d/f")], dest, lower_lookup=lambda: [str(top), str(bottom)])


def test_parent_directories_are_resolved_through_the_kernel_face(dest):
    from minictr.runtime.syscalls import RESOLVE_IN_ROOT, Syscalls

    class Counting(Syscalls):
        def __init__(self):
            self.resolves = []

        def openat2(self, dirfd, path, flags, resolve, mode=0):
            self.resolves.append((path, resolve))
            return super().openat2(dirfd, path, flags, resolve, mode)

    face = Counting()
    unpack([D("a"), F("a/f1"), F("a/f2"), F("b/c/f3")], dest, kernel=face)
    assert face.resolves and all(r & RESOLVE_IN_ROOT for _, r in face.resolves)
    assert [p for p, _ in face.resolves].count("a") == 1      # parent fds are cached


def test_modes_are_exact_whatever_the_umask(dest):
    """Files are made with their mode; the umask's share is put back by fchmod."""
    old = os.umask(0o077)
    try:
        unpack([F("a", b"", mode=0o755), F("b", b"", mode=0o600), F("c", b"", mode=0o4755),
                F("d", b"", mode=0o1777), F("e", b"", mode=0o000)], dest)
    finally:
        os.umask(old)
    assert {n: stat.S_IMODE(os.lstat(dest / n).st_mode) for n in "abcde"} == {
        "a": 0o755, "b": 0o600, "c": 0o4755, "d": 0o1777, "e": 0o000}


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another group needs root")
def test_owner_is_set_in_a_setgid_directory_of_another_group(dest):
    """A setgid directory gives new files its group: a root-owned entry must still end root's
    (the skipped fchown is only for files that already have the entry's owner)."""
    os.chown(dest, 0, 4321)
    os.chmod(dest, 0o2755)
    unpack([F("f", b"x", uid=0, gid=0), F("g", b"y", uid=0, gid=4321),
            F("h", b"z", uid=7, gid=8)], dest)
    assert [(os.lstat(dest / n).st_uid, os.lstat(dest / n).st_gid) for n in "fgh"] == [
        (0, 0), (0, 4321), (7, 8)]
