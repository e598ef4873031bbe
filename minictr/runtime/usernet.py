"""--network bridge without root: a user-mode network stack beside the container.

An unprivileged user cannot make a veth pair in the host's namespace or touch its nftables. As
podman does, the container gets its own network namespace (owned by its user namespace) and a
helper process run by the same user connects it to the host's network through ordinary
sockets: **pasta** (Debian's ``passt``) when it is installed, else **slirp4netns**.

    launcher                                   helper (the user's own process)
    clone3(CLONE_NEWUSER|CLONE_NEWNET...)
    uid_map/gid_map
    start the helper  ─────────────────────►   joins /proc/PID/ns/user and /proc/PID/ns/net,
                                               makes a tap device there, gives it an address
                                               and a default route, listens on the published
                                               host ports
    wait until it says it is ready  ◄───────   pasta: writes its pid file (a FIFO of ours);
                                               slirp4netns: writes "1" to --ready-fd
    "go" to the container

The helper dies with the container. It is the launcher's child, with PR_SET_PDEATHSIG SIGKILL
(a launcher killed with SIGKILL takes the container and the helper with it); slirp4netns also
exits when its --exit-fd, whose other end only the launcher holds, is closed; when the
container exits the launcher stops it. Its pid and start time are in the container's state, so
`rm` and `delete` stop one that is somehow left.

What the container can reach: the outside world as the host reaches it, through the helper's
sockets (so from the host's addresses). Not the host's loopback services: pasta runs with
``--no-map-gw`` and ``-T none -U none`` (no forwarding into the host's 127.0.0.1) and
slirp4netns with ``--disable-host-loopback``. DNS: see spec/etcfiles.py, ``nameservers_for``.
"""
from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
from _collections_abc import Callable

from minictr.errors import RuntimeSetupError
from minictr.runtime import state as state_mod

Explain = Callable[[str], None] | None
PASTA_DNS_FORWARD = "169.254.1.1"      # spec/etcfiles.py's PASTA_DNS_FORWARD
SLIRP_TAP = "tap0"
SLIRP_ADDRESS = "10.0.2.100"           # slirp4netns --configure's guest address
API_SOCKET = "slirp4netns.sock"        # in the container's state directory


def pasta_args(pid: int, ports: list[dict], ready_path: str, log_path: str) -> list[str]:
    """pasta's command line (pasta(1)). Port forwards are given explicitly, never ``auto``
    (which would forward whatever the container binds); -T/-U none: the container cannot reach
    the host's loopback-bound ports."""
    tcp = [_pasta_port(p) for p in ports if p["protocol"] == "tcp"]
    udp = [_pasta_port(p) for p in ports if p["protocol"] == "udp"]
    args = ["pasta", "--config-net", "--foreground", "--quiet", "--no-map-gw",
            "--dns-forward", PASTA_DNS_FORWARD]
    for flag, specs in (("-t", tcp), ("-u", udp)):
        for spec in specs or ["none"]:
            args += [flag, spec]
    args += ["-T", "none", "-U", "none", "--netns", f"/proc/{pid}/ns/net",
             "--userns", f"/proc/{pid}/ns/user", "--pid", ready_path, "--log-file", log_path]
    return args


def _pasta_port(port: dict) -> str:
    """[ADDR/]HOSTPORT:CONTAINERPORT (pasta(1), -t)."""
    where = f"{port['host_ip']}/" if port.get("host_ip") else ""
    return f"{where}{port['host_port']}:{port['container_port']}"


def slirp4netns_args(pid: int, ready_fd: int, exit_fd: int, api_socket: str | None) -> list[str]:
    """slirp4netns(1): --configure gives tap0 10.0.2.100/24, gateway 10.0.2.2, DNS 10.0.2.3."""
    args = ["slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback",
            f"--ready-fd={ready_fd}", f"--exit-fd={exit_fd}",
            f"--userns-path=/proc/{pid}/ns/user"]
    if api_socket:
        args.append(f"--api-socket={api_socket}")
    return args + [str(pid), SLIRP_TAP]


class Session:
    """The launcher's hold on a running helper: its pid and the fds that keep it alive."""

    def __init__(self, pid: int, keep_fds: tuple[int, ...] = ()):
        self.pid = pid
        self.keep_fds = keep_fds

    def close(self) -> None:
        for fd in self.keep_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.keep_fds = ()


def attach(kernel, plan, pid: int, workdir: str, record: Callable[[dict], None],
           explain: Explain) -> tuple[dict, Session]:
    """Start the helper for the container whose first process is ``pid``; return the state
    record and the session (see the module docstring)."""
    ports = [dict(p) for p in plan.ports]
    log_path = os.path.join(workdir, f"{plan.driver}.log")
    if plan.driver == "pasta":
        session = _start_pasta(kernel, plan.helper, pid, ports, workdir, log_path, explain)
    else:
        session = _start_slirp4netns(kernel, plan.helper, pid, ports, workdir, log_path,
                                     explain)
    out = {"driver": plan.driver, "helper_pid": session.pid,
           "helper_ticks": None if getattr(kernel, "dry_run", False)
           else state_mod.start_ticks(session.pid), "ports": ports}
    record(out)
    return out, session


