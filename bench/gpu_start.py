"""End-to-end cost of `--gpus all`: `minictr run --rm --gpus all IMAGE cat /dev/null` against the
same run without GPUs, paired run by run, with the fake driver of tests/gpu/fakedriver.py (no
GPU here). Unlike bench/gpu.py (discovery + edits in one process), this includes importing the
GPU code, the extra mounts and device nodes, and the generated ld.so.cache.

    .venv/bin/python -m bench gpu_start [--iterations 30] [--tmpdir DIR]

``--tmpdir`` puts the store and the state directory there (default: the system's temporary
directory): each injected file needs a mount point created in the container's writable layer,
so the cost of creating a file on that filesystem (printed) is part of the result.
"""
from __future__ import annotations

import argparse
import os
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
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("gpu_start: skipped: needs root (device nodes of the fake driver)")
        return 0
    sys.path.insert(0, ROOT)
    from tests import images
    from tests.gpu import fakedriver

    exe = os.path.join(os.path.dirname(sys.executable), "minictr")
    with tempfile.TemporaryDirectory(prefix="minictr-bench-gpu-", dir=args.tmpdir) as work:
        create_us = _create_cost(work)
        drv = fakedriver.build(os.path.join(work, "driver"))
        image = images.build_glibc_image(os.path.join(work, "images"))
        env = dict(os.environ, MINICTR_ROOT=os.path.join(work, "store"),
                   MINICTR_STATE=os.path.join(work, "state"),
                   MINICTR_NVIDIA_DRIVER_ROOT=drv.driver_root,
                   MINICTR_NVIDIA_DEV_ROOT=drv.dev_root, MINICTR_NVIDIA_PROC_ROOT=drv.proc_root)
        subprocess.run([exe, "load", "--tag", "glibc:bench", image.ref], env=env, check=True,
                       capture_output=True)
        command = ["glibc:bench", "/bin/cat", "/dev/null"]     # the image has no /bin/true
        runs = {"no GPU": [exe, "run", "--rm", *command],
                "--gpus all": [exe, "run", "--rm", "--gpus", "all", *command]}
        for cmd in runs.values():           # warm-up, and fail loudly if a run fails
            subprocess.run(cmd, env=env, check=True, capture_output=True)
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.iterations):
            for name, cmd in runs.items():
                t0 = time.perf_counter()
                subprocess.run(cmd, env=env, check=True, capture_output=True)
                times[name].append((time.perf_counter() - t0) * 1000)
        diffs = [g - n for g, n in zip(times["--gpus all"], times["no GPU"])]
    print(f"load average {os.getloadavg()[0]:.1f}; {args.iterations} paired iterations; "
          f"creating a file where the store is: {create_us:.0f} us (median of 20)")
    print("| run | median ms | min ms |\n|---|---:|---:|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.1f} | {min(t):.1f} |")
    print(f"| added by --gpus all (median of paired differences) | "
          f"{statistics.median(diffs):.1f} | |")
    return 0


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
