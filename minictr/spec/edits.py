"""Container edits, shaped like CDI's ``containerEdits``, and the pure ``apply_edits``.

GPU injection, CDI spec files and ``--device`` all produce a ``ContainerEdits``; api.py applies
them to the spec the builder made. The JSON names are CDI's (container-device-interface
SPEC.md, "containerEdits"): env, deviceNodes, mounts, hooks, additionalGids.
"""
from __future__ import annotations

from minictr.errors import SpecError
from minictr.records import record
from minictr.spec.mounts import check_destination

HOOK_STAGES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
               "poststop")


def _field(obj: dict, key: str, kind: type, default=None, required: bool = False):
    """``obj[key]`` if it has the JSON type CDI gives it: a string (no NUL), a number from 0 to
    2^32-1, or a list of strings. A CDI spec file is input, not code: a wrong type or a missing
    required key is a one-line SpecError here rather than a crash further down."""
    if not isinstance(obj, dict):
        raise _malformed(f"expected a mapping, not {obj!r:.60}")
    value = obj.get(key, default)
    if value is None:
        if required:
            raise _malformed(f"{key} is missing")
        return None
    kinds = (list, tuple) if kind is list else kind     # records hold tuples
    items = value if kind is list and isinstance(value, kinds) else [value]
    item_kind = str if kind is list else kind
    if not isinstance(value, kinds) or not all(_fits(v, item_kind) for v in items):
        raise _malformed(f"{key} must be {_TYPE_NAMES[kind]}, not {value!r:.60}")
    return value


def _malformed(what: str) -> SpecError:
    return SpecError(f"malformed CDI containerEdits: {what}")


def _fits(value, kind: type) -> bool:
    if kind is int:
        return type(value) is int and 0 <= value < 2**32
    return isinstance(value, str) and "\0" not in value


def _gid(value) -> int:
    """A group id: a number, or its decimal digits (GPU code passes st_gid-like strings)."""
    if isinstance(value, str) and value.isascii() and value.isdecimal():
        value = int(value)
    if not _fits(value, int):
        raise _malformed(f"additionalGids must hold group ids, not {value!r:.60}")
    return value


_TYPE_NAMES = {str: "a string", int: "a number from 0 to 2^32-1", list: "a list of strings"}


@record
class DeviceNode:
    """A device node to create in the container (CDI deviceNodes[], config-linux.md devices)."""

    path: str                          # in the container
    type: str | None = None            # "c", "b" or "p"; None until stat-ed
    major: int | None = None
    minor: int | None = None
    file_mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    permissions: str = "rwm"           # the device-cgroup access to allow
    host_path: str | None = None       # where it is on the host, when not at ``path``

    @classmethod
    def from_cdi(cls, d: dict) -> "DeviceNode":
        return cls(path=_field(d, "path", str, required=True), type=_field(d, "type", str),
                   major=_field(d, "major", int), minor=_field(d, "minor", int),
                   file_mode=_field(d, "fileMode", int), uid=_field(d, "uid", int),
                   gid=_field(d, "gid", int), permissions=_field(d, "permissions", str) or "rwm",
                   host_path=_field(d, "hostPath", str))

    def to_cdi(self) -> dict:
        out = {"path": self.path, "hostPath": self.host_path, "type": self.type,
               "major": self.major, "minor": self.minor, "fileMode": self.file_mode,
               "permissions": self.permissions, "uid": self.uid, "gid": self.gid}
        return {k: v for k, v in out.items() if v is not None}


@record
class Mount:
    """CDI mounts[]: a host path (or a filesystem source) at a container path."""

    host_path: str
    container_path: str
    type: str = "bind"
    options: tuple[str, ...] = ()

    @classmethod
    def from_cdi(cls, d: dict) -> "Mount":
        """A CDI mount (hostPath, containerPath), or an OCI config.md mount (source,
        destination): GPU code builds the latter."""
        if not isinstance(d, dict):
            raise _malformed(f"a mount must be a mapping, not {d!r:.60}")
        if "containerPath" in d or "hostPath" in d:
            host = _field(d, "hostPath", str, required=True)
            container = _field(d, "containerPath", str, required=True)
        else:
            host = _field(d, "source", str) or "none"
            container = _field(d, "destination", str, required=True)
        return cls(host_path=host, container_path=container,
                   type=_field(d, "type", str) or "bind",
                   options=tuple(_field(d, "options", list) or ()))

    def to_cdi(self) -> dict:
        return {"hostPath": self.host_path, "containerPath": self.container_path,
                "type": self.type, "options": list(self.options)}


