"""Slurm: staying inside the job's GPU allocation.

Inside a job step, Slurm's gres/gpu plugin exports the GPUs it allocated as SLURM_STEP_GPUS
(or SLURM_JOB_GPUS for the whole job): their ids in gres.conf's ``File=/dev/nvidia[...]`` order,
which on a usual node is the device minor (/dev/nvidiaN). With ConstrainDevices=yes the job's
device cgroup already refuses the others; minictr also narrows `--gpus all` to the allocation
and refuses a GPU outside it with a clear error instead of an EPERM from inside the container.
"""
from __future__ import annotations

from minictr.errors import GPUError


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
