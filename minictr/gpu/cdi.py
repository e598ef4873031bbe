"""Container Device Interface (CDI) specs: write one for the host's GPUs, read them for --device.

A CDI spec (cncf-tags/container-device-interface SPEC.md, version 1.1.0) is the same container
edit minictr computes for --gpus, written to a file: ``cdiVersion``, ``kind`` (vendor/class),
``devices[] {name, containerEdits}`` and a top-level ``containerEdits`` applied whenever a device
of the file is used. ``containerEdits`` holds ``env``, ``deviceNodes``, ``mounts``, ``hooks``
and ``additionalGids``. Specs live in /etc/cdi and /var/run/cdi; a later directory wins.
A device is named ``nvidia.com/gpu=0`` (kind ``=`` name).
"""
from __future__ import annotations

import json
import os
import re
import stat

from minictr.errors import GPUError
from minictr.gpu.discover import Driver, Node
from minictr.spec.edits import ContainerEdits

CDI_VERSION = "1.1.0"
KIND = "nvidia.com/gpu"
SPEC_DIRS = ("/etc/cdi", "/var/run/cdi")
HOOK_STAGES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
               "poststop")
MOUNT_OPTIONS = ["ro", "nosuid", "nodev", "rbind"]
_NAME = re.compile(r"^([a-z0-9][a-z0-9.-]*/[a-zA-Z0-9][a-zA-Z0-9._-]*)"     # vendor/class
                   r"=([a-zA-Z0-9][a-zA-Z0-9_.:-]*)$")                     # =device


# ---------------------------------------------------------------- generate


def _cdi_node(node: Node) -> dict:
    out = {"path": node.path, "type": "c", "major": node.major, "minor": node.minor}
    if node.host_path != node.path:
        out["hostPath"] = node.host_path
    return out


def _cdi_mount(driver: Driver, host: str, container: str | None = None) -> dict:
    return {"hostPath": host, "containerPath": container or driver.container_path(host),
            "type": "bind", "options": list(MOUNT_OPTIONS)}


def _common_edits(driver: Driver) -> dict:
    """What every device of the spec needs: control nodes and all driver files. Each library is
    mounted at its host path and at its SONAMEs beside it, so the loader finds it by its default
    search path even when no hook updates the image's ld.so.cache."""
    nodes = [_cdi_node(driver.control[n]) for n in
             ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
             if n in driver.control and driver.control[n].present]
    mounts = []
    folders = []
    for lib in driver.libraries:
        target = driver.container_path(lib.host_path)
        mounts.append(_cdi_mount(driver, lib.host_path, target))
        for soname in lib.sonames:
            mounts.append(_cdi_mount(driver, lib.host_path, f"{os.path.dirname(target)}/{soname}"))
        if os.path.dirname(target) not in folders:
            folders.append(os.path.dirname(target))
    mounts += [_cdi_mount(driver, p, f"/usr/bin/{name}") for name, p in driver.binaries.items()]
    mounts += [_cdi_mount(driver, p) for p in driver.firmware]
    mounts += [{**_cdi_mount(driver, p), "options": ["nosuid", "nodev", "rbind"]}
               for p in driver.ipc]
    edits: dict = {"env": ["NVIDIA_VISIBLE_DEVICES=void"], "deviceNodes": nodes, "mounts": mounts}
    ctk = os.path.join(driver.roots.driver_root, "usr/bin/nvidia-ctk")
    if os.path.exists(ctk):
        # the same loader-cache update nvidia-ctk's own spec asks for
        args = ["nvidia-ctk", "hook", "update-ldcache"]
        for folder in folders:
            args += ["--folder", folder]
        edits["hooks"] = [{"hookName": "createContainer", "path": driver.container_path(ctk),
                           "args": args}]
    return edits


