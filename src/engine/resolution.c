/* resolution.c: the DESI resolution matrix (desispec resolution.py, scipy DIA convention) applied
 * to model vectors: the batched device path (cl/resolution.cl), the host primitives later data
 * preparation builds on, and the kernel's known-answer self-test. */
#include <config.h>

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "base/internal.h"
#include "rvsfit/resolution.h"

/* Work-items per group at most: enough pixels to hide the halo (2h of T + 2h model loads). */
#define RESOLUTION_MAX_TILE 256
/* Requests per work-group at most: the R tile is reused across a run of equal indices. */
#define RESOLUTION_MAX_CHUNK 16
/* Aim for at least this many work-groups per compute unit before merging requests. */
#define RESOLUTION_GROUPS_PER_CU 8

/* The entries of row i of R, in the DIA array: R[i, i + d] = data[h - d][i + d] for the d in
 * [-h, h] with i + d in [0, n). One helper so the three host primitives share the index rule. */
static size_t row_first_offset(size_t i, size_t h) { return i < h ? i : h; } /* -d_min */
static size_t row_last_offset(size_t i, size_t h, size_t n)                  /* d_max */
{
    return n - 1 - i < h ? n - 1 - i : h;
}

void rvs_resolution_apply_host(const float *rdata, size_t ndiag, size_t n, const double *model,
                               double *out)
{
    size_t h = ndiag / 2;
    for (size_t i = 0; i < n; i++) {
        size_t lo = row_first_offset(i, h), hi = row_last_offset(i, h, n);
        double acc = 0;
        for (size_t j = i - lo; j <= i + hi; j++) /* k = h - (j - i) */
            acc += (double)rdata[(h + i - j) * n + j] * model[j];
        out[i] = acc;
    }
}

void rvs_resolution_row_sums_host(const float *rdata, size_t ndiag, size_t n, double *sums)
{
    size_t h = ndiag / 2;
    for (size_t i = 0; i < n; i++) {
        size_t lo = row_first_offset(i, h), hi = row_last_offset(i, h, n);
        double acc = 0;
        for (size_t j = i - lo; j <= i + hi; j++)
            acc += (double)rdata[(h + i - j) * n + j];
        sums[i] = acc;
    }
}

void rvs_resolution_scale_row_host(float *rdata, size_t ndiag, size_t n, size_t i, double factor)
{
    size_t h = ndiag / 2;
    if (i >= n)
        return;
    size_t lo = row_first_offset(i, h), hi = row_last_offset(i, h, n);
    for (size_t j = i - lo; j <= i + hi; j++)
        rdata[(h + i - j) * n + j] = (float)((double)rdata[(h + i - j) * n + j] * factor);
}

/* Output pixels per work-item of rvs_resolution_apply_blocks (RVS_RES_BLOCK of the kernel). */
#define RESOLUTION_BLOCK 8

static int product_fits(size_t a, size_t b, size_t c, size_t *out)
{
    if ((b && a > SIZE_MAX / b) || (c && a * b > SIZE_MAX / c))
        return 0;
    *out = a * b * c;
    return 1;
}

