/* test_chisq_deriv.c: rvs_chisq_eval_deriv (chi^2, its gradient along K tangents and the
 * Gauss-Newton matrix) in fp64 and forced fp32, with both kernels in fp64 (the work-group one
 * of GPUs and the per-request vector blocks of CPU devices), against
 *   - rvs_chisq_eval's chi^2 on the same requests,
 *   - a plain-C long-double reference of the gradient and of 2 (Y^T Y - U^T G^-1 U),
 *   - (fp64) a central finite difference of rvs_chisq_eval along T + h T_k, Richardson
 *     extrapolated,
 *   - closed forms: the tangent T itself (a pure change of scale) has gradient 2 npoly with
 *     the flat prior, 0 with the scale-free one, and zero Gauss-Newton curvature;
 *   - special values: NaN model, NaN tangent, rank-deficient (impulse) template,
 * and measures (fp64) how far the Gauss-Newton matrix is from a finite-difference Hessian of a
 * parametric stellar model (tangents by complex step) at the optimum and away from it.
 *
 * Errors and tolerances (tests/tolerances.h, RVS_TOL_CHISQ_DERIV_*; the test prints every maximum):
 *   chi^2 vs rvs_chisq_eval, relative: RVS_TOL_CHISQ_DERIV_CHISQ (the same sum; a different work-group size,
 *     on devices with little local memory, changes only its rounding).
 *   gradient, |g_dev - g_ref| / (sum_i |t_ki z_i| + 2 |D| |y_k|) (the sum's own magnitude,
 *     where rounding of the terms acts, plus the envelope formula's first-order sensitivity
 *     to rounding of the coefficients a: 2 (S da)^T y_k with |S da| ~ eps |D|; it dominates
 *     at high S/N near a perfect fit, and is ~1e-13 of a parameter's error there): fp64 RVS_TOL_CHISQ_DERIV_GRAD_FP64 (measured ~1e-14 .. 1e-13), fp32 RVS_TOL_CHISQ_DERIV_GRAD_FP32
 *     (float terms: h_i = q^T G^-1 q and r_i c_i each carry a few ulp of 6e-8, a is refined
 *     once in double-float; measured ~6e-9).
 *   gradient vs finite difference (fp64 only: fp32 chi^2 carries ~1e-4 absolute rounding,
 *     which the difference quotient would divide by h), same normalisation: RVS_TOL_CHISQ_DERIV_GRAD_FD.
 *   Gauss-Newton vs reference, max |GN_dev - GN_ref| / max_k 2 |y_k|^2 (the unprojected size,
 *     where the cancellation of Y^T Y - U^T G^-1 U leaves its rounding): fp64 RVS_TOL_CHISQ_DERIV_GN_FP64,
 *     fp32 RVS_TOL_CHISQ_DERIV_GN_FP32 (float sums of products that cancel through the projection; measured
 *     4.5e-7, the worst on the 37-pixel case).
 *   GN symmetric exactly; positive semi-definite: smallest eigenvalue >= -RVS_TOL_CHISQ_DERIV_PSD_FP64/FP32 x
 *     largest diagonal (the rounding of GN = 2 cf cf^T: a few ulp of rvs_real). */
#include <config.h>

#include <complex.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "testutil.h"
#include "tolerances.h"

#define KMAX RVS_CHISQ_MAX_TANGENTS
#define NPMAX 16

enum spec_kind { SPEC_PERFECT, SPEC_FAR, SPEC_MASKED };

/* One arm's worth of requests: E models (and K tangents each) against S spectra. */
struct problem {
    size_t n, np, E, S, K;
    int rbf, scale_free;
    double *lam, *basis;   /* basis: npoly x n, rvspecfit's (not orthonormalised) */
    double *spec, *espec;  /* S x n */
    double *model, *tan;   /* E x n, E K x n, as the device sees them (rounded to float in fp32) */
    cl_int *index;
};

static double gauss_rand(void)
{
    double u = test_uniform(1e-12, 1), v = test_uniform(0, 1);
    return sqrt(-2 * log(u)) * cos(2 * M_PI * v);
}

static void problem_free(struct problem *p)
{
    free(p->lam), free(p->basis), free(p->spec), free(p->espec), free(p->model), free(p->tan);
    free(p->index);
    memset(p, 0, sizeof *p);
}

/* ------------------------------------------------------------ random realistic problems */

struct linelist {
    size_t count;
    double centre[80], depth[80], width[80], dcoef[KMAX][80];
};

static void make_lines(struct linelist *ll, double lam0, double lam1, size_t count)
{
    ll->count = count;
    for (size_t l = 0; l < count; l++) {
        ll->centre[l] = test_uniform(lam0, lam1);
        ll->depth[l] = test_uniform(0.05, 0.7);
        ll->width[l] = test_uniform(0.8, 3.0);
        for (size_t k = 0; k < KMAX; k++)
            ll->dcoef[k][l] = gauss_rand();
    }
}

/* A template with absorption lines shifted by `shift` Angstrom on a sloped continuum, scaled
 * by `amp`, and K tangents of the kinds a stellar model gives: a velocity-like derivative of
 * the lines, a temperature-like one (mostly a smooth change of the continuum: it nearly lies
 * in the continuum's span, the hard case for the projection), width- and depth-like ones. */
static void make_template(const struct problem *p, const struct linelist *ll, double shift,
                          double amp, double *t, double *tan)
{
    size_t n = p->n;
    for (size_t i = 0; i < n; i++) {
        double lam = p->lam[i], x = (lam - p->lam[0]) / (p->lam[n - 1] - p->lam[0]);
        double cont = amp * (1.0 + 0.4 * x - 0.15 * x * x);
        double prof = 1, dl = 0, dw = 0, dd[KMAX] = {0};
        for (size_t l = 0; l < ll->count; l++) {
            double u = (lam - ll->centre[l] - shift) / ll->width[l];
            if (fabs(u) > 12)
                continue;
            double g = exp(-0.5 * u * u), a = ll->depth[l] * g;
            prof *= 1 - a;
            dl += a * u / ll->width[l] / (1 - a);      /* d log(1-a) / d shift, sign flipped */
            dw += a * u * u / ll->width[l] / (1 - a); /* width-like */
            for (size_t k = 0; k < KMAX; k++)
                dd[k] += ll->dcoef[k][l] * a / (1 - a);
        }
        double tv = cont * prof;
        t[i] = tv;
        for (size_t k = 0; k < p->K; k++) {
            double v;
            switch (k) {
            case 0: v = -tv * dl * 3.0; break;                       /* velocity */
            case 1: v = tv * (0.8 * (x - 0.3) + 0.05 * dd[0]); break; /* temperature */
            case 2: v = -tv * dw * 0.5; break;                       /* broadening */
            default: v = -tv * 0.2 * dd[k]; break;                   /* abundances, gravity */
            }
            tan[k * n + i] = v;
        }
    }
}

