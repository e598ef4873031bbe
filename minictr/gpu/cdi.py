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

from minictr.errors import GPUError, SpecError
from minictr.gpu.driver import Driver
from minictr.spec.edits import HOOK_STAGES, ContainerEdits

CDI_VERSION = "1.1.0"
KIND = "nvidia.com/gpu"
SPEC_DIRS = ("/etc/cdi", "/var/run/cdi")
MOUNT_OPTIONS = ["ro", "nosuid", "nodev", "rbind"]
_NAME = re.compile(r"^([a-z0-9][a-z0-9.-]*/[a-zA-Z0-9][a-zA-Z0-9._-]*)"     # vendor/class
                   r"=([a-zA-Z0-9][a-zA-Z0-9_.:-]*)$")                     # =device


# ---------------------------------------------------------------- generate


def _cdi_mount(driver: Driver, host: str, container: str | None = None) -> dict:
    return {"hostPath": host, "containerPath": container or driver.container_path(host),
            "type": "bind", "options": list(MOUNT_OPTIONS)}


def _common_edits(driver: Driver) -> dict:
    """What every device of the spec needs: control nodes and all driver files. Each library is
    mounted at its host path and at its SONAMEs beside it, so the loader finds it by its default
    search path even when no hook updates the image's ld.so.cache."""
    nodes = [driver.control[n].to_cdi() for n in
             ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
             if n in driver.control and f"/dev/{n}" not in driver.missing]
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
        nodes = [g.node.to_cdi()]
        for name in (str(g.index), g.uuid):
            if name:
                devices.append({"name": name, "containerEdits": {"deviceNodes": nodes}})
        for m in g.mig:
            devices.append({"name": f"{m.gpu_index}:{m.index}", "containerEdits": {
                "deviceNodes": nodes + [n.to_cdi() for n in m.nodes]}})
    devices.append({"name": "all", "containerEdits": {
        "deviceNodes": [g.node.to_cdi() for g in driver.gpus]}})
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


def from_cdi(edits: dict, where: str) -> ContainerEdits:
    """CDI ``containerEdits`` -> ContainerEdits (spec/edits.py, the one model of a device node,
    mount and hook); nodes that name only a path get type and numbers from the host node."""
    from minictr.spec.devices import fill_device_nodes

    try:
        out = fill_device_nodes(ContainerEdits.from_cdi(edits))
    except SpecError as err:
        raise GPUError(f"{where}: {err}", hint=err.hint) from None
    for node in out.device_nodes:
        if not node.path.startswith("/"):
            raise GPUError(f"{where}: deviceNode without an absolute path")
    for mount in out.mounts:
        if not mount.host_path or not mount.container_path.startswith("/"):
            raise GPUError(f"{where}: mount needs hostPath and an absolute containerPath")
    # a bind mount with no options is a recursive bind (as runc and the CDI library read it)
    out = out._replace(mounts=tuple(m._replace(options=("rbind",)) if not m.options and
                                    m.type == "bind" else m for m in out.mounts))
    for hook in out.hooks:
        if hook.hook_name not in HOOK_STAGES or not hook.path:
            raise GPUError(f"{where}: hook needs hookName (one of {', '.join(HOOK_STAGES)}) "
                           "and path")
    return out


def merge(parts: list[ContainerEdits]) -> ContainerEdits:
    out = ContainerEdits()
    for part in parts:
        out = out.merge(part)
    return out._replace(additional_gids=tuple(dict.fromkeys(out.additional_gids)))


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
