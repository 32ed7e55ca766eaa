/* gemm.c: one GEMM entry point, three back ends. GPUs use CLBlast on device buffers; CPU devices
 * (PoCL) use a host GEMM on the same buffers mapped into host memory, which GPU.md measured ~10x
 * faster than CLBlast through PoCL: the fixed-order one of src/device/gemm_fixed.c by default (a row's
 * result independent of its batch-mates), OpenBLAS on request. Row-major throughout. Every call
 * that reaches a back end is counted in the context (gemm_calls; maps and mapped bytes on the
 * host paths; the work space
 * CLBlast allocates for a non-batched call, from CLBlast[SD]GemmTempBufferSize). */
#include <config.h>

/* first: it fixes the OpenCL API level before clblast_c.h or clFFT.h include CL/cl.h */
#include "base/internal.h"

#include <cblas.h>
#include <clblast_c.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>


const char *rvs_gemm_backend_name(enum rvs_gemm_backend backend)
{
    return backend == RVS_GEMM_OPENBLAS ? "OpenBLAS"
           : backend == RVS_GEMM_HOST   ? "host (fixed order)"
                                        : "CLBlast";
}

/* OpenBLAS core types whose GEMM kernels use AVX2 or AVX-512 (OpenBLAS's names, any case). */
static const char *const openblas_vector_cores[] = {
    "haswell", "skylakex", "cooperlake", "sapphirerapids", "zen", "excavator", NULL};

const char *rvs_openblas_better_coretype(void)
{
#if defined(__x86_64__) || defined(__i386__)
    if (getenv("OPENBLAS_CORETYPE"))
        return NULL; /* the user chose */
    const char *core = openblas_get_corename();
    if (!core)
        return NULL;
    for (const char *const *c = openblas_vector_cores; *c; c++)
        if (strcasecmp(core, *c) == 0)
            return NULL;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return "Haswell";
#endif
    return NULL;
}

/* The process's own arguments from /proc/self/cmdline (NUL-separated), for callers without argv;
 * NULL when unreadable. One allocation: the pointer array, then the strings. */
static char **own_arguments(void)
{
    FILE *in = fopen("/proc/self/cmdline", "rb");
    if (!in)
        return NULL;
    char buf[65536];
    size_t len = fread(buf, 1, sizeof buf - 1, in);
    int complete = feof(in) && !ferror(in);
    fclose(in);
    if (!complete || len == 0)
        return NULL;
    buf[len] = 0;
    size_t count = 0;
    for (size_t i = 0; i < len; i++)
        count += buf[i] == 0;
    if (buf[len - 1] != 0)
        count++;
    char **argv = malloc((count + 1) * sizeof *argv + len + 1);
    if (!argv)
        return NULL;
    char *text = (char *)(argv + count + 1);
    memcpy(text, buf, len + 1);
    size_t a = 0;
    for (size_t i = 0; i < len && a < count; i += strlen(text + i) + 1)
        argv[a++] = text + i;
    argv[a] = NULL;
    return argv;
}

void rvs_openblas_reexec_if_generic(char **argv)
{
    const char *better = rvs_openblas_better_coretype();
    if (!better)
        return;
    char **own = argv ? NULL : own_arguments();
    if (!argv)
        argv = own;
    const char *core = openblas_get_corename();
    if (argv && argv[0] && setenv("OPENBLAS_CORETYPE", better, 1) == 0) {
        rvs_log(RVS_LOG_DEBUG, "gemm", "OpenBLAS chose its %s kernels on a CPU with %s; "
                "running again with OPENBLAS_CORETYPE=%s", core ? core : "?",
                strcmp(better, "SkylakeX") == 0 ? "AVX-512" : "AVX2", better);
        execv("/proc/self/exe", argv);
    }
    /* still here: the generic kernels stay, and the user can do what exec could not */
    free(own);
    unsetenv("OPENBLAS_CORETYPE");
    rvs_log(RVS_LOG_WARNING, "gemm", "OpenBLAS uses its generic %s kernels on this CPU (up to "
            "4x slower for CPU devices); set OPENBLAS_CORETYPE=%s in the environment to use its "
            "vector kernels", core ? core : "?", better);
}

struct gemm_args {
    int is_double;
    enum rvs_transpose ta, tb;
    size_t m, n, k;
    double alpha, beta;
    cl_mem a, b, c;
    size_t a_off, b_off, c_off, lda, ldb, ldc;
    size_t a_stride, b_stride, c_stride, batch; /* batch >= 1 */
};

/* Maps each distinct buffer once (A, B and C may alias) for the host paths: the fixed-order
 * GEMM (src/device/gemm_fixed.c) or OpenBLAS. */
