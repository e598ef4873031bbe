"""Concurrent starts: N copies of `minictr run --rm busybox /bin/true` started at once, against
crun and runc doing the same, as root (issue 15's "64 concurrent warm runs").

    .venv/bin/python -m bench concurrent [--jobs N] [--reps R]

For each peer and rep, a small driver (below) running in the peer's context (crun: a private
mount namespace with a tmpfs over the hybrid cgroup v2 mount, as `bench start` gives it)
posix_spawn()s the N commands as fast as it can, then wait4()s for all of them: the wall time
from the first spawn to the last exit, and the CPU time (user + sys, from each child's rusage,
which includes the child's own children) summed. Reps are interleaved between peers (shuffled
each round) so load that comes and goes is shared. Every command must exit 0.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile

from bench import common
from bench.common import say
from bench.startenv import (IMAGE_NAME, Minictr, base_env, build_busybox, cgroup_ns_prefix,
                            ensure_bench_venv, load_and_plan, peer_config, unpack_rootfs,
                            write_config)

DRIVER = r'''
import json, os, sys, time
jobs, argvs = int(sys.argv[1]), json.loads(sys.argv[2])
env = json.loads(sys.argv[3])
t0 = time.monotonic_ns()
pids = [os.posix_spawn(argvs[i][0], argvs[i], env) for i in range(jobs)]
cpu, failed = 0.0, 0
for _ in pids:
    pid, status, ru = os.wait4(-1, 0)
    cpu += ru.ru_utime + ru.ru_stime
    failed += os.waitstatus_to_exitcode(status) != 0
print(json.dumps({"wall_ns": time.monotonic_ns() - t0, "cpu_s": cpu, "failed": failed}))
'''


def driver(prefix: list[str], jobs: int, argvs: list[list[str]], env: dict) -> dict:
    res = subprocess.run([*prefix, sys.executable, "-c", DRIVER, str(jobs), json.dumps(argvs),
                          json.dumps(env)], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"driver failed: {common.first_error_line(res.stderr)}")
    return json.loads(res.stdout)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench concurrent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        say("bench concurrent: needs root")
        return 1
    for tool in ("umoci", "crun", "runc"):
        if missing := common.missing_tools(tool):
            say(f"bench concurrent: {missing}")
            return 1
    ws = tempfile.mkdtemp(prefix="minictr-bench-concurrent-")
    try:
        layout = build_busybox(ws)
        bundle = os.path.join(ws, "bundle")
        os.makedirs(bundle)
        rootfs = os.path.join(bundle, "rootfs")
        unpack_rootfs(layout, rootfs)
        env = base_env("/root", "root")
        mc = Minictr(ensure_bench_venv(say), os.path.join(ws, "store"),
                     os.path.join(ws, "state"), env)
        name = IMAGE_NAME.format("busybox")
        peer = common.Peer("minictr", mc.run_argv(name), "host", mc.env)
        spec = load_and_plan(mc, layout, rootfs, name, peer, None)
        if peer.skip:
            raise RuntimeError(peer.skip)
        write_config(bundle, "config.json", peer_config(spec, rootless=False))
        ns = cgroup_ns_prefix()
        peers = {
            "minictr": ([], [mc.run_argv(name)] * args.jobs, mc.env),
            "crun": (ns, [["/usr/bin/crun", "--root", os.path.join(ws, "crun"), "run",
                           "--bundle", bundle, f"c{i}"] for i in range(args.jobs)], env),
            "runc": ([], [["/usr/sbin/runc", "--root", os.path.join(ws, "runc"), "run",
                           "--bundle", bundle, f"r{i}"] for i in range(args.jobs)], env),
        }
        for key in ("crun", "runc"):
            peers[key] = (peers[key][0], [[os.path.realpath(a[0]), *a[1:]] for a in
                                          peers[key][1]], peers[key][2])
        samples = {k: [] for k in peers}
        say(f"{len(peers)} peers, {args.jobs} concurrent starts, {args.reps} reps")
        driver(peers["minictr"][0], 4, peers["minictr"][1], peers["minictr"][2])   # warm up
        rng = random.Random(1)
        for rep in range(args.reps):
            order = list(peers)
            rng.shuffle(order)
            for key in order:
                prefix, argvs, penv = peers[key]
                result = driver(prefix, args.jobs, argvs, penv)
                if result["failed"]:
                    raise RuntimeError(f"{key}: {result['failed']} of {args.jobs} runs failed")
                samples[key].append(result)
            say(f"  {rep + 1}/{args.reps}")
        rows = []
        crun_wall = statistics.median(s["wall_ns"] for s in samples["crun"]) / 1e9
        for key, runs in samples.items():
            wall = statistics.median(s["wall_ns"] for s in runs) / 1e9
            cpu = statistics.median(s["cpu_s"] for s in runs) / args.jobs * 1000
            rows.append([key, f"{wall:.2f}", f"{cpu:.1f}", f"{wall / crun_wall:.2f}x"])
        text = (f"## Concurrent starts ({common.machine_info()})\n\n"
                f"`python -m bench concurrent --jobs {args.jobs} --reps {args.reps}`: "
                f"{args.jobs} starts at once, median over {args.reps} reps; load average "
                f"{common.load_average()}\n\n"
                + common.markdown_table(["peer", "wall s", "CPU ms per start", "/ crun wall"],
                                        rows)
                + f"\n\n- target minictr <= 2.0x crun's wall time: "
                f"{rows[0][3]}, {'met' if float(rows[0][3][:-1]) <= 2.0 else 'NOT met'}\n")
        common.publish("concurrent", text, {"samples": samples})
        return 0
    finally:
        subprocess.run(["rm", "-rf", ws])
