/* test_fit.c: the batched fitter (rvsfit/fit.h) end to end on a mock from the default library:
 * mock (in memory, src/mock) -> rvs_prepare_batch -> rvs_fitter_fit -> comparison with the truth.
 *
 * Checks: velocity pulls (median and robust width printed; |median| < 1.5, width < 2.5, and >
 * 0.5 from 20 targets on); the final -2 log L at the reported (v, vsini, theta) is not improved
 * by more than 0.1 by any point of a local grid of perturbations (one engine call through the
 * fitter's objective); a bad spectrum keeps BAD_SPECTRUM and NaN values; the same batch twice
 * gives identical rows; the bruteforce and CCF starts give the same answer (velocity within
 * VRAD_ERR/2, -2 log L within 1). Printed: the optimizer started at the truth (the reference
 * for "the fit reaches the maximum-likelihood point"), how many fits come within 0.1 of it, the
 * mean of -2 log L(truth) - -2 log L(fit) (6 expected) and where the truth-started optimum lies.
 *
 * The mock uses the identity resolution (lsf_scale 0), no unmasked cosmics and a flat continuum,
 * so that the fit model is exactly the generating model. Env: FIT_TEST_N targets (default 4);
 * FIT_TEST_BRUTEFORCE runs the bruteforce-start comparison (minutes on PoCL); FIT_TEST_STRICT
 * adds issue #6's criteria: TEFF/LOGG/FEH within 3 sigma for >= 75 % and the fit within 0.1 of
 * the truth-started optimum for >= 99 % (H200, 2026-11-21: 496 of 500 pass; at N = 500 the
 * local-perturbation check still finds one fit improved by 7.1); FIT_TEST_VERBOSE prints the per-target -2 log L
 * values (RVSFIT_CL_ENGINE_PROFILE, read by the fitter, the engine's stage times). */
#include <config.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mock/mock.h"
#include "fit/fit_internal.h"
#include "testutil.h"

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* robust width: 1.4826 x median absolute deviation */
static double mad_width(const double *v, size_t n)
{
    double *c = malloc(n * sizeof *c), *d = malloc(n * sizeof *d);
    memcpy(c, v, n * sizeof *c);
    double m = median(c, n);
    for (size_t i = 0; i < n; i++)
        d[i] = fabs(v[i] - m);
    double w = 1.4826 * median(d, n);
    free(c);
    free(d);
    return w;
}

static void print_profile(const char *what, const struct rvs_fitter *f)
{
    struct rvs_fit_profile p;
    rvs_fitter_profile(f, &p);
    printf("  %s profile: start %.2f s, optimizer %.2f s, posterior %.2f s, hessian %.2f s, "
           "models %.2f s; %llu engine calls, %llu evaluations (Newton calls %zu, max iterations %zu, "
           "unconverged %zu)\n",
           what, p.ccf, p.optimizer, p.posterior, p.hessian, p.models, p.engine_calls,
           p.evaluations, f->newton_calls, f->newton_iter_max, f->newton_unconverged);
}


/* Outlier clipping (src/fit/clip.c): the same three targets with and without two unflagged 40-100
 * sigma cosmics per arm. With clipping on, every unflagged cosmic pixel is left out (NPIX_CLIP
 * counts them and their neighbours) and each target's parameters stay within 1 sigma of the
 * fit of the clean spectrum; with clipping off nothing is clipped. Returns 0 when it could run. */
static void fit_mock_rows(struct rvs_context *ctx, struct rvs_library_arm *const arms[],
                          struct rvs_mock *mock, double clip, struct rvs_output_row *rows,
                          struct rvs_fitter **keep)
{
    struct rvs_desi_spectra sp;
    memset(&sp, 0, sizeof sp);
    sp.nrows = mock->n;
    sp.capacity = mock->n;
    sp.arms = 7;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        sp.nwave[a] = mock->nwave[a];
        sp.flux[a] = mock->flux[a];
        sp.ivar[a] = mock->ivar[a];
        sp.mask[a] = (uint32_t *)mock->mask[a];
    }
    struct rvs_prepare_options po;
    rvs_prepare_options_init(&po);
    struct rvs_prepared pr;
    rvs_prepared_init(&pr);
    const double *wave[RVS_DESI_NARMS] = {mock->wave[0], mock->wave[1], mock->wave[2]};
    CHECK(rvs_prepare_batch(&sp, wave, &po, &pr) == RVS_OK, "clip: batch prepared");
    struct rvs_fit_config cfg;
    rvs_fit_config_init(&cfg);
    cfg.clip_sigma = clip;
    const size_t ndiag[RVS_DESI_NARMS] = {0, 0, 0};
    struct rvs_fitter *fit = NULL;
    CHECK(rvs_fitter_create(ctx, &cfg, arms, wave, mock->nwave, ndiag, &fit) == RVS_OK,
          "clip: fitter created");
    for (size_t t = 0; t < mock->n; t++)
        rvs_output_row_init(&rows[t], (long)t);
    CHECK(fit && rvs_fitter_fit(fit, &pr, rows, NULL) == RVS_OK, "clip: fit (clip %g)", clip);
    if (keep)
        *keep = fit;
    else
        rvs_fitter_destroy(&fit);
    rvs_prepared_free(&pr);
}

