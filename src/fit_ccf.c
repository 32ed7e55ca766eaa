/* fit_ccf.c: the CCF start of the fitter, after rvspecfit's fitter_ccf.fit and make_ccf:
 * continuum-normalised, apodised data and templates on one log-wavelength grid spanning all the
 * arms; a template bank = the emulator on a parameter grid x vsini {0, 300}; for every spectrum
 * and bank template chi^2(shift) = sum w (d - t_shift)^2 = const - 2 (d w) * t + w * t^2 by
 * FFT cross-correlations (fitter_ccf's `continuum` branch; without continuum normalisation the
 * amplitude-marginalised -(d w * t)^2 / (w * t^2)); the best template and shift per spectrum.
 *
 * The bank is evaluated on the device once per fitter (one rvs_nn_forward per arm for all bank
 * parameters) and Fourier-transformed once; the per-spectrum correlations run on the host (one
 * complex FFT per template and spectrum carries both correlations). The CCF only chooses the
 * start: vel_fit.process then rescans the velocity at vel_step0 with the chosen template, so a
 * velocity resolution of ~35 km/s per grid pixel is enough here. */
#include <config.h>

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "fit_internal.h"

#define CCF_C 299792.458
#define CCF_N 8192
#define CCF_EPS 0.6 /* limb darkening of rvspecfit's rotation kernel */
#define CCF_MAX_TEFF_NODES 7
#define CCF_MAX_THREADS 64

struct rvs_fit_ccf {
    size_t n;        /* FFT length */
    double ln0, dln; /* grid: ln(lambda_k) = ln0 + k dln */
    size_t lo[RVS_DESI_NARMS], hi[RVS_DESI_NARMS]; /* grid range of each arm [lo, hi) */
    size_t nb;
    double (*bank_theta)[5]; /* theta, vsini */
    size_t *bank_node;       /* index of the template's temperature in teffs[] */
    double *ft;              /* nb x n x 2 (re, im): FFT of t' */
    double *ft2;             /* FFT of t'^2 */
    double *tw;              /* twiddles */
    size_t smax;             /* shifts -smax..smax */
};

