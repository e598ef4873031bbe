"""/etc/resolv.conf, /etc/hosts, /etc/hostname for a container (minictr/spec/etcfiles.py)."""
import pytest

from minictr.errors import SpecError
from minictr.spec import etcfiles

HOST = ("# generated\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\n"
        "domain corp.example\nsearch a.example b.example\noptions edns0 trust-ad\n"
        "sortlist 10.0.0.0/8\n")


def test_the_hosts_network_keeps_its_loopback_resolver():
    text, notes = etcfiles.resolv_conf(HOST, driver="host")
    assert text == ("nameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\n"
                    "search a.example b.example\noptions edns0 trust-ad\n")
    assert notes == []


def test_a_bridged_network_namespace_drops_loopback_resolvers():
    text, notes = etcfiles.resolv_conf(HOST, driver="bridge")
    assert text.splitlines()[0] == "nameserver 10.0.0.2" and "127.0.0.53" not in text
    assert "::1" not in text and "dropped loopback nameservers" in notes[0]


def test_systemd_resolved_stub_is_replaced_by_its_upstream_servers():
    stub = "nameserver 127.0.0.53\noptions edns0\n"
    upstream = "nameserver 192.0.2.1\nnameserver 192.0.2.2\n"
    text, notes = etcfiles.resolv_conf(stub, driver="bridge", resolved_text=upstream)
    assert text == "nameserver 192.0.2.1\nnameserver 192.0.2.2\noptions edns0\n"
    text, notes = etcfiles.resolv_conf(stub, driver="bridge")
    assert text.startswith("nameserver 8.8.8.8\nnameserver 8.8.4.4\n")
    assert any("docker's default" in n for n in notes)


def test_dns_flags_replace_the_hosts_settings():
    text, _ = etcfiles.resolv_conf(HOST, driver="host", dns=("1.1.1.1", "2606:4700::1111"),
                                   dns_search=("x.test",), dns_options=("ndots:2",))
    assert text == ("nameserver 1.1.1.1\nnameserver 2606:4700::1111\nsearch x.test\n"
                    "options ndots:2\n")
    text, _ = etcfiles.resolv_conf(HOST, driver="host", dns_search=(".",))
    assert "search" not in text
    with pytest.raises(SpecError, match="--dns 300.1.1.1: not an IP address"):
        etcfiles.resolv_conf(HOST, driver="host", dns=("300.1.1.1",))
    with pytest.raises(SpecError, match="--dns-option"):
        etcfiles.resolv_conf(HOST, driver="host", dns_options=("a b",))


def test_hosts_file():
    own = etcfiles.hosts("ignored", own_network=True, hostname="box",
                         add_hosts=("db:10.0.0.5", "v6=[2001:db8::1]", "v6b:2001:db8::2"))
    assert own.startswith(etcfiles.DEFAULT_HOSTS) and "ignored" not in own
    assert own.endswith("127.0.1.1\tbox\n10.0.0.5\tdb\n2001:db8::1\tv6\n2001:db8::2\tv6b\n")
    shared = etcfiles.hosts("127.0.0.1 localhost", own_network=False, hostname="box",
                            add_hosts=("gw:host-gateway",), address="10.88.0.2")
    assert shared == "127.0.0.1 localhost\n10.88.0.2\tbox\n127.0.0.1\tgw\n"
    with pytest.raises(SpecError, match="host-gateway needs a network"):
        etcfiles.hosts("", own_network=True, hostname="b", add_hosts=("gw:host-gateway",))
    for bad in ("nohost", "x:notanip", ":1.2.3.4"):
        with pytest.raises(SpecError, match="--add-host"):
            etcfiles.hosts("", own_network=True, hostname="b", add_hosts=(bad,))


@pytest.mark.parametrize("address,loopback", [("127.0.0.53", True), ("127.1.2.3", True),
                                              ("::1", True), ("0:0:0:0:0:0:0:1", True),
                                              ("10.0.0.1", False), ("fe80::1%eth0", False)])
def test_is_loopback(address, loopback):
    assert etcfiles.is_loopback(address) is loopback


RESOLV = "# generated\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch lab\n"
LOOPBACK_ONLY = "nameserver 127.0.0.53\nnameserver ::1\n"


@pytest.mark.parametrize("driver, resolv, expected", [
    ("host", RESOLV, ["127.0.0.53", "10.0.0.2"]),
    ("default", LOOPBACK_ONLY, ["127.0.0.53", "::1"]),
    ("none", RESOLV, []),
    ("bridge", RESOLV, ["10.0.0.2"]),
    ("bridge", LOOPBACK_ONLY, ["8.8.8.8", "8.8.4.4"]),
    ("pasta", RESOLV, ["10.0.0.2"]),
    ("pasta", LOOPBACK_ONLY, ["169.254.1.1"]),
    ("pasta", "", []),
    ("slirp4netns", RESOLV, ["10.0.2.3"]),
    ("ns", LOOPBACK_ONLY, ["8.8.8.8", "8.8.4.4"]),
])
def test_nameservers_follow_the_network(driver, resolv, expected):
    servers = etcfiles.parse_resolv_conf(resolv)[0]
    assert etcfiles.nameservers_for(driver, servers) == expected
    text, _ = etcfiles.resolv_conf(resolv, driver=driver)
    assert etcfiles.parse_resolv_conf(text)[0] == expected


def test_dns_flag_wins_and_unknown_drivers_are_errors():
    text, _ = etcfiles.resolv_conf(RESOLV, driver="bridge", dns=("1.1.1.1",))
    assert etcfiles.parse_resolv_conf(text)[0] == ["1.1.1.1"]
    with pytest.raises(SpecError):
        etcfiles.nameservers_for("carrier-pigeon", ["10.0.0.2"])
