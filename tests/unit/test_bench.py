"""The benchmark harness's pure parts: statistics, tables, the runner's discovery, the bundle
config adaptation, the import-time and phase parsers. (Timings themselves are never asserted.)"""
import json
import subprocess
import sys

from bench import common, start_cost, startenv
from bench.__main__ import discover


def test_percentile_interpolates_between_ranks():
    assert common.percentile([1, 2, 3, 4, 5], 50) == 3
    assert common.percentile([1, 2, 3, 4, 5], 90) == 4.6
    assert common.percentile([7], 90) == 7


def test_summary_in_ms():
    s = common.summarize([1_000_000, 3_000_000, 2_000_000])
    assert (s["n"], s["median"], s["min"]) == (3, 2.0, 1.0)
    assert common.summarize([]) == {"n": 0}


def test_results_table_ratios_and_skips():
    peers = [common.Peer("mine", ["a"]), common.Peer("ref", ["b"]),
             common.Peer("gone", ["c"], skip="not installed: c")]
    text, summary = common.results_table(
        peers, {"mine": [4_000_000] * 3, "ref": [2_000_000] * 3}, ["ref"])
    lines = text.splitlines()
    assert lines[0] == "| peer | median ms | p90 ms | min ms | n | / ref |"
    assert "| mine | 4.0 | 4.0 | 4.0 | 3 | 2.00x |" in lines
    assert "| gone | skip |" in text and "- gone: not installed: c" in text


def test_missing_tool_reason():
    assert common.missing_tools("sh") is None
    assert "no-such-tool-xyz" in common.missing_tools("sh", "no-such-tool-xyz")


def test_agent_times_a_command_and_reports_failure(tmp_path):
    agent = common.Agent("t", python=sys.executable, scratch_dir=str(tmp_path))
    try:
        ok = agent.time(["/bin/true"], {"PATH": "/usr/bin:/bin"})
        bad = agent.time(["/bin/sh", "-c", "echo boom >&2; exit 3"], {"PATH": "/usr/bin:/bin"})
    finally:
        agent.close()
    assert ok["code"] == 0 and ok["ns"] > 0
    assert bad["code"] == 3 and "boom" in bad["stderr"]


def test_runner_discovers_benchmarks_with_main():
    found = discover()
    assert "start" in found and "start_cost" in found
    assert "common" not in found


def test_runner_rejects_unknown_names():
    res = subprocess.run([sys.executable, "-m", "bench", "no-such-bench"], capture_output=True,
                         text=True)
    assert res.returncode == 2 and "unknown benchmark" in res.stderr


def test_peer_config_points_at_bundle_rootfs_and_drops_devices_rootless():
    spec = {"root": {"path": "/var/run/x/rootfs"}, "linux": {"devices": [{"path": "/dev/null"}]}}
    root = startenv.peer_config(spec, rootless=False)
    rootless = startenv.peer_config(spec, rootless=True)
    assert root["root"]["path"] == "rootfs" and root["linux"]["devices"]
    assert "devices" not in rootless["linux"]
    assert spec["root"]["path"] == "/var/run/x/rootfs"        # the input is not changed
    json.dumps(rootless)


def test_import_line_parser():
    m = start_cost.IMPORT_LINE.match("import time:       200 |       8457 |     fnmatch")
    assert m and (m.group(1), m.group(2), m.group(4)) == ("200", "8457", "fnmatch")


def test_split_phases_cuts_api_run_at_clone_and_execve():
    stamps = [("start-up", 10), ("options, paths, GPU driver roots", 20), ("api.run", 100)]
    steps = [(25, 1, "mkdir /sys/fs/cgroup/x"), (30, 1, "clone3(CLONE_NEWNS)"),
             (40, 2, "mount ..."), (60, 2, "execve('/bin/true')")]
    phases = dict(start_cost.split_phases(0, 110, stamps, steps, pid=1))
    assert phases["start-up"] == 10
    assert phases["api.run: plan (image, spec, edits)"] == 5
    assert phases["api.run: state, cgroup, seccomp, until clone3()"] == 5
    assert phases["api.run: clone3() .. child's first step"] == 10
    assert phases["api.run: child setup (mounts, pivot_root, caps) .. execve"] == 20
    assert phases["api.run: mcinit+/bin/true run, wait, cleanup"] == 40
    assert sum(phases.values()) == 110


def test_runner_calls_main_with_or_without_argv():
    from bench.__main__ import call_main

    seen = []

    def with_argv(argv):
        seen.append(argv)
        return 3

    def without_argv():
        seen.append(sys.argv[1:])
        raise SystemExit(4)

    def broken(argv):
        raise RuntimeError("boom")

    assert call_main(with_argv, "a", ["-x"]) == 3
    assert call_main(without_argv, "b", ["-y"]) == 4
    assert call_main(broken, "c", []) == 1
    assert seen == [["-x"], ["-y"]]
