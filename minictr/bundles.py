"""Bundle mode: OCI bundles that an engine (Docker, containerd, Podman, Slurm) hands to
minictr-runc. The composition for that path, as api.py is for minictr's own CLI: read the
bundle's config.json, and let the runtime create, start and exec (runtime.lifecycle).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable

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
    from minictr.runtime import lifecycle

    spec = read_config(bundle)
    return lifecycle.create(root, container_id, spec, bundle=bundle,
                            console_socket=console_socket, pid_file=pid_file,
                            preserve_fds=preserve_fds, attached=attached,
                            systemd_cgroup=systemd_cgroup, rootless=rootless, no_pivot=no_pivot,
                            no_new_keyring=no_new_keyring, on_spawned=on_spawned,
                            explain=explain)


def run(root, container_id: str, bundle: str, *, detach: bool = False, keep: bool = False,
        console_socket=None, explain: Explain = None, warn: Explain = None, **options) -> int:
    """runc run: create and start; unless detached, wait (forwarding signals, relaying a
    terminal when no console socket takes it) and delete, and return the status."""
    from minictr.runtime import lifecycle, spawn
    from minictr.runtime.process import Supervisor

    if detach:
        create(root, container_id, bundle, console_socket=console_socket, explain=explain,
               **options)
        lifecycle.start(root, container_id, explain=explain)
        return 0
    try:
        with Supervisor(None, explain) as sup:
            made = create(root, container_id, bundle, console_socket=console_socket,
                          attached=True, on_spawned=sup.attach, explain=explain, **options)
            lifecycle.start(root, container_id, explain=explain)
            spawn.wait_for_exec(made.exec_pipe, "the container's process")
            code = sup.relay_tty(made.console) if made.console is not None else sup.wait()
        return code
    finally:
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
