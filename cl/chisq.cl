/* chisq.cl: the continuum-marginalised chi^2 of rvspecfit (py/rvspecfit/spec_fit.py,
 * get_chisq0, _get_chisq0_numba_chol_resid, _get_chisq0_svd) for E requests at once:
 *     chi^2 = log det G + 2 sum log sigma + |D - S a|^2,  G = S^T S, a = G^-1 S^T D,
 * D = F/sigma, S_j = T P_j / sigma. The host (src/engine/chisq.c) runs:
 *   rvs_chisq_prepare        X1 = T^2 / sigma^2 and X2 = T F / sigma^2, E x n_pad
 *   GEMMs                    G = X1 PP (the npoly(npoly+1)/2 products P_j P_k), v = X2 P
 *   rvs_chisq_gram_reduce    (fp32) compensated sum of the K-blocked partial Gram matrices
 *   rvs_chisq_solve          per request: scaled Cholesky, or Jacobi eigen-decomposition where
 *                            Cholesky fails (rvspecfit's SVD path); log det; coefficients
 *   rvs_chisq_residual       per request (one work-group): |D - S a|^2 and the outputs
 *   rvs_chisq_refine         (fp32) one step of iterative refinement of a, from S^T r (a GEMM)
 * fp32 mode keeps chi^2 (~1e4) to ~1e-4 absolute: the Gram matrix is summed in short GEMM
 * blocks plus a compensated reduction, log det gets a first-order correction from the exact
 * factorisation residual G - L L^T, the coefficients are refined once, and the residual pass
 * runs in double-float arithmetic (data, 1/sigma and basis stored as hi + lo pairs). */

/* The error-free transformations below must not be contracted or reassociated. */
#pragma OPENCL FP_CONTRACT OFF

#define RVS_CHISQ_MAX_NPOLY 32

/* request modes written by rvs_chisq_solve */
#define MODE_CHOLESKY 0
#define MODE_EIGEN 1
#define MODE_RANK_DEFICIENT 2
#define MODE_NONFINITE 3

#if RVS_HAVE_FP64
#define RVS_CHISQ_LN2 M_LN2
#else
#define RVS_CHISQ_LN2 M_LN2_F
#endif

#if !RVS_HAVE_FP64
/* Double-float arithmetic (hi + lo, |lo| <= ulp(hi)/2): Dekker / Knuth error-free sums and
 * products, with fma for the exact product error. */
static inline float2 df_two_sum(float a, float b)
{
    float s = a + b;
    float bb = s - a;
    return (float2)(s, (a - (s - bb)) + (b - bb));
}

static inline float2 df_fast_two_sum(float a, float b) /* |a| >= |b| */
{
    float s = a + b;
    return (float2)(s, b - (s - a));
}

static inline float2 df_two_prod(float a, float b)
{
    float p = a * b;
    return (float2)(p, fma(a, b, -p));
}

static inline float2 df_add(float2 a, float2 b)
{
    float2 s = df_two_sum(a.x, b.x);
    float2 t = df_two_sum(a.y, b.y);
    s.y += t.x;
    s = df_fast_two_sum(s.x, s.y);
    s.y += t.y;
    return df_fast_two_sum(s.x, s.y);
}

static inline float2 df_mul(float2 a, float2 b)
{
    float2 p = df_two_prod(a.x, b.x);
    p.y += a.x * b.y + a.y * b.x;
    return df_fast_two_sum(p.x, p.y);
}

static inline float2 df_mul_f(float2 a, float b)
{
    float2 p = df_two_prod(a.x, b);
    p.y += a.y * b;
    return df_fast_two_sum(p.x, p.y);
}
#endif

/* X1[e, i] = T^2 w, X2[e, i] = T u with w = 1/sigma^2 and u = F/sigma^2 of spectrum s(e);
 * zero in the padding columns n <= i < n_pad. An index outside 0..S-1 poisons the request. */
__kernel void rvs_chisq_prepare(__global const rvs_real *models, __global const int *spectrum,
                                __global const rvs_real *w, __global const rvs_real *u, uint n,
                                uint n_pad, uint E, uint S, __global rvs_real *x1,
                                __global rvs_real *x2)
{
    size_t i = get_global_id(0), e = get_global_id(1);
    if (i >= n_pad || e >= E)
        return;
    rvs_real a = 0, b = 0;
    if (i < n) {
        int s = spectrum[e];
        rvs_real t = models[e * n + i];
        if (s < 0 || (uint)s >= S) {
            a = b = (rvs_real)NAN;
        } else {
            a = t * t * w[(size_t)s * n + i];
            b = t * u[(size_t)s * n + i];
        }
    }
    x1[e * n_pad + i] = a;
    x2[e * n_pad + i] = b;
}

/* fp32: G = sum over nb K-blocks of the partial Gram matrices, each E x [hi | lo] products,
 * compensated; hi + lo out. count = E npair. */
__kernel void rvs_chisq_gram_reduce(__global const rvs_real *parts, uint nb, uint count,
                                    uint npair, __global rvs_real *gh, __global rvs_real *gl)
{
    size_t id = get_global_id(0);
    if (id >= count)
        return;
    size_t at = (id / npair) * 2 * npair + id % npair;
    rvs_ksum s;
    rvs_ksum_init(&s);
    for (uint b = 0; b < nb; b++) {
        rvs_ksum_add(&s, parts[(size_t)b * 2 * count + at]);
        rvs_ksum_add(&s, parts[(size_t)b * 2 * count + at + npair]);
    }
    rvs_real hi = s.sum + s.comp;
    gh[id] = hi;
    gl[id] = (s.sum - hi) + s.comp;
}

/* Per-request factor storage (fac, stride 3 np^2 + 2 np):
 *   [0, np^2)        L (Cholesky, lower) or V (eigenvectors in columns)
 *   [np^2, 3 np^2)   scratch
 *   [3np^2, +np)     1/lambda (eigen; 0 for directions dropped as rank-deficient)
 *   [3np^2+np, +np)  scale s_j = 2^k_j with C = S G S */
#define FAC_STRIDE(np) (3 * (np) * (np) + 2 * (np))

/* y = C^-1 b through the stored factorisation (scaled space); y may alias b. */
static void apply_inverse(__global const rvs_real *f, int mode, uint np, rvs_real *b)
{
    __global const rvs_real *m = f;
    if (mode == MODE_CHOLESKY) {
        for (uint j = 0; j < np; j++) { /* L z = b */
            rvs_real t = b[j];
            for (uint k = 0; k < j; k++)
                t -= m[j * np + k] * b[k];
            b[j] = t / m[j * np + j];
        }
        for (uint jj = np; jj-- > 0;) { /* L^T y = z */
            rvs_real t = b[jj];
            for (uint k = jj + 1; k < np; k++)
                t -= m[k * np + jj] * b[k];
            b[jj] = t / m[jj * np + jj];
        }
    } else {
        __global const rvs_real *inv = f + 3 * np * np;
        rvs_real z[RVS_CHISQ_MAX_NPOLY];
        for (uint j = 0; j < np; j++) { /* z = Lambda^-1 V^T b */
            rvs_real t = 0;
            for (uint k = 0; k < np; k++)
                t += m[k * np + j] * b[k];
            z[j] = t * inv[j];
        }
        for (uint k = 0; k < np; k++) {
            rvs_real t = 0;
            for (uint j = 0; j < np; j++)
                t += m[k * np + j] * z[j];
            b[k] = t;
        }
    }
}

