"""The one GPU request path: a spec that carries a request in, the spec with its GPUs out.

Both front ends come here, once per container, with the spec they are about to execute:

* ``minictr run`` and ``minictr spec`` (api.plan): ``--gpus``, ``-e``/``--env-file`` and the
  image's ``Env`` are already in the built spec's process.env and minictr's annotations
  (spec/gpu_request.py); nothing else is consulted;
* ``minictr-runc create``/``run`` (bundles.create): whatever the engine wrote into config.json.

The caller has found the inputs (``spec.gpu_request.find``, which imports nothing; a spec with
none never loads this package). Then, in order: the request (request.py, under the site's
policy); the allocation (the caller's ``allocation()``, asked only now: a Slurm job's, from
hpc/slurm.py); for CDI names the CDI spec files (cdi.py), else the driver (discover, through
its cache: driver_cache.py), the GPUs (select) and the edits (inject); what the request
replaces is removed (docker's ``nvidia-container-runtime-hook``, a job's
``CUDA_VISIBLE_DEVICES``); the edits are applied (spec/edits.apply_edits). Nothing is written: the loader cache comes back as bytes in
``Resolved.files``, and the spec's mount names ``files_dir/ld.so.cache``, where the runtime
writes it when it creates the container.
"""
from __future__ import annotations

import os
from _collections_abc import Callable

from minictr.errors import GPUError
from minictr.gpu import request as request_mod
from minictr.gpu.driver import CTL_MINOR, NVIDIA_MAJOR
from minictr.records import record
from minictr.spec import gpu_request
from minictr.spec.edits import ContainerEdits, apply_edits
from minictr.spec.gpu_request import resolved_spec, without_env, without_legacy_hooks

CACHE_FILE = "ld.so.cache"
Warn = Callable[[str], None] | None


@record
class Resolved:
    spec: dict
    files: tuple[tuple[str, bytes], ...] = ()   # (name, data) the runtime writes to files_dir
    gpus: tuple = ()                            # the selected GPUs (discover.GPU), for messages
    notes: tuple[str, ...] = ()                 # what --explain says about the choices
    # the driver's edits of the spec, for the resolution memo (gpu/memo.py); None for CDI
    # names and for the paths that inject nothing
    edits: ContainerEdits | None = None
    unset_env: tuple[str, ...] = ()


def resolve(spec: dict, inputs: gpu_request.GpuInputs, *, read_file, files_dir: str,
            settings: request_mod.GpuSettings, allocation: Callable[[], object] | None = None,
            warn: Warn = None, cache_dir: str | None = None, discover_fn=None) -> Resolved:
    """``read_file(path) -> bytes | None`` reads the image (its loader cache, os-release, CUDA
    compat libraries); ``allocation() -> Allocation | None`` the batch job's GPUs, called only
    when a request exists. ``cache_dir``: where discovery is cached (driver_cache.py; the
    state directory's ``.cache/gpu``), None for no cache."""
    from minictr.gpu import driver_cache
    from minictr.gpu.select import select

    notes: list[str] = []

    request = request_mod.from_inputs(inputs, settings, warn)
    original = spec
    if inputs.legacy_hooks:
        spec = without_legacy_hooks(spec)
    if request is None:
        return Resolved(spec)
    alloc = allocation() if allocation is not None else None
    if request.kind == "cdi":
        from minictr.gpu import cdi

        edits = cdi.edits_for_names(request.devices, settings.cdi_spec_dirs)
        check_cdi_allocation(edits, alloc)
        return Resolved(apply_edits(spec, edits))
    if alloc is not None and not alloc.minors and request.devices != ("none",):
        if request.devices == ("all",) and not request.count:
            _say(warn, f"no GPU injected: this job has no GPU on this node ({alloc.source})")
            return Resolved(without_env(spec, ("CUDA_VISIBLE_DEVICES",)))
        raise GPUError(f"{request.source} asks for GPU {','.join(request.devices)}"
                       + (f" (count={request.count})" if request.count else "")
                       + f", but this job has no GPU on this node ({alloc.source})",
                       hint="ask Slurm for GPUs (srun --gres=gpu:N), or run without --gpus")
    try:
        driver = driver_cache.discover_cached(settings.roots, cache_dir, discover_fn,
                                              note=notes.append)
    except GPUError:
        if request.required:
            raise
        # only the image declares GPUs (every nvidia/cuda image does); nobody asked on this host
        _say(warn, "the image asks for GPUs (NVIDIA_VISIBLE_DEVICES) but this host has no "
             "NVIDIA driver: running without GPUs")
        return Resolved(spec)
    for note in driver.warnings:
        _say(warn, note)
    from minictr.gpu.inject import inject

    selection = select(driver, request, alloc)
    injection = inject(request, driver, selection, read_file,
                       os.path.join(files_dir, CACHE_FILE),
                       disable_require=settings.disable_require, renumber=alloc is not None,
                       warn=warn)
    return Resolved(resolved_spec(original, inputs, injection.unset_env, injection.edits),
                    ((CACHE_FILE, injection.cache),), selection.gpus, tuple(notes),
                    injection.edits, injection.unset_env)


def check_cdi_allocation(edits: ContainerEdits, alloc) -> None:
    """A CDI device that is an NVIDIA GPU node (195:N, N below the control nodes' minors) must
    be inside the batch job's allocation too."""
    if alloc is None:
        return
    for node in edits.device_nodes:
        if node.major == NVIDIA_MAJOR and node.minor is not None and \
                node.minor < CTL_MINOR - 1 and node.minor not in alloc.minors:
            raise GPUError(f"CDI device {node.path} (195:{node.minor}) is outside the job's "
                           f"allocation ({alloc.source})",
                           hint="ask for the GPUs the job was given")


def _say(warn: Warn, text: str) -> None:
    if warn:
        warn(text)
