"""Mounting inside an untrusted root: resolving destinations safely and translating OCI options.

Every destination is resolved *inside* the container's root with openat2(2)
RESOLVE_IN_ROOT, which makes the kernel treat the root as "/" for absolute symlinks and ".."; the
mount is then made onto the resolved O_PATH file descriptor through its /proc/self/fd/N magic
link. A symlink planted by the image (``/dev -> /``, ``/proc -> /host``) therefore cannot redirect
a mount outside the root, and a destination swapped between check and use cannot be raced
(runc CVE-2021-30465, CVE-2025-31133): there is no separate check.
"""
from __future__ import annotations

import errno
import os
from _collections_abc import Callable

from minictr.runtime import syscalls as sc

Explain = Callable[[str], None] | None

# OCI mount options (config.md "mounts") → mount(2) flags; (set, clear).
_FLAGS = {
    "ro": (sc.MS_RDONLY, 0), "rw": (0, sc.MS_RDONLY),
    "nosuid": (sc.MS_NOSUID, 0), "suid": (0, sc.MS_NOSUID),
    "nodev": (sc.MS_NODEV, 0), "dev": (0, sc.MS_NODEV),
    "noexec": (sc.MS_NOEXEC, 0), "exec": (0, sc.MS_NOEXEC),
    "sync": (sc.MS_SYNCHRONOUS, 0), "async": (0, sc.MS_SYNCHRONOUS),
    "dirsync": (sc.MS_DIRSYNC, 0), "remount": (sc.MS_REMOUNT, 0),
    "noatime": (sc.MS_NOATIME, 0), "atime": (0, sc.MS_NOATIME),
    "nodiratime": (sc.MS_NODIRATIME, 0), "diratime": (0, sc.MS_NODIRATIME),
    "relatime": (sc.MS_RELATIME, 0), "norelatime": (0, sc.MS_RELATIME),
    "strictatime": (sc.MS_STRICTATIME, 0), "nostrictatime": (0, sc.MS_STRICTATIME),
    "bind": (sc.MS_BIND, 0), "rbind": (sc.MS_BIND | sc.MS_REC, 0),
}
_PROPAGATION = {
    "private": sc.MS_PRIVATE, "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "slave": sc.MS_SLAVE, "rslave": sc.MS_SLAVE | sc.MS_REC,
    "shared": sc.MS_SHARED, "rshared": sc.MS_SHARED | sc.MS_REC,
    "unbindable": sc.MS_UNBINDABLE, "runbindable": sc.MS_UNBINDABLE | sc.MS_REC,
}
# Flags a read-only remount must keep: in a user namespace the kernel refuses to clear
# nosuid/nodev/noexec locked by a more privileged namespace (mount(2), EPERM).
_STATVFS_KEEP = ((os.ST_NOSUID, sc.MS_NOSUID), (os.ST_NODEV, sc.MS_NODEV),
                 (os.ST_NOEXEC, sc.MS_NOEXEC), (os.ST_NOATIME, sc.MS_NOATIME),
                 (os.ST_NODIRATIME, sc.MS_NODIRATIME), (os.ST_RELATIME, sc.MS_RELATIME))

# Flags a bind can get while detached (mount_setattr(2)), before it is attached: one step
# instead of bind + remount. Others (sync, dirsync, an atime choice) still take the remount.
_ATTRS = {sc.MS_RDONLY: sc.MOUNT_ATTR_RDONLY, sc.MS_NOSUID: sc.MOUNT_ATTR_NOSUID,
          sc.MS_NODEV: sc.MOUNT_ATTR_NODEV, sc.MS_NOEXEC: sc.MOUNT_ATTR_NOEXEC,
          sc.MS_NODIRATIME: sc.MOUNT_ATTR_NODIRATIME}

RESOLVE = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS
O_PATH = os.O_PATH | os.O_CLOEXEC


