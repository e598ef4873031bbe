"""The composition: pull / plan / run — image → spec → edits → runtime.

This is the only module that knows every side. The CLI calls it; it calls the image side for a
stored image, the spec builder for a plan, the GPU and CDI code for edits, and the runtime to
execute the plan. Imports are lazy so that each command loads only what it uses.
"""
from __future__ import annotations

import os
from minictr.records import record
from collections.abc import Callable

from minictr.config import Paths
from minictr.errors import ImageError, MinictrError, RegistryError, UsageError

Explain = Callable[[str], None] | None


@record
class Plan:
    """Everything ``run`` will do, computed before anything touches the kernel."""

    spec: dict                 # the OCI runtime spec (config.json)
    rootfs: object             # runtime.rootfs.RootfsPlan: the overlay that becomes root.path
    container_id: str
    name: str
    image: str                 # the image's normalised name, for `ps`
    layers: tuple = ()         # the image's chain ids, kept from gc while the container exists
    hooks: tuple = ()          # CDI hooks, already part of spec["hooks"]


def _store(paths: Paths, warn: Explain = None):
    """The store; ``warn`` receives what unpacking skips (device nodes in a rootless store...)."""
    from minictr.image.store import Store

    return Store(paths.store, rootless=paths.rootless, warn=warn)


# ---------------------------------------------------------------- images


def load(paths: Paths, source: str, tag: str | None = None, warn: Explain = None) -> list[str]:
    """Load an OCI layout dir, oci-archive or docker-archive; return the stored image names."""
    from minictr.image import archive

    return archive.load(_store(paths, warn), source, tag=tag)


def images(paths: Paths) -> list[dict]:
    return _store(paths).list_images()


def inspect(paths: Paths, ref: str) -> dict:
    return _store(paths).inspect(ref)


def rmi(paths: Paths, refs: list[str], prune: bool = False) -> list[str]:
    store = _store(paths)
    out = [f"Untagged: {store.remove_image(ref)}" for ref in refs]
    if prune:
        res = store.gc(keep_layers=_layers_in_use(paths))
        out.append(f"Pruned {res['blobs']} blobs and {res['layers']} layers")
    return out


def gc(paths: Paths) -> dict:
    return _store(paths).gc(keep_layers=_layers_in_use(paths))


def _layers_in_use(paths: Paths) -> set[str]:
    """Chain ids of the layers under every container that still exists (running or stopped,
    until `minictr rm`): their overlay needs them even after `rmi` removed the image."""
    from minictr.runtime import state

    return {layer for st in state.list_containers(paths.state, all_=True)
            for layer in st.get("layers") or ()}


def pull(paths: Paths, ref: str, *, platform: str | None = None, tls_verify: bool | None = None,
         progress=None, warn: Explain = None) -> str:
    from minictr.image import registry

    return registry.pull(_store(paths, warn), ref, platform=platform, tls_verify=tls_verify,
                         progress=progress)


def login(paths: Paths, registry_name: str, username: str, password: str, *,
          tls_verify: bool | None = None, authfile: str | None = None) -> None:
    from minictr.image import auth, registry

    registry.check_login(registry_name, username, password, tls_verify=tls_verify)
    auth.save(registry_name, username, password, authfile=authfile)


def logout(paths: Paths, registry_name: str, *, authfile: str | None = None) -> None:
    from minictr.image import auth

    auth.remove(registry_name, authfile=authfile)


def _resolve_image(paths: Paths, ref: str, pull_policy: str = "never", progress=None,
                   warn: Explain = None):
    """The stored image for ``ref``; loads transports (oci:, oci-archive:, docker-archive:) and
    pulls from a registry per ``pull_policy``."""
    from minictr.image.reference import is_transport

    store = _store(paths, warn)
    if is_transport(ref):
        from minictr.image import archive

        names = archive.load(store, ref)
        return store.resolve(names[0])
    if pull_policy == "always":
        return store.resolve(pull(paths, ref, progress=progress, warn=warn))
    try:
        return store.resolve(ref)
    except ImageError:
        if pull_policy == "never":
            raise
    try:
        return store.resolve(pull(paths, ref, progress=progress, warn=warn))
    except RegistryError as err:
        # Say first what the user most likely needs to know: it is not here.
        raise RegistryError(f"image {ref!r} is not in the store, and pulling it failed: {err}",
                            hint=err.hint or "minictr images lists stored images; "
                            "minictr load FILE loads a tarball") from err


