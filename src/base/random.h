/* random.h: the project's pseudo-random numbers, one copy: splitmix64 (Steele, Lea & Flood
 * 2014; seeding and short streams) and xoshiro256** (Blackman & Vigna 2018; the long streams of
 * the mock and the trainer). Integer arithmetic only, so a seed gives the same numbers on every
 * platform. Header-only: each is a few lines called in inner loops. Not installed. */
#ifndef RVS_BASE_RANDOM_H
#define RVS_BASE_RANDOM_H

#include <stdint.h>

/* The next splitmix64 output of *state (advanced). */
static inline uint64_t rvs_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t rvs_rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* xoshiro256**'s state from a 64-bit seed, through splitmix64 (its authors' advice). */
static inline void rvs_xoshiro_seed(uint64_t s[4], uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        s[i] = rvs_splitmix64(&seed);
}

/* The next xoshiro256** output (s advanced). */
static inline uint64_t rvs_xoshiro_next(uint64_t s[4])
{
    uint64_t r = rvs_rotl64(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rvs_rotl64(s[3], 45);
    return r;
}

/* The top 53 bits of a 64-bit output as a double in [0, 1). */
static inline double rvs_unit53(uint64_t bits) { return (double)(bits >> 11) * 0x1.0p-53; }

#endif
