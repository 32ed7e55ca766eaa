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
