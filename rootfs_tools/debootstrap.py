"""A real Debian root filesystem from debootstrap(8), packed into one or several layers.

Used by the layer-unpack benchmark: a minbase bookworm is ~4,000 entries and 80 MB (~50 MB
gzipped), the size of a real base image; building it takes ~1.5 min. With ``layers=N`` (N >= 2)
the files are spread over N-1 layers of about equal size and a last layer deletes things with
whiteouts (documentation, an opaque /var/cache/debconf), as images built with
``RUN apt-get ... && rm -rf ...`` do. Needs root (debootstrap chroots) and the Debian mirror.
Generated images are large: never commit them.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile

from . import ToolError, ToolMissing
from .tarball import Normalize, TarBuilder, changeset, walk_tree

DEFAULT_MIRROR = "http://deb.debian.org/debian"
# deleted by the whiteout layer: whole directories made opaque / single paths whited out
OPAQUE_DIRS = ("usr/share/doc", "var/cache/debconf")
WHITED_OUT = ("usr/share/man", "usr/share/info", "usr/share/locale")


def _sources_entries(text: str, deb822: bool) -> list[tuple[str, list[str]]]:
    """(uri, suites) for each binary ("deb") source in a sources file (sources.list(5))."""
    out = []
    if deb822:
        for stanza in text.split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    k, _, v = line.partition(":")
                    fields[k.strip().lower()] = v.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                suites = fields.get("suites", "").split()
                out += [(uri, suites) for uri in fields.get("uris", "").split()]
    else:
        for line in text.splitlines():
            words = [w for w in line.split("#", 1)[0].split() if not w.startswith("[")]
            if len(words) >= 3 and words[0] == "deb":
                out.append((words[1], [words[2]]))
    return out


def find_mirror(suite: str = "bookworm", apt_dir: str = "/etc/apt") -> str:
    """The first configured mirror that carries ``suite`` itself (not -security/-updates)."""
    files = [os.path.join(apt_dir, "sources.list")]
    files += sorted(glob.glob(os.path.join(apt_dir, "sources.list.d", "*.list")))
    files += sorted(glob.glob(os.path.join(apt_dir, "sources.list.d", "*.sources")))
    for path in files:
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        for uri, suites in _sources_entries(text, path.endswith(".sources")):
            if suite in suites:
                return uri
    return DEFAULT_MIRROR


def run_debootstrap(target: str, *, suite: str = "bookworm", variant: str = "minbase",
                    mirror: str | None = None, log=None) -> None:
    if not shutil.which("debootstrap"):
        raise ToolMissing("debootstrap not found", hint="apt-get install debootstrap")
    if os.geteuid() != 0:
        raise ToolError("debootstrap needs root (it chroots into the new tree)")
    cmd = ["debootstrap", f"--variant={variant}", suite, target, mirror or find_mirror(suite)]
    done = subprocess.run(cmd, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise ToolError(f"{' '.join(cmd)} failed with status {done.returncode}",
                        hint="see debootstrap/debootstrap.log in the target")


def clean_tree(root: str) -> None:
    """Remove what an image must not carry: /dev, /proc, /sys contents (the runtime provides
    them), downloaded packages and apt lists."""
    for rel in ("dev", "proc", "sys", "var/cache/apt/archives", "var/lib/apt/lists", "run"):
        path = os.path.join(root, rel)
        if os.path.isdir(path) and not os.path.islink(path):
            for entry in os.listdir(path):
                full = os.path.join(path, entry)
                if os.path.isdir(full) and not os.path.islink(full):
                    shutil.rmtree(full)
                else:
                    os.unlink(full)


def split_paths(root: str, parts: int) -> list[list[str]]:
    """Spread the tree over ``parts`` lists of about equal byte size, in walk order. A layer
    needs every parent directory of its entries, so each list repeats the parents it needs."""
    paths = list(walk_tree(root))
    sizes = [os.lstat(os.path.join(root, p)).st_size for p in paths]
    per_part = sum(sizes) // parts + 1
    groups: list[list[str]] = [[] for _ in range(parts)]
    included: list[set[str]] = [set() for _ in range(parts)]
    done = 0
    for rel, size in zip(paths, sizes):
        index = min(parts - 1, done // per_part)
        for parent in _missing_parents(rel, included[index]) + [rel]:
            groups[index].append(parent)
            included[index].add(parent)
        done += size
    return groups


def _missing_parents(rel: str, have: set[str]) -> list[str]:
    """Ancestors of ``rel`` not in ``have``, outermost first."""
    missing = []
    parent = os.path.dirname(rel)
    while parent and parent not in have:
        missing.append(parent)
        parent = os.path.dirname(parent)
    return missing[::-1]


def whiteout_layer(root: str) -> TarBuilder:
    """Delete documentation from the final filesystem with opaque markers and whiteouts, and
    add one new file so the layer also adds something."""
    return changeset(
        opaque=[rel for rel in OPAQUE_DIRS if os.path.isdir(os.path.join(root, rel))],
        deleted=[rel for rel in WHITED_OUT if os.path.lexists(os.path.join(root, rel))],
        files={"etc/minictr-bench": b"built by rootfs_tools debootstrap --layers\n"})


def debootstrap_layers(out_layout, *, layers: int = 1, mirror: str | None = None,
                       compression: str = "gzip", log=None, workdir: str | None = None):
    """Run debootstrap into a temp dir and add its layers to the ``oci.Layout`` given."""
    with tempfile.TemporaryDirectory(dir=workdir, prefix="debootstrap-") as tmp:
        root = os.path.join(tmp, "rootfs")
        run_debootstrap(root, mirror=mirror, log=log)
        clean_tree(root)
        norm = Normalize(owner=None)            # keep the owners dpkg set
        if layers <= 1:
            return [out_layout.add_layer_from_dir(root, compression=compression, norm=norm)]
        blobs = [out_layout.add_layer_from_dir(root, compression=compression, norm=norm, paths=p)
                 for p in split_paths(root, layers - 1)]
        blobs.append(out_layout.add_layer_from_tar(whiteout_layer(root), compression=compression))
        return blobs