def _start_pasta(kernel, helper: str, pid: int, ports: list[dict], workdir: str,
                 log_path: str, explain: Explain) -> Session:
    # pasta writes its pid file once the namespace is configured and the ports are bound
    # (passt.c, main): a FIFO we hold open for reading turns that write into "ready".
    ready = os.path.join(workdir, "pasta.ready")
    kernel.mkfifo(ready, 0o600)
    ready_fd = kernel.open(ready, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        args = pasta_args(pid, ports, ready, log_path)
        _say(explain, " ".join(args))
        helper_pid = kernel.start_helper(helper, args, (), log_path)
        if not getattr(kernel, "dry_run", False):
            _wait_ready(helper_pid, ready_fd, "pasta", log_path)
    finally:
        kernel.close(ready_fd)
    return Session(helper_pid)


def _start_slirp4netns(kernel, helper: str, pid: int, ports: list[dict], workdir: str,
                       log_path: str, explain: Explain) -> Session:
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
    # A unix socket's path must fit sun_path (108 bytes, unix(7)), which a state directory's
    # path may not: slirp4netns runs in the container's state directory and binds a relative
    # name, which the launcher reaches through /proc/self/fd of that directory.
    api = API_SOCKET if ports else None
    try:
        args = slirp4netns_args(pid, ready_w, exit_r, api)
        _say(explain, " ".join(args))
        helper_pid = kernel.start_helper(helper, args, (ready_w, exit_r), log_path, workdir)
    except BaseException:
        for fd in (ready_r, ready_w, exit_r, exit_w):
            os.close(fd)
        raise
    os.close(ready_w)
    os.close(exit_r)
    session = Session(helper_pid, (exit_w,))
    try:
        if not getattr(kernel, "dry_run", False):
            _wait_ready(helper_pid, ready_r, "slirp4netns", log_path)
        for port in ports:
            _say(explain, f"slirp4netns API add_hostfwd {port['protocol']} "
                          f"{port.get('host_ip') or '0.0.0.0'}:{port['host_port']} -> "
                          f"{SLIRP_ADDRESS}:{port['container_port']}")
            if not getattr(kernel, "dry_run", False):
                add_hostfwd(workdir, port)
    except BaseException:
        stop(helper_pid, None)
        session.close()
        raise
    finally:
        os.close(ready_r)
    return session


def _wait_ready(helper_pid: int, ready_fd: int, name: str, log_path: str) -> None:
    """Block until the helper says it is ready (data on ``ready_fd``) or exits (its pidfd):
    no timeout, since the helper either gets ready or dies (and dies with us)."""
    pidfd = os.pidfd_open(helper_pid)
    watched = [ready_fd, pidfd]
    try:
        while True:
            try:
                readable, _, _ = select.select(watched, [], [])
            except InterruptedError:
                continue
            if ready_fd in readable:
                try:
                    if os.read(ready_fd, 64):
                        return
                    watched = [pidfd]            # closed without a word: wait for its end
                except BlockingIOError:
                    pass
            if pidfd in readable:
                _, status = os.waitpid(helper_pid, 0)
                raise RuntimeSetupError(
                    f"{name} failed (exit {os.waitstatus_to_exitcode(status)}): "
                    f"{_last_line(log_path)}",
                    hint=f"its log is {log_path}" if os.path.exists(log_path) else None)
    finally:
        os.close(pidfd)


def _last_line(path: str) -> str:
    """The helper's last words: the last three lines of its log, on one line."""
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return "no log"
    return " / ".join(lines[-3:]) if lines else "no log"


def add_hostfwd(workdir: str, port: dict) -> None:
    """One port forward through slirp4netns's API socket in ``workdir`` (slirp4netns(1),
    "API"): one JSON request per connection, answered with {"return": ...} or {"error": ...}."""
    request = {"execute": "add_hostfwd",
               "arguments": {"proto": port["protocol"], "host_addr": port.get("host_ip")
                             or "0.0.0.0", "host_port": port["host_port"],
                             "guest_port": port["container_port"]}}
    directory = os.open(workdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(f"/proc/self/fd/{directory}/{API_SOCKET}")
            sock.sendall(json.dumps(request).encode())
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
    finally:
        os.close(directory)
    answer = json.loads(reply or b"{}")
    if "error" in answer or "return" not in answer:
        raise RuntimeSetupError(f"slirp4netns could not publish {port['host_port']}/"
                                f"{port['protocol']}: {answer.get('error', answer)}",
                                hint="is the host port in use?")


def stop(pid: int | None, ticks: int | None, session: Session | None = None) -> None:
    """Stop the helper (SIGTERM, then SIGKILL) if it is still the recorded process, and reap
    it when it is our child."""
    if session is not None:
        session.close()
    if not pid or (ticks is not None and not state_mod.alive(pid, ticks)):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:                  # another process's helper (rm, delete)
        from minictr.runtime.lifecycle import wait_gone

        if not wait_gone(pid, ticks, timeout=5.0):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    except OSError as err:
        if err.errno != errno.ECHILD:
            raise


def _say(explain: Explain, text: str) -> None:
    if explain:
        explain(text)
