"""The one spawn path: how every process of a container is made, its first one and each
exec'd one alike.

    launcher (host namespaces)                       the new process
    ──────────────────────────                       ───────────────
    setns(pid) and, with a new user namespace,
      the other joined namespaces (then back)
    clone3(CLONE_NEW*, CLONE_INTO_CGROUP)  ───────►  born in the cgroup (so under its device
                                                     filter and limits from its first instant)
    forwards signals from here on  ◄──── "reset"     every signal's disposition back to SIG_DFL
    uid_map/gid_map, oom_score_adj,                  waits for "go"
      cgroup.procs of v1 hierarchies
    "go" {pid}  ─────────────────────────────────►   setns: user first, then the others
                                                     unshare(CLONE_NEWCGROUP): its cgroups are
                                                       final now, so the cgroup ns shows "/"
                                                     setsid; the first process builds the rootfs
    runs prestart/createRuntime hooks  ◄── "hooks"     (container.setup_rootfs) and asks for
                                       ──► "go on"      the runtime's hooks before pivot_root
    receives the pty master  ◄────────── "console"   console, rlimits, no_new_privs, bounding
                                                     set, uid/gid, cwd, capabilities
                                                     PATH search (127/126 reported here)
    ◄──────────────────────────────────── "ready"    closes every other fd
                                                     first process: waits on exec.fifo until
                                                       `start`, then startContainer hooks
                                                     fexecve(mcinit memfd) → execve(command)

One process is made, by one clone3(2); nothing of minictr stays between the caller and it
(runc's double fork exists because Go cannot clone into a PID namespace directly). A PID
namespace applies only to children, so the launcher joins the container's with setns(2) just
for the clone, and returns to its own. The exec'd process is therefore a direct child of the
launcher, in the container's cgroup, under the same device filter, capabilities,
no_new_privs, rlimits and mcinit as the first: there is no second way to start a process.
"""
from __future__ import annotations

import errno
import os
import select  # noqa: F401 - lifecycle.wait_for_start polls after pivot_root
import _signal as signal  # signal.py's C core: the same calls, numbers as ints (signal.py imports enum: ~3 ms)
import _socket  # socket.py's C core: socket.py imports enum and selectors (~2 ms)
import struct
from _collections_abc import Callable

from minictr import jsonio
from minictr.config import INIT_BINARY
from minictr.errors import (EXIT_CANNOT_EXEC, EXIT_LAUNCHER, EXIT_NOT_FOUND, ContainerExecError,
                            MinictrError, RuntimeSetupError, SpecError, hint_for)
from minictr.records import record
from minictr.runtime import capabilities, container
from minictr.runtime import seccomp as seccomp_mod  # noqa: F401 - loaded after pivot_root
from minictr.runtime import syscalls as sc

Explain = Callable[[str], None] | None

MCINIT = INIT_BINARY
# Python ignores SIGPIPE and SIGXFSZ for itself; an ignored disposition survives execve(2), so
# they are reset, or every container process would ignore them too (subprocess's
# restore_signals does the same).
PROC_NS_NAME = {"user": "user", "mount": "mnt", "pid": "pid", "uts": "uts", "ipc": "ipc",
                "network": "net", "cgroup": "cgroup"}
USER_FIRST = ("user", "ipc", "uts", "network", "cgroup", "pid", "mount")


# ---------------------------------------------------------------- what to make


@record
class NamespacePlan:
    """How the new process gets each namespace (see ``plan_namespaces``)."""

    clone_flags: int = 0                 # created by clone3
    child_unshare: int = 0               # created by the child (after joining a user ns)
    new_cgroup_ns: bool = False          # unshared by the child once placed in its cgroups
    parent_joins: tuple = ()             # (type, path): joined by the launcher around clone
    child_joins: tuple = ()              # (type, path): joined by the child, user first


