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
from minictr.errors import (ImageError, MinictrError, RegistryError, RuntimeSetupError,
                            UsageError)

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
    network: object = None     # runtime.network.NetworkPlan: what connects its namespace
    dns_driver: str = "default"  # the network as spec.network.nameservers() names it


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
        rootless=paths.rootless, volatile=opts.rm, driver=_overlay_driver(),
        scratch=os.path.join(paths.state, container_id, "rw") if opts.read_only else None)
    uid_mappings = gid_mappings = None
    if paths.rootless and opts.userns != "host":
        from minictr.runtime.idmap import rootless_mappings

        uid_mappings, gid_mappings = rootless_mappings(opts.userns)
    network, network_path, dns_driver = _network_for(paths, opts)
    spec = builder.build_spec(
        image.config, opts, rootless=paths.rootless, container_id=container_id,
        rootfs_path=rootfs.target, read_file=lambda path: store.read_image_file(image, path),
        uid_mappings=uid_mappings, gid_mappings=gid_mappings, network_path=network_path)
    read_file = lambda p: store.read_image_file(image, p)  # noqa: E731
    for edits in _edits_for(opts, spec, gpu_roots, image.config, read_file, scratch_dir, warn):
        spec = apply_edits(spec, edits)
    # Engine data rides in the annotations: the runtime executes the spec and knows no images.
    spec["annotations"] = {**spec.get("annotations", {}), ANNOTATION_NAME: name,
                           ANNOTATION_IMAGE: image.name,
                           ANNOTATION_LAYERS: ",".join(layer.chain_id for layer in image.layers)}
    return Plan(spec=spec, rootfs=rootfs, container_id=container_id, name=name,
                image=image.name, layers=tuple(layer.chain_id for layer in image.layers),
                network=network, dns_driver=dns_driver)


def _network_for(paths: Paths, opts) -> tuple:
    """(runtime.network.NetworkPlan or None, the namespace path to join or None, the DNS
    driver) for --network. Only a bridge imports the network code (and pyroute2 with it)."""
    from minictr.spec import network as netspec

    network = netspec.parse_network(opts.network)
    if network.kind == "bridge":
        from minictr.runtime import network as runtime_network

        ports = tuple(p.to_dict() for p in netspec.parse_publish(opts.publish))
        plan_ = runtime_network.plan_bridge(ports, rootless=paths.rootless)
        return plan_, None, plan_.driver
    if network.kind == "container":
        return None, *_joined_network(paths, network.target)
    return None, None, network.kind


def _joined_network(paths: Paths, name: str) -> tuple[str, str]:
    """--network container:NAME: the namespace of NAME's first process, and its driver."""
    from minictr.runtime import lifecycle

    root = state_root(paths)
    cid = find_container(root, name)
    st = root.read(cid)
    if lifecycle.status(root, st) not in ("running", "created", "paused"):
        raise UsageError(f"--network container:{name}: the container is not running",
                         hint="its network namespace lives only as long as its process")
    kinds = {ns.get("type"): ns for ns in
             root.read_config(cid).get("linux", {}).get("namespaces", [])}
    if "network" not in kinds:
        driver = "host"
    elif st.get("network"):
        driver = st["network"].get("driver", "bridge")
    else:
        driver = "ns" if kinds["network"].get("path") else "none"
    return f"/proc/{st['pid']}/ns/net", driver

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
        dry_run: bool = False, pull_policy: str = "missing", progress=None) -> int:
    """Plan the container, then create, start and wait for it; return its status. A dry run
    goes through the same steps against a recording syscall face."""
    from minictr.runtime import lifecycle, spawn
    from minictr.runtime import state as state_mod
    from minictr.runtime.process import Supervisor

    if dry_run and explain is None:
        raise UsageError("--dry-run only makes sense with --explain",
                         hint="minictr run --dry-run --explain IMAGE CMD")
    root = _dry_root(paths) if dry_run else state_root(paths)
    container_id = state_mod.new_id()
    p = plan(paths, opts, gpu_roots=gpu_roots, pull_policy=pull_policy, progress=progress,
             container_id=container_id, warn=warn,
             scratch_dir=None if dry_run else os.path.join(paths.containers, container_id))
    kernel = _dry_kernel(p) if dry_run else None
    if not dry_run:
        root.claim_name(p.name, container_id)
    code = None
    created = None
    try:
        with Supervisor(None, explain) as sup:
            try:
                created = lifecycle.create(
                    root, container_id, p.spec, bundle=root.dir(container_id), rootfs=p.rootfs,
                    attached=True, stdin_null=not (opts.interactive or opts.tty), init=opts.init,
                    preserve_fds=opts.preserve_fds, rootless=paths.rootless,
                    on_spawned=sup.attach, network=p.network, kernel=kernel, explain=explain)
                lifecycle.start(root, container_id, kernel=kernel, explain=explain)
                if dry_run:
                    return 0
                spawn.wait_for_exec(created.exec_pipe, p.spec["process"]["args"][0])
            except MinictrError:
                if sup.default_action:            # Ctrl-C during setup: as if it ran
                    code = 128 + sup.default_action
                    return code
                raise
            code = sup.relay_tty(created.console) if created.console is not None \
                else sup.wait()
            if created.console is not None:
                os.close(created.console)
        return code
    finally:
        if dry_run:
            import shutil

            shutil.rmtree(root.path, ignore_errors=True)
        else:
            _after_exit(paths, root, container_id, p, remove=opts.rm, warn=warn,
                        network=created.network if created is not None else None)


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