@record
class Hook:
    """CDI hooks[]: an OCI hook (config.md "POSIX-platform Hooks") and the stage it runs at."""

    hook_name: str
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None

    @classmethod
    def from_cdi(cls, d: dict) -> "Hook":
        return cls(hook_name=_field(d, "hookName", str, required=True),
                   path=_field(d, "path", str, required=True),
                   args=tuple(_field(d, "args", list) or ()),
                   env=tuple(_field(d, "env", list) or ()), timeout=_field(d, "timeout", int))

    def to_cdi(self) -> dict:
        out = {"hookName": self.hook_name, "path": self.path}
        if self.args:
            out["args"] = list(self.args)
        if self.env:
            out["env"] = list(self.env)
        if self.timeout is not None:
            out["timeout"] = self.timeout
        return out


@record
class ContainerEdits:
    """The edits. Entries may be given as the records above or as plain dicts (CDI's JSON
    form, or for devices and mounts the OCI config.json form); they are converted on creation,
    so a ContainerEdits always holds the records, in tuples."""

    env: tuple[str, ...] = ()
    device_nodes: tuple[DeviceNode, ...] = ()
    mounts: tuple[Mount, ...] = ()
    hooks: tuple[Hook, ...] = ()
    additional_gids: tuple[int, ...] = ()

    @classmethod
    def _normalize(cls, v: dict) -> dict:
        """Dicts become the records above; lists become tuples (records.record's hook)."""
        def conv(items, kind):
            return tuple(x if isinstance(x, kind) else kind.from_cdi(x) for x in items or ())
        try:
            return {"env": tuple(_field(v, "env", list) or ()),
                    "device_nodes": conv(v["device_nodes"], DeviceNode),
                    "mounts": conv(v["mounts"], Mount), "hooks": conv(v["hooks"], Hook),
                    "additional_gids": tuple(_gid(g) for g in v["additional_gids"] or ())}
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise SpecError(f"malformed CDI containerEdits: {err!r}") from err

    @classmethod
    def from_cdi(cls, d: dict | None) -> "ContainerEdits":
        """Read a CDI ``containerEdits`` object; a missing key means no edit of that kind."""
        d = d or {}
        if not isinstance(d, dict) or not all(isinstance(d.get(k) or [], list) for k in
                                              ("env", "deviceNodes", "mounts", "hooks",
                                               "additionalGids")):
            raise SpecError("malformed CDI containerEdits: expected an object of lists")
        return cls(env=d.get("env"), device_nodes=d.get("deviceNodes"), mounts=d.get("mounts"),
                   hooks=d.get("hooks"), additional_gids=d.get("additionalGids"))

    def to_cdi(self) -> dict:
        out: dict = {}
        if self.env:
            out["env"] = list(self.env)
        if self.device_nodes:
            out["deviceNodes"] = [n.to_cdi() for n in self.device_nodes]
        if self.mounts:
            out["mounts"] = [m.to_cdi() for m in self.mounts]
        if self.hooks:
            out["hooks"] = [h.to_cdi() for h in self.hooks]
        if self.additional_gids:
            out["additionalGids"] = list(self.additional_gids)
        return out

    def merge(self, other: "ContainerEdits") -> "ContainerEdits":
        """Both sets of edits, ``other`` applied after ``self``."""
        return ContainerEdits(env=self.env + other.env,
                              device_nodes=self.device_nodes + other.device_nodes,
                              mounts=self.mounts + other.mounts, hooks=self.hooks + other.hooks,
                              additional_gids=self.additional_gids + other.additional_gids)


# ---------------------------------------------------------------- applying


