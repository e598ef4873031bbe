"""linux.seccomp -> BPF through libseccomp, checked by running the bytes in tests/unit/
seccomp_interp.py as the kernel would, plus the checks that refuse what cannot be honoured and
the on-disk cache."""
import copy
import errno
import os
import subprocess
import sys

import pytest

from minictr.errors import SpecError
from minictr.runtime import seccomp, seccomp_cache
from minictr.spec import defaults
from minictr.spec.seccomp import resolve_profile
from minictr.spec.seccomp_default import DEFAULT_PROFILE
from tests.unit import seccomp_interp as interp
from tests.unit.seccomp_interp import AUDIT_ARCH_AARCH64, AUDIT_ARCH_I386, AUDIT_ARCH_X86_64

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64",
                                reason="syscall numbers and arches below are x86-64's")

_, LIB = seccomp._libseccomp()
X32_BIT = 0x40000000
CLONE_NEWUSER, SIGCHLD = 0x10000000, 17


def nr(name: str, token=None) -> int:
    n = LIB.seccomp_syscall_resolve_name_arch(token or LIB.SCMP_ARCH_X86_64, name.encode())
    assert n >= 0, name
    return n


def default_spec(caps=defaults.DEFAULT_CAPABILITIES) -> dict:
    return resolve_profile(DEFAULT_PROFILE, caps=caps, arch="amd64", kernel=(6, 1))


@pytest.fixture(scope="module")
def default_bpf() -> bytes:
    return seccomp.compile_filter(default_spec()).bpf


def call(bpf, name_or_nr, *args, arch=AUDIT_ARCH_X86_64):
    n = nr(name_or_nr) if isinstance(name_or_nr, str) else name_or_nr
    return interp.verdict(interp.run(bpf, n, arch, args))


ALLOW = ("ALLOW", 0)
EPERM = ("ERRNO", errno.EPERM)
ENOSYS = ("ERRNO", errno.ENOSYS)


# ---------------------------------------------------------------- the default profile


@pytest.mark.parametrize("name", ["read", "write", "getpid", "execve", "openat", "mmap", "futex",
                                  "arch_prctl", "rt_sigreturn", "wait4", "close_range"])
def test_default_allows_ordinary_calls(default_bpf, name):
    assert call(default_bpf, name) == ALLOW


@pytest.mark.parametrize("name", ["io_uring_setup", "io_uring_enter", "io_uring_register",
                                  "perf_event_open", "add_key", "keyctl", "request_key",
                                  "kexec_load", "unshare", "setns", "mount", "bpf", "kcmp",
                                  "open_by_handle_at", "pivot_root", "userfaultfd", "reboot"])
def test_default_denies_with_eperm(default_bpf, name):
    assert call(default_bpf, name) == EPERM


def test_clone3_answers_enosys_so_glibc_falls_back_to_clone(default_bpf):
    assert call(default_bpf, "clone3") == ENOSYS


def test_clone_without_namespace_flags_only(default_bpf):
    assert call(default_bpf, "clone", SIGCHLD) == ALLOW
    assert call(default_bpf, "clone", SIGCHLD | CLONE_NEWUSER) == EPERM
    assert call(default_bpf, "clone", 0x00020000) == EPERM          # CLONE_NEWNS


@pytest.mark.parametrize("family,verdict", [(1, ALLOW), (2, ALLOW), (10, ALLOW), (11, ALLOW),
                                            (16, ALLOW), (17, ALLOW), (45, ALLOW),
                                            (0, ALLOW),       # AF_UNSPEC: the kernel refuses it
                                            (12, EPERM), (38, EPERM), (40, EPERM), (46, EPERM),
                                            (2**32 + 2, EPERM)])
def test_socket_families(default_bpf, family, verdict):
    """AF_ALG (38), AF_VSOCK (40) and removed families are denied; arguments are compared on
    all 64 bits, so 2**32+2 is not AF_INET."""
    assert call(default_bpf, "socket", family, 1, 0) == verdict


def test_personality_values(default_bpf):
    for value in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF):
        assert call(default_bpf, "personality", value) == ALLOW
    assert call(default_bpf, "personality", 0x0040000) == EPERM     # ADDR_NO_RANDOMIZE


