"""Inputs that once crashed or hung a parser, kept as fixed cases (no fuzzer needed: each goes
through its target as the fuzzer would send it). Every one must now be refused with a
MinictrError, or accepted, and never raise anything else (targets.check)."""
from __future__ import annotations

import io
import json
import signal
import struct
import tarfile

import pytest

from tests.fuzz import seeds, targets
from tests.unit import imagefactory as f


def _index(**platform) -> bytes:
    image = f.make_image(f.BUSYBOXISH, compression=None)
    return json.dumps({"schemaVersion": 2, "mediaType": f.OCI_INDEX, "manifests": [
        f.descriptor(image.manifest, f.OCI_MANIFEST, **platform)]}).encode()


def _elf_with_dynamic_at(offset: int) -> bytes:
    """An ELF64-LE header whose one program header is PT_DYNAMIC at ``offset``."""
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), 3, 62, 1, 0,
                       64, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 2, 4, offset, 0, 0, 1 << 40, 1 << 40, 8)
    return ehdr + phdr


def _tar_with_negative_pax_size() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("a")
        info.pax_headers = {"comment": "x"}
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    data = bytearray(buf.getvalue())
    data[124:136] = b"\xff" + ((1 << 88) - 512).to_bytes(11, "big")     # base-256: -512
    return targets.with_checksums(bytes(data))


def _tar_with_mtime(mtime: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("etc/x")
        info.pax_headers = {"mtime": mtime}
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    return buf.getvalue()


def _docker_manifest_json(**entry) -> bytes:
    doc = json.loads(seeds._docker_manifest_json()[0])
    doc[0].update(entry)
    return json.dumps(doc).encode()


DEEP = b"[" * 100_000

# (target, input, what went wrong before the fix)
CASES = [
    ("www_authenticate", b"Negotiate",
     "Retry-After neither seconds nor an HTTP date: ValueError from email.utils"),
    ("www_authenticate", b"nan", "Retry-After: nan made a NaN sleep"),
    ("www_authenticate", DEEP, "a registry's error body nested too deep: RecursionError"),
    ("units", b"6e7777777\n77g", "--cpus inf: OverflowError from round()"),
    ("units", b"nan", "--cpus nan: ValueError from round()"),
    ("env_file", b"HOM\0\0\0\0C==x\n", "a NUL in an env file reached the process env"),
    ("elf", _elf_with_dynamic_at(1 << 63),
     "PT_DYNAMIC offset past 2^63: ValueError from seek (and 1 TiB reads)"),
    ("cdi", b'{"cdiVersion": "1.1.0", "kind": "nvidia.com/gpu", "devices": '
            b'[{"name": "0", "containerEdits": {"deviceNodes": ["/dev/null"]}}]}',
     "a deviceNode that is a string: AttributeError"),
    ("cdi", b'kind: a.com/b\ndevices: [{name: x, containerEdits: {deviceNodes: '
            b'[{path: /dev/x, type: c, major: "one", minor: 0}]}}]\n',
     "major not a number: ValueError from int()"),
    ("cdi", b'kind: a.com/b\ncontainerEdits: [1]\ndevices: [{name: x}]\n',
     "containerEdits a list: AttributeError"),
    ("manifest", _index(platform=5), "an index descriptor's platform an int: AttributeError"),
    ("manifest", _index(platform={"os": "linux", "architecture": "arm", "variant": 5661}),
     "a platform variant that is a number: TypeError from str.join"),
    ("manifest", DEEP, "a manifest nested too deep: RecursionError"),
    ("image_config", DEEP, "an image config nested too deep: RecursionError"),
    ("oci_layout", _index(annotations={"org.opencontainers.image.ref.name": [1]}),
     "a ref.name annotation that is a list: TypeError (unhashable)"),
    ("oci_layout", DEEP, "index.json nested too deep: RecursionError"),
    ("docker_archive", _docker_manifest_json(RepoTags=[["x"]]),
     "RepoTags holding a list: AttributeError from reference.parse"),
    ("docker_archive", _docker_manifest_json(Layers=[5]), "a layer path that is a number"),
    ("docker_archive", b'{"a":' * 50_000, "manifest.json nested too deep: RecursionError"),
    ("ldcache", b"ld.so-1.7.0\0\0\0\0", "an old-format header cut short: struct.error"),
    ("ldcache", b"glibc-ld.so.cache1.1", "a new-format header cut short (splice): struct.error"),
    ("tar", _tar_with_negative_pax_size(),
     "a pax header of base-256 size -512: the reader went back and looped forever"),
    ("layer", _tar_with_mtime("1" + "0" * 30),
     "an mtime past a 64-bit timespec: OverflowError from utime"),
    ("layer", _tar_with_mtime("-1" + "0" * 30), "the same, negative"),
]


@pytest.fixture
def hang_guard():
    """One of these inputs once made a parser loop forever: a regression fails the test
    after a minute instead of hanging the suite (a guard, not a timing measurement)."""
    def expired(signum, frame):
        raise AssertionError("the parser did not return within 60 s: it hangs again")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("name,data,why", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_once_crashing_input_is_handled(name, data, why, hang_guard):
    targets.check(name, data)


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_seeds_are_handled(name):
    """The seeds themselves (valid inputs, mostly) pass through their target."""
    for data in seeds.seeds(name):
        targets.check(name, data)
