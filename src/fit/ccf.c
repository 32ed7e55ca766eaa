/* fit/ccf.c: the CCF start of the fitter, after rvspecfit's fitter_ccf.fit and make_ccf:
 * continuum-normalised, apodised data and templates on one log-wavelength grid spanning all the
 * arms; a template bank = the emulator on a parameter grid x vsini {0, 300}; for every spectrum
 * and bank template chi^2(shift) = sum w (d - t_shift)^2 = const - 2 (d w) * t + w * t^2 by
 * FFT cross-correlations (fitter_ccf's `continuum` branch; without continuum normalisation the
 * amplitude-marginalised -(d w * t)^2 / (w * t^2)); the best template and shift per spectrum.
 *
 * Once per fitter: the bank is evaluated on the device (one rvs_nn_forward per arm for all bank
 * parameters), brought onto the grid and continuum-normalised on the host, and
 * Fourier-transformed on the device. Per batch: the host prepares every spectrum's grid input
 * (block-median continuum, resampling, apodisation: ~0.5 ms a spectrum, a thread per core);
 * the device transforms them (one batched clFFT), forms the cross-spectra of all (spectrum,
 * template) pairs, transforms them back in chunks of pairs bounded by memory (one batched clFFT
 * per chunk) and reduces each pair to its best chi^2 and shift (cl/ccf.cl); the host reads back
 * three numbers per pair and picks the best template and the alternative starts. Device
 * commands per batch: 2 writes, 1 transform, 3 per chunk (2048 pairs in double, 4096 in float:
 * ~40 or ~20 chunks for 650 spectra x 132 templates), 1 read; never per spectrum or template.
 * The CCF only chooses the start: vel_fit.process then rescans the velocity at vel_step0 with
 * the chosen template, so a velocity resolution of ~35 km/s per grid pixel is enough here.
 * tests/test_ccf.c holds the plain-C reference (the former host implementation) and compares. */
#include <config.h>

/* first: it fixes the OpenCL API level before clFFT.h includes CL/cl.h */
#include "base/internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fit/fit_internal.h"

#define CCF_C 299792.458
#define CCF_N 8192
#define CCF_EPS 0.6 /* limb darkening of rvspecfit's rotation kernel */
#define CCF_MAX_TEFF_NODES 7
#define CCF_MAX_THREADS 64
#define CCF_WG 64 /* RVS_CCF_WG of cl/ccf.cl */
/* clFFT plans kept (one per batch size, a power of two: forward and inverse share them): a
 * run's batches need the spectra's and the pairs' plans of at most two batch sizes */
#define CCF_MAX_PLANS 4
/* bytes of one chunk's cross-spectra, 2048 pairs in double, 4096 in float; each plan's clFFT
 * intermediate buffer takes as much again (length 8192 takes two passes) */
#define CCF_CHUNK_BYTES ((size_t)256 << 20)
/* On CPU devices the chunk is host memory and the transforms gain nothing from size: 32 MB
 * (256 pairs in double) took the peak RSS of a realistic 100-target PoCL fit from 1.34 to
 * 0.91 GB and the CCF start from 3.8 to 3.3 s (the chunk stays in the caches longer). */
#define CCF_CHUNK_BYTES_CPU ((size_t)32 << 20)

struct rvs_fit_ccf {
    size_t n;        /* FFT length */
    double ln0, dln; /* grid: ln(lambda_k) = ln0 + k dln */
    size_t lo[RVS_DESI_NARMS], hi[RVS_DESI_NARMS]; /* grid range of each arm [lo, hi) */
    /* resampling of arm a's data onto grid point g: pixel rj[a][g - lo] and the fraction
     * rfr[a][g - lo] towards the next one (the same for every spectrum) */
    size_t *rj[RVS_DESI_NARMS];
    double *rfr[RVS_DESI_NARMS];
    size_t nb;
    double (*bank_theta)[5]; /* theta, vsini */
    size_t *bank_node;       /* index of the template's temperature in teffs[] */
    double *bank_t;          /* nb x n: continuum-normalised template t' on the grid */
    size_t smax;             /* shifts -smax..smax */
    size_t s_lo, s_hi;       /* shift indices (0..2 smax) inside [min_vel, max_vel] */
    int any_shift;           /* s_lo <= s_hi */
    /* device */
    cl_kernel k_multiply, k_reduce;
    cl_mem bank;   /* 2 nb rows of n complex: FFTs of t' and t'^2 per template */
    cl_mem spec;   /* spec_rows of n complex: FFTs of dw and w per spectrum */
    cl_mem work;   /* chunk x n complex: cross-spectra, then correlations */
    cl_mem out;    /* out_pairs x 3 */
    cl_mem tscale; /* nb: t'^2 rows are t'^2 / tscale (cl/ccf.cl) */
    cl_mem wscale; /* spec_rows / 2: w rows are w / wscale */
    size_t spec_rows, out_pairs, work_rows, chunk;
    void *stage;   /* host rows of the spectra's inputs (rvs_real) */
    void *stage_scale; /* their wscale (rvs_real) */
    size_t stage_rows;
    void *res;     /* host copy of out (rvs_real) */
    size_t res_pairs;
    struct rvs_fft_plan_cache plans;
    /* statistics (RVSFIT_CL_ENGINE_PROFILE) */
    size_t calls, spectra, chunks;
    double t_prepare, t_device, t_select;
};

/* ------------------------------------------------------------------ host preparation */

