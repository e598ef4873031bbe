"""What a plan needs from the host, read here so the spec builder stays pure.

- ``launcher_limits``: the capabilities this process holds and the highest hard RLIMIT_NOFILE
  it can set; the builder keeps the plan within them (a capability it lacks cannot be given,
  a hard limit above its own cannot be set without CAP_SYS_RESOURCE).
- ``etc_files``: the container's /etc/resolv.conf, /etc/hosts and /etc/hostname
  (spec/etcfiles.py makes their text from the host's), written as files the spec bind-mounts.
"""
from __future__ import annotations

import os

from minictr.spec import defaults

CAP_SYS_RESOURCE = defaults.ALL_CAPABILITIES.index("CAP_SYS_RESOURCE")


def _status_masks(path: str = "/proc/self/status") -> dict[str, int]:
    """The Cap* masks of proc(5)'s status file, by field name."""
    out = {}
    with open(path) as f:
        for line in f:
            if line.startswith("Cap"):
                key, _, value = line.partition(":")
                out[key] = int(value.strip(), 16)
    return out


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def launcher_limits(rootless: bool, *, status: str = "/proc/self/status",
                    nr_open: str = "/proc/sys/fs/nr_open") -> tuple[tuple[str, ...], int, str]:
    """(capabilities held, the highest hard RLIMIT_NOFILE settable, why that limit).

    The held set is CapPrm: capset(2) can give nothing beyond it (a container in a user
    namespace of its own gets every capability there anyway; the builder knows). Raising a
    hard limit needs CAP_SYS_RESOURCE in the initial user namespace (setrlimit(2)); without
    it, or rootless, the ceiling is the launcher's own hard limit; fs.nr_open caps it always.
    """
    import resource

    masks = _status_masks(status)
    held = tuple(name for number, name in enumerate(defaults.ALL_CAPABILITIES)
                 if masks.get("CapPrm", 0) >> number & 1)
    ceiling = _read_int(nr_open) or defaults.DEFAULT_NOFILE
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if rootless:
        why = "without root it cannot raise its own hard limit"
    elif not masks.get("CapEff", 0) >> CAP_SYS_RESOURCE & 1:
        why = "it lacks CAP_SYS_RESOURCE, so it cannot raise its own hard limit"
    else:
        return held, ceiling, "fs.nr_open"
    if hard != resource.RLIM_INFINITY and hard < ceiling:
        return held, hard, why
    return held, ceiling, "fs.nr_open"


def etc_files(opts, hostname: str, directory: str | None,
              read=lambda path: _read_text(path)) -> tuple[dict[str, str], list[str]]:
    """Write the container's resolv.conf, hosts and hostname; return {destination: host path}
    and the notes to show under --explain.

    ``directory`` is the container's own (the store's containers/<id>/, removed with it); a
    plan made without one (`minictr spec`, a dry run) gets files named by their content in a
    private temporary directory, so that the spec it prints still names files that exist."""
    from minictr.spec import etcfiles

    own = opts.network == "none"
    resolv, notes = etcfiles.resolv_conf(
        read("/etc/resolv.conf"), own_network=own, dns=opts.dns, dns_search=opts.dns_search,
        dns_options=opts.dns_options,
        resolved_text=read("/run/systemd/resolve/resolv.conf") if own else None)
    hosts = etcfiles.hosts("" if own else read("/etc/hosts"), own_network=own,
                           hostname=hostname, add_hosts=opts.add_hosts)
    texts = {"/etc/resolv.conf": resolv, "/etc/hosts": hosts,
             "/etc/hostname": etcfiles.hostname_file(hostname)}
    return {dest: write_file(directory, os.path.basename(dest), text.encode())
            for dest, text in texts.items()}, notes


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(1 << 20)
    except OSError:
        return ""


def write_file(directory: str | None, name: str, data: bytes) -> str:
    """``directory/name`` (made here, written in place: nothing reads it before the container
    starts), or without a directory a file named by its content in a private temp dir, written
    under a temporary name and renamed, and rewritten when a container changed it."""
    if directory is not None:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path
    import hashlib
    import tempfile

    base = private_temp_dir()
    path = os.path.join(base, f"{name}-{hashlib.sha256(data).hexdigest()[:32]}")
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return path
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(dir=base, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def private_temp_dir() -> str:
    """$TMPDIR/minictr-files-UID, refusing one that someone else made or can write."""
    import tempfile

    from minictr.errors import RuntimeSetupError

    path = os.path.join(tempfile.gettempdir(), f"minictr-files-{os.geteuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != os.geteuid() or \
            st.st_mode & 0o022:
        raise RuntimeSetupError(f"{path} is not a private directory of this user",
                                hint="remove it; minictr keeps the files of plans made "
                                     "without a container there")
    return path
