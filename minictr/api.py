"""The composition: pull / plan / run — image → spec → edits → runtime.

This is the only module that knows every side. The CLI calls it; it calls the image side for a
stored image, the spec builder for a plan, the GPU and CDI code for edits, and the runtime to
execute the plan. Imports are lazy so that each command loads only what it uses.
"""
from __future__ import annotations

import os
from minictr.records import record
from _collections_abc import Callable

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
    keep_fds: tuple = ()       # host fds that pass in by number (job-native: Slurm's PMI_FD)
    files: tuple = ()          # (name, bytes) the spec's mounts expect in files_dir (/etc files,
    #                            the GPU loader cache, job-native passwd/group): written at create
    notes: tuple = ()          # what the plan chose that --explain should say
    network: object = None     # runtime.network.NetworkPlan: what connects its namespace
    dns_driver: str = "default"  # the network as spec.network.nameservers() names it
    gpu_request: bool = False  # the spec holds a GPU request with_gpus has yet to resolve
    # a resolved GPU request that may be replayed: the host answers it rests on (gpu/witnesses.py)
    # and the warnings it gave; None when it must be resolved at every run (CDI, a Slurm job)
    gpu_witnesses: tuple | None = None
    gpu_warnings: tuple = ()


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
    """Blobs and layers no image or container uses, and what killed runs left outside any
    container's state entry: writable layers and names; mount-point layers of removed image
    layers (mountpoints.collect)."""
    from minictr import mountpoints

    result = _store(paths).gc(keep_layers=_layers_in_use(paths))
    result["containers"] = _remove_orphan_layers(paths)
    result["mountpoints"] = mountpoints.collect(paths.state)
    return result


def _remove_orphan_layers(paths: Paths) -> int:
    """A container's state entry is written before its writable layer is made, so a layer
    dir whose id has no entry belongs to a run killed before it got one, or to a container
    already removed: listing the dirs *before* the entries makes that safe against a run
    starting meanwhile."""
    try:
        candidates = os.listdir(paths.containers)
    except FileNotFoundError:
        return 0
    if not os.path.isdir(paths.state):
        ids: set[str] = set()
    else:
        root = state_root(paths)
        root.prune_names()
        ids = set(root.ids())
    linux: dict = {}
    if paths.rootless:
        from minictr.runtime.idmap import rootless_mappings

        uid_maps, gid_maps = rootless_mappings()
        linux = {"uidMappings": uid_maps, "gidMappings": gid_maps}
    removed = 0
    for cid in candidates:
        if cid not in ids:
            _remove_writable_layer(paths, cid, linux)
            removed += 1
    return removed


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


SQUASH_COMPRESSORS = ("gzip", "xz", "zstd", "lzo", "lz4")


def export(paths: Paths, ref: str, output: str, *, compression: str = "gzip",
           explain: Explain = None, warn: Explain = None) -> str:
    """Write the image's merged rootfs to ``output`` as one squashfs file that carries the image
    config at /.minictr/image.json (image/singlefile.py), for `minictr run FILE`. The layers
    are merged by the kernel's overlayfs in a private mount namespace and read by mksquashfs
    (squashfs-tools); the file appears complete (rename) or not at all."""
    import contextlib
    import json
    import shutil
    import tempfile

    from minictr.image.singlefile import CONFIG_PATH
    from minictr.runtime import rootfs as rootfs_mod
    from minictr.runtime import syscalls as sc

    if compression not in SQUASH_COMPRESSORS:
        raise UsageError(f"--compression {compression!r} is not one minictr writes",
                         hint="one of " + ", ".join(SQUASH_COMPRESSORS))
    tool = shutil.which("mksquashfs")
    if tool is None:
        raise ImageError("export needs mksquashfs", hint="apt-get install squashfs-tools")
    image = _resolve_image(paths, ref, "never", None, warn)
    store = _store(paths)
    lowerdirs = tuple(reversed([store.layer_dir(layer.chain_id) for layer in image.layers]))
    output = os.path.abspath(output)
    out_dir = os.path.dirname(output)
    if not os.path.isdir(out_dir):
        raise UsageError(f"-o {output}: {out_dir} is not a directory")
    remove_stale_partials(output)
    work = tempfile.mkdtemp(prefix="minictr-export-")
    partial, fd = _claim_partial(output)
    try:
        config_file = os.path.join(work, "image.json")
        with open(config_file, "w") as f:
            json.dump(image.config, f)
        os.chmod(work, 0o755)
        mountpoint = os.path.join(work, "rootfs")
        os.mkdir(mountpoint)
        top = os.path.dirname(CONFIG_PATH)
        argv = [tool, mountpoint, partial, "-noappend", "-comp", compression, "-quiet",
                "-no-progress", "-p", f"{top} d 755 0 0",
                "-p", f"{CONFIG_PATH} f 444 0 0 cat {config_file}"]
        code = rootfs_mod.run_over_layers(sc.Syscalls(), lowerdirs, mountpoint, argv,
                                          rootless=paths.rootless, explain=explain)
        if code != 0:
            raise ImageError(f"mksquashfs exited {code} writing {output}",
                             hint="see its messages above; is there room in "
                                  f"{out_dir}?")
        os.fchmod(fd, 0o644)
        os.fsync(fd)                        # the data first, then the name: never a short FILE
        os.rename(partial, output)
        partial = None
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if partial is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
        os.close(fd)                # the lock goes after the name: see remove_stale_partials
    return output


