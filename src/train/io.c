/* train/io.c: the trainer's files. Reads a grid of spectra (doc/trainer.md), derives
 * rvspecfit's parameter mapping from it, computes the hulls of the mapped grid points, and
 * writes the trained network as a template library (doc/template-library.md, version 1):
 * primary keywords, WAVE, PARAMS, the weights as trained, HULL<k>, checksums in every HDU,
 * through a temporary file and a rename. This writer is deliberately small; it can give way to
 * a shared library writer when one exists. */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <fitsio.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/internal.h"
#include "rvsfit/library.h"
#include "rvsfit/train_io.h"

/* Logs a failed cfitsio call with its file and cfitsio's message stack (then cleared). */
static int fits_fail(int fst, const char *file, const char *fmt, ...) RVS_PRINTF_LIKE(3, 4);
static int fits_fail(int fst, const char *file, const char *fmt, ...)
{
    char what[256], text[FLEN_STATUS] = "", msg[FLEN_ERRMSG];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    fits_get_errstatus(fst, text);
    rvs_log(RVS_LOG_ERROR, "train", "%s: %s (cfitsio %d: %s)", file, what, fst, text);
    while (fits_read_errmsg(msg))
        rvs_log(RVS_LOG_ERROR, "train", "%s: cfitsio: %s", file, msg);
    switch (fst) {
    case MEMORY_ALLOCATION:
        return RVS_ERR_NOMEM;
    case FILE_NOT_OPENED:
    case FILE_NOT_CREATED:
    case READ_ERROR:
    case WRITE_ERROR:
        return RVS_ERR_IO;
    default:
        return RVS_ERR_FORMAT;
    }
}

#define FITS_TRY(file, ...)                                                                        \
    do {                                                                                           \
        if (fst > 0) {                                                                             \
            status = fits_fail(fst, (file), __VA_ARGS__);                                          \
            goto cleanup;                                                                          \
        }                                                                                          \
    } while (0)

/* ------------------------------------------------------------------ grid */

void rvs_train_grid_free(struct rvs_train_grid *g)
{
    if (!g)
        return;
    free(g->params);
    free(g->logflux);
    free(g->wave);
    memset(g, 0, sizeof *g);
}

/* The HDU names holding one arm's spectra: a single-arm grid has FLUX and WAVE; a multi-arm grid
 * written by rvsfit-cl-mkgrid (doc/mkgrid.md) has <ARM>_FLUX and <ARM>_WAVELENGTH, where ARM is
 * the upper-cased last letter of the setup name ("desi_b" -> B). */
static int grid_hdu_names(fitsfile *f, const char *setup, char *flux, char *wave, size_t size)
{
    int fst = 0;
    snprintf(flux, size, "FLUX");
    snprintf(wave, size, "WAVE");
    if (fits_movnam_hdu(f, IMAGE_HDU, flux, 0, &fst) == 0 || !setup || !*setup) {
        fits_clear_errmsg();
        return 0;
    }
    fits_clear_errmsg();
    char arm = (char)toupper((unsigned char)setup[strlen(setup) - 1]);
    snprintf(flux, size, "%c_FLUX", arm);
    snprintf(wave, size, "%c_WAVELENGTH", arm);
    return 1;
}

