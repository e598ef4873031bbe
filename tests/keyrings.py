"""A session keyring with a secret in it, for the tests that check a container does not hold
the launcher's keyring (tests/root/test_confinement.py) and that --no-new-keyring keeps it
(tests/lifecycle/test_lifecycle.py)."""
from __future__ import annotations

import os


def own_session_keyring_with_a_secret():
    """preexec_fn: a new session keyring holding a key only its possessors may see (so that
    /proc/keys shows it to the processes that hold this keyring, and to no one else)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    add_key, keyctl, session = 248, 250, ctypes.c_long(-3)    # KEY_SPEC_SESSION_KEYRING
    if libc.syscall(keyctl, 1, None) < 0:                     # KEYCTL_JOIN_SESSION_KEYRING
        os._exit(97)
    serial = libc.syscall(add_key, b"user", b"mctest-secret", b"s3cret", 6, session)
    if serial < 0 or libc.syscall(keyctl, 5, ctypes.c_long(serial), 0x3F000000) < 0:
        os._exit(98)                                          # KEYCTL_SETPERM: possessor all
