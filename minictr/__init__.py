"""minictr: a daemonless container launcher. image → plan (OCI runtime spec) → runtime."""
import sys as _sys

__version__ = "0.1.0"


def _interrupted_early(signum, frame):
    """Ctrl-C while the command is still being imported: nothing exists yet to clean up, so
    leave with one line and 130, not a traceback from the middle of an import. The command's
    main() installs Python's own handler (KeyboardInterrupt) before it creates anything."""
    import os

    os.write(2, b"minictr: interrupted\n")
    os._exit(130)


# Only for the commands themselves: a program that imports minictr as a library keeps
# Python's KeyboardInterrupt.
if _sys.argv and _sys.argv[0].rsplit("/", 1)[-1] in ("minictr", "minictr-runc"):
    import _signal    # signal.py's C core: signal.py imports enum (~3 ms of a start)

    _signal.signal(_signal.SIGINT, _interrupted_early)
