"""A lower layer of mount points: the files and directories a run's mounts need and the image
lacks, made once and kept, instead of created in the container's writable layer at every start
and deleted with it.

A mount needs something at its destination to mount over. runtime/mounts.resolve_in_root
makes what is missing (mkdir, an empty file) in the container's root, that is in overlayfs's
upper directory: a copy-up of every parent directory the image has, the new entries, and their
removal with the writable layer at cleanup. Every run binds /etc/hosts, /etc/hostname and
/etc/resolv.conf, which images seldom carry (docker keeps them out of layers), and minimal images
lack /proc, /dev and /sys, where the kernel's filesystems go; `--gpus all` adds
~10 files in four or five directories, on ext4 about half of what the GPUs added to a start
(docs/gpus.md); volumes add their destinations. 64 concurrent starts of a busybox image took
~8 % less wall and CPU time with the layer (bench/README.md).

Here the same entries are made once in a directory of their own, put on top of the image's
layers as one more (read-only) lower layer. Overlayfs takes a merged directory's owner, mode
and times from the topmost layer that has it, so each directory the image has is made with the
image's owner, mode and times (its extended attributes are not copied); directories the image
lacks get what resolve_in_root would give them (root, 0755), files are empty and 0644. The
destination is resolved inside the image as the container resolves it (``merged.resolve_dir``:
symlinks followed within the image, so ``/lib -> usr/lib`` puts a file under ``usr/lib``, never
a directory ``lib`` that would hide the link). A destination that cannot be resolved so (a
dangling link, a file where a directory should be) is left to resolve_in_root at run time,
as before; so is everything when the layer cannot be made: it is only ever a speed-up.

Entries live in ``STATE/.cache/mountpoints/<sha256>`` (cachefiles.cache_dir), named by the
image's layer directories (content-addressed, never changed) and the destinations; a directory
is made under a temporary name and renamed whole, so a killed run leaves at most a ``.tmp-``
directory that no run uses. ``<sha256>.none`` records that the image already has every
destination, ``<sha256>.layers`` the image's layer directories: `minictr gc` (``collect``)
removes an entry once one of them is gone, which the store's gc never does to a layer a
container still uses, so no running container loses its mount points. Rootless, as the
store's own files, the layer's are the user's (the container's root); the owner copied from the
image's directory is then the user too.
"""
from __future__ import annotations

import os
import stat

from minictr import cachefiles
from minictr.runtime.mounts import under

FORMAT = "1"
MAX_OVERLAY_DATA = 3800      # mount(2) passes at most a page of options; keep room to spare


def mount_destinations(spec: dict) -> list[tuple[str, str]]:
    """(destination, "dir"|"file") of each mount whose destination is in the image: not at or
    under an earlier mount's destination (/dev's tmpfs, /proc, a volume). A bind's is what its
    source is; a filesystem's (proc, sysfs, tmpfs, mqueue...) a directory."""
    covered: list[str] = []
    out = []
    for m in spec.get("mounts", ()):
        dest = os.path.normpath("/" + m.get("destination", "").lstrip("/"))
        if dest != "/" and not any(under(dest, c) for c in covered):
            options = m.get("options", ())
            if m.get("type") == "bind" or "bind" in options or "rbind" in options:
                source = m.get("source") or ""
                out.append((dest, "dir" if os.path.isdir(source) else "file"))
            else:
                out.append((dest, "dir"))
        covered.append(dest)
    return out


def key(lowerdirs, destinations) -> str:
    return cachefiles.key_of([FORMAT, list(lowerdirs), sorted(destinations)])


