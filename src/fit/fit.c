/* fit.c: the batched fitter (rvsfit/fit.h): rvspecfit's DESI fit (desi_fit.proc_onespec and
 * vel_fit.process) of a batch of prepared spectra, every stage asking the evaluation engine for
 * the model evaluations of ALL active spectra of the batch in one call:
 *
 *   start      bruteforce (vel_fit.firstguess: template grid x vsini grid x velocity grid) or
 *              the CCF start (src/fit/ccf.c), then process()'s velocity scan at the start
 *   optimizer  lockstep damped Newton in (v, vsini, teff, logg, feh, alpha) on rvspecfit's
 *              chisq_func (velocity bounds, VSiniMapper clipping and penalty, outside-grid
 *              penalty), derivatives from finite-difference stencils (src/fit/optimize.c)
 *   posterior  vel_fit._minimum_sampler over spec_fit.find_best velocity grids
 *   errors     Hessian stencil at the optimum with steps matched to its curvature (one step
 *              changes -2 log L by ~1, far above the emulator's chi^2 noise), marginal errors
 *              of (teff, logg, feh, alpha), vel_fit._uncertainties_from_hessian's fall-backs
 *   final      best-fit models, proper chi^2 over good pixels, continuum-only chi^2, RVS_WARN
 *              (desi_fit.get_rvs_warn). */
#include <config.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/internal.h"
#include "fit/fit_internal.h"

/* Alternative starts per target (besides the CCF's best) and the damped Newton iterations all
 * starts make before the best one per target is chosen and carried to convergence. */
#define RVS_FIT_NALT 2
/* Spectra per batch on CPU devices (rvs_fitter_max_batch). */
#define RVS_FIT_CPU_BATCH 64
#define RVS_FIT_SCREEN_ITER 3

void rvs_fit_config_init(struct rvs_fit_config *c)
{
    memset(c, 0, sizeof *c);
    c->min_vel = -1000;
    c->max_vel = 1000;
    c->vel_step0 = 5;
    c->min_vel_step = 0.2;
    c->min_vsini = 0.01;
    c->max_vsini = 500;
    c->npoly = 10;
    c->rbf_continuum = 1;
    c->param_init = RVS_FIT_INIT_CCF;
    c->ccf_continuum_normalize = 1;
    c->second_minimizer = 1;
    c->batch_size = 0;
    c->clip_sigma = 5;
    c->scale_free_continuum = 1;
    c->exact_derivatives = 1;
}

