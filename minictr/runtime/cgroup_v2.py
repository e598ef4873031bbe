"""cgroup v2 (the unified hierarchy): ``linux.resources`` → interface files, and enabling
controllers down the tree.

Kernel rules this module follows (Documentation/admin-guide/cgroup-v2.rst):
- A controller's files (memory.max, pids.max, cpu.max ...) exist in a cgroup only when its
  parent lists the controller in ``cgroup.subtree_control``; a parent can enable only what its
  own ``cgroup.controllers`` offers, so enabling goes top-down from the root.
- "No internal processes": a non-root cgroup that has processes cannot enable a domain
  controller for its children (EBUSY); see ``enable_controllers`` for what we do about it.
- Conversions from the OCI fields (config-linux.md was written for v1 files) are the ones runc
  and crun use (runc libcontainer/cgroups/fs2, crun's cgroup-resources.c).
"""
from __future__ import annotations

import errno
import os

from minictr.errors import RuntimeSetupError

LEAF = "minictr-init"     # the launcher's cgroup's processes move here (see enable_controllers)


def _unsupported(what: str, hint: str | None = None) -> RuntimeSetupError:
    return RuntimeSetupError(f"{what} cannot be applied on cgroup v2", hint=hint)


def memory_files(memory: dict, *, swap_max_exists: bool,
                 host_has_swap: bool) -> list[tuple[str, str]]:
    """memory.limit → memory.max; memory.swap (memory+swap, the v1 memsw meaning) →
    memory.swap.max = swap - limit; memory.reservation → memory.low."""
    files = []
    limit = memory.get("limit")
    if limit is not None:
        files.append(("memory.max", "max" if limit < 0 else str(limit)))
    swap = memory.get("swap")
    if swap is not None:
        if swap < 0:
            value = "max"
        elif limit is None or limit < 0:
            raise _unsupported("memory.swap without memory.limit",
                               hint="memory.swap is memory plus swap: set memory.limit too")
        elif swap < limit:
            raise RuntimeSetupError(f"memory.swap {swap} is less than memory.limit {limit}",
                                    hint="memory.swap is the total of memory and swap")
        else:
            value = str(swap - limit)
        if swap_max_exists:
            files.append(("memory.swap.max", value))
        elif value != "max" and host_has_swap:
            raise _unsupported("memory.swap (no memory.swap.max: swap accounting is off)",
                               hint="boot with swapaccount=1, or drop --memory-swap")
    if memory.get("reservation") is not None:
        files.append(("memory.low", str(max(memory["reservation"], 0))))
    for key in ("kernel", "kernelTCP"):
        if memory.get(key) is not None:
            raise _unsupported(f"memory.{key} (kernel memory is not limited separately)",
                               hint="remove the kernel memory limit; memory.max covers it")
    if memory.get("swappiness") is not None:
        raise _unsupported("memory.swappiness (there is no per-cgroup swappiness)")
    if memory.get("disableOOMKiller"):
        raise _unsupported("memory.disableOOMKiller (the OOM killer cannot be disabled per "
                           "cgroup)", hint="use memory.high in linux.resources.unified to throttle")
    return files


def cpu_weight_from_shares(shares: int) -> int:
    """cpu.shares (2..262144, default 1024) → cpu.weight (1..10000, default 100): runc's linear
    map, 1 + (shares - 2) * 9999 / 262142."""
    return 1 + ((min(max(shares, 2), 262144) - 2) * 9999) // 262142


def cpu_files(cpu: dict) -> list[tuple[str, str]]:
    """cpu.shares → cpu.weight; cpu.quota/cpu.period → cpu.max "$QUOTA $PERIOD"; cpu.idle."""
    files = []
    if cpu.get("shares"):
        files.append(("cpu.weight", str(cpu_weight_from_shares(cpu["shares"]))))
    quota, period = cpu.get("quota"), cpu.get("period")
    if quota is not None or period:
        quota_text = "max" if quota is None or quota <= 0 else str(quota)
        files.append(("cpu.max", f"{quota_text} {period or 100000}"))
    if cpu.get("idle") is not None:
        files.append(("cpu.idle", str(cpu["idle"])))
    if cpu.get("realtimeRuntime") or cpu.get("realtimePeriod"):
        raise _unsupported("cpu.realtimeRuntime/realtimePeriod (no realtime group scheduling)")
    return files


def cpuset_files(cpu: dict) -> list[tuple[str, str]]:
    return [(f"cpuset.{key}", cpu[key]) for key in ("cpus", "mems") if cpu.get(key)]


def pids_files(pids: dict) -> list[tuple[str, str]]:
    limit = pids.get("limit")
    if limit is None:
        return []
    return [("pids.max", str(limit) if limit > 0 else "max")]


def hugetlb_files(limits: list[dict]) -> list[tuple[str, str]]:
    return [(f"hugetlb.{entry['pageSize']}.max", str(entry["limit"])) for entry in limits]


