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

import re
from minictr.records import record

from minictr.errors import ImageError

DEFAULT_REGISTRY = "docker.io"
LEGACY_REGISTRY = "index.docker.io"
OFFICIAL_PREFIX = "library/"
MAX_NAME_LENGTH = 255

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_HEX = {"sha256": 64, "sha512": 128}
_ANCHORED_HEX64 = re.compile(r"[a-f0-9]{64}")


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
    if not _DIGEST.fullmatch(digest):
        raise _invalid(text, f"{digest!r} is not a digest (ALGORITHM:HEX)")
    algorithm, hexpart = digest.split(":", 1)
    want = _HEX.get(algorithm)
    if want and not re.fullmatch(rf"[a-f0-9]{{{want}}}", hexpart):
        raise _invalid(text, f"a {algorithm} digest has {want} lower-case hex digits")
    return rest, digest


def _split_tag(text: str, rest: str) -> tuple[str, str | None]:
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon <= slash:             # a colon before the last slash is a registry's port
        return rest, None
    name, tag = rest[:colon], rest[colon + 1:]
    if not _TAG.fullmatch(tag):
        raise _invalid(text, f"{tag!r} is not a valid tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})")
    return name, tag


def _is_domain(first: str, sep: str) -> bool:
    return bool(sep) and (any(c in first for c in ".:") or first == "localhost"
                          or first.lower() != first)


def names_registry(text: str) -> bool:
    """Does ``text`` name its registry (``ghcr.io/o/r``, ``localhost/x``), or is it a short
    name (``busybox``, ``library/debian:12``) that docker reads as docker.io's?"""
    first, sep, _ = text.partition("/")
    return _is_domain(first, sep)


def _split_registry(text: str, name: str) -> tuple[str, str]:
    first, sep, remainder = name.partition("/")
    is_domain = _is_domain(first, sep)
    if is_domain:
        if not _DOMAIN.fullmatch(first):
            raise _invalid(text, f"{first!r} is not a valid registry host[:port]")
        registry, repository = first, remainder
        if registry == LEGACY_REGISTRY:
            registry = DEFAULT_REGISTRY
    else:
        registry, repository = DEFAULT_REGISTRY, name
    if not repository:
        raise _invalid(text, "the repository name is missing")
    if registry == DEFAULT_REGISTRY and _ANCHORED_HEX64.fullmatch(repository):
        raise _invalid(text, "a 64-digit hex string is an image id, not a repository name")
    for component in repository.split("/"):
        if not _COMPONENT.fullmatch(component):
            why = ("repository names must be lower case" if component.lower() != component
                   else f"{component!r} is not a valid repository component "
                   "(lower-case letters and digits, separated by '.', '_', '__' or '-')")
            raise _invalid(text, why)
    return registry, repository


def looks_like_id(text: str) -> bool:
    """True for ``sha256:HEX`` or bare lower-case hex that may abbreviate an image id."""
    hexpart = text[len("sha256:"):] if text.startswith("sha256:") else text
    return bool(re.fullmatch(r"[a-f0-9]{1,64}", hexpart))


# Skopeo-style transports accepted wherever an image is named (archive.py reads them).
TRANSPORTS = ("oci:", "oci-archive:", "docker-archive:")


def is_transport(ref: str) -> bool:
    return ref.startswith(TRANSPORTS)
