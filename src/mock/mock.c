/* mock.c: DESI mock coadds from a template library (doc/mock.md). Per target: true parameters
 * (random inside the library's training hulls, or from a table), the emulator template on the
 * device (rvs_nn_forward, all targets in one batch per arm), rotational broadening
 * (rvs_rotation_apply), the Doppler shift by spline evaluation at lambda*sqrt((1-b)/(1+b))
 * (rvs_spline_eval), a Gaussian resolution matrix per target and arm in DESI's DIA layout applied
 * with rvs_resolution_apply; then on the host a smooth continuum and flux scale, noise for the
 * requested per-pixel S/N, a noisier partly flagged dichroic region, bad columns and cosmics.
 * Random numbers: one xoshiro256** stream per (seed, target, purpose), so a target's values do
 * not depend on how many targets follow it. */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <fitsio.h>

#include "internal.h"
#include "mock/mock.h"
#include "output_files.h"

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

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* The stream of (seed, target, purpose). */
static void rng_init(struct rng *r, uint64_t seed, uint64_t target, uint64_t purpose)
{
    uint64_t x = seed ^ (target * 0xd1342543de82ef95ULL) ^ (purpose * 0xaf251af3b0f025b5ULL);
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(struct rng *r)
{
    uint64_t *s = r->s, result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1). */
static double rng_uniform(struct rng *r) { return (double)(rng_next(r) >> 11) * 0x1.0p-53; }
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
        rng_init(&r, o->seed, t, 1);
        /* every random value is drawn whether or not the table gives it, so that the stream
         * stays aligned */
        double vrad = rng_range(&r, o->vrad_lo, o->vrad_hi);
        double vsini = rng_range(&r, o->vsini_lo, o->vsini_hi);
        double snr = exp(rng_range(&r, log(o->snr_lo), log(o->snr_hi)));
        g->vrad = row && isfinite(row[PCOL_VRAD]) ? row[PCOL_VRAD] : vrad;
        g->vsini = row && isfinite(row[PCOL_VSINI]) ? row[PCOL_VSINI] : vsini;
        g->snr = row && isfinite(row[PCOL_SNR]) ? row[PCOL_SNR] : snr;
        /* flux level (1e-17 erg/s/cm2/Å at the median of r) and continuum shape */
        g->flux_level = exp(rng_range(&r, log(10.0), log(300.0)));
        for (int a = 0; a < RVS_DESI_NARMS; a++)
            for (int k = 0; k < 3; k++)
                g->cont[a][k] = 0.1 * rng_gauss(&r) * o->continuum_scale;
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
            rng_init(&rp, o->seed, t, 2);
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

/* Device part for one arm: NN -> rotation -> shift -> resolution; host gets n x nwave doubles. */
static int model_arm(struct rvs_context *ctx, struct rvs_mock *m, int a,
                     struct rvs_library_arm *lib, double *out)
{
    int status = RVS_OK;
    size_t n = m->n, nw = m->nwave[a], np = rvs_library_npix(lib), es = rvs_context_real_size(ctx);
    struct rvs_nn *nn = NULL;
    struct rvs_rotation *rot = NULL;
    struct rvs_spline_grid *grid = NULL;
    cl_mem dparams = NULL, dtempl = NULL, drot = NULL, dcoef = NULL, didx = NULL, dvel = NULL,
           dlam = NULL, dshift = NULL, dres = NULL, dconv = NULL;
    void *host = rvs_malloc((n * 4 + n + nw + n * nw) * es);
    cl_int *idx = rvs_malloc(n * sizeof *idx);
    double *vsini = rvs_malloc(n * sizeof *vsini);
    if (!host || !idx || !vsini) {
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
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                              n * RVS_MOCK_NDIAG * nw * sizeof(float), m->resolution[a], &dres));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, n * nw * es, NULL, &dconv));
    RVS_TRY(rvs_resolution_apply(ctx, dres, n, RVS_MOCK_NDIAG, nw, dshift, didx, n, dconv));
    RVS_TRY(rvs_buffer_read(ctx, dconv, 0, n * nw * es, host));
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
    free(idx);
    free(vsini);
    return status;
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
            double x = (wave[i] - wave[0]) / (wave[nw - 1] - wave[0]);
            double fwhm = m->lsf_fwhm[a][0] + x * (m->lsf_fwhm[a][1] - m->lsf_fwhm[a][0]);
            double sigma = m->opt.lsf_scale * m->t[t].lsf_factor * fwhm / FWHM_PER_SIGMA;
            rvs_mock_resolution_row(wave, nw, i, sigma, w);
            /* DIA: R[i, j] = data[h - (j - i)][j] (desispec resolution.py) */
            for (int d = -h; d <= h; d++) {
                long j = (long)i + d;
                if (j >= 0 && j < (long)nw)
                    data[(size_t)(h - d) * nw + (size_t)j] = (float)w[d + h];
            }
        }
    }
}

