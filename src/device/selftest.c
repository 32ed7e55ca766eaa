/* selftest.c: known-answer checks run once a context is up, before any real work (hashcat's
 * habit): the kernels compile and give exact answers, and both GEMM precisions work through the
 * chosen back end. A failure is logged loudly and stops the caller. Each check is one row of
 * the table at the bottom; later kernel families add theirs there. */
#include <config.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/internal.h"
#include "rvsfit/resolution.h"
#include "rvsfit/nn.h"
#include "rvsfit/spline.h"
#include "rvsfit/rotation.h"
#include "rvsfit/chisq.h"
#include "rvsfit/engine.h"

/* Uploads host data into a new read-write buffer. */
static int upload(struct rvs_context *ctx, const void *data, size_t size, cl_mem *buf)
{
    return rvs_buffer_create(ctx, CL_MEM_READ_WRITE, size, data, buf);
}

static void release(cl_mem *buf) { rvs_buffer_release(buf); }

static int check_axpy(struct rvs_context *ctx, char *detail, size_t detail_size)
{
    enum { N = 1000 }; /* not a multiple of any work-group size */
    int status = RVS_OK;
    float x[N], y[N];
    cl_mem dx = NULL, dy = NULL;
    cl_kernel k = NULL;
    for (int i = 0; i < N; i++) {
        x[i] = (float)i;
        y[i] = 2.0f * (float)i;
    }
    RVS_TRY(upload(ctx, x, sizeof x, &dx));
    RVS_TRY(upload(ctx, y, sizeof y, &dy));
    RVS_TRY(rvs_context_kernel(ctx, "selftest", "rvs_selftest_axpy", &k));
    float a = 3.0f;
    cl_uint n = N;
    RVS_CL_TRY(clSetKernelArg(k, 0, sizeof a, &a));
    RVS_CL_TRY(clSetKernelArg(k, 1, sizeof dx, &dx));
    RVS_CL_TRY(clSetKernelArg(k, 2, sizeof dy, &dy));
    RVS_CL_TRY(clSetKernelArg(k, 3, sizeof n, &n));
    size_t local = 64, global = (N + local - 1) / local * local;
    if (local > ctx->caps.max_work_group_size)
        local = global = N;
    RVS_TRY(rvs_kernel_launch_nd(ctx, k, 1, &global, &local));
    RVS_TRY(rvs_buffer_read(ctx, dy, 0, sizeof y, y));
    for (int i = 0; i < N; i++)
        if (y[i] != 5.0f * (float)i) {
            snprintf(detail, detail_size, "y[%d] = %g, expected %g", i, y[i], 5.0 * i);
            status = RVS_ERR_SELFTEST;
            break;
        }
cleanup:
    if (k)
        clReleaseKernel(k);
    release(&dx);
    release(&dy);
    return status;
}

static int check_sum(struct rvs_context *ctx, char *detail, size_t detail_size)
{
    enum { N = 4099 };
    int status = RVS_OK;
    float *x = NULL, result = 0;
    cl_mem dx = NULL, dout = NULL;
    cl_kernel k = NULL;
    x = rvs_malloc(N * sizeof *x);
    if (!x)
        return RVS_ERR_NOMEM;
    for (int i = 0; i < N; i++)
        x[i] = (float)(i + 1);
    RVS_TRY(upload(ctx, x, N * sizeof *x, &dx));
    RVS_TRY(upload(ctx, &result, sizeof result, &dout));
    RVS_TRY(rvs_context_kernel(ctx, "selftest", "rvs_selftest_sum", &k));
    cl_uint n = N;
    RVS_CL_TRY(clSetKernelArg(k, 0, sizeof dx, &dx));
    RVS_CL_TRY(clSetKernelArg(k, 1, sizeof n, &n));
    RVS_CL_TRY(clSetKernelArg(k, 2, sizeof dout, &dout));
    size_t local = 64, global = 64;
    RVS_TRY(rvs_kernel_launch_nd(ctx, k, 1, &global, &local));
    RVS_TRY(rvs_buffer_read(ctx, dout, 0, sizeof result, &result));
    /* n(n+1)/2 = 8402950 < 2^24: exact in float whatever the accumulation order */
    if (result != 8402950.0f) {
        snprintf(detail, detail_size, "sum = %.1f, expected 8402950", result);
        status = RVS_ERR_SELFTEST;
    }
cleanup:
    if (k)
        clReleaseKernel(k);
    release(&dx);
    release(&dout);
    free(x);
    return status;
}

/* C = 2 A B + C on small integers (exact in any precision), once with A and B stored as given
 * and once stored transposed, so both transpose flags of the back end are exercised. */