def test_capabilities_open_groups():
    caps = [*defaults.DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN", "CAP_PERFMON"]
    bpf = seccomp.compile_filter(default_spec(caps)).bpf
    assert call(bpf, "unshare", CLONE_NEWUSER) == ALLOW
    assert call(bpf, "clone", SIGCHLD | CLONE_NEWUSER) == ALLOW
    assert call(bpf, "clone3") == ALLOW
    assert call(bpf, "perf_event_open") == ALLOW
    assert call(bpf, "io_uring_setup") == EPERM


def test_syscalls_newer_than_the_profile_get_enosys():
    compiled = seccomp.compile_filter(default_spec())
    last = dict(compiled.enosys_above)
    top = last[LIB.SCMP_ARCH_X86_64]
    assert top >= nr("clone3")
    assert call(compiled.bpf, top + 1) == ENOSYS
    assert call(compiled.bpf, 1000) == ENOSYS
    assert call(compiled.bpf, nr("kexec_load")) == EPERM        # older, not in the profile
    # i386 has its own numbering and its own threshold
    assert interp.verdict(interp.run(compiled.bpf, last[LIB.SCMP_ARCH_X86] + 1,
                                     AUDIT_ARCH_I386)) == ENOSYS
    assert interp.verdict(interp.run(compiled.bpf, nr("getpid", LIB.SCMP_ARCH_X86),
                                     AUDIT_ARCH_I386)) == ALLOW


def test_x32_calls_are_told_apart_by_the_x32_bit(default_bpf):
    assert call(default_bpf, nr("getpid", LIB.SCMP_ARCH_X32)) == ALLOW
    assert call(default_bpf, nr("kexec_load", LIB.SCMP_ARCH_X32)) == EPERM


def test_an_architecture_not_in_the_filter_is_killed(default_bpf):
    action, _ = interp.verdict(interp.run(default_bpf, 172, AUDIT_ARCH_AARCH64))
    assert action == "KILL_THREAD"          # libseccomp's default bad-arch action


def test_no_stub_when_the_default_allows():
    spec = {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO"}]}
    compiled = seccomp.compile_filter(spec)
    assert compiled.enosys_above == ()
    assert call(compiled.bpf, "getpid") == EPERM
    assert call(compiled.bpf, 1000) == ALLOW


# ---------------------------------------------------------------- actions, operators, flags


def one_rule(action="SCMP_ACT_ALLOW", args=None, default="SCMP_ACT_ERRNO", **extra) -> dict:
    rule = {"names": ["getpid"], "action": action, **extra}
    if args is not None:
        rule["args"] = args
    return {"defaultAction": default, "syscalls": [rule]}


@pytest.mark.parametrize("action,extra,verdict", [
    ("SCMP_ACT_KILL", {}, ("KILL_THREAD", 0)),
    ("SCMP_ACT_KILL_THREAD", {}, ("KILL_THREAD", 0)),
    ("SCMP_ACT_KILL_PROCESS", {}, ("KILL_PROCESS", 0)),
    ("SCMP_ACT_TRAP", {}, ("TRAP", 0)),
    ("SCMP_ACT_ERRNO", {}, EPERM),
    ("SCMP_ACT_ERRNO", {"errnoRet": errno.EACCES}, ("ERRNO", errno.EACCES)),
    ("SCMP_ACT_TRACE", {"errnoRet": 7}, ("TRACE", 7)),
    ("SCMP_ACT_LOG", {}, ("LOG", 0)),
])
def test_every_action(action, extra, verdict):
    bpf = seccomp.compile_filter(one_rule(action, default="SCMP_ACT_ALLOW", **extra)).bpf
    assert call(bpf, "getpid") == verdict


def test_default_errno_ret():
    spec = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.EACCES, "syscalls": []}
    assert call(seccomp.compile_filter(spec).bpf, "getpid") == ("ERRNO", errno.EACCES)


BIG = 0x1_0000_0005


@pytest.mark.parametrize("op,value,value_two,allowed,denied", [
    ("SCMP_CMP_NE", 5, 0, [4, 6, BIG], [5]),
    ("SCMP_CMP_LT", 5, 0, [0, 4], [5, 6, BIG]),
    ("SCMP_CMP_LE", 5, 0, [4, 5], [6, BIG]),
    ("SCMP_CMP_EQ", BIG, 0, [BIG], [5, BIG + 1]),
    ("SCMP_CMP_GE", 5, 0, [5, 6, BIG], [4]),
    ("SCMP_CMP_GT", 5, 0, [6, BIG], [4, 5]),
    ("SCMP_CMP_MASKED_EQ", 0xF0, 0x30, [0x30, 0x3F, 0x130], [0x20, 0xF0]),
])
def test_every_operator_on_64_bits(op, value, value_two, allowed, denied):
    spec = one_rule(args=[{"index": 2, "value": value, "valueTwo": value_two, "op": op}])
    bpf = seccomp.compile_filter(spec).bpf
    for v in allowed:
        assert call(bpf, "getpid", 0, 0, v) == ALLOW, hex(v)
    for v in denied:
        assert call(bpf, "getpid", 0, 0, v) == EPERM, hex(v)


def test_distinct_argument_indexes_are_anded():
    spec = one_rule(args=[{"index": 0, "value": 2, "op": "SCMP_CMP_EQ"},
                          {"index": 1, "value": 1, "op": "SCMP_CMP_EQ"}])
    bpf = seccomp.compile_filter(spec).bpf
    assert call(bpf, "getpid", 2, 1) == ALLOW
    assert call(bpf, "getpid", 2, 2) == EPERM
    assert call(bpf, "getpid", 3, 1) == EPERM


def test_a_repeated_index_makes_one_rule_per_condition_ored():
    """runc's and crun's reading (moby's socket rules rely on it)."""
    spec = one_rule(args=[{"index": 0, "value": 2, "op": "SCMP_CMP_EQ"},
                          {"index": 0, "value": 10, "op": "SCMP_CMP_EQ"}])
    bpf = seccomp.compile_filter(spec).bpf
    assert call(bpf, "getpid", 2) == ALLOW
    assert call(bpf, "getpid", 10) == ALLOW
    assert call(bpf, "getpid", 3) == EPERM


def test_flags():
    spec = one_rule()
    spec["flags"] = ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                     "SECCOMP_FILTER_FLAG_LOG"]
    assert seccomp.compile_filter(spec).flags == (seccomp.FLAGS["SECCOMP_FILTER_FLAG_TSYNC"]
                                                  | seccomp.FLAGS["SECCOMP_FILTER_FLAG_SPEC_ALLOW"]
                                                  | seccomp.FLAGS["SECCOMP_FILTER_FLAG_LOG"])


