/* prepare.c: per-arm data preparation, a port of rvspecfit's desi_fit.py get_specdata,
 * interpolate_bad_regions, construct_resolution_sparse_matrix, deconvolve_resolution_matrix and
 * resolution_mat_torows/tocolumns (DESIGN.md §5).
 *
 * Constants from get_specdata: bad pixels get ivar = 1 / (median flux * 1000)^2; σ is floored at
 * 0.3 x the median good σ; the dichroic is 4300 < λ < 4450 Å; with the resolution matrix 5 edge
 * pixels each side are masked. Arithmetic is in double (rvspecfit keeps float32 arrays, so values
 * agree to float32 precision). One deliberate difference: an arm whose every pixel ends up bad is
 * skipped (rvspecfit fits it with a warning), so a spectrum with no information anywhere is
 * flagged BAD_SPECTRUM instead of fitted. */
#include <config.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "desi/desi_internal.h"
#include "rvsfit/prepare.h"

#define LARGE_ERROR 1000.0
#define MINERR_FRAC 0.3
#define EDGE_PIXELS 5
#define DICHROIC_LO 4300.0
#define DICHROIC_HI 4450.0

void rvs_prepare_options_init(struct rvs_prepare_options *options)
{
    memset(options, 0, sizeof *options);
    options->mask_dichroic = 1;
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        options->lsf_sigma0[a] = 0.5;
}

void rvs_prepare_interpolate_bad(const double *in, const unsigned char *bad, size_t n,
                                 double *out)
{
    size_t nbad = 0;
    if (out != in)
        memcpy(out, in, n * sizeof *out);
    for (size_t i = 0; i < n; i++)
        nbad += bad[i] != 0;
    if (nbad == 0 || nbad == n)
        return;
    for (size_t lh = 0; lh < n;) {
        if (!bad[lh]) {
            lh++;
            continue;
        }
        size_t rh = lh; /* inclusive end of the run */
        while (rh + 1 < n && bad[rh + 1])
            rh++;
        if (lh == 0) {
            for (size_t i = 0; i <= rh; i++)
                out[i] = in[rh + 1];
        } else if (rh == n - 1) {
            for (size_t i = lh; i < n; i++)
                out[i] = in[lh - 1];
        } else {
            /* np.interp between the two good neighbours lh-1 and rh+1. */
            double a = in[lh - 1], b = in[rh + 1];
            double span = (double)(rh + 1 - (lh - 1));
            for (size_t i = lh; i <= rh; i++)
                out[i] = a + (b - a) * ((double)(i - (lh - 1)) / span);
        }
        lh = rh + 1;
    }
}

/* LU factorisation with partial pivoting of the w x w matrix a (row-major), in place. */
static int lu_factor(double *a, size_t w, size_t *piv)
{
    for (size_t k = 0; k < w; k++) {
        size_t p = k;
        for (size_t i = k + 1; i < w; i++)
            if (fabs(a[i * w + k]) > fabs(a[p * w + k]))
                p = i;
        piv[k] = p;
        if (a[p * w + k] == 0.0)
            return RVS_ERR_INVALID_ARGUMENT;
        if (p != k)
            for (size_t j = 0; j < w; j++) {
                double t = a[k * w + j];
                a[k * w + j] = a[p * w + j];
                a[p * w + j] = t;
            }
        for (size_t i = k + 1; i < w; i++) {
            a[i * w + k] /= a[k * w + k];
            for (size_t j = k + 1; j < w; j++)
                a[i * w + j] -= a[i * w + k] * a[k * w + j];
        }
    }
    return RVS_OK;
}

static void lu_solve(const double *a, size_t w, const size_t *piv, double *b)
{
    for (size_t k = 0; k < w; k++) {
        double t = b[k];
        b[k] = b[piv[k]];
        b[piv[k]] = t;
    }
    for (size_t i = 1; i < w; i++)
        for (size_t j = 0; j < i; j++)
            b[i] -= a[i * w + j] * b[j];
    for (size_t i = w; i-- > 0;) {
        for (size_t j = i + 1; j < w; j++)
            b[i] -= a[i * w + j] * b[j];
        b[i] /= a[i * w + i];
    }
}

