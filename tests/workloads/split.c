/* Profiler test workload: burns CPU in two named functions with a known split.
 *
 *   split cpu SECONDS       3/4 of the work in hot_alpha, 1/4 in hot_beta, until SECONDS
 *                           of CPU time are used (getrusage), then prints the CPU time and
 *                           the CPU time spent in each of the two (the share is 3:1 on real
 *                           hardware; under an emulator it is whatever the emulator makes it)
 *   split syscalls SECONDS  reads /dev/zero in syscall_spin (the syscall instruction is in
 *                           that function, so its frame is the user leaf under the kernel's)
 *   split deep SECONDS      call chains through 8 functions chosen by the bits of a counter:
 *                           8^depth distinct stacks (for the profile store's budget)
 *   split spin SECONDS N    N threads run hot_alpha for SECONDS of wall time; prints the work
 *                           units done (throughput, for the profiler's overhead benchmark)
 *
 * Build with frame pointers: gcc -O2 -g -fno-omit-frame-pointer -fno-inline -fno-ipa-icf
 */
#include <fcntl.h>
#include <pthread.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define UNIT 200000UL

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

__attribute__((noinline)) unsigned long hot_alpha(unsigned long n) {
    volatile unsigned long x = 0;
    for (unsigned long i = 0; i < n; i++) x += i * i;
    return x;
}

__attribute__((noinline)) unsigned long hot_beta(unsigned long n) {
    volatile unsigned long y = 1;
    for (unsigned long i = 0; i < n; i++) y += i * i;
    return y;
}

__attribute__((noinline)) long syscall_spin(int fd, char *buf, unsigned long len) {
    long ret;
    /* read(fd, buf, len), inline so that this function is the user-space leaf. */
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(0L), "D"((long)fd), "S"(buf), "d"(len)
                     : "rcx", "r11", "memory");
    return ret;
}

unsigned long dispatch(unsigned depth, unsigned long path);
#define STEP(n)                                                                     \
    __attribute__((noinline)) unsigned long step##n(unsigned depth, unsigned long path) { \
        return depth ? dispatch(depth - 1, path >> 3) + n : hot_alpha(20000);       \
    }
STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7)

__attribute__((noinline)) unsigned long dispatch(unsigned depth, unsigned long path) {
    switch (path & 7) {
    case 0: return step0(depth, path);
    case 1: return step1(depth, path);
    case 2: return step2(depth, path);
    case 3: return step3(depth, path);
    case 4: return step4(depth, path);
    case 5: return step5(depth, path);
    case 6: return step6(depth, path);
    default: return step7(depth, path);
    }
}

static double thread_cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double wall_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

struct spin {
    double until;
    unsigned long units;
};

static void *spin_thread(void *arg) {
    struct spin *s = arg;
    while (wall_seconds() < s->until) {
        hot_alpha(UNIT / 10);
        s->units++;
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s cpu|syscalls|deep SECONDS\n", argv[0]);
        return 2;
    }
    double seconds = atof(argv[2]);
    unsigned long sink = 0;
    if (strcmp(argv[1], "cpu") == 0) {
        double in_alpha = 0, in_beta = 0;
        unsigned long lcg = 1;
        while (cpu_seconds() < seconds) {
            /* Each round's length varies (0.5 to 1.5 UNIT, 3:1 kept): a fixed round of about
             * 1.7 ms phase-locks with the 99 Hz sampler and CI saw anywhere from 54% to 89%
             * of the samples in hot_alpha for a measured 75%. */
            lcg = lcg * 6364136223846793005UL + 1442695040888963407UL;
            unsigned long unit = UNIT / 2 + (lcg >> 33) % UNIT;
            double t0 = thread_cpu_seconds();
            sink += hot_alpha(3 * unit);
            double t1 = thread_cpu_seconds();
            sink += hot_beta(unit);
            in_alpha += t1 - t0;
            in_beta += thread_cpu_seconds() - t1;
        }
        printf("%.3f %lu %.3f %.3f\n", cpu_seconds(), sink & 1, in_alpha, in_beta);
        return 0;
    } else if (strcmp(argv[1], "syscalls") == 0) {
        static char buf[1 << 16];
        int fd = open("/dev/zero", O_RDONLY);
        if (fd < 0) return 1;
        while (cpu_seconds() < seconds) sink += (unsigned long)syscall_spin(fd, buf, sizeof buf);
    } else if (strcmp(argv[1], "deep") == 0) {
        unsigned long n = 0;
        while (cpu_seconds() < seconds) sink += dispatch(8 + n % 8, n * 0x9E3779B97F4A7C15UL), n++;
    } else if (strcmp(argv[1], "spin") == 0 && argc > 3) {
        int n = atoi(argv[3]);
        if (n < 1 || n > 256) return 2;
        pthread_t threads[256];
        struct spin spins[256];
        double until = wall_seconds() + seconds;
        for (int i = 0; i < n; i++) {
            spins[i] = (struct spin){until, 0};
            pthread_create(&threads[i], NULL, spin_thread, &spins[i]);
        }
        unsigned long units = 0;
        for (int i = 0; i < n; i++) {
            pthread_join(threads[i], NULL);
            units += spins[i].units;
        }
        printf("%lu\n", units);
        return 0;
    } else {
        return 2;
    }
    printf("%.3f %lu\n", cpu_seconds(), sink & 1);
    return 0;
}
