"""What a spec's GPU request means: its inputs (spec/gpu_request.py) under the site's policy
(the ``[nvidia]`` table of the config file, ``GpuSettings``), as one ``Request``.

The inputs are read in nvidia-container-runtime's order and the first that holds a request wins:
``cdi.k8s.io/*`` annotations, then ``/dev/null`` mounts under /var/run/nvidia-container-devices
(when accepted), then ``NVIDIA_VISIBLE_DEVICES`` in process.env (when accepted; from an
unprivileged container only when ``accept-nvidia-visible-devices-envvar-when-unprivileged``).
Values follow the toolkit (``cmd/nvidia-container-runtime/README.md``) and docker's ``--gpus``
(``opts/gpus.go``), except that a bare number is a GPU index (``--gpus 0`` = GPU 0).

What the toolkit honours and minictr does not implement (MIG configuration and monitoring
capabilities, IMEX channels, GDS/MOFED/NVSWITCH/GDRCOPY) is an error naming the variable, never
ignored.
"""
from __future__ import annotations

import os
from _collections_abc import Callable

from minictr.errors import GPUError
from minictr.gpu import capabilities as caps
from minictr.gpu.driver import DriverRoots
from minictr.records import record
from minictr.spec import gpu_request as inputs_mod

Warn = Callable[[str], None] | None
VOID = ("", "void")
# toolkit variables minictr does not implement: set (to anything but these values) = an error
UNSUPPORTED_ENV = {
    "NVIDIA_MIG_CONFIG_DEVICES": VOID + ("none",),
    "NVIDIA_MIG_MONITOR_DEVICES": VOID + ("none",),
    "NVIDIA_IMEX_CHANNELS": VOID + ("none",),
    "NVIDIA_GDS": VOID + ("disabled",),
    "NVIDIA_MOFED": VOID + ("disabled",),
    "NVIDIA_NVSWITCH": VOID + ("disabled",),
    "NVIDIA_GDRCOPY": VOID + ("disabled",),
}


@record
class GpuSettings:
    """The ``[nvidia]`` settings (settings.py), with the driver roots resolved: command-line
    flag, else MINICTR_NVIDIA_*_ROOT, else the config file, else /, / and /proc."""

    roots: DriverRoots
    cdi_spec_dirs: tuple[str, ...] = ("/etc/cdi", "/var/run/cdi")
    accept_cdi_annotations: bool = True
    accept_volume_mounts: bool = False
    accept_envvar: bool = True
    accept_envvar_unprivileged: bool = True
    disable_require: bool = False


def load_settings(flags=(None, None, None), env: dict[str, str] | None = None,
                  paths: list[str] | None = None) -> GpuSettings:
    """``flags``: the --nvidia-driver-root, --nvidia-dev-root, --nvidia-proc-root values."""
    from minictr import settings

    env = os.environ if env is None else env
    table = settings.load("nvidia", env, paths)
    roots = []
    for flag, name, key in zip(flags, ("DRIVER", "DEV", "PROC"),
                               ("driver-root", "dev-root", "proc-root")):
        roots.append(flag or env.get(f"MINICTR_NVIDIA_{name}_ROOT") or table[key])
    return GpuSettings(
        roots=DriverRoots(*roots), cdi_spec_dirs=tuple(table["cdi-spec-dirs"]),
        accept_cdi_annotations=table["accept-cdi-annotations"],
        accept_volume_mounts=table["accept-nvidia-visible-devices-as-volume-mounts"],
        accept_envvar=table["accept-nvidia-visible-devices-envvar"],
        accept_envvar_unprivileged=table["accept-nvidia-visible-devices-envvar-when-unprivileged"],
        disable_require=table["disable-require"])


@record
class Request:
    """One GPU request, read once from the spec."""

    kind: str                          # "nvidia": discover and inject; "cdi": CDI spec files
    devices: tuple[str, ...]           # nvidia: ("all",) | ("none",) | 0, GPU-.., bus id, 0:1,
    #                                    MIG-..; cdi: fully qualified names (nvidia.com/gpu=0)
    capabilities: frozenset[str]
    source: str                        # who asked, for messages: --gpus, -e, image, ...
    required: bool = True              # a host without a driver is an error (else: a warning)
    count: int | None = None           # docker's count=N: the first N of the GPUs in reach
    memory: str | None = None          # --gpu-memory
    env: tuple[tuple[str, str], ...] = ()   # the spec's NVIDIA_*/CUDA_* variables
    legacy_hooks: int = 0              # docker --gpus' prestart hooks, replaced by this request

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


