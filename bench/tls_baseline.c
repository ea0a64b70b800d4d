// tls_baseline: the bare TLS transfer spoolship with TLS is measured against, built like
// bench/baseline.c. A sender process and a receiver process over loopback TCP, with mutual
// TLS 1.3 (OpenSSL) and the certificates spoolship uses; the receiver writes what arrives to
// a new file. Nothing else: no checksum, no rename, no acknowledgement.
//
//   tls_baseline [options] SRC DST [sync]
//
//   SRC a file: it goes to the file DST. SRC a directory: every regular file in it goes, one
//   after the other on one connection, each behind a header (name, size), into the directory
//   DST (made if missing) under its own name.
//   sync  the receiver ends each file with fdatasync(2), as spoolship always does
//
// Options:
//   --send copy|mmap  copy (default): pread(2) 256 KiB into a buffer, SSL_write it (what
//                     spoolship does without kernel TLS); mmap: SSL_write straight from a
//                     read-only mapping of the file (MAP_POPULATE), 256 KiB a call: no pread
//                     copy, so the difference between the two is what that copy costs the
//                     sender (less the mapping's own cost)
//   --cipher SUITE    the TLS 1.3 suite of both sides (default TLS_AES_128_GCM_SHA256)
//   --ca F --server-cert F --server-key F --client-cert F --client-key F
//                     mutual TLS: the receiver (server) requires a client certificate that the
//                     CA signed; the sender (client) checks that the receiver's carries
//                     IP:127.0.0.1, the receiver that the sender's carries DNS:NAME
//   --client-name NAME  (default bench), as the collector checks the agent id
//   --receive record|fill  record (default): each SSL_read (one TLS record, at most 16 KiB)
//                     is written at once, as spoolship's collector does; fill: the receiver
//                     reads ahead (SSL_CTX_set_read_ahead, a 256 KiB read buffer) and fills its
//                     256 KiB buffer from as many records as have arrived before it writes
//
// The receiver reads with SSL_read into a 256 KiB buffer and write(2)s it. Prints one line of
// key=value pairs: mode, cipher, sync, files, bytes, wall_s (from the connect, handshake
// included, to the receiver's exit), and per side cpu_s (user+system) and maxrss_kb.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { BUF = 256 << 10, HEADER = 12 };

static void fail(const char *what, const char *detail) {
    fprintf(stderr, "tls_baseline: %s %s: %s\n", what, detail ? detail : "", strerror(errno));
    exit(1);
}

static void fail_ssl(const char *what) {
    fprintf(stderr, "tls_baseline: %s:\n", what);
    ERR_print_errors_fp(stderr);
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

static struct {
    const char *cipher, *ca, *server_cert, *server_key, *client_cert, *client_key, *client_name;
    int mmap_send, fill, sync;
} opt = {.cipher = "TLS_AES_128_GCM_SHA256", .client_name = "bench"};

static SSL_CTX *context(int server) {
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (!ctx) fail_ssl("SSL_CTX_new");
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    if (SSL_CTX_set_ciphersuites(ctx, opt.cipher) != 1) fail_ssl("SSL_CTX_set_ciphersuites");
    if (SSL_CTX_load_verify_locations(ctx, opt.ca, NULL) != 1) fail_ssl(opt.ca);
    const char *key = server ? opt.server_key : opt.client_key, *cert = server ? opt.server_cert : opt.client_cert;
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) fail_ssl(key);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) fail_ssl(cert);
    if (SSL_CTX_check_private_key(ctx) != 1) fail_ssl("the key does not match the certificate");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), NULL);
    if (server && opt.fill) {
        SSL_CTX_set_read_ahead(ctx, 1);
        SSL_CTX_set_default_read_buffer_len(ctx, BUF);
    }
    // The peer's identity from its SAN only, as spoolship checks it.
    X509_VERIFY_PARAM *param = SSL_CTX_get0_param(ctx);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NEVER_CHECK_SUBJECT);
    if (server ? X509_VERIFY_PARAM_set1_host(param, opt.client_name, 0) != 1 : X509_VERIFY_PARAM_set1_ip_asc(param, "127.0.0.1") != 1)
        fail_ssl("the peer's name");
    return ctx;
}

static void ssl_write_all(SSL *ssl, const void *p, size_t n) {
    size_t wrote;
    while (n > 0) {
        if (SSL_write_ex(ssl, p, n, &wrote) != 1) fail_ssl("SSL_write");
        p = (const char *)p + wrote;
        n -= wrote;
    }
}

