/* rvsfit/context.h: one OpenCL device ready for work: context, queue, built kernels, BLAS/FFT. */
#ifndef RVSFIT_CONTEXT_H
#define RVSFIT_CONTEXT_H

#include "rvsfit/device.h"
#include "rvsfit/opencl.h"

#ifdef __cplusplus
extern "C" {
#endif

enum rvs_gemm_backend {
    RVS_GEMM_CLBLAST = 0, /* GPUs and other devices with their own memory */
    RVS_GEMM_OPENBLAS = 1 /* CPU devices: cblas on mapped buffers, ~10x CLBlast-on-PoCL */
};

struct rvs_context_options {
    const char *device_spec; /* see rvs_device_select(); NULL = default */
    int force_fp32;          /* use compensated fp32 even where fp64 exists (also RVSFIT_CL_FP32=1) */
    int skip_selftest;       /* for tools that run their own checks */
};

struct rvs_program_stats {
    unsigned built_from_source; /* programs compiled from source in this process */
    unsigned loaded_from_cache; /* programs loaded from the binary cache */
    unsigned cache_rejected;    /* corrupt or mismatching cache entries removed */
};

struct rvs_program_entry; /* built programs, private */

struct rvs_context {
    struct rvs_device_caps caps;
    cl_context context;
    cl_command_queue queue;
    int use_fp64; /* kernels accumulate in double (RVS_HAVE_FP64=1) */
    enum rvs_gemm_backend gemm_backend;
    char build_options[256];
    struct rvs_program_stats stats;
    struct rvs_program_entry *programs;
    int fft_ready;
};

/* Zero-initialised options: default device, fp64 when present, self-test on. */
void rvs_context_options_init(struct rvs_context_options *options);

/* Selects the device, creates context and queue, sets up CLBlast/clFFT, and runs the kernels'
 * known-answer self-test. On failure *out is NULL and the reason has been logged. */
int rvs_context_create(const struct rvs_context_options *options, struct rvs_context **out);
/* Releases everything; accepts NULL and sets *ctx to NULL. */
void rvs_context_destroy(struct rvs_context **ctx);

/* The built program for cl/<name>.cl (e.g. "selftest"), built on first use from the binary cache
 * or from source. The context keeps ownership. */
int rvs_context_program(struct rvs_context *ctx, const char *name, cl_program *program);
/* A new kernel object from program <program_name>; the caller releases it. */
int rvs_context_kernel(struct rvs_context *ctx, const char *program_name, const char *kernel_name,
                       cl_kernel *kernel);

#ifdef __cplusplus
}
#endif

#endif
