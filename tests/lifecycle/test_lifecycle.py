"""The OCI lifecycle through the runc-compatible command (runtime-tools validation, as a list:
create/start/state/kill/delete, pid-file, hooks with the state on stdin, console socket,
default mounts, namespaces, devices, rlimits, resources), for minictr-runc and runc alike."""
from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time

import pytest

from tests.keyrings import own_session_keyring_with_a_secret
from tests.lifecycle.conftest import reap

pytestmark = pytest.mark.root


def wait_status(runtime, cid: str, want: str, seconds: float = 10) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        reap()
        st = runtime.state(cid)
        if st["status"] == want or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


def run_to_exit(runtime, bundle, cid: str, *create_args, **create_kw) -> str:
    """create, start, wait for the process to exit; its stdout (a file, as engines pass)."""
    out = bundle.path / f"{cid}.out"
    with open(out, "w") as f:
        runtime("create", "--bundle", str(bundle), *create_args, cid, check=True, stdout=f,
                stderr=subprocess.STDOUT, capture_output=False, **create_kw)
    runtime("start", cid, check=True)
    st = wait_status(runtime, cid, "stopped")
    assert st["status"] == "stopped", st
    runtime("delete", cid, check=True)
    return out.read_text()


def test_create_start_state_kill_delete(runtime, bundle, tmp_path):
    pid_file = tmp_path / "init.pid"
    runtime("create", "--bundle", str(bundle), "--pid-file", str(pid_file), "c1", check=True)
    st = runtime.state("c1")
    assert st["status"] == "created" and st["id"] == "c1"
    assert st["bundle"] == str(bundle) and st["pid"] > 0
    # the pid file holds the real first process, written before create returned
    assert int(pid_file.read_text()) == st["pid"]
    # no runtime process stays between us (a subreaper, as conmon is) and the container
    with open(f"/proc/{st['pid']}/stat") as f:
        assert int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid()
    runtime("start", "c1", check=True)
    assert runtime.state("c1")["status"] == "running"
    assert runtime("start", "c1").returncode != 0          # only a created one starts
    assert runtime("delete", "c1").returncode != 0          # running: not without --force
    runtime("kill", "c1", "KILL", check=True)
    assert wait_status(runtime, "c1", "stopped")["status"] == "stopped"
    runtime("delete", "c1", check=True)
    res = runtime("state", "c1")
    assert res.returncode != 0 and "does not exist" in (res.stderr + res.stdout)
    assert runtime("delete", "--force", "c1").returncode == 0        # idempotent with force


def test_state_prints_only_json(runtime, bundle):
    runtime("create", "--bundle", str(bundle), "c2", check=True)
    res = runtime("state", "c2", check=True)
    state = json.loads(res.stdout)
    assert set(state) >= {"ociVersion", "id", "status", "pid", "bundle"}
    listed = json.loads(runtime("list", "--format", "json", check=True).stdout)
    assert [s["id"] for s in listed] == ["c2"]
    runtime("delete", "c2", check=True)                    # a created one is killed and gone
    assert runtime("state", "c2").returncode != 0


def test_options_after_the_id(runtime, bundle):
    runtime("create", "c3", "--bundle", str(bundle), check=True)
    runtime("start", "c3", check=True)
    # (sleep as PID 1 has no handler: only KILL reaches it from outside its namespace)
    runtime("kill", "c3", "-a", "KILL", check=True) if runtime.name == "minictr-runc" else \
        runtime("kill", "--all", "c3", "KILL", check=True)
    assert wait_status(runtime, "c3", "stopped")["status"] == "stopped"
    runtime("delete", "c3", "--force", check=True)


def test_kill_by_name_and_number(runtime, bundle):
    bundle.command("sh", "-c", "trap 'exit 3' USR1; while :; do sleep 0.1; done")
    for cid, sig in (("k1", "USR1"), ("k2", str(int(signal.SIGUSR1))), ("k3", "SIGUSR1")):
        runtime("create", "--bundle", str(bundle), cid, check=True)
        runtime("start", cid, check=True)
        time.sleep(0.3)                                     # the trap is set up
        runtime("kill", cid, sig, check=True)
        assert wait_status(runtime, cid, "stopped")["status"] == "stopped"
        runtime("delete", cid, check=True)


def test_exit_status_of_run_and_exec(runtime, bundle):
    bundle.command("sh", "-c", "exit 7")
    res = runtime("run", "--bundle", str(bundle), "r1")
    assert res.returncode == 7, res.stderr
    bundle.command("sleep", "1000")
    runtime("create", "--bundle", str(bundle), "e1", check=True)
    runtime("start", "e1", check=True)
    assert runtime("exec", "e1", "sh", "-c", "exit 4").returncode == 4
    res = runtime("exec", "e1", "no-such-command")
    assert res.returncode == 255, (res.returncode, res.stderr)
    res = runtime("exec", "e1", "echo", "hi", check=True)
    assert res.stdout == "hi\n"
    runtime("delete", "--force", "e1", check=True)


