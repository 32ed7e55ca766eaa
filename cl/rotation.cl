/* rotation.cl: rotational broadening of a batch of templates (rvspecfit's convolve_vsini,
 * py/rvspecfit/spec_fit.py): 'same'-mode convolution with a per-template symmetric kernel of
 * 2*km+1 weights, either directly or through clFFT (pad, pointwise product, crop here; the
 * transforms themselves are clFFT's).
 *
 * Metadata is one int buffer `meta` uploaded per call; the host passes the offsets of its
 * sections: tmpl_slot[t] (kernel slot of template t), slot_woff[s] and slot_km[s] (where slot s's
 * weights start in `weights`, and its half-width), and row lists (which templates a launch
 * covers). Templates are rows of npix rvs_real values. */

/* Pixel i of the 'same'-mode convolution of row x with the weights w[-km..km] (zeros outside
 * [0, npix)): plain in fp64; in fp32 compensated with Knuth's branch-free TwoSum rather than
 * rvs_ksum's compare, which vectorises on CPU devices (the fp32 direct path ~2x faster on PoCL),
 * same accuracy for these sums. */
static inline rvs_real direct_pixel(__global const rvs_real *w, __global const rvs_real *x, int i,
                                    int km, int npix)
{
    int lo = max(-km, -i), hi = min(km, npix - 1 - i);
#if RVS_HAVE_FP64
    rvs_acc acc = 0;
    for (int d = lo; d <= hi; d++)
        acc += (rvs_acc)w[d] * (rvs_acc)x[i + d];
    return (rvs_real)acc;
#else
    float sum = 0, comp = 0;
    for (int d = lo; d <= hi; d++) {
        float y = w[d] * x[i + d];
        float t = sum + y;
        float z = t - sum;
        comp += (sum - (t - z)) + (y - z);
        sum = t;
    }
    return sum + comp;
#endif
}

/* Direct convolution: out[t][i] = sum_{d=-km..km} w[km+d] * in[src][i+d] with zeros outside
 * [0, npix), src = meta[in_row + t] (the input row of template t: the engine's gather of
 * emulator rows folded in). Work-item (i, r) computes pixel i of template rows[r]. In fp32 the
 * sum is compensated so that kernels of ~100 weights stay within a few ulp; in fp64 it is
 * plain. */
__kernel void rvs_rotation_direct(__global const rvs_real *in, __global rvs_real *out,
                                  __global const rvs_real *weights, __global const int *meta,
                                  const int tmpl_slot, const int slot_woff, const int slot_km,
                                  const int rows, const int nrows, const int npix,
                                  const int in_row)
{
    int i = (int)get_global_id(0);
    int r = (int)get_global_id(1);
    if (i >= npix || r >= nrows)
        return;
    int t = meta[rows + r];
    int s = meta[tmpl_slot + t];
    int km = meta[slot_km + s];
    __global const rvs_real *w = weights + meta[slot_woff + s] + km;
    __global const rvs_real *x = in + (size_t)meta[in_row + t] * (size_t)npix;
    out[(size_t)t * (size_t)npix + i] = direct_pixel(w, x, i, km, npix);
}

/* rvs_rotation_direct for CPU devices (context's vector_blocks): one work-item computes
 * RVS_ROT_BLOCK consecutive pixels of one row with vector types, acc += w[d] * x[i+d .. i+d+B)
 * for each weight, because PoCL vectorises only innermost loops and rvs_rotation_direct's is the
 * weights of one pixel. The weights are summed in the same order (d = lo .. hi); a block whose
 * taps would leave [0, npix) takes rvs_rotation_direct's direct_pixel. Global size:
 * (ceil(npix / B), nrows). */
