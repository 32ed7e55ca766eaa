/* test_spline.c: natural cubic splines (src/engine/spline.c, cl/spline.cl) against the long-double port
 * of rvspecfit's spliner.c in tests/routines/spline.c, in the default precision and in forced
 * fp32: coefficients (spline_construct) by each of the three construction kernels (serial,
 * segmented, fir; RVSFIT_CL_SPLINE_KERNEL) and Doppler-shifted evaluation (spline_eval, after
 * the default construction) on log-uniform and linear grids, random and impulse templates, at
 * knots, next to the last knot and outside the grid (NaN); plus grid validation and the
 * self-test row (per kernel).
 * Tolerances (tests/tolerances.h): RVS_TOL_FP64_REL in fp64, RVS_TOL_FP32_REL in fp32 (against
 * the same long-double reference), relative to the largest |value| of the case; coefficient
 * errors count as the error they put into a value (times h^3 for A, B and h for C, D). */
#include <config.h>

#include <float.h>
#include <math.h>
#include <string.h>

#include "routine.h"
#include "testutil.h"
#include "tolerances.h"

extern const struct rvs_routine rvs_routine_spline_construct, rvs_routine_spline_eval;

#define LINEAR (1u << 24)
#define IMPULSE (1u << 25)
#define KNOTS (1u << 26)
#define OUTSIDE (1u << 27)
#define COARSE (1u << 28)

static const struct rvs_routine_args construct_cases[] = {
    {.batch = 1, .m = 3},
    {.batch = 1, .m = 4},
    {.batch = 7, .m = 7},
    {.batch = 7, .m = 7, .k = LINEAR},
    {.batch = 33, .m = 64},
    {.batch = 64, .m = 64, .k = IMPULSE},
    {.batch = 3, .m = 1000, .k = LINEAR},
    {.batch = 40, .m = 1000, .k = IMPULSE | LINEAR},
    {.batch = 1000, .m = 64},
    {.batch = 65, .m = 4099},
    {.batch = 70, .m = 6000},
    {.batch = 5, .m = 8193}, /* the segmented kernel's longest grid: 128 segments of 64 */
    /* fir: grids shorter than its sums (N - 3 <= K: exact), one and two tiles of 127
     * intervals and one knot over, tile edges with impulses, a grid too coarse for its
     * truncation (falls back to segmented) */
    {.batch = 3, .m = 5},
    {.batch = 2, .m = 17, .k = LINEAR},
    {.batch = 9, .m = 31},
    {.batch = 9, .m = 33, .k = LINEAR},
    {.batch = 4, .m = 128},
    {.batch = 4, .m = 129},
    {.batch = 4, .m = 255, .k = LINEAR},
    {.batch = 300, .m = 256, .k = IMPULSE},
    {.batch = 6, .m = 300, .k = COARSE},
    {0}};

static const struct rvs_routine_args eval_cases[] = {
    {.batch = 1, .n = 1, .m = 4, .k = 1, .param = 1000},
    {.batch = 7, .n = 7, .m = 7, .k = 3, .param = 1000},
    {.batch = 7, .n = 7, .m = 7, .k = 3 | LINEAR, .param = 500},
    {.batch = 64, .n = 100, .m = 64, .k = 5 | KNOTS},
    {.batch = 64, .n = 200, .m = 1000, .k = 5 | KNOTS | LINEAR},
    {.batch = 50, .n = 300, .m = 6000, .k = 7 | KNOTS},
    {.batch = 100, .n = 333, .m = 64, .k = 9 | OUTSIDE, .param = 1000},
    {.batch = 100, .n = 2326, .m = 4099, .k = 20 | OUTSIDE | LINEAR, .param = 1000},
    {.batch = 300, .n = 2751, .m = 6000, .k = 30 | IMPULSE, .param = 1000},
    {.batch = 1000, .n = 2881, .m = 6000, .k = 1000, .param = 1000},
    {.batch = 3000, .n = 7, .m = 1000, .k = 100 | LINEAR, .param = 1000},
    {.batch = 4000, .n = 64, .m = 4099, .k = 1, .param = 300},
    {.batch = 200, .n = 500, .m = 6000, .k = 4, .param = 5000},
    {0}};

