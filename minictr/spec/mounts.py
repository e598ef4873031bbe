"""User mounts: -v, --mount and --tmpfs, parsed as docker parses them, into config.md mounts.

Every destination is checked by ``check_destination``: absolute, and with no ``..`` component.
A ``..`` is refused, not normalised away: containerd CVE-2022-23648 and runc CVE-2021-30465 both
came from destination paths that were resolved somewhere other than where they were checked.
The runtime still resolves each destination inside the rootfs without following symlinks out.
"""
from __future__ import annotations

import os
from _collections_abc import Callable

from minictr.errors import SpecError
from minictr.spec.units import parse_bytes

Stat = Callable[[str], os.stat_result]

# runc's checkProcMount allows these under /proc (lxcfs binds them); everything else is refused.
PROC_ALLOWED = ("/proc/cpuinfo", "/proc/diskstats", "/proc/meminfo", "/proc/stat",
                "/proc/swaps", "/proc/uptime", "/proc/loadavg", "/proc/slabinfo",
                "/proc/net/dev", "/proc/sys/kernel/ns_last_pid")
PROPAGATIONS = ("private", "rprivate", "shared", "rshared", "slave", "rslave")
TMPFS_BASE = ("noexec", "nosuid", "nodev")          # docker's --tmpfs defaults
# mount(8) flags that come in opposite pairs: the later one of a pair wins
_FLAG_PAIRS = {"exec": "noexec", "suid": "nosuid", "dev": "nodev", "rw": "ro",
               "atime": "noatime", "diratime": "nodiratime", "relatime": "norelatime",
               "strictatime": "nostrictatime", "sync": "async", "mand": "nomand"}
