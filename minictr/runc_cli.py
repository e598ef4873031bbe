"""minictr-runc: minictr's runtime behind runc's command line, so that Docker, containerd (and
through it Kubernetes), Podman and Slurm can use minictr where they use runc.

    minictr-runc [--root DIR] [--log FILE] [--log-format text|json] [--debug]
                 [--systemd-cgroup] [--rootless true|false|auto] COMMAND [OPTIONS] ID ...

It is a separate executable because runc's global ``--root`` names the state directory while
minictr's names the image store. Semantics follow runc (../shared/reference/OCI-RUNTIME.md):
``create`` leaves the container's process blocked on exec.fifo and exits, writing the pid
file first; no minictr process stays between the caller and the container (the caller's
subreaper adopts it); ``state`` prints only JSON; errors exit 1 (``run``: the container's
status; ``exec``: the process's status, 255 when it could not be started). Options are
accepted after the container id as well (``kill -a ID``, ``create ID -b B``).

This module only parses and prints; the work is done by ``api`` and ``runtime.lifecycle``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

VERSION = "0.1.0"
SPEC_VERSION = "1.2.0"
EXIT_ERROR = 1
EXIT_EXEC_FAILED = 255


class _Log:
    """Where errors and debug lines go: stderr, and with --log a file, in runc's text or JSON
    format (containerd reads the last {"level":"error","msg":...} line of log.json)."""

    def __init__(self, path: str | None, fmt: str, debug: bool):
        self.path, self.fmt, self.debug_on = path, fmt, debug

    def _write(self, level: str, msg: str) -> None:
        if not self.path:
            return
        from minictr.runtime.state import timestamp

        if self.fmt == "json":
            line = json.dumps({"level": level, "msg": msg, "time": timestamp()})
        else:
            line = f'time="{timestamp()}" level={level} msg="{msg}"'
        try:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass

    def error(self, msg: str, hint: str | None = None) -> None:
        print(f"minictr-runc: error: {msg}", file=sys.stderr)
        if hint:
            print(f"minictr-runc: hint: {hint}", file=sys.stderr)
        self._write("error", msg)

    def warn(self, msg: str) -> None:
        print(f"minictr-runc: warning: {msg}", file=sys.stderr)
        self._write("warning", msg)

    def debug(self, msg: str) -> None:
        if self.debug_on:
            print(msg, file=sys.stderr)
            self._write("debug", msg)


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1, as runc's do, in one line."""

    def error(self, message: str):
        print(f"minictr-runc: error: {message}", file=sys.stderr)
        sys.exit(EXIT_ERROR)


def _bool(text: str) -> str:
    if text not in ("true", "false", "auto"):
        raise argparse.ArgumentTypeError("expected true, false or auto")
    return text


HELP = {"create": "create a container", "run": "create and start a container, wait for it, "
        "delete it", "start": "start a created container",
        "state": "print a container's state as JSON",
        "kill": "send a signal (default TERM) to a container", "delete": "delete a container",
        "exec": "run a process in a container", "ps": "list the processes of a container",
        "list": "list containers", "pause": "freeze every process of a container",
        "resume": "thaw a paused container", "update": "change a container's resource limits",
        "features": "print what this runtime implements (features.md)",
        "spec": "write a template config.json", "checkpoint": "not supported",
        "restore": "not supported", "events": "not supported"}
NO_ID = ("list", "features", "spec")


def global_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="minictr-runc", usage="minictr-runc [GLOBAL OPTIONS] COMMAND [OPTIONS] ID",
                description="minictr's runtime with runc's command line",
                epilog="commands: " + ", ".join(HELP))
    p.add_argument("--root", help="state directory (default /run/minictr-runc, or "
                   "$XDG_RUNTIME_DIR/minictr-runc when not root)")
    p.add_argument("--log", help="also write log lines to this file")
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument("--debug", action="store_true", help="print each runtime step")
    p.add_argument("--systemd-cgroup", action="store_true",
                   help='cgroupsPath is "slice:prefix:name" (the directory is made directly; '
                        "minictr asks no systemd for a unit)")
    p.add_argument("--rootless", type=_bool, default="auto")
    p.add_argument("--criu", help="not supported (no checkpoint/restore)")
    p.add_argument("-v", "--version", action="store_true")
    return p


