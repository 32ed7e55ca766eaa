/* resolution.cl: the DESI banded resolution matrix applied to many model vectors in one launch.
 *
 * data[ndiag][n] per spectrum, scipy DIA convention (desispec resolution.py; rvspecfit
 * desi/desi_fit.py construct_resolution_sparse_matrix builds dia_matrix with offsets h..-h):
 *     R[i, j] = data[h - (j - i)][j],  conv[i] = sum_{d=-h..h} data[h - d][i + d] model[i + d]
 * over i + d in [0, n). Entries that would belong to rows outside [0, n) are padding.
 *
 * Work decomposition: dimension 0 is a tile of T = get_local_size(0) output pixels, dimension 1 a
 * chunk of `per_group` consecutive requests. Each work-item owns one output pixel i:
 *  - rtile keeps its 2*he+1 coefficients R[i, i-he..i+he] (he = min(h, n-1): diagonals farther
 *    out are all padding). Only that work-item reads them, so no barrier guards rtile; local
 *    memory serves as a private array whose length (ndiag) is known only at run time. It is
 *    reloaded only when the spectrum index changes, so a run of requests of one spectrum reads
 *    the R block from global memory once.
 *  - mtile holds the model pixels [i0 - he, i0 + T + he) of the current request, loaded by the
 *    whole group once (each model value is used by 2*he+1 outputs), zero outside [0, n).
 * Padding coefficients are stored as zero, never read from global memory, so whatever a file
 * holds there (real coadds have small non-zero numbers) cannot leak into the result. */

