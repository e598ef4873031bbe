"""The container side's steps against a recording syscall face: order and arguments."""

import errno

import pytest

from minictr.runtime import container, mounts, rootfs, spawn
from minictr.runtime import syscalls as sc
from minictr.runtime.rootfs import RootfsPlan

CAPS = ["CAP_CHOWN", "CAP_KILL"]
IMAGE = {"/bin/true": "/bin/true"}          # what the (absent) image answers: container -> host


def make_spec(**linux):
    return {
        "process": {"args": ["/bin/true"], "env": ["PATH=/bin"], "cwd": "/",
                    "user": {"uid": 1000, "gid": 1000, "additionalGids": [10]},
                    "capabilities": {k: CAPS for k in ("bounding", "effective", "permitted")},
                    "noNewPrivileges": True,
                    "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}]},
        "root": {"path": "/run/x/rootfs", "readonly": True},
        "hostname": "box",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc",
                    "options": ["nosuid", "noexec", "nodev"]},
                   {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                    "options": ["nosuid", "mode=755"]}],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "mount", "uts", "network")],
                  "devices": [{"path": "/dev/null", "type": "c", "major": 1, "minor": 3}],
                  "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"], **linux},
    }


def run_steps(spec, plan=None, rootless=False, preserve_fds=0, kernel=None):
    """The first process's steps from "go" to execve, against a recording face."""
    kernel = kernel or sc.RecordingSyscalls(container_root=spec["root"]["path"], lookup=IMAGE.get)
    lines = []
    ns = spawn.plan_namespaces(spec["linux"]["namespaces"])
    splan = spawn.SpawnPlan(process=spec["process"], namespaces=ns, rootless=rootless,
                            container=(spec, plan), preserve_fds=preserve_fds)
    spawn.prepare(kernel, splan, spawn.DirectChannel(None, None), 4242, 6, lines.append)
    return kernel, lines


def index(names, name, start=0):
    return names.index(name, start)


def test_order_matches_runc():
    kernel, _ = run_steps(make_spec())
    n = kernel.names()
    # a session, mcinit sealed in memory while the host's files are reachable; then lo up
    # (before any mount), mounts private before the rootfs, all mounts before pivot
    assert n[:3] == ["memfd_sealed", "setsid", "link_up"]
    assert n[3] == "mount" and kernel.calls[3][4] == sc.MS_REC | sc.MS_SLAVE
    pivot = index(n, "pivot_root")
    assert "sethostname" in n[:pivot]
    assert "mknodat" in n[:pivot]
    # masked and read-only paths after pivot_root, then the security steps in runc's order
    assert "mount" in n[pivot:]
    nnp = index(n, "set_no_new_privs")
    bset = index(n, "capbset_drop")
    groups = index(n, "setgroups")
    gid = index(n, "setresgid")
    uid = index(n, "setresuid")
    chdir = index(n, "chdir", uid)
    capset = index(n, "capset")
    close = index(n, "close_range")
    execve = index(n, "fexecve")
    assert pivot < nnp < bset < groups < gid < uid < chdir < capset < close < execve
    assert n[-1] == "fexecve"


def test_pivot_root_sequence():
    kernel, _ = run_steps(make_spec())
    n = kernel.names()
    p = index(n, "pivot_root")
    assert kernel.calls[p - 1] == ("chdir", "/run/x/rootfs")
    assert kernel.calls[p] == ("pivot_root", ".", ".")
    assert kernel.calls[p + 1] == ("umount2", ".", sc.MNT_DETACH)
    assert kernel.calls[p + 2] == ("chdir", "/")


def test_overlay_mount_data():
    plan = RootfsPlan(lowerdirs=("/s/l2", "/s/l1"), upperdir="/s/u", workdir="/s/w",
                      target="/run/x/rootfs")
    kernel, _ = run_steps(make_spec(), plan)
    overlay = [c for c in kernel.calls if c[0] == "mount" and c[3] == "overlay"]
    assert overlay == [("mount", "overlay", "/run/x/rootfs", "overlay", 0,
                        "lowerdir=/s/l2:/s/l1,upperdir=/s/u,workdir=/s/w")]
    rootless = RootfsPlan(lowerdirs=("/a",), upperdir="/u", workdir="/w", target="/t",
                          rootless=True)
    assert rootless.overlay_data().endswith(",userxattr")
    with pytest.raises(ValueError):
        RootfsPlan(lowerdirs=("/a:b",), upperdir=None, workdir=None, target="/t",
                   scratch="/s").overlay_data()


