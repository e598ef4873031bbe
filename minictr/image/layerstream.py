"""Turn a stored layer blob into its uncompressed tar stream (OCI image-spec layer.md,
"Media Types"; Docker image manifest v2.2).

gzip and zstd are decoded in a background thread that hands 1 MiB chunks through a small
queue: the inflaters release the GIL while they work, so decompression runs on one core while
unpacking runs on another, the way ``tar -xzf`` pipes ``gzip -d`` into tar. The sha256 of the
uncompressed tar (the layer's diff_id) is computed on that thread too, as each chunk is made
(hashlib also releases the GIL), so the unpacking thread only parses and writes. A truncated or
corrupt stream raises ImageError from ``read`` instead of looking like a short, valid layer.

gzip is inflated by python-isal (Intel ISA-L's igzip) when it is installed: on the Debian
minbase layer (49 MB gzip, 128 MB tar) it inflated in 150 ms where zlib took 330 ms, zlib-ng 168
and rapidgzip 430 on one thread (225 on two, which the unpacking thread needs); bench/README.md,
"Layer unpacking". Without it, the standard library's zlib does the same job, slower.
"""
from __future__ import annotations

import queue
import threading

try:
    from isal import isal_zlib as _inflate     # same interface as zlib's decompressobj
except ImportError:                             # pragma: no cover - isal is a dependency
    import zlib as _inflate

from minictr.errors import ImageError
from minictr.image.manifests import LAYER_TYPES

IN_CHUNK = 256 << 10         # compressed bytes per read of the blob
OUT_CHUNK = 1 << 20          # decompressed bytes per queued chunk
ZSTD_FEED = 16 << 10         # zstd has no output bound per call: feed it small pieces
QUEUE_DEPTH = 8

_GZIP, _ZSTD, _TAR = "gzip", "zstd", "tar"     # the values of manifests.LAYER_TYPES
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_HINT = "the layer blob is damaged; remove the image and pull or load it again"


def open_layer(fileobj, media_type: str, *, tar_hash=None):
    """A readable stream of the layer's uncompressed tar.

    ``tar_hash`` (a hashlib object), if given, is updated with every uncompressed byte: on the
    decoder thread for a compressed layer, as it is read for a plain one; the stream's ``size``
    counts them. Both are complete once a read has returned b"". Plain tar layers are returned
    as they are (wrapped only to hash them), except Docker's ``rootfs.diff.tar``, whose blobs
    from ``docker save`` are sometimes compressed anyway: there the first bytes decide.
    """
    kind = LAYER_TYPES.get(media_type.split(";")[0].strip())
    if kind is None:
        raise ImageError(f"unsupported layer media type {media_type!r}",
                         hint="supported: OCI layer tar, tar+gzip, tar+zstd (and their "
                              "nondistributable forms) and Docker rootfs.diff.tar[.gzip]")
    if media_type.startswith("application/vnd.docker.image.rootfs.diff.tar") and kind == _TAR:
        head = fileobj.read(4)
        fileobj = _Prefixed(head, fileobj)
        kind = (_GZIP if head.startswith(_GZIP_MAGIC) else
                _ZSTD if head.startswith(_ZSTD_MAGIC) else _TAR)
    if kind == _TAR:
        return fileobj if tar_hash is None else _Hashed(fileobj, tar_hash)
    return ThreadedDecoder(fileobj, _gunzip if kind == _GZIP else _unzstd, tar_hash)


class _Hashed:
    """A plain tar layer, hashed as it is read."""

    def __init__(self, raw, tar_hash):
        self._raw, self._hash, self.size = raw, tar_hash, 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if data:
            self._hash.update(data)
            self.size += len(data)
        return data


class _Prefixed:
    """A stream with bytes already read from it put back in front."""

    def __init__(self, head: bytes, rest):
        self._head, self._rest = head, rest

    def read(self, n: int = -1) -> bytes:
        if self._head:
            out, self._head = self._head, b""
            return out
        return self._rest.read(n)


