"""Container state: one directory per container under the state dir, holding state.json.

The state file is replaced atomically (write a temp file, rename), so `minictr ps` never reads a
half-written one. A container whose launcher died (pid gone) is reported as "exited" and is cleaned
up by `minictr rm`. The shape follows the OCI runtime state (runtime.md "State"): ociVersion, id,
status (creating, created, running, stopped), pid, bundle, annotations; plus minictr's own fields.
"""
from __future__ import annotations

import json
import os
import signal as signal_mod
import time

from minictr.errors import MinictrError, UsageError

STATE_FILE = "state.json"


def new_id() -> str:
    return os.urandom(32).hex()


def default_name(container_id: str) -> str:
    return f"minictr-{container_id[:12]}"


def container_dir(state_root: str, container_id: str) -> str:
    return os.path.join(state_root, container_id)


def write(state_root: str, container_id: str, state: dict) -> None:
    d = container_dir(state_root, container_id)
    os.makedirs(d, mode=0o700, exist_ok=True)
    tmp = os.path.join(d, f".{STATE_FILE}.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.rename(tmp, os.path.join(d, STATE_FILE))


def read(state_root: str, container_id: str) -> dict | None:
    try:
        with open(os.path.join(container_dir(state_root, container_id), STATE_FILE)) as f:
            state = json.load(f)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return _refresh(state)


def alive(pid: int | None, started: float | None) -> bool:
    """Is ``pid`` still the process we started? Compare its start time to rule out pid reuse."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return started is None or _start_ticks(pid) == started


def _start_ticks(pid: int) -> float | None:
    """Field 22 of /proc/PID/stat: the start time in clock ticks since boot (proc(5))."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return float(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _refresh(state: dict) -> dict:
    if state.get("status") in ("running", "created", "creating") and not alive(
            state.get("pid"), state.get("pid_start")):
        state = dict(state, status="stopped")
    return state


def record(state_root: str, container_id: str, **fields) -> dict:
    """Create or update this container's state with ``fields``."""
    state = read(state_root, container_id) or {"ociVersion": "1.0.2", "id": container_id,
                                                "created": time.time()}
    state.update(fields)
    if fields.get("pid"):
        state["pid_start"] = _start_ticks(fields["pid"])
    write(state_root, container_id, state)
    return state


def list_containers(state_root: str, all_: bool = False, stats: bool = False) -> list[dict]:
    try:
        ids = sorted(os.listdir(state_root))
    except FileNotFoundError:
        return []
    rows = []
    for cid in ids:
        st = read(state_root, cid)
        if st is None or (not all_ and st.get("status") != "running"):
            continue
        if stats:
            st["stats"] = _stats_of(st)
        rows.append(st)
    return sorted(rows, key=lambda s: s.get("created", 0))


def find(state_root: str, name: str) -> dict:
    """A container by name, full id or unique id prefix."""
    matches = []
    for st in list_containers(state_root, all_=True):
        if name in (st.get("name"), st["id"]):
            return st
        if st["id"].startswith(name):
            matches.append(st)
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UsageError(f"{name!r} matches {len(matches)} containers", hint="give more of the id")
    raise MinictrError(f"no such container: {name}", hint="minictr ps -a lists containers")


def _stats_of(st: dict) -> dict | None:
    paths = st.get("cgroup_paths")
    if not paths:
        return None
    try:
        from minictr.runtime import cgroups

        return cgroups.Cgroup.from_paths(paths).stats()
    except (ImportError, OSError):
        return None


def container_stats(state_root: str, name: str) -> dict:
    st = find(state_root, name)
    if st.get("status") != "running":
        raise MinictrError(f"container {name} is not running")
    stats = _stats_of(st)
    if stats is None:
        raise MinictrError(f"container {name} has no cgroup to read usage from",
                           hint="rootless containers without a delegated cgroup have none")
    return {"id": st["id"], "name": st.get("name"), **stats}


def parse_signal(name: str) -> int:
    text = name.upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return int(signal_mod.Signals[text])
    except KeyError:
        raise UsageError(f"unknown signal {name!r}", hint="e.g. TERM, KILL, HUP, 9") from None


def kill(state_root: str, name: str, signal_name: str) -> None:
    st = find(state_root, name)
    if st.get("status") != "running":
        raise MinictrError(f"container {name} is not running")
    os.kill(st["pid"], parse_signal(signal_name))
