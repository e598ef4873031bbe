"""Private containerd, dockerd and podman for the engines tier, and the cleanup they need.

Each engine runs as a plain process in its own session under one short temp directory (unix
socket paths must stay under 108 bytes), with every path it writes pointed there: containerd's
root, state, sockets and opt dir; dockerd's data-root, exec-root, pidfile, socket and trust key;
podman's root, runroot, tmpdir, network config and events log. Containers go into cgroups named
after the session (``Session.name``) so that teardown finds them. What cannot be moved is listed in
``GLOBAL_DIRS``; teardown removes those only if this session created them and they are empty.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

IMAGE = "minictr.test/busybox:latest"          # the name every engine knows the test image by
GPU_IMAGE = "minictr.test/gpu-probe:latest"    # the GPU probe image (test_gpus.py)
TIMEOUT = 60                                   # seconds for one engine command
NVIDIA_HOOK = "nvidia-container-runtime-hook"

# dockerd 20.10 registers its "nvidia" device driver (docker run --gpus) only when this binary
# is on its PATH (moby daemon/nvidia_linux.go), and then adds it as a prestart hook. A runtime
# that injects GPUs itself replaces that hook; the stand-in records any call and fails it.
HOOK_STANDIN = f"""#!/bin/sh
echo "$0 $*" >> "$(dirname "$0")/ran"
echo "{NVIDIA_HOOK} stand-in (tests/engines): a runtime ran the hook it should replace" >&2
exit 1
"""

# Directories the engines create outside their private paths, whatever they are told:
# containerd 1.6 puts shim sockets in /run/containerd/s (hashed names, removed when the shim
# exits); dockerd 20.10 makes /run/docker/plugins; runc's and crun's default --root (podman calls
# `delete --force` without the runtime flags, so its runtime keeps the default root); podman
# writes its network config (empty with --network none) unless told otherwise.
GLOBAL_DIRS = ("/run/containerd/s", "/run/containerd/fifo", "/run/containerd/runc",
               "/run/containerd", "/run/docker/plugins", "/run/docker", "/run/runc", "/run/crun",
               "/run/containers/networks", "/run/containers", "/etc/containers/networks",
               "/opt/containerd/bin", "/opt/containerd/lib", "/opt/containerd")


# podman (containers/image) keeps a blob-info cache here whatever its --root; removed with the
# tree when this session created it.
GLOBAL_TREES = ("/var/lib/containers",)


class EngineError(AssertionError):
    """An engine that is installed but does not start or answer: a failure, never a skip."""


# ------------------------------------------------------------------ processes


class Daemon:
    """A long-running process in its own session, its output in ``log``."""

    def __init__(self, name: str, argv: list[str], log: Path, *, env: dict | None = None,
                 cwd: str | None = None):
        self.name, self.argv, self.log, self.env, self.cwd = name, argv, log, env, cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env=self.env, cwd=self.cwd)

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, ready, timeout: float = 30) -> None:
        """Poll ``ready()`` until it is true; fail with the log's tail if the process exits or
        the time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineError(f"{self.name} exited with {self.proc.returncode} while "
                                  f"starting:\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.1)
        raise EngineError(f"{self.name} not ready after {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def run(argv: list[str], *, env: dict | None = None, input: str | None = None,
        timeout: float = TIMEOUT, check: bool = False, cwd: str | None = None
        ) -> subprocess.CompletedProcess:
    """Run a client command; with ``check``, a non-zero exit is a failure showing its output."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, env=env, input=input,
                             timeout=timeout, cwd=cwd,
                             stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as err:
        raise EngineError(f"{' '.join(argv)}: no answer in {timeout} s\n{err.stdout}\n"
                          f"{err.stderr}") from None
    if check and res.returncode != 0:
        raise EngineError(f"{' '.join(argv)} exited {res.returncode}:\n{res.stdout}{res.stderr}")
    return res


@dataclass
class PtyResult:
    output: str
    status: int          # the exit status, as a shell shows it (128+N for signal N)


def run_in_pty(argv: list[str], *, env: dict | None = None,
               steps: tuple[tuple[str, str], ...] = (), timeout: float = TIMEOUT) -> PtyResult:
    """Run ``argv`` with a pseudo-terminal as its stdin/stdout/stderr (what ``-it`` needs). Each
    step is (text to wait for in the output, text to type then). Reads until the command closes
    the terminal; kills it after ``timeout``."""
    pid, fd = pty.fork()
    if pid == 0:                                   # the child: the pty is its controlling tty
        try:
            os.execvpe(argv[0], argv, env if env is not None else os.environ)
        finally:
            os._exit(127)
    out = b""
    pending = list(steps)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if pending and pending[0][0].encode() in out:
                os.write(fd, pending.pop(0)[1].encode())
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:                        # EIO: the other side closed
                break
            if not chunk:
                break
            out += chunk
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise EngineError(f"{' '.join(argv)}: still running after {timeout} s; "
                              f"the terminal showed:\n{out.decode(errors='replace')}")
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
    return PtyResult(out.decode(errors="replace"), code)


# ------------------------------------------------------------------ runtimes


@dataclass
class Runtime:
    """An OCI runtime the engines are pointed at. ``key`` names the test parameter (runc, crun,
    target); ``reference`` runtimes prove the harness, the target is what is under test."""

    key: str
    path: str
    reference: bool
    spy: Path | None = None              # a runtime_spy copy in front of ``path``, if gcc built one

    @property
    def docker_name(self) -> str:
        return f"t-{self.key}"

    @property
    def docker_spy_name(self) -> str:
        return f"t-{self.key}-spy"

    def spy_calls(self) -> list[dict]:
        """The calls the spy recorded (one dict a call, oldest first)."""
        log = Path(f"{self.spy}.log")
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    def spy_reset(self) -> None:
        Path(f"{self.spy}.log").unlink(missing_ok=True)
        shutil.rmtree(f"{self.spy}.configs", ignore_errors=True)

    def spy_config(self, container_id: str) -> dict:
        return json.loads(Path(f"{self.spy}.configs/{container_id}.json").read_text())


def build_spy(source: Path, out_dir: Path) -> Path | None:
    """Compile runtime_spy.c; None without gcc."""
    if not shutil.which("gcc"):
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = out_dir / "runtime_spy"
    run(["gcc", "-O2", "-Wall", "-o", str(exe), str(source)], check=True)
    return exe


def install_spy(spy_exe: Path, runtime: Runtime, spy_root: Path) -> Path:
    """A copy of the spy named like the runtime, in a directory of its own, exec'ing it."""
    where = spy_root / runtime.key
    where.mkdir(parents=True, exist_ok=True)
    copy = where / os.path.basename(runtime.path)
    shutil.copy2(spy_exe, copy)
    Path(f"{copy}.real").write_text(runtime.path + "\n")
    return copy


# ------------------------------------------------------------------ the session


class Session:
    """The temp directory, the cgroup names and the teardown every engine of one run shares."""

    PREFIX = "mctr-eng-"

    def __init__(self, existing: Path | None = None):
        """A new session (directory /tmp/mctr-eng-PID-RANDOM), or, with ``existing``, the one a
        dead test process left (then GLOBAL_DIRS are removed if empty, GLOBAL_TREES kept)."""
        if existing is None:
            self.dir = Path(tempfile.mkdtemp(prefix=f"{self.PREFIX}{os.getpid()}-", dir="/tmp"))
            os.chmod(self.dir, 0o755)
            self.global_before = {d for d in GLOBAL_DIRS + GLOBAL_TREES if os.path.lexists(d)}
        else:
            self.dir = existing
            self.global_before = set(GLOBAL_TREES)
        # cgroup and containerd namespace name: [a-z0-9] groups joined by "-"
        self.name = "minictr-engines-" + re.sub(r"[^a-z0-9]+", "-",
                                                self.dir.name[len(self.PREFIX):]).strip("-")

    @classmethod
    def reap_stale(cls) -> list[str]:
        """Tear down the sessions of test processes that died without cleaning up (SIGKILL)."""
        problems = []
        for d in Path("/tmp").glob(f"{cls.PREFIX}*"):
            m = re.match(rf"{cls.PREFIX}(\d+)-", d.name)
            if not m or not d.is_dir():
                continue
            try:
                os.kill(int(m.group(1)), 0)
                continue                           # its process still runs
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            problems += cls(existing=d).teardown()
        return problems

    @property
    def xdg_config(self) -> Path:
        """XDG_CONFIG_HOME of the runtimes the engines start (containerd's shims and podman's
        conmon pass their environment on): minictr/config.toml there configures minictr-runc;
        nothing else lives there."""
        return self.dir / "xdg"

    @property
    def hook_dir(self) -> Path:
        """A directory on dockerd's PATH holding the nvidia-container-runtime-hook stand-in."""
        return self.dir / "nvidia-hook"

    def hook_calls(self) -> list[str]:
        try:
            return (self.hook_dir / "ran").read_text().splitlines()
        except FileNotFoundError:
            return []

    def install_hook_standin(self) -> None:
        self.hook_dir.mkdir(exist_ok=True)
        hook = self.hook_dir / NVIDIA_HOOK
        hook.write_text(HOOK_STANDIN)
        hook.chmod(0o755)

    @property
    def cgroup_parents(self) -> list[str]:
        """Top-level cgroup names this session's containers go under (one per engine)."""
        return [self.name, f"{self.name}-docker", f"{self.name}-podman"]

    def teardown(self) -> list[str]:
        """Kill what is left, unmount, remove cgroups, files and new global dirs; return what
        could not be cleaned (for a warning), after trying everything."""
        problems: list[str] = []
        for step in (self._kill_cgroup_members, self._kill_by_cmdline, self._unmount,
                     self._remove_cgroups, self._remove_dir, self._remove_global_dirs):
            try:
                problems += step() or []
            except Exception as err:               # noqa: BLE001 - keep cleaning
                problems.append(f"{step.__name__}: {err}")
        return problems

    # --- steps

    def _cgroup_dirs(self) -> list[Path]:
        """Our cgroup directories in every hierarchy (v1 controllers, named, unified), deepest
        first."""
        found: list[Path] = []
        root = Path("/sys/fs/cgroup")
        hierarchies = [root] + [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
        for hier in hierarchies:
            for name in self.cgroup_parents:
                top = hier / name
                if top.is_dir() and (top / "cgroup.procs").exists():
                    found += [Path(d) for d, _, _ in os.walk(top)]
        return sorted(set(found), key=lambda p: -len(p.parts))

    def _kill_cgroup_members(self) -> list[str]:
        for _ in range(20):
            pids = set()
            for d in self._cgroup_dirs():
                try:
                    pids |= {int(x) for x in (d / "cgroup.procs").read_text().split()}
                except OSError:
                    pass
            pids.discard(os.getpid())
            if not pids:
                return []
            for pid in pids:
                _kill(pid)
            time.sleep(0.1)
        return [f"processes still in this session's cgroups: {sorted(pids)}"]

    def _kill_by_cmdline(self) -> list[str]:
        """Shims, conmon and daemons name this session's directory on their command line. A
        killed shim leaves its socket in /run/containerd/s: removed too."""
        marker = str(self.dir).encode()
        me = os.getpid()
        for _ in range(20):
            left = {}
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) == me:
                    continue
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        argv = f.read().split(b"\0")
                except OSError:
                    continue
                if any(marker in a for a in argv):
                    left[int(entry)] = [a.decode(errors="replace") for a in argv]
            if not left:
                return []
            for pid, argv in left.items():
                _kill(pid)
                socket = shim_socket(argv)
                if socket:
                    Path(socket).unlink(missing_ok=True)
            time.sleep(0.1)
        return [f"processes naming {self.dir} still alive: {sorted(left)}"]

    def _unmount(self) -> list[str]:
        for _ in range(10):
            mounts = mounts_under(self.dir)
            if not mounts:
                return []
            for target in mounts:
                umount_detach(target)
        return [f"still mounted: {mounts_under(self.dir)}"]

    def _remove_cgroups(self) -> list[str]:
        left = []
        for d in self._cgroup_dirs():
            try:
                d.rmdir()
            except OSError as err:
                left.append(f"{d}: {err.strerror}")
        return left

    def _remove_dir(self) -> list[str]:
        shutil.rmtree(self.dir, ignore_errors=True)
        return [f"{self.dir} not removed"] if self.dir.exists() else []

    def _remove_global_dirs(self) -> list[str]:
        for tree in GLOBAL_TREES:
            if tree not in self.global_before:
                shutil.rmtree(tree, ignore_errors=True)
        for d in GLOBAL_DIRS:                      # listed deepest first per tree
            if d not in self.global_before and os.path.isdir(d) and not os.listdir(d):
                try:
                    os.rmdir(d)
                except OSError:
                    pass
        return []


def shim_socket(argv: list[str]) -> str | None:
    """The socket of a containerd-shim-runc-v2 command line (containerd 1.6
    ``shim.SocketAddress``: /run/containerd/s/sha256(ADDRESS/NAMESPACE/ID))."""
    if not argv or not argv[0].endswith("containerd-shim-runc-v2"):
        return None
    opts = dict(zip(argv[1::2], argv[2::2]))
    if not all(k in opts for k in ("-namespace", "-id", "-address")):
        return None
    key = f"{opts['-address']}/{opts['-namespace']}/{opts['-id']}"
    return f"/run/containerd/s/{hashlib.sha256(key.encode()).hexdigest()}"


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(base: Path) -> list[str]:
    """Mount points at or below ``base``, deepest (and latest) first."""
    prefix = str(base).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = _unescape(line.split()[4])
            if target == str(base) or target.startswith(prefix):
                found.append(target)
    return sorted(reversed(found), key=lambda t: -t.count("/"))


_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2


def umount_detach(target: str) -> None:
    _libc.umount2(os.fsencode(target), MNT_DETACH)


# ------------------------------------------------------------------ containerd


class Containerd:
    """containerd 1.6 with its own root, state, sockets and config.toml (no CRI plugin, none of
    the snapshotters that need a particular filesystem); ``ctr`` talks to it in the session's
    namespace, so the cgroups of ``ctr run`` are /SESSION/ID."""

    DISABLED = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
                "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
                "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp",
                "io.containerd.internal.v1.tracing"]

    def __init__(self, session: Session):
        self.session = session
        self.dir = session.dir / "containerd"
        self.socket = self.dir / "containerd.sock"
        self.namespace = session.name
        self.fifo_dir = self.dir / "fifo"
        self.daemon: Daemon | None = None

    def config_toml(self) -> str:
        d = self.dir
        disabled = ", ".join(json.dumps(p) for p in self.DISABLED)
        return f"""version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [{disabled}]

[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  address = "{d}/debug.sock"
  level = "info"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"""

    def start(self) -> None:
        self.dir.mkdir()
        self.fifo_dir.mkdir()
        (self.dir / "config.toml").write_text(self.config_toml())
        argv = ["containerd", "--config", str(self.dir / "config.toml")]
        env = {**os.environ, "XDG_CONFIG_HOME": str(self.session.xdg_config)}
        self.daemon = Daemon("containerd", argv, self.dir / "containerd.log", env=env,
                             cwd=str(self.dir))
        self.daemon.start()
        self.daemon.wait_ready(lambda: self.socket.exists() and self.ctr("version").returncode == 0)

    def ctr(self, *args: str, namespace: str | None = None, **kw) -> subprocess.CompletedProcess:
        return run(["ctr", "--address", str(self.socket), "--namespace",
                    namespace or self.namespace, *args], **kw)

    def ctr_argv(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.socket), "--namespace", self.namespace, *args]

    def runc_root(self, runtime: Runtime) -> str:
        """ctr run --runc-root: each runtime keeps its state here, never in /run/containerd."""
        return str(self.dir / "runc-root" / runtime.key)

    def run_argv(self, runtime: Runtime, cid: str, *cmd: str, flags: tuple = (),
                 binary: str | None = None, image: str = IMAGE) -> list[str]:
        return self.ctr_argv("run", "--runc-binary", binary or runtime.path,
                             "--runc-root", self.runc_root(runtime),
                             "--fifo-dir", str(self.fifo_dir), *flags, image, cid, *cmd)

    def import_image(self, oci_archive: Path, name: str = IMAGE) -> None:
        base = name.rsplit(":", 1)[0]
        self.ctr("images", "import", "--base-name", base, str(oci_archive), check=True)

    def remove_all(self, namespace: str | None = None) -> None:
        """Kill and delete every task and container in ``namespace`` (default: ctr's)."""
        tasks = self.ctr("tasks", "ls", "-q", namespace=namespace).stdout.split()
        for tid in tasks:
            self.ctr("tasks", "kill", "-a", "-s", "KILL", tid, namespace=namespace, timeout=15)
        for tid in tasks:
            self.ctr("tasks", "rm", "-f", tid, namespace=namespace, timeout=15)
        for cid in self.ctr("containers", "ls", "-q", namespace=namespace).stdout.split():
            self.ctr("containers", "rm", cid, namespace=namespace, timeout=15)

    def stop(self) -> None:
        if not self.daemon:
            return
        try:
            if self.daemon.proc.poll() is None:
                self.remove_all()
        finally:
            self.daemon.stop()


