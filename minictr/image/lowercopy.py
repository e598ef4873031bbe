"""Hardlinks into lower layers: copy the file up, confined to each lower layer's root.

A layer built by diffing (docker commit, buildkit) can hold a hardlink whose target is an
unchanged file of a lower layer. In overlay form each layer is its own directory and a hardlink
cannot cross them, so the target is copied (as containerd's and umoci's overlay appliers do).
The lower layers are ours (already unpacked), but their contents came from the image, so the
target is looked up with openat2 RESOLVE_IN_ROOT in each lower's root and opened O_NOFOLLOW:
a lower layer's symlink ``etc -> /etc`` cannot turn the copy into a read of a host file.

Overlay semantics are followed for the final component: a whiteout (0/0 character device) in a
higher lower layer, or an opaque parent directory, hides the layers below it. Opaque or
whited-out ancestors further up are not consulted (hardlink targets in real layers name plain
files next to their siblings).
"""
from __future__ import annotations

import errno
import os
import stat

from minictr.errors import ImageError
from minictr.image.safepath import ScopedRoot, split_path

_OPAQUE = ("trusted.overlay.opaque", "user.overlay.opaque")


def copy_from_lowers(lowers: list[str], target: str, dst_pfd: int, dst_name: str,
                     kernel) -> bool:
    """Copy ``target`` (clean relative path) from the topmost lower layer that has it to
    ``dst_name`` in ``dst_pfd``. Returns False if no lower layer shows it."""
    parent, name = split_path(target)
    for lower in lowers:
        root = ScopedRoot(lower, kernel, create=False)
        try:
            found = _copy_one(root, parent, name, dst_pfd, dst_name)
        finally:
            root.close()
        if found is not None:
            return found
    return False


def _copy_one(root: ScopedRoot, parent: str, name: str, dst_pfd: int, dst_name: str):
    """True: copied; False: hidden here (stop looking); None: not in this layer."""
    try:
        pfd = root.dir_fd(parent, create=False)
    except (OSError, ImageError):      # missing, or not a directory in this layer
        return None
    st = root.lstat(pfd, name)
    if st is None:
        return False if _is_opaque(pfd) else None
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return False                                   # a whiteout hides lower copies
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(name, dir_fd=pfd), dst_name, dir_fd=dst_pfd)
        return True
    if not stat.S_ISREG(st.st_mode):
        return False
    # O_NONBLOCK: should the name have been swapped for a FIFO, open must not hang
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=pfd)
    try:
        if not stat.S_ISREG(os.fstat(src).st_mode):
            return False
        dst = os.open(dst_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                      | os.O_CLOEXEC, 0o600, dir_fd=dst_pfd)
        try:
            _copy_data(src, dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return True


def _copy_data(src: int, dst: int) -> None:
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


def _is_opaque(dir_fd: int) -> bool:
    for key in _OPAQUE:
        try:
            if os.getxattr(dir_fd, key) == b"y":
                return True
        except OSError:
            continue
    return False