/* fp64 only: beyond |v| ~ 5000 km/s the fp32 path loses accuracy as v^2 (cl/spline.cl; ~1e-4 of
 * max|value| at 40000 km/s, far outside rvspecfit's default +-1000 km/s). */
static const struct rvs_routine_args eval_fast_cases[] = {
    {.batch = 20, .n = 100, .m = 6000, .k = 4 | LINEAR, .param = 40000},
    {0}};

/* Grids that spliner.c (or its callers) must refuse. */
static void check_validation(struct rvs_context *ctx)
{
    double xs[8];
    struct rvs_spline_grid *grid = NULL;
    for (int i = 0; i < 8; i++)
        xs[i] = 4000.0 + 0.5 * i; /* linear */
    CHECK(rvs_spline_grid_create(ctx, xs, 8, 0, &grid) == RVS_OK && grid, "linear grid refused");
    CHECK(rvs_spline_grid_size(grid) == 8, "grid size %zu", rvs_spline_grid_size(grid));
    rvs_spline_grid_destroy(&grid);
    rvs_spline_grid_destroy(&grid); /* NULL is fine */
    CHECK(rvs_spline_grid_create(ctx, xs, 8, 1, &grid) == RVS_ERR_INVALID_ARGUMENT && !grid,
          "a linear grid passed as log-uniform was accepted");
    CHECK(rvs_spline_grid_create(ctx, xs, 2, 0, &grid) == RVS_ERR_INVALID_ARGUMENT,
          "a 2-knot grid was accepted");
    xs[5] += 1e-6; /* one step off by 1e-6: over spliner.c's 1e-10 */
    CHECK(rvs_spline_grid_create(ctx, xs, 8, 0, &grid) == RVS_ERR_INVALID_ARGUMENT,
          "a non-uniform grid was accepted");
    xs[5] = xs[4]; /* repeated knot */
    CHECK(rvs_spline_grid_create(ctx, xs, 8, 0, &grid) == RVS_ERR_INVALID_ARGUMENT,
          "a repeated knot was accepted");
    for (int i = 0; i < 8; i++)
        xs[i] = 4000.0 * exp(1e-4 * i);
    CHECK(rvs_spline_grid_create(ctx, xs, 8, 1, &grid) == RVS_OK, "log grid refused");
    rvs_spline_grid_destroy(&grid);
    xs[0] = -xs[0];
    CHECK(rvs_spline_grid_create(ctx, xs, 8, 1, &grid) == RVS_ERR_INVALID_ARGUMENT,
          "a negative knot was accepted on a log grid");
    /* evaluation points: wavelengths and their logarithms; non-positive ones are refused */
    cl_mem points = NULL;
    double lam[3] = {5000.0, 0.0, 5001.0};
    CHECK(rvs_spline_points_create(ctx, lam, 3, &points) == RVS_ERR_INVALID_ARGUMENT && !points,
          "a zero evaluation wavelength was accepted");
    lam[1] = NAN;
    CHECK(rvs_spline_points_create(ctx, lam, 3, &points) == RVS_ERR_INVALID_ARGUMENT && !points,
          "a NaN evaluation wavelength was accepted");
    lam[1] = 5000.5;
    CHECK(rvs_spline_points_create(ctx, lam, 3, &points) == RVS_OK && points,
          "evaluation wavelengths refused");
    double back[6];
    size_t es = rvs_context_real_size(ctx);
    unsigned char raw[6 * sizeof(double)];
    CHECK(points && rvs_buffer_read(ctx, points, 0, 6 * es, raw) == RVS_OK, "points unreadable");
    for (int i = 0; i < 6; i++)
        back[i] = es == sizeof(double) ? ((double *)raw)[i] : ((float *)raw)[i];
    for (int i = 0; i < 3; i++)
        CHECK(fabs(back[3 + i] - log(back[i])) <= 4 * (es == sizeof(double) ? DBL_EPSILON : FLT_EPSILON) * log(back[i]),
              "point %d: log %g, expected %g", i, back[3 + i], log(back[i]));
    rvs_buffer_release(&points);
}

