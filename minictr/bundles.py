"""Bundle mode: OCI bundles that an engine (Docker, containerd, Podman, Slurm) hands to
minictr-runc. The composition for that path, as api.py is for minictr's own CLI: read the
bundle's config.json, and let the runtime create, start and exec (runtime.lifecycle).
"""
from __future__ import annotations

import json
import os
import stat
from _collections_abc import Callable

from minictr import cachefiles
from minictr.errors import SpecError, UsageError

Explain = Callable[[str], None] | None


def read_config(bundle: str) -> dict:
    path = os.path.join(bundle, "config.json")
    try:
        with open(path) as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"bundle {bundle} has no config.json",
                         hint="minictr-runc spec -b DIR writes a template") from None
    except (OSError, ValueError) as err:
        raise SpecError(f"{path}: {err}") from err
    if not isinstance(spec, dict):
        raise SpecError(f"{path} is not a JSON object")
    return spec


def create(root, container_id: str, bundle: str, *, console_socket=None, pid_file=None,
           preserve_fds: int = 0, no_pivot: bool = False, no_new_keyring: bool = False,
           systemd_cgroup: bool = False, rootless: bool = False, attached: bool = False,
           on_spawned=None, explain: Explain = None, warn: Explain = None):
    """runc create: the bundle's config.json, with the GPUs it asks for (``with_gpus``), made
    into a created container by the runtime."""
    from minictr.runtime import lifecycle
    from minictr.runtime.state import check_id

    spec = read_config(bundle)
    if rootless and os.geteuid() != 0:
        spec = with_user_namespace(spec, os.geteuid(), os.getegid(), warn=warn)
    spec, files = with_gpus(spec, bundle, root.dir(check_id(container_id)), warn=warn,
                            cache_dir=cachefiles.cache_dir(root.path, "gpu"),
                            explain=explain)
    return lifecycle.create(root, container_id, spec, bundle=bundle,
                            console_socket=console_socket, pid_file=pid_file,
                            preserve_fds=preserve_fds, attached=attached,
                            systemd_cgroup=systemd_cgroup, rootless=rootless, no_pivot=no_pivot,
                            no_new_keyring=no_new_keyring, on_spawned=on_spawned,
                            files=files, explain=explain)


def with_user_namespace(spec: dict, uid: int, gid: int, *, warn: Explain = None) -> dict:
    """Invoked unprivileged on a bundle without a user namespace (a `runc spec` bundle, or one an
    engine wrote for root), add one, as `runc spec --rootless` would have: the caller's uid and
    gid become process.user's uid and gid inside (single-id maps, written directly), and a
    ``uid=``/``gid=`` mount option naming an id that is not mapped (devpts' ``gid=5``), which
    the kernel would refuse with EINVAL, is left out with a warning. runc refuses such a bundle
    ("rootless container requires user namespaces"); everything else about it is unchanged."""
    linux = dict(spec.get("linux") or {})
    if any(ns.get("type") == "user" for ns in linux.get("namespaces") or ()):
        return spec
    user = (spec.get("process") or {}).get("user") or {}
    inside_uid, inside_gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    linux["namespaces"] = [*(linux.get("namespaces") or ()), {"type": "user"}]
    linux["uidMappings"] = [{"containerID": inside_uid, "hostID": uid, "size": 1}]
    linux["gidMappings"] = [{"containerID": inside_gid, "hostID": gid, "size": 1}]
    mounts = []
    for m in spec.get("mounts") or ():
        options = []
        for opt in m.get("options") or ():
            key, _, value = str(opt).partition("=")
            mapped = inside_uid if key == "uid" else inside_gid
            if key in ("uid", "gid") and value.isdecimal() and int(value) != mapped:
                if warn:
                    warn(f"mount {m.get('destination')}: option {opt} left out: {key} {value} "
                         "is not mapped in the user namespace added for an unprivileged run")
                continue
            options.append(opt)
        mounts.append(dict(m, options=options) if "options" in m else m)
    return dict(spec, linux=linux, mounts=mounts)


