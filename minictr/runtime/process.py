"""Supervising the container's first process from the launcher: signals, the terminal, the status.

The launcher stays in the host's namespaces as the container's parent. It forwards SIGTERM,
SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to the container's PID 1, relays a pseudo-terminal
when -t was given, and turns the wait status into Docker's exit code (128+N for signal N).

PID 1 of a PID namespace gets no default signal action: a signal it has no handler for is dropped
(pid_namespaces(7), "The namespace init process"). `sleep 100` as PID 1 therefore ignores Ctrl-C.
For a forwarded signal whose default action would terminate, the launcher checks PID 1's caught
and ignored masks (proc(5), SigCgt/SigIgn) and, if PID 1 neither catches nor ignores it, applies the
default action on the kernel's behalf with SIGKILL and reports 128+N, as a normal process would.
"""
from __future__ import annotations

import errno
import fcntl
import os
import select
import _signal as signal  # signal.py's C core: the same calls, numbers as ints (signal.py imports enum: ~3 ms)
import struct
from _collections_abc import Callable

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)
# Signals whose default action terminates the process (signal(7)).
TERMINATING = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
               signal.SIGUSR2}


def signal_masks(pid: int) -> tuple[int, int]:
    """(caught, ignored) signal bitmasks of ``pid`` from /proc/PID/status."""
    caught = ignored = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                caught = int(line.split()[1], 16)
            elif line.startswith("SigIgn:"):
                ignored = int(line.split()[1], 16)
    return caught, ignored


