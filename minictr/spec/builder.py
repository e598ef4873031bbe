"""Image config + RunOptions -> the OCI runtime spec (config.json, as a plain dict).

The result is the runtime-spec document itself (config.md, config-linux.md; camelCase keys),
so ``minictr spec`` prints exactly what ``minictr run`` executes and crun or runc can be handed
the same file. Pure: the image's files are read through ``read_file``, host files (env files,
bind sources) through ``read_host_file`` and ``host_stat``; nothing here touches the kernel.
"""
from __future__ import annotations

import os
from _collections_abc import Callable

from minictr.errors import SpecError
from minictr.records import record
from minictr.spec import defaults, mounts as mounts_mod, native, process as proc
from minictr.spec import network as netspec
from minictr.spec import security, units
from minictr.spec.edits import insert_mount
from minictr.spec.options import RunOptions
from minictr.spec.users import ExecUser, resolve_groups, resolve_user

OCI_VERSION = "1.0.2"
ReadFile = Callable[[str], "bytes | None"]
_HOST_NAME_MAX = 64
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
IMAGE_ANNOTATION_PREFIX = "org.opencontainers.image."
# image-spec conversion.md: Config.StopSignal goes to the runtime config as this annotation
STOP_SIGNAL_ANNOTATION = "org.opencontainers.image.stopSignal"
STOP_TIMEOUT_ANNOTATION = "org.minictr.stop-timeout"
LABELS_ANNOTATION = "org.minictr.labels"
DEFAULT_STOP_TIMEOUT = 10                       # seconds, as docker stop
# --init: minictr's init (native/mcinit.c) is bind-mounted here and put before the command, as
# docker does with /sbin/docker-init, so the spec itself says what runs as PID 1
INIT_PATH = "/dev/init"
ANNOTATION_NETWORK = "org.minictr.network"
ANNOTATION_PORTS = "org.minictr.ports"
# The runtime confines a process carrying this annotation to a Landlock domain scoping the
# listed IPC (runtime/landlock.py); the default network sets it (spec/network.py, DEFAULT).
ANNOTATION_LANDLOCK_SCOPE = "org.minictr.landlock.scoped"


MAX_HOST_FILE = 1 << 20     # an --env-file or a seccomp profile: text, far smaller than this


