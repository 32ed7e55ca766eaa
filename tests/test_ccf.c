/* test_ccf.c: the fitter's CCF start on the device (src/fit/ccf.c, cl/ccf.cl) against its
 * plain-C reference, the former host implementation kept here: double-precision radix-2 FFTs
 * of each spectrum's grid input and of the bank, one inverse FFT per (spectrum, template) pair,
 * chi^2(shift), the best template and the alternatives of other temperatures (as rvspecfit's
 * fitter_ccf.fit). Both sides take the same grid inputs (rvs_fit_ccf_input) and the same bank
 * (rvs_fit_ccf_info), so the comparison isolates the device's FFTs, cross-spectra and
 * reductions.
 *
 * A mock batch from the default library (velocities -800..800 km/s, vsini 0..200, S/N 5..100,
 * continua and masked cosmics as the mock makes them) plus edge cases: arms switched off for some
 * targets, one target with no arm at all (all-zero input: every shift ties), a one-spectrum
 * batch, a batch split into several chunks of pairs, and the branch without continuum
 * normalisation. Checked, per precision (the default context: fp64 on PoCL; forced fp32):
 *   pairs: chi^2 within RVS_TOL_FP64_REL / RVS_TOL_CCF_FP32_REL of the spectrum's largest
 *          |chi^2|; the best shift index equal (fp64: all; fp32: >= 98 %, the others near-ties:
 *          the reference's chi^2 at the device's shift within twice the tolerance of its best);
 *   start: the same best template for every target (fp32: >= 90 %, the others near-ties), its
 *          velocity within 0.5 grid pixel (~18 km/s) of the reference's, the same alternative
 *          starts (fp32: >= 90 %); >= 90 % of velocities within 50 km/s of the truth (the
 *          CCF's purpose).
 * Printed: the numbers behind each check and the times of the device CCF and the reference.
 * Env: CCF_TEST_N targets (default 40). */
#include <config.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fit/fit_internal.h"
#include "mock/mock.h"
#include "testutil.h"
#include "tolerances.h"

#define C_KMS 299792.458
#define NALT 2 /* RVS_FIT_NALT of src/fit/fit.c */

/* ------------------------------------------------------------------ reference */

/* iterative radix-2 complex FFT in place, x[2k], x[2k+1] = re, im; tw[2k], tw[2k+1] =
 * cos, sin(-2 pi k / n); inverse without the 1/n */
static void fft(double *x, size_t n, const double *tw, int inverse)
{
    for (size_t i = 1, j = 0; i < n; i++) {
        size_t bit = n >> 1;
        for (; j & bit; bit >>= 1)
            j ^= bit;
        j ^= bit;
        if (i < j) {
            double a = x[2 * i], b = x[2 * i + 1];
            x[2 * i] = x[2 * j];
            x[2 * i + 1] = x[2 * j + 1];
            x[2 * j] = a;
            x[2 * j + 1] = b;
        }
    }
    for (size_t len = 2; len <= n; len <<= 1) {
        size_t half = len / 2, st = n / len;
        for (size_t i = 0; i < n; i += len)
            for (size_t k = 0; k < half; k++) {
                double wr = tw[2 * k * st], wi = inverse ? -tw[2 * k * st + 1] : tw[2 * k * st + 1];
                double *u = x + 2 * (i + k), *v = x + 2 * (i + k + half);
                double vr = v[0] * wr - v[1] * wi, vi = v[0] * wi + v[1] * wr;
                v[0] = u[0] - vr;
                v[1] = u[1] - vi;
                u[0] += vr;
                u[1] += vi;
            }
    }
}

struct ref {
    struct rvs_fit_ccf_info in;
    double *tw, *ft, *ft2; /* twiddles; bank FFTs of t' and t'^2 (nb x n complex) */
    double vmin, vmax;
    int continuum;
};

