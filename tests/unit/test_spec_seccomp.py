"""Docker-format profiles resolved into linux.seccomp (dockerd's setupSeccomp), and
--security-opt. Pure: arch, kernel version and capabilities are arguments."""
import errno
import json

import pytest

from minictr.errors import SpecError
from minictr.spec import defaults, security
from minictr.spec.builder import build_spec
from minictr.spec.options import RunOptions
from minictr.spec.seccomp import host_arch, kernel_version, parse_profile, resolve_profile
from minictr.spec.seccomp_default import DEFAULT_PROFILE, SOCKET_FAMILIES

CAPS = defaults.DEFAULT_CAPABILITIES


def resolved(caps=CAPS, arch="amd64", kernel=(6, 1), profile=DEFAULT_PROFILE):
    return resolve_profile(profile, caps=caps, arch=arch, kernel=kernel)


def allowed(spec) -> set[str]:
    """Syscalls some rule allows (with or without argument conditions)."""
    return {n for r in spec["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}


def rules_for(spec, name) -> list[dict]:
    return [r for r in spec["syscalls"] if name in r["names"]]


def test_default_profile_shape():
    spec = resolved()
    assert spec["defaultAction"] == "SCMP_ACT_ERRNO"
    assert spec["defaultErrnoRet"] == errno.EPERM
    assert spec["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert "archMap" not in spec
    assert all(set(r) <= {"names", "action", "errnoRet", "args"} for r in spec["syscalls"])


@pytest.mark.parametrize("name", ["io_uring_setup", "io_uring_enter", "io_uring_register",
                                  "perf_event_open", "add_key", "keyctl", "request_key",
                                  "unshare", "mount", "setns", "bpf", "kexec_load",
                                  "open_by_handle_at", "clone3", "reboot", "init_module"])
def test_default_caps_do_not_allow(name):
    assert name not in allowed(resolved())


def test_clone_only_without_namespace_flags_and_clone3_enosys():
    spec = resolved()
    (clone,) = rules_for(spec, "clone")
    assert clone["args"] == [{"index": 0, "value": 0x7E020000, "valueTwo": 0,
                              "op": "SCMP_CMP_MASKED_EQ"}]
    (clone3,) = rules_for(spec, "clone3")
    assert clone3 == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}


def test_cap_sys_admin_opens_its_group_and_drops_the_clone_filters():
    spec = resolved([*CAPS, "CAP_SYS_ADMIN"])
    assert {"unshare", "mount", "setns", "clone3", "bpf", "perf_event_open"} <= allowed(spec)
    assert [r.get("args") for r in rules_for(spec, "clone")] == [None]
    assert all(r["action"] == "SCMP_ACT_ALLOW" for r in rules_for(spec, "clone3"))


@pytest.mark.parametrize("cap,names", [("CAP_PERFMON", {"perf_event_open"}), ("CAP_BPF", {"bpf"}),
                                       ("CAP_SYS_PTRACE", {"kcmp", "pidfd_getfd"}),
                                       ("CAP_SYS_MODULE", {"init_module", "finit_module"}),
                                       ("CAP_SYS_TIME", {"settimeofday", "clock_settime"}),
                                       ("CAP_SYS_NICE", {"mbind", "set_mempolicy"}),
                                       ("CAP_DAC_READ_SEARCH", {"open_by_handle_at"}),
                                       ("CAP_SYS_CHROOT", {"chroot"})])
def test_capability_groups(cap, names):
    caps = [c for c in CAPS if c != cap]
    assert not names & allowed(resolved(caps))
    assert names <= allowed(resolved([*caps, cap]))


def test_arch_groups():
    amd64, arm64 = resolved(arch="amd64"), resolved(arch="arm64")
    assert {"arch_prctl", "modify_ldt"} <= allowed(amd64)
    assert not {"arch_prctl", "modify_ldt"} & allowed(arm64)
    assert "set_tls" not in allowed(amd64)
    assert {"set_tls", "cacheflush", "arm_fadvise64_64"} <= allowed(arm64)
    assert arm64["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    s390 = resolved(arch="s390x")
    assert [r["args"][0]["index"] for r in rules_for(s390, "clone")] == [1]
    assert resolved(arch="riscv64")["architectures"] == ["SCMP_ARCH_RISCV64"]


def test_min_kernel():
    assert {"ptrace", "process_vm_readv"} <= allowed(resolved(kernel=(4, 8)))
    assert not {"ptrace", "process_vm_readv"} & allowed(resolved(kernel=(4, 4)))


def test_socket_families_exclude_alg_and_vsock():
    rules = rules_for(resolved(), "socket")
    assert rules[0]["args"] == [{"index": 0, "value": 12, "valueTwo": 0, "op": "SCMP_CMP_LT"}]
    equal = [r["args"][0]["value"] for r in rules[1:]]
    assert all(r["args"][0]["op"] == "SCMP_CMP_EQ" for r in rules[1:])
    assert equal == sorted(n for _, n in SOCKET_FAMILIES if n > 11)
    assert not {12, 38, 40} & set(equal) and max(equal) == 45


def test_no_default_action_and_no_rules_is_no_filter():
    assert resolve_profile({"syscalls": []}, caps=CAPS, arch="amd64", kernel=(6, 1)) is None


def test_flat_architectures_and_singular_name():
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
               "syscalls": [{"name": "getpid", "action": "SCMP_ACT_ERRNO", "errnoRet": 5,
                             "comment": "why"}]}
    spec = resolved(profile=profile)
    assert spec == {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                    "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO",
                                  "errnoRet": 5}]}


