"""--network bridge as root: a bridge, a veth pair per container, an address lease, NAT.

    host network namespace                          the container's network namespace
    ──────────────────────                          ─────────────────────────────────
    minictr0  (bridge, 10.87.0.1/16, made by the first container, removed with the last)
      └─ mc<id>  (veth) ──────────── pair ──────────  eth0  10.87.0.N/16, default via .1
    table ip minictr0 (nftables.py): masquerade, published ports

Addresses are leased from the subnet by files in the state directory, under one flock(2):

    STATE/.network/lock                 held while a lease or the bridge changes
    STATE/.network/leases/<address>     {"id", "pid", "ticks", "veth", "ports", "bridge",
                                         "subnet"}: made whole (link(2) of a written file)
    STATE/.network/ip_forward           "0" when minictr turned net.ipv4.ip_forward on: it is
                                        turned off again with the bridge

A lease names its container's first process (pid and start time), so the next container to
start on the bridge finds the leases whose process is gone (a launcher killed by SIGKILL takes
its container with it, PR_SET_PDEATHSIG) and releases them: their ports, their veth, the lease.
The container's state entry records the same before anything is made (lifecycle's rule), so
`minictr rm` and `delete` release it too; releasing is idempotent and touches a lease only
while it still names this container (the address may have gone to another one since).

The bridge carries the state directory's path as its alias (IFLA_IFALIAS): a bridge of the
same name made by someone else, or by minictr with another state directory, is refused rather
than shared (two lease directories would hand out the same addresses).
"""
from __future__ import annotations

import fcntl
import ipaddress
import json
import os
from _collections_abc import Callable

from minictr.errors import RuntimeSetupError
from minictr.runtime import nftables
from minictr.runtime import state as state_mod

Explain = Callable[[str], None] | None
NETWORK_DIR = ".network"
CONTAINER_IF = "eth0"


def veth_name(container_id: str) -> str:
    """The host end's name: IFNAMSIZ is 16 with the NUL, so "mc" and 13 hex digits."""
    return "mc" + container_id[:13]


