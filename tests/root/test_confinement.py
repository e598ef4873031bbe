"""What a default container must not do (issue 13): raw system calls made by a static probe
inside `minictr run`, with the default seccomp filter and without it, and from an exec'd
process. Each denial is also checked to be the defence's doing: the same call succeeds, or
fails differently, where that defence is off."""
from __future__ import annotations

import os
import platform
import subprocess

import pytest

from tests.keyrings import own_session_keyring_with_a_secret

pytestmark = pytest.mark.root
if platform.machine() != "x86_64":
    pytest.skip("the probe's syscall numbers are x86-64's", allow_module_level=True)

HERE = os.path.dirname(os.path.abspath(__file__))
EPERM, ESRCH, EROFS, EACCES = 1, 3, 30, 13
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 1


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("probe")
    try:
        subprocess.run(["gcc", "-static", "-O1", "-o", str(d / "seccomp_probe"),
                        os.path.join(HERE, "seccomp_probe.c")], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"cannot build the static probe with gcc: {err}")
    os.chmod(d, 0o755)
    return str(d)


def probe(mc, probe_dir: str, calls: list[str], *run_args, exec_in: str | None = None):
    argv = ["/p/seccomp_probe", *calls]
    if exec_in:
        res = mc("exec", exec_in, *argv)
    else:
        res = mc("run", "--rm", "-v", f"{probe_dir}:/p:ro", *run_args, "busybox:test", *argv)
    assert res.returncode == 0, res.stderr
    return {line.split()[0]: int(line.split()[1]) for line in res.stdout.splitlines()}


# Calls Docker's default profile denies for a container without CAP_SYS_ADMIN (issue 13 item 1)
SECCOMP_DENIED = {
    "io_uring_setup": "io_uring_setup=425,1,0",
    "perf_event_open": "perf_event_open=298,0,0,-1,-1,0",
    "add_key": "add_key=248,0,0,0,0,0",
    "keyctl": "keyctl=250,0,0",
    "unshare_user": f"unshare_user=272,{CLONE_NEWUSER}",
}


def test_the_default_filter_denies_what_docker_denies(mc, probe_dir):
    confined = probe(mc, probe_dir, list(SECCOMP_DENIED.values()))
    assert all(confined[name] == EPERM for name in SECCOMP_DENIED), confined
    free = probe(mc, probe_dir, list(SECCOMP_DENIED.values()), "--security-opt",
                 "seccomp=unconfined")
    # unconfined, the kernel itself answers: not the filter's EPERM (EFAULT, EINVAL, ENOKEY...)
    assert all(free[name] != EPERM for name in ("io_uring_setup", "add_key", "keyctl")), free


def test_the_filter_is_in_exec_d_processes_only_if_it_is_in_the_container(mc, probe_dir):
    for options, expect in (((), "2"), (("--security-opt", "seccomp=unconfined"), "0")):
        name = f"sec{expect}"
        proc = mc.popen("run", "--name", name, "-v", f"{probe_dir}:/p:ro", *options,
                        "busybox:test", "sleep", "100", stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE)
        try:
            _wait(mc, name)
            status = mc("exec", name, "grep", "^Seccomp:", "/proc/self/status").stdout
            assert status.split() == ["Seccomp:", expect]
            seen = probe(mc, probe_dir, [SECCOMP_DENIED["keyctl"]], exec_in=name)
            assert (seen["keyctl"] == EPERM) == (expect == "2")
        finally:
            proc.kill()
            proc.wait()
            mc("rm", "-f", name)


def test_a_default_container_cannot_mount_load_modules_or_reach_the_host(mc, probe_dir):
    host_pid = os.getpid()
    calls = [
        "mount=165,0,0,0,0,0",                   # mount(NULL, NULL, ...): CAP_SYS_ADMIN
        "umount2=166,0,0",
        "init_module=175,0,0,0",                 # load a module: CAP_SYS_MODULE
        "finit_module=313,0,0,0",
        "reboot=169,0xfee1dead,0x28121969,0x1234567",
        f"ptrace_host=101,16,{host_pid}",         # PTRACE_ATTACH to a host process: invisible
        f"kill_host=62,{host_pid},0",
        "setns=308,0,0",
        "swapon=167,0,0",
        "settimeofday=164,0,0",
    ]
    seen = probe(mc, probe_dir, calls)
    for name in ("mount", "umount2", "init_module", "finit_module", "reboot", "setns", "swapon",
                 "settimeofday"):
        assert seen[name] in (EPERM,), (name, seen[name])
    assert seen["ptrace_host"] == ESRCH and seen["kill_host"] == ESRCH


