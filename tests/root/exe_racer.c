/* exe_racer: for SECONDS, open /proc/PID/exe of every other process it sees, over and over,
 * and print the device and inode of each distinct file it managed to open, one line each:
 *
 *     DEV INO PID
 *
 * runc CVE-2019-5736 in the form of a race: a process in the container watches for a
 * process of the runtime that joins it (an exec) and opens its executable while it is still
 * the runtime's own binary on the host. Built with gcc -static so it runs in a busybox rootfs.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    time_t end = time(NULL) + (argc > 1 ? atoi(argv[1]) : 5);
    unsigned long seen[256][2];
    int nseen = 0, self = getpid();

    printf("READY\n");
    fflush(stdout);
    while (time(NULL) < end) {
        DIR *d = opendir("/proc");
        struct dirent *e;

        if (!d)
            return 2;
        while ((e = readdir(d)) != NULL) {
            int pid = atoi(e->d_name), fd, i;
            char path[64];
            struct stat st;

            if (pid <= 0 || pid == self)
                continue;
            snprintf(path, sizeof path, "/proc/%d/exe", pid);
            fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0)
                continue;
            if (fstat(fd, &st) == 0) {
                for (i = 0; i < nseen; i++)
                    if (seen[i][0] == st.st_dev && seen[i][1] == st.st_ino)
                        break;
                if (i == nseen && nseen < 256) {
                    seen[nseen][0] = st.st_dev;
                    seen[nseen][1] = st.st_ino;
                    nseen++;
                    printf("%lu %lu %d\n", (unsigned long)st.st_dev, (unsigned long)st.st_ino,
                           pid);
                    fflush(stdout);
                }
            }
            close(fd);
        }
        closedir(d);
    }
    return 0;
}