# ------------------------------------------------------------------ dockerd


@dataclass
class Dockerd:
    """dockerd 20.10 on the private containerd: own data-root, exec-root, socket, pidfile and
    trust key (daemon.json ``deprecated-key-path``, else it writes /etc/docker/key.json); no
    bridge, no iptables; containers under cgroup /SESSION-docker. ``runtimes`` are registered with
    ``--add-runtime NAME=PATH``; ``daemon_json`` adds keys (``runtimes``, ``default-runtime``)."""

    session: Session
    containerd: Containerd
    name: str = "docker"
    namespace: str = "moby"                # containerd namespace: one per dockerd
    runtimes: dict[str, str] = field(default_factory=dict)
    daemon_json: dict = field(default_factory=dict)
    storage_driver: str = "overlay2"

    def __post_init__(self):
        self.dir = self.session.dir / self.name
        self.socket = self.dir / "docker.sock"
        self.exec_root = self.dir / "exec"
        self.data_root = self.dir / "data"
        self.daemon: Daemon | None = None
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}",
                    "DOCKER_CONFIG": str(self.dir / "cli")}     # not ~/.docker

    def argv(self) -> list[str]:
        argv = ["dockerd", "--config-file", str(self.dir / "daemon.json"),
                "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
                "-H", f"unix://{self.socket}", "--pidfile", str(self.dir / "docker.pid"),
                "--containerd", str(self.containerd.socket),
                "--containerd-namespace", self.namespace,
                "--containerd-plugins-namespace", f"{self.namespace}-plugins",
                "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
                "--userland-proxy=false", "--storage-driver", self.storage_driver,
                "--cgroup-parent", f"/{self.session.name}-docker"]
        for rt_name, path in self.runtimes.items():
            argv += ["--add-runtime", f"{rt_name}={path}"]
        return argv

    def start(self) -> None:
        self.dir.mkdir(exist_ok=True)
        (self.dir / "cli").mkdir(exist_ok=True)
        config = {"deprecated-key-path": str(self.dir / "key.json"), **self.daemon_json}
        (self.dir / "daemon.json").write_text(json.dumps(config, indent=2))
        self.session.install_hook_standin()
        env = {**os.environ, "PATH": f"{self.session.hook_dir}:{os.environ.get('PATH', '')}"}
        self.daemon = Daemon(self.name, self.argv(), self.dir / "dockerd.log", env=env,
                             cwd=str(self.dir))
        self.daemon.start()
        self.daemon.wait_ready(lambda: self.socket.exists() and
                               self.docker("version", timeout=10).returncode == 0)

    def docker(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return run(["docker", *args], env=self.env, **kw)

    def docker_argv(self, *args: str) -> list[str]:
        return ["docker", *args]

    def load(self, docker_archive: Path) -> None:
        self.docker("load", "-i", str(docker_archive), check=True, timeout=120)

    def stop(self) -> None:
        if not self.daemon:
            return
        try:
            if self.daemon.proc.poll() is None:
                ids = self.docker("ps", "-aq", timeout=15).stdout.split()
                if ids:
                    self.docker("rm", "-f", *ids, timeout=30)
        finally:
            self.daemon.stop()
            # dockerd leaves its bind mount of the host network namespace behind
            for target in mounts_under(self.exec_root):
                umount_detach(target)


# ------------------------------------------------------------------ podman

# podman 4.3's config.json asks for RLIMIT_NOFILE 1048576 and RLIMIT_NPROC 32768 unless
# containers.conf sets default_ulimits; raising a hard limit needs CAP_SYS_RESOURCE, which some
# sandboxes' bounding set lacks ("error setting rlimit type 7: operation not permitted"). An
# explicitly empty default_ulimits makes podman write no rlimits (the container keeps conmon's,
# as under docker).
RLIMIT_REFUSAL = re.compile(r"(error setting rlimit type \d+|setrlimit `?\w+`?): "
                            r"[Oo]peration not permitted")


class Podman:
    """podman 4 with private storage.conf and containers.conf (CONTAINERS_STORAGE_CONF,
    CONTAINERS_CONF), cgroupfs, file events, no network; containers under /SESSION-podman. The
    runtime is chosen per call with ``--runtime PATH``."""

    def __init__(self, session: Session):
        self.session = session
        self.dir = session.dir / "podman"
        self.ulimits: list[str] | None = None     # containers.conf default_ulimits; None: unset
        self.workaround: str | None = None        # why the defaults were changed, if they were
        self.env = {**os.environ,
                    "CONTAINERS_CONF": str(self.dir / "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(self.dir / "storage.conf")}
        for var in ("DOCKER_HOST", "DOCKER_CONFIG", "REGISTRY_AUTH_FILE"):
            self.env.pop(var, None)

    def write_config(self) -> None:
        d = self.dir
        (d / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{d}/root"\nrunroot = "{d}/runroot"\n')
        ulimits = ("" if self.ulimits is None else
                   f"default_ulimits = [{', '.join(json.dumps(u) for u in self.ulimits)}]\n")
        (d / "containers.conf").write_text(f"""[containers]
{ulimits}netns = "none"

[engine]
# conmon, and through it the runtime, gets only these variables (not podman's environment)
conmon_env_vars = ["PATH={os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}",
                   "XDG_CONFIG_HOME={self.session.xdg_config}"]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
tmp_dir = "{d}/tmp"
volume_path = "{d}/volumes"

[network]
network_config_dir = "{d}/networks"
""")

    def start(self) -> None:
        self.dir.mkdir()
        self.write_config()

    def argv(self, *args: str, runtime: str | None = None) -> list[str]:
        d = self.dir
        flags = ["--root", f"{d}/root", "--runroot", f"{d}/runroot", "--tmpdir", f"{d}/tmp",
                 "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
        if runtime:
            flags += ["--runtime", runtime]
        return ["podman", *flags, *args]

    def run_flags(self) -> list[str]:
        return ["--network", "none", "--cgroup-parent", f"/{self.session.name}-podman"]

    def __call__(self, *args: str, runtime: str | None = None, **kw) -> subprocess.CompletedProcess:
        return run(self.argv(*args, runtime=runtime), env=self.env, **kw)

    def load(self, docker_archive: Path) -> None:
        self("load", "-q", "-i", str(docker_archive), check=True, timeout=120)

    def settle_rlimits(self, runtime_path: str) -> str | None:
        """Start one container with the reference runtime and podman's default rlimits; if they
        are refused, set ``default_ulimits = []`` (sets ``workaround``) and try again. Returns
        None when containers start, else why they do not (a skip reason)."""
        res = self("run", "--rm", *self.run_flags(), IMAGE, "true", runtime=runtime_path)
        if res.returncode == 0:
            return None
        refused = RLIMIT_REFUSAL.search(res.stderr)
        if not refused:
            return f"podman cannot start a container here: {_last_line(res.stderr)}"
        self.ulimits = []
        self.write_config()
        res = self("run", "--rm", *self.run_flags(), IMAGE, "true", runtime=runtime_path)
        if res.returncode == 0:
            self.workaround = (f"podman's default rlimits are refused here ({refused.group(0)}; "
                               f"no CAP_SYS_RESOURCE?): its tests run with default_ulimits = []")
            return None
        return (f"podman cannot start containers here: its default rlimits are refused "
                f"({refused.group(0)}) and without them: {_last_line(res.stderr)}")

    def stop(self) -> None:
        if self.dir.exists():
            self("rm", "-af", "-t", "0", timeout=60)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
