"""The one error family a user sees (DESIGN.md §6).

Library code raises these (chaining the cause); only ``cli.main`` prints them and turns them into
an exit status. Docker's conventions: 125 launcher error, 126 cannot execute, 127 not found.
"""
from __future__ import annotations

import errno

EXIT_LAUNCHER = 125
EXIT_CANNOT_EXEC = 126
EXIT_NOT_FOUND = 127


class MinictrError(Exception):
    """Every failure a user can see is one of these."""

    exit_code = EXIT_LAUNCHER

    def __init__(self, what: str, *, hint: str | None = None, exit_code: int | None = None):
        super().__init__(what)
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(MinictrError):
    """Bad command-line input."""


class ImageError(MinictrError):
    """An image could not be found, read, verified or stored."""


class NoSuchImage(ImageError):
    """The store has no image by that name."""


class NotFound(MinictrError):
    """What `inspect` or `rmi` was asked about does not exist: docker exits 1 for these ("No
    such image"), keeping 125 for its own failures."""

    exit_code = 1


class RegistryError(ImageError):
    """A registry refused or broke a transfer."""


class SpecError(MinictrError):
    """Options that cannot be turned into a valid OCI runtime spec."""


class RuntimeSetupError(MinictrError):
    """The container could not be set up (namespaces, mounts, cgroups...)."""


class GPUError(MinictrError):
    """GPU discovery, selection or requirement failures."""


class ContainerExecError(MinictrError):
    """The container's process could not be executed (exit 126) or found (exit 127)."""

    def __init__(self, what: str, *, hint: str | None = None, exit_code: int = EXIT_CANNOT_EXEC):
        super().__init__(what, hint=hint)
        self.exit_code = exit_code


# errnos whose plain text misleads in our context (bubblewrap's mount_strerror does this)
HINTS = {
    ("mount", errno.ENOSPC): "ENOSPC from mount(2) means too many mounts, not a full disk: "
    "see /proc/sys/fs/mount-max",
    ("mount", errno.EPERM): "mount(2) needs CAP_SYS_ADMIN in the mount namespace's owning user "
    "namespace; as a non-root user minictr creates a user namespace first",
    ("unshare", errno.EPERM): "creating namespaces needs root, or unprivileged user namespaces "
    "(sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0)",
    ("unshare", errno.ENOSPC): "the per-user namespace limit is reached: see "
    "/proc/sys/user/max_*_namespaces",
    ("pivot_root", errno.EINVAL): "pivot_root(2) needs the new root to be a mount point and no "
    "shared mounts; on an initramfs root it always fails",
    ("bpf", errno.EPERM): "loading an eBPF device filter needs CAP_SYS_ADMIN in the initial user "
    "namespace (or CAP_BPF); rootless containers get no device filter",
    ("setrlimit", errno.EPERM): "raising a hard limit above minictr's own needs CAP_SYS_RESOURCE "
    "(root without it, or rootless): lower that --ulimit, or raise the limit where minictr "
    "starts (ulimit -H, limits.conf)",
}


def hint_for(call: str, err: int) -> str | None:
    return HINTS.get((call, err))
