import fcntl
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

import imagefactory as f
from minictr.errors import ImageError
from minictr.image import archive, manifests
from minictr.image.store import Store, lock_file

HOST = manifests.host_platform()
REF = "org.opencontainers.image.ref.name"
SKOPEO = "/usr/bin/skopeo"


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "root"), rootless=os.geteuid() != 0)


@pytest.fixture
def image():
    return f.make_image(f.BUSYBOXISH)


def trusted(store):
    out = []
    for sub in ("blobs/sha256", "layers", "images/records"):
        path = os.path.join(store.root, sub)
        out += os.listdir(path) if os.path.isdir(path) else []
    return out


def test_is_transport():
    assert archive.is_transport("oci:/x") and archive.is_transport("oci-archive:/x.tar:t")
    assert archive.is_transport("docker-archive:/x.tar")
    assert not archive.is_transport("busybox") and not archive.is_transport("/x/oci")


def test_oci_layout_default_name_tag_and_ref_annotations(store, tmp_path, image):
    plain = f.write_layout(str(tmp_path / "My_Image"), [(image, {})])
    assert archive.load(store, plain) == ["localhost/my-image:latest"]
    assert archive.load(store, plain, tag="demo:1") == ["docker.io/library/demo:1"]
    tagged = f.write_layout(str(tmp_path / "tagged"), [(image, {"annotations": {REF: "v2"}})])
    assert archive.load(store, "oci:" + tagged) == ["localhost/tagged:v2"]
    assert archive.load(store, f"oci:{tagged}:v2") == ["localhost/tagged:v2"]
    full = f.write_layout(str(tmp_path / "full"),
                          [(image, {"annotations": {REF: "ghcr.io/o/r:t"}})])
    assert archive.load(store, full) == ["ghcr.io/o/r:t"]
    with pytest.raises(ImageError, match="no image named 'nope'"):
        archive.load(store, f"oci:{tagged}:nope")
    record = store.resolve("localhost/tagged:v2")
    assert record.manifest_digest == image.manifest_digest and record.id == image.config_digest
    assert store.read_image_file(record, "/etc/alias").startswith(b"root:")


def test_oci_archive_read_in_place(store, tmp_path, image):
    layout = f.write_layout(str(tmp_path / "l"), [(image, {"annotations": {REF: "1.0"}})])
    tar = f.tar_dir(layout, str(tmp_path / "app.tar"))
    assert archive.load(store, tar) == ["localhost/app:1.0"]
    assert archive.load(store, f"oci-archive:{tar}:1.0") == ["localhost/app:1.0"]
    assert not os.path.exists(tmp_path / "app")


def test_several_images_and_a_tag_for_one_only(store, tmp_path, image):
    other = f.make_image([f.BUSYBOXISH[0]])
    layout = f.write_layout(str(tmp_path / "two"), [(image, {"annotations": {REF: "a"}}),
                                                    (other, {"annotations": {REF: "b"}})])
    assert archive.load(store, layout) == ["localhost/two:a", "localhost/two:b"]
    with pytest.raises(ImageError, match="holds 2 images"):
        archive.load(store, layout, tag="x")


@pytest.mark.parametrize("form", ["classic", "oci"])
def test_docker_archive_both_forms(store, tmp_path, image, form):
    other = f.make_image([f.BUSYBOXISH[0], [("file", "extra", "x")]])   # shares a layer
    tar = f.docker_archive(str(tmp_path / "saved.tar"),
                           [(image, ["busybox:1.36"]), (other, ["ghcr.io/o/r:t"])], form=form)
    names = archive.load(store, tar)
    assert names == ["docker.io/library/busybox:1.36", "ghcr.io/o/r:t"]
    record = store.resolve("busybox:1.36")
    assert record.id == image.config_digest
    assert [l.diff_id for l in record.layers] == json.loads(image.config)["rootfs"]["diff_ids"]
    if form == "oci":                   # the real manifest, found through index.json
        assert record.manifest_digest == image.manifest_digest
    assert store.read_image_file(store.resolve("ghcr.io/o/r:t"), "/extra") == b"x"
    assert archive.load(store, f"docker-archive:{tar}:ghcr.io/o/r:t") == ["ghcr.io/o/r:t"]
    assert archive.load(store, f"docker-archive:{tar}:@0") == ["docker.io/library/busybox:1.36"]


