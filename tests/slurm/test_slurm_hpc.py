"""Job-native containers under a real Slurm (issue 14): `minictr run --hpc` as an srun task,
from single-file images on a read-only shared directory, with GPUs and PMI2.

Images are exported once by root into ``slurm_base/hpc-images`` (0555: the job user can read
but not write it, as on a read-only shared filesystem); the job user runs minictr from the
world-readable venv the rootless tier also uses.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from test_slurm_minictr import gpu_nodes, minictr_env

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                ".."))
from tests import images  # noqa: E402

pytestmark = [pytest.mark.slurm, pytest.mark.root]


@pytest.fixture(scope="module")
def hpc_images(slurm_base, minictr_exe, probe_layout, pmi2_program):
    """The probe image (glibc, fake-GPU aware) and a glibc image holding the PMI2 program and
    its libraries, each exported to a .sqsh in a read-only directory."""
    for tool in ("mksquashfs", "squashfuse_ll"):
        if not subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).stdout:
            pytest.skip(f"needs {tool} (apt-get install squashfs-tools squashfuse)")
    out = os.path.join(slurm_base, "hpc-images")
    os.makedirs(out, exist_ok=True)
    cache = os.path.join(slurm_base, "image-cache")
    store = os.path.join(slurm_base, "hpc-export-store")
    pmi = images.build_glibc_image(cache, binaries=[pmi2_program, "/bin/sh", "/usr/bin/id"])
    made = {}
    for name, ref in (("probe", f"oci:{probe_layout}"), ("pmi", pmi.ref)):
        subprocess.run([minictr_exe, "load", "--root", store, "--tag", f"{name}:hpc", ref],
                       check=True, capture_output=True)
        made[name] = os.path.join(out, f"{name}.sqsh")
        subprocess.run([minictr_exe, "export", "--root", store, f"{name}:hpc", "-o", made[name]],
                       check=True, capture_output=True)
        os.chmod(made[name], 0o444)
    os.chmod(out, 0o555)
    return made


@pytest.fixture(scope="module")
def user_minictr(rootless_venv):
    return os.path.join(rootless_venv, "bin", "minictr")


@pytest.fixture
def job_dir(slurm_base, job_user, request):
    d = os.path.join(slurm_base, "jobs", request.node.name)
    os.makedirs(d)
    os.chmod(os.path.dirname(d), 0o755)
    os.chown(d, job_user.pw_uid, job_user.pw_gid)
    return d


def user_env(job_user, job_dir) -> dict[str, str]:
    """What a job user's task would carry: its own state and store under the job directory
    (the compute node has no login session, so no XDG_RUNTIME_DIR)."""
    return {"MINICTR_STATE": os.path.join(job_dir, ".state"),
            "MINICTR_ROOT": os.path.join(job_dir, ".store"), "USER": job_user.pw_name}


def test_job_native_task_has_the_jobs_env_uid_home_and_cwd(slurm, job_user, job_dir,
                                                          user_minictr, hpc_images):
    """Two tasks of one step as the job user, from a .sqsh in a read-only directory: each is
    the job user, in the job's directory, with the job's variables (and not the host's
    LD_LIBRARY_PATH), sharing the node's hostname."""
    script = ('echo "uid=$(id -u) user=$(id -un) home=$HOME cwd=$(pwd) host=$(hostname) '
              'job=$SLURM_JOB_ID rank=$SLURM_PROCID ld=$LD_LIBRARY_PATH"; echo ok > out.$SLURM_PROCID')
    res = slurm.run(["srun", "-n2", user_minictr, "run", "--rm", "--hpc", hpc_images["probe"],
                     "/bin/busybox", "sh", "-c", script], user=job_user.pw_name,
                    cwd=job_dir, env={**user_env(job_user, job_dir),
                                      "LD_LIBRARY_PATH": "/host/only"})
    lines = sorted(ln for ln in res.stdout.splitlines() if ln.startswith("uid="))
    job = re.search(r"job=(\d+)", lines[0]).group(1)
    assert lines == [f"uid={job_user.pw_uid} user={job_user.pw_name} home={job_user.pw_dir} "
                     f"cwd={job_dir} host={slurm.hostname} job={job} rank={rank} ld="
                     for rank in (0, 1)], res.stderr
    for rank in (0, 1):
        st = os.stat(os.path.join(job_dir, f"out.{rank}"))
        assert st.st_uid == job_user.pw_uid


