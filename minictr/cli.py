"""The command-line front end: parses arguments and calls ``minictr.api`` (images, plan, run)
or ``minictr.containers`` (ps, exec, stop, logs, kill, rm). No logic beyond parsing.

Only this module prints. Errors arrive as ``MinictrError`` and leave as one line, a hint, and an
exit code (125 launcher, 126 cannot execute, 127 not found, else the container's own status).
Imports are lazy: ``minictr run`` must start fast (bench/README.md).
"""
from __future__ import annotations

import os
import sys

from minictr import flags

def _preserved_fds(n: int) -> int:
    """--preserve-fds N passes fds 3..3+N-1, which must be open (podman's rule): a negative N
    would close stderr in the container, a large one pass whatever the launcher holds."""
    from minictr.errors import UsageError

    if n < 0:
        raise UsageError(f"--preserve-fds {n}: must be 0 or more")
    for fd in range(3, 3 + n):
        try:
            os.fstat(fd)
        except OSError:
            raise UsageError(f"--preserve-fds {n}: fd {fd} is not open",
                             hint="open fds 3 to 3+N-1 before minictr starts") from None
    return n


def _run_options(args):
    from minictr.spec.options import RunOptions

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    return RunOptions(
        image=args.image, command=tuple(command), entrypoint=args.entrypoint,
        env=tuple(args.env), env_files=tuple(args.env_file), volumes=tuple(args.volume),
        mounts=tuple(args.mount), tmpfs=tuple(args.tmpfs), workdir=args.workdir, user=args.user,
        hostname=args.hostname, name=args.name, rm=args.rm, interactive=args.interactive,
        tty=args.tty, read_only=args.read_only, init=args.init, network=args.network,
        publish=tuple(args.publish),
        cap_add=tuple(args.cap_add), cap_drop=tuple(args.cap_drop),
        preserve_fds=_preserved_fds(args.preserve_fds), ulimits=tuple(args.ulimit),
        privileged=args.privileged,
        userns=args.userns, memory=args.memory, memory_swap=args.memory_swap,
        pids_limit=args.pids_limit, cpus=args.cpus, cpu_shares=args.cpu_shares,
        cpu_weight=args.cpu_weight, cpuset_cpus=args.cpuset_cpus,
        cgroup_parent=args.cgroup_parent, devices=tuple(args.device), gpus=args.gpus,
        gpu_memory=args.gpu_memory, annotations=tuple(args.annotation),
        security_opts=tuple(args.security_opt), hpc=_hpc(args), ipc=args.ipc, pid=args.pid,
        shm_size=args.shm_size, dns=tuple(args.dns), dns_search=tuple(args.dns_search),
        dns_options=tuple(args.dns_option), add_hosts=tuple(args.add_host),
        group_add=tuple(args.group_add), labels=tuple(args.label), stop_signal=args.stop_signal,
        stop_timeout=args.stop_timeout, sysctls=tuple(args.sysctl), platform=args.platform,
        tls_verify=args.tls_verify)


def _hpc(args) -> bool:
    """--hpc / --no-hpc, else the configured default ([run] hpc, minictr/settings.py)."""
    if args.hpc is not None:
        return args.hpc
    from minictr import settings

    return bool(settings.load("run")["hpc"])


def _gpu_roots(args) -> tuple:
    """The --nvidia-*-root values; api turns them into DriverRoots only when GPUs are used."""
    return (args.nvidia_driver_root, args.nvidia_dev_root, args.nvidia_proc_root)


def _paths(args):
    from minictr.config import default_paths

    return default_paths(root=getattr(args, "root", None), state=getattr(args, "state", None))


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _warn(text: str) -> None:
    print(f"minictr: warning: {text}", file=sys.stderr, flush=True)


def _error(err) -> None:
    print(f"minictr: error: {err}", file=sys.stderr)
    if err.hint:
        print(f"minictr: hint: {err.hint}", file=sys.stderr)


def _check_terminal(args) -> None:
    """docker's refusal: -i -t needs a terminal on stdin (a pipe cannot be put in raw mode,
    and its end would never reach the container's terminal as one). Exit 1, as docker."""
    if args.interactive and args.tty and not os.isatty(0):
        from minictr.errors import UsageError

        raise UsageError("the input device is not a TTY", exit_code=1,
                         hint="drop -t to pipe input into the container (-i alone)")