/* Cyclic Jacobi on the symmetric np x np matrix a (destroyed: its diagonal ends as the
 * eigenvalues), eigenvectors in the columns of v. Rotations are skipped once an off-diagonal
 * entry is negligible against its diagonal pair (relative accuracy on a scaled matrix). */
static void jacobi_eigen(__global rvs_real *a, __global rvs_real *v, uint np, rvs_real eps)
{
    for (uint j = 0; j < np * np; j++)
        v[j] = 0;
    for (uint j = 0; j < np; j++)
        v[j * np + j] = 1;
    for (int sweep = 0; sweep < 60; sweep++) {
        int rotated = 0;
        for (uint p = 0; p + 1 < np; p++)
            for (uint q = p + 1; q < np; q++) {
                rvs_real apq = a[p * np + q], app = a[p * np + p], aqq = a[q * np + q];
                if (fabs(apq) <= eps * sqrt(fabs(app) * fabs(aqq)))
                    continue;
                rotated = 1;
                /* Numerical Recipes' jacobi: the smaller root of t^2 + 2 theta t - 1 = 0 */
                rvs_real theta = (aqq - app) / (2 * apq);
                rvs_real t = fabs(theta) > (rvs_real)1e15
                                 ? (rvs_real)0.5 / theta
                                 : (theta >= 0 ? (rvs_real)1 : (rvs_real)-1) /
                                       (fabs(theta) + sqrt(theta * theta + 1));
                rvs_real c = 1 / sqrt(t * t + 1), s = t * c;
                rvs_real h = t * apq;
                a[p * np + p] = app - h;
                a[q * np + q] = aqq + h;
                a[p * np + q] = a[q * np + p] = 0;
                for (uint r = 0; r < np; r++) {
                    if (r == p || r == q)
                        continue;
                    rvs_real g = a[r * np + p], hh = a[r * np + q];
                    a[r * np + p] = a[p * np + r] = c * g - s * hh;
                    a[r * np + q] = a[q * np + r] = s * g + c * hh;
                }
                for (uint r = 0; r < np; r++) {
                    rvs_real g = v[r * np + p], hh = v[r * np + q];
                    v[r * np + p] = c * g - s * hh;
                    v[r * np + q] = s * g + c * hh;
                }
            }
        if (!rotated)
            break;
    }
}

/* One request: scale G by powers of two (exact) to unit-ish diagonal, factor, log det, solve.
 * gh/gl: packed upper triangle (j <= k, row by row), gl the fp32 low parts (ignored with
 * fp64). tol: pivots / eigenvalues at or below tol (relative to the scaled diagonal / to the
 * largest eigenvalue) count as zero. Writes coefficients (hi, lo), log det (hi, lo), mode. */