def _read_host_file(path: str) -> bytes:
    """A host file the options name: a regular file or a pipe (``--env-file <(...)``), at most
    MAX_HOST_FILE bytes. A device such as /dev/urandom would never end."""
    import errno
    import stat

    with open(path, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            kind = "a directory" if stat.S_ISDIR(mode) else "a device or socket"
            raise OSError(errno.EINVAL, f"{kind}, not a regular file")
        data = f.read(MAX_HOST_FILE + 1)
    if len(data) > MAX_HOST_FILE:
        raise OSError(errno.EFBIG, f"larger than {MAX_HOST_FILE >> 20} MiB: refused")
    return data


def build_spec(image_config: dict, opts: RunOptions, *, rootless: bool, container_id: str,
               rootfs_path: str, read_file: ReadFile,
               uid_mappings: list[dict] | None = None, gid_mappings: list[dict] | None = None,
               host_env: dict | None = None,
               read_host_file: Callable[[str], bytes] = _read_host_file,
               host_stat: Callable[[str], os.stat_result] = os.stat,
               host_ids: tuple[int, int] | None = None, host: "HostFacts | None" = None,
               launcher_caps: tuple[str, ...] | None = None, nofile_limit: int | None = None,
               etc_files: dict[str, str] | None = None, init_path: str | None = None,
               network_path: str | None = None, joined_hardened: bool = False) -> dict:
    """The whole plan. ``image_config`` is the OCI image config JSON (its "config" object holds
    Entrypoint, Cmd, Env, WorkingDir, User, Labels). ``host_env`` (default: this process's
    environment) serves ``-e KEY`` and bare keys in env files. ``host_ids`` is (euid, egid),
    default this process's, for the rootless id mapping and --userns keep-id. ``host``: the
    facts job-native mode (``opts.hpc``) takes from the host, default this process's.
    ``network_path`` is the namespace --network container:NAME joins (api resolves the name);
    ``joined_hardened`` says that NAME has the default network's hardening, which then holds
    here too (unless --privileged, as for the default itself).

    What the launcher itself can give, which api.py reads from the host: ``launcher_caps``, the
    capabilities it holds (None: any; a container in a user namespace of its own gets every
    capability there, whatever the launcher holds); ``nofile_limit``, the highest hard
    RLIMIT_NOFILE it can set (None: no ceiling). ``etc_files`` maps /etc/resolv.conf,
    /etc/hosts and /etc/hostname to the host files written for this container
    (spec/etcfiles.py); ``init_path`` is the host path of minictr's init, for --init."""
    config = image_fields(image_config)
    host_env = dict(os.environ) if host_env is None else host_env
    network = netspec.parse_network(opts.network)
    ports = netspec.parse_publish(opts.publish)
    netspec.check_publish(network, ports)
    hardened = (default_network_hardened(network, opts, host_env)
                or (joined_hardened and network.kind == "container" and not opts.privileged))
    host_ids = (os.geteuid(), os.getegid()) if host_ids is None else host_ids
    if opts.hpc:
        _check_job_native(opts)
        host = host or HostFacts.here()
        hostname = host.hostname
    else:
        hostname = container_hostname(opts.hostname, container_id)
    userns = _user_namespace(opts, rootless, uid_mappings, gid_mappings, host_ids)
    user = _exec_user(opts, config, read_file, userns, host_ids)
    if opts.hpc and userns is None:
        # root: your groups are set as they are on the host
        user = user._replace(additional_gids=tuple(g for g in host.groups if g != user.gid))
    caps = proc.capability_set(opts.cap_add, opts.cap_drop, privileged=opts.privileged,
                               available=None if userns else launcher_caps)
    if hardened and "CAP_NET_RAW" not in {proc.normalize_capability(c) for c in opts.cap_add}:
        caps = [c for c in caps if c != "CAP_NET_RAW"]
    secopts = security.parse_security_opts(opts.security_opts, read_host_file)
    args = proc.process_args(config, opts.command, opts.entrypoint)
    if opts.init:
        if init_path is None:
            raise SpecError("--init: minictr's init program was not found",
                            hint="reinstall minictr (make install builds minictr/mcinit)")
        args = [INIT_PATH, "--", *args]
    process = {
        "terminal": bool(opts.tty),
        "user": _process_user(user),
        "args": args,
        "env": proc.process_env(config, hostname=hostname, home=user.home, tty=opts.tty,
                                env_files=opts.env_files, env=opts.env, host_env=host_env,
                                read_host_file=read_host_file,
                                base_env=native.passed_environment(host_env) if opts.hpc
                                else None),
        "cwd": proc.process_cwd(opts.workdir or (host.cwd if opts.hpc else None), config),
        "capabilities": proc.process_capabilities(caps, user.uid),
        "rlimits": proc.process_rlimits(opts.ulimits, nofile_limit),
        # on by default (stricter than docker); --privileged turns it off unless
        # --security-opt no-new-privileges says otherwise
        "noNewPrivileges": (not opts.privileged if secopts.no_new_privileges is None
                            else secopts.no_new_privileges),
    }
    spec = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": rootfs_path, "readonly": bool(opts.read_only)},
        "hostname": hostname,
        "mounts": _mounts(opts, network, rootless, host_stat, host, etc_files or {},
                          init_path if opts.init else None),
        "linux": _linux(opts, container_id, userns,
                        _network_namespace(network, rootless, network_path)),
    }
    if opts.hpc:
        del spec["hostname"]                   # the host's UTS namespace: its own name
    seccomp = security.linux_seccomp(secopts, caps=caps, privileged=opts.privileged)
    if seccomp is not None:
        spec["linux"]["seccomp"] = seccomp
    annotations = _annotations(config, opts)
    # minictr's own keys: what the network is, for `ps` and for the runtime (a user's
    # --annotation cannot change them)
    for key in (ANNOTATION_NETWORK, ANNOTATION_PORTS, ANNOTATION_LANDLOCK_SCOPE):
        annotations.pop(key, None)
    if network.kind != netspec.DEFAULT:
        annotations[ANNOTATION_NETWORK] = str(network)
    if ports:
        annotations[ANNOTATION_PORTS] = ",".join(str(p) for p in ports)
    if hardened:
        annotations[ANNOTATION_LANDLOCK_SCOPE] = "abstract_unix_socket"
    if annotations:
        spec["annotations"] = annotations
    return spec


