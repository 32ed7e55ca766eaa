/* testutil.h: helpers for the C tests: a context on the test device (skip when none exists),
 * uniform random numbers from a fixed seed, and near-equality with absolute and relative
 * tolerance (CLBlast's test habit). */
#ifndef RVS_TESTUTIL_H
#define RVS_TESTUTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "rvsfit.h"

#define TEST_SKIP 77

static int test_failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                   \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            test_failures++;                                                                       \
        }                                                                                          \
    } while (0)

/* A context on the device the test run selects ($RVSFIT_CL_DEVICE or the default). Exits 77
 * only when OpenCL has no platform or device at all. */
static inline struct rvs_context *test_context(int skip_selftest)
{
    /* OpenBLAS on its generic kernels (new CPUs): run again with vector ones (src/device/gemm.c) */
    rvs_openblas_reexec_if_generic(NULL);
    struct rvs_device_list list;
    if (rvs_device_list_query(&list) != RVS_OK) {
        fprintf(stderr, "SKIP: no OpenCL device\n");
        exit(TEST_SKIP);
    }
    rvs_device_list_free(&list);
    struct rvs_context_options options;
    rvs_context_options_init(&options);
    options.skip_selftest = skip_selftest;
    struct rvs_context *ctx = NULL;
    int status = rvs_context_create(&options, &ctx);
    if (status != RVS_OK) {
        fprintf(stderr, "FAIL: cannot create a context: %s\n", rvs_strerror(status));
        exit(1);
    }
    return ctx;
}

static uint64_t test_rng_state = 0x9e3779b97f4a7c15ULL;

/* Uniform in [lo, hi) from xorshift64*: reproducible across platforms. */
static inline double test_uniform(double lo, double hi)
{
    test_rng_state ^= test_rng_state >> 12;
    test_rng_state ^= test_rng_state << 25;
    test_rng_state ^= test_rng_state >> 27;
    uint64_t r = test_rng_state * 2685821657736338717ULL;
    return lo + (hi - lo) * (double)(r >> 11) * (1.0 / 9007199254740992.0);
}

/* |got - want| <= abs_tol + rel_tol * |want| */
static inline int test_near(double got, double want, double abs_tol, double rel_tol)
{
    return fabs(got - want) <= abs_tol + rel_tol * fabs(want);
}

static inline int test_finish(const char *name)
{
    if (test_failures) {
        fprintf(stderr, "%s: %d check(s) failed\n", name, test_failures);
        return 1;
    }
    printf("%s: all checks passed\n", name);
    return 0;
}

#endif