static int ref_init(struct ref *r, const struct rvs_fitter *f)
{
    rvs_fit_ccf_info(f, &r->in);
    size_t n = r->in.n, nb = r->in.nb;
    r->tw = malloc(n * sizeof(double));
    r->ft = calloc(nb * n * 2, sizeof(double));
    r->ft2 = calloc(nb * n * 2, sizeof(double));
    if (!r->tw || !r->ft || !r->ft2)
        return 1;
    for (size_t k = 0; k < n / 2; k++) {
        r->tw[2 * k] = cos(-2 * M_PI * (double)k / (double)n);
        r->tw[2 * k + 1] = sin(-2 * M_PI * (double)k / (double)n);
    }
    for (size_t j = 0; j < nb; j++) {
        double *o1 = r->ft + j * n * 2, *o2 = r->ft2 + j * n * 2;
        for (size_t g = 0; g < n; g++) {
            double v = r->in.bank_t[j * n + g];
            o1[2 * g] = v;
            o2[2 * g] = v * v;
        }
        fft(o1, n, r->tw, 0);
        fft(o2, n, r->tw, 0);
    }
    r->vmin = f->cfg.min_vel;
    r->vmax = f->cfg.max_vel;
    r->continuum = f->cfg.ccf_continuum_normalize;
    return 0;
}

static void ref_free(struct ref *r)
{
    free(r->tw);
    free(r->ft);
    free(r->ft2);
}

/* The former host CCF of the spectra list[0..n): per-pair results in res (the layout of
 * rvs_fit_ccf_pairs), every pair's chi^2 at all 2 smax + 1 shifts in curve, and the starts that
 * rvs_fit_ccf_select (the host selection rvs_fit_ccf_start uses too) makes of them. */
static int ref_ccf(const struct ref *r, const struct rvs_fitter *f, const struct rvs_prepared *b,
                   const size_t *list, size_t n, double *res, double *curve,
                   struct rvs_fit_point *start, double *vstart, struct rvs_fit_point *alt,
                   size_t nalt)
{
    size_t N = r->in.n, nb = r->in.nb, smax = r->in.smax;
    double dln = r->in.dln;
    double *dw = malloc(N * 2 * sizeof(double)), *w = malloc(N * 2 * sizeof(double));
    double *rdw = malloc(N * sizeof(double)), *rw = malloc(N * sizeof(double));
    double *x = malloc(N * 2 * sizeof(double)), *y = malloc(N * 2 * sizeof(double));
    double *chi = malloc((2 * smax + 1) * sizeof(double));
    if (!dw || !w || !rdw || !rw || !x || !y || !chi)
        return 1;
    for (size_t i = 0; i < n; i++) {
        size_t t = list[i];
        if (rvs_fit_ccf_input(f, b, t, rdw, rw) != RVS_OK)
            return 1;
        memset(dw, 0, N * 2 * sizeof(double));
        memset(w, 0, N * 2 * sizeof(double));
        for (size_t g = 0; g < N; g++) {
            dw[2 * g] = rdw[g];
            w[2 * g] = rw[g];
        }
        fft(dw, N, r->tw, 0);
        fft(w, N, r->tw, 0);
        for (size_t bi = 0; bi < nb; bi++) {
            const double *T = r->ft + bi * N * 2, *T2 = r->ft2 + bi * N * 2;
            /* the two correlations by separate transforms (the device shares one between them) */
            for (size_t q = 0; q < N; q++) {
                double ar = dw[2 * q], ai = dw[2 * q + 1], br = T[2 * q], bim = T[2 * q + 1];
                x[2 * q] = ar * br + ai * bim;
                x[2 * q + 1] = ai * br - ar * bim;
                double wr = w[2 * q], wi = w[2 * q + 1], cr = T2[2 * q], ci = T2[2 * q + 1];
                y[2 * q] = wr * cr + wi * ci;
                y[2 * q + 1] = wi * cr - wr * ci;
            }
            fft(x, N, r->tw, 1);
            fft(y, N, r->tw, 1);
            for (long s = -(long)smax; s <= (long)smax; s++) {
                size_t q = (size_t)(s < 0 ? (long)N + s : s);
                double s0 = x[2 * q] / (double)N, s1 = y[2 * q] / (double)N;
                chi[s + (long)smax] = r->continuum ? -2 * s0 + s1
                                                   : (s1 > 0 ? -s0 * s0 / s1 : HUGE_VAL);
            }
            double pbest = HUGE_VAL, psh = 0;
            long ps = -1;
            for (size_t s = 0; s <= 2 * smax; s++) {
                double vel = C_KMS * tanh(((double)s - (double)smax) * dln);
                if (vel < r->vmin || vel > r->vmax)
                    continue;
                double sh = (double)s - (double)smax;
                if (s > 0 && s < 2 * smax) {
                    double y0 = chi[s - 1], y1 = chi[s], y2 = chi[s + 1];
                    double den = y0 - 2 * y1 + y2;
                    if (den > 0)
                        sh += 0.5 * (y0 - y2) / den;
                }
                if (chi[s] < pbest) {
                    pbest = chi[s];
                    ps = (long)s;
                    psh = sh;
                }
            }
            memcpy(curve + (i * nb + bi) * (2 * smax + 1), chi, (2 * smax + 1) * sizeof(double));
            double *o = res + (i * nb + bi) * 3;
            o[0] = ps >= 0 ? pbest : HUGE_VAL;
            o[1] = (double)ps;
            o[2] = psh;
        }
    }
    rvs_fit_ccf_select(f, list, n, res, start, vstart, alt, nalt);
    free(dw);
    free(w);
    free(rdw);
    free(rw);
    free(x);
    free(y);
    free(chi);
    return 0;
}

