"""VM tier: boot a pure cgroup v2 kernel ONCE per session with virtme-ng and run
tests/vm/vm_checks.py inside it (the host's / is visible read-only, so the venv's python and
this checkout are too). Each check prints ``MINICTR-VM {json}``; the tests assert on those.

Needs qemu-system-x86_64 (apt qemu-system-x86), a kernel image (apt linux-image-amd64) and
``vng`` (pip virtme-ng, in the ``test`` extra). /dev/kvm does not work on these machines, so the
VM runs under TCG (--disable-kvm): the boot takes about a minute.
"""
import glob
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

MARK = "MINICTR-VM "
HERE = os.path.dirname(os.path.abspath(__file__))
BOOT_TIMEOUT = 420


def _vng() -> str | None:
    venv_bin = os.path.dirname(sys.executable)
    return shutil.which("vng", path=venv_bin + os.pathsep + os.environ.get("PATH", ""))


def _kernel() -> str | None:
    images = sorted(glob.glob("/boot/vmlinuz-*"))
    return images[-1] if images else None


def _missing() -> str | None:
    if not shutil.which("qemu-system-x86_64"):
        return "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)"
    if not _vng():
        return "vng not installed (pip install virtme-ng, in the test extra)"
    kernel = _kernel()
    if not kernel:
        return "no /boot/vmlinuz-* (apt-get install linux-image-amd64)"
    if not os.access(kernel, os.R_OK):
        return f"{kernel} is not readable by this user"
    if os.geteuid() != 0:
        return "the checks inside the VM run as root; run this tier as root"
    return None


def _blob(layout: str, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return f"sha256:{digest}"


def busybox_layout(dest: str) -> str | None:
    """A one-layer OCI image layout holding the static busybox as /bin/busybox and /bin/sh
    (OCI image-spec: image-layout.md, manifest.md, config.md)."""
    if not os.path.exists("/bin/busybox"):
        return None
    os.makedirs(os.path.join(dest, "blobs", "sha256"))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, kind in (("bin", tarfile.DIRTYPE), ("tmp", tarfile.DIRTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.mode = kind, 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        tar.add("/bin/busybox", "bin/busybox")
        link = tarfile.TarInfo("bin/sh")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        tar.addfile(link)
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    layer = gzip.compress(raw.getvalue(), mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _blob(dest, config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _blob(dest, layer), "size": len(layer)}]}).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": _blob(dest, manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "busybox"}}]}
    with open(os.path.join(dest, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(dest, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    return dest


@pytest.fixture(scope="session")
def vm(tmp_path_factory) -> dict:
    """Boot twice; return {check name: its report}. The tier skips only when a need is absent.

    The v1 (hybrid) checks get a kernel of their own: a controller can join a v1 hierarchy only
    while cgroup v2 does not use it, and memory cgroups that the v2 checks removed stay "dying"
    (still charged with page cache) long after, keeping the memory controller busy (EBUSY)."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("vm")
    layout = busybox_layout(str(work / "busybox-oci")) or ""
    results = _boot(work, layout)
    hybrid = _boot(work, "--hybrid")
    results.update({k: v for k, v in hybrid.items() if k.startswith("hybrid")})
    return results


def _boot(work, args: str) -> dict:
    vng = _vng()
    env = {**os.environ, "PATH": os.path.dirname(vng) + os.pathsep + os.environ.get("PATH", "")}
    command = f"{sys.executable} {os.path.join(HERE, 'vm_checks.py')} {args}"
    proc = subprocess.run(
        [vng, "--run", _kernel(), "--disable-kvm", "--cpus", "2", "--memory", "1G",
         "--exec", command],
        cwd=str(work), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=BOOT_TIMEOUT)
    output = proc.stdout + proc.stderr
    results = {}
    for line in output.splitlines():
        if line.startswith(MARK):
            record = json.loads(line[len(MARK):])
            results[record["name"]] = record
    if "done" not in results:
        pytest.fail(f"the VM checks did not finish (vng exit {proc.returncode}):\n{output[-4000:]}")
    return results