def spec_dict(driver: Driver) -> dict:
    """The CDI spec for the host's GPUs: one device per index, per UUID, per MIG device
    (``G:M``), and ``all``; shared nodes and mounts at the top."""
    devices = []
    for g in driver.gpus:
        nodes = [_cdi_node(g.node)]
        for name in (str(g.index), g.uuid):
            if name:
                devices.append({"name": name, "containerEdits": {"deviceNodes": nodes}})
        for m in g.mig:
            devices.append({"name": f"{m.gpu_index}:{m.index}", "containerEdits": {
                "deviceNodes": nodes + [_cdi_node(n) for n in m.nodes]}})
    devices.append({"name": "all", "containerEdits": {
        "deviceNodes": [_cdi_node(g.node) for g in driver.gpus]}})
    return {"cdiVersion": CDI_VERSION, "kind": KIND, "devices": devices,
            "containerEdits": _common_edits(driver)}


def generate(driver: Driver, fmt: str = "yaml") -> str:
    """The spec as text, like ``nvidia-ctk cdi generate --format=FMT``."""
    doc = json.loads(json.dumps(spec_dict(driver)))   # fresh objects: no YAML &anchors
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    raise GPUError(f"unknown CDI format {fmt!r}", hint="json or yaml")


# ---------------------------------------------------------------- read


