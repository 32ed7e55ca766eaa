/* spline.cl: batched natural cubic splines as rvspecfit's py/rvspecfit/src/spliner.c defines
 * them: coefficients by the Thomas algorithm (construct), evaluation at Doppler-shifted
 * wavelengths with the knot index from the uniform (log-)step (evaler).
 *
 * The knot grid is shared by all templates of an arm, so the host (src/engine/spline.c) computes the
 * template-independent parts of the sweep once per grid. `geom` holds RVS_SPLINE_SECTIONS arrays
 * of N rvs_real each, in the order of the RVS_SPLINE_* section numbers below (must match
 * src/engine/spline.c).
 *
 * Coefficient layout (private to this module): template t, interval i has A, B, C, D at
 * coeffs[4 * (t * (N - 1) + i) + 0..3], so one evaluation reads one aligned 4-vector and
 * neighbouring pixels read neighbouring vectors. The construct kernel also keeps its Thomas
 * intermediate dd' in the first N - 2 slots of the template's own region before overwriting
 * them with the coefficients (no scratch buffer). */

#define RVS_SPLINE_XS 0   /* knots xs[i] */
#define RVS_SPLINE_H 1    /* h[i] = xs[i+1] - xs[i]; spliner.c's off-diagonal cc[i] = h[i+1] */
#define RVS_SPLINE_HINV 2 /* 1 / h[i] */
#define RVS_SPLINE_CCD 3  /* cc'[i] of the Thomas sweep, i < N-3; cc'[N-3] = 0 */
#define RVS_SPLINE_PIV 4  /* pivots: bb[0], then bb[i] - cc[i-1] cc'[i-1] */
#define RVS_SPLINE_T1 5   /* hinv[i] / 6 */
#define RVS_SPLINE_T2 6   /* h[i] / 6 */
#define RVS_SPLINE_LW 7   /* fir: left ratio of knot i, 0 where unused (see below) */
#define RVS_SPLINE_RW 8   /* fir: right ratio of knot i */
#define RVS_SPLINE_DIAG 9 /* fir: diagonal of the inverse at knot i; 0 at knots 0 and N-1 */

/* Templates per work-group of the construct kernel and knots per tile: the group moves tiles of
 * its templates through local memory so that global reads and writes are contiguous runs even
 * though each work-item sweeps one template. Must match src/engine/spline.c. */
#define RVS_SPLINE_GROUP 32
#define RVS_SPLINE_TILE 16
/* Odd strides in local memory (in rvs_real units) avoid bank conflicts between work-items. */
#define RVS_SPLINE_LY (RVS_SPLINE_TILE + 3)
#define RVS_SPLINE_LD (RVS_SPLINE_TILE + 1)
#define RVS_SPLINE_LO (4 * RVS_SPLINE_TILE + 1)

#if RVS_HAVE_FP64
typedef double4 rvs_spline_real4;
#else
typedef float4 rvs_spline_real4;
#endif

/* The three construction kernels share spliner.c's two formulas: the right-hand side of the
 * second-derivative equation at knot i + 1 from y[i..i+2] and the inverse steps of intervals
 * i, i + 1 ... */
static inline rvs_real rvs_spline_rhs(rvs_real y0, rvs_real y1, rvs_real y2, rvs_real hinv0,
                                      rvs_real hinv1)
{
    return 6 * ((y2 - y1) * hinv1 - (y1 - y0) * hinv0);
}

/* ... and interval i's A, B, C, D from its end values yl, yr, the second derivatives at its
 * ends zl, zr (x 1/6 folded into t1 = hinv / 6, t2 = h / 6) */
static inline rvs_spline_real4 rvs_spline_interval(rvs_real zl, rvs_real zr, rvs_real yl,
                                                   rvs_real yr, rvs_real t1, rvs_real t2,
                                                   rvs_real hinv)
{
    return (rvs_spline_real4)(zr * t1, zl * t1, yr * hinv - zr * t2, yl * hinv - zl * t2);
}

/* rvspecfit spec_fit.SPEED_OF_LIGHT; a float literal where doubles may be absent */
#if RVS_HAVE_FP64
#define RVS_SPLINE_C_KMS 299792.458
#else
#define RVS_SPLINE_C_KMS 299792.458f
#endif

/* One natural spline per work-item (template t = global id). templates: T rows of N values;
 * coeffs: the layout above. Port of spliner.c construct(), with the grid-only parts (h, 1/h,
 * cc', pivots, h/6, 1/(6h)) read from geom; the remaining arithmetic is spliner.c's, in the same
 * order. */
