"""Where `minictr run --rm IMAGE /bin/true` spends its time (guides the start path's optimisation).

    .venv/bin/python -m bench start_cost [--iterations N]

Two tables, both from the installed (non-editable) minictr that `bench start` times:

1. Phases. A script replays `minictr run`'s path (cli.parse_args, api.plan, then
   api.run: what cli.cmd_run does) with CLOCK_MONOTONIC stamps between
   the calls; the runtime's explain callback stamps each step as it happens, in the launcher and
   in the container's PID 1 (the same clock across processes). The driver stamps the spawn and
   the exit, so interpreter start-up and shut-down show too. Medians over the iterations.
2. Imports. `PYTHONPROFILEIMPORTTIME=1 minictr run ...` (python -X importtime): per module, the
   median over the iterations of its self and cumulative time; the top 15 of each.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench import common, startenv
from bench.common import say

PHASE_SCRIPT = r'''
import os, sys, time
stamps = [("interpreter start-up (exec, site, encodings)", time.monotonic_ns())]
def mark(label):
    stamps.append((label, time.monotonic_ns()))
import minictr.cli as cli
mark("import minictr.cli")
args = cli.parse_args(["run", "--rm", sys.argv[1], "/bin/true"])
mark("parse the command line (flags.parse_fast)")
from minictr import api
mark("import minictr.api")
paths, opts, roots = cli._paths(args), cli._run_options(args), cli._gpu_roots(args)
mark("options, paths, GPU driver roots")
def explain(text):
    os.write(2, ("@%d %d %s\n" % (time.monotonic_ns(), os.getpid(), text)).encode())
code = api.run(paths, opts, gpu_roots=roots, explain=explain, pull_policy=args.pull)
mark("api.run")
os.write(1, (repr([code, os.getpid(), stamps]) + "\n").encode())
'''


def one_phase_run(mc: startenv.Minictr, image: str):
    """([(phase, ns)], [(explain step, ns since the previous step)]) for one run, in order."""
    t0 = time.monotonic_ns()
    res = subprocess.run([*mc.prefix, mc.python, "-c", PHASE_SCRIPT, image], env=mc.env,
                         capture_output=True, text=True, timeout=120)
    t_end = time.monotonic_ns()
    if res.returncode != 0 or not res.stdout.strip():
        raise RuntimeError(f"phase script failed: {common.first_error_line(res.stderr)}")
    import ast

    code, pid, stamps = ast.literal_eval(res.stdout.strip().splitlines()[-1])
    steps = [(int(m.group(1)), int(m.group(2)), m.group(3))
             for m in re.finditer(r"^@(\d+) (\d+) (.*)$", res.stderr, re.M)]
    return split_phases(t0, t_end, stamps, steps, pid), step_deltas(stamps, steps, pid)


HEX_ID = re.compile(r"[0-9a-f]{12,}")


def step_deltas(stamps: list, steps: list, pid: int) -> list[tuple[str, int]]:
    """Each explain step with the time since the previous one (the first: since api.run
    began); [child] marks steps of the container's PID 1. Ids are replaced by ID."""
    start = next(t for label, t in stamps if label == "options, paths, GPU driver roots")
    out, prev = [], start
    for t, spid, text in steps:
        label = ("[child] " if spid != pid else "") + HEX_ID.sub("ID", text)[:90]
        out.append((label, t - prev))
        prev = t
    end = next(t for label, t in stamps if label == "api.run")
    out.append(("(exec'd program runs and exits; wait, cgroup removal, state cleanup)",
                end - prev))
    return out


def steps_table(traces: list[list[tuple[str, int]]], floor_ms: float = 0.3) -> str:
    """Median time before each step, over the runs that had the same number of steps; steps
    under ``floor_ms`` are summed into one row."""
    n = statistics.mode(len(t) for t in traces)
    same = [t for t in traces if len(t) == n]
    rows, small, small_ms = [], 0, 0.0
    for i, (label, _) in enumerate(same[0]):
        ms = statistics.median(t[i][1] / 1e6 for t in same)
        if ms < floor_ms:
            small, small_ms = small + 1, small_ms + ms
            continue
        rows.append([label.replace("|", "/"), common.fmt_ms(ms)])
    if small:
        rows.append([f"({small} other steps, each under {floor_ms} ms)", common.fmt_ms(small_ms)])
    return common.markdown_table(["step (time is spent *before* the step is printed)", "ms"],
                                 rows)


