"""A second node with task/cgroup + ConstrainDevices=yes (cgroup v1 freezer and devices, which
this hybrid host has), as production GPU clusters run: a step may open only its own GPUs.

What it shows for a runtime under Slurm:
* an allocated GPU node opens far enough to reach the (absent) driver (ENXIO), any other GPU is
  refused by the device cgroup (EPERM), for open and for mknod;
* devices.list reads ``a *:* rwm`` at the job, step and task levels: Slurm 22.05 denies the other
  GPUs by exception, so the allocation cannot be read back from the cgroup, only probed;
* a rootless runtime's container lands in a child of the task's cgroup and inherits the limit;
  runc as root tries to widen its child's device list and fails with EPERM.
"""
from __future__ import annotations

import errno
import os
import re

import pytest

from slurm_harness import (CGROUP_V1, RUNTIME, ClusterError, OciConf, SlurmCluster, make_bundle,
                           one_line)

pytestmark = [pytest.mark.slurm, pytest.mark.root]

# prints "N <error message or 'opened'>" for each nvidiaN under the directory $1
OPEN_ALL = ('for i in 0 1 2 3; do msg=$( (: < "$1/nvidia$i") 2>&1 ); '
            'echo "$i ${msg:-opened}"; done')


def _v1_controllers() -> set[str]:
    found = set()
    with open("/proc/self/mounts") as f:
        for line in f:
            _, target, fstype, opts = line.split()[:4]
            if fstype == "cgroup" and target.startswith(CGROUP_V1 + "/"):
                found |= set(opts.split(",")) & {"devices", "freezer"}
    return found


@pytest.fixture(scope="module")
def constrained(slurm_base, fake_gpus):
    missing = {"devices", "freezer"} - _v1_controllers()
    if missing:
        pytest.skip(f"needs cgroup v1 {' and '.join(sorted(missing))} under {CGROUP_V1} "
                    "(task/cgroup with ConstrainDevices)")
    cluster = SlurmCluster(os.path.join(slurm_base, "cluster-cgroup"), gpus=4,
                           gres_files=os.path.join(fake_gpus.dev_root, "dev", "nvidia[0-3]"),
                           constrain_devices=True)
    try:
        cluster.start()
    except ClusterError as err:
        cluster.stop()
        pytest.skip(f"Slurm with task/cgroup did not come up: {one_line(str(err))}")
    yield cluster
    cluster.stop()
    assert cluster.cgroup_dirs() == []


def opened(text: str) -> dict[int, str]:
    """{minor: "EPERM" (refused by the device cgroup) | "ENXIO" (allowed; no driver) | text}"""
    out = {}
    for i, msg in re.findall(r"^(\d) (.*)$", text, re.M):
        out[int(i)] = ("EPERM" if "not permitted" in msg else
                       "ENXIO" if "No such device or address" in msg else msg)
    return out


def test_step_may_open_only_its_gpus(constrained, fake_gpus):
    dev = os.path.join(fake_gpus.dev_root, "dev")
    res = constrained.run(["srun", "--gres=gpu:2", "sh", "-c",
                           f'echo "gpus=$SLURM_STEP_GPUS"; set -- {dev}; {OPEN_ALL}'])
    mine = {int(m) for m in re.search(r"gpus=(\S+)", res.stdout).group(1).split(",")}
    result = opened(res.stdout)
    assert sorted(result) == [0, 1, 2, 3]
    for minor, outcome in result.items():
        # no driver behind the fake nodes: an allowed open gets as far as ENXIO
        assert outcome == ("ENXIO" if minor in mine else "EPERM"), (minor, outcome, mine)


