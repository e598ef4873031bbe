"""Pull + unpack from a local registry, side by side: minictr, podman, skopeo + umoci, and the
floor (curl of the layer blob, then tar -xzf; and curl | tar -xz streaming).

    python -m bench.pull [--layout DIR[:TAG]] [--work DIR] [--reps N]

The image is a Debian bookworm minbase in one gzip layer (~49 MB compressed, ~10,000 files):
``--layout`` takes an existing OCI layout (e.g. the unpack benchmark's
/tmp/minictr-bench-unpack/oci-one:bench), otherwise one is built under --work with
``debootstrap --variant=minbase`` (needs root and the Debian mirror). A docker-registry is
started on 127.0.0.1 (plain http, storage under --work) and the image pushed with skopeo.
Each rep runs every tool once, interleaved, into fresh directories after ``sync``; deleting
the results is not timed. The table gives the median wall time of each (and the median CPU
time, user + sys, which the machine's other load disturbs less) and minictr's ratio to podman
and to the download + tar floor. "minictr store import" is the store alone importing the same
layer from the local blob file: the difference to "minictr pull" is what the registry side
costs. Every tool runs as a fresh process: minictr as ``python -c 'minictr.api.pull(...)'``
(what the CLI calls; ``--cli`` times the entry point itself), so Python's start-up and imports
are counted.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time

REPO = "bench/debian:minbase"
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the image


def build_layout(work: str) -> str:
    """debootstrap a minbase tree and pack it as a one-layer OCI layout; return DIR:TAG."""
    rootfs, layout = os.path.join(work, "rootfs"), os.path.join(work, "layout")
    if os.path.exists(os.path.join(layout, "index.json")):
        return f"{layout}:minbase"
    if not os.path.isdir(os.path.join(rootfs, "usr")):
        sh("debootstrap", "--variant=minbase", "bookworm", rootfs,
           "http://deb.debian.org/debian", stdout=subprocess.DEVNULL)
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    tar = os.path.join(work, "layer.tar")
    sh("tar", "--numeric-owner", "--exclude=./var/cache/apt/archives", "--exclude=./proc/*",
       "--exclude=./var/lib/apt/lists", "-C", rootfs, "-cf", tar, ".")
    diff_id = "sha256:" + _sha256_file(tar)
    sh("gzip", "-6", "-n", "-f", tar)
    layer = tar + ".gz"
    ldigest = "sha256:" + _sha256_file(layer)
    shutil.move(layer, os.path.join(blobs, ldigest[7:]))
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/bin/bash"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    cdesc = _blob(blobs, config, "application/vnd.oci.image.config.v1+json")
    manifest = json.dumps({"schemaVersion": 2, "mediaType":
                           "application/vnd.oci.image.manifest.v1+json", "config": cdesc,
                           "layers": [{"mediaType": GZIP, "digest": ldigest, "size":
                                       os.path.getsize(os.path.join(blobs, ldigest[7:]))}]})
    mdesc = _blob(blobs, manifest.encode(), "application/vnd.oci.image.manifest.v1+json")
    mdesc["annotations"] = {"org.opencontainers.image.ref.name": "minbase"}
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [mdesc]}, f)
    return f"{layout}:minbase"


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _blob(blobs: str, data: bytes, media_type: str) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest[7:]), "wb") as f:
        f.write(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def layer_digest(layout: str) -> str:
    path, _, _tag = layout.partition(":")
    with open(os.path.join(path, "index.json")) as f:
        mdigest = json.load(f)["manifests"][0]["digest"]
    with open(os.path.join(path, "blobs", "sha256", mdigest[7:])) as f:
        layers = json.load(f)["layers"]
    assert len(layers) == 1 and layers[0]["mediaType"] in (GZIP, "application/vnd.docker."
                                                          "image.rootfs.diff.tar.gzip")
    return layers[0]["digest"]


# ---------------------------------------------------------------- the registry


def start_registry(work: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    conf = os.path.join(work, "registry.yml")
    with open(conf, "w") as f:
        json.dump({"version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
                   "storage": {"filesystem": {"rootdirectory": os.path.join(work, "registry")}},
                   "http": {"addr": f"127.0.0.1:{port}"}}, f)
    log = open(os.path.join(work, "registry.log"), "ab")
    proc = subprocess.Popen(["docker-registry", "serve", conf], stdout=log, stderr=log)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("docker-registry did not start")


# ---------------------------------------------------------------- the contenders


# what `minictr pull -q --tls-verify=false --root STORE REF` does, minus argparse
API_PULL = ("import sys; from minictr import api, config; "
            "api.pull(config.default_paths(root=sys.argv[1]), sys.argv[2], tls_verify=False)")


# the store's share alone: import the same layer from the local blob file, no registry
STORE_IMPORT = """
import json, sys
from minictr.image.store import Store
layout, root = sys.argv[1:3]
blob = lambda d: f"{layout}/blobs/sha256/{d[7:]}"
manifest = json.load(open(blob(json.load(open(f"{layout}/index.json"))["manifests"][0]["digest"])))
diff_id = json.load(open(blob(manifest["config"]["digest"])))["rootfs"]["diff_ids"][0]
layer = manifest["layers"][0]
with open(blob(layer["digest"]), "rb") as f:
    Store(root).import_layer(f, media_type=layer["mediaType"], digest=layer["digest"],
                             diff_id=diff_id, chain_id=diff_id)