__kernel __attribute__((reqd_work_group_size(RVS_SPLINE_GROUP, 1, 1))) void
rvs_spline_construct(__global const rvs_real *geom, const int N, __global const rvs_real *templates,
                     const int T, __global rvs_real *coeffs)
{
    __local rvs_real ly[RVS_SPLINE_GROUP * RVS_SPLINE_LY];
    __local rvs_real ld[RVS_SPLINE_GROUP * RVS_SPLINE_LD];
    __local rvs_real lo[RVS_SPLINE_GROUP * RVS_SPLINE_LO];
    const int lid = (int)get_local_id(0);
    const int g0 = (int)get_group_id(0) * RVS_SPLINE_GROUP; /* first template of the group */
    const int t = g0 + lid;
    const int N1 = N - 1, N2 = N - 2;
    const size_t region = 4 * (size_t)N1; /* rvs_real per template in coeffs */
    __global const rvs_real *h = geom + RVS_SPLINE_H * (size_t)N;
    __global const rvs_real *hinv = geom + RVS_SPLINE_HINV * (size_t)N;
    __global const rvs_real *ccd = geom + RVS_SPLINE_CCD * (size_t)N;
    __global const rvs_real *piv = geom + RVS_SPLINE_PIV * (size_t)N;
    __global const rvs_real *t1 = geom + RVS_SPLINE_T1 * (size_t)N;
    __global const rvs_real *t2 = geom + RVS_SPLINE_T2 * (size_t)N;

    /* Forward sweep: dd'[i] = (dd[i] - cc[i-1] dd'[i-1]) / pivot[i], dd[i] = 6 (bs[i+1] - bs[i]),
     * bs[i] = (y[i+1] - y[i]) / h[i]; tiles of RVS_SPLINE_TILE rows i need y[i0 .. i0+TILE+1]. */
    rvs_real ddp = 0;
    for (int i0 = 0; i0 < N2; i0 += RVS_SPLINE_TILE) {
        const int width = min(RVS_SPLINE_TILE + 2, N - i0);
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int idx = lid; idx < RVS_SPLINE_GROUP * width; idx += RVS_SPLINE_GROUP) {
            const int r = idx / width, c = idx - r * width;
            if (g0 + r < T)
                ly[r * RVS_SPLINE_LY + c] = templates[(size_t)(g0 + r) * N + i0 + c];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        const int rows = min(RVS_SPLINE_TILE, N2 - i0);
        if (t < T) {
            __local const rvs_real *y = ly + lid * RVS_SPLINE_LY;
            for (int k = 0; k < rows; k++) {
                const int i = i0 + k;
                const rvs_real dd = rvs_spline_rhs(y[k], y[k + 1], y[k + 2], hinv[i], hinv[i + 1]);
                ddp = i == 0 ? dd / piv[0] : (dd - h[i] * ddp) / piv[i];
                ld[lid * RVS_SPLINE_LD + k] = ddp;
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int idx = lid; idx < RVS_SPLINE_GROUP * rows; idx += RVS_SPLINE_GROUP) {
            const int r = idx / rows, c = idx - r * rows;
            if (g0 + r < T)
                coeffs[(size_t)(g0 + r) * region + i0 + c] = ld[r * RVS_SPLINE_LD + c];
        }
    }

    /* Backward sweep over intervals i = N-2 .. 0: z[i] = dd'[i-1] - cc'[i-1] z[i+1] with
     * z[0] = z[N-1] = 0 (cc'[N-3] = 0 gives spliner.c's z[N-2] = dd'[N-3]), then the interval's
     * A, B, C, D. A tile's coefficient block [4 i0, 4 i0 + 4 TILE) only overwrites dd' slots at
     * or above 4 i0, which no lower tile reads (it needs slots below i0 - 1). */
    rvs_real zr = 0; /* z[i+1] */
    for (int i0 = (N1 - 1) / RVS_SPLINE_TILE * RVS_SPLINE_TILE; i0 >= 0; i0 -= RVS_SPLINE_TILE) {
        const int rows = min(RVS_SPLINE_TILE, N1 - i0);
        /* global fence: dd' was stored by other work-items of the group */
        barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE);
        for (int idx = lid; idx < RVS_SPLINE_GROUP * (rows + 1); idx += RVS_SPLINE_GROUP) {
            const int r = idx / (rows + 1), c = idx - r * (rows + 1);
            if (g0 + r < T)
                ly[r * RVS_SPLINE_LY + c] = templates[(size_t)(g0 + r) * N + i0 + c];
        }
        for (int idx = lid; idx < RVS_SPLINE_GROUP * rows; idx += RVS_SPLINE_GROUP) {
            const int r = idx / rows, c = idx - r * rows;
            const int j = i0 - 1 + c; /* dd' index used by interval i0 + c */
            if (g0 + r < T && j >= 0 && j < N2)
                ld[r * RVS_SPLINE_LD + c] = coeffs[(size_t)(g0 + r) * region + j];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        if (t < T) {
            __local const rvs_real *y = ly + lid * RVS_SPLINE_LY;
            __local rvs_real *o = lo + lid * RVS_SPLINE_LO;
            for (int k = rows - 1; k >= 0; k--) {
                const int i = i0 + k;
                const rvs_real zl = i == 0 ? 0 : ld[lid * RVS_SPLINE_LD + k] - ccd[i - 1] * zr;
                vstore4(rvs_spline_interval(zl, zr, y[k], y[k + 1], t1[i], t2[i], hinv[i]), k, o);
                zr = zl;
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        const int width = 4 * rows;
        for (int idx = lid; idx < RVS_SPLINE_GROUP * width; idx += RVS_SPLINE_GROUP) {
            const int r = idx / width, c = idx - r * width;
            if (g0 + r < T)
                coeffs[(size_t)(g0 + r) * region + 4 * (size_t)i0 + c] = lo[r * RVS_SPLINE_LO + c];
        }
    }
}

/* Segmented construction (the default on CPU devices): one work-group per template, work-item s
 * of RVS_SPLINE_SEG_GROUP sweeps the knots [s L, s L + L), L = ceil((N-1)/group).
 *
 * Both Thomas recurrences are contractions: dd'[i] = (dd[i] - h[i] dd'[i-1]) / piv[i] and
 * z[i] = dd'[i-1] - cc'[i-1] z[i+1] with |h[i] / piv[i]|, |cc'[i]| <= 1/3 on any grid (the
 * matrix is strictly diagonally dominant: piv[i] >= 2 (h[i] + h[i+1]) - h[i]/2... >= 3 h/2 on
 * uniform steps, ~0.27 in practice on log grids), so a value RVS_SPLINE_WARM rows away
 * contributes less than (1/3)^48 ~ 1e-23 of itself: each work-item starts its sweeps that many
 * rows outside its segment from zero and agrees with the serial sweep to rounding. Phase 1
 * writes dd' of the segment into the template's coefficient region (as the serial kernel does),
 * phase 2 copies the dd' its backward sweep needs into private memory, phase 3 writes the
 * coefficients over them: the group barriers order the phases (all work-items of a template
 * are in one group). Requires N - 1 <= RVS_SPLINE_SEG_GROUP * RVS_SPLINE_SEG_MAXLEN.
 * 16 segments: on a CPU the templates of a call already fill the cores, and each warm-up row is
 * work done twice, so few long segments win (PoCL, 2 cores, 4096 x 6000 knots, fp64: 128
 * segments 199 ms, 16 134 ms, 8 136 ms); the forward sweep multiplies by 1 / piv[i], computed
 * off the dependent chain, instead of dividing on it (134 -> 94 ms). */
#define RVS_SPLINE_SEG_GROUP 16
#define RVS_SPLINE_SEG_MAXLEN 512
#define RVS_SPLINE_WARM 48
__kernel __attribute__((reqd_work_group_size(RVS_SPLINE_SEG_GROUP, 1, 1))) void
rvs_spline_construct_seg(__global const rvs_real *geom, const int N,
                         __global const rvs_real *templates, const int T,
                         __global rvs_real *coeffs)
{
    rvs_real dloc[RVS_SPLINE_SEG_MAXLEN + RVS_SPLINE_WARM + 1];
    const int t = (int)get_group_id(0), s = (int)get_local_id(0);
    const int N1 = N - 1, N2 = N - 2;
    const int L = (N1 + RVS_SPLINE_SEG_GROUP - 1) / RVS_SPLINE_SEG_GROUP;
    const int is = s * L, ie = min(is + L, N1); /* intervals [is, ie); dd' rows [is, min(ie, N2)) */
    __global const rvs_real *h = geom + RVS_SPLINE_H * (size_t)N;
    __global const rvs_real *hinv = geom + RVS_SPLINE_HINV * (size_t)N;
    __global const rvs_real *ccd = geom + RVS_SPLINE_CCD * (size_t)N;
    __global const rvs_real *piv = geom + RVS_SPLINE_PIV * (size_t)N;
    __global const rvs_real *t1 = geom + RVS_SPLINE_T1 * (size_t)N;
    __global const rvs_real *t2 = geom + RVS_SPLINE_T2 * (size_t)N;
    __global const rvs_real *y = templates + (size_t)min(t, T - 1) * N;
    __global rvs_real *c = coeffs + (size_t)min(t, T - 1) * 4 * (size_t)N1;
    const int active = t < T && is < N1;

    /* phase 1: forward sweep from RVS_SPLINE_WARM rows before the segment (row 0 exactly) */
    if (active) {
        rvs_real ddp = 0;
        const int i0 = max(0, is - RVS_SPLINE_WARM), i1 = min(ie, N2);
        for (int i = i0; i < i1; i++) {
            const rvs_real dd = rvs_spline_rhs(y[i], y[i + 1], y[i + 2], hinv[i], hinv[i + 1]);
            const rvs_real pinv = 1 / piv[i]; /* off the dependent chain */
            ddp = i == 0 ? dd * pinv : (dd - h[i] * ddp) * pinv;
            if (i >= is)
                c[i] = ddp;
        }
    }
    barrier(CLK_GLOBAL_MEM_FENCE);
    /* phase 2: dd'[is - 1 .. itop - 1] into private memory */
    const int itop = min(N1 - 1, ie - 1 + RVS_SPLINE_WARM);
    if (active)
        for (int i = is; i <= itop; i++)
            dloc[i - is] = i == 0 ? 0 : c[i - 1];
    barrier(CLK_GLOBAL_MEM_FENCE);
    /* phase 3: backward sweep from RVS_SPLINE_WARM intervals above (z[N-1] = 0 exactly) */
    if (active) {
        rvs_real zr = 0; /* z[i+1] */
        for (int i = itop; i >= is; i--) {
            const rvs_real zl = i == 0 ? 0 : dloc[i - is] - ccd[i - 1] * zr;
            if (i < ie)
                vstore4(rvs_spline_interval(zl, zr, y[i], y[i + 1], t1[i], t2[i], hinv[i]), i, c);
            zr = zl;
        }
    }
}

/* Fully parallel construction ("fir"): one work-item per knot, no sequential sweep.
 *
 * The second derivatives M (spliner.c's zs) solve S M = d with S the symmetric tridiagonal
 * matrix of the interior knots 1..N-2 (diagonal 2 (h[i-1] + h[i]), off-diagonals h) and
 * d[i] = 6 ((y[i+1] - y[i]) / h[i] - (y[i] - y[i-1]) / h[i-1]); M[0] = M[N-1] = 0. The inverse
 * of a symmetric tridiagonal matrix is semi-separable: column i of S^-1 is diag[i] at row i and
 * decays geometrically away from it, its ratio from row j-1 to row j being lw[j] = -h[j-1] /
 * p[j-1] for j <= i (p: the pivots of the left-to-right elimination, the serial kernel's PIV)
 * and rw[j] = -h[j-1] / q[j] for j > i (q: the pivots of a right-to-left elimination), with
 * diag[i] = 1 / (p[i] + q[i] - S[i][i]). So, exactly,
 *   M[i] = diag[i] (sum_{j<i} d[j] lw[j+1] ... lw[i] + d[i] + sum_{j>i} d[j] rw[i+1] ... rw[j]),
 * both natural ends included (the ratios near the ends carry them). The host computes lw, rw,
 * diag once per grid (src/engine/spline.c) from the rounded knots, so any grid the validation accepts
 * is handled exactly, not only an exactly geometric one: on a log-uniform grid the rows divided
 * by h[i] are nearly the Toeplitz rows (1/r, 2 (1 + 1/r), 1) of the issue, but knots rounded to
 * float move h by ~2e-3 of itself (DESI grid), which a constant-coefficient filter would turn
 * into 1e-3 errors in M. |lw|, |rw| -> 2 - sqrt(3) = 0.268 (the root z1 of z^2 + 4 z + 1 on a
 * uniform grid; 0.268 within 1e-4 on DESI's log grids), so the sums are cut at RVS_SPLINE_FIR_K
 * terms each side, the smallest K with 0.268^(K+1) / (1 - 0.268) <= u / 8 (u = 2^-53 or
 * 2^-24): the neglected weight is below an eighth of a rounding of M. src/engine/spline.c checks the
 * grid's largest ratio against the same bound and uses another kernel where it fails (coarse
 * grids, r >~ 1.01). Each sum is a K-step Horner recurrence over local memory; d is the same
 * arithmetic as the serial kernel's, so the second-difference cancellation is the same.
 *
 * Work-group: a tile of RVS_SPLINE_FIR_GROUP knots of one template, i.e.
 * RVS_SPLINE_FIR_GROUP - 1 intervals (1-D launch: group g is tile g % tiles of template
 * g / tiles, so a template's tiles run side by side and share their halos in cache; 1-D also
 * keeps clear of 65535-group limits on a second dimension). The tile's y, d, lw, rw with K
 * knots of halo each side go to local memory, every work-item forms M of its knot, then
 * A, B, C, D of its interval, written as contiguous 4-vectors. Per knot: ~4K + 20 flops and
 * ~4K local-memory reads; global traffic y in, A..D out (plus grid sections, shared by all
 * templates and cached). Must match src/engine/spline.c. */
#define RVS_SPLINE_FIR_GROUP 128
#if RVS_HAVE_FP64
#define RVS_SPLINE_FIR_K 29
#else
#define RVS_SPLINE_FIR_K 14
#endif
#define RVS_SPLINE_FIR_SPAN (RVS_SPLINE_FIR_GROUP + 2 * RVS_SPLINE_FIR_K)
__kernel __attribute__((reqd_work_group_size(RVS_SPLINE_FIR_GROUP, 1, 1))) void
rvs_spline_construct_fir(__global const rvs_real *geom, const int N,
                         __global const rvs_real *templates, const int T,
                         __global rvs_real *coeffs)
{
    /* local index q <-> knot k0 - K + q (ly: q + 1 <-> that knot, one more at each end) */
    __local rvs_real ly[RVS_SPLINE_FIR_SPAN + 2];
    __local rvs_real ld[RVS_SPLINE_FIR_SPAN];
    __local rvs_real llw[RVS_SPLINE_FIR_SPAN];
    __local rvs_real lrw[RVS_SPLINE_FIR_SPAN];
    __local rvs_real lm[RVS_SPLINE_FIR_GROUP];
    const int K = RVS_SPLINE_FIR_K;
    const int s = (int)get_local_id(0);
    const size_t tiles = (size_t)(N - 2) / (RVS_SPLINE_FIR_GROUP - 1) + 1;
    const size_t t = get_group_id(0) / tiles;
    const int k0 = (int)(get_group_id(0) % tiles) * (RVS_SPLINE_FIR_GROUP - 1); /* tile's first knot */
    const int base = k0 - K;                                           /* knot of local index 0 */
    __global const rvs_real *hinv = geom + RVS_SPLINE_HINV * (size_t)N;
    __global const rvs_real *t1 = geom + RVS_SPLINE_T1 * (size_t)N;
    __global const rvs_real *t2 = geom + RVS_SPLINE_T2 * (size_t)N;
    __global const rvs_real *lw = geom + RVS_SPLINE_LW * (size_t)N;
    __global const rvs_real *rw = geom + RVS_SPLINE_RW * (size_t)N;
    __global const rvs_real *diag = geom + RVS_SPLINE_DIAG * (size_t)N;
    /* the launch has exactly T x tiles groups (src/engine/spline.c), so t < T: no early return, which
     * PoCL mishandles before barriers even when the whole group takes it (measured: stale
     * local values across the barrier) */
    __global const rvs_real *y = templates + t * N;

    for (int q = s; q < RVS_SPLINE_FIR_SPAN + 2; q += RVS_SPLINE_FIR_GROUP) {
        const int k = base - 1 + q;
        ly[q] = k >= 0 && k < N ? y[k] : 0;
    }
    for (int q = s; q < RVS_SPLINE_FIR_SPAN; q += RVS_SPLINE_FIR_GROUP) {
        const int k = base + q;
        const int in = k >= 0 && k < N;
        llw[q] = in ? lw[k] : 0;
        lrw[q] = in ? rw[k] : 0;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    /* d at the interior knots, zero elsewhere (the serial kernel's arithmetic) */
    for (int q = s; q < RVS_SPLINE_FIR_SPAN; q += RVS_SPLINE_FIR_GROUP) {
        const int k = base + q;
        rvs_real dk = 0;
        if (k >= 1 && k <= N - 2)
            dk = rvs_spline_rhs(ly[q], ly[q + 1], ly[q + 2], hinv[k - 1], hinv[k]);
        ld[q] = dk;
    }
    barrier(CLK_LOCAL_MEM_FENCE);

    const int k = k0 + s; /* this work-item's knot; local index s + K */
    {
        /* left: d[k-K] lw[k-K+1] ... lw[k] + ... + d[k-1] lw[k] (Horner from the far end) */
        rvs_real left = ld[s];
#pragma unroll
        for (int c = 1; c < RVS_SPLINE_FIR_K; c++)
            left = left * llw[s + c] + ld[s + c];
        left *= llw[s + K];
        /* right: d[k+1] rw[k+1] + ... + d[k+K] rw[k+1] ... rw[k+K] */
        rvs_real right = ld[s + 2 * K];
#pragma unroll
        for (int c = RVS_SPLINE_FIR_K - 1; c >= 1; c--)
            right = right * lrw[s + K + c + 1] + ld[s + K + c];
        right *= lrw[s + K + 1];
        lm[s] = k < N ? diag[k] * ((left + right) + ld[s + K]) : 0;
    }
    barrier(CLK_LOCAL_MEM_FENCE);

    /* interval k = [knot k, knot k+1]: spliner.c's A, B, C, D */
    if (s < RVS_SPLINE_FIR_GROUP - 1 && k < N - 1) {
        vstore4(rvs_spline_interval(lm[s], lm[s + 1], ly[s + K + 1], ly[s + K + 2], t1[k], t2[k],
                                    hinv[k]),
                t * (N - 1) + k, coeffs);
    }
}

/* The Doppler factor of one request for rvs_spline_eval: f = sqrt((1 - b) / (1 + b)),
 * b = v / c (rvspecfit spec_fit.evalRV), the shift factor f - 1 as a pair (hi, lo) and log f
 * for the knot index (less log x0), and 1 / step. Computed once per request (one work-item of its group) instead of at
 * every pixel: the square root and three divisions cost more than the rest of the evaluation on
 * CPU devices (PoCL, ~70 cycles a pixel before). */
static void rvs_spline_doppler(const rvs_real v, const rvs_real x0, const rvs_real step,
                               __local rvs_real *d)
{
    const rvs_real beta = v / (rvs_real)RVS_SPLINE_C_KMS;
    const rvs_real f = sqrt((1 - beta) / (1 + beta));
    rvs_real fm1_hi, fm1_lo;
#if RVS_HAVE_FP64
    /* f - 1 = (f^2 - 1) / (f + 1) = -2 b / ((1 + b) (f + 1)): no cancellation */
    fm1_hi = -2 * beta / ((1 + beta) * (f + 1));
    fm1_lo = 0;
#else
    {
        /* In float, one rounding of b or of lam (f - 1) moves the point by ~1e-6 A at 1000
         * km/s, 5e-6 of a DESI template pixel. So b = v / c is carried as a float pair
         * (1/c = ic_hi + ic_lo), f - 1 = -b (1 + g1) with the series
         * f = (1 - b)(1 - b^2)^(-1/2) = 1 - b + b^2/2 - b^3/2 + 3b^4/8 - 3b^5/8 + 5b^6/16
         * - 5b^7/16 + 35b^8/128 - 35b^9/128 + O(b^10) (truncation < 3e-10 relative for
         * |b| < 0.1, i.e. |v| < 30000 km/s); the pixel multiplies it by lam as an exact
         * product pair (fma). Beyond that the closed form. */
#pragma OPENCL FP_CONTRACT OFF
        const float ic_hi = 0x1.bfb3cp-19f, ic_lo = 0x1.a316p-47f;
        const float b_hi = v * ic_hi;
        const float b_lo = fma(v, ic_hi, -b_hi) + v * ic_lo;
        if (fabs(b_hi) < 0.1f) {
            const float b = b_hi;
            const float g1 =
                b * (-0.5f + b * (0.5f + b * (-0.375f + b * (0.375f + b * (-0.3125f +
                b * (0.3125f + b * (-0.2734375f + b * 0.2734375f)))))));
            fm1_hi = -b_hi;
            fm1_lo = -b_lo - b_hi * g1;
        } else {
            fm1_hi = -2 * beta / ((1 + beta) * (f + 1));
            fm1_lo = 0;
        }
    }
#endif
    d[0] = f;
    d[1] = fm1_hi;
    d[2] = fm1_lo;
    d[3] = log(f) - log(x0); /* log(lam f / x0) = log(lam) + d[3] */
    d[4] = 1 / step;
}

/* out[e * n + j] = spline template_index[e] at lam[j] sqrt((1 - b) / (1 + b)), b = v[e] / c
 * (rvspecfit spec_fit.evalRV), NaN outside [xs[0], xs[N-1]) or for a bad template index.
 * Work-item (j, e); a work-group holds pixels of one request (local size (L, 1)), whose Doppler
 * factor its first work-item computes into local memory. lam holds the n wavelengths, then
 * their logarithms (rvs_spline_points_create). Port of spliner.c evaler():
 * pos = (int)((log(x) - log(x0)) / logstep) (log grid) or (int)((x - x0) / step), then
 * A dxl^3 + B dxr^3 + C dxl + D dxr. Two refinements, both below fp64 rounding of the result:
 * dxl is formed as (lam - xs[pos]) + lam (f - 1), which keeps the shift's digits that x = lam f
 * would round away (this matters in fp32, where ulp(x) is ~2e-3 of a DESI template pixel), and
 * when rounding put pos one interval off near a knot, pos moves to the interval that holds x
 * (evaler would extrapolate the neighbour's cubic there). The index of a log grid is
 * (log lam + log(f / x0)) / step, from the table of log lam: no logarithm per pixel. */
__kernel void rvs_spline_eval(__global const rvs_real *geom, const int N, const int log_step,
                              const rvs_real x0, const rvs_real step,
                              __global const rvs_real *coeffs, const int T,
                              __global const int *template_index,
                              __global const rvs_real *velocity, const int E,
                              __global const rvs_real *lam, const int n, __global rvs_real *out,
                              __local rvs_real *doppler)
{
    const int j = (int)get_global_id(0), e = (int)get_global_id(1);
    if (get_local_id(0) == 0 && e < E)
        rvs_spline_doppler(velocity[e], x0, step, doppler);
    barrier(CLK_LOCAL_MEM_FENCE);
    if (j >= n || e >= E)
        return;
    __global const rvs_real *xs = geom + RVS_SPLINE_XS * (size_t)N;
    const size_t o = (size_t)e * n + j;
    const int t = template_index[e];
    const rvs_real f = doppler[0], fm1_hi = doppler[1], fm1_lo = doppler[2];
    const rvs_real l = lam[j];
    const rvs_real x = l * f;
    /* The shift lam (f - 1) = sh + sl, to be added to lam - xs[pos] (exact: both are close). */
    rvs_real sh, sl;
#if RVS_HAVE_FP64
    sh = l * fm1_hi;
    sl = 0;
#else
    {
#pragma OPENCL FP_CONTRACT OFF
        sh = l * fm1_hi;
        sl = fma(l, fm1_hi, -sh) + l * fm1_lo;
    }
#endif
#if RVS_HAVE_FP64
    /* evaler's index in double: exact to far below one interval on any grid, so one step down
     * and one step up settle pos on the interval that holds x. Straight-line code (selects, one
     * store, no calls) so that CPU devices vectorise the work-items; loops and a log call per
     * pixel kept PoCL's code scalar, at ~70 cycles a pixel. */
    const int inside = t >= 0 && t < T && x >= xs[0] && x < xs[N - 1];
    const double u = log_step ? (lam[n + j] + doppler[3]) * doppler[4] : (x - x0) * doppler[4];
    const int p0 = (int)fmin(fmax(u, 0.0), (double)(N - 2)); /* NaN -> 0 */
    /* the knots around p0, loaded independently (no chain of dependent loads) */
    const double xm = xs[max(p0 - 1, 0)], x0k = xs[p0], x1k = xs[p0 + 1],
                 x2k = xs[min(p0 + 2, N - 1)];
    const int down = ((l - x0k) + sh) < 0 && p0 > 0; /* x left of knot p0 */
    const int up = !down && ((x1k - l) - sh) < 0 && p0 < N - 2; /* x right of knot p0 + 1 */
    const int pos = p0 - down + up;
    const double left = down ? xm : up ? x1k : x0k, right = down ? x0k : up ? x2k : x1k;
    const double dxl = (l - left) + sh, dxr = (right - l) - sh;
    const double4 c = vload4((size_t)(inside ? t : 0) * (N - 1) + pos, coeffs);
    const double value = c.s0 * dxl * dxl * dxl + c.s1 * dxr * dxr * dxr + c.s2 * dxl + c.s3 * dxr;
    out[o] = inside ? value : (double)NAN;
#else
    if (t < 0 || t >= T || !(x >= xs[0]) || !(x < xs[N - 1])) {
        out[o] = (rvs_real)NAN;
        return;
    }
    /* evaler's index in float (the loops below settle pos on the interval that holds x, which
     * is what evaler's formula gives up to rounding) */
    const float u = log_step ? (lam[n + j] + doppler[3]) * doppler[4] : (x - x0) * doppler[4];
    int pos = clamp((int)u, 0, N - 2);
    rvs_real dxl = ((l - xs[pos]) + sh) + sl;
    while (dxl < 0 && pos > 0) {
        pos--;
        dxl = ((l - xs[pos]) + sh) + sl;
    }
    rvs_real dxr = ((xs[pos + 1] - l) - sh) - sl;
    while (dxr < 0 && pos < N - 2) {
        pos++;
        dxl = ((l - xs[pos]) + sh) + sl;
        dxr = ((xs[pos + 1] - l) - sh) - sl;
    }
    const float4 c = vload4((size_t)t * (N - 1) + pos, coeffs);
    out[o] = c.s0 * dxl * dxl * dxl + c.s1 * dxr * dxr * dxr + c.s2 * dxl + c.s3 * dxr;
#endif
}

/* rvs_spline_eval and the derivative of each value with respect to the request's velocity:
 * with x(v) = lam f(v), f = sqrt((1 - b) / (1 + b)), b = v / c, df/dv = -f / (c (1 - b^2)), so
 *   d out / dv = S'(x) dx/dv,  S'(x) = 3 A dxl^2 - 3 B dxr^2 + C - D,  dx/dv = -x / (c (1 - b^2))
 * (dxl = x - xs[pos] and dxr = xs[pos+1] - x of the interval that holds x). The value is
 * computed by the same expressions as rvs_spline_eval's, in the same order, so both kernels
 * give the same bits; the natural spline is C^2, so the derivative is continuous across knots
 * and the choice of interval near a knot does not matter for it. value may be NULL
 * (write_value = 0): derivatives only. NaN where rvs_spline_eval gives NaN. doppler holds
 * rvs_spline_doppler's values and, at [5], -1 / (c (1 - b^2)). */
__kernel void rvs_spline_eval_dv(__global const rvs_real *geom, const int N, const int log_step,
                                 const rvs_real x0, const rvs_real step,
                                 __global const rvs_real *coeffs, const int T,
                                 __global const int *template_index,
                                 __global const rvs_real *velocity, const int E,
                                 __global const rvs_real *lam, const int n,
                                 __global rvs_real *value, const int write_value,
                                 __global rvs_real *deriv, __local rvs_real *doppler)
{
    const int j = (int)get_global_id(0), e = (int)get_global_id(1);
    if (get_local_id(0) == 0 && e < E) {
        rvs_spline_doppler(velocity[e], x0, step, doppler);
        const rvs_real b = velocity[e] / (rvs_real)RVS_SPLINE_C_KMS;
        doppler[5] = -1 / ((rvs_real)RVS_SPLINE_C_KMS * (1 - b * b));
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (j >= n || e >= E)
        return;
    __global const rvs_real *xs = geom + RVS_SPLINE_XS * (size_t)N;
    const size_t o = (size_t)e * n + j;
    const int t = template_index[e];
    const rvs_real f = doppler[0], fm1_hi = doppler[1], fm1_lo = doppler[2];
    const rvs_real l = lam[j];
    const rvs_real x = l * f;
    const rvs_real dxdv = x * doppler[5];
    rvs_real sh, sl;
#if RVS_HAVE_FP64
    sh = l * fm1_hi;
    sl = 0;
#else
    {
#pragma OPENCL FP_CONTRACT OFF
        sh = l * fm1_hi;
        sl = fma(l, fm1_hi, -sh) + l * fm1_lo;
    }
#endif
#if RVS_HAVE_FP64
    /* rvs_spline_eval's straight-line fp64 code, line for line */
    const int inside = t >= 0 && t < T && x >= xs[0] && x < xs[N - 1];
    const double u = log_step ? (lam[n + j] + doppler[3]) * doppler[4] : (x - x0) * doppler[4];
    const int p0 = (int)fmin(fmax(u, 0.0), (double)(N - 2)); /* NaN -> 0 */
    const double xm = xs[max(p0 - 1, 0)], x0k = xs[p0], x1k = xs[p0 + 1],
                 x2k = xs[min(p0 + 2, N - 1)];
    const int down = ((l - x0k) + sh) < 0 && p0 > 0;
    const int up = !down && ((x1k - l) - sh) < 0 && p0 < N - 2;
    const int pos = p0 - down + up;
    const double left = down ? xm : up ? x1k : x0k, right = down ? x0k : up ? x2k : x1k;
    const double dxl = (l - left) + sh, dxr = (right - l) - sh;
    const double4 c = vload4((size_t)(inside ? t : 0) * (N - 1) + pos, coeffs);
    const double val = c.s0 * dxl * dxl * dxl + c.s1 * dxr * dxr * dxr + c.s2 * dxl + c.s3 * dxr;
    const double slope = 3 * (c.s0 * dxl * dxl - c.s1 * dxr * dxr) + (c.s2 - c.s3);
    if (write_value)
        value[o] = inside ? val : (double)NAN;
    deriv[o] = inside ? slope * dxdv : (double)NAN;
#else
    if (t < 0 || t >= T || !(x >= xs[0]) || !(x < xs[N - 1])) {
        if (write_value)
            value[o] = (rvs_real)NAN;
        deriv[o] = (rvs_real)NAN;
        return;
    }
    const float u = log_step ? (lam[n + j] + doppler[3]) * doppler[4] : (x - x0) * doppler[4];
    int pos = clamp((int)u, 0, N - 2);
    rvs_real dxl = ((l - xs[pos]) + sh) + sl;
    while (dxl < 0 && pos > 0) {
        pos--;
        dxl = ((l - xs[pos]) + sh) + sl;
    }
    rvs_real dxr = ((xs[pos + 1] - l) - sh) - sl;
    while (dxr < 0 && pos < N - 2) {
        pos++;
        dxl = ((l - xs[pos]) + sh) + sl;
        dxr = ((xs[pos + 1] - l) - sh) - sl;
    }
    const float4 c = vload4((size_t)t * (N - 1) + pos, coeffs);
    if (write_value)
        value[o] = c.s0 * dxl * dxl * dxl + c.s1 * dxr * dxr * dxr + c.s2 * dxl + c.s3 * dxr;
    deriv[o] = (3 * (c.s0 * dxl * dxl - c.s1 * dxr * dxr) + (c.s2 - c.s3)) * dxdv;
#endif
}
