"""What minictr-runc's composition (minictr/bundles.py) does to a bundle before the runtime
sees it: a user namespace for an unprivileged caller, and reading the bundle's rootfs for GPU
injection without leaving it."""
import os

from minictr import bundles


def root_bundle_spec():
    """The shape `runc spec` writes (trimmed)."""
    return {"process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"]},
            "root": {"path": "rootfs"},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                       {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                        "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666",
                                    "mode=0620", "gid=5"]}],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}}


def test_an_unprivileged_caller_gets_a_user_namespace():
    said = []
    spec = bundles.with_user_namespace(root_bundle_spec(), 1003, 1004, warn=said.append)
    linux = spec["linux"]
    assert {"type": "user"} in linux["namespaces"]
    assert linux["uidMappings"] == [{"containerID": 0, "hostID": 1003, "size": 1}]
    assert linux["gidMappings"] == [{"containerID": 0, "hostID": 1004, "size": 1}]
    assert "gid=5" not in spec["mounts"][1]["options"]
    assert "mode=0620" in spec["mounts"][1]["options"]
    assert said == ["mount /dev/pts: option gid=5 left out: gid 5 is not mapped in the user "
                    "namespace added for an unprivileged run"]
    assert "options" not in spec["mounts"][0]


def test_a_bundle_with_a_user_namespace_is_left_alone():
    spec = root_bundle_spec()
    spec["linux"]["namespaces"].append({"type": "user"})
    assert bundles.with_user_namespace(spec, 1003, 1003) is spec


def test_the_rootfs_is_read_inside_itself(tmp_path):
    rootfs = tmp_path / "bundle" / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "os-release").write_text("ID=debian\n")
    (tmp_path / "secret").write_text("host file")
    os.symlink("/../../secret", rootfs / "etc" / "escape")
    os.symlink(str(tmp_path / "secret"), rootfs / "etc" / "absolute")
    os.mkfifo(rootfs / "etc" / "ld.so.cache")
    read = bundles.rootfs_reader({"root": {"path": "rootfs"}}, str(tmp_path / "bundle"))
    assert read("/etc/os-release") == b"ID=debian\n"
    assert read("/etc/escape") is None and read("/etc/absolute") is None
    assert read("/etc/ld.so.cache") is None                    # a fifo: never blocks
    assert read("/nonexistent") is None