int rvs_fitter_create(struct rvs_context *ctx, const struct rvs_fit_config *config,
                      struct rvs_library_arm *const arms[RVS_DESI_NARMS],
                      const double *const data_wave[RVS_DESI_NARMS],
                      const size_t nwave[RVS_DESI_NARMS], const size_t ndiag[RVS_DESI_NARMS],
                      struct rvs_fitter **fitter)
{
    int status = RVS_OK;
    struct rvs_fitter *f = NULL;
    struct rvs_engine_arm_config ac[RVS_DESI_NARMS];
    static const char *names[RVS_DESI_NARMS] = {"desi_b", "desi_r", "desi_z"};
    *fitter = NULL;
    if (!ctx || !config || !arms) {
        rvs_log(RVS_LOG_ERROR, "fit", "rvs_fitter_create: missing context, config or arms");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (!(config->min_vel < config->max_vel) || !(config->vel_step0 > 0) ||
        !(config->min_vel_step > 0) || !(config->max_vsini > 0) || config->npoly < 1) {
        rvs_log(RVS_LOG_ERROR, "fit",
                "invalid fit configuration: need min_vel < max_vel, vel_step0 > 0, "
                "min_vel_step > 0, max_vsini > 0, npoly >= 1");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    f = rvs_calloc(1, sizeof *f);
    if (!f)
        return RVS_ERR_NOMEM;
    f->ctx = ctx;
    f->cfg = *config;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        f->arm_engine[a] = -1;
        if (!arms[a])
            continue;
        if (!data_wave[a] || nwave[a] == 0) {
            rvs_log(RVS_LOG_ERROR, "fit", "arm %s has a library but no data wavelength grid",
                    names[a]);
            status = RVS_ERR_INVALID_ARGUMENT;
            goto cleanup;
        }
        RVS_TRY(rvs_library_check_desi(arms[a]));
        RVS_TRY(rvs_nn_create(ctx, rvs_library_nn_desc(arms[a]), &f->nn[a]));
        size_t k = f->narm;
        memset(&ac[k], 0, sizeof ac[k]);
        ac[k].name = names[a];
        ac[k].nn = f->nn[a];
        ac[k].template_wave = rvs_library_wave(arms[a]);
        ac[k].template_npix = rvs_library_npix(arms[a]);
        ac[k].template_lnstep = rvs_library_log_step(arms[a]);
        ac[k].data_wave = data_wave[a];
        ac[k].data_npix = nwave[a];
        ac[k].npoly = config->npoly;
        ac[k].rbf = config->rbf_continuum;
        ac[k].scale_free = config->scale_free_continuum;
        ac[k].ndiag = ndiag ? ndiag[a] : 0;
        f->lib[a] = arms[a];
        f->nwave[a] = nwave[a];
        f->ndiag[a] = ndiag ? ndiag[a] : 0;
        f->arm_engine[a] = (int)k;
        f->engine_arm[k] = a;
        f->data_wave[a] = rvs_malloc(nwave[a] * sizeof(double));
        if (!f->data_wave[a]) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        memcpy(f->data_wave[a], data_wave[a], nwave[a] * sizeof(double));
        f->narm++;
    }
    if (f->narm == 0) {
        rvs_log(RVS_LOG_ERROR, "fit", "rvs_fitter_create: no arm has a template library");
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    RVS_TRY(rvs_engine_create(ctx, ac, f->narm, &f->engine));
    if (getenv("RVSFIT_CL_ENGINE_PROFILE"))
        rvs_engine_set_profiling(f->engine, 1);
    /* the prior of a parameter the data do not constrain: flat over the training range (the
     * widest of the arms'), where rvsfit-cl-mock draws its stars too */
    for (int p = 0; p < 4; p++) {
        double lo = HUGE_VAL, hi = -HUGE_VAL;
        for (int a = 0; a < RVS_DESI_NARMS; a++) {
            if (!f->lib[a])
                continue;
            const struct rvs_library_param *q = &rvs_library_content(f->lib[a])->params[p];
            lo = fmin(lo, q->train_min);
            hi = fmax(hi, q->train_max);
        }
        f->prior_lo[p] = lo;
        f->prior_hi[p] = hi;
    }
    f->vcov_lo = -HUGE_VAL;
    f->vcov_hi = HUGE_VAL;
    for (size_t k = 0; k < f->narm; k++) {
        double lo, hi;
        RVS_TRY(rvs_engine_arm_velocity_range(f->engine, k, &lo, &hi));
        if (lo > f->vcov_lo)
            f->vcov_lo = lo;
        if (hi < f->vcov_hi)
            f->vcov_hi = hi;
    }
    if (f->vcov_lo > config->min_vel || f->vcov_hi < config->max_vel)
        rvs_log(RVS_LOG_WARNING, "fit",
                "the templates cover the data only for velocities %.1f..%.1f km/s, inside the "
                "fit range %.1f..%.1f: evaluations outside count as bad",
                f->vcov_lo, f->vcov_hi, config->min_vel, config->max_vel);
    if (config->param_init == RVS_FIT_INIT_CCF)
        RVS_TRY(rvs_fit_ccf_create(f));
    *fitter = f;
    f = NULL;
cleanup:
    rvs_fitter_destroy(&f);
    return status;
}

void rvs_fitter_destroy(struct rvs_fitter **fitter)
{
    if (!fitter || !*fitter)
        return;
    struct rvs_fitter *f = *fitter;
    if (f->engine && getenv("RVSFIT_CL_ENGINE_PROFILE")) {
        /* diagnostic: where the engine's time went, per stage (benchmarks/README.md) */
        struct rvs_engine_stats st;
        rvs_engine_stats_get(f->engine, &st);
        fprintf(stderr, "engine profile: %llu calls, %llu requests, %llu unique theta, %llu "
                "templates, %llu chunks, %.3f s\n", st.evals, st.requests, st.unique_theta,
                st.unique_templates, st.chunks, st.total_seconds);
        for (int k = 0; k < RVS_ENGINE_NSTAGES; k++)
            fprintf(stderr, "  %-12s %8llu calls %9.3f s (host %.3f s)\n",
                    rvs_engine_stage_name(k), st.calls[k], st.seconds[k], st.host_seconds[k]);
    }
    rvs_fit_ccf_destroy(f);
    rvs_engine_destroy(&f->engine);
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        rvs_nn_destroy(&f->nn[a]);
        free(f->data_wave[a]);
        free(f->res_f[a]);
    }
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        free(f->used[a]);
    rvs_fit_clip_free(f);
    free(f->badchi);
    free(f->req);
    free(f->chi);
    free(f->chi_arm);
    free(f->grad);
    free(f->gn);
    free(f);
    *fitter = NULL;
}

size_t rvs_fitter_max_batch(const struct rvs_fitter *f)
{
    if (f->cfg.batch_size > 0)
        return f->cfg.batch_size;
    /* The widest per-spectrum call is the optimizer's screening (RVS_FIT_NALT + 1 starts x 28
     * stencil points = 84 requests, of which 3 x 21 = 63 distinct (theta, vsini) templates) or
     * the posterior's first grid (~100 requests, one template), hence 128 requests; the
     * bruteforce start's scans are wider but chunked by the engine anyway. Counting one template
     * per request made H100 batches of ~365 spectra that used a third of the budget
     * (RESULTS.md: batches of 700 were 5 % faster). */
    /* CPU devices: the engine's work space is a fixed budget (src/engine/engine.c), which the
     * passes are cut to fit, so the batch only needs enough spectra per call to amortise each
     * call's fixed cost; its memory is the resident data (~0.5 MB a spectrum) and the host's
     * per-batch arrays. 64 was faster than one batch of 100 (31.7 s against 38 s, PoCL). */
    if (f->ctx->caps.type & CL_DEVICE_TYPE_CPU)
        return RVS_FIT_CPU_BATCH;
    int brute = f->cfg.param_init == RVS_FIT_INIT_BRUTEFORCE;
    size_t per = brute ? (size_t)((f->cfg.max_vel - f->cfg.min_vel) / f->cfg.vel_step0) + 2 : 128;
    size_t tmpl = brute ? 0 : (RVS_FIT_NALT + 1) * RVS_FIT_STENCIL_TEMPLATES;
    size_t m = rvs_engine_max_batch(f->engine, per, tmpl);
    return m < 1 ? 1 : m;
}

void rvs_fitter_profile(const struct rvs_fitter *f, struct rvs_fit_profile *p)
{
    *p = f->prof;
}

/* ------------------------------------------------------------------------------------------ */

/* From k walkers per target (n targets, target i's at w[i k ..]) the `keep` lowest, best first,
 * into out[i keep ..]; a partial selection sort (k is a handful). */
static void keep_best(struct rvs_fit_walker *w, size_t n, size_t k, size_t keep,
                      struct rvs_fit_walker *out)
{
    for (size_t i = 0; i < n; i++) {
        struct rvs_fit_walker *c = w + i * k;
        for (size_t r = 0; r < keep; r++) {
            size_t jb = r;
            for (size_t j = r + 1; j < k; j++)
                if (c[j].fx < c[jb].fx)
                    jb = j;
            struct rvs_fit_walker tmp = c[r];
            c[r] = c[jb];
            c[jb] = tmp;
            out[i * keep + r] = c[r];
        }
    }
}

/* vsini is the least constrained parameter: near 0 the objective is flat to fourth order in vsini
 * (rotation changes a profile by ~vsini^2) and in hot stars, whose Balmer lines are much wider
 * than the rotation kernel, it is nearly flat over tens of km/s; the Newton iteration then stops
 * a few tenths of -2 log L short of the optimum. Candidates along vsini (one engine call for the
 * batch: fractions of a small vsini, offsets up to +24 km/s) move a walker to the best of them, and
 * the moved walkers iterate again from there. */
#define RVS_FIT_POLISH_VSINI_SMALL 6.0
#define RVS_FIT_POLISH_ITER 8
static int polish_vsini(struct rvs_fitter *f, struct rvs_fit_walker *w, size_t nw)
{
    static const double frac[] = {0, 0.25, 0.5, 0.75}, offs[] = {3, 6, 12, 24};
    enum { NF = sizeof frac / sizeof frac[0], NO = sizeof offs / sizeof offs[0], NC = NF + NO };
    int status = RVS_OK;
    struct rvs_fit_point *p = rvs_malloc((nw * NC + 1) * sizeof *p);
    size_t *who = rvs_malloc((nw + 1) * sizeof *who);
    double *fv = rvs_malloc((nw * NC + 1) * sizeof *fv);
    struct rvs_fit_walker *moved = rvs_malloc((nw + 1) * sizeof *moved);
    size_t *mi = rvs_malloc((nw + 1) * sizeof *mi);
    size_t m = 0, nm = 0;
    if (!p || !who || !fv || !moved || !mi) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < nw; i++) {
        if (w[i].failed || !isfinite(w[i].fx))
            continue;
        double x1 = fmax(w[i].x[1], 0);
        for (size_t q = 0; q < NC; q++) {
            struct rvs_fit_point *c = &p[m * NC + q];
            c->s = w[i].s;
            c->v = w[i].x[0];
            if (q < NF)
                c->vsini = x1 <= RVS_FIT_POLISH_VSINI_SMALL ? frac[q] * x1 : x1;
            else
                c->vsini = fmin(x1 + offs[q - NF], f->cfg.max_vsini);
            for (int k = 0; k < 4; k++)
                c->th[k] = w[i].x[2 + k];
        }
        who[m++] = i;
    }
    if (m > 0) {
        RVS_TRY(rvs_fit_objective(f, p, m * NC, RVS_FIT_OPTIMIZER, fv, NULL));
        for (size_t j = 0; j < m; j++) {
            struct rvs_fit_walker *s = &w[who[j]];
            size_t qb = NC;
            double fb = s->fx - 0.01;
            for (size_t q = 0; q < NC; q++)
                if (fv[j * NC + q] < fb) {
                    fb = fv[j * NC + q];
                    qb = q;
                }
            if (qb == NC)
                continue;
            if (qb < NF) { /* towards 0: the flat bottom, no need to iterate again */
                s->fx = fb;
                s->x[1] = p[j * NC + qb].vsini;
                continue;
            }
            double x0[RVS_FIT_NDIM];
            memcpy(x0, s->x, sizeof x0);
            x0[1] = p[j * NC + qb].vsini;
            rvs_fit_walker_init(&moved[nm], s->s, x0);
            mi[nm++] = who[j];
        }
    }
    if (nm > 0) {
        RVS_TRY(rvs_fit_newton(f, moved, nm, RVS_FIT_POLISH_ITER, RVS_FIT_STENCIL_FULL));
        for (size_t j = 0; j < nm; j++)
            if (!moved[j].failed && moved[j].fx < w[mi[j]].fx) {
                size_t it = w[mi[j]].iter;
                w[mi[j]] = moved[j];
                w[mi[j]].iter += it;
            }
    }
cleanup:
    free(p);
    free(who);
    free(fv);
    free(moved);
    free(mi);
    return status;
}

