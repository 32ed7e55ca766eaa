/* test_chisq.c: rvs_chisq_eval against the long-double reference of rvspecfit's get_chisq0
 * (tests/routines/chisq.c), in fp64 and forced fp32, plus the host basis against closed forms.
 * Tolerances (tests/tolerances.h): chi^2 RVS_TOL_FP64_REL relative (fp64) or
 * RVS_TOL_CHISQ_FP32_ABS absolute (fp32, values ~1e3..1e4); best-fit model and coefficients
 * (in model space, |S da| / | |S| |a| |: rounding a alone moves S a by about eps there, while
 * the RBF basis's cancellation can make |S a| much smaller) RVS_TOL_FP64_REL (fp64) or
 * RVS_TOL_FP32_REL (fp32).
 * Rank-deficient Gram matrices (npoly > n, impulse templates) must be flagged (+inf) exactly
 * where the reference flags them; the forced fallback must agree with Cholesky. */
#include <config.h>

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

int main(void)
{
    check_basis();
    struct rvs_context *ctx = test_context(0); /* with the self-test, which has a chi^2 row */
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
    return test_finish("test_chisq");
}
