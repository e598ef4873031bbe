/* runtime_spy: record how an engine calls its OCI runtime, then exec the real runtime.
 *
 * The engines tier registers a copy of this program under the runtime's own basename (podman
 * decides --log-format=json by that name) in a directory of its own:
 *
 *     DIR/runc         this program
 *     DIR/runc.real    one line: the runtime to exec (e.g. /usr/sbin/runc)
 *     DIR/runc.log     appended, one JSON object a call:
 *                      {"pid","ppid","parent","cwd","argv":[...],"fds":["0=/dev/null",...]}
 *     DIR/runc.configs/ID.json   a copy of BUNDLE/config.json at each `create`
 *
 * Files beside the executable, not environment variables: the engines do not pass their
 * environment through to the runtime reliably. The open descriptors are read first, before this
 * program opens anything, so they are exactly what the engine passed.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAXFDS 64

static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void read_line(const char *path, char *buf, size_t size) {
    buf[0] = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    if (fgets(buf, (int)size, f))
        buf[strcspn(buf, "\n")] = 0;
    fclose(f);
}

/* The bundle of a `create`: --bundle/-b (also --bundle=B), else the working directory. */
static const char *bundle_of(int argc, char **argv, const char *cwd) {
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "--bundle") || !strcmp(argv[i], "-b")) && i + 1 < argc)
            return argv[i + 1];
        if (!strncmp(argv[i], "--bundle=", 9))
            return argv[i] + 9;
    }
    return cwd;
}

static void copy_file(const char *from, const char *to) {
    FILE *in = fopen(from, "rb"), *out = in ? fopen(to, "wb") : NULL;
    char buf[65536];
    size_t n;
    while (in && out && (n = fread(buf, 1, sizeof buf, in)) > 0)
        fwrite(buf, 1, n, out);
    if (in)
        fclose(in);
    if (out)
        fclose(out);
}

int main(int argc, char **argv) {
    static char fds[MAXFDS][PATH_MAX + 300];
    int nfds = 0;
    DIR *d = opendir("/proc/self/fd");
    int own = d ? dirfd(d) : -1;
    struct dirent *e;
    while (d && (e = readdir(d)) && nfds < MAXFDS) {
        if (e->d_name[0] == '.' || atoi(e->d_name) == own)
            continue;
        char link[300], target[PATH_MAX];
        snprintf(link, sizeof link, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(link, target, sizeof target - 1);
        target[n > 0 ? n : 0] = 0;
        snprintf(fds[nfds++], sizeof fds[0], "%s=%s", e->d_name, target);
    }
    if (d)
        closedir(d);

    static char exe[PATH_MAX], path[PATH_MAX + 64], real[PATH_MAX], cwd[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = 0;
    snprintf(path, sizeof path, "%s.real", exe);
    read_line(path, real, sizeof real);
    if (!real[0]) {
        fprintf(stderr, "runtime_spy: %s is missing: which runtime to run?\n", path);
        return 127;
    }
    if (!getcwd(cwd, sizeof cwd))
        cwd[0] = 0;

    snprintf(path, sizeof path, "%s.log", exe);
    FILE *log = fopen(path, "a");
    if (log) {
        char parent[64];
        snprintf(path, sizeof path, "/proc/%d/comm", (int)getppid());
        read_line(path, parent, sizeof parent);
        fprintf(log, "{\"pid\": %d, \"ppid\": %d, \"parent\": ", (int)getpid(), (int)getppid());
        json_string(log, parent);
        fputs(", \"cwd\": ", log);
        json_string(log, cwd);
        fputs(", \"argv\": [", log);
        for (int i = 0; i < argc; i++) {
            if (i)
                fputs(", ", log);
            json_string(log, argv[i]);
        }
        fputs("], \"fds\": [", log);
        for (int i = 0; i < nfds; i++) {
            if (i)
                fputs(", ", log);
            json_string(log, fds[i]);
        }
        fputs("]}\n", log);
        fclose(log);
    }

    int create = 0;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "create"))
            create = 1;
    if (create && argc > 1) {
        char from[PATH_MAX + 16], dir[PATH_MAX + 16], to[2 * PATH_MAX];
        snprintf(from, sizeof from, "%s/config.json", bundle_of(argc, argv, cwd));
        snprintf(dir, sizeof dir, "%s.configs", exe);
        mkdir(dir, 0755);
        snprintf(to, sizeof to, "%s/%s.json", dir, argv[argc - 1]);
        copy_file(from, to);
    }

    argv[0] = real;
    execv(real, argv);
    fprintf(stderr, "runtime_spy: cannot run %s: %s\n", real, strerror(errno));
    return 127;
}