/* Continuum, noise, masks and cosmics of one arm, on the host. */
static int observe_arm(struct rvs_mock *m, int a, const double *conv, const double *rmed)
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
        rng_init(&r, m->opt.seed, t, 10 + (uint64_t)a);
        for (size_t i = 0; i < nw; i++) {
            double x = 2 * (wave[i] - wave[0]) / (wave[nw - 1] - wave[0]) - 1;
            double p1 = x, p2 = 0.5 * (3 * x * x - 1), p3 = 0.5 * (5 * x * x * x - 3 * x);
            model[i] = exp(g->cont[a][0] * p1 + g->cont[a][1] * p2 + g->cont[a][2] * p3) *
                       conv[t * nw + i];
        }
        /* the flux level is set on r: its median model equals flux_level */
        g->flux_scale = g->flux_level / rmed[t];
        for (size_t i = 0; i < nw; i++)
            model[i] *= g->flux_scale;
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
    size_t nrows = 0;
    *mock = NULL;
    if (!o->library_dir) {
        rvs_log(RVS_LOG_ERROR, MOD, "no template library given (--library DIR)");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (!(o->snr_lo > 0 && o->snr_hi >= o->snr_lo && o->vrad_hi >= o->vrad_lo &&
          o->vsini_lo >= 0 && o->vsini_hi >= o->vsini_lo && o->lsf_scale >= 0)) {
        rvs_log(RVS_LOG_ERROR, MOD, "bad ranges: S/N %g:%g, vrad %g:%g, vsini %g:%g, LSF scale "
                "%g (need 0 < LO <= HI for S/N, LO <= HI, vsini >= 0, scale >= 0)",
                o->snr_lo, o->snr_hi, o->vrad_lo, o->vrad_hi, o->vsini_lo, o->vsini_hi,
                o->lsf_scale);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        RVS_TRY(rvs_library_open(o->library_dir, setup_names[a], &lib[a]));
        RVS_TRY(rvs_library_check_desi(lib[a]));
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
        m->cosmic_unflagged[a] = rvs_malloc(nrows * nw);
        conv[a] = rvs_malloc(nrows * nw * sizeof(double));
        if (!m->wave[a] || !m->flux[a] || !m->ivar[a] || !m->mask[a] || !m->resolution[a] ||
            !m->model[a] || !m->cosmic_unflagged[a] || !conv[a]) {
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
        RVS_TRY(model_arm(ctx, m, a, lib[a], conv[a]));
    }
    /* flux level: the r-arm median of template x continuum */
    rmed = rvs_malloc(m->n * sizeof *rmed);
    if (!rmed) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    {
        size_t nw = m->nwave[1];
        double *tmp = rvs_malloc(nw * sizeof *tmp), *work = rvs_malloc(nw * sizeof *work);
        if (!tmp || !work) {
            free(tmp);
            free(work);
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        for (size_t t = 0; t < m->n; t++) {
            for (size_t i = 0; i < nw; i++) {
                double x = 2 * (m->wave[1][i] - m->wave[1][0]) /
                               (m->wave[1][nw - 1] - m->wave[1][0]) -
                           1;
                tmp[i] = exp(m->t[t].cont[1][0] * x + m->t[t].cont[1][1] * 0.5 * (3 * x * x - 1) +
                             m->t[t].cont[1][2] * 0.5 * (5 * x * x * x - 3 * x)) *
                         conv[1][t * nw + i];
            }
            rmed[t] = median_of(tmp, nw, work);
        }
        free(tmp);
        free(work);
    }
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        RVS_TRY(observe_arm(m, a, conv[a], rmed));
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
    }
    free(table);
    free(rmed);
    rvs_mock_free(&m);
    return status;
}