#define RVS_ROT_BLOCK 8
__kernel void rvs_rotation_direct_blocks(__global const rvs_real *in, __global rvs_real *out,
                                         __global const rvs_real *weights,
                                         __global const int *meta, const int tmpl_slot,
                                         const int slot_woff, const int slot_km, const int rows,
                                         const int nrows, const int npix, const int in_row)
{
    int i0 = (int)get_global_id(0) * RVS_ROT_BLOCK;
    int r = (int)get_global_id(1);
    if (i0 >= npix || r >= nrows)
        return;
    int t = meta[rows + r];
    int s = meta[tmpl_slot + t];
    int km = meta[slot_km + s];
    __global const rvs_real *w = weights + meta[slot_woff + s] + km;
    __global const rvs_real *x = in + (size_t)meta[in_row + t] * (size_t)npix;
    __global rvs_real *o = out + (size_t)t * (size_t)npix;
    if (i0 - km >= 0 && i0 + RVS_ROT_BLOCK + km <= npix) {
#if RVS_HAVE_FP64
        double8 acc = (double8)(0);
        for (int d = -km; d <= km; d++)
            acc += w[d] * vload8(0, x + i0 + d);
        vstore8(acc, 0, o + i0);
#else
        float8 sum = (float8)(0), comp = (float8)(0);
        for (int d = -km; d <= km; d++) {
            float8 y = w[d] * vload8(0, x + i0 + d);
            float8 tt = sum + y;
            float8 z = tt - sum;
            comp += (sum - (tt - z)) + (y - z);
            sum = tt;
        }
        vstore8(sum + comp, 0, o + i0);
#endif
        return;
    }
    for (int i = i0; i < npix && i < i0 + RVS_ROT_BLOCK; i++)
        o[i] = direct_pixel(w, x, i, km, npix);
}

/* Copies template rows[r] (input row meta[in_row + rows[r]]) into row r of the FFT work buffer
 * (row stride `stride` reals, the in-place real-to-complex layout) followed by zeros; rows
 * r >= nrows (the padding of the batch up to the plan's size) are zeroed. Global size: stride x
 * padded rows. */
__kernel void rvs_rotation_pad(__global const rvs_real *in, __global rvs_real *work,
                               __global const int *meta, const int rows, const int nrows,
                               const int npix, const int stride, const int in_row)
{
    int j = (int)get_global_id(0);
    int r = (int)get_global_id(1);
    if (j >= stride)
        return;
    rvs_real v = 0;
    if (r < nrows && j < npix)
        v = in[(size_t)meta[in_row + meta[rows + r]] * (size_t)npix + j];
    work[(size_t)r * (size_t)stride + j] = v;
}

/* Row q of the kernel work buffer: the weights of slot meta[slots + q] placed circularly
 * (w[km+d] at index d mod len), so that the circular convolution of length len >= npix + km
 * yields the 'same'-mode result in place at indices 0..npix-1. Rows q >= nslots are zeroed. */
__kernel void rvs_rotation_kernel_pad(__global const rvs_real *weights, __global rvs_real *hwork,
                                      __global const int *meta, const int slots,
                                      const int nslots, const int slot_woff, const int slot_km,
                                      const int len, const int stride)
{
    int j = (int)get_global_id(0);
    int q = (int)get_global_id(1);
    if (j >= stride)
        return;
    rvs_real v = 0;
    if (q < nslots && j < len) {
        int s = meta[slots + q];
        int km = meta[slot_km + s];
        __global const rvs_real *w = weights + meta[slot_woff + s] + km;
        /* both wraps, should a short length alias them (they then never meet an output) */
        if (j <= km)
            v += w[j];
        if (j >= len - km)
            v += w[j - len];
    }
    hwork[(size_t)q * (size_t)stride + j] = v;
}

/* X[r][f] *= H[local_slot[r]][f] for the nfreq complex bins of each row (interleaved re, im;
 * row stride `stride` reals in both buffers). */
__kernel void rvs_rotation_multiply(__global rvs_real *x, __global const rvs_real *h,
                                    __global const int *meta, const int local_slot,
                                    const int nrows, const int nfreq, const int stride)
{
    int f = (int)get_global_id(0);
    int r = (int)get_global_id(1);
    if (f >= nfreq || r >= nrows)
        return;
    __global rvs_real *xp = x + (size_t)r * (size_t)stride + 2 * f;
    __global const rvs_real *hp = h + (size_t)meta[local_slot + r] * (size_t)stride + 2 * f;
    rvs_real xr = xp[0], xi = xp[1], hr = hp[0], hi = hp[1];
    xp[0] = xr * hr - xi * hi;
    xp[1] = xr * hi + xi * hr;
}