static void check_clipping(struct rvs_context *ctx, struct rvs_library_arm *const arms[],
                           const char *libdir)
{
    enum { NT = 3 };
    struct rvs_mock *clean = NULL, *dirty = NULL;
    struct rvs_mock_options mo;
    rvs_mock_options_init(&mo);
    mo.library_dir = libdir;
    mo.ntargets = NT;
    mo.snr_lo = 30;
    mo.snr_hi = 60;
    mo.lsf_scale = 0;
    mo.continuum_scale = 0;
    mo.seed = 11;
    mo.unflagged_cosmics = 0;
    CHECK(rvs_mock_generate(ctx, &mo, &clean) == RVS_OK, "clip: clean mock");
    mo.unflagged_cosmics = 2;
    CHECK(rvs_mock_generate(ctx, &mo, &dirty) == RVS_OK, "clip: mock with unflagged cosmics");
    if (!clean || !dirty)
        goto done;
    struct rvs_output_row r0[NT], r1[NT], r2[NT];
    struct rvs_fitter *fit = NULL;
    fit_mock_rows(ctx, arms, clean, 5, r0, NULL);
    fit_mock_rows(ctx, arms, dirty, 5, r1, &fit);
    fit_mock_rows(ctx, arms, dirty, 0, r2, NULL);
    for (size_t t = 0; t < NT; t++) {
        size_t cosmic = 0, caught = 0;
        for (int a = 0; a < RVS_DESI_NARMS && fit; a++) {
            size_t np = dirty->nwave[a];
            for (size_t j = 0; j < np; j++)
                if (dirty->cosmic_unflagged[a][t * np + j]) {
                    cosmic++;
                    caught += fit->clip[a] && fit->clip[a][t * np + j];
                }
        }
        printf("  clip: target %zu: %zu unflagged cosmic pixels, %zu caught, NPIX_CLIP %lld (off: "
               "%lld); teff %.0f / %.0f / %.0f (clean / clipped / not), err %.0f; feh %.3f / "
               "%.3f / %.3f, err %.3f; chi2/pix %.3f / %.3f / %.3f\n",
               t, cosmic, caught, r1[t].npix_clip, r2[t].npix_clip, r0[t].teff, r1[t].teff,
               r2[t].teff, r0[t].teff_err, r0[t].feh, r1[t].feh, r2[t].feh, r0[t].feh_err,
               r0[t].chisq_tot / (double)r0[t].npix_tot, r1[t].chisq_tot / (double)r1[t].npix_tot,
               r2[t].chisq_tot / (double)r2[t].npix_tot);
        CHECK(cosmic > 0 && caught == cosmic, "clip: target %zu: %zu of %zu cosmic pixels left out",
              t, caught, cosmic);
        CHECK(r1[t].npix_clip >= (long long)cosmic && r1[t].npix_clip <= 3 * (long long)cosmic + 6,
              "clip: target %zu: NPIX_CLIP %lld for %zu cosmic pixels", t, r1[t].npix_clip, cosmic);
        CHECK(r2[t].npix_clip == 0, "clip: --clip-sigma 0 clipped %lld pixels", r2[t].npix_clip);
        CHECK(fabs(r1[t].teff - r0[t].teff) < r0[t].teff_err &&
                  fabs(r1[t].logg - r0[t].logg) < r0[t].logg_err &&
                  fabs(r1[t].feh - r0[t].feh) < r0[t].feh_err &&
                  fabs(r1[t].vrad - r0[t].vrad) < r0[t].vrad_err,
              "clip: target %zu: the clipped fit is not within 1 sigma of the clean one", t);
    }
    rvs_fitter_destroy(&fit);
done:
    rvs_mock_free(&clean);
    rvs_mock_free(&dirty);
}