/* ------------------------------------------------------------------ comparisons */

static int same_point(const struct rvs_fit_point *a, const struct rvs_fit_point *b)
{
    if (a->s != b->s)
        return 0;
    if (a->s < 0)
        return 1;
    return a->vsini == b->vsini && memcmp(a->th, b->th, sizeof a->th) == 0;
}

/* index of a start's template in the bank */
static size_t bank_index(const struct rvs_fit_ccf_info *in, const struct rvs_fit_point *p)
{
    for (size_t j = 0; j < in->nb; j++)
        if (in->bank_theta[j][4] == p->vsini && memcmp(in->bank_theta[j], p->th, sizeof p->th) == 0)
            return j;
    return SIZE_MAX;
}

/* Per-pair comparison (curve: the reference's chi^2 at every shift, ns per pair). */
static void compare_pairs(const char *what, const double *dev, const double *ref,
                          const double *curve, size_t ns, size_t n, size_t nb, int fp32)
{
    size_t sdiff = 0, sfar = 0, nontie = 0;
    double maxrel = 0, tol = fp32 ? RVS_TOL_CCF_FP32_REL : RVS_TOL_FP64_REL;
    for (size_t i = 0; i < n; i++) {
        double scale = 1;
        for (size_t j = 0; j < nb; j++)
            if (isfinite(ref[(i * nb + j) * 3]) && fabs(ref[(i * nb + j) * 3]) > scale)
                scale = fabs(ref[(i * nb + j) * 3]);
        for (size_t j = 0; j < nb; j++) {
            const double *d = dev + (i * nb + j) * 3, *r = ref + (i * nb + j) * 3;
            if (d[1] != r[1]) {
                /* a near-tie: the reference's chi^2 at the device's shift is as good within
                 * the tolerance */
                sdiff++;
                if (fabs(d[1] - r[1]) > 1 || d[1] < 0 || r[1] < 0)
                    sfar++;
                double at = d[1] >= 0 ? curve[(i * nb + j) * ns + (size_t)d[1]] : HUGE_VAL;
                if (!(at - r[0] <= 2 * tol * scale))
                    nontie++;
            }
            double e = isfinite(r[0]) || isfinite(d[0]) ? fabs(d[0] - r[0]) / scale : 0;
            if (!(e <= maxrel))
                maxrel = e; /* NaN stays visible */
        }
    }
    printf("  %s pairs: %zu x %zu; best shift differs for %zu (%zu by more than one pixel, %zu "
           "not a near-tie); max |chi2 - ref| / max|chi2| %.3g (tolerance %.1g)\n",
           what, n, nb, sdiff, sfar, nontie, maxrel, tol);
    CHECK(maxrel <= tol, "%s: chi^2 within %.1g of the reference (%.3g)", what, tol, maxrel);
    if (fp32)
        CHECK(sdiff * 50 <= n * nb && nontie == 0,
              "%s: best shifts equal for >= 98 %% of the pairs, the rest near-ties (%zu differ, "
              "%zu not ties)", what, sdiff, nontie);
    else
        CHECK(sdiff == 0, "%s: best shifts equal for every pair (%zu differ)", what, sdiff);
}

