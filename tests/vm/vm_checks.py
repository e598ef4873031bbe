"""Runs INSIDE the virtme-ng VM (pure cgroup v2 kernel), driven by tests/vm/conftest.py.

Not a test module: it drives minictr.runtime.cgroups directly and prints one line per check,
``MINICTR-VM {json}``, which the host-side tests assert on. First boot:
  1. pure v2 at /sys/fs/cgroup: OOM kill under memory.max, pids.max, cpu.max throttling,
     the device filter, removal;
  2. rootless in a delegated subtree (as systemd's Delegate=yes makes one), as user nobody;
  3. ``minictr run --memory 32m`` end to end (needs an image layout, argv[1]).
Second boot (``--hybrid``): a hybrid layout built here: v1 memory/pids/cpu/cpuacct mounted on a
tmpfs beside a cgroup2 mount (the layout of the project's dev machines), the same checks.
"""
import json
import os
import signal
import subprocess
import sys
import time

from minictr.errors import MinictrError
from minictr.runtime import cgroups

MIB = 1 << 20


def report(name, **fields):
    print("MINICTR-VM " + json.dumps({"name": name, **fields}), flush=True)


def in_cgroup(cgroup, child) -> tuple[int, bytes]:
    """Fork; the child waits until it is in ``cgroup`` then runs ``child(write)``; returns the
    wait status and what the child wrote to the pipe."""
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(go_w)
            os.close(out_r)
            os.read(go_r, 1)
            signal.alarm(120)                        # never outlive the boot if a limit fails
            child(lambda data: os.write(out_w, data))
        finally:
            os._exit(0)
    os.close(go_r)
    os.close(out_w)
    cgroup.add_process(pid)
    os.write(go_w, b"x")
    chunks = []
    while chunk := os.read(out_r, 4096):
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    return status, b"".join(chunks)


def hog(write):
    held = []
    while True:
        held.append(b"x" * MIB)                      # bytes are written, so pages are charged


def fork_until_refused(write):
    kids = []
    err = 0
    for _ in range(64):                              # bounded even if pids.max did nothing
        try:
            pid = os.fork()
        except OSError as e:
            err = e.errno
            break
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        kids.append(pid)
    write(json.dumps({"forks": len(kids), "errno": err}).encode())
    for pid in kids:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def spin(write):
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        pass


def open_devices(write):
    results = []
    for path in ("/dev/null", "/dev/zero"):
        try:
            open(path, "rb").close()
            results.append(0)
        except OSError as e:
            results.append(e.errno)
    write(json.dumps(results).encode())


def cpu_stat(cgroup) -> dict:
    for path in cgroup.paths:
        try:
            with open(os.path.join(path, "cpu.stat")) as f:
                stat = dict(line.split() for line in f if line.strip())
        except OSError:
            continue
        if "nr_throttled" in stat:
            return {k: int(v) for k, v in stat.items()}
    return {}


def check(stage, name, resources, child, root, gather, rootless=False):
    """One cgroup, one child; report what the kernel did and whether destroy left anything."""
    try:
        log = []
        cg = cgroups.setup(resources, container_id=f"{stage}-{name}", cgroups_path=None,
                           rootless=rootless, cgroup_root=root, explain=log.append)
        status, out = in_cgroup(cg, child)
        fields = gather(cg, status, out)
        if rootless:
            fields["explain"] = log
            fields["own"] = open("/proc/self/cgroup").read().strip()
        paths = list(cg.paths)
        cg.destroy()
        report(f"{stage}:{name}", ok=True, paths=paths,
               left=[p for p in paths if os.path.exists(p)], **fields)
    except (MinictrError, OSError) as err:
        report(f"{stage}:{name}", ok=False, error=f"{type(err).__name__}: {err}",
               hint=getattr(err, "hint", None))


def events(cg, name):
    for path in cg.paths:
        try:
            with open(os.path.join(path, name)) as f:
                return f.read()
        except OSError:
            continue
    return ""


