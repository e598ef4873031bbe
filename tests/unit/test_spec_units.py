"""Docker's size, CPU and cpuset units (minictr/spec/units.py)."""
import pytest

from minictr.errors import SpecError
from minictr.spec import units


@pytest.mark.parametrize("text,expected", [
    ("512m", 536870912), ("512M", 536870912), ("512mb", 536870912), ("512MiB", 536870912),
    ("1g", 1 << 30), ("2G", 2 << 30), ("100k", 102400), ("100", 100), ("100b", 100),
    ("1.5g", int(1.5 * (1 << 30))), ("1t", 1 << 40),
])
def test_parse_bytes(text, expected):
    assert units.parse_bytes(text, "--memory") == expected


@pytest.mark.parametrize("text", ["", "m", "12x", "-5m", "1..5g", "1 g b", "ten"])
def test_parse_bytes_rejects(text):
    with pytest.raises(SpecError, match="--memory"):
        units.parse_bytes(text, "--memory")


@pytest.mark.parametrize("memory,swap,expected", [
    (None, None, (None, None)),
    ("512m", None, (536870912, 2 * 536870912)),      # docker: as much swap again
    ("512m", "1g", (536870912, 1 << 30)),            # total memory + swap
    ("512m", "512m", (536870912, 536870912)),        # no swap at all
    ("512m", "-1", (536870912, -1)),                 # unlimited swap
])
def test_parse_memory(memory, swap, expected):
    assert units.parse_memory(memory, swap) == expected


@pytest.mark.parametrize("memory,swap,match", [
    (None, "1g", "--memory-swap needs --memory"),
    ("1g", "512m", "less than --memory"),
    ("1m", None, "minimum memory"),
    ("lots", None, "--memory"),
    ("1g", "lots", "--memory-swap"),
])
def test_parse_memory_rejects(memory, swap, match):
    with pytest.raises(SpecError, match=match):
        units.parse_memory(memory, swap)


@pytest.mark.parametrize("cpus,quota", [(0.5, 50000), (1, 100000), (2.25, 225000), (0.01, 1000)])
def test_cpu_quota(cpus, quota):
    assert units.cpu_quota(cpus) == (quota, 100000)


@pytest.mark.parametrize("cpus", [0, -1, 0.001])
def test_cpu_quota_rejects(cpus):
    with pytest.raises(SpecError, match="--cpus"):
        units.cpu_quota(cpus)


@pytest.mark.parametrize("text", ["0", "0-3", "0-3,6", "1,2,3", "0-0", "0-3, 6"])
def test_parse_cpuset(text):
    assert units.parse_cpuset(text) == text.replace(" ", "")


@pytest.mark.parametrize("text", ["", "a", "3-1", "0-", "-1", "0,,1", "0-3-5", "1.5"])
def test_parse_cpuset_rejects(text):
    with pytest.raises(SpecError, match="--cpuset-cpus"):
        units.parse_cpuset(text)


def test_check_range():
    assert units.check_range(2, (2, 10), "--x") == 2
    with pytest.raises(SpecError, match="--x 11: must be between 2 and 10"):
        units.check_range(11, (2, 10), "--x")
