"""Slurm: the GPUs a job may use on this node, so that containers stay inside them; and what
a job-native container needs of the job's PMI/PMIx (the last section).

minictr meets Slurm in two ways, and learns the allocation differently in each:

* **As a task** (``srun minictr run --gpus all ...``): slurmstepd exports the step's GPUs to
  the task as ``SLURM_STEP_GPUS``; the batch script (which is no step) has the job's in
  ``SLURM_JOB_GPUS``. A step with no GPUs gets no ``SLURM_STEP_GPUS`` but still inherits the
  batch script's ``SLURM_JOB_GPUS``, so a step (``SLURM_STEP_ID`` set) without
  ``SLURM_STEP_GPUS`` has none (:func:`task_allocation`).
* **As the OCI runtime of a ``--container`` step** (oci.conf): Slurm writes no GPU variable
  into config.json (they are set per task, after the bundle is written), and the runtime's own
  environment is slurmd's. The job id is in config.json's ``process.env`` (``SLURM_JOB_ID``,
  appended by Slurm). ``scontrol show job -d JOB`` gives the job's GPUs per node
  (``Nodes=n1 ... GRES=gpu:2(IDX:0-1)``); 22.05 cannot show a step's own subset, so the
  container may use the *job's* GPUs on this node. ``SLURM_JOB_GPUS`` in config.json is never
  used: inside a batch job srun copies the batch script's (the job's) value into every step
  (:func:`container_allocation`).

Ids: Slurm 22.05 numbers a GPU by its position in the node's gres.conf ``File=`` list
(``gres_common.c``: ``use_dev_num`` is false for GPUs), not by its device minor. A node whose
gres.conf says ``File=/dev/nvidia[2-3]`` gives the step holding nvidia2 ``SLURM_STEP_GPUS=0``.
So each id is looked up in gres.conf (beside ``$SLURM_CONF``) and its device file's minor read.

Fail closed: in a job (``SLURM_JOB_ID`` set) the allocation is what Slurm says, and nothing is
the answer when it says nothing; anything that cannot be read is an error, never "all GPUs".
"""
from __future__ import annotations

import os
import re
import stat
from _collections_abc import Callable

from minictr.errors import GPUError, MinictrError
from minictr.records import record

NVIDIA_MAJOR = 195
DEFAULT_CONF = "/etc/slurm/slurm.conf"


@record
class Allocation:
    """The device minors (/dev/nvidiaN) a job may use here, and where that was read."""

    minors: frozenset[int]
    source: str


# ---------------------------------------------------------------- as a task


def task_allocation(env: dict[str, str], *, read_text=None, stat_fn=os.stat) -> Allocation | None:
    """The GPUs of the job step this process runs in (``env``: its own environment), or None
    outside a Slurm job."""
    job = env.get("SLURM_JOB_ID")
    if not job:
        return None
    where = f"Slurm job {job}" + (f" step {env['SLURM_STEP_ID']}" if env.get("SLURM_STEP_ID")
                                  else "")
    for name in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        text = env.get(name)
        if name == "SLURM_JOB_GPUS" and env.get("SLURM_STEP_ID"):
            # a step's own GPUs are only in SLURM_STEP_GPUS; SLURM_JOB_GPUS is the batch
            # script's, inherited by every step
            break
        if text is None:
            continue
        positions = parse_ids(text, name)
        return _allocation(positions, f"{where}: {name}={text}", env, read_text, stat_fn)
    return Allocation(frozenset(), f"{where}: no SLURM_STEP_GPUS")


# ---------------------------------------------------------------- as a --container runtime


def container_allocation(spec_env: dict[str, str], runtime_env: dict[str, str], *,
                         run: Callable[[list[str], dict], str] | None = None, read_text=None,
                         stat_fn=os.stat) -> Allocation | None:
    """The GPUs on this node of the job a bundle belongs to (``spec_env``: config.json's
    process.env, last entry of a name winning; ``runtime_env``: the runtime's own, which has
    slurmd's SLURM_CONF and SLURMD_NODENAME), or None when the bundle is no Slurm job's."""
    job = spec_env.get("SLURM_JOB_ID")
    if not job:
        return None
    if not job.isdecimal():
        raise GPUError(f"config.json says SLURM_JOB_ID={job!r}: not a job id")
    env = {**spec_env, **{k: v for k, v in runtime_env.items()
                          if k in ("SLURM_CONF", "SLURMD_NODENAME", "PATH")}}
    node = env.get("SLURMD_NODENAME") or os.uname().nodename.split(".")[0]
    text = (run or run_scontrol)(["show", "job", "-d", job], env)
    where = f"Slurm job {job} on {node}"
    gres = job_gres_on_node(text, node)
    if gres is None:
        raise GPUError(f"scontrol show job -d {job} does not list node {node}",
                       hint="is SLURMD_NODENAME this node's Slurm name?")
    if not gres:
        return Allocation(frozenset(), f"{where}: no GPU gres")
    return _allocation(gres, f"{where}: scontrol show job -d says GRES IDX "
                       + ",".join(map(str, gres)), env, read_text, stat_fn)