def run_stage(stage, root, rootless=False):
    check(stage, "oom", {"memory": {"limit": 32 * MIB, "swap": 32 * MIB}}, hog, root,
          lambda cg, st, out: {"signal": os.WTERMSIG(st) if os.WIFSIGNALED(st) else None,
                               "oom_kills": cg.oom_kills(),
                               "events": events(cg, "memory.events")
                               or events(cg, "memory.oom_control")}, rootless)
    check(stage, "pids", {"pids": {"limit": 8}}, fork_until_refused, root,
          lambda cg, st, out: json.loads(out or b"{}"), rootless)
    if rootless:
        check(stage, "devices", {"devices": [{"allow": False}]}, open_devices, root,
              lambda cg, st, out: {"errnos": json.loads(out or b"[]")}, rootless)
        return
    check(stage, "cpu", {"cpu": {"quota": 50000, "period": 100000}}, spin, root,
          lambda cg, st, out: {"cpu_stat": cpu_stat(cg), "stats": cg.stats()})
    check(stage, "devices", {"devices": [{"allow": False, "access": "rwm"},
                                         {"allow": True, "type": "c", "major": 1, "minor": 3,
                                          "access": "rwm"}]}, open_devices, root,
          lambda cg, st, out: {"errnos": json.loads(out or b"[]")})


def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True)


def make_hybrid(base="/tmp/cg"):
    """v1 hierarchies for memory, pids, cpu, cpuacct on a tmpfs, and cgroup2 at unified/.
    A controller can join a v1 hierarchy only while v2 does not use it (cgroup-v2.rst,
    "Mounting"), so stage 1 must have given them back: its cgroups are gone, we disable the
    controllers in the v2 root's subtree_control, and drop the caches: page cache and slab
    still charged to removed memory cgroups keep them (and so the controller) busy (seen:
    EBUSY from mount until drop_caches)."""
    sh("echo '-memory -pids -cpu -cpuset' > /sys/fs/cgroup/cgroup.subtree_control")
    steps = [f"mkdir -p {base}", f"mount -t tmpfs tmpfs {base}"]
    for name in ("memory", "pids", "cpu", "cpuacct", "unified"):
        steps.append(f"mkdir -p {base}/{name}")
    errors = []
    for cmd in steps:
        res = sh(cmd)
        if res.returncode:
            return f"{cmd}: {res.stderr.strip()}"
    for name in ("memory", "pids", "cpu", "cpuacct"):
        for _ in range(40):                         # removed cgroups are freed lazily
            res = sh(f"mount -t cgroup -o {name} cgroup {base}/{name}")
            if res.returncode == 0:
                break
            sh("sync; echo 3 > /proc/sys/vm/drop_caches")
            time.sleep(0.25)
        else:
            line = [x for x in open("/proc/cgroups") if x.startswith(name + "\t")]
            errors.append(f"mount -t cgroup -o {name}: {res.stderr.strip()} "
                          f"(/proc/cgroups: {line[0].strip() if line else '?'})")
    res = sh(f"mount -t cgroup2 none {base}/unified")
    if res.returncode:
        errors.append(f"mount -t cgroup2: {res.stderr.strip()}")
    return "; ".join(errors) or None


def run_cli(layout):
    """minictr run --memory 32m: exit 137 and an OOM message are expected once the runtime
    exists. The store and state go on a tmpfs: the VM's / is read-only 9p and /tmp an overlay."""
    if not layout:
        report("cli:oom", ok=False, error="no image layout (busybox-static missing on the host)")
        return
    base = "/tmp/minictr-vm"
    os.makedirs(base, exist_ok=True)
    sh(f"mount -t tmpfs tmpfs {base}")
    env = {**os.environ, "MINICTR_ROOT": f"{base}/store", "MINICTR_STATE": f"{base}/state"}
    minictr = os.path.join(os.path.dirname(sys.executable), "minictr")
    load = subprocess.run([minictr, "load", f"oci:{layout}:busybox"], env=env,
                          capture_output=True, text=True)
    names = [line.split(": ", 1)[1] for line in load.stdout.splitlines()
             if line.startswith("Loaded image: ")]
    image = names[0] if names else "busybox"
    run = subprocess.run([minictr, "run", "--rm", "--memory", "32m", image, "sh", "-c",
                          "x=aaaaaaaa; while true; do x=$x$x; done"], env=env,
                         capture_output=True, text=True, timeout=180)
    report("cli:oom", ok=True, load_rc=load.returncode, load_err=load.stderr[-2000:],
           rc=run.returncode, stderr=run.stderr[-2000:])


