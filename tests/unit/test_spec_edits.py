"""ContainerEdits (CDI containerEdits) and the pure apply_edits (minictr/spec/edits.py)."""
import copy

import pytest

from minictr.errors import SpecError
from minictr.spec.edits import ContainerEdits, DeviceNode, Hook, Mount, apply_edits, insert_mount

CDI = {
    "env": ["NVIDIA_VISIBLE_DEVICES=void", "A=1"],
    "deviceNodes": [
        {"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0, "fileMode": 0o666,
         "permissions": "rw"},
        {"path": "/dev/nvidiactl", "hostPath": "/hostdev/nvidiactl", "type": "c", "major": 195,
         "minor": 255},
    ],
    "mounts": [{"hostPath": "/usr/lib/libcuda.so.1", "containerPath": "/usr/lib/libcuda.so.1",
                "options": ["ro", "nosuid", "nodev", "bind"]}],
    "hooks": [{"hookName": "createContainer", "path": "/usr/bin/ldconfig-hook",
               "args": ["ldconfig-hook", "update"], "env": ["X=1"], "timeout": 5}],
    "additionalGids": [44, 109],
}


def base_spec(userns=False):
    spec = {
        "process": {"env": ["PATH=/bin", "A=0"], "user": {"uid": 0, "gid": 0}},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc", "options": []},
                   {"destination": "/usr/lib/x/y", "type": "tmpfs", "source": "tmpfs",
                    "options": []}],
        "linux": {"namespaces": [{"type": "pid"}] + ([{"type": "user"}] if userns else []),
                  "devices": [{"path": "/dev/null", "type": "c", "major": 1, "minor": 3}],
                  "resources": {"devices": [{"allow": False, "access": "rwm"}]}},
    }
    return spec


def test_cdi_round_trip():
    edits = ContainerEdits.from_cdi(CDI)
    again = edits.to_cdi()
    assert ContainerEdits.from_cdi(again) == edits
    assert again["deviceNodes"][1]["hostPath"] == "/hostdev/nvidiactl"
    assert again["deviceNodes"][0]["permissions"] == "rw"
    assert again["mounts"][0] == {"hostPath": "/usr/lib/libcuda.so.1",
                                  "containerPath": "/usr/lib/libcuda.so.1", "type": "bind",
                                  "options": ["ro", "nosuid", "nodev", "bind"]}
    assert again["hooks"] == CDI["hooks"]
    assert ContainerEdits.from_cdi(None) == ContainerEdits() and ContainerEdits().to_cdi() == {}


@pytest.mark.parametrize("bad", [{"deviceNodes": [{"type": "c"}]}, {"mounts": [{}]},
                                 {"hooks": [{"path": "/x"}]}, {"additionalGids": ["x"]},
                                 {"mounts": "notalist"}])
def test_from_cdi_malformed(bad):
    with pytest.raises(SpecError, match="malformed CDI"):
        ContainerEdits.from_cdi(bad)


def test_apply_never_mutates_input():
    spec = base_spec()
    before = copy.deepcopy(spec)
    out = apply_edits(spec, ContainerEdits.from_cdi(CDI))
    assert spec == before
    assert out is not spec and out["linux"] is not spec["linux"]


def test_apply_env_overrides_same_key():
    out = apply_edits(base_spec(), ContainerEdits(env=("A=1", "B=2", "PATH=/x:/bin")))
    assert out["process"]["env"] == ["PATH=/x:/bin", "A=1", "B=2"]


