"""The content-addressed image store: blobs by digest, unpacked layers by ChainID, image records.

Layout (docs/architecture.md, "Store layout")::

    ROOT/blobs/sha256/<hex>          verified blobs: manifests, configs, compressed layers
    ROOT/layers/<chain hex>/diff/    one layer in overlayfs form (an overlay lowerdir)
    ROOT/layers/<chain hex>/layer.json   its digest, diff_id, media type, sizes
    ROOT/images/records/<manifest hex>.json   one image: manifest digest, id, layers
    ROOT/images/tags.json            name -> manifest digest (the only mutable index)
    ROOT/tmp/                        temporary names on the same filesystem, renamed into place
    ROOT/locks/                      flock(2) files

Every entry is written under ``tmp/`` and appears by rename(2), which is atomic within a
filesystem: an entry that exists is complete and verified, and a process killed mid-write leaves
only a temporary that nothing trusts (``gc`` removes it). Readers take no lock. Writers hold a
shared flock on ``locks/store.lock`` from their first write until ``add_image`` (or ``close``);
``gc`` takes it exclusively, so it never deletes a layer that an import has committed but not yet
referenced, nor a temporary still being written. Two processes importing one layer serialise on
``locks/layer-<hex>.lock``: the second finds the entry made and returns.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import _thread
import time
from _collections_abc import Callable

from minictr import jsonio
from minictr.errors import ImageError, MinictrError, NoSuchImage
from minictr.image import manifests as mf
from minictr.image import reference
from minictr.image.files import (HashingReader, atomic_write, lock_file, remove_tree,
                                 unlink_size)
from minictr.image import merged
from minictr.records import record as _record

HINT_MISSING = ("see `minictr images`; get it with `minictr pull NAME` or `minictr load PATH`")


@_record
class LayerRecord:
    digest: str          # of the blob as stored/transferred (compressed)
    media_type: str
    size: int            # the blob's size in bytes
    diff_id: str         # sha256 of the uncompressed tar
    chain_id: str        # identifies the layer together with everything below it


@_record
class ImageRecord:
    id: str              # the config's digest, as docker's image id
    manifest_digest: str
    name: str            # the name it was resolved by, normalised
    names: tuple[str, ...]
    config: dict = None  # the parsed image config (not part of equality or the hash)
    layers: tuple[LayerRecord, ...] = ()

    def _key(self) -> tuple:
        return (self.id, self.manifest_digest, self.name, self.names, self.layers)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and self._key() == other._key()

    def __ne__(self, other) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self._key())


sha256_digest, chain_ids = mf.sha256_digest, mf.chain_ids      # for the store's users


class BlobWriter:
    """``with store.blob_writer(digest) as w: w.write(chunk)...``: on a clean exit the content
    is verified against ``digest`` and renamed into place; on an exception the temporary goes.
    ``size`` says how much was written (to resume a download with a Range request);
    ``restart()`` starts over when a server cannot resume."""

    def __init__(self, store: "Store", expected_digest: str):
        self._store = store
        self.digest = expected_digest
        self._hex = mf.hex_of(expected_digest)
        self._file = None
        self._tmp = ""
        import hashlib  # not at module level: it is off the run path
        self._hash = hashlib.sha256()
        self.size = 0

    def __enter__(self) -> "BlobWriter":
        self._writing = self._store._writing()
        self._writing.__enter__()
        self._tmp = self._store._tmp_name(f"blob-{self._hex}")
        self._file = open(self._tmp, "xb")
        return self

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    def restart(self) -> None:
        self._file.seek(0)
        self._file.truncate()
        import hashlib  # not at module level: it is off the run path
        self._hash = hashlib.sha256()
        self.size = 0

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self._file.close()
            if exc_type is None:
                got = "sha256:" + self._hash.hexdigest()
                if got != self.digest:
                    raise ImageError(f"blob {self.digest} failed verification: its content "
                                     f"hashes to {got} ({self.size} bytes)")
                os.chmod(self._tmp, 0o644)
                os.rename(self._tmp, self._store.blob_path(self.digest))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
            self._writing.__exit__(None, None, None)
        return False


class Store:
    """The image store at ``root``. ``rootless`` is passed to the layer unpacker (no mknod,
    no chown to other ids, overlay xattrs in the user.* namespace)."""

    def __init__(self, root: str, *, rootless: bool = False,
                 warn: Callable[[str], None] | None = None):
        self.root = os.path.abspath(root)
        self.rootless = rootless
        self._warn = warn
        self._mutex = _thread.allocate_lock()   # threading.Lock, without importing threading
        self._writer_fd: int | None = None
        self._imports = 0       # open importing() blocks: add_image keeps the lock for them

    # ------------------------------------------------------------ paths

    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def blob_path(self, digest: str) -> str:
        return self._path("blobs", "sha256", mf.hex_of(digest))

    def _layer_entry(self, chain_id: str) -> str:
        return self._path("layers", mf.hex_of(chain_id))

    def _record_path(self, manifest_digest: str) -> str:
        return self._path("images", "records", mf.hex_of(manifest_digest) + ".json")

    def _tmp_name(self, key: str) -> str:
        return self._path("tmp", f"{key}.{os.urandom(16).hex()}")

    # ------------------------------------------------------------ writers' lock

    def _ensure_dirs(self) -> None:
        os.makedirs(self.root, mode=0o711, exist_ok=True)
        # layers/ is the owner's alone: an unpacked layer keeps its setuid-root files, and a
        # traversable path (chain IDs are public) would let any local user run them on the host.
        for sub, mode in (("blobs/sha256", 0o700), ("layers", 0o700), ("images/records", 0o700),
                          ("tmp", 0o700), ("locks", 0o700)):
            os.makedirs(self._path(sub), mode=mode, exist_ok=True)
        layers = os.stat(self._path("layers"))
        if layers.st_mode & 0o077 and layers.st_uid == os.geteuid():
            os.chmod(self._path("layers"), 0o700)   # a store made before this was 0711

    @contextlib.contextmanager
    def _writing(self):
        """Hold the store's shared writer lock; it stays held after this block until
        ``add_image`` completes or ``close()``, so what was imported stays safe from gc until
        an image references it."""
        with self._mutex:
            if self._writer_fd is None:
                self._ensure_dirs()
                self._writer_fd = lock_file(self._path("locks", "store.lock"), fcntl.LOCK_SH)
        yield

    @contextlib.contextmanager
    def importing(self):
        """Hold the writers' lock for a whole import, from before its first look at the store
        until after its last ``add_image``: a layer or blob it finds already stored (and
        therefore does not write) is as safe from a concurrent ``gc`` as one it writes.
        Without this, gc could remove an unreferenced layer between the import's check and
        the add_image that would reference it."""
        with self._mutex:
            self._imports += 1
        try:
            with self._writing():
                pass
            yield self
        finally:
            with self._mutex:
                self._imports -= 1
                last = not self._imports
            if last:
                self.close()

    def close(self) -> None:
        """Release the writers' lock (gc may then collect unreferenced entries)."""
        with self._mutex:
            if self._writer_fd is not None:
                os.close(self._writer_fd)
                self._writer_fd = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ blobs

    def has_blob(self, digest: str) -> bool:
        return os.path.isfile(self.blob_path(digest))

    def write_blob(self, data: bytes, digest: str | None = None) -> str:
        """Store ``data``; if ``digest`` is given, it must match. Returns the digest."""
        digest = digest or sha256_digest(data)
        with self.blob_writer(digest) as w:
            w.write(data)
        return digest

    def blob_writer(self, expected_digest: str) -> BlobWriter:
        return BlobWriter(self, expected_digest)

    def read_blob(self, digest: str) -> bytes:
        try:
            with open(self.blob_path(digest), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ImageError(f"blob {digest} is missing from the store",
                             hint="load or pull the image again") from None

    # ------------------------------------------------------------ layers

    def has_layer(self, chain_id: str) -> bool:
        return os.path.isfile(os.path.join(self._layer_entry(chain_id), "layer.json"))

    def layer_dir(self, chain_id: str) -> str:
        """The layer's tree in overlay form, usable as an overlay lowerdir."""
        entry = self._layer_entry(chain_id)
        if not os.path.isfile(os.path.join(entry, "layer.json")):
            raise ImageError(f"layer {chain_id} is missing from the store",
                             hint="was it removed by `minictr gc`? load or pull the image again")
        return os.path.join(entry, "diff")

    def reuse_layer(self, chain_id: str) -> bool:
        """Is layer ``chain_id`` stored? If so it is kept for the caller's import: the
        writers' lock is taken first and held until ``add_image``, so gc cannot remove the
        layer before the image that reuses it is recorded."""
        with self._writing():
            return self.has_layer(chain_id)

    def import_layer(self, stream, *, media_type: str, digest: str, diff_id: str,
                     chain_id: str, lower_lookup=None, size: int | None = None) -> None:
        """Read the compressed ``stream`` once: store it as blob ``digest`` and unpack it into
        layer ``chain_id``, verifying both digests in the same pass; commit only if both match.
        ``size``, the descriptor's, is checked too: reading stops at the first byte past it."""
        hexid = mf.hex_of(chain_id)
        mf.hex_of(digest)
        mf.hex_of(diff_id)
        mf.check_layer_media_type(media_type)
        if self.reuse_layer(chain_id):
            return
        with self._writing():
            fd = lock_file(self._path("locks", f"layer-{hexid}.lock"), fcntl.LOCK_EX)
            try:
                if self.has_layer(chain_id):    # another process made it while we waited
                    return
                self._unpack_and_commit(stream, media_type, digest, diff_id, chain_id,
                                        lower_lookup, size)
            finally:
                os.close(fd)

    def import_layer_from_blob(self, digest: str, *, media_type: str, diff_id: str,
                               chain_id: str, lower_lookup=None, size: int | None = None) -> None:
        if self.reuse_layer(chain_id):
            return
        try:
            f = open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise ImageError(f"blob {digest} is missing from the store") from None
        with f:
            self.import_layer(f, media_type=media_type, digest=digest, diff_id=diff_id,
                              chain_id=chain_id, lower_lookup=lower_lookup, size=size)

    def _unpack_and_commit(self, stream, media_type, digest, diff_id, chain_id, lower_lookup,
                           size):
        from minictr.image import unpack

        tmp = self._tmp_name(f"layer-{mf.hex_of(chain_id)}")
        os.mkdir(tmp, 0o700)
        try:
            diff = os.path.join(tmp, "diff")
            os.mkdir(diff, 0o755)
            decoded = None
            with open(os.path.join(tmp, "blob"), "xb") as blob_file:
                compressed = HashingReader(stream, copy_to=blob_file, limit=size,
                                           what=f"layer {digest}")
                import hashlib  # not at module level: it is off the run path
                tar_hash = hashlib.sha256()     # the diff_id, on the decoder's thread
                try:
                    decoded = unpack.open_layer(compressed, _decoding_type(media_type),
                                                tar_hash=tar_hash)
                    unpack.unpack_layer(decoded, diff, rootless=self.rootless,
                                        lower_lookup=lower_lookup, warn=self._warn)
                    while decoded.read(1 << 20):    # to the end, so the hash covers it all
                        pass
                    compressed.drain()
                except MinictrError:
                    raise
                except (OSError, EOFError, ValueError, LookupError, RuntimeError) as err:
                    raise ImageError(f"cannot import layer {digest} ({media_type}): "
                                     f"{err}") from err
                finally:
                    if decoded is not None and decoded is not compressed and \
                            hasattr(decoded, "close"):
                        decoded.close()     # stop a decoder thread still writing the blob
            if size is not None and compressed.size != size:
                raise ImageError(f"layer {digest} is {compressed.size} bytes, its descriptor "
                                 f"says {size}", hint="the source is corrupt or truncated")
            _verify("layer", digest, compressed.digest, "its blob")
            _verify("layer", diff_id, "sha256:" + tar_hash.hexdigest(),
                    f"the uncompressed tar of {digest}")
            meta = {"chain_id": chain_id, "digest": digest, "diff_id": diff_id,
                    "media_type": media_type, "size": compressed.size,
                    "unpacked_size": decoded.size, "created": int(time.time())}
            atomic_write(os.path.join(tmp, "layer.json"), jsonio.dumps(meta).encode())
            os.chmod(os.path.join(tmp, "blob"), 0o644)
            os.rename(os.path.join(tmp, "blob"), self.blob_path(digest))
            os.chmod(tmp, 0o711)
            try:
                os.rename(tmp, self._layer_entry(chain_id))
            except OSError as err:
                # rename(2) onto a non-empty directory fails: someone else committed the same
                # layer (only possible where flock is not shared, e.g. some network filesystems)
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST) or \
                        not self.has_layer(chain_id):
                    raise
        finally:
            if os.path.lexists(tmp):
                remove_tree(tmp)

    def _layer_meta(self, chain_id: str) -> dict:
        try:
            with open(os.path.join(self._layer_entry(chain_id), "layer.json"), "rb") as f:
                return jsonio.load(f)
        except (OSError, ValueError):
            return {}

    # ------------------------------------------------------------ images: write side

    def add_image(self, names: list[str], manifest_bytes: bytes,
                  config_bytes: bytes) -> ImageRecord:
        """Record an image whose layers are all imported, and point ``names`` at it."""
        manifest = mf.parse_manifest(manifest_bytes)
        config_desc = manifest["config"]
        mf.verify_descriptor(config_desc, config_bytes, "image config")
        config = mf.parse_config(config_bytes)
        layers = mf.layer_records(manifest, config, LayerRecord)
        missing = [l.chain_id for l in layers if not self.has_layer(l.chain_id)]
        if missing:
            raise ImageError(f"cannot record the image: {len(missing)} of its layers are not in "
                             f"the store (first: {missing[0]})")
        refs = [str(reference.parse(n)) for n in names]
        manifest_digest = sha256_digest(manifest_bytes)
        record = {"manifest_digest": manifest_digest, "id": config_desc["digest"],
                  "layers": [l._asdict() for l in layers], "loaded": int(time.time()),
                  "size": sum(self._layer_meta(l.chain_id).get("unpacked_size", 0)
                              for l in layers)}
        existing = self._recorded(manifest_digest, config_desc["digest"], record, refs)
        if existing is not None:
            # `run oci:DIR:TAG` and `run --pull always` import the same image at every run:
            # nothing is written (two fsyncs and the tag index's lock, each time, before)
            return self._make_record(existing, config, refs[0] if refs else None)
        try:
            with self._writing():
                if missing := [l.chain_id for l in layers if not self.has_layer(l.chain_id)]:
                    # checked again under the lock: a layer seen before it could be gone
                    raise ImageError(f"cannot record the image: layer {missing[0]} left the "
                                     "store meanwhile (a gc?)", hint="load or pull it again")
                self.write_blob(manifest_bytes, manifest_digest)
                self.write_blob(config_bytes, config_desc["digest"])
                with self._tags_lock():
                    # the record is written under the tags lock so that a concurrent rmi,
                    # which drops untagged records under it, cannot remove it in between
                    atomic_write(self._record_path(manifest_digest),
                                 jsonio.dumps(record).encode())
                    tags = self._read_tags()
                    tags.update({r: manifest_digest for r in refs})
                    self._write_tags(tags)
        finally:
            if not self._imports:
                self.close()
        return self._make_record(record, config, refs[0] if refs else None)

    def _recorded(self, manifest_digest: str, config_digest: str, record: dict,
                  refs: list[str]) -> dict | None:
        """The stored record, if the store holds this image already, exactly: its blobs, a
        record with the same layers, and every name in ``refs`` pointing at it."""
        existing = self._load_record(manifest_digest)
        if existing is None or existing.get("layers") != record["layers"] \
                or existing.get("id") != record["id"]:
            return None
        if not (self.has_blob(manifest_digest) and self.has_blob(config_digest)):
            return None
        tags = self._read_tags()
        return existing if all(tags.get(r) == manifest_digest for r in refs) else None

    @contextlib.contextmanager
    def _tags_lock(self):
        self._ensure_dirs()
        fd = lock_file(self._path("locks", "tags.lock"), fcntl.LOCK_EX)
        try:
            yield
        finally:
            os.close(fd)

    def _read_tags(self) -> dict[str, str]:
        try:
            with open(self._path("images", "tags.json"), "rb") as f:
                return dict(jsonio.load(f).get("tags", {}))
        except FileNotFoundError:
            return {}
        except ValueError as err:
            raise ImageError(f"the store's tag index is corrupt: {err}") from err

    def _write_tags(self, tags: dict[str, str]) -> None:
        import json                 # indented, for people: jsonio writes compact JSON only

        atomic_write(self._path("images", "tags.json"),
                     json.dumps({"tags": dict(sorted(tags.items()))}, indent=1).encode(), 0o600)

    def remove_image(self, ref: str) -> str:
        """Remove the name ``ref`` (or, given an image id, the image's only name); the image
        record goes when no name is left. Returns what was untagged."""
        record, resolved_as = self._find(ref)
        if record is None:
            raise NoSuchImage(f"image {ref!r} is not in the store", hint=HINT_MISSING)
        digest = record["manifest_digest"]
        with self._tags_lock():
            tags = self._read_tags()
            mine = [n for n, d in tags.items() if d == digest]
            if resolved_as in tags:
                removed = [resolved_as]
            elif len(mine) <= 1:
                removed = mine
            else:
                raise ImageError(f"image {ref} has several names: {', '.join(mine)}",
                                 hint="remove them by name")
            for name in removed:
                del tags[name]
            self._write_tags(tags)
            if not any(d == digest for d in tags.values()):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._record_path(digest))
        return removed[0] if removed else record["id"]

    # ------------------------------------------------------------ images: read side

    def _records(self) -> list[dict]:
        out = []
        directory = self._path("images", "records")
        with contextlib.suppress(FileNotFoundError):
            for name in sorted(os.listdir(directory)):
                if name.endswith(".json") and not name.startswith("."):
                    with contextlib.suppress(OSError, ValueError):
                        with open(os.path.join(directory, name), "rb") as f:
                            out.append(jsonio.load(f))
        return out

    def _load_record(self, manifest_digest: str) -> dict | None:
        try:
            with open(self._record_path(manifest_digest), "rb") as f:
                return jsonio.load(f)
        except (FileNotFoundError, ValueError):
            return None

    def _make_record(self, record: dict, config: dict | None, name: str | None) -> ImageRecord:
        if config is None:
            config = jsonio.loads(self.read_blob(record["id"]))
        names = tuple(sorted(n for n, d in self._read_tags().items()
                             if d == record["manifest_digest"]))
        layers = tuple(LayerRecord(**l) for l in record["layers"])
        return ImageRecord(id=record["id"], manifest_digest=record["manifest_digest"],
                           name=name or (names[0] if names else record["id"]), names=names,
                           config=config, layers=layers)

    def resolve(self, name: str) -> ImageRecord:
        """The stored image called ``name``: a reference, an image id, or a unique id prefix."""
        record, resolved_as = self._find(name)
        if record is None:
            raise NoSuchImage(f"image {name!r} is not in the store", hint=HINT_MISSING)
        return self._make_record(record, None, resolved_as)

    def _find(self, name: str) -> tuple[dict | None, str | None]:
        try:
            ref = reference.parse(name)
        except ImageError:
            if not reference.looks_like_id(name):
                raise
            ref = None
        tags = self._read_tags()
        # A short name (no registry) is looked up as podman does: localhost/NAME first (what
        # `load` names an image that carries no registry), then docker.io's form.
        refs = [reference.parse("localhost/" + name)] if ref is not None and \
            not reference.names_registry(name) else []
        for ref_ in refs + ([ref] if ref is not None else []):
            key = str(ref_)
            if key in tags:
                return self._load_record(tags[key]), key
            if ref_.digest:
                record = self._by_digest(tags, ref_)
                if record is not None:
                    return record, key
        if reference.looks_like_id(name) and (ref is None or ref.registry == "docker.io"):
            return self._by_id(name), None
        return None, None

    def _by_digest(self, tags: dict[str, str], ref: reference.Reference) -> dict | None:
        """NAME@DIGEST: the image with that manifest digest, if it is stored under NAME."""
        for tagged, digest in tags.items():
            if digest == ref.digest and reference.parse(tagged).name == ref.name:
                return self._load_record(digest)
        return None

    def _by_id(self, text: str) -> dict | None:
        prefix = text if text.startswith("sha256:") else "sha256:" + text
        hits = {r["id"]: r for r in self._records() if r["id"].startswith(prefix)}
        if len(hits) > 1:
            raise ImageError(f"image id prefix {text!r} is ambiguous ({len(hits)} images)",
                             hint="give more digits, see `minictr images`")
        return next(iter(hits.values()), None)

    def read_image_file(self, image: ImageRecord, path: str,
                        max_size: int = merged.MAX_READ_FILE) -> bytes | None:
        """The content of ``path`` in the image's merged tree, or None if it is not a regular
        file there. Symlinks are resolved inside the image root, never on the host."""
        dirs = [self.layer_dir(l.chain_id) for l in reversed(image.layers)]
        return merged.read_file(dirs, path, max_size)

    def list_images(self) -> list[dict]:
        tags = self._read_tags()
        rows = []
        for record in self._records():
            config = self._config_or_empty(record["id"])
            names = sorted(n for n, d in tags.items() if d == record["manifest_digest"])
            base = {"id": record["id"], "digest": record["manifest_digest"],
                    "size": record.get("size", 0), "created": config.get("created")}
            for name in names or [None]:
                rows.append({**_repo_tag(name), **base})
        return sorted(rows, key=lambda r: (r["repository"], r["tag"]))

    def _config_or_empty(self, digest: str) -> dict:
        try:
            return jsonio.loads(self.read_blob(digest))
        except (ImageError, ValueError):
            return {}

    def inspect(self, ref: str) -> dict:
        image = self.resolve(ref)
        record = self._load_record(image.manifest_digest) or {}
        return {
            "name": image.name, "names": list(image.names), "id": image.id,
            "digest": image.manifest_digest, "size": record.get("size"),
            "created": image.config.get("created"),
            "os": image.config.get("os"), "architecture": image.config.get("architecture"),
            "manifest": jsonio.loads(self.read_blob(image.manifest_digest)),
            "config": image.config,
            "layers": [{"digest": l.digest, "media_type": l.media_type, "size": l.size,
                        "diff_id": l.diff_id, "chain_id": l.chain_id,
                        "unpacked_size": self._layer_meta(l.chain_id).get("unpacked_size")}
                       for l in image.layers],
        }

    # ------------------------------------------------------------ gc

    def gc(self, keep_layers=()) -> dict:
        """Remove blobs and layers no image record uses, and temporaries left by killed
        processes. Holds the writers' lock exclusively, so nothing is being written meanwhile.
        ``keep_layers``: chain ids still in use by containers (their image may be gone)."""
        self.close()            # our own shared lock would deadlock against our exclusive one
        if not os.path.isdir(self._path("locks")):
            return {"blobs": 0, "layers": 0, "bytes": 0}
        fd = lock_file(self._path("locks", "store.lock"), fcntl.LOCK_EX)
        try:
            return self._collect(set(keep_layers))
        finally:
            os.close(fd)

    def _collect(self, live_layers: set) -> dict:
        live_blobs = set()
        for record in self._records():
            live_blobs.update((record["manifest_digest"], record["id"]))
            for layer in record["layers"]:
                live_blobs.add(layer["digest"])
                live_layers.add(layer["chain_id"])
        freed = 0
        for name in os.listdir(self._path("tmp")):
            freed += remove_tree(self._path("tmp", name)) if os.path.isdir(
                self._path("tmp", name)) else unlink_size(self._path("tmp", name))
        blobs = 0
        for name in os.listdir(self._path("blobs", "sha256")):
            if "sha256:" + name not in live_blobs:
                freed += unlink_size(self._path("blobs", "sha256", name))
                blobs += 1
        layers = 0
        for name in os.listdir(self._path("layers")):
            if "sha256:" + name not in live_layers:
                # rename first: a gc killed half-way must not leave a half-deleted layer that
                # still looks complete
                doomed = self._tmp_name(f"gc-{name}")
                os.rename(self._path("layers", name), doomed)
                freed += remove_tree(doomed)
                layers += 1
        for name in os.listdir(self._path("locks")):
            if name.startswith("layer-"):
                unlink_size(self._path("locks", name))
        return {"blobs": blobs, "layers": layers, "bytes": freed}


def _decoding_type(media_type: str) -> str:
    """Docker's layer media types are used loosely: skopeo and `docker save` label uncompressed
    tars ``rootfs.diff.tar.gzip``. For them the unpacker decides by the content's magic bytes
    (which it does for ``rootfs.diff.tar``); the digests still guard the content."""
    if media_type.startswith("application/vnd.docker.image.rootfs."):
        return "application/vnd.docker.image.rootfs.diff.tar"
    return media_type


def _verify(what: str, expected: str, got: str, of: str) -> None:
    if expected != got:
        raise ImageError(f"{what} verification failed: {of} hashes to {got}, "
                         f"expected {expected}", hint="the source is corrupt or truncated")


def _repo_tag(name: str | None) -> dict:
    if name is None:
        return {"repository": "<none>", "tag": "<none>"}
    ref = reference.parse(name)
    familiar = reference.Reference(ref.registry, ref.repository).familiar
    return {"repository": familiar, "tag": ref.tag or "<none>"}
