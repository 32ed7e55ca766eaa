/* chisq.c: the continuum-marginalised chi^2 of rvspecfit's get_chisq0 for many requests of one
 * arm (include/rvsfit/chisq.h; kernels in cl/chisq.cl). An arm owns the basis in the layouts
 * the GEMMs and the residual pass want, the spectra of the current batch, and a workspace that
 * grows with the number of requests. */
#include <config.h>

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/internal.h"
#include "rvsfit/chisq.h"

/* K-block of the fp32 Gram GEMMs: short float dot products, summed with compensation. */
#define GRAM_BLOCK 64
/* Work-group size of the residual pass (one group per request), at most. */
#define RESIDUAL_LOCAL_MAX 256

struct rvs_chisq_arm {
    size_t n, np, npair, n_pad, nb;
    int rbf, fp64, force_fallback, scale_free;
    size_t es; /* bytes per rvs_real */
    cl_mem pt;     /* n_pad x np: basis, pixel-major, zero padding rows */
    cl_mem ppt;    /* n_pad x npair: products P_j P_k (j <= k); fp32: n_pad x [hi | lo] */
    cl_mem ph, pl; /* np x n: basis, hi and (fp32) lo parts, for the residual pass */
    cl_mem linvt;  /* 2 x np x np (hi, lo): a = L^-T b gives rvspecfit's coefficients */
    long double logdet_basis; /* 2 log det L, added to every request's log det */
    double linvt_host[RVS_CHISQ_MAX_NPOLY * RVS_CHISQ_MAX_NPOLY];
    /* spectra */
    size_t S;
    cl_mem w, u;          /* 1/sigma^2, F/sigma^2 */
    cl_mem dh, dl;        /* D = F/sigma, hi + lo */
    cl_mem sh, sl;        /* 1/sigma, hi + lo */
    cl_mem logsig;        /* 2 sum log sigma, (hi, lo) per spectrum */
    /* workspace for up to cap requests */
    size_t cap, last_e;
    cl_mem x1, x2, gpart, gh, gl, v, fac, coef, logdet, mode;
    cl_kernel k_prepare, k_reduce, k_solve, k_residual, k_refine, k_deriv;
    /* CPU devices in fp64 (the context's vector_blocks): the residual pass and the derivative
     * kernel as one work-item per request in vector blocks of pixels (cl/chisq.cl) */
    int blocks;
    cl_kernel k_residual_blocks, k_deriv_blocks;
    size_t local; /* residual work-group size, a power of two */
    size_t deriv_kwg; /* the derivative kernel's largest work-group on this device */
};

size_t rvs_chisq_arm_npoly(const struct rvs_chisq_arm *arm) { return arm->np; }
size_t rvs_chisq_arm_npix(const struct rvs_chisq_arm *arm) { return arm->n; }

void rvs_chisq_arm_force_fallback(struct rvs_chisq_arm *arm, int on)
{
    if (arm)
        arm->force_fallback = on != 0;
}

void rvs_chisq_arm_set_scale_free(struct rvs_chisq_arm *arm, int on)
{
    if (arm)
        arm->scale_free = on != 0;
}

