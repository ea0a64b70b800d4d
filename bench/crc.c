// crc: the CRC-32 that spoolship's rule R5 needs, measured alone. Reads FILE with pread(2) in
// 256 KiB chunks into one buffer and runs ISA-L's CRC-32 (the gzip/zlib one) over each chunk,
// as spoolship's sender does; nothing else.
//
//   crc FILE
//
// Prints one line of key=value pairs: bytes, cpu_s (user+system), wall_s (from the open to the
// last chunk's CRC) and crc (hexadecimal, as zlib's crc32 would give it).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <isa-l/crc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

enum { CHUNK = 256 << 10 };

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: crc FILE\n");
        return 64;
    }
    static unsigned char buf[CHUNK];
    double t0 = seconds();
    int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "crc: open %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    uint32_t crc = 0;
    long long at = 0;
    for (;;) {
        ssize_t n = pread(fd, buf, CHUNK, at);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            fprintf(stderr, "crc: pread %s: %s\n", argv[1], strerror(errno));
            return 1;
        }
        if (n == 0) break;
        crc = crc32_gzip_refl(crc, buf, (uint64_t)n);
        at += n;
    }
    close(fd);
    double wall = seconds() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
    printf("bytes=%lld cpu_s=%.3f wall_s=%.3f crc=%08x\n", at, cpu, wall, crc);
    return 0;
}
