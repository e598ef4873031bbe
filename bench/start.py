"""Start latency: `minictr run --rm IMAGE /bin/true` against crun, runc, bwrap, podman (root) and
rootless crun, bwrap, ch-run (as an unprivileged user), paired run by run on the same rootfs.

    .venv/bin/python -m bench start [--iterations N] [--quick] [--no-debian] [--no-podman]
                                    [--only root|rootless]

What each peer runs is printed with the results (bench/README.md explains the choices): the
image is built by rootfs_tools and loaded into a private minictr store; the peers get the same
layers unpacked by umoci into an OCI bundle whose config.json is `minictr spec`'s output with
root.path set to the bundle's rootfs (`minictr spec --bundle`: the files its mounts name are
written beside it; and, rootless, linux.devices dropped: crun 1.8.1 cannot
create device nodes from a non-root parent, it bind-mounts its default devices anyway).

crun 1.8.1 refuses the hybrid cgroup layout (cgroup v2 at /sys/fs/cgroup/unified beside v1
controllers). It is timed by an agent living in a private mount namespace with an empty tmpfs
over /sys/fs/cgroup/unified, set up once; the same agent times /bin/true there and in the host
namespaces, so any cost of that context shows (it is nil: the namespace exists before timing).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

from bench import common
from bench.common import Agent, Peer, say
from bench.startenv import (IMAGE_NAME, REPO, USER_VENV, Minictr, base_env, build_busybox,
                            build_debian, cgroup_ns_prefix, ensure_bench_venv, ensure_user,
                            load_and_plan, peer_config, prepare_user_workspace, start_agents,
                            unpack_rootfs, user_prefix, write_config)

ROOT_REFS = ["crun", "runc"]
ROOTLESS_REFS = ["crun (rootless)"]


def floors(bindir: str, agent: str, env: dict, true_agents: list[str]) -> list[Peer]:
    py = os.path.join(bindir, "python")
    peers = [Peer("python3 -c pass", [py, "-c", "pass"], agent, env, baseline=True,
                  note=f"the venv's interpreter ({os.path.realpath(py)}): the floor of any "
                  "Python launcher"),
             Peer("python3 -I -S -c pass", [py, "-I", "-S", "-c", "pass"], agent, env,
                  baseline=True, note="what minictr's launchers run (minictr/launchers.py)")]
    for a in true_agents:
        peers.append(Peer(f"/bin/true [{a}]", ["/bin/true"], a, env, baseline=True))
    return peers


# ---------------------------------------------------------------- the two sections


def root_peers(ws: str, image: str, layout: str, rootfs: str, args) -> list[Peer]:
    env = base_env("/root", "root")
    bindir = ensure_bench_venv(say)
    mc = Minictr(bindir, os.path.join(ws, "store"), os.path.join(ws, "state"), env)
    name = IMAGE_NAME.format(image)
    peers = [Peer("minictr", mc.run_argv(name), "host", mc.env,
                  note=f"`{mc.exe}`: installed (not editable) in a venv of /usr/bin/python3, "
                  "image in a private store")]
    dev_bindir = os.path.join(REPO, ".venv", "bin")
    if os.path.exists(os.path.join(dev_bindir, "minictr")):
        peers.append(Peer("minictr (.venv)", [os.path.join(dev_bindir, "minictr"),
                                              *mc.run_argv(name)[1:]], "host", mc.env,
                          note="the checkout's editable install (`make install`'s -I -S "
                          "launcher, its source tree on sys.path)"))
    spec = load_and_plan(mc, layout, rootfs, name, peers[0], None)
    if len(peers) > 1 and peers[0].skip:
        peers[1].skip = peers[0].skip
    bundle = os.path.dirname(rootfs)
    crun_ctx = "cgroup-ns" if cgroup_ns_prefix() else "host"
    write_config(bundle, "config.json", peer_config(spec, rootless=False))
    peers += [
        Peer("crun", ["crun", "--root", os.path.join(ws, "crun"), "run", "--bundle", bundle,
                      f"b-{image}"], crun_ctx, env, skip=common.missing_tools("crun"),
             note="in a private mount namespace with a tmpfs over /sys/fs/cgroup/unified"
             if crun_ctx != "host" else ""),
        Peer("runc", ["runc", "--root", os.path.join(ws, "runc"), "run", "--bundle", bundle,
                      f"b-{image}"], "host", env, skip=common.missing_tools("runc")),
        Peer("bwrap", ["bwrap", "--unshare-all", "--die-with-parent", "--bind", rootfs, "/",
                       "--proc", "/proc", "--dev", "/dev", "/bin/true"], "host", env,
             skip=common.missing_tools("bwrap")),
        podman_peer(ws, image, layout, env, args),
    ]
    note_fallback_config(peers, peers[0], ("crun", "runc"))
    extra = []
    if os.path.exists(os.path.join(dev_bindir, "python")):
        extra.append(Peer("python3 -c pass (.venv)", [os.path.join(dev_bindir, "python"), "-c",
                                                      "pass"], "host", env, baseline=True))
    return peers + floors(bindir, "host", env,
                          ["host", crun_ctx] if crun_ctx != "host" else ["host"]) + extra


def note_fallback_config(peers: list[Peer], mine: Peer, names: tuple[str, ...]) -> None:
    """When minictr could not load or plan, say the runtimes' config.json came from the spec
    builder called directly (startenv.load_and_plan)."""
    if not mine.skip:
        return
    for peer in peers:
        if peer.name in names:
            peer.note = "; ".join(filter(None, [peer.note, "config.json from "
                                                "minictr.spec.builder (minictr load/spec failed)"]))


def podman_peer(ws: str, image: str, layout: str, env: dict, args) -> Peer:
    """podman with private storage, image pulled from the same OCI layout. Its default crun
    fails on the hybrid cgroups, so runc; the sandbox's hard rlimits are below podman's
    defaults, so --ulimit; --network host as minictr's default."""
    name = f"localhost/bench-{image}:latest"
    store = ["podman", "--root", os.path.join(ws, "podman", "root"), "--runroot",
             os.path.join(ws, "podman", "run"), "--runtime", "runc", "--cgroup-manager",
             "cgroupfs"]
    argv = store + ["run", "--rm", "--pull=never", "--network", "host", "--ulimit",
                    "nofile=1024:1024", "--ulimit", "nproc=1024:1024", name, "/bin/true"]
    peer = Peer("podman", argv, "host", env, note="runc runtime, --network host, --ulimit nofile "
                "and nproc (podman's defaults exceed this machine's hard limits)")
    if args.no_podman:
        peer.skip = "--no-podman"
        return peer
    peer.skip = common.missing_tools("podman", "runc")
    if peer.skip:
        return peer
    pulled = subprocess.run(store + ["pull", "-q", f"oci:{layout}:latest"], capture_output=True,
                            text=True, env=env)
    if pulled.returncode != 0:
        peer.skip = f"podman pull oci: failed: {common.first_error_line(pulled.stderr)}"
        return peer
    subprocess.run(store + ["tag", pulled.stdout.strip(), name], capture_output=True, env=env)
    return peer


