"""Filesystem access confined to one directory: every operation is relative to a dir fd.

An image is untrusted: its tar can name ``../../etc/passwd``, plant a symlink ``etc -> /etc``
and then write ``etc/shadow``, or replace a directory by a symlink after files were written
into it. The classic defences that check a path string and then use it race with, or are fooled
by, symlinks. Here nothing is ever opened by a host path built from tar names:

* a parent directory is opened with ``openat2(root_fd, path, O_DIRECTORY, RESOLVE_IN_ROOT |
  RESOLVE_NO_MAGICLINKS)`` (openat2(2)): the kernel resolves ``..`` and every symlink as if
  ``root_fd`` were ``/`` (the way the container itself will see them), so resolution cannot
  leave the layer directory, and ``/proc/self/fd``-style magic links are refused;
* the last component is always a single name used with that parent fd and a no-follow form of
  the call (``O_CREAT|O_EXCL|O_NOFOLLOW``, ``mkdirat``, ``symlinkat``, ``linkat`` without
  ``AT_SYMLINK_FOLLOW``, ``fchownat``/``utimensat`` with ``AT_SYMLINK_NOFOLLOW``), so a symlink
  in the tar is never followed when creating, chmod-ing, chown-ing or timestamping an entry.
"""
from __future__ import annotations

import errno
import os
import posixpath
import stat

from minictr.errors import ImageError
from minictr.image.merged import ATTACK_HINT
from minictr.runtime import syscalls

RESOLVE_SCOPED = syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS
RESOLVE_PLAIN = RESOLVE_SCOPED | syscalls.RESOLVE_NO_SYMLINKS
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
DIR_CACHE_LIMIT = 256       # open parent-dir fds kept between entries (tar is grouped by dir)


def clean_path(name: str) -> str:
    """The tar name as a path relative to the root, ``..`` clamped at ``/``.

    ``/etc/passwd``, ``./etc/passwd`` and ``../../etc/passwd`` all become ``etc/passwd``: the
    same answer RESOLVE_IN_ROOT gives, and what containerd and GNU tar do with such names.
    ``""`` is the root itself.
    """
    path = posixpath.normpath("/" + name)
    return path.lstrip("/")


