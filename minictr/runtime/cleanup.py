"""Removing a container's writable layer (its overlay upper and work directories)."""
from __future__ import annotations

import os

from minictr.runtime import syscalls as sc


def remove_tree(path: str, rootless: bool, linux: dict, kernel=None,
                userns_fd: int | None = None) -> None:
    """Remove a container's writable layer.

    overlayfs leaves its work/work directory with mode 000, and in a rootless container with
    subordinate ids the files belong to ids the user cannot touch on the host. So, rootless,
    the removal runs in a fresh user namespace with the container's own id maps, where we are
    root over those ids (what `podman unshare rm` does)."""
    if not os.path.lexists(path):
        return
    maps = (linux.get("uidMappings") or [], linux.get("gidMappings") or [])
    _rmtree_forcing(path)
    if not os.path.lexists(path) or not rootless or len(maps[0]) <= 1:
        return
    # Files of subordinate ids remain (a process inside ran as a non-root user): only a user
    # namespace with the container's maps may remove those. Most containers run as root inside,
    # which is the caller on the host, so the first pass removed everything and no newuidmap
    # (two setuid helpers, ~8 ms) was needed.
    kernel = kernel or sc.Syscalls()
    if userns_fd is not None and _remove_in_namespace(kernel, path, userns_fd):
        return
    sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
    pid = kernel.clone(sc.CLONE_NEWUSER)
    if pid == 0:
        code = 1
        try:
            os.close(sync_w)
            if os.read(sync_r, 1) == b"G":
                _rmtree_forcing(path)
                code = 0
        finally:
            os._exit(code)
    os.close(sync_r)
    try:
        from minictr.runtime import idmap

        idmap.write_id_maps(kernel, pid, *maps, None)
        os.write(sync_w, b"G")
    finally:
        os.close(sync_w)
        os.waitpid(pid, 0)


def _rmtree_forcing(path: str) -> None:
    """rmtree, after making every directory we own searchable and writable (overlayfs's
    work/work is mode 000)."""
    def open_up(directory: str) -> None:
        try:
            os.chmod(directory, 0o700)
            entries = list(os.scandir(directory))
        except OSError:
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                open_up(entry.path)

    open_up(path)
    rmtree(path)


def _remove_in_namespace(kernel, path: str, userns_fd: int) -> bool:
    """Remove ``path`` from a child that joins the container's own user namespace (held open
    since the container was created, api._hold_user_namespace): we own that namespace, so
    joined we hold every capability in it (user_namespaces(7)) over the container's ids, and
    no second newuidmap/newgidmap is needed. setns(2) of a user namespace needs a
    single-threaded caller: the child is one. False if it could not (the caller then maps the
    ids again)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            kernel.setns(userns_fd, sc.CLONE_NEWUSER)
            _rmtree_forcing(path)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0 and not os.path.lexists(path)


def rmtree(path: str) -> None:
    """shutil.rmtree(path, ignore_errors=True), without importing shutil (it imports fnmatch,
    re, zlib, bz2 and lzma: ~3 ms of every `run --rm`). As shutil's, it works through directory
    fds (os.fwalk) and never follows a symbolic link: a container's writable layer may hold
    links to anywhere on the host, and only the links are removed."""
    # (no contextlib.suppress: contextlib and functools are ~1 ms of every start's imports)
    try:
        # bottom up; a link to a directory is listed in dirs but not walked into
        for _, dirs, files, dirfd in os.fwalk(path, topdown=False):
            for name in files:
                _unlink(name, dirfd)
            for name in dirs:
                try:
                    os.rmdir(name, dir_fd=dirfd)
                except NotADirectoryError:
                    _unlink(name, dirfd)
                except OSError:
                    pass
    except OSError:
        pass
    try:
        os.rmdir(path)
    except NotADirectoryError:
        _unlink(path, None)
    except OSError:
        pass


def _unlink(name: str, dirfd: int | None) -> None:
    try:
        os.unlink(name, dir_fd=dirfd)
    except OSError:
        pass