/* Port of get_poly_basis (rvspecfit py/rvspecfit/spec_fit.py). */
int rvs_chisq_basis(const double *lam, size_t n, size_t npoly, int rbf, double *basis)
{
    if (!lam || !basis || n == 0 || npoly == 0) {
        rvs_log(RVS_LOG_ERROR, "chisq", "basis: need a wavelength grid and npoly >= 1");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    double span = lam[n - 1] - lam[0];
    if (n > 1 && !(span != 0 && isfinite(span))) {
        rvs_log(RVS_LOG_ERROR, "chisq", "basis: wavelength grid has equal or non-finite ends "
                                        "(%g, %g)", lam[0], lam[n - 1]);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    for (size_t i = 0; i < n; i++) {
        /* same operation order as numpy: (lam - lam0) / (lam1 - lam0) * 2 - 1 */
        double x = n > 1 ? (lam[i] - lam[0]) / span * 2 - 1 : -1.0;
        if (!rbf) { /* Chebyshev T_j by the three-term recurrence */
            double t0 = 1, t1 = x;
            for (size_t j = 0; j < npoly; j++) {
                double t = j == 0 ? t0 : j == 1 ? t1 : 2 * x * t1 - t0;
                if (j >= 2)
                    t0 = t1, t1 = t;
                basis[j * n + i] = t;
            }
            continue;
        }
        for (size_t j = 0; j < npoly && j < 3; j++)
            basis[j * n + i] = j == 0 ? 1.0 : j == 1 ? x : x * x;
        if (npoly > 3) {
            size_t nrbf = npoly - 3;
            double sig = 1.0 / (double)nrbf;
            for (size_t j = 0; j < nrbf; j++) {
                /* numpy.linspace(-1, 1, nrbf): start + j * step, the last point exactly 1 */
                double c = nrbf == 1 ? -1.0
                           : j == nrbf - 1 ? 1.0
                                           : -1.0 + (double)j * (2.0 / (double)(nrbf - 1));
                double d = x - c;
                basis[(3 + j) * n + i] = exp(-0.5 * d * d / (sig * sig));
            }
        }
    }
    return RVS_OK;
}

/* Element i of rvs_real arrays: v into hi, and with lo != NULL its fp32 remainder (0 in fp64). */
static void put_pair(int fp64, void *hi, void *lo, size_t i, double v)
{
    if (fp64) {
        ((double *)hi)[i] = v;
        if (lo)
            ((double *)lo)[i] = 0;
    } else {
        float h = (float)v;
        ((float *)hi)[i] = h;
        if (lo)
            ((float *)lo)[i] = (float)(v - (double)h);
    }
}

/* Host doubles into an rvs_real buffer: hi parts, and with lo != NULL the fp32 remainders. */
static void to_real(int fp64, const double *src, size_t count, void *hi, void *lo)
{
    for (size_t i = 0; i < count; i++)
        put_pair(fp64, hi, lo, i, src[i]);
}

static void release_kernel(cl_kernel *k)
{
    if (*k)
        clReleaseKernel(*k);
    *k = NULL;
}

static void release_workspace(struct rvs_chisq_arm *arm)
{
    cl_mem *bufs[] = {&arm->x1, &arm->x2, &arm->gpart, &arm->gh, &arm->gl,
                      &arm->v,  &arm->fac, &arm->coef, &arm->logdet, &arm->mode};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        rvs_buffer_release(bufs[i]);
    arm->cap = 0;
}

static void release_data(struct rvs_chisq_arm *arm)
{
    cl_mem *bufs[] = {&arm->w, &arm->u, &arm->dh, &arm->dl, &arm->sh, &arm->sl, &arm->logsig};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        rvs_buffer_release(bufs[i]);
    arm->S = 0;
}

void rvs_chisq_arm_destroy(struct rvs_chisq_arm **arm)
{
    if (!arm || !*arm)
        return;
    struct rvs_chisq_arm *a = *arm;
    release_workspace(a);
    release_data(a);
    rvs_buffer_release(&a->pt);
    rvs_buffer_release(&a->ppt);
    rvs_buffer_release(&a->ph);
    rvs_buffer_release(&a->pl);
    rvs_buffer_release(&a->linvt);
    release_kernel(&a->k_prepare);
    release_kernel(&a->k_reduce);
    release_kernel(&a->k_solve);
    release_kernel(&a->k_residual);
    release_kernel(&a->k_refine);
    release_kernel(&a->k_deriv);
    release_kernel(&a->k_residual_blocks);
    release_kernel(&a->k_deriv_blocks);
    free(a);
    *arm = NULL;
}

/* Replaces the basis P by Q = L^-1 P, orthonormal on the grid (P P^T = L L^T, long double).
 * The span, hence |D - S a|^2, is unchanged; log det G_P = log det G_Q + 2 log det L, and
 * rvspecfit's coefficients are a = L^-T b from Q's b. rvspecfit's RBF basis has overlapping
 * Gaussians (scaled condition number ~1e4 at npoly 10): in Q the Gram matrix is about as well
 * conditioned as the weights T^2/sigma^2 allow, so fp32 rounding in the Gram GEMM no longer
 * costs ~1e-4..1e-3 in log det. Where P P^T is numerically singular (npoly > n) P is kept. */
static void orthonormalise(struct rvs_chisq_arm *arm, double *basis)
{
    size_t n = arm->n, np = arm->np;
    long double l[RVS_CHISQ_MAX_NPOLY * RVS_CHISQ_MAX_NPOLY] = {0};
    long double inv[RVS_CHISQ_MAX_NPOLY * RVS_CHISQ_MAX_NPOLY] = {0};
    long double ld = 0;
    for (size_t j = 0; j < np * np; j++)
        arm->linvt_host[j] = j % (np + 1) == 0;
    arm->logdet_basis = 0;
    for (size_t j = 0; j < np; j++)
        for (size_t k = 0; k <= j; k++) {
            long double acc = 0;
            for (size_t i = 0; i < n; i++)
                acc += (long double)basis[j * n + i] * basis[k * n + i];
            l[j * np + k] = acc; /* lower triangle of P P^T, factored in place */
        }
    for (size_t j = 0; j < np; j++) {
        long double d = l[j * np + j], diag = d;
        for (size_t k = 0; k < j; k++)
            d -= l[j * np + k] * l[j * np + k];
        if (!(d > 1e-12L * diag))
            return; /* rank-deficient basis: keep P */
        l[j * np + j] = sqrtl(d);
        ld += 2 * logl(l[j * np + j]);
        for (size_t i = j + 1; i < np; i++) {
            long double t = l[i * np + j];
            for (size_t k = 0; k < j; k++)
                t -= l[i * np + k] * l[j * np + k];
            l[i * np + j] = t / l[j * np + j];
        }
    }
    for (size_t c = 0; c < np; c++) /* L^-1, column by column */
        for (size_t j = c; j < np; j++) {
            long double t = j == c ? 1 : 0;
            for (size_t k = c; k < j; k++)
                t -= l[j * np + k] * inv[k * np + c];
            inv[j * np + c] = t / l[j * np + j];
        }
    long double q[RVS_CHISQ_MAX_NPOLY];
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < np; j++) {
            long double t = 0;
            for (size_t k = 0; k <= j; k++)
                t += inv[j * np + k] * basis[k * n + i];
            q[j] = t;
        }
        for (size_t j = 0; j < np; j++)
            basis[j * n + i] = (double)q[j];
    }
    for (size_t j = 0; j < np; j++)
        for (size_t k = 0; k < np; k++)
            arm->linvt_host[j * np + k] = (double)inv[k * np + j];
    arm->logdet_basis = ld;
}

