/* gemm_fixed.c: the GEMM of CPU devices, with one summation order for every element.
 *
 * Why not OpenBLAS, which the CPU path used before: OpenBLAS's result for a row depends on
 * where the row sits in the matrix. Its x86 SGEMM micro-kernels accumulate different rows of a
 * tile in different orders, and its threads split the rows where the shape says; the same row
 * placed at rows 0 and 11 of a call came out different in the last bit (Debian 12's 0.3.21,
 * Haswell kernels: 2 of every 12 positions; DGEMM at the threads' split points). The engine puts
 * a target's models wherever its batch-mates leave room, and the optimizer turns last-bit
 * differences into different stopping points, so a target's fit depended on its batch (issue 19,
 * item 15: VRAD of an example target moved 0.03 km/s and [alpha/Fe] 0.7 sigma with
 * --batch-size 1).
 *
 * Here every element is C[i][j] = fma(beta, C[i][j], alpha * s) (alpha * s when beta = 0), the
 * epilogue written as a call so that no compiler contracts it differently, with
 *     s = fma(a[i][K-1], b[K-1][j], ... fma(a[i][1], b[1][j], fma(a[i][0], b[0][j], 0)))
 * in the element type: a fused multiply-add per term, k ascending. A fused multiply-add is
 * rounded once by IEEE 754 whatever computes it, so the vector kernel, the scalar tail and the
 * portable fallback give the same bits, and so does any split of the rows among threads: a row's
 * result depends on its own values only. (CLBlast's kernels on GPUs accumulate each element the
 * same way, one term after another.)
 *
 * Speed: B is packed into panels of PANEL columns (k-major, zero-padded), and a register block of
 * ROWS rows x PANEL columns runs over k, as the OpenBLAS kernels do; rows are shared among host
 * threads. On the development machine's two cores it runs the engine's shapes within ~20 % of
 * OpenBLAS (tests/test_gemm_fixed prints the comparison). */
#include <config.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/internal.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_X86_FMA_KERNEL 1
#endif

/* columns of a packed panel: two AVX registers of floats or of doubles */
#define PANEL_F32 16
#define PANEL_F64 8
/* rows of the register block: 6 x 2 accumulators of 16 AVX registers */
#define ROWS 6
/* rows per thread share at least (thread start-up is ~10 us) */
#define MIN_ROWS_PER_THREAD 24
/* packed panel rows (k values of one panel) per thread share at least */
#define MIN_PACK_PER_THREAD 4096

struct fixed_job {
    int is_double;
    size_t m, n, k, npanel;
    const void *a;
    size_t lda;
    const void *packed; /* npanel x k x PANEL */
    void *c;
    size_t ldc;
    double alpha, beta;
    int fma_hw;
};

/* --- portable element kernels (the reference order; also the tails) --- */

static void rows_f32_portable(const struct fixed_job *j, size_t i0, size_t i1)
{
    const float *a = j->a, *p = j->packed;
    float *c = j->c;
    for (size_t q = 0; q < j->npanel; q++) {
        const float *panel = p + q * j->k * PANEL_F32;
        size_t j0 = q * PANEL_F32, cols = j->n - j0 < PANEL_F32 ? j->n - j0 : PANEL_F32;
        for (size_t i = i0; i < i1; i++) {
            float acc[PANEL_F32] = {0};
            const float *ai = a + i * j->lda;
            for (size_t kk = 0; kk < j->k; kk++)
                for (size_t t = 0; t < PANEL_F32; t++)
                    acc[t] = fmaf(ai[kk], panel[kk * PANEL_F32 + t], acc[t]);
            float *ci = c + i * j->ldc + j0;
            for (size_t t = 0; t < cols; t++)
                ci[t] = j->beta == 0 ? (float)j->alpha * acc[t]
                                     : fmaf((float)j->beta, ci[t], (float)j->alpha * acc[t]);
        }
    }
}

