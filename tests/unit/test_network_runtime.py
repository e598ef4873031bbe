"""The runtime's network steps against the recording face: bridge, leases, nftables scripts,
pasta/slirp4netns command lines, Landlock scopes (minictr/runtime/{network,bridge,nftables,
usernet,landlock}.py). Nothing here touches the machine's network."""
import json
import os

import pytest

from minictr.errors import RuntimeSetupError, SpecError
from minictr.runtime import bridge, landlock, network, nftables, usernet
from minictr.runtime.syscalls import RecordingSyscalls

CID1 = "a" * 64
CID2 = "b" * 64
PORTS = ({"host_ip": "", "host_port": 8080, "container_port": 80, "protocol": "tcp"},
         {"host_ip": "127.0.0.1", "host_port": 5353, "container_port": 53, "protocol": "udp"})


def plan(**kw):
    kw.setdefault("driver", "bridge")
    kw.setdefault("nft", "/usr/sbin/nft")
    return network.NetworkPlan(**kw)


def nft_scripts(kernel):
    return [c[4].decode() for c in kernel.calls if c[0] == "run_program"]


# ---------------------------------------------------------------- nftables


def test_table_script_is_one_replaceable_table_of_our_own():
    script = nftables.table_script("minictr0", "10.87.0.0/16")
    lines = script.splitlines()
    assert lines[:3] == ["add table ip minictr0", "delete table ip minictr0",
                         "table ip minictr0 {"]
    assert 'iifname "minictr0" ip daddr 127.0.0.0/8 drop' in script     # route_localnet guard
    assert 'ip saddr 10.87.0.0/16 oifname != "minictr0" masquerade' in script
    assert 'ct status dnat oifname "minictr0" masquerade' in script     # loopback and hairpin
    assert script.count("map @published_at") == 2 and script.count("map @published\n") == 2
    assert "type nat hook output priority -100" in script


def test_ports_are_map_elements_created_not_added():
    add = nftables.add_ports_script("minictr0", list(PORTS), "10.87.0.2")
    assert add.splitlines() == [
        "create element ip minictr0 published { tcp . 8080 : 10.87.0.2 . 80 }",
        "create element ip minictr0 published_at { 127.0.0.1 . udp . 5353 : 10.87.0.2 . 53 }"]
    assert nftables.delete_ports_script("minictr0", list(PORTS)).splitlines() == [
        "delete element ip minictr0 published { tcp . 8080 }",
        "delete element ip minictr0 published_at { 127.0.0.1 . udp . 5353 }"]


class _NftFails:
    def run_program(self, path, args, env, stdin, timeout):
        return 1, b"/dev/stdin:1:1: Error: Could not process rule: File exists\n"


def test_a_failing_nft_transaction_is_an_error_with_nfts_words():
    kernel = _NftFails()
    with pytest.raises(RuntimeSetupError, match="File exists") as err:
        nftables.apply(kernel, "nft", "create element x\n", None, "publish 8080")
    assert "already publishes" in err.value.hint


# ---------------------------------------------------------------- leases


def test_addresses_are_leased_lowest_first_skipping_the_gateway(tmp_path):
    import ipaddress

    subnet = ipaddress.IPv4Network("10.87.0.0/29")
    with bridge.Leases(str(tmp_path)) as leases:
        assert leases.free_address(subnet, {}) == "10.87.0.2"
        leases.take("10.87.0.2", {"id": "x"})
        with pytest.raises(FileExistsError):
            leases.take("10.87.0.2", {"id": "y"})
        taken = leases.all()
        assert taken == {"10.87.0.2": {"id": "x"}}
        assert leases.free_address(subnet, taken) == "10.87.0.3"
        full = {f"10.87.0.{i}": {} for i in range(2, 7)}
        with pytest.raises(RuntimeSetupError, match="no address is left"):
            leases.free_address(subnet, full)
    assert not [n for n in os.listdir(tmp_path / ".network" / "leases") if n.startswith(".")]


# ---------------------------------------------------------------- the bridge


def attach(kernel, state, cid, pid=None, ports=(), **kw):
    records = []
    out = bridge.attach(kernel, str(state), cid, plan(ports=ports, **kw), pid or os.getpid(),
                        records.append, None)
    assert records == [out]
    return out


