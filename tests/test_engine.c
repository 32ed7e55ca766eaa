/* test_engine.c: the evaluation engine against the plain-C reference pipeline of
 * tests/routines/engine.c (NN rows from rvs_nn_forward, rotation by direct convolution, the
 * spliner.c port, rvs_resolution_apply_host, long-double get_chisq0), in fp64 and forced fp32,
 * plus the engine's own promises: deduplication really shares work (counters), chunked passes
 * and the allocation-failure retry give the results of one big pass, missing arms contribute
 * nothing, non-finite chi^2 stays confined to its request, bad calls are refused.
 * Tolerances (tests/tolerances.h): chi^2 per arm and total RVS_TOL_ENGINE_FP64_REL relative
 * (fp64) or RVS_TOL_ENGINE_FP32_ABS absolute (forced fp32); best-fit models and coefficients
 * (model space) RVS_TOL_FP64_REL / RVS_TOL_FP32_REL; the same requests in other batches
 * (chunked passes, allocation-failure retries) RVS_TOL_ENGINE_REBATCH_REL relative (plus
 * RVS_TOL_ENGINE_FP32_ABS in fp32). rvs_engine_derivs (issue 18): its chi^2 is
 * rvs_engine_eval's, its gradient a central difference of rvs_engine_eval within
 * RVS_TOL_ENGINE_GRAD of the gradient's own scale, its Gauss-Newton matrix symmetric positive
 * semi-definite. The whole test takes ~15 s on PoCL here. */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "routine.h"
#include "testutil.h"
#include "tolerances.h"

struct rvs_engine_routine_errors {
    double chisq, model, coeff;
    size_t checked, nonfinite_ref, nonfinite_mismatch, missing_nonzero;
    size_t unique_theta, unique_templates;
};
extern struct rvs_engine_routine_errors rvs_engine_routine_last;
extern const struct rvs_routine rvs_routine_engine;
struct rvs_engine *rvs_engine_routine_engine(void *state);
void rvs_engine_routine_results(void *state, size_t *E, size_t *narm, const double **total,
                                const double **arm);
const struct rvs_engine_request *rvs_engine_routine_requests(void *state);
int rvs_engine_routine_check_continuum(void *state, double *err_chisq, double *err_model);
int rvs_engine_routine_check_set_errors(void *state, double *diff);

#define ENG_RES (1 << 12)
#define ENG_TWOARMS (1 << 13)
#define ENG_MISSING (1 << 14)
#define ENG_OUTSIDE (1 << 15)
#define ENG_VSINI (1 << 16)
#define ENG_SHARED (1 << 17)
#define ENG_MODELS (1 << 18)
#define ENG_BN (1 << 19)
#define ENG_TWOVSINI (1 << 20)

#define C(E, W, S, P) {.batch = (E), .n = 0, .m = (W), .k = (S), .param = (P)}

static const struct rvs_routine_args cases[] = {
    C(1, 16, 1, 1 | ENG_TWOARMS),                      /* one request, two arms */
    C(7, 16, 7, 1 | ENG_RES | ENG_VSINI),              /* one request per spectrum */
    C(280, 24, 7, 40 | ENG_RES | ENG_VSINI),           /* 40-velocity scans, resolution */
    C(400, 16, 1, 400 | ENG_VSINI),                    /* one theta, 400 velocities */
    C(64, 20, 8, 1 | ENG_TWOVSINI | ENG_BN),           /* theta pairs with vsini 0 and 50 */
    C(300, 16, 12, 3 | ENG_MODELS | ENG_RES | ENG_MISSING | ENG_BN), /* models, coefficients */
    C(2000, 32, 40, 5 | ENG_VSINI | ENG_SHARED | ENG_MISSING | ENG_OUTSIDE | ENG_RES),
    C(1999, 16, 33, 7 | ENG_VSINI | ENG_OUTSIDE | ENG_TWOARMS), /* no resolution, 2 arms */
};