static void rows_f64_portable(const struct fixed_job *j, size_t i0, size_t i1)
{
    const double *a = j->a, *p = j->packed;
    double *c = j->c;
    for (size_t q = 0; q < j->npanel; q++) {
        const double *panel = p + q * j->k * PANEL_F64;
        size_t j0 = q * PANEL_F64, cols = j->n - j0 < PANEL_F64 ? j->n - j0 : PANEL_F64;
        for (size_t i = i0; i < i1; i++) {
            double acc[PANEL_F64] = {0};
            const double *ai = a + i * j->lda;
            for (size_t kk = 0; kk < j->k; kk++)
                for (size_t t = 0; t < PANEL_F64; t++)
                    acc[t] = fma(ai[kk], panel[kk * PANEL_F64 + t], acc[t]);
            double *ci = c + i * j->ldc + j0;
            for (size_t t = 0; t < cols; t++)
                ci[t] = j->beta == 0 ? j->alpha * acc[t] : fma(j->beta, ci[t], j->alpha * acc[t]);
        }
    }
}

#ifdef HAVE_X86_FMA_KERNEL
/* --- AVX2 + FMA kernels: ROWS x PANEL register blocks, the same per-element order --- */

__attribute__((target("avx2,fma"))) static void store_f32(const struct fixed_job *j, float *ci,
                                                         __m256 lo, __m256 hi, size_t cols)
{
    float acc[PANEL_F32];
    _mm256_storeu_ps(acc, lo);
    _mm256_storeu_ps(acc + 8, hi);
    for (size_t t = 0; t < cols; t++)
        ci[t] = j->beta == 0 ? (float)j->alpha * acc[t]
                             : fmaf((float)j->beta, ci[t], (float)j->alpha * acc[t]);
}

__attribute__((target("avx2,fma"))) static void rows_f32_avx2(const struct fixed_job *j,
                                                              size_t i0, size_t i1)
{
    const float *a = j->a, *p = j->packed;
    float *c = j->c;
    const size_t K = j->k, lda = j->lda;
    for (size_t q = 0; q < j->npanel; q++) {
        const float *panel = p + q * K * PANEL_F32;
        size_t j0 = q * PANEL_F32, cols = j->n - j0 < PANEL_F32 ? j->n - j0 : PANEL_F32;
        size_t i = i0;
        for (; i + ROWS <= i1; i += ROWS) {
            __m256 l0 = _mm256_setzero_ps(), h0 = l0, l1 = l0, h1 = l0, l2 = l0, h2 = l0;
            __m256 l3 = l0, h3 = l0, l4 = l0, h4 = l0, l5 = l0, h5 = l0;
            const float *r = a + i * lda;
            for (size_t kk = 0; kk < K; kk++) {
                __m256 b0 = _mm256_loadu_ps(panel + kk * PANEL_F32);
                __m256 b1 = _mm256_loadu_ps(panel + kk * PANEL_F32 + 8);
                __m256 x = _mm256_broadcast_ss(r + kk);
                l0 = _mm256_fmadd_ps(x, b0, l0), h0 = _mm256_fmadd_ps(x, b1, h0);
                x = _mm256_broadcast_ss(r + lda + kk);
                l1 = _mm256_fmadd_ps(x, b0, l1), h1 = _mm256_fmadd_ps(x, b1, h1);
                x = _mm256_broadcast_ss(r + 2 * lda + kk);
                l2 = _mm256_fmadd_ps(x, b0, l2), h2 = _mm256_fmadd_ps(x, b1, h2);
                x = _mm256_broadcast_ss(r + 3 * lda + kk);
                l3 = _mm256_fmadd_ps(x, b0, l3), h3 = _mm256_fmadd_ps(x, b1, h3);
                x = _mm256_broadcast_ss(r + 4 * lda + kk);
                l4 = _mm256_fmadd_ps(x, b0, l4), h4 = _mm256_fmadd_ps(x, b1, h4);
                x = _mm256_broadcast_ss(r + 5 * lda + kk);
                l5 = _mm256_fmadd_ps(x, b0, l5), h5 = _mm256_fmadd_ps(x, b1, h5);
            }
            float *ci = c + i * j->ldc + j0;
            store_f32(j, ci, l0, h0, cols);
            store_f32(j, ci + j->ldc, l1, h1, cols);
            store_f32(j, ci + 2 * j->ldc, l2, h2, cols);
            store_f32(j, ci + 3 * j->ldc, l3, h3, cols);
            store_f32(j, ci + 4 * j->ldc, l4, h4, cols);
            store_f32(j, ci + 5 * j->ldc, l5, h5, cols);
        }
        for (; i < i1; i++) {
            __m256 lo = _mm256_setzero_ps(), hi = lo;
            const float *r = a + i * lda;
            for (size_t kk = 0; kk < K; kk++) {
                __m256 x = _mm256_broadcast_ss(r + kk);
                lo = _mm256_fmadd_ps(x, _mm256_loadu_ps(panel + kk * PANEL_F32), lo);
                hi = _mm256_fmadd_ps(x, _mm256_loadu_ps(panel + kk * PANEL_F32 + 8), hi);
            }
            store_f32(j, c + i * j->ldc + j0, lo, hi, cols);
        }
    }
}

