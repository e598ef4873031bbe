"""--device HOST[:CONTAINER][:PERMISSIONS] -> container edits, as docker's parseDevice.

The host node is stat(2)-ed for its type and numbers (st_rdev, split with major(3)/minor(3));
the edits then make the runtime create it (or bind it, in a user namespace) and allow it in the
device cgroup. ``stat`` is a parameter so tests can describe nodes that do not exist here.
"""
from __future__ import annotations

import os
import stat as stat_mod
from _collections_abc import Callable, Iterable

from minictr.errors import SpecError
from minictr.spec.edits import ContainerEdits, DeviceNode
from minictr.spec.mounts import check_destination

Stat = Callable[[str], os.stat_result]


def _is_permissions(text: str) -> bool:
    """docker's validDeviceMode: a non-empty mix of r, w, m, each at most once."""
    return bool(text) and len(text) <= 3 and set(text) <= set("rwm") and \
        len(set(text)) == len(text)


def parse_device(text: str) -> tuple[str, str, str]:
    """HOST[:CONTAINER][:PERMISSIONS] -> (host, container, permissions)."""
    parts = text.split(":")
    if len(parts) == 1:
        host, container, perms = parts[0], parts[0], "rwm"
    elif len(parts) == 2:
        if _is_permissions(parts[1]):
            host, container, perms = parts[0], parts[0], parts[1]
        else:
            host, container, perms = parts[0], parts[1], "rwm"
    elif len(parts) == 3:
        host, container, perms = parts
        if not _is_permissions(perms):
            raise SpecError(f"--device {text}: bad mode {perms!r}",
                            hint="permissions are a mix of r (read), w (write), m (mknod)")
    else:
        raise SpecError(f"--device {text}: expected HOST[:CONTAINER][:PERMISSIONS]")
    if not host.startswith("/"):
        raise SpecError(f"--device {text}: the host path must be absolute")
    return host, check_destination(container or host, f"--device {text}"), perms


def node_from_stat(container_path: str, host_path: str, st: os.stat_result,
                   permissions: str = "rwm") -> DeviceNode:
    """A DeviceNode for a host character or block device, described by its stat result."""
    if stat_mod.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat_mod.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise SpecError(f"{host_path} is not a device node",
                        hint="--device takes a character or block device such as /dev/fuse")
    return DeviceNode(path=container_path, type=kind, major=os.major(st.st_rdev),
                      minor=os.minor(st.st_rdev), file_mode=stat_mod.S_IMODE(st.st_mode),
                      uid=st.st_uid, gid=st.st_gid, permissions=permissions,
                      host_path=host_path)


def _stat(stat: Stat, path: str, what: str) -> os.stat_result:
    try:
        return stat(path)
    except OSError as err:
        raise SpecError(f"{what}: cannot stat {path}: {err.strerror or err}") from err


def edits_for_host_devices(specs: Iterable[str], stat: Stat = os.stat) -> ContainerEdits:
    """--device values -> one ContainerEdits with a device node (and allow rule) for each."""
    nodes = []
    for text in specs:
        host, container, perms = parse_device(text)
        st = _stat(stat, host, f"--device {text}")
        nodes.append(node_from_stat(container, host, st, perms))
    return ContainerEdits(device_nodes=tuple(nodes))


def fill_device_nodes(edits: ContainerEdits, stat: Stat = os.stat) -> ContainerEdits:
    """Complete CDI device nodes that name only a path: CDI fills type, major, minor (and the
    mode, when not given) from the host node at hostPath, or at path when hostPath is absent."""
    filled = []
    for node in edits.device_nodes:
        if node.type is None or (node.type != "p" and (node.major is None or node.minor is None)):
            host = node.host_path or node.path
            found = node_from_stat(node.path, host, _stat(stat, host, "CDI device"),
                                   node.permissions)
            node = node._replace(
                type=found.type, major=found.major, minor=found.minor,
                file_mode=node.file_mode if node.file_mode is not None else found.file_mode)
        filled.append(node)
    return edits._replace(device_nodes=tuple(filled))
