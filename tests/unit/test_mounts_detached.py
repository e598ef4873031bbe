"""Bind mounts with their flags set while detached (runtime/mounts.py bind_detached), and the
bind + remount fallback, against the recording syscall face."""
import errno

import pytest

from minictr.runtime import mounts
from minictr.runtime import syscalls as sc

ROOT_FD = 3


def bind(kernel, source, options, dest="/usr/lib64/libcuda.so.1"):
    lines = []
    mounts.mount_at(kernel, ROOT_FD, {"destination": dest, "type": "bind", "source": source,
                                      "options": options}, lines.append)
    return lines


@pytest.fixture
def lib(tmp_path):
    path = tmp_path / "libcuda.so.580.65.06"
    path.write_bytes(b"\x7fELF")
    return str(path)


def test_read_only_bind_is_made_detached_in_three_calls(lib):
    kernel = sc.RecordingSyscalls()
    lines = bind(kernel, lib, ["rbind", "ro", "nosuid", "nodev"])
    names = kernel.names()
    assert "mount" not in names and "statvfs_flags" not in names
    (tree,) = [c for c in kernel.calls if c[0] == "open_tree"]
    assert tree[1:] == (sc.AT_FDCWD, lib,
                        sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | sc.AT_RECURSIVE)
    (attr,) = [c for c in kernel.calls if c[0] == "mount_setattr"]
    assert attr[3:5] == (sc.AT_EMPTY_PATH,
                         sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV)
    assert names.index("open_tree") < names.index("mount_setattr") < names.index("move_mount")
    # the destination is still resolved inside the root (openat2 RESOLVE_IN_ROOT) and the
    # detached mount goes onto that very fd
    (move,) = [c for c in kernel.calls if c[0] == "move_mount"]
    opened = [c for c in kernel.calls if c[0] == "openat2"]
    assert opened and all(c[1] == ROOT_FD and c[4] == mounts.RESOLVE for c in opened)
    assert move[2] == "" and move[3] == {"to_dirfd": kernel._next_fd - 1}
    assert any("set while detached" in line and "MOUNT_ATTR_RDONLY" in line for line in lines)


@pytest.mark.parametrize("missing", ["open_tree", "mount_setattr"])
def test_a_kernel_without_the_calls_binds_and_remounts(lib, missing):
    kernel = sc.RecordingSyscalls(fail={missing: errno.ENOSYS})
    bind(kernel, lib, ["rbind", "ro", "nosuid", "nodev"])
    mounts_made = [c for c in kernel.calls if c[0] == "mount"]
    assert mounts_made[0][4] == sc.MS_BIND | sc.MS_REC
    assert mounts_made[1][4] & (sc.MS_REMOUNT | sc.MS_RDONLY) == sc.MS_REMOUNT | sc.MS_RDONLY
    assert "move_mount" not in kernel.names()
    if missing == "mount_setattr":          # the detached copy is not leaked
        tree_fd = [c for c in kernel.calls if c[0] == "open_tree"]
        assert tree_fd and kernel.names().count("close") >= 2


@pytest.mark.parametrize("missing", ["open_tree", "mount_setattr"])
def test_a_kernel_without_the_calls_is_asked_once_per_start(lib, missing):
    """Linux 5.2-5.11 have open_tree but not mount_setattr: the second bind does not clone
    its source again only to find that out."""
    kernel = sc.RecordingSyscalls(fail={missing: errno.ENOSYS})
    bind(kernel, lib, ["rbind", "ro", "nosuid", "nodev"])
    bind(kernel, lib, ["rbind", "ro", "nosuid", "nodev"])
    assert kernel.names().count("open_tree") == 1
    assert kernel.names().count(missing) == 1


def test_other_errors_are_not_hidden(lib):
    kernel = sc.RecordingSyscalls(fail={"mount_setattr": errno.EPERM})
    with pytest.raises(PermissionError):
        bind(kernel, lib, ["bind", "ro"])


def test_flags_mount_setattr_cannot_set_take_the_remount(lib):
    kernel = sc.RecordingSyscalls()
    bind(kernel, lib, ["bind", "ro", "sync"])
    assert "open_tree" not in kernel.names()
    assert [c[4] & sc.MS_REMOUNT for c in kernel.calls if c[0] == "mount"][1]


def test_a_plain_bind_is_one_mount_call(lib):
    kernel = sc.RecordingSyscalls()
    bind(kernel, lib, ["rbind"], dest="/etc/hosts")
    assert [c[0] for c in kernel.calls if c[0] in ("mount", "open_tree")] == ["mount"]


class Counting(sc.Syscalls):
    """The real kernel, counting the calls of the face (no root needed for these)."""

    def __init__(self):
        self.names = []

    def __getattribute__(self, name):
        attr = super().__getattribute__(name)
        if callable(attr) and not name.startswith("_") and name != "names":
            self.names.append(name)
        return attr


@pytest.fixture
def root(tmp_path):
    import os
    (tmp_path / "usr/lib64").mkdir(parents=True)
    (tmp_path / "real").mkdir()
    os.symlink("/real/target", tmp_path / "usr/lib64/dangling")
    os.symlink("../../../../../../outside", tmp_path / "usr/escape")
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    yield tmp_path, fd
    os.close(fd)


def _made(kernel, root_fd, path, create):
    import os
    fd = mounts.resolve_in_root(kernel, root_fd, path, create=create)
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def test_a_mount_point_in_an_existing_directory_takes_six_calls(root):
    tmp, fd = root
    kernel = Counting()
    got = _made(kernel, fd, "/usr/lib64/libcuda.so.1", "file")
    assert got == str(tmp / "usr/lib64/libcuda.so.1")
    assert kernel.names == ["openat2", "openat2", "readlinkat", "create_file_at", "close",
                            "openat2"]


@pytest.mark.parametrize("path, create, where", [
    ("/usr/lib64/dangling", "file", "real/target"),     # a dangling link: made where it points
    ("/usr/escape/x", "dir", "outside/x"),              # ".." stops at the root
    ("/etc/firmware/nvidia/580", "dir", "etc/firmware/nvidia/580"),   # parents made too
])
def test_the_walk_still_handles_links_and_missing_parents(root, path, create, where):
    tmp, fd = root
    assert _made(Counting(), fd, path, create) == str(tmp / where)


def test_read_only_is_what_the_options_say_the_rest_is_kept(lib):
    kernel = sc.RecordingSyscalls()
    bind(kernel, lib, ["bind", "nosuid"])
    (attr,) = [c for c in kernel.calls if c[0] == "mount_setattr"]
    assert attr[4:6] == (sc.MOUNT_ATTR_NOSUID, sc.MOUNT_ATTR_RDONLY)   # set, clear