__attribute__((target("avx2,fma"))) static void store_f64(const struct fixed_job *j, double *ci,
                                                         __m256d lo, __m256d hi, size_t cols)
{
    double acc[PANEL_F64];
    _mm256_storeu_pd(acc, lo);
    _mm256_storeu_pd(acc + 4, hi);
    for (size_t t = 0; t < cols; t++)
        ci[t] = j->beta == 0 ? j->alpha * acc[t] : fma(j->beta, ci[t], j->alpha * acc[t]);
}

__attribute__((target("avx2,fma"))) static void rows_f64_avx2(const struct fixed_job *j,
                                                              size_t i0, size_t i1)
{
    const double *a = j->a, *p = j->packed;
    double *c = j->c;
    const size_t K = j->k, lda = j->lda;
    for (size_t q = 0; q < j->npanel; q++) {
        const double *panel = p + q * K * PANEL_F64;
        size_t j0 = q * PANEL_F64, cols = j->n - j0 < PANEL_F64 ? j->n - j0 : PANEL_F64;
        size_t i = i0;
        for (; i + ROWS <= i1; i += ROWS) {
            __m256d l0 = _mm256_setzero_pd(), h0 = l0, l1 = l0, h1 = l0, l2 = l0, h2 = l0;
            __m256d l3 = l0, h3 = l0, l4 = l0, h4 = l0, l5 = l0, h5 = l0;
            const double *r = a + i * lda;
            for (size_t kk = 0; kk < K; kk++) {
                __m256d b0 = _mm256_loadu_pd(panel + kk * PANEL_F64);
                __m256d b1 = _mm256_loadu_pd(panel + kk * PANEL_F64 + 4);
                __m256d x = _mm256_broadcast_sd(r + kk);
                l0 = _mm256_fmadd_pd(x, b0, l0), h0 = _mm256_fmadd_pd(x, b1, h0);
                x = _mm256_broadcast_sd(r + lda + kk);
                l1 = _mm256_fmadd_pd(x, b0, l1), h1 = _mm256_fmadd_pd(x, b1, h1);
                x = _mm256_broadcast_sd(r + 2 * lda + kk);
                l2 = _mm256_fmadd_pd(x, b0, l2), h2 = _mm256_fmadd_pd(x, b1, h2);
                x = _mm256_broadcast_sd(r + 3 * lda + kk);
                l3 = _mm256_fmadd_pd(x, b0, l3), h3 = _mm256_fmadd_pd(x, b1, h3);
                x = _mm256_broadcast_sd(r + 4 * lda + kk);
                l4 = _mm256_fmadd_pd(x, b0, l4), h4 = _mm256_fmadd_pd(x, b1, h4);
                x = _mm256_broadcast_sd(r + 5 * lda + kk);
                l5 = _mm256_fmadd_pd(x, b0, l5), h5 = _mm256_fmadd_pd(x, b1, h5);
            }
            double *ci = c + i * j->ldc + j0;
            store_f64(j, ci, l0, h0, cols);
            store_f64(j, ci + j->ldc, l1, h1, cols);
            store_f64(j, ci + 2 * j->ldc, l2, h2, cols);
            store_f64(j, ci + 3 * j->ldc, l3, h3, cols);
            store_f64(j, ci + 4 * j->ldc, l4, h4, cols);
            store_f64(j, ci + 5 * j->ldc, l5, h5, cols);
        }
        for (; i < i1; i++) {
            __m256d lo = _mm256_setzero_pd(), hi = lo;
            const double *r = a + i * lda;
            for (size_t kk = 0; kk < K; kk++) {
                __m256d x = _mm256_broadcast_sd(r + kk);
                lo = _mm256_fmadd_pd(x, _mm256_loadu_pd(panel + kk * PANEL_F64), lo);
                hi = _mm256_fmadd_pd(x, _mm256_loadu_pd(panel + kk * PANEL_F64 + 4), hi);
            }
            store_f64(j, c + i * j->ldc + j0, lo, hi, cols);
        }
    }
}
#endif

