"""minictr's command line as data: one table of every subcommand's flags, from which cli.py
builds the argparse parsers (help, errors, every subcommand) and `parse_fast` reads the common
`minictr run` and `minictr pull` forms without argparse.

Why two readers of one table: importing argparse and building the `run` parser costs ~6 ms, a
fifth of a container's start (bench/README.md, "Start cost"). `parse_fast` understands exactly
the forms whose meaning is plain (exact flag names, `--flag=value`, clusters of one-letter
switches such as `-it`) and answers None for anything else, which then goes to argparse: so
help, abbreviations, unknown flags and every error keep argparse's behaviour and messages (exit
125, cli._Parser). tests/unit/test_flags.py checks that both readers agree on thousands of
generated command lines.

Each entry is ``arg(*names, **kwargs)``: the arguments of argparse's add_argument, except
``action=BOOLEAN_OPTIONAL`` (argparse.BooleanOptionalAction) and ``nargs=REMAINDER``, spelled
without importing argparse.
"""
from __future__ import annotations

from types import SimpleNamespace

REMAINDER = "..."                    # argparse.REMAINDER's value
SUPPRESS = "==SUPPRESS=="            # argparse.SUPPRESS's value
BOOLEAN_OPTIONAL = "boolean-optional"


def arg(*names: str, **kwargs) -> tuple[tuple[str, ...], dict]:
    return names, kwargs


def bool_value(text: str) -> bool:
    """true/false (and 1/0, yes/no), as podman's --tls-verify; anything else is an error."""
    value = {"true": True, "1": True, "yes": True,
             "false": False, "0": False, "no": False}.get(text.lower())
    if value is None:
        import argparse

        raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
    return value


def not_false(text: str) -> bool:
    """pull's and login's --tls-verify: anything but false/0/no is true."""
    return text.lower() not in ("false", "0", "no")


GPUS_HELP = (
    "GPUs to inject: all | none | 0,1 (indices, in nvidia-smi order) | GPU-<uuid>,... | "
    "MIG-<uuid> | docker forms device=0,2 / count=N / capabilities=compute,utility. "
    "Unlike docker, a bare number is an index: --gpus 0 means GPU 0, not zero GPUs")

# Both before and after the subcommand (`minictr --root DIR load ...` or `minictr load --root
# DIR ...`); after it, SUPPRESS keeps a subcommand from resetting a value given before it.
STORE = (
    arg("--root", default=SUPPRESS, help="store directory (default /var/lib/minictr, or "
        "$XDG_DATA_HOME/minictr when not root; env MINICTR_ROOT)"),
    arg("--state", default=SUPPRESS, help="state directory (default /run/minictr, or "
        "$XDG_RUNTIME_DIR/minictr; env MINICTR_STATE)"),
)

GLOBAL = (
    arg("--debug", action="store_true", help="show tracebacks on errors"),
    arg("--version", action="version", version="minictr 0.1.0"),
    *((names, dict(kwargs, default=None)) for names, kwargs in STORE),
)

_WHERE = "; else env MINICTR_NVIDIA_{}_ROOT, else [nvidia] {} in config.toml"
GPU_ROOTS = (
    arg("--nvidia-driver-root", help="where the driver's libraries and binaries live (default /"
        + _WHERE.format("DRIVER", "driver-root") + ")"),
    arg("--nvidia-dev-root", help="where /dev/nvidia* live (default /"
        + _WHERE.format("DEV", "dev-root") + ")"),
    arg("--nvidia-proc-root", help="the proc filesystem to read driver facts from "
        "(default /proc" + _WHERE.format("PROC", "proc-root") + ")"),
)