PARTIAL_SUFFIX = ".partial"


def _claim_partial(output: str) -> tuple[str, int]:
    """The temporary beside ``output`` that mksquashfs writes and export renames over it: a new
    file (O_EXCL, an unguessable name, so no planted link is followed) whose flock(2) this
    process holds until the name is gone. A SIGKILL leaves the hidden name, never ``output``;
    the lock dies with the process, which is how the next export knows the file is stale."""
    import contextlib
    import errno
    import fcntl

    directory, base = os.path.split(output)
    while True:
        name = os.path.join(directory, f".{base}.{os.getpid()}.{os.urandom(8).hex()}"
                                       f"{PARTIAL_SUFFIX}")
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as err:
                # A filesystem without flock (Lustre's noflock, NFS without lockd): no export
                # can lock, so none removes another's temporary either; write unlocked.
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS,
                                     errno.EINVAL):
                    raise
            # Another export's remove_stale_partials may have taken it between open and flock
            # (it was not locked yet): then it is unlinked, and a new name is tried.
            if os.lstat(name).st_ino == os.fstat(fd).st_ino:
                return name, fd
        except FileNotFoundError:
            pass
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
            os.close(fd)
            raise
        os.close(fd)


def _is_partial_of(name: str, base: str) -> bool:
    """``name`` is ".BASE.PID.HEX16.partial", as _claim_partial names a temporary."""
    head = f".{base}."
    if not (name.startswith(head) and name.endswith(PARTIAL_SUFFIX)):
        return False
    pid, _, tag = name[len(head):-len(PARTIAL_SUFFIX)].partition(".")
    return pid.isdigit() and len(tag) == 16 and all(c in "0123456789abcdef" for c in tag)


def remove_stale_partials(output: str) -> int:
    """Remove the temporaries a killed export to ``output`` left beside it: ours (same owner),
    regular files, and unlocked, so no running export's (on any host that shares the
    directory's locks); a lock that cannot be taken at all keeps the file. Returns how many."""
    import fcntl
    import stat

    directory, base = os.path.split(output)
    try:
        names = [n for n in os.listdir(directory) if _is_partial_of(n, base)]
    except OSError:
        return 0
    removed = 0
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.lstat(path).st_ino == st.st_ino:      # still the name of what we locked
                os.unlink(path)
                removed += 1
        except OSError:
            continue                                     # locked (a live export) or gone
        finally:
            os.close(fd)
    return removed


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

    return manifests.parse_platform(text)


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
    from minictr.image import manifests

    have = _platform_of(image)
    return have is None or manifests.platform_matches(have, want)


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
    from minictr.image import manifests

    have = _platform_of(image)
    host = manifests.host_platform()
    shown = dict(host, variant="") if host["architecture"] == "amd64" else host  # as docker
    if requested or have is None or warn is None or manifests.platform_matches(have, host):
        return
    warn(f"The requested image's platform ({_platform_name(have)}) does not match the detected "
         f"host platform ({_platform_name(shown)}) and no specific platform was requested")


# ---------------------------------------------------------------- plan