def rootless_peers(ws: str, image: str, layout: str, rootfs: str, pw) -> list[Peer]:
    env = base_env(pw.pw_dir, pw.pw_name)
    uws = os.path.join(ws, "user")
    bindir = ensure_bench_venv(say)
    mc = Minictr(bindir, os.path.join(uws, "store"), os.path.join(uws, "state"), env,
                 prefix=user_prefix(pw))
    name = IMAGE_NAME.format(image)
    peers = [Peer("minictr (rootless)", mc.run_argv(name), "user", mc.env,
                  note=f"`{mc.exe}` from {USER_VENV} (/usr/bin/python3), run as {pw.pw_name}")]
    spec = load_and_plan(mc, layout, rootfs, name, peers[0], pw)
    bundle = os.path.dirname(rootfs)
    config = write_config(bundle, "config-rootless.json", peer_config(spec, rootless=True))
    crun_ctx = "user-cgroup-ns" if cgroup_ns_prefix() else "user"
    peers += [
        Peer("crun (rootless)", ["crun", "--root", os.path.join(uws, "crun"), "run", "--config",
                                 config, "--bundle", bundle, f"u-{image}"], crun_ctx, env,
             skip=common.missing_tools("crun"),
             note="same uid/gid maps as minictr's plan (newuidmap); linux.devices dropped"),
        Peer("bwrap (rootless)", ["bwrap", "--unshare-all", "--unshare-user", "--die-with-parent",
                                  "--bind", rootfs, "/", "--proc", "/proc", "--dev", "/dev",
                                  "/bin/true"], "user", env, skip=common.missing_tools("bwrap")),
        Peer("ch-run (rootless)", ["ch-run", rootfs, "--", "/bin/true"], "user", env,
             skip=common.missing_tools("ch-run")),
    ]
    note_fallback_config(peers, peers[0], ("crun (rootless)",))
    return peers + floors(bindir, "user", env,
                          ["user", crun_ctx] if crun_ctx != "user" else ["user"])


