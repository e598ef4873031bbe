"""Unpack one OCI layer into overlayfs "lowerdir" form (OCI image-spec layer.md).

The result is the layer alone, ready to be one of overlayfs's lower directories
(Documentation/filesystems/overlayfs.rst):

* a whiteout ``.wh.NAME`` becomes a character device 0/0 named NAME ("whiteout"); since Linux
  5.8 creating one needs no CAP_MKNOD, so this works rootless too;
* an opaque marker ``.wh..wh..opq`` becomes the xattr ``trusted.overlay.opaque=y`` on its
  directory (rootless: ``user.overlay.opaque=y``, read by overlay's ``userxattr`` mount option);
  siblings from the same layer stay, wherever the marker sits in the tar, because this layer's
  files are in this directory and only lower layers are hidden;
* marker files never appear; other names in the reserved ``.wh..wh.`` space are rejected.

Security (images are untrusted): all writes go through :mod:`minictr.image.safepath` (dir fds,
openat2 RESOLVE_IN_ROOT, no-follow calls on the last component); an image cannot plant overlay
xattrs (``trusted.overlay.*``/``user.overlay.*`` are dropped from its PAX records). Rootless:
no chown (a layer naming uid 1000 or 0 changes nothing), ``trusted.*``/``security.*``/
``system.*`` xattrs are dropped, device nodes are skipped with a warning. setuid/setgid bits
are kept in both modes: as root they mean what the image says; rootless the file is owned by
the unpacking user, so setuid only ever grants that user's own identity - no host privilege.
"""
from __future__ import annotations

import errno
import os
import stat
from _collections_abc import Callable

from minictr.errors import ImageError
from minictr.image import tarstream as ts
from minictr.image import filewriter
from minictr.image.copyup import UPPER, CopyUp, is_whiteout_stat
from minictr.image.layerstream import open_layer
from minictr.image.merged import MergedTree
from minictr.image.safepath import ScopedRoot, clean_path, split_path
from minictr.runtime.syscalls import Syscalls

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
RESERVED_PREFIX = ".wh..wh."
O_NEWFILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_HINT = "the image's layer is malformed or crafted to escape its root"

__all__ = ["open_layer", "unpack_layer", "UnpackStats"]


class UnpackStats:
    """What one layer held; counters (a plain class: dataclasses costs ~15 ms to import)."""
    __slots__ = ("files", "bytes", "dirs", "symlinks", "links", "whiteouts", "opaque_dirs",
                 "skipped", "tar_bytes")
    # files: regular files written (hardlinks counted in links); bytes: their bytes;
    # skipped: devices (rootless) and unknown member types; tar_bytes: the uncompressed
    # stream, trailing padding included

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, 0)

    def __repr__(self) -> str:
        return "UnpackStats(" + ", ".join(f"{n}={getattr(self, n)}" for n in self.__slots__) + ")"


def unpack_layer(tar_stream, dest: str, *, rootless: bool,
                 lower_lookup: Callable[[], list[str]] | None = None,
                 warn: Callable[[str], None] | None = None, kernel=None,
                 workers: int = 3,
                 slow_name_ns: int = filewriter.SLOW_NAME_NS) -> UnpackStats:
    """Extract the tar stream into the existing empty directory ``dest`` in overlay form.

    ``lower_lookup()`` returns the unpacked lower layers' dirs, topmost first (it may wait until
    they are). It is called only when the layer reaches into them (image/copyup.py): a
    directory it writes into without listing it, a hardlink to a file it does not hold; and at
    the end (so the layer is unpacked while the lower ones still are) to place the whiteouts
    and opaque markers of directories it did not hold, to drop whiteouts that hide nothing,
    and for the root's metadata when the tar has no ``./`` entry. The stream is read to its
    end. ``workers``: threads that create regular files and symlinks beside the parser
    (image/filewriter.py); 0: all in this thread. Three measured best on 2 CPUs (minbase:
    0.54-0.59x tar -xzf, against 0.64x with two and 0.71x with four; bench/README.md). They
    are started only once making names proves slow: the first ``filewriter.PROBE_NAMES``
    files and symlinks made here took over ``slow_name_ns`` each on average (0: at once).
    """
    unpacker = _Unpacker(dest, kernel or Syscalls(), rootless, lower_lookup,
                         warn or (lambda msg: None), workers, slow_name_ns)
    try:
        reader = ts.TarReader(tar_stream)
        for entry in reader:
            unpacker.root.begin_entry()
            try:
                unpacker.apply(entry, reader)
            except (OSError, ValueError) as err:    # ValueError: a NUL byte in a PAX name
                raise _entry_error(entry, err) from err
        unpacker.finish()
        unpacker.stats.tar_bytes = reader.drain()
    finally:
        unpacker.close()
    return unpacker.stats