def plan(paths: Paths, opts, *, gpu_roots=None, pull_policy: str = "never", progress=None,
         container_id: str | None = None, files_dir: str | None = None,
         warn: Explain = None, gpus: bool = True) -> Plan:
    """Image config + options (+ GPU, CDI and device edits) → the OCI runtime spec to execute.

    ``files_dir``: where the spec says the files of ``Plan.files`` are (default: the
    container's state directory, where `run` has create write them). Nothing is written here.
    ``gpus=False``: the plan before its GPU request is resolved (``with_gpus``), which is what
    the plan cache keeps: the request depends on the options, its resolution on the host's
    driver of the moment.
    """
    from minictr import host
    from minictr.config import INIT_BINARY
    from minictr.runtime import state as state_mod
    from minictr.runtime.rootfs import RootfsPlan
    from minictr.spec import builder, defaults, gpu_request
    from minictr.spec.edits import apply_edits

    container_id = container_id or state_mod.new_id()
    name = opts.name or state_mod.default_name(container_id)
    files_dir = files_dir or os.path.join(paths.state, container_id)
    held_caps, nofile_limit, nofile_why = host.launcher_limits(paths.rootless)
    notes: list[str] = []
    if nofile_limit < defaults.DEFAULT_NOFILE and not any(
            u.strip().lower().startswith("nofile=") for u in opts.ulimits):
        notes.append(f"RLIMIT_NOFILE {nofile_limit}:{nofile_limit}, not podman's "
                     f"{defaults.DEFAULT_NOFILE}: {nofile_why}")
    container_dir = os.path.join(paths.containers, container_id)
    target = os.path.join(paths.state, container_id, "rootfs")
    scratch = os.path.join(paths.state, container_id, "rw")
    from minictr.image.singlefile import check_missing_file, is_file_image

    if is_file_image(opts.image):
        # A single-file image is mounted as it is: the writable layer is always a tmpfs.
        from minictr.image.singlefile import open_image
        from minictr.runtime.rootfs import SquashfsSource

        image = open_image(opts.image)
        source = SquashfsSource(path=image.path, offset=image.offset,
                                mountpoint=os.path.join(paths.state, container_id, "image"))
        rootfs = RootfsPlan(lowerdirs=(source.mountpoint,), upperdir=None, workdir=None,
                            target=target, rootless=paths.rootless, volatile=True,
                            driver=_overlay_driver(), scratch=scratch, squashfs=source)
        image_name, chain_ids, read_file = image.path, (), image.read_file
    else:
        check_missing_file(opts.image)
        image = _resolve_image(paths, opts.image, pull_policy, progress, warn, opts.platform,
                               opts.tls_verify)
        _warn_platform(image, opts.platform, warn)
        store = _store(paths)
        lowerdirs = [store.layer_dir(layer.chain_id) for layer in image.layers]
        rootfs = RootfsPlan(
            lowerdirs=tuple(reversed(lowerdirs)),   # overlayfs: topmost layer first
            upperdir=None if opts.read_only else os.path.join(container_dir, "upper"),
            workdir=None if opts.read_only else os.path.join(container_dir, "work"),
            target=target, rootless=paths.rootless, volatile=opts.rm, driver=_overlay_driver(),
            scratch=scratch if opts.read_only else None)
        image_name = image.name
        chain_ids = tuple(layer.chain_id for layer in image.layers)
        read_file = lambda path: store.read_image_file(image, path)  # noqa: E731
    # /etc/resolv.conf, hosts and hostname: files of the container's own directory, which
    # create writes (Plan.files), bind-mounted by the spec
    network, network_path, dns_driver, joined_hardened = _network_for(paths, opts)
    etc, etc_notes = host.etc_files(opts, os.uname().nodename if opts.hpc else
                                    builder.container_hostname(opts.hostname, container_id),
                                    dns_driver)
    notes += etc_notes
    files: tuple = tuple((os.path.basename(dest), data) for dest, data in etc.items())
    etc_sources = {dest: os.path.join(files_dir, os.path.basename(dest)) for dest in etc}
    uid_mappings = gid_mappings = None
    if paths.rootless and opts.userns != "host":
        from minictr.runtime.idmap import rootless_mappings

        # job-native: only your own ids, mapped to themselves (no /etc/subuid, no helpers)
        uid_mappings, gid_mappings = rootless_mappings(
            "keep-id" if opts.hpc else opts.userns, have_helpers=False if opts.hpc else None)
    spec = builder.build_spec(
        image.config, opts, rootless=paths.rootless, container_id=container_id,
        rootfs_path=rootfs.target, read_file=read_file,
        uid_mappings=uid_mappings, gid_mappings=gid_mappings, launcher_caps=held_caps,
        nofile_limit=nofile_limit, etc_files=etc_sources,
        init_path=INIT_BINARY if os.path.exists(INIT_BINARY) else None,
        network_path=network_path, joined_hardened=joined_hardened)
    keep_fds: tuple = ()
    if opts.hpc:
        job_edits, job_files, keep_fds = _job_native_edits(spec, read_file, files_dir, warn=warn)
        files += job_files
        for edits in job_edits:
            spec = apply_edits(spec, edits)
    for edits in _edits_for(opts, gpu_roots):
        spec = apply_edits(spec, edits)
    spec = _gpu_request(spec, opts, image.config)
    # Engine data rides in the annotations: the runtime executes the spec and knows no images.
    spec["annotations"] = {**spec.get("annotations", {}), ANNOTATION_NAME: name,
                           ANNOTATION_IMAGE: image_name, ANNOTATION_LAYERS: ",".join(chain_ids)}
    p = Plan(spec=spec, rootfs=rootfs, container_id=container_id, name=name,
             image=image_name, layers=chain_ids, keep_fds=keep_fds, files=files,
             notes=tuple(notes), network=network, dns_driver=dns_driver,
             gpu_request=gpu_request.find(spec) is not None)
    if not gpus:
        return p
    return with_gpus(paths, p, read_file, gpu_roots=gpu_roots, files_dir=files_dir, warn=warn)


