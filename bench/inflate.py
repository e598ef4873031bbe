"""gzip inflaters side by side on one layer blob: how image/layerstream.py chose python-isal.

    python -m bench.inflate [--layer FILE.tar.gz] [--reps N]

Each candidate inflates the whole blob (read into memory first) the way layerstream does:
``decompressobj(31).decompress(chunk, 1 MiB)`` over 256 KiB input chunks, on one thread.
rapidgzip, which inflates one stream on several threads, is timed with 1 and 2. ``gzip -dc``
is the floor `tar -xzf` stands on. Candidates that are not installed are skipped; isal is a
dependency, the others are ``pip install zlib-ng rapidgzip``. The default layer is the unpack
benchmark's Debian minbase (``python -m bench.unpack`` builds it).
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import time
import zlib

IN_CHUNK, OUT_CHUNK = 256 << 10, 1 << 20


def streamed(module, data: bytes) -> int:
    decoder, size = module.decompressobj(31), 0
    for start in range(0, len(data), IN_CHUNK):
        chunk = data[start:start + IN_CHUNK]
        while chunk:
            size += len(decoder.decompress(chunk, OUT_CHUNK))
            chunk = decoder.unconsumed_tail
    return size


def candidates(data: bytes, layer: str) -> dict:
    found = {"zlib": lambda: streamed(zlib, data)}
    try:
        from isal import isal_zlib
        found["python-isal (igzip)"] = lambda: streamed(isal_zlib, data)
    except ImportError:
        pass
    try:
        from zlib_ng import zlib_ng
        found["zlib-ng"] = lambda: streamed(zlib_ng, data)
    except ImportError:
        pass
    try:
        import rapidgzip

        def rapid(threads: int) -> int:
            f, size = rapidgzip.RapidgzipFile(io.BytesIO(data), parallelization=threads), 0
            while block := f.read(OUT_CHUNK):
                size += len(block)
            return size
        found["rapidgzip, 1 thread"] = lambda: rapid(1)
        found["rapidgzip, 2 threads"] = lambda: rapid(2)
    except ImportError:
        pass
    found["gzip -dc (process)"] = lambda: len(subprocess.run(["gzip", "-dc", layer],
                                                             capture_output=True).stdout)
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", default="/tmp/minictr-bench-unpack/one.tar.gz")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    if not os.path.exists(args.layer):
        print(f"no {args.layer}: run python -m bench.unpack first, or give --layer")
        return 1
    with open(args.layer, "rb") as f:
        data = f.read()
    runs = candidates(data, args.layer)
    times: dict[str, list[float]] = {name: [] for name in runs}
    load = os.getloadavg()
    for _ in range(args.reps):
        for name, run in runs.items():          # interleaved: load hits all alike
            start = time.perf_counter()
            size = run()
            times[name].append(time.perf_counter() - start)
    print(f"{args.layer}: {len(data) / 1e6:.1f} MB gzip, {size / 1e6:.1f} MB out, {args.reps} "
          f"reps, python {sys.version.split()[0]}, load {load} / {os.getloadavg()}")
    print("| inflater | median ms | min ms |\n|---|---:|---:|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t) * 1000:.0f} | {min(t) * 1000:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
