"""cgroup writers against fake cgroup trees in tmp_path (no privilege).

``FakeCgroupFiles`` imitates what the kernel does on cgroupfs that matters here: mkdir fills a
new cgroup with the interface files of the controllers its parent enables (v2) or of its
hierarchy (v1), cgroup.subtree_control refuses controllers the cgroup does not have and
(the "no internal processes" rule) refuses a non-root cgroup with processes, and writing a pid
to cgroup.procs moves it out of its old cgroup.
"""
import errno
import os
import shutil

import pytest

from minictr.errors import RuntimeSetupError
from minictr.runtime import cgroup_layout, cgroup_v1, cgroup_v2, cgroups
from minictr.runtime.syscalls import RecordingSyscalls

V2_FILES = {"memory": ["memory.max", "memory.swap.max", "memory.low", "memory.current",
                       "memory.events", "memory.high"],
            "pids": ["pids.max", "pids.current"], "cpu": ["cpu.max", "cpu.weight", "cpu.idle"],
            "cpuset": ["cpuset.cpus", "cpuset.mems"], "hugetlb": ["hugetlb.2MB.max"]}
V1_FILES = {"memory": ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes",
                       "memory.soft_limit_in_bytes", "memory.usage_in_bytes",
                       "memory.oom_control", "memory.swappiness"],
            "pids": ["pids.max", "pids.current"],
            "cpu": ["cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us"],
            "cpuacct": ["cpuacct.usage"], "cpuset": ["cpuset.cpus", "cpuset.mems"]}


class FakeCgroupFiles(cgroups.CgroupFiles):
    def __init__(self, root, *, owners=None, swap=True, fail=None):
        self.root = str(root)
        self.owners = owners or {}
        self.swap = swap
        self.fail = fail or {}          # file name -> errno to fail its write with

    def _touch(self, path, content=""):
        with open(path, "w") as f:
            f.write(content)

    def mkdir(self, path, explain=None):
        super().mkdir(path, explain)
        parent = os.path.dirname(path)
        self._touch(os.path.join(path, "cgroup.procs"))
        if os.path.exists(os.path.join(parent, "cgroup.subtree_control")):     # v2
            enabled = self.read(os.path.join(parent, "cgroup.subtree_control")).split()
            self._touch(os.path.join(path, "cgroup.controllers"), " ".join(enabled))
            self._touch(os.path.join(path, "cgroup.subtree_control"))
            self._touch(os.path.join(path, "cpu.stat"), "usage_usec 0\n")
            for name in enabled:
                for f in V2_FILES[name]:
                    self._touch(os.path.join(path, f))
        else:                                                                   # v1: as parent
            for f in os.listdir(parent):
                if os.path.isfile(os.path.join(parent, f)) and f != "cgroup.procs":
                    self._touch(os.path.join(path, f), "" if f.startswith("cpuset.") else "0")

    def write(self, path, value, explain=None):
        name = os.path.basename(path)
        if name in self.fail:
            raise OSError(self.fail[name], os.strerror(self.fail[name]))
        directory = os.path.dirname(path)
        if name == "cgroup.subtree_control":
            return self._subtree_control(path, directory, value, explain)
        if name == "cgroup.procs" and os.path.exists(path):
            return self._move(path, value, explain)
        super().write(path, value, explain)          # ENOENT when the file is missing
        self._touch(path, value)

    def _subtree_control(self, path, directory, value, explain):
        if explain:
            explain(f"write {value} > {path}")
        available = self.read(os.path.join(directory, "cgroup.controllers")).split()
        enabled = self.read(path).split()
        for word in value.split():
            if word[1:] not in available:
                raise OSError(errno.ENOENT, "No such file or directory")
            if self.read(os.path.join(directory, "cgroup.procs")).split() and not \
                    os.path.exists(os.path.join(directory, "cgroup.is_root")):
                raise OSError(errno.EBUSY, "Device or resource busy")
            enabled.append(word[1:])
        self._touch(path, " ".join(sorted(set(enabled))))
        for child in os.scandir(directory):        # existing children get the files at once
            if child.is_dir():
                self._touch(os.path.join(child.path, "cgroup.controllers"), " ".join(enabled))
                for name in enabled:
                    for f in V2_FILES[name]:
                        if not os.path.exists(os.path.join(child.path, f)):
                            self._touch(os.path.join(child.path, f))

    def _move(self, path, pid, explain):
        if explain:
            explain(f"write {pid} > {path}")
        scope = self.root                  # the hierarchy: the v2 root, or one v1 mount
        if not os.path.exists(os.path.join(scope, "cgroup.controllers")):
            scope = os.path.join(scope, os.path.relpath(path, scope).split(os.sep)[0])
        for dirpath, _, files in os.walk(scope):
            if "cgroup.procs" in files:
                procs_file = os.path.join(dirpath, "cgroup.procs")
                pids = [p for p in self.read(procs_file).split() if p != pid]
                self._touch(procs_file, "\n".join(pids))
        self._touch(path, (self.read(path) + "\n" + pid).strip())

    def rmdir(self, path):
        if any(e.is_dir() for e in os.scandir(path)):
            raise OSError(errno.ENOTEMPTY, "Directory not empty")
        if self.read(os.path.join(path, "cgroup.procs")).split():
            raise OSError(errno.EBUSY, "Device or resource busy")
        shutil.rmtree(path)            # interface files are not contents to the kernel

    def owner(self, path):
        return self.owners.get(path, 0)

    def host_has_swap(self):
        return self.swap