def with_gpus(paths: Paths, p: Plan, read_file=None, *, gpu_roots, files_dir: str,
              warn: Explain = None) -> Plan:
    """``p`` with its spec's GPU request resolved against the host's driver now, through the
    one GPU request path (gpu/resolve.py): device nodes, driver files and the loader cache (a
    file of ``files_dir``). ``read_file`` reads the image's files (default: through the plan's
    layers, as the store does)."""
    if not p.gpu_request:
        return p
    from minictr import cachefiles
    from minictr.spec import gpu_request

    inputs = gpu_request.find(p.spec)
    cache_dir = cachefiles.cache_dir(paths.state, "gpu")
    memo_key = None
    if read_file is None and "SLURM_JOB_ID" not in os.environ:
        # the same request, image, settings and driver as an earlier run: its resolution
        from minictr.gpu import memo

        memo_key = memo.key(inputs, gpu_roots, p.rootfs.lowerdirs)
        replay = memo.load(cache_dir, memo_key, files_dir) if memo_key else None
        if replay is not None:
            for text in replay.warnings:
                if warn:
                    warn(text)
            spec = gpu_request.resolved_spec(p.spec, inputs, replay.unset_env, replay.edits)
            note = (f"GPU request: as resolved by an earlier run ({replay.name}: the same "
                    "request, image, settings and code, and every driver file unchanged)")
            return p._replace(spec=spec, files=p.files + replay.files,
                              notes=p.notes + (note,), gpu_request=False,
                              gpu_witnesses=tuple(replay.witnesses),
                              gpu_warnings=tuple(replay.warnings))
    if read_file is None:
        from minictr.image import merged

        layers = list(p.rootfs.lowerdirs)             # topmost first, as overlayfs stacks them
        read_file = lambda path: merged.read_file(layers, path)  # noqa: E731
    from minictr.gpu import resolve

    said: list[str] = []

    def heard(text: str) -> None:
        said.append(text)
        if warn:
            warn(text)
    settings = gpu_settings(gpu_roots)
    resolved = resolve.resolve(
        p.spec, inputs, read_file=read_file, files_dir=files_dir, settings=settings,
        warn=heard, allocation=_slurm_task_allocation, cache_dir=cache_dir)
    seen = None
    if memo_key is not None:
        seen = memo.store(cache_dir, memo_key, resolved, files_dir, said, settings.roots)
    return p._replace(spec=resolved.spec, files=p.files + tuple(resolved.files),
                      notes=p.notes + tuple(resolved.notes), gpu_request=False,
                      gpu_witnesses=None if seen is None else tuple(seen),
                      gpu_warnings=tuple(said))


def with_mount_point_layer(paths: Paths, p: Plan, explain: Explain = None) -> Plan:
    """``p`` with the mount points of its mounts that the image lacks in a lower layer made
    once (mountpoints.py), so the start creates none in the writable layer; ``p`` itself when
    there is none to add, or its overlay could not take one more layer."""
    r = p.rootfs
    if r is None or r.squashfs is not None or r.driver != "overlay" or not r.lowerdirs:
        return p
    from minictr import mountpoints

    layer = mountpoints.layer_for(paths.state, r.lowerdirs,
                                  mountpoints.mount_destinations(p.spec), explain)
    if layer is None:
        return p
    rootfs = r._replace(lowerdirs=(layer,) + r.lowerdirs)
    try:
        if len(rootfs.overlay_data()) > mountpoints.MAX_OVERLAY_DATA:
            return p
    except ValueError:
        return p
    return p._replace(rootfs=rootfs)


def _job_native_edits(spec: dict, read_file, files_dir: str, *, warn: Explain):
    """Job-native mode's edits (spec/native.py): your passwd and group entries, bound over the
    image's (their content is returned as Plan.files, written at create like the GPU loader
    cache: nothing is written while planning); PMIx's MCA names and rendezvous directory;
    Slurm's PMI fd, kept by number."""
    import grp
    import pwd

    from minictr.hpc import slurm
    from minictr.spec import native
    from minictr.spec.edits import ContainerEdits

    user = spec["process"]["user"]
    uid, gid = user["uid"], user["gid"]
    env = dict(e.split("=", 1) for e in spec["process"]["env"] if "=" in e)
    try:
        entry = pwd.getpwuid(uid)
        name, gecos, shell = entry.pw_name, entry.pw_gecos, entry.pw_shell or "/bin/sh"
    except KeyError:
        name, gecos, shell = env.get("USER") or f"user{uid}", "", "/bin/sh"
    home = env.get("HOME") or "/"
    groups = []
    for g in [gid, *user.get("additionalGids", ())]:
        try:
            groups.append((grp.getgrgid(g).gr_name, g))
        except KeyError:
            groups.append((f"group{g}", g))
    files = (("passwd", native.passwd_with(read_file("/etc/passwd"), name, uid, gid, gecos,
                                           home, shell)),
             ("group", native.group_with(read_file("/etc/group"), groups, name)))
    mounts = tuple({"destination": f"/etc/{base}", "type": "bind",
                    "source": os.path.join(files_dir, base),
                    "options": ["bind", "ro", "nosuid", "nodev"]} for base, _ in files)
    edits = [ContainerEdits(mounts=mounts)]
    pmix = slurm.pmix_edits(os.environ, os.path.isdir)
    if pmix is not None:
        edits.append(pmix)
    keep: tuple = ()
    fd = slurm.pmi_fd(os.environ, _fd_open)
    if fd is not None:
        keep = (fd,)
    elif "PMI_FD" in os.environ and warn:
        warn(f"PMI_FD={os.environ['PMI_FD']} is not open here: PMI-2 in the container will "
             "fail to reach Slurm")
    return edits, files, keep


