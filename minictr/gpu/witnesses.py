"""The host's answers a discovery rests on (gpu/driver.py's HostFiles keeps them), asked again.

A witness is ``[kind, path, answer]``: the text of a proc file ("text"), a directory's sorted
listing ("list"), a symlink's target ("link"), else a file's identity (dev, ino, mtime, size,
mode, rdev) or its absence ("stat"). ``still_holds`` asks every question again; while each
answer is unchanged, what was made from them (the discovered driver, driver_cache.py; a
resolved request, memo.py) still holds. Only os: checking costs no import of the GPU code.
"""
from __future__ import annotations

import os


def _identity(path: str) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode, st.st_rdev]


def _text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _listing(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def readlink(path: str) -> str | None:
    """The link's target, None when ``path`` is not a link (or cannot be read)."""
    try:
        return os.readlink(path)
    except OSError:
        return None


_ASK = {"stat": _identity, "text": _text, "list": _listing, "link": readlink}


def ask(kind: str, path: str):
    """The host's answer now to the question ``kind`` about ``path``."""
    return _ASK[kind](path)


def witness(kind: str, path: str) -> list:
    """One witness, as HostFiles keeps them: [kind, path, the host's answer now]."""
    return [kind, path, ask(kind, path)]


def still_holds(witnesses) -> bool:
    """Whether the host still answers every question of a discovery the same way."""
    for kind, path, value in witnesses:
        if kind not in _ASK or not isinstance(path, str) or _ASK[kind](path) != value:
            return False       # (a path must be a name: os.stat and open take fds too)
    return True
