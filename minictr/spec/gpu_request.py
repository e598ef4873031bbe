"""Where a GPU request lives in an OCI runtime spec: found in one pass, interpreted elsewhere.

Engines put a request into config.json in three places; nvidia-container-runtime reads them in
this order and the first that holds one wins (nvidia-container-toolkit
``internal/modifier/cdi.go`` getDevicesFromSpec, ``internal/config/image/cuda_image.go``):

1. annotations whose key starts with ``cdi.k8s.io/``: comma lists of CDI device names
   (``nvidia.com/gpu=0``), as the Kubernetes device plugin's ``cdi-annotations`` strategy writes;
2. ``/dev/null`` bind mounts at ``/var/run/nvidia-container-devices/<id>`` (the device plugin's
   ``volume-mounts`` strategy);
3. ``NVIDIA_VISIBLE_DEVICES`` in ``process.env``, with ``NVIDIA_DRIVER_CAPABILITIES``,
   ``NVIDIA_REQUIRE_*`` and ``NVIDIA_DISABLE_REQUIRE`` (and ``CUDA_VERSION`` for a "legacy" image
   that predates NVIDIA_VISIBLE_DEVICES).

``docker run --gpus`` writes (3) and a prestart hook naming ``nvidia-container-runtime-hook``
(moby ``daemon/nvidia_linux.go``), which minictr replaces by its own injection. ``minictr run
--gpus`` writes (3) too, plus what only minictr needs, in annotations (``ANNOTATION_*``): who
asked, docker's ``count=N``, ``--gpu-memory``.

This module only *finds* those inputs (``find``) and writes minictr's own (``with_request``,
``mark_source``); it imports nothing and interprets nothing, so that a spec without a request
costs one scan and no GPU code is loaded. ``minictr/gpu/request.py`` decides what they mean.
"""
from __future__ import annotations

from minictr.records import record

CDI_ANNOTATION_PREFIX = "cdi.k8s.io/"
DEVICE_LIST_DIR = "/var/run/nvidia-container-devices"
VISIBLE = "NVIDIA_VISIBLE_DEVICES"
CAPABILITIES = "NVIDIA_DRIVER_CAPABILITIES"
LEGACY_CUDA = "CUDA_VERSION"
REQUIRE_CUDA = "NVIDIA_REQUIRE_CUDA"
# minictr's own annotations: who asked (--gpus, -e, image), docker's count=N, --gpu-memory
ANNOTATION_PREFIX = "org.minictr.gpus."
ANNOTATION_SOURCE = ANNOTATION_PREFIX + "source"
ANNOTATION_COUNT = ANNOTATION_PREFIX + "count"
ANNOTATION_MEMORY = ANNOTATION_PREFIX + "memory"
SOURCES = ("--gpus", "-e", "image")
# the hook docker --gpus adds (its older name is a symlink to it)
LEGACY_HOOKS = ("nvidia-container-runtime-hook", "nvidia-container-toolkit")
# process.env entries a request reads: the toolkit's variables, CUDA_VERSION (legacy images)
# and CUDA_VISIBLE_DEVICES (renumbered for the injected GPUs)
_ENV_PREFIXES = ("NVIDIA_", "CUDA_VERSION=", "CUDA_VISIBLE_DEVICES=")


@record
class GpuInputs:
    """Every GPU request input a spec holds, as found (nothing parsed or checked yet)."""

    cdi_annotations: tuple[tuple[str, str], ...]   # (key, value) of cdi.k8s.io/* annotations
    mount_devices: tuple[str, ...]                 # <id> of /dev/null mounts in DEVICE_LIST_DIR
    env: tuple[tuple[str, str], ...]               # NVIDIA_*, CUDA_VERSION, CUDA_VISIBLE_DEVICES
    annotations: tuple[tuple[str, str], ...]       # org.minictr.gpus.*
    legacy_hooks: int                              # prestart hooks naming LEGACY_HOOKS
    privileged: bool                               # CAP_SYS_ADMIN in the bounding set

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    @property
    def annotation_dict(self) -> dict[str, str]:
        return dict(self.annotations)


def _env(spec: dict) -> tuple[tuple[str, str], ...]:
    """The request's variables of process.env; a later entry wins (Slurm appends the job's
    environment after the bundle's, and runc lets the last one win too)."""
    found: dict[str, str] = {}
    for entry in (spec.get("process") or {}).get("env") or ():
        if isinstance(entry, str) and entry.startswith(_ENV_PREFIXES):
            key, _, value = entry.partition("=")
            found.pop(key, None)
            found[key] = value
    return tuple(found.items())


def is_legacy_hook(hook: dict) -> bool:
    path = str(hook.get("path") or "")
    args = hook.get("args") or [""]
    names = {path.rsplit("/", 1)[-1], str(args[0]).rsplit("/", 1)[-1]}
    return bool(names & set(LEGACY_HOOKS))