static int cpu_has_fma(void)
{
#ifdef HAVE_X86_FMA_KERNEL
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

static void run_rows(void *arg, size_t share, size_t nshare)
{
    const struct fixed_job *j = arg;
    /* contiguous row ranges; where they split does not change any element */
    size_t i0 = j->m * share / nshare, i1 = j->m * (share + 1) / nshare;
#ifdef HAVE_X86_FMA_KERNEL
    if (j->fma_hw) {
        if (j->is_double)
            rows_f64_avx2(j, i0, i1);
        else
            rows_f32_avx2(j, i0, i1);
        return;
    }
#endif
    if (j->is_double)
        rows_f64_portable(j, i0, i1);
    else
        rows_f32_portable(j, i0, i1);
}

/* op(B) (k x n) into k-major panels of `panel` columns, zero-padded: panels [q0, q1). */
struct pack_job {
    int is_double, trans_b;
    size_t n, k, ldb, panel, npanel;
    const void *b;
    void *out;
};

static void pack_panels(void *arg, size_t share, size_t nshare)
{
    const struct pack_job *p = arg;
    size_t q0 = p->npanel * share / nshare, q1 = p->npanel * (share + 1) / nshare;
    for (size_t q = q0; q < q1; q++)
        for (size_t t = 0; t < p->panel; t++) {
            size_t col = q * p->panel + t;
            for (size_t kk = 0; kk < p->k; kk++) {
                size_t dst = (q * p->k + kk) * p->panel + t;
                size_t src = p->trans_b ? col * p->ldb + kk : kk * p->ldb + col;
                if (p->is_double)
                    ((double *)p->out)[dst] = col < p->n ? ((const double *)p->b)[src] : 0.0;
                else
                    ((float *)p->out)[dst] = col < p->n ? ((const float *)p->b)[src] : 0.0f;
            }
        }
}

int rvs_gemm_fixed_order(int is_double, int trans_a, int trans_b, size_t m, size_t n, size_t k,
                         double alpha, const void *a, size_t lda, const void *b, size_t ldb,
                         double beta, void *c, size_t ldc)
{
    if (m == 0 || n == 0)
        return RVS_OK;
    size_t es = is_double ? sizeof(double) : sizeof(float);
    size_t panel = is_double ? PANEL_F64 : PANEL_F32;
    size_t npanel = (n + panel - 1) / panel;
    void *packed = NULL, *at = NULL;
    if (k > SIZE_MAX / es / panel / (npanel ? npanel : 1))
        return RVS_ERR_NOMEM;
    packed = rvs_malloc(npanel * panel * (k ? k : 1) * es);
    if (!packed)
        return RVS_ERR_NOMEM;
    struct pack_job pack = {.is_double = is_double, .trans_b = trans_b, .n = n, .k = k,
                            .ldb = ldb, .panel = panel, .npanel = npanel, .b = b, .out = packed};
    size_t pack_threads = rvs_parallel_threads(npanel * k, MIN_PACK_PER_THREAD, 0);
    if (pack_threads > 1)
        rvs_parallel_run(pack_threads, pack_panels, &pack);
    else
        pack_panels(&pack, 0, 1);
    if (trans_a) {
        /* op(A) = A^T: the engine never asks; a plain copy keeps one kernel */
        at = rvs_malloc(m * (k ? k : 1) * es);
        if (!at) {
            free(packed);
            return RVS_ERR_NOMEM;
        }
        for (size_t i = 0; i < m; i++)
            for (size_t kk = 0; kk < k; kk++)
                memcpy((char *)at + (i * k + kk) * es, (const char *)a + (kk * lda + i) * es, es);
        a = at;
        lda = k;
    }
    struct fixed_job job = {.is_double = is_double, .m = m, .n = n, .k = k, .npanel = npanel,
                            .a = a, .lda = lda, .packed = packed, .c = c, .ldc = ldc,
                            .alpha = alpha, .beta = beta, .fma_hw = cpu_has_fma()};
    size_t threads = rvs_parallel_threads(m, MIN_ROWS_PER_THREAD, 0);
    if (threads > 1)
        rvs_parallel_run(threads, run_rows, &job);
    else
        run_rows(&job, 0, 1);
    free(packed);
    free(at);
    return RVS_OK;
}
