"""minictr's layers, mounted as the container sees them, against umoci's unpack of the same image.

umoci (``umoci raw unpack``) applies the layers one over the other into a single tree, with Go's
archive/tar: the reference for what an image means. minictr keeps each layer in its own
directory (an overlay lowerdir); here they are loaded with ``archive.load`` (the parallel
import, as ``minictr load``) and mounted read-only with overlayfs, and the two trees are
compared entry by entry: type, mode, owner, size, content, symlink target, device numbers,
xattrs, mtime of non-directories, and which names are one inode (hardlinks).

Known, deliberate differences are not part of these images: umoci creates the missing target
of a dangling symlink it writes through (minictr refuses, as GNU tar); umoci refuses the old GNU
sparse type 'S' (compared with GNU tar's extraction instead); umoci keeps the lower children of
a directory that a later ``.wh.d`` in the same layer deletes (minictr applies the whiteout to
the lower layers whatever its place in the tar, as layer.md says).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess

import pytest

from minictr.image import archive
from minictr.image.store import Store
from tests.unit.layertar import D, F, H, M, S, make_tar

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not shutil.which("umoci"), reason="umoci is not installed "
                                 "(apt-get install umoci)")]

LAYER = "application/vnd.oci.image.layer.v1.tar"
CAP_NET_RAW = "\x00\x00\x00\x02" + "\x00\x20\x00\x00" + "\x00" * 12     # vfs_cap_data v2


def write_layout(path, tars: list[bytes]) -> str:
    blobs = os.path.join(path, "blobs", "sha256")
    os.makedirs(blobs)

    def put(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    layers = [{"mediaType": LAYER, **put(t)} for t in tars]
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **put(json.dumps(config).encode())}, "layers": layers}
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": manifest["mediaType"], **put(json.dumps(manifest).encode()),
        "annotations": {"org.opencontainers.image.ref.name": "t"}}]}
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(path, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    return str(path)


def describe(top: str) -> tuple[dict, list]:
    """Each entry's metadata, and the groups of names that are one inode."""
    out, inodes = {}, {}

    def row(path: str, st: os.stat_result) -> dict:
        r = {"type": stat.filemode(st.st_mode)[0], "mode": oct(stat.S_IMODE(st.st_mode)),
             "owner": (st.st_uid, st.st_gid),
             "xattrs": {k: os.getxattr(path, k, follow_symlinks=False)
                        for k in sorted(os.listxattr(path, follow_symlinks=False))}}
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                r["sha256"] = hashlib.sha256(f.read()).hexdigest()
            r["size"] = st.st_size
        if stat.S_ISLNK(st.st_mode):
            r["target"] = os.readlink(path)
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            r["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        if not stat.S_ISDIR(st.st_mode):
            r["mtime"] = st.st_mtime_ns // 1_000_000_000
        return r

    out["."] = row(top, os.lstat(top))
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, top)
            st = os.lstat(path)
            out[rel] = row(path, st)
            if not stat.S_ISDIR(st.st_mode):
                inodes.setdefault(st.st_ino, []).append(rel)
    return out, sorted(sorted(g) for g in inodes.values() if len(g) > 1)


def umoci_tree(layout: str, dest: str) -> tuple[dict, list]:
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{layout}:t", dest], check=True,
                   capture_output=True, timeout=120)
    return describe(dest)


def minictr_tree(layout: str, work) -> tuple[dict, list]:
    """archive.load into a fresh store, then the layers as the container's lowerdirs."""
    with Store(str(work / "store")) as store:
        (name,) = archive.load(store, f"oci:{layout}:t")
        image = store.resolve(name)
        lowers = [store.layer_dir(l.chain_id) for l in reversed(image.layers)]
    empty = work / "empty"          # overlayfs wants two lowerdirs when it has no upperdir
    empty.mkdir()
    mnt = work / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    "ro,lowerdir=" + ":".join(lowers + [str(empty)]), str(mnt)], check=True)
    try:
        return describe(str(mnt))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def assert_same(tmp_path, tars: list[bytes]):
    layout = write_layout(tmp_path / "layout", tars)
    theirs = umoci_tree(layout, str(tmp_path / "umoci"))
    ours = minictr_tree(layout, tmp_path)
    for path in sorted(set(theirs[0]) | set(ours[0])):
        assert ours[0].get(path) == theirs[0].get(path), f"{path}: minictr vs umoci"
    assert ours[1] == theirs[1], "hardlink groups differ"
    return ours


