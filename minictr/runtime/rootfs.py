"""Building the container's root filesystem, in the order runc and crun use.

1. make every mount private to this namespace (so nothing leaks back to the host),
2. mount the overlay of image layers at root.path (a mount point, as pivot_root(2) needs),
3. the spec's mounts (/proc, /dev, /dev/pts, ..., the user's volumes) and device nodes,
4. pivot_root into it and detach the old root,
5. masked and read-only paths, and a read-only root when asked.

A stored layer is never written by a container, in any mode: even a read-only root is an
overlay, with a small tmpfs as its upper layer so that mount points (/proc, /dev, a volume's
destination, GPU library paths) can be made; the root turns read-only only at the end, as
runc does. (Bind-mounting a layer directory itself would create those mount points inside the
store entry, shared by every image with that ChainID.)
"""
from __future__ import annotations

import _signal  # signal.py's C core (signal.py imports enum: ~3 ms)
import errno
import os
from _collections_abc import Callable

from minictr.records import record
from minictr.runtime import capabilities, mounts
from minictr.runtime import syscalls as sc

Explain = Callable[[str], None] | None

# Symlinks every /dev gets (runc's defaultSymlinks).
DEV_SYMLINKS = (("/proc/self/fd", "fd"), ("/proc/self/fd/0", "stdin"),
                ("/proc/self/fd/1", "stdout"), ("/proc/self/fd/2", "stderr"),
                ("/proc/kcore", "core"))


@record
class SquashfsSource:
    """A squashfs filesystem to mount as the image: a ``.sqsh`` file, or the partition of a
    single-file image (a SIF) that starts ``offset`` bytes into ``path``. The file is only
    read: it may sit on a read-only shared filesystem, used by many containers at once."""

    path: str
    offset: int
    mountpoint: str                  # where it is mounted before the overlay takes it as lower


@record
class RootfsPlan:
    """The overlay that becomes the container's root (docs/architecture.md, "The rootfs plan")."""

    lowerdirs: tuple[str, ...]       # topmost layer first, as overlayfs wants them
    upperdir: str | None             # None: a tmpfs at ``scratch`` holds upper and work
    workdir: str | None
    target: str                      # where it is mounted: the spec's root.path
    rootless: bool = False
    volatile: bool = False           # the upper dir is thrown away after the run (--rm)
    driver: str = "overlay"          # "overlay" (the kernel's) or "fuse-overlayfs"
    scratch: str | None = None       # a read-only root's tmpfs upper is mounted here
    squashfs: SquashfsSource | None = None   # mounted first, at lowerdirs' (only) entry

    def writable_dirs(self) -> tuple[str, str]:
        """(upperdir, workdir): the container's own, or the two inside the tmpfs at scratch."""
        if self.upperdir:
            return self.upperdir, self.workdir
        return os.path.join(self.scratch, "upper"), os.path.join(self.scratch, "work")

    def overlay_data(self) -> str:
        """The overlayfs mount data (Documentation/filesystems/overlayfs.rst)."""
        upper, work = self.writable_dirs()
        for d in self.lowerdirs + (upper, work):
            if any(c in d for c in ",:\\"):
                raise ValueError(f"overlayfs cannot take a path containing ',', ':' or '\\': {d}")
        data = "lowerdir=" + ":".join(self.lowerdirs) + f",upperdir={upper},workdir={work}"
        if self.volatile or not self.upperdir:
            # No syncfs of the upper filesystem at unmount (overlayfs.rst, "Volatile mount"):
            # a --rm container's writes are deleted anyway, and that sync was most of a short
            # container's run time. A tmpfs upper has nothing to sync.
            data += ",volatile"
        if self.rootless:
            # Unprivileged overlay keeps its whiteout/opaque marks in user.overlay.* (kernel 5.11)
            data += ",userxattr"
        return data


# Network and cluster filesystems overlayfs refuses as an upper dir (no d_type/xattr/rename
# whiteout support); clusters put home directories on them.
NETWORK_FS = {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "ceph", "glusterfs",
              "fuse.sshfs", "panfs", "wekafs", "9p"}


