"""User-namespace id maps (user_namespaces(7), "User and group ID mappings").

A new user namespace starts with no mapping: its processes run as the overflow id (65534) until a
process in the parent namespace writes /proc/PID/uid_map and gid_map, once each. An unprivileged
writer may map exactly one id, its own; and before it may write gid_map it must write "deny" to
/proc/PID/setgroups (since Linux 3.19), so that the mapped process cannot drop supplementary groups
to escape a "negative" group permission. For a range (/etc/subuid, /etc/subgid) the setuid
helpers newuidmap/newgidmap (Debian's `uidmap`) check the ranges and write the maps for us.
"""
from __future__ import annotations

import os
import pwd
from _collections_abc import Callable

from minictr.errors import RuntimeSetupError

Explain = Callable[[str], None] | None


def subordinate_range(path: str, user: str, uid: int) -> tuple[int, int] | None:
    """The first "name:start:count" (or "uid:start:count") range for this user in subuid(5)."""
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in (user, str(uid)):
                    return int(parts[1]), int(parts[2])
    except (OSError, ValueError):
        return None
    return None


def rootless_mappings(mode: str | None = None, *, uid: int | None = None, gid: int | None = None,
                      subuid: str = "/etc/subuid", subgid: str = "/etc/subgid",
                      have_helpers: bool | None = None) -> tuple[list[dict], list[dict]]:
    """The uid/gid maps for a rootless container, as OCI linux.uidMappings / gidMappings.

    Default: the user is root inside (container 0 → host uid). With subordinate ids and the
    newuidmap/newgidmap helpers, ids 1..count map to the subordinate range, so files owned by
    other users in the image keep distinct owners. keep-id: the user keeps its own uid inside
    (with a range, 0 is then mapped to a subordinate id).
    """
    uid = os.geteuid() if uid is None else uid
    gid = os.getegid() if gid is None else gid
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    if have_helpers is None:
        have_helpers = bool(which("newuidmap") and which("newgidmap"))
    ranges = None
    if have_helpers:
        su, sg = subordinate_range(subuid, user, uid), subordinate_range(subgid, user, uid)
        if su and sg:
            ranges = (su, sg)
    if mode == "keep-id":
        if not ranges:
            return ([{"containerID": uid, "hostID": uid, "size": 1}],
                    [{"containerID": gid, "hostID": gid, "size": 1}])
        return _keep_id_with_range(uid, ranges[0]), _keep_id_with_range(gid, ranges[1])
    if not ranges:
        return ([{"containerID": 0, "hostID": uid, "size": 1}],
                [{"containerID": 0, "hostID": gid, "size": 1}])
    (us, uc), (gs, gc) = ranges
    return ([{"containerID": 0, "hostID": uid, "size": 1},
             {"containerID": 1, "hostID": us, "size": uc}],
            [{"containerID": 0, "hostID": gid, "size": 1},
             {"containerID": 1, "hostID": gs, "size": gc}])


def _keep_id_with_range(own: int, rng: tuple[int, int]) -> list[dict]:
    start, count = rng
    maps = [{"containerID": own, "hostID": own, "size": 1}]
    below = min(own, count)
    if below:
        maps.append({"containerID": 0, "hostID": start, "size": below})
    if count > below:
        maps.append({"containerID": own + 1, "hostID": start + below, "size": count - below})
    return maps


def _map_text(maps: list[dict]) -> str:
    return "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in maps)