def _tree(root, files: dict):
    for rel, content in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(content)


def v2_host(tmp_path, *, own="/", procs_in_own="", controllers="cpuset cpu io memory hugetlb pids"):
    root = tmp_path / "cgroup"
    files = {"cgroup.controllers": controllers, "cgroup.subtree_control": "",
             "cgroup.procs": "1", "cgroup.is_root": ""}
    parts = [p for p in own.split("/") if p]
    for i in range(len(parts)):
        rel = "/".join(parts[:i + 1])
        files[f"{rel}/cgroup.controllers"] = controllers
        files[f"{rel}/cgroup.subtree_control"] = ""
        files[f"{rel}/cgroup.procs"] = procs_in_own if i == len(parts) - 1 else ""
    _tree(root, files)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(f"0::{own}\n")
    return str(root), str(proc)


def hybrid_host(tmp_path, own_memory="/process_api/abc"):
    root = tmp_path / "cgroup"
    files = {"unified/cgroup.controllers": "hugetlb", "unified/cgroup.subtree_control": "",
             "unified/cgroup.procs": "1", "unified/cgroup.is_root": ""}
    for name, names in V1_FILES.items():
        for f in names + ["cgroup.procs"]:
            files[f"{name}/{f}"] = "0-1" if f.startswith("cpuset.") else "0"
    for f in V1_FILES["memory"] + ["cgroup.procs"]:
        files[f"memory{own_memory}/{f}"] = "0"
    files[f"memory{own_memory}/memory.limit_in_bytes"] = "999"
    _tree(root, files)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(f"9:name=systemd:/\n8:pids:/\n4:memory:{own_memory}\n3:cpuset:/\n"
                    f"2:cpuacct:/\n1:cpu:/\n0::/\n")
    return str(root), str(proc)


def read(path):
    with open(path) as f:
        return f.read().strip()


LIMITS = {"memory": {"limit": 512 << 20, "swap": 1024 << 20, "reservation": 256 << 20},
          "pids": {"limit": 64}, "cpu": {"shares": 1024, "quota": 50000, "period": 100000}}


def setup(root, proc, resources, *, fs=None, kernel=None, log=None, **kw):
    kw.setdefault("container_id", "c1")
    kw.setdefault("cgroups_path", None)
    kw.setdefault("rootless", False)
    return cgroups.setup(resources, kernel=kernel or RecordingSyscalls(),
                         explain=(log.append if log is not None else None),
                         cgroup_root=root, proc_self_cgroup=proc,
                         fs=fs or FakeCgroupFiles(root), **kw)


# ---------------------------------------------------------------- detection


def test_detect_pure_v2(tmp_path):
    root, proc = v2_host(tmp_path, own="/user.slice/s")
    layout = cgroup_layout.detect_layout(cgroups.CgroupFiles(), root, proc)
    assert layout.kind == "v2" and layout.v2_mount == root and layout.own_v2 == "/user.slice/s"
    assert "memory" in layout.v2_controllers and layout.v1_mounts == {}


