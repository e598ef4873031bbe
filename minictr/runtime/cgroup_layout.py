"""Where the container's cgroups go: the host's cgroup layout (pure v2, hybrid, v1), which
tree each requested controller lives in, and the container's directory in each tree.

Pure planning: it reads /proc/self/cgroup and the trees' cgroup.controllers, writes nothing
(cgroups.setup does the writing).
"""
from __future__ import annotations

import os

from minictr.errors import RuntimeSetupError
from minictr.runtime import cgroup_v2

MEMORY_KEYS = ("limit", "reservation", "swap", "kernel", "kernelTCP", "swappiness",
               "disableOOMKiller")
CPU_KEYS = ("shares", "quota", "period", "realtimeRuntime", "realtimePeriod", "idle")
CPUSET_KEYS = ("cpus", "mems")
STATS_CONTROLLERS = ("memory", "pids", "cpuacct")     # made even unrequested, for stats
UNIFIED_HINTS = {"cpu.weight": "--cpu-weight is the cgroup v2 scale; on cgroup v1 give "
                               "--cpu-shares (2-262144, default 1024) instead"}


class Layout:
    """The host's cgroup trees and the launcher's place in them (filled in by detect_layout).
    A plain class, not a dataclass: see minictr/records.py for why the run path avoids those."""

    def __init__(self, v2_mount: str | None = None, v2_controllers: set | None = None,
                 v1_mounts: dict | None = None, own_v2: str | None = None,
                 own_v1: dict | None = None):
        self.v2_mount = v2_mount
        self.v2_controllers = set() if v2_controllers is None else v2_controllers
        self.v1_mounts = {} if v1_mounts is None else v1_mounts  # controller -> mount directory
        self.own_v2 = own_v2                                     # "0::PATH" of /proc/self/cgroup
        self.own_v1 = {} if own_v1 is None else own_v1           # controller -> PATH

    def __repr__(self) -> str:
        return f"Layout({vars(self)})"

    @property
    def kind(self) -> str:
        if self.v2_mount and not self.v1_mounts:
            return "v2"
        return "hybrid" if self.v2_mount else "v1"


def detect_layout(fs, cgroup_root: str, proc_self_cgroup: str) -> Layout:
    """Pure v2 when ``cgroup_root`` itself is a cgroup2 mount (it has cgroup.controllers);
    otherwise v1 mounts are its subdirectories named after controllers ("cpu,cpuacct" holds
    two), and a v2 tree may sit at ``unified``. /proc/self/cgroup: "ID:CONTROLLERS:PATH" lines,
    "0::PATH" for v2 (cgroups(7))."""
    layout = Layout()
    for line in fs.read(proc_self_cgroup).splitlines():
        hier, controllers, path = line.split(":", 2)
        if hier == "0" and controllers == "":
            layout.own_v2 = path
        for name in controllers.split(","):
            if name:                     # a named hierarchy ("name=systemd") by its name
                layout.own_v1[name.removeprefix("name=")] = path
    if fs.exists(os.path.join(cgroup_root, "cgroup.controllers")):
        layout.v2_mount = cgroup_root
    else:
        unified = os.path.join(cgroup_root, "unified")
        if fs.exists(os.path.join(unified, "cgroup.controllers")):
            layout.v2_mount = unified
        for entry in sorted(os.listdir(cgroup_root)) if os.path.isdir(cgroup_root) else []:
            mount = os.path.join(cgroup_root, entry)
            if entry == "unified" or not fs.exists(os.path.join(mount, "cgroup.procs")):
                continue
            for name in entry.split(","):
                layout.v1_mounts.setdefault(name, mount)
    if layout.v2_mount:
        layout.v2_controllers = set(
            fs.read(os.path.join(layout.v2_mount, "cgroup.controllers")).split())
    return layout


def _unset(value) -> bool:
    """Engines send zeroes for what the user did not set (docker: blockIO {"weight": 0})."""
    if isinstance(value, dict):
        return all(_unset(v) for v in value.values())
    if isinstance(value, list):
        return all(_unset(v) for v in value)
    return value in (None, 0, "", False)


def requested_controllers(resources: dict) -> dict[str, object]:
    """Controller → the part of linux.resources it applies. Fields minictr cannot apply on any
    host are errors here, never dropped."""
    wanted: dict[str, object] = {}
    memory = resources.get("memory") or {}
    if any(memory.get(k) not in (None, False) for k in MEMORY_KEYS):
        wanted["memory"] = memory
    cpu = resources.get("cpu") or {}
    if any(cpu.get(k) not in (None, 0, "") for k in CPU_KEYS):
        wanted["cpu"] = cpu
    if any(cpu.get(k) for k in CPUSET_KEYS):
        wanted["cpuset"] = cpu
    if (resources.get("pids") or {}).get("limit") is not None:
        wanted["pids"] = resources["pids"]
    if resources.get("hugepageLimits"):
        wanted["hugetlb"] = resources["hugepageLimits"]
    for key in ("blockIO", "network", "rdma"):
        if not _unset(resources.get(key)):
            raise RuntimeSetupError(f"linux.resources.{key} is not supported by minictr",
                                    hint=f"remove linux.resources.{key} from the spec")
    return wanted


