"""A container's life, as the OCI runtime spec defines it (runtime.md "Lifecycle"):

    create ──► created ──start──► running ──(its process exits)──► stopped ──delete──► (gone)
      │           │                  │  ▲
      │           └──── kill/delete  pause│resume
      └──── a failed create leaves nothing                    (paused)

- ``create`` records the container (state dir entry, written before anything it describes is
  made), makes its cgroup, spawns its first process (spawn.py), runs prestart/createRuntime
  hooks, and leaves that process blocked on exec.fifo. With ``attached=False`` (the runc-style
  command) nothing of minictr stays behind: the caller's subreaper (conmon, containerd's shim)
  adopts the process when `create` exits.
- ``start`` releases it: exec.fifo is written and removed; poststart hooks run.
- ``kill``, ``pause``/``resume``, ``update``, ``exec`` act on a created or running container;
  an exec'd process is made by the same spawn path as the first one.
- ``delete`` removes a stopped (or, forced, a running) container: cgroup, state, poststop hooks.

``minictr run`` is create + start + wait (+ delete with --rm), in one process that stays as the
container's parent (api.run). The runtime knows no images: engine data (name, image, layers)
travels in the spec's annotations.

The exec.fifo protocol. The first process holds the fifo's read end (opened non-blocking before
the clone, so opening never blocks) and poll(2)s it after setup; `start` opens the write end
with O_NONBLOCK (ENXIO: nobody holds the read end, so the process is gone) and writes one
byte. "created" is "the process lives and exec.fifo exists", as runc defines it. (runc has the
process block in open(O_WRONLY) instead, which needs /proc/self/fd to reopen the fifo after
pivot_root; holding the read end needs nothing inside the container.)
"""
from __future__ import annotations

import errno
import os
import _signal as signal  # signal.py's C core: the same calls, numbers as ints (signal.py imports enum: ~3 ms)
import time
from _collections_abc import Callable

from minictr import cachefiles, jsonio
from minictr.errors import MinictrError, RuntimeSetupError, UsageError
from minictr.records import record
from minictr.runtime import landlock
from minictr.runtime import spawn as spawn_mod
from minictr.runtime import state as state_mod
from minictr.runtime import syscalls as sc
from minictr.runtime.state import StateRoot

Explain = Callable[[str], None] | None


class NotRunning(MinictrError):
    """An action that needs a live container met a stopped one (runc: "container not running")."""


@record
class Created:
    pid: int
    console: int | None = None        # the pty master (attached create with a terminal)
    exec_pipe: int | None = None      # attached: EOF once the command is exec'd
    network: object = None            # runtime.network.Attached: release it when it exits


# ---------------------------------------------------------------- status


def status(root: StateRoot, st: dict) -> str:
    """paused / stopped / creating / created / running, from the live process (runc's order):
    a state file only says what was last recorded."""
    pid = st.get("pid") or 0
    if st.get("status") == "creating" and state_mod.alive(st.get("creator_pid"),
                                                           st.get("creator_ticks")):
        return "creating"
    if not state_mod.alive(pid, st.get("pid_ticks")):
        return "stopped"
    if _frozen(st):
        return "paused"
    if os.path.exists(root.file(st["id"], state_mod.FIFO)):
        return "created"
    return "running"


def oci_state(root: StateRoot, container_id: str) -> dict:
    """The state as runtime.md defines it (what `state ID` prints and hooks read)."""
    st = root.read(container_id)
    now = status(root, st)
    out = {"ociVersion": state_mod.OCI_VERSION, "id": container_id, "status": now,
           "pid": st.get("pid", 0) if now != "stopped" else 0,
           "bundle": st.get("bundle", ""), "rootfs": st.get("rootfs", ""),
           "created": st.get("created", ""), "owner": st.get("owner", ""),
           "annotations": st.get("annotations") or {}}
    return out


def list_states(root: StateRoot, warn: Explain = None) -> list[dict]:
    """Every container's OCI state; an unreadable entry is reported to ``warn`` and skipped."""
    out = []
    for cid in root.ids():
        try:
            out.append(oci_state(root, cid))
        except MinictrError as err:
            if warn:
                warn(str(err))
    return out