def test_detect_hybrid(tmp_path):
    root, proc = hybrid_host(tmp_path)
    layout = cgroup_layout.detect_layout(cgroups.CgroupFiles(), root, proc)
    assert layout.kind == "hybrid" and layout.v2_controllers == {"hugetlb"}
    assert layout.v1_mounts["memory"] == os.path.join(root, "memory")
    assert layout.own_v1["memory"] == "/process_api/abc" and layout.own_v2 == "/"
    assert "name=systemd" not in layout.own_v1 and layout.own_v1["systemd"] == "/"


# ---------------------------------------------------------------- pure v2


def test_v2_limits_written(tmp_path):
    root, proc = v2_host(tmp_path)
    log = []
    cg = setup(root, proc, LIMITS, log=log)
    path = os.path.join(root, "minictr-c1")
    assert cg.paths == [path]
    assert read(f"{path}/memory.max") == str(512 << 20)
    assert read(f"{path}/memory.swap.max") == str(512 << 20)      # swap is memory+swap in OCI
    assert read(f"{path}/memory.low") == str(256 << 20)
    assert read(f"{path}/pids.max") == "64"
    assert read(f"{path}/cpu.max") == "50000 100000"
    assert read(f"{path}/cpu.weight") == "39"                     # runc's shares->weight map
    assert set(read(f"{root}/cgroup.subtree_control").split()) >= {"memory", "pids", "cpu"}
    assert f"write {512 << 20} > {path}/memory.max" in log
    cg.destroy()
    assert not os.path.exists(path)


def test_v2_device_filter_attached_and_detached(tmp_path):
    root, proc = v2_host(tmp_path)
    kernel, log = RecordingSyscalls(), []
    rules = [{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 1,
                                                 "minor": 3, "access": "rwm"}]
    cg = setup(root, proc, {"devices": rules}, kernel=kernel, log=log)
    from minictr.runtime import syscalls
    cmds = [c[1] for c in kernel.calls if c[0] == "bpf"]
    assert cmds == [syscalls.BPF_PROG_LOAD, syscalls.BPF_PROG_ATTACH]
    assert any("deny a *:* rwm; allow c 1:3 rwm" in line for line in log)
    prog_fd = cg.prog_fd
    cg.destroy()
    cmds = [c[1] for c in kernel.calls if c[0] == "bpf"]
    assert cmds[-1] == syscalls.BPF_PROG_DETACH and ("close", prog_fd) in kernel.calls


def test_v2_own_cgroup_with_processes_moves_them_to_a_leaf(tmp_path):
    root, proc = v2_host(tmp_path, own="/user.slice/job", procs_in_own="100\n101")
    cg = setup(root, proc, {"pids": {"limit": 10}})
    own = os.path.join(root, "user.slice/job")
    assert read(f"{own}/cgroup.procs") == ""
    assert read(f"{own}/{cgroup_v2.LEAF}/cgroup.procs").split() == ["100", "101"]
    assert read(f"{own}/minictr-c1/pids.max") == "10"
    # a second launch from the leaf goes beside it, not below it
    proc2 = tmp_path / "proc2"
    proc2.write_text(f"0::/user.slice/job/{cgroup_v2.LEAF}\n")
    cg2 = setup(root, str(proc2), {"pids": {"limit": 5}}, container_id="c2")
    assert cg2.paths == [f"{own}/minictr-c2"]
    cg.destroy()
    cg2.destroy()
    assert os.path.isdir(f"{own}/{cgroup_v2.LEAF}")          # still holds the processes


def test_v2_processes_in_a_foreign_ancestor_is_an_error(tmp_path):
    root, proc = v2_host(tmp_path, own="/a/b")
    with open(os.path.join(root, "a/cgroup.procs"), "w") as f:
        f.write("77")
    with pytest.raises(RuntimeSetupError, match="has processes"):
        setup(root, proc, {"memory": {"limit": 1 << 20}})
    assert not os.path.exists(os.path.join(root, "a/b/minictr-c1"))    # nothing left behind


def test_v2_controller_not_enabled_above_a_delegated_cgroup(tmp_path):
    root, proc = v2_host(tmp_path, own="/a")
    fs = FakeCgroupFiles(root, fail={"cgroup.subtree_control": errno.EACCES})
    with pytest.raises(RuntimeSetupError, match="cannot write '\\+memory'") as info:
        setup(root, proc, {"memory": {"limit": 1 << 20}}, fs=fs)
    assert "Delegate=yes" in info.value.hint
    assert not os.path.exists(os.path.join(root, "a/minictr-c1"))


