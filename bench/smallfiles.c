// smallfiles: the disk's own ceiling for many small files, which spoolship's workload 2 is
// measured against. One process copies every regular file of SRC into the new directory DST
// (open, read, create, write, close), and then makes them durable:
//
//   smallfiles none|syncfs|fdatasync SRC DST
//
//   none       no sync at all: what the page cache takes, nothing durable
//   syncfs     every file written, then one syncfs(2) of DST's file system and an fsync of DST:
//              the cheapest sound way to make a set of new files durable (since Linux 5.8
//              syncfs reports the file system's writeback errors, so a 0 means every byte and
//              every entry is on the disk)
//   fdatasync  each file fdatasync'ed as it is written, then DST fsynced: one flush a file
//
// Prints one line of key=value pairs: mode, files, bytes, wall_s (from the first open to the
// last sync), cpu_s (user+system) and maxrss_kb.
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void fail(const char *what, const char *detail) {
    fprintf(stderr, "smallfiles: %s %s: %s\n", what, detail ? detail : "", strerror(errno));
    exit(1);
}

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 4 || (strcmp(argv[1], "none") && strcmp(argv[1], "syncfs") && strcmp(argv[1], "fdatasync"))) {
        fprintf(stderr, "usage: smallfiles none|syncfs|fdatasync SRC DST\n");
        return 64;
    }
    const char *mode = argv[1];
    int each = !strcmp(mode, "fdatasync"), once = !strcmp(mode, "syncfs");
    // The names are read before the clock starts: listing the source is not the copy.
    DIR *d = opendir(argv[2]);
    if (!d) fail("opendir", argv[2]);
    size_t n = 0, cap = 1024;
    char **names = malloc(cap * sizeof *names);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_type != DT_REG) continue;
        if (n == cap) names = realloc(names, (cap *= 2) * sizeof *names);
        names[n++] = strdup(e->d_name);
    }
    int src = dirfd(d);
    if (mkdir(argv[3], 0755) != 0) fail("mkdir", argv[3]);
    int dst = open(argv[3], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dst < 0) fail("open", argv[3]);
    static char buf[1 << 20];
    long long bytes = 0;
    double t0 = seconds();
    for (size_t i = 0; i < n; i++) {
        int in = openat(src, names[i], O_RDONLY | O_CLOEXEC);
        if (in < 0) fail("open", names[i]);
        int out = openat(dst, names[i], O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (out < 0) fail("create", names[i]);
        ssize_t r;
        while ((r = read(in, buf, sizeof buf)) > 0) {
            for (ssize_t off = 0; off < r;) {
                ssize_t w = write(out, buf + off, (size_t)(r - off));
                if (w < 0) fail("write", names[i]);
                off += w;
            }
            bytes += r;
        }
        if (r < 0) fail("read", names[i]);
        if (each && fdatasync(out) != 0) fail("fdatasync", names[i]);
        if (close(out) != 0) fail("close", names[i]);
        close(in);
    }
    if (once && syncfs(dst) != 0) fail("syncfs", argv[3]);
    if ((each || once) && fsync(dst) != 0) fail("fsync", argv[3]);
    double wall = seconds() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
    printf("mode=%s files=%zu bytes=%lld wall_s=%.3f cpu_s=%.3f maxrss_kb=%ld\n", mode, n, bytes, wall, cpu, ru.ru_maxrss);
    return 0;
}
