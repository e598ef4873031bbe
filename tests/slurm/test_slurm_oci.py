"""`srun --container=BUNDLE` through oci.conf, with a real OCI runtime, in both of Slurm 22.05's
modes, as root and as an unprivileged user: runc (slurm_harness.RUNTIME) and minictr-runc (the
``minictr_runc`` fixture) run the same steps and must behave alike.

The runtime is called through a logging wrapper, so these tests also pin down what slurmstepd
does (the lead's spec for a minictr runtime under Slurm):

* RunTimeRun: the task process execs ``/bin/sh -c "<RunTimeRun>"`` as the job user, in the
  generated bundle ``SlurmdSpoolDir/oci-jobJJJJJ-SSSSS/`` (``%b``, holding only config.json); its
  stdio is the task's, its exit status the step's.
* RunTimeCreate/Start: run one after another (stdout+stderr captured to a pipe, stdin /dev/null)
  with RunTimeQuery polled in between and after, then Kill/Delete; the step's status is
  RunTimeStart's, never the container's.
* At step end slurmstepd itself (euid 0) runs RunTimeQuery again, and Kill/Delete if the
  container still exists.
* config.json: Slurm sets ``process.terminal=false``, ``root.path=<bundle>/rootfs``,
  ``process.args`` (the srun command) and *appends* the step's environment to ``process.env``;
  everything else is the bundle's own. No GPU variable is in it (they are set per task, after
  the bundle is written), and the runtime's own environment is slurmd's, not the job's.
"""
from __future__ import annotations

import json
import os
import re

import pytest

from slurm_harness import RUNTIME, OciConf

pytestmark = [pytest.mark.slurm, pytest.mark.root]

CASES = [(rt, mode, who) for rt in ("runc", "minictr") for mode in ("run", "create-start")
         for who in ("root", "user")]
SCRIPT = ("echo in-container; id -u; cat /proc/self/uid_map; ls /bin/busybox; "
          "env | sed 's/^/env: /'; exit 3")
GPU_VARS = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL",
            "SLURM_GPUS_ON_NODE")


class Step:
    """One `srun --gres=gpu:2 --container=BUNDLE sh -c SCRIPT` and what the runtime saw."""

    def __init__(self, slurm, mode, who, bundle, user, runtime=RUNTIME):
        self.mode, self.who, self.bundle, self.user = mode, who, bundle, user
        self.runtime = runtime
        with slurm.oci(OciConf(runtime, mode=mode, rootless=(who == "user"))):
            self.res = slurm.run(["srun", "--gres=gpu:2", f"--container={bundle}", "sh", "-c",
                                  SCRIPT], user=user.pw_name if user else None, check=False)
        self.calls = slurm.oci_calls()
        first = self.calls[0] if self.calls else {}
        env = first.get("config", {}).get("process", {}).get("env", [])
        jobs = [e.split("=", 1)[1] for e in env if e.startswith("SLURM_JOB_ID=")]
        assert jobs, f"no runtime call logged:\n{self.res.stdout}\n{self.res.stderr}\n" \
                     f"{slurm.logs(20)}"
        self.job = int(jobs[-1])
        self.uid = user.pw_uid if user else 0
        self.user_name = user.pw_name if user else "root"
        self.spool = slurm.spool_dir(self.job)
        self.cid = f"{slurm.node}.{self.user_name}.{self.job}.0.0"
        if mode == "create-start" and who == "user":
            # an unprivileged create cannot reach the task's stdio: it wrote to a file
            with open(os.path.join(slurm.oci_out, f"{self.user_name}.{self.job}.0.out")) as f:
                self.output = f.read()
        else:
            self.output = self.res.stdout
        self.container_env = dict(ln[5:].partition("=")[::2] for ln in self.output.splitlines()
                                  if ln.startswith("env: "))

    def ops(self):
        return [c["op"] for c in self.calls]

    def global_opts(self, slurm):
        if self.who == "user":
            return ["--rootless=true", f"--root={slurm.oci_state}/{self.user_name}"]
        return [f"--root={slurm.oci_state}/root"]


