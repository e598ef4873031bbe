"""The OCI image documents, one model for every source: descriptors, image manifests, image
indexes, image configs, and which manifest of an index is for a platform.

Both ways an image comes in use this module, so they read documents alike and choose alike:
the loader (OCI layouts, oci-archives, ``docker save``: image/archive.py) and the registry
client (image/registry.py). Documents stay the JSON objects they are (dicts), checked here.

Spec sections: descriptor.md (mediaType, digest, size), manifest.md (config + layers),
image-index.md (manifests + platform), config.md (rootfs.diff_ids, ChainID). Docker's v2 schema
2 manifest and manifest list are the same shapes under other media types.
"""
from __future__ import annotations

import os

from minictr import jsonio
from minictr.errors import ImageError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_V1 = ("application/vnd.docker.distribution.manifest.v1+json",
             "application/vnd.docker.distribution.manifest.v1+prettyjws")
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
CONFIG_TYPES = ("application/vnd.oci.image.config.v1+json",
                "application/vnd.docker.container.image.v1+json")
# layer media type -> how its blob is compressed (image/layerstream.py decodes it). Docker's
# rootfs.diff.tar.gzip is also used for plain tars (skopeo, docker save): the store decides by
# the content's magic bytes for Docker's types.
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "tar",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    # deprecated "non-distributable" forms: accepted when the source itself has the blob
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}
MAX_MANIFEST = 4 << 20          # containerd's limit (manifests and indexes): more is an attack
MAX_CONFIG = 8 << 20
_HEX_DIGITS = frozenset("0123456789abcdef")


# ---------------------------------------------------------------- digests and descriptors
def check_digest(value, what: str = "digest") -> str:
    """A sha256 digest, checked. Digests come from untrusted documents and become file names
    in the store, so nothing else is accepted (no other algorithm, no upper case, no '/')."""
    if not (isinstance(value, str) and len(value) == 71 and value.startswith("sha256:")
            and all(c in _HEX_DIGITS for c in value[7:])):
        raise ImageError(f"{what}: invalid or unsupported digest {value!r} "
                         "(only sha256:<64 hex>)")
    return value


def hex_of(digest) -> str:
    """The hex part of a checked sha256 digest."""
    return check_digest(digest)[7:]


def sha256_digest(data: bytes) -> str:
    import hashlib  # not at module level: it is off the run path
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_ids(diff_ids: list[str]) -> list[str]:
    """ChainID(1) = DiffID(1); ChainID(n) = sha256(ChainID(n-1) + " " + DiffID(n)) (config.md,
    "Layer ChainID"): the key a stack of layers is unpacked under."""
    out: list[str] = []
    for diff_id in diff_ids:
        check_digest(diff_id, "diff_id")
        out.append(diff_id if not out else sha256_digest(f"{out[-1]} {diff_id}".encode()))
    return out


def check_layer_media_type(media_type, what: str = "layer") -> None:
    if media_type not in LAYER_TYPES:
        raise ImageError(f"{what}: unsupported layer media type {media_type!r}",
                         hint="minictr reads tar layers, plain or gzip- or zstd-compressed")


def check_descriptor(desc, what: str) -> dict:
    if not isinstance(desc, dict):
        raise ImageError(f"{what}: the descriptor is not a JSON object")
    check_digest(desc.get("digest"), what)
    size = desc.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"{what}: invalid size {size!r} in its descriptor")
    for key in ("platform", "annotations"):     # descriptor.md: objects when present
        if desc.get(key) is not None and not isinstance(desc[key], dict):
            raise ImageError(f"{what}: the descriptor's {key} is not a JSON object")
    platform = desc.get("platform") or {}
    if not all(isinstance(platform.get(k, ""), str) for k in ("os", "architecture", "variant")):
        raise ImageError(f"{what}: the descriptor's platform has a field that is not a string")
    if not all(isinstance(v, str) for v in (desc.get("annotations") or {}).values()):
        raise ImageError(f"{what}: the descriptor's annotations are not all strings")
    return desc


def verify_descriptor(desc: dict, data: bytes, what: str) -> None:
    """descriptor.md: content must match the descriptor's size and digest."""
    got = sha256_digest(data)
    if got != desc["digest"] or len(data) != desc["size"]:
        raise ImageError(f"{what} {desc['digest']} failed verification: got {len(data)} bytes "
                         f"hashing to {got} (expected {desc['size']} bytes)",
                         hint="the source is corrupt or truncated")


def parse_json(data: bytes, what: str):
    """A JSON document from an untrusted source. Nesting deeper than the interpreter's
    recursion limit makes json raise RecursionError: that is bad input too, not a crash."""
    try:
        return jsonio.loads(data)
    except RecursionError:
        raise ImageError(f"{what} is not valid JSON: nested too deeply") from None
    except ValueError as err:
        raise ImageError(f"{what} is not valid JSON: {err}") from err


# ---------------------------------------------------------------- manifests and indexes
def _kind(media_type) -> str | None:
    return "index" if media_type in INDEX_TYPES else \
        "manifest" if media_type in MANIFEST_TYPES else None


