/* net/rand.c: the seeded random stream. State is one uint64_t owned by the caller (a net's
 * trainer, a batcher), never a global, so a checkpoint can store it and a resumed run draws
 * the same numbers. splitmix64: fast, full period 2^64, passes BigCrush. */
#include <math.h>

#include "net/net.h"

__extension__ typedef unsigned __int128 net__u128;

uint64_t net_rand_u64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

float net_rand_uniform(uint64_t *s)
{
    // 24 high bits -> exactly representable floats in [0, 1).
    return (float)(net_rand_u64(s) >> 40) * (1.0f / 16777216.0f);
}

float net_rand_normal(uint64_t *s)
{
    // Box-Muller; one draw per call keeps the state a single word.
    double u1 = ((double)(net_rand_u64(s) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double u2 = (double)(net_rand_u64(s) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

size_t net_rand_below(uint64_t *s, size_t n)
{
    // Lemire's multiply-shift; the bias for n << 2^64 is negligible for shuffling.
    return (size_t)(((net__u128)net_rand_u64(s) * n) >> 64);
}