def test_exec_detached_with_process_file_and_pid_file(runtime, bundle, tmp_path):
    runtime("create", "--bundle", str(bundle), "e2", check=True)
    runtime("start", "e2", check=True)
    process = dict(bundle.spec["process"], args=["sleep", "30"])
    (tmp_path / "process.json").write_text(json.dumps(process))
    pid_file = tmp_path / "exec.pid"
    runtime("exec", "--process", str(tmp_path / "process.json"), "--detach", "--pid-file",
            str(pid_file), "e2", check=True)
    pid = int(pid_file.read_text())
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[:2] == [b"sleep", b"30"]
    pids = json.loads(runtime("ps", "--format", "json", "e2", check=True).stdout)
    assert pid in pids and runtime.state("e2")["pid"] in pids
    runtime("delete", "--force", "e2", check=True)


def differs_in_runc(runtime, why: str) -> None:
    """A check runc 1.1.5 (Debian 12's) is known to fail (reference/OCI-RUNTIME.md §6)."""
    if runtime.name == "runc":
        pytest.xfail(f"runc 1.1.5: {why}")


def test_hooks_run_at_their_stages_with_the_state_on_stdin(runtime, bundle, tmp_path):
    """Each hook appends its stage, the status it was given and whether its mount namespace
    is the container's (createContainer/startContainer) to a log, from its stdin."""
    log = tmp_path / "hooks.log"
    script = tmp_path / "hook.sh"
    script.write_text("#!/bin/sh\nread state\n"
                      f"echo \"$1 $(echo \"$state\" | tr , '\\n' | grep '\"status\"')\" >> {log}\n")
    script.chmod(0o755)
    bundle.command("sh", "-c", "exit 0")
    stages = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
              "poststop")

    def add_hooks(spec):
        spec["hooks"] = {s: [{"path": str(script), "args": ["hook.sh", s]}] for s in stages}
        if runtime.name == "minictr-runc":
            # startContainer runs inside the container: the script must be there too
            spec["hooks"]["startContainer"] = [{"path": "/bin/sh", "args": [
                "sh", "-c", "read s; echo \"startContainer $s\" > /dev/null"]}]
        spec["mounts"].append({"destination": str(tmp_path), "type": "bind",
                               "source": str(tmp_path), "options": ["rbind"]})
    bundle.edit(add_hooks)
    run_to_exit(runtime, bundle, "h1")
    lines = log.read_text().splitlines()
    seen = [line.split()[0] for line in lines]
    expected = [s for s in stages if s != "startContainer"]
    assert [s for s in seen if s in expected] == expected, lines
    status = {line.split()[0]: line.split('"status":')[1].strip().strip('"') for line in lines}
    assert status["createRuntime"] == "creating"
    differs_in_runc(runtime, "gives poststart hooks the status 'created', not 'running'")
    assert status["poststart"] == "running"
    assert status["poststop"] == "stopped"


def test_failing_prestart_hook_fails_create_and_leaves_nothing(runtime, bundle):
    bundle.edit(lambda s: s.__setitem__("hooks", {"prestart": [
        {"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 3"]}]}))
    res = runtime("create", "--bundle", str(bundle), "h2")
    assert res.returncode != 0
    assert runtime("state", "h2").returncode != 0