int rvs_prepare_resolution(const float *res, size_t ndiag, size_t n, double pix_angstrom,
                           double sigma0_angstrom, double *out)
{
    return rvs_prepare_resolution_lsf(res, ndiag, n, pix_angstrom, NULL, sigma0_angstrom, out,
                                      NULL);
}

/* The ndiag x ndiag Gaussian of the templates' LSF (σ in pixels) over the row offsets, LU
 * factorised. */
static int gaussian_lu(double sig, size_t w, double *gau, size_t *piv)
{
    for (size_t a = 0; a < w; a++)
        for (size_t b = 0; b < w; b++) {
            double x = ((double)b - (double)a) / sig;
            gau[a * w + b] = 1.0 / sqrt(2.0 * M_PI) / sig * exp(-0.5 * x * x);
        }
    return lu_factor(gau, w, piv);
}

int rvs_prepare_resolution_lsf(const float *res, size_t ndiag, size_t n, double pix_angstrom,
                               const double *sigma0_pixel, double sigma0_angstrom, double *out,
                               size_t *narrow_rows)
{
    int status = RVS_OK;
    size_t narrow = 0;
    if (narrow_rows)
        *narrow_rows = 0;
    if (sigma0_pixel && n > 0) {
        /* the first row's σ0 starts the solve; a non-positive one anywhere fails the check below */
        sigma0_angstrom = sigma0_pixel[0];
        for (size_t i = 0; i < n; i++)
            if (!(sigma0_pixel[i] > 0 && isfinite(sigma0_pixel[i]))) {
                sigma0_angstrom = sigma0_pixel[i];
                break;
            }
    }
    size_t w = ndiag, h = ndiag / 2;
    double *rows = NULL, *gau = NULL, *sums = NULL;
    size_t *piv = NULL;
    double col[64];
    if (w == 0 || w % 2 == 0 || w > 63 || n < 2 * h + 1 || !(pix_angstrom > 0) ||
        !(sigma0_angstrom > 0)) {
        rvs_log(RVS_LOG_ERROR, "prepare",
                "resolution matrix: %zu diagonals over %zu pixels, pixel %g Å, σ0 %g Å: cannot "
                "deconvolve (need an odd count of at most 63 diagonals, more pixels than "
                "diagonals, positive sizes)",
                ndiag, n, pix_angstrom, sigma0_angstrom);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    rows = rvs_malloc(w * n * sizeof *rows);
    gau = rvs_malloc(w * w * sizeof *gau);
    piv = rvs_malloc(w * sizeof *piv);
    sums = rvs_malloc(n * sizeof *sums);
    if (!rows || !gau || !piv || !sums) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    /* Row form (resolution_mat_torows): rows[r][i] is the matrix element of row i, column
     * i + r - h, which DIA stores at data[2h - r][i + r - h]; out-of-range columns wrap around
     * (np.roll) and hold padding. */
    for (size_t r = 0; r < w; r++)
        for (size_t i = 0; i < n; i++) {
            size_t j = (i + r + n - h) % n;
            rows[r * n + i] = (double)res[(2 * h - r) * n + j];
        }
    /* Edge columns before the solve, exactly as rvspecfit: at the start it zeroes r < h - i - 1,
     * keeping one wrapped padding entry (r = h - i - 1); at the end every r >= h + 1 + i. */
    for (size_t i = 0; i < h; i++) {
        for (size_t r = 0; r + 1 < h - i; r++)
            rows[r * n + i] = 0.0;
        size_t j = n - 1 - i;
        for (size_t r = h + 1 + i; r < w; r++)
            rows[r * n + j] = 0.0;
    }
    /* The templates' Gaussian LSF in pixels, as a w x w matrix over the row offsets; with a
     * varying LSF refactorised only where σ0 changes. */
    double sig = sigma0_angstrom / pix_angstrom;
    if (gaussian_lu(sig, w, gau, piv) != RVS_OK) {
        rvs_log(RVS_LOG_ERROR, "prepare", "resolution matrix: singular Gaussian system (σ0 %g Å)",
                sigma0_angstrom);
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++) {
        if (sigma0_pixel && sigma0_pixel[i] / pix_angstrom != sig) {
            sig = sigma0_pixel[i] / pix_angstrom;
            if (gaussian_lu(sig, w, gau, piv) != RVS_OK) {
                rvs_log(RVS_LOG_ERROR, "prepare",
                        "resolution matrix: singular Gaussian system (σ0 %g Å)", sigma0_pixel[i]);
                status = RVS_ERR_INVALID_ARGUMENT;
                goto cleanup;
            }
        }
        for (size_t r = 0; r < w; r++)
            col[r] = rows[r * n + i];
        if (i >= h && i + h < n) {
            /* the row's own width: second moment about its centroid, in pixels */
            double m0 = 0, m1 = 0, m2 = 0;
            for (size_t r = 0; r < w; r++) {
                double off = (double)r - (double)h;
                m0 += col[r];
                m1 += col[r] * off;
                m2 += col[r] * off * off;
            }
            double var = m0 > 0 ? m2 / m0 - (m1 / m0) * (m1 / m0) : 0.0;
            narrow += !(var > sig * sig);
        }
        lu_solve(gau, w, piv, col);
        double s = 0.0;
        for (size_t r = 0; r < w; r++) {
            rows[r * n + i] = col[r];
            s += col[r];
        }
        sums[i] = s;
    }
    /* Edge renormalisation: the median row sum is the target of the h rows at each end, each
     * normalised by its in-range entries. */
    double mult = rvs_desi_median(sums, n);
    if (mult == 0.0)
        mult = 1.0;
    for (size_t i = 0; i < h; i++) {
        double n1 = 0.0;
        for (size_t r = h - i; r < w; r++)
            n1 += rows[r * n + i];
        double f1 = mult / (n1 + (n1 == 0.0));
        for (size_t r = 0; r < w; r++)
            rows[r * n + i] *= f1;
        size_t j = n - 1 - i;
        double n2 = 0.0;
        for (size_t r = 0; r < h + 1 + i; r++)
            n2 += rows[r * n + j];
        double f2 = mult / (n2 + (n2 == 0.0));
        for (size_t r = 0; r < w; r++)
            rows[r * n + j] *= f2;
    }
    /* Back to DIA (resolution_mat_tocolumns): data[k][j] = rows[2h - k][j + k - h]. */
    for (size_t k = 0; k < w; k++)
        for (size_t j = 0; j < n; j++)
            out[k * n + j] = rows[(2 * h - k) * n + (j + k + n - h) % n];
    if (narrow_rows)
        *narrow_rows = narrow;
cleanup:
    free(rows);
    free(gau);
    free(piv);
    free(sums);
    return status;
}

static int prepare_arm(const double *wave, size_t n, const float *flux, const float *ivar,
                       const uint32_t *mask, const float *res, size_t ndiag, double sigma0,
                       const double *sigma0_pixel, const struct rvs_prepare_options *options,
                       double *spec, double *espec, unsigned char *bad, double *res_out,
                       int *used, int *clamped, size_t *narrow_rows, int *bad_res);

int rvs_prepare_arm(const double *wave, size_t n, const float *flux, const float *ivar,
                    const uint32_t *mask, const float *res, size_t ndiag, double sigma0,
                    const struct rvs_prepare_options *options, double *spec, double *espec,
                    unsigned char *bad, double *res_out, int *used, int *clamped)
{
    int bad_res = 0;
    return prepare_arm(wave, n, flux, ivar, mask, res, ndiag, sigma0, NULL, options, spec, espec,
                       bad, res_out, used, clamped, NULL, &bad_res);
}

static int prepare_arm(const double *wave, size_t n, const float *flux, const float *ivar,
                       const uint32_t *mask, const float *res, size_t ndiag, double sigma0,
                       const double *sigma0_pixel, const struct rvs_prepare_options *options,
                       double *spec, double *espec, unsigned char *bad, double *res_out,
                       int *used, int *clamped, size_t *narrow_rows, int *bad_res)
{
    int status = RVS_OK;
    double *scratch = NULL;
    unsigned char *interp = NULL;
    *used = 0;
    *clamped = 0;
    *bad_res = 0;
    scratch = rvs_malloc(n * sizeof *scratch);
    interp = rvs_malloc(n);
    if (!scratch || !interp) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    /* All masked: skip. (rvspecfit tests mask > 0; a mask is a bit set, any bit is bad.) */
    size_t nmasked = 0;
    for (size_t p = 0; p < n; p++)
        nmasked += mask[p] != 0;
    if (nmasked == n)
        goto cleanup;
    /* Median flux (NaN ignored); if 0, of positive unmasked pixels; if that is not finite, of
     * |flux|. Non-finite or 0: the arm is unusable. */
    size_t m = 0;
    for (size_t p = 0; p < n; p++)
        if (!isnan(flux[p]))
            scratch[m++] = flux[p];
    double med = rvs_desi_median(scratch, m);
    if (med == 0.0) {
        m = 0;
        for (size_t p = 0; p < n; p++)
            if (flux[p] > 0 && mask[p] == 0)
                scratch[m++] = flux[p];
        med = rvs_desi_median(scratch, m);
        if (!isfinite(med)) {
            m = 0;
            for (size_t p = 0; p < n; p++)
                if (!isnan(flux[p]))
                    scratch[m++] = fabs((double)flux[p]);
            med = rvs_desi_median(scratch, m);
        }
    }
    if (!isfinite(med) || med == 0.0)
        goto cleanup;

    if (options->use_resolution) {
        for (size_t k = 0; k < ndiag * n; k++)
            if (!isfinite(res[k])) {
                rvs_log(RVS_LOG_DEBUG, "prepare", "non-finite resolution matrix: arm skipped");
                *bad_res = 1;
                goto cleanup;
            }
        if (n < 2 * EDGE_PIXELS + 1 || n < ndiag)
            goto cleanup;
        RVS_TRY(rvs_prepare_resolution_lsf(res, ndiag, n, wave[1] - wave[0], sigma0_pixel,
                                           sigma0, res_out, narrow_rows));
    }

    size_t ngood = 0;
    double bad_ivar = 1.0 / (med * med) / (LARGE_ERROR * LARGE_ERROR);
    for (size_t p = 0; p < n; p++) {
        int baddat = !isfinite(flux[p]) || !isfinite(ivar[p]);
        int badinterp = baddat || mask[p] != 0 || ivar[p] <= 0;
        int dichroic = options->mask_dichroic && wave[p] > DICHROIC_LO && wave[p] < DICHROIC_HI;
        int edge = options->use_resolution && (p < EDGE_PIXELS || p >= n - EDGE_PIXELS);
        interp[p] = (unsigned char)badinterp;
        bad[p] = (unsigned char)(badinterp || dichroic || edge);
        ngood += !bad[p];
        spec[p] = flux[p];
        espec[p] = 1.0 / sqrt(bad[p] ? bad_ivar : (double)ivar[p]);
    }
    if (ngood == 0) {
        rvs_log(RVS_LOG_DEBUG, "prepare", "every pixel of the arm is bad: arm skipped");
        goto cleanup;
    }
    /* Interpolated over bad data only; dichroic and edge pixels keep their values. */
    rvs_prepare_interpolate_bad(spec, interp, n, spec);
    m = 0;
    for (size_t p = 0; p < n; p++)
        if (!bad[p])
            scratch[m++] = espec[p];
    double floor = rvs_desi_median(scratch, m) * MINERR_FRAC;
    size_t nclamped = 0;
    for (size_t p = 0; p < n; p++)
        if (!bad[p] && espec[p] < floor) {
            espec[p] = floor;
            nclamped++;
        }
    *clamped = (double)nclamped / (double)ngood > 0.01;
    *used = 1;
cleanup:
    free(scratch);
    free(interp);
    return status;
}

void rvs_prepared_init(struct rvs_prepared *prepared) { memset(prepared, 0, sizeof *prepared); }

void rvs_prepared_free(struct rvs_prepared *prepared)
{
    if (!prepared)
        return;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        free(prepared->spec[a]);
        free(prepared->espec[a]);
        free(prepared->bad[a]);
        free(prepared->used[a]);
        free(prepared->resolution[a]);
        free(prepared->sigma0_pixel[a]);
    }
    free(prepared->bad_spectrum);
    free(prepared->dropped_arms);
    rvs_prepared_init(prepared);
}

