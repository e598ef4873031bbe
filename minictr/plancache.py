"""The plan cache: a repeated `minictr run` of the same image with the same options reuses the
plan (the OCI spec, the rootfs plan, the notes) made the first time, instead of looking up the
image, reading its config and building the spec again (issue 15, "a cached plan keyed on the
image's manifest digest and the options"). A hit imports none of the image store's or the spec
builder's modules.

What a plan depends on, and so what the key holds (``key_material``):

- the options (every field of RunOptions) and the paths (store, state, rootless);
- the image: the store's tag index and image records, by their stat signature (a pull, load,
  tag or rmi rewrites ``images/tags.json`` by rename; an image record is named by its
  manifest digest and never rewritten);
- the host facts the plan reads: the launcher's capabilities and RLIMIT_NOFILE ceiling, its
  ids, the rootless id maps (/etc/subuid, /etc/subgid, the helpers), the kernel (seccomp rules
  depend on its version and architecture), the host name, MINICTR_OVERLAY, SLURM_JOB_ID;
- minictr's own code: the size and mtime of every file of the package (mcinit among them, so
  whether minictr's init is installed too);
- what a GPU resolution reads besides the spec and the driver's files (below).

Only plans that read nothing else are cached (``cacheable``): no -v, --mount, --env-file,
-e KEY without a value, --device, --security-opt, -p, --network bridge or container:NAME,
--platform, --hpc, single-file images or transports, ``--pull always``. The /etc files
(resolv.conf, hosts, hostname) are made afresh on every run, from the host's files of the
moment, so they are not in the entry. A GPU request's resolution (``--gpus``, ``-e
NVIDIA_VISIBLE_DEVICES``, a CUDA image's own) is in it when it may be replayed (gpu/memo.py's
conditions): the resolved spec, its loader cache (``files``), its warnings, and the host
answers it rests on (``gpu_witnesses``: the driver's files, the MPS control socket), which
api._cached_plan checks at every hit (a changed one is a miss: the plan is made and resolved
again); for it the key also holds the driver-root flags and variables, CUDA_MPS_PIPE_DIRECTORY,
MINICTR_CONFIG and the settings files. A request resolved at every run (CDI names, a Slurm
job's allocation) is kept unresolved (``gpu_request``), and api.with_gpus resolves it at every
hit against the driver of the moment (its discovery is cached apart, gpu/driver_cache.py,
checked against the host's files), reading the image's files through the plan's layers.

A plan holds its container's id (paths, hostname, cgroup, annotations); an entry records the
id it was made with, and a hit replaces that id (and its 12-character prefix, the default
hostname and name) with the new container's. Ids are 256 random bits: nothing else in a plan
holds them.

Entries live in ``STATE/.cache/plan`` and are read through ``cachefiles``: the directory must be
the caller's and writable by no one else, an entry a regular file of the caller's (so one user's
cache never steers another's run, nor root's). An entry that does not parse, holds another
key, or has fields of the wrong shape is ignored: the plan is made again. A cache that cannot
be written costs only time.
"""
from __future__ import annotations

import binascii
import os

from minictr import cachefiles, jsonio
from minictr.cachefiles import key_of

FORMAT = 3
GPU_VARIABLES = ("MINICTR_NVIDIA_DRIVER_ROOT", "MINICTR_NVIDIA_DEV_ROOT",
                 "MINICTR_NVIDIA_PROC_ROOT", "CUDA_MPS_PIPE_DIRECTORY", "MINICTR_CONFIG")
MAX_ENTRIES = 64                        # past this, the oldest entries go when one is written
PACKAGE = os.path.dirname(os.path.abspath(__file__))
# RunOptions fields a cached plan cannot hold: each reads a host file, a device, the host's
# environment, the network's state or a registry while planning.
UNCACHEABLE_OPTIONS = ("volumes", "mounts", "env_files", "devices", "security_opts", "publish",
                       "platform", "hpc", "preserve_fds")


