"""What users of docker take for granted (issue 12, items 3-7), checked from inside containers.

Each test here failed before its fix; the docstrings say how.
"""
import json
import os
import pty
import select
import shutil
import subprocess
import tempfile
import time

import pytest

from tests.root.test_run import _wait_running

pytestmark = pytest.mark.root


def _status_field(pid: str | int, name: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split(":", 1)[1].strip() for line in f if line.startswith(name + ":"))


# ---------------------------------------------------------------- item 7: cgroup namespace


def test_proc_self_cgroup_is_root_for_every_controller_with_limits_set(mc):
    """runc and crun show "/" for every hierarchy; on this hybrid host the v1 controllers once
    showed /minictr-<id> when limits put the container in v1 cgroups (the cgroup namespace was
    made by clone3, before the launcher placed the child in the v1 hierarchies)."""
    res = mc("run", "--rm", "--memory", "64m", "--pids-limit", "50", "busybox:test",
             "cat", "/proc/self/cgroup")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split()
    assert len(lines) > 1 and all(line.endswith(":/") for line in lines), res.stdout


# ---------------------------------------------------------------- item 3: platform warning


@pytest.fixture(scope="module")
def arm64_image(mc, image_cache):
    """busybox (built for this host) whose config says linux/arm64, as a foreign image would."""
    from rootfs_tools.build import _busybox_layer
    from rootfs_tools.oci import ImageConfig, Layout

    out = tempfile.mkdtemp(dir=image_cache, prefix="arm64-")
    layout = Layout(out)
    with tempfile.TemporaryDirectory() as tmp:
        base = _busybox_layer(layout, tmp, "gzip")
    layout.add_image([base], ImageConfig(cmd=["true"], architecture="arm64"), "latest",
                     history=["busybox, labelled arm64"])
    mc("load", "--tag", "foreign:arm64", out, check=True)
    return "foreign:arm64"


def test_an_image_for_another_platform_gets_dockers_warning(mc, arm64_image):
    res = mc("run", "--rm", arm64_image)
    assert res.returncode == 0, res.stderr
    assert ("WARNING" in res.stderr.upper() and "The requested image's platform (linux/arm64) "
            "does not match the detected host platform (linux/amd64)") in res.stderr
    # asked for explicitly: no warning, as docker
    res = mc("run", "--rm", "--platform", "linux/arm64", "--pull", "never", arm64_image)
    assert res.returncode == 0 and "platform" not in res.stderr, res.stderr
    # and a stored image of another platform than the one asked for is not silently used
    res = mc("run", "--rm", "--platform", "linux/amd64", "--pull", "never", arm64_image)
    assert res.returncode == 125 and "does not match the requested linux/amd64" in res.stderr
    assert "platform" not in mc("run", "--rm", "busybox:test", "true").stderr


# ---------------------------------------------------------------- item 4: silent options


def _without_cap_sys_time():
    """preexec_fn: minictr starts without CAP_SYS_TIME (dropped from the bounding set: root's
    execve then gives only what the bounding set has)."""
    import prctl

    prctl.capbset_drop(prctl.CAP_SYS_TIME)


def test_cap_add_of_a_capability_the_launcher_lacks_is_an_error(mc):
    """It was dropped silently: the container ran without it (capset through python-prctl
    limits to what is held). runc fails in capset; minictr says so at plan time."""
    res = mc("run", "--rm", "--cap-add", "SYS_TIME", "busybox:test", "true",
             preexec_fn=_without_cap_sys_time)
    assert res.returncode == 125 and "CAP_SYS_TIME: minictr does not hold" in res.stderr
    assert res.stderr.count("\n") == 2                       # one line and a hint
    # --privileged and --cap-add ALL mean all the launcher holds
    res = mc("run", "--rm", "--privileged", "busybox:test", "grep", "CapEff", "/proc/self/status",
             preexec_fn=_without_cap_sys_time)
    assert res.returncode == 0, res.stderr
    caps = int(res.stdout.split()[1], 16)
    assert not caps & (1 << 25) and caps & (1 << 21)         # no SYS_TIME; SYS_ADMIN
    res = mc("run", "--rm", "--cap-add", "SYS_TIME", "busybox:test", "grep", "CapEff",
             "/proc/self/status")
    assert res.returncode == 0 and int(res.stdout.split()[1], 16) & (1 << 25), res.stderr


