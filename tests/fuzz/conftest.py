"""The fuzz tier (tests/fuzz/README.md): each target under atheris for a bounded time."""
import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.fspath.basename == "test_fuzz.py":
            item.add_marker(pytest.mark.fuzz)