static int gemm_host(struct rvs_context *ctx, const struct gemm_args *g)
{
    int status = RVS_OK;
    cl_mem bufs[3] = {g->a, g->b, g->c};
    void *maps[3] = {NULL, NULL, NULL};
    int owner[3];
    for (int i = 0; i < 3; i++) {
        owner[i] = i;
        for (int j = 0; j < i; j++)
            if (bufs[j] == bufs[i]) {
                owner[i] = j;
                break;
            }
    }
    for (int i = 0; i < 3; i++) {
        if (owner[i] != i)
            continue;
        size_t size;
        RVS_CL_TRY(clGetMemObjectInfo(bufs[i], CL_MEM_SIZE, sizeof size, &size, NULL));
        int writes = bufs[i] == g->c;
        cl_int err;
        maps[i] = clEnqueueMapBuffer(ctx->queue, bufs[i], CL_TRUE,
                                     writes ? CL_MAP_READ | CL_MAP_WRITE : CL_MAP_READ, 0, size, 0,
                                     NULL, NULL, &err);
        RVS_CL_CHECK_ERR(err, "clEnqueueMapBuffer");
        ctx->counters.maps++;
        ctx->counters.bytes_mapped += size;
    }
    enum CBLAS_TRANSPOSE ta = g->ta == RVS_TRANS ? CblasTrans : CblasNoTrans;
    enum CBLAS_TRANSPOSE tb = g->tb == RVS_TRANS ? CblasTrans : CblasNoTrans;
    size_t es = g->is_double ? sizeof(double) : sizeof(float);
    for (size_t i = 0; i < g->batch; i++) {
        size_t ao = g->a_off + i * g->a_stride, bo = g->b_off + i * g->b_stride;
        size_t co = g->c_off + i * g->c_stride;
        if (ctx->gemm_backend == RVS_GEMM_HOST) {
            RVS_TRY(rvs_gemm_fixed_order(g->is_double, g->ta == RVS_TRANS, g->tb == RVS_TRANS,
                                         g->m, g->n, g->k, g->alpha,
                                         (const char *)maps[owner[0]] + ao * es, g->lda,
                                         (const char *)maps[owner[1]] + bo * es, g->ldb, g->beta,
                                         (char *)maps[owner[2]] + co * es, g->ldc));
        } else if (g->is_double)
            cblas_dgemm(CblasRowMajor, ta, tb, (blasint)g->m, (blasint)g->n, (blasint)g->k,
                        g->alpha, (const double *)maps[owner[0]] + ao, (blasint)g->lda,
                        (const double *)maps[owner[1]] + bo, (blasint)g->ldb, g->beta,
                        (double *)maps[owner[2]] + co, (blasint)g->ldc);
        else
            cblas_sgemm(CblasRowMajor, ta, tb, (blasint)g->m, (blasint)g->n, (blasint)g->k,
                        (float)g->alpha, (const float *)maps[owner[0]] + ao, (blasint)g->lda,
                        (const float *)maps[owner[1]] + bo, (blasint)g->ldb, (float)g->beta,
                        (float *)maps[owner[2]] + co, (blasint)g->ldc);
    }
cleanup:
    for (int i = 0; i < 3; i++)
        if (maps[i]) {
            cl_int err = clEnqueueUnmapMemObject(ctx->queue, bufs[i], maps[i], 0, NULL, NULL);
            if (err != CL_SUCCESS && status == RVS_OK) {
                rvs_cl_log_failure(err, "clEnqueueUnmapMemObject", __FILE__, __LINE__);
                status = err;
            }
        }
    return status;
}

/* CLBlast's work space for a non-batched GEMM depends on the device and the call's shape only;
 * asking costs a look-up in its parameter database, so the answers are kept (direct-mapped). */
#define WORK_CACHE 64

struct work_entry {
    cl_device_id device;
    size_t key[10];
    size_t bytes;
    int valid;
};

static pthread_mutex_t work_lock = PTHREAD_MUTEX_INITIALIZER;
static struct work_entry work_cache[WORK_CACHE];

