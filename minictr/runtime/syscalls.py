"""The syscall face: the only importer of the compiled ``minictr._native`` module.

Each method carries the man page's name and argument order and raises
``OSError(errno, "call(args): strerror")`` on failure. The face is passed around as a parameter
(``kernel``), never used as a module global, so tests can pass a recording fake
(``RecordingSyscalls`` below) and ``run --dry-run`` can print what would happen.
"""
from __future__ import annotations

import errno
import os
import resource as _resource
from _collections_abc import Callable

# Imported here, not lazily: the container side calls these after pivot_root(2), when the host's
# site-packages are no longer reachable.
import prctl

from minictr import _native
from minictr.runtime.rtnetlink import Rtnetlink, named_error

lib = _native.lib
ffi = _native.ffi

# Kernel constants, taken from the headers at build time (native/build.py).
CLONE_NEWNS = lib.CLONE_NEWNS
CLONE_NEWUTS = lib.CLONE_NEWUTS
CLONE_NEWIPC = lib.CLONE_NEWIPC
CLONE_NEWUSER = lib.CLONE_NEWUSER
CLONE_NEWPID = lib.CLONE_NEWPID
CLONE_NEWNET = lib.CLONE_NEWNET
CLONE_NEWCGROUP = lib.CLONE_NEWCGROUP
MS_RDONLY = lib.MS_RDONLY
MS_NOSUID = lib.MS_NOSUID
MS_NODEV = lib.MS_NODEV
MS_NOEXEC = lib.MS_NOEXEC
MS_SYNCHRONOUS = lib.MS_SYNCHRONOUS
MS_REMOUNT = lib.MS_REMOUNT
MS_MANDLOCK = lib.MS_MANDLOCK
MS_DIRSYNC = lib.MS_DIRSYNC
MS_NOATIME = lib.MS_NOATIME
MS_NODIRATIME = lib.MS_NODIRATIME
MS_BIND = lib.MS_BIND
MS_MOVE = lib.MS_MOVE
MS_REC = lib.MS_REC
MS_SILENT = lib.MS_SILENT
MS_UNBINDABLE = lib.MS_UNBINDABLE
MS_PRIVATE = lib.MS_PRIVATE
MS_SLAVE = lib.MS_SLAVE
MS_SHARED = lib.MS_SHARED
MS_RELATIME = lib.MS_RELATIME
MS_STRICTATIME = lib.MS_STRICTATIME
MNT_DETACH = lib.MNT_DETACH
MNT_FORCE = lib.MNT_FORCE
UMOUNT_NOFOLLOW = lib.UMOUNT_NOFOLLOW
RESOLVE_IN_ROOT = lib.RESOLVE_IN_ROOT
RESOLVE_BENEATH = lib.RESOLVE_BENEATH
RESOLVE_NO_SYMLINKS = lib.RESOLVE_NO_SYMLINKS
RESOLVE_NO_MAGICLINKS = lib.RESOLVE_NO_MAGICLINKS
RESOLVE_NO_XDEV = lib.RESOLVE_NO_XDEV
S_IFCHR = lib.S_IFCHR
S_IFBLK = lib.S_IFBLK
BPF_PROG_LOAD = lib.BPF_PROG_LOAD
BPF_PROG_ATTACH = lib.BPF_PROG_ATTACH
BPF_PROG_DETACH = lib.BPF_PROG_DETACH
BPF_PROG_QUERY = lib.BPF_PROG_QUERY
BPF_PROG_TYPE_CGROUP_DEVICE = lib.BPF_PROG_TYPE_CGROUP_DEVICE
BPF_CGROUP_DEVICE = lib.BPF_CGROUP_DEVICE
BPF_F_ALLOW_MULTI = lib.BPF_F_ALLOW_MULTI
CLOSE_RANGE_CLOEXEC = lib.CLOSE_RANGE_CLOEXEC
SECCOMP_FILTER_FLAG_TSYNC = lib.SECCOMP_FILTER_FLAG_TSYNC
SECCOMP_FILTER_FLAG_LOG = lib.SECCOMP_FILTER_FLAG_LOG
SECCOMP_FILTER_FLAG_SPEC_ALLOW = lib.SECCOMP_FILTER_FLAG_SPEC_ALLOW
SECCOMP_FILTER_FLAG_NEW_LISTENER = lib.SECCOMP_FILTER_FLAG_NEW_LISTENER
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = lib.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
MOUNT_ATTR_NOSUID = lib.MOUNT_ATTR_NOSUID
MOUNT_ATTR_NODEV = lib.MOUNT_ATTR_NODEV
MOUNT_ATTR_RDONLY = lib.MOUNT_ATTR_RDONLY
MOUNT_ATTR_NOEXEC = lib.MOUNT_ATTR_NOEXEC
MOUNT_ATTR_NODIRATIME = lib.MOUNT_ATTR_NODIRATIME
OPEN_TREE_CLONE = lib.OPEN_TREE_CLONE
OPEN_TREE_CLOEXEC = lib.OPEN_TREE_CLOEXEC
AT_RECURSIVE = lib.AT_RECURSIVE
AT_EMPTY_PATH = lib.AT_EMPTY_PATH
MOUNT_ATTR_NAMES = {MOUNT_ATTR_RDONLY: "MOUNT_ATTR_RDONLY", MOUNT_ATTR_NOSUID: "MOUNT_ATTR_NOSUID",
                    MOUNT_ATTR_NODEV: "MOUNT_ATTR_NODEV", MOUNT_ATTR_NOEXEC: "MOUNT_ATTR_NOEXEC",
                    MOUNT_ATTR_NODIRATIME: "MOUNT_ATTR_NODIRATIME"}
