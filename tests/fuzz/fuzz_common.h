/* tests/fuzz/fuzz_common.h: what the libFuzzer harnesses share (tests/fuzz/README.md).
 *
 * Loaders take paths, so an input is written to an anonymous memory file (memfd) and read
 * back through /proc/self/fd/N: a regular file that costs no disk. */
#ifndef EW_FUZZ_COMMON_H
#define EW_FUZZ_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE // memfd_create
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/* Aborts with a message: a property the harness checks does not hold (libFuzzer reports it
 * as a crash and saves the input). */
#define FUZZ_CHECK(c)                                                                              \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #c);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Replaces the contents of the harness's memory file with p[0..n) and returns its path. */
static inline const char *fuzz_file(const void *p, size_t n)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("ew_fuzz", MFD_CLOEXEC);
        FUZZ_CHECK(fd >= 0);
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    FUZZ_CHECK(ftruncate(fd, 0) == 0);
    FUZZ_CHECK(pwrite(fd, p, n, 0) == (ssize_t)n);
    return path;
}

#endif
