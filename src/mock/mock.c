/* mock.c: DESI mock coadds from a template library (doc/mock.md). Per target: true parameters
 * (random inside the library's training hulls, or from a table), the emulator template on the
 * device (rvs_nn_forward, all targets in one batch per arm), rotational broadening
 * (rvs_rotation_apply), then by default a Gaussian convolution on the host (double precision,
 * on the library's grid in the star's rest frame) that brings the templates' own LSF up to the
 * resolution matrix R's width, the Doppler shift by spline evaluation at lambda*sqrt((1-b)/(1+b))
 * (rvs_spline_eval), and a Gaussian R per target and arm in DESI's DIA layout (written; applied
 * with rvs_resolution_apply only with --lsf-on-top or --lsf-scale 0); then on the host a
 * continuum (extinction x flux-calibration error, or the per-arm Legendre model) and flux
 * scale, noise for the requested per-pixel S/N, a noisier partly flagged dichroic region, bad
 * columns and cosmics. Random numbers: one xoshiro256** stream per (seed, target, purpose), so a
 * target's values do not depend on how many targets follow it. */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <fitsio.h>

#include "base/internal.h"
#include "base/random.h"
#include "mock/mock.h"
#include "base/files.h"

#define MOD "mock"

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

/* DESI standard grids (DESI-DATAMODEL.md): 0.8 Å steps. */
const double rvs_mock_wave_start[RVS_DESI_NARMS] = {3600.0, 5760.0, 7520.0};
const size_t rvs_mock_wave_count[RVS_DESI_NARMS] = {2751, 2326, 2881};
/* LSF FWHM (Å) at the blue and red end of each arm: DESI's resolving power (about 2000-3200 in
 * b, 3200-4100 in r, 4100-5000 in z: lambda / R) expressed as a width. */
const double rvs_mock_lsf_fwhm[RVS_DESI_NARMS][2] = {{1.80, 1.81}, {1.80, 1.86}, {1.83, 1.96}};

static const char *const setup_names[RVS_DESI_NARMS] = {"desi_b", "desi_r", "desi_z"};

#define FWHM_PER_SIGMA 2.3548200450309493 /* 2 sqrt(2 ln 2) */
#define DICHROIC_LO 4300.0 /* rvspecfit desi_fit.py get_specdata masks 4300 < lambda < 4450 */
#define DICHROIC_HI 4450.0
/* the realistic continuum's flux-calibration error spans the three arms: b's start to z's end */
#define CAL_LO 3600.0
#define CAL_HI 9824.0
#define RNG_TARGET 1     /* purposes of the random streams: vrad, vsini, S/N, levels, ... */
#define RNG_THETA 2      /* the random parameters */
#define RNG_OBSERVE 10   /* + arm: noise, masks, cosmics */
#define RNG_CONTINUUM 20 /* E(B-V) and the calibration coefficients of the realistic continuum */

void rvs_mock_options_init(struct rvs_mock_options *o)
{
    memset(o, 0, sizeof *o);
    o->ntargets = 10;
    o->snr_lo = 5;
    o->snr_hi = 100;
    o->vrad_lo = -300;
    o->vrad_hi = 300;
    o->vsini_lo = 0;
    o->vsini_hi = 30;
    o->lsf_scale = 1;
    o->lsf_on_top = 0;
    o->continuum = RVS_MOCK_CONTINUUM_REALISTIC;
    o->unflagged_cosmics = 1;
    o->continuum_scale = 1;
    o->seed = 1;
    o->healpix = 10000;
    o->nside = 64;
    o->survey = "main";
    o->program = "bright";
}

/* ------------------------------------------------------------------ random numbers */

struct rng {
    uint64_t s[4];
};

/* The stream of (seed, target, purpose). */
static void rng_init(struct rng *r, uint64_t seed, uint64_t target, uint64_t purpose)
{
    uint64_t x = seed ^ (target * 0xd1342543de82ef95ULL) ^ (purpose * 0xaf251af3b0f025b5ULL);
    for (int i = 0; i < 4; i++)
        r->s[i] = rvs_splitmix64(&x);
}

static uint64_t rng_next(struct rng *r) { return rvs_xoshiro_next(r->s); }
/* Uniform in [0, 1). */
static double rng_uniform(struct rng *r) { return rvs_unit53(rng_next(r)); }
static double rng_range(struct rng *r, double lo, double hi)
{
    return lo + (hi - lo) * rng_uniform(r);
}
static double rng_gauss(struct rng *r)
{
    double u = 1.0 - rng_uniform(r), v = rng_uniform(r);
    return sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * v);
}

/* ------------------------------------------------------------------ small helpers */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static double median_of(const double *v, size_t n, double *work)
{
    memcpy(work, v, n * sizeof *work);
    qsort(work, n, sizeof *work, cmp_double);
    return n % 2 ? work[n / 2] : 0.5 * (work[n / 2 - 1] + work[n / 2]);
}

double rvs_mock_get_sn(const float *flux, const float *ivar, const int32_t *mask, size_t n)
{
    /* desi_fit.py get_sns: xsn = data * sqrt(ivars) in float32, bad pixels NaN, nanmedian */
    float *v = malloc(n * sizeof *v);
    size_t k = 0;
    if (!v)
        return NAN;
    for (size_t i = 0; i < n; i++)
        if (ivar[i] > 0 && mask[i] == 0)
            v[k++] = flux[i] * sqrtf(ivar[i]);
    double sn = -1e9;
    if (k > 0) {
        qsort(v, k, sizeof *v, cmp_float);
        sn = k % 2 ? (double)v[k / 2] : (double)((v[k / 2 - 1] + v[k / 2]) / 2.0f);
        if (!isfinite(sn))
            sn = -1e9;
    }
    free(v);
    return sn;
}

void rvs_mock_resolution_row(const double *wave, size_t n, size_t i, double sigma, double *w)
{
    const int h = RVS_MOCK_NDIAG / 2;
    double sum = 0;
    for (int d = -h; d <= h; d++) {
        long j = (long)i + d;
        double v = 0;
        if (j >= 0 && j < (long)n) {
            if (sigma > 0) {
                double x = (wave[j] - wave[i]) / sigma;
                v = exp(-0.5 * x * x);
            } else {
                v = d == 0;
            }
        }
        w[d + h] = v;
        sum += v;
    }
    for (int d = 0; d < RVS_MOCK_NDIAG; d++)
        w[d] /= sum;
}

/* ------------------------------------------------------------------ the parameter table */

static int lower_eq(const char *a, const char *b)
{
    for (; *a && *b; a++, b++)
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b))
            return 0;
    return *a == *b;
}

enum { PCOL_TEFF, PCOL_LOGG, PCOL_FEH, PCOL_ALPHA, PCOL_VRAD, PCOL_VSINI, PCOL_SNR, PCOL_TID,
       NPCOL };
static const char *const pcol_names[NPCOL] = {"teff", "logg", "feh", "alpha", "vrad", "vsini",
                                              "snr", "targetid"};

