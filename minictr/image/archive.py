"""Loading images from local sources: an OCI image layout (a directory or an ``oci-archive``
tar of one) and ``docker save`` archives, both the classic form (manifest.json, <id>/json,
<id>/layer.tar) and Docker >= 25's, which is an OCI layout with a manifest.json beside it.

Sources are named as skopeo names them: ``oci:DIR[:REF]``, ``oci-archive:FILE[:REF]``,
``docker-archive:FILE[:NAME|@N]``, or a plain path whose content decides. Tar archives are read
in place: tarfile reads the member headers once, then each blob is read straight from its offset
in the archive (image-spec image-layout.md: blobs are files named by digest), so nothing is
extracted to disk besides the unpacked layers themselves.

Every document is verified against its descriptor's digest and size before use; layers are
verified while they are unpacked (store.import_layer), several at once: decompression, hashing
and file writes release the GIL, so a thread per layer keeps several cores busy.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from minictr.errors import ImageError, MinictrError
from minictr.image import manifests, reference
from minictr.image.sources import open_source

from minictr.image.reference import TRANSPORTS, is_transport  # noqa: F401 (re-exported)
NAME_ANNOTATION = "io.containerd.image.name"           # full name (containerd, docker >= 25)
REF_ANNOTATION = "org.opencontainers.image.ref.name"    # a tag or a full name (image-layout.md)
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
_TAG_ONLY = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
MAX_NESTING = 4


@dataclass
class _Image:
    names: list[str]
    manifest_bytes: bytes
    config_bytes: bytes
    layers: list = field(default_factory=list)        # store.LayerRecord, bottom first
    layer_paths: list[str] = field(default_factory=list)


def load(store, source: str, tag: str | None = None, *, platform: str | dict | None = None,
         jobs: int | None = None) -> list[str]:
    """Load every image ``source`` holds (or the one its REF selects) into ``store``; return
    their names (the image id for an image that has none). ``tag`` names the loaded image;
    ``platform`` (default: this host's) picks from an index as ``registry.pull`` does."""
    kind, path, selector = _parse_source(source)
    want = manifests.wanted_platform(platform)
    given_name = str(reference.parse(tag)) if tag is not None else None
    with open_source(path, kind) as src:
        if kind == "docker-archive" or (kind is None and src.exists("manifest.json")):
            images = _docker_images(src, selector)
        else:
            images = _oci_images(src, selector, _default_repository(path), want)
        if given_name is not None:
            if len(images) != 1:
                raise ImageError(f"{source} holds {len(images)} images; a name can be given to "
                                 "one only", hint="select one: oci:DIR:REF or "
                                 "docker-archive:FILE:NAME")
            images[0].names = [given_name]
        out = []
        with store.importing():         # what it finds stored stays until it is recorded
            _import_layers(store, src, images, jobs)
            for image in images:
                record = store.add_image(image.names, image.manifest_bytes, image.config_bytes)
                out.extend(image.names or [record.id])
    return out


def _parse_source(source: str) -> tuple[str | None, str, str | None]:
    """(transport or None, path, selector). As skopeo, the path ends at the first ':' after the
    transport, unless the whole rest names an existing file."""
    for transport in TRANSPORTS:
        if source.startswith(transport):
            rest = source[len(transport):]
            if os.path.exists(rest) or ":" not in rest:
                return transport[:-1], rest, None
            path, selector = rest.split(":", 1)
            return transport[:-1], path, selector or None
    return None, source, None


def _default_repository(path: str) -> str:
    """``localhost/<name>`` from a layout's directory or archive's file name, made a valid
    repository component (lower case; other characters become '-')."""
    base = os.path.basename(os.path.normpath(os.path.abspath(path)))
    for suffix in (".tar.gz", ".tgz", ".tar", ".oci"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    name = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-") or "image"
    return f"localhost/{name}"


# ---------------------------------------------------------------- OCI image layout


def _oci_images(src, selector: str | None, default_repo: str, want: dict) -> list[_Image]:
    if not src.exists("oci-layout"):
        raise ImageError(f"{src.where} is not an OCI image layout or docker archive "
                         "(no oci-layout, no manifest.json)",
                         hint="give a directory made by `skopeo copy ... oci:DIR`, an "
                         "oci-archive, or a `docker save` tar")
    index = manifests.parse_index(src.read("index.json", manifests.MAX_MANIFEST),
                                  f"{src.where}/index.json")
    groups: dict[str | None, list[dict]] = {}
    for desc in index["manifests"]:
        groups.setdefault((desc.get("annotations") or {}).get(REF_ANNOTATION), []).append(desc)
    if selector is not None:
        if selector not in groups:
            named = ", ".join(sorted(k for k in groups if k)) or "none"
            raise ImageError(f"{src.where} has no image named {selector!r} (it has: {named})")
        groups = {selector: groups[selector]}
    images = []
    for name, descs in groups.items():
        desc = descs[0] if len(descs) == 1 else manifests.select_manifest(descs, want,
                                                                          src.where)
        manifest_bytes, manifest = _resolve_manifest(src, desc, want, 0)
        config_desc = manifest["config"]
        config_bytes = _read_verified(src, config_desc, manifests.MAX_CONFIG, "image config")
        image = _Image(_oci_names(desc, name, default_repo), manifest_bytes, config_bytes)
        _fill_layers(image, manifest, config_bytes)
        images.append(image)
    return images


def _blob_name(digest: str) -> str:
    return f"blobs/sha256/{manifests.hex_of(digest)}"


def _read_verified(src, desc: dict, limit: int, what: str) -> bytes:
    if desc["size"] > limit:
        raise ImageError(f"{src.where}: {what} {desc['digest']} is {desc['size']} bytes, "
                         f"more than {limit}: refused")
    data = src.read(_blob_name(desc["digest"]), limit)
    manifests.verify_descriptor(desc, data, f"{src.where}: {what}")
    return data


def _resolve_manifest(src, desc: dict, want: dict, depth: int) -> tuple[bytes, dict]:
    """Follow indexes (choosing this platform) down to an image manifest."""
    what = f"{src.where}: {desc['digest'][:19]}"
    data = _read_verified(src, desc, manifests.MAX_MANIFEST, "manifest")
    kind, doc = manifests.load(data, desc.get("mediaType"), what)
    if kind == "index":
        if depth >= MAX_NESTING:
            raise ImageError(f"{what}: indexes nested more than {MAX_NESTING} deep: refused")
        chosen = manifests.select_manifest(doc["manifests"], want, what)
        return _resolve_manifest(src, chosen, want, depth + 1)
    return data, doc


def _oci_names(desc: dict, ref_name: str | None, default_repo: str) -> list[str]:
    """image-layout.md: ref.name is a tag or a full reference. A bare tag names the image
    ``localhost/<dir>:<tag>``; no name at all gives ``localhost/<dir>:latest``."""
    annotations = desc.get("annotations") or {}
    if annotations.get(NAME_ANNOTATION):
        return [str(reference.parse(annotations[NAME_ANNOTATION]))]
    if ref_name and _TAG_ONLY.fullmatch(ref_name):
        return [f"{default_repo}:{ref_name}"]
    if ref_name:
        return [str(reference.parse(ref_name))]
    return [f"{default_repo}:latest"]


def _fill_layers(image: _Image, manifest: dict, config_bytes: bytes) -> None:
    from minictr.image.store import LayerRecord

    config = manifests.parse_config(config_bytes)
    image.layers = manifests.layer_records(manifest, config, LayerRecord)
    image.layer_paths = [_blob_name(l.digest) for l in image.layers]


# ---------------------------------------------------------------- docker save


def _docker_images(src, selector: str | None) -> list[_Image]:
    """``docker save``'s manifest.json: [{Config, RepoTags, Layers}] with paths in the archive.
    Docker >= 25 also writes an OCI index; its manifests are used when one matches the config,
    so the image keeps its real manifest digest. Classic archives have none: a Docker v2.2
    manifest is made from the files, as skopeo does."""
    entries = manifests.parse_json(src.read("manifest.json", manifests.MAX_MANIFEST),
                                   f"{src.where}: manifest.json")
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("Config"), str)
            and _strings(e.get("Layers")) and _strings(e.get("RepoTags") or [])
            for e in entries):
        raise ImageError(f"{src.where}: manifest.json is not a docker-archive manifest",
                         hint="it should be [{\"Config\": PATH, \"RepoTags\": [NAME...], "
                         "\"Layers\": [PATH...]}], as `docker save` writes")
    by_config = _index_manifests(src) if src.exists("index.json") else {}
    images = []
    for i, entry in enumerate(entries):
        names = [str(reference.parse(t)) for t in entry.get("RepoTags") or []]
        if selector is not None and selector != f"@{i}" and not (
                _selector_name(selector) in names):
            continue
        config_bytes = src.read(entry["Config"], manifests.MAX_CONFIG)
        config_digest = manifests.sha256_digest(config_bytes)
        manifest_bytes = by_config.get(config_digest) or _docker_manifest(
            src, entry, config_bytes)
        manifest = manifests.parse_manifest(manifest_bytes,
                                            f"{src.where}: manifest of entry {i}")
        image = _Image(names, manifest_bytes, config_bytes)
        _fill_layers(image, manifest, config_bytes)
        if not by_config.get(config_digest):
            image.layer_paths = list(entry["Layers"])
        images.append(image)
    if not images:
        raise ImageError(f"{src.where} has no image {selector!r}" if selector else
                         f"{src.where} holds no image")
    return images


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _selector_name(selector: str) -> str:
    try:
        return str(reference.parse(selector))
    except ImageError:
        return selector