# `run` and `spec`: what the container is
CONTAINER = (
    arg("image", help="image reference, or oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE"),
    arg("command", nargs=REMAINDER, help="command and arguments (replace the image's Cmd)"),
    arg("--entrypoint", help="override the image's Entrypoint ('' clears it)"),
    arg("-e", "--env", action="append", default=[], help="KEY=VALUE, or KEY to copy it from here"),
    arg("--env-file", action="append", default=[], help="file of KEY=VALUE lines"),
    arg("-v", "--volume", action="append", default=[], help="bind mount SRC:DST[:ro]"),
    arg("--mount", action="append", default=[], help="type=bind,src=SRC,dst=DST[,ro] or "
        "type=tmpfs,dst=DST[,tmpfs-size=N]"),
    arg("--tmpfs", action="append", default=[], help="mount a tmpfs at DST[:OPTIONS]"),
    arg("-w", "--workdir", help="working directory inside the container"),
    arg("-u", "--user", help="USER[:GROUP], names resolved in the image's /etc/passwd and "
        "/etc/group"),
    arg("--hostname", help="container host name (default: the container id's first 12 chars)"),
    arg("--name", help="container name (default: generated)"),
    arg("--rm", action="store_true", help="remove the container's writable layer when it exits"),
    arg("-i", "--interactive", action="store_true", help="keep stdin open"),
    arg("-t", "--tty", action="store_true", help="give the container a pseudo-terminal (with -i "
        "stdin must be a terminal; without -i no input is sent, as docker)"),
    arg("--read-only", action="store_true", help="mount the image read-only (no upper dir)"),
    arg("--init", action="store_true", help="run a minimal init as PID 1 that forwards signals "
        "and reaps zombies"),
    arg("--network", "--net", default=None, metavar="NETWORK",
        help="host | none | bridge | container:NAME | ns:PATH (default: the host's network; "
        "outside a Slurm job without CAP_NET_RAW and with the host's abstract unix sockets out "
        "of reach; see docs/network.md)"),
    arg("-p", "--publish", action="append", default=[], metavar="[IP:]HOST:CONTAINER[/PROTO]",
        help="publish a container port on the host (with --network bridge), e.g. 8080:80, "
        "127.0.0.1:5353:53/udp, 8000-8002:9000-9002"),
    arg("--cap-add", action="append", default=[], help="add a capability (e.g. NET_ADMIN, ALL)"),
    arg("--cap-drop", action="append", default=[], help="drop a capability (e.g. CHOWN, ALL)"),
    arg("--preserve-fds", type=int, default=0, help="pass N fds beyond 0-2 into the container"),
    arg("--ulimit", action="append", default=[], help="NAME=SOFT[:HARD], e.g. nofile=1024:2048"),
    arg("--privileged", action="store_true", help="all capabilities, no masked paths, no device "
        "filter"),
    arg("--security-opt", action="append", default=[], help="seccomp=FILE|unconfined, "
        "no-new-privileges=false"),
    arg("--userns", choices=["auto", "keep-id", "host"], default=None,
        help="rootless user mapping: auto (you are root inside), keep-id (your uid inside)"),
    arg("-m", "--memory", help="memory limit, e.g. 512m, 2g"),
    arg("--memory-swap", help="memory+swap limit (-1 = unlimited swap)"),
    arg("--pids-limit", type=int, help="maximum number of processes"),
    arg("--cpus", type=float, help="CPU quota in CPUs, e.g. 0.5"),
    arg("--cpu-shares", type=int, help="relative CPU weight, docker scale (2-262144, default "
        "1024)"),
    arg("--cpu-weight", type=int, help="relative CPU weight, cgroup v2 scale (1-10000)"),
    arg("--cpuset-cpus", help="CPUs the container may run on, e.g. 0-3,6"),
    arg("--cgroup-parent", help="cgroup under which the container's cgroup is made"),
    arg("--device", action="append", default=[], help="HOST[:CONTAINER][:rwm], or a CDI name "
        "such as nvidia.com/gpu=0"),
    arg("--gpus", help=GPUS_HELP),
    arg("--gpu-memory", help="per-GPU device memory limit through MPS, e.g. 0=20G,1=10G"),
    arg("--annotation", action="append", default=[], help="KEY=VALUE added to the spec"),
    arg("--hpc", action=BOOLEAN_OPTIONAL, default=None,
        help="job-native mode, as enroot and Apptainer: the host's environment (less PATH, "
        "LD_LIBRARY_PATH...), you as yourself with $HOME and the current directory mounted, the "
        "host's PID, IPC and UTS namespaces, Slurm's PMI/PMIx; default from "
        "/etc/minictr/config.toml or ~/.config/minictr/config.toml ([run] hpc = true)"),
    arg("--ipc", choices=["private", "host"], default="private",
        help="host: share the host's IPC namespace and /dev/shm (PyTorch's recommended setting)"),
    arg("--pid", choices=["private", "host"], default="private",
        help="host: share the host's PID namespace (the container sees every process)"),
    arg("--shm-size", help="size of /dev/shm (default 64m)"),
    arg("--dns", action="append", default=[], help="nameserver for /etc/resolv.conf"),
    arg("--dns-search", action="append", default=[], help="search domain ('.' for none)"),
    arg("--dns-option", "--dns-opt", action="append", default=[], help="resolv.conf option, "
        "e.g. ndots:2"),
    arg("--add-host", action="append", default=[], help="NAME:IP added to /etc/hosts "
        "(IP host-gateway: the host, with the host's network)"),
    arg("--group-add", action="append", default=[], help="supplementary group (name in the "
        "image's /etc/group, or gid)"),
    arg("-l", "--label", action="append", default=[], help="KEY=VALUE label of the container"),
    arg("--stop-signal", help="signal `minictr stop` sends first (default: the image's, else "
        "TERM)"),
    arg("--stop-timeout", type=int, help="seconds `minictr stop` waits before SIGKILL (default "
        "10)"),
    arg("--sysctl", action="append", default=[], help="namespaced sysctl KEY=VALUE, e.g. "
        "net.ipv4.ip_unprivileged_port_start=0 (with --network none)"),
    arg("--platform", help="os/arch[/variant] of the image to use and pull (default: this "
        "host's)"),
    arg("--tls-verify", default=None, type=bool_value,
        help="false allows plain http and unverified TLS when pulling"),
    *GPU_ROOTS,
)