static void swap_d(double *a, double *b)
{
    double t = *a;
    *a = *b;
    *b = t;
}

/* Rearranges x[0..n) so that x[k] is the k-th smallest and nothing before it is larger
 * (quickselect with a median-of-three pivot; n > k). */
static void select_kth(double *x, size_t n, size_t k)
{
    size_t lo = 0, hi = n - 1;
    while (hi > lo) {
        size_t mid = lo + (hi - lo) / 2;
        if (x[mid] < x[lo])
            swap_d(&x[mid], &x[lo]);
        if (x[hi] < x[lo])
            swap_d(&x[hi], &x[lo]);
        if (x[hi] < x[mid])
            swap_d(&x[hi], &x[mid]);
        double pivot = x[mid];
        size_t i = lo, j = hi;
        while (i <= j) {
            while (x[i] < pivot)
                i++;
            while (pivot < x[j])
                j--;
            if (i <= j) {
                swap_d(&x[i], &x[j]);
                i++;
                if (j == 0)
                    break;
                j--;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            return;
    }
}

/* median of x[0..k), k >= 1 (reorders x) */
static double median_of(double *x, size_t k)
{
    select_kth(x, k, k / 2);
    double m = x[k / 2];
    if (k % 2)
        return m;
    double below = x[0]; /* the (k/2 - 1)-th: the largest of x[0..k/2) */
    for (size_t i = 1; i < k / 2; i++)
        if (x[i] > below)
            below = x[i];
    return 0.5 * (below + m);
}

/* A smooth continuum: medians of the good values in blocks of `block` samples, linearly
 * interpolated between the blocks' mean positions (constant beyond the first and last).
 * scratch: block + 2 ceil(n / block) doubles. */
static void block_continuum(const double *x, const unsigned char *good, size_t n, size_t block,
                            double *cont, double *scratch)
{
    size_t nbk = (n + block - 1) / block, m = 0;
    double *pos = scratch + block, *val = pos + nbk;
    for (size_t b = 0; b < nbk; b++) {
        size_t k = 0;
        double ps = 0;
        for (size_t i = b * block; i < n && i < (b + 1) * block; i++)
            if (good[i] && isfinite(x[i])) {
                scratch[k++] = x[i];
                ps += (double)i;
            }
        if (k < block / 4 + 1)
            continue;
        pos[m] = ps / (double)k;
        val[m] = median_of(scratch, k);
        m++;
    }
    if (m == 0) {
        for (size_t i = 0; i < n; i++)
            cont[i] = NAN;
        return;
    }
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        double xi = (double)i;
        while (j + 1 < m && pos[j + 1] < xi)
            j++;
        if (xi <= pos[0])
            cont[i] = val[0];
        else if (j + 1 >= m)
            cont[i] = val[m - 1];
        else {
            double f = (xi - pos[j]) / (pos[j + 1] - pos[j]);
            cont[i] = val[j] + f * (val[j + 1] - val[j]);
        }
    }
}

/* cosine taper of w over `edge` samples at both ends of [lo, hi) */
static void apodize(double *w, size_t lo, size_t hi, size_t edge)
{
    for (size_t k = 0; k < edge && lo + k < hi; k++) {
        double f = 0.5 * (1 - cos(M_PI * ((double)k + 0.5) / (double)edge));
        w[lo + k] *= f;
        w[hi - 1 - k] *= f;
    }
}

/* per-thread scratch of ccf_input */
struct ccf_scratch {
    double *cont, *scr;
    unsigned char *good;
};

static void scratch_free(struct ccf_scratch *s)
{
    free(s->cont);
    free(s->scr);
    free(s->good);
}

static int scratch_alloc(const struct rvs_fitter *f, struct ccf_scratch *s)
{
    size_t maxn = 0;
    for (size_t k = 0; k < f->narm; k++)
        maxn = f->nwave[f->engine_arm[k]] > maxn ? f->nwave[f->engine_arm[k]] : maxn;
    s->cont = rvs_malloc((maxn + 1) * sizeof(double));
    s->scr = rvs_malloc((3 * maxn + 16) * sizeof(double));
    s->good = rvs_malloc(maxn + 1);
    if (!s->cont || !s->scr || !s->good) {
        scratch_free(s);
        return RVS_ERR_NOMEM;
    }
    return RVS_OK;
}

/* Spectrum t's CCF input on the grid (n values each): dw = d w and w, zero outside the data:
 * continuum-normalised d = flux / continuum - 1 with w = (continuum / error)^2 (else d = flux,
 * w = 1 / error^2), linear in flux, zero next to bad pixels, tapered at every arm's edges. */
static void ccf_input(const struct rvs_fitter *f, const struct rvs_prepared *b, size_t t,
                      double *dw, double *w, struct ccf_scratch *s)
{
    const struct rvs_fit_ccf *c = f->ccf;
    memset(dw, 0, c->n * sizeof(double));
    memset(w, 0, c->n * sizeof(double));
    for (size_t k = 0; k < f->narm; k++) {
        int a = f->engine_arm[k];
        if (!f->used[k][t])
            continue;
        size_t np = f->nwave[a];
        const double *sp = b->spec[a] + t * np, *es = b->espec[a] + t * np;
        const unsigned char *bd = b->bad[a] + t * np;
        for (size_t j = 0; j < np; j++)
            s->good[j] = !bd[j];
        block_continuum(sp, s->good, np, 150, s->cont, s->scr);
        for (size_t g = c->lo[a]; g < c->hi[a]; g++) {
            size_t j = c->rj[a][g - c->lo[a]];
            double fr = c->rfr[a][g - c->lo[a]];
            if (fr < 0 || fr > 1 || bd[j] || bd[j + 1])
                continue;
            double cv = (1 - fr) * s->cont[j] + fr * s->cont[j + 1];
            double sv = (1 - fr) * sp[j] + fr * sp[j + 1];
            double e = (1 - fr) * es[j] + fr * es[j + 1];
            if (!(cv > 0) || !(e > 0) || !isfinite(sv))
                continue;
            double d, ww;
            if (f->cfg.ccf_continuum_normalize) {
                d = sv / cv - 1;
                ww = (cv / e) * (cv / e);
            } else {
                d = sv;
                ww = 1 / (e * e);
            }
            dw[g] = d * ww;
            w[g] = ww;
        }
        /* apodisation: taper data and weights over 20 grid pixels at each arm edge */
        apodize(dw, c->lo[a], c->hi[a], 20);
        apodize(w, c->lo[a], c->hi[a], 20);
    }
}

int rvs_fit_ccf_input(const struct rvs_fitter *f, const struct rvs_prepared *b, size_t t,
                      double *dw, double *w)
{
    struct ccf_scratch s;
    if (!f->ccf || scratch_alloc(f, &s) != RVS_OK)
        return f->ccf ? RVS_ERR_NOMEM : RVS_ERR_INVALID_ARGUMENT;
    ccf_input(f, b, t, dw, w, &s);
    scratch_free(&s);
    return RVS_OK;
}

void rvs_fit_ccf_info(const struct rvs_fitter *f, struct rvs_fit_ccf_info *info)
{
    const struct rvs_fit_ccf *c = f->ccf;
    memset(info, 0, sizeof *info);
    if (!c)
        return;
    info->n = c->n;
    info->nb = c->nb;
    info->smax = c->smax;
    info->ln0 = c->ln0;
    info->dln = c->dln;
    info->bank_theta = (const double(*)[5])c->bank_theta;
    info->bank_node = c->bank_node;
    info->bank_t = c->bank_t;
    info->chunk = c->chunk;
}

void rvs_fit_ccf_set_chunk(struct rvs_fitter *f, size_t pairs)
{
    struct rvs_fit_ccf *c = f->ccf;
    if (!c || pairs == 0)
        return;
    while (c->chunk > pairs && c->chunk > 1)
        c->chunk /= 2;
}

/* ------------------------------------------------------------------ device plumbing */

/* smallest power of two >= n */
static size_t pow2_ceil(size_t n)
{
    size_t b = 1;
    while (b < n)
        b *= 2;
    return b;
}

/* The cached in-place batched complex plan of `batch` rows of the grid's length. */
static int get_plan(struct rvs_fitter *f, size_t batch, size_t *handle)
{
    return rvs_fft_plan_get(f->ctx, &f->ccf->plans, RVS_FFT_COMPLEX, f->ccf->n, batch, handle);
}

/* A power of two near big / small (1 when either is 0 or not finite), kept well inside float's
 * range: the divisor that brings `big` to the magnitude of `small` exactly. */
static double balance_scale(double big, double small)
{
    if (!(big > 0) || !(small > 0) || !isfinite(big) || !isfinite(small))
        return 1;
    int e;
    frexp(big / small, &e);
    e = e < -100 ? -100 : (e > 100 ? 100 : e);
    return ldexp(1, e);
}

/* Grows a device buffer to hold at least `bytes` (contents are not kept). */
static int ensure_buffer(struct rvs_context *ctx, cl_mem *buf, size_t bytes)
{
    rvs_buffer_release(buf);
    return rvs_buffer_create(ctx, CL_MEM_READ_WRITE, bytes, NULL, buf);
}

/* ------------------------------------------------------------------ fitter setup */

void rvs_fit_ccf_destroy(struct rvs_fitter *f)
{
    if (!f || !f->ccf)
        return;
    struct rvs_fit_ccf *c = f->ccf;
    if (c->calls > 0 && getenv("RVSFIT_CL_ENGINE_PROFILE"))
        fprintf(stderr, "CCF profile: %zu calls, %zu spectra x %zu templates, %zu chunks of <= "
                "%zu pairs; host input %.3f s, device %.3f s, selection %.3f s\n",
                c->calls, c->spectra, c->nb, c->chunks, c->chunk, c->t_prepare, c->t_device,
                c->t_select);
    rvs_fft_plan_cache_clear(f->ctx, &c->plans);
    if (c->k_multiply)
        clReleaseKernel(c->k_multiply);
    if (c->k_reduce)
        clReleaseKernel(c->k_reduce);
    rvs_buffer_release(&c->bank);
    rvs_buffer_release(&c->spec);
    rvs_buffer_release(&c->work);
    rvs_buffer_release(&c->out);
    rvs_buffer_release(&c->tscale);
    rvs_buffer_release(&c->wscale);
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        free(c->rj[a]);
        free(c->rfr[a]);
    }
    free(c->stage);
    free(c->stage_scale);
    free(c->res);
    free(c->bank_theta);
    free(c->bank_node);
    free(c->bank_t);
    free(c);
    f->ccf = NULL;
}

