#include "CSpoolshipLinux.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
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

int spsh_accept4_cloexec(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC); }

ssize_t spsh_sendfile(int out_fd, int in_fd, int64_t *offset, size_t count) {
    return sendfile(out_fd, in_fd, (off_t *)offset, count);
}

int spsh_has_writers(int fd) {
    if (fcntl(fd, F_SETLEASE, F_RDLCK) == 0) {
        fcntl(fd, F_SETLEASE, F_UNLCK);
        return 0;
    }
    if (errno == EAGAIN) return 1;
    return -1;
}