static int check_arguments(struct rvs_context *ctx, cl_mem rdata, size_t S, size_t ndiag,
                           size_t n, cl_mem models, cl_mem spectrum_index, size_t E, cl_mem out)
{
    int status = RVS_OK;
    size_t es = rvs_context_real_size(ctx), r_bytes, m_bytes, i_bytes;
    if (ndiag % 2 == 0 || n == 0 || S == 0) {
        rvs_log(RVS_LOG_ERROR, "resolution",
                "invalid resolution-matrix shape: %zu spectra x %zu diagonals x %zu pixels "
                "(need an odd number of diagonals and at least one spectrum and pixel)",
                S, ndiag, n);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (n > UINT_MAX || ndiag > UINT_MAX || S > INT_MAX || E > UINT_MAX) {
        rvs_log(RVS_LOG_ERROR, "resolution", "sizes beyond the kernel's 32-bit counters");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (!rdata || !models || !spectrum_index || !out) {
        rvs_log(RVS_LOG_ERROR, "resolution", "a buffer argument is NULL");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (out == models || out == rdata || out == spectrum_index) {
        rvs_log(RVS_LOG_ERROR, "resolution",
                "the output buffer is also an input; the kernel reads neighbouring pixels of "
                "other work-groups, so it cannot work in place");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (!product_fits(S, ndiag, n * sizeof(float), &r_bytes) ||
        !product_fits(E, n, es, &m_bytes) || !product_fits(E, sizeof(cl_int), 1, &i_bytes)) {
        rvs_log(RVS_LOG_ERROR, "resolution", "buffer sizes overflow size_t");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    RVS_TRY(rvs_buffer_check_size("resolution", rdata, r_bytes, "resolution-matrix"));
    RVS_TRY(rvs_buffer_check_size("resolution", models, m_bytes, "model"));
    RVS_TRY(rvs_buffer_check_size("resolution", spectrum_index, i_bytes, "spectrum-index"));
    RVS_TRY(rvs_buffer_check_size("resolution", out, m_bytes, "output"));
cleanup:
    return status;
}

int rvs_resolution_apply(struct rvs_context *ctx, cl_mem rdata, size_t S, size_t ndiag, size_t n,
                         cl_mem models, cl_mem spectrum_index, size_t E, cl_mem out)
{
    int status = RVS_OK;
    cl_kernel kernel = NULL;
    if (!ctx)
        return RVS_ERR_INVALID_ARGUMENT;
    RVS_TRY(check_arguments(ctx, rdata, S, ndiag, n, models, spectrum_index, E, out));
    if (E == 0)
        return RVS_OK;

    size_t es = rvs_context_real_size(ctx);
    size_t h = ndiag / 2, he = h < n - 1 ? h : n - 1, width = 2 * he + 1;
    /* CPU devices: the vector blocks (PoCL vectorises only innermost loops, and the tiled
     * kernel's is the 11 diagonals of one pixel: 4x slower there); GPUs: the tiled kernel */
    if (ctx->vector_blocks) {
        RVS_TRY(rvs_context_kernel(ctx, "resolution", "rvs_resolution_apply_blocks", &kernel));
        cl_uint b_ndiag = (cl_uint)ndiag, b_n = (cl_uint)n, b_s = (cl_uint)S, b_he = (cl_uint)he;
        cl_uint b_e = (cl_uint)E;
        RVS_TRY(rvs_kernel_arg(kernel, 0, sizeof rdata, &rdata));
        RVS_TRY(rvs_kernel_arg(kernel, 1, sizeof b_ndiag, &b_ndiag));
        RVS_TRY(rvs_kernel_arg(kernel, 2, sizeof b_n, &b_n));
        RVS_TRY(rvs_kernel_arg(kernel, 3, sizeof b_s, &b_s));
        RVS_TRY(rvs_kernel_arg(kernel, 4, sizeof b_he, &b_he));
        RVS_TRY(rvs_kernel_arg(kernel, 5, sizeof models, &models));
        RVS_TRY(rvs_kernel_arg(kernel, 6, sizeof spectrum_index, &spectrum_index));
        RVS_TRY(rvs_kernel_arg(kernel, 7, sizeof b_e, &b_e));
        RVS_TRY(rvs_kernel_arg(kernel, 8, sizeof out, &out));
        RVS_TRY(rvs_kernel_launch_2d(ctx, kernel, (n + RESOLUTION_BLOCK - 1) / RESOLUTION_BLOCK,
                                     E, 0, 0));
        goto cleanup;
    }
    RVS_TRY(rvs_context_kernel(ctx, "resolution", "rvs_resolution_apply", &kernel));

    /* Tile: as large as the kernel, the device's local memory and the row allow. */
    size_t kernel_wg = 0;
    cl_ulong kernel_local = 0;
    RVS_CL_TRY(clGetKernelWorkGroupInfo(kernel, ctx->caps.device, CL_KERNEL_WORK_GROUP_SIZE,
                                        sizeof kernel_wg, &kernel_wg, NULL));
    RVS_CL_TRY(clGetKernelWorkGroupInfo(kernel, ctx->caps.device, CL_KERNEL_LOCAL_MEM_SIZE,
                                        sizeof kernel_local, &kernel_local, NULL));
    size_t multiple = ctx->caps.preferred_work_group_multiple ? ctx->caps.preferred_work_group_multiple
                                                              : 32;
    size_t tile = RESOLUTION_MAX_TILE;
    if (tile > kernel_wg)
        tile = kernel_wg;
    if (tile > (n + multiple - 1) / multiple * multiple)
        tile = (n + multiple - 1) / multiple * multiple;
    cl_ulong local_avail = ctx->caps.local_mem_size > kernel_local
                               ? ctx->caps.local_mem_size - kernel_local : 0;
    cl_ulong fixed = (cl_ulong)2 * he * es, per_item = (cl_ulong)width * sizeof(float) + es;
    if (local_avail <= fixed || (local_avail - fixed) / per_item < 1) {
        rvs_log(RVS_LOG_ERROR, "resolution",
                "%zu diagonals over %zu pixels need more local memory than %s offers (%llu bytes)",
                ndiag, n, ctx->caps.device_name, (unsigned long long)local_avail);
        status = RVS_ERR_UNSUPPORTED;
        goto cleanup;
    }
    if ((local_avail - fixed) / per_item < tile)
        tile = (size_t)((local_avail - fixed) / per_item);
    if (tile > multiple)
        tile = tile / multiple * multiple;

    /* Requests per group: merge while enough groups remain to fill the device. */
    size_t tiles = (n + tile - 1) / tile, chunk = RESOLUTION_MAX_CHUNK;
    size_t want = (size_t)RESOLUTION_GROUPS_PER_CU * (ctx->caps.compute_units ? ctx->caps.compute_units : 1);
    while (chunk > 1 && tiles * ((E + chunk - 1) / chunk) < want)
        chunk /= 2;
    size_t chunks = (E + chunk - 1) / chunk;

    cl_uint a_ndiag = (cl_uint)ndiag, a_n = (cl_uint)n, a_s = (cl_uint)S, a_he = (cl_uint)he;
    cl_uint a_e = (cl_uint)E, a_chunk = (cl_uint)chunk;
    RVS_TRY(rvs_kernel_arg(kernel, 0, sizeof rdata, &rdata));
    RVS_TRY(rvs_kernel_arg(kernel, 1, sizeof a_ndiag, &a_ndiag));
    RVS_TRY(rvs_kernel_arg(kernel, 2, sizeof a_n, &a_n));
    RVS_TRY(rvs_kernel_arg(kernel, 3, sizeof a_s, &a_s));
    RVS_TRY(rvs_kernel_arg(kernel, 4, sizeof a_he, &a_he));
    RVS_TRY(rvs_kernel_arg(kernel, 5, sizeof models, &models));
    RVS_TRY(rvs_kernel_arg(kernel, 6, sizeof spectrum_index, &spectrum_index));
    RVS_TRY(rvs_kernel_arg(kernel, 7, sizeof a_e, &a_e));
    RVS_TRY(rvs_kernel_arg(kernel, 8, sizeof a_chunk, &a_chunk));
    RVS_TRY(rvs_kernel_arg(kernel, 9, sizeof out, &out));
    RVS_TRY(rvs_kernel_arg(kernel, 10, width * tile * sizeof(float), NULL));
    RVS_TRY(rvs_kernel_arg(kernel, 11, (tile + 2 * he) * es, NULL));
    rvs_log(RVS_LOG_DEBUG, "resolution", "E=%zu n=%zu ndiag=%zu: tile %zu, %zu requests/group",
            E, n, ndiag, tile, chunk);
    RVS_TRY(rvs_kernel_launch_2d(ctx, kernel, n, chunks, tile, 1));
cleanup:
    if (kernel)
        clReleaseKernel(kernel);
    return status;
}

/* Known answer on numbers exact in float: two 3-diagonal spectra of 5 pixels, an asymmetric
 * matrix whose columns differ (a transposed or shifted convention gives other numbers) and the
 * identity, with NaN padding that must not leak. Requests: [asymmetric, identity, asymmetric
 * on an impulse at pixel 2 (one column of R)], plus a bad index that must give NaN. */
int rvs_resolution_selftest(struct rvs_context *ctx, char *detail, size_t detail_size)
{
    enum { N = 5, ND = 3, S = 2, E = 4 };
    const float P = NAN;
    const float rdata[S * ND * N] = {
        /* spectrum 0: identity */
        P, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, P,
        /* spectrum 1: R[j-1, j] = j, R[j, j] = 10 (j+1), R[j+1, j] = j + 5 */
        P, 1, 2, 3, 4, 10, 20, 30, 40, 50, 5, 6, 7, 8, P};
    const double model[E * N] = {1, -1, 2, 0.5, 3, 1, -1, 2, 0.5, 3, 0, 0, 1, 0, 0,
                                 1, 1, 1, 1,   1};
    const cl_int index[E] = {1, 0, 1, 2};
    /* by hand: conv[i] = R[i,i-1] m[i-1] + R[i,i] m[i] + R[i,i+1] m[i+1] */
    const double expect[(E - 1) * N] = {9, -11, 55.5, 46, 154, 1, -1, 2, 0.5, 3, 0, 2, 30, 7, 0};
    size_t es = rvs_context_real_size(ctx);
    unsigned char host[E * N * sizeof(double)];
    cl_mem dr = NULL, dm = NULL, di = NULL, dout = NULL;
    int status = RVS_OK;
    for (int i = 0; i < E * N; i++) {
        if (es == sizeof(double))
            ((double *)host)[i] = model[i];
        else
            ((float *)host)[i] = (float)model[i];
    }
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, sizeof rdata, rdata, &dr));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, E * N * es, host, &dm));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, sizeof index, index, &di));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_WRITE_ONLY, E * N * es, NULL, &dout));
    RVS_TRY(rvs_resolution_apply(ctx, dr, S, ND, N, dm, di, E, dout));
    RVS_TRY(rvs_buffer_read(ctx, dout, 0, E * N * es, host));
    for (int i = 0; i < E * N; i++) {
        double got = es == sizeof(double) ? ((double *)host)[i] : ((float *)host)[i];
        int ok = i < (E - 1) * N ? got == expect[i] : isnan(got);
        if (!ok) {
            snprintf(detail, detail_size, "request %d pixel %d = %g, expected %g", i / N, i % N,
                     got, i < (E - 1) * N ? expect[i] : NAN);
            status = RVS_ERR_SELFTEST;
            break;
        }
    }
cleanup:
    rvs_buffer_release(&dr);
    rvs_buffer_release(&dm);
    rvs_buffer_release(&di);
    rvs_buffer_release(&dout);
    return status;
}
