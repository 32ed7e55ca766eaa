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

/* Bytes per rvs_real element on the device: 8 with fp64 accumulation, else 4. */
size_t rvs_context_real_size(const struct rvs_context *ctx);

/* Device-memory helpers that log what failed (with the size) and return a status. */
int rvs_buffer_create(struct rvs_context *ctx, cl_mem_flags flags, size_t bytes,
                      const void *host, cl_mem *buffer);
int rvs_buffer_write(struct rvs_context *ctx, cl_mem buffer, size_t offset, size_t bytes,
                     const void *host);
int rvs_buffer_read(struct rvs_context *ctx, cl_mem buffer, size_t offset, size_t bytes,
                    void *host);
/* Fails (RVS_ERR_INVALID_ARGUMENT, logged under `module` naming the `what` buffer) unless the
 * buffer holds at least `bytes`: the argument check of every batched device call. */
int rvs_buffer_check_size(const char *module, cl_mem buffer, size_t bytes, const char *what);
/* Releases *buffer if set and clears it. */
void rvs_buffer_release(cl_mem *buffer);
/* Sets argument `index` of a kernel, logging the kernel name and index on failure. */
int rvs_kernel_arg(cl_kernel kernel, cl_uint index, size_t size, const void *value);
/* Enqueues a 1-D launch over n items: local = min(local_hint, device limit) (0: the preferred
 * work-group multiple), global rounded up to a multiple of local; kernels check their bound. */
int rvs_kernel_launch_1d(struct rvs_context *ctx, cl_kernel kernel, size_t n, size_t local_hint);
/* 2-D launch: n0 x n1 items, local0 x local1 work-groups (0 means 1 for local1), rounded up. */
int rvs_kernel_launch_2d(struct rvs_context *ctx, cl_kernel kernel, size_t n0, size_t n1,
                         size_t local0, size_t local1);

#ifdef __cplusplus
}
#endif

#endif
