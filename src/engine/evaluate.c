/* evaluate.c: one call of the evaluation engine (rvs_engine_eval, rvs_engine_models; engine.c
 * says what a call does step by step): the requests validated and deduplicated by exact bit
 * patterns, the unique templates ordered by theta and the requests by template, the ordered
 * requests cut into chunks that fit the memory budget, each chunk through NN -> rotation ->
 * spline -> resolution -> chi^2 per arm, and the arms summed on the host in the caller's order.
 * An allocation failure in a chunk halves the chunk limits and retries that chunk. */
#include <config.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/internal.h"
#include "engine/engine_internal.h"
#include "rvsfit/physics.h"

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
    /* derivatives: rotation rows and their vsini, the tangent rows' template index, velocity
     * and spectrum, gradients and GN matrices read back */
    cl_int *h_rrows, *h_xtidx, *h_xsidx;
    double *h_rvsini;
    void *h_xvel, *h_grad, *h_gn;
};

static void plan_free(struct plan *p)
{
    free(p->h_rrows), free(p->h_xtidx), free(p->h_xsidx), free(p->h_rvsini), free(p->h_xvel);
    free(p->h_grad), free(p->h_gn);
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
                        int with_models, int with_derivs)
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
    if (with_derivs) {
        const size_t nd = RVS_ENGINE_NDERIV;
        p->h_rrows = rvs_malloc(ntmpl * (1 + RVS_ENGINE_NPARAM) * sizeof(cl_int));
        p->h_rvsini = rvs_malloc(ntmpl * (2 + RVS_ENGINE_NPARAM) * sizeof(double));
        p->h_xtidx = rvs_malloc(ereq * nd * sizeof(cl_int));
        p->h_xvel = rvs_malloc(ereq * nd * es);
        p->h_xsidx = rvs_malloc(ereq * (1 + nd) * sizeof(cl_int));
        p->h_grad = rvs_malloc(ereq * nd * es);
        p->h_gn = rvs_malloc(ereq * nd * nd * es);
        if (!p->h_rrows || !p->h_rvsini || !p->h_xtidx || !p->h_xvel || !p->h_xsidx ||
            !p->h_grad || !p->h_gn)
            return RVS_ERR_NOMEM;
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
    double *grad, *gn; /* rvs_engine_derivs: E x NDERIV, E x NDERIV^2 (summed over arms) */
};

/* rvs_engine_derivs's rows on the device. The emulator gives the template and its tangents in
 * theta (blocks 0 and 1..4 of its output), the rotation turns them into rotated rows and adds
 * the vsini derivative (block 5), the spline evaluates blocks 0..5 at the requests' velocities
 * and adds the v derivative (block 6): block b of the model rows holds request i's row at
 * b Ea + i, the layout rvs_chisq_eval_deriv takes. Which parameter each tangent block is: */
static const int tangent_param[RVS_ENGINE_NDERIV] = {
    RVS_ENGINE_D_TEFF, RVS_ENGINE_D_LOGG,  RVS_ENGINE_D_FEH,
    RVS_ENGINE_D_ALPHA, RVS_ENGINE_D_VSINI, RVS_ENGINE_D_VRAD};

/* km/s: where rvs_rotation_apply_rows_dvsini gives the derivative at vsini -> 0+ (a kernel of
 * 3e-7 pixels at DESI's template sampling) */
#define ENGINE_VSINI_RIGHT_LIMIT 1e-6

/* One arm of a chunk with derivatives: Uth emulator rows, Ut templates (template k reads
 * emulator row h_nnrow[k] and rotates with h_vsini[k]), the arm's Ea requests arm_req[0..Ea)
 * (chunk positions) with their template index, spectrum and velocity on the device in tidx,
 * sidx, vel. Results into out, summed over arms. */
