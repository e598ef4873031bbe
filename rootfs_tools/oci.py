"""Write OCI image layouts, oci-archives and docker-archives (image-spec ``image-layout.md``).

A layout is a directory::

    oci-layout                     {"imageLayoutVersion": "1.0.0"}
    index.json                     an image index; each manifest descriptor names its tag in the
                                   annotation org.opencontainers.image.ref.name
    blobs/sha256/<hex>             content-addressed blobs: layers, configs, manifests

index.json -> manifest (``manifest.md``) -> config (``config.md``) and layers. The config lists
each layer's DiffID (sha256 of the *uncompressed* tar) in ``rootfs.diff_ids``; the manifest lists
each layer's blob digest (sha256 of the *compressed* bytes). A reader verifies both.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field

from . import ToolError
from .tarball import (CompressingWriter, Normalize, TarBuilder, add_tree, changeset, tar_tree,
                      walk_tree)

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}
REF_NAME = "org.opencontainers.image.ref.name"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# GOARCH names, which image-spec config.md uses for "architecture"
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
           "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def host_architecture() -> str:
    machine = platform.machine()
    try:
        return _GOARCH[machine]
    except KeyError:
        raise ToolError(f"no OCI architecture name known for this machine ({machine})") from None


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor (image-spec ``descriptor.md``)."""

    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class LayerBlob(Descriptor):
    diff_id: str = ""


@dataclass
class ImageConfig:
    """The parts of an image config (image-spec ``config.md``) a caller chooses."""

    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    env: list[str] = field(default_factory=lambda: [f"PATH={DEFAULT_PATH}"])
    working_dir: str | None = None
    user: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    architecture: str = field(default_factory=host_architecture)
    os: str = "linux"
    created: str | None = None          # RFC 3339; None keeps the image reproducible

    def to_json(self, diff_ids: list[str], history: list[str]) -> dict:
        config: dict = {"Env": list(self.env)}
        for key, value in (("Entrypoint", self.entrypoint), ("Cmd", self.cmd),
                           ("WorkingDir", self.working_dir), ("User", self.user)):
            if value is not None:
                config[key] = value
        if self.labels:
            config["Labels"] = dict(self.labels)
        doc: dict = {"architecture": self.architecture, "os": self.os, "config": config,
                     "rootfs": {"type": "layers", "diff_ids": diff_ids},
                     "history": [{"created_by": h} for h in history]}
        if self.created:
            doc["created"] = self.created
        return doc


def canonical_json(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _temp_file(directory: str) -> tuple[int, str]:
    """mkstemp(3) makes 0600 files; layouts must be readable by the unprivileged users that
    rootless tests run as."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    os.fchmod(fd, 0o644)
    return fd, tmp


def _atomic_write(path: str, data: bytes) -> None:
    fd, tmp = _temp_file(os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class Layout:
    """An OCI image layout directory being written. Blobs appear atomically (temp + rename);
    index.json is rewritten atomically. Two processes adding tags to the same layout at the same
    time may lose one tag: give each its own layout (tests/images.py does)."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.blobs = os.path.join(self.path, "blobs", "sha256")
        os.makedirs(self.blobs, exist_ok=True)
        marker = os.path.join(self.path, "oci-layout")
        if not os.path.exists(marker):
            _atomic_write(marker, canonical_json({"imageLayoutVersion": "1.0.0"}))

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.blobs, digest.split(":", 1)[1])

    def write_blob(self, data: bytes, media_type: str) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not os.path.exists(self.blob_path(digest)):
            _atomic_write(self.blob_path(digest), data)
        return Descriptor(media_type, digest, len(data))

    def _layer(self, write_tar, compression: str) -> LayerBlob:
        """Stream a tar through ``CompressingWriter`` into a temp blob, then name it by digest."""
        fd, tmp = _temp_file(self.blobs)
        try:
            with os.fdopen(fd, "wb") as out:
                sink = CompressingWriter(out, compression)
                write_tar(sink)
                diff_id, digest, size = sink.finish()
            os.replace(tmp, self.blob_path(digest))
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return LayerBlob(MEDIA_LAYER[compression], digest, size, diff_id)

    def add_layer_from_dir(self, root: str, *, compression: str = "gzip",
                           norm: Normalize = Normalize(), paths: Iterable[str] | None = None,
                           exclude: Iterable[str] = ()) -> LayerBlob:
        """A layer holding the tree at ``root`` (or only ``paths`` below it, in that order)."""
        if not os.path.isdir(root):
            raise ToolError(f"layer source {root} is not a directory")
        chosen = list(walk_tree(root, exclude=exclude)) if paths is None else list(paths)

        def write(sink):
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                add_tree(tf, root, chosen, norm)
        return self._layer(write, compression)

    def add_layer_from_tar(self, source, *, compression: str = "gzip") -> LayerBlob:
        """A layer from an uncompressed tar: ``bytes``, a ``TarBuilder``, a path or a stream."""
        if isinstance(source, TarBuilder):
            return self._layer(source.write_to, compression)
        if isinstance(source, (bytes, bytearray)):
            source = io.BytesIO(source)
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                return self.add_layer_from_tar(f, compression=compression)

        def write(sink):
            while chunk := source.read(1 << 20):
                sink.write(chunk)
        return self._layer(write, compression)

    def add_whiteout_layer(self, *, deleted: Iterable[str] = (), opaque: Iterable[str] = (),
                           files: dict[str, bytes] | None = None,
                           compression: str = "gzip") -> LayerBlob:
        """A layer that deletes paths of the layers below (``.wh.NAME``), hides directories'
        contents (``.wh..wh..opq``) and adds ``files`` (see ``tarball.changeset``)."""
        return self.add_layer_from_tar(changeset(deleted=deleted, opaque=opaque, files=files),
                                       compression=compression)

    def add_layer(self, source, *, compression: str = "gzip",
                  norm: Normalize = Normalize()) -> LayerBlob:
        """A directory path becomes a tree layer; anything else is read as a tar."""
        if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
            return self.add_layer_from_dir(os.fspath(source), compression=compression, norm=norm)
        return self.add_layer_from_tar(source, compression=compression)

    def add_image(self, layers: list[LayerBlob], config: ImageConfig, tag: str,
                  history: list[str] | None = None) -> Descriptor:
        """Write the config and manifest blobs and point ``tag`` in index.json at the manifest."""
        history = history or [f"rootfs_tools layer {i}" for i in range(len(layers))]
        cfg = self.write_blob(canonical_json(config.to_json([l.diff_id for l in layers], history)),
                              MEDIA_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": cfg.to_json(),
                    "layers": [l.to_json() for l in layers]}
        desc = self.write_blob(canonical_json(manifest), MEDIA_MANIFEST)
        self._tag(desc, tag, config)
        return desc

    def _tag(self, desc: Descriptor, tag: str, config: ImageConfig) -> None:
        index_path = os.path.join(self.path, "index.json")
        index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": []}
        if os.path.exists(index_path):
            with open(index_path, "rb") as f:
                index = json.load(f)
        kept = [m for m in index.get("manifests", [])
                if m.get("annotations", {}).get(REF_NAME) != tag]
        entry = desc.to_json()
        entry["platform"] = {"architecture": config.architecture, "os": config.os}
        entry["annotations"] = {REF_NAME: tag}
        index["manifests"] = kept + [entry]
        _atomic_write(index_path, json.dumps(index, indent=2).encode() + b"\n")


