"""Regular files and symlinks of a layer made on worker threads, beside the tar parser.

Where unpacking spends its time is the kernel's creation of each name: on the shared VM's ext4
an empty file costs ~360 us of system time, a symlink ~530 us (bench/README.md, "Layer
unpacking"), and `tar -xzf` pays the same one name after another. Python threads release the
GIL in every system call, so two workers creating names in parallel use the second CPU.

What a worker does is confined to what the parsing thread already decided and resolved:

* it gets a **duplicate of the parent directory's fd**, resolved by the parser inside the layer
  root (openat2 RESOLVE_IN_ROOT, image/safepath.py), and one name; it creates that name with
  ``O_CREAT|O_EXCL|O_NOFOLLOW`` or ``symlinkat``, and sets metadata by fd (or, for a symlink,
  by name with AT_SYMLINK_NOFOLLOW): nothing is resolved by path on a worker;
* a name that already exists is **not** replaced by the worker: the job comes back to the
  parsing thread at the next barrier, which replaces it in order (make_room), as tar would;
* every step that looks at or changes names other than creating a new one waits for the jobs
  in flight first (``barrier``): removals, hardlinks, whiteouts, device nodes, an entry whose
  name or parent path goes through a name still being made, and the end of the layer.

So the tree is the one sequential unpacking makes; only independent creations overlap.
"""
from __future__ import annotations

import os
import threading
import time

O_NEWFILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_PENDING = 512               # jobs queued or running
MAX_PENDING_BYTES = 32 << 20    # file data held for them
SMALL_FILE = 1 << 20            # larger files are written by the parsing thread itself
PROBE_NAMES = 64                # names timed on the parsing thread before deciding on workers
SLOW_NAME_NS = 60_000           # workers pay off above this (bench/README.md, "Layer unpacking")


class FileJob:
    """One name to make in a directory: a regular file (``data``) or a symlink (``target``)."""
    __slots__ = ("entry", "path", "dir_fd", "name", "data", "target", "chown", "chmod",
                 "error", "exists", "seq")

    def __init__(self, entry, path: str, dir_fd: int, name: str, *, data: bytes = b"",
                 target: str | None = None, chown: bool = True, chmod: bool = True):
        self.entry, self.path, self.dir_fd, self.name = entry, path, dir_fd, name
        self.data, self.target, self.chown, self.chmod = data, target, chown, chmod
        self.error: BaseException | None = None
        self.exists = False
        self.seq = 0


class Probe:
    """Times the names the parsing thread makes itself, in windows of PROBE_NAMES; says when
    a window averaged over ``slow_ns`` a name (then the ``workers`` are worth starting)."""
    __slots__ = ("workers", "slow_ns", "names", "spent")

    def __init__(self, workers: int, slow_ns: int):
        self.workers, self.slow_ns = workers, slow_ns
        self.names = self.spent = 0

    start = staticmethod(time.perf_counter_ns)

    def made(self, started: int) -> bool:
        self.spent += time.perf_counter_ns() - started
        self.names += 1
        if self.names < PROBE_NAMES:
            return False
        slow = self.spent > PROBE_NAMES * self.slow_ns
        self.names = self.spent = 0
        return slow