def test_excludes_min_kernel_and_arches():
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["a"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "5.10"}},
        {"names": ["b"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": ["amd64"]}},
        {"names": ["c"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_KILL",
                                                                          "CAP_SYS_ADMIN"]}}]}
    assert allowed(resolved(profile=profile, kernel=(5, 4))) == {"a"}
    assert allowed(resolved(profile=profile, kernel=(5, 10), arch="arm64")) == {"b"}
    assert allowed(resolved(["CAP_KILL", "CAP_SYS_ADMIN"], profile=profile, kernel=(6, 0))) == {"c"}


@pytest.mark.parametrize("profile,words", [
    ({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
      "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}, "archMap"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"name": "a", "names": ["b"],
                                                       "action": "SCMP_ACT_ALLOW"}]}, "names"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "defaultAcion": "x"}, "defaultAcion"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["a"], "action": "SCMP_ACT_ALLOW",
                                                       "includes": {"kernel": "5"}}]}, "kernel"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["a"], "action": "SCMP_ACT_ALLOW",
                                                       "includes": {"minKernel": "five"}}]},
     "minKernel"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "defaultErrno": "ENOSYS"},
     "ENOSYS"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["a"], "action": "SCMP_ACT_ALOW"}]},
     "SCMP_ACT_ALOW"),
    ({"defaultAction": "SCMP_ACT_DENY"}, "SCMP_ACT_DENY"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["a"], "action": "SCMP_ACT_ALLOW",
                                                       "args": [{"index": 0, "op": "LT"}]}]},
     "LT"),
])
def test_profile_errors(profile, words):
    with pytest.raises(SpecError, match=words):
        resolved(profile=profile)


def test_parse_profile_errors():
    with pytest.raises(SpecError, match="not valid JSON"):
        parse_profile(b"{", "p.json")
    assert parse_profile(json.dumps(DEFAULT_PROFILE).encode(), "p.json") == DEFAULT_PROFILE


def test_host_arch_and_kernel_version():
    assert host_arch("x86_64") == "amd64" and host_arch("aarch64") == "arm64"
    assert kernel_version("6.18.44-fc-v1252") == (6, 18)
    assert kernel_version("5.4.0-150-generic") == (5, 4)
    assert kernel_version("4.19.0+") == (4, 19)


def test_the_resolved_default_is_a_copy():
    spec = resolved()
    spec["syscalls"][0]["names"].append("kexec_load")
    assert "kexec_load" not in resolved()["syscalls"][0]["names"]


# ---------------------------------------------------------------- --security-opt


def no_file(path):
    raise FileNotFoundError(2, "No such file or directory", path)


def opts(*entries, privileged=False, read=no_file):
    return security.seccomp_for(entries, caps=CAPS, privileged=privileged, read_host_file=read,
                                arch="amd64", kernel=(6, 1))


def test_seccomp_options():
    assert opts() == resolved()
    assert opts("seccomp=builtin") == resolved()
    assert opts("seccomp=unconfined") is None
    assert opts(privileged=True) is None
    profile = {"defaultAction": "SCMP_ACT_LOG"}
    read = {"/p.json": json.dumps(profile).encode()}.__getitem__
    assert opts("seccomp=/p.json", read=read) == {"defaultAction": "SCMP_ACT_LOG", "syscalls": []}
    # an explicit profile applies even with --privileged (docker would ignore it)
    assert opts("seccomp=/p.json", privileged=True, read=read)["defaultAction"] == "SCMP_ACT_LOG"
    assert opts("seccomp=/p.json", "seccomp=unconfined", read=read) is None


def test_a_missing_profile_file_is_an_error():
    with pytest.raises(SpecError, match="seccomp=/nope.json: No such file"):
        opts("seccomp=/nope.json")


@pytest.mark.parametrize("entries,value", [((), None), (("no-new-privileges",), True),
                                           (("no-new-privileges=true",), True),
                                           (("no-new-privileges=false",), False),
                                           (("no-new-privileges=0",), False),
                                           (("no-new-privileges=false", "no-new-privileges"),
                                            True)])
def test_no_new_privileges(entries, value):
    assert security.parse_security_opts(entries, no_file).no_new_privileges is value


@pytest.mark.parametrize("entry,words", [("label=disable", "SELinux"),
                                         ("label=type:svirt_t", "SELinux"),
                                         ("apparmor=unconfined", "AppArmor"),
                                         ("systempaths=unconfined", "systempaths"),
                                         ("no-new-privileges=maybe", "true or false"),
                                         ("seccomp:/p.json", "KEY=VALUE"),
                                         ("seccomp", "unknown"),
                                         ("turbo=on", "unknown")])
def test_security_opt_errors(entry, words):
    with pytest.raises(SpecError, match=words):
        security.parse_security_opts([entry], no_file)


def _build(**kw):
    return build_spec({"config": {"Cmd": ["sh"]}}, RunOptions(image="x", **kw), rootless=False,
                      container_id="c" * 64, rootfs_path="/r", read_file=lambda p: None,
                      host_env={}, host_ids=(0, 0))


def test_builder_puts_the_default_filter_in_every_spec():
    spec = _build()
    assert spec["linux"]["seccomp"] == resolve_profile(DEFAULT_PROFILE, caps=CAPS)
    assert spec["process"]["noNewPrivileges"] is True
    assert "seccomp" not in _build(privileged=True)["linux"]
    assert "seccomp" not in _build(security_opts=("seccomp=unconfined",))["linux"]
    assert _build(security_opts=("no-new-privileges=false",))["process"]["noNewPrivileges"] is False


def test_builder_resolves_against_the_containers_capabilities():
    spec = _build(cap_add=("SYS_ADMIN",))
    names = {n for r in spec["linux"]["seccomp"]["syscalls"] for n in r["names"]}
    assert "unshare" in names
