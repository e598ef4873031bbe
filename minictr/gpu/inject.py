"""GPU request -> container edits: device nodes, bind mounts, env and a loader cache.

The composition ``api.plan`` calls :func:`edits_for_request`. Order of work: who asked (select),
what the host has (discover), whether the image's requirements hold (require), then the edits.
What is injected per capability is listed in ``capabilities``; docs/gpus.md explains each choice
and where minictr differs from the NVIDIA Container Toolkit.
"""
from __future__ import annotations

import os
from collections.abc import Callable

from minictr.errors import GPUError
from minictr.gpu import capabilities as caps
from minictr.gpu import ldcache, loader, mps
from minictr.gpu import require as req_mod
from minictr.gpu.discover import Driver, DriverRoots, Library, Node, discover
from minictr.gpu.select import Request, Selection, env_dict, request_for, select
from minictr.spec.edits import ContainerEdits

RO = ["rbind", "ro", "nosuid", "nodev"]
RW = ["rbind", "nosuid", "nodev"]
PROC_FILES = ("params", "version", "registry")

Warn = Callable[[str], None] | None


def device(node: Node) -> dict:
    """An OCI ``linux.devices`` entry (config-linux.md "Devices"); apply_edits adds the allow
    rule to ``linux.resources.devices`` beside it. ``hostPath`` (CDI's name) when the host node
    is elsewhere: in a user namespace nodes cannot be made, so the runtime bind-mounts it."""
    out = {"path": node.path, "type": "c", "major": node.major, "minor": node.minor,
           "fileMode": node.file_mode, "uid": 0, "gid": 0}
    if node.host_path != node.path:
        out["hostPath"] = node.host_path
    return out


def bind(source: str, destination: str, options=None) -> dict:
    return {"destination": destination, "source": source, "type": "bind",
            "options": list(options or RO)}


def _image_env(image_config: dict) -> dict[str, str]:
    cfg = image_config.get("config", image_config) if image_config else {}
    return env_dict((cfg or {}).get("Env") or ())


def _spec_env(spec: dict) -> dict[str, str]:
    return env_dict(((spec or {}).get("process") or {}).get("env") or ())


def check_requirements(driver: Driver, selection: Selection, env: dict[str, str]) -> None:
    """NVIDIA_REQUIRE_* must hold for every selected GPU (require.py)."""
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


def device_nodes(driver: Driver, selection: Selection, wanted: frozenset[str]) -> list[dict]:
    nodes = [g.node for g in selection.gpus]
    for mig in selection.mig:
        nodes.extend(mig.nodes)
    names = ["nvidiactl"]
    if "compute" in wanted:
        names += ["nvidia-uvm", "nvidia-uvm-tools"]
    if "display" in wanted:
        names.append("nvidia-modeset")
    nodes += [driver.control[n] for n in names if n in driver.control]
    return [device(n) for n in nodes]


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


def file_mounts(driver: Driver, selection: Selection, wanted: frozenset[str]) -> list[dict]:
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


def visible_value(request: Request, selection: Selection) -> str:
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


def edits_for_request(opts, spec: dict, gpu_roots: DriverRoots | None, image_config: dict,
                      read_file, scratch_dir: str | None = None, *, warn: Warn = None,
                      discover_fn=discover,
                      allocation: frozenset[int] | None = None) -> ContainerEdits | None:
    """The GPU edits for a run, or None when no GPU is requested.

    ``scratch_dir``: where the generated ld.so.cache goes (the container's own directory);
    without it a private, content-named file under $TMPDIR is used. ``warn`` receives
    explanations (stale libraries, driver libraries baked into the image). ``allocation``:
    the device minors of a Slurm job's GPU allocation (hpc/slurm.py), or None.
    """
    image_env = _image_env(image_config)
    user_env = env_dict(getattr(opts, "env", ()) or ())
    request = request_for(getattr(opts, "gpus", None), image_env, user_env)
    if request is None:
        if getattr(opts, "gpu_memory", None):
            raise GPUError("--gpu-memory needs GPUs", hint="add --gpus")
        return None
    env = {**image_env, **_spec_env(spec), **user_env}
    try:
        driver = discover_fn(gpu_roots or DriverRoots())
    except GPUError:
        if request.source != "image":
            raise
        if warn:        # the image declares NVIDIA_VISIBLE_DEVICES; nobody asked on this host
            warn("the image asks for GPUs (NVIDIA_VISIBLE_DEVICES) but this host has no NVIDIA "
                 "driver: running without GPUs")
        return None
    for w in driver.warnings:
        if warn:
            warn(w)
    selection = select(driver, request, allocation)
    wanted = request.capabilities
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
    cache_path = loader.write_cache(loader.new_cache(image, entries), scratch_dir)
    mounts.append(bind(cache_path, "/etc/ld.so.cache"))
    mounts += file_mounts(driver, selection, wanted)
    env_out = ["CUDA_DEVICE_ORDER=PCI_BUS_ID",
               f"NVIDIA_VISIBLE_DEVICES={visible_value(request, selection)}",
               "NVIDIA_DRIVER_CAPABILITIES=" + ",".join(sorted(wanted))]
    if selection.mig_uuids:
        env_out.append("CUDA_VISIBLE_DEVICES=" + ",".join(selection.mig_uuids))
    pipe = mps.pipe_dir(driver.roots.mps_pipe_dir)
    gpu_memory = getattr(opts, "gpu_memory", None)
    if gpu_memory:
        env_out += mps.limits_env(gpu_memory, [g.index for g in selection.gpus], pipe)
    if "compute" in wanted and mps.running(pipe):
        # clients find the daemon through this directory (libnvidia-container mounts it too)
        mounts.append(bind(pipe, pipe, RW))
        if not gpu_memory:
            env_out.append(f"CUDA_MPS_PIPE_DIRECTORY={pipe}")
    return ContainerEdits(env=tuple(env_out),
                          device_nodes=tuple(device_nodes(driver, selection, wanted)),
                          mounts=tuple(mounts))