/* Start comparison. */
static void compare_starts(const char *what, const struct ref *r, const size_t *list, size_t n,
                           const double *ref_res, const struct rvs_fit_point *ds,
                           const struct rvs_fit_point *rs, const struct rvs_fit_point *da,
                           const struct rvs_fit_point *ra, size_t nalt, int fp32)
{
    size_t nb = r->in.nb, tdiff = 0, nontie = 0, adiff = 0;
    double maxdv = 0, tol = fp32 ? RVS_TOL_CCF_FP32_REL : RVS_TOL_FP64_REL;
    for (size_t i = 0; i < n; i++) {
        size_t t = list[i];
        double scale = 1;
        for (size_t j = 0; j < nb; j++)
            if (isfinite(ref_res[(i * nb + j) * 3]) && fabs(ref_res[(i * nb + j) * 3]) > scale)
                scale = fabs(ref_res[(i * nb + j) * 3]);
        if (same_point(&ds[t], &rs[t])) {
            double dv = fabs(atanh(ds[t].v / C_KMS) - atanh(rs[t].v / C_KMS)) / r->in.dln;
            if (!(dv <= maxdv))
                maxdv = dv;
        } else {
            tdiff++;
            size_t jd = bank_index(&r->in, &ds[t]), jr = bank_index(&r->in, &rs[t]);
            double cd = jd < nb ? ref_res[(i * nb + jd) * 3] : HUGE_VAL;
            double cr = jr < nb ? ref_res[(i * nb + jr) * 3] : HUGE_VAL;
            printf("  %s target %zu: device template %zu (ref chi2 %.6g), reference %zu (%.6g)\n",
                   what, t, jd, cd, jr, cr);
            if (!(fabs(cd - cr) <= 2 * tol * scale))
                nontie++;
        }
        for (size_t j = 0; j < nalt; j++)
            adiff += !same_point(&da[t * nalt + j], &ra[t * nalt + j]);
    }
    printf("  %s starts: %zu targets; best template differs for %zu (%zu not a near-tie); "
           "velocity of equal templates within %.4f grid pixels (%.2f km/s); alternatives "
           "differ %zu of %zu\n",
           what, n, tdiff, nontie, maxdv, maxdv * r->in.dln * C_KMS, adiff, n * nalt);
    CHECK(maxdv <= 0.5, "%s: start velocities within half a grid pixel (%.3f)", what, maxdv);
    if (fp32) {
        CHECK(tdiff * 10 <= n && nontie == 0,
              "%s: same best template for >= 90 %% of the targets, the rest near-ties (%zu "
              "differ, %zu not ties)", what, tdiff, nontie);
        CHECK(adiff * 10 <= n * nalt, "%s: alternatives equal for >= 90 %% (%zu differ)", what,
              adiff);
    } else {
        CHECK(tdiff == 0, "%s: same best template for every target (%zu differ)", what, tdiff);
        CHECK(adiff == 0, "%s: same alternatives for every target (%zu differ)", what, adiff);
    }
}

/* ------------------------------------------------------------------ one precision */

struct batch {
    struct rvs_mock *mock;
    struct rvs_prepared pr;
    const double *wave[RVS_DESI_NARMS];
    struct rvs_library_arm *arms[RVS_DESI_NARMS];
};

/* f->used as rvs_fitter_fit sets it, then the edge cases: an arm off for some targets and
 * target `none` with no arm */
static void set_used(struct rvs_fitter *f, const struct batch *bt, size_t none)
{
    size_t nt = bt->mock->n;
    for (size_t k = 0; k < f->narm; k++) {
        int a = f->engine_arm[k];
        free(f->used[k]);
        f->used[k] = calloc(nt, 1);
        for (size_t t = 0; t < nt; t++)
            f->used[k][t] = bt->pr.used[a] && bt->pr.used[a][t] && !bt->pr.bad_spectrum[t] &&
                            t != none && !(k == 0 && t % 7 == 3) && !(k == 2 && t % 11 == 5);
    }
}

