"""Removing what a container leaves: its state, its writable layer, a dead launcher's cgroup."""
from __future__ import annotations

import json
import os
import signal
import time

from minictr.errors import MinictrError, RuntimeSetupError
from minictr.runtime import state as state_mod
from minictr.runtime import syscalls as sc


def remove(paths, name: str, force: bool = False) -> None:
    """Remove a stopped container's state and writable layer (with force, kill it first)."""
    st = state_mod.find(paths.state, name)
    if st.get("status") == "running":
        if not force:
            raise RuntimeSetupError(f"container {name} is running",
                                    hint="stop it first, or use minictr rm -f")
        try:
            os.kill(st["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
        for _ in range(100):                 # its launcher reaps it and cleans up
            if not state_mod.alive(st["pid"], st.get("pid_start")):
                break
            time.sleep(0.05)
    if st.get("cgroup_paths"):
        # A launcher killed with SIGKILL could not remove its container's cgroup: do it here.
        from minictr.runtime import cgroups

        try:
            cgroups.Cgroup.from_paths(st["cgroup_paths"]).destroy()
        except (OSError, MinictrError):
            pass
    config = read_config(paths.state, st["id"])
    rmtree(state_mod.container_dir(paths.state, st["id"]))
    remove_tree(os.path.join(paths.containers, st["id"]), paths.rootless,
                config.get("linux", {}) if config else {})


def read_config(state_root: str, container_id: str) -> dict | None:
    try:
        with open(os.path.join(state_mod.container_dir(state_root, container_id),
                               "config.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def remove_tree(path: str, rootless: bool, linux: dict, kernel=None) -> None:
    """Remove a container's writable layer.

    overlayfs leaves its work/work directory with mode 000, and in a rootless container with
    subordinate ids the files belong to ids the user cannot touch on the host. So, rootless,
    the removal runs in a fresh user namespace with the container's own id maps, where we are
    root over those ids (what `podman unshare rm` does)."""
    if not os.path.lexists(path):
        return
    maps = (linux.get("uidMappings") or [], linux.get("gidMappings") or [])
    if not rootless or len(maps[0]) <= 1:
        _rmtree_forcing(path)
        return
    kernel = kernel or sc.Syscalls()
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

        idmap.write_id_maps(pid, *maps, None)
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


def rmtree(path: str) -> None:
    import shutil        # only at cleanup: it is not needed to start the container

    shutil.rmtree(path, ignore_errors=True)