# ---------------------------------------------------------------- image config


_LIST_FIELDS = ("Entrypoint", "Cmd", "Env")
_STR_FIELDS = ("WorkingDir", "User")


def image_fields(image_config: dict) -> dict:
    """The image config's "config" object, type-checked: the image is untrusted input, and a
    string where a list belongs would otherwise be split into characters, a NUL byte would
    reach execve(2). Env entries without "=" are dropped (they are not KEY=VALUE)."""
    config = image_config.get("config") if isinstance(image_config, dict) else None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise SpecError("malformed image config: \"config\" is not an object")
    out = dict(config)
    for key in _LIST_FIELDS:
        value = config.get(key)
        if value is not None and (not isinstance(value, list) or
                                  not all(isinstance(v, str) and "\0" not in v for v in value)):
            raise SpecError(f"malformed image config: {key} must be a list of strings")
    for key in _STR_FIELDS:
        value = config.get(key)
        if value is not None and (not isinstance(value, str) or "\0" in value):
            raise SpecError(f"malformed image config: {key} must be a string")
    if config.get("Labels") is not None and not isinstance(config["Labels"], dict):
        raise SpecError("malformed image config: Labels must be an object")
    out["Env"] = [e for e in config.get("Env") or [] if "=" in e]
    return out


# ---------------------------------------------------------------- job-native mode


@record
class HostFacts:
    """What job-native mode takes from the host (spec/native.py)."""

    cwd: str
    home: str | None
    hostname: str
    groups: tuple[int, ...] = ()

    @classmethod
    def here(cls, env: dict | None = None) -> "HostFacts":
        env = os.environ if env is None else env
        try:
            cwd = os.getcwd()
        except FileNotFoundError:
            cwd = "/"
        return cls(cwd=cwd, home=env.get("HOME") or None, hostname=os.uname().nodename,
                   groups=tuple(os.getgroups()))


def _check_job_native(opts: RunOptions) -> None:
    """Options that contradict job-native mode are refused, never silently ignored."""
    for value, flag, why in ((opts.user, "-u/--user", "you are yourself inside"),
                             (opts.hostname, "--hostname", "the host's UTS namespace is kept"),
                             (opts.userns == "host" or None, "--userns host",
                              "rootless, a user namespace maps you to yourself")):
        if value:
            raise SpecError(f"{flag} cannot be combined with --hpc: {why}",
                            hint="drop the option, or run without --hpc (--no-hpc overrides a "
                                 "configured default)")


def _exists_with(host_stat):
    def exists(path: str) -> bool:
        try:
            host_stat(path)
            return True
        except OSError:
            return False
    return exists


def _is_dir_with(host_stat):
    import stat

    def is_dir(path: str) -> bool:
        try:
            return stat.S_ISDIR(host_stat(path).st_mode)
        except OSError:
            return False
    return is_dir


# ---------------------------------------------------------------- identity


def _valid_hostname(name: str) -> bool:
    """Letters, digits, '-' and '.', starting and ending with a letter or digit, at most
    HOST_NAME_MAX characters."""
    return (0 < len(name) <= _HOST_NAME_MAX and name[0] in _ALNUM and name[-1] in _ALNUM
            and all(c in _ALNUM or c in ".-" for c in name))


