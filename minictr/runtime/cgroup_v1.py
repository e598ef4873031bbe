"""cgroup v1 (one hierarchy per controller): ``linux.resources`` → interface files.

config-linux.md's fields were named after these files, so the mapping is direct
(Documentation/admin-guide/cgroup-v1/memory.rst, pids.rst; sched-bwc.rst for cpu.cfs_*).
v1 has no "no internal processes" rule and no subtree_control: a child directory has every
file of its hierarchy's controllers as soon as it is made. On a hybrid host (this project's
machines) memory, pids and cpu live here while the device filter uses the v2 hierarchy.
"""
from __future__ import annotations

from minictr.errors import RuntimeSetupError


def memory_files(memory: dict, *, memsw_exists: bool, host_has_swap: bool) -> list[tuple[str, str]]:
    """The limit is written before memory+swap: the kernel wants memsw >= limit at all times,
    and a new cgroup starts with both unlimited."""
    files = []
    if memory.get("limit") is not None:
        files.append(("memory.limit_in_bytes", str(memory["limit"] if memory["limit"] > 0 else -1)))
    swap = memory.get("swap")
    if swap is not None:
        limit = memory.get("limit")
        if swap >= 0 and limit is not None and 0 <= swap < limit:
            raise RuntimeSetupError(f"memory.swap {swap} is less than memory.limit {limit}",
                                    hint="memory.swap is the total of memory and swap")
        if memsw_exists:
            files.append(("memory.memsw.limit_in_bytes", str(swap if swap >= 0 else -1)))
        elif swap >= 0 and host_has_swap:
            raise RuntimeSetupError(
                "memory.swap cannot be applied: no memory.memsw.limit_in_bytes (swap accounting "
                "is off)", hint="boot with swapaccount=1, or drop --memory-swap")
    if memory.get("reservation") is not None:
        files.append(("memory.soft_limit_in_bytes", str(memory["reservation"])))
    if memory.get("swappiness") is not None:
        files.append(("memory.swappiness", str(memory["swappiness"])))
    if memory.get("disableOOMKiller"):
        files.append(("memory.oom_control", "1"))
    if memory.get("kernel") is not None:
        files.append(("memory.kmem.limit_in_bytes", str(memory["kernel"])))
    if memory.get("kernelTCP") is not None:
        files.append(("memory.kmem.tcp.limit_in_bytes", str(memory["kernelTCP"])))
    return files


def cpu_files(cpu: dict) -> list[tuple[str, str]]:
    """The period is written before the quota: a quota is checked against the current period."""
    files = []
    if cpu.get("shares"):
        files.append(("cpu.shares", str(cpu["shares"])))
    if cpu.get("period"):
        files.append(("cpu.cfs_period_us", str(cpu["period"])))
    if cpu.get("quota") is not None:
        files.append(("cpu.cfs_quota_us", str(cpu["quota"] if cpu["quota"] > 0 else -1)))
    if cpu.get("realtimePeriod"):
        files.append(("cpu.rt_period_us", str(cpu["realtimePeriod"])))
    if cpu.get("realtimeRuntime"):
        files.append(("cpu.rt_runtime_us", str(cpu["realtimeRuntime"])))
    if cpu.get("idle") is not None:
        raise RuntimeSetupError("cpu.idle cannot be applied on cgroup v1")
    return files


def cpuset_files(cpu: dict) -> list[tuple[str, str]]:
    return [(f"cpuset.{key}", cpu[key]) for key in ("cpus", "mems") if cpu.get(key)]


def pids_files(pids: dict) -> list[tuple[str, str]]:
    limit = pids.get("limit")
    if limit is None:
        return []
    return [("pids.max", str(limit) if limit > 0 else "max")]


def hugetlb_files(limits: list[dict]) -> list[tuple[str, str]]:
    return [(f"hugetlb.{entry['pageSize']}.limit_in_bytes", str(entry["limit"]))
            for entry in limits]


def cpuset_inherit(fs, parent: str, child: str, explain) -> None:
    """A new v1 cpuset starts with empty cpuset.cpus and cpuset.mems, and no task can join it
    until both are set (cpuset(7)): copy the parent's before writing the requested ones."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not fs.read(f"{child}/{name}").strip():
            fs.write(f"{child}/{name}", fs.read(f"{parent}/{name}").strip(), explain)