def _fd_open(fd: int) -> bool:
    import fcntl

    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
        return True
    except OSError:
        return False


def _network_for(paths: Paths, opts) -> tuple:
    """(runtime.network.NetworkPlan or None, the namespace path to join or None, the DNS
    driver, whether a joined container's network was hardened) for --network. Only a bridge
    imports the network code (and pyroute2 with it)."""
    from minictr.spec import network as netspec

    network = netspec.parse_network(opts.network)
    if network.kind == "bridge":
        from minictr.runtime import network as runtime_network

        ports = tuple(p.to_dict() for p in netspec.parse_publish(opts.publish))
        plan_ = runtime_network.plan_bridge(ports, rootless=paths.rootless)
        return plan_, None, plan_.driver, False
    if network.kind == "container":
        return None, *_joined_network(paths, network.target)
    return None, None, network.kind, False


def _joined_network(paths: Paths, name: str) -> tuple[str, str, bool]:
    """--network container:NAME: the namespace of NAME's first process, its driver, and whether
    NAME runs with the default network's hardening (on the host's network without CAP_NET_RAW,
    abstract sockets scoped): a container that joins it gets the same, not more."""
    from minictr.containers import find_container
    from minictr.runtime import lifecycle
    from minictr.spec import builder

    root = state_root(paths)
    cid = find_container(root, name)
    st = root.read(cid)
    if lifecycle.status(root, st) not in ("running", "created", "paused"):
        raise UsageError(f"--network container:{name}: the container is not running",
                         hint="its network namespace lives only as long as its process")
    config = root.read_config(cid)
    kinds = {ns.get("type"): ns for ns in config.get("linux", {}).get("namespaces", [])}
    hardened = builder.ANNOTATION_LANDLOCK_SCOPE in (config.get("annotations") or {})
    if "network" not in kinds:
        driver = "host"
    elif st.get("network"):
        driver = st["network"].get("driver", "bridge")
    else:
        driver = "ns" if kinds["network"].get("path") else "none"
    return f"/proc/{st['pid']}/ns/net", driver, hardened

def _overlay_driver() -> str:
    """MINICTR_OVERLAY=fuse-overlayfs picks the user-space overlay (kernels or filesystems where
    the kernel's refuses an unprivileged mount); the default is the kernel's overlayfs, with
    fuse-overlayfs as the fallback when that mount fails rootless."""
    driver = os.environ.get("MINICTR_OVERLAY", "overlay")
    if driver not in ("overlay", "fuse-overlayfs"):
        raise UsageError(f"MINICTR_OVERLAY={driver!r} is not a known overlay driver",
                         hint="use overlay (default) or fuse-overlayfs")
    return driver


def _edits_for(opts, gpu_roots):
    """Container edits from --device: host nodes, and CDI names resolved by minictr as podman
    resolves them (the spec dirs are the [nvidia] settings' cdi-spec-dirs)."""
    from minictr.spec import devices

    host_devices = [d for d in opts.devices if d.startswith("/")]
    cdi_names = [d for d in opts.devices if not d.startswith("/")]
    if host_devices:
        yield devices.edits_for_host_devices(host_devices)
    if cdi_names:
        from minictr.gpu import cdi

        yield cdi.edits_for_names(cdi_names, gpu_settings(gpu_roots).cdi_spec_dirs)


def _gpu_request(spec: dict, opts, image_config: dict) -> dict:
    """Put --gpus (and --gpu-memory) into the spec as engines would: NVIDIA_VISIBLE_DEVICES
    (and NVIDIA_DRIVER_CAPABILITIES) in process.env, and in annotations what no engine variable
    says (docker's count=N, --gpu-memory, and who asked). The request is read back from the
    spec by gpu/resolve.py, as a bundle's is."""
    from minictr.spec import gpu_request

    if opts.gpus is not None:
        from minictr.gpu.request import parse_gpus_flag

        devices, count, wanted = parse_gpus_flag(opts.gpus)
        return gpu_request.with_request(spec, visible=",".join(devices), capabilities=wanted,
                                        count=count, memory=opts.gpu_memory)
    if opts.gpu_memory:
        spec = dict(spec, annotations={**spec.get("annotations", {}),
                                       gpu_request.ANNOTATION_MEMORY: opts.gpu_memory})
    return gpu_request.mark_source(spec, (image_config.get("config") or {}).get("Env") or ())