def container_hostname(hostname: str | None, container_id: str) -> str:
    """--hostname, else the container id's first 12 characters (docker's default)."""
    name = hostname if hostname is not None else container_id[:12]
    if not _valid_hostname(name):
        raise SpecError(f"--hostname {name!r} is not a valid host name",
                        hint="letters, digits, '-' and '.', at most 64 characters")
    return name


def _user_namespace(opts: RunOptions, rootless: bool, uid_mappings, gid_mappings,
                    host_ids) -> dict | None:
    """The uid/gid mappings of a user namespace (user_namespaces(7)), or None for none.

    Rootless needs one: by default the caller's euid/egid become 0 inside (a single-id map,
    which an unprivileged process may write itself). --userns keep-id maps the caller's ids to
    themselves, so files it creates in binds keep its ownership. Root gets a user namespace only
    when mappings are passed in.
    """
    if opts.userns == "host":
        if rootless:
            raise SpecError("--userns host needs root",
                            hint="without root a user namespace is the only way to be root "
                            "inside; drop --userns or use --userns keep-id")
        return None
    if opts.userns == "keep-id" and not rootless:
        raise SpecError("--userns keep-id is only for rootless containers",
                        hint="as root, the container's ids are the host's already")
    if not rootless and uid_mappings is None and gid_mappings is None:
        return None
    euid, egid = host_ids
    keep_id = opts.userns == "keep-id" or opts.hpc
    inside_uid, inside_gid = (euid, egid) if keep_id else (0, 0)
    return {
        "uidMappings": [dict(m) for m in uid_mappings] if uid_mappings is not None
        else [{"containerID": inside_uid, "hostID": euid, "size": 1}],
        "gidMappings": [dict(m) for m in gid_mappings] if gid_mappings is not None
        else [{"containerID": inside_gid, "hostID": egid, "size": 1}],
    }


def _mapped(value: int, mappings: list[dict]) -> bool:
    return any(m["containerID"] <= value < m["containerID"] + m["size"] for m in mappings)


def _exec_user(opts: RunOptions, config: dict, read_file: ReadFile, userns: dict | None,
               host_ids) -> ExecUser:
    """-u, else (with --userns keep-id) the caller's own ids, else the image's User."""
    spec = opts.user
    if spec is None and (opts.userns == "keep-id" or opts.hpc):
        spec = f"{host_ids[0]}:{host_ids[1]}"
    if spec is None:
        spec = config.get("User") or None
    user = resolve_user(spec, read_file)
    added = resolve_groups(opts.group_add, read_file)
    if userns is None:
        return ExecUser(user.uid, user.gid, tuple(dict.fromkeys(user.additional_gids + added)),
                        user.home, user.name)
    uids, gids = userns["uidMappings"], userns["gidMappings"]
    for kind, value, maps in (("uid", user.uid, uids), ("gid", user.gid, gids)):
        if not _mapped(value, maps):
            raise SpecError(f"{kind} {value} is not mapped in the container's user namespace",
                            hint="run as a mapped user (-u 0), or give this user subordinate "
                            "ids in /etc/subuid and /etc/subgid")
    # Supplementary groups outside the map cannot be set (setgroups(2) EINVAL); with a single
    # mapped gid the runtime must write "deny" to setgroups, so none can be set at all.
    single = sum(m["size"] for m in gids) == 1
    extra = () if single else tuple(g for g in user.additional_gids if _mapped(g, gids))
    for gid in added:
        if single or not _mapped(gid, gids):
            raise SpecError(f"--group-add: gid {gid} is not mapped in the container's user "
                            "namespace, so it cannot be a supplementary group",
                            hint="give this user subordinate ids in /etc/subgid (a single "
                            "mapped gid allows no supplementary groups at all)")
    return ExecUser(user.uid, user.gid, tuple(dict.fromkeys(extra + added)), user.home,
                    user.name)


def _process_user(user: ExecUser) -> dict:
    out = {"uid": user.uid, "gid": user.gid}
    if user.additional_gids:
        out["additionalGids"] = list(user.additional_gids)
    return out


# ---------------------------------------------------------------- mounts


