"""Benchmarks of minictr against its peers (crun, runc, bwrap, ch-run, podman, umoci, skopeo).

``python -m bench`` runs every benchmark module in this package (a ``bench/NAME.py`` with a
``main(argv) -> int``); ``python -m bench NAME [NAME...] [-- ARGS]`` runs the named ones. Results
are printed as markdown and kept under bench/results/ (git-ignored); bench/README.md records
the numbers and the commands that reproduce them. Nothing here is a test: no timed assertions.
"""