def _slurm_task_allocation():
    """The GPUs of the Slurm job step this `minictr run` is a task of (hpc/slurm.py), or None
    outside a job."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    from minictr.hpc import slurm

    return slurm.task_allocation(dict(os.environ))


def gpu_settings(raw):
    """The [nvidia] settings, the three --nvidia-*-root values (a tuple from the CLI) winning."""
    from minictr.gpu.request import GpuSettings, load_settings

    if isinstance(raw, GpuSettings):
        return raw
    return load_settings(tuple(raw or (None, None, None))[:3])


def write_bundle(spec: dict, bundle: str, files=()) -> None:
    """Write an OCI bundle's config.json and the files its mounts name in the bundle (the GPU
    loader cache, when the plan was made with ``files_dir=bundle``). root.path stays absolute:
    the rootfs is prepared by `minictr run`; crun/runc need an existing directory there."""
    import json

    from minictr.image.store import atomic_write

    os.makedirs(bundle, exist_ok=True)
    for name, data in files:
        atomic_write(os.path.join(bundle, name), data)
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
    p = None
    try:
        root, p, kernel = _prepare(paths, opts, gpu_roots=gpu_roots, dry_run=dry_run,
                                   pull_policy=pull_policy, progress=progress, warn=warn,
                                   explain=explain)
        return _execute(paths, root, p, opts, kernel=kernel, explain=explain, warn=warn,
                        stdin=0 if opts.interactive else None, out=1, cidfile=cidfile)
    except BaseException:
        _drop_cidfile(cidfile)
        if p is not None and not dry_run:
            # a Ctrl-C after the name was claimed, before _execute's cleanup could run
            _release_name_of_unmade(root, p.container_id)
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
    p = None
    forked: list[int] = []
    try:
        root, p, _ = _prepare(paths, opts, gpu_roots=gpu_roots, dry_run=False,
                              pull_policy=pull_policy, progress=progress, warn=warn,
                              explain=explain)
        os.makedirs(os.path.join(paths.containers, p.container_id), mode=0o700, exist_ok=True)
        monitor.detach(lambda stdio, out, on_started: _execute(
            paths, root, p, opts, kernel=None, explain=explain, warn=warn, stdio=stdio,
            stdin=None, out=out, on_started=on_started, cidfile=cidfile),
            log_path=log_path(paths, p.container_id), interactive=opts.interactive,
            forked=forked)
    except BaseException:
        _drop_cidfile(cidfile)
        if p is not None and not forked:
            # stopped (a Ctrl-C) between the name claim and the monitor: nothing else would
            # remove the name or the container's empty directory (_prepare covers the rest)
            _release_name_of_unmade(root, p.container_id)
            _remove_writable_layer(paths, p.container_id, {})
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
    # planning writes nothing: the files the spec names in the container's state directory
    # (Plan.files) are written by create, a dry run's into its own throwaway state root; a
    # plan made for cacheable options is kept in STATE/.cache/plan (plancache.py), and the
    # next run with the same image, options and host facts reuses it
    try:
        p, cached = _cached_plan(paths, opts, container_id, pull_policy, dry_run, gpu_roots,
                                 warn)
        if p is None:
            import gc

            gc.enable()                  # cli.entry turned it off for a warm start only
            made = plan(paths, opts, gpu_roots=gpu_roots, pull_policy=pull_policy,
                        progress=progress, container_id=container_id, warn=warn,
                        files_dir=root.dir(container_id), gpus=cached is None)
            # the driver of the moment (its discovery has its own cache, checked against the
            # host); a resolution that may be replayed is kept with the plan, with the host
            # answers it rests on, else the plan is kept with its request unresolved
            p = with_gpus(paths, made, gpu_roots=gpu_roots, files_dir=root.dir(container_id),
                          warn=warn)
            if cached is not None and not dry_run:
                _keep_plan(paths, opts, cached, made, p, gpu_roots)
        else:
            # a cached request resolved at every run (CDI names, a Slurm job's allocation)
            p = with_gpus(paths, p, gpu_roots=gpu_roots, files_dir=root.dir(container_id),
                          warn=warn)
        # /etc/hosts, resolv.conf, hostname, /proc, /dev and /sys where an image lacks them, a
        # GPU's files, volumes: made once, not per run (a cache, as discovery's: a dry run may
        # make it too, and then shows the same steps)
        p = with_mount_point_layer(paths, p, explain)
        if not dry_run:
            root.claim_name(p.name, container_id)
        if explain and cached is not None and cached[1]:
            # a dry run makes its plan itself (its files live in its own state root), but
            # says what the real run would do
            explain(f"plan: cached (STATE/.cache/plan/{cached[0][:12]}...: the same image, "
                    "options, host facts and minictr code), so no image lookup and no spec "
                    "building; this container's id and its /etc files are its own"
                    + ("; its GPU request as resolved then, every driver file it rests on "
                       "unchanged" if cached[2] else ""))
        for note in p.notes:
            if explain:
                explain(note)
        return root, p, _dry_kernel(p, os.path.join(root.path, "image")) if dry_run else None
    except BaseException:
        if dry_run:
            import shutil

            shutil.rmtree(root.path, ignore_errors=True)
        else:
            # a Ctrl-C during or right after the claim: the name goes with the run
            _release_name_of_unmade(root, container_id)
        raise


def _release_name_of_unmade(root, container_id: str) -> None:
    """A run stopped before its container had a state entry leaves no name (the link and its
    .claim file): nothing else would remove them but `gc`, and until then the name points at
    no container. A container with an entry keeps its name: its cleanup, or `rm`, owns it."""
    if not os.path.isdir(root.dir(container_id)):
        root.release_names(container_id)


def _cached_plan(paths: Paths, opts, container_id: str, pull_policy: str, dry_run: bool,
                 gpu_roots=None, warn: Explain = None):
    """(the cached plan made this container's, or None; (key, hit, GPU request resolved) or
    None when the options are not cacheable). The plan's /etc files are made now, from the
    host's files. A plan kept with its GPU request resolved is a hit only while the host
    answers as it did (gpu/witnesses.py): else the plan is made again (a new driver, a
    library replaced, an MPS daemon started)."""
    from minictr import plancache

    if not plancache.cacheable(opts, pull_policy):
        return None, None
    key = plancache.key(paths, opts, gpu_roots)
    if key is None:
        return None, None
    p = plancache.load(paths, key, container_id)
    if p is None:
        return None, (key, False, False)
    if dry_run:
        return None, (key, True, p.gpu_witnesses is not None)
    if p.gpu_witnesses is not None:
        from minictr.gpu.witnesses import still_holds

        if not still_holds(p.gpu_witnesses):
            return None, (key, False, False)
        for text in p.gpu_warnings:     # a warning is not lost because the answer was kept
            if warn:
                warn(text)
    files, notes = _etc_files_for(p, opts)
    return p._replace(files=files + p.files, notes=p.notes + tuple(notes)), \
        (key, True, p.gpu_witnesses is not None)


def _etc_files_for(p: Plan, opts) -> tuple[tuple, list[str]]:
    """Plan.files for the container's /etc/resolv.conf, hosts and hostname, and their notes."""
    from minictr import host

    etc, notes = host.etc_files(opts, p.spec["hostname"], p.dns_driver)
    return tuple((os.path.basename(dest), data) for dest, data in etc.items()), notes