def compile_seccomp(spec: dict, cache_dir: str, explain: Explain) -> tuple | None:
    """The launcher compiles linux.seccomp (libseccomp, cached by its digest); the child only
    loads the program (runtime/seccomp.py)."""
    profile = (spec.get("linux") or {}).get("seccomp")
    if not profile:
        return None
    from minictr.runtime import seccomp_cache

    compiled = seccomp_cache.cached_filter(profile, cache_dir)
    if explain:
        explain(seccomp_mod.describe(profile))
        if compiled.unknown_syscalls:
            explain("seccomp: not in this libseccomp (they get ENOSYS): "
                    + ", ".join(compiled.unknown_syscalls))
    return compiled.bpf, compiled.flags


def plan_namespaces(entries: list[dict]) -> NamespacePlan:
    """linux.namespaces → who creates or joins what, in an order the kernel accepts.

    - A new namespace is a clone3 flag, except cgroup: the child unshares it after the
      launcher has placed it in every hierarchy, so that /proc/self/cgroup shows "/" for v1
      controllers too (runc's order).
    - A ``path`` is joined with setns(2). The PID namespace by the launcher, for the clone
      only. The others by the child, the user namespace first (it grants the capabilities
      the others need) and the mount namespace last, except when the process also gets a new
      user namespace: inside it the child would lack the capabilities for namespaces owned by
      the host's, so the launcher joins those around the clone instead.
    """
    by_type: dict[str, str | None] = {}
    for ns in entries:
        kind = ns.get("type")
        if kind not in sc.NAMESPACE_FLAGS:
            raise SpecError(f"linux.namespaces: type {kind!r} is not supported by minictr",
                            hint="supported: " + ", ".join(sc.NAMESPACE_FLAGS))
        if kind in by_type:
            raise SpecError(f"linux.namespaces: {kind} is listed twice")
        path = ns.get("path")
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            raise SpecError(f"linux.namespaces: {kind} path {path!r} must be absolute")
        by_type[kind] = path
    if "mount" not in by_type:
        raise SpecError("linux.namespaces: a container needs a mount namespace",
                        hint='add {"type": "mount"}')
    new_user = "user" in by_type and by_type["user"] is None
    joined_user = by_type.get("user") is not None
    flags = unshare = 0
    parent, child = [], []
    for kind in USER_FIRST:
        if kind not in by_type:
            continue
        path = by_type[kind]
        if path is None:
            if kind == "cgroup":
                continue
            if joined_user and kind != "pid":
                unshare |= sc.NAMESPACE_FLAGS[kind]      # owned by the joined user ns
            elif joined_user:
                raise SpecError("linux.namespaces: a new pid namespace inside a joined user "
                                "namespace is not supported by minictr",
                                hint="join the pid namespace too, or create the user namespace")
            else:
                flags |= sc.NAMESPACE_FLAGS[kind]
        elif kind == "pid" or (new_user and kind not in ("user", "mount")):
            parent.append((kind, path))
        elif kind == "mount" and new_user:
            raise SpecError("linux.namespaces: joining a mount namespace from a new user "
                            "namespace is not supported", hint="join the user namespace too")
        else:
            child.append((kind, path))
    return NamespacePlan(clone_flags=flags, child_unshare=unshare,
                         new_cgroup_ns="cgroup" in by_type and by_type["cgroup"] is None,
                         parent_joins=tuple(parent), child_joins=tuple(child))


def joined_namespaces(pid: int, entries: list[dict]) -> list[dict]:
    """The namespaces of a running container's process, for an exec: each one its spec has,
    joined through /proc/PID/ns."""
    return [{"type": ns["type"], "path": f"/proc/{pid}/ns/{PROC_NS_NAME[ns['type']]}"}
            for ns in entries if ns.get("type") in PROC_NS_NAME]


