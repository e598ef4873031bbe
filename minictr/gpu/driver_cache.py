"""The discovered driver on disk, trusted only while what it was read from still holds.

Discovery (discover.py) reads the kernel module's version, /proc/devices, each GPU's
information file, the device nodes, the driver root's ld.so.cache, the library files, the
binaries, firmware and sockets; it parses a loader cache of a thousand entries and imports the
code to do it. None of that changes between two `minictr run --gpus` on the same host, so the
result is kept in ``STATE/.cache/gpu/driver-<key>.json``, with the *witnesses* of its reads
(driver.HostFiles): the text of every proc file read (the driver version, the majors, each
GPU's information and MIG access files), the listing of every directory listed (the GPUs, the
MIG instances, the firmware), and the identity (dev, ino, mtime, size, mode, rdev) of every
other file looked at, or its absence (each device node, library, binary, socket, the loader
cache). An entry is used only when the host answers every one of those questions the same way
again; any change (a new driver, a GPU or node added, a library replaced, a MIG instance made)
or an entry that cannot be read or parsed means a new discovery, written over it.

``<key>`` is the sha256 of the three roots (driver, dev, proc) and of the identity of the
discovery code itself, so another minictr reads none of it. The directory must be this user's
and writable by no one else (it is made 0700, entries 0600, written to a temporary name and
renamed: a reader sees a whole entry or none). It is under the state directory, which no
container's mount exposes: a container cannot write it.
"""
from __future__ import annotations

import os

from minictr import cachefiles, jsonio
from minictr.gpu.driver import Driver, DriverRoots, HostFiles, from_plain, to_plain
from minictr.gpu.witnesses import still_holds

FORMAT = 1
_HERE = os.path.dirname(os.path.abspath(__file__))
# the code whose result is cached: another version of any of it is another cache
_CODE = ("driver.py", "witnesses.py", "discover.py", "driverlibs.py", "capabilities.py",
         "elf.py", "ldcache.py", "require.py", "driver_cache.py")


def discover_cached(roots: DriverRoots, cache_dir: str | None, discover_fn=None,
                    note=None) -> Driver:
    """The driver under ``roots``: from ``cache_dir`` while its witnesses hold, else
    discovered (``discover_fn(roots, host)``, default discover.discover) and stored there.
    ``cache_dir`` None: no cache. ``note(text)`` hears which it was (for --explain)."""
    path = entry_path(cache_dir, roots) if cache_dir is not None else None
    if path is None:
        return _discover(discover_fn, roots, None)
    hit = read_entry(path, roots)
    if hit is not None:
        if note:
            note(f"GPU driver {hit.version}: from the discovery cache {path} (every file "
                 "discovery read is unchanged)")
        return hit
    host = HostFiles(roots)
    driver = _discover(discover_fn, roots, host)
    write_entry(path, driver, host.witnesses)
    if note:
        note(f"GPU driver {driver.version}: discovered ({len(host.seen)} looks at host files; "
             f"kept in {path} until one answer changes)")
    return driver


def _discover(discover_fn, roots, host):
    if discover_fn is None:
        from minictr.gpu.discover import discover as discover_fn
    return discover_fn(roots, host)


def entry_path(cache_dir: str, roots: DriverRoots) -> str | None:
    """The entry's path; None when the code's identity cannot be read (then: no cache)."""
    code = cachefiles.code_identity(os.path.join(_HERE, name) for name in _CODE)
    if code is None:
        return None
    digest = cachefiles.key_of([FORMAT, roots.driver_root, roots.dev_root, roots.proc_root,
                                *code])
    return os.path.join(cache_dir, f"driver-{digest[:32]}.json")


def read_entry(path: str, roots: DriverRoots) -> Driver | None:
    """The cached driver at ``path`` if the entry is whole, trusted and still true, else None."""
    data = cachefiles.read(path)
    if data is None:
        return None
    try:
        doc = jsonio.loads(data)
        if doc.get("format") != FORMAT or not still_holds(doc["witnesses"]):
            return None
        return from_plain(doc["driver"], roots)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return None                     # damaged or of another shape: discover again


def write_entry(path: str, driver: Driver, witnesses) -> None:
    """Store ``driver`` at ``path``; a cache that cannot be written only costs time."""
    cachefiles.write(path, jsonio.dumps({"format": FORMAT, "witnesses": witnesses,
                                         "driver": to_plain(driver)}).encode())


def witnesses(cache_dir: str, roots: DriverRoots) -> list | None:
    """The witnesses of the entry for ``roots`` (what the resolution memo, gpu/memo.py, must
    see unchanged too), or None without a readable entry."""
    path = entry_path(cache_dir, roots)
    data = cachefiles.read(path) if path is not None else None
    try:
        doc = jsonio.loads(data) if data is not None else None
        return doc["witnesses"] if doc and doc.get("format") == FORMAT else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