# ---------------------------------------------------------------- docker's --gpus


def parse_gpus_flag(text: str) -> tuple[tuple[str, ...], int | None, str | None]:
    """``--gpus``: all | none | 0,1 | GPU-uuid,.. | docker's ``device=.. count=N
    capabilities=..`` fields (comma-separated; a bare item continues the previous field's list,
    so ``device=0,2,capabilities=compute,utility`` works without csv quoting). Returns
    (devices, count, capabilities text or None)."""
    text = text.strip().strip('"').strip("'")
    if not text:
        raise GPUError("--gpus needs a value", hint="--gpus all, --gpus 0,1 or --gpus count=2")
    if "=" not in text:
        return tuple(t.strip() for t in text.split(",") if t.strip()), None, None
    fields: dict[str, list[str]] = {}
    current = None
    for item in (i.strip().strip('"') for i in text.split(",")):
        if "=" in item:
            current, _, value = item.partition("=")
            current = current.strip()
            fields.setdefault(current, []).append(value.strip())
        elif current is not None and item:
            fields[current].append(item)
    unknown = set(fields) - {"device", "count", "capabilities", "driver"}
    if unknown:
        raise GPUError(f"--gpus: unknown field {sorted(unknown)[0]!r}",
                       hint="fields are device=, count=, capabilities=")
    if fields.get("driver", ["nvidia"]) != ["nvidia"]:
        raise GPUError(f"--gpus driver={fields['driver'][0]}: only nvidia is supported")
    count = None
    devices: tuple[str, ...] = tuple(fields.get("device", ()))
    if "count" in fields:
        if devices:
            raise GPUError("--gpus: count and device cannot be combined (docker refuses it too)")
        raw = fields["count"][0]
        if raw == "all":
            devices = ("all",)
        elif raw.isdecimal():
            count = int(raw)
            devices = ("all",)
        else:
            raise GPUError(f"--gpus count={raw}: not a number", hint="count=2 or count=all")
    if not devices:
        devices = ("all",)
    wanted = None
    if "capabilities" in fields:
        wanted = ",".join(c for c in fields["capabilities"] if c != "gpu") or None
        if wanted:
            parse_capabilities(wanted)         # an unknown one fails here, at the flag
    return devices, count, wanted


def parse_capabilities(text: str | None) -> frozenset[str]:
    try:
        return caps.parse_capabilities(text)
    except ValueError as err:
        raise GPUError(str(err), hint="NVIDIA_DRIVER_CAPABILITIES=compute,utility or all") \
            from None


# ---------------------------------------------------------------- reading the inputs


def from_inputs(inputs: inputs_mod.GpuInputs, policy: GpuSettings,
                warn: Warn = None) -> Request | None:
    """The request the inputs make under ``policy``, or None when they ask for nothing (an
    input the policy does not accept is reported to ``warn``)."""
    notes = inputs.annotation_dict
    _check_annotations(notes)
    env = inputs.env_dict
    hooks = inputs.legacy_hooks
    common = {"env": inputs.env, "legacy_hooks": hooks,
              "count": _count(notes.get(inputs_mod.ANNOTATION_COUNT)),
              "memory": notes.get(inputs_mod.ANNOTATION_MEMORY)}
    if inputs.cdi_annotations:
        if policy.accept_cdi_annotations:
            names = [n.strip() for _, v in inputs.cdi_annotations for n in v.split(",")
                     if n.strip()]
            return Request("cdi", tuple(dict.fromkeys(names)), frozenset(), "annotation "
                           + inputs.cdi_annotations[0][0], **common)
        _say(warn, "ignoring the cdi.k8s.io/ annotations (accept-cdi-annotations is false in "
             "the [nvidia] settings)")
    if inputs.mount_devices:
        if policy.accept_volume_mounts:
            return _devices(list(inputs.mount_devices), env, "volume mounts under "
                            f"{inputs_mod.DEVICE_LIST_DIR}", True, common)
        _say(warn, f"ignoring the device list mounted under {inputs_mod.DEVICE_LIST_DIR} "
             "(accept-nvidia-visible-devices-as-volume-mounts is false in the [nvidia] settings)")
    source = notes.get(inputs_mod.ANNOTATION_SOURCE) or (
        "docker --gpus" if hooks else "config.json")
    visible = env.get(inputs_mod.VISIBLE)
    if visible is None:
        if inputs_mod.LEGACY_CUDA in env and inputs_mod.REQUIRE_CUDA not in env:
            # a "legacy" CUDA image (before NVIDIA_VISIBLE_DEVICES existed) gets every GPU, as
            # the toolkit gives it; only the image asked
            visible, source = "all", "image"
        elif common["memory"] is not None:
            raise GPUError("--gpu-memory needs GPUs", hint="add --gpus")
        else:
            return None
    if visible.strip().lower() in VOID:
        if common["memory"] is not None:
            raise GPUError("--gpu-memory needs GPUs", hint="add --gpus")
        return None
    if not _env_accepted(policy, inputs, source, warn):
        return None
    devices = [t.strip() for t in visible.split(",") if t.strip()]
    return _devices(devices, env, source, source != "image" or hooks > 0, common)