/* The problem of one test case: S spectra (perfect fit, far from the model, masked pixels,
 * in turn), E requests each scanning the line shift around its spectrum's. */
static void make_problem(struct problem *p, int fp64, size_t n, size_t np, int rbf, int sf,
                         size_t E, size_t S, size_t K)
{
    memset(p, 0, sizeof *p);
    p->n = n, p->np = np, p->E = E, p->S = S, p->K = K, p->rbf = rbf, p->scale_free = sf;
    p->lam = malloc(n * sizeof *p->lam);
    p->basis = malloc(np * n * sizeof *p->basis);
    p->spec = malloc(S * n * sizeof(double));
    p->espec = malloc(S * n * sizeof(double));
    p->model = malloc(E * n * sizeof(double));
    p->tan = malloc(E * K * n * sizeof(double));
    p->index = malloc(E * sizeof *p->index);
    double *tmp = malloc(n * sizeof(double)), *ttmp = malloc(KMAX * n * sizeof(double));
    for (size_t i = 0; i < n; i++) /* DESI-like: ~0.8 A pixels, a slight curvature */
        p->lam[i] = 5000.0 + 0.8 * (double)i + 2e-6 * (double)i * (double)i;
    CHECK(rvs_chisq_basis(p->lam, n, np, rbf, p->basis) == RVS_OK, "basis");
    struct linelist ll;
    make_lines(&ll, p->lam[0], p->lam[n - 1], n / 60 + 3);
    double amp = 1e3; /* templates in flux units, far from 1 */
    for (size_t s = 0; s < S; s++) {
        enum spec_kind kind = (enum spec_kind)(s % 3);
        double shift = 0.3 * (double)s;
        make_template(p, &ll, shift, amp, tmp, ttmp);
        double coef[NPMAX];
        for (size_t j = 0; j < np; j++)
            coef[j] = j == 0 ? 1.0 : 0.05 * gauss_rand();
        double snr = kind == SPEC_PERFECT ? 50 : 20;
        for (size_t i = 0; i < n; i++) {
            double x = (double)i / (double)n, cont = 0;
            if (kind == SPEC_PERFECT) { /* a continuum in the span: the fit can be perfect */
                for (size_t j = 0; j < np; j++)
                    cont += coef[j] * p->basis[j * n + i];
            } else { /* not in the span, and a model with other lines: far from a fit */
                cont = 1 + 0.2 * sin(7 * x) + 0.1 * cos(23 * x);
            }
            double f = tmp[i] * cont * 0.01;
            if (kind != SPEC_PERFECT)
                f *= 1 - 0.3 * exp(-0.5 * pow((double)(i % 97) - 40.0, 2) / 4.0);
            double sig = fabs(f) / snr * (1 + 0.3 * sin(0.01 * (double)i)) + 1e-3;
            if (kind == SPEC_MASKED && n >= 1000 && ((i > n / 3 && i < n / 3 + 57) || i % 101 == 0))
                sig *= 1e4; /* masked: a huge error, as rvspecfit does */
            p->spec[s * n + i] = f + (kind == SPEC_PERFECT ? 1e-6 * sig : sig) * gauss_rand();
            p->espec[s * n + i] = sig;
        }
    }
    for (size_t e = 0; e < E; e++) {
        size_t s = e % S;
        p->index[e] = (cl_int)s;
        double shift = 0.3 * (double)s + (e < S ? 0 : test_uniform(-1.5, 1.5));
        make_template(p, &ll, shift, amp * test_uniform(0.5, 2), p->model + e * n, ttmp);
        for (size_t k = 0; k < K; k++)
            for (size_t i = 0; i < n; i++)
                p->tan[(e * K + k) * n + i] = ttmp[k * n + i];
    }
    if (!fp64) { /* the device holds float: the reference uses the same values */
        for (size_t i = 0; i < E * n; i++)
            p->model[i] = (double)(float)p->model[i];
        for (size_t i = 0; i < E * K * n; i++)
            p->tan[i] = (double)(float)p->tan[i];
    }
    free(tmp);
    free(ttmp);
}

/* ------------------------------------------------------------ long-double reference */

/* Cholesky of the np x np SPD matrix a (lower, in place); 0 when not positive definite. */
static int chol_ld(long double *a, size_t np)
{
    for (size_t j = 0; j < np; j++) {
        long double d = a[j * np + j];
        for (size_t k = 0; k < j; k++)
            d -= a[j * np + k] * a[j * np + k];
        if (!(d > 0))
            return 0;
        a[j * np + j] = sqrtl(d);
        for (size_t i = j + 1; i < np; i++) {
            long double t = a[i * np + j];
            for (size_t k = 0; k < j; k++)
                t -= a[i * np + k] * a[j * np + k];
            a[i * np + j] = t / a[j * np + j];
        }
    }
    return 1;
}

/* inverse of A = L L^T (L from chol_ld) into inv (full) */
static void chol_inverse_ld(const long double *l, size_t np, long double *inv)
{
    long double li[NPMAX * NPMAX] = {0};
    for (size_t c = 0; c < np; c++)
        for (size_t j = c; j < np; j++) {
            long double t = j == c ? 1 : 0;
            for (size_t k = c; k < j; k++)
                t -= l[j * np + k] * li[k * np + c];
            li[j * np + c] = t / l[j * np + j];
        }
    for (size_t a = 0; a < np; a++)
        for (size_t b = 0; b < np; b++) {
            long double t = 0;
            for (size_t m = a > b ? a : b; m < np; m++)
                t += li[m * np + a] * li[m * np + b];
            inv[a * np + b] = t;
        }
}

struct ref_out {
    int full_rank;
    double chisq, grad[KMAX], gscale[KMAX], gn[KMAX * KMAX], yy_max;
};

/* Request e in long double, in rvspecfit's basis P (the derivatives do not depend on the
 * basis of the span; the scale-free prior's tr G is the orthonormal basis's, whose pixel
 * weights |q_i|^2 are the unweighted hat values p_i^T (P P^T)^-1 p_i). */