def _gunzip(src):
    """RFC 1952 members, one after another (a multi-member gzip is one stream, as gzip(1)
    reads it). wbits=31 makes the inflater parse the gzip header and check the CRC32/ISIZE
    trailer."""
    decoder, fed = _inflate.decompressobj(31), False
    while True:
        data = src.read(IN_CHUNK)
        if not data:
            break
        while data:
            if decoder.eof:                      # the next member starts here
                decoder, fed = _inflate.decompressobj(31), False
            fed = True
            try:
                out = decoder.decompress(data, OUT_CHUNK)
            except _inflate.error as err:
                raise ImageError(f"layer gzip stream is corrupt: {err}", hint=_HINT) from err
            if out:
                yield out
            data = decoder.unused_data if decoder.eof else decoder.unconsumed_tail
    if not fed:
        raise ImageError("layer gzip stream is empty", hint=_HINT)
    if not decoder.eof:
        raise ImageError("layer gzip stream is truncated", hint=_HINT)


def _unzstd(src):
    """RFC 8878 frames, one after another; a frame cut short leaves ``eof`` False."""
    import zstandard    # here: most layers are gzip, and its import costs ~4 ms

    dctx = zstandard.ZstdDecompressor()
    decoder, fed, pending, size = dctx.decompressobj(), False, [], 0
    while True:
        data = src.read(IN_CHUNK)
        if not data:
            break
        view = memoryview(data)
        for start in range(0, len(view), ZSTD_FEED):
            piece = view[start:start + ZSTD_FEED]
            while piece:
                if decoder.eof:
                    decoder, fed = dctx.decompressobj(), False
                fed = True
                try:
                    out = decoder.decompress(piece)
                except zstandard.ZstdError as err:
                    raise ImageError(f"layer zstd stream is corrupt: {err}", hint=_HINT) from err
                piece = decoder.unused_data if decoder.eof else b""
                if out:
                    pending.append(out)
                    size += len(out)
                    if size >= OUT_CHUNK:
                        yield b"".join(pending)
                        pending, size = [], 0
    if pending:
        yield b"".join(pending)
    if not fed:
        raise ImageError("layer zstd stream is empty", hint=_HINT)
    if not decoder.eof:
        raise ImageError("layer zstd stream is truncated", hint=_HINT)


_END = object()


class ThreadedDecoder:
    """``read()`` side of a decoder generator run in its own thread.

    The thread starts on the first read; errors (ImageError, or the blob's own OSError) are
    raised by the read that reaches them. ``close()``, or dropping the reader, stops the
    thread: it holds only the queue and the stop event, never the reader itself. ``tar_hash``
    is updated on the thread; ``size`` is set when the reader reaches the end.
    """

    def __init__(self, src, decode, tar_hash=None):
        self._src, self._decode, self._hash = src, decode, tar_hash
        self.size = 0
        self._queue: queue.Queue = queue.Queue(QUEUE_DEPTH)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._chunk, self._pos, self._done = b"", 0, False

    def _next_chunk(self) -> bool:
        if self._thread is None:
            self._thread = threading.Thread(
                target=_produce, args=(self._decode(self._src), self._queue, self._stop,
                                       self._hash),
                name="layer-decoder", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if type(item) is tuple:     # (_END, bytes made)
            self._done = True
            self.size = item[1]
            return False
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._chunk, self._pos = item, 0
        return True

    def read(self, n: int = -1) -> bytes:
        if self._pos >= len(self._chunk) and (self._done or not self._next_chunk()):
            return b""
        if self._pos == 0 and (n < 0 or n >= len(self._chunk)):
            self._pos = len(self._chunk)
            return self._chunk
        end = len(self._chunk) if n < 0 else self._pos + n
        out = self._chunk[self._pos:end]
        self._pos += len(out)
        return out

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def __del__(self) -> None:
        self._stop.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _produce(chunks, out: queue.Queue, stop: threading.Event, tar_hash) -> None:
    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    size = 0
    try:
        for chunk in chunks:
            if tar_hash is not None:
                tar_hash.update(chunk)
            size += len(chunk)
            if not put(chunk):
                return
        put((_END, size))
    except BaseException as err:  # handed to the reader, which re-raises it
        put(err)