def run_rootless(user=65534):
    """A delegated subtree, as systemd makes one for Delegate=yes: a cgroup whose directory,
    cgroup.procs, cgroup.subtree_control and cgroup.threads belong to the user, with memory and
    pids enabled above it. The checks then run as that user from inside it (their own cgroup
    has processes: setup must move them to a leaf to enable controllers). The user cannot read
    the venv under /root, so the package and the cffi backend are copied to a tmpfs and run by
    the system's python3 (same 3.11 ABI)."""
    import glob
    import shutil

    deleg, copy = "/sys/fs/cgroup/deleg", "/tmp/rl"
    sh("echo '+memory +pids' > /sys/fs/cgroup/cgroup.subtree_control")
    os.mkdir(deleg)
    for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
        os.chown(os.path.join(deleg, name), user, user)
    os.makedirs(copy, exist_ok=True)
    sh(f"mount -t tmpfs tmpfs {copy}")
    import minictr
    shutil.copytree(os.path.dirname(minictr.__file__), f"{copy}/minictr")
    import _cffi_backend
    shutil.copy(_cffi_backend.__file__, copy)
    for extra in glob.glob(os.path.join(os.path.dirname(_cffi_backend.__file__), "cffi")):
        shutil.copytree(extra, f"{copy}/cffi")
    import _prctl  # the syscall face imports python-prctl at load time
    import prctl
    shutil.copy(_prctl.__file__, copy)
    shutil.copy(prctl.__file__, copy)
    shutil.copy(__file__, f"{copy}/vm_checks.py")
    sh(f"chmod -R a+rX {copy}")
    res = sh(f"echo $$ > {deleg}/cgroup.procs && exec setpriv --reuid {user} --regid {user} "
             f"--clear-groups env PYTHONPATH={copy} /usr/bin/python3 -S {copy}/vm_checks.py "
             f"--rootless")
    sys.stdout.write(res.stdout)
    if res.returncode:
        report("rootless:run", ok=False, error=res.stderr[-2000:])
    sh(f"rmdir {deleg}/{cgroups.cgroup_v2.LEAF} {deleg}")
    sh("echo '-memory -pids' > /sys/fs/cgroup/cgroup.subtree_control")


def main():
    if sys.argv[1:] == ["--rootless"]:
        run_stage("rootless", "/sys/fs/cgroup", rootless=True)
        return
    if sys.argv[1:] == ["--hybrid"]:          # a boot of its own (see conftest.py)
        problem = make_hybrid()
        if problem:
            report("hybrid:setup", ok=False, error=problem)
        else:
            report("hybrid:setup", ok=True)
            run_stage("hybrid", "/tmp/cg")
        report("done")
        return
    layout = sys.argv[1] if len(sys.argv) > 1 else ""
    report("env", kernel=os.uname().release,
           controllers=open("/sys/fs/cgroup/cgroup.controllers").read().split(),
           swaps=open("/proc/swaps").read().count("\n") - 1)
    run_stage("v2", "/sys/fs/cgroup")
    try:
        run_rootless()
    except Exception as err:
        report("rootless:run", ok=False, error=f"{type(err).__name__}: {err}")
    try:
        run_cli(layout)
    except Exception as err:                         # report, never hang the boot
        report("cli:oom", ok=False, error=f"{type(err).__name__}: {err}")
    report("done")


if __name__ == "__main__":
    main()
