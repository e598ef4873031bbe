"""End-to-end cost of `--gpus all`: `minictr run --rm --gpus all IMAGE cat /dev/null` against the
same run without GPUs, paired run by run, with the fake driver of tests/gpu/fakedriver.py (no
GPU here). Unlike bench/gpu.py (discovery + edits in one process), this includes importing the
GPU code, the extra mounts and device nodes, and the generated ld.so.cache.

    .venv/bin/python -m bench gpu_start [--iterations 30]
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
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("gpu_start: skipped: needs root (device nodes of the fake driver)")
        return 0
    sys.path.insert(0, ROOT)
    from tests import images
    from tests.gpu import fakedriver

    exe = os.path.join(os.path.dirname(sys.executable), "minictr")
    with tempfile.TemporaryDirectory(prefix="minictr-bench-gpu-") as work:
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
    print(f"load average {os.getloadavg()[0]:.1f}; {args.iterations} paired iterations")
    print("| run | median ms | min ms |\n|---|---:|---:|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.1f} | {min(t):.1f} |")
    print(f"| added by --gpus all (median of paired differences) | "
          f"{statistics.median(diffs):.1f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