AT_FDCWD = -100
FUSE_PACKAGES = {"squashfuse_ll": "squashfuse", "fuse-overlayfs": "fuse-overlayfs"}
# loop(4): <linux/loop.h>
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16
SIOCGIFFLAGS = lib.SIOCGIFFLAGS
SIOCSIFFLAGS = lib.SIOCSIFFLAGS
IFF_UP = lib.IFF_UP
IFNAMSIZ = lib.IFNAMSIZ
LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET = lib.LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET
LANDLOCK_SCOPE_SIGNAL = lib.LANDLOCK_SCOPE_SIGNAL
SOCK_FILTER_SIZE = 8        # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k (linux/filter.h)

NAMESPACE_FLAGS = {
    "user": CLONE_NEWUSER, "mount": CLONE_NEWNS, "pid": CLONE_NEWPID, "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC, "network": CLONE_NEWNET, "cgroup": CLONE_NEWCGROUP,
}

MOUNT_FLAG_NAMES = {
    MS_RDONLY: "MS_RDONLY", MS_NOSUID: "MS_NOSUID", MS_NODEV: "MS_NODEV", MS_NOEXEC: "MS_NOEXEC",
    MS_REMOUNT: "MS_REMOUNT", MS_BIND: "MS_BIND", MS_MOVE: "MS_MOVE", MS_REC: "MS_REC",
    MS_PRIVATE: "MS_PRIVATE", MS_SLAVE: "MS_SLAVE", MS_SHARED: "MS_SHARED",
    MS_UNBINDABLE: "MS_UNBINDABLE", MS_RELATIME: "MS_RELATIME", MS_STRICTATIME: "MS_STRICTATIME",
    MS_NOATIME: "MS_NOATIME", MS_NODIRATIME: "MS_NODIRATIME", MS_SYNCHRONOUS: "MS_SYNCHRONOUS",
    MS_DIRSYNC: "MS_DIRSYNC",
}


def flag_names(flags: int, names: dict[int, str]) -> str:
    """``MS_BIND|MS_REC`` for 0x5000: used by --explain and error messages."""
    parts = [name for bit, name in names.items() if flags & bit]
    rest = flags & ~sum(names)
    if rest:
        parts.append(hex(rest))
    return "|".join(parts) or "0"


def ns_flag_names(flags: int) -> str:
    return flag_names(flags, {v: "CLONE_NEW" + {"mount": "NS"}.get(k, k.upper())
                              for k, v in NAMESPACE_FLAGS.items()})


def _check(rc: int, call: str) -> int:
    """Raise the OSError subclass for -rc (FileNotFoundError...) naming the call; the call's
    name travels as data in ``err.call`` (for hints: errors.hint_for), never parsed back."""
    if rc < 0:
        err = OSError(-rc, f"{call}: {os.strerror(-rc)}")
        err.call = call.split("(", 1)[0]
        raise err
    return rc


def call_of(err: BaseException) -> str | None:
    """The system call an OSError came from, when the face raised it."""
    return getattr(err, "call", None)


def _b(s: str | bytes | None):
    if s is None:
        return ffi.NULL
    return s if isinstance(s, bytes) else os.fsencode(s)


