/* test_chisq.c: rvs_chisq_eval against the long-double reference of rvspecfit's get_chisq0
 * (tests/routines/chisq.c), in fp64 (both residual passes: the work-group one of GPUs and the
 * per-request vector blocks of CPU devices) and forced fp32, plus the host basis against closed
 * forms.
 * Tolerances (tests/tolerances.h): chi^2 RVS_TOL_FP64_REL relative (fp64) or
 * RVS_TOL_CHISQ_FP32_ABS absolute (fp32, values ~1e3..1e4); best-fit model and coefficients
 * (in model space, |S da| / | |S| |a| |: rounding a alone moves S a by about eps there, while
 * the RBF basis's cancellation can make |S a| much smaller) RVS_TOL_FP64_REL (fp64) or
 * RVS_TOL_FP32_REL (fp32).
 * Rank-deficient Gram matrices (npoly > n, impulse templates) must be flagged (+inf) exactly
 * where the reference flags them; the forced fallback must agree with Cholesky. */
#include <config.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "routine.h"
#include "testutil.h"
#include "tolerances.h"

struct rvs_chisq_routine_errors {
    double chisq, model, coeff;
    size_t flagged_ref, flag_mismatch, fallback, requests;
};
extern struct rvs_chisq_routine_errors rvs_chisq_routine_last;
extern const struct rvs_routine rvs_routine_chisq;

enum { EXPECT_CHOLESKY, EXPECT_FALLBACK_ALL, EXPECT_FLAGGED_ALL, EXPECT_ANY };

struct chisq_case {
    struct rvs_routine_args args;
    int expect;
};

#define C(E, N, NP, S, VAR, EXP) {{.batch = (E), .n = (N), .m = (NP), .k = (S), .param = (VAR)}, (EXP)}

static const struct chisq_case cases[] = {
    C(1, 1, 1, 1, 0, EXPECT_CHOLESKY),        /* one pixel, constant continuum */
    C(3, 1, 3, 2, 0, EXPECT_FLAGGED_ALL),     /* npoly > n: singular */
    C(5, 7, 10, 2, 0, EXPECT_FLAGGED_ALL),    /* npoly > n */
    C(5, 7, 5, 2, 0, EXPECT_ANY),             /* tiny, ill-conditioned RBF */
    C(7, 7, 3, 3, 1, EXPECT_CHOLESKY),        /* Chebyshev */
    C(33, 64, 1, 5, 0, EXPECT_CHOLESKY),
    C(33, 64, 5, 5, 0, EXPECT_CHOLESKY),
    C(64, 1000, 3, 8, 0, EXPECT_CHOLESKY),
    C(64, 1000, 10, 8, 0, EXPECT_CHOLESKY),
    C(64, 1000, 10, 8, 1, EXPECT_CHOLESKY),   /* Chebyshev */
    C(64, 1000, 10, 8, 2, EXPECT_FALLBACK_ALL), /* forced eigen path */
    C(50, 4099, 15, 10, 0, EXPECT_CHOLESKY),
    C(20, 4099, 15, 10, 2, EXPECT_FALLBACK_ALL),
    C(17, 1000, 1, 4, 4, EXPECT_CHOLESKY),    /* impulse template, npoly 1: finite */
    C(17, 1000, 10, 4, 4, EXPECT_FLAGGED_ALL), /* impulse template: rank 1 */
    C(2000, 64, 10, 100, 0, EXPECT_CHOLESKY), /* many requests */
    C(96, 0, 10, 12, 0, EXPECT_CHOLESKY),     /* DESI b/r/z, 8 velocities per spectrum */
    C(24, 0, 10, 6, 2, EXPECT_FALLBACK_ALL),  /* DESI, forced fallback */
    C(24, 0, 15, 6, 1, EXPECT_CHOLESKY),      /* DESI, Chebyshev 15 */
    C(16, 0, 5, 4, 8, EXPECT_CHOLESKY),       /* DESI, no optional outputs */
};

