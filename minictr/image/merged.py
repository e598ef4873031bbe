"""Reading a file from an image's merged tree without mounting it.

The lookup follows overlayfs's rules (Documentation/filesystems/overlayfs.rst, "Directories",
"whiteouts and opaque directories"): a name is taken from the topmost layer that has it; a
whiteout (a 0/0 character device, or a file with the ``overlay.whiteout`` xattr) hides it in
every layer below; a directory merges with the same directory below unless it is opaque (xattr
``trusted.overlay.opaque`` or, rootless, ``user.overlay.opaque`` = "y"), and a non-directory
above stops the merge.

Symbolic links are resolved by this code, inside the image root, as the container would see
them ('..' stops at the root, absolute targets restart from it): the host's path resolution
never follows a link, so an image cannot make the launcher read a host file.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat

MAX_SYMLINKS = 40             # path_resolution(7): Linux gives up after 40 links (ELOOP)
_OPAQUE = ("trusted.overlay.opaque", "user.overlay.opaque")
_WHITEOUT = ("trusted.overlay.whiteout", "user.overlay.whiteout")


def _xattr(path: str, names: tuple[str, ...]) -> bytes | None:
    for name in names:
        with contextlib.suppress(OSError):
            return os.getxattr(path, name, follow_symlinks=False)
    return None


def is_whiteout(path: str, st: os.stat_result) -> bool:
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return True
    return stat.S_ISREG(st.st_mode) and st.st_size == 0 and _xattr(path, _WHITEOUT) is not None


def is_opaque(path: str) -> bool:
    return _xattr(path, _OPAQUE) == b"y"


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise


class MergedView:
    """The union of layer directories ``dirs``, topmost first."""

    def __init__(self, dirs: list[str]):
        self._root = self._merge_dirs(dirs)

    @staticmethod
    def _merge_dirs(candidates: list[str]) -> list[str]:
        """The stack of real directories that make one merged directory: each candidate that
        is a directory, down to (and including) the first opaque one."""
        stack = []
        for path in candidates:
            st = _lstat(path)
            if st is None:
                continue
            if not stat.S_ISDIR(st.st_mode):
                break           # a file or whiteout hides whatever is below it
            stack.append(path)
            if is_opaque(path):
                break
        return stack

    def _lookup(self, stack: list[str], name: str):
        """('dir', stack) | ('entry', path, stat) | None, for ``name`` in a merged dir."""
        for i, directory in enumerate(stack):
            path = os.path.join(directory, name)
            st = _lstat(path)
            if st is None:
                continue
            if is_whiteout(path, st):
                return None
            if stat.S_ISDIR(st.st_mode):
                return ("dir", self._merge_dirs([path] + [os.path.join(d, name)
                                                          for d in stack[i + 1:]]))
            return ("entry", path, st)
        return None

    def find(self, path: str) -> str | None:
        """The real path of the regular file at ``path`` in the merged tree, or None."""
        todo = [c for c in path.split("/") if c]
        todo.reverse()                     # a stack: the next component is last
        parents: list[list[str]] = []      # merged dirs from the root to the current one
        current = self._root
        links = 0
        while todo:
            name = todo.pop()
            if name == ".":
                continue
            if name == "..":
                current = parents.pop() if parents else self._root
                continue
            hit = self._lookup(current, name)
            if hit is None:
                return None
            if hit[0] == "dir":
                if not todo:
                    return None            # a directory, not a file
                parents.append(current)
                current = hit[1]
                continue
            _, real, st = hit
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    return None
                target = os.readlink(real)
                if target.startswith("/"):
                    parents, current = [], self._root
                todo.extend(reversed([c for c in target.split("/") if c]))
                continue
            if todo:
                return None                # a file used as a directory: ENOTDIR
            return real if stat.S_ISREG(st.st_mode) else None
        return None

    def read_file(self, path: str, max_size: int) -> bytes | None:
        real = self.find(path)
        if real is None:
            return None
        # O_NOFOLLOW: the path's directories were checked to be real directories of
        # immutable layers; the last component must not be swapped for a link either
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                return None
            if st.st_size > max_size:
                from minictr.errors import ImageError

                raise ImageError(f"{path} in the image is {st.st_size} bytes, more than the "
                                 f"{max_size} minictr reads")
            return f.read(max_size + 1)[:max_size]