def layer_for(state: str, lowerdirs: tuple, destinations: list[tuple[str, str]],
              explain=None) -> str | None:
    """The mount-point layer for these image layers (topmost first) and destinations, made now
    if it is not there yet; None when the image has them all, or it cannot be made."""
    if not destinations:
        return None
    directory = cachefiles.cache_dir(state, "mountpoints")
    path = os.path.join(directory, key(lowerdirs, destinations))
    try:
        st = os.lstat(path)
        if not (cachefiles.ours(st, stat.S_ISDIR) and cachefiles.trusted_dir(directory)):
            return None
        _say(explain, path)
        return path
    except FileNotFoundError:
        pass
    except OSError:
        return None
    if os.path.lexists(path + ".none"):
        return None
    try:
        entries = missing_entries(lowerdirs, destinations)
        # what it was made from, for gc (written first: an entry always has one)
        if not cachefiles.write(path + ".layers", "\n".join(lowerdirs).encode()):
            return None
        if not entries:
            os.close(os.open(path + ".none", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            return None
        _build(directory, path, entries, root=os.stat(lowerdirs[0]))
    except OSError:
        try:
            os.unlink(path + ".layers")
        except OSError:
            pass
        return None
    _say(explain, path)
    return path


def _say(explain, path: str) -> None:
    """One line whether the layer was made now or by an earlier run (a dry run may make it:
    then the real run shows the same steps)."""
    if explain:
        explain(f"mount points the image lacks: in the lower layer STATE/.cache/mountpoints/"
                f"{os.path.basename(path)[:12]}..., made once by the first run that needed "
                "them, not in the writable layer at every start")


def missing_entries(lowerdirs, destinations) -> list[tuple[str, str, os.stat_result | None]]:
    """(clean path, "dir"|"file", the image's stat or None) of every entry the layer needs, in
    the order to make them (parents first): the image's directories on the way (with their
    stat, to copy) and what it lacks (None). Destinations the image has, or that do not resolve
    to a plain path inside it, add nothing."""
    from minictr.errors import ImageError
    from minictr.image.merged import DIR, MISSING, MergedTree, resolve_dir

    entries: dict[str, tuple[str, str, os.stat_result | None]] = {}
    with MergedTree(list(lowerdirs)) as tree:
        for dest, kind in destinations:
            parent, _, name = dest.strip("/").rpartition("/")
            made: set[str] = set()

            def step(handle, child):
                if handle in made:                  # below a directory the image lacks
                    return MISSING, None
                return tree.step(handle, child)

            def make(handle, child):
                path = f"{handle}/{child}" if handle else child
                made.add(path)
                return path

            try:
                found = resolve_dir(parent, "", step, make=make)
            except ImageError:
                continue                            # left to the runtime's resolution
            if found is None:
                continue
            clean = found[1]
            if clean not in made and tree.entry(clean, name) is not None:
                continue                            # the image has it (a file, dir or link)
            parts = clean.split("/") if clean else []
            for i in range(len(parts)):
                path = "/".join(parts[:i + 1])
                if path in entries:
                    continue
                hit = None if path in made else tree.entry("/".join(parts[:i]), parts[i])
                entries[path] = (path, "dir", hit[2] if hit and hit[0] == DIR else None)
            target = f"{clean}/{name}" if clean else name
            entries.setdefault(target, (target, kind, None))
    return list(entries.values())


def _build(directory: str, path: str, entries, root: os.stat_result) -> None:
    """Make the entries under a temporary name, then rename it to ``path``. Its own root takes
    the image's root's owner and mode (``root``: the top layer's), as the layer that is now
    topmost: lifecycle.inherit_root_metadata copies them from there to the writable layer."""
    import shutil
    import tempfile

    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=directory)
    try:
        for rel, kind, st in entries:
            full = os.path.join(tmp, rel)
            if kind == "dir":
                os.mkdir(full)
            else:
                os.close(os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | os.O_CLOEXEC))
        for rel, kind, st in [("", "dir", root), *reversed(entries)]:   # children first
            full = os.path.join(tmp, rel)
            if st is None:                          # what resolve_in_root would have made
                os.chmod(full, 0o755 if kind == "dir" else 0o644)
                continue
            if os.geteuid() == 0:               # rootless, the store's files are all ours
                os.chown(full, st.st_uid, st.st_gid, follow_symlinks=False)
            os.chmod(full, stat.S_IMODE(st.st_mode))
            if rel:
                os.utime(full, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        try:
            os.rename(tmp, path)
        except OSError:
            if not os.path.isdir(path):             # another run made it meanwhile: use that
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def collect(state: str, min_age: float = 600.0) -> int:
    """Remove the entries whose image layers are gone, and ``.tmp-`` directories older than
    ``min_age`` seconds (left by killed runs; a younger one may be in the making). Returns how
    many entries went."""
    import shutil
    import time

    directory = cachefiles.cache_dir(state, "mountpoints")
    try:
        names = set(os.listdir(directory))
    except FileNotFoundError:
        return 0
    removed = 0
    for name in names:
        full = os.path.join(directory, name)
        if name.startswith(".tmp-"):
            try:
                if time.time() - os.lstat(full).st_mtime > min_age:
                    shutil.rmtree(full, ignore_errors=True)
            except OSError:
                pass
            continue
        if not name.endswith(".layers"):
            continue
        entry = full[:-len(".layers")]
        layers = (cachefiles.read(full) or b"").decode(errors="replace").splitlines()
        if layers and all(os.path.isdir(d) for d in layers):
            continue
        if os.path.isdir(entry):
            # renamed first: a gc killed halfway leaves a .tmp- directory, never a partial entry
            doomed = os.path.join(directory, f".tmp-gc-{os.path.basename(entry)}")
            os.rename(entry, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        for leftover in (entry + ".none", full):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass
        removed += 1
    return removed
