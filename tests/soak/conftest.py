"""The soak tier (tests/soak/README.md): many runs, loads and kills, counting what they leave."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests import images
from tests.soak.census import Census

RUNS = int(os.environ.get("MINICTR_SOAK_RUNS", "100"))
LISTING = ("find / -xdev -type f ! -path /etc/hosts ! -path /etc/hostname "
           "! -path /etc/resolv.conf -exec sha256sum {} + | sort -k 2; "
           "find / -xdev ! -type f | sort")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/soak/" in str(item.fspath):
            item.add_marker(pytest.mark.soak)


class Soak:
    """The CLI against a private store, state dir, $TMPDIR and cgroup parent."""

    def __init__(self, exe: str, base: str):
        self.exe, self.base = exe, base
        self.root, self.state = os.path.join(base, "store"), os.path.join(base, "state")
        self.tmpdir = os.path.join(base, "tmp")
        os.makedirs(self.tmpdir, exist_ok=True)
        self.marker = f"minictr-soak-{os.getpid()}"
        self.cgroup_parent = self.marker
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("MINICTR_")},
                    "MINICTR_ROOT": self.root, "MINICTR_STATE": self.state,
                    "TMPDIR": self.tmpdir}

    def cmd(self, *args) -> list[str]:
        return [self.exe, *args]

    def __call__(self, *args, check=False, env=None, timeout=120, **kw):
        res = subprocess.run(self.cmd(*args), capture_output=True, text=True, timeout=timeout,
                             env={**self.env, **(env or {})}, stdin=subprocess.DEVNULL, **kw)
        if check and res.returncode:
            raise AssertionError(f"minictr {' '.join(args)} exited {res.returncode}:\n"
                                 f"{res.stdout}\n{res.stderr}")
        return res

    def popen(self, *args, env=None, **kw):
        return subprocess.Popen(self.cmd(*args), env={**self.env, **(env or {})},
                                stdin=subprocess.DEVNULL, **kw)

    def census(self) -> Census:
        return Census(self.root, self.state, self.tmpdir, self.marker, self.cgroup_parent)

    def listing(self, image: str) -> str:
        """Every file of ``image`` as a container sees it, with sha256 sums."""
        res = self("run", "--rm", image, "sh", "-c", LISTING, check=True)
        return res.stdout


@pytest.fixture(scope="module")
def soak(minictr_exe, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root (containers with cgroups, device filters and limits)")
    s = Soak(minictr_exe, str(tmp_path_factory.mktemp("soak")))
    yield s
    top = "/sys/fs/cgroup"          # the parent dirs the runs made (v1 controllers, unified/)
    # a relative parent is made below the launcher's own cgroup of each hierarchy, which is
    # not always the root (this CI's memory cgroup is /process_api/...)
    with open("/proc/self/cgroup") as f:
        own = {line.split(":", 2)[2].strip("/") for line in f.read().splitlines()}
    for ctl in [*os.listdir(top), "."] if os.path.isdir(top) else ():
        for base in sorted(own | {""}):
            path = os.path.join(top, ctl, base, s.cgroup_parent)
            if os.path.isdir(path):
                try:
                    os.rmdir(path)
                except OSError:
                    pass            # not empty: a leak, which the tests report


@pytest.fixture(scope="module")
def image_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def busybox(image_cache):
    return images.build_busybox(image_cache)


@pytest.fixture(scope="module")
def chaos_layout(image_cache):
    return build_chaos_layout(image_cache)


def build_chaos_layout(image_cache: str) -> str:
    """busybox plus three layers worth killing a load or pull in: 24 MiB of random files (zstd,
    so the layers stay that size), a layer deleting one and replacing another (whiteouts), and
    one of hardlinks and symlinks into the lower layers. Tagged "latest"."""
    import json
    import random

    from rootfs_tools.oci import ImageConfig, LayerBlob, Layout
    from rootfs_tools.tarball import TarBuilder

    path = os.path.join(image_cache, "chaos")
    if os.path.isdir(path):
        return path
    base = images.build_busybox(image_cache)
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base.path, tmp)
    layout = Layout(tmp)
    rng = random.Random(13)
    big = TarBuilder().dir("data")
    for i in range(6):
        big.file(f"data/blob{i}", rng.randbytes(4 << 20))
    changes = TarBuilder().dir("data").whiteout("data/blob0").file("data/blob1", b"replaced\n")
    links = TarBuilder().dir("links").hardlink("links/hard2", "data/blob2") \
        .symlink("links/soft3", "../data/blob3").file("links/small", b"small\n", 0o600)
    with open(os.path.join(tmp, "index.json")) as f:
        manifest_desc = json.load(f)["manifests"][0]
    with open(layout.blob_path(manifest_desc["digest"])) as f:
        manifest = json.load(f)
    with open(layout.blob_path(manifest["config"]["digest"])) as f:
        diff_ids = json.load(f)["rootfs"]["diff_ids"]
    lower = [LayerBlob(l["mediaType"], l["digest"], l["size"], d)
             for l, d in zip(manifest["layers"], diff_ids)]
    layers = lower + [layout.add_layer_from_tar(t, compression="zstd")
                      for t in (big, changes, links)]
    layout.add_image(layers, ImageConfig(cmd=["sh"]), "latest")
    os.rename(tmp, path)
    return path


@pytest.fixture(scope="module")
def churn_layout(image_cache):
    """An image no other image shares a layer with (three layers of 2 MiB, uncompressed):
    once its name is removed, gc may take all its layers."""
    from tests.unit import imagefactory as f

    path = os.path.join(image_cache, "churn")
    if not os.path.isdir(path):
        rng = __import__("random").Random(7)
        image = f.make_image([[("file", f"layer{i}/data", rng.randbytes(2 << 20))]
                              for i in range(3)], compression=None)
        f.write_layout(path, [(image, {"annotations": {
            "org.opencontainers.image.ref.name": "latest"}})])
    return path


@pytest.fixture(scope="module")
def fake_driver(tmp_path_factory):
    if not shutil.which("gcc"):
        pytest.skip("needs gcc to build the fake NVIDIA driver's libraries")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "gpu"))
    import fakedriver

    return fakedriver.build(str(tmp_path_factory.mktemp("fake-driver")), stale=False)
