"""Start latency by network: `minictr run --rm --network MODE busybox /bin/true` for the default
network, host, none and bridge (with and without -p), against podman's none and bridge, paired
run by run; rootless, minictr's bridge through pasta and through slirp4netns.

    .venv/bin/python -m bench network [--iterations N] [--no-podman] [--only root|rootless]

Everything runs inside a network namespace the benchmark makes (`ip netns add`), so the
bridges, veths and nftables/iptables rules that minictr and podman make live there, never in
the machine's own namespace; it holds a veth pair with an address and a default route (pasta
copies the addressing of the interface with the default route). The timing agents enter it
with `nsenter --net` (and, rootless, setpriv to the benchmark user), so no wrapper is timed.
Floors: the venv's interpreter, and the same interpreter importing pyroute2, which the launcher
of a bridged container must load (the container's own process never does).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

from bench import common
from bench.common import Agent, Peer, say
from bench.startenv import (IMAGE_NAME, Minictr, base_env, build_busybox, ensure_bench_venv,
                            ensure_user, prepare_user_workspace, start_agents, user_prefix)

NETNS = "mcbench-{}"


def make_netns(name: str) -> list[str]:
    """The benchmark's namespace: lo, and a veth pair with 198.51.100.1/24 and a default route
    via .254 (TEST-NET-2; nothing answers there: no run sends traffic)."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    ns = ["ip", "-n", name]
    for cmd in (["link", "set", "lo", "up"],
                ["link", "add", "bench0", "type", "veth", "peer", "name", "bench1"],
                ["addr", "add", "198.51.100.1/24", "dev", "bench0"],
                ["link", "set", "bench0", "up"], ["link", "set", "bench1", "up"],
                ["route", "add", "default", "via", "198.51.100.254"]):
        subprocess.run(ns + cmd, check=True)
    return ["nsenter", f"--net=/run/netns/{name}"]


def podman_store(ws: str, rootless: bool = False) -> list[str]:
    """Private storage; podman refuses a rootless runroot longer than 50 characters."""
    d = os.path.join(ws, "user" if rootless else "", "podman")
    run = f"/tmp/mcbench-podman-{os.getpid()}" if rootless else os.path.join(d, "run")
    args = ["podman", "--root", os.path.join(d, "root"), "--runroot", run,
            "--network-config-dir", os.path.join(d, "net"), "--cgroup-manager", "cgroupfs"]
    return args + ["--runtime", "runc"]


def podman_peers(ws: str, layout: str, env: dict, agent: str, args, prefix=(),
                 rootless: bool = False) -> list[Peer]:
    """podman with private storage and network config, the image pulled from the same layout;
    runc as the runtime (crun fails on the hybrid cgroups) and --ulimit (this machine's hard
    limits are below podman's defaults), as in bench/start.py."""
    store = podman_store(ws, rootless)
    name = "localhost/bench-busybox:latest"
    run = store + ["run", "--rm", "--pull=never", "--ulimit", "nofile=1024:1024", "--ulimit",
                   "nproc=1024:1024"]
    suffix = " (rootless)" if rootless else ""
    modes = [("none", ["--network", "none"]),
             ("bridge" if not rootless else "slirp4netns",
              ["--network", "bridge" if not rootless else "slirp4netns"]),
             ("bridge -p" if not rootless else "slirp4netns -p",
              ["--network", "bridge" if not rootless else "slirp4netns", "-p", "18091:80"])]
    peers = [Peer(f"podman {mode}{suffix}", run + flags + [name, "/bin/true"], agent, env)
             for mode, flags in modes]
    skip = "--no-podman" if args.no_podman else common.missing_tools("podman", "runc")
    if not skip:
        pulled = subprocess.run([*prefix, *store, "pull", "-q", f"oci:{layout}:latest"],
                                capture_output=True, text=True, env=env)
        if pulled.returncode != 0:
            skip = f"podman pull oci: failed: {common.first_error_line(pulled.stderr)}"
        else:
            subprocess.run([*prefix, *store, "tag", pulled.stdout.strip(), name],
                           capture_output=True, env=env)
    for peer in peers:
        peer.skip = skip
    return peers


