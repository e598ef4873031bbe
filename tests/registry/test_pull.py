"""Pulling from a real docker-registry: plain http, multi-arch indexes, errors, skipping what
the store has."""
from __future__ import annotations

import json
import os

import pytest

from minictr.errors import ImageError, RegistryError
from minictr.image import manifests, registry

pytestmark = pytest.mark.registry


def _pull(store, ref, no_hosts, authfile, **kw):
    return registry.pull(store, ref, hosts_config=no_hosts, authfile=authfile, env={}, **kw)


def _chain_ids(layout, store, manifest_desc):
    with open(os.path.join(layout["layouts"]["v1"], "blobs", "sha256",
                           manifest_desc["digest"][7:]), "rb") as f:
        manifest = json.load(f)
    with open(os.path.join(layout["layouts"]["v1"], "blobs", "sha256",
                           manifest["config"]["digest"][7:]), "rb") as f:
        config = json.load(f)
    return manifest, manifests.chain_ids(config["rootfs"]["diff_ids"])


def test_pull_plain_http_stores_every_layer(plain, layout, store, no_hosts, authfile):
    name = _pull(store, f"{plain.host}/test/app:v1", no_hosts, authfile)

    assert name == f"{plain.host}/test/app:v1"
    manifest, chains = _chain_ids(layout, store, layout["v1"])
    assert all(store.has_layer(c) for c in chains)
    assert all(store.has_blob(d["digest"]) for d in manifest["layers"])
    assert store.has_blob(layout["v1"]["digest"])            # the manifest, by add_image
    big = os.path.join(store.layer_dir(chains[1]), "data", "big.bin")
    assert os.path.getsize(big) == 3 << 20


def test_second_pull_downloads_no_blob(proxy, layout, store, no_hosts, authfile):
    ref = f"{proxy.host}/test/app:v1"
    _pull(store, ref, no_hosts, authfile, tls_verify=False)
    first = len(proxy.blob_gets())
    _pull(store, ref, no_hosts, authfile, tls_verify=False)

    assert first == 3                                         # config + two layers
    assert len(proxy.blob_gets()) == first


def test_pull_by_digest(plain, layout, store, no_hosts, authfile):
    ref = f"{plain.host}/test/app@{layout['v1']['digest']}"
    assert _pull(store, ref, no_hosts, authfile) == ref
    assert store.has_blob(layout["v1"]["digest"])


def test_unknown_tag_is_a_clear_error(plain, store, no_hosts, authfile):
    with pytest.raises(RegistryError) as err:
        _pull(store, f"{plain.host}/test/app:nope", no_hosts, authfile)
    assert str(err.value) == f"manifest unknown: {plain.host}/test/app:nope"
    assert "tags/list" in err.value.hint


def test_unknown_repository_is_a_clear_error(plain, store, no_hosts, authfile):
    with pytest.raises(RegistryError, match="manifest unknown"):
        _pull(store, f"{plain.host}/nobody/here:v1", no_hosts, authfile)


def test_connection_refused_hints_at_tls_verify(store, no_hosts, authfile):
    from registry_harness import free_port

    with pytest.raises(RegistryError) as err:
        _pull(store, f"127.0.0.1:{free_port()}/x/y:v1", no_hosts, authfile)
    assert "cannot reach registry" in str(err.value)
    assert "--tls-verify=false" in err.value.hint


def test_multiarch_index_default_platform(empty_registry, layout, store, no_hosts, authfile):
    from registry_harness import push

    push(layout, empty_registry.host, "test/multi", tag="multi")
    host = manifests.host_platform()
    if host["architecture"] not in ("amd64", "arm64"):
        pytest.skip(f"the test index has amd64 and arm64 images, this host is {host}")
    _pull(store, f"{empty_registry.host}/test/multi:multi", no_hosts, authfile)
    want = layout["amd"] if host["architecture"] == "amd64" else layout["arm"]
    assert store.has_blob(want["digest"])


@pytest.mark.parametrize("platform,which", [("linux/arm64", "arm"), ("linux/arm64/v8", "arm"),
                                            ("linux/amd64", "amd")])
def test_multiarch_index_platform_option(empty_registry, layout, store, no_hosts, authfile,
                                         platform, which):
    from registry_harness import push

    push(layout, empty_registry.host, "test/multi", tag="multi")
    _pull(store, f"{empty_registry.host}/test/multi:multi", no_hosts, authfile, platform=platform)
    other = "amd" if which == "arm" else "arm"
    assert store.has_blob(layout[which]["digest"])
    assert not store.has_blob(layout[other]["digest"])


def test_multiarch_index_missing_platform(empty_registry, layout, store, no_hosts, authfile):
    from registry_harness import push

    push(layout, empty_registry.host, "test/multi", tag="multi")
    with pytest.raises(RegistryError) as err:
        _pull(store, f"{empty_registry.host}/test/multi:multi", no_hosts, authfile,
              platform="linux/s390x")
    assert "no image for platform linux/s390x" in str(err.value)
    assert "linux/amd64, linux/arm64/v8)" in str(err.value)   # the attestation is not listed


