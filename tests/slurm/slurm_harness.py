"""A real single-node Slurm 22.05 (Debian's slurm-wlm + munge) as plain processes in a private
directory, for the Slurm tier.

    cluster = SlurmCluster(base, gres_files="/.../dev/nvidia[0-3]", gpus=4)
    cluster.start()                        # munged, slurmctld -D, slurmd -D; node IDLE
    cluster.run(["srun", "-n1", "hostname"], user="mctr-slurm")
    with cluster.oci(OciConf(RUNTIME, mode="run", rootless=False)):
        cluster.run(["srun", "--container", bundle, "true"])
    cluster.oci_calls()                    # what slurmstepd ran, one record per call
    cluster.stop()

Everything lives under ``base`` (world-readable, so that an unprivileged job user can reach the
munge socket, the configuration and the bundles): its own munge key and socket, slurm.conf with
free ports, state, spool and log directories. The daemons run with a clean environment (only PATH,
LANG and SLURM_CONF) because slurmstepd hands *its own* environment to the OCI runtime.

The node gets a name of its own (``mctr<N>``, NodeAddr=127.0.0.1): two clusters on one machine
(two worktrees testing at once) then differ in node name, ports, munge socket, spool and runc
state, and container ids (``%n.%u.%j.%s.%t``) never collide.

OCI runtime calls go through a logging wrapper (``bin/oci-runtime``) that writes one JSON record
per call (argv, cwd, ids, environment, fds, the generated config.json, and for run/create the
job's ``scontrol show job -d``) and then execs the real runtime, so tests can check what Slurm ran.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass

# The OCI runtime oci.conf calls. Swap it with one variable (or MINICTR_SLURM_OCI_RUNTIME) for
# minictr's own runtime once it speaks runc's CLI (state/create/start/kill/delete/run, --root,
# --rootless, -b BUNDLE).
RUNTIME = os.environ.get("MINICTR_SLURM_OCI_RUNTIME", "/usr/sbin/runc")
# What writes the bundles' config.json (`runc spec`, `runc spec --rootless`), whatever RUNTIME is.
SPEC_TOOL = "/usr/sbin/runc"

SBIN = "/usr/sbin"
DAEMON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NEEDED = ("munged", "slurmctld", "slurmd", "srun", "sbatch", "salloc", "sinfo", "scontrol",
          "squeue", "scancel")
UP_TIMEOUT = 60          # seconds to wait for the node to become IDLE (a bound, not a check)
CALL_TIMEOUT = 120
CGROUP_V1 = "/sys/fs/cgroup"


class ClusterError(Exception):
    """The cluster could not be brought up; the message ends with the daemons' log tails."""