def with_gpus(spec: dict, bundle: str, files_dir: str, *, warn: Explain = None,
              env: dict[str, str] | None = None, settings=None, allocation=None,
              cache_dir: str | None = None, explain: Explain = None):
    """The GPU request an engine wrote into config.json (cdi.k8s.io/ annotations, device-list
    mounts, NVIDIA_VISIBLE_DEVICES..., docker --gpus' hook), resolved by the same path as
    `minictr run --gpus` (gpu/resolve.py). Returns (spec, files for the container's state
    directory). A spec without a request costs one scan and imports no GPU code.

    Inside a Slurm job (SLURM_JOB_ID in process.env: Slurm appends the job's environment) the
    GPUs are narrowed to the job's allocation on this node (hpc/slurm.container_allocation).
    ``cache_dir``: the state root's discovery cache (gpu/driver_cache.py), None for none;
    ``explain`` hears its notes (a cache hit or a discovery), as `minictr run --explain` does."""
    from minictr.spec import gpu_request

    inputs = gpu_request.find(spec)
    if inputs is None:
        return spec, ()
    from minictr.gpu import resolve
    from minictr.gpu.request import load_settings
    from minictr.hpc import slurm

    env = dict(os.environ) if env is None else env
    spec_env = dict(e.partition("=")[::2] for e in (spec.get("process") or {}).get("env") or ()
                    if isinstance(e, str))
    resolved = resolve.resolve(
        spec, inputs, read_file=rootfs_reader(spec, bundle), files_dir=files_dir,
        settings=settings or load_settings(env=env), warn=warn, cache_dir=cache_dir,
        allocation=allocation or (lambda: slurm.container_allocation(spec_env, env)))
    for note in resolved.notes if explain else ():
        explain(note)
    return resolved.spec, resolved.files


MAX_READ = 64 << 20


