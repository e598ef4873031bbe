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
# What minictr's own CLI records about a container, in its spec's annotations.
ANNOTATION_NAME = "org.minictr.name"
ANNOTATION_IMAGE = "org.minictr.image"
ANNOTATION_LAYERS = "org.minictr.layers"


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
    notes: tuple = ()          # what the plan chose that --explain should say


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
    from minictr.errors import NoSuchImage, NotFound

    try:
        return _store(paths).inspect(ref)
    except NoSuchImage as err:
        raise NotFound(str(err), hint=err.hint) from err


def rmi(paths: Paths, refs: list[str], prune: bool = False) -> list[str]:
    from minictr.errors import NoSuchImage, NotFound

    store = _store(paths)
    try:
        out = [f"Untagged: {store.remove_image(ref)}" for ref in refs]
    except NoSuchImage as err:
        raise NotFound(str(err), hint=err.hint) from err
    if prune:
        res = store.gc(keep_layers=_layers_in_use(paths))
        out.append(f"Pruned {res['blobs']} blobs and {res['layers']} layers")
    return out


def gc(paths: Paths) -> dict:
    return _store(paths).gc(keep_layers=_layers_in_use(paths))


def _layers_in_use(paths: Paths) -> set[str]:
    """Chain ids of the layers under every container that still exists (running or stopped,
    until `minictr rm`): their overlay needs them even after `rmi` removed the image."""
    layers = set()
    for st in _states(paths):
        layers.update(filter(None, st["annotations"].get(ANNOTATION_LAYERS, "").split(",")))
    return layers


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
                   warn: Explain = None, platform: str | None = None,
                   tls_verify: bool | None = None):
    """The stored image for ``ref``; loads transports (oci:, oci-archive:, docker-archive:) and
    pulls from a registry per ``pull_policy``. With ``platform``, a stored image for another
    platform counts as missing (docker pulls the requested one)."""
    from minictr.image.reference import is_transport

    store = _store(paths, warn)
    want = _parse_platform(platform) if platform else None
    if is_transport(ref):
        from minictr.image import archive

        names = archive.load(store, ref, platform=want)
        return _check_requested_platform(store.resolve(names[0]), want, ref)

    def pulled():
        return store.resolve(pull(paths, ref, platform=platform, tls_verify=tls_verify,
                                  progress=progress, warn=warn))

    if pull_policy == "always":
        return _check_requested_platform(pulled(), want, ref)
    try:
        image = store.resolve(ref)
        if want is None or _platform_of(image) is None or _matches(image, want):
            return image
        if pull_policy == "never":
            _check_requested_platform(image, want, ref)
    except ImageError:
        if pull_policy == "never":
            raise
    try:
        return _check_requested_platform(pulled(), want, ref)
    except RegistryError as err:
        # Say first what the user most likely needs to know: it is not here.
        raise RegistryError(f"image {ref!r} is not in the store, and pulling it failed: {err}",
                            hint=err.hint or "minictr images lists stored images; "
                            "minictr load FILE loads a tarball") from err


def _parse_platform(text: str) -> dict:
    from minictr.image import manifests

    p = manifests.parse_platform(text)
    return {"os": p.os, "architecture": p.architecture, "variant": p.variant}


def _platform_of(image) -> dict | None:
    """The platform an image config declares (image-spec config.md), or None if it does not."""
    config = image.config if isinstance(image.config, dict) else {}
    if not isinstance(config.get("os"), str) or not isinstance(config.get("architecture"), str):
        return None
    return {"os": config["os"], "architecture": config["architecture"],
            "variant": config.get("variant") if isinstance(config.get("variant"), str) else ""}


def _platform_name(p: dict) -> str:
    return "/".join(x for x in (p["os"], p["architecture"], p.get("variant")) if x)


def _matches(image, want: dict) -> bool:
    from minictr.image import oci

    have = _platform_of(image)
    return have is None or oci.platform_matches(have, want)


def _check_requested_platform(image, want: dict | None, ref: str):
    if want is not None and not _matches(image, want):
        raise ImageError(f"image {ref!r} was found but its platform "
                         f"({_platform_name(_platform_of(image))}) does not match the "
                         f"requested {_platform_name(want)}",
                         hint="pull the other platform's image (--pull missing or always), or "
                         "drop --platform")
    return image


def _warn_platform(image, requested: str | None, warn: Explain) -> None:
    """docker's warning for an image built for another platform than this host's, when none was
    asked for: it may still run (binfmt_misc and qemu), or fail with "exec format error"."""
    from minictr.image import oci

    have = _platform_of(image)
    host = oci.host_platform()
    if requested or have is None or warn is None or oci.platform_matches(have, host):
        return
    warn(f"The requested image's platform ({_platform_name(have)}) does not match the detected "
         f"host platform ({_platform_name(host)}) and no specific platform was requested")


