/* engine.c: the evaluation engine (include/rvsfit/engine.h, DESIGN.md section 4). It chains the
 * kernel families (nn, rotation, spline, resolution, chisq) over many requests at once, the way
 * rvspecfit's spec_fit.get_chisq chains them for one: template at theta (getCurTempl), rotation
 * (convolve_vsini), spline at the shifted wavelengths (evalRV), resolution (convolve_resol), then
 * get_chisq0 per arm, summed over arms.
 *
 * This file: creation, the memory budget, the batch's data, statistics, the continuum-only fit.
 * evaluate.c: one call (below); engine_internal.h: the state both share; engine_selftest.c: the
 * start-up self-test's row.
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
#include "engine/engine_internal.h"
#include "rvsfit/chisq.h"
#include "rvsfit/engine.h"
#include "rvsfit/physics.h"
#include "rvsfit/resolution.h"
#include "rvsfit/rotation.h"
#include "rvsfit/spline.h"

/* ------------------------------------------------------------------ small helpers */

double rvs_engine_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int rvs_engine_grow(struct rvs_context *ctx, struct grow_buf *b, size_t bytes)
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

void rvs_engine_release_work(struct rvs_engine *g)
{
    struct grow_buf *all[] = {&g->params, &g->tmpl,  &g->rot,   &g->coef,   &g->tidx,
                              &g->vel,    &g->sidx,  &g->ptidx, &g->pvel,   &g->psidx,
                              &g->model,  &g->res,   &g->chisq, &g->coeffs, &g->best,
                              &g->drot,   &g->drow,  &g->xtidx, &g->xvel,   &g->xsidx,
                              &g->grad,   &g->gn};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        rvs_buffer_release(&all[i]->mem);
        all[i]->bytes = 0;
    }
}

/* Non-blocking upload; the host array must stay untouched until the queue has passed it (the
 * engine's next blocking read). */
int rvs_engine_upload(struct rvs_engine *g, cl_mem buf, const void *host, size_t bytes)
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
int rvs_engine_stage_end(struct rvs_engine *g, enum rvs_engine_stage stage, double t0,
                     unsigned calls)
{
    int status = RVS_OK;
    g->stats.calls[stage] += calls;
    if (g->profiling) {
        g->stats.host_seconds[stage] += rvs_engine_now() - t0;
        RVS_CL_TRY(clFinish(g->ctx->queue));
        g->stats.seconds[stage] += rvs_engine_now() - t0;
    }
cleanup:
    return status;
}

double rvs_engine_stage_begin(const struct rvs_engine *g) { return g->profiling ? rvs_engine_now() : 0; }

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
    rvs_engine_release_work(g);
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
size_t rvs_engine_bytes_per_request(const struct rvs_engine *g, int with_models, int with_derivs)
{
    size_t es = g->es, b = 0;
    /* model, resolution output; with derivatives seven rows each (the template and its six
     * tangents) and the v-derivative rows before they join them */
    size_t rows = with_derivs ? 1 + RVS_ENGINE_NDERIV : 1;
    b += es * g->n_max * rows * (1 + (size_t)g->any_res);
    if (with_derivs) {
        b += es * g->n_max;                                  /* v-derivative rows */
        b += (size_t)RVS_ENGINE_NDERIV * (4 + es) + rows * 4; /* extended indices, velocities */
        b += es * RVS_ENGINE_NDERIV * (1 + RVS_ENGINE_NDERIV); /* gradients, GN matrices */
    }
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
size_t rvs_engine_bytes_per_template(const struct rvs_engine *g, int with_derivs)
{
    /* with derivatives: the emulator's value and four theta tangents, their rotations and the
     * vsini derivative (six rows), six splines */
    size_t nn_rows = with_derivs ? 1 + RVS_ENGINE_NPARAM : 1;
    size_t rows = with_derivs ? 2 + RVS_ENGINE_NPARAM : 1;
    size_t es = g->es, b = 0, coef = 0;
    b += es * g->tn_max * (nn_rows + rows + (with_derivs ? 1 : 0)) + es * RVS_ENGINE_NPARAM + 4;
    for (size_t a = 0; a < g->narms; a++) {
        const struct engine_arm *r = &g->arm[a];
        coef = r->coef_per_tmpl > coef ? r->coef_per_tmpl : coef;
        /* NN ping-pong work space and widened pc output; rotation work rows (FFT path) */
        b += nn_rows * 4 * (2 * ENGINE_NN_WIDTH_GUESS + r->tn) + rows * 2 * es * (r->tn + 2);
    }
    return b + rows * coef;
}

size_t rvs_engine_resident_bytes(const struct rvs_engine *g)
{
    size_t b = 0;
    for (size_t a = 0; a < g->narms; a++)
        b += g->arm[a].resident;
    return b;
}

size_t rvs_engine_budget_bytes(const struct rvs_engine *g)
{
    size_t share = (size_t)((double)g->ctx->caps.global_mem_size * ENGINE_MEMORY_SHARE);
    /* A CPU device's "global memory" is the host's RAM: half of it as a work space made 500
     * spectra peak at 6 GB of RSS (derivative passes) for no speed (the passes are compute
     * bound there, and smaller ones stay in cache); a fixed budget keeps a run's memory flat at
     * any N: 1.37 GB RSS at 100 realistic targets, 1.44 GB at 500, 3.4 spectra/s (PoCL). */
    if (g->ctx->caps.type & CL_DEVICE_TYPE_CPU)
        share = share < ENGINE_CPU_BUDGET ? share : ENGINE_CPU_BUDGET;
    return share;
}

/* Caps from the largest single allocation: per request and per template. */
void rvs_engine_alloc_caps(const struct rvs_engine *g, size_t *max_req, size_t *max_tmpl)
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
    per_spec += rps * rvs_engine_bytes_per_request(g, 0, 0) + tps * rvs_engine_bytes_per_template(g, 0);
    size_t S = rvs_engine_budget_bytes(g) / (per_spec ? per_spec : 1);
    size_t by_alloc = (size_t)g->ctx->caps.max_alloc_size / (per_spec_alloc ? per_spec_alloc : 1);
    S = S < by_alloc ? S : by_alloc;
    if (rps > 0) {
        size_t max_req, max_tmpl;
        rvs_engine_alloc_caps(g, &max_req, &max_tmpl);
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
    double t_call = rvs_engine_now();
    size_t cap_req, cap_tmpl;
    rvs_engine_alloc_caps(g, &cap_req, &cap_tmpl);
    size_t per_req = rvs_engine_bytes_per_request(g, 1, 0), budget = rvs_engine_budget_bytes(g), res = rvs_engine_resident_bytes(g);
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
            RVS_TRY(rvs_engine_grow(ctx, &g->sidx, Ea * sizeof(cl_int)));
            RVS_TRY(rvs_engine_grow(ctx, &g->model, Ea * g->n_max * es));
            RVS_TRY(rvs_engine_grow(ctx, &g->chisq, 2 * Ea * es));
            if (r->ndiag)
                RVS_TRY(rvs_engine_grow(ctx, &g->res, Ea * g->n_max * es));
            if (want_model)
                RVS_TRY(rvs_engine_grow(ctx, &g->best, Ea * g->n_max * es));
            if (want_coef)
                RVS_TRY(rvs_engine_grow(ctx, &g->coeffs, Ea * g->np_max * es));
            double one = 1.0;
            float onef = 1.0f;
            RVS_TRY(rvs_engine_upload(g, g->sidx.mem, sidx, Ea * sizeof(cl_int)));
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
    g->stats.total_seconds += rvs_engine_now() - t_call;
    return status;
}
