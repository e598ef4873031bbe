"""Crafted layers that try to write, link, chmod or whiteout outside the layer directory
(/work/shared/reference/RUNTIME.md, "Attacks"). Every test has a canary directory beside the
layer dir and checks that nothing in it changed and nothing appeared outside the layer."""
from __future__ import annotations

import io
import os
import stat

import pytest

from layertar import D, F, H, M, S, make_tar
from minictr.errors import ImageError
from minictr.image.unpack import unpack_layer

PWNED = b"pwned"


def snapshot(top, skip):
    """Every path under ``top`` except ``skip``, with what an attack could change."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if dirpath == str(skip):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if path == str(skip):
                continue
            st = os.lstat(path)
            content = open(path, "rb").read() if stat.S_ISREG(st.st_mode) else None
            state[path] = (st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_mtime_ns,
                           content, sorted(os.listxattr(path, follow_symlinks=False)))
    return state


@pytest.fixture
def env(tmp_path):
    """``outside/canary`` (mode 0600, content "host") beside the empty layer dir ``layer``."""
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    (outside / "canary").write_bytes(b"host")
    os.chmod(outside / "canary", 0o600)
    os.utime(outside, ns=(10**18, 10**18))
    dest = tmp_path / "layer"
    dest.mkdir()
    before = snapshot(tmp_path, dest)

    class Env:
        pass

    e = Env()
    e.outside, e.dest, e.canary = outside, dest, outside / "canary"
    yield e
    assert snapshot(tmp_path, dest) == before, "something outside the layer dir changed"
    assert e.canary.read_bytes() == b"host"


def unpack(members, dest, *, rootless=False, **kw):
    return unpack_layer(io.BytesIO(make_tar(members)), str(dest), rootless=rootless, **kw)


def up_and_out(target) -> str:
    return "../" * 30 + str(target).lstrip("/")


# ---------------------------------------------------------------- names
def test_dotdot_names_stay_inside(env):
    rel = os.path.relpath(env.canary, env.dest)             # ../outside/canary
    unpack([F(rel, PWNED), F("a/../../../" + rel, PWNED), D("../../../x")], env.dest)
    assert (env.dest / "outside/canary").read_bytes() == PWNED   # clamped at the root
    assert (env.dest / "x").is_dir()


def test_absolute_names_stay_inside(env):
    unpack([F(str(env.canary), PWNED), F(str(env.outside / "new"), PWNED)], env.dest)
    assert (env.dest / str(env.canary).lstrip("/")).read_bytes() == PWNED


# ---------------------------------------------------------------- symlinks in the same layer
@pytest.mark.parametrize("target", ["absolute", "up-and-out"])
def test_write_through_a_symlinked_directory(env, target):
    link = str(env.outside) if target == "absolute" else up_and_out(env.outside)
    with pytest.raises(ImageError, match="symlink to nothing inside the image"):
        unpack([S("evil", link), F("evil/canary", PWNED), F("evil/new", PWNED)], env.dest)


def test_symlink_target_is_resolved_inside_the_root(env):
    # the same absolute symlink, but its target exists inside the layer: writes land there
    inside = str(env.outside).lstrip("/")
    unpack([D(inside), S("evil", str(env.outside)), F("evil/canary", PWNED)], env.dest)
    assert (env.dest / inside / "canary").read_bytes() == PWNED


def test_symlink_replacing_a_directory(env):
    with pytest.raises(ImageError):
        unpack([D("d"), F("d/a", b"1"), S("d", str(env.outside)), F("d/canary", PWNED)],
               env.dest)


def test_file_entry_over_a_symlink_replaces_the_symlink(env):
    unpack([S("f", str(env.canary)), F("f", PWNED, mode=0o777),
            S("g", up_and_out(env.canary)), M("g", "fifo")], env.dest)
    assert (env.dest / "f").read_bytes() == PWNED and not os.path.islink(env.dest / "f")
    assert stat.S_ISFIFO(os.lstat(env.dest / "g").st_mode)


def test_root_replaced_by_a_symlink_umoci_cve_2021_29136(env):
    for name in (".", "/.", "./", ""):
        with pytest.raises(ImageError, match="replace the root"):
            unpack([S(name, str(env.outside)), F("canary", PWNED)], env.dest)


def test_chmod_through_a_symlink_containerd_cve_2021_32760(env):
    # the directory's metadata is applied at the end; by then "d" is a symlink to the host dir
    unpack([D("d", mode=0o777, uid=1234, mtime=5, xattrs={"user.x": "1"}),
            S("d", str(env.outside)), S("e", up_and_out(env.outside)), D("e", mode=0o777)],
           env.dest)
    assert os.path.islink(env.dest / "d") and (env.dest / "e").is_dir()


@pytest.mark.parametrize("marker", [".wh.canary", ".wh..wh..opq"])
@pytest.mark.parametrize("target", ["absolute", "up-and-out"])
def test_whiteout_through_a_symlink(env, marker, target):
    link = str(env.outside) if target == "absolute" else up_and_out(env.outside)
    with pytest.raises(ImageError):
        unpack([S("lnk", link), F("lnk/" + marker)], env.dest)


def test_whiteout_through_a_symlink_lands_inside(env):
    inside = str(env.outside).lstrip("/")
    unpack([D(inside), S("lnk", str(env.outside)), F("lnk/.wh.canary"),
            F("lnk/.wh..wh..opq")], env.dest)
    whiteout = os.lstat(env.dest / inside / "canary")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(env.dest / inside, "trusted.overlay.opaque") == b"y"


# ---------------------------------------------------------------- hardlinks
@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_hardlink_out_of_the_root(env, how):
    target = os.path.relpath(env.canary, env.dest) if how == "dotdot" else str(env.canary)
    with pytest.raises(ImageError, match="neither this layer nor a lower one"):
        unpack([H("stolen", target)], env.dest)
    assert os.stat(env.canary).st_nlink == 1


def test_hardlink_through_a_symlinked_directory(env):
    with pytest.raises(ImageError):
        unpack([S("evil", str(env.outside)), H("stolen", "evil/canary")], env.dest)
    assert os.stat(env.canary).st_nlink == 1


def test_hardlink_to_a_symlink_links_the_symlink_itself(env):
    unpack([S("s", str(env.canary)), H("h", "s"), F("h2", b"x"), H("h2", "s")], env.dest)
    assert os.readlink(env.dest / "h") == str(env.canary)
    assert os.lstat(env.dest / "h").st_ino == os.lstat(env.dest / "s").st_ino
    assert os.path.islink(env.dest / "h2")
    assert os.stat(env.canary).st_nlink == 1


def test_hardlink_into_a_lower_layer_symlink_does_not_read_host_files(env, tmp_path):
    lower = tmp_path / "lower"
    lower.mkdir()
    os.symlink(str(env.outside), lower / "etc")          # a lower layer's hostile symlink
    os.symlink(str(env.canary), lower / "file")
    with pytest.raises(ImageError, match="neither this layer nor a lower one"):
        unpack([H("stolen", "etc/canary")], env.dest, lower_lookup=lambda: [str(lower)])
    unpack([H("copied", "file")], env.dest, lower_lookup=lambda: [str(lower)])
    assert os.readlink(env.dest / "copied") == str(env.canary)   # the symlink, not its content
    os.unlink(lower / "etc")
    os.unlink(lower / "file")
    lower.rmdir()


# ---------------------------------------------------------------- rootless
def test_rootless_skips_device_nodes(env):
    warnings = []
    stats = unpack([M("dev/mem", "char", devmajor=1, devminor=1, mode=0o666),
                    M("dev/sda", "block", devmajor=8, devminor=0, mode=0o666)],
                   env.dest, rootless=True, warn=warnings.append)
    assert not os.path.lexists(env.dest / "dev/mem")
    assert not os.path.lexists(env.dest / "dev/sda")
    assert stats.skipped == 2 and len(warnings) == 2 and "dev/mem" in warnings[0]


def test_rootless_setuid_file_is_owned_by_the_unpacking_user(env):
    unpack([F("bin/su", b"#!", mode=0o4755, uid=0, gid=0),
            F("bin/other", b"#!", mode=0o6755, uid=1234, gid=1234),
            D("home", uid=1234, gid=1234), S("home/l", "x", uid=1234)],
           env.dest, rootless=True)
    for path in ("bin/other", "home", "home/l"):
        st = os.lstat(env.dest / path)
        assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()), path


# ---------------------------------------------------------------- overlay xattrs
@pytest.mark.parametrize("rootless", [False, True])
def test_image_cannot_plant_overlay_xattrs(env, rootless):
    planted = {"trusted.overlay.opaque": "y", "trusted.overlay.redirect": "/etc",
               "user.overlay.opaque": "y", "user.overlay.metacopy": "",
               "trusted.overlay.origin": "x"}
    warnings = []
    unpack([D("d", xattrs=planted), F("f", b"x", xattrs=planted)], env.dest,
           rootless=rootless, warn=warnings.append)
    for path in ("d", "f"):
        assert not [k for k in os.listxattr(env.dest / path) if ".overlay." in k], path
    assert len(warnings) == 2 * len(planted)


def test_rootless_drops_privileged_xattrs(env):
    unpack([F("ping", b"x", xattrs={"security.capability": "\x01", "trusted.a": "b"})],
           env.dest, rootless=True)
    assert os.listxattr(env.dest / "ping") == []


# ---------------------------------------------------------------- lower layers (copy-up)
@pytest.fixture
def lower(tmp_path_factory):
    """An empty lower layer dir, away from the canary's tree (the env fixture watches that)."""
    return tmp_path_factory.mktemp("lower")