def test_exec_goes_through_mcinit_with_the_error_pipe():
    kernel, _ = run_steps(make_spec(), kernel=sc.RecordingSyscalls(
        container_root="/run/x/rootfs", lookup=lambda p: "/bin/true" if p == "/bin/true" else None))
    call = kernel.calls[-1]
    memfd = next(c for c in kernel.calls if c[0] == "memfd_sealed")
    assert call[0] == "fexecve" and kernel.names().index("memfd_sealed") < kernel.names().index(
        "pivot_root")
    assert call[2] == ["mcinit", "6", "exec", "/bin/true", "--", "/bin/true"]
    assert call[3] == {"PATH": "/bin"} and memfd[1].endswith("mcinit")
    # every fd from 3 up is close-on-exec; only the error pipe is made inheritable again
    assert ("close_range", 3, 0xFFFFFFFF, sc.CLOSE_RANGE_CLOEXEC) in kernel.calls
    assert ("set_inheritable", 6) in kernel.calls


def test_preserve_fds_moves_the_close_range_floor():
    kernel, _ = run_steps(make_spec(), preserve_fds=2)
    assert ("close_range", 5, 0xFFFFFFFF, sc.CLOSE_RANGE_CLOEXEC) in kernel.calls


def test_rootless_binds_devices_and_skips_setgroups():
    spec = make_spec()
    spec["process"]["user"] = {"uid": 0, "gid": 0}
    kernel, lines = run_steps(spec, rootless=True)
    n = kernel.names()
    assert "mknodat" not in n
    binds = [c for c in kernel.calls if c[0] == "mount" and c[1] == "/dev/null"]
    assert binds and binds[0][4] == sc.MS_BIND
    assert "setgroups" not in n


def test_read_only_root_is_remounted_after_masking():
    kernel, _ = run_steps(make_spec())
    remounts = [c for c in kernel.calls if c[0] == "mount" and c[2] == "/"
                and c[4] & sc.MS_REMOUNT]
    assert remounts and remounts[0][4] & sc.MS_RDONLY


def test_failing_call_surfaces_as_oserror_naming_it():
    kernel = sc.RecordingSyscalls(fail={"pivot_root": 22})
    with pytest.raises(OSError) as info:
        run_steps(make_spec(), kernel=kernel)
    assert info.value.errno == 22 and "pivot_root" in str(info.value)


def test_mount_options_parse():
    flags, prop, data = mounts.parse_options(["nosuid", "rbind", "ro", "rprivate", "mode=755"])
    assert flags == sc.MS_NOSUID | sc.MS_BIND | sc.MS_REC | sc.MS_RDONLY
    assert prop == sc.MS_PRIVATE | sc.MS_REC
    assert data == "mode=755"


def test_namespace_flags_skip_joined_ones():
    spec = make_spec()
    spec["linux"]["namespaces"].append({"type": "ipc", "path": "/proc/1/ns/ipc"})
    ns = spawn.plan_namespaces(spec["linux"]["namespaces"])
    assert ns.clone_flags == sc.CLONE_NEWPID | sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWNET
    assert ns.child_joins == (("ipc", "/proc/1/ns/ipc"),) and not ns.parent_joins


def test_joined_namespaces_go_where_the_kernel_allows_them():
    def plan(*entries):
        return spawn.plan_namespaces([dict(e) for e in entries])

    # with a new user namespace, the launcher joins a host-owned netns around the clone
    p = plan({"type": "user"}, {"type": "mount"}, {"type": "network", "path": "/n"},
             {"type": "pid", "path": "/p"}, {"type": "cgroup"})
    assert p.parent_joins == (("network", "/n"), ("pid", "/p"))
    assert p.clone_flags == sc.CLONE_NEWUSER | sc.CLONE_NEWNS and p.new_cgroup_ns
    # an exec: everything joined, the user namespace first and the mount namespace last
    p = plan(*spawn.joined_namespaces(7, [{"type": t} for t in
                                          ("mount", "pid", "user", "network", "cgroup")]))
    assert [k for k, _ in p.child_joins] == ["user", "network", "cgroup", "mount"]
    assert p.parent_joins == (("pid", "/proc/7/ns/pid"),) and p.clone_flags == 0
    # a joined user namespace: new ones are unshared inside it; a new pid ns cannot be
    p = plan({"type": "user", "path": "/u"}, {"type": "mount"}, {"type": "uts"})
    assert p.child_unshare == sc.CLONE_NEWNS | sc.CLONE_NEWUTS and p.clone_flags == 0
    from minictr.errors import SpecError

    with pytest.raises(SpecError):
        plan({"type": "user", "path": "/u"}, {"type": "mount"}, {"type": "pid"})
    with pytest.raises(SpecError):
        plan({"type": "pid"})                   # no mount namespace
    with pytest.raises(SpecError):
        plan({"type": "mount"}, {"type": "time"})