# ---------------------------------------------------------------- plan


def plan(paths: Paths, opts, *, gpu_roots=None, pull_policy: str = "never", progress=None,
         container_id: str | None = None, scratch_dir: str | None = None,
         warn: Explain = None) -> Plan:
    """Image config + options (+ GPU, CDI and device edits) → the OCI runtime spec to execute.
    ``scratch_dir`` is the container's own directory (its resolv.conf, hosts and hostname go
    there); a plan without one (`minictr spec`) writes them by content to a temp dir."""
    from minictr import host
    from minictr.config import INIT_BINARY
    from minictr.runtime import state as state_mod
    from minictr.runtime.rootfs import RootfsPlan
    from minictr.spec import builder, defaults
    from minictr.spec.edits import apply_edits

    image = _resolve_image(paths, opts.image, pull_policy, progress, warn, opts.platform,
                           opts.tls_verify)
    _warn_platform(image, opts.platform, warn)
    store = _store(paths)
    container_id = container_id or state_mod.new_id()
    name = opts.name or state_mod.default_name(container_id)
    held_caps, nofile_limit, nofile_why = host.launcher_limits(paths.rootless)
    etc, notes = host.etc_files(opts, builder.container_hostname(opts.hostname, container_id),
                                scratch_dir)
    if nofile_limit < defaults.DEFAULT_NOFILE and not any(
            u.strip().lower().startswith("nofile=") for u in opts.ulimits):
        notes.append(f"RLIMIT_NOFILE {nofile_limit}:{nofile_limit}, not podman's "
                     f"{defaults.DEFAULT_NOFILE}: {nofile_why}")
    lowerdirs = [store.layer_dir(layer.chain_id) for layer in image.layers]
    container_dir = os.path.join(paths.containers, container_id)
    rootfs = RootfsPlan(
        lowerdirs=tuple(reversed(lowerdirs)),   # overlayfs: topmost layer first
        upperdir=None if opts.read_only else os.path.join(container_dir, "upper"),
        workdir=None if opts.read_only else os.path.join(container_dir, "work"),
        target=os.path.join(paths.state, container_id, "rootfs"),
        rootless=paths.rootless, volatile=opts.rm, driver=_overlay_driver(),
        scratch=os.path.join(paths.state, container_id, "rw") if opts.read_only else None)
    uid_mappings = gid_mappings = None
    if paths.rootless and opts.userns != "host":
        from minictr.runtime.idmap import rootless_mappings

        uid_mappings, gid_mappings = rootless_mappings(opts.userns)
    spec = builder.build_spec(
        image.config, opts, rootless=paths.rootless, container_id=container_id,
        rootfs_path=rootfs.target, read_file=lambda path: store.read_image_file(image, path),
        uid_mappings=uid_mappings, gid_mappings=gid_mappings, launcher_caps=held_caps,
        nofile_limit=nofile_limit, etc_files=etc,
        init_path=INIT_BINARY if os.path.exists(INIT_BINARY) else None)
    read_file = lambda p: store.read_image_file(image, p)  # noqa: E731
    for edits in _edits_for(opts, spec, gpu_roots, image.config, read_file, scratch_dir, warn):
        spec = apply_edits(spec, edits)
    # Engine data rides in the annotations: the runtime executes the spec and knows no images.
    spec["annotations"] = {**spec.get("annotations", {}), ANNOTATION_NAME: name,
                           ANNOTATION_IMAGE: image.name,
                           ANNOTATION_LAYERS: ",".join(layer.chain_id for layer in image.layers)}
    return Plan(spec=spec, rootfs=rootfs, container_id=container_id, name=name,
                image=image.name, layers=tuple(layer.chain_id for layer in image.layers),
                notes=tuple(notes))


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


def state_root(paths: Paths):
    from minictr.runtime.state import StateRoot

    return StateRoot(paths.state)


def run(paths: Paths, opts, *, gpu_roots=None, explain: Explain = None, warn: Explain = None,
        dry_run: bool = False, pull_policy: str = "missing", progress=None,
        cidfile: str | None = None) -> int:
    """Plan the container, then create, start and wait for it; return its status. A dry run
    goes through the same steps against a recording syscall face."""
    if dry_run and explain is None:
        raise UsageError("--dry-run only makes sense with --explain",
                         hint="minictr run --dry-run --explain IMAGE CMD")
    _claim_cidfile(cidfile)
    try:
        root, p, kernel = _prepare(paths, opts, gpu_roots=gpu_roots, dry_run=dry_run,
                                   pull_policy=pull_policy, progress=progress, warn=warn,
                                   explain=explain)
        return _execute(paths, root, p, opts, kernel=kernel, explain=explain, warn=warn,
                        stdin=0 if opts.interactive else None, out=1, cidfile=cidfile)
    except BaseException:
        _drop_cidfile(cidfile)
        raise