def test_pmi2_exchange_through_the_container(slurm, job_user, job_dir, user_minictr,
                                            hpc_images, pmi2_program):
    """srun --mpi=pmi2 -n 2: each rank, inside its own job-native container, puts a key,
    fences and reads its neighbour's through Slurm's PMI2 server (PMI_FD kept open)."""
    res = slurm.run(["srun", "--mpi=pmi2", "-n2", user_minictr, "run", "--rm", "--hpc",
                     hpc_images["pmi"], pmi2_program], user=job_user.pw_name, cwd=job_dir,
                    env=user_env(job_user, job_dir))
    got = sorted(ln for ln in res.stdout.splitlines() if ln.startswith("rank "))
    assert got == ["rank 0 of 2 got key-1=from-rank-1", "rank 1 of 2 got key-0=from-rank-0"], \
        res.stdout + res.stderr


def test_pmi2_exchange_as_root_from_the_store(slurm, slurm_base, minictr_exe, hpc_images,
                                              pmi2_program, job_dir):
    """The same through the kernel's squashfs (root): PMI_FD passes the device filter's
    cgroup and the close_range that protects every other fd."""
    env = {"MINICTR_ROOT": os.path.join(slurm_base, "minictr", "store"),
           "MINICTR_STATE": os.path.join(slurm_base, "minictr", "state-pmi")}
    res = slurm.run(["srun", "--mpi=pmi2", "-n2", minictr_exe, "run", "--rm", "--hpc",
                     hpc_images["pmi"], pmi2_program], env=env, cwd=job_dir)
    got = sorted(ln for ln in res.stdout.splitlines() if ln.startswith("rank "))
    assert got == ["rank 0 of 2 got key-1=from-rank-1", "rank 1 of 2 got key-0=from-rank-0"], \
        res.stdout + res.stderr


PMIX_C = r"""
#include <stdio.h>
#include <pmix.h>
/* each rank puts a value, fences with data collection, then gets its right neighbour's */
int main(void) {
    pmix_proc_t me, wild, peer;
    pmix_value_t value, *got;
    pmix_info_t info;
    bool collect = true;
    char text[64];
    if (PMIx_Init(&me, NULL, 0) != PMIX_SUCCESS) return 10;
    PMIX_LOAD_PROCID(&wild, me.nspace, PMIX_RANK_WILDCARD);
    if (PMIx_Get(&wild, PMIX_JOB_SIZE, NULL, 0, &got) != PMIX_SUCCESS) return 11;
    unsigned size = got->data.uint32;
    snprintf(text, sizeof text, "from-rank-%u", me.rank);
    PMIX_VALUE_LOAD(&value, text, PMIX_STRING);
    if (PMIx_Put(PMIX_GLOBAL, "mctr-key", &value) != PMIX_SUCCESS) return 12;
    if (PMIx_Commit() != PMIX_SUCCESS) return 13;
    PMIX_INFO_LOAD(&info, PMIX_COLLECT_DATA, &collect, PMIX_BOOL);
    if (PMIx_Fence(NULL, 0, &info, 1) != PMIX_SUCCESS) return 14;
    PMIX_LOAD_PROCID(&peer, me.nspace, (me.rank + 1) % size);
    if (PMIx_Get(&peer, "mctr-key", NULL, 0, &got) != PMIX_SUCCESS) return 15;
    printf("rank %u of %u got %s\n", me.rank, size, got->data.string);
    fflush(stdout);
    return PMIx_Finalize(NULL, 0) == PMIX_SUCCESS ? 0 : 16;
}
"""
PMIX_FLAGS = ["-I/usr/lib/x86_64-linux-gnu/pmix2/include", "-L/usr/lib/x86_64-linux-gnu/pmix2/lib",
              "-Wl,-rpath,/usr/lib/x86_64-linux-gnu/pmix2/lib", "-lpmix"]


@pytest.fixture(scope="module")
def pmix_program(slurm_base, slurm):
    if not os.path.exists("/usr/lib/x86_64-linux-gnu/pmix2/include/pmix.h"):
        pytest.skip("needs libpmix-dev (PMIx headers)")
    if "pmix" not in slurm.run(["srun", "--mpi=list"], check=False).stdout + \
            slurm.run(["srun", "--mpi=list"], check=False).stderr:
        pytest.skip("this Slurm has no mpi/pmix plugin")
    src, exe = os.path.join(slurm_base, "pmix-exchange.c"), os.path.join(slurm_base, "pmix-exchange")
    with open(src, "w") as f:
        f.write(PMIX_C)
    subprocess.run(["gcc", "-O1", "-o", exe, src, *PMIX_FLAGS], check=True, capture_output=True)
    os.chmod(exe, 0o755)
    return exe