def split_phases(t0: int, t_end: int, stamps: list, steps: list, pid: int):
    """Turn stamps into durations; api.run is split at its explain steps: planning and the
    launcher before clone, the child's setup (clone .. execve of mcinit), then exec, the
    container's life, the wait and cleanup."""
    out, prev = [], t0
    for label, t in stamps:
        if label == "api.run" and steps:
            clone = next((s for s in steps if s[2].startswith("clone")), None)
            execve = next((s for s in reversed(steps) if s[2].startswith("execve(")), None)
            if clone and execve:
                first = steps[0][0]
                out.append(("api.run: plan (image, spec, edits)", first - prev))
                out.append(("api.run: state, cgroup, seccomp, until clone3()", clone[0] - first))
                child = [s for s in steps if s[1] != pid]
                first_child = child[0][0] if child else clone[0]
                out.append(("api.run: clone3() .. child's first step", first_child - clone[0]))
                out.append(("api.run: child setup (mounts, pivot_root, caps) .. execve",
                            execve[0] - first_child))
                out.append(("api.run: mcinit+/bin/true run, wait, cleanup", t - execve[0]))
                prev = t
                continue
        out.append((label, t - prev))
        prev = t
    out.append(("interpreter exit (atexit, GC, flush) and reaping", t_end - prev))
    return out


def phase_table(runs: list[list[tuple[str, int]]]) -> str:
    labels = [label for label, _ in runs[0]]
    rows, total = [], []
    for i, label in enumerate(labels):
        ms = [r[i][1] / 1e6 for r in runs if len(r) == len(labels)]
        rows.append([label, common.fmt_ms(statistics.median(ms)),
                     common.fmt_ms(common.percentile(ms, 90))])
    for r in runs:
        total.append(sum(ns for _, ns in r) / 1e6)
    rows.append(["**total (spawn to reaped)**", common.fmt_ms(statistics.median(total)),
                 common.fmt_ms(common.percentile(total, 90))])
    return common.markdown_table(["phase", "median ms", "p90 ms"], rows)


IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)\s*$")