/* The device side of the bank: kernels, the bank's transforms, the chunk size. */
static int ccf_device_setup(struct rvs_fitter *f)
{
    int status = RVS_OK;
    struct rvs_fit_ccf *c = f->ccf;
    struct rvs_context *ctx = f->ctx;
    size_t rs = rvs_context_real_size(ctx), row = c->n * 2 * rs;
    size_t rows = pow2_ceil(2 * c->nb);
    void *host = NULL, *scale = NULL;
    size_t plan; /* clFFT plan handle */
    RVS_TRY(rvs_context_kernel(ctx, "ccf", "rvs_ccf_multiply", &c->k_multiply));
    RVS_TRY(rvs_context_kernel(ctx, "ccf", "rvs_ccf_reduce", &c->k_reduce));
    size_t wg = 0;
    RVS_CL_TRY(clGetKernelWorkGroupInfo(c->k_reduce, ctx->caps.device, CL_KERNEL_WORK_GROUP_SIZE,
                                        sizeof wg, &wg, NULL));
    if (wg < CCF_WG) {
        rvs_log(RVS_LOG_ERROR, "fit",
                "CCF: the device runs rvs_ccf_reduce in work-groups of at most %zu items; it "
                "needs %d (choose another device with --device)",
                wg, CCF_WG);
        status = RVS_ERR_UNSUPPORTED;
        goto cleanup;
    }
    /* pairs per chunk: a power of two within the budget, a quarter of the largest buffer and
     * an eighth of the device memory */
    size_t budget = (ctx->caps.type & CL_DEVICE_TYPE_CPU) ? CCF_CHUNK_BYTES_CPU : CCF_CHUNK_BYTES;
    if (budget > ctx->caps.max_alloc_size / 4)
        budget = (size_t)(ctx->caps.max_alloc_size / 4);
    if (budget > ctx->caps.global_mem_size / 8)
        budget = (size_t)(ctx->caps.global_mem_size / 8);
    c->chunk = 1;
    while (c->chunk * 2 * row <= budget)
        c->chunk *= 2;

    /* the bank: rows t' and t'^2 per template, zero rows up to a power of two, transformed in
     * place */
    host = rvs_calloc(rows * c->n * 2, rs);
    scale = rvs_malloc(c->nb * rs);
    if (!host || !scale) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t j = 0; j < c->nb; j++) {
        double tmax = 0;
        for (size_t g = 0; g < c->n; g++)
            tmax = fmax(tmax, fabs(c->bank_t[j * c->n + g]));
        double ts = balance_scale(tmax, 1);
        for (size_t g = 0; g < c->n; g++) {
            double v = c->bank_t[j * c->n + g];
            size_t q = (2 * j * c->n + g) * 2, q2 = q + c->n * 2;
            rvs_real_put(ctx->use_fp64, host, q, v);
            rvs_real_put(ctx->use_fp64, host, q2, v * v / ts);
        }
        rvs_real_put(ctx->use_fp64, scale, j, ts);
    }
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, c->nb * rs, scale,
                              &c->tscale));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, rows * row, host,
                              &c->bank));
    RVS_TRY(get_plan(f, rows, &plan));
    RVS_TRY(rvs_fft_check(rvs_fft_transform(ctx, plan, 1, c->bank), "fit",
                          "clfftEnqueueTransform(bank)", c->n, rows));
    RVS_CL_TRY(clFinish(ctx->queue));
    /* used once: its intermediate buffer need not stay */
    rvs_fft_plan_drop(ctx, &c->plans, plan);
