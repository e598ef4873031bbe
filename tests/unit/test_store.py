import fcntl
import hashlib
import io
import json
import os
import subprocess
import sys
import threading

import pytest

import imagefactory as f
from minictr.errors import ImageError
from minictr.image.store import Store, atomic_write, chain_ids

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "root"), rootless=os.geteuid() != 0)


def entries(store_root):
    """Everything trusted in the store: blobs and layer entries."""
    out = []
    for sub in ("blobs/sha256", "layers"):
        path = os.path.join(store_root, sub)
        out += [f"{sub}/{n}" for n in os.listdir(path)] if os.path.isdir(path) else []
    return sorted(out)


def import_image(store, image, names=("localhost/t:latest",)):
    manifest = json.loads(image.manifest)
    diff_ids = json.loads(image.config)["rootfs"]["diff_ids"]
    chains = chain_ids(diff_ids)
    for layer, diff_id, chain in zip(manifest["layers"], diff_ids, chains):
        store.import_layer(io.BytesIO(image.blobs[layer["digest"]]),
                           media_type=layer["mediaType"], digest=layer["digest"],
                           diff_id=diff_id, chain_id=chain)
    return store.add_image(list(names), image.manifest, image.config)


def test_chain_ids_follow_the_image_spec():
    a, b, c = ("sha256:" + x * 64 for x in "abc")
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, ab, abc]


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "f.json"
    atomic_write(str(target), b"one")
    atomic_write(str(target), b"two", mode=0o600)
    assert target.read_bytes() == b"two"
    assert os.stat(target).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["f.json"]


def test_write_blob_verifies(store):
    digest = store.write_blob(b"hello")
    assert open(store.blob_path(digest), "rb").read() == b"hello"
    with pytest.raises(ImageError, match="failed verification"):
        store.write_blob(b"hello", digest="sha256:" + "0" * 64)
    assert not store.has_blob("sha256:" + "0" * 64)
    assert os.listdir(os.path.join(store.root, "tmp")) == []


def test_blob_writer_resumes_restarts_and_cleans_up(store):
    data = b"x" * 1000
    digest = f.digest_of(data)
    with store.blob_writer(digest) as w:
        w.write(b"garbage")
        w.restart()                      # a server that cannot resume: start over
        w.write(data[:400])
        assert w.size == 400             # what a Range request would resume from
        w.write(data[400:])
    assert store.has_blob(digest)
    with pytest.raises(RuntimeError):
        with store.blob_writer("sha256:" + "1" * 64) as w:
            w.write(b"partial")
            raise RuntimeError("connection dropped")
    assert os.listdir(os.path.join(store.root, "tmp")) == []
    with pytest.raises(ImageError):
        store.blob_writer("sha256:../../etc")


def test_import_layer_stores_blob_and_overlay_tree(store):
    image = f.make_image(f.BUSYBOXISH)
    record = import_image(store, image)
    bottom = store.layer_dir(record.layers[0].chain_id)
    assert open(os.path.join(bottom, "etc/passwd")).read().startswith("root:")
    assert os.stat(os.path.join(bottom, "bin/sh")).st_mode & 0o777 == 0o755
    for layer in record.layers:
        assert store.has_blob(layer.digest) and store.has_layer(layer.chain_id)
    assert os.listdir(os.path.join(store.root, "tmp")) == []


class _Unreadable(io.RawIOBase):
    def read(self, n=-1):
        raise AssertionError("the stream of an existing layer must not be read")


def test_import_of_an_existing_layer_reads_nothing(store):
    image = f.make_image(f.BUSYBOXISH[:1])
    record = import_image(store, image)
    layer = record.layers[0]
    store.import_layer(_Unreadable(), media_type=GZIP, digest=layer.digest,
                       diff_id=layer.diff_id, chain_id=layer.chain_id)


