"""Docker-format seccomp profiles → the OCI spec's ``linux.seccomp`` (config-linux.md, Seccomp).

A Docker profile (moby/profiles ``seccomp/default.json``, or a file given with
``--security-opt seccomp=FILE``) is a template: its rules carry conditions on the container's
capabilities, the CPU architecture and the kernel version. dockerd resolves it per container
(moby/profiles ``seccomp/seccomp_linux.go``, setupSeccomp) into the runtime-spec object that
runc and crun compile; ``resolve_profile`` is the same resolution:

- ``archMap``: the entry whose ``architecture`` is this machine's gives the spec's
  ``architectures`` (it plus its ``subArchitectures``); a flat ``architectures`` list is copied.
  Giving both is an error.
- A rule is dropped when ``excludes`` matches (its ``arches`` holds this machine's arch, any of
  its ``caps`` is in the bounding set, or the kernel is at least its ``minKernel``), or when
  ``includes`` does not (its ``arches`` lacks this arch, some of its ``caps`` is missing from
  the bounding set, or the kernel is older than its ``minKernel``).
- ``name`` (one syscall) is the old spelling of ``names``; ``comment`` is dropped.

Arch names in ``includes``/``excludes`` are Go's GOARCH spelling as libseccomp-golang uses it
(amd64, arm64, x86, arm, ppc64le, s390x, riscv64...). Pure: the machine and the kernel version
are arguments (``host_arch()`` and ``kernel_version()`` read them from uname(2)).
"""
from __future__ import annotations

import errno as errno_mod
import os

from minictr import jsonio
from minictr.errors import SpecError
from minictr.spec.edits import copy_document

# uname(2) machine -> dockerd's arch name (Go's GOARCH via goToNative) -> the archMap entry.
_MACHINE_ARCH = {
    "x86_64": "amd64", "i386": "x86", "i486": "x86", "i586": "x86", "i686": "x86",
    "aarch64": "arm64", "armv6l": "arm", "armv7l": "arm", "armv8l": "arm", "arm": "arm",
    "ppc64le": "ppc64le", "ppc64": "ppc64", "ppc": "ppc", "s390x": "s390x", "s390": "s390",
    "riscv64": "riscv64", "mips64": "mips64", "loongarch64": "loong64",
}
ARCH_TO_SCMP = {
    "x86": "SCMP_ARCH_X86", "amd64": "SCMP_ARCH_X86_64", "arm": "SCMP_ARCH_ARM",
    "arm64": "SCMP_ARCH_AARCH64", "loong64": "SCMP_ARCH_LOONGARCH64",
    "mips64": "SCMP_ARCH_MIPS64", "mips64n32": "SCMP_ARCH_MIPS64N32",
    "mipsel64": "SCMP_ARCH_MIPSEL64", "mipsel64n32": "SCMP_ARCH_MIPSEL64N32",
    "mipsle": "SCMP_ARCH_MIPSEL", "ppc": "SCMP_ARCH_PPC", "ppc64": "SCMP_ARCH_PPC64",
    "ppc64le": "SCMP_ARCH_PPC64LE", "riscv64": "SCMP_ARCH_RISCV64", "s390": "SCMP_ARCH_S390",
    "s390x": "SCMP_ARCH_S390X",
}

_PROFILE_KEYS = {"defaultAction", "defaultErrnoRet", "archMap", "architectures", "flags",
                 "listenerPath", "listenerMetadata", "syscalls", "comment",
                 "defaultErrno"}       # podman's profiles also spell the errno by name
_RULE_KEYS = {"names", "name", "action", "errnoRet", "args", "comment", "includes", "excludes",
              "errno"}
_FILTER_KEYS = {"caps", "arches", "minKernel"}
_ARG_KEYS = {"index", "value", "valueTwo", "op"}
# config-linux.md's names; the runtime refuses the ones it cannot honour (SCMP_ACT_NOTIFY).
ACTIONS = {"SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
           "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY"}
OPS = {"SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
       "SCMP_CMP_MASKED_EQ"}
_OCI_TOP = ("defaultAction", "defaultErrnoRet", "architectures", "flags", "listenerPath",
            "listenerMetadata")


