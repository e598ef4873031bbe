/* probe: print what a process can see and do from inside a container, as one JSON object.
 *
 * Built with `gcc -static -O2` (glibc's libc.a) so it runs in any image, even one with no libc.
 * Tests run it as the container's process and assert on the JSON. Everything it reports comes
 * from the kernel's own view: getuid(2) and friends, /proc/self/status (proc(5)),
 * /proc/self/ns/NAME (namespaces(7)), /proc/self/fd, /proc/self/mountinfo.
 *
 * Usage: probe [--only SECTION,...] [--mknod PATH:c|b:MAJ:MIN] [--write PATH]
 *              [--open PATH] [--open-rw PATH] [--stat PATH] [--exit N]
 * Actions run in this order whatever the order of the flags: mknod, write, open, open-rw, stat.
 * Failures are reported by errno name ("EPERM"), never by exiting non-zero.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/* ---- a tiny JSON writer: `sep` puts the comma between members/elements of one level ---- */
static int depth, need_comma[32], after_key;

static void sep(void)
{
    if (after_key) { after_key = 0; return; }
    if (need_comma[depth]) putchar(',');
    need_comma[depth] = 1;
}

static void jstr(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

static void key(const char *k) { sep(); jstr(k); putchar(':'); after_key = 1; }
static void open_(char c) { sep(); putchar(c); need_comma[++depth] = 0; }
static void close_(char c) { depth--; putchar(c); }
static void vstr(const char *s) { sep(); jstr(s); }
static void vint(long long v) { sep(); printf("%lld", v); }
static void vnull(void) { sep(); fputs("null", stdout); }
static void kstr(const char *k, const char *v) { key(k); vstr(v); }
static void kint(const char *k, long long v) { key(k); vint(v); }
static void kbool(const char *k, int v) { key(k); sep(); fputs(v ? "true" : "false", stdout); }

/* errno as its symbolic name; strerrorname_np(3) is glibc >= 2.32 */
static const char *ename(int e)
{
    const char *n = e ? strerrorname_np(e) : "ok";
    return n ? n : "EUNKNOWN";
}

static int wanted(const char *only, const char *section)
{
    if (!only) return 1;
    size_t n = strlen(section);
    for (const char *p = only; (p = strstr(p, section)); p += n)
        if ((p == only || p[-1] == ',') && (p[n] == ',' || p[n] == 0)) return 1;
    return 0;
}

/* ---- sections ---- */
static void ids(void)
{
    gid_t groups[256];
    int n = getgroups(256, groups);
    kint("uid", getuid()); kint("gid", getgid());
    kint("euid", geteuid()); kint("egid", getegid());
    key("groups"); open_('[');
    for (int i = 0; i < n; i++) vint(groups[i]);
    close_(']');
}

/* Cap* masks stay hex strings as proc(5) prints them; NoNewPrivs and Seccomp are numbers. */
static void status(void)
{
    char line[512];
    FILE *f = fopen("/proc/self/status", "re");
    key("caps"); open_('{');
    if (f) {
        while (fgets(line, sizeof line, f)) {
            char *v = strchr(line, ':');
            if (strncmp(line, "Cap", 3) || !v) continue;
            *v++ = 0;
            v[strcspn(v, "\n")] = 0;
            kstr(line, v + strspn(v, " \t"));
        }
    }
    close_('}');
    long long nnp = -1, seccomp = -1;
    if (f) {
        rewind(f);
        while (fgets(line, sizeof line, f)) {
            sscanf(line, "NoNewPrivs: %lld", &nnp);
            sscanf(line, "Seccomp: %lld", &seccomp);
        }
        fclose(f);
    }
    kint("NoNewPrivs", nnp); kint("Seccomp", seccomp);
}

/* namespaces(7): readlink of /proc/self/ns/X is "X:[INODE]"; equal inodes = same namespace */
static void namespaces(void)
{
    DIR *d = opendir("/proc/self/ns");
    struct dirent *e;
    char path[300], target[128];
    key("ns"); open_('{');
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "/proc/self/ns/%s", e->d_name);
        ssize_t n = readlink(path, target, sizeof target - 1);
        char *lb = n > 0 ? (target[n] = 0, strchr(target, '[')) : NULL;
        key(e->d_name);
        if (lb) vint(strtoll(lb + 1, NULL, 10)); else vnull();
    }
    if (d) closedir(d);
    close_('}');
}

/* Open fds and what they point at; the directory stream's own fd is left out. */
static void fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    char path[300], target[PATH_MAX];
    key("fds"); open_('{');
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.' || atoi(e->d_name) == dirfd(d)) continue;
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, target, sizeof target - 1);
        target[n > 0 ? n : 0] = 0;
        kstr(e->d_name, target);
    }
    if (d) closedir(d);
    close_('}');
}

static void process(void)
{
    char buf[PATH_MAX];
    key("cwd"); if (getcwd(buf, sizeof buf)) vstr(buf); else vstr(ename(errno));
    key("hostname"); if (gethostname(buf, sizeof buf) == 0) vstr(buf); else vnull();
    kint("pid", getpid()); kint("ppid", getppid());
}

/* pids visible in /proc: in a new PID namespace (with its own proc mount) only the container's */
static void pids(void)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    key("pids"); open_('[');
    while (d && (e = readdir(d)))
        if (isdigit((unsigned char)e->d_name[0])) vint(atoll(e->d_name));
    if (d) closedir(d);
    close_(']');
}

