"""Shared helpers for the benchmarks: timing agents, paired runs, statistics, markdown tables,
peer availability checks.

How a start is timed. Every command is timed by a *timing agent*: a small stdlib-only Python
process (``AGENT_SOURCE``) that reads one request per line, starts the command with
posix_spawn(3) (stdin and stdout on /dev/null, stderr to a scratch file read only on failure),
waits for it with waitpid(2) and answers the elapsed CLOCK_MONOTONIC time. The same agent code
runs in every context a peer needs: in the host's namespaces as root, inside a private mount
namespace (crun 1.8.1 needs an empty /sys/fs/cgroup/unified there, see bench/README.md), or as
the unprivileged benchmark user. So each peer pays exactly one fork+exec+wait under the same
code and no wrapper (sh, unshare, su) sits inside the timed interval.

Pairing. ``run_paired`` runs every peer once per iteration, in a fresh shuffled order each time
(a seeded RNG, so reruns are comparable), so drift in machine load spreads over all peers alike.
"""
from __future__ import annotations

import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
Progress = Callable[[str], None]

AGENT_SOURCE = r'''
import json, os, sys, time
err_path = sys.argv[1]
devnull = os.open(os.devnull, os.O_RDWR)
out = sys.stdout
for line in sys.stdin:
    req = json.loads(line)
    fa = [(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, devnull, 1),
          (os.POSIX_SPAWN_OPEN, 2, err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)]
    env = req["env"]
    cwd = req.get("cwd")
    if cwd:
        os.chdir(cwd)
    try:
        t0 = time.monotonic_ns()
        pid = os.posix_spawnp(req["argv"][0], req["argv"], env, file_actions=fa)
        _, status = os.waitpid(pid, 0)
        t1 = time.monotonic_ns()
        code = os.waitstatus_to_exitcode(status)
    except OSError as e:
        t0 = t1 = 0
        code = 127
        with open(err_path, "w") as f:
            f.write(str(e))
    msg = {"ns": t1 - t0, "code": code}
    if code != 0:
        with open(err_path, errors="replace") as f:
            msg["stderr"] = f.read()[-2000:]
    out.write(json.dumps(msg) + "\n")
    out.flush()
'''


class AgentError(RuntimeError):
    pass


