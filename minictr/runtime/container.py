"""The container side's steps, in runc's order (reference/RUNTIME.md, "Order of the final
steps"). spawn.py calls them in the new process: ``setup_rootfs`` for a container's first
process only, the rest for every process.

    setup_rootfs        lo up; mounts private; the overlay at root.path; the spec's mounts and
                        devices; prestart/createRuntime hooks (the launcher runs them) and
                        createContainer hooks; hostname, domainname; pivot_root; sysctl;
                        masked and read-only paths; the read-only root
    make_console        a pty of the container's own devpts; its master goes to the launcher
    setup_process       rlimits, umask, no_new_privs, bounding set, groups/gid/uid, cwd (checked),
                        capabilities
    find_executable     the PATH search, done here so 127/126 are known before "ready"
    close_fds           every fd above the passed ones is marked close-on-exec
    exec_process        fexecve(mcinit memfd) → execve(path, args, env)
"""
from __future__ import annotations

import errno
import os
import stat
import struct
from _collections_abc import Callable

from minictr.errors import EXIT_CANNOT_EXEC, EXIT_NOT_FOUND, ContainerExecError, RuntimeSetupError
from minictr.runtime import capabilities, landlock, rootfs as rootfs_mod
from minictr.runtime import syscalls as sc

Explain = Callable[[str], None] | None

# ioctl_tty(2) numbers (asm-generic/ioctls.h); Python's termios lacks the newer ones.
TIOCSPTLCK = 0x40045431
TIOCGPTPEER = 0x5441
TIOCSCTTY = 0x540E
TIOCSWINSZ = 0x5414
RLIMITS = {"RLIMIT_AS": 9, "RLIMIT_CORE": 4, "RLIMIT_CPU": 0, "RLIMIT_DATA": 2, "RLIMIT_FSIZE": 1,
           "RLIMIT_LOCKS": 10, "RLIMIT_MEMLOCK": 8, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13,
           "RLIMIT_NOFILE": 7, "RLIMIT_NPROC": 6, "RLIMIT_RSS": 5, "RLIMIT_RTPRIO": 14,
           "RLIMIT_RTTIME": 15, "RLIMIT_SIGPENDING": 11, "RLIMIT_STACK": 3}
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# ---------------------------------------------------------------- the rootfs


