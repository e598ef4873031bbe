"""How long GPU injection adds to `minictr run --gpus`: discovery + edits, median of N runs.

    .venv/bin/python bench/gpu.py [--runs 200] [--real]

Against the fake driver (tests/gpu/fakedriver.py) whose ld.so.cache also holds every entry of
this host's /etc/ld.so.cache (a realistic size), and an in-memory Debian image whose own
ld.so.cache is this host's too. The image is read from memory, so the store's read cost is not
included. --real also measures the host's own driver when /proc/driver/nvidia/version exists.
Target: <= 2 ms for discovery + edits.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests", "gpu"))

from minictr import api  # noqa: E402
from minictr.gpu import discover, driver_cache, ldcache, resolve  # noqa: E402
from minictr.gpu.request import GpuSettings  # noqa: E402
from minictr.spec import gpu_request  # noqa: E402
from minictr.spec.options import RunOptions  # noqa: E402


def _median_ms(fn, runs: int) -> tuple[float, float]:
    """(median wall time, median CPU time of this process) in ms. On a loaded machine the
    wall time includes waiting for a CPU; the CPU time is the work itself."""
    wall, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        cpu.append((time.process_time() - c0) * 1e3)
        wall.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def _host_cache() -> tuple[bytes, list]:
    try:
        with open("/etc/ld.so.cache", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return b"", []
    return data, ldcache.parse(data)


def bench_fake(runs: int) -> None:
    import fakedriver

    cache_bytes, host_entries = _host_cache()
    tmp = tempfile.mkdtemp(prefix="minictr-bench-gpu-")
    fake = fakedriver.build(tmp, extra_cache_entries=[
        e for e in host_entries if not e.key.startswith(("libcuda", "libnvidia"))])
    image = {"/etc/os-release": b"ID=debian\n", "/etc/ld.so.cache": cache_bytes or None}
    spec = api._gpu_request({"process": {"args": ["sh"], "env": ["PATH=/bin"]},
                             "root": {"path": "/"}, "mounts": []},
                            RunOptions(image="bench", gpus="0"), {})
    settings = GpuSettings(fake.roots)
    runs_done = [0]

    def edits():
        # the one request path, then the cache written where the runtime writes it at
        # create: a fresh directory each time, as each container gets its own
        runs_done[0] += 1
        state = os.path.join(tmp, f"state-{runs_done[0]}")
        got = resolve.resolve(spec, gpu_request.find(spec), read_file=image.get,
                              files_dir=state, settings=settings, cache_dir=cache_dir)
        os.mkdir(state)
        for name, data in got.files:
            with open(os.path.join(state, name), "wb") as f:
                f.write(data)
        return got

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          f"driver ld.so.cache entries: {len(host_entries) + 4}, image cache entries: "
          f"{len(host_entries)}, runs: {runs}")
    cache_dir = os.path.join(tmp, "discovery-cache")
    for name, fn in (("discover", lambda: discover.discover(fake.roots)),
                     ("discover from the cache (witnesses checked)",
                      lambda: driver_cache.discover_cached(fake.roots, cache_dir)),
                     ("resolve (--gpus 0) + writing the cache", edits),
                     ("ldcache.splice (image cache + injected)",
                      lambda: ldcache.splice(cache_bytes, [ldcache.Entry(
                          "libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1")]))):
        fn()                                   # warm: imports, page cache
        med, p90 = _median_ms(fn, runs)
        print(f"  {name:42s} median wall {med:6.3f} ms  cpu {p90:6.3f} ms")


def bench_real(runs: int) -> None:
    if not os.path.exists("/proc/driver/nvidia/version"):
        print("real driver: none on this host")
        return
    roots = discover.DriverRoots.from_args(os.environ.get("MINICTR_NVIDIA_DRIVER_ROOT"), None,
                                           None)
    med, p90 = _median_ms(lambda: discover.discover(roots), runs)
    print(f"  {'real driver discover':42s} median wall {med:6.3f} ms  cpu {p90:6.3f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--real", action="store_true")
    args = p.parse_args()
    bench_fake(args.runs)
    if args.real:
        bench_real(args.runs)


if __name__ == "__main__":
    main()