_OPPOSITE = {**_FLAG_PAIRS, **{v: k for k, v in _FLAG_PAIRS.items()}}
_TMPFS_KEYS = ("size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "mpol", "huge")


def check_destination(path: str, what: str = "mount") -> str:
    """An absolute container path with no ``..`` component, returned normalised ("//a/./b/" ->
    "/a/b")."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise SpecError(f"{what} destination {path!r} must be an absolute path")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SpecError(f"{what} destination {path!r} contains '..'",
                        hint="name the destination without '..' (containerd CVE-2022-23648)")
    return "/" + "/".join(parts)


def check_user_destination(dest: str, what: str) -> str:
    """Refuse mounts over /, /proc, /sys, and inside /proc (except runc's list), as runc does:
    they would hide the container's root or bypass masked and read-only /proc paths."""
    dest = check_destination(dest, what)
    if dest in ("/", "/proc", "/sys") or (dest.startswith("/proc/") and
                                          dest not in PROC_ALLOWED):
        raise SpecError(f"{what} over {dest} is not allowed",
                        hint="mount somewhere else; /, /proc and /sys belong to the runtime")
    return dest


def _bind(source: str, dest: str, *, readonly: bool, propagation: str = "rprivate",
          recursive: bool = True) -> dict:
    options = ["rbind" if recursive else "bind", propagation] + (["ro"] if readonly else [])
    return {"destination": dest, "type": "bind", "source": source, "options": options}


def _check_source(source: str, host_stat: Stat, what: str) -> str:
    if not source.startswith("/"):
        raise SpecError(f"{what}: named volumes are not supported ({source!r})",
                        hint="give an absolute host path, e.g. -v \"$PWD/data:/data\"")
    try:
        host_stat(source)
    except OSError as err:
        raise SpecError(f"{what}: bind source path does not exist: {source}") from err
    return os.path.normpath(source)


# -v options docker accepts that mean nothing for a bind on Linux: accepted and ignored.
# z/Z ask for SELinux relabeling (minictr applies no label); cached/delegated are Docker
# Desktop's file-sharing hints; nocopy concerns named volumes, which minictr does not have.
IGNORED_VOLUME_OPTIONS = ("z", "Z", "cached", "delegated", "consistent", "nocopy")


def parse_volume(text: str, host_stat: Stat) -> dict:
    """-v SRC:DST[:OPTS], OPTS a comma list of ro|rw, a propagation mode, or one of
    IGNORED_VOLUME_OPTIONS."""
    parts = text.split(":")
    if len(parts) == 1:
        raise SpecError(f"-v {text}: anonymous volumes are not supported",
                        hint="bind a host directory: -v /host/dir:/container/dir")
    if len(parts) > 3:
        raise SpecError(f"-v {text}: expected SRC:DST[:OPTIONS]")
    source = _check_source(parts[0], host_stat, f"-v {text}")
    dest = check_user_destination(parts[1], f"-v {text}")
    readonly, propagation = False, "rprivate"
    for opt in (parts[2].split(",") if len(parts) == 3 else []):
        if opt in ("ro", "rw"):
            readonly = opt == "ro"
        elif opt in PROPAGATIONS:
            propagation = opt
        elif opt not in IGNORED_VOLUME_OPTIONS:
            raise SpecError(f"-v {text}: unknown option {opt!r}",
                            hint="options are ro, rw, or a propagation mode such as rslave")
    return _bind(source, dest, readonly=readonly, propagation=propagation)


def _bool(value: str, text: str) -> bool:
    if value.lower() in ("", "1", "true"):
        return True
    if value.lower() in ("0", "false"):
        return False
    raise SpecError(f"--mount {text}: invalid boolean {value!r}")


def parse_mount(text: str, host_stat: Stat) -> dict:
    """--mount type=bind,src=,dst=[,ro][,bind-propagation=][,bind-nonrecursive] or
    type=tmpfs,dst=[,tmpfs-size=][,tmpfs-mode=]; a CSV line, as docker reads it."""
    import csv          # here: csv imports re (~4 ms of a start); only --mount needs it

    fields: dict[str, str] = {}
    for field in next(csv.reader([text])):
        key, _, value = field.partition("=")
        key = {"src": "source", "dst": "destination", "target": "destination",
               "ro": "readonly"}.get(key.strip().lower(), key.strip().lower())
        fields[key] = value
    kind = fields.pop("type", "volume")
    readonly = _bool(fields.pop("readonly", "false"), text)
    if "destination" not in fields:
        raise SpecError(f"--mount {text}: a destination (dst=) is needed")
    dest = check_user_destination(fields.pop("destination"), f"--mount {text}")
    fields.pop("consistency", None)           # a Docker Desktop hint, meaningless on Linux
    if kind == "bind":
        if "source" not in fields:
            raise SpecError(f"--mount {text}: a bind needs src=")
        source = _check_source(fields.pop("source"), host_stat, f"--mount {text}")
        propagation = fields.pop("bind-propagation", "rprivate")
        if propagation not in PROPAGATIONS:
            raise SpecError(f"--mount {text}: unknown bind-propagation {propagation!r}")
        recursive = not _bool(fields.pop("bind-nonrecursive", "false"), text)
        mount = _bind(source, dest, readonly=readonly, propagation=propagation,
                      recursive=recursive)
    elif kind == "tmpfs":
        if "source" in fields:
            raise SpecError(f"--mount {text}: a tmpfs takes no src=")
        options = list(TMPFS_BASE)
        if "tmpfs-size" in fields:
            options.append(f"size={parse_bytes(fields.pop('tmpfs-size'), '--mount tmpfs-size')}")
        if "tmpfs-mode" in fields:
            options.append(f"mode={_octal_mode(fields.pop('tmpfs-mode'), text)}")
        mount = {"destination": dest, "type": "tmpfs", "source": "tmpfs",
                 "options": options + (["ro"] if readonly else [])}
    else:
        raise SpecError(f"--mount {text}: type {kind!r} is not supported",
                        hint="use type=bind,src=/abs/path,dst=/path or type=tmpfs,dst=/path")
    if fields:
        raise SpecError(f"--mount {text}: unknown key {sorted(fields)[0]!r} for type={kind}")
    return mount


def _octal_mode(value: str, text: str) -> str:
    try:
        mode = int(value, 8)
    except ValueError as err:
        raise SpecError(f"--mount {text}: tmpfs-mode must be octal, e.g. 1777") from err
    if mode > 0o7777:
        raise SpecError(f"--mount {text}: tmpfs-mode {value} is out of range")
    return f"{mode:o}"


def merge_tmpfs_options(options: list[str], what: str) -> list[str]:
    """Docker's MergeTmpfsOptions: a flag replaces its opposite, KEY=VALUE replaces the same
    KEY; unknown options are refused (a typo would otherwise reach mount(2) as EINVAL)."""
    out: list[str] = []
    for opt in options:
        key, sep, _ = opt.partition("=")
        if sep:
            if key not in _TMPFS_KEYS:
                raise SpecError(f"{what}: unknown tmpfs option {opt!r}")
            out = [o for o in out if o.partition("=")[0] != key]
        elif opt in _OPPOSITE or opt in ("dirsync", "tmpcopyup"):
            out = [o for o in out if o not in (opt, _OPPOSITE.get(opt))]
        else:
            raise SpecError(f"{what}: unknown tmpfs option {opt!r}")
        out.append(opt)
    return out


def parse_tmpfs(text: str) -> dict:
    """--tmpfs DST[:OPTS], OPTS a comma list of mount(8) tmpfs options, merged over docker's
    defaults noexec,nosuid,nodev."""
    dest, _, opts = text.partition(":")
    dest = check_user_destination(dest, f"--tmpfs {text}")
    user = [o.strip() for o in opts.split(",") if o.strip()]
    options = merge_tmpfs_options(list(TMPFS_BASE) + user, f"--tmpfs {text}")
    return {"destination": dest, "type": "tmpfs", "source": "tmpfs", "options": options}


def user_mounts(volumes, mounts, tmpfs, host_stat: Stat) -> list[dict]:
    """All user mounts, sorted by destination depth (stable, as docker's sortMounts) so a parent
    is mounted before its children; a destination used twice is an error."""
    result = ([parse_volume(v, host_stat) for v in volumes]
              + [parse_mount(m, host_stat) for m in mounts]
              + [parse_tmpfs(t) for t in tmpfs])
    seen: set[str] = set()
    for m in result:
        if m["destination"] in seen:
            raise SpecError(f"duplicate mount point: {m['destination']}")
        seen.add(m["destination"])
    return sorted(result, key=lambda m: m["destination"].count("/"))