def parse_options(options: list[str]) -> tuple[int, int, str]:
    """OCI option strings → (mount flags, propagation flags, data string)."""
    flags, propagation, data = 0, 0, []
    for opt in options:
        if opt in _FLAGS:
            on, off = _FLAGS[opt]
            flags = (flags | on) & ~off
        elif opt in _PROPAGATION:
            propagation |= _PROPAGATION[opt]
        else:
            data.append(opt)
    return flags, propagation, ",".join(data)


def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


MAX_SYMLINKS = 40   # as the kernel's own limit (path_resolution(7))


def resolve_in_root(kernel, root_fd: int, path: str, create: str | None = None,
                    mode: int = 0o755) -> int:
    """Open ``path`` inside the root held by ``root_fd`` as an O_PATH fd, never leaving it.

    ``create`` = "dir" or "file" makes missing components (directories, then the last one as
    ``create`` says). Existing symlinks are followed, but only within the root: the kernel does
    that for us (RESOLVE_IN_ROOT); a dangling symlink on the way (``/data -> /etc`` in an image
    without /etc) is followed by hand, the way runc's securejoin.MkdirAll does, so the directory
    is created where the link points *inside* the root.
    """
    rel = path.lstrip("/") or "."
    try:
        return kernel.openat2(root_fd, rel, O_PATH, RESOLVE)
    except FileNotFoundError:
        if create is None:
            raise
    made = _create_last(kernel, root_fd, rel, create, mode)
    if made is not None:
        return made
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    done: list[str] = []
    for _ in range(MAX_SYMLINKS + len(parts)):
        if not parts:
            return kernel.openat2(root_fd, "/".join(done) or ".", O_PATH, RESOLVE)
        name = parts.pop(0)
        if name == "..":
            done = done[:-1]
            continue
        try:
            kernel.close(kernel.openat2(root_fd, "/".join(done + [name]), O_PATH, RESOLVE))
            done.append(name)
            continue
        except FileNotFoundError:
            pass
        parent_fd = kernel.openat2(root_fd, "/".join(done) or ".", O_PATH, RESOLVE)
        try:
            link = kernel.readlinkat(parent_fd, name)
            if link is not None:                 # a dangling symlink: follow it by hand
                parts = [p for p in link.split("/") if p not in ("", ".")] + parts
                if link.startswith("/"):
                    done = []
                continue
            last = not parts
            if last and create == "file":
                kernel.create_file_at(parent_fd, name)
            else:
                kernel.mkdirat(parent_fd, name, mode)
            done.append(name)
        except FileExistsError:
            done.append(name)                    # made meanwhile: resolve it on the next turn
        finally:
            kernel.close(parent_fd)
    raise OSError(errno.ELOOP, f"too many symlinks resolving {path!r} in the container")


def _create_last(kernel, root_fd: int, rel: str, create: str, mode: int) -> int | None:
    """The common case in five calls: only the last component is missing (a mount point for a
    file in a directory the image has). The parent is resolved inside the root like any path,
    the name is created in it with O_EXCL|O_NOFOLLOW (or mkdirat). None when the parent is
    missing too, or the name is a dangling symlink: the walk in ``resolve_in_root`` handles
    those."""
    parent, _, name = rel.rpartition("/")
    if name in ("", ".", ".."):
        return None
    try:
        parent_fd = kernel.openat2(root_fd, parent or ".", O_PATH, RESOLVE)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        if kernel.readlinkat(parent_fd, name) is not None:
            return None
        if create == "file":
            kernel.create_file_at(parent_fd, name)
        else:
            kernel.mkdirat(parent_fd, name, mode)
    except FileExistsError:
        pass                                     # made meanwhile: resolve it below
    finally:
        kernel.close(parent_fd)
    return kernel.openat2(root_fd, rel, O_PATH, RESOLVE)


