"""minictr's own nftables table: masquerading for the bridge and the published ports (nft(8)).

One table per bridge, named after it (``ip minictr0``), made when the bridge is made and
deleted with it, so minictr never edits a rule of anyone else's. Published ports are *elements
of two maps*, not rules: a container's ports are added and deleted as elements, atomically, and
nothing else changes.

    table ip minictr0
      map published      l4proto . port            : container address . port   (-p H:C)
      map published_at   address . l4proto . port  : container address . port   (-p IP:H:C)
      chain guard        prerouting, priority raw: nothing from the bridge may claim to come
                         from, or go to, 127.0.0.0/8 (route_localnet is on for the bridge)
      chain prerouting   nat, dstnat: connections from outside to a local address
      chain output       nat, -100: connections made on the host itself (127.0.0.1 included)
      chain postrouting  nat, srcnat: masquerade what leaves the subnet, and every DNATed
                         connection that goes out on the bridge (see below)

Reaching a published port on 127.0.0.1. A connection to 127.0.0.1:8080 made on the host is
DNATed in the output chain to the container's address; the kernel would then drop it as a
martian (a loopback source leaving on a real interface) unless the bridge has
``net.ipv4.conf.<bridge>.route_localnet=1``, and the container would answer to its own
127.0.0.1 unless the source is rewritten: the ``ct status dnat oifname <bridge>``
masquerade does that, and it also makes a container reaching another one through a published
port (hairpin) see the bridge's address as the peer. docker's alternative is a userspace proxy
process per port (docker-proxy); route_localnet costs no process. Its known risk
(CVE-2020-8558: with route_localnet a neighbour could reach the host's loopback services) is
closed by the guard chain, which drops packets arriving on the bridge to or from 127.0.0.0/8
before routing, as kube-proxy's fix does. route_localnet is set on the bridge only.
"""
from __future__ import annotations

from _collections_abc import Callable

from minictr.errors import RuntimeSetupError

Explain = Callable[[str], None] | None


def table(bridge: str) -> str:
    return f"ip {bridge}"


def table_script(bridge: str, subnet: str) -> str:
    """The whole table, made afresh (a stale one from a killed launcher is replaced)."""
    name = table(bridge)
    dnat = ("fib daddr type local dnat ip addr . port to ip daddr . meta l4proto . th dport "
            "map @published_at\n\t\tfib daddr type local dnat ip addr . port to meta l4proto . "
            "th dport map @published")
    return f"""add table {name}
delete table {name}
table {name} {{
\tmap published {{
\t\ttype inet_proto . inet_service : ipv4_addr . inet_service
\t}}
\tmap published_at {{
\t\ttype ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
\t}}
\tchain guard {{
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tiifname "{bridge}" ip daddr 127.0.0.0/8 drop
\t\tiifname "{bridge}" ip saddr 127.0.0.0/8 drop
\t}}
\tchain prerouting {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\t{dnat}
\t}}
\tchain output {{
\t\ttype nat hook output priority -100; policy accept;
\t\t{dnat}
\t}}
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tct status dnat oifname "{bridge}" masquerade
\t\tip saddr {subnet} oifname != "{bridge}" masquerade
\t}}
}}
"""


def _key(port: dict) -> tuple[str, str]:
    """(map, key) of one published port."""
    base = f"{port['protocol']} . {port['host_port']}"
    if port.get("host_ip"):
        return "published_at", f"{port['host_ip']} . {base}"
    return "published", base


def add_ports_script(bridge: str, ports: list[dict], address: str) -> str:
    """``create``, not ``add``: a host port another container holds is an error (EEXIST)."""
    return "".join(f"create element {table(bridge)} {name} {{ {key} : {address} . "
                   f"{p['container_port']} }}\n" for p in ports for name, key in [_key(p)])


def delete_ports_script(bridge: str, ports: list[dict]) -> str:
    return "".join(f"delete element {table(bridge)} {name} {{ {key} }}\n"
                   for p in ports for name, key in [_key(p)])


def delete_table_script(bridge: str) -> str:
    return f"delete table {table(bridge)}\n"


def apply(kernel, nft: str, script: str, explain: Explain, what: str) -> None:
    """One nft transaction: all of ``script`` or nothing (nft -f applies a file atomically)."""
    if explain:
        explain(f"nft -f -  ({what})")
        for line in script.rstrip("\n").splitlines():
            explain(f"    {line}")
    code, output = kernel.run_program(nft, ["nft", "-f", "-"], [], script.encode(), 30)
    if code != 0:
        text = output.decode(errors="replace").strip().splitlines()
        raise RuntimeSetupError(f"nft: {what} failed: {text[0] if text else f'exit {code}'}",
                                hint=_hint(output))


def _hint(output: bytes) -> str | None:
    if b"File exists" in output:
        return "another container already publishes this host port (minictr ps)"
    if b"Operation not permitted" in output:
        return "nftables needs CAP_NET_ADMIN (root)"
    return None


def try_apply(kernel, nft: str, script: str) -> bool:
    """Cleanup's form: no explanation, no error (what is already gone stays gone)."""
    code, _ = kernel.run_program(nft, ["nft", "-f", "-"], [], script.encode(), 30)
    return code == 0
