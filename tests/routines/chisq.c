/* routines/chisq.c: the marginalised chi^2 (rvs_chisq_eval) as a routine: DESI-like spectra
 * (model x smooth continuum + Gaussian noise, S/N 5..100, masked pixels with a huge sigma),
 * templates with absorption lines at a scan of velocities, and a plain-C long-double reference
 * of rvspecfit's get_chisq0 (Cholesky, or a Jacobi eigen-decomposition for the rank test).
 * batch=E requests, n=px per arm (0: the three DESI arms b/r/z), m=npoly, k=S spectra,
 * param=variant bits: 1 Chebyshev basis, 2 forced fallback, 4 impulse templates (one nonzero
 * pixel: rank 1), 8 no optional outputs. Error: chi^2 relative (fp64) or absolute (fp32). */
#include <config.h>

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "routine.h"
#include "testutil.h"

#define VAR_CHEBYSHEV 1
#define VAR_FALLBACK 2
#define VAR_IMPULSE 4
#define VAR_NO_OUTPUTS 8

/* Errors of the last reference comparison beyond chi^2, for tests/test_chisq.c. */
struct rvs_chisq_routine_errors {
    double chisq;          /* as max_error returns */
    double model;          /* best-fit model: max |dev - ref| / max |ref| per request */
    double coeff;          /* |S (a_dev - a_ref)| / | |S| |a_ref| |, full-rank requests: the
                            * model-space error over the scale at which a's own rounding acts */
    size_t flagged_ref;    /* requests the reference calls rank-deficient */
    size_t flag_mismatch;  /* requests where device and reference disagree on that */
    size_t fallback;       /* requests that took the device's eigen path */
    size_t requests;       /* requests x arms */
};
struct rvs_chisq_routine_errors rvs_chisq_routine_last;

struct arm_case {
    size_t n;
    double *lam, *basis, *spec, *espec, *model; /* model: E x n as the device sees it */
    double *chisq_dev, *coef_dev, *best_dev;
    long double *chisq_ref;
    struct rvs_chisq_arm *arm;
    cl_mem dmodel, dchisq, dcoef, dbest;
};

struct chisq_state {
    struct rvs_routine_args args;
    int fp64, variant;
    size_t narm, E, S, np;
    int *index;
    cl_mem dindex;
    struct arm_case arms[3];
    double err_chisq;
};

static const double desi_start[3] = {3600.0, 5760.0, 7520.0};
static const size_t desi_n[3] = {2751, 2326, 2881};

static double gauss_rand(void)
{
    double u = test_uniform(1e-12, 1), v = test_uniform(0, 1);
    return sqrt(-2 * log(u)) * cos(2 * M_PI * v);
}

static void chisq_destroy(void *p)
{
    struct chisq_state *s = p;
    for (size_t a = 0; a < 3; a++) {
        struct arm_case *c = &s->arms[a];
        free(c->lam), free(c->basis), free(c->spec), free(c->espec), free(c->model);
        free(c->chisq_dev), free(c->coef_dev), free(c->best_dev), free(c->chisq_ref);
        rvs_chisq_arm_destroy(&c->arm);
        rvs_buffer_release(&c->dmodel);
        rvs_buffer_release(&c->dchisq);
        rvs_buffer_release(&c->dcoef);
        rvs_buffer_release(&c->dbest);
    }
    free(s->index);
    rvs_buffer_release(&s->dindex);
    free(s);
}

/* uploads doubles as rvs_real, rounding the host copy the same way */
static int upload_real(struct rvs_context *ctx, int fp64, double *x, size_t count, cl_mem *buf)
{
    size_t es = fp64 ? sizeof(double) : sizeof(float);
    void *h = malloc(count * es + 1);
    if (!h)
        return RVS_ERR_NOMEM;
    for (size_t i = 0; i < count; i++) {
        if (!fp64)
            x[i] = (float)x[i];
        if (fp64)
            ((double *)h)[i] = x[i];
        else
            ((float *)h)[i] = (float)x[i];
    }
    int status = rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, count * es, h,
                                   buf);
    free(h);
    return status;
}