def load(data: bytes, declared: str | None, what: str) -> tuple[str, dict]:
    """Parse a manifest or index: ``("manifest" | "index", document)``. ``declared`` is the
    media type the document came under: its descriptor's, or a registry's Content-Type.

    A document that is both an index and a manifest (``manifests`` beside ``layers`` or
    ``config``), or whose kind contradicts the declared one, is refused: the ambiguity let one
    digest mean two images (CVE-2021-41190, image-spec 1.0.2)."""
    doc = parse_json(data, what)
    if not isinstance(doc, dict):
        raise ImageError(f"{what} is not a JSON object")
    media = doc.get("mediaType") or declared
    if media in DOCKER_V1 or doc.get("schemaVersion") == 1:
        raise ImageError(f"{what}: Docker schema 1 manifests are not supported",
                         hint="push the image again with a current docker, podman or skopeo")
    if doc.get("schemaVersion") != 2:
        raise ImageError(f"{what}: unsupported schemaVersion {doc.get('schemaVersion')!r}")
    if "manifests" in doc and ("layers" in doc or "config" in doc):
        raise ImageError(f"{what}: an index with \"layers\" or \"config\" (or a manifest with "
                         "\"manifests\") is ambiguous (CVE-2021-41190): refused")
    if _kind(doc.get("mediaType")) and _kind(declared) and \
            _kind(doc["mediaType"]) != _kind(declared):
        raise ImageError(f"{what}: its mediaType {doc['mediaType']} contradicts the declared "
                         f"{declared} (CVE-2021-41190): refused")
    if _kind(media) == "index" or (not _kind(media) and not doc.get("mediaType")
                                   and "manifests" in doc):
        if not isinstance(doc.get("manifests"), list):
            raise ImageError(f"{what}: the index has no \"manifests\" list")
        for i, desc in enumerate(doc["manifests"]):
            check_descriptor(desc, f"{what}, manifests[{i}]")
        return "index", doc
    if _kind(media) == "manifest" or (not _kind(media) and not doc.get("mediaType")
                                      and "layers" in doc):
        _check_image_manifest(doc, what)
        return "manifest", doc
    raise ImageError(f"{what}: unsupported media type {media!r}")


def _check_image_manifest(doc: dict, what: str) -> None:
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
        check_layer_media_type(desc.get("mediaType"), f"{what}, layers[{i}]")


def parse_index(data: bytes, what: str, declared: str | None = None) -> dict:
    kind, doc = load(data, declared, what)
    if kind != "index":
        raise ImageError(f"{what} is an image manifest, not an index")
    return doc


def parse_manifest(data: bytes, what: str = "manifest", declared: str | None = None) -> dict:
    """An image manifest, its descriptors checked and its layer media types known."""
    kind, doc = load(data, declared, what)
    if kind != "manifest":
        raise ImageError(f"{what} is an image index, not an image manifest")
    return doc


def parse_config(data: bytes, what: str = "image config") -> dict:
    config = parse_json(data, what)
    try:
        diff_ids = config["rootfs"]["diff_ids"]
    except (KeyError, TypeError) as err:
        raise ImageError(f"{what} has no rootfs.diff_ids") from err
    if not isinstance(diff_ids, list):
        raise ImageError(f"{what}: rootfs.diff_ids is not a list")
    for d in diff_ids:
        check_digest(d, f"{what}, diff_id")
    return config


def layer_records(manifest: dict, config: dict, make) -> list:
    """One ``make(digest, media_type, size, diff_id, chain_id)`` per layer, bottom first."""
    diff_ids = config["rootfs"]["diff_ids"]
    layers = manifest["layers"]
    if len(diff_ids) != len(layers):
        raise ImageError(f"the manifest has {len(layers)} layers but the config lists "
                         f"{len(diff_ids)} diff_ids")
    return [make(l["digest"], l["mediaType"], l["size"], d, c)
            for l, d, c in zip(layers, diff_ids, chain_ids(diff_ids))]


# ---------------------------------------------------------------- platforms
# Names and matching as containerd's platforms package (database.go normalizeArch, compare.go
# platformVector), which docker and podman share: uname -m and GOARCH spellings are the same
# architecture, amd64/v1 is plain amd64, arm64/v8 is plain arm64, arm alone is arm/v7.
_ARCH_NAMES = {"x86_64": ("amd64", None), "x86-64": ("amd64", None), "aarch64": ("arm64", None),
               "armhf": ("arm", "v7"), "armel": ("arm", "v6"), "armv7l": ("arm", "v7"),
               "armv6l": ("arm", "v6"), "armv5tel": ("arm", "v5"), "i386": ("386", ""),
               "i686": ("386", "")}
_X86_64_LEVELS = (      # the x86-64 psABI levels, as /proc/cpuinfo names their features
    ("v2", {"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"}),
    ("v3", {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}),
    ("v4", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}))