class FileWriter:
    """``workers`` threads making FileJobs; ``barrier()`` waits for all and returns the jobs
    that found their name taken (for the caller to redo in order) after raising the first
    failure.

    Jobs are handed over in batches: a worker is woken when its queue holds ``BATCH`` jobs (or
    at ``flush``, which every wait of the parsing thread does first), and takes its whole queue
    at once. Waking a thread costs a few futex calls and a context switch, more than making a
    symlink on a fast filesystem: with every thread woken for every job (as before) busybox's
    266 symlinks cost 8,400 futex calls and 16-18 ms against 5 ms made inline; batched, 490
    calls and 8-11 ms (bench/README.md, "Layer unpacking")."""

    BATCH = 16

    def __init__(self, workers: int):
        self._lock = threading.Lock()
        # one queue per worker, a directory always to the same one: creations in one
        # directory serialise on its inode lock anyway, those in two run in parallel
        self._queues: list[list[FileJob]] = [[] for _ in range(workers)]
        self._wake = [threading.Condition(self._lock) for _ in range(workers)]
        self._sleeping = [False] * workers
        self._settled = threading.Condition(self._lock)     # the parsing thread waits here
        self._waiting = False
        self._pending: dict[str, int] = {}      # path -> jobs for it queued or running
        self._count = self._bytes = 0
        self._done: list[FileJob] = []          # failed or found the name taken
        self._seq = 0
        self._closed = False
        self._threads = [threading.Thread(target=self._work, args=(i,),
                                          name=f"layer-writer-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    # -------------------------------------------------------- the parsing thread's side
    def submit(self, job: FileJob) -> None:
        with self._lock:
            while self._count >= MAX_PENDING or (
                    self._bytes + len(job.data) > MAX_PENDING_BYTES and self._count):
                self._wait()
            self._seq += 1
            job.seq = self._seq
            parent = job.path.rpartition("/")[0]
            i = hash(parent) % len(self._queues)
            queue = self._queues[i]
            queue.append(job)
            self._pending[job.path] = self._pending.get(job.path, 0) + 1
            self._count += 1
            self._bytes += len(job.data)
            if self._sleeping[i] and len(queue) >= self.BATCH:
                self._wake[i].notify()

    def flush(self) -> None:
        """Hand every queued job to its worker now."""
        with self._lock:
            self._kick()

    def _kick(self) -> None:
        for i, queue in enumerate(self._queues):
            if queue and self._sleeping[i]:
                self._wake[i].notify()

    def _wait(self) -> None:
        """With the lock held: wait for a worker to finish something."""
        self._kick()
        self._waiting = True
        try:
            self._settled.wait()
        finally:
            self._waiting = False

    def busy(self) -> bool:
        """Whether any name is still being made (or waits to be redone)."""
        return bool(self._pending)

    def touches_pending(self, path: str) -> bool:
        """Whether ``path`` or a directory on its way is a name still being made."""
        if not self._pending:
            return False
        with self._lock:
            if path in self._pending:
                return True
            end = path.find("/")
            while end > 0:
                if path[:end] in self._pending:
                    return True
                end = path.find("/", end + 1)
            return False

    def barrier(self) -> list[FileJob]:
        """Wait for every job; raise the first one's failure; return those whose name existed,
        in the order they were submitted (their paths count as pending until then: the caller
        redoes them before anything else)."""
        with self._lock:
            while self._count:
                self._wait()
            done, self._done = self._done, []
            for job in done:
                if job.exists:
                    self._unpend(job.path)
        done.sort(key=lambda job: job.seq)
        failed = next((job for job in done if job.error is not None), None)
        if failed is not None:
            for job in done:
                if job.exists:
                    os.close(job.dir_fd)
            raise JobError(failed)
        return done

    def _unpend(self, path: str) -> None:
        n = self._pending[path] - 1
        if n:
            self._pending[path] = n
        else:
            del self._pending[path]

    def close(self) -> None:
        """Stop the workers; jobs not started are dropped, and those that found their name
        taken are not redone (their fds closed)."""
        with self._lock:
            self._closed = True
            dropped = [job for queue in self._queues for job in queue]
            for queue in self._queues:
                queue.clear()
            for wake in self._wake:
                wake.notify()
        for job in dropped:
            os.close(job.dir_fd)
        for t in self._threads:
            t.join()
        done, self._done = self._done, []
        for job in done:
            if job.exists:
                os.close(job.dir_fd)

    # -------------------------------------------------------- the workers
    def _work(self, i: int) -> None:
        queue, wake = self._queues[i], self._wake[i]
        while True:
            with self._lock:
                while not queue and not self._closed:
                    self._sleeping[i] = True
                    wake.wait()
                    self._sleeping[i] = False
                if self._closed:
                    return
                jobs = queue[:]
                queue.clear()
            for job in jobs:
                try:
                    make(job)
                except FileExistsError:
                    job.exists = True
                except BaseException as err:    # reported by the next barrier
                    job.error = err
                finally:
                    if not job.exists:
                        os.close(job.dir_fd)    # an existing name's job keeps it for the redo
            with self._lock:
                for job in jobs:
                    self._count -= 1
                    self._bytes -= len(job.data)
                    if not job.exists:
                        self._unpend(job.path)
                    if job.exists or job.error is not None:
                        self._done.append(job)
                if self._waiting:
                    self._settled.notify()


class JobError(Exception):
    def __init__(self, job: FileJob):
        super().__init__(str(job.error))
        self.job = job


def make(job: FileJob) -> None:
    """Create the job's name in its directory, then its owner, mode and mtime: the same calls,
    in the same order, as the parsing thread makes (unpack.py, set_metadata_fd)."""
    e, dfd = job.entry, job.dir_fd
    if job.target is not None:
        os.symlink(job.target, job.name, dir_fd=dfd)
        if job.chown:
            os.chown(job.name, e.uid, e.gid, dir_fd=dfd, follow_symlinks=False)
        os.utime(job.name, ns=(e.mtime_ns, e.mtime_ns), dir_fd=dfd, follow_symlinks=False)
        return
    fd = os.open(job.name, O_NEWFILE, e.mode & 0o777, dir_fd=dfd)
    try:
        view = memoryview(job.data)
        while view:
            view = view[os.write(fd, view):]
        if job.chown:
            os.fchown(fd, e.uid, e.gid)
        if job.chmod:
            os.fchmod(fd, e.mode)
        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
    finally:
        os.close(fd)