def test_v2_controller_missing_in_an_ancestor(tmp_path):
    root, _ = v2_host(tmp_path, own="/a", controllers="cpu pids")
    with pytest.raises(RuntimeSetupError, match="'memory' is not available"):
        cgroup_v2.enable_controllers(FakeCgroupFiles(root), root, f"{root}/a/c", {"memory"},
                                     movable=None, required=True, explain=None)
    missing = cgroup_v2.enable_controllers(FakeCgroupFiles(root), root, f"{root}/a/c",
                                           {"memory", "pids"}, movable=None, required=False,
                                           explain=None)
    assert missing == {"memory"} and read(f"{root}/cgroup.subtree_control") == "pids"


def test_v2_swap_without_accounting(tmp_path):
    root, proc = v2_host(tmp_path)
    V2_FILES["memory"].remove("memory.swap.max")
    try:
        with pytest.raises(RuntimeSetupError, match="swap accounting"):
            setup(root, proc, {"memory": {"limit": 1 << 20, "swap": 2 << 20}})
        cg = setup(root, proc, {"memory": {"limit": 1 << 20, "swap": 2 << 20}},
                   fs=FakeCgroupFiles(root, swap=False), container_id="c2")
        assert read(f"{cg.paths[0]}/memory.max") == str(1 << 20)
    finally:
        V2_FILES["memory"].append("memory.swap.max")


@pytest.mark.parametrize("resources, match", [
    ({"memory": {"disableOOMKiller": True}}, "disableOOMKiller"),
    ({"memory": {"swappiness": 10}}, "swappiness"),
    ({"memory": {"swap": 1 << 20}}, "without memory.limit"),
    ({"cpu": {"realtimeRuntime": 1000}}, "realtime"),
    ({"blockIO": {"weight": 10}}, "blockIO"),
    ({"unified": {"../x": "1"}}, "not a cgroup file"),
])
def test_v2_unappliable_limits_are_errors(tmp_path, resources, match):
    root, proc = v2_host(tmp_path)
    with pytest.raises(RuntimeSetupError, match=match):
        setup(root, proc, resources)
    assert not os.path.exists(os.path.join(root, "minictr-c1"))


def test_v2_unified_written_and_its_controller_enabled(tmp_path):
    root, proc = v2_host(tmp_path)
    cg = setup(root, proc, {"unified": {"memory.high": "1000000"}})
    assert read(f"{cg.paths[0]}/memory.high") == "1000000"


def test_failed_write_cleans_up(tmp_path):
    root, proc = v2_host(tmp_path)
    with pytest.raises(RuntimeSetupError, match="pids.max"):
        setup(root, proc, LIMITS, fs=FakeCgroupFiles(root, fail={"pids.max": errno.EINVAL}))
    assert not os.path.exists(os.path.join(root, "minictr-c1"))


def test_cgroups_path_forms(tmp_path):
    mount = "/m"
    assert cgroup_layout.container_path(mount, "/own", None, "x") == "/m/own/minictr-x"
    assert cgroup_layout.container_path(mount, "/own", "/a/b", "x") == "/m/a/b"
    assert cgroup_layout.container_path(mount, "/own", "a/b", "x") == "/m/own/a/b"
    for bad in ("system.slice:minictr:x", "/a/../../etc"):
        with pytest.raises(RuntimeSetupError):
            cgroup_layout.container_path(mount, "/own", bad, "x")


def test_nested_cgroups_path_made_and_removed(tmp_path):
    root, proc = v2_host(tmp_path)
    cg = setup(root, proc, {"pids": {"limit": 3}}, cgroups_path="/minictr/box")
    assert cg.paths == [os.path.join(root, "minictr/box")]
    assert read(os.path.join(root, "minictr/box/pids.max")) == "3"
    cg.destroy()
    assert not os.path.exists(os.path.join(root, "minictr"))


# ---------------------------------------------------------------- hybrid and v1