static void *grow(void *p, size_t count, size_t size, int *status)
{
    void *q = realloc(p, (count ? count : 1) * size);
    if (!q) {
        rvs_log(RVS_LOG_ERROR, "memory", "cannot allocate %zu x %zu bytes for prepared spectra",
                count, size);
        *status = RVS_ERR_NOMEM;
    }
    return q;
}

#define GROW(ptr, count)                                                                           \
    do {                                                                                           \
        void *grown_ = grow((ptr), (count), sizeof *(ptr), &status);                               \
        if (!grown_)                                                                               \
            goto cleanup;                                                                          \
        (ptr) = grown_;                                                                            \
    } while (0)

/* The targets of one share of a batch: each target's arms are prepared independently of every
 * other target's (results do not depend on the split), counts per share are summed after. */
struct prepare_share {
    const struct rvs_desi_spectra *spectra;
    const double *const *wave;
    const struct rvs_prepare_options *options;
    struct rvs_prepared *out;
    int with_res;
    size_t nt;
    /* per share */
    int status;
    size_t ndropped, nclamped;
    size_t narrow_rows[RVS_DESI_NARMS], checked_rows[RVS_DESI_NARMS];
};

static void prepare_share_targets(void *arg, size_t k, size_t nshares)
{
    struct prepare_share *share = (struct prepare_share *)arg + k;
    const struct rvs_desi_spectra *spectra = share->spectra;
    const double *const *wave = share->wave;
    const struct rvs_prepare_options *options = share->options;
    struct rvs_prepared *out = share->out;
    int with_res = share->with_res, status = RVS_OK;
    size_t t0 = share->nt * k / nshares, t1 = share->nt * (k + 1) / nshares;
    for (size_t t = t0; t < t1; t++) {
        int any = 0;
        out->dropped_arms[t] = 0;
        for (int a = 0; a < RVS_DESI_NARMS; a++) {
            if (!(spectra->arms & (1u << a)))
                continue;
            size_t nw = spectra->nwave[a], nd = spectra->ndiag[a];
            int used = 0, clamped = 0, bad_res = 0;
            size_t narrow = 0;
            const double *sig_pix = with_res && options->lsf_sigma0_at[a] ? out->sigma0_pixel[a]
                                                                           : NULL;
            status = prepare_arm(
                wave[a], nw, spectra->flux[a] + t * nw, spectra->ivar[a] + t * nw,
                spectra->mask[a] + t * nw, with_res ? spectra->resolution[a] + t * nd * nw : NULL,
                nd, options->lsf_sigma0[a], sig_pix, options, out->spec[a] + t * nw,
                out->espec[a] + t * nw, out->bad[a] + t * nw,
                with_res ? out->resolution[a] + t * nd * nw : NULL, &used, &clamped, &narrow,
                &bad_res);
            if (status != RVS_OK)
                goto done;
            if (bad_res) {
                out->dropped_arms[t] |= (unsigned char)(1u << a);
                share->ndropped++;
            }
            if (used && with_res) {
                share->narrow_rows[a] += narrow;
                share->checked_rows[a] += nw > 2 * (nd / 2) ? nw - 2 * (nd / 2) : 0;
            }
            out->used[a][t] = (unsigned char)used;
            if (!used) {
                memset(out->spec[a] + t * nw, 0, nw * sizeof(double));
                memset(out->espec[a] + t * nw, 0, nw * sizeof(double));
                memset(out->bad[a] + t * nw, 1, nw);
            }
            share->nclamped += (size_t)clamped;
            any |= used;
        }
        out->bad_spectrum[t] = (unsigned char)!any;
        if (!any)
            rvs_log(RVS_LOG_DEBUG, "prepare", "spectrum %zu of the batch has no usable arm", t);
    }
done:
    share->status = status;
}

