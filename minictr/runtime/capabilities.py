"""Capabilities, no_new_privs and the parent-death signal.

capabilities(7): a process has five sets. The bounding set limits what can ever be gained (even
by executing a file with file capabilities); permitted and effective are what the process has;
inheritable and ambient pass across execve(2). Docker's defaults leave inheritable and ambient
empty (CVE-2022-24769: a non-empty inheritable set let file capabilities escalate), but a spec
may set both, and all five are applied as it says. The calls go through the syscall face
(python-prctl, and a raw capset(2) for the three sets), so a dry run can record them.
"""
from __future__ import annotations

import errno
import _signal as signal  # signal.py's C core: the same calls, numbers as ints (signal.py imports enum: ~3 ms)
from _collections_abc import Callable

import prctl

Explain = Callable[[str], None] | None


# Capabilities newer than python-prctl's table (linux/capability.h).
NEWER_CAPS = {"CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_CHECKPOINT_RESTORE": 40}


def known_caps() -> dict[str, int]:
    """Every capability by name: {"CAP_CHOWN": 0, ...}."""
    table = {f"CAP_{n.upper()}": getattr(prctl, f"CAP_{n.upper()}")
             for n in prctl.ALL_CAP_NAMES if n != "last_cap" and hasattr(prctl, f"CAP_{n.upper()}")}
    return {**NEWER_CAPS, **table}


def last_cap() -> int:
    """The highest capability number the running kernel knows (proc(5))."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return max(known_caps().values())


def _numbers(names) -> list[int]:
    table = known_caps()
    return [table[n.upper()] for n in names if n.upper() in table]


def held_permitted(status: str = "/proc/self/status") -> set[int]:
    """This process's permitted set (CapPrm, proc(5)), by capability number."""
    with open(status) as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("CapPrm:"))
    return {n for n in range(mask.bit_length()) if mask >> n & 1}


def check_held(caps: dict, new_user_namespace: bool, status: str = "/proc/self/status") -> None:
    """Refuse a process whose effective, permitted, inheritable or ambient set names a
    capability the launcher does not hold, as runc's capset fails ("unable to apply caps:
    operation not permitted"), but before the container is made and naming them (the
    child's capset(2) would fail with a bare EPERM).
    A new user namespace grants every capability inside it, so nothing is checked then; the
    bounding set is not checked either (runc keeps what it can there)."""
    if new_user_namespace:
        return
    table = known_caps()
    wanted = {c.upper() for key in ("effective", "permitted", "inheritable", "ambient")
              for c in caps.get(key) or ()}
    held = held_permitted(status)
    missing = sorted(c for c in wanted if c in table and table[c] not in held)
    if missing:
        from minictr.errors import RuntimeSetupError

        raise RuntimeSetupError(f"unable to apply capabilities: {', '.join(missing)} "
                                "not held by the runtime",
                                hint="the runtime cannot give what it lacks (CapPrm in "
                                "/proc/self/status); remove them from process.capabilities")


def drop_bounding_set(kernel, caps: dict, explain: Explain) -> None:
    """Remove every capability not in process.capabilities.bounding from the bounding set
    (PR_CAPBSET_DROP needs CAP_SETPCAP, so this happens while we still have it)."""
    keep = set(_numbers(caps.get("bounding", ())))
    # By number, every one the 64-bit sets can hold, so that a capability no table here names
    # is dropped too, even where /proc/sys/kernel/cap_last_cap cannot be read.
    for num in range(max(last_cap(), 63) + 1):
        if num not in keep:
            try:
                kernel.capbset_drop(num)
            except OSError as err:
                if err.errno != errno.EINVAL:       # EINVAL: beyond the running kernel's last
                    raise
    if explain:
        explain("prctl(PR_CAPBSET_DROP, ...): bounding = "
                + (",".join(sorted(caps.get("bounding", ()))) or "(empty)"))


def keep_caps_across_setuid(kernel) -> None:
    """setuid(2) from 0 to non-zero clears permitted and effective unless PR_SET_KEEPCAPS is set;
    the spec's sets are applied right after, so keep them over the switch (runc's
    SetKeepCaps; effective is cleared all the same, and capset gives it back)."""
    kernel.set_keepcaps(True)


def unraisable_ambient(caps: dict) -> list[str]:
    """The spec's ambient capabilities the kernel will refuse to raise: those not also in
    both inheritable and permitted. create and exec name them under --debug/--explain
    (lifecycle._check_capabilities); apply_sets goes on without them, as runc does."""
    allowed = ({c.upper() for c in caps.get("inheritable") or ()}
               & {c.upper() for c in caps.get("permitted") or ()})
    return sorted({c.upper() for c in caps.get("ambient") or ()} - allowed)


def apply_sets(kernel, caps: dict, explain: Explain) -> None:
    """After the uid change, as runc's ApplyCaps: keep-caps off, then effective, permitted and
    inheritable become exactly what the spec says in one capset(2) (raised as well as lowered:
    inheritable can gain what permitted still holds), then the ambient set is cleared and each
    of the spec's ambient capabilities raised, which needs it in permitted and inheritable
    (capabilities(7), "Ambient capability set")."""
    effective, permitted, inheritable = (caps.get(k) or () for k in
                                         ("effective", "permitted", "inheritable"))
    kernel.set_keepcaps(False)
    if explain:
        explain("capset: effective = " + (",".join(sorted(effective)) or "(empty)")
                + "; permitted = " + (",".join(sorted(permitted)) or "(empty)")
                + "; inheritable = " + (",".join(sorted(inheritable)) or "(empty)"))
    kernel.capset(_numbers(effective), _numbers(permitted), _numbers(inheritable))
    ambient = caps.get("ambient") or ()
    if explain:
        explain("prctl(PR_CAP_AMBIENT_CLEAR_ALL)"
                + ("; prctl(PR_CAP_AMBIENT_RAISE): " + ",".join(sorted(ambient)) if ambient
                   else ""))
    kernel.cap_ambient_clear_all()
    for num in _numbers(ambient):
        # runc's own example spec lists ambient caps with an empty inheritable set; the kernel
        # refuses those (EPERM) and runc goes on without them (1.1 silently, later with a
        # warning), so a refusal is not fatal here either: the set stays as the kernel says,
        # and the launcher has said so under --debug (unraisable_ambient).
        try:
            kernel.cap_ambient_raise(num)
        except OSError:
            pass


def set_no_new_privs(kernel, explain: Explain) -> None:
    """PR_SET_NO_NEW_PRIVS: execve(2) can no longer grant privilege (setuid bits, file caps)."""
    if explain:
        explain("prctl(PR_SET_NO_NEW_PRIVS, 1)")
    kernel.set_no_new_privs()


def die_with_parent(kernel) -> None:
    """PR_SET_PDEATHSIG(SIGKILL): if the launcher dies, even by SIGKILL, the kernel kills this
    process, and with it (as PID 1) the whole PID namespace. Credential changes reset it, so it
    is set again after setuid (prctl(2))."""
    kernel.set_pdeathsig(signal.SIGKILL)