def _mounts(opts: RunOptions, network: netspec.Network, rootless: bool, host_stat, host,
            etc_files: dict[str, str], init_path: str | None) -> list[dict]:
    """The default kernel filesystems, then (job-native) the host's /proc, /dev/shm and
    /dev/mqueue and binds of HOME and the current directory, /etc's per-container files, then
    user mounts; a later mount at an earlier one's destination (say --tmpfs /dev/shm:size=1g,
    -v F:/etc/hosts) replaces it."""
    shm_size = None
    if opts.shm_size is not None:
        if opts.ipc == "host":
            raise SpecError("--shm-size has no effect with --ipc host",
                            hint="with --ipc host the container uses the host's /dev/shm")
        shm_size = units.parse_bytes(opts.shm_size, "--shm-size")
        if shm_size <= 0:
            raise SpecError(f"--shm-size {opts.shm_size}: must be more than 0")
    mounts = defaults.default_mounts(rootless=rootless, private_network=network.own_namespace,
                                     privileged=opts.privileged, host_ipc=opts.ipc == "host",
                                     host_pid=opts.pid == "host", shm_size=shm_size,
                                     host_has_mqueue=opts.ipc != "host" or not rootless or
                                     _exists(host_stat, "/dev/mqueue"))
    if opts.hpc:
        mounts = native.host_namespace_mounts(mounts, _exists_with(host_stat))
        for mount in native.identity_binds(host.home, host.cwd, _is_dir_with(host_stat)):
            insert_mount(mounts, mount)
    for dest in ("/etc/resolv.conf", "/etc/hosts", "/etc/hostname"):
        if dest in etc_files:
            # docker's options: writable by the container, as the image's own file would be
            mounts.append({"destination": dest, "type": "bind", "source": etc_files[dest],
                           "options": ["rbind", "rprivate"]})
    if init_path is not None:
        mounts.append({"destination": INIT_PATH, "type": "bind", "source": init_path,
                       "options": ["bind", "ro", "nosuid", "nodev"]})
    for mount in mounts_mod.user_mounts(opts.volumes, opts.mounts, opts.tmpfs, host_stat):
        insert_mount(mounts, mount)
    return mounts


def _exists(host_stat, path: str) -> bool:
    try:
        host_stat(path)
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- linux


def default_network_hardened(network: netspec.Network, opts: RunOptions, host_env: dict) -> bool:
    """The default network outside a Slurm job (a docker-like run): the host's network
    namespace, but without CAP_NET_RAW (raw packets on the host's interfaces) and with abstract
    unix sockets scoped to the container (the host's, such as containerd-shim's or X11's, are
    out of reach: CVE-2020-15257). Inside a job (SLURM_JOB_ID) ranks in separate containers
    talk through abstract sockets (NCCL, UCX), so the host network stays as it is, as it does
    with an explicit --network host or --privileged (docs/network.md, "The default")."""
    return (network.kind == netspec.DEFAULT and not opts.privileged and not opts.hpc
            and "SLURM_JOB_ID" not in host_env)


def _network_namespace(network: netspec.Network, rootless: bool,
                       network_path: str | None) -> dict | None:
    """The linux.namespaces entry of the network: none for the host's, a new one for none
    and bridge, a path for container:NAME and ns:PATH."""
    if not network.own_namespace:
        return None
    if network.kind in ("none", "bridge"):
        return {"type": "network"}
    if rootless:
        # The launcher joins it around the clone (the child, in its new user namespace, holds
        # no capability over a namespace the host's user namespace owns: setns(2)), and an
        # unprivileged launcher may not (CAP_SYS_ADMIN in its own user namespace).
        raise SpecError(f"--network {network} needs root",
                        hint="rootless containers can share a network only through --network "
                        "bridge (pasta or slirp4netns)")
    path = network.target if network.kind == "ns" else network_path
    if not path:
        raise SpecError(f"--network {network}: the namespace's path is unknown")
    return {"type": "network", "path": path}