class Syscalls(Rtnetlink):
    """The real kernel. Methods are named after their man pages; the rtnetlink(7) ones (links,
    addresses, routes) are in rtnetlink.py."""

    CLONE_NEWNET = CLONE_NEWNET

    def unshare(self, flags: int) -> None:
        _check(lib.mc_unshare(flags), f"unshare({ns_flag_names(flags)})")

    def setns(self, fd: int, nstype: int = 0) -> None:
        _check(lib.mc_setns(fd, nstype), f"setns({fd}, {ns_flag_names(nstype)})")

    def clone(self, flags: int) -> int:
        """Fork with namespace flags; returns 0 in the child, the child's pid in the parent."""
        return _check(lib.mc_clone(flags), f"clone({ns_flag_names(flags)})")

    def clone3(self, flags: int, cgroup_fd: int = -1) -> int:
        """clone3(2) with namespace flags, born into the cgroup v2 directory ``cgroup_fd``
        (CLONE_INTO_CGROUP) when it is >= 0; 0 in the child, the child's pid in the parent."""
        return _check(lib.mc_clone3(flags, cgroup_fd),
                      f"clone3({ns_flag_names(flags)}, cgroup_fd={cgroup_fd})")

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int = 0,
              data: str | None = None) -> None:
        _check(lib.mc_mount(_b(source), _b(target), _b(fstype), flags, _b(data)),
               f"mount({source!r}, {target!r}, {fstype!r}, "
               f"{flag_names(flags, MOUNT_FLAG_NAMES)}, {data!r})")

    def umount2(self, target: str, flags: int = 0) -> None:
        _check(lib.mc_umount2(_b(target), flags), f"umount2({target!r}, {flags:#x})")

    def pivot_root(self, new_root: str, put_old: str) -> None:
        _check(lib.mc_pivot_root(_b(new_root), _b(put_old)),
               f"pivot_root({new_root!r}, {put_old!r})")

    def sethostname(self, name: str) -> None:
        raw = name.encode()
        _check(lib.mc_sethostname(raw, len(raw)), f"sethostname({name!r})")

    def mknodat(self, dirfd: int, path: str, mode: int, major: int, minor: int) -> None:
        _check(lib.mc_mknodat(dirfd, _b(path), mode, major, minor),
               f"mknodat({dirfd}, {path!r}, {mode:#o}, {major}:{minor})")

    def openat2(self, dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
        return _check(lib.mc_openat2(dirfd, _b(path), flags, mode, resolve),
                      f"openat2({dirfd}, {path!r}, flags={flags:#x}, resolve={resolve:#x})")

    def bpf(self, cmd: int, attr: object, size: int) -> int:
        return _check(lib.mc_bpf(cmd, attr, size), f"bpf(cmd={cmd})")

    def close_range(self, first: int, last: int, flags: int = 0) -> None:
        _check(lib.mc_close_range(first, last, flags), f"close_range({first}, {last}, {flags})")

    def reset_signals(self) -> None:
        """Every signal's disposition back to SIG_DFL, the glibc-reserved 32 and 33 included."""
        _check(lib.mc_reset_signals(), "rt_sigaction(SIG_DFL)")

    def pidfd_open(self, pid: int) -> int:
        return _check(lib.mc_pidfd_open(pid, 0), f"pidfd_open({pid})")

    def seccomp_set_filter(self, flags: int, bpf: bytes) -> int:
        """seccomp(SECCOMP_SET_MODE_FILTER, flags, &{len, filter}) with ``bpf`` the program's
        struct sock_filter array; returns 0 (or a listener fd with NEW_LISTENER)."""
        count, rest = divmod(len(bpf), SOCK_FILTER_SIZE)
        if rest or not 0 < count <= 0xFFFF:
            raise OSError(errno.EINVAL, f"seccomp(SET_MODE_FILTER): {len(bpf)} bytes is not a "
                          "whole number of BPF instructions")
        return _check(lib.mc_seccomp(flags, ffi.from_buffer(bpf), count),
                      f"seccomp(SECCOMP_SET_MODE_FILTER, {flags:#x}, <{count} instructions>)")

    def landlock_abi_version(self) -> int:
        """landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION): the highest
        Landlock ABI this kernel offers; 0 when Landlock is absent or disabled."""
        rc = lib.mc_landlock_create_ruleset(0)
        return max(rc, 0)

    def landlock_create_ruleset(self, scoped: int) -> int:
        """landlock_create_ruleset(2) of a ruleset that scopes IPC only (``scoped``, a mask of
        LANDLOCK_SCOPE_*; Landlock ABI 6); returns its fd."""
        return _check(lib.mc_landlock_create_ruleset(scoped),
                      f"landlock_create_ruleset(scoped={scoped:#x})")

    def landlock_restrict_self(self, ruleset_fd: int) -> None:
        """landlock_restrict_self(2): this thread and what it execs are confined from now on;
        needs no_new_privs or CAP_SYS_ADMIN in its user namespace."""
        _check(lib.mc_landlock_restrict_self(ruleset_fd),
               f"landlock_restrict_self({ruleset_fd})")

    # Calls Python already wraps; kept on the face so the runtime has one seam (and a dry run
    # or a test can record them instead).
    def chdir(self, path: str) -> None:
        os.chdir(path)

    def fchdir(self, fd: int) -> None:
        os.fchdir(fd)

    def open(self, path: str, flags: int, mode: int = 0o644, dir_fd: int | None = None) -> int:
        return os.open(path, flags, mode, dir_fd=dir_fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def mkdirat(self, dirfd: int, name: str, mode: int = 0o755) -> None:
        os.mkdir(name, mode, dir_fd=dirfd)

    def create_file_at(self, dirfd: int, name: str, mode: int = 0o644) -> None:
        """openat(O_CREAT|O_EXCL|O_NOFOLLOW) then close: an empty file to mount onto."""
        os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC
                         | os.O_NOFOLLOW, mode, dir_fd=dirfd))

    def unlinkat(self, dirfd: int, name: str) -> None:
        os.unlink(name, dir_fd=dirfd)

    def fchmodat(self, dirfd: int, name: str, mode: int) -> None:
        os.chmod(name, mode, dir_fd=dirfd)

    def fchownat(self, dirfd: int, name: str, uid: int, gid: int) -> None:
        os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)

    def symlinkat(self, target: str, dirfd: int, name: str) -> None:
        os.symlink(target, name, dir_fd=dirfd)

    # Process credentials and prctl(2) (through python-prctl, the project's library for them).
    def capbset_drop(self, cap: int) -> None:
        """PR_CAPBSET_DROP. python-prctl refuses numbers its own table lacks (ValueError), which
        would leave a capability newer than its build in the bounding set: those go raw."""
        try:
            prctl.capbset.drop(cap)
        except ValueError:
            _check(lib.mc_capbset_drop(cap), f"prctl(PR_CAPBSET_DROP, {cap})")

    def capset(self, effective: list[int], permitted: list[int], inheritable: list[int]) -> None:
        """capset(2): the three sets become exactly these, raised as well as lowered, in one
        call (raw: python-prctl's limit() can only remove, and its setters change one set at a
        time). EPERM if a set asks for more than the kernel allows (capset(2))."""
        def mask(caps: list[int]) -> int:
            return sum(1 << c for c in set(caps))

        e, p, i = mask(effective), mask(permitted), mask(inheritable)
        _check(lib.mc_capset(e, p, i),
               f"capset(effective={e:#x}, permitted={p:#x}, inheritable={i:#x})")

    def cap_ambient_clear_all(self) -> None:
        _check(lib.mc_cap_ambient_clear_all(), "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")

    def cap_ambient_raise(self, cap: int) -> None:
        _check(lib.mc_cap_ambient_raise(cap), f"prctl(PR_CAP_AMBIENT_RAISE, {cap})")

    def join_session_keyring(self, name: str | None) -> int:
        """A new session keyring (keyctl(2) KEYCTL_JOIN_SESSION_KEYRING): the container's
        processes no longer share the launcher's keys."""
        return _check(lib.mc_join_session_keyring(_b(name)),
                      f"keyctl(KEYCTL_JOIN_SESSION_KEYRING, {name!r})")

    def set_keepcaps(self, flag: bool) -> None:
        prctl.set_keepcaps(flag)

    def set_no_new_privs(self) -> None:
        prctl.set_no_new_privs(1)

    def set_pdeathsig(self, sig: int) -> None:
        prctl.set_pdeathsig(sig)

    def set_dumpable(self, on: bool) -> None:
        prctl.set_dumpable(on)

    def setgroups(self, gids: list[int]) -> None:
        os.setgroups(gids)

    def setresgid(self, gid: int) -> None:
        os.setresgid(gid, gid, gid)

    def setresuid(self, uid: int) -> None:
        os.setresuid(uid, uid, uid)

    def setrlimit(self, resource: int, soft: int, hard: int) -> None:
        """setrlimit(2); the spec's RLIM_INFINITY (2**64-1) is Python's -1. CPython reports
        EPERM (raising a hard limit without CAP_SYS_RESOURCE) as ValueError: an OSError
        naming the call here, like every other call of this face."""
        limits = tuple(_resource.RLIM_INFINITY if v >= 2**63 - 1 else v for v in (soft, hard))
        try:
            _resource.setrlimit(resource, limits)
        except ValueError as err:
            name = next((n for n in dir(_resource) if n.startswith("RLIMIT_")
                         and getattr(_resource, n) == resource), str(resource))
            shown = ["unlimited" if v == _resource.RLIM_INFINITY else str(v) for v in limits]
            _check(-errno.EPERM if "not allowed" in str(err) else -errno.EINVAL,
                   f"setrlimit({name}, {shown[0]}, {shown[1]})")

    def setsid(self) -> None:
        os.setsid()

    def dup2(self, fd: int, fd2: int) -> None:
        os.dup2(fd, fd2)

    def set_inheritable(self, fd: int) -> None:
        os.set_inheritable(fd, True)

    def fexecve(self, fd: int, argv: list[str], env: dict[str, str]) -> None:
        """execve(2) of an open file (fexecve(3)); does not return on success."""
        os.execve(fd, argv, env)

    def link_up(self, ifname: str) -> None:
        """Set a link of this network namespace up: SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP
        (netdevice(7)), as crun does for lo. The container's process brings its lo up this
        way, so it never loads a netlink library (pyroute2 costs ~120 ms to import)."""
        import fcntl
        import socket
        import struct

        ifreq = "%dsh%dx" % (IFNAMSIZ, 40 - IFNAMSIZ - 2)       # struct ifreq: 40 bytes
        name = ifname.encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                flags = struct.unpack(ifreq, fcntl.ioctl(sock, SIOCGIFFLAGS,
                                                         struct.pack(ifreq, name, 0)))[1]
                fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack(ifreq, name, flags | IFF_UP))
            except OSError as err:
                raise named_error(err.errno or errno.EIO,
                                  f"ioctl(SIOCSIFFLAGS, {ifname!r})") from None

    def readlinkat(self, dirfd: int, name: str) -> str | None:
        """The target of symlink ``name`` in ``dirfd``, or None if it is not a symlink."""
        try:
            return os.readlink(name, dir_fd=dirfd)
        except (OSError, ValueError) as err:
            if getattr(err, "errno", None) in (errno.EINVAL, errno.ENOENT):
                return None
            raise

    def same_file(self, fd1: int, fd2: int) -> bool:
        a, b = os.fstat(fd1), os.fstat(fd2)
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    def is_dir(self, path: str) -> bool:
        import stat

        return stat.S_ISDIR(os.stat(path).st_mode)

    def statvfs_flags(self, path: str) -> int:
        return os.statvfs(path).f_flag

    def chroot(self, path: str) -> None:
        os.chroot(path)

    def setdomainname(self, name: str) -> None:
        raw = name.encode()
        _check(lib.mc_setdomainname(raw, len(raw)), f"setdomainname({name!r})")

    def ioctl(self, fd: int, request: int, arg=0):
        import fcntl

        return fcntl.ioctl(fd, request, arg)

    def send_fds(self, sock, data: bytes, fds: list[int]) -> None:
        """sendmsg(2) with SCM_RIGHTS (unix(7)): pass open files to another process."""
        import socket

        socket.send_fds(sock, [data], fds)

    def fsmount_loop(self, path: str, offset: int, fstype: str, attr_flags: int) -> int:
        """Attach ``path`` (from byte ``offset``) to a free loop device, read-only, and make a
        detached mount of it (fsopen(2), fsconfig(2) source=, fsmount(2)); return its fd, to
        be attached with move_mount(2) in the container's mount namespace.

        loop(4): LOOP_CTL_GET_FREE, then LOOP_CONFIGURE (Linux 5.8). LO_FLAGS_AUTOCLEAR
        detaches the device when its last user goes: the mount holds it, so the device lives
        exactly as long as the mount. The device fd is held until the mount is made, or
        autoclear would detach it at close. LO_FLAGS_DIRECT_IO keeps one copy of the image in
        the page cache (the file's), not two. Another launcher may take the same free device
        between GET_FREE and CONFIGURE: EBUSY, and the next free one is tried. Done by the
        launcher: the container's process is born under the device filter, which allows no
        loop device."""
        import fcntl
        import struct

        flags_ro = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO
        backing = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                raise OSError(errno.ENOENT, "/dev/loop-control is missing: this kernel has no "
                                            "loop devices (modprobe loop); rootless runs use "
                                            "squashfuse instead") from None
            try:
                for _ in range(64):
                    number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                    device = f"/dev/loop{number}"
                    loop = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
                    # struct loop_config { u32 fd, block_size; struct loop_info64 info;
                    # u64 reserved[8]; }: loop_info64's lo_offset at byte 24, lo_flags at 52
                    info = bytearray(232)
                    struct.pack_into("<QQQQQIIII", info, 0, 0, 0, 0, offset, 0, 0, 0, 0, flags_ro)
                    config = struct.pack("<II", backing, 0) + bytes(info) + bytes(64)
                    try:
                        fcntl.ioctl(loop, LOOP_CONFIGURE, config)
                    except OSError as err:
                        os.close(loop)
                        if err.errno == errno.EBUSY:
                            continue
                        raise OSError(err.errno, f"ioctl({device}, LOOP_CONFIGURE, {path!r}): "
                                                 f"{os.strerror(err.errno)}") from None
                    try:
                        return self._fsmount(fstype, device, attr_flags | MOUNT_ATTR_RDONLY)
                    finally:
                        os.close(loop)
                raise OSError(errno.EBUSY, "loop devices: every free one was taken meanwhile")
            finally:
                os.close(control)
        finally:
            os.close(backing)

    def _fsmount(self, fstype: str, source: str, attr_flags: int) -> int:
        ctx = _check(lib.mc_fsopen(_b(fstype), lib.FSOPEN_CLOEXEC), f"fsopen({fstype!r})")
        try:
            _check(lib.mc_fsconfig(ctx, lib.FSCONFIG_SET_STRING, b"source", _b(source)),
                   f"fsconfig(source={source!r})")
            if attr_flags & MOUNT_ATTR_RDONLY:
                # the superblock read-only too, or the device is opened for writing (EACCES)
                _check(lib.mc_fsconfig(ctx, lib.FSCONFIG_SET_FLAG, b"ro", ffi.NULL),
                       "fsconfig(ro)")
            _check(lib.mc_fsconfig(ctx, lib.FSCONFIG_CMD_CREATE, ffi.NULL, ffi.NULL),
                   f"fsconfig(FSCONFIG_CMD_CREATE) of {fstype} on {source}")
            return _check(lib.mc_fsmount(ctx, lib.FSMOUNT_CLOEXEC, attr_flags),
                          f"fsmount({fstype} on {source})")
        finally:
            os.close(ctx)

    def move_mount(self, mount_fd: int, target: str = "", *, to_dirfd: int = AT_FDCWD) -> None:
        """Attach a detached mount (an fsmount(2) or open_tree(2) fd) at ``target`` in this
        mount namespace (move_mount(2), MOVE_MOUNT_F_EMPTY_PATH); ``target`` "" means the file
        ``to_dirfd`` itself is open on (MOVE_MOUNT_T_EMPTY_PATH)."""
        flags = lib.MOVE_MOUNT_F_EMPTY_PATH | (0 if target else lib.MOVE_MOUNT_T_EMPTY_PATH)
        _check(lib.mc_move_mount(mount_fd, b"", to_dirfd, _b(target), flags),
               f"move_mount({mount_fd}, {target or f'fd {to_dirfd}'!r})")

    def open_tree(self, dirfd: int, path: str, flags: int) -> int:
        """open_tree(2): with OPEN_TREE_CLONE, a detached copy of the mount at ``path`` (of its
        whole subtree with AT_RECURSIVE), held by the returned fd. ENOSYS before Linux 5.2."""
        return _check(lib.mc_open_tree(dirfd, _b(path), flags),
                      f"open_tree({path!r}, {flags:#x})")

    def mount_setattr(self, dirfd: int, path: str, flags: int, attr_set: int,
                      attr_clr: int = 0) -> None:
        """mount_setattr(2): set (and clear) MOUNT_ATTR_* flags of the mount at ``dirfd`` /
        ``path`` (AT_EMPTY_PATH: the fd's own). ENOSYS before Linux 5.12."""
        _check(lib.mc_mount_setattr(dirfd, _b(path), flags, attr_set, attr_clr),
               f"mount_setattr({path or f'fd {dirfd}'!r}, "
               f"{flag_names(attr_set, MOUNT_ATTR_NAMES)})")

    def spawn_fuse(self, argv: list[str], root: str, mountpoint: str,
                   timeout: float = 30.0) -> int:
        """Start a FUSE daemon in the foreground, chrooted in ``root``, as a child that the
        kernel kills when this process dies (PR_SET_PDEATHSIG; it survives execve), and wait
        (bounded) until its mount appears at ``root + mountpoint``. Its pid is returned.

        The daemon lives in the container's mount namespace and keeps it alive: left to
        itself it would never see its mount go away. Tying it to the container's first
        process (this one, after its execve) ends it with the container, PID namespace or
        not."""
        import _signal as signal    # not signal.py, which imports enum
        import subprocess
        import time

        def enter() -> None:
            prctl.set_pdeathsig(signal.SIGKILL)
            os.chroot(root)
            os.chdir("/")

        where = root.rstrip("/") + mountpoint
        before = os.stat(where).st_dev
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, preexec_fn=enter, close_fds=True)
        except FileNotFoundError:
            raise OSError(errno.ENOENT, f"{argv[0]} is not installed (apt-get install "
                                        f"{FUSE_PACKAGES.get(argv[0], argv[0])})") from None
        deadline = time.monotonic() + timeout
        while os.stat(where).st_dev == before:
            code = proc.poll()
            if code is not None:
                raise OSError(errno.EIO, f"{argv[0]} exited {code} before mounting: run it by "
                                         f"hand with -d to see why ({' '.join(argv)})")
            if time.monotonic() > deadline:
                proc.kill()
                raise OSError(errno.ETIMEDOUT, f"{argv[0]} did not mount within {timeout:.0f} s")
            time.sleep(0.001)
        proc.returncode = 0          # never waited for: Popen must not reap or warn about it
        return proc.pid

    def memfd_sealed(self, path: str, name: str) -> int:
        """A copy of ``path`` in a sealed memfd (memfd_create(2), F_SEAL_* in fcntl(2)): a file
        no one can change and that names nothing on a disk."""
        import fcntl

        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        with open(path, "rb") as src:
            os.sendfile(fd, src.fileno(), 0, os.fstat(src.fileno()).st_size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK
                    | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
        return fd

    # The launcher's own effects on the host: cgroup and /proc files, id maps, the state's
    # fifo, hooks and helpers. They go through the face so a dry run records them too.
    def write_file(self, path: str, data: str | bytes) -> None:
        """open(O_WRONLY) + write(2) of an existing file (cgroupfs, procfs: never O_CREAT, so
        a missing file fails as the kernel says, instead of appearing as a plain file)."""
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, data.encode() if isinstance(data, str) else data)
        finally:
            os.close(fd)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        os.mkdir(path, mode)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def mkfifo(self, path: str, mode: int) -> None:
        os.mkfifo(path, mode)
        os.chmod(path, mode)                     # mkfifo's mode is filtered by the umask

    def kill(self, pid: int, sig: int) -> None:
        os.kill(pid, sig)

    def signal_fifo(self, path: str) -> None:
        """Write one byte into a fifo whose reader waits, then remove it (lifecycle.start):
        O_NONBLOCK makes open(2) fail with ENXIO instead of blocking when no reader holds it."""
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def run_program(self, path: str, args: list[str], env: list[str], stdin: bytes,
                    timeout: int | None) -> tuple[int | None, bytes]:
        """fork + execve ``path`` with ``args`` (args[0] is argv[0]) and exactly ``env``,
        ``stdin`` on its standard input, no other fd inherited; returns (exit status, 128+N for
        a signal, or None on timeout; its stdout and stderr together).

        What subprocess.Popen(close_fds=True).communicate(stdin, timeout) does, without
        importing subprocess (it imports signal.py, threading and selectors: ~4 ms of every
        rootless start, which runs newuidmap and newgidmap through here)."""
        return self.run_programs([(path, args, env, stdin)], timeout)[0]

    def run_programs(self, programs: list[tuple[str, list[str], list[str], bytes]],
                     timeout: int | None) -> list[tuple[int | None, bytes]]:
        """``run_program`` for each (path, args, env, stdin), all started before any is waited
        for: newuidmap and newgidmap run side by side (~2.5 ms of a rootless start each)."""
        import select

        deadline = None if timeout is None else _monotonic() + timeout
        started: list = []
        try:
            for program in programs:
                started.append(_start_program(*program[:3]))
        except BaseException:
            for pid, in_w, out_r, _ in started:  # none is left running or unwaited
                if pid:
                    os.close(in_w)
                    os.close(out_r)
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
            raise
        return [failed or _communicate(pid, in_w, out_r, program[3], deadline, select)
                for (pid, in_w, out_r, failed), program in zip(started, programs)]

    def start_helper(self, path: str, args: list[str], pass_fds: tuple = (),
                     log_path: str | None = None, cwd: str | None = None) -> int:
        """fork + execve ``path`` (args[0] is argv[0]) as a helper of the container (pasta,
        slirp4netns): in a session of its own (a Ctrl-C at the terminal is the container's
        to get), in ``cwd``, stdin and stdout on /dev/null, stderr appended to ``log_path``,
        no fd but ``pass_fds`` inherited, and PR_SET_PDEATHSIG SIGKILL so that it dies with
        the launcher (prctl(2); checked against getppid for a launcher that died first)."""
        import _signal as signal    # not signal.py, which imports enum

        launcher = os.getpid()
        pid = os.fork()
        if pid:
            return pid
        try:
            os.setsid()
            prctl.set_pdeathsig(signal.SIGKILL)
            if os.getppid() != launcher:
                os._exit(1)
            self.reset_signals()                    # ignored ones survive execve
            null = os.open("/dev/null", os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            if log_path:
                log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                              0o600)
                os.dup2(log, 2)
            if cwd:
                os.chdir(cwd)
            lib.mc_close_range(3, 0xFFFFFFFF, CLOSE_RANGE_CLOEXEC)
            for fd in pass_fds:
                os.set_inheritable(fd, True)
            os.execv(path, args)
        finally:
            os._exit(127)

    # Queries. A dry run answers them from the host where the answer is the host's.
    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def read_text(self, path: str) -> str:
        with open(path) as f:
            return f.read()

    def stat(self, path: str) -> os.stat_result:
        return os.stat(path)

    def access(self, path: str, mode: int) -> bool:
        return os.access(path, mode)