cleanup:
    free(host);
    free(scale);
    return status;
}

int rvs_fit_ccf_create(struct rvs_fitter *f)
{
    /* up to 11500 K: without a hot node, hot metal-poor stars (Balmer lines only) start from a
     * cooler template and their walkers end in the cool, metal-poor, fast-rotating basin */
    static const double teffs[] = {3500, 4500, 5500, 6500, 8000, 10000, 11500};
    static const double loggs[] = {1, 2.5, 4, 5};
    static const double fehs[] = {-2, -1, 0};
    static const double vsinis[] = {0, 300};
    int status = RVS_OK;
    struct rvs_fit_ccf *c = rvs_calloc(1, sizeof *c);
    double *grid = NULL, *scr = NULL, *hostp = NULL, *flux = NULL, *cont = NULL;
    double(*th)[4] = NULL;
    float *fluxf = NULL, *pf = NULL;
    unsigned char *good = NULL;
    cl_mem params = NULL, out = NULL;
    if (!c)
        return RVS_ERR_NOMEM;
    f->ccf = c;
    c->plans.capacity = CCF_MAX_PLANS;
    c->plans.is_double = f->ctx->use_fp64;
    c->plans.module = "fit";
    /* the grid: all arms' data ranges plus room for the largest shift on each side */
    double lmin = HUGE_VAL, lmax = -HUGE_VAL;
    for (size_t k = 0; k < f->narm; k++) {
        int a = f->engine_arm[k];
        lmin = fmin(lmin, log(f->data_wave[a][0]));
        lmax = fmax(lmax, log(f->data_wave[a][f->nwave[a] - 1]));
    }
    double vmax = fmax(fabs(f->cfg.min_vel), fabs(f->cfg.max_vel));
    double lnshift = atanh(fmin(vmax / CCF_C, 0.99));
    c->n = CCF_N;
    c->dln = (lmax - lmin + 2 * lnshift) / (double)(c->n - 64);
    c->smax = (size_t)ceil(lnshift / c->dln) + 2;
    c->ln0 = lmin - lnshift - 16 * c->dln;
    /* the shift indices whose velocity lies in [min_vel, max_vel] (contiguous: tanh rises) */
    c->any_shift = 0;
    for (size_t s = 0; s <= 2 * c->smax; s++) {
        double vel = CCF_C * tanh(((double)s - (double)c->smax) * c->dln);
        if (vel < f->cfg.min_vel || vel > f->cfg.max_vel)
            continue;
        if (!c->any_shift)
            c->s_lo = s;
        c->s_hi = s;
        c->any_shift = 1;
    }
    for (size_t k = 0; k < f->narm; k++) {
        int a = f->engine_arm[k];
        size_t np = f->nwave[a];
        const double *wl = f->data_wave[a];
        c->lo[a] = (size_t)ceil((log(wl[0]) - c->ln0) / c->dln);
        c->hi[a] = (size_t)floor((log(wl[np - 1]) - c->ln0) / c->dln);
        if (c->hi[a] > c->n)
            c->hi[a] = c->n;
        if (c->hi[a] < c->lo[a])
            c->hi[a] = c->lo[a];
        size_t m = c->hi[a] - c->lo[a];
        c->rj[a] = rvs_malloc((m + 1) * sizeof(size_t));
        c->rfr[a] = rvs_malloc((m + 1) * sizeof(double));
        if (!c->rj[a] || !c->rfr[a]) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        size_t j = 0;
        for (size_t g = c->lo[a]; g < c->hi[a]; g++) {
            double lam = exp(c->ln0 + (double)g * c->dln);
            while (j + 2 < np && wl[j + 1] < lam)
                j++;
            c->rj[a][g - c->lo[a]] = j;
            c->rfr[a][g - c->lo[a]] = (lam - wl[j]) / (wl[j + 1] - wl[j]);
        }
    }
    /* bank parameters inside every arm's training hull */
    size_t nth = 0, ng = CCF_MAX_TEFF_NODES * 4 * 3;
    th = rvs_malloc(ng * sizeof *th);
    if (!th) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < CCF_MAX_TEFF_NODES; i++)
        for (size_t j = 0; j < 4; j++)
            for (size_t m = 0; m < 3; m++) {
                double p[4] = {teffs[i], loggs[j], fehs[m], 0};
                int inside = 1;
                for (size_t k = 0; k < f->narm; k++)
                    inside &= rvs_library_outside(f->lib[f->engine_arm[k]], p) == 0;
                if (inside)
                    memcpy(th[nth++], p, sizeof p);
            }
    if (nth == 0) {
        rvs_log(RVS_LOG_ERROR, "fit",
                "CCF: no point of the template bank's grid lies inside every arm's training "
                "range; use --param-init bruteforce");
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    c->nb = nth * 2;
    c->bank_theta = rvs_malloc(c->nb * sizeof *c->bank_theta);
    c->bank_node = rvs_malloc(c->nb * sizeof *c->bank_node);
    c->bank_t = rvs_calloc(c->nb * c->n, sizeof(double));
    grid = rvs_calloc(nth * c->n, sizeof(double)); /* unrotated templates on the grid */
    scr = rvs_malloc((3 * c->n + 16) * sizeof(double));
    cont = rvs_malloc(c->n * sizeof(double));
    good = rvs_malloc(c->n);
    hostp = rvs_malloc(nth * 4 * sizeof(double));
    pf = rvs_malloc(nth * 4 * sizeof(float));
    if (!c->bank_theta || !c->bank_node || !c->bank_t || !grid || !scr || !cont || !good ||
        !hostp || !pf) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    /* the emulator for every bank theta, one device call per arm */
    size_t rs = rvs_context_real_size(f->ctx);
    for (size_t i = 0; i < nth * 4; i++) {
        hostp[i] = th[i / 4][i % 4];
        pf[i] = (float)hostp[i];
    }
    for (size_t k = 0; k < f->narm; k++) {
        int a = f->engine_arm[k];
        size_t npx = rvs_library_npix(f->lib[a]);
        const double *tw = rvs_library_wave(f->lib[a]);
        double tln0 = log(tw[0]), tstep = rvs_library_log_step(f->lib[a]);
        RVS_TRY(rvs_buffer_create(f->ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, nth * 4 * rs,
                                  rs == sizeof(float) ? (void *)pf : (void *)hostp, &params));
        RVS_TRY(rvs_buffer_create(f->ctx, CL_MEM_READ_WRITE, nth * npx * rs, NULL, &out));
        RVS_TRY(rvs_nn_forward(f->ctx, f->nn[a], params, nth, out, RVS_NN_FLUX_REAL));
        free(flux);
        free(fluxf);
        flux = rvs_malloc(nth * npx * sizeof(double));
        fluxf = rs == sizeof(float) ? rvs_malloc(nth * npx * sizeof(float)) : NULL;
        if (!flux || (rs == sizeof(float) && !fluxf)) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        RVS_TRY(rvs_buffer_read(f->ctx, out, 0, nth * npx * rs,
                                rs == sizeof(float) ? (void *)fluxf : (void *)flux));
        if (fluxf)
            for (size_t i = 0; i < nth * npx; i++)
                flux[i] = fluxf[i];
        rvs_buffer_release(&params);
        rvs_buffer_release(&out);
        for (size_t b = 0; b < nth; b++)
            for (size_t g = c->lo[a]; g < c->hi[a]; g++) {
                double x = (c->ln0 + (double)g * c->dln - tln0) / tstep;
                if (x < 0 || x >= (double)(npx - 1))
                    continue;
                size_t i0 = (size_t)x;
                double fr = x - (double)i0;
                grid[b * c->n + g] = (1 - fr) * flux[b * npx + i0] + fr * flux[b * npx + i0 + 1];
            }
    }
    /* rotation (vsini 300) on the grid, continuum normalisation per arm */
    for (size_t b = 0; b < nth; b++)
        for (size_t iv = 0; iv < 2; iv++) {
            size_t bi = b * 2 + iv;
            const double *src = grid + b * c->n;
            double *t = scr; /* n */
            if (vsinis[iv] > 0) {
                double wpix = vsinis[iv] / CCF_C / c->dln;
                int hw = (int)ceil(wpix);
                double ker[512], ks = 0;
                for (int j = -hw; j <= hw && hw < 255; j++) {
                    double u = j / wpix, g = 0;
                    if (fabs(u) < 1)
                        g = 2 * (1 - CCF_EPS) * sqrt(1 - u * u) + M_PI * CCF_EPS / 2 * (1 - u * u);
                    ker[j + hw] = g;
                    ks += g;
                }
                for (size_t g = 0; g < c->n; g++) {
                    double s = 0;
                    for (int j = -hw; j <= hw; j++) {
                        long q = (long)g + j;
                        q = q < 0 ? 0 : (q >= (long)c->n ? (long)c->n - 1 : q);
                        s += ker[j + hw] * src[q];
                    }
                    t[g] = s / ks;
                }
            } else
                memcpy(t, src, c->n * sizeof(double));
            double *o = c->bank_t + bi * c->n;
            for (size_t k = 0; k < f->narm; k++) {
                int a = f->engine_arm[k];
                size_t lo = c->lo[a], hi = c->hi[a];
                for (size_t g = lo; g < hi; g++)
                    good[g - lo] = t[g] > 0;
                block_continuum(t + lo, good, hi - lo, 100, cont, scr + c->n);
                for (size_t g = lo; g < hi; g++) {
                    double cv = cont[g - lo];
                    o[g] = f->cfg.ccf_continuum_normalize ? (cv > 0 ? t[g] / cv - 1 : 0) : t[g];
                }
            }
            memcpy(c->bank_theta[bi], th[b], sizeof th[b]);
            c->bank_theta[bi][4] = vsinis[iv];
            c->bank_node[bi] = 0;
            for (size_t i = 0; i < CCF_MAX_TEFF_NODES; i++)
                if (teffs[i] == th[b][0])
                    c->bank_node[bi] = i;
        }
    RVS_TRY(ccf_device_setup(f));
    rvs_log(RVS_LOG_INFO, "fit", "CCF bank: %zu templates, grid %zu x %.1f km/s, %zu pairs a chunk",
            c->nb, c->n, c->dln * CCF_C, c->chunk);
cleanup:
    rvs_buffer_release(&params);
    rvs_buffer_release(&out);
    free(th);
    free(grid);
    free(scr);
    free(hostp);
    free(pf);
    free(flux);
    free(fluxf);
    free(cont);
    free(good);
    if (status != RVS_OK)
        rvs_fit_ccf_destroy(f);
    return status;
}

