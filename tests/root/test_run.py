"""minictr run as root: isolation, exit codes, signals, cleanup — checked from inside by a probe."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.root.conftest import host_mounts_mentioning

pytestmark = pytest.mark.root

DOCKER_DEFAULT_CAPS = 0xa80425fb   # CHOWN..AUDIT_WRITE: Docker's default set (reference/RUNTIME.md)
CAP_NET_RAW = 1 << 13
# the default network outside a Slurm job: the host's, without CAP_NET_RAW (docs/network.md)
DEFAULT_NETWORK_CAPS = DOCKER_DEFAULT_CAPS & ~CAP_NET_RAW


def test_exit_status_is_passed_back(mc):
    assert mc("run", "--rm", "busybox:test", "sh", "-c", "exit 7").returncode == 7


def test_killed_by_signal_is_128_plus_n(mc):
    # PID 1 cannot be killed from inside its namespace; with --init the command is PID 2
    assert mc("run", "--rm", "--init", "busybox:test", "sh", "-c", "kill -9 $$").returncode == 137


def test_not_found_is_127_and_not_executable_is_126(mc):
    res = mc("run", "--rm", "busybox:test", "no-such-command")
    assert res.returncode == 127
    assert "no-such-command" in res.stderr and res.stderr.count("\n") <= 2
    assert mc("run", "--rm", "busybox:test", "/etc/passwd").returncode == 126


def test_probe_sees_an_isolated_root_process(mc):
    p = mc.probe()
    assert p["uid"] == 0 and p["gid"] == 0
    assert int(p["caps"]["CapBnd"], 16) == DEFAULT_NETWORK_CAPS
    assert int(p["caps"]["CapEff"], 16) == DEFAULT_NETWORK_CAPS
    assert int(p["caps"]["CapInh"], 16) == 0 and int(p["caps"]["CapAmb"], 16) == 0
    assert p["NoNewPrivs"] == 1
    assert p["pid"] == 1
    host_ns = {name: os.stat(f"/proc/self/ns/{name}").st_ino
               for name in ("mnt", "pid", "uts", "ipc", "cgroup")}
    for name, ino in host_ns.items():
        assert p["ns"][name] != ino, f"{name} namespace is the host's"
    # the host's network is the default, as HPC tools do
    assert p["ns"]["net"] == os.stat("/proc/self/ns/net").st_ino
    explicit = mc.probe("--network", "host")
    assert int(explicit["caps"]["CapBnd"], 16) == DOCKER_DEFAULT_CAPS


def test_no_host_processes_are_visible(mc):
    p = mc.probe()
    assert p["pids"] == [1]


def test_network_none_has_its_own_namespace(mc):
    p = mc.probe("--network", "none")
    assert p["ns"]["net"] != os.stat("/proc/self/ns/net").st_ino
    res = mc("run", "--rm", "--network", "none", "busybox:test", "ip", "link")
    assert "lo:" in res.stdout and "UP" in res.stdout and "eth" not in res.stdout


def test_no_host_fd_leaks_in(mc, tmp_path):
    # The launcher is handed extra fds (one of them a host directory): none may reach the
    # container (runc CVE-2024-21626).
    host_dir = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    other = os.open("/etc/hostname", os.O_RDONLY)
    try:
        res = mc("run", "--rm", "probe:test", "/probe", "--only", "fds",
                 pass_fds=(host_dir, other))
        assert res.returncode == 0, res.stderr

        fds = json.loads(res.stdout)["fds"]
        leaked = {fd: target for fd, target in fds.items() if int(fd) > 2}
        # the probe's own directory fd while it lists /proc/self/fd is the only extra one
        assert all("/proc/" in t and "/fd" in t for t in leaked.values()), leaked
    finally:
        os.close(other)


def test_cwd_through_a_leaked_fd_is_refused(mc, tmp_path):
    host_dir = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        res = mc("run", "--rm", "-w", f"/proc/self/fd/{host_dir}", "busybox:test", "pwd",
                 pass_fds=(host_dir,))
    finally:
        os.close(host_dir)
    assert res.returncode == 125, (res.stdout, res.stderr)
    assert "outside the container" in res.stderr
    assert str(tmp_path) not in res.stdout


def test_a_missing_cwd_is_never_made_through_a_leaked_fd(mc, tmp_path):
    """Docker makes a missing WORKDIR. Made through /proc/self/fd/N, it would land in whatever
    host directory fd N is during setup (the container's cgroup directory was one, and the
    launcher's own fds are others): every fd number is tried, and nothing may appear outside."""
    host_dir = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    name = f"made-{os.getpid()}"
    try:
        for n in range(3, 24):
            res = mc("run", "--rm", "-w", f"/proc/self/fd/{n}/{name}", "busybox:test", "true",
                     pass_fds=(host_dir,))
            assert res.returncode == 125, (n, res.stdout, res.stderr)
    finally:
        os.close(host_dir)
    found = subprocess.run(["find", "/sys/fs/cgroup", str(tmp_path), mc.root, mc.state,
                            "-name", name], capture_output=True, text=True).stdout
    assert found == "", found
    res = mc("run", "--rm", "-w", "/made/for/you", "busybox:test", "pwd")
    assert res.stdout.strip() == "/made/for/you", res.stderr


def test_proc_self_exe_does_not_run_the_host_interpreter(mc):
    # runc CVE-2019-5736: if the container could execute the launcher's own binary (here the
    # host's Python), it could then rewrite it through /proc/PID/exe. mcinit runs from a sealed
    # memfd, so /proc/self/exe inside is that, never a host file.
    res = mc("run", "--rm", "busybox:test", "/proc/self/exe", "-c", "print('PYTHON-RAN')")
    assert "PYTHON-RAN" not in res.stdout
    script = "#!/proc/self/exe\nprint('PYTHON-RAN')\n"
    res = mc("run", "--rm", "busybox:test", "sh", "-c",
             f"printf '{script}' > /s && chmod +x /s && /s; readlink /proc/self/exe")
    assert "PYTHON-RAN" not in res.stdout


def test_proc_self_exe_is_not_the_host_interpreter_even_where_it_could_run(mc):
    """The test above passes with any busybox image even if /proc/self/exe named the host's
    Python: the image has no dynamic loader, so the interpreter could not start in it (ENOENT
    for its ELF interpreter). Here the host's loader, libraries and interpreter are bound in
    read-only, so it can; /proc/self/exe, and a script whose #! names it, must still not be it
    (runc CVE-2019-5736: exec'd from the launcher's process, it would be the host's binary
    running in the container)."""
    py = os.path.realpath(sys.executable)
    binds = ["-v", f"{py}:{py}:ro"]
    for path in ("/usr/lib", "/lib", "/lib64"):
        if os.path.isdir(path):
            binds += ["-v", f"{os.path.realpath(path)}:{path}:ro"]
    ran = mc("run", "--rm", *binds, "busybox:test", py, "-c", "print('PYTHON-RAN')")
    if "PYTHON-RAN" not in ran.stdout:
        pytest.skip(f"the host's {py} does not run from /usr/lib, /lib, /lib64: {ran.stderr}")
    res = mc("run", "--rm", *binds, "busybox:test", "/proc/self/exe", "-c", "print('PYTHON-RAN')")
    assert "PYTHON-RAN" not in res.stdout, res.stderr
    script = "#!/proc/self/exe\nprint('PYTHON-RAN')\n"
    res = mc("run", "--rm", *binds, "busybox:test", "sh", "-c",
             f"printf '{script}' > /s && chmod +x /s && /s")
    assert "PYTHON-RAN" not in res.stdout, res.stderr


def test_host_interpreter_cannot_be_written_through_proc(mc):
    before = os.stat(sys.executable)
    res = mc("run", "--rm", "busybox:test", "sh", "-c",
             "for p in /proc/[0-9]*; do echo x >> $p/exe 2>/dev/null && echo WROTE $p; done; true")
    assert "WROTE" not in res.stdout
    after = os.stat(sys.executable)
    assert (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)


def test_masked_and_readonly_paths(mc):
    res = mc("run", "--rm", "busybox:test", "sh", "-c",
             "cat /proc/keys | wc -c; ls /sys/firmware | wc -l; "
             "echo 1 > /proc/sys/kernel/domainname && echo WRITABLE; "
             "echo b > /proc/sysrq-trigger && echo SYSRQ")
    lines = res.stdout.split()
    assert lines[0] == "0" and lines[1] == "0"
    assert "WRITABLE" not in res.stdout and "SYSRQ" not in res.stdout


def test_hostname_and_env(mc):
    res = mc("run", "--rm", "--hostname", "box1", "-e", "FOO=bar", "busybox:test",
             "sh", "-c", "hostname; echo $FOO")
    assert res.stdout.split() == ["box1", "bar"]


def test_volume_and_read_only(mc, tmp_path):
    (tmp_path / "in.txt").write_text("hello\n")
    res = mc("run", "--rm", "-v", f"{tmp_path}:/data", "--read-only", "busybox:test", "sh", "-c",
             "cat /data/in.txt; echo out > /data/out.txt; touch /rootfile || echo RO")
    assert res.returncode == 0, res.stderr
    assert "hello" in res.stdout and "RO" in res.stdout
    assert (tmp_path / "out.txt").read_text() == "out\n"
    res = mc("run", "--rm", "-v", f"{tmp_path}:/data:ro", "busybox:test", "sh", "-c",
             "echo x > /data/x || echo DENIED")
    assert "DENIED" in res.stdout


def test_user_option(mc):
    res = mc("run", "--rm", "-u", "1000:1000", "probe:test", "/probe", "--only", "ids,caps")

    p = json.loads(res.stdout)
    assert p["uid"] == 1000 and p["gid"] == 1000
    assert int(p["caps"]["CapEff"], 16) == 0


def test_ctrl_c_stops_sleep_as_pid_1_and_leaves_nothing(mc):
    proc = mc.popen("run", "--rm", "busybox:test", "sleep", "100",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_running(mc)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=10)
    assert code == 130
    assert time.monotonic() - t0 < 5      # generous: the claim (<1 s) is measured in bench/
    assert not host_mounts_mentioning(mc.root) and not host_mounts_mentioning(mc.state)
    entries = [d for d in os.listdir(mc.state) if not d.startswith(".") and d != "names"]
    assert not entries, entries                       # no container left (nor its name)
    assert not os.listdir(os.path.join(mc.state, "names"))


def test_sigterm_reaches_a_handler(mc):
    proc = mc.popen("run", "--rm", "busybox:test", "sh", "-c",
                    "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.1; done",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 3 and "got-term" in out


def test_sigkill_of_the_launcher_kills_the_container(mc):
    proc = mc.popen("run", "--name", "victim", "busybox:test", "sleep", "1000",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pid = _wait_running(mc)
    proc.kill()
    proc.wait()
    for _ in range(100):
        if not os.path.exists(f"/proc/{pid}"):
            break
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}")
    mc("rm", "-f", "victim")


def _zombies_after_an_orphan(mc, *init):
    """PID 1 becomes `sleep`, which never reaps; an orphaned child exits meanwhile. Without an
    init it stays a zombie (busybox sh as PID 1 would reap it, hiding the difference)."""
    name = f"zombies{len(init)}"
    proc = mc.popen("run", "--rm", "--name", name, *init, "busybox:test", "sh", "-c",
                    "(sleep 0.2 &); exec sleep 30", stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE)
    try:
        _wait_running(mc)
        time.sleep(1)               # the orphan's 0.2 s are over (not a timing assertion)
        return mc("exec", name, "ps", "-o", "stat,comm", check=True).stdout
    finally:
        proc.kill()
        proc.wait()
        mc("rm", "-f", name)


def test_init_reaps_zombies(mc):
    def states(ps_output: str) -> list[str]:
        return [line.split()[0] for line in ps_output.splitlines()[1:] if line.split()]

    assert "Z" in states(_zombies_after_an_orphan(mc))
    assert "Z" not in states(_zombies_after_an_orphan(mc, "--init"))


def test_ps_exec_kill_rm(mc):
    proc = mc.popen("run", "--name", "svc", "busybox:test", "sleep", "1000",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_running(mc)
        ps = mc("ps", check=True).stdout
        assert "svc" in ps
        res = mc("exec", "svc", "sh", "-c", "hostname; ps | wc -l; echo $PATH")
        assert res.returncode == 0, res.stderr
        assert mc("exec", "svc", "sh", "-c", "exit 4").returncode == 4
        assert mc("kill", "svc").returncode == 0
        assert proc.wait(timeout=10) == 137
    finally:
        proc.kill()
    assert "svc" in mc("ps", "-a").stdout
    assert mc("rm", "svc").returncode == 0
    assert "svc" not in mc("ps", "-a").stdout


def test_exec_stdin_is_the_hosts_dev_null_not_the_containers(mc):
    """Without -i an exec'd process reads /dev/null. The launcher opens it before it joins the
    container: the container's own /dev/null is its to replace (here by a FIFO nobody writes,
    which would hang the open; a device node would be opened with the launcher's caps)."""
    proc = mc.popen("run", "--name", "nullswap", "busybox:test", "sleep", "1000",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_running(mc)
        mc("exec", "nullswap", "sh", "-c", "rm /dev/null && mkfifo /dev/null", check=True,
           input="")
        res = mc("exec", "nullswap", "sh", "-c", "wc -c; ls -l /proc/self/fd/0", timeout=30)
        assert res.returncode == 0, res.stderr
        assert res.stdout.split()[0] == "0" and "null" in res.stdout
    finally:
        proc.kill()
        proc.wait()
        mc("rm", "-f", "nullswap")


def test_tty_gives_a_real_terminal(mc):
    import pty

    pid, fd = pty.fork()
    if pid == 0:
        os.execv(mc.exe, [mc.exe, "run", "--root", mc.root, "--state", mc.state, "--rm", "-t",
                          "busybox:test", "sh", "-c", "tty; stty size"])
    out, status = _read_pty_until_exit(pid, fd)
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert b"/dev/pts/" in out or b"/dev/console" in out, out


def test_dry_run_explains_without_doing(mc):
    res = mc("run", "--dry-run", "--explain", "busybox:test", "true")
    assert res.returncode == 0, res.stderr
    for step in ("clone3(", "mount -t proc", "pivot_root", "PR_SET_NO_NEW_PRIVS", "execve(",
                 "device filter", "bpf(BPF_PROG_ATTACH", "write exec.fifo"):
        assert step in res.stderr
    assert not os.path.exists(os.path.join(mc.state, "nonexistent"))


def _read_pty_until_exit(pid: int, fd: int) -> tuple[bytes, int]:
    """All a pty.fork() child wrote (EIO once it is gone), then its wait status."""
    out = b""
    while True:
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out, os.waitpid(pid, 0)[1]


def _wait_running(mc) -> int:

    for _ in range(200):
        res = mc("ps", "--format", "json")
        rows = json.loads(res.stdout or "[]")
        if rows and rows[-1].get("pid"):
            return rows[-1]["pid"]
        time.sleep(0.05)
    raise AssertionError("container did not start")


def test_exec_with_a_tty(mc):
    import pty

    proc = mc.popen("run", "--name", "ttysvc", "busybox:test", "sleep", "1000",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_running(mc)
        pid, fd = pty.fork()
        if pid == 0:
            os.execv(mc.exe, [mc.exe, "exec", "--root", mc.root, "--state", mc.state, "-t",
                              "ttysvc", "tty"])
        out, status = _read_pty_until_exit(pid, fd)
        assert os.waitstatus_to_exitcode(status) == 0, out
        assert b"/dev/pts/" in out, out
    finally:
        proc.kill()
        proc.wait()
        mc("rm", "-f", "ttysvc")


def test_gc_keeps_the_layers_of_an_existing_container(mc, tmp_path):
    import shutil

    from rootfs_tools import build, rootfs
    from rootfs_tools.oci import ImageConfig

    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    shutil.copy(rootfs.find_busybox(), tree / "bin" / "busybox")
    for applet in ("sh", "sleep", "cat"):
        os.symlink("busybox", tree / "bin" / applet)
    (tree / "marker").write_text(os.urandom(8).hex())   # a layer no other image shares
    build.from_dir(str(tmp_path / "layout"), str(tree), ImageConfig(cmd=["sh"]), tag="latest")
    mc("load", "--tag", "gcvictim:test", f"oci:{tmp_path / 'layout'}:latest", check=True)
    chain = json.loads(mc("inspect", "gcvictim:test", check=True).stdout)[0]["layers"][0]
    layer_dir = os.path.join(mc.root, "layers", chain["chain_id"].split(":")[1])
    assert os.path.isdir(layer_dir)
    proc = mc.popen("run", "--name", "gcsvc", "gcvictim:test", "sleep", "1000",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_running(mc)
        mc("rmi", "gcvictim:test", check=True)
        mc("gc", check=True)
        assert os.path.isdir(layer_dir)                 # the container still stands on it
        res = mc("exec", "gcsvc", "cat", "/marker")
        assert res.returncode == 0 and res.stdout == (tree / "marker").read_text()
    finally:
        proc.kill()
        proc.wait()
        mc("rm", "-f", "gcsvc")
    mc("gc", check=True)
    assert not os.path.isdir(layer_dir)                 # and goes once the container is gone


def _normalised(text: str, state: str | None = None) -> list[str]:
    """Ids, pids and fd numbers differ between two runs; a dry run keeps its state in a
    throwaway directory of its own, which ``state`` (the real one) stands for."""
    import re

    text = re.sub(r"/tmp/minictr-dry-run-\w+", "STATE", text)
    if state:
        text = text.replace(state, "STATE")
    text = re.sub(r"[0-9a-f]{64}", "ID", text)
    text = re.sub(r"[0-9a-f]{12}", "SHORT", text)
    text = re.sub(r"write \d+ > (\S+)/cgroup.procs", r"write PID > \1/cgroup.procs", text)
    return [re.sub(r"fd \d+", "fd N", line) for line in text.splitlines()]


@pytest.mark.parametrize("options", [
    (), ("--read-only", "-v", "/tmp:/hostmnt:ro"), ("--network", "none", "--init", "-u", "1000"),
    ("--memory", "64m", "--pids-limit", "50", "--tmpfs", "/scratch", "--cap-drop", "ALL"),
], ids=["default", "read-only+volume", "netns+init+user", "limits"])
def test_dry_run_shows_exactly_the_steps_of_a_real_run(mc, options):
    """--dry-run --explain runs the real run's code against a recording face: cgroup writes,
    eBPF rules, id maps, hooks, mounts and the exec, line for line."""
    dry = mc("run", "--rm", "--dry-run", "--explain", *options, "busybox:test", "true")
    real = mc("run", "--rm", "--explain", *options, "busybox:test", "true")
    assert dry.returncode == 0 and real.returncode == 0, (dry.stderr, real.stderr)
    assert _normalised(dry.stderr, mc.state) == _normalised(real.stderr, mc.state)


def test_exec_is_confined_like_the_first_process(mc):
    """An exec'd process is born in the container's cgroup, so under its device filter (runc
    does this; minictr's exec once escaped both), with the same caps and no_new_privs."""
    proc = mc.popen("run", "--name", "confined", "busybox:test", "sleep", "1000",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_running(mc)

        res = mc("exec", "confined", "/bin/cat", "/proc/self/cgroup", check=True)
        assert all(line.endswith(":/") for line in res.stdout.split()), res.stdout
        first = mc("exec", "confined", "sh", "-c",
                   "mknod /tmp/kmsg c 1 11 && (cat /tmp/kmsg </dev/null >/dev/null 2>&1 "
                   "&& echo OPENED || echo DENIED)")
        assert "DENIED" in first.stdout and "OPENED" not in first.stdout, first.stdout
        status = mc("exec", "confined", "grep", "-E", "^(CapEff|CapBnd|NoNewPrivs)",
                    "/proc/self/status", check=True).stdout
        fields = dict(line.split(":\t") for line in status.splitlines())
        assert int(fields["CapBnd"], 16) == DEFAULT_NETWORK_CAPS
        assert int(fields["CapEff"], 16) == DEFAULT_NETWORK_CAPS and fields["NoNewPrivs"] == "1"
        pid1 = json.loads(mc("ps", "--format", "json").stdout)[-1]["pid"]
        with open(f"/proc/{pid1}/cgroup") as f:
            container_cgroups = f.read()
        # the exec'd process's host view: the same cgroups as PID 1
        probe = mc.popen("exec", "confined", "sleep", "5", stdout=subprocess.PIPE)
        try:
            for _ in range(100):
                kids = [p for p in os.listdir("/proc") if p.isdigit() and _comm(p) == "sleep"
                        and int(p) != pid1 and _ppid(p) == probe.pid]
                if kids:
                    break
                time.sleep(0.05)
            with open(f"/proc/{kids[0]}/cgroup") as f:
                assert f.read() == container_cgroups
        finally:
            probe.kill()
            probe.wait()
    finally:
        proc.kill()
        proc.wait()
        mc("rm", "-f", "confined")


def _comm(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _ppid(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def test_read_only_never_writes_into_the_store(mc, tmp_path):
    """--read-only once bind-mounted the stored layer itself and made every mount point in it
    (issue 12): the layer dirs must be byte-for-byte unchanged after a run."""
    def listing():
        out = []
        for dirpath, dirs, files in os.walk(os.path.join(mc.root, "layers")):
            out += [os.path.join(dirpath, n) for n in sorted(dirs + files)]
        return sorted(out)

    before = listing()
    res = mc("run", "--rm", "--read-only", "-v", f"{tmp_path}:/hostmnt", "--tmpfs", "/newdir",
             "busybox:test", "sh", "-c", "ls /hostmnt >/dev/null && touch /x || echo RO")
    assert res.returncode == 0 and "RO" in res.stdout, res.stderr
    assert listing() == before


def test_name_is_unique_among_existing_containers(mc):
    proc = mc.popen("run", "--name", "once", "busybox:test", "sleep", "1000",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_running(mc)
        res = mc("run", "--rm", "--name", "once", "busybox:test", "true")
        assert res.returncode == 125 and "already in use" in res.stderr
    finally:
        proc.kill()
        proc.wait()
        mc("rm", "-f", "once")
    assert mc("run", "--rm", "--name", "once", "busybox:test", "true").returncode == 0


def _ignore_signals_like_a_batch_system():
    """preexec_fn: the launcher starts with SIGPIPE, SIGUSR1 and real-time signal 32 ignored, as
    under some job wrappers (CI found 32 ignored). glibc's sigaction refuses 32 (it keeps 32
    and 33 for itself), so that one goes through the raw system call."""
    import ctypes
    for sig in (signal.SIGPIPE, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    number = {"x86_64": 13, "aarch64": 134}.get(os.uname().machine)
    if number is not None:
        act = (ctypes.c_ulong * 8)(1)                       # sa_handler = SIG_IGN
        if ctypes.CDLL(None, use_errno=True).syscall(number, 32, act, None, 8) != 0:
            os._exit(99)


def test_ignored_signals_are_not_inherited_from_the_launcher(mc):
    """An ignored disposition survives execve, so without a reset `yes | head -1` in a
    container would never see yes die of SIGPIPE. Every signal is reset, glibc's 32 and 33 too."""
    res = mc("run", "--rm", "busybox:test", "grep", "SigIgn", "/proc/self/status",
             preexec_fn=_ignore_signals_like_a_batch_system)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["SigIgn:", "0000000000000000"]


def test_wrong_architecture_and_scripts_without_shebang_are_exec_format_errors(mc, tmp_path):
    """execvp(3) would run either through /bin/sh (ENOEXEC fallback); runc and docker report
    "exec format error" (126). A foreign ELF header stands in for another architecture."""
    (tmp_path / "script").write_text("echo SHELL-RAN\n")
    arm = bytearray(open("/bin/true", "rb").read())
    arm[18:20] = (183).to_bytes(2, "little")            # e_machine = EM_AARCH64
    (tmp_path / "arm").write_bytes(bytes(arm))
    for name in ("script", "arm"):
        os.chmod(tmp_path / name, 0o755)
        res = mc("run", "--rm", "-v", f"{tmp_path}:/x", "busybox:test", f"/x/{name}")
        assert res.returncode == 126, (name, res.returncode, res.stdout, res.stderr)
        assert "SHELL-RAN" not in res.stdout and "exec format error" in res.stderr
    res = mc("run", "--rm", "busybox:test", "/etc")
    assert res.returncode == 126 and res.stderr.count("\n") <= 2


def test_the_image_root_metadata_reaches_the_container(mc, tmp_path):
    """A layer's "./" entry (0750 5:6 here) is the container's "/": the writable layer's
    root takes it, as overlay copy-up would (it used to show the upper dir's 0755 root)."""
    from rootfs_tools import rootfs
    from tests.root.test_umoci_compare import write_layout
    from tests.unit.layertar import D, make_tar

    tree = tmp_path / "tree"
    tree.mkdir()
    rootfs.add_busybox(str(tree))
    base = subprocess.run(["tar", "-C", str(tree), "-cf", "-", "bin"], check=True,
                          capture_output=True).stdout
    top = make_tar([D(".", mode=0o750, uid=5, gid=6)])
    mc("load", "--tag", "rootmeta:test", f"oci:{write_layout(str(tmp_path / 'l'), [base, top])}:t",
       check=True)
    for extra in ((), ("--read-only",)):
        res = mc("run", "--rm", *extra, "rootmeta:test", "/bin/stat", "-c", "%a %u:%g", "/")
        assert res.stdout.split() == ["750", "5:6"], (extra, res.stdout, res.stderr)


def test_mount_points_come_from_a_layer_made_once_not_the_writable_layer(mc):
    """The /etc files minictr binds and the directories /proc, /dev and /sys are mounted on
    (the busybox image has none of them) are found in the mount-point layer (mountpoints.py),
    the same for every run of the image: the container's writable layer holds none of them,
    and the image's /etc keeps its metadata."""
    said = mc("run", "--explain", "--name", "mp1", "busybox:test", "true", check=True).stderr
    try:
        cid = json.loads(mc("ps", "-a", "--format", "json", check=True).stdout)[-1]["id"]
        upper = os.path.join(mc.root, "containers", cid, "upper")
        assert os.path.isdir(upper) and os.listdir(upper) == [], os.listdir(upper)
        layers = os.path.join(mc.state, ".cache", "mountpoints")
        short = said.split("STATE/.cache/mountpoints/", 1)[1][:12]
        (layer,) = [n for n in os.listdir(layers) if n.startswith(short) and "." not in n]
        assert sorted(os.listdir(os.path.join(layers, layer, "etc"))) == [
            "hostname", "hosts", "resolv.conf"]
        assert {"proc", "dev", "sys"} <= set(os.listdir(os.path.join(layers, layer)))
        out = mc("run", "--rm", "busybox:test", "sh", "-c",
                 "cat /etc/hostname >/dev/null && stat -c '%a %u' /etc", check=True).stdout
        assert out.split() == ["755", "0"]
    finally:
        mc("rm", "-f", "mp1")
