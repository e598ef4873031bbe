"""Root tier: real containers started through the CLI, with a probe program inside."""
import json
import os
import subprocess

import pytest

from tests import images

pytestmark = pytest.mark.root


class Minictr:
    """Runs the installed CLI against a private store and state dir."""

    def __init__(self, exe: str, root: str, state: str):
        self.exe, self.root, self.state = exe, root, state

    def __call__(self, *args, check=False, input=None, timeout=60, **kw):
        cmd = [self.exe, args[0], "--root", self.root, "--state", self.state, *args[1:]]
        res = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout,
                             **kw)
        if check and res.returncode != 0:
            raise AssertionError(f"{cmd} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
        return res

    def popen(self, *args, **kw):
        cmd = [self.exe, args[0], "--root", self.root, "--state", self.state, *args[1:]]
        return subprocess.Popen(cmd, **kw)

    def probe(self, *run_args, probe_args=(), image="probe:test"):
        res = self("run", "--rm", *run_args, image, "/probe", *probe_args)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)


@pytest.fixture(scope="session")
def image_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="session")
def mc(minictr_exe, tmp_path_factory, image_cache):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    base = tmp_path_factory.mktemp("mc")
    m = Minictr(minictr_exe, str(base / "store"), str(base / "state"))
    m("load", "--tag", "probe:test", images.build_probe_image(image_cache).ref, check=True)
    m("load", "--tag", "busybox:test", images.build_busybox(image_cache).ref, check=True)
    return m


def host_mounts_mentioning(text: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if text in line]
