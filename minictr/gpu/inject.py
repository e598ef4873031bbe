"""A resolved GPU request -> container edits: device nodes, bind mounts, env, and the bytes of
a new loader cache.

``resolve.py`` (the one request path) calls :func:`inject` with the request, the discovered
driver, the selected GPUs and a reader of the image's files. The device nodes are discovery's
own records (spec/edits.py ``DeviceNode``: the one model from /proc to the device filter), the
mounts are ``Mount`` records; nothing is written here: the cache comes back as bytes, and the
caller says where the runtime will find it (``cache_source``), so planning has no side effect.
What is injected per capability is listed in ``capabilities``; docs/gpus.md explains each choice
and where minictr differs from the NVIDIA Container Toolkit.
"""
from __future__ import annotations

import os
from _collections_abc import Callable

from minictr.errors import GPUError
from minictr.gpu import capabilities as caps
from minictr.gpu import ldcache, loader, mps
from minictr.gpu.driver import Driver, Library
from minictr.gpu.select import Selection
from minictr.records import record
from minictr.spec.edits import ContainerEdits, DeviceNode, Mount

RO = ("rbind", "ro", "nosuid", "nodev")
RW = ("rbind", "nosuid", "nodev")
PROC_FILES = ("params", "version", "registry")

Warn = Callable[[str], None] | None


@record
class Injection:
    edits: ContainerEdits
    cache: bytes                      # the container's /etc/ld.so.cache, for ``cache_source``
    unset_env: tuple[str, ...] = ()   # variables to remove (a job's CUDA_VISIBLE_DEVICES)


def bind(source: str, destination: str, options=RO) -> Mount:
    return Mount(host_path=source, container_path=destination, type="bind",
                 options=tuple(options))


def check_requirements(driver: Driver, selection: Selection, env: dict[str, str]) -> None:
    """NVIDIA_REQUIRE_* must hold for every selected GPU (require.py, imported only for an
    image that states a requirement: CUDA_VERSION or NVIDIA_REQUIRE_*)."""
    if "CUDA_VERSION" not in env and not any(k.startswith("NVIDIA_REQUIRE_") for k in env):
        return
    from minictr.gpu import require as req_mod

    facts = [req_mod.Facts(driver.cuda_version, driver.version, req_mod.arch_of(g.model),
                           req_mod.brand_of(g.model)) for g in selection.gpus] or \
        [req_mod.Facts(driver.cuda_version, driver.version)]
    try:
        bad = req_mod.failed_requirements(env, facts)
    except ValueError as err:
        raise GPUError(f"image requirement: {err}") from None
    if bad:
        raise GPUError(f"the image requires {bad[0]}, but the driver {driver.version} supports "
                       f"CUDA {driver.cuda_version or 'unknown'}",
                       hint="use an image built for an older CUDA, upgrade the driver, or set "
                       "NVIDIA_DISABLE_REQUIRE=1 to skip the check")


def check_essentials(driver: Driver, wanted: frozenset[str]) -> None:
    """Refuse a capability whose core library is missing or only present in another version."""
    have = {lib.stem for lib in driver.libraries}
    for cap, stem in caps.ESSENTIAL.items():
        if cap not in wanted or stem in have:
            continue
        stale = [p for p in driver.stale if os.path.basename(p).startswith(stem + ".so.")]
        if stale:
            raise GPUError(f"{os.path.basename(stale[0])} does not match the loaded kernel "
                           f"module {driver.version}: the driver was upgraded without a reboot",
                           hint="reboot, or reload the nvidia kernel modules")
        raise GPUError(f"no {stem}.so.{driver.version} in the driver's ld.so.cache "
                       f"({driver.roots.driver_root})",
                       hint="is the user-space driver installed? (ldconfig -p | grep nvidia); "
                       "see --nvidia-driver-root")


def device_nodes(driver: Driver, selection: Selection,
                 wanted: frozenset[str]) -> list[DeviceNode]:
    nodes = [g.node for g in selection.gpus]
    for mig in selection.mig:
        nodes.extend(mig.nodes)
    names = ["nvidiactl"]
    if "compute" in wanted:
        names += ["nvidia-uvm", "nvidia-uvm-tools"]
    if "display" in wanted:
        names.append("nvidia-modeset")
    return nodes + [driver.control[n] for n in names if n in driver.control]


def _libraries(driver: Driver, wanted: frozenset[str]) -> list[Library]:
    stems = caps.library_stems(wanted)
    return [lib for lib in driver.libraries if lib.stem in stems
            and (lib.x86_64 or "compat32" in wanted)]


def library_edits(driver: Driver, wanted: frozenset[str], image: loader.ImageLoader,
                  compat: list[ldcache.Entry]):
    """Mounts of each library at its real name and its SONAMEs in the image's lib dir, and the
    cache entries that point the loader at them (compat entries replace the host's libcuda)."""
    mounts, entries = [], []
    for lib in _libraries(driver, wanted):
        libdir = image.libdir if lib.x86_64 else image.libdir32
        flags = ldcache.FLAG_X86_64 if lib.x86_64 else loader.FLAG_I386
        names = (lib.real_name,) + lib.sonames
        if lib.stem == "libcuda":
            names += ("libcuda.so",)       # dlopen("libcuda.so"), as the toolkit's symlink
        for name in names:
            mounts.append(bind(lib.host_path, f"{libdir}/{name}"))
        for key in (lib.sonames or (lib.real_name,)) + (("libcuda.so",) if lib.stem == "libcuda"
                                                        else ()):
            entries.append(ldcache.Entry(key, f"{libdir}/{key}", flags))
    compat_keys = {e.key for e in compat}
    entries = [e for e in entries if not (e.key in compat_keys and e.is_x86_64)] + compat
    return mounts, entries


