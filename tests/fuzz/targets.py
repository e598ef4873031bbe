"""The fuzz targets: one function per parser of untrusted input, ``target(data: bytes)``.

Each calls the parser the way minictr does on input that came from an image, a registry or a
host file, and checks what can be checked without an oracle (a parsed reference prints back to
itself, a cache written and read again gives the same entries). The rule the fuzzer enforces
(``check``): a parser may refuse its input only with minictr's own error family
(``MinictrError``); any other exception is a bug.

The targets are plain functions: ``run.py`` hands them to atheris, and test_regressions.py
calls them with the inputs that once crashed.
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile

from minictr.errors import MinictrError

TARGETS: dict = {}


def target(fn):
    TARGETS[fn.__name__] = fn
    return fn


def check(name: str, data: bytes) -> None:
    """Run target ``name`` on ``data``: a MinictrError is a clean refusal, anything else
    propagates (to atheris as a crash, to pytest as a failure)."""
    try:
        TARGETS[name](data)
    except MinictrError:
        pass


_scratch: str | None = None


def scratch() -> str:
    """A directory for the targets that need files, under $MINICTR_FUZZ_SCRATCH (the test's
    tmp_path) so that a fuzzer killed on a crash leaves nothing elsewhere."""
    global _scratch
    if _scratch is None:
        base = os.environ.get("MINICTR_FUZZ_SCRATCH") or None
        _scratch = tempfile.mkdtemp(prefix="minictr-fuzz-", dir=base)
        atexit.register(shutil.rmtree, _scratch, True)
    return _scratch


def _json(data: bytes):
    """The input as a JSON document when it is one (most mutations of a JSON seed are not:
    those still exercise the parsers' own JSON handling through the raw-bytes targets)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


# ---------------------------------------------------------------- image side


def with_checksums(data: bytes) -> bytes:
    """The input with a valid checksum in every block that looks like a tar header (ustar or
    GNU magic at offset 257): a mutated header would otherwise fail its checksum, and the
    fuzzer would never get past the first check of the reader."""
    out = bytearray(data)
    for pos in range(0, len(out) - 511, 512):
        if out[pos + 257:pos + 262] == b"ustar":
            out[pos + 148:pos + 156] = b" " * 8
            out[pos + 148:pos + 156] = b"%06o\0 " % sum(out[pos:pos + 512])
    return bytes(out)


@target
def tar(data: bytes) -> None:
    """image/tarstream.py: every member's header (pax, GNU long names, sparse maps) and data."""
    from minictr.image import tarstream

    reader = tarstream.TarReader(io.BytesIO(with_checksums(data)))
    for entry in reader:
        for _ in reader.data(entry):
            pass
    reader.drain()


@target
def layer(data: bytes) -> None:
    """store.import_layer: a layer tar unpacked into a store (the digests made to match, so a
    layer the unpacker accepts is committed, then removed for the next input)."""
    from minictr.image.store import Store

    from minictr.image.files import remove_tree

    root = os.path.join(scratch(), "store")
    data = with_checksums(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    try:
        with Store(root, rootless=True) as store:
            store.import_layer(io.BytesIO(data), digest=digest, diff_id=digest, chain_id=digest,
                               media_type="application/vnd.oci.image.layer.v1.tar")
    finally:
        remove_tree(root)


_DECLARED = (None, "application/vnd.oci.image.manifest.v1+json",
             "application/vnd.oci.image.index.v1+json",
             "application/vnd.docker.distribution.manifest.list.v2+json", "text/plain")


@target
def manifest(data: bytes) -> None:
    """image/manifests.py: a manifest or index under each declared media type; an index's
    platform choice; a manifest's layers against a config."""
    from minictr.image import manifests

    declared = _DECLARED[len(data) % len(_DECLARED)]
    kind, doc = manifests.load(data, declared, "fuzz")
    if kind == "index":
        for want in ({"os": "linux", "architecture": "amd64", "variant": "v3"},
                     {"os": "linux", "architecture": "arm", "variant": "v7"}):
            with contextlib.suppress(MinictrError):
                manifests.select_manifest(doc["manifests"], want, "fuzz")
    else:
        ids = ["sha256:" + "ab" * 32] * len(doc["layers"])
        manifests.layer_records(doc, {"rootfs": {"diff_ids": ids}}, lambda *a: a)


@target
def image_config(data: bytes) -> None:
    """An image config: rootfs.diff_ids and ChainIDs, then the whole plan built from it
    (spec/builder.py reads Entrypoint, Cmd, Env, User, WorkingDir, Labels...)."""
    from minictr.image import manifests
    from minictr.spec import builder
    from minictr.spec.options import RunOptions

    config = manifests.parse_config(data)
    manifests.chain_ids(config["rootfs"]["diff_ids"])
    builder.build_spec(config, RunOptions(image="fuzz", command=("true",)), rootless=False,
                       container_id="f" * 64, rootfs_path="/nonexistent",
                       read_file=lambda path: None, host_env={}, host_ids=(0, 0))


@target
def reference(data: bytes) -> None:
    """image/reference.py: a parsed reference prints as a string that parses to itself."""
    from minictr.image import reference as ref_mod

    text = data.decode("utf-8", "surrogateescape")
    ref = ref_mod.parse(text)
    again = ref_mod.parse(str(ref))
    assert again == ref, (text, str(ref), again)
    ref_mod.parse(ref.familiar)
    ref_mod.looks_like_id(text)


def _layout_dir(name: str) -> str:
    """A source directory with one small image's blobs (from tests/unit/imagefactory), into
    which a target writes the document it fuzzes."""
    path = os.path.join(scratch(), name)
    if not os.path.isdir(path):
        from tests.unit import imagefactory as f

        image = f.make_image(f.BUSYBOXISH, compression=None)
        f.write_layout(path, [(image, {})])
        config_name = image.config_digest[7:] + ".json"
        with open(os.path.join(path, config_name), "wb") as out:
            out.write(image.config)
    return path


@target
def docker_archive(data: bytes) -> None:
    """A `docker save` archive's manifest.json (image/archive.py), over a directory holding
    the blobs it may name (an OCI layout beside it, as Docker >= 25 writes)."""
    from minictr.image import archive, sources

    path = _layout_dir("docker")
    with open(os.path.join(path, "manifest.json"), "wb") as f:
        f.write(data)
    with sources.DirSource(path) as src:
        archive._docker_images(src, None)


@target
def oci_layout(data: bytes) -> None:
    """An OCI layout's index.json (image/archive.py): names, platforms, nested indexes."""
    from minictr.image import archive, manifests, sources

    path = _layout_dir("oci")
    with open(os.path.join(path, "index.json"), "wb") as f:
        f.write(data)
    with sources.DirSource(path) as src:
        archive._oci_images(src, None, "localhost/fuzz", manifests.host_platform(cpu_flags=set()))


@target
def www_authenticate(data: bytes) -> None:
    """A registry's reply headers: WWW-Authenticate challenges (image/auth.py), Retry-After and
    the error body (image/distribution.py)."""
    from minictr.image import auth, distribution

    text = data.decode("latin-1")          # HTTP header bytes, as http.client decodes them
    for ch in auth.parse_challenges(text):
        assert ch.scheme == ch.scheme.lower() and all(isinstance(v, str)
                                                      for v in ch.params.values())

    class Reply:
        status_code, reason = 503, "Service Unavailable"
        headers = {"Retry-After": text}

        def json(self):
            return json.loads(data)

    delay = distribution.retry_after(Reply(), 1.0)
    assert 0.0 <= delay <= distribution.MAX_RETRY_AFTER
    assert isinstance(distribution.error_text(Reply()), str)


# ---------------------------------------------------------------- GPU side


@target
def ldcache(data: bytes) -> None:
    """gpu/ldcache.py: an image's /etc/ld.so.cache, parsed, filtered, and spliced with the
    driver's entries; what splice writes parses back."""
    from minictr.gpu import ldcache as lc

    lc.parse(data)
    lc.parse(data, lc.key_pattern(["libcuda", "libnvidia-ml"]))
    injected = [lc.Entry("libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1")]
    out = lc.splice(data, injected)
    assert injected[0] in lc.parse(out)


_memfd: int | None = None


@target
def elf(data: bytes) -> None:
    """gpu/elf.py: the SONAME of a driver library found by scanning a directory."""
    from minictr.gpu import elf as elf_mod

    global _memfd
    if _memfd is None:
        _memfd = os.memfd_create("minictr-fuzz-elf")
    os.ftruncate(_memfd, 0)
    os.pwrite(_memfd, data, 0)
    name = elf_mod.soname(f"/proc/self/fd/{_memfd}")
    assert name is None or isinstance(name, str)


@target
def cdi(data: bytes) -> None:
    """gpu/cdi.py: a CDI spec file (JSON or YAML) read for --device, and every device it
    names turned into container edits."""
    from minictr.gpu import cdi as cdi_mod

    spec_dir = os.path.join(scratch(), "cdi")
    os.makedirs(spec_dir, exist_ok=True)
    for old in os.listdir(spec_dir):
        os.unlink(os.path.join(spec_dir, old))
    name = "spec.json" if data[:1] in (b"{", b"[") else "spec.yaml"
    with open(os.path.join(spec_dir, name), "wb") as f:
        f.write(data)
    devices, _common = cdi_mod.registry([spec_dir])
    for kind, dev in devices:
        with contextlib.suppress(MinictrError):
            cdi_mod.edits_for_names([f"{kind}={dev}"], [spec_dir])


# ---------------------------------------------------------------- host files and options


@target
def env_file(data: bytes) -> None:
    """spec/process.py: an --env-file's KEY=VALUE lines."""
    from minictr.spec import process

    for entry in process.parse_env_file("fuzz.env", data, {"HOME": "/root"}):
        assert "=" in entry and "\0" not in entry.partition("=")[0]


@target
def units(data: bytes) -> None:
    """spec/units.py: --memory / --memory-swap sizes, --cpuset-cpus lists, --cpus numbers."""
    from minictr.spec import units as u

    text = data.decode("utf-8", "replace")
    first, _, second = text.partition("\n")
    with contextlib.suppress(MinictrError):
        assert u.parse_bytes(first, "--memory") >= 0
    with contextlib.suppress(MinictrError):
        u.parse_memory(first, second or None)
    with contextlib.suppress(MinictrError):
        u.parse_cpuset(first)
    try:
        cpus = float(first)
    except ValueError:
        return
    quota, period = u.cpu_quota(cpus)
    assert u.MIN_CPU_QUOTA <= quota and period == u.CPU_PERIOD


def _walk(fs, inode, budget: list[int], depth: int = 0) -> None:
    """Every entry under ``inode``, bounded (a crafted image may loop or be huge): each file
    read, each symlink's target looked up."""
    for name, ref, _kind in fs._entries(inode):
        budget[0] -= 1
        if budget[0] < 0 or depth > 16:
            return
        child = fs.inode(ref)
        if child.kind in (1, 8):                     # a directory (basic, extended)
            _walk(fs, child, budget, depth + 1)
        elif child.kind in (2, 9):                   # a regular file
            fs.read(child, 1 << 20)
        elif child.kind in (3, 10):                  # a symlink
            fs.lookup("/" + name.decode("utf-8", "replace"))


def _squashfs_at(path: str, offset: int) -> None:
    from minictr.image import singlefile, squashfs

    with squashfs.SquashFS(path, offset) as fs:
        singlefile._config(singlefile._lookup_with(fs), path)
        for name in ("/etc/passwd", "/etc/group", "/etc/rc", "/.singularity.d/actions/exec",
                     "/a/b/../../etc/passwd", "/link/x"):
            fs.read_file(name, 1 << 20)
        _walk(fs, fs.inode(fs.root_inode), [512])


@target
def squashfs(data: bytes) -> None:
    """image/squashfs.py and singlefile.py: a .sqsh image read in process (superblock, inode
    and directory tables, fragments, symlinks) for its config and /etc files, without
    mounting it. Compressors Python lacks are refused (Unsupported, an ImageError)."""
    path = os.path.join(scratch(), "image.sqsh")
    with open(path, "wb") as f:
        f.write(data)
    _squashfs_at(path, 0)


@target
def sif(data: bytes) -> None:
    """image/sif.py: a SIF's header and descriptor table, its root partition, and the squashfs
    found there."""
    from minictr.image import sif as sif_mod

    path = os.path.join(scratch(), "image.sif")
    with open(path, "wb") as f:
        f.write(data)
    if not sif_mod.is_sif(data[:64]):
        return
    offset = sif_mod.squashfs_offset(path)
    assert 0 <= offset < len(data)
    _squashfs_at(path, offset)
