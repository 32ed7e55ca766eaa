/* rvsfit/gemm.h: one GEMM call with three back ends (CLBlast on GPUs; on CPU devices a host GEMM
 * with one summation order per element by default, OpenBLAS on request: RVSFIT_CL_GEMM). */
#ifndef RVSFIT_GEMM_H
#define RVSFIT_GEMM_H

#include <stddef.h>

#include "rvsfit/context.h"

#ifdef __cplusplus
extern "C" {
#endif

enum rvs_transpose { RVS_NO_TRANS = 0, RVS_TRANS = 1 };

/* C = alpha * op(A) * op(B) + beta * C, row-major, on device buffers with element offsets.
 * op(A) is m x k, op(B) is k x n, C is m x n. Enqueued on ctx->queue (in order); with a host back
 * end (CPU devices) the call waits for the queue and returns when C is written. */
int rvs_gemm_f32(struct rvs_context *ctx, enum rvs_transpose trans_a, enum rvs_transpose trans_b,
                 size_t m, size_t n, size_t k, float alpha, cl_mem a, size_t a_offset, size_t lda,
                 cl_mem b, size_t b_offset, size_t ldb, float beta, cl_mem c, size_t c_offset,
                 size_t ldc);
int rvs_gemm_f64(struct rvs_context *ctx, enum rvs_transpose trans_a, enum rvs_transpose trans_b,
                 size_t m, size_t n, size_t k, double alpha, cl_mem a, size_t a_offset, size_t lda,
                 cl_mem b, size_t b_offset, size_t ldb, double beta, cl_mem c, size_t c_offset,
                 size_t ldc);

/* batch independent GEMMs C_i = alpha op(A_i) op(B_i) + beta C_i, where X_i starts at
 * x_offset + i * x_stride (elements); one CLBlast strided-batched launch on GPUs. is_double
 * selects f64 (the device must have fp64). */
int rvs_gemm_batched(struct rvs_context *ctx, int is_double, enum rvs_transpose trans_a,
                     enum rvs_transpose trans_b, size_t m, size_t n, size_t k, double alpha,
                     cl_mem a, size_t a_offset, size_t lda, size_t a_stride, cl_mem b,
                     size_t b_offset, size_t ldb, size_t b_stride, double beta, cl_mem c,
                     size_t c_offset, size_t ldc, size_t c_stride, size_t batch);

/* GEMM on rvs_real buffers: f64 when ctx->use_fp64, else f32 (see rvs_context_real_size). */
int rvs_gemm_real(struct rvs_context *ctx, enum rvs_transpose trans_a, enum rvs_transpose trans_b,
                  size_t m, size_t n, size_t k, double alpha, cl_mem a, size_t a_offset,
                  size_t lda, cl_mem b, size_t b_offset, size_t ldb, double beta, cl_mem c,
                  size_t c_offset, size_t ldc);

/* "CLBlast", "host (fixed order)" or "OpenBLAS". */
const char *rvs_gemm_backend_name(enum rvs_gemm_backend backend);

/* OpenBLAS chooses its kernels from the CPU model when it is loaded. On a CPU newer than the
 * library (Debian 12's 0.3.21 on Sapphire Rapids) it falls back to its generic SSE3 ("Prescott")
 * kernels, 4x slower than the AVX-512 ones on the same cores; OPENBLAS_CORETYPE overrides the
 * choice, but only before the library is loaded. Returns the core type to ask for (SkylakeX on
 * AVX-512 CPUs, Haswell on AVX2 + FMA ones) when OpenBLAS runs kernels without AVX2 on a CPU
 * that has it and OPENBLAS_CORETYPE is not set; NULL otherwise (also off x86). */
const char *rvs_openblas_better_coretype(void);

/* For a program's main, first thing: when rvs_openblas_better_coretype() names a core type,
 * sets OPENBLAS_CORETYPE to it and executes the program again (/proc/self/exe, the arguments
 * argv, or with argv NULL those of /proc/self/cmdline);
 * returns only when nothing needed to change or the re-execution failed (then OpenBLAS keeps
 * its generic kernels and a warning says how to set OPENBLAS_CORETYPE by hand). */
void rvs_openblas_reexec_if_generic(char **argv);

#ifdef __cplusplus
}
#endif

#endif