static void reference(const struct problem *p, size_t e, struct ref_out *o)
{
    size_t n = p->n, np = p->np, K = p->K, s = (size_t)p->index[e];
    const double *P = p->basis;
    long double A[NPMAX * NPMAX] = {0}, Ainv[NPMAX * NPMAX], G[NPMAX * NPMAX] = {0},
                Gl[NPMAX * NPMAX], Gi[NPMAX * NPMAX], b[NPMAX] = {0}, a[NPMAX] = {0};
    memset(o, 0, sizeof *o);
    for (size_t i = 0; i < n; i++) {
        long double t = (long double)p->model[e * n + i] / p->espec[s * n + i];
        long double d = (long double)p->spec[s * n + i] / p->espec[s * n + i];
        for (size_t j = 0; j < np; j++) {
            b[j] += t * d * P[j * n + i];
            for (size_t k = 0; k < np; k++) {
                G[j * np + k] += t * t * P[j * n + i] * P[k * n + i];
                A[j * np + k] += (long double)P[j * n + i] * P[k * n + i];
            }
        }
    }
    memcpy(Gl, G, sizeof G);
    if (!chol_ld(Gl, np) || !chol_ld(A, np)) {
        o->full_rank = 0;
        return;
    }
    o->full_rank = 1;
    chol_inverse_ld(Gl, np, Gi);
    chol_inverse_ld(A, np, Ainv);
    long double logdet = 0, trq = 0, rr = 0, logsig = 0;
    for (size_t j = 0; j < np; j++) {
        logdet += 2 * logl(Gl[j * np + j]);
        for (size_t k = 0; k < np; k++)
            a[j] += Gi[j * np + k] * b[k];
    }
    long double *z = malloc(n * sizeof *z), *cc = malloc(n * sizeof *cc);
    long double *lev = malloc(n * sizeof *lev);
    for (size_t i = 0; i < n; i++) {
        long double sig = p->espec[s * n + i], t = p->model[e * n + i] / sig;
        long double d = p->spec[s * n + i] / sig, c = 0, h = 0, lv = 0;
        for (size_t j = 0; j < np; j++) {
            c += a[j] * P[j * n + i];
            for (size_t k = 0; k < np; k++) {
                h += P[j * n + i] * Gi[j * np + k] * P[k * n + i];
                lv += P[j * n + i] * Ainv[j * np + k] * P[k * n + i];
            }
        }
        long double r = d - t * c;
        rr += r * r;
        logsig += 2 * logl(sig);
        trq += t * t * lv;
        cc[i] = c;
        lev[i] = lv;
        z[i] = 2 * (t * h - r * c);
    }
    long double chi = logdet + logsig + rr;
    if (p->scale_free) {
        chi -= (long double)np * logl(trq);
        for (size_t i = 0; i < n; i++)
            z[i] -= 2 * (long double)np * (p->model[e * n + i] / p->espec[s * n + i]) * lev[i] / trq;
    }
    o->chisq = (double)chi;
    long double yy[KMAX * KMAX] = {0}, U[NPMAX * KMAX] = {0};
    long double dd = 0;
    for (size_t i = 0; i < n; i++)
        dd += powl(p->spec[s * n + i] / p->espec[s * n + i], 2);
    for (size_t k = 0; k < K; k++) {
        long double g = 0, gs = 0, yk = 0;
        for (size_t i = 0; i < n; i++) {
            long double tk = p->tan[(e * K + k) * n + i] / p->espec[s * n + i];
            g += tk * z[i];
            gs += fabsl(tk * z[i]);
            yk += tk * tk * cc[i] * cc[i];
        }
        o->grad[k] = (double)g;
        /* the gradient's rounding scale: its terms, and the envelope formula's first-order
         * sensitivity to the coefficients (a off by da moves it by 2 (S da)^T y_k, and a's
         * rounding makes |S da| ~ eps |D|) */
        o->gscale[k] = (double)(gs + 2 * sqrtl(dd * yk));
    }
    for (size_t i = 0; i < n; i++) {
        long double sig = p->espec[s * n + i], t = p->model[e * n + i] / sig, y[KMAX];
        for (size_t k = 0; k < K; k++)
            y[k] = p->tan[(e * K + k) * n + i] / sig * cc[i];
        for (size_t k = 0; k < K; k++) {
            for (size_t l = 0; l < K; l++)
                yy[k * K + l] += y[k] * y[l];
            for (size_t j = 0; j < np; j++)
                U[j * K + k] += t * P[j * n + i] * y[k];
        }
    }
    o->yy_max = 0;
    for (size_t k = 0; k < K; k++) {
        o->yy_max = fmax(o->yy_max, 2 * (double)yy[k * K + k]);
        for (size_t l = 0; l < K; l++) {
            long double m = yy[k * K + l];
            for (size_t j = 0; j < np; j++)
                for (size_t q = 0; q < np; q++)
                    m -= U[j * K + k] * Gi[j * np + q] * U[q * K + l];
            o->gn[k * K + l] = (double)(2 * m);
        }
    }
    free(z), free(cc), free(lev);
}

/* ------------------------------------------------------------ device runs */

static cl_mem upload(struct rvs_context *ctx, const double *x, size_t count)
{
    size_t es = rvs_context_real_size(ctx);
    void *host = malloc(count * es + 1);
    for (size_t i = 0; i < count; i++) {
        if (es == sizeof(float))
            ((float *)host)[i] = (float)x[i];
        else
            ((double *)host)[i] = x[i];
    }
    cl_mem m = NULL;
    int st = rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, count * es, host,
                               &m);
    CHECK(st == RVS_OK, "upload of %zu values: %s", count, rvs_strerror(st));
    free(host);
    return m;
}

static void download(struct rvs_context *ctx, cl_mem m, size_t count, double *out)
{
    size_t es = rvs_context_real_size(ctx);
    void *host = malloc(count * es + 1);
    int st = rvs_buffer_read(ctx, m, 0, count * es, host);
    CHECK(st == RVS_OK, "download: %s", rvs_strerror(st));
    for (size_t i = 0; i < count; i++)
        out[i] = st != RVS_OK ? NAN
                 : es == sizeof(float) ? (double)((float *)host)[i]
                                       : ((double *)host)[i];
    free(host);
}

static cl_mem scratch(struct rvs_context *ctx, size_t count)
{
    cl_mem m = NULL;
    int st = rvs_buffer_create(ctx, CL_MEM_READ_WRITE, count * rvs_context_real_size(ctx) + 8,
                               NULL, &m);
    CHECK(st == RVS_OK, "buffer: %s", rvs_strerror(st));
    return m;
}

/* chi^2 of E models (E x n) against spectra index[] through rvs_chisq_eval */
static void run_eval(struct rvs_context *ctx, struct rvs_chisq_arm *arm, const double *models,
                     const cl_int *index, size_t n, size_t E, double *chisq)
{
    cl_mem dm = upload(ctx, models, E * n), dc = scratch(ctx, 2 * E), di = NULL;
    int st = rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, E * sizeof *index,
                               (void *)index, &di);
    if (st == RVS_OK)
        st = rvs_chisq_eval(ctx, arm, dm, di, E, dc, NULL, NULL);
    if (st == RVS_OK)
        st = rvs_chisq_read(ctx, dc, E, chisq);
    CHECK(st == RVS_OK, "rvs_chisq_eval: %s", rvs_strerror(st));
    rvs_buffer_release(&dm), rvs_buffer_release(&dc), rvs_buffer_release(&di);
}