def test_hybrid_limits_go_to_v1_children_filter_to_v2(tmp_path):
    root, proc = hybrid_host(tmp_path)
    kernel = RecordingSyscalls()
    cg = setup(root, proc, {**LIMITS, "devices": [{"allow": True}]}, kernel=kernel)
    mem = os.path.join(root, "memory/process_api/abc/minictr-c1")
    assert cg.paths[0] == os.path.join(root, "unified/minictr-c1")
    assert mem in cg.paths and os.path.join(root, "pids/minictr-c1") in cg.paths
    assert read(f"{mem}/memory.limit_in_bytes") == str(512 << 20)
    assert read(f"{mem}/memory.memsw.limit_in_bytes") == str(1024 << 20)
    assert read(os.path.join(root, "memory/process_api/abc/memory.limit_in_bytes")) == "999"
    assert read(os.path.join(root, "cpu/minictr-c1/cpu.cfs_quota_us")) == "50000"
    assert read(os.path.join(root, "cpu/minictr-c1/cpu.shares")) == "1024"
    assert os.path.join(root, "cpuacct/minictr-c1") in cg.paths       # for stats
    assert [c[0] for c in kernel.calls].count("bpf") == 2
    cg.add_process(4242)
    for path in cg.paths:
        assert read(f"{path}/cgroup.procs") == "4242"
    with pytest.raises(RuntimeSetupError, match="cannot remove cgroup"):
        cg.destroy(drain_seconds=0)             # the process has not exited
    for path in cg.paths:
        with open(f"{path}/cgroup.procs", "w"):
            pass                                # now it has: a second destroy finishes
    cg.destroy()
    assert not any(os.path.exists(p) for p in cg.paths)


def test_without_limits_only_the_v2_tree_is_joined(tmp_path):
    root, proc = hybrid_host(tmp_path)
    cg = setup(root, proc, {})
    assert cg.paths == [os.path.join(root, "unified/minictr-c1")]


def test_a_spec_that_mounts_its_cgroups_gets_one_in_every_v1_hierarchy(tmp_path):
    """every_v1 (the spec has a "cgroup" mount): a cgroup of its own in every hierarchy,
    limited or not, named ones too, each required; beside the launcher's own cgroup (memory)."""
    root, proc = hybrid_host(tmp_path)
    _tree(root, {"systemd/cgroup.procs": "1", "freezer/cgroup.procs": "1"})
    cg = setup(root, proc, {"pids": {"limit": 9}}, every_v1=True)
    assert sorted(cg.paths) == sorted(os.path.join(root, p, "minictr-c1") for p in (
        "unified", "cpu", "cpuacct", "cpuset", "freezer", "pids", "systemd",
        "memory/process_api/abc"))
    assert read(os.path.join(root, "pids/minictr-c1/pids.max")) == "9"
    layout = cgroup_layout.detect_layout(cgroups.CgroupFiles(), root, proc)
    targets = cgroup_layout.plan_targets(layout, {}, {}, cgroups_path=None, container_id="c1",
                                         rootless=False, attach_filter=False, every_v1=True)
    assert all(t.required for t in targets if t.version == 1)
    rootless = cgroup_layout.plan_targets(layout, {}, {}, cgroups_path=None, container_id="c1",
                                          rootless=True, attach_filter=False, every_v1=True)
    assert [t.version for t in rootless] == [2]


def test_cgroups_the_container_made_below_its_own_are_removed(tmp_path):
    """A container with a writable cgroup mount (systemd, a nested runtime) makes cgroups
    inside its own; removing the container removes them first, deepest first (rmdir of a
    cgroup with children fails), as runc does."""
    root, proc = hybrid_host(tmp_path)
    fs = FakeCgroupFiles(root)
    cg = setup(root, proc, {"pids": {"limit": 5}}, fs=fs, every_v1=True)
    for path in cg.paths:
        fs.mkdir(os.path.join(path, "init.scope"))
        fs.mkdir(os.path.join(path, "system.slice"))
        fs.mkdir(os.path.join(path, "system.slice", "a.service"))
    cgroups.Cgroup.from_paths(cg.paths, fs=fs).destroy(drain_seconds=0)   # as `rm` does
    assert not any(os.path.exists(p) for p in cg.paths)


