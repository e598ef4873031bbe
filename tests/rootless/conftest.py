"""Rootless tier: minictr run by unprivileged users this fixture creates.

Two users: one with subordinate ids in /etc/subuid and /etc/subgid (so newuidmap maps a whole
range) and one without (a single-id map). The project is installed for them into a
world-readable venv built from the system interpreter (/usr/bin/python3), because the
checkout and its .venv may live under /root, where they cannot read (TESTING.md).
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile

import pytest

from tests import images

pytestmark = pytest.mark.rootless

USERS = {"with-subids": "mctr-sub", "no-subids": "mctr-nosub"}
SUB_START = 400000


def _need(cond: bool, reason: str) -> None:
    if not cond:
        pytest.skip(reason)


def _ensure_user(name: str, subids: bool) -> pwd.struct_passwd:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True)
        pw = pwd.getpwnam(name)
    for path in ("/etc/subuid", "/etc/subgid"):
        lines = []
        if os.path.exists(path):
            with open(path) as f:
                lines = [ln for ln in f if ln.split(":")[0] not in (name, str(pw.pw_uid))]
        if subids:
            lines.append(f"{name}:{SUB_START + 65536 * (pw.pw_uid % 64)}:65536\n")
        with open(path, "w") as f:
            f.writelines(lines)
    return pw


@pytest.fixture(scope="session")
def shared_dir():
    """World-readable scratch space (pytest's own tmp dirs are 0700, root's)."""
    d = tempfile.mkdtemp(prefix="minictr-rootless-", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


class UserMinictr:
    def __init__(self, venv: str, pw: pwd.struct_passwd, home: str):
        self.exe = os.path.join(venv, "bin", "minictr")
        self.pw = pw
        self.root = os.path.join(home, "store")
        self.state = os.path.join(home, "state")
        self.home = home

    def env(self) -> dict:
        return {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": self.home,
                "USER": self.pw.pw_name, "LANG": "C.UTF-8"}

    def cmdline(self, *args) -> list[str]:
        return ["runuser", "-u", self.pw.pw_name, "--", self.exe, args[0], "--root", self.root,
                "--state", self.state, *args[1:]]

    def __call__(self, *args, check=False, timeout=120):
        res = subprocess.run(self.cmdline(*args), capture_output=True, text=True,
                             timeout=timeout, env=self.env())
        if check and res.returncode:
            raise AssertionError(f"{args} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
        return res

    def probe(self, *run_args, probe_args=()):
        res = self("run", "--rm", *run_args, "probe:test", "/probe", *probe_args)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)


@pytest.fixture(scope="session", params=sorted(USERS))
def user_mc(request, rootless_venv, shared_dir) -> UserMinictr:
    name = USERS[request.param]
    pw = _ensure_user(name, subids=request.param == "with-subids")
    home = os.path.join(shared_dir, name)
    os.makedirs(home, exist_ok=True)
    os.chown(home, pw.pw_uid, pw.pw_gid)
    cache = os.path.join(shared_dir, "images")
    os.makedirs(cache, exist_ok=True)
    probe = images.build_probe_image(cache)
    busybox = images.build_busybox(cache)
    subprocess.run(["chmod", "-R", "a+rX", cache], check=True)
    mc = UserMinictr(rootless_venv, pw, home)
    mc.kind = request.param
    mc("load", "--tag", "probe:test", probe.ref, check=True)
    mc("load", "--tag", "busybox:test", busybox.ref, check=True)
    return mc