RUN = (
    *CONTAINER,
    arg("--explain", action="store_true", help="print each step (namespaces, mounts, "
        "pivot_root, cgroups, execve) as it happens"),
    arg("--dry-run", action="store_true", help="with --explain: print the steps without doing "
        "them"),
    arg("--pull", choices=["missing", "always", "never"], default="missing",
        help="pull the image from its registry: missing (default), always, never"),
    arg("-q", "--quiet", action="store_true", help="no pull progress"),
    arg("-d", "--detach", action="store_true", help="run in the background: print the "
        "container's id once it runs; its output goes to `minictr logs`"),
    arg("--cidfile", help="write the container's id to this file (which must not exist)"),
)

_REGISTRY = (
    arg("registry"),
    arg("--authfile", help="credentials file (default $XDG_RUNTIME_DIR/containers/auth.json)"),
)

# name: (help, flags), in the order `minictr --help` lists them
COMMANDS: dict[str, tuple[str, tuple]] = {
    "run": ("run a command in a new container", RUN),
    "spec": ("print the OCI runtime spec (config.json) that run would execute", (
        *CONTAINER,
        arg("--bundle", help="write DIR/config.json instead of printing it (root.path names "
            "where `run` would mount the image; point it at an unpacked rootfs to hand the "
            "bundle to crun or runc)"))),
    "load": ("load an image from an OCI layout dir, oci-archive or docker-archive", (
        arg("path", help="DIR, FILE.tar, or oci:DIR[:TAG], oci-archive:FILE, "
            "docker-archive:FILE"),
        arg("--tag", help="name to give the loaded image"))),
    "images": ("list stored images", (
        arg("--format", choices=["table", "json"], default="table"),
        arg("-q", "--quiet", action="store_true", help="only image ids"))),
    "inspect": ("show an image's manifest, config and layers as JSON", (
        arg("images", nargs="+"),)),
    "rmi": ("remove images", (
        arg("images", nargs="+"),
        arg("--prune", action="store_true", help="also remove blobs and layers no image uses"))),
    "gc": ("remove blobs and layers no image or container uses, and what killed runs left "
           "behind", ()),
    "pull": ("pull an image from a registry", (
        arg("image"),
        arg("--platform", help="os/arch[/variant] (default: this host's)"),
        arg("--tls-verify", default=None, type=not_false,
            help="false allows plain http and unverified TLS for this registry"),
        arg("-q", "--quiet", action="store_true", help="no progress output"),
        arg("-o", "--output", help="also write the image as one squashfs file (as `minictr "
            "export IMAGE -o FILE`)"),
        arg("--compression", default="gzip", help="with -o: the squashfs compressor (gzip, xz, "
            "zstd, lzo, lz4)"))),
    "export": ("write an image as one squashfs file that `minictr run FILE` runs in place (on "
               "any node, from a shared filesystem)", (
        arg("image"),
        arg("-o", "--output", required=True, help="the file to write, e.g. IMAGE.sqsh"),
        arg("--compression", default="gzip", help="squashfs compressor: gzip (default), xz, "
            "zstd, lzo, lz4 (minictr reads gzip, xz and zstd images without unsquashfs)"),
        arg("--explain", action="store_true", help="print the mount and the mksquashfs "
            "command"))),
    "login": ("log in to a registry", (
        *_REGISTRY,
        arg("-u", "--username"),
        arg("-p", "--password"),
        arg("--password-stdin", action="store_true"),
        arg("--tls-verify", default=None, type=not_false))),
    "logout": ("log out of a registry", _REGISTRY),
    "ps": ("list containers", (
        arg("-a", "--all", action="store_true", help="also stopped containers"),
        arg("--stats", action="store_true", help="with memory, pids and cpu usage"),
        arg("--format", choices=["table", "json"], default="table"))),
    "stats": ("memory, pids and cpu usage of a running container", (arg("container"),)),
    "exec": ("run a command inside a running container", (
        arg("container"),
        arg("command", nargs=REMAINDER),
        arg("-e", "--env", action="append", default=[]),
        arg("-t", "--tty", action="store_true"),
        arg("-i", "--interactive", action="store_true"),
        arg("-w", "--workdir"),
        arg("-u", "--user"))),
    "logs": ("print a detached container's output (stdout and stderr)", (
        arg("container"),
        arg("-f", "--follow", action="store_true", help="keep printing until it stops"))),
    "stop": ("stop containers: the stop signal, then SIGKILL after a timeout", (
        arg("containers", nargs="+"),
        arg("-s", "--signal", help="signal to send first (default: the container's "
            "--stop-signal, the image's StopSignal, else TERM)"),
        arg("-t", "--time", type=int, help="seconds to wait before SIGKILL (default: the "
            "container's --stop-timeout, else 10; -1 waits for ever)"))),
    "kill": ("send a signal to a container's PID 1 (default SIGKILL)", (
        arg("container"),
        arg("signal", nargs="?", default="KILL", help="signal name or number (default KILL, as "
            "docker kill)"))),
    "rm": ("remove stopped containers", (
        arg("containers", nargs="+"),
        arg("-f", "--force", action="store_true", help="kill a running one first"))),
    "gpus": ("list the host's NVIDIA GPUs as minictr sees them", (
        arg("--json", action="store_true"),
        *GPU_ROOTS)),
    "cdi": ("CDI specs: 'cdi generate' writes one for the host's GPUs", (
        arg("action", choices=["generate"]),
        arg("--format", choices=["json", "yaml"], default="yaml"),
        arg("--output", "-o", help="file to write (default: stdout)"),
        *GPU_ROOTS)),
}