def test_the_cgroup_does_not_list_the_allocation(constrained):
    script = ('d=$(sed -n "s/^[0-9]*:devices://p" /proc/self/cgroup); echo "cg=$d"; '
              'for x in "$d" "$(dirname "$d")" "$(dirname "$(dirname "$d")")"; do '
              f'echo "list $(cat {CGROUP_V1}/devices$x/devices.list | tr "\\n" ";")"; done')
    res = constrained.run(["srun", "--gres=gpu:2", "sh", "-c", script])
    cg = re.search(r"^cg=(\S+)$", res.stdout, re.M).group(1)
    assert re.fullmatch(rf"/slurm_{constrained.node}/uid_0/job_\d+/step_0/task_0", cg)
    assert re.findall(r"^list (.*)$", res.stdout, re.M) == ["a *:* rwm;"] * 3


@pytest.fixture(scope="module")
def dev_bundles(slurm_base, fake_gpus, job_user):
    """Bundles that bind the fake driver's /dev at /gpu-dev (read-only)."""
    mount = {"destination": "/gpu-dev", "type": "none",
             "source": os.path.join(fake_gpus.dev_root, "dev"), "options": ["rbind", "ro"]}
    for tool in (RUNTIME, "/usr/sbin/runc"):
        if not os.access(tool, os.X_OK):
            pytest.skip(f"needs {tool}")
    return {"root": make_bundle(os.path.join(slurm_base, "bundle-dev-root"), None, [mount]),
            "user": make_bundle(os.path.join(slurm_base, "bundle-dev-user"), job_user, [mount])}


@pytest.mark.parametrize("who", ["root", "user"])
def test_container_inherits_the_steps_device_limit(constrained, dev_bundles, job_user, who):
    user = job_user.pw_name if who == "user" else None
    with constrained.oci(OciConf(RUNTIME, mode="run", rootless=(who == "user"))):
        res = constrained.run(["srun", "--gres=gpu:2", f"--container={dev_bundles[who]}", "sh",
                               "-c", f"set -- /gpu-dev; {OPEN_ALL}"], user=user, check=False)
    if who == "root" and RUNTIME.endswith("/runc"):
        # runc as root makes a child devices cgroup below Slurm's task cgroup and writes
        # "c *:* m" to its devices.allow; the parent denies some devices, so v1 refuses
        assert res.returncode != 0
        assert re.search(r"devices\.allow: operation not permitted", res.stderr), res.stderr
        return
    assert res.returncode == 0, res.stderr
    run = constrained.oci_calls()[0]
    mine = {int(i) for i in re.search(r"GRES=gpu:2\(IDX:(\d)[-,](\d)\)",
                                      run["scontrol_show_job"]).groups()}
    result = opened(res.stdout)
    assert sorted(result) == [0, 1, 2, 3]
    for minor, outcome in result.items():
        assert outcome == ("ENXIO" if minor in mine else "EPERM"), (minor, outcome, mine)


def test_minictr_runs_in_a_constrained_step(constrained, slurm_base, fake_gpus, minictr_exe,
                                            probe_layout):
    """minictr's own device filter (eBPF on the unified hierarchy) coexists with Slurm's v1
    devices cgroup: the step's GPUs are injected and reachable, the others are not there."""
    from probeimage import runtime_available
    if not runtime_available():
        pytest.skip("needs runtime")
    env = {**fake_gpus.env(), "MINICTR_ROOT": os.path.join(slurm_base, "minictr", "store"),
           "MINICTR_STATE": os.path.join(slurm_base, "minictr", "state-cgroup")}
    res = constrained.run(["srun", "--gres=gpu:2", "sh", "-c",
                           f'echo "gpus=$SLURM_STEP_GPUS"; exec {minictr_exe} run --rm --gpus all '
                           f'oci:{probe_layout} /probe /dev/nvidia0 /dev/nvidia1 /dev/nvidia2 '
                           '/dev/nvidia3'], env=env)
    mine = {int(m) for m in re.search(r"gpus=(\S+)", res.stdout).group(1).split(",")}
    for minor in range(4):
        code = errno.ENXIO if minor in mine else errno.ENOENT
        assert f"open /dev/nvidia{minor} errno={code}" in res.stdout, res.stdout
