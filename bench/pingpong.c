/* The round-trip floor in C: n ping-pongs of a small message between two
 * processes over a Unix socketpair. Prints "median_us mean_us checked" where
 * checked is the number of replies that echoed the sequence number sent.
 * Usage: pingpong N WARM MSG_BYTES */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int io_exact(int fd, char *buf, size_t n, int writing) {
    size_t done = 0;
    while (done < n) {
        ssize_t k = writing ? write(fd, buf + done, n - done) : read(fd, buf + done, n - done);
        if (k <= 0) return -1;
        done += (size_t)k;
    }
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: pingpong N WARM MSG_BYTES\n"); return 2; }
    long n = atol(argv[1]), warm = atol(argv[2]);
    size_t msg = (size_t)atol(argv[3]);
    if (n <= 0 || warm < 0 || msg < 8 || msg > 65536) return 2;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) { perror("socketpair"); return 1; }
    char *buf = calloc(1, msg);
    double *t = malloc(sizeof(double) * (size_t)n);
    if (!buf || !t) return 1;
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 1; }
    if (pid == 0) {
        close(sv[0]);
        while (io_exact(sv[1], buf, msg, 0) == 0)
            if (io_exact(sv[1], buf, msg, 1) != 0) break;
        _exit(0);
    }
    close(sv[1]);
    long checked = 0;
    double sum = 0;
    for (long i = -warm; i < n; i++) {
        struct timespec a, b;
        int64_t seq = i, back;
        memcpy(buf, &seq, 8);
        clock_gettime(CLOCK_MONOTONIC, &a);
        if (io_exact(sv[0], buf, msg, 1) != 0 || io_exact(sv[0], buf, msg, 0) != 0) return 1;
        clock_gettime(CLOCK_MONOTONIC, &b);
        memcpy(&back, buf, 8);
        if (i >= 0) {
            t[i] = (double)(b.tv_sec - a.tv_sec) * 1e6 + (double)(b.tv_nsec - a.tv_nsec) / 1e3;
            sum += t[i];
            checked += back == seq;
        }
    }
    close(sv[0]);
    waitpid(pid, NULL, 0);
    qsort(t, (size_t)n, sizeof(double), cmp_double);
    double med = n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
    printf("%.3f %.3f %ld\n", med, sum / (double)n, checked);
    return 0;
}