def _keep_plan(paths: Paths, opts, cached: tuple, made: Plan, p: Plan | None = None,
               gpu_roots=None) -> None:
    """Cache a plan just made (``made``; ``p``: the same with its GPU request resolved), if
    what it was made from did not change meanwhile (a pull, a tag) and its /etc files are the
    only files it has. A resolution that may be replayed (``p.gpu_witnesses``) is kept with
    it, with its files (the loader cache) and notes; else the request is kept unresolved."""
    from minictr import plancache

    key = cached[0]
    if plancache.key(paths, opts, gpu_roots) != key:
        return
    files, etc_notes = _etc_files_for(made, opts)
    n = len(made.notes) - len(etc_notes)
    if n < 0 or files != made.files or made.notes[n:] != tuple(etc_notes):
        return
    if p is not None and p is not made and p.gpu_witnesses is not None and \
            p.files[:len(files)] == files and p.notes[:len(made.notes)] == made.notes:
        plancache.store(paths, key, p._replace(files=p.files[len(files):]),
                        made.notes[:n] + p.notes[len(made.notes):])
        return
    plancache.store(paths, key, made._replace(files=()), made.notes[:n])


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
    created = None
    userns_fd = None

    def spawned(pid: int) -> None:
        nonlocal userns_fd
        sup.attach(pid)
        if opts.rm and not dry_run:
            userns_fd = _hold_user_namespace(paths, p.spec, pid)

    sup = Supervisor(None, explain)
    with sup:
        try:
            try:
                created = lifecycle.create(
                    root, container_id, p.spec, bundle=root.dir(container_id), rootfs=p.rootfs,
                    attached=True, stdin_null=not (opts.interactive or opts.tty), stdio=stdio,
                    preserve_fds=opts.preserve_fds, keep_fds=p.keep_fds,
                    rootless=paths.rootless, files=p.files,
                    on_spawned=spawned, network=p.network, kernel=kernel, explain=explain)
                if cidfile and not dry_run:
                    with open(cidfile, "w") as f:
                        f.write(container_id)
                lifecycle.start(root, container_id, kernel=kernel, explain=explain,
                                spec=p.spec)
                if dry_run:
                    return 0
                spawn.wait_for_exec(created.exec_pipe, p.spec["process"]["args"][0])
            except (MinictrError, OSError):
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
            # the container is gone (or never ran): a Ctrl-C now is held until the cleanup is
            # over, a second one interrupts it (Supervisor.hold)
            sup.hold(lambda: warn and warn("cleaning up after the container (Ctrl-C again "
                                           "to stop at once)"))
            if dry_run:
                import shutil

                shutil.rmtree(root.path, ignore_errors=True)
                shutil.rmtree(os.path.join(paths.containers, container_id), ignore_errors=True)
            else:
                try:
                    _after_exit(paths, root, container_id, p, code=code, remove=opts.rm,
                                warn=warn, network=created.network if created is not None
                                else None, userns_fd=userns_fd)
                finally:
                    if userns_fd is not None:
                        os.close(userns_fd)