/* The arms' widest training range of parameter k: the box of the errors' flat prior. */
static double prior_range(struct rvs_library_arm *const arms[RVS_DESI_NARMS], int k)
{
    double lo = HUGE_VAL, hi = -HUGE_VAL;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        const struct rvs_library_param *q = &rvs_library_content(arms[a])->params[k];
        lo = fmin(lo, q->train_min);
        hi = fmax(hi, q->train_max);
    }
    return hi - lo;
}

int main(void)
{
    const char *top = getenv("top_srcdir");
    char libdir[4096];
    snprintf(libdir, sizeof libdir, "%s/data/default", top ? top : ".");
    size_t ntarg = 4;
    if (getenv("FIT_TEST_N"))
        ntarg = (size_t)atoi(getenv("FIT_TEST_N"));

    struct rvs_context *ctx = test_context(1);
    struct rvs_library_arm *arms[RVS_DESI_NARMS] = {0};
    static const char *setups[RVS_DESI_NARMS] = {"desi_b", "desi_r", "desi_z"};
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        if (rvs_library_open(libdir, setups[a], &arms[a]) != RVS_OK) {
            fprintf(stderr, "FAIL: cannot open the default library in %s\n", libdir);
            return 1;
        }

    /* the mock: ntarg targets plus one spectrum made bad below */
    struct rvs_mock_options mo;
    rvs_mock_options_init(&mo);
    mo.library_dir = libdir;
    mo.ntargets = ntarg + 1;
    mo.snr_lo = 20;
    mo.snr_hi = 60;
    mo.vrad_lo = -300;
    mo.vrad_hi = 300;
    mo.vsini_lo = 0;
    mo.vsini_hi = 30;
    mo.lsf_scale = 0;
    mo.unflagged_cosmics = 0; /* the likelihood has no outlier model: test it where it holds */
    mo.continuum_scale = 0;   /* nor a continuum outside its basis (an exp(cubic) is not in it) */
    mo.seed = 7;
    struct rvs_mock *mock = NULL;
    CHECK(rvs_mock_generate(ctx, &mo, &mock) == RVS_OK, "mock generated");
    if (!mock)
        return test_finish("test_fit");
    size_t nt = mock->n, badt = nt - 1;
    struct rvs_desi_spectra sp;
    memset(&sp, 0, sizeof sp);
    sp.nrows = nt;
    sp.capacity = nt;
    sp.arms = 7;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        sp.nwave[a] = mock->nwave[a];
        sp.flux[a] = mock->flux[a];
        sp.ivar[a] = mock->ivar[a];
        sp.mask[a] = (uint32_t *)mock->mask[a];
        /* the bad spectrum: every pixel of every arm masked */
        for (size_t j = 0; j < mock->nwave[a]; j++)
            mock->mask[a][badt * mock->nwave[a] + j] = 2;
    }
    struct rvs_prepare_options po;
    rvs_prepare_options_init(&po);
    struct rvs_prepared pr;
    rvs_prepared_init(&pr);
    const double *wave[RVS_DESI_NARMS] = {mock->wave[0], mock->wave[1], mock->wave[2]};
    CHECK(rvs_prepare_batch(&sp, wave, &po, &pr) == RVS_OK, "batch prepared");
    CHECK(pr.bad_spectrum[badt] == 1, "the masked spectrum is flagged by the preparation");

    struct rvs_fit_config cfg;
    rvs_fit_config_init(&cfg);
    cfg.param_init = RVS_FIT_INIT_CCF;
    const size_t ndiag[RVS_DESI_NARMS] = {0, 0, 0};
    struct rvs_fitter *fit = NULL;
    CHECK(rvs_fitter_create(ctx, &cfg, arms, wave, mock->nwave, ndiag, &fit) == RVS_OK,
          "fitter created");
    if (!fit)
        return test_finish("test_fit");
    printf("  fitter max batch %zu\n", rvs_fitter_max_batch(fit));

    struct rvs_output_row *rows = calloc(nt, sizeof *rows), *rows2 = calloc(nt, sizeof *rows2);
    float *models[RVS_DESI_NARMS];
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        models[a] = calloc(nt * mock->nwave[a], sizeof(float));
    for (size_t t = 0; t < nt; t++) {
        rvs_output_row_init(&rows[t], (long)t);
        rvs_output_row_init(&rows2[t], (long)t);
    }
    double t0 = rvs_fit_now();
    CHECK(rvs_fitter_fit(fit, &pr, rows, models) == RVS_OK, "fit (CCF start)");
    printf("  CCF fit of %zu targets: %.2f s\n", nt, rvs_fit_now() - t0);
    print_profile("CCF", fit);

    /* compare with the truth */
    double *pv = calloc(nt, sizeof *pv), *pt = calloc(nt, sizeof *pt), *pg = calloc(nt, sizeof *pg),
           *pf = calloc(nt, sizeof *pf);
    size_t ng = 0, in3[3] = {0, 0, 0};
    printf("  %4s %8s %8s %7s %6s | %7s %7s %5s | %6s %6s %5s | %6s %6s %5s | %5s %5s %4s\n", "t",
           "vtrue", "vrad", "verr", "pull", "teff_t", "teff", "err", "logg_t", "logg", "err",
           "feh_t", "feh", "err", "vsi_t", "vsini", "warn");
    for (size_t t = 0; t < nt; t++) {
        const struct rvs_mock_target *m = &mock->t[t];
        const struct rvs_output_row *r = &rows[t];
        if (t == badt)
            continue;
        double pull_v = (r->vrad - m->vrad) / r->vrad_err;
        double pull_t = (r->teff - m->theta[0]) / r->teff_err;
        double pull_g = (r->logg - m->theta[1]) / r->logg_err;
        double pull_f = (r->feh - m->theta[2]) / r->feh_err;
        printf("  %4zu %8.2f %8.2f %7.3f %6.2f | %7.0f %7.0f %5.0f | %6.2f %6.2f %5.3f | %6.2f "
               "%6.2f %5.3f | %5.1f %5.1f %4lld  S/N %.0f\n",
               t, m->vrad, r->vrad, r->vrad_err, pull_v, m->theta[0], r->teff, r->teff_err,
               m->theta[1], r->logg, r->logg_err, m->theta[2], r->feh, r->feh_err, m->vsini,
               r->vsini, r->rvs_warn, m->snr);
        CHECK(isfinite(r->vrad) && isfinite(r->vrad_err) && r->vrad_err > 0,
              "target %zu: finite velocity and error", t);
        CHECK(r->npix_tot > 0 && isfinite(r->chisq_tot) && isfinite(r->chisq_c_tot),
              "target %zu: chi^2 and NPIX_TOT filled", t);
        /* issue 24: every error finite and positive, none wider than the root mean square
         * distance of a flat distribution over the training box from its end, range / sqrt 3
         * (the most a Gaussian cut to the box can give; 10 % for the sampler's noise) */
        const double errs[4] = {r->teff_err, r->logg_err, r->feh_err, r->alphafe_err};
        for (int k = 0; k < 4; k++) {
            double wide = 1.1 * prior_range(arms, k) / sqrt(3.0);
            CHECK(isfinite(errs[k]) && errs[k] > 0 && errs[k] <= wide,
                  "target %zu: parameter %d error %g, at most %g, PARAM_PRIOR %lld", t, k,
                  errs[k], wide, r->param_prior);
        }
        pv[ng] = pull_v;
        pt[ng] = pull_t;
        pg[ng] = pull_g;
        pf[ng] = pull_f;
        in3[0] += fabs(pull_t) < 3;
        in3[1] += fabs(pull_g) < 3;
        in3[2] += fabs(pull_f) < 3;
        ng++;
    }
    double w_v = mad_width(pv, ng), w_t = mad_width(pt, ng), w_g = mad_width(pg, ng),
           w_f = mad_width(pf, ng);
    double m_v = median(pv, ng), m_t = median(pt, ng), m_g = median(pg, ng), m_f = median(pf, ng);
    printf("  pulls (median, robust width): vrad %.2f %.2f, teff %.2f %.2f, logg %.2f %.2f, "
           "feh %.2f %.2f; within 3 sigma: teff %zu, logg %zu, feh %zu of %zu\n",
           m_v, w_v, m_t, w_t, m_g, w_g, m_f, w_f, in3[0], in3[1], in3[2], ng);
    /* a handful of targets cannot pin a width: the lower bound only from 20 targets on */
    CHECK(fabs(m_v) < 1.5 && w_v < 2.5 && (ng < 20 || w_v > 0.5),
          "velocity pulls: median %.2f width %.2f", m_v, w_v);
    /* the 3-sigma criterion needs more targets than make check can afford on PoCL:
     * FIT_TEST_STRICT=1 FIT_TEST_N=40 (benchmarks/accuracy does the same through the CLI) */
    for (int k = 0; k < 3 && getenv("FIT_TEST_STRICT"); k++)
        CHECK(in3[k] * 4 >= ng * 3, "parameter %d within 3 sigma for %zu of %zu", k, in3[k], ng);

    /* the bad spectrum */
    {
        const struct rvs_output_row *r = &rows[badt];
        CHECK(r->rvs_warn == RVS_WARN_BAD_SPECTRUM && isnan(r->vrad) && isnan(r->teff) &&
                  isnan(r->chisq_tot) && r->npix_tot == 0,
              "bad spectrum row: warn %lld, NaN values", r->rvs_warn);
        int zero = 1;
        for (int a = 0; a < RVS_DESI_NARMS; a++)
            for (size_t j = 0; j < mock->nwave[a]; j++)
                zero &= models[a][badt * mock->nwave[a] + j] == 0;
        CHECK(zero, "bad spectrum model is zero");
    }

    /* local optimality: perturbations of (v, vsini, theta) around each result, one call */
    {
        static const double dstep[6] = {1.0, 2.0, 30, 0.05, 0.05, 0.05};
        size_t per = 1 + 2 * 6 + 4 * 15, o = 0;
        struct rvs_fit_point *p = calloc(per * nt, sizeof *p);
        double *fv = calloc(per * nt, sizeof *fv);
        for (size_t t = 0; t < nt; t++) {
            if (t == badt)
                continue;
            const struct rvs_output_row *r = &rows[t];
            double x0[6] = {r->vrad, r->vsini, r->teff, r->logg, r->feh, r->alphafe};
            for (size_t q = 0; q < per; q++) {
                double x[6];
                memcpy(x, x0, sizeof x);
                if (q >= 1 && q < 13) {
                    size_t k = (q - 1) / 2;
                    x[k] += (q % 2 ? -1 : 1) * 0.5 * dstep[k];
                } else if (q >= 13) {
                    size_t z = (q - 13) / 4, sg = (q - 13) % 4, k = 0, l = 1;
                    for (size_t c = 0; c < z; c++)
                        if (++l == 6) {
                            k++;
                            l = k + 1;
                        }
                    x[k] += (sg & 1 ? -1 : 1) * 0.5 * dstep[k];
                    x[l] += (sg & 2 ? -1 : 1) * 0.5 * dstep[l];
                }
                p[o].s = (int)t;
                p[o].v = x[0];
                p[o].vsini = x[1];
                for (int k = 0; k < 4; k++)
                    p[o].th[k] = x[2 + k];
                o++;
            }
        }
        CHECK(rvs_fit_objective(fit, p, o, RVS_FIT_OPTIMIZER, fv, NULL) == RVS_OK,
              "perturbation grid evaluated");
        double worst = 0;
        size_t wi = 0, wq = 0;
        for (size_t i = 0; i < o / per; i++) {
            double best = fv[i * per];
            for (size_t q = 1; q < per; q++) {
                /* points outside the training hulls do not count: the fit is kept inside by the
                 * outside penalty, which is not smooth at the hull (a star at the grid's edge,
                 * e.g. 12000 K, has its optimum on it) */
                double th[4] = {p[i * per + q].th[0], p[i * per + q].th[1], p[i * per + q].th[2],
                                p[i * per + q].th[3]};
                int outside = 0;
                for (int a = 0; a < RVS_DESI_NARMS; a++)
                    outside |= rvs_library_outside(arms[a], th) > 0;
                if (outside)
                    continue;
                double d = best - fv[i * per + q];
                if (d > worst) {
                    worst = d;
                    wi = i;
                    wq = q;
                }
            }
        }
        if (worst > 0)
            printf("  local search: the largest improvement is at target %d, perturbation %zu: "
                   "v %.3f vsini %.3f teff %.1f logg %.4f feh %.4f alpha %.4f\n",
                   p[wi * per + wq].s, wq, p[wi * per + wq].v, p[wi * per + wq].vsini,
                   p[wi * per + wq].th[0], p[wi * per + wq].th[1], p[wi * per + wq].th[2],
                   p[wi * per + wq].th[3]);
        printf("  local search: largest improvement of -2 log L over %zu perturbations per "
               "target: %.4f\n",
               per - 1, worst);
        CHECK(worst <= 0.1, "no perturbation improves -2 log L by > 0.1 (%.4f)", worst);
        free(p);
        free(fv);
    }

    /* global optimality (issue #6): the optimizer started at the TRUTH finds the best value of a
     * local search around the truth; the fit from the CCF start must come within 0.1 of it */
    {
        struct rvs_fit_walker *w = calloc(nt, sizeof *w);
        struct rvs_fit_point *p = calloc(nt, sizeof *p);
        double *fv = calloc(nt, sizeof *fv);
        size_t nw = 0, nworse = 0;
        for (size_t t = 0; t < nt; t++) {
            if (t == badt)
                continue;
            const struct rvs_mock_target *m = &mock->t[t];
            double x0[6] = {m->vrad, m->vsini, m->theta[0], m->theta[1], m->theta[2],
                            m->theta[3]};
            rvs_fit_walker_init(&w[nw], (int)t, x0);
            const struct rvs_output_row *r = &rows[t];
            p[nw].s = (int)t;
            p[nw].v = r->vrad;
            p[nw].vsini = r->vsini;
            p[nw].th[0] = r->teff;
            p[nw].th[1] = r->logg;
            p[nw].th[2] = r->feh;
            p[nw].th[3] = r->alphafe;
            nw++;
        }
        CHECK(rvs_fit_newton(fit, w, nw, 60, RVS_FIT_STENCIL_FULL) == RVS_OK, "search from the truth");
        CHECK(rvs_fit_objective(fit, p, nw, RVS_FIT_OPTIMIZER, fv, NULL) == RVS_OK,
              "objective at the results");
        {
            /* -2 log L(truth) - -2 log L(fit) follows chi^2 with 6 degrees of freedom (mean 6)
             * when the fit model is the generating model and the fit is the maximum */
            struct rvs_fit_point *ptruth = calloc(nw, sizeof *ptruth);
            double *ft = calloc(nw, sizeof *ft), sum = 0;
            for (size_t i = 0; i < nw; i++) {
                const struct rvs_mock_target *m = &mock->t[w[i].s];
                ptruth[i].s = w[i].s;
                ptruth[i].v = m->vrad;
                ptruth[i].vsini = m->vsini;
                for (int k = 0; k < 4; k++)
                    ptruth[i].th[k] = m->theta[k];
            }
            CHECK(rvs_fit_objective(fit, ptruth, nw, RVS_FIT_OPTIMIZER, ft, NULL) == RVS_OK,
                  "objective at the truth");
            for (size_t i = 0; i < nw; i++) {
                sum += ft[i] - fv[i];
                if (getenv("FIT_TEST_VERBOSE"))
                    printf("  target %d: -2 log L fit %.2f truth %.2f (diff %.2f)\n", w[i].s,
                           fv[i], ft[i], ft[i] - fv[i]);
            }
            printf("  mean -2 log L(truth) - -2 log L(fit): %.2f (6 expected)\n",
                   sum / (double)(nw ? nw : 1));
            free(ptruth);
            free(ft);
        }
        for (size_t i = 0; i < nw; i++) {
            double d = fv[i] - w[i].fx;
            if (d > 0.1) {
                nworse++;
                printf("  target %d: -2 log L %.3f at the fit, %.3f from the truth (teff %.0f "
                       "logg %.3f feh %.3f alpha %.3f vsini %.2f)\n",
                       w[i].s, fv[i], w[i].fx, w[i].x[2], w[i].x[3], w[i].x[4], w[i].x[5],
                       w[i].x[1]);
            }
        }
        printf("  search from the truth: fit within 0.1 of it for %zu of %zu targets\n",
               nw - nworse, nw);
        {
            /* where the search from the truth ends, relative to the truth, in units of the
             * fit's errors: separates an optimizer bias from a model/likelihood one */
            double *dt = calloc(nw, sizeof *dt), *dg = calloc(nw, sizeof *dg);
            for (size_t i = 0; i < nw; i++) {
                const struct rvs_mock_target *m = &mock->t[w[i].s];
                dt[i] = (w[i].x[2] - m->theta[0]) / rows[w[i].s].teff_err;
                dg[i] = (w[i].x[3] - m->theta[1]) / rows[w[i].s].logg_err;
            }
            printf("  truth-start optimum - truth, in fit errors: teff median %.2f, logg median "
                   "%.2f\n", median(dt, nw), median(dg, nw));
            free(dt);
            free(dg);
        }
        if (getenv("FIT_TEST_STRICT"))
            CHECK(nworse * 100 <= nw, "fit within 0.1 of the search from the truth for >= 99%%");
        free(w);
        free(p);
        free(fv);
    }

    /* determinism: the same batch again */
    CHECK(rvs_fitter_fit(fit, &pr, rows2, NULL) == RVS_OK, "second fit");
    {
        size_t diff = 0;
        for (size_t t = 0; t < nt; t++) {
            const struct rvs_output_row *a = &rows[t], *b = &rows2[t];
            double va[] = {a->vrad, a->vrad_err, a->teff, a->teff_err, a->logg, a->feh,
                           a->alphafe, a->vsini, a->chisq_tot, a->chisq_c_tot};
            double vb[] = {b->vrad, b->vrad_err, b->teff, b->teff_err, b->logg, b->feh,
                           b->alphafe, b->vsini, b->chisq_tot, b->chisq_c_tot};
            for (size_t k = 0; k < sizeof va / sizeof va[0]; k++)
                if (memcmp(&va[k], &vb[k], sizeof(double)) != 0 && !(isnan(va[k]) && isnan(vb[k])))
                    diff++;
            if (a->rvs_warn != b->rvs_warn)
                diff++;
        }
        CHECK(diff == 0, "the same batch twice: %zu differing values", diff);
    }
    rvs_fitter_destroy(&fit);

    /* CCF start: same final answer on these clean spectra */
    if (getenv("FIT_TEST_BRUTEFORCE")) {
        cfg.param_init = RVS_FIT_INIT_BRUTEFORCE;
        CHECK(rvs_fitter_create(ctx, &cfg, arms, wave, mock->nwave, ndiag, &fit) == RVS_OK,
              "bruteforce fitter created");
        for (size_t t = 0; t < nt; t++)
            rvs_output_row_init(&rows2[t], (long)t);
        t0 = rvs_fit_now();
        CHECK(fit && rvs_fitter_fit(fit, &pr, rows2, NULL) == RVS_OK, "fit (bruteforce start)");
        printf("  bruteforce fit of %zu targets: %.2f s\n", nt, rvs_fit_now() - t0);
        if (fit)
            print_profile("bruteforce", fit);
        size_t agree = 0;
        for (size_t t = 0; t < nt; t++) {
            if (t == badt)
                continue;
            const struct rvs_output_row *a = &rows[t], *b = &rows2[t];
            int ok = fabs(a->vrad - b->vrad) < 0.5 * a->vrad_err + 0.05 &&
                     fabs(a->teff - b->teff) < 0.5 * a->teff_err + 1 &&
                     fabs(a->chisq_tot - b->chisq_tot) < 1;
            if (!ok)
                printf("  CCF vs bruteforce differ for %zu: v %.2f/%.2f teff %.0f/%.0f chi2 "
                       "%.2f/%.2f vccf %.1f/%.1f\n",
                       t, a->vrad, b->vrad, a->teff, b->teff, a->chisq_tot, b->chisq_tot,
                       a->vrad_ccf, b->vrad_ccf);
            agree += ok;
        }
        printf("  CCF and bruteforce starts agree for %zu of %zu targets\n", agree, ng);
        CHECK(agree * 10 >= ng * 9, "CCF and bruteforce agree for %zu of %zu", agree, ng);
        rvs_fitter_destroy(&fit);
    }

    check_clipping(ctx, arms, libdir);

    free(pv);
    free(pt);
    free(pg);
    free(pf);
    free(rows);
    free(rows2);
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        free(models[a]);
        rvs_library_close(&arms[a]);
    }
    rvs_prepared_free(&pr);
    rvs_mock_free(&mock);
    rvs_context_destroy(&ctx);
    return test_finish("test_fit");
}