static void run_precision(int fp32, int continuum, const struct batch *bt, size_t nalt,
                          size_t nmax)
{
    char what[64];
    snprintf(what, sizeof what, "%s%s", fp32 ? "fp32" : "default", continuum ? "" : " raw");
    if (fp32)
        setenv("RVSFIT_CL_FP32", "1", 1);
    else
        unsetenv("RVSFIT_CL_FP32");
    struct rvs_context *ctx = test_context(1);
    struct rvs_fit_config cfg;
    rvs_fit_config_init(&cfg);
    cfg.param_init = RVS_FIT_INIT_CCF;
    cfg.ccf_continuum_normalize = continuum;
    const size_t ndiag[RVS_DESI_NARMS] = {0, 0, 0};
    struct rvs_fitter *f = NULL;
    double t0 = rvs_fit_now();
    CHECK(rvs_fitter_create(ctx, &cfg, (struct rvs_library_arm **)bt->arms, bt->wave,
                            bt->mock->nwave, ndiag, &f) == RVS_OK,
          "%s: fitter created", what);
    if (!f) {
        rvs_context_destroy(&ctx);
        return;
    }
    printf("  %s: fitter with the CCF bank in %.2f s (%s)\n", what, rvs_fit_now() - t0,
           ctx->use_fp64 ? "fp64" : "fp32");
    size_t nt = bt->mock->n, none, *list = calloc(nt, sizeof *list), n = 0;
    for (size_t t = 0; t < nt && n < nmax; t++)
        if (!bt->pr.bad_spectrum[t])
            list[n++] = t;
    none = list[n / 2];
    set_used(f, bt, none);
    struct ref r;
    CHECK(ref_init(&r, f) == 0, "%s: reference bank", what);
    size_t nb = r.in.nb;
    size_t ns = 2 * r.in.smax + 1;
    double *dres = calloc(n * nb * 3 + 1, sizeof(double)), *rres = calloc(n * nb * 3 + 1,
                                                                          sizeof(double));
    double *curve = calloc(n * nb * ns + 1, sizeof(double));
    struct rvs_fit_point *ds = calloc(nt, sizeof *ds), *rs = calloc(nt, sizeof *rs);
    struct rvs_fit_point *da = calloc(nt * nalt + 1, sizeof *da), *ra = calloc(nt * nalt + 1,
                                                                                sizeof *ra);
    double *dv = calloc(nt, sizeof *dv), *rv = calloc(nt, sizeof *rv);

    /* device: the first call bakes the plans; the second is the time */
    CHECK(rvs_fit_ccf_pairs(f, &bt->pr, list, n, dres) == RVS_OK, "%s: device pairs", what);
    t0 = rvs_fit_now();
    CHECK(rvs_fit_ccf_start(f, &bt->pr, list, n, ds, dv, da, nalt) == RVS_OK, "%s: device start",
          what);
    double tdev = rvs_fit_now() - t0;
    t0 = rvs_fit_now();
    CHECK(ref_ccf(&r, f, &bt->pr, list, n, rres, curve, rs, rv, ra, nalt) == 0, "%s: reference", what);
    double tref = rvs_fit_now() - t0;
    printf("  %s: %zu spectra x %zu templates (%zu pairs a chunk): device CCF %.3f s, plain-C "
           "reference (one thread) %.3f s\n",
           what, n, nb, r.in.chunk, tdev, tref);
    compare_pairs(what, dres, rres, curve, ns, n, nb, fp32);
    compare_starts(what, &r, list, n, rres, ds, rs, da, ra, nalt, fp32);

    /* the target without data: with continuum normalisation every shift ties at chi^2 = 0;
     * without, chi^2 is nowhere defined (no shift, -1) */
    for (size_t i = 0; i < n; i++)
        if (list[i] == none)
            CHECK(dres[i * nb * 3] == (continuum ? 0 : HUGE_VAL) &&
                      dres[i * nb * 3 + 1] == rres[i * nb * 3 + 1] &&
                      (continuum || dres[i * nb * 3 + 1] == -1),
                  "%s: no-data target: chi^2 %g at shift %g (reference %g)", what,
                  dres[i * nb * 3], dres[i * nb * 3 + 1], rres[i * nb * 3 + 1]);
    if (continuum) {
        size_t near = 0, cnt = 0;
        for (size_t i = 0; i < n; i++) {
            size_t t = list[i];
            if (t == none)
                continue;
            cnt++;
            near += fabs(dv[t] - bt->mock->t[t].vrad) < 50;
        }
        printf("  %s: CCF velocity within 50 km/s of the truth for %zu of %zu\n", what, near, cnt);
        CHECK(near * 10 >= cnt * 9, "%s: CCF velocities near the truth (%zu of %zu)", what, near,
              cnt);

        /* a one-spectrum batch and a batch in chunks of 256 pairs give the same pairs */
        double *one = calloc(nb * 3, sizeof(double));
        size_t pick = n > 3 ? 3 : 0;
        CHECK(rvs_fit_ccf_pairs(f, &bt->pr, &list[pick], 1, one) == RVS_OK, "%s: one spectrum",
              what);
        compare_pairs("  one-spectrum batch", one, rres + pick * nb * 3, curve + pick * nb * ns, ns,
                      1, nb, fp32);
        free(one);
        rvs_fit_ccf_set_chunk(f, 256);
        double *ch = calloc(n * nb * 3, sizeof(double));
        CHECK(rvs_fit_ccf_pairs(f, &bt->pr, list, n, ch) == RVS_OK, "%s: chunked", what);
        size_t differ = 0;
        for (size_t q = 0; q < n * nb * 3; q++)
            differ += memcmp(&ch[q], &dres[q], sizeof(double)) != 0;
        printf("  %s: in chunks of 256 pairs: %zu of %zu values differ from one chunk\n", what,
               differ, n * nb * 3);
        compare_pairs("  chunked batch", ch, rres, curve, ns, n, nb, fp32);
        free(ch);
    }

    ref_free(&r);
    free(dres);
    free(rres);
    free(curve);
    free(ds);
    free(rs);
    free(da);
    free(ra);
    free(dv);
    free(rv);
    free(list);
    rvs_fitter_destroy(&f);
    rvs_context_destroy(&ctx);
}