static int arm_derivs(struct rvs_engine *g, struct plan *p, size_t a, size_t c0, size_t Uth,
                      size_t Ut, size_t Ea, cl_mem tidx, cl_mem sidx, cl_mem vel,
                      struct outputs *out)
{
    int status = RVS_OK;
    struct rvs_context *ctx = g->ctx;
    struct engine_arm *r = &g->arm[a];
    const int fp64 = ctx->use_fp64;
    const size_t es = g->es, nd = RVS_ENGINE_NDERIV, nb = 1 + RVS_ENGINE_NPARAM;
    const size_t tn = r->tn, n = r->n, rowb = n * es;
    double t0;

    /* host: rows of the rotation (emulator block b of template k's theta), the tangent rows'
     * template index (spline block b of the request's template), velocity and spectrum */
    for (size_t b = 0; b < nb; b++)
        for (size_t k = 0; k < Ut; k++) {
            p->h_rrows[b * Ut + k] = (cl_int)(b * Uth) + p->h_nnrow[k];
            p->h_rvsini[b * Ut + k] = p->h_vsini[k];
        }
    for (size_t k = 0; k < Ea; k++) {
        size_t i = (size_t)p->arm_req[k];
        for (size_t b = 0; b < nd; b++) {
            p->h_xtidx[b * Ea + k] = (cl_int)(b * Ut) + p->h_tidx[i];
            rvs_real_put(fp64, p->h_xvel, b * Ea + k, rvs_real_get(fp64, p->h_vel, i));
        }
        for (size_t b = 0; b <= nd; b++)
            p->h_xsidx[b * Ea + k] = p->h_sidx[i];
    }
    RVS_TRY(rvs_engine_grow(ctx, &g->xtidx, nd * Ea * sizeof(cl_int)));
    RVS_TRY(rvs_engine_grow(ctx, &g->xvel, nd * Ea * es));
    RVS_TRY(rvs_engine_grow(ctx, &g->xsidx, (1 + nd) * Ea * sizeof(cl_int)));
    t0 = rvs_engine_stage_begin(g);
    RVS_TRY(rvs_engine_upload(g, g->xtidx.mem, p->h_xtidx, nd * Ea * sizeof(cl_int)));
    RVS_TRY(rvs_engine_upload(g, g->xvel.mem, p->h_xvel, nd * Ea * es));
    RVS_TRY(rvs_engine_upload(g, g->xsidx.mem, p->h_xsidx, (1 + nd) * Ea * sizeof(cl_int)));
    RVS_TRY(rvs_engine_stage_end(g, RVS_ENGINE_STAGE_UPLOAD, t0, 3));

    t0 = rvs_engine_stage_begin(g);
    RVS_TRY(rvs_nn_forward_tangent(ctx, r->nn, g->params.mem, Uth, g->tmpl.mem,
                                   RVS_NN_FLUX_REAL));
    g->stats.nn_rows += Uth;
    RVS_TRY(rvs_engine_stage_end(g, RVS_ENGINE_STAGE_NN, t0, 1));

    /* rotation: template and theta tangents (linear: the template's vsini), then the vsini
     * derivative of the template, joined as block nb */
    t0 = rvs_engine_stage_begin(g);
    RVS_TRY(rvs_rotation_apply_rows(ctx, r->rot, g->tmpl.mem, p->h_rrows, nb * Uth, nb * Ut,
                                    p->h_rvsini, r->lnstep, RVS_ROTATION_EPS, g->rot.mem));
    /* at vsini <= 0 (no rotation) the derivative from the right: a kernel narrower than a
     * pixel broadens linearly in vsini, so any tiny vsini gives that limit */
    double *dv_vsini = p->h_rvsini + nb * Ut;
    for (size_t k = 0; k < Ut; k++)
        dv_vsini[k] = p->h_vsini[k] > 0 ? p->h_vsini[k] : ENGINE_VSINI_RIGHT_LIMIT;
    RVS_TRY(rvs_rotation_apply_rows_dvsini(ctx, r->rot, g->tmpl.mem, p->h_nnrow, Uth, Ut,
                                           dv_vsini, r->lnstep, RVS_ROTATION_EPS,
                                           g->drot.mem));
    RVS_TRY(rvs_buffer_copy(ctx, g->drot.mem, 0, g->rot.mem, nb * Ut * tn * es, Ut * tn * es));
    RVS_TRY(rvs_engine_stage_end(g, RVS_ENGINE_STAGE_ROTATION, t0, 3));