/* rows x NPCOL doubles, NaN where the table lacks an optional column. */
static int read_params_csv(const char *path, double **out, size_t *nrows)
{
    int status = RVS_OK;
    FILE *f = fopen(path, "r");
    char line[4096];
    int map[64];
    size_t ncols = 0, n = 0, cap = 0, lineno = 0;
    double *v = NULL;
    if (!f) {
        rvs_log(RVS_LOG_ERROR, MOD, "%s: cannot read the parameter table: %s", path,
                strerror(errno));
        return RVS_ERR_IO;
    }
    if (!fgets(line, sizeof line, f)) {
        rvs_log(RVS_LOG_ERROR, MOD, "%s: empty parameter table; the first line must name the "
                "columns (teff,logg,feh,alpha[,vrad,vsini,snr,targetid])", path);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    lineno = 1;
    int found[NPCOL] = {0};
    for (char *tok = strtok(line, ", \t\r\n"); tok; tok = strtok(NULL, ", \t\r\n")) {
        if (ncols >= 64) {
            status = RVS_ERR_FORMAT;
            rvs_log(RVS_LOG_ERROR, MOD, "%s: more than 64 columns", path);
            goto cleanup;
        }
        map[ncols] = -1;
        for (int c = 0; c < NPCOL; c++)
            if (lower_eq(tok, pcol_names[c])) {
                map[ncols] = c;
                found[c] = 1;
            }
        ncols++;
    }
    for (int c = 0; c < 4; c++)
        if (!found[c]) {
            rvs_log(RVS_LOG_ERROR, MOD, "%s: no column '%s' in the header line; the table needs "
                    "teff, logg, feh, alpha (vrad, vsini, snr, targetid optional)",
                    path, pcol_names[c]);
            status = RVS_ERR_FORMAT;
            goto cleanup;
        }
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *p = line;
        while (isspace((unsigned char)*p))
            p++;
        if (!*p || *p == '#')
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            double *nv = realloc(v, cap * NPCOL * sizeof *v);
            if (!nv) {
                status = RVS_ERR_NOMEM;
                goto cleanup;
            }
            v = nv;
        }
        for (int c = 0; c < NPCOL; c++)
            v[n * NPCOL + c] = NAN;
        for (size_t c = 0; c < ncols; c++) {
            char *end = NULL;
            double x = strtod(p, &end);
            if (end == p) {
                rvs_log(RVS_LOG_ERROR, MOD, "%s:%zu: column %zu is not a number", path, lineno,
                        c + 1);
                status = RVS_ERR_FORMAT;
                goto cleanup;
            }
            if (map[c] >= 0)
                v[n * NPCOL + map[c]] = x;
            p = end;
            while (*p == ' ' || *p == '\t' || *p == ',')
                p++;
        }
        n++;
    }
    *out = v;
    *nrows = n;
    v = NULL;
cleanup:
    fclose(f);
    free(v);
    return status;
}

static int fits_fail(int fst, const char *path, const char *what)
{
    char text[FLEN_STATUS] = "", msg[FLEN_ERRMSG];
    fits_get_errstatus(fst, text);
    rvs_log(RVS_LOG_ERROR, MOD, "%s: %s: %s (cfitsio status %d)", path, what, text, fst);
    while (fits_read_errmsg(msg))
        rvs_log(RVS_LOG_ERROR, MOD, "%s: cfitsio: %s", path, msg);
    return fst == FILE_NOT_OPENED || fst == READ_ERROR || fst == WRITE_ERROR ||
                   fst == FILE_NOT_CREATED
               ? RVS_ERR_IO
               : RVS_ERR_FORMAT;
}

#define FITS_TRY(path, what)                                                                       \
    do {                                                                                           \
        if (fst != 0) {                                                                            \
            status = fits_fail(fst, (path), (what));                                               \
            goto cleanup;                                                                          \
        }                                                                                          \
    } while (0)

static int read_params_fits(const char *path, double **out, size_t *nrows)
{
    int status = RVS_OK, fst = 0, type = 0, ncols = 0, anynul = 0;
    long n = 0;
    fitsfile *f = NULL;
    double *v = NULL, *col = NULL;
    fits_open_diskfile(&f, path, READONLY, &fst);
    FITS_TRY(path, "open the parameter table");
    fits_movabs_hdu(f, 2, &type, &fst);
    FITS_TRY(path, "move to HDU 1 (the parameter table)");
    if (type != BINARY_TBL && type != ASCII_TBL) {
        rvs_log(RVS_LOG_ERROR, MOD, "%s: HDU 1 is not a table; put the parameters in the first "
                "extension", path);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    fits_get_num_rows(f, &n, &fst);
    fits_get_num_cols(f, &ncols, &fst);
    FITS_TRY(path, "table size");
    v = rvs_malloc((size_t)(n > 0 ? n : 1) * NPCOL * sizeof *v);
    col = rvs_malloc((size_t)(n > 0 ? n : 1) * sizeof *col);
    if (!v || !col) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (int c = 0; c < NPCOL; c++) {
        int cn = 0;
        fits_get_colnum(f, CASEINSEN, (char *)pcol_names[c], &cn, &fst);
        if (fst == COL_NOT_FOUND) {
            fits_clear_errmsg();
            fst = 0;
            if (c < 4) {
                rvs_log(RVS_LOG_ERROR, MOD, "%s: HDU 1 has no column %s; the table needs teff, "
                        "logg, feh, alpha (vrad, vsini, snr, targetid optional)",
                        path, pcol_names[c]);
                status = RVS_ERR_FORMAT;
                goto cleanup;
            }
            for (long i = 0; i < n; i++)
                v[i * NPCOL + c] = NAN;
            continue;
        }
        FITS_TRY(path, pcol_names[c]);
        if (c == PCOL_TID) {
            for (long i = 0; i < n; i++) {
                LONGLONG t = 0;
                fits_read_col(f, TLONGLONG, cn, i + 1, 1, 1, NULL, &t, &anynul, &fst);
                v[i * NPCOL + c] = (double)t;
            }
        } else {
            fits_read_col(f, TDOUBLE, cn, 1, 1, n, NULL, col, &anynul, &fst);
            for (long i = 0; i < n; i++)
                v[i * NPCOL + c] = col[i];
        }
        FITS_TRY(path, pcol_names[c]);
    }
    *out = v;
    *nrows = (size_t)n;
    v = NULL;
cleanup:
    if (f) {
        int fst2 = 0;
        fits_close_file(f, &fst2);
    }
    free(v);
    free(col);
    return status;
}

static int read_params(const char *path, double **out, size_t *nrows)
{
    size_t len = strlen(path);
    int is_fits = (len > 5 && (strcmp(path + len - 5, ".fits") == 0 ||
                               strcmp(path + len - 4, ".fit") == 0)) ||
                  (len > 8 && strcmp(path + len - 8, ".fits.gz") == 0);
    int status = is_fits ? read_params_fits(path, out, nrows) : read_params_csv(path, out, nrows);
    if (status == RVS_OK && *nrows == 0) {
        rvs_log(RVS_LOG_ERROR, MOD, "%s: the parameter table has no rows", path);
        free(*out);
        *out = NULL;
        return RVS_ERR_FORMAT;
    }
    return status;
}

/* ------------------------------------------------------------------ generation */

void rvs_mock_free(struct rvs_mock **mock)
{
    if (!mock || !*mock)
        return;
    struct rvs_mock *m = *mock;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        free(m->wave[a]);
        free(m->flux[a]);
        free(m->ivar[a]);
        free(m->mask[a]);
        free(m->resolution[a]);
        free(m->model[a]);
        free(m->continuum[a]);
        free(m->cosmic_unflagged[a]);
    }
    free(m->t);
    free(m);
    *mock = NULL;
}