@record
class SpawnPlan:
    """One process to make."""

    process: dict                        # the spec's process object
    namespaces: NamespacePlan
    rootless: bool = False
    attached: bool = True                # the launcher stays its parent: die with it
    stdin_null: bool = False             # minictr run without -i: stdin is /dev/null
    stdio: tuple = ()                    # fds that become 0, 1, 2 (a detached run's log)
    preserve_fds: int = 0                # fds 3..3+N-1 pass in (runc --preserve-fds)
    keep_fds: tuple = ()                 # more fds that pass in by number (Slurm's PMI_FD)
    container: object = None             # the first process: (spec, RootfsPlan or None)
    fifo_fd: int | None = None           # the first process waits on it for `start`
    uid_mappings: tuple = ()             # written for a new user namespace
    gid_mappings: tuple = ()
    hook_state: dict | None = None       # state the in-container hooks are given
    oom_score_adj: int | None = None
    no_pivot: bool = False               # runc --no-pivot: MS_MOVE + chroot
    seccomp: tuple | None = None         # (BPF program, flags) compiled by the launcher
    landlock_scoped: int = 0             # LANDLOCK_SCOPE_* mask (runtime/landlock.py)
    new_keyring: str | None = None       # the first process joins a new session keyring
    image_mount: int | None = None       # the launcher's detached squashfs mount (fsmount fd)
    nest_ids: tuple | None = None        # (uid, gid): set up as root, then nest (idmap.py)


@record
class Spawned:
    pid: int
    console: int | None = None           # the pty master, when process.terminal
    exec_pipe: int | None = None         # attached: EOF once the command is exec'd


# ---------------------------------------------------------------- the channel


