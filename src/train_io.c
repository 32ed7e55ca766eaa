/* train_io.c: the trainer's files. Reads a grid of spectra (doc/trainer.md), derives
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

#include "internal.h"
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

/* Writes a float32 image HDU with EXTNAME and SRCKEY. */
static int write_f32(fitsfile *f, const char *file, const char *extname, const char *srckey,
                     const float *data, long rows, long cols)
{
    int status = RVS_OK, fst = 0;
    long naxes[2] = {cols, rows};
    int naxis = rows > 0 ? 2 : 1;
    if (rows == 0)
        naxes[0] = cols;
    fits_create_img(f, FLOAT_IMG, naxis, naxes, &fst);
    fits_update_key_str(f, "EXTNAME", extname, NULL, &fst);
    fits_update_key_str(f, "SRCKEY", srckey, "the torch state-dict key", &fst);
    fits_write_img(f, TFLOAT, 1, (LONGLONG)(rows > 0 ? rows : 1) * cols, (void *)data, &fst);
    FITS_TRY(file, "cannot write HDU %s", extname);
cleanup:
    return status;
}

static int write_hull(fitsfile *f, const char *file, int k, const struct rvs_train_hull *h,
                      int i1, int i2, const char *n1, const char *n2)
{
    int status = RVS_OK, fst = 0;
    char extname[16];
    char *ttype[] = {"X", "Y", "NX", "NY", "OFFSET"};
    char *tform[] = {"D", "D", "D", "D", "D"};
    snprintf(extname, sizeof extname, "HULL%d", k);
    fits_create_tbl(f, BINARY_TBL, (LONGLONG)h->n, 5, ttype, tform, NULL, extname, &fst);
    fits_update_key_lng(f, "HULLI1", i1, "0-based PARAMS row of X", &fst);
    fits_update_key_lng(f, "HULLI2", i2, "0-based PARAMS row of Y", &fst);
    fits_update_key_str(f, "HULLP1", n1, "parameter of X", &fst);
    fits_update_key_str(f, "HULLP2", n2, "parameter of Y", &fst);
    double *cols[] = {h->x, h->y, h->nx, h->ny, h->off};
    for (int c = 0; c < 5; c++)
        fits_write_col(f, TDOUBLE, c + 1, 1, 1, (LONGLONG)h->n, cols[c], &fst);
    FITS_TRY(file, "cannot write HDU %s", extname);
cleanup:
    return status;
}