# ---------------------------------------------------------------- argparse, from the table


def add_to(parser, flags) -> None:
    """add_argument for each entry of ``flags`` on an argparse parser."""
    import argparse

    for names, kwargs in flags:
        if kwargs.get("action") == BOOLEAN_OPTIONAL:
            kwargs = dict(kwargs, action=argparse.BooleanOptionalAction)
        if kwargs.get("default") == SUPPRESS:
            kwargs = dict(kwargs, default=argparse.SUPPRESS)   # argparse tests it with `is`
        if kwargs.get("nargs") == REMAINDER:
            kwargs = dict(kwargs, nargs=argparse.REMAINDER)
        parser.add_argument(*names, **kwargs)


def command_parser(sub, name: str):
    """The subparser of command ``name`` (on argparse's ``add_subparsers()`` object), with the
    store flags every command takes after its name."""
    help_, flags = COMMANDS[name]
    p = sub.add_parser(name, help=help_, description=help_)
    add_to(p, STORE)
    add_to(p, flags)
    return p


# ---------------------------------------------------------------- the fast reader of `run`, `pull`


def dest_of(names: tuple[str, ...], kwargs: dict) -> str:
    """argparse's dest: the first long name without dashes, '-' as '_' (else the first name)."""
    if "dest" in kwargs:
        return kwargs["dest"]
    long = [n for n in names if n.startswith("--")]
    return (long or names)[0].lstrip("-").replace("-", "_")