int rvs_chisq_arm_create(struct rvs_context *ctx, const double *lam, size_t n, size_t npoly,
                         int rbf, struct rvs_chisq_arm **out)
{
    int status = RVS_OK;
    struct rvs_chisq_arm *arm = NULL;
    double *basis = NULL;
    unsigned char *host = NULL, *host_lo = NULL;
    *out = NULL;
    if (npoly == 0 || npoly > RVS_CHISQ_MAX_NPOLY || n == 0 || n > 0x7fffffff) {
        rvs_log(RVS_LOG_ERROR, "chisq", "arm: npoly %zu (1..%d) or n %zu out of range", npoly,
                RVS_CHISQ_MAX_NPOLY, n);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    arm = rvs_calloc(1, sizeof *arm);
    if (!arm)
        return RVS_ERR_NOMEM;
    arm->n = n;
    arm->np = npoly;
    arm->npair = npoly * (npoly + 1) / 2;
    arm->rbf = rbf;
    arm->fp64 = ctx->use_fp64;
    arm->es = rvs_context_real_size(ctx);
    /* fp64 sums the Gram matrix in one GEMM; fp32 in GRAM_BLOCK-long pieces */
    arm->n_pad = arm->fp64 ? n : (n + GRAM_BLOCK - 1) / GRAM_BLOCK * GRAM_BLOCK;
    arm->nb = arm->fp64 ? 1 : arm->n_pad / GRAM_BLOCK;

    basis = rvs_malloc(npoly * n * sizeof *basis);
    size_t big = 2 * arm->n_pad * arm->npair;
    if (big < npoly * n)
        big = npoly * n;
    if (big < 2 * npoly * npoly)
        big = 2 * npoly * npoly;
    host = rvs_calloc(big, arm->es);
    host_lo = rvs_calloc(npoly * n, arm->es);
    if (!basis || !host || !host_lo) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    RVS_TRY(rvs_chisq_basis(lam, n, npoly, rbf, basis));
    orthonormalise(arm, basis);

    /* basis-major hi/lo for the residual pass */
    to_real(arm->fp64, basis, npoly * n, host, arm->fp64 ? NULL : host_lo);
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, npoly * n * arm->es,
                              host, &arm->ph));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                              (arm->fp64 ? 1 : npoly * n) * arm->es, host_lo, &arm->pl));

    /* pixel-major basis and pair products for the GEMMs, zero padding rows */
    memset(host, 0, big * arm->es);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < npoly; j++) {
            double x = basis[j * n + i];
            size_t at = i * npoly + j;
            if (arm->fp64)
                ((double *)host)[at] = x;
            else
                ((float *)host)[at] = (float)x;
        }
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                              arm->n_pad * npoly * arm->es, host, &arm->pt));
    /* fp32: [hi | lo] of each product side by side, so one GEMM sums both. Rounding the
     * products alone perturbs G by ~1 ulp independently per pixel and pair, which moves
     * log det G by ~1e-4 at npoly 10 (the errors do not cancel through G^-1). */
    memset(host, 0, big * arm->es);
    size_t ldpp = arm->fp64 ? arm->npair : 2 * arm->npair;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0, p = 0; j < npoly; j++)
            for (size_t k = j; k < npoly; k++, p++) {
                double x = basis[j * n + i] * basis[k * n + i];
                size_t at = i * ldpp + p;
                if (arm->fp64) {
                    ((double *)host)[at] = x;
                } else {
                    float h = (float)x;
                    ((float *)host)[at] = h;
                    ((float *)host)[at + arm->npair] = (float)(x - (double)h);
                }
            }
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                              arm->n_pad * ldpp * arm->es, host, &arm->ppt));

    /* hi then lo: L^-T can be large with cancellation, so fp32 applies it in double-float */
    to_real(arm->fp64, arm->linvt_host, npoly * npoly, host,
            (unsigned char *)host + npoly * npoly * arm->es);
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                              2 * npoly * npoly * arm->es, host, &arm->linvt));

    RVS_TRY(rvs_context_kernel(ctx, "chisq", "rvs_chisq_prepare", &arm->k_prepare));
    RVS_TRY(rvs_context_kernel(ctx, "chisq", "rvs_chisq_gram_reduce", &arm->k_reduce));
    RVS_TRY(rvs_context_kernel(ctx, "chisq", "rvs_chisq_solve", &arm->k_solve));
    RVS_TRY(rvs_context_kernel(ctx, "chisq", "rvs_chisq_residual", &arm->k_residual));
    RVS_TRY(rvs_context_kernel(ctx, "chisq", "rvs_chisq_refine", &arm->k_refine));
    RVS_TRY(rvs_context_kernel(ctx, "chisq", "rvs_chisq_deriv", &arm->k_deriv));
    arm->blocks = ctx->vector_blocks && arm->fp64;
    if (arm->blocks) {
        RVS_TRY(rvs_context_kernel(ctx, "chisq", "rvs_chisq_residual_blocks",
                                   &arm->k_residual_blocks));
        RVS_TRY(rvs_context_kernel(ctx, "chisq", "rvs_chisq_deriv_blocks", &arm->k_deriv_blocks));
    }
    RVS_CL_TRY(clGetKernelWorkGroupInfo(arm->k_deriv, ctx->caps.device,
                                        CL_KERNEL_WORK_GROUP_SIZE, sizeof arm->deriv_kwg,
                                        &arm->deriv_kwg, NULL));

    size_t kwg = 0;
    RVS_CL_TRY(clGetKernelWorkGroupInfo(arm->k_residual, ctx->caps.device,
                                        CL_KERNEL_WORK_GROUP_SIZE, sizeof kwg, &kwg, NULL));
    size_t limit = RESIDUAL_LOCAL_MAX;
    if (kwg < limit)
        limit = kwg;
    if (ctx->caps.max_work_group_size < limit)
        limit = ctx->caps.max_work_group_size;
    size_t lmem_limit = (size_t)(ctx->caps.local_mem_size / 2);
    arm->local = 1;
    while (arm->local * 2 <= limit && (arm->local * 2) * 2 * arm->es + 1024 <= lmem_limit)
        arm->local *= 2;
    *out = arm;
    arm = NULL;
