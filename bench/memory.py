"""Memory of one start: the peak RSS of `minictr run --rm busybox /bin/true`'s launcher process and
of its whole process tree, against the peers `bench start` runs (crun, runc, bwrap, podman; as an
unprivileged user rootless crun, bwrap, ch-run), paired and shuffled as `bench start` times them.

    .venv/bin/python -m bench memory [--iterations N] [--only root|rootless] [--no-podman]
                                     [--no-monitor]

The peers, their bundle and contexts are bench/start.py's (same image, same config.json, same
agent contexts); only the agent differs: MEMORY_AGENT below runs each command under
bench/memprobe.c (compiled with cc into the work directory), which answers

- **launcher**: the launcher process's own peak RSS, its VmHWM from /proc/PID/status read while
  it stops at its exit (ptrace, PTRACE_O_TRACEEXIT: the address space is still there; nothing
  else is traced, not its children). wait4's ru_maxrss cannot give this: for a reaped child it
  is the largest of the child's and of *the descendants it reaped* (RUSAGE_BOTH), and a
  launcher reaps its container (kept in the JSON as "launcher+reaped", subtree_kb). VmHWM
  starts again at each execve: this is the launcher's last program image (ch-run's is the
  container's /bin/true, which it execs in place; the tree figure keeps the earlier images).
- **tree**: the largest peak RSS of any process of the start's tree (the launcher, its children,
  the container, helpers such as newuidmap, podman's conmon and cleanup): the probe is the
  child subreaper (PR_SET_CHILD_SUBREAPER), so daemonized helpers come back to it; it reaps
  every one, then reads getrusage(RUSAGE_CHILDREN).ru_maxrss. A fresh probe per run, not
  differences of RUSAGE_CHILDREN in one long-lived agent: ru_maxrss is a maximum over all the
  children ever reaped, so a run below an earlier peak would not show. It is a maximum over
  processes, not their sum.

Why a C probe: ru_maxrss counts a process's life before its execve, so anything forked from a
Python agent starts at the interpreter's ~8 MB (measured: /bin/true "used" 8 MB that way, 1 MB
from the probe). RSS counts shared pages (libc's, the interpreter's) in every process mapping
them, as the kernel does; a forked child starts with its parent's anonymous pages counted.

Not measured: the container's cgroup charge (memory.peak, or v1 memory.max_usage_in_bytes):
`--rm` removes the cgroup before a reader outside could see it, and minictr, crun and runc
place it differently; see bench/README.md.

With `minictr` and podman present, a second table: the steady RSS (VmRSS, and PSS from
/proc/PID/smaps_rollup) of the process that stays while a detached container runs: minictr's
monitor (`minictr run -d`, the container's parent) against podman's conmon.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from bench import common, start
from bench.common import Agent, Peer, say
from bench.startenv import (IMAGE_NAME, Minictr, base_env, build_busybox, cgroup_ns_prefix,
                            ensure_bench_venv, ensure_user, prepare_user_workspace,
                            start_agents, unpack_rootfs, user_prefix)

ROOT_REFS = ["crun", "runc"]
ROOTLESS_REFS = ["crun (rootless)"]
METRICS = [("launcher", "hwm_kb"), ("tree", "tree_kb")]

# The timing agent's protocol (bench/common.py: one JSON request per line, one answer per line),
# each request run under bench/memprobe.c (@PROBE@: its path), which answers the memory.
MEMORY_AGENT = r'''
import json, subprocess, sys
err_path, probe = sys.argv[1], @PROBE@
for line in sys.stdin:
    req = json.loads(line)
    res = subprocess.run([probe, err_path, req.get("cwd") or "", *req["argv"]], env=req["env"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True)
    try:
        msg = json.loads(res.stdout)
    except ValueError:
        msg = {"code": 127, "ns": 0, "probe": res.stderr[-500:] or f"exit {res.returncode}"}
    if msg["code"] != 0:
        with open(err_path, errors="replace") as f:
            msg["stderr"] = (f.read() + msg.get("probe", ""))[-2000:]
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()
'''


def build_probe(ws: str) -> str:
    """bench/memprobe.c compiled into WS (readable by the benchmark user); raises RuntimeError."""
    out = os.path.join(ws, "memprobe")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "memprobe.c")
    res = subprocess.run(["cc", "-O2", "-Wall", "-o", out, src], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"cc memprobe.c failed: {common.first_error_line(res.stderr)}")
    os.chmod(out, 0o755)
    return out


def agent_source(probe: str) -> str:
    return MEMORY_AGENT.replace("@PROBE@", repr(probe))


def pick(res: dict) -> dict:
    """What a sample keeps of the agent's answer (a negative figure: not measured)."""
    return {k: (None if isinstance(res.get(k), int) and not isinstance(res.get(k), bool)
                and res[k] < 0 else res.get(k))
            for k in ("hwm_kb", "subtree_kb", "tree_kb", "exit_stop", "lingering")}