def test_real_syscall_errors_name_the_call(tmp_path):
    with pytest.raises(OSError) as info:
        sc.Syscalls().pivot_root(str(tmp_path / "missing"), str(tmp_path))
    assert "pivot_root(" in str(info.value) and info.value.errno == 2


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:40 / /home rw,relatime shared:20 - nfs4 server:/home rw,vers=4.2
41 22 0:41 / /home/local rw,relatime shared:21 - xfs /dev/sdb1 rw
"""


def test_filesystem_type_takes_the_longest_mount_point(tmp_path):
    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO)
    assert rootfs.filesystem_type("/home/alice/x", str(mi)) == "nfs4"
    assert rootfs.filesystem_type("/home/local/x", str(mi)) == "xfs"
    assert rootfs.filesystem_type("/var/lib", str(mi)) == "ext4"


def test_upper_dir_on_nfs_is_refused_with_a_hint(tmp_path):
    from minictr.errors import RuntimeSetupError

    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO.replace("/home rw", f"{tmp_path} rw"))
    plan = RootfsPlan(lowerdirs=("/l",), upperdir=str(tmp_path / "c" / "upper"),
                      workdir=str(tmp_path / "c" / "work"), target="/t")
    with pytest.raises(RuntimeSetupError) as info:
        rootfs.check_upper_filesystem(plan, str(mi))
    assert "nfs4" in str(info.value) and "--root" in info.value.hint


def test_volatile_upper_only_for_throwaway_containers():
    plan = RootfsPlan(lowerdirs=("/l",), upperdir="/u", workdir="/w", target="/t", volatile=True)
    assert plan.overlay_data().endswith(",volatile")
    kept = RootfsPlan(lowerdirs=("/l",), upperdir="/u", workdir="/w", target="/t")
    assert "volatile" not in kept.overlay_data()


class _FakeCgroup:
    def __init__(self, path):
        self.v2_path = path


def test_first_process_is_born_in_its_cgroup(tmp_path):
    kernel = sc.RecordingSyscalls()
    pid, born_in = spawn._clone_into(kernel, sc.CLONE_NEWPID, _FakeCgroup(str(tmp_path)),
                                         None)
    clones = [c for c in kernel.calls if c[0].startswith("clone")]
    assert [c[0] for c in clones] == ["clone3"] and born_in == str(tmp_path)
    assert clones[0][1] == sc.CLONE_NEWPID and clones[0][2] >= 0


def test_without_clone3_it_falls_back_to_clone_and_a_cgroup_write(tmp_path):
    import errno

    kernel = sc.RecordingSyscalls(fail={"clone3": errno.ENOSYS})
    pid, born_in = spawn._clone_into(kernel, sc.CLONE_NEWPID, _FakeCgroup(str(tmp_path)),
                                         None)
    assert [n for n in kernel.names() if n.startswith("clone")] == ["clone3", "clone"]
    assert born_in is None
    kernel = sc.RecordingSyscalls()
    assert spawn._clone_into(kernel, 0, None, None)[1] is None
    assert kernel.names() == ["clone"]


def test_bounding_set_drops_numbers_no_table_names():
    """Every number up to 63 is dropped, not only those python-prctl or the kernel's
    cap_last_cap name: a capability newer than both must not stay in the bounding set."""
    from minictr.runtime import capabilities

    dropped = []

    class Kernel:
        def __init__(self, last):
            self.last = last

        def capbset_drop(self, num):
            if num > self.last:
                raise OSError(errno.EINVAL, "beyond this kernel")
            dropped.append(num)

    capabilities.drop_bounding_set(Kernel(63), {"bounding": ["CAP_CHOWN", "CAP_KILL"]}, None)
    assert dropped == [n for n in range(64) if n not in (0, 5)]
    dropped.clear()
    capabilities.drop_bounding_set(Kernel(40), {"bounding": ["CAP_CHOWN"]}, None)
    assert dropped == list(range(1, 41))

    class Refusing:
        def capbset_drop(self, num):
            raise OSError(errno.EPERM, "no CAP_SETPCAP")

    with pytest.raises(OSError):          # a bounding set that cannot be dropped is an error
        capabilities.drop_bounding_set(Refusing(), {"bounding": []}, None)


def test_capbset_drop_goes_raw_where_python_prctl_does_not_know_the_number():
    """python-prctl raises ValueError for a number beyond its build's table; the syscall face
    must then ask the kernel (EINVAL here, past cap_last_cap) instead of giving up."""
    import os

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sc.Syscalls().capbset_drop(63)
        except OSError as err:
            code = 0 if err.errno == errno.EINVAL else 2
        except BaseException:                # noqa: BLE001 - ValueError: never reached the kernel
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_capability_sets_after_the_uid_change_in_runcs_order():
    """runc: bounding set, keep-caps on, groups/gid/uid, keep-caps off, one capset of
    effective, permitted and inheritable (exactly the spec's: inheritable is raised, not only
    lowered), ambient cleared, then each ambient capability raised."""
    spec = make_spec()
    spec["process"]["capabilities"] = {
        "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "effective": ["CAP_NET_BIND_SERVICE"], "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "inheritable": ["CAP_AUDIT_WRITE", "CAP_NET_BIND_SERVICE"],
        "ambient": ["CAP_NET_BIND_SERVICE"]}
    kernel, _ = run_steps(spec)
    calls = kernel.calls
    n = kernel.names()
    bset, uid = index(n, "capbset_drop"), index(n, "setresuid")
    keep_on = calls.index(("set_keepcaps", True))
    keep_off = calls.index(("set_keepcaps", False))
    capset = index(n, "capset")
    clear = index(n, "cap_ambient_clear_all")
    assert bset < keep_on < uid < keep_off < capset < clear < n.index("fexecve")
    # effective, permitted, inheritable, by number in the spec's order
    assert calls[capset] == ("capset", [10], [5, 10], [29, 10])
    raises = [c for c in calls if c[0] == "cap_ambient_raise"]
    assert raises == [("cap_ambient_raise", 10)] and calls.index(raises[0]) > clear


def test_docker_default_sets_leave_inheritable_and_ambient_empty():
    """The default run (docker's: no inheritable, no ambient): the capset is what it was
    with python-prctl's limit(), and nothing is raised."""
    kernel, _ = run_steps(make_spec())
    capset = [c for c in kernel.calls if c[0] == "capset"]
    assert capset == [("capset", [0, 5], [0, 5], [])]
    assert "cap_ambient_clear_all" in kernel.names()
    assert "cap_ambient_raise" not in kernel.names()


def _status_masks() -> dict[str, int]:
    with open("/proc/self/status") as f:
        return {line.split(":")[0]: int(line.split()[1], 16) for line in f
                if line.startswith("Cap")}


def test_capset_raises_inheritable_and_ambient_follows():
    """The real face in a forked child: capset(2) gives inheritable a capability permitted
    holds (python-prctl's limit() could only take one away), and the ambient raise then works;
    a capability outside permitted and inheritable is refused (EPERM)."""
    import os

    bind = 10                                       # CAP_NET_BIND_SERVICE
    if not _status_masks()["CapPrm"] >> bind & 1:
        pytest.skip("needs CAP_NET_BIND_SERVICE in the permitted set (root)")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            face = sc.Syscalls()
            face.capset([bind], [bind, 5], [bind])
            face.cap_ambient_clear_all()
            face.cap_ambient_raise(bind)
            try:
                face.cap_ambient_raise(5)           # CAP_KILL: permitted, not inheritable
                refused = 0
            except PermissionError:
                refused = 1
            m = _status_masks()
            os.write(w, f"{m['CapEff']} {m['CapPrm']} {m['CapInh']} {m['CapAmb']} "
                        f"{refused}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [int(x) for x in out.split()] == [1 << bind, 1 << bind | 1 << 5, 1 << bind,
                                             1 << bind, 1]


def test_ambient_capabilities_the_kernel_will_refuse_are_named():
    from minictr.runtime import lifecycle
    from minictr.runtime.capabilities import unraisable_ambient

    caps = {"permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
            "inheritable": ["CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"],
            "ambient": ["CAP_NET_BIND_SERVICE", "CAP_KILL", "CAP_AUDIT_WRITE"]}
    assert unraisable_ambient(caps) == ["CAP_AUDIT_WRITE", "CAP_KILL"]
    said = []
    userns = {"linux": {"namespaces": [{"type": "user"}]}}   # every capability is given there
    lifecycle._check_capabilities({"capabilities": caps}, userns, said.append)
    assert len(said) == 1 and "CAP_AUDIT_WRITE, CAP_KILL" in said[0]
    said.clear()
    lifecycle._check_capabilities({"capabilities": dict(caps, ambient=[
        "CAP_NET_BIND_SERVICE"])}, userns, said.append)
    assert said == []