    t0 = rvs_engine_stage_begin(g);
    RVS_TRY(rvs_spline_construct(ctx, r->grid, g->rot.mem, (nb + 1) * Ut, g->coef.mem));
    g->stats.templates_built += Ut;
    RVS_TRY(rvs_engine_stage_end(g, RVS_ENGINE_STAGE_SPLINE_BUILD, t0, 1));

    /* blocks 0..nb of the model rows at the requests' velocities, then d/dv as block nd */
    t0 = rvs_engine_stage_begin(g);
    RVS_TRY(rvs_spline_eval(ctx, r->grid, g->coef.mem, (nb + 1) * Ut, g->xtidx.mem, g->xvel.mem,
                            nd * Ea, r->lam, n, g->model.mem));
    RVS_TRY(rvs_spline_eval_dv(ctx, r->grid, g->coef.mem, (nb + 1) * Ut, tidx, vel, Ea, r->lam, n,
                               NULL, g->drow.mem));
    RVS_TRY(rvs_buffer_copy(ctx, g->drow.mem, 0, g->model.mem, nd * Ea * rowb, Ea * rowb));
    g->stats.spline_evals += Ea;
    RVS_TRY(rvs_engine_stage_end(g, RVS_ENGINE_STAGE_SPLINE_EVAL, t0, 3));

    cl_mem m = g->model.mem;
    if (r->ndiag > 0) {
        t0 = rvs_engine_stage_begin(g);
        RVS_TRY(rvs_resolution_apply(ctx, r->rdata, g->S, r->ndiag, n, m, g->xsidx.mem,
                                     (1 + nd) * Ea, g->res.mem));
        RVS_TRY(rvs_engine_stage_end(g, RVS_ENGINE_STAGE_RESOLUTION, t0, 1));
        m = g->res.mem;
    }
    t0 = rvs_engine_stage_begin(g);
    RVS_TRY(rvs_chisq_eval_deriv(ctx, r->chisq, m, m, Ea, nd, sidx, Ea, g->chisq.mem, g->grad.mem,
                                 out->gn ? g->gn.mem : NULL));
    RVS_TRY(rvs_engine_stage_end(g, RVS_ENGINE_STAGE_CHISQ, t0, 1));

    t0 = rvs_engine_stage_begin(g);
    RVS_TRY(rvs_chisq_read(ctx, g->chisq.mem, Ea, p->h_chisq));
    RVS_TRY(rvs_buffer_read(ctx, g->grad.mem, 0, Ea * nd * es, p->h_grad));
    if (out->gn)
        RVS_TRY(rvs_buffer_read(ctx, g->gn.mem, 0, Ea * nd * nd * es, p->h_gn));
    g->stats.bytes_out += Ea * es * (2 + nd + (out->gn ? nd * nd : 0));
    RVS_TRY(rvs_engine_stage_end(g, RVS_ENGINE_STAGE_DOWNLOAD, t0, out->gn ? 3 : 2));

    for (size_t k = 0; k < Ea; k++) {
        size_t e = (size_t)p->order[c0 + (size_t)p->arm_req[k]];
        out->chisq_arm[e * g->narms + a] = p->h_chisq[k];
        for (size_t i = 0; i < nd; i++) {
            size_t pi = (size_t)tangent_param[i];
            out->grad[e * nd + pi] += rvs_real_get(fp64, p->h_grad, k * nd + i);
            if (out->gn)
                for (size_t j = 0; j < nd; j++)
                    out->gn[(e * nd + pi) * nd + (size_t)tangent_param[j]] +=
                        rvs_real_get(fp64, p->h_gn, (k * nd + i) * nd + j);
        }
    }
cleanup:
    return status;
}

