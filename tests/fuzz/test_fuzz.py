"""Each fuzz target under atheris, seeded from the project's own image builders, for
MINICTR_FUZZ_SECONDS seconds (default 5; `make fuzz` runs them longer). A crash fails the test
with the input (hex) and the traceback; test_regressions.py is where it then stays as a fixed
case."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.fuzz import seeds, targets

HERE = os.path.dirname(os.path.abspath(__file__))
SECONDS = int(os.environ.get("MINICTR_FUZZ_SECONDS", "5"))
MAX_LEN = {"tar": 64 << 10, "layer": 64 << 10, "elf": 64 << 10, "ldcache": 64 << 10,
           "squashfs": 64 << 10, "sif": 64 << 10}

try:
    import atheris  # noqa: F401
except ImportError:
    atheris = None


@pytest.mark.skipif(atheris is None, reason="needs atheris (pip install atheris; in the "
                    "test extras for x86-64 Python < 3.13)")
@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_target(name, tmp_path):
    corpus = tmp_path / "corpus"
    seeds.write_corpus(name, str(corpus))
    # the layer target writes a store per input: on tmpfs its fsyncs cost nothing
    scratch = tempfile.mkdtemp(prefix="minictr-fuzz-", dir="/dev/shm" if
                               os.path.isdir("/dev/shm") else str(tmp_path))
    cmd = [sys.executable, os.path.join(HERE, "run.py"), name, str(corpus),
           f"-max_total_time={SECONDS}", f"-max_len={MAX_LEN.get(name, 16 << 10)}",
           f"-artifact_prefix={tmp_path}/", "-rss_limit_mb=2048", "-timeout=20",
           "-print_final_stats=1"]
    env = {**os.environ, "MINICTR_FUZZ_SCRATCH": scratch}
    # the subprocess timeout guards against a hang of the harness itself; libFuzzer's own
    # -timeout reports an input that runs too long as a crash
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env,
                             timeout=SECONDS + 120)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    crashes = glob.glob(str(tmp_path / "crash-*")) + glob.glob(str(tmp_path / "timeout-*")) \
        + glob.glob(str(tmp_path / "oom-*"))
    if res.returncode != 0 or crashes:
        found = ""
        for path in crashes:
            with open(path, "rb") as f:
                found += f"\n{os.path.basename(path)}: {f.read()[:512].hex()}"
        pytest.fail(f"fuzz target {name} failed (exit {res.returncode}):{found}\n"
                    f"{res.stderr[-6000:]}")