def write_id_maps(kernel, pid: int, uid_maps: list[dict], gid_maps: list[dict],
                  explain: Explain) -> None:
    """Write the child's maps from the parent namespace (we are the parent), through the
    syscall face (a dry run records the writes and the helpers)."""
    single = len(uid_maps) == 1 and len(gid_maps) == 1 and uid_maps[0]["size"] == 1 \
        and uid_maps[0]["hostID"] == os.geteuid() and gid_maps[0]["hostID"] == os.getegid()
    if os.geteuid() == 0 or single:
        if os.geteuid() != 0:
            # setgroups must say "deny" before gid_map can be written (user_namespaces(7))
            _write(kernel, f"/proc/{pid}/setgroups", "deny\n", explain)
        _write(kernel, f"/proc/{pid}/uid_map", _map_text(uid_maps), explain)
        _write(kernel, f"/proc/{pid}/gid_map", _map_text(gid_maps), explain)
        return
    programs = []
    for helper, maps in (("newuidmap", uid_maps), ("newgidmap", gid_maps)):
        args = [helper, str(pid)] + [str(v) for m in maps
                                     for v in (m["containerID"], m["hostID"], m["size"])]
        if explain:
            explain(" ".join(args))
        path = which(helper)
        if path is None:
            raise RuntimeSetupError(f"{helper} is not installed",
                                    hint="apt-get install uidmap, or use a single-id mapping")
        programs.append((path, args, [f"PATH={os.defpath}"], b""))
    # side by side: each writes its own file of /proc/PID, and neither needs the other's map
    for (_, (helper, *_), _, _), (code, output) in zip(programs,
                                                      kernel.run_programs(programs, 30)):
        if code != 0:
            raise RuntimeSetupError(f"{helper} failed: {output.decode(errors='replace').strip()}",
                                    hint="check /etc/subuid and /etc/subgid for your user")


def which(name: str) -> str | None:
    """shutil.which(name): the first executable file NAME in $PATH (os.defpath without one),
    without importing shutil (it imports re, zlib, bz2 and lzma: ~3 ms of a rootless start)."""
    path = os.environ.get("PATH")
    for directory in (os.defpath if path is None else path).split(os.pathsep):
        candidate = os.path.join(directory or os.curdir, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _write(kernel, path: str, text: str, explain: Explain) -> None:
    if explain:
        explain(f"write {text.strip()!r} > {path}")
    kernel.write_file(path, text)


def setup_mappings(uid_maps: list[dict], gid_maps: list[dict]):
    """How the runtime realises a user namespace whose one mapped id is not root (rootless
    ``keep-id`` without subordinate ids: your uid to itself).

    Mapped to yourself, the container's setup could not create a mount point in a directory
    the image's root owns: that owner is not mapped, so no capability applies to it
    (capabilities(7), "Effect of user ID changes"... and user_namespaces(7): a capability
    applies to an inode only if its owner is mapped). So setup runs as root of a namespace
    mapping 0 to you, and at the end the process enters a nested user namespace mapping your
    id to that root (``nest_user_namespace``): the ids it ends with are exactly the spec's.
    Returns (uid maps, gid maps, (uid, gid) to nest as, or None)."""
    if (len(uid_maps) == 1 and len(gid_maps) == 1 and uid_maps[0]["size"] == 1
            and gid_maps[0]["size"] == 1
            and (uid_maps[0]["containerID"] != 0 or gid_maps[0]["containerID"] != 0)):
        return ([{"containerID": 0, "hostID": uid_maps[0]["hostID"], "size": 1}],
                [{"containerID": 0, "hostID": gid_maps[0]["hostID"], "size": 1}],
                (uid_maps[0]["containerID"], gid_maps[0]["containerID"]))
    return uid_maps, gid_maps, None


def nest_user_namespace(kernel, uid: int, gid: int, explain: Explain) -> None:
    """Enter a new user namespace in which ``uid``/``gid`` are this process's root ids
    (see setup_mappings). A process may write its own maps when they map only its own ids
    in the parent namespace; setgroups must say "deny" first (user_namespaces(7))."""
    from minictr.runtime import syscalls as sc

    if explain:
        explain(f"unshare(CLONE_NEWUSER)  (nested: setup ran as root mapped to you; from here "
                f"you are {uid}:{gid})")
    kernel.unshare(sc.CLONE_NEWUSER)
    _write(kernel, "/proc/self/setgroups", "deny\n", explain)
    _write(kernel, "/proc/self/uid_map", f"{uid} 0 1\n", explain)
    _write(kernel, "/proc/self/gid_map", f"{gid} 0 1\n", explain)