def test_pmix_exchange_through_the_container(slurm, slurm_base, minictr_exe, pmix_program,
                                            job_dir):
    """srun --mpi=pmix -n 2: PMIx's variables, MCA names and the server's directory reach
    each rank's job-native container; a put, fence and get across ranks. The image holds the
    program, libpmix and its components (the client's side of the PMIx version contract)."""
    cache = os.path.join(slurm_base, "image-cache")
    pmix_dir = "/usr/lib/x86_64-linux-gnu/pmix2/lib/pmix"
    plugins = sorted(os.path.join(pmix_dir, f) for f in os.listdir(pmix_dir)
                     if f.endswith(".so"))
    image = images.build_glibc_image(cache, binaries=[pmix_program, "/bin/sh", *plugins])
    env = {"MINICTR_ROOT": os.path.join(slurm_base, "minictr", "store"),
           "MINICTR_STATE": os.path.join(slurm_base, "minictr", "state-pmix")}
    outside = slurm.run(["srun", "--mpi=pmix", "-n2", pmix_program], env=env, cwd=job_dir,
                        check=False)
    if outside.returncode != 0:
        pytest.skip(f"PMIx does not work here even without a container: "
                    f"{(outside.stderr.strip().splitlines() or ['?'])[-1]}")
    res = slurm.run(["srun", "--mpi=pmix", "-n2", minictr_exe, "run", "--rm", "--hpc",
                     image.ref, pmix_program], env=env, cwd=job_dir)
    got = sorted(ln for ln in res.stdout.splitlines() if ln.startswith("rank "))
    assert got == ["rank 0 of 2 got from-rank-1", "rank 1 of 2 got from-rank-0"], \
        res.stdout + res.stderr


BARRIER = """\
ls /dev | grep -E '^nvidia[0-9]+$' | tr '\\n' ' ' > gpus-$SLURM_STEP_ID.tmp
mv gpus-$SLURM_STEP_ID.tmp gpus-$SLURM_STEP_ID
i=0; while [ $(ls | grep -c '^gpus-[0-9]*$') -lt 2 ] && [ $i -lt 600 ]; do
  sleep 0.1; i=$((i+1)); done
echo "step $SLURM_STEP_ID gpus $SLURM_STEP_GPUS saw $(cat gpus-$SLURM_STEP_ID)peers $(ls | grep -c '^gpus-[0-9]*$')"
"""


def test_two_gpu_steps_at_once_each_sees_its_own_two(slurm, slurm_base, fake_gpus, minictr_exe,
                                                    hpc_images, job_dir):
    """salloc --gres=gpu:4, two steps of --gres=gpu:2 at the same time, each a job-native
    container with --gpus all: each sees exactly its step's two GPUs, the two sets disjoint."""
    with open(os.path.join(job_dir, "barrier.sh"), "w") as f:
        f.write(BARRIER)
    env = minictr_env(slurm_base, fake_gpus, "hpc-steps")
    step = (f"srun --exact -n1 --gres=gpu:2 {minictr_exe} run --rm --hpc --gpus all "
            f"{hpc_images['probe']} /bin/busybox sh barrier.sh")
    res = slurm.run(["salloc", "-n2", "--gres=gpu:4", "sh", "-c", f"{step} & {step}; wait"],
                    env=env, cwd=job_dir)
    lines = re.findall(r"step (\d+) gpus (\S+) saw ((?:nvidia\d+ )*)peers (\d+)", res.stdout)
    assert len(lines) == 2, res.stdout + res.stderr
    seen = []
    for _, allocated, saw, peers in lines:
        assert peers == "2", "the steps did not overlap"
        assert gpu_nodes(saw) == {f"nvidia{i}" for i in allocated.split(",")}
        seen.append(gpu_nodes(saw))
    assert len(seen[0]) == 2 and seen[0].isdisjoint(seen[1])


def test_gpus_all_in_a_job_without_gpus_injects_none_and_says_so(slurm, slurm_base, fake_gpus,
                                                                 minictr_exe, hpc_images):
    env = minictr_env(slurm_base, fake_gpus, "no-gres")
    res = slurm.run(["srun", minictr_exe, "run", "--rm", "--hpc", "--gpus", "all",
                     hpc_images["probe"], "/bin/busybox", "ls", "/dev"], env=env, check=False)
    assert res.returncode == 0, res.stderr
    assert gpu_nodes(res.stdout) == set()
    assert "GPU" in res.stderr