/* Maximal outside penalty of theta over the three arms. */
static double outside_all(struct rvs_library_arm *const lib[RVS_DESI_NARMS], const double *theta,
                          double *per_arm)
{
    double worst = 0;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        double o = rvs_library_outside(lib[a], theta);
        if (per_arm)
            per_arm[a] = o;
        if (!(o <= worst))
            worst = o;
    }
    return worst;
}

/* The targets' parameters: table values where given, random ones otherwise. */
static int draw_targets(struct rvs_mock *m, struct rvs_library_arm *const lib[RVS_DESI_NARMS],
                        const double *table)
{
    const struct rvs_mock_options *o = &m->opt;
    const struct rvs_library_content *c = rvs_library_content(lib[0]);
    for (size_t t = 0; t < m->n; t++) {
        struct rvs_mock_target *g = &m->t[t];
        const double *row = table ? table + t * NPCOL : NULL;
        struct rng r;
        rng_init(&r, o->seed, t, RNG_TARGET);
        /* every random value is drawn whether or not the table gives it, so that the stream
         * stays aligned */
        double vrad = rng_range(&r, o->vrad_lo, o->vrad_hi);
        double vsini = rng_range(&r, o->vsini_lo, o->vsini_hi);
        double snr = exp(rng_range(&r, log(o->snr_lo), log(o->snr_hi)));
        g->vrad = row && isfinite(row[PCOL_VRAD]) ? row[PCOL_VRAD] : vrad;
        g->vsini = row && isfinite(row[PCOL_VSINI]) ? row[PCOL_VSINI] : vsini;
        g->snr = row && isfinite(row[PCOL_SNR]) ? row[PCOL_SNR] : snr;
        /* flux level (1e-17 erg/s/cm2/Å at the median of r) and the per-arm Legendre
         * continuum, drawn in every mode so that the values after them stay the same */
        g->flux_level = exp(rng_range(&r, log(10.0), log(300.0)));
        double legendre[RVS_DESI_NARMS][3];
        for (int a = 0; a < RVS_DESI_NARMS; a++)
            for (int k = 0; k < 3; k++)
                legendre[a][k] = 0.1 * rng_gauss(&r) * o->continuum_scale;
        memset(g->cont, 0, sizeof g->cont);
        g->ebv = 0;
        if (o->continuum == RVS_MOCK_CONTINUUM_LEGENDRE) {
            memcpy(g->cont, legendre, sizeof g->cont);
        } else {
            /* realistic: E(B-V) exponential of mean 0.05 capped at 0.5, calibration
             * coefficients N(0, 0.02^2), both times --continuum-scale, from their own stream */
            struct rng rc;
            rng_init(&rc, o->seed, t, RNG_CONTINUUM);
            g->ebv = fmin(-0.05 * log(1.0 - rng_uniform(&rc)), 0.5) * o->continuum_scale;
            for (int k = 0; k < 3; k++)
                g->cont[0][k] = 0.02 * rng_gauss(&rc) * o->continuum_scale;
        }
        g->lsf_factor = 1 + 0.03 * fmax(-3, fmin(3, rng_gauss(&r)));
        g->ra = 150 + rng_range(&r, -0.5, 0.5);
        g->dec = 2 + rng_range(&r, -0.5, 0.5);
        g->ref_id = (int64_t)(3.8e18 + (double)(rng_next(&r) % 100000000000000000ULL));
        g->nexp = 2 + (int)(rng_next(&r) % 3);
        uint64_t tid = 39627000000000000ULL + (uint64_t)t * 1000003ULL + rng_next(&r) % 1000;
        g->targetid = row && isfinite(row[PCOL_TID]) ? (int64_t)row[PCOL_TID] : (int64_t)tid;
        if (row) {
            for (int p = 0; p < 4; p++)
                g->theta[p] = row[p];
            if (!(g->theta[0] > 0)) {
                rvs_log(RVS_LOG_ERROR, MOD, "%s: row %zu: teff = %g must be positive",
                        o->params_path, t + 1, g->theta[0]);
                return RVS_ERR_INVALID_ARGUMENT;
            }
            if (outside_all(lib, g->theta, g->outside) > 0)
                rvs_log(RVS_LOG_WARNING, MOD, "%s: row %zu lies outside the library's training "
                        "hulls (penalty %g): the emulator extrapolates there",
                        o->params_path, t + 1, outside_all(lib, g->theta, NULL));
        } else {
            /* uniform inside the training range, rejected until inside every hull */
            struct rng rp;
            rng_init(&rp, o->seed, t, RNG_THETA);
            int tries = 0;
            do {
                for (int p = 0; p < 4; p++)
                    g->theta[p] = rng_range(&rp, c->params[p].train_min, c->params[p].train_max);
                if (++tries > 100000) {
                    rvs_log(RVS_LOG_ERROR, MOD, "%s: cannot draw parameters inside the "
                            "library's hulls", o->library_dir);
                    return RVS_ERR_FORMAT;
                }
            } while (outside_all(lib, g->theta, g->outside) > 0);
        }
        if (!(g->snr > 0) || !isfinite(g->vrad) || !(g->vsini >= 0) || fabs(g->vrad) > 5000) {
            rvs_log(RVS_LOG_ERROR, MOD, "target %zu: S/N %g, vrad %g, vsini %g: need S/N > 0, "
                    "|vrad| <= 5000 km/s, vsini >= 0", t + 1, g->snr, g->vrad, g->vsini);
            return RVS_ERR_INVALID_ARGUMENT;
        }
    }
    return RVS_OK;
}

double rvs_mock_lsf_sigma(const struct rvs_mock *m, int a, size_t t, double lambda)
{
    size_t nw = m->nwave[a];
    const double *wave = m->wave[a];
    double x = (lambda - wave[0]) / (wave[nw - 1] - wave[0]);
    x = fmin(1.0, fmax(0.0, x));
    double fwhm = m->lsf_fwhm[a][0] + x * (m->lsf_fwhm[a][1] - m->lsf_fwhm[a][0]);
    return m->opt.lsf_scale * m->t[t].lsf_factor * fwhm / FWHM_PER_SIGMA;
}