static size_t clblast_work_bytes(struct rvs_context *ctx, const struct gemm_args *g,
                                 CLBlastTranspose ta, CLBlastTranspose tb)
{
    size_t key[10] = {(size_t)g->is_double * 4 + (size_t)ta * 2 + (size_t)tb, g->m, g->n, g->k,
                      g->a_off, g->lda, g->b_off, g->ldb, g->c_off, g->ldc};
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < 10; i++)
        h = (h ^ (uint64_t)key[i]) * 1099511628211ULL;
    struct work_entry *e = &work_cache[h % WORK_CACHE];
    size_t bytes = 0;
    pthread_mutex_lock(&work_lock);
    int hit = e->valid && e->device == ctx->caps.device && memcmp(e->key, key, sizeof key) == 0;
    if (hit)
        bytes = e->bytes;
    pthread_mutex_unlock(&work_lock);
    if (hit)
        return bytes;
    CLBlastStatusCode s =
        g->is_double
            ? CLBlastDGemmTempBufferSize(CLBlastLayoutRowMajor, ta, tb, g->m, g->n, g->k,
                                         g->a_off, g->lda, g->b_off, g->ldb, g->c_off, g->ldc,
                                         &ctx->queue, &bytes)
            : CLBlastSGemmTempBufferSize(CLBlastLayoutRowMajor, ta, tb, g->m, g->n, g->k,
                                         g->a_off, g->lda, g->b_off, g->ldb, g->c_off, g->ldc,
                                         &ctx->queue, &bytes);
    if (s != CLBlastSuccess)
        return 0; /* only the count suffers; the GEMM itself reports real errors */
    /* bytes, 0 when CLBlast will take its direct kernel (its own test, same database) */
    pthread_mutex_lock(&work_lock);
    e->device = ctx->caps.device;
    memcpy(e->key, key, sizeof key);
    e->bytes = bytes;
    e->valid = 1;
    pthread_mutex_unlock(&work_lock);
    return bytes;
}

/* The context's CLBlast work space grown to at least bytes. Without one CLBlast creates and
 * releases a buffer inside every GEMM that needs padding: on an H100 the engine's GEMMs spent
 * ~0.4 ms each on the host (RVSFIT_CL_ENGINE_PROFILE: NN 1.06 s and chi^2 1.55 s of host time in
 * a 5000-target run). In-order queue: GEMMs that share the buffer run one after the other, and
 * a buffer released while queued work still uses it lives until that work is done. */
static int gemm_temp(struct rvs_context *ctx, size_t bytes, cl_mem *temp)
{
    *temp = NULL;
    if (bytes == 0)
        return RVS_OK;
    if (bytes > ctx->gemm_temp_bytes) {
        cl_int err;
        size_t want = bytes + bytes / 4;
        cl_mem b = clCreateBuffer(ctx->context, CL_MEM_READ_WRITE, want, NULL, &err);
        if (err != CL_SUCCESS || !b) {
            rvs_log(RVS_LOG_ERROR, "gemm", "CLBlast work space of %zu bytes could not be "
                    "allocated: %s; try a smaller --batch-size", want, rvs_strerror(err));
            return err != CL_SUCCESS ? err : RVS_ERR_NOMEM;
        }
        if (ctx->gemm_temp)
            clReleaseMemObject(ctx->gemm_temp);
        ctx->gemm_temp = b;
        ctx->gemm_temp_bytes = want;
    }
    *temp = ctx->gemm_temp;
    return RVS_OK;
}

static int gemm_clblast(struct rvs_context *ctx, const struct gemm_args *g)
{
    CLBlastTranspose ta = g->ta == RVS_TRANS ? CLBlastTransposeYes : CLBlastTransposeNo;
    CLBlastTranspose tb = g->tb == RVS_TRANS ? CLBlastTransposeYes : CLBlastTransposeNo;
    CLBlastStatusCode s;
    cl_mem temp = NULL;
    if (g->batch == 1) {
        size_t work = clblast_work_bytes(ctx, g, ta, tb);
        rvs_devmem_gemm_work(ctx, work);
        int status = gemm_temp(ctx, work, &temp);
        if (status != RVS_OK)
            return status;
    }
    if (g->batch > 1 && g->is_double)
        s = CLBlastDgemmStridedBatched(CLBlastLayoutRowMajor, ta, tb, g->m, g->n, g->k, g->alpha,
                                       g->a, g->a_off, g->lda, g->a_stride, g->b, g->b_off,
                                       g->ldb, g->b_stride, g->beta, g->c, g->c_off, g->ldc,
                                       g->c_stride, g->batch, &ctx->queue, NULL);
    else if (g->batch > 1)
        s = CLBlastSgemmStridedBatched(CLBlastLayoutRowMajor, ta, tb, g->m, g->n, g->k,
                                       (float)g->alpha, g->a, g->a_off, g->lda, g->a_stride, g->b,
                                       g->b_off, g->ldb, g->b_stride, (float)g->beta, g->c,
                                       g->c_off, g->ldc, g->c_stride, g->batch, &ctx->queue,
                                       NULL);
    else if (g->is_double && temp)
        s = CLBlastDgemmWithTempBuffer(CLBlastLayoutRowMajor, ta, tb, g->m, g->n, g->k, g->alpha,
                                       g->a, g->a_off, g->lda, g->b, g->b_off, g->ldb, g->beta,
                                       g->c, g->c_off, g->ldc, &ctx->queue, NULL, temp);
    else if (g->is_double)
        s = CLBlastDgemm(CLBlastLayoutRowMajor, ta, tb, g->m, g->n, g->k, g->alpha, g->a,
                         g->a_off, g->lda, g->b, g->b_off, g->ldb, g->beta, g->c, g->c_off, g->ldc,
                         &ctx->queue, NULL);
    else if (temp)
        s = CLBlastSgemmWithTempBuffer(CLBlastLayoutRowMajor, ta, tb, g->m, g->n, g->k,
                                       (float)g->alpha, g->a, g->a_off, g->lda, g->b, g->b_off,
                                       g->ldb, (float)g->beta, g->c, g->c_off, g->ldc,
                                       &ctx->queue, NULL, temp);
    else
        s = CLBlastSgemm(CLBlastLayoutRowMajor, ta, tb, g->m, g->n, g->k, (float)g->alpha, g->a,
                         g->a_off, g->lda, g->b, g->b_off, g->ldb, (float)g->beta, g->c, g->c_off,
                         g->ldc, &ctx->queue, NULL);
    if (s != CLBlastSuccess) {
        rvs_log(RVS_LOG_ERROR, "gemm",
                "CLBlast%cgemm(m=%zu, n=%zu, k=%zu, batch=%zu) failed: %s (%d)",
                g->is_double ? 'D' : 'S', g->m, g->n, g->k, g->batch, rvs_strerror(s), (int)s);
        return s;
    }
    return RVS_OK;
}