BASE = [
    D(".", mode=0o755, mtime=10), D("etc"), F("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
    F("etc/shadow", b"root:*:1::::::\n", mode=0o640, gid=42),
    D("home"), D("home/user", mode=0o700, uid=1000, gid=1000, xattrs={"user.quota": "10G"}),
    D("usr"), D("usr/bin"), D("usr/lib", mode=0o751, xattrs={"trusted.tag": "lib"}),
    S("lib", "usr/lib"), S("bin", "/usr/bin"), S("l1", "l2"), S("l2", "usr"),
    F("usr/bin/su", b"\x7fELF su", mode=0o4755,
      xattrs={"security.capability": CAP_NET_RAW, "user.k": "v"}),
    F("usr/bin/sh", b"\x7fELF sh", mode=0o755), H("usr/bin/sh2", "usr/bin/sh"),
    F("usr/lib/libc.so", b"libc"), M("dev/null", "char", devmajor=1, devminor=3, mode=0o666),
    M("run/initctl", "fifo", mode=0o600), D("opt", mode=0o750), F("opt/old", b"old"),
    D("var"), D("var/cache"), F("var/cache/a", b"a"),
]


def test_implicit_parents_hardlinks_and_symlinked_dirs(tmp_path):
    ours = assert_same(tmp_path, [make_tar(BASE), make_tar([
        F("home/user/.bashrc", b"rc", uid=1000),              # item 1: implicit parent
        H("usr/bin/su2", "usr/bin/su", mode=0o644),           # item 2: link into a lower layer
        H("usr/bin/sh3", "usr/bin/sh2"),                      #   ... to a lower hardlink group
        F("lib/libnew.so", b"new"), F("bin/tool", b"t", mode=0o755),   # item 4
        F("l1/lib/chain.so", b"c"),                           #   a chain of lower symlinks
        S("lib32", "usr/lib"), F("lib32/x", b"x"),            #   this layer's link to a lower dir
    ])])
    assert ours[0]["home/user"]["mode"] == "0o700" and ours[0]["lib"]["type"] == "l"


def test_whiteouts_opaque_markers_root_and_symlink_xattrs(tmp_path):
    assert_same(tmp_path, [make_tar(BASE), make_tar([
        F("etc/.wh.shadow"),                     # a whiteout in a directory the layer omits
        F("a/b/.wh.c"), F("x/.wh..wh..opq"),     # item 5: nothing below, no ghost directories
        D("new"), F("new/.wh.none"),             #   nor a ghost name in a one-layer directory
        F("opt/.wh..wh..opq"), F("opt/new", b"new"),
        F("var/cache/.wh.a"), F("lib/.wh.libc.so"),           # through a lower symlink
        S("slink", "etc/passwd", xattrs={"trusted.t": "1", "security.s": "2"}),
    ]), make_tar([F("g", b"no ./ entry in this layer: / keeps the bottom's metadata")])])


def test_whiteout_then_directory_in_one_layer(tmp_path):
    assert_same(tmp_path, [make_tar(BASE), make_tar([
        F("opt/.wh.old"), F(".wh.var"), D("var", mode=0o711), F("var/new", b"n")])])


@pytest.mark.skipif(not shutil.which("tar"), reason="needs GNU tar")
@pytest.mark.parametrize("version", ["0.0", "0.1", "1.0"])
def test_pax_sparse_files(tmp_path, version):
    assert_same(tmp_path, [gnu_sparse_tar(tmp_path, "pax", version)])


@pytest.mark.skipif(not shutil.which("tar"), reason="needs GNU tar")
def test_old_gnu_sparse_type_against_gnu_tar(tmp_path):
    # umoci (like docker) refuses typeflag 'S', which Go's archive/tar reads: GNU tar decides
    tar = gnu_sparse_tar(tmp_path, "gnu", None)
    layout = write_layout(tmp_path / "layout", [tar])
    (tmp_path / "gnutar").mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xpf", str(tmp_path / "sparse.tar"), "-C",
                    str(tmp_path / "gnutar")], check=True)
    ours, theirs = minictr_tree(layout, tmp_path)[0], describe(str(tmp_path / "gnutar"))[0]
    del theirs["."], ours["."]
    assert ours == theirs


def gnu_sparse_tar(tmp_path, fmt: str, version: str | None) -> bytes:
    src = tmp_path / "src"
    src.mkdir()
    fd = os.open(src / "disk.img", os.O_WRONLY | os.O_CREAT, 0o600)
    for i in range(7):
        os.pwrite(fd, bytes([65 + i]) * 4000, i * 70_000 + 5)
    os.ftruncate(fd, 600_000)
    os.close(fd)
    os.utime(src / "disk.img", (1_700_000_000, 1_700_000_000))
    args = ["tar", "--sparse", f"--format={fmt}", "-cf", str(tmp_path / "sparse.tar"),
            "--owner=0", "--group=0", "--numeric-owner", "-C", str(src), "disk.img"]
    if version:
        args.insert(2, f"--sparse-version={version}")
    subprocess.run(args, check=True)
    return (tmp_path / "sparse.tar").read_bytes()
