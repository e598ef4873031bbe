/*
 * minictr's native layer: one thin wrapper per system call that Python's
 * standard library does not expose (or exposes only from 3.12).
 *
 * Rules (STYLE.md §2): each function returns >= 0 on success or -errno on
 * failure, so no hidden errno state crosses into Python; no policy, no
 * allocation, no logging. What an errno means is decided in
 * minictr/runtime/syscalls.py, the only importer of the compiled module.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/sysmacros.h>
#include <linux/openat2.h>
#include <linux/bpf.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/landlock.h>
#include <linux/types.h>

#include "minictr_native.h"

#define RET(expr) return ((expr) < 0 ? -errno : 0)

/* unshare(2) */
int mc_unshare(int flags) { RET(unshare(flags)); }

/* setns(2) */
int mc_setns(int fd, int nstype) { RET(setns(fd, nstype)); }

/* mount(2); source, fstype and data may be NULL. */
int mc_mount(const char *source, const char *target, const char *fstype,
             unsigned long flags, const char *data)
{
    RET(mount(source, target, fstype, flags, data));
}

/* umount2(2) */
int mc_umount2(const char *target, int flags) { RET(umount2(target, flags)); }

/* pivot_root(2) has no glibc wrapper; see pivot_root(2), NOTES. */
int mc_pivot_root(const char *new_root, const char *put_old)
{
    return syscall(SYS_pivot_root, new_root, put_old) == 0 ? 0 : -errno;
}

/* sethostname(2) */
int mc_sethostname(const char *name, size_t len) { RET(sethostname(name, len)); }

/* mknodat(2) with the device number built from major/minor (makedev(3)). */
int mc_mknodat(int dirfd, const char *path, unsigned int mode,
               unsigned int major_, unsigned int minor_)
{
    RET(mknodat(dirfd, path, mode, makedev(major_, minor_)));
}

/*
 * clone(2) with fork semantics (no new stack, SIGCHLD on exit) plus
 * namespace flags. Returns the child's pid in the parent, 0 in the child.
 * Only safe in a single-threaded process: the caller guarantees that.
 */
int mc_clone(unsigned long flags)
{
    long pid = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    return pid < 0 ? -errno : (int)pid;
}

/*
 * clone3(2) with fork semantics (no new stack, SIGCHLD on exit), namespace flags and, when
 * cgroup_fd >= 0, CLONE_INTO_CGROUP: the child is born in that cgroup v2 directory, so no
 * migration is needed (writing cgroup.procs takes a lock that waits for an RCU grace period,
 * ~15 ms on a small VM). Returns the child's pid in the parent, 0 in the child. The struct is
 * spelled out (the clone_args ABI, size 88) rather than taken from <linux/sched.h>, whose
 * CLONE_* macros collide with <sched.h>'s.
 */
#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
struct mc_clone_args {
    unsigned long long flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size,
                       tls, set_tid, set_tid_size, cgroup;
};

int mc_clone3(unsigned long long flags, int cgroup_fd)
{
    struct mc_clone_args args = { .flags = flags, .exit_signal = SIGCHLD };
    long pid;

    if (cgroup_fd >= 0) {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = (unsigned long long)cgroup_fd;
    }
    pid = syscall(SYS_clone3, &args, sizeof(args));
    return pid < 0 ? -errno : (int)pid;
}

/*
 * openat2(2) with RESOLVE_* flags: the kernel resolves the path and refuses
 * to leave the root (RESOLVE_IN_ROOT treats dirfd as "/"). Used to resolve
 * paths inside an untrusted rootfs without a check-then-use race.
 */
int mc_openat2(int dirfd, const char *path, unsigned long long flags,
               unsigned long long mode, unsigned long long resolve)
{
    struct open_how how = { .flags = flags, .mode = mode, .resolve = resolve };
    long fd = syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
    return fd < 0 ? -errno : (int)fd;
}