def _index_manifests(src) -> dict[str, bytes]:
    """config digest -> manifest bytes, for the image manifests an OCI index.json reaches.
    Only a lookup aid: attestations, absent blobs and documents that do not parse are skipped
    (the entry then gets a manifest made from manifest.json)."""
    out: dict[str, bytes] = {}
    try:
        todo = [(d, 0) for d in manifests.parse_index(src.read(
            "index.json", manifests.MAX_MANIFEST), "index.json")["manifests"]]
    except ImageError:
        return out
    while todo:
        desc, depth = todo.pop()
        if manifests.is_attestation(desc) or depth > MAX_NESTING or \
                not src.exists(_blob_name(desc["digest"])):
            continue
        try:
            data = _read_verified(src, desc, manifests.MAX_MANIFEST, "manifest")
            kind, doc = manifests.load(data, desc.get("mediaType"), desc["digest"])
            if kind == "index":
                todo.extend((d, depth + 1) for d in doc["manifests"])
            else:
                out.setdefault(doc["config"]["digest"], data)
        except ImageError:
            continue
    return out


def _docker_manifest(src, entry: dict, config_bytes: bytes) -> bytes:
    """A Docker v2.2 manifest for a classic archive's files, byte for byte the one skopeo
    reports (`skopeo inspect --raw docker-archive:FILE`), so the image gets the same manifest
    digest: compact JSON, every layer typed ``rootfs.diff.tar.gzip`` whatever its compression
    (the store decides by the content's magic bytes). A layer.tar is normally an uncompressed
    tar whose digest is its diff_id (checked when it is imported); a compressed one is hashed
    here."""
    config = manifests.parse_config(config_bytes)
    diff_ids = config["rootfs"]["diff_ids"]
    if len(diff_ids) != len(entry["Layers"]):
        raise ImageError(f"{src.where}: {entry['Config']} lists {len(diff_ids)} diff_ids for "
                         f"{len(entry['Layers'])} layers")
    layers = []
    for path, diff_id in zip(entry["Layers"], diff_ids):
        compressed = src.head(path, 4).startswith((b"\x1f\x8b", b"\x28\xb5\x2f\xfd"))
        digest = _hash_member(src, path) if compressed else diff_id
        layers.append({"mediaType": DOCKER_LAYER_GZIP, "size": src.size(path),
                       "digest": digest})
    manifest = {"schemaVersion": 2, "mediaType": manifests.DOCKER_MANIFEST,
                "config": {"mediaType": DOCKER_CONFIG, "size": len(config_bytes),
                           "digest": manifests.sha256_digest(config_bytes)},
                "layers": layers}
    return json.dumps(manifest, separators=(",", ":")).encode()


