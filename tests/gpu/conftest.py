"""Fixtures for GPU tests: the fake driver (fakedriver.py) and a glibc image holding a probe
(probeimage.py)."""
from __future__ import annotations

import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import fakedriver  # noqa: E402
from probeimage import build_probe_rootfs  # noqa: E402


@pytest.fixture
def fake_driver(tmp_path):
    return fakedriver.build(str(tmp_path / "fake-driver"))


@pytest.fixture(scope="session")
def probe_rootfs(tmp_path_factory):
    if not shutil.which("gcc"):
        pytest.skip("needs gcc to build the probe")
    return build_probe_rootfs(str(tmp_path_factory.mktemp("probe") / "rootfs"))


@pytest.fixture(scope="session")
def minictr_cli() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "minictr")
    return exe if os.path.exists(exe) else shutil.which("minictr") or exe