def _print_json(obj) -> None:
    import json

    print(json.dumps(obj, indent=2, sort_keys=False))


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


# ---------------------------------------------------------------- subcommands


def cmd_run(args) -> int:
    from minictr import api

    explain = _say if args.explain else None
    if args.detach:
        if args.dry_run:
            from minictr.errors import UsageError

            raise UsageError("--dry-run and -d do not go together",
                             hint="a dry run starts nothing to detach from")
        print(api.run_detached(_paths(args), _run_options(args), gpu_roots=_gpu_roots(args),
                               explain=explain, warn=_warn, pull_policy=args.pull,
                               progress=_progress(args), cidfile=args.cidfile))
        return 0
    _check_terminal(args)
    return api.run(_paths(args), _run_options(args), gpu_roots=_gpu_roots(args),
                   explain=explain, warn=_warn, dry_run=args.dry_run, pull_policy=args.pull,
                   progress=_progress(args), cidfile=args.cidfile)


def cmd_spec(args) -> int:
    from minictr import api

    # With --bundle, the files the spec mounts (the GPU loader cache) go into the bundle, so
    # that runc or crun can run it; printed, the spec names them where `run` would write them.
    bundle = os.path.abspath(args.bundle) if args.bundle else None
    plan = api.plan(_paths(args), _run_options(args), gpu_roots=_gpu_roots(args),
                    files_dir=bundle, warn=_warn)
    if bundle:
        api.write_bundle(plan.spec, bundle, plan.files)
    else:
        _print_json(plan.spec)
    return 0


def cmd_load(args) -> int:
    from minictr import api

    for img in api.load(_paths(args), args.path, tag=args.tag, warn=_warn):
        print(f"Loaded image: {img}")
    return 0


def cmd_images(args) -> int:
    from minictr import api

    rows = api.images(_paths(args))
    if args.format == "json":
        _print_json(rows)
    elif args.quiet:
        for r in rows:
            print(r["id"].removeprefix("sha256:")[:12])
    else:
        _table([[r["repository"], r["tag"], r["id"].removeprefix("sha256:")[:12],
                 _human(r["size"])] for r in rows],
               ["REPOSITORY", "TAG", "IMAGE ID", "SIZE"])
    return 0


def cmd_inspect(args) -> int:
    """As docker: what was found is printed, what was not is an error each, and exit 1."""
    from minictr import api
    from minictr.errors import NotFound

    found, code = [], 0
    for ref in args.images:
        try:
            found.append(api.inspect(_paths(args), ref))
        except NotFound as err:
            _error(err)
            code = err.exit_code
    _print_json(found)
    return code


def cmd_rmi(args) -> int:
    from minictr import api
    from minictr.errors import NotFound

    code = 0
    for ref in args.images:
        try:
            for line in api.rmi(_paths(args), [ref]):
                print(line)
        except NotFound as err:
            _error(err)
            code = err.exit_code
    if args.prune:
        for line in api.rmi(_paths(args), [], prune=True):
            print(line)
    return code


def cmd_gc(args) -> int:
    from minictr import api

    result = api.gc(_paths(args))
    print(f"removed {result['blobs']} blobs, {result['layers']} layers, "
          f"{result['mountpoints']} mount-point layers and {result['containers']} orphaned "
          f"writable layers, freed {_human(result['bytes'])}")
    return 0


def _progress(args):
    if getattr(args, "quiet", False):
        return None
    from minictr.progress import make_progress

    return make_progress(sys.stderr)


def cmd_pull(args) -> int:
    from minictr import api

    ref = api.pull(_paths(args), args.image, platform=args.platform,
                   tls_verify=args.tls_verify, progress=_progress(args), warn=_warn)
    if args.output:
        print(api.export(_paths(args), ref, args.output, compression=args.compression,
                         warn=_warn))
        return 0
    print(ref)
    return 0


def cmd_export(args) -> int:
    from minictr import api

    explain = _say if args.explain else None
    print(api.export(_paths(args), args.image, args.output, compression=args.compression,
                     explain=explain, warn=_warn))
    return 0


def cmd_login(args) -> int:
    from minictr import api

    password = args.password
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    if args.username is None:
        args.username = input("Username: ")
    if password is None:
        import getpass

        password = getpass.getpass("Password: ")
    api.login(_paths(args), args.registry, args.username, password,
              tls_verify=args.tls_verify, authfile=args.authfile)
    print("Login Succeeded!")
    return 0


