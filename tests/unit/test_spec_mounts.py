"""-v, --mount, --tmpfs and destination checks (minictr/spec/mounts.py)."""
import os

import pytest

from minictr.errors import SpecError
from minictr.spec import mounts

EXISTING = {"/data", "/srv/www", "/host/dev"}


def fake_stat(path):
    if path.rstrip("/") in EXISTING or path == "/":
        return os.stat_result((0o40755, 0, 0, 1, 0, 0, 0, 0, 0, 0))
    raise FileNotFoundError(2, "No such file or directory", path)


@pytest.mark.parametrize("path,expected", [
    ("/a", "/a"), ("//a///b/", "/a/b"), ("/a/./b", "/a/b"), ("/", "/"), ("/a/b..c", "/a/b..c"),
    ("/...", "/..."),
])
def test_check_destination(path, expected):
    assert mounts.check_destination(path) == expected


@pytest.mark.parametrize("path,match", [
    ("a", "absolute"), ("", "absolute"), ("/a\0b", "absolute"),
    ("/a/../etc", r"'\.\.'"), ("/..", r"'\.\.'"), ("/a/b/..", r"'\.\.'"),
    ("/../../../../etc/shadow", r"'\.\.'"),
])
def test_check_destination_rejects(path, match):
    with pytest.raises(SpecError, match=match) as err:
        mounts.check_destination(path)
    if ".." in path:
        assert "CVE-2022-23648" in err.value.hint


@pytest.mark.parametrize("text,expected", [
    ("/data:/d", {"destination": "/d", "type": "bind", "source": "/data",
                  "options": ["rbind", "rprivate"]}),
    ("/data:/d:ro", {"destination": "/d", "type": "bind", "source": "/data",
                     "options": ["rbind", "rprivate", "ro"]}),
    ("/data:/d:rw", {"destination": "/d", "type": "bind", "source": "/data",
                     "options": ["rbind", "rprivate"]}),
    ("/data/:/d//x/:ro,rslave", {"destination": "/d/x", "type": "bind", "source": "/data",
                                 "options": ["rbind", "rslave", "ro"]}),
    ("/data:/d:z", {"destination": "/d", "type": "bind", "source": "/data",
                    "options": ["rbind", "rprivate"]}),
    # docker's no-ops for a bind on Linux (Docker Desktop hints, named-volume copying)
    ("/data:/d:cached", {"destination": "/d", "type": "bind", "source": "/data",
                         "options": ["rbind", "rprivate"]}),
    ("/data:/d:ro,delegated,nocopy", {"destination": "/d", "type": "bind", "source": "/data",
                                      "options": ["rbind", "rprivate", "ro"]}),
    ("/data:/proc/meminfo:ro", {"destination": "/proc/meminfo", "type": "bind",
                                "source": "/data", "options": ["rbind", "rprivate", "ro"]}),
    ("/host/dev:/dev", {"destination": "/dev", "type": "bind", "source": "/host/dev",
                        "options": ["rbind", "rprivate"]}),
])
def test_parse_volume(text, expected):
    assert mounts.parse_volume(text, fake_stat) == expected


@pytest.mark.parametrize("text,match", [
    ("myvol:/d", "named volumes are not supported"),
    ("./data:/d", "named volumes are not supported"),
    ("/d", "anonymous volumes"),
    ("/missing:/d", "bind source path does not exist: /missing"),
    ("/data:d", "must be an absolute path"),
    ("/data:/d/../../etc", r"'\.\.'"),
    ("/data:/", "over / is not allowed"),
    ("/data:/proc", "over /proc is not allowed"),
    ("/data:/proc/sys/kernel", "over /proc/sys/kernel is not allowed"),
    ("/data:/sys", "over /sys is not allowed"),
    ("/data://sys/", "over /sys is not allowed"),
    ("/data:/d:rx", "unknown option 'rx'"),
    ("/data:/d:ro:x", "expected SRC:DST"),
])
def test_parse_volume_rejects(text, match):
    with pytest.raises(SpecError, match=match):
        mounts.parse_volume(text, fake_stat)


def test_named_volume_hint():
    with pytest.raises(SpecError) as err:
        mounts.parse_volume("cache:/cache", fake_stat)
    assert "absolute host path" in err.value.hint


