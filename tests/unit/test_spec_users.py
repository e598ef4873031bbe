"""-u USER[:GROUP] resolution through the image's passwd and group (minictr/spec/users.py)."""
import pytest

from minictr.errors import SpecError
from minictr.spec.users import parse_group, parse_passwd, resolve_user

PASSWD = b"""root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment
alice:x:1000:1000:Alice:/home/alice:/bin/sh
broken line without colons
bad:x:notanumber:1:x:/x:/bin/sh
bob:x:1001:100::/home/bob:/bin/sh
"""
GROUP = b"""root:x:0:
users:x:100:alice
wheel:x:10:alice,bob
video:x:44:bob
alice:x:1000:
oops:x:nan:alice
short:x
"""
FILES = {"/etc/passwd": PASSWD, "/etc/group": GROUP}


def read(path):
    return FILES.get(path)


def no_files(path):
    return None


@pytest.mark.parametrize("spec,uid,gid,extra,home", [
    (None, 0, 0, (), "/root"),
    ("root", 0, 0, (), "/root"),
    ("0", 0, 0, (), "/root"),
    ("alice", 1000, 1000, (100, 10), "/home/alice"),          # groups that list alice
    ("1000", 1000, 1000, (100, 10), "/home/alice"),           # numeric found in passwd
    ("bob", 1001, 100, (10, 44), "/home/bob"),
    ("alice:wheel", 1000, 10, (), "/home/alice"),             # explicit group: no supplementary
    ("alice:44", 1000, 44, (), "/home/alice"),
    ("alice:4242", 1000, 4242, (), "/home/alice"),            # numeric group not in the file
    ("4242", 4242, 0, (), "/"),                               # numeric uid, no entry: gid 0
    ("4242:4243", 4242, 4243, (), "/"),
    (":100", 0, 100, (), "/root"),
    ("daemon", 1, 1, (), "/usr/sbin"),
])
def test_resolve_user(spec, uid, gid, extra, home):
    user = resolve_user(spec, read)
    assert (user.uid, user.gid, user.additional_gids, user.home) == (uid, gid, extra, home)


@pytest.mark.parametrize("spec,uid,gid,home", [
    (None, 0, 0, "/root"), ("0", 0, 0, "/root"), ("1000", 1000, 0, "/"),
    ("1000:1000", 1000, 1000, "/"),
])
def test_resolve_user_without_passwd(spec, uid, gid, home):
    user = resolve_user(spec, no_files)
    assert (user.uid, user.gid, user.additional_gids, user.home) == (uid, gid, (), home)


@pytest.mark.parametrize("spec,reader,message", [
    ("nobody", read, "unable to find user nobody: no matching entries in passwd file"),
    ("alice", no_files, "unable to find user alice: no matching entries in passwd file"),
    ("alice:staff", read, "unable to find group staff: no matching entries in group file"),
    ("1000:staff", no_files, "unable to find group staff"),
    ("99999999999", read, "out of range"),
    ("bad", read, "unable to find user bad"),       # a malformed line is never trusted
])
def test_resolve_user_errors(spec, reader, message):
    with pytest.raises(SpecError, match=message):
        resolve_user(spec, reader)


def test_parse_skips_malformed_lines():
    assert [e.name for e in parse_passwd(PASSWD)] == ["root", "daemon", "alice", "bob"]
    assert [g.name for g in parse_group(GROUP)] == ["root", "users", "wheel", "video", "alice"]
    assert parse_group(GROUP)[2].members == ("alice", "bob")
    assert parse_passwd(None) == [] and parse_passwd(b"\xff\xfe:junk") == []