def _options(flags) -> dict[str, tuple[str, dict]]:
    """Every option string of ``flags`` -> (dest, kwargs); BOOLEAN_OPTIONAL adds --no-NAME."""
    table = {}
    for names, kwargs in flags:
        if not names[0].startswith("-"):
            continue
        dest = dest_of(names, kwargs)
        for name in names:
            table[name] = (dest, kwargs)
            if kwargs.get("action") == BOOLEAN_OPTIONAL and name.startswith("--"):
                table["--no-" + name[2:]] = (dest, dict(kwargs, action="store_false"))
    return table


_RUN_OPTIONS = {**_options(STORE), **_options(RUN)}
_GLOBAL_OPTIONS = _options(GLOBAL)
_SWITCHES = ("store_true", "store_false", BOOLEAN_OPTIONAL)


class _Unsure(Exception):
    """A form parse_fast leaves to argparse."""


def _is_value(text: str) -> bool:
    """Would argparse take ``text`` as a plain argument rather than an option string? Only the
    sure cases: a leading '-' (a negative number, a flag) is left to argparse."""
    return not text.startswith("-") or text == "-"


def _store(ns: dict, dest: str, kwargs: dict, option: str, value: str | None) -> None:
    action = kwargs.get("action")
    if action in _SWITCHES:
        if value is not None:
            raise _Unsure(option)          # --rm=yes: argparse's error
        ns[dest] = action != "store_false"
        return
    if value is None:
        raise _Unsure(option)
    convert = kwargs.get("type")
    if convert is not None:
        try:
            value = convert(value)
        except Exception:                  # noqa: BLE001 - argparse words the error
            raise _Unsure(option) from None
    if "choices" in kwargs and value not in kwargs["choices"]:
        raise _Unsure(option)
    if action == "append":
        ns[dest].append(value)
    elif action is None:
        ns[dest] = value
    else:
        raise _Unsure(option)


def _defaults(flags) -> dict:
    ns = {}
    for names, kwargs in flags:
        if kwargs.get("default") == SUPPRESS:
            continue
        dest = dest_of(names, kwargs)
        if kwargs.get("nargs") == REMAINDER:
            ns[dest] = []
        elif kwargs.get("action") == "store_true":
            ns[dest] = kwargs.get("default", False)
        elif kwargs.get("action") == "append":
            ns[dest] = list(kwargs.get("default") or [])
        elif kwargs.get("action") != "version":
            ns[dest] = kwargs.get("default")
    return ns