def resident(ws: str, enter: list[str]) -> tuple[dict, subprocess.Popen]:
    """A second state directory and bridge (minictr1, 10.86.0.0/16) kept up by a container
    that sleeps through the section: a start there measures a container joining a bridge in
    use, without making the bridge and the table (and removing them at exit)."""
    env = dict(base_env("/root", "root"), MINICTR_ROOT=os.path.join(ws, "store"),
               MINICTR_STATE=os.path.join(ws, "state-resident"), MINICTR_BRIDGE="minictr1",
               MINICTR_BRIDGE_SUBNET="10.86.0.0/16")
    exe = os.path.join(ensure_bench_venv(say), "minictr")
    proc = subprocess.Popen([*enter, exe, "run", "--rm", "--network", "bridge",
                             IMAGE_NAME.format("busybox"), "sh", "-c", "echo up; exec sleep 1d"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "up":
        proc.kill()
        raise RuntimeError(f"the resident container did not start: {proc.stderr.read()[-300:]}")
    return env, proc


def root_peers(ws: str, layout: str, args, resident_env: dict | None = None) -> list[Peer]:
    env = base_env("/root", "root")
    bindir = ensure_bench_venv(say)
    mc = Minictr(bindir, os.path.join(ws, "store"), os.path.join(ws, "state"), env)
    name = IMAGE_NAME.format("busybox")

    def run(*flags: str) -> list[str]:
        return [mc.exe, "run", "--rm", *flags, name, "/bin/true"]

    peers = [
        Peer("minictr default", run(), "netns", mc.env,
             note="the host's namespace without CAP_NET_RAW, abstract unix sockets scoped "
             "(Landlock)"),
        Peer("minictr host", run("--network", "host"), "netns", mc.env),
        Peer("minictr none", run("--network", "none"), "netns", mc.env),
        Peer("minictr bridge", run("--network", "bridge"), "netns", mc.env,
             note="makes minictr0 and its nftables table, and removes them at exit (no other "
             "container is on the bridge)"),
        Peer("minictr bridge -p", run("--network", "bridge", "-p", "18090:80"), "netns",
             mc.env),
        Peer("minictr bridge, bridge in use", run("--network", "bridge"), "netns",
             resident_env or {}, skip=None if resident_env else "no resident container",
             note="another container keeps minictr1 and its table (MINICTR_BRIDGE=minictr1, "
             "its own --state)"),
    ]
    peers += podman_peers(ws, layout, env, "netns", args)
    py = os.path.join(bindir, "python")
    peers += [Peer("python3 -c pass", [py, "-c", "pass"], "netns", env, baseline=True),
              Peer("python3 -c 'import pyroute2'", [py, "-c", "from pyroute2 import IPRoute"],
                   "netns", env, baseline=True, note="what the launcher of a bridge loads")]
    return peers


def rootless_peers(ws: str, layout: str, pw, args) -> list[Peer]:
    env = base_env(pw.pw_dir, pw.pw_name)
    uws = os.path.join(ws, "user")
    bindir = ensure_bench_venv(say)
    mc = Minictr(bindir, os.path.join(uws, "store"), os.path.join(uws, "state"), env,
                 prefix=user_prefix(pw))
    name = IMAGE_NAME.format("busybox")
    mc.load(layout, name)

    def run(*flags: str) -> list[str]:
        return [mc.exe, "run", "--rm", *flags, name, "/bin/true"]

    peers = [
        Peer("minictr none (rootless)", run("--network", "none"), "user-netns", mc.env),
        Peer("minictr bridge, pasta (rootless)", run("--network", "bridge"), "user-netns",
             dict(mc.env, MINICTR_ROOTLESS_NETWORK="pasta"),
             skip=common.missing_tools("pasta")),
        Peer("minictr bridge -p, pasta (rootless)",
             run("--network", "bridge", "-p", "18092:80"), "user-netns",
             dict(mc.env, MINICTR_ROOTLESS_NETWORK="pasta"), skip=common.missing_tools("pasta")),
        Peer("minictr bridge, slirp4netns (rootless)", run("--network", "bridge"), "user-netns",
             dict(mc.env, MINICTR_ROOTLESS_NETWORK="slirp4netns"),
             skip=common.missing_tools("slirp4netns")),
    ]
    peers += podman_peers(ws, layout, env, "user-netns", args, prefix=user_prefix(pw),
                          rootless=True)
    py = os.path.join(bindir, "python")
    peers.append(Peer("python3 -c pass (rootless)", [py, "-c", "pass"], "user-netns", env,
                      baseline=True))
    return peers


def section(title: str, peers: list[Peer], agents: dict[str, Agent], refs: list[str],
            args) -> tuple[str, dict]:
    say(f"{title}: checking {len([p for p in peers if not p.skip])} peers")
    common.check_peers(peers, agents, say)
    before = common.load_average()
    samples = common.run_paired(peers, agents, args.iterations, args.warmup, say)
    table, summary = common.results_table(peers, samples, refs)
    text = (f"### {title}\n\nload average before/after: {before} / {common.load_average()}"
            f"\n\n{table}\n\nCommands:\n\n{common.commands_list(peers)}\n")
    return text, {"peers": [vars(p) for p in peers], "summary": summary, "samples_ns": samples}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench network", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", "-n", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--only", choices=["root", "rootless"])
    p.add_argument("--no-podman", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        say("bench network: needs root (it makes a network namespace and the benchmark user)")
        return 1
    if missing := common.missing_tools("ip", "nsenter", "nft"):
        say(f"bench network: {missing}")
        return 1
    # lower-case letters and digits only: podman names an image pulled from oci:PATH after PATH
    ws = f"/tmp/minictr-bench-network-{os.getpid()}"
    os.mkdir(ws, 0o755)
    netns = NETNS.format(os.getpid())
    report = [f"## Start latency by network ({common.machine_info()})",
              f"`{' '.join(['python -m bench network', *(argv or [])])}`: {args.iterations} "
              f"paired iterations after {args.warmup} warm-up, median/p90/min in ms, ratios "
              "of medians, inside a network namespace of the benchmark's own."]
    data = {"args": vars(args)}
    agents: dict[str, Agent] = {}
    try:
        enter = make_netns(netns)
        layout = build_busybox(ws)
        if args.only != "rootless":
            env = base_env("/root", "root")
            Minictr(ensure_bench_venv(say), os.path.join(ws, "store"),
                    os.path.join(ws, "state"), env).load(layout, IMAGE_NAME.format("busybox"))
            resident_env, keeper = resident(ws, enter)
            agents = start_agents(ws, {"netns": enter})
            try:
                text, d = section("Start latency by network (root), busybox", root_peers(
                    ws, layout, args, resident_env), agents, ["minictr none", "podman bridge"],
                    args)
            finally:
                keeper.terminate()
                keeper.wait()
            report.append(text)
            data["root"] = d
            for a in agents.values():
                a.close()
            agents = {}
        if args.only != "root":
            pw = ensure_user()
            prepare_user_workspace(ws, pw)
            for d in (os.path.join(ws, "user", "podman"), f"/tmp/mcbench-podman-{os.getpid()}"):
                os.makedirs(d, exist_ok=True)
                os.chown(d, pw.pw_uid, pw.pw_gid)
            agents = start_agents(ws, {"user-netns": enter + user_prefix(pw)}, owner=pw)
            text, d = section("Start latency by network (rootless), busybox", rootless_peers(
                ws, layout, pw, args), agents, ["minictr none (rootless)"], args)
            report.append(text)
            data["rootless"] = d
    finally:
        for a in agents.values():
            a.close()
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        from bench.start import cleanup

        cleanup(ws)
        shutil.rmtree(f"/tmp/mcbench-podman-{os.getpid()}", ignore_errors=True)
    common.publish("network", "\n\n".join(report) + "\n", data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