def cacheable(opts, pull_policy: str) -> bool:
    """Whether a plan for ``opts`` reads only what the key holds."""
    if pull_policy == "always" or any(getattr(opts, f) for f in UNCACHEABLE_OPTIONS):
        return False
    if opts.network not in (None, "host", "none"):
        return False
    if any("=" not in entry for entry in opts.env):      # -e KEY: the host's value
        return False
    ref = opts.image
    from minictr.image.reference import is_transport
    from minictr.image.singlefile import SUFFIXES

    return not (is_transport(ref) or ref.startswith(("/", ".")) or ref.endswith(SUFFIXES)
                or os.path.lexists(ref))


def _signature(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def code_signature(top: str = PACKAGE) -> list:
    """(path, size, mtime) of every source, extension and program file of the package."""
    out, dirs = [], [top]
    while dirs:
        directory = dirs.pop()
        with os.scandir(directory) as it:
            for entry in sorted(it, key=lambda e: e.name):
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        dirs.append(entry.path)
                elif entry.name.endswith((".py", ".so")) or entry.name == "mcinit":
                    st = entry.stat()
                    out.append([entry.path, st.st_size, st.st_mtime_ns])
    return out


def key(paths, opts, gpu_roots=None) -> str | None:
    """The entry's key for these options; None when minictr's own files cannot all be read
    (a dangling link, say): then no cache, as a cache costs only time, never a failed run."""
    try:
        return key_of(key_material(paths, opts, gpu_roots))
    except OSError:
        return None


def key_material(paths, opts, gpu_roots=None) -> list:
    """Everything a cacheable plan is made from (see the module's docstring)."""
    from minictr import host, settings
    from minictr.api import _overlay_driver

    maps = None
    if paths.rootless and opts.userns != "host":
        from minictr.runtime.idmap import rootless_mappings

        maps = rootless_mappings(opts.userns)
    store_images = os.path.join(paths.store, "images")
    return [FORMAT, list(opts), [paths.store, paths.state, paths.rootless],
            [os.geteuid(), os.getegid()], list(host.launcher_limits(paths.rootless)), maps,
            list(os.uname()), _overlay_driver(), "SLURM_JOB_ID" in os.environ,
            _signature(os.path.join(store_images, "tags.json")),
            _signature(os.path.join(store_images, "records")),
            code_signature(),
            # what a GPU request's resolution reads besides the spec and the driver's files
            # (those are its witnesses, checked at every hit): the driver-root flags and
            # variables, the MPS pipe directory, the [nvidia] settings' files
            list(gpu_roots or ()),
            [os.environ.get(v) for v in GPU_VARIABLES],
            [[f, _signature(f)] for f in settings.files()]]


def entry_path(paths, key: str) -> str:
    return os.path.join(cachefiles.cache_dir(paths.state, "plan"), key + ".json")


def _is_id(text) -> bool:
    return isinstance(text, str) and len(text) == 64 and all(c in "0123456789abcdef"
                                                             for c in text)


def load(paths, key: str, container_id: str):
    """The cached plan for ``key``, made the new container's (api.Plan, without its /etc
    files), or None: no entry, or one that is not trusted, not whole, or not this key's."""
    data = cachefiles.read(entry_path(paths, key))
    if data is None:
        return None
    try:
        text = data.decode()
        old = jsonio.loads(text)["id"]
        if not _is_id(old) or not _is_id(container_id):
            return None
        entry = jsonio.loads(text.replace(old, container_id)
                             .replace(old[:12], container_id[:12]))
        if entry["key"] != key or entry["format"] != FORMAT:
            return None
        return _plan_from(entry["plan"], container_id)
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return None


def _plan_from(d: dict, container_id: str):
    from minictr.api import Plan
    from minictr.runtime.rootfs import RootfsPlan

    r = d["rootfs"]
    str_or_none = (lambda v: v is None or isinstance(v, str))
    strings = (lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v))
    if not (isinstance(d["spec"], dict) and isinstance(d["spec"].get("process"), dict)
            and isinstance(d["name"], str) and isinstance(d["image"], str)
            and strings(d["layers"]) and strings(d["notes"]) and isinstance(d["dns_driver"], str)
            and strings(r["lowerdirs"]) and isinstance(r["target"], str)
            and all(str_or_none(r[k]) for k in ("upperdir", "workdir", "scratch"))
            and isinstance(r["rootless"], bool) and isinstance(r["volatile"], bool)
            and r["driver"] in ("overlay", "fuse-overlayfs")):
        return None
    rootfs = RootfsPlan(lowerdirs=tuple(r["lowerdirs"]), upperdir=r["upperdir"],
                        workdir=r["workdir"], target=r["target"], rootless=r["rootless"],
                        volatile=r["volatile"], driver=r["driver"], scratch=r["scratch"])
    if not isinstance(d["gpu_request"], bool):
        return None
    witnesses = d["gpu_witnesses"]
    if witnesses is not None and not (
            isinstance(witnesses, list) and all(
                isinstance(w, list) and len(w) == 3 and isinstance(w[0], str)
                and isinstance(w[1], str) for w in witnesses)
            and strings(d["gpu_warnings"])):
        return None
    if not (isinstance(d["files"], list) and all(
            isinstance(f, list) and len(f) == 2 and strings(f) for f in d["files"])):
        return None
    files = tuple((name, binascii.a2b_base64(data)) for name, data in d["files"])
    return Plan(spec=d["spec"], rootfs=rootfs, container_id=container_id, name=d["name"],
                image=d["image"], layers=tuple(d["layers"]), notes=tuple(d["notes"]),
                dns_driver=d["dns_driver"], gpu_request=d["gpu_request"], files=files,
                gpu_witnesses=None if witnesses is None else tuple(witnesses),
                gpu_warnings=tuple(d["gpu_warnings"]))