/* chi^2, gradient (E x K) and GN (E x K x K, or none when gn is NULL) through
 * rvs_chisq_eval_deriv; returns the seconds from enqueue to finish */
static double run_deriv(struct rvs_context *ctx, struct rvs_chisq_arm *arm, const double *models,
                        const double *tan, const cl_int *index, size_t n, size_t E, size_t K,
                        double *chisq, double *grad, double *gn)
{
    /* the tangents in the device layout (K blocks of E rows): after the models in one buffer
     * (as the engine passes them) for even E, in a buffer of their own for odd E */
    int shared = E % 2 == 0;
    size_t row0 = shared ? E : 0;
    double *rows = malloc((row0 + K * E) * n * sizeof *rows);
    CHECK(rows != NULL, "out of memory");
    if (shared)
        memcpy(rows, models, E * n * sizeof *rows);
    for (size_t e = 0; e < E; e++)
        for (size_t k = 0; k < K; k++)
            memcpy(rows + (row0 + k * E + e) * n, tan + (e * K + k) * n, n * sizeof *rows);
    cl_mem dt = upload(ctx, rows, (row0 + K * E) * n);
    cl_mem dm = shared ? dt : upload(ctx, models, E * n);
    free(rows);
    cl_mem dc = scratch(ctx, 2 * E), dg = scratch(ctx, E * K);
    cl_mem dh = gn ? scratch(ctx, E * K * K) : NULL, di = NULL;
    int st = rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, E * sizeof *index,
                               (void *)index, &di);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (st == RVS_OK)
        st = rvs_chisq_eval_deriv(ctx, arm, dm, dt, row0, K, di, E, dc, dg, dh);
    if (st == RVS_OK)
        st = clFinish(ctx->queue);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (st == RVS_OK)
        st = rvs_chisq_read(ctx, dc, E, chisq);
    CHECK(st == RVS_OK, "rvs_chisq_eval_deriv: %s", rvs_strerror(st));
    download(ctx, dg, E * K, grad);
    if (gn)
        download(ctx, dh, E * K * K, gn);
    if (!shared)
        rvs_buffer_release(&dm);
    rvs_buffer_release(&dt), rvs_buffer_release(&dc);
    rvs_buffer_release(&dg), rvs_buffer_release(&dh), rvs_buffer_release(&di);
    return (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
}

static struct rvs_chisq_arm *make_arm(struct rvs_context *ctx, const struct problem *p)
{
    struct rvs_chisq_arm *arm = NULL;
    int st = rvs_chisq_arm_create(ctx, p->lam, p->n, p->np, p->rbf, &arm);
    if (st == RVS_OK)
        st = rvs_chisq_arm_set_data(ctx, arm, p->spec, p->espec, p->S);
    CHECK(st == RVS_OK, "arm: %s", rvs_strerror(st));
    rvs_chisq_arm_set_scale_free(arm, p->scale_free);
    return arm;
}

/* smallest eigenvalue of the symmetric K x K matrix a (cyclic Jacobi, double) */
static double min_eigen(const double *a0, size_t K)
{
    double a[KMAX * KMAX];
    memcpy(a, a0, K * K * sizeof *a);
    for (int sweep = 0; sweep < 50; sweep++) {
        double off = 0;
        for (size_t p = 0; p < K; p++)
            for (size_t q = p + 1; q < K; q++)
                off += a[p * K + q] * a[p * K + q];
        if (off == 0)
            break;
        for (size_t p = 0; p < K; p++)
            for (size_t q = p + 1; q < K; q++) {
                if (a[p * K + q] == 0)
                    continue;
                double th = (a[q * K + q] - a[p * K + p]) / (2 * a[p * K + q]);
                double t = (th >= 0 ? 1 : -1) / (fabs(th) + sqrt(th * th + 1));
                double c = 1 / sqrt(t * t + 1), s = t * c;
                for (size_t r = 0; r < K; r++) { /* columns p, q */
                    double x = a[r * K + p], y = a[r * K + q];
                    a[r * K + p] = c * x - s * y;
                    a[r * K + q] = s * x + c * y;
                }
                for (size_t r = 0; r < K; r++) { /* rows p, q */
                    double x = a[p * K + r], y = a[q * K + r];
                    a[p * K + r] = c * x - s * y;
                    a[q * K + r] = s * x + c * y;
                }
            }
    }
    double m = INFINITY;
    for (size_t k = 0; k < K; k++)
        m = fmin(m, a[k * K + k]);
    return m;
}

/* ------------------------------------------------------------ the random cases */

struct dcase {
    size_t n, np, E, S, K;
    int rbf, sf;
};

static const struct dcase cases[] = {
    {2999, 10, 7, 3, 6, 1, 0},  /* rbf, flat prior */
    {4001, 10, 7, 3, 6, 1, 1},  /* rbf, scale-free */
    {2347, 10, 6, 3, 6, 0, 1},  /* Chebyshev, scale-free */
    {3001, 10, 4, 3, 6, 0, 0},  /* Chebyshev, flat */
    {37, 5, 5, 3, 8, 1, 1},     /* fewer pixels than a work-group, 8 tangents */
    {1000, 10, 3, 3, 1, 1, 0},  /* one tangent */
};

struct maxerr {
    double chisq, grad, grad_fd, gn, psd, sym, sigma;
    size_t bitwise, requests;
};

