"""Chaos: the launcher SIGKILLed at random moments of `minictr run`. The container dies with it;
whatever it had made (state entry, cgroup and its device program, writable layer, name) is
either never trusted or removed by `minictr rm` and `minictr gc`; a later run of the same image
works. MINICTR_CHAOS_RUNS sets the number of kills (CI: a few dozen)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.root.conftest import host_mounts_mentioning

pytestmark = pytest.mark.root
RUNS = int(os.environ.get("MINICTR_CHAOS_RUNS", "30"))


def _cgroup_dirs(prefix: str = "minictr-") -> set[str]:
    found = set()
    for top in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        for dirpath, dirnames, _ in os.walk(top):
            found.update(os.path.join(dirpath, d) for d in dirnames if d.startswith(prefix))
            if dirpath.count("/") > 8:
                dirnames[:] = []
    return found


def _processes_mentioning(text: str) -> list[int]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    out.append(int(pid))
        except OSError:
            pass
    return out


def test_sigkill_during_run_leaves_nothing_rm_and_gc_cannot_clean(mc):
    rng = random.Random(int(os.environ.get("MINICTR_CHAOS_SEED", "1")))
    names = []
    duration = f"{30 + random.random():.6f}"          # our containers' argv, and no one else's
    for i in range(RUNS):
        name = f"chaos{i}"
        names.append(name)
        proc = mc.popen("run", "--name", name, "--pids-limit", "64", "busybox:test", "sleep",
                        duration, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0, 0.25))            # anywhere in its ~100 ms of setup, or after
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The containers die with their launchers (PR_SET_PDEATHSIG): wait for the last of them.
    mine = "sleep\x00" + duration
    for _ in range(200):
        if not _processes_mentioning(mine):
            break
        time.sleep(0.05)
    assert not _processes_mentioning(mine)
    listed = json.loads(mc("ps", "-a", "--format", "json", check=True).stdout)
    assert all(row["status"] in ("stopped", "creating") for row in listed), listed
    # a cgroup is made only after the state entry that records it: these are all the ids
    ours = {f"minictr-{row['id']}" for row in listed}
    for name in names:
        res = mc("rm", "-f", name)
        assert res.returncode == 0 or "does not exist" in res.stderr, res.stderr
    mc("gc", check=True)
    assert json.loads(mc("ps", "-a", "--format", "json", check=True).stdout) == []
    state = [d for d in os.listdir(mc.state) if not d.startswith(".")]
    assert state in ([], ["names"]) and not os.listdir(os.path.join(mc.state, "names"))
    containers = os.path.join(mc.root, "containers")
    assert not os.path.isdir(containers) or not os.listdir(containers)
    left = {os.path.basename(d) for d in _cgroup_dirs()} & ours
    assert not left, left                             # every cgroup (and device program) gone
    assert not host_mounts_mentioning(mc.root) and not host_mounts_mentioning(mc.state)
    res = mc("run", "--rm", "busybox:test", "sh", "-c", "echo alive")
    assert res.returncode == 0 and res.stdout == "alive\n"


def test_ctrl_c_during_setup_is_one_line_and_leaves_nothing(mc):
    rng = random.Random(2)
    for i in range(10):
        proc = mc.popen("run", "--rm", "--pids-limit", "64", "busybox:test", "sleep", "30",
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # after the interpreter's own start-up (a Ctrl-C there is Python's: it has installed
        # its SIGINT handler once it is over, ~10-20 ms, many more on a loaded machine), over
        # the imports, planning and the container's setup
        _wait_for_sigint_handler(proc.pid)
        time.sleep(rng.uniform(0.03, 0.2))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode in (130, 125), (proc.returncode, err)
        assert "Traceback" not in err and err.count("\n") <= 2, err
    entries = [d for d in os.listdir(mc.state) if not d.startswith(".") and d != "names"]
    assert not entries
    names = os.path.join(mc.state, "names")
    assert not os.path.isdir(names) or not os.listdir(names)      # nor a name, nor its claim
    containers = os.path.join(mc.root, "containers")
    assert not os.path.isdir(containers) or not os.listdir(containers)


def _wait_for_sigint_handler(pid: int) -> None:
    """Until the process catches SIGINT (proc(5), SigCgt), or has exited."""
    for _ in range(10000):
        try:
            with open(f"/proc/{pid}/status") as f:
                caught = next(int(line.split()[1], 16) for line in f
                              if line.startswith("SigCgt:"))
        except (OSError, StopIteration):
            return
        if caught & (1 << (signal.SIGINT - 1)):
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} never caught SIGINT")


def _launcher_with(mc, patch: str, *args, timeout=30):
    """`minictr ARGS` through cli.main, with ``patch`` (Python) applied first: a Ctrl-C placed
    at one exact point of the launcher, where a real one lands only now and then."""
    code = "import os, signal, sys, time\n" + patch + \
        "\nfrom minictr.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    cmd = [sys.executable, "-c", code, args[0], "--root", mc.root, "--state", mc.state,
           *args[1:]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _nothing_left(mc):
    entries = [d for d in os.listdir(mc.state) if not d.startswith(".") and d != "names"]
    names = os.path.join(mc.state, "names")
    left = entries + (os.listdir(names) if os.path.isdir(names) else [])
    assert not left, left
    containers = os.path.join(mc.root, "containers")
    assert not os.path.isdir(containers) or not os.listdir(containers)


@pytest.mark.parametrize("where", [
    # right after the name was claimed, inside the planning step
    "from minictr.runtime.state import StateRoot\n"
    "claim = StateRoot.claim_name\n"
    "def claim_name(self, *a):\n"
    "    claim(self, *a)\n"
    "    raise KeyboardInterrupt\n"
    "StateRoot.claim_name = claim_name\n",
    # after planning, before the container's create and cleanup are under way
    "from minictr import api\n"
    "def _execute(*a, **k):\n"
    "    raise KeyboardInterrupt\n"
    "api._execute = _execute\n",
], ids=["after-claim", "before-create"])
def test_ctrl_c_between_the_name_claim_and_create_leaves_no_name(mc, where):
    res = _launcher_with(mc, where, "run", "--rm", "--name", "claimed", "busybox:test", "true")
    assert res.returncode == 130 and res.stderr == "minictr: interrupted\n", res
    _nothing_left(mc)
    res = mc("run", "--rm", "--name", "claimed", "busybox:test", "echo", "again")
    assert res.returncode == 0 and res.stdout == "again\n", res.stderr


@pytest.mark.parametrize("signals", [1, 2], ids=["one", "two"])
def test_ctrl_c_during_the_cleanup_of_an_exited_container(mc, signals):
    """The container has exited on its own and the launcher is cleaning up when a Ctrl-C
    comes (a user who pressed it a moment too late): the cleanup finishes and the container's
    status is returned. A second Ctrl-C still interrupts, as docker's does (a cleanup that
    hangs on a poststop hook must not hold the terminal): then `rm`/`gc` clean up."""
    patch = ("from minictr import api\n"
             "after = api._after_exit\n"
             "def _after_exit(*a, **k):\n"
             f"    for _ in range({signals}):\n"
             "        os.kill(os.getpid(), signal.SIGINT)\n"
             "        time.sleep(0.05)\n"
             "    return after(*a, **k)\n"
             "api._after_exit = _after_exit\n")
    res = _launcher_with(mc, patch, "run", "--rm", "--name", "late", "busybox:test",
                         "sh", "-c", "echo done; exit 3")
    if signals == 1:
        assert res.returncode == 3 and res.stdout == "done\n", res
        assert "interrupted" not in res.stderr and "Ctrl-C again" in res.stderr, res.stderr
        _nothing_left(mc)
    else:
        assert res.returncode == 130 and "interrupted" in res.stderr, res
        mc("rm", "-f", "late")
        mc("gc")
        _nothing_left(mc)


def test_ctrl_c_before_a_detached_run_forks_its_monitor_leaves_no_name(mc):
    """`run -d`: planned and named here, then the monitor is forked and owns the cleanup. A
    Ctrl-C in between leaves nothing: no name, no container directory."""
    patch = ("from minictr import monitor\n"
             "def detach(*a, **k):\n"
             "    raise KeyboardInterrupt\n"
             "monitor.detach = detach\n")
    res = _launcher_with(mc, patch, "run", "-d", "--name", "detaching", "busybox:test",
                         "sleep", "1000")
    assert res.returncode == 130 and res.stderr == "minictr: interrupted\n", res
    _nothing_left(mc)


def test_ctrl_c_as_the_container_is_cloned_stops_it(mc):
    """A Ctrl-C the launcher gets right after the clone, while the child (a fork of the
    launcher, not yet scheduled on a loaded machine: held here) still has the launcher's
    signal handlers: forwarded then, the child would catch it, the container's command would
    run on, and the launcher would wait for it."""
    patch = ("from minictr.runtime import spawn\n"
             "clone = spawn._clone\n"
             "def _clone(*a):\n"
             "    pid, born_in = clone(*a)\n"
             "    if pid == 0:\n"
             "        time.sleep(0.5)\n"                 # the child runs late
             "    else:\n"
             "        os.kill(os.getpid(), signal.SIGINT)\n"
             "    return pid, born_in\n"
             "spawn._clone = _clone\n")
    try:
        res = _launcher_with(mc, patch, "run", "--rm", "busybox:test", "sleep", "1000")
    except subprocess.TimeoutExpired:
        pytest.fail("the Ctrl-C was lost: the container ran on")
    assert res.returncode == 130, res
    assert "Traceback" not in res.stderr and res.stderr.count("\n") <= 2, res.stderr
    _nothing_left(mc)
