"""Start latency: `minictr run --rm IMAGE /bin/true` against crun, runc, bwrap, podman (root) and
rootless crun, bwrap, ch-run (as an unprivileged user), paired run by run on the same rootfs.

    .venv/bin/python -m bench start [--iterations N] [--quick] [--no-debian] [--no-podman]
                                    [--only root|rootless]

What each peer runs is printed with the results (bench/README.md explains the choices): the
image is built by rootfs_tools and loaded into a private minictr store; the peers get the same
layers unpacked by umoci into an OCI bundle whose config.json is `minictr spec`'s output with
root.path set to the bundle's rootfs (and, rootless, linux.devices dropped: crun 1.8.1 cannot
create device nodes from a non-root parent, it bind-mounts its default devices anyway).

crun 1.8.1 refuses the hybrid cgroup layout (cgroup v2 at /sys/fs/cgroup/unified beside v1
controllers). It is timed by an agent living in a private mount namespace with an empty tmpfs
over /sys/fs/cgroup/unified, set up once; the same agent times /bin/true there and in the host
namespaces, so any cost of that context shows (it is nil: the namespace exists before timing).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time

from bench import common
from bench.common import Agent, Peer, say

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER = "minictr-bench"
USER_VENV = "/opt/minictr-bench-venv"
IMAGE_NAME = "bench-{}:latest"
CACHE_DIR = os.path.join(common.RESULTS_DIR, "cache")
HYBRID_V2 = "/sys/fs/cgroup/unified"
ROOT_REFS = ["crun", "runc"]
ROOTLESS_REFS = ["crun (rootless)"]


# ---------------------------------------------------------------- images and bundles


def build_busybox(ws: str) -> str:
    """The busybox OCI layout, as `python -m rootfs_tools busybox DIR` makes it."""
    from rootfs_tools import build

    out = os.path.join(ws, "busybox-oci")
    build.busybox(out)
    return out


def build_debian(log) -> str:
    """The Debian bookworm minbase layout (debootstrap, needs the Debian mirror), cached under
    bench/results/cache/ since it takes minutes; raises RuntimeError with the reason."""
    from rootfs_tools import ToolError, build

    out = os.path.join(CACHE_DIR, "debian-oci")
    if os.path.exists(os.path.join(out, "index.json")):
        return out
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed")
    tmp = tempfile.mkdtemp(dir=os.path.dirname(out) if os.path.isdir(CACHE_DIR) else None)
    try:
        build.debian(os.path.join(tmp, "oci"), log=log)
    except (ToolError, OSError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"debootstrap failed: {err}") from err
    os.makedirs(CACHE_DIR, exist_ok=True)
    os.rename(os.path.join(tmp, "oci"), out)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def unpack_rootfs(layout: str, dest: str) -> None:
    """The image's layers applied in order (whiteouts honoured) by umoci, the OCI tool; adds the
    empty /proc /dev /sys mount points the peers expect to find."""
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{layout}:latest", dest], check=True,
                   capture_output=True)
    os.chmod(dest, 0o755)
    for d in ("proc", "dev", "sys"):
        os.makedirs(os.path.join(dest, d), exist_ok=True)


def peer_config(spec: dict, rootless: bool) -> dict:
    """`minictr spec`'s plan made into a bundle's config.json for crun/runc."""
    spec = json.loads(json.dumps(spec))
    spec["root"] = {"path": "rootfs", "readonly": False}
    if rootless:
        # crun 1.8.1 makes device nodes in a mount namespace it unshares from the (unprivileged)
        # parent: EPERM. Without linux.devices it bind-mounts the same six default devices.
        spec.get("linux", {}).pop("devices", None)
    return spec


def write_config(bundle: str, name: str, spec: dict) -> str:
    """BUNDLE/NAME: config.json for the root peers, config-rootless.json for rootless crun
    (`crun run --config`); both use the bundle's one rootfs/."""
    path = os.path.join(bundle, name)
    with open(path, "w") as f:
        json.dump(spec, f, indent=1)
    os.chmod(path, 0o644)
    return path