static double tol_chisq(struct rvs_context *ctx)
{
    return ctx->use_fp64 ? RVS_TOL_ENGINE_FP64_REL : RVS_TOL_ENGINE_FP32_ABS;
}

static void run_cases(struct rvs_context *ctx)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double err = rvs_routine_check(ctx, &rvs_routine_engine, &cases[i]);
        struct rvs_engine_routine_errors *r = &rvs_engine_routine_last;
        CHECK(err >= 0 && err <= tol_chisq(ctx), "case %zu: chi^2 error %.3e > %.1e", i, err,
              tol_chisq(ctx));
        CHECK(r->nonfinite_mismatch == 0 && r->missing_nonzero == 0,
              "case %zu: %zu non-finite mismatches, %zu missing arms with chi^2 != 0", i,
              r->nonfinite_mismatch, r->missing_nonzero);
        if ((int)cases[i].param & ENG_OUTSIDE)
            CHECK(r->nonfinite_ref > 0 && r->nonfinite_ref < r->checked,
                  "case %zu: %zu of %zu requests outside the template", i, r->nonfinite_ref,
                  r->checked);
        if ((int)cases[i].param & ENG_MODELS) {
            double tm = ctx->use_fp64 ? RVS_TOL_FP64_REL : RVS_TOL_FP32_REL;
            printf("    models: max rel error %.3e, coefficients (model space) %.3e\n",
                   r->model, r->coeff);
            CHECK(r->model <= tm && r->coeff <= tm, "case %zu: model error %.3e, coefficient "
                  "error %.3e > %.1e", i, r->model, r->coeff, tm);
        }
    }
}

/* Runs one scenario through setup + run and hands the state to `check`. */
static void with_scenario(struct rvs_context *ctx, const struct rvs_routine_args *args,
                          void (*check)(struct rvs_context *, void *, const char *),
                          const char *label)
{
    void *state = NULL;
    struct rvs_routine_args a = *args;
    a.real_size = rvs_context_real_size(ctx);
    int status = rvs_routine_engine.setup(ctx, &a, &state);
    CHECK(status == RVS_OK, "%s: setup: %s", label, rvs_strerror(status));
    if (status == RVS_OK)
        check(ctx, state, label);
    if (state)
        rvs_routine_engine.destroy(state);
}

/* One theta per spectrum (vsini 0 and 5 km/s), 400 velocities each: every arm evaluates the
 * NN and builds the spline once per theta, and evaluates 800 models. */
static void check_scan_sharing(struct rvs_context *ctx, void *state, const char *label)
{
    struct rvs_engine *g = rvs_engine_routine_engine(state);
    struct rvs_engine_stats st;
    size_t es = rvs_context_real_size(ctx), narm = rvs_engine_narms(g);
    rvs_engine_stats_reset(g);
    CHECK(rvs_routine_engine.run(ctx, state) == RVS_OK, "%s: run", label);
    rvs_engine_stats_get(g, &st);
    printf("  %s: unique theta %llu, templates %llu, NN rows %llu, splines %llu, spline evals "
           "%llu, device calls NN %llu rotation %llu spline %llu+%llu chi2 %llu, %llu uploads "
           "(%llu B), %llu downloads (%llu B)\n", label, st.unique_theta, st.unique_templates,
           st.nn_rows, st.templates_built, st.spline_evals, st.calls[RVS_ENGINE_STAGE_NN],
           st.calls[RVS_ENGINE_STAGE_ROTATION], st.calls[RVS_ENGINE_STAGE_SPLINE_BUILD],
           st.calls[RVS_ENGINE_STAGE_SPLINE_EVAL], st.calls[RVS_ENGINE_STAGE_CHISQ],
           st.calls[RVS_ENGINE_STAGE_UPLOAD], st.bytes_in, st.calls[RVS_ENGINE_STAGE_DOWNLOAD],
           st.bytes_out);
    CHECK(st.unique_theta == 2 && st.unique_templates == 2, "%s: %llu theta, %llu templates",
          label, st.unique_theta, st.unique_templates);
    CHECK(st.nn_rows == 2 * narm && st.templates_built == 2 * narm &&
              st.spline_evals == 800 * narm,
          "%s: NN rows %llu, splines %llu, evaluations %llu", label, st.nn_rows,
          st.templates_built, st.spline_evals);
    CHECK(st.chunks == 1 && st.calls[RVS_ENGINE_STAGE_NN] == narm &&
              st.calls[RVS_ENGINE_STAGE_ROTATION] == narm &&
              st.calls[RVS_ENGINE_STAGE_SPLINE_BUILD] == narm &&
              st.calls[RVS_ENGINE_STAGE_SPLINE_EVAL] == narm &&
              st.calls[RVS_ENGINE_STAGE_CHISQ] == narm,
          "%s: device calls per stage are not one per arm", label);
    /* theta rows + 3 per-request arrays in; chi^2 (hi, lo) per request and arm out */
    CHECK(st.calls[RVS_ENGINE_STAGE_UPLOAD] == 4 &&
              st.bytes_in == 2 * 4 * es + 800 * (2 * sizeof(cl_int) + es),
          "%s: %llu uploads of %llu bytes", label, st.calls[RVS_ENGINE_STAGE_UPLOAD],
          st.bytes_in);
    CHECK(st.calls[RVS_ENGINE_STAGE_DOWNLOAD] == narm && st.bytes_out == narm * 800 * 2 * es,
          "%s: %llu downloads of %llu bytes", label, st.calls[RVS_ENGINE_STAGE_DOWNLOAD],
          st.bytes_out);
}

