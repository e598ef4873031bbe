"""The compiled default filter, loaded by this kernel: first with minictr's own
``seccomp.load`` in a forked child (no container runtime involved), then by runc from a
config.json carrying minictr's ``linux.seccomp``. The same static probe runs in both and makes
the same raw system calls; the results must be the filter's, and differ from a run without it.
"""
import errno
import json
import os
import shutil
import subprocess

import pytest

from minictr.runtime import seccomp
from minictr.runtime.syscalls import Syscalls
from minictr.spec import defaults
from minictr.spec.seccomp import resolve_profile
from minictr.spec.seccomp_default import DEFAULT_PROFILE

pytestmark = pytest.mark.root

if os.geteuid() != 0:
    pytest.skip("needs root (runc; unshare(CLONE_NEWUSER) as a baseline)", allow_module_level=True)
if os.uname().machine != "x86_64":
    pytest.skip("the probe's syscall numbers are x86-64's", allow_module_level=True)

_, LIB = seccomp._libseccomp()
HERE = os.path.dirname(__file__)
AF_INET, AF_ALG, AF_VSOCK, SOCK_STREAM, SOCK_SEQPACKET = 2, 38, 40, 1, 5
CLONE_NEWUSER = 0x10000000


def nr(name: str) -> int:
    return LIB.seccomp_syscall_resolve_name_arch(LIB.SCMP_ARCH_X86_64, name.encode())


def default_spec(caps=defaults.DEFAULT_CAPABILITIES) -> dict:
    return resolve_profile(DEFAULT_PROFILE, caps=caps)


@pytest.fixture(scope="module")
def compiled():
    return seccomp.compile_filter(default_spec())


def checks(compiled) -> dict[str, tuple[str, int]]:
    """name -> (the probe's NAME=NR,ARGS..., the errno expected under the filter; 0 = works)."""
    newer = dict(compiled.enosys_above)[LIB.SCMP_ARCH_X86_64] + 1
    table = {
        "getpid": ([nr("getpid")], 0),
        "socket_inet": ([nr("socket"), AF_INET, SOCK_STREAM, 0], 0),
        "socket_alg": ([nr("socket"), AF_ALG, SOCK_SEQPACKET, 0], errno.EPERM),
        "socket_vsock": ([nr("socket"), AF_VSOCK, SOCK_STREAM, 0], errno.EPERM),
        "io_uring_setup": ([nr("io_uring_setup"), 1, 0], errno.EPERM),
        "perf_event_open": ([nr("perf_event_open"), 0, 0, -1 & 0xFFFFFFFF, -1 & 0xFFFFFFFF, 0],
                            errno.EPERM),
        "add_key": ([nr("add_key"), 0, 0, 0, 0, 0], errno.EPERM),
        "keyctl": ([nr("keyctl"), 0, 0], errno.EPERM),
        "request_key": ([nr("request_key"), 0, 0, 0, 0], errno.EPERM),
        "unshare_user": ([nr("unshare"), CLONE_NEWUSER], errno.EPERM),
        "clone3": ([nr("clone3"), 0, 0], errno.ENOSYS),
        "newer_than_profile": ([newer, 0, 0, 0, 0], errno.ENOSYS),
    }
    return {name: (f"{name}=" + ",".join(str(a) for a in args), want)
            for name, (args, want) in table.items()}


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> str:
    if not shutil.which("gcc"):
        pytest.skip("gcc not found (apt-get install gcc libc6-dev)")
    out = str(tmp_path_factory.mktemp("probe") / "seccomp_probe")
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", out,
                    os.path.join(HERE, "seccomp_probe.c")], check=True, capture_output=True)
    return out


def parse(stdout: str) -> dict[str, int]:
    return {name: int(value) for name, value in (line.split() for line in stdout.splitlines())}


def run_in_child(probe: str, argv: list[str], compiled=None) -> dict[str, int]:
    """fork; in the child set no_new_privs, load the filter (if any) with seccomp.load, and
    exec the probe: the filter is inherited across execve(2)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(w, 1)
            kernel = Syscalls()
            kernel.set_no_new_privs()
            if compiled is not None:
                seccomp.load(kernel, compiled.bpf, compiled.flags)
            os.execv(probe, [probe, *argv])
        finally:
            os._exit(127)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return parse(out)


def test_loaded_filter_denies_and_allows(probe, compiled):
    table = checks(compiled)
    argv = [arg for arg, _ in table.values()]
    filtered = run_in_child(probe, argv, compiled)
    assert filtered == {name: want for name, (_, want) in table.items()}
    # the same calls without the filter: the denials above are the filter's doing
    baseline = run_in_child(probe, argv)
    for name in ("perf_event_open", "add_key", "unshare_user", "clone3", "newer_than_profile"):
        assert baseline[name] != filtered[name], (name, baseline[name])
    assert baseline["getpid"] == baseline["socket_inet"] == 0


def test_load_refuses_without_no_new_privs_or_cap_sys_admin(probe, compiled):
    """seccomp(2): EACCES unless no_new_privs is set or CAP_SYS_ADMIN is held."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setresuid(65534, 65534, 65534)         # no capabilities left, no no_new_privs
            seccomp.load(Syscalls(), compiled.bpf, compiled.flags)
        except seccomp.RuntimeSetupError as err:
            os.write(w, f"{err}|{err.hint}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    text = os.read(r, 4096).decode()
    os.waitpid(pid, 0)
    assert "Permission denied" in text and "no_new_privs" in text


def test_runc_enforces_the_same_linux_seccomp(probe, compiled, tmp_path):
    runc = shutil.which("runc") or "/usr/sbin/runc"
    if not os.path.exists(runc):
        pytest.skip("runc not installed (apt-get install runc)")
    from rootfs_tools import ToolMissing
    from rootfs_tools.rootfs import busybox_tree

    bundle = tmp_path / "bundle"
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True)
    try:
        busybox_tree(str(rootfs))
    except ToolMissing as err:
        pytest.skip(str(err))
    shutil.copy(probe, rootfs / "seccomp_probe")
    subprocess.run([runc, "spec"], cwd=bundle, check=True)
    config = json.loads((bundle / "config.json").read_text())
    table = checks(compiled)
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/seccomp_probe", *(arg for arg, _ in table.values())]
    # resolved for runc's own default capabilities, as dockerd would for this spec
    config["linux"]["seccomp"] = default_spec(config["process"]["capabilities"]["bounding"])
    (bundle / "config.json").write_text(json.dumps(config))
    name = f"minictr-seccomp-{os.getpid()}"
    res = subprocess.run([runc, "--root", str(tmp_path / "state"), "run", "--bundle",
                          str(bundle), name], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert parse(res.stdout) == {name: want for name, (_, want) in table.items()}
