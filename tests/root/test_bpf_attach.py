"""The device allow-list is enforced by this kernel (root, a cgroup2 mount; v1 devices too).

On the hybrid machines the v2 tree at /sys/fs/cgroup/unified has no controllers, but a
BPF_PROG_TYPE_CGROUP_DEVICE program attached to a child of it is still run on open(2)/mknod(2).
"""
import errno
import os
import stat

import pytest

from minictr.runtime import bpf_devices, cgroups

pytestmark = pytest.mark.root


def _cgroup2_mounted() -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" - ")[1].startswith("cgroup2 ") for line in f if " - " in line)


if os.geteuid() != 0:
    pytest.skip("needs root (loading a cgroup device program)", allow_module_level=True)
if not _cgroup2_mounted():
    pytest.skip("no cgroup2 mount for the device filter", allow_module_level=True)

ONLY_NULL = [{"allow": False, "access": "rwm"},
             {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]


def _try(action) -> int:
    try:
        action()
        return 0
    except OSError as err:
        return err.errno


def _run_in(cgroup, actions) -> list[int]:
    """Fork a child, put it in ``cgroup`` while it waits on a pipe, then let it try each action;
    it sends back one errno (0 = it worked) per action."""
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_w)
        os.read(go_r, 1)
        os.write(res_w, bytes(_try(a) for a in actions))
        os._exit(0)
    os.close(go_r)
    os.close(res_w)
    cgroup.add_process(pid)
    os.write(go_w, b"x")
    out = os.read(res_r, 64)
    os.waitpid(pid, 0)
    return list(out)


def test_filter_allows_null_denies_others(tmp_path):
    node = tmp_path / "zero"
    os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(1, 5))
    with open(node, "rb"):            # outside the cgroup it opens: the filesystem allows devices
        pass
    log = []
    cg = cgroups.setup({"devices": ONLY_NULL}, container_id=f"test-bpf-{os.getpid()}",
                       cgroups_path=None, rootless=False, explain=log.append)
    paths = list(cg.paths)
    try:
        results = _run_in(cg, [lambda: open("/dev/null", "wb").close(),
                               lambda: open(node, "rb").close(),
                               lambda: os.mknod(tmp_path / "z2", stat.S_IFCHR | 0o600,
                                                os.makedev(1, 5))])
    finally:
        cg.destroy()
    assert results == [0, errno.EPERM, errno.EPERM]
    assert any("deny a *:* rwm; allow c 1:3 rwm" in line for line in log)
    assert not any(os.path.exists(p) for p in paths)


def test_detach_takes_only_our_program(tmp_path):
    from minictr.runtime.syscalls import Syscalls

    kernel = Syscalls()
    cg = cgroups.setup({"devices": ONLY_NULL}, container_id=f"test-bpf2-{os.getpid()}",
                       cgroups_path=None, rootless=False)
    v2 = cg.paths[0]
    foreign = bpf_devices.load_program(kernel, bpf_devices.compile_rules([{"allow": True}]))
    fd = bpf_devices.open_cgroup_dir(Syscalls(), v2)
    try:
        ours = bpf_devices.query_programs(kernel, fd)
        bpf_devices.attach(kernel, fd, foreign)
        both = bpf_devices.query_programs(kernel, fd)
        bpf_devices.detach(kernel, cg.cgroup_fd, cg.prog_fd)
        left = bpf_devices.query_programs(kernel, fd)
        assert len(ours) == 1 and len(both) == 2 and left == [i for i in both if i not in ours]
    finally:
        os.close(fd)
        os.close(foreign)
        cg.destroy()
    assert not os.path.exists(v2)


def test_pure_v1_devices_controller(tmp_path):
    """The same allow-list through the v1 devices controller: a cgroup root that shows only this
    host's v1 mounts (symlinks, no unified/) is a pure v1 host to cgroups.setup."""
    if not os.path.exists("/sys/fs/cgroup/devices/devices.allow"):
        pytest.skip("no cgroup v1 devices controller mounted")
    root = tmp_path / "v1"
    root.mkdir()
    for name in ("devices", "pids"):
        os.symlink(f"/sys/fs/cgroup/{name}", root / name)
    node = tmp_path / "zero"
    os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(1, 5))
    cg = cgroups.setup({"devices": ONLY_NULL}, container_id=f"test-v1dev-{os.getpid()}",
                       cgroups_path=None, rootless=False, cgroup_root=str(root))
    paths = [os.path.realpath(p) for p in cg.paths]
    try:
        assert cg.prog_fd is None
        with open(os.path.join(paths[0], "devices.list")) as f:
            assert f.read().split("\n")[0] == "c 1:3 rwm"
        results = _run_in(cg, [lambda: open("/dev/null", "wb").close(),
                               lambda: open(node, "rb").close()])
    finally:
        cg.destroy()
    assert results == [0, errno.EPERM]
    assert not any(os.path.exists(p) for p in paths)


def test_a_rejected_program_reports_the_verifier_log():
    from minictr.errors import RuntimeSetupError
    from minictr.runtime.syscalls import Syscalls

    exit_without_r0 = bpf_devices.insn(bpf_devices.JMP_EXIT)
    with pytest.raises(RuntimeSetupError, match="verifier log: .*R0 !read_ok") as info:
        bpf_devices.load_program(Syscalls(), exit_without_r0)
    assert "\n" not in str(info.value)
