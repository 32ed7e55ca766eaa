/* internal.h: helpers shared by librvsfit's modules (not installed). */
#ifndef RVS_INTERNAL_H
#define RVS_INTERNAL_H

#include <stddef.h>

#include "rvsfit.h"

/* Evaluates a status expression; on failure stores it in `status` and jumps to `cleanup`.
 * Every function that uses it declares `int status` and has one `cleanup:` label. */
#define RVS_TRY(expr)                                                                              \
    do {                                                                                           \
        int rvs_try_status_ = (expr);                                                              \
        if (rvs_try_status_ != RVS_OK) {                                                           \
            status = rvs_try_status_;                                                              \
            goto cleanup;                                                                          \
        }                                                                                          \
    } while (0)

/* Runs an OpenCL call that returns cl_int; a failure is logged with the call's text, file and
 * line (like hashcat's wrappers), then handled as RVS_TRY. */
#define RVS_CL_TRY(call)                                                                           \
    do {                                                                                           \
        cl_int rvs_cl_err_ = (call);                                                               \
        if (rvs_cl_err_ != CL_SUCCESS) {                                                           \
            rvs_cl_log_failure(rvs_cl_err_, #call, __FILE__, __LINE__);                            \
            status = rvs_cl_err_;                                                                  \
            goto cleanup;                                                                          \
        }                                                                                          \
    } while (0)

/* For OpenCL calls that report through an out-parameter: `obj = clCreateX(..., &err)`. */
#define RVS_CL_CHECK_ERR(err, what)                                                                \
    do {                                                                                           \
        if ((err) != CL_SUCCESS) {                                                                 \
            rvs_cl_log_failure((err), (what), __FILE__, __LINE__);                                 \
            status = (err);                                                                        \
            goto cleanup;                                                                          \
        }                                                                                          \
    } while (0)

void rvs_cl_log_failure(int err, const char *call, const char *file, int line);

/* Allocation helpers that log on failure. */
void *rvs_malloc(size_t size);
void *rvs_calloc(size_t count, size_t size);
char *rvs_strdup(const char *s);

/* Host threads (src/base/parallel.c): how many are worth starting for `items` independent items of at
 * least `min_items` each (1 .. the online cores, at most max when max > 0), and a run of
 * work(arg, k, n) for k = 0..n-1 (at most 64), k = 0 on the calling thread and the others on
 * threads of their own; a share whose thread cannot start runs on the calling thread. Returns
 * when every share is done. */
size_t rvs_parallel_threads(size_t items, size_t min_items, size_t max);
void rvs_parallel_run(size_t n, void (*work)(void *arg, size_t k, size_t n), void *arg);

/* The path that leads from directory `from` to `to`, both absolute ("/usr/local/bin",
 * "/usr/local/share/rvsfit-cl" -> "../share/rvsfit-cl"; "." when they are the same); 0, or -1
 * when it does not fit in `size` bytes (src/base/datadir.c). */
int rvs_data_dir_relative(const char *from, const char *to, char *out, size_t size);

/* snprintf in the C locale, so numbers in kernel build options never get a decimal comma. */
int rvs_snprintf_c(char *buf, size_t size, const char *fmt, ...) RVS_PRINTF_LIKE(3, 4);

/* Embedded kernel sources (generated at build time from cl/). */
struct rvs_embedded_source {
    const char *name; /* "common.clh", "selftest.cl", ... */
    const unsigned char *data;
    size_t size;
};
extern const struct rvs_embedded_source rvs_embedded_sources[];
extern const size_t rvs_embedded_source_count;

/* Kernel sources: cl/<name> from $RVSFIT_CL_KERNEL_DIR when it holds that file, else embedded.
 * *text is NUL-terminated and owned by the caller; *origin is a static description. */
int rvs_kernel_source_load(const char *file_name, char **text, size_t *size, char *origin,
                           size_t origin_size);

/* SHA-256 (FIPS 180-4), used for cache keys and cache-entry checksums. */
struct rvs_sha256 {
    unsigned int state[8];
    unsigned long long length;
    unsigned char block[64];
    size_t fill;
};
void rvs_sha256_init(struct rvs_sha256 *h);
void rvs_sha256_update(struct rvs_sha256 *h, const void *data, size_t size);
void rvs_sha256_final(struct rvs_sha256 *h, unsigned char digest[32]);
void rvs_sha256_hex(const unsigned char digest[32], char hex[65]);

/* Program-binary cache (src/device/program_cache.c). */
int rvs_program_cache_enabled(void);
/* Directory of cache files, created on demand; NULL when no usable location exists. */
const char *rvs_program_cache_dir(void);
/* Loads the binary stored for `key`; RVS_ERR_CACHE when absent, removes a corrupt entry. */
int rvs_program_cache_load(const char *program_name, const unsigned char key[32],
                           unsigned char **binary, size_t *size, int *was_corrupt);
int rvs_program_cache_store(const char *program_name, const unsigned char key[32],
                            const unsigned char *binary, size_t size);
void rvs_program_cache_remove(const char *program_name, const unsigned char key[32]);

/* Where common.clh and the kernel file sit in the source given to the compiler. */
struct rvs_source_lines {
    unsigned common_last; /* composed lines 2..common_last hold common.clh */
    unsigned body_first;  /* composed line of the kernel file's line 1 */
};
/* Rewrites "<kernel>:N:" references (compilers that ignore #line) to "name.cl:M:" or
 * "common.clh:M:". Returns a new string (caller frees) or NULL without memory. */
char *rvs_program_translate_log(const char *log, const char *name,
                                const struct rvs_source_lines *lines);

/* Built programs owned by a context (src/device/program.c). */
void rvs_program_entries_free(struct rvs_program_entry *entries);

/* Host staging of rvs_real device data (double on fp64 contexts, float otherwise). */
static inline void rvs_real_put(int fp64, void *dst, size_t i, double v)
{
    if (fp64)
        ((double *)dst)[i] = v;
    else
        ((float *)dst)[i] = (float)v;
}
static inline double rvs_real_get(int fp64, const void *src, size_t i)
{
    return fp64 ? ((const double *)src)[i] : (double)((const float *)src)[i];
}
/* Statuses that mean "too much device or host memory asked for": halve the batch and retry. */
static inline int rvs_is_alloc_failure(int status)
{
    return status == CL_MEM_OBJECT_ALLOCATION_FAILURE || status == CL_OUT_OF_RESOURCES ||
           status == CL_OUT_OF_HOST_MEMORY || status == RVS_ERR_NOMEM;
}

/* clFFT's process-wide setup, reference counted (src/device/fft.c). */
int rvs_fft_acquire(void);
void rvs_fft_release(void);
/* clFFT calls counted in ctx->counters (src/device/fft.c); `plan` is a clfftPlanHandle (a size_t in
 * clFFT.h); the results are clfftStatus values. Baking records the plan's intermediate buffer
 * (clfftGetTmpBufSize) as device memory until the plan is destroyed here. */
int rvs_fft_plan_bake(struct rvs_context *ctx, size_t plan);
void rvs_fft_plan_destroy(struct rvs_context *ctx, size_t *plan);
int rvs_fft_transform(struct rvs_context *ctx, size_t plan, int forward, cl_mem buffer);
/* Logs a failed clFFT call (status s != 0) as "<call> (length, batch) failed" under `module`;
 * returns s. */
int rvs_fft_check(int s, const char *module, const char *call, size_t len, size_t batch);

/* A module's baked in-place batched 1-D clFFT plans, keyed by (layout, length, batch), the
 * least recently used one destroyed beyond `capacity` (never one fetched for the launch in
 * progress: a round-robin choice could destroy it, and clFFT then answers "invalid plan").
 * Zero-initialise, then set capacity (<= RVS_FFT_CACHE_MAX), is_double and module. */
enum rvs_fft_layout {
    RVS_FFT_COMPLEX,           /* complex interleaved rows of len, distance len */
    RVS_FFT_REAL_TO_HERMITIAN, /* real rows of len + 2 reals to len / 2 + 1 complex */
    RVS_FFT_HERMITIAN_TO_REAL  /* the inverse of that */
};
#define RVS_FFT_CACHE_MAX 16
struct rvs_fft_plan_cache {
    struct {
        size_t handle, len, batch;
        int layout, used;
        unsigned long long last_use;
    } plan[RVS_FFT_CACHE_MAX];
    size_t capacity;
    int is_double;
    const char *module;
    unsigned long long clock;
};
int rvs_fft_plan_get(struct rvs_context *ctx, struct rvs_fft_plan_cache *cache, int layout,
                     size_t len, size_t batch, size_t *handle);
/* Destroys one plan of the cache (a plan used once need not keep its work space). */
void rvs_fft_plan_drop(struct rvs_context *ctx, struct rvs_fft_plan_cache *cache, size_t handle);
/* Destroys every plan of the cache. */
void rvs_fft_plan_cache_clear(struct rvs_context *ctx, struct rvs_fft_plan_cache *cache);

/* Device memory counted beyond rvs_buffer_create (src/device/devmem.c): a context's entries are dropped
 * when it is destroyed; clFFT work space held (add) or given back; a CLBlast GEMM's work space
 * for the duration of the call. */
void rvs_devmem_forget_context(struct rvs_context *ctx);
void rvs_devmem_fft_work(struct rvs_context *ctx, size_t bytes, int add);
void rvs_devmem_gemm_work(struct rvs_context *ctx, size_t bytes);
/* src/device/gemm_fixed.c: row-major C = alpha op(A) op(B) + beta C on host memory, every element summed
 * by fused multiply-adds in ascending k (bit-identical wherever the row sits); is_double picks
 * double or float elements. RVS_OK or RVS_ERR_NOMEM. */
/* src/base/fits_guard.c: what a FITS file (plain or gzipped) must pass before cfitsio opens it. A
 * gzipped one: a trailer claiming no more than deflate can produce, and a whole stream (CRC and
 * length), since cfitsio allocates the claim and says nothing of a truncated stream. Every one:
 * printable ASCII headers, as the standard demands and cfitsio 4.2.0 needs (it aborts on some
 * that are not). rvs_fits_check_headers: RVS_OK, or RVS_ERR_FORMAT with the HDU and card in why.
 * rvs_fits_guard: all of it, logging "<path>: <why>; <advice>" under module; *uncompressed (may
 * be NULL) gets a gzipped file's length, else -1. Other damage is left to cfitsio and the
 * callers' checks. */
int rvs_fits_check_headers(const char *path, char *why, size_t why_size);
int rvs_fits_guard(const char *path, const char *module, const char *advice,
                   long long *uncompressed);
int rvs_gemm_fixed_order(int is_double, int trans_a, int trans_b, size_t m, size_t n, size_t k,
                         double alpha, const void *a, size_t lda, const void *b, size_t ldb,
                         double beta, void *c, size_t ldc);

/* Known-answer self-test of the built kernels (src/device/selftest.c). */
int rvs_selftest_run(struct rvs_context *ctx);

#endif