/* Start of a fitter stage: its wall time and model evaluations go to one --profile row. */
struct stage_mark {
    double t, engine;
    unsigned long long evaluations;
};

static struct stage_mark stage_begin(const struct rvs_fitter *f)
{
    struct stage_mark m = {rvs_fit_now(), f->prof.engine, f->prof.evaluations};
    return m;
}

static void stage_end(const struct rvs_fitter *f, struct stage_mark m, double *seconds,
                      double *engine, unsigned long long *evaluations)
{
    *seconds += rvs_fit_now() - m.t;
    *engine += f->prof.engine - m.engine;
    *evaluations += f->prof.evaluations - m.evaluations;
}

static void nan_row(struct rvs_output_row *r)
{
    r->vrad = r->vrad_err = r->vrad_skew = r->vrad_kurt = r->vsini = NAN;
    r->logg = r->logg_err = r->teff = r->teff_err = r->feh = r->feh_err = NAN;
    r->alphafe = r->alphafe_err = r->chisq_tot = r->chisq_c_tot = r->vrad_ccf = NAN;
    r->npix_tot = 0;
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        r->chisq[a] = r->chisq_c[a] = NAN;
    r->rvs_warn = RVS_WARN_BAD_SPECTRUM;
}

static int edge(double v, double lo, double hi, double thr)
{
    return v < lo + thr || v > hi - thr;
}