def missing_tools() -> str | None:
    for tool in NEEDED:
        if not shutil.which(tool, path=DAEMON_PATH):
            return f"{tool} is not installed (apt-get install slurm-wlm munge)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def one_line(text: str, limit: int = 1500) -> str:
    """The first line, then as much of the end (the log tails) as fits, joined with " | "."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ""
    rest = " | ".join(lines[1:])
    return lines[0] + (" | ..." + rest[-limit:] if len(rest) > limit else " | " + rest)


# --- oci.conf ---------------------------------------------------------------------------------

# Create's stdout/stderr are what slurmstepd captures (run_command: a pipe it reads to EOF). runc
# create hands its own stdio to the container, so the pipe stays open until the container exits
# and slurmstepd never gets to RunTimeStart: a deadlock. Root gives the container the task's own
# stdio instead (the task is the shell's parent); an unprivileged user cannot open
# /proc/PPID/fd (the task process is not dumpable), so there the container writes to a file.
CREATE_STDIO_ROOT = "</dev/null >/proc/$PPID/fd/1 2>/proc/$PPID/fd/2"
CREATE_STDIO_USER = "</dev/null >{out}/%u.%j.%s.out 2>&1"


@dataclass(frozen=True)
class OciConf:
    """An oci.conf for a runc-compatible runtime in one of Slurm's two modes.

    ``mode``: "run" (RunTimeRun: the task execs it) or "create-start" (RunTimeCreate/Start and
    Slurm polls RunTimeQuery). ``rootless``: the runtime runs as the job user with
    ``--rootless=true`` and a per-user state root (Slurm 22.05 has no %U; %u is the user name).
    """

    runtime: str = RUNTIME
    mode: str = "run"
    rootless: bool = False

    def text(self, wrapper: str, state: str, out: str) -> str:
        if self.rootless:
            glob_opts = f"--rootless=true --root={state}/%u"
        else:
            glob_opts = f"--root={state}/root"
        rt = f"{wrapper} {glob_opts}"
        cid = "%n.%u.%j.%s.%t"
        lines = [f'RunTimeQuery="{rt} state {cid}"',
                 f'RunTimeKill="{rt} kill -a {cid}"',
                 f'RunTimeDelete="{rt} delete --force {cid}"']
        if self.mode == "run":
            lines.append(f'RunTimeRun="{rt} run {cid} -b %b"')
        elif self.mode == "create-start":
            stdio = (CREATE_STDIO_USER.format(out=out) if self.rootless else CREATE_STDIO_ROOT)
            lines += [f'RunTimeCreate="{rt} create {cid} -b %b {stdio}"',
                      f'RunTimeStart="{rt} start {cid}"']
        else:
            raise ValueError(f"unknown oci.conf mode {self.mode!r}")
        return "\n".join(lines) + "\n"


WRAPPER = r'''#!/usr/bin/python3 -I
"""Log how slurmstepd calls the OCI runtime, then exec it (written by tests/slurm)."""
import json, os, subprocess, sys, time
RUNTIME = {runtime!r}
LOG = {log!r}
SCONTROL = "/usr/bin/scontrol"
argv = sys.argv[1:]
rec = {{"argv": [RUNTIME] + argv, "cwd": os.getcwd(), "uid": os.getuid(), "euid": os.geteuid(),
       "gid": os.getgid(), "groups": os.getgroups(), "env": dict(os.environ), "time": time.time(),
       "pid": os.getpid(), "ppid": os.getppid(), "fds": {{}}}}
for fd in os.listdir("/proc/self/fd"):
    try:
        rec["fds"][fd] = os.readlink("/proc/self/fd/" + fd)
    except OSError:
        pass
with open("/proc/self/cgroup") as f:
    rec["cgroup"] = f.read()
bundle = None
for i, a in enumerate(argv):
    if a in ("-b", "--bundle") and i + 1 < len(argv):
        bundle = argv[i + 1]
if bundle:
    try:
        rec["bundle_files"] = sorted(os.listdir(bundle))
        with open(os.path.join(bundle, "config.json")) as f:
            rec["config"] = json.load(f)
    except (OSError, ValueError) as e:
        rec["config_error"] = repr(e)
    job = [e.split("=", 1)[1] for e in rec.get("config", {{}}).get("process", {{}}).get("env", [])
           if e.startswith("SLURM_JOB_ID=")]
    if job:
        res = subprocess.run([SCONTROL, "show", "job", "-d", job[-1]], capture_output=True,
                             text=True)
        rec["scontrol_show_job"] = res.stdout + res.stderr
name = os.path.join(LOG, "%.6f-%d.json" % (time.time(), os.getpid()))
with open(name + ".tmp", "w") as f:
    json.dump(rec, f, indent=1)
os.rename(name + ".tmp", name)
os.execv(RUNTIME, [RUNTIME] + argv)
'''


# --- bundles ---------------------------------------------------------------------------------

def make_bundle(path: str, owner: pwd.struct_passwd | None, mounts=()) -> str:
    """A runc bundle around a busybox rootfs (rootfs_tools' tree, plus the /proc, /sys and /dev
    mount points): ``runc spec`` (as root) or ``runc spec --rootless`` (as ``owner``, whose uid
    it maps to 0 inside). ``mounts``: extra OCI mount entries appended to config.json."""
    from rootfs_tools import rootfs      # ToolMissing without busybox-static

    os.makedirs(path)
    os.chmod(path, 0o755)
    rootfs.busybox_tree(os.path.join(path, "rootfs"))
    # mount points: a rootless runtime cannot make them in a root-owned rootfs
    for mnt in ("proc", "sys", "dev", *(m["destination"].lstrip("/") for m in mounts)):
        os.makedirs(os.path.join(path, "rootfs", mnt), mode=0o755, exist_ok=True)
    if owner is None:
        subprocess.run([SPEC_TOOL, "spec", "--bundle", path], check=True, capture_output=True)
    else:
        os.chown(path, owner.pw_uid, owner.pw_gid)
        subprocess.run(["runuser", "-u", owner.pw_name, "--", SPEC_TOOL, "spec", "--rootless",
                        "--bundle", path], check=True, capture_output=True)
        os.chown(path, 0, 0)
    config = os.path.join(path, "config.json")
    if mounts:
        with open(config) as f:
            doc = json.load(f)
        doc["mounts"] += list(mounts)
        with open(config, "w") as f:
            json.dump(doc, f, indent=1)
    os.chmod(config, 0o644)
    return path


# --- the cluster ------------------------------------------------------------------------------

class SlurmCluster:
    def __init__(self, base: str, *, gres_files: str, gpus: int, cpus: int = 2,
                 memory_mb: int = 1024, node: str | None = None,
                 constrain_devices: bool = False):
        self.base = base
        self.node = node or f"mctr{os.getpid() % 100000}"
        self.hostname = socket.gethostname().split(".")[0]
        self.gres_files, self.gpus, self.cpus, self.memory_mb = gres_files, gpus, cpus, memory_mb
        self.constrain_devices = constrain_devices
        d = lambda *p: os.path.join(base, *p)           # noqa: E731
        self.etc, self.run_dir, self.log_dir = d("etc"), d("run"), d("log")
        self.munge_dir, self.state_dir, self.spool_root = d("munge"), d("state"), d("spool")
        self.spool = d("spool", self.node)             # SlurmdSpoolDir (%n expanded)
        self.bin_dir, self.oci_log, self.oci_state, self.oci_out = (
            d("bin"), d("oci-calls"), d("oci-state"), d("oci-out"))
        self.conf = d("etc", "slurm.conf")
        self.munge_socket = d("run", "munge.socket")
        self.wrapper = d("bin", "oci-runtime")
        self.procs: dict[str, subprocess.Popen] = {}
        self.runtimes_used: set[str] = set()
        self._logs: dict[str, object] = {}

    # configuration ----------------------------------------------------------------------------
    def _write(self, path: str, text: str, mode: int = 0o644) -> None:
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)

    def write_config(self) -> None:
        for path, mode in ((self.etc, 0o755), (self.run_dir, 0o755), (self.log_dir, 0o755),
                           (self.munge_dir, 0o700), (self.state_dir, 0o700),
                           (self.spool_root, 0o755), (self.bin_dir, 0o755),
                           (self.oci_log, 0o1777), (self.oci_state, 0o1777),
                           (self.oci_out, 0o1777)):
            os.makedirs(path, exist_ok=True)
            os.chmod(path, mode)
        with open(os.path.join(self.munge_dir, "munge.key"), "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(os.path.join(self.munge_dir, "munge.key"), 0o400)
        ctl_port, d_port = free_port(), free_port()
        while d_port == ctl_port:
            d_port = free_port()
        b = self.base
        self._write(self.conf, f"""\