# ---------------------------------------------------------------- create


def create(root: StateRoot, container_id: str, spec: dict, *, bundle: str, rootfs=None,
           console_socket: str | None = None, pid_file: str | None = None,
           preserve_fds: int = 0, attached: bool = False, stdin_null: bool = False,
           stdio: tuple = (), systemd_cgroup: bool = False, rootless: bool | None = None,
           keep_fds: tuple[int, ...] = (), files=(),
           no_pivot: bool = False, no_new_keyring: bool = False,
           on_spawned: Callable[[int], None] | None = None, network=None, kernel=None,
           explain: Explain = None) -> Created:
    """Create the container (see the module docstring); on failure nothing is left.

    ``files``: (name, bytes) pairs written into the container's state directory before its
    process is spawned, for mounts of the spec whose source names them there (the composition
    puts a generated loader cache there: planning writes nothing). They go with the state.
    ``stdio``: fds to become its first process's stdin, stdout and stderr (None: inherited).
    ``network`` (a runtime.network.NetworkPlan, minictr's own runs only) connects its new
    network namespace before it goes on (network.py)."""
    from minictr.runtime import validate

    kernel = kernel or sc.Syscalls()
    rootless = os.geteuid() != 0 if rootless is None else rootless
    validate.check(spec)
    spec = with_default_devices(spec)
    process = spec["process"]
    _check_capabilities(process, spec, explain)
    if process.get("terminal") and not attached and not console_socket:
        raise UsageError("process.terminal is true but no --console-socket was given",
                         hint="give --console-socket PATH, or set terminal to false")
    root.add(container_id)
    created = None
    cgroup = None
    connected = None
    try:
        root_path = spec["root"]["path"]
        if not os.path.isabs(root_path):
            root_path = os.path.join(bundle, root_path)
            spec = dict(spec, root=dict(spec["root"], path=root_path))
        state_mod.write_private(root.file(container_id, state_mod.CONFIG_FILE),
                                jsonio.dumps(spec).encode())
        for name, data in files:
            write_container_file(root, container_id, name, data)
        st = {"ociVersion": state_mod.OCI_VERSION, "id": container_id, "status": "creating",
              "pid": 0, "bundle": bundle, "rootfs": root_path, "created": state_mod.timestamp(),
              "owner": "", "annotations": spec.get("annotations") or {},
              "creator_pid": os.getpid(), "creator_ticks": state_mod.start_ticks(os.getpid()),
              "rootless": rootless, "cgroup_paths": []}
        linux = spec.get("linux", {})
        from minictr.runtime import cgroups

        # the first state record names the cgroups about to be made (one write, not two): it
        # is written before any of them, or the writable layer, is made, so a launcher killed
        # halfway leaves a record of what to remove
        recorded = []

        def record(paths) -> None:
            root.write(container_id, dict(st, cgroup_paths=list(paths)))
            recorded.append(True)
        cgroup = cgroups.setup(linux.get("resources") or {}, container_id=container_id,
                               cgroups_path=linux.get("cgroupsPath"), rootless=rootless,
                               systemd=systemd_cgroup, kernel=kernel, explain=explain,
                               on_plan=record,
                               every_v1=any(m.get("type") == "cgroup"
                                            for m in spec.get("mounts", ())))
        if not recorded:
            root.write(container_id, st)
        _prepare_rootfs(kernel, rootfs, root_path)
        seccomp = spawn_mod.compile_seccomp(spec, seccomp_cache_dir(root), explain)
        image_mount = _open_image_mount(kernel, rootfs, explain)
        fifo = root.file(container_id, state_mod.FIFO)
        kernel.mkfifo(fifo, 0o622)
        fifo_fd = kernel.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        hook_state = {"ociVersion": state_mod.OCI_VERSION, "id": container_id,
                      "status": "creating", "bundle": bundle,
                      "annotations": spec.get("annotations") or {}}

        def spawned(pid: int) -> None:
            root.update(container_id, pid=pid, pid_ticks=state_mod.start_ticks(pid))
            if on_spawned:
                on_spawned(pid)

        def runtime_hooks(pid: int) -> None:
            from minictr.runtime import hooks

            for stage in ("prestart", "createRuntime"):
                hooks.run_hooks(kernel, spec, stage, dict(hook_state, pid=pid), explain)

        namespaces = spawn_mod.plan_namespaces(linux.get("namespaces", []))
        uid_maps, gid_maps = list(linux.get("uidMappings") or ()), list(linux.get("gidMappings")
                                                                        or ())
        nest = None
        if rootless and namespaces.clone_flags & sc.CLONE_NEWUSER:
            from minictr.runtime import idmap

            uid_maps, gid_maps, nest = idmap.setup_mappings(uid_maps, gid_maps)

        def connect(pid: int) -> None:
            nonlocal connected
            from minictr.runtime import network as network_mod

            connected = network_mod.attach(
                kernel, root.path, root.dir(container_id), container_id, network, pid,
                lambda rec: root.update(container_id, network=rec), explain)

        plan = spawn_mod.SpawnPlan(
            process=process, namespaces=namespaces,
            rootless=rootless, attached=attached, stdin_null=stdin_null, stdio=tuple(stdio),
            preserve_fds=preserve_fds, keep_fds=tuple(keep_fds),
            container=(spec, rootfs), fifo_fd=fifo_fd,
            uid_mappings=tuple(uid_maps), gid_mappings=tuple(gid_maps), nest_ids=nest,
            hook_state=hook_state,
            oom_score_adj=process.get("oomScoreAdj"), no_pivot=no_pivot, seccomp=seccomp,
            new_keyring=None if no_new_keyring else container_id, image_mount=image_mount,
            landlock_scoped=landlock.scopes_for(kernel, spec, explain))
        try:
            created = spawn_mod.spawn(kernel, plan, cgroup=cgroup, on_spawned=spawned,
                                      on_placed=connect if network is not None else None,
                                      on_hooks=runtime_hooks, explain=explain)
        finally:
            kernel.close(fifo_fd)
            if image_mount is not None:
                kernel.close(image_mount)
        root.update(container_id, status="created", cgroup_paths=list(cgroup.paths) if cgroup
                    else [], cgroup_v2=cgroup.v2_path if cgroup else None)
        console = created.console
        if console is not None and console_socket:
            send_console(kernel, console_socket, console)
            kernel.close(console)
            console = None
        if pid_file:
            write_pid_file(pid_file, created.pid)
        if cgroup is not None:
            cgroup.release()                     # the program stays attached to the cgroup
        return Created(pid=created.pid, console=console, exec_pipe=created.exec_pipe,
                       network=connected)
    except BaseException:
        if created is not None:
            spawn_mod._kill_and_reap(created.pid)
        if cgroup is not None:
            cgroup.destroy(quiet=True)
        _release_network_quietly(kernel, root, container_id, connected)
        root.remove(container_id)
        raise