int main(void)
{
    const char *top = getenv("top_srcdir");
    char libdir[4096];
    snprintf(libdir, sizeof libdir, "%s/data/default", top ? top : ".");
    size_t ntarg = 40;
    if (getenv("CCF_TEST_N") && atoi(getenv("CCF_TEST_N")) > 0)
        ntarg = (size_t)atoi(getenv("CCF_TEST_N"));

    struct batch bt;
    memset(&bt, 0, sizeof bt);
    static const char *setups[RVS_DESI_NARMS] = {"desi_b", "desi_r", "desi_z"};
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        if (rvs_library_open(libdir, setups[a], &bt.arms[a]) != RVS_OK) {
            fprintf(stderr, "FAIL: cannot open the default library in %s\n", libdir);
            return 1;
        }
    {
        struct rvs_context *ctx = test_context(1);
        struct rvs_mock_options mo;
        rvs_mock_options_init(&mo);
        mo.library_dir = libdir;
        mo.ntargets = ntarg;
        mo.vrad_lo = -800;
        mo.vrad_hi = 800;
        mo.vsini_hi = 200;
        mo.lsf_scale = 0;
        mo.seed = 11;
        CHECK(rvs_mock_generate(ctx, &mo, &bt.mock) == RVS_OK, "mock generated");
        rvs_context_destroy(&ctx);
        if (!bt.mock)
            return test_finish("test_ccf");
    }
    struct rvs_desi_spectra sp;
    memset(&sp, 0, sizeof sp);
    sp.nrows = sp.capacity = bt.mock->n;
    sp.arms = 7;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        sp.nwave[a] = bt.mock->nwave[a];
        sp.flux[a] = bt.mock->flux[a];
        sp.ivar[a] = bt.mock->ivar[a];
        sp.mask[a] = (uint32_t *)bt.mock->mask[a];
        bt.wave[a] = bt.mock->wave[a];
    }
    struct rvs_prepare_options po;
    rvs_prepare_options_init(&po);
    rvs_prepared_init(&bt.pr);
    CHECK(rvs_prepare_batch(&sp, bt.wave, &po, &bt.pr) == RVS_OK, "batch prepared");

    /* without continuum normalisation (raw flux: t ~1e8, t^2 ~1e16) on fewer targets */
    size_t nraw = ntarg < 16 ? ntarg : 16;
    run_precision(0, 1, &bt, NALT, ntarg);
    run_precision(1, 1, &bt, NALT, ntarg);
    run_precision(0, 0, &bt, NALT, nraw);
    run_precision(1, 0, &bt, NALT, nraw);

    for (int a = 0; a < RVS_DESI_NARMS; a++)
        rvs_library_close(&bt.arms[a]);
    rvs_prepared_free(&bt.pr);
    rvs_mock_free(&bt.mock);
    return test_finish("test_ccf");
}
