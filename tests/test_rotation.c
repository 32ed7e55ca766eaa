/* test_rotation.c: rotational broadening (rvspecfit's convolve_vsini) against plain C.
 * Host: the library's weights against an independent evaluation of the same integrals
 * (tests/routines/rotation.c) and against brute-force quadrature; sum 1, symmetry, the small-R
 * limit. Device, in the default context (fp64 where present) and with forced fp32, through both
 * paths: random templates at N 1, 7, 64, 1000, 4099, 6000 and vsini 0, tiny, sub-pixel, 1 ... 500
 * km/s (kernels longer than N included), mixed-vsini batches up to T=1000, impulses (result =
 * the weights), constants (interior unchanged), unchanged templates bit for bit, bad calls; the
 * direct path with both of its kernels (vector blocks for CPU devices, a pixel per work-item for
 * GPUs).
 * Tolerances (tests/tolerances.h): weights and fp64 results RVS_TOL_FP64_REL, fp32 results
 * RVS_TOL_FP32_REL (RVS_TOL_ROTATION_FFT_FP32_REL where clFFT runs in float), relative to the
 * largest magnitude of each template's result. FFT lengths are kept to three (128, 1024, 6144):
 * PoCL compiles clFFT's kernels per length, ~25 s for the three per precision on a cold cache. */
#include <config.h>

#include <string.h>

#include "routine.h"
#include "testutil.h"
#include "tolerances.h"

extern const struct rvs_routine rvs_routine_rotation;
size_t rvs_rotation_reference_weights(double R, double eps, double *w, size_t capacity);

#define LNSTEP 8e-5
#define C_KMS 299792.458

/* ------------------------------------------------------------------ host: weights */

/* Unnormalised profile k(x) = 2(1-eps) sqrt(1-x^2) + (pi/2) eps (1-x^2) */
static double profile(double x, double eps)
{
    double q = 1 - x * x;
    return q <= 0 ? 0 : 2 * (1 - eps) * sqrt(q) + M_PI / 2 * eps * q;
}

/* W_k = int_{-1}^{1} Lambda(k - R x) k(x) dx / (pi (1 - eps/3)) by Simpson's rule in
 * x = sin(theta) (smooth at the ends), on pieces split at the hat's knots. */
static double brute_weight(double R, long k, double eps)
{
    double knots[5] = {-1, (k - 1) / R, k / R, (k + 1) / R, 1};
    double total = 0;
    for (int p = 0; p < 4; p++) {
        double a = fmax(-1, fmin(1, knots[p])), b = fmax(-1, fmin(1, knots[p + 1]));
        if (p == 0)
            b = fmax(-1, fmin(1, knots[1]));
        if (!(b > a))
            continue;
        double ta = asin(a), tb = asin(b);
        enum { M = 4000 };
        double h = (tb - ta) / M, sum = 0;
        for (int i = 0; i <= M; i++) {
            double th = ta + i * h, x = sin(th);
            double hat = fmax(0, 1 - fabs(k - R * x));
            double f = hat * profile(x, eps) * cos(th);
            sum += f * (i == 0 || i == M ? 1 : (i % 2 ? 4 : 2));
        }
        total += sum * h / 3;
    }
    return total / (M_PI * (1 - eps / 3));
}