# config-linux.md "Default Devices": supplied whatever linux.devices says, and allowed in the
# device cgroup after the spec's own rules (runc's AllowedDevices): (name, major, minor).
DEFAULT_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
                   ("urandom", 1, 9), ("tty", 5, 0))
DEFAULT_ALLOW = [{"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"}
                 for _, major, minor in DEFAULT_DEVICES] + [
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},      # /dev/pts/N
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},  # /dev/ptmx
    # mknod of any node (not its use: read and write stay refused), as runc's AllowedDevices
    # begin; docker's config.json leaves these to the runtime
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"}]


def with_default_devices(spec: dict) -> dict:
    """The spec with the default devices every container gets, as the runtime-spec requires:
    nodes missing from linux.devices are added, and their allow rules follow the spec's (a
    spec that only says "deny all", like `runc spec`'s, still gets a usable /dev/null)."""
    linux = dict(spec.get("linux") or {})
    devices = list(linux.get("devices") or [])
    have = {d.get("path") for d in devices}
    for name, major, minor in DEFAULT_DEVICES:
        if f"/dev/{name}" not in have:
            devices.append({"path": f"/dev/{name}", "type": "c", "major": major,
                            "minor": minor, "fileMode": 0o666, "uid": 0, "gid": 0})
    linux["devices"] = devices
    resources = dict(linux.get("resources") or {})
    rules = list(resources.get("devices") or [])
    if rules and not (len(rules) == 1 and rules[0].get("allow") and not rules[0].get("type")
                      and rules[0].get("major") is None):
        resources["devices"] = rules + [r for r in DEFAULT_ALLOW if r not in rules]
        linux["resources"] = resources
    return dict(spec, linux=linux)