class RecordingSyscalls:
    """Does nothing, remembers every call; can be told to fail one call with an errno.

    The same object backs a dry run (``minictr run --dry-run --explain``), so it behaves as the
    real face where the steps depend on an answer:
    - a method the real face lacks is an AttributeError, never silently recorded;
    - calls that create something return a plausible value (a pid, an fd);
    - queries are answered as the kernel would: paths of the container's /proc and /sys (the
      same kernel's filesystems) and host paths are looked up on the host; a path under
      ``container_root`` (or anywhere after pivot_root) is a container path, and a bind
      destination (``binds``: container path -> host source) answers for its source.
    """

    dry_run = True
    QUERIES = {"readlinkat", "same_file", "is_dir", "statvfs_flags", "exists", "read_text",
               "stat", "access", "link_get", "landlock_abi_version"}

    def __init__(self, fail: dict[str, int] | None = None,
                 on_call: Callable[[str], None] | None = None, *,
                 container_root: str | None = None, binds: dict[str, str] | None = None,
                 lookup: Callable[[str], str | None] | None = None,
                 links: dict[str, dict] | None = None):
        self.calls: list[tuple] = []
        self.fail = fail or {}
        self.on_call = on_call
        self.container_root = container_root
        self.binds = dict(binds or {})
        self.lookup = lookup                 # container path -> host file, for image paths
        self.links = links                   # the launcher's network links, when not the host's
        self.made: set[str] = set()          # paths a recorded mkdir "made"
        self._pivoted = False
        self._next_pid = 4242
        self._next_fd = 100
        self._fds: dict[int, str] = {}       # fake fd -> the container path it names
        self._fifo_waiters: list[Callable[[], None]] = []
        self.mounts: list[dict] = []         # the spec's mounts, for their flags

    def when_fifo_written(self, resume: Callable[[], None]) -> None:
        """The recorded first process blocks on exec.fifo: ``resume`` runs at signal_fifo."""
        self._fifo_waiters.append(resume)

    def __getattr__(self, name: str):
        if name.startswith("_") or not callable(getattr(Syscalls, name, None)):
            raise AttributeError(f"the syscall face has no method {name!r}")

        def record(*args, **kwargs):
            self.calls.append((name, *args, kwargs) if kwargs else (name, *args))
            if self.on_call:
                self.on_call(f"{name}{args!r}" + (f" {kwargs!r}" if kwargs else ""))
            if name in self.fail:
                err = self.fail[name]
                raise OSError(err, f"{name}{args!r}: {os.strerror(err)}")
            return self._answer(name, args)

        return record

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    # ------------------------------------------------------------ answers

    def _fd(self, path: str) -> int:
        self._next_fd += 1
        self._fds[self._next_fd] = path
        return self._next_fd

    def _container_path(self, path: str) -> str | None:
        """The container path ``path`` names, or None for a host path."""
        if path.startswith("/proc/self/fd/"):
            try:
                return self._fds.get(int(path.rsplit("/", 1)[1]))
            except ValueError:
                return None
        if self._pivoted:
            return os.path.normpath(path)
        root = self.container_root
        if root and (path == root or path.startswith(root.rstrip("/") + "/")):
            return "/" + path[len(root):].lstrip("/")
        return None

    def _host_path(self, path: str) -> str | None:
        """Where the host answers for ``path``; None when only the image could."""
        inside = self._container_path(path)
        return path if inside is None else self._host_path_of_container(inside)

    def _answer(self, name: str, args: tuple):
        if name in ("clone", "clone3"):
            return self._next_pid
        if name == "start_helper":
            return self._next_pid + 1
        if name == "pivot_root":
            self._pivoted = True
        if name == "signal_fifo":
            waiters, self._fifo_waiters = self._fifo_waiters, []
            for resume in waiters:
                resume()
        if name == "mkdir":
            self.made.add(args[0])
        if name == "open":
            return self._fd(self._container_path(args[0]) or args[0])
        if name == "openat2":
            base = self._fds.get(args[0], "/")
            path = os.path.normpath(os.path.join(base, args[1]))
            host = self._host_path_of_container(path)
            if host is not None and not os.path.lexists(host):
                raise FileNotFoundError(errno.ENOENT, f"openat2: {path}: no such file")
            return self._fd(path)
        if name == "spawn_fuse":
            self._next_pid += 1
            return self._next_pid
        if name in ("bpf", "pidfd_open", "memfd_sealed", "fsmount_loop",
                    "landlock_create_ruleset", "open_tree"):
            return self._fd(f"<{name}>")
        if name == "run_program":
            return 0, b""
        if name == "run_programs":
            return [(0, b"")] * len(args[0])
        if name == "seccomp_set_filter":
            return 0
        if name == "ioctl":
            return self._fd("<pty>")
        if name in self.QUERIES:
            return self._query(name, args)
        return None

    def _host_path_of_container(self, inside: str) -> str | None:
        """A bind destination answers for its source, /proc and /sys for the host's (the same
        kernel's filesystems); anything else only the image could answer (None)."""
        for dest in sorted(self.binds, key=len, reverse=True):
            if inside == dest or inside.startswith(dest.rstrip("/") + "/"):
                return self.binds[dest] + inside[len(dest):]
        if inside.split("/")[1:2] in (["proc"], ["sys"]):
            return inside
        return self.lookup(inside) if self.lookup else None

    def _unmade(self, path: str) -> str | None:
        """A file in a directory only a recorded mkdir made is answered by the same file in
        the nearest real ancestor (a new cgroup has its parent's interface files); None for
        such a directory itself."""
        if path in self.made:
            return None
        parent, name = os.path.split(path)
        while parent in self.made:
            parent = os.path.dirname(parent)
        return os.path.join(parent, name)

    def _own_mount_flags(self, path: str) -> int | None:
        """statvfs(3) flags of a container path on one of the container's own (non-bind)
        mounts, or its overlay root: the mount's options, and relatime unless they say
        otherwise (the kernel's default for a new mount)."""
        inside = self._container_path(path)
        if inside is None or self._host_path_of_container(inside) not in (None, inside):
            return None
        best = None
        for m in self.mounts:
            dest = m.get("destination", "")
            if (inside == dest or inside.startswith(dest.rstrip("/") + "/")) and (
                    best is None or len(dest) > len(best["destination"])):
                best = m
        options = set(best.get("options", ())) if best else set()
        flags = 0
        if best is not None and ("bind" in options or "rbind" in options
                                 or best.get("type") == "bind"):
            # a bind: the source's own flags, plus those its remount adds
            host = self._host_path_of_container(inside)
            if host is None:
                return None
            try:
                flags = Syscalls().statvfs_flags(host)
            except OSError:
                return None
            for opt, bit in (("ro", os.ST_RDONLY), ("nosuid", os.ST_NOSUID),
                             ("nodev", os.ST_NODEV), ("noexec", os.ST_NOEXEC)):
                if opt in options:
                    flags |= bit
            return flags
        for opt, bit in (("ro", os.ST_RDONLY), ("nosuid", os.ST_NOSUID), ("nodev", os.ST_NODEV),
                         ("noexec", os.ST_NOEXEC), ("noatime", os.ST_NOATIME),
                         ("nodiratime", os.ST_NODIRATIME)):
            if opt in options:
                flags |= bit
        if not options & {"noatime", "strictatime"}:
            flags |= os.ST_RELATIME
        return flags

    def _query(self, name: str, args: tuple):
        real = Syscalls()
        if name == "readlinkat":
            return None
        if name == "landlock_abi_version":
            return real.landlock_abi_version()
        if name == "link_get":
            # the host's own links are the host's answer; a container's namespace is not made
            netns = args[1] if len(args) > 1 else None
            if netns is not None:
                return None
            return real.link_get(args[0]) if self.links is None else self.links.get(args[0])
        if name == "same_file":
            return self._fds.get(args[0]) == self._fds.get(args[1])
        if name in ("exists", "read_text"):
            path = self._unmade(args[0])
            if path is None:
                return name == "exists"                # a directory a recorded mkdir "made"
            if name == "exists":
                return real.exists(path)
            return real.read_text(path)
        if name == "statvfs_flags":
            own = self._own_mount_flags(args[0])
            if own is not None:
                return own
        host = self._host_path(args[0])
        if host is None and name == "stat":
            raise FileNotFoundError(errno.ENOENT, f"stat: {args[0]}: not in the image")
        if host is None:                              # nothing knows: a plain directory
            return {"is_dir": True, "statvfs_flags": 0, "access": False}.get(name)
        if name == "access":
            return real.access(host, args[1])
        try:
            return getattr(real, name)(host)
        except OSError:
            if name == "stat":
                raise
            return {"is_dir": False, "statvfs_flags": 0}.get(name)