__kernel void rvs_resolution_apply(__global const float *rdata, const uint ndiag, const uint n,
                                   const uint S, const uint he, __global const rvs_real *models,
                                   __global const int *spectrum_index, const uint E,
                                   const uint per_group, __global rvs_real *out,
                                   __local float *rtile, __local rvs_real *mtile)
{
    const uint t = get_local_id(0);
    const uint T = get_local_size(0);
    const uint i0 = get_group_id(0) * T;
    const uint i = i0 + t;
    const uint h = ndiag / 2;
    const uint width = 2 * he + 1;
    const uint halo_len = T + 2 * he;
    const uint e_begin = get_group_id(1) * per_group;
    const uint e_end = E - e_begin > per_group ? e_begin + per_group : E; /* no overflow */
    int staged = -1; /* spectrum whose coefficients rtile holds */

    for (uint e = e_begin; e < e_end; e++) {
        /* Uniform over the work-group, and every barrier is reached on every iteration (no
         * early continue: PoCL's work-group loops want barriers in plain control flow). */
        const int s = spectrum_index[e];
        const int valid = s >= 0 && (uint)s < S;
        const ulong row = (ulong)e * n;
        if (valid && s != staged) {
            const ulong base = (ulong)s * ndiag * n;
            for (uint r = 0; r < width; r++) {
                /* r = 0 is the offset +he: column j = i + he - r, data row k = h - (j - i) */
                const long j = (long)i + (long)he - (long)r;
                const uint k = h - he + r;
                float c = 0.0f;
                if (i < n && j >= 0 && j < (long)n)
                    c = rdata[base + (ulong)k * n + (ulong)j];
                rtile[r * T + t] = c;
            }
            staged = s;
        }
        barrier(CLK_LOCAL_MEM_FENCE); /* the previous request's readers of mtile are done */
        for (uint q = t; q < halo_len; q += T) {
            const long j = (long)i0 - (long)he + (long)q;
            mtile[q] = (j >= 0 && j < (long)n) ? models[row + (ulong)j] : (rvs_real)0;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        if (i < n && !valid) /* a bad index never addresses memory; NaN makes it visible */
            out[row + i] = (rvs_real)NAN;
        if (i < n && valid) {
            /* coefficient r multiplies model column i + he - r, i.e. mtile[t + 2 he - r].
             * fp32 sums with compensation (signed tangent rows can cancel); fp64 sums plainly:
             * 11 terms lose nothing measurable there, and on PoCL the compensation's branches
             * took 40 % of the stage (7.9 -> 4.8 s on a 100-target realistic fit) */
#if RVS_HAVE_FP64
            rvs_acc acc = 0;
            for (uint r = 0; r < width; r++)
                acc += (rvs_acc)rtile[r * T + t] * (rvs_acc)mtile[t + 2 * he - r];
            out[row + i] = (rvs_real)acc;
#else
            rvs_ksum acc;
            rvs_ksum_init(&acc);
            for (uint r = 0; r < width; r++)
                rvs_ksum_add(&acc, (rvs_acc)rtile[r * T + t] * (rvs_acc)mtile[t + 2 * he - r]);
            out[row + i] = (rvs_real)rvs_ksum_value(&acc);
#endif
        }
    }
}

/* rvs_resolution_apply_blocks: the same product for CPU devices. PoCL runs a work-group as a
 * loop over its work-items and vectorises only innermost loops, so the tiled kernel above, whose
 * innermost loop is the 11 diagonals of one pixel, runs there as scalar code (the largest kernel
 * of a realistic fit on two cores, 15 % of its samples). Here one work-item computes
 * RVS_RES_BLOCK consecutive output pixels of one request with vector types: for each diagonal
 * d, out[i..i+B) += data[h - d][i + d ..] * model[i + d ..], two unaligned vector loads per
 * diagonal, no local memory and no barriers. The diagonals are summed in the tiled kernel's order
 * (d = +he down to -he), plainly in fp64 and compensated in fp32. A block whose columns would
 * leave [0, n) (the first and last he pixels, a short last block) takes the scalar path of
 * rvs_resolution_apply_host; padding is never read.
 * Global size: (ceil(n / B), E); dimension 1 is the request. */
#define RVS_RES_BLOCK 8
#if RVS_HAVE_FP64
typedef double8 rvs_res_vec;
#define rvs_res_convert convert_double8
#else
typedef float8 rvs_res_vec;
#define rvs_res_convert convert_float8
#endif

__kernel void rvs_resolution_apply_blocks(__global const float *rdata, const uint ndiag,
                                          const uint n, const uint S, const uint he,
                                          __global const rvs_real *models,
                                          __global const int *spectrum_index, const uint E,
                                          __global rvs_real *out)
{
    const uint i = (uint)get_global_id(0) * RVS_RES_BLOCK;
    const uint e = (uint)get_global_id(1);
    if (i >= n || e >= E)
        return;
    const uint h = ndiag / 2;
    const ulong row = (ulong)e * n;
    const int s = spectrum_index[e];
    if (!(s >= 0 && (uint)s < S)) { /* a bad index never addresses memory; NaN shows it */
        for (uint q = i; q < n && q < i + RVS_RES_BLOCK; q++)
            out[row + q] = (rvs_real)NAN;
        return;
    }
    __global const float *base = rdata + (ulong)s * ndiag * n;
    __global const rvs_real *m = models + row;
    if (i >= he && i + RVS_RES_BLOCK + he <= n) {
#if RVS_HAVE_FP64
        rvs_res_vec acc = (rvs_res_vec)(0);
        for (uint r = 0; r < 2 * he + 1; r++) {
            const uint j = i + he - r; /* first column of diagonal d = he - r */
            acc += rvs_res_convert(vload8(0, base + (ulong)(h - he + r) * n + j)) *
                   vload8(0, m + j);
        }
#else
        rvs_res_vec acc = (rvs_res_vec)(0), comp = (rvs_res_vec)(0);
        for (uint r = 0; r < 2 * he + 1; r++) {
            const uint j = i + he - r;
            const rvs_res_vec x =
                rvs_res_convert(vload8(0, base + (ulong)(h - he + r) * n + j)) * vload8(0, m + j);
            const rvs_res_vec t = acc + x;
            comp += select((x - t) + acc, (acc - t) + x, isgreaterequal(fabs(acc), fabs(x)));
            acc = t;
        }
        acc += comp;
#endif
        vstore8(acc, 0, out + row + i);
        return;
    }
    for (uint q = i; q < n && q < i + RVS_RES_BLOCK; q++) {
        /* columns q - he' .. q + he' that exist, in the order d = +he .. -he */
        const uint dlo = q < he ? q : he, dhi = n - 1 - q < he ? n - 1 - q : he;
        rvs_ksum acc;
        rvs_ksum_init(&acc);
        for (uint d = 0; d < dhi + dlo + 1; d++) {
            const uint j = q + dhi - d;
            const rvs_acc x = (rvs_acc)base[(ulong)(h + q - j) * n + j] * (rvs_acc)m[j];
#if RVS_HAVE_FP64
            acc.sum += x;
#else
            rvs_ksum_add(&acc, x);
#endif
        }
        out[row + q] = (rvs_real)rvs_ksum_value(&acc);
    }
}