# ---------------------------------------------------------------- running and reporting


def run_section(title: str, peers: list[Peer], agents: dict[str, Agent], refs: list[str],
                args) -> tuple[str, dict]:
    say(f"{title}: checking {len([p for p in peers if not p.skip])} peers")
    common.check_peers(peers, agents, say)
    load_before = common.load_average()
    samples = common.run_paired(peers, agents, args.iterations, args.warmup, say)
    table, summary = common.results_table(peers, samples, refs)
    text = (f"### {title}\n\nload average before/after: {load_before} / "
            f"{common.load_average()}\n\n{table}\n\nCommands:\n\n{common.commands_list(peers)}\n")
    return text, {"peers": [vars(p) for p in peers], "summary": summary, "samples_ns": samples}


def targets(summary: dict, rootless: bool) -> str:
    """Issue 15's targets: root median <= 2x crun and <= 1x runc; rootless <= 2x rootless crun."""
    def med(name):
        return summary.get(name, {}).get("median")
    checks = ([("minictr (rootless)", "crun (rootless)", 2.0)] if rootless
              else [("minictr", "crun", 2.0), ("minictr", "runc", 1.0)])
    out = []
    for mine, ref, limit in checks:
        a, b = med(mine), med(ref)
        if a and b:
            verdict = "met" if a / b <= limit else "NOT met"
            out.append(f"- target {mine} <= {limit}x {ref}: {a / b:.2f}x, {verdict}")
        else:
            out.append(f"- target {mine} <= {limit}x {ref}: not measured")
    return "\n".join(out)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench start", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", "-n", type=int, default=40)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="10 iterations, busybox only")
    p.add_argument("--only", choices=["root", "rootless"])
    p.add_argument("--no-debian", action="store_true", help="skip the Debian image")
    p.add_argument("--no-podman", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    if args.quick:
        args.iterations, args.no_debian = 10, True
    return args


def prepare_images(ws: str, args) -> tuple[dict[str, str], dict[str, str]]:
    """Image name -> OCI layout, and the reasons for images that could not be made."""
    layouts, skipped = {"busybox": build_busybox(ws)}, {}
    if args.no_debian:
        skipped["debian"] = "--no-debian"
    else:
        try:
            say("building the Debian image with debootstrap (cached after the first run)")
            layouts["debian"] = build_debian(log=sys.stderr)
        except RuntimeError as err:
            skipped["debian"] = str(err)
    return layouts, skipped


def make_workspace(prefix: str) -> str:
    """A work directory the benchmark user can enter, whose name has no "_": podman names the
    oci: image after its path, and a trailing or doubled "_" is no valid image name."""
    ws = tempfile.mkdtemp(prefix=prefix)
    while "_" in os.path.basename(ws):
        os.rmdir(ws)
        ws = tempfile.mkdtemp(prefix=prefix)
    os.chmod(ws, 0o755)
    return ws


def preflight(name: str) -> bool:
    """Root and umoci, which the benchmarks that start containers as `bench start` does need;
    False, having said why, without them."""
    if os.geteuid() != 0:
        say(f"bench {name}: needs root (it compares root runtimes and creates the rootless user)")
        return False
    if missing := common.missing_tools("umoci"):
        say(f"bench {name}: {missing}")
        return False
    return True


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not preflight("start"):
        return 1
    ws = make_workspace("minictr-bench-start-")
    report = [f"## Start latency ({common.machine_info()})",
              f"`{' '.join(['python -m bench start', *(argv or [])])}`: {args.iterations} paired "
              f"iterations after {args.warmup} warm-up, median/p90/min in ms, ratios of medians."]
    data = {"args": vars(args)}
    agents: dict[str, Agent] = {}
    try:
        layouts, skipped = prepare_images(ws, args)
        for image, reason in skipped.items():
            report.append(f"\n{image} image skipped: {reason}")
        rootfses = {}
        for image, layout in layouts.items():
            bundle = os.path.join(ws, f"bundle-{image}")
            os.makedirs(bundle, mode=0o755)
            rootfses[image] = os.path.join(bundle, "rootfs")
            unpack_rootfs(layout, rootfses[image])
        if args.only != "rootless":
            ns = cgroup_ns_prefix()
            agents = start_agents(ws, {"host": [], **({"cgroup-ns": ns} if ns else {})})
            for image, layout in layouts.items():
                peers = root_peers(ws, image, layout, rootfses[image], args)
                text, d = run_section(f"Start latency (root), {image}", peers, agents,
                                      ROOT_REFS, args)
                report += [text, targets(d["summary"], rootless=False)]
                data[f"root-{image}"] = d
            for a in agents.values():
                a.close()
        if args.only != "root":
            pw = ensure_user()
            prepare_user_workspace(ws, pw)
            ns = cgroup_ns_prefix()
            agents = start_agents(ws, {"user": user_prefix(pw),
                                       **({"user-cgroup-ns": ns + user_prefix(pw)} if ns else {})},
                                  owner=pw)
            for image, layout in layouts.items():
                peers = rootless_peers(ws, image, layout, rootfses[image], pw)
                text, d = run_section(f"Start latency (rootless), {image}", peers, agents,
                                      ROOTLESS_REFS, args)
                report += [text, targets(d["summary"], rootless=True)]
                data[f"rootless-{image}"] = d
    finally:
        for a in agents.values():
            a.close()
        if not args.keep:
            cleanup(ws)
        else:
            say(f"work directory kept: {ws}")
    common.publish("start", "\n\n".join(report) + "\n", data)
    return 0


def cleanup(ws: str) -> None:
    """The workspace holds root-owned and user-owned trees, and podman's private storage: podman
    removes its own containers and images first (its overlay layers may be mounted). Not
    `podman system reset`, which also removes host-wide networks."""
    podman = os.path.join(ws, "podman")
    if os.path.isdir(podman) and shutil.which("podman"):
        store = ["podman", "--root", os.path.join(podman, "root"), "--runroot",
                 os.path.join(podman, "run")]
        subprocess.run(store + ["rm", "-a", "-f"], capture_output=True)
        subprocess.run(store + ["rmi", "-a", "-f"], capture_output=True)
        subprocess.run(["umount", "-R", "-l", os.path.join(podman, "root", "overlay")],
                       capture_output=True)
    shutil.rmtree(ws, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