// Exactly n bytes, or 0 at a clean end (close_notify) before the first of them.
static int ssl_read_exact(SSL *ssl, void *p, size_t n) {
    size_t got, at = 0;
    while (at < n) {
        if (SSL_read_ex(ssl, (char *)p + at, n - at, &got) != 1) {
            if (at == 0 && SSL_get_error(ssl, 0) == SSL_ERROR_ZERO_RETURN) return 0;
            fail_ssl("SSL_read");
        }
        at += got;
    }
    return 1;
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

// The receiver: takes one connection; for one file, everything up to close_notify goes to dst;
// for a directory, header and body after header.
static void receive(int listener, const char *dst, int many) {
    SSL_CTX *ctx = context(1);
    int conn = accept(listener, NULL, NULL);
    if (conn < 0) fail("accept", NULL);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, conn);
    if (SSL_accept(ssl) != 1) fail_ssl("SSL_accept");
    char *buf = malloc(BUF);
    if (many && mkdir(dst, 0755) != 0 && errno != EEXIST) fail("mkdir", dst);
    for (;;) {
        unsigned char h[HEADER];
        uint64_t size = UINT64_MAX;
        char path[4096];
        if (many) {
            if (!ssl_read_exact(ssl, h, HEADER)) break;
            uint32_t name_len = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24;
            size = 0;
            for (int i = 0; i < 8; i++) size |= (uint64_t)h[4 + i] << (8 * i);
            int at = snprintf(path, sizeof path, "%s/", dst);
            if (name_len == 0 || name_len >= sizeof path - (size_t)at - 1) fail("header", "name too long");
            if (!ssl_read_exact(ssl, path + at, name_len)) fail("header", "cut short");
            path[at + name_len] = 0;
        } else {
            snprintf(path, sizeof path, "%s", dst);
        }
        int out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (out < 0) fail("open", path);
        uint64_t left = size;
        int ended = 0;
        while (left > 0 && !ended) {
            size_t got, have = 0, want = left < BUF ? (size_t)left : BUF;
            // One record per SSL_read; with fill, more while OpenSSL holds bytes already read.
            do {
                if (SSL_read_ex(ssl, buf + have, want - have, &got) != 1) {
                    if (!many && SSL_get_error(ssl, 0) == SSL_ERROR_ZERO_RETURN) { ended = 1; break; }
                    fail_ssl("SSL_read");
                }
                have += got;
            } while (opt.fill && have < want && SSL_has_pending(ssl));
            write_all(out, buf, have, path);
            left -= have;
        }
        if (opt.sync && fdatasync(out) != 0) fail("fdatasync", path);
        close(out);
        if (!many) break;
    }
    SSL_shutdown(ssl);
}

// The sender: one file, with a header in front of it when many files share the connection.
static long long send_file(SSL *ssl, const char *src, const char *name, char *buf) {
    int in = open(src, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (in < 0 || fstat(in, &st) != 0) fail("open", src);
    size_t at = 0;
    if (name) {
        // The header and the first bytes go in one SSL_write (one record for a small file).
        uint32_t name_len = (uint32_t)strlen(name);
        uint64_t size = (uint64_t)st.st_size;
        for (int i = 0; i < 4; i++) buf[i] = (char)(name_len >> (8 * i));
        for (int i = 0; i < 8; i++) buf[4 + i] = (char)(size >> (8 * i));
        memcpy(buf + HEADER, name, name_len);
        at = HEADER + name_len;
    }
    off_t off = 0;
    if (opt.mmap_send && st.st_size > 0) {
        if (at > 0) ssl_write_all(ssl, buf, at);
        char *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED | MAP_POPULATE, in, 0);
        if (map == MAP_FAILED) fail("mmap", src);
        madvise(map, (size_t)st.st_size, MADV_SEQUENTIAL);
        while (off < st.st_size) {
            size_t n = st.st_size - off < BUF ? (size_t)(st.st_size - off) : BUF;
            ssl_write_all(ssl, map + off, n);
            off += (off_t)n;
        }
        munmap(map, (size_t)st.st_size);
    } else {
        while (off < st.st_size || at > 0) {
            ssize_t n = 0;
            if (off < st.st_size) {
                n = pread(in, buf + at, BUF - at, off);
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0) fail("pread", src);
            }
            ssl_write_all(ssl, buf, at + (size_t)n);
            off += n;
            at = 0;
        }
    }
    close(in);
    return st.st_size;
}

