/* test_kernel_build.c: builds the trivial self-test program on the test device and runs its
 * kernels on sizes that are and are not work-group multiples, against plain C.
 * Tolerances: axpy within 1 ulp (the device may fuse a*x+y); the compensated sum within 2e-7
 * relative of a long-double reference, with fp64 and with compensated fp32 accumulation. */
#include <config.h>

#include <string.h>

#include "testutil.h"

static void run_axpy(struct rvs_context *ctx, size_t n)
{
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y), *want = malloc(n * sizeof *y);
    cl_int err;
    float a = (float)test_uniform(-2, 2);
    for (size_t i = 0; i < n; i++) {
        x[i] = (float)test_uniform(-1, 1);
        y[i] = (float)test_uniform(-1, 1);
        want[i] = a * x[i] + y[i];
    }
    cl_mem dx = clCreateBuffer(ctx->context, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                               n * sizeof *x, x, &err);
    CHECK(err == CL_SUCCESS, "clCreateBuffer: %s", rvs_strerror(err));
    cl_mem dy = clCreateBuffer(ctx->context, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR,
                               n * sizeof *y, y, &err);
    CHECK(err == CL_SUCCESS, "clCreateBuffer: %s", rvs_strerror(err));
    cl_kernel k = NULL;
    int status = rvs_context_kernel(ctx, "selftest", "rvs_selftest_axpy", &k);
    CHECK(status == RVS_OK, "kernel: %s", rvs_strerror(status));
    if (status != RVS_OK)
        goto done;
    cl_uint nn = (cl_uint)n;
    err = clSetKernelArg(k, 0, sizeof a, &a);
    err |= clSetKernelArg(k, 1, sizeof dx, &dx);
    err |= clSetKernelArg(k, 2, sizeof dy, &dy);
    err |= clSetKernelArg(k, 3, sizeof nn, &nn);
    CHECK(err == CL_SUCCESS, "clSetKernelArg");
    size_t local = 32, global = (n + local - 1) / local * local;
    err = clEnqueueNDRangeKernel(ctx->queue, k, 1, NULL, &global, &local, 0, NULL, NULL);
    CHECK(err == CL_SUCCESS, "launch: %s", rvs_strerror(err));
    err = clEnqueueReadBuffer(ctx->queue, dy, CL_TRUE, 0, n * sizeof *y, y, 0, NULL, NULL);
    CHECK(err == CL_SUCCESS, "read: %s", rvs_strerror(err));
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        if (!test_near(y[i], want[i], 1e-7, 1.2e-7) && bad++ == 0)
            CHECK(0, "axpy n=%zu: y[%zu] = %.9g, want %.9g", n, i, y[i], want[i]);
    printf("axpy n=%zu: %zu element(s) off\n", n, bad);
done:
    if (k)
        clReleaseKernel(k);
    clReleaseMemObject(dx);
    clReleaseMemObject(dy);
    free(x);
    free(y);
    free(want);
}