def mount_at(kernel, root_fd: int, mount: dict, explain: Explain, rootless: bool = False,
             cgroupns: bool = False) -> None:
    """Apply one OCI mount entry at its destination inside the root. ``cgroupns``: the
    container has a cgroup namespace (a "cgroup" mount is then rooted at its own cgroups)."""
    dest = mount["destination"]
    mtype = mount.get("type") or ("bind" if "bind" in mount.get("options", ())
                                  or "rbind" in mount.get("options", ()) else None)
    flags, propagation, data = parse_options(list(mount.get("options", ())))
    source = mount.get("source") or mtype or "none"
    if mtype == "cgroup":
        if not rootless and not kernel.exists("/sys/fs/cgroup/cgroup.controllers"):
            mount_cgroup_v1(kernel, root_fd, dest, flags, propagation, cgroupns, explain)
            return
        mtype, source, flags = cgroup_mount(kernel, flags, explain)
    is_bind = bool(flags & sc.MS_BIND) or mtype == "bind"
    if is_bind:
        flags |= sc.MS_BIND
        if not os.path.exists(source):
            raise FileNotFoundError(errno.ENOENT, f"bind mount source {source!r} does not exist")
        kind = "dir" if os.path.isdir(source) else "file"
    else:
        kind = "dir"
    extra = flags & ~(sc.MS_BIND | sc.MS_REC) if is_bind else 0
    target_fd = resolve_in_root(kernel, root_fd, dest, create=kind)
    try:
        refuse_root_itself(kernel, root_fd, target_fd, dest)
        target = fd_path(target_fd)
        if extra and not extra & ~sum(_ATTRS) and bind_detached(
                kernel, source, target_fd, flags, explain, dest):
            extra = 0
        elif is_bind:
            # A bind ignores every flag but MS_REC on the first call; the others need a remount
            # (mount(2), "Creating a bind mount").
            _say(explain, f"mount --bind {source} {dest}  [{_names(flags)}]")
            kernel.mount(source, target, None, flags & (sc.MS_BIND | sc.MS_REC))
        else:
            _say(explain, f"mount -t {mtype} {source} {dest}  [{_names(flags)}] {data}".rstrip())
            kernel.mount(source, target, mtype, flags, data or None)
    finally:
        kernel.close(target_fd)
    if extra or propagation:
        # The fd still names the directory *under* the new mount: open the destination again
        # to reach the mount itself.
        with_new_mount(kernel, root_fd, dest, lambda target: (
            extra and remount_keep_locked(kernel, target, extra, explain, dest),
            propagation and kernel.mount(None, target, None, propagation)))


def bind_detached(kernel, source: str, target_fd: int, flags: int, explain: Explain,
                  label: str) -> bool:
    """Bind ``source`` onto the file ``target_fd`` is open on, its flags (ro, nosuid, nodev...)
    set before it is attached: open_tree(2) OPEN_TREE_CLONE makes a detached copy of the
    source's mount, mount_setattr(2) sets the flags on it, move_mount(2) attaches it. Three
    calls instead of bind, re-resolve and remount, and the mount is never seen writable.
    As the remount did, the source's nosuid, nodev, noexec and atime flags are kept (never
    cleared: the kernel may lock them, from a more privileged user namespace), and read-only is
    what the options say. False when the kernel lacks the calls (ENOSYS: before Linux 5.12):
    the caller binds and remounts instead."""
    if getattr(kernel, "detached_binds_missing", False):
        return False                    # found out at an earlier mount of this start
    attrs = sum(attr for ms, attr in _ATTRS.items() if flags & ms)
    clear = 0 if flags & sc.MS_RDONLY else sc.MOUNT_ATTR_RDONLY
    clone = sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | (
        sc.AT_RECURSIVE if flags & sc.MS_REC else 0)
    try:
        tree = kernel.open_tree(sc.AT_FDCWD, source, clone)
    except OSError as err:
        if err.errno == errno.ENOSYS:
            kernel.detached_binds_missing = True
            return False
        raise
    try:
        try:
            kernel.mount_setattr(tree, "", sc.AT_EMPTY_PATH, attrs, clear)
        except OSError as err:
            if err.errno == errno.ENOSYS:
                # Linux 5.2-5.11 have open_tree but not mount_setattr: without this, every
                # later bind would clone its source tree again only to throw it away
                kernel.detached_binds_missing = True
                return False
            raise
        _say(explain, f"mount --bind {source} {label}  [{sc.flag_names(attrs, sc.MOUNT_ATTR_NAMES)}"
                      " set while detached: open_tree, mount_setattr, move_mount]")
        kernel.move_mount(tree, "", to_dirfd=target_fd)
    finally:
        kernel.close(tree)
    return True


