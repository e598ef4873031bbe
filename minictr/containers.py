"""The commands on existing containers: ps, stats, exec, stop, logs, kill, rm.

`minictr run` (api.py) makes a container; these find it by name or id in the state directory
and act on it through the runtime's lifecycle (runtime/lifecycle.py), the same calls
`minictr-runc` makes. Imports are lazy, as in api.py.
"""
from __future__ import annotations

import os

from minictr.api import (ANNOTATION_IMAGE, ANNOTATION_NAME, Explain, _remove_writable_layer,
                         _states, log_path, state_root)
from minictr.config import Paths
from minictr.errors import MinictrError, RuntimeSetupError, UsageError


def find_container(root, name: str) -> str:
    """A container's id from its name, full id or a unique id prefix."""
    from minictr.runtime.state import NoSuchContainer

    by_name = root.name_to_id(name)
    if by_name and os.path.isdir(root.dir(by_name)):
        return by_name
    ids = root.ids()
    if name in ids:
        return name
    matches = [cid for cid in ids if cid.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UsageError(f"{name!r} matches {len(matches)} containers", hint="give more of the id")
    raise NoSuchContainer(name)


def ps(paths: Paths, all_: bool = False, stats: bool = False, warn: Explain = None) -> list[dict]:
    rows = []
    for st in _states(paths, warn):
        if not all_ and st["status"] not in ("running", "created", "paused"):
            continue
        notes = st["annotations"]
        try:
            args = state_root(paths).read_config(st["id"])["process"]["args"]
            exit_code = state_root(paths).read(st["id"]).get("exit_code")
        except MinictrError:
            args, exit_code = [], None
        row = {"id": st["id"], "name": notes.get(ANNOTATION_NAME, st["id"][:12]),
               "image": notes.get(ANNOTATION_IMAGE, ""), "pid": st["pid"] or None,
               "status": st["status"], "command": args, "created": st["created"],
               "exit_code": exit_code if st["status"] == "stopped" else None,
               "labels": _labels(notes)}
        if stats:
            row["stats"] = _cgroup_stats(paths, st["id"])
        rows.append(row)
    return sorted(rows, key=lambda r: r["created"])


def _labels(annotations: dict) -> dict:
    import json

    from minictr.spec.builder import LABELS_ANNOTATION

    try:
        return json.loads(annotations.get(LABELS_ANNOTATION) or "{}")
    except ValueError:
        return {}


def _cgroup_stats(paths: Paths, container_id: str) -> dict | None:
    from minictr.runtime import cgroups

    st = state_root(paths).read(container_id)
    if not st.get("cgroup_paths"):
        return None
    try:
        return cgroups.Cgroup.from_paths(st["cgroup_paths"]).stats()
    except OSError:
        return None


def stats(paths: Paths, name: str) -> dict:
    from minictr.runtime import lifecycle

    root = state_root(paths)
    cid = find_container(root, name)
    if lifecycle.status(root, root.read(cid)) != "running":
        raise MinictrError(f"container {name} is not running")
    usage = _cgroup_stats(paths, cid)
    if usage is None:
        raise MinictrError(f"container {name} has no cgroup to read usage from",
                           hint="rootless containers without a delegated cgroup have none")
    return {"id": cid, "name": root.read(cid)["annotations"].get(ANNOTATION_NAME), **usage}


def exec_(paths: Paths, name: str, command: list[str], *, env=(), tty=False, interactive=False,
          workdir=None, user=None) -> int:
    """Run ``command`` in a running container, through the spawn path its first process took."""
    from minictr.runtime import lifecycle, spawn
    from minictr.runtime.process import Supervisor
    from minictr.spec.process import exec_process_settings

    if not command:
        raise UsageError("exec needs a command", hint="minictr exec NAME sh")
    root = state_root(paths)
    cid = find_container(root, name)
    spec = root.read_config(cid)
    process = exec_process_settings(spec["process"], command, list(env), tty, workdir, user)
    with Supervisor(None) as sup:
        made = lifecycle.exec_process(root, cid, process, attached=True,
                                      stdin_null=not (interactive or tty), on_spawned=sup.attach)
        spawn.wait_for_exec(made.exec_pipe, command[0])
        code = sup.relay_tty(made.console, stdin=0 if interactive else None) \
            if made.console is not None else sup.wait()
    if made.console is not None:
        os.close(made.console)
    return code


def stop(paths: Paths, name: str, *, signal_name: str | None = None,
         timeout: int | None = None) -> None:
    """docker stop: the container's stop signal (--stop-signal, the image's StopSignal, else
    SIGTERM), then SIGKILL if it is still running after the timeout (--stop-timeout, else 10
    s; -1 waits for ever). A stopped container is left as it is."""
    import signal

    from minictr.runtime import lifecycle
    from minictr.runtime.state import parse_signal
    from minictr.spec.builder import (DEFAULT_STOP_TIMEOUT, STOP_SIGNAL_ANNOTATION,
                                      STOP_TIMEOUT_ANNOTATION)

    root = state_root(paths)
    cid = find_container(root, name)
    st = root.read(cid)
    if lifecycle.status(root, st) == "stopped":
        return
    notes = st.get("annotations") or {}
    sig = parse_signal(signal_name or notes.get(STOP_SIGNAL_ANNOTATION) or "TERM")
    if timeout is None:
        timeout = int(notes.get(STOP_TIMEOUT_ANNOTATION, DEFAULT_STOP_TIMEOUT))
    try:
        lifecycle.kill(root, cid, sig)
        if lifecycle.wait_gone(st["pid"], st.get("pid_ticks"),
                               float("inf") if timeout < 0 else timeout):
            return
        lifecycle.kill(root, cid, signal.SIGKILL)
    except lifecycle.NotRunning:
        return
    lifecycle.wait_gone(st["pid"], st.get("pid_ticks"))


def logs(paths: Paths, name: str, *, follow: bool = False):
    """The detached container's output (run -d), as chunks of bytes; with ``follow``, until the
    container has stopped (or is removed)."""
    import select

    from minictr.errors import NotFound
    from minictr.runtime import lifecycle
    from minictr.runtime.state import StateError

    root = state_root(paths)
    cid = find_container(root, name)
    try:
        fd = os.open(log_path(paths, cid), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"container {name} has no log",
                       hint="only a detached container (run -d) writes one; an attached run's "
                       "output went to its terminal") from None
    try:
        while True:
            data = os.read(fd, 65536)
            if data:
                yield data
                continue
            if not follow:
                return
            try:
                st = root.read(cid)
                running = lifecycle.status(root, st) != "stopped"
            except StateError:
                running = False               # removed (--rm): what was written is all
            if not running:
                follow = False                # read what is left, then stop
                continue
            try:
                pidfd = os.pidfd_open(st["pid"])
            except ProcessLookupError:
                continue
            try:
                select.select([pidfd], [], [], 0.2)   # new output, or its exit, wakes us
            finally:
                os.close(pidfd)
    finally:
        os.close(fd)


def kill(paths: Paths, name: str, signal_name: str) -> None:
    from minictr.runtime import lifecycle
    from minictr.runtime.state import parse_signal

    root = state_root(paths)
    lifecycle.kill(root, find_container(root, name), parse_signal(signal_name))


def rm(paths: Paths, name: str, force: bool = False, warn: Explain = None) -> None:
    """Remove a stopped container (with force, a running one) and its writable layer."""
    from minictr.runtime import lifecycle

    root = state_root(paths)
    cid = find_container(root, name)
    try:
        linux = root.read_config(cid).get("linux", {})
    except MinictrError:
        linux = {}
    try:
        now = lifecycle.status(root, root.read(cid))
    except MinictrError:
        now = "stopped"
        if not force:
            raise
    if now in ("running", "paused", "created") and not force:
        raise RuntimeSetupError(f"container {name} is {now}",
                                hint="stop it first, or use minictr rm -f")
    lifecycle.delete(root, cid, force=True, warn=warn)
    _remove_writable_layer(paths, cid, linux)
