"""Manifest validation, platform choice and ChainIDs (image-spec manifest.md, image-index.md,
config.md)."""
from __future__ import annotations

import json

import pytest

from minictr.errors import ImageError, RegistryError
from minictr.image import manifests as m

D1, D2, D3 = ("sha256:" + c * 64 for c in "abc")


def _manifest(**over) -> dict:
    doc = {"schemaVersion": 2, "mediaType": m.OCI_MANIFEST,
           "config": {"mediaType": m.CONFIGS[0], "digest": D1, "size": 10},
           "layers": [{"mediaType": m.LAYERS[1], "digest": D2, "size": 20}]}
    doc.update(over)
    return doc


def _load(doc, ctype=""):
    return m.load(json.dumps(doc).encode(), ctype, "reg/x")


def test_load_kinds():
    assert _load(_manifest())[0] == "manifest"
    assert _load({"schemaVersion": 2, "mediaType": m.OCI_INDEX, "manifests": []})[0] == "index"
    # no mediaType in the document: the Content-Type decides
    assert _load({"schemaVersion": 2, "manifests": []}, m.DOCKER_LIST)[0] == "index"


@pytest.mark.parametrize("doc,message", [
    (_manifest(manifests=[]), "CVE-2021-41190"),
    ({"schemaVersion": 2, "mediaType": m.OCI_INDEX, "manifests": [], "layers": []},
     "CVE-2021-41190"),
    ({"schemaVersion": 2, "mediaType": m.OCI_INDEX, "config": {}}, "index with layers"),
    ({"schemaVersion": 1, "fsLayers": []}, "schema 1"),
    ({"schemaVersion": 3}, "unsupported schemaVersion"),
    ({"schemaVersion": 2, "mediaType": "application/x-other"}, "unsupported manifest media"),
])
def test_load_refuses(doc, message):
    with pytest.raises(RegistryError, match=message):
        _load(doc)


def test_content_type_contradicting_media_type_is_refused():
    with pytest.raises(RegistryError, match="contradicts"):
        _load(_manifest(), m.OCI_INDEX)


def test_not_json():
    with pytest.raises(RegistryError, match="not valid JSON"):
        m.load(b"\xff", "", "reg/x")


def test_image_parts_validation():
    cfg, layers = m.image_parts(_manifest(), "w")
    assert cfg.digest == D1 and [l.digest for l in layers] == [D2]
    bad = [
        (_manifest(config={"mediaType": "application/vnd.cncf.helm.config.v1+json",
                           "digest": D1, "size": 1}), "not an image config"),
        (_manifest(layers=[{"mediaType": m.LAYERS[1], "digest": "sha256:../../etc",
                            "size": 1}]), "invalid or unsupported digest"),
        (_manifest(layers=[{"mediaType": m.LAYERS[1], "digest": D2, "size": -1}]),
         "invalid size"),
        (_manifest(layers=[{"mediaType": "application/x-tar", "digest": D2, "size": 1}]),
         "unsupported media type"),
        (_manifest(layers=[{"mediaType": m.LAYERS[4], "digest": D2, "size": 1,
                            "urls": ["http://x"]}]), "foreign layer"),
        (_manifest(layers={}), "no \"layers\" list"),
    ]
    for doc, message in bad:
        with pytest.raises(RegistryError, match=message):
            m.image_parts(doc, "w")


def test_platform_parsing_and_host():
    assert m.parse_platform("linux/arm64") == m.Platform("linux", "arm64", "v8")
    assert m.parse_platform("linux/aarch64") == m.Platform("linux", "arm64", "v8")
    assert m.parse_platform("linux/arm/v7") == m.Platform("linux", "arm", "v7")
    assert m.parse_platform(None) is None
    assert m.host_platform("x86_64") == m.Platform("linux", "amd64", "")
    assert m.host_platform("armv7l") == m.Platform("linux", "arm", "v7")
    for bad in ("linux", "linux//v7", "a/b/c/d"):
        with pytest.raises(ImageError, match="invalid platform"):
            m.parse_platform(bad)


def _entry(digest, os_, arch, variant=None, **extra):
    p = {"os": os_, "architecture": arch, **({"variant": variant} if variant else {})}
    return {"mediaType": m.OCI_MANIFEST, "digest": digest, "size": 5, "platform": p, **extra}


def test_choose_skips_attestations_and_matches_variants():
    index = {"manifests": [
        _entry(D3, "unknown", "unknown"),
        _entry(D1, "linux", "arm", "v6"),
        _entry(D2, "linux", "arm64"),
        _entry(D3, "linux", "amd64"),
    ]}
    assert m.choose(index, m.Platform("linux", "amd64"), "w").digest == D3
    assert m.choose(index, m.Platform("linux", "arm64", "v8"), "w").digest == D2
    with pytest.raises(RegistryError) as err:
        m.choose(index, m.Platform("linux", "arm", "v7"), "w")
    assert "(the index has: linux/arm/v6, linux/arm64, linux/amd64)" in str(err.value)


def test_choose_skips_annotated_attestation_even_with_a_platform():
    index = {"manifests": [
        _entry(D1, "linux", "amd64", annotations={
            "vnd.docker.reference.type": "attestation-manifest"}),
        _entry(D2, "linux", "amd64")]}
    assert m.choose(index, m.Platform("linux", "amd64"), "w").digest == D2


def test_diff_ids_must_match_layers():
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [D1, D2]}}).encode()
    assert m.diff_ids(config, 2, "w") == [D1, D2]
    with pytest.raises(RegistryError, match="2 diff_ids for 3 layers"):
        m.diff_ids(config, 3, "w")
    with pytest.raises(RegistryError, match="no rootfs.diff_ids"):
        m.diff_ids(b"{}", 1, "w")


def test_chain_ids_follow_the_spec():
    import hashlib

    second = "sha256:" + hashlib.sha256(f"{D1} {D2}".encode()).hexdigest()
    third = "sha256:" + hashlib.sha256(f"{second} {D3}".encode()).hexdigest()
    assert m.chain_ids([D1, D2, D3]) == [D1, second, third]


def test_docker_and_oci_content_types_of_one_kind_are_accepted():
    assert _load(_manifest(), m.DOCKER_MANIFEST)[0] == "manifest"
    assert _load(_manifest(), "application/json")[0] == "manifest"