def import_profile(mc: startenv.Minictr, image: str) -> dict[str, tuple[int, int, int]]:
    """module -> (self us, cumulative us, depth) from one `minictr run` under -X importtime.
    The console script's interpreter runs with -I (no PYTHON* variables, so no
    PYTHONPROFILEIMPORTTIME): the script is run by that interpreter and its flags, plus -X."""
    with open(mc.exe) as f:
        interpreter = f.readline()[2:].split()
    res = subprocess.run([*mc.prefix, *interpreter, "-X", "importtime", mc.exe, "run", "--rm",
                          image, "/bin/true"], capture_output=True, text=True, env=mc.env,
                         timeout=120)
    if res.returncode != 0:
        raise RuntimeError(f"minictr run failed: {common.first_error_line(res.stderr)}")
    out = {}
    for line in res.stderr.splitlines():
        m = IMPORT_LINE.match(line)
        if m:
            out[m.group(4)] = (int(m.group(1)), int(m.group(2)), (len(m.group(3)) - 1) // 2)
    return out


def import_tables(profiles: list[dict]) -> str:
    names = set().union(*profiles)

    def med(name, k):       # a module a run did not import counts as 0 ms in that run
        return statistics.median(p[name][k] if name in p else 0 for p in profiles) / 1000
    self_ms = {n: med(n, 0) for n in names}
    cum_ms = {n: med(n, 1) for n in names}
    total = sum(self_ms.values())
    mine = sum(v for n, v in self_ms.items() if n.split(".")[0] in ("minictr", "_cffi_backend"))
    by_cum = sorted(names, key=lambda n: -cum_ms[n])[:15]
    by_self = sorted(names, key=lambda n: -self_ms[n])[:15]
    rows_cum = [[f"`{n}`", common.fmt_ms(cum_ms[n]), common.fmt_ms(self_ms[n])] for n in by_cum]
    rows_self = [[f"`{n}`", common.fmt_ms(self_ms[n])] for n in by_self]
    return (f"{len(names)} modules imported, {total:.1f} ms of import time in all (median "
            f"self times summed; importtime itself inflates this), {mine:.1f} ms in minictr's "
            f"own modules and cffi.\n\nTop 15 by cumulative time:\n\n"
            + common.markdown_table(["module", "cumulative ms", "self ms"], rows_cum)
            + "\n\nTop 15 by self time:\n\n"
            + common.markdown_table(["module", "self ms"], rows_self))


ALONE = ("minictr.cli", "minictr.api", "minictr.config", "minictr.image.store",
         "minictr.image.archive", "minictr.spec.builder", "minictr.gpu.discover",
         "minictr.gpu.inject", "minictr.runtime.state", "minictr.runtime.container",
         "argparse", "dataclasses", "typing", "re", "json", "secrets", "hashlib", "logging",
         "concurrent.futures", "tarfile", "cffi")


def alone_table(mc: startenv.Minictr, iterations: int, scratch: str) -> str:
    """Each module imported alone in a fresh interpreter, minus `python -c pass`: what leaving
    it (and everything it pulls in) off the run path would save. Paired like bench start, so
    the rows overlap (api includes dataclasses) and are not to be summed."""
    agent = common.Agent("alone", mc.prefix, scratch_dir=scratch)
    if mc.prefix:                       # the agent runs as the benchmark user
        pw = startenv.ensure_user()
        agent.chown_scratch(pw.pw_uid, pw.pw_gid)
    peers = [common.Peer("pass", [mc.python, "-c", "pass"], "alone", mc.env)]
    peers += [common.Peer(m, [mc.python, "-c", f"import {m}"], "alone", mc.env) for m in ALONE]
    try:
        common.check_peers(peers, {"alone": agent}, say)
        samples = common.run_paired(peers, {"alone": agent}, iterations, 2, lambda _: None)
    finally:
        agent.close()
    base = statistics.median(samples["pass"]) / 1e6
    rows = [[f"`{p.name}`", common.fmt_ms(statistics.median(samples[p.name]) / 1e6 - base)]
            for p in peers[1:] if not p.skip]
    rows.sort(key=lambda r: -float(r[1]))
    return (f"`python -c pass` takes {base:.1f} ms (median) with this interpreter.\n\n"
            + common.markdown_table(["import alone", "ms over python -c pass"], rows))


def make_minictr(bindir: str, ws: str, rootless: bool) -> startenv.Minictr:
    """The installed CLI with a private store: as root, or as the benchmark user (then the
    store and state dirs are the user's)."""
    if not rootless:
        return startenv.Minictr(bindir, os.path.join(ws, "store"), os.path.join(ws, "state"),
                                startenv.base_env("/root", "root"))
    pw = startenv.ensure_user()
    startenv.prepare_user_workspace(ws, pw)
    uws = os.path.join(ws, "user")
    return startenv.Minictr(bindir, os.path.join(uws, "store"), os.path.join(uws, "state"),
                            startenv.base_env(pw.pw_dir, pw.pw_name),
                            prefix=startenv.user_prefix(pw))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench start_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", "-n", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="5 iterations")
    p.add_argument("--rootless", action="store_true",
                   help=f"run as the unprivileged user {startenv.USER} (created if absent)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.iterations = 5
    if os.geteuid() != 0:
        say("bench start_cost: needs root (it times the root start path, or becomes the user)")
        return 1
    ws = tempfile.mkdtemp(prefix="minictr-bench-cost-")
    os.chmod(ws, 0o755)
    try:
        bindir = startenv.ensure_bench_venv(say)
        mc = make_minictr(bindir, ws, args.rootless)
        image = startenv.IMAGE_NAME.format("busybox")
        mc.load(startenv.build_busybox(ws), image)
        one_phase_run(mc, image)                                   # warm the page cache
        say(f"phases: {args.iterations} runs")
        results = [one_phase_run(mc, image) for _ in range(args.iterations)]
        runs, traces = [r[0] for r in results], [r[1] for r in results]
        say(f"imports: {args.iterations} runs under -X importtime")
        profiles = [import_profile(mc, image) for _ in range(args.iterations)]
        say(f"imports alone: {args.iterations} paired runs")
        alone = alone_table(mc, args.iterations, ws)
    except RuntimeError as err:
        say(f"bench start_cost: {err}")
        return 1
    finally:
        shutil.rmtree(ws, ignore_errors=True)
    mode = f"rootless, as {startenv.USER}" if args.rootless else "root"
    text = (f"## Start cost breakdown ({common.machine_info()}, load {common.load_average()})\n\n"
            f"`python -m bench start_cost -n {args.iterations}"
            f"{' --rootless' if args.rootless else ''}`, `{mc.exe}`\n\n"
            f"### Phases of `minictr run --rm busybox /bin/true` ({mode})\n\n"
            f"{phase_table(runs)}\n\n### Inside api.run, step by step (explain lines)\n\n"
            f"{steps_table(traces)}\n\n### Imports\n\n{import_tables(profiles)}\n\n"
            f"### Each module imported alone\n\n{alone}\n")
    common.publish("start_cost", text, {"phases_ns": runs, "steps_ns": traces,
                                        "imports": profiles})
    return 0


if __name__ == "__main__":
    sys.exit(main())