int rvs_fitter_fit(struct rvs_fitter *f, const struct rvs_prepared *b,
                   struct rvs_output_row *rows, float *const models[RVS_DESI_NARMS])
{
    int status = RVS_OK;
    size_t nt = b->ntargets, n = 0;
    size_t *list = NULL;
    struct rvs_fit_point *start = NULL, *best = NULL;
    double *vstart = NULL;
    struct rvs_fit_walker *wk = NULL, *wall = NULL, *wk2 = NULL;
    struct rvs_fit_point *alt = NULL;
    double *sigv = NULL;
    const size_t nalt = f->cfg.param_init == RVS_FIT_INIT_CCF ? RVS_FIT_NALT : 0;
    const size_t K = 1 + nalt;
    struct rvs_fit_scan *sr = NULL, *post = NULL;
    double (*perr)[4] = NULL;
    double (*pcov)[RVS_FIT_NDIM][RVS_FIT_NDIM] = NULL;
    long long *pbits = NULL;
    struct rvs_fit_point *popt = NULL;
    int *badh = NULL;
    struct rvs_engine_request *mreq = NULL;
    double *mchi = NULL, *marm = NULL, *mod[RVS_DESI_NARMS] = {0}, *cmod[RVS_DESI_NARMS] = {0};
    double *cchi = NULL;
    const double *specp[RVS_DESI_NARMS] = {0}, *especp[RVS_DESI_NARMS] = {0};
    const float *resp[RVS_DESI_NARMS] = {0};
    unsigned char *arm_used = NULL;
    struct stage_mark mark;

