#include "CSpoolshipLinux.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <linux/openat2.h>
#include <malloc.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <isa-l/crc.h>
#include <pthread.h>
#include <setjmp.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

const unsigned int spsh_SPLICE_F_MOVE = SPLICE_F_MOVE;
const unsigned int spsh_SPLICE_F_NONBLOCK = SPLICE_F_NONBLOCK;
const unsigned int spsh_SPLICE_F_MORE = SPLICE_F_MORE;
const unsigned int spsh_RENAME_NOREPLACE = RENAME_NOREPLACE;
const uint64_t spsh_RESOLVE_BENEATH = RESOLVE_BENEATH;
const uint64_t spsh_RESOLVE_NO_SYMLINKS = RESOLVE_NO_SYMLINKS;
const uint64_t spsh_RESOLVE_NO_MAGICLINKS = RESOLVE_NO_MAGICLINKS;

_Static_assert(sizeof(loff_t) == sizeof(int64_t), "loff_t is 64-bit");
_Static_assert(sizeof(off_t) == sizeof(int64_t), "off_t is 64-bit");

ssize_t spsh_splice(int fd_in, int64_t *off_in, int fd_out, int64_t *off_out, size_t len, unsigned int flags) {
    return splice(fd_in, (loff_t *)off_in, fd_out, (loff_t *)off_out, len, flags);
}

int spsh_pipe2(int fds[2], int flags) { return pipe2(fds, flags); }

int spsh_set_pipe_size(int fd, int size) { return fcntl(fd, F_SETPIPE_SZ, size); }

int spsh_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags) {
    return renameat2(olddirfd, oldpath, newdirfd, newpath, flags);
}

int spsh_openat2(int dirfd, const char *path, int flags, unsigned int mode, uint64_t resolve) {
    struct open_how how = {0};
    how.flags = (uint64_t)flags;
    how.mode = ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) ? mode : 0;
    how.resolve = resolve;
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

int spsh_openat_beneath(int dirfd, const char *path, int flags, unsigned int mode) {
    size_t len = strlen(path);
    if (len == 0) { errno = ENOENT; return -1; }
    if (len >= PATH_MAX) { errno = ENAMETOOLONG; return -1; }
    if (path[0] == '/') { errno = EXDEV; return -1; }
    char buf[PATH_MAX];
    memcpy(buf, path, len + 1);
    int cur = dirfd;  /* not ours to close */
    char *part = buf;
    for (;;) {
        char *slash = strchr(part, '/');
        if (slash) *slash = '\0';
        int last = slash == NULL;
        if (!last && slash[1] == '\0') last = 1;  /* "dir/": the trailing slash adds nothing */
        int fd;
        if (strcmp(part, "..") == 0) {
            errno = EXDEV;
            fd = -1;
        } else if (last) {
            /* O_NOFOLLOW: a symlink as the last component is ELOOP, even with O_CREAT. */
            do fd = openat(cur, part[0] ? part : ".", flags | O_NOFOLLOW | O_CLOEXEC, (mode_t)mode);
            while (fd < 0 && errno == EINTR);
        } else if (part[0] == '\0' || strcmp(part, ".") == 0) {
            part = slash + 1;  /* "a//b", "./a": stay where we are */
            continue;
        } else {
            /* A directory on the way, held by descriptor: renames elsewhere cannot move us
               out. O_PATH needs only search permission; with O_NOFOLLOW and O_DIRECTORY a
               symlink is ENOTDIR. */
            do fd = openat(cur, part, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            while (fd < 0 && errno == EINTR);
        }
        if (cur != dirfd) {
            int saved = errno;
            close(cur);
            errno = saved;
        }
        if (fd < 0 || last) return fd;
        cur = fd;
        part = slash + 1;
    }
}

int spsh_accept4_cloexec(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC); }

int spsh_kernel_tls_probe(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return errno;
    int r = setsockopt(fd, IPPROTO_TCP, 31 /* TCP_ULP */, "tls", 3);
    int e = r == 0 ? 0 : errno;
    close(fd);
    return e;
}

ssize_t spsh_sendfile(int out_fd, int in_fd, int64_t *offset, size_t count) {
    return sendfile(out_fd, in_fd, (off_t *)offset, count);
}

int spsh_take_read_lease(int fd) {
    if (fcntl(fd, F_SETLEASE, F_RDLCK) == 0) return 0;
    if (errno == EAGAIN) return 1;
    return -1;
}