def host_arch(machine: str | None = None) -> str:
    """dockerd's name for this machine's architecture ("amd64" on x86_64)."""
    machine = machine or os.uname().machine
    return _MACHINE_ARCH.get(machine, machine)


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of uname -r: "6.18.44-fc-v1252" -> (6, 18)."""
    release = release or os.uname().release
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1].split("-")[0] if c.isdecimal()))
    except (IndexError, ValueError) as err:
        raise SpecError(f"cannot read the kernel version from {release!r}") from err


def parse_profile(data: bytes, source: str) -> dict:
    """A Docker-format profile from JSON text, checked for shape (unknown keys are errors: a
    typo must not silently leave a syscall allowed)."""
    try:
        profile = jsonio.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise SpecError(f"seccomp profile {source}: not valid JSON: {err}") from err
    except RecursionError:
        raise SpecError(f"seccomp profile {source}: not valid JSON: nested too deeply") from None
    check_profile(profile, source)
    return profile


def _unknown(obj: dict, known: set, where: str) -> None:
    extra = sorted(set(obj) - known)
    if extra:
        raise SpecError(f"{where}: unknown key {extra[0]!r}",
                        hint="see moby/profiles seccomp/default.json for the profile format")


def _errno_name_agrees(name, number, where: str) -> None:
    """podman profiles carry "errno": "EPERM" beside "errnoRet": 1; they must agree."""
    if name is None:
        return
    if getattr(errno_mod, str(name), None) is None:
        raise SpecError(f"{where}: unknown errno name {name!r}")
    if number is not None and getattr(errno_mod, name) != number:
        raise SpecError(f"{where}: errno {name!r} does not match errnoRet {number}")


def check_profile(profile, source: str) -> None:
    if not isinstance(profile, dict):
        raise SpecError(f"seccomp profile {source}: expected a JSON object")
    _unknown(profile, _PROFILE_KEYS, f"seccomp profile {source}")
    if profile.get("defaultAction") not in ACTIONS | {None, ""}:
        raise SpecError(f"seccomp profile {source}: unknown defaultAction "
                        f"{profile['defaultAction']!r}")
    _errno_name_agrees(profile.get("defaultErrno"), profile.get("defaultErrnoRet"),
                       f"seccomp profile {source}")
    for i, entry in enumerate(profile.get("archMap") or ()):
        if not isinstance(entry, dict) or not isinstance(entry.get("architecture"), str):
            raise SpecError(f"seccomp profile {source}: archMap[{i}] needs an architecture")
        _unknown(entry, {"architecture", "subArchitectures"}, f"{source}: archMap[{i}]")
    syscalls = profile.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise SpecError(f"seccomp profile {source}: syscalls must be a list")
    for i, rule in enumerate(syscalls):
        where = f"seccomp profile {source}: syscalls[{i}]"
        if not isinstance(rule, dict):
            raise SpecError(f"{where}: expected an object")
        _unknown(rule, _RULE_KEYS, where)
        if rule.get("action") not in ACTIONS:
            raise SpecError(f"{where}: unknown action {rule.get('action')!r}",
                            hint="one of " + ", ".join(sorted(ACTIONS)))
        _errno_name_agrees(rule.get("errno"), rule.get("errnoRet"), where)
        for key in ("includes", "excludes"):
            if rule.get(key) is not None:
                if not isinstance(rule[key], dict):
                    raise SpecError(f"{where}: {key} must be an object")
                _unknown(rule[key], _FILTER_KEYS, f"{where}.{key}")
        for j, arg in enumerate(rule.get("args") or ()):
            if not isinstance(arg, dict):
                raise SpecError(f"{where}.args[{j}]: expected an object")
            _unknown(arg, _ARG_KEYS, f"{where}.args[{j}]")
            if arg.get("op") not in OPS:
                raise SpecError(f"{where}.args[{j}]: unknown operator {arg.get('op')!r}")


def _min_kernel(text, where: str) -> tuple[int, int]:
    try:
        major, minor = str(text).split(".")[:2]
        return int(major), int(minor)
    except ValueError as err:
        raise SpecError(f"{where}: minKernel {text!r} is not MAJOR.MINOR") from err


def _rule_applies(rule: dict, caps: set, arch: str, kernel: tuple[int, int], where: str) -> bool:
    exc = rule.get("excludes") or {}
    if arch in (exc.get("arches") or ()):
        return False
    if any(c in caps for c in exc.get("caps") or ()):
        return False
    if exc.get("minKernel") and kernel >= _min_kernel(exc["minKernel"], where):
        return False
    inc = rule.get("includes") or {}
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if any(c not in caps for c in inc.get("caps") or ()):
        return False
    if inc.get("minKernel") and kernel < _min_kernel(inc["minKernel"], where):
        return False
    return True


def _oci_rule(rule: dict, where: str) -> dict:
    names = rule.get("names")
    if rule.get("name"):
        if names:
            raise SpecError(f"{where}: both \"name\" and \"names\" are given; use \"names\"")
        names = [rule["name"]]
    if not names or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SpecError(f"{where}: \"names\" must be a non-empty list of syscall names")
    out = {"names": list(names), "action": rule.get("action")}
    if rule.get("errnoRet") is not None:
        out["errnoRet"] = rule["errnoRet"]
    if rule.get("args"):
        out["args"] = [{"index": a.get("index"), "value": a.get("value", 0),
                        "valueTwo": a.get("valueTwo", 0), "op": a.get("op")}
                       for a in rule["args"]]
    return out


def resolve_profile(profile: dict, *, caps, arch: str | None = None,
                    kernel: tuple[int, int] | None = None) -> dict | None:
    """The ``linux.seccomp`` object dockerd would make from ``profile`` for a container whose
    bounding set is ``caps``, on ``arch`` (dockerd's name, default this machine's) with kernel
    ``kernel`` (default the running one). None when the profile has neither a default action
    nor rules (Docker reads that as "no filter")."""
    check_profile(profile, "")
    if not profile.get("defaultAction") and not profile.get("syscalls"):
        return None
    if profile.get("architectures") and profile.get("archMap"):
        raise SpecError("seccomp profile: both \"architectures\" and \"archMap\" are given",
                        hint="use one of them")
    arch = arch or host_arch()
    kernel = kernel or kernel_version()
    caps = set(caps)
    out = {k: copy_document(profile[k]) for k in _OCI_TOP if profile.get(k) is not None}
    native = ARCH_TO_SCMP.get(arch)
    for entry in profile.get("archMap") or ():
        if native and entry["architecture"] == native:
            out["architectures"] = [native, *(entry.get("subArchitectures") or ())]
            break
    rules = []
    for i, rule in enumerate(profile.get("syscalls") or ()):
        where = f"seccomp profile: syscalls[{i}]"
        if _rule_applies(rule, caps, arch, kernel, where):
            rules.append(_oci_rule(rule, where))
    out["syscalls"] = rules
    return out