def test_docker25_archive_with_an_attestation(store, tmp_path, image):
    tar = f.docker_archive(str(tmp_path / "saved.tar"), [(image, ["busybox:1.36"])], form="oci")
    work = tmp_path / "dir"
    shutil.unpack_archive(tar, work, "tar")
    statement = b'{"_type": "https://in-toto.io/Statement/v0.1"}'
    config = b"{}"
    attestation = json.dumps({
        "schemaVersion": 2, "mediaType": f.OCI_MANIFEST,
        "config": f.descriptor(config, f.OCI_CONFIG),
        "layers": [f.descriptor(statement, "application/vnd.in-toto+json")]}).encode()
    inner = json.dumps({"schemaVersion": 2, "mediaType": f.OCI_INDEX, "manifests": [
        f.descriptor(image.manifest, f.OCI_MANIFEST,
                     platform={"os": "linux", "architecture": "amd64"}),
        f.descriptor(attestation, f.OCI_MANIFEST,
                     platform={"os": "unknown", "architecture": "unknown"})]}).encode()
    for blob in (statement, config, attestation, inner):
        f.write_blob(str(work), blob)
    (work / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        f.descriptor(inner, f.OCI_INDEX)]}))
    assert archive.load(store, str(work)) == ["docker.io/library/busybox:1.36"]
    assert store.resolve("busybox:1.36").manifest_digest == image.manifest_digest


def test_untagged_docker_archive_is_named_by_id(store, tmp_path, image):
    tar = f.docker_archive(str(tmp_path / "anon.tar"), [(image, [])])
    assert archive.load(store, tar) == [image.config_digest]
    assert store.list_images()[0]["repository"] == "<none>"


def test_platform_selection_skips_attestations_and_other_arches(store, tmp_path):
    foreign = f.make_image(f.BUSYBOXISH, arch="s390x")
    mine = f.make_image(f.BUSYBOXISH, arch=HOST["architecture"])
    attestation = f.make_image([[("file", "sbom.json", "{}")]], arch="unknown")

    def plat(img):
        return {"os": "linux", "architecture": json.loads(img.config)["architecture"]}

    inner = {"schemaVersion": 2, "mediaType": f.OCI_INDEX, "manifests": [
        f.descriptor(attestation.manifest, f.OCI_MANIFEST,
                     platform={"os": "unknown", "architecture": "unknown"}),
        f.descriptor(foreign.manifest, f.OCI_MANIFEST, platform=plat(foreign)),
        f.descriptor(mine.manifest, f.OCI_MANIFEST, platform=plat(mine))]}
    inner_bytes = json.dumps(inner).encode()
    index = {"schemaVersion": 2, "mediaType": f.OCI_INDEX, "manifests": [
        f.descriptor(inner_bytes, f.OCI_INDEX, annotations={REF: "multi"})]}
    layout = f.write_layout(str(tmp_path / "multi"), [(foreign, {}), (mine, {}),
                                                      (attestation, {})],
                            extra_blobs=[inner_bytes], index=index)
    assert archive.load(store, layout) == ["localhost/multi:multi"]
    assert store.resolve("localhost/multi:multi").manifest_digest == mine.manifest_digest
    with pytest.raises(ImageError, match="no image for platform linux/mips"):
        archive.load(store, layout, platform={"os": "linux", "architecture": "mips"})


def _evil_layout(tmp_path, image, kind):
    doc = json.loads(image.manifest if kind == "manifest" else b"{}")
    if kind == "manifest":           # an image manifest that also claims to be an index
        doc["manifests"] = []
        data, media = json.dumps(doc).encode(), f.OCI_MANIFEST
    else:                            # an index that also carries layers
        doc = {"schemaVersion": 2, "mediaType": f.OCI_INDEX,
               "manifests": [f.descriptor(image.manifest, f.OCI_MANIFEST)],
               "layers": json.loads(image.manifest)["layers"]}
        data, media = json.dumps(doc).encode(), f.OCI_INDEX
    index = {"schemaVersion": 2, "manifests": [f.descriptor(data, media)]}
    return f.write_layout(str(tmp_path / kind), [(image, {})], extra_blobs=[data], index=index)


@pytest.mark.parametrize("kind", ["manifest", "index"])
def test_ambiguous_documents_are_refused(store, tmp_path, image, kind):
    with pytest.raises(ImageError, match="CVE-2021-41190"):
        archive.load(store, _evil_layout(tmp_path, image, kind))
    assert trusted(store) == []


