"""Moving blobs: a resumable blob stream and a cancellable pool of download workers.

``BlobStream`` is a file-like object the store reads a layer from, once, while it hashes and
unpacks it. When the connection breaks mid-blob, the stream asks again from the byte it reached
with ``Range: bytes=N-`` (RFC 9110 §14.2); a registry that answers 200 instead of 206 sends the
whole blob again and the stream skips what it already delivered. Either way the store sees one
continuous stream and verifies its digest at the end, so a resumed download is checked exactly
like an unbroken one.

``run_parallel`` runs the downloads in a thread pool. Ctrl-C (KeyboardInterrupt) reaches only
the main thread, so it sets a cancel event and closes every open response: workers blocked in
``recv`` wake with an error, see the event and stop. The store writes entries to temporary names
and renames them into place only when verified, so a stopped pull leaves nothing that is trusted.
"""
from __future__ import annotations

import http.client
import io
import threading
import time
from _collections_abc import Callable, Iterable

from minictr.errors import RegistryError
from minictr.image.httpclient import HTTPError

CHUNK = 1 << 20
BROKEN = (HTTPError, http.client.HTTPException, OSError)    # OSError: IncompleteRead too


class Cancelled(Exception):
    """The pull was interrupted; workers stop with this."""


class Transfers:
    """Shared state of one pull's downloads: the cancel flag and the open responses."""

    def __init__(self):
        self.cancel = threading.Event()
        self._open: set = set()
        self._lock = threading.Lock()

    def track(self, response) -> None:
        with self._lock:
            self._open.add(response)
        if self.cancel.is_set():
            response.close()
            raise Cancelled()

    def untrack(self, response) -> None:
        with self._lock:
            self._open.discard(response)
        response.close()

    def stop(self) -> None:
        """Cancel every transfer: set the flag, then close the sockets workers wait on."""
        self.cancel.set()
        with self._lock:
            responses = list(self._open)
        for r in responses:
            _shutdown(r)


def _shutdown(response) -> None:
    """Wake a thread blocked in recv(2) on ``response``'s socket: close(2) from another thread
    does not, shutdown(2) does (the blocked recv returns 0)."""
    try:
        response.shutdown()
        response.close()
    except Exception:   # racing the worker's own close; nothing useful to report
        pass


class BlobStream(io.RawIOBase):
    """Read a blob of known ``size`` from ``open_at(offset) -> response``, resuming after a
    broken connection (at most ``max_resumes`` times, with backoff)."""

    def __init__(self, open_at: Callable[[int], object], size: int, digest: str,
                 transfers: Transfers, on_bytes: Callable[[int], None] | None = None,
                 max_resumes: int = 5, sleep: Callable[[float], None] = time.sleep):
        super().__init__()
        self.open_at, self.size, self.digest = open_at, size, digest
        self.transfers = transfers
        self.on_bytes = on_bytes or (lambda n: None)
        self.max_resumes, self.sleep = max_resumes, sleep
        self.offset = 0
        self.resumes = 0
        self.response = None

    def readable(self) -> bool:
        return True

    def _connect(self) -> None:
        r = self.open_at(self.offset)
        self.transfers.track(r)
        self.response = r
        if self.offset and r.status_code == 200:
            self._discard(self.offset)       # no Range support: skip what we already have

    def _discard(self, count: int) -> None:
        while count:
            data = self.response.read1(min(count, CHUNK))
            if not data:
                raise ConnectionError("connection closed while skipping to the resume point")
            count -= len(data)

    def _drop(self) -> None:
        if self.response is not None:
            self.transfers.untrack(self.response)
            self.response = None

    def _resume(self, err: Exception) -> None:
        self._drop()
        if self.transfers.cancel.is_set():
            raise Cancelled() from err
        if self.resumes >= self.max_resumes:
            raise RegistryError(f"download of {self.digest} broke {self.resumes + 1} times, "
                                f"last at byte {self.offset}/{self.size}: {err}",
                                hint="the connection to the registry is unstable; try again")
        self.resumes += 1
        self.sleep(min(0.25 * 2 ** self.resumes, 4.0))

    def read(self, n: int = -1) -> bytes:
        if self.transfers.cancel.is_set():
            self._drop()
            raise Cancelled()
        want = self.size - self.offset
        if want <= 0:
            self._check_end()
            return b""
        if n is not None and n >= 0:
            want = min(want, n)
        while True:
            try:
                if self.response is None:
                    self._connect()
                data = self.response.read1(min(want, CHUNK))
                if not data:
                    raise ConnectionError(f"connection closed at byte {self.offset}")
                break
            except Cancelled:
                raise
            except BROKEN as err:
                self._resume(err)
        self.offset += len(data)
        self.on_bytes(len(data))
        return data

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)

    def _check_end(self) -> None:
        """The descriptor's size is the blob's size (image-spec descriptor.md): a server that
        would send more is not trusted further."""
        if self.response is not None:
            extra = self.response.read1(1) if not self.closed else b""
            self._drop()
            if extra:
                raise RegistryError(f"blob {self.digest} is larger than its descriptor's size "
                                    f"{self.size}: refused")

    def close(self) -> None:
        self._drop()
        super().close()