class Leases:
    """The lease directory of one state root (see the module docstring)."""

    def __init__(self, state_path: str):
        self.dir = os.path.join(state_path, NETWORK_DIR)
        self.leases = os.path.join(self.dir, "leases")
        self._lock_fd: int | None = None

    def __enter__(self) -> "Leases":
        os.makedirs(self.leases, mode=0o700, exist_ok=True)
        self._lock_fd = os.open(os.path.join(self.dir, "lock"),
                                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        os.close(self._lock_fd)               # closing the description drops the flock
        self._lock_fd = None

    def all(self) -> dict[str, dict | None]:
        """address -> lease (None when unreadable: a lease is written whole, so only an
        outside hand makes one)."""
        out: dict[str, dict | None] = {}
        for name in sorted(os.listdir(self.leases)):
            if name.startswith("."):
                continue
            try:
                with open(os.path.join(self.leases, name)) as f:
                    out[name] = json.load(f)
            except (OSError, ValueError):
                out[name] = None
        return out

    def read(self, address: str) -> dict | None:
        try:
            with open(os.path.join(self.leases, address)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def take(self, address: str, lease: dict) -> None:
        """Write the lease whole, then link(2) it into place: EEXIST if it is taken."""
        path = os.path.join(self.leases, address)
        tmp = os.path.join(self.leases, f".{address}.{os.getpid()}")
        state_mod.write_private(tmp, json.dumps(lease).encode())
        try:
            os.link(tmp, path)
        finally:
            os.unlink(tmp)

    def drop(self, address: str) -> None:
        try:
            os.unlink(os.path.join(self.leases, address))
        except FileNotFoundError:
            pass

    def free_address(self, subnet: ipaddress.IPv4Network, taken) -> str:
        """The lowest host address that is neither the gateway nor leased."""
        gateway = gateway_of(subnet)
        for host in subnet.hosts():
            text = str(host)
            if host != gateway and text not in taken:
                return text
        raise RuntimeSetupError(f"no address is left in {subnet} for another container",
                                hint="set MINICTR_BRIDGE_SUBNET to a larger subnet (when no "
                                "container uses the bridge)")

    # what minictr changed in the namespace's sysctls, to undo with the bridge
    def remember_ip_forward(self, value: str) -> None:
        state_mod.write_private(os.path.join(self.dir, "ip_forward"), value.encode())

    def forget_ip_forward(self) -> str | None:
        path = os.path.join(self.dir, "ip_forward")
        try:
            with open(path) as f:
                value = f.read().strip()
            os.unlink(path)
            return value
        except OSError:
            return None


def gateway_of(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return subnet.network_address + 1


# ---------------------------------------------------------------- the start


def attach(kernel, state_path: str, container_id: str, plan, pid: int,
           record: Callable[[dict], None], explain: Explain) -> dict:
    """Connect the container whose first process is ``pid`` (still waiting for "go") to the
    bridge; returns the record kept in its state. ``record(dict)`` writes that record into the
    container's state entry: it is called before anything it names exists."""
    subnet = ipaddress.IPv4Network(plan.subnet)
    gateway = str(gateway_of(subnet))
    netns = f"/proc/{pid}/ns/net"
    veth = veth_name(container_id)
    ports = [dict(p) for p in plan.ports]
    with Leases(state_path) as leases:
        current = release_stale(kernel, leases, plan.nft, explain)
        for address, lease in current.items():
            if lease and (lease.get("bridge"), lease.get("subnet")) != (plan.bridge, plan.subnet):
                raise RuntimeSetupError(
                    f"containers use bridge {lease.get('bridge')} with {lease.get('subnet')}; "
                    f"this one asks for {plan.bridge} with {plan.subnet}",
                    hint="one bridge and subnet per state directory: change "
                    "MINICTR_BRIDGE_SUBNET only when no container runs")
        address = leases.free_address(subnet, current)
        lease = {"id": container_id, "pid": pid, "ticks": state_mod.start_ticks(pid),
                 "veth": veth, "ports": ports, "bridge": plan.bridge, "subnet": plan.subnet,
                 "address": address}
        out = {"driver": "bridge", "address": address, "gateway": gateway,
               "prefixlen": subnet.prefixlen, "veth": veth, "bridge": plan.bridge,
               "ports": ports, "nft": plan.nft, "state": state_path}
        record(out)                               # before the lease, the veth, the elements
        leases.take(address, lease)
        _say(explain, f"network: bridge {plan.bridge} ({plan.subnet}), address {address} "
                      f"(lease {os.path.join(leases.leases, address)})")
        if not current:
            make_bridge(kernel, leases, plan, state_path, f"{gateway}/{subnet.prefixlen}",
                        explain)
        else:
            check_bridge(kernel, plan.bridge, state_path)
        publish = nftables.add_ports_script(plan.bridge, ports, address)
        what = "publish " + ", ".join(_port_text(p) for p in ports)
        if not current:
            # one nft transaction (nft -f): the table afresh, with this container's ports
            publish = nftables.table_script(plan.bridge, plan.subnet) + publish
            what = (f"table {nftables.table(plan.bridge)}: masquerade {plan.subnet}"
                    + (f"; {what}" if ports else ""))
        _say(explain, f"ip link add {veth} type veth peer name {CONTAINER_IF} netns {pid}"
                      f"; ip link set {veth} master {plan.bridge} up")
        kernel.link_add(veth, "veth", peer=CONTAINER_IF, peer_netns_pid=pid)
        kernel.link_set(veth, master=plan.bridge, up=True)
        _say(explain, f"ip -n {netns} addr add {address}/{subnet.prefixlen} dev {CONTAINER_IF}"
                      f"; ip link set {CONTAINER_IF} up; ip route add default via {gateway}")
        kernel.addr_add(CONTAINER_IF, address, subnet.prefixlen, netns)
        kernel.link_set(CONTAINER_IF, netns, up=True)
        kernel.route_add(gateway, netns)
        if publish:
            nftables.apply(kernel, plan.nft, publish, explain, what)
    return out


def make_bridge(kernel, leases: Leases, plan, state_path: str, gateway_cidr: str,
                explain: Explain) -> None:
    """The first container on the bridge makes it (a stale one of ours is made afresh), sets
    route_localnet on it (nftables.py explains why), makes sure the namespace forwards IPv4,
    and deletes a stale nftables table (attach makes it afresh, with the ports)."""
    alias = bridge_alias(state_path)
    found = kernel.link_get(plan.bridge)
    if found is not None:
        if found.get("alias") != alias:
            raise _not_ours(plan.bridge, found)
        _say(explain, f"ip link del {plan.bridge}  (left by a launcher that was killed)")
        kernel.link_del(plan.bridge)
    address, prefixlen = gateway_cidr.split("/")
    _say(explain, f"ip link add {plan.bridge} type bridge; ip addr add {gateway_cidr} dev "
                  f"{plan.bridge}; ip link set {plan.bridge} up")
    kernel.link_add(plan.bridge, "bridge", alias=alias)
    kernel.addr_add(plan.bridge, address, int(prefixlen))
    kernel.link_set(plan.bridge, up=True)
    sysctl(kernel, f"net/ipv4/conf/{plan.bridge}/route_localnet", "1", explain)
    forward = "/proc/sys/net/ipv4/ip_forward"
    if kernel.read_text(forward).strip() != "1":
        leases.remember_ip_forward("0")
        sysctl(kernel, "net/ipv4/ip_forward", "1", explain)


def check_bridge(kernel, bridge: str, state_path: str) -> None:
    found = kernel.link_get(bridge)
    if found is None:
        raise RuntimeSetupError(f"bridge {bridge} is gone while containers still use it",
                                hint="someone deleted it: stop the containers on it and start "
                                "again")
    if found.get("alias") != bridge_alias(state_path):
        raise _not_ours(bridge, found)


def bridge_alias(state_path: str) -> str:
    return f"minictr:{state_path}"


def _not_ours(bridge: str, found: dict) -> RuntimeSetupError:
    owner = found.get("alias") or ""
    whose = (f"minictr with the state directory {owner.split(':', 1)[1]}"
             if owner.startswith("minictr:") else "something else than minictr")
    return RuntimeSetupError(f"a network interface {bridge} exists, made by {whose}",
                             hint="set MINICTR_BRIDGE to another name, or use the same --state")


def sysctl(kernel, key: str, value: str, explain: Explain) -> None:
    _say(explain, f"sysctl {key.replace('/', '.')}={value}")
    kernel.write_file(f"/proc/sys/{key}", value)


def _port_text(port: dict) -> str:
    host = f"{port['host_ip']}:" if port.get("host_ip") else ""
    return f"{host}{port['host_port']}:{port['container_port']}/{port['protocol']}"


# ---------------------------------------------------------------- the end


def release_stale(kernel, leases: Leases, nft: str, explain: Explain) -> dict[str, dict]:
    """Release every lease whose container's first process is gone; return the others."""
    current = {}
    for address, lease in leases.all().items():
        if lease is not None and state_mod.alive(lease.get("pid"), lease.get("ticks")):
            current[address] = lease
            continue
        _say(explain, f"network: releasing {address}, left by container "
                      f"{(lease or {}).get('id', '?')[:12]} whose process is gone")
        _release_lease(kernel, leases, address, lease, nft)
    return current


def release(kernel, record: dict, container_id: str) -> None:
    """Undo ``attach`` for one container (idempotent). The last one out removes the bridge and
    the table (its ports go with the table: no element is deleted one by one), and turns
    ip_forward back off if minictr turned it on."""
    address = record.get("address")
    with Leases(record["state"]) as leases:
        everything = leases.all()
        lease = everything.get(address) if address else None
        ours = lease is not None and lease.get("id") == container_id
        live = {a: lease_ for a, lease_ in everything.items()
                if lease_ and not (ours and a == address)
                and state_mod.alive(lease_.get("pid"), lease_.get("ticks"))}
        if not ours:
            _del_link(kernel, record.get("veth"))  # the address may have gone to another one
        if not live:
            for a, lease_ in everything.items():   # ours and any stale one
                _del_link(kernel, (lease_ or {}).get("veth"))
                leases.drop(a)
            remove_bridge(kernel, leases, record["bridge"], record["state"], record["nft"])
            return
        if ours:
            _release_lease(kernel, leases, address, lease, record["nft"])
        release_stale(kernel, leases, record["nft"], None)


def _release_lease(kernel, leases: Leases, address: str, lease: dict | None, nft: str) -> None:
    if lease:
        ports, bridge = lease.get("ports") or [], lease.get("bridge", "")
        if ports and not nftables.try_apply(kernel, nft,
                                            nftables.delete_ports_script(bridge, ports)):
            for port in ports:                       # one may be gone: delete the others
                nftables.try_apply(kernel, nft, nftables.delete_ports_script(bridge, [port]))
        _del_link(kernel, lease.get("veth"))
    leases.drop(address)


def remove_bridge(kernel, leases: Leases, bridge: str, state_path: str, nft: str) -> None:
    found = kernel.link_get(bridge)
    if found is not None and found.get("alias") == bridge_alias(state_path):
        _del_link(kernel, bridge)
    nftables.try_apply(kernel, nft, nftables.delete_table_script(bridge))
    if leases.forget_ip_forward() == "0":
        kernel.write_file("/proc/sys/net/ipv4/ip_forward", "0")


def _del_link(kernel, name: str | None) -> None:
    """Delete a link if it is there. A container's veth usually goes with its network
    namespace, but the kernel destroys a namespace asynchronously (cleanup_net), so the host
    end can outlive the process for a moment: delete it rather than wait."""
    if not name:
        return
    try:
        kernel.link_del(name)
    except OSError as err:
        import errno

        if err.errno not in (errno.ENODEV, errno.ENOENT):
            raise


def _say(explain: Explain, text: str) -> None:
    if explain:
        explain(text)
