"""--network bridge as root, -p, container:NAME and ns:PATH, and the default network's
hardening, inside the namespaces of tests/netns.py (minictr's bridge lives in "host")."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from tests.netns import HOST_ADDRESS, NOTHING_LEFT, OUTSIDE_ADDRESS

SERVE = ("mkdir -p /www && echo {word} > /www/f && httpd -p 80 -h /www && "
         "echo READY $(ip -4 -o addr show dev eth0) && exec sleep 1000")


def serve(mc, word: str, *args: str, network: tuple = ("--network", "bridge")):
    """A container serving /f (containing ``word``) on port 80; returns (launcher, its
    address) once httpd listens (busybox httpd backgrounds itself after bind(2))."""
    proc = mc.popen("run", "--rm", "--name", word, *network, *args, "busybox:test", "sh", "-c",
                    SERVE.format(word=word))
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise AssertionError(f"server {word} did not start: {line!r} {proc.stderr.read()}")
    return proc, re.search(r"inet (\S+)/", line).group(1)


def stop(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def fetch(mc, url: str, *network: str) -> subprocess.CompletedProcess:
    """An HTTP GET from a new container, with nc (a bare request; no retries)."""
    host, _, rest = url.removeprefix("http://").partition("/")
    address, _, port = host.partition(":")
    request = f"GET /{rest} HTTP/1.0\\r\\n\\r\\n"
    return mc("run", "--rm", *(network or ("--network", "bridge")), "busybox:test", "sh", "-c",
              f"printf '{request}' | nc -w 5 {address} {port or 80}")


def in_host(world, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run([*world.in_host(), *cmd], capture_output=True, text=True, timeout=60)


def host_get(world, address: str, port: int, where=None) -> str:
    """GET /f from a namespace of the world (default "host") with Python's socket module."""
    code = ("import socket; s=socket.create_connection(('%s', %d), timeout=10); "
            "s.sendall(b'GET /f HTTP/1.0\\r\\n\\r\\n'); b=b''\n"
            "while True:\n    d=s.recv(4096)\n    if not d: break\n    b+=d\n"
            "print(b.decode().split('\\r\\n\\r\\n', 1)[-1], end='')" % (address, port))
    prefix = where or world.in_host()
    res = subprocess.run([*prefix, "/usr/bin/python3", "-c", code], capture_output=True,
                         text=True, timeout=60)
    return res.stdout if res.returncode == 0 else f"FAILED: {res.stderr.strip()[-200:]}"


def test_a_container_reaches_another_on_the_bridge(mc, world):
    proc, address = serve(mc, "alpha")
    try:
        assert address.startswith("10.87.")
        res = fetch(mc, f"http://{address}/f")
        assert res.returncode == 0 and "alpha" in res.stdout, res.stderr
    finally:
        stop(proc)
    assert world.leftovers(mc.state) == NOTHING_LEFT


def test_published_ports_answer_on_the_hosts_loopback_and_addresses(mc, world):
    proc, _ = serve(mc, "beta", "-p", "18080:80", "-p", "127.0.0.1:18081:80")
    try:
        assert host_get(world, "127.0.0.1", 18080).strip() == "beta"
        assert host_get(world, "127.0.0.1", 18081).strip() == "beta"
        # from the outside, to the host's address: the any-address port only
        outside = world.in_outside()
        assert host_get(world, HOST_ADDRESS, 18080, outside).strip() == "beta"
        assert host_get(world, HOST_ADDRESS, 18081, outside).startswith("FAILED")
        # a container reaches a published port through the gateway (hairpin NAT)
        res = fetch(mc, "http://10.87.0.1:18080/f")
        assert "beta" in res.stdout, res.stderr
    finally:
        stop(proc)
    assert world.leftovers(mc.state) == NOTHING_LEFT
    assert host_get(world, "127.0.0.1", 18080).startswith("FAILED")


