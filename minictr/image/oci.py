"""The OCI image-spec documents the store and the archive loader check: descriptors, image
manifests, image indexes, image configs, and platform selection in an index.

Spec sections: descriptor.md (mediaType, digest, size), manifest.md (config + layers),
image-index.md (manifests + platform), config.md (rootfs.diff_ids). Docker's v2 schema 2
manifest and manifest list have the same shapes under other media types.
"""
from __future__ import annotations

import json
import os
import re

from minictr.errors import ImageError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
CONFIG_TYPES = ("application/vnd.oci.image.config.v1+json",
                "application/vnd.docker.container.image.v1+json")
LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
)
MAX_DOCUMENT = 4 << 20          # containerd's manifest limit: anything bigger is an attack
MAX_CONFIG = 8 << 20
_SHA256 = re.compile(r"sha256:([a-f0-9]{64})")

# uname -m -> the image-spec's GOARCH names and default variant (containerd's normalisation)
_ARCHES = {"x86_64": ("amd64", ""), "aarch64": ("arm64", "v8"), "armv7l": ("arm", "v7"),
           "armv6l": ("arm", "v6"), "i686": ("386", ""), "ppc64le": ("ppc64le", ""),
           "s390x": ("s390x", ""), "riscv64": ("riscv64", "")}


def hex_of(digest) -> str:
    """The hex part of a sha256 digest. Digests come from untrusted documents and become file
    names, so nothing else is accepted (no other algorithm, no upper case, no '/')."""
    m = _SHA256.fullmatch(digest) if isinstance(digest, str) else None
    if not m:
        raise ImageError(f"invalid or unsupported digest {digest!r} (only sha256:<64 hex>)")
    return m.group(1)


def sha256_digest(data: bytes) -> str:
    import hashlib  # not at module level: it is off the run path
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_layer_media_type(media_type: str) -> None:
    if media_type not in LAYER_TYPES:
        raise ImageError(f"unsupported layer media type {media_type!r}",
                         hint="minictr reads tar layers, plain or gzip- or zstd-compressed")


def check_descriptor(desc, what: str) -> dict:
    if not isinstance(desc, dict):
        raise ImageError(f"{what}: the descriptor is not a JSON object")
    hex_of(desc.get("digest"))
    size = desc.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"{what}: invalid size {size!r} in its descriptor")
    return desc


def verify_descriptor(desc: dict, data: bytes, what: str) -> None:
    """descriptor.md: content must match the descriptor's size and digest."""
    got = sha256_digest(data)
    if got != desc["digest"] or len(data) != desc["size"]:
        raise ImageError(f"{what} {desc['digest']} failed verification: got {len(data)} bytes "
                         f"hashing to {got} (expected {desc['size']} bytes)",
                         hint="the source is corrupt or truncated")