def normalize(platform: dict) -> dict:
    """``{"os", "architecture", "variant"}`` in canonical spelling (containerd's Normalize)."""
    os_ = str(platform.get("os") or "").lower()
    arch = str(platform.get("architecture") or "").lower()
    variant = str(platform.get("variant") or "").lower()
    arch, implied = _ARCH_NAMES.get(arch, (arch, None))
    variant = implied if implied is not None else variant
    if arch == "amd64" and variant == "v1":
        variant = ""
    elif arch == "arm64" and variant in ("", "8", "v8", "v8.0"):
        variant = "v8"
    elif arch == "arm" and variant in ("", "7"):
        variant = "v7"
    elif arch == "arm" and variant in ("5", "6", "8"):
        variant = "v" + variant
    return {"os": os_, "architecture": arch, "variant": variant}


def platform_text(platform: dict) -> str:
    return "/".join(p for p in (platform.get("os"), platform.get("architecture"),
                                platform.get("variant")) if p)


def host_platform(machine: str | None = None, cpu_flags: set[str] | None = None) -> dict:
    """This machine's platform. On x86-64 the variant is the psABI level the CPU has (v2, v3,
    v4; none for v1), as containerd 2 reports it, so amd64/v3 images run where they can."""
    plat = normalize({"os": "linux", "architecture": machine or os.uname().machine})
    if plat["architecture"] == "amd64":
        flags = _cpu_flags() if cpu_flags is None else cpu_flags
        for level, needed in _X86_64_LEVELS:
            if not needed <= flags:
                break
            plat["variant"] = level
    return plat


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def parse_platform(text: str | None) -> dict | None:
    """``os/arch[/variant]`` (the --platform syntax of docker and podman)."""
    if not text:
        return None
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ImageError(f"invalid platform {text!r}", hint="use os/arch[/variant], "
                         "e.g. linux/amd64 or linux/arm64/v8")
    return normalize(dict(zip(("os", "architecture", "variant"), parts)))


def wanted_platform(platform) -> dict:
    """What a caller asks for: None (this host), ``os/arch[/variant]`` or a platform dict."""
    if platform is None:
        return host_platform()
    return parse_platform(platform) if isinstance(platform, str) else normalize(platform)


def _acceptable(want: dict) -> list[tuple[str, str]]:
    """(architecture, variant) this platform runs, best first (containerd's platformVector):
    an amd64/vN machine runs vN down to plain amd64, then 386; arm/vN down to v5; arm64 its
    own, then 32-bit arm."""
    arch, variant = want["architecture"], want["variant"]
    out = [(arch, variant)]
    level = int(variant[1:]) if variant[1:].isdecimal() else 0
    if arch == "amd64":
        out += [("amd64", f"v{n}") for n in range(level - 1, 1, -1)]
        out += [("amd64", "")] if variant else []
        out += [("386", "")]
    elif arch == "arm":
        out += [("arm", f"v{n}") for n in range(level - 1, 4, -1)]
    elif arch == "arm64":
        out += _acceptable({"architecture": "arm", "variant": "v8"})
    return out


def platform_matches(have: dict | None, want: dict) -> bool:
    """Can a machine of platform ``want`` run an image of platform ``have``? The same rule as
    select_manifest (containerd's): amd64/v3 runs amd64/v2 and plain amd64, arm64 runs arm/v8.
    An image that declares no platform matches (containerd does the same)."""
    if not have:
        return True
    have, want = normalize(have), normalize(want)
    return have["os"] == want["os"] and (have["architecture"], have["variant"]) in \
        _acceptable(want)


def is_attestation(desc: dict) -> bool:
    """BuildKit stores provenance/SBOM attestations as manifests for platform unknown/unknown."""
    p = desc.get("platform") or {}
    return (p.get("os") == "unknown" and p.get("architecture") == "unknown") or \
        (desc.get("annotations") or {}).get("vnd.docker.reference.type") == "attestation-manifest"


def select_manifest(descriptors: list[dict], want: dict, what: str) -> dict:
    """The descriptor in an index's ``manifests`` for platform ``want``: the best match in
    containerd's order (see _acceptable), the first in the index among equals; attestation
    manifests are skipped, and one without a platform is taken last (containerd does so)."""
    want = normalize(want)
    ranks = {a: i for i, a in reversed(list(enumerate(_acceptable(want))))}
    best, best_rank, seen = None, len(ranks) + 1, []
    for desc in descriptors:
        if not isinstance(desc, dict) or is_attestation(desc):
            continue
        if not desc.get("platform"):
            rank = len(ranks)
        else:
            have = normalize(desc["platform"])
            seen.append(platform_text(desc["platform"]))
            rank = ranks.get((have["architecture"], have["variant"]), best_rank) \
                if have["os"] == want["os"] else best_rank
        if rank < best_rank:
            best, best_rank = desc, rank
    if best is None:
        raise ImageError(f"{what}: no image for platform {platform_text(want)} (the index has: "
                         f"{', '.join(seen) or 'nothing'})",
                         hint="choose one with --platform os/arch[/variant]")
    return best