def _monotonic() -> float:
    import time

    return time.monotonic()


def _start_program(path: str, args: list[str], env: list[str]):
    """(pid, stdin's write end, output's read end, None) of the program started; (0, -1, -1,
    (exit status, message)) when it could not be executed (127: not found, 126: not
    executable)."""
    import fcntl

    environ = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)      # the child's execve errno, if it fails
    pid = os.fork()
    if pid == 0:
        try:
            # above 2 first: a pipe end may itself be fd 0-2 if the launcher's were closed
            src = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (in_r, out_w, err_w)]
            os.dup2(src[0], 0)
            os.dup2(src[1], 1)
            os.dup2(src[1], 2)
            os.closerange(3, src[2])             # close_fds: only 0-2 reach the program
            os.closerange(src[2] + 1, 0x7FFFFFFF)
            import _signal
            for sig in (_signal.SIGPIPE, _signal.SIGXFSZ):   # the launcher ignores them
                _signal.signal(sig, _signal.SIG_DFL)
            os.execve(path, args or [path], environ)
        except OSError as err:
            os.write(src[2] if "src" in locals() else err_w,
                     (err.errno or errno.EIO).to_bytes(4, "little"))
        finally:
            os._exit(255)
    for fd in (in_r, out_w, err_w):
        os.close(fd)
    try:
        failed = os.read(err_r, 4)
    finally:
        os.close(err_r)
    if failed:
        os.close(in_w)
        os.close(out_r)
        os.waitpid(pid, 0)
        err = int.from_bytes(failed, "little")
        return 0, -1, -1, (127 if err == errno.ENOENT else 126,
                           f"{path}: {os.strerror(err)}".encode())
    return pid, in_w, out_r, None