def test_first_container_makes_the_bridge_then_its_veth(tmp_path):
    kernel = RecordingSyscalls(links={})
    pid = os.getpid()
    rec = attach(kernel, tmp_path, CID1, ports=PORTS)
    assert rec["address"] == "10.87.0.2" and rec["gateway"] == "10.87.0.1"
    assert rec["veth"] == "mc" + CID1[:13] and len(rec["veth"]) == 15
    calls = [c for c in kernel.calls if c[0] not in ("read_text",)]
    names = [c[0] for c in calls]
    assert names == ["link_get", "link_add", "addr_add", "link_set", "write_file",
                     "link_add", "link_set", "addr_add", "link_set", "route_add", "run_program"]
    assert calls[1] == ("link_add", "minictr0", "bridge",
                        {"alias": f"minictr:{tmp_path}"})
    assert calls[4] == ("write_file", "/proc/sys/net/ipv4/conf/minictr0/route_localnet", "1")
    assert calls[5] == ("link_add", rec["veth"], "veth",
                        {"peer": "eth0", "peer_netns_pid": pid})
    assert calls[6] == ("link_set", rec["veth"], {"master": "minictr0", "up": True})
    netns = f"/proc/{pid}/ns/net"
    assert calls[7] == ("addr_add", "eth0", "10.87.0.2", 16, netns)
    assert calls[9] == ("route_add", "10.87.0.1", netns)
    (script,) = nft_scripts(kernel)                 # one transaction: the table and the ports
    assert script.startswith("add table ip minictr0\n") and "create element" in script
    lease = json.loads((tmp_path / ".network" / "leases" / "10.87.0.2").read_text())
    assert lease["id"] == CID1 and lease["pid"] == pid and lease["ports"] == list(PORTS)


def test_the_second_container_reuses_the_bridge_and_takes_the_next_address(tmp_path):
    attach(RecordingSyscalls(links={}), tmp_path, CID1)
    kernel = RecordingSyscalls(links={"minictr0": {"alias": f"minictr:{tmp_path}"}})
    rec = attach(kernel, tmp_path, CID2)
    assert rec["address"] == "10.87.0.3"
    assert [c[1] for c in kernel.calls if c[0] == "link_add"] == ["mc" + CID2[:13]]
    assert nft_scripts(kernel) == []                 # no ports, and the table is there


def test_a_bridge_we_did_not_make_is_refused(tmp_path):
    for alias, who in ((None, "something else"), ("minictr:/elsewhere", "/elsewhere")):
        kernel = RecordingSyscalls(links={"minictr0": {"alias": alias}})
        with pytest.raises(RuntimeSetupError, match=who):
            attach(kernel, tmp_path / str(bool(alias)), CID1)


def test_a_stale_bridge_of_ours_is_made_afresh(tmp_path):
    kernel = RecordingSyscalls(links={"minictr0": {"alias": f"minictr:{tmp_path}"}})
    attach(kernel, tmp_path, CID1)
    assert kernel.calls[1] == ("link_del", "minictr0")


def test_leases_of_dead_processes_are_released_at_the_next_start(tmp_path):
    """A launcher killed by SIGKILL leaves its lease, veth and ports; the next start on the
    bridge finds the lease's process gone and releases them."""
    attach(RecordingSyscalls(links={}), tmp_path, CID1, pid=os.getpid(), ports=PORTS[:1])
    lease_path = tmp_path / ".network" / "leases" / "10.87.0.2"
    lease = json.loads(lease_path.read_text())
    lease["ticks"] = -1                               # no process has started at tick -1
    lease_path.write_text(json.dumps(lease))
    kernel = RecordingSyscalls(links={})
    rec = attach(kernel, tmp_path, CID2)
    assert rec["address"] == "10.87.0.2"               # released, then leased again
    assert "delete element ip minictr0 published { tcp . 8080 }" in nft_scripts(kernel)[0]
    assert ("link_del", "mc" + CID1[:13]) in kernel.calls


