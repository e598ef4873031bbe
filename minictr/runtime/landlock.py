"""Landlock IPC scoping (landlock(7), "Scoped access", ABI 6 = Linux 6.12).

A process confined with LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET cannot connect(2) or send(2) to an
abstract unix socket (the ``@name`` ones, which live in the network namespace and have no file
to protect them) bound by a process outside its Landlock domain. With the host's network
namespace that closes the path to the host's abstract sockets: containerd-shim's API
(CVE-2020-15257), X11's @/tmp/.X11-unix/X0, D-Bus and systemd's private sockets, while the
container's own processes, all in the same domain, still talk to each other. What it does not
do: hide the container's sockets from the host (scoping is one-way), or stop the container
from binding a name first (squatting); only a network namespace of its own does that.

Which processes get it: the spec's annotation ``org.minictr.landlock.scoped`` (set by minictr's
default network outside a Slurm job, spec/builder.py) lists the scopes; each process of the
container, the first and every exec'd one, restricts itself in setup_process, after
no_new_privs (landlock_restrict_self(2) needs it, or CAP_SYS_ADMIN).
"""
from __future__ import annotations

from _collections_abc import Callable

from minictr.errors import SpecError
from minictr.runtime import syscalls as sc

Explain = Callable[[str], None] | None
ANNOTATION = "org.minictr.landlock.scoped"
SCOPES = {"abstract_unix_socket": sc.LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET,
          "signal": sc.LANDLOCK_SCOPE_SIGNAL}
SCOPED_ABI = 6


def scopes_for(kernel, spec: dict, explain: Explain) -> int:
    """The LANDLOCK_SCOPE_* mask the spec asks for, or 0 when it asks for none or this kernel
    cannot scope (ABI < 6: then it says so under --explain; the default network is then the
    plain host network, minus CAP_NET_RAW)."""
    text = (spec.get("annotations") or {}).get(ANNOTATION, "")
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in SCOPES]
    if unknown:
        raise SpecError(f"annotation {ANNOTATION}: unknown scope {unknown[0]!r}",
                        hint="known: " + ", ".join(SCOPES))
    if not names:
        return 0
    abi = kernel.landlock_abi_version()
    if abi < SCOPED_ABI:
        if explain:
            explain(f"landlock: {', '.join(names)} scoping needs Landlock ABI {SCOPED_ABI} "
                    f"(Linux 6.12); this kernel offers {abi or 'none'}: not applied")
        return 0
    mask = 0
    for name in names:
        mask |= SCOPES[name]
    return mask


def restrict(kernel, scoped: int, explain: Explain) -> None:
    """Confine this process (and what it execs) to a new Landlock domain scoping ``scoped``."""
    names = [n for n, bit in SCOPES.items() if scoped & bit]
    if explain:
        explain(f"landlock_restrict_self(scoped={'|'.join(names)})  (the host's abstract unix "
                "sockets are out of reach)")
    fd = kernel.landlock_create_ruleset(scoped)
    try:
        kernel.landlock_restrict_self(fd)
    finally:
        kernel.close(fd)