# written by tests/slurm/slurm_harness.py: one node, plain processes under {b}
ClusterName=minictr
SlurmctldHost=localhost
SlurmctldPort={ctl_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={self.state_dir}
SlurmdSpoolDir={self.spool_root}/%n
SlurmctldPidFile={self.run_dir}/slurmctld.pid
SlurmdPidFile={self.run_dir}/slurmd-%n.pid
SlurmctldLogFile={self.log_dir}/slurmctld.log
SlurmdLogFile={self.log_dir}/slurmd.log
SlurmctldDebug=debug
SlurmdDebug=debug
{self._tracking()}
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
# start batch jobs at submission (the default batch_sched_delay=3 holds them up to 3 s)
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
KillWait=5
InactiveLimit=0
NodeName={self.node} NodeHostname={self.hostname} NodeAddr=127.0.0.1 CPUs={self.cpus} \
RealMemory={self.memory_mb} Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        if self.constrain_devices:
            self._write(os.path.join(self.etc, "cgroup.conf"), f"""\
CgroupPlugin=cgroup/v1
CgroupMountpoint={CGROUP_V1}
ConstrainDevices=yes
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainSwapSpace=no
""")
        self._write(os.path.join(self.etc, "gres.conf"),
                    f"AutoDetect=off\nName=gpu File={self.gres_files}\n")

    def _tracking(self) -> str:
        if self.constrain_devices:
            return ("# cgroup v1 freezer + devices (Debian's build names the tree /slurm_<node>):\n"
                    "# each step may open only its own GPUs\n"
                    "ProctrackType=proctrack/cgroup\nTaskPlugin=task/cgroup")
        return ("# no cgroup plugins: the processes are tracked by /proc scans, tasks are not "
                "confined\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/none")

    def cgroup_dirs(self) -> list[str]:
        """This node's cgroup v1 trees (/sys/fs/cgroup/<controller>/slurm_<node>)."""
        return sorted(glob.glob(os.path.join(CGROUP_V1, "*", f"slurm_{self.node}")))

    # processes --------------------------------------------------------------------------------
    def daemon_env(self) -> dict[str, str]:
        return {"PATH": DAEMON_PATH, "LANG": "C.UTF-8", "SLURM_CONF": self.conf}

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for client commands (srun, sbatch, ...)."""
        return {**self.daemon_env(), "HOME": "/root", **extra}

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(os.path.join(self.log_dir, f"{name}.out"), "wb")
        self._logs[name] = out
        self.procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, env=self.daemon_env(),
                                            cwd=self.base, start_new_session=True)

    def logs(self, lines: int = 15) -> str:
        parts = []
        for name in ("munged.out", "slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out"):
            tail = _tail(os.path.join(self.log_dir, name), lines)
            if tail:
                parts.append(f"--- {name}\n{tail}")
        return "\n".join(parts)

    def _check_alive(self, what: str) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise ClusterError(f"{name} exited with {p.returncode} while {what}\n"
                                   + self.logs())

    def _wait(self, cond, what: str, timeout: float = UP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            self._check_alive(what)
            if time.monotonic() > deadline:
                raise ClusterError(f"gave up after {timeout:.0f} s {what}\n" + self.logs())
            time.sleep(0.1)

    def start(self) -> None:
        self.write_config()
        m = self.munge_dir
        self._spawn("munged", [f"{SBIN}/munged", "-F", f"--socket={self.munge_socket}",
                               f"--key-file={m}/munge.key", f"--log-file={m}/munged.log",
                               f"--pid-file={m}/munged.pid", f"--seed-file={m}/munged.seed",
                               "--num-threads=2"])
        self._wait(lambda: os.path.exists(self.munge_socket), "waiting for munged's socket")
        self._spawn("slurmctld", [f"{SBIN}/slurmctld", "-D", "-i"])
        self._wait(lambda: self.run(["scontrol", "ping"], check=False, timeout=10).returncode
                   == 0, "waiting for slurmctld to answer")
        self._spawn("slurmd", [f"{SBIN}/slurmd", "-D", "-N", self.node])
        self._wait(lambda: self.node_state() == "idle", "waiting for the node to become IDLE")

    def node_state(self) -> str:
        res = self.run(["sinfo", "-h", "-N", "-n", self.node, "-o", "%T"], check=False,
                       timeout=10)
        return res.stdout.strip()

    def run(self, argv: list[str], *, user: str | None = None, check: bool = True,
            timeout: float = CALL_TIMEOUT, env: dict | None = None, cwd: str | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run a client command (as ``user`` through runuser), output as text."""
        full_env = self.env(**(env or {}))
        if user:
            full_env["HOME"] = pwd.getpwnam(user).pw_dir
            argv = ["runuser", "-u", user, "--", *argv]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                             env=full_env, cwd=cwd or self.base, input=input,
                             stdin=None if input is not None else subprocess.DEVNULL)
        if check and res.returncode != 0:
            raise AssertionError(f"{argv} exited {res.returncode}\nstdout:\n{res.stdout}\n"
                                 f"stderr:\n{res.stderr}\n{self.logs(10)}")
        return res

    def sbatch(self, argv: list[str], *, user: str | None = None,
               timeout: float = CALL_TIMEOUT) -> dict[str, str]:
        """Submit ``sbatch ARGV`` and wait (polling, bounded) until the job has ended; return its
        ``scontrol show job`` fields. (``sbatch --wait`` polls every 10 s.)"""
        job = self.run(["sbatch", "--parsable", *argv], user=user).stdout.strip().split(";")[0]
        deadline = time.monotonic() + timeout
        while True:
            fields = dict(f.partition("=")[::2] for f in self.run(
                ["scontrol", "-o", "show", "job", job], timeout=10).stdout.split())
            if fields.get("JobState") not in ("PENDING", "CONFIGURING", "RUNNING",
                                               "COMPLETING", "SUSPENDED"):
                return fields
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job} still {fields.get('JobState')} after "
                                     f"{timeout:.0f} s\n{self.logs(10)}")
            time.sleep(0.1)

    # oci.conf ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def oci(self, conf: OciConf):
        """Install oci.conf for the steps started inside the block (slurmstepd reads it at each
        step's start), then remove it. The call log starts empty and, after the block, holds every
        call of the steps run in it: the block ends when their slurmstepd have exited."""
        self.wait_steps_done()
        self.clear_oci_calls()
        self._write(self.wrapper, WRAPPER.format(runtime=conf.runtime, log=self.oci_log), 0o755)
        self.runtimes_used.add(conf.runtime)
        path = os.path.join(self.etc, "oci.conf")
        self._write(path, conf.text(self.wrapper, self.oci_state, self.oci_out))
        try:
            yield conf
            self.wait_steps_done()
        finally:
            os.unlink(path)

    def clear_oci_calls(self) -> None:
        for f in glob.glob(os.path.join(self.oci_log, "*.json")):
            os.unlink(f)

    def oci_calls(self) -> list[dict]:
        """The runtime calls logged since the last oci()/clear, in order; ``op`` is the runtime
        subcommand (run, create, start, state, kill, delete)."""
        out = []
        for f in sorted(glob.glob(os.path.join(self.oci_log, "*.json"))):
            with open(f) as fh:
                rec = json.load(fh)
            words = [a for a in rec["argv"][1:] if not a.startswith("-")]
            rec["op"] = words[0] if words else None
            out.append(rec)
        return out

    def stepds(self) -> dict[int, str]:
        """Running slurmstepd processes of this cluster: {pid: "[JOB.STEP]"}."""
        out = {}
        for pid in self._our_pids():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("slurmstepd: "):
                out[pid] = cmd.split("\0")[0][len("slurmstepd: "):]
        return out

    def wait_steps_done(self, timeout: float = 60) -> None:
        """Wait (bounded) until no slurmstepd of this cluster is left. srun returns when its tasks
        have exited; slurmstepd's step cleanup (for a container: RunTimeQuery, Kill, Delete)
        runs after that."""
        deadline = time.monotonic() + timeout
        while self.stepds():
            if time.monotonic() > deadline:
                raise AssertionError(f"slurmstepd still running: {self.stepds()}\n"
                                     + self.logs(10))
            time.sleep(0.05)

    def spool_dir(self, job: int, step: int = 0) -> str:
        """The bundle Slurm 22.05 generates for a step (%b, with a trailing slash)."""
        return os.path.join(self.spool, f"oci-job{job:05d}-{step:05d}") + "/"

    # teardown ---------------------------------------------------------------------------------
    def _our_pids(self) -> list[int]:
        """Processes started from this cluster's daemons (slurmstepd, tasks, runtimes): they
        carry SLURM_CONF=<our slurm.conf> in their environment."""
        needle = f"\0SLURM_CONF={self.conf}\0".encode()
        skip = {os.getpid()} | {p.pid for p in self.procs.values()}
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in skip:
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in b"\0" + f.read():
                        pids.append(int(entry))
            except OSError:
                continue
        return pids

    def _runc_cleanup(self) -> None:
        """Delete containers a failed test left (runc's CLI: list -q, delete --force)."""
        for runtime in self.runtimes_used:
            for root in glob.glob(os.path.join(self.oci_state, "*")):
                try:
                    res = subprocess.run([runtime, "--root", root, "list", "-q"],
                                         capture_output=True, text=True, timeout=30)
                    for cid in res.stdout.split():
                        subprocess.run([runtime, "--root", root, "delete", "--force", cid],
                                       capture_output=True, timeout=30)
                except (OSError, subprocess.SubprocessError):
                    pass

    def _terminate(self, name: str) -> None:
        p = self.procs.get(name)
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            try:
                self.run(["scancel", "--full", "--quiet", "-p", "debug"], check=False, timeout=20)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and self.run(
                        ["squeue", "-h", "-o", "%i"], check=False, timeout=10).stdout.strip():
                    # a step stuck in RunTimeCreate (see CREATE_STDIO_ROOT) ends when its
                    # container goes
                    self._runc_cleanup()
                    time.sleep(0.2)
            except subprocess.SubprocessError:
                pass
        self._runc_cleanup()
        self._terminate("slurmd")
        self._terminate("slurmctld")
        # whatever the Slurm daemons left (a stuck slurmstepd, a task, a runtime, a client)
        for pid in self._our_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._terminate("munged")
        # the cgroup trees the node made (Slurm removes job and step levels itself)
        for top in self.cgroup_dirs():
            for d, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
                with contextlib.suppress(OSError):
                    os.rmdir(d)
        for f in self._logs.values():
            f.close()