def test_release_is_idempotent_and_the_last_one_out_removes_bridge_and_table(tmp_path):
    rec = attach(RecordingSyscalls(links={}), tmp_path, CID1, ports=PORTS[:1])
    alias = {"minictr0": {"alias": f"minictr:{tmp_path}"}}
    kernel = RecordingSyscalls(links=alias)
    bridge.release(kernel, rec, CID1)
    assert nft_scripts(kernel) == ["delete table ip minictr0\n"]   # the elements go with it
    assert ("link_del", rec["veth"]) in kernel.calls and ("link_del", "minictr0") in kernel.calls
    assert not os.listdir(tmp_path / ".network" / "leases")
    again = RecordingSyscalls(links={})
    bridge.release(again, rec, CID1)
    assert all("element" not in s for s in nft_scripts(again))


def test_release_deletes_its_ports_while_others_still_run(tmp_path):
    rec = attach(RecordingSyscalls(links={}), tmp_path, CID1, ports=PORTS[:1])
    alias = {"minictr0": {"alias": f"minictr:{tmp_path}"}}
    attach(RecordingSyscalls(links=alias), tmp_path, CID2)
    kernel = RecordingSyscalls(links=alias)
    bridge.release(kernel, rec, CID1)
    assert nft_scripts(kernel) == ["delete element ip minictr0 published { tcp . 8080 }\n"]
    assert ("link_del", "minictr0") not in kernel.calls
    assert os.listdir(tmp_path / ".network" / "leases") == ["10.87.0.3"]


def test_release_leaves_an_address_that_went_to_another_container(tmp_path):
    rec = attach(RecordingSyscalls(links={}), tmp_path, CID1, ports=PORTS[:1])
    lease_path = tmp_path / ".network" / "leases" / "10.87.0.2"
    lease = json.loads(lease_path.read_text())
    lease_path.write_text(json.dumps(dict(lease, id=CID2)))      # CID2's, and alive
    kernel = RecordingSyscalls(links={})
    bridge.release(kernel, rec, CID1)
    assert lease_path.exists() and nft_scripts(kernel) == []
    assert ("link_del", rec["veth"]) in kernel.calls


def test_a_different_subnet_while_containers_run_is_refused(tmp_path):
    attach(RecordingSyscalls(links={}), tmp_path, CID1)
    with pytest.raises(RuntimeSetupError, match="this one asks for minictr0 with 10.99"):
        attach(RecordingSyscalls(links={"minictr0": {"alias": f"minictr:{tmp_path}"}}),
               tmp_path, CID2, subnet="10.99.0.0/24")


# ---------------------------------------------------------------- plans


def test_plan_bridge_root_and_rootless():
    which = {"nft": "/usr/sbin/nft", "pasta": "/usr/bin/pasta",
             "slirp4netns": "/usr/bin/slirp4netns"}.get
    root = network.plan_bridge(PORTS, rootless=False, environ={}, which=which)
    assert (root.driver, root.bridge, root.subnet, root.nft) == (
        "bridge", "minictr0", "10.87.0.0/16", "/usr/sbin/nft")
    env = {"MINICTR_BRIDGE": "lab0", "MINICTR_BRIDGE_SUBNET": "192.168.77.0/24"}
    assert network.plan_bridge((), rootless=False, environ=env, which=which)[2:4] == (
        "lab0", "192.168.77.0/24")
    assert network.plan_bridge((), rootless=True, environ={}, which=which).driver == "pasta"
    assert network.plan_bridge((), rootless=True, environ={"MINICTR_ROOTLESS_NETWORK":
                                                           "slirp4netns"}, which=which).helper \
        == "/usr/bin/slirp4netns"
    only_slirp = {"slirp4netns": "/usr/bin/slirp4netns"}.get
    assert network.plan_bridge((), rootless=True, environ={}, which=only_slirp).driver == \
        "slirp4netns"


@pytest.mark.parametrize("env, rootless, words", [
    ({"MINICTR_BRIDGE": "my-bridge"}, False, "not a usable bridge name"),
    ({"MINICTR_BRIDGE": "b" * 16}, False, "not a usable bridge name"),
    ({"MINICTR_BRIDGE_SUBNET": "10.87.0.1/16"}, False, "host bits set"),
    ({"MINICTR_BRIDGE_SUBNET": "10.87.0.0/31"}, False, "too small"),
    ({"MINICTR_ROOTLESS_NETWORK": "vpnkit"}, True, "not pasta or slirp4netns")])
