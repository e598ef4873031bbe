"""containerd 1.6 (ctr run --runc-binary) runs containers with the runtime under test."""
from __future__ import annotations

import time
import uuid

import pytest

from engines_harness import run, run_in_pty

pytestmark = [pytest.mark.root, pytest.mark.engines]


def _cid(runtime) -> str:
    return f"{runtime.key}-{uuid.uuid4().hex[:10]}"


def test_ctr_run_prints_and_exits_zero(containerd, runtime):
    res = run(containerd.run_argv(runtime, _cid(runtime), "echo", "hi", flags=("--rm",)))
    assert (res.returncode, res.stdout) == (0, "hi\n"), res.stderr


def test_ctr_exit_status_comes_back(containerd, runtime):
    res = run(containerd.run_argv(runtime, _cid(runtime), "sh", "-c", "exit 7", flags=("--rm",)))
    assert res.returncode == 7, res.stderr


def test_ctr_run_with_a_terminal(containerd, runtime):
    res = run_in_pty(containerd.run_argv(runtime, _cid(runtime), "sh", "-c",
                                         "tty; read line; echo got-$line; exit 4",
                                         flags=("--rm", "-t")),
                     steps=(("/dev/pts/", "ping\n"),))
    assert "/dev/pts/" in res.output and "got-ping" in res.output, res.output
    assert res.status == 4, res.output


def test_ctr_detached_exec_kill(containerd, runtime):
    cid = _cid(runtime)
    run(containerd.run_argv(runtime, cid, "sleep", "100", flags=("-d",)), check=True)
    try:
        res = containerd.ctr("tasks", "exec", "--exec-id", "e1", "--fifo-dir",
                             str(containerd.fifo_dir), cid, "echo", "exec-ok")
        assert (res.returncode, res.stdout) == (0, "exec-ok\n"), res.stderr
        res = containerd.ctr("tasks", "exec", "--exec-id", "e2", "--fifo-dir",
                             str(containerd.fifo_dir), cid, "sh", "-c", "exit 5")
        assert res.returncode == 5, res.stderr
        containerd.ctr("tasks", "kill", "-s", "KILL", cid, check=True)
        deadline = time.monotonic() + 15
        while "STOPPED" not in containerd.ctr("tasks", "ls").stdout:
            assert time.monotonic() < deadline, "the task did not stop after SIGKILL"
            time.sleep(0.1)
        res = containerd.ctr("tasks", "rm", cid)
        assert res.returncode == 0, res.stderr
    finally:
        containerd.ctr("tasks", "rm", "-f", cid)
        containerd.ctr("containers", "rm", cid)
