"""Which GPUs and driver capabilities a run asked for, and which host GPUs that means.

Inputs, strongest first: ``--gpus``; ``NVIDIA_VISIBLE_DEVICES`` / ``NVIDIA_DRIVER_CAPABILITIES``
from ``-e``; the same variables from the image's config ``Env``. Their meanings follow the
NVIDIA Container Toolkit (``cmd/nvidia-container-runtime/README.md``) and docker's ``--gpus``
(``opts/gpus.go``), except that a bare number is a GPU index (``--gpus 0`` = GPU 0).
"""
from __future__ import annotations

import os
import re
from minictr.records import record

from minictr.errors import GPUError
from minictr.gpu import capabilities as caps
from minictr.gpu.discover import GPU, Driver, MigDevice

VOID = ("", "void")


@record
class Request:
    devices: tuple[str, ...]          # ("all",) | ("none",) | 0, GPU-.., bus id, 0:1, MIG-..
    capabilities: frozenset[str]
    source: str                       # "--gpus", "-e" or "image": who asked
    count: int | None = None          # docker's count=N: the first N GPUs


@record
class Selection:
    gpus: tuple[GPU, ...]             # whole GPUs, and the parents of selected MIG devices
    mig: tuple[MigDevice, ...] = ()
    mig_uuids: tuple[str, ...] = ()   # MIG-<uuid> tokens, passed on to CUDA_VISIBLE_DEVICES


def env_dict(entries) -> dict[str, str]:
    out = {}
    for item in entries or ():
        key, sep, value = item.partition("=")
        if sep:
            out[key] = value
        elif key in os.environ:        # -e KEY: take the host's value, as docker
            out[key] = os.environ[key]
    return out


def parse_gpus_flag(text: str) -> tuple[tuple[str, ...], int | None, frozenset[str] | None]:
    """``--gpus``: all | none | 0,1 | GPU-uuid,.. | docker's ``device=.. count=N
    capabilities=..`` fields (comma-separated; a bare item continues the previous field's list,
    so ``device=0,2,capabilities=compute,utility`` works without csv quoting)."""
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
    count = None
    devices: tuple[str, ...] = tuple(fields.get("device", ()))
    if "count" in fields:
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
        wanted = _capabilities(",".join(c for c in fields["capabilities"] if c != "gpu") or None)
    return devices, count, wanted


def _capabilities(text: str | None) -> frozenset[str]:
    try:
        return caps.parse_capabilities(text)
    except ValueError as err:
        raise GPUError(str(err), hint="NVIDIA_DRIVER_CAPABILITIES=compute,utility or all") \
            from None


def request_for(gpus_flag: str | None, image_env: dict[str, str],
                user_env: dict[str, str]) -> Request | None:
    """The request, or None when nothing asks for a GPU (NVIDIA_VISIBLE_DEVICES unset/void)."""
    env = {**image_env, **user_env}
    cap_text = env.get("NVIDIA_DRIVER_CAPABILITIES")
    if gpus_flag is not None:
        devices, count, wanted = parse_gpus_flag(gpus_flag)
        return Request(devices, wanted or _capabilities(cap_text), "--gpus", count)
    visible = env.get("NVIDIA_VISIBLE_DEVICES")
    if visible is None and env.get("CUDA_VERSION") and "NVIDIA_REQUIRE_CUDA" not in env:
        # a "legacy" CUDA image (before NVIDIA_VISIBLE_DEVICES existed) gets every GPU, as the
        # toolkit gives it; a host without a driver then runs it without GPUs (inject.py)
        return Request(("all",), _capabilities(cap_text), "image")
    if visible is None or visible.strip().lower() in VOID:
        return None
    source = "-e" if "NVIDIA_VISIBLE_DEVICES" in user_env else "image"
    devices = tuple(t.strip() for t in visible.split(",") if t.strip())
    return Request(devices, _capabilities(cap_text), source)


def _known(driver: Driver) -> str:
    if not driver.gpus:
        return "this host has no GPU"
    return "this host has " + "; ".join(
        f"{g.index} ({g.uuid}, {g.model}, /dev/nvidia{g.minor})" for g in driver.gpus)