def test_device_is_created_and_allowed():
    out = apply_edits(base_spec(), ContainerEdits.from_cdi(CDI))
    devices = out["linux"]["devices"]
    assert {"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0,
            "fileMode": 0o666} in devices
    assert {"path": "/dev/nvidiactl", "type": "c", "major": 195, "minor": 255} in devices
    rules = out["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}          # deny-all stays first
    assert {"allow": True, "type": "c", "major": 195, "minor": 0, "access": "rw"} in rules
    assert {"allow": True, "type": "c", "major": 195, "minor": 255, "access": "rwm"} in rules


def test_device_same_path_replaced_not_duplicated():
    node = DeviceNode(path="/dev/null", type="c", major=1, minor=3, file_mode=0o600)
    out = apply_edits(base_spec(), ContainerEdits(device_nodes=(node,)))
    assert [d for d in out["linux"]["devices"] if d["path"] == "/dev/null"] == [
        {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o600}]


def test_device_in_user_namespace_with_other_host_path_becomes_bind():
    out = apply_edits(base_spec(userns=True), ContainerEdits.from_cdi(CDI))
    paths = [d["path"] for d in out["linux"]["devices"]]
    assert "/dev/nvidia0" in paths and "/dev/nvidiactl" not in paths
    assert {"destination": "/dev/nvidiactl", "type": "bind", "source": "/hostdev/nvidiactl",
            "options": ["bind", "nosuid", "noexec"]} in out["mounts"]


@pytest.mark.parametrize("node,match", [
    (DeviceNode(path="/dev/x"), "type, major and minor are needed"),
    (DeviceNode(path="/dev/x", type="c", major=1), "type, major and minor"),
    (DeviceNode(path="dev/x", type="c", major=1, minor=1), "absolute"),
    (DeviceNode(path="/dev/../etc/x", type="c", major=1, minor=1), r"'\.\.'"),
])
def test_device_errors(node, match):
    with pytest.raises(SpecError, match=match):
        apply_edits(base_spec(), ContainerEdits(device_nodes=(node,)))


def test_mounts_and_order():
    edits = ContainerEdits(mounts=(Mount("/h/lib", "/usr/lib/libcuda.so.1", "bind", ("ro",)),
                                   Mount("/h/x", "/usr/lib/x", "bind", ("ro", "bind")),
                                   Mount("/h/p", "/proc", "bind", ())))
    out = apply_edits(base_spec(), edits)
    dests = [m["destination"] for m in out["mounts"]]
    # /proc replaced in place; /usr/lib/x goes before /usr/lib/x/y so it does not hide it
    assert dests == ["/proc", "/usr/lib/x", "/usr/lib/x/y", "/usr/lib/libcuda.so.1"]
    assert out["mounts"][0]["source"] == "/h/p"
    assert out["mounts"][3] == {"destination": "/usr/lib/libcuda.so.1", "type": "bind",
                                "source": "/h/lib", "options": ["ro"]}


def test_mount_destination_checked():
    with pytest.raises(SpecError, match=r"'\.\.'"):
        apply_edits(base_spec(), ContainerEdits(mounts=(Mount("/h", "/usr/../../x"),)))


def test_hooks_go_to_their_stage():
    edits = ContainerEdits(hooks=(Hook("createContainer", "/bin/a", ("a", "1"), ("E=1",), 3),
                                  Hook("createContainer", "/bin/b"), Hook("poststop", "/bin/c")))
    out = apply_edits(base_spec(), edits)
    assert out["hooks"] == {
        "createContainer": [{"path": "/bin/a", "args": ["a", "1"], "env": ["E=1"], "timeout": 3},
                            {"path": "/bin/b"}],
        "poststop": [{"path": "/bin/c"}]}


@pytest.mark.parametrize("hook,match", [(Hook("beforeLunch", "/bin/a"), "unknown hook stage"),
                                        (Hook("prestart", "bin/a"), "must be absolute")])
def test_hook_errors(hook, match):
    with pytest.raises(SpecError, match=match):
        apply_edits(base_spec(), ContainerEdits(hooks=(hook,)))


def test_additional_gids_appended_once():
    spec = base_spec()
    spec["process"]["user"]["additionalGids"] = [44]
    out = apply_edits(spec, ContainerEdits(additional_gids=(44, 109, 109)))
    assert out["process"]["user"]["additionalGids"] == [44, 109]


def test_apply_to_empty_spec():
    out = apply_edits({}, ContainerEdits.from_cdi(CDI))
    assert out["process"]["env"] == CDI["env"]
    assert out["process"]["user"]["additionalGids"] == [44, 109]


def test_merge_keeps_order():
    a = ContainerEdits(env=("A=1",), additional_gids=(1,))
    b = ContainerEdits(env=("A=2",), additional_gids=(2,))
    assert a.merge(b) == ContainerEdits(env=("A=1", "A=2"), additional_gids=(1, 2))
    assert apply_edits({}, a.merge(b))["process"]["env"] == ["A=2"]


def test_insert_mount_sibling_prefix_is_not_a_child():
    mounts = [{"destination": "/usr/lib64"}]
    insert_mount(mounts, {"destination": "/usr/lib"})
    assert [m["destination"] for m in mounts] == ["/usr/lib64", "/usr/lib"]


def test_plain_dicts_are_accepted_in_oci_or_cdi_form():
    """GPU code hands OCI-shaped dicts (linux.devices entries, config.md mounts)."""
    edits = ContainerEdits(
        env=["A=1"],
        device_nodes=[{"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0,
                       "fileMode": 0o666, "uid": 0, "gid": 0}],
        mounts=[{"destination": "/usr/bin/nvidia-smi", "source": "/h/nvidia-smi",
                 "type": "bind", "options": ["ro", "nosuid", "nodev", "bind"]},
                {"hostPath": "/h/lib", "containerPath": "/usr/lib/lib.so"}],
        hooks=[{"hookName": "poststop", "path": "/bin/true"}], additional_gids=["44"])
    assert edits.env == ("A=1",) and edits.additional_gids == (44,)
    assert edits.device_nodes[0] == DeviceNode(path="/dev/nvidia0", type="c", major=195,
                                               minor=0, file_mode=0o666, uid=0, gid=0)
    assert edits.mounts == (Mount("/h/nvidia-smi", "/usr/bin/nvidia-smi", "bind",
                                  ("ro", "nosuid", "nodev", "bind")),
                            Mount("/h/lib", "/usr/lib/lib.so", "bind", ()))
    assert edits.hooks == (Hook("poststop", "/bin/true"),)
    out = apply_edits(base_spec(), edits)
    assert {"allow": True, "type": "c", "major": 195, "minor": 0, "access": "rwm"} in \
        out["linux"]["resources"]["devices"]
    assert out["mounts"][-2]["source"] == "/h/nvidia-smi"


def test_proc_driver_binds_are_allowed_for_edits():
    """Edits (unlike user -v) may bind below /proc: GPU injection needs /proc/driver/nvidia."""
    out = apply_edits(base_spec(), ContainerEdits(mounts=(
        Mount("/proc/driver/nvidia/params", "/proc/driver/nvidia/params"),)))
    assert out["mounts"][-1]["destination"] == "/proc/driver/nvidia/params"