@pytest.mark.parametrize("rootless", [False, True])
def test_a_cgroup_tree_that_cannot_be_written_is_an_error_with_a_hint(tmp_path, rootless,
                                                                      monkeypatch):
    """As root, a read-only cgroup filesystem (inside another container) is said so; rootless,
    the hint is delegation."""
    root, proc = (hybrid_host if not rootless else v2_host)(tmp_path)
    fs = FakeCgroupFiles(root, owners={root: os.geteuid()})

    def refuse(path, explain=None):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(fs, "mkdir", refuse)
    with pytest.raises(RuntimeSetupError) as err:
        setup(root, proc, {"pids": {"limit": 5}}, fs=fs, rootless=rootless, every_v1=True)
    assert "cannot create cgroup" in str(err.value) and "Read-only" in str(err.value)
    assert ("Delegate=yes" in err.value.hint) == rootless
    assert ("not writable here" in err.value.hint) == (not rootless)


def test_hybrid_unified_for_a_v1_controller_is_an_error(tmp_path):
    root, proc = hybrid_host(tmp_path)
    with pytest.raises(RuntimeSetupError, match="on cgroup v1"):
        setup(root, proc, {"unified": {"memory.high": "1"}})


def test_hybrid_cpu_weight_hints_at_shares(tmp_path):
    root, proc = hybrid_host(tmp_path)
    with pytest.raises(RuntimeSetupError, match="cpu.weight") as info:
        setup(root, proc, {"unified": {"cpu.weight": "100"}})
    assert "--cpu-shares" in info.value.hint


def test_v1_cpuset_inherits_parent(tmp_path):
    root, proc = hybrid_host(tmp_path)
    cg = setup(root, proc, {"cpu": {"cpus": "1"}})
    path = os.path.join(root, "cpuset/minictr-c1")
    assert read(f"{path}/cpuset.cpus") == "1" and read(f"{path}/cpuset.mems") == "0-1"
    cg.destroy()


def test_pure_v1_device_rules_go_to_the_devices_controller(tmp_path):
    root, proc = hybrid_host(tmp_path)
    os.remove(os.path.join(root, "unified/cgroup.controllers"))
    _tree(root, {"devices/devices.allow": "", "devices/devices.deny": "",
                 "devices/cgroup.procs": ""})
    kernel, log = RecordingSyscalls(), []
    rules = [{"allow": False}, {"allow": True, "type": "c", "major": 1, "minor": 3}]
    cg = setup(root, proc, {"devices": rules}, kernel=kernel, log=log)
    path = os.path.join(root, "devices/minictr-c1")
    assert path in cg.paths and not kernel.calls                  # no eBPF on pure v1
    writes = [line for line in log if line.startswith("write ") and "/devices." in line]
    assert writes == [f"write a > {path}/devices.deny", f"write c 1:3 rwm > {path}/devices.allow"]
    cg.destroy()


def test_pure_v1_without_devices_controller(tmp_path):
    root, proc = hybrid_host(tmp_path)
    os.remove(os.path.join(root, "unified/cgroup.controllers"))
    with pytest.raises(RuntimeSetupError, match="neither"):
        setup(root, proc, {"devices": [{"allow": True}]})


def rule(allow, kind="a", major=None, minor=None, access="rwm"):
    return {"allow": allow, "type": kind, "major": major, "minor": minor, "access": access}


@pytest.mark.parametrize("rules, writes", [
    ([], [("devices.deny", "a")]),                                     # OCI default: deny
    ([rule(True)], [("devices.allow", "a")]),
    ([rule(False), rule(True, "c", 1, 3), rule(True, "c", 136, None, "rw")],
     [("devices.deny", "a"), ("devices.allow", "c 1:3 rwm"), ("devices.allow", "c 136:* rw")]),
    # a rule before the last deny-all is moot
    ([rule(True, "c", 1, 3), rule(False), rule(True, "b", 8, 0, "r")],
     [("devices.deny", "a"), ("devices.allow", "b 8:0 r")]),
    # type "a" with numbers is two lines on v1
    ([rule(False), rule(True, "a", 7, None, "m")],
     [("devices.deny", "a"), ("devices.allow", "c 7:* m"), ("devices.allow", "b 7:* m")]),
    # default allow with a hole
    ([rule(True), rule(False, "c", 1, None)],
     [("devices.allow", "a"), ("devices.deny", "c 1:* rwm")]),
    # a later rule back to the default takes bits out of the exceptions it covers
    ([rule(False), rule(True, "c", 1, 3), rule(True, "c", 1, 5), rule(False, "c", 1, None, "w")],
     [("devices.deny", "a"), ("devices.allow", "c 1:3 rwm"), ("devices.allow", "c 1:5 rwm"),
      ("devices.deny", "c 1:3 w"), ("devices.deny", "c 1:5 w")]),
    # ...and one that touches nothing allowed is a no-op
    ([rule(False), rule(True, "c", 1, 3), rule(False, "b", None, None)],
     [("devices.deny", "a"), ("devices.allow", "c 1:3 rwm")]),
])
def test_v1_devices_files(rules, writes):
    assert cgroup_v1.devices_files(rules) == writes