cleanup:
    rvs_chisq_arm_destroy(&arm);
    free(basis);
    free(host);
    free(host_lo);
    return status;
}

/* The per-pixel arrays of set_data for the spectra of one share: w = 1/sigma^2, u = F/sigma^2,
 * D = F/sigma and 1/sigma (hi, and lo in fp32), and per spectrum 2 sum log sigma (+ the basis
 * change's 2 log det L) as a (hi, lo) pair. */
struct data_job {
    const struct rvs_chisq_arm *arm;
    const double *spec, *espec;
    size_t S;
    void *w, *u, *dh, *dl, *sh, *sl, *logsig;
};

static void data_share(void *p, size_t k, size_t nshares)
{
    const struct data_job *j = p;
    const struct rvs_chisq_arm *arm = j->arm;
    const int fp64 = arm->fp64;
    const size_t n = arm->n, s0 = j->S * k / nshares, s1 = j->S * (k + 1) / nshares;
    for (size_t s = s0; s < s1; s++) {
        /* the logarithms in double (within an ulp each), summed in long double: logl cost
         * ~0.3 s per batch of 625 DESI spectra */
        long double acc = 0;
        for (size_t i = s * n; i < (s + 1) * n; i++) {
            const double e = j->espec[i], f = j->spec[i];
            rvs_real_put(fp64, j->w, i, 1.0 / (e * e));
            rvs_real_put(fp64, j->u, i, f / (e * e));
            put_pair(fp64, j->dh, j->dl, i, f / e);
            put_pair(fp64, j->sh, j->sl, i, 1.0 / e);
            acc += log(e);
        }
        acc = 2 * acc + arm->logdet_basis;
        if (fp64) {
            ((double *)j->logsig)[2 * s] = (double)acc;
            ((double *)j->logsig)[2 * s + 1] = 0;
        } else {
            float fh = (float)acc;
            ((float *)j->logsig)[2 * s] = fh;
            ((float *)j->logsig)[2 * s + 1] = (float)(double)(acc - (long double)fh);
        }
    }
}