def _namespaces(opts: RunOptions, userns: dict | None, network: dict | None) -> list[dict]:
    """uts, mount and cgroup always; pid and ipc unless --pid host / --ipc host; network when it
    is not the host's (the default shares the host's, as HPC launchers do); user when there are
    id mappings. Job-native mode (--hpc) keeps the host's pid, ipc and uts namespaces."""
    for flag, value in (("--ipc", opts.ipc), ("--pid", opts.pid)):
        if value not in ("private", "host"):
            raise SpecError(f"{flag} {value}: minictr knows host and private",
                            hint=f"{flag} host shares the host's namespace; joining another "
                            "container's is not supported")
    host_pid = opts.pid == "host" or opts.hpc
    host_ipc = opts.ipc == "host" or opts.hpc
    out = [{"type": "user"}] if userns else []
    out += [] if host_pid else [{"type": "pid"}]
    out += [network] if network is not None else []
    kinds = ([] if host_ipc else ["ipc"]) + ([] if opts.hpc else ["uts"]) + ["mount", "cgroup"]
    return out + [{"type": k} for k in kinds]


# Namespaced sysctls a container may set (moby's ValidateSysctl): IPC ones need its own IPC
# namespace, net.* its own network namespace; every other key would change the host.
IPC_SYSCTLS = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
               "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced")


def sysctls(entries: tuple[str, ...], opts: RunOptions,
            own_network: bool = False) -> dict[str, str]:
    """--sysctl KEY=VALUE -> linux.sysctl, refusing keys that are not the container's own."""
    out = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        key = key.strip().replace("/", ".")
        if not sep or not key:
            raise SpecError(f"--sysctl {entry!r}: expected KEY=VALUE")
        if key in IPC_SYSCTLS or key.startswith("fs.mqueue."):
            if opts.ipc == "host":
                raise SpecError(f"--sysctl {key}: not allowed with --ipc host",
                                hint="it would change the host's IPC namespace")
        elif key.startswith("net."):
            if not own_network:
                raise SpecError(f"--sysctl {key}: not allowed in the host's network namespace",
                                hint="it would change the host's network settings; use "
                                "--network none or bridge for a namespace of the container's own")
        else:
            raise SpecError(f"--sysctl {key}: not a namespaced sysctl a container may set",
                            hint="allowed: " + ", ".join(IPC_SYSCTLS) +
                            ", fs.mqueue.*, net.* (with a network namespace)")
        out[key] = value
    return out


def _linux(opts: RunOptions, container_id: str, userns: dict | None,
           network: dict | None) -> dict:
    linux: dict = {"namespaces": _namespaces(opts, userns, network)}
    if userns:
        linux.update(userns)
    if opts.sysctls:
        linux["sysctl"] = sysctls(opts.sysctls, opts, own_network=network is not None)
    linux["devices"] = defaults.default_devices()
    linux["resources"] = resources(opts)
    if opts.cgroup_parent:
        linux["cgroupsPath"] = cgroups_path(opts.cgroup_parent, container_id)
    if not opts.privileged:
        linux["maskedPaths"] = list(defaults.MASKED_PATHS)
        linux["readonlyPaths"] = list(defaults.READONLY_PATHS)
    return linux


