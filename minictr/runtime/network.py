"""Connecting a container's network namespace: the runtime's part of --network bridge.

The spec says which network namespace the container gets (linux.namespaces: a new one, a path
to join, or none for the host's); spawn.py makes or joins it like any other. A new namespace
holds only ``lo``. What connects it to anything is not in the OCI spec: an engine (Docker,
Podman, containerd's CNI) does that itself around the runtime, so minictr-runc's bundles never
get a network from here. minictr's own ``run`` hands lifecycle.create a ``NetworkPlan`` beside
the spec (as it hands a RootfsPlan), and the launcher carries it out at one point of the spawn
path: after clone3 has made the namespace and the id maps are written, before "go"
(spawn.py, ``on_placed``), so the container's command never runs unconnected.

    driver        who                  how
    bridge        root                 bridge.py: minictr0, a veth pair, a leased address,
                                       nftables NAT and published ports
    pasta         rootless             usernet.py: pasta (passt) in the container's netns
    slirp4netns   rootless, no pasta   usernet.py: slirp4netns, ports through its API socket

``release`` undoes it, idempotently, from the record kept in the container's state (written
before anything it names is made): when the container exits (api), at `rm`/`delete`, and, for
the bridge, at the next start (a lease whose container's process is gone).
"""
from __future__ import annotations

import os
import shutil
from _collections_abc import Callable

from minictr.errors import RuntimeSetupError, SpecError
from minictr.records import record

Explain = Callable[[str], None] | None
DEFAULT_BRIDGE = "minictr0"
DEFAULT_SUBNET = "10.87.0.0/16"
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


@record
class NetworkPlan:
    driver: str                  # bridge | pasta | slirp4netns
    ports: tuple = ()            # {"host_ip", "host_port", "container_port", "protocol"}
    bridge: str = DEFAULT_BRIDGE
    subnet: str = DEFAULT_SUBNET
    nft: str = "nft"             # the nft(8) command (bridge)
    helper: str = ""             # the pasta or slirp4netns command (rootless)


def plan_bridge(ports: tuple[dict, ...], *, rootless: bool, environ=None,
                which: Callable[[str], str | None] | None = None) -> NetworkPlan:
    """What --network bridge takes on this host: root gets minictr's bridge
    (MINICTR_BRIDGE, MINICTR_BRIDGE_SUBNET), a user pasta or else slirp4netns, as podman."""
    import ipaddress

    environ = os.environ if environ is None else environ
    which = which or (lambda name: shutil.which(name, path=os.environ.get("PATH", "") + ":"
                                                + SBIN))
    if rootless:
        # MINICTR_ROOTLESS_NETWORK picks one, as podman's default_rootless_network_cmd does
        wanted = environ.get("MINICTR_ROOTLESS_NETWORK") or ""
        if wanted not in ("", "pasta", "slirp4netns"):
            raise SpecError(f"MINICTR_ROOTLESS_NETWORK={wanted!r} is not pasta or slirp4netns")
        for driver in (wanted,) if wanted else ("pasta", "slirp4netns"):
            found = which(driver)
            if found:
                return NetworkPlan(driver=driver, ports=tuple(ports), helper=found)
        needed = wanted or "pasta or slirp4netns"
        raise RuntimeSetupError(f"--network bridge without root needs {needed}, and it is "
                                "not installed", hint="apt-get install passt (or slirp4netns)")
    bridge = environ.get("MINICTR_BRIDGE") or DEFAULT_BRIDGE
    if not (bridge[:1].isalpha() and len(bridge) <= 15
            and all(c.isalnum() or c == "_" for c in bridge)):
        raise SpecError(f"MINICTR_BRIDGE={bridge!r} is not a usable bridge name",
                        hint="letters, digits and _, at most 15 characters, a letter first "
                        "(it also names minictr's nftables table)")
    subnet = environ.get("MINICTR_BRIDGE_SUBNET") or DEFAULT_SUBNET
    try:
        net = ipaddress.IPv4Network(subnet)
    except ValueError as err:
        raise SpecError(f"MINICTR_BRIDGE_SUBNET={subnet!r}: {err}",
                        hint="an IPv4 network such as 10.87.0.0/16") from None
    if net.prefixlen > 30:
        raise SpecError(f"MINICTR_BRIDGE_SUBNET={subnet}: too small for a gateway and a "
                        "container", hint="use /30 or larger")
    nft = which("nft")
    if not nft:
        raise RuntimeSetupError("--network bridge needs nftables (the nft command)",
                                hint="apt-get install nftables")
    return NetworkPlan(driver="bridge", ports=tuple(ports), bridge=bridge, subnet=str(net),
                       nft=nft)


class Attached:
    """What the launcher holds while the container runs: its state record and, rootless, the
    helper's session."""

    def __init__(self, record_: dict, session=None):
        self.record = record_
        self.session = session


def attach(kernel, state_path: str, workdir: str, container_id: str, plan: NetworkPlan,
           pid: int, record_: Callable[[dict], None], explain: Explain) -> Attached:
    """Connect the new network namespace of ``pid`` (see the module docstring). ``workdir`` is
    the container's state directory (the helper's log and sockets); ``record_`` writes the
    state record."""
    if plan.driver == "bridge":
        from minictr.runtime import bridge

        return Attached(bridge.attach(kernel, state_path, container_id, plan, pid, record_,
                                      explain))
    from minictr.runtime import usernet

    out, session = usernet.attach(kernel, plan, pid, workdir, record_, explain)
    return Attached(out, session)


def release(kernel, container_id: str, record_: dict | None, attached: Attached | None = None,
            ) -> None:
    """Undo ``attach`` (idempotent; nothing to do without a record)."""
    if not record_:
        return
    if getattr(kernel, "dry_run", False):
        return
    if record_.get("driver") == "bridge":
        from minictr.runtime import bridge

        bridge.release(kernel, record_, container_id)
        return
    from minictr.runtime import usernet

    usernet.stop(record_.get("helper_pid"), record_.get("helper_ticks"),
                 attached.session if attached else None)