def _hold_user_namespace(paths: Paths, spec: dict, pid: int) -> int | None:
    """Rootless with subordinate ids, an fd of the container's user namespace, held until its
    writable layer is removed: files a non-root user inside left there belong to subordinate
    ids, and cleanup.remove_tree joins this namespace to remove them instead of making a new
    one and mapping the ids again with newuidmap/newgidmap. Opened right after the clone:
    once the process has taken the spec's ids it is no longer dumpable, and /proc/PID/ns is
    closed to us (ptrace access mode, proc(5))."""
    if not paths.rootless or len(spec.get("linux", {}).get("uidMappings") or []) <= 1:
        return None
    try:
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None                 # remove_tree maps the ids again, as without it


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


def _dry_kernel(p: Plan, scratch: str):
    """The recording face, told where the container's paths would come from: bind sources,
    the host's /proc and /sys, and the image's merged layers."""
    from minictr.image.merged import MergedTree
    from minictr.runtime.syscalls import RecordingSyscalls

    binds = {m["destination"]: m["source"] for m in p.spec.get("mounts", ())
             if m.get("type") == "bind" or "bind" in m.get("options", ())
             or "rbind" in m.get("options", ())}
    if p.rootfs.squashfs is not None:
        from minictr.image.singlefile import placeholder_lookup

        source = p.rootfs.squashfs
        lookup = placeholder_lookup(source.path, source.offset, scratch)
    else:
        tree = MergedTree(list(p.rootfs.lowerdirs))      # open for the dry run's life

        def lookup(path: str) -> str | None:
            """A container path's file in the image, as a host path through its layer's fd."""
            hit = tree.find(path.lstrip("/"))
            return None if hit is None else f"/proc/self/fd/{hit[1][0]}/{hit[1][1]}"

    kernel = RecordingSyscalls(container_root=p.spec["root"]["path"], binds=binds,
                               lookup=lookup)
    kernel.mounts = p.spec.get("mounts", [])
    return kernel


def _after_exit(paths: Paths, root, container_id: str, p: Plan, *, code: int | None,
                remove: bool, warn: Explain, network=None, userns_fd: int | None = None) -> None:
    """The container has stopped (or never started): record its exit status, report an OOM
    kill, free its network (address, ports, helper) and its cgroup, and with --rm remove it and
    its writable layer. A container whose create failed is gone already: its writable layer
    and name go too."""
    from minictr.runtime import lifecycle
    from minictr.runtime import state as state_mod

    try:
        st = root.read(container_id)
    except MinictrError:
        # create failed (or was interrupted) and removed what it made: the writable layer is
        # ours, and goes too, --rm or not
        _remove_writable_layer(paths, container_id, p.spec.get("linux", {}))
        root.release_names(container_id)
        return
    if code is not None and not remove:
        try:
            st = root.update(container_id, exit_code=code, finished=state_mod.timestamp())
        except state_mod.NoSuchContainer:
            return                      # `rm -f` removed it meanwhile, and all it had
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
        _remove_writable_layer(paths, container_id, p.spec.get("linux", {}), userns_fd)
    else:
        lifecycle.destroy_cgroup(st)
        root.update(container_id, cgroup_paths=[], cgroup_v2=None)


def _remove_writable_layer(paths: Paths, container_id: str, linux: dict,
                           userns_fd: int | None = None) -> None:
    from minictr.runtime import cleanup

    cleanup.remove_tree(os.path.join(paths.containers, container_id), paths.rootless, linux,
                        userns_fd=userns_fd)


def _states(paths: Paths, warn: Explain = None) -> list[dict]:
    from minictr.runtime import lifecycle
    from minictr.runtime.state import StateRoot

    if not os.path.isdir(paths.state):
        return []
    return lifecycle.list_states(StateRoot(paths.state), warn=warn)


# ---------------------------------------------------------------- GPUs


def gpus(roots) -> dict:
    from minictr.gpu import discover

    return discover.discover(gpu_settings(roots).roots).to_dict()


def cdi_generate(roots, fmt: str = "yaml") -> str:
    from minictr.gpu import cdi, discover

    return cdi.generate(discover.discover(gpu_settings(roots).roots), fmt=fmt)


__all__ = ["Plan", "MinictrError", "load", "images", "inspect", "rmi", "gc", "pull", "plan",
           "run", "run_detached", "gpus", "cdi_generate"]
