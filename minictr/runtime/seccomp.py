"""Seccomp: the spec's ``linux.seccomp`` compiled to a classic BPF program, and loaded.

seccomp(2), SECCOMP_SET_MODE_FILTER: the kernel runs a classic BPF program on every system call
the process (and, across fork and execve, every descendant) makes. The program reads
``struct seccomp_data`` (nr, arch, instruction pointer, six arguments) and returns an action:
ALLOW, ERRNO|e (the call fails with errno e), KILL_THREAD, KILL_PROCESS, TRAP (SIGSYS), TRACE
(a ptracer decides), LOG, USER_NOTIF. Filters stack and can never be removed.

Two halves, as in crun (src/libcrun/seccomp.c) and runc (libcontainer/seccomp):

- **Launcher** (``compile_filter``; runtime/seccomp_cache.py keeps results on disk):
  libseccomp turns the rules into BPF (``seccomp_export_bpf``), then an ENOSYS stub is put in
  front (below). Any field, action, operator or flag minictr cannot honour is an error that
  names it, never dropped. A syscall name libseccomp does not know is skipped and reported in
  ``CompiledFilter.unknown_syscalls`` (crun warns about these too): a profile may be newer
  than the library. Rules combine as libseccomp (so runc and crun) combine them; where one rule
  silently overrides another, the syscall is reported in ``CompiledFilter.overridden``.
- **Container** (``load``): one seccomp(2) call with the bytes, through the syscall face.

**ENOSYS for syscalls newer than the profile** (runc's patchbpf): a profile lists the syscalls
it knew when it was written; one added to the kernel later would get the default action, EPERM
in Docker's profile, and programs treat EPERM as "forbidden", not "missing": glibc falls back
from clone3 to clone, from faccessat2 to faccessat... only on ENOSYS. So for each architecture
the filter covers, the stub answers ENOSYS to any syscall number above the highest one the
profile names (as libseccomp resolves the names on that architecture) and lets the rest reach
libseccomp's program. A stub rather than explicit ENOSYS rules for every newer syscall
libseccomp knows: the point is to cover syscalls *neither* the profile nor the library knows,
which only a comparison on the number can. Not added when the default action already allows or
returns ENOSYS. x32 shares AUDIT_ARCH_X86_64 with x86-64 and is told apart by
``__X32_SYSCALL_BIT`` in the number (x32's own compat calls sit at 512-547, above every generic
number, so on x32 the stub only catches numbers above those, as in runc).
"""
from __future__ import annotations

import errno
import os
import struct

from minictr.errors import RuntimeSetupError, SpecError
from minictr.records import record
from minictr.runtime import syscalls as sc

EPERM, ENOSYS = errno.EPERM, errno.ENOSYS
ACTIONS = ("SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
           "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG")
WITH_ERRNO = ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE")     # errnoRet: the errno, or the trace data
OPS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
       "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ")
FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": sc.SECCOMP_FILTER_FLAG_TSYNC,
    "SECCOMP_FILTER_FLAG_LOG": sc.SECCOMP_FILTER_FLAG_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": sc.SECCOMP_FILTER_FLAG_SPEC_ALLOW,
}
NO_NOTIFY = ("minictr does not implement seccomp user notification (SCMP_ACT_NOTIFY, "
             "listenerPath): no agent would answer the container's syscalls")
X32_SYSCALL_BIT = 0x40000000      # arch/x86/include/uapi/asm/unistd.h
_TOP_KEYS = {"defaultAction", "defaultErrnoRet", "architectures", "flags", "syscalls"}


@record
class Rule:
    name: str
    action: str
    errno: int | None
    args: tuple          # ((index, value, value_two, op), ...)


@record
class Filter:
    """A checked linux.seccomp: everything in it can be compiled and honoured."""
    default_action: str
    default_errno: int | None
    architectures: tuple[str, ...]
    flags: int
    rules: tuple[Rule, ...]


@record
class CompiledFilter:
    bpf: bytes                              # struct sock_filter[], ready for seccomp(2)
    flags: int                              # SECCOMP_FILTER_FLAG_* for seccomp(2)
    unknown_syscalls: tuple[str, ...] = ()  # names libseccomp does not know: not in the filter
    enosys_above: tuple = ()                # ((libseccomp arch token, last nr), ...): the stub
    overridden: tuple[str, ...] = ()        # syscalls with a rule another rule overrides


