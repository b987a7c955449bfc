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

#ifdef NET_NET_H // harnesses that load nets include net/net.h (or a header with it) first
/* What every net a loader accepts must satisfy: each tensor inside its arena, the arenas
 * exactly the tensors, and (when it is small enough) a forward pass on a zero input that
 * stays in bounds. */
static inline void fuzz_check_net(struct net *n)
{
    size_t np = 0, ns = 0;
    for (size_t i = 0; i < n->n_tensors; i++) {
        const struct net_tensor *t = &n->tensors[i];
        FUZZ_CHECK(t->off + t->n <= (t->arena == NET_ARENA_PARAM ? n->n_params : n->n_state));
        if (t->arena == NET_ARENA_PARAM)
            np += t->n;
        else
            ns += t->n;
    }
    FUZZ_CHECK(np == n->n_params && ns == n->n_state);
    const size_t D = n->in_shape.c * n->in_shape.h * n->in_shape.w;
    if (D <= 4096 && net_macs(n) < 2000000) {
        float *x = calloc(D, sizeof(float));
        FUZZ_CHECK(x);
        net_forward(n, x, NULL, 1, 0);
        free(x);
    }
}
#endif

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
