"""--network and -p as data (minictr/spec/network.py) and what the builder makes of
them (spec/builder.py): namespaces, capabilities, annotations."""
import pytest

from minictr.errors import SpecError
from minictr.spec import defaults
from minictr.spec import network as net
from tests.unit.test_spec_builder import build


def test_network_modes_parse():
    assert net.parse_network(None) == net.Network(net.DEFAULT)
    assert net.parse_network("bridge") == net.Network("bridge")
    assert net.parse_network("container:web") == net.Network("container", "web")
    assert net.parse_network("ns:/run/netns/x") == net.Network("ns", "/run/netns/x")
    assert str(net.parse_network("container:web")) == "container:web"


@pytest.mark.parametrize("text, words", [
    ("bridged", "not a network minictr knows"), ("ns:run/netns/x", "must be absolute"),
    ("container:", "not a network"), ("slirp4netns", "not implemented"),
    ("pasta:-T,auto", "not implemented"), ("private", "not implemented")])
def test_unknown_or_unsupported_networks_are_errors_naming_them(text, words):
    with pytest.raises(SpecError, match=words) as err:
        net.parse_network(text)
    assert err.value.hint


def test_publish_forms():
    ports = net.parse_publish(("8080:80", "127.0.0.1:5353:53/udp", "0.0.0.0:9000:9000/tcp"))
    assert ports == (net.PortMapping("", 8080, 80, "tcp"),
                     net.PortMapping("127.0.0.1", 5353, 53, "udp"),
                     net.PortMapping("", 9000, 9000, "tcp"))
    assert [str(p) for p in ports] == ["8080:80/tcp", "127.0.0.1:5353:53/udp", "9000:9000/tcp"]
    assert ports[1].to_dict() == {"host_ip": "127.0.0.1", "host_port": 5353,
                                  "container_port": 53, "protocol": "udp"}


@pytest.mark.parametrize("entry, words", [
    ("80", "expected"), ("127.0.0.1::80", "not a port number"),
    ("8080:80/sctp", "not tcp or udp"), ("8000-8010:80", "the host range has 11 ports"),
    ("8000:80-81", "container range 2"), ("8002-8000:1-3", "ends before it starts"),
    ("8000-:80", "not a port number"), ("8000-8001-8002:1-2", "not a port number"),
    ("65535-65536:1-2", "not a port number"),
    ("[::1]:8080:80", "IPv6"), ("localhost:8080:80", "not an IPv4 address"),
    ("0:80", "not a port number"), ("65536:80", "not a port number"),
    ("a:b:c:d", "expected")])
def test_bad_publish_is_one_line_with_a_hint(entry, words):
    with pytest.raises(SpecError, match=words) as err:
        net.parse_publish((entry,))
    assert "\n" not in str(err.value) and err.value.hint


def test_port_ranges_are_one_mapping_per_port():
    """docker's -p 8000-8002:9000-9002: ranges of the same length, mapped in order; the checks
    of a single port apply to each (a range that overlaps another -p is refused)."""
    ports = net.parse_publish(("127.0.0.1:8000-8002:9000-9002/udp", "7000:7000"))
    assert ports == (net.PortMapping("127.0.0.1", 8000, 9000, "udp"),
                     net.PortMapping("127.0.0.1", 8001, 9001, "udp"),
                     net.PortMapping("127.0.0.1", 8002, 9002, "udp"),
                     net.PortMapping("", 7000, 7000, "tcp"))
    with pytest.raises(SpecError, match="host port 8001/tcp is already published"):
        net.parse_publish(("8001:80", "8000-8002:9000-9002"))


def test_a_host_port_is_published_once():
    net.parse_publish(("8080:80", "8080:80/udp", "127.0.0.1:8081:80", "127.0.0.2:8081:80"))
    for pair in (("8080:80", "8080:81"), ("127.0.0.1:8080:80", "8080:81"),
                 ("8080:80", "127.0.0.1:8080:81")):
        with pytest.raises(SpecError, match="already published"):
            net.parse_publish(pair)


def test_publish_needs_the_bridge():
    with pytest.raises(SpecError, match="-p needs --network bridge"):
        build(network="host", publish=("8080:80",))
    with pytest.raises(SpecError, match="-p needs --network bridge"):
        build(publish=("8080:80",))