int rvs_chisq_arm_set_data(struct rvs_context *ctx, struct rvs_chisq_arm *arm, const double *spec,
                           const double *espec, size_t S)
{
    int status = RVS_OK;
    size_t n = arm->n, count = S * n;
    unsigned char *host = NULL;
    if (!spec || !espec || S == 0 || S > 0x7fffffff) {
        rvs_log(RVS_LOG_ERROR, "chisq", "set_data: need S >= 1 spectra with errors");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    for (size_t i = 0; i < count; i++)
        if (!(espec[i] > 0) || !isfinite(espec[i]) || !isfinite(spec[i])) {
            rvs_log(RVS_LOG_ERROR, "chisq",
                    "set_data: spectrum %zu pixel %zu has flux %g, error %g; errors must be "
                    "positive and finite (mask pixels with a huge error, as rvspecfit does)",
                    i / n, i % n, spec[i], espec[i]);
            return RVS_ERR_INVALID_ARGUMENT;
        }
    release_data(arm);
    /* w, u, dh, sh, then (fp32) dl, sl: count elements each; logsig: 2 per spectrum */
    size_t es = arm->es, arrays = arm->fp64 ? 4 : 6, bytes = count * es;
    host = rvs_malloc(arrays * bytes + 2 * S * es);
    if (!host)
        return RVS_ERR_NOMEM;
    struct data_job job = {arm, spec, espec, S, host, host + bytes, host + 2 * bytes,
                           arm->fp64 ? NULL : host + 4 * bytes, host + 3 * bytes,
                           arm->fp64 ? NULL : host + 5 * bytes, host + arrays * bytes};
    /* on the host while the device waits: one share per core (H100 node: the batch upload
     * took 1.3-1.6 s of a 15 s run of 5000 targets on one thread) */
    rvs_parallel_run(rvs_parallel_threads(S, 16, 16), data_share, &job);
    cl_mem_flags ro = CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR;
    double zero = 0;
    RVS_TRY(rvs_buffer_create(ctx, ro, bytes, job.w, &arm->w));
    RVS_TRY(rvs_buffer_create(ctx, ro, bytes, job.u, &arm->u));
    RVS_TRY(rvs_buffer_create(ctx, ro, bytes, job.dh, &arm->dh));
    RVS_TRY(rvs_buffer_create(ctx, ro, arm->fp64 ? es : bytes, arm->fp64 ? (void *)&zero : job.dl,
                              &arm->dl));
    RVS_TRY(rvs_buffer_create(ctx, ro, bytes, job.sh, &arm->sh));
    RVS_TRY(rvs_buffer_create(ctx, ro, arm->fp64 ? es : bytes, arm->fp64 ? (void *)&zero : job.sl,
                              &arm->sl));
    RVS_TRY(rvs_buffer_create(ctx, ro, 2 * S * es, job.logsig, &arm->logsig));
    arm->S = S;
cleanup:
    if (status != RVS_OK)
        release_data(arm);
    free(host);
    return status;
}

static int ensure_workspace(struct rvs_context *ctx, struct rvs_chisq_arm *arm, size_t E)
{
    int status = RVS_OK;
    if (E <= arm->cap)
        return RVS_OK;
    release_workspace(arm);
    size_t es = arm->es, np = arm->np;
    cl_mem_flags rw = CL_MEM_READ_WRITE;
    RVS_TRY(rvs_buffer_create(ctx, rw, E * arm->n_pad * es, NULL, &arm->x1));
    RVS_TRY(rvs_buffer_create(ctx, rw, E * arm->n_pad * es, NULL, &arm->x2));
    RVS_TRY(rvs_buffer_create(ctx, rw, E * arm->npair * es, NULL, &arm->gh));
    if (!arm->fp64) {
        RVS_TRY(rvs_buffer_create(ctx, rw, arm->nb * E * 2 * arm->npair * es, NULL,
                                  &arm->gpart));
        RVS_TRY(rvs_buffer_create(ctx, rw, E * arm->npair * es, NULL, &arm->gl));
    }
    RVS_TRY(rvs_buffer_create(ctx, rw, E * np * es, NULL, &arm->v));
    RVS_TRY(rvs_buffer_create(ctx, rw, E * (3 * np * np + 2 * np) * es, NULL, &arm->fac));
    RVS_TRY(rvs_buffer_create(ctx, rw, E * 2 * np * es, NULL, &arm->coef));
    RVS_TRY(rvs_buffer_create(ctx, rw, E * 2 * es, NULL, &arm->logdet));
    RVS_TRY(rvs_buffer_create(ctx, rw, E * sizeof(cl_int), NULL, &arm->mode));
    arm->cap = E;
cleanup:
    if (status != RVS_OK) {
        rvs_log(RVS_LOG_WARNING, "chisq",
                "workspace for %zu requests of %zu px could not be allocated; try a smaller "
                "batch", E, arm->n);
        release_workspace(arm);
    }
    return status;
}

/* Sets a real-valued scalar kernel argument in the device's rvs_real. */
static int real_arg(const struct rvs_chisq_arm *arm, cl_kernel k, cl_uint index, double value)
{
    if (arm->fp64)
        return rvs_kernel_arg(k, index, sizeof(double), &value);
    float f = (float)value;
    return rvs_kernel_arg(k, index, sizeof f, &f);
}

static int residual_pass(struct rvs_context *ctx, struct rvs_chisq_arm *arm, cl_mem models,
                         cl_mem spectrum_index, size_t E, int pass, cl_mem chisq, cl_mem coeffs,
                         cl_mem best_model)
{
    int status = RVS_OK;
    /* CPU devices in fp64: one work-item per request in vector blocks (pass 1 only: pass 0 is
     * fp32's refinement); the same arguments */
    int blocks = arm->blocks && pass == 1;
    cl_kernel k = blocks ? arm->k_residual_blocks : arm->k_residual;
    size_t L = blocks ? 1 : arm->local;
    cl_uint n = (cl_uint)arm->n, n_pad = (cl_uint)arm->n_pad, np = (cl_uint)arm->np;
    cl_uint e32 = (cl_uint)E, s32 = (cl_uint)arm->S;
    cl_int want_coef = coeffs != NULL, want_model = best_model != NULL;
    cl_mem none = NULL;
    cl_uint a = 0;
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &models));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &spectrum_index));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->dh));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->dl));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->sh));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->sl));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->ph));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->pl));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->coef));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->linvt));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->logdet));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->logsig));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->mode));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof n, &n));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof n_pad, &n_pad));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof np, &np));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof e32, &e32));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof s32, &s32));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_int), &pass));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->x2));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), chisq ? &chisq : &none));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), coeffs ? &coeffs : &none));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), best_model ? &best_model : &none));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof want_coef, &want_coef));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof want_model, &want_model));
    RVS_TRY(rvs_kernel_arg(k, a++, L * arm->es, NULL));
    RVS_TRY(rvs_kernel_arg(k, a++, L * arm->es, NULL));
    RVS_TRY(rvs_kernel_launch_2d(ctx, k, L, E, L, 1));
cleanup:
    return status;
}

