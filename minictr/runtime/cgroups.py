"""The container's cgroup: create it, apply ``linux.resources``, attach the device filter,
read stats, remove it.

cgroups(7): a cgroup is a directory in a cgroup filesystem; a process joins it by having its pid
written to ``cgroup.procs``; limits are the controller's files in the directory. Two layouts:

- **pure cgroup v2** (Documentation/admin-guide/cgroup-v2.rst): one tree, controllers enabled
  top-down through ``cgroup.subtree_control`` (cgroup_v2.py), devices limited by an eBPF
  program (bpf_devices.py).
- **hybrid** (this project's machines): a v2 tree at ``/sys/fs/cgroup/unified`` that holds few or
  no controllers, and v1 trees per controller (``/sys/fs/cgroup/memory`` ...). Each requested
  controller goes to the tree that has it; the device filter goes to the v2 tree, which works
  even with no controller in it. Pure v1 works too, device rules going to the v1 devices
  controller's allow/deny lists (cgroup_v1.devices_files).

Placement (cgroup_layout.py): a child ``minictr-<id>`` of the launcher's own cgroup in each
tree (from /proc/self/cgroup), or ``linux.cgroupsPath`` when given (absolute: from the tree's
root, relative: under the launcher's cgroup). We only ever create children: the launcher's own
cgroup may belong to someone else (a supervisor, Slurm, systemd) and its limits are not ours.

Ordering with the runtime (the caller): ``setup`` runs in the parent before the container's
process runs anything; the runtime forks the child, which blocks on a sync pipe; the parent
calls ``add_process(pid)``, then releases the child. So the first instruction of the
container's program already runs inside the limits, without clone3(CLONE_INTO_CGROUP).

Failure policy: a requested limit that cannot be applied is a RuntimeSetupError saying why and
what to do, and whatever was created is removed again. With nothing requested, a cgroup is still
made when possible (``ps --stats`` and ``stats`` read it), but failing to make one is not an
error: ``setup`` returns None and says why through ``explain``.
"""
from __future__ import annotations

import errno
import os
import time
from _collections_abc import Callable

from minictr.errors import RuntimeSetupError
from minictr.runtime import bpf_devices, cgroup_v1, cgroup_v2
from minictr.runtime.cgroup_layout import (Layout, Target, detect_layout,
                                           plan_targets, requested_controllers)

Explain = Callable[[str], None] | None
V1_UNLIMITED = 1 << 62         # memory.limit_in_bytes reads about 2^63 when no limit is set

DELEGATE_HINT = ("run minictr in a delegated cgroup: "
                 "systemd-run --user --scope -p Delegate=yes minictr run ...")
ROOT_DENIED_HINT = ("the cgroup filesystem is not writable here (read-only, or inside another "
                    "container): give the container a writable one, or drop the limits and "
                    "the \"cgroup\" mount that need a cgroup of its own in that tree")


