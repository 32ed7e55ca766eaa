/* engine_internal.h: the engine's state, shared by engine.c (creation, memory budget, data,
 * statistics, continuum, self-test) and evaluate.c (one evaluation call: deduplication, plan,
 * chunks through the kernel families). Not installed. */
#ifndef RVS_ENGINE_INTERNAL_H
#define RVS_ENGINE_INTERNAL_H

#include "base/internal.h"
#include "rvsfit/chisq.h"
#include "rvsfit/engine.h"
#include "rvsfit/resolution.h"
#include "rvsfit/rotation.h"
#include "rvsfit/spline.h"


/* Share of the device's global memory the engine plans to use (data + work space): the rest is
 * left to the driver, the BLAS/FFT libraries and other processes. */
#define ENGINE_MEMORY_SHARE 0.5
/* The engine's budget on CPU devices (data + work space), whatever the host's RAM. */
#define ENGINE_CPU_BUDGET ((size_t)256 << 20)
/* Hard caps per pass: kernels index pixels of a pass with 32-bit integers. */
#define ENGINE_MAX_CHUNK ((size_t)1 << 22)
/* The NN's hidden width is private to the nn module; the budget assumes at most this. */
#define ENGINE_NN_WIDTH_GUESS 1024

/* A device buffer that grows on demand (contents are not kept). */
struct grow_buf {
    cl_mem mem;
    size_t bytes;
};

struct engine_arm {
    char name[32];
    struct rvs_nn *nn;
    size_t tn, n, np, ndiag;
    int rbf;
    double lnstep;
    double vmin, vmax; /* velocities at which the template covers the whole data grid */
    struct rvs_spline_grid *grid;
    struct rvs_rotation *rot;
    struct rvs_chisq_arm *chisq;
    cl_mem lam;   /* n rvs_real */
    cl_mem rdata; /* S x ndiag x n float */
    size_t coef_per_tmpl, coef_fixed;
    size_t nused;  /* spectra of the batch that have this arm */
    size_t resident; /* bytes of the batch's data on the device */
};

struct rvs_engine {
    struct rvs_context *ctx;
    size_t narms, es;
    struct engine_arm arm[RVS_ENGINE_MAX_ARMS];
    size_t tn_max, n_max, np_max, npad_max;
    int any_res;
    size_t S;
    unsigned char *used; /* S x narms */
    /* chunk caps: from the caller (test hook), and from allocation failures */
    size_t user_req, user_tmpl, fail_req, fail_tmpl, sim_fail_above;
    int warned_alloc;
    int profiling;
    struct rvs_engine_stats stats;
    struct grow_buf params, tmpl, rot, coef, tidx, vel, sidx, ptidx, pvel, psidx;
    struct grow_buf model, res, chisq, coeffs, best;
    /* rvs_engine_derivs: the vsini-derivative rows of the rotation, the v-derivative rows of the
     * spline, the extended index/velocity arrays of the tangent rows, gradients, GN matrices */
    struct grow_buf drot, drow, xtidx, xvel, xsidx, grad, gn;
};

/* engine.c: helpers of both files. */
double rvs_engine_now(void);
/* b holds at least `bytes` (contents are not kept). */
int rvs_engine_grow(struct rvs_context *ctx, struct grow_buf *b, size_t bytes);
/* Releases every work buffer (after an allocation failure, before a retry). */
void rvs_engine_release_work(struct rvs_engine *g);
/* Non-blocking upload; the host array must stay untouched until the queue has passed it (the
 * engine's next blocking read). */
int rvs_engine_upload(struct rvs_engine *g, cl_mem buf, const void *host, size_t bytes);
/* A stage's start time (0 unless profiling) and its end: counts the calls and, when profiling,
 * waits for the device and adds the time. */
double rvs_engine_stage_begin(const struct rvs_engine *g);
int rvs_engine_stage_end(struct rvs_engine *g, enum rvs_engine_stage stage, double t0, unsigned calls);
/* The memory budget: device bytes per request (all arms) and per unique template of a pass, the
 * batch's resident data, the engine's share of the device, and the caps the largest single
 * allocation sets per request and per template. */
size_t rvs_engine_bytes_per_request(const struct rvs_engine *g, int with_models, int with_derivs);
size_t rvs_engine_bytes_per_template(const struct rvs_engine *g, int with_derivs);
size_t rvs_engine_resident_bytes(const struct rvs_engine *g);
size_t rvs_engine_budget_bytes(const struct rvs_engine *g);
void rvs_engine_alloc_caps(const struct rvs_engine *g, size_t *max_req, size_t *max_tmpl);

#endif
