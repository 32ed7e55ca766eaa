/* context.c: an OpenCL device ready for work: selection, context and queue, precision and GEMM
 * back-end choices, clFFT/CLBlast lifetime, and the kernels' self-test before real work. */
#include <config.h>

/* first: it fixes the OpenCL API level before clblast_c.h or clFFT.h include CL/cl.h */
#include "base/internal.h"

#include <clblast_c.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>


void rvs_context_options_init(struct rvs_context_options *options)
{
    memset(options, 0, sizeof *options);
}

static int env_is_true(const char *name)
{
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0 && strcasecmp(v, "no") != 0 &&
           strcasecmp(v, "off") != 0;
}

/* CPU devices keep buffers in host memory, so a host GEMM can work on them in place: the
 * fixed-order one (src/device/gemm_fixed.c) by default, OpenBLAS on request (faster on some shapes, but
 * its result for a row depends on the row's place in the matrix, hence on the batch).
 * RVSFIT_CL_GEMM=clblast|host|openblas overrides (tests exercise every back end on PoCL). */
static int choose_gemm_backend(struct rvs_context *ctx)
{
    const char *env = getenv("RVSFIT_CL_GEMM");
    int cpu_like = (ctx->caps.type & CL_DEVICE_TYPE_CPU) != 0;
    if (env && *env) {
        if (strcasecmp(env, "clblast") == 0) {
            ctx->gemm_backend = RVS_GEMM_CLBLAST;
        } else if (strcasecmp(env, "openblas") == 0 || strcasecmp(env, "host") == 0) {
            if (!cpu_like) {
                rvs_log(RVS_LOG_ERROR, "context", "RVSFIT_CL_GEMM=%s needs a CPU device; %s is a %s",
                        env, ctx->caps.device_name, rvs_device_type_name(ctx->caps.type));
                return RVS_ERR_INVALID_ARGUMENT;
            }
            ctx->gemm_backend =
                strcasecmp(env, "host") == 0 ? RVS_GEMM_HOST : RVS_GEMM_OPENBLAS;
        } else {
            rvs_log(RVS_LOG_ERROR, "context",
                    "RVSFIT_CL_GEMM=%s: expected clblast, host or openblas", env);
            return RVS_ERR_INVALID_ARGUMENT;
        }
        return RVS_OK;
    }
    ctx->gemm_backend = cpu_like ? RVS_GEMM_HOST : RVS_GEMM_CLBLAST;
    return RVS_OK;
}

/* The preferred work-group multiple is a kernel property (warp/wavefront/SIMD width); read it
 * once from a built kernel so later stages can round their launch sizes. */
static int measure_work_group_multiple(struct rvs_context *ctx)
{
    int status = RVS_OK;
    cl_kernel k = NULL;
    RVS_TRY(rvs_context_kernel(ctx, "selftest", "rvs_selftest_axpy", &k));
    RVS_CL_TRY(clGetKernelWorkGroupInfo(k, ctx->caps.device,
                                        CL_KERNEL_PREFERRED_WORK_GROUP_SIZE_MULTIPLE,
                                        sizeof ctx->caps.preferred_work_group_multiple,
                                        &ctx->caps.preferred_work_group_multiple, NULL));
cleanup:
    if (k)
        clReleaseKernel(k);
    return status;
}

int rvs_context_create(const struct rvs_context_options *options, struct rvs_context **out)
{
    int status = RVS_OK;
    struct rvs_device_list list = {0};
    struct rvs_context *ctx = NULL;
    struct rvs_context_options defaults;
    size_t index = 0;
    *out = NULL;
    if (!options) {
        rvs_context_options_init(&defaults);
        options = &defaults;
    }

    RVS_TRY(rvs_device_list_query(&list));
    RVS_TRY(rvs_device_select(&list, options->device_spec, &index));
    ctx = rvs_calloc(1, sizeof *ctx);
    if (!ctx) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    ctx->caps = list.devices[index];

    cl_int err;
    cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)ctx->caps.platform,
                                     0};
    ctx->context = clCreateContext(props, 1, &ctx->caps.device, NULL, NULL, &err);
    RVS_CL_CHECK_ERR(err, "clCreateContext");
    ctx->queue = clCreateCommandQueue(ctx->context, ctx->caps.device, 0, &err);
    RVS_CL_CHECK_ERR(err, "clCreateCommandQueue");

    ctx->use_fp64 = ctx->caps.has_fp64 && !options->force_fp32 && !env_is_true("RVSFIT_CL_FP32");
    rvs_snprintf_c(ctx->build_options, sizeof ctx->build_options,
                   "-cl-std=CL1.2 -DRVS_HAVE_FP64=%d", ctx->use_fp64);
    RVS_TRY(choose_gemm_backend(ctx));
    ctx->vector_blocks = (ctx->caps.type & CL_DEVICE_TYPE_CPU) != 0;
    const char *blocks = getenv("RVSFIT_CL_VECTOR_BLOCKS");
    if (blocks && *blocks) {
        if (strcmp(blocks, "0") != 0 && strcmp(blocks, "1") != 0) {
            rvs_log(RVS_LOG_ERROR, "context",
                    "RVSFIT_CL_VECTOR_BLOCKS=%s: expected 0 (one pixel per work-item, the GPU "
                    "kernels) or 1 (pixel blocks in vector types, the CPU kernels); unset it for "
                    "the device's default", blocks);
            status = RVS_ERR_INVALID_ARGUMENT;
            goto cleanup;
        }
        ctx->vector_blocks = blocks[0] == '1';
    }
    RVS_TRY(rvs_fft_acquire());
    ctx->fft_ready = 1;

    rvs_log(RVS_LOG_INFO, "context",
            "device %u (%u:%u) %s on %s, driver %s; %s accumulation; GEMM through %s",
            ctx->caps.flat_index, ctx->caps.platform_index, ctx->caps.device_index,
            ctx->caps.device_name, ctx->caps.platform_name, ctx->caps.driver_version,
            ctx->use_fp64 ? "fp64" : "compensated fp32", rvs_gemm_backend_name(ctx->gemm_backend));

    RVS_TRY(measure_work_group_multiple(ctx));
    if (!options->skip_selftest)
        RVS_TRY(rvs_selftest_run(ctx));
    *out = ctx;
    ctx = NULL;
cleanup:
    rvs_context_destroy(&ctx);
    rvs_device_list_free(&list);
    return status;
}

void rvs_context_destroy(struct rvs_context **pctx)
{
    if (!pctx || !*pctx)
        return;
    struct rvs_context *ctx = *pctx;
    if (ctx->queue)
        clFinish(ctx->queue);
    /* CLBlast keeps compiled programs per context; drop them before the context goes. */
    if (ctx->context)
        CLBlastClearCache();
    rvs_program_entries_free(ctx->programs);
    if (ctx->gemm_temp)
        clReleaseMemObject(ctx->gemm_temp);
    if (ctx->fft_ready)
        rvs_fft_release();
    if (ctx->queue)
        clReleaseCommandQueue(ctx->queue);
    if (ctx->context)
        clReleaseContext(ctx->context);
    /* buffers still held are released later without being counted (the context is gone) */
    rvs_devmem_forget_context(ctx);
    free(ctx);
    *pctx = NULL;
}
