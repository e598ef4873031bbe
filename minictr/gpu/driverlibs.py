"""The driver's user-space libraries: which files, of which capability, under which names.

The loader cache of the driver root (DRIVER/etc/ld.so.cache) is the source, as for
libnvidia-container (``nvc_ldcache.c``): its keys are the SONAMEs. When it lists no core
library (a driver mounted by a container platform at /usr/local/nvidia/lib64 and found through
LD_LIBRARY_PATH, say), the usual directories are listed and each SONAME is read from the ELF
file. Only files whose version suffix equals the kernel module's are used.
"""
from __future__ import annotations

import os
from collections import deque

from minictr.gpu import capabilities as caps
from minictr.gpu import elf, ldcache
from minictr.gpu.driver import HostFiles, Library
from minictr.gpu.witnesses import readlink

_KEEP = ldcache.key_pattern(caps.ALL_STEMS)
FALLBACK_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib64", "lib/x86_64-linux-gnu", "lib64",
                 "usr/local/nvidia/lib64", "usr/lib")


__all__ = ["Library", "read_libraries", "resolve_in_root"]


def resolve_in_root(root: str, path: str, max_links: int = 40,
                    host: HostFiles | None = None) -> str:
    """``path`` with every symlink resolved as if ``root`` were ``/``: absolute targets and
    ``..`` never leave ``root`` (a containerised driver root must not point us at the host)."""
    parts = deque(p for p in path.split("/") if p)
    cur: list[str] = []
    links = 0
    while parts:
        part = parts.popleft()
        if part == ".":
            continue
        if part == "..":
            if cur:
                cur.pop()
            continue
        link = os.path.join(root, *cur, part)
        target = host.readlink(link) if host is not None else readlink(link)
        if target is None:
            cur.append(part)
            continue
        links += 1
        if links > max_links:
            raise OSError(40, "too many levels of symbolic links", path)
        if target.startswith("/"):
            cur = []
        parts.extendleft(reversed([p for p in target.split("/") if p]))
    return os.path.join(root, *cur)


def _from_cache(host: HostFiles, driver_root: str, version: str, warnings: list[str],
                files: dict, stale: dict) -> bool:
    """Libraries the driver root's loader cache lists (its keys are the SONAMEs). Returns
    whether the driver root has a loader cache at all."""
    cache_path = os.path.join(driver_root, "etc/ld.so.cache")
    data = host.data(cache_path)
    if data is None:
        return False
    try:
        entries = ldcache.parse(data, _KEEP)
    except ldcache.LdCacheError as err:
        warnings.append(f"{cache_path}: {err}")
        return True
    for e in entries:
        stem = e.key.split(".so")[0]
        if e.key.endswith(".so") or stem not in caps.STEM_CAPABILITY:
            continue                      # dev links (libcuda.so) are not SONAMEs
        real = resolve_in_root(driver_root, e.value, host=host)
        name = os.path.basename(real)
        if name != f"{stem}.so.{version}":
            if name.startswith(stem + ".so."):
                stale[real] = None
            continue
        if not host.exists(real):
            continue
        lib = files.setdefault(real, {"stem": stem, "x86_64": e.is_x86_64, "sonames": []})
        if e.key != name and e.key not in lib["sonames"]:
            lib["sonames"].append(e.key)
    return True


def _from_dirs(host: HostFiles, driver_root: str, version: str, files: dict,
               stale: dict) -> list[str]:
    """Libraries found by listing the usual directories (SONAME read from the ELF file): for
    drivers whose libraries the loader cache does not list, such as /usr/local/nvidia/lib64
    set up by a container platform. 64-bit libraries only. Returns the directories used."""
    used = []
    for d in FALLBACK_DIRS:
        directory = os.path.join(driver_root, d)
        for name in host.listdir(directory):
            stem, sep, suffix = name.partition(".so.")
            if not sep or stem not in caps.STEM_CAPABILITY or not suffix[:1].isdecimal():
                continue
            real = resolve_in_root(driver_root, os.path.join("/", d, name), host=host)
            if suffix != version:
                if suffix.count(".") >= 1 and name == os.path.basename(real):
                    stale[real] = None
                continue
            if real in files or not host.isfile(real):
                continue
            so = elf.soname(real, host.open_binary)
            if so is None:               # not a 64-bit ELF library
                continue
            files[real] = {"stem": stem, "x86_64": True,
                           "sonames": [so] if so != os.path.basename(real) else []}
            if d not in used:
                used.append(d)
    return used


def read_libraries(roots, version: str, warnings: list[str], host: HostFiles):
    """The driver's libraries, grouped by real file, and the stale copies (version suffix !=
    kernel module version) that were left out, read through ``host``. The loader cache first;
    if it lists neither libcuda nor libnvidia-ml of this version, the usual directories are
    listed too."""
    files: dict[str, dict] = {}
    stale: dict[str, None] = {}
    has_cache = _from_cache(host, roots.driver_root, version, warnings, files, stale)
    if not {v["stem"] for v in files.values()} & set(caps.ESSENTIAL.values()):
        used = _from_dirs(host, roots.driver_root, version, files, stale)
        # a driver root with no loader cache of its own (a container platform's
        # /usr/local/nvidia) is meant to be listed; one whose cache omits them is stale
        if used and has_cache:
            warnings.append("driver libraries are not in the driver root's ld.so.cache; found "
                            "them in " + ", ".join("/" + d for d in used))
        elif not files:
            warnings.append(f"no driver libraries of version {version} under "
                            f"{roots.driver_root} (ld.so.cache, {', '.join(FALLBACK_DIRS)})")
    for path in stale:
        warnings.append(f"{path} does not match the kernel module {version} and is not "
                        "injected (driver upgraded without a reboot?)")
    libs = tuple(Library(stem=v["stem"], capability=caps.STEM_CAPABILITY[v["stem"]],
                         x86_64=v["x86_64"], host_path=k, real_name=os.path.basename(k),
                         sonames=tuple(v["sonames"])) for k, v in files.items())
    return libs, tuple(stale)
