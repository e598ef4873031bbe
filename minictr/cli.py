"""The command-line front end: parses arguments and calls ``minictr.api`` (images, plan, run)
or ``minictr.containers`` (ps, exec, stop, logs, kill, rm). No logic beyond parsing.

Only this module prints. Errors arrive as ``MinictrError`` and leave as one line, a hint, and an
exit code (125 launcher, 126 cannot execute, 127 not found, else the container's own status).
Imports are lazy: ``minictr run`` must start fast (bench/README.md).
"""
from __future__ import annotations

import argparse
import os
import sys

GPUS_HELP = (
    "GPUs to inject: all | none | 0,1 (indices, in nvidia-smi order) | GPU-<uuid>,... | "
    "MIG-<uuid> | docker forms device=0,2 / count=N / capabilities=compute,utility. "
    "Unlike docker, a bare number is an index: --gpus 0 means GPU 0, not zero GPUs")


def _add_store_args(p: argparse.ArgumentParser, default=argparse.SUPPRESS) -> None:
    """Both before and after the subcommand (`minictr --root DIR load ...` or `minictr load
    --root DIR ...`); SUPPRESS keeps a subcommand from resetting a value given before it."""
    p.add_argument("--root", default=default, help="store directory (default /var/lib/minictr, or "
                   "$XDG_DATA_HOME/minictr when not root; env MINICTR_ROOT)")
    p.add_argument("--state", default=default, help="state directory (default /run/minictr, or "
                   "$XDG_RUNTIME_DIR/minictr; env MINICTR_STATE)")


