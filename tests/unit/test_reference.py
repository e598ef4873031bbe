import pytest

from minictr.errors import ImageError
from minictr.image.reference import looks_like_id, parse

D = "sha256:" + "a" * 64

VALID = [
    # text, normalised, familiar
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("nvidia/cuda:12.4.1-base", "docker.io/nvidia/cuda:12.4.1-base", "nvidia/cuda:12.4.1-base"),
    ("ghcr.io/o/r:t", "ghcr.io/o/r:t", "ghcr.io/o/r:t"),
    ("localhost/demo", "localhost/demo:latest", "localhost/demo:latest"),
    ("localhost:5000/a/b/c:v1", "localhost:5000/a/b/c:v1", "localhost:5000/a/b/c:v1"),
    ("127.0.0.1:5000/x", "127.0.0.1:5000/x:latest", "127.0.0.1:5000/x:latest"),
    ("Registry/repo", "Registry/repo:latest", "Registry/repo:latest"),   # upper case: a host
    (f"busybox@{D}", f"docker.io/library/busybox@{D}", f"busybox@{D}"),
    (f"busybox:1.36@{D}", f"docker.io/library/busybox:1.36@{D}", f"busybox:1.36@{D}"),
    ("a__b/c-d--e/f.g_h:T_1.x-Y", "docker.io/a__b/c-d--e/f.g_h:T_1.x-Y",
     "a__b/c-d--e/f.g_h:T_1.x-Y"),
]

INVALID = [
    ("", "empty"),
    ("Busybox", "lower case"),
    ("busybox:", "not a valid tag"),
    ("busybox:-x", "not a valid tag"),
    ("busy box", "white space"),
    ("busybox@sha256:abc", "not a digest"),
    ("busybox@sha256:" + "A" * 64, "lower-case hex"),
    ("a//b", "not a valid repository component"),
    ("_a", "not a valid repository component"),
    ("a-", "not a valid repository component"),
    ("ghcr.io/", "repository name is missing"),
    ("a" * 64, "image id"),
    ("x" * 256, "longer than"),
    ("bad_host.io:x/repo", "registry"),
]


@pytest.mark.parametrize("text,normalised,familiar", VALID)
def test_parse_normalises_as_docker(text, normalised, familiar):
    ref = parse(text)
    assert str(ref) == normalised
    assert ref.familiar == familiar
    assert str(parse(str(ref))) == normalised       # normalising is idempotent


@pytest.mark.parametrize("text,why", INVALID)
def test_parse_rejects_with_reason(text, why):
    with pytest.raises(ImageError) as err:
        parse(text)
    assert why in str(err.value)
    assert err.value.hint


def test_parts():
    ref = parse("localhost:5000/a/b:v1")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == ("localhost:5000", "a/b",
                                                                   "v1", None)
    by_digest = parse(f"busybox@{D}")
    assert by_digest.tag is None and by_digest.digest == D


@pytest.mark.parametrize("text,expected", [
    ("sha256:" + "0" * 64, True), ("abc123", True), ("busybox", False), ("sha256:xyz", False),
    ("0" * 65, False)])
def test_looks_like_id(text, expected):
    assert looks_like_id(text) is expected