__kernel void rvs_chisq_solve(__global const rvs_real *gh, __global const rvs_real *gl,
                              __global const rvs_real *v, uint E, uint np, int force_fallback,
                              int scale_free, rvs_real tol, rvs_real eps, __global rvs_real *fac,
                              __global rvs_real *coef, __global rvs_real *logdet,
                              __global int *mode_out)
{
    size_t e = get_global_id(0);
    if (e >= E)
        return;
    uint npair = np * (np + 1) / 2;
    __global const rvs_real *g = gh + e * npair;
    __global rvs_real *f = fac + e * FAC_STRIDE(np);
    __global rvs_real *m = f, *c = f + np * np, *scr = f + 2 * np * np;
    __global rvs_real *inv = f + 3 * np * np, *scale = inv + np;
    rvs_real b[RVS_CHISQ_MAX_NPOLY];
    int finite = 1, mode = MODE_CHOLESKY;
    int expsum = 0;

    for (uint j = 0, p = 0; j < np; j++) {
        rvs_real d = g[p];
        int k = 0;
        if (d > 0 && isfinite(d)) {
            int ex;
            (void)frexp(d, &ex);
            k = -(ex / 2);
        }
        scale[j] = ldexp((rvs_real)1, k);
        expsum += k;
        p += np - j;
        if (!isfinite(v[e * np + j]))
            finite = 0;
    }
    /* C = S G S in c (full symmetric), b = S v */
    for (uint j = 0, p = 0; j < np; j++)
        for (uint k = j; k < np; k++, p++) {
            rvs_real x = g[p] * scale[j] * scale[k];
            if (!isfinite(x))
                finite = 0;
            c[j * np + k] = c[k * np + j] = x;
        }
    for (uint j = 0; j < np; j++)
        b[j] = v[e * np + j] * scale[j];

    rvs_real ld = 0;
    if (!finite) {
        mode = MODE_NONFINITE;
    } else {
        if (!force_fallback) { /* Cholesky, as in _get_chisq0_numba_chol_resid */
            for (uint j = 0; j < np && mode == MODE_CHOLESKY; j++) {
                rvs_real d = c[j * np + j];
                for (uint k = 0; k < j; k++)
                    d -= m[j * np + k] * m[j * np + k];
                if (!(d > tol) || !isfinite(d)) {
                    mode = MODE_EIGEN;
                    break;
                }
                rvs_real l = sqrt(d);
                m[j * np + j] = l;
                ld += 2 * log(l);
                for (uint i = j + 1; i < np; i++) {
                    rvs_real t = c[i * np + j];
                    for (uint k = 0; k < j; k++)
                        t -= m[i * np + k] * m[j * np + k];
                    m[i * np + j] = t / l;
                    m[j * np + i] = 0;
                }
            }
        } else {
            mode = MODE_EIGEN;
        }
        if (mode == MODE_EIGEN) { /* the SVD path of _get_chisq0_svd, for a symmetric matrix */
            for (uint j = 0; j < np * np; j++)
                scr[j] = c[j];
            jacobi_eigen(scr, m, np, eps / 16);
            rvs_real lmax = 0;
            for (uint j = 0; j < np; j++)
                lmax = fmax(lmax, fabs(scr[j * np + j]));
            ld = 0;
            for (uint j = 0; j < np; j++) {
                rvs_real l = scr[j * np + j];
                if (!(fabs(l) > tol * lmax)) {
                    mode = MODE_RANK_DEFICIENT;
                    inv[j] = 0;
                } else {
                    inv[j] = 1 / l;
                    ld += log(fabs(l));
                }
            }
        }
    }

    rvs_real ldl = 0;
#if !RVS_HAVE_FP64
    /* log det(C) = log det(A + E) = log det A + tr(A^-1 E) + O(E^2), A = L L^T or V Lambda
     * V^T; E = C - A is evaluated in double-float from C's hi and lo parts. Without it the
     * rounding of C and of the factorisation costs ~1e-4..1e-3 in chi^2 at npoly 10..15. */
    if (mode == MODE_CHOLESKY || mode == MODE_EIGEN) {
        __global const rvs_real *glo = gl + e * npair;
        for (uint j = 0, p = 0; j < np; j++)
            for (uint k = j; k < np; k++, p++) {
                float2 acc = (float2)(0, 0);
                for (uint q = 0; q < np; q++) {
                    if (mode == MODE_CHOLESKY) {
                        acc = df_add(acc, df_two_prod(m[j * np + q], m[k * np + q]));
                    } else {
                        float2 t = df_two_prod(m[j * np + q], scr[q * np + q]);
                        acc = df_add(acc, df_mul_f(t, m[k * np + q]));
                    }
                }
                float hi = c[j * np + k];
                float lo = glo[p] * scale[j] * scale[k];
                float2 diff = df_add((float2)(hi, lo), (float2)(-acc.x, -acc.y));
                c[j * np + k] = c[k * np + j] = diff.x; /* c now holds E */
            }
        float corr = 0;
        if (mode == MODE_CHOLESKY) {
            /* rows of L^-1 into scr (lower triangular), then sum_j r_j^T E r_j */
            for (uint col = 0; col < np; col++)
                for (uint j = 0; j < np; j++) {
                    float t = (j == col) ? 1.0f : 0.0f;
                    for (uint k = col; k < j; k++)
                        t -= m[j * np + k] * scr[k * np + col];
                    scr[j * np + col] = j < col ? 0.0f : t / m[j * np + j];
                }
            for (uint j = 0; j < np; j++)
                for (uint k = 0; k <= j; k++) {
                    float t = 0;
                    for (uint l = 0; l <= j; l++)
                        t += c[k * np + l] * scr[j * np + l];
                    corr += scr[j * np + k] * t;
                }
        } else {
            for (uint q = 0; q < np; q++) {
                float t = 0;
                for (uint k = 0; k < np; k++) {
                    float u = 0;
                    for (uint l = 0; l < np; l++)
                        u += c[k * np + l] * m[l * np + q];
                    t += m[k * np + q] * u;
                }
                corr += t * inv[q];
            }
        }
        /* ld + corr - 2 ln2 sum k, as hi + lo */
        float2 ln2 = (float2)(0x1.62e430p-1f, -0x1.05c610p-29f);
        float2 tot = df_add(df_two_sum(ld, corr), df_mul_f(ln2, (float)(-2 * expsum)));
        ld = tot.x;
        ldl = tot.y;
    } else
#endif
    {
        ld += -2 * RVS_CHISQ_LN2 * (rvs_real)expsum;
    }
    /* Scale-free continuum prior: log det G - npoly log tr G does not change when the template
     * is multiplied by a constant (G scales as its square), so the marginal likelihood no longer
     * prefers faint templates (rvs_chisq_arm_set_scale_free). */
    if (scale_free && mode != MODE_NONFINITE) {
        rvs_real tr = 0;
        for (uint j = 0, p = 0; j < np; j++) {
            tr += g[p];
            p += np - j;
        }
#if !RVS_HAVE_FP64
        float trl = 0;
        for (uint j = 0, p = 0; j < np; j++) {
            trl += gl[e * npair + p];
            p += np - j;
        }
        float2 t2 = df_add(df_two_sum(ld, ldl), (float2)(-(float)np * log(tr + trl), 0.0f));
        ld = t2.x;
        ldl = t2.y;
#else
        ld -= (rvs_real)np * log(tr);
#endif
    }

    if (mode == MODE_NONFINITE) {
        for (uint j = 0; j < np; j++)
            coef[e * 2 * np + j] = coef[e * 2 * np + np + j] = (rvs_real)NAN;
        ld = (rvs_real)NAN;
    } else {
        apply_inverse(f, mode, np, b);
        for (uint j = 0; j < np; j++) {
            coef[e * 2 * np + j] = b[j] * scale[j];
            coef[e * 2 * np + np + j] = 0;
        }
    }
    logdet[2 * e] = ld;
    logdet[2 * e + 1] = ldl;
    mode_out[e] = mode;
}

/* fp32 refinement: a += S C^-1 S g with g = S^T r from the last residual pass; a as hi + lo. */
__kernel void rvs_chisq_refine(__global const rvs_real *gv, __global const rvs_real *fac,
                               __global const int *mode_in, uint E, uint np,
                               __global rvs_real *coef)
{
    size_t e = get_global_id(0);
    if (e >= E)
        return;
    int mode = mode_in[e];
    if (mode == MODE_NONFINITE)
        return;
    __global const rvs_real *f = fac + e * FAC_STRIDE(np);
    __global const rvs_real *scale = f + 3 * np * np + np;
    rvs_real b[RVS_CHISQ_MAX_NPOLY];
    for (uint j = 0; j < np; j++)
        b[j] = gv[e * np + j] * scale[j];
    apply_inverse(f, mode, np, b);
#if !RVS_HAVE_FP64
    for (uint j = 0; j < np; j++) {
        float2 a = (float2)(coef[e * 2 * np + j], coef[e * 2 * np + np + j]);
        a = df_add(a, (float2)(b[j] * scale[j], 0));
        coef[e * 2 * np + j] = a.x;
        coef[e * 2 * np + np + j] = a.y;
    }
#else
    for (uint j = 0; j < np; j++)
        coef[e * 2 * np + j] += b[j] * scale[j];
#endif
}

/* ---- the residual pass's pieces, shared by rvs_chisq_residual and rvs_chisq_deriv so that
 * both sum the same |r|^2 in the same order (same work-group size: the same bits) ---- */

#if RVS_HAVE_FP64
typedef rvs_real rvs_resid; /* r */
typedef rvs_ksum rvs_resid_acc;
#else
typedef float2 rvs_resid; /* r as double-float */
/* r^2 summed in double-float: chi^2 of a poor velocity can be 1e5..1e6, where a float r^2
 * per pixel alone would cost more than 1e-3 */
typedef float2 rvs_resid_acc;
#endif

/* Pixel i of a request with model value t, spectrum offset so: the continuum in the arm's
 * orthonormal basis cont = sum_j a_j Q_ji, the best-fit model md = t cont (data units) and the
 * whitened residual r = D_i - md / sigma_i (double-float in fp32). */
