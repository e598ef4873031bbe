"""The eBPF device allow-list: ``linux.resources.devices`` → a cgroup device eBPF program.

cgroup v2 has no ``devices.allow`` file. Instead the kernel runs a small eBPF program attached to
the cgroup (attach type BPF_CGROUP_DEVICE) on every open(2) and mknod(2) of a device node by a
process in it; the program returns 1 to allow, 0 to deny (EPERM). Its input is
``struct bpf_cgroup_dev_ctx`` (include/uapi/linux/bpf.h)::

    u32 access_type;   /* (access << 16) | type; type: BLOCK=1 CHAR=2;
                                                  access: MKNOD=1 READ=2 WRITE=4 */
    u32 major;
    u32 minor;

Compiling the rules is pure (``compile_rules`` returns the instruction bytes, unit-tested through
a tiny interpreter in tests/unit/bpf_interp.py); only ``load_program``/``attach``/``detach`` touch
the kernel, through the syscall face (``kernel.bpf``), see bpf(2).

Rule semantics (config-linux.md "Allowed Device list"): rules apply in order, a later rule
overrides an earlier one, and what no rule allows is denied. We decide **each requested access
bit** by the last rule that covers it: the program walks the rules backwards (as runc's and crun's
filters do) keeping ``r3`` = the access bits not decided yet; a matching deny rule that covers an
undecided bit denies, a matching allow rule marks its bits decided and allows once none is left.
So ``allow c 1:3 rwm`` then ``deny c 1:3 w`` allows a read-only open but denies O_RDWR. runc
instead requires the whole request to be a subset of one rule's access (its emulator first
rewrites the list); for allow-only lists behind a deny-all, the two agree.
"""
from __future__ import annotations

import os
import struct
from _collections_abc import Callable

from minictr.errors import RuntimeSetupError, SpecError, hint_for