def _add_gpu_root_args(p: argparse.ArgumentParser) -> None:
    where = "; else env MINICTR_NVIDIA_{}_ROOT, else [nvidia] {} in config.toml"
    p.add_argument("--nvidia-driver-root", help="where the driver's libraries and binaries live "
                   "(default /" + where.format("DRIVER", "driver-root") + ")")
    p.add_argument("--nvidia-dev-root", help="where /dev/nvidia* live (default /"
                   + where.format("DEV", "dev-root") + ")")
    p.add_argument("--nvidia-proc-root", help="the proc filesystem to read driver facts from "
                   "(default /proc" + where.format("PROC", "proc-root") + ")")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("image", help="image reference, or oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE")
    a("command", nargs=argparse.REMAINDER, help="command and arguments (replace the image's Cmd)")
    a("--entrypoint", help="override the image's Entrypoint ('' clears it)")
    a("-e", "--env", action="append", default=[], help="KEY=VALUE, or KEY to copy it from here")
    a("--env-file", action="append", default=[], help="file of KEY=VALUE lines")
    a("-v", "--volume", action="append", default=[], help="bind mount SRC:DST[:ro]")
    a("--mount", action="append", default=[], help="type=bind,src=SRC,dst=DST[,ro] or "
      "type=tmpfs,dst=DST[,tmpfs-size=N]")
    a("--tmpfs", action="append", default=[], help="mount a tmpfs at DST[:OPTIONS]")
    a("-w", "--workdir", help="working directory inside the container")
    a("-u", "--user", help="USER[:GROUP], names resolved in the image's /etc/passwd and /etc/group")
    a("--hostname", help="container host name (default: the container id's first 12 chars)")
    a("--name", help="container name (default: generated)")
    a("--rm", action="store_true", help="remove the container's writable layer when it exits")
    a("-i", "--interactive", action="store_true", help="keep stdin open")
    a("-t", "--tty", action="store_true", help="give the container a pseudo-terminal (with -i "
      "stdin must be a terminal; without -i no input is sent, as docker)")
    a("--read-only", action="store_true", help="mount the image read-only (no upper dir)")
    a("--init", action="store_true", help="run a minimal init as PID 1 that forwards signals and "
      "reaps zombies")
    a("--network", "--net", default=None, metavar="NETWORK",
      help="host | none | bridge | container:NAME | ns:PATH (default: the host's network; "
      "outside a Slurm job without CAP_NET_RAW and with the host's abstract unix sockets out "
      "of reach; see docs/network.md)")
    a("-p", "--publish", action="append", default=[], metavar="[IP:]HOST:CONTAINER[/PROTO]",
      help="publish a container port on the host (with --network bridge), e.g. 8080:80, "
      "127.0.0.1:5353:53/udp")
    a("--cap-add", action="append", default=[], help="add a capability (e.g. NET_ADMIN, ALL)")
    a("--cap-drop", action="append", default=[], help="drop a capability (e.g. CHOWN, ALL)")
    a("--preserve-fds", type=int, default=0, help="pass N fds beyond 0-2 into the container")
    a("--ulimit", action="append", default=[], help="NAME=SOFT[:HARD], e.g. nofile=1024:2048")
    a("--privileged", action="store_true", help="all capabilities, no masked paths, no device filter")
    a("--security-opt", action="append", default=[], help="seccomp=FILE|unconfined, no-new-privileges=false")
    a("--userns", choices=["auto", "keep-id", "host"], default=None,
      help="rootless user mapping: auto (you are root inside), keep-id (your uid inside)")
    a("-m", "--memory", help="memory limit, e.g. 512m, 2g")
    a("--memory-swap", help="memory+swap limit (-1 = unlimited swap)")
    a("--pids-limit", type=int, help="maximum number of processes")
    a("--cpus", type=float, help="CPU quota in CPUs, e.g. 0.5")
    a("--cpu-shares", type=int, help="relative CPU weight, docker scale (2-262144, default 1024)")
    a("--cpu-weight", type=int, help="relative CPU weight, cgroup v2 scale (1-10000)")
    a("--cpuset-cpus", help="CPUs the container may run on, e.g. 0-3,6")
    a("--cgroup-parent", help="cgroup under which the container's cgroup is made")
    a("--device", action="append", default=[], help="HOST[:CONTAINER][:rwm], or a CDI name "
      "such as nvidia.com/gpu=0")
    a("--gpus", help=GPUS_HELP)
    a("--gpu-memory", help="per-GPU device memory limit through MPS, e.g. 0=20G,1=10G")
    a("--annotation", action="append", default=[], help="KEY=VALUE added to the spec")
    a("--hpc", action=argparse.BooleanOptionalAction, default=None,
      help="job-native mode, as enroot and Apptainer: the host's environment (less PATH, "
      "LD_LIBRARY_PATH...), you as yourself with $HOME and the current directory mounted, the "
      "host's PID, IPC and UTS namespaces, Slurm's PMI/PMIx; default from "
      "/etc/minictr/config.toml or ~/.config/minictr/config.toml ([run] hpc = true)")
    a("--ipc", choices=["private", "host"], default="private",
      help="host: share the host's IPC namespace and /dev/shm (PyTorch's recommended setting)")
    a("--pid", choices=["private", "host"], default="private",
      help="host: share the host's PID namespace (the container sees every process)")
    a("--shm-size", help="size of /dev/shm (default 64m)")
    a("--dns", action="append", default=[], help="nameserver for /etc/resolv.conf")
    a("--dns-search", action="append", default=[], help="search domain ('.' for none)")
    a("--dns-option", "--dns-opt", action="append", default=[], help="resolv.conf option, "
      "e.g. ndots:2")
    a("--add-host", action="append", default=[], help="NAME:IP added to /etc/hosts "
      "(IP host-gateway: the host, with the host's network)")
    a("--group-add", action="append", default=[], help="supplementary group (name in the "
      "image's /etc/group, or gid)")
    a("-l", "--label", action="append", default=[], help="KEY=VALUE label of the container")
    a("--stop-signal", help="signal `minictr stop` sends first (default: the image's, else TERM)")
    a("--stop-timeout", type=int, help="seconds `minictr stop` waits before SIGKILL (default 10)")
    a("--sysctl", action="append", default=[], help="namespaced sysctl KEY=VALUE, e.g. "
      "net.ipv4.ip_unprivileged_port_start=0 (with --network none)")
    a("--platform", help="os/arch[/variant] of the image to use and pull (default: this host's)")
    a("--tls-verify", default=None, type=_bool_arg,
      help="false allows plain http and unverified TLS when pulling")
    _add_gpu_root_args(p)