# ---------------------------------------------------------------- the unprivileged user


def ensure_user() -> pwd.struct_passwd:
    """The benchmark user (created with `useradd -m` if absent, which also gives it a
    subordinate id range in /etc/subuid on Debian)."""
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], check=True)
        return pwd.getpwnam(USER)


def _source_hash() -> str:
    h = hashlib.sha256()
    for top in ("minictr", "native", "rootfs_tools", "setup.py", "pyproject.toml"):
        path = os.path.join(REPO, top)
        files = [path] if os.path.isfile(path) else sorted(
            os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
            if f.endswith((".py", ".c", ".h", ".toml", ".sh")) and "__pycache__" not in d)
        for name in files:
            h.update(name.encode())
            with open(name, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def ensure_bench_venv(progress) -> str:
    """A venv anyone can read, built from /usr/bin/python3 (the project's venv uses a pyenv
    interpreter under /root, unreadable by the benchmark user) with minictr installed from this
    checkout, not editable (an editable install's .pth finder costs milliseconds per start).
    Both the root and the rootless runs use it. Rebuilt when the sources change."""
    stamp = os.path.join(USER_VENV, ".minictr-source")
    digest = _source_hash()
    if os.path.exists(stamp) and open(stamp).read() == digest:
        return os.path.join(USER_VENV, "bin")
    progress(f"installing minictr into {USER_VENV} (~1 min)")
    if not os.path.exists(os.path.join(USER_VENV, "bin", "python")):
        subprocess.run(["/usr/bin/python3", "-m", "venv", USER_VENV], check=True)
    subprocess.run([os.path.join(USER_VENV, "bin", "pip"), "install", "-q",
                    "--force-reinstall", "--no-deps", REPO], check=True, capture_output=True)
    subprocess.run([os.path.join(USER_VENV, "bin", "pip"), "install", "-q", REPO], check=True,
                   capture_output=True)
    with open(stamp, "w") as f:
        f.write(digest)
    return os.path.join(USER_VENV, "bin")


# ---------------------------------------------------------------- contexts (timing agents)


def user_prefix(pw) -> list[str]:
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"]


def cgroup_ns_prefix() -> list[str]:
    """A private mount namespace with an empty tmpfs over the cgroup v2 mount of a hybrid
    layout, so crun sees plain cgroup v1 (nothing when the layout is not hybrid)."""
    if not os.path.ismount(HYBRID_V2):
        return []
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            f'mount -t tmpfs none {HYBRID_V2} && exec "$@"', "sh"]


def start_agents(ws: str, kinds: dict[str, list[str]], owner=None) -> dict[str, Agent]:
    agents = {}
    for name, prefix in kinds.items():
        agent = Agent(name, prefix, scratch_dir=ws)
        if owner is not None:
            agent.chown_scratch(owner.pw_uid, owner.pw_gid)
        agents[name] = agent
    return agents


# ---------------------------------------------------------------- minictr itself


class Minictr:
    """The installed CLI with a private store and state dir, run as root or as the user."""

    def __init__(self, bindir: str, store: str, state: str, env: dict, prefix=()):
        self.exe = os.path.join(bindir, "minictr")
        self.python = os.path.join(bindir, "python")
        self.env = dict(env, MINICTR_ROOT=store, MINICTR_STATE=state)
        self.prefix = list(prefix)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix, self.exe, *args], env=self.env, capture_output=True,
                              text=True, timeout=300)

    def load(self, layout: str, name: str) -> None:
        res = self.cli("load", "--tag", name, f"oci:{layout}:latest")
        if res.returncode != 0:
            raise RuntimeError(f"minictr load failed: {common.first_error_line(res.stderr)}")

    def spec(self, name: str) -> dict:
        res = self.cli("spec", name, "/bin/true")
        if res.returncode != 0:
            raise RuntimeError(f"minictr spec failed: {common.first_error_line(res.stderr)}")
        return json.loads(res.stdout)

    def run_argv(self, name: str) -> list[str]:
        return [self.exe, "run", "--rm", name, "/bin/true"]