def over(members, env, lower, **kw):
    return unpack(members, env.dest, lower_lookup=lambda: [str(lower)], **kw)


@pytest.mark.parametrize("target", ["absolute", "up-and-out"])
def test_implicit_parent_through_a_lower_symlink_pointing_out(env, lower, target):
    # the lower layer's etc -> the host dir: a new etc/passwd must not be written there, nor
    # etc's metadata (the host dir's mode 0700, mtime 10**18) be copied up
    os.symlink(str(env.outside) if target == "absolute" else up_and_out(env.outside),
               lower / "etc")
    with pytest.raises(ImageError, match="symlink to nothing inside the image"):
        over([F("etc/canary", PWNED)], env, lower)
    with pytest.raises(ImageError, match="symlink to nothing inside the image"):
        over([F("etc/.wh.canary"), F("etc/.wh..wh..opq")], env, lower)


def test_lower_symlink_pointing_out_resolves_inside_the_image(env, lower):
    # the same link, with the path it names present inside the image: writes and the copied-up
    # metadata come from there, never from the host's directory
    inside = lower / str(env.outside).lstrip("/")
    inside.mkdir(parents=True, mode=0o751)
    os.utime(inside, ns=(5, 5))
    os.symlink(str(env.outside), lower / "etc")
    over([F("etc/canary", PWNED), F("etc/.wh.gone"), H("etc/link", "etc/canary")], env, lower)
    landed = env.dest / str(env.outside).lstrip("/")
    assert (landed / "canary").read_bytes() == PWNED
    st = os.stat(landed)
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o751, 5)
    assert not os.path.lexists(env.dest / "etc")


def test_hardlink_to_a_lower_symlink_pointing_out_copies_the_symlink(env, lower):
    os.symlink(str(env.canary), lower / "evil")
    os.symlink(up_and_out(env.outside), lower / "evildir")
    over([H("stolen", "evil")], env, lower)
    assert os.readlink(env.dest / "stolen") == str(env.canary)
    assert os.lstat(env.dest / "stolen").st_ino == os.lstat(env.dest / "evil").st_ino
    with pytest.raises(ImageError, match="neither this layer nor a lower one"):
        over([H("stolen2", "evildir/canary")], env, lower)
    assert os.stat(env.canary).st_nlink == 1


def test_lower_symlink_loop_is_refused(env, lower):
    os.symlink("b", lower / "a")
    os.symlink("a", lower / "b")
    with pytest.raises(ImageError, match="too many levels of symlinks"):
        over([F("a/x", PWNED)], env, lower)


def test_lower_fifo_as_hardlink_target_is_not_opened(env, lower):
    os.mkfifo(lower / "fifo")
    with pytest.raises(ImageError, match="not a file or symlink"):
        over([H("x", "fifo")], env, lower)