static void test_weights(void)
{
    static const double widths[] = {1e-10, 1e-6, 0.01, 0.3, 0.5, 1, 1.5, 4.2, 12.5, 20.8, 57.3};
    double w[256], ref[256];
    for (size_t c = 0; c < sizeof widths / sizeof widths[0]; c++) {
        double R = widths[c];
        size_t n;
        int status = rvs_rotation_weights(R, RVS_ROTATION_EPS, w, 256, &n);
        CHECK(status == RVS_OK, "weights(R=%g): %s", R, rvs_strerror(status));
        size_t nr = rvs_rotation_reference_weights(R, RVS_ROTATION_EPS, ref, 256);
        CHECK(n == nr && n == rvs_rotation_kernel_length(R), "R=%g: %zu weights, reference %zu",
              R, n, nr);
        if (n != nr)
            continue;
        double err = 0, sum = 0, wmax = 0, asym = 0, neg = 0;
        for (size_t j = 0; j < n; j++) {
            err = fmax(err, fabs(w[j] - ref[j]));
            sum += w[j];
            wmax = fmax(wmax, w[j]);
            asym = fmax(asym, fabs(w[j] - w[n - 1 - j]));
            neg = fmin(neg, w[j]);
        }
        CHECK(err <= RVS_TOL_FP64_REL * wmax, "R=%g: weights differ from the reference by %g", R,
              err);
        CHECK(fabs(sum - 1) <= 1e-14, "R=%g: weights sum to 1%+g", R, sum - 1);
        CHECK(asym == 0, "R=%g: weights not symmetric (%g)", R, asym);
        CHECK(neg >= -1e-17, "R=%g: negative weight %g", R, neg);
        if (R < 1e-9)
            CHECK(n == 1 && w[0] == 1, "R=%g: not the identity", R);
        double brute = 0;
        if (R >= 0.3 && R <= 20.8) {
            long km = (long)(n - 1) / 2;
            for (long k = -km; k <= km; k++)
                brute = fmax(brute, fabs(w[k + km] - brute_weight(R, k, RVS_ROTATION_EPS)));
            CHECK(brute <= 1e-9, "R=%g: weights differ from quadrature by %g", R, brute);
        }
        printf("weights R=%-7g n=%-3zu vs reference %.2e, sum-1 %+.1e, vs quadrature %.2e\n", R,
               n, err, sum - 1, brute);
    }
    /* small-R limit: W_0 = 1 - R E|x|, W_{+-1} = R E|x| / 2, E|x| = int |x| K(x) dx */
    double R = 1e-6;
    size_t n;
    rvs_rotation_weights(R, RVS_ROTATION_EPS, w, 256, &n);
    double e = RVS_ROTATION_EPS, mean_abs = (2 * (1 - e) * 2 / 3.0 + M_PI / 2 * e * 0.5) /
                                            (M_PI * (1 - e / 3));
    CHECK(n == 5 && fabs(w[2] - (1 - R * mean_abs)) < 1e-15 &&
              fabs(w[1] - R * mean_abs / 2) < 1e-15 && w[0] == 0,
          "small-R limit: w = %g %g %g, want 0 %g %g", w[0], w[1], w[2], R * mean_abs / 2,
          1 - R * mean_abs);
    /* capacity and bad widths (refusals log errors on purpose) */
    int level = rvs_log_get_level();
    rvs_log_set_level(RVS_LOG_CRITICAL);
    CHECK(rvs_rotation_weights(4.2, 0.6, w, 3, &n) == RVS_ERR_INVALID_ARGUMENT && n == 13,
          "short capacity not refused");
    CHECK(rvs_rotation_weights(NAN, 0.6, w, 256, &n) == RVS_ERR_INVALID_ARGUMENT,
          "NaN width not refused");
    rvs_log_set_level(level);
}

/* ------------------------------------------------------------------ device */

static double tolerance(const struct rvs_context *ctx)
{
    return ctx->use_fp64 ? RVS_TOL_FP64_REL : RVS_TOL_FP32_REL;
}

static void check_case(struct rvs_context *ctx, struct rvs_routine_args args)
{
    double err = rvs_routine_check(ctx, &rvs_routine_rotation, &args);
    double tol = tolerance(ctx);
    if (!ctx->use_fp64 && args.m != RVS_ROTATION_DIRECT)
        tol = RVS_TOL_ROTATION_FFT_FP32_REL; /* clFFT in float; see tests/tolerances.h */
    CHECK(err >= 0 && err <= tol,
          "%s T=%zu N=%zu path=%zu mixed=%zu vsini=%g: error %.3g > %.3g",
          ctx->use_fp64 ? "fp64" : "fp32", args.batch, args.n, args.m, args.k, args.param, err,
          tol);
}

/* rvs_rotation_apply_rows on host data: x holds n_in input rows of N values, template t reads
 * row in_rows[t] (NULL: row t); the T results into y. */
