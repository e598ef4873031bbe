"""An image's layers seen as overlayfs merges them, read through directory fds, never mounted.

The lookup follows overlayfs's rules (Documentation/filesystems/overlayfs.rst, "Directories",
"whiteouts and opaque directories"): a name is taken from the topmost layer that has it; a
whiteout (a 0/0 character device, or a file with the ``overlay.whiteout`` xattr) hides it in
every layer below; a directory merges with the same directory below unless it is opaque (xattr
``trusted.overlay.opaque`` or, rootless, ``user.overlay.opaque`` = "y"), and a non-directory
above stops the merge.

Two users: the store reads a file of an image (``read_file``: /etc/passwd for ``--user``), and
the unpacker looks into the lower layers of the layer it writes (copy-up, image/copyup.py).
Both resolve symbolic links with :func:`resolve_dir`, inside the image root, as the container
would see them ('..' stops at the root, absolute targets restart from it). The host's path
resolution never follows a link: every open is one name relative to a directory fd, with
O_NOFOLLOW, so an image cannot make the launcher read or write a host file.
"""
from __future__ import annotations

import os
import stat

from minictr.errors import ImageError

MAX_SYMLINKS = 40             # path_resolution(7): Linux gives up after 40 links (ELOOP)
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
_WHITEOUT = ("trusted.overlay.whiteout", "user.overlay.whiteout")
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
O_SUBDIR = O_DIR | os.O_NOFOLLOW
CACHE_LIMIT = 256             # merged directories kept open between lookups
MAX_READ_FILE = 64 << 20      # the most read_file reads whole, by default (an image's /etc file)

DIR, LINK, OTHER, MISSING = "dir", "link", "other", "missing"
_END_OF_LINK = object()       # marks where a link's expansion ends in resolve_dir's work list
ATTACK_HINT = "the image's layer is malformed or crafted to write outside its root"


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def is_opaque(dir_fd: int) -> bool:
    for key in OPAQUE_XATTRS:          # (no contextlib: ~1 ms of imports on a GPU run's path)
        try:
            if os.getxattr(dir_fd, key) == b"y":
                return True
        except OSError:
            pass
    return False


def is_whiteout(dir_fd: int, name: str, st: os.stat_result) -> bool:
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return True
    if not (stat.S_ISREG(st.st_mode) and st.st_size == 0):
        return False
    try:    # O_NONBLOCK: should the name have become a FIFO since the lstat, do not hang
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError:
        return False
    try:
        for key in _WHITEOUT:
            try:
                os.getxattr(fd, key)
                return True
            except OSError:
                pass
        return False
    finally:
        os.close(fd)


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def resolve_dir(path: str, root, step, make=None, strict: bool = False):
    """Walk the directory ``path`` from the ``root`` handle, resolving symlinks inside the tree.

    ``step(handle, name)`` says what ``name`` is in the directory ``handle``: ``(DIR, child
    handle)``, ``(LINK, target)``, ``(OTHER, None)`` or ``(MISSING, None)``. Returns ``(handle,
    path without symlinks)``, or None when a directory is missing. With ``make(handle, name) ->
    child handle`` missing directories are made instead, except one named by a link's target
    (GNU tar refuses to extract through a dangling link too). A non-directory on the way, a
    link loop or (with ``make``) a dangling link give None, or raise ImageError with ``make``
    or ``strict``.
    """
    todo = path.split("/")[::-1]
    chain, names = [root], []
    links = in_link = 0
    strict = strict or make is not None
    while todo:
        name = todo.pop()
        if name is _END_OF_LINK:
            in_link -= 1
            continue
        if name in ("", "."):
            continue
        if name == "..":
            if names:
                chain.pop()
                names.pop()
            continue
        kind, value = step(chain[-1], name)
        if kind == LINK:
            links += 1
            if links > MAX_SYMLINKS:
                return _fail(strict, path, "too many levels of symlinks")
            if value.startswith("/"):
                del chain[1:], names[:]
            todo.append(_END_OF_LINK)
            in_link += 1
            todo.extend(value.split("/")[::-1])
            continue
        if kind == MISSING and in_link:
            return _fail(strict, path, f"{join('/'.join(names), name)} is missing: {path} goes "
                         "through a symlink to nothing inside the image")
        if kind == MISSING:
            if make is None:
                return None
            value = make(chain[-1], name)
        elif kind != DIR:
            return _fail(strict, path, f"{join('/'.join(names), name)} is not a directory")
        chain.append(value)
        names.append(name)
    return chain[-1], "/".join(names)


def _fail(strict: bool, path: str, why: str):
    if not strict:
        return None
    raise ImageError(f"layer: cannot resolve {path}/...: {why}", hint=ATTACK_HINT)