# ---------------------------------------------------------------- the builder


def kinds(spec):
    return [(n["type"], n.get("path")) for n in spec["linux"]["namespaces"]]


def test_each_network_mode_becomes_namespace_entries():
    assert ("network", None) not in kinds(build())
    assert ("network", None) not in kinds(build(network="host"))
    assert ("network", None) in kinds(build(network="none"))
    bridge = build(network="bridge", publish=("8080:80",))
    assert ("network", None) in kinds(bridge)
    assert bridge["annotations"]["org.minictr.network"] == "bridge"
    assert bridge["annotations"]["org.minictr.ports"] == "8080:80/tcp"
    joined = build(network="container:web", network_path="/proc/42/ns/net")
    assert ("network", "/proc/42/ns/net") in kinds(joined)
    assert ("network", "/run/netns/x") in kinds(build(network="ns:/run/netns/x"))


def test_an_own_network_gets_a_fresh_sysfs_rootless():
    for network in ("none", "bridge"):
        dests = {m["destination"]: m["type"] for m in
                 build(rootless=True, network=network)["mounts"]}
        assert dests["/sys"] == "sysfs"
    assert {m["destination"]: m["type"] for m in build(rootless=True)["mounts"]}["/sys"] == "bind"


def test_joining_a_namespace_needs_root():
    for network in ("container:web", "ns:/run/netns/x"):
        with pytest.raises(SpecError, match="needs root"):
            build(rootless=True, network=network, network_path="/proc/1/ns/net")


def test_the_default_network_outside_slurm_is_hardened():
    """Not given: the host's network, but no CAP_NET_RAW and abstract unix sockets scoped."""
    spec = build()
    assert "CAP_NET_RAW" not in spec["process"]["capabilities"]["bounding"]
    assert spec["annotations"]["org.minictr.landlock.scoped"] == "abstract_unix_socket"
    assert "org.minictr.network" not in spec["annotations"]


@pytest.mark.parametrize("kw", [dict(network="host"), dict(host_env={"SLURM_JOB_ID": "7"}),
                                dict(privileged=True), dict(network="bridge")])
def test_explicit_host_slurm_jobs_privileged_and_bridge_are_not_hardened(kw):
    spec = build(**kw)
    assert "CAP_NET_RAW" in spec["process"]["capabilities"]["bounding"]
    assert "org.minictr.landlock.scoped" not in spec.get("annotations", {})


def test_joining_a_hardened_container_keeps_its_hardening():
    """--network container:NAME where NAME runs on the default (hardened) network: the joiner
    is in the host's network namespace too, so it gets NAME's limits, not more."""
    joined = build(network="container:web", network_path="/proc/1/ns/net", joined_hardened=True)
    assert "CAP_NET_RAW" not in joined["process"]["capabilities"]["bounding"]
    assert joined["annotations"]["org.minictr.landlock.scoped"] == "abstract_unix_socket"
    plain = build(network="container:web", network_path="/proc/1/ns/net")
    assert "CAP_NET_RAW" in plain["process"]["capabilities"]["bounding"]
    privileged = build(network="container:web", network_path="/proc/1/ns/net",
                       joined_hardened=True, privileged=True)
    assert "org.minictr.landlock.scoped" not in privileged.get("annotations", {})


def test_cap_add_net_raw_keeps_it_in_the_default_network():
    spec = build(cap_add=("NET_RAW",))
    assert "CAP_NET_RAW" in spec["process"]["capabilities"]["bounding"]
    assert spec["annotations"]["org.minictr.landlock.scoped"] == "abstract_unix_socket"


def test_users_cannot_set_minictr_network_annotations():
    spec = build(network="host", annotations=("org.minictr.landlock.scoped=signal",
                                              "org.minictr.network=bridge"))
    assert "org.minictr.landlock.scoped" not in spec["annotations"]
    assert spec["annotations"]["org.minictr.network"] == "host"


def test_default_caps_table_is_unchanged():
    assert "CAP_NET_RAW" in defaults.DEFAULT_CAPABILITIES
