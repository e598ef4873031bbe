"""runtime/cleanup.rmtree: shutil.rmtree(ignore_errors=True) without shutil, links not followed."""
import os

from minictr.runtime.cleanup import rmtree


def test_removes_the_tree_and_only_the_links_to_outside(tmp_path):
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "file").write_text("x")
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("y")
    (tree / "file").write_text("z")
    os.symlink(outside, tree / "a" / "dirlink")
    os.symlink(outside / "keep" / "file", tree / "filelink")
    os.symlink("/nonexistent", tree / "dangling")
    os.mkfifo(tree / "fifo")
    rmtree(str(tree))
    assert not tree.exists()
    assert (outside / "keep" / "file").read_text() == "x"


def test_a_link_given_as_the_tree_is_removed_not_followed(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "f").write_text("x")
    os.symlink(tmp_path / "dir", tmp_path / "link")
    rmtree(str(tmp_path / "link"))
    assert not os.path.lexists(tmp_path / "link")
    assert (tmp_path / "dir" / "f").exists()


def test_a_missing_tree_is_no_error(tmp_path):
    rmtree(str(tmp_path / "missing"))
