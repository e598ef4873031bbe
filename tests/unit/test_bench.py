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


def test_memory_pick_summary_and_table():
    from bench import memory

    runs = [memory.pick({"code": 0, "ns": 1, "hwm_kb": kb, "subtree_kb": kb, "tree_kb": kb * 2,
                         "exit_stop": True, "lingering": False}) for kb in (1024, 3072, 2048)]
    assert memory.pick({"hwm_kb": -1, "tree_kb": 5})["hwm_kb"] is None     # not measured
    summary = memory.summarize({"mine": runs, "ref": runs[:1],
                                "no exit stop": [dict(runs[0], hwm_kb=None)]})
    assert summary["mine"]["launcher"] == {"median": 2048, "max": 3072, "n": 3}
    assert summary["mine"]["tree"]["median"] == 4096
    assert summary["no exit stop"]["launcher"] is None
    peers = [common.Peer("mine", ["a"]), common.Peer("ref", ["b"]),
             common.Peer("no exit stop", ["c"]), common.Peer("gone", ["d"], skip="absent")]
    text = memory.memory_table(peers, summary, ["ref", "missing"])
    lines = text.splitlines()
    assert lines[0] == ("| peer | launcher MiB median | max | tree MiB median | max | n "
                        "| launcher / ref | tree / ref |")
    assert "| mine | 2.0 | 3.0 | 4.0 | 6.0 | 3 | 2.00x | 2.00x |" in lines
    assert "| gone | skip |" in text and "- gone: absent" in text
    assert "- no exit stop: its launcher never stopped at its exit" in text


def test_run_paired_keeps_what_pick_takes():
    class FakeAgent:
        def time(self, argv, env, cwd=None):
            return {"code": 0, "ns": 5, "kb": len(argv)}

    peers = [common.Peer("one", ["a"]), common.Peer("two", ["a", "b"])]
    samples = common.run_paired(peers, {"host": FakeAgent()}, 3, 1, lambda s: None,
                                pick=lambda res: res["kb"])
    assert samples == {"one": [1, 1, 1], "two": [2, 2, 2]}


def test_memory_probe_measures_the_launcher_and_its_orphans(tmp_path):
    """bench/memprobe.c through the agent protocol: the launcher's own peak, and a daemonized
    grandchild's larger one in the tree (sizes, not times, are checked)."""
    import shutil

    import pytest

    from bench import memory

    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    agent = common.Agent("m", python=sys.executable, scratch_dir=str(tmp_path),
                         source=memory.agent_source(memory.build_probe(str(tmp_path))))
    env = {"PATH": "/usr/bin:/bin"}
    big = f"{sys.executable} -I -S -c 'x = bytearray(64 << 20)'"
    try:
        small = agent.time(["/bin/true"], env)
        orphan = agent.time(["/bin/sh", "-c", f"({big}) & exit 0"], env, str(tmp_path))
        failed = agent.time(["/bin/sh", "-c", "echo boom >&2; exit 3"], env)
    finally:
        agent.close()
    if small["code"] == 126 and "ptrace" in small.get("stderr", ""):
        pytest.skip("ptrace is not allowed here")
    assert small["code"] == 0 and small["exit_stop"] and 0 < small["hwm_kb"] < 32 << 10
    assert small["tree_kb"] < 32 << 10        # not the agent's interpreter (see memprobe.c)
    assert orphan["code"] == 0 and not orphan["lingering"]
    assert orphan["hwm_kb"] < 32 << 10 <= orphan["tree_kb"]
    assert failed["code"] == 3 and "boom" in failed["stderr"]
