/* engine.cl: the evaluation engine's own glue kernel (src/engine.c). The NN emulator runs once
 * per unique theta; when one theta is asked with several vsini values, its row is copied to one
 * row per (theta, vsini) before the rotation, so that the NN is not evaluated twice. */

/* dst[r][i] = src[rows[r]][i] for r < nrows, i < npix (row-major, npix per row). Dimension 0
 * is the pixel (contiguous accesses), dimension 1 the destination row. */
__kernel void rvs_engine_gather(__global const rvs_real *src, __global const int *rows,
                                const uint npix, const uint nrows, __global rvs_real *dst)
{
    size_t i = get_global_id(0), r = get_global_id(1);
    if (i >= npix || r >= nrows)
        return;
    dst[r * npix + i] = src[(size_t)rows[r] * npix + i];
}