static void run_case(struct rvs_context *ctx, const struct dcase *c, struct maxerr *m)
{
    int fp64 = ctx->use_fp64;
    struct problem p;
    make_problem(&p, fp64, c->n, c->np, c->rbf, c->sf, c->E, c->S, c->K);
    struct rvs_chisq_arm *arm = make_arm(ctx, &p);
    size_t n = p.n, E = p.E, K = p.K;
    double *chi = malloc(E * sizeof *chi), *chi_eval = malloc(E * sizeof *chi);
    double *grad = malloc(E * K * sizeof *grad), *gn = malloc(E * K * K * sizeof *gn);
    run_deriv(ctx, arm, p.model, p.tan, p.index, n, E, K, chi, grad, gn);
    run_eval(ctx, arm, p.model, p.index, n, E, chi_eval);

    /* fp64: Richardson-extrapolated central differences of rvs_chisq_eval along T + h T_k,
     * all 4 E K shifted models in one batch */
    double *fd = NULL;
    if (fp64) {
        size_t F = 4 * E * K;
        double *mods = calloc(F * n, sizeof *mods), *val = malloc(F * sizeof *val);
        cl_int *idx = malloc(F * sizeof *idx);
        const double mult[4] = {1, -1, 0.5, -0.5};
        fd = malloc(E * K * sizeof *fd);
        double *hs = malloc(E * K * sizeof *hs);
        for (size_t e = 0; e < E; e++)
            for (size_t k = 0; k < K; k++) {
                /* h T_k ~ 1e-4 of T in rms: truncation (h^4 after extrapolation) and the
                 * rounding of chi^2 (~1e-16 x 1e4, divided by h) both stay below 1e-9 */
                double tt = 0, tk = 0;
                for (size_t i = 0; i < n; i++) {
                    tt += p.model[e * n + i] * p.model[e * n + i];
                    tk += p.tan[(e * K + k) * n + i] * p.tan[(e * K + k) * n + i];
                }
                double h = tk > 0 ? 1e-4 * sqrt(tt / tk) : 1;
                hs[e * K + k] = h;
                for (size_t q = 0; q < 4; q++) {
                    size_t row = (e * K + k) * 4 + q;
                    idx[row] = p.index[e];
                    for (size_t i = 0; i < n; i++)
                        mods[row * n + i] =
                            p.model[e * n + i] + mult[q] * h * p.tan[(e * K + k) * n + i];
                }
            }
        run_eval(ctx, arm, mods, idx, n, F, val);
        for (size_t ek = 0; ek < E * K; ek++) {
            double h = hs[ek];
            double d1 = (val[4 * ek] - val[4 * ek + 1]) / (2 * h);
            double d2 = (val[4 * ek + 2] - val[4 * ek + 3]) / h;
            fd[ek] = (4 * d2 - d1) / 3;
        }
        free(mods), free(val), free(idx), free(hs);
    }

    for (size_t e = 0; e < E; e++) {
        struct ref_out r;
        reference(&p, e, &r);
        CHECK(r.full_rank, "case n=%zu: reference rank-deficient", n);
        m->requests++;
        m->bitwise += chi[e] == chi_eval[e];
        double dc = fabs(chi[e] - chi_eval[e]) / fabs(chi_eval[e]);
        m->chisq = fmax(m->chisq, dc);
        CHECK(dc <= RVS_TOL_CHISQ_DERIV_CHISQ, "n=%zu e=%zu: chi^2 %.17g, rvs_chisq_eval %.17g", n, e, chi[e],
              chi_eval[e]);
        double dref = fabs(chi[e] - r.chisq) / fabs(r.chisq);
        CHECK(dref <= (fp64 ? RVS_TOL_FP64_REL : RVS_TOL_CHISQ_FP32_ABS / 1e3),
              "n=%zu e=%zu: chi^2 %.12g, reference %.12g", n, e, chi[e], r.chisq);
        for (size_t k = 0; k < K; k++) {
            double g = grad[e * K + k], err = fabs(g - r.grad[k]) / r.gscale[k];
            m->grad = fmax(m->grad, err);
            CHECK(err <= (fp64 ? RVS_TOL_CHISQ_DERIV_GRAD_FP64 : RVS_TOL_CHISQ_DERIV_GRAD_FP32),
                  "n=%zu e=%zu k=%zu: gradient %.12g, reference %.12g (scale %.3g)", n, e, k, g,
                  r.grad[k], r.gscale[k]);
            double hkk = r.gn[k * K + k];
            if (hkk > 0) /* in units of the parameter's statistical error */
                m->sigma = fmax(m->sigma, fabs(g - r.grad[k]) / sqrt(2 * hkk));
            if (fd) {
                double efd = fabs(g - fd[e * K + k]) / r.gscale[k];
                m->grad_fd = fmax(m->grad_fd, efd);
                CHECK(efd <= RVS_TOL_CHISQ_DERIV_GRAD_FD, "n=%zu e=%zu k=%zu: gradient %.12g, finite diff. %.12g",
                      n, e, k, g, fd[e * K + k]);
            }
            for (size_t l = 0; l < K; l++) {
                double a = gn[(e * K + k) * K + l], b = gn[(e * K + l) * K + k];
                m->sym = fmax(m->sym, fabs(a - b));
                double egn = fabs(a - r.gn[k * K + l]) / r.yy_max;
                m->gn = fmax(m->gn, egn);
                CHECK(egn <= (fp64 ? RVS_TOL_CHISQ_DERIV_GN_FP64 : RVS_TOL_CHISQ_DERIV_GN_FP32),
                      "n=%zu e=%zu (%zu,%zu): GN %.12g, reference %.12g (scale %.3g)", n, e, k, l,
                      a, r.gn[k * K + l], r.yy_max);
            }
        }
        double dmax = 0;
        for (size_t k = 0; k < K; k++)
            dmax = fmax(dmax, gn[(e * K + k) * K + k]);
        double me = min_eigen(gn + e * K * K, K);
        double rel = me < 0 ? -me / dmax : 0;
        m->psd = fmax(m->psd, rel);
        CHECK(rel <= (fp64 ? RVS_TOL_CHISQ_DERIV_PSD_FP64 : RVS_TOL_CHISQ_DERIV_PSD_FP32), "n=%zu e=%zu: GN eigenvalue %.3g (largest diagonal %.3g)", n, e, me,
              dmax);
    }
    CHECK(m->sym == 0, "GN not exactly symmetric (%.3g)", m->sym);
    free(chi), free(chi_eval), free(grad), free(gn), free(fd);
    rvs_chisq_arm_destroy(&arm);
    problem_free(&p);
}

/* ------------------------------------------------------------ closed forms, special values */

/* Tangent = T (the template's scale): d chi^2 = 2 npoly with the flat prior (log det G grows
 * as 2 npoly log c, the residual is unchanged), 0 with the scale-free prior, and the tangent's
 * y = S a lies in the span: zero Gauss-Newton row. Requests 1..3: NaN model pixel (all NaN),
 * NaN tangent (chi^2 finite, derivatives NaN), impulse template (rank-deficient: +inf, NaN). */