static void mounts(void)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    long long n = 0;
    int c;
    while (f && (c = getc(f)) != EOF) n += c == '\n';
    key("mounts"); if (f) vint(n); else vnull();
    if (f) fclose(f);
}

/* A small file (cgroup, uid_map...) as an array of its lines, or null if it cannot be read. */
static void lines(const char *k, const char *path)
{
    char line[1024];
    FILE *f = fopen(path, "re");
    key(k);
    if (!f) { vnull(); return; }
    open_('[');
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        vstr(line);
    }
    close_(']');
    fclose(f);
}

/* ---- actions ---- */
static int try_open(const char *path, int flags)
{
    int fd = open(path, flags | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) return errno;
    close(fd);
    return 0;
}

/* PATH:c:MAJ:MIN. mknod(2) needs CAP_MKNOD; the device cgroup may still deny the open. */
static void do_mknod(const char *arg)
{
    char path[PATH_MAX], kind = 0;
    unsigned maj = 0, min = 0;
    const char *c = strchr(arg, ':');
    key(c ? (snprintf(path, sizeof path, "%.*s", (int)(c - arg), arg), path) : arg);
    open_('{');
    if (!c || sscanf(c, ":%c:%u:%u", &kind, &maj, &min) != 3 || (kind != 'c' && kind != 'b')) {
        kstr("mknod", "EINVAL"); close_('}'); return;
    }
    mode_t type = kind == 'c' ? S_IFCHR : S_IFBLK;
    kstr("mknod", ename(mknod(path, type | 0666, makedev(maj, min)) ? errno : 0));
    kstr("open", ename(try_open(path, O_RDWR)));
    close_('}');
}

static void do_write(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644), err = 0;
    if (fd < 0) err = errno;
    else if (write(fd, "probe\n", 6) != 6) err = errno;
    if (fd >= 0) close(fd);
    kstr(path, ename(err));
}

/* Existence, owner, mode and a FNV-1a 64 hash of the content (enough to tell files apart). */
static void do_stat(const char *path)
{
    struct stat st;
    key(path); open_('{');
    if (lstat(path, &st)) { kbool("exists", 0); kstr("error", ename(errno)); close_('}'); return; }
    kbool("exists", 1); kint("mode", st.st_mode); kint("uid", st.st_uid); kint("gid", st.st_gid);
    kint("size", st.st_size);
    int fd = S_ISREG(st.st_mode) ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    if (fd >= 0) {
        uint64_t h = 0xcbf29ce484222325ULL;
        unsigned char buf[65536];
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0)
            for (ssize_t i = 0; i < n; i++) h = (h ^ buf[i]) * 0x100000001b3ULL;
        close(fd);
        char hex[17];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
        kstr("fnv1a64", hex);
    }
    close_('}');
}

static void action(int argc, char **argv, const char *flag, void (*fn)(const char *))
{
    int any = 0;
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], flag)) continue;
        if (!any++) { key(flag + 2); open_('{'); }
        fn(argv[++i]);
    }
    if (any) close_('}');
}

/* connect(2) to the abstract unix socket @NAME (unix(7)): Landlock's scope refuses EPERM. */
static void do_connect_abstract(const char *name)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    size_t len = strnlen(name, sizeof addr.sun_path - 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), err = 0;
    memcpy(addr.sun_path + 1, name, len);
    if (fd < 0) err = errno;
    else if (connect(fd, (struct sockaddr *)&addr, offsetof(struct sockaddr_un, sun_path) + 1 + len))
        err = errno;
    if (fd >= 0) close(fd);
    kstr(name, ename(err));
}

/* socket(2) of a kind: "raw" is AF_INET SOCK_RAW (needs CAP_NET_RAW), "packet" AF_PACKET. */
static void do_socket(const char *kind)
{
    int fd = -1;
    if (!strcmp(kind, "raw")) fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP);
    else if (!strcmp(kind, "packet")) fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    else errno = EINVAL;
    kstr(kind, ename(fd < 0 ? errno : 0));
    if (fd >= 0) close(fd);
}

static void open_ro(const char *p) { kstr(p, ename(try_open(p, O_RDONLY))); }
static void open_rw(const char *p) { kstr(p, ename(try_open(p, O_RDWR))); }

int main(int argc, char **argv)
{
    const char *only = NULL;
    int code = 0;
    for (int i = 1; i + 1 < argc; i++) {
        if (!strcmp(argv[i], "--only")) only = argv[i + 1];
        if (!strcmp(argv[i], "--exit")) code = atoi(argv[i + 1]);
    }
    open_('{');
    if (wanted(only, "ids")) ids();
    if (wanted(only, "caps")) status();
    if (wanted(only, "ns")) namespaces();
    if (wanted(only, "fds")) fds();
    if (wanted(only, "process")) process();
    if (wanted(only, "pids")) pids();
    if (wanted(only, "mounts")) mounts();
    if (wanted(only, "cgroup")) lines("cgroup", "/proc/self/cgroup");
    if (wanted(only, "idmap")) {
        lines("uid_map", "/proc/self/uid_map");
        lines("gid_map", "/proc/self/gid_map");
    }
    action(argc, argv, "--mknod", do_mknod);
    action(argc, argv, "--write", do_write);
    action(argc, argv, "--open", open_ro);
    action(argc, argv, "--open-rw", open_rw);
    action(argc, argv, "--stat", do_stat);
    action(argc, argv, "--connect-abstract", do_connect_abstract);
    action(argc, argv, "--socket", do_socket);
    close_('}');
    putchar('\n');
    return fflush(stdout) == 0 ? code : 1;
}
