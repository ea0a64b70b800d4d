// A log producer for the tests and the benchmark: a real process that appends numbered,
// timestamped records to a log file and reopens it the way real producers do.
//
//   log-producer write --file PATH [--seconds S | --records N] [--rate R] [--record-size B]
//                      [--reopen path|signal|hold] [--pid-file F] [--hold-ms M] [--batch K]
//   log-producer watch DIR    print "<realtime ns> <name>" for each file renamed into DIR
//
// A record is "<seq, 16 digits> <CLOCK_REALTIME ns, 19 digits> xxxx...\n", exactly B bytes.
// Reopen modes: "path" checks every millisecond whether PATH still names the open file and
// reopens it if not; "signal" reopens on SIGHUP; "hold" reopens HOLD_MS after SIGHUP, writing
// on into the old file meanwhile. Every reopen is reported on stdout as "reopen <ns>"; at the
// end "records N bytes B".
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t hup = 0;
static void on_hup(int s) { (void)s; hup = 1; }

static int64_t now_ns(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int open_log(const char *path) {
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) { fprintf(stderr, "log-producer: open %s: %s\n", path, strerror(errno)); exit(2); }
    return fd;
}

static void write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "log-producer: write: %s\n", strerror(errno));
            exit(3);
        }
        p += k; n -= (size_t)k;
    }
}

static int cmd_write(int argc, char **argv) {
    const char *path = NULL, *mode = "path", *pidfile = NULL;
    double seconds = 0, rate = 0;
    long long records = -1;
    int recsize = 100, holdms = 1000, batch = 16;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) { fprintf(stderr, "log-producer: %s needs a value\n", a); return 1; }
        if (!strcmp(a, "--file")) path = v;
        else if (!strcmp(a, "--seconds")) seconds = atof(v);
        else if (!strcmp(a, "--records")) records = atoll(v);
        else if (!strcmp(a, "--rate")) rate = atof(v);
        else if (!strcmp(a, "--record-size")) recsize = atoi(v);
        else if (!strcmp(a, "--reopen")) mode = v;
        else if (!strcmp(a, "--pid-file")) pidfile = v;
        else if (!strcmp(a, "--hold-ms")) holdms = atoi(v);
        else if (!strcmp(a, "--batch")) batch = atoi(v);
        else { fprintf(stderr, "log-producer: unknown option %s\n", a); return 1; }
        i++;
    }
    if (!path || recsize < 40 || batch < 1) { fprintf(stderr, "log-producer: need --file, --record-size >= 40\n"); return 1; }
    int by_signal = !strcmp(mode, "signal") || !strcmp(mode, "hold");
    if (by_signal) {
        struct sigaction sa = {0};
        sa.sa_handler = on_hup;
        sigaction(SIGHUP, &sa, NULL);
        // A parent may have left SIGHUP blocked (the mask is inherited): unblock it.
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGHUP);
        sigprocmask(SIG_UNBLOCK, &set, NULL);
    }
    if (pidfile) {
        FILE *f = fopen(pidfile, "w");
        if (!f) { fprintf(stderr, "log-producer: %s: %s\n", pidfile, strerror(errno)); return 2; }
        fprintf(f, "%d\n", getpid());
        fclose(f);
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    int fd = open_log(path);
    struct stat st;
    fstat(fd, &st);
    ino_t ino = st.st_ino;
    char *buf = malloc((size_t)recsize * (size_t)batch);
    int64_t start = now_ns(CLOCK_MONOTONIC), last_check = start, hold_until = 0;
    long long seq = 0;
    uint64_t bytes = 0;
    while (1) {
        int64_t t = now_ns(CLOCK_MONOTONIC);
        if (records >= 0 && seq >= records) break;
        if (records < 0 && t - start >= (int64_t)(seconds * 1e9)) break;
        if (rate > 0) {
            int64_t due = start + (int64_t)((double)seq / rate * 1e9);
            if (due > t) { struct timespec d = {0, (long)(due - t < 1000000 ? due - t : 1000000)}; nanosleep(&d, NULL); continue; }
        }
        // Reopen as the mode says.
        int reopen = 0;
        if (!strcmp(mode, "path") && t - last_check >= 1000000) {
            last_check = t;
            if (stat(path, &st) != 0 || st.st_ino != ino) reopen = 1;
        } else if (!strcmp(mode, "signal") && hup) {
            hup = 0; reopen = 1;
        } else if (!strcmp(mode, "hold")) {
            if (hup && hold_until == 0) { hup = 0; hold_until = t + (int64_t)holdms * 1000000; }
            if (hold_until && t >= hold_until) { hold_until = 0; reopen = 1; }
        }
        if (reopen) {
            close(fd);
            fd = open_log(path);
            fstat(fd, &st);
            ino = st.st_ino;
            printf("reopen %lld\n", (long long)now_ns(CLOCK_REALTIME));
        }
        int n = batch;
        if (records >= 0 && records - seq < n) n = (int)(records - seq);
        if (rate > 0) n = 1;
        int64_t wall = now_ns(CLOCK_REALTIME);
        for (int k = 0; k < n; k++) {
            char *r = buf + (size_t)k * recsize;
            int h = snprintf(r, (size_t)recsize, "%016lld %019lld ", seq + k, (long long)wall);
            memset(r + h, 'x', (size_t)(recsize - h - 1));
            r[recsize - 1] = '\n';
        }
        write_all(fd, buf, (size_t)recsize * n);
        seq += n;
        bytes += (uint64_t)recsize * n;
    }
    close(fd);
    double secs = (double)(now_ns(CLOCK_MONOTONIC) - start) / 1e9;
    printf("records %lld bytes %llu seconds %.3f\n", seq, (unsigned long long)bytes, secs);
    return 0;
}

static int cmd_watch(const char *dir) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int fd = inotify_init1(IN_CLOEXEC);
    while (inotify_add_watch(fd, dir, IN_MOVED_TO | IN_ONLYDIR) < 0) {
        if (errno != ENOENT) { fprintf(stderr, "log-producer: watch %s: %s\n", dir, strerror(errno)); return 2; }
        usleep(1000);
    }
    printf("watching %lld\n", (long long)now_ns(CLOCK_REALTIME));
    char buf[65536] __attribute__((aligned(8)));
    while (1) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) { if (errno == EINTR) continue; return 0; }
        int64_t t = now_ns(CLOCK_REALTIME);
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *e = (struct inotify_event *)p;
            if (e->len) printf("%lld %s\n", (long long)t, e->name);
            p += sizeof *e + e->len;
        }
    }
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "write")) return cmd_write(argc - 2, argv + 2);
    if (argc == 3 && !strcmp(argv[1], "watch")) return cmd_watch(argv[2]);
    fprintf(stderr, "usage: log-producer write --file PATH ... | log-producer watch DIR\n");
    return 1;
}