/* theta pairs with vsini 0 and 50: one NN row per pair, two templates, one rotation call per arm
 * that reads both templates from the pair's emulator row. */
static void check_pair_sharing(struct rvs_context *ctx, void *state, const char *label)
{
    struct rvs_engine *g = rvs_engine_routine_engine(state);
    struct rvs_engine_stats st;
    size_t narm = rvs_engine_narms(g);
    rvs_engine_stats_reset(g);
    CHECK(rvs_routine_engine.run(ctx, state) == RVS_OK, "%s: run", label);
    rvs_engine_stats_get(g, &st);
    printf("  %s: unique theta %llu, templates %llu, NN rows %llu, rotation calls %llu\n",
           label, st.unique_theta, st.unique_templates, st.nn_rows,
           st.calls[RVS_ENGINE_STAGE_ROTATION]);
    CHECK(st.unique_theta == 32 && st.unique_templates == 64 && st.nn_rows == 32 * narm &&
              st.templates_built == 64 * narm && st.calls[RVS_ENGINE_STAGE_ROTATION] == narm,
          "%s: theta %llu templates %llu NN rows %llu splines %llu rotation calls %llu", label,
          st.unique_theta, st.unique_templates, st.nn_rows, st.templates_built,
          st.calls[RVS_ENGINE_STAGE_ROTATION]);
}

/* Largest relative difference between two result sets, and whether every value is within
 * abs_tol + RVS_TOL_ENGINE_REBATCH_REL |b| (abs_tol: 0 in fp64, the fp32 chain's tolerance in
 * fp32, where the chi^2 GEMMs also round by batch). A finite value against a non-finite one
 * fails. */
static double result_diff(struct rvs_context *ctx, const double *a, const double *b, size_t n,
                          int *ok)
{
    double d = 0, abs_tol = ctx->use_fp64 ? 0 : RVS_TOL_ENGINE_FP32_ABS;
    for (size_t i = 0; i < n; i++) {
        if (isfinite(a[i]) != isfinite(b[i])) {
            *ok = 0;
            d = INFINITY;
            continue;
        }
        if (!isfinite(a[i]))
            continue;
        double e = fabs(a[i] - b[i]);
        if (!(e <= abs_tol + RVS_TOL_ENGINE_REBATCH_REL * fabs(b[i])))
            *ok = 0;
        d = fmax(d, e / fmax(fabs(b[i]), 1e-300));
    }
    return d;
}

