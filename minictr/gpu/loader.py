"""Make the injected libraries loadable inside the image without running anything from it.

libnvidia-container runs the image's ``ldconfig`` inside the container; the CDI hooks run
``nvidia-ctk hook update-ldcache``. minictr instead (a) bind-mounts each driver library into the
image's own library directory twice, at its real name and at its SONAME (the same file; no
symlink is created in the image), and (b) writes a new ``/etc/ld.so.cache`` in Python: the
image's own entries plus the injected SONAMEs (the bytes: the runtime writes the file at create
and mounts it read-only over the image's). No binary from
an untrusted image runs, no symlink the image planted is followed, and it costs microseconds.

The image is only *read* through ``read_file(path) -> bytes | None`` (a missing file may also
raise OSError or a MinictrError): its ``/etc/ld.so.cache``, ``/etc/os-release`` and the CUDA
forward-compatibility library ``/usr/local/cuda/compat/libcuda.so.1``.
"""
from __future__ import annotations

from minictr.records import record

from minictr.errors import MinictrError
from minictr.gpu import capabilities as caps
from minictr.gpu import ldcache

DEBIAN_LIBDIR = "/usr/lib/x86_64-linux-gnu"
DEBIAN_LIBDIR32 = "/usr/lib/i386-linux-gnu"
RPM_LIBDIR = "/usr/lib64"
RPM_LIBDIR32 = "/usr/lib"
COMPAT_DIR = "/usr/local/cuda/compat"
COMPAT_SONAMES = ("libcuda.so.1", "libnvidia-ptxjitcompiler.so.1", "libnvidia-nvvm.so.4")
FLAG_I386 = ldcache.FLAG_ELF_LIBC6
_COMPILED: list = []


def _image_keep():
    """The keys kept when an image's cache is scanned, compiled on first use (~0.4 ms: most
    images, which have an os-release and no driver library baked in, never need it)."""
    if not _COMPILED:
        _COMPILED.append(ldcache.key_pattern(("libc",) + caps.ALL_STEMS))
    return _COMPILED[0]


_DRIVER_MARKERS = (b"nvidia", b"libcuda", b"libnvcuvid", b"libnvoptix")
_KNOWN_IDS = {"debian", "ubuntu", "fedora", "rhel", "centos", "suse", "opensuse", "sles",
              "amzn", "rocky", "almalinux", "ol"}


@record
class ImageLoader:
    """What the image's loader looks like, read from its files."""

    libdir: str                          # where injected x86-64 libraries go
    libdir32: str                        # where i386 copies go (compat32)
    cache: bytes | None                  # the image's own /etc/ld.so.cache, if readable
    entries: tuple[ldcache.Entry, ...]   # its libc and NVIDIA driver entries (nothing else)
    musl: bool = False


def read_optional(read_file, path: str) -> bytes | None:
    try:
        return read_file(path)
    except (OSError, MinictrError, KeyError, ValueError):
        return None


def file_present(read_file, path: str) -> bool:
    """Whether the image has a regular file at ``path``. A store that refuses to read it
    (a driver library is larger than what the store reads whole) still proves it is there."""
    try:
        return read_file(path) is not None
    except MinictrError:
        return True
    except (OSError, KeyError, ValueError):
        return False


def _os_release(read_file) -> dict[str, str]:
    raw = read_optional(read_file, "/etc/os-release") or \
        read_optional(read_file, "/usr/lib/os-release") or b""
    out = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip().strip('"')
    return out


def inspect_image(read_file) -> ImageLoader:
    """Pick the image's library directory by distribution (os-release: Debian/Ubuntu use the
    multiarch dir, others /usr/lib64 as Fedora/RHEL/SUSE), else by where its ld.so.cache says
    libc lives. The cache is only scanned for libc and for NVIDIA libraries baked into the
    image, and only when it mentions them at all (a substring test, cheaper than the scan)."""
    raw = read_optional(read_file, "/etc/ld.so.cache")
    release = _os_release(read_file)
    ids = {release.get("ID", "")} | set(release.get("ID_LIKE", "").split())
    decided = bool(ids & _KNOWN_IDS)     # a known glibc distribution
    musl = "alpine" in ids or (not decided and
                               bool(read_optional(read_file, "/etc/ld-musl-x86_64.path")))
    entries: tuple[ldcache.Entry, ...] = ()
    if raw and (not decided or any(m in raw for m in _DRIVER_MARKERS)):
        try:
            entries = tuple(ldcache.parse(raw, _image_keep()))
        except ldcache.LdCacheError:
            raw = None        # a broken cache is replaced; the loader would ignore it anyway
    if decided:
        debian_like = bool(ids & {"debian", "ubuntu"})
    else:
        debian_like = any("x86_64-linux-gnu" in e.value for e in entries
                          if e.key == "libc.so.6" and e.is_x86_64)
    if debian_like:
        return ImageLoader(DEBIAN_LIBDIR, DEBIAN_LIBDIR32, raw, entries, musl)
    return ImageLoader(RPM_LIBDIR, RPM_LIBDIR32, raw, entries, musl)


def baked_driver_libraries(image: ImageLoader) -> list[str]:
    """Driver libraries the image's loader cache lists (a copy baked in at build time)."""
    return [e.value for e in image.entries
            if e.key.split(".so")[0] in caps.STEM_CAPABILITY and not e.key.endswith(".so")]


def compat_entries(read_file, image_env: dict[str, str], driver_cuda: str | None,
                   wanted: frozenset[str]) -> list[ldcache.Entry]:
    """CUDA forward compatibility: the image's /usr/local/cuda/compat libraries win over the
    host's only when the image's CUDA (CUDA_VERSION) is newer than the driver's, as the
    toolkit's enable-cuda-compat hook decides (it compares their driver majors; the CUDA version
    ordering is the same). Datacenter GPUs only; on others libcuda will report an error."""
    if "compute" not in wanted or not driver_cuda:
        return []
    image_cuda = image_env.get("CUDA_VERSION", "")
    if not image_cuda:
        return []
    from minictr.gpu.require import version_tuple

    if version_tuple(image_cuda)[:2] <= version_tuple(driver_cuda)[:2]:
        return []
    out = []
    for soname in COMPAT_SONAMES:
        path = f"{COMPAT_DIR}/{soname}"
        if file_present(read_file, path):
            out.append(ldcache.Entry(soname, path))
    return out


def new_cache(image: ImageLoader, injected: list[ldcache.Entry]) -> bytes:
    """The image's cache plus the injected entries (ldcache.splice); a cache too damaged to
    splice is dropped, as the loader would ignore it too."""
    try:
        return ldcache.splice(image.cache, injected)
    except ldcache.LdCacheError:
        return ldcache.write(injected)
