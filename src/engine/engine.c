/* engine.c: the evaluation engine (include/rvsfit/engine.h, DESIGN.md section 4). It chains the
 * kernel families (nn, rotation, spline, resolution, chisq) over many requests at once, the way
 * rvspecfit's spec_fit.get_chisq chains them for one: template at theta (getCurTempl), rotation
 * (convolve_vsini), spline at the shifted wavelengths (evalRV), resolution (convolve_resol), then
 * get_chisq0 per arm, summed over arms.
 *
 * One call:
 *  1. host: validate the requests, deduplicate theta and (theta, vsini) by exact bit patterns
 *     (hash tables), order the unique templates by theta and the requests by template (a
 *     velocity scan becomes one run), cut the ordered requests into chunks that fit the memory
 *     budget;
 *  2. per chunk: upload the chunk's theta rows, per-request template index, velocity and
 *     spectrum index (non-blocking), then per arm: NN -> [gather] -> [rotation] -> spline
 *     construct -> spline eval -> [resolution] -> chi^2, and read back the chi^2 (and models);
 *  3. host: sum the arms in double, in the caller's order.
 * An allocation failure in a chunk halves the chunk limits and retries that chunk. */
#include <config.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/internal.h"
#include "rvsfit/chisq.h"
#include "rvsfit/engine.h"
#include "rvsfit/physics.h"
#include "rvsfit/resolution.h"
#include "rvsfit/rotation.h"
#include "rvsfit/spline.h"

/* Share of the device's global memory the engine plans to use (data + work space): the rest is
 * left to the driver, the BLAS/FFT libraries and other processes. */
#define ENGINE_MEMORY_SHARE 0.5
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
};

/* ------------------------------------------------------------------ small helpers */

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int grow(struct rvs_context *ctx, struct grow_buf *b, size_t bytes)
{
    if (b->mem && b->bytes >= bytes)
        return RVS_OK;
    rvs_buffer_release(&b->mem);
    b->bytes = 0;
    int status = rvs_buffer_create(ctx, CL_MEM_READ_WRITE, bytes, NULL, &b->mem);
    if (status == RVS_OK)
        b->bytes = bytes;
    return status;
}

static void release_work(struct rvs_engine *g)
{
    struct grow_buf *all[] = {&g->params, &g->tmpl,  &g->rot,   &g->coef,   &g->tidx,
                              &g->vel,    &g->sidx,  &g->ptidx, &g->pvel,   &g->psidx,
                              &g->model,  &g->res,   &g->chisq, &g->coeffs, &g->best};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        rvs_buffer_release(&all[i]->mem);
        all[i]->bytes = 0;
    }
}

/* Non-blocking upload; the host array must stay untouched until the queue has passed it (the
 * engine's next blocking read). */
static int upload(struct rvs_engine *g, cl_mem buf, const void *host, size_t bytes)
{
    int status = RVS_OK;
    if (bytes == 0)
        return RVS_OK;
    RVS_TRY(rvs_buffer_write_async(g->ctx, buf, 0, bytes, host));
    g->stats.bytes_in += bytes;
cleanup:
    return status;
}

/* Ends a stage: counts the call and, when profiling, waits for the device and adds the time. */
static int stage_end(struct rvs_engine *g, enum rvs_engine_stage stage, double t0,
                     unsigned calls)
{
    int status = RVS_OK;
    g->stats.calls[stage] += calls;
    if (g->profiling) {
        g->stats.host_seconds[stage] += now_seconds() - t0;
        RVS_CL_TRY(clFinish(g->ctx->queue));
        g->stats.seconds[stage] += now_seconds() - t0;
    }
cleanup:
    return status;
}

static double stage_begin(const struct rvs_engine *g) { return g->profiling ? now_seconds() : 0; }

/* ------------------------------------------------------------------ create / destroy */

size_t rvs_engine_narms(const struct rvs_engine *g) { return g ? g->narms : 0; }
size_t rvs_engine_arm_npix(const struct rvs_engine *g, size_t a)
{
    return g && a < g->narms ? g->arm[a].n : 0;
}
size_t rvs_engine_arm_npoly(const struct rvs_engine *g, size_t a)
{
    return g && a < g->narms ? g->arm[a].np : 0;
}

