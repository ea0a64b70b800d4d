// An LD_PRELOAD shim for the fault tests: makes fdatasync(2) fail with EIO on chosen calls.
//   SPSH_FAIL_MATCH  only descriptors whose path (readlink /proc/self/fd/N) contains this
//   SPSH_FAIL_NTH    fail the Nth matching call in the whole process (counted across threads)
//   SPSH_FAIL_COUNT  how many calls to fail from there (default 1)
//   SPSH_FAIL_SIZE   only descriptors of files of exactly this many bytes (with or without MATCH)
//   SPSH_FAIL_SYNCFS_COUNT  fail this many syncfs(2) calls, the first ones (default 0)
// Every injected failure is written to standard error as "fail_fdatasync: injected EIO on PATH"
// ("... on syncfs PATH" for syncfs).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static atomic_long seen, syncfs_seen;

// Whether fd's file is one the test chose: its path contains SPSH_FAIL_MATCH and its size is
// SPSH_FAIL_SIZE, where given (at least one of them must be).
static int chosen(int fd, char *path, size_t cap) {
    const char *match = getenv("SPSH_FAIL_MATCH"), *size = getenv("SPSH_FAIL_SIZE");
    if (!match && !size) return 0;
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, cap - 1);
    if (n <= 0) return 0;
    path[n] = 0;
    if (match && !strstr(path, match)) return 0;
    struct stat st;
    if (size && (fstat(fd, &st) != 0 || st.st_size != atoll(size))) return 0;
    return 1;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    char path[4096];
    if (chosen(fd, path, sizeof path)) {
        long nth = getenv("SPSH_FAIL_NTH") ? atol(getenv("SPSH_FAIL_NTH")) : 1;
        long count = getenv("SPSH_FAIL_COUNT") ? atol(getenv("SPSH_FAIL_COUNT")) : 1;
        long k = atomic_fetch_add(&seen, 1) + 1;
        if (k >= nth && k < nth + count) {
            fprintf(stderr, "fail_fdatasync: injected EIO on %s\n", path);
            errno = EIO;
            return -1;
        }
    }
    return real(fd);
}

int syncfs(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "syncfs");
    long count = getenv("SPSH_FAIL_SYNCFS_COUNT") ? atol(getenv("SPSH_FAIL_SYNCFS_COUNT")) : 0;
    if (atomic_fetch_add(&syncfs_seen, 1) < count) {
        // The real sync still runs, as a failing disk's would: only its report is an error.
        real(fd);
        char link[64], path[4096] = "?";
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, path, sizeof path - 1);
        if (n > 0) path[n] = 0;
        fprintf(stderr, "fail_fdatasync: injected EIO on syncfs %s\n", path);
        errno = EIO;
        return -1;
    }
    return real(fd);
}
