"""A small verifying store with the write API of minictr.image.store.Store, used by the registry
tests only while the real store is not importable in this checkout (it needs image/oci.py and
image/unpack.py). It verifies what the real one verifies: the compressed blob against its digest
and the uncompressed tar against its diff_id, committing by rename only when both match."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tarfile
import uuid

from minictr.errors import ImageError


class _Hashing:
    def __init__(self, raw, copy_to=None):
        self.raw, self.copy_to, self.h, self.size = raw, copy_to, hashlib.sha256(), 0

    def read(self, n=-1):
        data = self.raw.read(n)
        self.h.update(data)
        self.size += len(data)
        if self.copy_to:
            self.copy_to.write(data)
        return data

    def drain(self):
        while self.read(1 << 20):
            pass

    @property
    def digest(self):
        return "sha256:" + self.h.hexdigest()


class SimpleStore:
    def __init__(self, root, rootless=False):
        self.root = root
        for sub in ("blobs", "layers", "tmp"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        self.images: dict[str, tuple[bytes, bytes]] = {}

    def blob_path(self, digest):
        return os.path.join(self.root, "blobs", digest.split(":")[1])

    def has_blob(self, digest):
        return os.path.isfile(self.blob_path(digest))

    def write_blob(self, data, digest=None):
        got = "sha256:" + hashlib.sha256(data).hexdigest()
        if digest and digest != got:
            raise ImageError(f"blob verification failed: {got} != {digest}")
        tmp = os.path.join(self.root, "tmp", uuid.uuid4().hex)
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, self.blob_path(got))
        return got

    def _entry(self, chain_id):
        return os.path.join(self.root, "layers", chain_id.split(":")[1])

    def layer_dir(self, chain_id):
        return os.path.join(self._entry(chain_id), "diff")

    def has_layer(self, chain_id):
        return os.path.isdir(self._entry(chain_id))

    def import_layer(self, stream, *, media_type, digest, diff_id, chain_id):
        if self.has_layer(chain_id):
            return
        tmp = os.path.join(self.root, "tmp", uuid.uuid4().hex)
        os.mkdir(tmp)
        try:
            with open(os.path.join(tmp, "blob"), "wb") as blob:
                compressed = _Hashing(stream, blob)
                raw = gzip.GzipFile(fileobj=compressed) if media_type.endswith("gzip") \
                    else compressed
                plain = _Hashing(raw)
                try:
                    with tarfile.open(fileobj=plain, mode="r|") as tar:
                        tar.extractall(os.path.join(tmp, "diff"), filter="data")
                    plain.drain()
                    compressed.drain()
                except (OSError, EOFError, tarfile.TarError) as err:
                    raise ImageError(f"layer {digest}: cannot read it: {err}") from err
            for want, got in ((digest, compressed.digest), (diff_id, plain.digest)):
                if want != got:
                    raise ImageError(f"layer verification failed: hashes to {got}, "
                                     f"expected {want}")
            os.rename(os.path.join(tmp, "blob"), self.blob_path(digest))
            os.rename(tmp, self._entry(chain_id))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def import_layer_from_blob(self, digest, *, media_type, diff_id, chain_id):
        with open(self.blob_path(digest), "rb") as f:
            self.import_layer(f, media_type=media_type, digest=digest, diff_id=diff_id,
                              chain_id=chain_id)

    def add_image(self, names, manifest_bytes, config_bytes):
        self.write_blob(manifest_bytes)
        self.write_blob(config_bytes)
        for n in names:
            self.images[n] = (manifest_bytes, config_bytes)
        with open(os.path.join(self.root, "tags.json"), "w") as f:
            json.dump({n: "sha256:" + hashlib.sha256(m).hexdigest()
                       for n, (m, _) in self.images.items()}, f)
        return names[0]

    def entries(self):
        """Everything trusted in the store: blob and layer names (temporaries excluded)."""
        return sorted(os.listdir(os.path.join(self.root, "blobs"))
                      + os.listdir(os.path.join(self.root, "layers")))
