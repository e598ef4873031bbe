"""A tiny classic-BPF interpreter for seccomp programs: runs the bytes
``runtime.seccomp.compile_filter`` makes against one ``struct seccomp_data``, as the kernel would
(Documentation/networking/filter.rst; kernel/seccomp.c checks loads to be 32-bit, aligned and
inside seccomp_data). Only what libseccomp and the ENOSYS stub emit is known; anything else
raises, so a compiler bug cannot hide behind a permissive interpreter.
"""
from __future__ import annotations

import struct

M32 = 0xFFFFFFFF

# include/uapi/linux/seccomp.h: SECCOMP_RET_* (action in the high 16 bits, data in the low)
RET_KILL_PROCESS = 0x80000000
RET_KILL_THREAD = 0x00000000
RET_TRAP = 0x00030000
RET_ERRNO = 0x00050000
RET_TRACE = 0x7FF00000
RET_LOG = 0x7FFC0000
RET_ALLOW = 0x7FFF0000
ACTION_FULL = 0xFFFF0000
NAMES = {RET_KILL_PROCESS: "KILL_PROCESS", RET_KILL_THREAD: "KILL_THREAD", RET_TRAP: "TRAP",
         RET_ERRNO: "ERRNO", RET_TRACE: "TRACE", RET_LOG: "LOG", RET_ALLOW: "ALLOW"}

# include/uapi/linux/audit.h
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7


def seccomp_data(nr: int, arch: int, args=(), ip: int = 0) -> bytes:
    """struct seccomp_data { int nr; u32 arch; u64 instruction_pointer; u64 args[6]; }"""
    full = list(args) + [0] * (6 - len(args))
    return struct.pack("=iIQ6Q", nr, arch, ip, *[a & 0xFFFFFFFFFFFFFFFF for a in full])


def run(program: bytes, nr: int, arch: int = AUDIT_ARCH_X86_64, args=(),
        max_steps: int = 100_000) -> int:
    """The filter's 32-bit return value for this system call."""
    data = seccomp_data(nr, arch, args)
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    if len(program) % 8 or not insns:
        raise ValueError("not a whole number of instructions")
    a = x = 0
    mem = [0] * 16
    pc = steps = 0
    while True:
        steps += 1
        if steps > max_steps or not 0 <= pc < len(insns):
            raise RuntimeError(f"pc {pc} ran off the program")
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:                                   # ld [k]   (BPF_LD|BPF_W|BPF_ABS)
            if k % 4 or k + 4 > len(data):
                raise RuntimeError(f"bad load offset {k}")
            a = struct.unpack_from("=I", data, k)[0]
        elif code == 0x00:                                 # ld #k
            a = k
        elif code == 0x01:                                 # ldx #k
            x = k
        elif code == 0x60:                                 # ld M[k]
            a = mem[k]
        elif code == 0x61:                                 # ldx M[k]
            x = mem[k]
        elif code == 0x02:                                 # st M[k]
            mem[k] = a
        elif code == 0x03:                                 # stx M[k]
            mem[k] = x
        elif code == 0x54:                                 # and #k
            a &= k
        elif code == 0x44:                                 # or #k
            a = (a | k) & M32
        elif code == 0x07:                                 # tax
            x = a
        elif code == 0x87:                                 # txa
            a = x
        elif code == 0x05:                                 # ja +k
            pc += k
        elif code in (0x15, 0x25, 0x35, 0x45, 0x1D, 0x2D, 0x3D, 0x4D):
            src = x if code & 0x08 else k
            op = code & 0xF0
            taken = {0x10: a == src, 0x20: a > src, 0x30: a >= src, 0x40: bool(a & src)}[op]
            pc += jt if taken else jf
        elif code == 0x06:                                 # ret #k
            return k
        elif code == 0x16:                                 # ret a
            return a
        else:
            raise RuntimeError(f"opcode {code:#x} unknown to this interpreter")


def verdict(value: int) -> tuple[str, int]:
    """("ERRNO", 1), ("ALLOW", 0)... from a filter's return value."""
    return NAMES.get(value & ACTION_FULL, hex(value & ACTION_FULL)), value & 0xFFFF
