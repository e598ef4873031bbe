"""The environment the start benchmarks need: images and OCI bundles, the unprivileged user and
its venv, the contexts the timing agents live in, and minictr's CLI with a private store.
Used by bench/start.py and bench/start_cost.py (not a benchmark itself: it has no main)."""
from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile

from bench import common
from bench.common import Agent, Peer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER = "minictr-bench"
# One venv per checkout: two worktrees benchmarking on one machine must not reinstall each
# other's minictr in the middle of a run (seen: a run's export command vanished).
USER_VENV = "/opt/minictr-bench-venv-" + hashlib.sha256(REPO.encode()).hexdigest()[:8]
IMAGE_NAME = "bench-{}:latest"
CACHE_DIR = os.path.join(common.RESULTS_DIR, "cache")
HYBRID_V2 = "/sys/fs/cgroup/unified"

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
    # the `python3 -I -S` launchers `make install` writes (minictr/launchers.py), not pip's
    subprocess.run([os.path.join(USER_VENV, "bin", "python"), "-m", "minictr.launchers"],
                   check=True, capture_output=True)
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


def start_agents(ws: str, kinds: dict[str, list[str]], owner=None,
                 source: str = common.AGENT_SOURCE) -> dict[str, Agent]:
    agents = {}
    for name, prefix in kinds.items():
        agent = Agent(name, prefix, scratch_dir=ws, source=source)
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

    def spec(self, name: str, bundle: str) -> dict:
        """`minictr spec --bundle BUNDLE NAME /bin/true`: the plan `run` would execute, with the
        files its mounts name (resolv.conf, hosts, hostname) written beside config.json, so a
        peer given this config gets the same mounts, cgroup and limits as minictr."""
        res = self.cli("spec", "--bundle", bundle, name, "/bin/true")
        if res.returncode != 0:
            raise RuntimeError(f"minictr spec failed: {common.first_error_line(res.stderr)}")
        with open(os.path.join(bundle, "config.json")) as f:
            return json.load(f)

    def run_argv(self, name: str) -> list[str]:
        return [self.exe, "run", "--rm", name, "/bin/true"]


def load_and_plan(mc: Minictr, layout: str, rootfs: str, name: str, peer: Peer, pw) -> dict:
    """Load the image into minictr's store and return `minictr spec --bundle`'s plan; its files
    go to a directory of their own beside ROOTFS (one per user: the root and rootless plans
    differ), which the returned config names. If that fails, minictr's peer is skipped with the
    reason, and the plan comes from the same builder called directly (so the peers still run,
    and the table says so)."""
    files = os.path.join(os.path.dirname(rootfs), "files-root" if pw is None else "files-user")
    os.makedirs(files, mode=0o755, exist_ok=True)
    if pw is not None:
        os.chown(files, pw.pw_uid, pw.pw_gid)
    try:
        mc.load(layout, name)
        return mc.spec(name, files)
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


def prepare_user_workspace(ws: str, pw) -> None:
    uws = os.path.join(ws, "user")
    for d in (uws, os.path.join(uws, "store"), os.path.join(uws, "state"),
              os.path.join(uws, "crun")):
        os.makedirs(d, exist_ok=True)
        os.chown(d, pw.pw_uid, pw.pw_gid)
    os.chmod(uws, 0o755)
