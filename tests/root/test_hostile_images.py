"""Images that try to redirect the runtime's own mounts out of their root.

Each image is busybox plus one planted symlink. The runtime resolves every mount destination
inside the root (openat2 RESOLVE_IN_ROOT), so each symlink is followed *within* the container's
root at worst; the host's files and mount table stay untouched.
(runc CVE-2021-30465, CVE-2025-31133; reference/RUNTIME.md, "Attacks".)
"""
import os
import shutil

import pytest

from rootfs_tools import build, rootfs
from rootfs_tools.oci import ImageConfig
from tests.root.conftest import host_mounts_mentioning

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def hostile(mc, tmp_path_factory):
    """Load busybox + a planted symlink under the name hostile:NAME."""
    made = {}

    def make(name: str, links: dict[str, str]) -> str:
        if name in made:
            return made[name]
        base = tmp_path_factory.mktemp(f"hostile-{name}")
        tree = base / "rootfs"
        (tree / "bin").mkdir(parents=True)
        shutil.copy(rootfs.find_busybox(), tree / "bin" / "busybox")
        for applet in ("sh", "cat", "ls", "echo", "readlink", "mount", "grep", "wc", "true"):
            os.symlink("busybox", tree / "bin" / applet)
        for path, target in links.items():
            full = tree / path.lstrip("/")
            full.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, full)
        build.from_dir(str(base / "layout"), str(tree), ImageConfig(cmd=["sh"]), tag="latest")
        mc("load", "--tag", f"hostile:{name}", f"oci:{base / 'layout'}:latest", check=True)
        made[name] = f"hostile:{name}"
        return made[name]

    return make


# Where a misdirected mount would land on the host. Only these are compared, since other
# processes on a shared machine may mount elsewhere while a test runs.
SENSITIVE = {"/", "/tmp", "/etc", "/etc/passwd", "/etc/x", "/dev", "/proc", "/sys", "/dev/null"}


def mounts_snapshot():
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split(" ", 5)[4:5] + [line.split(" ", 2)[2]] for line in f
                      if line.split(" ", 5)[4] in SENSITIVE)


@pytest.mark.parametrize("links", [
    {"/dev": "/"},                       # /dev mounts would land on the host's /
    {"/dev": "../../../../../../tmp"},
    {"/proc": "/etc"},
    {"/sys": "/etc"},
    {"/dev/null": "/etc/passwd"},        # CVE-2025-31133: /dev/null bound over a host file
    # CVE-2025-31133 as runc met it: masking binds "/dev/null" over /proc/keys...; were it the
    # image's link, a writable sysctl would be bound there instead
    {"/dev/null": "/proc/sys/kernel/core_pattern"},
], ids=["dev-root", "dev-up-and-out", "proc-etc", "sys-etc", "devnull-passwd",
        "devnull-core-pattern"])
def test_planted_symlinks_stay_inside(mc, hostile, links):
    name = hostile("-".join(k.strip("/").replace("/", "_") + "-" + str(abs(hash(v)) % 997)
                            for k, v in links.items()), links)
    before = mounts_snapshot()
    passwd = open("/etc/passwd", "rb").read()
    res = mc("run", "--rm", name, "sh", "-c",
             "test -f /proc/self/status && test -d /sys/kernel && test -c /dev/null "
             "&& test ! -s /proc/keys && echo MOUNTS-INSIDE; true")
    # Either the runtime copes (the mount lands inside the root, where the container sees it)
    # or refuses cleanly; never a host change, never a traceback. A mount that followed the
    # link out of the root lands in the container's private mount namespace, where the host's
    # table cannot show it, and pivot_root leaves it behind: the container then lacks it.
    assert res.returncode in (0, 125), res.stderr
    assert res.returncode == 125 or "MOUNTS-INSIDE" in res.stdout, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert mounts_snapshot() == before
    assert open("/etc/passwd", "rb").read() == passwd
    assert not host_mounts_mentioning(mc.state)


def test_volume_destination_through_image_symlink(mc, hostile, tmp_path):
    # The image makes /data a symlink to /etc; -v SRC:/data/x must land in the container's /etc,
    # not in the host's.
    name = hostile("data-etc", {"/data": "/etc"})
    (tmp_path / "f").write_text("vol\n")
    before = mounts_snapshot()
    res = mc("run", "--rm", "-v", f"{tmp_path}:/data/x", name, "sh", "-c",
             "cat /etc/x/f; readlink /data")
    assert res.returncode == 0, res.stderr
    assert "vol" in res.stdout
    assert not os.path.exists("/etc/x")
    assert mounts_snapshot() == before


def test_volume_with_dotdot_is_refused(mc, tmp_path):
    res = mc("run", "--rm", "-v", f"{tmp_path}:/../../etc/evil", "busybox:test", "true")
    assert res.returncode == 125
    assert ".." in res.stderr


def test_unpacked_layers_are_out_of_other_host_users_reach(mc, image_cache):
    """An image's setuid-root files stay setuid-root in its unpacked layer. layers/ is the
    store owner's alone; with 0711 (as it once was) any local user who knows a chain ID (they
    are public) could run them on the host. A store made with the old mode is corrected at its next write."""
    import stat
    import subprocess

    layers = os.path.join(mc.root, "layers")
    assert stat.S_IMODE(os.stat(layers).st_mode) == 0o700
    os.chmod(layers, 0o711)
    from tests import images as test_images
    mc("load", "--tag", "again:test", test_images.build_busybox(image_cache).ref, check=True)
    assert stat.S_IMODE(os.stat(layers).st_mode) == 0o700
    # and so no other user gets in, even where every directory above is open to them
    entry = next(os.scandir(layers)).path
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          "/usr/bin/test", "-e", os.path.join(entry, "diff")],
                         cwd="/", capture_output=True)
    assert res.returncode != 0