    if (!f || !b || !rows)
        return RVS_ERR_INVALID_ARGUMENT;
    if (nt == 0)
        return RVS_OK;
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        if (f->arm_engine[a] >= 0 && (b->arms & (1u << a)) && b->nwave[a] != f->nwave[a]) {
            rvs_log(RVS_LOG_ERROR, "fit", "batch arm %d has %zu pixels, the fitter %zu", a,
                    b->nwave[a], f->nwave[a]);
            return RVS_ERR_INVALID_ARGUMENT;
        }
    /* upload the batch */
    arm_used = rvs_calloc(nt * f->narm, 1);
    list = rvs_malloc(nt * sizeof *list);
    free(f->badchi);
    f->badchi = rvs_malloc(nt * sizeof(double));
    for (size_t k = 0; k < f->narm; k++) {
        free(f->used[k]);
        f->used[k] = rvs_calloc(nt, 1);
    }
    if (!arm_used || !list || !f->badchi) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t k = 0; k < f->narm; k++) {
        int a = f->engine_arm[k];
        if (!f->used[k]) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        if (!(b->arms & (1u << a)) || !b->spec[a])
            continue;
        specp[k] = b->spec[a];
        especp[k] = b->espec[a];
        if (f->ndiag[a] > 0) {
            if (!b->with_resolution || !b->resolution[a] || b->ndiag[a] != f->ndiag[a]) {
                rvs_log(RVS_LOG_ERROR, "fit",
                        "the fitter uses resolution matrices (%zu diagonals) but the batch "
                        "has none for arm %d",
                        f->ndiag[a], a);
                status = RVS_ERR_INVALID_ARGUMENT;
                goto cleanup;
            }
            size_t cnt = nt * f->ndiag[a] * f->nwave[a];
            float *r = realloc(f->res_f[a], cnt * sizeof(float));
            if (!r) {
                status = RVS_ERR_NOMEM;
                goto cleanup;
            }
            f->res_f[a] = r;
            for (size_t i = 0; i < cnt; i++)
                r[i] = (float)b->resolution[a][i];
            resp[k] = r;
        }
        for (size_t t = 0; t < nt; t++)
            if (b->used[a] && b->used[a][t] && !b->bad_spectrum[t]) {
                arm_used[t * f->narm + k] = 1;
                f->used[k][t] = 1;
            }
    }
    for (size_t t = 0; t < nt; t++) {
        size_t np = 0;
        for (size_t k = 0; k < f->narm; k++)
            if (f->used[k][t])
                np += f->nwave[f->engine_arm[k]];
        /* spec_fit.get_chisq: badchi = 10 x the pixels of all the spectrum's datasets */
        f->badchi[t] = 10.0 * (double)np;
        if (b->bad_spectrum[t] || np == 0) {
            nan_row(&rows[t]);
            /* no arm left because the resolution matrices were bad: say so too (the warning
             * of src/desi/prepare.c names bit 128) */
            if (b->dropped_arms && b->dropped_arms[t])
                rows[t].rvs_warn |= RVS_WARN_BAD_ARM;
        } else
            list[n++] = t;
    }
    int anyres = 0;
    for (size_t k = 0; k < f->narm; k++)
        anyres |= resp[k] != NULL;
    double upload_start = rvs_fit_now();
    RVS_TRY(rvs_engine_set_data(f->engine, nt, specp, especp, anyres ? resp : NULL, arm_used));
    f->prof.upload += rvs_fit_now() - upload_start;
    start = rvs_calloc(nt, sizeof *start);
    best = rvs_calloc(nt, sizeof *best);
    vstart = rvs_calloc(nt, sizeof *vstart);
    wk = rvs_calloc(n + 1, sizeof *wk);
    wall = rvs_calloc(n * K + 1, sizeof *wall);
    wk2 = rvs_calloc(2 * n + 1, sizeof *wk2);
    alt = rvs_calloc(nt * nalt + 1, sizeof *alt);
    sigv = rvs_calloc(n + 1, sizeof *sigv);
    sr = rvs_calloc(n + 1, sizeof *sr);
    post = rvs_calloc(n + 1, sizeof *post);
    perr = rvs_calloc(n + 1, sizeof *perr);
    pcov = rvs_calloc(n + 1, sizeof *pcov);
    pbits = rvs_calloc(n + 1, sizeof *pbits);
    popt = rvs_calloc(n + 1, sizeof *popt);
    badh = rvs_calloc(n + 1, sizeof *badh);
    if (!start || !best || !vstart || !wk || !wall || !wk2 || !alt || !sigv || !sr || !post ||
        !perr || !pcov || !pbits || !popt || !badh) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    if (n > 0) {
        /* 1. start */
        mark = stage_begin(f);
        if (f->cfg.param_init == RVS_FIT_INIT_CCF)
            RVS_TRY(rvs_fit_ccf_start(f, b, list, n, start, vstart, alt, nalt));
        else
            RVS_TRY(rvs_fit_start_bruteforce(f, list, n, start, vstart));
        /* vel_fit.process: a velocity scan at the start template picks the starting velocity */
        RVS_TRY(rvs_fit_start_scan(f, list, n, start, f->cfg.param_init == RVS_FIT_INIT_CCF ? vstart : NULL,
                           RVS_FIT_START_SCAN_HALFWIDTH, sr));
        stage_end(f, mark, &f->prof.ccf, &f->prof.engine_ccf, &f->prof.eval_ccf);

        /* 2. optimizer */
        mark = stage_begin(f);
        /* every start walks a few damped Newton iterations; the best walker of each target
         * then goes on to convergence */
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < K; j++) {
                const struct rvs_fit_point *s =
                    j == 0 ? &start[list[i]] : &alt[list[i] * nalt + j - 1];
                struct rvs_fit_walker *w = &wall[i * K + j];
                double x0[RVS_FIT_NDIM] = {sr[i].best_vel,
                                           fmin(fmax(s->vsini, 0), f->cfg.max_vsini),
                                           s->th[0], s->th[1], s->th[2], s->th[3]};
                rvs_fit_walker_init(w, (int)list[i], x0);
                if (j > 0 && s->s < 0)
                    w->done = 1; /* no alternative: fx stays +inf */
            }
        if (f->cfg.exact_derivatives) {
            /* with exact derivatives a step costs one evaluation: every start walks to its
             * optimum unless its own quadratic model says it cannot beat the target's leading
             * start (then it stops), and the best optimum of each target wins. (Successive
             * halving after 3 Gauss-Newton steps picked the wrong temperature basin for 3 of
             * 100 realistic targets, by up to 390 in -2 log L: the exact steps are long, and
             * after three of them a start in a shallow wrong basin can lead one in the deep
             * right one.) */
            RVS_TRY(rvs_fit_gauss_newton(f, wall, n * K, K, 60));
            keep_best(wall, n, K, 1, wk);
        } else {
            /* the stencils, successive halving: all K starts walk RVS_FIT_SCREEN_ITER
             * iterations, the best two per target RVS_FIT_SCREEN_ITER more (a start that lost an
             * iteration to a rejected step, typically the hot one of a hot/cool metal-poor pair,
             * catches up here), then the best one goes on to convergence */
            RVS_TRY(rvs_fit_newton(f, wall, n * K, K > 1 ? RVS_FIT_SCREEN_ITER : 60,
                                   K > 1 ? RVS_FIT_STENCIL_DIAG : RVS_FIT_STENCIL_FULL));
            if (K > 2) {
                keep_best(wall, n, K, 2, wk2);
                RVS_TRY(rvs_fit_newton(f, wk2, 2 * n, RVS_FIT_SCREEN_ITER,
                                       RVS_FIT_STENCIL_DIAG));
                keep_best(wk2, n, 2, 1, wk);
            } else
                keep_best(wall, n, K, 1, wk);
        }
        RVS_TRY(rvs_fit_newton(f, wk, n, 60, RVS_FIT_STENCIL_FULL));
        RVS_TRY(polish_vsini(f, wk, n));
        /* pixels the mask missed: left out, and the targets that had them refitted */
        RVS_TRY(rvs_fit_clip_outliers(f, b, list, n, wk, specp));
        for (size_t i = 0; i < n; i++) {
            struct rvs_fit_point *p = &best[list[i]];
            p->s = (int)list[i];
            p->v = wk[i].x[0];
            p->vsini = fmin(fmax(wk[i].x[1], 0), f->cfg.max_vsini);
            for (int k = 0; k < 4; k++)
                p->th[k] = wk[i].x[2 + k];
            if (wk[i].iter > f->newton_iter_max)
                f->newton_iter_max = wk[i].iter;
            if (!wk[i].converged)
                f->newton_unconverged++;
        }
        stage_end(f, mark, &f->prof.optimizer, &f->prof.engine_optimizer, &f->prof.eval_optimizer);

        /* 3. Hessian errors (at the optimizer's velocity, as vel_fit.process) */
        mark = stage_begin(f);
        RVS_TRY(rvs_fit_param_errors(f, wk, n, perr, pcov, badh));
        for (size_t i = 0; i < n; i++)
            popt[i] = best[list[i]];
        RVS_TRY(rvs_fit_prior_errors(f, popt, n, pcov, perr, pbits));
        stage_end(f, mark, &f->prof.hessian, &f->prof.engine_hessian, &f->prof.eval_hessian);

        /* 4. velocity posterior at the optimum's theta, vsini; its first grid from the
         * velocity curvature of the Hessian stencil (sigma of v at fixed theta, vsini) */
        mark = stage_begin(f);
        for (size_t i = 0; i < n; i++) {
            double hvv = wk[i].H[0][0];
            sigv[i] = hvv > 0 && isfinite(hvv) ? sqrt(2 / hvv) : NAN;
        }
        RVS_TRY(rvs_fit_posterior(f, list, n, best, sigv, post));
        stage_end(f, mark, &f->prof.posterior, &f->prof.engine_posterior, &f->prof.eval_posterior);
    }

    /* 5. final models at the posterior velocity, chi^2, continuum, flags */
    mark = stage_begin(f);
    {
        size_t E = n ? n : 1;
        mreq = rvs_calloc(E, sizeof *mreq);
        mchi = rvs_malloc(E * sizeof *mchi);
        marm = rvs_malloc(E * f->narm * sizeof *marm);
        cchi = rvs_malloc(nt * f->narm * sizeof *cchi);
        if (!mreq || !mchi || !marm || !cchi) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        for (size_t k = 0; k < f->narm; k++) {
            size_t np = f->nwave[f->engine_arm[k]];
            mod[k] = rvs_malloc(E * np * sizeof(double));
            cmod[k] = rvs_malloc(nt * np * sizeof(double));
            if (!mod[k] || !cmod[k]) {
                status = RVS_ERR_NOMEM;
                goto cleanup;
            }
        }
        for (size_t i = 0; i < n; i++) {
            const struct rvs_fit_point *p = &best[list[i]];
            mreq[i].spectrum = p->s;
            mreq[i].teff = p->th[0];
            mreq[i].logg = p->th[1];
            mreq[i].feh = p->th[2];
            mreq[i].alpha = p->th[3];
            mreq[i].vsini = p->vsini;
            mreq[i].vrad = post[i].best_vel;
        }
        double t0 = rvs_fit_now();
        if (n > 0) {
            RVS_TRY(rvs_engine_models(f->engine, mreq, n, mchi, marm, mod, NULL));
            f->prof.engine_calls++;
            f->prof.evaluations += n;
        }
        RVS_TRY(rvs_engine_continuum(f->engine, cchi, cmod, NULL));
        f->prof.engine_calls++;
        f->prof.engine += rvs_fit_now() - t0;
    }
    for (size_t i = 0; i < n; i++) {
        size_t t = list[i];
        struct rvs_output_row *r = &rows[t];
        const struct rvs_fit_point *p = &best[t];
        r->vrad = post[i].best_vel;
        r->vrad_err = post[i].err;
        r->vrad_skew = post[i].skew;
        r->vrad_kurt = post[i].kurt;
        r->vsini = p->vsini;
        r->teff = p->th[0];
        r->logg = p->th[1];
        r->feh = p->th[2];
        r->alphafe = p->th[3];
        r->param_prior = pbits[i];
        r->teff_err = perr[i][0];
        r->logg_err = perr[i][1];
        r->feh_err = perr[i][2];
        r->alphafe_err = perr[i][3];
        r->vrad_ccf = vstart[t];
        r->npix_clip = f->nclip ? (long long)f->nclip[t] : 0;
        r->chisq_tot = 0;
        r->chisq_c_tot = 0;
        r->npix_tot = 0;
        for (int a = 0; a < RVS_DESI_NARMS; a++)
            r->chisq[a] = r->chisq_c[a] = NAN;
        for (size_t k = 0; k < f->narm; k++) {
            int a = f->engine_arm[k];
            if (!f->used[k][t])
                continue;
            size_t np = f->nwave[a];
            const double *sp = b->spec[a] + t * np, *es = b->espec[a] + t * np;
            const unsigned char *bd = b->bad[a] + t * np;
            const unsigned char *cl = f->clip[k] ? f->clip[k] + t * np : NULL;
            const double *m = mod[k] + i * np, *cm = cmod[k] + t * np;
            double c = 0, cc = 0;
            long long npx = 0;
            for (size_t j = 0; j < np; j++) {
                if (bd[j] || (cl && cl[j]))
                    continue;
                double d = (m[j] - sp[j]) / es[j], dc = (cm[j] - sp[j]) / es[j];
                c += d * d;
                cc += dc * dc;
                npx++;
            }
            r->chisq[a] = c;
            r->chisq_c[a] = cc;
            r->chisq_tot += c;
            r->chisq_c_tot += cc;
            r->npix_tot += npx;
        }
        /* desi_fit.get_rvs_warn */
        long long w = 0;
        if (r->chisq_c_tot - r->chisq_tot < 50)
            w |= RVS_WARN_CHISQ;
        if (edge(r->vrad, f->cfg.min_vel, f->cfg.max_vel, 5))
            w |= RVS_WARN_RV;
        if (r->vsini > 100)
            w |= RVS_WARN_VSINI;
        if (r->vrad_err > 100)
            w |= RVS_WARN_RVERR;
        if (badh[i])
            w |= RVS_WARN_BAD_HESSIAN;
        if (b->dropped_arms && b->dropped_arms[t])
            w |= RVS_WARN_BAD_ARM;
        if (edge(r->teff, 2300, 15000, 10) || edge(r->feh, -4, 1, 0.01) ||
            edge(r->logg, -0.5, 6.5, 0.01))
            w |= RVS_WARN_PARAM;
        r->rvs_warn = w;
    }
    /* models in data units: zeros for bad rows and arms a row lacks */
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        if (!models || !models[a] || f->arm_engine[a] < 0)
            continue;
        size_t k = (size_t)f->arm_engine[a], np = f->nwave[a];
        memset(models[a], 0, nt * np * sizeof(float));
        for (size_t i = 0; i < n; i++) {
            size_t t = list[i];
            if (!f->used[k][t])
                continue;
            for (size_t j = 0; j < np; j++)
                models[a][t * np + j] = (float)mod[k][i * np + j];
        }
    }
    stage_end(f, mark, &f->prof.models, &f->prof.engine_models, &f->prof.eval_models);
cleanup:
    free(list);
    free(arm_used);
    free(start);
    free(best);
    free(vstart);
    free(wk);
    free(wall);
    free(wk2);
    free(alt);
    free(sigv);
    free(sr);
    free(post);
    free(perr);
    free(pcov);
    free(pbits);
    free(popt);
    free(badh);
    free(mreq);
    free(mchi);
    free(marm);
    free(cchi);
    for (int k = 0; k < RVS_DESI_NARMS; k++) {
        free(mod[k]);
        free(cmod[k]);
    }
    return status;
}