static inline rvs_resid residual_at(uint i, uint n, uint np, rvs_real t, size_t so,
                                    __global const rvs_real *dh, __global const rvs_real *dl,
                                    __global const rvs_real *sh, __global const rvs_real *sl,
                                    __global const rvs_real *ph, __global const rvs_real *pl,
                                    __local const rvs_real *ah, __local const rvs_real *al,
                                    rvs_real *md_out, rvs_real *cont_out)
{
#if RVS_HAVE_FP64
    rvs_real cont = 0;
    for (uint j = 0; j < np; j++)
        cont += ah[j] * ph[(size_t)j * n + i];
    rvs_real md = t * cont;
    *md_out = md;
    *cont_out = cont;
    return dh[so + i] - md * sh[so + i];
#else
    float2 cont = (float2)(0, 0);
    for (uint j = 0; j < np; j++) {
        float2 a = (float2)(ah[j], al[j]);
        float2 p = (float2)(ph[(size_t)j * n + i], pl[(size_t)j * n + i]);
        cont = df_add(cont, df_mul(a, p));
    }
    float2 mdd = df_mul_f(cont, t);
    float2 m = df_mul(mdd, (float2)(sh[so + i], sl[so + i]));
    *md_out = mdd.x;
    *cont_out = cont.x + cont.y;
    return df_add((float2)(dh[so + i], dl[so + i]), (float2)(-m.x, -m.y));
#endif
}

static inline void resid_acc_init(rvs_resid_acc *acc)
{
#if RVS_HAVE_FP64
    rvs_ksum_init(acc);
#else
    *acc = (float2)(0, 0);
#endif
}

static inline void resid_acc_add(rvs_resid_acc *acc, rvs_resid rr)
{
#if RVS_HAVE_FP64
    rvs_ksum_add(acc, rr * rr);
#else
    float2 sq = df_two_prod(rr.x, rr.x);
    sq.y += 2 * rr.x * rr.y;
    *acc = df_add(*acc, sq);
#endif
}

static inline void resid_acc_store(const rvs_resid_acc *acc, __local rvs_acc *lsum,
                                   __local rvs_acc *lcomp, uint lid)
{
#if RVS_HAVE_FP64
    lsum[lid] = acc->sum;
    lcomp[lid] = acc->comp;
#else
    lsum[lid] = acc->x;
    lcomp[lid] = acc->y;
#endif
}

/* Tree sum of the work-group's (lsum, lcomp) pairs into lsum[0], lcomp[0]; L a power of two.
 * Starts and ends with a barrier, so it can follow stores to lsum/lcomp directly. */