static int by_name(const struct dirent **a, const struct dirent **b) { return strcmp((*a)->d_name, (*b)->d_name); }

int main(int argc, char **argv) {
    static const struct option longs[] = {
        {"send", required_argument, 0, 's'},        {"cipher", required_argument, 0, 'c'},
        {"ca", required_argument, 0, 'a'},          {"server-cert", required_argument, 0, 'C'},
        {"server-key", required_argument, 0, 'K'},  {"client-cert", required_argument, 0, 'x'},
        {"client-key", required_argument, 0, 'y'},  {"client-name", required_argument, 0, 'n'},
        {"receive", required_argument, 0, 'r'},
        {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (o) {
        case 's':
            if (strcmp(optarg, "copy") && strcmp(optarg, "mmap")) goto usage;
            opt.mmap_send = !strcmp(optarg, "mmap");
            break;
        case 'c': opt.cipher = optarg; break;
        case 'a': opt.ca = optarg; break;
        case 'C': opt.server_cert = optarg; break;
        case 'K': opt.server_key = optarg; break;
        case 'x': opt.client_cert = optarg; break;
        case 'y': opt.client_key = optarg; break;
        case 'n': opt.client_name = optarg; break;
        case 'r':
            if (strcmp(optarg, "record") && strcmp(optarg, "fill")) goto usage;
            opt.fill = !strcmp(optarg, "fill");
            break;
        default: goto usage;
        }
    }
    argc -= optind;
    argv += optind;
    if (argc < 2 || argc > 3 || (argc == 3 && strcmp(argv[2], "sync")) || !opt.ca || !opt.server_cert || !opt.server_key ||
        !opt.client_cert || !opt.client_key) {
    usage:
        fprintf(stderr, "usage: tls_baseline [--send copy|mmap] [--cipher SUITE] --ca F --server-cert F --server-key F "
                        "--client-cert F --client-key F [--client-name NAME] [--receive record|fill] SRC DST [sync]\n");
        return 64;
    }
    opt.sync = argc == 3;
    const char *src = argv[0], *dst = argv[1];
    struct stat st;
    if (stat(src, &st) != 0) fail("stat", src);
    int many = S_ISDIR(st.st_mode);
    struct dirent **names = NULL;
    int count = 1;
    if (many && (count = scandir(src, &names, NULL, by_name)) < 0) fail("scandir", src);

    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, len) || listen(listener, 1) ||
        getsockname(listener, (struct sockaddr *)&addr, &len))
        fail("listen", "127.0.0.1");

    pid_t child = fork();
    if (child < 0) fail("fork", NULL);
    if (child == 0) {
        receive(listener, dst, many);
        _exit(0);
    }
    close(listener);
    SSL_CTX *ctx = context(0);
    int sock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    double start = seconds();
    if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof addr)) fail("connect", NULL);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, sock);
    if (SSL_connect(ssl) != 1) fail_ssl("SSL_connect");
    const char *suite = SSL_CIPHER_get_name(SSL_get_current_cipher(ssl)), *version = SSL_get_version(ssl);
    char *buf = malloc(BUF);
    long long bytes = 0, files = 0;
    if (many) {
        char path[4096];
        for (int i = 0; i < count; i++) {
            snprintf(path, sizeof path, "%s/%s", src, names[i]->d_name);
            struct stat fst;
            if (stat(path, &fst) == 0 && S_ISREG(fst.st_mode)) {
                bytes += send_file(ssl, path, names[i]->d_name, buf);
                files++;
            }
        }
    } else {
        bytes = send_file(ssl, src, NULL, buf);
        files = 1;
    }
    SSL_shutdown(ssl);
    shutdown(sock, SHUT_WR);
    struct rusage sender;
    getrusage(RUSAGE_SELF, &sender);
    int status = 0;
    struct rusage receiver;
    if (wait4(child, &status, 0, &receiver) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "tls_baseline: the receiver failed\n");
        return 1;
    }
    double wall = seconds() - start;
    printf("mode=%s receive=%s cipher=%s version=%s sync=%d files=%lld bytes=%lld wall_s=%.3f sender_cpu_s=%.3f receiver_cpu_s=%.3f "
           "sender_maxrss_kb=%ld receiver_maxrss_kb=%ld\n",
           opt.mmap_send ? "mmap" : "copy", opt.fill ? "fill" : "record", suite, version, opt.sync, files, bytes, wall, cpu_of(&sender), cpu_of(&receiver),
           sender.ru_maxrss, receiver.ru_maxrss);
    return 0;
}
