"""The state directory: one subdirectory per container, holding the OCI state and the spec.

    STATE/<id>/state.json    the OCI state (runtime.md "State") plus the runtime's own fields
    STATE/<id>/config.json   the spec being executed (mode 0600: its env may hold secrets)
    STATE/<id>/exec.fifo     exists while the container is "created" (see lifecycle.start)
    STATE/names/<name>       a symlink to <id>: the container names minictr's CLI hands out

Trust. Everything here drives privileged actions later (`kill` signals the pid recorded here,
`delete` removes the directories and cgroups recorded here), so the directory is trusted only if
the caller owns it and nobody else can write to it (runc's and podman's rule for their state
roots). Another user who pre-creates /tmp/minictr-UID with mode 777 gets a refusal, not a victim.
Directories are 0700 and files 0600, as runc makes them.

Intent records. The state entry is written *before* anything it describes is created (the
cgroup, the writable layer, the process), so a launcher killed at any point leaves an entry that
`rm`/`delete` and `gc` can find and clean (issue: "nothing left behind that is trusted later").

A malformed entry (a half-written file from another tool, an edited file) is reported as such
for that container: listing goes on with the others.
"""
from __future__ import annotations

import os
import stat
import time

from minictr import jsonio, signals
from minictr.errors import MinictrError, UsageError

STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
FIFO = "exec.fifo"
NAMES = "names"
OCI_VERSION = "1.2.0"


class StateError(MinictrError):
    """A state directory or entry that cannot be trusted or read."""


class NoSuchContainer(MinictrError):
    """The id or name names no container (runc's message: "container does not exist")."""

    def __init__(self, name: str):
        super().__init__(f"container {name} does not exist",
                         hint="`minictr ps -a` (or `minictr-runc list`) lists containers")


def new_id() -> str:
    return os.urandom(32).hex()


def default_name(container_id: str) -> str:
    return f"minictr-{container_id[:12]}"


def check_id(container_id: str) -> str:
    """Container ids become directory names: no "/" , no "..", nothing odd (runc's rule)."""
    ok = container_id and len(container_id) <= 1024 and container_id not in (".", "..") and \
        all(c.isalnum() or c in "._-+" for c in container_id) and container_id != NAMES
    if not ok:
        raise UsageError(f"invalid container id {container_id!r}",
                         hint="letters, digits and . _ - + only")
    return container_id


def timestamp(epoch: float | None = None) -> str:
    """RFC 3339 with nanoseconds in UTC, as runc writes ``created``."""
    epoch = time.time() if epoch is None else epoch
    whole = int(epoch)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + \
        f".{int((epoch - whole) * 1e9):09d}Z"


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat, the start time in clock ticks since boot (proc(5)): with the
    pid it names one process for good, even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int | None, ticks: int | None) -> bool:
    """Is ``pid`` still the process that was recorded (and not a zombie)?"""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    if fields[0] in ("Z", "X"):
        return False
    return ticks is None or int(fields[19]) == ticks