def exit_code(status: int) -> int:
    """A wait status → Docker's exit code: the exit status, or 128+N for signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


class Supervisor:
    """Forwards signals to ``pid`` and waits for it."""

    def __init__(self, pid: int | None, explain: Callable[[str], None] | None = None):
        self.pid = pid
        self.explain = explain
        self.default_action: int | None = None      # a signal we applied for PID 1
        self._old: dict[int, object] = {}
        self._pending: list[int] = []
        self.held: list[int] = []                   # signals held by hold(), in order
        self._holding: Callable[[], None] | None = None

    def attach(self, pid: int) -> None:
        """Start forwarding to ``pid`` (the handlers are in place from ``__enter__`` on, so a
        signal that arrives while the process is being made is not lost)."""
        self.pid = pid
        for sig in self._pending:
            self._forward(sig, None)
        self._pending.clear()

    def hold(self, note: Callable[[], None] = lambda: None) -> None:
        """The container has exited (or never ran) and the launcher cleans up: from now on the
        first terminating signal is held, not forwarded (the pid may be reused) nor acted on (a
        half-removed container is worse than a late exit; the container's status is returned),
        and ``note()`` says so. A second one acts at once, as the launcher's own handler would
        (a cleanup stuck in a poststop hook must not hold the terminal)."""
        self._holding = note

    def _forward(self, sig: int, _frame) -> None:
        if self._holding is not None:
            if sig not in TERMINATING:
                return
            if self.held:
                self.__exit__()                     # the launcher's own handlers, then the
                os.kill(os.getpid(), sig)           # signal again, to them
                return
            self.held.append(sig)
            self._holding()
            return
        if self.pid is None:
            self._pending.append(sig)
            return
        try:
            os.kill(self.pid, sig)
            if sig in TERMINATING:
                caught, ignored = signal_masks(self.pid)
                bit = 1 << (sig - 1)
                if not (caught & bit) and not (ignored & bit):
                    self.default_action = sig
                    os.kill(self.pid, signal.SIGKILL)
        except (ProcessLookupError, FileNotFoundError):
            pass

    def __enter__(self) -> "Supervisor":
        for sig in FORWARDED:
            self._old[sig] = signal.signal(sig, self._forward)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def wait(self) -> int:
        """Block until the container's PID 1 exits (PEP 475: waitpid is retried after a handler)."""
        _, status = os.waitpid(self.pid, 0)
        return self._code(status)

    def _code(self, status: int) -> int:
        if self.default_action and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            return 128 + self.default_action
        return exit_code(status)

    def relay_tty(self, master: int, stdin: int | None = 0, out: int = 1) -> int:
        """Copy ``stdin`` → pty master and master → ``out`` until the container exits; keep the
        window size in step (SIGWINCH). Our terminal is in raw mode meanwhile, so Ctrl-C, Ctrl-Z
        reach the container's foreground process group through its own terminal (job control).
        ``stdin`` None: nothing is sent (docker's -t without -i, and a detached container).

        When ``stdin`` ends (a closed pipe, a terminal hung up) the container's terminal is
        told as a user would tell it, with its EOF character (``send_eof``): a pty has no other
        way to say "no more input", and without it `cat` would wait forever."""
        import termios          # here: a run without a terminal never imports them
        import tty as tty_mod

        saved = None
        if stdin is not None and os.isatty(stdin):
            saved = termios.tcgetattr(stdin)
            tty_mod.setraw(stdin, termios.TCSANOW)    # not TCSAFLUSH: keep typed-ahead input
            copy_winsize(stdin, master)
            signal.signal(signal.SIGWINCH, lambda *_: copy_winsize(stdin, master))
        pidfd = os.pidfd_open(self.pid)
        status = None
        last = b"\n"
        try:
            fds = [master, pidfd] + ([stdin] if stdin is not None else [])
            while True:
                try:
                    ready, _, _ = select.select(fds, [], [])
                except InterruptedError:
                    continue
                if master in ready:
                    try:
                        data = os.read(master, 65536)
                    except OSError as err:
                        if err.errno != errno.EIO:
                            raise
                        data = b""
                    if not data:
                        fds.remove(master)
                    elif out is not None:
                        try:
                            _write_all(out, data)
                        except OSError as err:      # our terminal is gone: keep draining
                            if err.errno not in (errno.EIO, errno.EPIPE):
                                raise
                            out = None
                if stdin is not None and stdin in ready:
                    try:
                        data = os.read(stdin, 65536)
                    except OSError as err:          # a hung-up terminal: EIO, as EOF
                        if err.errno != errno.EIO:
                            raise
                        data = b""
                    if data:
                        _write_all(master, data)
                        last = data[-1:]
                    else:
                        fds.remove(stdin)
                        send_eof(master, partial_line=last not in (b"\n", b"\r"))
                if pidfd in ready and status is None:
                    _, status = os.waitpid(self.pid, 0)
                    fds = [fd for fd in fds if fd != pidfd and fd != stdin]
                if status is not None and master not in fds:
                    break
                if status is not None:
                    # drain what the container wrote before exiting, then stop
                    r, _, _ = select.select([master], [], [], 0.05)
                    if not r:
                        break
        finally:
            os.close(pidfd)
            if saved is not None:
                try:
                    termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
                except termios.error:
                    pass                            # hung up: nothing left to restore
                signal.signal(signal.SIGWINCH, signal.SIG_DFL)
        return self._code(status)


def send_eof(master: int, partial_line: bool) -> None:
    """Write the terminal's EOF character (VEOF, usually Ctrl-D) to the pty, as a user ending
    input does. In canonical mode it ends a read with what is pending (termios(3), VEOF), so
    after an unfinished line it takes a second one for the reader to see end-of-file. A
    program that put its terminal in raw mode reads input byte by byte and has no end-of-file:
    nothing is sent then."""
    import termios

    try:
        attrs = termios.tcgetattr(master)
    except termios.error:
        return
    if not attrs[3] & termios.ICANON:
        return
    eof = attrs[6][termios.VEOF]
    try:
        _write_all(master, eof * (2 if partial_line else 1))
    except OSError:
        pass


def copy_winsize(src: int, dst: int) -> None:
    import termios

    try:
        size = fcntl.ioctl(src, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
        fcntl.ioctl(dst, termios.TIOCSWINSZ, size)
    except OSError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]