int rvs_train_grid_read(const char *path, const char *setup, const char *const *names,
                        size_t nparam, struct rvs_train_grid *g)
{
    int status = RVS_OK, fst = 0;
    fitsfile *f = NULL;
    double *col = NULL;
    unsigned char *keep = NULL;
    size_t nkept = 0;
    char flux_hdu[32], wave_hdu[32];
    memset(g, 0, sizeof *g);
    if (nparam == 0 || nparam > RVS_NN_MAX_INPUTS) {
        rvs_log(RVS_LOG_ERROR, "train", "%zu parameters requested; 1 to %d are supported", nparam,
                RVS_NN_MAX_INPUTS);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    fits_open_file(&f, path, READONLY, &fst);
    FITS_TRY(path, "cannot open the grid file (does it exist and is it FITS?)");
    char value[FLEN_VALUE];
    strcpy(g->gridname, "unknown");
    if (fits_read_key_str(f, "GRIDNAME", value, NULL, &fst) == 0)
        snprintf(g->gridname, sizeof g->gridname, "%s", value);
    else if (fst == KEY_NO_EXIST) {
        fst = 0;
        fits_clear_errmsg();
    }
    FITS_TRY(path, "cannot read keyword GRIDNAME of the primary header");
    /* rvsfit-cl-mkgrid's physics options, carried into the library so that a check against
     * fresh spectra can make them with the same physics */
    g->vdw_mode[0] = '\0';
    g->sampling_broadening = NAN;
    if (fits_read_key_str(f, "VDWMODE", value, NULL, &fst) == 0) {
        snprintf(g->vdw_mode, sizeof g->vdw_mode, "%s", value);
        if (fits_read_key_dbl(f, "SAMPBRD", &g->sampling_broadening, NULL, &fst) == KEY_NO_EXIST) {
            fst = 0;
            fits_clear_errmsg();
        }
    } else if (fst == KEY_NO_EXIST) {
        fst = 0;
        fits_clear_errmsg();
    }
    FITS_TRY(path, "cannot read keyword VDWMODE or SAMPBRD of the primary header");
    if (fits_read_key_str(f, "SETUP", value, NULL, &fst) == 0)
        snprintf(g->setup, sizeof g->setup, "%s", value);
    else if (fst == KEY_NO_EXIST) {
        fst = 0;
        fits_clear_errmsg();
    }
    FITS_TRY(path, "cannot read keyword SETUP of the primary header");

    /* PARAMS: one scalar numeric column per requested parameter */
    fits_movnam_hdu(f, BINARY_TBL, "PARAMS", 0, &fst);
    FITS_TRY(path, "no binary table HDU 'PARAMS' (the grid's parameter table)");
    long nrows = 0;
    fits_get_num_rows(f, &nrows, &fst);
    FITS_TRY(path, "cannot read the row count of HDU PARAMS");
    if (nrows < 1) {
        rvs_log(RVS_LOG_ERROR, "train", "%s: HDU PARAMS has no rows", path);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    g->nspec = (size_t)nrows;
    g->nparam = nparam;
    g->params = rvs_malloc(g->nspec * nparam * sizeof *g->params);
    col = rvs_malloc(g->nspec * sizeof *col);
    if (!g->params || !col) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t p = 0; p < nparam; p++) {
        if (strlen(names[p]) == 0 || strlen(names[p]) > RVS_TRAIN_NAME_MAX) {
            rvs_log(RVS_LOG_ERROR, "train", "parameter name '%s' must have 1 to %d characters",
                    names[p], RVS_TRAIN_NAME_MAX);
            status = RVS_ERR_INVALID_ARGUMENT;
            goto cleanup;
        }
        for (size_t c = 0; names[p][c]; c++)
            g->names[p][c] = (char)tolower((unsigned char)names[p][c]);
        int colnum = 0, typecode = 0, anynul = 0;
        long repeat = 0, width = 0;
        char tmpl[RVS_TRAIN_NAME_MAX + 1];
        snprintf(tmpl, sizeof tmpl, "%s", names[p]);
        fits_get_colnum(f, CASEINSEN, tmpl, &colnum, &fst);
        FITS_TRY(path, "HDU PARAMS has no column '%s' (columns are the parameters, e.g. TEFF, "
                 "LOGG, FEH, ALPHA; see --params)", names[p]);
        fits_get_coltype(f, colnum, &typecode, &repeat, &width, &fst);
        FITS_TRY(path, "cannot read the type of column %s of HDU PARAMS", names[p]);
        if (typecode == TSTRING || typecode == TLOGICAL || repeat != 1) {
            rvs_log(RVS_LOG_ERROR, "train", "%s: column %s of HDU PARAMS must be one number per "
                    "row", path, names[p]);
            status = RVS_ERR_FORMAT;
            goto cleanup;
        }
        fits_read_col(f, TDOUBLE, colnum, 1, 1, nrows, NULL, col, &anynul, &fst);
        FITS_TRY(path, "cannot read column %s of HDU PARAMS", names[p]);
        for (size_t i = 0; i < g->nspec; i++) {
            if (!isfinite(col[i])) {
                rvs_log(RVS_LOG_ERROR, "train", "%s: PARAMS row %zu, column %s is not finite",
                        path, i + 1, names[p]);
                status = RVS_ERR_FORMAT;
                goto cleanup;
            }
            g->params[i * nparam + p] = col[i];
        }
    }

    /* FLAG (mkgrid): spectra whose synthesis failed are NaN rows with FLAG != 0; skip them */
    keep = rvs_malloc(g->nspec);
    if (!keep) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    memset(keep, 1, g->nspec);
    {
        int flagcol = 0, anynul = 0;
        if (fits_get_colnum(f, CASEINSEN, "FLAG", &flagcol, &fst) == 0) {
            fits_read_col(f, TDOUBLE, flagcol, 1, 1, nrows, NULL, col, &anynul, &fst);
            FITS_TRY(path, "cannot read column FLAG of HDU PARAMS");
            for (size_t i = 0; i < g->nspec; i++)
                keep[i] = col[i] == 0;
        } else {
            fst = 0;
            fits_clear_errmsg();
        }
    }
    for (size_t i = 0; i < g->nspec; i++)
        nkept += keep[i];
    if (nkept < g->nspec)
        rvs_log(RVS_LOG_WARNING, "train", "%s: %zu of %zu spectra have FLAG set and are skipped",
                path, g->nspec - nkept, g->nspec);
    if (nkept == 0) {
        rvs_log(RVS_LOG_ERROR, "train", "%s: every spectrum has FLAG set", path);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    grid_hdu_names(f, setup, flux_hdu, wave_hdu, sizeof flux_hdu);

    /* WAVE: npix vacuum wavelengths, log-uniform (the library format requires it) */
    int naxis = 0, bitpix = 0;
    long naxes[3] = {0, 0, 0};
    fits_movnam_hdu(f, IMAGE_HDU, wave_hdu, 0, &fst);
    FITS_TRY(path, "no image HDU '%s' (the wavelength grid)", wave_hdu);
    fits_get_img_param(f, 3, &bitpix, &naxis, naxes, &fst);
    FITS_TRY(path, "cannot read the shape of HDU %s", wave_hdu);
    if (naxis != 1 || naxes[0] < 2) {
        rvs_log(RVS_LOG_ERROR, "train", "%s: HDU WAVE must be a 1-D image of at least 2 values",
                path);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    g->npix = (size_t)naxes[0];
    g->wave = rvs_malloc(g->npix * sizeof *g->wave);
    if (!g->wave) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    int anynul = 0;
    fits_read_img(f, TDOUBLE, 1, (LONGLONG)g->npix, NULL, g->wave, &anynul, &fst);
    FITS_TRY(path, "cannot read HDU WAVE");
    for (size_t j = 0; j < g->npix; j++)
        if (!(isfinite(g->wave[j]) && g->wave[j] > 0 && (j == 0 || g->wave[j] > g->wave[j - 1]))) {
            rvs_log(RVS_LOG_ERROR, "train", "%s: WAVE[%zu] = %g: wavelengths must be positive "
                    "and strictly increasing", path, j, g->wave[j]);
            status = RVS_ERR_FORMAT;
            goto cleanup;
        }
    g->logstep = (log(g->wave[g->npix - 1]) - log(g->wave[0])) / (double)(g->npix - 1);
    for (size_t j = 0; j + 1 < g->npix; j++)
        if (fabs(log(g->wave[j + 1] / g->wave[j]) / g->logstep - 1) > 1e-6) {
            rvs_log(RVS_LOG_ERROR, "train", "%s: WAVE is not log-uniform at pixel %zu (step "
                    "%.10g, mean %.10g); the template library needs a log-uniform grid",
                    path, j, log(g->wave[j + 1] / g->wave[j]), g->logstep);
            status = RVS_ERR_FORMAT;
            goto cleanup;
        }

    /* FLUX: [nspec, npix] */
    fits_movnam_hdu(f, IMAGE_HDU, flux_hdu, 0, &fst);
    FITS_TRY(path, "no image HDU '%s' (the spectra, one per row)", flux_hdu);
    fits_get_img_param(f, 3, &bitpix, &naxis, naxes, &fst);
    FITS_TRY(path, "cannot read the shape of HDU %s", flux_hdu);
    if (naxis != 2 || (size_t)naxes[0] != g->npix || (size_t)naxes[1] != g->nspec) {
        rvs_log(RVS_LOG_ERROR, "train",
                "%s: HDU FLUX has shape [%ld, %ld] (NAXIS=%d); it must be [nspec, npix] = "
                "[%zu, %zu] (PARAMS rows, WAVE length)",
                path, naxis >= 2 ? naxes[1] : 0L, naxes[0], naxis, g->nspec, g->npix);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    /* the spectra's LSF: FWHM (rvsfit-cl-mkgrid) or LSFSIG (sigma), both in Angstrom */
    g->lsf_sigma = NAN;
    {
        double v = 0;
        if (fits_read_key_dbl(f, "LSFSIG", &v, NULL, &fst) == 0) {
            g->lsf_sigma = v;
        } else if (fst == KEY_NO_EXIST) {
            fst = 0;
            fits_clear_errmsg();
            if (fits_read_key_dbl(f, "FWHM", &v, NULL, &fst) == 0)
                g->lsf_sigma = v / (2.0 * sqrt(2.0 * log(2.0)));
            else if (fst == KEY_NO_EXIST) {
                fst = 0;
                fits_clear_errmsg();
            }
        }
        FITS_TRY(path, "cannot read keyword FWHM or LSFSIG of HDU %s", flux_hdu);
        if (isfinite(g->lsf_sigma) && !(g->lsf_sigma > 0 && g->lsf_sigma < 100)) {
            rvs_log(RVS_LOG_ERROR, "train", "%s: HDU %s: the LSF sigma %g Angstrom (from FWHM or "
                    "LSFSIG) must be in (0, 100)", path, flux_hdu, g->lsf_sigma);
            status = RVS_ERR_FORMAT;
            goto cleanup;
        }
    }
    int is_log = 0;
    if (fits_read_key_str(f, "FLUXTYPE", value, NULL, &fst) == 0) {
        if (strcasecmp(value, "LOG") == 0)
            is_log = 1;
        else if (strcasecmp(value, "LINEAR") != 0) {
            rvs_log(RVS_LOG_ERROR, "train", "%s: FLUX keyword FLUXTYPE = '%s'; use 'LINEAR' "
                    "(flux) or 'LOG' (natural log of the flux)", path, value);
            status = RVS_ERR_FORMAT;
            goto cleanup;
        }
    } else if (fst == KEY_NO_EXIST) {
        fst = 0;
        fits_clear_errmsg();
    }
    FITS_TRY(path, "cannot read keyword FLUXTYPE of HDU FLUX");
    g->logflux = rvs_malloc(g->nspec * g->npix * sizeof *g->logflux);
    if (!g->logflux) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    fits_read_img(f, TFLOAT, 1, (LONGLONG)(g->nspec * g->npix), NULL, g->logflux, &anynul, &fst);
    FITS_TRY(path, "cannot read HDU FLUX");
    /* drop the flagged rows (parameters and spectra) before the checks */
    if (nkept < g->nspec) {
        size_t out = 0;
        for (size_t i = 0; i < g->nspec; i++) {
            if (!keep[i])
                continue;
            memmove(g->logflux + out * g->npix, g->logflux + i * g->npix,
                    g->npix * sizeof *g->logflux);
            memmove(g->params + out * nparam, g->params + i * nparam,
                    nparam * sizeof *g->params);
            out++;
        }
        g->nspec = nkept;
    }
    for (size_t i = 0; i < g->nspec * g->npix; i++) {
        float v = g->logflux[i];
        if (!is_log) {
            if (!(v > 0) || !isfinite(v)) {
                rvs_log(RVS_LOG_ERROR, "train", "%s: FLUX of spectrum %zu, pixel %zu is %g; a "
                        "linear flux must be positive and finite", path, i / g->npix + 1,
                        i % g->npix + 1, (double)v);
                status = RVS_ERR_FORMAT;
                goto cleanup;
            }
            /* rvspecfit make_interpol.get_spec: spec2 = np.log(spec2) */
            v = (float)log((double)v);
            g->logflux[i] = v;
        }
        if (!isfinite(v)) {
            rvs_log(RVS_LOG_ERROR, "train", "%s: FLUX of spectrum %zu, pixel %zu is not finite",
                    path, i / g->npix + 1, i % g->npix + 1);
            status = RVS_ERR_FORMAT;
            goto cleanup;
        }
    }
cleanup:
    if (f) {
        int cst = 0;
        fits_close_file(f, &cst);
    }
    free(col);
    free(keep);
    if (status != RVS_OK)
        rvs_train_grid_free(g);
    return status;
}

/* ------------------------------------------------------------------ mapping */

int rvs_train_mapping_compute(const struct rvs_train_grid *g, const int *log10_flags,
                              struct rvs_train_mapping *map, double *mapped, float *inputs_f)
{
    size_t n = g->nspec, P = g->nparam;
    memset(map, 0, sizeof *map);
    map->nparam = P;
    for (size_t p = 0; p < P; p++) {
        map->log10[p] = log10_flags[p] ? 1 : 0;
        double sum = 0, lo = INFINITY, hi = -INFINITY;
        for (size_t i = 0; i < n; i++) {
            double t = g->params[i * P + p];
            if (map->log10[p] && !(t > 0)) {
                rvs_log(RVS_LOG_ERROR, "train", "parameter %s of grid spectrum %zu is %g; its "
                        "log10 is taken (see --log-params)", g->names[p], i + 1, t);
                return RVS_ERR_FORMAT;
            }
            double y = map->log10[p] ? log10(t) : t;
            mapped[i * P + p] = y;
            sum += y;
            lo = t < lo ? t : lo;
            hi = t > hi ? t : hi;
        }
        /* train_interpolator.py getData: M = mean, S = std (ddof 0) of the transformed values */
        double m = sum / (double)n, ss = 0;
        for (size_t i = 0; i < n; i++) {
            double d = mapped[i * P + p] - m;
            ss += d * d;
        }
        double s = sqrt(ss / (double)n);
        if (!(s > 0) || !(s > 1e-12 * fabs(m))) {
            rvs_log(RVS_LOG_ERROR, "train", "parameter %s is the same in every grid spectrum; "
                    "it cannot be a network input (drop it with --params)", g->names[p]);
            return RVS_ERR_FORMAT;
        }
        map->m[p] = m;
        map->s[p] = s;
        map->trainmin[p] = lo;
        map->trainmax[p] = hi;
        for (size_t i = 0; i < n; i++) {
            mapped[i * P + p] = (mapped[i * P + p] - m) / s;
            if (inputs_f)
                inputs_f[i * P + p] = (float)mapped[i * P + p];
        }
    }
    return RVS_OK;
}

/* ------------------------------------------------------------------ hulls */

void rvs_train_hull_free(struct rvs_train_hull *h)
{
    if (!h)
        return;
    free(h->x);
    free(h->y);
    free(h->nx);
    free(h->ny);
    free(h->off);
    memset(h, 0, sizeof *h);
}

struct pt {
    double x, y;
};

static int pt_cmp(const void *a, const void *b)
{
    const struct pt *p = a, *q = b;
    if (p->x != q->x)
        return p->x < q->x ? -1 : 1;
    if (p->y != q->y)
        return p->y < q->y ? -1 : 1;
    return 0;
}

static double cross(struct pt o, struct pt a, struct pt b)
{
    return (a.x - o.x) * (b.y - o.y) - (a.y - o.y) * (b.x - o.x);
}

int rvs_train_hull_compute(const double *px, const double *py, size_t n,
                           struct rvs_train_hull *h)
{
    int status = RVS_OK;
    struct pt *p = NULL, *hull = NULL;
    memset(h, 0, sizeof *h);
    p = rvs_malloc((n ? n : 1) * sizeof *p);
    hull = rvs_malloc((2 * n + 1) * sizeof *hull);
    if (!p || !hull) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++)
        p[i] = (struct pt){px[i], py[i]};
    qsort(p, n, sizeof *p, pt_cmp);
    /* Andrew's monotone chain: lower then upper hull, popping on a non-left turn, which also
     * drops collinear points */
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        while (k >= 2 && cross(hull[k - 2], hull[k - 1], p[i]) <= 0)
            k--;
        hull[k++] = p[i];
    }
    for (size_t i = n - 1, t = k + 1; i-- > 0;) {
        while (k >= t && cross(hull[k - 2], hull[k - 1], p[i]) <= 0)
            k--;
        hull[k++] = p[i];
    }
    size_t nv = k > 0 ? k - 1 : 0; /* the last point repeats the first */
    if (nv < 3) {
        rvs_log(RVS_LOG_ERROR, "train", "the grid points span no area in this parameter plane "
                "(hull of %zu vertices); the outside-grid penalty needs a 2-D hull", nv);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    h->n = nv;
    h->x = rvs_malloc(nv * sizeof(double));
    h->y = rvs_malloc(nv * sizeof(double));
    h->nx = rvs_malloc(nv * sizeof(double));
    h->ny = rvs_malloc(nv * sizeof(double));
    h->off = rvs_malloc(nv * sizeof(double));
    if (!h->x || !h->y || !h->nx || !h->ny || !h->off) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < nv; i++) {
        struct pt a = hull[i], b = hull[(i + 1) % nv];
        double dx = b.x - a.x, dy = b.y - a.y, len = hypot(dx, dy);
        h->x[i] = a.x;
        h->y[i] = a.y;
        /* counter-clockwise polygon: the outward normal is the edge turned clockwise */
        h->nx[i] = dy / len;
        h->ny[i] = -dx / len;
        h->off[i] = -(h->nx[i] * a.x + h->ny[i] * a.y);
    }
cleanup:
    free(p);
    free(hull);
    if (status != RVS_OK)
        rvs_train_hull_free(h);
    return status;
}

/* ------------------------------------------------------------------ library writer */

int rvs_train_library_write(const char *dir, const struct rvs_train_grid *g,
                            const struct rvs_train_mapping *map, const double *mapped,
                            const struct rvs_trained_net *net,
                            const struct rvs_train_provenance *prov, int force)
{
    int status = RVS_OK;
    char *path = NULL;
    double *px = NULL, *py = NULL;
    struct rvs_train_hull hulls[RVS_NN_MAX_INPUTS / 2];
    memset(hulls, 0, sizeof hulls);
    const struct rvs_nn_desc *d = &net->desc;
    size_t P = g->nparam, n = g->nspec, nhull = P / 2;
    if (!prov->setup || !*prov->setup || strchr(prov->setup, '/')) {
        rvs_log(RVS_LOG_ERROR, "train", "setup name '%s' cannot name a library file",
                prov->setup ? prov->setup : "");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (d->indim != P || d->npix != g->npix) {
        rvs_log(RVS_LOG_ERROR, "train", "network (%zu inputs, %zu px) does not match the grid "
                "(%zu parameters, %zu px)", d->indim, d->npix, P, g->npix);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    size_t plen = strlen(dir) + strlen(prov->setup) + 64;
    path = rvs_malloc(plen);
    px = rvs_malloc(n * sizeof *px);
    py = rvs_malloc(n * sizeof *py);
    if (!path || !px || !py) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    snprintf(path, plen, "%s/rvsfit_%s.fits", dir, prov->setup);
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        rvs_log(RVS_LOG_ERROR, "train", "output directory %s does not exist", dir);
        status = RVS_ERR_IO;
        goto cleanup;
    }
    if (!force && access(path, F_OK) == 0) {
        rvs_log(RVS_LOG_ERROR, "train", "%s exists; remove it or use --force", path);
        status = RVS_ERR_IO;
        goto cleanup;
    }
    /* hulls of the mapped training points, pairs (0,1), (2,3), ... (rvspecfit
     * RVSInterpolator.py, OutsideInterpolator: pts[:, :2] and pts[:, 2:]) */
    if (P % 2)
        rvs_log(RVS_LOG_WARNING, "train", "%zu parameters: %s has no hull (pairs only)", P,
                g->names[P - 1]);
    for (size_t k = 0; k < nhull; k++) {
        for (size_t i = 0; i < n; i++) {
            px[i] = mapped[i * P + 2 * k];
            py[i] = mapped[i * P + 2 * k + 1];
        }
        status = rvs_train_hull_compute(px, py, n, &hulls[k]);
        if (status != RVS_OK) {
            rvs_log(RVS_LOG_ERROR, "train", "hull of (%s, %s) failed", g->names[2 * k],
                    g->names[2 * k + 1]);
            goto cleanup;
        }
    }

    /* the library module writes the file (doc/template-library.md): one writer for the trainer,
     * rvs-import's C twin and rvsfit-cl-lsf, through a temporary file and a rename */
    struct rvs_library_content c;
    memset(&c, 0, sizeof c);
    snprintf(c.setup, sizeof c.setup, "%s", prov->setup);
    c.npix = g->npix;
    c.wave = g->wave;
    c.log_step = g->logstep;
    c.nparam = P;
    for (size_t p = 0; p < P; p++)
        c.params[p] = (struct rvs_library_param){.log10 = map->log10[p] != 0,
                                                 .m = map->m[p],
                                                 .s = map->s[p],
                                                 .train_min = map->trainmin[p],
                                                 .train_max = map->trainmax[p]};
    for (size_t p = 0; p < P; p++)
        snprintf(c.params[p].name, sizeof c.params[p].name, "%s", g->names[p]);
    c.nn = *d;
    for (size_t p = 0; p < P; p++) { /* the network's mapping mirrors PARAMS */
        c.nn.log_input[p] = map->log10[p] != 0;
        c.nn.map_center[p] = map->m[p];
        c.nn.map_scale[p] = map->s[p];
    }
    c.nhull = nhull;
    for (size_t k = 0; k < nhull; k++)
        c.hulls[k] = (struct rvs_library_hull){.i1 = 2 * k,
                                               .i2 = 2 * k + 1,
                                               .n = hulls[k].n,
                                               .x = hulls[k].x,
                                               .y = hulls[k].y,
                                               .nx = hulls[k].nx,
                                               .ny = hulls[k].ny,
                                               .offset = hulls[k].off};
    struct rvs_library_provenance *q = &c.prov;
    snprintf(q->creator, sizeof q->creator, "rvsfit-cl-train");
    snprintf(q->creator_version, sizeof q->creator_version, "%s", PACKAGE_VERSION);
    snprintf(q->grid_name, sizeof q->grid_name, "%s",
             prov->gridname && *prov->gridname ? prov->gridname : "unknown");
    snprintf(q->librev, sizeof q->librev, "%s", prov->librev ? prov->librev : "");
    snprintf(q->srcsoft, sizeof q->srcsoft, "rvsfit-cl");
    snprintf(q->srcver, sizeof q->srcver, "%s", PACKAGE_VERSION);
    q->ckptver = q->nnarchv = -1;
    q->traincmd = prov->traincmd;
    q->trnloss = prov->train_loss;
    q->valerr = prov->val_loss;
    q->valmed = prov->err_median;
    q->val99 = prov->err_p99;
    q->ntrain = (long)prov->ntrain;
    q->nvalid = (long)prov->nval;
    q->nepoch = (long)prov->epochs;
    snprintf(q->grid_vdw, sizeof q->grid_vdw, "%s", prov->grid_vdw ? prov->grid_vdw : "");
    q->grid_sampling = prov->grid_vdw ? prov->grid_sampling : NAN;
    /* the templates' LSF (doc/template-library.md sec. 2.1) */
    if (isfinite(prov->lsf_sigma))
        c.lsf = (struct rvs_library_lsf){.kind = RVS_LIBRARY_LSF_GAUSSIAN,
                                         .sigma = prov->lsf_sigma,
                                         .resolution_matrix = prov->resolution_matrix != 0};
    else
        c.lsf = (struct rvs_library_lsf){.kind = RVS_LIBRARY_LSF_UNKNOWN, .sigma = NAN};
    status = rvs_library_write_arm(path, &c, force);
    if (status == RVS_OK)
        rvs_log(RVS_LOG_INFO, "train", "wrote %s", path);
cleanup:
    for (size_t k = 0; k < RVS_NN_MAX_INPUTS / 2; k++)
        rvs_train_hull_free(&hulls[k]);
    free(path);
    free(px);
    free(py);
    return status;
}
