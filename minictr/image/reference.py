"""Image references: ``[REGISTRY/]REPOSITORY[:TAG][@DIGEST]``, normalised as Docker does.

The grammar is the one of distribution/reference (reference.go, normalize.go):

- the first ``/``-separated component is a registry only if it contains ``.`` or ``:``, is
  ``localhost``, or has an upper-case letter (repository components never do); otherwise the
  registry is ``docker.io``, and a one-component repository there gets ``library/`` in front;
- each repository component is ``[a-z0-9]+`` joined by ``.``, ``_``, ``__`` or runs of ``-``;
- a tag is ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``; a digest is ``ALGORITHM:HEX``;
- no tag and no digest means ``:latest``; a reference by digest keeps no implied tag.

``str(ref)`` is the fully qualified form (``docker.io/library/busybox:latest``); ``familiar`` is
the short one a user types (``busybox:latest``).
"""
from __future__ import annotations

from minictr.errors import ImageError
from minictr.records import record

DEFAULT_REGISTRY = "docker.io"
LEGACY_REGISTRY = "index.docker.io"
OFFICIAL_PREFIX = "library/"
MAX_NAME_LENGTH = 255
_HEX = {"sha256": 64, "sha512": 128}

# The grammar's character classes. Written out rather than as regular expressions: `re` costs
# ~4 ms of a container's start (it imports enum), and a reference is parsed by every run.
# tests/unit/test_reference.py checks these against reference.go's regular expressions.
_DIGITS = frozenset("0123456789")
_LOWER_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz") | _DIGITS
_ALNUM = _LOWER_ALNUM | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_HEX_DIGITS = frozenset("abcdef") | _DIGITS
_TAG_FIRST = _ALNUM | {"_"}                         # [\w]
_TAG_REST = _TAG_FIRST | {".", "-"}                 # [\w.-]
_DIGEST_ENCODED = _ALNUM | {"=", "_", "-"}          # [a-zA-Z0-9=_-]
_IP_LITERAL = _HEX_DIGITS | frozenset("ABCDEF:.")   # [0-9a-fA-F:.]


def _runs(text: str, chars: frozenset, separator_ok) -> bool:
    """Is ``text`` non-empty runs of ``chars``, each two joined by a separator (a run of other
    characters) that ``separator_ok`` accepts? The shape of `A+(?:SEP A+)*`."""
    i, n = 0, len(text)
    while True:
        j = i
        while j < n and text[j] in chars:
            j += 1
        if j == i:
            return False                  # empty run: a separator first, last, or doubled
        if j == n:
            return True
        k = j
        while k < n and text[k] not in chars:
            k += 1
        if not separator_ok(text[j:k]):
            return False
        i = k


def _is_component(text: str) -> bool:
    """`[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*`: a repository path component."""
    return _runs(text, _LOWER_ALNUM,
                 lambda sep: sep in (".", "_", "__") or sep == "-" * len(sep))


def _is_domain(text: str) -> bool:
    r"""`(?:PART(?:\.PART)*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?`, a PART being letters, digits and
    '-' that start and end with a letter or digit: a registry's host[:port]."""
    if text.startswith("["):
        end = text.find("]")
        host, port = text[:end + 1], text[end + 1:]
        if end < 2 or not all(c in _IP_LITERAL for c in host[1:-1]):
            return False
    else:
        host, colon, port = text.partition(":")
        port = colon + port
        if not all(part and part[0] in _ALNUM and part[-1] in _ALNUM
                   and all(c in _ALNUM or c == "-" for c in part) for part in host.split(".")):
            return False
    return port == "" or (len(port) > 1 and port[0] == ":"
                          and all(c in _DIGITS for c in port[1:]))


def _is_tag(text: str) -> bool:
    r"""`[\w][\w.-]{0,127}` (ASCII)."""
    return (0 < len(text) <= 128 and text[0] in _TAG_FIRST
            and all(c in _TAG_REST for c in text[1:]))


def _is_digest(text: str) -> bool:
    """`[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}`: ALGORITHM:ENCODED."""
    algorithm, colon, encoded = text.partition(":")
    return (bool(colon) and _runs(algorithm, _LOWER_ALNUM, lambda sep: sep in (".", "+", "_", "-"))
            and len(encoded) >= 32 and all(c in _DIGEST_ENCODED for c in encoded))


def _is_hex(text: str, min_len: int, max_len: int) -> bool:
    """`[a-f0-9]{min_len,max_len}`."""
    return min_len <= len(text) <= max_len and all(c in _HEX_DIGITS for c in text)


