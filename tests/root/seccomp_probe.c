/* seccomp_probe: make raw system calls and print what each returned, one line per call:
 *
 *     NAME 0        the call returned >= 0
 *     NAME ERRNO    it failed with errno ERRNO (a number)
 *
 * Usage: seccomp_probe NAME=NR[,ARG...] ...   (numbers in decimal or 0x hex, up to 6 args)
 * Built with gcc -static so it runs in a busybox rootfs; tests/root/test_seccomp.py runs it
 * under a filter it loads itself and inside runc, and compares the two.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        unsigned long long v[7] = { 0 };
        char *eq = strchr(argv[i], '='), *p;
        int n = 0;
        long r;

        if (!eq) {
            fprintf(stderr, "usage: seccomp_probe NAME=NR[,ARG...] ...\n");
            return 2;
        }
        *eq = '\0';
        for (p = eq + 1; n < 7; p++) {
            v[n++] = strtoull(p, &p, 0);
            if (*p != ',')
                break;
        }
        errno = 0;
        r = syscall((long)v[0], v[1], v[2], v[3], v[4], v[5], v[6]);
        printf("%s %d\n", argv[i], r < 0 ? errno : 0);
    }
    return 0;
}
