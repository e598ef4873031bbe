"""Shared test configuration: tier markers skip with a one-line reason when their need is absent."""
import os
import shutil
import subprocess
import tempfile

import pytest


def pytest_collection_modifyitems(config, items):
    not_root = pytest.mark.skip(reason="needs root (run the suite as root, as CI does)")
    for item in items:
        if "root" in item.keywords and os.geteuid() != 0:
            item.add_marker(not_root)


@pytest.fixture(scope="session")
def minictr_exe() -> str:
    """The installed entry point (its shebang names the venv's real interpreter)."""
    import sys

    exe = os.path.join(os.path.dirname(sys.executable), "minictr")
    if not os.path.exists(exe):
        exe = shutil.which("minictr")
    assert exe, "minictr is not installed in this environment: run make install"
    return exe


PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def rootless_venv(tmp_path_factory) -> str:
    """A venv with minictr installed (not editable), readable by every user: the rootless
    tier's users and the Slurm tier's job user run minictr from it (the checkout and its .venv
    may sit under /root, which they cannot read)."""
    _need(os.geteuid() == 0, "needs root to create the test users")
    _need(os.path.exists("/usr/bin/python3"), "needs /usr/bin/python3 (Debian's python3)")
    _need(bool(shutil.which("runuser")), "needs runuser (util-linux)")
    base = tempfile.mkdtemp(prefix="minictr-rootless-venv-", dir="/tmp")
    os.chmod(base, 0o755)
    venv = os.path.join(base, "venv")
    subprocess.run(["/usr/bin/python3", "-m", "venv", venv], check=True, capture_output=True)
    res = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", PROJECT],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"installing minictr for the rootless users failed:\n{res.stderr[-2000:]}")
    # the launchers users get from `make install` (-I -S, minictr/launchers.py), not pip's
    subprocess.run([os.path.join(venv, "bin", "python"), "-m", "minictr.launchers"], check=True,
                   capture_output=True)
    subprocess.run(["chmod", "-R", "a+rX", base], check=True)
    yield venv
    shutil.rmtree(base, ignore_errors=True)


def _need(cond: bool, reason: str) -> None:
    if not cond:
        pytest.skip(reason)
