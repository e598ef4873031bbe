"""`minictr exec`: running another command inside a running container.

The command joins the container's namespaces with setns(2), in an order that works (the user
namespace first: it grants the capabilities the others need; the mount namespace last but for
pid), then forks once more, because a PID namespace applies only to children (setns(2)). The
grandchild joins the cgroup, gets the container's process settings (no_new_privs, bounding set,
uid/gid, cwd, capabilities) and execs through mcinit, as the container's first process did.
"""
from __future__ import annotations

import json
import os

from minictr.errors import EXIT_LAUNCHER, MinictrError, RuntimeSetupError
from minictr.runtime import capabilities, state as state_mod
from minictr.runtime import syscalls as sc
from minictr.runtime.container import (enter_cwd, exec_process, load_mcinit, make_console,
                                       receive_console, report_error, set_user, wait_for_exec)
from minictr.runtime.process import Supervisor

EXEC_NS_ORDER = (("user", "user"), ("ipc", "ipc"), ("uts", "uts"), ("network", "net"),
                 ("cgroup", "cgroup"), ("pid", "pid"), ("mount", "mnt"))


def exec_in(paths, name: str, command: list[str], *, env: list[str] | None = None,
            tty: bool = False, workdir: str | None = None, user: str | None = None,
            kernel=None) -> int:
    """Run ``command`` inside a running container: join its namespaces and cgroup, apply its
    process settings (env, cwd, user, capabilities, no_new_privs), exec through mcinit."""
    kernel = kernel or sc.Syscalls()
    st = state_mod.find(paths.state, name)
    if st.get("status") != "running":
        raise RuntimeSetupError(f"container {name} is not running")
    with open(os.path.join(state_mod.container_dir(paths.state, st["id"]), "config.json")) as f:
        spec = json.load(f)
    process = exec_process_settings(spec["process"], command, env, tty, workdir, user)
    pid = st["pid"]
    types = {ns["type"] for ns in spec.get("linux", {}).get("namespaces", ())}
    ns_fds = [(os.open(f"/proc/{pid}/ns/{proc_name}", os.O_RDONLY | os.O_CLOEXEC), t)
              for t, proc_name in EXEC_NS_ORDER if t in types]
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    ours = theirs = master = None
    if tty:
        import socket

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    init_fd = load_mcinit()
    child = os.fork()
    if child == 0:
        if ours is not None:
            ours.close()
        _exec_child(kernel, process, ns_fds, err_w, theirs, init_fd, st.get("rootless", False))
    os.close(err_w)
    for fd, _ in ns_fds:
        os.close(fd)
    os.close(init_fd)
    if theirs is not None:
        theirs.close()
    if st.get("cgroup_paths"):
        from minictr.runtime import cgroups

        cgroups.Cgroup.from_paths(st["cgroup_paths"]).add_process(child)
    with Supervisor(child) as sup:
        if ours is not None:
            master = receive_console(ours)
        wait_for_exec(err_r, child, command[0])
        code = sup.relay_tty(master) if master is not None else sup.wait()
    if master is not None:
        os.close(master)
    return code


def exec_process_settings(process: dict, command: list[str], env, tty: bool,
                          workdir: str | None, user: str | None) -> dict:
    """The container's process settings, with exec's command, -e, -t, -w and -u applied."""
    process = dict(process, args=list(command), terminal=tty)
    if env:
        merged = dict(e.split("=", 1) for e in process.get("env", ()) if "=" in e)
        merged.update(e.split("=", 1) if "=" in e else (e, os.environ.get(e, "")) for e in env)
        process["env"] = [f"{k}={v}" for k, v in merged.items()]
    if workdir:
        process["cwd"] = workdir
    if user:
        uid, _, gid = user.partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise RuntimeSetupError("exec -u takes numeric UID[:GID]",
                                    hint="names are resolved by `minictr run -u` only")
        process["user"] = {"uid": int(uid), "gid": int(gid or 0)}
    return process


def _exec_child(kernel, process, ns_fds, err_w, tty_socket, init_fd, rootless) -> None:
    try:
        capabilities.die_with_parent(kernel)
        for fd, ns_type in ns_fds:
            kernel.setns(fd, sc.NAMESPACE_FLAGS[ns_type])
        # Entering the PID namespace affects children only: fork once more (setns(2)).
        grandchild = os.fork()
        if grandchild:
            os.close(err_w)
            with Supervisor(grandchild) as sup:
                os._exit(sup.wait())
        kernel.setsid()
        if tty_socket is not None:
            make_console(kernel, tty_socket, None)     # a pty of the container's own devpts
        if process.get("noNewPrivileges"):
            capabilities.set_no_new_privs(kernel, None)
        caps = process.get("capabilities", {})
        capabilities.drop_bounding_set(kernel, caps, None)
        set_user(kernel, process.get("user", {}), rootless, None)
        capabilities.die_with_parent(kernel)
        enter_cwd(kernel, process.get("cwd", "/"), None)
        capabilities.apply_sets(kernel, caps, None)
        exec_process(kernel, dict(process, preserveFds=0), init_fd, err_w, False, None)
    except MinictrError as err:
        report_error(err_w, str(err), err.hint, getattr(err, "exit_code", EXIT_LAUNCHER))
    except BaseException as err:  # noqa: BLE001
        report_error(err_w, f"{getattr(err, 'strerror', None) or err}", None, EXIT_LAUNCHER)
    os._exit(EXIT_LAUNCHER)