/* The resolution matrices of all targets of one arm. */
static void make_resolution(struct rvs_mock *m, int a)
{
    size_t nw = m->nwave[a];
    const double *wave = m->wave[a];
    const int h = RVS_MOCK_NDIAG / 2;
    double w[RVS_MOCK_NDIAG];
    for (size_t t = 0; t < m->n; t++) {
        float *data = m->resolution[a] + t * RVS_MOCK_NDIAG * nw;
        memset(data, 0, RVS_MOCK_NDIAG * nw * sizeof *data);
        for (size_t i = 0; i < nw; i++) {
            rvs_mock_resolution_row(wave, nw, i, rvs_mock_lsf_sigma(m, a, t, wave[i]), w);
            /* DIA: R[i, j] = data[h - (j - i)][j] (desispec resolution.py) */
            for (int d = -h; d <= h; d++) {
                long j = (long)i + d;
                if (j >= 0 && j < (long)nw)
                    data[(size_t)(h - d) * nw + (size_t)j] = (float)w[d + h];
            }
        }
    }
}

/* ------------------------------------------------------------------ total LSF = R */

/* The mock's default spectra have the total LSF R: each rotated template (the library's grid,
 * the star's rest frame) is convolved with a Gaussian of sigma_K, sigma_K^2 = (sigma_R(lambda_obs)
 * / D)^2 - sigma_lib(lambda)^2, where lambda_obs = D lambda, D = sqrt((1 + b) / (1 - b)) is the
 * Doppler stretch the spline shift applies to every width (so sigma_R / D in the rest frame is
 * sigma_R once shifted) and sigma_lib the library's own LSF.
 *
 * The weights are the exact integrals of a Gaussian against each hat function of the
 * piecewise-linear template (differences of Phi and of the Gaussian pdf), so a sigma_K below one
 * template pixel still gives a proper kernel, truncated at +-5 sigma and at least +-1 pixel and
 * renormalised to sum 1. Linear interpolation itself spreads a sampled line: on a grid of step h
 * that kernel's second moment is s^2 + h^2/6 for a Gaussian of sigma s >~ h, and between 0 and
 * that below. The template is a sample of a smooth spectrum (the spline shift that follows
 * treats it so), so s is chosen to make the kernel's second moment exactly sigma_K^2:
 * s = sqrt(sigma_K^2 - h^2/6) where that gives s >= 0.8 h (the rest is below 1e-6 there), else
 * from a table of the moment against s/h. Without this the lines come out 2.3 % broader than R
 * (0.4 A template pixels, sigma_R 0.77 A; tests/test_mock). */

#define KTAB_N 801        /* table of the kernel's second moment for s/h = 0 .. KTAB_RMAX */
#define KTAB_RMAX 0.8
#define KERNEL_NSIGMA 5.0 /* truncation */

struct ktab {
    double g[KTAB_N]; /* second moment / h^2 at s/h = k KTAB_RMAX / (KTAB_N - 1) */
};

static double std_normal_cdf(double t) { return 0.5 * erfc(-t / sqrt(2.0)); }
static double std_normal_pdf(double t) { return exp(-0.5 * t * t) / sqrt(2.0 * M_PI); }

/* Weights w[0 .. hi - lo] of nodes x[lo..hi] for the value at xi of the piecewise-linear function
 * through them convolved with a Gaussian of sigma s > 0 (the mass beyond x[lo], x[hi] is left out),
 * normalised to sum 1. On [a, b] = [x_k, x_k+1] with dP = Phi(tb) - Phi(ta) and dM = s (pdf(ta) -
 * pdf(tb)) = the integral of (x - xi) N(x; xi, s): node k gets ((b - xi) dP - dM) / (b - a), node
 * k + 1 (dM + (xi - a) dP) / (b - a). */
static void hat_gauss_weights(const double *x, size_t lo, size_t hi, double xi, double s,
                              double *w)
{
    double t = (x[lo] - xi) / s, p0 = std_normal_cdf(t), m0 = s * std_normal_pdf(t), sum = 0;
    for (size_t k = 0; k <= hi - lo; k++)
        w[k] = 0;
    for (size_t k = lo; k < hi; k++) {
        double t1 = (x[k + 1] - xi) / s, p1 = std_normal_cdf(t1), m1 = s * std_normal_pdf(t1);
        double dp = p1 - p0, dm = m0 - m1, d = x[k + 1] - x[k];
        w[k - lo] += ((x[k + 1] - xi) * dp - dm) / d;
        w[k + 1 - lo] += (dm + (xi - x[k]) * dp) / d;
        p0 = p1;
        m0 = m1;
    }
    for (size_t k = 0; k <= hi - lo; k++)
        sum += w[k];
    for (size_t k = 0; k <= hi - lo; k++)
        w[k] /= sum;
}

/* Half-width in nodes of the kernel of sigma s on a grid of step h. */
static size_t kernel_half_width(double s, double h)
{
    return (size_t)ceil(KERNEL_NSIGMA * s / h) + 1;
}

static void ktab_init(struct ktab *kt)
{
    double x[2 * 8 + 1], w[2 * 8 + 1];
    kt->g[0] = 0;
    for (size_t k = 1; k < KTAB_N; k++) {
        double r = KTAB_RMAX * (double)k / (KTAB_N - 1), g = 0;
        size_t half = kernel_half_width(r, 1.0); /* <= 6 */
        for (size_t j = 0; j <= 2 * half; j++)
            x[j] = (double)j - (double)half;
        hat_gauss_weights(x, 0, 2 * half, 0.0, r, w);
        for (size_t j = 0; j <= 2 * half; j++)
            g += w[j] * x[j] * x[j];
        kt->g[k] = g;
    }
}

/* The Gaussian sigma to integrate against the hats so that the kernel's second moment is v h^2. */
static double ktab_sigma(const struct ktab *kt, double v, double h)
{
    if (v >= kt->g[KTAB_N - 1])
        return h * sqrt(v - 1.0 / 6.0);
    size_t lo = 0, hi = KTAB_N - 1; /* g[lo] <= v < g[hi]; g increases */
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (kt->g[mid] <= v)
            lo = mid;
        else
            hi = mid;
    }
    double f = (v - kt->g[lo]) / (kt->g[hi] - kt->g[lo]);
    return h * KTAB_RMAX * ((double)lo + f) / (KTAB_N - 1);
}

/* Doppler stretch D = sqrt((1 + b) / (1 - b)) of a target: rest lambda -> observed D lambda. */
static double doppler(double vrad)
{
    double b = vrad / RVS_SPEED_OF_LIGHT_KMS;
    return sqrt((1 + b) / (1 - b));
}

/* The library's LSF sigma at each template pixel; RVS_ERR_INVALID_ARGUMENT (logged) when the
 * library does not record it. */