def cmd_logout(args) -> int:
    from minictr import api

    api.logout(_paths(args), args.registry, authfile=args.authfile)
    print(f"Removed login credentials for {args.registry}")
    return 0


def cmd_ps(args) -> int:
    from minictr import containers

    rows = containers.ps(_paths(args), all_=args.all, stats=args.stats, warn=_warn)
    if args.format == "json":
        _print_json(rows)
        return 0
    header = ["CONTAINER ID", "NAME", "IMAGE", "PID", "STATUS", "COMMAND"]
    table = [[r["id"][:12], r["name"], r["image"], str(r.get("pid") or "-"),
              r["status"] if r.get("exit_code") is None else f"exited ({r['exit_code']})",
              " ".join(r["command"])[:40]] for r in rows]
    if args.stats:
        header += ["MEM", "PIDS", "CPU s"]
        for t, r in zip(table, rows):
            s = r.get("stats") or {}
            t += [_human(s["memory"]) if s.get("memory") is not None else "-",
                  str(s.get("pids", "-")),
                  f"{s['cpu_usec'] / 1e6:.2f}" if s.get("cpu_usec") is not None else "-"]
    _table(table, header)
    return 0


def cmd_stats(args) -> int:
    from minictr import containers

    _print_json(containers.stats(_paths(args), args.container))
    return 0


def cmd_exec(args) -> int:
    from minictr import containers

    _check_terminal(args)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    return containers.exec_(_paths(args), args.container, command, env=args.env, tty=args.tty,
                     interactive=args.interactive, workdir=args.workdir, user=args.user)


def cmd_logs(args) -> int:
    from minictr import containers

    out = sys.stdout.buffer
    for chunk in containers.logs(_paths(args), args.container, follow=args.follow):
        out.write(chunk)
        out.flush()
    return 0


def cmd_stop(args) -> int:
    from minictr import containers

    for name in args.containers:
        containers.stop(_paths(args), name, signal_name=args.signal, timeout=args.time)
        print(name)
    return 0


def cmd_kill(args) -> int:
    from minictr import containers

    containers.kill(_paths(args), args.container, args.signal)
    return 0


def cmd_rm(args) -> int:
    from minictr import containers

    for name in args.containers:
        containers.rm(_paths(args), name, force=args.force, warn=_warn)
        print(name)
    return 0


def cmd_gpus(args) -> int:
    from minictr import api

    info = api.gpus(_gpu_roots(args))
    if args.json:
        _print_json(info)
        return 0
    print(f"driver {info['driver_version']}  CUDA {info.get('cuda_version') or '?'}")
    _table([[str(g["index"]), str(g["minor"]), g["uuid"], g["model"], g["bus_id"]]
            for g in info["gpus"]], ["INDEX", "MINOR", "UUID", "MODEL", "BUS"])
    for warning in info.get("warnings", []):
        _say(f"minictr: warning: {warning}")
    return 0


