"""The image documents (image/manifests.py): validation, platform choice, ChainIDs
(image-spec manifest.md, image-index.md, config.md), and one choice for `load` and `pull`."""
from __future__ import annotations

import contextlib
import hashlib
import json

import pytest

import imagefactory as f
from minictr.errors import ImageError, RegistryError
from minictr.image import archive, hosts, manifests as m, registry
from minictr.image.store import Store
from test_registry_client import Response, Session

D1, D2, D3 = ("sha256:" + c * 64 for c in "abc")


def _manifest(**over) -> dict:
    doc = {"schemaVersion": 2, "mediaType": m.OCI_MANIFEST,
           "config": {"mediaType": m.CONFIG_TYPES[0], "digest": D1, "size": 10},
           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": D2, "size": 20}]}
    doc.update(over)
    return doc


def _load(doc, declared=""):
    return m.load(json.dumps(doc).encode(), declared, "reg/x")


def test_load_kinds():
    assert _load(_manifest())[0] == "manifest"
    assert _load({"schemaVersion": 2, "mediaType": m.OCI_INDEX, "manifests": []})[0] == "index"
    # no mediaType in the document: the declared type (Content-Type, descriptor) decides
    assert _load({"schemaVersion": 2, "manifests": []}, m.DOCKER_LIST)[0] == "index"
    assert _load({"schemaVersion": 2, "manifests": []}, "application/json")[0] == "index"


@pytest.mark.parametrize("doc,message", [
    (_manifest(manifests=[]), "CVE-2021-41190"),
    ({"schemaVersion": 2, "mediaType": m.OCI_INDEX, "manifests": [], "layers": []},
     "CVE-2021-41190"),
    ({"schemaVersion": 2, "mediaType": m.OCI_INDEX, "config": {}}, "no \"manifests\" list"),
    ({"schemaVersion": 1, "fsLayers": []}, "schema 1"),
    ({"schemaVersion": 3}, "unsupported schemaVersion"),
    ({"schemaVersion": 2, "mediaType": "application/x-other"}, "unsupported media type"),
    (_manifest(config={"mediaType": "application/vnd.cncf.helm.config.v1+json",
                       "digest": D1, "size": 1}), "not an image config"),
    (_manifest(layers=[{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": "sha256:../../etc", "size": 1}]),
     "invalid or unsupported digest"),
    (_manifest(layers=[{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": D2,
                        "size": -1}]), "invalid size"),
    (_manifest(layers=[{"mediaType": "application/x-tar", "digest": D2, "size": 1}]),
     "unsupported layer media type"),
    (_manifest(layers={}), "no \"layers\" list"),
])
def test_load_refuses(doc, message):
    with pytest.raises(ImageError, match=message):
        _load(doc)


def test_declared_type_contradicting_the_document_is_refused():
    with pytest.raises(ImageError, match="contradicts"):
        _load(_manifest(), m.OCI_INDEX)
    # the same kind under Docker's or a generic name is fine
    assert _load(_manifest(), m.DOCKER_MANIFEST)[0] == "manifest"
    assert _load(_manifest(), "application/json")[0] == "manifest"


def test_not_json():
    with pytest.raises(ImageError, match="not valid JSON"):
        m.load(b"\xff", "", "reg/x")


def test_chain_ids_follow_the_spec():
    second = "sha256:" + hashlib.sha256(f"{D1} {D2}".encode()).hexdigest()
    third = "sha256:" + hashlib.sha256(f"{second} {D3}".encode()).hexdigest()
    assert m.chain_ids([D1, D2, D3]) == [D1, second, third]
    with pytest.raises(ImageError, match="invalid or unsupported digest"):
        m.chain_ids(["sha256:ABC"])


# ---------------------------------------------------------------- platforms
def P(text):
    return m.parse_platform(text)


def test_platform_names_are_normalised_as_containerd():
    assert P("linux/arm64") == P("linux/aarch64") == P("linux/arm64/v8") == \
        {"os": "linux", "architecture": "arm64", "variant": "v8"}
    assert P("linux/arm") == P("linux/armhf") == P("linux/arm/7") == P("linux/arm/v7")
    assert P("linux/x86_64") == P("linux/amd64/v1") == \
        {"os": "linux", "architecture": "amd64", "variant": ""}
    assert P(None) is None
    for bad in ("linux", "linux//v7", "a/b/c/d"):
        with pytest.raises(ImageError, match="invalid platform"):
            P(bad)


def test_host_platform_and_the_x86_64_level():
    v2 = {"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"}
    v3 = v2 | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
    assert m.host_platform("x86_64", cpu_flags=set())["variant"] == ""
    assert m.host_platform("x86_64", cpu_flags=v2)["variant"] == "v2"
    assert m.host_platform("x86_64", cpu_flags=v3 | {"avx512f"})["variant"] == "v3"
    assert m.host_platform("armv7l") == P("linux/arm/v7")
    assert m.host_platform("aarch64") == P("linux/arm64")


def entry(digest, os_, arch, variant=None, **extra):
    p = {"os": os_, "architecture": arch, **({"variant": variant} if variant else {})}
    return {"mediaType": m.OCI_MANIFEST, "digest": digest, "size": 5, "platform": p, **extra}


def pick(entries, want):
    return m.select_manifest(entries, P(want) if isinstance(want, str) else want, "w")["digest"]


def test_selection_skips_attestations_and_matches_variants():
    entries = [entry(D3, "unknown", "unknown"), entry(D1, "linux", "arm", "v6"),
               entry(D2, "linux", "arm64"), entry(D3, "linux", "amd64")]
    assert pick(entries, "linux/amd64") == D3
    assert pick(entries, "linux/arm64/v8") == D2
    assert pick(entries, "linux/arm/v7") == D1            # an arm/v7 CPU runs v6 code
    with pytest.raises(ImageError) as err:
        pick(entries, "linux/arm/v5")
    assert "(the index has: linux/arm/v6, linux/arm64, linux/amd64)" in str(err.value)


def test_selection_prefers_the_best_variant_not_the_first():
    entries = [entry(D1, "linux", "amd64"), entry(D2, "linux", "amd64", "v3"),
               entry(D3, "linux", "amd64", "v2")]
    assert pick(entries, "linux/amd64/v4") == D2
    assert pick(entries, "linux/amd64/v2") == D3
    assert pick(entries, "linux/amd64") == D1             # a v1 CPU cannot run v2 code
    assert pick([entry(D2, "linux", "amd64", "v3")] * 2 + [entry(D1, "linux", "386")],
                "linux/amd64") == D1                       # 386 code runs on amd64
    assert pick([entry(D1, "linux", "arm", "v7"), entry(D2, "linux", "arm64")],
                "linux/arm64") == D2


def test_annotated_attestation_and_entries_without_platform():
    attest = entry(D1, "linux", "amd64",
                   annotations={"vnd.docker.reference.type": "attestation-manifest"})
    bare = {"mediaType": m.OCI_MANIFEST, "digest": D3, "size": 5}
    assert pick([attest, entry(D2, "linux", "amd64")], "linux/amd64") == D2
    assert pick([bare, entry(D2, "linux", "amd64")], "linux/amd64") == D2   # taken last
    assert pick([bare, entry(D2, "linux", "s390x")], "linux/amd64") == D3


# ---------------------------------------------------------------- load and pull choose alike
PLATFORMS = [  # each index entry: (os, arch, variant)
    ("linux", "arm", "v6"), ("linux", "arm", "v7"), ("linux", "arm64", "v8"),
    ("linux", "amd64", None), ("linux", "amd64", "v3"), ("unknown", "unknown", None),
    ("linux", "ppc64le", None),
]


@pytest.fixture(scope="module")
def index_images():
    """One small image per platform and the index listing them (attestation included)."""
    images = [f.make_image([[("file", "arch", f"{a}/{v}")]], arch=a) for _, a, v in PLATFORMS]
    entries = [f.descriptor(img.manifest, f.OCI_MANIFEST, platform={
        "os": os_, "architecture": arch, **({"variant": v} if v else {})})
        for img, (os_, arch, v) in zip(images, PLATFORMS)]
    index = json.dumps({"schemaVersion": 2, "mediaType": f.OCI_INDEX,
                        "manifests": entries}).encode()
    return images, index


def loaded(tmp_path, images, index, want) -> str:
    layout = f.write_layout(str(tmp_path / "layout"), [(img, {}) for img in images],
                            extra_blobs=[index], index={
                                "schemaVersion": 2, "manifests": [f.descriptor(
                                    index, f.OCI_INDEX, annotations={archive.REF_ANNOTATION:
                                                                     "t"})]})
    store = Store(str(tmp_path / "store"))
    (name,) = archive.load(store, f"oci:{layout}:t", platform=want)
    return store.resolve(name).manifest_digest


class RecordingStore:
    def has_blob(self, digest):
        return False

    def reuse_layer(self, chain_id):
        return self.has_layer(chain_id)

    @contextlib.contextmanager
    def importing(self):
        yield self

    def add_image(self, names, manifest_bytes, config_bytes):
        self.manifest = manifest_bytes


def pulled(images, index, want) -> str:
    by_digest = {img.manifest_digest: img for img in images}
    script = [("GET", "/v2/", Response(200)),
              ("GET", "/manifests/t", Response(200, index, {"Content-Type": f.OCI_INDEX}))]
    for digest, img in by_digest.items():
        script.append(("GET", f"/manifests/{digest}",
                       Response(200, img.manifest, {"Content-Type": f.OCI_MANIFEST})))
        script.append(("GET", f"/blobs/{img.config_digest}", Response(200, img.config)))
    store = RecordingStore()
    # the images' layers are "in the store" (has_layer): only the choice is exercised
    store.has_layer = lambda chain_id: True
    registry.pull(store, "reg.test/multi:t", platform=want, hosts_config=hosts.HostsConfig(),
                  env={}, authfile="/nonexistent", session_factory=lambda ep: Session(script))
    return m.sha256_digest(store.manifest)


@pytest.mark.parametrize("want,expected", [
    ("linux/arm/v7", 1), ("linux/arm/v6", 0), ("linux/arm64", 2), ("linux/arm64/v8", 2),
    ("linux/amd64", 3), ("linux/amd64/v2", 3), ("linux/amd64/v3", 4), ("linux/amd64/v4", 4),
    ("linux/ppc64le", 6), ("linux/s390x", None),
    ({"os": "linux", "architecture": "x86_64", "variant": "v3"}, 4),
])
def test_load_and_pull_pick_the_same_manifest(tmp_path, index_images, want, expected):
    images, index = index_images
    if expected is None:
        with pytest.raises(ImageError, match="no image for platform linux/s390x"):
            loaded(tmp_path, images, index, want)
        with pytest.raises(RegistryError, match="no image for platform linux/s390x"):
            pulled(images, index, want)
        return
    assert loaded(tmp_path, images, index, want) == pulled(images, index, want) == \
        images[expected].manifest_digest


def test_load_and_pull_agree_on_an_entry_without_platform(tmp_path, index_images):
    # the loader used to take a platform-less entry first, the registry client to skip it
    images, _ = index_images
    bare = f.make_image([[("file", "arch", "none")]])
    entries = [f.descriptor(bare.manifest, f.OCI_MANIFEST),
               f.descriptor(images[3].manifest, f.OCI_MANIFEST,
                            platform={"os": "linux", "architecture": "amd64"})]
    index = json.dumps({"schemaVersion": 2, "mediaType": f.OCI_INDEX,
                        "manifests": entries}).encode()
    for want, expected in (("linux/amd64", images[3]), ("linux/s390x", bare)):
        assert loaded(tmp_path / want[6:], [bare, images[3]], index, want) == \
            pulled([bare, images[3]], index, want) == expected.manifest_digest