def runtime_path(request, key: str) -> str:
    return RUNTIME if key == "runc" else request.getfixturevalue("minictr_runc")


@pytest.fixture(scope="module", params=CASES, ids=["-".join(c) for c in CASES])
def step(request, slurm, bundles, job_user):
    rt, mode, who = request.param
    return Step(slurm, mode, who, bundles[who], job_user if who == "user" else None,
                runtime_path(request, rt))


def test_container_runs_the_command_in_the_bundle(step):
    lines = step.output.splitlines()
    assert "in-container" in lines, step.output + step.res.stderr
    assert lines[lines.index("in-container") + 1] == "0"        # uid 0 inside
    uid_map = lines[lines.index("in-container") + 2].split()
    if step.who == "user":
        assert uid_map == ["0", str(step.uid), "1"]             # runc spec --rootless
    else:
        assert uid_map == ["0", "0", "4294967295"]              # no user namespace
    assert "/bin/busybox" in lines


def test_exit_status(step):
    if step.mode == "run":
        assert step.res.returncode == 3         # the runtime's status is the task's
    else:
        # Slurm 22.05 create/start: the step ends with RunTimeStart's status (0), the container's
        # own exit status is lost
        assert step.res.returncode == 0, step.res.stderr


def test_what_slurmstepd_runs(step, slurm):
    ops = step.ops()
    main = step.calls[0]
    expected_op = "run" if step.mode == "run" else "create"
    assert main["op"] == expected_op
    assert main["argv"] == [step.runtime, *step.global_opts(slurm), expected_op, step.cid,
                            "-b", step.spool]
    # as the job user, in the generated bundle directory
    assert (main["uid"], main["euid"]) == (step.uid, step.uid)
    assert main["cwd"] == step.spool.rstrip("/")
    assert main["bundle_files"] == ["config.json"]
    if step.mode == "run":
        assert ops == ["run", "state"], ops
    else:
        start = ops.index("start")
        assert ops[1:start] and set(ops[1:start]) == {"state"}      # polled until "created"
        assert "delete" in ops[start:], ops
        assert {c["argv"][-1] for c in step.calls if c["op"] != "create"} == {step.cid}
        for call in step.calls[:-1]:
            assert call["euid"] == step.uid, (call["op"], call["euid"])
    # the final query comes from slurmstepd's step cleanup: euid 0 even for a user's job
    last = step.calls[-1]
    assert last["op"] == "state"
    assert last["euid"] == 0
    assert last["argv"] == [step.runtime, *step.global_opts(slurm), "state", step.cid]


def test_config_json_edits(step):
    with open(os.path.join(step.bundle, "config.json")) as f:
        original = json.load(f)
    made = step.calls[0]["config"]
    assert made["process"]["terminal"] is False
    assert made["root"]["path"] == os.path.join(step.bundle, "rootfs")
    assert made["process"]["args"] == ["sh", "-c", SCRIPT]
    env = made["process"]["env"]
    own = original["process"]["env"]
    assert env[:len(own)] == own                       # the bundle's env first, then appended
    appended = dict(e.partition("=")[::2] for e in env[len(own):])
    assert appended["SLURM_JOB_ID"] == str(step.job)
    assert appended["SLURM_STEP_ID"] == "0"
    assert appended["SLURM_CONTAINER"] == step.bundle
    assert "PATH" in appended                          # so PATH is there twice: last one wins
    for name in GPU_VARS + ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_TASK_PID"):
        assert name not in appended, name               # per-task variables come too late
    # everything else is the bundle's own
    strip = lambda d: {**d, "process": {k: v for k, v in d["process"].items()   # noqa: E731
                                        if k not in ("terminal", "args", "env")},
                       "root": {k: v for k, v in d["root"].items() if k != "path"}}
    assert strip(made) == strip(original)