@pytest.mark.parametrize("text,expected", [
    ("type=bind,src=/data,dst=/d", {"destination": "/d", "type": "bind", "source": "/data",
                                   "options": ["rbind", "rprivate"]}),
    ("type=bind,source=/data,target=/d,readonly",
     {"destination": "/d", "type": "bind", "source": "/data",
      "options": ["rbind", "rprivate", "ro"]}),
    ("type=bind,src=/data,destination=/d,ro=true,bind-propagation=rshared",
     {"destination": "/d", "type": "bind", "source": "/data",
      "options": ["rbind", "rshared", "ro"]}),
    ("type=bind,src=/data,dst=/d,ro=false,bind-nonrecursive",
     {"destination": "/d", "type": "bind", "source": "/data", "options": ["bind", "rprivate"]}),
    ("type=tmpfs,dst=/t", {"destination": "/t", "type": "tmpfs", "source": "tmpfs",
                           "options": ["noexec", "nosuid", "nodev"]}),
    ("type=tmpfs,dst=/t,tmpfs-size=64m,tmpfs-mode=1770",
     {"destination": "/t", "type": "tmpfs", "source": "tmpfs",
      "options": ["noexec", "nosuid", "nodev", "size=67108864", "mode=1770"]}),
    ('"type=bind","src=/srv/www","dst=/var/www"',
     {"destination": "/var/www", "type": "bind", "source": "/srv/www",
      "options": ["rbind", "rprivate"]}),
])
def test_parse_mount(text, expected):
    assert mounts.parse_mount(text, fake_stat) == expected


@pytest.mark.parametrize("text,match", [
    ("src=/data,dst=/d", "type 'volume' is not supported"),
    ("type=volume,src=v,dst=/d", "type 'volume' is not supported"),
    ("type=bind,src=/data", r"a destination \(dst=\) is needed"),
    ("type=bind,dst=/d", "a bind needs src="),
    ("type=bind,src=rel,dst=/d", "named volumes"),
    ("type=bind,src=/nope,dst=/d", "does not exist"),
    ("type=bind,src=/data,dst=/a/../b", r"'\.\.'"),
    ("type=bind,src=/data,dst=/proc", "not allowed"),
    ("type=bind,src=/data,dst=/d,ro=maybe", "invalid boolean"),
    ("type=bind,src=/data,dst=/d,bind-propagation=weird", "unknown bind-propagation"),
    ("type=bind,src=/data,dst=/d,colour=red", "unknown key 'colour'"),
    ("type=tmpfs,src=/x,dst=/t", "takes no src"),
    ("type=tmpfs,dst=/t,tmpfs-mode=999", "octal"),
    ("type=tmpfs,dst=/t,tmpfs-mode=77777", "out of range"),
    ("type=tmpfs,dst=/t,tmpfs-size=huge", "tmpfs-size"),
    ("type=tmpfs,dst=/", "over / is not allowed"),
])
def test_parse_mount_rejects(text, match):
    with pytest.raises(SpecError, match=match):
        mounts.parse_mount(text, fake_stat)


@pytest.mark.parametrize("text,options", [
    ("/run", ["noexec", "nosuid", "nodev"]),
    ("/run:size=64m", ["noexec", "nosuid", "nodev", "size=64m"]),
    ("/run:exec,mode=1777", ["nosuid", "nodev", "exec", "mode=1777"]),     # exec replaces noexec
    ("/run:size=1m,size=2m,ro", ["noexec", "nosuid", "nodev", "size=2m", "ro"]),
    ("/run:rw,ro", ["noexec", "nosuid", "nodev", "ro"]),
])
def test_parse_tmpfs(text, options):
    m = mounts.parse_tmpfs(text)
    assert m == {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": options}


@pytest.mark.parametrize("text,match", [
    ("run", "absolute"), ("/run:bogus", "unknown tmpfs option 'bogus'"),
    ("/run:colour=red", "unknown tmpfs option"), ("/proc/x", "not allowed"),
    ("/a/../b", r"'\.\.'"),
])
def test_parse_tmpfs_rejects(text, match):
    with pytest.raises(SpecError, match=match):
        mounts.parse_tmpfs(text)


def test_user_mounts_sorted_by_depth_stable():
    result = mounts.user_mounts(("/data:/a/b/c", "/data:/z"), ("type=tmpfs,dst=/a/b",),
                                ("/a",), fake_stat)
    assert [m["destination"] for m in result] == ["/z", "/a", "/a/b", "/a/b/c"]


def test_user_mounts_duplicate_destination():
    with pytest.raises(SpecError, match="duplicate mount point: /d"):
        mounts.user_mounts(("/data:/d",), (), ("/d/",), fake_stat)
