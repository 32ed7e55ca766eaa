/* routine.h: one description per kernel family (CLBlast's test/routines habit): how to make its
 * inputs, run it on the device, compute the plain-C reference, measure the error, and count
 * its floating-point work and memory traffic. tests/test_<k>.c checks it; benchmarks/
 * bench_kernels runs the same description for speed. */
#ifndef RVS_ROUTINE_H
#define RVS_ROUTINE_H

#include <stddef.h>

#include "rvsfit.h"

/* Sizes of one case; each routine says what its fields mean in `args_doc`. */
struct rvs_routine_args {
    size_t batch; /* E: requests / templates / parameter vectors per launch */
    size_t n;     /* main length, usually pixels */
    size_t m;     /* second length (template pixels, npoly, ndiag, width...) */
    size_t k;     /* third length (npc, ...) */
    double param; /* a scalar the routine names (vsini, velocity range...) */
    unsigned seed;
    size_t real_size; /* bytes per rvs_real on the device; filled in by the harness */
};

struct rvs_routine {
    const char *name;
    const char *args_doc;   /* "batch=E n=data px m=template px" */
    const char *error_kind; /* "max relative" or "max absolute" */
    /* Random inputs on host and device; *state owns everything. */
    int (*setup)(struct rvs_context *ctx, const struct rvs_routine_args *args, void **state);
    /* Enqueues the device work and waits for it (clFinish) — what the benchmark times. */
    int (*run)(struct rvs_context *ctx, void *state);
    /* Reads the device result back and computes the plain-C reference. */
    int (*reference)(struct rvs_context *ctx, void *state);
    /* Error of the device result against the reference, in error_kind. */
    double (*max_error)(void *state);
    double (*flops)(const struct rvs_routine_args *args);
    double (*bytes)(const struct rvs_routine_args *args);
    void (*destroy)(void *state);
    /* Evaluations (templates, requests, chi^2 values) per run, for the "evaluations/s" column. */
    double (*evaluations)(const struct rvs_routine_args *args);
    /* Benchmark cases (DESI sizes), ended by a zero batch. */
    const struct rvs_routine_args *bench_cases;
};

/* Every routine, NULL-terminated (tests/routines/registry.c). */
extern const struct rvs_routine *const rvs_routines[];

/* Runs setup/run/reference/max_error/destroy for one case; prints one line with the error and
 * returns the error (or a negative number when a step failed). */
double rvs_routine_check(struct rvs_context *ctx, const struct rvs_routine *routine,
                         const struct rvs_routine_args *args);

#endif