static void run_sum(struct rvs_context *ctx, size_t n)
{
    float *x = malloc(n * sizeof *x), result = 0;
    long double want = 0;
    cl_int err;
    for (size_t i = 0; i < n; i++) {
        /* a large offset plus small values: naive fp32 summation loses digits here */
        x[i] = (float)(i == 0 ? 1e4 : test_uniform(0, 1e-3));
        want += x[i];
    }
    cl_mem dx = clCreateBuffer(ctx->context, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                               n * sizeof *x, x, &err);
    CHECK(err == CL_SUCCESS, "clCreateBuffer: %s", rvs_strerror(err));
    cl_mem dout = clCreateBuffer(ctx->context, CL_MEM_WRITE_ONLY, sizeof result, NULL, &err);
    CHECK(err == CL_SUCCESS, "clCreateBuffer: %s", rvs_strerror(err));
    cl_kernel k = NULL;
    int status = rvs_context_kernel(ctx, "selftest", "rvs_selftest_sum", &k);
    CHECK(status == RVS_OK, "kernel: %s", rvs_strerror(status));
    if (status == RVS_OK) {
        cl_uint nn = (cl_uint)n;
        err = clSetKernelArg(k, 0, sizeof dx, &dx);
        err |= clSetKernelArg(k, 1, sizeof nn, &nn);
        err |= clSetKernelArg(k, 2, sizeof dout, &dout);
        size_t local = 64, global = 64;
        err |= clEnqueueNDRangeKernel(ctx->queue, k, 1, NULL, &global, &local, 0, NULL, NULL);
        err |= clEnqueueReadBuffer(ctx->queue, dout, CL_TRUE, 0, sizeof result, &result, 0, NULL,
                                   NULL);
        CHECK(err == CL_SUCCESS, "sum launch/read failed");
        double rel = fabs((double)result - (double)want) / (double)want;
        CHECK(rel <= 2e-7, "sum n=%zu (%s): %.9g, want %.9Lg (rel %.2e)", n,
              ctx->use_fp64 ? "fp64" : "fp32", result, want, rel);
        printf("sum n=%zu (%s accumulation): rel error %.2e\n", n,
               ctx->use_fp64 ? "fp64" : "compensated fp32", rel);
        clReleaseKernel(k);
    }
    clReleaseMemObject(dx);
    clReleaseMemObject(dout);
    free(x);
}

static void run_all(struct rvs_context *ctx)
{
    static const size_t sizes[] = {1, 7, 64, 1000, 4099};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        run_axpy(ctx, sizes[i]);
        run_sum(ctx, sizes[i]);
    }
    run_sum(ctx, 200000);
}

int main(void)
{
    struct rvs_context *ctx = test_context(1);
    cl_program p1, p2;
    CHECK(rvs_context_program(ctx, "selftest", &p1) == RVS_OK, "build selftest");
    CHECK(rvs_context_program(ctx, "selftest", &p2) == RVS_OK && p1 == p2,
          "a program is built once per context");
    cl_program missing;
    CHECK(rvs_context_program(ctx, "no_such_kernel_file", &missing) == RVS_ERR_KERNEL_SOURCE,
          "a missing kernel file is RVS_ERR_KERNEL_SOURCE");
    run_all(ctx);
    rvs_context_destroy(&ctx);
    CHECK(ctx == NULL, "destroy clears the pointer");
    rvs_context_destroy(&ctx); /* accepts NULL */

    /* The compensated-fp32 path, forced on a device that may have fp64. */
    setenv("RVSFIT_CL_FP32", "1", 1);
    ctx = test_context(0);
    CHECK(!ctx->use_fp64, "RVSFIT_CL_FP32=1 forces fp32 accumulation");
    run_all(ctx);
    rvs_context_destroy(&ctx);
    unsetenv("RVSFIT_CL_FP32");

    /* RVSFIT_CL_VECTOR_BLOCKS: 0 and 1 choose the kernels, anything else is refused (the
     * default is 1 on CPU devices, 0 elsewhere) */
    for (int v = 0; v < 2; v++) {
        setenv("RVSFIT_CL_VECTOR_BLOCKS", v ? "1" : "0", 1);
        ctx = test_context(0);
        CHECK(ctx->vector_blocks == v, "RVSFIT_CL_VECTOR_BLOCKS=%d gave %d", v, ctx->vector_blocks);
        rvs_context_destroy(&ctx);
    }
    setenv("RVSFIT_CL_VECTOR_BLOCKS", "yes", 1);
    struct rvs_context_options opt;
    rvs_context_options_init(&opt);
    opt.skip_selftest = 1;
    CHECK(rvs_context_create(&opt, &ctx) == RVS_ERR_INVALID_ARGUMENT && ctx == NULL,
          "RVSFIT_CL_VECTOR_BLOCKS=yes was not refused");
    unsetenv("RVSFIT_CL_VECTOR_BLOCKS");
    return test_finish("test_kernel_build");
}