def container_path(mount: str, own: str | None, cgroups_path: str | None,
                   container_id: str) -> str:
    """The container's directory in one tree (see the module docstring for the rules)."""
    base = own or "/"
    if os.path.basename(base) == cgroup_v2.LEAF:     # launched from our own leaf: go beside it
        base = os.path.dirname(base)
    rel = os.path.join(base, f"minictr-{container_id}")
    if cgroups_path:
        if ":" in cgroups_path and not cgroups_path.startswith("/"):
            raise RuntimeSetupError(f"linux.cgroupsPath {cgroups_path!r} is in the systemd "
                                    f"\"slice:prefix:name\" form",
                                    hint="give --systemd-cgroup (minictr-runc), or a path such "
                                         "as /minictr/NAME")
        if ".." in cgroups_path.split("/"):
            raise RuntimeSetupError(f"linux.cgroupsPath {cgroups_path!r} contains \"..\"")
        rel = cgroups_path if cgroups_path.startswith("/") else os.path.join(base, cgroups_path)
    return os.path.normpath(os.path.join(mount, rel.lstrip("/")))


class Target:
    """The container's cgroup in one tree, and what goes into it."""

    def __init__(self, version: int, mount: str, path: str, controllers: dict | None = None,
                 unified: dict | None = None, required: bool = True):
        self.version = version
        self.mount = mount
        self.path = path
        # controller -> its part of linux.resources
        self.controllers = {} if controllers is None else controllers
        self.unified = {} if unified is None else unified
        self.required = required

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"Target({vars(self)})"


def systemd_path(cgroups_path: str, rootless: bool) -> str:
    """runc's --systemd-cgroup form "slice:prefix:name" → the cgroupfs path systemd would give
    that unit: the slice expanded as systemd.slice(5) nests it ("a-b.slice" lives in
    "a.slice/a-b.slice"), then "prefix-name.scope". minictr makes that directory itself; it does
    not ask systemd for a scope unit (there may be no systemd: HPC nodes, this CI)."""
    parts = cgroups_path.split(":")
    if len(parts) != 3:
        raise RuntimeSetupError(f"linux.cgroupsPath {cgroups_path!r}: expected slice:prefix:name")
    slice_, prefix, name = parts
    slice_ = slice_ or ("user.slice" if rootless else "system.slice")
    if not slice_.endswith(".slice") or "/" in slice_ or "/" in prefix + name:
        raise RuntimeSetupError(f"linux.cgroupsPath {cgroups_path!r}: bad slice or name")
    words = slice_[:-len(".slice")].split("-")
    dirs = ["-".join(words[:i + 1]) + ".slice" for i in range(len(words)) if words[i]]
    unit = f"{prefix}-{name}.scope" if prefix else (name if "." in name else f"{name}.scope")
    return "/" + "/".join(dirs + [unit])


def plan_targets(layout: Layout, wanted: dict, resources: dict, *, cgroups_path, container_id,
                 rootless: bool, attach_filter: bool, every_v1: bool = False) -> list[Target]:
    """One Target per tree we make a cgroup in: v2 first (it carries the device filter), then a
    v1 tree for each controller bound there, then (as root) unrequested v1 stats trees, or with
    ``every_v1`` every v1 hierarchy, named ones too, each required (the container's view of
    its cgroups must show none but its own: mounts.mount_cgroup_v1)."""
    targets: dict[str, Target] = {}
    v2 = None
    if layout.v2_mount:
        v2 = Target(2, layout.v2_mount, container_path(layout.v2_mount, layout.own_v2,
                                                       cgroups_path, container_id),
                    required=attach_filter)
        targets[os.path.realpath(layout.v2_mount)] = v2
    for name, part in wanted.items():
        if name in layout.v2_controllers:
            v2.controllers[name] = part
            v2.required = True
        elif name in layout.v1_mounts and not rootless:
            mount = layout.v1_mounts[name]
            target = targets.setdefault(os.path.realpath(mount), Target(
                1, mount, container_path(mount, layout.own_v1.get(name), cgroups_path,
                                         container_id)))
            target.controllers[name] = part
            target.required = True
        elif name in layout.v1_mounts:
            raise RuntimeSetupError(
                f"cannot apply the {name} limit rootless: {name} is a cgroup v1 controller here "
                f"and v1 cannot be delegated to a user", hint="boot with cgroup v2 "
                "(systemd.unified_cgroup_hierarchy=1) or run as root")
        else:
            raise RuntimeSetupError(f"cannot apply the {name} limit: no {name} controller on "
                                    f"this host (not in cgroup v2, not mounted as v1)")
    unified = resources.get("unified") or {}
    for filename, value in unified.items():
        controller = cgroup_v2.controller_of(filename)
        if v2 is None or (controller and controller not in layout.v2_controllers):
            where = "on cgroup v1" if controller in layout.v1_mounts else "nowhere"
            raise RuntimeSetupError(
                f"linux.resources.unified[{filename!r}] needs the {controller} controller in "
                f"cgroup v2, and this host has it {where}",
                hint=UNIFIED_HINTS.get(filename, "unified{} is for cgroup v2 only "
                                                 "(config-linux.md); use the v1 fields"))
        v2.unified[filename] = value
        v2.required = True
    if not rootless:
        for name in layout.v1_mounts if every_v1 else STATS_CONTROLLERS:
            mount = layout.v1_mounts.get(name)
            if mount and os.path.realpath(mount) not in targets:
                targets[os.path.realpath(mount)] = Target(1, mount, container_path(
                    mount, layout.own_v1.get(name), cgroups_path, container_id),
                    required=every_v1)
    return list(targets.values())