def write_image(out: str, layers: list, config: ImageConfig, *, tag: str = "latest",
                compression: str = "gzip", norm: Normalize = Normalize()) -> Descriptor:
    """Write one image into the layout ``out`` (created if needed). Each item of ``layers`` is a
    directory, a tar path, tar bytes or a ``TarBuilder``."""
    layout = Layout(out)
    blobs = [layout.add_layer(src, compression=compression, norm=norm) for src in layers]
    return layout.add_image(blobs, config, tag)


def write_archive(layout_dir: str, archive: str) -> None:
    """Write an oci-archive: the layout directory as a plain tar (what ``oci-archive:`` in skopeo
    and podman reads). Written to a temp name, then renamed."""
    fd, tmp = _temp_file(os.path.dirname(os.path.abspath(archive)))
    try:
        with os.fdopen(fd, "wb") as out:
            tar_tree(out, layout_dir, paths=[p for p in walk_tree(layout_dir)
                                             if not os.path.basename(p).startswith(".tmp-")],
                     norm=Normalize(owner=(0, 0), mtime=0))
        os.replace(tmp, archive)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_docker_archive(layout_dir: str, archive: str, repo_tags: list[str], *,
                         tag: str = "latest") -> None:
    """Write the image tagged ``tag`` in a layout as a classic ``docker save`` tar (what
    ``docker load`` before Docker 25 and ``podman load`` read): ``manifest.json`` =
    ``[{Config, RepoTags, Layers}]``, the config as ``<hex>.json`` and each layer blob as
    ``<hex>/layer.tar``. Layers stay compressed (both loaders decompress); the names in
    ``repo_tags`` (``registry/name:tag``) become the loaded image's names."""
    layout = Layout(layout_dir)
    entries = [m for m in read_index(layout_dir).get("manifests", [])
               if m.get("annotations", {}).get(REF_NAME) == tag]
    if len(entries) != 1:
        raise ToolError(f"{layout_dir}: {len(entries)} manifests are tagged {tag!r}, not one")
    with open(layout.blob_path(entries[0]["digest"]), "rb") as f:
        manifest = json.load(f)
    config_hex = manifest["config"]["digest"].split(":", 1)[1]
    members = [(f"{config_hex}.json", layout.blob_path(manifest["config"]["digest"]))]
    layer_names = []
    for layer in manifest["layers"]:
        hexd = layer["digest"].split(":", 1)[1]
        layer_names.append(f"{hexd}/layer.tar")
        members.append((layer_names[-1], layout.blob_path(layer["digest"])))
    index = canonical_json([{"Config": f"{config_hex}.json", "RepoTags": list(repo_tags),
                             "Layers": layer_names}])
    fd, tmp = _temp_file(os.path.dirname(os.path.abspath(archive)))
    try:
        with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w|",
                                                      format=tarfile.PAX_FORMAT) as tf:
            for name in sorted({n.split("/")[0] for n, _ in members if "/" in n}):
                info = tarfile.TarInfo(name)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            for name, path in members:
                info = tarfile.TarInfo(name)
                info.size, info.mode = os.path.getsize(path), 0o644
                with open(path, "rb") as f:
                    tf.addfile(info, f)
            info = tarfile.TarInfo("manifest.json")
            info.size, info.mode = len(index), 0o644
            tf.addfile(info, io.BytesIO(index))
        os.replace(tmp, archive)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_index(layout_dir: str) -> dict:
    with open(os.path.join(layout_dir, "index.json"), "rb") as f:
        return json.load(f)