def resources(opts: RunOptions) -> dict:
    """linux.resources from the limit flags (config-linux.md "Control groups").

    --cpu-weight is cgroup v2's own scale (1-10000), which config-linux.md's cpu.shares (the
    v1 scale, 2-262144) cannot carry exactly, so it goes to ``unified["cpu.weight"]``, which
    runc and crun write verbatim on a v2 host; giving both --cpu-shares and --cpu-weight is an
    error.
    """
    res: dict = {"devices": defaults.default_device_rules(privileged=opts.privileged)}
    limit, swap = units.parse_memory(opts.memory, opts.memory_swap)
    if limit is not None:
        res["memory"] = {"limit": limit, "swap": swap}
    cpu: dict = {}
    if opts.cpu_shares is not None:
        cpu["shares"] = units.check_range(opts.cpu_shares, units.CPU_SHARES_RANGE, "--cpu-shares")
    if opts.cpus is not None:
        cpu["quota"], cpu["period"] = units.cpu_quota(opts.cpus)
    if opts.cpuset_cpus is not None:
        cpu["cpus"] = units.parse_cpuset(opts.cpuset_cpus)
    if cpu:
        res["cpu"] = cpu
    if opts.cpu_weight is not None:
        if opts.cpu_shares is not None:
            raise SpecError("--cpu-shares and --cpu-weight set the same thing",
                            hint="give one: --cpu-weight (cgroup v2 scale) or --cpu-shares")
        weight = units.check_range(opts.cpu_weight, units.CPU_WEIGHT_RANGE, "--cpu-weight")
        res["unified"] = {"cpu.weight": str(weight)}
    if opts.pids_limit is not None:
        # docker: 0 and -1 both mean unlimited; config-linux.md spells unlimited -1
        if not -1 <= opts.pids_limit <= units.MAX_PIDS:
            raise SpecError(f"--pids-limit {opts.pids_limit}: must be -1 (unlimited) to "
                            f"{units.MAX_PIDS}", hint="the kernel's pid numbers end at "
                            f"PID_MAX_LIMIT ({units.MAX_PIDS}); -1 means no limit")
        res["pids"] = {"limit": opts.pids_limit if opts.pids_limit > 0 else -1}
    return res


def cgroups_path(parent: str, container_id: str) -> str:
    """--cgroup-parent P -> "P/minictr-<id>" (relative to the runtime's cgroup when P is)."""
    parts = [p for p in parent.split("/") if p not in ("", ".")]
    if ".." in parts or "\0" in parent:
        raise SpecError(f"--cgroup-parent {parent!r} must not contain '..'")
    joined = "/".join(parts + [f"minictr-{container_id}"])
    return "/" + joined if parent.startswith("/") else joined


def _annotations(config: dict, opts: RunOptions) -> dict:
    """The image's org.opencontainers.image.* labels (podman records them); the stop signal
    (--stop-signal, else the image's StopSignal) and --stop-timeout, which `minictr stop`
    reads; the container's labels (the image's Labels, then --label); then --annotation
    KEY=VALUE entries, which win."""
    out = {k: v for k, v in (config.get("Labels") or {}).items()
           if k.startswith(IMAGE_ANNOTATION_PREFIX) and isinstance(v, str)}
    stop_signal = opts.stop_signal or config.get("StopSignal")
    if stop_signal:
        out[STOP_SIGNAL_ANNOTATION] = _check_signal(stop_signal, opts.stop_signal)
    if opts.stop_timeout is not None:
        if opts.stop_timeout < -1:
            raise SpecError(f"--stop-timeout {opts.stop_timeout}: must be -1 (wait forever) "
                            "or more")
        out[STOP_TIMEOUT_ANNOTATION] = str(opts.stop_timeout)
    labels = {k: v for k, v in (config.get("Labels") or {}).items() if isinstance(v, str)}
    for entry in opts.labels:
        key, _, value = entry.partition("=")
        if not key:
            raise SpecError(f"--label {entry!r}: expected KEY=VALUE")
        labels[key] = value
    if opts.labels:
        from minictr import jsonio

        out[LABELS_ANNOTATION] = jsonio.dumps(labels, sort_keys=True)
    for entry in opts.annotations:
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise SpecError(f"--annotation {entry!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _check_signal(text: str, given: str | None) -> str:
    """A stop signal as its name (TERM, SIGTERM) or number 1-64, checked here so that a typo
    fails at run, not at stop (runtime.state.parse_signal reads it back)."""
    from minictr import signals

    value = text.strip().upper()
    if signals.parse(value) is None:
        what = "--stop-signal" if given else "the image's StopSignal"
        raise SpecError(f"{what} {text!r} is not a signal", hint="a name such as TERM or "
                        "SIGUSR1, or a number")
    return value if value.isdecimal() or value.startswith("SIG") else "SIG" + value
