// batchsync: ways to make a stream of new small files durable in batches, as a collector's
// commit batches must. Writes N files of 4 KiB into DIR/.p (or unnamed), BATCH at a time, and
// for each batch:
//
//   batchsync pf|ren-pf|sfs|tmp-sfs N BATCH DIR
//
//   pf       every file's fdatasync, submitted at once through io_uring (liburing), then the
//            files are renamed into DIR and DIR is fsynced
//   ren-pf   the same (kept for its name: a named partial, fdatasync'ed, renamed)
//   sfs      one syncfs + fsync of the partial directory for the batch's data, then the
//            renames and an fsync of DIR
//   tmp-sfs  the files made with O_TMPFILE, one syncfs + fsync for their data, then linkat into
//            DIR and a second syncfs + fsync of DIR (the links' inode link counts)
//
// Prints: mode, n, batch, wall seconds, CPU seconds (user+system). docs/PERFORMANCE.md,
// "Small files at the disk's ceiling", has what it measured. Build: cc -O2 batchsync.c -luring
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: batchsync pf|ren-pf|sfs|tmp-sfs N BATCH DIR\n");
        return 64;
    }
    const char *mode = argv[1], *dir = argv[4];
    int n = atoi(argv[2]), batch = atoi(argv[3]);
    int unnamed = !strncmp(mode, "tmp", 3), uring = !strcmp(mode, "pf") || !strcmp(mode, "ren-pf");
    if (mkdir(dir, 0755) != 0) die("mkdir");
    int d = open(dir, O_RDONLY | O_DIRECTORY);
    char pdir[4096];
    snprintf(pdir, sizeof pdir, "%s/.p", dir);
    if (mkdir(pdir, 0755) != 0) die("mkdir .p");
    int p = open(pdir, O_RDONLY | O_DIRECTORY);
    static char buf[4096];
    memset(buf, 'x', sizeof buf);
    struct io_uring ring;
    if (uring && io_uring_queue_init(1024, &ring, 0) != 0) die("io_uring_queue_init");
    int *fds = malloc(sizeof(int) * (size_t)batch);
    char name[64], part[64], proc[64];
    double t0 = now();
    for (int s = 0; s < n; s += batch) {
        int m = n - s < batch ? n - s : batch;
        for (int i = 0; i < m; i++) {
            snprintf(part, sizeof part, "f%07d.part", s + i);
            fds[i] = unnamed ? open(pdir, O_TMPFILE | O_RDWR, 0644) : openat(p, part, O_RDWR | O_CREAT | O_TRUNC, 0644);
            if (fds[i] < 0) die("open");
            if (write(fds[i], buf, sizeof buf) != (ssize_t)sizeof buf) die("write");
        }
        if (uring) {
            for (int i = 0; i < m; i++) io_uring_prep_fsync(io_uring_get_sqe(&ring), fds[i], IORING_FSYNC_DATASYNC);
            io_uring_submit_and_wait(&ring, (unsigned)m);
            for (int i = 0; i < m; i++) {
                struct io_uring_cqe *c;
                io_uring_wait_cqe(&ring, &c);
                if (c->res < 0) { errno = -c->res; die("fdatasync"); }
                io_uring_cqe_seen(&ring, c);
            }
        } else {
            if (syncfs(p) != 0 || fsync(p) != 0) die("syncfs");
        }
        for (int i = 0; i < m; i++) {
            snprintf(name, sizeof name, "f%07d", s + i);
            if (unnamed) {
                snprintf(proc, sizeof proc, "/proc/self/fd/%d", fds[i]);
                if (linkat(AT_FDCWD, proc, d, name, AT_SYMLINK_FOLLOW) != 0) die("linkat");
            } else {
                snprintf(part, sizeof part, "f%07d.part", s + i);
                if (renameat2(p, part, d, name, RENAME_NOREPLACE) != 0) die("rename");
            }
            close(fds[i]);
        }
        if (unnamed && syncfs(d) != 0) die("syncfs");
        if (fsync(d) != 0) die("fsync");
    }
    double wall = now() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("%s n=%d batch=%d wall_s=%.3f cpu_s=%.3f\n", mode, n, batch, wall,
           ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6);
    return 0;
}
