"""Soak, chaos and concurrency (issue 13 item 3), through the CLI as root.

- Hundreds of runs of four kinds (plain; with memory, pids and cpu limits and so a device
  filter; with --gpus all on the fake driver; with a volume), interleaved; before and after,
  a census of what containers can leave on the host (tests/soak/census.py): mounts, cgroup
  directories, BPF device programs, state entries and names, writable layers, store
  temporaries, $TMPDIR, zombies, processes. The difference must be empty.
- Loads: many at once of one image into one empty store; `gc` and `rmi` while loads and runs
  go on; the launcher SIGKILLed at random moments of a load. After each, the store holds only
  complete entries, `gc` removes the rest, and a run of the image lists exactly the files (with
  their sha256) a run from a clean store lists.
- Names: many runs with the same --name at once: exactly one gets it.

MINICTR_SOAK_RUNS sets the size (CI default 100 runs of each kind; `make soak` runs 500).
Counting the host's BPF programs and zombies assumes no one else starts containers meanwhile,
as in CI; a foreign one is waited out (up to a minute) before it counts as ours.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time

import pytest

from tests.soak import census
from tests.soak.conftest import LISTING, RUNS


def _settled_diff(before: dict, c: census.Census) -> dict:
    """The census difference, waiting (a bounded guard, not a timing measurement) for what
    other processes on the machine may hold briefly: zombies not yet reaped, a foreign
    container's BPF program."""
    for _ in range(120):
        left = census.diff(before, c.take())
        if not left or set(left) - {"zombies", "bpf programs"}:
            return left
        time.sleep(0.5)
    return left


def _store_is_consistent(soak) -> None:
    """Every layer entry is complete (has its layer.json), every image record's layers and
    blobs exist, and no temporary is left."""
    layers = os.path.join(soak.root, "layers")
    for name in os.listdir(layers) if os.path.isdir(layers) else ():
        assert os.path.isfile(os.path.join(layers, name, "layer.json")), name
    records = os.path.join(soak.root, "images", "records")
    for name in os.listdir(records) if os.path.isdir(records) else ():
        with open(os.path.join(records, name)) as f:
            record = json.load(f)
        for layer in record["layers"]:
            assert os.path.isdir(os.path.join(layers, layer["chain_id"][7:])), layer
        for digest in (record["manifest_digest"], record["id"]):
            assert os.path.isfile(os.path.join(soak.root, "blobs", "sha256", digest[7:]))
    assert not os.listdir(os.path.join(soak.root, "tmp"))


@pytest.fixture(scope="module")
def loaded(soak, busybox, chaos_layout):
    soak("load", "--tag", "soak:busybox", busybox.ref, check=True)
    soak("load", "--tag", "soak:chaos", f"oci:{chaos_layout}:latest", check=True)
    reference = soak.listing("soak:chaos")
    assert "/data/blob5" in reference and "/data/blob0" not in reference
    return {"chaos": reference}


def test_hundreds_of_runs_leave_nothing(soak, loaded, fake_driver, tmp_path):
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "in").write_text("from the host\n")
    sh = ["sh", "-c", "cat /data/in >/dev/null 2>&1; exit 0", soak.marker]
    kinds = {
        "plain": ([], {}),
        "limits": (["--memory", "64m", "--pids-limit", "64", "--cpus", "0.5"], {}),
        "gpus": (["--gpus", "all"], fake_driver.env()),
        "volume": (["-v", f"{volume}:/data:ro"], {}),
    }
    c = soak.census()
    before = c.take()
    failures = []
    for i in range(RUNS):
        for kind, (args, env) in kinds.items():
            res = soak("run", "--rm", "--cgroup-parent", soak.cgroup_parent, *args,
                       "soak:busybox", *sh, env=env)
            if res.returncode != 0 or res.stderr:
                failures.append((kind, i, res.returncode, res.stderr[-300:]))
    assert not failures, failures[:5]
    assert json.loads(soak("ps", "-a", "--format", "json", check=True).stdout) == []
    assert _settled_diff(before, c) == {}