def write_container_file(root: StateRoot, container_id: str, name: str, data: bytes) -> None:
    """A file the spec mounts (read-only) into the container: readable by every uid inside,
    created fresh (O_EXCL, no symlink followed) in the container's new state directory."""
    if "/" in name or name in ("", ".", "..", state_mod.CONFIG_FILE, state_mod.FIFO,
                               state_mod.STATE_FILE):
        raise RuntimeSetupError(f"cannot write {name!r} into the container's directory")
    fd = os.open(root.file(container_id, name),
                 os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, 0o644)                 # whatever the umask
        f.write(data)


def _check_capabilities(process: dict, spec: dict, explain: Explain = None) -> None:
    """The capabilities the launcher cannot give fail here; ambient ones the kernel will keep
    out (not also inheritable and permitted, as in `runc spec`'s own example, so not worth a
    warning at every create) are said under --debug/--explain, then left out as runc does."""
    from minictr.runtime import capabilities

    caps = process.get("capabilities") or {}
    new_userns = any(ns.get("type") == "user" and not ns.get("path")
                     for ns in (spec.get("linux") or {}).get("namespaces", ()))
    capabilities.check_held(caps, new_userns)
    missing = capabilities.unraisable_ambient(caps)
    if missing and explain:
        explain(f"process.capabilities.ambient: {', '.join(missing)} not also in inheritable "
                "and permitted: the kernel keeps them out of the ambient set")


def release_network(root: StateRoot, container_id: str, attached=None, kernel=None) -> None:
    """Undo what connected the container's network (runtime/network.py), as its state records
    it; idempotent. The record stays (a stopped container keeps saying what it had)."""
    try:
        st = root.read(container_id)
    except MinictrError:
        return
    record_ = st.get("network")
    if record_ and not record_.get("released"):
        from minictr.runtime import network as network_mod

        network_mod.release(kernel or sc.Syscalls(), container_id, record_, attached)
        root.update(container_id, network=dict(record_, released=True))


def _release_network_quietly(kernel, root: StateRoot, container_id: str, attached) -> None:
    """A failed create releases what its network got so far; its own error is the one to
    report."""
    try:
        release_network(root, container_id, attached, kernel)
    except (MinictrError, OSError):
        pass


def seccomp_cache_dir(root: StateRoot) -> str:
    """Compiled filters live in the trusted state dir (runtime/seccomp_cache.py)."""
    return cachefiles.cache_dir(root.path, "seccomp")


def _prepare_rootfs(kernel, rootfs, root_path: str) -> None:
    """The directories an overlay plan needs on the host: the mount point, the writable layer
    (or the read-only root's tmpfs mount point)."""
    if rootfs is None:
        if not os.path.isdir(root_path):
            raise RuntimeSetupError(f"root.path {root_path} is not a directory",
                                    hint="the bundle's rootfs must exist before create")
        return
    from minictr.runtime.rootfs import check_upper_filesystem

    check_upper_filesystem(rootfs)
    os.makedirs(root_path, mode=0o700, exist_ok=True)
    if rootfs.upperdir:
        os.makedirs(rootfs.upperdir, mode=0o755, exist_ok=True)
        os.makedirs(rootfs.workdir, mode=0o700, exist_ok=True)
        inherit_root_metadata(rootfs.upperdir, rootfs.lowerdirs[0], rootfs.rootless)
    elif rootfs.scratch:
        os.makedirs(rootfs.scratch, mode=0o700, exist_ok=True)
    if rootfs.squashfs is not None:
        os.makedirs(rootfs.squashfs.mountpoint, mode=0o700, exist_ok=True)