/* ------------------------------------------------------------------ per batch */

/* The inputs of list[0..n) into stage rows; share k of nshares does list[k], list[k + nshares],
 * ... and reports in status[k]. */
struct ccf_job {
    struct rvs_fitter *f;
    const struct rvs_prepared *b;
    const size_t *list;
    size_t n;
    int status[CCF_MAX_THREADS];
};

/* One share of ccf_inputs (rvs_parallel_run). */
static void ccf_input_share(void *arg, size_t k, size_t nshares)
{
    struct ccf_job *job = arg;
    struct rvs_fitter *f = job->f;
    struct rvs_fit_ccf *c = f->ccf;
    size_t N = c->n, rs = rvs_context_real_size(f->ctx);
    struct ccf_scratch s;
    double *dw = rvs_malloc(2 * N * sizeof(double)), *w = dw ? dw + N : NULL;
    job->status[k] = RVS_ERR_NOMEM;
    if (!dw || scratch_alloc(f, &s) != RVS_OK) {
        free(dw);
        return;
    }
    for (size_t i = k; i < job->n; i += nshares) {
        ccf_input(f, job->b, job->list[i], dw, w, &s);
        double dmax = 0, wmax = 0;
        for (size_t g = 0; g < N; g++) {
            dmax = fmax(dmax, fabs(dw[g]));
            wmax = fmax(wmax, w[g]);
        }
        double ws = balance_scale(wmax, dmax);
        /* rows 2i, 2i + 1: dw and w / ws as complex numbers */
        if (rs == sizeof(float)) {
            float *row = (float *)c->stage + i * N * 4;
            for (size_t g = 0; g < N; g++) {
                row[2 * g] = (float)dw[g];
                row[2 * g + 1] = 0;
                row[2 * (N + g)] = (float)(w[g] / ws);
                row[2 * (N + g) + 1] = 0;
            }
            ((float *)c->stage_scale)[i] = (float)ws;
        } else {
            double *row = (double *)c->stage + i * N * 4;
            for (size_t g = 0; g < N; g++) {
                row[2 * g] = dw[g];
                row[2 * g + 1] = 0;
                row[2 * (N + g)] = w[g] / ws;
                row[2 * (N + g) + 1] = 0;
            }
            ((double *)c->stage_scale)[i] = ws;
        }
    }
    scratch_free(&s);
    free(dw);
    job->status[k] = RVS_OK;
}