static int chisq_setup(struct rvs_context *ctx, const struct rvs_routine_args *args, void **out)
{
    struct chisq_state *s = calloc(1, sizeof *s);
    if (!s)
        return RVS_ERR_NOMEM;
    *out = s;
    s->args = *args;
    s->fp64 = ctx->use_fp64;
    s->variant = (int)args->param;
    s->E = args->batch;
    s->np = args->m;
    s->S = args->k ? args->k : 1;
    s->narm = args->n ? 1 : 3;
    test_rng_state = 0x5eed1234ULL + args->seed * 7919ULL + args->n;
    s->index = malloc(s->E * sizeof *s->index);
    if (!s->index)
        return RVS_ERR_NOMEM;
    for (size_t e = 0; e < s->E; e++)
        s->index[e] = (int)(e % s->S); /* several requests (velocities) per spectrum */
    int status = rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                                   s->E * sizeof(cl_int), s->index, &s->dindex);
    if (status != RVS_OK)
        return status;

    /* per spectrum: lines (centre, depth, width), continuum phase, S/N */
    enum { NLINE = 60 };
    for (size_t a = 0; a < s->narm && status == RVS_OK; a++) {
        struct arm_case *c = &s->arms[a];
        size_t n = args->n ? args->n : desi_n[a], E = s->E, S = s->S;
        double l0 = args->n ? 3600.0 : desi_start[a];
        c->n = n;
        c->lam = malloc(n * sizeof(double));
        c->basis = malloc(s->np * n * sizeof(double));
        c->spec = malloc(S * n * sizeof(double));
        c->espec = malloc(S * n * sizeof(double));
        c->model = malloc(E * n * sizeof(double));
        c->chisq_dev = malloc(E * sizeof(double));
        c->coef_dev = malloc(E * s->np * sizeof(double));
        c->best_dev = malloc(E * n * sizeof(double));
        c->chisq_ref = malloc(E * sizeof(long double));
        if (!c->lam || !c->basis || !c->spec || !c->espec || !c->model || !c->chisq_dev ||
            !c->coef_dev || !c->best_dev || !c->chisq_ref)
            return RVS_ERR_NOMEM;
        for (size_t i = 0; i < n; i++)
            c->lam[i] = l0 + 0.8 * (double)i;
        double lam1 = c->lam[n - 1] + 1;
        double (*lines)[3] = malloc(S * NLINE * sizeof *lines);
        if (!lines)
            return RVS_ERR_NOMEM;
        for (size_t sp = 0; sp < S; sp++)
            for (size_t l = 0; l < NLINE; l++) {
                lines[sp * NLINE + l][0] = test_uniform(l0 - 10, lam1 + 10);
                lines[sp * NLINE + l][1] = test_uniform(0.05, 0.8);
                lines[sp * NLINE + l][2] = test_uniform(0.8, 3.0);
            }
        for (size_t sp = 0; sp < S; sp++) {
            double snr = test_uniform(5, 100), phase = test_uniform(0, 6.3);
            double level = test_uniform(50, 500);
            double sig_med = level / snr;
            for (size_t i = 0; i < n; i++) {
                double lam = c->lam[i], t = 1;
                for (size_t l = 0; l < NLINE; l++) {
                    double d = (lam - lines[sp * NLINE + l][0]) / lines[sp * NLINE + l][2];
                    t -= lines[sp * NLINE + l][1] * exp(-0.5 * d * d) * (fabs(d) < 30);
                }
                t = fmax(t, 0.05); /* blended lines do not absorb more than all the light */
                double cont = level * (1 + 0.3 * sin(lam / 700 + phase) + 0.1 * (lam - l0) / 2000);
                double sig = cont * t / snr * 0.5 + 0.5 * sig_med;
                if (test_uniform(0, 1) < 0.01)
                    sig = sig_med * 1000; /* masked pixel, as rvspecfit sets them */
                c->spec[sp * n + i] = cont * t + sig * gauss_rand();
                c->espec[sp * n + i] = sig;
            }
        }
        for (size_t e = 0; e < E; e++) {
            size_t sp = (size_t)s->index[e];
            double vel = -300 + 600 * (double)(e / S) / (double)(E / S + 1); /* km/s scan */
            double shift = 1 + vel / 299792.458;
            double scale = test_uniform(0.5, 2);
            size_t hot = (size_t)(test_uniform(0, 1) * (double)n);
            for (size_t i = 0; i < n; i++) {
                double t = 1;
                if (s->variant & VAR_IMPULSE) {
                    t = i == hot ? scale : 0;
                } else {
                    for (size_t l = 0; l < NLINE; l++) {
                        double d = (c->lam[i] - lines[sp * NLINE + l][0] * shift) /
                                   lines[sp * NLINE + l][2];
                        t -= lines[sp * NLINE + l][1] * exp(-0.5 * d * d) * (fabs(d) < 30);
                    }
                    t = fmax(t, 0.05) * scale;
                }
                c->model[e * n + i] = t;
            }
        }
        free(lines);
        status = rvs_chisq_basis(c->lam, n, s->np, !(s->variant & VAR_CHEBYSHEV), c->basis);
        if (status == RVS_OK)
            status = rvs_chisq_arm_create(ctx, c->lam, n, s->np, !(s->variant & VAR_CHEBYSHEV),
                                          &c->arm);
        if (status == RVS_OK)
            status = rvs_chisq_arm_set_data(ctx, c->arm, c->spec, c->espec, S);
        if (status == RVS_OK)
            rvs_chisq_arm_force_fallback(c->arm, (s->variant & VAR_FALLBACK) != 0);
        if (status == RVS_OK)
            status = upload_real(ctx, s->fp64, c->model, E * n, &c->dmodel);
        size_t es = args->real_size;
        if (status == RVS_OK)
            status = rvs_buffer_create(ctx, CL_MEM_READ_WRITE, 2 * E * es, NULL, &c->dchisq);
        if (status == RVS_OK && !(s->variant & VAR_NO_OUTPUTS))
            status = rvs_buffer_create(ctx, CL_MEM_READ_WRITE, E * s->np * es, NULL, &c->dcoef);
        if (status == RVS_OK && !(s->variant & VAR_NO_OUTPUTS))
            status = rvs_buffer_create(ctx, CL_MEM_READ_WRITE, E * n * es, NULL, &c->dbest);
    }
    return status;
}