def test_a_port_range_publishes_each_port(mc, world):
    """docker's range form, -p 18090-18091:80-81: each host port reaches its container port."""
    proc = mc.popen("run", "--rm", "--name", "ranged", "--network", "bridge",
                    "-p", "18090-18091:80-81", "busybox:test", "sh", "-c",
                    "mkdir -p /a /b && echo eighty > /a/f && echo eighty-one > /b/f && "
                    "httpd -p 80 -h /a && httpd -p 81 -h /b && echo READY && exec sleep 1000")
    line = proc.stdout.readline()
    try:
        assert line.startswith("READY"), (line, proc.stderr.read() if proc.poll() else "")
        assert host_get(world, "127.0.0.1", 18090).strip() == "eighty"
        assert host_get(world, "127.0.0.1", 18091).strip() == "eighty-one"
    finally:
        stop(proc)
    assert world.leftovers(mc.state) == NOTHING_LEFT


def test_a_detached_server_with_a_published_port(mc, world):
    """Issue 16's own example: `minictr run -d -p 8080:80 IMG httpd` serves on 127.0.0.1:8080
    once the launcher has returned, and `rm -f` leaves nothing."""
    res = mc("run", "-d", "--name", "detached", "--network", "bridge", "-p", "18084:80",
             "busybox:test", "sh", "-c",
             "mkdir -p /www && echo detached > /www/f && exec httpd -f -p 80 -h /www", check=True)
    try:
        assert mc.wait_running("detached")["id"].startswith(res.stdout.strip()[:12])
        for _ in range(400):             # httpd binds a moment after exec: bounded, not timed
            body = host_get(world, "127.0.0.1", 18084)
            if not body.startswith("FAILED"):
                break
            time.sleep(0.05)
        assert body.strip() == "detached"
    finally:
        mc("rm", "-f", "detached", check=True)
    assert world.leftovers(mc.state) == NOTHING_LEFT
    assert host_get(world, "127.0.0.1", 18084).startswith("FAILED")


def test_outbound_traffic_leaves_masqueraded(mc, world):
    """The server in "outside" sees the host's address, not the container's."""
    world.serve_peer_address(9000)
    res = mc("run", "--rm", "--network", "bridge", "busybox:test", "wget", "-q", "-O", "-",
             f"http://{OUTSIDE_ADDRESS}:9000/")
    assert res.returncode == 0 and res.stdout.strip() == HOST_ADDRESS, res.stderr


def test_a_published_host_port_is_held_by_one_container(mc, world):
    proc, _ = serve(mc, "gamma", "-p", "18082:80")
    try:
        res = mc("run", "--rm", "--network", "bridge", "-p", "18082:81", "busybox:test", "true")
        assert res.returncode == 125
        assert "18082" in res.stderr and "already publishes" in res.stderr
        assert len(world.leftovers(mc.state)["leases"]) == 1       # only gamma's
    finally:
        stop(proc)
    assert world.leftovers(mc.state) == NOTHING_LEFT


def test_container_network_is_shared_and_ns_path_joins(mc, world):
    proc, address = serve(mc, "delta")
    try:
        res = fetch(mc, "http://127.0.0.1/f", "--network", "container:delta")
        assert "delta" in res.stdout, res.stderr
        shown = mc("run", "--rm", "--network", "container:delta", "busybox:test", "ip", "-4",
                   "-o", "addr", "show", "dev", "eth0", check=True).stdout
        assert f"inet {address}/" in shown
    finally:
        stop(proc)
    bad = mc("run", "--rm", "--network", "container:delta", "busybox:test", "true")
    assert bad.returncode == 125 and "delta" in bad.stderr
    named = f"/run/netns/{world.outside}"
    p = json.loads(mc("run", "--rm", "--network", f"ns:{named}", "probe:test", "/probe",
                      "--only", "ns", check=True).stdout)
    assert p["ns"]["net"] == os.stat(named).st_ino
    seen = mc("run", "--rm", "--network", f"ns:{named}", "busybox:test", "ip", "-4", "-o",
              "addr", check=True).stdout
    assert OUTSIDE_ADDRESS in seen