static int library_sigma(struct rvs_library_arm *lib, const char *arm_name, double *siglib)
{
    const struct rvs_library_lsf *lsf = rvs_library_lsf(lib);
    size_t np = rvs_library_npix(lib);
    const double *wave = rvs_library_wave(lib);
    if (lsf->kind != RVS_LIBRARY_LSF_GAUSSIAN) {
        rvs_log(RVS_LOG_ERROR, MOD,
                "%s (arm %s): the library does not record its templates' line-spread function "
                "(a version-1 file or LSFTYPE = 'UNKNOWN'), so the mock cannot make spectra "
                "whose total LSF is the resolution matrix R. Record it with 'rvsfit-cl-lsf "
                "--fwhm F [--resolution-matrix-library] %s' (F: the templates' Gaussian FWHM in "
                "A), or use --lsf-on-top (R on top of the templates' own LSF) or --lsf-scale 0 "
                "(identity R, the templates as they are)",
                rvs_library_path(lib), arm_name, rvs_library_path(lib));
        return RVS_ERR_INVALID_ARGUMENT;
    }
    for (size_t j = 0; j < np; j++)
        siglib[j] = rvs_library_lsf_sigma_at(lsf, wave[j]);
    return RVS_OK;
}

/* Refuses when, for some target, R's sigma is not larger than the library's at a template pixel
 * that lands inside the arm (both compared in the observed frame). */
static int check_lsf(const struct rvs_mock *m, int a, struct rvs_library_arm *lib,
                     const double *siglib)
{
    size_t np = rvs_library_npix(lib), nw = m->nwave[a], nbad = 0, worst_t = 0;
    const double *wave = rvs_library_wave(lib);
    double worst = INFINITY, worst_lam = 0, worst_r = 0, worst_l = 0;
    for (size_t t = 0; t < m->n; t++) {
        double dop = doppler(m->t[t].vrad);
        int bad = 0;
        for (size_t j = 0; j < np; j++) {
            double lam = wave[j] * dop;
            if (lam < m->wave[a][0] || lam > m->wave[a][nw - 1])
                continue;
            double sr = rvs_mock_lsf_sigma(m, a, t, lam), sl = siglib[j] * dop;
            if (!(sr > sl)) {
                bad = 1;
                if (sr - sl < worst) {
                    worst = sr - sl;
                    worst_t = t;
                    worst_lam = lam;
                    worst_r = sr;
                    worst_l = sl;
                }
            }
        }
        nbad += (size_t)bad;
    }
    if (nbad == 0)
        return RVS_OK;
    char desc[96];
    rvs_library_lsf_describe(rvs_library_lsf(lib), desc, sizeof desc);
    rvs_log(RVS_LOG_ERROR, MOD,
            "%s (arm %s): the library's LSF (%s) is not narrower than the mock's resolution "
            "matrix R for %zu of %zu targets: at %.1f A (target %zu, vrad %.1f km/s, fibre LSF "
            "factor %.3f) R's Gaussian sigma is %.4f A and the library's %.4f A, so no Gaussian "
            "can bring the templates to a total LSF of R. Use a library whose LSF is narrower "
            "than DESI's (e.g. rvsfit-cl-mkgrid --fwhm), or a larger --lsf-scale; "
            "--lsf-on-top applies R on top of the templates' own LSF instead",
            rvs_library_path(lib), setup_names[a], desc, nbad, m->n, worst_lam, worst_t + 1,
            m->t[worst_t].vrad, m->t[worst_t].lsf_factor, worst_r, worst_l);
    return RVS_ERR_INVALID_ARGUMENT;
}

struct lsf_job {
    const struct rvs_mock *m;
    int a;
    const double *wave, *siglib;
    size_t np, es;
    const struct ktab *kt;
    void *templ; /* n x np rvs_real, convolved in place */
    int nomem;
};

static void lsf_convolve_share(void *arg, size_t share, size_t nshares)
{
    struct lsf_job *j = arg;
    size_t np = j->np;
    const double *x = j->wave;
    double *in = malloc(np * sizeof *in), *w = NULL;
    size_t wcap = 0;
    if (!in) {
        j->nomem = 1;
        return;
    }
    for (size_t t = share; t < j->m->n; t += nshares) {
        double dop = doppler(j->m->t[t].vrad);
        float *rf = (float *)j->templ + t * np;
        double *rd = (double *)j->templ + t * np;
        for (size_t i = 0; i < np; i++)
            in[i] = j->es == sizeof(float) ? (double)rf[i] : rd[i];
        for (size_t i = 0; i < np; i++) {
            double sr = rvs_mock_lsf_sigma(j->m, j->a, t, x[i] * dop) / dop;
            double v = sr * sr - j->siglib[i] * j->siglib[i];
            double h = i == 0 ? x[1] - x[0]
                       : i + 1 == np ? x[np - 1] - x[np - 2]
                                     : 0.5 * (x[i + 1] - x[i - 1]);
            double s = v > 0 ? ktab_sigma(j->kt, v / (h * h), h) : 0, out = in[i];
            if (s > 0) {
                size_t half = kernel_half_width(s, h);
                size_t lo = i > half ? i - half : 0, hi = i + half < np ? i + half : np - 1;
                if (hi - lo + 1 > wcap) {
                    free(w);
                    wcap = 2 * (hi - lo + 1);
                    w = malloc(wcap * sizeof *w);
                    if (!w) {
                        j->nomem = 1;
                        free(in);
                        return;
                    }
                }
                hat_gauss_weights(x, lo, hi, x[i], s, w);
                out = 0;
                for (size_t k = lo; k <= hi; k++)
                    out += w[k - lo] * in[k];
            }
            if (j->es == sizeof(float))
                rf[i] = (float)out;
            else
                rd[i] = out;
        }
    }
    free(in);
    free(w);
}

/* Convolves the n rotated templates (host copy, n x np rvs_real) to a total LSF of R. */
static int lsf_convolve(const struct rvs_mock *m, int a, struct rvs_library_arm *lib,
                        const double *siglib, const struct ktab *kt, void *templ, size_t es)
{
    struct lsf_job j = {m, a, rvs_library_wave(lib), siglib, rvs_library_npix(lib), es, kt,
                        templ, 0};
    if (j.np < 3) {
        rvs_log(RVS_LOG_ERROR, MOD, "%s: %zu template pixels: too few", rvs_library_path(lib),
                j.np);
        return RVS_ERR_FORMAT;
    }
    rvs_parallel_run(rvs_parallel_threads(m->n, 4, 0), lsf_convolve_share, &j);
    return j.nomem ? RVS_ERR_NOMEM : RVS_OK;
}

/* Whether the spectra get a total LSF of R (the default) rather than R on top of the templates. */
static int lsf_total(const struct rvs_mock_options *o)
{
    return o->lsf_scale > 0 && !o->lsf_on_top;
}

/* One arm, all targets in one batch: NN -> rotation on the device; with a total LSF of R the
 * Gaussian convolution of lsf_convolve on the host (siglib: the library's sigma per template
 * pixel); the shift on the device, and R applied there unless the total LSF is R already. The
 * host gets n x nwave doubles. */
