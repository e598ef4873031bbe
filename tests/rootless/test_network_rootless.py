"""--network bridge without root: pasta, and slirp4netns as the fallback, for the users of
conftest.py, inside the network namespaces of tests/netns.py (the user's launcher runs in the
"host" namespace through nsenter; traffic goes only there and to "outside")."""
from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import time

import pytest

from tests.netns import HOST_ADDRESS, OUTSIDE_ADDRESS, NetnsWorld, missing_tools

pytestmark = [pytest.mark.rootless, pytest.mark.network]
DRIVERS = ("pasta", "slirp4netns")
SERVE = ("mkdir -p /www && echo {word} > /www/f && httpd -p 80 -h /www && "
         "echo READY $(ip -4 -o addr show scope global) && exec sleep 1000")
_ports = itertools.count(19080)


@pytest.fixture(scope="module")
def world():
    if os.geteuid() != 0:
        pytest.skip("needs root to make the network namespaces and the users")
    missing = missing_tools("ip", "nsenter")
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    w = NetnsWorld(f"u{os.getpid()}").create()
    yield w
    w.destroy()


@pytest.fixture(params=DRIVERS)
def driver(request):
    if missing_tools(request.param):
        pytest.skip(f"{request.param} is not installed (apt-get install "
                    f"{'passt' if request.param == 'pasta' else 'slirp4netns'})")
    return request.param


def run(world, user_mc, driver, *args, popen=False):
    cmd = [*world.in_host(), *user_mc.cmdline(*args)]
    env = dict(user_mc.env(), MINICTR_ROOTLESS_NETWORK=driver)
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        # runuser forks: the timeout killed it, not the launcher, which would outlive the test
        subprocess.run(["pkill", "-KILL", "-u", str(user_mc.pw.pw_uid), "-f",
                        f"minictr run .*--state {user_mc.state} "])
        raise


def helpers_of(user_mc) -> list[int]:
    out = subprocess.run(["pgrep", "-u", str(user_mc.pw.pw_uid), "-f", "pasta|passt|slirp4netns"],
                         capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _launcher_of(user_mc, name: str) -> int:
    out = subprocess.run(["pgrep", "-u", str(user_mc.pw.pw_uid), "-f",
                          f"minictr run .*--name {name} "],
                         capture_output=True, text=True).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def get(world, port: int) -> str:
    code = ("import socket; s=socket.create_connection(('127.0.0.1', %d), timeout=10); "
            "s.sendall(b'GET /f HTTP/1.0\\r\\n\\r\\n'); b=b''\n"
            "while True:\n    d=s.recv(4096)\n    if not d: break\n    b+=d\n"
            "print(b.decode().split('\\r\\n\\r\\n', 1)[-1], end='')" % port)
    res = subprocess.run([*world.in_host(), "/usr/bin/python3", "-c", code],
                         capture_output=True, text=True, timeout=60)
    return res.stdout.strip() if res.returncode == 0 else f"FAILED {res.stderr[-200:]}"


def test_a_published_port_answers_on_the_hosts_loopback(world, user_mc, driver):
    port = next(_ports)
    word = f"{driver}-{user_mc.kind}"
    proc = run(world, user_mc, driver, "run", "--rm", "--network", "bridge", "-p",
               f"127.0.0.1:{port}:80", "busybox:test", "sh", "-c", SERVE.format(word=word),
               popen=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY"), proc.stderr.read() if not line else line
        assert re.search(r"inet (\S+)/", line)
        assert get(world, port) == word
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert not helpers_of(user_mc)


def test_a_port_range_is_published_port_by_port(world, user_mc, driver):
    """-p A-B:C-D through pasta or slirp4netns: each host port reaches its container port."""
    first = next(_ports)
    second = next(_ports)
    assert second == first + 1
    word = f"range-{driver}-{user_mc.kind}"
    proc = run(world, user_mc, driver, "run", "--rm", "--network", "bridge", "-p",
               f"127.0.0.1:{first}-{second}:80-81", "busybox:test", "sh", "-c",
               f"mkdir -p /a /b && echo {word}-80 > /a/f && echo {word}-81 > /b/f && "
               "httpd -p 80 -h /a && httpd -p 81 -h /b && echo READY && exec sleep 1000",
               popen=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY"), proc.stderr.read() if not line else line
        assert get(world, first) == f"{word}-80"
        assert get(world, second) == f"{word}-81"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert not helpers_of(user_mc)


def test_a_detached_server_with_a_published_port(world, user_mc, driver):
    """Issue 16's example without root: `run -d -p` serves once the launcher has returned (the
    helper stays with the detached container's monitor), and `rm -f` takes the helper too."""
    port = next(_ports) + 500
    name = f"d-{driver}-{user_mc.kind}"
    word = f"detached-{driver}"
    res = run(world, user_mc, driver, "run", "-d", "--name", name, "--network", "bridge", "-p",
              f"{port}:80", "busybox:test", "sh", "-c",
              f"mkdir -p /www && echo {word} > /www/f && exec httpd -f -p 80 -h /www")
    assert res.returncode == 0, res.stderr
    try:
        for _ in range(400):             # the helper and httpd come up after -d returns: bounded
            body = get(world, port)
            if body == word:
                break
            time.sleep(0.05)
        assert body == word
    finally:
        out = run(world, user_mc, driver, "rm", "-f", name)
        assert out.returncode == 0, out.stderr
    for _ in range(400):
        if not helpers_of(user_mc):
            break
        time.sleep(0.05)
    assert not helpers_of(user_mc)
    assert get(world, port).startswith("FAILED")
    assert not [d for d in os.listdir(user_mc.state) if not d.startswith(".") and d != "names"]


def test_outbound_reaches_a_server_outside(world, user_mc, driver):
    port = next(_ports) + 1000
    world.serve_peer_address(port)
    res = run(world, user_mc, driver, "run", "--rm", "--network", "bridge", "busybox:test",
              "wget", "-q", "-O", "-", f"http://{OUTSIDE_ADDRESS}:{port}/")
    assert res.returncode == 0, res.stderr
    # the helper's sockets are the host's: the server sees the host namespace's address
    assert res.stdout.strip() == HOST_ADDRESS
    assert not helpers_of(user_mc)


def test_the_helper_dies_with_a_killed_launcher(world, user_mc, driver):
    name = f"k-{driver}-{user_mc.kind}"
    proc = run(world, user_mc, driver, "run", "--name", name, "--network", "bridge", "-p",
               f"{next(_ports)}:80", "busybox:test", "sh", "-c", "echo up && exec sleep 1000",
               popen=True)
    assert proc.stdout.readline().strip() == "up", proc.stderr.read()
    assert helpers_of(user_mc)
    launcher = _launcher_of(user_mc, name)
    os.kill(launcher, signal.SIGKILL)           # runuser forks: kill minictr itself
    proc.wait()
    for _ in range(400):                 # PR_SET_PDEATHSIG, exit-fd: bounded wait, no timing
        if not helpers_of(user_mc):
            break
        time.sleep(0.05)
    assert not helpers_of(user_mc)
    res = run(world, user_mc, driver, "rm", "-f", name)
    assert res.returncode == 0, res.stderr