class Deadline:
    """A total time limit for a pull: at ``seconds`` a timer thread cancels the transfers and
    cuts every connection of the watched sessions (``httpclient.Connections``), again every
    0.2 s until stopped, so that a connection made meanwhile is cut too. Threads blocked in
    recv(2) wake with an error; the caller reports any error seen after the limit as
    ``error()``. None: no limit."""

    def __init__(self, seconds: float | None, transfers: Transfers):
        self.seconds, self.transfers = seconds, transfers
        self.expired = False
        self._sessions: list = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, session) -> None:
        if getattr(session, "connections", None) is not None:
            self._sessions.append(session)

    def start(self) -> None:
        if self.seconds is not None:
            self._thread = threading.Thread(target=self._run, name="minictr-deadline",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        if self._stop.wait(self.seconds):
            return
        self.expired = True
        self.transfers.stop()
        while True:
            for session in list(self._sessions):
                session.connections.cut()
            if self._stop.wait(0.2):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def error(self, what: str) -> RegistryError:
        return RegistryError(f"{what} did not finish within {self.seconds:g} s: stopped",
                             hint="the registry is very slow or stalled; "
                             "MINICTR_PULL_TIMEOUT=SECONDS sets the limit (0: none)")


def run_parallel(jobs: Iterable[Callable[[], object]], transfers: Transfers,
                 workers: int = 4, poll: float = 0.2) -> list:
    """Run ``jobs`` on ``workers`` threads, taken in order; return their results in order. The
    first failure (or Ctrl-C in the caller's thread) cancels the rest and is raised, once every
    worker has stopped. Plain threads: concurrent.futures (and the logging it imports) cost
    ~4 ms of every pull."""
    jobs = list(jobs)
    results: list = [None] * len(jobs)
    failures: list[BaseException] = []
    lock = threading.Lock()
    order = iter(range(len(jobs)))

    def work() -> None:
        while True:
            with lock:
                if failures or transfers.cancel.is_set():
                    return
                i = next(order, None)
            if i is None:
                return
            try:
                results[i] = jobs[i]()
            except BaseException as err:    # handed to the caller's thread, which raises it
                with lock:
                    failures.append(err)
                return

    threads = [threading.Thread(target=work, name=f"minictr-pull-{n}", daemon=True)
               for n in range(max(1, min(workers, len(jobs))))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(poll)    # a bounded wait keeps the main thread responsive to Ctrl-C
                if failures:
                    raise failures[0]
        if failures:
            raise failures[0]
        return results
    except BaseException:
        transfers.stop()
        for t in threads:
            t.join()
        raise
