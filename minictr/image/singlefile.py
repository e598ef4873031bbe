"""Single-file images: a squashfs (``.sqsh``, ``.sqfs``) or a SIF, run in place.

The file is the whole image: it is mounted read-only as the container's lowest layer (the
runtime's RootfsPlan.squashfs), never unpacked into the store, so it can sit on a shared,
read-only filesystem and serve every node at once. What the plan needs from it is read here,
without mounting (image/squashfs.py): the image config and, for ``-u NAME`` and job-native
mode, /etc/passwd and /etc/group.

Three conventions give the image config, the first that matches:

- minictr's own (``minictr export``): the OCI image config at ``/.minictr/image.json``;
- enroot's (``enroot import``): ``/etc/rc`` is the entrypoint, run by ``/bin/sh`` with the
  command as its arguments (enroot-switchroot), and ``/etc/environment`` holds the image's
  ENV as KEY=VALUE lines;
- Apptainer's (a SIF, or a sandbox squashed): ``/.singularity.d/actions/exec`` sources the
  image's environment scripts and execs its arguments; the default command is the image's
  ``/.singularity.d/runscript``.

Otherwise the image has no config: a command must be given.
"""
from __future__ import annotations

import os

from minictr import jsonio
from minictr.errors import ImageError
from minictr.records import record

CONFIG_PATH = "/.minictr/image.json"
SUFFIXES = (".sqsh", ".sqfs", ".squashfs", ".squash", ".sif")
ENROOT_RC = "/etc/rc"
APPTAINER_EXEC = "/.singularity.d/actions/exec"
APPTAINER_RUNSCRIPT = "/.singularity.d/runscript"
MAX_CONFIG = 4 << 20


@record
class FileImage:
    path: str                  # absolute
    offset: int                # where the squashfs starts (a SIF's root partition)
    format: str                # "sqsh" or "sif"
    convention: str            # "minictr", "enroot", "apptainer" or "none"
    config: dict               # in the OCI image config's shape: {"config": {...}}

    def read_file(self, path: str, max_size: int = 64 << 20) -> bytes | None:
        from minictr.image import squashfs

        return squashfs.read_file(self.path, self.offset, path, max_size)


def is_file_image(ref: str) -> bool:
    """Whether ``ref`` names a single-file image rather than a stored one: an existing regular
    file whose name ends like one, or any existing file given as a path (with a "/")."""
    if not (ref.endswith(SUFFIXES) or "/" in ref):
        return False
    return os.path.isfile(ref)


def check_missing_file(ref: str) -> None:
    """A name that can only mean a file (an absolute or ./ path, or a single-file suffix) but
    names none: say so, rather than failing to parse it as an image reference."""
    if ref.startswith(("/", "./", "../")) or ref.endswith(SUFFIXES):
        if not os.path.exists(ref):
            raise ImageError(f"image file {ref} does not exist",
                             hint="a single-file image is a .sqsh or .sif path; stored images "
                                  "are listed by `minictr images`")
        if not os.path.isfile(ref):
            raise ImageError(f"{ref} is not a regular file")


def open_image(ref: str) -> FileImage:
    """Identify the file and read its config (see the module docstring)."""
    from minictr.image import sif, squashfs

    path = os.path.abspath(ref)
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as err:
        raise ImageError(f"cannot read image file {ref}: {err.strerror}") from err
    if sif.is_sif(head):
        fmt, offset = "sif", sif.squashfs_offset(path)
    elif head[:4] == sif.SQUASHFS_MAGIC:
        fmt, offset = "sqsh", 0
    else:
        raise ImageError(f"{ref} is neither a squashfs nor a SIF file",
                         hint="single-file images are squashfs (minictr export, enroot import, "
                              "mksquashfs) or SIF (apptainer build)")
    probe = FileImage(path=path, offset=offset, format=fmt, convention="none", config={})
    try:
        with squashfs.SquashFS(path, offset) as fs:
            lookup = _lookup_with(fs)
            convention, config = _config(lookup, ref)
    except squashfs.Unsupported:
        convention, config = _config(_lookup_by_reading(probe), ref)
    return probe._replace(convention=convention, config=config)


def _lookup_with(fs):
    def lookup(name: str, max_size: int = MAX_CONFIG) -> tuple[bool, bytes | None]:
        inode = fs.lookup(name)
        if inode is None:
            return False, None
        return True, fs.read(inode, max_size) if inode.kind in (2, 9) else None
    return lookup


def _lookup_by_reading(image: FileImage):
    def lookup(name: str, max_size: int = MAX_CONFIG) -> tuple[bool, bytes | None]:
        data = image.read_file(name, max_size)
        return data is not None, data
    return lookup


def _config(lookup, ref: str) -> tuple[str, dict]:
    exists, data = lookup(CONFIG_PATH)
    if exists:
        try:
            config = jsonio.loads(data or b"")
        except ValueError as err:
            raise ImageError(f"{ref}: {CONFIG_PATH} is not JSON: {err}") from err
        if not isinstance(config, dict):
            raise ImageError(f"{ref}: {CONFIG_PATH} is not a JSON object")
        return "minictr", config
    exists, _ = lookup(ENROOT_RC)
    if exists:
        _, environment = lookup("/etc/environment")
        return "enroot", {"config": {"Entrypoint": ["/bin/sh", ENROOT_RC],
                                     "Env": parse_environment(environment or b"")}}
    exists, _ = lookup(APPTAINER_EXEC)
    if exists:
        return "apptainer", {"config": {"Entrypoint": [APPTAINER_EXEC],
                                        "Cmd": [APPTAINER_RUNSCRIPT]}}
    return "none", {"config": {}}


def parse_environment(data: bytes) -> list[str]:
    """/etc/environment as enroot reads it: KEY=VALUE lines, blanks and # comments skipped,
    one pair of surrounding quotes removed, an optional leading ``export``."""
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        if not sep or not key or any(c.isspace() for c in key):
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out.append(f"{key}={value}")
    return out


def placeholder_lookup(path: str, offset: int, scratch: str):
    """For a dry run: a function from a path in the image to a host file that answers stat(2)
    and access(2) as the image's would (an empty file or directory with its mode, under
    ``scratch``), or None when the image has no such path; nothing is mounted."""
    from minictr.image import squashfs

    def find(inside: str) -> str | None:
        try:
            with squashfs.SquashFS(path, offset) as fs:
                inode = fs.lookup(inside)
        except squashfs.Unsupported:
            return None
        if inode is None:
            return None
        here = os.path.join(scratch, inside.lstrip("/")) or scratch
        if inode.kind in (squashfs.DIR, squashfs.LDIR):
            os.makedirs(here, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(here), exist_ok=True)
            if not os.path.lexists(here):
                os.close(os.open(here, os.O_CREAT | os.O_WRONLY, 0o600))
            os.chmod(here, inode.mode & 0o7777)
        return here
    return find