static int check_gemm(struct rvs_context *ctx, int is_double, char *detail, size_t detail_size)
{
    int status = RVS_OK;
    const double a[6] = {1, 2, 3, 4, 5, 6};         /* 3x2 */
    const double at[6] = {1, 3, 5, 2, 4, 6};        /* its transpose, 2x3 */
    const double b[8] = {1, 0, 2, 1, 0, 1, 1, 2};   /* 2x4 */
    const double bt[8] = {1, 0, 0, 1, 2, 1, 1, 2};  /* its transpose, 4x2 */
    const double expect[12] = {3, 5, 9, 11, 7, 9, 21, 23, 11, 13, 33, 35};
    size_t es = is_double ? sizeof(double) : sizeof(float);
    unsigned char host[4][12 * sizeof(double)];
    const double *src[4] = {a, at, b, bt};
    const size_t count[4] = {6, 6, 8, 8};
    cl_mem d[4] = {NULL, NULL, NULL, NULL}, dc = NULL;
    unsigned char c_host[12 * sizeof(double)];

    for (int t = 0; t < 4; t++)
        for (size_t i = 0; i < count[t]; i++) {
            if (is_double)
                ((double *)host[t])[i] = src[t][i];
            else
                ((float *)host[t])[i] = (float)src[t][i];
        }
    for (int t = 0; t < 4; t++)
        RVS_TRY(upload(ctx, host[t], count[t] * es, &d[t]));

    for (int variant = 0; variant < 2; variant++) {
        for (int i = 0; i < 12; i++) {
            if (is_double)
                ((double *)c_host)[i] = 1.0;
            else
                ((float *)c_host)[i] = 1.0f;
        }
        release(&dc);
        RVS_TRY(upload(ctx, c_host, 12 * es, &dc));
        enum rvs_transpose tr = variant ? RVS_TRANS : RVS_NO_TRANS;
        cl_mem da = variant ? d[1] : d[0], db = variant ? d[3] : d[2];
        size_t lda = variant ? 3 : 2, ldb = variant ? 2 : 4;
        if (is_double)
            RVS_TRY(rvs_gemm_f64(ctx, tr, tr, 3, 4, 2, 2.0, da, 0, lda, db, 0, ldb, 1.0, dc, 0, 4));
        else
            RVS_TRY(rvs_gemm_f32(ctx, tr, tr, 3, 4, 2, 2.0f, da, 0, lda, db, 0, ldb, 1.0f, dc, 0,
                                 4));
        RVS_TRY(rvs_buffer_read(ctx, dc, 0, 12 * es, c_host));
        for (int i = 0; i < 12; i++) {
            double got = is_double ? ((double *)c_host)[i] : ((float *)c_host)[i];
            if (got != expect[i]) {
                snprintf(detail, detail_size, "%s GEMM (%s) C[%d] = %g, expected %g",
                         rvs_gemm_backend_name(ctx->gemm_backend),
                         variant ? "transposed" : "plain", i, got, expect[i]);
                status = RVS_ERR_SELFTEST;
                goto cleanup;
            }
        }
    }
cleanup:
    for (int t = 0; t < 4; t++)
        release(&d[t]);
    release(&dc);
    return status;
}

static int check_gemm_f32(struct rvs_context *ctx, char *detail, size_t detail_size)
{
    return check_gemm(ctx, 0, detail, detail_size);
}

static int check_gemm_f64(struct rvs_context *ctx, char *detail, size_t detail_size)
{
    return ctx->use_fp64 ? check_gemm(ctx, 1, detail, detail_size) : RVS_OK;
}

struct selftest_case {
    const char *name;
    int (*run)(struct rvs_context *ctx, char *detail, size_t detail_size);
};

static const struct selftest_case selftest_cases[] = {
    {"axpy kernel", check_axpy},
    {"compensated-sum kernel", check_sum},
    {"single-precision GEMM", check_gemm_f32},
    {"double-precision GEMM", check_gemm_f64},
    {"resolution-matrix kernel", rvs_resolution_selftest},
    {"NN emulator (tiny network)", rvs_nn_selftest},
    {"natural spline (linear template, shifted)", rvs_spline_selftest},
    {"rotational broadening of an impulse", rvs_rotation_selftest},
    {"marginalised chi^2", rvs_chisq_selftest},
    {"evaluation engine (flat network, continuum data)", rvs_engine_selftest},
};

int rvs_selftest_run(struct rvs_context *ctx)
{
    for (size_t i = 0; i < sizeof selftest_cases / sizeof selftest_cases[0]; i++) {
        char detail[256] = "";
        int status = selftest_cases[i].run(ctx, detail, sizeof detail);
        if (status == RVS_ERR_SELFTEST) {
            rvs_log(RVS_LOG_CRITICAL, "selftest",
                    "SELF-TEST FAILED on %s: %s: %s. The device or its driver computes wrong "
                    "results; do not trust any output from it (try another --device).",
                    ctx->caps.device_name, selftest_cases[i].name, detail);
            return status;
        }
        if (status != RVS_OK) {
            rvs_log(RVS_LOG_ERROR, "selftest", "self-test '%s' could not run on %s: %s",
                    selftest_cases[i].name, ctx->caps.device_name, rvs_strerror(status));
            return status;
        }
        rvs_log(RVS_LOG_DEBUG, "selftest", "%s: ok", selftest_cases[i].name);
    }
    rvs_log(RVS_LOG_INFO, "selftest", "all %zu known-answer checks passed on %s",
            sizeof selftest_cases / sizeof selftest_cases[0], ctx->caps.device_name);
    return RVS_OK;
}
