"""Registry manifests: media types, validation, and choosing a platform from an index.

Image-spec references: manifest.md (an image manifest: ``config`` + ``layers``),
image-index.md (an index: ``manifests``, each with a ``platform``), descriptor.md (``mediaType``,
``digest``, ``size``), config.md (``rootfs.diff_ids``, ChainID). Docker's v2 schema 2 manifest
and manifest list are the same shapes under other media types.
"""
from __future__ import annotations

import hashlib
import json
import platform as _platform
import re
from dataclasses import dataclass

from minictr.errors import ImageError, RegistryError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_V1 = ("application/vnd.docker.distribution.manifest.v1+json",
             "application/vnd.docker.distribution.manifest.v1+prettyjws")
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
CONFIGS = ("application/vnd.oci.image.config.v1+json",
           "application/vnd.docker.container.image.v1+json")
LAYERS = ("application/vnd.oci.image.layer.v1.tar",
          "application/vnd.oci.image.layer.v1.tar+gzip",
          "application/vnd.oci.image.layer.v1.tar+zstd",
          "application/vnd.docker.image.rootfs.diff.tar.gzip",
          "application/vnd.docker.image.rootfs.diff.tar")
MAX_MANIFEST = 4 << 20          # containerd's limit: a bigger manifest is an attack
MAX_CONFIG = 8 << 20
DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")

# uname -m → GOARCH (and the default variant), as containerd's platforms package normalises
ARCHES = {"x86_64": ("amd64", ""), "amd64": ("amd64", ""), "aarch64": ("arm64", "v8"),
          "arm64": ("arm64", "v8"), "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
          "i686": ("386", ""), "i386": ("386", ""), "ppc64le": ("ppc64le", ""),
          "s390x": ("s390x", ""), "riscv64": ("riscv64", "")}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def host_platform(machine: str | None = None) -> Platform:
    arch, variant = ARCHES.get(machine or _platform.machine(), (machine or "", ""))
    return Platform("linux", arch, variant)


def parse_platform(text: str | None) -> Platform | None:
    """``os/arch[/variant]`` (the --platform syntax of docker and podman)."""
    if not text:
        return None
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ImageError(f"invalid platform {text!r}", hint="use os/arch[/variant], "
                         "e.g. linux/amd64 or linux/arm64/v8")
    arch, default_variant = ARCHES.get(parts[1], (parts[1], ""))
    return Platform(parts[0], arch, parts[2] if len(parts) == 3 else default_variant)


def check_digest(value, what: str) -> str:
    """Only sha256 digests are accepted: a digest becomes a file name in the store."""
    if not isinstance(value, str) or not DIGEST.match(value):
        raise RegistryError(f"{what}: invalid or unsupported digest {value!r}")
    return value


def descriptor(d, what: str) -> Descriptor:
    if not isinstance(d, dict):
        raise RegistryError(f"{what}: descriptor is not an object")
    size = d.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RegistryError(f"{what}: invalid size {size!r}")
    return Descriptor(str(d.get("mediaType", "")), check_digest(d.get("digest"), what), size)


def load(data: bytes, content_type: str, where: str) -> tuple[str, dict]:
    """Parse a manifest or index; return (kind, document) with kind "manifest" or "index".

    A document that carries both ``manifests`` and ``layers`` (or whose fields contradict its
    media type) is refused: the ambiguity let one digest mean two images (CVE-2021-41190,
    fixed in image-spec 1.0.2 by requiring mediaType and rejecting such documents)."""
    try:
        doc = json.loads(data)
    except ValueError as err:
        raise RegistryError(f"{where}: manifest is not valid JSON") from err
    if not isinstance(doc, dict):
        raise RegistryError(f"{where}: manifest is not a JSON object")
    media = doc.get("mediaType") or content_type
    if media in DOCKER_V1 or doc.get("schemaVersion") == 1:
        raise RegistryError(f"{where}: Docker schema 1 manifests are not supported",
                            hint="push the image again with a current docker, podman or skopeo")
    if doc.get("schemaVersion") != 2:
        raise RegistryError(f"{where}: unsupported schemaVersion {doc.get('schemaVersion')!r}")
    if "manifests" in doc and ("layers" in doc or "config" in doc):
        raise RegistryError(f"{where}: document has both \"manifests\" and \"layers\"/\"config\""
                            " (ambiguous, CVE-2021-41190): refused")
    if _kind(doc.get("mediaType")) and _kind(content_type) \
            and _kind(doc["mediaType"]) != _kind(content_type):
        raise RegistryError(f"{where}: Content-Type {content_type} contradicts the manifest's "
                            f"mediaType {doc['mediaType']}")
    if media in INDEXES or (not media and "manifests" in doc):
        if "layers" in doc or "config" in doc:
            raise RegistryError(f"{where}: an index with layers (CVE-2021-41190): refused")
        return "index", doc
    if media in MANIFESTS or (not media and "layers" in doc):
        if "manifests" in doc:
            raise RegistryError(f"{where}: a manifest with manifests (CVE-2021-41190): refused")
        return "manifest", doc
    raise RegistryError(f"{where}: unsupported manifest media type {media!r}")


