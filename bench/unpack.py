"""Layer unpacking, side by side: GNU tar (the floor), Python tarfile, minictr, umoci.

    python -m bench.unpack [--rootfs DIR] [--work DIR] [--reps N]

Builds, under --work (default /tmp/minictr-bench-unpack, never inside the checkout):
  * a Debian bookworm minbase tree (``debootstrap --variant=minbase``) unless --rootfs is given,
    with apt's caches left out as in the debian:bookworm image;
  * ``one.tar.gz``: the whole tree as one gzip layer;
  * ``l1/l2/l3.tar.gz``: the same files split in three by size, layer 3 also holding whiteouts
    of files from layer 1 and one opaque marker;
  * OCI layouts of both images for umoci.
Then times each tool N times into fresh directories (interleaved, ``sync`` before each run,
removal not timed) and prints the median of each. umoci applies layers into one merged
rootfs and ``umoci unpack`` also writes an mtree manifest; minictr and tar write each layer to
its own directory (overlay lower-dir form).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import resource
import shutil
import stat
import statistics
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor

from minictr.image.unpack import open_layer, unpack_layer

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
APT_CACHES = ("var/cache/apt/archives", "var/cache/apt/pkgcache.bin",
              "var/cache/apt/srcpkgcache.bin", "var/lib/apt/lists")


def sh(*cmd: str, **kw) -> None:
    subprocess.run(cmd, check=True, **kw)


# ---------------------------------------------------------------- inputs
def make_rootfs(work: str) -> str:
    rootfs = os.path.join(work, "rootfs")
    if not os.path.isdir(os.path.join(rootfs, "usr")):
        sh("debootstrap", "--variant=minbase", "bookworm", rootfs, "http://deb.debian.org/debian",
           stdout=subprocess.DEVNULL)
    return rootfs


def list_tree(rootfs: str) -> list[tuple[str, int, bool]]:
    """(path, size, is_dir) in walk order (a directory, then what is in it, as Docker and
    buildkit write layers), apt caches left out."""
    entries = []
    for top, dirnames, filenames in os.walk(rootfs):
        rel_top = os.path.relpath(top, rootfs)
        dirnames[:] = sorted(d for d in dirnames
                             if os.path.normpath(os.path.join(rel_top, d)) not in APT_CACHES)
        for name in sorted(dirnames + filenames):
            path = os.path.normpath(os.path.join(rel_top, name))
            if path in APT_CACHES:
                continue
            st = os.lstat(os.path.join(rootfs, path))
            entries.append((path, st.st_size, stat.S_ISDIR(st.st_mode)))
    # os.walk lists a directory's children when it reaches it: sort so each dir precedes them
    entries.sort(key=lambda e: e[0].split("/"))
    return entries


def write_layer(out: str, rootfs: str, paths: list[str], whiteouts: tuple[str, ...] = ()) -> None:
    """A PAX tar (as Docker/buildkit write them), gzip -6 by gzip(1)."""
    with open(out, "wb") as blob:
        gz = subprocess.Popen(["gzip", "-6", "-n"], stdin=subprocess.PIPE, stdout=blob)
        with tarfile.open(fileobj=gz.stdin, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            for path in paths:
                tf.add(os.path.join(rootfs, path), arcname=path, recursive=False)
            for path in whiteouts:
                info = tarfile.TarInfo(path)
                info.mtime = 1_700_000_000
                tf.addfile(info)
        gz.stdin.close()
        if gz.wait():
            raise RuntimeError("gzip failed")


def make_layers(work: str, rootfs: str) -> dict[str, list[str]]:
    entries = list_tree(rootfs)
    one = os.path.join(work, "one.tar.gz")
    if not os.path.exists(one):
        write_layer(one, rootfs, [p for p, _, _ in entries])
    paths = [os.path.join(work, f"l{i}.tar.gz") for i in (1, 2, 3)]
    if not all(map(os.path.exists, paths)):
        total = sum(size for _, size, is_dir in entries if not is_dir)
        acc, parts = 0, [[], [], []]
        for path, size, is_dir in entries:
            if not is_dir:
                parts[min(2, acc * 3 // max(total, 1))].append(path)
                acc += size
        removed = [p for p in parts[0] if p.startswith("usr/bin/")][:40]
        whiteouts = tuple(os.path.join(os.path.dirname(p), ".wh." + os.path.basename(p))
                          for p in removed) + ("usr/share/doc/.wh..wh..opq",)
        for i, part in enumerate(parts):
            # layer 1 holds every directory; the others the directories they write into
            needed = {os.path.dirname(p) for p in part}
            if i == 2:
                needed |= {os.path.dirname(w) for w in whiteouts}
            ancestors = {"/".join(n.split("/")[:k]) for n in needed
                         for k in range(1, n.count("/") + 2)}
            members = set(part) | ({p for p, _, d in entries if d} if i == 0 else ancestors)
            write_layer(paths[i], rootfs, [p for p, _, _ in entries if p in members],
                        whiteouts if i == 2 else ())
    return {"one": [one], "three": paths}


def make_oci_layout(work: str, name: str, layers: list[str]) -> str:
    """An OCI image layout (image-layout.md) holding ``layers`` for umoci."""
    layout = os.path.join(work, f"oci-{name}")
    if os.path.exists(os.path.join(layout, "index.json")):
        return layout
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    descs, diff_ids = [], []
    for path in layers:
        with open(path, "rb") as f:
            data = f.read()
        diff_ids.append("sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest())
        descs.append({"mediaType": GZIP, **put(data)})
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **put(json.dumps(config).encode())}, "layers": descs}
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **put(json.dumps(manifest).encode()),
        "annotations": {"org.opencontainers.image.ref.name": "bench"}}]}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    return layout


# ---------------------------------------------------------------- the contenders
def tar_x(layer: str, dest: str) -> None:
    sh("tar", "--numeric-owner", "-xzf", layer, "-C", dest)


def tarfile_x(layer: str, dest: str) -> None:
    with tarfile.open(layer, "r:gz") as tf:
        tf.extractall(dest, numeric_owner=True)


def minictr_x(layer: str, dest: str) -> None:
    with open(layer, "rb") as blob:
        unpack_layer(open_layer(blob, GZIP), dest, rootless=False)


def per_layer(fn, layers: list[str], dest: str, parallel: bool = False) -> None:
    dests = [os.path.join(dest, str(i)) for i in range(len(layers))]
    for d in dests:
        os.mkdir(d)
    if not parallel:
        for layer, d in zip(layers, dests):
            fn(layer, d)
        return
    with ThreadPoolExecutor(len(layers)) as pool:
        for f in [pool.submit(fn, layer, d) for layer, d in zip(layers, dests)]:
            f.result()


def umoci(cmd: str, layout: str, dest: str) -> None:
    os.rmdir(dest)
    args = ["raw", "unpack"] if cmd == "raw" else ["unpack"]
    sh("umoci", *args, "--image", f"{layout}:bench", dest, stdout=subprocess.DEVNULL,
       stderr=subprocess.DEVNULL)


def contenders(layers: dict[str, list[str]], layouts: dict[str, str], have_umoci: bool,
               quick: bool = False):
    one, three = layers["one"][0], layers["three"]
    yield "1 layer", "tar -xzf (floor)", lambda d: tar_x(one, d)
    if quick:
        yield "1 layer", "minictr unpack_layer", lambda d: minictr_x(one, d)
        return
    yield "1 layer", "python tarfile extractall", lambda d: tarfile_x(one, d)
    yield "1 layer", "minictr unpack_layer", lambda d: minictr_x(one, d)
    if have_umoci:
        yield "1 layer", "umoci raw unpack", lambda d: umoci("raw", layouts["one"], d)
        yield "1 layer", "umoci unpack", lambda d: umoci("unpack", layouts["one"], d)
    yield "3 layers", "tar -xzf x3 sequential (floor)", lambda d: per_layer(tar_x, three, d)
    yield "3 layers", "minictr sequential", lambda d: per_layer(minictr_x, three, d)
    yield "3 layers", "minictr 3 threads", lambda d: per_layer(minictr_x, three, d, True)
    if have_umoci:
        yield "3 layers", "umoci raw unpack", lambda d: umoci("raw", layouts["three"], d)
        yield "3 layers", "umoci unpack", lambda d: umoci("unpack", layouts["three"], d)


def cpu_seconds() -> float:
    """user+sys of this process (all threads) and of its waited-for children (tar, gzip,
    umoci): under a loaded machine CPU time is steadier than wall time."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(work: str, runs, reps: int) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(wall, cpu) seconds per run; the contenders interleaved so drift hits all alike."""
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    scratch = os.path.join(work, "out")
    for _ in range(reps):
        for group, name, fn in runs:
            shutil.rmtree(scratch, ignore_errors=True)
            os.mkdir(scratch)
            os.sync()
            cpu, start = cpu_seconds(), time.perf_counter()
            fn(scratch)
            wall = time.perf_counter() - start
            times.setdefault((group, name), []).append((wall, cpu_seconds() - cpu))
    shutil.rmtree(scratch, ignore_errors=True)
    return times