def find(spec: dict) -> GpuInputs | None:
    """The spec's GPU request inputs, or None when it holds none (the common case)."""
    annotations = spec.get("annotations") or {}
    cdi = tuple((k, str(v)) for k, v in annotations.items()
                if isinstance(k, str) and k.startswith(CDI_ANNOTATION_PREFIX))
    ours = tuple((k, str(v)) for k, v in annotations.items()
                 if isinstance(k, str) and k.startswith(ANNOTATION_PREFIX))
    # only /dev/null bind sources count, as in the toolkit (cuda_image.go DevicesFromMounts)
    mounts = tuple(dict.fromkeys(
        m["destination"][len(DEVICE_LIST_DIR) + 1:].strip("/")
        for m in spec.get("mounts") or () if isinstance(m, dict)
        and str(m.get("destination", "")).startswith(DEVICE_LIST_DIR + "/")
        and m.get("source") == "/dev/null"))
    env = _env(spec)
    keys = {k for k, _ in env}
    hooks = sum(1 for h in (spec.get("hooks") or {}).get("prestart") or ()
                if isinstance(h, dict) and is_legacy_hook(h))
    visible = dict(env).get(VISIBLE)
    # unset, empty and "void" ask for nothing; a legacy image (CUDA_VERSION without
    # NVIDIA_REQUIRE_CUDA and without NVIDIA_VISIBLE_DEVICES) asks for every GPU
    asks = (visible.strip().lower() not in ("", "void") if visible is not None
            else LEGACY_CUDA in keys and REQUIRE_CUDA not in keys)
    if not (cdi or ours or mounts or hooks or asks):
        return None
    bounding = ((spec.get("process") or {}).get("capabilities") or {}).get("bounding") or ()
    return GpuInputs(cdi_annotations=cdi, mount_devices=mounts, env=env, annotations=ours,
                     legacy_hooks=hooks, privileged="CAP_SYS_ADMIN" in bounding)


# ---------------------------------------------------------------- the resolved spec


def resolved_spec(spec: dict, inputs: GpuInputs, unset_env, edits) -> dict:
    """``spec`` with its request resolved into ``edits`` (spec/edits.ContainerEdits): docker's
    legacy hook dropped, the variables the request replaces unset, the edits applied. The one
    way a resolution becomes a spec, computed (gpu/resolve.py) or replayed (gpu/memo.py)."""
    from minictr.spec.edits import apply_edits

    if inputs.legacy_hooks:
        spec = without_legacy_hooks(spec)
    return apply_edits(without_env(spec, unset_env), edits)


def without_legacy_hooks(spec: dict) -> dict:
    """docker --gpus' prestart hook (nvidia-container-runtime-hook prestart) is replaced by
    minictr's injection: it is never run, so no NVIDIA software but the driver is needed."""
    hooks = dict(spec.get("hooks") or {})
    hooks["prestart"] = [h for h in hooks.get("prestart") or () if not is_legacy_hook(h)]
    if not hooks["prestart"]:
        del hooks["prestart"]
    return dict(spec, hooks=hooks)


def without_env(spec: dict, names) -> dict:
    if not names:
        return spec
    process = dict(spec.get("process") or {})
    process["env"] = [e for e in process.get("env") or () if e.partition("=")[0] not in names]
    return dict(spec, process=process)


# ---------------------------------------------------------------- writing minictr's request


def with_request(spec: dict, *, visible: str, capabilities: str | None = None,
                 count: int | None = None, memory: str | None = None,
                 source: str = "--gpus") -> dict:
    """A copy of ``spec`` carrying a request: NVIDIA_VISIBLE_DEVICES (and
    NVIDIA_DRIVER_CAPABILITIES) in process.env, as docker writes them, and minictr's
    annotations for what no engine variable says."""
    from minictr.spec.edits import merge_env

    env = [f"{VISIBLE}={visible}"]
    if capabilities is not None:
        env.append(f"{CAPABILITIES}={capabilities}")
    process = dict(spec.get("process") or {})
    process["env"] = merge_env(process.get("env") or [], env)
    notes = dict(spec.get("annotations") or {}, **{ANNOTATION_SOURCE: source})
    if count is not None:
        notes[ANNOTATION_COUNT] = str(count)
    if memory is not None:
        notes[ANNOTATION_MEMORY] = memory
    return dict(spec, process=process, annotations=notes)


def mark_source(spec: dict, image_env: list[str] | tuple[str, ...]) -> dict:
    """For a spec whose request is only in process.env: note whether it is the image's own
    (its Env declares it, e.g. every nvidia/cuda image says NVIDIA_VISIBLE_DEVICES=all) or the
    user's (-e, --env-file). A host without a driver then runs an image's request without GPUs,
    and fails a user's."""
    inputs = find(spec)
    if inputs is None or ANNOTATION_SOURCE in (spec.get("annotations") or {}):
        return spec
    image = {k: v for k, _, v in (e.partition("=") for e in image_env or ())}
    env = inputs.env_dict
    keys = (VISIBLE, CAPABILITIES, LEGACY_CUDA, REQUIRE_CUDA)
    source = "image" if all(env.get(k) == image.get(k) for k in keys) else "-e"
    return dict(spec, annotations=dict(spec.get("annotations") or {},
                                       **{ANNOTATION_SOURCE: source}))
