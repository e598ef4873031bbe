"""Which host GPUs a request means, inside a batch system's allocation when there is one.

A request (request.py) names GPUs as the toolkit and docker do: ``all``, ``none``, indices in
nvidia-smi (PCI bus) order, ``GPU-<uuid>`` (a unique prefix is enough), PCI bus ids, ``G:M`` MIG
devices and ``MIG-<uuid>``. Each is resolved to a discovered GPU (discover.py), so the rest of
the path works with one model of a GPU: its index, minor, UUID and device node.

An allocation (hpc/slurm.py's ``Allocation``: ``.minors``, the device minors the job may use,
and ``.source``, where that was read) narrows ``all`` and ``count=N`` to those GPUs, refuses
any other, and is the only list error messages offer.
"""
from __future__ import annotations

from minictr.errors import GPUError
from minictr.gpu.driver import GPU, Driver, MigDevice
from minictr.records import record


@record
class Selection:
    gpus: tuple[GPU, ...]             # whole GPUs, and the parents of selected MIG devices
    mig: tuple[MigDevice, ...] = ()
    mig_uuids: tuple[str, ...] = ()   # MIG-<uuid> tokens, passed on to CUDA_VISIBLE_DEVICES


def _in_reach(driver: Driver, allocation) -> tuple[GPU, ...]:
    if allocation is None:
        return driver.gpus
    return tuple(g for g in driver.gpus if g.minor in allocation.minors)


def _known(driver: Driver, allocation=None) -> str:
    gpus = _in_reach(driver, allocation)
    where = f" in reach ({allocation.source})" if allocation is not None else ""
    if not gpus:
        return f"no GPU is{where}" if allocation is not None else "this host has no GPU"
    return (f"the GPUs{where} are " if allocation is not None else "this host has ") + "; ".join(
        f"{g.index} ({g.uuid}, {g.model}, /dev/nvidia{g.minor})" for g in gpus)


def _unknown(driver: Driver, token: str, allocation=None) -> GPUError:
    return GPUError(f"unknown GPU {token!r}: {_known(driver, allocation)}",
                    hint="`minictr gpus` lists index, minor and UUID")


# patterns compiled at first use (re caches them), and re imported only then (~2 ms a start):
# most requests are "all", indices or UUIDs
_BUS = r"^(?:[0-9a-f]{4,8}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$"


def _bus_key(bus: str) -> str:
    bus = bus.lower()
    return bus if bus.count(":") == 2 else "0000:" + bus


def _one(driver: Driver, token: str, allocation) -> GPU | MigDevice | str:
    if token.isdecimal():
        i = int(token)
        if i < len(driver.gpus):
            return driver.gpus[i]
        raise _unknown(driver, token, allocation)
    if token.upper().startswith("GPU-"):
        hits = [g for g in driver.gpus if g.uuid.lower().startswith(token.lower())]
        if len(hits) == 1:
            return hits[0]
        raise _unknown(driver, token, allocation)
    if token.upper().startswith("MIG-"):
        return token
    import re

    if re.fullmatch(r"\d+:\d+", token):
        g, m = (int(x) for x in token.split(":"))
        if g < len(driver.gpus) and m < len(driver.gpus[g].mig):
            return driver.gpus[g].mig[m]
        raise GPUError(f"unknown MIG device {token!r}: " + (
            "; ".join(f"{d.gpu_index}:{d.index}" for g in driver.gpus for d in g.mig)
            or "no MIG devices exist"), hint="`minictr gpus` lists MIG devices")
    if re.match(_BUS, token, re.I):
        want = _bus_key(token)
        for g in driver.gpus:
            if _bus_key(g.bus_id)[-12:] == want[-12:]:
                return g
    raise _unknown(driver, token, allocation)


def select(driver: Driver, request, allocation=None) -> Selection:
    """Resolve the request's tokens (``request.devices``, ``request.count``) to host GPUs,
    each once, in the order asked; with an ``allocation``, only GPUs inside it."""
    if allocation is not None:
        unknown = sorted(allocation.minors - {g.minor for g in driver.gpus})
        if unknown:
            raise GPUError(f"the job's allocation ({allocation.source}) names "
                           f"/dev/nvidia{unknown[0]}, which the driver does not know: "
                           f"{_known(driver)}",
                           hint="check the node's gres.conf against `minictr gpus`")
    selection = _select(driver, request, allocation)
    if allocation is not None:
        outside = [g for g in selection.gpus if g.minor not in allocation.minors]
        if outside:
            g = outside[0]
            raise GPUError(f"GPU {g.index} (/dev/nvidia{g.minor}) is outside the job's "
                           f"allocation: {_known(driver, allocation)}",
                           hint="ask for the GPUs the job was given, or --gpus all")
    return selection


def _select(driver: Driver, request, allocation) -> Selection:
    if request.devices == ("none",):
        return Selection(())
    if "all" in request.devices:
        gpus = _in_reach(driver, allocation)
        if request.count is not None:
            if request.count > len(gpus):
                raise GPUError(f"--gpus count={request.count}: only {len(gpus)} GPUs "
                               + ("are in reach" if allocation is not None else "exist"),
                               hint=_known(driver, allocation))
            gpus = gpus[:request.count]
        return Selection(tuple(gpus))
    gpus: list[GPU] = []
    mig: list[MigDevice] = []
    mig_uuids: list[str] = []
    for token in request.devices:
        hit = _one(driver, token, allocation)
        if isinstance(hit, str):
            mig_uuids.append(hit)
            # no NVML: a MIG UUID cannot be mapped to its instance, so every MIG instance of
            # the MIG-enabled GPUs is made available and CUDA_VISIBLE_DEVICES picks the one
            parents = [g for g in _in_reach(driver, allocation) if g.mig]
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
