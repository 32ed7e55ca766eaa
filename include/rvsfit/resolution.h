/* rvsfit/resolution.h: the DESI banded resolution matrix applied to model vectors, batched on the
 * device (one launch for many requests), plus the host-side primitives later data preparation
 * needs (apply, row sums, row scaling).
 *
 * Storage (DESI {B,R,Z}_RESOLUTION, desispec resolution.py, scipy DIA convention): per spectrum a
 * float array data[ndiag][n], ndiag odd, h = ndiag / 2, holding
 *     R[i, j] = data[h - (j - i)][j]   for |j - i| <= h, else 0.
 * Row k of data is the diagonal with offset h - k (k = 0: the uppermost). The entries data[k][j]
 * whose row i = j - h + k falls outside [0, n) are padding: real files hold non-zero values there,
 * and every function below ignores them. */
#ifndef RVSFIT_RESOLUTION_H
#define RVSFIT_RESOLUTION_H

#include <stddef.h>

#include "rvsfit/context.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out[e] = R_{spectrum_index[e]} models[e] for e in [0, E), one kernel launch, enqueued on
 * ctx->queue (in order; the call does not wait).
 *   rdata           S x ndiag x n float32: the matrices exactly as read from the file
 *   models, out     E x n rvs_real (rvs_context_real_size() bytes each); out must not alias
 *                   models or rdata
 *   spectrum_index  E cl_int, each in [0, S). An index outside that range is never used to read
 *                   memory: that request's output row is NaN (so a bad index cannot go unseen).
 * ndiag must be odd (>= 1); ndiag > n is allowed (diagonals beyond n - 1 are all padding).
 * Buffers are checked against these sizes. Accumulates in rvs_acc with compensation (rvs_ksum:
 * double with fp64, compensated float otherwise). For the best memory traffic put
 * the requests of one spectrum next to each other (a velocity scan does): each work-group keeps
 * the R tile of a run of equal indices and reads it from global memory once per run. */
int rvs_resolution_apply(struct rvs_context *ctx, cl_mem rdata, size_t S, size_t ndiag, size_t n,
                         cl_mem models, cl_mem spectrum_index, size_t E, cl_mem out);

/* Host version for one spectrum, in double: out = R model. out must not alias model. */
void rvs_resolution_apply_host(const float *rdata, size_t ndiag, size_t n, const double *model,
                               double *out);

/* sums[i] = sum_j R[i, j] (padding ignored), i in [0, n): what rvspecfit's resolution-matrix
 * path compares with the median row sum before renormalising the edge rows. */
void rvs_resolution_row_sums_host(const float *rdata, size_t ndiag, size_t n, double *sums);

/* Multiplies the entries of row i of R (R[i, j], |j - i| <= h, j in [0, n)) by factor, in place;
 * padding is left alone. With the row sums this is the edge-row renormalisation. */
void rvs_resolution_scale_row_host(float *rdata, size_t ndiag, size_t n, size_t i, double factor);

/* Known-answer check of the kernel (a row of the context's self-test, src/device/selftest.c): returns
 * RVS_ERR_SELFTEST with a description in detail when the device gives a wrong answer. */
int rvs_resolution_selftest(struct rvs_context *ctx, char *detail, size_t detail_size);

#ifdef __cplusplus
}
#endif

#endif
