"""--network and -p/--publish, as data (pure: nothing here looks at the host; the caller passes
in what it read). The nameservers of each network are spec/etcfiles.py's.

    --network host            the host's network namespace, as it is (docker's --network host)
    (not given)               the host's too; outside a Slurm job without CAP_NET_RAW and with
                              abstract unix sockets scoped to the container (see ``DEFAULT``)
    --network none            a namespace of its own holding only lo
    --network bridge          a namespace of its own on minictr's bridge (root) or behind pasta /
                              slirp4netns (rootless); the only mode that takes -p
    --network container:NAME  the network namespace of another (running) container
    --network ns:PATH         a network namespace by path (/run/netns/NAME, /proc/PID/ns/net)

The runtime side (runtime/network.py) executes a bridge; the namespace entries are the spec's
``linux.namespaces`` and need nothing else.
"""
from __future__ import annotations

from minictr.errors import SpecError
from minictr.records import record

DEFAULT = "default"                  # --network not given
MODES = ("host", "none", "bridge")   # plus the prefixed forms container:NAME and ns:PATH
PROTOCOLS = ("tcp", "udp")


@record
class Network:
    """What --network asked for: ``kind`` is one of MODES, DEFAULT, "container" or "ns";
    ``target`` the container's name or the namespace's path."""

    kind: str
    target: str | None = None

    @property
    def own_namespace(self) -> bool:
        """Does the container get a network namespace other than the host's?"""
        return self.kind not in ("host", DEFAULT)

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}" if self.target is not None else self.kind


@record
class PortMapping:
    """One -p: connections to ``host_ip`` (any address when "") port ``host_port`` reach the
    container's ``container_port``."""

    host_ip: str
    host_port: int
    container_port: int
    protocol: str = "tcp"

    def to_dict(self) -> dict:
        return {"host_ip": self.host_ip, "host_port": self.host_port,
                "container_port": self.container_port, "protocol": self.protocol}

    def __str__(self) -> str:
        host = f"{self.host_ip}:" if self.host_ip else ""
        return f"{host}{self.host_port}:{self.container_port}/{self.protocol}"


def parse_network(text: str | None) -> Network:
    """The --network value; None (not given) is DEFAULT."""
    if text is None or text == DEFAULT:
        return Network(DEFAULT)
    if text in MODES:
        return Network(text)
    kind, sep, target = text.partition(":")
    if sep and kind == "container" and target:
        return Network("container", target)
    if sep and kind == "ns" and target:
        if not target.startswith("/"):
            raise SpecError(f"--network ns:{target}: the path must be absolute",
                            hint="e.g. --network ns:/run/netns/NAME")
        return Network("ns", target)
    if kind in ("private", "slirp4netns", "pasta"):
        raise SpecError(f"--network {text} is not implemented by minictr",
                        hint="rootless, --network bridge uses pasta (or slirp4netns)")
    raise SpecError(f"--network {text!r} is not a network minictr knows",
                    hint="use host, none, bridge, container:NAME or ns:PATH")


def parse_publish(entries: tuple[str, ...] | list[str]) -> tuple[PortMapping, ...]:
    """-p/--publish [IP:]HOSTPORT:CONTAINERPORT[/tcp|udp], each host port once. A range on both
    sides (``8000-8002:9000-9002``, docker's form) is one mapping per port, in order."""
    out: list[PortMapping] = []
    published: dict[tuple[int, str], list[PortMapping]] = {}   # (port, protocol) -> mappings
    for entry in entries:
        for mapping in _parse_one(entry):
            same = published.setdefault((mapping.host_port, mapping.protocol), [])
            for other in same:
                if not other.host_ip or not mapping.host_ip or other.host_ip == mapping.host_ip:
                    raise SpecError(f"-p {entry}: host port {mapping.host_port}/"
                                    f"{mapping.protocol} is already published by -p {other}",
                                    hint="each host port can be published once")
            same.append(mapping)
            out.append(mapping)
    return tuple(out)


def _parse_one(entry: str) -> list[PortMapping]:
    text, _, protocol = entry.partition("/")
    protocol = protocol or "tcp"
    if protocol not in PROTOCOLS:
        raise SpecError(f"-p {entry}: protocol {protocol!r} is not tcp or udp",
                        hint="-p [IP:]HOSTPORT:CONTAINERPORT[/tcp|udp]")
    if text.startswith("["):
        raise SpecError(f"-p {entry}: IPv6 host addresses are not supported by minictr",
                        hint="minictr's bridge is IPv4: give an IPv4 address or none")
    parts = text.split(":")
    if len(parts) == 2:
        host_ip, host, container = "", parts[0], parts[1]
    elif len(parts) == 3:
        host_ip, host, container = parts
    else:
        raise SpecError(f"-p {entry}: expected [IP:]HOSTPORT:CONTAINERPORT[/tcp|udp]",
                        hint="e.g. -p 8080:80 or -p 127.0.0.1:8080:80/tcp (a host port is "
                        "required: minictr does not pick one)")
    if host_ip:
        import ipaddress        # ~1.5 ms: not on the default path

        try:
            address = ipaddress.IPv4Address(host_ip)
        except ValueError:
            raise SpecError(f"-p {entry}: {host_ip!r} is not an IPv4 address",
                            hint="-p 127.0.0.1:8080:80 publishes on loopback only") from None
        host_ip = "" if address.is_unspecified else str(address)
    hosts, containers = _ports(host, entry), _ports(container, entry)
    if len(hosts) != len(containers):
        # docker publishes a host range on one container port by picking one free host port
        # in it; minictr does not pick ports
        raise SpecError(f"-p {entry}: the host range has {len(hosts)} ports and the container "
                        f"range {len(containers)}",
                        hint="give ranges of the same length, e.g. -p 8000-8002:9000-9002")
    return [PortMapping(host_ip, h, c, protocol) for h, c in zip(hosts, containers)]


def _ports(text: str, entry: str) -> range:
    """A port or a range FIRST-LAST (inclusive, FIRST <= LAST)."""
    first, sep, last = text.partition("-")
    low = _port(first, entry)
    high = _port(last, entry) if sep else low
    if high < low:
        raise SpecError(f"-p {entry}: the range {text} ends before it starts",
                        hint="FIRST-LAST, e.g. 8000-8002")
    return range(low, high + 1)


def _port(text: str, entry: str) -> int:
    if not text.isdecimal() or not 0 < int(text) < 65536:
        raise SpecError(f"-p {entry}: {text!r} is not a port number (1-65535)",
                        hint="-p [IP:]HOSTPORT:CONTAINERPORT[/tcp|udp]")
    return int(text)


def check_publish(network: Network, ports: tuple[PortMapping, ...]) -> None:
    """-p only means something with a network namespace minictr connects: bridge."""
    if ports and network.kind != "bridge":
        raise SpecError(f"-p needs --network bridge (the network here is {network})",
                        hint="with the host's network the container's ports are the host's "
                        "already; add --network bridge to publish")