def cgroup_mount(kernel, flags: int, explain: Explain) -> tuple[str, str, int]:
    """A "cgroup" mount (what `runc spec` writes) means the container's view of the cgroup
    hierarchy. On a pure cgroup v2 host that is a cgroup2 mount (rooted at the container's
    cgroup by its cgroup namespace). Rootless on a v1 or hybrid host (as root,
    ``mount_cgroup_v1`` does it) a user namespace cannot mount v1 hierarchies, so minictr binds
    the host's /sys/fs/cgroup recursively, as its own rootless specs do (spec/defaults.py) and
    podman does, keeping the entry's flags (ro...): nothing the user could not read anyway."""
    if kernel.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "cgroup2", "cgroup2", flags
    _say(explain, "cgroup mount on a v1/hybrid host, rootless: a recursive bind of /sys/fs/cgroup")
    return "bind", "/sys/fs/cgroup", flags | sc.MS_BIND | sc.MS_REC


def mount_cgroup_v1(kernel, root_fd: int, dest: str, flags: int, propagation: int,
                    cgroupns: bool, explain: Explain) -> None:
    """A "cgroup" mount as root on a v1 or hybrid host, as runc makes it: a tmpfs at ``dest``,
    in it one directory per hierarchy the host mounts at /sys/fs/cgroup/NAME showing only the
    container's own cgroup (cgroups.setup made one in every hierarchy for this), and the
    comount links (cpu -> cpu,cpuacct). In a cgroup namespace each is a fresh mount of the
    hierarchy, which the kernel roots at the namespace's root; without one, a bind of the
    container's own directory in the host's mount. Never the host's whole tree: that would
    show every other container's, user's and service's cgroups."""
    nsd = ["nosuid", "nodev", "noexec"]
    ro = ["ro"] if flags & sc.MS_RDONLY else []
    views = cgroup_views(kernel.read_text("/proc/self/mountinfo"),
                         kernel.read_text("/proc/self/cgroup"))
    _say(explain, f"cgroup mount on a v1/hybrid host: a tmpfs at {dest} and the container's own "
                  f"cgroup in each of {len(views)} hierarchies "
                  + ("(fresh mounts in its cgroup namespace)" if cgroupns else
                     "(binds: no cgroup namespace)"))
    mount_at(kernel, root_fd, {"destination": dest, "type": "tmpfs", "source": "tmpfs",
                               "options": nsd + ["mode=755"]}, explain)
    for name, fstype, data, source in views:
        where = f"{dest.rstrip('/')}/{name}"
        if cgroupns:
            fresh = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | (flags & sc.MS_RDONLY)
            target_fd = resolve_in_root(kernel, root_fd, where, create="dir")
            try:
                _say(explain, f"mount -t {fstype} cgroup {where}  [{_names(fresh)}] {data}")
                kernel.mount("cgroup", fd_path(target_fd), fstype, fresh, data or None)
            finally:
                kernel.close(target_fd)
        elif source is None:
            _say(explain, f"no {where}: the container's cgroup is outside the host's mount of it")
        else:
            mount_at(kernel, root_fd, {"destination": where, "type": "bind", "source": source,
                                       "options": ["bind"] + nsd + ro}, explain)
    make_links(kernel, root_fd, dest, [(name, part) for name, *_ in views
                                       for part in (name.split(",") if "," in name else ())],
               explain)
    if ro or propagation:
        with_new_mount(kernel, root_fd, dest, lambda target: (
            ro and remount_keep_locked(kernel, target, sc.MS_RDONLY, explain, dest),
            propagation and kernel.mount(None, target, None, propagation)))