static int model_arm(struct rvs_context *ctx, struct rvs_mock *m, int a,
                     struct rvs_library_arm *lib, const double *siglib, const struct ktab *kt,
                     double *out)
{
    int status = RVS_OK;
    size_t n = m->n, nw = m->nwave[a], np = rvs_library_npix(lib), es = rvs_context_real_size(ctx);
    struct rvs_nn *nn = NULL;
    struct rvs_rotation *rot = NULL;
    struct rvs_spline_grid *grid = NULL;
    cl_mem dparams = NULL, dtempl = NULL, drot = NULL, dcoef = NULL, didx = NULL, dvel = NULL,
           dlam = NULL, dshift = NULL, dres = NULL, dconv = NULL;
    const int total = lsf_total(&m->opt);
    void *host = rvs_malloc((n * 4 + n + nw + n * nw) * es);
    void *templ = total ? rvs_malloc(n * np * es) : NULL;
    cl_int *idx = rvs_malloc(n * sizeof *idx);
    double *vsini = rvs_malloc(n * sizeof *vsini);
    if (!host || !idx || !vsini || (total && !templ)) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
#define PUT(k, v)                                                                                  \
    do {                                                                                           \
        if (es == sizeof(float))                                                                   \
            ((float *)host)[k] = (float)(v);                                                       \
        else                                                                                       \
            ((double *)host)[k] = (v);                                                             \
    } while (0)
    /* parameters rounded to float32 as rvspecfit's Mapper does */
    for (size_t t = 0; t < n; t++) {
        for (int p = 0; p < 4; p++)
            PUT(t * 4 + p, (double)(float)m->t[t].theta[p]);
        idx[t] = (cl_int)t;
        vsini[t] = m->t[t].vsini;
    }
    RVS_TRY(rvs_nn_create(ctx, rvs_library_nn_desc(lib), &nn));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, n * 4 * es, host,
                              &dparams));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, n * np * es, NULL, &dtempl));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, n * np * es, NULL, &drot));
    RVS_TRY(rvs_nn_forward(ctx, nn, dparams, n, dtempl, RVS_NN_FLUX_REAL));
    RVS_TRY(rvs_rotation_create(ctx, np, &rot));
    RVS_TRY(rvs_rotation_apply(ctx, rot, dtempl, n, vsini, rvs_library_log_step(lib),
                               RVS_ROTATION_EPS, drot));
    if (total) {
        RVS_TRY(rvs_buffer_read(ctx, drot, 0, n * np * es, templ));
        RVS_TRY(lsf_convolve(m, a, lib, siglib, kt, templ, es));
        RVS_TRY(rvs_buffer_write(ctx, drot, 0, n * np * es, templ));
    }
    RVS_TRY(rvs_spline_grid_create(ctx, rvs_library_wave(lib), np, 1, &grid));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, rvs_spline_coeffs_bytes(ctx, grid, n), NULL,
                              &dcoef));
    RVS_TRY(rvs_spline_construct(ctx, grid, drot, n, dcoef));
    for (size_t t = 0; t < n; t++)
        PUT(t, m->t[t].vrad);
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, n * es, host, &dvel));
    RVS_TRY(rvs_spline_points_create(ctx, m->wave[a], nw, &dlam));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, n * sizeof *idx, idx,
                              &didx));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, n * nw * es, NULL, &dshift));
    RVS_TRY(rvs_spline_eval(ctx, grid, dcoef, n, didx, dvel, n, dlam, nw, dshift));
    if (total) {
        RVS_TRY(rvs_buffer_read(ctx, dshift, 0, n * nw * es, host));
    } else {
        RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                                  n * RVS_MOCK_NDIAG * nw * sizeof(float), m->resolution[a],
                                  &dres));
        RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, n * nw * es, NULL, &dconv));
        RVS_TRY(rvs_resolution_apply(ctx, dres, n, RVS_MOCK_NDIAG, nw, dshift, didx, n, dconv));
        RVS_TRY(rvs_buffer_read(ctx, dconv, 0, n * nw * es, host));
    }
    for (size_t k = 0; k < n * nw; k++) {
        out[k] = es == sizeof(float) ? ((float *)host)[k] : ((double *)host)[k];
        if (!isfinite(out[k]) || !(out[k] > 0)) {
            rvs_log(RVS_LOG_ERROR, MOD,
                    "%s: target %zu: model value %g at %.1f A: the shifted DESI grid must lie "
                    "inside the template grid (%.1f-%.1f A) and the emulator flux be positive; "
                    "reduce |vrad|",
                    rvs_library_path(lib), k / nw + 1, out[k], m->wave[a][k % nw],
                    rvs_library_wave(lib)[0], rvs_library_wave(lib)[np - 1]);
            status = RVS_ERR_INVALID_ARGUMENT;
            goto cleanup;
        }
    }
#undef PUT
cleanup:
    rvs_buffer_release(&dparams);
    rvs_buffer_release(&dtempl);
    rvs_buffer_release(&drot);
    rvs_buffer_release(&dcoef);
    rvs_buffer_release(&didx);
    rvs_buffer_release(&dvel);
    rvs_buffer_release(&dlam);
    rvs_buffer_release(&dshift);
    rvs_buffer_release(&dres);
    rvs_buffer_release(&dconv);
    rvs_spline_grid_destroy(&grid);
    rvs_rotation_destroy(&rot);
    rvs_nn_destroy(&nn);
    free(host);
    free(templ);
    free(idx);
    free(vsini);
    return status;
}

/* ------------------------------------------------------------------ continuum */

/* Interstellar extinction A(lambda) / E(B-V) for R_V = 3.1: Cardelli, Clayton & Mathis 1989, ApJ
 * 345, 245 (CCM89), eq. 2 (infrared, 0.3 <= x < 1.1) and eq. 3 with O'Donnell 1994, ApJ 422,
 * 158, eq. 2's coefficients (optical, 1.1 <= x <= 3.3), x = 1/lambda in 1/micron:
 * A / E(B-V) = R_V a(x) + b(x). DESI's grids (vacuum Å) span x = 1.02..2.78; the law's air/vacuum
 * and the 4e-4 mag per unit E(B-V) step of CCM89 at x = 1.1 (9091 Å) are far below the
 * calibration error's size. */
static double extinction_per_ebv(double lambda)
{
    const double rv = 3.1, x = 1e4 / lambda;
    double a, b;
    if (x < 1.1) {
        double p = pow(x, 1.61);
        a = 0.574 * p;
        b = -0.527 * p;
    } else {
        static const double ca[9] = {1.0, 0.104, -0.609, 0.701, 1.137, -1.718, -0.827, 1.647,
                                     -0.505};
        static const double cb[9] = {0.0, 1.952, 2.908, -3.989, -7.985, 11.102, 5.491, -10.805,
                                     3.347};
        double y = x - 1.82;
        a = 0;
        b = 0;
        for (int k = 8; k >= 0; k--) {
            a = a * y + ca[k];
            b = b * y + cb[k];
        }
    }
    return rv * a + b;
}