class MergedTree:
    """Read-only layer directories ``dirs`` (topmost first) as one tree. Lookups take clean
    paths without symlinks (resolve_dir makes them). Directory fds are cached per path; the
    layers must not change while the tree is open (stored layers never do)."""

    def __init__(self, dirs: list[str]):
        self._roots: list[int] = []
        try:
            for d in dirs:
                self._roots.append(os.open(d, O_DIR))
        except BaseException:
            self.close()
            raise
        self._cache: dict[str, list[int]] = {"": self._merge(self._roots)}
        self._links: dict[tuple[int, int], list[str]] | None = None

    def close(self) -> None:
        self.trim(0)
        for fd in self._roots:
            os.close(fd)
        self._roots = []

    def __enter__(self) -> "MergedTree":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def trim(self, limit: int = CACHE_LIMIT) -> None:
        """Close cached directories beyond ``limit``; call only between lookups."""
        if len(self._cache) <= limit:
            return
        roots = set(self._roots)
        for stack in self._cache.values():
            for fd in stack:
                if fd not in roots:
                    os.close(fd)
        self._cache = {"": self._cache[""]} if self._roots else {}

    @staticmethod
    def _merge(fds: list[int]) -> list[int]:
        """The real directories making one merged directory: down to the first opaque one."""
        for i, fd in enumerate(fds):
            if is_opaque(fd):
                return fds[:i + 1]
        return fds

    def entry(self, parent: str, name: str):
        """What ``name`` is in the merged directory ``parent``: None (absent or whited out),
        ``(DIR, None, st)``, or ``(LINK|OTHER, (layer dir fd, name), st)`` from the topmost
        layer that has it."""
        stack = self.dir_stack(parent)
        for i, fd in enumerate(stack or ()):
            st = lstat_at(fd, name)
            if st is None:
                continue
            if is_whiteout(fd, name, st):
                return None
            if stat.S_ISDIR(st.st_mode):
                path = join(parent, name)
                if path not in self._cache:
                    self._cache[path] = self._subdirs(stack[i:], name)
                return DIR, None, st
            return (LINK if stat.S_ISLNK(st.st_mode) else OTHER), (fd, name), st
        return None

    @staticmethod
    def _subdirs(stack: list[int], name: str) -> list[int]:
        """``name`` opened in each layer of ``stack`` (the first has it as a directory), down
        to an opaque one or to a layer where it is something else (a file or a whiteout)."""
        out = []
        for fd in stack:
            st = lstat_at(fd, name)
            if st is None:
                continue
            if not stat.S_ISDIR(st.st_mode):
                break
            out.append(os.open(name, O_SUBDIR, dir_fd=fd))
            if is_opaque(out[-1]):
                break
        return out

    def dir_stack(self, path: str) -> list[int] | None:
        """The layers' fds making the merged directory ``path`` (clean, no symlinks), topmost
        first, or None if it is not a directory in the merged tree."""
        stack = self._cache.get(path)
        if stack is not None:
            return stack
        parent, _, name = path.rpartition("/")
        hit = self.entry(parent, name) if name else None
        return self._cache.get(path) if hit and hit[0] == DIR else None

    def names_of(self, st: os.stat_result) -> list[str]:
        """Every path (in its own layer) of the file ``st`` describes, when it has several
        names. The first call walks the layers once (through fds, following no link)."""
        if self._links is None:
            self._links = {}
            for root in self._roots:
                for top, _, files, top_fd in os.fwalk(".", dir_fd=root):
                    for name in files:
                        fst = lstat_at(top_fd, name)
                        if fst is not None and fst.st_nlink > 1 and stat.S_ISREG(fst.st_mode):
                            path = os.path.normpath(os.path.join(top, name))
                            self._links.setdefault((fst.st_dev, fst.st_ino), []).append(path)
        return self._links.get((st.st_dev, st.st_ino), [])

    def step(self, parent: str, name: str):
        """resolve_dir's step on canonical paths."""
        hit = self.entry(parent, name)
        if hit is None:
            return MISSING, None
        if hit[0] == DIR:
            return DIR, join(parent, name)
        if hit[0] == LINK:
            return LINK, os.readlink(hit[1][1], dir_fd=hit[1][0])
        return OTHER, None

    def find(self, path: str):
        """``(kind, (layer dir fd, name), stat)`` of the non-directory at ``path``, following
        symlinks, or None (missing, a directory, a link loop)."""
        for _ in range(MAX_SYMLINKS + 1):
            parent, _, name = path.rpartition("/")
            found = resolve_dir(parent, "", self.step)
            if found is None or name in ("", ".", ".."):
                return None
            hit = self.entry(found[1], name)
            if hit is None or hit[0] == DIR:
                return None
            if hit[0] == OTHER:
                return hit
            target = os.readlink(hit[1][1], dir_fd=hit[1][0])
            path = target if target.startswith("/") else join(found[1], target)
        return None

    def read_file(self, path: str, max_size: int) -> bytes | None:
        """The content of the regular file at ``path``, or None if there is none."""
        self.trim()
        hit = self.find(path.lstrip("/"))
        if hit is None or not stat.S_ISREG(hit[2].st_mode):
            return None
        dir_fd, name = hit[1]
        # O_NONBLOCK: should it have been swapped for a FIFO, open must not hang
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                return None
            if st.st_size > max_size:
                raise ImageError(f"{path} in the image is {st.st_size} bytes, more than the "
                                 f"{max_size} minictr reads")
            return f.read(max_size + 1)[:max_size]


def read_file(dirs: list[str], path: str, max_size: int = MAX_READ_FILE) -> bytes | None:
    """The content of ``path`` in the merged tree of ``dirs`` (topmost first), or None if it is
    not a regular file there."""
    with MergedTree(dirs) as tree:
        return tree.read_file(path, max_size)


__all__ = ["MergedTree", "read_file", "resolve_dir"]