/* The checks shared by rvs_chisq_eval and rvs_chisq_eval_deriv (`what` names the caller). */
static int check_eval_args(struct rvs_context *ctx, const struct rvs_chisq_arm *arm,
                           const char *what, int have_buffers, size_t E)
{
    if (!arm || !have_buffers || E > 0x7fffffff) {
        rvs_log(RVS_LOG_ERROR, "chisq", "%s: missing arm, models, index or output", what);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (arm->S == 0) {
        rvs_log(RVS_LOG_ERROR, "chisq", "%s: no spectra; call rvs_chisq_arm_set_data first",
                what);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (arm->fp64 != ctx->use_fp64) {
        rvs_log(RVS_LOG_ERROR, "chisq", "%s: arm and context disagree on fp64", what);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    return RVS_OK;
}

/* Everything of rvs_chisq_eval before its final pass over the pixels: X1, X2, the Gram and
 * projection GEMMs, the per-request solve and (fp32) one refinement of the coefficients.
 * Leaves G (gh, gl), the factors (fac), coefficients (coef), log det and modes in the
 * workspace. */
static int solve_stage(struct rvs_context *ctx, struct rvs_chisq_arm *arm, cl_mem models,
                       cl_mem spectrum_index, size_t E)
{
    int status = RVS_OK;
    RVS_TRY(ensure_workspace(ctx, arm, E));
    arm->last_e = E;
    size_t np = arm->np, npair = arm->npair, n_pad = arm->n_pad;
    cl_uint n32 = (cl_uint)arm->n, npad32 = (cl_uint)n_pad, e32 = (cl_uint)E;
    cl_uint s32 = (cl_uint)arm->S, np32 = (cl_uint)np;
    cl_kernel k;
    cl_uint a;

    /* X1 = T^2 / sigma^2, X2 = T F / sigma^2 */
    k = arm->k_prepare;
    a = 0;
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &models));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &spectrum_index));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->w));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->u));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof n32, &n32));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof npad32, &npad32));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof e32, &e32));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof s32, &s32));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->x1));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->x2));
    RVS_TRY(rvs_kernel_launch_2d(ctx, k, n_pad, E, 0, 1));

    /* Gram entries G = X1 PP and projections v = X2 P */
    if (arm->fp64) {
        RVS_TRY(rvs_gemm_real(ctx, RVS_NO_TRANS, RVS_NO_TRANS, E, npair, n_pad, 1.0, arm->x1, 0,
                              n_pad, arm->ppt, 0, npair, 0.0, arm->gh, 0, npair));
    } else {
        /* per K-block b: gpart[b] (E x 2 npair) = X1[:, block b] [PP_hi | PP_lo][block b] */
        RVS_TRY(rvs_gemm_batched(ctx, 0, RVS_NO_TRANS, RVS_NO_TRANS, E, 2 * npair, GRAM_BLOCK,
                                 1.0, arm->x1, 0, n_pad, GRAM_BLOCK, arm->ppt, 0, 2 * npair,
                                 GRAM_BLOCK * 2 * npair, 0.0, arm->gpart, 0, 2 * npair,
                                 E * 2 * npair, arm->nb));
        k = arm->k_reduce;
        cl_uint nb32 = (cl_uint)arm->nb, count = (cl_uint)(E * npair), np2 = (cl_uint)npair;
        a = 0;
        RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->gpart));
        RVS_TRY(rvs_kernel_arg(k, a++, sizeof nb32, &nb32));
        RVS_TRY(rvs_kernel_arg(k, a++, sizeof count, &count));
        RVS_TRY(rvs_kernel_arg(k, a++, sizeof np2, &np2));
        RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->gh));
        RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->gl));
        RVS_TRY(rvs_kernel_launch_1d(ctx, k, E * npair, 0));
    }
    RVS_TRY(rvs_gemm_real(ctx, RVS_NO_TRANS, RVS_NO_TRANS, E, np, n_pad, 1.0, arm->x2, 0, n_pad,
                          arm->pt, 0, np, 0.0, arm->v, 0, np));

    /* per-request factorisation, log det and coefficients */
    double eps = arm->fp64 ? DBL_EPSILON : FLT_EPSILON;
    cl_int force = arm->force_fallback;
    k = arm->k_solve;
    a = 0;
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->gh));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), arm->fp64 ? &arm->gh : &arm->gl));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->v));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof e32, &e32));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof np32, &np32));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof force, &force));
    cl_int scale_free = arm->scale_free;
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof scale_free, &scale_free));
    /* pivots / eigenvalues below 4 npoly eps of the scaled matrix are rounding noise */
    RVS_TRY(real_arg(arm, k, a++, 4.0 * (double)np * eps));
    RVS_TRY(real_arg(arm, k, a++, eps));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->fac));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->coef));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->logdet));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->mode));
    RVS_TRY(rvs_kernel_launch_1d(ctx, k, E, 0));

    if (!arm->fp64) {
        /* one step of iterative refinement: r in double-float, S^T r by GEMM, solve again */
        RVS_TRY(residual_pass(ctx, arm, models, spectrum_index, E, 0, NULL, NULL, NULL));
        RVS_TRY(rvs_gemm_real(ctx, RVS_NO_TRANS, RVS_NO_TRANS, E, np, n_pad, 1.0, arm->x2, 0,
                              n_pad, arm->pt, 0, np, 0.0, arm->v, 0, np));
        k = arm->k_refine;
        a = 0;
        RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->v));
        RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->fac));
        RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->mode));
        RVS_TRY(rvs_kernel_arg(k, a++, sizeof e32, &e32));
        RVS_TRY(rvs_kernel_arg(k, a++, sizeof np32, &np32));
        RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->coef));
        RVS_TRY(rvs_kernel_launch_1d(ctx, k, E, 0));
    }
cleanup:
    return status;
}

int rvs_chisq_eval(struct rvs_context *ctx, struct rvs_chisq_arm *arm, cl_mem models,
                   cl_mem spectrum_index, size_t E, cl_mem chisq, cl_mem coeffs,
                   cl_mem best_model)
{
    int status = RVS_OK;
    RVS_TRY(check_eval_args(ctx, arm, "eval", models && spectrum_index && chisq, E));
    if (E == 0)
        return RVS_OK;
    RVS_TRY(solve_stage(ctx, arm, models, spectrum_index, E));
    RVS_TRY(residual_pass(ctx, arm, models, spectrum_index, E, 1, chisq, coeffs, best_model));
cleanup:
    return status;
}

/* Local memory of rvs_chisq_deriv at work-group size L, in rvs_real elements: the tile (the
 * largest of its three uses), the accumulators' (sum, comp) pairs, lsum + lcomp, G^-1. */
static size_t deriv_tile(size_t L, size_t np, size_t K)
{
    size_t t = (K + np) * L;
    if (t < np * np) /* the columns of L^-1 */
        t = np * np;
    if (t < np * K + 2 * K * K) /* G^-1 U, M and its Cholesky factor */
        t = np * K + 2 * K * K;
    return t;
}

static size_t deriv_local_elems(size_t L, size_t np, size_t K)
{
    size_t nacc = K * (K + 1) / 2 + np * K;
    return deriv_tile(L, np, K) + 2 * nacc + 2 * L + np * np;
}

