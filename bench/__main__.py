"""python -m bench [NAME...] [ARGS...]: run benchmark modules.

A benchmark is any module ``bench/NAME.py`` (not starting with ``_``, not ``common``) that
defines ``main(argv) -> int``. With no NAME every one runs, in name order; ``--list`` shows them.
The NAMEs come first; every argument from the first option on goes to each benchmark's main
(``python -m bench start --quick``; ``--`` may separate them).
The exit status is the worst of the benchmarks' statuses.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import time

HELPERS = {"common"}          # shared code, not benchmarks


def discover() -> dict[str, object]:
    """Module name -> its main, for every bench/*.py that has one. A module that fails to
    import is reported with a main that says why (so one broken benchmark does not hide the
    others)."""
    found = {}
    here = os.path.dirname(os.path.abspath(__file__))
    for info in sorted(pkgutil.iter_modules([here]), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in HELPERS or info.ispkg:
            continue
        try:
            module = importlib.import_module(f"bench.{info.name}")
        except Exception as err:            # noqa: BLE001 - report and go on
            found[info.name] = _broken(info.name, err)
            continue
        main = getattr(module, "main", None)
        if callable(main):
            found[info.name] = main
    return found


def _broken(name: str, err: Exception):
    def main(argv):
        print(f"bench: {name}: cannot import: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return main


def call_main(main, name: str, argv: list[str]) -> int:
    """Run one benchmark's main: ``main(argv)``, or ``main()`` with sys.argv set when it takes no
    parameter. SystemExit and errors become a status, so the other benchmarks still run."""
    import inspect
    import traceback

    saved = sys.argv
    try:
        if inspect.signature(main).parameters:
            status = main(argv)
        else:
            sys.argv = [f"bench/{name}.py", *argv]
            status = main()
    except SystemExit as err:
        status = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
    except Exception:                       # noqa: BLE001 - report, then the next benchmark
        traceback.print_exc()
        status = 1
    finally:
        sys.argv = saved
    return status or 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        print("\nbenchmarks: " + ", ".join(discover()))
        return 0
    if argv[:1] == ["--list"]:
        print("\n".join(discover()))
        return 0
    # NAMEs come first; from the first option (or after "--") on, arguments go to the benchmarks
    split = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    argv, extra = argv[:split], argv[split:]
    if extra[:1] == ["--"]:
        extra = extra[1:]
    benchmarks = discover()
    unknown = [n for n in argv if n not in benchmarks]
    if unknown:
        print(f"bench: unknown benchmark(s): {', '.join(unknown)}; have: "
              f"{', '.join(benchmarks)}", file=sys.stderr)
        return 2
    worst = 0
    for name in argv or list(benchmarks):
        print(f"bench: === {name} ===", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        status = call_main(benchmarks[name], name, list(extra))
        print(f"bench: {name} finished with status {status} in {time.monotonic() - t0:.0f} s",
              file=sys.stderr, flush=True)
        worst = max(worst, status)
    return worst


if __name__ == "__main__":
    sys.exit(main())