def unified_files(unified: dict) -> list[tuple[str, str]]:
    """linux.resources.unified: file name → value, written as given (config-linux.md)."""
    files = []
    for name, value in unified.items():
        if "/" in name or name.startswith(".") or "." not in name:
            raise RuntimeSetupError(f"linux.resources.unified: {name!r} is not a cgroup file name")
        files.append((name, str(value)))
    return files


def controller_of(filename: str) -> str | None:
    """``memory.max`` → memory; ``cgroup.*`` files belong to the core, no controller."""
    prefix = filename.split(".", 1)[0]
    return None if prefix == "cgroup" else prefix


# ---------------------------------------------------------------- enabling controllers


def ancestors(mount: str, path: str) -> list[str]:
    """Directories from the hierarchy's root ``mount`` down to ``path``'s parent."""
    rel = os.path.relpath(os.path.dirname(path), mount)
    out = [mount]
    if rel != ".":
        for part in rel.split(os.sep):
            out.append(os.path.join(out[-1], part))
    return out


def enable_controllers(fs, mount: str, path: str, controllers: set[str], *, movable: str | None,
                       required: bool, explain) -> set[str]:
    """Make ``controllers`` available in ``path`` by writing "+name" to ``cgroup.subtree_control``
    of each ancestor, top-down. Returns what could not be enabled (only when not ``required``).

    The "no internal processes" rule: when the launcher's own cgroup (``movable``) has processes
    (at least the launcher itself), enabling a controller there fails with EBUSY. We then move
    every process of that cgroup into a leaf child ``minictr-init`` and retry, as systemd's
    CGROUP_DELEGATION advises for delegated subtrees. Resource accounting
    is unchanged (the leaf is inside the same parent); the leaf stays after the container is
    gone (its processes are still there); the next launch from the leaf places containers beside
    it. Only done for ``required`` controllers and only in the launcher's own cgroup: processes
    in any other cgroup are not ours to move, so that is an error saying why.
    """
    missing = set()
    for directory in ancestors(mount, path):
        enabled = set(fs.read(os.path.join(directory, "cgroup.subtree_control")).split())
        wanted = sorted(controllers - enabled - missing)
        if not wanted:
            continue
        available = set(fs.read(os.path.join(directory, "cgroup.controllers")).split())
        for name in wanted:
            if name not in available:
                if required:
                    raise RuntimeSetupError(
                        f"cgroup v2 controller {name!r} is not available in {directory} "
                        f"(its parent does not delegate it)",
                        hint=f"enable it above: echo +{name} > "
                             f"{os.path.dirname(directory)}/cgroup.subtree_control, or use a "
                             f"cgroup delegated with Delegate=yes")
                missing.add(name)
        wanted = [n for n in wanted if n not in missing]
        if wanted:
            missing |= _write_subtree_control(fs, directory, wanted, mount=mount, movable=movable,
                                              required=required, explain=explain)
    return missing


def _write_subtree_control(fs, directory: str, names: list[str], *, mount: str,
                           movable: str | None, required: bool, explain) -> set[str]:
    value = " ".join("+" + n for n in names)
    target = os.path.join(directory, "cgroup.subtree_control")
    try:
        fs.write(target, value, explain)
        return set()
    except OSError as err:
        if err.errno == errno.EBUSY and required and directory == movable and directory != mount:
            move_processes_to_leaf(fs, directory, explain)
            fs.write(target, value, explain)
            return set()
        if not required:
            if explain:
                explain(f"not enabling {' '.join(names)} in {directory}: {err.strerror}")
            return set(names)
        if err.errno == errno.EBUSY:
            raise RuntimeSetupError(
                f"cannot enable {' '.join(names)} in {directory}: it has processes and cgroup v2 "
                f"lets a cgroup with processes enable no controller for its children",
                hint="place the container elsewhere (linux.cgroupsPath / --cgroup-parent) or "
                     "move those processes into a child cgroup") from err
        raise RuntimeSetupError(f"cannot write {value!r} to {target}: {err.strerror}",
                                hint="the cgroup is not writable by this user: use a delegated "
                                     "cgroup (systemd-run --user --scope -p Delegate=yes ...)"
                                if err.errno in (errno.EACCES, errno.EPERM) else None) from err


def move_processes_to_leaf(fs, directory: str, explain) -> str:
    """Move every process of ``directory`` into ``directory/minictr-init`` (see above). A few
    rounds, since a process may fork while we move; one that exits meanwhile (ESRCH) is gone."""
    leaf = os.path.join(directory, LEAF)
    if not fs.exists(leaf):
        fs.mkdir(leaf, explain)
    for _ in range(10):
        pids = fs.read(os.path.join(directory, "cgroup.procs")).split()
        if not pids:
            return leaf
        for pid in pids:
            try:
                fs.write(os.path.join(leaf, "cgroup.procs"), pid, explain)
            except ProcessLookupError:
                pass
    raise RuntimeSetupError(f"processes keep appearing in {directory}; cannot empty it",
                            hint="start minictr from a cgroup of its own "
                                 "(systemd-run --scope -p Delegate=yes ...)")