def mib(kb: float | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def summarize(samples: dict[str, list[dict]]) -> dict:
    """Per peer and metric: median and max in KiB (None where no run measured it)."""
    out = {}
    for name, runs in samples.items():
        s = {"n": len(runs)}
        for metric, key in METRICS + [("launcher+reaped", "subtree_kb")]:
            vals = [r[key] for r in runs if r.get(key) is not None]
            s[metric] = ({"median": statistics.median(vals), "max": max(vals), "n": len(vals)}
                         if vals else None)
        s["lingering"] = sum(1 for r in runs if r.get("lingering"))
        out[name] = s
    return out


def memory_table(peers: list[Peer], summary: dict, refs: list[str]) -> str:
    """Median and max MiB of the launcher's and the tree's peak RSS, ratios of medians."""
    refs = [r for r in refs if summary.get(r, {}).get("n")]
    header = ["peer", "launcher MiB median", "max", "tree MiB median", "max", "n"]
    header += [f"{m} / {r}" for m, _ in METRICS for r in refs]
    rows = []
    for peer in peers:
        if peer.skip:
            rows.append([peer.name, "skip"] + [""] * (len(header) - 2))
            continue
        s = summary[peer.name]
        row = [peer.name]
        for metric, _ in METRICS:
            m = s.get(metric)
            row += [mib(m and m["median"]), mib(m and m["max"])]
        row.append(str(s["n"]))
        for metric, _ in METRICS:
            for r in refs:
                a, b = s.get(metric), summary[r].get(metric)
                row.append(common.fmt_ratio(a and a["median"], b and b["median"]))
        rows.append(row)
    notes = [f"- {p.name}: {p.skip or p.note}" for p in peers if p.skip or p.note]
    for peer in peers:
        s = summary.get(peer.name)
        if peer.skip or not s:
            continue
        if s.get("launcher") is None:
            notes.append(f"- {peer.name}: its launcher never stopped at its exit under ptrace, "
                         "so no launcher figure")
        if s["lingering"]:
            notes.append(f"- {peer.name}: {s['lingering']} runs left processes after 10 s "
                         "(the tree figure misses them)")
    text = common.markdown_table(header, rows)
    return text + ("\n\n" + "\n".join(notes) if notes else "")


def run_section(title: str, peers: list[Peer], agents: dict[str, Agent], refs: list[str],
                args) -> tuple[str, dict]:
    say(f"{title}: checking {len([p for p in peers if not p.skip])} peers")
    common.check_peers(peers, agents, say)
    load_before = common.load_average()
    samples = common.run_paired(peers, agents, args.iterations, args.warmup, say, pick=pick)
    summary = summarize(samples)
    text = (f"### {title}\n\nload average before/after: {load_before} / "
            f"{common.load_average()}\n\n{memory_table(peers, summary, refs)}\n\n"
            f"Commands:\n\n{common.commands_list(peers)}\n")
    return text, {"peers": [vars(p) for p in peers], "summary": summary, "samples": samples}


# ---------------------------------------------------------------- a detached run's monitor


def rss_kb(pid: int) -> dict:
    """VmRSS from /proc/PID/status and Pss from /proc/PID/smaps_rollup, in KiB."""
    out = {}
    for path, key, name in ((f"/proc/{pid}/status", "VmRSS", "rss_kb"),
                            (f"/proc/{pid}/smaps_rollup", "Pss", "pss_kb")):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key + ":"):
                        out[name] = int(line.split()[1])
        except OSError:
            pass
    return out


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("PPid:"))