def run_detached(paths: Paths, opts, *, gpu_roots=None, explain: Explain = None,
                 warn: Explain = None, pull_policy: str = "missing", progress=None,
                 cidfile: str | None = None) -> str:
    """`run -d`: plan here (pull progress and plan errors reach the user), then leave a
    monitor process as the container's parent (monitor.py) that runs the same create, start,
    wait and cleanup as an attached run, with the container's output going to its log.
    Returns the container's id once its command runs; a setup error is raised here."""
    from minictr import monitor

    _claim_cidfile(cidfile)
    try:
        root, p, _ = _prepare(paths, opts, gpu_roots=gpu_roots, dry_run=False,
                              pull_policy=pull_policy, progress=progress, warn=warn,
                              explain=explain)
        monitor.detach(lambda stdio, out, on_started: _execute(
            paths, root, p, opts, kernel=None, explain=explain, warn=warn, stdio=stdio,
            stdin=None, out=out, on_started=on_started, cidfile=cidfile),
            log_path=log_path(paths, p.container_id), interactive=opts.interactive)
    except BaseException:
        _drop_cidfile(cidfile)
        raise
    return p.container_id


def log_path(paths: Paths, container_id: str) -> str:
    """A detached container's stdout and stderr, in the order written (one file for both)."""
    return os.path.join(paths.containers, container_id, "container.log")


def _prepare(paths: Paths, opts, *, gpu_roots, dry_run: bool, pull_policy: str, progress,
             warn: Explain, explain: Explain):
    """(state root, plan, recording face or None): the plan made and the name claimed. A plan
    that fails leaves nothing behind (its container directory holds the files it wrote)."""
    from minictr.runtime import state as state_mod

    root = _dry_root(paths) if dry_run else state_root(paths)
    container_id = state_mod.new_id()
    # a dry run too: its steps must name the same files; it removes the directory at the end
    scratch = os.path.join(paths.containers, container_id)
    try:
        p = plan(paths, opts, gpu_roots=gpu_roots, pull_policy=pull_policy, progress=progress,
                 container_id=container_id, warn=warn, scratch_dir=scratch)
        if not dry_run:
            root.claim_name(p.name, container_id)
    except BaseException:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
        if dry_run:
            shutil.rmtree(root.path, ignore_errors=True)
        raise
    for note in p.notes:
        if explain:
            explain(note)
    return root, p, _dry_kernel(p) if dry_run else None


def _execute(paths: Paths, root, p: Plan, opts, *, kernel, explain: Explain, warn: Explain,
             stdio: tuple = (), stdin: int | None, out: int, on_started=None,
             cidfile: str | None = None) -> int:
    """create, start, wait (relaying the terminal), then the cleanup: the one way a container
    of `minictr run` is executed, attached or by a detached run's monitor. ``stdio``: the
    container's own fds 0-2 (default: ours); ``stdin``/``out``: what the terminal relay
    copies from and to; ``on_started()`` runs once the command was exec'd."""
    from minictr.runtime import lifecycle, spawn
    from minictr.runtime.process import Supervisor

    container_id = p.container_id
    dry_run = kernel is not None
    code = None
    try:
        with Supervisor(None, explain) as sup:
            try:
                created = lifecycle.create(
                    root, container_id, p.spec, bundle=root.dir(container_id), rootfs=p.rootfs,
                    attached=True, stdin_null=not (opts.interactive or opts.tty), stdio=stdio,
                    preserve_fds=opts.preserve_fds, rootless=paths.rootless,
                    on_spawned=sup.attach, kernel=kernel, explain=explain)
                if cidfile and not dry_run:
                    with open(cidfile, "w") as f:
                        f.write(container_id)
                lifecycle.start(root, container_id, kernel=kernel, explain=explain)
                if dry_run:
                    return 0
                spawn.wait_for_exec(created.exec_pipe, p.spec["process"]["args"][0])
            except MinictrError:
                if sup.default_action:            # Ctrl-C during setup: as if it ran
                    code = 128 + sup.default_action
                    return code
                raise
            if on_started:
                on_started()
            if created.console is not None:
                try:
                    code = sup.relay_tty(created.console, stdin=stdin, out=out)
                finally:
                    os.close(created.console)
            else:
                code = sup.wait()
        return code
    finally:
        if dry_run:
            import shutil

            shutil.rmtree(root.path, ignore_errors=True)
            shutil.rmtree(os.path.join(paths.containers, container_id), ignore_errors=True)
        else:
            _after_exit(paths, root, container_id, p, code=code, remove=opts.rm, warn=warn)


