"""A Slurm job's GPUs on this node (minictr/hpc/slurm.py): as a task (its environment) and as
a --container runtime (scontrol), ids mapped through gres.conf to device minors. The facts are
the Slurm tier's (tests/slurm/README.md); here they are fed in, no Slurm needed."""
import os
import stat

import pytest

from minictr.errors import GPUError
from minictr.hpc import slurm

GRES_ALL = "AutoDetect=off\nName=gpu File=/dev/nvidia[0-3]\n"
GRES_UPPER = "# only the upper half\nAutoDetect=off\nName=gpu File=/dev/nvidia[2-3]\n"


def fake_stat(path):
    """/dev/nvidiaN is the character device 195:N."""
    name = os.path.basename(path)
    if not name.startswith("nvidia") or not name[6:].isdigit():
        raise FileNotFoundError(2, "No such file or directory", path)
    return _Stat(os.makedev(195, int(name[6:])))


class _Stat:
    st_mode = stat.S_IFCHR | 0o666

    def __init__(self, rdev):
        self.st_rdev = rdev


def task(env, gres=GRES_ALL):
    return slurm.task_allocation({"SLURM_CONF": "/etc/x/slurm.conf", **env},
                                 read_text=lambda p: gres, stat_fn=fake_stat)


def test_outside_a_job_there_is_no_allocation():
    assert task({"SLURM_STEP_GPUS": "0"}) is None


def test_step_gpus_are_gres_conf_positions_not_minors():
    """The bug the Slurm tier recorded: on a node whose gres.conf lists nvidia[2-3], the step
    holding nvidia2 has SLURM_STEP_GPUS=0."""
    alloc = task({"SLURM_JOB_ID": "5", "SLURM_STEP_ID": "0", "SLURM_STEP_GPUS": "0"},
                 GRES_UPPER)
    assert alloc.minors == {2}
    assert "SLURM_STEP_GPUS=0" in alloc.source and "/dev/nvidia2" in alloc.source
    assert task({"SLURM_JOB_ID": "5", "SLURM_STEP_ID": "0", "SLURM_STEP_GPUS": "1,3"}).minors \
        == {1, 3}


def test_a_step_without_gpus_has_none_whatever_the_job_has():
    """srun --gres=none in a GPU job: SLURM_JOB_GPUS is inherited from the batch script,
    SLURM_STEP_GPUS is unset."""
    alloc = task({"SLURM_JOB_ID": "5", "SLURM_STEP_ID": "1", "SLURM_JOB_GPUS": "0,1,2"})
    assert alloc.minors == frozenset() and "no SLURM_STEP_GPUS" in alloc.source


def test_the_batch_script_has_the_jobs_gpus():
    assert task({"SLURM_JOB_ID": "5", "SLURM_JOB_GPUS": "0,2"}).minors == {0, 2}


def test_a_job_without_gpus_has_an_empty_allocation():
    assert task({"SLURM_JOB_ID": "5", "SLURM_STEP_ID": "0"}).minors == frozenset()
    assert task({"SLURM_JOB_ID": "5"}).minors == frozenset()      # salloc shell, batch script


def test_unreadable_ids_and_gres_conf_are_errors():
    with pytest.raises(GPUError, match="cannot read SLURM_STEP_GPUS"):
        task({"SLURM_JOB_ID": "5", "SLURM_STEP_ID": "0", "SLURM_STEP_GPUS": "gpu0"})
    with pytest.raises(GPUError, match="GPU id 2, but .* lists 2 GPU files"):
        task({"SLURM_JOB_ID": "5", "SLURM_STEP_ID": "0", "SLURM_STEP_GPUS": "2"}, GRES_UPPER)
    with pytest.raises(GPUError, match="without File="):
        task({"SLURM_JOB_ID": "5", "SLURM_STEP_GPUS": "0"}, "Name=gpu Count=4\n")

    def unreadable(path):
        raise PermissionError(13, "Permission denied", path)
    with pytest.raises(GPUError, match="cannot read /etc/x/gres.conf"):
        slurm.task_allocation({"SLURM_CONF": "/etc/x/slurm.conf", "SLURM_JOB_ID": "5",
                               "SLURM_STEP_GPUS": "0"}, read_text=unreadable, stat_fn=fake_stat)


def test_gres_conf_lines_for_other_nodes_and_types():
    text = ("NodeName=a[1-2] Name=gpu Type=h200 File=/dev/nvidia[0-1]\n"
            "NodeName=b1 Name=gpu File=/dev/nvidia[4-5]\n"
            "Name=gpu Type=l4 File=/dev/nvidia7\n"
            "Name=mps Count=100\n")
    assert slurm.gres_gpu_files(text, "a2", "g") == ["/dev/nvidia0", "/dev/nvidia1",
                                                     "/dev/nvidia7"]
    assert slurm.gres_gpu_files(text, "b1", "g") == ["/dev/nvidia4", "/dev/nvidia5",
                                                     "/dev/nvidia7"]


def test_a_gres_file_that_is_no_nvidia_gpu_is_an_error():
    with pytest.raises(GPUError, match="not an NVIDIA GPU device"):
        slurm.device_minor("/etc/passwd")


def test_hostlists_and_ids():
    assert slurm.expand_hostlist("n[1-3,7],gpu01,x[08-10]") == [
        "n1", "n2", "n3", "n7", "gpu01", "x08", "x09", "x10"]
    assert slurm.parse_ids("0,2-3", "x") == [0, 2, 3]


SHOW_JOB = """JobId=12 JobName=wrap
   JobState=RUNNING Reason=None Dependency=(null)
   NodeList=mctr1
   Nodes=mctr1 CPU_IDs=0 Mem=0 GRES=gpu:2(IDX:1,3)
   Nodes=other[1-2] CPU_IDs=0-1 Mem=0 GRES=gpu:h200:1(IDX:0),gpu:l4:1(IDX:2)
   Nodes=cpuonly CPU_IDs=0 Mem=0 GRES=
"""


def container(spec_env, node="mctr1", text=SHOW_JOB, gres=GRES_ALL):
    calls = []

    def run(args, env):
        calls.append((args, env.get("SLURM_CONF")))
        return text
    alloc = slurm.container_allocation(spec_env, {"SLURM_CONF": "/etc/x/slurm.conf",
                                                  "SLURMD_NODENAME": node},
                                       run=run, read_text=lambda p: gres, stat_fn=fake_stat)
    return alloc, calls


def test_a_container_step_gets_the_jobs_gpus_from_scontrol():
    """config.json of a --container step has SLURM_JOB_ID but no GPU variable; in a batch job
    it has the batch script's SLURM_JOB_GPUS, which must not be trusted."""
    alloc, calls = container({"SLURM_JOB_ID": "12", "SLURM_STEP_ID": "0",
                              "SLURM_JOB_GPUS": "0,1,2,3"})
    assert calls == [(["show", "job", "-d", "12"], "/etc/x/slurm.conf")]
    assert alloc.minors == {1, 3} and "IDX 1,3" in alloc.source
    assert container({"SLURM_JOB_ID": "12"}, node="other2")[0].minors == {0, 2}
    assert container({"SLURM_JOB_ID": "12"}, node="cpuonly")[0].minors == frozenset()
    assert container({"PATH": "/bin"})[0] is None
    with pytest.raises(GPUError, match="does not list node elsewhere"):
        container({"SLURM_JOB_ID": "12"}, node="elsewhere")
    with pytest.raises(GPUError, match="not a job id"):
        container({"SLURM_JOB_ID": "12;rm"})