int rvs_train_library_write(const char *dir, const struct rvs_train_grid *g,
                            const struct rvs_train_mapping *map, const double *mapped,
                            const struct rvs_trained_net *net,
                            const struct rvs_train_provenance *prov, int force)
{
    int status = RVS_OK, fst = 0;
    fitsfile *f = NULL;
    char *path = NULL, *tmp = NULL, *ftmp = NULL;
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
    tmp = rvs_malloc(plen);
    ftmp = rvs_malloc(plen + 1);
    px = rvs_malloc(n * sizeof *px);
    py = rvs_malloc(n * sizeof *py);
    if (!path || !tmp || !ftmp || !px || !py) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    snprintf(path, plen, "%s/rvsfit_%s.fits", dir, prov->setup);
    snprintf(tmp, plen, "%s/.rvsfit_%s.fits.%ld.tmp", dir, prov->setup, (long)getpid());
    snprintf(ftmp, plen + 1, "!%s", tmp);
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

    fits_create_file(&f, ftmp, &fst);
    FITS_TRY(tmp, "cannot create the library file (is %s writable?)", dir);
    fits_create_img(f, 8, 0, NULL, &fst);
    FITS_TRY(tmp, "cannot write the primary HDU");
    /* primary keywords, doc/template-library.md sec. 2 */
    int withbn = d->with_batchnorm ? 1 : 0;
    double bneps = 1e-5, logclip = 300;
    if (withbn)
        bneps = d->bn[1].eps;
    fits_write_key_str(f, "RVSFMT", "rvsfit-cl template library", "format name", &fst);
    fits_write_key_lng(f, "RVSFVER", RVS_LIBRARY_FORMAT_VERSION, "format version", &fst);
    fits_write_key_str(f, "SETUP", prov->setup, "arm setup", &fst);
    fits_write_key_str(f, "EMULATOR", "NN", "emulator type", &fst);
    fits_write_key_lng(f, "NPARAM", (long)P, "stellar parameters", &fst);
    fits_write_key_lng(f, "NPIX", (long)g->npix, "template pixels", &fst);
    fits_write_key_dbl(f, "LOGSTEP", g->logstep, -17, "ln wavelength step", &fst);
    fits_write_key_str(f, "WAVEREF", "vacuum", "wavelength reference", &fst);
    fits_write_key_lng(f, "INDIM", (long)d->indim, "network inputs", &fst);
    fits_write_key_lng(f, "NLAYERS", (long)d->nlayers, "hidden width x width layers", &fst);
    fits_write_key_lng(f, "WIDTH", (long)d->width, "hidden width", &fst);
    fits_write_key_lng(f, "NPC", (long)d->npc, "bottleneck width", &fst);
    fits_write_key_log(f, "WITHBN", withbn, "BatchNorm after hidden layers", &fst);
    fits_write_key_str(f, "BNPOS", "after_nonlin", "BatchNorm acts on the SiLU output", &fst);
    fits_write_key_dbl(f, "BNEPS", bneps, -17, "BatchNorm eps", &fst);
    fits_write_key_str(f, "NONLIN", "SiLU", "activation", &fst);
    fits_write_key_str(f, "OUTPUT", "log_flux", "the network returns ln(flux)", &fst);
    fits_write_key_dbl(f, "LOGCLIP", logclip, -17, "flux = exp(clip(out, -C, C))", &fst);
    fits_write_key_lng(f, "NHULL", (long)nhull, "HULL<k> HDUs", &fst);
    fits_write_key_str(f, "HULLSPC", "mapped", "hull coordinates", &fst);
    /* the templates' LSF (doc/template-library.md sec. 2.1) */
    if (isfinite(prov->lsf_sigma)) {
        fits_write_key_str(f, "LSFTYPE", "GAUSSIAN", "line-spread function of the templates",
                           &fst);
        fits_write_key_dbl(f, "LSFSIG", prov->lsf_sigma, -12, "[Angstrom] its Gaussian sigma",
                           &fst);
    } else {
        fits_write_key_str(f, "LSFTYPE", "UNKNOWN", "line-spread function of the templates",
                           &fst);
    }
    fits_write_key_log(f, "LSFRMAT", prov->resolution_matrix && isfinite(prov->lsf_sigma),
                       "made for the resolution-matrix fit", &fst);
    fits_write_key_str(f, "CREATOR", "rvsfit-cl-train", "software that wrote the file", &fst);
    fits_write_key_str(f, "CREATVER", PACKAGE_VERSION, "its version", &fst);
    fits_write_date(f, &fst);
    fits_write_key_str(f, "GRIDNAME", prov->gridname && *prov->gridname ? prov->gridname
                                                                        : "unknown",
                       "training grid", &fst);
    fits_write_key_str(f, "LIBREV", prov->librev ? prov->librev : "", "library revision", &fst);
    fits_write_key_str(f, "SRCSOFT", "rvsfit-cl", "software that trained the network", &fst);
    fits_write_key_str(f, "SRCVER", PACKAGE_VERSION, "its version", &fst);
    if (isfinite(prov->train_loss))
        fits_write_key_dbl(f, "TRNLOSS", prov->train_loss, -10,
                           "final training loss, mean |dlnF| / spread0", &fst);
    if (isfinite(prov->val_loss))
        fits_write_key_dbl(f, "VALERR", prov->val_loss, -10,
                           "validation loss, mean |dlnF| / spread0", &fst);
    if (isfinite(prov->err_median))
        fits_write_key_dbl(f, "VALMED", prov->err_median, -6,
                           "held-out median |dflux|/flux per pixel", &fst);
    if (isfinite(prov->err_p99))
        fits_write_key_dbl(f, "VAL99", prov->err_p99, -6,
                           "held-out 99th percentile |dflux|/flux", &fst);
    fits_write_key_lng(f, "NTRAIN", (long)prov->ntrain, "training spectra", &fst);
    fits_write_key_lng(f, "NVALID", (long)prov->nval, "held-out validation spectra", &fst);
    fits_write_key_lng(f, "NEPOCH", (long)prov->epochs, "training epochs (resumed runs included)",
                       &fst);
    if (prov->traincmd && *prov->traincmd) {
        fits_write_key_longwarn(f, &fst);
        fits_write_key_longstr(f, "TRAINCMD", prov->traincmd, "training command line", &fst);
    }
    FITS_TRY(tmp, "cannot write the primary header");

    /* WAVE */
    long npix_l = (long)g->npix;
    fits_create_img(f, DOUBLE_IMG, 1, &npix_l, &fst);
    fits_update_key_str(f, "EXTNAME", "WAVE", NULL, &fst);
    fits_update_key_str(f, "BUNIT", "Angstrom", NULL, &fst);
    fits_write_img(f, TDOUBLE, 1, (LONGLONG)g->npix, g->wave, &fst);
    FITS_TRY(tmp, "cannot write HDU WAVE");

    /* PARAMS */
    {
        char *ttype[] = {"NAME", "LOG10", "M", "S", "TRAINMIN", "TRAINMAX"};
        char *tform[] = {"16A", "L", "D", "D", "D", "D"};
        fits_create_tbl(f, BINARY_TBL, (LONGLONG)P, 6, ttype, tform, NULL, "PARAMS", &fst);
        for (size_t p = 0; p < P; p++) {
            char *name = (char *)g->names[p];
            char lg = map->log10[p] ? 1 : 0;
            LONGLONG row = (LONGLONG)p + 1;
            fits_write_col(f, TSTRING, 1, row, 1, 1, &name, &fst);
            fits_write_col(f, TLOGICAL, 2, row, 1, 1, &lg, &fst);
            fits_write_col(f, TDOUBLE, 3, row, 1, 1, (void *)&map->m[p], &fst);
            fits_write_col(f, TDOUBLE, 4, row, 1, 1, (void *)&map->s[p], &fst);
            fits_write_col(f, TDOUBLE, 5, row, 1, 1, (void *)&map->trainmin[p], &fst);
            fits_write_col(f, TDOUBLE, 6, row, 1, 1, (void *)&map->trainmax[p], &fst);
        }
        FITS_TRY(tmp, "cannot write HDU PARAMS");
    }

    /* weights, as trained (sec. 1) */
    for (size_t l = 0; l < d->nlayers + 2; l++) {
        size_t in = l == 0 ? d->indim : d->width, out = l == d->nlayers + 1 ? d->npc : d->width;
        char ext[32], key[64];
        snprintf(ext, sizeof ext, "LIN%zu_W", l);
        snprintf(key, sizeof key, "model.lin_%zu.weight", l);
        RVS_TRY(write_f32(f, tmp, ext, key, d->lin[l].weight, (long)out, (long)in));
        snprintf(ext, sizeof ext, "LIN%zu_B", l);
        snprintf(key, sizeof key, "model.lin_%zu.bias", l);
        RVS_TRY(write_f32(f, tmp, ext, key, d->lin[l].bias, 0, (long)out));
        if (withbn && l >= 1 && l <= d->nlayers) {
            static const char *const sfx[4] = {"W", "B", "MEAN", "VAR"};
            static const char *const tk[4] = {"weight", "bias", "running_mean", "running_var"};
            const float *arr[4] = {d->bn[l].weight, d->bn[l].bias, d->bn[l].running_mean,
                                   d->bn[l].running_var};
            for (int t = 0; t < 4; t++) {
                snprintf(ext, sizeof ext, "BN%zu_%s", l, sfx[t]);
                snprintf(key, sizeof key, "model.bn_%zu.%s", l, tk[t]);
                RVS_TRY(write_f32(f, tmp, ext, key, arr[t], 0, (long)d->width));
            }
        }
    }
    RVS_TRY(write_f32(f, tmp, "PC_W", "pc_layer.weight", d->pc.weight, (long)d->npix,
                      (long)d->npc));
    RVS_TRY(write_f32(f, tmp, "PC_B", "pc_layer.bias", d->pc.bias, 0, (long)d->npix));
    for (size_t k = 0; k < nhull; k++)
        RVS_TRY(write_hull(f, tmp, (int)k + 1, &hulls[k], (int)(2 * k), (int)(2 * k + 1),
                           g->names[2 * k], g->names[2 * k + 1]));

    /* checksums last, when every HDU is complete */
    int nhdu = 0;
    fits_get_num_hdus(f, &nhdu, &fst);
    for (int i = 1; i <= nhdu; i++) {
        fits_movabs_hdu(f, i, NULL, &fst);
        fits_write_chksum(f, &fst);
    }
    FITS_TRY(tmp, "cannot write the checksums");
    fits_close_file(f, &fst);
    f = NULL;
    FITS_TRY(tmp, "cannot finish the library file");
    if (rename(tmp, path) != 0) {
        rvs_log(RVS_LOG_ERROR, "train", "cannot rename %s to %s: %s", tmp, path,
                strerror(errno));
        status = RVS_ERR_IO;
        goto cleanup;
    }
    rvs_log(RVS_LOG_INFO, "train", "wrote %s", path);
cleanup:
    if (f) {
        int cst = 0;
        fits_close_file(f, &cst);
    }
    if (status != RVS_OK && tmp)
        remove(tmp);
    for (size_t k = 0; k < RVS_NN_MAX_INPUTS / 2; k++)
        rvs_train_hull_free(&hulls[k]);
    free(path);
    free(tmp);
    free(ftmp);
    free(px);
    free(py);
    return status;
}
