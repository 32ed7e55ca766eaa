/* ccf.cl: the device half of the fitter's CCF start (src/fit/ccf.c): the cross-spectra of every
 * (spectrum, bank template) pair, and per pair the best chi^2 over the allowed shifts once
 * clFFT has transformed the cross-spectra back (rvspecfit fitter_ccf.fit / make_ccf compute the
 * same chi^2(shift) with numpy FFTs one spectrum at a time).
 *
 * Layout: complex interleaved rvs_real rows of n points (n a power of two), transformed by
 * clFFT in place:
 *   spec rows 2i, 2i + 1: FFT of dw_i and of w_i (data x weight and weight of spectrum i on the
 *                         CCF grid)
 *   bank rows 2j, 2j + 1: FFT of t_j and of t_j^2 (continuum-normalised bank template j)
 * The cross-spectrum X = FFT(dw) conj FFT(t) + i FFT(w) conj FFT(t^2) transforms back to
 * sum_g dw(g + s) t(g) in its real part and sum_g w(g + s) t^2(g) in its imaginary part at shift
 * s (index s mod n): both correlations are real, so one inverse transform carries the two.
 * The two parts share the inverse transform's rounding, which is relative to the larger one: so
 * that neither drowns (raw flux makes t^2 ~1e16 against t ~1e8), the w rows hold w / wscale_i and
 * the t^2 rows t^2 / tscale_j, powers of two (exact) that bring them to the magnitude of dw and
 * t; the reduction multiplies the imaginary part back by wscale_i tscale_j. (Packing dw + i w
 * into one forward transform would halve the forward work, but separating the two through the
 * Hermitian symmetry loses the digits of their magnitude ratio too; the forward transforms are
 * ~1/nb of the work.) */

/* work-items per pair in rvs_ccf_reduce; the host launches exactly this work-group size */
#define RVS_CCF_WG 64

/* X of pair p = pair0 + row (spectrum p / nb, template p % nb) into row `row` of work, for the
 * rows < npairs - pair0 of the chunk; 2-D launch: frequency x row. */
__kernel void rvs_ccf_multiply(__global const rvs_real *spec, __global const rvs_real *bank,
                               __global rvs_real *work, int n, int nb, int pair0, int nrows)
{
    int k = get_global_id(0), row = get_global_id(1);
    if (k >= n || row >= nrows)
        return;
    int p = pair0 + row, i = p / nb, j = p - i * nb;
    __global const rvs_real *a = spec + (size_t)(2 * i) * n * 2 + 2 * k, *w = a + (size_t)n * 2;
    __global const rvs_real *b = bank + (size_t)(2 * j) * n * 2 + 2 * k, *c = b + (size_t)n * 2;
    /* FFT(dw) conj FFT(t) and FFT(w) conj FFT(t^2) */
    rvs_real p0r = a[0] * b[0] + a[1] * b[1], p0i = a[1] * b[0] - a[0] * b[1];
    rvs_real p1r = w[0] * c[0] + w[1] * c[1], p1i = w[1] * c[0] - w[0] * c[1];
    __global rvs_real *x = work + (size_t)row * n * 2 + 2 * k;
    x[0] = p0r - p1i;
    x[1] = p0i + p1r;
}

/* chi^2 at grid shift index s (shift s - smax): continuum-normalised data and templates give
 * sum w (d - t)^2 - sum w d^2 = -2 S0 + S1; otherwise the amplitude-marginalised -S0^2 / S1,
 * defined only where S1 > 0 (fitter_ccf's two branches). `valid` says whether it is defined. */
static rvs_real ccf_chi(__global const rvs_real *x, int n, int smax, int s, rvs_real u,
                        int continuum, int *valid)
{
    int sh = s - smax;
    int q = sh < 0 ? n + sh : sh;
    rvs_real s0 = x[2 * q], s1 = x[2 * q + 1] * u;
    if (continuum) {
        *valid = 1;
        return -2 * s0 + s1;
    }
    *valid = s1 > 0;
    return s1 > 0 ? -s0 * s0 / s1 : (rvs_real)INFINITY;
}

/* One work-group of RVS_CCF_WG items per row of the chunk (pair pair0 + row): the first
 * smallest chi^2 over shift indices s_lo..s_hi (the allowed velocities; the full range is
 * 0..2 smax), refined by a parabola through its neighbours when both exist. out[3 p + 0..2] =
 * chi^2, s (-1 when no shift is defined: chi^2 = INFINITY), refined shift in grid pixels. */
__kernel void rvs_ccf_reduce(__global const rvs_real *work, __global const rvs_real *wscale,
                             __global const rvs_real *tscale, __global rvs_real *out, int n,
                             int nb, int smax, int s_lo, int s_hi, int continuum, int pair0,
                             int nrows)
{
    __local rvs_real lv[RVS_CCF_WG];
    __local int li[RVS_CCF_WG];
    int lid = get_local_id(0), row = get_group_id(0);
    /* the whole group takes the same branch: nrows is uniform */
    if (row >= nrows)
        return;
    __global const rvs_real *x = work + (size_t)row * n * 2;
    int p = pair0 + row, i = p / nb;
    rvs_real u = wscale[i] * tscale[p - i * nb];
    rvs_real bv = 0;
    int bi = -1;
    for (int s = s_lo + lid; s <= s_hi; s += RVS_CCF_WG) {
        int valid;
        rvs_real v = ccf_chi(x, n, smax, s, u, continuum, &valid);
        if (valid && !isnan(v) && (bi < 0 || v < bv)) {
            bv = v;
            bi = s;
        }
    }
    lv[lid] = bv;
    li[lid] = bi;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int w = RVS_CCF_WG / 2; w > 0; w /= 2) {
        if (lid < w) {
            rvs_real v2 = lv[lid + w];
            int i2 = li[lid + w], i1 = li[lid];
            if (i2 >= 0 && (i1 < 0 || v2 < lv[lid] || (v2 == lv[lid] && i2 < i1))) {
                lv[lid] = v2;
                li[lid] = i2;
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) {
        __global rvs_real *o = out + (size_t)p * 3;
        bi = li[0];
        bv = lv[0];
        rvs_real sh = (rvs_real)(bi - smax);
        if (bi > 0 && bi < 2 * smax) {
            int valid;
            rvs_real y0 = ccf_chi(x, n, smax, bi - 1, u, continuum, &valid);
            rvs_real y2 = ccf_chi(x, n, smax, bi + 1, u, continuum, &valid);
            rvs_real den = y0 - 2 * bv + y2;
            if (den > 0)
                sh += (rvs_real)0.5 * (y0 - y2) / den;
        }
        o[0] = bi >= 0 ? bv : (rvs_real)INFINITY;
        o[1] = (rvs_real)bi;
        o[2] = sh;
    }
}
