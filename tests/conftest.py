"""Shared test configuration: tier markers skip with a one-line reason when their need is absent."""
import os
import shutil

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
