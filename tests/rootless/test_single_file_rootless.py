"""Rootless tier: single-file images through squashfuse_ll in the container's user namespace,
and job-native mode (--hpc: you as yourself, no /etc/subuid needed)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests import images

pytestmark = pytest.mark.rootless


@pytest.fixture(scope="module")
def shared_images(shared_dir, rootless_venv):
    """busybox as .sqsh and .sif in a directory the users can read but not write (a read-only
    shared filesystem, as far as they are concerned), exported by root."""
    for tool, package in (("mksquashfs", "squashfs-tools"), ("squashfuse_ll", "squashfuse")):
        if not shutil.which(tool):
            pytest.skip(f"needs {tool} (apt-get install {package})")
    out = os.path.join(shared_dir, "single-file")
    os.makedirs(out, exist_ok=True)
    cache = os.path.join(shared_dir, "images")
    store = os.path.join(shared_dir, "export-store")
    exe = os.path.join(rootless_venv, "bin", "minictr")
    busybox = images.build_busybox(cache)
    subprocess.run([exe, "load", "--root", store, "--tag", "bb:t", busybox.ref], check=True,
                   capture_output=True)
    sqsh = os.path.join(out, "busybox.sqsh")
    if not os.path.exists(sqsh):
        subprocess.run([exe, "export", "--root", store, "bb:t", "-o", sqsh], check=True,
                       capture_output=True)
    sif = os.path.join(out, "busybox.sif")
    if not os.path.exists(sif):
        images.make_sif(images.build_siftool(cache), sqsh, sif)
    for path in (sqsh, sif):
        os.chmod(path, 0o444)
    os.chmod(out, 0o555)
    return {"sqsh": sqsh, "sif": sif}


def fuse_daemons(user: str) -> str:
    """The user's live squashfuse_ll processes, once the SIGKILL sent when the container's
    first process exited has landed (a bounded poll). A killed daemon whose parent died is
    reaped by init (without a PID namespace, --hpc): a zombie is not a live daemon."""
    import time

    for _ in range(200):
        out = subprocess.run(["ps", "-u", user, "-o", "stat=,comm="], capture_output=True,
                             text=True).stdout
        live = [ln for ln in out.splitlines() if "squashfuse" in ln and not ln.startswith("Z")]
        if not live:
            return ""
        time.sleep(0.05)
    return "\n".join(live)


@pytest.mark.parametrize("kind", ["sqsh", "sif"])
def test_single_file_image_rootless(user_mc, shared_images, kind):
    path = shared_images[kind]
    res = user_mc("run", "--rm", path, "sh", "-c",
                  "id -u; echo x > /tmp/w && cat /tmp/w; ps -o comm | grep -c squashfuse_ll")
    assert res.returncode == 0, res.stderr
    uid, written, fuse = res.stdout.split()
    assert (uid, written, fuse) == ("0", "x", "1")       # the daemon lives in the container
    assert user_mc("run", "--rm", path, "sh", "-c", "exit 4").returncode == 4
    assert fuse_daemons(user_mc.pw.pw_name) == ""        # unmounted with the container


def test_read_only_root_on_a_single_file_image(user_mc, shared_images):
    res = user_mc("run", "--rm", "--read-only", shared_images["sqsh"], "touch", "/x")
    assert res.returncode != 0


def test_job_native_rootless_is_you(user_mc, shared_images):
    """--hpc without root: your uid and gid inside (no subordinate ids used), a passwd entry,
    HOME and the current directory bound, files you make there are yours."""
    work = os.path.join(user_mc.home, "job")
    os.makedirs(work, exist_ok=True)
    os.chown(work, user_mc.pw.pw_uid, user_mc.pw.pw_gid)
    env = {**user_mc.env(), "SLURM_JOB_ID": "5", "LD_PRELOAD": "/host/libx.so"}
    script = ('id -u; id -g; id -un; echo "home=$HOME job=$SLURM_JOB_ID pre=$LD_PRELOAD"; pwd; '
              'echo made > made; cat /proc/self/uid_map')
    res = subprocess.run(user_mc.cmdline("run", "--rm", "--hpc", shared_images["sqsh"], "sh",
                                         "-c", script),
                         capture_output=True, text=True, env={**env, "HOME": user_mc.home},
                         cwd=work, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[:5] == [str(user_mc.pw.pw_uid), str(user_mc.pw.pw_gid), user_mc.pw.pw_name,
                         f"home={user_mc.pw.pw_dir} job=5 pre=", work]  # runuser sets HOME
    assert lines[5].split()[:3] == [str(user_mc.pw.pw_uid), "0", "1"]   # nested over your root
    st = os.stat(os.path.join(work, "made"))
    assert (st.st_uid, st.st_gid) == (user_mc.pw.pw_uid, user_mc.pw.pw_gid)
    assert fuse_daemons(user_mc.pw.pw_name) == ""


def test_job_native_rootless_from_the_store(user_mc):
    res = subprocess.run(user_mc.cmdline("run", "--rm", "--hpc", "busybox:test", "sh", "-c",
                                         "id -u; pwd"),
                         capture_output=True, text=True, env=user_mc.env(), cwd=user_mc.home,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(user_mc.pw.pw_uid), user_mc.home]