def setup_rootfs(kernel, spec: dict, plan, rootless: bool, explain: Explain, *,
                 runtime_hooks: Callable[[], None] | None = None,
                 hook_state: dict | None = None, no_pivot: bool = False,
                 image_mount: int | None = None) -> None:
    """Build the container's root and enter it (the first process only)."""
    linux = spec.get("linux", {})
    hooks = spec.get("hooks") or {}
    ns_types = {ns["type"] for ns in linux.get("namespaces", ())}
    new_net = any(ns["type"] == "network" and not ns.get("path")
                  for ns in linux.get("namespaces", ()))
    if new_net:
        _say(explain, "ip link set lo up  (a new network namespace has only lo, and it is down)")
        kernel.link_up("lo")
    rootfs_mod.make_mounts_private(kernel, linux.get("rootfsPropagation"), explain)
    root_path = spec["root"]["path"]
    caps = spec.get("process", {}).get("capabilities", {})
    ptrace = any("CAP_SYS_PTRACE" in (caps.get(key) or ()) for key in ("bounding", "permitted"))
    rootfs_mod.mount_rootfs(kernel, plan, root_path, explain, image_mount,
                            ptrace_in_container=ptrace)
    root_fd = kernel.open(root_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        rootfs_mod.mount_all(kernel, root_fd, spec, rootless, explain)
    finally:
        kernel.close(root_fd)
    if (hooks.get("prestart") or hooks.get("createRuntime")) and runtime_hooks:
        # The launcher runs them in the runtime's namespaces, with our pid: NVIDIA's legacy
        # prestart hook setns()es into this process, so the mounts must be in place.
        runtime_hooks()
    if hooks.get("createContainer"):
        from minictr.runtime import hooks as hooks_mod

        hooks_mod.run_hooks(kernel, spec, "createContainer",
                            dict(hook_state or {}, status="creating"), explain)
    if hooks.get("startContainer"):
        from minictr.runtime import hooks as hooks_mod  # noqa: F401 - needed after pivot_root
    if "uts" in ns_types and spec.get("hostname"):
        _say(explain, f"sethostname({spec['hostname']!r})")
        kernel.sethostname(spec["hostname"])
    if "uts" in ns_types and spec.get("domainname"):
        _say(explain, f"setdomainname({spec['domainname']!r})")
        kernel.setdomainname(spec["domainname"])
    rootfs_mod.pivot_into(kernel, root_path, explain, no_pivot)
    for key, value in (linux.get("sysctl") or {}).items():
        path = "/proc/sys/" + key.replace(".", "/")
        _say(explain, f"sysctl {key}={value}  (write {path})")
        kernel.write_file(path, str(value))
    rootfs_mod.finish_rootfs(kernel, spec, explain)


# ---------------------------------------------------------------- the process


def make_console(kernel, channel, size: dict | None, explain: Explain) -> None:
    """Open a pty in the container's own devpts and send its master to the launcher.

    The pty must come from the container's devpts instance (newinstance): a host pty would not
    exist under the container's /dev/pts, so ttyname(3) and job control would fail. runc does
    the same, passing the master over a unix socket (unix(7), SCM_RIGHTS). TIOCGPTPEER opens
    the slave from the master without a path lookup (ioctl_tty(2)).
    """
    _say(explain, "open /dev/ptmx; ioctl(TIOCGPTPEER); send the master to the launcher")
    master = kernel.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    kernel.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    slave = kernel.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    if size:
        kernel.ioctl(slave, TIOCSWINSZ, struct.pack("HHHH", size.get("height", 0),
                                                    size.get("width", 0), 0, 0))
    channel.send("console", fd=master)
    kernel.close(master)
    bind_console(kernel, slave, explain)
    kernel.ioctl(slave, TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        kernel.dup2(slave, fd)
    kernel.close(slave)


def bind_console(kernel, slave: int, explain: Explain) -> None:
    """/dev/console is the terminal (config-linux.md "Default Devices"): bind the pty's slave
    there, as runc does. Only when /dev is the container's own tmpfs (a bundle may bind the
    host's /dev, whose console is not ours to cover)."""
    from minictr.runtime import mounts

    root_fd = kernel.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        dev = mounts._open_existing(kernel, root_fd, "/dev")
        if dev is None:
            return
        kernel.close(dev)
        fd = mounts.resolve_in_root(kernel, root_fd, "/dev/console", create="file")
    finally:
        kernel.close(root_fd)
    try:
        _say(explain, "mount --bind <the pty> /dev/console")
        kernel.mount(f"/proc/self/fd/{slave}", f"/proc/self/fd/{fd}", None, sc.MS_BIND)
    finally:
        kernel.close(fd)


def setup_process(kernel, process: dict, rootless: bool, explain: Explain, *,
                  keep_pdeathsig: bool = True, seccomp: tuple | None = None,
                  landlock_scoped: int = 0) -> None:
    """The process settings of config.md "Process", in runc's order. A seccomp filter is
    loaded last, in exec_process, when no_new_privs allows it; without no_new_privs seccomp(2)
    needs CAP_SYS_ADMIN, so then it is loaded here, before the capabilities go (runc). A
    Landlock scope (landlock.py) follows no_new_privs for the same reason."""
    for rl in process.get("rlimits", ()):
        _say(explain, f"setrlimit({rl['type']}, {rl['soft']}, {rl['hard']})")
        kernel.setrlimit(RLIMITS[rl["type"]], rl["soft"], rl["hard"])
    user = process.get("user", {})
    if user.get("umask") is not None:
        os.umask(user["umask"])
    if process.get("noNewPrivileges"):
        capabilities.set_no_new_privs(kernel, explain)
    elif seccomp is not None:
        from minictr.runtime import seccomp as seccomp_mod

        seccomp_mod.load(kernel, seccomp[0], seccomp[1], explain)
    if landlock_scoped:
        landlock.restrict(kernel, landlock_scoped, explain)
    caps = process.get("capabilities", {})
    capabilities.drop_bounding_set(kernel, caps, explain)
    set_user(kernel, user, rootless, explain)
    if keep_pdeathsig:
        capabilities.die_with_parent(kernel)       # setuid cleared it
    enter_cwd(kernel, process.get("cwd", "/"), explain)
    capabilities.apply_sets(kernel, caps, explain)


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
        _make_cwd(kernel, cwd, explain)
    try:
        where = os.getcwd()
    except FileNotFoundError:
        where = "(unreachable)"
    if not where.startswith("/"):
        raise RuntimeSetupError(f"working directory {cwd!r} is outside the container's root",
                                hint="a cwd through /proc/self/fd is refused (CVE-2024-21626)")


def _make_cwd(kernel, cwd: str, explain: Explain) -> None:
    """Docker creates a missing WORKDIR. Each missing directory is made by openat2 inside the
    root, never through a magic link: os.makedirs("/proc/self/fd/5/x") would make x in whatever
    host directory fd 5 still is at this point (the container's cgroup directory, once)."""
    from minictr.runtime import mounts

    _say(explain, f"mkdir -p {cwd!r} inside the root (openat2 RESOLVE_IN_ROOT|NO_MAGICLINKS)")
    root = kernel.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = mounts.resolve_in_root(kernel, root, cwd, create="dir")
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EXDEV):
            raise RuntimeSetupError(f"working directory {cwd!r} is outside the container's root",
                                    hint="a cwd through /proc/self/fd is refused "
                                         "(CVE-2024-21626)") from err
        raise
    finally:
        kernel.close(root)
    try:
        kernel.fchdir(fd)
    finally:
        kernel.close(fd)


def find_executable(kernel, process: dict) -> str:
    """The file execve(2) will run: args[0] when it has a "/", else the first executable
    regular file named so in the container's PATH (runc's LookPath), so that "not found"
    (127) and "not executable" (126) are known before the container counts as created.

    No shell fallback: execvp(3) runs a file without #! through /bin/sh on ENOEXEC, which turns
    a binary for another architecture into a shell syntax error. mcinit calls execve(2)."""
    name = process["args"][0]
    if not name:
        raise ContainerExecError("exec: empty command", exit_code=EXIT_NOT_FOUND)
    if "/" in name:
        candidates = [name]
    else:
        env = dict(e.split("=", 1) for e in process.get("env", ()) if "=" in e)
        candidates = [os.path.join(d or ".", name) for d in env.get("PATH", DEFAULT_PATH).split(":")]
    denied = None
    for path in candidates:
        try:
            st = kernel.stat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            denied = denied or (path, "is a directory" if stat.S_ISDIR(st.st_mode)
                                else "is not a regular file")
            continue
        if not kernel.access(path, os.X_OK):
            denied = denied or (path, "permission denied")
            continue
        return path
    if denied:
        raise ContainerExecError(f"exec {denied[0]}: {denied[1]}", exit_code=EXIT_CANNOT_EXEC,
                                 hint="is it executable?")
    # runc's wording: engines map these words to 127 (dockerd: "no such file or directory",
    # "executable file not found"), "permission denied" to 126
    what = "no such file or directory" if "/" in name else "executable file not found in $PATH"
    raise ContainerExecError(f"exec {name}: {what}", exit_code=EXIT_NOT_FOUND,
                             hint="check the command and the image's PATH")


def close_fds(kernel, keep: int, explain: Explain, also: tuple[int, ...] = ()) -> None:
    """Mark every fd from ``keep`` up close-on-exec (close_range(2) CLOSE_RANGE_CLOEXEC): no
    host file reaches the container's program (runc CVE-2024-21626). The fds in ``also``
    (Slurm's PMI socket, passed by number) are left out of the ranges and made inheritable."""
    extra = sorted(fd for fd in set(also) if fd >= keep)
    _say(explain, f"close_range({keep}, ~0, CLOSE_RANGE_CLOEXEC)"
                  + (f" except fds {', '.join(map(str, extra))}" if extra else ""))
    first = keep
    for fd in extra:
        if fd > first:
            kernel.close_range(first, fd - 1, sc.CLOSE_RANGE_CLOEXEC)
        kernel.set_inheritable(fd)
        first = fd + 1
    kernel.close_range(first, 0xFFFFFFFF, sc.CLOSE_RANGE_CLOEXEC)


def exec_process(kernel, process: dict, path: str, init_fd: int, exec_w: int | None,
                 explain: Explain, seccomp: tuple | None = None) -> None:
    """execve the process through mcinit (native/mcinit.c: /proc/self/exe must not name a host
    binary, runc CVE-2019-5736). ``exec_w`` (attached runs) carries an execve errno back. The
    seccomp filter is the very last step (with no_new_privs): it must allow execveat."""
    args = list(process["args"])
    env = dict(e.split("=", 1) if "=" in e else (e, "") for e in process.get("env", ()))
    if exec_w is not None:
        kernel.set_inheritable(exec_w)
    if seccomp is not None and process.get("noNewPrivileges"):
        from minictr.runtime import seccomp as seccomp_mod

        seccomp_mod.load(kernel, seccomp[0], seccomp[1], explain)
    _say(explain, f"execve({path!r}, {args!r})")
    kernel.fexecve(init_fd, ["mcinit", str(-1 if exec_w is None else exec_w), "exec", path, "--",
                             *args], env)


def _say(explain: Explain, text: str) -> None:
    if explain:
        explain(text)