def _unknown(driver: Driver, token: str) -> GPUError:
    return GPUError(f"unknown GPU {token!r}: {_known(driver)}",
                    hint="`minictr gpus` lists index, minor and UUID")


_BUS = re.compile(r"^(?:[0-9a-f]{4,8}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$", re.I)


def _bus_key(bus: str) -> str:
    bus = bus.lower()
    return bus if bus.count(":") == 2 else "0000:" + bus


def _one(driver: Driver, token: str) -> GPU | MigDevice | str:
    if token.isdecimal():
        i = int(token)
        if i < len(driver.gpus):
            return driver.gpus[i]
        raise _unknown(driver, token)
    if token.upper().startswith("GPU-"):
        hits = [g for g in driver.gpus if g.uuid.lower().startswith(token.lower())]
        if len(hits) == 1:
            return hits[0]
        raise _unknown(driver, token)
    if token.upper().startswith("MIG-"):
        return token
    if re.fullmatch(r"\d+:\d+", token):
        g, m = (int(x) for x in token.split(":"))
        if g < len(driver.gpus) and m < len(driver.gpus[g].mig):
            return driver.gpus[g].mig[m]
        raise GPUError(f"unknown MIG device {token!r}: " + (
            "; ".join(f"{d.gpu_index}:{d.index}" for g in driver.gpus for d in g.mig)
            or "no MIG devices exist"), hint="`minictr gpus` lists MIG devices")
    if _BUS.match(token):
        want = _bus_key(token)
        for g in driver.gpus:
            if _bus_key(g.bus_id)[-12:] == want[-12:]:
                return g
    raise _unknown(driver, token)


def select(driver: Driver, request: Request,
           allocation: frozenset[int] | None = None) -> Selection:
    """Resolve the request's tokens to host GPUs (each once, in the order asked).

    ``allocation``: the device minors a batch system (Slurm) gave this job; ``all`` then means
    all of those, and a GPU outside it is an error."""
    selection = _select(driver, request, allocation)
    if allocation is not None:
        outside = [g for g in selection.gpus if g.minor not in allocation]
        if outside:
            g = outside[0]
            raise GPUError(f"GPU {g.index} (/dev/nvidia{g.minor}) is outside this job's GPU "
                           f"allocation (minors {','.join(map(str, sorted(allocation)))})",
                           hint="ask for the GPUs Slurm gave the job, or --gpus all")
    return selection


def _select(driver: Driver, request: Request, allocation: frozenset[int] | None) -> Selection:
    if request.devices == ("none",):
        return Selection(())
    if "all" in request.devices:
        gpus = driver.gpus
        if allocation is not None:
            gpus = [g for g in gpus if g.minor in allocation]
        if request.count is not None:
            if request.count > len(gpus):
                raise GPUError(f"--gpus count={request.count}: only {len(gpus)} GPUs exist",
                               hint=_known(driver))
            gpus = gpus[:request.count]
        return Selection(tuple(gpus))
    gpus: list[GPU] = []
    mig: list[MigDevice] = []
    mig_uuids: list[str] = []
    for token in request.devices:
        hit = _one(driver, token)
        if isinstance(hit, str):
            mig_uuids.append(hit)
            # no NVML: a MIG UUID cannot be mapped to its instance, so every MIG instance of
            # the MIG-enabled GPUs is made available and CUDA_VISIBLE_DEVICES picks the one
            parents = [g for g in driver.gpus if g.mig]
            if not parents:
                raise GPUError(f"{hit}: no GPU on this host has MIG instances",
                               hint="`minictr gpus` lists GPUs and MIG devices")
            for g in parents:
                mig.extend(d for d in g.mig if d not in mig)
                if g not in gpus:
                    gpus.append(g)
        elif isinstance(hit, MigDevice):
            if hit not in mig:
                mig.append(hit)
            parent = driver.gpus[hit.gpu_index]
            if parent not in gpus:
                gpus.append(parent)
        elif hit not in gpus:
            gpus.append(hit)
    return Selection(tuple(gpus), tuple(mig), tuple(mig_uuids))