def command_parser(name: str) -> argparse.ArgumentParser:
    c = _Parser(prog=f"minictr-runc {name}", description=HELP[name])
    a = c.add_argument
    if name not in NO_ID:
        a("id")
    if name in ("create", "run"):
        a("-b", "--bundle", default=".")
        a("--console-socket")
        a("--pid-file")
        a("--no-pivot", action="store_true")
        a("--no-new-keyring", action="store_true")
        a("--preserve-fds", type=int, default=0)
        if name == "run":
            a("-d", "--detach", action="store_true")
            a("--keep", action="store_true", help="do not delete it after it exits")
    elif name == "kill":
        a("signal", nargs="?", default="TERM")
        a("-a", "--all", action="store_true", help="to every process in it")
    elif name == "delete":
        a("-f", "--force", action="store_true")
    elif name == "exec":
        a("-p", "--process", help="process.json")
        a("-d", "--detach", action="store_true")
        a("--pid-file")
        a("--console-socket")
        a("-t", "--tty", action="store_true")
        a("--cwd")
        a("-e", "--env", action="append", default=[])
        a("-u", "--user", help="UID[:GID]")
        a("-g", "--additional-gids", action="append", default=[])
        a("-c", "--cap", action="append", default=[])
        a("--no-new-privs", action="store_true")
        a("--preserve-fds", type=int, default=0)
        a("--apparmor")
        a("--process-label")
    elif name == "ps":
        a("-f", "--format", choices=["table", "json"], default="table")
        a("ps_args", nargs="*")
    elif name == "list":
        a("-f", "--format", choices=["table", "json"], default="table")
        a("-q", "--quiet", action="store_true")
    elif name == "update":
        a("-r", "--resources", help="linux.resources JSON, a file or - for stdin")
    elif name == "spec":
        a("--rootless", dest="spec_rootless", action="store_true")
        a("-b", "--bundle", default=".")
    elif name in ("checkpoint", "restore", "events"):
        a("rest", nargs=argparse.REMAINDER)
    return c


def _parse(argv: list[str]) -> argparse.Namespace:
    """Global options, then the command, whose own options may follow the container id."""
    index = _command_index(argv)
    args = global_parser().parse_args(argv if index is None else argv[:index])
    args.command = None
    if index is None:
        return args
    args.command = argv[index]
    parser = command_parser(args.command)
    rest = argv[index + 1:]
    if args.command == "exec":
        opts = _parse_exec(parser, rest)
    else:
        opts = parser.parse_intermixed_args(rest)
    for key, value in vars(opts).items():
        setattr(args, key, value)
    return args


def _command_index(argv: list[str]) -> int | None:
    takes_value = {"--root", "--log", "--log-format", "--rootless", "--criu"}
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg in takes_value:
            skip = True
        elif arg in HELP:
            return i
        elif not arg.startswith("-"):
            return None
    return None


def _parse_exec(parser, argv: list[str]) -> argparse.Namespace:
    """exec [options] ID [options] [--] COMMAND ARGS...: options may surround the id; the
    first word after the id (or everything after "--") is the command, and the rest is its."""
    options, words = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            words += argv[i + 1:]
            break
        if arg.startswith("-") and len(words) < 2:
            options.append(arg)
            action = parser._option_string_actions.get(arg.split("=", 1)[0])
            if action is not None and action.nargs != 0 and "=" not in arg and i + 1 < len(argv):
                i += 1
                options.append(argv[i])
        else:
            words.append(arg)
            if len(words) == 2:
                words += argv[i + 1:]
                break
        i += 1
    opts = parser.parse_args(options + words[:1])
    opts.exec_args = words[1:]
    return opts