def test_descriptor_media_type_must_match_document(store, tmp_path, image):
    index = {"schemaVersion": 2, "manifests": [f.descriptor(image.manifest, f.OCI_INDEX)]}
    layout = f.write_layout(str(tmp_path / "l"), [(image, {})], index=index)
    with pytest.raises(ImageError, match="contradicts"):
        archive.load(store, layout)


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "media_type", "manifest"])
def test_bad_sources_store_nothing(store, tmp_path, damage):
    image = f.make_image([f.BUSYBOXISH[0]], layer_media_type=(
        "application/vnd.oci.image.layer.v1.tar+lz4" if damage == "media_type" else None))
    layout = f.write_layout(str(tmp_path / "bad"), [(image, {})])
    layer = os.path.join(layout, "blobs/sha256", image.layer_digests[0][7:])
    data = open(layer, "rb").read()
    if damage == "corrupt":
        data = data[:20] + bytes([data[20] ^ 0xFF]) + data[21:]
    elif damage == "truncated":
        data = data[:-30]
    elif damage == "manifest":
        layer = os.path.join(layout, "blobs/sha256", image.manifest_digest[7:])
        data = open(layer, "rb").read().replace(b"schemaVersion", b"schemaVersioN")
    open(layer, "wb").write(data)
    with pytest.raises(ImageError) as err:
        archive.load(store, layout)
    assert str(err.value).strip()
    assert trusted(store) == []


def test_not_an_image(store, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="not an OCI image layout"):
        archive.load(store, str(tmp_path / "empty"))
    with pytest.raises(ImageError, match="no such file"):
        archive.load(store, str(tmp_path / "missing.tar"))
    (tmp_path / "x.tar.gz").write_bytes(b"\x1f\x8b\x08junk")
    with pytest.raises(ImageError, match="compressed") as err:
        archive.load(store, str(tmp_path / "x.tar.gz"))
    assert err.value.hint


def test_manifest_paths_cannot_leave_the_archive(store, tmp_path, image):
    tar = f.docker_archive(str(tmp_path / "evil.tar"), [(image, ["evil:1"])])
    work = tmp_path / "unpacked"
    shutil.unpack_archive(tar, work, "tar")
    entries = json.loads((work / "manifest.json").read_text())
    entries[0]["Config"] = "../../../../etc/passwd"      # clamped to the archive's root
    (work / "manifest.json").write_text(json.dumps(entries))
    with pytest.raises(ImageError, match="cannot read"):
        archive.load(store, "docker-archive:" + str(work))
    os.symlink("/etc/passwd", work / "cfg.json")
    entries[0]["Config"] = "cfg.json"
    (work / "manifest.json").write_text(json.dumps(entries))
    with pytest.raises(ImageError, match="outside the directory"):
        archive.load(store, "docker-archive:" + str(work))


def test_hardlink_into_a_lower_layer_with_parallel_unpack(store, tmp_path):
    layers = [[("dir", "bin"), ("file", "bin/busybox", b"BB" * 5000, 0o755)]]
    layers += [[("dir", "bin"), ("hardlink", f"bin/tool{i}", "bin/busybox")] for i in range(4)]
    image = f.make_image(layers)
    layout = f.write_layout(str(tmp_path / "links"), [(image, {})])
    archive.load(store, layout, jobs=4)
    record = store.resolve("localhost/links")
    assert store.read_image_file(record, "/bin/tool3") == b"BB" * 5000


def _minictr(root, *args):
    return subprocess.run([sys.executable, "-m", "minictr", "--root", root, *args],
                          capture_output=True, text=True)


def _flock_waiters(path: str) -> int:
    """How many processes wait for a flock on ``path`` (/proc/locks marks waiters '->')."""
    ino = os.stat(path).st_ino
    with open("/proc/locks") as locks:
        return sum(1 for line in locks if "->" in line and f":{ino} " in line)


