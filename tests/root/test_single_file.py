"""Root tier: single-file images (minictr export, enroot's .sqsh, Apptainer's .sif made by the
reference siftool) run in place, and job-native mode (--hpc) as root."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading

import pytest

from tests.root.test_run import _normalised

from tests import images

pytestmark = pytest.mark.root


def need(tool: str, package: str) -> None:
    if not shutil.which(tool):
        pytest.skip(f"needs {tool} (apt-get install {package})")


@pytest.fixture(scope="module")
def configured(mc, image_cache, tmp_path_factory):
    """busybox with every config field set, loaded and exported to a .sqsh."""
    need("mksquashfs", "squashfs-tools")
    from rootfs_tools import build, rootfs
    from rootfs_tools.oci import ImageConfig

    base = tmp_path_factory.mktemp("configured")
    tree = base / "tree"
    rootfs.busybox_tree(str(tree))
    (tree / "work").mkdir()
    config = ImageConfig(entrypoint=["/bin/sh", "-c", 'echo "entry $*"; id -u; pwd; echo "$FOO"',
                                     "sh"], cmd=["from-cmd"], working_dir="/work", user="app",
                         env=["PATH=/bin:/usr/bin", "FOO=bar"])
    build.from_dir(str(base / "layout"), str(tree), config, tag="latest")
    mc("load", "--tag", "configured:test", f"oci:{base / 'layout'}:latest", check=True)
    out = base / "configured.sqsh"
    res = mc("export", "configured:test", "-o", str(out), check=True)
    assert res.stdout.strip() == str(out)
    return out


@pytest.fixture(scope="module")
def busybox_sqsh(mc, tmp_path_factory):
    need("mksquashfs", "squashfs-tools")
    out = tmp_path_factory.mktemp("bbsq") / "busybox.sqsh"
    mc("export", "busybox:test", "-o", str(out), check=True)
    return out


def loops_of(path) -> str:
    return subprocess.run(["losetup", "-j", str(path)], capture_output=True, text=True).stdout


def test_export_carries_the_image_config(mc, configured):
    res = mc("run", "--rm", str(configured), check=True)
    assert res.stdout.split("\n")[:4] == ["entry from-cmd", "1000", "/work", "bar"]
    res = mc("run", "--rm", str(configured), "given", check=True)
    assert res.stdout.startswith("entry given\n")


def test_sqsh_runs_in_place_with_a_throwaway_writable_layer(mc, busybox_sqsh):
    before = os.stat(busybox_sqsh)
    res = mc("run", "--rm", str(busybox_sqsh), "sh", "-c",
             "echo hi > /made && cat /made && grep ' / ' /proc/self/mountinfo", check=True)
    assert res.stdout.startswith("hi\n") and " - overlay " in res.stdout
    again = mc("run", "--rm", str(busybox_sqsh), "cat", "/made")
    assert again.returncode == 1                          # the write went with the container
    assert os.stat(busybox_sqsh).st_mtime == before.st_mtime
    ro = mc("run", "--rm", "--read-only", str(busybox_sqsh), "touch", "/x")
    assert ro.returncode != 0 and "Read-only file system" in ro.stderr + ro.stdout
    assert loops_of(busybox_sqsh) == ""                   # autoclear: no loop device left
    with open("/proc/self/mountinfo") as f:
        assert mc.state not in f.read()


def test_exit_status_and_missing_command(mc, busybox_sqsh):
    assert mc("run", "--rm", str(busybox_sqsh), "sh", "-c", "exit 9").returncode == 9
    assert mc("run", "--rm", str(busybox_sqsh), "/nope").returncode == 127


def test_enroot_sqsh_conventions(mc, tmp_path):
    """enroot import's layout: /etc/rc is the entrypoint (run by sh with the command as its
    arguments), /etc/environment the image's ENV."""
    need("mksquashfs", "squashfs-tools")
    from rootfs_tools import rootfs

    tree = tmp_path / "tree"
    rootfs.busybox_tree(str(tree))
    (tree / "etc" / "rc").write_text(
        'cd "/tmp" || exit 1\nif [ $# -gt 0 ]; then exec "$@"; else exec /bin/sh; fi\n')
    (tree / "etc" / "environment").write_text('PATH=/bin:/usr/bin\nGREETING="hello enroot"\n')
    out = tmp_path / "enroot.sqsh"
    subprocess.run(["mksquashfs", str(tree), str(out), "-comp", "lzo", "-noD", "-noappend",
                    "-quiet", "-no-progress"], check=True, capture_output=True)
    res = mc("run", "--rm", str(out), "sh", "-c", 'echo "$GREETING in $(pwd)"', check=True)
    assert res.stdout == "hello enroot in /tmp\n"


def test_sif_made_by_siftool(mc, busybox_sqsh, image_cache, tmp_path):
    siftool = images.build_siftool(image_cache)
    sif = images.make_sif(siftool, str(busybox_sqsh), str(tmp_path / "busybox.sif"))
    listing = subprocess.run([str(siftool), "list", sif], capture_output=True, text=True).stdout
    assert "Squashfs/*System" in listing
    res = mc("run", "--rm", sif, "sh", "-c", "echo from sif; cat /.minictr/image.json",
             check=True)
    assert res.stdout.startswith("from sif\n{")
    assert loops_of(sif) == ""