def _open_image_mount(kernel, rootfs, explain: Explain) -> int | None:
    """A squashfs image as root: the launcher's detached mount (rootfs.open_image_mount)."""
    if rootfs is None or rootfs.squashfs is None or rootfs.rootless:
        return None
    from minictr.runtime.rootfs import open_image_mount

    return open_image_mount(kernel, rootfs.squashfs, explain)


def inherit_root_metadata(upper: str, top_layer: str, rootless: bool) -> None:
    """An overlay's root directory shows its upper dir's mode and owner, so the empty upper
    dir takes the image's own root metadata (the top layer's root, which unpacking gave the
    image's `./` entry), as overlay's copy-up would: an image with a 0700 root keeps it."""
    st = os.stat(top_layer)
    os.chmod(upper, st.st_mode & 0o7777)
    if not rootless:
        os.chown(upper, st.st_uid, st.st_gid)


def send_console(kernel, path: str, master: int) -> None:
    """runc's console socket: connect to the caller's AF_UNIX stream socket and send one
    message whose only ancillary data is the pty master (SCM_RIGHTS); no reply is read."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
        kernel.send_fds(sock, b"/dev/ptmx", [master])
    except OSError as err:
        raise RuntimeSetupError(f"console socket {path}: {err.strerror}") from err
    finally:
        sock.close()


def write_pid_file(path: str, pid: int) -> None:
    """The pid file, written atomically (temp + rename(2)), as engines read it once."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, path)


# ---------------------------------------------------------------- start


def start(root: StateRoot, container_id: str, *, kernel=None, explain: Explain = None,
          spec: dict | None = None) -> dict:
    """Release a created container's process (the fifo protocol in the module docstring) and
    run its poststart hooks; a failing poststart hook kills the container (runc). ``spec``:
    the container's config.json as create wrote it, when the caller holds it (`run`)."""
    kernel = kernel or sc.Syscalls()
    st = root.read(container_id)
    now = "created" if getattr(kernel, "dry_run", False) else status(root, st)
    if now != "created":
        raise NotRunning(f"cannot start container {container_id}: it is {now}",
                         hint="only a created container can be started")
    _say(explain, "write exec.fifo  (the container's process goes on to exec)")
    try:
        kernel.signal_fifo(root.file(container_id, state_mod.FIFO))
    except OSError as err:
        if err.errno in (errno.ENXIO, errno.ENOENT):
            raise NotRunning(f"cannot start container {container_id}: its process is gone") \
                from err
        raise
    st = root.update(container_id, status="running")
    if spec is None:
        spec = root.read_config(container_id)
    if _has_hooks(spec, "poststart"):
        from minictr.runtime import hooks

        try:
            hooks.run_hooks(kernel, spec, "poststart",
                                _hook_state(st, "running"), explain)
        except MinictrError:
            kill(root, container_id, signal.SIGKILL)
            raise
    return st


def _has_hooks(spec: dict, stage: str) -> bool:
    """Without hooks a run never imports runtime/hooks.py (subprocess: ~2.5 ms a start)."""
    return bool((spec.get("hooks") or {}).get(stage))


def _hook_state(st: dict, now: str) -> dict:
    return {"ociVersion": state_mod.OCI_VERSION, "id": st["id"], "status": now,
            "pid": st.get("pid", 0), "bundle": st.get("bundle", ""),
            "annotations": st.get("annotations") or {}}


# ---------------------------------------------------------------- signals


def kill(root: StateRoot, container_id: str, sig: int, *, all_: bool = False) -> None:
    """Signal the container's first process (with ``all_``, every process in its cgroup)."""
    st = root.read(container_id)
    now = status(root, st)
    if now in ("stopped",) or not st.get("pid"):
        raise NotRunning(f"container {container_id} is not running",
                         hint="it has stopped: delete it")
    targets = [st["pid"]]
    if all_:
        targets = processes(root, container_id) or targets
    for pid in targets:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    if now == "paused" and sig == signal.SIGKILL:
        _freeze(st, False)                     # a frozen process dies only once thawed


def wait_gone(pid: int, ticks: int | None, timeout: float = 10.0) -> bool:
    """Wait for a process that need not be our child to die (pidfd_open(2) + poll(2))."""
    import select

    if not state_mod.alive(pid, ticks):
        return True
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        deadline = time.monotonic() + timeout
        while state_mod.alive(pid, ticks):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([fd], [], [], min(left, 0.1))
        return True
    finally:
        os.close(fd)


