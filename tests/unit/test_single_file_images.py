"""Single-file images: the SIF descriptor reader, the in-process squashfs reader, the image
conventions (minictr, enroot, Apptainer), and the runtime steps that mount them.

SIF inputs are the reference implementation's own test images (Debian's
golang-github-sylabs-sif-dev), mutated for the bounds checks; no SIF is written here.
Squashfs inputs are made with mksquashfs (squashfs-tools).
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess

import pytest

from minictr.errors import ImageError
from minictr.image import sif, singlefile, squashfs
from minictr.runtime import rootfs, spawn
from minictr.runtime import syscalls as sc

SIF_IMAGES = "/usr/share/gocode/src/github.com/sylabs/sif/test/images"


def need_sif_images():
    if not os.path.isdir(SIF_IMAGES):
        pytest.skip("needs golang-github-sylabs-sif-dev (the SIF reference test images)")


def need_mksquashfs():
    if not shutil.which("mksquashfs"):
        pytest.skip("needs mksquashfs (apt-get install squashfs-tools)")


def reader(data: bytes):
    def data_at(offset, length):
        chunk = data[offset:offset + length]
        if len(chunk) != length:
            raise ImageError("truncated")
        return chunk
    return data_at


# ---------------------------------------------------------------- SIF


def test_sif_partitions_of_the_reference_images():
    need_sif_images()
    with open(os.path.join(SIF_IMAGES, "one-group.sif"), "rb") as f:
        data = f.read()
    parts = sif.partitions(reader(data), len(data))
    # siftool list: 1 FS (Raw/System/386) 32768-32772, 2 FS (Squashfs/*System/386) 36864-40960
    assert [(p.offset, p.offset + p.size, p.fs_type, p.part_type) for p in parts] == [
        (32768, 32772, sif.FS_RAW, sif.PART_SYSTEM),
        (36864, 40960, sif.FS_SQUASH, sif.PART_PRIMSYS)]
    assert sif.root_partition(parts).offset == 36864


def test_sif_without_a_primary_partition_is_refused_with_a_hint():
    need_sif_images()
    with open(os.path.join(SIF_IMAGES, "empty.sif"), "rb") as f:
        data = f.read()
    with pytest.raises(ImageError) as err:
        sif.root_partition(sif.partitions(reader(data), len(data)))
    assert "no primary system partition" in str(err.value) and "setprim" in err.value.hint


@pytest.mark.parametrize("field, value, words", [
    (slice(32, 42), b"NOT_MAGIC\0", "not a SIF"),
    (slice(42, 45), b"02\0", "version"),
    (slice(88, 96), (10**9).to_bytes(8, "little", signed=True), "descriptors"),
    (slice(88, 96), (-1).to_bytes(8, "little", signed=True), "descriptors"),
    (slice(96, 104), (2**62).to_bytes(8, "little", signed=True), "does not fit"),
    (slice(104, 112), (585 * 47).to_bytes(8, "little", signed=True), "does not fit"),
])
def test_sif_header_fields_out_of_bounds_are_errors(field, value, words):
    need_sif_images()
    with open(os.path.join(SIF_IMAGES, "one-group.sif"), "rb") as f:
        data = bytearray(f.read())
    data[field] = value
    with pytest.raises(ImageError, match=words):
        sif.partitions(reader(bytes(data)), len(data))


def test_sif_partition_outside_the_file_is_an_error():
    need_sif_images()
    with open(os.path.join(SIF_IMAGES, "one-group.sif"), "rb") as f:
        data = bytearray(f.read())
    second = 4096 + 585          # descriptor 1: offset at +17, size at +25
    data[second + 25:second + 33] = (len(data)).to_bytes(8, "little", signed=True)
    with pytest.raises(ImageError, match="outside the file"):
        sif.partitions(reader(bytes(data)), len(data))


def test_sif_reader_survives_random_mutations():
    """Any byte of the header and descriptor table changed: an ImageError or a result whose
    partitions all lie inside the file, never another exception."""
    need_sif_images()
    rng = random.Random(14)
    for name in ("one-group.sif", "two-groups.sif", "one-group-signed.sif"):
        with open(os.path.join(SIF_IMAGES, name), "rb") as f:
            original = f.read()
        for _ in range(400):
            data = bytearray(original)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(0, 4096 + 585 * 48)] = rng.randrange(256)
            if rng.random() < 0.2:
                del data[rng.randrange(0, len(data)):]
            try:
                parts = sif.partitions(reader(bytes(data)), len(data))
            except ImageError:
                continue
            assert all(0 <= p.offset <= p.offset + p.size <= len(data) for p in parts)


def test_squashfs_offset_of_a_real_sif(tmp_path):
    need_sif_images()
    assert sif.squashfs_offset(os.path.join(SIF_IMAGES, "one-group.sif")) == 36864
    # a partition that is not squashfs inside is refused by its magic
    data = bytearray(open(os.path.join(SIF_IMAGES, "one-group.sif"), "rb").read())
    data[36864:36868] = b"XXXX"
    bad = tmp_path / "bad.sif"
    bad.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="squashfs superblock"):
        sif.squashfs_offset(str(bad))


# ---------------------------------------------------------------- squashfs


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree") / "root"
    (root / "etc").mkdir(parents=True)
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "a" / "b").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    for i in range(700):                      # several directory headers (256 entries each)
        (root / "etc" / f"f{i}").write_text("x" * i)
    rng = random.Random(1)
    (root / "usr" / "bin" / "big").write_bytes(bytes(rng.randrange(256) for _ in range(300000)))
    (root / "usr" / "bin" / "sparse").write_bytes(bytes(400000))
    os.symlink("/etc/passwd", root / "a" / "b" / "pw")
    os.symlink("../../usr", root / "a" / "b" / "u")
    os.symlink("b", root / "a" / "c")
    os.symlink("loop2", root / "a" / "loop1")
    os.symlink("loop1", root / "a" / "loop2")
    return root


@pytest.fixture(scope="module", params=["gzip", "xz", "zstd", "lzo"])
def image(request, tree, tmp_path_factory):
    need_mksquashfs()
    out = tmp_path_factory.mktemp("sq") / f"img-{request.param}.sqsh"
    subprocess.run(["mksquashfs", str(tree), str(out), "-comp", request.param, "-noappend",
                    "-quiet", "-no-progress"], check=True, capture_output=True)
    return request.param, str(out)


def test_squashfs_reads_files_through_symlinks_inside_the_image(image, tree):
    comp, path = image
    if comp == "lzo":
        with pytest.raises(squashfs.Unsupported):
            squashfs.SquashFS(path)
        # read_file falls back to unsquashfs -cat (no symlinks followed there)
        assert squashfs.read_file(path, 0, "/etc/passwd") == b"root:x:0:0:root:/root:/bin/sh\n"
        return
    with squashfs.SquashFS(path) as fs:
        assert fs.read_file("/a/c/pw") == b"root:x:0:0:root:/root:/bin/sh\n"
        assert fs.read_file("/etc/f699") == b"x" * 699
        assert fs.read_file("/etc/f0") == b""
        big = fs.read_file("/a/b/u/bin/big")
        assert hashlib.sha256(big).digest() == hashlib.sha256(
            (tree / "usr" / "bin" / "big").read_bytes()).digest()
        assert fs.read_file("/usr/bin/sparse") == bytes(400000)
        assert fs.lookup("/nope") is None and fs.read_file("/etc") is None
        assert fs.lookup("/a/b/../../etc/../../etc/passwd").kind == squashfs.FILE
        with pytest.raises(ImageError, match="too many symlinks"):
            fs.lookup("/a/loop1")
        with pytest.raises(ImageError, match="at most"):
            fs.read_file("/usr/bin/big", max_size=1000)


def test_squashfs_reader_survives_random_mutations(tree, tmp_path):
    """Corrupt images give ImageError (or some bytes), never another exception or a hang."""
    need_mksquashfs()
    out = tmp_path / "img.sqsh"
    subprocess.run(["mksquashfs", str(tree / "etc"), str(out), "-noappend", "-quiet",
                    "-no-progress"], check=True, capture_output=True)
    original = out.read_bytes()
    rng = random.Random(14)
    for i in range(300):
        data = bytearray(original)
        for _ in range(rng.randint(1, 6)):
            where = rng.randrange(len(data)) if rng.random() < 0.5 else rng.randrange(96)
            data[where] = rng.randrange(256)
        bad = tmp_path / "bad.sqsh"
        bad.write_bytes(bytes(data))
        try:
            with squashfs.SquashFS(str(bad)) as fs:
                fs.read_file(f"/f{rng.randrange(700)}")
                fs.read_file("/passwd")
        except ImageError:
            pass


# ---------------------------------------------------------------- conventions


def squash(tmp_path, files: dict[str, str], name="img.sqsh") -> str:
    need_mksquashfs()
    root = tmp_path / "root"
    for path, text in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    out = tmp_path / name
    subprocess.run(["mksquashfs", str(root), str(out), "-noappend", "-quiet", "-no-progress"],
                   check=True, capture_output=True)
    return str(out)


def test_minictr_image_config(tmp_path):
    path = squash(tmp_path, {"/.minictr/image.json":
                             '{"config": {"Cmd": ["sh"], "Env": ["A=1"]}}'})
    img = singlefile.open_image(path)
    assert (img.format, img.convention, img.offset) == ("sqsh", "minictr", 0)
    assert img.config["config"]["Env"] == ["A=1"]


def test_enroot_image_conventions(tmp_path):
    path = squash(tmp_path, {"/etc/rc": "exec \"$@\"\n", "/etc/environment":
                             "# comment\nPATH=/opt/bin:/usr/bin\nexport X=\"quoted value\"\n"
                             "bad line\n"})
    img = singlefile.open_image(path)
    assert img.convention == "enroot"
    assert img.config["config"] == {"Entrypoint": ["/bin/sh", "/etc/rc"],
                                    "Env": ["PATH=/opt/bin:/usr/bin", "X=quoted value"]}


def test_apptainer_image_conventions(tmp_path):
    path = squash(tmp_path, {"/.singularity.d/actions/exec": "#!/bin/sh\n",
                             "/.singularity.d/runscript": "#!/bin/sh\n"})
    img = singlefile.open_image(path)
    assert img.convention == "apptainer"
    assert img.config["config"]["Entrypoint"] == ["/.singularity.d/actions/exec"]


def test_a_file_that_is_no_image_is_refused(tmp_path):
    bogus = tmp_path / "x.sqsh"
    bogus.write_bytes(b"\0" * 200)
    with pytest.raises(ImageError) as err:
        singlefile.open_image(str(bogus))
    assert "neither a squashfs nor a SIF" in str(err.value) and err.value.hint


def test_is_file_image(tmp_path):
    f = tmp_path / "x.sqsh"
    f.write_bytes(b"")
    assert singlefile.is_file_image(str(f))
    assert not singlefile.is_file_image("x.sqsh")            # not here: a reference
    assert not singlefile.is_file_image("docker.io/library/busybox:latest")
    with pytest.raises(ImageError, match="does not exist") as err:
        singlefile.check_missing_file(str(tmp_path / "gone.sif"))
    assert err.value.hint
    singlefile.check_missing_file("busybox:latest")          # a reference: not a file
    singlefile.check_missing_file(f"oci:{tmp_path}:latest")


# ---------------------------------------------------------------- runtime steps


def _plan(tmp_path, rootless):
    """The mount point exists (the recording face answers stat of a host path from the host,
    and the tmpfs upper takes the image root's mode from it)."""
    (tmp_path / "image").mkdir(exist_ok=True)
    image = str(tmp_path / "image")
    source = rootfs.SquashfsSource(path="/img/x.sif", offset=4096, mountpoint=image)
    return rootfs.RootfsPlan(lowerdirs=(image,), upperdir=None, workdir=None,
                             target=str(tmp_path / "rootfs"), rootless=rootless,
                             scratch=str(tmp_path / "rw"), volatile=True, squashfs=source)


def test_root_attaches_the_launchers_detached_mount_under_the_overlay(tmp_path):
    kernel = sc.RecordingSyscalls()
    lines = []
    fd = rootfs.open_image_mount(kernel, _plan(tmp_path, False).squashfs, lines.append)
    rootfs.mount_rootfs(kernel, _plan(tmp_path, False), str(tmp_path / "rootfs"),
                        lines.append, fd)
    names = kernel.names()
    assert names[0] == "fsmount_loop" and kernel.calls[0][1:3] == ("/img/x.sif", 4096)
    assert names.index("move_mount") < [i for i, c in enumerate(kernel.calls)
                                        if c[0] == "mount" and c[3] == "overlay"][0]
    assert "spawn_fuse" not in names
    assert any(f"lowerdir={tmp_path}/image," in str(c) for c in kernel.calls)
    # the squashfs is in place before the tmpfs upper takes its root's mode from it
    assert names.index("move_mount") < names.index("fchmodat")


def test_rootless_serves_the_file_with_squashfuse_from_the_jail(tmp_path):
    kernel = sc.RecordingSyscalls()
    lines = []
    rootfs.mount_rootfs(kernel, _plan(tmp_path, True), str(tmp_path / "rootfs"), lines.append)
    fuse = [c for c in kernel.calls if c[0] == "spawn_fuse"]
    assert fuse[0][1][:4] == ["squashfuse_ll", "-f", "-o", "ro,allow_other,offset=4096"]
    assert fuse[0][2].endswith("fuse-root")            # chrooted in the jail
    move = [c for c in kernel.calls if c[0] == "mount" and c[4] == sc.MS_MOVE]
    assert move[0][1].endswith(f"fuse-root{tmp_path}/image") and move[0][2] == f"{tmp_path}/image"