def load_and_plan(mc: Minictr, layout: str, rootfs: str, name: str, peer: Peer, pw) -> dict:
    """Load the image into minictr's store and return `minictr spec`'s plan. If that fails,
    minictr's peer is skipped with the reason, and the plan comes from the same builder called
    directly (so the peers still run, and the table says so)."""
    try:
        mc.load(layout, name)
        return mc.spec(name)
    except RuntimeError as err:
        peer.skip = str(err)
    from minictr.runtime.idmap import rootless_mappings
    from minictr.spec.builder import build_spec
    from minictr.spec.options import RunOptions

    config = image_config(layout)
    uid_maps = gid_maps = None
    host_ids = None
    if pw is not None:
        host_ids = (pw.pw_uid, pw.pw_gid)
        uid_maps, gid_maps = rootless_mappings(uid=pw.pw_uid, gid=pw.pw_gid)

    def read_file(path):
        with open(os.path.join(rootfs, path.lstrip("/")), "rb") as f:
            return f.read()
    return build_spec(config, RunOptions(image=name, command=("/bin/true",)),
                      rootless=pw is not None, container_id="0" * 64, rootfs_path="rootfs",
                      read_file=read_file, uid_mappings=uid_maps, gid_mappings=gid_maps,
                      host_ids=host_ids)


def image_config(layout: str) -> dict:
    """The image config JSON of the layout's only image (index -> manifest -> config)."""
    def blob(digest):
        with open(os.path.join(layout, "blobs", *digest.split(":", 1))) as f:
            return json.load(f)
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    return blob(blob(index["manifests"][0]["digest"])["config"]["digest"])


def base_env(home: str, user: str) -> dict[str, str]:
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": home, "USER": user, "LOGNAME": user, "LANG": "C.UTF-8"}


def floors(bindir: str, agent: str, env: dict, true_agents: list[str]) -> list[Peer]:
    py = os.path.join(bindir, "python")
    peers = [Peer("python3 -c pass", [py, "-c", "pass"], agent, env, baseline=True,
                  note=f"the venv's interpreter ({os.path.realpath(py)}): the floor of any "
                  "Python launcher"),
             Peer("python3 -S -c pass", [py, "-S", "-c", "pass"], agent, env, baseline=True)]
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
                          note="the checkout's editable install: its .pth finder imports "
                          "pathlib, urllib.parse, ipaddress... at every start"))
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
    extra = []
    if os.path.exists(os.path.join(dev_bindir, "python")):
        extra.append(Peer("python3 -c pass (.venv)", [os.path.join(dev_bindir, "python"), "-c",
                                                      "pass"], "host", env, baseline=True))
    return peers + floors(bindir, "host", env,
                          ["host", crun_ctx] if crun_ctx != "host" else ["host"]) + extra


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
    return peers + floors(bindir, "user", env,
                          ["user", crun_ctx] if crun_ctx != "user" else ["user"])


def prepare_user_workspace(ws: str, pw) -> None:
    uws = os.path.join(ws, "user")
    for d in (uws, os.path.join(uws, "store"), os.path.join(uws, "state"),
              os.path.join(uws, "crun")):
        os.makedirs(d, exist_ok=True)
        os.chown(d, pw.pw_uid, pw.pw_gid)
    os.chmod(uws, 0o755)


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
    """The issues' targets: root median <= 2x crun and <= 0.5x runc; rootless <= 1.5x crun."""
    def med(name):
        return summary.get(name, {}).get("median")
    checks = ([("minictr (rootless)", "crun (rootless)", 1.5)] if rootless
              else [("minictr", "crun", 2.0), ("minictr", "runc", 0.5)])
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


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        say("bench start: needs root (it compares root runtimes and creates the rootless user)")
        return 1
    if missing := common.missing_tools("umoci"):
        say(f"bench start: {missing}")
        return 1
    ws = tempfile.mkdtemp(prefix="minictr-bench-start-")
    os.chmod(ws, 0o755)
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
    path = common.write_results("start", "\n\n".join(report) + "\n", data)
    print("\n\n".join(report))
    say(f"results written to {path}")
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
