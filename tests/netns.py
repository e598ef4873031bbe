"""Network namespaces the network tests make, so that no test touches the machine's own network.

    ┌──────────── "host" ─────────────┐        ┌──── "outside" ────┐
    │ minictr runs here (nsenter --net)│        │ a stand-in for the │
    │ minictr0, its nftables table,    │  veth  │ world: a server on │
    │ containers' veths                ├────────┤ 198.51.100.2       │
    │ 198.51.100.1/24, default via .2  │        │                    │
    └──────────────────────────────────┘        └────────────────────┘

Addresses are TEST-NET-2 (RFC 5737). minictr is run with ``nsenter --net=/run/netns/HOST``:
only the network namespace changes (``ip netns exec`` would also remount /sys, hiding the
cgroup filesystems minictr needs).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

HOST_ADDRESS = "198.51.100.1"
OUTSIDE_ADDRESS = "198.51.100.2"


def missing_tools(*names: str) -> list[str]:
    return [n for n in names if not shutil.which(n, path=os.environ.get("PATH", "")
                                                 + ":/usr/sbin:/sbin")]


def _ip(*args: str, netns: str | None = None) -> str:
    cmd = ["ip"] + (["-n", netns] if netns else []) + list(args)
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


class NetnsWorld:
    def __init__(self, tag: str):
        self.host = f"mcn-h-{tag}"
        self.outside = f"mcn-o-{tag}"
        self.servers: list[subprocess.Popen] = []

    def create(self) -> "NetnsWorld":
        for name in (self.host, self.outside):
            _ip("netns", "add", name)
        _ip("link", "add", "up0", "netns", self.host, "type", "veth", "peer", "name", "down0",
            "netns", self.outside)
        _ip("addr", "add", f"{HOST_ADDRESS}/24", "dev", "up0", netns=self.host)
        _ip("addr", "add", f"{OUTSIDE_ADDRESS}/24", "dev", "down0", netns=self.outside)
        for ns, dev in ((self.host, "up0"), (self.outside, "down0")):
            _ip("link", "set", "lo", "up", netns=ns)
            _ip("link", "set", dev, "up", netns=ns)
        _ip("route", "add", "default", "via", OUTSIDE_ADDRESS, netns=self.host)
        return self

    def destroy(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()
        for name in (self.host, self.outside):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)

    def in_host(self) -> list[str]:
        """The prefix that runs a command in the host namespace, nothing else changed."""
        return ["nsenter", f"--net=/run/netns/{self.host}"]

    def in_outside(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.outside}"]

    def serve_peer_address(self, port: int) -> None:
        """An HTTP server in "outside" whose every answer is the address the request came
        from (so a test sees whether the container's traffic was masqueraded); returns once
        it listens. It reads the request before answering, so the client closes after the
        server does (pasta 2023-03 can lose the answer when both ends close at once)."""
        code = ("import socket,sys\n"
                "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                f"s.bind(('{OUTSIDE_ADDRESS}', {port})); s.listen(16)\n"
                "print('listening', flush=True)\n"
                "while True:\n"
                "    c, a = s.accept(); b = b''\n"
                "    while b'\\r\\n\\r\\n' not in b:\n"
                "        d = c.recv(4096)\n"
                "        if not d: break\n"
                "        b += d\n"
                "    c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\n'"
                " + (a[0] + '\\n').encode()); c.close()\n")
        proc = subprocess.Popen([*self.in_outside(), "/usr/bin/python3", "-c", code],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "listening"
        self.servers.append(proc)

    # ------------------------------------------------------------ what is left

    def leftovers(self, state_dir: str) -> dict:
        """What minictr could leave behind in the host namespace and its state: links other
        than lo and the tests' own veth, addresses on them, nftables tables, lease files."""
        links = json.loads(_ip("-j", "link", netns=self.host))
        extra = [link["ifname"] for link in links if link["ifname"] not in ("lo", "up0")]
        addrs = json.loads(_ip("-j", "addr", netns=self.host))
        extra_addrs = [a["local"] for link in addrs if link["ifname"] not in ("lo", "up0")
                       for a in link.get("addr_info", [])]
        tables = json.loads(subprocess.run([*self.in_host(), "nft", "-j", "list", "tables"],
                                           check=True, capture_output=True,
                                           text=True).stdout)["nftables"]
        table_names = [t["table"]["name"] for t in tables if "table" in t]
        leases_dir = os.path.join(state_dir, ".network", "leases")
        leases = sorted(os.listdir(leases_dir)) if os.path.isdir(leases_dir) else []
        return {"links": extra, "addresses": extra_addrs, "tables": table_names,
                "leases": leases}


NOTHING_LEFT = {"links": [], "addresses": [], "tables": [], "leases": []}
