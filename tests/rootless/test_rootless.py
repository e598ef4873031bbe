"""minictr run without root: the probe inside, files through bind mounts, setuid, cleanup."""
import json
import os
import shutil
import subprocess
import stat

import pytest

pytestmark = pytest.mark.rootless


def test_user_is_root_inside_and_mapped_outside(user_mc):
    p = user_mc.probe(probe_args=("--only", "ids,idmap,caps,ns"))
    assert p["uid"] == 0 and p["gid"] == 0
    maps = [line.split() for line in p["uid_map"]]
    assert maps[0][:2] == ["0", str(user_mc.pw.pw_uid)]
    # with subordinate ids newuidmap maps the whole range; without, only the user's own id
    assert len(maps) == (2 if user_mc.kind == "with-subids" else 1)
    # the capabilities exist only in the container's own user namespace
    assert p["ns"]["user"] != os.stat("/proc/self/ns/user").st_ino


def test_no_host_processes(user_mc):
    p = user_mc.probe(probe_args=("--only", "pids"))
    assert p["pids"] == [1]


def test_files_through_a_bind_mount_are_owned_by_the_user(user_mc):
    vol = os.path.join(user_mc.home, "vol")
    os.makedirs(vol, exist_ok=True)
    os.chown(vol, user_mc.pw.pw_uid, user_mc.pw.pw_gid)
    res = user_mc("run", "--rm", "-v", f"{vol}:/vol", "busybox:test", "sh", "-c",
                  "echo made > /vol/new.txt")
    assert res.returncode == 0, res.stderr
    st = os.stat(os.path.join(vol, "new.txt"))
    assert st.st_uid == user_mc.pw.pw_uid


def test_setuid_root_binary_gives_no_host_privilege(user_mc):
    # Inside, as uid 1000, run a setuid-root copy of the probe made in the container: with
    # no_new_privs and a user namespace, it reports no elevation; and on the host the file is
    # owned by the user (or a subordinate id), never by root.
    if user_mc.kind == "with-subids":       # uid 1000 exists inside only with a range
        res = user_mc("run", "--rm", "-u", "1000:1000", "probe:test", "/probe", "--only", "ids")
        assert res.returncode == 0, res.stderr
        import json

        assert json.loads(res.stdout)["euid"] == 1000
    layers = os.path.join(user_mc.root, "layers")
    for dirpath, dirnames, filenames in os.walk(layers):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_ISUID:
                assert st.st_uid != 0, os.path.join(dirpath, name)


def test_exit_code_and_nothing_left_behind(user_mc):
    assert user_mc("run", "--rm", "busybox:test", "sh", "-c", "exit 5").returncode == 5
    with open("/proc/self/mountinfo") as f:
        assert not [ln for ln in f if user_mc.home in ln]
    state = user_mc.state
    assert not os.path.isdir(state) or not [
        d for d in os.listdir(state) if not d.startswith(".") and d != "names"]
    containers = os.path.join(user_mc.root, "containers")
    assert not os.path.isdir(containers) or not os.listdir(containers)


def test_keep_id(user_mc):
    p = user_mc.probe("--userns", "keep-id", probe_args=("--only", "ids"))
    assert p["uid"] == user_mc.pw.pw_uid


def test_limit_without_delegation_is_an_error(user_mc):
    res = user_mc("run", "--rm", "--memory", "64m", "busybox:test", "true")
    # Either a delegated cgroup was found (then the limit applies) or a clear error says why.
    if res.returncode != 0:
        assert res.returncode == 125
        assert "cgroup" in res.stderr.lower()


def test_device_nodes_in_a_layer_are_skipped_with_a_warning(user_mc, shared_dir):
    from rootfs_tools.oci import ImageConfig, Layout
    from rootfs_tools.tarball import TarBuilder

    out = os.path.join(shared_dir, f"devlayer-{user_mc.kind}")
    if not os.path.exists(out):
        layout = Layout(out)
        tar = (TarBuilder().dir("dev").device("dev/sda", "b", 8, 0)
               .file("bin/suid", b"#!/bin/sh\n", mode=0o4755).file("etc/ok", b"ok\n"))
        layout.add_image([layout.add_layer_from_tar(tar)], ImageConfig(cmd=["sh"]), "latest")
        os.system(f"chmod -R a+rX {out}")
    res = user_mc("load", "--tag", "devlayer:test", f"oci:{out}:latest")
    assert res.returncode == 0, res.stderr
    assert "warning" in res.stderr and "dev/sda" in res.stderr
    # the setuid file is owned by the user (or a subordinate id) on the host, never root
    for dirpath, _, files in os.walk(os.path.join(user_mc.root, "layers")):
        if "suid" in files:
            st = os.lstat(os.path.join(dirpath, "suid"))
            assert st.st_uid != 0