# ---------------------------------------------------------------- refusing what cannot be honoured


@pytest.mark.parametrize("mutate,words", [
    (lambda s: s.update(defaultAction="SCMP_ACT_NOTIFY"), "SCMP_ACT_NOTIFY"),
    (lambda s: s["syscalls"][0].update(action="SCMP_ACT_NOTIFY"), "SCMP_ACT_NOTIFY"),
    (lambda s: s.update(listenerPath="/run/agent.sock"), "listenerPath"),
    (lambda s: s.update(flags=["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]), "WAIT_KILLABLE_RECV"),
    (lambda s: s.update(flags=["SECCOMP_FILTER_FLAG_BOGUS"]), "SECCOMP_FILTER_FLAG_BOGUS"),
    (lambda s: s.update(defaultAction="SCMP_ACT_MAYBE"), "SCMP_ACT_MAYBE"),
    (lambda s: s["syscalls"][0].update(errnoRet=5), "errnoRet"),
    (lambda s: s.update(defaultErrnoRet=70000), "defaultErrnoRet"),
    (lambda s: s["syscalls"][0].update(args=[{"index": 0, "value": 1, "op": "SCMP_CMP_SIMILAR"}]),
     "SCMP_CMP_SIMILAR"),
    (lambda s: s["syscalls"][0].update(args=[{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]),
     "index"),
    (lambda s: s["syscalls"][0].update(args=[{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]),
     "value"),
    (lambda s: s["syscalls"][0].update(comment="x"), "comment"),
    (lambda s: s.update(archMap=[]), "archMap"),
    (lambda s: s.update(architectures=["SCMP_ARCH_PDP11"]), "SCMP_ARCH_PDP11"),
    (lambda s: s["syscalls"][0].update(names=[]), "names"),
])
def test_refuses_what_it_cannot_honour(mutate, words):
    spec = one_rule()
    mutate(spec)
    with pytest.raises(SpecError, match=words):
        seccomp.compile_filter(spec)


def test_unknown_syscall_names_are_reported_not_fatal():
    spec = one_rule()
    spec["syscalls"][0]["names"] = ["getpid", "no_such_syscall"]
    compiled = seccomp.compile_filter(spec)
    assert compiled.unknown_syscalls == ("no_such_syscall",)
    assert call(compiled.bpf, "getpid") == ALLOW


def test_a_syscall_of_another_architecture_is_not_unknown():
    """chown32 exists on i386 only: in an x86-64-only filter it is skipped, not reported."""
    spec = one_rule()
    spec["syscalls"][0]["names"] = ["getpid", "chown32"]
    assert seccomp.compile_filter(spec).unknown_syscalls == ()


def test_a_rule_without_conditions_decides_its_syscall_and_is_reported():
    """libseccomp's (and so runc's and crun's) reading: the first rule without argument
    conditions wins over later ones and over conditional ones; the losers are reported."""
    spec = {"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
                         {"names": ["getpid"], "action": "SCMP_ACT_KILL"},
                         {"names": ["getpid"], "action": "SCMP_ACT_TRAP",
                          "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
                         {"names": ["getppid"], "action": "SCMP_ACT_ALLOW"},
                         {"names": ["getppid"], "action": "SCMP_ACT_ALLOW"}]}
    compiled = seccomp.compile_filter(spec)
    assert compiled.overridden == ("getpid",)
    assert call(compiled.bpf, "getpid", 1) == ALLOW
    assert call(compiled.bpf, "getppid") == ALLOW


def test_a_rule_that_repeats_the_default_overrides_nothing():
    """runc and crun never hand libseccomp a rule whose action is the default's."""
    spec = {"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO"},
                         {"names": ["getpid"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]}]}
    compiled = seccomp.compile_filter(spec)
    assert compiled.overridden == ()
    assert call(compiled.bpf, "getpid", 1) == ALLOW
    assert call(compiled.bpf, "getpid", 2) == EPERM


def test_conditional_rules_with_the_same_arguments_must_agree():
    args = [{"index": 0, "value": 16, "op": "SCMP_CMP_EQ"}]
    spec = {"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ALLOW", "args": args},
                         {"names": ["getpid"], "action": "SCMP_ACT_KILL", "args": args}]}
    with pytest.raises(SpecError, match="getpid"):
        seccomp.compile_filter(spec)


def test_pseudo_code_lists_the_rules():
    text = seccomp.pseudo_code(one_rule())
    assert 'filter for syscall "getpid"' in text


def test_describe():
    assert seccomp.describe(default_spec()).startswith("seccomp: default SCMP_ACT_ERRNO(1), ")


def test_podmans_profile_compiles_too():
    path = "/usr/share/containers/seccomp.json"
    if not os.path.exists(path):
        pytest.skip(f"{path} not installed (golang-github-containers-common)")
    from minictr.spec.seccomp import parse_profile

    with open(path, "rb") as f:
        profile = parse_profile(f.read(), path)
    spec = resolve_profile(profile, caps=defaults.DEFAULT_CAPABILITIES, arch="amd64",
                           kernel=(6, 1))
    bpf = seccomp.compile_filter(spec).bpf
    assert call(bpf, "getpid") == ALLOW
    assert call(bpf, "kexec_load") == EPERM


# ---------------------------------------------------------------- the cache


def test_cache_roundtrip_and_a_hit_loads_no_libseccomp(tmp_path):
    cache = str(tmp_path / "cache")
    spec = default_spec()
    first = seccomp_cache.cached_filter(spec, cache)
    assert first == seccomp.compile_filter(spec)
    entries = [n for n in os.listdir(cache) if n.endswith(".bpf")]
    assert len(entries) == 1 and os.stat(cache).st_mode & 0o777 == 0o700
    code = ("import json, sys; from minictr.runtime import seccomp_cache; "
            f"c = seccomp_cache.cached_filter(json.loads(sys.stdin.read()), {cache!r}); "
            "print(len(c.bpf), 'minictr._seccomp' in sys.modules)")
    import json

    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(spec), text=True,
                         capture_output=True, check=True).stdout.split()
    assert out == [str(len(first.bpf)), "False"]
    other = copy.deepcopy(spec)
    other["defaultErrnoRet"] = errno.EACCES
    seccomp_cache.cached_filter(other, cache)
    assert len([n for n in os.listdir(cache) if n.endswith(".bpf")]) == 2


def test_cache_recompiles_a_damaged_entry(tmp_path):
    cache = str(tmp_path / "cache")
    spec = one_rule()
    good = seccomp_cache.cached_filter(spec, cache)
    (entry,) = [os.path.join(cache, n) for n in os.listdir(cache) if n.endswith(".bpf")]
    with open(entry, "r+b") as f:
        f.truncate(os.path.getsize(entry) - 3)
    assert seccomp_cache.cached_filter(spec, cache) == good


def test_cache_ignores_a_directory_others_can_write(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o777)
    os.chmod(cache, 0o777)
    compiled = seccomp_cache.cached_filter(one_rule(), str(cache))
    assert compiled.bpf and os.listdir(cache) == []
