"""The harness itself: jobs, GPU gres, steps sharing an allocation, an unprivileged user, PMI2."""
from __future__ import annotations

import os
import re

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.root]


def gpu_env(text: str) -> dict[str, str]:
    names = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES", "SLURM_GPUS_ON_NODE")
    return {k: v for k, _, v in (ln.partition("=") for ln in text.splitlines()) if k in names}


def ids(value: str) -> set[int]:
    return {int(x) for x in value.split(",")}


def test_srun_hostname(slurm):
    res = slurm.run(["srun", "-N1", "-n1", "hostname"])
    assert res.stdout.strip() == slurm.hostname


def test_node_offers_four_gpus(slurm):
    res = slurm.run(["scontrol", "show", "node", slurm.node])
    assert "Gres=gpu:4" in res.stdout
    assert "State=IDLE" in res.stdout


def test_gres_gpu_two_of_four(slurm):
    env = gpu_env(slurm.run(["srun", "--gres=gpu:2", "env"]).stdout)
    assert env["SLURM_GPUS_ON_NODE"] == "2"
    assert len(ids(env["SLURM_STEP_GPUS"])) == 2
    assert ids(env["SLURM_STEP_GPUS"]) <= {0, 1, 2, 3}
    assert env["CUDA_VISIBLE_DEVICES"] == env["SLURM_STEP_GPUS"]


def test_batch_job_sees_job_gpus_and_its_step_a_narrower_set(slurm, slurm_base):
    """SLURM_JOB_GPUS is set in the batch script's environment, and srun carries it into every
    step unchanged: a step's own GPUs are only in SLURM_STEP_GPUS (hpc/slurm.py reads that
    first)."""
    out = os.path.join(slurm_base, "batch-gpus.out")
    job = slurm.sbatch(["--gres=gpu:3", "-o", out, "--wrap",
                        "env | sed 's/^/batch: /'; srun --gres=gpu:1 env | sed 's/^/step: /'"])
    assert job["JobState"] == "COMPLETED", job
    with open(out) as f:
        text = f.read()
    batch = gpu_env("\n".join(ln[7:] for ln in text.splitlines() if ln.startswith("batch: ")))
    step = gpu_env("\n".join(ln[6:] for ln in text.splitlines() if ln.startswith("step: ")))
    assert len(ids(batch["SLURM_JOB_GPUS"])) == 3
    assert "SLURM_STEP_GPUS" not in batch
    assert step["SLURM_JOB_GPUS"] == batch["SLURM_JOB_GPUS"]
    assert len(ids(step["SLURM_STEP_GPUS"])) == 1
    assert ids(step["SLURM_STEP_GPUS"]) <= ids(batch["SLURM_JOB_GPUS"])


BARRIER = """\
d={dir}
echo "$SLURM_STEP_GPUS" > $d/step-$SLURM_STEP_ID.tmp && mv $d/step-$SLURM_STEP_ID.tmp \
$d/step-$SLURM_STEP_ID
# wait (bounded) until both steps have written: they ran at the same time
i=0; while [ $(ls $d | grep -c '^step-[0-9]*$') -lt 2 ] && [ $i -lt 600 ]; do
  sleep 0.1; i=$((i+1)); done
echo "step $SLURM_STEP_ID gpus $SLURM_STEP_GPUS peers $(ls $d | grep -c '^step-[0-9]*$')"
"""


def test_two_steps_at_once_get_disjoint_gpus(slurm, slurm_base):
    d = os.path.join(slurm_base, "barrier")
    os.makedirs(d)
    script = os.path.join(slurm_base, "barrier.sh")
    with open(script, "w") as f:
        f.write(BARRIER.format(dir=d))
    step = f"srun --exact -n1 --gres=gpu:2 sh {script}"
    res = slurm.run(["salloc", "-n2", "--gres=gpu:4", "sh", "-c", f"{step} & {step}; wait"])
    lines = re.findall(r"step (\d+) gpus (\S+) peers (\d+)", res.stdout)
    assert len(lines) == 2, res.stdout + res.stderr
    assert all(peers == "2" for _, _, peers in lines), "the steps did not overlap"
    (s1, g1, _), (s2, g2, _) = lines
    assert s1 != s2
    assert len(ids(g1)) == len(ids(g2)) == 2
    assert ids(g1).isdisjoint(ids(g2))
    assert ids(g1) | ids(g2) == {0, 1, 2, 3}


def test_job_as_unprivileged_user(slurm, job_user):
    res = slurm.run(["srun", "-n1", "--gres=gpu:1", "sh", "-c",
                     "id -u; echo job-user=$SLURM_JOB_USER; echo gpus=$SLURM_STEP_GPUS"],
                    user=job_user.pw_name)
    lines = res.stdout.split()
    assert lines[0] == str(job_user.pw_uid)
    assert f"job-user={job_user.pw_name}" in lines
    assert re.fullmatch(r"gpus=[0-3]", lines[2])


def test_pmi2_key_exchange(slurm, pmi2_program, job_user):
    for user in (None, job_user.pw_name):
        res = slurm.run(["srun", "--mpi=pmi2", "-n", "2", pmi2_program], user=user)
        assert sorted(res.stdout.splitlines()) == ["rank 0 of 2 got key-1=from-rank-1",
                                                   "rank 1 of 2 got key-0=from-rank-0"]