/* Chunked passes (tiny caps), the allocation-failure retry and profiling must reproduce one big
 * pass, within RVS_TOL_ENGINE_REBATCH_REL (not bit for bit: see tests/tolerances.h). */
static void check_chunking(struct rvs_context *ctx, void *state, const char *label)
{
    struct rvs_engine *g = rvs_engine_routine_engine(state);
    struct rvs_engine_stats st;
    size_t E, narm;
    const double *tot, *arm;
    int ok = 1;
    CHECK(rvs_routine_engine.run(ctx, state) == RVS_OK, "%s: one pass", label);
    rvs_engine_routine_results(state, &E, &narm, &tot, &arm);
    double *tot0 = malloc(E * sizeof *tot0), *arm0 = malloc(E * narm * sizeof *arm0);
    if (!tot0 || !arm0) {
        CHECK(0, "out of memory");
        free(tot0), free(arm0);
        return;
    }
    memcpy(tot0, tot, E * sizeof *tot0);
    memcpy(arm0, arm, E * narm * sizeof *arm0);

    rvs_engine_set_chunk_limits(g, 37, 5);
    rvs_engine_stats_reset(g);
    CHECK(rvs_routine_engine.run(ctx, state) == RVS_OK, "%s: chunked", label);
    rvs_engine_stats_get(g, &st);
    double d = fmax(result_diff(ctx, tot, tot0, E, &ok),
                    result_diff(ctx, arm, arm0, E * narm, &ok));
    printf("  %s: %llu chunks of <= 37 requests / 5 templates: max relative difference "
           "%.3e\n", label, st.chunks, d);
    CHECK(st.chunks >= E / 37 && ok, "%s: chunked: %llu chunks, difference %.3e", label,
          st.chunks, d);

    rvs_engine_set_chunk_limits(g, 0, 0);
    rvs_engine_simulate_alloc_limit(g, 300);
    rvs_engine_set_profiling(g, 1);
    rvs_engine_stats_reset(g);
    CHECK(rvs_routine_engine.run(ctx, state) == RVS_OK, "%s: with allocation failures", label);
    rvs_engine_stats_get(g, &st);
    d = fmax(result_diff(ctx, tot, tot0, E, &ok), result_diff(ctx, arm, arm0, E * narm, &ok));
    printf("  %s: allocation failures above 300 requests: %llu retries, %llu chunks, max "
           "relative difference %.3e\n", label, st.retries, st.chunks, d);
    CHECK(st.retries >= 1 && st.chunks >= E / 300 && ok,
          "%s: retry: %llu retries, %llu chunks, difference %.3e", label, st.retries, st.chunks,
          d);
    double sum = 0;
    for (int k = 0; k < RVS_ENGINE_NSTAGES; k++)
        sum += st.seconds[k];
    printf("  %s: profiled stages %.3f s of %.3f s in the calls\n", label, sum,
           st.total_seconds);
    CHECK(sum > 0 && sum <= st.total_seconds * 1.01 + 1e-3, "%s: stage times %.3f s, total "
          "%.3f s", label, sum, st.total_seconds);
    rvs_engine_simulate_alloc_limit(g, 0);
    rvs_engine_set_profiling(g, 0);

    /* a bad request gets NaN, its neighbours are unchanged; a bad spectrum index is refused */
    const struct rvs_engine_request *req = rvs_engine_routine_requests(state);
    struct rvs_engine_request q[3] = {req[0], req[1], req[2]};
    double t[3];
    q[1].teff = NAN;
    CHECK(rvs_engine_eval(g, q, 3, t, NULL) == RVS_OK, "%s: NaN theta refused", label);
    ok = 1;
    result_diff(ctx, &t[0], &tot0[0], 1, &ok);
    result_diff(ctx, &t[2], &tot0[2], 1, &ok);
    CHECK(!isfinite(t[1]) && ok,
          "%s: NaN theta: %g %g %g (want %g NaN %g)", label, t[0], t[1], t[2], tot0[0], tot0[2]);
    q[1] = req[1];
    q[1].spectrum = 1 << 30;
    CHECK(rvs_engine_eval(g, q, 3, t, NULL) == RVS_ERR_INVALID_ARGUMENT,
          "%s: spectrum index out of range accepted", label);
    free(tot0), free(arm0);
}