int rvs_engine_arm_velocity_range(const struct rvs_engine *g, size_t a, double *vmin,
                                  double *vmax)
{
    if (!g || a >= g->narms) {
        rvs_log(RVS_LOG_ERROR, "engine", "no arm %zu", a);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    *vmin = g->arm[a].vmin;
    *vmax = g->arm[a].vmax;
    return RVS_OK;
}

void rvs_engine_destroy(struct rvs_engine **gp)
{
    if (!gp || !*gp)
        return;
    struct rvs_engine *g = *gp;
    if (g->ctx && g->ctx->queue)
        clFinish(g->ctx->queue);
    for (size_t a = 0; a < RVS_ENGINE_MAX_ARMS; a++) {
        struct engine_arm *r = &g->arm[a];
        rvs_spline_grid_destroy(&r->grid);
        rvs_rotation_destroy(&r->rot);
        rvs_chisq_arm_destroy(&r->chisq);
        rvs_buffer_release(&r->lam);
        rvs_buffer_release(&r->rdata);
    }
    release_work(g);
    free(g->used);
    free(g);
    *gp = NULL;
}

/* beta at which lam * sqrt((1 - beta) / (1 + beta)) = lam * d */
static double beta_of_factor(double d) { return (1 - d * d) / (1 + d * d); }

static int arm_create(struct rvs_engine *g, struct engine_arm *r,
                      const struct rvs_engine_arm_config *c, size_t index)
{
    int status = RVS_OK;
    struct rvs_context *ctx = g->ctx;
    snprintf(r->name, sizeof r->name, "%s", c->name ? c->name : "arm");
    if (!c->nn || !c->template_wave || !c->data_wave || c->template_npix < 3 ||
        c->data_npix == 0) {
        rvs_log(RVS_LOG_ERROR, "engine", "arm %zu (%s): needs a network, a template grid of "
                "at least 3 points and a data grid", index, r->name);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (rvs_nn_indim(c->nn) != RVS_ENGINE_NPARAM || rvs_nn_npix(c->nn) != c->template_npix) {
        rvs_log(RVS_LOG_ERROR, "engine", "arm %s: the network takes %zu parameters and gives "
                "%zu pixels; the engine needs %d parameters and the template grid has %zu",
                r->name, rvs_nn_indim(c->nn), rvs_nn_npix(c->nn), RVS_ENGINE_NPARAM,
                c->template_npix);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (c->ndiag > 0 && c->ndiag % 2 == 0) {
        rvs_log(RVS_LOG_ERROR, "engine", "arm %s: resolution matrices need an odd number of "
                "diagonals, not %zu", r->name, c->ndiag);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    const double *tw = c->template_wave, *dw = c->data_wave;
    size_t tn = c->template_npix, n = c->data_npix;
    double lnstep = log(tw[1] / tw[0]);
    if (!(lnstep > 0) || !isfinite(lnstep) ||
        (c->template_lnstep != 0 && !(fabs(c->template_lnstep - lnstep) <= 1e-6 * lnstep))) {
        rvs_log(RVS_LOG_ERROR, "engine", "arm %s: template ln step %g does not match the grid "
                "(ln(w1/w0) = %g)", r->name, c->template_lnstep, lnstep);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    for (size_t i = 0; i < n; i++)
        if (!isfinite(dw[i]) || !(dw[i] > 0) || (i > 0 && !(dw[i] > dw[i - 1]))) {
            rvs_log(RVS_LOG_ERROR, "engine", "arm %s: data wavelength %zu (%g) is not positive, "
                    "finite and increasing", r->name, i, dw[i]);
            return RVS_ERR_INVALID_ARGUMENT;
        }
    /* the spline is NaN outside [w0, w_{N-1}): velocities that keep the data inside */
    r->vmax = RVS_SPEED_OF_LIGHT_KMS * beta_of_factor(tw[0] / dw[0]);
    r->vmin = RVS_SPEED_OF_LIGHT_KMS * beta_of_factor(tw[tn - 1] / dw[n - 1]);
    if (!(r->vmin < 0 && r->vmax > 0)) {
        rvs_log(RVS_LOG_ERROR, "engine", "arm %s: the template grid [%g, %g] does not cover the "
                "data grid [%g, %g] at zero velocity", r->name, tw[0], tw[tn - 1], dw[0],
                dw[n - 1]);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    r->nn = c->nn;
    r->tn = tn;
    r->n = n;
    r->np = c->npoly;
    r->rbf = c->rbf;
    r->ndiag = c->ndiag;
    /* the caller's step when given (a library states it exactly); else rvspecfit's
     * convolve_vsini choice, ln(w1/w0) */
    r->lnstep = c->template_lnstep != 0 ? c->template_lnstep : lnstep;
    RVS_TRY(rvs_spline_grid_create(ctx, tw, tn, 1, &r->grid));
    RVS_TRY(rvs_rotation_create(ctx, tn, &r->rot));
    RVS_TRY(rvs_chisq_arm_create(ctx, dw, n, c->npoly, c->rbf, &r->chisq));
    rvs_chisq_arm_set_scale_free(r->chisq, c->scale_free);
    RVS_TRY(rvs_spline_points_create(ctx, dw, n, &r->lam));
    r->coef_fixed = rvs_spline_coeffs_bytes(ctx, r->grid, 1);
    r->coef_per_tmpl = rvs_spline_coeffs_bytes(ctx, r->grid, 2) - r->coef_fixed;
    r->coef_fixed -= r->coef_per_tmpl < r->coef_fixed ? r->coef_per_tmpl : r->coef_fixed;
    rvs_log(RVS_LOG_DEBUG, "engine", "arm %s: %zu template px (ln step %.4g), %zu data px, "
            "npoly %zu, %zu diagonals; velocities [%.0f, %.0f] km/s stay inside the template",
            r->name, tn, lnstep, n, r->np, r->ndiag, r->vmin, r->vmax);
cleanup:
    return status;
}

int rvs_engine_create(struct rvs_context *ctx, const struct rvs_engine_arm_config *arms,
                      size_t narms, struct rvs_engine **out)
{
    int status = RVS_OK;
    struct rvs_engine *g = NULL;
    *out = NULL;
    if (!ctx || !arms || narms == 0 || narms > RVS_ENGINE_MAX_ARMS) {
        rvs_log(RVS_LOG_ERROR, "engine", "create: need a context and 1..%d arms (got %zu)",
                RVS_ENGINE_MAX_ARMS, narms);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    g = rvs_calloc(1, sizeof *g);
    if (!g)
        return RVS_ERR_NOMEM;
    g->ctx = ctx;
    g->narms = narms;
    g->es = rvs_context_real_size(ctx);
    for (size_t a = 0; a < narms; a++) {
        RVS_TRY(arm_create(g, &g->arm[a], &arms[a], a));
        struct engine_arm *r = &g->arm[a];
        g->tn_max = r->tn > g->tn_max ? r->tn : g->tn_max;
        g->n_max = r->n > g->n_max ? r->n : g->n_max;
        g->np_max = r->np > g->np_max ? r->np : g->np_max;
        size_t npad = (r->n + 63) / 64 * 64; /* the chi^2 workspace's padded length (fp32) */
        g->npad_max = npad > g->npad_max ? npad : g->npad_max;
        g->any_res |= r->ndiag > 0;
    }
    *out = g;
    g = NULL;
cleanup:
    rvs_engine_destroy(&g);
    return status;
}

/* ------------------------------------------------------------------ memory budget */

/* Device bytes per request of a pass (all arms; the chi^2 workspace is per arm). */
static size_t bytes_per_request(const struct rvs_engine *g, int with_models)
{
    size_t es = g->es, b = 0;
    b += es * g->n_max * (1 + (size_t)g->any_res); /* model, resolution output */
    b += es * 2 * 2 + 4 * 4;                        /* velocities, indices (+ per-arm copies) */
    b += es * 2;                                    /* chi^2 (hi, lo) */
    if (with_models)
        b += es * (g->n_max + g->np_max);
    for (size_t a = 0; a < g->narms; a++) { /* rvs_chisq_eval's workspace (src/engine/chisq.c) */
        size_t np = g->arm[a].np, npair = np * (np + 1) / 2;
        size_t npad = (g->arm[a].n + 63) / 64 * 64;
        b += es * (2 * npad + npair + np + 3 * np * np + 2 * np + 2 * np + 2) + 4;
        if (!g->ctx->use_fp64)
            b += es * (npad / 64 * 2 * npair + npair);
    }
    return b;
}

/* Device bytes per unique template of a pass. */
static size_t bytes_per_template(const struct rvs_engine *g)
{
    size_t es = g->es, b = 0, coef = 0;
    b += es * g->tn_max * 2 + es * RVS_ENGINE_NPARAM + 4; /* NN out, rotated */
    for (size_t a = 0; a < g->narms; a++) {
        const struct engine_arm *r = &g->arm[a];
        coef = r->coef_per_tmpl > coef ? r->coef_per_tmpl : coef;
        /* NN ping-pong work space and widened pc output; rotation work rows (FFT path) */
        b += 4 * (2 * ENGINE_NN_WIDTH_GUESS + r->tn) + 2 * es * (r->tn + 2);
    }
    return b + coef;
}

static size_t resident_bytes(const struct rvs_engine *g)
{
    size_t b = 0;
    for (size_t a = 0; a < g->narms; a++)
        b += g->arm[a].resident;
    return b;
}

static size_t budget_bytes(const struct rvs_engine *g)
{
    return (size_t)((double)g->ctx->caps.global_mem_size * ENGINE_MEMORY_SHARE);
}

/* Caps from the largest single allocation: per request and per template. */
static void alloc_caps(const struct rvs_engine *g, size_t *max_req, size_t *max_tmpl)
{
    size_t maxalloc = (size_t)g->ctx->caps.max_alloc_size, es = g->es;
    size_t coef = 1;
    for (size_t a = 0; a < g->narms; a++)
        coef = g->arm[a].coef_per_tmpl > coef ? g->arm[a].coef_per_tmpl : coef;
    size_t per_req = es * (g->npad_max > g->n_max ? g->npad_max : g->n_max);
    size_t per_tmpl = es * g->tn_max > coef ? es * g->tn_max : coef;
    *max_req = maxalloc / (per_req ? per_req : 1);
    *max_tmpl = maxalloc / (per_tmpl ? per_tmpl : 1);
    size_t idx_cap = (size_t)INT32_MAX / (g->npad_max ? g->npad_max : 1);
    *max_req = *max_req < idx_cap ? *max_req : idx_cap;
    *max_req = *max_req < ENGINE_MAX_CHUNK ? *max_req : ENGINE_MAX_CHUNK;
    *max_tmpl = *max_tmpl < ENGINE_MAX_CHUNK ? *max_tmpl : ENGINE_MAX_CHUNK;
    *max_req = *max_req ? *max_req : 1;
    *max_tmpl = *max_tmpl ? *max_tmpl : 1;
}

size_t rvs_engine_max_batch(const struct rvs_engine *g, size_t rps, size_t tps)
{
    if (!g)
        return 0;
    size_t es = g->es, per_spec = 0, per_spec_alloc = 0;
    for (size_t a = 0; a < g->narms; a++) {
        const struct engine_arm *r = &g->arm[a];
        size_t d = es * r->n * (g->ctx->use_fp64 ? 4 : 6) + 2 * es + 4 * r->ndiag * r->n;
        per_spec += d;
        size_t biggest = 4 * r->ndiag * r->n > es * r->n ? 4 * r->ndiag * r->n : es * r->n;
        per_spec_alloc = biggest > per_spec_alloc ? biggest : per_spec_alloc;
    }
    if (tps == 0 || tps > rps)
        tps = rps;
    per_spec += rps * bytes_per_request(g, 0) + tps * bytes_per_template(g);
    size_t S = budget_bytes(g) / (per_spec ? per_spec : 1);
    size_t by_alloc = (size_t)g->ctx->caps.max_alloc_size / (per_spec_alloc ? per_spec_alloc : 1);
    S = S < by_alloc ? S : by_alloc;
    if (rps > 0) {
        size_t max_req, max_tmpl;
        alloc_caps(g, &max_req, &max_tmpl);
        size_t lim_req = max_req / rps, lim_tmpl = max_tmpl / tps;
        S = S < lim_req ? S : lim_req;
        S = S < lim_tmpl ? S : lim_tmpl;
    }
    return S > 0 ? S : 1;
}

/* ------------------------------------------------------------------ settings, statistics */

void rvs_engine_set_profiling(struct rvs_engine *g, int on)
{
    if (g)
        g->profiling = on != 0;
}

void rvs_engine_stats_get(const struct rvs_engine *g, struct rvs_engine_stats *stats)
{
    if (g && stats)
        *stats = g->stats;
}

const char *rvs_engine_stage_name(int stage)
{
    static const char *const names[RVS_ENGINE_NSTAGES] = {
        "upload", "nn", "rotation", "spline build", "spline eval", "resolution",
        "chisq", "download"};
    return stage >= 0 && stage < RVS_ENGINE_NSTAGES ? names[stage] : "?";
}

void rvs_engine_stats_reset(struct rvs_engine *g)
{
    if (g)
        memset(&g->stats, 0, sizeof g->stats);
}

void rvs_engine_set_chunk_limits(struct rvs_engine *g, size_t max_requests, size_t max_templates)
{
    if (!g)
        return;
    g->user_req = max_requests;
    g->user_tmpl = max_templates;
    g->fail_req = g->fail_tmpl = 0; /* a new setting starts from scratch */
}

void rvs_engine_simulate_alloc_limit(struct rvs_engine *g, size_t max_requests)
{
    if (g)
        g->sim_fail_above = max_requests;
}

/* ------------------------------------------------------------------ data */

/* Arm a's spectra of the current batch (g->S rows, g->used set) to its chi^2 arm: rows of
 * spectra without the arm get a harmless flat stand-in. */
static int upload_spectra(struct rvs_engine *g, size_t a, const double *const *spec,
                          const double *const *espec)
{
    int status = RVS_OK;
    struct engine_arm *r = &g->arm[a];
    size_t S = g->S, n = r->n;
    double *fs = NULL, *fe = NULL;
    if (!spec || !espec || !spec[a] || !espec[a]) {
        rvs_log(RVS_LOG_ERROR, "engine", "set_data: arm %s is used by %zu spectra but has "
                "no flux or error array", r->name, r->nused);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    const double *ps = spec[a], *pe = espec[a];
    if (r->nused < S) {
        fs = rvs_malloc(S * n * sizeof *fs);
        fe = rvs_malloc(S * n * sizeof *fe);
        if (!fs || !fe) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        for (size_t s = 0; s < S; s++) {
            int u = g->used[s * g->narms + a];
            for (size_t i = 0; i < n; i++) {
                fs[s * n + i] = u ? ps[s * n + i] : 1.0;
                fe[s * n + i] = u ? pe[s * n + i] : 1.0;
            }
        }
        ps = fs;
        pe = fe;
    }
    status = rvs_chisq_arm_set_data(g->ctx, r->chisq, ps, pe, S);
    if (status != RVS_OK)
        rvs_log(RVS_LOG_ERROR, "engine", "set_data: arm %s: the spectra were refused (see above)",
                r->name);
    else
        g->stats.data_bytes_in += S * n * g->es * (g->ctx->use_fp64 ? 4 : 6) + 2 * S * g->es;
cleanup:
    free(fs);
    free(fe);
    return status;
}

int rvs_engine_set_data(struct rvs_engine *g, size_t S, const double *const *spec,
                        const double *const *espec, const float *const *resolution,
                        const unsigned char *arm_used)
{
    int status = RVS_OK;
    if (!g || S == 0 || S > (size_t)INT32_MAX) {
        rvs_log(RVS_LOG_ERROR, "engine", "set_data: need 1..2^31-1 spectra (got %zu)", S);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    struct rvs_context *ctx = g->ctx;
    RVS_CL_TRY(clFinish(ctx->queue));
    free(g->used);
    g->used = rvs_malloc(S * g->narms);
    g->S = 0;
    if (!g->used) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < S * g->narms; i++)
        g->used[i] = arm_used ? arm_used[i] != 0 : 1;
    for (size_t a = 0; a < g->narms; a++) {
        struct engine_arm *r = &g->arm[a];
        size_t n = r->n, nused = 0;
        r->nused = 0;
        r->resident = 0;
        rvs_buffer_release(&r->rdata);
        for (size_t s = 0; s < S; s++)
            nused += g->used[s * g->narms + a];
        if (nused == 0)
            continue;
        r->nused = nused;
        g->S = S; /* upload_spectra reads it */
        RVS_TRY(upload_spectra(g, a, spec, espec));
        size_t bytes = S * n * g->es * (ctx->use_fp64 ? 4 : 6) + 2 * S * g->es;
        if (r->ndiag > 0) {
            if (!resolution || !resolution[a]) {
                rvs_log(RVS_LOG_ERROR, "engine", "set_data: arm %s was configured with %zu-"
                        "diagonal resolution matrices but none were given", r->name, r->ndiag);
                status = RVS_ERR_INVALID_ARGUMENT;
                goto cleanup;
            }
            size_t rb = S * r->ndiag * n * sizeof(float);
            RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, rb, resolution[a], &r->rdata));
            bytes += rb;
            g->stats.data_bytes_in += rb;
        }
        r->resident = bytes;
    }
    g->S = S;
cleanup:
    if (status != RVS_OK)
        g->S = 0;
    return status;
}

int rvs_engine_set_errors(struct rvs_engine *g, const double *const *spec,
                          const double *const *espec)
{
    int status = RVS_OK;
    if (!g || g->S == 0) {
        rvs_log(RVS_LOG_ERROR, "engine", "set_errors: no batch (rvs_engine_set_data first)");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    RVS_CL_TRY(clFinish(g->ctx->queue));
    for (size_t a = 0; a < g->narms; a++)
        if (g->arm[a].nused > 0)
            RVS_TRY(upload_spectra(g, a, spec, espec));
cleanup:
    return status;
}

/* ------------------------------------------------------------------ deduplication */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static uint64_t bits_of(double x)
{
    uint64_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

/* Open-addressing table of ids keyed by nkey 64-bit words (stored per id in `keys`). */
struct dedup {
    int32_t *slot;
    size_t mask;
    uint64_t *keys;
    size_t nkey, count;
};

static int dedup_init(struct dedup *d, size_t capacity, size_t nkey)
{
    size_t size = 16;
    while (size < 2 * capacity)
        size *= 2;
    d->slot = rvs_malloc(size * sizeof *d->slot);
    d->keys = rvs_malloc((capacity ? capacity : 1) * nkey * sizeof *d->keys);
    d->mask = size - 1;
    d->nkey = nkey;
    d->count = 0;
    if (!d->slot || !d->keys)
        return RVS_ERR_NOMEM;
    memset(d->slot, 0xff, size * sizeof *d->slot);
    return RVS_OK;
}

static void dedup_free(struct dedup *d)
{
    free(d->slot);
    free(d->keys);
}

/* The id of key (a new one when unseen). */
static int32_t dedup_id(struct dedup *d, const uint64_t *key)
{
    uint64_t h = 0x9e3779b97f4a7c15ULL;
    for (size_t k = 0; k < d->nkey; k++)
        h = mix64(h ^ key[k]);
    for (size_t i = (size_t)h & d->mask;; i = (i + 1) & d->mask) {
        int32_t id = d->slot[i];
        if (id < 0) {
            id = (int32_t)d->count++;
            d->slot[i] = id;
            memcpy(d->keys + (size_t)id * d->nkey, key, d->nkey * sizeof *key);
            return id;
        }
        if (memcmp(d->keys + (size_t)id * d->nkey, key, d->nkey * sizeof *key) == 0)
            return id;
    }
}

/* ------------------------------------------------------------------ one call */

/* Host-side plan of one call, and staging for one chunk. */
struct plan {
    size_t E, nvalid, ntheta, ntv;
    const struct rvs_engine_request *req;
    int32_t *tv_of_req;   /* E: unique (theta, vsini) id, -1 for an invalid request */
    int32_t *theta_of_tv; /* ntv: theta id (ids in first-appearance order) */
    double *theta;        /* ntheta x 4 */
    double *vsini_of_tv;  /* ntv */
    int32_t *rank_of_tv;  /* ntv: position when ordered by theta */
    int32_t *tv_at_rank;  /* ntv */
    int32_t *order;       /* nvalid request indices, ordered by template rank */
    /* chunk staging */
    void *h_params, *h_vel, *h_pvel;
    cl_int *h_nnrow, *h_tidx, *h_sidx, *h_ptidx, *h_psidx;
    double *h_vsini, *h_chisq;
    int32_t *arm_req; /* chunk requests of the current arm (request ids) */
    void *h_best, *h_coef;
};

static void plan_free(struct plan *p)
{
    free(p->tv_of_req), free(p->theta_of_tv), free(p->theta), free(p->vsini_of_tv);
    free(p->rank_of_tv), free(p->tv_at_rank), free(p->order);
    free(p->h_params), free(p->h_vel), free(p->h_pvel), free(p->h_nnrow), free(p->h_tidx);
    free(p->h_sidx), free(p->h_ptidx), free(p->h_psidx), free(p->h_vsini), free(p->h_chisq);
    free(p->arm_req), free(p->h_best), free(p->h_coef);
}

static int request_valid(const struct rvs_engine_request *q)
{
    return isfinite(q->teff) && isfinite(q->logg) && isfinite(q->feh) && isfinite(q->alpha) &&
           isfinite(q->vsini) && isfinite(q->vrad) && fabs(q->vrad) < RVS_SPEED_OF_LIGHT_KMS;
}

static int plan_build(struct rvs_engine *g, const struct rvs_engine_request *req, size_t E,
                      struct plan *p)
{
    int status = RVS_OK;
    struct dedup dt = {0}, dv = {0};
    int32_t *theta_of_req = NULL, *count = NULL;
    memset(p, 0, sizeof *p);
    p->E = E;
    p->req = req;
    p->tv_of_req = rvs_malloc(E * sizeof *p->tv_of_req);
    theta_of_req = rvs_malloc(E * sizeof *theta_of_req);
    if (!p->tv_of_req || !theta_of_req) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    RVS_TRY(dedup_init(&dt, E, RVS_ENGINE_NPARAM));
    RVS_TRY(dedup_init(&dv, E, 2));
    for (size_t e = 0; e < E; e++) {
        const struct rvs_engine_request *q = &req[e];
        if (q->spectrum < 0 || (size_t)q->spectrum >= g->S) {
            rvs_log(RVS_LOG_ERROR, "engine", "request %zu names spectrum %d; the batch has %zu",
                    e, q->spectrum, g->S);
            status = RVS_ERR_INVALID_ARGUMENT;
            goto cleanup;
        }
        if (!request_valid(q)) {
            p->tv_of_req[e] = theta_of_req[e] = -1;
            continue;
        }
        uint64_t kt[RVS_ENGINE_NPARAM] = {bits_of(q->teff), bits_of(q->logg), bits_of(q->feh),
                                          bits_of(q->alpha)};
        int32_t t = dedup_id(&dt, kt);
        /* every vsini <= 0 means "no rotation": one key */
        uint64_t kv[2] = {(uint64_t)t, bits_of(q->vsini > 0 ? q->vsini : 0.0)};
        theta_of_req[e] = t;
        p->tv_of_req[e] = dedup_id(&dv, kv);
        p->nvalid++;
    }
    p->ntheta = dt.count;
    p->ntv = dv.count;
    size_t nt = p->ntheta ? p->ntheta : 1, nv = p->ntv ? p->ntv : 1;
    p->theta = rvs_malloc(nt * RVS_ENGINE_NPARAM * sizeof *p->theta);
    p->theta_of_tv = rvs_malloc(nv * sizeof *p->theta_of_tv);
    p->vsini_of_tv = rvs_malloc(nv * sizeof *p->vsini_of_tv);
    p->rank_of_tv = rvs_malloc(nv * sizeof *p->rank_of_tv);
    p->tv_at_rank = rvs_malloc(nv * sizeof *p->tv_at_rank);
    p->order = rvs_malloc((p->nvalid ? p->nvalid : 1) * sizeof *p->order);
    count = rvs_calloc((nt > nv ? nt : nv) + 1, sizeof *count);
    if (!p->theta || !p->theta_of_tv || !p->vsini_of_tv || !p->rank_of_tv || !p->tv_at_rank ||
        !p->order || !count) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t t = 0; t < p->ntheta; t++)
        for (size_t j = 0; j < RVS_ENGINE_NPARAM; j++) {
            uint64_t u = dt.keys[t * RVS_ENGINE_NPARAM + j];
            memcpy(&p->theta[t * RVS_ENGINE_NPARAM + j], &u, sizeof u);
        }
    for (size_t v = 0; v < p->ntv; v++) {
        p->theta_of_tv[v] = (int32_t)dv.keys[2 * v];
        uint64_t u = dv.keys[2 * v + 1];
        memcpy(&p->vsini_of_tv[v], &u, sizeof u);
    }
    /* templates ordered by theta (counting sort, stable): one theta's templates are adjacent */
    for (size_t v = 0; v < p->ntv; v++)
        count[p->theta_of_tv[v] + 1]++;
    for (size_t t = 0; t < p->ntheta; t++)
        count[t + 1] += count[t];
    for (size_t v = 0; v < p->ntv; v++) {
        int32_t r = count[p->theta_of_tv[v]]++;
        p->rank_of_tv[v] = r;
        p->tv_at_rank[r] = (int32_t)v;
    }
    /* requests ordered by template rank (stable): a velocity scan is one run */
    memset(count, 0, ((nt > nv ? nt : nv) + 1) * sizeof *count);
    for (size_t e = 0; e < E; e++)
        if (p->tv_of_req[e] >= 0)
            count[p->rank_of_tv[p->tv_of_req[e]] + 1]++;
    for (size_t v = 0; v < p->ntv; v++)
        count[v + 1] += count[v];
    for (size_t e = 0; e < E; e++)
        if (p->tv_of_req[e] >= 0)
            p->order[count[p->rank_of_tv[p->tv_of_req[e]]]++] = (int32_t)e;
cleanup:
    dedup_free(&dt);
    dedup_free(&dv);
    free(theta_of_req);
    free(count);
    return status;
}

/* Staging arrays big enough for a chunk of up to ereq requests and ntmpl templates. */
static int plan_staging(struct rvs_engine *g, struct plan *p, size_t ereq, size_t ntmpl,
                        int with_models)
{
    size_t es = g->es;
    ereq = ereq ? ereq : 1;
    ntmpl = ntmpl ? ntmpl : 1;
    p->h_params = rvs_malloc(ntmpl * RVS_ENGINE_NPARAM * es);
    p->h_vel = rvs_malloc(ereq * es);
    p->h_pvel = rvs_malloc(ereq * es);
    p->h_nnrow = rvs_malloc(ntmpl * sizeof(cl_int));
    p->h_tidx = rvs_malloc(ereq * sizeof(cl_int));
    p->h_sidx = rvs_malloc(ereq * sizeof(cl_int));
    p->h_ptidx = rvs_malloc(ereq * sizeof(cl_int));
    p->h_psidx = rvs_malloc(ereq * sizeof(cl_int));
    p->h_vsini = rvs_malloc(ntmpl * sizeof(double));
    p->h_chisq = rvs_malloc(ereq * sizeof(double));
    p->arm_req = rvs_malloc(ereq * sizeof(int32_t));
    if (with_models) {
        p->h_best = rvs_malloc(ereq * g->n_max * es);
        p->h_coef = rvs_malloc(ereq * g->np_max * es);
    }
    if (!p->h_params || !p->h_vel || !p->h_pvel || !p->h_nnrow || !p->h_tidx || !p->h_sidx ||
        !p->h_ptidx || !p->h_psidx || !p->h_vsini || !p->h_chisq || !p->arm_req ||
        (with_models && (!p->h_best || !p->h_coef)))
        return RVS_ERR_NOMEM;
    return RVS_OK;
}

/* Outputs of one call. */
struct outputs {
    double *chisq_arm; /* E x narms, always (internal when the caller passed NULL) */
    double *const *models, *const *coeffs;
};

/* One device pass over order[c0, c1): every arm, results into out. */
static int run_chunk(struct rvs_engine *g, struct plan *p, size_t c0, size_t c1,
                     struct outputs *out)
{
    int status = RVS_OK;
    struct rvs_context *ctx = g->ctx;
    int fp64 = ctx->use_fp64;
    size_t es = g->es, Ec = c1 - c0;
    int with_models = out->models || out->coeffs;
    if (g->sim_fail_above && Ec > g->sim_fail_above) {
        rvs_log(RVS_LOG_DEBUG, "engine", "simulated allocation failure for %zu requests", Ec);
        return CL_MEM_OBJECT_ALLOCATION_FAILURE;
    }
    g->stats.chunks++;
    int32_t r_lo = p->rank_of_tv[p->tv_of_req[p->order[c0]]];
    int32_t r_hi = p->rank_of_tv[p->tv_of_req[p->order[c1 - 1]]];
    size_t Ut = (size_t)(r_hi - r_lo + 1);
    int32_t th_lo = p->theta_of_tv[p->tv_at_rank[r_lo]];
    int32_t th_hi = p->theta_of_tv[p->tv_at_rank[r_hi]];
    size_t Uth = (size_t)(th_hi - th_lo + 1);
    /* several templates read one emulator row when a theta comes with several vsini */
    int shared_rows = Ut > Uth, any_rot = 0, rotate;

    /* staging: theta rows, template -> theta row, vsini, requests */
    for (size_t t = 0; t < Uth; t++)
        for (size_t j = 0; j < RVS_ENGINE_NPARAM; j++)
            rvs_real_put(fp64, p->h_params, t * RVS_ENGINE_NPARAM + j,
                     p->theta[((size_t)th_lo + t) * RVS_ENGINE_NPARAM + j]);
    for (size_t k = 0; k < Ut; k++) {
        int32_t v = p->tv_at_rank[r_lo + (int32_t)k];
        p->h_nnrow[k] = p->theta_of_tv[v] - th_lo;
        p->h_vsini[k] = p->vsini_of_tv[v];
        any_rot |= p->vsini_of_tv[v] > 0;
    }
    /* the rotation call makes one row per template: needed to broaden, and to give templates
     * that share an emulator row rows of their own */
    rotate = any_rot || shared_rows;
    for (size_t i = 0; i < Ec; i++) {
        const struct rvs_engine_request *q = &p->req[p->order[c0 + i]];
        p->h_tidx[i] = p->rank_of_tv[p->tv_of_req[p->order[c0 + i]]] - r_lo;
        p->h_sidx[i] = q->spectrum;
        rvs_real_put(fp64, p->h_vel, i, q->vrad);
    }

    /* device buffers for this pass */
    size_t tbytes = Ut * g->tn_max * es, ebytes = Ec * g->n_max * es;
    RVS_TRY(grow(ctx, &g->params, Uth * RVS_ENGINE_NPARAM * es));
    RVS_TRY(grow(ctx, &g->tmpl, Uth * g->tn_max * es));
    if (rotate)
        RVS_TRY(grow(ctx, &g->rot, tbytes));
    size_t coef_bytes = 0;
    for (size_t a = 0; a < g->narms; a++) {
        size_t b = rvs_spline_coeffs_bytes(ctx, g->arm[a].grid, Ut);
        coef_bytes = b > coef_bytes ? b : coef_bytes;
    }
    RVS_TRY(grow(ctx, &g->coef, coef_bytes));
    RVS_TRY(grow(ctx, &g->tidx, Ec * sizeof(cl_int)));
    RVS_TRY(grow(ctx, &g->sidx, Ec * sizeof(cl_int)));
    RVS_TRY(grow(ctx, &g->vel, Ec * es));
    RVS_TRY(grow(ctx, &g->model, ebytes));
    if (g->any_res)
        RVS_TRY(grow(ctx, &g->res, ebytes));
    RVS_TRY(grow(ctx, &g->chisq, 2 * Ec * es));
    if (with_models) {
        RVS_TRY(grow(ctx, &g->best, ebytes));
        RVS_TRY(grow(ctx, &g->coeffs, Ec * g->np_max * es));
    }

    double t0 = stage_begin(g);
    RVS_TRY(upload(g, g->params.mem, p->h_params, Uth * RVS_ENGINE_NPARAM * es));
    RVS_TRY(upload(g, g->tidx.mem, p->h_tidx, Ec * sizeof(cl_int)));
    RVS_TRY(upload(g, g->sidx.mem, p->h_sidx, Ec * sizeof(cl_int)));
    RVS_TRY(upload(g, g->vel.mem, p->h_vel, Ec * es));
    RVS_TRY(stage_end(g, RVS_ENGINE_STAGE_UPLOAD, t0, 4));

    for (size_t a = 0; a < g->narms; a++) {
        struct engine_arm *r = &g->arm[a];
        if (r->nused == 0)
            continue;
        /* the requests of this chunk whose spectrum has the arm */
        size_t Ea = 0;
        for (size_t i = 0; i < Ec; i++)
            if (g->used[(size_t)p->h_sidx[i] * g->narms + a])
                p->arm_req[Ea++] = (int32_t)i;
        if (Ea == 0)
            continue;
        cl_mem tidx = g->tidx.mem, sidx = g->sidx.mem, vel = g->vel.mem;
        if (Ea < Ec) {
            RVS_TRY(grow(ctx, &g->ptidx, Ea * sizeof(cl_int)));
            RVS_TRY(grow(ctx, &g->psidx, Ea * sizeof(cl_int)));
            RVS_TRY(grow(ctx, &g->pvel, Ea * es));
            for (size_t k = 0; k < Ea; k++) {
                size_t i = (size_t)p->arm_req[k];
                p->h_ptidx[k] = p->h_tidx[i];
                p->h_psidx[k] = p->h_sidx[i];
                rvs_real_put(fp64, p->h_pvel, k, rvs_real_get(fp64, p->h_vel, i));
            }
            t0 = stage_begin(g);
            RVS_TRY(upload(g, g->ptidx.mem, p->h_ptidx, Ea * sizeof(cl_int)));
            RVS_TRY(upload(g, g->psidx.mem, p->h_psidx, Ea * sizeof(cl_int)));
            RVS_TRY(upload(g, g->pvel.mem, p->h_pvel, Ea * es));
            RVS_TRY(stage_end(g, RVS_ENGINE_STAGE_UPLOAD, t0, 3));
            tidx = g->ptidx.mem;
            sidx = g->psidx.mem;
            vel = g->pvel.mem;
        }

        t0 = stage_begin(g);
        RVS_TRY(rvs_nn_forward(ctx, r->nn, g->params.mem, Uth, g->tmpl.mem, RVS_NN_FLUX_REAL));
        g->stats.nn_rows += Uth;
        RVS_TRY(stage_end(g, RVS_ENGINE_STAGE_NN, t0, 1));
        cl_mem src = g->tmpl.mem;
        if (rotate) {
            t0 = stage_begin(g);
            /* one row per template: the rotation reads each template's emulator row itself (a
             * template without rotation is copied); no separate gather pass */
            RVS_TRY(rvs_rotation_apply_rows(ctx, r->rot, src, shared_rows ? p->h_nnrow : NULL,
                                            Uth, Ut, p->h_vsini, r->lnstep, RVS_ROTATION_EPS,
                                            g->rot.mem));
            RVS_TRY(stage_end(g, RVS_ENGINE_STAGE_ROTATION, t0, 1));
            src = g->rot.mem;
        }
        t0 = stage_begin(g);
        RVS_TRY(rvs_spline_construct(ctx, r->grid, src, Ut, g->coef.mem));
        g->stats.templates_built += Ut;
        RVS_TRY(stage_end(g, RVS_ENGINE_STAGE_SPLINE_BUILD, t0, 1));
        t0 = stage_begin(g);
        RVS_TRY(rvs_spline_eval(ctx, r->grid, g->coef.mem, Ut, tidx, vel, Ea, r->lam, r->n,
                                g->model.mem));
        g->stats.spline_evals += Ea;
        RVS_TRY(stage_end(g, RVS_ENGINE_STAGE_SPLINE_EVAL, t0, 1));
        cl_mem m = g->model.mem;
        if (r->ndiag > 0) {
            t0 = stage_begin(g);
            RVS_TRY(rvs_resolution_apply(ctx, r->rdata, g->S, r->ndiag, r->n, m, sidx, Ea,
                                         g->res.mem));
            RVS_TRY(stage_end(g, RVS_ENGINE_STAGE_RESOLUTION, t0, 1));
            m = g->res.mem;
        }
        int want_model = out->models && out->models[a];
        int want_coef = out->coeffs && out->coeffs[a];
        t0 = stage_begin(g);
        RVS_TRY(rvs_chisq_eval(ctx, r->chisq, m, sidx, Ea, g->chisq.mem,
                               want_coef ? g->coeffs.mem : NULL,
                               want_model ? g->best.mem : NULL));
        RVS_TRY(stage_end(g, RVS_ENGINE_STAGE_CHISQ, t0, 1));

        t0 = stage_begin(g);
        RVS_TRY(rvs_chisq_read(ctx, g->chisq.mem, Ea, p->h_chisq));
        g->stats.bytes_out += 2 * Ea * es;
        if (want_model) {
            RVS_TRY(rvs_buffer_read(ctx, g->best.mem, 0, Ea * r->n * es, p->h_best));
            g->stats.bytes_out += Ea * r->n * es;
        }
        if (want_coef) {
            RVS_TRY(rvs_buffer_read(ctx, g->coeffs.mem, 0, Ea * r->np * es, p->h_coef));
            g->stats.bytes_out += Ea * r->np * es;
        }
        RVS_TRY(stage_end(g, RVS_ENGINE_STAGE_DOWNLOAD, t0,
                          1 + (unsigned)want_model + (unsigned)want_coef));

        for (size_t k = 0; k < Ea; k++) {
            size_t e = (size_t)p->order[c0 + (size_t)p->arm_req[k]];
            out->chisq_arm[e * g->narms + a] = p->h_chisq[k];
            if (want_model)
                for (size_t i = 0; i < r->n; i++)
                    out->models[a][e * r->n + i] = rvs_real_get(fp64, p->h_best, k * r->n + i);
            if (want_coef)
                for (size_t j = 0; j < r->np; j++)
                    out->coeffs[a][e * r->np + j] = rvs_real_get(fp64, p->h_coef, k * r->np + j);
        }
    }
cleanup:
    if (status != RVS_OK)
        clFinish(ctx->queue); /* pending non-blocking writes read the staging arrays */
    return status;
}

/* Requests and templates a chunk starting at order[c0] may take: the caps, then the memory
 * budget (resident data + per-request + per-template work space). Returns the end c1. */
static size_t chunk_end(const struct rvs_engine *g, const struct plan *p, size_t c0,
                        size_t cap_req, size_t cap_tmpl, size_t per_req, size_t per_tmpl,
                        size_t budget)
{
    size_t c1 = c0, ntmpl = 0, bytes = 0;
    int32_t last_rank = -1;
    (void)g;
    while (c1 < p->nvalid) {
        int32_t rank = p->rank_of_tv[p->tv_of_req[p->order[c1]]];
        size_t add = per_req + (rank != last_rank ? per_tmpl : 0);
        size_t nt = ntmpl + (rank != last_rank);
        if (c1 > c0 && (c1 - c0 >= cap_req || nt > cap_tmpl || bytes + add > budget))
            break;
        bytes += add;
        ntmpl = nt;
        last_rank = rank;
        c1++;
    }
    return c1;
}

static int engine_call(struct rvs_engine *g, const struct rvs_engine_request *req, size_t E,
                       double *chisq_total, double *chisq_arm, double *const *models,
                       double *const *coeffs)
{
    int status = RVS_OK;
    struct plan p;
    double *arm_buf = NULL;
    memset(&p, 0, sizeof p);
    if (!g || (!req && E > 0) || !chisq_total || E > (size_t)INT32_MAX) {
        rvs_log(RVS_LOG_ERROR, "engine", "eval: missing engine, requests or output, or more "
                "than 2^31-1 requests");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (g->S == 0) {
        rvs_log(RVS_LOG_ERROR, "engine", "eval: no spectra; call rvs_engine_set_data first");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    double t_call = now_seconds();
    g->stats.evals++;
    g->stats.requests += E;
    if (E == 0)
        return RVS_OK;
    size_t narms = g->narms;
    int with_models = 0;
    for (size_t a = 0; a < narms; a++)
        with_models |= (models && models[a]) || (coeffs && coeffs[a]);
    double *carm = chisq_arm;
    if (!carm) {
        arm_buf = rvs_malloc(E * narms * sizeof *arm_buf);
        if (!arm_buf) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        carm = arm_buf;
    }
    RVS_TRY(plan_build(g, req, E, &p));
    g->stats.unique_theta += p.ntheta;
    g->stats.unique_templates += p.ntv;
    g->stats.invalid += E - p.nvalid;

    /* defaults: NaN where an arm is used (overwritten by the device), 0 / NaN rows elsewhere */
    for (size_t e = 0; e < E; e++)
        for (size_t a = 0; a < narms; a++) {
            int u = g->used[(size_t)req[e].spectrum * narms + a];
            carm[e * narms + a] = u ? NAN : 0.0;
            if (models && models[a])
                for (size_t i = 0; i < g->arm[a].n; i++)
                    models[a][e * g->arm[a].n + i] = NAN;
            if (coeffs && coeffs[a])
                for (size_t j = 0; j < g->arm[a].np; j++)
                    coeffs[a][e * g->arm[a].np + j] = NAN;
        }

    size_t cap_req, cap_tmpl;
    alloc_caps(g, &cap_req, &cap_tmpl);
    if (g->user_req)
        cap_req = g->user_req < cap_req ? g->user_req : cap_req;
    if (g->user_tmpl)
        cap_tmpl = g->user_tmpl < cap_tmpl ? g->user_tmpl : cap_tmpl;
    if (g->fail_req)
        cap_req = g->fail_req < cap_req ? g->fail_req : cap_req;
    if (g->fail_tmpl)
        cap_tmpl = g->fail_tmpl < cap_tmpl ? g->fail_tmpl : cap_tmpl;
    size_t per_req = bytes_per_request(g, with_models), per_tmpl = bytes_per_template(g);
    size_t budget = budget_bytes(g), resident = resident_bytes(g);
    budget = budget > resident + per_req + per_tmpl ? budget - resident : per_req + per_tmpl;
    /* staging for the largest chunk this call can form */
    size_t stage_req = p.nvalid < cap_req ? p.nvalid : cap_req;
    size_t stage_tmpl = p.ntv < cap_tmpl ? p.ntv : cap_tmpl;
    RVS_TRY(plan_staging(g, &p, stage_req, stage_tmpl, with_models));

    struct outputs out = {carm, models, coeffs};
    size_t c0 = 0;
    while (c0 < p.nvalid) {
        size_t c1 = chunk_end(g, &p, c0, cap_req, cap_tmpl, per_req, per_tmpl, budget);
        status = run_chunk(g, &p, c0, c1, &out);
        if (status != RVS_OK && rvs_is_alloc_failure(status)) {
            size_t ntmpl = (size_t)(p.rank_of_tv[p.tv_of_req[p.order[c1 - 1]]] -
                                    p.rank_of_tv[p.tv_of_req[p.order[c0]]] + 1);
            if (c1 - c0 == 1 && ntmpl == 1) {
                rvs_log(RVS_LOG_ERROR, "engine", "a single request does not fit in the memory "
                        "of %s; use a smaller batch of spectra", g->ctx->caps.device_name);
                goto cleanup;
            }
            cap_req = (c1 - c0) / 2 ? (c1 - c0) / 2 : 1;
            cap_tmpl = ntmpl / 2 ? ntmpl / 2 : 1;
            g->fail_req = cap_req;
            g->fail_tmpl = cap_tmpl;
            g->stats.retries++;
            release_work(g);
            if (!g->warned_alloc) {
                rvs_log(RVS_LOG_WARNING, "engine", "device memory ran out for a pass of %zu "
                        "requests and %zu templates (%s); retrying with at most %zu requests "
                        "and %zu templates per pass (logged once)", c1 - c0, ntmpl,
                        rvs_strerror(status), cap_req, cap_tmpl);
                g->warned_alloc = 1;
            }
            status = RVS_OK;
            continue;
        }
        if (status != RVS_OK)
            goto cleanup;
        c0 = c1;
    }
    for (size_t e = 0; e < E; e++) {
        if (p.tv_of_req[e] < 0) {
            chisq_total[e] = NAN;
            continue;
        }
        double sum = 0;
        for (size_t a = 0; a < narms; a++)
            if (g->used[(size_t)req[e].spectrum * narms + a])
                sum += carm[e * narms + a];
        chisq_total[e] = sum;
    }
cleanup:
    plan_free(&p);
    free(arm_buf);
    g->stats.total_seconds += now_seconds() - t_call;
    return status;
}

int rvs_engine_eval(struct rvs_engine *g, const struct rvs_engine_request *req, size_t E,
                    double *chisq_total, double *chisq_arm)
{
    return engine_call(g, req, E, chisq_total, chisq_arm, NULL, NULL);
}

int rvs_engine_models(struct rvs_engine *g, const struct rvs_engine_request *req, size_t E,
                      double *chisq_total, double *chisq_arm, double *const *models,
                      double *const *coeffs)
{
    return engine_call(g, req, E, chisq_total, chisq_arm, models, coeffs);
}

/* ------------------------------------------------------------------ continuum only */

int rvs_engine_continuum(struct rvs_engine *g, double *chisq_arm, double *const *models,
                         double *const *coeffs)
{
    int status = RVS_OK;
    cl_int *sidx = NULL;
    double *chisq = NULL;
    void *hbest = NULL, *hcoef = NULL;
    if (!g || !chisq_arm || g->S == 0) {
        rvs_log(RVS_LOG_ERROR, "engine", "continuum: missing engine, output or data");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    struct rvs_context *ctx = g->ctx;
    size_t S = g->S, narms = g->narms, es = g->es;
    int fp64 = ctx->use_fp64;
    double t_call = now_seconds();
    size_t cap_req, cap_tmpl;
    alloc_caps(g, &cap_req, &cap_tmpl);
    size_t per_req = bytes_per_request(g, 1), budget = budget_bytes(g), res = resident_bytes(g);
    size_t by_mem = budget > res ? (budget - res) / per_req : 1;
    cap_req = cap_req < by_mem ? cap_req : by_mem;
    if (g->user_req)
        cap_req = g->user_req < cap_req ? g->user_req : cap_req;
    cap_req = cap_req ? cap_req : 1;
    size_t chunk = S < cap_req ? S : cap_req;
    sidx = rvs_malloc(chunk * sizeof *sidx);
    chisq = rvs_malloc(chunk * sizeof *chisq);
    hbest = rvs_malloc(chunk * g->n_max * es);
    hcoef = rvs_malloc(chunk * g->np_max * es);
    if (!sidx || !chisq || !hbest || !hcoef) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t sp = 0; sp < S; sp++)
        for (size_t a = 0; a < narms; a++) {
            int u = g->used[sp * narms + a];
            chisq_arm[sp * narms + a] = u ? NAN : 0.0;
            for (size_t i = 0; models && models[a] && i < g->arm[a].n; i++)
                models[a][sp * g->arm[a].n + i] = NAN;
            for (size_t j = 0; coeffs && coeffs[a] && j < g->arm[a].np; j++)
                coeffs[a][sp * g->arm[a].np + j] = NAN;
        }
    for (size_t a = 0; a < narms; a++) {
        struct engine_arm *r = &g->arm[a];
        int want_model = models && models[a], want_coef = coeffs && coeffs[a];
        size_t next = 0;
        while (r->nused > 0 && next < S) {
            size_t Ea = 0;
            while (next < S && Ea < chunk) {
                if (g->used[next * narms + a])
                    sidx[Ea++] = (cl_int)next;
                next++;
            }
            if (Ea == 0)
                continue;
            RVS_TRY(grow(ctx, &g->sidx, Ea * sizeof(cl_int)));
            RVS_TRY(grow(ctx, &g->model, Ea * g->n_max * es));
            RVS_TRY(grow(ctx, &g->chisq, 2 * Ea * es));
            if (r->ndiag)
                RVS_TRY(grow(ctx, &g->res, Ea * g->n_max * es));
            if (want_model)
                RVS_TRY(grow(ctx, &g->best, Ea * g->n_max * es));
            if (want_coef)
                RVS_TRY(grow(ctx, &g->coeffs, Ea * g->np_max * es));
            double one = 1.0;
            float onef = 1.0f;
            RVS_TRY(upload(g, g->sidx.mem, sidx, Ea * sizeof(cl_int)));
            g->stats.calls[RVS_ENGINE_STAGE_UPLOAD]++;
            /* rvspecfit's get_chisq_continuum: a template of ones, through the resolution */
            RVS_TRY(rvs_buffer_fill(ctx, g->model.mem,
                                    fp64 ? (const void *)&one : (const void *)&onef, es, 0,
                                    Ea * r->n * es));
            cl_mem m = g->model.mem;
            if (r->ndiag) {
                RVS_TRY(rvs_resolution_apply(ctx, r->rdata, S, r->ndiag, r->n, m, g->sidx.mem, Ea,
                                             g->res.mem));
                g->stats.calls[RVS_ENGINE_STAGE_RESOLUTION]++;
                m = g->res.mem;
            }
            RVS_TRY(rvs_chisq_eval(ctx, r->chisq, m, g->sidx.mem, Ea, g->chisq.mem,
                                   want_coef ? g->coeffs.mem : NULL,
                                   want_model ? g->best.mem : NULL));
            g->stats.calls[RVS_ENGINE_STAGE_CHISQ]++;
            RVS_TRY(rvs_chisq_read(ctx, g->chisq.mem, Ea, chisq));
            g->stats.calls[RVS_ENGINE_STAGE_DOWNLOAD]++;
            g->stats.bytes_out += 2 * Ea * es;
            if (want_model) {
                RVS_TRY(rvs_buffer_read(ctx, g->best.mem, 0, Ea * r->n * es, hbest));
                g->stats.calls[RVS_ENGINE_STAGE_DOWNLOAD]++;
                g->stats.bytes_out += Ea * r->n * es;
            }
            if (want_coef) {
                RVS_TRY(rvs_buffer_read(ctx, g->coeffs.mem, 0, Ea * r->np * es, hcoef));
                g->stats.calls[RVS_ENGINE_STAGE_DOWNLOAD]++;
                g->stats.bytes_out += Ea * r->np * es;
            }
            for (size_t k = 0; k < Ea; k++) {
                size_t sp = (size_t)sidx[k];
                chisq_arm[sp * narms + a] = chisq[k];
                for (size_t i = 0; want_model && i < r->n; i++)
                    models[a][sp * r->n + i] = rvs_real_get(fp64, hbest, k * r->n + i);
                for (size_t j = 0; want_coef && j < r->np; j++)
                    coeffs[a][sp * r->np + j] = rvs_real_get(fp64, hcoef, k * r->np + j);
            }
        }
    }
cleanup:
    if (status != RVS_OK)
        clFinish(ctx->queue);
    free(sidx);
    free(chisq);
    free(hbest);
    free(hcoef);
    g->stats.total_seconds += now_seconds() - t_call;
    return status;
}

/* ------------------------------------------------------------------ self-test */

/* det of a small symmetric positive matrix by Cholesky in long double; log of it */
static long double selftest_logdet(const long double *g, size_t np)
{
    long double l[16], logdet = 0;
    for (size_t j = 0; j < np; j++)
        for (size_t k = 0; k <= j; k++) {
            long double v = g[j * np + k];
            for (size_t q = 0; q < k; q++)
                v -= l[j * np + q] * l[k * np + q];
            if (j == k) {
                l[j * np + j] = sqrtl(v);
                logdet += 2 * logl(l[j * np + j]);
            } else {
                l[j * np + k] = v / l[k * np + k];
            }
        }
    return logdet;
}

/* One arm, a network whose weights are all zero (flux exp(0) = 1 at every template pixel) and a
 * spectrum that is a continuum in the basis: the best-fit model is the spectrum itself and
 * chi^2 = log det(P^T P / sigma^2) + 2 sum log sigma, for requests at v = 0 and 30 km/s (one
 * shared template) and vsini 10 km/s (a second template; a constant stays constant away from
 * the edges, whose darkening rings into the natural spline by a factor 2 - sqrt(3) per knot). */
int rvs_engine_selftest(struct rvs_context *ctx, char *detail, size_t detail_size)
{
    enum { TN = 96, N = 16, NP = 3, WIDTH = 2, NPC = 2, E = 3 };
    int status = RVS_OK;
    struct rvs_nn *nn = NULL;
    struct rvs_engine *g = NULL;
    static const float zeros[TN * NPC + WIDTH * WIDTH + RVS_ENGINE_NPARAM * WIDTH + TN] = {0};
    double tw[TN], dw[N], basis[NP * N], spec[N], espec[N], model[N], coef[NP];
    struct rvs_nn_desc d;
    rvs_nn_desc_init(&d);
    d.indim = RVS_ENGINE_NPARAM;
    d.nlayers = 0;
    d.width = WIDTH;
    d.npc = NPC;
    d.npix = TN;
    d.lin[0] = (struct rvs_nn_linear){zeros, zeros};
    d.lin[1] = (struct rvs_nn_linear){zeros, zeros};
    d.pc = (struct rvs_nn_linear){zeros, zeros};
    for (size_t j = 0; j < RVS_ENGINE_NPARAM; j++)
        d.map_scale[j] = 1;
    for (size_t i = 0; i < TN; i++)
        tw[i] = 5000.0 * exp(1e-4 * (double)i);
    for (size_t i = 0; i < N; i++)
        dw[i] = 5015.0 + (double)i; /* 30 knots from either end: no edge ringing */
    RVS_TRY(rvs_chisq_basis(dw, N, NP, 1, basis));
    long double gram[NP * NP] = {0}, logsig = 0;
    for (size_t i = 0; i < N; i++) {
        espec[i] = 0.25 + 0.0625 * (double)(i % 3);
        spec[i] = 3 * basis[i] + 0.5 * basis[N + i] + 0.25 * basis[2 * N + i];
        logsig += 2 * logl(espec[i]);
        for (size_t j = 0; j < NP; j++)
            for (size_t k = 0; k < NP; k++)
                gram[j * NP + k] +=
                    (long double)basis[j * N + i] * basis[k * N + i] / (espec[i] * espec[i]);
    }
    double want = (double)(selftest_logdet(gram, NP) + logsig);
    RVS_TRY(rvs_nn_create(ctx, &d, &nn));
    struct rvs_engine_arm_config arm = {.name = "selftest", .nn = nn, .template_wave = tw,
                                        .template_npix = TN, .data_wave = dw, .data_npix = N,
                                        .npoly = NP, .rbf = 1};
    RVS_TRY(rvs_engine_create(ctx, &arm, 1, &g));
    const double *ps = spec, *pe = espec;
    RVS_TRY(rvs_engine_set_data(g, 1, &ps, &pe, NULL, NULL));
    const struct rvs_engine_request req[E] = {{0, 5000, 4, 0, 0, 0, 0},
                                              {0, 5000, 4, 0, 0, 0, 30},
                                              {0, 5000, 4, 0, 0, 10, -30}};
    double chisq[E], models[E * N], coeffs[E * NP];
    double *mp = models, *cp = coeffs;
    RVS_TRY(rvs_engine_models(g, req, E, chisq, NULL, &mp, &cp));
    /* fp32: chi^2 ~ -90 to ~1e-4 (the chi^2 self-test's bound), models to a few float ulp */
    double tol = ctx->use_fp64 ? 1e-9 : 1e-3, mtol = ctx->use_fp64 ? 1e-12 : 1e-5;
    for (size_t e = 0; e < E && status == RVS_OK; e++) {
        memcpy(model, models + e * N, sizeof model);
        memcpy(coef, coeffs + e * NP, sizeof coef);
        double merr = 0;
        for (size_t i = 0; i < N; i++)
            merr = fmax(merr, fabs(model[i] - spec[i]) / 3.75);
        if (!(fabs(chisq[e] - want) <= tol) || !(merr <= mtol) ||
            !(fabs(coef[0] - 3) <= 1e3 * mtol)) {
            snprintf(detail, detail_size, "request %zu: chi^2 %.9g (expected %.9g), model error "
                     "%.3g, first coefficient %.9g (expected 3)", e, chisq[e], want, merr,
                     coef[0]);
            status = RVS_ERR_SELFTEST;
        }
    }
    if (status == RVS_OK && (g->stats.unique_theta != 1 || g->stats.unique_templates != 2)) {
        snprintf(detail, detail_size, "3 requests gave %llu theta and %llu templates, expected "
                 "1 and 2", g->stats.unique_theta, g->stats.unique_templates);
        status = RVS_ERR_SELFTEST;
    }
cleanup:
    rvs_engine_destroy(&g);
    rvs_nn_destroy(&nn);
    return status;
}