def test_apptainer_sif_conventions(mc, image_cache, tmp_path):
    """A SIF laid out as Apptainer builds them (no minictr config): the command runs through
    /.singularity.d/actions/exec, which sources the image's environment scripts; with no
    command, the runscript runs."""
    need("mksquashfs", "squashfs-tools")
    from rootfs_tools import rootfs

    tree = tmp_path / "tree"
    rootfs.busybox_tree(str(tree))
    sd = tree / ".singularity.d"
    (sd / "env").mkdir(parents=True)
    (sd / "actions").mkdir()
    (sd / "env" / "90-environment.sh").write_text('export FROM_IMAGE="apptainer env"\n')
    (sd / "actions" / "exec").write_text('#!/bin/sh\nfor s in /.singularity.d/env/*.sh; do '
                                         '. "$s"; done\nexec "$@"\n')
    (sd / "runscript").write_text('#!/bin/sh\necho "runscript: $FROM_IMAGE"\n')
    for f in (sd / "actions" / "exec", sd / "runscript"):
        f.chmod(0o755)
    sqsh = tmp_path / "app.sqsh"
    subprocess.run(["mksquashfs", str(tree), str(sqsh), "-noappend", "-quiet", "-no-progress"],
                   check=True, capture_output=True)
    sif = images.make_sif(images.build_siftool(image_cache), str(sqsh), str(tmp_path / "app.sif"))
    assert mc("run", "--rm", sif, check=True).stdout == "runscript: apptainer env\n"
    res = mc("run", "--rm", sif, "sh", "-c", 'echo "exec: $FROM_IMAGE"', check=True)
    assert res.stdout == "exec: apptainer env\n"


def test_from_a_read_only_shared_directory_many_at_once(mc, busybox_sqsh, tmp_path):
    """The file on a read-only mount (as a shared filesystem exported read-only), used by
    several containers at the same time."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shutil.copy(busybox_sqsh, shared / "img.sqsh")
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "--bind", str(shared), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        results = []

        def one(i):
            results.append(mc("run", "--rm", str(ro / "img.sqsh"), "sh", "-c",
                              f"sleep 0.2; echo {i}"))
        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r.stdout.strip() for r in results) == [str(i) for i in range(6)], \
            [r.stderr for r in results]
        assert loops_of(ro / "img.sqsh") == ""
    finally:
        subprocess.run(["umount", str(ro)], check=False)


@pytest.mark.parametrize("options", [(), ("--hpc",), ("--read-only",)])
def test_dry_run_of_a_single_file_image_shows_the_real_steps(mc, busybox_sqsh, options):
    dry = mc("run", "--rm", "--dry-run", "--explain", *options, str(busybox_sqsh), "true")
    real = mc("run", "--rm", "--explain", *options, str(busybox_sqsh), "true")
    assert dry.returncode == 0 and real.returncode == 0, (dry.stderr, real.stderr)
    assert _normalised(dry.stderr, mc.state) == _normalised(real.stderr, mc.state)


def test_job_native_as_root(mc, tmp_path):
    """--hpc as root: the host's hostname and PID namespace, the environment, the cwd."""
    work = tmp_path / "job"
    work.mkdir()
    env = {**os.environ, "SLURM_JOB_ID": "77", "LD_LIBRARY_PATH": "/host/lib"}
    res = mc("run", "--rm", "--hpc", "busybox:test", "sh", "-c",
             f"hostname; pwd; echo job=$SLURM_JOB_ID ld=$LD_LIBRARY_PATH; "
             f"test -d /proc/{os.getpid()} && echo sees-host-pids; touch made",
             cwd=str(work), env=env, check=True)
    assert res.stdout.split("\n")[:4] == [socket.gethostname(), str(work), "job=77 ld=",
                                          "sees-host-pids"]
    assert (work / "made").exists()
    default = mc("run", "--rm", "busybox:test", "sh", "-c", f"test -d /proc/{os.getpid()}")
    assert default.returncode == 1                       # without --hpc: its own PID namespace


def test_hpc_default_from_the_config_file_and_no_hpc(mc, tmp_path):
    conf = tmp_path / "config.toml"
    conf.write_text("[run]\nhpc = true\n")
    env = {**os.environ, "MINICTR_CONFIG": str(conf)}
    pid = f"/proc/{os.getpid()}"
    assert mc("run", "--rm", "busybox:test", "test", "-d", pid, env=env).returncode == 0
    assert mc("run", "--rm", "--no-hpc", "busybox:test", "test", "-d", pid,
              env=env).returncode == 1
    conf.write_text("[run]\nhpc = 'yes'\n")
    bad = mc("run", "--rm", "busybox:test", "true", env=env)
    assert bad.returncode == 125 and "must be a bool" in bad.stderr