# ---------------------------------------------------------------- commands


def _root(args):
    from minictr.runtime.state import StateRoot

    path = args.root or os.environ.get("MINICTR_RUNC_ROOT")
    if not path:
        if os.geteuid() == 0:
            path = "/run/minictr-runc"
        else:
            runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
            path = (os.path.join(runtime_dir, "minictr-runc")
                    if runtime_dir and os.path.isdir(runtime_dir)
                    else f"/tmp/minictr-runc-{os.geteuid()}")
    return StateRoot(path)


def _rootless(args) -> bool:
    return args.rootless == "true" or (args.rootless == "auto" and os.geteuid() != 0)


def _explain(args, log: _Log):
    return log.debug if args.debug else None


def cmd_create(args, log: _Log) -> int:
    from minictr import bundles

    bundles.create(_root(args), args.id, os.path.abspath(args.bundle),
                       console_socket=args.console_socket, pid_file=args.pid_file,
                       preserve_fds=args.preserve_fds, no_pivot=args.no_pivot,
                       no_new_keyring=args.no_new_keyring, systemd_cgroup=args.systemd_cgroup,
                       rootless=_rootless(args), explain=_explain(args, log), warn=log.warn)
    return 0


def cmd_run(args, log: _Log) -> int:
    from minictr import bundles

    return bundles.run(_root(args), args.id, os.path.abspath(args.bundle),
                           console_socket=args.console_socket, pid_file=args.pid_file,
                           preserve_fds=args.preserve_fds, no_pivot=args.no_pivot,
                           no_new_keyring=args.no_new_keyring,
                           systemd_cgroup=args.systemd_cgroup, rootless=_rootless(args),
                           detach=args.detach, keep=args.keep, explain=_explain(args, log),
                           warn=log.warn)


def cmd_start(args, log: _Log) -> int:
    from minictr.runtime import lifecycle

    lifecycle.start(_root(args), args.id, explain=_explain(args, log))
    return 0


def cmd_state(args, log: _Log) -> int:
    from minictr.runtime import lifecycle

    print(json.dumps(lifecycle.oci_state(_root(args), args.id), indent=2))
    return 0


def cmd_kill(args, log: _Log) -> int:
    from minictr.runtime import lifecycle
    from minictr.runtime.state import parse_signal

    lifecycle.kill(_root(args), args.id, parse_signal(args.signal), all_=args.all)
    return 0


def cmd_delete(args, log: _Log) -> int:
    from minictr.runtime import lifecycle

    lifecycle.delete(_root(args), args.id, force=args.force, explain=_explain(args, log),
                     warn=log.warn)
    return 0


def cmd_exec(args, log: _Log) -> int:
    from minictr import bundles

    for flag in ("apparmor", "process_label"):
        if getattr(args, flag):
            from minictr.errors import UsageError

            raise UsageError(f"--{flag.replace('_', '-')} is not supported by minictr")
    return bundles.exec_(_root(args), args.id, process_file=args.process,
                            command=args.exec_args, detach=args.detach, pid_file=args.pid_file,
                            console_socket=args.console_socket, tty=args.tty, cwd=args.cwd,
                            env=args.env, user=args.user, additional_gids=args.additional_gids,
                            caps=args.cap, no_new_privs=args.no_new_privs,
                            preserve_fds=args.preserve_fds, explain=_explain(args, log))


def cmd_ps(args, log: _Log) -> int:
    from minictr.runtime import lifecycle

    pids = lifecycle.processes(_root(args), args.id)
    if args.format == "json":
        print(json.dumps(pids))
        return 0
    if args.ps_args:
        from minictr.errors import UsageError

        raise UsageError("ps options are not supported", hint="use --format json")
    print("PID   CMD")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmdline = "?"
        print(f"{pid:<5} {cmdline}")
    return 0


