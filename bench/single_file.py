"""Single-file images: start time against image size, 64 starts at once against Charliecloud's
ch-run on the same file, and `minictr export` against mksquashfs of the unpacked rootfs.

    .venv/bin/python -m bench single_file [--size-mb N] [--iterations N] [--rounds N]
                                          [--concurrent N]

Two images, built once under bench/results/cache/: busybox (with /proc, /sys, /dev, /tmp,
/home and /mnt, which ch-run needs to exist) and the same plus N MiB (default 1024) of
incompressible files (1 MiB each). Each is loaded into a private minictr store (its layer
uncompressed, to keep the build short) and exported to a .sqsh with `minictr export`.

1. Start: `minictr run --rm FILE /bin/true` for both files, as root (the kernel's squashfs on
   a loop device) and as the benchmark user (squashfuse_ll), with `ch-run FILE -- /bin/true`
   (in-process squashfuse) on the same files; paired, timed by the agents of bench/common.py.
2. Concurrency: N (default 64) starts of `/bin/true` launched at once from one file, as the
   benchmark user, minictr against ch-run; wall time from the first launch to the last exit,
   measured by a small Python launcher inside the user's context, alternating the two.
3. Export: `minictr export` against `mksquashfs TREE OUT -comp gzip -noappend` of the tree the
   image was built from, alternating, timed around each command (seconds, not milliseconds).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from bench import common
from bench.common import Peer, say
from bench.startenv import (CACHE_DIR, base_env, ensure_bench_venv, ensure_user, start_agents,
                            user_prefix)

CONCURRENT = r'''
import json, os, subprocess, sys, time
argv, n, env = json.loads(sys.argv[1]), int(sys.argv[2]), dict(os.environ)
t0 = time.monotonic()
procs = [subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE) for _ in range(n)]
codes = [p.wait() for p in procs]
elapsed = time.monotonic() - t0
bad = [p.stderr.read().decode(errors="replace")[-300:] for p, c in zip(procs, codes) if c]
print(json.dumps({"s": elapsed, "failed": len(bad), "err": bad[:1]}))
'''


def build_tree(dest: str, size_mb: int) -> None:
    from rootfs_tools import rootfs

    rootfs.busybox_tree(dest)
    for d in ("proc", "sys", "dev", "tmp", "home", "mnt"):
        os.makedirs(os.path.join(dest, d), exist_ok=True)
    if size_mb:
        data = os.path.join(dest, "data")
        os.makedirs(data)
        for i in range(size_mb):
            with open(os.path.join(data, f"blob-{i:05d}"), "wb") as f:
                f.write(os.urandom(1 << 20))


def prepare(work: str, size_mb: int, bindir: str) -> dict:
    """{"small"|"big": {"tree", "sqsh", "export_s"}} in a world-readable directory."""
    from rootfs_tools import build
    from rootfs_tools.oci import ImageConfig

    os.makedirs(work, exist_ok=True)
    os.chmod(work, 0o755)
    store = os.path.join(work, "store")
    exe = os.path.join(bindir, "minictr")
    out = {}
    for name, size in (("small", 0), ("big", size_mb)):
        tree = os.path.join(work, f"tree-{name}-{size}")
        sqsh = os.path.join(work, f"{name}-{size}.sqsh")
        if not os.path.exists(sqsh):
            shutil.rmtree(tree, ignore_errors=True)
            say(f"building the {name} image ({size} MiB of data)")
            build_tree(tree, size)
            layout = os.path.join(work, f"layout-{name}-{size}")
            shutil.rmtree(layout, ignore_errors=True)
            build.from_dir(layout, tree, ImageConfig(cmd=["/bin/sh"]), compression="none")
            subprocess.run([exe, "load", "--root", store, "--tag", f"sf-{name}:{size}",
                            f"oci:{layout}:latest"], check=True, capture_output=True)
            shutil.rmtree(layout)
            subprocess.run([exe, "export", "--root", store, f"sf-{name}:{size}", "-o", sqsh],
                           check=True, capture_output=True)
            os.chmod(sqsh, 0o644)
        out[name] = {"tree": tree, "sqsh": sqsh, "image": f"sf-{name}:{size}", "store": store,
                     "bytes": os.path.getsize(sqsh)}
    return out


def start_section(imgs: dict, bindir: str, pw, ws: str, iterations: int) -> tuple[str, dict]:
    exe = os.path.join(bindir, "minictr")
    root_env = dict(base_env("/root", "root"), MINICTR_STATE=os.path.join(ws, "state-root"))
    user_env = dict(base_env(pw.pw_dir, pw.pw_name),
                    MINICTR_STATE=os.path.join(ws, "user", "state"),
                    MINICTR_ROOT=os.path.join(ws, "user", "store"))
    store_env = dict(root_env, MINICTR_ROOT=imgs["small"]["store"])
    peers = [Peer("minictr root, small from the store", [exe, "run", "--rm",
                                                         imgs["small"]["image"], "/bin/true"],
                  "host", store_env, note="the same image unpacked in a store: the overlay of "
                  "its layer directories, for comparison")]
    for name in ("small", "big"):
        sqsh, mib = imgs[name]["sqsh"], imgs[name]["bytes"] / (1 << 20)
        label = f"{name} ({mib:.0f} MiB)"
        peers += [Peer(f"minictr root, {label}", [exe, "run", "--rm", sqsh, "/bin/true"],
                       "host", root_env),
                  Peer(f"minictr rootless, {label}", [exe, "run", "--rm", sqsh, "/bin/true"],
                       "user", user_env),
                  Peer(f"ch-run rootless, {label}", ["ch-run", sqsh, "--", "/bin/true"], "user",
                       user_env, skip=common.missing_tools("ch-run"))]
    agents = start_agents(ws, {"host": [], "user": user_prefix(pw)}, owner=pw)
    try:
        common.check_peers(peers, agents, say)
        samples = common.run_paired(peers, agents, iterations, 3, say)
    finally:
        for a in agents.values():
            a.close()
    refs = ["ch-run rootless, small (%.0f MiB)" % (imgs["small"]["bytes"] / (1 << 20))]
    return common.results_table(peers, samples, refs)


def concurrent_section(imgs: dict, bindir: str, pw, ws: str, n: int,
                       rounds: int) -> tuple[str, dict]:
    exe = os.path.join(bindir, "minictr")
    sqsh = imgs["small"]["sqsh"]
    env = dict(base_env(pw.pw_dir, pw.pw_name), MINICTR_STATE=os.path.join(ws, "user", "state"),
               MINICTR_ROOT=os.path.join(ws, "user", "store"))
    contenders = {"minictr rootless": [exe, "run", "--rm", sqsh, "/bin/true"]}
    if shutil.which("ch-run"):
        contenders["ch-run rootless"] = ["ch-run", sqsh, "--", "/bin/true"]
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(rounds):
        for name, argv in (contenders.items() if r % 2 == 0 else
                           reversed(list(contenders.items()))):
            res = subprocess.run([*user_prefix(pw), "/usr/bin/python3", "-I", "-c", CONCURRENT,
                                  json.dumps(argv), str(n)], env=env, capture_output=True,
                                 text=True, timeout=600)
            doc = json.loads(res.stdout)
            if doc["failed"]:
                say(f"  {name}: {doc['failed']} of {n} failed: {doc['err']}")
            times[name].append(doc["s"])
        say(f"  round {r + 1}/{rounds}")
    rows = [[name, f"{statistics.median(v):.2f}", f"{min(v):.2f}",
             f"{statistics.median(v) / n * 1000:.1f}", str(len(v))] for name, v in times.items()]
    text = common.markdown_table(["contender", f"{n} at once: median s", "min s",
                                  "ms per container", "rounds"], rows)
    return text, times


def export_section(imgs: dict, bindir: str, ws: str, rounds: int) -> tuple[str, dict]:
    exe = os.path.join(bindir, "minictr")
    times: dict[str, list[float]] = {}
    for name in ("small", "big"):
        img = imgs[name]
        cmds = {f"minictr export, {name}": [exe, "export", "--root", img["store"], img["image"],
                                           "-o", os.path.join(ws, "out-minictr.sqsh")],
                f"mksquashfs of the tree, {name}": ["mksquashfs", img["tree"],
                                                   os.path.join(ws, "out-mksquashfs.sqsh"),
                                                   "-comp", "gzip", "-noappend", "-quiet",
                                                   "-no-progress"]}
        for r in range(rounds):
            for label, argv in (cmds.items() if r % 2 == 0 else reversed(list(cmds.items()))):
                t0 = time.monotonic()
                subprocess.run(argv, check=True, capture_output=True)
                times.setdefault(label, []).append(time.monotonic() - t0)
        for f in ("out-minictr.sqsh", "out-mksquashfs.sqsh"):
            os.unlink(os.path.join(ws, f))
    rows = [[label, f"{statistics.median(v):.2f}", f"{min(v):.2f}", str(len(v))]
            for label, v in times.items()]
    return common.markdown_table(["command", "median s", "min s", "runs"], rows), times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench single_file")
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrent", type=int, default=64)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        say("single_file: needs root (it times root and an unprivileged user)")
        return 1
    missing = common.missing_tools("mksquashfs", "squashfuse_ll")
    if missing:
        say(f"single_file: {missing}")
        return 1
    bindir = ensure_bench_venv(say)
    pw = ensure_user()
    work = os.path.join(CACHE_DIR, "single-file")
    imgs = prepare(work, args.size_mb, bindir)
    ws = os.path.join(work, "run")
    for d in (ws, os.path.join(ws, "user"), os.path.join(ws, "user", "state"),
              os.path.join(ws, "user", "store")):
        os.makedirs(d, exist_ok=True)
        os.chown(d, pw.pw_uid, pw.pw_gid)
    os.chmod(ws, 0o755)
    parts = [f"# Single-file images\n\n{common.machine_info()}\n"]
    say("start time against image size")
    text, start = start_section(imgs, bindir, pw, ws, args.iterations)
    parts.append(f"## Start (`run --rm FILE /bin/true`)\n\n{text}\n")
    say(f"{args.concurrent} starts at once")
    text, conc = concurrent_section(imgs, bindir, pw, ws, args.concurrent, args.rounds)
    parts.append(f"## {args.concurrent} at once from one file\n\n{text}\n")
    say("export")
    text, export = export_section(imgs, bindir, ws, args.rounds)
    parts.append(f"## Export\n\n{text}\n")
    report = "\n".join(parts)
    print(report)
    path = common.write_results("single_file", report,
                                {"start": start, "concurrent": conc, "export": export,
                                 "sizes": {k: v["bytes"] for k, v in imgs.items()}})
    say(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