def _devices(devices: list[str], env: dict[str, str], source: str, required: bool,
             common: dict) -> Request:
    """A device list (NVIDIA_VISIBLE_DEVICES or mounts): CDI names, or GPU ids to inject."""
    qualified = [d for d in devices if "=" in d]
    if qualified:
        if len(qualified) != len(devices):
            raise GPUError(f"{source}: {','.join(devices)} mixes CDI names and GPU ids",
                           hint="use nvidia.com/gpu=0,nvidia.com/gpu=1 or 0,1")
        return Request("cdi", tuple(dict.fromkeys(devices)), frozenset(), source,
                       required=True, **common)
    mounts = [d[len("cdi/"):] for d in devices if d.startswith("cdi/")]
    if mounts:                    # cdi/VENDOR/CLASS/NAME mounts (toolkit CDIDevicesFromMounts)
        names = []
        for m in mounts:
            parts = m.split("/", 2)
            if len(parts) != 3:
                raise GPUError(f"{source}: cdi/{m} is not cdi/VENDOR/CLASS/NAME")
            names.append(f"{parts[0]}/{parts[1]}={parts[2]}")
        return Request("cdi", tuple(names), frozenset(), source, required=True, **common)
    if "all" in devices and len(devices) > 1:
        raise GPUError(f"{source}: 'all' cannot be combined with other GPUs ({','.join(devices)})")
    if "none" in devices and len(devices) > 1:
        raise GPUError(f"{source}: 'none' cannot be combined with other GPUs")
    for name, fine in UNSUPPORTED_ENV.items():
        value = env.get(name)
        if value is not None and value.strip().lower() not in fine:
            raise GPUError(f"{name}={value} is not supported by minictr",
                           hint=f"unset {name} (minictr implements NVIDIA_VISIBLE_DEVICES, "
                           "NVIDIA_DRIVER_CAPABILITIES, NVIDIA_REQUIRE_*, NVIDIA_DISABLE_REQUIRE)")
    wanted = parse_capabilities(env.get(inputs_mod.CAPABILITIES))
    return Request("nvidia", tuple(dict.fromkeys(devices)), wanted, source, required=required,
                   **common)


def _env_accepted(policy: GpuSettings, inputs, source: str, warn: Warn) -> bool:
    if source in ("--gpus", "-e"):
        return True          # minictr's own command line asked: the caller runs minictr itself
    if not policy.accept_envvar:
        _say(warn, f"ignoring {inputs_mod.VISIBLE} ({source}): accept-nvidia-visible-devices-"
             "envvar is false in the [nvidia] settings")
        return False
    if not inputs.privileged and not policy.accept_envvar_unprivileged:
        _say(warn, f"ignoring {inputs_mod.VISIBLE} ({source}) in an unprivileged container: "
             "accept-nvidia-visible-devices-envvar-when-unprivileged is false in the [nvidia] "
             "settings")
        return False
    return True


def _check_annotations(notes: dict[str, str]) -> None:
    known = (inputs_mod.ANNOTATION_SOURCE, inputs_mod.ANNOTATION_COUNT,
             inputs_mod.ANNOTATION_MEMORY)
    for key, value in notes.items():
        if key not in known:
            raise GPUError(f"annotation {key} is not supported by minictr",
                           hint="known: " + ", ".join(known))
    source = notes.get(inputs_mod.ANNOTATION_SOURCE)
    if source is not None and source not in inputs_mod.SOURCES:
        raise GPUError(f"annotation {inputs_mod.ANNOTATION_SOURCE}={source}: expected one of "
                       + ", ".join(inputs_mod.SOURCES))


def _count(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdecimal():
        raise GPUError(f"annotation {inputs_mod.ANNOTATION_COUNT}={text}: not a number")
    return int(text)


def _say(warn: Warn, text: str) -> None:
    if warn:
        warn(text)
