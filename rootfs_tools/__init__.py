"""Tools that make OCI images for minictr's tests, demo and benchmarks.

This package stands alone: it imports nothing from ``minictr`` and writes standard OCI image
layouts (image-spec ``image-layout.md``) that ``minictr load oci:DIR``, skopeo and umoci all read.
Run it as ``python -m rootfs_tools SUBCOMMAND ...`` (see ``__main__.py``).
"""
from __future__ import annotations


class ToolError(Exception):
    """A build step failed; the message is one line, ``hint`` says what to do about it."""

    def __init__(self, what: str, *, hint: str | None = None):
        super().__init__(what)
        self.hint = hint


class ToolMissing(ToolError):
    """A host program or file the build needs is not installed (tests skip on this)."""
