"""Docker's units for sizes, CPUs and cpusets, parsed the way docker parses them.

Sizes follow go-units ``RAMInBytes`` (docker run -m, --memory-swap, --tmpfs size=, tmpfs-size=):
a number with an optional binary suffix b, k, m, g, t, p (case-insensitive, an optional "b" or
"ib" after it), so "512m" = "512MB" = "512MiB" = 536870912. CPU quota is the CFS bandwidth pair
(quota, period) of sched(7) / cgroup v2 cpu.max, in microseconds.
"""
from __future__ import annotations

import math

from minictr.errors import SpecError

_SIZE = r"^(\d+(?:\.\d+)?) ?([kmgtp])?(?:i?b)?$"   # re.IGNORECASE; compiled when used
_MULT = {None: 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}

CPU_PERIOD = 100_000          # docker's and runc's default CFS period, in microseconds
MIN_CPU_QUOTA = 1_000         # the kernel refuses a quota under 1 ms (sched-bwc.rst)
MIN_MEMORY = 6 * (1 << 20)    # docker: "Minimum memory limit allowed is 6MB"
CPU_SHARES_RANGE = (2, 262_144)    # kernel's MIN_SHARES..MAX_SHARES for cpu.shares (v1)
MAX_BYTES = 2**63 - 1         # cgroup memory limits are int64 (go-units refuses more too)
MAX_PIDS = 4_194_304          # PID_MAX_LIMIT: pids.max refuses anything above it (EINVAL)
MAX_CPUS = 8192               # NR_CPUS can be configured up to 8192 (arch/x86/Kconfig)
CPU_WEIGHT_RANGE = (1, 10_000)     # cgroup v2 cpu.weight (cgroup-v2.rst, "CPU")


def parse_bytes(text: str, flag: str) -> int:
    """Docker's RAMInBytes: "512m" -> 536870912. ``flag`` names the option in errors."""
    import re           # here: `re` costs ~4 ms of a start, and most runs set no size

    match = re.match(_SIZE, text.strip(), re.IGNORECASE)
    if not match:
        raise SpecError(f"{flag}: invalid size {text!r}",
                        hint="use a number with an optional unit b, k, m, g (e.g. 512m, 2g)")
    number, unit = match.groups()
    value = float(number) * _MULT[unit.lower() if unit else None]
    if value > MAX_BYTES:
        raise SpecError(f"{flag}: size {text!r} is too large (more than 8 EiB)")
    return int(value)


def parse_memory(memory: str | None, memory_swap: str | None) -> tuple[int | None, int | None]:
    """--memory and --memory-swap -> (memory.limit, memory.swap) of config-linux.md.

    As in docker, --memory-swap is the total of memory and swap (-1: unlimited swap) and needs
    --memory; with --memory alone the container may use as much swap again (total = 2 x memory).
    """
    limit = swap = None
    if memory is not None:
        limit = parse_bytes(memory, "--memory")
        if limit < MIN_MEMORY:
            raise SpecError(f"--memory {memory}: the minimum memory limit is 6MB")
    if memory_swap is not None:
        if limit is None:
            raise SpecError("--memory-swap needs --memory",
                            hint="--memory-swap is memory plus swap: set --memory too")
        swap = -1 if memory_swap.strip() == "-1" else parse_bytes(memory_swap, "--memory-swap")
        if swap != -1 and swap < limit:
            raise SpecError(f"--memory-swap {memory_swap} is less than --memory {memory}",
                            hint="--memory-swap is memory plus swap, so at least --memory")
    elif limit is not None:
        swap = 2 * limit
    return limit, swap


def cpu_quota(cpus: float) -> tuple[int, int]:
    """--cpus N -> (quota, period) in microseconds, period 100000 as docker."""
    if not math.isfinite(cpus) or round(cpus * CPU_PERIOD) < MIN_CPU_QUOTA:
        raise SpecError(f"--cpus {cpus}: must be a number of CPUs, at least 0.01",
                        hint="e.g. --cpus 0.5 or --cpus 2")
    quota = round(cpus * CPU_PERIOD)
    return quota, CPU_PERIOD


def check_range(value: int, bounds: tuple[int, int], flag: str) -> int:
    low, high = bounds
    if not low <= value <= high:
        raise SpecError(f"{flag} {value}: must be between {low} and {high}")
    return value


def parse_cpuset(text: str, flag: str = "--cpuset-cpus") -> str:
    """Validate a cpuset list ("0-3,6", cpuset(7) "List format") and return it unchanged."""
    import re           # here, as in parse_bytes

    for part in text.split(","):
        match = re.fullmatch(r"([0-9]{1,5})(?:-([0-9]{1,5}))?", part.strip())
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))) or \
                int(match.group(2) or match.group(1)) >= MAX_CPUS:
            raise SpecError(f"{flag}: invalid cpu list {text!r}",
                            hint="a list of CPU numbers and ranges, e.g. 0-3,6")
    return text.replace(" ", "")