def _entry_error(entry: ts.TarEntry, err: Exception) -> ImageError:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return ImageError(f"layer entry {entry.name!r}: no space left on the store's "
                          "filesystem", hint="free space or point the store elsewhere")
    why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return ImageError(f"layer entry {entry.name!r}: {why}", hint=_HINT)


def write_sparse(fd: int, e: ts.TarEntry, chunks) -> None:
    """Each data region at its offset; the holes stay holes (lseek past them, ftruncate to the
    full size), so the file takes the space it took where the image was built."""
    chunks = iter(chunks)
    left = memoryview(b"")
    for offset, length in e.sparse:
        os.lseek(fd, offset, os.SEEK_SET)
        while length:
            if not left:
                left = next(chunks)
            n = os.write(fd, left[:length])
            left, length = left[n:], length - n
    for _ in chunks:        # none left: the reader checked the regions cover the data
        pass
    os.ftruncate(fd, e.size)


def process_umask() -> int | None:
    """The umask, read without changing it (umask(2) sets it, for every thread): proc(5)'s
    Umask field, since Linux 4.7. None if it cannot be read."""
    try:
        with open("/proc/thread-self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def allowed_xattr(name: str, rootless: bool) -> bool:
    """Whether an xattr from the image may be set. Overlay's own xattrs never: an image that
    plants ``trusted.overlay.opaque``/``redirect``/``metacopy`` would change how the kernel
    merges layers. Rootless only ``user.*``: the rest need privilege or name host ids."""
    if name.startswith(("trusted.overlay.", "user.overlay.")):
        return False
    if rootless:
        return name.startswith("user.")
    return name.startswith(("user.", "trusted.", "security.", "system."))


class _Unpacker:
    def __init__(self, dest: str, kernel, rootless: bool, lower_lookup, warn, workers: int = 0,
                 slow_name_ns: int = 0):
        self.root = ScopedRoot(dest, kernel, self.resolve_missing)
        self.writer: filewriter.FileWriter | None = None
        # threads pay off only where making a name is slow (a busy or fragmented ext4, a
        # network filesystem: 0.2-0.8 ms); on a fast one (tmpfs, a fresh ext4: 5-40 us) handing
        # names over costs more than it saves, so names are made here until a probe of the
        # first ones says otherwise
        self.probe = filewriter.Probe(workers, slow_name_ns) if workers else None
        if workers and not slow_name_ns:
            self.writer, self.probe = filewriter.FileWriter(workers), None
        self.rootless, self.warn = rootless, warn
        self.lower_lookup = lower_lookup
        self._copyup: CopyUp | None = None
        self.stats = UnpackStats()
        self.dirs: dict[str, ts.TarEntry] = {}      # metadata applied last, in finish()
        self.deferred: list[tuple[str, str, ts.TarEntry]] = []   # whiteouts, in finish()
        self.whiteouts: list[tuple[str, str]] = []      # made: (parent, name)
        self.opaque_xattr = "user.overlay.opaque" if rootless else "trusted.overlay.opaque"
        self.umask = process_umask()

    def close(self) -> None:
        try:
            if self.writer is not None:
                self.writer.close()
            if self._copyup is not None:
                self._copyup.close()
        finally:
            self.root.close()

    def settle(self) -> None:
        """Wait for the names the workers are making; redo, in order, those whose name was
        taken (the redo replaces what is there, as a later tar entry does)."""
        if self.writer is None:
            return
        try:
            redo = self.writer.barrier()
        except filewriter.JobError as err:
            raise _entry_error(err.job.entry, err.job.error) from err.job.error
        try:
            for job in redo:
                try:
                    self.make_room(job.dir_fd, job.name)
                    filewriter.make(job)
                except (OSError, ValueError) as err:
                    raise _entry_error(job.entry, err) from err
        finally:
            for job in redo:
                os.close(job.dir_fd)

    def lowers(self) -> CopyUp:
        """This layer over its lower layers; lower_lookup is asked once (it may wait)."""
        if self._copyup is None:
            dirs = list(self.lower_lookup()) if self.lower_lookup else []
            self._copyup = CopyUp(self.root, MergedTree(dirs) if dirs else None, self)
        return self._copyup

    def resolve_missing(self, path: str, create: bool) -> int | None:
        """A directory this layer does not hold (yet) at ``path``: look through the lower
        layers, copying up what is created (ScopedRoot's resolve_missing)."""
        return self.lowers().dir_fd(path, create)

    def record_dir(self, path: str, e: ts.TarEntry | None) -> None:
        if e is not None:
            self.dirs.pop(path, None)
            self.dirs[path] = e

    # ---------------------------------------------------------------- dispatch
    def apply(self, e: ts.TarEntry, reader: ts.TarReader) -> None:
        path = clean_path(e.name)
        parent, name = split_path(path)
        if "/" + WHITEOUT_PREFIX in "/" + parent:
            raise ImageError(f"layer entry {e.name!r} is inside a whiteout marker", hint=_HINT)
        if self.writer is not None and (
                e.type not in (ts.REGULAR, ts.DIRECTORY, ts.SYMLINK)
                or name.startswith(WHITEOUT_PREFIX) or self.writer.touches_pending(path)
                or (self.writer.busy() and not self.root.plain(parent))):
            # it looks at names (hardlinks, whiteouts, devices), or its name or a directory
            # on its way is still being made, or its parent is reached through a symlink (whose
            # target may be a name still being made) or the layers below: the workers finish
            # first
            self.settle()
            self.root.begin_entry()     # a redo may have removed a cached directory
        if name.startswith(WHITEOUT_PREFIX):
            self.whiteout(parent, name, e)
            return
        if not path:
            if e.type != ts.DIRECTORY:
                raise ImageError(f"layer entry {e.name!r} ({e.type}) would replace the root",
                                 hint=_HINT)    # umoci CVE-2021-29136: a symlink for "/."
            self.dirs[""] = e
            return
        pfd = self.root.dir_fd(parent)
        if e.type == ts.REGULAR:
            self.regular(pfd, name, e, reader, path)
        elif e.type == ts.DIRECTORY:
            self.directory(pfd, path, name, e)
        elif e.type == ts.SYMLINK:
            self.symlink(pfd, name, e, path)
        elif e.type == ts.HARDLINK:
            self.hardlink(pfd, path, name, e)
        elif e.type in (ts.CHAR, ts.BLOCKDEV, ts.FIFO):
            self.special(pfd, path, name, e)
        else:
            self.warn(f"layer: skipping {e.name!r}: unsupported tar type {e.typeflag!r}")
            self.stats.skipped += 1

    def make_room(self, pfd: int, name: str, keep_dir: bool = False) -> bool:
        """Later entries win (as tar): remove what this layer already put at ``name``.
        Returns True when an existing directory is kept (a directory entry over a directory)."""
        self.settle()       # nothing is removed while a worker may create inside it
        st = self.root.lstat(pfd, name)
        if st is None:
            return False
        if keep_dir and stat.S_ISDIR(st.st_mode):
            return True
        self.root.remove(pfd, name, st)
        return False

    # ---------------------------------------------------------------- entry kinds
    def regular(self, pfd: int, name: str, e: ts.TarEntry, reader: ts.TarReader,
                path: str = "") -> None:
        # made with its final permission bits, so that fchmod is needed only where the umask
        # or a set-id/sticky bit makes them differ (new_file_settles)
        if self.writer is not None and e.sparse is None and not e.xattrs and \
                e.size <= filewriter.SMALL_FILE:
            owner_ok, mode_ok = self.new_file_settles(pfd, e)
            data = b"".join(reader.data(e))         # the views die with the next read
            self.writer.submit(filewriter.FileJob(
                e, path, os.dup(pfd), name, data=data, chown=not (self.rootless or owner_ok),
                chmod=not mode_ok))
            self.stats.files += 1
            self.stats.bytes += e.size
            return
        started = self.probe.start() if self.probe is not None and \
            e.size <= filewriter.SMALL_FILE else 0
        try:
            fd = os.open(name, O_NEWFILE, e.mode & 0o777, dir_fd=pfd)
        except FileExistsError:
            self.make_room(pfd, name)
            fd = os.open(name, O_NEWFILE, e.mode & 0o777, dir_fd=pfd)
        try:
            if e.sparse is None:
                write = os.write
                for chunk in reader.data(e):
                    while chunk:
                        chunk = chunk[write(fd, chunk):]
            else:
                write_sparse(fd, e, reader.data(e))
            self.set_metadata_fd(fd, e, created_in=pfd)
        finally:
            os.close(fd)
        self.stats.files += 1
        self.stats.bytes += e.size
        if started:
            self.probed(started)

    def probed(self, started: int) -> None:
        """A name was made here since ``started``: start the workers if names prove slow."""
        if self.probe.made(started):
            self.writer, self.probe = filewriter.FileWriter(self.probe.workers), None

    def directory(self, pfd: int, path: str, name: str, e: ts.TarEntry) -> None:
        try:
            os.mkdir(name, 0o755, dir_fd=pfd)
        except FileExistsError:
            st = self.root.lstat(pfd, name)
            if not self.make_room(pfd, name, keep_dir=True):
                os.mkdir(name, 0o755, dir_fd=pfd)
                if st is not None and is_whiteout_stat(st):
                    # ".wh.d" and "d/" in one layer: the whiteout deletes the lower d (it
                    # applies to lower layers only), this layer's d replaces it
                    self.mark_opaque_at(pfd, path, name)
        # mode, owner, xattrs and mtime later: children would change the mtime, and a
        # read-only mode would stop a rootless unpack from creating them
        self.record_dir(path, e)
        self.stats.dirs += 1

    def symlink(self, pfd: int, name: str, e: ts.TarEntry, path: str = "") -> None:
        if self.writer is not None and not e.xattrs:
            owner_ok = self.new_file_settles(pfd, e)[0]
            self.writer.submit(filewriter.FileJob(
                e, path, os.dup(pfd), name, target=e.linkname,
                chown=not (self.rootless or owner_ok)))
            self.stats.symlinks += 1
            return
        started = self.probe.start() if self.probe is not None else 0
        try:
            os.symlink(e.linkname, name, dir_fd=pfd)
        except FileExistsError:
            self.make_room(pfd, name)
            os.symlink(e.linkname, name, dir_fd=pfd)
        self.set_link_metadata(pfd, name, e, created=True)
        self.stats.symlinks += 1
        if started:
            self.probed(started)

    def hardlink(self, pfd: int, path: str, name: str, e: ts.TarEntry) -> None:
        """A hardlink names a path inside the layer root (``..`` clamped like any name).
        linkat(2) without AT_SYMLINK_FOLLOW links a symlink itself, never its target. The
        link header's own metadata is not applied: it describes the target's inode."""
        target = clean_path(e.linkname)
        if target == path:
            return
        tparent, tname = split_path(target)
        if not tname:
            raise ImageError(f"layer: hardlink {e.name!r} to the root", hint=_HINT)
        try:
            tpfd = self.link_source(target, tparent, tname, e)
            try:
                os.link(tname, name, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False)
            except FileExistsError:
                self.make_room(pfd, name)
                os.link(tname, name, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False)
        except OSError as err:
            raise ImageError(f"layer: hardlink {e.name!r} -> {e.linkname!r}: "
                             f"{os.strerror(err.errno or 0)}", hint=_HINT) from err
        self.stats.links += 1

    def link_source(self, target: str, tparent: str, tname: str, e: ts.TarEntry) -> int:
        """The fd of the directory of this layer holding the hardlink target ``tname``. A
        target only a lower layer holds is copied up first, as overlayfs copies a file up
        before linking to it, so both names stay one inode in the container."""
        try:
            tpfd = self.root.dir_fd(tparent, create=False, below=False)
            st = self.root.lstat(tpfd, tname)
            if st is not None and not is_whiteout_stat(st):
                return tpfd
        except FileNotFoundError:
            pass
        found = self.lowers().find(target)
        if found is not None and found[0] == UPPER:
            return found[2]
        fd = None
        if found is not None and found[2] is not None:      # not a directory
            fd = self.lowers().copy_up(found[1], found[2], found[3])
        if fd is None:
            why = "target is in neither this layer nor a lower one" if found is None else \
                "the target in a lower layer is not a file or symlink"
            raise ImageError(f"layer: hardlink {e.name!r} -> {e.linkname!r}: {why}",
                             hint=_HINT)
        return fd

    def special(self, pfd: int, path: str, name: str, e: ts.TarEntry) -> None:
        if e.type != ts.FIFO and self.rootless:
            self.warn(f"layer: skipping device node /{path} (rootless: cannot create devices)")
            self.stats.skipped += 1
            return
        kind = {ts.CHAR: stat.S_IFCHR, ts.BLOCKDEV: stat.S_IFBLK, ts.FIFO: stat.S_IFIFO}[e.type]
        device = os.makedev(e.devmajor, e.devminor) if e.type != ts.FIFO else 0
        try:
            os.mknod(name, kind | 0o600, device, dir_fd=pfd)
        except FileExistsError:
            self.make_room(pfd, name)
            os.mknod(name, kind | 0o600, device, dir_fd=pfd)
        # never open a device or FIFO (side effects, blocking): *at calls with NOFOLLOW
        if not self.rootless:
            os.chown(name, e.uid, e.gid, dir_fd=pfd, follow_symlinks=False)
        os.chmod(name, e.mode, dir_fd=pfd, follow_symlinks=False)
        os.utime(name, ns=(e.mtime_ns, e.mtime_ns), dir_fd=pfd, follow_symlinks=False)

    # ---------------------------------------------------------------- whiteouts
    def whiteout(self, parent: str, name: str, e: ts.TarEntry) -> None:
        hidden = name[len(WHITEOUT_PREFIX):]
        if name != OPAQUE_MARKER and (name.startswith(RESERVED_PREFIX)
                                      or hidden in ("", ".", "..")):
            raise ImageError(f"layer entry {e.name!r} uses the reserved whiteout prefix",
                             hint="OCI layer.md reserves .wh..wh. for the opaque marker")
        try:
            pfd = self.root.dir_fd(parent, create=False, below=False)
        except FileNotFoundError:
            # a directory this layer does not hold: decided at the end, when the lower layers
            # are there to say whether the marker hides anything (else nothing is made)
            self.deferred.append((parent, name, e))
            return
        if name == OPAQUE_MARKER:
            self.mark_opaque(parent, pfd)
        else:
            self.whiteout_at(pfd, parent, hidden)

    def whiteout_at(self, pfd: int, parent: str, hidden: str) -> None:
        st = self.root.lstat(pfd, hidden)
        if st is not None:
            # this layer's own entry stays (layer.md: whiteouts apply to lower layers only);
            # a directory of ours must not merge with the lower one the whiteout deletes
            if stat.S_ISDIR(st.st_mode):
                self.mark_opaque_at(pfd, f"{parent}/{hidden}".lstrip("/"), hidden)
            return
        try:
            os.mknod(hidden, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
        except PermissionError as err:
            raise ImageError(f"layer: cannot create whiteout {parent}/{hidden}",
                             hint="overlay whiteouts are 0/0 character devices; unprivileged "
                                  "creation needs Linux >= 5.8") from err
        self.whiteouts.append((parent, hidden))
        self.stats.whiteouts += 1

    def drop_idle_whiteouts(self) -> None:
        """Remove the whiteouts that hide nothing below. overlayfs lists the entries of a
        directory only one layer holds as they are, whiteouts included, so such a whiteout
        would be a name that `ls` shows and stat(2) cannot find."""
        if self.lower_lookup is None or not self.whiteouts:
            return                  # nothing is known of the layers below: keep them all
        up = self.lowers()
        parents: dict[str, tuple | None] = {}
        self.root.begin_entry()
        for parent, name in self.whiteouts:
            if parent not in parents:
                parents[parent] = up.resolve(parent, create=False)
            found = parents[parent]
            if found is None or found[0][1] is None:
                continue
            (_, fd, lowers), path = found
            st = self.root.lstat(fd, name)
            if st is None or not is_whiteout_stat(st):
                continue            # a later entry of this layer took the name
            if not (lowers and up.tree.entry(path, name) is not None):
                os.unlink(name, dir_fd=fd)
                self.stats.whiteouts -= 1

    def apply_deferred(self) -> None:
        """Whiteouts and opaque markers in directories this layer did not hold when they came:
        applied where the merged tree shows something to hide, dropped where it does not, so
        a marker for nothing leaves no empty directory behind (as umoci). Without a
        lower_lookup nothing is known of the layers below: every marker is kept."""
        for parent, name, e in self.deferred:
            self.root.begin_entry()
            hidden = name[len(WHITEOUT_PREFIX):]
            try:
                if self.lower_lookup is None:
                    found = (None, parent)
                elif name == OPAQUE_MARKER:
                    found = self.lowers().resolve(parent, create=False, strict=True)
                else:
                    found = self.lowers().find(f"{parent}/{hidden}".lstrip("/"), strict=True)
                if found is None:
                    continue
                pfd = self.root.dir_fd(found[1])
                if name == OPAQUE_MARKER:
                    self.mark_opaque(found[1], pfd)
                else:
                    self.whiteout_at(pfd, found[1], hidden)
            except (OSError, ValueError) as err:
                raise _entry_error(e, err) from err

    # ---------------------------------------------------------------- metadata
    def set_metadata_fd(self, fd: int, e: ts.TarEntry, created_in: int | None = None) -> None:
        """Owner before mode (chown(2) clears setuid/setgid), xattrs, then times. A file just
        created in directory ``created_in`` with mode ``e.mode & 0o777`` skips the fchown and
        fchmod that would change nothing (most files of an image are root's, made by root)."""
        owner_ok = mode_ok = False
        if created_in is not None:
            owner_ok, mode_ok = self.new_file_settles(created_in, e)
        if not (self.rootless or owner_ok):
            os.fchown(fd, e.uid, e.gid)
        if not mode_ok:
            os.fchmod(fd, e.mode)
        if e.xattrs:
            self.set_xattrs(fd, e)
        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))

    def new_file_settles(self, pfd: int, e: ts.TarEntry) -> tuple[bool, bool]:
        """Whether a file just created in ``pfd`` with ``e.mode & 0o777`` already has the
        entry's owner, and its mode. The owner is our fsuid and, unless the directory is
        setgid (or the filesystem mounted ``grpid``), our fsgid, else the directory's group:
        both are ours when the directory's group is. The mode is the one asked for less the
        umask, unless a default ACL on the directory decides instead (acl(5)); set-id and
        sticky bits always take an fchmod."""
        new = self.root.new_file_traits(pfd)
        owner_ok = new.gid_is_ours and e.uid == self.root.euid and e.gid == self.root.egid
        mode_ok = (not new.default_acl and self.umask is not None
                   and not e.mode & 0o7000 and not e.mode & self.umask)
        return owner_ok, mode_ok

    def set_link_metadata(self, pfd: int, name: str, e: ts.TarEntry,
                          created: bool = False) -> None:
        """A symlink's owner, xattrs and mtime, by name: a symlink cannot be opened. Linux
        refuses user.* xattrs on symlinks (xattr(7)); trusted.* and security.* are kept.
        ``created``: made just now in ``pfd``, so its owner may already be the entry's."""
        if not self.rootless and not (created and self.new_file_settles(pfd, e)[0]):
            os.chown(name, e.uid, e.gid, dir_fd=pfd, follow_symlinks=False)
        if e.xattrs:
            # /proc/self/fd/N names the layer's directory; the link itself is not followed
            self.set_xattrs(f"/proc/self/fd/{pfd}/{name}", e, follow_symlinks=False)
        os.utime(name, ns=(e.mtime_ns, e.mtime_ns), dir_fd=pfd, follow_symlinks=False)

    def set_xattrs(self, target, e: ts.TarEntry, follow_symlinks: bool = True) -> None:
        for key, value in e.xattrs.items():
            if not allowed_xattr(key, self.rootless):
                self.warn(f"layer: dropping xattr {key} on {e.name!r}")
                continue
            try:
                os.setxattr(target, key, value, follow_symlinks=follow_symlinks)
            except OSError as err:
                if err.errno not in (errno.ENOTSUP, errno.EPERM, errno.EACCES, errno.EINVAL):
                    raise
                self.warn(f"layer: xattr {key} on {e.name!r} not set: {err.strerror}")

    def mark_opaque_at(self, pfd: int, path: str, name: str) -> None:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=pfd)
        try:
            self.mark_opaque(path, fd)
        finally:
            os.close(fd)

    def mark_opaque(self, path: str, dir_fd: int) -> None:
        """Set the opaque xattr now, on the directory the marker's parent resolves to (in the
        root, like every parent); later directory entries only add metadata, never clear it."""
        try:
            os.setxattr(dir_fd, self.opaque_xattr, b"y")
        except OSError as err:
            raise ImageError(f"layer: cannot mark /{path} opaque ({self.opaque_xattr}): "
                             f"{err.strerror}", hint="the store's filesystem must support "
                             "trusted.* (root) or user.* (rootless) xattrs") from err
        self.stats.opaque_dirs += 1

    def finish(self) -> None:
        """Directory metadata last (tar's "delay directory restore"): owners, modes, xattrs and
        mtimes of each directory that is still a real directory at its path. A layer without
        ``./`` takes the root's from the layer below (overlayfs shows the topmost layer's)."""
        self.settle()
        self.apply_deferred()
        self.drop_idle_whiteouts()
        self.root.begin_entry()     # parents cached before a last removal may be stale
        if "" not in self.dirs and self.lower_lookup is not None:
            root = self.lowers().dir_meta("")
            if root is not None:
                self.dirs = {"": root, **self.dirs}
        done = set()
        for path, e in reversed(self.dirs.items()):
            fd = self.root.open_dir_nofollow(path)
            if fd is None:
                continue
            try:
                # one directory may be recorded under two names (through a symlink, and as
                # copied up); the later record wins
                ino = os.fstat(fd).st_ino
                if ino not in done:
                    done.add(ino)
                    self.set_metadata_fd(fd, e)
            finally:
                os.close(fd)
