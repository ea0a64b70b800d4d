// Linux calls that Swift's Glibc module does not show (it is imported without _GNU_SOURCE).
// Plain prototypes and constants only: the real calls live in shim.c, compiled with
// _GNU_SOURCE. Each returns what the kernel returns (-1 and errno on failure).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

extern const unsigned int spsh_SPLICE_F_MOVE;
extern const unsigned int spsh_SPLICE_F_NONBLOCK;
extern const unsigned int spsh_SPLICE_F_MORE;
extern const unsigned int spsh_RENAME_NOREPLACE;
extern const uint64_t spsh_RESOLVE_BENEATH;
extern const uint64_t spsh_RESOLVE_NO_SYMLINKS;
extern const uint64_t spsh_RESOLVE_NO_MAGICLINKS;

ssize_t spsh_splice(int fd_in, int64_t *off_in, int fd_out, int64_t *off_out, size_t len, unsigned int flags);
int spsh_pipe2(int fds[2], int flags);
int spsh_set_pipe_size(int fd, int size);
int spsh_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags);
/// openat2(2) with the given RESOLVE_* flags; falls back to nothing: ENOSYS is returned as is.
int spsh_openat2(int dirfd, const char *path, int flags, unsigned int mode, uint64_t resolve);
/// The same promise as openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, where openat2 is
/// refused (kernels before 5.6, seccomp filters such as systemd's RestrictSUIDSGID=): `path`
/// is walked one component at a time with openat(2) and O_NOFOLLOW, each directory below the
/// one before it by descriptor, never by a path string. An absolute path or a ".." component
/// fails with EXDEV (openat2's "would escape"), a symlink with ELOOP (last component) or
/// ENOTDIR (a directory on the way).
int spsh_openat_beneath(int dirfd, const char *path, int flags, unsigned int mode);
int spsh_accept4_cloexec(int fd);
/// Whether this kernel can take TLS keys (kernel TLS): asks for the "tls" upper-layer protocol
/// (TCP_ULP) on a socket that is not connected. Returns 0 or ENOTCONN when the kernel has TLS
/// (the module is there, or this call loaded it), ENOENT when it has none, another errno when
/// the probe failed.
int spsh_kernel_tls_probe(void);
/// Takes a read lease on `fd` (opened read-only) and keeps it: 0 taken, 1 someone has the file
/// open for writing, -1 not possible (errno; EACCES when we neither own the file nor have
/// CAP_LEASE). Any later open for writing breaks it, and waits for our release (or the
/// kernel's lease-break-time) before it returns.
int spsh_take_read_lease(int fd);
/// Whether the read lease on `fd` is still whole (no open for writing has broken it).
int spsh_read_lease_intact(int fd);
/// Gives the lease back (an open waiting on its break goes on).
int spsh_release_lease(int fd);
ssize_t spsh_sendfile(int out_fd, int in_fd, int64_t *offset, size_t count);
/// Starts `/bin/sh -c command` in a process group of its own, with stdin from /dev/null, an
/// empty signal mask and default signal dispositions. Returns 0 and the pid, or an errno value.
int spsh_spawn_shell(const char *command, int *pid_out);
/// Fixes glibc's mmap threshold at `bytes` (M_MMAP_THRESHOLD): larger allocations are always
/// mapped and unmapped, instead of the threshold growing after the first free and the
/// buffers of hundreds of threads staying resident in malloc's arenas. Returns mallopt's result.
int spsh_fix_mmap_threshold(int bytes);
/// A file's birth time (statx STATX_BTIME) in nanoseconds since the epoch: 0 when the file
/// system does not record one, -1 with errno set when statx failed. With the inode number it
/// tells a file from a later one that reuses the inode.
int64_t spsh_birth_ns(int fd);
/// syncfs(2): writes back and flushes the whole file system that `fd` is on. Since Linux 5.8 it
/// returns the writeback errors of that file system seen since `fd` was opened (or since the
/// last syncfs through it), each once.
int spsh_syncfs(int fd);
/// A new file with no name yet in the directory `dirfd` (open(2)'s O_TMPFILE, read-write,
/// close-on-exec); linked into place later by `spsh_link_unnamed`. -1 with errno EOPNOTSUPP
/// or EISDIR where the file system cannot make one.
int spsh_open_unnamed(int dirfd, unsigned int mode);
/// Gives the file open as `fd` the name `name` in `dirfd` (linkat(2) through /proc/self/fd,
/// which needs no capability); -1 with errno EEXIST when the name is taken (never replaced).
int spsh_link_unnamed(int fd, int dirfd, const char *name);
/// ISA-L's CRC-32 (the one zlib computes) of `length` bytes of `fd` from `offset`, read through
/// a read-only shared mapping of the file: over the page cache itself, with no copy into a
/// buffer. `*crc` is the CRC so far, updated. A SIGBUS under the mapping (the file truncated
/// meanwhile, or an I/O error reading a page) is caught on this thread and returned as -1 with
/// errno EIO: an error for this file, never the process's death. Other signals, and a SIGBUS
/// of any other code, go to the handler that was there before. -1 with errno also when mmap
/// fails.
int spsh_crc32_mapped(int fd, int64_t offset, int64_t length, uint32_t *crc);