def test_bad_network_settings_are_errors(env, rootless, words):
    with pytest.raises(SpecError, match=words):
        network.plan_bridge((), rootless=rootless, environ=env, which=lambda n: "/x/" + n)


def test_missing_tools_are_named_with_the_package():
    with pytest.raises(RuntimeSetupError, match="nftables") as err:
        network.plan_bridge((), rootless=False, environ={}, which=lambda n: None)
    assert "apt-get install nftables" in err.value.hint
    with pytest.raises(RuntimeSetupError, match="pasta or slirp4netns") as err:
        network.plan_bridge((), rootless=True, environ={}, which=lambda n: None)
    assert "passt" in err.value.hint


# ---------------------------------------------------------------- rootless helpers


def test_pasta_command_line_forwards_only_what_was_published():
    args = usernet.pasta_args(42, list(PORTS), "/s/pasta.ready", "/s/pasta.log")
    assert args[:2] == ["pasta", "--config-net"] and "--foreground" in args
    assert "--no-map-gw" in args
    pairs = list(zip(args, args[1:]))
    assert ("-t", "8080:80") in pairs and ("-u", "127.0.0.1/5353:53") in pairs
    assert ("-T", "none") in pairs and ("-U", "none") in pairs
    assert ("--netns", "/proc/42/ns/net") in pairs and ("--userns", "/proc/42/ns/user") in pairs
    assert ("--pid", "/s/pasta.ready") in pairs
    bare = usernet.pasta_args(42, [], "/r", "/l")
    assert ("-t", "none") in zip(bare, bare[1:]) and ("-u", "none") in zip(bare, bare[1:])
    assert "auto" not in bare


def test_slirp4netns_command_line():
    args = usernet.slirp4netns_args(42, 7, 8, usernet.API_SOCKET)
    assert args[0] == "slirp4netns" and args[-2:] == ["42", "tap0"]
    for flag in ("--configure", "--disable-host-loopback", "--ready-fd=7", "--exit-fd=8",
                 "--userns-path=/proc/42/ns/user", "--api-socket=slirp4netns.sock"):
        assert flag in args


def test_dry_run_starts_no_helper_and_records_the_command(tmp_path):
    lines = []
    kernel = RecordingSyscalls()
    rec, session = usernet.attach(kernel, plan(driver="pasta", helper="/usr/bin/pasta",
                                               ports=PORTS[:1]), 4242, str(tmp_path),
                                  lambda r: None, lines.append)
    assert rec["driver"] == "pasta" and rec["helper_pid"] == session.pid
    helper = [c for c in kernel.calls if c[0] == "start_helper"]
    assert helper and helper[0][1] == "/usr/bin/pasta" and lines[0].startswith("pasta ")


# ---------------------------------------------------------------- Landlock


class _Abi:
    def __init__(self, abi):
        self.abi = abi

    def landlock_abi_version(self):
        return self.abi


def test_landlock_scopes_come_from_the_annotation_and_the_kernel():
    spec = {"annotations": {"org.minictr.landlock.scoped": "abstract_unix_socket"}}
    assert landlock.scopes_for(_Abi(7), spec, None) == landlock.SCOPES["abstract_unix_socket"]
    assert landlock.scopes_for(_Abi(7), {}, None) == 0
    said = []
    assert landlock.scopes_for(_Abi(5), spec, said.append) == 0
    assert "needs Landlock ABI 6" in said[0]
    with pytest.raises(SpecError, match="unknown scope"):
        landlock.scopes_for(_Abi(7), {"annotations": {"org.minictr.landlock.scoped": "fs"}},
                            None)


def test_landlock_restrict_creates_restricts_and_closes():
    kernel = RecordingSyscalls()
    landlock.restrict(kernel, landlock.SCOPES["abstract_unix_socket"], None)
    assert kernel.names() == ["landlock_create_ruleset", "landlock_restrict_self", "close"]
