"""The secure defaults every container starts from, as runc, crun and Docker set them.

Sources (see ../shared/reference/RUNTIME.md): runc ``libcontainer/specconv/example.go`` (mounts,
rlimits, device allow list), moby ``oci/defaults.go`` (masked and read-only paths) and
``oci/caps/defaults.go`` (capabilities). Everything here is data or a pure function of its
arguments; the builder copies what it takes, so callers can never change these tables.
"""
from __future__ import annotations


DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Docker's default set for a root container (moby oci/caps/defaults.go), in its order.
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)

# Every capability of capabilities(7), numbered 0..40 as in <linux/capability.h>. The runtime
# drops the ones the running kernel does not know (CAP_LAST_CAP), as runc does.
ALL_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)

# moby oci/defaults.go; masked: /dev/null bound over files, an empty read-only tmpfs over dirs.
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap", "/proc/interrupts",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# setrlimit(2) resource names as docker's --ulimit spells them.
RLIMITS = {
    "core": "RLIMIT_CORE", "cpu": "RLIMIT_CPU", "data": "RLIMIT_DATA", "fsize": "RLIMIT_FSIZE",
    "locks": "RLIMIT_LOCKS", "memlock": "RLIMIT_MEMLOCK", "msgqueue": "RLIMIT_MSGQUEUE",
    "nice": "RLIMIT_NICE", "nofile": "RLIMIT_NOFILE", "nproc": "RLIMIT_NPROC",
    "rss": "RLIMIT_RSS", "rtprio": "RLIMIT_RTPRIO", "rttime": "RLIMIT_RTTIME",
    "sigpending": "RLIMIT_SIGPENDING", "stack": "RLIMIT_STACK", "as": "RLIMIT_AS",
}
# podman's default (runc's example spec has 1024:1024, too few for many servers and for
# PyTorch's data loaders)
DEFAULT_NOFILE = 1048576
DEFAULT_RLIMITS = ({"type": "RLIMIT_NOFILE", "hard": DEFAULT_NOFILE, "soft": DEFAULT_NOFILE},)
DEFAULT_SHM_SIZE = 65536 * 1024                 # docker's 64m

# The six nodes every container gets (RUNTIME.md "Default devices"): (name, major, minor).
DEFAULT_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
                   ("urandom", 1, 9), ("tty", 5, 0))

_NOSUID_NOEXEC_NODEV = ["nosuid", "noexec", "nodev"]