def _kind(media_type: str | None) -> str | None:
    return "index" if media_type in INDEXES else "manifest" if media_type in MANIFESTS else None


def _is_attestation(entry: dict) -> bool:
    p = entry.get("platform") or {}
    annotations = entry.get("annotations") or {}
    return (p.get("os") == "unknown" and p.get("architecture") == "unknown") or \
        annotations.get("vnd.docker.reference.type") == "attestation-manifest"


def _variant_matches(want: Platform, have: str) -> bool:
    if not want.variant:
        return True
    # arm64's only variant is v8, so a manifest without one is v8 (containerd does the same)
    return have == want.variant or (not have and want.architecture == "arm64"
                                    and want.variant == "v8")


def choose(index: dict, want: Platform, where: str) -> Descriptor:
    """The manifest in ``index`` for platform ``want``; attestation entries are skipped."""
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise RegistryError(f"{where}: index has no \"manifests\" list")
    seen = []
    for entry in entries:
        if not isinstance(entry, dict) or _is_attestation(entry):
            continue
        p = entry.get("platform") or {}
        seen.append(str(Platform(p.get("os", "?"), p.get("architecture", "?"),
                                 p.get("variant", ""))))
        if p.get("os") == want.os and p.get("architecture") == want.architecture \
                and _variant_matches(want, p.get("variant", "")):
            return descriptor(entry, where)
    raise RegistryError(f"{where}: no image for platform {want} (the index has: "
                        f"{', '.join(seen) or 'nothing'})",
                        hint="choose one with --platform os/arch[/variant]")


def image_parts(manifest: dict, where: str) -> tuple[Descriptor, list[Descriptor]]:
    """The config and layer descriptors of an image manifest, validated."""
    cfg = descriptor(manifest.get("config"), f"{where} config")
    if cfg.media_type not in CONFIGS:
        raise RegistryError(f"{where}: config media type {cfg.media_type!r} is not an image "
                            "config (an artifact, not a container image?)")
    if cfg.size > MAX_CONFIG:
        raise RegistryError(f"{where}: config of {cfg.size} bytes is too large: refused")
    raw = manifest.get("layers")
    if not isinstance(raw, list):
        raise RegistryError(f"{where}: manifest has no \"layers\" list")
    layers = []
    for i, d in enumerate(raw):
        if isinstance(d, dict) and d.get("urls"):
            raise RegistryError(f"{where}: layer {i} is a foreign layer (urls): not supported")
        layer = descriptor(d, f"{where} layer {i}")
        if layer.media_type not in LAYERS:
            raise RegistryError(f"{where}: layer {i} has unsupported media type "
                                f"{layer.media_type!r}")
        layers.append(layer)
    return cfg, layers


def diff_ids(config_bytes: bytes, n_layers: int, where: str) -> list[str]:
    """``rootfs.diff_ids`` of an image config; one per layer (config.md)."""
    try:
        config = json.loads(config_bytes)
        ids = config["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError) as err:
        raise RegistryError(f"{where}: image config has no rootfs.diff_ids") from err
    if not isinstance(ids, list) or len(ids) != n_layers:
        raise RegistryError(f"{where}: config lists {len(ids) if isinstance(ids, list) else '?'}"
                            f" diff_ids for {n_layers} layers")
    return [check_digest(d, f"{where} diff_id") for d in ids]


def chain_ids(ids: list[str]) -> list[str]:
    """ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))
    (image-spec config.md, "Layer ChainID")."""
    out: list[str] = []
    for d in ids:
        out.append(d if not out else sha256_digest(f"{out[-1]} {d}".encode()))
    return out