# ---------------------------------------------------------------- checking the spec


def _uint(value, limit: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise SpecError(f"linux.seccomp {where}: {value!r} is not an integer in 0..{limit}")
    return value


def _action(action, errno_ret, where: str, errno_key: str = "errnoRet") -> tuple[str, int | None]:
    if action == "SCMP_ACT_NOTIFY":
        raise SpecError(f"linux.seccomp {where}: {NO_NOTIFY}")
    if action not in ACTIONS:
        raise SpecError(f"linux.seccomp {where}: unknown action {action!r}",
                        hint="one of " + ", ".join(ACTIONS))
    if errno_ret is None:
        return action, (EPERM if action in WITH_ERRNO else None)
    if action not in WITH_ERRNO:
        raise SpecError(f"linux.seccomp {where}: {errno_key} {errno_ret} given for {action}, "
                        "which returns no errno")
    return action, _uint(errno_ret, 0xFFFF, errno_key if errno_key != "errnoRet"
                         else f"{where}.errnoRet")


def _arg(arg, where: str) -> tuple:
    if not isinstance(arg, dict):
        raise SpecError(f"linux.seccomp {where}: expected an object")
    extra = set(arg) - {"index", "value", "valueTwo", "op"}
    if extra:
        raise SpecError(f"linux.seccomp {where}: unknown key {sorted(extra)[0]!r}")
    if arg.get("op") not in OPS:
        raise SpecError(f"linux.seccomp {where}: unknown operator {arg.get('op')!r}",
                        hint="one of " + ", ".join(OPS))
    return (_uint(arg.get("index"), 5, f"{where}.index"),
            _uint(arg.get("value", 0), 2**64 - 1, f"{where}.value"),
            _uint(arg.get("valueTwo", 0), 2**64 - 1, f"{where}.valueTwo"), arg["op"])


def check(seccomp: dict) -> Filter:
    """Validate ``linux.seccomp`` (config-linux.md, Seccomp) into a ``Filter``, refusing what
    cannot be honoured: unknown keys, actions, operators and flags, errnoRet on an action that
    returns none, and user notification (SCMP_ACT_NOTIFY, listenerPath, listenerMetadata,
    SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV), which needs an agent minictr does not have."""
    if not isinstance(seccomp, dict):
        raise SpecError("linux.seccomp must be an object")
    for key in ("listenerPath", "listenerMetadata"):
        if seccomp.get(key):
            raise SpecError(f"linux.seccomp {key}: {NO_NOTIFY}")
    extra = set(seccomp) - _TOP_KEYS - {"listenerPath", "listenerMetadata"}
    if extra:
        raise SpecError(f"linux.seccomp: unknown key {sorted(extra)[0]!r}")
    default, default_errno = _action(seccomp.get("defaultAction"),
                                     seccomp.get("defaultErrnoRet"), "defaultAction",
                                     "defaultErrnoRet")
    arches = seccomp.get("architectures") or []
    if not isinstance(arches, list) or not all(isinstance(a, str) and a.startswith("SCMP_ARCH_")
                                               for a in arches):
        raise SpecError(f"linux.seccomp architectures: {arches!r} is not a list of SCMP_ARCH_*")
    flags = 0
    for flag in seccomp.get("flags") or ():
        if flag == "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV":
            raise SpecError(f"linux.seccomp flags: {flag} applies to notify filters; {NO_NOTIFY}")
        if flag not in FLAGS:
            raise SpecError(f"linux.seccomp flags: unknown flag {flag!r}",
                            hint="one of " + ", ".join(FLAGS))
        flags |= FLAGS[flag]
    rules = []
    for i, entry in enumerate(seccomp.get("syscalls") or ()):
        where = f"syscalls[{i}]"
        if not isinstance(entry, dict):
            raise SpecError(f"linux.seccomp {where}: expected an object")
        extra = set(entry) - {"names", "action", "errnoRet", "args"}
        if extra:
            raise SpecError(f"linux.seccomp {where}: unknown key {sorted(extra)[0]!r}")
        names = entry.get("names")
        if not isinstance(names, list) or not names or not all(
                isinstance(n, str) and n for n in names):
            raise SpecError(f"linux.seccomp {where}: names must be a non-empty list of names")
        action, err = _action(entry.get("action"), entry.get("errnoRet"), where)
        args = tuple(_arg(a, f"{where}.args[{j}]") for j, a in enumerate(entry.get("args") or ()))
        rules += [Rule(name, action, err, args) for name in names]
    return Filter(default, default_errno, tuple(arches), flags, tuple(rules))


def describe(seccomp: dict) -> str:
    """One line for --explain: the default action and the size of the rule set."""
    names = {n for r in seccomp.get("syscalls") or () for n in r.get("names") or ()}
    default = seccomp.get("defaultAction")
    if seccomp.get("defaultErrnoRet") is not None:
        default += f"({seccomp['defaultErrnoRet']})"
    return (f"seccomp: default {default}, {len(seccomp.get('syscalls') or ())} rules on "
            f"{len(names)} syscalls, architectures "
            + (",".join(a.removeprefix("SCMP_ARCH_") for a in seccomp.get("architectures") or ())
               or "native"))


# ---------------------------------------------------------------- compiling (libseccomp)


def _libseccomp():
    """minictr._seccomp, imported only when a filter is compiled (native/seccomp_build.py)."""
    from minictr import _seccomp

    return _seccomp.ffi, _seccomp.lib


def _action_value(lib, action: str, err: int | None) -> int:
    if action == "SCMP_ACT_ERRNO":
        return lib.mc_act_errno(err)
    if action == "SCMP_ACT_TRACE":
        return lib.mc_act_trace(err)
    return getattr(lib, action)


def _arch_token(lib, name: str) -> int:
    token = lib.seccomp_arch_resolve_name(name.removeprefix("SCMP_ARCH_").lower().encode())
    if token == 0:
        raise SpecError(f"linux.seccomp architectures: {name} is not known to libseccomp "
                        f"{libseccomp_version()}")
    return token


def _build(ffi, lib, flt: Filter):
    """A libseccomp filter context holding ``flt``, which the caller releases; returns
    (ctx, arch tokens, unknown names, overridden names)."""
    ctx = lib.seccomp_init(_action_value(lib, flt.default_action, flt.default_errno))
    if ctx == ffi.NULL:
        raise SpecError(f"libseccomp refused default action {flt.default_action}")
    try:
        tokens = [lib.seccomp_arch_native()]
        for name in flt.architectures:
            token = _arch_token(lib, name)
            if token not in tokens:
                rc = lib.seccomp_arch_add(ctx, token)
                if rc < 0:
                    raise SpecError(f"linux.seccomp architectures: adding {name}: "
                                    f"{os.strerror(-rc)}")
                tokens.append(token)
        default = _action_value(lib, flt.default_action, flt.default_errno)
        unknown, todo = [], []
        for rule in flt.rules:
            nr = lib.seccomp_syscall_resolve_name(rule.name.encode())
            action = _action_value(lib, rule.action, rule.errno)
            if nr == lib.__NR_SCMP_ERROR:
                unknown.append(rule.name)
            elif action != default:     # as runc and crun do: libseccomp refuses these
                todo.append((rule, nr, action))
        skip, overridden = _overridden(todo)
        for i, (rule, nr, action) in enumerate(todo):
            if i not in skip:
                _add_rule(ffi, lib, ctx, rule, nr, action)
        return ctx, tokens, tuple(dict.fromkeys(unknown)), overridden
    except BaseException:
        lib.seccomp_release(ctx)
        raise


def _overridden(todo) -> tuple[set[int], tuple[str, ...]]:
    """The rules libseccomp would ignore, by index, and the syscalls where one of them asked
    for a different action. A rule without argument conditions decides its syscall alone: it
    wins over every conditional rule for it, and the first of two such rules wins. runc and
    crun compile such profiles the same way and podman's own default profile has some (setns:
    allowed in the main list, denied without CAP_SYS_ADMIN further down), so they are reported
    in ``CompiledFilter.overridden``, not refused."""
    first: dict[str, int] = {}
    for i, (rule, _, _) in enumerate(todo):
        if not rule.args:
            first.setdefault(rule.name, i)
    skip = {i for i, (rule, _, _) in enumerate(todo) if i != first.get(rule.name, i)}
    names = (todo[i][0].name for i in sorted(skip)
             if todo[i][2] != todo[first[todo[i][0].name]][2])
    return skip, tuple(dict.fromkeys(names))


def _add_rule(ffi, lib, ctx, rule: Rule, nr: int, action: int) -> None:
    """Conditions on distinct arguments are ANDed in one rule; when an argument index repeats,
    each condition becomes a rule of its own (ORed), as runc and crun do: a single libseccomp
    rule cannot compare one argument twice."""
    def cmp(args):
        arr = ffi.new("struct scmp_arg_cmp[]", max(len(args), 1))
        for i, (index, value, value_two, op) in enumerate(args):
            arr[i].arg, arr[i].op = index, getattr(lib, op)
            arr[i].datum_a, arr[i].datum_b = value, value_two
        return arr

    indexes = [a[0] for a in rule.args]
    groups = [rule.args] if len(set(indexes)) == len(indexes) else [(a,) for a in rule.args]
    for args in groups:
        rc = lib.seccomp_rule_add_array(ctx, action, nr, len(args), cmp(args))
        if rc < 0:
            raise SpecError(f"linux.seccomp: libseccomp refused the rule {rule.action} for "
                            f"{rule.name} {list(args) or ''}: {os.strerror(-rc)}",
                            hint="two rules for one syscall with the same arguments must not "
                            "disagree on the action")


def _export(lib, ctx, export) -> bytes:
    fd = os.memfd_create("minictr-seccomp", os.MFD_CLOEXEC)
    try:
        rc = export(ctx, fd)
        if rc < 0:
            raise RuntimeSetupError(f"libseccomp could not export the filter: {os.strerror(-rc)}")
        size = os.lseek(fd, 0, os.SEEK_END)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def _last_syscalls(lib, rules, tokens) -> dict[int, int]:
    """Per arch token: the highest syscall number the profile names (names that do not exist
    on that arch resolve to negative pseudo-numbers and are ignored)."""
    last = {}
    names = {r.name for r in rules}
    for token in tokens:
        numbers = [lib.seccomp_syscall_resolve_name_arch(token, n.encode()) for n in names]
        top = max((n for n in numbers if n >= 0), default=-1)
        if top >= 0:
            last[token] = top
    return last


def enosys_stub(lib, last: dict[int, int], enosys: int = ENOSYS) -> bytes:
    """Classic BPF that returns ERRNO(enosys) for a syscall above ``last[arch]`` and falls
    through to the program appended after it otherwise (all jumps forward, as BPF requires)."""
    x86_64, x32 = lib.SCMP_ARCH_X86_64, lib.SCMP_ARCH_X32
    sections = {token: (last[token], None) for token in last if token != x32}
    if x32 in last:      # x32 calls arrive as AUDIT_ARCH_X86_64 with the x32 bit set
        sections[x86_64] = (last.get(x86_64), last[x32])
    ld_abs = lib.BPF_LD | lib.BPF_W | lib.BPF_ABS
    jeq, jgt, jge = (lib.BPF_JMP | op | lib.BPF_K for op in (lib.BPF_JEQ, lib.BPF_JGT, lib.BPF_JGE))
    ja = lib.BPF_JMP | lib.BPF_JA
    ffi = _libseccomp()[0]
    nr_off, arch_off = (ffi.offsetof("struct seccomp_data", f) for f in ("nr", "arch"))

    def bound(top):    # [jgt top → ENOSYS], then on to the program
        return ([("jump", jgt, "enosys", 0, top)] if top is not None else []) + [("ja", "prog")]

    code: list = [("insn", ld_abs, 0, 0, arch_off)]
    for n, (token, (top, x32_top)) in enumerate(sections.items()):
        body = [("insn", ld_abs, 0, 0, nr_off)]
        if token == x86_64:
            native, x32_part = bound(top), bound(x32_top)
            body += [("jump", jge, len(native), 0, X32_SYSCALL_BIT), *native, *x32_part]
        else:
            body += bound(top)
        code += [("jump", jeq, 0, len(body), token), *body]
    code += [("ja", "prog"), ("insn", lib.BPF_RET | lib.BPF_K, 0, 0,
                              lib.SECCOMP_RET_ERRNO | (enosys & lib.SECCOMP_RET_DATA))]
    labels = {"enosys": len(code) - 1, "prog": len(code)}
    out = bytearray()
    for i, ins in enumerate(code):
        if ins[0] == "ja":
            out += struct.pack("=HBBI", ja, 0, 0, labels[ins[1]] - i - 1)
            continue
        _, op, jt, jf, k = ins
        jt = labels[jt] - i - 1 if isinstance(jt, str) else jt
        if not (0 <= jt <= 255 and 0 <= jf <= 255):     # struct sock_filter's u8 offsets
            raise AssertionError(f"ENOSYS stub: jump {jt}/{jf} out of range")
        out += struct.pack("=HBBI", op, jt, jf, k)
    return bytes(out)


def compile_filter(seccomp: dict) -> CompiledFilter:
    """``linux.seccomp`` -> BPF bytes for seccomp(2), ENOSYS stub included."""
    flt = check(seccomp)
    ffi, lib = _libseccomp()
    ctx, tokens, unknown, overridden = _build(ffi, lib, flt)
    try:
        program = _export(lib, ctx, lib.seccomp_export_bpf)
    finally:
        lib.seccomp_release(ctx)
    last = {}
    if flt.default_action not in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG") and not (
            flt.default_action == "SCMP_ACT_ERRNO" and flt.default_errno == ENOSYS):
        last = _last_syscalls(lib, flt.rules, tokens)
        program = enosys_stub(lib, last) + program
    if len(program) // sc.SOCK_FILTER_SIZE > lib.BPF_MAXINSNS:
        raise SpecError(f"linux.seccomp: the filter needs {len(program) // 8} BPF instructions, "
                        f"more than the kernel's {lib.BPF_MAXINSNS}")
    return CompiledFilter(program, flt.flags, unknown, tuple(sorted(last.items())), overridden)