def monitor_section(ws: str, args) -> tuple[str, dict]:
    """minictr's monitor and podman's conmon, each for a `sleep` container started detached,
    measured once it runs (after 1 s), then the container is removed. Repeated --monitor-reps
    times, alternating."""
    env = base_env("/root", "root")
    mc = Minictr(ensure_bench_venv(say), os.path.join(ws, "store"), os.path.join(ws, "state"),
                 env)
    name = IMAGE_NAME.format("busybox")
    store = start.podman_peer(ws, "busybox", os.path.join(ws, "busybox-oci"), env, args)
    podman = store.argv[:store.argv.index("run")]
    samples: dict[str, list[dict]] = {"minictr monitor": [], "conmon": []}
    skips = {"conmon": store.skip} if store.skip else {}

    def minictr_once():
        res = mc.cli("run", "-d", name, "sleep", "60")
        if res.returncode != 0:
            raise RuntimeError(f"minictr run -d: {common.first_error_line(res.stderr)}")
        cid = res.stdout.strip().splitlines()[-1]
        try:
            time.sleep(1)
            rows = json.loads(mc.cli("ps", "--format", "json").stdout)
            pid = next(r["pid"] for r in rows if r["id"].startswith(cid))
            return rss_kb(parent_of(int(pid)))
        finally:
            mc.cli("rm", "-f", cid)

    def conmon_once():
        res = subprocess.run(podman + ["run", "-d", "--network", "host", "--ulimit",
                                       "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                                       store.argv[-2], "sleep", "60"],
                             capture_output=True, text=True, env=env)
        if res.returncode != 0:
            raise RuntimeError(f"podman run -d: {common.first_error_line(res.stderr)}")
        cid = res.stdout.strip()
        try:
            time.sleep(1)
            pid = subprocess.run(podman + ["inspect", "--format", "{{.State.ConmonPid}}", cid],
                                 capture_output=True, text=True, env=env).stdout.strip()
            return rss_kb(int(pid))
        finally:
            subprocess.run(podman + ["rm", "-f", "-t", "0", cid], capture_output=True, env=env)

    runs = {"minictr monitor": minictr_once, "conmon": conmon_once}
    for i in range(args.monitor_reps):
        for key in (list(runs) if i % 2 == 0 else list(runs)[::-1]):
            if key in skips:
                continue
            try:
                samples[key].append(runs[key]())
            except (RuntimeError, ValueError, TypeError, StopIteration, OSError) as err:
                skips[key] = str(err)[:200]
    rows = []
    for key, runs_ in samples.items():
        if key in skips or not runs_:
            rows.append([key, "skip", "", "", "", ""])
            continue
        rss = [r["rss_kb"] for r in runs_ if "rss_kb" in r]
        pss = [r["pss_kb"] for r in runs_ if "pss_kb" in r]
        rows.append([key, mib(statistics.median(rss)), mib(max(rss)),
                     mib(statistics.median(pss)) if pss else "-",
                     mib(max(pss)) if pss else "-", str(len(runs_))])
    notes = [f"- {k}: {v}" for k, v in skips.items()]
    text = ("### The process that stays with a detached container (root)\n\n"
            "`minictr run -d busybox sleep 60`'s monitor (the container's parent) and `podman "
            "run -d`'s conmon (runc runtime, as in `bench start`), read 1 s after the start: "
            "VmRSS and PSS (smaps_rollup: shared pages divided among their users).\n\n"
            + common.markdown_table(["process", "RSS MiB median", "max", "PSS MiB median",
                                     "max", "n"], rows)
            + ("\n\n" + "\n".join(notes) if notes else "") + "\n")
    return text, {"samples": samples, "skips": skips}


# ---------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", "-n", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--only", choices=["root", "rootless"])
    p.add_argument("--no-podman", action="store_true")
    p.add_argument("--no-monitor", action="store_true",
                   help="skip the detached monitor against conmon")
    p.add_argument("--monitor-reps", type=int, default=5)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not start.preflight("memory"):
        return 1
    ws = start.make_workspace("minictr-bench-memory-")
    report = [f"## Memory of one start ({common.machine_info()})",
              f"`{' '.join(['python -m bench memory', *argv])}`: {args.iterations} paired "
              f"iterations after {args.warmup} warm-up; peak RSS in MiB (1024 KiB), median and "
              "max; ratios of medians. launcher: the launcher's own VmHWM at its exit; tree: "
              "the largest ru_maxrss of any process in the start's tree."]
    data = {"args": vars(args)}
    agents: dict[str, Agent] = {}
    try:
        source = agent_source(build_probe(ws))
        layout = build_busybox(ws)
        bundle = os.path.join(ws, "bundle-busybox")
        os.makedirs(bundle, mode=0o755)
        rootfs = os.path.join(bundle, "rootfs")
        unpack_rootfs(layout, rootfs)
        if args.only != "rootless":
            ns = cgroup_ns_prefix()
            agents = start_agents(ws, {"host": [], **({"cgroup-ns": ns} if ns else {})},
                                  source=source)
            peers = start.root_peers(ws, "busybox", layout, rootfs, args)
            text, d = run_section("Peak memory of a start (root), busybox", peers, agents,
                                  ROOT_REFS, args)
            report.append(text)
            data["root"] = d
            for a in agents.values():
                a.close()
            if not args.no_monitor:
                text, d = monitor_section(ws, args)
                report.append(text)
                data["monitor"] = d
        if args.only != "root":
            pw = ensure_user()
            prepare_user_workspace(ws, pw)
            ns = cgroup_ns_prefix()
            agents = start_agents(ws, {"user": user_prefix(pw),
                                       **({"user-cgroup-ns": ns + user_prefix(pw)} if ns else {})},
                                  owner=pw, source=source)
            peers = start.rootless_peers(ws, "busybox", layout, rootfs, pw)
            text, d = run_section("Peak memory of a start (rootless), busybox", peers, agents,
                                  ROOTLESS_REFS, args)
            report.append(text)
            data["rootless"] = d
    finally:
        for a in agents.values():
            a.close()
        if not args.keep:
            start.cleanup(ws)
        else:
            say(f"work directory kept: {ws}")
    common.publish("memory", "\n\n".join(report) + "\n", data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