def rootfs_reader(spec: dict, bundle: str):
    """read_file(path) -> bytes | None for the bundle's root filesystem, every path resolved
    inside it (openat2 RESOLVE_IN_ROOT: an image's symlink cannot lead the runtime, which may
    be root, to a host file)."""
    from minictr.errors import ImageError
    from minictr.runtime import syscalls as sc

    root_path = (spec.get("root") or {}).get("path") or "rootfs"
    if not os.path.isabs(root_path):
        root_path = os.path.join(bundle, root_path)
    kernel = sc.Syscalls()

    def read_file(path: str) -> bytes | None:
        try:
            root_fd = os.open(root_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            # O_NONBLOCK: a fifo the image planted at that path must not hang the runtime
            fd = kernel.openat2(root_fd, path.lstrip("/") or ".",
                                os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK,
                                sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS)
        except OSError:
            return None
        finally:
            os.close(root_fd)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                return None
            if st.st_size > MAX_READ:
                raise ImageError(f"{path} in the bundle's rootfs is larger than minictr reads")
            return f.read()

    return read_file


def run(root, container_id: str, bundle: str, *, detach: bool = False, keep: bool = False,
        console_socket=None, explain: Explain = None, warn: Explain = None, **options) -> int:
    """runc run: create and start; unless detached, wait (forwarding signals, relaying a
    terminal when no console socket takes it) and delete, and return the status."""
    from minictr.runtime import lifecycle, spawn
    from minictr.runtime.process import Supervisor

    if detach:
        create(root, container_id, bundle, console_socket=console_socket, explain=explain,
               warn=warn, **options)
        lifecycle.start(root, container_id, explain=explain)
        return 0
    with Supervisor(None, explain) as sup:
        try:
            made = create(root, container_id, bundle, console_socket=console_socket,
                          attached=True, on_spawned=sup.attach, explain=explain, warn=warn,
                          **options)
            lifecycle.start(root, container_id, explain=explain)
            spawn.wait_for_exec(made.exec_pipe, "the container's process")
            return sup.relay_tty(made.console) if made.console is not None else sup.wait()
        finally:
            # as `minictr run` (api._execute): a first signal is held until the delete is over
            sup.hold(lambda: warn and warn("deleting the container (Ctrl-C again to stop at "
                                           "once)"))
            if not keep:
                lifecycle.delete(root, container_id, force=True, explain=explain, warn=warn)


def exec_(root, container_id: str, *, process_file: str | None, command: list[str],
          detach: bool = False, pid_file=None, console_socket=None, tty: bool = False,
          cwd: str | None = None, env=(), user: str | None = None, additional_gids=(),
          caps=(), no_new_privs: bool = False, preserve_fds: int = 0,
          explain: Explain = None) -> int:
    """runc exec: a process.json, or the container's process with these changes."""
    from minictr.runtime import lifecycle, spawn
    from minictr.runtime.process import Supervisor

    process = _exec_process(root, container_id, process_file, command, tty=tty, cwd=cwd,
                            env=env, user=user, additional_gids=additional_gids, caps=caps,
                            no_new_privs=no_new_privs)
    if detach:
        lifecycle.exec_process(root, container_id, process, attached=False,
                               preserve_fds=preserve_fds, console_socket=console_socket,
                               pid_file=pid_file, explain=explain)
        return 0
    with Supervisor(None) as sup:
        made = lifecycle.exec_process(root, container_id, process, attached=True,
                                      preserve_fds=preserve_fds, console_socket=console_socket,
                                      pid_file=pid_file, on_spawned=sup.attach, explain=explain)
        spawn.wait_for_exec(made.exec_pipe, process["args"][0])
        code = sup.relay_tty(made.console) if made.console is not None else sup.wait()
    return code


def _exec_process(root, container_id: str, process_file, command, *, tty, cwd, env, user,
                  additional_gids, caps, no_new_privs) -> dict:
    if process_file:
        try:
            with open(process_file) as f:
                process = json.load(f)
        except (OSError, ValueError) as err:
            raise UsageError(f"--process {process_file}: {err}") from err
        if not isinstance(process, dict) or not process.get("args"):
            raise SpecError(f"--process {process_file}: a process object with args is needed")
        return process
    if not command:
        raise UsageError("exec needs a command (or --process FILE)")
    from minictr.spec.edits import merge_env

    base = root.read_config(container_id)["process"]
    process = dict(base, args=list(command), terminal=bool(tty))
    process.pop("oomScoreAdj", None)
    if cwd:
        process["cwd"] = cwd
    if env:
        process["env"] = merge_env(process.get("env", []), env)
    if user:
        uid, _, gid = user.partition(":")
        if not uid.isdecimal() or (gid and not gid.isdecimal()):
            raise UsageError(f"--user {user}: expected UID[:GID]")
        process["user"] = {"uid": int(uid), "gid": int(gid or 0)}
    if additional_gids:
        process["user"] = dict(process.get("user", {}),
                               additionalGids=[int(g) for g in additional_gids])
    if caps:
        sets = dict(process.get("capabilities") or {})
        for kind in ("bounding", "effective", "permitted"):
            sets[kind] = list(dict.fromkeys(list(sets.get(kind, [])) + list(caps)))
        process["capabilities"] = sets
    if no_new_privs:
        process["noNewPrivileges"] = True
    return process


# ---------------------------------------------------------------- features and spec


def features() -> dict:
    """features.md / features-linux.md: what this runtime implements."""
    from minictr.runtime import hooks, rootfs, syscalls as sc
    from minictr.runtime.capabilities import known_caps
    from minictr.runtime.mounts import _FLAGS, _PROPAGATION
    from minictr.runtime.state import OCI_VERSION

    return {
        "ociVersionMin": "1.0.0", "ociVersionMax": OCI_VERSION,
        "hooks": list(hooks.STAGES),
        "mountOptions": sorted(set(_FLAGS) | set(_PROPAGATION)),
        "linux": {
            "namespaces": sorted(sc.NAMESPACE_FLAGS),
            "capabilities": sorted(known_caps()),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False,
                       "rdma": False},
            "seccomp": seccomp_features(),
            "apparmor": {"enabled": False}, "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
        "annotations": {"org.opencontainers.runc.version": "none (minictr-runc)"},
        "potentiallyUnsafeConfigAnnotations": [],
        "propagation": sorted(rootfs.PROPAGATION),
    }


def seccomp_features() -> dict:
    from minictr.runtime import seccomp

    return {"enabled": True, "actions": sorted(seccomp.ACTIONS), "operators": sorted(seccomp.OPS),
            "knownFlags": sorted(seccomp.FLAGS), "supportedFlags": sorted(seccomp.FLAGS)}


def spec_template(rootless: bool = False) -> dict:
    """The config.json `runc spec` writes (runc's specconv.Example), made rootless as
    `runc spec --rootless` does: a user namespace mapping the caller to root, no network
    namespace (so /sys is a bind of the host's), no gid= mount options, no resources."""
    nsd = ["nosuid", "noexec", "nodev"]
    spec = {
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": True, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "TERM=xterm"],
            "cwd": "/",
            "capabilities": {k: ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
                             for k in ("bounding", "effective", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                         "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": nsd + ["mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": list(nsd)},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": nsd + ["ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": nsd + ["relatime", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount",
                                                 "cgroup")],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"],
        },
    }
    if rootless:
        linux = spec["linux"]
        linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "network"]
        linux["namespaces"].append({"type": "user"})
        linux["uidMappings"] = [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
        del linux["resources"]
        mounts = []
        for m in spec["mounts"]:
            m = dict(m, options=[o for o in m.get("options", []) if not o.startswith("gid=")])
            if m["destination"] == "/sys":
                m = {"destination": "/sys", "type": "none", "source": "/sys",
                     "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}
            if m["destination"] == "/sys/fs/cgroup":
                continue
            mounts.append(m)
        spec["mounts"] = mounts
    return spec