def test_container_and_runtime_do_not_see_the_gpus(step, slurm):
    """With --gres=gpu:2 neither the container's environment nor the runtime's names the GPUs;
    the runtime has SLURM_CONF and can ask scontrol for the job (not the step)."""
    for name in GPU_VARS:
        assert name not in step.container_env, name
    assert step.container_env["SLURM_JOB_ID"] == str(step.job)
    rt_env = step.calls[0]["env"]
    assert rt_env["SLURM_CONF"] == slurm.conf
    assert rt_env["SLURMD_NODENAME"] == slurm.node
    assert "SLURM_JOB_ID" not in rt_env
    for name in GPU_VARS:
        assert name not in rt_env, name
    assert re.search(r"GRES=gpu:2\(IDX:[0-3][-,][0-3]\)", step.calls[0]["scontrol_show_job"])


def test_batch_step_in_a_container(slurm, slurm_base, bundles):
    """sbatch --container: the batch step's id is 4294967291 (SLURM_BATCH_SCRIPT) in %s, the
    bundle is oci-jobJJJJJ-batch/, and the script reaches the container by bind mounts under
    /tmp/slurm (startup read-only; stdout and stderr are the job's output files)."""
    out = os.path.join(slurm_base, "batch-container.out")
    with slurm.oci(OciConf(RUNTIME, mode="run")):
        job = slurm.sbatch(["--gres=gpu:1", "-o", out, f"--container={bundles['root']}",
                            "--wrap", "echo batch-in-container; ls /bin/busybox"])
    assert job["JobState"] == "COMPLETED", job
    with open(out) as f:
        assert f.read().splitlines()[:2] == ["batch-in-container", "/bin/busybox"]
    run = slurm.oci_calls()[0]
    jid = int(job["JobId"])
    assert run["argv"][-3:] == [f"{slurm.node}.root.{jid}.4294967291.0", "-b",
                                os.path.join(slurm.spool, f"oci-job{jid:05d}-batch") + "/"]
    config = run["config"]
    assert config["process"]["args"] == ["/tmp/slurm/startup"]
    added = {m["destination"]: m for m in config["mounts"]
             if m["destination"].startswith("/tmp/slurm/")}
    assert sorted(added) == ["/tmp/slurm/startup", "/tmp/slurm/stderr", "/tmp/slurm/stdout"]
    assert added["/tmp/slurm/startup"]["options"] == ["bind", "ro"]
    assert added["/tmp/slurm/stdout"]["source"] == out
    env = config["process"]["env"]
    assert not [e for e in env if e.split("=")[0] in GPU_VARS]


def test_step_of_a_batch_job_carries_the_jobs_gpus_not_its_own(slurm, slurm_base, bundles):
    """A trap for a runtime that reads config.json's env: inside a batch job, srun copies the
    batch script's SLURM_JOB_GPUS and CUDA_VISIBLE_DEVICES (all the job's GPUs) into the step's
    environment, and the step's own SLURM_STEP_GPUS never gets there."""
    out = os.path.join(slurm_base, "batch-step-container.out")
    with slurm.oci(OciConf(RUNTIME, mode="run")):
        job = slurm.sbatch(["--gres=gpu:3", "-o", out, "--wrap",
                            f"srun --gres=gpu:1 --container={bundles['root']} env"])
    assert job["JobState"] == "COMPLETED", job
    run = slurm.oci_calls()[0]
    env = dict(e.partition("=")[::2] for e in run["config"]["process"]["env"])
    assert "SLURM_STEP_GPUS" not in env
    assert len(env["SLURM_JOB_GPUS"].split(",")) == 3          # the job's three, not the one
    assert env["CUDA_VISIBLE_DEVICES"] == env["SLURM_JOB_GPUS"]
    assert "GRES=gpu:3(IDX:" in run["scontrol_show_job"]