def test_no_new_privs_is_on_by_default_and_off_when_asked(mc):
    """--privileged and --security-opt no-new-privileges=false turn it off (it stayed on under
    --privileged); no-new-privileges with --privileged keeps it."""
    assert mc.probe()["NoNewPrivs"] == 1
    off = mc.probe("--security-opt", "no-new-privileges=false")
    assert off["NoNewPrivs"] == 0 and off["Seccomp"] == 2     # the filter is still loaded
    assert mc.probe("--privileged")["NoNewPrivs"] == 0
    assert mc.probe("--privileged", "--security-opt", "no-new-privileges")["NoNewPrivs"] == 1


def test_interactive_tty_with_a_pipe_for_stdin_is_refused_as_docker_does(mc):
    """`echo hi | minictr run -i -t IMG cat` hung for ever; docker says "the input device is
    not a TTY" and exits 1. -i alone still pipes input in."""
    res = mc("run", "--rm", "-i", "-t", "busybox:test", "cat", input="hi\n", timeout=60)
    assert res.returncode == 1 and "the input device is not a TTY" in res.stderr
    res = mc("run", "--rm", "-i", "busybox:test", "cat", input="hi\n", timeout=60)
    assert res.returncode == 0 and res.stdout == "hi\n"


def test_end_of_input_on_a_terminal_reaches_the_container(mc):
    """stdin is a terminal that goes away (its other side closed): the container's terminal
    gets an end-of-file, so `cat` ends; it used to wait for ever."""
    master, slave = pty.openpty()
    proc = mc.popen("run", "--rm", "-i", "-t", "busybox:test", "cat", stdin=slave,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(slave)
    try:
        os.write(master, b"hi\n")
        seen = b""
        while b"hi" not in seen:                  # the container's terminal echoed our input
            # a guard against a hang, not a timing check: typed-ahead input was once flushed
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            assert ready, "no echo of the input within 60 s"
            chunk = os.read(proc.stdout.fileno(), 1024)
            assert chunk, proc.stderr.read()
            seen += chunk
        os.close(master)
        master = None
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        if master is not None:
            os.close(master)
        proc.kill()
        proc.wait()


def test_spec_init_shows_the_init_that_run_executes_and_runc_runs_it_too(mc, tmp_path):
    """--init was a runtime parameter, absent from `minictr spec`: the plan now bind-mounts
    minictr's init at /dev/init and puts it first in process.args, as docker does with
    docker-init, so runc given the same spec runs the same init."""
    spec = json.loads(mc("spec", "--init", "busybox:test", "cat", "/proc/1/cmdline",
                         check=True).stdout)
    assert spec["process"]["args"][:3] == ["/dev/init", "--", "cat"]
    init = [m for m in spec["mounts"] if m["destination"] == "/dev/init"]
    assert init and os.path.basename(init[0]["source"]) == "mcinit"
    res = mc("run", "--rm", "--init", "busybox:test", "cat", "/proc/1/cmdline")
    assert res.returncode == 0 and res.stdout.split("\0")[:3] == ["/dev/init", "--", "cat"]
    res = mc("run", "--rm", "--init", "busybox:test", "no-such-command")
    assert res.returncode == 127 and "no-such-command" in res.stderr
    runc = shutil.which("runc")
    if runc is None:
        pytest.skip("runc is not installed: the spec's honesty is not checked against it")
    # --bundle writes the files the spec mounts (its /etc files) beside config.json
    mc("spec", "--bundle", str(tmp_path), "--init", "busybox:test", "cat", "/proc/1/cmdline",
       check=True)
    spec = json.loads((tmp_path / "config.json").read_text())
    layer = json.loads(mc("inspect", "busybox:test", check=True).stdout)[0]["layers"][0]
    rootfs = tmp_path / "rootfs"
    shutil.copytree(os.path.join(mc.root, "layers", layer["chain_id"].split(":")[1], "diff"),
                    rootfs, symlinks=True)
    spec["root"]["path"] = str(rootfs)
    (tmp_path / "config.json").write_text(json.dumps(spec))
    res = subprocess.run([runc, "--root", str(tmp_path / "runc"), "run", "--bundle",
                          str(tmp_path), "init-honesty"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\0")[:3] == ["/dev/init", "--", "cat"]


# ---------------------------------------------------------------- item 5: /etc files


def test_resolv_conf_hosts_and_hostname_are_provided_per_container(mc, tmp_path):
    """The busybox image has no /etc/resolv.conf, /etc/hosts or /etc/hostname: DNS failed in
    most images (debian:12 has no resolv.conf either). Files written in the container's own
    directory of the store are bind-mounted, as docker and podman do."""
    script = "cat /etc/resolv.conf; echo --; cat /etc/hosts; echo --; cat /etc/hostname"
    res = mc("run", "--rm", "--hostname", "box", "busybox:test", "sh", "-c", script)
    assert res.returncode == 0, res.stderr
    resolv, hosts, hostname = res.stdout.split("--\n")
    with open("/etc/resolv.conf") as f:
        host_servers = [line.split()[1] for line in f if line.startswith("nameserver")]
    assert [line.split()[1] for line in resolv.splitlines()
            if line.startswith("nameserver")] == host_servers      # the host's network: as is
    assert "127.0.1.1\tbox" in hosts and hostname == "box\n"
    res = mc("run", "--rm", "--dns", "192.0.2.53", "--dns-search", "example.test",
             "--dns-option", "ndots:2", "--add-host", "db.test:192.0.2.7",
             "--add-host", "v6.test=[2001:db8::1]", "busybox:test", "sh", "-c", script)
    resolv, hosts, _ = res.stdout.split("--\n")
    assert resolv == "nameserver 192.0.2.53\nsearch example.test\noptions ndots:2\n"
    assert "192.0.2.7\tdb.test\n" in hosts and "2001:db8::1\tv6.test\n" in hosts
    # with a network namespace of its own: docker's localhost entries, not the host's file
    res = mc("run", "--rm", "--network", "none", "busybox:test", "cat", "/etc/hosts")
    assert res.stdout.startswith("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost")
    res = mc("run", "--rm", "--dns", "not-an-ip", "busybox:test", "true")
    assert res.returncode == 125 and "--dns not-an-ip: not an IP address" in res.stderr


def test_etc_files_live_in_the_containers_state_directory_and_go_with_it(mc):
    proc = mc.popen("run", "--name", "etcfiles", "busybox:test", "sleep", "1000",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_running(mc)
        cid = json.loads(mc("ps", "--format", "json").stdout)[-1]["id"]
        directory = os.path.join(mc.state, cid)           # written by create (Plan.files)
        assert {"resolv.conf", "hosts", "hostname"} <= set(os.listdir(directory))
        res = mc("exec", "etcfiles", "sh", "-c", "echo 10.9.8.7 added >> /etc/hosts")
        assert res.returncode == 0, res.stderr
        with open(os.path.join(directory, "hosts")) as f:
            assert "10.9.8.7 added" in f.read()
    finally:
        proc.kill()
        proc.wait()
        mc("rm", "-f", "etcfiles")
    assert not os.path.exists(directory)


# ---------------------------------------------------------------- item 6: missing flags


def test_ipc_host_shares_dev_shm_and_shm_size_sizes_it(mc):
    name = f"minictr-test-{os.getpid()}"
    try:
        res = mc("run", "--rm", "--ipc", "host", "busybox:test", "sh", "-c",
                 f"echo shared > /dev/shm/{name}")
        assert res.returncode == 0, res.stderr
        with open(f"/dev/shm/{name}") as f:
            assert f.read() == "shared\n"
        res = mc("run", "--rm", "busybox:test", "cat", f"/dev/shm/{name}")
        assert res.returncode != 0                        # private by default
    finally:
        if os.path.exists(f"/dev/shm/{name}"):
            os.unlink(f"/dev/shm/{name}")
    p = mc.probe("--ipc", "host")
    assert p["ns"]["ipc"] == os.stat("/proc/self/ns/ipc").st_ino
    res = mc("run", "--rm", "--shm-size", "1g", "busybox:test", "df", "-k", "/dev/shm")
    assert res.stdout.splitlines()[1].split()[1] == str(1 << 20), res.stdout
    res = mc("run", "--rm", "--ipc", "host", "--shm-size", "1g", "busybox:test", "true")
    assert res.returncode == 125 and "--shm-size" in res.stderr


def test_pid_host_sees_the_hosts_processes(mc):
    p = mc.probe("--pid", "host")
    assert p["ns"]["pid"] == os.stat("/proc/self/ns/pid").st_ino and p["pid"] != 1
    assert os.getpid() in p["pids"]


def test_sysctl_group_add_ulimits_and_volume_options(mc, tmp_path):
    res = mc("run", "--rm", "--network", "none", "--sysctl",
             "net.ipv4.ip_unprivileged_port_start=80", "busybox:test",
             "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start")
    assert res.returncode == 0 and res.stdout == "80\n", res.stderr
    res = mc("run", "--rm", "--sysctl", "net.ipv4.ip_forward=1", "busybox:test", "true")
    assert res.returncode == 125 and "host's network namespace" in res.stderr
    res = mc("run", "--rm", "--sysctl", "kernel.hostname=x", "busybox:test", "true")
    assert res.returncode == 125 and "not a namespaced sysctl" in res.stderr
    res = mc("run", "--rm", "-u", "1000", "--group-add", "4242", "--group-add", "nogroup",
             "busybox:test", "id", "-G")
    assert res.returncode == 0, res.stderr
    assert {"4242", "65534"} <= set(res.stdout.split())
    # podman's nofile default, within what this launcher can set (it may lack
    # CAP_SYS_RESOURCE: then its own hard limit, said under --explain)
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    res = mc("run", "--rm", "--explain", "busybox:test", "sh", "-c", "ulimit -n; ulimit -Hn")
    can_raise = int(_status_field("self", "CapEff"), 16) & (1 << 24)
    want = 1048576 if can_raise or hard >= 1048576 else hard
    assert res.stdout.split() == [str(want), str(want)], res.stderr
    assert ("not podman's 1048576" in res.stderr) == (want < 1048576)
    res = mc("run", "--rm", "--ulimit", "stack=67108864", "busybox:test", "sh", "-c",
             "ulimit -s")
    assert res.stdout == "65536\n", res.stderr
    res = mc("run", "--rm", "-v", f"{tmp_path}:/data:cached", "-v",
             f"{tmp_path}:/data2:ro,delegated,nocopy", "busybox:test", "ls", "/data", "/data2")
    assert res.returncode == 0, res.stderr


def test_detach_logs_stop_and_the_exit_status(mc, tmp_path):
    """-d leaves a monitor as the container's parent: the id is printed once the command
    runs, its output goes to `minictr logs`, `minictr stop` sends --stop-signal, and the exit
    status is recorded."""
    cidfile = tmp_path / "cid"
    res = mc("run", "-d", "--name", "bg", "--cidfile", str(cidfile), "--stop-signal", "USR1",
             "busybox:test", "sh", "-c",
             "trap 'echo stopping >&2; exit 3' USR1; echo started; "
             "while :; do sleep 0.1; done", timeout=60)
    try:
        assert res.returncode == 0, res.stderr
        cid = res.stdout.strip()
        assert len(cid) == 64 and cidfile.read_text() == cid
        logs = mc.popen("logs", "-f", "bg", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ready, _, _ = select.select([logs.stdout], [], [], 60)     # a guard against a hang
        assert ready and logs.stdout.readline() == b"started\n"
        assert mc("stop", "bg", timeout=60).stdout == "bg\n"
        out, err = logs.communicate(timeout=60)              # -f ends with the container
        assert out == b"stopping\n", err
        row = json.loads(mc("ps", "-a", "--format", "json").stdout)[-1]
        assert row["status"] == "stopped" and row["exit_code"] == 3
        assert "exited (3)" in mc("ps", "-a").stdout
        assert mc("logs", "bg").stdout == "started\nstopping\n"
        res = mc("run", "--cidfile", str(cidfile), "busybox:test", "true")
        assert res.returncode == 125 and "container ID file found" in res.stderr
    finally:
        mc("rm", "-f", "bg")


def test_detach_reports_setup_errors_and_rm_removes_the_container(mc):
    res = mc("run", "-d", "busybox:test", "no-such-command", timeout=60)
    assert res.returncode == 127 and "no-such-command" in res.stderr and res.stdout == ""
    res = mc("run", "-d", "--rm", "--name", "gone", "busybox:test", "sh", "-c", "exit 4",
             timeout=60)
    assert res.returncode == 0, res.stderr
    cid = res.stdout.strip()
    for _ in range(1200):                    # the monitor removes it after its exit
        if not os.path.exists(os.path.join(mc.root, "containers", cid)):
            break
        time.sleep(0.05)
    assert "gone" not in mc("ps", "-a").stdout
    assert not os.path.exists(os.path.join(mc.root, "containers", cid))


def test_stop_kills_after_the_timeout(mc):
    """sleep as PID 1 ignores SIGTERM (no handler): docker stop waits, then SIGKILL."""
    res = mc("run", "-d", "--name", "stubborn", "--stop-timeout", "0", "busybox:test",
             "sleep", "1000", timeout=60)
    try:
        assert res.returncode == 0, res.stderr
        assert mc("stop", "stubborn", timeout=60).returncode == 0
        row = json.loads(mc("ps", "-a", "--format", "json").stdout)[-1]
        assert row["status"] == "stopped"
    finally:
        mc("rm", "-f", "stubborn")


def test_short_names_find_a_loaded_layout(mc, image_cache):
    """`load` of an OCI layout dir without a registry in its name: localhost/NAME; `run NAME`
    then tried Docker Hub (podman looks in local storage for localhost/NAME first)."""
    from tests import images

    src = images.build_busybox(image_cache)
    layout = os.path.join(image_cache, "shortname", "bbshort")
    if not os.path.exists(layout):
        shutil.copytree(src.path, layout)
    res = mc("load", layout, check=True)
    assert "localhost/bbshort:latest" in res.stdout
    res = mc("run", "--rm", "--pull", "never", "bbshort", "true")
    assert res.returncode == 0, res.stderr
    assert mc("run", "--rm", "--pull", "missing", "bbshort", "true").returncode == 0


def test_unlimited_ulimits_as_nvidia_recommends_for_pytorch(mc):
    """--ulimit memlock=-1 (and any -1) failed with "OverflowError: Python int too large":
    the spec's RLIM_INFINITY (2**64-1) went to setrlimit as it is. A hard limit the launcher
    cannot raise (no CAP_SYS_RESOURCE, as in this sandbox) is one line and a hint."""
    import resource

    if resource.getrlimit(resource.RLIMIT_CORE)[1] == resource.RLIM_INFINITY:
        res = mc("run", "--rm", "--ulimit", "core=-1", "busybox:test", "sh", "-c", "ulimit -c")
        assert res.returncode == 0 and res.stdout == "unlimited\n", res.stderr
    res = mc("run", "--rm", "--ulimit", "memlock=-1", "busybox:test", "sh", "-c", "ulimit -l")
    if int(_status_field("self", "CapEff"), 16) & (1 << 24):        # CAP_SYS_RESOURCE
        assert res.returncode == 0 and res.stdout == "unlimited\n", res.stderr
    else:
        assert res.returncode == 125 and res.stderr.count("\n") == 2, res.stderr
        assert "setrlimit(RLIMIT_MEMLOCK, unlimited, unlimited): Operation not permitted" \
            in res.stderr and "CAP_SYS_RESOURCE" in res.stderr
