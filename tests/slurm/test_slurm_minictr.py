"""`minictr run --gpus all` as a Slurm task: it stays inside the step's GPU allocation.

The node's four gres GPUs are the fake driver's /dev/nvidia0-3 (tests/gpu/fakedriver.py), and
the task gets the same fake driver through MINICTR_NVIDIA_*_ROOT, so minictr discovers four GPUs
and narrows `all` to the minors in SLURM_STEP_GPUS (minictr/hpc/slurm.py).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "gpu"))
from probeimage import runtime_available  # noqa: E402

pytestmark = [pytest.mark.slurm, pytest.mark.root,
              pytest.mark.skipif(not runtime_available(), reason="needs runtime")]


def minictr_env(slurm_base, fake_gpus, name) -> dict[str, str]:
    return {**fake_gpus.env(), "MINICTR_ROOT": os.path.join(slurm_base, "minictr", "store"),
            "MINICTR_STATE": os.path.join(slurm_base, "minictr", f"state-{name}")}


def gpu_nodes(listing: str) -> set[str]:
    return {n for n in listing.split() if re.fullmatch(r"nvidia\d+", n)}


def srun_minictr(slurm, minictr_exe, probe_layout, env, gres="gpu:2"):
    script = ('echo "step-gpus=$SLURM_STEP_GPUS"; '
              f'exec {minictr_exe} run --rm --gpus all oci:{probe_layout} /bin/busybox ls /dev')
    res = slurm.run(["srun", f"--gres={gres}", "sh", "-c", script], env=env)
    step = re.search(r"^step-gpus=(\S+)$", res.stdout, re.M).group(1)
    return {f"nvidia{m}" for m in step.split(",")}, gpu_nodes(res.stdout), res


def test_minictr_run_gpus_all_shows_the_jobs_two_gpus(slurm, slurm_base, fake_gpus,
                                                      minictr_exe, probe_layout):
    env = minictr_env(slurm_base, fake_gpus, "a")
    allocated, seen, res = srun_minictr(slurm, minictr_exe, probe_layout, env)
    assert len(allocated) == 2
    assert seen == allocated, res.stdout
    assert "nvidiactl" in res.stdout.split()
    # the same command outside Slurm: all four
    outside = subprocess.run([minictr_exe, "run", "--rm", "--gpus", "all", f"oci:{probe_layout}",
                              "/bin/busybox", "ls", "/dev"], env={**slurm.env(), **env},
                             capture_output=True, text=True, timeout=120)
    assert outside.returncode == 0, outside.stderr
    assert gpu_nodes(outside.stdout) == {"nvidia0", "nvidia1", "nvidia2", "nvidia3"}


def test_minictr_follows_the_allocation_not_the_first_gpus(slurm, slurm_base, fake_gpus,
                                                           minictr_exe, probe_layout):
    """While another job holds two GPUs, a step gets the other two and minictr shows those."""
    flag = os.path.join(slurm_base, "hold-gpus")
    holder = subprocess.Popen(
        ["srun", "--gres=gpu:2", "sh", "-c",
         f'echo "$SLURM_STEP_GPUS" > {flag}.tmp; mv {flag}.tmp {flag}; '
         f'i=0; while [ -e {flag} ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done'],
        env=slurm.env(), cwd=slurm.base, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(flag):
            assert holder.poll() is None and time.monotonic() < deadline, slurm.logs(10)
            time.sleep(0.05)
        with open(flag) as f:
            held = {f"nvidia{m}" for m in f.read().strip().split(",")}
        env = minictr_env(slurm_base, fake_gpus, "b")
        allocated, seen, res = srun_minictr(slurm, minictr_exe, probe_layout, env)
        assert allocated.isdisjoint(held)
        assert seen == allocated, res.stdout
    finally:
        if os.path.exists(flag):
            os.unlink(flag)
        holder.wait(timeout=60)


@pytest.fixture(scope="module")
def upper_half(slurm_base, fake_gpus):
    """A node whose gres.conf lists only /dev/nvidia2 and /dev/nvidia3 (Gres=gpu:2)."""
    from slurm_harness import ClusterError, SlurmCluster, one_line

    cluster = SlurmCluster(os.path.join(slurm_base, "cluster-upper"), gpus=2,
                           gres_files=os.path.join(fake_gpus.dev_root, "dev", "nvidia[2-3]"))
    try:
        cluster.start()
    except ClusterError as err:
        cluster.stop()
        pytest.skip(f"Slurm did not come up: {one_line(str(err))}")
    yield cluster
    cluster.stop()


def test_gres_gpu_ids_are_positions_in_gres_conf_not_minors(upper_half):
    """Slurm 22.05's gres/gpu numbers SLURM_*_GPUS, CUDA_VISIBLE_DEVICES and IDX by the device's
    position in gres.conf's File list (gres_common.c: use_dev_num=false for GPUs)."""
    res = upper_half.run(["srun", "--gres=gpu:2", "sh", "-c", "echo $SLURM_STEP_GPUS"])
    assert res.stdout.strip() == "0,1"              # the devices are nvidia2 and nvidia3


@pytest.mark.xfail(strict=True, reason="hpc/slurm.py reads SLURM_STEP_GPUS as device minors; "
                   "they are positions in gres.conf's File list (issue 14)")
def test_minictr_injects_the_allocated_device_when_gres_conf_skips_minors(
        upper_half, slurm_base, fake_gpus, minictr_exe, probe_layout):
    env = minictr_env(slurm_base, fake_gpus, "upper")
    script = ('echo "step-gpus=$SLURM_STEP_GPUS"; '
              f'exec {minictr_exe} run --rm --gpus all oci:{probe_layout} /bin/busybox ls /dev')
    res = upper_half.run(["srun", "--gres=gpu:1", "sh", "-c", script], env=env)
    position = int(re.search(r"^step-gpus=(\d)$", res.stdout, re.M).group(1))
    assert gpu_nodes(res.stdout) == {f"nvidia{2 + position}"}, res.stdout