def test_kernel_settings_are_read_only(mc):
    res = mc("run", "--rm", "busybox:test", "sh", "-c",
             "for f in /proc/sys/kernel/hostname /proc/sysrq-trigger "
             "/sys/kernel/mm/transparent_hugepage/enabled /sys/fs/cgroup/cgroup.procs; do "
             "(echo x > $f) 2>/dev/null && echo WROTE $f; done; "
             "mount -t tmpfs t /mnt 2>/dev/null && echo MOUNTED; "
             "mknod /dev/sda b 8 0 && (head -c1 /dev/sda >/dev/null 2>&1 && echo OPENED); true")
    assert res.returncode == 0, res.stderr
    assert "WROTE" not in res.stdout and "MOUNTED" not in res.stdout
    assert "OPENED" not in res.stdout


@pytest.fixture(scope="module")
def racer_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("racer")
    try:
        subprocess.run(["gcc", "-static", "-O1", "-o", str(d / "exe_racer"),
                        os.path.join(HERE, "exe_racer.c")], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"cannot build the static racer with gcc: {err}")
    os.chmod(d, 0o755)
    return str(d)


def test_an_exec_d_process_never_shows_the_host_interpreter(mc, racer_dir):
    """runc CVE-2019-5736 as a race: a process in the container opens /proc/PID/exe of each
    process it sees, over and over, while the launcher execs into the container. The exec'd
    process is made by the launcher (a fork of the host's Python) and becomes mcinit only at
    fexecve; in between, once it has the container's capabilities, it must not be openable,
    or the container holds an fd to the host's interpreter (to write once no one runs it).
    --network none: the default network's Landlock domains would hide it (each process has
    its own domain), which --network none, host or bridge do not give."""
    import sys

    host = os.stat(os.path.realpath(sys.executable))
    proc = mc.popen("run", "--rm", "--name", "racer", "--network", "none", "-v",
                    f"{racer_dir}:/p:ro", "busybox:test", "/p/exe_racer", "8",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
        for _ in range(25):
            mc("exec", "racer", "true", check=True)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
        mc("rm", "-f", "racer")
    opened = {(int(dev), int(ino)) for dev, ino, _ in (line.split() for line in out.splitlines())}
    assert (host.st_dev, host.st_ino) not in opened, out


def test_the_launchers_session_keyring_stays_out(mc):
    """Every container joins a session keyring of its own (spawn._join_keyring, as runc
    does): it does not hold the launcher's, so neither its keys. --privileged, so that
    /proc/keys is not masked and keyctl not filtered; the key is shown to a host process that
    holds the launcher's keyring, so the test can see it."""
    host = subprocess.run(["cat", "/proc/keys"], capture_output=True, text=True,
                          preexec_fn=own_session_keyring_with_a_secret)
    if host.returncode in (97, 98):
        pytest.skip("this kernel has no keyrings for the test to use (CONFIG_KEYS)")
    assert host.returncode == 0 and "mctest-secret" in host.stdout, (host.returncode,
                                                                       host.stdout)
    res = mc("run", "--rm", "--privileged", "busybox:test", "cat", "/proc/keys",
             preexec_fn=own_session_keyring_with_a_secret)
    assert res.returncode == 0, res.stderr
    assert "mctest-secret" not in res.stdout, res.stdout


OPEN_FUSE = ("mknod /tmp/fuse c 10 229 && (exec 3</tmp/fuse) 2>/dev/null "
             "&& echo OPENED || echo DENIED")


def test_the_device_filter_denies_a_node_nothing_else_would(mc):
    """The device filter (the eBPF program on the container's cgroup) is what keeps a node the
    rules do not list from opening, in the first process and in an exec'd one. /dev/fuse
    (10:229, 0666) needs no capability to open, so nothing else would refuse it: /dev/kmsg
    would (CAP_SYSLOG under dmesg_restrict) and so would an absent /dev/sda (ENXIO), so neither
    shows the filter at work. mknod itself is allowed (as runc). With --device /dev/fuse the
    same node opens: the denial is the filter's doing."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse on the host (modprobe fuse)")
    res = mc("run", "--rm", "busybox:test", "sh", "-c", OPEN_FUSE)
    assert res.stdout.split() == ["DENIED"], (res.stdout, res.stderr)
    res = mc("run", "--rm", "--device", "/dev/fuse", "busybox:test", "sh", "-c", OPEN_FUSE)
    assert res.stdout.split() == ["OPENED"], (res.stdout, res.stderr)
    proc = mc.popen("run", "--name", "devfilter", "busybox:test", "sleep", "100",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait(mc, "devfilter")
        res = mc("exec", "devfilter", "sh", "-c", OPEN_FUSE)
        assert res.stdout.split() == ["DENIED"], (res.stdout, res.stderr)
    finally:
        proc.kill()
        proc.wait()
        mc("rm", "-f", "devfilter")


def _wait(mc, name: str) -> None:
    import json
    import time

    for _ in range(200):
        rows = json.loads(mc("ps", "--format", "json").stdout or "[]")
        if any(r["name"] == name and r.get("pid") for r in rows):
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} did not start")
