"""Fixtures for the Slurm tier: a real single-node Slurm 22.05 (slurm_harness.py) whose node has
four fake GPUs as gres, backed by the fake NVIDIA driver of the GPU tier (tests/gpu/fakedriver.py)
so that minictr's GPU discovery and Slurm's gres see the same devices.

Everything the job user needs lives under one world-readable temp directory in /tmp (the checkout
may sit under /root, which that user cannot read): the configuration, the munge socket, the fake
driver, the OCI bundles and the compiled PMI2 program.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile

import pytest

from rootfs_tools import ToolMissing
from slurm_harness import (RUNTIME, SPEC_TOOL, ClusterError, SlurmCluster, make_bundle,
                           missing_tools, one_line)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "gpu"))
import fakedriver  # noqa: E402  (the GPU tier's fake driver, shared)
from probeimage import build_probe_rootfs, write_oci_layout  # noqa: E402

JOB_USER = "mctr-slurm"
PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PMI2_C = r"""
#include <stdio.h>
#include <pmi2.h>
/* each rank puts key-RANK, fences, then reads its right neighbour's key */
int main(void) {
    int spawned, size, rank, appnum, len;
    char jobid[256], key[64], val[PMI2_MAX_VALLEN];
    if (PMI2_Init(&spawned, &size, &rank, &appnum) != PMI2_SUCCESS) return 10;
    if (PMI2_Job_GetId(jobid, sizeof jobid) != PMI2_SUCCESS) return 11;
    snprintf(key, sizeof key, "key-%d", rank);
    snprintf(val, sizeof val, "from-rank-%d", rank);
    if (PMI2_KVS_Put(key, val) != PMI2_SUCCESS) return 12;
    if (PMI2_KVS_Fence() != PMI2_SUCCESS) return 13;
    snprintf(key, sizeof key, "key-%d", (rank + 1) % size);
    if (PMI2_KVS_Get(jobid, PMI2_ID_NULL, key, val, sizeof val, &len) != PMI2_SUCCESS) return 14;
    printf("rank %d of %d got %s=%s\n", rank, size, key, val);
    fflush(stdout);
    return PMI2_Finalize() == PMI2_SUCCESS ? 0 : 15;
}
"""


@pytest.fixture(scope="session")
def slurm_base():
    if os.geteuid() != 0:
        pytest.skip("needs root to run slurmctld and slurmd")
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    base = tempfile.mkdtemp(prefix="minictr-slurm-", dir="/tmp")
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def fake_gpus(slurm_base):
    """The fake driver with four GPUs (minors 0-3) under the shared directory."""
    if not shutil.which("gcc"):
        pytest.skip("needs gcc to build the fake driver libraries")
    return fakedriver.build(os.path.join(slurm_base, "gpu"), gpus=fakedriver.FOUR_GPUS)


@pytest.fixture(scope="session")
def slurm(slurm_base, fake_gpus):
    cluster = SlurmCluster(os.path.join(slurm_base, "cluster"), gpus=4,
                           gres_files=os.path.join(fake_gpus.dev_root, "dev", "nvidia[0-3]"))
    try:
        cluster.start()
    except ClusterError as err:
        cluster.stop()
        pytest.skip(f"Slurm did not come up: {one_line(str(err))}")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def job_user(slurm_base) -> pwd.struct_passwd:
    """An unprivileged user to submit jobs as (created once; kept, like the rootless tier's)."""
    try:
        return pwd.getpwnam(JOB_USER)
    except KeyError:
        pass
    if not shutil.which("useradd"):
        pytest.skip("needs useradd to create the job user")
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", JOB_USER], check=True, capture_output=True)
    return pwd.getpwnam(JOB_USER)


@pytest.fixture(scope="session")
def pmi2_program(slurm_base) -> str:
    if not os.path.exists("/usr/include/slurm/pmi2.h"):
        pytest.skip("needs libpmi2-0-dev (/usr/include/slurm/pmi2.h)")
    src = os.path.join(slurm_base, "pmi2-exchange.c")
    exe = os.path.join(slurm_base, "pmi2-exchange")
    with open(src, "w") as f:
        f.write(PMI2_C)
    subprocess.run(["gcc", "-O1", "-I/usr/include/slurm", "-o", exe, src, "-lpmi2"], check=True,
                   capture_output=True)
    os.chmod(exe, 0o755)
    return exe


@pytest.fixture(scope="session")
def bundles(slurm_base, job_user) -> dict[str, str]:
    """{"root": bundle from `runc spec`, "user": from `runc spec --rootless` as the job user}."""
    for tool in (RUNTIME, SPEC_TOOL):
        if not os.access(tool, os.X_OK):
            pytest.skip(f"needs {tool} (apt-get install runc)")
    try:
        return {"root": make_bundle(os.path.join(slurm_base, "bundle-root"), None),
                "user": make_bundle(os.path.join(slurm_base, "bundle-user"), job_user)}
    except ToolMissing as err:
        pytest.skip(f"{err}" + (f" ({err.hint})" if err.hint else ""))


@pytest.fixture(scope="session")
def probe_layout(slurm_base):
    """The GPU tier's probe image (glibc: GPU injection needs it) as an OCI layout: /probe
    dlopens libcuda.so.1 and opens the device paths it is given; busybox for the rest."""
    root = os.path.join(slurm_base, "probe")
    build_probe_rootfs(os.path.join(root, "rootfs"))
    return write_oci_layout(os.path.join(root, "rootfs"), os.path.join(root, "layout"))


@pytest.fixture(scope="session")
def minictr_runc(slurm_base, fake_gpus) -> str:
    """minictr-runc as oci.conf calls it, for root and for the job user: a world-readable venv
    made from /usr/bin/python3 (the checkout's .venv may sit where the job user cannot read),
    behind a script that sets XDG_CONFIG_HOME to a directory holding config.toml with the fake
    driver's roots (slurmstepd gives the runtime slurmd's environment, not the test's)."""
    if not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs /usr/bin/python3 (Debian's python3) for a venv the job user can read")
    venv = os.path.join(slurm_base, "venv")
    subprocess.run(["/usr/bin/python3", "-m", "venv", venv], check=True, capture_output=True)
    res = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", PROJECT],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"installing minictr for the job user failed:\n{res.stderr[-2000:]}")
    config = os.path.join(slurm_base, "xdg-config")
    os.makedirs(os.path.join(config, "minictr"))
    with open(os.path.join(config, "minictr", "config.toml"), "w") as f:
        f.write(fake_gpus.config_toml())
    script = os.path.join(slurm_base, "minictr-runc")
    with open(script, "w") as f:
        f.write(f"#!/bin/sh\nXDG_CONFIG_HOME={config} exec {venv}/bin/minictr-runc \"$@\"\n")
    subprocess.run(["chmod", "-R", "a+rX", venv, config], check=True)
    os.chmod(script, 0o755)
    return script


@pytest.fixture(scope="session")
def gpu_bundles(slurm_base, job_user) -> dict[str, str]:
    """Bundles around the GPU tier's probe image (glibc, /probe, busybox): "root" from
    `runc spec`, "user" from `runc spec --rootless` with a rootfs the job user owns (an
    unprivileged runtime makes the mount points of the injected files in it)."""
    if not shutil.which("gcc"):
        pytest.skip("needs gcc to build the probe")
    if not os.access(SPEC_TOOL, os.X_OK):
        pytest.skip(f"needs {SPEC_TOOL} (apt-get install runc)")
    out = {}
    for who in ("root", "user"):
        path = os.path.join(slurm_base, f"gpu-bundle-{who}")
        os.makedirs(path)
        os.chmod(path, 0o755)
        build_probe_rootfs(os.path.join(path, "rootfs"))
        if who == "root":
            subprocess.run([SPEC_TOOL, "spec", "--bundle", path], check=True,
                           capture_output=True)
        else:
            subprocess.run(["chown", "-R", f"{job_user.pw_uid}:{job_user.pw_gid}", path],
                           check=True)
            subprocess.run(["runuser", "-u", job_user.pw_name, "--", SPEC_TOOL, "spec",
                            "--rootless", "--bundle", path], check=True, capture_output=True)
        os.chmod(os.path.join(path, "config.json"), 0o644)
        out[who] = path
    return out