# struct bpf_cgroup_dev_ctx constants (include/uapi/linux/bpf.h: BPF_DEVCG_*)
BPF_DEVCG_DEV_BLOCK = 1
BPF_DEVCG_DEV_CHAR = 2
BPF_DEVCG_ACC_MKNOD = 1
BPF_DEVCG_ACC_READ = 2
BPF_DEVCG_ACC_WRITE = 4
ACCESS_BITS = {"m": BPF_DEVCG_ACC_MKNOD, "r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE}
ACCESS_ALL = 7
DEVICE_TYPES = {"c": BPF_DEVCG_DEV_CHAR, "b": BPF_DEVCG_DEV_BLOCK, "a": None}

# eBPF opcodes (include/uapi/linux/bpf_common.h, bpf.h; Documentation/bpf/instruction-set.rst)
LDX_MEM_W = 0x61        # BPF_LDX | BPF_MEM | BPF_W:   dst = *(u32 *)(src + off)
ALU_AND_K = 0x54        # BPF_ALU | BPF_AND | BPF_K:   dst &= imm (32-bit)
ALU_RSH_K = 0x74        # BPF_ALU | BPF_RSH | BPF_K:   dst >>= imm (32-bit)
ALU_MOV_K = 0xB4        # BPF_ALU | BPF_MOV | BPF_K:   dst = imm (32-bit)
ALU_MOV_X = 0xBC        # BPF_ALU | BPF_MOV | BPF_X:   dst = src (32-bit)
JMP_JEQ_K = 0x15        # BPF_JMP | BPF_JEQ | BPF_K:   if dst == imm: pc += off
JMP_JNE_K = 0x55        # BPF_JMP | BPF_JNE | BPF_K:   if dst != imm: pc += off
JMP_EXIT = 0x95         # BPF_JMP | BPF_EXIT:          return r0
INSN_SIZE = 8           # struct bpf_insn: u8 code; u8 dst:4, src:4; s16 off; s32 imm

# Registers: r1 = ctx on entry (then scratch), r2 = type, r3 = undecided access, r4 = major,
# r5 = minor, r0 = verdict.
R0, R1, R2, R3, R4, R5 = range(6)
NEXT = object()         # placeholder jump target: the first instruction of the next block


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One ``struct bpf_insn``, little-endian (the only byte order we run on: x86-64, arm64)."""
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


# ---------------------------------------------------------------- rules


def normalize_rule(rule: dict) -> tuple[bool, int | None, int | None, int | None, int]:
    """(allow, type, major, minor, access) of one config-linux.md devices[] entry.

    ``type`` unset or "a" means any type; ``major``/``minor`` unset (or -1, as runc writes "any")
    mean any; ``access`` unset means "rwm" (as runc and crun read it).
    """
    if "allow" not in rule or not isinstance(rule["allow"], bool):
        raise SpecError(f"device rule {rule!r} needs \"allow\": true or false",
                        hint="see config-linux.md, Allowed Device list")
    kind = rule.get("type") or "a"
    if kind not in DEVICE_TYPES:
        raise SpecError(f"device rule {rule!r}: type must be \"a\", \"c\" or \"b\"")
    numbers = []
    for key in ("major", "minor"):
        value = rule.get(key)
        if value is None or value == -1:
            numbers.append(None)
        elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:
            numbers.append(value)
        else:
            raise SpecError(f"device rule {rule!r}: {key} must be a number >= 0 or unset")
    access_text = rule.get("access") or "rwm"
    if set(access_text) - set(ACCESS_BITS):
        raise SpecError(f"device rule {rule!r}: access must be letters from \"rwm\"")
    access = 0
    for letter in access_text:
        access |= ACCESS_BITS[letter]
    return rule["allow"], DEVICE_TYPES[kind], numbers[0], numbers[1], access


def describe_rule(rule: dict) -> str:
    """``allow c 1:3 rwm`` / ``deny a *:* rwm``: the devices.allow notation, for --explain."""
    allow, _, major, minor, _ = normalize_rule(rule)
    kind = rule.get("type") or "a"
    return (f"{'allow' if allow else 'deny'} {kind} "
            f"{'*' if major is None else major}:{'*' if minor is None else minor} "
            f"{rule.get('access') or 'rwm'}")


def _rule_block(allow: bool, dev_type: int | None, major: int | None, minor: int | None,
                access: int) -> list:
    """Instructions for one rule; jumps to ``NEXT`` when the device does not match.

    Wildcards (type "a", major/minor unset) emit no compare at all.
    """
    block = []
    if dev_type is not None:
        block.append((JMP_JNE_K, R2, 0, NEXT, dev_type))
    if major is not None:
        block.append((JMP_JNE_K, R4, 0, NEXT, major))
    if minor is not None:
        block.append((JMP_JNE_K, R5, 0, NEXT, minor))
    if allow:
        # these bits are decided "allowed"; allow once no requested bit is left undecided
        block += [(ALU_AND_K, R3, 0, 0, ~access & ACCESS_ALL),
                  (JMP_JNE_K, R3, 0, NEXT, 0),
                  (ALU_MOV_K, R0, 0, 0, 1),
                  (JMP_EXIT, 0, 0, 0, 0)]
    else:
        # deny if this rule covers any bit still undecided (r1 is free once the ctx is read)
        block += [(ALU_MOV_X, R1, R3, 0, 0),
                  (ALU_AND_K, R1, 0, 0, access),
                  (JMP_JEQ_K, R1, 0, NEXT, 0),
                  (ALU_MOV_K, R0, 0, 0, 0),
                  (JMP_EXIT, 0, 0, 0, 0)]
    return block


def _prologue() -> list:
    """Load type, access, major and minor from struct bpf_cgroup_dev_ctx (r1 points at it)."""
    return [(LDX_MEM_W, R2, R1, 0, 0),
            (ALU_AND_K, R2, 0, 0, 0xFFFF),
            (LDX_MEM_W, R3, R1, 0, 0),
            (ALU_RSH_K, R3, 0, 0, 16),
            (LDX_MEM_W, R4, R1, 4, 0),
            (LDX_MEM_W, R5, R1, 8, 0)]


def compile_rules(rules: list[dict]) -> bytes:
    """``linux.resources.devices`` → BPF_PROG_TYPE_CGROUP_DEVICE instruction bytes.

    Layout: prologue, one block per rule from the last rule to the first (the last matching
    rule wins), then the default verdict "deny" (r0 = 0; exit). Each block's jumps to ``NEXT``
    are resolved to the first instruction after the block (jump offsets count from the next
    instruction, bpf(2) / instruction-set.rst).
    """
    program = bytearray()
    for code, dst, src, off, imm in _prologue():
        program += insn(code, dst, src, off, imm)
    for rule in reversed(rules):
        block = _rule_block(*normalize_rule(rule))
        for index, (code, dst, src, off, imm) in enumerate(block):
            if off is NEXT:
                off = len(block) - index - 1
            program += insn(code, dst, src, off, imm)
    program += insn(ALU_MOV_K, R0, imm=0) + insn(JMP_EXIT)
    return bytes(program)


def instruction_count(program: bytes) -> int:
    return len(program) // INSN_SIZE


# ---------------------------------------------------------------- kernel side

LICENSE = b"GPL\0"      # cgroup device programs call no GPL-only helper; GPL is what crun uses
LOG_SIZE = 1 << 16
ATTR_SIZE = 128         # bytes of union bpf_attr we pass; the kernel wants the unused tail zeroed


def _attr(kernel_ffi, fields: list[tuple[int, str, int]]):
    """A zeroed ``union bpf_attr`` buffer with ``(offset, struct format, value)`` fields set."""
    buf = kernel_ffi.new("char[]", ATTR_SIZE)
    view = kernel_ffi.buffer(buf)
    for offset, fmt, value in fields:
        struct.pack_into("<" + fmt, view, offset, value)
    return buf


def load_program(kernel, program: bytes, *, explain: Callable[[str], None] | None = None,
                 name: str = "minictr_devices") -> int:
    """BPF_PROG_LOAD the program; return its fd.

    ``union bpf_attr`` for BPF_PROG_LOAD (bpf(2)): prog_type@0 insn_cnt@4 insns@8 license@16
    log_level@24 log_size@28 log_buf@32 kern_version@40 prog_flags@44 prog_name[16]@48
    prog_ifindex@64 expected_attach_type@68. Loaded first without a log; on failure loaded again
    with log_level 1 so the error can carry the verifier's log (as libbpf does).
    """
    from minictr.runtime import syscalls

    ffi = syscalls.ffi
    insns = ffi.from_buffer(program)
    license_ = ffi.from_buffer(LICENSE)
    log = ffi.new("char[]", LOG_SIZE)

    def attempt(log_level: int) -> int:
        fields = [(0, "I", syscalls.BPF_PROG_TYPE_CGROUP_DEVICE),
                  (4, "I", instruction_count(program)),
                  (8, "Q", int(ffi.cast("uintptr_t", insns))),
                  (16, "Q", int(ffi.cast("uintptr_t", license_))),
                  (68, "I", syscalls.BPF_CGROUP_DEVICE)]
        if log_level:
            fields += [(24, "I", log_level), (28, "I", LOG_SIZE),
                       (32, "Q", int(ffi.cast("uintptr_t", log)))]
        attr = _attr(ffi, fields)
        ffi.buffer(attr)[48:48 + min(len(name), 15)] = name.encode()[:15]
        return kernel.bpf(syscalls.BPF_PROG_LOAD, attr, ATTR_SIZE)

    try:
        fd = attempt(0)
    except OSError as first:
        try:
            fd = attempt(1)             # a transient failure may pass the second time: keep it
        except OSError:
            # one line, as every error a user sees
            lines = ffi.string(log).decode(errors="replace").splitlines()
            verifier_log = " | ".join(line for line in lines if line.strip())
            raise RuntimeSetupError(
                f"cannot load the eBPF device filter: {first.strerror or first}"
                + (f"; verifier log: {verifier_log}" if verifier_log else ""),
                hint=hint_for("bpf", first.errno)) from first
    if explain:
        explain(f"bpf(BPF_PROG_LOAD, BPF_PROG_TYPE_CGROUP_DEVICE, {instruction_count(program)} "
                f"instructions, license GPL) = fd {fd}")
    return fd


def attach(kernel, cgroup_fd: int, prog_fd: int, *, cgroup_path: str = "?",
           explain: Callable[[str], None] | None = None) -> None:
    """BPF_PROG_ATTACH(BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI): target_fd@0 attach_bpf_fd@4
    attach_type@8 attach_flags@12. ALLOW_MULTI lets programs of ancestors (systemd's) keep
    running too: a device is allowed only if every program on the path allows it."""
    from minictr.runtime import syscalls

    attr = _attr(syscalls.ffi, [(0, "I", cgroup_fd), (4, "I", prog_fd),
                                (8, "I", syscalls.BPF_CGROUP_DEVICE),
                                (12, "I", syscalls.BPF_F_ALLOW_MULTI)])
    try:
        kernel.bpf(syscalls.BPF_PROG_ATTACH, attr, ATTR_SIZE)
    except OSError as err:
        raise RuntimeSetupError(f"cannot attach the eBPF device filter to {cgroup_path}: "
                                f"{err.strerror or err}", hint=hint_for("bpf", err.errno)) from err
    if explain:
        explain(f"bpf(BPF_PROG_ATTACH, {cgroup_path}, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)")


def detach(kernel, cgroup_fd: int, prog_fd: int) -> None:
    """BPF_PROG_DETACH of exactly the program we attached (attach_bpf_fd names it); programs
    someone else attached to the same cgroup are never touched."""
    from minictr.runtime import syscalls

    attr = _attr(syscalls.ffi, [(0, "I", cgroup_fd), (4, "I", prog_fd),
                                (8, "I", syscalls.BPF_CGROUP_DEVICE)])
    kernel.bpf(syscalls.BPF_PROG_DETACH, attr, ATTR_SIZE)


def query_programs(kernel, cgroup_fd: int, max_count: int = 64) -> list[int]:
    """BPF_PROG_QUERY: ids of the device programs attached to this cgroup itself.
    Layout: target_fd@0 attach_type@4 query_flags@8 attach_flags@12 prog_ids@16 prog_cnt@24."""
    from minictr.runtime import syscalls

    ffi = syscalls.ffi
    ids = ffi.new("unsigned int[]", max_count)
    attr = _attr(ffi, [(0, "I", cgroup_fd), (4, "I", syscalls.BPF_CGROUP_DEVICE),
                       (16, "Q", int(ffi.cast("uintptr_t", ids))), (24, "I", max_count)])
    kernel.bpf(syscalls.BPF_PROG_QUERY, attr, ATTR_SIZE)
    count = struct.unpack_from("<I", ffi.buffer(attr), 24)[0]
    return [ids[i] for i in range(min(count, max_count))]


def open_cgroup_dir(kernel, path: str) -> int:
    """The fd BPF_PROG_ATTACH takes as target: the cgroup v2 directory itself."""
    return kernel.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