@pytest.mark.parametrize("damage", ["digest", "diff_id", "truncated", "garbage", "media_type"])
def test_failed_import_leaves_nothing(store, damage):
    tar = f.tar_bytes(f.BUSYBOXISH[0])
    blob = f.compress(tar, "gzip")
    digest, diff_id, media = f.digest_of(blob), f.digest_of(tar), GZIP
    if damage == "digest":
        digest = "sha256:" + "0" * 64
    elif damage == "diff_id":
        diff_id = "sha256:" + "0" * 64
    elif damage == "truncated":
        blob = blob[: len(blob) // 2]
        digest = f.digest_of(blob)
    elif damage == "garbage":
        blob = b"not gzip at all" * 10
        digest = f.digest_of(blob)
    else:
        media = "application/vnd.example.layer.v1.tar+lz4"
    with pytest.raises(ImageError) as err:
        store.import_layer(io.BytesIO(blob), media_type=media, digest=digest, diff_id=diff_id,
                           chain_id=diff_id)
    assert str(err.value)
    assert entries(store.root) == []
    tmp = os.path.join(store.root, "tmp")
    assert not os.path.isdir(tmp) or os.listdir(tmp) == []


def test_concurrent_imports_of_one_layer_do_the_work_once(store):
    tar = f.tar_bytes(f.BUSYBOXISH[0])
    blob = f.compress(tar, "gzip")
    reads = []

    class Counting(io.BytesIO):
        def read(self, n=-1):
            reads.append(id(self))
            return super().read(n)

    streams = [Counting(blob), Counting(blob)]
    errors = []

    def work(stream):
        try:
            Store(store.root, rootless=store.rootless).import_layer(
                stream, media_type=GZIP, digest=f.digest_of(blob), diff_id=f.digest_of(tar),
                chain_id=f.digest_of(tar))
        except Exception as err:      # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(s,)) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({i for i in reads}) == 1
    assert store.has_layer(f.digest_of(tar))


def test_add_image_needs_every_layer(store):
    image = f.make_image(f.BUSYBOXISH)
    with pytest.raises(ImageError, match="not in the store"):
        store.add_image(["x"], image.manifest, image.config)
    assert store.list_images() == []


def test_add_image_verifies_config(store):
    image = f.make_image(f.BUSYBOXISH[:1])
    import_image(store, image)
    with pytest.raises(ImageError, match="failed verification"):
        store.add_image(["y"], image.manifest, image.config + b" ")


def test_adding_an_image_the_store_holds_writes_nothing(store, monkeypatch):
    """`run oci:DIR:TAG` imports the same image at every run: the second add_image finds its
    blobs, record and names and writes nothing (no fsync, no tag lock); a new name, or a blob
    gone, is written as before."""
    image = f.make_image(f.BUSYBOXISH[:1])
    first = import_image(store, image)
    writes = []
    real = atomic_write.__globals__["atomic_write"]
    monkeypatch.setitem(Store.add_image.__globals__, "atomic_write",
                        lambda *a, **k: (writes.append(a[0]), real(*a, **k)))
    again = store.add_image(["localhost/t:latest"], image.manifest, image.config)
    assert writes == [] and again.id == first.id and again.name == first.name
    store.add_image(["localhost/t:latest", "localhost/t:2"], image.manifest, image.config)
    assert [os.path.basename(w) for w in writes][-1] == "tags.json"
    assert store.resolve("localhost/t:2").id == first.id
    writes.clear()
    os.unlink(store.blob_path(json.loads(image.manifest)["config"]["digest"]))
    store.add_image(["localhost/t:latest"], image.manifest, image.config)
    assert writes and store.has_blob(json.loads(image.manifest)["config"]["digest"])


def test_resolve_by_name_id_prefix_and_digest(store):
    image = f.make_image(f.BUSYBOXISH)
    import_image(store, image, names=["busybox:1.36", "ghcr.io/o/r:t"])
    for name, want in [("busybox:1.36", "docker.io/library/busybox:1.36"),
                       ("docker.io/library/busybox:1.36", "docker.io/library/busybox:1.36"),
                       ("ghcr.io/o/r:t", "ghcr.io/o/r:t"),
                       (f"busybox@{image.manifest_digest}",
                        f"docker.io/library/busybox@{image.manifest_digest}")]:
        record = store.resolve(name)
        assert record.name == want
        assert record.manifest_digest == image.manifest_digest
    assert store.resolve(image.config_digest).id == image.config_digest
    assert store.resolve(image.config_digest[7:19]).id == image.config_digest
    assert store.resolve("busybox:1.36").config["config"]["Cmd"] == ["/bin/sh"]
    assert set(store.resolve("busybox:1.36").names) == {"docker.io/library/busybox:1.36",
                                                        "ghcr.io/o/r:t"}
    with pytest.raises(ImageError) as err:
        store.resolve("busybox")            # :latest was never stored
    assert "minictr pull" in err.value.hint and "minictr load" in err.value.hint
    with pytest.raises(ImageError):
        store.resolve(f"other@{image.manifest_digest}")


OVERLAY_IMAGE = [
    [("dir", "etc"), ("file", "etc/passwd", "bottom\n"), ("file", "etc/shadow", "secret\n"),
     ("dir", "opt"), ("file", "opt/old", "old\n"), ("dir", "lib"), ("file", "lib/real", "lib\n"),
     ("file", "etc/deep", "deep\n")],
    [("whiteout", "etc/shadow"), ("opaque", "opt"), ("file", "opt/new", "new\n"),
     ("symlink", "etc/rel", "../lib/real"), ("symlink", "etc/abs", "/lib/real"),
     ("symlink", "etc/escape", "../../../../../../etc/hostname"),
     ("symlink", "etc/loop", "loop"), ("symlink", "libdir", "lib"),
     ("file", "etc/passwd", "top\n")],
]


def test_read_image_file_follows_overlay_rules_and_stays_inside(store, tmp_path):
    record = import_image(store, f.make_image(OVERLAY_IMAGE))
    read = lambda p: store.read_image_file(record, p)   # noqa: E731
    assert read("/etc/passwd") == b"top\n"              # topmost layer wins
    assert read("/etc/shadow") is None                  # whiteout
    assert read("/opt/old") is None                     # opaque dir hides the lower one
    assert read("/opt/new") == b"new\n"
    assert read("/etc/deep") == b"deep\n"               # dirs merge
    assert read("/etc/rel") == b"lib\n"
    assert read("/etc/abs") == b"lib\n"
    assert read("/libdir/real") == b"lib\n"             # symlinked directory
    assert read("etc/../etc/./passwd") == b"top\n"
    assert read("/../../etc/passwd") == b"top\n"        # '..' stops at the image root
    assert read("/etc/escape") is None                  # /etc/hostname inside, not the host's
    assert read("/etc/loop") is None                    # ELOOP
    assert read("/etc") is None                         # a directory
    assert read("/etc/passwd/x") is None                # ENOTDIR
    assert read("/nothing") is None


def test_list_inspect_remove_and_gc(store):
    image = f.make_image(f.BUSYBOXISH)
    other = f.make_image([f.BUSYBOXISH[0]])             # shares the bottom layer
    import_image(store, image, names=["busybox:1.36", "busybox:latest"])
    import_image(store, other, names=["localhost/small"])
    rows = store.list_images()
    assert [(r["repository"], r["tag"]) for r in rows] == [
        ("busybox", "1.36"), ("busybox", "latest"), ("localhost/small", "latest")]
    assert rows[0]["id"] == image.config_digest and rows[0]["digest"] == image.manifest_digest
    assert rows[0]["size"] > 0 and rows[0]["created"] == "2024-01-01T00:00:00Z"
    info = store.inspect("busybox:1.36")
    assert info["id"] == image.config_digest and info["digest"] == image.manifest_digest
    assert [l["digest"] for l in info["layers"]] == image.layer_digests
    assert all(l["chain_id"] and l["diff_id"] for l in info["layers"])
    assert info["manifest"] == json.loads(image.manifest)

    with pytest.raises(ImageError, match="several names"):
        store.remove_image(image.config_digest)
    assert store.gc() == {"blobs": 0, "layers": 0, "bytes": 0}
    assert store.remove_image("busybox:1.36") == "docker.io/library/busybox:1.36"
    assert store.resolve("busybox").id == image.config_digest       # still tagged
    assert store.remove_image("busybox") == "docker.io/library/busybox:latest"
    with pytest.raises(ImageError):
        store.resolve(image.config_digest)                           # record gone
    result = store.gc()
    # the top layer, its blob, the manifest and config blobs; the shared bottom layer stays
    assert result["layers"] == 1 and result["blobs"] == 3 and result["bytes"] > 0
    small = store.resolve("localhost/small")
    assert store.read_image_file(small, "/etc/passwd").startswith(b"root:")


def test_gc_waits_for_writers_and_removes_stale_temporaries(store):
    tar = f.tar_bytes(f.BUSYBOXISH[0])
    blob = f.compress(tar, "gzip")
    store.import_layer(io.BytesIO(blob), media_type=GZIP, digest=f.digest_of(blob),
                       diff_id=f.digest_of(tar), chain_id=f.digest_of(tar))
    # the importer holds the writers' lock until add_image or close: gc cannot take it
    lock = os.open(os.path.join(store.root, "locks", "store.lock"), os.O_RDWR)
    with pytest.raises(BlockingIOError):
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    store.close()
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(lock)
    os.makedirs(os.path.join(store.root, "tmp", "layer-dead.123", "diff"))
    # nothing references the layer now
    assert Store(store.root, rootless=store.rootless).gc()["layers"] == 1
    assert entries(store.root) == [] and os.listdir(os.path.join(store.root, "tmp")) == []


KILLER = r"""
import io, os, signal, sys
sys.path.insert(0, sys.argv[3])
import imagefactory as f
from minictr.image.store import Store
tar = f.tar_bytes([("file", "big%d" % i, os.urandom(4096)) for i in range(64)])
blob = f.compress(tar, "gzip")
class Dying(io.BytesIO):
    def read(self, n=-1):
        if self.tell() > len(blob) // 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().read(min(n, 4096) if n and n > 0 else 4096)
open(sys.argv[2], "w").write(f.digest_of(tar))
Store(sys.argv[1], rootless=os.geteuid() != 0).import_layer(
    Dying(blob), media_type="application/vnd.oci.image.layer.v1.tar+gzip",
    digest=f.digest_of(blob), diff_id=f.digest_of(tar), chain_id=f.digest_of(tar))
"""


def test_a_killed_import_leaves_nothing_trusted(tmp_path):
    root = str(tmp_path / "root")
    proc = subprocess.run([sys.executable, "-c", KILLER, root, str(tmp_path / "chain"),
                           os.path.dirname(__file__)], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    chain = (tmp_path / "chain").read_text()
    store = Store(root)
    assert not store.has_layer(chain)
    assert entries(root) == []
    assert os.listdir(os.path.join(root, "tmp")) != []          # the temporary it left
    store.gc()
    assert os.listdir(os.path.join(root, "tmp")) == []


class _Endless:
    """A blob that never ends (zeros), counting the bytes read from it."""

    def __init__(self):
        self.taken = 0

    def read(self, n=-1):
        n = 1 << 16 if n is None or n < 0 else n
        self.taken += n
        return bytes(n)


@pytest.mark.parametrize("media_type", ["application/vnd.oci.image.layer.v1.tar", GZIP,
                                        "application/vnd.docker.image.rootfs.diff.tar.gzip"])
def test_a_blob_larger_than_its_descriptor_is_refused_at_the_first_byte_past_it(store,
                                                                                 media_type):
    """issue 13: a 1 GiB blob described as 10 bytes was accepted. Reading stops at byte 11."""
    digest = "sha256:" + "ab" * 32
    blob = _Endless()
    with pytest.raises(ImageError, match=r"larger than its descriptor's size \(10 bytes\)"):
        store.import_layer(blob, media_type=media_type, digest=digest, diff_id=digest,
                           chain_id=digest, size=10)
    assert blob.taken == 11
    assert entries(store.root) == [] and os.listdir(os.path.join(store.root, "tmp")) == []


def test_a_blob_smaller_than_its_descriptor_is_refused(store):
    tar = f.tar_bytes(f.BUSYBOXISH[0])
    blob = f.compress(tar, "gzip")
    with pytest.raises(ImageError, match=f"is {len(blob)} bytes, its descriptor says "
                       f"{len(blob) + 1}"):
        store.import_layer(io.BytesIO(blob), media_type=GZIP, digest=f.digest_of(blob),
                           diff_id=f.digest_of(tar), chain_id=f.digest_of(tar),
                           size=len(blob) + 1)
    assert entries(store.root) == []


def _wait_for_a_lock_waiter(path: str) -> None:
    """Until /proc/locks shows a process blocked on flock(2) of ``path`` ("->" lines, locks(5)
    in proc(5)): then gc is waiting for the import, which is the point."""
    inode = os.stat(path).st_ino
    for _ in range(6000):           # a hang guard (60 s), not a timing measurement
        with open("/proc/locks") as f_:
            if any("->" in line and f":{inode} " in line for line in f_):
                return
        threading.Event().wait(0.01)
    raise AssertionError("gc never waited for the store lock")


def test_gc_cannot_remove_a_layer_an_import_found_stored_before_it_is_recorded(store):
    """issue 13: `gc` during a `load` deleted layers the load had found already stored (so it
    did not write them, and held no lock for them): the load then failed. An import now holds
    the writers' lock from its first look at the store (Store.importing, reuse_layer)."""
    image = f.make_image(f.BUSYBOXISH[:1])
    chain = import_image(store, image).layers[0].chain_id
    store.remove_image("localhost/t:latest")      # stored, and referenced by no image
    store.close()
    loader = Store(store.root, rootless=store.rootless)
    collected = {}
    with loader.importing():
        assert loader.reuse_layer(chain)          # found: nothing will be written for it
        gc = threading.Thread(target=lambda: collected.update(
            Store(store.root, rootless=store.rootless).gc()))
        gc.start()
        _wait_for_a_lock_waiter(os.path.join(store.root, "locks", "store.lock"))
        loader.add_image(["localhost/t:again"], image.manifest, image.config)
        assert gc.is_alive()                      # still waiting: the import is not over
    gc.join()
    assert collected["layers"] == 0 and loader.has_layer(chain)
    assert loader.resolve("localhost/t:again").layers[0].chain_id == chain