def test_console_socket_gets_the_pty_master(runtime, bundle, tmp_path):
    path = str(tmp_path / "console.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    bundle.edit(lambda s: s["process"].update(terminal=True, args=["sh", "-c", "tty; sleep 5"]))
    proc = runtime.popen("create", "--bundle", str(bundle), "--console-socket", path, "t1")
    conn, _ = server.accept()
    msg, fds, _, _ = socket.recv_fds(conn, 4096, 4)
    assert len(fds) == 1                                   # exactly one SCM_RIGHTS fd
    master = fds[0]
    assert proc.wait(timeout=30) == 0
    runtime("start", "t1", check=True)
    out = b""
    deadline = time.monotonic() + 10
    while b"\n" not in out and time.monotonic() < deadline:
        out += os.read(master, 1024)
    assert out.strip().startswith(b"/dev/pts/"), out
    os.close(master)
    runtime("delete", "--force", "t1", check=True)


def test_default_mounts_devices_and_namespaces(runtime, bundle):
    bundle.command("sh", "-c", "cat /proc/self/mountinfo; ls -l /dev/null /dev/zero /dev/full "
                   "/dev/random /dev/urandom /dev/tty; readlink /proc/self/ns/pid "
                   "/proc/self/ns/mnt /proc/self/ns/uts /proc/self/ns/ipc /proc/self/ns/net")
    out = run_to_exit(runtime, bundle, "m1")
    points = {line.split()[4] for line in out.splitlines() if " - " in line}
    assert {"/", "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"} <= points
    for dev in ("null", "zero", "full", "random", "urandom", "tty"):
        assert f"/dev/{dev}" in out and "crw-rw-rw-" in out
    host = {os.readlink(f"/proc/self/ns/{n}") for n in ("pid", "mnt", "uts", "ipc", "net")}
    assert not host & {line for line in out.split() if line.endswith("]")}


def test_joined_namespace_by_path(runtime, bundle):
    """A namespace entry with a path is joined, not created (or silently shared)."""
    holder = subprocess.Popen(["unshare", "--uts", "sh", "-c", "hostname joined; sleep 30"])
    try:
        time.sleep(0.3)
        path = f"/proc/{holder.pid}/ns/uts"

        def join(spec):
            spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"]
                                           if ns["type"] != "uts"] + [{"type": "uts",
                                                                       "path": path}]
            spec.pop("hostname", None)
        bundle.edit(join)
        bundle.command("hostname")
        assert run_to_exit(runtime, bundle, "j1").strip() == "joined"
    finally:
        holder.kill()
        holder.wait()


