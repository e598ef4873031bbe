"""--device HOST[:CONTAINER][:PERMISSIONS] -> edits (minictr/spec/devices.py)."""
import os
import stat

import pytest

from minictr.errors import SpecError
from minictr.spec import devices
from minictr.spec.edits import ContainerEdits, DeviceNode, apply_edits

NODES = {
    "/dev/fuse": (stat.S_IFCHR | 0o666, os.makedev(10, 229), 0, 0),
    "/dev/sda": (stat.S_IFBLK | 0o660, os.makedev(8, 0), 0, 6),
    "/etc/passwd": (stat.S_IFREG | 0o644, 0, 0, 0),
}


def fake_stat(path):
    if path not in NODES:
        raise FileNotFoundError(2, "No such file or directory", path)
    mode, rdev, uid, gid = NODES[path]
    # os.stat_result takes st_rdev only through its dict of extra fields
    return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0), {"st_rdev": rdev})


@pytest.mark.parametrize("text,expected", [
    ("/dev/fuse", ("/dev/fuse", "/dev/fuse", "rwm")),
    ("/dev/fuse:r", ("/dev/fuse", "/dev/fuse", "r")),
    ("/dev/sda:/dev/xvda", ("/dev/sda", "/dev/xvda", "rwm")),
    ("/dev/sda:/dev/xvda:rw", ("/dev/sda", "/dev/xvda", "rw")),
    ("/dev/sda:/dev//xvda:mr", ("/dev/sda", "/dev/xvda", "mr")),
])
def test_parse_device(text, expected):
    assert devices.parse_device(text) == expected


@pytest.mark.parametrize("text,match", [
    ("/dev/sda:/dev/xvda:rx", "bad mode"), ("/dev/sda:/dev/xvda:rr", "bad mode"),
    ("dev/sda", "absolute"), ("/dev/sda:xvda", "absolute"), ("/a:/b:r:w", "expected"),
    ("/dev/sda:/dev/../etc/x", r"'\.\.'"),
])
def test_parse_device_rejects(text, match):
    with pytest.raises(SpecError, match=match):
        devices.parse_device(text)


def test_edits_for_host_devices():
    edits = devices.edits_for_host_devices(["/dev/fuse", "/dev/sda:/dev/xvda:r"], stat=fake_stat)
    assert edits.device_nodes == (
        DeviceNode(path="/dev/fuse", type="c", major=10, minor=229, file_mode=0o666, uid=0,
                   gid=0, permissions="rwm", host_path="/dev/fuse"),
        DeviceNode(path="/dev/xvda", type="b", major=8, minor=0, file_mode=0o660, uid=0,
                   gid=6, permissions="r", host_path="/dev/sda"),
    )
    spec = apply_edits({"linux": {"namespaces": []}}, edits)
    assert {"allow": True, "type": "b", "major": 8, "minor": 0, "access": "r"} in \
        spec["linux"]["resources"]["devices"]
    assert {"path": "/dev/xvda", "type": "b", "major": 8, "minor": 0, "fileMode": 0o660,
            "uid": 0, "gid": 6} in spec["linux"]["devices"]


@pytest.mark.parametrize("text,match", [("/dev/nope", "cannot stat /dev/nope"),
                                        ("/etc/passwd", "not a device node")])
def test_edits_for_host_devices_errors(text, match):
    with pytest.raises(SpecError, match=match):
        devices.edits_for_host_devices([text], stat=fake_stat)


def test_real_dev_null():
    edits = devices.edits_for_host_devices(["/dev/null"])
    node = edits.device_nodes[0]
    assert (node.type, node.major, node.minor) == ("c", 1, 3)


def test_fill_device_nodes_from_host():
    edits = ContainerEdits(device_nodes=(DeviceNode(path="/dev/fuse"),
                                         DeviceNode(path="/dev/xvda", host_path="/dev/sda",
                                                    file_mode=0o600),
                                         DeviceNode(path="/dev/zz", type="c", major=1, minor=2)))
    filled = devices.fill_device_nodes(edits, stat=fake_stat).device_nodes
    assert (filled[0].type, filled[0].major, filled[0].minor, filled[0].file_mode) == \
        ("c", 10, 229, 0o666)
    assert (filled[1].type, filled[1].major, filled[1].file_mode) == ("b", 8, 0o600)
    assert filled[2] == edits.device_nodes[2]
