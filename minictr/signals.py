"""Signal names and numbers as kill(1), runc and Docker's ``--stop-signal`` take them: a name
with or without ``SIG`` (TERM, SIGTERM, any case) or a number 1-64.

Read from ``_signal``, the C core of signal.py (which imports enum: ~3 ms a start). One reader
for the spec builder (an image's StopSignal and ``--stop-signal``, checked at run) and the
runtime (``kill``, ``stop``), which sit on either side of it.
"""
from __future__ import annotations

import _signal


def number(name: str) -> int | None:
    """SIGTERM -> 15: the names signal.Signals has (SIG* but SIG_DFL/SIG_IGN, aliases such as
    SIGIOT included); None for any other text."""
    if not name.startswith("SIG") or name.startswith("SIG_") or not name.isupper():
        return None
    value = getattr(_signal, name, None)
    return value if isinstance(value, int) else None


def parse(text) -> int | None:
    """A signal by name (TERM, SIGTERM, sigterm) or number (1-64); None when it is neither."""
    value = str(text).strip().upper()
    if value.isdecimal():
        return int(value) if 0 < int(value) < 65 else None
    return number(value if value.startswith("SIG") else "SIG" + value)