# ---------------------------------------------------------------- plan


def plan(paths: Paths, opts, *, gpu_roots=None, pull_policy: str = "never", progress=None,
         container_id: str | None = None, scratch_dir: str | None = None,
         warn: Explain = None) -> Plan:
    """Image config + options (+ GPU, CDI and device edits) → the OCI runtime spec to execute."""
    from minictr.runtime import state as state_mod
    from minictr.runtime.rootfs import RootfsPlan
    from minictr.spec import builder
    from minictr.spec.edits import apply_edits

    image = _resolve_image(paths, opts.image, pull_policy, progress, warn)
    store = _store(paths)
    container_id = container_id or state_mod.new_id()
    name = opts.name or state_mod.default_name(container_id)
    lowerdirs = [store.layer_dir(layer.chain_id) for layer in image.layers]
    container_dir = os.path.join(paths.containers, container_id)
    rootfs = RootfsPlan(
        lowerdirs=tuple(reversed(lowerdirs)),   # overlayfs: topmost layer first
        upperdir=None if opts.read_only else os.path.join(container_dir, "upper"),
        workdir=None if opts.read_only else os.path.join(container_dir, "work"),
        target=os.path.join(paths.state, container_id, "rootfs"),
        rootless=paths.rootless, volatile=opts.rm, driver=_overlay_driver())
    uid_mappings = gid_mappings = None
    if paths.rootless and opts.userns != "host":
        from minictr.runtime.idmap import rootless_mappings

        uid_mappings, gid_mappings = rootless_mappings(opts.userns)
    spec = builder.build_spec(
        image.config, opts, rootless=paths.rootless, container_id=container_id,
        rootfs_path=rootfs.target, read_file=lambda path: store.read_image_file(image, path),
        uid_mappings=uid_mappings, gid_mappings=gid_mappings)
    read_file = lambda p: store.read_image_file(image, p)  # noqa: E731
    for edits in _edits_for(opts, spec, gpu_roots, image.config, read_file, scratch_dir, warn):
        spec = apply_edits(spec, edits)
    return Plan(spec=spec, rootfs=rootfs, container_id=container_id, name=name,
                image=image.name, layers=tuple(layer.chain_id for layer in image.layers))


def _overlay_driver() -> str:
    """MINICTR_OVERLAY=fuse-overlayfs picks the user-space overlay (kernels or filesystems where
    the kernel's refuses an unprivileged mount); the default is the kernel's overlayfs, with
    fuse-overlayfs as the fallback when that mount fails rootless."""
    driver = os.environ.get("MINICTR_OVERLAY", "overlay")
    if driver not in ("overlay", "fuse-overlayfs"):
        raise UsageError(f"MINICTR_OVERLAY={driver!r} is not a known overlay driver",
                         hint="use overlay (default) or fuse-overlayfs")
    return driver


def _edits_for(opts, spec: dict, gpu_roots, image_config: dict, read_file, scratch_dir, warn):
    """Container edits from --device (host nodes and CDI names) and GPUs."""
    from minictr.spec import devices

    host_devices = [d for d in opts.devices if d.startswith("/")]
    cdi_names = [d for d in opts.devices if not d.startswith("/")]
    if host_devices:
        yield devices.edits_for_host_devices(host_devices)
    if cdi_names:
        from minictr.gpu import cdi

        yield cdi.edits_for_names(cdi_names)
    if _may_want_gpus(opts, image_config):
        from minictr.gpu import inject
        from minictr.hpc import slurm

        gpu_edits = inject.edits_for_request(opts, spec, driver_roots(gpu_roots), image_config,
                                             read_file, scratch_dir, warn=warn,
                                             allocation=slurm.gpu_allocation(os.environ))
        if gpu_edits is not None:
            yield gpu_edits


