"""The soak tier's pulls (tests/soak/README.md): the launcher SIGKILLed at random moments of a
`minictr pull` from a real registry. Whatever it left is either a complete entry or a
temporary `gc` removes; a later pull works and a run of the image lists exactly the files
(with their sha256) a run from a clean store lists."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest

from registry_harness import skopeo_push
from tests.soak.conftest import LISTING, RUNS, Soak, build_chaos_layout

pytestmark = [pytest.mark.registry, pytest.mark.soak]


def test_sigkill_during_pull_leaves_nothing_trusted(empty_registry, tmp_path, minictr_exe):
    if os.geteuid() != 0:
        pytest.skip("needs root (the image is run to list its files)")
    layout = build_chaos_layout(str(tmp_path / "images"))
    ref = f"{empty_registry.host}/soak/chaos:latest"
    skopeo_push(layout, "latest", ref)
    soak = Soak(minictr_exe, str(tmp_path / "clean"))
    start = time.monotonic()
    soak("pull", "-q", "--tls-verify=false", ref, check=True)
    full = time.monotonic() - start
    reference = soak("run", "--rm", ref, "sh", "-c", LISTING, check=True).stdout
    assert "/data/blob5" in reference

    soak = Soak(minictr_exe, str(tmp_path / "killed"))
    rng = random.Random(int(os.environ.get("MINICTR_CHAOS_SEED", "4")))
    for i in range(max(10, RUNS // 4)):
        proc = soak.popen("pull", "-q", "--tls-verify=false", ref, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0, full * 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        layers = os.path.join(soak.root, "layers")
        for name in os.listdir(layers) if os.path.isdir(layers) else ():
            assert os.path.isfile(os.path.join(layers, name, "layer.json")), name
        if i % 3 == 2:
            soak("gc", check=True)
            soak("rmi", ref)                # a pull that finished: start from nothing again
            soak("gc", check=True)
    soak("gc", check=True)
    assert not os.listdir(os.path.join(soak.root, "tmp"))
    soak("pull", "-q", "--tls-verify=false", ref, check=True)
    assert soak("run", "--rm", ref, "sh", "-c", LISTING, check=True).stdout == reference
