"""Small OCI images built in tests: layers as tar bytes, OCI layouts, oci-archives and
docker-archives (classic and Docker >= 25 forms). Deterministic: same input, same digests."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field

import zstandard

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
               None: "application/vnd.oci.image.layer.v1.tar"}


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_bytes(entries: list[tuple]) -> bytes:
    """entries: ("file", path, data[, mode]) | ("dir", path) | ("symlink", path, target) |
    ("hardlink", path, target) | ("whiteout", path) | ("opaque", dirpath)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, path, *rest in entries:
            if kind == "whiteout":
                head, base = os.path.split(path)
                kind, path, rest = "file", os.path.join(head, ".wh." + base), [b""]
            elif kind == "opaque":
                kind, path, rest = "file", os.path.join(path, ".wh..wh..opq"), [b""]
            info = tarfile.TarInfo(path)
            info.mtime = 0
            data = None
            if kind == "file":
                data = rest[0] if isinstance(rest[0], bytes) else rest[0].encode()
                info.size = len(data)
                info.mode = rest[1] if len(rest) > 1 else 0o644
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, rest[0], 0o777
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, rest[0]
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def compress(data: bytes, compression: str | None) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


@dataclass
class Image:
    manifest: bytes
    config: bytes
    blobs: dict[str, bytes] = field(default_factory=dict)    # digest -> bytes (all of them)
    layer_tars: list[bytes] = field(default_factory=list)    # uncompressed, bottom first

    @property
    def manifest_digest(self) -> str:
        return digest_of(self.manifest)

    @property
    def config_digest(self) -> str:
        return digest_of(self.config)

    @property
    def layer_digests(self) -> list[str]:
        return [l["digest"] for l in json.loads(self.manifest)["layers"]]


def make_image(layers: list[list[tuple]], compression: str | None = "gzip",
               arch: str = "amd64", config_extra: dict | None = None,
               layer_media_type: str | None = None) -> Image:
    tars = [tar_bytes(entries) for entries in layers]
    blobs = [compress(t, compression) for t in tars]
    config = {"architecture": arch, "os": "linux", "created": "2024-01-01T00:00:00Z",
              "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
              "rootfs": {"type": "layers", "diff_ids": [digest_of(t) for t in tars]}}
    config.update(config_extra or {})
    config_bytes = json.dumps(config).encode()
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config_bytes),
                           "size": len(config_bytes)},
                "layers": [{"mediaType": layer_media_type or LAYER_TYPES[compression],
                            "digest": digest_of(b), "size": len(b)} for b in blobs]}
    manifest_bytes = json.dumps(manifest).encode()
    image = Image(manifest_bytes, config_bytes, layer_tars=tars)
    for b in blobs + [config_bytes, manifest_bytes]:
        image.blobs[digest_of(b)] = b
    return image


def descriptor(data: bytes, media_type: str, **extra) -> dict:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **extra}


def write_layout(path: str, entries: list[tuple[Image, dict]], extra_blobs=(),
                 index: dict | None = None) -> str:
    """An OCI layout at ``path``: ``entries`` are (image, descriptor fields such as
    annotations/platform); the index lists each image's manifest."""
    os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(path, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    for image, _ in entries:
        for digest, data in image.blobs.items():
            write_blob(path, data)
    for data in extra_blobs:
        write_blob(path, data)
    if index is None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
                 "manifests": [descriptor(image.manifest, OCI_MANIFEST, **fields)
                               for image, fields in entries]}
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump(index, f)
    return path


def write_blob(layout: str, data: bytes) -> str:
    digest = digest_of(data)
    with open(os.path.join(layout, "blobs", "sha256", digest[7:]), "wb") as f:
        f.write(data)
    return digest


def tar_dir(src: str, dest: str) -> str:
    """An archive of the directory's content (as an oci-archive is)."""
    with tarfile.open(dest, "w") as tar:
        for name in sorted(os.listdir(src)):
            tar.add(os.path.join(src, name), arcname=name)
    return dest


def docker_archive(dest: str, images: list[tuple[Image, list[str]]], form: str = "classic") -> str:
    """A `docker save` tar. classic: <n>/layer.tar, <config hex>.json, manifest.json (repeated
    layers symlinked to their first copy, as docker does); oci: Docker >= 25, an OCI layout
    plus manifest.json whose paths point into blobs/."""
    members: dict[str, bytes] = {}
    links: dict[str, str] = {}
    manifest_json = []
    for image, tags in images:
        if form == "classic":
            config_name = image.config_digest[7:] + ".json"
            members[config_name] = image.config
            layer_names = []
            for tar in image.layer_tars:
                name = f"{digest_of(tar)[7:]}/layer.tar"
                if name in members:
                    links[f"dup{len(links)}/layer.tar"] = f"../{name}"
                    name = f"dup{len(links) - 1}/layer.tar"
                else:
                    members[name] = tar
                layer_names.append(name)
        else:
            for digest, data in image.blobs.items():
                members[f"blobs/sha256/{digest[7:]}"] = data
            config_name = f"blobs/sha256/{image.config_digest[7:]}"
            layer_names = [f"blobs/sha256/{d[7:]}" for d in image.layer_digests]
        manifest_json.append({"Config": config_name, "RepoTags": tags, "Layers": layer_names})
    if form == "oci":
        members["oci-layout"] = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
        members["index.json"] = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [descriptor(image.manifest, OCI_MANIFEST, annotations={
                "io.containerd.image.name": tags[0] if tags else "",
                "org.opencontainers.image.ref.name": tags[0].rsplit(":", 1)[1] if tags else ""})
                for image, tags in images]}).encode()
    members["manifest.json"] = json.dumps(manifest_json).encode()
    with tarfile.open(dest, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return dest


BUSYBOXISH = [
    [("dir", "bin"), ("file", "bin/sh", b"#!fake shell\n", 0o755), ("dir", "etc"),
     ("file", "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
     ("file", "etc/group", "root:x:0:\n")],
    [("file", "etc/hostname", "one\n"), ("symlink", "etc/alias", "passwd")],
]
