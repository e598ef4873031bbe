"""NVIDIA GPUs in containers, as container edits (DESIGN.md §4).

discover (host driver, from files) -> select (what the run asked for) -> require (does the
image's NVIDIA_REQUIRE_* hold) -> inject (device nodes, mounts, env, a loader cache written by
ldcache/loader) ; cdi writes and reads the same edits as CDI spec files; mps handles
--gpu-memory. See docs/gpus.md.
"""
