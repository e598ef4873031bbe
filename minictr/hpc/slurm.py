"""Slurm: staying inside the job's GPU allocation, and what a job-native container needs of
the job's PMI/PMIx (the last section).

Inside a job step, Slurm's gres/gpu plugin exports the GPUs it allocated as SLURM_STEP_GPUS
(or SLURM_JOB_GPUS for the whole job): their ids in gres.conf's ``File=/dev/nvidia[...]`` order,
which on a usual node is the device minor (/dev/nvidiaN). With ConstrainDevices=yes the job's
device cgroup already refuses the others; minictr also narrows `--gpus all` to the allocation
and refuses a GPU outside it with a clear error instead of an EPERM from inside the container.
"""
from __future__ import annotations

from minictr.errors import GPUError, MinictrError


def gpu_allocation(env: dict[str, str]) -> frozenset[int] | None:
    """The device minors allocated to this Slurm job step, or None outside Slurm (or when the
    job has no GPU gres: then Slurm sets neither variable)."""
    for name in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        text = env.get(name)
        if text is None:
            continue
        try:
            return frozenset(int(t) for t in text.split(",") if t.strip())
        except ValueError:
            raise GPUError(f"cannot read {name}={text!r}: expected a comma list of GPU ids",
                           hint="unset it, or check the node's gres.conf") from None
    return None


# ---------------------------------------------------------------- the job's environment

# enroot's hooks/extra/50-slurm-pmi.sh: a PMIx server tells its clients which transport,
# security and storage components to use through these; a client library reads the MCA names.
PMIX_MCA = (("PMIX_PTL_MODULE", "PMIX_MCA_ptl"), ("PMIX_SECURITY_MODE", "PMIX_MCA_psec"),
            ("PMIX_GDS_MODULE", "PMIX_MCA_gds"))


def pmix_edits(env: dict[str, str], is_dir) -> "ContainerEdits | None":
    """What PMIx needs inside a job-native container, beyond the job's variables (which pass
    with the rest of the environment): the MCA names for the server's module choices (unless
    set already), and the server's rendezvous directory PMIX_SERVER_TMPDIR at its own path
    (its sockets and shared-memory segments live there)."""
    from minictr.spec.edits import ContainerEdits

    extra = [f"{mca}={env[var]}" for var, mca in PMIX_MCA if env.get(var) and mca not in env]
    mounts = []
    tmpdir = env.get("PMIX_SERVER_TMPDIR")
    if tmpdir and tmpdir.startswith("/") and is_dir(tmpdir):
        mounts.append({"destination": tmpdir, "type": "bind", "source": tmpdir,
                       "options": ["rbind", "rprivate"]})
    if not extra and not mounts:
        return None
    return ContainerEdits(env=tuple(extra), mounts=tuple(mounts))


def pmi_fd(env: dict[str, str], is_open) -> int | None:
    """The fd of Slurm's PMI-1/PMI-2 socket (srun --mpi=pmi2 sets PMI_FD for each task), when
    it is open in this process; None otherwise."""
    text = env.get("PMI_FD")
    if text is None:
        return None
    try:
        fd = int(text)
    except ValueError:
        raise MinictrError(f"PMI_FD={text!r} is not a file descriptor number",
                           hint="unset it, or run the task under srun --mpi=pmi2") from None
    return fd if fd > 2 and is_open(fd) else None