/* rvs_engine_derivs against rvs_engine_eval: the same chi^2; each gradient component against a
 * fourth-order central difference (+-h, +-2h) with h a fifth of a standard error
 * (h_k = 0.2 / sqrt(GN_kk / 2)): small enough for the random networks' curvature, large enough
 * that the float32 emulator's rounding noise in chi^2 (~1e-3 here) stays far below the change;
 * errors measured in units of the gradient's scale sqrt(GN_kk) (a gradient of 1 unit moves the
 * optimum by ~1 sigma). At
 * vsini <= 0 the vsini derivative is the one from the right (a one-sided difference); else a
 * vsini step never crosses 0. The GN matrix is symmetric and positive semi-definite; non-finite requests stay non-finite; chunked passes give
 * the same derivatives. */
static void check_derivs(struct rvs_context *ctx, void *state, const char *label)
{
    enum { ND = RVS_ENGINE_NDERIV, NQ = 48 };
    struct rvs_engine *g = rvs_engine_routine_engine(state);
    const struct rvs_engine_request *req = rvs_engine_routine_requests(state);
    size_t E, narm;
    const double *tot, *arm;
    CHECK(rvs_routine_engine.run(ctx, state) == RVS_OK, "%s: eval", label);
    rvs_engine_routine_results(state, &E, &narm, &tot, &arm);
    size_t nq = E < NQ ? E : NQ;
    struct rvs_engine_request q[NQ], pts[4 * NQ];
    double c[NQ], grad[NQ * ND], gn[NQ * ND * ND], grad2[NQ * ND], gn2[NQ * ND * ND], c2[NQ];
    double fpm[4 * NQ], h[NQ][ND];
    /* every 7th request of the scenario: a mix of arms, vsini and templates */
    for (size_t i = 0; i < nq; i++)
        q[i] = req[(i * 7) % E];
    int st = rvs_engine_derivs(g, q, nq, c, NULL, grad, gn);
    CHECK(st == RVS_OK, "%s: rvs_engine_derivs: %s", label, rvs_strerror(st));
    if (st != RVS_OK)
        return;
    double ec = 0, eg = 0, asym = 0, neg = 0;
    size_t nfinite = 0, ncheck = 0;
    for (size_t i = 0; i < nq; i++) {
        double ref = tot[(i * 7) % E];
        CHECK(isfinite(c[i]) == isfinite(ref), "%s: request %zu: chi^2 %g, eval %g", label, i,
              c[i], ref);
        if (!isfinite(c[i]) || !isfinite(ref)) {
            for (int k = 0; k < ND; k++)
                CHECK(isnan(grad[i * ND + k]), "%s: request %zu: gradient %g where chi^2 is not "
                      "finite", label, i, grad[i * ND + k]);
            continue;
        }
        nfinite++;
        ec = fmax(ec, fabs(c[i] - ref) / fmax(fabs(ref), 1));
        const double *m = gn + i * ND * ND;
        for (int k = 0; k < ND; k++)
            for (int l = 0; l < ND; l++)
                asym = fmax(asym, fabs(m[k * ND + l] - m[l * ND + k]) /
                                      sqrt(fmax(m[k * ND + k] * m[l * ND + l], 1e-300)));
        /* smallest eigenvalue's sign through a Cholesky of GN + tiny ridge */
        double L[ND][ND], ridge = 0;
        for (int k = 0; k < ND; k++)
            ridge = fmax(ridge, m[k * ND + k]);
        ridge = ridge * 1e-9 + 1e-300;
        for (int a = 0; a < ND; a++)
            for (int b = 0; b <= a; b++) {
                double sum = m[a * ND + b] + (a == b ? ridge : 0);
                for (int k = 0; k < b; k++)
                    sum -= L[a][k] * L[b][k];
                if (a == b) {
                    if (!(sum > 0))
                        neg = fmax(neg, -sum / ridge);
                    L[a][a] = sqrt(fmax(sum, ridge));
                } else
                    L[a][b] = sum / L[b][b];
            }

    }
    /* the central differences: one call per parameter for all requests */
    for (int k = 0; k < ND; k++) {
        size_t np = 0;
        for (size_t i = 0; i < nq; i++) {
            double gkk = gn[(i * ND + k) * ND + k];
            h[i][k] = 0;
            if (!isfinite(c[i]) || !(gkk > 0))
                continue;
            double hk = 0.2 / sqrt(gkk / 2);
            /* at vsini <= 0: one-sided, at 0, 0.1 and 0.2 km/s (a kernel far narrower than a
             * pixel, where the rotated template is linear in vsini and chi^2 quadratic) */
            int right = k == RVS_ENGINE_D_VSINI && q[i].vsini <= 0;
            if (k == RVS_ENGINE_D_VSINI)
                hk = right ? 0.1 : fmin(hk, 0.25 * q[i].vsini);
            h[i][k] = hk;
            static const double central[4] = {1, -1, 2, -2}, onesided[4] = {1, 1, 2, 2};
            const double *mult = right ? onesided : central;
            for (int t = 0; t < 4; t++) {
                struct rvs_engine_request r = q[i];
                double *x[ND] = {&r.vrad, &r.vsini, &r.teff, &r.logg, &r.feh, &r.alpha};
                *x[k] = (right ? 0 : *x[k]) + mult[t] * hk;
                pts[np++] = r;
            }
        }
        if (np == 0)
            continue;
        CHECK(rvs_engine_eval(g, pts, np, fpm, NULL) == RVS_OK, "%s: eval of the differences",
              label);
        size_t j = 0;
        for (size_t i = 0; i < nq; i++) {
            if (h[i][k] == 0)
                continue;
            double f1 = fpm[j], f_1 = fpm[j + 1], f2 = fpm[j + 2], f_2 = fpm[j + 3];
            j += 4;
            if (!isfinite(f1) || !isfinite(f_1) || !isfinite(f2) || !isfinite(f_2))
                continue; /* a step left the template's coverage */
            double fd = (8 * (f1 - f_1) - (f2 - f_2)) / (12 * h[i][k]);
            if (k == RVS_ENGINE_D_VSINI && q[i].vsini <= 0) /* second-order one-sided */
                fd = (-3 * c[i] + 4 * f1 - f2) / (2 * h[i][k]);
            double scale = sqrt(gn[(i * ND + k) * ND + k]);
            double e = fabs(grad[i * ND + k] - fd) / scale;
            if (!(e <= (ctx->use_fp64 ? RVS_TOL_ENGINE_GRAD : RVS_TOL_ENGINE_GRAD_FP32)))
                printf("    request %zu parameter %d: gradient %.6g, difference %.6g (h %.3g, "
                       "scale %.3g)\n", i, k, grad[i * ND + k], fd, h[i][k], scale);
            eg = fmax(eg, e);
            ncheck++;
        }
    }
    printf("  %s: %zu requests (%zu finite), %zu gradient components: chi^2 vs eval %.2e, "
           "gradient vs differences %.3e of its scale (tol %.1e), GN asymmetry %.1e, "
           "negative pivots %.1e\n", label, nq, nfinite, ncheck, ec, eg,
           ctx->use_fp64 ? RVS_TOL_ENGINE_GRAD : RVS_TOL_ENGINE_GRAD_FP32, asym, neg);
    CHECK(nfinite > nq / 2 && ncheck > 3 * nfinite, "%s: too few checks (%zu finite, %zu)",
          label, nfinite, ncheck);
    CHECK(ec <= (ctx->use_fp64 ? RVS_TOL_ENGINE_FP64_REL : RVS_TOL_ENGINE_FP32_ABS),
          "%s: derivs' chi^2 differs from eval's by %.3e", label, ec);
    double tol = ctx->use_fp64 ? RVS_TOL_ENGINE_GRAD : RVS_TOL_ENGINE_GRAD_FP32;
    CHECK(eg <= tol, "%s: gradient error %.3e > %.1e", label, eg, tol);
    CHECK(asym <= 1e-12 && neg == 0, "%s: GN asymmetry %.3e, negative pivots %.3e", label, asym,
          neg);

    /* chunked passes: the same derivatives */
    rvs_engine_set_chunk_limits(g, 5, 3);
    CHECK(rvs_engine_derivs(g, q, nq, c2, NULL, grad2, gn2) == RVS_OK, "%s: chunked", label);
    rvs_engine_set_chunk_limits(g, 0, 0);
    int ok = 1;
    double d = fmax(result_diff(ctx, c2, c, nq, &ok),
                    fmax(result_diff(ctx, grad2, grad, nq * ND, &ok),
                         result_diff(ctx, gn2, gn, nq * ND * ND, &ok)));
    printf("  %s: chunked derivatives: max relative difference %.3e\n", label, d);
    CHECK(ok || d <= 1e-5, "%s: chunked derivatives differ by %.3e", label, d);

    /* bad requests: NaN derivatives, their neighbours unchanged */
    struct rvs_engine_request bad[3] = {q[0], q[1], q[2]};
    double cb[3], gb[3 * ND];
    bad[1].teff = NAN;
    CHECK(rvs_engine_derivs(g, bad, 3, cb, NULL, gb, NULL) == RVS_OK, "%s: bad request", label);
    int bad_ok = isnan(cb[1]) && (!isfinite(c[0]) || gb[0] == grad[0]);
    for (int k = 0; k < ND; k++)
        bad_ok = bad_ok && isnan(gb[ND + k]);
    CHECK(bad_ok, "%s: a NaN theta: chi^2 %g, gradient %g (want NaN)", label, cb[1], gb[ND]);
}

