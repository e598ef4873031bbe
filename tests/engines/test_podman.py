"""podman 4 (podman --runtime PATH, through conmon) runs containers with the runtime under test."""
from __future__ import annotations

import time

import pytest

from engines_harness import IMAGE, run_in_pty

pytestmark = [pytest.mark.root, pytest.mark.engines]


def _run(podman, runtime, *cmd, flags=(), **kw):
    return podman("run", "--rm", *podman.run_flags(), *flags, IMAGE, *cmd, runtime=runtime.path,
                  **kw)


def test_podman_run_prints_and_exits_zero(podman, runtime):
    res = _run(podman, runtime, "echo", "hi")
    assert (res.returncode, res.stdout) == (0, "hi\n"), res.stderr


def test_podman_exit_status_comes_back(podman, runtime):
    res = _run(podman, runtime, "sh", "-c", "exit 7")
    assert res.returncode == 7, res.stderr


def test_podman_detached_logs_exec_stop(podman, runtime):
    res = podman("run", "-d", *podman.run_flags(), IMAGE, "sh", "-c",
                 'echo started; trap "exit 3" TERM; while true; do sleep 0.1; done',
                 runtime=runtime.path, check=True)
    cid = res.stdout.strip()
    try:
        deadline = time.monotonic() + 15
        while "started" not in podman("logs", cid).stdout:
            assert time.monotonic() < deadline, podman("logs", cid).stderr
            time.sleep(0.1)
        res = podman("exec", cid, "echo", "exec-ok")
        assert (res.returncode, res.stdout) == (0, "exec-ok\n"), res.stderr
        podman("stop", "-t", "10", cid, check=True)
        assert podman("inspect", "-f", "{{.State.ExitCode}}", cid).stdout.strip() == "3"
    finally:
        podman("rm", "-f", cid)


def test_podman_run_with_a_terminal(podman, runtime):
    res = run_in_pty(podman.argv("run", "--rm", "-it", *podman.run_flags(), IMAGE, "sh", "-c",
                                 "tty; read line; echo got-$line; exit 4", runtime=runtime.path),
                     env=podman.env, steps=(("/dev/pts/", "ping\n"),))
    assert "/dev/pts/" in res.output and "got-ping" in res.output, res.output
    assert res.status == 4, res.output