@record
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        return self.name + _suffix(self.tag, self.digest)

    @property
    def familiar(self) -> str:
        """The short form docker prints: ``busybox:latest``, ``ghcr.io/o/r:t``."""
        repo = self.repository
        if self.registry == DEFAULT_REGISTRY:
            if repo.startswith(OFFICIAL_PREFIX) and repo.count("/") == 1:
                repo = repo[len(OFFICIAL_PREFIX):]
            return repo + _suffix(self.tag, self.digest)
        return str(self)

    def with_tag(self, tag: str) -> "Reference":
        return Reference(self.registry, self.repository, tag, None)


def _suffix(tag: str | None, digest: str | None) -> str:
    return (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _invalid(text: str, why: str) -> ImageError:
    return ImageError(f"invalid image reference {text!r}: {why}",
                      hint="the form is [REGISTRY/]REPOSITORY[:TAG][@sha256:HEX], "
                      "e.g. busybox:1.36 or ghcr.io/owner/repo:tag")


def parse(text: str) -> Reference:
    """Parse and normalise ``text``; raise ImageError saying what is wrong with it."""
    if not text:
        raise _invalid(text, "it is empty")
    if text != text.strip() or any(c.isspace() for c in text):
        raise _invalid(text, "it contains white space")
    rest, digest = _split_digest(text)
    name, tag = _split_tag(text, rest)
    if len(name) > MAX_NAME_LENGTH:
        raise _invalid(text, f"the name is longer than {MAX_NAME_LENGTH} characters")
    registry, repository = _split_registry(text, name)
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = OFFICIAL_PREFIX + repository
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, repository, tag, digest)


def _split_digest(text: str) -> tuple[str, str | None]:
    if "@" not in text:
        return text, None
    rest, digest = text.split("@", 1)
    if not _is_digest(digest):
        raise _invalid(text, f"{digest!r} is not a digest (ALGORITHM:HEX)")
    algorithm, hexpart = digest.split(":", 1)
    want = _HEX.get(algorithm)
    if want and not _is_hex(hexpart, want, want):
        raise _invalid(text, f"a {algorithm} digest has {want} lower-case hex digits")
    return rest, digest


def _split_tag(text: str, rest: str) -> tuple[str, str | None]:
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon <= slash:             # a colon before the last slash is a registry's port
        return rest, None
    name, tag = rest[:colon], rest[colon + 1:]
    if not _is_tag(tag):
        raise _invalid(text, f"{tag!r} is not a valid tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})")
    return name, tag


def _names_domain(first: str, sep: str) -> bool:
    return bool(sep) and (any(c in first for c in ".:") or first == "localhost"
                          or first.lower() != first)


def names_registry(text: str) -> bool:
    """Does ``text`` name its registry (``ghcr.io/o/r``, ``localhost/x``), or is it a short
    name (``busybox``, ``library/debian:12``) that docker reads as docker.io's?"""
    first, sep, _ = text.partition("/")
    return _names_domain(first, sep)


def _split_registry(text: str, name: str) -> tuple[str, str]:
    first, sep, remainder = name.partition("/")
    if _names_domain(first, sep):
        if not _is_domain(first):
            raise _invalid(text, f"{first!r} is not a valid registry host[:port]")
        registry, repository = first, remainder
        if registry == LEGACY_REGISTRY:
            registry = DEFAULT_REGISTRY
    else:
        registry, repository = DEFAULT_REGISTRY, name
    if not repository:
        raise _invalid(text, "the repository name is missing")
    if registry == DEFAULT_REGISTRY and _is_hex(repository, 64, 64):
        raise _invalid(text, "a 64-digit hex string is an image id, not a repository name")
    for component in repository.split("/"):
        if not _is_component(component):
            why = ("repository names must be lower case" if component.lower() != component
                   else f"{component!r} is not a valid repository component "
                   "(lower-case letters and digits, separated by '.', '_', '__' or '-')")
            raise _invalid(text, why)
    return registry, repository


def looks_like_id(text: str) -> bool:
    """True for ``sha256:HEX`` or bare lower-case hex that may abbreviate an image id."""
    hexpart = text[len("sha256:"):] if text.startswith("sha256:") else text
    return _is_hex(hexpart, 1, 64)


# Skopeo-style transports accepted wherever an image is named (archive.py reads them).
TRANSPORTS = ("oci:", "oci-archive:", "docker-archive:")


def is_transport(ref: str) -> bool:
    return ref.startswith(TRANSPORTS)
