/* bench/memprobe.c: run one command and answer its memory (bench/memory.py builds and uses it).

     memprobe ERRFILE CWD ARGV...     prints one JSON line on stdout

   The command runs with stdin and stdout on /dev/null and stderr to ERRFILE, in CWD unless it
   is "". Only the command itself is traced (a later execve of its own is an event, not the
   SIGTRAP an untraced program would die of). Answered:
     hwm_kb      the command's own peak RSS: VmHWM from /proc/PID/status, read while it stops
                 at its exit (PTRACE_O_TRACEEXIT; nothing else is traced, not its children)
     subtree_kb  wait4's ru_maxrss for it: the largest of its own and its reaped descendants'
     tree_kb     getrusage(RUSAGE_CHILDREN).ru_maxrss once every descendant is reaped: we are
                 the child subreaper, so orphans (daemonized helpers) come back to us
     code        its exit status (-SIGNAL when killed), ns (its run time), exit_stop,
                 lingering (descendants still alive 10 s after it exited: not waited for)

   Why C and not the Python agent: ru_maxrss counts a process's life before execve (the kernel
   keeps the old address space's high-water mark in the signal struct), and a child forked from
   a Python process starts with the interpreter's ~8 MB. Forked from this small program, a
   command's ru_maxrss starts at about 1 MB, below any launcher's. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long status_kb(pid_t pid, const char *key) {
    char path[64], line[256];
    size_t n = strlen(key);
    long kb = -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':') {
            kb = strtol(line + n + 1, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: memprobe ERRFILE CWD ARGV...\n");
        return 2;
    }
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) {
        perror("prctl(PR_SET_CHILD_SUBREAPER)");
        return 1;
    }
    long long t0 = now_ns();
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR), err = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC,
                                                         0600);
        if (null < 0 || err < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 || dup2(err, 2) < 0)
            _exit(127);
        close(null);
        close(err);
        if (argv[2][0] && chdir(argv[2])) {
            perror(argv[2]);
            _exit(127);
        }
        if (ptrace(PTRACE_TRACEME, 0, NULL, NULL)) {
            perror("ptrace(PTRACE_TRACEME)");
            _exit(126);
        }
        execvp(argv[3], argv + 3);
        perror(argv[3]);
        _exit(127);
    }
    int status, first = 1, exit_stop = 0;
    long hwm = -1;
    struct rusage ru;
    for (;;) {
        if (wait4(pid, &status, 0, &ru) < 0) {
            if (errno == EINTR)
                continue;
            perror("wait4");
            return 1;
        }
        if (!WIFSTOPPED(status))
            break;
        long sig = WSTOPSIG(status);
        if (first) {                              /* the SIGTRAP after execve */
            first = 0;
            ptrace(PTRACE_SETOPTIONS, pid, NULL, (void *)(long)(PTRACE_O_TRACEEXIT |
                                                                PTRACE_O_TRACEEXEC |
                                                                PTRACE_O_EXITKILL));
            sig = 0;
        } else if (status >> 8 == (SIGTRAP | (PTRACE_EVENT_EXEC << 8))) {
            sig = 0;                              /* it execs again (crun: from a memfd) */
        } else if (status >> 8 == (SIGTRAP | (PTRACE_EVENT_EXIT << 8))) {
            hwm = status_kb(pid, "VmHWM");
            exit_stop = 1;
            sig = 0;
        }
        ptrace(PTRACE_CONT, pid, NULL, (void *)sig);
    }
    long long ns = now_ns() - t0;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    long long deadline = now_ns() + 10000000000LL;
    int lingering = 0;
    for (;;) {                                    /* the orphans reparented to us */
        pid_t got = waitpid(-1, NULL, WNOHANG);
        if (got < 0 && errno == ECHILD)
            break;
        if (got <= 0) {
            if (now_ns() > deadline) {
                lingering = 1;
                break;
            }
            struct timespec ts = {0, 2000000};
            nanosleep(&ts, NULL);
        }
    }
    struct rusage cru;
    getrusage(RUSAGE_CHILDREN, &cru);
    printf("{\"code\": %d, \"ns\": %lld, \"exit_stop\": %s, \"hwm_kb\": %ld, \"subtree_kb\": %ld, "
           "\"tree_kb\": %ld, \"lingering\": %s}\n", code, ns, exit_stop ? "true" : "false", hwm,
           ru.ru_maxrss, cru.ru_maxrss, lingering ? "true" : "false");
    return 0;
}
