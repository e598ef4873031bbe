"""A tiny eBPF interpreter: just the instructions a BPF_PROG_TYPE_CGROUP_DEVICE filter needs.

It runs the bytes ``bpf_devices.compile_rules`` produces against a ``struct bpf_cgroup_dev_ctx``
(access_type, major, minor), as the kernel would. Anything it does not know raises, so a
compiler bug cannot hide behind a permissive interpreter. Semantics: Documentation/bpf/
instruction-set.rst (ALU is 32-bit and zero-extends; jump offsets count from the next insn).
"""
from __future__ import annotations

import struct

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF


def decode(program: bytes) -> list[tuple[int, int, int, int, int]]:
    if len(program) % 8:
        raise ValueError("program length is not a multiple of 8")
    out = []
    for i in range(0, len(program), 8):
        code, regs, off, imm = struct.unpack_from("<BBhi", program, i)
        out.append((code, regs & 0xF, regs >> 4, off, imm))
    return out


def run(program: bytes, access_type: int, major: int, minor: int, max_steps: int = 100_000) -> int:
    ctx = struct.pack("<III", access_type, major, minor)
    insns = decode(program)
    regs = [0] * 11
    regs[1] = -1                   # the ctx pointer: only usable as a LDX base
    pc = steps = 0
    while True:
        steps += 1
        if steps > max_steps or not 0 <= pc < len(insns):
            raise RuntimeError(f"pc {pc} out of the program or too many steps")
        code, dst, src, off, imm = insns[pc]
        pc += 1
        if code == 0x61:           # ldx w
            if regs[src] != -1 or off not in (0, 4, 8):
                raise RuntimeError(f"bad ctx load r{src}+{off}")
            regs[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif code == 0x54:         # and32 imm
            regs[dst] = (regs[dst] & imm) & MASK32
        elif code == 0x74:         # rsh32 imm
            regs[dst] = (regs[dst] & MASK32) >> imm
        elif code == 0xB4:         # mov32 imm
            regs[dst] = imm & MASK32
        elif code == 0xBC:         # mov32 reg
            regs[dst] = regs[src] & MASK32
        elif code == 0x15:         # jeq imm (64-bit compare, imm sign-extended)
            if regs[dst] & MASK64 == imm & MASK64:
                pc += off
        elif code == 0x55:         # jne imm
            if regs[dst] & MASK64 != imm & MASK64:
                pc += off
        elif code == 0x95:         # exit
            return regs[0]
        else:
            raise RuntimeError(f"opcode {code:#x} not known to the test interpreter")