def run_scontrol(args: list[str], env: dict[str, str]) -> str:
    import shutil
    import subprocess

    exe = shutil.which("scontrol", path=env.get("PATH") or os.defpath) or "/usr/bin/scontrol"
    try:
        res = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in env.items() if k in ("SLURM_CONF", "PATH")})
    except (OSError, subprocess.SubprocessError) as err:
        raise GPUError(f"cannot ask Slurm for the job's GPUs: scontrol: {err}",
                       hint="the container would otherwise get GPUs outside the job") from None
    if res.returncode != 0:
        raise GPUError(f"scontrol {' '.join(args)}: {(res.stderr or res.stdout).strip()}",
                       hint="the container would otherwise get GPUs outside the job")
    return res.stdout


_NODES_LINE = re.compile(r"^\s*Nodes=(\S+)\s.*$", re.M)
_GRES_GPU = re.compile(r"(?:^|,)gpu(?::[^:(,]+)?:\d+\(IDX:([0-9,\-]*)\)")


def job_gres_on_node(text: str, node: str) -> list[int] | None:
    """GPU ids (gres.conf positions) the ``scontrol show job -d`` text gives ``node``; None
    when no ``Nodes=`` line names it. Lines look like (22.05):
    ``Nodes=n[1-2] CPU_IDs=0-1 Mem=0 GRES=gpu:2(IDX:0-1),gpu:a100:1(IDX:3)``."""
    for m in _NODES_LINE.finditer(text):
        if node not in expand_hostlist(m.group(1)):
            continue
        line = m.group(0)
        gres = re.search(r"\bGRES=(\S*)", line)
        ids: list[int] = []
        for g in _GRES_GPU.finditer(gres.group(1) if gres else ""):
            ids += parse_ids(g.group(1), "GRES IDX") if g.group(1) else []
        return ids
    return None


# ---------------------------------------------------------------- ids and gres.conf


def parse_ids(text: str, what: str) -> list[int]:
    """``0,2-3`` -> [0, 2, 3]."""
    out: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            lo, _, hi = part.partition("-")
            out += range(int(lo), int(hi or lo) + 1)
    except ValueError:
        raise GPUError(f"cannot read {what}={text!r}: expected GPU ids such as 0,2-3",
                       hint="check the node's gres.conf") from None
    return out


def expand_hostlist(text: str) -> list[str]:
    """Slurm host lists: ``n[1-3,7],gpu01`` -> n1 n2 n3 n7 gpu01 (one bracket per name)."""
    names = []
    for m in re.finditer(r"([^,\[]+)(?:\[([^\]]*)\])?([^,]*)", text):
        prefix, ranges, suffix = m.groups()
        if ranges is None:
            names.append(prefix + suffix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            width = len(lo)
            for i in range(int(lo), int(hi or lo) + 1):
                names.append(f"{prefix}{i:0{width}d}{suffix}")
    return names


def gres_gpu_files(text: str, node: str, where: str) -> list[str]:
    """The node's GPU device files in gres.conf order (Name=gpu lines, for every node or a
    NodeName= list holding ``node``), each File= range expanded: position N is id N."""
    files: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        fields = {k.lower(): v for k, v in fields.items()}
        if fields.get("name") != "gpu":
            continue
        if "nodename" in fields and node not in expand_hostlist(fields["nodename"]):
            continue
        if "file" not in fields:
            raise GPUError(f"{where}: a Name=gpu line without File= ({line!r}): minictr cannot "
                           "tell which device each Slurm GPU id is",
                           hint="list the devices with File=/dev/nvidia[0-3] (AutoDetect is "
                           "not read)")
        files += expand_hostlist(fields["file"])
    return files


def _allocation(positions: list[int], source: str, env: dict[str, str], read_text,
                stat_fn) -> Allocation:
    if not positions:
        return Allocation(frozenset(), source)
    conf = os.path.join(os.path.dirname(env.get("SLURM_CONF") or DEFAULT_CONF), "gres.conf")
    try:
        text = (read_text or _read_text)(conf)
    except OSError as err:
        raise GPUError(f"cannot read {conf}: {err.strerror}: minictr maps Slurm's GPU ids "
                       "(positions in gres.conf) to devices through it",
                       hint="the container would otherwise get GPUs outside the job") from None
    node = env.get("SLURMD_NODENAME") or os.uname().nodename.split(".")[0]
    files = gres_gpu_files(text, node, conf)
    minors = []
    for p in positions:
        if p >= len(files):
            raise GPUError(f"{source}: GPU id {p}, but {conf} lists {len(files)} GPU files "
                           f"for {node}", hint="is this gres.conf the one slurmd reads?")
        minors.append(device_minor(files[p], stat_fn))
    devices = ",".join(f"/dev/nvidia{m}" for m in minors)
    return Allocation(frozenset(minors), f"{source} = {devices}")


def device_minor(path: str, stat_fn=os.stat) -> int:
    """The minor of an NVIDIA GPU device file named in gres.conf."""
    try:
        st = stat_fn(path)
    except OSError as err:
        raise GPUError(f"gres.conf names {path}: {err.strerror}") from None
    if not stat.S_ISCHR(st.st_mode) or os.major(st.st_rdev) != NVIDIA_MAJOR:
        raise GPUError(f"gres.conf names {path}, which is not an NVIDIA GPU device (195:N)")
    return os.minor(st.st_rdev)


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


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