static int gemm_dispatch(struct rvs_context *ctx, const struct gemm_args *g)
{
    if (g->m == 0 || g->n == 0 || g->batch == 0)
        return RVS_OK;
    if (g->k == 0) {
        rvs_log(RVS_LOG_ERROR, "gemm", "inner dimension k must be positive");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (g->is_double && !ctx->caps.has_fp64) {
        rvs_log(RVS_LOG_ERROR, "gemm", "double-precision GEMM requested on %s, which lacks fp64",
                ctx->caps.device_name);
        return RVS_ERR_UNSUPPORTED;
    }
    ctx->counters.gemm_calls++;
    return ctx->gemm_backend == RVS_GEMM_CLBLAST ? gemm_clblast(ctx, g) : gemm_host(ctx, g);
}

int rvs_gemm_f32(struct rvs_context *ctx, enum rvs_transpose trans_a, enum rvs_transpose trans_b,
                 size_t m, size_t n, size_t k, float alpha, cl_mem a, size_t a_offset, size_t lda,
                 cl_mem b, size_t b_offset, size_t ldb, float beta, cl_mem c, size_t c_offset,
                 size_t ldc)
{
    return rvs_gemm_batched(ctx, 0, trans_a, trans_b, m, n, k, alpha, a, a_offset, lda, 0, b,
                            b_offset, ldb, 0, beta, c, c_offset, ldc, 0, 1);
}

int rvs_gemm_f64(struct rvs_context *ctx, enum rvs_transpose trans_a, enum rvs_transpose trans_b,
                 size_t m, size_t n, size_t k, double alpha, cl_mem a, size_t a_offset, size_t lda,
                 cl_mem b, size_t b_offset, size_t ldb, double beta, cl_mem c, size_t c_offset,
                 size_t ldc)
{
    return rvs_gemm_batched(ctx, 1, trans_a, trans_b, m, n, k, alpha, a, a_offset, lda, 0, b,
                            b_offset, ldb, 0, beta, c, c_offset, ldc, 0, 1);
}

int rvs_gemm_batched(struct rvs_context *ctx, int is_double, enum rvs_transpose trans_a,
                     enum rvs_transpose trans_b, size_t m, size_t n, size_t k, double alpha,
                     cl_mem a, size_t a_offset, size_t lda, size_t a_stride, cl_mem b,
                     size_t b_offset, size_t ldb, size_t b_stride, double beta, cl_mem c,
                     size_t c_offset, size_t ldc, size_t c_stride, size_t batch)
{
    struct gemm_args g = {.is_double = is_double, .ta = trans_a, .tb = trans_b, .m = m, .n = n,
                          .k = k, .alpha = alpha, .beta = beta, .a = a, .b = b, .c = c,
                          .a_off = a_offset, .b_off = b_offset, .c_off = c_offset, .lda = lda,
                          .ldb = ldb, .ldc = ldc, .a_stride = a_stride, .b_stride = b_stride,
                          .c_stride = c_stride, .batch = batch};
    return gemm_dispatch(ctx, &g);
}

int rvs_gemm_real(struct rvs_context *ctx, enum rvs_transpose trans_a, enum rvs_transpose trans_b,
                  size_t m, size_t n, size_t k, double alpha, cl_mem a, size_t a_offset,
                  size_t lda, cl_mem b, size_t b_offset, size_t ldb, double beta, cl_mem c,
                  size_t c_offset, size_t ldc)
{
    return rvs_gemm_batched(ctx, ctx->use_fp64, trans_a, trans_b, m, n, k, alpha, a, a_offset,
                            lda, 0, b, b_offset, ldb, 0, beta, c, c_offset, ldc, 0, 1);
}
