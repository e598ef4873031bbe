/*
 * mcinit: the last program minictr runs before the container's own process.
 *
 * Why it exists (runc CVE-2019-5736): minictr's container process is the host's Python
 * interpreter until it calls execve. If the image's command is /proc/self/exe (or a script
 * with "#!/proc/self/exe"), the kernel would run the *host's* interpreter inside the container,
 * and a root process there could reopen that file for writing through /proc/PID/exe. minictr
 * therefore copies this small static program into a sealed memfd and fexecve()s it: from then
 * on /proc/self/exe names an anonymous, sealed in-memory file, not a host file.
 *
 * Two ways to run it:
 *
 *   mcinit ERRFD exec PATH -- ARGV...      how the runtime execs every container process
 *     ERRFD  a pipe to the launcher; on exec failure "errno\n" is written there. -1 when no
 *            launcher waits (a container started by `start`): the error goes to stderr.
 *     execve PATH with ARGV (the launcher already searched PATH: execvp's fallback to /bin/sh
 *     on ENOEXEC would turn a binary for another architecture into a shell syntax error).
 *
 *   mcinit -- COMMAND [ARGS...]            the init of `minictr run --init` (as tini)
 *     The spec itself says so: minictr bind-mounts this program at /dev/init and its
 *     process.args are ["/dev/init", "--", COMMAND, ...], as docker does with docker-init, so
 *     runc running the same spec runs the same init. Stays as PID 1: forks, searches PATH for
 *     COMMAND in the child (no /bin/sh fallback either) and execs it, forwards signals to it,
 *     reaps every zombie, and exits with its status.
 *
 * Exit 127 when the command is not found, 126 when it cannot be executed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

extern char **environ;

static void exec_or_report(int errfd, const char *path, char **argv)
{
    char buf[16];
    int n, err;

    execve(path, argv, environ);
    err = errno;
    if (errfd >= 0) {
        n = snprintf(buf, sizeof(buf), "%d\n", err);
        if (write(errfd, buf, n) < 0) { /* the launcher is gone: nothing to report to */ }
    } else {
        fprintf(stderr, "minictr: exec %s: %s\n", path,
                err == ENOEXEC ? "exec format error" : strerror(err));
    }
    _exit(err == ENOENT || err == ENOTDIR ? 127 : 126);
}

/* runc's LookPath: a COMMAND with a '/' as it is, else the first executable regular file of
 * that name in $PATH (an empty entry is the current directory). NULL with *err set when
 * there is none: EACCES if one exists but is not executable, else ENOENT. */
static const char *look_path(const char *cmd, char *buf, size_t size, int *err)
{
    const char *path = getenv("PATH"), *p, *end;
    struct stat st;
    int denied = 0, n;

    if (strchr(cmd, '/'))
        return cmd;
    for (p = path ? path : DEFAULT_PATH;; p = end + 1) {
        end = strchrnul(p, ':');
        if (end == p)
            n = snprintf(buf, size, "./%s", cmd);
        else
            n = snprintf(buf, size, "%.*s/%s", (int)(end - p), p, cmd);
        if (n > 0 && (size_t)n < size && stat(buf, &st) == 0 && S_ISREG(st.st_mode)) {
            if (access(buf, X_OK) == 0)
                return buf;
            denied = 1;
        }
        if (!*end)
            break;
    }
    *err = denied ? EACCES : ENOENT;
    return NULL;
}

static void search_and_exec(const char *cmd, char **argv)
{
    char buf[4096];
    int err = 0;
    const char *path = look_path(cmd, buf, sizeof(buf), &err);

    if (!path) {
        fprintf(stderr, "minictr-init: exec %s: %s\n", cmd,
                err == EACCES ? "permission denied" : "executable file not found in $PATH");
        _exit(err == EACCES ? 126 : 127);
    }
    exec_or_report(-1, path, argv);
}

static volatile sig_atomic_t child_pid;

static void forward(int sig)
{
    if (child_pid > 0)
        kill(child_pid, sig);
}

static int run_as_init(const char *cmd, char **argv)
{
    static const int sigs[] = { SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2,
                                SIGWINCH, SIGCONT };
    struct sigaction sa = { .sa_handler = forward };
    int status = 0;
    pid_t pid, w;

    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        sigaction(sigs[i], &sa, NULL);
    pid = fork();
    if (pid < 0)
        return 126;
    if (pid == 0) {
        /* The child gets default dispositions back (execve resets handled signals anyway). */
        setpgid(0, 0);
        if (isatty(0))
            tcsetpgrp(0, getpid());
        search_and_exec(cmd, argv);
    }
    child_pid = pid;
    /* As PID 1, every orphan in the namespace is re-parented here: reap them all,
     * and leave when the main child is gone (tini does the same). */
    for (;;) {
        int st;
        w = wait(&st);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            break;
        if (w == pid) {
            status = st;
            break;
        }
    }
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

int main(int argc, char **argv)
{
    int errfd;

    if (argc >= 3 && strcmp(argv[1], "--") == 0)
        return run_as_init(argv[2], argv + 2);
    if (argc < 6 || strcmp(argv[2], "exec") != 0 || strcmp(argv[4], "--") != 0) {
        fprintf(stderr, "usage: mcinit ERRFD exec PATH -- ARGV...  or  mcinit -- COMMAND "
                "[ARGS...]\n");
        return 125;
    }
    errfd = atoi(argv[1]);
    /* The report pipe must not leak into the container's process (CVE-2024-21626 class). */
    if (errfd >= 0)
        fcntl(errfd, F_SETFD, FD_CLOEXEC);
    exec_or_report(errfd, argv[3], argv + 5);
    return 126;
}