int rvs_prepare_batch(const struct rvs_desi_spectra *spectra,
                      const double *const wave[RVS_DESI_NARMS],
                      const struct rvs_prepare_options *options, struct rvs_prepared *out)
{
    int status = RVS_OK;
    size_t nt = spectra->nrows;
    int with_res = options->use_resolution;
    if (with_res && !spectra->with_resolution) {
        rvs_log(RVS_LOG_ERROR, "prepare",
                "--resolution-matrix needs spectra read with their RESOLUTION HDUs");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    size_t cap = nt > out->capacity ? nt : out->capacity;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        if (!(spectra->arms & (1u << a)))
            continue;
        size_t nw = spectra->nwave[a], nd = spectra->ndiag[a];
        /* realloc to the exact need keeps this simple; it is a no-op when nothing changed. */
        GROW(out->spec[a], cap * nw);
        GROW(out->espec[a], cap * nw);
        GROW(out->bad[a], cap * nw);
        GROW(out->used[a], cap);
        if (with_res)
            GROW(out->resolution[a], cap * nd * nw);
        if (with_res && options->lsf_sigma0_at[a]) {
            GROW(out->sigma0_pixel[a], nw);
            for (size_t i = 0; i < nw; i++)
                out->sigma0_pixel[a][i] =
                    options->lsf_sigma0_at[a](options->lsf_data[a], wave[a][i]);
        }
        out->narrow_rows[a] = out->checked_rows[a] = 0;
        out->nwave[a] = nw;
        out->ndiag[a] = with_res ? nd : 0;
    }
    GROW(out->bad_spectrum, cap);
    GROW(out->dropped_arms, cap);
    out->capacity = cap;
    out->arms = spectra->arms;
    out->with_resolution = with_res;
    out->nclamped = 0;
    /* 2.5 ms per target with resolution matrices: shared among the host's cores (on an H100
     * node one thread took 50 s of a 150 s run of 20,000 targets) */
    enum { MAX_PREPARE_SHARES = 64, MIN_TARGETS_PER_SHARE = 8 };
    struct prepare_share shares[MAX_PREPARE_SHARES];
    size_t nshares = rvs_parallel_threads(nt, MIN_TARGETS_PER_SHARE, MAX_PREPARE_SHARES);
    for (size_t k = 0; k < nshares; k++) {
        memset(&shares[k], 0, sizeof shares[k]);
        shares[k].spectra = spectra;
        shares[k].wave = wave;
        shares[k].options = options;
        shares[k].out = out;
        shares[k].with_res = with_res;
        shares[k].nt = nt;
    }
    /* each share finds its own index from the pointer it is given: pass the array */
    if (nshares > 1)
        rvs_parallel_run(nshares, prepare_share_targets, shares);
    else
        prepare_share_targets(shares, 0, 1);
    size_t ndropped = 0;
    for (size_t k = 0; k < nshares; k++) {
        if (shares[k].status != RVS_OK && status == RVS_OK)
            status = shares[k].status;
        ndropped += shares[k].ndropped;
        out->nclamped += shares[k].nclamped;
        for (int a = 0; a < RVS_DESI_NARMS; a++) {
            out->narrow_rows[a] += shares[k].narrow_rows[a];
            out->checked_rows[a] += shares[k].checked_rows[a];
        }
    }
    if (status != RVS_OK)
        goto cleanup;
    out->ntargets = nt;
    if (ndropped)
        rvs_log(RVS_LOG_WARNING, "prepare",
                "%zu arm(s) in this batch were left out of the fit because their resolution "
                "matrix holds non-finite values; those targets carry RVS_WARN bit 128 (BAD_ARM)",
                ndropped);
    if (out->nclamped)
        rvs_log(RVS_LOG_WARNING, "prepare",
                "%zu arm(s) in this batch had the uncertainty of more than 1%% of their pixels "
                "raised to 0.3 x the median uncertainty",
                out->nclamped);
cleanup:
    return status;
}
