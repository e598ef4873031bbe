"""Bad files for the bad-input table: host files for options, and image sources that lie.

Each is made by the project's own image factory (tests/unit/imagefactory) with one thing
wrong, so that the CLI's reaction to exactly that thing is what the table checks."""
from __future__ import annotations

import gzip
import io
import json
import os
import tarfile

from tests.fuzz.targets import with_checksums
from tests.unit import imagefactory as f

BIG = 32 << 20          # the oversize layer's real size; its descriptor says 10 bytes


def _layout(path: str, image: f.Image, **manifest_changes) -> str:
    """An OCI layout of ``image`` whose manifest gets ``manifest_changes`` (re-digested)."""
    if manifest_changes:
        doc = json.loads(image.manifest)
        doc.update(manifest_changes)
        manifest = json.dumps(doc).encode()
        blobs = {d: b for d, b in image.blobs.items() if d != image.manifest_digest}
        image = f.Image(manifest, image.config, {**blobs, f.digest_of(manifest): manifest},
                        image.layer_tars)
    return f.write_layout(path, [(image, {"annotations": {
        "org.opencontainers.image.ref.name": "latest"}})])


def _image_with_layer(tar: bytes) -> f.Image:
    """An image whose one uncompressed layer is exactly ``tar``."""
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [f.digest_of(tar)]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": f.OCI_MANIFEST,
                           "config": f.descriptor(config, f.OCI_CONFIG),
                           "layers": [f.descriptor(tar, f.LAYER_TYPES[None])]}).encode()
    return f.Image(manifest, config, {f.digest_of(b): b for b in (tar, config, manifest)}, [tar])


def _zeros_tar(size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("zeros")
        info.size = size
        tf.addfile(info, io.BytesIO(bytes(size)))
    return buf.getvalue()


def _negative_size_tar() -> bytes:
    data = bytearray(f.tar_bytes([("file", "a", b"x")]))
    data[124:136] = b"\xff" + ((1 << 88) - 512).to_bytes(11, "big")    # base-256: -512
    return with_checksums(bytes(data))


def make(d: str) -> dict[str, str]:
    """Write the bad files under ``d``; return {name: path}."""
    out: dict[str, str] = {}

    def put(name: str, data: bytes) -> str:
        out[name] = os.path.join(d, name)
        with open(out[name], "wb") as fh:
            fh.write(data)
        return out[name]

    put("env-nul", b"A=1\0B\n")
    put("env-not-utf8", b"\xff\xfe=1\n")
    put("env-big", b"A=" + b"a" * (2 << 20) + b"\n")
    put("env-no-name", b"=value\n")
    put("seccomp-not-json", b"{")
    put("seccomp-deep", b"[" * 100_000)
    put("seccomp-unknown-key", b'{"defaultAction": "SCMP_ACT_ERRNO", "bogus": 1}')
    put("seccomp-list", b"[]")
    put("archive-gz", gzip.compress(f.tar_bytes([("file", "x", b"x")])))
    put("not-a-tar", b"hello, not a tar\n" * 100)

    def good(tag: str) -> f.Image:
        """A small image of its own: no layer shared with another row (the store would skip
        a layer it already holds, and the lie in question would never be read)."""
        return f.make_image([f.BUSYBOXISH[0] + [("file", "row", tag)], f.BUSYBOXISH[1]])

    oversize = _image_with_layer(_zeros_tar(BIG))
    doc = json.loads(oversize.manifest)
    doc["layers"][0]["size"] = 10           # the blob is 32 MiB; the digest is the real one
    out["oci-oversize-layer"] = _layout(os.path.join(d, "oversize"), oversize,
                                        layers=doc["layers"])
    image = good("undersize")
    doc = json.loads(image.manifest)
    doc["layers"][0]["size"] += 1
    out["oci-undersize-layer"] = _layout(os.path.join(d, "undersize"), image,
                                         layers=doc["layers"])
    image = good("missing")
    doc = json.loads(image.manifest)
    doc["layers"][0]["digest"] = "sha256:" + "0" * 64
    out["oci-missing-blob"] = _layout(os.path.join(d, "missing"), image, layers=doc["layers"])
    image = good("corrupt")
    corrupt = _layout(os.path.join(d, "corrupt"), image)
    first = json.loads(image.manifest)["layers"][0]["digest"][7:]
    with open(os.path.join(corrupt, "blobs", "sha256", first), "r+b") as fh:
        fh.seek(20)
        fh.write(b"\xff\xff\xff\xff")
    out["oci-corrupt-layer"] = corrupt
    out["oci-hanging-tar"] = _layout(os.path.join(d, "hanging"),
                                     _image_with_layer(_negative_size_tar()))
    bad_env = f.make_image(f.BUSYBOXISH, config_extra={"config": {"Env": 5, "Cmd": ["x"]}})
    good = good("shared")
    out["oci-bad-config"] = _layout(os.path.join(d, "badconfig"), bad_env)
    out["oci-layer-count"] = _layout(os.path.join(d, "count"), good,
                                     layers=json.loads(good.manifest)["layers"][:1])
    for name, index in (("oci-index-not-json", b"{"), ("oci-index-deep", b"[" * 100_000),
                        ("oci-index-platform-int", None)):
        path = _layout(os.path.join(d, name), good)
        if index is None:
            doc = json.load(open(os.path.join(path, "index.json")))
            doc["manifests"][0]["platform"] = 5
            index = json.dumps(doc).encode()
        with open(os.path.join(path, "index.json"), "wb") as fh:
            fh.write(index)
        out[name] = path
    escape = _layout(os.path.join(d, "escape"), good)
    manifest_blob = os.path.join(escape, "blobs", "sha256", good.manifest_digest[7:])
    os.unlink(manifest_blob)
    os.symlink("/etc/passwd", manifest_blob)
    out["oci-blob-symlink-out"] = escape

    for name, entry in (("docker-repotags-list", {"RepoTags": [["x"]]}),
                        ("docker-layer-escape", {"Layers": ["../../../../etc/passwd", "x"]}),
                        ("docker-no-config", {"Config": None}),
                        ("docker-bad-repotag", {"RepoTags": ["UPPER/Case:x"]})):
        path = f.docker_archive(os.path.join(d, name + ".tar"), [(good, ["example.test/x:1"])])
        out[name] = _rewrite_manifest_json(path, entry)
    out["docker-deep"] = _rewrite_manifest_json(
        f.docker_archive(os.path.join(d, "deep.tar"), [(good, [])]), None, b"[" * 100_000)
    return out


def _rewrite_manifest_json(path: str, changes: dict | None, raw: bytes | None = None) -> str:
    with tarfile.open(path) as tf:
        members = [(m, tf.extractfile(m).read() if m.isfile() else None)
                   for m in tf.getmembers()]
    with tarfile.open(path, "w") as tf:
        for m, data in members:
            if m.name == "manifest.json":
                if raw is None:
                    doc = json.loads(data)
                    doc[0].update(changes)
                    raw = json.dumps(doc).encode()
                data = raw
                m.size = len(data)
            tf.addfile(m, io.BytesIO(data) if data is not None else None)
    return path