def pseudo_code(seccomp: dict) -> str:
    """libseccomp's human-readable form of the filter (seccomp_export_pfc), without the stub."""
    ffi, lib = _libseccomp()
    ctx = _build(ffi, lib, check(seccomp))[0]
    try:
        return _export(lib, ctx, lib.seccomp_export_pfc).decode()
    finally:
        lib.seccomp_release(ctx)


def libseccomp_version() -> str:
    v = _libseccomp()[1].seccomp_version()
    return f"{v.major}.{v.minor}.{v.micro}"


# ---------------------------------------------------------------- loading (the container side)

_LOAD_HINTS = {            # errno -> what it means here
    errno.EACCES: "seccomp(2) needs no_new_privs or CAP_SYS_ADMIN: with noNewPrivileges false, "
                  "the filter must be loaded before the capabilities are dropped",
    errno.EINVAL: "the kernel refused the flags or the program: is a SECCOMP_FILTER_FLAG_* "
                  "newer than this kernel?",
    errno.ENOMEM: "all filters of a process together may hold at most 32768 instructions",
}


def load(kernel, bpf: bytes, flags: int = 0, explain=None) -> None:
    """Install the compiled filter on this process (seccomp(2), SECCOMP_SET_MODE_FILTER); it is
    inherited by everything the process execs or forks and can never be removed.

    Call it as late as possible, right before execve(2), so the filter does not have to allow
    the runtime's own setup calls; it needs no_new_privs set first (prctl(2)
    PR_SET_NO_NEW_PRIVS) or CAP_SYS_ADMIN (seccomp(2), EACCES)."""
    if explain:
        explain(f"seccomp(SECCOMP_SET_MODE_FILTER, {flags:#x}, "
                f"<{len(bpf) // sc.SOCK_FILTER_SIZE} BPF instructions>)")
    try:
        kernel.seccomp_set_filter(flags, bpf)
    except OSError as err:
        raise RuntimeSetupError(f"loading the seccomp filter: {err.strerror or err}",
                                hint=_LOAD_HINTS.get(err.errno or 0)) from err
