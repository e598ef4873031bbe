"""compile_rules: the program's verdicts, run through tests/unit/bpf_interp.py."""
import pytest

from minictr.errors import SpecError
from minictr.runtime import bpf_devices as bd
import bpf_interp

C, B = bd.BPF_DEVCG_DEV_CHAR, bd.BPF_DEVCG_DEV_BLOCK
M, R, W = bd.BPF_DEVCG_ACC_MKNOD, bd.BPF_DEVCG_ACC_READ, bd.BPF_DEVCG_ACC_WRITE


def verdict(rules, dev_type, major, minor, access):
    return bpf_interp.run(bd.compile_rules(rules), (access << 16) | dev_type, major, minor)


def rule(allow, kind="a", major=None, minor=None, access="rwm"):
    return {"allow": allow, "type": kind, "major": major, "minor": minor, "access": access}


DENY_ALL = rule(False)
DOCKERISH = [DENY_ALL, rule(True, "c", 1, 3), rule(True, "c", 1, 5, "rw"),
             rule(True, "c", 136, None, "rw"), rule(True, "c", None, None, "m"),
             rule(True, "b", None, None, "m")]

CASES = [
    # (rules, type, major, minor, access, allowed)
    ([], C, 1, 3, R, 0),                                  # default deny
    ([DENY_ALL], C, 1, 3, R, 0),
    ([rule(True)], C, 1, 3, R | W | M, 1),                # allow everything
    ([rule(True)], B, 8, 0, R, 1),
    (DOCKERISH, C, 1, 3, R | W, 1),                       # /dev/null
    (DOCKERISH, C, 1, 3, M, 1),
    (DOCKERISH, C, 1, 5, R | W, 1),                       # /dev/zero rw
    (DOCKERISH, C, 1, 5, R, 1),
    (DOCKERISH, C, 1, 5, W, 1),
    (DOCKERISH, C, 1, 4, R, 0),                           # /dev/port: no rule
    (DOCKERISH, B, 1, 3, R, 0),                           # right numbers, wrong type
    (DOCKERISH, C, 136, 7, R | W, 1),                     # minor wildcard: any pts
    (DOCKERISH[:4], C, 136, 7, M, 0),                     # ...but not mknod: partial access
    (DOCKERISH, C, 250, 1, M, 1),                         # mknod of any char device
    (DOCKERISH, C, 250, 1, R, 0),                         # ...but not opening it
    (DOCKERISH, C, 250, 1, R | M, 0),
    (DOCKERISH, B, 8, 0, M, 1),
    (DOCKERISH, B, 8, 0, R | W, 0),
    # ordering: a later rule overrides an earlier one
    ([rule(True, "c", 1, 3), rule(False, "c", 1, 3)], C, 1, 3, R, 0),
    ([rule(False, "c", 1, 3), rule(True, "c", 1, 3)], C, 1, 3, R, 1),
    ([rule(True), rule(False, "c", 1, None)], C, 1, 9, R, 0),   # deny list punches a hole
    ([rule(True), rule(False, "c", 1, None)], C, 2, 9, R, 1),
    ([rule(True), rule(False, "c", 1, None)], B, 1, 9, R, 1),
    # per-bit: a later deny of one bit only takes that bit
    ([rule(True, "c", 1, 3), rule(False, "c", 1, 3, "w")], C, 1, 3, R, 1),
    ([rule(True, "c", 1, 3), rule(False, "c", 1, 3, "w")], C, 1, 3, R | W, 0),
    ([rule(True, "c", 1, 3), rule(False, "c", 1, 3, "w")], C, 1, 3, M, 1),
    # access bits granted by two separate rules combine
    ([rule(True, "c", 1, 3, "r"), rule(True, "c", 1, 3, "w")], C, 1, 3, R | W, 1),
    ([rule(True, "c", 1, 3, "r"), rule(True, "c", 1, 3, "w")], C, 1, 3, R | W | M, 0),
    # an allow later than a deny-all wins again only for what it names
    ([rule(True), DENY_ALL, rule(True, "b", 7, None, "r")], B, 7, 0, R, 1),
    ([rule(True), DENY_ALL, rule(True, "b", 7, None, "r")], B, 7, 0, W, 0),
    ([rule(True), DENY_ALL, rule(True, "b", 7, None, "r")], C, 7, 0, R, 0),
    # major wildcard, minor fixed
    ([rule(True, "c", None, 0, "r")], C, 99, 0, R, 1),
    ([rule(True, "c", None, 0, "r")], C, 99, 1, R, 0),
]


@pytest.mark.parametrize("rules, dev_type, major, minor, access, allowed", CASES)
def test_verdicts(rules, dev_type, major, minor, access, allowed):
    assert verdict(rules, dev_type, major, minor, access) == allowed


def test_wildcards_skip_compares():
    one = bd.instruction_count(bd.compile_rules([rule(True, "c", 1, 3)]))
    wild = bd.instruction_count(bd.compile_rules([rule(True)]))
    assert one - wild == 3                      # type, major and minor compares are skipped


def test_program_shape():
    program = bd.compile_rules(DOCKERISH)
    insns = bpf_interp.decode(program)
    assert insns[-1][0] == bd.JMP_EXIT and insns[-2][:1] == (bd.ALU_MOV_K,) and insns[-2][4] == 0
    assert bd.instruction_count(program) == len(insns)


def test_unset_fields_mean_any_and_rwm():
    assert verdict([{"allow": True}], B, 8, 1, R | W | M) == 1
    assert verdict([{"allow": True, "type": "c", "major": -1, "minor": -1}], C, 5, 5, M) == 1


@pytest.mark.parametrize("bad", [
    {"type": "c"},                                  # allow missing
    {"allow": True, "type": "x"},
    {"allow": True, "access": "rx"},
    {"allow": True, "major": -5},
    {"allow": True, "minor": "3"},
])
def test_bad_rules_raise(bad):
    with pytest.raises(SpecError):
        bd.compile_rules([bad])


def test_describe_rule():
    assert bd.describe_rule(rule(True, "c", 1, 3)) == "allow c 1:3 rwm"
    assert bd.describe_rule({"allow": False}) == "deny a *:* rwm"