/* iterative radix-2 complex FFT in place, x[2k], x[2k+1] = re, im; sign -1 forward */
static void fft(double *x, size_t n, const double *tw, int inverse)
{
    for (size_t i = 1, j = 0; i < n; i++) {
        size_t bit = n >> 1;
        for (; j & bit; bit >>= 1)
            j ^= bit;
        j ^= bit;
        if (i < j) {
            double a = x[2 * i], b = x[2 * i + 1];
            x[2 * i] = x[2 * j];
            x[2 * i + 1] = x[2 * j + 1];
            x[2 * j] = a;
            x[2 * j + 1] = b;
        }
    }
    for (size_t len = 2; len <= n; len <<= 1) {
        size_t half = len / 2, st = n / len;
        for (size_t i = 0; i < n; i += len)
            for (size_t k = 0; k < half; k++) {
                double wr = tw[2 * k * st], wi = inverse ? -tw[2 * k * st + 1] : tw[2 * k * st + 1];
                double *u = x + 2 * (i + k), *v = x + 2 * (i + k + half);
                double vr = v[0] * wr - v[1] * wi, vi = v[0] * wi + v[1] * wr;
                v[0] = u[0] - vr;
                v[1] = u[1] - vi;
                u[0] += vr;
                u[1] += vi;
            }
    }
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* A smooth continuum: medians of the good values in blocks of `block` samples, linearly
 * interpolated between the blocks' mean positions (constant beyond the first and last). */
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
        qsort(scratch, k, sizeof(double), cmp_d);
        pos[m] = ps / (double)k;
        val[m] = k % 2 ? scratch[k / 2] : 0.5 * (scratch[k / 2 - 1] + scratch[k / 2]);
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

/* cosine taper of the real parts of complex array `w` over `edge` samples at both ends of
 * [lo, hi) */
static void apodize2(double *w, size_t lo, size_t hi, size_t edge)
{
    for (size_t k = 0; k < edge && lo + k < hi; k++) {
        double f = 0.5 * (1 - cos(M_PI * ((double)k + 0.5) / (double)edge));
        w[2 * (lo + k)] *= f;
        w[2 * (hi - 1 - k)] *= f;
    }
}

void rvs_fit_ccf_destroy(struct rvs_fitter *f)
{
    if (!f || !f->ccf)
        return;
    free(f->ccf->bank_theta);
    free(f->ccf->bank_node);
    free(f->ccf->ft);
    free(f->ccf->ft2);
    free(f->ccf->tw);
    free(f->ccf);
    f->ccf = NULL;
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
    double *grid = NULL, *tmp = NULL, *scr = NULL, *hostp = NULL, *flux = NULL, *cont = NULL;
    float *fluxf = NULL;
    unsigned char *good = NULL;
    cl_mem params = NULL, out = NULL;
    if (!c)
        return RVS_ERR_NOMEM;
    f->ccf = c;
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
    c->tw = rvs_malloc(c->n * sizeof(double));
    if (!c->tw) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t k = 0; k < c->n / 2; k++) {
        c->tw[2 * k] = cos(-2 * M_PI * (double)k / (double)c->n);
        c->tw[2 * k + 1] = sin(-2 * M_PI * (double)k / (double)c->n);
    }
    for (size_t k = 0; k < f->narm; k++) {
        int a = f->engine_arm[k];
        c->lo[a] = (size_t)ceil((log(f->data_wave[a][0]) - c->ln0) / c->dln);
        c->hi[a] = (size_t)floor((log(f->data_wave[a][f->nwave[a] - 1]) - c->ln0) / c->dln);
        if (c->hi[a] > c->n)
            c->hi[a] = c->n;
    }
    /* bank parameters inside every arm's training hull */
    size_t nth = 0, ng = CCF_MAX_TEFF_NODES * 4 * 3;
    double (*th)[4] = rvs_malloc(ng * sizeof *th);
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
    c->nb = nth * 2;
    c->bank_theta = rvs_malloc(c->nb * sizeof *c->bank_theta);
    c->bank_node = rvs_malloc(c->nb * sizeof *c->bank_node);
    c->ft = rvs_calloc(c->nb * c->n * 2, sizeof(double));
    c->ft2 = rvs_calloc(c->nb * c->n * 2, sizeof(double));
    grid = rvs_calloc(nth * c->n, sizeof(double)); /* unrotated templates on the grid */
    tmp = rvs_malloc(c->n * 2 * sizeof(double));
    scr = rvs_malloc((3 * c->n + 16) * sizeof(double));
    cont = rvs_malloc(c->n * sizeof(double));
    good = rvs_malloc(c->n);
    if (!c->bank_theta || !c->bank_node || !c->ft || !c->ft2 || !grid || !tmp || !scr || !cont || !good) {
        free(th);
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    /* the emulator for every bank theta, one device call per arm */
    size_t rs = rvs_context_real_size(f->ctx);
    hostp = rvs_malloc(nth * 4 * sizeof(double));
    if (!hostp) {
        free(th);
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t k = 0; k < f->narm; k++) {
        int a = f->engine_arm[k];
        size_t npx = rvs_library_npix(f->lib[a]);
        const double *tw = rvs_library_wave(f->lib[a]);
        double tln0 = log(tw[0]), tstep = rvs_library_log_step(f->lib[a]);
        void *pin = hostp;
        float pf[4 * 256];
        if (rs == sizeof(float)) {
            for (size_t i = 0; i < nth * 4 && i < 4 * 256; i++)
                pf[i] = (float)th[i / 4][i % 4];
            pin = pf;
        } else
            for (size_t i = 0; i < nth * 4; i++)
                hostp[i] = th[i / 4][i % 4];
        RVS_TRY(rvs_buffer_create(f->ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, nth * 4 * rs,
                                  pin, &params));
        RVS_TRY(rvs_buffer_create(f->ctx, CL_MEM_READ_WRITE, nth * npx * rs, NULL, &out));
        RVS_TRY(rvs_nn_forward(f->ctx, f->nn[a], params, nth, out, RVS_NN_FLUX_REAL));
        free(flux);
        free(fluxf);
        flux = rvs_malloc(nth * npx * sizeof(double));
        fluxf = rs == sizeof(float) ? rvs_malloc(nth * npx * sizeof(float)) : NULL;
        if (!flux || (rs == sizeof(float) && !fluxf)) {
            free(th);
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
    free(th);
    th = NULL;
    /* rotation (vsini 300) on the grid, continuum normalisation per arm, FFTs */
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
            double *o1 = c->ft + bi * c->n * 2, *o2 = c->ft2 + bi * c->n * 2;
            for (size_t k = 0; k < f->narm; k++) {
                int a = f->engine_arm[k];
                size_t lo = c->lo[a], hi = c->hi[a];
                for (size_t g = lo; g < hi; g++)
                    good[g - lo] = t[g] > 0;
                block_continuum(t + lo, good, hi - lo, 100, cont, scr + c->n);
                for (size_t g = lo; g < hi; g++) {
                    double cv = cont[g - lo];
                    double v = f->cfg.ccf_continuum_normalize ? (cv > 0 ? t[g] / cv - 1 : 0)
                                                              : t[g];
                    o1[2 * g] = v;
                    o2[2 * g] = v * v;
                }
            }
            fft(o1, c->n, c->tw, 0);
            fft(o2, c->n, c->tw, 0);
        }
    {
        /* bank parameters (re-derived in the same order as above) */
        size_t bi = 0;
        for (size_t i = 0; i < CCF_MAX_TEFF_NODES; i++)
            for (size_t j = 0; j < 4; j++)
                for (size_t m = 0; m < 3; m++) {
                    double p[4] = {teffs[i], loggs[j], fehs[m], 0};
                    int inside = 1;
                    for (size_t k = 0; k < f->narm; k++)
                        inside &= rvs_library_outside(f->lib[f->engine_arm[k]], p) == 0;
                    if (!inside)
                        continue;
                    for (size_t iv = 0; iv < 2; iv++) {
                        memcpy(c->bank_theta[bi], p, sizeof p);
                        c->bank_theta[bi][4] = vsinis[iv];
                        c->bank_node[bi] = i;
                        bi++;
                    }
                }
    }
    rvs_log(RVS_LOG_INFO, "fit", "CCF bank: %zu templates, grid %zu x %.1f km/s", c->nb, c->n,
            c->dln * CCF_C);
cleanup:
    rvs_buffer_release(&params);
    rvs_buffer_release(&out);
    free(grid);
    free(tmp);
    free(scr);
    free(hostp);
    free(flux);
    free(fluxf);
    free(cont);
    free(good);
    if (status != RVS_OK)
        rvs_fit_ccf_destroy(f);
    return status;
}

/* One worker's share of the spectra: list[first], list[first + stride], ... */
struct ccf_job {
    struct rvs_fitter *f;
    const struct rvs_prepared *b;
    const size_t *list;
    size_t n, first, stride;
    struct rvs_fit_point *start, *alt;
    double *vstart;
    size_t nalt;
    int status;
};

static int ccf_range(struct ccf_job *job)
{
    struct rvs_fitter *f = job->f;
    const struct rvs_prepared *b = job->b;
    const size_t *list = job->list;
    size_t n = job->n, nalt = job->nalt;
    struct rvs_fit_point *start = job->start, *alt = job->alt;
    double *vstart = job->vstart;
    int status = RVS_OK;
    struct rvs_fit_ccf *c = f->ccf;
    size_t N = c->n;
    double *dw = rvs_malloc(N * 2 * sizeof(double)), *w = rvs_malloc(N * 2 * sizeof(double));
    double *x = rvs_malloc(N * 2 * sizeof(double));
    size_t maxn = 0;
    for (size_t k = 0; k < f->narm; k++)
        maxn = f->nwave[f->engine_arm[k]] > maxn ? f->nwave[f->engine_arm[k]] : maxn;
    double *cont = rvs_malloc((maxn + 1) * sizeof(double));
    double *scr = rvs_malloc((3 * maxn + 16) * sizeof(double));
    unsigned char *good = rvs_malloc(maxn + 1);
    double *chi = rvs_malloc((2 * c->smax + 1) * sizeof(double));
    if (!dw || !w || !x || !cont || !scr || !good || !chi) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = job->first; i < n; i += job->stride) {
        size_t t = list[i];
        memset(dw, 0, N * 2 * sizeof(double));
        memset(w, 0, N * 2 * sizeof(double));
        for (size_t k = 0; k < f->narm; k++) {
            int a = f->engine_arm[k];
            if (!f->used[k][t])
                continue;
            size_t np = f->nwave[a];
            const double *sp = b->spec[a] + t * np, *es = b->espec[a] + t * np;
            const unsigned char *bd = b->bad[a] + t * np;
            const double *wl = f->data_wave[a];
            for (size_t j = 0; j < np; j++)
                good[j] = !bd[j];
            block_continuum(sp, good, np, 150, cont, scr);
            /* resample onto the grid: linear in flux, weights zero next to bad pixels */
            size_t j = 0;
            for (size_t g = c->lo[a]; g < c->hi[a]; g++) {
                double lam = exp(c->ln0 + (double)g * c->dln);
                while (j + 2 < np && wl[j + 1] < lam)
                    j++;
                double fr = (lam - wl[j]) / (wl[j + 1] - wl[j]);
                if (fr < 0 || fr > 1 || bd[j] || bd[j + 1])
                    continue;
                double cv = (1 - fr) * cont[j] + fr * cont[j + 1];
                double s = (1 - fr) * sp[j] + fr * sp[j + 1];
                double e = (1 - fr) * es[j] + fr * es[j + 1];
                if (!(cv > 0) || !(e > 0) || !isfinite(s))
                    continue;
                double d, ww;
                if (f->cfg.ccf_continuum_normalize) {
                    d = s / cv - 1;
                    ww = (cv / e) * (cv / e);
                } else {
                    d = s;
                    ww = 1 / (e * e);
                }
                dw[2 * g] = d * ww;
                w[2 * g] = ww;
            }
            /* apodisation: taper data and weights over 20 grid pixels at each arm edge */
            apodize2(dw, c->lo[a], c->hi[a], 20);
            apodize2(w, c->lo[a], c->hi[a], 20);
        }
        fft(dw, N, c->tw, 0);
        fft(w, N, c->tw, 0);
        double best = HUGE_VAL, bestv = 0;
        size_t bb = 0;
        /* the best template of each bank temperature, for the alternative starts */
        double node_chi[CCF_MAX_TEFF_NODES], node_v[CCF_MAX_TEFF_NODES];
        size_t node_b[CCF_MAX_TEFF_NODES];
        for (size_t q = 0; q < CCF_MAX_TEFF_NODES; q++) {
            node_chi[q] = HUGE_VAL;
            node_b[q] = SIZE_MAX;
        }
        for (size_t bi = 0; bi < c->nb; bi++) {
            size_t node = c->bank_node[bi];
            const double *T = c->ft + bi * N * 2, *T2 = c->ft2 + bi * N * 2;
            for (size_t q = 0; q < N; q++) {
                /* A conj(B) + i W conj(T2): S0 in the real part, S1 in the imaginary part */
                double ar = dw[2 * q], ai = dw[2 * q + 1], br = T[2 * q], bim = T[2 * q + 1];
                double p0r = ar * br + ai * bim, p0i = ai * br - ar * bim;
                double wr = w[2 * q], wi = w[2 * q + 1], cr = T2[2 * q], ci = T2[2 * q + 1];
                double p1r = wr * cr + wi * ci, p1i = wi * cr - wr * ci;
                x[2 * q] = p0r - p1i;
                x[2 * q + 1] = p0i + p1r;
            }
            fft(x, N, c->tw, 1);
            for (long s = -(long)c->smax; s <= (long)c->smax; s++) {
                size_t q = (size_t)(s < 0 ? (long)N + s : s);
                double s0 = x[2 * q] / (double)N, s1 = x[2 * q + 1] / (double)N;
                double v;
                if (f->cfg.ccf_continuum_normalize)
                    v = -2 * s0 + s1;
                else
                    v = s1 > 0 ? -s0 * s0 / s1 : HUGE_VAL;
                chi[s + (long)c->smax] = v;
            }
            for (size_t s = 0; s <= 2 * c->smax; s++) {
                double vel = CCF_C * tanh(((double)s - (double)c->smax) * c->dln);
                if (vel < f->cfg.min_vel || vel > f->cfg.max_vel)
                    continue;
                if (chi[s] < node_chi[node]) {
                    node_chi[node] = chi[s];
                    node_b[node] = bi;
                    node_v[node] = vel;
                }
                if (chi[s] < best) {
                    best = chi[s];
                    bb = bi;
                    double sh = (double)s - (double)c->smax;
                    if (s > 0 && s < 2 * c->smax) {
                        double y0 = chi[s - 1], y1 = chi[s], y2 = chi[s + 1];
                        double den = y0 - 2 * y1 + y2;
                        if (den > 0)
                            sh += 0.5 * (y0 - y2) / den;
                    }
                    bestv = CCF_C * tanh(sh * c->dln);
                }
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
cleanup:
    free(dw);
    free(w);
    free(x);
    free(cont);
    free(scr);
    free(good);
    free(chi);
    (void)b;
    return status;
}

static void *ccf_thread(void *arg)
{
    struct ccf_job *job = arg;
    job->status = ccf_range(job);
    return NULL;
}

/* The correlations are host work (about 20 ms per spectrum: one inverse FFT per bank
 * template), spread over the host's cores: a thread per core, spectra dealt round-robin. */
int rvs_fit_ccf_start(struct rvs_fitter *f, const struct rvs_prepared *b, const size_t *list,
                      size_t n, struct rvs_fit_point *start, double *vstart,
                      struct rvs_fit_point *alt, size_t nalt)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    size_t nth = ncpu > 1 ? (size_t)ncpu : 1;
    if (nth > CCF_MAX_THREADS)
        nth = CCF_MAX_THREADS;
    if (nth > n)
        nth = n ? n : 1;
    struct ccf_job jobs[CCF_MAX_THREADS];
    pthread_t tid[CCF_MAX_THREADS];
    int started[CCF_MAX_THREADS] = {0};
    for (size_t k = 0; k < nth; k++)
        jobs[k] = (struct ccf_job){f, b, list, n, k, nth, start, alt, vstart, nalt, RVS_OK};
    /* worker 0 runs here; the others on threads (on failure to start one, its share runs
     * here too) */
    for (size_t k = 1; k < nth; k++)
        started[k] = pthread_create(&tid[k], NULL, ccf_thread, &jobs[k]) == 0;
    jobs[0].status = ccf_range(&jobs[0]);
    int status = jobs[0].status;
    for (size_t k = 1; k < nth; k++) {
        if (started[k])
            pthread_join(tid[k], NULL);
        else
            jobs[k].status = ccf_range(&jobs[k]);
        if (status == RVS_OK)
            status = jobs[k].status;
    }
    return status;
}