def copy_document(value):
    """copy.deepcopy of a JSON document (dicts, lists, tuples of them, and immutable scalars),
    without importing copy: it imports weakref and tries Jython's org.python.core, an import
    that fails only after looking in every sys.path entry."""
    if isinstance(value, dict):
        return {key: copy_document(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copy_document(item) for item in value]
    if isinstance(value, tuple):
        return tuple(copy_document(item) for item in value)
    return value


def apply_edits(spec: dict, edits: ContainerEdits) -> dict:
    """Return a copy of ``spec`` with ``edits`` applied; ``spec`` itself is never changed.

    A device node must be both created (linux.devices) and allowed (a linux.resources.devices
    rule): without the rule, creating works and open() fails later inside the container with
    EPERM. In a user namespace the runtime cannot mknod; it bind-mounts the host node at the
    same path (runc and crun do), so a node whose host path differs becomes an explicit bind.
    """
    out = copy_document(spec)
    process = out.setdefault("process", {})
    process["env"] = merge_env(process.get("env", []), edits.env)
    in_userns = any(ns.get("type") == "user" for ns in out.get("linux", {}).get("namespaces", []))
    for node in edits.device_nodes:
        _add_device(out, node, in_userns)
    for mount in edits.mounts:
        dest = check_destination(mount.container_path, "CDI mount")
        insert_mount(out.setdefault("mounts", []),
                     {"destination": dest, "type": mount.type, "source": mount.host_path,
                      "options": list(mount.options)})
    for hook in edits.hooks:
        _add_hook(out, hook)
    if edits.additional_gids:
        user = process.setdefault("user", {"uid": 0, "gid": 0})
        user["additionalGids"] = list(dict.fromkeys(
            list(user.get("additionalGids", [])) + list(edits.additional_gids)))
    return out


def merge_env(env: list[str], updates) -> list[str]:
    """KEY=VALUE entries: an update replaces the entry with the same KEY in place, else appends."""
    out = list(env)
    index = {e.partition("=")[0]: i for i, e in enumerate(out)}
    for entry in updates:
        key = entry.partition("=")[0]
        if key in index:
            out[index[key]] = entry
        else:
            index[key] = len(out)
            out.append(entry)
    return out


def insert_mount(mounts: list[dict], mount: dict) -> None:
    """Add ``mount`` in place: it replaces a mount at the same destination, and goes before any
    mount below its destination, so that it never hides one (runtimes mount in list order)."""
    dest = mount["destination"]
    for i, m in enumerate(mounts):
        if m["destination"] == dest:
            mounts[i] = mount
            return
    for i, m in enumerate(mounts):
        if m["destination"].startswith(dest.rstrip("/") + "/"):
            mounts.insert(i, mount)
            return
    mounts.append(mount)


def _add_device(spec: dict, node: DeviceNode, in_userns: bool) -> None:
    path = check_destination(node.path, "device")
    if node.type not in ("c", "b", "p") or (node.type != "p" and (node.major is None or
                                                                   node.minor is None)):
        raise SpecError(f"device {node.path}: type, major and minor are needed",
                        hint="stat the host node first (devices.fill_device_nodes)")
    linux = spec.setdefault("linux", {})
    host = node.host_path or path
    if in_userns and host != path:
        insert_mount(spec.setdefault("mounts", []),
                     {"destination": path, "type": "bind", "source": host,
                      "options": ["bind", "nosuid", "noexec"]})
    else:
        entry = {"path": path, "type": node.type, "major": node.major, "minor": node.minor}
        for key, value in (("fileMode", node.file_mode), ("uid", node.uid), ("gid", node.gid)):
            if value is not None:
                entry[key] = value
        devices = [d for d in linux.get("devices", []) if d.get("path") != path]
        linux["devices"] = devices + [entry]
    if node.type != "p":
        rules = linux.setdefault("resources", {}).setdefault("devices", [])
        rule = {"allow": True, "type": node.type, "major": node.major, "minor": node.minor,
                "access": node.permissions or "rwm"}
        # edits applied again (a bundle written by `minictr spec`) add no second copy, unless
        # a deny rule came after the first (rules apply in order: the last match decides)
        last = max((i for i, r in enumerate(rules) if r == rule), default=None)
        if last is None or any(not r.get("allow") for r in rules[last + 1:]):
            rules.append(rule)


def _add_hook(spec: dict, hook: Hook) -> None:
    if hook.hook_name not in HOOK_STAGES:
        raise SpecError(f"unknown hook stage {hook.hook_name!r}",
                        hint=f"one of {', '.join(HOOK_STAGES)}")
    if not hook.path.startswith("/"):
        raise SpecError(f"hook path {hook.path!r} must be absolute (config.md, Hooks)")
    # config.md's hook entry is CDI's without the stage name (the stage is the list it is in)
    entry = {k: v for k, v in hook.to_cdi().items() if k != "hookName"}
    spec.setdefault("hooks", {}).setdefault(hook.hook_name, []).append(entry)