static int chisq_run(struct rvs_context *ctx, void *p)
{
    struct chisq_state *s = p;
    int status = RVS_OK;
    for (size_t a = 0; a < s->narm && status == RVS_OK; a++) {
        struct arm_case *c = &s->arms[a];
        status = rvs_chisq_eval(ctx, c->arm, c->dmodel, s->dindex, s->E, c->dchisq, c->dcoef,
                                c->dbest);
    }
    if (status == RVS_OK)
        status = clFinish(ctx->queue);
    return status;
}

static int read_real(struct rvs_context *ctx, int fp64, cl_mem buf, size_t count, double *out)
{
    size_t es = fp64 ? sizeof(double) : sizeof(float);
    void *h = malloc(count * es + 1);
    if (!h)
        return RVS_ERR_NOMEM;
    int status = rvs_buffer_read(ctx, buf, 0, count * es, h);
    for (size_t i = 0; i < count && status == RVS_OK; i++)
        out[i] = fp64 ? ((double *)h)[i] : ((float *)h)[i];
    free(h);
    return status;
}

/* Cyclic Jacobi in long double; eigenvalues on a's diagonal, eigenvectors in v's columns. */
static void ref_jacobi(long double *a, long double *v, size_t np)
{
    for (size_t j = 0; j < np * np; j++)
        v[j] = 0;
    for (size_t j = 0; j < np; j++)
        v[j * np + j] = 1;
    for (int sweep = 0; sweep < 100; sweep++) {
        int rotated = 0;
        for (size_t p = 0; p + 1 < np; p++)
            for (size_t q = p + 1; q < np; q++) {
                long double apq = a[p * np + q], app = a[p * np + p], aqq = a[q * np + q];
                if (fabsl(apq) <= LDBL_EPSILON * 1e-2L * sqrtl(fabsl(app) * fabsl(aqq)))
                    continue;
                rotated = 1;
                long double th = (aqq - app) / (2 * apq);
                long double t = (th >= 0 ? 1 : -1) / (fabsl(th) + sqrtl(th * th + 1));
                long double cs = 1 / sqrtl(t * t + 1), sn = t * cs;
                a[p * np + p] = app - t * apq;
                a[q * np + q] = aqq + t * apq;
                a[p * np + q] = a[q * np + p] = 0;
                for (size_t r = 0; r < np; r++) {
                    if (r != p && r != q) {
                        long double g = a[r * np + p], h = a[r * np + q];
                        a[r * np + p] = a[p * np + r] = cs * g - sn * h;
                        a[r * np + q] = a[q * np + r] = sn * g + cs * h;
                    }
                    long double g = v[r * np + p], h = v[r * np + q];
                    v[r * np + p] = cs * g - sn * h;
                    v[r * np + q] = sn * g + cs * h;
                }
            }
        if (!rotated)
            break;
    }
}

/* rvspecfit's get_chisq0 for one request in long double. Returns chi^2 (+inf when the scaled
 * Gram matrix has an eigenvalue <= tol * largest, as the device flags it); fills a and best. */