def check_same_tree(layer: str, work: str) -> bool:
    """minictr's single-layer result has the same paths, types, modes, owners, sizes,
    mtimes and symlink targets as GNU tar's."""
    def describe(top):
        out = {}
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                out[os.path.relpath(p, top)] = (
                    st.st_mode, st.st_uid, st.st_gid, st.st_size if not os.path.isdir(p) else 0,
                    int(st.st_mtime), os.readlink(p) if os.path.islink(p) else None)
        return out
    a, b = os.path.join(work, "cmp-tar"), os.path.join(work, "cmp-minictr")
    for d in (a, b):
        shutil.rmtree(d, ignore_errors=True)
        os.mkdir(d)
    tar_x(layer, a)
    minictr_x(layer, b)
    same = describe(a) == describe(b)
    shutil.rmtree(a)
    shutil.rmtree(b)
    return same


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rootfs", help="tree to pack (default: debootstrap minbase bookworm)")
    ap.add_argument("--work", default="/tmp/minictr-bench-unpack")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true",
                    help="one layer, tar and minictr only (no tarfile, umoci, 3 layers)")
    args = ap.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    rootfs = args.rootfs or make_rootfs(args.work)
    layers = make_layers(args.work, rootfs)
    have_umoci = shutil.which("umoci") is not None and not args.quick
    layouts = ({k: make_oci_layout(args.work, k, v) for k, v in layers.items()}
               if have_umoci else {})
    sizes = {k: [os.path.getsize(p) >> 20 for p in v] for k, v in layers.items()}
    print(f"rootfs {rootfs}; layer sizes (MiB, gzip): {sizes}; cpus {os.cpu_count()}; "
          f"python {sys.version.split()[0]}; reps {args.reps}")
    print("minictr tree == tar tree:", check_same_tree(layers["one"][0], args.work))
    load_before = os.getloadavg()
    times = measure(args.work, list(contenders(layers, layouts, have_umoci, args.quick)),
                    args.reps)
    floors = {"1 layer": times[("1 layer", "tar -xzf (floor)")],
              "3 layers": times.get(("3 layers", "tar -xzf x3 sequential (floor)"))}
    print(f"load average before/after: {load_before} / {os.getloadavg()}")
    print("| layers | tool | wall median s | wall min s | wall x floor | cpu median s |")
    print("|---|---|---|---|---|---|")
    for (group, name), runs in times.items():
        wall = statistics.median(w for w, _ in runs)
        floor = statistics.median(w for w, _ in floors[group])
        print(f"| {group} | {name} | {wall:.2f} | {min(w for w, _ in runs):.2f} | "
              f"{wall / floor:.2f} | {statistics.median(c for _, c in runs):.2f} |")
    with open(os.path.join(args.work, "results.json"), "w") as f:
        json.dump({" / ".join(k): v for k, v in times.items()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
