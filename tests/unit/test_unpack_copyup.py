"""A layer unpacked over its lower layers keeps what those show (issue 12, items 2 and 5).

Each layer is its own overlay lowerdir, so where a layer reaches into what a lower one holds
the unpacker copies up, as overlayfs would: the container must see what ``umoci unpack`` (one
tree, layer over layer) gives. tests/root/test_umoci_compare.py checks the same images against
umoci itself, through a real overlay mount.
"""
from __future__ import annotations

import io
import os
import stat

import pytest

from layertar import D, F, H, M, S, make_tar
from minictr.image.merged import MergedTree
from minictr.image.unpack import unpack_layer


CAP_NET_RAW = "\x00\x00\x00\x02" + "\x00\x20\x00\x00" + "\x00" * 12   # vfs_cap_data v2


def layers(tmp_path, *tars, rootless=False, warn=None):
    """Unpack ``tars`` (member lists, bottom first) as the store does; return the dirs."""
    tmp_path.mkdir(exist_ok=True)
    dirs = []
    for i, members in enumerate(tars):
        d = tmp_path / f"layer{i}"
        d.mkdir()
        below = [str(x) for x in reversed(dirs)]
        unpack_layer(io.BytesIO(make_tar(members)), str(d), rootless=rootless,
                     lower_lookup=lambda below=below: below, warn=warn)
        dirs.append(d)
    return dirs


def meta(path):
    st = os.lstat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns


def merged_entries(dirs) -> set[str]:
    """What the merged tree shows under each directory, walked as overlayfs would."""
    seen = set()
    with MergedTree([str(d) for d in reversed(dirs)]) as tree:
        todo = [""]
        while todo:
            path = todo.pop()
            names = set()
            for fd in tree.dir_stack(path):
                names.update(os.listdir(fd))
            for name in names:
                hit = tree.entry(path, name)
                if hit is not None:
                    child = f"{path}/{name}".lstrip("/")
                    seen.add(child)
                    if hit[0] == "dir":
                        todo.append(child)
    return seen


# ---------------------------------------------------------------- item 1: implicit parents
def test_implicit_parent_keeps_the_lower_directory_metadata(tmp_path):
    bottom, top = layers(tmp_path, [
        D("home", mode=0o751, uid=2, gid=3, mtime=1000),
        D("home/user", mode=0o700, uid=1000, gid=1001, mtime=2000,
          xattrs={"user.note": "kept", "trusted.tag": "t"})],
        [F("home/user/.bashrc", b"alias ll='ls -l'\n", uid=1000)])
    assert meta(top / "home/user") == meta(bottom / "home/user")
    assert meta(top / "home") == meta(bottom / "home")
    assert meta(top / "home/user")[:3] == (0o700, 1000, 1001)
    assert os.getxattr(top / "home/user", "user.note") == b"kept"
    assert os.getxattr(top / "home/user", "trusted.tag") == b"t"
    assert "trusted.overlay.opaque" not in os.listxattr(top / "home/user")


def test_implicit_parent_rootless_keeps_mode_and_user_xattrs(tmp_path):
    bottom, top = layers(tmp_path, [D("d", mode=0o750, xattrs={"user.a": "1"}),
                                    D("d/ro", mode=0o555)],
                         [F("d/ro/new", b"x")], rootless=True)
    assert meta(top / "d") == meta(bottom / "d") and meta(top / "d/ro")[0] == 0o555
    assert os.getxattr(top / "d", "user.a") == b"1"


def test_implicit_parent_under_an_opaque_or_whited_out_lower_dir_is_plain(tmp_path):
    dirs = layers(tmp_path, [D("a", mode=0o700, uid=7), D("b", mode=0o700, uid=7)],
                  [F("a/.wh..wh..opq"), F(".wh.b"), D("a/x", mode=0o711)],
                  [F("b/new")])
    top = dirs[-1]
    assert meta(top / "b")[:3] == (0o755, 0, 0)      # the lower b is deleted: a new directory
    assert "b/new" in merged_entries(dirs)


