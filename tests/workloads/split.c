/* Profiler test workload: burns CPU in two named functions with a known split.
 *
 *   split cpu SECONDS       3/4 of the time in hot_alpha, 1/4 in hot_beta, until SECONDS
 *                           of CPU time are used (getrusage), then prints the CPU time
 *   split syscalls SECONDS  reads /dev/zero in syscall_spin (the syscall instruction is in
 *                           that function, so its frame is the user leaf under the kernel's)
 *   split deep SECONDS      call chains through 8 functions chosen by the bits of a counter:
 *                           8^depth distinct stacks (for the profile store's budget)
 *
 * Build with frame pointers: gcc -O2 -g -fno-omit-frame-pointer -fno-inline -fno-ipa-icf
 */
#include <fcntl.h>
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

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s cpu|syscalls|deep SECONDS\n", argv[0]);
        return 2;
    }
    double seconds = atof(argv[2]);
    unsigned long sink = 0;
    if (strcmp(argv[1], "cpu") == 0) {
        while (cpu_seconds() < seconds) {
            sink += hot_alpha(3 * UNIT);
            sink += hot_beta(UNIT);
        }
    } else if (strcmp(argv[1], "syscalls") == 0) {
        static char buf[1 << 16];
        int fd = open("/dev/zero", O_RDONLY);
        if (fd < 0) return 1;
        while (cpu_seconds() < seconds) sink += (unsigned long)syscall_spin(fd, buf, sizeof buf);
    } else if (strcmp(argv[1], "deep") == 0) {
        unsigned long n = 0;
        while (cpu_seconds() < seconds) sink += dispatch(8 + n % 8, n * 0x9E3779B97F4A7C15UL), n++;
    } else {
        return 2;
    }
    printf("%.3f %lu\n", cpu_seconds(), sink & 1);
    return 0;
}