# ---------------------------------------------------------------- delete


def delete(root: StateRoot, container_id: str, *, force: bool = False, kernel=None,
           explain: Explain = None, warn: Explain = None) -> None:
    """Remove a container: a created one is killed first (runc), a running or paused one only
    with ``force``. Its cgroup goes, then its state; poststop hooks run, and their failure
    only warns (runtime.md)."""
    kernel = kernel or sc.Syscalls()
    try:
        st = root.read(container_id)
    except state_mod.NoSuchContainer:
        if force:
            return
        raise
    except state_mod.StateError:
        if not force:
            raise
        root.remove(container_id)                 # unreadable: remove what is there
        return
    now = status(root, st)
    if now in ("running", "paused") and not force:
        raise UsageError(f"cannot delete container {container_id} that is not stopped: {now}",
                         hint="stop it first, or delete --force")
    if now == "creating" and not force:
        raise UsageError(f"container {container_id} is being created",
                         hint="delete --force kills its creator's work")
    if now != "stopped" and st.get("pid"):
        if now == "paused":
            _freeze(st, False)
        try:
            os.kill(st["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_gone(st["pid"], st.get("pid_ticks"))
    if now == "creating" and st.get("creator_pid"):
        try:
            os.kill(st["creator_pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    destroy_cgroup(st)
    if st.get("network") and not st["network"].get("released"):
        from minictr.runtime import network as network_mod

        network_mod.release(kernel, container_id, st["network"])
    spec = None
    try:
        spec = root.read_config(container_id)
    except MinictrError:
        pass
    root.remove(container_id)
    if spec and _has_hooks(spec, "poststop"):
        from minictr.runtime import hooks

        try:
            hooks.run_hooks(kernel, spec, "poststop", _hook_state(st, "stopped"), explain)
        except MinictrError as err:
            if warn:
                warn(str(err))


def destroy_cgroup(st: dict) -> None:
    """Remove the container's cgroup directories (its device program goes with them)."""
    if not st.get("cgroup_paths"):
        return
    from minictr.runtime import cgroups

    try:
        cgroups.Cgroup.from_paths(st["cgroup_paths"]).destroy()
    except OSError as err:
        raise RuntimeSetupError(f"cannot remove cgroup: {err.strerror}") from err


# ---------------------------------------------------------------- exec


def exec_process(root: StateRoot, container_id: str, process: dict, *, attached: bool = True,
                 stdin_null: bool = False, preserve_fds: int = 0,
                 console_socket: str | None = None, pid_file: str | None = None,
                 on_spawned: Callable[[int], None] | None = None, kernel=None,
                 explain: Explain = None) -> Created:
    """Run another process in a created or running container, made by the same spawn path as
    its first: its namespaces (joined through /proc/PID/ns), born in its cgroup."""
    from minictr.runtime import validate

    kernel = kernel or sc.Syscalls()
    st = root.read(container_id)
    now = status(root, st)
    if now not in ("created", "running"):
        raise NotRunning(f"cannot exec in container {container_id}: it is {now}")
    spec = root.read_config(container_id)
    validate.check(dict(spec, process=process))
    _check_capabilities(process, spec, explain)
    if process.get("terminal") and not attached and not console_socket:
        raise UsageError("process.terminal is true but no --console-socket was given")
    entries = spawn_mod.joined_namespaces(st["pid"], spec.get("linux", {}).get("namespaces", []))
    cgroup = _cgroup_of(st)
    plan = spawn_mod.SpawnPlan(process=process, namespaces=spawn_mod.plan_namespaces(entries),
                               rootless=st.get("rootless", False), attached=attached,
                               stdin_null=stdin_null, preserve_fds=preserve_fds,
                               oom_score_adj=process.get("oomScoreAdj"),
                               seccomp=spawn_mod.compile_seccomp(spec, seccomp_cache_dir(root),
                                                                 explain),
                               landlock_scoped=landlock.scopes_for(kernel, spec, explain))
    made = spawn_mod.spawn(kernel, plan, cgroup=cgroup, on_spawned=on_spawned, explain=explain)
    console = made.console
    if console is not None and console_socket:
        send_console(kernel, console_socket, console)
        kernel.close(console)
        console = None
    if pid_file:
        write_pid_file(pid_file, made.pid)
    return Created(pid=made.pid, console=console, exec_pipe=made.exec_pipe)


def _cgroup_of(st: dict):
    if not st.get("cgroup_paths"):
        return None
    from minictr.runtime import cgroups

    return cgroups.Cgroup.from_paths(st["cgroup_paths"], v2_path=st.get("cgroup_v2"))


# ---------------------------------------------------------------- cgroup actions


def processes(root: StateRoot, container_id: str) -> list[int]:
    """The host pids in the container: its cgroup's cgroup.procs, or, without a cgroup, every
    process in its PID namespace."""
    st = root.read(container_id)
    for path in ([st["cgroup_v2"]] if st.get("cgroup_v2") else []) + list(
            st.get("cgroup_paths") or ()):
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            continue
    pid = st.get("pid")
    if not state_mod.alive(pid, st.get("pid_ticks")):
        return []
    try:
        ns = os.readlink(f"/proc/{pid}/ns/pid")
        if ns == os.readlink("/proc/self/ns/pid"):
            return [pid]              # the host's PID namespace (--pid host): not all of it
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdecimal():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                    pids.append(int(entry))
            except OSError:
                pass
    return sorted(pids)


def _freezer(st: dict) -> tuple[str, str, str] | None:
    """(file, freeze value, thaw value) of the container's freezer: cgroup v2's cgroup.freeze
    (a core file of every non-root v2 cgroup, hybrid hosts included), else v1's freezer.state."""
    if st.get("cgroup_v2") and os.path.exists(os.path.join(st["cgroup_v2"], "cgroup.freeze")):
        return os.path.join(st["cgroup_v2"], "cgroup.freeze"), "1", "0"
    for path in st.get("cgroup_paths") or ():
        if os.path.exists(os.path.join(path, "freezer.state")):
            return os.path.join(path, "freezer.state"), "FROZEN", "THAWED"
    return None


def _frozen(st: dict) -> bool:
    found = _freezer(st)
    if found is None:
        return False
    try:
        with open(found[0]) as f:
            return f.read().strip() in ("1", "FROZEN", "FREEZING")
    except OSError:
        return False


def _freeze(st: dict, on: bool) -> None:
    found = _freezer(st)
    if found is None:
        raise RuntimeSetupError(f"container {st['id']} has no cgroup freezer",
                                hint="pause needs a cgroup (rootless: a delegated cgroup v2)")
    path, freeze, thaw = found
    with open(path, "w") as f:
        f.write(freeze if on else thaw)
    if on and path.endswith("cgroup.freeze"):
        events = os.path.join(os.path.dirname(path), "cgroup.events")
        for _ in range(200):                      # the kernel reports when all are frozen
            with open(events) as f:
                if "frozen 1" in f.read():
                    return
            time.sleep(0.005)


def pause(root: StateRoot, container_id: str) -> None:
    st = root.read(container_id)
    if status(root, st) != "running":
        raise NotRunning(f"container {container_id} is not running")
    _freeze(st, True)


def resume(root: StateRoot, container_id: str) -> None:
    st = root.read(container_id)
    if status(root, st) != "paused":
        raise NotRunning(f"container {container_id} is not paused")
    _freeze(st, False)


def update(root: StateRoot, container_id: str, resources: dict, *, explain: Explain = None) -> None:
    """Write new limits into the container's cgroup (runc update --resources)."""
    st = root.read(container_id)
    if status(root, st) == "stopped":
        raise NotRunning(f"container {container_id} is not running")
    from minictr.runtime import cgroups

    if not st.get("cgroup_paths"):
        raise RuntimeSetupError(f"container {container_id} has no cgroup to update",
                                hint="rootless containers without a delegated cgroup have none")
    cgroups.update(st["cgroup_paths"], resources, explain=explain)


def _say(explain: Explain, text: str) -> None:
    if explain:
        explain(text)
