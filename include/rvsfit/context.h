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
    RVS_GEMM_OPENBLAS = 1, /* CPU devices, on request: cblas on mapped buffers */
    RVS_GEMM_HOST = 2      /* CPU devices (default): src/device/gemm_fixed.c on mapped buffers, one
                            * summation order per element, so a row's result does not depend
                            * on its batch-mates (OpenBLAS's does); ~10x CLBlast-on-PoCL */
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

/* Device work and memory counted per context (rvs_context_counters_get), at the one place each
 * kind of command is enqueued: kernel launches in rvs_kernel_launch_*, GEMMs in rvs_gemm_*
 * (src/device/gemm.c), clFFT transforms in src/device/fft.c, transfers in rvs_buffer_write/read/fill and the
 * OpenBLAS path's maps, buffers in rvs_buffer_create/rvs_buffer_release. Counts are since
 * rvs_context_create (which includes the self-test) or the last rvs_context_counters_reset.
 * Not counted: what CLBlast and clFFT launch inside one call (a GEMM may be 1-4 kernels, a
 * transform 1-3 passes), their internal buffers other than the two work spaces below, memory
 * the OpenCL driver keeps for itself, and buffers made with clCreateBuffer outside the library.
 * The counters are plain integers: one thread at a time drives a context's queue. */
struct rvs_context_counters {
    unsigned long long kernel_launches; /* our kernels (clEnqueueNDRangeKernel) */
    unsigned long long gemm_calls;      /* rvs_gemm_* calls that reached CLBlast or OpenBLAS */
    unsigned long long fft_transforms;  /* clfftEnqueueTransform calls */
    unsigned long long fills;           /* clEnqueueFillBuffer calls */
    unsigned long long copies;          /* clEnqueueCopyBuffer calls (device to device) */
    unsigned long long writes, reads, maps; /* transfer commands (maps: OpenBLAS path) */
    unsigned long long bytes_to_device; /* writes and buffers created from host data */
    unsigned long long bytes_from_device; /* reads */
    unsigned long long bytes_mapped;    /* buffers mapped for OpenBLAS (no copy on CPU devices) */
    unsigned long long buffers_created, buffers_released;
    size_t mem_current;   /* bytes in live buffers made by rvs_buffer_create */
    size_t mem_peak;      /* largest mem_current */
    size_t fft_work;      /* clFFT's intermediate buffers of the live plans (clfftGetTmpBufSize) */
    size_t gemm_work_max; /* largest work space CLBlast allocates for one non-batched GEMM
                           * (CLBlast[SD]GemmTempBufferSize: 0 when it takes its direct kernel);
                           * batched GEMMs' work space is not known and not counted */
    size_t mem_peak_total; /* largest mem_current + fft_work (+ the GEMM work space of a call) */
};

struct rvs_context {
    struct rvs_device_caps caps;
    cl_context context;
    cl_command_queue queue;
    int use_fp64; /* kernels accumulate in double (RVS_HAVE_FP64=1) */
    /* the CPU kernels: a block of consecutive pixels per work-item in vector types (PoCL
     * vectorises only innermost loops), instead of one pixel per work-item; 1 on CPU devices,
     * RVSFIT_CL_VECTOR_BLOCKS=0|1 overrides, tests set it to run both */
    int vector_blocks;
    enum rvs_gemm_backend gemm_backend;
    char build_options[256];
    struct rvs_program_stats stats;
    struct rvs_program_entry *programs;
    int fft_ready;
    /* CLBlast's work space for non-batched GEMMs, kept and grown across calls (src/device/gemm.c) */
    cl_mem gemm_temp;
    size_t gemm_temp_bytes;
    struct rvs_context_counters counters; /* read with rvs_context_counters_get */
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

/* A copy of the counters (consistent with buffers released on other threads). */
void rvs_context_counters_get(const struct rvs_context *ctx, struct rvs_context_counters *out);
/* Zeroes every count; the peaks restart from the memory held now (mem_current, fft_work). */
void rvs_context_counters_reset(struct rvs_context *ctx);
/* Device commands in a counter set: kernel launches + GEMM calls + FFT transforms + fills +
 * copies. */
unsigned long long rvs_context_counters_commands(const struct rvs_context_counters *c);

/* Bytes per rvs_real element on the device: 8 with fp64 accumulation, else 4. */
size_t rvs_context_real_size(const struct rvs_context *ctx);

/* Device-memory helpers that log what failed (with the size) and return a status; each counts
 * into ctx->counters. A buffer from rvs_buffer_create is held (mem_current) until
 * rvs_buffer_release; with `host` its bytes count as written to the device. */
int rvs_buffer_create(struct rvs_context *ctx, cl_mem_flags flags, size_t bytes,
                      const void *host, cl_mem *buffer);
/* Blocking write and read. */
int rvs_buffer_write(struct rvs_context *ctx, cl_mem buffer, size_t offset, size_t bytes,
                     const void *host);
int rvs_buffer_read(struct rvs_context *ctx, cl_mem buffer, size_t offset, size_t bytes,
                    void *host);
/* Non-blocking write: `host` must stay unchanged until the queue has passed the command (the
 * next blocking call or clFinish). */
int rvs_buffer_write_async(struct rvs_context *ctx, cl_mem buffer, size_t offset, size_t bytes,
                           const void *host);
/* Fills `bytes` from `offset` with copies of a pattern of pattern_size bytes (on the device). */
int rvs_buffer_fill(struct rvs_context *ctx, cl_mem buffer, const void *pattern,
                    size_t pattern_size, size_t offset, size_t bytes);
/* Copies `bytes` from src at src_offset to dst at dst_offset on the device (kernels take whole
 * buffers, so rows computed apart are joined this way). */
int rvs_buffer_copy(struct rvs_context *ctx, cl_mem src, size_t src_offset, cl_mem dst,
                    size_t dst_offset, size_t bytes);
/* Fails (RVS_ERR_INVALID_ARGUMENT, logged under `module` naming the `what` buffer) unless the
 * buffer holds at least `bytes`: the argument check of every batched device call. */
int rvs_buffer_check_size(const char *module, cl_mem buffer, size_t bytes, const char *what);
/* Releases *buffer if set and clears it (and no longer counts it as held). */
void rvs_buffer_release(cl_mem *buffer);
/* Sets argument `index` of a kernel, logging the kernel name and index on failure. */
int rvs_kernel_arg(cl_kernel kernel, cl_uint index, size_t size, const void *value);
/* Enqueues a 1-D launch over n items: local = min(local_hint, device limit) (0: the preferred
 * work-group multiple), global rounded up to a multiple of local; kernels check their bound. */
int rvs_kernel_launch_1d(struct rvs_context *ctx, cl_kernel kernel, size_t n, size_t local_hint);
/* 2-D launch: n0 x n1 items, local0 x local1 work-groups (0 means 1 for local1), rounded up. */
int rvs_kernel_launch_2d(struct rvs_context *ctx, cl_kernel kernel, size_t n0, size_t n1,
                         size_t local0, size_t local1);
/* A launch with exactly these sizes (local may be NULL), for kernels that need one work-group
 * size; logs the kernel name on failure. */
int rvs_kernel_launch_nd(struct rvs_context *ctx, cl_kernel kernel, cl_uint dims,
                         const size_t *global, const size_t *local);

#ifdef __cplusplus
}
#endif

#endif
