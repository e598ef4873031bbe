"""NVIDIA GPUs in containers, as container edits (DESIGN.md §4).

One request path (resolve.py), for `minictr run` and for `minictr-runc create` alike: the
request found in the spec (spec/gpu_request.py) -> what it means under the site's settings
(request.py) -> the host's driver (discover, from files) -> the GPUs (select, inside a batch
job's allocation) -> whether the image's NVIDIA_REQUIRE_* hold (require) -> the edits (inject:
device nodes, mounts, env, and a loader cache built by ldcache/loader, written by the runtime).
cdi reads and writes the same edits as CDI spec files; mps handles --gpu-memory.
See docs/gpus.md and docs/engines.md.
"""
