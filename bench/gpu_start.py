"""End-to-end cost of `--gpus all`: `minictr run --rm --gpus all IMAGE cat /dev/null` against the
same run without GPUs, paired run by run, with the fake driver of tests/gpu/fakedriver.py (no
GPU here). Unlike bench/gpu.py (discovery + edits in one process), this includes importing the
GPU code, the extra mounts and device nodes, and the generated ld.so.cache.

    .venv/bin/python -m bench gpu_start [--iterations 30] [--tmpdir DIR] [--against TREE]

``--tmpdir`` puts the store and the state directory there (default: the system's temporary
directory): each injected file needs a mount point created in the container's writable layer,
so the cost of creating a file on that filesystem (printed) is part of the result.
``--against TREE`` runs another checkout's ``.venv/bin/minictr`` in the same rounds, all four
runs of a round in random order: before and after under the same load. CPU time (the child's
user + sys) moves less with the load than wall time.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench gpu_start")
    ap.add_argument("--iterations", "-n", type=int, default=30)
    ap.add_argument("--tmpdir", default=None,
                    help="where the store and state go (default: the system's temporary dir)")
    ap.add_argument("--against", metavar="TREE", default=None,
                    help="another checkout (with its .venv) run in the same rounds, in random "
                    "order with this one: a before/after on one noisy machine")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("gpu_start: skipped: needs root (device nodes of the fake driver)")
        return 0
    sys.path.insert(0, ROOT)
    from tests import images
    from tests.gpu import fakedriver

    trees = {"": os.path.join(os.path.dirname(sys.executable), "minictr")}
    if args.against:
        trees = {"this tree, ": trees[""],
                 f"{args.against}, ": os.path.join(args.against, ".venv/bin/minictr")}
    with tempfile.TemporaryDirectory(prefix="minictr-bench-gpu-", dir=args.tmpdir) as work:
        create_us = _create_cost(work)
        drv = fakedriver.build(os.path.join(work, "driver"))
        image = images.build_glibc_image(os.path.join(work, "images"))
        command = ["glibc:bench", "/bin/cat", "/dev/null"]     # the image has no /bin/true
        runs = {}
        for i, (label, exe) in enumerate(trees.items()):
            env = dict(os.environ, MINICTR_ROOT=os.path.join(work, f"store{i}"),
                       MINICTR_STATE=os.path.join(work, f"state{i}"),
                       MINICTR_NVIDIA_DRIVER_ROOT=drv.driver_root,
                       MINICTR_NVIDIA_DEV_ROOT=drv.dev_root,
                       MINICTR_NVIDIA_PROC_ROOT=drv.proc_root)
            subprocess.run([exe, "load", "--tag", "glibc:bench", image.ref], env=env,
                           check=True, capture_output=True)
            runs[f"{label}no GPU"] = ([exe, "run", "--rm", *command], env)
            runs[f"{label}--gpus all"] = ([exe, "run", "--rm", "--gpus", "all", *command], env)
        for cmd, env in runs.values():      # warm-up (the discovery cache), fail loudly
            subprocess.run(cmd, env=env, check=True, capture_output=True)
        wall: dict[str, list[float]] = {k: [] for k in runs}
        cpu: dict[str, list[float]] = {k: [] for k in runs}
        order = list(runs)
        for _ in range(args.iterations):
            random.shuffle(order)
            for name in order:
                w, c = _timed(*runs[name])
                wall[name].append(w)
                cpu[name].append(c)
    print(f"load average {os.getloadavg()[0]:.1f}; {args.iterations} rounds, runs in random "
          f"order within a round; creating a file where the store is: {create_us:.0f} us "
          "(median of 20)")
    print("| run | median wall ms | min wall ms | median CPU ms |\n|---|---:|---:|---:|")
    for name in runs:
        print(f"| {name} | {statistics.median(wall[name]):.1f} | {min(wall[name]):.1f} | "
              f"{statistics.median(cpu[name]):.1f} |")
    for label in trees:
        g, n = f"{label}--gpus all", f"{label}no GPU"
        dw = [a - b for a, b in zip(wall[g], wall[n])]
        dc = [a - b for a, b in zip(cpu[g], cpu[n])]
        print(f"| {label}added by --gpus all (median of paired differences) | "
              f"{statistics.median(dw):.1f} | | {statistics.median(dc):.1f} |")
    return 0


def _timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall ms, CPU ms: the child's user + sys, from wait4) of one run."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    wall = (time.perf_counter() - t0) * 1000
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}: {stderr.decode()[-500:]}")
    return wall, (usage.ru_utime + usage.ru_stime) * 1000


def _create_cost(directory: str) -> float:
    """Median microseconds of open(O_CREAT|O_EXCL) + close of a new file in ``directory``."""
    times = []
    for i in range(20):
        path = os.path.join(directory, f"create-{i}")
        t0 = time.perf_counter()
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        times.append((time.perf_counter() - t0) * 1e6)
        os.unlink(path)
    return statistics.median(times)


if __name__ == "__main__":
    sys.exit(main())
