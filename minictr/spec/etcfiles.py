"""/etc/resolv.conf, /etc/hosts and /etc/hostname, provided at run time as docker and podman do.

Images rarely carry a usable resolv.conf (debian:12 has none), so without these DNS fails in
most containers. The engine writes one file of each per container (api.py, in the container's
own directory) and the spec bind-mounts them over the image's; a user's own ``-v`` at the same
destination replaces them. Pure functions: the host's files come in as text.

resolv.conf follows docker's libnetwork/resolvconf:
- from the host's /etc/resolv.conf: nameservers, ``search`` (``domain`` counts as search) and
  ``options``; everything else is dropped;
- the nameservers follow the network (``nameservers_for``): a loopback nameserver (127.0.0.53
  of systemd-resolved, a local dnsmasq) only answers in the host's network namespace. With the
  host's network the container shares it, so it is kept; on the bridge and in a joined
  namespace the container cannot reach it: loopback servers are dropped,
  systemd-resolved's upstream list (/run/systemd/resolve/resolv.conf) is used when the host's
  file names only its stub, and with nothing left docker's fallback 8.8.8.8 and 8.8.4.4 is
  written (so said under --explain); behind pasta they are reached through pasta's forwarder;
  slirp4netns has its own forwarder; with no network there is no server;
- ``--dns`` replaces the nameservers, ``--dns-search`` the search list (``.`` for none),
  ``--dns-option`` the options.

/etc/hosts: with the host's network, the host's own file (docker does the same), so names the
host resolves locally still resolve; with a network namespace of its own, docker's localhost
entries. Then the container's host name (127.0.1.1, Debian's convention for a name with no
address of its own, reachable through lo in any namespace; a network that gives the container
an address passes it as ``address``), then each ``--add-host``.
"""
from __future__ import annotations

from minictr.errors import SpecError

FALLBACK_NAMESERVERS = ("8.8.8.8", "8.8.4.4")          # docker's defaultIPv4Dns
# The address pasta answers DNS queries on when the host's own servers are on loopback
# (podman uses the same one; runtime/usernet.py starts pasta with it).
PASTA_DNS_FORWARD = "169.254.1.1"
SLIRP4NETNS_DNS = "10.0.2.3"         # slirp4netns's built-in forwarder (its --configure default)
HOST_NETWORKS = ("host", "default")  # the drivers that share the host's network namespace
DEFAULT_HOSTS = ("127.0.0.1\tlocalhost\n"
                 "::1\tlocalhost ip6-localhost ip6-loopback\n"
                 "fe00::0\tip6-localnet\n"
                 "ff00::0\tip6-mcastprefix\n"
                 "ff02::1\tip6-allnodes\n"
                 "ff02::2\tip6-allrouters\n")
HOSTNAME_ADDRESS = "127.0.1.1"
HOST_GATEWAY = "host-gateway"


def parse_resolv_conf(text: str) -> tuple[list[str], list[str], list[str]]:
    """(nameservers, search domains, options) of a resolv.conf(5); a later search/domain line
    replaces an earlier one, as the resolver reads them."""
    nameservers, search, options = [], [], []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) < 2:
            continue
        key, values = fields[0], fields[1:]
        if key == "nameserver":
            nameservers.append(values[0])
        elif key in ("search", "domain"):
            search = list(values)
        elif key == "options":
            options += values
    return nameservers, search, options


