/* sha256.c: SHA-256 (FIPS 180-4) for program-cache keys and cache-entry checksums. */
#include <config.h>

#include <stdio.h>
#include <string.h>

#include "base/internal.h"

static const unsigned int round_constants[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static unsigned int rotr(unsigned int x, int n) { return (x >> n) | (x << (32 - n)); }

static void compress(unsigned int state[8], const unsigned char block[64])
{
    unsigned int w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (unsigned int)block[4 * i] << 24 | (unsigned int)block[4 * i + 1] << 16 |
               (unsigned int)block[4 * i + 2] << 8 | (unsigned int)block[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        unsigned int s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        unsigned int s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    unsigned int a = state[0], b = state[1], c = state[2], d = state[3];
    unsigned int e = state[4], f = state[5], g = state[6], h = state[7];
    for (int i = 0; i < 64; i++) {
        unsigned int t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) +
                          round_constants[i] + w[i];
        unsigned int t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
    state[4] += e;
    state[5] += f;
    state[6] += g;
    state[7] += h;
}

void rvs_sha256_init(struct rvs_sha256 *h)
{
    static const unsigned int initial[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                            0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(h->state, initial, sizeof initial);
    h->length = 0;
    h->fill = 0;
}

void rvs_sha256_update(struct rvs_sha256 *h, const void *data, size_t size)
{
    const unsigned char *p = data;
    h->length += size;
    while (size > 0) {
        size_t take = 64 - h->fill < size ? 64 - h->fill : size;
        memcpy(h->block + h->fill, p, take);
        h->fill += take;
        p += take;
        size -= take;
        if (h->fill == 64) {
            compress(h->state, h->block);
            h->fill = 0;
        }
    }
}

void rvs_sha256_final(struct rvs_sha256 *h, unsigned char digest[32])
{
    unsigned long long bits = h->length * 8;
    unsigned char pad = 0x80;
    rvs_sha256_update(h, &pad, 1);
    unsigned char zero = 0;
    while (h->fill != 56)
        rvs_sha256_update(h, &zero, 1);
    unsigned char length_be[8];
    for (int i = 0; i < 8; i++)
        length_be[i] = (unsigned char)(bits >> (56 - 8 * i));
    rvs_sha256_update(h, length_be, 8);
    for (int i = 0; i < 8; i++) {
        digest[4 * i] = (unsigned char)(h->state[i] >> 24);
        digest[4 * i + 1] = (unsigned char)(h->state[i] >> 16);
        digest[4 * i + 2] = (unsigned char)(h->state[i] >> 8);
        digest[4 * i + 3] = (unsigned char)h->state[i];
    }
}

void rvs_sha256_hex(const unsigned char digest[32], char hex[65])
{
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", digest[i]);
}
