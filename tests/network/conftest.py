"""Network tier: containers on minictr's bridge, published ports, joined namespaces, as root,
inside network namespaces the fixtures make (tests/netns.py); the rootless half is in
tests/rootless/test_network_rootless.py. Traffic goes only to addresses in those namespaces."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests import images
from tests.netns import NetnsWorld, missing_tools

pytestmark = [pytest.mark.network, pytest.mark.root]


class Minictr:
    """The installed CLI with a private store and state, run inside the world's "host"
    namespace."""

    def __init__(self, exe: str, root: str, state: str, prefix: list[str]):
        self.exe, self.root, self.state, self.prefix = exe, root, state, prefix

    def argv(self, *args) -> list[str]:
        return [*self.prefix, self.exe, args[0], "--root", self.root, "--state", self.state,
                *args[1:]]

    def __call__(self, *args, check=False, timeout=120, **kw):
        res = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout,
                             **kw)
        if check and res.returncode != 0:
            raise AssertionError(f"{args} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
        return res

    def popen(self, *args, **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(self.argv(*args), text=True, **kw)

    def wait_running(self, name: str) -> dict:
        """Poll `ps` until the container NAME runs (bounded: not a timing assertion)."""
        for _ in range(400):
            rows = json.loads(self("ps", "--format", "json").stdout or "[]")
            for row in rows:
                if row["name"] == name and row["status"] == "running":
                    return row
            time.sleep(0.05)
        raise AssertionError(f"container {name} did not start")


@pytest.fixture(scope="session")
def world():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    missing = missing_tools("ip", "nft", "nsenter")
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install iproute2 nftables util-linux)")
    w = NetnsWorld(str(os.getpid())).create()
    yield w
    w.destroy()


@pytest.fixture(scope="session")
def image_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="session")
def mc(minictr_exe, world, tmp_path_factory, image_cache):
    base = tmp_path_factory.mktemp("mcnet")
    m = Minictr(minictr_exe, str(base / "store"), str(base / "state"), world.in_host())
    m("load", "--tag", "busybox:test", images.build_busybox(image_cache).ref, check=True)
    m("load", "--tag", "probe:test", images.build_probe_image(image_cache).ref, check=True)
    return m