class StateRoot:
    """A trusted state directory. Opening it creates it (0700) when missing and refuses it when
    someone else owns it or can write to it."""

    def __init__(self, path: str, *, create: bool = True):
        self.path = os.path.abspath(path)
        self._check(create)

    def _check(self, create: bool) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            if not create:
                return
            self._make()
            st = os.lstat(self.path)
        except OSError as err:
            raise StateError(f"state directory {self.path}: {err.strerror}",
                             hint="set MINICTR_STATE (or --state) to a directory of yours") from err
        if not stat.S_ISDIR(st.st_mode):
            raise StateError(f"state directory {self.path} is not a directory"
                             + (" (it is a symlink)" if stat.S_ISLNK(st.st_mode) else ""),
                             hint="remove it, or set MINICTR_STATE to a directory of yours")
        if st.st_uid != os.geteuid():
            raise StateError(f"state directory {self.path} belongs to uid {st.st_uid}, not to "
                             f"you (uid {os.geteuid()}): refusing to trust it",
                             hint="another user may have planted it; set MINICTR_STATE (or "
                                  "--state) to a directory only you can write")
        if st.st_mode & 0o022:
            raise StateError(f"state directory {self.path} is writable by others "
                             f"(mode {stat.S_IMODE(st.st_mode):04o}): refusing to trust it",
                             hint=f"chmod 700 {self.path}, or set MINICTR_STATE elsewhere")

    def _make(self) -> None:
        parent = os.path.dirname(self.path)
        try:
            os.makedirs(parent, mode=0o700, exist_ok=True)
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            pass                                    # made meanwhile: _check inspects it
        except OSError as err:
            raise StateError(f"cannot create state directory {self.path}: {err.strerror}",
                             hint="set MINICTR_STATE (or --state) to a writable directory") \
                from err

    # ------------------------------------------------------------ entries

    def dir(self, container_id: str) -> str:
        return os.path.join(self.path, container_id)

    def file(self, container_id: str, name: str) -> str:
        return os.path.join(self.path, container_id, name)

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n != NAMES and not n.startswith("."))

    def add(self, container_id: str) -> str:
        """Make a new container's directory; an existing one is an error (ids are unique)."""
        check_id(container_id)
        path = self.dir(container_id)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            raise UsageError(f"container {container_id} already exists",
                             hint="choose another id, or delete the old container") from None
        except OSError as err:
            raise StateError(f"cannot create {path}: {err.strerror}") from err
        return path

    def read(self, container_id: str) -> dict:
        """The recorded state of one container (not refreshed: see ``lifecycle.status``)."""
        path = self.file(container_id, STATE_FILE)
        try:
            with open(path) as f:
                data = jsonio.load(f)
        except FileNotFoundError:
            if os.path.isdir(self.dir(container_id)):
                raise StateError(f"container {container_id} has no state file (a launcher "
                                 "killed before its first write?)",
                                 hint=f"minictr rm -f {container_id} removes what is left") \
                    from None
            raise NoSuchContainer(container_id) from None
        except (OSError, ValueError) as err:
            raise StateError(f"container {container_id}: unreadable state file {path}: {err}",
                             hint=f"minictr rm -f {container_id} removes it") from err
        if not isinstance(data, dict) or data.get("id") != container_id:
            raise StateError(f"container {container_id}: malformed state file {path}",
                             hint=f"minictr rm -f {container_id} removes it")
        return data

    def write(self, container_id: str, state: dict) -> None:
        write_private(self.file(container_id, STATE_FILE), jsonio.dumps(state).encode())

    def update(self, container_id: str, **fields) -> dict:
        """Read, change and write the state under the entry's lock (``_locked``)."""
        with self._locked(container_id):
            state = self.read(container_id)
            state.update(fields)
            self.write(container_id, state)
        return state

    def _locked(self, container_id: str):
        """flock(2) on the container's directory, held by an update and by a removal, so they
        never interleave: a detached container's monitor records its exit while `rm -f`
        removes it, and an update between rmtree's unlinks and its rmdir put state.json back
        into an entry meant to be gone. An update that waited for a removal then finds no
        entry (NoSuchContainer): writing into a removed directory fails."""
        return _DirLock(self.dir(check_id(container_id)), container_id)

    def read_config(self, container_id: str) -> dict:
        path = self.file(container_id, CONFIG_FILE)
        try:
            with open(path) as f:
                return jsonio.load(f)
        except (OSError, ValueError) as err:
            raise StateError(f"container {container_id}: cannot read {path}: {err}") from err

    def remove(self, container_id: str) -> None:
        from minictr.runtime.cleanup import rmtree

        try:
            with self._locked(container_id):
                rmtree(self.dir(container_id))
        except NoSuchContainer:
            pass
        self.release_names(container_id)

    # ------------------------------------------------------------ names

    def names_dir(self) -> str:
        return os.path.join(self.path, NAMES)

    def claim_name(self, name: str, container_id: str) -> None:
        """Give ``name`` to the container: a symlink names/<name> -> <id>, made atomically, so
        two runs with the same --name cannot both succeed. A name whose container is gone is
        taken over; "gone" needs both its state entry missing and its claimant dead: between
        the claim and the entry the claimant holds a lock on names/.<id>.claim (released by
        its exit), so a launcher that is still starting is not mistaken for a killed one."""
        check_id(name)
        os.makedirs(self.names_dir(), mode=0o700, exist_ok=True)
        self._hold_claim(container_id)
        link = os.path.join(self.names_dir(), name)
        for _ in range(2):
            try:
                os.symlink(container_id, link)
                return
            except FileExistsError:
                owner = os.readlink(link)
                if self._exists(owner):
                    self._drop_claim(container_id)
                    raise UsageError(f'the container name "{name}" is already in use by '
                                     f"container {owner[:12]}",
                                     hint=f"remove it (minictr rm {name}) or choose another "
                                          "name") from None
                try:
                    os.unlink(link)                   # its container is gone: a stale name
                except FileNotFoundError:
                    pass
        self._drop_claim(container_id)
        raise UsageError(f"could not claim the container name {name!r}: retry")

    def _claim_path(self, container_id: str) -> str:
        return os.path.join(self.names_dir(), f".{container_id}.claim")

    def _hold_claim(self, container_id: str) -> None:
        """Lock names/.<id>.claim for the rest of this process's life (the fd is kept)."""
        import fcntl

        path = self._claim_path(check_id(container_id))
        if path in _HELD_CLAIMS:
            return
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    _HELD_CLAIMS[path] = fd
                    return
            except FileNotFoundError:
                pass                                  # pruned between open and flock
            os.close(fd)

    def _drop_claim(self, container_id: str) -> None:
        path = self._claim_path(container_id)
        if path in _HELD_CLAIMS:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            os.close(_HELD_CLAIMS.pop(path))

    def _exists(self, container_id: str) -> bool:
        """Has the container a state entry, or is its claimant still alive (starting)?"""
        if os.path.isdir(self.dir(container_id)):
            return True
        import fcntl

        try:
            fd = os.open(self._claim_path(container_id), os.O_RDONLY | os.O_CLOEXEC |
                         os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return os.path.isdir(self.dir(container_id))   # made as its claimant ended?
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def name_to_id(self, name: str) -> str | None:
        try:
            return os.readlink(os.path.join(self.names_dir(), name))
        except OSError:
            return None

    def prune_names(self) -> None:
        """Drop names whose container is gone (a run killed between naming and creating), and
        the claim files no live claimant holds."""
        try:
            entries = os.listdir(self.names_dir())
        except FileNotFoundError:
            return
        for name in entries:
            path = os.path.join(self.names_dir(), name)
            try:
                if name.startswith(".") and name.endswith(".claim"):
                    if not self._exists(name[1:-len(".claim")]):
                        os.unlink(path)
                elif not self._exists(os.readlink(path)):
                    os.unlink(path)
            except OSError:
                pass

    def release_names(self, container_id: str) -> None:
        self._drop_claim(container_id)
        try:
            entries = os.listdir(self.names_dir())
        except FileNotFoundError:
            return
        for name in entries:
            link = os.path.join(self.names_dir(), name)
            try:
                if name == f".{container_id}.claim" or os.readlink(link) == container_id:
                    os.unlink(link)
            except OSError:
                pass


_HELD_CLAIMS: dict[str, int] = {}     # claim file -> the fd whose lock this process holds


class _DirLock:
    """An exclusive flock(2) on a directory, for ``with`` (StateRoot._locked)."""

    def __init__(self, path: str, container_id: str):
        self.path, self.container_id, self.fd = path, container_id, -1

    def __enter__(self):
        import fcntl

        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NoSuchContainer(self.container_id) from None
        except OSError as err:
            raise StateError(f"cannot open {self.path}: {err.strerror}") from err
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)               # releases the lock


def write_private(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write a file atomically (temp file in the same directory, then rename(2)), mode 0600."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def parse_signal(name: str) -> int:
    """A signal by name (TERM, SIGTERM) or number, as kill(1) and runc take it (signals.py)."""
    number = signals.parse(name)
    if number is None:
        if str(name).strip().isdecimal():
            raise UsageError(f"invalid signal number {name}")
        raise UsageError(f"unknown signal {name!r}", hint="e.g. TERM, KILL, HUP, 9")
    return number