/* Continuum-only fits of every spectrum (rvspecfit's get_chisq_continuum). */
static void check_continuum(struct rvs_context *ctx, void *state, const char *label)
{
    double ec = 0, em = 0;
    int status = rvs_engine_routine_check_continuum(state, &ec, &em);
    double tc = ctx->use_fp64 ? RVS_TOL_ENGINE_FP64_REL : RVS_TOL_ENGINE_FP32_ABS;
    double tm = ctx->use_fp64 ? RVS_TOL_FP64_REL : RVS_TOL_FP32_REL;
    printf("  %s: chi^2 error %.3e, model error %.3e\n", label, ec, em);
    CHECK(status == RVS_OK && ec <= tc && em <= tm, "%s: %s, chi^2 error %.3e, model error "
          "%.3e", label, rvs_strerror(status), ec, em);
}

/* New errors for the same batch (the fit's outlier clipping) give exactly what a full
 * rvs_engine_set_data with those errors gives, without sending the resolution matrices again. */
static void check_set_errors(struct rvs_context *ctx, void *state, const char *label)
{
    double d = INFINITY;
    CHECK(rvs_routine_engine.run(ctx, state) == RVS_OK, "%s: first pass", label);
    int status = rvs_engine_routine_check_set_errors(state, &d);
    printf("  %s: set_errors vs set_data: largest difference %.3g\n", label, d);
    CHECK(status == RVS_OK && d == 0, "%s: %s, difference %.3g", label, rvs_strerror(status), d);
}