static int apply_rows_host(struct rvs_context *ctx, struct rvs_rotation *rot, const double *x,
                           size_t n_in, const int *in_rows, size_t T, size_t N,
                           const double *vsini, double *y)
{
    size_t es = rvs_context_real_size(ctx), rows = n_in > T ? n_in : T;
    void *h = malloc(rows * N * es);
    cl_mem din = NULL, dout = NULL;
    for (size_t i = 0; i < n_in * N; i++)
        ctx->use_fp64 ? (void)(((double *)h)[i] = x[i]) : (void)(((float *)h)[i] = (float)x[i]);
    int status = rvs_buffer_create(ctx, CL_MEM_READ_ONLY, n_in * N * es, h, &din);
    if (status == RVS_OK)
        status = rvs_buffer_create(ctx, CL_MEM_READ_WRITE, T * N * es, NULL, &dout);
    if (status == RVS_OK)
        status = rvs_rotation_apply_rows(ctx, rot, din, in_rows, n_in, T, vsini, LNSTEP,
                                         RVS_ROTATION_EPS, dout);
    if (status == RVS_OK)
        status = rvs_buffer_read(ctx, dout, 0, T * N * es, h);
    for (size_t i = 0; status == RVS_OK && i < T * N; i++)
        y[i] = ctx->use_fp64 ? ((double *)h)[i] : ((float *)h)[i];
    rvs_buffer_release(&din);
    rvs_buffer_release(&dout);
    free(h);
    return status;
}

static int apply_host(struct rvs_context *ctx, struct rvs_rotation *rot, const double *x,
                      size_t T, size_t N, const double *vsini, double *y)
{
    return apply_rows_host(ctx, rot, x, T, NULL, T, N, vsini, y);
}

/* rvs_rotation_apply_rows: templates read from chosen input rows (the engine's gather folded in)
 * equal the plain call on a copy gathered on the host, on each path; a row past the input is
 * refused. */
static void test_input_rows(struct rvs_context *ctx, enum rvs_rotation_path path)
{
    enum { N = 300, NIN = 3, T = 5 };
    static const int rows[T] = {2, 0, 2, 1, 0}, past[T] = {2, 0, 3, 1, 0};
    static const double vsini[T] = {50, 0, 100, 50, 300};
    double x[NIN * N], g[T * N], want[T * N], got[T * N];
    struct rvs_rotation *rot = NULL;
    CHECK(rvs_rotation_create(ctx, N, &rot) == RVS_OK, "create");
    rvs_rotation_set_path(rot, path);
    for (size_t i = 0; i < NIN * N; i++)
        x[i] = 1 + 0.4 * sin(0.05 * (double)i) * cos(0.0013 * (double)(i * i % 977));
    for (size_t t = 0; t < T; t++)
        memcpy(g + t * N, x + (size_t)rows[t] * N, N * sizeof *g);
    CHECK(apply_host(ctx, rot, g, T, N, vsini, want) == RVS_OK, "gathered call");
    int status = apply_rows_host(ctx, rot, x, NIN, rows, T, N, vsini, got);
    CHECK(status == RVS_OK, "path %d: apply_rows: %s", (int)path, rvs_strerror(status));
    double err = 0;
    for (size_t i = 0; status == RVS_OK && i < T * N; i++)
        err = fmax(err, fabs(got[i] - want[i]));
    printf("input rows, path %d: max |rows - gathered| %.3g\n", (int)path, err);
    CHECK(err == 0, "path %d: reading input rows differs from a gathered copy by %g", (int)path,
          err);
    int level = rvs_log_get_level();
    rvs_log_set_level(RVS_LOG_CRITICAL);
    CHECK(apply_rows_host(ctx, rot, x, NIN, past, T, N, vsini, got) == RVS_ERR_INVALID_ARGUMENT,
          "an input row past the input was accepted");
    rvs_log_set_level(level);
    rvs_rotation_destroy(&rot);
}

/* Impulses at the edges and inside, at several vsini: each result row is the weights, shifted
 * and cut at the template's ends. Constants: the interior (km from each end) stays constant. */