def make_links(kernel, root_fd: int, directory: str, links, explain: Explain) -> None:
    """Symlinks (target, name) in ``directory`` of the container; one already there stays."""
    dir_fd = resolve_in_root(kernel, root_fd, directory)
    try:
        for target, name in links:
            _say(explain, f"ln -s {target} {directory.rstrip('/')}/{name}")
            try:
                kernel.symlinkat(target, dir_fd, name)
            except FileExistsError:
                pass
    finally:
        kernel.close(dir_fd)


def mountinfo(text: str):
    """(root, mount point, type, superblock options) of each line of a mountinfo file (proc(5),
    /proc/PID/mountinfo: field 4 is the root of the mount within its filesystem, field 5 the
    mount point; after " - " the type, the source and the superblock's options), the paths
    unescaped."""
    for line in text.splitlines():
        head, _, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if len(fields) >= 5 and rest:
            yield (_unescape(fields[3]), _unescape(fields[4]), rest[0],
                   rest[2] if len(rest) > 2 else "")


def under(path: str, top: str) -> bool:
    """``path`` is ``top`` or below it, as paths (not a sibling sharing its prefix)."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def cgroup_views(text: str, own: str) -> list[tuple[str, str, str, str | None]]:
    """(NAME, type, hierarchy, bind source) for each cgroup filesystem mounted at
    /sys/fs/cgroup/NAME in the mountinfo ``text``. The hierarchy is the mount data naming it
    ("cpu,cpuacct", "name=systemd"; "" for cgroup2), taken from the line of ``own``
    (/proc/self/cgroup, "ID:CONTROLLERS:PATH") whose controllers the mount's options hold; the
    bind source is the directory of PATH in that mount (its root is field 4), None when PATH is
    not below that root."""
    paths = {}
    for line in own.splitlines():
        _, controllers, path = line.split(":", 2)
        paths[controllers] = path
    views = {}
    for root, point, fstype, options in mountinfo(text):
        if fstype not in ("cgroup", "cgroup2") or os.path.dirname(point) != "/sys/fs/cgroup":
            continue
        if fstype == "cgroup2":
            hierarchy = ""
        else:
            held = [c for c in paths if c and set(c.split(",")) <= set(options.split(","))]
            if not held:
                continue                      # a hierarchy this process is not in (none such)
            hierarchy = max(held, key=len)
        path = paths.get(hierarchy)
        source = None
        if path is not None and under(path, root):
            source = os.path.join(point, path[len(root):].lstrip("/")).rstrip("/")
        views[point] = (os.path.basename(point), fstype, hierarchy, source)
    return list(views.values())


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040...)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def with_new_mount(kernel, root_fd: int, dest: str, action) -> None:
    fd = resolve_in_root(kernel, root_fd, dest)
    try:
        action(fd_path(fd))
    finally:
        kernel.close(fd)


def refuse_root_itself(kernel, root_fd: int, target_fd: int, dest: str) -> None:
    """A destination that resolves to the root itself (an image whose /dev is a symlink to /)
    would hide the whole image under the mount: refuse it with a clear message."""
    if dest.strip("/") and kernel.same_file(root_fd, target_fd):
        raise OSError(errno.EINVAL, f"mount destination {dest} resolves to the container's "
                                    "root (a symlink in the image?)")


def remount_keep_locked(kernel, target: str, add_flags: int, explain: Explain,
                        label: str | None = None) -> None:
    """Remount a bind mount with ``add_flags``, keeping the flags the kernel locks."""
    current = kernel.statvfs_flags(target) or 0
    keep = sum(ms for st_flag, ms in _STATVFS_KEEP if current & st_flag)
    flags = sc.MS_BIND | sc.MS_REMOUNT | add_flags | keep
    _say(explain, f"mount -o remount,bind {label or target}  [{_names(flags)}]")
    kernel.mount(None, target, None, flags)


def create_device(kernel, root_fd: int, dev: dict, rootless: bool, explain: Explain) -> None:
    """Make one linux.devices entry: mknod(2) as root; in a user namespace the kernel forbids
    mknod of real devices, so bind-mount the host's node onto an empty file instead."""
    path = dev["path"]
    parent, _, name = path.lstrip("/").rpartition("/")
    if rootless:
        host = dev.get("hostPath") or path
        fd = resolve_in_root(kernel, root_fd, path, create="file")
        try:
            _say(explain, f"mount --bind {host} {path}  (no mknod in a user namespace)")
            kernel.mount(host, fd_path(fd), None, sc.MS_BIND)
        finally:
            kernel.close(fd)
        return
    dir_fd = resolve_in_root(kernel, root_fd, parent or ".", create="dir")
    try:
        kind = sc.S_IFBLK if dev.get("type") == "b" else sc.S_IFCHR
        mode = kind | (dev.get("fileMode", 0o666) & 0o7777)
        _say(explain, f"mknod {path} {dev.get('type', 'c')} {dev['major']} {dev['minor']}")
        try:
            kernel.unlinkat(dir_fd, name)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            raise OSError(errno.EISDIR, f"cannot create device {path}: a directory is there")
        kernel.mknodat(dir_fd, name, mode, dev["major"], dev["minor"])
        # mknod's mode is filtered by the umask: set it exactly. The node was made just now in
        # our own fresh tmpfs, so nothing can have swapped it for a symlink.
        kernel.fchmodat(dir_fd, name, mode & 0o7777)
        kernel.fchownat(dir_fd, name, dev.get("uid", 0), dev.get("gid", 0))
    finally:
        kernel.close(dir_fd)