def test_concurrent_starts_get_distinct_addresses(mc, world):
    procs = [mc.popen("run", "--rm", "--network", "bridge", "-p", f"{18100 + i}:80",
                      "busybox:test", "sh", "-c",
                      "echo $(ip -4 -o addr show dev eth0) && exec sleep 1000")
             for i in range(6)]
    try:
        lines = [p.stdout.readline() for p in procs]
        addresses = [re.search(r"inet (\S+)/", line).group(1) for line in lines]
        assert len(set(addresses)) == 6, lines
        assert len(world.leftovers(mc.state)["leases"]) == 6
    finally:
        for p in procs:
            stop(p)
    assert world.leftovers(mc.state) == NOTHING_LEFT


def test_nothing_is_left_after_100_starts(mc, world):
    for i in range(100):
        res = mc("run", "--rm", "--network", "bridge", "-p", "18200:80", "busybox:test", "true")
        assert res.returncode == 0, (i, res.stderr)
    assert world.leftovers(mc.state) == NOTHING_LEFT


def _gone(pid: int) -> None:
    for _ in range(400):
        if not os.path.exists(f"/proc/{pid}"):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} outlived its launcher")


def test_a_killed_launcher_is_cleaned_by_rm_and_by_the_next_start(mc, world):
    proc = mc.popen("run", "--name", "killed1", "--network", "bridge", "-p", "18300:80",
                    "busybox:test", "sleep", "1000")
    pid = mc.wait_running("killed1")["pid"]
    proc.kill()                                       # SIGKILL: no cleanup of its own
    proc.wait()
    _gone(pid)                                        # PR_SET_PDEATHSIG took the container
    left = world.leftovers(mc.state)
    assert len(left["leases"]) == 1 and "minictr0" in left["links"]
    mc("rm", "killed1", check=True)
    assert world.leftovers(mc.state) == NOTHING_LEFT

    proc = mc.popen("run", "--name", "killed2", "--network", "bridge", "-p", "18300:80",
                    "busybox:test", "sleep", "1000")
    pid = mc.wait_running("killed2")["pid"]
    proc.kill()
    proc.wait()
    _gone(pid)
    # the next start releases the dead container's lease and port, so it may take both
    res = mc("run", "--rm", "--network", "bridge", "-p", "18300:80", "busybox:test", "true")
    assert res.returncode == 0, res.stderr
    assert world.leftovers(mc.state) == NOTHING_LEFT
    mc("rm", "killed2", check=True)                  # idempotent
    assert world.leftovers(mc.state) == NOTHING_LEFT


def test_dry_run_shows_exactly_the_steps_of_a_real_run(mc, world):
    args = ("--network", "bridge", "-p", "18400:80", "busybox:test", "true")
    dry = mc("run", "--rm", "--dry-run", "--explain", *args)
    real = mc("run", "--rm", "--explain", *args)
    assert dry.returncode == 0 and real.returncode == 0, (dry.stderr, real.stderr)

    def normalised(text: str) -> list[str]:
        text = re.sub(r"[0-9a-f]{64}", "ID", text)
        text = re.sub(r"\bmc[0-9a-f]{13}\b", "VETH", text)
        text = re.sub(r"[0-9a-f]{12}", "SHORT", text)
        text = re.sub(r"(/proc/|netns )\d+", r"\1PID", text)
        text = re.sub(r"/tmp/minictr-dry-run-[^/ ]+|" + re.escape(mc.state), "STATE", text)
        return [re.sub(r"fd \d+", "fd N", line) for line in text.splitlines()]

    assert normalised(dry.stderr) == normalised(real.stderr)
    assert any("ip link add minictr0 type bridge" in line for line in real.stderr.splitlines())
    assert world.leftovers(mc.state) == NOTHING_LEFT


