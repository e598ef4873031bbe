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


# ---------------------------------------------------------------- a "cgroup" mount on v1

MOUNTINFO = """\
28 21 0:25 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
29 28 0:26 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
30 28 0:27 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
33 28 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:14 - cgroup cgroup rw,cpu,cpuacct
34 28 0:31 / /sys/fs/cgroup/memory rw,nosuid shared:15 - cgroup cgroup rw,memory
35 28 0:32 /job\\040a /sys/fs/cgroup/pids rw,nosuid shared:16 - cgroup cgroup rw,pids
36 28 0:33 /elsewhere /sys/fs/cgroup/freezer rw,nosuid shared:17 - cgroup cgroup rw,freezer
40 21 0:34 / /mnt/cgroup/memory rw shared:18 - cgroup cgroup rw,memory
"""
OWN = """\
12:freezer:/minictr-c1
11:pids:/job a/minictr-c1
5:memory:/user.slice/minictr-c1
3:cpu,cpuacct:/minictr-c1
1:name=systemd:/minictr-c1
0::/minictr-c1
"""


def test_cgroup_views_name_each_hierarchy_and_the_containers_own_directory():
    """From mountinfo: each cgroup filesystem at /sys/fs/cgroup/NAME (not elsewhere), its
    hierarchy as /proc/self/cgroup names it (a mount option such as xattr is not one), and the
    bind source below the mount's own root; None where the cgroup is outside that root."""
    assert mounts.cgroup_views(MOUNTINFO, OWN) == [
        ("unified", "cgroup2", "", "/sys/fs/cgroup/unified/minictr-c1"),
        ("systemd", "cgroup", "name=systemd", "/sys/fs/cgroup/systemd/minictr-c1"),
        ("cpu,cpuacct", "cgroup", "cpu,cpuacct", "/sys/fs/cgroup/cpu,cpuacct/minictr-c1"),
        ("memory", "cgroup", "memory", "/sys/fs/cgroup/memory/user.slice/minictr-c1"),
        ("pids", "cgroup", "pids", "/sys/fs/cgroup/pids/minictr-c1"),
        ("freezer", "cgroup", "freezer", None)]


class CgroupHost(sc.RecordingSyscalls):
    """The recording face on a hybrid host with the mountinfo and cgroups above."""

    def exists(self, path):
        return path != "/sys/fs/cgroup/cgroup.controllers" and super().__getattr__("exists")(path)

    def read_text(self, path):
        return {"/proc/self/mountinfo": MOUNTINFO, "/proc/self/cgroup": OWN}[path]


@pytest.mark.parametrize("cgroupns", [True, False])
def test_a_cgroup_mount_as_root_on_v1_is_a_tmpfs_of_own_views(cgroupns, monkeypatch):
    """(At /cg: the recording face answers for /sys paths from this host's /sys.)"""
    real_exists, real_isdir = mounts.os.path.exists, mounts.os.path.isdir
    monkeypatch.setattr(mounts.os.path, "exists",
                        lambda p: p.startswith("/sys/fs/cgroup/") or real_exists(p))
    monkeypatch.setattr(mounts.os.path, "isdir",
                        lambda p: p.startswith("/sys/fs/cgroup/") or real_isdir(p))
    kernel = CgroupHost()
    lines = []
    mounts.mount_at(kernel, ROOT_FD, {"destination": "/cg", "type": "cgroup",
                                      "source": "cgroup", "options": ["nosuid", "ro"]},
                    lines.append, cgroupns=cgroupns)
    made = [c for c in kernel.calls if c[0] == "mount"]
    assert made[0][1:4] == ("tmpfs", made[0][2], "tmpfs")
    if cgroupns:        # fresh mounts, each hierarchy by its name, read-only like the entry
        fresh = [(c[3], c[5]) for c in made[1:] if c[1] == "cgroup"]
        assert fresh == [("cgroup2", None), ("cgroup", "name=systemd"),
                         ("cgroup", "cpu,cpuacct"), ("cgroup", "memory"), ("cgroup", "pids"),
                         ("cgroup", "freezer")]
        assert all(c[4] & sc.MS_RDONLY for c in made[1:] if c[1] == "cgroup")
        assert "open_tree" not in kernel.names()
    else:               # binds of the own directories; none for freezer (outside the mount)
        trees = [c[2] for c in kernel.calls if c[0] == "open_tree"]
        assert trees == ["/sys/fs/cgroup/unified/minictr-c1", "/sys/fs/cgroup/systemd/minictr-c1",
                         "/sys/fs/cgroup/cpu,cpuacct/minictr-c1",
                         "/sys/fs/cgroup/memory/user.slice/minictr-c1",
                         "/sys/fs/cgroup/pids/minictr-c1"]
        assert not [c for c in kernel.calls if c[0] == "mount" and c[1] == "/sys/fs/cgroup"]
        assert any("no /cg/freezer" in line for line in lines)
    links = [c[1:] for c in kernel.calls if c[0] == "symlinkat"]
    assert [(target, name) for target, _, name in links] == [("cpu,cpuacct", "cpu"),
                                                             ("cpu,cpuacct", "cpuacct")]
    # the tmpfs itself ends read-only
    assert made[-1][4] & (sc.MS_REMOUNT | sc.MS_RDONLY) == sc.MS_REMOUNT | sc.MS_RDONLY


def test_a_cgroup_mount_rootless_on_v1_binds_the_hosts_trees():
    kernel = CgroupHost()
    mounts.mount_at(kernel, ROOT_FD, {"destination": "/sys/fs/cgroup", "type": "cgroup",
                                      "source": "cgroup", "options": ["ro"]}, None, rootless=True)
    assert [c[2] for c in kernel.calls if c[0] == "open_tree"] == ["/sys/fs/cgroup"]