def file_mounts(driver: Driver, selection: Selection, wanted: frozenset[str]) -> list[Mount]:
    """Binaries, GSP firmware, IPC sockets and /proc/driver/nvidia entries."""
    out = []
    for cap in sorted(wanted):
        for name in caps.BINARIES.get(cap, ()):
            if name in driver.binaries:       # /usr/bin is on every image's PATH
                out.append(bind(driver.binaries[name], f"/usr/bin/{name}"))
    out += [bind(fw, driver.container_path(fw)) for fw in driver.firmware]
    if "utility" in wanted:
        out += [bind(s, driver.container_path(s), RW) for s in driver.ipc]
    # only a real procfs has these in every container's /proc: a fake proc root (tests) has not
    if os.path.realpath(driver.roots.proc_root) == "/proc":
        out += [bind(f"/proc/driver/nvidia/{f}", f"/proc/driver/nvidia/{f}") for f in PROC_FILES
                if os.path.exists(f"/proc/driver/nvidia/{f}")]
        out += [bind(g.proc_dir, g.proc_dir) for g in selection.gpus]
    return out


def visible_value(request, selection: Selection) -> str:
    """NVIDIA_VISIBLE_DEVICES inside: what was selected, by UUID (unambiguous for any tool
    inside that reads it again); MIG devices as G:M or the MIG UUIDs asked for."""
    if request.devices == ("none",):
        return "none"
    if selection.mig_uuids:
        return ",".join(selection.mig_uuids)
    mig_parents = {m.gpu_index for m in selection.mig}
    ids = [g.uuid or str(g.index) for g in selection.gpus if g.index not in mig_parents]
    ids += [f"{m.gpu_index}:{m.index}" for m in selection.mig]
    return ",".join(ids) or "void"


def cuda_visible(selection: Selection) -> str | None:
    """CUDA_VISIBLE_DEVICES in the container's own numbering: CUDA (in PCI_BUS_ID order)
    numbers the visible whole GPUs 0..n-1; MIG UUIDs pass as asked. None: leave it unset
    (MIG instances by G:M, whose CUDA numbering minictr cannot know without NVML)."""
    if selection.mig_uuids:
        return ",".join(selection.mig_uuids)
    if selection.mig:
        return None
    return ",".join(str(i) for i in range(len(selection.gpus)))


def inject(request, driver: Driver, selection: Selection, read_file, cache_source: str, *,
           disable_require: bool = False, renumber: bool = False,
           warn: Warn = None) -> Injection:
    """The edits for ``selection``; the image is read through ``read_file(path) -> bytes |
    None``. ``cache_source``: where the runtime will find the new loader cache (the mount's
    source; the caller writes ``Injection.cache`` there). ``renumber``: set (or unset)
    CUDA_VISIBLE_DEVICES to the container's numbering, whatever the spec says (inside a batch
    job, whose exported value numbers the node's GPUs, not the container's)."""
    env = request.env_dict
    wanted = request.capabilities
    if not disable_require:
        check_requirements(driver, selection, env)
    check_essentials(driver, wanted)
    image = loader.inspect_image(read_file)
    if image.musl:
        raise GPUError("the image uses musl libc: the NVIDIA driver libraries need glibc",
                       hint="use a glibc-based image (debian, ubuntu, rhel, nvidia/cuda)")
    for path in loader.baked_driver_libraries(image):
        if warn:
            warn(f"the image carries its own driver library {path}; the host's "
                 f"{driver.version} replaces it in the loader cache (a copy found through "
                 "LD_LIBRARY_PATH would still win)")
    compat = loader.compat_entries(read_file, env, driver.cuda_version, wanted)
    mounts, entries = library_edits(driver, wanted, image, compat)
    mounts.append(bind(cache_source, "/etc/ld.so.cache"))
    mounts += file_mounts(driver, selection, wanted)
    env_out = ["CUDA_DEVICE_ORDER=PCI_BUS_ID",
               f"NVIDIA_VISIBLE_DEVICES={visible_value(request, selection)}",
               "NVIDIA_DRIVER_CAPABILITIES=" + ",".join(sorted(wanted))]
    unset: tuple[str, ...] = ()
    numbering = cuda_visible(selection)
    if selection.mig_uuids or (renumber and numbering is not None):
        env_out.append(f"CUDA_VISIBLE_DEVICES={numbering}")
    elif renumber:
        unset = ("CUDA_VISIBLE_DEVICES",)
    pipe = mps.pipe_dir(driver.roots.mps_pipe_dir)
    if request.memory:
        env_out += mps.limits_env(request.memory, [g.index for g in selection.gpus], pipe)
    if "compute" in wanted and mps.running(pipe):
        # clients find the daemon through this directory (libnvidia-container mounts it too)
        mounts.append(bind(pipe, pipe, RW))
        if not request.memory:
            env_out.append(f"CUDA_MPS_PIPE_DIRECTORY={pipe}")
    edits = ContainerEdits(env=tuple(env_out),
                           device_nodes=tuple(device_nodes(driver, selection, wanted)),
                           mounts=tuple(mounts))
    return Injection(edits, loader.new_cache(image, entries), unset)