/* The spectra's inputs into c->stage, rows in list order, a thread per core. */
static int ccf_inputs(struct rvs_fitter *f, const struct rvs_prepared *b, const size_t *list,
                      size_t n)
{
    size_t nth = rvs_parallel_threads(n, 1, CCF_MAX_THREADS);
    struct ccf_job job = {f, b, list, n, {0}};
    rvs_parallel_run(nth, ccf_input_share, &job);
    int status = RVS_OK;
    for (size_t k = 0; k < nth && status == RVS_OK; k++)
        status = job.status[k];
    return status;
}

int rvs_fit_ccf_pairs(struct rvs_fitter *f, const struct rvs_prepared *b, const size_t *list,
                      size_t n, double *res)
{
    int status = RVS_OK;
    struct rvs_fit_ccf *c = f->ccf;
    struct rvs_context *ctx = f->ctx;
    if (!c)
        return RVS_ERR_INVALID_ARGUMENT;
    if (n == 0)
        return RVS_OK;
    size_t rs = rvs_context_real_size(ctx), N = c->n, row = N * 2 * rs;
    size_t npairs = n * c->nb;
    if (n > (size_t)INT32_MAX / c->nb || N > (size_t)INT32_MAX / 2) {
        rvs_log(RVS_LOG_ERROR, "fit", "CCF: %zu spectra x %zu templates is too many for a batch",
                n, c->nb);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    double t0 = rvs_fit_now();
    /* host inputs */
    if (c->stage_rows < n) {
        free(c->stage);
        free(c->stage_scale);
        c->stage = rvs_malloc(n * 2 * row);
        c->stage_scale = rvs_malloc(n * rs);
        c->stage_rows = c->stage && c->stage_scale ? n : 0;
        if (!c->stage_rows)
            return RVS_ERR_NOMEM;
    }
    if (c->res_pairs < npairs) {
        free(c->res);
        c->res = rvs_malloc(npairs * 3 * rs);
        c->res_pairs = c->res ? npairs : 0;
        if (!c->res)
            return RVS_ERR_NOMEM;
    }
    RVS_TRY(ccf_inputs(f, b, list, n));
    double t1 = rvs_fit_now();
    c->t_prepare += t1 - t0;

    /* device buffers: spectra rows up to a power of two (one forward plan per size class),
     * results for every pair */
    size_t srows = pow2_ceil(2 * n);
    if (c->spec_rows < srows) {
        RVS_TRY(ensure_buffer(ctx, &c->spec, srows * row));
        RVS_TRY(ensure_buffer(ctx, &c->wscale, srows / 2 * rs));
        c->spec_rows = srows;
    }
    if (c->out_pairs < npairs) {
        RVS_TRY(ensure_buffer(ctx, &c->out, npairs * 3 * rs));
        c->out_pairs = npairs;
    }
    size_t chunk = c->chunk < pow2_ceil(npairs) ? c->chunk : pow2_ceil(npairs);
    if (c->work_rows < chunk) {
        RVS_TRY(ensure_buffer(ctx, &c->work, chunk * row));
        c->work_rows = chunk;
    }
    size_t fwd, inv; /* clFFT plan handles */
    RVS_TRY(get_plan(f, srows, &fwd));
    RVS_TRY(get_plan(f, chunk, &inv));
    RVS_TRY(rvs_buffer_write(ctx, c->spec, 0, n * 2 * row, c->stage));
    RVS_TRY(rvs_buffer_write(ctx, c->wscale, 0, n * rs, c->stage_scale));
    RVS_TRY(rvs_fft_check(rvs_fft_transform(ctx, fwd, 1, c->spec), "fit",
                          "clfftEnqueueTransform(spectra)", c->n, srows));
    cl_int n_i = (cl_int)N, nb_i = (cl_int)c->nb, smax_i = (cl_int)c->smax;
    cl_int slo_i = c->any_shift ? (cl_int)c->s_lo : 1, shi_i = c->any_shift ? (cl_int)c->s_hi : 0;
    cl_int cont_i = f->cfg.ccf_continuum_normalize ? 1 : 0;
    for (size_t pair0 = 0; pair0 < npairs; pair0 += chunk) {
        size_t nrows = npairs - pair0 < chunk ? npairs - pair0 : chunk;
        cl_int p0_i = (cl_int)pair0, nrows_i = (cl_int)nrows;
        cl_kernel k = c->k_multiply;
        RVS_TRY(rvs_kernel_arg(k, 0, sizeof c->spec, &c->spec));
        RVS_TRY(rvs_kernel_arg(k, 1, sizeof c->bank, &c->bank));
        RVS_TRY(rvs_kernel_arg(k, 2, sizeof c->work, &c->work));
        RVS_TRY(rvs_kernel_arg(k, 3, sizeof n_i, &n_i));
        RVS_TRY(rvs_kernel_arg(k, 4, sizeof nb_i, &nb_i));
        RVS_TRY(rvs_kernel_arg(k, 5, sizeof p0_i, &p0_i));
        RVS_TRY(rvs_kernel_arg(k, 6, sizeof nrows_i, &nrows_i));
        RVS_TRY(rvs_kernel_launch_2d(ctx, k, N, nrows, 0, 1));
        /* clFFT's default backward scale 1/n completes the inverse; the rows past nrows hold
         * stale values whose transforms are never read */
        RVS_TRY(rvs_fft_check(rvs_fft_transform(ctx, inv, 0, c->work), "fit",
                          "clfftEnqueueTransform(correlations)", c->n, chunk));
        k = c->k_reduce;
        RVS_TRY(rvs_kernel_arg(k, 0, sizeof c->work, &c->work));
        RVS_TRY(rvs_kernel_arg(k, 1, sizeof c->wscale, &c->wscale));
        RVS_TRY(rvs_kernel_arg(k, 2, sizeof c->tscale, &c->tscale));
        RVS_TRY(rvs_kernel_arg(k, 3, sizeof c->out, &c->out));
        RVS_TRY(rvs_kernel_arg(k, 4, sizeof n_i, &n_i));
        RVS_TRY(rvs_kernel_arg(k, 5, sizeof nb_i, &nb_i));
        RVS_TRY(rvs_kernel_arg(k, 6, sizeof smax_i, &smax_i));
        RVS_TRY(rvs_kernel_arg(k, 7, sizeof slo_i, &slo_i));
        RVS_TRY(rvs_kernel_arg(k, 8, sizeof shi_i, &shi_i));
        RVS_TRY(rvs_kernel_arg(k, 9, sizeof cont_i, &cont_i));
        RVS_TRY(rvs_kernel_arg(k, 10, sizeof p0_i, &p0_i));
        RVS_TRY(rvs_kernel_arg(k, 11, sizeof nrows_i, &nrows_i));
        size_t global = nrows * CCF_WG, local = CCF_WG;
        RVS_TRY(rvs_kernel_launch_nd(ctx, k, 1, &global, &local));
        c->chunks++;
    }
    RVS_TRY(rvs_buffer_read(ctx, c->out, 0, npairs * 3 * rs, c->res));
    for (size_t q = 0; q < npairs * 3; q++)
        res[q] = rvs_real_get(ctx->use_fp64, c->res, q);
    c->t_device += rvs_fit_now() - t1;
    c->calls++;
    c->spectra += n;
cleanup:
    return status;
}

int rvs_fit_ccf_start(struct rvs_fitter *f, const struct rvs_prepared *b, const size_t *list,
                      size_t n, struct rvs_fit_point *start, double *vstart,
                      struct rvs_fit_point *alt, size_t nalt)
{
    int status = RVS_OK;
    double *res = rvs_malloc((n * f->ccf->nb * 3 + 1) * sizeof(double));
    if (!res)
        return RVS_ERR_NOMEM;
    RVS_TRY(rvs_fit_ccf_pairs(f, b, list, n, res));
    double t0 = rvs_fit_now();
    rvs_fit_ccf_select(f, list, n, res, start, vstart, alt, nalt);
    f->ccf->t_select += rvs_fit_now() - t0;
cleanup:
    free(res);
    return status;
}

void rvs_fit_ccf_select(const struct rvs_fitter *f, const size_t *list, size_t n,
                        const double *res, struct rvs_fit_point *start, double *vstart,
                        struct rvs_fit_point *alt, size_t nalt)
{
    const struct rvs_fit_ccf *c = f->ccf;
    for (size_t i = 0; i < n; i++) {
        size_t t = list[i];
        const double *r = res + i * c->nb * 3;
        double best = HUGE_VAL, bestv = 0;
        size_t bb = 0;
        /* the best template of each bank temperature, for the alternative starts */
        double node_chi[CCF_MAX_TEFF_NODES], node_v[CCF_MAX_TEFF_NODES];
        size_t node_b[CCF_MAX_TEFF_NODES];
        for (size_t q = 0; q < CCF_MAX_TEFF_NODES; q++) {
            node_chi[q] = HUGE_VAL;
            node_b[q] = SIZE_MAX;
        }
        /* templates in bank order, strict improvements only: the first best wins ties */
        for (size_t bi = 0; bi < c->nb; bi++) {
            double chi = r[3 * bi], s = r[3 * bi + 1], sh = r[3 * bi + 2];
            if (s < 0)
                continue;
            size_t node = c->bank_node[bi];
            if (chi < node_chi[node]) {
                node_chi[node] = chi;
                node_b[node] = bi;
                node_v[node] = CCF_C * tanh((s - (double)c->smax) * c->dln);
            }
            if (chi < best) {
                best = chi;
                bb = bi;
                bestv = CCF_C * tanh(sh * c->dln);
            }
        }
        struct rvs_fit_point *p = &start[t];
        p->s = (int)t;
        for (int k = 0; k < 4; k++)
            p->th[k] = c->bank_theta[bb][k];
        p->vsini = c->bank_theta[bb][4];
        p->v = bestv;
        vstart[t] = bestv;
        /* alternatives: the best templates of the other temperatures, best first (a wrong
         * temperature class is the optimizer's main trap: e.g. Balmer lines of equal strength
         * on either side of their 9000-10000 K maximum) */
        node_chi[c->bank_node[bb]] = HUGE_VAL;
        for (size_t j = 0; j < nalt; j++) {
            size_t q = SIZE_MAX;
            for (size_t m = 0; m < CCF_MAX_TEFF_NODES; m++)
                if (node_b[m] != SIZE_MAX && node_chi[m] < HUGE_VAL &&
                    (q == SIZE_MAX || node_chi[m] < node_chi[q]))
                    q = m;
            struct rvs_fit_point *ap = &alt[t * nalt + j];
            if (q == SIZE_MAX) {
                ap->s = -1;
                continue;
            }
            ap->s = (int)t;
            for (int k = 0; k < 4; k++)
                ap->th[k] = c->bank_theta[node_b[q]][k];
            ap->vsini = c->bank_theta[node_b[q]][4];
            ap->v = node_v[q];
            node_chi[q] = HUGE_VAL;
        }
    }
}