static long double ref_one(const struct arm_case *c, size_t np, size_t e, size_t sp, double tol,
                           long double *a, long double *best)
{
    size_t n = c->n;
    long double g[32 * 32] = {0}, v[32] = {0}, w[32 * 32], vv[32 * 32], d[32];
    const double *t = c->model + e * n, *f = c->spec + sp * n, *sg = c->espec + sp * n;
    long double logsig = 0;
    for (size_t i = 0; i < n; i++) {
        long double ts = (long double)t[i] / sg[i], di = (long double)f[i] / sg[i];
        for (size_t j = 0; j < np; j++) {
            long double sj = ts * c->basis[j * n + i];
            v[j] += sj * di;
            for (size_t k = 0; k <= j; k++)
                g[j * np + k] += sj * ts * c->basis[k * n + i];
        }
        logsig += 2 * logl(sg[i]);
    }
    for (size_t j = 0; j < np; j++)
        for (size_t k = 0; k < j; k++)
            g[k * np + j] = g[j * np + k];
    /* rank test on the diagonally scaled matrix */
    int deficient = 0;
    for (size_t j = 0; j < np; j++) {
        d[j] = g[j * np + j] > 0 ? 1 / sqrtl(g[j * np + j]) : 1;
        if (!(g[j * np + j] > 0))
            deficient = 1;
    }
    for (size_t j = 0; j < np; j++)
        for (size_t k = 0; k < np; k++)
            w[j * np + k] = g[j * np + k] * d[j] * d[k];
    ref_jacobi(w, vv, np);
    long double lmax = 0;
    for (size_t j = 0; j < np; j++)
        lmax = fmaxl(lmax, fabsl(w[j * np + j]));
    for (size_t j = 0; j < np; j++)
        if (!(fabsl(w[j * np + j]) > tol * lmax))
            deficient = 1;
    /* a = S V Lambda^+ V^T S v (the truncated pseudo-inverse where deficient) */
    long double logdet = 0;
    for (size_t j = 0; j < np; j++)
        logdet += -2 * logl(d[j]);
    for (size_t k = 0; k < np; k++)
        a[k] = 0;
    for (size_t q = 0; q < np; q++) {
        long double l = w[q * np + q];
        if (!(fabsl(l) > tol * lmax))
            continue;
        logdet += logl(fabsl(l));
        long double z = 0;
        for (size_t k = 0; k < np; k++)
            z += vv[k * np + q] * v[k] * d[k];
        for (size_t k = 0; k < np; k++)
            a[k] += vv[k * np + q] * z / l * d[k];
    }
    long double res = 0;
    for (size_t i = 0; i < n; i++) {
        long double cont = 0;
        for (size_t j = 0; j < np; j++)
            cont += a[j] * c->basis[j * n + i];
        best[i] = t[i] * cont;
        long double r = ((long double)f[i] - best[i]) / sg[i];
        res += r * r;
    }
    return deficient ? INFINITY : logdet + logsig + res;
}

