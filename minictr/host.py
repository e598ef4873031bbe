"""What a plan needs from the host, read here so the spec builder stays pure.

- ``launcher_limits``: the capabilities this process holds and the highest hard RLIMIT_NOFILE
  it can set; the builder keeps the plan within them (a capability it lacks cannot be given,
  a hard limit above its own cannot be set without CAP_SYS_RESOURCE).
- ``etc_files``: the container's /etc/resolv.conf, /etc/hosts and /etc/hostname
  (spec/etcfiles.py makes their text from the host's), which the spec bind-mounts.
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


def etc_files(opts, hostname: str, driver: str = "default",
              read=lambda path: _read_text(path)) -> tuple[dict[str, bytes], list[str]]:
    """The container's resolv.conf, hosts and hostname, {destination: content}, on network
    ``driver`` (spec/etcfiles.py, nameservers_for), and the notes to show under --explain.
    Nothing is written here: the plan names them as files of the container's own directory,
    which `create` writes (api.Plan.files)."""
    from minictr.spec import etcfiles

    own = driver not in etcfiles.HOST_NETWORKS
    resolv, notes = etcfiles.resolv_conf(
        read("/etc/resolv.conf"), driver=driver, dns=opts.dns, dns_search=opts.dns_search,
        dns_options=opts.dns_options,
        resolved_text=read("/run/systemd/resolve/resolv.conf") if own else None)
    hosts = etcfiles.hosts("" if own else read("/etc/hosts"), own_network=own,
                           hostname=hostname, add_hosts=opts.add_hosts)
    texts = {"/etc/resolv.conf": resolv, "/etc/hosts": hosts,
             "/etc/hostname": etcfiles.hostname_file(hostname)}
    return {dest: text.encode() for dest, text in texts.items()}, notes


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(1 << 20)
    except OSError:
        return ""