class Channel:
    """Messages between launcher and child over a SOCK_SEQPACKET pair: one JSON object each,
    optionally with one fd (SCM_RIGHTS)."""

    def __init__(self, sock):
        self.sock = sock

    def send(self, kind: str, fd: int | None = None, **fields) -> None:
        data = jsonio.dumps({"type": kind, **fields}).encode()
        if fd is None:
            self.sock.send(data)
        else:
            # unix(7): the fd travels as SCM_RIGHTS ancillary data (socket.send_fds)
            self.sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                                        struct.pack("i", fd))])

    def receive(self) -> tuple[dict | None, int | None]:
        """(message, fd) or (None, None) at EOF: the other side is gone."""
        try:
            data, ancillary, _, _ = self.sock.recvmsg(65536, _socket.CMSG_LEN(struct.calcsize("i")))
        except ConnectionResetError:
            return None, None
        fds = [fd for level, kind, payload in ancillary
               if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS
               for fd in struct.unpack(f"{len(payload) // 4}i", payload[:len(payload) // 4 * 4])]
        if not data:
            return None, None
        return jsonio.loads(data), (fds[0] if fds else None)

    def close(self) -> None:
        self.sock.close()


class DirectChannel:
    """A dry run's channel: there is no child process, so a request is answered in place."""

    def __init__(self, on_hooks: Callable[[int], None] | None, explain: Explain):
        self.on_hooks, self.explain = on_hooks, explain

    def send(self, kind: str, fd: int | None = None, **fields) -> None:
        if kind == "hooks" and self.on_hooks:
            self.on_hooks(fields.get("pid", 0))

    def receive(self):
        return {"type": "continue"}, None

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- launcher side


def spawn(kernel, plan: SpawnPlan, *, cgroup=None, on_spawned: Callable[[int], None] | None = None,
          on_placed: Callable[[int], None] | None = None,
          on_hooks: Callable[[int], None] | None = None, explain: Explain = None) -> Spawned:
    """Make the process ``plan`` describes and wait until it is ready to exec (see the module
    docstring). ``on_spawned(pid)`` runs right after the clone, once the child has reset its
    signal dispositions (signal forwarding starts there: see ``_await_reset``); ``on_placed(pid)`` once its id maps and cgroups are in place, before "go" (the
    launcher connects its network namespace there); ``on_hooks(pid)`` runs the
    runtime-namespace hooks when the child asks."""
    if getattr(kernel, "dry_run", False):
        return _dry_spawn(kernel, plan, cgroup, on_spawned, on_placed, on_hooks, explain)
    ours, theirs = _socket.socketpair(_socket.AF_UNIX,
                                      _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    exec_r = exec_w = None
    if plan.attached:
        exec_r, exec_w = os.pipe2(os.O_CLOEXEC)
    pid = None
    try:
        pid, born_in = _clone(kernel, plan.namespaces, cgroup, explain)
        if pid == 0:
            ours.close()
            if exec_r is not None:
                os.close(exec_r)
            child_main(kernel, plan, Channel(theirs), exec_w, explain)
        theirs.close()
        theirs = None
        if exec_w is not None:
            os.close(exec_w)
            exec_w = None
        channel = Channel(ours)
        _await_reset(channel)
        if on_spawned:
            on_spawned(pid)
        _place(kernel, plan, pid, cgroup, born_in, explain)
        if on_placed:
            on_placed(pid)
        try:
            channel.send("go", pid=pid)
            console = _serve(channel, pid, on_hooks)
        except (BrokenPipeError, ConnectionResetError) as err:
            raise RuntimeSetupError("the container's process died during setup",
                                    hint="a signal killed it, or see its stderr") from err
        return Spawned(pid=pid, console=console, exec_pipe=exec_r)
    except BaseException:
        if pid:
            _kill_and_reap(pid)
        if exec_r is not None:
            os.close(exec_r)
        raise
    finally:
        ours.close()
        if theirs is not None:
            theirs.close()
        if exec_w is not None:
            os.close(exec_w)


def _dry_spawn(kernel, plan: SpawnPlan, cgroup, on_spawned, on_placed, on_hooks,
               explain) -> Spawned:
    """The same steps against a recording face: the parent's, then the child's in place."""
    pid, born_in = _clone(kernel, plan.namespaces, cgroup, explain)
    if on_spawned:
        on_spawned(pid)
    _place(kernel, plan, pid, cgroup, born_in, explain)
    if on_placed:
        on_placed(pid)
    prepare(kernel, plan, DirectChannel(on_hooks, explain), pid, None, explain)
    return Spawned(pid=pid)


def _clone(kernel, ns: NamespacePlan, cgroup, explain: Explain) -> tuple[int, str | None]:
    """clone3 into the cgroup, inside the namespaces the launcher joins for it; the launcher
    then returns to its own namespaces, the child keeps the joined ones."""
    saved = []
    pid = None
    try:
        for kind, path in ns.parent_joins:
            own = "pid_for_children" if kind == "pid" else PROC_NS_NAME[kind]
            saved.append((kind, os.open(f"/proc/self/ns/{own}", os.O_RDONLY | os.O_CLOEXEC)))
            _setns_path(kernel, kind, path, explain)
        pid, born_in = _clone_into(kernel, ns.clone_flags, cgroup, explain)
        return pid, born_in
    finally:
        for kind, own in reversed(saved):
            try:
                if pid != 0:                          # the launcher, not the new child
                    kernel.setns(own, sc.NAMESPACE_FLAGS[kind])
            finally:
                os.close(own)


def _clone_into(kernel, flags: int, cgroup, explain: Explain) -> tuple[int, str | None]:
    """clone3(CLONE_INTO_CGROUP): born in the cgroup v2 directory, which spares the ~15 ms of a
    cgroup.procs migration (it waits for an RCU grace period); kernels before 5.7 get clone
    plus that write."""
    where = cgroup.v2_path if cgroup is not None else None
    if where is not None:
        fd = kernel.open(where, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _say(explain, f"clone3({sc.ns_flag_names(flags)}, CLONE_INTO_CGROUP {where})")
            return kernel.clone3(flags, fd), where
        except OSError as err:
            if err.errno not in (errno.ENOSYS, errno.EINVAL, errno.E2BIG):
                raise
        finally:
            kernel.close(fd)
    _say(explain, f"clone({sc.ns_flag_names(flags)})")
    return kernel.clone(flags), None


def _place(kernel, plan: SpawnPlan, pid: int, cgroup, born_in, explain: Explain) -> None:
    """The parent's part before "go": id maps, oom_score_adj, the remaining cgroups."""
    if plan.namespaces.clone_flags & sc.CLONE_NEWUSER:
        from minictr.runtime import idmap

        idmap.write_id_maps(kernel, pid, list(plan.uid_mappings), list(plan.gid_mappings),
                            explain)
    if plan.oom_score_adj is not None:
        _say(explain, f"write {plan.oom_score_adj} > /proc/{pid}/oom_score_adj")
        kernel.write_file(f"/proc/{pid}/oom_score_adj", str(plan.oom_score_adj))
    if cgroup is not None:
        cgroup.add_process(pid, born_in=born_in)


def _await_reset(channel: Channel) -> None:
    """Wait until the child has put every signal's disposition back to SIG_DFL. Until then it
    is a fork of the launcher and has the launcher's handlers: a signal forwarded to it then
    (the Supervisor starts forwarding at ``on_spawned``) would run our handler in the child and
    be lost, and its caught mask would tell the Supervisor that the container handles the
    signal itself, so a Ctrl-C during setup would leave the container running."""
    msg, _ = channel.receive()
    if msg is None:
        raise RuntimeSetupError("the container's process died during setup",
                                hint="a signal killed it, or see its stderr")
    if msg["type"] == "error":
        raise error_from(msg)
    if msg["type"] != "reset":
        raise RuntimeSetupError(f"the container's process sent {msg['type']!r} before "
                                "resetting its signals")


def _serve(channel: Channel, pid: int, on_hooks) -> int | None:
    """Answer the child until it is ready; its error becomes ours."""
    console = None
    while True:
        msg, fd = channel.receive()
        if msg is None:
            raise RuntimeSetupError("the container's process died during setup",
                                    hint="run with --debug, or see the container's stderr")
        kind = msg["type"]
        if kind == "hooks":
            try:
                if on_hooks:
                    on_hooks(pid)
            except MinictrError as err:
                channel.send("abort")
                raise err
            channel.send("continue")
        elif kind == "console":
            console = fd
        elif kind == "ready":
            return console
        elif kind == "error":
            if console is not None:
                os.close(console)
            raise error_from(msg)


def error_from(msg: dict) -> MinictrError:
    code = msg.get("exit", EXIT_LAUNCHER)
    if code in (EXIT_CANNOT_EXEC, EXIT_NOT_FOUND):
        return ContainerExecError(msg["message"], hint=msg.get("hint"), exit_code=code)
    return RuntimeSetupError(msg["message"], hint=msg.get("hint"))


def wait_for_exec(exec_r: int, command: str) -> None:
    """Attached: read the exec pipe until EOF. EOF alone means the command was exec'd; an
    errno from mcinit means execve(2) failed (ENOEXEC: wrong architecture, or a script
    without #!)."""
    chunks = []
    try:
        while True:
            data = os.read(exec_r, 4096)
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(exec_r)
    raw = b"".join(chunks).decode(errors="replace").strip()
    if raw.startswith("{"):                 # the child failed after "ready" (spawn._report)
        raise error_from(jsonio.loads(raw))
    if raw:
        raise exec_error(command, int(raw.splitlines()[0]))


def exec_error(command: str, err: int) -> ContainerExecError:
    if err in (errno.ENOENT, errno.ENOTDIR):
        return ContainerExecError(f"exec {command}: no such file or directory (or its #! "
                                  "interpreter is missing)", exit_code=EXIT_NOT_FOUND,
                                  hint="check the command and the image's PATH")
    if err == errno.ENOEXEC:
        return ContainerExecError(f"exec {command}: exec format error",
                                  hint="a binary for another architecture, or a script "
                                       "without a #! line")
    return ContainerExecError(f"exec {command}: {os.strerror(err)}",
                              hint="is it executable, and built for this architecture?")


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


# ---------------------------------------------------------------- the child


def child_main(kernel, plan: SpawnPlan, channel, exec_w: int | None, explain: Explain) -> None:
    """Runs in the new process. Never returns: it execs, or reports an error and _exits."""
    try:
        kernel.reset_signals()      # ignored dispositions survive execve, even 32 and 33
        channel.send("reset")       # signals may be forwarded to it now (_await_reset)
        if plan.container is None or not plan.rootless:
            # This process is a fork of the host's Python until it fexecve()s mcinit. Dumpable,
            # its /proc/PID/exe is open to the container's processes once it has their
            # capabilities: an fd to the host's interpreter (runc CVE-2019-5736). execve makes
            # it dumpable again, as mcinit. A rootless first process stays dumpable: newuidmap
            # and pasta open its /proc/PID as its owner, and nothing runs in its container yet.
            kernel.set_dumpable(False)
        if plan.attached:
            capabilities.die_with_parent(kernel)
        msg, _ = channel.receive()
        if not msg or msg.get("type") != "go":    # EOF: the launcher died before saying go
            os._exit(EXIT_LAUNCHER)
        prepare(kernel, plan, channel, msg["pid"], exec_w, explain)
    except MinictrError as err:
        _report(channel, exec_w, str(err), err.hint, getattr(err, "exit_code", EXIT_LAUNCHER))
    except OSError as err:
        text = err.strerror or str(err)
        if err.filename:
            text = f"{text}: {err.filename}"
        _report(channel, exec_w, text, hint_for(sc.call_of(err) or "", err.errno or 0),
                EXIT_LAUNCHER)
    except BaseException as err:   # noqa: BLE001 - anything else must still reach the launcher
        _report(channel, exec_w, f"{type(err).__name__}: {err}", None, EXIT_LAUNCHER)
    os._exit(EXIT_LAUNCHER)


def prepare(kernel, plan: SpawnPlan, channel, host_pid: int, exec_w: int | None,
            explain: Explain) -> None:
    """Everything between "go" and execve, for the first process and an exec'd one alike; a
    dry run calls this in place. Does not return when it succeeds."""
    ns = plan.namespaces
    # mcinit is read while the host's files are in view: before setns(mount) or pivot_root.
    init_fd = kernel.memfd_sealed(MCINIT, "mcinit")
    # So is /dev/null for stdin: after setns(mount) the name would be the container's to choose
    # (a FIFO that never answers, a device node), opened by the launcher before caps are dropped.
    null = kernel.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) if plan.stdin_null else None
    for kind, path in ns.child_joins:
        _setns_path(kernel, kind, path, explain)
    if ns.child_unshare:
        _say(explain, f"unshare({sc.ns_flag_names(ns.child_unshare)})")
        kernel.unshare(ns.child_unshare)
    if ns.new_cgroup_ns:
        # Its cgroups are final now: the new cgroup namespace's root is each of them.
        _say(explain, "unshare(CLONE_NEWCGROUP)  (cgroups are final: the container sees /)")
        kernel.unshare(sc.CLONE_NEWCGROUP)
    kernel.setsid()
    if plan.new_keyring is not None:
        _join_keyring(kernel, plan.new_keyring, explain)
    for target, fd in enumerate(plan.stdio):
        if fd is not None and fd != target:
            kernel.dup2(fd, target)
    if null is not None:
        kernel.dup2(null, 0)
        kernel.close(null)
    process = plan.process
    if plan.container is not None:
        spec, rootfs = plan.container
        state = dict(plan.hook_state or {}, pid=host_pid)

        def runtime_hooks() -> None:
            channel.send("hooks", pid=host_pid)
            reply, _ = channel.receive()
            if not reply or reply.get("type") != "continue":
                raise RuntimeSetupError("prestart/createRuntime hooks failed")

        container.setup_rootfs(kernel, spec, rootfs, plan.rootless, explain,
                               runtime_hooks=runtime_hooks, hook_state=state,
                               no_pivot=plan.no_pivot, image_mount=plan.image_mount)
    if plan.nest_ids is not None:
        from minictr.runtime import idmap

        idmap.nest_user_namespace(kernel, plan.nest_ids[0], plan.nest_ids[1], explain)
    if process.get("terminal"):
        container.make_console(kernel, channel, process.get("consoleSize"), explain)
    container.setup_process(kernel, process, plan.rootless, explain,
                            keep_pdeathsig=plan.attached, seccomp=plan.seccomp,
                            landlock_scoped=plan.landlock_scoped)
    path = container.find_executable(kernel, process)
    container.close_fds(kernel, 3 + plan.preserve_fds, explain, plan.keep_fds)
    if plan.fifo_fd is not None:
        _say(explain, "wait on exec.fifo until start")
    channel.send("ready")
    if getattr(kernel, "dry_run", False) and plan.fifo_fd is not None:
        # the recorded child goes on when `start` writes the fifo, as the real one would
        kernel.when_fifo_written(lambda: finish(kernel, plan, path, init_fd, host_pid, exec_w,
                                                explain))
        return
    finish(kernel, plan, path, init_fd, host_pid, exec_w, explain)


def finish(kernel, plan: SpawnPlan, path: str, init_fd: int, host_pid: int,
           exec_w: int | None, explain: Explain) -> None:
    """After "ready": the first process waits for `start`, runs the startContainer hooks;
    then every process execs."""
    if plan.fifo_fd is not None:
        wait_for_start(kernel, plan.fifo_fd, explain)
        spec = plan.container[0] if plan.container is not None else {}
        if (spec.get("hooks") or {}).get("startContainer"):
            from minictr.runtime import hooks        # imported before pivot_root (setup_rootfs)

            hooks.run_hooks(kernel, spec, "startContainer",
                            dict(plan.hook_state or {}, pid=host_pid, status="created"),
                            explain)
    container.exec_process(kernel, plan.process, path, init_fd, exec_w, explain,
                           seccomp=plan.seccomp)


def wait_for_start(kernel, fifo_fd: int, explain: Explain) -> None:
    """Block until `start` writes to exec.fifo (see lifecycle.start for the protocol)."""
    if getattr(kernel, "dry_run", False):
        return
    poller = select.poll()
    poller.register(fifo_fd, select.POLLIN)
    while True:
        try:
            poller.poll()
        except InterruptedError:
            continue
        data = os.read(fifo_fd, 1)
        if data:
            break
        # The writer closed without writing: keep waiting for a real start.
    os.close(fifo_fd)


def _join_keyring(kernel, name: str, explain: Explain) -> None:
    """A session keyring of the container's own (runc does the same unless --no-new-keyring):
    otherwise its processes share the launcher's session keyring and the keys in it."""
    _say(explain, f"keyctl(KEYCTL_JOIN_SESSION_KEYRING, {name[:12]!r})")
    try:
        kernel.join_session_keyring(name)
    except OSError as err:
        if err.errno != errno.ENOSYS:           # a kernel without keys: nothing to isolate
            raise


def _setns_path(kernel, kind: str, path: str, explain: Explain) -> None:
    _say(explain, f"setns({path}, {sc.ns_flag_names(sc.NAMESPACE_FLAGS[kind])})")
    fd = kernel.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        kernel.setns(fd, sc.NAMESPACE_FLAGS[kind])
    finally:
        kernel.close(fd)


def _report(channel, exec_w: int | None, message: str, hint: str | None, code: int) -> None:
    """Before "ready" the launcher reads the channel; after it (waiting for start, the
    startContainer hooks, seccomp) an attached launcher reads the exec pipe, and a detached
    container has only its stderr, where runc too writes such an error."""
    try:
        channel.send("error", message=message, hint=hint, exit=code)
        return
    except OSError:
        pass
    data = jsonio.dumps({"message": message, "hint": hint, "exit": code})
    try:
        if exec_w is not None:
            os.write(exec_w, data.encode())
        else:
            os.write(2, f"minictr: error: {message}\n".encode())
    except OSError:
        pass


def _say(explain: Explain, text: str) -> None:
    if explain:
        explain(text)
