"""cgroup v1 (one hierarchy per controller): ``linux.resources`` → interface files.

config-linux.md's fields were named after these files, so the mapping is direct
(Documentation/admin-guide/cgroup-v1/memory.rst, pids.rst; sched-bwc.rst for cpu.cfs_*).
v1 has no "no internal processes" rule and no subtree_control: a child directory has every
file of its hierarchy's controllers as soon as it is made. On a hybrid host (this project's
machines) memory, pids and cpu live here while the device filter uses the v2 hierarchy.
"""
from __future__ import annotations

from minictr.errors import RuntimeSetupError
from minictr.runtime import cgroup_v2

# cpuset and pids use the same file names in v1 and v2 (cgroups.apply_v1 looks the writers up
# by controller name in this module)
cpuset_files = cgroup_v2.cpuset_files
pids_files = cgroup_v2.pids_files


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


def hugetlb_files(limits: list[dict]) -> list[tuple[str, str]]:
    return [(f"hugetlb.{entry['pageSize']}.limit_in_bytes", str(entry["limit"]))
            for entry in limits]


def cpuset_inherit(fs, parent: str, child: str, explain) -> None:
    """A new v1 cpuset starts with empty cpuset.cpus and cpuset.mems, and no task can join it
    until both are set (cpuset(7)): copy the parent's before writing the requested ones."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not fs.read(f"{child}/{name}").strip():
            fs.write(f"{child}/{name}", fs.read(f"{parent}/{name}").strip(), explain)


# ---------------------------------------------------------------- devices (no eBPF on v1)


def _overlaps(a: tuple, b: tuple) -> bool:
    """Whether two (type, major, minor) selectors (None = any) can name the same device."""
    return all(x is None or y is None or x == y for x, y in zip(a, b))


def _device_lines(dev_type: int | None, major: int | None, minor: int | None,
                  access: int) -> list[str]:
    """devices.allow/deny lines: "c 1:3 rwm"; type "a" is only valid with *:* (devices.rst),
    so "a 1:3" becomes one line for each of c and b."""
    from minictr.runtime import bpf_devices as bd

    letters = "".join(ch for ch, bit in bd.ACCESS_BITS.items() if access & bit)
    letters = "".join(sorted(letters, key="rwm".index))
    numbers = f"{'*' if major is None else major}:{'*' if minor is None else minor}"
    if dev_type is None:
        if major is None and minor is None and access == bd.ACCESS_ALL:
            return ["a"]
        return [f"c {numbers} {letters}", f"b {numbers} {letters}"]
    return [f"{'c' if dev_type == bd.BPF_DEVCG_DEV_CHAR else 'b'} {numbers} {letters}"]


def devices_files(rules: list[dict]) -> list[tuple[str, str]]:
    """linux.resources.devices → ordered writes to devices.allow / devices.deny (cgroup-v1
    devices.rst). v1 keeps a default (allow or deny all) plus exceptions: writing "a" sets the
    default and clears the exceptions; a rule against the default adds an exception; a rule
    with the default's verdict removes only exceptions with the very same type:major:minor.

    So we start from the last rule that names every device with rwm (or an implicit deny-all,
    the OCI default), then add each later rule against the default as an exception; a later rule
    back to the default is written once per earlier exception it covers, with that exception's
    own numbers. One that would cut into a wider exception (``allow c 136:*`` then
    ``deny c 136:1``) cannot be expressed on v1: an error, not a silently wider allow-list.
    """
    from minictr.runtime import bpf_devices as bd

    normal = [bd.normalize_rule(rule) for rule in rules]
    start = max((i for i, (_, t, ma, mi, acc) in enumerate(normal)
                 if t is None and ma is None and mi is None and acc == bd.ACCESS_ALL), default=-1)
    default_allow = normal[start][0] if start >= 0 else False
    writes = [("devices.allow" if default_allow else "devices.deny", "a")]
    exceptions: list[tuple] = []
    for index, (allow, dev_type, major, minor, access) in enumerate(normal[start + 1:], start + 1):
        key = (dev_type, major, minor)
        target = "devices.allow" if allow else "devices.deny"
        if allow != default_allow:
            exceptions.append(key)
            writes += [(target, line) for line in _device_lines(*key, access)]
            continue
        # back to the default: take the access bits out of each earlier exception it covers
        clashing = [e for e in exceptions if _overlaps(e, key)]
        if any(not _covers(key, e) for e in clashing):
            raise RuntimeSetupError(
                f"device rule {index} ({bd.describe_rule(rules[index])}) cuts into an earlier "
                f"wider rule, which cgroup v1's devices controller cannot express",
                hint="reorder the rules, or use a host with cgroup v2 (eBPF device filter)")
        for exception in clashing:
            writes += [(target, line) for line in _device_lines(*exception, access)]
    return writes


def _covers(wide: tuple, narrow: tuple) -> bool:
    """Whether selector ``wide`` names every device ``narrow`` does."""
    return all(w is None or w == n for w, n in zip(wide, narrow))