def _document(data: bytes, what: str) -> dict:
    try:
        doc = json.loads(data)
    except ValueError as err:
        raise ImageError(f"{what} is not valid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise ImageError(f"{what} is not a JSON object")
    if doc.get("schemaVersion") != 2:
        raise ImageError(f"{what}: unsupported schemaVersion {doc.get('schemaVersion')!r}",
                         hint="Docker schema 1 images must be pushed again with a current tool")
    return doc


def kind_of(doc: dict, descriptor_type: str | None, what: str) -> str:
    """'manifest' or 'index'. A manifest with ``manifests`` or an index with ``layers`` or
    ``config`` is refused, as is a document contradicting its descriptor's media type: that
    ambiguity let one digest mean two images (CVE-2021-41190, image-spec 1.0.2)."""
    media = doc.get("mediaType") or descriptor_type
    if doc.get("mediaType") and descriptor_type and doc["mediaType"] != descriptor_type:
        raise ImageError(f"{what}: its mediaType {doc['mediaType']} contradicts its "
                         f"descriptor's {descriptor_type} (CVE-2021-41190): refused")
    if media in INDEX_TYPES or (not media and "manifests" in doc):
        if "layers" in doc or "config" in doc:
            raise ImageError(f"{what}: an index with \"layers\" or \"config\" is ambiguous "
                             "(CVE-2021-41190): refused")
        return "index"
    if media in MANIFEST_TYPES or (not media and "layers" in doc):
        if "manifests" in doc:
            raise ImageError(f"{what}: a manifest with \"manifests\" is ambiguous "
                             "(CVE-2021-41190): refused")
        return "manifest"
    raise ImageError(f"{what}: unsupported media type {media!r}")


def parse_index(data: bytes, what: str, descriptor_type: str | None = None) -> dict:
    doc = _document(data, what)
    if kind_of(doc, descriptor_type, what) != "index":
        raise ImageError(f"{what} is an image manifest, not an index")
    if not isinstance(doc.get("manifests"), list):
        raise ImageError(f"{what}: the index has no \"manifests\" list")
    for i, desc in enumerate(doc["manifests"]):
        check_descriptor(desc, f"{what}, manifests[{i}]")
    return doc


def parse_manifest(data: bytes, what: str = "manifest",
                   descriptor_type: str | None = None) -> dict:
    """An image manifest, its descriptors checked and its layer media types known."""
    doc = _document(data, what)
    if kind_of(doc, descriptor_type, what) != "manifest":
        raise ImageError(f"{what} is an image index, not an image manifest")
    config = check_descriptor(doc.get("config"), f"{what}, config")
    if config.get("mediaType") not in CONFIG_TYPES:
        raise ImageError(f"{what}: config media type {config.get('mediaType')!r} is not an "
                         "image config (an artifact, not a container image?)")
    if config["size"] > MAX_CONFIG:
        raise ImageError(f"{what}: a config of {config['size']} bytes is too large: refused")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise ImageError(f"{what}: the manifest has no \"layers\" list")
    for i, desc in enumerate(layers):
        check_descriptor(desc, f"{what}, layers[{i}]")
        check_layer_media_type(desc.get("mediaType"))
    return doc


def parse_config(data: bytes, what: str = "image config") -> dict:
    try:
        config = json.loads(data)
        diff_ids = config["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError) as err:
        raise ImageError(f"{what} has no rootfs.diff_ids") from err
    if not isinstance(diff_ids, list):
        raise ImageError(f"{what}: rootfs.diff_ids is not a list")
    for d in diff_ids:
        hex_of(d)
    return config


def layer_records(manifest: dict, config: dict, make, chain_ids) -> list:
    """One ``make(digest, media_type, size, diff_id, chain_id)`` per layer, bottom first."""
    diff_ids = config["rootfs"]["diff_ids"]
    layers = manifest["layers"]
    if len(diff_ids) != len(layers):
        raise ImageError(f"the manifest has {len(layers)} layers but the config lists "
                         f"{len(diff_ids)} diff_ids")
    return [make(l["digest"], l["mediaType"], l["size"], d, c)
            for l, d, c in zip(layers, diff_ids, chain_ids(diff_ids))]


# ---------------------------------------------------------------- platforms


def host_platform(machine: str | None = None) -> dict:
    machine = machine or os.uname().machine
    arch, variant = _ARCHES.get(machine, (machine, ""))
    return {"os": "linux", "architecture": arch, "variant": variant}


def is_attestation(desc: dict) -> bool:
    """BuildKit stores provenance/SBOM attestations as manifests for platform unknown/unknown."""
    p = desc.get("platform") or {}
    return (p.get("os") == "unknown" and p.get("architecture") == "unknown") or \
        (desc.get("annotations") or {}).get("vnd.docker.reference.type") == "attestation-manifest"


def platform_matches(have: dict | None, want: dict) -> bool:
    """A descriptor without ``platform`` matches (containerd does the same); arm64 without a
    variant is v8."""
    if not have:
        return True
    if have.get("os") != want["os"] or have.get("architecture") != want["architecture"]:
        return False
    variant = have.get("variant") or ("v8" if have.get("architecture") == "arm64" else "")
    return not want.get("variant") or variant == want["variant"]


def select_manifest(descriptors: list[dict], want: dict, what: str) -> dict:
    """The first descriptor for platform ``want``, skipping attestation manifests."""
    seen = []
    for desc in descriptors:
        if is_attestation(desc):
            continue
        if platform_matches(desc.get("platform"), want):
            return desc
        p = desc.get("platform") or {}
        seen.append("/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant"))
                             if x))
    wanted = "/".join(x for x in (want["os"], want["architecture"], want.get("variant")) if x)
    raise ImageError(f"{what}: no image for this host's platform {wanted} "
                     f"(it has: {', '.join(seen) or 'nothing'})")