def cmd_cdi(args) -> int:
    from minictr import api

    text = api.cdi_generate(_gpu_roots(args), fmt=args.format)
    if args.output:
        from minictr.image.store import atomic_write

        atomic_write(args.output, text.encode())
        _say(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return str(n)


# ---------------------------------------------------------------- parser


def _parser_class():
    import argparse

    class _Parser(argparse.ArgumentParser):
        """argparse exits 2 on bad input; docker and podman use 125 for their own usage errors."""

        def error(self, message: str):
            # one line and a hint, as every other error (the usage is what --help prints)
            print(f"minictr: error: {message}", file=sys.stderr)
            guess = _did_you_mean(self, message)
            hint = f"did you mean {guess}? " if guess else ""
            prog = self.prog
            if message.startswith("unrecognized arguments: ") and prog == "minictr":
                named = _command_in(getattr(self, "argv", ()))   # the subcommand's flag
                prog += f" {named}" if named in flags.COMMANDS else ""
            print(f"minictr: hint: {hint}see '{prog} --help'", file=sys.stderr)
            sys.exit(125)

    return _Parser


def _did_you_mean(parser, message: str) -> str | None:
    """The nearest known flag to an unknown one (`--memroy`: `--memory`), or command."""
    import difflib

    known: list[str] = []
    if message.startswith("unrecognized arguments: "):
        wrong = [w.split("=", 1)[0] for w in message.split(": ", 1)[1].split()
                 if w.startswith("-")]
        parsers = [parser]
        for action in parser._actions:
            choices = getattr(action, "choices", None)
            if isinstance(choices, dict):          # the subcommands: the one named in argv
                named = choices.get(_command_in(getattr(parser, "argv", ())) or "")
                parsers += [named] if named is not None else []
        known = [o for p in parsers for a in p._actions for o in a.option_strings]
    elif message.startswith("argument COMMAND: invalid choice: '"):
        wrong = [message.split("'")[1]]
        known = list(flags.COMMANDS)
    else:
        return None
    for word in wrong:
        close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
        if close:
            return close[0]
    return None


def _command_in(argv: list[str]) -> str | None:
    """The subcommand named in argv (skipping the global options and their values)."""
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg in ("--root", "--state"):
            skip_value = True
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(only: str | None = None):
    """argparse's parser, built from the table in minictr/flags.py. With ``only``, the other
    subcommands get no parser of their own: building all of them costs more than a container's
    whole setup (bench/README.md, "Start cost")."""
    parser = _parser_class()(
        prog="minictr", description="Run OCI containers, GPU-ready, with no daemon and no root.")
    flags.add_to(parser, flags.GLOBAL)
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")
    for name in flags.COMMANDS:
        if only is None or name == only:
            flags.command_parser(sub, name).set_defaults(func=globals()["cmd_" + name])
    return parser


def parse_args(argv: list[str]):
    """The common `run` and `pull` forms by flags.parse_fast, anything else (and every error) by
    argparse."""
    args = flags.parse_fast(argv)
    if args is not None:
        args.func = globals()["cmd_" + args.cmd]
        return args
    named = _command_in(argv)
    parser = build_parser(only=named if named in flags.COMMANDS else None)
    parser.argv = argv              # for the hints of error()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return None
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    import _signal as signal    # not signal.py, which imports enum (~3 ms)

    signal.signal(signal.SIGINT, signal.default_int_handler)   # see minictr/__init__.py
    debug = "--debug" in argv
    try:
        args = parse_args(argv)
        if args is None:
            return 125
        if args.func not in (cmd_run, cmd_exec):
            import gc

            gc.enable()
        return args.func(args)
    except KeyboardInterrupt:
        print("minictr: interrupted", file=sys.stderr)
        return 130
    except BaseException as err:                   # noqa: BLE001 - one line, never a traceback
        if isinstance(err, SystemExit):
            raise
        return _report(err, debug)


def _report(err: BaseException, debug: bool) -> int:
    """Every failure as one line (and a hint), with its exit code."""
    from minictr.errors import MinictrError, hint_for

    if debug:
        import traceback

        traceback.print_exception(err)
    if isinstance(err, MinictrError):
        _error(err)
        return err.exit_code
    if isinstance(err, BrokenPipeError) and _stdout_closed():
        return 0                                   # `minictr images | head`: not a failure
    if isinstance(err, OSError):
        # A launcher-side failure nothing above turned into a MinictrError: still one line.
        from minictr.runtime.syscalls import call_of

        what = err.strerror or str(err)
        if err.filename:
            what = f"{what}: {err.filename}"
        print(f"minictr: error: {what}", file=sys.stderr)
        hint = hint_for(call_of(err) or "", err.errno or 0)
        if hint:
            print(f"minictr: hint: {hint}", file=sys.stderr)
        return 125
    print(f"minictr: error: internal error: {type(err).__name__}: {err}", file=sys.stderr)
    print("minictr: hint: this is a bug in minictr; --debug shows the traceback",
          file=sys.stderr)
    return 125


def _stdout_closed() -> bool:
    """Is our stdout a pipe nobody reads any more?"""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (OSError, ValueError):
        return True


def entry() -> None:
    """The console script: main(), then leave without the interpreter's teardown (it costs
    ~20 ms, more than a container's setup; there is nothing left to clean up by then).

    The cyclic garbage collector is off while the command line is read and the modules are
    imported (its passes over ~50,000 new objects were ~1 ms of every start); main() turns it
    back on for every command but ``run`` and ``exec``, and api.run for a plan not taken
    from the cache (pulling, unpacking, planning) and in a detached container's monitor,
    which lives as long as the container: only a warm start runs without it, and frees its
    acyclic garbage by reference counting as ever."""
    import gc

    gc.disable()
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass
    os._exit(code if isinstance(code, int) else 1)