/* get_poly_basis on a 5-point grid against closed forms */
static void check_basis(void)
{
    const double lam[5] = {4000, 4001, 4002, 4003, 4004};
    double b[6 * 5];
    CHECK(rvs_chisq_basis(lam, 5, 6, 1, b) == RVS_OK, "basis rbf");
    for (int i = 0; i < 5; i++) {
        double x = -1 + 0.5 * i;
        CHECK(b[i] == 1 && b[5 + i] == x && b[10 + i] == x * x, "rbf polynomial terms at %d", i);
        const double cen[3] = {-1, 0, 1};
        for (int j = 0; j < 3; j++)
            CHECK(fabs(b[(3 + j) * 5 + i] - exp(-0.5 * (x - cen[j]) * (x - cen[j]) * 9)) < 1e-15,
                  "rbf Gaussian %d at %d", j, i);
    }
    CHECK(rvs_chisq_basis(lam, 5, 6, 0, b) == RVS_OK, "basis chebyshev");
    for (int i = 0; i < 5; i++) {
        double x = -1 + 0.5 * i;
        for (int j = 0; j < 6; j++) {
            double want = cos(j * acos(x));
            CHECK(fabs(b[j * 5 + i] - want) < 1e-14, "T_%d(%g) = %g, want %g", j, x,
                  b[j * 5 + i], want);
        }
    }
    const double flat[2] = {5000, 5000};
    CHECK(rvs_chisq_basis(flat, 2, 3, 1, b) == RVS_ERR_INVALID_ARGUMENT, "flat grid refused");
    printf("basis: closed forms ok\n");
}

static void run_all(struct rvs_context *ctx)
{
    int fp64 = ctx->use_fp64;
    double tol = fp64 ? RVS_TOL_FP64_REL : RVS_TOL_CHISQ_FP32_ABS;
    double tol_model = fp64 ? RVS_TOL_FP64_REL : RVS_TOL_FP32_REL;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct chisq_case *c = &cases[i];
        double err = rvs_routine_check(ctx, &rvs_routine_chisq, &c->args);
        const struct rvs_chisq_routine_errors *r = &rvs_chisq_routine_last;
        printf("    model err %.3e, coeff err %.3e, fallback %zu/%zu, flagged %zu, mismatches %zu\n",
               r->model, r->coeff, r->fallback, r->requests, r->flagged_ref, r->flag_mismatch);
        CHECK(err >= 0 && err <= tol, "%s case %zu (E=%zu n=%zu npoly=%zu var=%g): chi^2 error %.3e > %.1e",
              fp64 ? "fp64" : "fp32", i, c->args.batch, c->args.n, c->args.m, c->args.param, err,
              tol);
        CHECK(r->flag_mismatch == 0, "case %zu: %zu rank flags differ from the reference", i,
              r->flag_mismatch);
        if (!((int)c->args.param & 8)) {
            CHECK(r->model <= tol_model, "case %zu: best-model error %.3e > %.1e", i, r->model,
                  tol_model);
            CHECK(r->coeff <= tol_model, "case %zu: coefficient error %.3e > %.1e", i, r->coeff,
                  tol_model);
        }
        switch (c->expect) {
        case EXPECT_CHOLESKY:
            CHECK(r->fallback == 0, "case %zu: %zu requests took the fallback", i, r->fallback);
            CHECK(r->flagged_ref == 0, "case %zu: reference flagged %zu", i, r->flagged_ref);
            break;
        case EXPECT_FALLBACK_ALL:
            CHECK(r->fallback == r->requests, "case %zu: fallback %zu of %zu", i, r->fallback,
                  r->requests);
            CHECK(r->flagged_ref == 0, "case %zu: reference flagged %zu", i, r->flagged_ref);
            break;
        case EXPECT_FLAGGED_ALL:
            CHECK(r->flagged_ref == r->requests && r->fallback == r->requests,
                  "case %zu: flagged %zu, fallback %zu of %zu", i, r->flagged_ref, r->fallback,
                  r->requests);
            break;
        default:
            break;
        }
    }
}


/* The scale-free continuum prior (rvs_chisq_arm_set_scale_free): -2 log L of a template and of
 * the same template times c (c = 8 and 1/4: exact in binary) agree with it on, and differ by
 * exactly 2 npoly ln c with it off (rvspecfit's flat prior). The templates carry a line and a
 * slope so that the continuum fit is not trivial. Tolerance: RVS_TOL_FP64_REL relative in fp64,
 * RVS_TOL_CHISQ_FP32_ABS absolute in fp32, as the other chi^2 checks. */
