"""cffi build script (API mode): compiles native/minictr_native.c into minictr._native.

Constants are declared with ``...`` so cffi takes their values from the kernel and libc
headers at build time; none is retyped by hand (STYLE.md §2).
"""
import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
CONSTANTS = """
CLONE_NEWNS CLONE_NEWUTS CLONE_NEWIPC CLONE_NEWUSER CLONE_NEWPID CLONE_NEWNET CLONE_NEWCGROUP
MS_RDONLY MS_NOSUID MS_NODEV MS_NOEXEC MS_SYNCHRONOUS MS_REMOUNT MS_MANDLOCK MS_DIRSYNC
MS_NOATIME MS_NODIRATIME MS_BIND MS_MOVE MS_REC MS_SILENT MS_UNBINDABLE MS_PRIVATE MS_SLAVE
MS_SHARED MS_RELATIME MS_STRICTATIME MS_LAZYTIME
MNT_DETACH MNT_FORCE UMOUNT_NOFOLLOW
RESOLVE_IN_ROOT RESOLVE_BENEATH RESOLVE_NO_SYMLINKS RESOLVE_NO_MAGICLINKS RESOLVE_NO_XDEV
O_PATH O_DIRECTORY O_NOFOLLOW O_CLOEXEC O_RDONLY O_WRONLY O_RDWR O_CREAT O_EXCL
S_IFCHR S_IFBLK
BPF_PROG_LOAD BPF_PROG_ATTACH BPF_PROG_DETACH BPF_PROG_QUERY BPF_PROG_TYPE_CGROUP_DEVICE
BPF_CGROUP_DEVICE BPF_F_ALLOW_MULTI
CLOSE_RANGE_CLOEXEC
SECCOMP_FILTER_FLAG_TSYNC SECCOMP_FILTER_FLAG_LOG SECCOMP_FILTER_FLAG_SPEC_ALLOW
SECCOMP_FILTER_FLAG_NEW_LISTENER SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
FSOPEN_CLOEXEC FSCONFIG_SET_FLAG FSCONFIG_SET_STRING FSCONFIG_CMD_CREATE FSMOUNT_CLOEXEC MOUNT_ATTR_RDONLY
MOUNT_ATTR_NOSUID MOUNT_ATTR_NODEV MOUNT_ATTR_NOEXEC MOUNT_ATTR_NODIRATIME MOVE_MOUNT_F_EMPTY_PATH
MOVE_MOUNT_T_EMPTY_PATH OPEN_TREE_CLONE OPEN_TREE_CLOEXEC AT_RECURSIVE AT_EMPTY_PATH
LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET LANDLOCK_SCOPE_SIGNAL
SIOCGIFFLAGS SIOCSIFFLAGS IFF_UP IFNAMSIZ
""".split()
# Newer than the build machine's headers may be (linux-libc-dev 6.1): the kernel's values, used
# only where the headers lack them (include/uapi/linux/landlock.h, Linux 6.12).
FALLBACKS = """
#ifndef LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET
#define LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET (1ULL << 0)
#endif
#ifndef LANDLOCK_SCOPE_SIGNAL
#define LANDLOCK_SCOPE_SIGNAL (1ULL << 1)
#endif
"""

ffibuilder = FFI()
ffibuilder.cdef(
    (HERE / "minictr_native.h").read_text().replace("#include <stddef.h>", "")
    + "".join(f"#define {name} ...\n" for name in CONSTANTS)
)
ffibuilder.set_source(
    "minictr._native",
    '#define _GNU_SOURCE\n#include <sched.h>\n#include <fcntl.h>\n#include <sys/mount.h>\n'
    '#include <sys/stat.h>\n#include <linux/openat2.h>\n#include <linux/bpf.h>\n'
    '#include <linux/close_range.h>\n#include <linux/seccomp.h>\n#include <linux/landlock.h>\n'
    '#include <net/if.h>\n#include <linux/sockios.h>\n'
    + FALLBACKS + '#include "minictr_native.h"\n',
    sources=["native/minictr_native.c"],
    include_dirs=["native"],
    extra_compile_args=["-O2", "-Wall"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