static void check_special(struct rvs_context *ctx)
{
    const size_t n = 1500, np = 10, K = 3, E = 4;
    for (int sf = 0; sf < 2; sf++) {
        struct problem p;
        make_problem(&p, ctx->use_fp64, n, np, 1, sf, E, 3, K);
        for (size_t e = 0; e < E; e++)
            for (size_t i = 0; i < n; i++)
                p.tan[(e * K + 1) * n + i] = p.model[e * n + i];
        p.model[1 * n + 77] = NAN;
        p.tan[(2 * K + 2) * n + 500] = NAN;
        for (size_t i = 0; i < n; i++)
            p.model[3 * n + i] = i == 700 ? 1.0 : 0.0;
        struct rvs_chisq_arm *arm = make_arm(ctx, &p);
        double chi[4], chi_eval[4], grad[4 * 3], gn[4 * 9];
        run_deriv(ctx, arm, p.model, p.tan, p.index, n, E, K, chi, grad, gn);
        run_eval(ctx, arm, p.model, p.index, n, E, chi_eval);
        double want = sf ? 0.0 : 2.0 * (double)np;
        double tol = ctx->use_fp64 ? RVS_TOL_CHISQ_DERIV_SCALE_FP64 : RVS_TOL_CHISQ_DERIV_SCALE_FP32;
        printf("    scale tangent (%s prior): gradient %.12g (want %g, tolerance %.2g), "
               "GN row %g %g %g\n", sf ? "scale-free" : "flat", grad[1], want, tol, gn[3],
               gn[4], gn[5]);
        CHECK(fabs(grad[1] - want) <= tol, "scale tangent: gradient %.12g, want %g", grad[1],
              want);
        for (size_t k = 0; k < K; k++)
            CHECK(gn[1 * K + k] == 0 && gn[k * K + 1] == 0,
                  "scale tangent: GN (1,%zu) = %g, want exactly 0", k, gn[1 * K + k]);
        CHECK(isnan(chi[1]) && isnan(chi_eval[1]), "NaN model: chi^2 %g, eval %g", chi[1],
              chi_eval[1]);
        CHECK(isfinite(chi[2]) && chi[2] == chi_eval[2], "NaN tangent: chi^2 %g, eval %g", chi[2],
              chi_eval[2]);
        CHECK(isinf(chi[3]) && chi[3] > 0 && isinf(chi_eval[3]), "impulse: chi^2 %g, eval %g",
              chi[3], chi_eval[3]);
        for (size_t e = 1; e < 4; e++)
            for (size_t k = 0; k < K; k++) {
                CHECK(isnan(grad[e * K + k]), "request %zu: gradient %g, want NaN", e,
                      grad[e * K + k]);
                for (size_t l = 0; l < K; l++)
                    CHECK(isnan(gn[(e * K + k) * K + l]), "request %zu: GN %g, want NaN", e,
                          gn[(e * K + k) * K + l]);
            }
        /* gradient only (gn NULL) gives the same gradient */
        double chi2[4], grad2[4 * 3];
        run_deriv(ctx, arm, p.model, p.tan, p.index, n, E, K, chi2, grad2, NULL);
        CHECK(grad2[0] == grad[0] && grad2[2] == grad[2] && chi2[0] == chi[0],
              "gradient without GN differs");
        rvs_chisq_arm_destroy(&arm);
        problem_free(&p);
    }
}

/* ------------------------------------------------------------ GN vs the Hessian */

#define NPAR 6
static const double c_kms = 299792.458;

/* A parametric stellar model (x = v km/s, vsini km/s, Teff K, log g, [Fe/H], [alpha/Fe]): a
 * Planck continuum times Gaussian absorption lines whose depths depend on the abundances,
 * gravity and temperature and whose widths on vsini, shifted by v. Complex arithmetic for
 * complex-step derivatives. */
static double complex param_model(double lam, const double complex *x, const struct linelist *ll)
{
    double complex v = x[0], vs = x[1], teff = x[2], logg = x[3], feh = x[4], alpha = x[5];
    double complex planck = pow(lam / 5500.0, -5) / (cexp(1.4388e8 / (lam * teff)) - 1);
    double complex t = planck * 1e3;
    for (size_t l = 0; l < ll->count; l++) {
        double lc = ll->centre[l];
        if (fabs(lam - lc) > 15)
            continue;
        double complex z = log(ll->depth[l] / (1 - ll->depth[l])) + 1.2 * feh +
                           alpha * ll->dcoef[0][l] * 0.8 + 0.3 * (logg - 4.4) * ll->dcoef[1][l] -
                           (teff - 5800) / 700.0 * ll->dcoef[2][l];
        double complex depth = 0.85 / (1 + cexp(-z));
        double complex w2 = ll->width[l] * ll->width[l] * 0.25 +
                            0.5 * pow(lc / c_kms, 2) * vs * vs;
        double complex u = lam - lc * (1 + v / c_kms);
        t *= 1 - depth * cexp(-0.5 * u * u / w2);
    }
    return t;
}

/* the template at x and its 6 tangents (complex step: exact to rounding) */
static void param_rows(const struct problem *p, const struct linelist *ll, const double *x,
                       double *t, double *tan)
{
    double complex xc[NPAR];
    for (size_t i = 0; i < p->n; i++) {
        for (size_t k = 0; k < NPAR; k++)
            xc[k] = x[k];
        t[i] = creal(param_model(p->lam[i], xc, ll));
        for (size_t k = 0; k < NPAR; k++) {
            double h = 1e-30 * fmax(1, fabs(x[k]));
            xc[k] = x[k] + I * h;
            tan[k * p->n + i] = cimag(param_model(p->lam[i], xc, ll)) / h;
            xc[k] = x[k];
        }
    }
}

/* chi^2, gradient, GN at x, and the Hessian by Richardson-extrapolated central differences
 * of the exact gradient (steps of a few hundredths of each parameter's error) */
static void param_eval(struct rvs_context *ctx, struct rvs_chisq_arm *arm, const struct problem *p,
                       const struct linelist *ll, const double *x, const double *step,
                       double *chi, double *g, double *gn, double *hess)
{
    size_t n = p->n, R = 1 + 4 * NPAR;
    double *mods = malloc(R * n * sizeof *mods), *tans = malloc(R * NPAR * n * sizeof *tans);
    double *c = malloc(R * sizeof *c), *gr = malloc(R * NPAR * sizeof *gr);
    double *h = malloc(R * NPAR * NPAR * sizeof *h);
    cl_int *idx = calloc(R, sizeof *idx);
    const double mult[4] = {1, -1, 0.5, -0.5};
    param_rows(p, ll, x, mods, tans);
    for (size_t l = 0; l < NPAR; l++)
        for (size_t q = 0; q < 4; q++) {
            double xs[NPAR];
            memcpy(xs, x, sizeof xs);
            xs[l] += mult[q] * step[l];
            size_t row = 1 + 4 * l + q;
            param_rows(p, ll, xs, mods + row * n, tans + row * NPAR * n);
        }
    run_deriv(ctx, arm, mods, tans, idx, n, R, NPAR, c, gr, h);
    *chi = c[0];
    memcpy(g, gr, NPAR * sizeof *g);
    memcpy(gn, h, NPAR * NPAR * sizeof *gn);
    for (size_t l = 0; l < NPAR; l++)
        for (size_t k = 0; k < NPAR; k++) {
            const double *gp = gr + (1 + 4 * l) * NPAR;
            double d1 = (gp[k] - gp[NPAR + k]) / (2 * step[l]);
            double d2 = (gp[2 * NPAR + k] - gp[3 * NPAR + k]) / step[l];
            hess[k * NPAR + l] = (4 * d2 - d1) / 3;
        }
    for (size_t k = 0; k < NPAR; k++) /* symmetric part */
        for (size_t l = k + 1; l < NPAR; l++)
            hess[k * NPAR + l] = hess[l * NPAR + k] =
                0.5 * (hess[k * NPAR + l] + hess[l * NPAR + k]);
    free(mods), free(tans), free(c), free(gr), free(h), free(idx);
}