/* Sizing and argument checks. */
static void check_api(struct rvs_context *ctx, void *state, const char *label)
{
    struct rvs_engine *g = rvs_engine_routine_engine(state);
    size_t b1 = rvs_engine_max_batch(g, 1, 0), b100 = rvs_engine_max_batch(g, 100, 0);
    size_t b100t50 = rvs_engine_max_batch(g, 100, 50);
    printf("  %s: max batch %zu spectra at 1 request each, %zu at 100, %zu at 100 requests "
           "sharing 50 templates\n",
           label, b1, b100, b100t50);
    /* > 500: a CPU device's budget is 256 MiB (src/engine/engine.c), ~900 of these spectra */
    CHECK(b1 >= b100 && b100 >= 1 && b1 > 500, "%s: max batch %zu / %zu", label, b1, b100);
    /* shared templates take less memory: a larger batch, at most the 1-request one */
    CHECK(b100t50 > b100 && b100t50 <= b1, "%s: max batch %zu with shared templates, %zu without",
          label, b100t50, b100);
    double vmin, vmax;
    CHECK(rvs_engine_arm_velocity_range(g, 0, &vmin, &vmax) == RVS_OK && vmin < -1000 &&
              vmax > 1000 && vmax < 2000,
          "%s: velocity range [%g, %g]", label, vmin, vmax);
    (void)ctx;
    /* data without the resolution matrices the arms were configured with */
    size_t n0 = rvs_engine_arm_npix(g, 0), n1 = rvs_engine_arm_npix(g, 1);
    size_t n2 = rvs_engine_arm_npix(g, 2), nmax = n0 > n1 ? n0 : n1;
    nmax = nmax > n2 ? nmax : n2;
    double *ones = malloc(nmax * sizeof *ones);
    if (!ones)
        return;
    for (size_t i = 0; i < nmax; i++)
        ones[i] = 1;
    const double *spec[3] = {ones, ones, ones};
    CHECK(rvs_engine_set_data(g, 1, spec, spec, NULL, NULL) == RVS_ERR_INVALID_ARGUMENT,
          "%s: data without resolution matrices accepted", label);
    struct rvs_engine_request q = {0, 5000, 4, 0, 0, 0, 0};
    double t;
    CHECK(rvs_engine_eval(g, &q, 1, &t, NULL) == RVS_ERR_INVALID_ARGUMENT,
          "%s: evaluation without data accepted", label);
    free(ones);
}

