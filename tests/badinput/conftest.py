"""The bad-input tier: the CLI fed what the issue 13 sweep fed it (tests/badinput/README.md)."""
