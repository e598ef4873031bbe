"""What of a config.json minictr executes, and an error naming every field it would not.

A runtime that drops a field it does not understand runs a different container than the one
asked for (an AppArmor profile that is not applied, a seccomp filter that is not loaded, a
CPU affinity that is not set), and nobody notices. So every key of the document is checked
against what the runtime implements; an unknown or unimplemented one is a SpecError naming
its path. Empty values ("", [], {}, null, false, 0 where that means "unset") are accepted for
fields minictr does not implement, since engines send them by default.
"""
from __future__ import annotations

from minictr.errors import SpecError

# key -> None (leaf: any value), a dict (nested object), or "list:" + a dict (a list of
# objects with those keys). UNSUPPORTED marks fields that are errors unless empty.
UNSUPPORTED = "unsupported"

_USER = {"uid": None, "gid": None, "umask": None, "additionalGids": None,
         "username": UNSUPPORTED}
_CAPS = {k: None for k in ("bounding", "effective", "inheritable", "permitted", "ambient")}
_RLIMIT = {"type": None, "soft": None, "hard": None}
_HOOK = {"path": None, "args": None, "env": None, "timeout": None}
_PROCESS = {
    "terminal": None, "consoleSize": {"height": None, "width": None}, "user": _USER,
    "args": None, "commandLine": UNSUPPORTED, "env": None, "cwd": None,
    "capabilities": _CAPS, "rlimits": ("list", _RLIMIT), "noNewPrivileges": None,
    "apparmorProfile": UNSUPPORTED, "oomScoreAdj": None, "selinuxLabel": UNSUPPORTED,
    "ioPriority": UNSUPPORTED, "scheduler": UNSUPPORTED, "execCPUAffinity": UNSUPPORTED,
}
_DEVICE_RULE = {"allow": None, "type": None, "major": None, "minor": None, "access": None}
_RESOURCES = {
    "devices": ("list", _DEVICE_RULE),
    "memory": {"limit": None, "reservation": None, "swap": None, "kernel": None,
               "kernelTCP": None, "swappiness": None, "disableOOMKiller": None,
               "useHierarchy": None, "checkBeforeUpdate": UNSUPPORTED},
    "cpu": {"shares": None, "quota": None, "burst": UNSUPPORTED, "period": None,
            "realtimeRuntime": None, "realtimePeriod": None, "cpus": None, "mems": None,
            "idle": None},
    "pids": {"limit": None},
    "blockIO": None, "hugepageLimits": None, "network": None, "rdma": None, "unified": None,
}
_LINUX = {
    "namespaces": ("list", {"type": None, "path": None}),
    "uidMappings": ("list", {"containerID": None, "hostID": None, "size": None}),
    "gidMappings": ("list", {"containerID": None, "hostID": None, "size": None}),
    "timeOffsets": UNSUPPORTED,
    "devices": ("list", {"path": None, "type": None, "major": None, "minor": None,
                         "fileMode": None, "uid": None, "gid": None}),
    "netDevices": UNSUPPORTED,
    "cgroupsPath": None, "rootfsPropagation": None, "resources": _RESOURCES,
    "sysctl": None, "seccomp": None, "maskedPaths": None, "readonlyPaths": None,
    "mountLabel": UNSUPPORTED, "intelRdt": UNSUPPORTED, "personality": UNSUPPORTED,
    "memoryPolicy": UNSUPPORTED,
}
SPEC = {
    "ociVersion": None, "process": _PROCESS, "root": {"path": None, "readonly": None},
    "hostname": None, "domainname": None,
    "mounts": ("list", {"destination": None, "type": None, "source": None, "options": None,
                        "uidMappings": UNSUPPORTED, "gidMappings": UNSUPPORTED}),
    "hooks": {stage: ("list", _HOOK) for stage in
              ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
               "poststop")},
    "annotations": None, "linux": _LINUX,
    "solaris": UNSUPPORTED, "windows": UNSUPPORTED, "vm": UNSUPPORTED, "zos": UNSUPPORTED,
}
# Namespaced sysctls (runc's validator): a sysctl outside the container's own namespaces
# would change the host.
SYSCTL_IPC = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
              "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced")


def _empty(value) -> bool:
    return value in (None, "", [], {}, False, 0)


def check(spec: dict) -> None:
    """Refuse a spec that asks for something minictr would not do (see the module docstring).
    linux.seccomp is checked field by field where it is compiled (runtime/seccomp.py)."""
    if not isinstance(spec, dict):
        raise SpecError("config.json is not a JSON object")
    _walk(spec, SPEC, "")
    for key in ("process", "root"):
        if not isinstance(spec.get(key), dict):
            raise SpecError(f"config.json has no {key} object")
    process = spec["process"]
    if not isinstance(process.get("args"), list) or not process["args"] or not all(
            isinstance(a, str) for a in process["args"]):
        raise SpecError("process.args must be a non-empty list of strings")
    if not isinstance(spec["root"].get("path"), str) or not spec["root"]["path"]:
        raise SpecError("root.path is missing")
    if process.get("cwd") is not None and not str(process["cwd"]).startswith("/"):
        raise SpecError(f"process.cwd {process['cwd']!r} must be an absolute path")
    _check_sysctl(spec)
    _check_capabilities(process.get("capabilities") or {})


def _check_capabilities(caps: dict) -> None:
    from minictr.runtime.capabilities import known_caps

    known = known_caps()
    for kind, names in caps.items():
        for name in names or ():
            if not isinstance(name, str) or name.upper() not in known:
                raise SpecError(f"process.capabilities.{kind}: unknown capability {name!r}",
                                hint="see capabilities(7)")


def _walk(value, schema, where: str) -> None:
    if schema is None:
        return
    if schema == UNSUPPORTED:
        if not _empty(value):
            raise SpecError(f"{where} is not supported by minictr",
                            hint=f"remove {where} from config.json")
        return
    if isinstance(schema, tuple):                     # a list of objects
        if value is None:
            return
        if not isinstance(value, list):
            raise SpecError(f"{where} must be a list")
        for i, item in enumerate(value):
            _walk(item, schema[1], f"{where}[{i}]")
        return
    if value is None:
        return
    if not isinstance(value, dict):
        raise SpecError(f"{where} must be an object")
    for key, item in value.items():
        path = f"{where}.{key}" if where else key
        if key not in schema:
            if _empty(item):
                continue
            raise SpecError(f"{path} is not supported by minictr (unknown field)",
                            hint=f"remove {path} from config.json")
        _walk(item, schema[key], path)


def _check_sysctl(spec: dict) -> None:
    linux = spec.get("linux") or {}
    own = {ns.get("type") for ns in linux.get("namespaces") or () if not ns.get("path")}
    joined = {ns.get("type") for ns in linux.get("namespaces") or () if ns.get("path")}
    for key in linux.get("sysctl") or {}:
        if key in SYSCTL_IPC or key.startswith("fs.mqueue."):
            needs = "ipc"
        elif key.startswith("net."):
            needs = "network"
        elif key in ("kernel.hostname", "kernel.domainname"):
            raise SpecError(f"linux.sysctl {key}: set hostname/domainname instead")
        else:
            raise SpecError(f"linux.sysctl {key} is not namespaced: it would change the host",
                            hint="only net.*, fs.mqueue.* and the kernel.msg*/sem/shm* keys")
        if needs not in own | joined:
            raise SpecError(f"linux.sysctl {key} needs the container's own {needs} namespace")