/* solves a x = b (6 x 6, Gaussian elimination with partial pivoting) */
static void solve6(const double *a0, const double *b0, double *x)
{
    double a[NPAR * NPAR], b[NPAR];
    memcpy(a, a0, sizeof a), memcpy(b, b0, sizeof b);
    for (size_t c = 0; c < NPAR; c++) {
        size_t piv = c;
        for (size_t r = c + 1; r < NPAR; r++)
            if (fabs(a[r * NPAR + c]) > fabs(a[piv * NPAR + c]))
                piv = r;
        for (size_t k = 0; k < NPAR; k++) {
            double t = a[c * NPAR + k];
            a[c * NPAR + k] = a[piv * NPAR + k], a[piv * NPAR + k] = t;
        }
        double t = b[c];
        b[c] = b[piv], b[piv] = t;
        for (size_t r = c + 1; r < NPAR; r++) {
            double f = a[r * NPAR + c] / a[c * NPAR + c];
            for (size_t k = c; k < NPAR; k++)
                a[r * NPAR + k] -= f * a[c * NPAR + k];
            b[r] -= f * b[c];
        }
    }
    for (size_t r = NPAR; r-- > 0;) {
        double t = b[r];
        for (size_t k = r + 1; k < NPAR; k++)
            t -= a[r * NPAR + k] * x[k];
        x[r] = t / a[r * NPAR + r];
    }
}

/* How far GN is from the Hessian H: max |GN - H|_kl / sqrt(H_kk H_ll), and the Newton steps
 * -GN^-1 g and -H^-1 g compared in units of the parameters' errors sqrt(2 / H_kk). Returns
 * the first measure. */
static double compare_gn(const char *where, const double *g, const double *gn, const double *h)
{
    double worst = 0, sg[NPAR], sh[NPAR], ng[NPAR], dstep = 0, hstep = 0;
    for (size_t k = 0; k < NPAR; k++)
        for (size_t l = 0; l < NPAR; l++)
            worst = fmax(worst, fabs(gn[k * NPAR + l] - h[k * NPAR + l]) /
                                    sqrt(fabs(h[k * NPAR + k] * h[l * NPAR + l])));
    for (size_t k = 0; k < NPAR; k++)
        ng[k] = -g[k];
    solve6(gn, ng, sg);
    solve6(h, ng, sh);
    for (size_t k = 0; k < NPAR; k++) {
        double sig = sqrt(2 / h[k * NPAR + k]);
        dstep = fmax(dstep, fabs(sg[k] - sh[k]) / sig);
        hstep = fmax(hstep, fabs(sh[k]) / sig);
    }
    printf("    %s: max |GN - H|/sqrt(H_kk H_ll) = %.3g; diag GN/H:", where, worst);
    for (size_t k = 0; k < NPAR; k++)
        printf(" %.4f", gn[k * NPAR + k] / h[k * NPAR + k]);
    printf("\n      Newton step (sigma units) max %.3g, GN step differs by max %.3g sigma\n",
           hstep, dstep);
    return worst;
}

static void check_hessian(struct rvs_context *ctx)
{
    struct problem p;
    memset(&p, 0, sizeof p);
    size_t n = 3203, np = 10;
    p.n = n, p.np = np, p.E = 1, p.S = 2, p.K = NPAR, p.rbf = 1, p.scale_free = 1;
    p.lam = malloc(n * sizeof *p.lam), p.basis = malloc(np * n * sizeof *p.basis);
    p.spec = malloc(2 * n * sizeof(double)), p.espec = malloc(2 * n * sizeof(double));
    for (size_t i = 0; i < n; i++)
        p.lam[i] = 5100.0 + 0.8 * (double)i;
    CHECK(rvs_chisq_basis(p.lam, n, np, 1, p.basis) == RVS_OK, "basis");
    struct linelist ll;
    make_lines(&ll, p.lam[0], p.lam[n - 1], 70);
    const double xtrue[NPAR] = {12.3, 25.0, 5750.0, 4.3, -0.4, 0.15};
    double *t = malloc(n * sizeof *t), *tan = malloc(NPAR * n * sizeof *tan);
    param_rows(&p, &ll, xtrue, t, tan);
    /* spectrum 0: S/N ~ 30 noise, a continuum not in the span; spectrum 1: noiseless, the
     * continuum in the span (a perfect fit at xtrue) */
    for (size_t i = 0; i < n; i++) {
        double x = (double)i / (double)n;
        double c0 = 1 + 0.15 * sin(5 * x) + 0.05 * x * x, c1 = 0;
        for (size_t j = 0; j < np; j++)
            c1 += (j == 0 ? 0.9 : 0.03 * (double)(j % 3)) * p.basis[j * n + i];
        double f0 = t[i] * c0 * 1e-3, f1 = t[i] * c1 * 1e-3;
        p.espec[i] = fabs(f0) / 30 + 1e-4;
        p.spec[i] = f0 + p.espec[i] * gauss_rand();
        p.espec[n + i] = fabs(f1) / 30 + 1e-4;
        p.spec[n + i] = f1;
    }
    struct rvs_chisq_arm *arm = NULL;
    int st = rvs_chisq_arm_create(ctx, p.lam, n, np, 1, &arm);
    if (st == RVS_OK)
        st = rvs_chisq_arm_set_data(ctx, arm, p.spec, p.espec, 2);
    CHECK(st == RVS_OK, "Hessian arm: %s", rvs_strerror(st));
    rvs_chisq_arm_set_scale_free(arm, 1);
    for (int which = 0; which < 2; which++) {
        /* the second spectrum, at index 1: swap the data so that index 0 points to it */
        if (which == 1) {
            st = rvs_chisq_arm_set_data(ctx, arm, p.spec + n, p.espec + n, 1);
            CHECK(st == RVS_OK, "set_data: %s", rvs_strerror(st));
        }
        double x[NPAR], chi, g[NPAR], gn[NPAR * NPAR], h[NPAR * NPAR], step[NPAR], dx[NPAR];
        memcpy(x, xtrue, sizeof x);
        const double guess[NPAR] = {0.05, 0.2, 3, 0.005, 0.003, 0.003};
        memcpy(step, guess, sizeof step);
        /* Newton with the finite-difference Hessian to the optimum */
        for (int it = 0; it < 6; it++) {
            param_eval(ctx, arm, &p, &ll, x, step, &chi, g, gn, h);
            for (size_t k = 0; k < NPAR; k++) {
                step[k] = 0.03 * sqrt(2 / fmax(h[k * NPAR + k], 1e-300));
                g[k] = -g[k];
            }
            solve6(h, g, dx);
            for (size_t k = 0; k < NPAR; k++)
                x[k] += dx[k];
        }
        param_eval(ctx, arm, &p, &ll, x, step, &chi, g, gn, h);
        double gsig = 0;
        for (size_t k = 0; k < NPAR; k++)
            gsig = fmax(gsig, fabs(g[k]) * sqrt(2 / h[k * NPAR + k]));
        printf("  %s spectrum, optimum (v %.4f vsini %.3f Teff %.2f logg %.4f feh %.4f alpha "
               "%.4f), chi^2 %.6f, |g| sigma %.2g\n", which ? "noiseless" : "S/N 30",
               x[0], x[1], x[2], x[3], x[4], x[5], chi, gsig);
        CHECK(gsig < 1e-3, "Newton did not reach the optimum (gradient x sigma %.3g)", gsig);
        double at_opt = compare_gn("at the optimum", g, gn, h);
        /* away: a few errors off in every parameter (and the fit's velocity 3 km/s off) */
        const double off[NPAR] = {3.0, 8.0, 120.0, 0.25, 0.15, 0.1};
        for (size_t k = 0; k < NPAR; k++)
            x[k] += off[k];
        param_eval(ctx, arm, &p, &ll, x, step, &chi, g, gn, h);
        double away = compare_gn("away (v+3, vsini+8, Teff+120, logg+.25, feh+.15, alpha+.1)",
                                 g, gn, h);
        /* a measurement, bounded loosely only to catch a broken GN (a factor 2, a sign) */
        CHECK(at_opt < 0.2, "GN far from the Hessian at the optimum: %.3g", at_opt);
        CHECK(away < 1.0, "GN far from the Hessian away from the optimum: %.3g", away);
    }
    rvs_chisq_arm_destroy(&arm);
    free(t), free(tan);
    problem_free(&p);
}