# ---------------------------------------------------------------- item 2: hardlinks below
def test_hardlink_to_a_lower_file_keeps_its_metadata_and_identity(tmp_path):
    bottom, top = layers(tmp_path, [
        D("bin"), F("bin/su", b"#!su", mode=0o4755, uid=0, gid=0, mtime=77,
                    xattrs={"user.k": "v", "security.capability": CAP_NET_RAW})],
        [H("bin/su2", "bin/su", mode=0o644, uid=9, mtime=5)])
    su, su2 = os.lstat(top / "bin/su"), os.lstat(top / "bin/su2")
    assert su.st_ino == su2.st_ino and su2.st_nlink == 2      # both names: one inode
    assert meta(top / "bin/su2") == meta(bottom / "bin/su")
    assert stat.S_IMODE(su2.st_mode) == 0o4755
    assert os.getxattr(top / "bin/su2", "user.k") == b"v"
    assert os.getxattr(top / "bin/su2", "security.capability") == CAP_NET_RAW.encode()
    assert (top / "bin/su2").read_bytes() == b"#!su"


def test_hardlink_through_a_lower_symlinked_directory(tmp_path):
    _, top = layers(tmp_path, [D("usr"), D("usr/bin"), F("usr/bin/x", b"xx", mode=0o711),
                               S("bin", "usr/bin")],
                    [H("y", "bin/x")])
    assert os.lstat(top / "y").st_ino == os.lstat(top / "usr/bin/x").st_ino
    assert not os.path.lexists(top / "bin")


# ---------------------------------------------------------------- item 4: lower symlinks
@pytest.mark.parametrize("link", ["usr/lib", "/usr/lib", "../../usr/./lib", "lib64"])
def test_path_under_a_lower_symlinked_directory_keeps_the_symlink(tmp_path, link):
    dirs = layers(tmp_path, [D("usr"), D("usr/lib", mode=0o751, uid=4), F("usr/lib/libc.so"),
                             S("lib64", "usr/lib"), S("lib", link)],
                  [F("lib/libnew.so", b"new")])
    top = dirs[-1]
    assert (top / "usr/lib/libnew.so").read_bytes() == b"new"
    assert not os.path.lexists(top / "lib")                 # the lower symlink shows through
    assert meta(top / "usr/lib") == meta(dirs[0] / "usr/lib")
    assert {"lib", "usr/lib/libc.so", "usr/lib/libnew.so"} <= merged_entries(dirs)


def test_symlink_of_this_layer_to_a_lower_directory(tmp_path):
    dirs = layers(tmp_path, [D("usr"), D("usr/lib", mode=0o751)],
                  [S("lib", "usr/lib"), F("lib/x", b"x"), D("lib/sub", mode=0o700),
                   F("lib/sub/y")])
    top = dirs[-1]
    assert os.readlink(top / "lib") == "usr/lib" and (top / "usr/lib/x").read_bytes() == b"x"
    assert meta(top / "usr/lib")[0] == 0o751 and meta(top / "usr/lib/sub")[0] == 0o700


def test_a_lower_file_in_the_way_is_not_a_directory(tmp_path):
    from minictr.errors import ImageError

    with pytest.raises(ImageError, match="not a directory"):
        layers(tmp_path, [F("f", b"1")], [F("f/g", b"2")])        # umoci: ENOTDIR too


# ---------------------------------------------------------------- item 5
def test_whiteouts_with_nothing_below_leave_no_ghost(tmp_path):
    # overlayfs lists a directory only one layer holds as it is: a whiteout there would be a
    # name that `ls` shows and stat(2) cannot find
    dirs = layers(tmp_path, [D("etc"), F("etc/passwd", b"root")],
                  [F("a/b/.wh.c"), F("x/.wh..wh..opq"), F("etc/.wh.none"), F(".wh.gone"),
                   D("new"), F("new/.wh.nothing"), F("new/.wh..wh..opq")])
    top = dirs[-1]
    assert sorted(os.listdir(top)) == ["new"] and os.listdir(top / "new") == []
    assert merged_entries(dirs) == {"etc", "etc/passwd", "new"}


