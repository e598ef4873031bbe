"""The named images: each function builds its trees in a temp dir and writes one tagged image
into an OCI layout. All are reproducible (fixed owners and mtimes, sorted entries): building twice
gives the same digests, so a store shares the busybox base layer of the probe and demo images."""
from __future__ import annotations

import os
import tempfile

from . import debootstrap, rootfs
from .oci import Descriptor, ImageConfig, Layout
from .tarball import Normalize

EPOCH = 0                                       # mtime of every entry in the named images
BASE_NORM = Normalize(owner=(0, 0), owners=rootfs.BASE_OWNERS, mtime=EPOCH)


def _tree(tmp: str, name: str) -> str:
    path = os.path.join(tmp, name)
    os.mkdir(path)
    return path


def _busybox_layer(layout: Layout, tmp: str, compression: str):
    root = _tree(tmp, "busybox")
    rootfs.busybox_tree(root)
    return layout.add_layer_from_dir(root, compression=compression, norm=BASE_NORM)


def busybox(out: str, *, tag: str = "latest", compression: str = "gzip",
            cmd: list[str] | None = None) -> Descriptor:
    """busybox-static with its applets, /etc/passwd (root, app 1000, nobody), /tmp 1777."""
    layout = Layout(out)
    with tempfile.TemporaryDirectory() as tmp:
        base = _busybox_layer(layout, tmp, compression)
    return layout.add_image([base], ImageConfig(cmd=cmd or ["sh"]), tag,
                            history=["busybox-static applets and /etc"])


def _busybox_plus(out: str, name: str, fill, config: ImageConfig, history: str, *, tag: str,
                  compression: str) -> Descriptor:
    """The busybox layer plus a second layer that ``fill(root)`` makes."""
    layout = Layout(out)
    with tempfile.TemporaryDirectory() as tmp:
        base = _busybox_layer(layout, tmp, compression)
        root = _tree(tmp, name)
        fill(root)
        top = layout.add_layer_from_dir(root, compression=compression, norm=BASE_NORM)
    return layout.add_image([base, top], config, tag,
                            history=["busybox-static applets and /etc", history])


def probe(out: str, *, tag: str = "latest", compression: str = "gzip") -> Descriptor:
    """busybox plus /probe (a second layer); the default command runs the probe."""
    return _busybox_plus(out, "probe", rootfs.probe_tree, ImageConfig(cmd=["/probe"]),
                         "the probe", tag=tag, compression=compression)


def demo(out: str, *, tag: str = "latest", compression: str = "gzip") -> Descriptor:
    """busybox plus /demo.sh, the tour ``make run`` shows."""
    config = ImageConfig(cmd=["/demo.sh"],
                         labels={"org.opencontainers.image.title": "minictr demo"})
    return _busybox_plus(out, "demo", rootfs.demo_tree, config, "/demo.sh", tag=tag,
                         compression=compression)


def host_binaries(out: str, binaries: list[str], *, tag: str = "latest",
                  compression: str = "gzip", cmd: list[str] | None = None) -> Descriptor:
    """Host binaries with their loader and libraries at the host's paths (a glibc image)."""
    layout = Layout(out)
    with tempfile.TemporaryDirectory() as tmp:
        root = _tree(tmp, "rootfs")
        rootfs.host_binaries_tree(root, binaries)
        layer = layout.add_layer_from_dir(root, compression=compression, norm=BASE_NORM)
        default_cmd = ["/bin/sh"] if os.path.lexists(os.path.join(root, "bin/sh")) else None
    config = ImageConfig(cmd=cmd or default_cmd)
    return layout.add_image([layer], config, tag, history=["host binaries " + " ".join(binaries)])


def from_dir(out: str, directory: str, config: ImageConfig, *, tag: str = "latest",
             compression: str = "gzip", norm: Normalize = Normalize()) -> Descriptor:
    layout = Layout(out)
    layer = layout.add_layer_from_dir(directory, compression=compression, norm=norm)
    return layout.add_image([layer], config, tag, history=[f"from {directory}"])


def debian(out: str, *, tag: str = "latest", layers: int = 1, compression: str = "gzip",
           mirror: str | None = None, log=None) -> Descriptor:
    layout = Layout(out)
    blobs = debootstrap.debootstrap_layers(layout, layers=layers, mirror=mirror,
                                           compression=compression, log=log)
    history = [f"debootstrap minbase part {i + 1}" for i in range(len(blobs))]
    if layers > 1:
        history[-1] = "whiteouts: documentation removed"
    return layout.add_image(blobs, ImageConfig(cmd=["bash"]), tag, history=history)