def default_mounts(*, rootless: bool, private_network: bool, privileged: bool,
                   host_ipc: bool = False, host_pid: bool = False,
                   shm_size: int | None = None, host_has_mqueue: bool = True) -> list[dict]:
    """The kernel filesystems every container gets, in the order they must be mounted.

    In a user namespace (rootless) the kernel allows a fresh sysfs only to the owner of the
    network namespace (sysfs's kernfs_get_tree checks net ns ownership), so with the host's
    network /sys is a read-only recursive bind of the host's /sys, as podman does; that rbind
    already carries the host's /sys/fs/cgroup mounts, so no cgroup entry follows it (a second
    rbind would stack every cgroup mount twice, seen with runc). With its own network namespace
    the container gets a fresh sysfs, and /sys/fs/cgroup is then a read-only rbind of the host's.
    We bind rather than mount a fresh cgroup2 because hosts with a hybrid v1/v2 layout (like our
    CI) would show a near-empty cgroup2 tree, and because a bind needs no cgroup-namespace
    privilege. Only the top of a bind is made read-only: submounts keep their flags, but the
    user's own permissions still apply. devpts gets no gid=5 when rootless, since gid 5 is
    usually not mapped (mount fails with EINVAL).

    With the host's IPC namespace (--ipc host) /dev/shm is the host's, bound in, as docker
    does: POSIX shared memory is files there, so this is what shares it (PyTorch's data
    loaders need it); rootless, /dev/mqueue is the host's too, since a fresh mqueue mount
    needs an IPC namespace its user namespace owns (none when the host has no /dev/mqueue).
    With the host's PID namespace (--pid host) rootless, /proc is a recursive bind of the
    host's: a fresh proc mount needs a PID namespace its user namespace owns (as root a fresh
    proc of the host's namespace works).
    """
    sys_ro = [] if privileged else ["ro"]
    pts_opts = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
    if not rootless:
        pts_opts.append("gid=5")
    proc = {"destination": "/proc", "type": "proc", "source": "proc",
            "options": list(_NOSUID_NOEXEC_NODEV)}
    if host_pid and rootless:
        proc = {"destination": "/proc", "type": "bind", "source": "/proc",
                "options": ["rbind"] + _NOSUID_NOEXEC_NODEV}
    size = shm_size or DEFAULT_SHM_SIZE
    shm = {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
           "options": _NOSUID_NOEXEC_NODEV + ["mode=1777", f"size={size // 1024}k"
                                              if size % 1024 == 0 else f"size={size}"]}
    if host_ipc:
        shm = {"destination": "/dev/shm", "type": "bind", "source": "/dev/shm",
               "options": ["rbind"] + _NOSUID_NOEXEC_NODEV}
    mqueue = {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
              "options": list(_NOSUID_NOEXEC_NODEV)}
    if host_ipc and rootless:
        mqueue = {"destination": "/dev/mqueue", "type": "bind", "source": "/dev/mqueue",
                  "options": ["rbind"] + _NOSUID_NOEXEC_NODEV} if host_has_mqueue else None
    mounts = [
        proc,
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": pts_opts},
        shm,
    ] + ([mqueue] if mqueue else [])
    sys_opts = _NOSUID_NOEXEC_NODEV + sys_ro
    if rootless and not private_network:
        # the rbind of /sys carries the host's /sys/fs/cgroup with it
        mounts.append({"destination": "/sys", "type": "bind", "source": "/sys",
                       "options": ["rbind"] + sys_opts})
        return mounts
    mounts.append({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                   "options": list(sys_opts)})
    if rootless:
        mounts.append({"destination": "/sys/fs/cgroup", "type": "bind",
                       "source": "/sys/fs/cgroup", "options": ["rbind"] + sys_opts})
    else:
        mounts.append({"destination": "/sys/fs/cgroup", "type": "cgroup2", "source": "cgroup",
                       "options": _NOSUID_NOEXEC_NODEV + ["relatime"] + sys_ro})
    return mounts


def default_devices() -> list[dict]:
    """linux.devices for the six default nodes: char devices, mode 0666, owned by root."""
    return [{"path": f"/dev/{name}", "type": "c", "major": major, "minor": minor,
             "fileMode": 0o666, "uid": 0, "gid": 0} for name, major, minor in DEFAULT_DEVICES]


def default_device_rules(*, privileged: bool) -> list[dict]:
    """linux.resources.devices: runc's allow list after a deny-all.

    "Any" major, minor or type is an omitted key, as config-linux.md defines it ("if omitted,
    defaults to all"); a JSON null would be rejected by the runtime-spec schema and by crun's
    parser. Readers should use ``rule.get("major")``, where None means any.

    mknod of any node is allowed (``m``) so that images can carry device files; opening needs
    an explicit rule. 136 is the Unix98 pty slave major (/dev/pts/N), 5:2 is /dev/ptmx.
    --privileged allows everything in the device cgroup, as docker does; unlike docker it
    creates no node for each host device (that would read the host's /dev here, in pure code):
    name the ones wanted with --device.
    """
    if privileged:
        return [{"allow": True, "access": "rwm"}]
    rules = [{"allow": False, "access": "rwm"},
             {"allow": True, "type": "c", "access": "m"},
             {"allow": True, "type": "b", "access": "m"}]
    rules += [{"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"}
              for _, major, minor in DEFAULT_DEVICES]
    rules += [{"allow": True, "type": "c", "major": 136, "access": "rwm"},
              {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"}]
    return rules


def default_rlimits() -> list[dict]:
    return [dict(rlimit) for rlimit in DEFAULT_RLIMITS]     # flat dicts: a copy each
