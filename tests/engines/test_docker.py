"""dockerd 20.10 runs containers with the runtime under test (--add-runtime, and daemon.json)."""
from __future__ import annotations

import time

import pytest

from engines_harness import IMAGE, run_in_pty

pytestmark = [pytest.mark.root, pytest.mark.engines]

LOOP = 'echo started; trap "echo term; exit 3" TERM; trap "echo usr1" USR1; ' \
       'while true; do sleep 0.1; done'


def _run(dockerd, runtime, *cmd, flags=(), **kw):
    network = [] if any(f.startswith("--network") for f in flags) else ["--network", "none"]
    return dockerd.docker("run", "--rm", "--runtime", runtime.docker_name, *network, *flags,
                          IMAGE, *cmd, **kw)


def _start(dockerd, runtime, *cmd) -> str:
    res = dockerd.docker("run", "-d", "--runtime", runtime.docker_name, "--network", "none",
                         IMAGE, *cmd, check=True)
    return res.stdout.strip()


def _wait_logs(dockerd, cid, text, timeout=15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        logs = dockerd.docker("logs", cid).stdout
        if text in logs or time.monotonic() > deadline:
            return logs
        time.sleep(0.1)


def test_run_prints_and_exits_zero(dockerd, runtime):
    res = _run(dockerd, runtime, "echo", "hi")
    assert (res.returncode, res.stdout) == (0, "hi\n"), res.stderr


def test_exit_status_comes_back(dockerd, runtime):
    res = _run(dockerd, runtime, "sh", "-c", "exit 7")
    assert res.returncode == 7, res.stderr


def test_stdin_reaches_the_container(dockerd, runtime):
    res = _run(dockerd, runtime, "cat", flags=("-i",), input="through stdin\n")
    assert (res.returncode, res.stdout) == (0, "through stdin\n"), res.stderr


def test_runtime_errors_become_docker_exit_codes(dockerd, runtime):
    """dockerd reads the runtime's error (log.json, through the shim) and maps its text:
    "no such file or directory" -> 127, "permission denied" -> 126."""
    res = _run(dockerd, runtime, "/nonexistent")
    assert res.returncode == 127, res.stderr
    assert "no such file or directory" in res.stderr
    res = _run(dockerd, runtime, "/etc/passwd")
    assert res.returncode == 126, res.stderr
    assert "permission denied" in res.stderr


@pytest.mark.parametrize("cgroupns", ["host", "private"])
def test_the_container_sees_only_its_own_cgroups(dockerd, runtime, cgroupns):
    """docker's spec mounts cgroups at /sys/fs/cgroup (read-only): the container sees its own
    cgroup in each hierarchy, with its --pids-limit, and nothing below it, never the host's
    trees with every other container's cgroups (docs/security.md)."""
    script = ('for v in /sys/fs/cgroup /sys/fs/cgroup/*; do [ -L $v ] && continue; '
              'for c in $v/*/; do [ -e $v/cgroup.procs ] && [ -d $c ] && echo "below $c"; done; '
              'done; cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max 2>/dev/null; exit 0')
    res = _run(dockerd, runtime, "sh", "-c", script,
               flags=("--pids-limit", "33", "--cgroupns", cgroupns))
    assert res.returncode == 0, res.stderr
    assert "below" not in res.stdout and res.stdout.split()[-1:] == ["33"], res.stdout


def test_detached_logs_exec_stop(dockerd, runtime):
    cid = _start(dockerd, runtime, "sh", "-c", LOOP)
    try:
        assert "started" in _wait_logs(dockerd, cid, "started")
        inspect = dockerd.docker("inspect", "-f", "{{.HostConfig.Runtime}} {{.State.Running}}",
                                 cid, check=True)
        assert inspect.stdout.split() == [runtime.docker_name, "true"]
        res = dockerd.docker("exec", cid, "echo", "exec-ok")
        assert (res.returncode, res.stdout) == (0, "exec-ok\n"), res.stderr
        assert dockerd.docker("exec", cid, "sh", "-c", "exit 5").returncode == 5
        res = dockerd.docker("exec", "-i", cid, "cat", input="exec stdin\n")
        assert res.stdout == "exec stdin\n", res.stderr
        dockerd.docker("kill", "-s", "USR1", cid, check=True)
        assert "usr1" in _wait_logs(dockerd, cid, "usr1")
        dockerd.docker("stop", "-t", "10", cid, check=True)
        assert dockerd.docker("wait", cid).stdout.strip() == "3"
        assert "term" in dockerd.docker("logs", cid).stdout
    finally:
        dockerd.docker("rm", "-f", cid)


def test_kill(dockerd, runtime):
    cid = _start(dockerd, runtime, "sleep", "100")
    try:
        dockerd.docker("kill", cid, check=True)
        assert dockerd.docker("wait", cid).stdout.strip() == "137"
    finally:
        dockerd.docker("rm", "-f", cid)


def test_run_with_a_terminal(dockerd, runtime):
    """docker run -it: the runtime hands the pty master to the shim over --console-socket."""
    res = run_in_pty(["docker", "run", "--rm", "-it", "--runtime", runtime.docker_name,
                      "--network", "none", IMAGE, "sh", "-c",
                      "tty; read line; echo got-$line; exit 4"],
                     env=dockerd.env, steps=(("/dev/pts/", "ping\n"),))
    assert "/dev/pts/" in res.output and "got-ping" in res.output, res.output
    assert res.status == 4, res.output


def test_exec_with_a_terminal(dockerd, runtime):
    cid = _start(dockerd, runtime, "sleep", "100")
    try:
        res = run_in_pty(["docker", "exec", "-it", cid, "sh", "-c", "tty; exit 6"],
                         env=dockerd.env)
        assert "/dev/pts/" in res.output and res.status == 6, res.output
    finally:
        dockerd.docker("rm", "-f", cid)


def test_host_network_and_joined_namespaces(dockerd, runtime):
    """config.json namespaces with paths: --network host gives EXEC_ROOT/netns/default,
    --pid/--network container:ID give /proc/PID/ns/*."""
    res = _run(dockerd, runtime, "echo", "host", flags=("--network", "host"))
    assert (res.returncode, res.stdout) == (0, "host\n"), res.stderr
    cid = _start(dockerd, runtime, "sleep", "100")
    try:
        res = _run(dockerd, runtime, "ps", flags=(f"--network=container:{cid}",
                                                  f"--pid=container:{cid}"))
        assert res.returncode == 0, res.stderr
        assert "sleep 100" in res.stdout
    finally:
        dockerd.docker("rm", "-f", cid)


def test_default_runtime_from_daemon_json(dockerd_default_runtime, runtime):
    """daemon.json {"runtimes": {NAME: {"path": ...}}, "default-runtime": NAME}: a plain
    docker run uses it."""
    d = dockerd_default_runtime
    assert d.docker("info", "-f", "{{.DefaultRuntime}}", check=True).stdout.strip() \
        == d.default_runtime
    res = d.docker("run", "--rm", "--network", "none", IMAGE, "echo", "hi")
    assert (res.returncode, res.stdout) == (0, "hi\n"), res.stderr
    cid = d.docker("create", "--network", "none", IMAGE, "true", check=True).stdout.strip()
    assert d.docker("inspect", "-f", "{{.HostConfig.Runtime}}", cid).stdout.strip() \
        == d.default_runtime