def _open_existing(kernel, root_fd: int, path: str) -> int | None:
    """An O_PATH fd for ``path`` in the root, or None when the image has no such path."""
    try:
        return resolve_in_root(kernel, root_fd, path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def mask_path(kernel, root_fd: int, path: str, explain: Explain) -> None:
    """Hide ``path``: /dev/null over a file, an empty read-only tmpfs over a directory."""
    fd = _open_existing(kernel, root_fd, path)
    if fd is None:
        return
    try:
        target = fd_path(fd)
        if kernel.is_dir(target):
            _say(explain, f"mask {path}: mount -t tmpfs -o ro tmpfs {path}")
            kernel.mount("tmpfs", target, "tmpfs", sc.MS_RDONLY, "size=0k")
        else:
            _say(explain, f"mask {path}: mount --bind /dev/null {path}")
            kernel.mount("/dev/null", target, None, sc.MS_BIND)
    finally:
        kernel.close(fd)


def make_readonly(kernel, root_fd: int, path: str, explain: Explain) -> None:
    """Bind ``path`` onto itself, then remount it read-only (runc's readonlyPath)."""
    fd = _open_existing(kernel, root_fd, path)
    if fd is None:
        return
    try:
        target = fd_path(fd)
        _say(explain, f"read-only {path}: mount --bind {path} {path}")
        kernel.mount(target, target, None, sc.MS_BIND | sc.MS_REC)
    finally:
        kernel.close(fd)
    with_new_mount(kernel, root_fd, path, lambda target: remount_keep_locked(
        kernel, target, sc.MS_RDONLY, explain, path))


def _names(flags: int) -> str:
    return sc.flag_names(flags, sc.MOUNT_FLAG_NAMES)


def _say(explain: Explain, text: str) -> None:
    if explain:
        explain(text)
