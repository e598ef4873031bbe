"""Executing an OCI runtime spec: the one place where the steps are put in order.

    launcher (host namespaces)                 container PID 1 (new namespaces)
    ──────────────────────────                 ────────────────────────────────
    cgroup made, limits written
    clone(CLONE_NEW{NS,PID,UTS,IPC,CGROUP     ─► waits on the sync pipe
          [,NET][,USER]})
    uid_map/gid_map written (user ns)
    pid written to cgroup.procs
    "go" ───────────────────────────────────► setsid, stdio (pty), lo up (net ns)
                                               mounts private, overlay at root.path
                                               /proc /dev /sys ... devices, links
                                               hostname, pivot_root
                                               masked / read-only paths, rlimits
                                               no_new_privs, bounding set, uid/gid
                                               chdir (checked), capabilities, close fds
    reads the error pipe until EOF  ◄──────── fexecve(mcinit memfd) → execvp(process.args)
    forwards signals, waits, reports 128+N

The child is made with a raw clone(2) (fork semantics plus namespace flags): with CLONE_NEWPID
it is PID 1 of the new namespace directly, with no intermediate process. That is only safe in a
single-threaded process, which the launcher is by the time it runs a container.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import struct
from collections.abc import Callable

from minictr.errors import (EXIT_CANNOT_EXEC, EXIT_LAUNCHER, EXIT_NOT_FOUND, ContainerExecError,
                            MinictrError, RuntimeSetupError, hint_for)
from minictr.runtime import capabilities, cleanup, rootfs as rootfs_mod, state as state_mod
from minictr.runtime import syscalls as sc
from minictr.runtime.process import Supervisor

Explain = Callable[[str], None] | None

MCINIT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mcinit")
# ioctl_tty(2) numbers (asm-generic/ioctls.h); Python's termios lacks the newer ones.
TIOCSPTLCK = 0x40045431
TIOCGPTPEER = 0x5441
TIOCSCTTY = 0x540E
RLIMITS = {"RLIMIT_AS": 9, "RLIMIT_CORE": 4, "RLIMIT_CPU": 0, "RLIMIT_DATA": 2, "RLIMIT_FSIZE": 1,
           "RLIMIT_LOCKS": 10, "RLIMIT_MEMLOCK": 8, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13,
           "RLIMIT_NOFILE": 7, "RLIMIT_NPROC": 6, "RLIMIT_RSS": 5, "RLIMIT_RTPRIO": 14,
           "RLIMIT_RTTIME": 15, "RLIMIT_SIGPENDING": 11, "RLIMIT_STACK": 3}


def namespace_flags(spec: dict) -> int:
    """clone(2) flags for the spec's linux.namespaces entries that have no path (new ones)."""
    flags = 0
    for ns in spec.get("linux", {}).get("namespaces", ()):
        if not ns.get("path"):
            flags |= sc.NAMESPACE_FLAGS[ns["type"]]
    return flags


# ---------------------------------------------------------------- the container side


