"""What users of docker take for granted (issue 12, items 3-7), checked from inside containers.

Each test here failed before its fix; the docstrings say how.
"""
import os
import pty
import select
import subprocess

import pytest

pytestmark = pytest.mark.root


# ---------------------------------------------------------------- item 7: cgroup namespace


def test_proc_self_cgroup_is_root_for_every_controller_with_limits_set(mc):
    """runc and crun show "/" for every hierarchy; on this hybrid host the v1 controllers once
    showed /minictr-<id> when limits put the container in v1 cgroups (the cgroup namespace was
    made by clone3, before the launcher placed the child in the v1 hierarchies)."""
    res = mc("run", "--rm", "--memory", "64m", "--pids-limit", "50", "busybox:test",
             "cat", "/proc/self/cgroup")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split()
    assert len(lines) > 1 and all(line.endswith(":/") for line in lines), res.stdout


# ---------------------------------------------------------------- item 4: silent options


def test_end_of_input_on_a_terminal_reaches_the_container(mc):
    """stdin is a terminal that goes away (its other side closed): the container's terminal
    gets an end-of-file, so `cat` ends; it used to wait for ever."""
    master, slave = pty.openpty()
    proc = mc.popen("run", "--rm", "-i", "-t", "busybox:test", "cat", stdin=slave,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(slave)
    try:
        os.write(master, b"hi\n")
        seen = b""
        while b"hi" not in seen:                  # the container's terminal echoed our input
            # a guard against a hang, not a timing check: typed-ahead input was once flushed
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            assert ready, "no echo of the input within 60 s"
            chunk = os.read(proc.stdout.fileno(), 1024)
            assert chunk, proc.stderr.read()
            seen += chunk
        os.close(master)
        master = None
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        if master is not None:
            os.close(master)
        proc.kill()
        proc.wait()
