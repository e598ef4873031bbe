"""cffi build script (API mode): the libseccomp calls minictr uses, as minictr._seccomp.

A module of its own, not part of minictr._native: only the launcher needs libseccomp, and only
when a filter is not in the compiled-filter cache (minictr/runtime/seccomp.py), so neither the
container's process nor a cached start loads libseccomp.so. The container side loads the
compiled bytes with seccomp(2) through minictr._native (mc_seccomp).

Constants come from <seccomp.h> and the kernel headers at build time (STYLE.md §2): the SCMP_*
actions and SCMP_ARCH_* tokens (which are the AUDIT_ARCH_* values, <linux/audit.h>), and the
classic-BPF opcodes and seccomp return values the ENOSYS stub is built from
(<linux/filter.h>, <linux/seccomp.h>). SCMP_ACT_ERRNO(x) and SCMP_ACT_TRACE(x) are function-like
macros, so two one-line helpers wrap them.
"""
from cffi import FFI

CONSTANTS = """
SCMP_ACT_KILL_PROCESS SCMP_ACT_KILL_THREAD SCMP_ACT_KILL SCMP_ACT_TRAP SCMP_ACT_NOTIFY
SCMP_ACT_LOG SCMP_ACT_ALLOW
SCMP_ARCH_NATIVE SCMP_ARCH_X86_64 SCMP_ARCH_X86 SCMP_ARCH_X32 SCMP_ARCH_AARCH64 SCMP_ARCH_ARM
__NR_SCMP_ERROR
BPF_LD BPF_W BPF_ABS BPF_JMP BPF_JA BPF_JEQ BPF_JGT BPF_JGE BPF_K BPF_RET BPF_MAXINSNS
SECCOMP_RET_ERRNO SECCOMP_RET_DATA
""".split()

CDEF = """
typedef void *scmp_filter_ctx;
typedef uint64_t scmp_datum_t;
enum scmp_compare { SCMP_CMP_NE, SCMP_CMP_LT, SCMP_CMP_LE, SCMP_CMP_EQ, SCMP_CMP_GE,
                    SCMP_CMP_GT, SCMP_CMP_MASKED_EQ, ... };
enum scmp_filter_attr { SCMP_FLTATR_ACT_BADARCH, SCMP_FLTATR_CTL_NNP, ... };
struct scmp_arg_cmp { unsigned int arg; enum scmp_compare op; scmp_datum_t datum_a;
                      scmp_datum_t datum_b; };
struct scmp_version { unsigned int major; unsigned int minor; unsigned int micro; };
struct seccomp_data { int nr; uint32_t arch; ...; };

const struct scmp_version *seccomp_version(void);
scmp_filter_ctx seccomp_init(uint32_t def_action);
void seccomp_release(scmp_filter_ctx ctx);
uint32_t seccomp_arch_native(void);
uint32_t seccomp_arch_resolve_name(const char *arch_name);
int seccomp_arch_add(scmp_filter_ctx ctx, uint32_t arch_token);
int seccomp_arch_exist(const scmp_filter_ctx ctx, uint32_t arch_token);
int seccomp_syscall_resolve_name(const char *name);
int seccomp_syscall_resolve_name_arch(uint32_t arch_token, const char *name);
int seccomp_rule_add_array(scmp_filter_ctx ctx, uint32_t action, int syscall,
                           unsigned int arg_cnt, const struct scmp_arg_cmp *arg_array);
int seccomp_attr_set(scmp_filter_ctx ctx, enum scmp_filter_attr attr, uint32_t value);
int seccomp_export_bpf(const scmp_filter_ctx ctx, int fd);
int seccomp_export_pfc(const scmp_filter_ctx ctx, int fd);

uint32_t mc_act_errno(uint16_t err);
uint32_t mc_act_trace(uint16_t msg);
""" + "".join(f"#define {name} ...\n" for name in CONSTANTS)

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "minictr._seccomp",
    "#include <seccomp.h>\n#include <linux/filter.h>\n"
    "static uint32_t mc_act_errno(uint16_t err) { return SCMP_ACT_ERRNO(err); }\n"
    "static uint32_t mc_act_trace(uint16_t msg) { return SCMP_ACT_TRACE(msg); }\n",
    libraries=["seccomp"],
    extra_compile_args=["-O2", "-Wall"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