def test_many_loads_of_one_image_into_an_empty_store_at_once(soak, chaos_layout, loaded,
                                                             tmp_path):
    root = str(tmp_path / "store")
    loads = [soak.popen("--root", root, "load", "--tag", f"x:{i}", f"oci:{chaos_layout}:latest",
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(8)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in loads]
    assert all(code == 0 for code, _ in results), results
    layers = os.listdir(os.path.join(root, "layers"))
    assert len(layers) == 4                          # each unpacked once, under one name
    assert not os.listdir(os.path.join(root, "tmp"))
    images = json.loads(soak("--root", root, "images", "--format", "json", check=True).stdout)
    assert len({r["id"] for r in images}) == 1 and len(images) == 8
    listing = soak("--root", root, "run", "--rm", "x:3", "sh", "-c",
                   LISTING, check=True)
    assert listing.stdout == loaded["chaos"]


def test_gc_and_rmi_while_loads_and_runs_go_on(soak, churn_layout, loaded):
    """The known bug: gc during a load deleted layers the load had found already stored, and
    the load failed. Here each load finds stored the layers the rmi before it left
    unreferenced, while gc runs in a loop."""
    rounds = max(10, RUNS // 2)
    errors: list = []
    stop = threading.Event()

    def loads_and_rmis():
        for i in range(rounds):
            res = soak("load", "--tag", f"churn:{i}", f"oci:{churn_layout}:latest")
            if res.returncode:
                errors.append(("load", i, res.stderr))
            res = soak("rmi", f"churn:{i}")
            if res.returncode:
                errors.append(("rmi", i, res.stderr))
        stop.set()

    def gcs():
        while not stop.is_set():
            res = soak("gc")
            if res.returncode:
                errors.append(("gc", res.stderr))

    def runs():
        while not stop.is_set():
            res = soak("run", "--rm", "soak:busybox", "true")
            if res.returncode:
                errors.append(("run", res.stderr))

    threads = [threading.Thread(target=t) for t in (loads_and_rmis, gcs, runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    soak("gc", check=True)
    _store_is_consistent(soak)
    assert soak.listing("soak:chaos") == loaded["chaos"]


def test_runs_with_the_same_name_at_once(soak, loaded):
    c = soak.census()
    before = c.take()
    for round_ in range(3):
        runs = [soak.popen("run", "--rm", "--name", "soak-same", "soak:busybox", "sleep", "2",
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for _ in range(8)]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in runs]
        winners = [r for r in results if r[0] == 0]
        assert len(winners) == 1, results
        assert all(code == 125 and "already in use" in err
                   for code, err in results if code != 0), results
    soak("gc", check=True)
    assert _settled_diff(before, c) == {}


def test_sigkill_during_load_leaves_nothing_trusted(soak, chaos_layout, loaded, tmp_path):
    rng = random.Random(int(os.environ.get("MINICTR_CHAOS_SEED", "3")))
    root = str(tmp_path / "store")
    start = time.monotonic()
    soak("--root", root, "load", "--tag", "probe:time", f"oci:{chaos_layout}:latest", check=True)
    full = time.monotonic() - start            # how long a whole load takes here: kill within it
    soak("--root", root, "rmi", "probe:time", check=True)
    soak("--root", root, "gc", check=True)
    kills = max(10, RUNS // 2)
    for i in range(kills):
        proc = soak.popen("--root", root, "load", "--tag", f"k:{i}",
                          f"oci:{chaos_layout}:latest", stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0, full * 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if i % 3 == 2:
            soak("--root", root, "gc", check=True)
    # whatever a killed load left: complete entries only, or temporaries gc removes
    layers = os.path.join(root, "layers")
    for name in os.listdir(layers) if os.path.isdir(layers) else ():
        assert os.path.isfile(os.path.join(layers, name, "layer.json")), name
    soak("--root", root, "gc", check=True)
    assert not os.listdir(os.path.join(root, "tmp"))
    soak("--root", root, "load", "--tag", "k:final", f"oci:{chaos_layout}:latest", check=True)
    listing = soak("--root", root, "run", "--rm", "k:final", "sh", "-c",
                   LISTING, check=True)
    assert listing.stdout == loaded["chaos"]