/* bpf(2) with a caller-filled union bpf_attr of `size` bytes. */
int mc_bpf(int cmd, void *attr, unsigned int size)
{
    long r = syscall(SYS_bpf, cmd, attr, size);
    return r < 0 ? -errno : (int)r;
}

/* close_range(2): close every fd in [first, last]. */
int mc_close_range(unsigned int first, unsigned int last, unsigned int flags)
{
    RET(syscall(SYS_close_range, first, last, flags));
}

/* prctl(PR_CAPBSET_DROP) by number, for the capabilities python-prctl's table does not name
 * (it was built against older headers than the running kernel's). */
int mc_capbset_drop(int cap) { RET(prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)); }

/* Every signal back to SIG_DFL, as runc does before exec: an ignored disposition survives
 * execve(2) (signal(7)). Raw rt_sigaction(2), because glibc refuses the two real-time signals
 * it keeps for itself (32 and 33), and a launcher can inherit those ignored too. A zeroed
 * kernel struct sigaction is SIG_DFL with no flags and an empty mask on every architecture. */
int mc_reset_signals(void)
{
    unsigned long act[8] = { 0 };
    for (int sig = 1; sig < _NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        if (syscall(SYS_rt_sigaction, sig, act, NULL, (_NSIG - 1) / 8) < 0)
            return -errno;
    }
    return 0;
}

/* pidfd_open(2) */
int mc_pidfd_open(int pid, unsigned int flags)
{
    long fd = syscall(SYS_pidfd_open, pid, flags);
    return fd < 0 ? -errno : (int)fd;
}

/* setdomainname(2) */
int mc_setdomainname(const char *name, size_t len) { RET(setdomainname(name, len)); }

/* prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap): python-prctl has no ambient set. */
#include <sys/prctl.h>
int mc_cap_ambient_raise(int cap)
{
    RET(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, (unsigned long)cap, 0UL, 0UL));
}

/* prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL) */
int mc_cap_ambient_clear_all(void)
{
    RET(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0UL, 0UL, 0UL));
}

/* capset(2) of this thread's effective, permitted and inheritable sets in one call, each a
 * 64-bit mask by capability number (_LINUX_CAPABILITY_VERSION_3: two 32-bit words a set).
 * python-prctl's setters change one set per call and its limit() only removes; the kernel
 * checks the three new sets together (capset(2)), as runc's one capset does. No glibc
 * wrapper (libcap has one). */
#include <linux/capability.h>
int mc_capset(unsigned long long effective, unsigned long long permitted,
              unsigned long long inheritable)
{
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    for (int i = 0; i < _LINUX_CAPABILITY_U32S_3; i++) {
        data[i].effective = (__u32)(effective >> (32 * i));
        data[i].permitted = (__u32)(permitted >> (32 * i));
        data[i].inheritable = (__u32)(inheritable >> (32 * i));
    }
    RET(syscall(SYS_capset, &header, data));
}

/* keyctl(KEYCTL_JOIN_SESSION_KEYRING, name): a new session keyring for this process
 * (keyctl(2)); no glibc wrapper (libkeyutils has one). Returns the keyring's serial. */
#include <linux/keyctl.h>
int mc_join_session_keyring(const char *name)
{
    long serial = syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name);
    return serial < 0 ? -errno : (int)serial;
}

/*
 * seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog) with prog = { count, filter }: install a
 * classic BPF filter of `count` struct sock_filter instructions (seccomp(2)). The caller must
 * have no_new_privs set or hold CAP_SYS_ADMIN (else EACCES). Returns 0, or a listener fd with
 * SECCOMP_FILTER_FLAG_NEW_LISTENER, or -errno.
 */
int mc_seccomp(unsigned int flags, const void *filter, unsigned short count)
{
    struct sock_fprog prog = { .len = count, .filter = (struct sock_filter *)filter };
    long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
    return r < 0 ? -errno : (int)r;
}