def test_devices_rlimits_and_misc_process_properties(runtime, bundle):
    def change(spec):
        spec["linux"]["devices"] = [{"path": "/dev/fuse", "type": "c", "major": 10,
                                     "minor": 229, "fileMode": 0o620, "uid": 7, "gid": 8}]
        spec["linux"]["resources"]["devices"].append(
            {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rwm"})
        spec["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 321, "hard": 654}]
        spec["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [5, 6]}
        spec["process"]["cwd"] = "/tmp"
        spec["hostname"] = "h-box"
        spec["domainname"] = "d.example"
        spec["root"]["readonly"] = False
        spec["process"]["oomScoreAdj"] = 123
    bundle.edit(change)
    bundle.command("sh", "-c", "stat -c '%t:%T %a %u:%g' /dev/fuse; grep 'open files' "
                   "/proc/self/limits; id; pwd; hostname; cat /proc/sys/kernel/domainname; "
                   "cat /proc/self/oom_score_adj; grep NoNewPrivs /proc/self/status")
    out = run_to_exit(runtime, bundle, "p1").splitlines()
    assert out[0] == "a:e5 620 7:8"
    assert out[1].split()[3:5] == ["321", "654"]
    assert "uid=1000" in out[2] and "gid=1000" in out[2] and "5" in out[2] and "6" in out[2]
    assert out[3:5] == ["/tmp", "h-box"] and out[6] == "123"
    differs_in_runc(runtime, "does not set domainname")
    assert out[5] == "d.example"
    assert out[7].split() == ["NoNewPrivs:", "1"]


def test_read_only_root_and_masked_paths(runtime, bundle):
    bundle.command("sh", "-c", "touch /x 2>/dev/null && echo WROTE; cat /proc/keys 2>/dev/null | "
                   "wc -c; echo 1 > /proc/sys/kernel/domainname 2>/dev/null && echo SYSW; true")
    out = run_to_exit(runtime, bundle, "ro1")
    assert "WROTE" not in out and "SYSW" not in out
    assert out.split()[0] == "0"


def test_resources_pids_limit_and_update(runtime, bundle):
    bundle.edit(lambda s: s["linux"]["resources"].update(pids={"limit": 42}))
    runtime("create", "--bundle", str(bundle), "l1", check=True)
    runtime("start", "l1", check=True)
    with open(f"/proc/{runtime.state('l1')['pid']}/cgroup") as f:
        lines = [ln.split(":", 2) for ln in f.read().splitlines()]
    own = [p for _, c, p in lines if "pids" in c.split(",")]
    pids_max = (f"/sys/fs/cgroup/pids{own[0]}/pids.max" if own else
                "/sys/fs/cgroup" + [p for h, _, p in lines if h == "0"][0] + "/pids.max")

    def limit() -> str:
        with open(pids_max) as f:
            return f.read().strip()

    assert limit() == "42"
    (bundle.path / "res.json").write_text(json.dumps({"pids": {"limit": 17}}))
    runtime("update", "--resources", str(bundle.path / "res.json"), "l1", check=True)
    assert limit() == "17"
    runtime("delete", "--force", "l1", check=True)


@pytest.mark.parametrize("cgroupns", [True, False], ids=["cgroupns", "host-cgroupns"])
def test_the_cgroup_mount_shows_only_the_containers_own_cgroups(runtime, bundle, cgroupns):
    """A "cgroup" mount (every engine's spec has one) is the container's view of its own
    cgroups, never the host's trees: on a v1/hybrid host a tmpfs with, per hierarchy, a fresh
    mount in the cgroup namespace or a bind of the container's own directory. Each hierarchy
    the container sees holds its first process (pid 1 here) and no cgroup below it (the host's
    root would show every other container's, user's and service's); the pids view has the
    container's own limit. Under a read-only recursive bind of the host's /sys/fs/cgroup (what
    minictr-runc made on such a host before) `*/*/` listed 35 host cgroups here."""
    def edit(spec):
        spec["linux"]["resources"]["pids"] = {"limit": 42}
        spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"]
                                       if ns["type"] != "cgroup"]
        if cgroupns:
            spec["linux"]["namespaces"].append({"type": "cgroup"})
    bundle.edit(edit)
    v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    views = "/sys/fs/cgroup" if v2 else "/sys/fs/cgroup/*"
    bundle.command("sh", "-c", f"for v in {views}; do [ -L $v ] && continue; "
                   "echo \"view $v $(tr '\\n' ' ' < $v/cgroup.procs)\"; "
                   "for c in $v/*/; do [ -d $c ] && echo \"below $c\"; done; done; "
                   "cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max 2>/dev/null")
    out = run_to_exit(runtime, bundle, "cgv")
    lines = out.splitlines()
    views = [ln.split()[1:] for ln in lines if ln.startswith("view ")]
    assert views and not [ln for ln in lines if ln.startswith("below ")], out
    assert all("1" in procs for _, *procs in views), out
    assert lines[-1] == "42", out


def test_cgroups_the_container_makes_in_its_own_go_with_it(runtime, bundle):
    """With a writable cgroup mount (docker --privileged writes one; systemd or a nested
    runtime inside use it) the container makes cgroups inside its own; `delete` removes them
    with it, as runc does, instead of failing on a cgroup that has children."""
    def edit(spec):
        for m in spec["mounts"]:
            if m.get("type") == "cgroup":
                m["options"] = [o for o in m.get("options", []) if o != "ro"]
    bundle.edit(edit)
    made = f"made-inside-{os.getpid()}"
    bundle.command("sh", "-c", f"for v in /sys/fs/cgroup /sys/fs/cgroup/*; do "
                   f"[ -e $v/cgroup.procs ] && mkdir $v/{made} $v/{made}/deeper && echo made; "
                   "done; true")
    out = run_to_exit(runtime, bundle, "cgm")            # its delete must succeed
    assert "made" in out, out
    left = [d for d, _, _ in os.walk("/sys/fs/cgroup") if os.path.basename(d) == made]
    assert not left, left


def test_pause_and_resume(runtime, bundle):
    runtime("create", "--bundle", str(bundle), "z1", check=True)
    runtime("start", "z1", check=True)
    runtime("pause", "z1", check=True)
    assert runtime.state("z1")["status"] == "paused"
    runtime("resume", "z1", check=True)
    assert runtime.state("z1")["status"] == "running"
    runtime("delete", "--force", "z1", check=True)


def test_create_leaves_nothing_holding_the_callers_stdout(runtime, bundle):
    """Only the container's own process holds the stdio it was given: no helper of the
    runtime keeps the caller's pipe open (a shim would never see EOF)."""
    r, w = os.pipe()
    proc = runtime.popen("create", "--bundle", str(bundle), "o1", stdout=w,
                         stderr=subprocess.DEVNULL)
    os.close(w)
    assert proc.wait(timeout=30) == 0
    pid = runtime.state("o1")["pid"]
    inode = os.fstat(r).st_ino
    holders = set()
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{p}/fd"):
                if os.readlink(f"/proc/{p}/fd/{fd}") == f"pipe:[{inode}]":
                    holders.add(int(p))
        except OSError:
            pass
    holders.discard(os.getpid())
    assert holders == {pid}
    os.close(r)
    runtime("delete", "--force", "o1", check=True)


def test_spec_writes_a_template(runtime, tmp_path):
    res = runtime("spec", "--bundle", str(tmp_path), check=True)
    assert res.stdout == ""
    spec = json.loads((tmp_path / "config.json").read_text())
    assert spec["process"]["args"] == ["sh"] and spec["root"]["path"] == "rootfs"
    os.unlink(tmp_path / "config.json")
    runtime("spec", "--rootless", "--bundle", str(tmp_path), check=True)
    spec = json.loads((tmp_path / "config.json").read_text())
    assert {"type": "user"} in spec["linux"]["namespaces"]
    assert spec["linux"]["uidMappings"][0]["hostID"] == os.geteuid()
    assert runtime("spec", "--bundle", str(tmp_path)).returncode != 0    # exists: refused


def test_unknown_config_field_is_an_error_naming_it(runtime, bundle):
    if runtime.name == "runc":
        pytest.skip("runc ignores unknown fields; minictr refuses them (nothing silent)")
    bundle.edit(lambda s: s["linux"].__setitem__("intelRdt", {"closID": "x"}))
    res = runtime("create", "--bundle", str(bundle), "u1")
    assert res.returncode == 1 and "linux.intelRdt" in res.stderr
    assert res.stderr.count("\n") <= 2


def test_log_json_records_the_error(runtime, bundle, tmp_path):
    log = tmp_path / "log.json"
    # through runtime(): a bare subprocess.run is not known to the tier's reaper thread, which
    # could reap it first (Popen then reads ECHILD as status 0: the test failed under load)
    res = runtime("--log", str(log), "--log-format", "json", "state", "nope")
    assert res.returncode != 0
    last = json.loads(log.read_text().splitlines()[-1])
    assert last["level"] == "error" and "does not exist" in last["msg"]


def test_version(runtime):
    res = runtime("--version", check=True)
    assert "version" in res.stdout and "spec:" in res.stdout


def test_features(runtime):
    if runtime.name == "runc" and runtime("features").returncode != 0:
        pytest.skip("this runc has no features command (runc < 1.1)")
    features = json.loads(runtime("features", check=True).stdout)
    assert "prestart" in features["hooks"] and "pid" in features["linux"]["namespaces"]


def test_delete_of_a_stopped_container_removes_its_cgroup(runtime, bundle):
    bundle.command("true")
    runtime("create", "--bundle", str(bundle), "g1", check=True)
    pid = runtime.state("g1")["pid"]
    with open(f"/proc/{pid}/cgroup") as f:
        paths = [ln.split(":", 2) for ln in f.read().splitlines()]
    v2 = [p for h, c, p in paths if h == "0"][0]
    runtime("start", "g1", check=True)
    wait_status(runtime, "g1", "stopped")
    runtime("delete", "g1", check=True)
    unified = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") \
        else "/sys/fs/cgroup"
    assert v2 in ("/", "") or not os.path.exists(unified + v2)
    assert stat.S_ISDIR(os.stat(unified).st_mode)


def test_a_failing_start_container_hook_is_reported_by_run(runtime, bundle):
    """startContainer runs in the container after `start`: its failure must still reach the
    caller as an error (it once vanished: the launcher had stopped listening)."""
    bundle.edit(lambda s: s.__setitem__("hooks", {"startContainer": [
        {"path": "/bin/sh", "args": ["sh", "-c", "echo broken-hook >&2; exit 3"]}]}))
    bundle.command("echo", "SHOULD-NOT-RUN")
    res = runtime("run", "--bundle", str(bundle), "s1")
    assert res.returncode != 0 and "SHOULD-NOT-RUN" not in res.stdout
    assert "startContainer" in res.stderr or "hook" in res.stderr, res.stderr


def test_a_ctrl_c_while_run_deletes_an_exited_container(runtime, bundle):
    """The container has exited; a poststop hook sends the runtime SIGINT while `run` deletes
    it (a Ctrl-C a moment too late): minictr-runc finishes the delete and returns the
    container's status, as `minictr run` does. runc leaves its status to the signal."""
    if runtime.name != "minictr-runc":
        pytest.skip("minictr's behaviour (runc's differs and is not what is tested)")
    bundle.edit(lambda s: s.__setitem__("hooks", {"poststop": [
        {"path": "/bin/sh", "args": ["sh", "-c", "kill -INT $PPID; sleep 0.2"]}]}))
    bundle.command("sh", "-c", "echo done; exit 3")
    res = runtime("run", "--bundle", str(bundle), "late")
    assert res.returncode == 3 and res.stdout == "done\n", res
    assert "interrupted" not in res.stderr, res.stderr
    assert runtime("state", "late").returncode != 0          # deleted
    assert not [d for d in os.listdir(runtime.root) if not d.startswith(".") and d != "names"]


def test_a_capability_the_runtime_lacks_is_an_error(runtime, bundle):
    """runc's capset fails for a capability it does not hold; minictr's python-prctl limit()
    kept only the held ones, silently (issue 12). The runtime runs without CAP_SYS_TIME."""
    import prctl

    def lacking():
        prctl.capbset_drop(prctl.CAP_SYS_TIME)

    bundle.edit(lambda s: s["process"]["capabilities"]["permitted"].append("CAP_SYS_TIME"))
    res = runtime("run", "--bundle", str(bundle), "caps", preexec_fn=lacking)
    assert res.returncode != 0
    assert "CAP_SYS_TIME" in res.stderr or "operation not permitted" in res.stderr.lower(), \
        res.stderr


def _cap_sets(out: str) -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb of a `grep ^Cap /proc/self/status`, as masks."""
    return {k.rstrip(":"): int(v, 16) for k, v in (line.split() for line in out.splitlines())}


def _mask(*nums: int) -> int:
    return sum(1 << n for n in set(nums))


# linux/capability.h
CAP_KILL, CAP_NET_BIND_SERVICE, CAP_AUDIT_WRITE = 5, 10, 29


def test_inheritable_and_ambient_sets_for_a_non_root_user(runtime, bundle):
    """All five sets as the spec says, as runc applies them (issue: python-prctl's limit()
    could only lower, so inheritable stayed empty and ambient could never be raised).

    uid 1000 and a binary without file capabilities: across execve(2) the permitted and
    effective sets become the ambient set, inheritable is kept, and CAP_KILL (permitted only)
    is lost (capabilities(7), "Transformation of capabilities during execve()").
    CAP_AUDIT_WRITE is raised into inheritable from permitted, not from inheritable."""
    def change(spec):
        spec["process"]["user"] = {"uid": 1000, "gid": 1000}
        spec["process"]["capabilities"] = {
            "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
            "effective": ["CAP_NET_BIND_SERVICE"],
            "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
            "inheritable": ["CAP_AUDIT_WRITE", "CAP_NET_BIND_SERVICE"],
            "ambient": ["CAP_NET_BIND_SERVICE"]}
    bundle.edit(change)
    bundle.command("grep", "^Cap", "/proc/self/status")
    sets = _cap_sets(run_to_exit(runtime, bundle, "amb1"))
    assert sets == {"CapInh": _mask(CAP_AUDIT_WRITE, CAP_NET_BIND_SERVICE),
                    "CapPrm": _mask(CAP_NET_BIND_SERVICE),
                    "CapEff": _mask(CAP_NET_BIND_SERVICE),
                    "CapBnd": _mask(CAP_AUDIT_WRITE, CAP_KILL, CAP_NET_BIND_SERVICE),
                    "CapAmb": _mask(CAP_NET_BIND_SERVICE)}, {k: hex(v) for k, v in sets.items()}


def test_ambient_without_inheritable_is_not_raised(runtime, bundle):
    """`runc spec`'s own example lists ambient capabilities with no inheritable set: the
    kernel refuses the raise, runc goes on without them, and so does minictr. As uid 1000 the
    process keeps its effective and permitted sets only until execve(2)."""
    bundle.edit(lambda s: s["process"].__setitem__("user", {"uid": 1000, "gid": 1000}))
    bundle.command("grep", "^Cap", "/proc/self/status")
    sets = _cap_sets(run_to_exit(runtime, bundle, "amb2"))
    assert sets == {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapAmb": 0,
                    "CapBnd": _mask(CAP_AUDIT_WRITE, CAP_KILL, CAP_NET_BIND_SERVICE)}, \
        {k: hex(v) for k, v in sets.items()}


# ---------------------------------------------------------------- create's rarer options

PROC_SUPER_MAGIC, SYSFS_MAGIC = 0x9FA0, 0x62656572


def _namespace_mounts(pid: int) -> list[tuple[int, int]] | None:
    """(mount id as mountinfo shows it, superblock magic) of every mount in the mount
    namespace of ``pid``, reachable from its root or not: listmount(2) and statmount(2) of
    the namespace (Linux 6.11); None where the kernel cannot say."""
    import ctypes
    import errno
    import fcntl
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        raw = bytearray(8)
        fcntl.ioctl(fd, 0x8008B705, raw)                # NS_GET_MNTNS_ID
    except OSError:
        return None
    finally:
        os.close(fd)
    (ns_id,) = struct.unpack("Q", raw)

    def req(mnt_id: int, mask: int):                    # struct mnt_id_req (v1, 32 bytes)
        return ctypes.create_string_buffer(struct.pack("IIQQQ", 32, 0, mnt_id, mask, ns_id))

    ids = (ctypes.c_uint64 * 4096)()
    n = libc.syscall(458, req(2**64 - 1, 0), ids, 4096, 0)    # listmount(LSMT_ROOT)
    if n < 0:
        if ctypes.get_errno() in (errno.ENOSYS, errno.EINVAL):
            return None
        raise OSError(ctypes.get_errno(), "listmount")
    out = []
    for i in range(n):
        buf = ctypes.create_string_buffer(4096)
        # STATMOUNT_SB_BASIC | STATMOUNT_MNT_BASIC: sb_magic at 24, mnt_id_old at 56
        if libc.syscall(457, req(ids[i], 0x3), buf, 4096, 0) < 0:
            raise OSError(ctypes.get_errno(), "statmount")
        out.append((struct.unpack_from("I", buf.raw, 56)[0],
                    struct.unpack_from("Q", buf.raw, 24)[0]))
    return out


def test_no_pivot_enters_the_bundle_rootfs_and_keeps_no_host_proc_or_sys(runtime, bundle):
    """create --no-pivot: MS_MOVE of the rootfs onto "/" and chroot, not pivot_root(2). The
    root is the bundle's rootfs (the first process and an exec'd one see it, mountinfo's "/"
    is its bind), and the old root's mounts, which stay in the namespace out of sight, hold
    no procfs or sysfs: with one there, the kernel lets the container mount a new, unmasked
    proc (runc's msMoveRoot detaches them; minictr kept all of them)."""
    (bundle.path / "rootfs" / "marker").write_text("bundle-root\n")
    runtime("create", "--bundle", str(bundle), "--no-pivot", "np1", check=True)
    runtime("start", "np1", check=True)
    pid = runtime.state("np1")["pid"]
    assert runtime("exec", "np1", "cat", "/marker", check=True).stdout == "bundle-root\n"
    with open(f"/proc/{pid}/mountinfo") as f:        # the container's own view
        visible = {int(line.split()[0]): line.split() for line in f}
    root = [fields for fields in visible.values() if fields[4] == "/"]
    assert len(root) == 1 and root[0][3].endswith("/bundle/rootfs"), root
    mounts = _namespace_mounts(pid)
    if mounts is not None:
        hidden = [hex(magic) for mnt_id, magic in mounts if mnt_id not in visible]
        assert hidden, "--no-pivot: the old root's mounts should still be in the namespace"
        assert not {hex(PROC_SUPER_MAGIC), hex(SYSFS_MAGIC)} & set(hidden), hidden
    runtime("delete", "--force", "np1", check=True)


def test_no_new_keyring_shares_the_callers_session_keyring(runtime, bundle):
    """By default the container joins a session keyring of its own, so a key in the caller's
    is not visible in /proc/keys; with --no-new-keyring it keeps the caller's, key and all."""
    host = subprocess.run(["cat", "/proc/keys"], capture_output=True, text=True,
                          preexec_fn=own_session_keyring_with_a_secret)
    if host.returncode in (97, 98):
        pytest.skip("this kernel has no keyrings for the test to use (CONFIG_KEYS)")
    bundle.edit(lambda s: s["linux"].__setitem__(
        "maskedPaths", [p for p in s["linux"]["maskedPaths"] if p != "/proc/keys"]))
    bundle.command("cat", "/proc/keys")
    own = run_to_exit(runtime, bundle, "kr1", preexec_fn=own_session_keyring_with_a_secret)
    shared = run_to_exit(runtime, bundle, "kr2", "--no-new-keyring",
                         preexec_fn=own_session_keyring_with_a_secret)
    assert "_ses" in own and "mctest-secret" not in own, own
    assert "mctest-secret" in shared, shared


@pytest.fixture
def shared_bundle(bundle):
    """The bundle on a mount of its own in a peer group (shared:N), so that a slave root shows
    master:N in the container's mountinfo (this host's "/" may be private)."""
    path = str(bundle.path)
    subprocess.run(["mount", "--bind", path, path], check=True)
    try:
        subprocess.run(["mount", "--make-shared", path], check=True)
        with open("/proc/self/mountinfo") as f:
            line = [ln for ln in f if ln.split()[4] == path][-1]
        bundle.peer_group = [w for w in line.split(" - ")[0].split()[6:]
                             if w.startswith("shared:")][0].split(":")[1]
        yield bundle
    finally:
        subprocess.run(["umount", "--lazy", path], check=True)


@pytest.mark.parametrize("propagation", ["rslave", "private", "shared", None])
def test_rootfs_propagation_is_applied(runtime, shared_bundle, propagation):
    """linux.rootfsPropagation as "/" shows it in the container's mountinfo: a slave of the
    bundle's peer group (rslave, and runc's default), no peer at all (private), a peer group
    of its own (shared)."""
    bundle = shared_bundle

    def change(spec):
        spec["linux"].pop("rootfsPropagation", None)
        if propagation:
            spec["linux"]["rootfsPropagation"] = propagation
    bundle.edit(change)
    bundle.command("cat", "/proc/self/mountinfo")
    out = run_to_exit(runtime, bundle, "rp1")
    root = [line.split(" - ")[0].split() for line in out.splitlines()
            if len(line.split()) > 4 and line.split()[4] == "/"]
    assert len(root) == 1, out
    optional = [w for w in root[0][6:] if ":" in w]
    master = [w.split(":")[1] for w in optional if w.startswith("master:")]
    shared = [w for w in optional if w.startswith("shared:")]
    if propagation in ("rslave", None):
        assert master == [bundle.peer_group] and not shared, optional
    elif propagation == "private":
        assert optional == [], optional
    else:
        differs_in_runc(runtime, "applies a shared rootfsPropagation before making the "
                                 "rootfs's parent private, so the root ends up private")
        assert len(shared) == 1 and shared[0] != f"shared:{bundle.peer_group}", optional


@pytest.mark.parametrize("stage", ["prestart", "createRuntime"])
def test_a_hook_past_its_timeout_fails_create_and_leaves_nothing(runtime, bundle, stage):
    """A hook still running after its `timeout` is killed and create fails, naming the hook,
    with no state entry and no cgroup left; it does not wait for the hook to end."""
    cgroup = f"/mctest-hook-timeout-{os.getpid()}-{stage}"
    unified = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") \
        else "/sys/fs/cgroup"

    def change(spec):
        spec["hooks"] = {stage: [{"path": "/bin/sleep", "args": ["sleep", "20"],
                                  "timeout": 1}]}
        spec["linux"]["cgroupsPath"] = cgroup
    bundle.edit(change)
    started = time.monotonic()
    res = runtime("create", "--bundle", str(bundle), "ht1")
    took = time.monotonic() - started
    assert res.returncode != 0 and took < 10, (res.returncode, took, res.stderr)
    if runtime.name == "minictr-runc":
        first = res.stderr.strip().splitlines()[0]
        assert stage in first and "/bin/sleep" in first and "timed out" in first, res.stderr
    assert runtime("state", "ht1").returncode != 0
    assert "ht1" not in (os.listdir(runtime.root) if os.path.isdir(runtime.root) else [])
    assert not os.path.exists(unified + cgroup)


def test_systemd_cgroup_places_the_container_where_systemd_would(runtime, bundle):
    """--systemd-cgroup reads cgroupsPath as runc's "slice:prefix:name" and (runtime.md)
    makes the directory systemd would give that scope, without asking systemd: the slice
    nested as systemd.slice(5) says ("a-b.slice" in "a.slice"); delete removes it. Without
    the flag that form is an error naming --systemd-cgroup, not a directory with colons."""
    if runtime.name == "runc":
        pytest.skip("runc --systemd-cgroup asks systemd over D-Bus for a scope unit; "
                    "minictr makes the directory itself (runtime.md)")
    unified = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") \
        else "/sys/fs/cgroup"
    name = f"mctest-gaps{os.getpid()}"
    scope = f"/mctest.slice/{name}.slice/gaps-sd1.scope"
    bundle.edit(lambda s: s["linux"].__setitem__("cgroupsPath", f"{name}.slice:gaps:sd1"))
    res = runtime("create", "--bundle", str(bundle), "sd1")
    assert res.returncode != 0 and "--systemd-cgroup" in res.stderr, res.stderr
    assert runtime("state", "sd1").returncode != 0
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        runtime("--systemd-cgroup", "create", "--bundle", str(bundle), "sd1", check=True,
                **quiet)
        pid = runtime.state("sd1")["pid"]
        with open(f"/proc/{pid}/cgroup") as f:
            v2 = [ln.split(":", 2)[2] for ln in f.read().splitlines() if ln.startswith("0::")]
        assert v2 == [scope] and os.path.isdir(unified + scope), v2
        runtime("--systemd-cgroup", "delete", "--force", "sd1", check=True)
        assert not os.path.exists(unified + scope)
    finally:
        runtime("--systemd-cgroup", "delete", "--force", "sd1")
        # the slices above the scope (minictr removes only the container's own directory, as
        # runc's cgroupfs manager does), in the v2 tree and, as the bundle mounts cgroups, in
        # every v1 hierarchy
        trees = {unified} | {os.path.join("/sys/fs/cgroup", t) for t in
                             os.listdir("/sys/fs/cgroup")} if unified != "/sys/fs/cgroup" \
            else {unified}
        for tree in sorted(trees):
            for d in (scope, os.path.dirname(scope), "/mctest.slice"):
                try:
                    os.rmdir(tree + d)
                except OSError:
                    pass                            # gone, or another run's still in it
