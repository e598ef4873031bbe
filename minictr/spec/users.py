"""Resolve `-u USER[:GROUP]` through the image's /etc/passwd and /etc/group, as docker does.

This follows moby/sys/user ``GetExecUser`` (what docker and runc use):

- USER is a name (matched against passwd names) or a number (matched against uids). A name with
  no entry is an error; a number with no entry is used as it is, with gid 0 and home "/".
- GROUP, when given, is a name or a number, the same way; it replaces the passwd gid and then
  no supplementary groups are added ("explicit group -> no supplementary").
- Without GROUP, every /etc/group entry that lists the user's name gives a supplementary gid.

The files are the image's (passwd(5), group(5)), read through ``read_file``; they are untrusted
input, so malformed lines are skipped, never trusted partially.
"""
from __future__ import annotations

from minictr.records import record
from _collections_abc import Callable

from minictr.errors import SpecError

ReadFile = Callable[[str], "bytes | None"]
MAX_ID = 2**31 - 1     # ids are uid_t, and docker refuses anything above int32


@record
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@record
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


@record
class ExecUser:
    """Who the container's process runs as: process.user plus the HOME the shell expects."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    home: str
    name: str | None = None


def _lines(data: bytes | None) -> list[list[str]]:
    if not data:
        return []
    text = data.decode("utf-8", errors="replace")
    return [line.split(":") for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _id(text: str) -> int | None:
    """A decimal id in 0..2^31-1, else None."""
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def parse_passwd(data: bytes | None) -> list[PasswdEntry]:
    """passwd(5): name:password:uid:gid:gecos:home:shell; lines that do not parse are skipped."""
    entries = []
    for fields in _lines(data):
        if len(fields) < 4:
            continue
        uid, gid = _id(fields[2]), _id(fields[3])
        if uid is None or gid is None:
            continue
        home = fields[5] if len(fields) > 5 else ""
        entries.append(PasswdEntry(fields[0], uid, gid, home))
    return entries


def parse_group(data: bytes | None) -> list[GroupEntry]:
    """group(5): name:password:gid:member,member; lines that do not parse are skipped."""
    entries = []
    for fields in _lines(data):
        if len(fields) < 3:
            continue
        gid = _id(fields[2])
        if gid is None:
            continue
        members = tuple(m.strip() for m in fields[3].split(",") if m.strip()) \
            if len(fields) > 3 else ()
        entries.append(GroupEntry(fields[0], gid, members))
    return entries


def _numeric(text: str, what: str) -> int | None:
    """``text`` as an id if it is all digits; digits out of range are an error, not a name."""
    if text.isascii() and text.isdigit():
        value = _id(text)
        if value is None:
            raise SpecError(f"{what} id {text} is out of range (0..{MAX_ID})")
        return value
    return None


def _find_user(user_arg: str, passwd: list[PasswdEntry]) -> PasswdEntry | None:
    uid = _numeric(user_arg, "user")
    for entry in passwd:
        if (entry.uid == uid) if uid is not None else (entry.name == user_arg):
            return entry
    if uid is None:
        raise SpecError(f"unable to find user {user_arg}: no matching entries in passwd file",
                        hint="use a numeric uid[:gid], or a user that the image's /etc/passwd has")
    return None


def _find_group(group_arg: str, groups: list[GroupEntry]) -> int:
    gid = _numeric(group_arg, "group")
    for entry in groups:
        if (entry.gid == gid) if gid is not None else (entry.name == group_arg):
            return entry.gid
    if gid is None:
        raise SpecError(f"unable to find group {group_arg}: no matching entries in group file",
                        hint="use a numeric gid, or a group that the image's /etc/group has")
    return gid


def resolve_user(spec: str | None, read_file: ReadFile) -> ExecUser:
    """USER[:GROUP] (or None: root) -> uid, gid, supplementary gids and home directory.

    The home of a user with no passwd entry is "/root" for uid 0 and "/" otherwise (docker's
    default is "/"; a root shell without passwd still expects /root).
    """
    user_arg, _, group_arg = (spec or "").partition(":")
    passwd = parse_passwd(read_file("/etc/passwd"))
    entry = _find_user(user_arg, passwd) if user_arg else _root_entry(passwd)
    if entry is not None:
        uid, gid, home, name = entry.uid, entry.gid, entry.home or "/", entry.name
    else:
        uid, gid, name = _numeric(user_arg, "user") or 0, 0, None
        home = "/root" if uid == 0 else "/"
    extra: tuple[int, ...] = ()
    if group_arg or name is not None:
        groups = parse_group(read_file("/etc/group"))
        if group_arg:
            gid = _find_group(group_arg, groups)
        else:
            extra = tuple(dict.fromkeys(g.gid for g in groups if name in g.members))
    return ExecUser(uid=uid, gid=gid, additional_gids=extra, home=home, name=name)


def _root_entry(passwd: list[PasswdEntry]) -> PasswdEntry | None:
    """No USER given means uid 0, looked up like a numeric USER."""
    return next((e for e in passwd if e.uid == 0), None)


def resolve_groups(groups, read_file: ReadFile) -> tuple[int, ...]:
    """--group-add GROUP...: each a name in the image's /etc/group or a gid, as docker resolves
    them (a name with no entry is an error, a number is used as it is)."""
    if not groups:
        return ()
    entries = parse_group(read_file("/etc/group"))
    return tuple(dict.fromkeys(_find_group(g, entries) for g in groups))
