"""Build root filesystem trees: busybox, host binaries with their libraries, the probe, the demo.

Each builder fills a directory; ``oci.py`` turns directories into layers. The trees leave out
/proc, /sys and /dev: making those mount points is the runtime's job, and a test image without
them checks that it does.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from importlib import resources

from . import ToolError, ToolMissing
from .elf import dependencies, read_elf

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
APP_UID = 1000

PASSWD = f"""root:x:0:0:root:/root:/bin/sh
app:x:{APP_UID}:{APP_UID}:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = f"""root:x:0:
app:x:{APP_UID}:
nogroup:x:65534:
"""
# ownership the tar writer applies on top of "everything root-owned" (see tarball.Normalize)
BASE_OWNERS = {"home/app": (APP_UID, APP_UID)}


def _write(root: str, rel: str, data: bytes | str, mode: int = 0o644) -> str:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)
    return path


def _mkdir(root: str, rel: str, mode: int = 0o755) -> None:
    path = os.path.join(root, rel)
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)        # explicit: makedirs' mode is filtered by the umask


def add_base_files(root: str) -> None:
    """/etc/passwd and /etc/group with root, app (uid 1000) and nobody; /tmp sticky and
    world-writable (1777); /root 0700; /home/app (owned by app through ``BASE_OWNERS``)."""
    _write(root, "etc/passwd", PASSWD)
    _write(root, "etc/group", GROUP)
    _mkdir(root, "tmp", 0o1777)
    _mkdir(root, "root", 0o700)
    _mkdir(root, "home/app", 0o755)


def find_busybox(candidates=BUSYBOX_CANDIDATES) -> str:
    """A *static* busybox (Debian's busybox-static): it must run in an image with no libc."""
    for path in candidates:
        if os.path.isfile(path) and read_elf(path).interp is None:
            return path
    raise ToolMissing(f"no statically linked busybox found (looked at {', '.join(candidates)})",
                      hint="apt-get install busybox-static")


def add_busybox(root: str, busybox: str | None = None) -> None:
    """/bin/busybox plus one link per applet at the path ``busybox --list-full`` gives.

    /bin/sh is a *hardlink* to /bin/busybox and the other applets are relative symlinks, so every
    image carries both kinds of link and a layer unpacker that breaks either is caught at once.
    """
    busybox = busybox or find_busybox()
    _mkdir(root, "bin")
    target = os.path.join(root, "bin", "busybox")
    shutil.copyfile(busybox, target)
    os.chmod(target, 0o755)
    listing = subprocess.run([busybox, "--list-full"], check=True, capture_output=True, text=True)
    for rel in sorted(set(listing.stdout.split())):
        if rel in ("bin/busybox", "linuxrc"):      # linuxrc: an initrd's init, not an applet
            continue
        link = os.path.join(root, rel)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if os.path.lexists(link):
            continue
        if rel == "bin/sh":
            os.link(target, link)
        else:
            os.symlink(os.path.relpath(target, os.path.dirname(link)), link)


def busybox_tree(root: str, busybox: str | None = None) -> None:
    add_busybox(root, busybox)
    add_base_files(root)


def _mirror(host_path: str, root: str, depth: int = 0) -> None:
    """Copy ``host_path`` into ``root`` at the same path, recreating every symlink met on the way
    (``/lib -> usr/lib`` on a merged-/usr host, ``libfoo.so.1 -> libfoo.so.1.2``), so the loader
    finds the same names inside the image as on the host."""
    if depth > 40:
        raise ToolError(f"too many levels of symlinks copying {host_path}")
    parts = [p for p in host_path.split("/") if p]
    current = "/"
    for i, part in enumerate(parts):
        host = os.path.join(current, part)
        dest = os.path.join(root, host.lstrip("/"))
        st = os.lstat(host)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(host)
            if not os.path.lexists(dest):
                os.symlink(target, dest)
            resolved = os.path.normpath(os.path.join(os.path.dirname(host), target))
            return _mirror(os.path.join(resolved, *parts[i + 1:]), root, depth + 1)
        if stat.S_ISDIR(st.st_mode):
            if not os.path.isdir(dest):
                os.mkdir(dest)
                os.chmod(dest, stat.S_IMODE(st.st_mode))
        elif not os.path.lexists(dest):
            shutil.copy2(host, dest)
        current = host


def ld_so_conf(root: str, triplet: str = "x86_64-linux-gnu") -> None:
    """Debian's /etc/ld.so.conf layout, so ``ldconfig`` inside the image (or run by a GPU hook
    with ``-r``) knows the multiarch directories."""
    _write(root, "etc/ld.so.conf", "include /etc/ld.so.conf.d/*.conf\n")
    _write(root, "etc/ld.so.conf.d/libc.conf", "/usr/local/lib\n")
    _write(root, f"etc/ld.so.conf.d/{triplet}.conf",
           f"/usr/local/lib/{triplet}\n/lib/{triplet}\n/usr/lib/{triplet}\n")


def host_binaries_tree(root: str, binaries: list[str]) -> list[str]:
    """Copy host ``binaries`` with their loader and every library they load. Returns the host
    paths copied (binaries first)."""
    paths = []
    for binary in binaries:
        found = binary if "/" in binary else shutil.which(binary)
        if not found or not os.path.isfile(found):
            raise ToolMissing(f"host binary {binary} not found")
        paths.append(os.path.abspath(found))
    elfs = [p for p in paths if is_elf(p)]
    copied = paths + dependencies(elfs)
    for path in copied:
        _mirror(path, root)
    add_base_files(root)
    ld_so_conf(root)
    return copied


def is_elf(path: str) -> bool:
    with open(os.path.realpath(path), "rb") as f:
        return f.read(4) == b"\x7fELF"


def probe_source() -> str:
    return resources.files(__package__).joinpath("probe.c").read_text()


def compile_probe(dest: str, *, cc: str = "gcc") -> str:
    """Compile probe.c to ``dest`` with ``cc -static -O2`` (needs glibc's libc.a: libc6-dev)."""
    if not shutil.which(cc):
        raise ToolMissing(f"{cc} not found", hint="apt-get install gcc libc6-dev")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(probe_source())
        done = subprocess.run([cc, "-static", "-O2", "-Wall", "-o", dest, src],
                              capture_output=True, text=True)
    if done.returncode != 0:
        raise ToolError(f"compiling probe.c failed: {done.stderr.strip().splitlines()[-1:]}",
                        hint="a static link needs libc6-dev (libc.a)")
    return dest


def probe_tree(root: str) -> None:
    """The probe layer: just /probe, statically linked."""
    compile_probe(os.path.join(root, "probe"))
    os.chmod(os.path.join(root, "probe"), 0o755)


def demo_tree(root: str) -> None:
    """The demo layer: /demo.sh (see demo.sh, run by ``make run``)."""
    script = resources.files(__package__).joinpath("demo.sh").read_text()
    _write(root, "demo.sh", script, 0o755)
