"""Files and symlinks made on worker threads (image/filewriter.py): the tree must be the one a
sequential unpack makes, whatever the order of entries that reach the same names."""
from __future__ import annotations

import io
import os
import stat

import pytest

from layertar import D, F, H, S, make_tar
from minictr.errors import ImageError
from minictr.image import filewriter
from minictr.image.unpack import unpack_layer


def tree(top):
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, top)] = (
                stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                st.st_nlink if stat.S_ISREG(st.st_mode) else 0, st.st_mtime_ns,
                os.readlink(p) if stat.S_ISLNK(st.st_mode) else
                open(p, "rb").read() if stat.S_ISREG(st.st_mode) else None)
    return out


def both(tmp_path, members, **kw):
    """The tree made with workers (started at once, jobs handed over one by one and in
    batches) and without: they must be equal; returns the first."""
    blob = make_tar(members)
    made = []
    for workers, batch in ((2, 1), (2, filewriter.FileWriter.BATCH), (0, 0)):
        dest = tmp_path / f"w{workers}-{batch}"
        dest.mkdir()
        saved = filewriter.FileWriter.BATCH
        filewriter.FileWriter.BATCH = batch or saved
        try:
            unpack_layer(io.BytesIO(blob), str(dest), rootless=False, workers=workers,
                         slow_name_ns=0, **kw)
        finally:
            filewriter.FileWriter.BATCH = saved
        made.append(tree(dest))
    assert made[0] == made[2] and made[1] == made[2]
    return made[0]


def test_workers_start_when_names_prove_slow_and_the_tree_is_the_same(tmp_path, monkeypatch):
    started = []
    real = filewriter.FileWriter

    class Counting(real):
        def __init__(self, workers):
            started.append(workers)
            super().__init__(workers)

    monkeypatch.setattr(filewriter, "FileWriter", Counting)
    members = [D("d")] + [F(f"d/f{i}", b"x" * i) for i in range(100)] + \
        [S(f"d/l{i}", f"f{i}") for i in range(100)] + [F("d/f5", b"later"), S("d/l7", "x")]
    blob = make_tar(members)
    trees = {}
    for name, slow_ns in (("never", 10 ** 12), ("always", 1), ("inline", None)):
        dest = tmp_path / name
        dest.mkdir()
        del started[:]
        unpack_layer(io.BytesIO(blob), str(dest), rootless=False,
                     workers=0 if slow_ns is None else 3, slow_name_ns=slow_ns or 0)
        trees[name] = tree(dest)
        # a name never takes 1000 s: no threads; every name takes over 1 ns: threads after
        # the first PROBE_NAMES names, once
        assert started == ([3] if name == "always" else []), name
    assert trees["never"] == trees["inline"] == trees["always"]
    assert trees["inline"]["d/f5"][-1] == b"later" and trees["inline"]["d/l7"][-1] == "x"


def test_a_probe_says_slow_only_for_a_slow_window():
    probe = filewriter.Probe(3, slow_ns=10 ** 7)      # 10 ms a name: a window of 0.64 s
    assert not any(probe.made(probe.start()) for _ in range(filewriter.PROBE_NAMES - 1))
    # the window's last name took 1000 s: the window averaged over 10 ms
    assert probe.made(probe.start() - 10 ** 12)
    assert not any(probe.made(probe.start()) for _ in range(filewriter.PROBE_NAMES))


def test_many_files_in_many_directories(tmp_path):
    members = []
    for d in range(40):
        members.append(D(f"d{d}", mode=0o750))
        members += [F(f"d{d}/f{i}", os.urandom(i * 37), mode=0o640 | (i % 2) * 0o4000,
                      uid=i % 3, gid=i % 5) for i in range(30)]
        members += [S(f"d{d}/l{i}", f"f{i}") for i in range(5)]
    t = both(tmp_path, members)
    assert len(t) == 40 * 36


def test_later_entries_replace_names_still_being_made(tmp_path):
    t = both(tmp_path, [F("a", b"first"), F("a", b"second"), S("b", "a"), F("b", b"file"),
                        F("c", b"x"), S("c", "elsewhere"),
                        D("d"), F("d/x", b"1"), F("d/y", b"2"), F("d", b"now a file"),
                        F("e", b"x"), D("e"), F("e/inside", b"y")])
    assert t["a"][-1] == b"second" and t["b"][-1] == b"file" and t["c"][-1] == "elsewhere"
    assert t["d"][-1] == b"now a file" and t["e/inside"][-1] == b"y"