static void run_all(struct rvs_context *ctx)
{
    printf("%s, %s\n", ctx->caps.device_name, ctx->use_fp64 ? "fp64" : "compensated fp32");
    run_cases(ctx);
    const struct rvs_routine_args scan = C(800, 16, 2, 400 | ENG_VSINI);
    const struct rvs_routine_args pairs = C(64, 20, 8, 1 | ENG_TWOVSINI);
    const struct rvs_routine_args mixed =
        C(1500, 24, 30, 5 | ENG_VSINI | ENG_SHARED | ENG_MISSING | ENG_OUTSIDE | ENG_RES);
    with_scenario(ctx, &scan, check_scan_sharing, "velocity scans");
    with_scenario(ctx, &pairs, check_pair_sharing, "theta pairs");
    with_scenario(ctx, &mixed, check_chunking, "chunking");
    with_scenario(ctx, &mixed, check_continuum, "continuum only");
    with_scenario(ctx, &mixed, check_api, "api");
    with_scenario(ctx, &mixed, check_set_errors, "new errors");
    with_scenario(ctx, &mixed, check_derivs, "derivatives");
    const struct rvs_routine_args twoarm = C(300, 16, 12, 3 | ENG_VSINI | ENG_TWOARMS | ENG_BN);
    with_scenario(ctx, &twoarm, check_derivs, "derivatives, two arms, no resolution");
}

int main(void)
{
    struct rvs_context *ctx = test_context(0); /* with the self-test, which has an engine row */
    run_all(ctx);
    int had_fp64 = ctx->use_fp64;
    rvs_context_destroy(&ctx);
    setenv("RVSFIT_CL_FP32", "1", 1);
    ctx = test_context(0);
    CHECK(!ctx->use_fp64, "RVSFIT_CL_FP32=1 did not force fp32");
    run_all(ctx);
    rvs_context_destroy(&ctx);
    if (!had_fp64)
        printf("device has no fp64: the fp64 pass ran in fp32\n");
    return test_finish("test_engine");
}