int spsh_read_lease_intact(int fd) { return fcntl(fd, F_GETLEASE) == F_RDLCK; }

int spsh_release_lease(int fd) { return fcntl(fd, F_SETLEASE, F_UNLCK); }

extern char **environ;

int spsh_spawn_shell(const char *command, int *pid_out) {
    posix_spawnattr_t attr;
    int rc = posix_spawnattr_init(&attr);
    if (rc != 0) return rc;
    // The daemon blocks its stop signals for a sigwait thread and ignores SIGPIPE: a child must
    // start with neither, as if started from a shell.
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    char *argv[] = {"/bin/sh", "-c", (char *)command, NULL};
    pid_t pid = 0;
    rc = posix_spawn(&pid, "/bin/sh", &actions, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (rc == 0) *pid_out = pid;
    return rc;
}

int spsh_fix_mmap_threshold(int bytes) {
    return mallopt(M_MMAP_THRESHOLD, bytes);
}

int64_t spsh_birth_ns(int fd) {
    struct statx sx;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_BTIME, &sx) != 0) return -1;
    if (!(sx.stx_mask & STATX_BTIME)) return 0;
    return (int64_t)sx.stx_btime.tv_sec * 1000000000 + (int64_t)sx.stx_btime.tv_nsec;
}

int spsh_syncfs(int fd) {
    return syncfs(fd);
}

int spsh_open_unnamed(int dirfd, unsigned int mode) {
    return openat(dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, mode);
}

int spsh_link_unnamed(int fd, int dirfd, const char *name) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    return linkat(AT_FDCWD, path, dirfd, name, AT_SYMLINK_FOLLOW);
}

// The SIGBUS guard of spsh_crc32_mapped: a thread that reads a mapping sets `bus_guard` to its
// jump buffer and `bus_lo`/`bus_hi` to the mapping; the handler jumps back there for a fault
// inside it, and passes anything else to the handler installed before (the Swift runtime's
// backtracer, or the default action).
static __thread sigjmp_buf *bus_guard;
static __thread const char *bus_lo, *bus_hi;
static struct sigaction bus_previous;
static pthread_once_t bus_once = PTHREAD_ONCE_INIT;

static void bus_handler(int sig, siginfo_t *info, void *context) {
    const char *at = info ? (const char *)info->si_addr : NULL;
    if (bus_guard && at >= bus_lo && at < bus_hi) siglongjmp(*bus_guard, 1);
    if (bus_previous.sa_flags & SA_SIGINFO) {
        if (bus_previous.sa_sigaction) { bus_previous.sa_sigaction(sig, info, context); return; }
    } else if (bus_previous.sa_handler != SIG_DFL && bus_previous.sa_handler != SIG_IGN) {
        bus_previous.sa_handler(sig);
        return;
    }
    // The default action: with it restored, the faulting access runs again and kills.
    signal(SIGBUS, SIG_DFL);
}

static void bus_install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = bus_handler;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &bus_previous);
}

enum { MAP_WINDOW = 64 << 20 };

int spsh_crc32_mapped(int fd, int64_t offset, int64_t length, uint32_t *crc) {
    pthread_once(&bus_once, bus_install);
    long page = sysconf(_SC_PAGESIZE);
    uint32_t c = *crc;
    while (length > 0) {
        int64_t base = offset - offset % page;
        size_t skip = (size_t)(offset - base);
        size_t n = (size_t)(length < MAP_WINDOW ? length : MAP_WINDOW);
        size_t span = skip + n;
        char *map = mmap(NULL, span, PROT_READ, MAP_SHARED, fd, base);
        if (map == MAP_FAILED) return -1;
        madvise(map, span, MADV_SEQUENTIAL);
        sigjmp_buf jump;
        // After a jump back only `map` and `span` are used, which nothing changes in between.
        if (sigsetjmp(jump, 1) == 0) {
            bus_lo = map;
            bus_hi = map + span;
            bus_guard = &jump;
            c = crc32_gzip_refl(c, (const unsigned char *)map + skip, n);
            bus_guard = NULL;
        } else {
            bus_guard = NULL;
            munmap(map, span);
            errno = EIO;
            return -1;
        }
        munmap(map, span);
        offset += (int64_t)n;
        length -= (int64_t)n;
    }
    *crc = c;
    return 0;
}
