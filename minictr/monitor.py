"""A detached run's monitor (`minictr run -d`): the process that stays as the container's parent.

There is no daemon, so something of minictr must stay behind to do what the attached launcher
does after the container started: wait for it and record its exit status, relay its terminal,
and remove it with --rm. The launcher forks that process (conmon's role, in podman):

    launcher                              monitor (forked, setsid: no terminal, own session)
    plan, claim the name
    fork  ──────────────────────────────► stdin, stdout → /dev/null; opens the log
    waits on a status pipe                create, start, wait for the exec (api._execute) with
                                            the container's stdout and stderr on the log
    ◄──────────────────── {"ok": true} ── stderr → the log too (later warnings go there)
    prints the id, exits 0                waits for the container; relays a terminal to the log
                                          records the exit status; --rm cleanup; exits
    ◄─── {"error": ...} (setup failed) ── exits: the launcher fails with the container's error

Until the container runs the monitor's stderr is still the launcher's, so --explain shows the
steps where the user ran the command. The container's output goes straight to the log file
(both its stdout and stderr, in the order written), not through the monitor; only a terminal
(-t) needs copying. With -i the container's stdin is a pipe the monitor holds open and never
writes, so a shell waits for input as under docker, where a later `attach` could give it some.
The container has PR_SET_PDEATHSIG: killing the monitor kills the container, as killing an
attached `minictr run` does.
"""
from __future__ import annotations

import os
import sys
from _collections_abc import Callable

from minictr import jsonio
from minictr.errors import MinictrError, RuntimeSetupError


def detach(body: Callable, *, log_path: str, interactive: bool,
           forked: list | None = None) -> None:
    """Fork the monitor, which calls ``body(stdio, out, on_started)``; return once it says the
    container's command runs, or raise the error it reports. ``forked`` gets the monitor's
    pid once it exists: from then on the monitor owns the container's cleanup."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()                   # or the child would write the same buffered text again
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _monitor(body, w, log_path, interactive)
    if forked is not None:
        forked.append(pid)
    os.close(w)
    chunks = []
    try:
        while data := os.read(r, 65536):
            chunks.append(data)
    finally:
        os.close(r)
    if not chunks:
        raise RuntimeSetupError("the container's monitor process died during setup",
                                hint="run it attached (without -d) to see why")
    msg = jsonio.loads(b"".join(chunks))
    if "error" in msg:
        raise MinictrError(msg["error"], hint=msg.get("hint"), exit_code=msg.get("exit", 125))


def _monitor(body: Callable, status_w: int, log_path: str, interactive: bool) -> None:
    """The forked monitor; never returns."""
    def send(msg: dict) -> None:
        try:
            os.write(status_w, jsonio.dumps(msg).encode())
            os.close(status_w)
        except OSError:
            pass                         # sent already, or the launcher is gone

    import gc

    gc.enable()                          # it lives as long as the container (cli.entry)
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        os.dup2(null, 0)
        os.dup2(null, 1)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW |
                      os.O_CLOEXEC, 0o600)
        stdin = null
        if interactive:
            stdin, _held_open = os.pipe2(os.O_CLOEXEC)

        def started() -> None:
            os.dup2(log, 2)
            send({"ok": True})

        body(stdio=(stdin, log, log), out=log, on_started=started)
    except MinictrError as err:
        send({"error": str(err), "hint": err.hint, "exit": err.exit_code})
    except BaseException as err:          # noqa: BLE001 - the launcher must hear of it
        send({"error": f"internal error: {type(err).__name__}: {err}",
              "hint": "this is a bug in minictr; run without -d and with --debug", "exit": 125})
    finally:
        os._exit(0)