static void test_impulse_constant(struct rvs_context *ctx, enum rvs_rotation_path path)
{
    enum { T = 12, N = 97 };
    static const double vs[T] = {0, 1, 10, 50, 100, 200, 300, 500, 700, 10, 300, 500};
    static const size_t pos[T] = {48, 0, 96, 5, 48, 1, 95, 30, 48, 0, 96, 60};
    double *x = calloc(T * N, sizeof *x), *y = malloc(T * N * sizeof *y), w[512];
    struct rvs_rotation *rot = NULL;
    CHECK(rvs_rotation_create(ctx, N, &rot) == RVS_OK, "create");
    rvs_rotation_set_path(rot, path);
    for (size_t t = 0; t < T; t++)
        x[t * N + pos[t]] = 1;
    int status = apply_host(ctx, rot, x, T, N, vs, y);
    CHECK(status == RVS_OK, "impulse apply: %s", rvs_strerror(status));
    double err = 0, tol = tolerance(ctx);
    for (size_t t = 0; t < T; t++) {
        size_t n;
        double R = vs[t] > 0 ? vs[t] / C_KMS / LNSTEP : 0;
        rvs_rotation_weights(R, RVS_ROTATION_EPS, w, 512, &n);
        long km = (long)(n - 1) / 2;
        for (long i = 0; i < N; i++) {
            long j = i - (long)pos[t] + km;
            double want = j >= 0 && j < (long)n ? w[j] : 0;
            err = fmax(err, fabs(y[t * N + i] - want));
        }
    }
    CHECK(err <= tol, "impulse path %d: error %.3g > %.3g", (int)path, err, tol);
    printf("impulse  %s path=%d: max abs error %.2e (tol %.1e)\n", ctx->use_fp64 ? "fp64" : "fp32",
           (int)path, err, tol);

    for (size_t i = 0; i < T * N; i++)
        x[i] = 2.5;
    status = apply_host(ctx, rot, x, T, N, vs, y);
    CHECK(status == RVS_OK, "constant apply: %s", rvs_strerror(status));
    err = 0;
    for (size_t t = 0; t < T; t++) {
        double R = vs[t] > 0 ? vs[t] / C_KMS / LNSTEP : 0;
        long km = (long)(rvs_rotation_kernel_length(R) - 1) / 2;
        for (long i = km; i < N - km; i++)
            err = fmax(err, fabs(y[t * N + i] - 2.5) / 2.5);
    }
    CHECK(err <= tol, "constant path %d: error %.3g > %.3g", (int)path, err, tol);
    printf("constant %s path=%d: max rel error %.2e (tol %.1e)\n", ctx->use_fp64 ? "fp64" : "fp32",
           (int)path, err, tol);
    rvs_rotation_destroy(&rot);
    free(x), free(y);
}

/* vsini <= 0 and R < 1e-9 return the template unchanged, bit for bit, whatever the path; bad
 * calls are refused. */
static void test_unchanged_and_errors(struct rvs_context *ctx, enum rvs_rotation_path path)
{
    enum { T = 4, N = 1000 };
    const double vs[T] = {0, -3, 1e-9, 5e-6}; /* R = 0, 0, 4e-11, 2.1e-7 */
    double *x = malloc(T * N * sizeof *x), *y = malloc(T * N * sizeof *y);
    for (size_t i = 0; i < T * N; i++)
        x[i] = ctx->use_fp64 ? test_uniform(-1, 1) : (float)test_uniform(-1, 1);
    struct rvs_rotation *rot = NULL;
    CHECK(rvs_rotation_create(ctx, N, &rot) == RVS_OK, "create");
    rvs_rotation_set_path(rot, path);
    int status = apply_host(ctx, rot, x, T, N, vs, y);
    CHECK(status == RVS_OK, "apply: %s", rvs_strerror(status));
    for (size_t i = 0; i < 3 * N; i++)
        if (y[i] != x[i]) {
            CHECK(0, "path %d: template %zu changed at %zu: %.17g -> %.17g", (int)path, i / N,
                  i % N, x[i], y[i]);
            break;
        }
    /* R = 2e-7 is broadened, barely: W_{+-1} ~ 4e-8 */
    double err = 0;
    for (size_t i = 3 * N; i < 4 * N; i++)
        err = fmax(err, fabs(y[i] - x[i]));
    CHECK(err > 0 || !ctx->use_fp64, "R=2e-7 left unchanged in fp64");
    CHECK(err < 1e-6, "R=2e-7 moved a value by %g", err);

    cl_mem buf = NULL;
    rvs_buffer_create(ctx, CL_MEM_READ_WRITE, N * rvs_context_real_size(ctx), NULL, &buf);
    double v = 100, bad = NAN;
    int level = rvs_log_get_level();
    rvs_log_set_level(RVS_LOG_CRITICAL); /* the refusals below log errors on purpose */
    CHECK(rvs_rotation_apply(ctx, rot, buf, 1, &v, LNSTEP, 0.6, buf) == RVS_ERR_INVALID_ARGUMENT,
          "in == out accepted");
    CHECK(rvs_rotation_apply(ctx, rot, buf, 1, &bad, LNSTEP, 0.6, NULL) ==
              RVS_ERR_INVALID_ARGUMENT,
          "NaN vsini accepted");
    CHECK(rvs_rotation_apply(ctx, rot, buf, 1, &v, 0.0, 0.6, NULL) == RVS_ERR_INVALID_ARGUMENT,
          "lnstep 0 accepted");
    rvs_log_set_level(level);
    rvs_buffer_release(&buf);
    rvs_rotation_destroy(&rot);
    free(x), free(y);
}

