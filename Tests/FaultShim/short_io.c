// An LD_PRELOAD shim for the tests of row 11: sendfile(2) and splice(2) that are interrupted,
// cut short, or time out, as the kernel may do to a real call.
//   SPSH_IO_SEED    seed of the choices (each call's fate is a hash of the seed and its number)
//   SPSH_IO_EINTR   1 call in N fails with EINTR before moving anything (0: never)
//   SPSH_IO_SHORT   1 call in N moves a random part of what was asked (a real, shorter call)
//   SPSH_IO_EAGAIN  every Nth call on a socket fails with EAGAIN, as a blocking socket does
//                   when its SO_SNDTIMEO/SO_RCVTIMEO runs out
// At exit, the counts are written to standard error as
//   "short_io: sendfile calls=C eintr=I short=S eagain=A" and the same for splice.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/sendfile.h>
#include <sys/stat.h>

enum { CALLS, EINTRS, SHORTS, EAGAINS, KINDS };
static atomic_long counts[2][KINDS];  // [0] sendfile, [1] splice
static atomic_long socket_calls;

static long knob(const char *name) {
    const char *v = getenv(name);
    return v ? atol(v) : 0;
}

static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static int is_socket(int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}

// What to do with call number n of `which`: 0 pass, 1 EINTR, 2 short, 3 EAGAIN.
static int fate(int which, int on_socket, size_t *len) {
    long n = atomic_fetch_add(&counts[which][CALLS], 1);
    uint64_t h = mix((uint64_t)knob("SPSH_IO_SEED") * 4 + (uint64_t)which * 2 + 1 + ((uint64_t)n << 8));
    long eintr = knob("SPSH_IO_EINTR"), shrt = knob("SPSH_IO_SHORT"), eagain = knob("SPSH_IO_EAGAIN");
    if (eagain > 0 && on_socket && (atomic_fetch_add(&socket_calls, 1) + 1) % eagain == 0) {
        atomic_fetch_add(&counts[which][EAGAINS], 1);
        return 3;
    }
    h = mix(h);
    if (eintr > 0 && h % (uint64_t)eintr == 0) {
        atomic_fetch_add(&counts[which][EINTRS], 1);
        return 1;
    }
    h = mix(h);
    if (shrt > 0 && *len > 1 && h % (uint64_t)shrt == 0) {
        atomic_fetch_add(&counts[which][SHORTS], 1);
        *len = 1 + (size_t)(mix(h) % (*len - 1));
        return 2;
    }
    return 0;
}

static ssize_t injected(int f) {
    errno = f == 1 ? EINTR : EAGAIN;
    return -1;
}

ssize_t sendfile(int out_fd, int in_fd, off_t *offset, size_t count) {
    static ssize_t (*real)(int, int, off_t *, size_t);
    if (!real) real = (ssize_t (*)(int, int, off_t *, size_t))dlsym(RTLD_NEXT, "sendfile");
    int f = fate(0, 1, &count);
    if (f == 1 || f == 3) return injected(f);
    return real(out_fd, in_fd, offset, count);
}

ssize_t sendfile64(int out_fd, int in_fd, off_t *offset, size_t count) {
    return sendfile(out_fd, in_fd, offset, count);
}

ssize_t splice(int fd_in, loff_t *off_in, int fd_out, loff_t *off_out, size_t len, unsigned int flags) {
    static ssize_t (*real)(int, loff_t *, int, loff_t *, size_t, unsigned int);
    if (!real) real = (ssize_t (*)(int, loff_t *, int, loff_t *, size_t, unsigned int))dlsym(RTLD_NEXT, "splice");
    int f = fate(1, is_socket(fd_in) || is_socket(fd_out), &len);
    if (f == 1 || f == 3) return injected(f);
    return real(fd_in, off_in, fd_out, off_out, len, flags);
}

__attribute__((destructor)) static void report(void) {
    const char *names[2] = {"sendfile", "splice"};
    for (int i = 0; i < 2; i++) {
        if (atomic_load(&counts[i][CALLS]) == 0) continue;
        fprintf(stderr, "short_io: %s calls=%ld eintr=%ld short=%ld eagain=%ld\n", names[i],
                atomic_load(&counts[i][CALLS]), atomic_load(&counts[i][EINTRS]),
                atomic_load(&counts[i][SHORTS]), atomic_load(&counts[i][EAGAINS]));
    }
}