def _communicate(pid: int, in_w: int, out_r: int, stdin: bytes, deadline, select):
    """Feed ``stdin`` to the program and read its output until it exits or ``deadline``
    passes (then SIGKILL): Popen.communicate's loop, on poll(2) and a pidfd."""
    output = bytearray()
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(out_r, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    pending = memoryview(stdin)
    if pending:
        os.set_blocking(in_w, False)
        poller.register(in_w, select.POLLOUT)
    else:
        os.close(in_w)
        in_w = -1
    open_fds, exited = {out_r}, False
    try:
        while open_fds or not exited:
            left = None if deadline is None else deadline - _monotonic()
            if left is not None and left <= 0:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                return None, b""
            for fd, _ in poller.poll(None if left is None else int(left * 1000) + 1):
                if fd == out_r:
                    chunk = os.read(out_r, 65536)
                    if chunk:
                        output += chunk
                    else:
                        poller.unregister(out_r)
                        open_fds.discard(out_r)
                elif fd == pidfd:
                    poller.unregister(pidfd)
                    exited = True
                elif fd == in_w:
                    try:
                        pending = pending[os.write(in_w, pending):]
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        poller.unregister(in_w)
                        os.close(in_w)
                        in_w = -1
        _, status = os.waitpid(pid, 0)
    finally:
        for fd in (in_w, out_r, pidfd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status), bytes(output)
    return os.WEXITSTATUS(status), bytes(output)