def test_the_default_network_drops_net_raw_and_scopes_abstract_sockets(mc, world):
    """The host's namespace (here: the test's "host"), but the host's abstract unix sockets
    are out of reach and raw sockets are refused; --network host gives both back."""
    listener = subprocess.Popen(
        [*world.in_host(), "/usr/bin/python3", "-c",
         "import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind('\\0mctest-abstract'); "
         "s.listen(8); print('ok', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ok"
        probe = ("probe:test", "/probe", "--only", "none", "--connect-abstract",
                 "mctest-abstract", "--socket", "raw")
        default = json.loads(mc("run", "--rm", *probe, check=True).stdout)
        assert default["socket"]["raw"] == "EPERM"
        if _landlock_abi() >= 6:
            assert default["connect-abstract"]["mctest-abstract"] == "EPERM"
        host = json.loads(mc("run", "--rm", "--network", "host", *probe, check=True).stdout)
        assert host == {"connect-abstract": {"mctest-abstract": "ok"}, "socket": {"raw": "ok"}}
        # joining a container on the default network gives no more than it has
        keeper = mc.popen("run", "--name", "hardened", "busybox:test", "sleep", "1000")
        try:
            mc.wait_running("hardened")
            joined = json.loads(mc("run", "--rm", "--network", "container:hardened", *probe,
                                   check=True).stdout)
            assert joined == default, joined
        finally:
            stop(keeper)
            mc("rm", "-f", "hardened")
    finally:
        listener.stdin.close()
        listener.wait()


LOOPBACK_LISTENER = (
    "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(8); "
    "print(s.getsockname()[1], flush=True); s.settimeout(20)\n"
    "try:\n    c, peer = s.accept(); print('REACHED', peer[0], flush=True)\n"
    "except socket.timeout:\n    print('NOTHING', flush=True)")


def test_a_neighbour_on_the_bridge_cannot_reach_the_hosts_loopback(mc, world):
    """CVE-2020-8558: route_localnet is on for the bridge (published ports answer on the
    host's 127.0.0.1 through it), so a neighbour on the bridge that routes 127.0.0.1 to its
    gateway would reach services the host binds to loopback only. The guard chain drops such
    packets (runtime/nftables.py). The neighbour here is a container with NET_ADMIN: its own
    loopback address gone, 127.0.0.1 routed through the gateway, route_localnet on (so the
    answer would be taken too)."""
    listener = subprocess.Popen([*world.in_host(), "/usr/bin/python3", "-c", LOOPBACK_LISTENER],
                                stdout=subprocess.PIPE, text=True)
    try:
        port = int(listener.stdout.readline())
        res = mc("run", "--rm", "--network", "bridge", "--cap-add", "NET_ADMIN",
                 "--sysctl", "net.ipv4.conf.all.route_localnet=1", "busybox:test", "sh", "-c",
                 "gw=$(ip route | awk '/^default/ {print $3}') && ip addr flush dev lo && "
                 f"ip route add 127.0.0.1/32 via $gw dev eth0 && echo ROUTED && "
                 f"nc -w 3 127.0.0.1 {port} </dev/null; true")
        assert "ROUTED" in res.stdout, res.stderr
        listener.terminate()
        seen = listener.communicate(timeout=30)[0]
    finally:
        listener.kill()
        listener.wait()
    assert "REACHED" not in seen, seen


def _landlock_abi() -> int:
    from minictr.runtime.syscalls import Syscalls

    return Syscalls().landlock_abi_version()


@pytest.mark.parametrize("args, words", [
    (("--network", "bridge", "-p", "80"), "expected [IP:]HOSTPORT"),
    (("-p", "8080:80"), "-p needs --network bridge"),
    (("--network", "wifi"), "not a network minictr knows"),
])
def test_bad_network_input_is_one_line_and_125(mc, args, words):
    res = mc("run", "--rm", *args, "busybox:test", "true")
    assert res.returncode == 125
    first, *rest = res.stderr.splitlines()
    assert words in first and rest and rest[0].startswith("minictr: hint:")
