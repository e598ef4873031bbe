"""The discovery cache (minictr/gpu/driver_cache.py) and the reader it trusts (gpu/driver.py)."""
import json
import os
import shutil
import stat
import sys

import pytest

from minictr.gpu import discover, driver, driver_cache, witnesses

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "gpu"))
import fakedriver  # noqa: E402


@pytest.fixture
def fake(tmp_path):
    return fakedriver.build(str(tmp_path / "drv"), mig=True)


class Counting:
    """discover.discover, counting its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, roots, host=None):
        self.calls += 1
        return discover.discover(roots, host)


def cached(fake, cache_dir, counter):
    return driver_cache.discover_cached(fake.roots, str(cache_dir), counter)


def test_plain_form_round_trips(fake):
    d = discover.discover(fake.roots)
    assert d.gpus[1].mig                       # the MIG records are in the round trip too
    plain = json.loads(json.dumps(driver.to_plain(d)))
    assert driver.from_plain(plain, fake.roots) == d


def test_second_discovery_comes_from_the_cache(fake, tmp_path):
    count = Counting()
    first = cached(fake, tmp_path / "cache", count)
    second = cached(fake, tmp_path / "cache", count)
    assert count.calls == 1
    assert second == first == discover.discover(fake.roots)


def test_cache_is_private_and_written_whole(fake, tmp_path):
    cached(fake, tmp_path / "cache", Counting())
    assert stat.S_IMODE(os.stat(tmp_path / "cache").st_mode) == 0o700
    (entry,) = os.listdir(tmp_path / "cache")          # no temporary left beside it
    st = os.stat(tmp_path / "cache" / entry)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()


def _bump(path):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _new_version(fake):
    path = os.path.join(fake.proc_root, "driver/nvidia/version")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:                  # same size: only the text tells
        f.write(text.replace("580.65.06", "580.65.07"))


def _touch_driver_cache(fake):
    _bump(os.path.join(fake.driver_root, "etc/ld.so.cache"))


def _replace_library(fake):
    lib = os.path.join(fake.driver_root, fakedriver.LIBDIR.lstrip("/"), "libcuda.so.580.65.06")
    shutil.copy(lib, lib + ".new")
    os.rename(lib + ".new", lib)                 # a new inode, as a package upgrade makes


def _remove_node(fake):
    os.unlink(os.path.join(fake.dev_root, "dev/nvidia-uvm-tools"))


def _new_gpu(fake):
    bus = "0000:81:00.0"
    os.makedirs(os.path.join(fake.proc_root, "driver/nvidia/gpus", bus))
    with open(os.path.join(fake.proc_root, "driver/nvidia/gpus", bus, "information"), "w") as f:
        f.write(f"Model: NVIDIA H200\nDevice Minor: 7\nBus Location: {bus}\n")


def _new_mig_instance(fake):
    path = os.path.join(fake.proc_root, "driver/nvidia/capabilities/gpu0/mig/gi3/ci0")
    os.makedirs(path)
    for p, m in ((os.path.dirname(path), 30), (path, 31)):
        with open(os.path.join(p, "access"), "w") as f:
            f.write(f"DeviceFileMinor: {m}\n")


def _new_binary(fake):
    path = os.path.join(fake.driver_root, "usr/bin/nvidia-debugdump")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(path, 0o755)


@pytest.mark.parametrize("change", [_new_version, _touch_driver_cache, _replace_library,
                                    _remove_node, _new_gpu, _new_mig_instance, _new_binary])
def test_any_change_to_what_was_read_means_a_new_discovery(fake, tmp_path, change):
    count = Counting()
    cached(fake, tmp_path / "cache", count)
    change(fake)
    got = cached(fake, tmp_path / "cache", count)
    assert count.calls == 2
    assert got == discover.discover(fake.roots)
    cached(fake, tmp_path / "cache", count)       # and the new result is cached in turn
    assert count.calls == 2


def _entry(tmp_path):
    (name,) = os.listdir(tmp_path / "cache")
    return tmp_path / "cache" / name


@pytest.mark.parametrize("damage", [
    lambda p: p.write_bytes(b"\0garbage{"),
    lambda p: p.write_bytes(p.read_bytes()[:100]),
    lambda p: p.write_text(json.dumps({"format": 1, "witnesses": [], "driver": {"gpus": 3}})),
    lambda p: p.write_text(json.dumps({"format": 1, "witnesses": [["nope", "/", 1]]})),
    lambda p: p.write_text("[]"),
])
def test_a_corrupt_entry_is_ignored(fake, tmp_path, damage):
    count = Counting()
    cached(fake, tmp_path / "cache", count)
    damage(_entry(tmp_path))
    assert cached(fake, tmp_path / "cache", count) == discover.discover(fake.roots)
    assert count.calls == 2
    cached(fake, tmp_path / "cache", count)       # rewritten whole
    assert count.calls == 2


def test_an_entry_others_could_write_is_not_trusted(fake, tmp_path):
    count = Counting()
    cached(fake, tmp_path / "cache", count)
    os.chmod(_entry(tmp_path), 0o622)
    cached(fake, tmp_path / "cache", count)
    assert count.calls == 2
    os.chmod(tmp_path / "cache", 0o777)
    cached(fake, tmp_path / "cache", count)
    cached(fake, tmp_path / "cache", count)
    assert count.calls == 4                      # an open directory is neither read nor written


def test_a_symlinked_entry_is_not_followed(fake, tmp_path):
    count = Counting()
    cached(fake, tmp_path / "cache", count)
    entry = _entry(tmp_path)
    os.rename(entry, tmp_path / "elsewhere.json")
    os.symlink(tmp_path / "elsewhere.json", entry)
    cached(fake, tmp_path / "cache", count)
    assert count.calls == 2


def test_no_cache_dir_is_plain_discovery(fake):
    count = Counting()
    driver_cache.discover_cached(fake.roots, None, count)
    driver_cache.discover_cached(fake.roots, None, count)
    assert count.calls == 2


def test_other_roots_are_another_entry(fake, tmp_path):
    other = fakedriver.build(str(tmp_path / "other"))
    count = Counting()
    cached(fake, tmp_path / "cache", count)
    cached(other, tmp_path / "cache", count)
    assert count.calls == 2 and len(os.listdir(tmp_path / "cache")) == 2


def test_witnesses_cover_every_file_discovery_read(fake):
    host = driver.HostFiles(fake.roots)
    discover.discover(fake.roots, host)
    seen = {path for _, path, _ in host.witnesses}
    assert os.path.join(fake.proc_root, "driver/nvidia/version") in seen
    assert os.path.join(fake.driver_root, "etc/ld.so.cache") in seen
    assert os.path.join(fake.dev_root, "dev/nvidia0") in seen
    assert witnesses.still_holds(host.witnesses)
    _remove_node(fake)
    assert not witnesses.still_holds(host.witnesses)


def test_a_witness_must_name_a_path(fake, tmp_path):
    count = Counting()
    cached(fake, tmp_path / "cache", count)
    entry = _entry(tmp_path)
    doc = json.loads(entry.read_text())
    doc["witnesses"].insert(0, ["text", 0, None])      # open(0) would read and close stdin
    entry.write_text(json.dumps(doc))
    cached(fake, tmp_path / "cache", count)
    assert count.calls == 2


def test_explain_hears_whether_the_driver_came_from_the_cache(fake, tmp_path):
    notes = []
    driver_cache.discover_cached(fake.roots, str(tmp_path / "cache"), note=notes.append)
    driver_cache.discover_cached(fake.roots, str(tmp_path / "cache"), note=notes.append)
    assert "discovered" in notes[0] and "until one answer changes" in notes[0]
    assert "from the discovery cache" in notes[1]