def test_invalid_platform(plain, store, no_hosts, authfile):
    with pytest.raises(ImageError, match="invalid platform"):
        _pull(store, f"{plain.host}/test/app:v1", no_hosts, authfile, platform="linux")


def test_progress_reports_each_layer(plain, store, no_hosts, authfile):
    import io

    from minictr.progress import make_progress

    out = io.StringIO()
    _pull(store, f"{plain.host}/test/app:v1", no_hosts, authfile, progress=make_progress(out))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"{plain.host}/test/app:v1: manifest sha256:")
    assert sum(line.endswith(": pulled") for line in lines) == 2


def test_mirror_serves_the_pull(plain, layout, store, authfile):
    """registries.json: a mirror for an unreachable registry name is used in its place."""
    from minictr.image.hosts import HostsConfig, RegistryConf

    hosts = HostsConfig(registries={"registry.invalid:5000": RegistryConf(
        mirrors=((plain.host, True),))})
    name = _pull(store, "registry.invalid:5000/test/app:v1", hosts, authfile)
    assert name == "registry.invalid:5000/test/app:v1"
    assert store.has_blob(layout["v1"]["digest"])


def test_failing_mirror_falls_back_to_the_registry(plain, layout, store, authfile):
    from registry_harness import free_port

    from minictr.image.hosts import HostsConfig, RegistryConf

    hosts = HostsConfig(registries={plain.host: RegistryConf(
        mirrors=((f"127.0.0.1:{free_port()}", True),))})
    messages = []

    class Progress:
        def message(self, text): messages.append(text)
        def start(self, *a): pass
        def update(self, *a): pass
        def finish(self, *a): pass
        def close(self): pass

    assert _pull(store, f"{plain.host}/test/app:v1", hosts, authfile, progress=Progress())
    assert "cannot reach registry" in messages[0] and "trying the next" in messages[0]


def test_docker_schema2_image(empty_registry, layout, store, no_hosts, authfile):
    """The same image converted by skopeo to Docker's v2 schema 2 media types."""
    from registry_harness import skopeo_push

    skopeo_push(layout["layouts"]["v1"], "v1", f"{empty_registry.host}/test/docker:v1",
                fmt="v2s2")
    import urllib.request

    req = urllib.request.Request(f"http://{empty_registry.host}/v2/test/docker/manifests/v1",
                                 headers={"Accept": manifests.ACCEPT})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Content-Type"] == manifests.DOCKER_MANIFEST
    _pull(store, f"{empty_registry.host}/test/docker:v1", no_hosts, authfile)
    _, chains = _chain_ids(layout, store, layout["v1"])
    assert all(store.has_layer(c) for c in chains)      # same diff_ids, so the same ChainIDs


def test_pulled_layers_copy_up_from_the_layers_below(empty_registry, store, no_hosts, authfile,
                                                     tmp_path):
    # layers arrive in parallel; one that reaches into a lower layer waits for it (copy-up:
    # image/copyup.py), as `minictr load` does
    import gzip
    import io
    import tarfile

    from registry_harness import Layout, skopeo_push

    def tar(members):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for info, data in members:
                tf.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()

    def info(name, kind=tarfile.REGTYPE, mode=0o644, data=b"", **kw):
        i = tarfile.TarInfo(name)
        i.type, i.mode, i.size = kind, mode, len(data) if kind == tarfile.REGTYPE else 0
        for k, v in kw.items():
            setattr(i, k, v)
        return i, data if kind == tarfile.REGTYPE else None

    lay = Layout(str(tmp_path / "layout"))
    tars = [tar([info("home", tarfile.DIRTYPE, 0o755), info("home/u", tarfile.DIRTYPE, 0o700,
                                                             uid=1000),
                 info("bin", tarfile.DIRTYPE, 0o755), info("bin/su", mode=0o4755, data=b"su")]),
            tar([info("home/u/.bashrc", data=b"rc"),
                 info("bin/su2", tarfile.LNKTYPE, linkname="bin/su")])]
    layers = [lay.blob(gzip.compress(t, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip")
              for t in tars]
    config = lay.blob(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": ["sha256:" + __import__("hashlib").sha256(t).hexdigest()
                                       for t in tars]}}).encode(),
        "application/vnd.oci.image.config.v1+json")
    manifest = lay.blob(json.dumps({"schemaVersion": 2, "mediaType": manifests.OCI_MANIFEST,
                                    "config": config, "layers": layers}).encode(),
                        manifests.OCI_MANIFEST)
    lay.tag(manifest, "cu")
    skopeo_push(lay.path, "cu", f"{empty_registry.host}/test/copyup:cu")
    image = store.resolve(_pull(store, f"{empty_registry.host}/test/copyup:cu", no_hosts,
                                authfile))
    top = store.layer_dir(image.layers[1].chain_id)
    st = os.stat(os.path.join(top, "home/u"))
    assert (st.st_mode & 0o7777, st.st_uid) == (0o700, 1000)
    su, su2 = (os.stat(os.path.join(top, "bin", n)) for n in ("su", "su2"))
    assert su.st_ino == su2.st_ino and su2.st_mode & 0o7777 == 0o4755
