// baseline: the bare transfer spoolship is measured against. One file goes over loopback TCP
// from a sender process to a receiver process, which writes it to a new file; nothing else
// (no framing, no checksum, no rename, no acknowledgement).
//
//   baseline zc|rw SRC DST [sync]
//
//   zc    sender: sendfile(2) file -> socket; receiver: splice(2) socket -> pipe -> file
//   rw    sender: read(2)/write(2) through a 64 KiB buffer; receiver: the same
//   sync  the receiver ends with fdatasync(2) on the file, as spoolship always does
//
// Prints one line of key=value pairs: mode, sync, bytes, wall_s (from the connect to the
// receiver's last call), and per side cpu_s (user+system) and maxrss_kb.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { CHUNK = 1 << 20, BUF = 64 << 10 };

static void fail(const char *what, const char *detail) {
    fprintf(stderr, "baseline: %s %s: %s\n", what, detail ? detail : "", strerror(errno));
    exit(1);
}

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double cpu_of(const struct rusage *u) {
    return (double)(u->ru_utime.tv_sec + u->ru_stime.tv_sec) + (double)(u->ru_utime.tv_usec + u->ru_stime.tv_usec) * 1e-6;
}

static void write_all(int fd, const char *p, size_t n, const char *what) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) fail("write", what);
        p += w;
        n -= (size_t)w;
    }
}

// The receiver: takes one connection, writes what arrives to dst, syncs if asked.
static void receive(int listener, const char *dst, int zero_copy, int sync) {
    int conn = accept(listener, NULL, NULL);
    if (conn < 0) fail("accept", NULL);
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) fail("open", dst);
    if (zero_copy) {
        int pipefd[2];
        if (pipe2(pipefd, O_CLOEXEC) != 0) fail("pipe2", NULL);
        fcntl(pipefd[1], F_SETPIPE_SZ, CHUNK);
        for (;;) {
            ssize_t in = splice(conn, NULL, pipefd[1], NULL, CHUNK, SPLICE_F_MOVE | SPLICE_F_MORE);
            if (in < 0 && errno == EINTR) continue;
            if (in < 0) fail("splice", "socket -> pipe");
            if (in == 0) break;
            while (in > 0) {
                ssize_t moved = splice(pipefd[0], NULL, out, NULL, (size_t)in, SPLICE_F_MOVE | SPLICE_F_MORE);
                if (moved < 0 && errno == EINTR) continue;
                if (moved <= 0) fail("splice", "pipe -> file");
                in -= moved;
            }
        }
    } else {
        char *buf = malloc(BUF);
        for (;;) {
            ssize_t n = read(conn, buf, BUF);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) fail("read", "socket");
            if (n == 0) break;
            write_all(out, buf, (size_t)n, dst);
        }
    }
    if (sync && fdatasync(out) != 0) fail("fdatasync", dst);
    close(out);
}

// The sender: the whole file to the socket.
static void send_file(int sock, const char *src, int zero_copy, long long *bytes) {
    int in = open(src, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (in < 0 || fstat(in, &st) != 0) fail("open", src);
    *bytes = st.st_size;
    if (zero_copy) {
        off_t at = 0;
        while (at < st.st_size) {
            ssize_t n = sendfile(sock, in, &at, (size_t)(st.st_size - at));
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) fail("sendfile", src);
        }
    } else {
        char *buf = malloc(BUF);
        for (;;) {
            ssize_t n = read(in, buf, BUF);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) fail("read", src);
            if (n == 0) break;
            write_all(sock, buf, (size_t)n, "socket");
        }
    }
    close(in);
}

int main(int argc, char **argv) {
    if (argc < 4 || (strcmp(argv[1], "zc") && strcmp(argv[1], "rw")) || (argc > 4 && strcmp(argv[4], "sync"))) {
        fprintf(stderr, "usage: baseline zc|rw SRC DST [sync]\n");
        return 64;
    }
    int zero_copy = !strcmp(argv[1], "zc"), sync = argc > 4;
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, len) || listen(listener, 1) ||
        getsockname(listener, (struct sockaddr *)&addr, &len))
        fail("listen", "127.0.0.1");

    pid_t child = fork();
    if (child < 0) fail("fork", NULL);
    if (child == 0) {
        receive(listener, argv[3], zero_copy, sync);
        _exit(0);
    }
    close(listener);
    int sock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    double start = seconds();
    if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof addr)) fail("connect", NULL);
    long long bytes = 0;
    send_file(sock, argv[2], zero_copy, &bytes);
    shutdown(sock, SHUT_WR);
    struct rusage sender;
    getrusage(RUSAGE_SELF, &sender);
    int status = 0;
    struct rusage receiver;
    if (wait4(child, &status, 0, &receiver) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "baseline: the receiver failed\n");
        return 1;
    }
    double wall = seconds() - start;
    printf("mode=%s sync=%d bytes=%lld wall_s=%.3f sender_cpu_s=%.3f receiver_cpu_s=%.3f sender_maxrss_kb=%ld receiver_maxrss_kb=%ld\n",
           argv[1], sync, bytes, wall, cpu_of(&sender), cpu_of(&receiver), sender.ru_maxrss, receiver.ru_maxrss);
    return 0;
}