def cmd_list(args, log: _Log) -> int:
    from minictr.runtime import lifecycle

    states = lifecycle.list_states(_root(args), warn=log.warn)
    if args.quiet:
        for st in states:
            print(st["id"])
    elif args.format == "json":
        print(json.dumps(states))
    else:
        print(f"{'ID':<24} {'PID':<8} {'STATUS':<10} {'BUNDLE':<40} CREATED")
        for st in states:
            print(f"{st['id']:<24} {st['pid']:<8} {st['status']:<10} {st['bundle']:<40} "
                  f"{st['created']}")
    return 0


def cmd_pause(args, log: _Log) -> int:
    from minictr.runtime import lifecycle

    lifecycle.pause(_root(args), args.id)
    return 0


def cmd_resume(args, log: _Log) -> int:
    from minictr.runtime import lifecycle

    lifecycle.resume(_root(args), args.id)
    return 0


def cmd_update(args, log: _Log) -> int:
    from minictr.errors import UsageError
    from minictr.runtime import lifecycle

    if not args.resources:
        raise UsageError("update needs --resources FILE (or - for stdin)",
                         hint="the per-resource flags of runc update are not supported")
    text = sys.stdin.read() if args.resources == "-" else open(args.resources).read()
    try:
        resources = json.loads(text)
    except ValueError as err:
        raise UsageError(f"--resources: not JSON: {err}") from err
    lifecycle.update(_root(args), args.id, resources, explain=_explain(args, log))
    return 0


def cmd_features(args, log: _Log) -> int:
    from minictr import bundles

    print(json.dumps(bundles.features(), indent=2))
    return 0


def cmd_spec(args, log: _Log) -> int:
    from minictr import bundles
    from minictr.errors import UsageError

    path = os.path.join(args.bundle, "config.json")
    if os.path.exists(path):
        raise UsageError(f"File {path} exists. Remove it first")
    with open(path, "w") as f:
        json.dump(bundles.spec_template(rootless=args.spec_rootless), f, indent=2)
    return 0


def cmd_unsupported(args, log: _Log) -> int:
    from minictr.errors import UsageError

    raise UsageError(f"{args.command} is not supported by minictr")


COMMANDS = {"create": cmd_create, "run": cmd_run, "start": cmd_start, "state": cmd_state,
            "kill": cmd_kill, "delete": cmd_delete, "exec": cmd_exec, "ps": cmd_ps,
            "list": cmd_list, "pause": cmd_pause, "resume": cmd_resume, "update": cmd_update,
            "features": cmd_features, "spec": cmd_spec, "checkpoint": cmd_unsupported,
            "restore": cmd_unsupported, "events": cmd_unsupported}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)   # see minictr/__init__.py
    args = _parse(argv)
    log = _Log(args.log, args.log_format, args.debug)
    if args.version:
        print(f"minictr-runc version {VERSION}\nspec: {SPEC_VERSION}")
        return 0
    if not args.command:
        global_parser().print_help(sys.stderr)
        return EXIT_ERROR
    from minictr.errors import ContainerExecError, MinictrError

    try:
        if args.criu:
            from minictr.errors import UsageError

            raise UsageError("--criu: checkpoint/restore is not supported by minictr")
        return COMMANDS[args.command](args, log)
    except ContainerExecError as err:
        log.error(str(err), err.hint)
        return EXIT_EXEC_FAILED if args.command == "exec" else EXIT_ERROR
    except MinictrError as err:
        log.error(str(err), err.hint)
        return EXIT_ERROR
    except OSError as err:
        log.error(f"{err.strerror or err}" + (f": {err.filename}" if err.filename else ""))
        return EXIT_ERROR
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_ERROR
    except Exception as err:                      # noqa: BLE001 - one line, never a traceback
        if args.debug:
            import traceback

            traceback.print_exc()
        log.error(f"internal error: {type(err).__name__}: {err}",
                  hint="this is a bug in minictr; --debug shows the traceback")
        return EXIT_ERROR


def entry() -> None:
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass
    os._exit(code if isinstance(code, int) else EXIT_ERROR)