def filesystem_type(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the filesystem holding ``path``: the longest mount point above it."""
    path = os.path.realpath(path)
    best, fstype = "", None
    with open(mountinfo) as f:
        for _, point, kind, _ in mounts.mountinfo(f.read()):
            if mounts.under(path, point) and len(point) >= len(best):
                best, fstype = point, kind
    return fstype


def check_upper_filesystem(plan: "RootfsPlan", mountinfo: str = "/proc/self/mountinfo") -> None:
    """Refuse early, with the fix, when the container's writable layer would sit on NFS or a
    cluster filesystem (overlayfs would fail later with a bare EINVAL)."""
    if plan is None or plan.upperdir is None:
        return
    probe = plan.upperdir
    while not os.path.exists(probe) and probe != "/":
        probe = os.path.dirname(probe)
    fstype = filesystem_type(probe, mountinfo)
    if fstype in NETWORK_FS:
        from minictr.errors import RuntimeSetupError

        raise RuntimeSetupError(
            f"the store is on {fstype} ({probe}): overlayfs cannot keep a container's writes there",
            hint="put the store on node-local disk: --root /tmp/$USER/minictr "
                 "(or MINICTR_ROOT), or run with --read-only")


PROPAGATION = {"shared": sc.MS_SHARED, "rshared": sc.MS_SHARED | sc.MS_REC,
               "slave": sc.MS_SLAVE, "rslave": sc.MS_SLAVE | sc.MS_REC,
               "private": sc.MS_PRIVATE, "rprivate": sc.MS_PRIVATE | sc.MS_REC,
               "unbindable": sc.MS_UNBINDABLE, "runbindable": sc.MS_UNBINDABLE | sc.MS_REC}


def propagation_flags(name: str | None) -> int | None:
    """linux.rootfsPropagation → mount(2) flags; None when unset."""
    if not name:
        return None
    if name not in PROPAGATION:
        from minictr.errors import SpecError

        raise SpecError(f"linux.rootfsPropagation {name!r} is not a propagation mode",
                        hint="one of " + ", ".join(PROPAGATION))
    return PROPAGATION[name]


def make_mounts_private(kernel, propagation: str | None, explain: Explain) -> None:
    """Stop mount events propagating back to the host: MS_REC|MS_SLAVE on "/" (runc's default),
    or MS_REC|MS_PRIVATE when rootfsPropagation asks for private. Slave still lets host
    unmounts reach us, which is harmless. A shared rootfsPropagation is applied after
    pivot_root (finish_rootfs): pivot_root(2) refuses shared mounts."""
    flags = sc.MS_REC | (sc.MS_PRIVATE if propagation in ("private", "rprivate") else sc.MS_SLAVE)
    _say(explain, f"mount --make-r{'private' if flags & sc.MS_PRIVATE else 'slave'} /  "
                  "(our mounts never propagate to the host)")
    kernel.mount(None, "/", None, flags)


def mount_rootfs(kernel, plan: RootfsPlan | None, root_path: str, explain: Explain,
                 image_mount: int | None = None, ptrace_in_container: bool = False) -> None:
    """Mount the overlay at root_path, or, for a prepared rootfs (OCI bundle), bind it onto
    itself so that it is a mount point (pivot_root(2) requires one). ``image_mount``: the
    squashfs the launcher mounted (open_image_mount), to attach first. ``ptrace_in_container``:
    the container may hold CAP_SYS_PTRACE, which rules a FUSE daemon out (FuseJail)."""
    if plan is None:
        _say(explain, f"mount --rbind {root_path} {root_path}")
        kernel.mount(root_path, root_path, None, sc.MS_BIND | sc.MS_REC)
        return
    jail = FuseJail(kernel, root_path, explain, ptrace_in_container)
    if plan.squashfs is not None:
        # first: the tmpfs upper below takes the mode and owner of the image's root from it
        mount_squashfs(kernel, plan.squashfs, plan.rootless, jail, explain, image_mount)
    if not plan.upperdir:
        # The read-only root's writable layer: a tmpfs private to this mount namespace.
        _say(explain, f"mount -t tmpfs tmpfs {plan.scratch}  (upper layer for mount points; "
                      "the root turns read-only at the end)")
        kernel.mount("tmpfs", plan.scratch, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=700")
        for d in plan.writable_dirs():
            kernel.mkdir(d, 0o755)
        # the root shows the upper dir's mode and owner: the image's own (lifecycle does the
        # same for a container's writable layer)
        top = kernel.stat(plan.lowerdirs[0])
        scratch_fd = kernel.open(plan.scratch, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            kernel.fchmodat(scratch_fd, "upper", top.st_mode & 0o7777)
            if not plan.rootless:
                kernel.fchownat(scratch_fd, "upper", top.st_uid, top.st_gid)
        finally:
            kernel.close(scratch_fd)
    if plan.driver == "fuse-overlayfs":
        mount_fuse_overlay(kernel, plan, root_path, jail, explain)
        return
    data = plan.overlay_data()
    _say(explain, f"mount -t overlay overlay {root_path} -o {data}")
    try:
        kernel.mount("overlay", root_path, "overlay", 0, data)
    except OSError as err:
        # Unprivileged overlayfs needs Linux >= 5.11 (userxattr); some kernels and filesystems
        # still refuse it. fuse-overlayfs reads the same layer format from user space.
        if not plan.rootless or err.errno not in (errno.EINVAL, errno.EPERM, errno.ENODEV):
            raise
        import shutil

        if not shutil.which("fuse-overlayfs"):
            raise OSError(err.errno, f"{err.strerror}; the kernel refused an unprivileged overlay "
                                     "mount and fuse-overlayfs is not installed (apt-get install "
                                     "fuse-overlayfs), or run with --read-only") from err
        _say(explain, f"kernel overlayfs refused ({os.strerror(err.errno)}): "
                      "falling back to fuse-overlayfs")
        mount_fuse_overlay(kernel, plan, root_path, jail, explain)


class FuseJail:
    """Where FUSE daemons run: chrooted in a recursive bind of the old root.

    pivot_root(2) moves every process whose root is the old root to the new one; a FUSE
    daemon would then look up its own paths through its own mount and deadlock. Chrooted in
    a bind of "/" (a different mount, which pivot_root leaves alone and MNT_DETACH only
    hides) it keeps its view; its mount is made there and moved onto the real target.
    Made once, on first use.

    The daemon is a child of the container's first process, in its PID namespace and user
    namespace, with its root in the host's "/". Reading its /proc/PID/root takes
    PTRACE_MODE_READ: refused to the container's processes while they hold fewer capabilities
    than the daemon, granted with CAP_SYS_PTRACE. So a container that may hold CAP_SYS_PTRACE
    (--cap-add SYS_PTRACE, --privileged) gets no FUSE daemon: an error instead of the host's
    files (the kernel's overlay or a loop-mounted squashfs have no such process).
    """

    def __init__(self, kernel, root_path: str, explain: Explain,
                 ptrace_in_container: bool = False):
        self.kernel, self.explain = kernel, explain
        self.path = os.path.join(os.path.dirname(root_path), "fuse-root")
        self._made = False
        self.ptrace_in_container = ptrace_in_container

    def enter(self) -> str:
        if self.ptrace_in_container:
            from minictr.errors import RuntimeSetupError

            raise RuntimeSetupError(
                "this root needs a FUSE daemon (fuse-overlayfs or squashfuse), and a container "
                "with CAP_SYS_PTRACE could reach the host's files through its /proc/PID/root",
                hint="drop --cap-add SYS_PTRACE (or --privileged), or use a kernel that mounts "
                     "overlayfs unprivileged (Linux >= 5.11)")
        if not self._made:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            _say(self.explain, f"mount --rbind / {self.path}  (FUSE daemons' own root)")
            self.kernel.mount("/", self.path, None, sc.MS_BIND | sc.MS_REC)
            self._made = True
        return self.path

    def run(self, argv: list[str], target: str) -> None:
        """Start the daemon (it mounts at the jail's ``target``), then move its mount onto
        ``target`` itself."""
        jail = self.enter()
        _say(self.explain, f"chroot {jail} {' '.join(argv)}  (in the foreground, killed "
                           "with the container's first process)")
        self.kernel.spawn_fuse(argv, jail, target)
        _say(self.explain, f"mount --move {jail}{target} {target}")
        self.kernel.mount(jail + target, target, None, sc.MS_MOVE)


def open_image_mount(kernel, source: SquashfsSource, explain: Explain) -> int:
    """As root, the launcher mounts the image's squashfs: the kernel's squashfs on a loop
    device (loop(4)), made as a detached mount (fsmount(2)) whose fd the container's process
    attaches in its own mount namespace. The launcher does it because that process is born
    under the device filter, which allows no loop device; nothing is mounted on the host."""
    _say(explain, f"mount -t squashfs -o loop,ro {_where(source)}  (detached: fsopen/fsmount)")
    return kernel.fsmount_loop(source.path, source.offset, "squashfs",
                               sc.MOUNT_ATTR_NODEV | sc.MOUNT_ATTR_NOSUID)


def mount_squashfs(kernel, source: SquashfsSource, rootless: bool, jail: FuseJail,
                   explain: Explain, image_mount: int | None = None) -> None:
    """Put the image's squashfs at its mount point, read-only: the launcher's detached mount
    (root), or, in a user namespace, where no loop device can be set up, squashfuse_ll (FUSE,
    multithreaded) serving the same file. Either reads only the blocks it is asked for:
    starting does not depend on the image's size."""
    if image_mount is not None:
        _say(explain, f"move_mount <the squashfs mount> {source.mountpoint}")
        kernel.move_mount(image_mount, source.mountpoint)
        return
    if not rootless:
        raise OSError(errno.EINVAL, "a squashfs image as root needs the launcher's mount")
    # allow_other: the container's other users (-u, a subordinate-id range) may read it too;
    # in a user namespace the kernel still admits only that namespace's processes
    options = "ro,allow_other" + (f",offset={source.offset}" if source.offset else "")
    jail.run(["squashfuse_ll", "-f", "-o", options, source.path, source.mountpoint],
             source.mountpoint)


def _where(source: SquashfsSource) -> str:
    return source.path + (f" (offset {source.offset})" if source.offset else "")


def mount_fuse_overlay(kernel, plan: RootfsPlan, root_path: str, jail: FuseJail,
                       explain: Explain) -> None:
    """Mount the layers with fuse-overlayfs (user space; it understands overlay's whiteouts
    and the user.overlay.opaque xattr), run from the FUSE jail like squashfuse."""
    upper, work = plan.writable_dirs()
    data = f"lowerdir={':'.join(plan.lowerdirs)},upperdir={upper},workdir={work}"
    jail.run(["fuse-overlayfs", "-f", "-o", data, root_path], root_path)


def mount_all(kernel, root_fd: int, spec: dict, rootless: bool, explain: Explain) -> None:
    """The spec's mounts in order, then /dev's device nodes, symlinks and ptmx."""
    cgroupns = any(ns.get("type") == "cgroup"
                   for ns in spec.get("linux", {}).get("namespaces", ()))
    for m in spec.get("mounts", ()):
        mounts.mount_at(kernel, root_fd, m, explain, rootless=rootless, cgroupns=cgroupns)
    for dev in spec.get("linux", {}).get("devices", ()):
        mounts.create_device(kernel, root_fd, dev, rootless, explain)
    make_dev_links(kernel, root_fd, spec, explain)


def make_dev_links(kernel, root_fd: int, spec: dict, explain: Explain) -> None:
    """/dev/fd, stdin, stdout, stderr, and /dev/ptmx → pts/ptmx (devpts(5): with newinstance the
    container's ptys come from its own devpts, reached through this link)."""
    if not any(m.get("destination") == "/dev" for m in spec.get("mounts", ())):
        return
    links = list(DEV_SYMLINKS)
    if any(m.get("destination") == "/dev/pts" for m in spec.get("mounts", ())):
        links.append(("pts/ptmx", "ptmx"))
    mounts.make_links(kernel, root_fd, "/dev", links, explain)


def pivot_into(kernel, root_path: str, explain: Explain, no_pivot: bool = False) -> None:
    """Make ``root_path`` the root of this mount namespace and drop the old root.

    The sequence from pivot_root(2), NOTES: chdir(new_root); pivot_root(".", ".") stacks the old
    root on top of the new one at "/"; umount2(".", MNT_DETACH) then removes it, so no path to the
    host's filesystem remains. Preconditions (else EINVAL): new_root is a mount point and no
    mount involved is MS_SHARED (make_mounts_private saw to both).
    """
    if no_pivot:
        # runc --no-pivot, for a root on a ramdisk where pivot_root(2) fails: move the root's
        # mount over "/" and chroot into it. The old root stays reachable for a process that
        # escapes the chroot: this is weaker, and only done when asked.
        _detach_host_proc_and_sys(kernel, root_path, explain)
        _say(explain, f"mount --move {root_path} /; chroot .  (--no-pivot)")
        kernel.chdir(root_path)
        kernel.mount(root_path, "/", None, sc.MS_MOVE)
        kernel.chroot(".")
        kernel.chdir("/")
        return
    _say(explain, f"pivot_root {root_path}  (chdir; pivot_root(\".\", \".\"); umount2(\".\", MNT_DETACH))")
    kernel.chdir(root_path)
    kernel.pivot_root(".", ".")
    kernel.umount2(".", sc.MNT_DETACH)
    kernel.chdir("/")



def _detach_host_proc_and_sys(kernel, root_path: str, explain: Explain) -> None:
    """--no-pivot keeps the old root's mounts in this namespace, out of the chroot's sight but
    there. A full procfs or sysfs among them would let the container mount a new, unmasked one
    (the kernel's mount_too_revealing() allows it when the namespace already holds a full one),
    so each is detached, or covered with a tmpfs where it cannot be, as runc's msMoveRoot does
    (same filter: a mount of the whole filesystem, not under the rootfs)."""
    detached: list[str] = []
    for root, point, kind, _ in mounts.mountinfo(kernel.read_text("/proc/self/mountinfo")):
        if kind not in ("proc", "sysfs") or root != "/" or mounts.under(point, root_path) or \
                any(point.startswith(d.rstrip("/") + "/") for d in detached):
            continue                            # the container's own, or already gone
        _say(explain, f"umount -l {point}  (--no-pivot: no host {kind} stays in this mount "
                      "namespace)")
        try:
            kernel.umount2(point, sc.MNT_DETACH)
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.EPERM):
                raise
            kernel.mount("tmpfs", point, "tmpfs", 0)
        detached.append(point)


def finish_rootfs(kernel, spec: dict, explain: Explain) -> None:
    """After pivot_root: masked paths, read-only paths, then the read-only root."""
    linux = spec.get("linux", {})
    root_fd = kernel.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for path in linux.get("maskedPaths", ()):
            mounts.mask_path(kernel, root_fd, path, explain)
        for path in linux.get("readonlyPaths", ()):
            mounts.make_readonly(kernel, root_fd, path, explain)
    finally:
        kernel.close(root_fd)
    if spec.get("root", {}).get("readonly"):
        mounts.remount_keep_locked(kernel, "/", sc.MS_RDONLY, explain, "/")
    flags = propagation_flags(linux.get("rootfsPropagation"))
    if flags is not None and flags & sc.MS_SHARED:
        _say(explain, f"mount --make-{linux['rootfsPropagation']} /")
        kernel.mount(None, "/", None, flags)


def _say(explain: Explain, text: str) -> None:
    if explain:
        explain(text)


def run_over_layers(kernel, lowerdirs: tuple[str, ...], mountpoint: str, argv: list[str], *,
                    rootless: bool, explain: Explain = None) -> int:
    """Run ``argv`` in a child that sees ``lowerdirs`` (topmost first) merged read-only at
    ``mountpoint`` (an empty directory), in a mount namespace of its own, and return its exit
    status: how `minictr export` hands the image's merged tree to mksquashfs. Nothing stays
    mounted: the namespace goes with the child.

    Rootless, the child first enters a user namespace that maps it to root (its own maps, one
    id: user_namespaces(7)), so that files of the user's store read as root's, and unprivileged
    overlayfs reads its marks from user.overlay.* (userxattr). An empty directory below the
    layers makes even a one-layer image an overlay (overlayfs wants two lower layers without
    an upper), which also hides overlay's own xattrs from the reader."""
    empty = os.path.join(os.path.dirname(mountpoint), "empty-lower")
    os.makedirs(empty, mode=0o755, exist_ok=True)
    data = "lowerdir=" + ":".join(tuple(lowerdirs) + (empty,)) + (",userxattr" if rootless
                                                                 else "")
    uid, gid = os.geteuid(), os.getegid()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            if rootless:
                kernel.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
                kernel.write_file("/proc/self/setgroups", "deny\n")
                kernel.write_file("/proc/self/uid_map", f"0 {uid} 1\n")
                kernel.write_file("/proc/self/gid_map", f"0 {gid} 1\n")
            else:
                kernel.unshare(sc.CLONE_NEWNS)
            kernel.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
            _say(explain, f"mount -t overlay overlay {mountpoint} -o ro,{data}")
            kernel.mount("overlay", mountpoint, "overlay", sc.MS_RDONLY, data)
            _say(explain, " ".join(argv))
            # A killed caller takes its writer along (set last: a change of credentials, such
            # as entering the user namespace, clears it; it survives execve).
            capabilities.die_with_parent(kernel)
            if os.getppid() != parent:
                os._exit(125)
            os.execvp(argv[0], argv)
        except BaseException as err:          # noqa: BLE001 - the child must not return
            try:
                os.write(2, f"minictr: error: {err}\n".encode())
            finally:
                os._exit(125)
    try:
        _, status = os.waitpid(pid, 0)
    except BaseException:
        # Interrupted (Ctrl-C): the writer goes first, so no file of its outlives the caller's
        # cleanup (an export's temporary, unlinked and then created again by a late writer).
        os.kill(pid, _signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    return os.waitstatus_to_exitcode(status)
