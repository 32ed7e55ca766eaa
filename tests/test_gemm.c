/* test_gemm.c: rvs_gemm_f32/f64 against a plain-C double reference, through every back end
 * the device allows (the host ones need a CPU device), with offsets, padded leading
 * dimensions, both transposes and sizes that are not multiples of anything.
 * Tolerance: |C - C_ref| <= eps * 4 * k * max|A||B|-scale + tiny, eps = 2^-24 (f32), 2^-53 (f64). */
#include <config.h>

#include <string.h>

#include "testutil.h"

struct shape {
    size_t m, n, k;
};

static void run_case(struct rvs_context *ctx, int is_double, struct shape s, int ta, int tb)
{
    size_t es = is_double ? sizeof(double) : sizeof(float);
    size_t a_rows = ta ? s.k : s.m, a_cols = ta ? s.m : s.k;
    size_t b_rows = tb ? s.n : s.k, b_cols = tb ? s.k : s.n;
    size_t lda = a_cols + 3, ldb = b_cols + 1, ldc = s.n + 2; /* padded rows */
    size_t a_off = 5, b_off = 2, c_off = 7;
    size_t a_len = a_off + a_rows * lda, b_len = b_off + b_rows * ldb, c_len = c_off + s.m * ldc;
    double *a = malloc(a_len * sizeof *a), *b = malloc(b_len * sizeof *b);
    double *c = malloc(c_len * sizeof *c), *ref = malloc(c_len * sizeof *ref);
    unsigned char *ha = malloc(a_len * es), *hb = malloc(b_len * es), *hc = malloc(c_len * es);
    for (size_t i = 0; i < a_len; i++)
        a[i] = test_uniform(-1, 1);
    for (size_t i = 0; i < b_len; i++)
        b[i] = test_uniform(-1, 1);
    for (size_t i = 0; i < c_len; i++)
        c[i] = test_uniform(-1, 1);
    /* round inputs to the working precision so the reference sees the same numbers */
    for (size_t i = 0; i < a_len; i++) {
        if (!is_double)
            a[i] = (float)a[i];
        is_double ? (void)(((double *)ha)[i] = a[i]) : (void)(((float *)ha)[i] = (float)a[i]);
    }
    for (size_t i = 0; i < b_len; i++) {
        if (!is_double)
            b[i] = (float)b[i];
        is_double ? (void)(((double *)hb)[i] = b[i]) : (void)(((float *)hb)[i] = (float)b[i]);
    }
    for (size_t i = 0; i < c_len; i++) {
        if (!is_double)
            c[i] = (float)c[i];
        is_double ? (void)(((double *)hc)[i] = c[i]) : (void)(((float *)hc)[i] = (float)c[i]);
    }
    double alpha = 0.75, beta = -0.5;
    memcpy(ref, c, c_len * sizeof *ref);
    for (size_t i = 0; i < s.m; i++)
        for (size_t j = 0; j < s.n; j++) {
            long double acc = 0;
            for (size_t l = 0; l < s.k; l++) {
                double av = ta ? a[a_off + l * lda + i] : a[a_off + i * lda + l];
                double bv = tb ? b[b_off + j * ldb + l] : b[b_off + l * ldb + j];
                acc += (long double)av * bv;
            }
            ref[c_off + i * ldc + j] = (double)(alpha * acc + beta * c[c_off + i * ldc + j]);
        }

    cl_int err;
    cl_mem da = clCreateBuffer(ctx->context, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, a_len * es,
                               ha, &err);
    cl_mem db = clCreateBuffer(ctx->context, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, b_len * es,
                               hb, &err);
    cl_mem dc = clCreateBuffer(ctx->context, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, c_len * es,
                               hc, &err);
    int status =
        is_double
            ? rvs_gemm_f64(ctx, ta, tb, s.m, s.n, s.k, alpha, da, a_off, lda, db, b_off, ldb, beta,
                           dc, c_off, ldc)
            : rvs_gemm_f32(ctx, ta, tb, s.m, s.n, s.k, (float)alpha, da, a_off, lda, db, b_off,
                           ldb, (float)beta, dc, c_off, ldc);
    CHECK(status == RVS_OK, "gemm failed: %s", rvs_strerror(status));
    err = clEnqueueReadBuffer(ctx->queue, dc, CL_TRUE, 0, c_len * es, hc, 0, NULL, NULL);
    CHECK(err == CL_SUCCESS, "read back: %s", rvs_strerror(err));
    double eps = is_double ? 0x1p-53 : 0x1p-24;
    double tol = eps * 4.0 * (double)s.k + eps, max_err = 0;
    for (size_t i = 0; i < c_len; i++) {
        double got = is_double ? ((double *)hc)[i] : ((float *)hc)[i];
        double e = fabs(got - ref[i]);
        max_err = e > max_err ? e : max_err;
    }
    CHECK(max_err <= tol, "%s %s gemm %zux%zux%zu ta=%d tb=%d: max error %.3g > %.3g",
          rvs_gemm_backend_name(ctx->gemm_backend), is_double ? "f64" : "f32", s.m, s.n, s.k, ta,
          tb, max_err, tol);
    printf("%-8s %s m=%-4zu n=%-4zu k=%-4zu ta=%d tb=%d max abs error %.2e (tol %.2e)\n",
           rvs_gemm_backend_name(ctx->gemm_backend), is_double ? "f64" : "f32", s.m, s.n, s.k, ta,
           tb, max_err, tol);
    clReleaseMemObject(da);
    clReleaseMemObject(db);
    clReleaseMemObject(dc);
    free(a), free(b), free(c), free(ref), free(ha), free(hb), free(hc);
}