static void group_sum(__local rvs_acc *lsum, __local rvs_acc *lcomp, uint lid, uint L)
{
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint h = L / 2; h > 0; h /= 2) {
        if (lid < h) {
#if RVS_HAVE_FP64
            rvs_acc a = lsum[lid], b = lsum[lid + h];
            rvs_acc t = a + b;
            rvs_acc err = fabs(a) >= fabs(b) ? (a - t) + b : (b - t) + a;
            lsum[lid] = t;
            lcomp[lid] += lcomp[lid + h] + err;
#else
            float2 t = df_add((float2)(lsum[lid], lcomp[lid]),
                              (float2)(lsum[lid + h], lcomp[lid + h]));
            lsum[lid] = t.x;
            lcomp[lid] = t.y;
#endif
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
}

/* chi^2 = |r|^2 (rsum + rcomp, the group's sum) + log det + 2 sum log sigma as (hi, lo); +inf for a
 * rank-deficient request, NaN for a non-finite one or a bad spectrum index. */
static void chisq_total(rvs_acc rsum, rvs_acc rcomp, __global const rvs_real *logdet,
                        __global const rvs_real *logsig, size_t e, int s, int valid, int mode,
                        rvs_real *hi_out, rvs_real *lo_out)
{
    rvs_real hi, lo;
#if RVS_HAVE_FP64
    hi = rsum + rcomp + logdet[2 * e] + logsig[2 * (size_t)(valid ? s : 0)];
    lo = 0;
#else
    float2 tot = (float2)(rsum, rcomp);
    tot = df_add(tot, (float2)(logdet[2 * e], logdet[2 * e + 1]));
    size_t so2 = 2 * (size_t)(valid ? s : 0);
    tot = df_add(tot, (float2)(logsig[so2], logsig[so2 + 1]));
    hi = tot.x;
    lo = tot.y;
#endif
    if (mode == MODE_RANK_DEFICIENT) {
        hi = (rvs_real)INFINITY;
        lo = 0;
    } else if (mode == MODE_NONFINITE || !valid || !isfinite(hi)) {
        hi = (rvs_real)NAN;
        lo = 0;
    }
    *hi_out = hi;
    *lo_out = lo;
}

/* One work-group per request (dimension 1), pixels strided over the group (dimension 0).
 * pass 0 (fp32 refinement): r_out[e, i] = r_i T_i / sigma_i for S^T r.
 * pass 1: chi^2 = |r|^2 + log det + 2 sum log sigma as (hi, lo); optional outputs. */
__kernel void rvs_chisq_residual(__global const rvs_real *models, __global const int *spectrum,
                                 __global const rvs_real *dh, __global const rvs_real *dl,
                                 __global const rvs_real *sh, __global const rvs_real *sl,
                                 __global const rvs_real *ph, __global const rvs_real *pl,
                                 __global const rvs_real *coef, __global const rvs_real *linvt,
                                 __global const rvs_real *logdet,
                                 __global const rvs_real *logsig, __global const int *mode_in,
                                 uint n, uint n_pad, uint np, uint E, uint S, int pass,
                                 __global rvs_real *r_out, __global rvs_real *chisq,
                                 __global rvs_real *coef_out, __global rvs_real *model_out,
                                 int want_coef, int want_model, __local rvs_acc *lsum,
                                 __local rvs_acc *lcomp)
{
    __local rvs_real ah[RVS_CHISQ_MAX_NPOLY], al[RVS_CHISQ_MAX_NPOLY];
    size_t e = get_global_id(1);
    uint lid = get_local_id(0), L = get_local_size(0);
    if (e >= E) /* uniform over the work-group */
        return;
    for (uint j = lid; j < np; j += L) {
        ah[j] = coef[e * 2 * np + j];
        al[j] = coef[e * 2 * np + np + j];
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    int s = spectrum[e];
    int valid = s >= 0 && (uint)s < S;
    size_t so = valid ? (size_t)s * n : 0;
    rvs_resid_acc acc;
    resid_acc_init(&acc);
    for (uint i = lid; i < n; i += L) {
        rvs_real t = models[e * n + i];
        rvs_real md, cont;
        rvs_resid rr = residual_at(i, n, np, t, so, dh, dl, sh, sl, ph, pl, ah, al, &md, &cont);
#if RVS_HAVE_FP64
        rvs_real r = rr;
#else
        float r = rr.x + rr.y;
#endif
        if (pass == 0) {
            r_out[e * n_pad + i] = r * t * sh[so + i];
        } else {
            resid_acc_add(&acc, rr);
            if (want_model)
                model_out[e * n + i] = md;
        }
    }
    if (pass == 0)
        return;
    resid_acc_store(&acc, lsum, lcomp, lid);
    group_sum(lsum, lcomp, lid, L);
    if (lid == 0) {
        int mode = mode_in[e];
        rvs_real hi, lo;
        chisq_total(lsum[0], lcomp[0], logdet, logsig, e, s, valid, mode, &hi, &lo);
        chisq[2 * e] = hi;
        chisq[2 * e + 1] = lo;
        if (want_coef) /* rvspecfit's basis: a = L^-T b */
            for (uint j = 0; j < np; j++) {
#if RVS_HAVE_FP64
                rvs_real t = 0;
                for (uint k = 0; k < np; k++)
                    t += linvt[j * np + k] * ah[k];
                coef_out[e * np + j] = t;
#else
                float2 t = (float2)(0, 0);
                for (uint k = 0; k < np; k++)
                    t = df_add(t, df_mul((float2)(linvt[j * np + k], linvt[np * np + j * np + k]),
                                         (float2)(ah[k], al[k])));
                coef_out[e * np + j] = t.x + t.y;
#endif
            }
    }
}

/* ---------------------------------------------------------------- derivatives
 *
 * rvs_chisq_deriv: chi^2, its gradient along K tangents and a Gauss-Newton matrix, for the
 * requests of rvs_chisq_eval_deriv (include/rvsfit/chisq.h has the formulas). It replaces the
 * final residual pass of rvs_chisq_eval: the Gram matrix, factorisation and coefficients come
 * from the same stages, and this kernel makes the one remaining pass over the pixels.
 *
 * One work-group of L work-items per request; pixels in tiles of L (pixel b + lid goes to
 * work-item lid, the residual pass's order, so chi^2 is the same sum). Per pixel, with
 * tt = T/sigma, tk_k = T_k/sigma, q the orthonormal basis column, c = q.a the continuum,
 * r the whitened residual, h = q^T G^-1 q, lev = |q|^2:
 *   gradient  g_k += tk_k z, z = 2 (tt (h - [scale-free] npoly lev / tr G) - r c)  (private)
 *   tile      y_k = tk_k c (the columns of S_k a) and w_j = tt q_j (the columns of S)
 * and after each tile the work-group sums Y^T Y (K(K+1)/2 entries) and U = S^T Y (npoly x K)
 * over the tile, one accumulator per work-item, into compensated running sums in local memory.
 * The Gauss-Newton matrix is 2 (Y^T Y - U^T G^-1 U) = 2 |(I - Pi_S) Y|^2, made positive
 * semi-definite by a Cholesky factorisation whose pivots at the rounding level of Y^T Y (the
 * size before the projection cancels) are set to zero: directions that lie in the continuum's
 * span to rounding get exactly zero curvature instead of +-rounding noise. */

#define RVS_CHISQ_MAX_TANGENTS 8

/* (k, l), k <= l, of packed upper-triangle index p of a K x K matrix */
static inline void pair_of(uint p, uint K, uint *k, uint *l)
{
    uint kk = 0;
    while (p >= K - kk) {
        p -= K - kk;
        kk++;
    }
    *k = kk;
    *l = kk + p;
}

/* One scalar across the work-group: every work-item's (sum, comp) into (lsum, lcomp) and the
 * tree; the total (sum + comp) for lid 0. */
static rvs_real group_total(rvs_acc sum, rvs_acc comp, __local rvs_acc *lsum,
                            __local rvs_acc *lcomp, uint lid, uint L)
{
    barrier(CLK_LOCAL_MEM_FENCE); /* lsum may still be read by an earlier tree's lid 0 */
    lsum[lid] = sum;
    lcomp[lid] = comp;
    group_sum(lsum, lcomp, lid, L);
    return lsum[0] + lcomp[0];
}

/* G^-1 = Sc C^-1 Sc from the factorisation of the scaled C = Sc G Sc (fac of rvs_chisq_solve)
 * into ginv (np x np), for both derivative kernels. Cholesky: the columns of L^-1 (one per
 * work-item) into tile first; eigen: V Lambda^+ V^T, dropped directions have inv 0. Every
 * work-item of the group calls it (barriers); ginv is complete on return. */
static void deriv_ginv(__global const rvs_real *f, int solved, int mode, uint np,
                       __local rvs_real *tile, __local rvs_real *ginv, uint lid, uint L)
{
    __global const rvs_real *inv = f + 3 * np * np, *scale = inv + np;
    if (solved && mode == MODE_CHOLESKY) {
        __local rvs_real *linv = tile;
        for (uint col = lid; col < np; col += L)
            for (uint j = 0; j < np; j++) {
                rvs_real t = j == col ? (rvs_real)1 : (rvs_real)0;
                for (uint k = col; k < j; k++)
                    t -= f[j * np + k] * linv[k * np + col];
                linv[j * np + col] = j < col ? (rvs_real)0 : t / f[j * np + j];
            }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint p = lid; p < np * np; p += L) {
        uint j = p / np, l = p % np;
        rvs_real t = 0;
        if (solved && mode == MODE_CHOLESKY) {
            __local const rvs_real *linv = tile;
            for (uint m = j > l ? j : l; m < np; m++)
                t += linv[m * np + j] * linv[m * np + l];
        } else if (solved) {
            for (uint m = 0; m < np; m++)
                t += f[j * np + m] * inv[m] * f[l * np + m];
        }
        ginv[p] = t * scale[j] * scale[l];
    }
    barrier(CLK_LOCAL_MEM_FENCE); /* ginv complete; linv no longer needed */
}

/* The scale-free prior's npoly / tr G (tr in the orthonormal basis, as rvs_chisq_solve). */
static rvs_real scale_free_factor(__global const rvs_real *gh, __global const rvs_real *gl,
                                  size_t e, uint np)
{
    uint npair = np * (np + 1) / 2;
    rvs_real tr = 0;
    for (uint j = 0, p = 0; j < np; j++) {
        tr += gh[e * npair + p];
#if !RVS_HAVE_FP64
        tr += gl[e * npair + p];
#endif
        p += np - j;
    }
    return (rvs_real)np / tr;
}

/* The end of both derivative kernels, once chi^2 (hi, lo), the gradient (gout) and the sums
 * acc ((sum, comp) pairs: Y^T Y packed, then U = S^T Y, npoly x K) are in local memory: the
 * Gauss-Newton matrix 2 (Y^T Y - U^T G^-1 U), made positive semi-definite by a Cholesky
 * factorisation whose pivots at the rounding level of Y^T Y are dropped, and the outputs.
 * Every work-item of the group calls it (barriers); work-item 0 writes. */
static void deriv_finish(__local const rvs_acc *acc, __local const rvs_real *ginv,
                         __local rvs_real *tile, __local const rvs_real *gout, uint np, uint K,
                         int want_gn, rvs_real psd_tol, int solved, rvs_real hi, rvs_real lo,
                         size_t e, __global rvs_real *chisq, __global rvs_real *grad,
                         __global rvs_real *gn, uint lid, uint L)
{
    uint npk = K * (K + 1) / 2;
    /* GN: W = G^-1 U (npoly x K) into the tile, then M = Y^T Y - U^T W (K x K, full) after it */
    __local rvs_real *wm = tile, *mm = tile + np * K;
    if (want_gn) {
        for (uint p = lid; p < np * K; p += L) {
            uint j = p / K, k = p % K;
            rvs_real t = 0;
            for (uint m = 0; m < np; m++)
                t += ginv[j * np + m] * (acc[2 * (npk + m * K + k)] + acc[2 * (npk + m * K + k) + 1]);
            wm[p] = t;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (uint p = lid; p < npk; p += L) {
            uint k, l;
            pair_of(p, K, &k, &l);
            rvs_real t = acc[2 * p] + acc[2 * p + 1];
            for (uint j = 0; j < np; j++)
                t -= (acc[2 * (npk + j * K + k)] + acc[2 * (npk + j * K + k) + 1]) *
                     wm[j * K + l];
            mm[k * K + l] = mm[l * K + k] = t;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid != 0)
        return;

    chisq[2 * e] = hi;
    chisq[2 * e + 1] = lo;
    int ok = solved && isfinite(hi);
    for (uint k = 0; k < K; k++)
        ok = ok && isfinite(gout[k]);
    if (want_gn)
        for (uint k = 0; k < K * K; k++)
            ok = ok && isfinite(mm[k]);
    for (uint k = 0; k < K; k++)
        grad[e * K + k] = ok ? gout[k] : (rvs_real)NAN;
    if (!want_gn)
        return;
    /* Cholesky of M in place (lower triangle into cf, after mm), pivots at the rounding level
     * of the unprojected Y^T Y dropped; then GN = 2 cf cf^T. Exactly symmetric: entry (k, l)
     * and (l, k) are the same products in the same order. */
    __local rvs_real *cf = mm + K * K;
    for (uint j = 0; j < K; j++) {
        rvs_real d = mm[j * K + j];
        for (uint m = 0; m < j; m++)
            d -= cf[j * K + m] * cf[j * K + m];
        uint pj = j * K - j * (j - 1) / 2; /* packed index of (j, j) */
        rvs_real thr = psd_tol * (acc[2 * pj] + acc[2 * pj + 1]);
        /* y_j itself in the span to rounding: row and column j of GN exactly zero; else a
         * pivot at the rounding level (y_j's projection a combination of earlier ones'):
         * column j zero, the row keeps its coupling to the earlier directions */
        int keep = d > thr;
        rvs_real ljj = keep ? sqrt(d) : (rvs_real)0;
        if (!(mm[j * K + j] > thr))
            for (uint m = 0; m < j; m++)
                cf[j * K + m] = 0;
        for (uint i2 = 0; i2 < K; i2++) {
            if (i2 < j) {
                cf[i2 * K + j] = 0;
            } else if (i2 == j) {
                cf[j * K + j] = ljj;
            } else {
                rvs_real t = mm[i2 * K + j];
                for (uint m = 0; m < j; m++)
                    t -= cf[i2 * K + m] * cf[j * K + m];
                cf[i2 * K + j] = keep ? t / ljj : (rvs_real)0;
            }
        }
    }
    for (uint k = 0; k < K; k++)
        for (uint l = 0; l < K; l++) {
            rvs_real t = 0;
            uint top = k < l ? k : l;
            for (uint m = 0; m <= top; m++)
                t += cf[k * K + m] * cf[l * K + m];
            gn[(e * K + k) * K + l] = ok ? 2 * t : (rvs_real)NAN;
        }
}

__kernel void rvs_chisq_deriv(__global const rvs_real *models, __global const rvs_real *tangents,
                              __global const int *spectrum, __global const rvs_real *dh,
                              __global const rvs_real *dl, __global const rvs_real *sh,
                              __global const rvs_real *sl, __global const rvs_real *ph,
                              __global const rvs_real *pl, __global const rvs_real *coef,
                              __global const rvs_real *gh, __global const rvs_real *gl,
                              __global const rvs_real *fac, __global const rvs_real *logdet,
                              __global const rvs_real *logsig, __global const int *mode_in,
                              uint n, uint np, uint K, uint E, uint S, uint trow0,
                              int scale_free,
                              int want_gn, rvs_real psd_tol, __global rvs_real *chisq,
                              __global rvs_real *grad, __global rvs_real *gn,
                              __local rvs_real *tile, __local rvs_acc *acc,
                              __local rvs_acc *lsum, __local rvs_acc *lcomp,
                              __local rvs_real *ginv)
{
    __local rvs_real ah[RVS_CHISQ_MAX_NPOLY], al[RVS_CHISQ_MAX_NPOLY];
    __local rvs_real gout[RVS_CHISQ_MAX_TANGENTS];
    size_t e = get_global_id(1);
    uint lid = get_local_id(0), L = get_local_size(0);
    if (e >= E) /* uniform over the work-group */
        return;
    uint npk = K * (K + 1) / 2, nacc = npk + np * K;
    int s = spectrum[e];
    int valid = s >= 0 && (uint)s < S;
    size_t so = valid ? (size_t)s * n : 0;
    int mode = mode_in[e];
    int solved = valid && (mode == MODE_CHOLESKY || mode == MODE_EIGEN);
    __global const rvs_real *f = fac + e * FAC_STRIDE(np);

    for (uint j = lid; j < np; j += L) {
        ah[j] = coef[e * 2 * np + j];
        al[j] = coef[e * 2 * np + np + j];
    }
    for (uint p = lid; p < nacc; p += L)
        acc[2 * p] = acc[2 * p + 1] = 0;

    deriv_ginv(f, solved, mode, np, tile, ginv, lid, L);
    /* the scale-free prior's npoly / tr G */
    rvs_real sf = scale_free ? scale_free_factor(gh, gl, e, np) : (rvs_real)0;

    rvs_resid_acc racc;
    resid_acc_init(&racc);
    rvs_ksum gacc[RVS_CHISQ_MAX_TANGENTS];
    for (uint k = 0; k < RVS_CHISQ_MAX_TANGENTS; k++)
        rvs_ksum_init(&gacc[k]);
    __local rvs_real *ty = tile, *tw = tile + K * L; /* y_k at [k L + lid], w_j at [j L + lid] */

    for (uint b = 0; b < n; b += L) {
        uint i = b + lid;
        if (i < n) {
            rvs_real t = models[e * n + i];
            rvs_real md, c;
            rvs_resid rr = residual_at(i, n, np, t, so, dh, dl, sh, sl, ph, pl, ah, al, &md, &c);
            resid_acc_add(&racc, rr);
#if RVS_HAVE_FP64
            rvs_real r = rr;
#else
            float r = rr.x + rr.y;
#endif
            rvs_real sv = sh[so + i], tt = t * sv;
            /* q into this work-item's column of tw, then h = q^T G^-1 q and |q|^2 */
            for (uint j = 0; j < np; j++)
                tw[j * L + lid] = ph[(size_t)j * n + i];
            rvs_real h = 0, lev = 0;
            for (uint j = 0; j < np; j++) {
                rvs_real qj = tw[j * L + lid], row = 0;
                for (uint l = 0; l < np; l++)
                    row += ginv[j * np + l] * tw[l * L + lid];
                h += qj * row;
                lev += qj * qj;
            }
            rvs_real z = 2 * (tt * (h - sf * lev) - r * c);
            for (uint k = 0; k < K; k++) {
                rvs_real tk = tangents[((size_t)trow0 + (size_t)k * E + e) * n + i] * sv;
                rvs_ksum_add(&gacc[k], tk * z);
                ty[k * L + lid] = tk * c;
            }
            for (uint j = 0; j < np; j++)
                tw[j * L + lid] *= tt;
        } else {
            for (uint k = 0; k < K; k++)
                ty[k * L + lid] = 0;
            for (uint j = 0; j < np; j++)
                tw[j * L + lid] = 0;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        if (want_gn) {
            uint cnt = n - b < L ? n - b : L;
            for (uint p = lid; p < nacc; p += L) {
                __local const rvs_real *x, *y;
                if (p < npk) {
                    uint k, l;
                    pair_of(p, K, &k, &l);
                    x = ty + k * L;
                    y = ty + l * L;
                } else {
                    x = tw + ((p - npk) / K) * L;
                    y = ty + ((p - npk) % K) * L;
                }
                rvs_acc part = 0;
                for (uint q = 0; q < cnt; q++)
                    part += x[q] * y[q];
                /* the tile's partial sum into a compensated running sum (Neumaier) */
                rvs_acc sum = acc[2 * p], t = sum + part;
                acc[2 * p + 1] += fabs(sum) >= fabs(part) ? (sum - t) + part : (part - t) + sum;
                acc[2 * p] = t;
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    /* chi^2: the residual pass's tree and total */
    resid_acc_store(&racc, lsum, lcomp, lid);
    group_sum(lsum, lcomp, lid, L);
    rvs_real hi = 0, lo = 0;
    if (lid == 0)
        chisq_total(lsum[0], lcomp[0], logdet, logsig, e, s, valid, mode, &hi, &lo);
    for (uint k = 0; k < K; k++) {
        rvs_real g = group_total(gacc[k].sum, gacc[k].comp, lsum, lcomp, lid, L);
        if (lid == 0)
            gout[k] = g;
    }
    deriv_finish(acc, ginv, tile, gout, np, K, want_gn, psd_tol, solved, hi, lo, e, chisq, grad, gn,
                 lid, L);
}

/* ---------------------------------------------------------------- CPU kernels
 *
 * rvs_chisq_residual_blocks and rvs_chisq_deriv_blocks: the residual pass and the derivative
 * kernel for CPU devices (the context's vector_blocks), fp64 only. PoCL runs a work-group as a
 * loop over its work-items and vectorises only innermost loops; in the kernels above the
 * innermost loops run over the basis functions of one pixel, so they ran as scalar code (the
 * derivative kernel alone was 12 % of a realistic fit's samples on two cores). Here one
 * work-item (work-group size 1) takes a whole request and walks its pixels in blocks of
 * RVS_CHISQ_BLOCK in vector types, with the same per-pixel formulas as residual_at and
 * rvs_chisq_deriv; |r|^2 and the gradient are summed with compensation per lane, the
 * Gauss-Newton sums plainly per lane, and the lanes are added in order at the end. Both kernels
 * share that order, so chi^2 is the same from either, to the bit. The end (G^-1, the
 * Gauss-Newton matrix, outputs) is deriv_ginv and deriv_finish, as above. */

#define RVS_CHISQ_BLOCK 8
/* Gauss-Newton sums K(K+1)/2 + npoly K the CPU derivative kernel keeps in vector registers at
 * most; the host falls back to rvs_chisq_deriv beyond (npoly 10 and 6 tangents: 81) */
#define RVS_CHISQ_BLOCKS_MAX_ACC 128

#if RVS_HAVE_FP64
/* RVS_CHISQ_BLOCK values of p from i0; zeros past n (a zero pixel adds nothing to any sum) */
static inline double8 load_block(__global const double *p, uint i0, uint n)
{
    if (i0 + RVS_CHISQ_BLOCK <= n)
        return vload8(0, p + i0);
    double v[RVS_CHISQ_BLOCK];
    for (uint l = 0; l < RVS_CHISQ_BLOCK; l++)
        v[l] = i0 + l < n ? p[i0 + l] : 0.0;
    return vload8(0, v);
}

static inline void store_block(__global double *p, uint i0, uint n, double8 x)
{
    if (i0 + RVS_CHISQ_BLOCK <= n) {
        vstore8(x, 0, p + i0);
        return;
    }
    double v[RVS_CHISQ_BLOCK];
    vstore8(x, 0, v);
    for (uint l = 0; i0 + l < n; l++)
        p[i0 + l] = v[l];
}

/* Neumaier's compensated sum, lane by lane */
static inline void ksum8_add(double8 *sum, double8 *comp, double8 x)
{
    double8 t = *sum + x;
    *comp += select((x - t) + *sum, (*sum - t) + x, isgreaterequal(fabs(*sum), fabs(x)));
    *sum = t;
}

/* The lanes of (sum, comp) added in order: (total, its compensation) */
static inline void lanes_total(double8 sum, double8 comp, double *total, double *total_comp)
{
    double s[RVS_CHISQ_BLOCK], c[RVS_CHISQ_BLOCK];
    vstore8(sum, 0, s);
    vstore8(comp, 0, c);
    rvs_ksum k;
    rvs_ksum_init(&k);
    double cc = 0;
    for (uint l = 0; l < RVS_CHISQ_BLOCK; l++) {
        rvs_ksum_add(&k, s[l]);
        cc += c[l];
    }
    *total = k.sum;
    *total_comp = k.comp + cc;
}

/* residual_at for the pixels [i0, i0 + B): the continuum cont = sum_j a_j Q_j and the whitened
 * residual D - t cont / sigma, the same operations in the same order per pixel */
static inline double8 residual_block(uint i0, uint n, uint np, double8 t, size_t so,
                                     __global const double *dh, __global const double *sh,
                                     __global const double *ph, const double *a,
                                     double8 *cont_out)
{
    double8 cont = (double8)(0);
    for (uint j = 0; j < np; j++)
        cont += a[j] * load_block(ph + (size_t)j * n, i0, n);
    *cont_out = cont;
    return load_block(dh + so, i0, n) - (t * cont) * load_block(sh + so, i0, n);
}
#endif

/* rvs_chisq_residual's pass 1 (chi^2 and the optional outputs) for CPU devices, with its
 * arguments (dl, sl, pl, n_pad, pass, r_out and the local buffers unused). Global size 1 x E,
 * work-groups of 1. */
__kernel void rvs_chisq_residual_blocks(__global const rvs_real *models,
                                        __global const int *spectrum,
                                        __global const rvs_real *dh, __global const rvs_real *dl,
                                        __global const rvs_real *sh, __global const rvs_real *sl,
                                        __global const rvs_real *ph, __global const rvs_real *pl,
                                        __global const rvs_real *coef,
                                        __global const rvs_real *linvt,
                                        __global const rvs_real *logdet,
                                        __global const rvs_real *logsig,
                                        __global const int *mode_in, uint n, uint n_pad, uint np,
                                        uint E, uint S, int pass, __global rvs_real *r_out,
                                        __global rvs_real *chisq, __global rvs_real *coef_out,
                                        __global rvs_real *model_out, int want_coef,
                                        int want_model, __local rvs_acc *lsum,
                                        __local rvs_acc *lcomp)
{
#if RVS_HAVE_FP64
    size_t e = get_global_id(1);
    if (e >= E)
        return;
    double a[RVS_CHISQ_MAX_NPOLY];
    for (uint j = 0; j < np; j++)
        a[j] = coef[e * 2 * np + j];
    int s = spectrum[e];
    int valid = s >= 0 && (uint)s < S;
    size_t so = valid ? (size_t)s * n : 0;
    double8 sum = (double8)(0), comp = (double8)(0);
    for (uint i0 = 0; i0 < n; i0 += RVS_CHISQ_BLOCK) {
        double8 t = load_block(models + e * n, i0, n), cont;
        double8 r = residual_block(i0, n, np, t, so, dh, sh, ph, a, &cont);
        ksum8_add(&sum, &comp, r * r);
        if (want_model)
            store_block(model_out + e * n, i0, n, t * cont);
    }
    double rs, rc, hi, lo;
    lanes_total(sum, comp, &rs, &rc);
    chisq_total(rs, rc, logdet, logsig, e, s, valid, mode_in[e], &hi, &lo);
    chisq[2 * e] = hi;
    chisq[2 * e + 1] = lo;
    if (want_coef) /* rvspecfit's basis: a = L^-T b */
        for (uint j = 0; j < np; j++) {
            double t = 0;
            for (uint k = 0; k < np; k++)
                t += linvt[j * np + k] * a[k];
            coef_out[e * np + j] = t;
        }
#endif
}

/* rvs_chisq_deriv for CPU devices, with its arguments (dl, sl, pl, lsum and lcomp unused; the
 * local buffers sized for work-groups of 1). Global size 1 x E, work-groups of 1. */
__kernel void rvs_chisq_deriv_blocks(__global const rvs_real *models,
                                     __global const rvs_real *tangents,
                                     __global const int *spectrum, __global const rvs_real *dh,
                                     __global const rvs_real *dl, __global const rvs_real *sh,
                                     __global const rvs_real *sl, __global const rvs_real *ph,
                                     __global const rvs_real *pl, __global const rvs_real *coef,
                                     __global const rvs_real *gh, __global const rvs_real *gl,
                                     __global const rvs_real *fac,
                                     __global const rvs_real *logdet,
                                     __global const rvs_real *logsig,
                                     __global const int *mode_in, uint n, uint np, uint K,
                                     uint E, uint S, uint trow0, int scale_free, int want_gn,
                                     rvs_real psd_tol, __global rvs_real *chisq,
                                     __global rvs_real *grad, __global rvs_real *gn,
                                     __local rvs_real *tile, __local rvs_acc *acc,
                                     __local rvs_acc *lsum, __local rvs_acc *lcomp,
                                     __local rvs_real *ginv)
{
#if RVS_HAVE_FP64
    __local double gout[RVS_CHISQ_MAX_TANGENTS];
    size_t e = get_global_id(1);
    if (e >= E) /* work-groups of 1 */
        return;
    uint npk = K * (K + 1) / 2, nacc = npk + np * K;
    int s = spectrum[e];
    int valid = s >= 0 && (uint)s < S;
    size_t so = valid ? (size_t)s * n : 0;
    int mode = mode_in[e];
    int solved = valid && (mode == MODE_CHOLESKY || mode == MODE_EIGEN);
    double a[RVS_CHISQ_MAX_NPOLY];
    for (uint j = 0; j < np; j++)
        a[j] = coef[e * 2 * np + j];
    deriv_ginv(fac + e * FAC_STRIDE(np), solved, mode, np, tile, ginv, 0, 1);
    double sf = scale_free ? scale_free_factor(gh, gl, e, np) : 0.0;

    double8 csum = (double8)(0), ccomp = (double8)(0);
    double8 gsum[RVS_CHISQ_MAX_TANGENTS], gcomp[RVS_CHISQ_MAX_TANGENTS];
    double8 sums[RVS_CHISQ_BLOCKS_MAX_ACC];
    for (uint k = 0; k < K; k++)
        gsum[k] = gcomp[k] = (double8)(0);
    for (uint p = 0; p < nacc; p++)
        sums[p] = (double8)(0);
    for (uint i0 = 0; i0 < n; i0 += RVS_CHISQ_BLOCK) {
        double8 t = load_block(models + e * n, i0, n), c;
        double8 r = residual_block(i0, n, np, t, so, dh, sh, ph, a, &c);
        ksum8_add(&csum, &ccomp, r * r);
        double8 sv = load_block(sh + so, i0, n), tt = t * sv;
        /* h = q^T G^-1 q and |q|^2 */
        double8 q[RVS_CHISQ_MAX_NPOLY], h = (double8)(0), lev = (double8)(0);
        for (uint j = 0; j < np; j++)
            q[j] = load_block(ph + (size_t)j * n, i0, n);
        for (uint j = 0; j < np; j++) {
            double8 row = (double8)(0);
            for (uint l = 0; l < np; l++)
                row += ginv[j * np + l] * q[l];
            h += q[j] * row;
            lev += q[j] * q[j];
        }
        double8 z = 2 * (tt * (h - sf * lev) - r * c);
        double8 y[RVS_CHISQ_MAX_TANGENTS];
        for (uint k = 0; k < K; k++) {
            double8 tk = load_block(tangents + ((size_t)trow0 + (size_t)k * E + e) * n, i0, n) * sv;
            ksum8_add(&gsum[k], &gcomp[k], tk * z);
            y[k] = tk * c;
        }
        if (want_gn) {
            uint p = 0;
            for (uint k = 0; k < K; k++) /* Y^T Y packed as pair_of reads it */
                for (uint l = k; l < K; l++)
                    sums[p++] += y[k] * y[l];
            for (uint j = 0; j < np; j++) { /* U = S^T Y: w_j = tt q_j */
                double8 w = tt * q[j];
                for (uint k = 0; k < K; k++)
                    sums[p++] += w * y[k];
            }
        }
    }
    double hi, lo, rs, rc;
    lanes_total(csum, ccomp, &rs, &rc);
    chisq_total(rs, rc, logdet, logsig, e, s, valid, mode, &hi, &lo);
    for (uint k = 0; k < K; k++) {
        double gs, gc;
        lanes_total(gsum[k], gcomp[k], &gs, &gc);
        gout[k] = gs + gc;
    }
    for (uint p = 0; p < nacc; p++) {
        double as, ac;
        lanes_total(sums[p], (double8)(0), &as, &ac);
        acc[2 * p] = as;
        acc[2 * p + 1] = ac;
    }
    deriv_finish(acc, ginv, tile, gout, np, K, want_gn, psd_tol, solved, hi, lo, e, chisq, grad,
                 gn, 0, 1);
#endif
}