def load_spec(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if path.endswith(".json"):
            doc = json.loads(raw)
        else:
            import yaml

            doc = yaml.safe_load(raw)
    except (OSError, ValueError) as err:
        raise GPUError(f"cannot read CDI spec {path}: {err}") from None
    except Exception as err:            # yaml.YAMLError, without importing yaml eagerly
        raise GPUError(f"cannot parse CDI spec {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str) or \
            "/" not in doc["kind"] or not isinstance(doc.get("devices", []), list):
        raise GPUError(f"{path} is not a CDI spec (needs cdiVersion, kind vendor/class, devices)")
    return doc


def registry(spec_dirs=SPEC_DIRS) -> tuple[dict, dict]:
    """({(kind, name): (spec path, device edits)}, {spec path: spec-level edits}); files of a
    later directory replace devices of the same name from an earlier one."""
    devices: dict = {}
    common: dict = {}
    for d in spec_dirs:
        try:
            names = sorted(os.listdir(d))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for n in names:
            if not n.endswith((".json", ".yaml", ".yml")):
                continue
            path = os.path.join(d, n)
            doc = load_spec(path)
            common[path] = doc.get("containerEdits") or {}
            for dev in doc.get("devices") or []:
                if isinstance(dev, dict) and isinstance(dev.get("name"), str):
                    devices[(doc["kind"], dev["name"])] = (path, dev.get("containerEdits") or {})
    return devices, common


def _field(obj: dict, key: str, kind: type, where: str, default=None):
    """``obj[key]`` if it has the JSON type the CDI spec gives it: a string (no NUL), a
    number (0 to 2^32-1) or a list of strings. The file is input, not code: a wrong type is a
    one-line error here, not a crash further down."""
    value = obj.get(key, default)
    if value is None:
        return None
    items = value if kind is list and isinstance(value, list) else [value]
    item_kind = str if kind is list else kind
    if not isinstance(value, kind) or not all(_fits(v, item_kind) for v in items):
        raise GPUError(f"{where}: {key} must be {_TYPE_NAMES[kind]}, not {value!r:.60}")
    return value


def _fits(value, kind: type) -> bool:
    if kind is int:
        return type(value) is int and 0 <= value < 2**32
    return isinstance(value, str) and "\0" not in value


_TYPE_NAMES = {str: "a string", int: "a number from 0 to 2^32-1", list: "a list of strings"}


def _entries(edits: dict, key: str, where: str) -> list[dict]:
    """containerEdits' list ``key`` (deviceNodes, mounts, hooks), each entry a mapping."""
    value = edits.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise GPUError(f"{where}: containerEdits.{key} must be a list of mappings")
    return value


def _oci_device(node: dict, where: str) -> dict:
    path = node.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise GPUError(f"{where}: deviceNode without an absolute path")
    major, minor = _field(node, "major", int, where), _field(node, "minor", int, where)
    kind = _field(node, "type", str, where)
    if major is None or minor is None or kind is None:
        host = _field(node, "hostPath", str, where) or path
        try:
            st = os.stat(host)
        except (OSError, ValueError) as err:
            raise GPUError(f"{where}: device {host} does not exist "
                           f"({getattr(err, 'strerror', None) or err})") from None
        if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise GPUError(f"{where}: {host} is not a device node")
        kind = kind or ("c" if stat.S_ISCHR(st.st_mode) else "b")
        major = os.major(st.st_rdev) if major is None else major
        minor = os.minor(st.st_rdev) if minor is None else minor
    if kind not in ("c", "b", "u", "p"):
        raise GPUError(f"{where}: device type {kind!r:.20} is not one of c, b, u, p")
    out = {"path": path, "type": kind, "major": major, "minor": minor,
           "fileMode": _field(node, "fileMode", int, where, 0o666),
           "uid": _field(node, "uid", int, where, 0), "gid": _field(node, "gid", int, where, 0)}
    return out


def _oci_mount(m: dict, where: str) -> dict:
    host, container = _field(m, "hostPath", str, where), _field(m, "containerPath", str, where)
    if not host or not (container or "").startswith("/"):
        raise GPUError(f"{where}: mount needs hostPath and an absolute containerPath")
    return {"destination": container, "source": host,
            "type": _field(m, "type", str, where) or "bind",
            "options": list(_field(m, "options", list, where) or ["rbind"])}


def _hook(h: dict, where: str) -> dict:
    if h.get("hookName") not in HOOK_STAGES or not _field(h, "path", str, where):
        raise GPUError(f"{where}: hook needs hookName (one of {', '.join(HOOK_STAGES)}) and path")
    out = {"hookName": h["hookName"], "path": h["path"]}
    for key, kind in (("args", list), ("env", list), ("timeout", int)):
        if _field(h, key, kind, where) is not None:
            out[key] = h[key]
    return out


def from_cdi(edits: dict, where: str) -> ContainerEdits:
    """CDI ``containerEdits`` -> ContainerEdits in OCI shapes (hooks keep their stage)."""
    if not isinstance(edits, dict):
        raise GPUError(f"{where}: containerEdits must be a mapping")
    return ContainerEdits(
        env=tuple(_field(edits, "env", list, where) or ()),
        device_nodes=tuple(_oci_device(n, where) for n in _entries(edits, "deviceNodes", where)),
        mounts=tuple(_oci_mount(m, where) for m in _entries(edits, "mounts", where)),
        hooks=tuple(_hook(h, where) for h in _entries(edits, "hooks", where)),
        additional_gids=tuple(_gids(edits, where)))


def _gids(edits: dict, where: str) -> list:
    gids = edits.get("additionalGids") or []
    if not isinstance(gids, list) or not all(_fits(g, int) for g in gids):
        raise GPUError(f"{where}: additionalGids must be a list of group ids")
    return gids


def merge(parts: list[ContainerEdits]) -> ContainerEdits:
    return ContainerEdits(
        env=tuple(e for p in parts for e in p.env),
        device_nodes=tuple(d for p in parts for d in p.device_nodes),
        mounts=tuple(m for p in parts for m in p.mounts),
        hooks=tuple(h for p in parts for h in p.hooks),
        additional_gids=tuple(dict.fromkeys(g for p in parts for g in p.additional_gids)))


def edits_for_names(names, spec_dirs=SPEC_DIRS) -> ContainerEdits:
    """The edits for fully-qualified CDI device names such as ``nvidia.com/gpu=0``."""
    devices, common = registry(spec_dirs)
    parts, used = [], []
    for full in names:
        m = _NAME.match(full)
        if not m:
            raise GPUError(f"{full!r} is not a CDI device name",
                           hint="vendor.com/class=name, e.g. nvidia.com/gpu=0")
        kind, name = m.groups()
        if (kind, name) not in devices:
            known = sorted(f"{k}={n}" for k, n in devices if k == kind)
            raise GPUError(f"unknown CDI device {full}: " + (
                ("known: " + ", ".join(known)) if known else
                f"no spec for {kind} in {', '.join(spec_dirs)}"),
                hint="minictr cdi generate -o /etc/cdi/nvidia.yaml writes one for this host")
        path, dev_edits = devices[(kind, name)]
        if path not in used:
            used.append(path)
        parts.append(from_cdi(dev_edits, f"{path}: {full}"))
    parts = [from_cdi(common[p], p) for p in used] + parts
    return merge(parts)