/* A and B in one buffer (the OpenBLAS path must map it once): C = A A^T for a 3x2 A. */
static void run_aliased(struct rvs_context *ctx)
{
    float ab[6] = {1, 2, 3, 4, 5, 6}, c[9] = {0};
    const float want[9] = {5, 11, 17, 11, 25, 39, 17, 39, 61};
    cl_int err;
    cl_mem d = clCreateBuffer(ctx->context, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, sizeof ab,
                              ab, &err);
    cl_mem dc = clCreateBuffer(ctx->context, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, sizeof c, c,
                               &err);
    int status = rvs_gemm_f32(ctx, RVS_NO_TRANS, RVS_TRANS, 3, 3, 2, 1.0f, d, 0, 2, d, 0, 2, 0.0f,
                              dc, 0, 3);
    CHECK(status == RVS_OK, "aliased gemm: %s", rvs_strerror(status));
    err = clEnqueueReadBuffer(ctx->queue, dc, CL_TRUE, 0, sizeof c, c, 0, NULL, NULL);
    CHECK(err == CL_SUCCESS, "read back: %s", rvs_strerror(err));
    for (int i = 0; i < 9; i++)
        CHECK(c[i] == want[i], "aliased gemm C[%d] = %g, want %g", i, c[i], want[i]);
    clReleaseMemObject(d);
    clReleaseMemObject(dc);
}

/* Three independent products in one call, with strides, against the plain-C reference. */
static void run_batched(struct rvs_context *ctx, int is_double)
{
    enum { M = 5, N = 3, K = 4, BATCH = 3, SA = M * K + 2, SB = K * N + 1, SC = M * N + 3 };
    double a[BATCH * SA], b[BATCH * SB], c[BATCH * SC], ref[BATCH * SC];
    float af[BATCH * SA], bf[BATCH * SB], cf[BATCH * SC];
    for (int i = 0; i < BATCH * SA; i++)
        af[i] = (float)(a[i] = (float)test_uniform(-1, 1));
    for (int i = 0; i < BATCH * SB; i++)
        bf[i] = (float)(b[i] = (float)test_uniform(-1, 1));
    for (int i = 0; i < BATCH * SC; i++)
        cf[i] = (float)(c[i] = ref[i] = (float)test_uniform(-1, 1));
    for (int t = 0; t < BATCH; t++)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                double acc = 0;
                for (int l = 0; l < K; l++)
                    acc += a[t * SA + i * K + l] * b[t * SB + l * N + j];
                ref[t * SC + i * N + j] = 2.0 * acc + 0.5 * c[t * SC + i * N + j];
            }
    size_t es = is_double ? sizeof(double) : sizeof(float);
    cl_int err;
    cl_mem da = clCreateBuffer(ctx->context, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, sizeof af * es / 4,
                               is_double ? (void *)a : (void *)af, &err);
    cl_mem db = clCreateBuffer(ctx->context, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, sizeof bf * es / 4,
                               is_double ? (void *)b : (void *)bf, &err);
    cl_mem dc = clCreateBuffer(ctx->context, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, sizeof cf * es / 4,
                               is_double ? (void *)c : (void *)cf, &err);
    int status = rvs_gemm_batched(ctx, is_double, RVS_NO_TRANS, RVS_NO_TRANS, M, N, K, 2.0, da, 0,
                                  K, SA, db, 0, N, SB, 0.5, dc, 0, N, SC, BATCH);
    CHECK(status == RVS_OK, "batched gemm: %s", rvs_strerror(status));
    err = clEnqueueReadBuffer(ctx->queue, dc, CL_TRUE, 0, sizeof cf * es / 4,
                              is_double ? (void *)c : (void *)cf, 0, NULL, NULL);
    CHECK(err == CL_SUCCESS, "read back: %s", rvs_strerror(err));
    double max_err = 0;
    for (int i = 0; i < BATCH * SC; i++) {
        double got = is_double ? c[i] : cf[i];
        max_err = fmax(max_err, fabs(got - ref[i]));
    }
    double tol = is_double ? 1e-14 : 2e-6;
    CHECK(max_err <= tol, "%s batched %s gemm: max error %.3g > %.3g",
          rvs_gemm_backend_name(ctx->gemm_backend), is_double ? "f64" : "f32", max_err, tol);
    printf("%-8s %s batched x%d max abs error %.2e (tol %.0e)\n",
           rvs_gemm_backend_name(ctx->gemm_backend), is_double ? "f64" : "f32", BATCH, max_err,
           tol);
    clReleaseMemObject(da);
    clReleaseMemObject(db);
    clReleaseMemObject(dc);
}

static void run_backend(const char *backend)
{
    static const struct shape shapes[] = {{1, 1, 1}, {7, 5, 3}, {64, 64, 64}, {37, 53, 29},
                                          {100, 7, 300}};
    setenv("RVSFIT_CL_GEMM", backend, 1);
    struct rvs_context *ctx = test_context(1);
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int t = 0; t < 4; t++) {
            run_case(ctx, 0, shapes[i], t & 1, t >> 1);
            if (ctx->caps.has_fp64)
                run_case(ctx, 1, shapes[i], t & 1, t >> 1);
        }
    run_aliased(ctx);
    run_batched(ctx, 0);
    if (ctx->caps.has_fp64)
        run_batched(ctx, 1);
    rvs_context_destroy(&ctx);
}

int main(void)
{
    struct rvs_context *probe = test_context(1);
    int cpu = (probe->caps.type & CL_DEVICE_TYPE_CPU) != 0;
    rvs_context_destroy(&probe);
    if (cpu) {
        run_backend("host");
        run_backend("openblas");
    } else
        printf("device is not a CPU: the host back ends are not applicable\n");
    run_backend("clblast");
    return test_finish("test_gemm");
}
