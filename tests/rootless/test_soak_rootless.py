"""The soak tier's rootless runs (tests/soak/README.md): MINICTR_SOAK_RUNS runs (and as many
with a volume) by each unprivileged user, then the same census as the root runs: state entries
and names, writable layers, store temporaries, the user's processes and zombies, files the
runs left in the user's $TMPDIR and in /tmp. Rootless containers get no cgroup and no device
program here (no delegated subtree), so those are not counted."""
from __future__ import annotations

import os

import pytest

from tests.soak import census
from tests.soak.conftest import RUNS

pytestmark = [pytest.mark.rootless, pytest.mark.soak]


def _tmp_entries(owner: int) -> set[str]:
    return {n for n in os.listdir("/tmp") if os.lstat(os.path.join("/tmp", n)).st_uid == owner}


def test_rootless_runs_leave_nothing(user_mc, shared_dir):
    runs = max(10, RUNS // 2)
    volume = os.path.join(user_mc.home, "volume")
    os.makedirs(volume, exist_ok=True)
    os.chown(volume, user_mc.pw.pw_uid, user_mc.pw.pw_gid)
    marker = f"minictr-soak-rootless-{os.getpid()}"
    c = census.Census(user_mc.root, user_mc.state, os.path.join(user_mc.home, "tmp"), marker,
                      cgroup_parent=marker)
    os.makedirs(c.tmpdir, exist_ok=True)
    before, tmp_before = c.take(), _tmp_entries(user_mc.pw.pw_uid)
    failures = []
    for i in range(runs):
        for extra in ([], ["-v", f"{volume}:/data"]):
            res = user_mc("run", "--rm", *extra, "busybox:test", "sh", "-c",
                          "ls / >/dev/null; exit 0", marker)
            if res.returncode != 0 or res.stderr:
                failures.append((i, extra, res.returncode, res.stderr[-300:]))
    assert not failures, failures[:5]
    left = census.diff(before, c.take())
    left.pop("bpf programs", None)          # root's concern, counted by the root soak
    assert left == {}
    assert _tmp_entries(user_mc.pw.pw_uid) - tmp_before == set()