/* Legendre P1, P2, P3 of x in [-1, 1]. */
static void legendre3(double x, double p[3])
{
    p[0] = x;
    p[1] = 0.5 * (3 * x * x - 1);
    p[2] = 0.5 * (5 * x * x * x - 3 * x);
}

/* The continuum multiplier (without the flux scale) of every target of arm a into m->continuum,
 * and the targets' CONTMISS: the rms of (c - fit) / c after an unweighted least-squares fit of
 * c by rvsfit-cl's continuum basis (rvs_chisq_basis, npoly 10, RBF: 1, x, x^2 and 7 Gaussians),
 * through an orthonormal basis (modified Gram-Schmidt, twice). */
static int continuum_arm(struct rvs_mock *m, int a)
{
    enum { NPOLY = 10 };
    int status = RVS_OK;
    size_t nw = m->nwave[a];
    const double *wave = m->wave[a];
    double *q = rvs_malloc(NPOLY * nw * sizeof *q), *aext = rvs_malloc(nw * sizeof *aext);
    if (!q || !aext) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    RVS_TRY(rvs_chisq_basis(wave, nw, NPOLY, 1, q));
    for (int pass = 0; pass < 2; pass++)
        for (size_t j = 0; j < NPOLY; j++) {
            double *qj = q + j * nw;
            for (size_t k = 0; k < j; k++) {
                const double *qk = q + k * nw;
                double d = 0;
                for (size_t i = 0; i < nw; i++)
                    d += qj[i] * qk[i];
                for (size_t i = 0; i < nw; i++)
                    qj[i] -= d * qk[i];
            }
            double nrm = 0;
            for (size_t i = 0; i < nw; i++)
                nrm += qj[i] * qj[i];
            nrm = sqrt(nrm);
            for (size_t i = 0; i < nw; i++)
                qj[i] /= nrm;
        }
    for (size_t i = 0; i < nw; i++)
        aext[i] = extinction_per_ebv(wave[i]);
    for (size_t t = 0; t < m->n; t++) {
        const struct rvs_mock_target *g = &m->t[t];
        double *c = m->continuum[a] + t * nw, p[3];
        for (size_t i = 0; i < nw; i++) {
            if (m->opt.continuum == RVS_MOCK_CONTINUUM_LEGENDRE) {
                legendre3(2 * (wave[i] - wave[0]) / (wave[nw - 1] - wave[0]) - 1, p);
                c[i] = exp(g->cont[a][0] * p[0] + g->cont[a][1] * p[1] + g->cont[a][2] * p[2]);
            } else {
                legendre3(2 * (wave[i] - CAL_LO) / (CAL_HI - CAL_LO) - 1, p);
                c[i] = pow(10.0, -0.4 * g->ebv * aext[i]) *
                       exp(g->cont[0][0] * p[0] + g->cont[0][1] * p[1] + g->cont[0][2] * p[2]);
            }
        }
        double coef[NPOLY], rms = 0;
        for (size_t j = 0; j < NPOLY; j++) {
            coef[j] = 0;
            for (size_t i = 0; i < nw; i++)
                coef[j] += q[j * nw + i] * c[i];
        }
        for (size_t i = 0; i < nw; i++) {
            double fit = 0;
            for (size_t j = 0; j < NPOLY; j++)
                fit += coef[j] * q[j * nw + i];
            double r = (c[i] - fit) / c[i];
            rms += r * r;
        }
        m->t[t].contmiss[a] = sqrt(rms / (double)nw);
    }
cleanup:
    free(q);
    free(aext);
    return status;
}

/* ------------------------------------------------------------------ observation */

/* Noise, masks and cosmics of one arm, on the host: model = continuum x conv x flux scale. */
static int observe_arm(struct rvs_mock *m, int a, const double *conv)
{
    size_t nw = m->nwave[a];
    const double *wave = m->wave[a];
    double *work = rvs_malloc(nw * sizeof *work), *sigma = rvs_malloc(nw * sizeof *sigma);
    if (!work || !sigma) {
        free(work);
        free(sigma);
        return RVS_ERR_NOMEM;
    }
    for (size_t t = 0; t < m->n; t++) {
        struct rvs_mock_target *g = &m->t[t];
        double *model = m->model[a] + t * nw;
        float *flux = m->flux[a] + t * nw, *ivar = m->ivar[a] + t * nw;
        int32_t *mask = m->mask[a] + t * nw;
        unsigned char *cu = m->cosmic_unflagged[a] + t * nw;
        struct rng r;
        rng_init(&r, m->opt.seed, t, RNG_OBSERVE + (uint64_t)a);
        double *cont = m->continuum[a] + t * nw;
        /* the flux level is set on r: its median model equals flux_level (rvs_mock_generate) */
        for (size_t i = 0; i < nw; i++) {
            model[i] = cont[i] * conv[t * nw + i] * g->flux_scale;
            cont[i] *= g->flux_scale;
        }
        double mmed = median_of(model, nw, work);
        /* per-pixel sigma: Poisson-like sqrt(model * median) / S/N, so median(model/sigma) is
         * the requested S/N exactly; the dichroic region is twice as noisy */
        for (size_t i = 0; i < nw; i++) {
            double s = sqrt(fmax(model[i], 0.01 * mmed) * mmed) / g->snr;
            if (wave[i] > DICHROIC_LO && wave[i] < DICHROIC_HI)
                s *= 2;
            sigma[i] = s;
            flux[i] = (float)(model[i] + s * rng_gauss(&r));
            ivar[i] = (float)(1.0 / (s * s));
            mask[i] = 0;
            cu[i] = 0;
            if (wave[i] > DICHROIC_LO && wave[i] < DICHROIC_HI && rng_uniform(&r) < 0.25)
                mask[i] |= RVS_MOCK_SOMEBADPIX;
        }
        /* cosmics: two flagged, opt.unflagged_cosmics (1) not, 1-2 pixels, 20-100 sigma */
        g->ncosmic_flagged[a] = 2;
        g->ncosmic_unflagged[a] = m->opt.unflagged_cosmics;
        for (int k = 0; k < 2 + m->opt.unflagged_cosmics; k++) {
            size_t i0 = (size_t)(rng_uniform(&r) * (double)(nw - 2));
            int width = 1 + (int)(rng_next(&r) % 2);
            double amp = rng_range(&r, 20, 100);
            for (int d = 0; d < width; d++) {
                size_t i = i0 + (size_t)d;
                flux[i] = (float)(flux[i] + amp * sigma[i] / (d + 1));
                if (k < 2)
                    mask[i] |= RVS_MOCK_COSMIC;
                else
                    cu[i] = 1;
            }
        }
        /* bad columns: 0-2 runs of 1-6 pixels, IVAR 0 and FLUX 0 as in coadds */
        int nruns = (int)(rng_next(&r) % 3);
        for (int k = 0; k < nruns; k++) {
            size_t i0 = (size_t)(rng_uniform(&r) * (double)(nw - 6));
            int len = 1 + (int)(rng_next(&r) % 6);
            for (int d = 0; d < len; d++) {
                mask[i0 + (size_t)d] |= RVS_MOCK_ALLBADPIX;
                ivar[i0 + (size_t)d] = 0;
                flux[i0 + (size_t)d] = 0;
            }
        }
    }
    free(work);
    free(sigma);
    return RVS_OK;
}

