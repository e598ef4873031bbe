"""`minictr pull IMAGE -o FILE.sqsh` (docs/hpc.md): the pulled image also written as one
squashfs file that `minictr run FILE.sqsh` runs; the file appears complete or not at all, so
a failed or killed pull leaves no FILE for a job to pick up."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest

from registry_harness import FaultProxy, skopeo_push

from tests import images

pytestmark = [pytest.mark.registry, pytest.mark.root]


@pytest.fixture
def busybox_registry(empty_registry, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root (run FILE.sqsh mounts it with the kernel's squashfs)")
    if not shutil.which("mksquashfs"):
        pytest.skip("needs mksquashfs (apt-get install squashfs-tools)")
    path, tag = images.build_busybox(tmp_path_factory.mktemp("images")).ref[4:].rsplit(":", 1)
    skopeo_push(path, tag, f"{empty_registry.host}/test/busybox:v1")
    return empty_registry


def _mc(minictr_exe, tmp_path, *args, **kw):
    cmd = [minictr_exe, args[0], "--root", str(tmp_path / "store"), "--state",
           str(tmp_path / "state"), *args[1:]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def test_pull_output_writes_a_file_that_runs(busybox_registry, minictr_exe, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    image = out / "busybox.sqsh"
    res = _mc(minictr_exe, tmp_path, "pull", "-q", "--tls-verify=false",
              f"{busybox_registry.host}/test/busybox:v1", "-o", str(image))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(image)
    assert os.listdir(out) == ["busybox.sqsh"]          # no temporary left beside it
    with open(image, "rb") as f:
        assert f.read(4) == b"hsqs"                       # a squashfs superblock
    res = _mc(minictr_exe, tmp_path, "run", "--rm", str(image), "sh", "-c",
              "echo hi from $(cat /.minictr/image.json | head -c 1)")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hi from {\n"


def test_a_failed_pull_leaves_no_file(busybox_registry, minictr_exe, tmp_path):
    proxy = FaultProxy(busybox_registry.port)
    try:
        proxy.cut_after, proxy.cuts = 1000, 1000          # every blob GET cut short
        out = tmp_path / "out"
        out.mkdir()
        res = _mc(minictr_exe, tmp_path, "pull", "-q", "--tls-verify=false",
                  f"{proxy.host}/test/busybox:v1", "-o", str(out / "busybox.sqsh"))
        assert res.returncode != 0
        assert os.listdir(out) == []
    finally:
        proxy.close()


def test_a_killed_pull_leaves_no_file(busybox_registry, minictr_exe, tmp_path):
    proxy = FaultProxy(busybox_registry.port)
    try:
        proxy.stall_after = 100                           # the first blob GET hangs
        out = tmp_path / "out"
        out.mkdir()
        cmd = [minictr_exe, "pull", "--root", str(tmp_path / "store"), "--state",
               str(tmp_path / "state"), "-q", "--tls-verify=false",
               f"{proxy.host}/test/busybox:v1", "-o", str(out / "busybox.sqsh")]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert proxy.stalled.wait(60)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
        assert os.listdir(out) == []
    finally:
        proxy.close()
