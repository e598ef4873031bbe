"""Image config + RunOptions -> the OCI runtime spec (config.json, as a plain dict).

The result is the runtime-spec document itself (config.md, config-linux.md; camelCase keys),
so ``minictr spec`` prints exactly what ``minictr run`` executes and crun or runc can be handed
the same file. Pure: the image's files are read through ``read_file``, host files (env files,
bind sources) through ``read_host_file`` and ``host_stat``; nothing here touches the kernel.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable

from minictr.errors import SpecError
from minictr.spec import defaults, mounts as mounts_mod, process as proc
from minictr.spec import security, units
from minictr.spec.edits import insert_mount
from minictr.spec.options import RunOptions
from minictr.spec.users import ExecUser, resolve_user

OCI_VERSION = "1.0.2"
ReadFile = Callable[[str], "bytes | None"]
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,62}[A-Za-z0-9])?$")   # HOST_NAME_MAX 64
IMAGE_ANNOTATION_PREFIX = "org.opencontainers.image."


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
               host_ids: tuple[int, int] | None = None) -> dict:
    """The whole plan. ``image_config`` is the OCI image config JSON (its "config" object holds
    Entrypoint, Cmd, Env, WorkingDir, User, Labels). ``host_env`` (default: this process's
    environment) serves ``-e KEY`` and bare keys in env files. ``host_ids`` is (euid, egid),
    default this process's, for the rootless id mapping and --userns keep-id."""
    config = image_fields(image_config)
    host_env = dict(os.environ) if host_env is None else host_env
    host_ids = (os.geteuid(), os.getegid()) if host_ids is None else host_ids
    hostname = _hostname(opts.hostname, container_id)
    userns = _user_namespace(opts, rootless, uid_mappings, gid_mappings, host_ids)
    user = _exec_user(opts, config, read_file, userns, host_ids)
    caps = proc.capability_set(opts.cap_add, opts.cap_drop, privileged=opts.privileged)
    secopts = security.parse_security_opts(opts.security_opts, read_host_file)
    process = {
        "terminal": bool(opts.tty),
        "user": _process_user(user),
        "args": proc.process_args(config, opts.command, opts.entrypoint),
        "env": proc.process_env(config, hostname=hostname, home=user.home, tty=opts.tty,
                                env_files=opts.env_files, env=opts.env, host_env=host_env,
                                read_host_file=read_host_file),
        "cwd": proc.process_cwd(opts.workdir, config),
        "capabilities": proc.process_capabilities(caps, user.uid),
        "rlimits": proc.process_rlimits(opts.ulimits),
        "noNewPrivileges": secopts.no_new_privileges,
    }
    spec = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": rootfs_path, "readonly": bool(opts.read_only)},
        "hostname": hostname,
        "mounts": _mounts(opts, rootless, host_stat),
        "linux": _linux(opts, container_id, userns),
    }
    seccomp = security.linux_seccomp(secopts, caps=caps, privileged=opts.privileged)
    if seccomp is not None:
        spec["linux"]["seccomp"] = seccomp
    annotations = _annotations(config, opts.annotations)
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


# ---------------------------------------------------------------- identity


def _hostname(hostname: str | None, container_id: str) -> str:
    name = hostname if hostname is not None else container_id[:12]
    if not _HOSTNAME.match(name):
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
    inside_uid, inside_gid = (euid, egid) if opts.userns == "keep-id" else (0, 0)
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
    if spec is None and opts.userns == "keep-id":
        spec = f"{host_ids[0]}:{host_ids[1]}"
    if spec is None:
        spec = config.get("User") or None
    user = resolve_user(spec, read_file)
    if userns is None:
        return user
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
    return ExecUser(user.uid, user.gid, extra, user.home, user.name)


def _process_user(user: ExecUser) -> dict:
    out = {"uid": user.uid, "gid": user.gid}
    if user.additional_gids:
        out["additionalGids"] = list(user.additional_gids)
    return out


# ---------------------------------------------------------------- mounts


def _mounts(opts: RunOptions, rootless: bool, host_stat) -> list[dict]:
    """The default kernel filesystems, then user mounts; a user mount at a default's
    destination (say --tmpfs /dev/shm:size=1g) replaces it."""
    mounts = defaults.default_mounts(rootless=rootless, private_network=opts.network == "none",
                                     privileged=opts.privileged)
    for mount in mounts_mod.user_mounts(opts.volumes, opts.mounts, opts.tmpfs, host_stat):
        insert_mount(mounts, mount)
    return mounts


# ---------------------------------------------------------------- linux


def _namespaces(opts: RunOptions, userns: dict | None) -> list[dict]:
    """pid, ipc, uts, mount and cgroup always; network only with --network none (the default
    shares the host's, as HPC launchers do); user when there are id mappings."""
    kinds = ["user"] if userns else []
    kinds += ["pid"] + (["network"] if opts.network == "none" else [])
    kinds += ["ipc", "uts", "mount", "cgroup"]
    return [{"type": k} for k in kinds]


def _linux(opts: RunOptions, container_id: str, userns: dict | None) -> dict:
    linux: dict = {"namespaces": _namespaces(opts, userns)}
    if userns:
        linux.update(userns)
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


def _annotations(config: dict, entries: tuple[str, ...]) -> dict:
    """The image's org.opencontainers.image.* labels (podman records them), then
    --annotation KEY=VALUE entries, which win."""
    out = {k: v for k, v in (config.get("Labels") or {}).items()
           if k.startswith(IMAGE_ANNOTATION_PREFIX) and isinstance(v, str)}
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise SpecError(f"--annotation {entry!r}: expected KEY=VALUE")
        out[key] = value
    return out