def split_path(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return parent, name


class NewFileTraits:
    __slots__ = ("gid_is_ours", "default_acl")

    def __init__(self, gid_is_ours: bool, default_acl: bool):
        self.gid_is_ours, self.default_acl = gid_is_ours, default_acl


class ScopedRoot:
    """The directory tree of the layer being unpacked, which tar names are resolved inside of.

    ``resolve_missing(path, create) -> fd | None`` is asked for a directory that is not in this
    tree (ENOENT) or has a non-directory on its way (ENOTDIR): the unpacker looks into the
    layers below and makes what is missing (image/copyup.py). Its fds are cached here too."""

    def __init__(self, path: str, kernel, resolve_missing):
        self.path = path
        self.kernel = kernel
        self.resolve_missing = resolve_missing
        self.fd = os.open(path, O_DIR)
        self._dirs: dict[str, int] = {"": self.fd}
        self._traits: dict[int, NewFileTraits] = {}     # by cached dir fd
        self._plain: set[str] = set()       # paths of real directories, no symlink on the way
        self._stale = False
        self.euid, self.egid = os.geteuid(), os.getegid()

    def close(self) -> None:
        self._forget_dirs()
        os.close(self.fd)

    def _forget_dirs(self) -> None:
        for path, fd in self._dirs.items():
            if path:
                os.close(fd)
        self._dirs = {"": self.fd}
        self._traits = {}
        self._plain = set()

    def new_file_traits(self, dir_fd: int) -> "NewFileTraits":
        """What a file created in the cached directory ``dir_fd`` gets without being told:
        whether its group is ours, whether a default ACL shapes its mode. Known for as long
        as the fd is cached; the unpacker changes a directory's owner, mode and xattrs only
        at the end (or when making it, before its fd is cached)."""
        traits = self._traits.get(dir_fd)
        if traits is None:
            try:
                os.getxattr(dir_fd, "system.posix_acl_default")
                acl = True
            except OSError as err:
                acl = err.errno not in (errno.ENODATA, errno.ENOTSUP)
            traits = NewFileTraits(os.fstat(dir_fd).st_gid == self.egid, acl)
            self._traits[dir_fd] = traits
        return traits

    def plain(self, path: str) -> bool:
        """Whether directory ``path`` is in this tree with no symlink on its way: then no name
        but its own components decides where it resolves. Known until something is removed
        (a removal drops it with the cached fds, at the next begin_entry)."""
        if not path or path in self._plain:
            return True
        if path in self._dirs:
            return False        # resolved through a symlink, or through the layers below
        try:
            fd = self.kernel.openat2(self.fd, path, O_DIR, RESOLVE_PLAIN)
        except OSError:
            return False
        self._dirs[path] = fd   # where dir_fd would resolve it: no symlink to follow
        self._plain.add(path)
        return True

    def begin_entry(self) -> None:
        """Drop cached dir fds when they may be wrong or too many. Only here, between entries,
        so an fd handed out for the current entry is never closed under its user."""
        if self._stale or len(self._dirs) > DIR_CACHE_LIMIT:
            self._forget_dirs()
            self._stale = False

    def entry_removed(self) -> None:
        """Something in the tree was replaced: cached parents may now name dead directories."""
        self._stale = True

    # ---------------------------------------------------------------- resolution
    def dir_fd(self, path: str, create: bool = True, *, below: bool = True) -> int:
        """An fd for directory ``path`` (clean, relative), resolved inside the root. A missing
        directory is resolve_missing's to find or make; with ``create=False`` it is only
        looked up, and FileNotFoundError raised if there is none. ``below=False``: in this
        tree only, without asking resolve_missing."""
        fd = self._dirs.get(path)
        if fd is not None:
            return fd
        try:
            try:
                fd = self.kernel.openat2(self.fd, path, O_DIR, RESOLVE_PLAIN)
                self._plain.add(path)
            except OSError as err:
                if err.errno != errno.ELOOP:
                    raise
                fd = self.kernel.openat2(self.fd, path, O_DIR, RESOLVE_SCOPED)
        except OSError as err:
            if err.errno not in (errno.ENOENT, errno.ENOTDIR) or \
                    (not below and err.errno == errno.ENOTDIR):
                raise _path_error(path, err) from err
            fd = self.resolve_missing(path, create) if below else None
            if fd is None:
                raise FileNotFoundError(errno.ENOENT, f"{path}: no such directory") from err
            if self._dirs.get(path) == fd:
                return fd
            fd = os.dup(fd)     # the resolver cached it under its path without symlinks
        self._dirs[path] = fd
        return fd

    def child_dir(self, path: str, parent_fd: int, name: str) -> int:
        """The directory ``name`` in ``parent_fd`` (which is ``path``'s parent), opened without
        following a symlink, and cached as ``path``."""
        fd = self._dirs.get(path)
        if fd is None:
            fd = self._dirs[path] = os.open(name, O_DIR | os.O_NOFOLLOW, dir_fd=parent_fd)
        return fd

    def lstat(self, pfd: int, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def remove(self, pfd: int, name: str, st: os.stat_result) -> None:
        """Remove ``name`` in ``pfd``; a directory tree is removed with shutil.rmtree's fd-based
        walk, which never follows symlinks inside it."""
        if stat.S_ISDIR(st.st_mode):
            import shutil   # rarely needed: not on every unpack's import path

            shutil.rmtree(name, dir_fd=pfd)
        else:
            os.unlink(name, dir_fd=pfd)
        self.entry_removed()

    def open_dir_nofollow(self, path: str) -> int | None:
        """A new fd for ``path`` only if it is still a real directory (not a symlink) in the
        root: used when directory metadata is applied at the end, after later entries may have
        replaced the directory by a symlink (containerd CVE-2021-32760 chmod-ed through one).
        Call it after begin_entry(), so that no cached parent is stale."""
        if not path:
            return os.dup(self.fd)
        parent, name = split_path(path)
        try:
            pfd = self.dir_fd(parent, create=False)
            return os.open(name, O_DIR | os.O_NOFOLLOW, dir_fd=pfd)
        except (OSError, ImageError):
            return None


def _path_error(path: str, err: OSError) -> ImageError:
    why = {errno.ENOTDIR: "a path component is not a directory",
           errno.ELOOP: "too many levels of symlinks",
           errno.EXDEV: "the path leaves the layer root",
           errno.ENOENT: "no such directory"}.get(err.errno, os.strerror(err.errno or 0))
    return ImageError(f"layer: cannot open directory {path or '/'}: {why}", hint=ATTACK_HINT)
