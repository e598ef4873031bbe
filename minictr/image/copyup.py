"""Copy-up at unpack time: a layer is written as overlayfs would write it over its lower layers.

Each layer is unpacked into a directory of its own (an overlay lowerdir). When a layer's tar
reaches into what the layers below hold, overlayfs would first copy the lower object up
(Documentation/filesystems/overlayfs.rst, "Non-directories", "Directories"); so the unpacker
does that here, and the container sees what ``umoci unpack`` (one tree, layer over layer)
produces:

* a directory the tar writes into without listing it (``home/user/.bashrc`` and no
  ``home/user/``) is made with the lower directory's owner, mode, xattrs and mtime, where a
  plain mkdir would give 0755 root:root and hide them (docker's overlay2 applier does that);
* names are resolved in the merged tree: with ``lib -> usr/lib`` in a lower layer,
  ``lib/libnew.so`` lands in ``usr/lib/`` and the symlink stays, as umoci and GNU tar put it
  (both follow the link: umoci resolves the parent with SecureJoin inside the rootfs).
  containerd's and docker's overlay appliers, which write into the layer directory alone,
  would instead make ``lib`` a directory holding only the new file, hiding the lower
  ``usr/lib``; a layer written by ``docker build`` through the link names ``usr/lib/...``;
* a hardlink to a lower file copies the file up to its own path, with its owner, mode and
  xattrs, and links the new name to the copy: both names are one inode in the container;
* a layer without a ``./`` entry keeps the root's metadata from the layer below.

Lower layers are read through :class:`~minictr.image.merged.MergedTree` (dir fds, one name at a
time, O_NOFOLLOW, symlinks resolved by us inside the image root) and written only through the
layer's :class:`~minictr.image.safepath.ScopedRoot`: a lower layer's symlink cannot steer a read
or a write out of the store.
"""
from __future__ import annotations

import errno
import os
import stat

from minictr.image import tarstream as ts
from minictr.image.merged import (DIR, LINK, MISSING, OTHER, MergedTree, is_opaque, join,
                                  lstat_at, resolve_dir)

UPPER, LOWER = "upper", "lower"
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")