def store(paths, key: str, p, base_notes: tuple) -> bool:
    """Keep plan ``p`` (its notes but the /etc files' ones; its files but those) for ``key``;
    False if not kept."""
    rootfs = p.rootfs
    if (p.network is not None or p.hooks or p.keep_fds or rootfs.squashfs is not None
            or not _is_id(p.container_id)):
        return False
    entry = {"format": FORMAT, "key": key, "id": p.container_id, "plan": {
        "spec": p.spec, "name": p.name, "image": p.image, "layers": list(p.layers),
        "notes": list(base_notes), "dns_driver": p.dns_driver, "gpu_request": p.gpu_request,
        "gpu_witnesses": None if p.gpu_witnesses is None else list(p.gpu_witnesses),
        "gpu_warnings": list(p.gpu_warnings),
        "files": [[name, binascii.b2a_base64(data, newline=False).decode()]
                  for name, data in p.files],
        "rootfs": {"lowerdirs": list(rootfs.lowerdirs), "upperdir": rootfs.upperdir,
                   "workdir": rootfs.workdir, "target": rootfs.target,
                   "rootless": rootfs.rootless, "volatile": rootfs.volatile,
                   "driver": rootfs.driver, "scratch": rootfs.scratch}}}
    path = entry_path(paths, key)
    if not cachefiles.write(path, jsonio.dumps(entry).encode()):
        return False
    _prune(os.path.dirname(path))
    return True


def _prune(directory: str, keep: int = MAX_ENTRIES) -> None:
    """At most ``keep`` entries: the oldest written go first."""
    try:
        with os.scandir(directory) as it:
            entries = [(e.stat().st_mtime_ns, e.path) for e in it
                       if e.name.endswith(".json") and e.is_file(follow_symlinks=False)]
        for _, path in sorted(entries)[:max(0, len(entries) - keep)]:
            os.unlink(path)
    except OSError:
        pass