def test_two_concurrent_load_processes_both_succeed(tmp_path):
    layers = [[("file", f"l{i}/f{j}", os.urandom(2048)) for j in range(40)] for i in range(4)]
    image = f.make_image(layers)
    layout = f.write_layout(str(tmp_path / "same"), [(image, {})])
    root = str(tmp_path / "root")
    # hold the bottom layer's lock until both processes wait for it: they then really race
    os.makedirs(os.path.join(root, "locks"))
    bottom = json.loads(image.config)["rootfs"]["diff_ids"][0]
    lock_path = os.path.join(root, "locks", f"layer-{bottom[7:]}.lock")
    held = lock_file(lock_path, fcntl.LOCK_EX)
    cmd = [sys.executable, "-m", "minictr", "--root", root, "load", layout]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        deadline = time.monotonic() + 120          # a guard against a hang, not a measurement
        while _flock_waiters(lock_path) < 2 and time.monotonic() < deadline and \
                all(p.poll() is None for p in procs):
            time.sleep(0.05)
        assert _flock_waiters(lock_path) == 2
    finally:
        os.close(held)
    outs = [p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all(out.strip() == "Loaded image: localhost/same:latest" for out, _ in outs)
    assert len(os.listdir(os.path.join(root, "layers"))) == 4
    assert os.listdir(os.path.join(root, "tmp")) == []
    images = json.loads(_minictr(root, "images", "--format", "json").stdout)
    assert [(i["repository"], i["tag"]) for i in images] == [("localhost/same", "latest")]


def test_cli_end_to_end(tmp_path, image):
    root = str(tmp_path / "root")
    tar = f.docker_archive(str(tmp_path / "d.tar"), [(image, ["busybox:1.36"])])
    assert _minictr(root, "load", tar).stdout == "Loaded image: docker.io/library/busybox:1.36\n"
    listing = _minictr(root, "images").stdout.splitlines()
    assert listing[1].split()[:3] == ["busybox", "1.36", image.config_digest[7:19]]
    info = json.loads(_minictr(root, "inspect", "busybox:1.36").stdout)[0]
    assert info["id"] == image.config_digest
    missing = _minictr(root, "inspect", "nope")
    assert missing.returncode == 1 and "minictr: hint:" in missing.stderr
    assert _minictr(root, "rmi", "busybox:1.36").stdout == \
        "Untagged: docker.io/library/busybox:1.36\n"
    assert _minictr(root, "gc").stdout.startswith("removed 4 blobs, 2 layers")


def test_missing_images_exit_1_for_inspect_and_rmi_as_docker(tmp_path, image):
    """docker: "No such image", exit 1 (125 stays for minictr's own failures); what exists is
    still inspected or removed (issue 12)."""
    root = str(tmp_path / "root")
    tar = f.docker_archive(str(tmp_path / "d.tar"), [(image, ["busybox:1.36"])])
    _minictr(root, "load", tar)
    res = _minictr(root, "inspect", "busybox:1.36", "nope")
    assert res.returncode == 1 and "'nope' is not in the store" in res.stderr
    assert [i["id"] for i in json.loads(res.stdout)] == [image.config_digest]
    res = _minictr(root, "rmi", "nope", "busybox:1.36")
    assert res.returncode == 1 and "'nope' is not in the store" in res.stderr
    assert res.stdout == "Untagged: docker.io/library/busybox:1.36\n"


def test_short_names_find_locally_loaded_images_as_podman(tmp_path, image):
    """`load` of an OCI layout without a registry names it localhost/NAME; `run NAME` must not
    go to Docker Hub for it (podman looks for localhost/NAME first)."""
    root = str(tmp_path / "root")
    layout = f.write_layout(str(tmp_path / "busybox"), [(image, {"annotations": {REF: "1.36"}})])
    assert _minictr(root, "load", layout).stdout == "Loaded image: localhost/busybox:1.36\n"
    info = json.loads(_minictr(root, "inspect", "busybox:1.36").stdout)
    assert info and info[0]["name"] == "localhost/busybox:1.36"
    spec = _minictr(root, "spec", "busybox:1.36", "true")
    assert spec.returncode == 0, spec.stderr
    assert json.loads(spec.stdout)["annotations"]["org.minictr.image"] == \
        "localhost/busybox:1.36"
    assert _minictr(root, "rmi", "busybox:1.36").stdout == "Untagged: localhost/busybox:1.36\n"


@pytest.mark.skipif(not os.path.exists(SKOPEO), reason="skopeo is not installed")
def test_digests_agree_with_skopeo(store, tmp_path, image):
    layout = f.write_layout(str(tmp_path / "src"), [(image, {"annotations": {REF: "latest"}})])
    copies = {"oci-archive": f"oci-archive:{tmp_path}/o.tar:latest",
              "docker-archive": f"docker-archive:{tmp_path}/d.tar:example/app:1"}
    for transport, dest in copies.items():
        subprocess.run([SKOPEO, "copy", "-q", f"oci:{layout}:latest", dest], check=True,
                       capture_output=True)
        source = dest.rsplit(":", 2 if transport == "docker-archive" else 1)[0]
        raw = subprocess.run([SKOPEO, "inspect", "--raw", source], check=True,
                             capture_output=True).stdout
        config = subprocess.run([SKOPEO, "inspect", "--config", "--raw", source], check=True,
                                capture_output=True).stdout
        name = archive.load(store, source)[0]
        info = store.inspect(name)
        manifest = json.loads(raw)
        assert info["digest"] == f.digest_of(raw), transport
        assert info["id"] == manifest["config"]["digest"] == f.digest_of(config), transport
        assert [l["digest"] for l in info["layers"]] == [l["digest"] for l in manifest["layers"]]
        assert [l["diff_id"] for l in info["layers"]] == json.loads(config)["rootfs"]["diff_ids"]