def _bool_arg(text: str) -> bool:
    """true/false (and 1/0, yes/no), as podman's --tls-verify; anything else is an error."""
    value = {"true": True, "1": True, "yes": True,
             "false": False, "0": False, "no": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
    return value


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


def _run_options(args: argparse.Namespace):
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


def _hpc(args: argparse.Namespace) -> bool:
    """--hpc / --no-hpc, else the configured default ([run] hpc, minictr/settings.py)."""
    if args.hpc is not None:
        return args.hpc
    from minictr import settings

    return bool(settings.load("run")["hpc"])


def _gpu_roots(args: argparse.Namespace) -> tuple:
    """The --nvidia-*-root values; api turns them into DriverRoots only when GPUs are used."""
    return (args.nvidia_driver_root, args.nvidia_dev_root, args.nvidia_proc_root)


def _paths(args: argparse.Namespace):
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


def _check_terminal(args: argparse.Namespace) -> None:
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


def cmd_run(args: argparse.Namespace) -> int:
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


def cmd_spec(args: argparse.Namespace) -> int:
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


def cmd_load(args: argparse.Namespace) -> int:
    from minictr import api

    for img in api.load(_paths(args), args.path, tag=args.tag, warn=_warn):
        print(f"Loaded image: {img}")
    return 0


def cmd_images(args: argparse.Namespace) -> int:
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


def cmd_inspect(args: argparse.Namespace) -> int:
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


def cmd_rmi(args: argparse.Namespace) -> int:
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


def cmd_gc(args: argparse.Namespace) -> int:
    from minictr import api

    result = api.gc(_paths(args))
    print(f"removed {result['blobs']} blobs, {result['layers']} layers and "
          f"{result['containers']} orphaned writable layers, freed {_human(result['bytes'])}")
    return 0


def _progress(args: argparse.Namespace):
    if getattr(args, "quiet", False):
        return None
    from minictr.progress import make_progress

    return make_progress(sys.stderr)


def cmd_pull(args: argparse.Namespace) -> int:
    from minictr import api

    ref = api.pull(_paths(args), args.image, platform=args.platform,
                   tls_verify=args.tls_verify, progress=_progress(args), warn=_warn)
    if args.output:
        print(api.export(_paths(args), ref, args.output, compression=args.compression,
                         warn=_warn))
        return 0
    print(ref)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from minictr import api

    explain = _say if args.explain else None
    print(api.export(_paths(args), args.image, args.output, compression=args.compression,
                     explain=explain, warn=_warn))
    return 0


def cmd_login(args: argparse.Namespace) -> int:
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


def cmd_logout(args: argparse.Namespace) -> int:
    from minictr import api

    api.logout(_paths(args), args.registry, authfile=args.authfile)
    print(f"Removed login credentials for {args.registry}")
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
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


def cmd_stats(args: argparse.Namespace) -> int:
    from minictr import containers

    _print_json(containers.stats(_paths(args), args.container))
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    from minictr import containers

    _check_terminal(args)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    return containers.exec_(_paths(args), args.container, command, env=args.env, tty=args.tty,
                     interactive=args.interactive, workdir=args.workdir, user=args.user)


def cmd_logs(args: argparse.Namespace) -> int:
    from minictr import containers

    out = sys.stdout.buffer
    for chunk in containers.logs(_paths(args), args.container, follow=args.follow):
        out.write(chunk)
        out.flush()
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from minictr import containers

    for name in args.containers:
        containers.stop(_paths(args), name, signal_name=args.signal, timeout=args.time)
        print(name)
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    from minictr import containers

    containers.kill(_paths(args), args.container, args.signal)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from minictr import containers

    for name in args.containers:
        containers.rm(_paths(args), name, force=args.force, warn=_warn)
        print(name)
    return 0


def cmd_gpus(args: argparse.Namespace) -> int:
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


def cmd_cdi(args: argparse.Namespace) -> int:
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


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad input; docker and podman use 125 for their own usage errors."""

    def error(self, message: str):
        # one line and a hint, as every other error (the usage is what --help prints)
        print(f"minictr: error: {message}", file=sys.stderr)
        print(f"minictr: hint: see '{self.prog} --help'", file=sys.stderr)
        sys.exit(125)


class _Skipped:
    """Stands in for the parser of a subcommand that this invocation does not use: building
    all of them costs more than a container's whole setup (bench/README.md, "Start cost")."""

    def add_argument(self, *args, **kwargs) -> None:
        pass


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


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="minictr", description="Run OCI containers, GPU-ready, with no daemon and no root.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version="minictr 0.1.0")
    _add_store_args(parser, default=None)
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")

    def add(name, func, help_, **kw):
        if only is not None and name != only:
            return _Skipped()
        p = sub.add_parser(name, help=help_, description=help_, **kw)
        p.set_defaults(func=func)
        _add_store_args(p)
        return p

    p = add("run", cmd_run, "run a command in a new container")
    _add_run_args(p)
    p.add_argument("--explain", action="store_true",
                   help="print each step (namespaces, mounts, pivot_root, cgroups, execve) as it happens")
    p.add_argument("--dry-run", action="store_true",
                   help="with --explain: print the steps without doing them")
    p.add_argument("--pull", choices=["missing", "always", "never"], default="missing",
                   help="pull the image from its registry: missing (default), always, never")
    p.add_argument("-q", "--quiet", action="store_true", help="no pull progress")
    p.add_argument("-d", "--detach", action="store_true", help="run in the background: print "
                   "the container's id once it runs; its output goes to `minictr logs`")
    p.add_argument("--cidfile", help="write the container's id to this file (which must not "
                   "exist)")

    p = add("spec", cmd_spec, "print the OCI runtime spec (config.json) that run would execute")
    _add_run_args(p)
    p.add_argument("--bundle", help="write DIR/config.json instead of printing it (root.path "
                   "names where `run` would mount the image; point it at an unpacked rootfs to "
                   "hand the bundle to crun or runc)")

    p = add("load", cmd_load, "load an image from an OCI layout dir, oci-archive or docker-archive")
    p.add_argument("path", help="DIR, FILE.tar, or oci:DIR[:TAG], oci-archive:FILE, "
                   "docker-archive:FILE")
    p.add_argument("--tag", help="name to give the loaded image")

    p = add("images", cmd_images, "list stored images")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("-q", "--quiet", action="store_true", help="only image ids")

    p = add("inspect", cmd_inspect, "show an image's manifest, config and layers as JSON")
    p.add_argument("images", nargs="+")

    p = add("rmi", cmd_rmi, "remove images")
    p.add_argument("images", nargs="+")
    p.add_argument("--prune", action="store_true", help="also remove blobs and layers no image uses")

    add("gc", cmd_gc, "remove blobs and layers no image or container uses, and what killed "
        "runs left behind")

    p = add("pull", cmd_pull, "pull an image from a registry")
    p.add_argument("image")
    p.add_argument("--platform", help="os/arch[/variant] (default: this host's)")
    p.add_argument("--tls-verify", default=None, type=lambda s: s.lower() not in ("false", "0", "no"),
                   help="false allows plain http and unverified TLS for this registry")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("-o", "--output", help="also write the image as one squashfs file "
                   "(as `minictr export IMAGE -o FILE`)")
    p.add_argument("--compression", default="gzip", help="with -o: the squashfs compressor "
                   "(gzip, xz, zstd, lzo, lz4)")

    p = add("export", cmd_export, "write an image as one squashfs file that `minictr run FILE` "
            "runs in place (on any node, from a shared filesystem)")
    p.add_argument("image")
    p.add_argument("-o", "--output", required=True, help="the file to write, e.g. IMAGE.sqsh")
    p.add_argument("--compression", default="gzip", help="squashfs compressor: gzip (default), "
                   "xz, zstd, lzo, lz4 (minictr reads gzip, xz and zstd images without "
                   "unsquashfs)")
    p.add_argument("--explain", action="store_true", help="print the mount and the mksquashfs "
                   "command")

    for name, func, text in (("login", cmd_login, "log in to a registry"),
                             ("logout", cmd_logout, "log out of a registry")):
        p = add(name, func, text)
        p.add_argument("registry")
        p.add_argument("--authfile", help="credentials file (default "
                       "$XDG_RUNTIME_DIR/containers/auth.json)")
        if name == "login":
            p.add_argument("-u", "--username")
            p.add_argument("-p", "--password")
            p.add_argument("--password-stdin", action="store_true")
            p.add_argument("--tls-verify", default=None,
                           type=lambda s: s.lower() not in ("false", "0", "no"))

    p = add("ps", cmd_ps, "list containers")
    p.add_argument("-a", "--all", action="store_true", help="also stopped containers")
    p.add_argument("--stats", action="store_true", help="with memory, pids and cpu usage")
    p.add_argument("--format", choices=["table", "json"], default="table")

    p = add("stats", cmd_stats, "memory, pids and cpu usage of a running container")
    p.add_argument("container")

    p = add("exec", cmd_exec, "run a command inside a running container")
    p.add_argument("container")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("-i", "--interactive", action="store_true")
    p.add_argument("-w", "--workdir")
    p.add_argument("-u", "--user")

    p = add("logs", cmd_logs, "print a detached container's output (stdout and stderr)")
    p.add_argument("container")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until it stops")

    p = add("stop", cmd_stop, "stop containers: the stop signal, then SIGKILL after a timeout")
    p.add_argument("containers", nargs="+")
    p.add_argument("-s", "--signal", help="signal to send first (default: the container's "
                   "--stop-signal, the image's StopSignal, else TERM)")
    p.add_argument("-t", "--time", type=int, help="seconds to wait before SIGKILL (default: "
                   "the container's --stop-timeout, else 10; -1 waits for ever)")

    p = add("kill", cmd_kill, "send a signal to a container's PID 1 (default SIGKILL)")
    p.add_argument("container")
    p.add_argument("signal", nargs="?", default="KILL", help="signal name or number "
                   "(default KILL, as docker kill)")

    p = add("rm", cmd_rm, "remove stopped containers")
    p.add_argument("containers", nargs="+")
    p.add_argument("-f", "--force", action="store_true", help="kill a running one first")

    p = add("gpus", cmd_gpus, "list the host's NVIDIA GPUs as minictr sees them")
    p.add_argument("--json", action="store_true")
    _add_gpu_root_args(p)

    p = add("cdi", cmd_cdi, "CDI specs: 'cdi generate' writes one for the host's GPUs")
    p.add_argument("action", choices=["generate"])
    p.add_argument("--format", choices=["json", "yaml"], default="yaml")
    p.add_argument("--output", "-o", help="file to write (default: stdout)")
    _add_gpu_root_args(p)

    return parser


COMMANDS = ("run", "spec", "load", "images", "inspect", "rmi", "gc", "pull", "export", "login",
            "logout", "ps", "stats", "exec", "logs", "stop", "kill", "rm", "gpus", "cdi")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)   # see minictr/__init__.py
    debug = "--debug" in argv
    try:
        named = _command_in(argv)
        parser = build_parser(only=named if named in COMMANDS else None)
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return 125
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
    ~20 ms, more than a container's setup; there is nothing left to clean up by then)."""
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass
    os._exit(code if isinstance(code, int) else 1)
