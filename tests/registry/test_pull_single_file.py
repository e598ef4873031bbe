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


# The write itself (api.export): mksquashfs writes a hidden temporary beside FILE, which is
# renamed over FILE once complete. A fake mksquashfs first on PATH stands in for one that fails
# or is killed half-way: it writes the start of an image (a squashfs superblock's magic) to the
# path it was given, says so in `ready` (its pid), then exits 1 or sleeps.

FAKE_MKSQUASHFS = """#!/bin/sh
{{ printf hsqs; head -c 65536 /dev/zero; }} > "$2"
echo $$ > {ready}.tmp && mv {ready}.tmp {ready}
{then}
"""


def _fake_mksquashfs(tmp_path, then: str):
    """A PATH with the fake first, and the file it writes its pid to once it has written."""
    fakebin = tmp_path / "fakebin"
    fakebin.mkdir()
    ready = tmp_path / "ready"
    tool = fakebin / "mksquashfs"
    tool.write_text(FAKE_MKSQUASHFS.format(ready=ready, then=then))
    tool.chmod(0o755)
    return dict(os.environ, PATH=f"{fakebin}:{os.environ['PATH']}"), ready


def _pull_cmd(minictr_exe, tmp_path, host, output):
    return [minictr_exe, "pull", "--root", str(tmp_path / "store"), "--state",
            str(tmp_path / "state"), "-q", "--tls-verify=false", f"{host}/test/busybox:v1",
            "-o", str(output)]


def _wait_for(path, proc, seconds=60.0):
    import time

    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, "minictr exited before mksquashfs wrote"
        assert time.monotonic() < deadline, "mksquashfs never wrote"
        time.sleep(0.05)
    return int(path.read_text())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_failed_write_leaves_no_file(busybox_registry, minictr_exe, tmp_path):
    env, ready = _fake_mksquashfs(tmp_path, "exit 1")
    out = tmp_path / "out"
    out.mkdir()
    res = subprocess.run(_pull_cmd(minictr_exe, tmp_path, busybox_registry.host,
                                   out / "busybox.sqsh"),
                         capture_output=True, text=True, timeout=120, env=env)
    assert ready.exists()                               # it did write part of an image
    assert res.returncode != 0
    assert "mksquashfs exited 1" in res.stderr
    assert os.listdir(out) == []                        # no FILE, and no temporary


def test_a_failed_write_keeps_the_existing_file(busybox_registry, minictr_exe, tmp_path):
    """An existing FILE is replaced only by a complete image (rename), as `docker save -o`
    replaces its file: a failed pull leaves the old one as it was."""
    out = tmp_path / "out"
    out.mkdir()
    image = out / "busybox.sqsh"
    image.write_bytes(b"the old image")
    env, ready = _fake_mksquashfs(tmp_path, "exit 1")
    res = subprocess.run(_pull_cmd(minictr_exe, tmp_path, busybox_registry.host, image),
                         capture_output=True, text=True, timeout=120, env=env)
    assert ready.exists() and res.returncode != 0
    assert os.listdir(out) == ["busybox.sqsh"]
    assert image.read_bytes() == b"the old image"
    res = _mc(minictr_exe, tmp_path, "pull", "-q", "--tls-verify=false",
              f"{busybox_registry.host}/test/busybox:v1", "-o", str(image))
    assert res.returncode == 0, res.stderr
    assert os.listdir(out) == ["busybox.sqsh"]
    with open(image, "rb") as f:
        assert f.read(4) == b"hsqs"                     # replaced by the complete one


def test_an_interrupted_write_leaves_no_file_and_no_writer(busybox_registry, minictr_exe,
                                                            tmp_path):
    """SIGINT to minictr alone (not its process group): it stops mksquashfs before removing
    the temporary, so no writer outlives it to create the file again."""
    env, ready = _fake_mksquashfs(tmp_path, "exec sleep 60")
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(_pull_cmd(minictr_exe, tmp_path, busybox_registry.host,
                                      out / "busybox.sqsh"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    writer = None
    try:
        writer = _wait_for(ready, proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
        assert not _alive(writer)
        assert os.listdir(out) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if writer and _alive(writer):
            os.kill(writer, signal.SIGKILL)


def test_a_write_killed_half_way_leaves_only_a_temporary_the_next_pull_removes(
        busybox_registry, minictr_exe, tmp_path):
    """SIGKILL to minictr's process group while mksquashfs writes: never FILE, only the hidden
    ".FILE.PID.HEX.partial" (docs/hpc.md), which the next pull -o FILE removes, as it does not
    one that a live pull is writing (its lock is held)."""
    env, ready = _fake_mksquashfs(tmp_path, "exec sleep 60")
    out = tmp_path / "out"
    out.mkdir()
    image = out / "busybox.sqsh"
    cmd = _pull_cmd(minictr_exe, tmp_path, busybox_registry.host, image)
    killed = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=env, start_new_session=True)
    try:
        _wait_for(ready, killed)
        os.killpg(killed.pid, signal.SIGKILL)
    finally:
        killed.wait()
    left = os.listdir(out)
    assert "busybox.sqsh" not in left
    assert len(left) == 1 and left[0].startswith(".busybox.sqsh.") \
        and left[0].endswith(".partial")
    stale = left[0]

    # A live pull's temporary is kept: one writing now, while another pull of FILE completes.
    ready.unlink()
    live = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    try:
        _wait_for(ready, live)
        writing = set(os.listdir(out)) - {stale}
        assert len(writing) == 1
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # real one
        assert res.returncode == 0, res.stderr
        assert set(os.listdir(out)) == {"busybox.sqsh"} | writing   # the stale one is gone
    finally:
        os.killpg(live.pid, signal.SIGKILL)
        live.wait()
    with open(image, "rb") as f:
        assert f.read(4) == b"hsqs"
    res = _mc(minictr_exe, tmp_path, "run", "--rm", str(image), "true")
    assert res.returncode == 0, res.stderr