def test_fuse_overlayfs_driver(user_mc):
    import shutil

    if not shutil.which("fuse-overlayfs"):
        pytest.skip("fuse-overlayfs is not installed (apt-get install fuse-overlayfs)")
    env = user_mc.env()
    env["MINICTR_OVERLAY"] = "fuse-overlayfs"
    import subprocess

    res = subprocess.run(user_mc.cmdline("run", "--rm", "--explain", "busybox:test", "sh", "-c",
                                         "grep -c fuse /proc/self/mountinfo; echo hi > /f; "
                                         "cat /f"),
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "fuse-overlayfs -f -o lowerdir=" in res.stderr       # foreground: killed with the container
    assert res.stdout.split()[-1] == "hi"
    assert int(res.stdout.split()[0]) >= 1


def test_no_fuse_daemon_for_a_container_that_may_ptrace(user_mc):
    """fuse-overlayfs runs in the container's PID namespace with its root in the host's "/";
    with CAP_SYS_PTRACE the container could read the host's files through its /proc/PID/root.
    That combination is refused; the attack is what the command tries. --network host: the
    default network's Landlock domain would also stop it (no ptrace out of the domain), but a
    job-native run, --network host or an older kernel has none."""
    import shutil

    if not shutil.which("fuse-overlayfs"):
        pytest.skip("fuse-overlayfs is not installed (apt-get install fuse-overlayfs)")
    marker = f"/tmp/mctr-host-marker-{os.getpid()}"
    with open(marker, "w") as f:
        f.write("HOST-FILE-REACHED\n")
    os.chmod(marker, 0o644)
    env = user_mc.env()
    env["MINICTR_OVERLAY"] = "fuse-overlayfs"
    try:
        res = subprocess.run(
            user_mc.cmdline("run", "--rm", "--network", "host", "--cap-add", "SYS_PTRACE",
                            "busybox:test", "sh", "-c",
                            f"for r in /proc/[0-9]*/root; do cat $r{marker} 2>/dev/null; done"),
            capture_output=True, text=True, env=env, timeout=60)
    finally:
        os.unlink(marker)
    assert "HOST-FILE-REACHED" not in res.stdout
    assert res.returncode == 125 and "CAP_SYS_PTRACE" in res.stderr, res.stderr


def _as_user(user_mc, *args, env=None):
    """The installed CLI as the test user with no --state: its default state dir is used."""
    base = {**user_mc.env(), **(env or {})}
    return subprocess.run(["runuser", "-u", user_mc.pw.pw_name, "--", user_mc.exe, *args],
                          capture_output=True, text=True, env=base, timeout=60)


def test_a_state_dir_planted_by_another_user_is_refused(user_mc):
    """Another user pre-creates /tmp/minictr-UID with mode 777 and a forged entry pointing
    `kill` at a victim process: minictr must refuse the directory, not act on it."""
    import shutil

    planted = f"/tmp/minictr-{user_mc.pw.pw_uid}"
    shutil.rmtree(planted, ignore_errors=True)
    os.mkdir(planted)
    os.chmod(planted, 0o777)
    os.chown(planted, 65534, 65534)
    victim = subprocess.Popen(["sleep", "30"])
    try:
        os.makedirs(f"{planted}/forged")
        with open(f"{planted}/forged/state.json", "w") as f:
            json.dump({"id": "forged", "status": "running", "pid": victim.pid}, f)
        for args in (("kill", "forged"), ("ps", "-a"), ("rm", "-f", "forged")):
            res = _as_user(user_mc, *args, "--root", user_mc.root)
            assert res.returncode == 125, (args, res.stdout, res.stderr)
            assert "refusing to trust" in res.stderr and res.stderr.count("\n") == 2
        assert victim.poll() is None                         # untouched
        assert os.path.exists(f"{planted}/forged/state.json")
    finally:
        victim.kill()
        victim.wait()
        shutil.rmtree(planted, ignore_errors=True)


def test_a_missing_xdg_runtime_dir_is_not_a_traceback(user_mc):
    """A compute node without the login node's /run/user/UID: minictr uses /tmp/minictr-UID."""
    res = _as_user(user_mc, "run", "--root", user_mc.root, "--rm", "busybox:test", "true",
                   env={"XDG_RUNTIME_DIR": f"/run/user/{user_mc.pw.pw_uid}-absent"})
    assert res.returncode == 0, res.stderr


def test_launcher_errors_are_one_line_and_125(user_mc):
    cases = [
        (("run", "--root", user_mc.root, "--rm", "busybox:test", "true"),
         {"MINICTR_STATE": "/proc/self/minictr"}),
        (("run", "--root", "/root/not-mine", "--rm", "busybox:test", "true"), {}),
        (("images", "--root", "/root/not-mine"), {}),
    ]
    for args, env in cases:
        res = _as_user(user_mc, *args, env=env)
        assert res.returncode == 125, (args, res.stderr)
        assert "Traceback" not in res.stderr and res.stderr.startswith("minictr: error: ")
        assert res.stderr.count("\n") <= 2, res.stderr


def test_docker_run_flags_without_root(user_mc):
    """Issue 12's flags where a user namespace changes how they are made: /etc files written by
    the user, --ipc host (the host's /dev/shm and /dev/mqueue bound in: a fresh mqueue needs an
    IPC namespace of the container's user namespace), --pid host (the host's /proc bound in:
    a fresh proc needs a PID namespace it owns), the nofile default within the user's own
    hard limit, and a detached container with its log."""
    res = user_mc("run", "--rm", "--add-host", "db.test:192.0.2.7", "busybox:test", "sh", "-c",
                  "cat /etc/hosts /etc/resolv.conf /etc/hostname >/dev/null && "
                  "grep db.test /etc/hosts && ulimit -Hn")
    assert res.returncode == 0, res.stderr
    hard = subprocess.run(["runuser", "-u", user_mc.pw.pw_name, "--", "sh", "-c", "ulimit -Hn"],
                          capture_output=True, text=True).stdout.strip()
    assert res.stdout.split() == ["192.0.2.7", "db.test", str(min(int(hard), 1048576))]
    p = user_mc.probe("--ipc", "host", "--pid", "host", probe_args=("--only", "ns,pids"))
    assert p["ns"]["ipc"] == os.stat("/proc/self/ns/ipc").st_ino
    assert p["ns"]["pid"] == os.stat("/proc/self/ns/pid").st_ino and len(p["pids"]) > 1
    res = user_mc("run", "-d", "--name", "bg", "busybox:test", "sh", "-c",
                  "echo up; exec sleep 1000")
    try:
        assert res.returncode == 0 and len(res.stdout.strip()) == 64, res.stderr
        assert user_mc("stop", "-t", "0", "bg").returncode == 0
        assert user_mc("logs", "bg").stdout == "up\n"
    finally:
        user_mc("rm", "-f", "bg")
    containers = os.path.join(user_mc.root, "containers")
    assert not os.path.isdir(containers) or not os.listdir(containers)


def test_rm_removes_files_a_non_root_user_left_in_one_id_map_step(user_mc):
    """Files written inside by uid 1000 belong to a subordinate id on the host, which the user
    cannot remove by itself: --rm removes them from the container's own user namespace, held
    open since the clone (api._hold_user_namespace), not from a new one mapped by a second
    newuidmap/newgidmap (counted with strace when it is installed)."""
    if user_mc.kind != "with-subids":
        pytest.skip("uid 1000 exists inside only with a subordinate range")
    containers = os.path.join(user_mc.root, "containers")
    before = set(os.listdir(containers)) if os.path.isdir(containers) else set()
    script = "mkdir -p /tmp/d/e && echo x > /tmp/d/e/f && chmod 500 /tmp/d/e"
    args = ["run", "--rm", "-u", "1000:1000", "busybox:test", "sh", "-c", script]
    trace = None
    if shutil.which("strace"):
        trace = os.path.join(user_mc.home, "rm-trace")
        res = subprocess.run(["strace", "-f", "-e", "trace=execve", "-o", trace,
                              "-u", user_mc.pw.pw_name, *user_mc.cmdline(*args)[4:]],
                             capture_output=True, text=True, timeout=120, env=user_mc.env())
    else:
        res = user_mc(*args)
    assert res.returncode == 0, res.stderr
    after = set(os.listdir(containers)) if os.path.isdir(containers) else set()
    assert after <= before, after - before
    if trace:
        with open(trace) as f:
            text = f.read()
        os.unlink(trace)
        assert text.count('execve("/usr/bin/newuidmap"') == 1, text[-2000:]