# Environment variables through which an image or -e can ask for GPUs (GPU.md, "Selecting").
_GPU_ENV = ("NVIDIA_VISIBLE_DEVICES=", "CUDA_VERSION=")


def _may_want_gpus(opts, image_config: dict) -> bool:
    """A cheap over-approximation of gpu.select.request_for, so that a run without GPUs never
    imports the GPU code (it costs more than the container's setup)."""
    if opts.gpus or opts.gpu_memory:
        return True
    image_env = (image_config.get("config") or {}).get("Env") or []
    return any(isinstance(e, str) and e.startswith(_GPU_ENV)
               for e in [*image_env, *opts.env]) or "NVIDIA_VISIBLE_DEVICES" in opts.env


def driver_roots(raw):
    """The CLI passes the three --nvidia-*-root values as a tuple; build DriverRoots late."""
    from minictr.gpu.discover import DriverRoots

    if raw is None or isinstance(raw, DriverRoots):
        return raw
    return DriverRoots.from_args(*raw)


def write_bundle(spec: dict, bundle: str) -> None:
    """Write an OCI bundle's config.json (root.path stays absolute: the rootfs is prepared by
    `minictr run`; crun/runc need an existing directory there)."""
    import json

    from minictr.image.store import atomic_write

    os.makedirs(bundle, exist_ok=True)
    atomic_write(os.path.join(bundle, "config.json"), json.dumps(spec, indent=2).encode())


# ---------------------------------------------------------------- run


def run(paths: Paths, opts, *, gpu_roots=None, explain: Explain = None, warn: Explain = None,
        dry_run: bool = False, pull_policy: str = "missing", progress=None) -> int:
    """Plan the container, then hand the plan to the runtime; return the container's status."""
    from minictr.runtime import container

    if dry_run and explain is None:
        raise UsageError("--dry-run only makes sense with --explain",
                         hint="minictr run --dry-run --explain IMAGE CMD")
    from minictr.runtime import state as state_mod

    container_id = state_mod.new_id()
    p = plan(paths, opts, gpu_roots=gpu_roots, pull_policy=pull_policy, progress=progress,
             container_id=container_id, warn=warn,
             scratch_dir=None if dry_run else state_mod.container_dir(paths.state, container_id))
    return container.run(p.spec, p.rootfs, paths=paths, container_id=p.container_id,
                         name=p.name, image=p.image, remove=opts.rm, tty=opts.tty,
                         interactive=opts.interactive, init=opts.init, layers=p.layers,
                         explain=explain, warn=warn, dry_run=dry_run)


def ps(paths: Paths, all_: bool = False, stats: bool = False) -> list[dict]:
    from minictr.runtime import state

    return state.list_containers(paths.state, all_=all_, stats=stats)


def stats(paths: Paths, name: str) -> dict:
    from minictr.runtime import state

    return state.container_stats(paths.state, name)


def exec_(paths: Paths, name: str, command: list[str], *, env=(), tty=False, workdir=None,
          user=None) -> int:
    from minictr.runtime import nsenter

    if not command:
        raise UsageError("exec needs a command", hint="minictr exec NAME sh")
    return nsenter.exec_in(paths, name, command, env=list(env), tty=tty, workdir=workdir,
                             user=user)


def kill(paths: Paths, name: str, signal_name: str) -> None:
    from minictr.runtime import state

    state.kill(paths.state, name, signal_name)


def rm(paths: Paths, name: str, force: bool = False) -> None:
    from minictr.runtime import cleanup

    cleanup.remove(paths, name, force=force)


# ---------------------------------------------------------------- GPUs


def gpus(roots) -> dict:
    from minictr.gpu import discover

    return discover.discover(driver_roots(roots) or discover.DriverRoots()).to_dict()


def cdi_generate(roots, fmt: str = "yaml") -> str:
    from minictr.gpu import cdi, discover

    return cdi.generate(discover.discover(driver_roots(roots) or discover.DriverRoots()), fmt=fmt)


__all__ = ["Plan", "MinictrError", "load", "images", "inspect", "rmi", "gc", "pull", "plan",
           "run", "ps", "stats", "exec_", "kill", "rm", "gpus", "cdi_generate"]