def test_v1_devices_cannot_cut_into_a_wider_rule():
    with pytest.raises(RuntimeSetupError, match="cannot express"):
        cgroup_v1.devices_files([rule(False), rule(True, "c", 136, None), rule(False, "c", 136, 1)])


# ---------------------------------------------------------------- rootless


def test_rootless_delegated(tmp_path):
    root, proc = v2_host(tmp_path, own="/user.slice/app.scope", procs_in_own="500")
    own = os.path.join(root, "user.slice/app.scope")
    kernel, log = RecordingSyscalls(), []
    cg = setup(root, proc, {"pids": {"limit": 7}, "devices": [{"allow": False}]},
               rootless=True, kernel=kernel, log=log,
               fs=FakeCgroupFiles(root, owners={os.path.join(root, "user.slice"): 1000}))
    assert cg.paths == [f"{own}/minictr-c1"]
    assert read(f"{own}/minictr-c1/pids.max") == "7"
    assert not kernel.calls                               # no device filter rootless
    assert any("no eBPF device filter rootless" in line for line in log)


def test_rootless_not_delegated(tmp_path):
    root, proc = v2_host(tmp_path, own="/user.slice/session.scope")
    fs = FakeCgroupFiles(root, owners={os.path.join(root, "user.slice/session.scope"): 1234})
    with pytest.raises(RuntimeSetupError, match="not delegated") as info:
        setup(root, proc, {"memory": {"limit": 1 << 20}}, rootless=True, fs=fs)
    assert "Delegate=yes" in info.value.hint
    log = []
    assert setup(root, proc, {}, rootless=True, fs=fs, log=log) is None
    assert any("not delegated" in line for line in log)


def test_rootless_on_hybrid_v1_limit_is_an_error(tmp_path):
    root, proc = hybrid_host(tmp_path)
    with pytest.raises(RuntimeSetupError, match="rootless"):
        setup(root, proc, {"memory": {"limit": 1 << 20}}, rootless=True)


def test_no_limits_and_no_cgroup_possible_returns_none(tmp_path):
    root, proc = v2_host(tmp_path)

    class ReadOnly(FakeCgroupFiles):
        def mkdir(self, path, explain=None):
            raise OSError(errno.EROFS, "Read-only file system")

    log = []
    assert setup(root, proc, {}, fs=ReadOnly(root), log=log) is None
    assert any("Read-only" in line for line in log)
    with pytest.raises(RuntimeSetupError, match="Read-only"):
        setup(root, proc, {"pids": {"limit": 1}}, fs=ReadOnly(root))


# ---------------------------------------------------------------- stats


def test_stats_and_oom_kills_v2(tmp_path):
    d = tmp_path / "cg"
    _tree(str(d), {"memory.current": "1048576\n", "memory.max": "max\n", "pids.current": "3\n",
                   "cpu.stat": "usage_usec 1500\nuser_usec 1000\n",
                   "memory.events": "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n"})
    cg = cgroups.Cgroup.from_paths([str(d)])
    assert cg.stats() == {"memory": 1048576, "memory_limit": None, "pids": 3, "cpu_usec": 1500}
    assert cg.oom_kills() == 1


def test_stats_and_oom_kills_v1(tmp_path):
    mem, cpu = tmp_path / "memory", tmp_path / "cpuacct"
    _tree(str(mem), {"memory.usage_in_bytes": "2048\n", "memory.limit_in_bytes": "4096\n",
                     "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
                     "cgroup.procs": "1\n2\n"})
    _tree(str(cpu), {"cpuacct.usage": "7000000\n"})
    cg = cgroups.open_existing([str(mem), str(cpu)])
    assert cg.stats() == {"memory": 2048, "memory_limit": 4096, "pids": 2, "cpu_usec": 7000}
    assert cg.oom_kills() == 2