def test_paths_through_a_symlink_still_being_made(tmp_path):
    t = both(tmp_path, [D("usr"), D("usr/lib"), S("lib", "usr/lib"), F("lib/libx.so", b"x"),
                        S("lib64", "/usr/lib"), F("lib64/liby.so", b"y")])
    assert t["usr/lib/libx.so"][-1] == b"x" and t["usr/lib/liby.so"][-1] == b"y"
    assert t["lib"][0] == stat.S_IFLNK


def test_hardlink_to_a_file_still_being_made(tmp_path):
    t = both(tmp_path, [F("a", b"data" * 1000), H("b", "a"), F("c", b"c"), H("d", "c")])
    assert t["b"][4] == 2 and t["b"][-1] == b"data" * 1000


def test_a_symlink_planted_where_a_file_goes_is_replaced_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.write_bytes(b"host")
    t = both(tmp_path, [S("f", str(outside)), F("f", b"image")])
    assert outside.read_bytes() == b"host" and t["f"][-1] == b"image"


def test_a_worker_failure_names_its_entry(tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    with pytest.raises(ImageError, match="x" * 300):
        unpack_layer(io.BytesIO(make_tar([F("ok", b"1"), F("x" * 300, b"2"), F("z", b"3")])),
                     str(dest), rootless=False, workers=2)
    import threading
    assert not [t for t in threading.enumerate() if t.name.startswith("layer-writer")]


def test_a_directory_replaced_by_a_symlink_while_workers_run(tmp_path):
    # the symlink over "d" is made by the redo at the barrier d/x asks for: the fd cached for
    # the removed directory must not be used for d/x (it named a dead directory: ENOENT)
    t = both(tmp_path, [D("d"), F("d/a", b"1"), D("real"), S("d", "real"), F("d/x", b"x")])
    assert t["d"][-1] == "real" and t["real/x"][-1] == b"x"


def test_paths_through_a_symlink_to_a_name_still_being_made(tmp_path):
    # "lnk" is made and done; its target "d" is replaced by a symlink on a worker: lnk/f must
    # wait for it, not land in the old directory d (removed with f by the redo) or fail on a
    # missing d
    for i in range(20):
        run = tmp_path / str(i)
        run.mkdir()
        t = both(run, [D("d"), D("other"), S("lnk", "d"), F("pad", b"p"), S("d", "other"),
                       F("lnk/f", b"f"), S("lnk2", "e"), F("pad2", b"p"), S("e", "other"),
                       F("lnk2/g", b"g")])
        assert t["other/f"][-1] == b"f" and t["other/g"][-1] == b"g"


def test_close_closes_the_fds_of_jobs_left_to_redo(tmp_path):
    # a job that found its name taken keeps its directory's fd for the redo at the next
    # barrier; an unpack that fails before that barrier only closes the writer
    import time
    from types import SimpleNamespace

    from minictr.image.filewriter import FileJob, FileWriter

    (tmp_path / "taken").write_bytes(b"")
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    entry = SimpleNamespace(mode=0o644, uid=0, gid=0, mtime_ns=0)
    writer = FileWriter(1)
    try:
        job = FileJob(entry, "taken", os.dup(dir_fd), "taken", data=b"x")
        writer.submit(job)
        writer.flush()      # handed over in batches: this one alone at once
        deadline = time.monotonic() + 10
        while not job.exists and time.monotonic() < deadline:
            time.sleep(0.001)
        assert job.exists
    finally:
        writer.close()
        os.close(dir_fd)
    with pytest.raises(OSError):
        os.fstat(job.dir_fd)


def test_a_directory_being_filled_is_replaced_by_a_large_file(tmp_path):
    # the large file is made on the parsing thread: its make_room must wait for the workers
    # still creating names inside the directory it removes
    for i in range(5):
        run = tmp_path / str(i)
        run.mkdir()
        t = both(run, [D("d")] + [F(f"d/x{n}", b"x") for n in range(200)]
                 + [F("d", b"L" * (filewriter.SMALL_FILE + 1))])
        assert t == {"d": t["d"]} and len(t["d"][-1]) == filewriter.SMALL_FILE + 1


def test_a_whiteout_for_a_name_still_being_made_is_not_made(tmp_path):
    # layer.md: this layer's own "f" stays; a whiteout made before the worker made "f" would
    # be counted (and raced with it for the name)
    members = [F(f"pad{n}", b"") for n in range(300)] + [F("f", b"mine"), F(".wh.f")]
    for i in range(5):
        dest = tmp_path / str(i)
        dest.mkdir()
        stats = unpack_layer(io.BytesIO(make_tar(members)), str(dest), rootless=False,
                             workers=1)
        assert stats.whiteouts == 0 and (dest / "f").read_bytes() == b"mine"