def _claim_cidfile(path: str | None) -> None:
    """--cidfile: made empty now, exclusively (docker refuses an existing one: another
    container may own it); the id is written once the container is created."""
    if path is None:
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
    except FileExistsError:
        raise UsageError(f"container ID file found, make sure the other container isn't "
                         f"running or delete {path}") from None
    except OSError as err:
        raise UsageError(f"--cidfile {path}: {err.strerror}") from err


def _drop_cidfile(path: str | None) -> None:
    """A run that failed before its container was created leaves no cidfile (docker)."""
    try:
        if path and os.path.getsize(path) == 0:
            os.unlink(path)
    except OSError:
        pass


def _dry_root(paths: Paths):
    """A dry run's state lives in a throwaway directory: nothing of it is kept."""
    import tempfile

    from minictr.runtime.state import StateRoot

    return StateRoot(tempfile.mkdtemp(prefix="minictr-dry-run-"))


def _dry_kernel(p: Plan):
    """The recording face, told where the container's paths would come from: bind sources,
    the host's /proc and /sys, and the image's merged layers."""
    from minictr.image.merged import MergedView
    from minictr.runtime.syscalls import RecordingSyscalls

    binds = {m["destination"]: m["source"] for m in p.spec.get("mounts", ())
             if m.get("type") == "bind" or "bind" in m.get("options", ())
             or "rbind" in m.get("options", ())}
    view = MergedView(list(p.rootfs.lowerdirs))
    kernel = RecordingSyscalls(container_root=p.spec["root"]["path"], binds=binds,
                               lookup=view.find)
    kernel.mounts = p.spec.get("mounts", [])
    return kernel


def _after_exit(paths: Paths, root, container_id: str, p: Plan, *, code: int | None,
                remove: bool, warn: Explain) -> None:
    """The container has stopped (or never started): record its exit status, report an OOM
    kill, free its cgroup, and with --rm remove it and its writable layer. A container whose
    create failed is gone already: its directory (the files the plan wrote) goes too."""
    from minictr.runtime import lifecycle
    from minictr.runtime import state as state_mod

    try:
        st = root.read(container_id)
    except state_mod.NoSuchContainer:
        _remove_writable_layer(paths, container_id, p.spec.get("linux", {}))
        return
    except MinictrError:
        return
    if code is not None and not remove:
        st = root.update(container_id, exit_code=code, finished=state_mod.timestamp())
    if st.get("cgroup_paths") and warn:
        from minictr.runtime import cgroups

        if cgroups.Cgroup.from_paths(st["cgroup_paths"]).oom_kills():
            limit = p.spec.get("linux", {}).get("resources", {}).get("memory", {}).get("limit")
            warn("the container was killed by the kernel's OOM killer: it reached its memory "
                 f"limit ({limit} bytes)")
    if remove:
        lifecycle.delete(root, container_id, force=True, warn=warn)
        _remove_writable_layer(paths, container_id, p.spec.get("linux", {}))
    else:
        lifecycle.destroy_cgroup(st)
        root.update(container_id, cgroup_paths=[], cgroup_v2=None)


def _remove_writable_layer(paths: Paths, container_id: str, linux: dict) -> None:
    from minictr.runtime import cleanup

    cleanup.remove_tree(os.path.join(paths.containers, container_id), paths.rootless, linux)


def _states(paths: Paths, warn: Explain = None) -> list[dict]:
    from minictr.runtime import lifecycle
    from minictr.runtime.state import StateRoot

    if not os.path.isdir(paths.state):
        return []
    return lifecycle.list_states(StateRoot(paths.state), warn=warn)


# ---------------------------------------------------------------- GPUs


def gpus(roots) -> dict:
    from minictr.gpu import discover

    return discover.discover(driver_roots(roots) or discover.DriverRoots()).to_dict()


def cdi_generate(roots, fmt: str = "yaml") -> str:
    from minictr.gpu import cdi, discover

    return cdi.generate(discover.discover(driver_roots(roots) or discover.DriverRoots()), fmt=fmt)


__all__ = ["Plan", "MinictrError", "load", "images", "inspect", "rmi", "gc", "pull", "plan",
           "run", "run_detached", "gpus", "cdi_generate"]
