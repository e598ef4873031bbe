"""``--security-opt``: seccomp profiles and no_new_privs, with docker's spellings.

- ``seccomp=FILE`` a Docker-format profile (see spec/seccomp.py); ``seccomp=unconfined`` no
  filter; ``seccomp=builtin`` the default (Docker's own profile, spec/seccomp_default.py).
- ``no-new-privileges``, ``no-new-privileges=true|false`` (strconv.ParseBool's spellings):
  process.noNewPrivileges. **minictr sets no_new_privs by default**, unlike docker (whose
  default is off unless the daemon sets ``no-new-privileges``): a setuid binary or one with file
  capabilities in an image gains nothing (``su`` and ``sudo`` cannot switch user).
  ``no-new-privileges=false`` turns it off, and so does ``--privileged`` unless
  ``no-new-privileges`` is given too.
- ``label=...`` (SELinux) and ``apparmor=...``: minictr applies no LSM profile, and saying so is
  better than ignoring the option; docker's other keys (``systempaths``, ``writable-cgroups``)
  are refused the same way. Anything else is an unknown option.

--privileged turns the *default* filter off, as in docker. Unlike docker, which ignores an
explicit ``seccomp=FILE`` under --privileged, minictr applies a profile the user named.
"""
from __future__ import annotations

from _collections_abc import Callable

from minictr.errors import SpecError
from minictr.records import record
from minictr.spec import seccomp as seccomp_mod

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_UNSUPPORTED = {
    "label": "SELinux labels are not supported by minictr (it applies no LSM label)",
    "apparmor": "AppArmor profiles are not supported by minictr (it applies no LSM profile)",
    "systempaths": "minictr always masks /proc and /sys paths, except with --privileged",
    "writable-cgroups": "minictr does not mount the cgroup filesystem into containers",
}


@record
class SecurityOptions:
    seccomp: str = "builtin"                 # builtin | unconfined | file
    seccomp_profile: dict | None = None      # the parsed profile when seccomp == "file"
    no_new_privileges: bool | None = None    # None: not given (on, except with --privileged)


def parse_security_opts(entries, read_host_file: Callable[[str], bytes]) -> SecurityOptions:
    """The --security-opt values, in order (a later seccomp= replaces an earlier one)."""
    seccomp, profile, nnp = "builtin", None, None
    for entry in entries:
        key, sep, value = entry.partition("=")
        if key == "no-new-privileges":
            if not sep:
                nnp = True
            elif value in _TRUE or value in _FALSE:
                nnp = value in _TRUE
            else:
                raise SpecError(f"--security-opt {entry}: expected true or false")
        elif key == "seccomp" and sep:
            if value in ("unconfined", "builtin"):
                seccomp, profile = value, None
            else:
                seccomp, profile = "file", _read_profile(value, read_host_file)
        elif key in _UNSUPPORTED:
            raise SpecError(f"--security-opt {entry}: {_UNSUPPORTED[key]}")
        elif ":" in entry and not sep:
            raise SpecError(f"--security-opt {entry}: use KEY=VALUE",
                            hint="docker's KEY:VALUE spelling is no longer accepted")
        else:
            raise SpecError(f"unknown --security-opt {entry!r}",
                            hint="seccomp=FILE|unconfined|builtin, no-new-privileges[=BOOL]")
    return SecurityOptions(seccomp, profile, nnp)


def _read_profile(path: str, read_host_file) -> dict:
    try:
        data = read_host_file(path)
    except OSError as err:
        raise SpecError(f"--security-opt seccomp={path}: {err.strerror or err}") from err
    return seccomp_mod.parse_profile(data, path)


def linux_seccomp(security: SecurityOptions, *, caps, privileged: bool, arch: str | None = None,
                  kernel: tuple[int, int] | None = None) -> dict | None:
    """The spec's linux.seccomp for these options, or None for no filter. ``caps`` is the
    container's bounding set (the profile's includes/excludes test it, as dockerd does)."""
    if security.seccomp == "unconfined":
        return None
    if security.seccomp == "file":
        return seccomp_mod.resolve_profile(security.seccomp_profile, caps=caps, arch=arch,
                                           kernel=kernel)
    if privileged:
        return None
    from minictr.spec.seccomp_default import DEFAULT_PROFILE

    return seccomp_mod.resolve_profile(DEFAULT_PROFILE, caps=caps, arch=arch, kernel=kernel)


def seccomp_for(entries, *, caps, privileged: bool, read_host_file: Callable[[str], bytes],
                arch: str | None = None, kernel: tuple[int, int] | None = None) -> dict | None:
    """--security-opt strings -> linux.seccomp (or None): parse, then resolve."""
    return linux_seccomp(parse_security_opts(entries, read_host_file), caps=caps,
                         privileged=privileged, arch=arch, kernel=kernel)