static void check_scale_free(struct rvs_context *ctx)
{
    enum { N = 600, NP = 10, S = 2, E = 6 };
    static double lam[N], spec[S * N], espec[S * N], model[E * N], got[2][E];
    const double scale[3] = {1.0, 8.0, 0.25};
    size_t es = rvs_context_real_size(ctx);
    void *host = malloc(E * N * es);
    cl_int index[E];
    for (size_t i = 0; i < N; i++)
        lam[i] = 6000.0 + 0.8 * (double)i;
    for (size_t s = 0; s < S; s++)
        for (size_t i = 0; i < N; i++) {
            double x = (double)i / N;
            spec[s * N + i] = (1.0 + 0.3 * x) * (1 - 0.4 * exp(-0.5 * pow((double)i - 200.0 - 50.0 * s, 2) / 9.0)) +
                              0.01 * sin(0.37 * (double)i + (double)s);
            espec[s * N + i] = 0.01 + 0.002 * (double)((i * 5 + s) % 7);
        }
    for (size_t e = 0; e < E; e++) {
        index[e] = (cl_int)(e % S);
        for (size_t i = 0; i < N; i++) {
            double t = (1.0 + 0.2 * (double)i / N) *
                       (1 - 0.35 * exp(-0.5 * pow((double)i - 201.0 - 50.0 * (double)(e % S), 2) / 8.0));
            t = (double)(float)t;
            model[e * N + i] = t * scale[e / S];
        }
    }
    for (int on = 0; on < 2; on++) {
        struct rvs_chisq_arm *arm = NULL;
        cl_mem dm = NULL, di = NULL, dc = NULL;
        int st = rvs_chisq_arm_create(ctx, lam, N, NP, 1, &arm);
        if (st == RVS_OK)
            st = rvs_chisq_arm_set_data(ctx, arm, spec, espec, S);
        rvs_chisq_arm_set_scale_free(arm, on);
        for (size_t k = 0; k < E * N; k++) {
            if (es == sizeof(float))
                ((float *)host)[k] = (float)model[k];
            else
                ((double *)host)[k] = model[k];
        }
        if (st == RVS_OK)
            st = rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, E * N * es, host,
                                   &dm);
        if (st == RVS_OK)
            st = rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, sizeof index,
                                   index, &di);
        if (st == RVS_OK)
            st = rvs_buffer_create(ctx, CL_MEM_READ_WRITE, 2 * E * es, NULL, &dc);
        if (st == RVS_OK)
            st = rvs_chisq_eval(ctx, arm, dm, di, E, dc, NULL, NULL);
        if (st == RVS_OK)
            st = rvs_chisq_read(ctx, dc, E, got[on]);
        CHECK(st == RVS_OK, "scale-free check (%s): %s", on ? "on" : "off", rvs_strerror(st));
        rvs_buffer_release(&dm);
        rvs_buffer_release(&di);
        rvs_buffer_release(&dc);
        rvs_chisq_arm_destroy(&arm);
    }
    free(host);
    double worst_on = 0, worst_off = 0;
    for (size_t e = S; e < E; e++) {
        double ref_on = got[1][e % S], ref_off = got[0][e % S];
        double want_off = ref_off + 2.0 * NP * log(scale[e / S]);
        double d_on = fabs(got[1][e] - ref_on), d_off = fabs(got[0][e] - want_off);
        if (ctx->use_fp64) {
            d_on /= fabs(ref_on);
            d_off /= fabs(want_off);
        }
        worst_on = fmax(worst_on, d_on);
        worst_off = fmax(worst_off, d_off);
    }
    double tol = ctx->use_fp64 ? RVS_TOL_FP64_REL : RVS_TOL_CHISQ_FP32_ABS;
    printf("scale-free prior (%s): template x c changes -2 log L by %.3g (on), off by 2 npoly ln c "
           "within %.3g\n", ctx->use_fp64 ? "fp64" : "fp32", worst_on, worst_off);
    CHECK(worst_on <= tol, "scale-free prior: -2 log L changes by %.3g with the template's scale",
          worst_on);
    CHECK(worst_off <= tol, "flat prior: -2 log L differs from 2 npoly ln c by %.3g", worst_off);
    CHECK(fabs(got[1][0] - got[0][0]) > 1.0, "the scale-free prior changed nothing");
}

int main(void)
{
    check_basis();
    struct rvs_context *ctx = test_context(0); /* with the self-test, which has a chi^2 row */
    run_all(ctx);
    check_scale_free(ctx);
    /* and with the other residual pass: the CPU devices' per-request vector blocks (fp64) or
     * the work-group kernel GPUs use */
    ctx->vector_blocks = !ctx->vector_blocks;
    printf("kernels: %s\n", ctx->vector_blocks ? "vector blocks" : "work-groups");
    run_all(ctx);
    check_scale_free(ctx);
    int had_fp64 = ctx->use_fp64;
    rvs_context_destroy(&ctx);
    setenv("RVSFIT_CL_FP32", "1", 1);
    ctx = test_context(0);
    CHECK(!ctx->use_fp64, "RVSFIT_CL_FP32=1 did not force fp32");
    run_all(ctx);
    check_scale_free(ctx);
    rvs_context_destroy(&ctx);
    if (!had_fp64)
        printf("device has no fp64: the fp64 pass ran in fp32\n");
    return test_finish("test_chisq");
}