/* One device pass over order[c0, c1): every arm, results into out. */
static int run_chunk(struct rvs_engine *g, struct plan *p, size_t c0, size_t c1,
                     struct outputs *out)
{
    int status = RVS_OK;
    struct rvs_context *ctx = g->ctx;
    int fp64 = ctx->use_fp64;
    size_t es = g->es, Ec = c1 - c0;
    int with_models = out->models || out->coeffs;
    int with_derivs = out->grad != NULL;
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

    /* device buffers for this pass; with derivatives the emulator gives 1 + NPARAM rows per
     * theta, the rotation and the splines 2 + NPARAM per template (the vsini derivative
     * added), and the model 1 + NDERIV rows per request (arm_derivs) */
    const size_t nn_rows = with_derivs ? 1 + RVS_ENGINE_NPARAM : 1;
    const size_t t_rows = with_derivs ? 2 + RVS_ENGINE_NPARAM : 1;
    const size_t m_rows = with_derivs ? 1 + RVS_ENGINE_NDERIV : 1;
    size_t tbytes = Ut * g->tn_max * es, ebytes = Ec * g->n_max * es;
    RVS_TRY(rvs_engine_grow(ctx, &g->params, Uth * RVS_ENGINE_NPARAM * es));
    RVS_TRY(rvs_engine_grow(ctx, &g->tmpl, nn_rows * Uth * g->tn_max * es));
    if (rotate || with_derivs)
        RVS_TRY(rvs_engine_grow(ctx, &g->rot, t_rows * tbytes));
    size_t coef_bytes = 0;
    for (size_t a = 0; a < g->narms; a++) {
        size_t b = rvs_spline_coeffs_bytes(ctx, g->arm[a].grid, t_rows * Ut);
        coef_bytes = b > coef_bytes ? b : coef_bytes;
    }
    RVS_TRY(rvs_engine_grow(ctx, &g->coef, coef_bytes));
    RVS_TRY(rvs_engine_grow(ctx, &g->tidx, Ec * sizeof(cl_int)));
    RVS_TRY(rvs_engine_grow(ctx, &g->sidx, Ec * sizeof(cl_int)));
    RVS_TRY(rvs_engine_grow(ctx, &g->vel, Ec * es));
    RVS_TRY(rvs_engine_grow(ctx, &g->model, m_rows * ebytes));
    if (g->any_res)
        RVS_TRY(rvs_engine_grow(ctx, &g->res, m_rows * ebytes));
    if (with_derivs) {
        RVS_TRY(rvs_engine_grow(ctx, &g->drot, tbytes));
        RVS_TRY(rvs_engine_grow(ctx, &g->drow, ebytes));
        RVS_TRY(rvs_engine_grow(ctx, &g->grad, Ec * RVS_ENGINE_NDERIV * es));
        if (out->gn)
            RVS_TRY(rvs_engine_grow(ctx, &g->gn,
                                    Ec * RVS_ENGINE_NDERIV * RVS_ENGINE_NDERIV * es));
    }
    RVS_TRY(rvs_engine_grow(ctx, &g->chisq, 2 * Ec * es));
    if (with_models) {
        RVS_TRY(rvs_engine_grow(ctx, &g->best, ebytes));
        RVS_TRY(rvs_engine_grow(ctx, &g->coeffs, Ec * g->np_max * es));
    }