def test_whiteout_and_opaque_marker_in_a_lower_directory(tmp_path):
    dirs = layers(tmp_path, [D("etc", mode=0o750, uid=3), F("etc/passwd", b"root"),
                             D("opt", mode=0o700), F("opt/old")],
                  [F("etc/.wh.passwd"), F("opt/.wh..wh..opq"), F("opt/new")])
    top = dirs[-1]
    assert meta(top / "etc") == meta(dirs[0] / "etc")
    assert meta(top / "opt") == meta(dirs[0] / "opt")
    assert os.getxattr(top / "opt", "trusted.overlay.opaque") == b"y"
    assert merged_entries(dirs) == {"etc", "opt", "opt/new"}


def test_whiteout_then_directory_of_the_same_name_hides_the_lower_one(tmp_path):
    # layer.md: a whiteout applies to the lower layers only, whatever its place in the tar
    for i, order in enumerate(([F(".wh.d"), D("d"), F("d/new")],
                               [D("d"), F("d/new"), F(".wh.d")], [F(".wh.d"), F("d/new")])):
        dirs = layers(tmp_path / str(i), [D("d"), F("d/old")], order)
        assert merged_entries(dirs) == {"d", "d/new"}, order


def test_root_metadata_from_a_lower_dot_entry_is_kept(tmp_path):
    dirs = layers(tmp_path, [D(".", mode=0o700, uid=5, gid=6, mtime=42,
                               xattrs={"user.root": "1"}), F("f")],
                  [F("g")], [D("h")])
    for d in dirs[1:]:
        assert meta(d) == meta(dirs[0]) and os.getxattr(d, "user.root") == b"1"
    own = layers(tmp_path / "own", [D(".", mode=0o700)], [D(".", mode=0o751), F("g")])
    assert meta(own[1])[0] == 0o751                 # a layer's own ./ entry wins


def test_symlink_xattrs_are_kept_where_linux_allows_them(tmp_path):
    warnings = []
    (top,) = layers(tmp_path, [S("l", "target", xattrs={
        "trusted.x": "1", "security.y": "2", "user.z": "3"})], warn=warnings.append)
    assert os.getxattr(top / "l", "trusted.x", follow_symlinks=False) == b"1"
    assert os.getxattr(top / "l", "security.y", follow_symlinks=False) == b"2"
    assert os.readlink(top / "l") == "target"
    # xattr(7): user.* only on regular files and directories
    assert [w for w in warnings if "user.z" in w and "not set" in w]


def test_copied_up_directories_are_not_marked_opaque(tmp_path):
    dirs = layers(tmp_path, [D("a"), D("a/b"), F("a/b/old")], [F("a/b/new")])
    assert merged_entries(dirs) == {"a", "a/b", "a/b/old", "a/b/new"}
    assert not [k for k in os.listxattr(dirs[1] / "a/b") if "overlay" in k]


def test_special_files_keep_working_below_copied_up_dirs(tmp_path):
    _, top = layers(tmp_path, [D("dev", mode=0o711)],
                    [M("dev/null", "char", devmajor=1, devminor=3, mode=0o666)])
    assert meta(top / "dev")[0] == 0o711 and stat.S_ISCHR(os.lstat(top / "dev/null").st_mode)


def test_hardlink_to_a_lower_hardlink_group_keeps_the_whole_group(tmp_path):
    # umoci's single tree: sh, sh2 and sh3 are one inode; overlayfs alone would split sh off
    _, _, top = layers(tmp_path, [D("bin"), F("bin/sh", b"sh", mode=0o755), H("bin/sh2", "bin/sh"),
                                  D("other"), H("other/sh", "bin/sh")],
                       [F("other/.wh.sh")],
                       [H("bin/sh3", "bin/sh2")])
    inodes = {n: os.lstat(top / "bin" / n).st_ino for n in ("sh", "sh2", "sh3")}
    assert len(set(inodes.values())) == 1 and os.lstat(top / "bin/sh").st_nlink == 3
    assert not os.path.lexists(top / "other/sh")        # whited out above: not brought back
