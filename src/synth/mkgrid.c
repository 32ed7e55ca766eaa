/* mkgrid.c: the grid generator behind rvsfit-cl-mkgrid: DESI arm grids (as rvspecfit's
 * make_interpol builds them), Gaussian degradation of the internal spectrum to each arm,
 * parameter designs (regular grid, Latin hypercube with a seed), a pthread worker pool that
 * computes spectra in bounded batches, and the FITS writer (cfitsio; temporary file + rename).
 * doc/mkgrid.md documents the file layout. */
#include <config.h>

#include <errno.h>
#include <fitsio.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/internal.h"
#include "base/random.h"
#include "rvsfit/mkgrid.h"

const struct rvs_mkgrid_arm rvs_mkgrid_desi_arms[RVS_MKGRID_NARMS] = {
    {"desi_b", "B", 3500.0, 5900.0, 0.4, 1.55},
    {"desi_r", "R", 5660.0, 7720.0, 0.4, 1.55},
    {"desi_z", "Z", 7420.0, 9924.0, 0.4, 1.8}};

int rvs_mkgrid_arm_wavelength(const struct rvs_mkgrid_arm *arm, double **wave, size_t *npix)
{
    int status = RVS_OK;
    *wave = NULL;
    *npix = 0;
    /* rvspecfit make_interpol.process_all: 1000 km/s padding, log step matching `step` at the
     * middle of the range, np.arange semantics (end excluded) */
    double fac = 1.0 + 1000.0 / 299792.458;
    double dl = log(1.0 + arm->step / (0.5 * (arm->lambda_min + arm->lambda_max)));
    double l0 = log(arm->lambda_min / fac), l1 = log(arm->lambda_max * fac);
    size_t n = (size_t)ceil((l1 - l0) / dl);
    double *w = rvs_malloc(n * sizeof *w);
    if (!w) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++)
        w[i] = exp(l0 + dl * (double)i);
    *wave = w;
    *npix = n;
cleanup:
    return status;
}