    double t0 = rvs_engine_stage_begin(g);
    RVS_TRY(rvs_engine_upload(g, g->params.mem, p->h_params, Uth * RVS_ENGINE_NPARAM * es));
    RVS_TRY(rvs_engine_upload(g, g->tidx.mem, p->h_tidx, Ec * sizeof(cl_int)));
    RVS_TRY(rvs_engine_upload(g, g->sidx.mem, p->h_sidx, Ec * sizeof(cl_int)));
    RVS_TRY(rvs_engine_upload(g, g->vel.mem, p->h_vel, Ec * es));
    RVS_TRY(rvs_engine_stage_end(g, RVS_ENGINE_STAGE_UPLOAD, t0, 4));

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
            RVS_TRY(rvs_engine_grow(ctx, &g->ptidx, Ea * sizeof(cl_int)));
            RVS_TRY(rvs_engine_grow(ctx, &g->psidx, Ea * sizeof(cl_int)));
            RVS_TRY(rvs_engine_grow(ctx, &g->pvel, Ea * es));
            for (size_t k = 0; k < Ea; k++) {
                size_t i = (size_t)p->arm_req[k];
                p->h_ptidx[k] = p->h_tidx[i];
                p->h_psidx[k] = p->h_sidx[i];
                rvs_real_put(fp64, p->h_pvel, k, rvs_real_get(fp64, p->h_vel, i));
            }
            t0 = rvs_engine_stage_begin(g);
            RVS_TRY(rvs_engine_upload(g, g->ptidx.mem, p->h_ptidx, Ea * sizeof(cl_int)));
            RVS_TRY(rvs_engine_upload(g, g->psidx.mem, p->h_psidx, Ea * sizeof(cl_int)));
            RVS_TRY(rvs_engine_upload(g, g->pvel.mem, p->h_pvel, Ea * es));
            RVS_TRY(rvs_engine_stage_end(g, RVS_ENGINE_STAGE_UPLOAD, t0, 3));
            tidx = g->ptidx.mem;
            sidx = g->psidx.mem;
            vel = g->pvel.mem;
        }
        if (with_derivs) {
            RVS_TRY(arm_derivs(g, p, a, c0, Uth, Ut, Ea, tidx, sidx, vel, out));
            continue;
        }

        t0 = rvs_engine_stage_begin(g);
        RVS_TRY(rvs_nn_forward(ctx, r->nn, g->params.mem, Uth, g->tmpl.mem, RVS_NN_FLUX_REAL));
        g->stats.nn_rows += Uth;
        RVS_TRY(rvs_engine_stage_end(g, RVS_ENGINE_STAGE_NN, t0, 1));
        cl_mem src = g->tmpl.mem;
        if (rotate) {
            t0 = rvs_engine_stage_begin(g);
            /* one row per template: the rotation reads each template's emulator row itself (a
             * template without rotation is copied); no separate gather pass */
            RVS_TRY(rvs_rotation_apply_rows(ctx, r->rot, src, shared_rows ? p->h_nnrow : NULL,
                                            Uth, Ut, p->h_vsini, r->lnstep, RVS_ROTATION_EPS,
                                            g->rot.mem));
            RVS_TRY(rvs_engine_stage_end(g, RVS_ENGINE_STAGE_ROTATION, t0, 1));
            src = g->rot.mem;
        }
        t0 = rvs_engine_stage_begin(g);
        RVS_TRY(rvs_spline_construct(ctx, r->grid, src, Ut, g->coef.mem));
        g->stats.templates_built += Ut;
        RVS_TRY(rvs_engine_stage_end(g, RVS_ENGINE_STAGE_SPLINE_BUILD, t0, 1));
        t0 = rvs_engine_stage_begin(g);
        RVS_TRY(rvs_spline_eval(ctx, r->grid, g->coef.mem, Ut, tidx, vel, Ea, r->lam, r->n,
                                g->model.mem));
        g->stats.spline_evals += Ea;
        RVS_TRY(rvs_engine_stage_end(g, RVS_ENGINE_STAGE_SPLINE_EVAL, t0, 1));
        cl_mem m = g->model.mem;
        if (r->ndiag > 0) {
            t0 = rvs_engine_stage_begin(g);
            RVS_TRY(rvs_resolution_apply(ctx, r->rdata, g->S, r->ndiag, r->n, m, sidx, Ea,
                                         g->res.mem));
            RVS_TRY(rvs_engine_stage_end(g, RVS_ENGINE_STAGE_RESOLUTION, t0, 1));
            m = g->res.mem;
        }
        int want_model = out->models && out->models[a];
        int want_coef = out->coeffs && out->coeffs[a];
        t0 = rvs_engine_stage_begin(g);
        RVS_TRY(rvs_chisq_eval(ctx, r->chisq, m, sidx, Ea, g->chisq.mem,
                               want_coef ? g->coeffs.mem : NULL,
                               want_model ? g->best.mem : NULL));
        RVS_TRY(rvs_engine_stage_end(g, RVS_ENGINE_STAGE_CHISQ, t0, 1));

        t0 = rvs_engine_stage_begin(g);
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
        RVS_TRY(rvs_engine_stage_end(g, RVS_ENGINE_STAGE_DOWNLOAD, t0,
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
                       double *const *coeffs, double *grad, double *gn)
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
    double t_call = rvs_engine_now();
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

    /* defaults: NaN where an arm is used (overwritten by the device), 0 / NaN rows elsewhere;
     * derivatives 0 (summed over the arms) for valid requests, NaN for the others */
    const size_t nd = RVS_ENGINE_NDERIV;
    for (size_t e = 0; e < E && grad; e++) {
        double d0 = p.tv_of_req[e] >= 0 ? 0.0 : NAN;
        for (size_t k = 0; k < nd; k++)
            grad[e * nd + k] = d0;
        for (size_t k = 0; gn && k < nd * nd; k++)
            gn[e * nd * nd + k] = d0;
    }
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
    rvs_engine_alloc_caps(g, &cap_req, &cap_tmpl);
    if (g->user_req)
        cap_req = g->user_req < cap_req ? g->user_req : cap_req;
    if (g->user_tmpl)
        cap_tmpl = g->user_tmpl < cap_tmpl ? g->user_tmpl : cap_tmpl;
    if (g->fail_req)
        cap_req = g->fail_req < cap_req ? g->fail_req : cap_req;
    if (g->fail_tmpl)
        cap_tmpl = g->fail_tmpl < cap_tmpl ? g->fail_tmpl : cap_tmpl;
    size_t per_req = rvs_engine_bytes_per_request(g, with_models, grad != NULL);
    size_t per_tmpl = rvs_engine_bytes_per_template(g, grad != NULL);
    size_t budget = rvs_engine_budget_bytes(g), resident = rvs_engine_resident_bytes(g);
    budget = budget > resident + per_req + per_tmpl ? budget - resident : per_req + per_tmpl;
    /* staging for the largest chunk this call can form */
    size_t stage_req = p.nvalid < cap_req ? p.nvalid : cap_req;
    size_t stage_tmpl = p.ntv < cap_tmpl ? p.ntv : cap_tmpl;
    RVS_TRY(plan_staging(g, &p, stage_req, stage_tmpl, with_models, grad != NULL));

    struct outputs out = {carm, models, coeffs, grad, gn};
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
            rvs_engine_release_work(g);
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
        /* an arm whose chi^2 is not finite has no derivatives */
        if (grad && !isfinite(sum)) {
            for (size_t k = 0; k < nd; k++)
                grad[e * nd + k] = NAN;
            for (size_t k = 0; gn && k < nd * nd; k++)
                gn[e * nd * nd + k] = NAN;
        }
    }
cleanup:
    plan_free(&p);
    free(arm_buf);
    g->stats.total_seconds += rvs_engine_now() - t_call;
    return status;
}

int rvs_engine_eval(struct rvs_engine *g, const struct rvs_engine_request *req, size_t E,
                    double *chisq_total, double *chisq_arm)
{
    return engine_call(g, req, E, chisq_total, chisq_arm, NULL, NULL, NULL, NULL);
}

int rvs_engine_derivs(struct rvs_engine *g, const struct rvs_engine_request *req, size_t E,
                      double *chisq_total, double *chisq_arm, double *grad, double *gn)
{
    if (!grad) {
        rvs_log(RVS_LOG_ERROR, "engine", "derivs: no gradient output");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    return engine_call(g, req, E, chisq_total, chisq_arm, NULL, NULL, grad, gn);
}

int rvs_engine_models(struct rvs_engine *g, const struct rvs_engine_request *req, size_t E,
                      double *chisq_total, double *chisq_arm, double *const *models,
                      double *const *coeffs)
{
    return engine_call(g, req, E, chisq_total, chisq_arm, models, coeffs, NULL, NULL);
}