def is_loopback(address: str) -> bool:
    """127.0.0.0/8 and ::1 (any spelling of it); a zone suffix (fe80::1%eth0) is not loopback."""
    if address.startswith("127."):
        return True
    if ":" not in address:
        return False
    import ipaddress

    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def check_address(text: str, flag: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise SpecError(f"{flag} {text}: not an IP address",
                        hint="give an IPv4 or IPv6 address, e.g. 1.1.1.1") from None


def _check_word(text: str, flag: str) -> str:
    if not text or any(c.isspace() for c in text) or "\0" in text:
        raise SpecError(f"{flag} {text!r}: must be one word")
    return text


def nameservers_for(driver: str, servers: list[str]) -> list[str]:
    """The host's ``servers`` a container on network ``driver`` can use: host and default
    (the host's network), none, bridge, pasta, slirp4netns, or a joined namespace (ns, or for
    container:NAME the other container's driver)."""
    if driver in HOST_NETWORKS:
        return list(servers)
    if driver == "none":
        return []
    if driver == "slirp4netns":
        return [SLIRP4NETNS_DNS]
    reachable = [n for n in servers if not is_loopback(n)]
    if driver == "pasta":
        return reachable if reachable or not servers else [PASTA_DNS_FORWARD]
    if driver in ("bridge", "ns", "container"):
        return reachable or list(FALLBACK_NAMESERVERS)
    raise SpecError(f"no nameservers are known for network driver {driver!r}")


def resolv_conf(host_text: str, *, driver: str, dns=(), dns_search=(), dns_options=(),
                resolved_text: str | None = None) -> tuple[str, list[str]]:
    """The container's resolv.conf on network ``driver`` and the notes to show under --explain
    (see module doc). ``resolved_text`` is systemd-resolved's upstream resolv.conf, when the
    host has one."""
    nameservers, search, options = parse_resolv_conf(host_text)
    notes = []
    if dns:
        nameservers = [check_address(d, "--dns") for d in dns]
    elif driver not in HOST_NETWORKS:
        if nameservers and all(is_loopback(n) for n in nameservers) and resolved_text:
            upstream = [n for n in parse_resolv_conf(resolved_text)[0] if not is_loopback(n)]
            if upstream:
                notes.append("resolv.conf: the host's nameserver is systemd-resolved's stub; "
                             "using its upstream servers " + ", ".join(upstream))
                nameservers = upstream
        chosen = nameservers_for(driver, nameservers)
        dropped = [n for n in nameservers if is_loopback(n) and n not in chosen]
        if dropped and driver != "none":
            notes.append("resolv.conf: dropped loopback nameservers the container's network "
                         "namespace cannot reach: " + ", ".join(dropped))
        if chosen == list(FALLBACK_NAMESERVERS) and chosen != nameservers:
            notes.append("resolv.conf: no usable nameserver left; using docker's default "
                         + ", ".join(chosen) + " (give --dns to choose)")
        nameservers = chosen
    if dns_search:
        search = [] if list(dns_search) == ["."] else \
            [_check_word(d, "--dns-search") for d in dns_search]
    if dns_options:
        options = [_check_word(o, "--dns-option") for o in dns_options]
    lines = [f"nameserver {n}" for n in nameservers]
    if search:
        lines.append("search " + " ".join(search))
    if options:
        lines.append("options " + " ".join(options))
    return "".join(line + "\n" for line in lines), notes


def parse_add_host(entry: str, *, own_network: bool) -> tuple[str, str]:
    """--add-host NAME:IP (or NAME=IP; an IPv6 address may be in brackets) -> (name, address).
    ``host-gateway`` is the host itself: 127.0.0.1 with the host's network; a container with
    a network namespace of its own has no way to the host here, so it is refused."""
    sep = min((i for i in (entry.find("="), entry.find(":")) if i > 0), default=-1)
    if sep < 0:
        raise SpecError(f"--add-host {entry}: expected NAME:IP",
                        hint="e.g. --add-host db.local:10.0.0.5")
    name, address = _check_word(entry[:sep], "--add-host"), entry[sep + 1:]
    if address == HOST_GATEWAY:
        if own_network:
            raise SpecError(f"--add-host {entry}: host-gateway needs a network that reaches the "
                            "host", hint="with --network none there is no route to the host")
        return name, "127.0.0.1"
    return name, check_address(address, "--add-host")


def hosts(host_text: str, *, own_network: bool, hostname: str, add_hosts=(),
          address: str | None = None) -> str:
    """The container's /etc/hosts (see module doc)."""
    base = DEFAULT_HOSTS if own_network else host_text
    if base and not base.endswith("\n"):
        base += "\n"
    lines = [f"{address or HOSTNAME_ADDRESS}\t{hostname}"]
    lines += [f"{ip}\t{name}" for name, ip in
              (parse_add_host(e, own_network=own_network) for e in add_hosts)]
    return base + "".join(line + "\n" for line in lines)


def hostname_file(hostname: str) -> str:
    return hostname + "\n"
