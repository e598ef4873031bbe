"""The lower layer of mount points (minictr/mountpoints.py): which binds need one, what the
image lacks (resolved as the container resolves it), and the layer made once, with the image's
directory metadata, atomically."""
import os
import stat

import pytest

from minictr import mountpoints


def test_mount_destinations_are_the_mounts_into_the_image():
    spec = {"mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/dev/nvidia-caps", "type": "bind", "source": "/", "options": ["bind"]},
        {"destination": "/data", "type": "bind", "source": "/", "options": ["rbind"]},
        {"destination": "/data/x", "source": "/etc/hostname", "options": ["bind"]},
        {"destination": "/usr/lib64/libcuda.so.1", "type": "bind", "source": "/etc/hostname"},
        {"destination": "/run/nvidia-persistenced/", "type": "bind", "source": "/"},
    ]}
    assert mountpoints.mount_destinations(spec) == [
        ("/proc", "dir"), ("/dev", "dir"), ("/data", "dir"), ("/usr/lib64/libcuda.so.1", "file"),
        ("/run/nvidia-persistenced", "dir")]


@pytest.fixture
def image(tmp_path):
    """Two layers, topmost first: /lib -> usr/lib (merged /usr), /usr/lib64 mode 0750 owned
    by 7:8 with an old mtime, a file /usr/bin/tool, /bad -> /nowhere, /file a regular file."""
    top, base = tmp_path / "top", tmp_path / "base"
    for d in ("usr/lib", "usr/lib64", "usr/bin", "etc"):
        (base / d).mkdir(parents=True)
    top.mkdir()
    (top / "usr").mkdir()
    (top / "usr" / "bin").mkdir()
    (top / "usr" / "bin" / "tool").write_text("x")
    os.symlink("usr/lib", base / "lib")
    os.symlink("/nowhere", top / "bad")
    (top / "file").write_text("")
    lib64 = base / "usr" / "lib64"
    os.chmod(lib64, 0o750)
    if os.geteuid() == 0:
        os.chown(lib64, 7, 8)
    os.utime(lib64, ns=(1_000_000_000, 2_000_000_000))
    os.chmod(top, 0o711)
    return (str(top), str(base))


def test_missing_entries_follow_the_images_links_and_skip_what_it_has(image):
    entries = mountpoints.missing_entries(image, [
        ("/usr/lib64/libcuda.so.1", "file"), ("/usr/bin/tool", "file"),
        ("/lib/firmware/nvidia/580/gsp.bin", "file"), ("/run/nvidia-persistenced", "dir"),
        ("/bad/x/y", "file"), ("/file/under", "file"), ("/etc", "dir")])
    made = {path: (kind, st is not None) for path, kind, st in entries}
    assert made == {
        "usr": ("dir", True), "usr/lib64": ("dir", True), "usr/lib64/libcuda.so.1": ("file", False),
        # through /lib -> usr/lib: never a directory "lib" that would hide the link
        "usr/lib": ("dir", True), "usr/lib/firmware": ("dir", False),
        "usr/lib/firmware/nvidia": ("dir", False), "usr/lib/firmware/nvidia/580": ("dir", False),
        "usr/lib/firmware/nvidia/580/gsp.bin": ("file", False),
        "run": ("dir", False), "run/nvidia-persistenced": ("dir", False)}
    paths = [path for path, _, _ in entries]
    assert all(paths.index(os.path.dirname(p)) < paths.index(p)
               for p in paths if os.path.dirname(p))            # parents first


def test_the_layer_is_made_once_with_the_images_directory_metadata(image, tmp_path,
                                                                   monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("the image fixture's other owners need root")
    state = str(tmp_path / "state")
    dests = [("/usr/lib64/libcuda.so.1", "file"), ("/run/nvidia-persistenced", "dir")]
    lines = []
    layer = mountpoints.layer_for(state, image, dests, lines.append)
    assert layer and os.path.dirname(layer) == os.path.join(state, ".cache", "mountpoints")
    lib64 = os.stat(os.path.join(layer, "usr/lib64"))
    assert (stat.S_IMODE(lib64.st_mode), lib64.st_uid, lib64.st_gid, lib64.st_mtime_ns) == (
        0o750, 7, 8, 2_000_000_000)
    assert stat.S_IMODE(os.stat(layer).st_mode) == 0o711     # the image's root, for the upper
    assert os.path.isfile(os.path.join(layer, "usr/lib64/libcuda.so.1"))
    assert stat.S_IMODE(os.stat(os.path.join(layer, "run")).st_mode) == 0o755
    assert os.path.isdir(os.path.join(layer, "run/nvidia-persistenced"))
    assert len(lines) == 1 and "in the lower layer STATE/.cache/mountpoints/" in lines[0]
    base = os.path.basename(layer)
    assert sorted(os.listdir(os.path.dirname(layer))) == [base, base + ".layers"]
    # the second run finds it: no walk of the image
    monkeypatch.setattr(mountpoints, "missing_entries", lambda *a: pytest.fail("rebuilt"))
    assert mountpoints.layer_for(state, image, dests) == layer
    # another set of destinations is another layer; one the image has already is none
    monkeypatch.undo()
    assert mountpoints.layer_for(state, image, [("/usr/bin/tool", "file")]) is None
    assert any(n.endswith(".none") for n in os.listdir(os.path.dirname(layer)))


def test_no_layer_from_a_directory_others_can_write(image, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the image fixture's other owners need root")
    state = tmp_path / "state"
    dests = [("/usr/lib64/libcuda.so.1", "file")]
    layer = mountpoints.layer_for(str(state), image, dests)
    os.chmod(os.path.dirname(layer), 0o777)
    assert mountpoints.layer_for(str(state), image, dests) is None
    os.chmod(os.path.dirname(layer), 0o700)
    os.chmod(layer, 0o777)
    assert mountpoints.layer_for(str(state), image, dests) is None


def test_a_failed_build_leaves_nothing(image, tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("the image fixture's other owners need root")

    def broken(*args, **kw):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(mountpoints.os, "utime", broken)
    state = tmp_path / "state"
    assert mountpoints.layer_for(str(state), image, [("/usr/lib64/x", "file")]) is None
    assert os.listdir(state / ".cache" / "mountpoints") == []


def test_gc_removes_the_entries_of_removed_image_layers(image, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the image fixture's other owners need root")
    import shutil

    state = str(tmp_path / "state")
    kept = mountpoints.layer_for(state, image, [("/usr/lib64/x", "file")])
    other = (str(tmp_path / "other"),) + image[1:]
    shutil.copytree(image[0], other[0], symlinks=True)
    gone = mountpoints.layer_for(state, other, [("/usr/lib64/x", "file")])
    none = mountpoints.layer_for(state, other, [("/usr/bin/tool", "file")])
    assert kept and gone and none is None
    directory = os.path.dirname(kept)
    stale = os.path.join(directory, ".tmp-killed")
    os.mkdir(stale)
    assert mountpoints.collect(state) == 0 and os.path.isdir(stale)    # all in use; too young
    shutil.rmtree(other[0])                                            # the store's gc did
    assert mountpoints.collect(state, min_age=-1) == 2
    base = os.path.basename(kept)
    assert sorted(os.listdir(directory)) == [base, base + ".layers"]