def _take_options(argv: list[str], i: int, options: dict, ns: dict, stop) -> int:
    """Read options from argv[i:] into ``ns`` until ``stop(arg)`` says an argument is not an
    option; return its index. Raises _Unsure for anything but exact names, --name=value and
    clusters of one-letter switches."""
    while i < len(argv) and not stop(argv[i]):
        arg = argv[i]
        i += 1
        if arg in options:
            dest, kwargs = options[arg]
            if kwargs.get("action") == "version":
                raise _Unsure(arg)
            if kwargs.get("action") in _SWITCHES:
                _store(ns, dest, kwargs, arg, None)
            elif i < len(argv) and _is_value(argv[i]):
                _store(ns, dest, kwargs, arg, argv[i])
                i += 1
            else:
                raise _Unsure(arg)
        elif arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
            if name not in options:
                raise _Unsure(arg)
            _store(ns, *options[name], name, value)
        elif len(arg) > 2 and arg[1] != "-" and all(
                f"-{c}" in options and options[f"-{c}"][1].get("action") in _SWITCHES
                for c in arg[1:]):
            for c in arg[1:]:              # -it: -i -t
                _store(ns, *options[f"-{c}"], f"-{c}", None)
        else:
            raise _Unsure(arg)             # -h, an unknown flag, an abbreviation, -eKEY=VALUE
    return i


# commands the fast reader takes besides `run`: their arguments are options and plain
# positionals (one value each), in any order, as argparse reads them
FAST = ("pull",)
_FAST_OPTIONS = {name: {**_options(STORE), **_options(COMMANDS[name][1])} for name in FAST}


def parse_fast(argv: list[str]) -> SimpleNamespace | None:
    """``minictr [--debug] [--root DIR] [--state DIR] run [OPTIONS] IMAGE [COMMAND...]`` (and
    the commands of FAST: ``pull [OPTIONS] IMAGE [OPTIONS]``) read as argparse would (the same
    attributes, values and defaults, less ``func``), or None when argv is anything else or uses
    a form only argparse reads."""
    if "--" in argv:
        return None                        # argparse's rules for "--" are its own
    ns = _defaults(GLOBAL)
    try:
        i = _take_options(argv, 0, _GLOBAL_OPTIONS, ns, stop=_is_value)
        if i == len(argv) or (argv[i] != "run" and argv[i] not in FAST):
            return None
        ns["cmd"] = command = argv[i]
        if command != "run":
            return _parse_plain(argv, i + 1, command, ns)
        ns.update(_defaults(RUN))
        i = _take_options(argv, i + 1, _RUN_OPTIONS, ns, stop=_is_value)
    except _Unsure:
        return None
    if i == len(argv):
        return None                        # no image: argparse's error
    ns["image"], ns["command"] = argv[i], argv[i + 1:]
    return SimpleNamespace(**ns)


def _parse_plain(argv: list[str], i: int, command: str, ns: dict) -> SimpleNamespace | None:
    flags = COMMANDS[command][1]
    ns.update(_defaults(flags))
    positionals = [dest_of(names, kwargs) for names, kwargs in flags
                   if not names[0].startswith("-")]
    options = _FAST_OPTIONS[command]
    given = 0
    while True:
        i = _take_options(argv, i, options, ns, stop=_is_value)
        if i == len(argv):
            break
        if given == len(positionals):
            return None                    # one too many: argparse's error
        ns[positionals[given]] = argv[i]
        given += 1
        i += 1
    if given < len(positionals) or any(
            kwargs.get("required") and ns.get(dest_of(names, kwargs)) is None
            for names, kwargs in flags):
        return None                        # something missing: argparse's error
    return SimpleNamespace(**ns)