/* Gauss-Newton sums rvs_chisq_deriv_blocks keeps in registers at most (RVS_CHISQ_BLOCKS_MAX_ACC
 * of cl/chisq.cl); more go to rvs_chisq_deriv. */
#define CHISQ_BLOCKS_MAX_ACC 128

int rvs_chisq_eval_deriv(struct rvs_context *ctx, struct rvs_chisq_arm *arm, cl_mem models,
                         cl_mem tangents, size_t tangent_row0, size_t K, cl_mem spectrum_index,
                         size_t E, cl_mem chisq, cl_mem grad, cl_mem gn)
{
    int status = RVS_OK;
    RVS_TRY(check_eval_args(ctx, arm, "eval_deriv",
                            models && tangents && spectrum_index && chisq && grad, E));
    if (K == 0 || K > RVS_CHISQ_MAX_TANGENTS) {
        rvs_log(RVS_LOG_ERROR, "chisq", "eval_deriv: %zu tangents per request (1..%d)", K,
                RVS_CHISQ_MAX_TANGENTS);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (E == 0)
        return RVS_OK;
    size_t np = arm->np, es = arm->es;
    if (tangent_row0 > UINT32_MAX) {
        rvs_log(RVS_LOG_ERROR, "chisq", "eval_deriv: tangent_row0 %zu beyond 2^32-1",
                tangent_row0);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    RVS_TRY(rvs_buffer_check_size("chisq", tangents, (tangent_row0 + K * E) * arm->n * es,
                                  "tangents"));
    /* CPU devices in fp64: one work-item per request in vector blocks (work-groups of 1), the
     * same arguments, where its vector registers hold the Gauss-Newton sums */
    int blocks = arm->blocks && K * (K + 1) / 2 + np * K <= CHISQ_BLOCKS_MAX_ACC;
    /* The residual pass's work-group size where the tile fits, so chi^2 is the same sum to
     * the bit; else halved until it fits (chi^2 then differs from rvs_chisq_eval's by
     * rounding only). A device's static local arrays (ah, al, gout: < 1 KiB) are left room. */
    size_t L = blocks ? 1 : arm->local, lmem = (size_t)ctx->caps.local_mem_size;
    while (L > 1 && (L > arm->deriv_kwg || deriv_local_elems(L, np, K) * es + 1024 > lmem))
        L /= 2;
    if (deriv_local_elems(L, np, K) * es + 1024 > lmem) {
        rvs_log(RVS_LOG_ERROR, "chisq",
                "eval_deriv: %zu bytes of local memory needed for npoly %zu and %zu tangents, "
                "the device has %zu; use fewer tangents or a smaller basis",
                deriv_local_elems(L, np, K) * es + 1024, np, K, lmem);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    RVS_TRY(solve_stage(ctx, arm, models, spectrum_index, E));

    cl_kernel k = blocks ? arm->k_deriv_blocks : arm->k_deriv;
    cl_uint n32 = (cl_uint)arm->n, np32 = (cl_uint)np, k32 = (cl_uint)K, e32 = (cl_uint)E;
    cl_uint s32 = (cl_uint)arm->S, row0 = (cl_uint)tangent_row0;
    cl_int scale_free = arm->scale_free, want_gn = gn != NULL;
    cl_mem gl = arm->fp64 ? arm->gh : arm->gl;
    size_t nacc = K * (K + 1) / 2 + np * K;
    cl_uint a = 0;
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &models));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &tangents));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &spectrum_index));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->dh));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->dl));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->sh));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->sl));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->ph));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->pl));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->coef));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->gh));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &gl));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->fac));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->logdet));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->logsig));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &arm->mode));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof n32, &n32));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof np32, &np32));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof k32, &k32));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof e32, &e32));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof s32, &s32));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof row0, &row0));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof scale_free, &scale_free));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof want_gn, &want_gn));
    /* Schur-complement pivots below this fraction of the unprojected |y_k|^2 are rounding
     * noise of the cancellation Y^T Y - U^T G^-1 U (npoly + K terms of each entry) */
    double eps = arm->fp64 ? DBL_EPSILON : FLT_EPSILON;
    RVS_TRY(real_arg(arm, k, a++, 4.0 * (double)(np + K) * eps));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &chisq));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), &grad));
    RVS_TRY(rvs_kernel_arg(k, a++, sizeof(cl_mem), want_gn ? &gn : &grad)); /* unused if no GN */
    RVS_TRY(rvs_kernel_arg(k, a++, deriv_tile(L, np, K) * es, NULL));
    RVS_TRY(rvs_kernel_arg(k, a++, 2 * nacc * es, NULL));
    RVS_TRY(rvs_kernel_arg(k, a++, L * es, NULL));
    RVS_TRY(rvs_kernel_arg(k, a++, L * es, NULL));
    RVS_TRY(rvs_kernel_arg(k, a++, np * np * es, NULL));
    RVS_TRY(rvs_kernel_launch_2d(ctx, k, L, E, L, 1));
cleanup:
    return status;
}

int rvs_chisq_read(struct rvs_context *ctx, cl_mem chisq, size_t E, double *out)
{
    int status = RVS_OK;
    size_t es = rvs_context_real_size(ctx);
    unsigned char *host = rvs_malloc(2 * E * es + 1);
    if (!host)
        return RVS_ERR_NOMEM;
    RVS_TRY(rvs_buffer_read(ctx, chisq, 0, 2 * E * es, host));
    for (size_t e = 0; e < E; e++)
        out[e] = es == sizeof(double)
                     ? ((double *)host)[2 * e] + ((double *)host)[2 * e + 1]
                     : (double)((float *)host)[2 * e] + (double)((float *)host)[2 * e + 1];
cleanup:
    free(host);
    return status;
}