static int chisq_reference(struct rvs_context *ctx, void *p)
{
    struct chisq_state *s = p;
    int status = RVS_OK;
    struct rvs_chisq_routine_errors *r = &rvs_chisq_routine_last;
    memset(r, 0, sizeof *r);
    double eps = s->fp64 ? DBL_EPSILON : FLT_EPSILON, tol = 4.0 * (double)s->np * eps;
    double err = 0;
    for (size_t a = 0; a < s->narm && status == RVS_OK; a++) {
        struct arm_case *c = &s->arms[a];
        size_t n = c->n, np = s->np, fb = 0, rd = 0;
        status = rvs_chisq_read(ctx, c->dchisq, s->E, c->chisq_dev);
        if (status == RVS_OK && c->dcoef)
            status = read_real(ctx, s->fp64, c->dcoef, s->E * np, c->coef_dev);
        if (status == RVS_OK && c->dbest)
            status = read_real(ctx, s->fp64, c->dbest, s->E * n, c->best_dev);
        if (status == RVS_OK)
            status = rvs_chisq_fallback_count(ctx, c->arm, &fb, &rd);
        r->fallback += fb;
        long double *best = malloc(n * sizeof *best), acoef[32];
        if (!best)
            return RVS_ERR_NOMEM;
        for (size_t e = 0; e < s->E && status == RVS_OK; e++) {
            size_t sp = (size_t)s->index[e];
            long double ref = ref_one(c, np, e, sp, tol, acoef, best);
            c->chisq_ref[e] = ref;
            double got = c->chisq_dev[e];
            r->requests++;
            double ee;
            if (isinf(ref)) {
                r->flagged_ref++;
                ee = isinf(got) && got > 0 ? 0 : INFINITY;
            } else {
                ee = fabs(got - (double)ref);
                if (s->fp64)
                    ee /= fabs((double)ref);
                if (!isfinite(got))
                    ee = INFINITY;
            }
            if (isinf(ref) != (isinf(got) && got > 0))
                r->flag_mismatch++;
            err = fmax(err, ee);
            if (c->dbest) {
                long double mmax = 0, dmax = 0;
                for (size_t i = 0; i < n; i++) {
                    mmax = fmaxl(mmax, fabsl(best[i]));
                    dmax = fmaxl(dmax, fabsl(c->best_dev[e * n + i] - best[i]));
                }
                r->model = fmax(r->model, mmax > 0 ? (double)(dmax / mmax) : (double)dmax);
            }
            if (c->dcoef && !isinf(ref)) {
                long double num = 0, den = 0;
                const double *t = c->model + e * n, *sg = c->espec + sp * n;
                for (size_t i = 0; i < n; i++) {
                    long double dc = 0, cc = 0;
                    for (size_t j = 0; j < np; j++) {
                        dc += ((long double)c->coef_dev[e * np + j] - acoef[j]) * c->basis[j * n + i];
                        cc += fabsl(acoef[j] * c->basis[j * n + i]);
                    }
                    num += powl(t[i] * dc / sg[i], 2);
                    den += powl(t[i] * cc / sg[i], 2);
                }
                r->coeff = fmax(r->coeff, den > 0 ? (double)sqrtl(num / den) : (double)sqrtl(num));
            }
        }
        free(best);
    }
    r->chisq = err;
    s->err_chisq = err;
    return status;
}

static double chisq_max_error(void *p) { return ((struct chisq_state *)p)->err_chisq; }

static double total_px(const struct rvs_routine_args *a)
{
    return a->n ? (double)a->n : (double)(desi_n[0] + desi_n[1] + desi_n[2]);
}

static double chisq_flops(const struct rvs_routine_args *a)
{
    double E = (double)a->batch, n = total_px(a), np = (double)a->m;
    double npair = np * (np + 1) / 2, arms = a->n ? 1 : 3;
    double prepare = 4 * E * n;                         /* T^2 w, T u */
    double gemms = 2 * E * n * npair + 2 * E * n * np;  /* Gram and projections */
    double solve = arms * E * (np * np * np / 3 + 2 * np * np);
    double residual = E * n * (2 * np + 4);             /* continuum, model, r^2 */
    return prepare + gemms + solve + residual;
}

static double chisq_bytes(const struct rvs_routine_args *a)
{
    double E = (double)a->batch, n = total_px(a), np = (double)a->m, es = (double)a->real_size;
    double npair = np * (np + 1) / 2;
    /* models twice (prepare, residual), X1/X2 written and read, basis tables, outputs */
    return es * (2 * E * n + 4 * E * n + n * (npair + 2 * np) + 2 * E);
}

static double chisq_evaluations(const struct rvs_routine_args *a) { return (double)a->batch; }

static const struct rvs_routine_args chisq_bench[] = {
    {.batch = 4096, .n = 0, .m = 10, .k = 256, .param = VAR_NO_OUTPUTS},    /* 3 DESI arms */
    {.batch = 4096, .n = 2881, .m = 10, .k = 256, .param = VAR_NO_OUTPUTS}, /* one arm (z) */
    {.batch = 4096, .n = 0, .m = 10, .k = 256, .param = 0},                 /* + outputs */
    {0}};

const struct rvs_routine rvs_routine_chisq = {
    .name = "chisq",
    .args_doc = "batch=E requests, n=px per arm (0: DESI b+r+z), m=npoly, k=spectra, "
                "param=variant (1 Chebyshev, 2 forced fallback, 4 impulse, 8 no outputs)",
    .error_kind = "chi^2 rel(fp64)/abs(fp32)",
    .setup = chisq_setup,
    .run = chisq_run,
    .reference = chisq_reference,
    .max_error = chisq_max_error,
    .flops = chisq_flops,
    .bytes = chisq_bytes,
    .destroy = chisq_destroy,
    .evaluations = chisq_evaluations,
    .bench_cases = chisq_bench,
};
