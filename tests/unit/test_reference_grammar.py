"""image/reference.py checks the grammar without `re`: each check against reference.go's
regular expression (as minictr used them before) on many generated strings."""
import random
import re

import pytest

from minictr.image import reference as r
from minictr.spec import builder

_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
REGEXES = {
    "component": (r._is_component, re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")),
    "domain": (r._is_domain, re.compile(
        rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?")),
    "tag": (r._is_tag, re.compile(r"[\w][\w.-]{0,127}", re.ASCII)),
    "digest": (r._is_digest, re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")),
    "hex64": (lambda t: r._is_hex(t, 64, 64), re.compile(r"[a-f0-9]{64}")),
    "id": (lambda t: r._is_hex(t, 1, 64), re.compile(r"[a-f0-9]{1,64}")),
    "hostname": (builder._valid_hostname,
                 re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,62}[A-Za-z0-9])?")),
}
ALPHABET = "ab09AZ_.-:+=[]/@ é\n"


def _strings(rng: random.Random, n: int):
    for _ in range(n):
        length = rng.choice([0, 1, 2, 3, 5, 8, 31, 32, 33, 63, 64, 65, 127, 128, 129])
        pool = rng.choice([ALPHABET, "abc019", "abcdef0123456789", "a.-_", "a1:[].", "a-_+.:x"])
        yield "".join(rng.choice(pool) for _ in range(length))


@pytest.mark.parametrize("name", sorted(REGEXES))
def test_check_equals_the_regular_expression(name):
    check, regex = REGEXES[name]
    rng = random.Random(name)
    for text in _strings(rng, 20000):
        assert check(text) == bool(regex.fullmatch(text)), repr(text)


def test_parse_of_generated_references_is_unchanged_in_shape():
    rng = random.Random(15)
    parts = ["busybox", "library", "ghcr.io", "localhost", "Lab:5000", "[::1]:80", "a__b", "a--b",
             "a_-b", "UPPER", "x" * 64, "0123456789abcdef" * 4, ":", "@", "/", ":tag", ".", "-",
             "@sha256:" + "a" * 64, "@sha256:" + "A" * 64, "@sha512:" + "b" * 128, "@x:" + "c" * 32]
    for _ in range(20000):
        text = "".join(rng.choice(parts) for _ in range(rng.randrange(1, 5)))
        try:
            ref = r.parse(text)
        except r.ImageError:
            continue
        assert str(r.parse(str(ref))) == str(ref)     # normalised forms parse to themselves
