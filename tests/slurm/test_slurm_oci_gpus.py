"""minictr-runc as Slurm's OCI runtime (oci.conf), where runc has no answer: GPUs that stay in
the job's allocation, and a root bundle run by an ordinary user.

Slurm writes no GPU information into config.json (test_slurm_oci.py shows it); the request is
the step's own environment (``NVIDIA_VISIBLE_DEVICES=all srun --container ...``: srun exports
the caller's environment, and Slurm appends it to process.env), and the allocation is the job's
on this node, read by the runtime with ``scontrol show job -d $SLURM_JOB_ID`` and mapped through
gres.conf to device minors (minictr/hpc/slurm.py). The probe (tests/gpu/probeimage.py) opens
every /dev/nvidiaN: an injected node answers ENXIO (allowed; no driver behind the fake node),
any other ENOENT.
"""
from __future__ import annotations

import errno
import os
import re

import pytest

from slurm_harness import OciConf

pytestmark = [pytest.mark.slurm, pytest.mark.root]

PROBE = ["/probe", "/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia2", "/dev/nvidia3"]
ENV_OF = "/bin/busybox sh -c 'echo cvd=${CUDA_VISIBLE_DEVICES-unset}; exec \"$@\"' sh"


def opened(text: str) -> set[int]:
    """Minors of the /dev/nvidiaN the probe reached (ENXIO: present and allowed)."""
    return {int(m) for m in re.findall(rf"open /dev/nvidia(\d) errno={errno.ENXIO}$", text,
                                       re.M)}


def job_idx(call: dict, node: str) -> set[int]:
    """The job's GPU ids on the node as scontrol shows them (the harness logs it)."""
    m = re.search(rf"Nodes={node} .*GRES=gpu:\d+\(IDX:([0-9,-]+)\)", call["scontrol_show_job"])
    ids = set()
    for part in m.group(1).split(","):
        lo, _, hi = part.partition("-")
        ids |= set(range(int(lo), int(hi or lo) + 1))
    return ids


def container_step(slurm, runtime, bundle, cmd, *, gres=None, user=None, mode="run",
                   visible="all", check=True):
    env = {"NVIDIA_VISIBLE_DEVICES": visible} if visible else {}
    argv = ["srun", f"--container={bundle}"] + ([f"--gres={gres}"] if gres else [])
    with slurm.oci(OciConf(runtime, mode=mode, rootless=user is not None)):
        res = slurm.run([*argv, *cmd], env=env, user=user.pw_name if user else None,
                        check=check)
    return res, slurm.oci_calls()


@pytest.mark.parametrize("who", ["root", "user"])
def test_container_step_sees_exactly_the_jobs_gpus(slurm, minictr_runc, gpu_bundles, job_user,
                                                   who):
    user = job_user if who == "user" else None
    res, calls = container_step(slurm, minictr_runc, gpu_bundles[who],
                                ["sh", "-c", f"{ENV_OF} {' '.join(PROBE)}"], gres="gpu:2",
                                user=user)
    assert res.returncode == 0, res.stderr + res.stdout
    allocated = job_idx(calls[0], slurm.node)          # gres.conf lists nvidia[0-3] in order
    assert len(allocated) == 2
    assert opened(res.stdout) == allocated, res.stdout
    for minor in {0, 1, 2, 3} - allocated:
        assert f"open /dev/nvidia{minor} errno={errno.ENOENT}" in res.stdout
    assert "cuDeviceGetCount=2 from /usr/lib/x86_64-linux-gnu/libcuda.so.1" in res.stdout
    # CUDA numbers the two injected GPUs 0 and 1, whatever the job exported
    assert "cvd=0,1" in res.stdout.splitlines()


def test_container_step_without_gpus_gets_none_and_is_told(slurm, minictr_runc, gpu_bundles):
    res, _ = container_step(slurm, minictr_runc, gpu_bundles["root"], PROBE)
    assert res.returncode == 0, res.stderr
    assert opened(res.stdout) == set()
    assert "no GPU injected" in res.stdout + res.stderr


def test_container_step_asking_for_a_gpu_outside_the_job_fails(slurm, minictr_runc,
                                                               gpu_bundles):
    """NVIDIA_VISIBLE_DEVICES names host GPU indices; outside the allocation is an error (the
    runtime's exit status is the step's: 1), never a silent widening."""
    res, calls = container_step(slurm, minictr_runc, gpu_bundles["root"], PROBE, gres="gpu:1",
                                visible="0,1,2,3", check=False)
    assert res.returncode != 0
    assert "outside the job's allocation" in res.stderr, res.stderr


def test_container_step_in_create_start_mode(slurm, minictr_runc, gpu_bundles):
    """RunTimeCreate/Start (with the oci.conf stdio lines docs/engines.md gives): the same
    injection happens at create."""
    res, calls = container_step(slurm, minictr_runc, gpu_bundles["root"], PROBE, gres="gpu:1",
                                mode="create-start")
    assert res.returncode == 0, res.stderr
    assert [c["op"] for c in calls][0] == "create"
    assert opened(res.stdout) == job_idx(calls[0], slurm.node)


def test_step_of_a_batch_job_gets_at_most_the_jobs_gpus(slurm, slurm_base, minictr_runc,
                                                        gpu_bundles):
    """What 22.05 lets a runtime know: the job's GPUs on the node (scontrol), not the step's
    subset; config.json's SLURM_JOB_GPUS (the batch script's, copied by srun) is not used."""
    out = os.path.join(slurm_base, "batch-gpu-container.out")
    with slurm.oci(OciConf(minictr_runc, mode="run")):
        job = slurm.sbatch(["--gres=gpu:3", "-o", out, "--export=ALL,NVIDIA_VISIBLE_DEVICES=all",
                            "--wrap", f"srun --gres=gpu:1 --container={gpu_bundles['root']} "
                            + " ".join(PROBE)])
    calls = slurm.oci_calls()
    assert job["JobState"] == "COMPLETED", job
    with open(out) as f:
        text = f.read()
    assert opened(text) == job_idx(calls[0], slurm.node) and len(opened(text)) == 3, text


def test_user_runs_a_root_bundle_the_runtime_adds_the_user_namespace(slurm, minictr_runc,
                                                                     bundles, job_user):
    """A `runc spec` (root) bundle, run by an ordinary user: runc refuses it ("rootless
    container requires user namespaces"); minictr-runc adds a user namespace mapping the user
    to the bundle's uid 0, and leaves out devpts' gid=5 (unmapped) with a warning."""
    script = "id -u; cat /proc/self/uid_map"
    with slurm.oci(OciConf(minictr_runc, mode="run", rootless=True)):
        res = slurm.run(["srun", f"--container={bundles['root']}", "sh", "-c", script],
                        user=job_user.pw_name, check=False)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("\n")
    assert lines[0] == "0"
    assert lines[1].split() == ["0", str(job_user.pw_uid), "1"]
    assert "option gid=5 left out" in res.stderr
