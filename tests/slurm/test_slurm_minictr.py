"""`minictr run --gpus all` as a Slurm task: it stays inside the step's GPU allocation.

The node's four gres GPUs are the fake driver's /dev/nvidia0-3 (tests/gpu/fakedriver.py), and
the task gets the same fake driver through MINICTR_NVIDIA_*_ROOT, so minictr discovers four GPUs
and narrows `all` to the step's: SLURM_STEP_GPUS holds positions in gres.conf's File list, which
minictr/hpc/slurm.py maps to device minors. Fail closed: a job without GPUs gets none, hints
name only the allocated GPUs, CUDA_VISIBLE_DEVICES inside is the container's own numbering.
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


def test_minictr_injects_the_allocated_device_when_gres_conf_skips_minors(
        upper_half, slurm_base, fake_gpus, minictr_exe, probe_layout):
    env = minictr_env(slurm_base, fake_gpus, "upper")
    script = ('echo "step-gpus=$SLURM_STEP_GPUS"; '
              f'exec {minictr_exe} run --rm --gpus all oci:{probe_layout} /bin/busybox ls /dev')
    res = upper_half.run(["srun", "--gres=gpu:1", "sh", "-c", script], env=env)
    position = int(re.search(r"^step-gpus=(\d)$", res.stdout, re.M).group(1))
    assert gpu_nodes(res.stdout) == {f"nvidia{2 + position}"}, res.stdout


# ---------------------------------------------------------------- GPU allocations fail closed


def srun_minictr_args(slurm, minictr_exe, probe_layout, env, minictr_args, cmd, gres=None,
                      check=False):
    script = (f'exec {minictr_exe} run --rm {minictr_args} oci:{probe_layout} {cmd}')
    return slurm.run(["srun", *([f"--gres={gres}"] if gres else []), "sh", "-c", script],
                     env=env, check=check)


def test_job_without_gpus_gets_none_and_is_told(slurm, slurm_base, fake_gpus, minictr_exe,
                                                probe_layout):
    env = minictr_env(slurm_base, fake_gpus, "nogres")
    res = srun_minictr_args(slurm, minictr_exe, probe_layout, env, "--gpus all",
                            "/bin/busybox ls /dev")
    assert res.returncode == 0, res.stderr
    assert gpu_nodes(res.stdout) == set()
    assert "no GPU injected: this job has no GPU on this node" in res.stderr
    res = srun_minictr_args(slurm, minictr_exe, probe_layout, env, "--gpus 0", "/bin/true")
    assert res.returncode == 125
    assert "this job has no GPU on this node" in res.stderr


def test_hints_name_only_the_allocated_gpus(slurm, slurm_base, fake_gpus, minictr_exe,
                                            probe_layout):
    env = minictr_env(slurm_base, fake_gpus, "hints")
    script = ('echo "step-gpus=$SLURM_STEP_GPUS"; '
              f'{minictr_exe} run --rm --gpus count=3 oci:{probe_layout} /bin/true')
    res = slurm.run(["srun", "--gres=gpu:2", "sh", "-c", script], env=env, check=False)
    assert res.returncode == 125, res.stderr
    step = re.search(r"^step-gpus=(\S+)$", res.stdout, re.M).group(1)
    named = set(re.findall(r"/dev/nvidia(\d)", res.stderr))
    assert named == set(step.split(",")), res.stderr           # gres.conf: nvidia[0-3]
    assert "only 2 GPUs are in reach" in res.stderr


def test_cuda_visible_devices_is_the_containers_numbering(slurm, slurm_base, fake_gpus,
                                                          minictr_exe, probe_layout):
    """The task's CUDA_VISIBLE_DEVICES numbers the node's GPUs (e.g. 2,3); passed in with -e,
    it would hide both injected GPUs from CUDA, which numbers them 0,1."""
    env = minictr_env(slurm_base, fake_gpus, "cvd")
    script = ('echo "outside=$CUDA_VISIBLE_DEVICES"; '
              f'exec {minictr_exe} run --rm --gpus all -e CUDA_VISIBLE_DEVICES '
              f'oci:{probe_layout} /bin/busybox sh -c \'echo "inside=$CUDA_VISIBLE_DEVICES"\'')
    res = slurm.run(["srun", "--gres=gpu:2", "sh", "-c", script], env=env)
    assert re.search(r"^outside=\d,\d$", res.stdout, re.M), res.stdout
    assert "inside=0,1" in res.stdout.splitlines(), res.stdout
