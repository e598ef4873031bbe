"""Job-native mode (``minictr run --hpc``): the container behaves like part of the job, as
enroot and Apptainer containers do. Pure functions of the host's facts, which the caller
passes in (the builder, and api for the identity files).

What changes against a docker-like run:

- the host environment passes in, minus the variables that would break the image
  (``BLOCKED_ENV``: they name host paths or make the loader and interpreters load host code);
  the image's Env, ``--env-file`` and ``-e`` still override it;
- you are yourself inside: your uid and gid (rootless: a user namespace mapping only your own
  ids to themselves, no /etc/subuid needed), with an /etc/passwd and /etc/group that carry
  your entries, your HOME, and ``$HOME`` and the current directory bind-mounted at their own
  paths, the current directory being the working directory;
- no new PID, IPC, UTS or network namespace: ranks on a node share the hostname, /dev/shm and
  System V IPC, as they would without a container. /proc is then the host's (a recursive
  bind: a fresh proc needs a PID namespace of our own), with the usual masked paths.
"""
from __future__ import annotations

# Variables not passed from the host: the loader's (a host library path would make the image's
# programs load host libraries), PATH (the image's own comes from its Env or the default),
# interpreters' search paths and homes, and exported shell functions (Lmod's `module` calls
# host binaries). minictr's own settings are for the launcher only.
BLOCKED_ENV = frozenset({
    "PATH", "LD_LIBRARY_PATH", "LD_PRELOAD", "LD_AUDIT", "LD_ORIGIN_PATH",
    "PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PERL5LIB", "PERLLIB", "RUBYLIB",
    "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "CONDA_SHLVL", "CONDA_EXE",
})
BLOCKED_PREFIXES = ("BASH_FUNC_", "MINICTR_")

# Where the current directory is not bind-mounted: it would hide the image's own system.
SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
               "/run", "/sbin", "/sys", "/usr", "/var/lib", "/var/run")


def passed_environment(host_env: dict[str, str]) -> list[str]:
    """The host variables that pass into the container, as KEY=VALUE entries."""
    return [f"{k}={v}" for k, v in host_env.items()
            if k and "=" not in k and k not in BLOCKED_ENV and not k.startswith(BLOCKED_PREFIXES)]


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def identity_binds(home: str | None, cwd: str, is_dir) -> list[dict]:
    """Bind mounts of HOME and the current directory at their own paths (read-write, rbind,
    rslave: a filesystem mounted later on the host, say an automounted project dir, shows
    inside too). The current directory is not bound when it is inside HOME (already there),
    "/" or a system directory of the image."""
    binds = []
    if home and home.startswith("/") and home != "/" and is_dir(home) and not any(
            _inside(home, d) for d in SYSTEM_DIRS):
        binds.append(home)
    if cwd != "/" and is_dir(cwd) and not any(_inside(cwd, d) for d in SYSTEM_DIRS) and \
            not any(_inside(cwd, b) for b in binds):
        binds.append(cwd)
    return [{"destination": p, "type": "bind", "source": p, "options": ["rbind", "rslave"]}
            for p in binds]


def host_namespace_mounts(mounts: list[dict], exists) -> list[dict]:
    """``mounts`` (the defaults) with the host's /proc, /dev/shm and /dev/mqueue instead of
    fresh ones: with the host's PID and IPC namespaces a fresh proc or mqueue would need a
    namespace of our own (rootless, mount(2) refuses them), and ranks share memory through
    /dev/shm. What the host lacks is left out (/dev/mqueue) or stays the container's own
    (a tmpfs /dev/shm)."""
    out = []
    for m in mounts:
        dest = m["destination"]
        if dest in ("/proc", "/dev/shm", "/dev/mqueue"):
            if exists(dest):
                m = {"destination": dest, "type": "bind", "source": dest,
                     "options": ["rbind", "nosuid", "noexec", "nodev"]}
            elif dest != "/dev/shm":
                continue
        out.append(m)
    return out


def passwd_with(image_passwd: bytes | None, name: str, uid: int, gid: int, gecos: str,
                home: str, shell: str) -> bytes:
    """The image's /etc/passwd with an entry for the user (theirs replaces an entry with the
    same name or uid: inside, the name must resolve to the caller)."""
    keep = []
    for line in (image_passwd or b"").decode("utf-8", "replace").splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and (fields[0] == name or fields[2] == str(uid)) and \
                not line.startswith("#"):
            continue
        keep.append(line)
    entry = ":".join(_clean(f) for f in (name, "x", str(uid), str(gid), gecos, home, shell))
    return ("\n".join(keep + [entry]) + "\n").encode()


def group_with(image_group: bytes | None, groups: list[tuple[str, int]], user: str) -> bytes:
    """The image's /etc/group with an entry (listing the user) for each of the user's groups
    that it lacks; an existing gid keeps its name, with the user added as a member."""
    lines = (image_group or b"").decode("utf-8", "replace").splitlines()
    wanted = dict((gid, name) for name, gid in groups)
    out = []
    for line in lines:
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdecimal() and int(fields[2]) in wanted and \
                not line.startswith("#"):
            gid = int(fields[2])
            del wanted[gid]
            members = [m for m in (fields[3].split(",") if len(fields) > 3 else []) if m]
            if user not in members:
                members.append(user)
            line = ":".join(fields[:3] + [",".join(members)])
        out.append(line)
    taken = {line.split(":")[0] for line in out}
    for gid, name in wanted.items():
        name = _clean(name) if name not in taken else f"{_clean(name)}{gid}"
        out.append(f"{name}:x:{gid}:{_clean(user)}")
    return ("\n".join(out) + "\n").encode()


def _clean(field: str) -> str:
    return "".join(c for c in field if c not in ":\n\0")
