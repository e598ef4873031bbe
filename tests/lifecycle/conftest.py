"""Lifecycle tier: the runc-compatible command driven as engines drive it, with what the OCI
runtime-tools validation suite checks (reference/OCI-RUNTIME.md §6). Each test runs against
minictr-runc and, where it is installed, against runc itself, so a difference shows.

The test process makes itself a child subreaper (prctl(2) PR_SET_CHILD_SUBREAPER), as conmon
and containerd's shim are: a container's first process, orphaned when `create` exits, is
re-parented to it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading

import prctl
import pytest

from rootfs_tools import rootfs as rootfs_tools

pytestmark = pytest.mark.root


class Runtime:
    """One OCI runtime command with a private state root."""

    def __init__(self, name: str, exe: str, root: str):
        self.name, self.exe, self.root = name, exe, root

    def argv(self, *args) -> list[str]:
        return [self.exe, "--root", self.root, *args]

    def popen(self, *args, **kw) -> subprocess.Popen:
        """Start the runtime; the reaper leaves its exit status to us."""
        with _OWN_LOCK:
            proc = subprocess.Popen(self.argv(*args), **kw)
            _OWN.add(proc.pid)
        return proc

    def __call__(self, *args, check=False, timeout=60, **kw):
        import tempfile

        out = None
        if _detaches(args) and "stdout" not in kw and "capture_output" not in kw:
            # The container's process keeps the stdio create gave it: a captured pipe would
            # not reach EOF before the container exits. Engines pass files or FIFOs; so do we.
            out = tempfile.TemporaryFile("w+")
            kw.update(stdout=out, stderr=out)
        elif "capture_output" not in kw and "stdout" not in kw:
            kw.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        kw.pop("capture_output", None)
        proc = self.popen(*args, text=True, **kw)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        finally:
            proc.kill()
            proc.wait()
            _OWN.discard(proc.pid)
        if out is not None:
            out.seek(0)
            stdout, stderr = "", out.read()
            out.close()
        res = subprocess.CompletedProcess(proc.args, proc.returncode, stdout or "", stderr or "")
        if check and res.returncode != 0:
            raise AssertionError(f"{self.name} {args} exited {res.returncode}:\n"
                                 f"{res.stdout}\n{res.stderr}")
        return res

    def state(self, cid: str) -> dict:
        res = self("state", cid, check=True)
        return json.loads(res.stdout)


def _detaches(args) -> bool:
    return bool(args) and (args[0] == "create" or (args[0] in ("run", "exec") and (
        "-d" in args or "--detach" in args)))


def _runtimes() -> list[tuple[str, str | None]]:
    ours = os.path.join(os.path.dirname(sys.executable), "minictr-runc")
    return [("minictr-runc", ours if os.path.exists(ours) else None),
            ("runc", shutil.which("runc"))]


@pytest.fixture(params=[name for name, _ in _runtimes()])
def runtime(request, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    exe = dict(_runtimes())[request.param]
    if exe is None:
        pytest.skip(f"{request.param} is not installed")
    root = tmp_path / "state"
    rt = Runtime(request.param, exe, str(root))
    yield rt
    for cid in (os.listdir(root) if root.exists() else []):
        if not cid.startswith(".") and cid != "names":
            rt("delete", "--force", cid)


_OWN: set[int] = set()              # runtime commands we wait for ourselves
_OWN_LOCK = threading.Lock()


@pytest.fixture(autouse=True, scope="package")
def subreaper():
    """Adopt and reap orphans promptly, as conmon and the shim do (runc's delete waits for the
    first process to be gone, a zombie included). Package scope: it reaps any zombie child of
    the test process, so it must end with this tier, or later tiers' Popen.wait() gets ECHILD
    and reads it as status 0."""
    prctl.set_child_subreaper(1)
    stop = threading.Event()
    thread = threading.Thread(target=_reap_loop, args=(stop,), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()
    prctl.set_child_subreaper(0)
    reap()


def _reap_loop(stop: threading.Event) -> None:
    while not stop.wait(0.02):
        reap()


def reap() -> None:
    """Reap the zombies among our children that are not runtime commands we wait for: the
    container processes re-parented to us."""
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and fields[1] == me:
            with _OWN_LOCK:
                if int(entry) in _OWN:
                    continue
                try:
                    os.waitpid(int(entry), os.WNOHANG)
                except ChildProcessError:
                    pass


@pytest.fixture
def bundle(tmp_path):
    """A bundle as `runc spec` makes it, around a busybox rootfs; tests edit config.json."""
    b = tmp_path / "bundle"
    root = b / "rootfs"
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev"):
        (root / d).mkdir(parents=True)
    try:
        rootfs_tools.add_busybox(str(root))
    except rootfs_tools.ToolMissing as err:
        pytest.skip(f"needs busybox-static: {err}")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    from minictr import bundles

    spec = bundles.spec_template()
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["sleep", "1000"]
    (b / "config.json").write_text(json.dumps(spec, indent=2))
    return Bundle(b)


class Bundle:
    def __init__(self, path):
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    @property
    def spec(self) -> dict:
        return json.loads((self.path / "config.json").read_text())

    def edit(self, change) -> None:
        spec = self.spec
        change(spec)
        (self.path / "config.json").write_text(json.dumps(spec, indent=2))

    def command(self, *args: str) -> None:
        self.edit(lambda s: s["process"].__setitem__("args", list(args)))
