"""Docker's default seccomp profile, as data in Docker's profile format.

Source: moby/profiles ``seccomp/default.json`` and ``default_linux.go`` (Apache-2.0, the Moby
Authors), as of the change that lists the allowed socket address families one by one (after
moby/moby#52494, CVE-2026-31431 "Copy Fail": AF_ALG blocked) and leaves add_key, keyctl and
request_key out (the kernel keyring is not fully namespaced). minictr keeps the same groups in
the same order, so ``resolve_profile(DEFAULT_PROFILE, ...)`` yields what dockerd puts in a
container's ``linux.seccomp``. The shape:

- defaultAction SCMP_ACT_ERRNO with defaultErrnoRet 1 (EPERM): what no rule allows fails.
- One long allow list of syscalls every container may make.
- Argument filters: socket(2) only for the address families in SOCKET_FAMILIES; personality(2)
  only for the five personas glibc and util-linux's setarch use; clone(2) only without
  namespace flags unless CAP_SYS_ADMIN; clone3(2) answers ENOSYS unless CAP_SYS_ADMIN (its
  flags are behind a pointer seccomp cannot read, and ENOSYS makes glibc fall back to clone).
- Groups allowed only with a capability (``includes.caps``), or only on some architectures
  (``includes.arches``, Go's GOARCH names as dockerd uses them).

Not in any list, so denied with EPERM: io_uring_setup/enter/register, add_key, keyctl,
request_key, kexec_load, open_by_handle_at (without CAP_DAC_READ_SEARCH), perf_event_open
(without CAP_PERFMON or CAP_SYS_ADMIN), bpf (without CAP_BPF or CAP_SYS_ADMIN), mount, unshare,
setns, pivot_root, swapon, userfaultfd, and every syscall newer than the profile (those get
ENOSYS instead, see minictr/runtime/seccomp.py).
"""
from __future__ import annotations

import errno

_ALLOWED = """
accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown chown32
clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2
dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64
fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat
fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64
fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex futex_requeue futex_time64
futex_wait futex_waitv futex_wake futimesat getcpu getcwd getdents getdents64 getegid getegid32
geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp
getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32 getrlimit
get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid gettimeofday
getuid getuid32 getxattr getxattrat inotify_add_watch inotify_init inotify_init1
inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64
ioprio_get ioprio_set io_setup io_submit ipc kill landlock_add_rule landlock_create_ruleset
landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listmount listxattr
listxattrat llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise
map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock
mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive
mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap mseal msgctl msgget
msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep newfstatat _newselect
open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free
pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease
pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recv
recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr removexattrat rename
renameat renameat2 restart_syscall riscv_hwprobe rmdir rseq rt_sigaction rt_sigpending
rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait
rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam
sched_get_priority_max sched_get_priority_min sched_getscheduler sched_rr_get_interval
sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam sched_setscheduler
sched_yield seccomp select semctl semget semop semtimedop semtimedop_time64 send sendfile
sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32
setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid setresgid32
setresuid setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid setsockopt
set_thread_area set_tid_address setuid setuid32 setxattr setxattrat shmat shmctl shmdt shmget
shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn socketcall socketpair splice stat
stat64 statfs statfs64 statmount statx symlink symlinkat sync sync_file_range syncfs sysinfo tee
tgkill time timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64
timer_settime timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat
uretprobe utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write
writev
""".split()

# The address families socket(2) may create (include/linux/socket.h numbers). Left out, as in
# moby's list: AF_DECnet 12, AF_ECONET 19, AF_ATMSVC 20, AF_IRDA 23, AF_WANPIPE 25, AF_ISDN 34
# and AF_CAIF 37 (removed from the kernel), AF_ALG 38 (the kernel crypto API: CVE-2026-31431)
# and AF_VSOCK 40 (host/guest sockets, global across network namespaces), and all from 46 up.
# socketcall(2), the multiplexer 32-bit x86 uses, passes its arguments behind a pointer that
# seccomp cannot read, so there the list cannot be enforced (as in Docker).
SOCKET_FAMILIES = (
    ("AF_UNIX", 1), ("AF_INET", 2), ("AF_AX25", 3), ("AF_IPX", 4), ("AF_APPLETALK", 5),
    ("AF_NETROM", 6), ("AF_BRIDGE", 7), ("AF_ATMPVC", 8), ("AF_X25", 9), ("AF_INET6", 10),
    ("AF_ROSE", 11), ("AF_NETBEUI", 13), ("AF_SECURITY", 14), ("AF_KEY", 15),
    ("AF_NETLINK", 16), ("AF_PACKET", 17), ("AF_ASH", 18), ("AF_RDS", 21), ("AF_SNA", 22),
    ("AF_PPPOX", 24), ("AF_LLC", 26), ("AF_IB", 27), ("AF_MPLS", 28), ("AF_CAN", 29),
    ("AF_TIPC", 30), ("AF_BLUETOOTH", 31), ("AF_IUCV", 32), ("AF_RXRPC", 33), ("AF_PHONET", 35),
    ("AF_IEEE802154", 36), ("AF_NFC", 39), ("AF_KCM", 41), ("AF_QIPCRTR", 42), ("AF_SMC", 43),
    ("AF_XDP", 44), ("AF_MCTP", 45),
)

