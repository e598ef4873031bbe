"""What users of docker take for granted (issue 12, items 3-7), checked from inside containers.

Each test here failed before its fix; the docstrings say how.
"""
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