def setup_container(kernel, spec: dict, plan, explain: Explain, *, init_fd: int | None,
                    err_fd: int, init: bool, rootless: bool, tty_socket=None) -> None:
    """Everything PID 1 does between clone and execve, in runc's order (reference/RUNTIME.md,
    "Order of the final steps"). Does not return when it succeeds: it execs mcinit."""
    linux = spec.get("linux", {})
    process = spec["process"]
    ns_types = {ns["type"] for ns in linux.get("namespaces", ())}
    if "network" in ns_types:
        _say(explain, "ip link set lo up  (a new network namespace has only lo, and it is down)")
        kernel.link_up("lo")
    rootfs_mod.make_mounts_private(kernel, explain)
    root_path = spec["root"]["path"]
    rootfs_mod.mount_rootfs(kernel, plan, root_path, explain)
    root_fd = kernel.open(root_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        rootfs_mod.mount_all(kernel, root_fd, spec, rootless, explain)
    finally:
        kernel.close(root_fd)
    if "uts" in ns_types and spec.get("hostname"):
        _say(explain, f"sethostname({spec['hostname']!r})")
        kernel.sethostname(spec["hostname"])
    rootfs_mod.pivot_into(kernel, root_path, explain)
    rootfs_mod.finish_rootfs(kernel, spec, explain)
    if tty_socket is not None:
        make_console(kernel, tty_socket, explain)
    for rl in process.get("rlimits", ()):
        _say(explain, f"setrlimit({rl['type']}, {rl['soft']}, {rl['hard']})")
        kernel.setrlimit(RLIMITS[rl["type"]], rl["soft"], rl["hard"])
    if process.get("noNewPrivileges"):
        capabilities.set_no_new_privs(kernel, explain)
    caps = process.get("capabilities", {})
    capabilities.drop_bounding_set(kernel, caps, explain)
    set_user(kernel, process.get("user", {}), rootless, explain)
    capabilities.die_with_parent(kernel)       # setuid cleared it
    enter_cwd(kernel, process.get("cwd", "/"), explain)
    capabilities.apply_sets(kernel, caps, explain)
    exec_process(kernel, process, init_fd, err_fd, init, explain)


def make_console(kernel, sock, explain: Explain) -> None:
    """Open a pty in the container's own devpts and send its master to the launcher.

    The pty must come from the container's devpts instance (newinstance): a host pty would not
    exist under the container's /dev/pts, so ttyname(3) and job control would fail. runc does
    the same, passing the master over a unix socket (unix(7), SCM_RIGHTS). TIOCGPTPEER opens the
    slave from the master without a path lookup (ioctl_tty(2)).
    """
    # This runs after pivot_root, when no new module can be imported from the host: fcntl and
    # struct are imported at the top of this module, and socket is loaded already (``sock`` is
    # one of its objects).
    import socket

    _say(explain, "open /dev/ptmx; ioctl(TIOCGPTPEER); send the master to the launcher")
    master = kernel.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    socket.send_fds(sock, [b"M"], [master])
    os.close(master)
    fcntl.ioctl(slave, TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        kernel.dup2(slave, fd)
    os.close(slave)


def set_user(kernel, user: dict, rootless: bool, explain: Explain) -> None:
    """Groups, then gid, then uid: once the uid is not 0 we could no longer change the others."""
    uid, gid = user.get("uid", 0), user.get("gid", 0)
    groups = list(user.get("additionalGids", ()))
    capabilities.keep_caps_across_setuid(kernel)
    if not rootless or groups:
        # A rootless single-id map has setgroups "deny": only an explicit list is attempted.
        _say(explain, f"setgroups({groups})")
        kernel.setgroups(groups)
    _say(explain, f"setresgid({gid}); setresuid({uid})")
    kernel.setresgid(gid)
    kernel.setresuid(uid)


def enter_cwd(kernel, cwd: str, explain: Explain) -> None:
    """chdir to the spec's cwd and check it is inside the root.

    runc CVE-2024-21626: a cwd of /proc/self/fd/N (N a leaked host fd) lands outside the
    container's root. After pivot_root the kernel reports such a cwd as unreachable: getcwd(3)
    fails with ENOENT (or yields a path not starting with "/"). Refuse it.
    """
    _say(explain, f"chdir({cwd!r})")
    try:
        kernel.chdir(cwd)
    except FileNotFoundError:
        os.makedirs(cwd, exist_ok=True)     # docker creates a missing WORKDIR; we are inside now
        kernel.chdir(cwd)
    try:
        where = os.getcwd()
    except FileNotFoundError:
        where = "(unreachable)"
    if not where.startswith("/"):
        raise RuntimeSetupError(f"working directory {cwd!r} is outside the container's root",
                                hint="a cwd through /proc/self/fd is refused (CVE-2024-21626)")


def exec_process(kernel, process: dict, init_fd: int | None, err_fd: int, init: bool,
                 explain: Explain) -> None:
    """Close every fd we do not pass on, then execve the process through mcinit (see
    native/mcinit.c: /proc/self/exe must not name a host binary, runc CVE-2019-5736)."""
    args = list(process["args"])
    env = dict(e.split("=", 1) if "=" in e else (e, "") for e in process.get("env", ()))
    keep = 3 + int(process.get("preserveFds", 0) or 0)
    # Every fd from `keep` up is marked close-on-exec; only the error pipe crosses into mcinit,
    # which marks it close-on-exec again before the container's program runs.
    kernel.close_range(keep, 0xFFFFFFFF, sc.CLOSE_RANGE_CLOEXEC)
    kernel.set_inheritable(err_fd)
    mode = "init" if init else "exec"
    _say(explain, f"execve({args[0]!r}, {args!r})" + ("  via mcinit --init as PID 1" if init else ""))
    kernel.fexecve(init_fd, ["mcinit", str(err_fd), mode, "--", *args], env)


def load_mcinit() -> int:
    """Copy mcinit into a sealed memfd (memfd_create(2), F_SEAL_*): the container's PID 1 will
    be this anonymous file, not anything on the host's disk."""
    fd = os.memfd_create("mcinit", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    with open(MCINIT, "rb") as src:
        os.sendfile(fd, src.fileno(), 0, os.fstat(src.fileno()).st_size)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK
                | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
    return fd


def _child_main(kernel, spec, plan, explain, sync_r, err_w, tty_socket, interactive, init,
                rootless) -> None:
    """Runs in the cloned child. Never returns: it execs, or reports an error and _exits."""
    code = EXIT_LAUNCHER
    try:
        capabilities.die_with_parent(kernel)
        if os.read(sync_r, 1) != b"G":            # EOF: the launcher died before saying go
            os._exit(EXIT_LAUNCHER)
        os.close(sync_r)
        kernel.setsid()
        if tty_socket is None and not interactive:
            kernel.dup2(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC), 0)
        init_fd = load_mcinit()
        setup_container(kernel, spec, plan, explain, init_fd=init_fd, err_fd=err_w, init=init,
                        rootless=rootless, tty_socket=tty_socket)
    except MinictrError as err:
        report_error(err_w, str(err), err.hint, getattr(err, "exit_code", EXIT_LAUNCHER))
    except OSError as err:
        text = err.strerror or str(err)
        if err.filename:
            text = f"{text}: {err.filename}"
        report_error(err_w, text, hint_for(text.split("(")[0], err.errno or 0), code, err.errno)
    except BaseException as err:   # noqa: BLE001 - anything else must still reach the launcher
        report_error(err_w, f"{type(err).__name__}: {err}", None, code)
    os._exit(code)


def report_error(err_w: int, message: str, hint: str | None, code: int, errno_: int | None = None):
    data = json.dumps({"message": message, "hint": hint, "exit": code, "errno": errno_})
    try:
        os.write(err_w, data.encode())
    except OSError:
        pass


# ---------------------------------------------------------------- the launcher side


def run(spec: dict, plan, *, paths, container_id: str, name: str, image: str,
        remove: bool = False, tty: bool = False, interactive: bool = False, init: bool = False,
        layers: tuple = (), explain: Explain = None, warn: Explain = None,
        dry_run: bool = False, kernel=None) -> int:
    """Create, start and wait for the container; return its exit code."""
    if dry_run:
        return _dry_run(spec, plan, explain, init=init, rootless=paths.rootless)
    if len(os.listdir("/proc/self/task")) > 1:     # any thread, Python's or a library's
        raise RuntimeSetupError("cannot start a container from a multi-threaded launcher",
                                hint="this is a bug in minictr: please report it")
    kernel = kernel or sc.Syscalls()
    state_dir = state_mod.container_dir(paths.state, container_id)
    cgroup = None
    pid = None
    rootfs_mod.check_upper_filesystem(plan)
    os.makedirs(spec["root"]["path"], mode=0o700, exist_ok=True)
    if plan is not None and plan.upperdir:
        os.makedirs(plan.upperdir, mode=0o755, exist_ok=True)
        os.makedirs(plan.workdir, mode=0o700, exist_ok=True)
    state_mod.record(paths.state, container_id, name=name, image=image, status="creating",
                     command=spec["process"]["args"], bundle=state_dir, rm=remove,
                     rootless=paths.rootless, layers=list(layers))
    _save_config(state_dir, spec)
    try:
        cgroup = _setup_cgroup(spec, container_id, paths.rootless, kernel, explain)
        flags = namespace_flags(spec)
        sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        ours = theirs = master = None
        if tty:
            import socket

            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid, born_in = _clone_into(kernel, flags, cgroup, explain)
        if pid == 0:
            os.close(sync_w)
            os.close(err_r)
            if ours is not None:
                ours.close()
            _child_main(kernel, spec, plan, explain, sync_r, err_w, theirs, interactive, init,
                        paths.rootless)
        os.close(sync_r)
        os.close(err_w)
        if theirs is not None:
            theirs.close()
        # Forward signals from here on: one that arrives while the container is being set up
        # must not kill the launcher and leave the container behind.
        with Supervisor(pid, explain) as sup:
            linux = spec.get("linux", {})
            if flags & sc.CLONE_NEWUSER:
                from minictr.runtime import idmap

                idmap.write_id_maps(pid, linux.get("uidMappings", []),
                                    linux.get("gidMappings", []), explain)
            if cgroup is not None:
                cgroup.add_process(pid, born_in=born_in)
            os.write(sync_w, b"G")
            os.close(sync_w)
            if ours is not None:
                master = receive_console(ours)
            wait_for_exec(err_r, pid, spec["process"]["args"][0])
            state_mod.record(paths.state, container_id, status="running", pid=pid,
                             cgroup_paths=list(cgroup.paths) if cgroup else None)
            code = sup.relay_tty(master) if master is not None else sup.wait()
            pid = None
            if master is not None:
                os.close(master)
            if cgroup is not None and cgroup.oom_kills() and warn:
                limit = spec.get("linux", {}).get("resources", {}).get("memory", {}).get("limit")
                warn("the container was killed by the kernel's OOM killer: it reached its "
                     f"memory limit ({limit} bytes)")
        return code
    finally:
        if pid:                                  # setup failed or we were interrupted
            _kill_and_reap(pid)
        if cgroup is not None:
            cgroup.destroy()
        _cleanup(paths, container_id, plan, remove)


def _clone_into(kernel, flags: int, cgroup, explain: Explain) -> tuple[int, str | None]:
    """Create the container's first process: with clone3(CLONE_INTO_CGROUP) it is born in its
    cgroup v2 directory, which spares the ~15 ms migration of a cgroup.procs write (that write
    waits for an RCU grace period); kernels before 5.7 get clone plus the write."""
    where = cgroup.v2_path if cgroup is not None else None
    if where is not None:
        fd = os.open(where, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _say(explain, f"clone3({sc.ns_flag_names(flags)}, CLONE_INTO_CGROUP {where})")
            return kernel.clone3(flags, fd), where
        except OSError as err:
            if err.errno not in (errno.ENOSYS, errno.EINVAL, errno.E2BIG):
                raise
        finally:
            os.close(fd)
    _say(explain, f"clone({sc.ns_flag_names(flags)})")
    return kernel.clone(flags), None


def receive_console(sock) -> int | None:
    """The pty master the container sends (make_console); None if it failed before that."""
    import socket

    try:
        _, fds, _, _ = socket.recv_fds(sock, 1, 1)
    finally:
        sock.close()
    return fds[0] if fds else None


def wait_for_exec(err_r: int, pid: int, command: str) -> None:
    """Read the error pipe until EOF: EOF alone means the container's program was exec'd."""
    chunks = []
    while True:
        data = os.read(err_r, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(err_r)
    raw = b"".join(chunks).decode(errors="replace").strip()
    if not raw:
        return
    _, status = os.waitpid(pid, 0)
    if raw.startswith("{"):
        info = json.loads(raw)
        raise ContainerExecError(info["message"], hint=info.get("hint"),
                                 exit_code=info.get("exit", EXIT_LAUNCHER)) \
            if info.get("exit") in (EXIT_CANNOT_EXEC, EXIT_NOT_FOUND) \
            else RuntimeSetupError(info["message"], hint=info.get("hint"))
    err = int(raw.splitlines()[0])
    if err in (errno.ENOENT, errno.ENOTDIR):
        raise ContainerExecError(f"exec {command!r}: executable file not found in $PATH (or its "
                                 "#! interpreter is missing)",
                                 hint="check the command and the image's PATH",
                                 exit_code=EXIT_NOT_FOUND)
    raise ContainerExecError(f"exec {command!r}: {os.strerror(err)}",
                             hint="is it executable, and built for this architecture?",
                             exit_code=EXIT_CANNOT_EXEC)


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _setup_cgroup(spec: dict, container_id: str, rootless: bool, kernel, explain: Explain):
    from minictr.runtime import cgroups

    linux = spec.get("linux", {})
    return cgroups.setup(linux.get("resources", {}), container_id=container_id,
                         cgroups_path=linux.get("cgroupsPath"), rootless=rootless,
                         kernel=kernel, explain=explain)


def _save_config(state_dir: str, spec: dict) -> None:
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    tmp = os.path.join(state_dir, ".config.json.tmp")
    with open(tmp, "w") as f:
        json.dump(spec, f)
    os.rename(tmp, os.path.join(state_dir, "config.json"))


def _cleanup(paths, container_id: str, plan, remove: bool) -> None:
    """After exit: the overlay vanished with the container's mount namespace; drop the state
    (and with --rm the writable layer)."""
    state_dir = state_mod.container_dir(paths.state, container_id)
    if remove:
        config = cleanup.read_config(paths.state, container_id) or {}
        cleanup.rmtree(state_dir)
        cleanup.remove_tree(os.path.join(paths.containers, container_id), paths.rootless,
                            config.get("linux", {}))
    else:
        try:
            os.rmdir(os.path.join(state_dir, "rootfs"))
        except OSError:
            pass
        if os.path.isdir(state_dir):
            state_mod.record(paths.state, container_id, status="stopped", pid=None)


def _dry_run(spec: dict, plan, explain: Explain, *, init: bool, rootless: bool) -> int:
    """Walk the container side's steps against a recording face: explain prints, nothing runs."""
    kernel = sc.RecordingSyscalls()
    _say(explain, f"clone({sc.ns_flag_names(namespace_flags(spec))})  [dry run: nothing is done]")
    setup_container(kernel, spec, plan, explain, init_fd=-1, err_fd=-1, init=init,
                    rootless=rootless)
    return 0


def _say(explain: Explain, text: str) -> None:
    if explain:
        explain(text)
