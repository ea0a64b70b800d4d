// An LD_PRELOAD shim for the fault tests: makes fdatasync(2) fail with EIO on chosen calls.
//   SPSH_FAIL_MATCH  only descriptors whose path (readlink /proc/self/fd/N) contains this
//   SPSH_FAIL_NTH    fail the Nth matching call in the whole process (counted across threads)
//   SPSH_FAIL_COUNT  how many calls to fail from there (default 1)
// Every injected failure is written to standard error as "fail_fdatasync: injected EIO on PATH".
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_long seen;

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    const char *match = getenv("SPSH_FAIL_MATCH");
    if (match) {
        char link[64], path[4096];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, path, sizeof path - 1);
        if (n > 0) {
            path[n] = 0;
            if (strstr(path, match)) {
                long nth = getenv("SPSH_FAIL_NTH") ? atol(getenv("SPSH_FAIL_NTH")) : 1;
                long count = getenv("SPSH_FAIL_COUNT") ? atol(getenv("SPSH_FAIL_COUNT")) : 1;
                long k = atomic_fetch_add(&seen, 1) + 1;
                if (k >= nth && k < nth + count) {
                    fprintf(stderr, "fail_fdatasync: injected EIO on %s\n", path);
                    errno = EIO;
                    return -1;
                }
            }
        }
    }
    return real(fd);
}