/* The construction kernels (RVSFIT_CL_SPLINE_KERNEL values); evaluation cases run once per
 * precision, after the default construction. */
static const char *const kinds[] = {"serial", "segmented", "fir", NULL};

static void run_all(int fp32, const char *kind)
{
    if (fp32)
        setenv("RVSFIT_CL_FP32", "1", 1);
    else
        unsetenv("RVSFIT_CL_FP32");
    if (kind)
        setenv("RVSFIT_CL_SPLINE_KERNEL", kind, 1);
    else
        unsetenv("RVSFIT_CL_SPLINE_KERNEL");
    printf("%s construction kernel, %s:\n", kind ? kind : "default", fp32 ? "fp32" : "default precision");
    struct rvs_context *ctx = test_context(0); /* runs the spline self-test row too */
    CHECK(fp32 ? !ctx->use_fp64 : ctx->use_fp64 == ctx->caps.has_fp64, "precision not as asked");
    char detail[256] = "";
    int st = rvs_spline_selftest(ctx, detail, sizeof detail);
    CHECK(st == RVS_OK, "spline self-test: %s %s", rvs_strerror(st), detail);
    double tol_c = ctx->use_fp64 ? RVS_TOL_FP64_REL : RVS_TOL_FP32_REL;
    double worst = 0;
    for (const struct rvs_routine_args *a = construct_cases; kind && a->batch; a++) {
        double e = rvs_routine_check(ctx, &rvs_routine_spline_construct, a);
        CHECK(e >= 0 && e <= tol_c, "%s construct T=%zu N=%zu k=%#zx: error %.3g > %.3g", kind,
              a->batch, a->m, a->k, e, tol_c);
        worst = e > worst ? e : worst;
    }
    if (kind) {
        printf("%s construction, %s: max error %.3g, tolerance %.1e\n", kind,
               ctx->use_fp64 ? "fp64" : "fp32", worst, tol_c);
        rvs_context_destroy(&ctx);
        return;
    }
    check_validation(ctx);
    for (const struct rvs_routine_args *a = eval_cases; a->batch; a++) {
        double e = rvs_routine_check(ctx, &rvs_routine_spline_eval, a);
        CHECK(e >= 0 && e <= tol_c, "eval E=%zu n=%zu N=%zu k=%#zx: error %.3g > %.3g", a->batch,
              a->n, a->m, a->k, e, tol_c);
    }
    for (const struct rvs_routine_args *a = eval_fast_cases; a->batch && ctx->use_fp64; a++) {
        double e = rvs_routine_check(ctx, &rvs_routine_spline_eval, a);
        CHECK(e >= 0 && e <= tol_c, "eval E=%zu n=%zu N=%zu k=%#zx v=%g: error %.3g > %.3g",
              a->batch, a->n, a->m, a->k, a->param, e, tol_c);
    }
    printf("tolerance (%s): %.1e\n", ctx->use_fp64 ? "fp64" : "fp32", tol_c);
    rvs_context_destroy(&ctx);
}

int main(void)
{
    /* every construction kernel on every device, each in fp64 and fp32, then the evaluation
     * and validation cases with the device's default construction */
    for (int fp32 = 0; fp32 < 2; fp32++) {
        for (const char *const *k = kinds; *k; k++)
            run_all(fp32, *k);
        run_all(fp32, NULL);
    }
    unsetenv("RVSFIT_CL_SPLINE_KERNEL");
    return test_finish("test_spline");
}
