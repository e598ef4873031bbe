"""minictr/launchers.py: the `python3 -I -S` launchers `make install` writes."""
import os
import subprocess
import sys

from minictr import launchers


def test_launcher_runs_isolated_with_the_paths_written_in(tmp_path):
    paths = launchers.import_paths()
    written = launchers.write(str(tmp_path), os.path.realpath(sys.executable), paths)
    assert sorted(os.path.basename(p) for p in written) == ["minictr", "minictr-runc"]
    text = (tmp_path / "minictr").read_text()
    assert text.startswith(f"#!{os.path.realpath(sys.executable)} -IS\n")
    assert "from minictr.cli import entry" in text
    # a PYTHONPATH of the caller's does not reach it (-I), and it still finds minictr
    env = dict(os.environ, PYTHONPATH="/nonexistent")
    res = subprocess.run([str(tmp_path / "minictr"), "--help"], capture_output=True, text=True,
                         env=env)
    assert res.returncode == 0, res.stderr
    assert "run" in res.stdout
    res = subprocess.run([str(tmp_path / "minictr-runc"), "--version"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr


def test_import_paths_follow_pth_path_lines_but_not_import_lines(tmp_path, monkeypatch):
    site = tmp_path / "site-packages"
    src = tmp_path / "src"
    site.mkdir()
    src.mkdir()
    (site / "a.pth").write_text(f"# comment\n{src}\nimport os; os.environ['X'] = '1'\n")
    (site / "b.pth").write_text("missing-dir\n")
    monkeypatch.setattr(launchers.sysconfig, "get_paths",
                        lambda: {"purelib": str(site), "platlib": str(site)})
    assert launchers.import_paths() == [str(site), str(src)]


def test_check_fails_loudly_when_minictr_cannot_be_imported(tmp_path):
    try:
        launchers.check("/usr/bin/python3" if os.path.exists("/usr/bin/python3")
                        else sys.executable, [str(tmp_path)])
    except SystemExit as err:
        assert "cannot import minictr" in str(err)
    else:
        raise AssertionError("check passed without minictr on the path")