/* One rotation object through many batch sizes on the FFT path: more distinct clFFT plans than
 * the object keeps, so plans are evicted between and within launches (a round-robin eviction
 * once destroyed a plan fetched for the launch in progress: "invalid plan" on NVIDIA). Every
 * call must succeed and agree with the direct path. */
static void test_plan_eviction(struct rvs_context *ctx)
{
    enum { N = 500, TMAX = 140 };
    double *x = malloc(TMAX * N * sizeof *x), *yf = malloc(TMAX * N * sizeof *yf);
    double *yd = malloc(TMAX * N * sizeof *yd), vs[TMAX];
    struct rvs_rotation *fft = NULL, *direct = NULL;
    CHECK(rvs_rotation_create(ctx, N, &fft) == RVS_OK && rvs_rotation_create(ctx, N, &direct) ==
          RVS_OK, "create");
    rvs_rotation_set_path(fft, RVS_ROTATION_FFT);
    rvs_rotation_set_path(direct, RVS_ROTATION_DIRECT);
    for (size_t i = 0; i < TMAX * N; i++)
        x[i] = 1 + 0.3 * sin(0.37 * (double)i);
    double worst = 0;
    int failures = 0;
    for (size_t call = 0; call < 60; call++) {
        /* a scrambled order of sizes: plans hit long after they were made, then evictions */
        size_t T = 1 + (call * 37 + (call * call) % 13) % TMAX;
        /* varied kernel widths (slots) and, alternating, a wide kernel that lengthens the FFT */
        for (size_t t = 0; t < T; t++)
            vs[t] = (T % 2 ? 20 : 400) + 7 * (double)((t * 5 + T) % 11);
        if (apply_host(ctx, fft, x, T, N, vs, yf) != RVS_OK ||
            apply_host(ctx, direct, x, T, N, vs, yd) != RVS_OK) {
            failures++;
            continue;
        }
        for (size_t i = 0; i < T * N; i++)
            worst = fmax(worst, fabs(yf[i] - yd[i]));
    }
    printf("  plan eviction: %d failed calls, max |fft - direct| %.3g\n", failures, worst);
    CHECK(failures == 0, "FFT path failed after plan eviction (%d calls)", failures);
    CHECK(worst < (ctx->use_fp64 ? 1e-9 : 1e-4), "FFT vs direct after eviction: %.3g", worst);
    rvs_rotation_destroy(&fft);
    rvs_rotation_destroy(&direct);
    free(x);
    free(yf);
    free(yd);
}

