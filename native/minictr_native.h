/* Declarations shared by minictr_native.c and the cffi cdef (native/build.py). */
#include <stddef.h>
int mc_unshare(int flags);
int mc_setns(int fd, int nstype);
int mc_mount(const char *source, const char *target, const char *fstype,
             unsigned long flags, const char *data);
int mc_umount2(const char *target, int flags);
int mc_pivot_root(const char *new_root, const char *put_old);
int mc_sethostname(const char *name, size_t len);
int mc_setdomainname(const char *name, size_t len);
int mc_cap_ambient_raise(int cap);
int mc_cap_ambient_clear_all(void);
int mc_capset(unsigned long long effective, unsigned long long permitted,
              unsigned long long inheritable);
int mc_join_session_keyring(const char *name);
int mc_mknodat(int dirfd, const char *path, unsigned int mode,
               unsigned int major_, unsigned int minor_);
int mc_clone(unsigned long flags);
int mc_clone3(unsigned long long flags, int cgroup_fd);
int mc_openat2(int dirfd, const char *path, unsigned long long flags,
               unsigned long long mode, unsigned long long resolve);
int mc_bpf(int cmd, void *attr, unsigned int size);
int mc_close_range(unsigned int first, unsigned int last, unsigned int flags);
int mc_reset_signals(void);
int mc_capbset_drop(int cap);
int mc_pidfd_open(int pid, unsigned int flags);
int mc_seccomp(unsigned int flags, const void *filter, unsigned short count);
int mc_fsopen(const char *fsname, unsigned int flags);
int mc_fsconfig(int fd, unsigned int cmd, const char *key, const char *value);
int mc_fsmount(int fd, unsigned int flags, unsigned int attr_flags);
int mc_move_mount(int from_dirfd, const char *from_path, int to_dirfd, const char *to_path,
                  unsigned int flags);
int mc_open_tree(int dirfd, const char *path, unsigned int flags);
int mc_mount_setattr(int dirfd, const char *path, unsigned int flags,
                     unsigned long long attr_set, unsigned long long attr_clr);
int mc_landlock_create_ruleset(unsigned long long scoped);
int mc_landlock_restrict_self(int ruleset_fd);