def is_whiteout_stat(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


class CopyUp:
    """The layer being unpacked (``root``) over its lower layers (``tree``, None for a bottom
    layer), as the container will see them. ``writer`` (the unpacker) applies metadata:
    ``set_metadata_fd(fd, entry)``, ``set_link_metadata(dir_fd, name, entry)``,
    ``record_dir(path, entry)`` (applied at the end) and ``mark_opaque(path, fd)``.

    A handle for a directory of the merged tree is ``(path, fd in this layer or None, whether
    lower layers show through it)``."""

    def __init__(self, root, tree: MergedTree | None, writer):
        self.root, self.tree, self.writer = root, tree, writer

    def close(self) -> None:
        if self.tree is not None:
            self.tree.close()

    def _top(self):
        return "", self.root.fd, self.tree is not None and not is_opaque(self.root.fd)

    def resolve(self, path: str, create: bool, strict: bool = False):
        """``(handle, path without symlinks)`` for the directory ``path`` of the merged tree, or
        None (see resolve_dir). ``create``: directories only in lower layers are copied up,
        missing ones made, so the handle's fd is always set."""
        if self.tree is not None:
            self.tree.trim()
        if create:
            return resolve_dir(path, self._top(), self._step_copying, self._make)
        return resolve_dir(path, self._top(), self._step, strict=strict)

    def dir_fd(self, path: str, create: bool) -> int | None:
        found = self.resolve(path, create)
        return None if found is None else found[0][1]

    def _step(self, handle, name: str, create: bool = False):
        path, fd, lowers = handle
        child = join(path, name)
        if fd is not None:
            st = lstat_at(fd, name)
            if st is not None:                  # this layer's entry hides any lower one
                if stat.S_ISDIR(st.st_mode):
                    sub = self.root.child_dir(child, fd, name)
                    return DIR, (child, sub, lowers and not is_opaque(sub))
                if stat.S_ISLNK(st.st_mode):
                    return LINK, os.readlink(name, dir_fd=fd)
                return (MISSING if is_whiteout_stat(st) else OTHER), None
        hit = self.tree.entry(path, name) if lowers else None
        if hit is None:
            return MISSING, None
        if hit[0] == LINK:
            return LINK, os.readlink(hit[1][1], dir_fd=hit[1][0])
        if hit[0] == OTHER:
            return OTHER, None
        return DIR, (child, self._copy_up_dir(fd, child, name) if create else None, True)

    def _step_copying(self, handle, name: str):
        return self._step(handle, name, True)

    def _make(self, handle, name: str):
        """A directory that no layer shows at ``name``: plain, like umoci's and docker's."""
        path, fd, _ = handle
        child = join(path, name)
        whiteout = lstat_at(fd, name) is not None    # _step said MISSING: our own whiteout
        if whiteout:
            os.unlink(name, dir_fd=fd)
        os.mkdir(name, 0o755, dir_fd=fd)
        sub = self.root.child_dir(child, fd, name)
        if whiteout:        # ".wh.d" then "d/x" in one layer: the lower d stays deleted
            self.writer.mark_opaque(child, sub)
        return child, sub, False

    def _copy_up_dir(self, parent_fd: int, path: str, name: str) -> int:
        os.mkdir(name, 0o700, dir_fd=parent_fd)       # its metadata is applied at the end
        fd = self.root.child_dir(path, parent_fd, name)
        self.writer.record_dir(path, self.dir_meta(path))
        return fd

    def dir_meta(self, path: str) -> ts.TarEntry | None:
        """Owner, mode, xattrs and mtime of the lower layers' directory ``path`` (clean, no
        symlinks), as overlayfs shows them: the topmost layer's."""
        stack = self.tree.dir_stack(path) if self.tree is not None else None
        if not stack:
            return None
        return entry_from_stat(path, os.fstat(stack[0]), read_xattrs(stack[0]))

    # ------------------------------------------------------------ non-directories
    def find(self, path: str, strict: bool = False):
        """What the clean ``path`` names in the merged tree, its last component not followed:
        None, ``(UPPER, parent path, parent fd, stat)`` or ``(LOWER, parent path, (layer dir
        fd, name) or None for a directory, stat)``, the parent path free of symlinks."""
        parent, _, name = path.rpartition("/")
        found = self.resolve(parent, create=False, strict=strict)
        if found is None or not name:
            return None
        (_, fd, lowers), canonical = found
        if fd is not None:
            st = lstat_at(fd, name)
            if st is not None:
                return None if is_whiteout_stat(st) else (UPPER, canonical, fd, st)
        hit = self.tree.entry(canonical, name) if lowers else None
        if hit is None or hit[0] == DIR:
            return None if hit is None else (LOWER, canonical, None, hit[2])
        return LOWER, canonical, hit[1], hit[2]

    def copy_up(self, parent: str, source, st: os.stat_result) -> int | None:
        """Copy the lower file or symlink ``source`` (layer dir fd, name) with its metadata to
        the same name in directory ``parent`` of this layer; return that directory's fd, or
        None for what cannot be copied (devices, FIFOs, sockets)."""
        src_dir, name = source
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            return None
        fd = self.root.dir_fd(parent)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=src_dir), name, dir_fd=fd)
            xattrs = read_xattrs(f"/proc/self/fd/{src_dir}/{name}", follow_symlinks=False)
            self.writer.set_link_metadata(fd, name, entry_from_stat(join(parent, name), st,
                                                                    xattrs))
            return fd
        # O_NONBLOCK: should the name have been swapped for a FIFO, open must not hang
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                      dir_fd=src_dir)
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):
                return None
            dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600, dir_fd=fd)
            try:
                copy_data(src, dst)
                self.writer.set_metadata_fd(dst, entry_from_stat(join(parent, name), st,
                                                                 read_xattrs(src)))
            finally:
                os.close(dst)
        finally:
            os.close(src)
        if st.st_nlink > 1:
            self._link_other_names(st, fd, name)
        return fd

    def _link_other_names(self, st: os.stat_result, fd: int, name: str) -> None:
        """The copied file had more names in its layer (a hardlink group): those the merged
        tree still shows are linked to the copy too, so the group stays one inode, as in
        umoci's single tree. (overlayfs itself needs its ``index`` feature for that.)"""
        for path in self.tree.names_of(st):
            found = self.find(path)
            if found is None or found[0] != LOWER or found[2] is None or \
                    (found[3].st_dev, found[3].st_ino) != (st.st_dev, st.st_ino):
                continue        # hidden, replaced, or already copied up (the name we copied)
            os.link(name, found[2][1], src_dir_fd=fd, dst_dir_fd=self.root.dir_fd(found[1]),
                    follow_symlinks=False)


def entry_from_stat(path: str, st: os.stat_result, xattrs: dict[str, bytes]) -> ts.TarEntry:
    """A lower object's metadata in the shape the unpacker applies a tar header's."""
    e = ts.TarEntry()
    e.name, e.typeflag, e.type = path, b"", "copy-up"
    e.mode, e.uid, e.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    e.size, e.mtime_ns, e.xattrs, e.sparse = st.st_size, st.st_mtime_ns, xattrs, None
    e.linkname, e.devmajor, e.devminor = "", 0, 0
    return e


def read_xattrs(target, follow_symlinks: bool = True) -> dict[str, bytes]:
    """A lower object's xattrs but overlayfs's own (an opaque mark is the layer's business)."""
    try:
        names = os.listxattr(target, follow_symlinks=follow_symlinks)
        return {k: os.getxattr(target, k, follow_symlinks=follow_symlinks)
                for k in names if not k.startswith(_OVERLAY_XATTRS)}
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.ENODATA):
            return {}
        raise


def copy_data(src: int, dst: int) -> None:
    """copy_file_range(2) (reflinks where the filesystem can), read/write where it cannot."""
    try:
        while os.copy_file_range(src, dst, 1 << 30):
            pass
        return
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    os.lseek(src, 0, os.SEEK_SET)
    os.lseek(dst, 0, os.SEEK_SET)
    os.ftruncate(dst, 0)
    while chunk := os.read(src, 1 << 20):
        os.write(dst, chunk)