/* ------------------------------------------------------------ timing (not asserted) */

/* RVSFIT_TEST_TIMING=E (requests per batch; 1 means 64) */
static void timing(struct rvs_context *ctx)
{
    const size_t n = 4000, np = 10, K = 6;
    size_t E = (size_t)atol(getenv("RVSFIT_TEST_TIMING"));
    if (E < 2)
        E = 64;
    struct problem p;
    make_problem(&p, ctx->use_fp64, n, np, 1, 1, E, 3, K);
    struct rvs_chisq_arm *arm = make_arm(ctx, &p);
    double *chi = malloc(E * sizeof *chi), *grad = malloc(E * K * sizeof *grad);
    double *gn = malloc(E * K * K * sizeof *gn);
    cl_mem dm = upload(ctx, p.model, E * n), dc = scratch(ctx, 2 * E), di = NULL;
    int st = rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, E * sizeof(cl_int),
                               p.index, &di);
    double best_eval = 1e30, best_deriv = 1e30;
    for (int rep = 0; rep < 3 && st == RVS_OK; rep++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        st = rvs_chisq_eval(ctx, arm, dm, di, E, dc, NULL, NULL);
        if (st == RVS_OK)
            st = clFinish(ctx->queue);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        best_eval = fmin(best_eval, (double)(t1.tv_sec - t0.tv_sec) +
                                        1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
        best_deriv = fmin(best_deriv, run_deriv(ctx, arm, p.model, p.tan, p.index, n, E, K, chi,
                                                grad, gn));
    }
    CHECK(st == RVS_OK, "timing: %s", rvs_strerror(st));
    printf("  timing (%s, E=%zu, n=%zu, npoly %zu, K %zu): rvs_chisq_eval %.1f us/request, "
           "rvs_chisq_eval_deriv %.1f us/request (uploads not timed)\n",
           ctx->use_fp64 ? "fp64" : "fp32", E, n, np, K, 1e6 * best_eval / (double)E,
           1e6 * best_deriv / (double)E);
    rvs_buffer_release(&dm), rvs_buffer_release(&dc), rvs_buffer_release(&di);
    free(chi), free(grad), free(gn);
    rvs_chisq_arm_destroy(&arm);
    problem_free(&p);
}

static void run_all(struct rvs_context *ctx)
{
    int fp64 = ctx->use_fp64;
    struct maxerr m = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_case(ctx, &cases[i], &m);
    printf("%s: %zu requests; chi^2 vs rvs_chisq_eval max rel %.3g (%zu bitwise equal, tol "
           "%.0e)\n", fp64 ? "fp64" : "fp32", m.requests, m.chisq, m.bitwise, RVS_TOL_CHISQ_DERIV_CHISQ);
    printf("  gradient vs reference max %.3g of its rounding scale (tol %.0e), %.3g sigma\n", m.grad,
           fp64 ? RVS_TOL_CHISQ_DERIV_GRAD_FP64 : RVS_TOL_CHISQ_DERIV_GRAD_FP32, m.sigma);
    if (fp64)
        printf("  gradient vs finite difference of rvs_chisq_eval max %.3g (tol %.0e)\n",
               m.grad_fd, RVS_TOL_CHISQ_DERIV_GRAD_FD);
    printf("  GN vs reference max %.3g of max 2|y_k|^2 (tol %.0e); asymmetry %.3g; "
           "PSD: worst -lambda_min/max diag %.3g (tol %.0e)\n", m.gn,
           fp64 ? RVS_TOL_CHISQ_DERIV_GN_FP64 : RVS_TOL_CHISQ_DERIV_GN_FP32, m.sym, m.psd, fp64 ? RVS_TOL_CHISQ_DERIV_PSD_FP64 : RVS_TOL_CHISQ_DERIV_PSD_FP32);
    check_special(ctx);
    if (getenv("RVSFIT_TEST_TIMING"))
        timing(ctx);
}

int main(void)
{
    struct rvs_context *ctx = test_context(1);
    int had_fp64 = ctx->use_fp64;
    run_all(ctx);
    if (had_fp64)
        check_hessian(ctx);
    /* and with the other kernels: the CPU devices' per-request vector blocks (fp64) or the
     * work-group kernels GPUs use */
    ctx->vector_blocks = !ctx->vector_blocks;
    printf("kernels: %s\n", ctx->vector_blocks ? "vector blocks" : "work-groups");
    run_all(ctx);
    if (had_fp64)
        check_hessian(ctx);
    rvs_context_destroy(&ctx);
    setenv("RVSFIT_CL_FP32", "1", 1);
    ctx = test_context(1);
    CHECK(!ctx->use_fp64, "RVSFIT_CL_FP32=1 did not force fp32");
    run_all(ctx);
    rvs_context_destroy(&ctx);
    if (!had_fp64)
        printf("device has no fp64: the fp64 pass ran in fp32\n");
    return test_finish("test_chisq_deriv");
}