def _hash_member(src, path: str) -> str:
    h = hashlib.sha256()
    with src.open(path) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


# ---------------------------------------------------------------- layers, in parallel


class _LowerFailed(ImageError):
    pass


def _import_layers(store, src, images: list[_Image], jobs: int | None) -> None:
    """Import every layer not yet stored, several at a time. A layer whose tar hardlinks into
    a lower layer waits (lower_lookup) until the lower ones are in the store."""
    plan: dict[str, tuple] = {}
    for image in images:
        for i, (layer, path) in enumerate(zip(image.layers, image.layer_paths)):
            lowers = [l.chain_id for l in image.layers[:i]]
            plan.setdefault(layer.chain_id, (layer, path, lowers))
    for layer, _, _ in plan.values():
        manifests.check_layer_media_type(layer.media_type)   # before anything is written
    futures: dict[str, Future] = {}
    workers = jobs or min(8, max(2, os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="minictr-layer") as pool:
        for chain_id, (layer, path, lowers) in plan.items():   # bottom first: FIFO order
            futures[chain_id] = pool.submit(_import_one, store, src, layer, path, lowers,
                                            futures)
        errors = []
        for future in futures.values():
            try:
                future.result()
            except BaseException as err:
                errors.append(err)
                for other in futures.values():
                    other.cancel()
    if errors:
        first = next((e for e in errors if not isinstance(e, _LowerFailed)), errors[0])
        raise first


def _import_one(store, src, layer, path: str, lowers: list[str], futures: dict) -> None:
    if store.reuse_layer(layer.chain_id):
        return

    def lower_lookup() -> list[str]:
        for chain_id in lowers:
            try:
                futures[chain_id].result()
            except BaseException as err:
                raise _LowerFailed(f"a lower layer of {layer.digest} failed") from err
        return [store.layer_dir(c) for c in reversed(lowers)]

    try:
        with src.open(path) as stream:
            store.import_layer(stream, media_type=layer.media_type, digest=layer.digest,
                               diff_id=layer.diff_id, chain_id=layer.chain_id,
                               lower_lookup=lower_lookup, size=layer.size)
    except MinictrError:
        raise
    except (OSError, tarfile.TarError) as err:
        raise ImageError(f"{src.where}: cannot read layer {path}: {err}") from err


__all__ = ["is_transport", "load"]