class CgroupFiles:
    """Reads and writes cgroup files; the seam unit tests replace with a fake tree in tmp_path.

    Changes go through the syscall face ``kernel`` (a dry run records them); writes never
    create files (no O_CREAT): a missing interface file means the controller is not there, and
    must fail as on the real cgroupfs."""

    def __init__(self, kernel=None):
        self.kernel = kernel

    def _kernel(self):
        if getattr(self, "kernel", None) is None:
            self.kernel = _real_kernel()
        return self.kernel

    def read(self, path: str) -> str:
        return self._kernel().read_text(path)

    def write(self, path: str, value: str, explain: Explain = None) -> None:
        if explain:
            explain(f"write {value} > {path}")
        self._kernel().write_file(path, value)

    def exists(self, path: str) -> bool:
        return self._kernel().exists(path)

    def mkdir(self, path: str, explain: Explain = None) -> None:
        if explain:
            explain(f"mkdir {path}")
        self._kernel().mkdir(path, 0o755)

    def rmdir(self, path: str) -> None:
        self._kernel().rmdir(path)

    def subdirs(self, path: str) -> list[str]:
        """The cgroups directly below ``path`` (a cgroup filesystem holds no links)."""
        try:
            with os.scandir(path) as it:
                return [e.path for e in it if e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def owner(self, path: str) -> int:
        return os.stat(path).st_uid

    def host_has_swap(self) -> bool:
        """/proc/swaps lists a header line, then one line per active swap area."""
        try:
            return len(self.read("/proc/swaps").strip().splitlines()) > 1
        except OSError:
            return True


# ---------------------------------------------------------------- setup


def check_delegation(fs, target: Target, *, needed: bool, explain: Explain) -> bool:
    """Rootless, only a delegated v2 subtree is writable: the nearest existing ancestor of the
    container's directory must be owned by us (systemd chowns a Delegate=yes unit's directory and
    its cgroup.procs/subtree_control to the user)."""
    anchor = os.path.dirname(target.path)
    while not fs.exists(anchor) and anchor != target.mount:
        anchor = os.path.dirname(anchor)
    if fs.owner(anchor) == os.geteuid():
        return True
    why = f"{anchor} is not delegated to uid {os.geteuid()} (it is owned by uid {fs.owner(anchor)})"
    if needed:
        raise RuntimeSetupError(f"cannot apply resource limits rootless: {why}", hint=DELEGATE_HINT)
    if explain:
        explain(f"no cgroup for this container: {why}")
    return False


def make_dirs(fs, target: Target, created: list[str], explain: Explain) -> None:
    """mkdir -p the container's directory, remembering what we made (and so must remove)."""
    missing = []
    path = target.path
    while not fs.exists(path):
        missing.append(path)
        if path == target.mount:
            break
        path = os.path.dirname(path)
    if not missing:
        raise RuntimeSetupError(f"cgroup {target.path} already exists",
                                hint="another container uses this linux.cgroupsPath")
    for path in reversed(missing):
        fs.mkdir(path, explain)
        created.append(path)


def apply_v2(fs, target: Target, layout: Layout, explain: Explain) -> None:
    needs = set(target.controllers) | {c for c in map(cgroup_v2.controller_of, target.unified) if c}
    movable = (os.path.normpath(os.path.join(target.mount, layout.own_v2.lstrip("/")))
               if layout.own_v2 is not None else None)
    cgroup_v2.enable_controllers(fs, target.mount, target.path, needs, movable=movable,
                                 required=True, explain=explain)
    optional = {"memory", "pids"} & layout.v2_controllers - needs
    cgroup_v2.enable_controllers(fs, target.mount, target.path, optional, movable=None,
                                 required=False, explain=explain)
    files = []
    for name, part in target.controllers.items():
        if name == "memory":
            files += cgroup_v2.memory_files(
                part, swap_max_exists=fs.exists(os.path.join(target.path, "memory.swap.max")),
                host_has_swap=fs.host_has_swap())
        else:
            files += getattr(cgroup_v2, f"{name}_files")(part)
    files += cgroup_v2.unified_files(target.unified)
    write_files(fs, target.path, files, explain)


def apply_v1(fs, target: Target, created: list[str], explain: Explain) -> None:
    files = []
    for name, part in target.controllers.items():
        if name == "memory":
            files += cgroup_v1.memory_files(
                part,
                memsw_exists=fs.exists(os.path.join(target.path, "memory.memsw.limit_in_bytes")),
                host_has_swap=fs.host_has_swap())
        else:
            files += getattr(cgroup_v1, f"{name}_files")(part)
    if fs.exists(os.path.join(target.path, "cpuset.cpus")):
        for path in created:
            if path.startswith(target.mount + "/"):
                cgroup_v1.cpuset_inherit(fs, os.path.dirname(path), path, explain)
    write_files(fs, target.path, files, explain)


def write_files(fs, directory: str, files: list[tuple[str, str]], explain: Explain) -> None:
    for name, value in files:
        path = os.path.join(directory, name)
        try:
            fs.write(path, value, explain)
        except OSError as err:
            what = ("the file does not exist: its controller is not enabled here"
                    if err.errno == errno.ENOENT else err.strerror)
            raise RuntimeSetupError(f"cannot write {value!r} to {path}: {what}",
                                    hint="check the value against the kernel's "
                                         "Documentation/admin-guide/cgroup-v*") from err


def attach_device_filter(kernel, target: Target, rules: list[dict], explain: Explain):
    """Compile, load and attach the eBPF device allow-list; returns (cgroup fd, prog fd)."""
    program = bpf_devices.compile_rules(rules)
    if explain:
        explain(f"device filter ({len(rules)} rules, last match wins, default deny): "
                + "; ".join(bpf_devices.describe_rule(r) for r in rules))
    prog_fd = bpf_devices.load_program(kernel, program, explain=explain)
    cgroup_fd = bpf_devices.open_cgroup_dir(kernel, target.path)
    try:
        bpf_devices.attach(kernel, cgroup_fd, prog_fd, cgroup_path=target.path, explain=explain)
    except RuntimeSetupError:
        _close(kernel, prog_fd)
        _close(kernel, cgroup_fd)
        raise
    return cgroup_fd, prog_fd


def _close(kernel, fd: int) -> None:
    """Close an fd the syscall face returned (a recording face gives fake fds: let it record)."""
    getattr(kernel, "close", os.close)(fd)


def setup(resources: dict, *, container_id: str, cgroups_path: str | None, rootless: bool,
          systemd: bool = False, kernel=None, explain: Explain = None,
          cgroup_root: str = "/sys/fs/cgroup", proc_self_cgroup: str = "/proc/self/cgroup",
          fs: CgroupFiles | None = None, on_plan=None, every_v1: bool = False):
    """Create the container's cgroup(s), write the limits of ``resources`` (linux.resources),
    load and attach the device filter (root only); return a ``Cgroup`` or None (see the module
    docstring for placement, ordering and the failure policy). ``on_plan(paths)`` is called
    with the directories about to be made, before any is: the caller records them, so a
    launcher killed halfway leaves a record of what to remove. ``systemd``: cgroupsPath is in
    runc's "slice:prefix:name" form. ``every_v1``: the spec mounts the container's cgroups
    (a "cgroup" mount), so as root it gets a cgroup of its own in every v1 hierarchy, as runc
    gives it, limited or not: its view must not be the launcher's cgroup or the host's root."""
    fs = fs or CgroupFiles(kernel)
    resources = resources or {}
    layout = detect_layout(fs, cgroup_root, proc_self_cgroup)
    wanted = requested_controllers(resources)
    rules = resources.get("devices")
    attach_filter = rules is not None and not rootless
    if rules is not None and rootless and explain:
        explain("no eBPF device filter rootless: loading one needs CAP_SYS_ADMIN in the initial "
                "user namespace; the user namespace already keeps the container from mknod and "
                "from devices the user cannot open")
    if attach_filter and layout.v2_mount is None:
        # pure v1: the devices controller's allow/deny lists instead of an eBPF program
        if "devices" not in layout.v1_mounts:
            raise RuntimeSetupError("device rules need a cgroup v2 tree (eBPF) or the v1 devices "
                                    "controller, and this host has neither mounted",
                                    hint="mount -t cgroup2 none /sys/fs/cgroup/unified")
        wanted["devices"] = rules
        attach_filter = False
        if explain:
            explain("device rules go to the cgroup v1 devices controller (no cgroup v2 tree here "
                    "for an eBPF filter)")
    if systemd and cgroups_path:
        from minictr.runtime.cgroup_layout import systemd_path

        cgroups_path = systemd_path(cgroups_path, rootless)
    targets = plan_targets(layout, wanted, resources, cgroups_path=cgroups_path,
                           container_id=container_id, rootless=rootless,
                           attach_filter=attach_filter, every_v1=every_v1)
    needed = bool(wanted or resources.get("unified"))
    if not needed and not every_v1 and any(t.version == 2 for t in targets):
        # Nothing to limit: the v2 directory (device filter, usage) is enough. Joining the v1
        # hierarchies of a hybrid host would cost ~10 ms (memory) for no limit at all.
        targets = [t for t in targets if t.version == 2]
    if rootless:
        targets = [t for t in targets if t.version == 2]
        if not targets:
            if needed:
                raise RuntimeSetupError("cannot apply resource limits rootless without cgroup v2",
                                        hint=DELEGATE_HINT)
            return None
        if not check_delegation(fs, targets[0], needed=needed, explain=explain):
            return None
    kernel = kernel if kernel is not None else _real_kernel()
    if on_plan is not None:
        on_plan([t.path for t in targets])
    cgroup = Cgroup([], fs=fs, kernel=kernel, explain=explain)
    try:
        for target in targets:
            try:
                make_dirs(fs, target, cgroup.created, explain)
            except OSError as err:
                if target.required:
                    denied = err.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
                    hint = (DELEGATE_HINT if rootless else ROOT_DENIED_HINT) if denied else None
                    raise RuntimeSetupError(f"cannot create cgroup {target.path}: {err.strerror}",
                                            hint=hint) from err
                if explain:
                    explain(f"no cgroup in {target.mount}: {err.strerror} (no limit needs it)")
                continue
            cgroup.paths.append(target.path)
            if target.version == 2:
                cgroup.v2_path = target.path
                apply_v2(fs, target, layout, explain)
                if attach_filter:
                    cgroup.cgroup_fd, cgroup.prog_fd = attach_device_filter(
                        kernel, target, rules, explain)
            else:
                apply_v1(fs, target, cgroup.created, explain)
    except BaseException:
        cgroup.destroy(quiet=True)
        raise
    return cgroup if cgroup.paths else None


def _real_kernel():
    from minictr.runtime.syscalls import Syscalls

    return Syscalls()


# ---------------------------------------------------------------- the handle


class Cgroup:
    """The container's cgroup directories (one per tree used) and the device program we
    attached. Reading stats probes the files, so a handle rebuilt from saved paths
    (``from_paths``) reads the same numbers as the one ``setup`` returned."""

    def __init__(self, paths: list[str], *, fs: CgroupFiles | None = None, kernel=None,
                 explain: Explain = None):
        self.paths = list(paths)
        self.created = list(paths)      # what destroy removes, parents before children
        self.fs = fs or CgroupFiles()
        self.kernel = kernel
        self.explain = explain
        self.cgroup_fd: int | None = None
        self.prog_fd: int | None = None
        self.v2_path: str | None = None  # the v2 directory, for clone3's CLONE_INTO_CGROUP

    @classmethod
    def from_paths(cls, paths: list[str], *, v2_path: str | None = None,
                   fs: CgroupFiles | None = None) -> "Cgroup":
        """A handle for ``minictr stats``/``ps``/``rm`` from the paths saved in the container's
        state; it owns no device program (that one goes away with the cgroup)."""
        cgroup = cls(paths, fs=fs)
        cgroup.v2_path = v2_path
        return cgroup

    def release(self) -> None:
        """Close our fds of the device program and the cgroup without detaching: the program
        stays attached until the cgroup is removed (from the paths in the container's state)."""
        for fd in (self.prog_fd, self.cgroup_fd):
            if fd is not None:
                _close(self.kernel, fd)
        self.prog_fd = self.cgroup_fd = None

    def add_process(self, pid: int, born_in: str | None = None) -> None:
        """Move ``pid`` into the container's cgroup in every tree (cgroups(7): write the pid to
        cgroup.procs; all its threads move with it). ``born_in``: a path the process already
        is in, because clone3 created it there (CLONE_INTO_CGROUP)."""
        for path in self.paths:
            if path == born_in:
                continue
            target = os.path.join(path, "cgroup.procs")
            try:
                self.fs.write(target, str(pid), self.explain)
            except OSError as err:
                raise RuntimeSetupError(f"cannot move process {pid} into {path}: "
                                        f"{err.strerror}") from err

    def _first(self, *names: str) -> tuple[str, str] | None:
        """(file name, contents) of the first of ``names`` present in one of our paths."""
        for name in names:
            for path in self.paths:
                try:
                    return name, self.fs.read(os.path.join(path, name))
                except OSError:
                    continue
        return None

    @staticmethod
    def _keyed(text: str, key: str) -> int | None:
        """The value of ``key`` in a flat-keyed file ("key value" lines: memory.events)."""
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == key:
                return int(parts[1])
        return None

    def oom_kills(self) -> int:
        """How many processes the OOM killer killed in this cgroup: ``oom_kill`` in
        memory.events (v2) or memory.oom_control (v1, kernel 4.13+)."""
        found = self._first("memory.events", "memory.oom_control")
        return (self._keyed(found[1], "oom_kill") or 0) if found else 0

    def stats(self) -> dict:
        """{"memory": bytes, "memory_limit": bytes|None, "pids": n, "cpu_usec": n}; a value is
        None when no tree here has the file (e.g. memory not enabled in v2 for this cgroup)."""
        out = {"memory": None, "memory_limit": None, "pids": None, "cpu_usec": None}
        found = self._first("memory.current", "memory.usage_in_bytes")
        if found:
            out["memory"] = int(found[1])
        found = self._first("memory.max", "memory.limit_in_bytes")
        if found and found[1].strip() != "max" and int(found[1]) < V1_UNLIMITED:
            out["memory_limit"] = int(found[1])
        found = self._first("pids.current")
        if found:
            out["pids"] = int(found[1])
        else:
            found = self._first("cgroup.procs")
            out["pids"] = len(found[1].split()) if found else None
        found = self._first("cpu.stat", "cpuacct.usage")
        if found and found[0] == "cpu.stat":
            out["cpu_usec"] = self._keyed(found[1], "usage_usec")
        elif found:
            out["cpu_usec"] = int(found[1]) // 1000
        return out

    def destroy(self, *, quiet: bool = False, drain_seconds: float = 2.0) -> None:
        """Detach our device program, then remove our directories, deepest first. rmdir(2) of a
        cgroup fails with EBUSY while exiting processes are still being reaped out of it, so it
        is retried for up to ``drain_seconds``. Directories we made above the container's own
        (for a nested linux.cgroupsPath) stay if someone else uses them too."""
        if self.prog_fd is not None and self.cgroup_fd is not None:
            try:
                bpf_devices.detach(self.kernel, self.cgroup_fd, self.prog_fd)
                if self.explain:
                    self.explain(f"bpf(BPF_PROG_DETACH, {self.paths[0]}, BPF_CGROUP_DEVICE)")
            except OSError:
                pass        # the program goes with the cgroup anyway
        if self.prog_fd is not None:
            _close(self.kernel, self.prog_fd)
        if self.cgroup_fd is not None:
            _close(self.kernel, self.cgroup_fd)
        self.prog_fd = self.cgroup_fd = None
        stuck, left = [], []
        for path in reversed(self.created):
            if path in self.paths:
                self._remove_below(path, drain_seconds)
            err = self._rmdir(path, drain_seconds if path in self.paths else 0)
            if err is not None and path in self.paths:
                stuck.append(f"{path} ({os.strerror(err)})")
                left.insert(0, path)
        self.created = left                 # a later destroy() tries these again
        if stuck and not quiet:
            raise RuntimeSetupError("cannot remove cgroup " + ", ".join(stuck),
                                    hint="processes are still in it: see its cgroup.procs")

    def _remove_below(self, path: str, drain_seconds: float) -> None:
        """The cgroups the container made inside its own (a cgroup namespace with a writable
        cgroup mount lets it: systemd or a nested runtime does), deepest first, as runc's
        RemovePath: rmdir(2) of a cgroup with children fails. What cannot be removed is left
        for the container's own rmdir to report."""
        for child in self.fs.subdirs(path):
            self._remove_below(child, drain_seconds)
            self._rmdir(child, drain_seconds)

    def _rmdir(self, path: str, drain_seconds: float) -> int | None:
        deadline = time.monotonic() + drain_seconds
        delay = 0.005
        while True:
            try:
                self.fs.rmdir(path)
                if self.explain:
                    self.explain(f"rmdir {path}")
                return None
            except FileNotFoundError:
                return None
            except OSError as err:
                if err.errno != errno.EBUSY or time.monotonic() >= deadline:
                    return err.errno
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def update(paths: list[str], resources: dict, *, explain: Explain = None,
           cgroup_root: str = "/sys/fs/cgroup", fs: CgroupFiles | None = None) -> None:
    """New limits for an existing container's cgroup (runc update): each requested controller's
    files are written in the directory of the tree that has it."""
    fs = fs or CgroupFiles()
    if resources.get("devices"):
        raise RuntimeSetupError("linux.resources.devices cannot be updated",
                                hint="device rules are fixed at create")
    wanted = requested_controllers(resources)
    layout = detect_layout(fs, cgroup_root, "/proc/self/cgroup")
    for name, part in wanted.items():
        if name in layout.v2_controllers and layout.v2_mount:
            path = next((p for p in paths if p.startswith(layout.v2_mount + "/")), None)
            version = 2
        else:
            mount = layout.v1_mounts.get(name)
            path = next((p for p in paths if mount and p.startswith(mount + "/")), None)
            version = 1
        if path is None:
            raise RuntimeSetupError(f"cannot update {name}: the container has no {name} cgroup",
                                    hint="limits that were not set at create need a cgroup "
                                         "made with them")
        target = Target(version, layout.v2_mount if version == 2 else layout.v1_mounts[name],
                        path, controllers={name: part})
        if version == 2:
            apply_v2(fs, target, layout, explain)
        else:
            apply_v1(fs, target, [], explain)


def open_existing(paths: list[str]) -> Cgroup:
    """The cgroup of a container from the paths its state saved (``Cgroup.paths``)."""
    return Cgroup.from_paths(paths)