int rvs_chisq_fallback_count(struct rvs_context *ctx, struct rvs_chisq_arm *arm,
                             size_t *fallback, size_t *rank_deficient)
{
    int status = RVS_OK;
    cl_int *modes = NULL;
    *fallback = *rank_deficient = 0;
    if (arm->last_e == 0)
        return RVS_OK;
    modes = rvs_malloc(arm->last_e * sizeof *modes);
    if (!modes)
        return RVS_ERR_NOMEM;
    RVS_TRY(rvs_buffer_read(ctx, arm->mode, 0, arm->last_e * sizeof *modes, modes));
    for (size_t e = 0; e < arm->last_e; e++) {
        *fallback += modes[e] == 1 || modes[e] == 2;
        *rank_deficient += modes[e] == 2;
    }
cleanup:
    free(modes);
    return status;
}

/* ---------------------------------------------------------------- self-test */

/* log det of a small SPD matrix (row-major) by Cholesky in long double; NAN if not SPD. */
static long double logdet_spd(const long double *g, size_t np)
{
    long double l[8 * 8] = {0}, ld = 0;
    for (size_t j = 0; j < np; j++) {
        long double d = g[j * np + j];
        for (size_t k = 0; k < j; k++)
            d -= l[j * np + k] * l[j * np + k];
        if (!(d > 0))
            return NAN;
        l[j * np + j] = sqrtl(d);
        ld += logl(d);
        for (size_t i = j + 1; i < np; i++) {
            long double t = g[i * np + j];
            for (size_t k = 0; k < j; k++)
                t -= l[i * np + k] * l[j * np + k];
            l[i * np + j] = t / l[j * np + j];
        }
    }
    return ld;
}

int rvs_chisq_selftest(struct rvs_context *ctx, char *detail, size_t detail_size)
{
    enum { N = 100, NP = 5, E = 2 };
    int status = RVS_OK;
    struct rvs_chisq_arm *arm = NULL;
    cl_mem dm = NULL, di = NULL, dc = NULL;
    double lam[N], basis[NP * N], model[E * N], spec[E * N], espec[E * N], got[E];
    unsigned char host[E * N * sizeof(double)];
    const cl_int index[E] = {1, 0};
    for (size_t i = 0; i < N; i++)
        lam[i] = 5000.0 + 0.8 * (double)i;
    RVS_TRY(rvs_chisq_basis(lam, N, NP, 1, basis));
    long double want[E];
    for (size_t e = 0; e < E; e++) {
        /* the data are model x (a continuum in the basis): the residual vanishes */
        const double a[NP] = {1.0, 0.2 * (double)e - 0.1, 0.05, 0.3, -0.2};
        for (size_t i = 0; i < N; i++) {
            double t = 1.0 - 0.6 * exp(-0.5 * pow((double)i - 30.0 - 20.0 * (double)e, 2) / 4.0);
            t = (double)(float)t; /* exact in either precision */
            double cont = 0;
            for (size_t j = 0; j < NP; j++)
                cont += a[j] * basis[j * N + i];
            model[e * N + i] = t;
            spec[index[e] * N + i] = t * cont;
            espec[index[e] * N + i] = 0.01 + 0.001 * (double)((i * 7 + e) % 13);
        }
    }
    for (size_t e = 0; e < E; e++) {
        long double g[NP * NP], sig2 = 0;
        size_t s = (size_t)index[e];
        for (size_t j = 0; j < NP; j++)
            for (size_t k = 0; k < NP; k++) {
                long double acc = 0;
                for (size_t i = 0; i < N; i++) {
                    long double t = (long double)model[e * N + i] / espec[s * N + i];
                    acc += t * t * basis[j * N + i] * basis[k * N + i];
                }
                g[j * NP + k] = acc;
            }
        for (size_t i = 0; i < N; i++)
            sig2 += 2 * logl(espec[s * N + i]);
        want[e] = logdet_spd(g, NP) + sig2;
    }
    RVS_TRY(rvs_chisq_arm_create(ctx, lam, N, NP, 1, &arm));
    RVS_TRY(rvs_chisq_arm_set_data(ctx, arm, spec, espec, E));
    to_real(ctx->use_fp64, model, E * N, host, NULL);
    size_t es = rvs_context_real_size(ctx);
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, E * N * es, host,
                              &dm));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, sizeof index,
                              (void *)index, &di));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, 2 * E * es, NULL, &dc));
    RVS_TRY(rvs_chisq_eval(ctx, arm, dm, di, E, dc, NULL, NULL));
    RVS_TRY(rvs_chisq_read(ctx, dc, E, got));
    for (size_t e = 0; e < E; e++) {
        /* |chi^2| ~ 900 here; fp32 keeps it to ~1e-4 (see cl/chisq.cl) */
        double tol = ctx->use_fp64 ? 1e-9 : 1e-3;
        if (!(fabs(got[e] - (double)want[e]) <= tol)) {
            snprintf(detail, detail_size, "chi^2[%zu] = %.9g, expected %.9g", e, got[e],
                     (double)want[e]);
            status = RVS_ERR_SELFTEST;
            break;
        }
    }
cleanup:
    rvs_buffer_release(&dm);
    rvs_buffer_release(&di);
    rvs_buffer_release(&dc);
    rvs_chisq_arm_destroy(&arm);
    return status;
}
