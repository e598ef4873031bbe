"""minictr/cachefiles.py: what the seccomp and GPU caches trust."""
import os

import pytest

from minictr import cachefiles


def test_an_entry_round_trips_private_and_whole(tmp_path):
    path = str(tmp_path / "cache" / "e")
    assert cachefiles.write(path, b"x" * 100_000)
    assert cachefiles.read(path) == b"x" * 100_000
    assert os.stat(tmp_path / "cache").st_mode & 0o777 == 0o700
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path / "cache") == ["e"]


def test_a_leftover_temporary_of_a_dead_writer_is_replaced(tmp_path):
    os.mkdir(tmp_path / "c", 0o700)
    path = str(tmp_path / "c" / "e")
    with open(f"{path}.{os.getpid()}.tmp", "wb") as f:
        f.write(b"half")
    assert cachefiles.write(path, b"whole")
    assert cachefiles.read(path) == b"whole"
    assert os.listdir(tmp_path / "c") == ["e"]


def test_a_directory_others_can_write_is_not_trusted(tmp_path):
    os.mkdir(tmp_path / "c", 0o700)
    path = str(tmp_path / "c" / "e")
    assert cachefiles.write(path, b"data")
    os.chmod(tmp_path / "c", 0o777)
    assert cachefiles.read(path) is None
    assert not cachefiles.write(path, b"other")


def test_an_entry_that_is_a_symlink_is_not_followed(tmp_path):
    os.mkdir(tmp_path / "c", 0o700)
    (tmp_path / "planted").write_bytes(b"planted program")
    os.symlink(tmp_path / "planted", tmp_path / "c" / "e")
    assert cachefiles.read(str(tmp_path / "c" / "e")) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file away")
def test_an_entry_of_another_user_or_writable_by_others_is_not_trusted(tmp_path):
    os.mkdir(tmp_path / "c", 0o700)
    path = str(tmp_path / "c" / "e")
    assert cachefiles.write(path, b"data")
    os.chmod(path, 0o622)
    assert cachefiles.read(path) is None
    os.chmod(path, 0o600)
    os.chown(path, 12345, 12345)
    assert cachefiles.read(path) is None