# CLONE_NEWNS|CLONE_NEWUTS|CLONE_NEWIPC|CLONE_NEWUSER|CLONE_NEWPID|CLONE_NEWNET|CLONE_NEWCGROUP
# (<linux/sched.h>): clone(2) is allowed when (flags & this) == 0.
CLONE_NAMESPACE_FLAGS = 0x7E020000
ENOSYS = errno.ENOSYS      # 38 on x86 and arm, as in default.json
EPERM = errno.EPERM

# personality(2) values: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and 0xffffffff,
# which only queries the current persona.
PERSONALITIES = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)


def _allow(names, **extra) -> dict:
    return {"names": list(names), "action": "SCMP_ACT_ALLOW", **extra}


def _arg(index: int, value: int, op: str, value_two: int = 0) -> dict:
    return {"index": index, "value": value, "valueTwo": value_two, "op": op}


def socket_rules(families=SOCKET_FAMILIES) -> list[dict]:
    """One rule per allowed family, as moby's socketSyscallsForDomains writes them: the run
    that starts at AF_UNIX becomes a single ``arg0 < N`` (AF_UNSPEC, 0, cannot be created);
    every later family gets an ``arg0 == N`` of its own. A bounded range cannot be one rule:
    runc and crun OR together conditions that repeat an argument index, they do not AND them."""
    numbers = sorted(n for _, n in families)
    rules, start = [], 0
    if len(numbers) > 1 and numbers[0] == 1 and numbers[1] == 2:
        start = 1
        while start < len(numbers) and numbers[start] == numbers[start - 1] + 1:
            start += 1
        rules.append(_allow(["socket"], args=[_arg(0, numbers[start - 1] + 1, "SCMP_CMP_LT")]))
    rules += [_allow(["socket"], args=[_arg(0, n, "SCMP_CMP_EQ")]) for n in numbers[start:]]
    return rules


def _by_cap(names, cap: str) -> dict:
    return _allow(names, includes={"caps": [cap]})


ARCH_MAP = [
    {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
    {"architecture": "SCMP_ARCH_MIPS64",
     "subArchitectures": ["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32"]},
    {"architecture": "SCMP_ARCH_MIPS64N32",
     "subArchitectures": ["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64"]},
    {"architecture": "SCMP_ARCH_MIPSEL64",
     "subArchitectures": ["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32"]},
    {"architecture": "SCMP_ARCH_MIPSEL64N32",
     "subArchitectures": ["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64"]},
    {"architecture": "SCMP_ARCH_S390X", "subArchitectures": ["SCMP_ARCH_S390"]},
    {"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": None},
    {"architecture": "SCMP_ARCH_LOONGARCH64", "subArchitectures": None},
]

SYSCALLS = [
    _allow(_ALLOWED),
    _allow(["process_vm_readv", "process_vm_writev", "ptrace"], includes={"minKernel": "4.8"}),
    *socket_rules(),
    *(_allow(["personality"], args=[_arg(0, p, "SCMP_CMP_EQ")]) for p in PERSONALITIES),
    _allow(["sync_file_range2", "swapcontext"], includes={"arches": ["ppc64le"]}),
    _allow(["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint",
            "cacheflush", "set_tls"], includes={"arches": ["arm", "arm64"]}),
    _allow(["arch_prctl"], includes={"arches": ["amd64", "x32"]}),
    _allow(["modify_ldt"], includes={"arches": ["amd64", "x32", "x86"]}),
    _allow(["s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"],
           includes={"arches": ["s390", "s390x"]}),
    _allow(["riscv_flush_icache"], includes={"arches": ["riscv64"]}),
    _by_cap(["open_by_handle_at"], "CAP_DAC_READ_SEARCH"),
    _by_cap(["bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen",
             "fspick", "lookup_dcookie", "lsm_get_self_attr", "lsm_list_modules",
             "lsm_set_self_attr", "mount", "mount_setattr", "move_mount", "open_tree",
             "perf_event_open", "quotactl", "quotactl_fd", "setdomainname", "sethostname",
             "setns", "syslog", "umount", "umount2", "unshare"], "CAP_SYS_ADMIN"),
    _allow(["clone"], args=[_arg(0, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ")],
           excludes={"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]}),
    _allow(["clone"], args=[_arg(1, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ")],
           comment="s390 parameter ordering for clone is different",
           includes={"arches": ["s390", "s390x"]}, excludes={"caps": ["CAP_SYS_ADMIN"]}),
    {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS,
     "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
    _by_cap(["reboot"], "CAP_SYS_BOOT"),
    _by_cap(["chroot"], "CAP_SYS_CHROOT"),
    _by_cap(["delete_module", "init_module", "finit_module"], "CAP_SYS_MODULE"),
    _by_cap(["acct"], "CAP_SYS_PACCT"),
    _by_cap(["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev",
             "ptrace"], "CAP_SYS_PTRACE"),
    _by_cap(["iopl", "ioperm"], "CAP_SYS_RAWIO"),
    _by_cap(["settimeofday", "stime", "clock_settime", "clock_settime64"], "CAP_SYS_TIME"),
    _by_cap(["vhangup"], "CAP_SYS_TTY_CONFIG"),
    _by_cap(["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"],
            "CAP_SYS_NICE"),
    _by_cap(["syslog"], "CAP_SYSLOG"),
    _by_cap(["bpf"], "CAP_BPF"),
    _by_cap(["perf_event_open"], "CAP_PERFMON"),
]

DEFAULT_PROFILE = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": EPERM,
    "archMap": ARCH_MAP,
    "syscalls": SYSCALLS,
}