def _after_exit(paths: Paths, root, container_id: str, p: Plan, *, remove: bool,
                warn: Explain, network=None) -> None:
    """The container has stopped (or never started): report an OOM kill, free its network
    (address, ports, helper) and its cgroup, and with --rm remove it and its writable layer."""
    from minictr.runtime import lifecycle

    try:
        st = root.read(container_id)
    except MinictrError:
        return
    if st.get("network"):
        lifecycle.release_network(root, container_id, network)
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


def find_container(root, name: str) -> str:
    """A container's id from its name, full id or a unique id prefix."""
    from minictr.runtime.state import NoSuchContainer

    by_name = root.name_to_id(name)
    if by_name and os.path.isdir(root.dir(by_name)):
        return by_name
    ids = root.ids()
    if name in ids:
        return name
    matches = [cid for cid in ids if cid.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UsageError(f"{name!r} matches {len(matches)} containers", hint="give more of the id")
    raise NoSuchContainer(name)


def ps(paths: Paths, all_: bool = False, stats: bool = False, warn: Explain = None) -> list[dict]:
    rows = []
    for st in _states(paths, warn):
        if not all_ and st["status"] not in ("running", "created", "paused"):
            continue
        notes = st["annotations"]
        try:
            args = state_root(paths).read_config(st["id"])["process"]["args"]
        except MinictrError:
            args = []
        row = {"id": st["id"], "name": notes.get(ANNOTATION_NAME, st["id"][:12]),
               "image": notes.get(ANNOTATION_IMAGE, ""), "pid": st["pid"] or None,
               "status": st["status"], "command": args, "created": st["created"]}
        if stats:
            row["stats"] = _cgroup_stats(paths, st["id"])
        rows.append(row)
    return sorted(rows, key=lambda r: r["created"])


def _cgroup_stats(paths: Paths, container_id: str) -> dict | None:
    from minictr.runtime import cgroups

    st = state_root(paths).read(container_id)
    if not st.get("cgroup_paths"):
        return None
    try:
        return cgroups.Cgroup.from_paths(st["cgroup_paths"]).stats()
    except OSError:
        return None


def stats(paths: Paths, name: str) -> dict:
    from minictr.runtime import lifecycle

    root = state_root(paths)
    cid = find_container(root, name)
    if lifecycle.status(root, root.read(cid)) != "running":
        raise MinictrError(f"container {name} is not running")
    usage = _cgroup_stats(paths, cid)
    if usage is None:
        raise MinictrError(f"container {name} has no cgroup to read usage from",
                           hint="rootless containers without a delegated cgroup have none")
    return {"id": cid, "name": root.read(cid)["annotations"].get(ANNOTATION_NAME), **usage}


def exec_(paths: Paths, name: str, command: list[str], *, env=(), tty=False, interactive=False,
          workdir=None, user=None) -> int:
    """Run ``command`` in a running container, through the spawn path its first process took."""
    from minictr.runtime import lifecycle, spawn
    from minictr.runtime.process import Supervisor
    from minictr.spec.process import exec_process_settings

    if not command:
        raise UsageError("exec needs a command", hint="minictr exec NAME sh")
    root = state_root(paths)
    cid = find_container(root, name)
    spec = root.read_config(cid)
    process = exec_process_settings(spec["process"], command, list(env), tty, workdir, user)
    with Supervisor(None) as sup:
        made = lifecycle.exec_process(root, cid, process, attached=True,
                                      stdin_null=not (interactive or tty), on_spawned=sup.attach)
        spawn.wait_for_exec(made.exec_pipe, command[0])
        code = sup.relay_tty(made.console) if made.console is not None else sup.wait()
    if made.console is not None:
        os.close(made.console)
    return code


def kill(paths: Paths, name: str, signal_name: str) -> None:
    from minictr.runtime import lifecycle
    from minictr.runtime.state import parse_signal

    root = state_root(paths)
    lifecycle.kill(root, find_container(root, name), parse_signal(signal_name))


def rm(paths: Paths, name: str, force: bool = False, warn: Explain = None) -> None:
    """Remove a stopped container (with force, a running one) and its writable layer."""
    from minictr.runtime import lifecycle

    root = state_root(paths)
    cid = find_container(root, name)
    try:
        linux = root.read_config(cid).get("linux", {})
    except MinictrError:
        linux = {}
    try:
        now = lifecycle.status(root, root.read(cid))
    except MinictrError:
        now = "stopped"
        if not force:
            raise
    if now in ("running", "paused", "created") and not force:
        raise RuntimeSetupError(f"container {name} is {now}",
                                hint="stop it first, or use minictr rm -f")
    lifecycle.delete(root, cid, force=True, warn=warn)
    _remove_writable_layer(paths, cid, linux)


# ---------------------------------------------------------------- GPUs


def gpus(roots) -> dict:
    from minictr.gpu import discover

    return discover.discover(driver_roots(roots) or discover.DriverRoots()).to_dict()


def cdi_generate(roots, fmt: str = "yaml") -> str:
    from minictr.gpu import cdi, discover

    return cdi.generate(discover.discover(driver_roots(roots) or discover.DriverRoots()), fmt=fmt)


__all__ = ["Plan", "MinictrError", "load", "images", "inspect", "rmi", "gc", "pull", "plan",
           "run", "ps", "stats", "exec_", "kill", "rm", "gpus", "cdi_generate"]