static void run_context(struct rvs_context *ctx)
{
    test_plan_eviction(ctx);
    test_input_rows(ctx, RVS_ROTATION_DIRECT);
    test_input_rows(ctx, RVS_ROTATION_FFT);
    static const size_t sizes[] = {1, 7, 64, 1000, 4099, 6000};
    /* 0, tiny (R = 4e-11), sub-pixel (R = 0.02, 0.42), 1 px and up to R = 20.8 px */
    static const double vsini[] = {0, 1e-9, 0.5, 10, 100, 300, 500};
    for (size_t p = 1; p <= 2; p++)
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
            for (size_t v = 0; v < sizeof vsini / sizeof vsini[0]; v++) {
                size_t T = sizes[i] >= 4099 ? 2 : 5;
                check_case(ctx, (struct rvs_routine_args){.batch = T, .n = sizes[i], .m = p,
                                                          .param = vsini[v], .seed = (unsigned)v});
            }
    /* R = 1 exactly, and mixed batches through each path and AUTO */
    check_case(ctx, (struct rvs_routine_args){.batch = 3, .n = 64, .m = 1, .param = C_KMS * LNSTEP});
    check_case(ctx, (struct rvs_routine_args){.batch = 3, .n = 64, .m = 2, .param = C_KMS * LNSTEP});
    check_case(ctx, (struct rvs_routine_args){.batch = 1000, .n = 6000, .m = 0, .k = 1, .param = 500});
    check_case(ctx, (struct rvs_routine_args){.batch = 300, .n = 4099, .m = 1, .k = 1, .param = 500});
    check_case(ctx, (struct rvs_routine_args){.batch = 300, .n = 4099, .m = 2, .k = 1, .param = 500});
    check_case(ctx, (struct rvs_routine_args){.batch = 97, .n = 7, .m = 2, .k = 1, .param = 1000});
    for (int path = RVS_ROTATION_DIRECT; path <= RVS_ROTATION_FFT; path++) {
        test_impulse_constant(ctx, (enum rvs_rotation_path)path);
        test_unchanged_and_errors(ctx, (enum rvs_rotation_path)path);
    }
}

/* The direct path's cases again with the other direct kernel (vector blocks of 8 pixels on CPU
 * devices, one pixel per work-item on GPUs): both are tested wherever the tests run. */
static void run_other_direct_kernel(struct rvs_context *ctx)
{
    int saved = ctx->vector_blocks;
    ctx->vector_blocks = !saved;
    printf("direct kernel: %s\n", ctx->vector_blocks ? "vector blocks" : "one pixel per work-item");
    test_input_rows(ctx, RVS_ROTATION_DIRECT);
    static const size_t sizes[] = {1, 7, 9, 64, 1000, 4099, 6000};
    static const double vsini[] = {0, 1e-9, 0.5, 10, 100, 300, 500};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        for (size_t v = 0; v < sizeof vsini / sizeof vsini[0]; v++) {
            size_t T = sizes[i] >= 4099 ? 2 : 5;
            check_case(ctx, (struct rvs_routine_args){.batch = T, .n = sizes[i], .m = 1,
                                                      .param = vsini[v], .seed = (unsigned)v});
        }
    check_case(ctx, (struct rvs_routine_args){.batch = 3, .n = 64, .m = 1, .param = C_KMS * LNSTEP});
    check_case(ctx, (struct rvs_routine_args){.batch = 300, .n = 4099, .m = 1, .k = 1, .param = 500});
    test_impulse_constant(ctx, RVS_ROTATION_DIRECT);
    test_unchanged_and_errors(ctx, RVS_ROTATION_DIRECT);
    ctx->vector_blocks = saved;
}

int main(void)
{
    test_weights();
    struct rvs_context *ctx = test_context(0);
    struct rvs_rotation *rot = NULL;
    CHECK(rvs_rotation_create(ctx, 100, &rot) == RVS_OK, "create");
    size_t def = rvs_rotation_fft_threshold(rot);
    rvs_rotation_set_fft_threshold(rot, 3);
    CHECK(rvs_rotation_fft_threshold(rot) == 3, "threshold not set");
    rvs_rotation_set_fft_threshold(rot, 0);
    CHECK(rvs_rotation_fft_threshold(rot) == def, "threshold not reset");
    rvs_rotation_destroy(&rot);
    run_context(ctx);
    run_other_direct_kernel(ctx);
    rvs_context_destroy(&ctx);
    if (getenv("RVSFIT_CL_FP32") == NULL) {
        setenv("RVSFIT_CL_FP32", "1", 1);
        ctx = test_context(0);
        CHECK(!ctx->use_fp64, "forced fp32 context still uses fp64");
        run_context(ctx);
        run_other_direct_kernel(ctx);
        rvs_context_destroy(&ctx);
    }
    return test_finish("test_rotation");
}