class Agent:
    """A timing agent process; ``prefix`` is what puts it in its context (e.g. ``unshare -m sh -c
    'mount ...; exec "$@"' sh``, or ``setpriv --reuid U ...``). It stays up for the whole run."""

    def __init__(self, name: str, prefix: list[str] = (), python: str = "/usr/bin/python3",
                 scratch_dir: str | None = None, source: str = AGENT_SOURCE):
        self.name = name
        fd, self.err_path = tempfile.mkstemp(prefix=f"agent-{name}-", dir=scratch_dir)
        os.close(fd)
        # ``source``: another agent speaking the same protocol (bench/memory.py's measures
        # memory); it answers at least "code", and "stderr" when that is not 0
        self.argv = [*prefix, python, "-I", "-S", "-c", source, self.err_path]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)

    def chown_scratch(self, uid: int, gid: int) -> None:
        os.chown(self.err_path, uid, gid)

    def time(self, argv: list[str], env: dict[str, str], cwd: str | None = None) -> dict:
        """One timed start: {"ns": elapsed, "code": exit code, "stderr": tail if it failed}."""
        try:
            self.proc.stdin.write(json.dumps({"argv": argv, "env": env, "cwd": cwd}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            raise AgentError(f"timing agent {self.name!r} died: {self.proc.stderr.read()[-500:]}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            os.unlink(self.err_path)
        except OSError:
            pass


@dataclass
class Peer:
    """One command to time. ``skip`` holds the reason when it cannot run here."""

    name: str
    argv: list[str]
    agent: str = "host"
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    note: str = ""
    skip: str | None = None
    baseline: bool = False       # a floor (python, /bin/true): not a ratio reference


def missing_tools(*tools: str) -> str | None:
    """A one-line skip reason when a tool is not on PATH, else None."""
    absent = [t for t in tools if shutil.which(t) is None]
    if absent:
        return f"not installed: {', '.join(absent)} (see DEB_TEST in the Makefile)"
    return None


def first_error_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "(no output)"


def check_peers(peers: list[Peer], agents: dict[str, Agent], progress: Progress) -> None:
    """Run each available peer once; one that fails is marked skipped with its error."""
    for peer in peers:
        if peer.skip:
            continue
        if peer.agent not in agents:
            peer.skip = f"its context ({peer.agent}) could not be set up"
            continue
        res = agents[peer.agent].time(peer.argv, peer.env, peer.cwd)
        if res["code"] != 0:
            peer.skip = f"failed here (exit {res['code']}): {first_error_line(res.get('stderr'))}"
            progress(f"  skip {peer.name}: {peer.skip}")


def run_paired(peers: list[Peer], agents: dict[str, Agent], iterations: int, warmup: int,
               progress: Progress, seed: int = 1,
               pick: Callable[[dict], object] = lambda res: res["ns"]) -> dict[str, list]:
    """Samples (ns, or what ``pick`` takes from the agent's answer) per peer, every available
    peer once per iteration in a shuffled order. A run that fails during the loop is reported,
    and its sample dropped."""
    live = [p for p in peers if not p.skip]
    samples: dict[str, list] = {p.name: [] for p in live}
    failures: dict[str, int] = {}
    rng = random.Random(seed)
    for i in range(warmup + iterations):
        order = live[:]
        rng.shuffle(order)
        for peer in order:
            res = agents[peer.agent].time(peer.argv, peer.env, peer.cwd)
            if res["code"] != 0:
                failures[peer.name] = failures.get(peer.name, 0) + 1
                if failures[peer.name] == 1:
                    progress(f"  {peer.name} failed on iteration {i}: "
                             f"{first_error_line(res.get('stderr'))}")
                continue
            if i >= warmup:
                samples[peer.name].append(pick(res))
        if i >= warmup and (i - warmup + 1) % max(1, iterations // 5) == 0:
            progress(f"  {i - warmup + 1}/{iterations} iterations")
    for name, n in failures.items():
        progress(f"  {name}: {n} failed runs dropped")
    return samples


# ---------------------------------------------------------------- statistics


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(ns: list[int]) -> dict:
    ms = [v / 1e6 for v in ns]
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "median": statistics.median(ms), "p90": percentile(ms, 90),
            "min": min(ms), "mean": statistics.fmean(ms)}


def fmt_ms(v: float | None) -> str:
    return "-" if v is None or v != v else f"{v:.1f}"


def fmt_ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}x"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(peers: list[Peer], samples: dict[str, list[int]],
                  references: list[str]) -> tuple[str, dict]:
    """The markdown table (median, p90, min, ratios of medians to each reference peer) and the
    summary dict. Skipped peers appear with their reason."""
    summary = {name: summarize(v) for name, v in samples.items()}
    refs = [r for r in references if summary.get(r, {}).get("n")]
    header = ["peer", "median ms", "p90 ms", "min ms", "n"] + [f"/ {r}" for r in refs]
    rows = []
    for peer in peers:
        if peer.skip:
            rows.append([peer.name, "skip", "", "", ""] + [""] * len(refs))
            continue
        s = summary[peer.name]
        rows.append([peer.name, fmt_ms(s.get("median")), fmt_ms(s.get("p90")),
                     fmt_ms(s.get("min")), str(s["n"])]
                    + [fmt_ratio(s.get("median"), summary[r]["median"]) for r in refs])
    notes = [f"- {p.name}: {p.skip or p.note}" for p in peers if p.skip or p.note]
    text = markdown_table(header, rows)
    if notes:
        text += "\n\n" + "\n".join(notes)
    return text, summary


def commands_list(peers: list[Peer]) -> str:
    """What each peer ran (agent context, then the argv), for the record."""
    return "\n".join(f"- `{p.name}` [{p.agent}]: `{shlex.join(p.argv)}`" for p in peers
                     if not p.skip)


# ---------------------------------------------------------------- the record


def machine_info() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f
                        if ln.startswith("model name")), "")
    except OSError:
        pass
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (f"{platform.node()}: Linux {platform.release()}, {os.cpu_count()} CPUs ({cpu}), "
            f"Python {platform.python_version()}, {when}")


def load_average() -> str:
    """/proc/loadavg's 1, 5 and 15 minute averages: a busy machine widens the spread."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def write_results(name: str, text: str, data: dict, results_dir: str = RESULTS_DIR) -> str:
    """bench/results/NAME-TIMESTAMP.{md,json} (the directory is git-ignored)."""
    os.makedirs(results_dir, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = os.path.join(results_dir, f"{name}-{stamp}")
    with open(base + ".md", "w") as f:
        f.write(text)
    with open(base + ".json", "w") as f:
        json.dump(data, f, indent=2, default=str)
    return base + ".md"


def publish(name: str, text: str, data: dict) -> str:
    """Keep a benchmark's results (``write_results``), print its markdown, say where it went."""
    path = write_results(name, text, data)
    print(text, end="" if text.endswith("\n") else "\n")
    say(f"results written to {path}")
    return path


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