"""


def contenders(host: str, digest: str, minictr: list[str], layout: str,
               baseline: str | None = None) -> dict:
    ref = f"{host}/{REPO}"
    blob_url = f"http://{host}/v2/{REPO.split(':')[0]}/blobs/{digest}"
    before = {} if not baseline else {
        # sys.path[0], not PYTHONPATH: "-c" puts the working directory (a checkout) first
        "minictr pull (baseline)": lambda d: [
            [sys.executable, "-c", f"import sys; sys.path.insert(0, {baseline!r}); {API_PULL}",
             f"{d}/store", ref]]}
    return {
        "minictr pull": lambda d: [minictr + [f"{d}/store", ref]],
        **before,
        "minictr store import (no network)": lambda d: [
            [sys.executable, "-c", STORE_IMPORT, layout.partition(":")[0], f"{d}/store"]],
        "podman pull": lambda d: [["podman", "--root", f"{d}/root", "--runroot", f"{d}/run",
                                   "--storage-driver", "overlay", "pull", "-q",
                                   "--tls-verify=false", ref]],
        "skopeo copy + umoci raw unpack": lambda d: [
            ["skopeo", "--insecure-policy", "copy", "-q", "--src-tls-verify=false",
             f"docker://{ref}", f"oci:{d}/oci:bench"],
            ["umoci", "raw", "unpack", "--image", f"{d}/oci:bench", f"{d}/rootfs"]],
        "curl blob, then tar -xzf": lambda d: [
            ["curl", "-sf", "-o", f"{d}/layer.tar.gz", blob_url],
            ["sh", "-c", f"mkdir {d}/rootfs && tar --numeric-owner -xzf {d}/layer.tar.gz "
             f"-C {d}/rootfs"]],
        "curl | tar -xz (streaming)": lambda d: [
            ["sh", "-c", f"mkdir {d}/rootfs && curl -sf {blob_url} | "
             f"tar --numeric-owner -xz -C {d}/rootfs"]],
    }


def time_one(commands, d: str) -> tuple[float, float]:
    """Wall time and CPU time (user + sys of the children, getrusage(2) RUSAGE_CHILDREN)."""
    os.makedirs(d)
    sh("sync")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    for cmd in commands(d):
        sh(*cmd, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layout", help="an OCI layout DIR:TAG with one gzip layer")
    ap.add_argument("--work", default="/tmp/minictr-bench-pull")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cli", action="store_true",
                    help="time the `minictr pull` entry point instead of minictr.api.pull")
    ap.add_argument("--baseline", metavar="DIR",
                    help="also time minictr.api.pull from another source tree (e.g. `git "
                    "archive main`, with its built _native*.so) first on sys.path")
    ap.add_argument("--only", help="comma-separated contender names' first words to run "
                    "(e.g. minictr,skopeo,curl)")
    args = ap.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    layout = args.layout or build_layout(args.work)
    digest = layer_digest(layout)
    proc, host = start_registry(args.work)
    try:
        sh("skopeo", "--insecure-policy", "copy", "-q", "--dest-tls-verify=false",
           f"oci:{layout}", f"docker://{host}/{REPO}")
        size = os.path.getsize(os.path.join(layout.partition(":")[0], "blobs", "sha256",
                                            digest[7:]))
        print(f"image: {layout} (one gzip layer, {size / 1e6:.2f} MB), registry {host}, "
              f"{args.reps} reps, median wall time")
        missing = [t for t in ("podman", "umoci", "curl", "tar") if not shutil.which(t)]
        minictr = ([os.path.join(os.path.dirname(sys.executable), "minictr"), "pull", "-q",
                    "--tls-verify=false", "--root"] if args.cli
                   else [sys.executable, "-c", API_PULL])
        tools = {name: cmds for name, cmds in
                 contenders(host, digest, minictr, layout, args.baseline).items()
                 if not any(t in name for t in missing)
                 and (not args.only or name.split()[0] in args.only.split(","))}
        for t in missing:
            print(f"  (skipped what needs {t}: not installed)")
        times: dict[str, list[float]] = {name: [] for name in tools}
        cpu: dict[str, list[float]] = {name: [] for name in tools}
        runs = os.path.join(args.work, "runs")
        load_before = os.getloadavg()
        for rep in range(args.reps):
            for name, commands in tools.items():
                d = os.path.join(runs, f"{rep}-{len(times[name])}-{name.split()[0]}")
                shutil.rmtree(d, ignore_errors=True)
                wall, used = time_one(commands, d)
                times[name].append(wall)
                cpu[name].append(used)
                subprocess.run(["rm", "-rf", d])
    finally:
        proc.kill()
        proc.wait()
    med = {name: statistics.median(v) for name, v in times.items()}
    for name, m in med.items():
        spread = f"{min(times[name]):.2f}-{max(times[name]):.2f}"
        print(f"  {name:34s} {m:6.2f} s   (min-max {spread})   cpu "
              f"{statistics.median(cpu[name]):5.2f} s")
    mc = med["minictr pull"]
    print(f"  load average before/after: {load_before} / {os.getloadavg()}")
    # issue 15: a large image <= 0.8x the download + tar floor, a 1 MB one <= 1x skopeo + umoci
    for other, target in (("podman pull", ""),
                          ("skopeo copy + umoci raw unpack", " (target <= 1.0x, 1 MB image)"),
                          ("curl blob, then tar -xzf", " (target <= 0.8x, large image)"),
                          ("curl | tar -xz (streaming)", "")):
        if other in med:
            print(f"  minictr pull / {other:30s} {mc / med[other]:.2f}x{target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