/* The new mount API (Linux 5.2): a filesystem configured and mounted as a detached mount,
 * held by an fd, attached later (possibly in another mount namespace) with move_mount(2). */

/* fsopen(2); returns the filesystem context fd. */
int mc_fsopen(const char *fsname, unsigned int flags)
{
    int fd = (int)syscall(SYS_fsopen, fsname, flags);
    return fd < 0 ? -errno : fd;
}

/* fsconfig(2) with a string value (FSCONFIG_SET_STRING) or a command (value NULL). */
int mc_fsconfig(int fd, unsigned int cmd, const char *key, const char *value)
{
    return syscall(SYS_fsconfig, fd, cmd, key, value, 0) == 0 ? 0 : -errno;
}

/* fsmount(2); returns the detached mount's fd. */
int mc_fsmount(int fd, unsigned int flags, unsigned int attr_flags)
{
    int mfd = (int)syscall(SYS_fsmount, fd, flags, attr_flags);
    return mfd < 0 ? -errno : mfd;
}

/* move_mount(2) */
int mc_move_mount(int from_dirfd, const char *from_path, int to_dirfd, const char *to_path,
                  unsigned int flags)
{
    return syscall(SYS_move_mount, from_dirfd, from_path, to_dirfd, to_path, flags) == 0
        ? 0 : -errno;
}

/*
 * A bind mount with its flags set before anyone can see it (Linux 5.12): open_tree(2) with
 * OPEN_TREE_CLONE makes a detached copy of the mount at a path, mount_setattr(2) sets its
 * flags (ro, nosuid, ...) while it is detached, move_mount(2) attaches it. mount(2) instead
 * ignores every flag of a bind but MS_REC and needs a second, remount call.
 */

/* open_tree(2); returns the fd of the (detached, with OPEN_TREE_CLONE) mount. */
int mc_open_tree(int dirfd, const char *path, unsigned int flags)
{
    long fd = syscall(SYS_open_tree, dirfd, path, flags);
    return fd < 0 ? -errno : (int)fd;
}

/* mount_setattr(2). struct mount_attr (linux/mount.h, 32 bytes) is spelled out: glibc before
 * 2.36 does not declare it, and <linux/mount.h> collides with <sys/mount.h>. */
struct mc_mount_attr {
    __u64 attr_set, attr_clr, propagation, userns_fd;
};

int mc_mount_setattr(int dirfd, const char *path, unsigned int flags,
                     unsigned long long attr_set, unsigned long long attr_clr)
{
    struct mc_mount_attr attr = { .attr_set = attr_set, .attr_clr = attr_clr };
    RET(syscall(SYS_mount_setattr, dirfd, path, flags, &attr, sizeof(attr)));
}

/*
 * landlock_create_ruleset(2) for a ruleset that only scopes IPC (Landlock ABI 6, Linux 6.12):
 * no filesystem or network access is handled, only ``scoped`` (LANDLOCK_SCOPE_*). The struct is
 * laid out here because linux-libc-dev 6.1's landlock_ruleset_attr predates the later fields;
 * a kernel older than ABI 6 refuses the size with E2BIG. scoped == 0 asks for the ABI version.
 */
struct mc_landlock_scoped_attr {
    __u64 handled_access_fs;
    __u64 handled_access_net;
    __u64 scoped;
};

int mc_landlock_create_ruleset(unsigned long long scoped)
{
    struct mc_landlock_scoped_attr attr = { 0, 0, scoped };
    long fd = scoped ? syscall(SYS_landlock_create_ruleset, &attr, sizeof(attr), 0)
                     : syscall(SYS_landlock_create_ruleset, NULL, 0,
                               LANDLOCK_CREATE_RULESET_VERSION);
    return fd < 0 ? -errno : (int)fd;
}

/* landlock_restrict_self(2) */
int mc_landlock_restrict_self(int ruleset_fd)
{
    RET(syscall(SYS_landlock_restrict_self, ruleset_fd, 0));
}
