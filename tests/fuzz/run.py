"""Run one fuzz target under atheris (libFuzzer, coverage-guided):

    python tests/fuzz/run.py TARGET CORPUS_DIR [libFuzzer flags, e.g. -max_total_time=60]

minictr's modules are instrumented for coverage as they are imported; the corpus directory
holds the seeds (tests/fuzz/seeds.py writes them) and collects the new inputs the fuzzer finds
interesting. A crash is written to ``-artifact_prefix`` as ``crash-<sha1>``, and its traceback
printed; test_regressions.py is where such an input becomes a fixed case.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import atheris  # noqa: E402

with atheris.instrument_imports(include=["minictr"]):
    from tests.fuzz import targets  # noqa: E402
    import minictr.image.archive, minictr.image.store, minictr.image.unpack  # noqa: E401,E402,F401
    import minictr.image.distribution, minictr.gpu.cdi, minictr.gpu.elf  # noqa: E401,E402,F401
    import minictr.gpu.ldcache, minictr.spec.builder, minictr.spec.units  # noqa: E401,E402,F401
    import minictr.image.squashfs, minictr.image.sif, minictr.image.singlefile  # noqa: E401,E402,F401


def main() -> None:
    name = sys.argv.pop(1)
    if name not in targets.TARGETS:
        sys.exit(f"unknown target {name!r}: {', '.join(targets.TARGETS)}")

    def one(data: bytes) -> None:
        targets.check(name, data)

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
