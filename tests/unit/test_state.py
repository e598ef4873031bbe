"""The state directory: trusted only when it deserves it; entries private; bad entries
reported one by one."""
import json
import os
import stat
import subprocess
import sys

import pytest

from minictr.config import default_paths
from minictr.runtime import lifecycle, state
from minictr.runtime.state import StateError, StateRoot


def test_made_private_and_refused_when_others_can_write(tmp_path):
    root = StateRoot(str(tmp_path / "s"))
    assert stat.S_IMODE(os.stat(root.path).st_mode) == 0o700
    os.chmod(root.path, 0o777)
    with pytest.raises(StateError) as info:
        StateRoot(root.path)
    assert "writable by others" in str(info.value) and info.value.hint


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory away")
def test_refused_when_someone_else_owns_it(tmp_path):
    planted = tmp_path / "minictr-1000"
    planted.mkdir(mode=0o700)
    os.chown(planted, 4242, 4242)
    with pytest.raises(StateError) as info:
        StateRoot(str(planted))
    assert "belongs to uid 4242" in str(info.value)


def test_a_symlink_is_not_a_state_directory(tmp_path):
    (tmp_path / "real").mkdir(mode=0o700)
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(StateError):
        StateRoot(str(tmp_path / "link"))


def test_entries_are_private(tmp_path):
    root = StateRoot(str(tmp_path / "s"))
    root.add("c1")
    root.write("c1", {"id": "c1"})
    state.write_private(root.file("c1", "config.json"), b"{}")
    assert stat.S_IMODE(os.stat(root.dir("c1")).st_mode) == 0o700
    for name in ("state.json", "config.json"):
        assert stat.S_IMODE(os.stat(root.file("c1", name)).st_mode) == 0o600


def test_ids_are_directory_names_and_nothing_else(tmp_path):
    root = StateRoot(str(tmp_path / "s"))
    for bad in ("../x", "a/b", ".", "..", "", "names"):
        with pytest.raises(Exception):
            root.add(bad)


def test_a_malformed_entry_is_reported_and_the_others_listed(tmp_path):
    root = StateRoot(str(tmp_path / "s"))
    for cid in ("good", "bad", "empty"):
        root.add(cid)
    root.write("good", {"id": "good", "status": "stopped", "pid": 0})
    with open(root.file("bad", "state.json"), "w") as f:
        f.write("{not json")
    warnings = []
    listed = lifecycle.list_states(root, warn=warnings.append)
    assert [s["id"] for s in listed] == ["good"]
    assert len(warnings) == 2 and any("bad" in w for w in warnings)
    assert any("no state file" in w for w in warnings)


def test_names_are_unique_and_stale_ones_are_taken_over(tmp_path):
    root = StateRoot(str(tmp_path / "s"))
    root.add("a" * 64)
    root.claim_name("web", "a" * 64)
    with pytest.raises(Exception) as info:
        root.claim_name("web", "b" * 64)
    assert "already in use" in str(info.value)
    root.remove("a" * 64)                         # gone: its name is free (and released)
    root.add("b" * 64)
    root.claim_name("web", "b" * 64)
    assert root.name_to_id("web") == "b" * 64


def test_a_missing_runtime_dir_falls_back_to_a_private_tmp_dir(tmp_path):
    env = {"HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path / "run" / "user" / "1000")}
    assert default_paths(env=env, euid=1000).state == "/tmp/minictr-1000"
    (tmp_path / "run" / "user" / "1000").mkdir(parents=True)
    assert default_paths(env=env, euid=1000).state == str(tmp_path / "run/user/1000/minictr")


def test_status_comes_from_the_process_not_the_file(tmp_path):
    root = StateRoot(str(tmp_path / "s"))
    root.add("c")
    root.write("c", {"id": "c", "status": "running", "pid": os.getpid(),
                     "pid_ticks": state.start_ticks(os.getpid())})
    assert lifecycle.status(root, root.read("c")) == "running"
    root.update("c", pid_ticks=1)                 # the pid was reused by another process
    assert lifecycle.status(root, root.read("c")) == "stopped"
    assert json.loads(open(root.file("c", "state.json")).read())["status"] == "running"


CLAIMANT = r"""
import sys
from minictr.runtime.state import StateRoot
StateRoot(sys.argv[1]).claim_name("web", "a" * 64)
print("claimed", flush=True)
sys.stdin.read()            # a launcher between its claim and its state entry, until told
"""


def test_a_name_claimed_by_a_launcher_still_starting_is_not_taken_over(tmp_path):
    """The claim (names/web -> id) comes before the claimant's state entry: in between, the
    entry is missing, as it is after a launcher was killed. Only a dead claimant's name may be
    taken over, and only then may gc's prune_names drop it."""
    path = str(tmp_path / "s")
    StateRoot(path)
    launcher = subprocess.Popen([sys.executable, "-c", CLAIMANT, path], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout.readline() == "claimed\n"
        root = StateRoot(path)
        with pytest.raises(Exception, match="already in use"):
            root.claim_name("web", "b" * 64)
        root.prune_names()
        assert root.name_to_id("web") == "a" * 64
    finally:
        launcher.communicate("", timeout=30)       # it exits without making its entry
    root.claim_name("web", "b" * 64)               # now stale: taken over
    assert root.name_to_id("web") == "b" * 64
    root.add("b" * 64)
    root.remove("b" * 64)
    root.prune_names()
    assert os.listdir(root.names_dir()) == []      # names and claim files all gone


def test_an_update_never_puts_state_back_into_an_entry_being_removed(tmp_path, monkeypatch):
    """A detached container's monitor records its exit (update) while `rm -f` removes the
    entry. rmtree unlinks the files, then rmdirs: an update's write in between put state.json
    back, the rmdir failed (ignored), and the entry stayed for ever. The entry's lock keeps
    them apart; an update that waited for the removal finds no container."""
    import threading

    from minictr.runtime import cleanup

    root = StateRoot(str(tmp_path / "state"))
    cid = "a" * 64
    root.add(cid)
    root.write(cid, {"id": cid, "status": "running"})
    read_done, files_gone, written = (threading.Event() for _ in range(3))
    real_read = root.read

    def slow_read(container_id):        # the monitor: it has read, and goes on to write
        state = real_read(container_id)
        read_done.set()
        files_gone.wait(1.0)            # bounded: under the lock the removal cannot begin
        return state

    def rmtree_in_two_steps(path):      # cleanup.rmtree's order: the files, then the dir
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        files_gone.set()
        written.wait(1.0)
        try:
            os.rmdir(path)
        except OSError:
            pass

    monkeypatch.setattr(root, "read", slow_read)
    monkeypatch.setattr(cleanup, "rmtree", rmtree_in_two_steps)
    errors = []

    def monitor():
        try:
            root.update(cid, exit_code=3)
        except state.NoSuchContainer as err:
            errors.append(err)
        finally:
            written.set()

    t = threading.Thread(target=monitor)
    t.start()
    assert read_done.wait(10)
    root.remove(cid)
    t.join(10)
    assert not os.path.exists(root.dir(cid)), os.listdir(root.dir(cid))