/* Scatters the first npix values of work row r back to template rows[r] of `out`. */
__kernel void rvs_rotation_crop(__global const rvs_real *work, __global rvs_real *out,
                                __global const int *meta, const int rows, const int nrows,
                                const int npix, const int stride)
{
    int j = (int)get_global_id(0);
    int r = (int)get_global_id(1);
    if (j >= npix || r >= nrows)
        return;
    out[(size_t)meta[rows + r] * (size_t)npix + j] = work[(size_t)r * (size_t)stride + j];
}

/* Kernel weights on the device (the direct path with fp64, src/engine/rotation.c): work-item s computes
 * slot s's 2 km + 1 weights for the width R = slot_r[s] pixels into weights[woff ..], the port
 * of the host's rvs_rotation_weights (spec_fit.py compute_vsini_kernel): W_k = integral of
 * Lambda(k - R x) K(x) over x, Lambda the unit hat, K the limb-darkened rotation profile with
 * coefficient eps, from the primitives of K and x K; mirrored, then normalised to sum 1. km = 0
 * is the identity. On the host these took ~1 ms per call for the walkers of a 625-spectrum
 * batch (H100, RVSFIT_CL_ENGINE_PROFILE), with the GPU waiting. */
#if RVS_HAVE_FP64
static void rvs_vsini_primitives(double x, double eps, double *k0, double *k1)
{
    x = clamp(x, -1.0, 1.0);
    const double norm = M_PI * (1.0 - eps / 3.0);
    const double c1 = 2.0 * (1.0 - eps) / norm, c2 = (M_PI / 2.0) * eps / norm;
    const double one_minus = 1.0 - x * x, root = sqrt(one_minus);
    *k0 = c1 * (0.5 * (x * root + asin(x))) + c2 * (x - x * x * x / 3.0);
    *k1 = c1 * (-1.0 / 3.0 * one_minus * root) + c2 * (x * x / 2.0 - x * x * x * x / 4.0);
}

static double rvs_vsini_segment(double a, double b, double slope, double intercept, double eps)
{
    double k0a, k1a, k0b, k1b;
    rvs_vsini_primitives(b, eps, &k0b, &k1b);
    rvs_vsini_primitives(a, eps, &k0a, &k1a);
    return slope * (k1b - k1a) + intercept * (k0b - k0a);
}

__kernel void rvs_rotation_weights(__global const double *slot_r, __global const int *meta,
                                   const int slot_woff, const int slot_km, const int nslots,
                                   const double eps, __global double *weights)
{
    const int s = (int)get_global_id(0);
    if (s >= nslots)
        return;
    const int km = meta[slot_km + s];
    __global double *w = weights + meta[slot_woff + s];
    if (km == 0) {
        w[0] = 1.0;
        return;
    }
    const double R = slot_r[s];
    for (int k = 0; k <= km; k++) {
        const double kd = (double)k;
        double v = 0, lo = clamp(kd / R, -1.0, 1.0), hi = clamp((kd + 1.0) / R, -1.0, 1.0);
        if (hi > lo)
            v += rvs_vsini_segment(lo, hi, -R, 1.0 + kd, eps);
        lo = clamp((kd - 1.0) / R, -1.0, 1.0);
        hi = clamp(kd / R, -1.0, 1.0);
        if (hi > lo)
            v += rvs_vsini_segment(lo, hi, R, 1.0 - kd, eps);
        w[km + k] = v;
        w[km - k] = v;
    }
    /* the host sums the 2 km + 1 values in index order; so does this loop */
    double sum = 0;
    for (int j = 0; j <= 2 * km; j++)
        sum += w[j];
    for (int j = 0; j <= 2 * km; j++)
        w[j] /= sum;
}
#endif