int rvs_mock_generate(struct rvs_context *ctx, const struct rvs_mock_options *o,
                      struct rvs_mock **mock)
{
    int status = RVS_OK;
    struct rvs_library_arm *lib[RVS_DESI_NARMS] = {NULL, NULL, NULL};
    struct rvs_mock *m = NULL;
    double *table = NULL, *rmed = NULL, *conv[RVS_DESI_NARMS] = {NULL, NULL, NULL};
    double *siglib[RVS_DESI_NARMS] = {NULL, NULL, NULL};
    struct ktab *kt = NULL;
    size_t nrows = 0;
    *mock = NULL;
    if (!o->library_dir) {
        rvs_log(RVS_LOG_ERROR, MOD, "no template library given (--library DIR)");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (!(o->snr_lo > 0 && o->snr_hi >= o->snr_lo && o->vrad_hi >= o->vrad_lo &&
          o->vsini_lo >= 0 && o->vsini_hi >= o->vsini_lo && o->lsf_scale >= 0 &&
          o->continuum_scale >= 0 &&
          (o->continuum == RVS_MOCK_CONTINUUM_REALISTIC ||
           o->continuum == RVS_MOCK_CONTINUUM_LEGENDRE))) {
        rvs_log(RVS_LOG_ERROR, MOD, "bad options: S/N %g:%g, vrad %g:%g, vsini %g:%g, LSF scale "
                "%g, continuum %d scale %g (need 0 < LO <= HI for S/N, LO <= HI, vsini >= 0, "
                "scales >= 0, a known continuum model)",
                o->snr_lo, o->snr_hi, o->vrad_lo, o->vrad_hi, o->vsini_lo, o->vsini_hi,
                o->lsf_scale, o->continuum, o->continuum_scale);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        RVS_TRY(rvs_library_open(o->library_dir, setup_names[a], &lib[a]));
        RVS_TRY(rvs_library_check_desi(lib[a]));
    }
    /* a total LSF of R needs the library's own LSF: refused before anything is drawn */
    if (lsf_total(o)) {
        for (int a = 0; a < RVS_DESI_NARMS; a++) {
            siglib[a] = rvs_malloc(rvs_library_npix(lib[a]) * sizeof *siglib[a]);
            if (!siglib[a]) {
                status = RVS_ERR_NOMEM;
                goto cleanup;
            }
            RVS_TRY(library_sigma(lib[a], setup_names[a], siglib[a]));
        }
        kt = rvs_malloc(sizeof *kt);
        if (!kt) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        ktab_init(kt);
    }
    if (o->params_path)
        RVS_TRY(read_params(o->params_path, &table, &nrows));
    else
        nrows = o->ntargets;
    if (nrows < 1 || nrows > 1000000) {
        rvs_log(RVS_LOG_ERROR, MOD, "%zu targets: need 1 to 1000000", nrows);
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    m = rvs_calloc(1, sizeof *m);
    if (!m || !(m->t = rvs_calloc(nrows, sizeof *m->t))) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    m->n = nrows;
    m->opt = *o;
    m->opt.params_path = NULL; /* not owned */
    snprintf(m->setups_rev, sizeof m->setups_rev, "%s", rvs_library_provenance(lib[0])->librev);
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        rvs_library_lsf_describe(rvs_library_lsf(lib[a]), m->lib_lsf[a], sizeof m->lib_lsf[a]);
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        size_t nw = rvs_mock_wave_count[a];
        m->nwave[a] = nw;
        m->lsf_fwhm[a][0] = rvs_mock_lsf_fwhm[a][0];
        m->lsf_fwhm[a][1] = rvs_mock_lsf_fwhm[a][1];
        m->wave[a] = rvs_malloc(nw * sizeof(double));
        m->flux[a] = rvs_malloc(nrows * nw * sizeof(float));
        m->ivar[a] = rvs_malloc(nrows * nw * sizeof(float));
        m->mask[a] = rvs_malloc(nrows * nw * sizeof(int32_t));
        m->resolution[a] = rvs_malloc(nrows * RVS_MOCK_NDIAG * nw * sizeof(float));
        m->model[a] = rvs_malloc(nrows * nw * sizeof(double));
        m->continuum[a] = rvs_malloc(nrows * nw * sizeof(double));
        m->cosmic_unflagged[a] = rvs_malloc(nrows * nw);
        conv[a] = rvs_malloc(nrows * nw * sizeof(double));
        if (!m->wave[a] || !m->flux[a] || !m->ivar[a] || !m->mask[a] || !m->resolution[a] ||
            !m->model[a] || !m->continuum[a] || !m->cosmic_unflagged[a] || !conv[a]) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        for (size_t j = 0; j < nw; j++)
            m->wave[a][j] = rvs_mock_wave_start[a] + RVS_MOCK_WAVE_STEP * (double)j;
    }
    if (o->params_path)
        m->opt.params_path = o->params_path;
    RVS_TRY(draw_targets(m, lib, table));
    m->opt.params_path = NULL;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        make_resolution(m, a);
        if (lsf_total(o))
            RVS_TRY(check_lsf(m, a, lib[a], siglib[a]));
    }
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        RVS_TRY(model_arm(ctx, m, a, lib[a], siglib[a], kt, conv[a]));
        RVS_TRY(continuum_arm(m, a));
    }
    /* flux scale: the r-arm median of template x continuum is the target's flux level */
    rmed = rvs_malloc(m->nwave[1] * 2 * sizeof *rmed);
    if (!rmed) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t t = 0; t < m->n; t++) {
        size_t nw = m->nwave[1];
        for (size_t i = 0; i < nw; i++)
            rmed[i] = m->continuum[1][t * nw + i] * conv[1][t * nw + i];
        m->t[t].flux_scale = m->t[t].flux_level / median_of(rmed, nw, rmed + nw);
    }
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        RVS_TRY(observe_arm(m, a, conv[a]));
    for (size_t t = 0; t < m->n; t++) {
        for (int a = 0; a < RVS_DESI_NARMS; a++) {
            size_t nw = m->nwave[a];
            m->t[t].sn[a] = rvs_mock_get_sn(m->flux[a] + t * nw, m->ivar[a] + t * nw,
                                            m->mask[a] + t * nw, nw);
        }
    }
    *mock = m;
    m = NULL;
cleanup:
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        rvs_library_close(&lib[a]);
        free(conv[a]);
        free(siglib[a]);
    }
    free(kt);
    free(table);
    free(rmed);
    rvs_mock_free(&m);
    return status;
}