int rvs_mkgrid_degrade(const double *hw, const double *hf, size_t hn, double fwhm,
                       const double *wave, size_t n, float *out)
{
    int status = RVS_OK;
    double sigma = fwhm / (2.0 * sqrt(2.0 * log(2.0)));
    if (hn < 2 || !(sigma > 0) || wave[0] - 4.0 * sigma < hw[0] ||
        wave[n - 1] + 4.0 * sigma > hw[hn - 1]) {
        rvs_log(RVS_LOG_ERROR, "mkgrid",
                "cannot degrade to %.1f-%.1f A: the internal grid covers %.1f-%.1f A", wave[0],
                wave[n - 1], hw[0], hw[hn - 1]);
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    size_t lo = 0;
    for (size_t i = 0; i < n; i++) {
        double c = wave[i], a = c - 5.0 * sigma, b = c + 5.0 * sigma;
        while (lo < hn && hw[lo] < a)
            lo++;
        /* trapezoid weights on the (non-uniform in A) internal grid, normalised: the kernel
         * is truncated at 5 sigma */
        double sw = 0.0, sf = 0.0;
        for (size_t j = lo; j < hn && hw[j] <= b; j++) {
            double dx = (hw[j] - c) / sigma;
            double width = 0.5 * ((j + 1 < hn ? hw[j + 1] : hw[j]) - (j > 0 ? hw[j - 1] : hw[j]));
            double k = exp(-0.5 * dx * dx) * width;
            sw += k;
            sf += k * hf[j];
        }
        out[i] = (float)(sf / sw);
    }
cleanup:
    return status;
}

/* ---------------------------------------------------------------- designs */

static double uniform01(uint64_t *state) { return rvs_unit53(rvs_splitmix64(state)); }

static int axis_values(const char *name, const struct rvs_mkgrid_range *r, double **vals,
                       size_t *n)
{
    int status = RVS_OK;
    *vals = NULL;
    *n = 0;
    if (!(r->max >= r->min)) {
        rvs_log(RVS_LOG_ERROR, "mkgrid", "%s range %g..%g is empty (min > max)", name, r->min,
                r->max);
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    size_t count;
    if (r->max == r->min)
        count = 1;
    else if (r->step > 0)
        count = (size_t)floor((r->max - r->min) / r->step + 1e-9) + 1;
    else {
        rvs_log(RVS_LOG_ERROR, "mkgrid", "%s range %g..%g needs a step for a regular grid",
                name, r->min, r->max);
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    if (count > 100000) {
        rvs_log(RVS_LOG_ERROR, "mkgrid", "%s axis would have %zu values", name, count);
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    *vals = rvs_malloc(count * sizeof **vals);
    if (!*vals) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < count; i++)
        (*vals)[i] = r->min + (double)i * (count > 1 ? r->step : 0.0);
    *n = count;
cleanup:
    return status;
}

int rvs_mkgrid_design_points(const struct rvs_mkgrid_design *d, struct rvs_synth_params **points,
                             size_t *npoints)
{
    int status = RVS_OK;
    double *ax[4] = {NULL, NULL, NULL, NULL};
    size_t nax[4] = {0, 0, 0, 0};
    struct rvs_synth_params *pts = NULL;
    size_t n = 0;
    *points = NULL;
    *npoints = 0;
    const struct rvs_mkgrid_range *r[4] = {&d->teff, &d->logg, &d->feh, &d->alpha};
    static const char *const names[4] = {"Teff", "log g", "[Fe/H]", "[alpha/Fe]"};
    for (int k = 0; k < 4; k++) {
        if (!(r[k]->max >= r[k]->min)) {
            rvs_log(RVS_LOG_ERROR, "mkgrid", "%s range %g..%g is empty (min > max)", names[k],
                    r[k]->min, r[k]->max);
            status = RVS_ERR_INVALID_ARGUMENT;
            goto cleanup;
        }
    }
    if (d->nrandom > 0) {
        /* the Teff axis: uniform u -> log10 Teff through the piecewise-linear inverse of the
         * cumulative fractions at the knots */
        double cx[RVS_MKGRID_MAX_KNOTS + 2], cf[RVS_MKGRID_MAX_KNOTS + 2];
        size_t nc = 0;
        if (d->teff_nknots > RVS_MKGRID_MAX_KNOTS) {
            rvs_log(RVS_LOG_ERROR, "mkgrid", "at most %d Teff knots", RVS_MKGRID_MAX_KNOTS);
            status = RVS_ERR_INVALID_ARGUMENT;
            goto cleanup;
        }
        cx[nc] = log10(d->teff.min);
        cf[nc++] = 0.0;
        for (size_t k = 0; k < d->teff_nknots; k++) {
            double t = d->teff_knot[k], f = d->teff_frac[k];
            if (!(t > d->teff.min && t < d->teff.max && f > cf[nc - 1] && f < 1.0 &&
                  log10(t) > cx[nc - 1])) {
                rvs_log(RVS_LOG_ERROR, "mkgrid",
                        "Teff knot %g with fraction %g: knots must increase inside the Teff "
                        "range %g..%g and fractions increase inside (0, 1)",
                        t, f, d->teff.min, d->teff.max);
                status = RVS_ERR_INVALID_ARGUMENT;
                goto cleanup;
            }
            cx[nc] = log10(t);
            cf[nc++] = f;
        }
        cx[nc] = log10(d->teff.max);
        cf[nc++] = 1.0;
        /* Latin hypercube in (log10 Teff, log g, [Fe/H], [alpha/Fe]): each axis cut into N
         * strata, one point per stratum, strata paired by random permutations; points in the
         * unphysical corner are dropped and the hypercube is redrawn for the remainder */
        size_t want = d->nrandom;
        pts = rvs_malloc(want * sizeof *pts);
        if (!pts) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        uint64_t state = d->seed;
        for (int round = 0; round < 200 && n < want; round++) {
            size_t m = want - n;
            if (m < 16)
                m = 16;
            double *u = rvs_malloc(4 * m * sizeof *u);
            size_t *perm = rvs_malloc(m * sizeof *perm);
            if (!u || !perm) {
                free(u);
                free(perm);
                status = RVS_ERR_NOMEM;
                goto cleanup;
            }
            for (int k = 0; k < 4; k++) {
                for (size_t i = 0; i < m; i++)
                    perm[i] = i;
                for (size_t i = m - 1; i > 0; i--) {
                    size_t j = (size_t)(uniform01(&state) * (double)(i + 1));
                    size_t tmp = perm[i];
                    perm[i] = perm[j];
                    perm[j] = tmp;
                }
                for (size_t i = 0; i < m; i++)
                    u[4 * i + k] = ((double)perm[i] + uniform01(&state)) / (double)m;
            }
            for (size_t i = 0; i < m && n < want; i++) {
                double ut = u[4 * i];
                size_t k = 0;
                while (k + 2 < nc && ut >= cf[k + 1])
                    k++;
                double lt = cx[k] + (cx[k + 1] - cx[k]) * (ut - cf[k]) / (cf[k + 1] - cf[k]);
                struct rvs_synth_params p = {
                    pow(10.0, lt),
                    d->logg.min + (d->logg.max - d->logg.min) * u[4 * i + 1],
                    d->feh.min + (d->feh.max - d->feh.min) * u[4 * i + 2],
                    d->alpha.min + (d->alpha.max - d->alpha.min) * u[4 * i + 3]};
                const char *why;
                if (rvs_synth_params_check(&p, &why) == RVS_OK)
                    pts[n++] = p;
            }
            free(u);
            free(perm);
        }
    } else {
        size_t total = 1;
        for (int k = 0; k < 4; k++) {
            RVS_TRY(axis_values(names[k], r[k], &ax[k], &nax[k]));
            total *= nax[k];
        }
        if (total > 10000000) {
            rvs_log(RVS_LOG_ERROR, "mkgrid", "the regular grid would have %zu points", total);
            status = RVS_ERR_INVALID_ARGUMENT;
            goto cleanup;
        }
        pts = rvs_malloc(total * sizeof *pts);
        if (!pts) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        for (size_t a = 0; a < nax[0]; a++)
            for (size_t b = 0; b < nax[1]; b++)
                for (size_t c = 0; c < nax[2]; c++)
                    for (size_t e = 0; e < nax[3]; e++) {
                        struct rvs_synth_params p = {ax[0][a], ax[1][b], ax[2][c], ax[3][e]};
                        const char *why;
                        if (rvs_synth_params_check(&p, &why) == RVS_OK)
                            pts[n++] = p;
                    }
    }
    if (n == 0) {
        rvs_log(RVS_LOG_ERROR, "mkgrid",
                "the design has no valid point (limits: Teff 2800-12500, log g -0.5..6, "
                "[Fe/H] -4.5..1, [alpha/Fe] -0.5..1.2, log g >= 4 log10(Teff/4000))");
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    if (d->nrandom > 0 && n < d->nrandom)
        rvs_log(RVS_LOG_WARNING, "mkgrid", "only %zu of %zu random points are valid", n,
                d->nrandom);
    *points = pts;
    *npoints = n;
    pts = NULL;
cleanup:
    for (int k = 0; k < 4; k++)
        free(ax[k]);
    free(pts);
    return status;
}

/* ---------------------------------------------------------------- FITS helpers */

/* Drains cfitsio's message stack into the log, naming the file and what was being done. */
static int fits_fail(int fstatus, const char *path, const char *what)
{
    char msg[FLEN_ERRMSG], text[FLEN_STATUS];
    fits_get_errstatus(fstatus, text);
    rvs_log(RVS_LOG_ERROR, "mkgrid", "%s: %s: %s (cfitsio %d)", path, what, text, fstatus);
    while (fits_read_errmsg(msg))
        rvs_log(RVS_LOG_ERROR, "mkgrid", "%s: cfitsio: %s", path, msg);
    return RVS_ERR_IO;
}

/* Runs a cfitsio call (status in `fstatus`); on failure logs it and jumps to cleanup. Calling
 * it with 0 checks the status left by a run of unchecked calls (cfitsio skips calls once the
 * status is set, so a block of them fails as a whole). */
#define FITS_TRY(call, what)                                                                      \
    do {                                                                                           \
        (void)(call);                                                                              \
        if (fstatus) {                                                                             \
            status = fits_fail(fstatus, path, what);                                               \
            goto cleanup;                                                                          \
        }                                                                                          \
    } while (0)

/* One output file: the arms it holds and their HDU numbers. */
struct out_file {
    char final_path[4096];
    char tmp_path[4096];
    fitsfile *f;
    unsigned arms;
    double fwhm[RVS_MKGRID_NARMS]; /* Å, per arm */
    int hdu_params;
    int hdu_flux[RVS_MKGRID_NARMS];
};

static int write_header(struct out_file *of, const struct rvs_mkgrid_output_options *opt,
                        const struct rvs_synth *synth, size_t n)
{
    int status = RVS_OK, fstatus = 0;
    const char *path = of->tmp_path;
    long nspec = (long)n;
    double res = 1.0 / (log(rvs_synth_wavelength(synth)[1]) - log(rvs_synth_wavelength(synth)[0]));
    FITS_TRY(fits_create_img(of->f, BYTE_IMG, 0, NULL, &fstatus), "creating the primary HDU");
    FITS_TRY(fits_write_key_str(of->f, "ORIGIN", "rvsfit-cl-mkgrid", "generator", &fstatus),
             "writing ORIGIN");
    FITS_TRY(fits_write_key_str(of->f, "MKVERS", PACKAGE_VERSION, "rvsfit-cl version", &fstatus),
             "writing MKVERS");
    FITS_TRY(fits_write_key_lng(of->f, "FORMVERS", 1, "grid file format version", &fstatus),
             "writing FORMVERS");
    FITS_TRY(fits_write_key_str(of->f, "MODE", opt->mode ? opt->mode : "grid",
                                "single, grid or random", &fstatus),
             "writing MODE");
    FITS_TRY(fits_write_key_lng(of->f, "SEED", (long)opt->seed, "Latin-hypercube seed", &fstatus),
             "writing SEED");
    if (opt->teff_cdf)
        FITS_TRY(fits_write_key_str(of->f, "TEFFCDF", opt->teff_cdf,
                                    "fraction of points below each Teff: T1,F1,...", &fstatus),
                 "writing TEFFCDF");
    FITS_TRY(fits_write_key_lng(of->f, "NSPEC", nspec, "number of spectra", &fstatus),
             "writing NSPEC");
    FITS_TRY(fits_write_key_str(of->f, "LINELIST",
                                rvs_synth_uses_linelist_files(synth) ? "linemake" : "builtin",
                                "line list source", &fstatus),
             "writing LINELIST");
    FITS_TRY(fits_write_key_dbl(of->f, "RESINT", res, 6, "internal sampling 1/d(ln lambda)",
                                &fstatus),
             "writing RESINT");
    FITS_TRY(fits_write_key_str(of->f, "VDWMODE",
                                rvs_synth_vdw_mode(synth) == RVS_SYNTH_VDW_ABO_SCALED
                                    ? "abo-scaled"
                                    : "unsoeld",
                                "van der Waals widths of metal lines", &fstatus),
             "writing VDWMODE");
    FITS_TRY(fits_write_key_dbl(of->f, "SAMPBRD", rvs_synth_sampling_broadening(synth), 3,
                                "pixels added in quadrature to metal line widths", &fstatus),
             "writing SAMPBRD");
    FITS_TRY(fits_write_key_str(of->f, "FLUXTYPE", "surface flux F_lambda",
                                "erg/s/cm2/Angstrom, vacuum wavelengths", &fstatus),
             "writing FLUXTYPE");
    FITS_TRY(fits_write_comment(of->f, "Synthetic LTE spectra, see doc/mkgrid.md of rvsfit-cl",
                                &fstatus),
             "writing a comment");

    /* parameter table */
    char *ttype[] = {"TEFF", "LOGG", "FEH", "ALPHA", "VMIC", "FLAG"};
    char *tform[] = {"1D", "1D", "1D", "1D", "1D", "1J"};
    char *tunit[] = {"K", "", "", "", "km/s", ""};
    FITS_TRY(fits_create_tbl(of->f, BINARY_TBL, 0, 6, ttype, tform, tunit, "PARAMS", &fstatus),
             "creating the PARAMS table");
    fits_get_hdu_num(of->f, &of->hdu_params);
    for (int a = 0; a < RVS_MKGRID_NARMS; a++) {
        if (!(of->arms & (1u << a)))
            continue;
        const struct rvs_mkgrid_arm *arm = &rvs_mkgrid_desi_arms[a];
        double *wave = NULL;
        size_t npix = 0;
        RVS_TRY(rvs_mkgrid_arm_wavelength(arm, &wave, &npix));
        char extname[32];
        long naxes1[1] = {(long)npix};
        snprintf(extname, sizeof extname, "%s_WAVELENGTH", arm->prefix);
        fits_create_img(of->f, DOUBLE_IMG, 1, naxes1, &fstatus);
        fits_write_key_str(of->f, "EXTNAME", extname, "vacuum wavelengths", &fstatus);
        fits_write_key_str(of->f, "BUNIT", "Angstrom", NULL, &fstatus);
        fits_write_key_str(of->f, "ARM", arm->name, "rvspecfit setup name", &fstatus);
        fits_write_key_str(of->f, "AIRORVAC", "vac", NULL, &fstatus);
        fits_write_img(of->f, TDOUBLE, 1, (LONGLONG)npix, wave, &fstatus);
        free(wave);
        if (fstatus)
            FITS_TRY(0, "writing the wavelength HDU");
        long naxes2[2] = {(long)npix, nspec};
        snprintf(extname, sizeof extname, "%s_FLUX", arm->prefix);
        fits_create_img(of->f, FLOAT_IMG, 2, naxes2, &fstatus);
        fits_write_key_str(of->f, "EXTNAME", extname, "one spectrum per row", &fstatus);
        fits_write_key_str(of->f, "BUNIT", "erg/(s cm2 Angstrom)", "surface flux", &fstatus);
        fits_write_key_str(of->f, "ARM", arm->name, "rvspecfit setup name", &fstatus);
        fits_write_key_dbl(of->f, "FWHM", of->fwhm[a], 4, "Gaussian resolution FWHM [Angstrom]",
                           &fstatus);
        if (fstatus)
            FITS_TRY(0, "creating the flux HDU");
        fits_get_hdu_num(of->f, &of->hdu_flux[a]);
    }
cleanup:
    return status;
}

/* ---------------------------------------------------------------- worker pool */

struct pool {
    const struct rvs_synth *synth;
    const struct rvs_synth_params *points;
    size_t first, count; /* the batch */
    size_t next;         /* next index to take, under lock */
    pthread_mutex_t lock;
    unsigned arms;
    double fwhm[RVS_MKGRID_NARMS]; /* Å, the LSF each arm is degraded to */
    double *awave[RVS_MKGRID_NARMS];
    size_t anpix[RVS_MKGRID_NARMS];
    float *aflux[RVS_MKGRID_NARMS]; /* [count][npix] */
    int *flag;
    int fatal; /* out of memory in a worker */
};

static void *worker(void *arg)
{
    struct pool *p = arg;
    size_t npix = rvs_synth_npix(p->synth);
    double *flux = malloc(npix * sizeof *flux);
    struct rvs_synth_work *work = NULL;
    if (!flux || rvs_synth_work_create(p->synth, &work) != RVS_OK) {
        free(flux);
        pthread_mutex_lock(&p->lock);
        p->fatal = 1;
        pthread_mutex_unlock(&p->lock);
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&p->lock);
        size_t i = p->next++;
        pthread_mutex_unlock(&p->lock);
        if (i >= p->count)
            break;
        const struct rvs_synth_params *par = &p->points[p->first + i];
        int st = rvs_synth_spectrum_work(p->synth, work, par, flux, NULL);
        for (int a = 0; a < RVS_MKGRID_NARMS && st == RVS_OK; a++) {
            if (!(p->arms & (1u << a)))
                continue;
            st = rvs_mkgrid_degrade(rvs_synth_wavelength(p->synth), flux, npix,
                                    p->fwhm[a], p->awave[a], p->anpix[a],
                                    &p->aflux[a][i * p->anpix[a]]);
        }
        if (st != RVS_OK) {
            rvs_log(RVS_LOG_WARNING, "mkgrid",
                    "spectrum %zu (Teff=%g logg=%g [Fe/H]=%g [a/Fe]=%g) failed: %s; flagged",
                    p->first + i, par->teff, par->logg, par->feh, par->alpha, rvs_strerror(st));
            p->flag[i] = 1;
            for (int a = 0; a < RVS_MKGRID_NARMS; a++)
                if (p->arms & (1u << a))
                    for (size_t k = 0; k < p->anpix[a]; k++)
                        p->aflux[a][i * p->anpix[a] + k] = NAN;
        } else {
            p->flag[i] = 0;
        }
    }
    free(flux);
    rvs_synth_work_destroy(&work);
    return NULL;
}

static int is_file_path(const char *path)
{
    size_t n = strlen(path);
    static const char *const ext[] = {".fits", ".fit", ".fits.gz", ".fts"};
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++) {
        size_t e = strlen(ext[i]);
        if (n > e && strcmp(path + n - e, ext[i]) == 0)
            return 1;
    }
    return 0;
}

int rvs_mkgrid_run(const struct rvs_synth *synth, const struct rvs_synth_params *points,
                   size_t npoints, const struct rvs_mkgrid_output_options *opt, size_t *nfailed)
{
    int status = RVS_OK, fstatus = 0;
    struct out_file files[RVS_MKGRID_NARMS];
    int nfiles = 0;
    struct pool pool;
    pthread_t *threads = NULL;
    int lock_ready = 0;
    const char *path = opt->path;
    size_t failed = 0;
    unsigned arms = opt->arms ? opt->arms : (1u << RVS_MKGRID_NARMS) - 1;
    memset(files, 0, sizeof files);
    memset(&pool, 0, sizeof pool);
    for (int a = 0; a < RVS_MKGRID_NARMS; a++) {
        double fwhm = opt->fwhm[a] > 0 ? opt->fwhm[a] : rvs_mkgrid_desi_arms[a].fwhm;
        pool.fwhm[a] = fwhm;
        for (int i = 0; i < RVS_MKGRID_NARMS; i++)
            files[i].fwhm[a] = fwhm;
    }
    if (nfailed)
        *nfailed = 0;
    if (npoints == 0 || !path || !*path) {
        rvs_log(RVS_LOG_ERROR, "mkgrid", "nothing to compute or no output path");
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    if (strlen(path) > 3800) {
        rvs_log(RVS_LOG_ERROR, "mkgrid", "output path too long");
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    /* the files: one with every arm, or one per arm in a directory */
    if (is_file_path(path)) {
        snprintf(files[0].final_path, sizeof files[0].final_path, "%s", path);
        files[0].arms = arms;
        nfiles = 1;
    } else {
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
            rvs_log(RVS_LOG_ERROR, "mkgrid",
                    "--out %s is neither an existing directory nor a name ending in .fits", path);
            status = RVS_ERR_IO;
            goto cleanup;
        }
        for (int a = 0; a < RVS_MKGRID_NARMS; a++) {
            if (!(arms & (1u << a)))
                continue;
            snprintf(files[nfiles].final_path, sizeof files[nfiles].final_path,
                     "%.3800s/rvsfit-grid-%s.fits", path, rvs_mkgrid_desi_arms[a].name);
            files[nfiles].arms = 1u << a;
            nfiles++;
        }
    }
    for (int i = 0; i < nfiles; i++) {
        struct out_file *of = &files[i];
        snprintf(of->tmp_path, sizeof of->tmp_path, "%.4000s.tmp%ld", of->final_path,
                 (long)getpid());
        /* cfitsio's "!" overwrites a stale temporary file of the same name */
        char cname[4200];
        snprintf(cname, sizeof cname, "!%s", of->tmp_path);
        path = of->final_path;
        FITS_TRY(fits_create_file(&of->f, cname, &fstatus), "cannot create the output file");
        path = of->tmp_path;
        RVS_TRY(write_header(of, opt, synth, npoints));
    }
    path = opt->path;

    /* batches */
    int nthreads = opt->nthreads > 0 ? opt->nthreads : 1;
    size_t batch = opt->batch ? opt->batch : (size_t)nthreads * 64;
    pool.synth = synth;
    pool.points = points;
    pool.arms = arms;
    for (int a = 0; a < RVS_MKGRID_NARMS; a++) {
        if (!(arms & (1u << a)))
            continue;
        RVS_TRY(rvs_mkgrid_arm_wavelength(&rvs_mkgrid_desi_arms[a], &pool.awave[a],
                                          &pool.anpix[a]));
        pool.aflux[a] = rvs_malloc(batch * pool.anpix[a] * sizeof(float));
        if (!pool.aflux[a]) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
    }
    pool.flag = rvs_calloc(batch, sizeof *pool.flag);
    threads = rvs_calloc((size_t)nthreads, sizeof *threads);
    if (!pool.flag || !threads) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    if (pthread_mutex_init(&pool.lock, NULL) != 0) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    lock_ready = 1;
    for (size_t first = 0; first < npoints; first += batch) {
        pool.first = first;
        pool.count = npoints - first < batch ? npoints - first : batch;
        pool.next = 0;
        int started = 0;
        for (int t = 0; t < nthreads; t++) {
            if (pthread_create(&threads[t], NULL, worker, &pool) != 0)
                break;
            started++;
        }
        if (started == 0)
            worker(&pool); /* no thread could start: do the batch here */
        for (int t = 0; t < started; t++)
            pthread_join(threads[t], NULL);
        if (pool.fatal) {
            rvs_log(RVS_LOG_ERROR, "mkgrid", "out of memory in a worker thread");
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        /* rows first..first+count of every file */
        for (int i = 0; i < nfiles; i++) {
            struct out_file *of = &files[i];
            path = of->tmp_path;
            for (int a = 0; a < RVS_MKGRID_NARMS; a++) {
                if (!(of->arms & (1u << a)))
                    continue;
                FITS_TRY(fits_movabs_hdu(of->f, of->hdu_flux[a], NULL, &fstatus),
                         "moving to the flux HDU");
                LONGLONG start = (LONGLONG)first * (LONGLONG)pool.anpix[a] + 1;
                FITS_TRY(fits_write_img(of->f, TFLOAT, start,
                                        (LONGLONG)pool.count * (LONGLONG)pool.anpix[a],
                                        pool.aflux[a], &fstatus),
                         "writing flux rows");
            }
            FITS_TRY(fits_movabs_hdu(of->f, of->hdu_params, NULL, &fstatus),
                     "moving to PARAMS");
            for (size_t k = 0; k < pool.count; k++) {
                const struct rvs_synth_params *par = &points[first + k];
                double v[5] = {par->teff, par->logg, par->feh, par->alpha,
                               rvs_synth_vmic(synth, par)};
                LONGLONG row = (LONGLONG)(first + k) + 1;
                for (int c = 0; c < 5; c++)
                    fits_write_col(of->f, TDOUBLE, c + 1, row, 1, 1, &v[c], &fstatus);
                fits_write_col(of->f, TINT, 6, row, 1, 1, &pool.flag[k], &fstatus);
            }
            if (fstatus)
                FITS_TRY(0, "writing PARAMS rows");
        }
        path = opt->path;
        for (size_t k = 0; k < pool.count; k++)
            failed += pool.flag[k] != 0;
        rvs_log(RVS_LOG_INFO, "mkgrid", "%zu of %zu spectra done", first + pool.count, npoints);
    }
    for (int i = 0; i < nfiles; i++) {
        struct out_file *of = &files[i];
        path = of->tmp_path;
        FITS_TRY(fits_movabs_hdu(of->f, 1, NULL, &fstatus), "moving to the primary HDU");
        FITS_TRY(fits_write_key_lng(of->f, "NFAILED", (long)failed, "spectra flagged as failed",
                                    &fstatus),
                 "writing NFAILED");
        FITS_TRY(fits_write_chksum(of->f, &fstatus), "writing checksums");
        FITS_TRY(fits_close_file(of->f, &fstatus), "closing the file");
        of->f = NULL;
    }
    for (int i = 0; i < nfiles; i++) {
        if (rename(files[i].tmp_path, files[i].final_path) != 0) {
            rvs_log(RVS_LOG_ERROR, "mkgrid", "cannot rename %s to %s: %s", files[i].tmp_path,
                    files[i].final_path, strerror(errno));
            status = RVS_ERR_IO;
            goto cleanup;
        }
        files[i].tmp_path[0] = '\0';
    }
    if (failed)
        rvs_log(RVS_LOG_WARNING, "mkgrid", "%zu of %zu spectra failed (FLAG = 1, NaN flux)",
                failed, npoints);
    if (nfailed)
        *nfailed = failed;
cleanup:
    for (int i = 0; i < nfiles; i++) {
        int fs = 0;
        if (files[i].f)
            fits_close_file(files[i].f, &fs);
        if (files[i].tmp_path[0])
            unlink(files[i].tmp_path); /* never leave a half-written file behind */
    }
    if (lock_ready)
        pthread_mutex_destroy(&pool.lock);
    for (int a = 0; a < RVS_MKGRID_NARMS; a++) {
        free(pool.awave[a]);
        free(pool.aflux[a]);
    }
    free(pool.flag);
    free(threads);
    return status;
}
