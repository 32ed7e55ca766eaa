/* library.c: rvsfit-cl's template-library files (doc/template-library.md, format version 1):
 * the loader with the complete validation of §6, the accessors, rvspecfit's outside-grid penalty
 * (nn/RVSInterpolator.py, OutsideInterpolator.__call__, on the mapping of
 * nn/NNInterpolator.py, Mapper.forward), and the writer (same HDUs and keywords as
 * tools/rvs-import, checksums, temporary file + rename).
 *
 * Order of the loader's checks: the format name and version first (so that a newer or foreign
 * file gets the message that fits it), then the checksums of every HDU, then keywords, HDUs and
 * shapes (every shape is checked before its data is allocated, so keywords cannot make us
 * allocate what the file does not hold), then the values (shared with the writer). */
#include <config.h>

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <fitsio.h>

#include "base/internal.h"
#include "base/files.h"
#include "rvsfit/library.h"

#define MOD "library"

/* What the user does about a refused file (the loader) or refused content (the writer). */
static const char hint_load[] = "re-create the file with rvs-import (or the trainer)";
static const char hint_write[] = "this is a bug in the program that builds the library";

/* Largest facet/normal deviations tolerated (§6.7), and the log-step tolerance (§6.6). */
#define HULL_TOL 1e-9
#define LOGSTEP_TOL 1e-6

/* The one LOGCLIP value rvs_nn supports (nn.h: exp(clip(out, -300, 300))). */
#define SUPPORTED_LOGCLIP 300.0

/* Weight arrays of a network: FITS name, state-dict key, shape, and the slot of the rvs_nn_desc
 * that points to the data. */
struct weight_entry {
    char name[48];
    char srckey[64];
    size_t rows, cols; /* cols == 0: a 1-D array of `rows` values */
    const float **slot;
};
#define MAX_WEIGHTS (2 * RVS_NN_MAX_LINEAR + 4 * RVS_NN_MAX_HIDDEN + 2)

struct rvs_library_arm {
    char *path;
    struct rvs_library_content c;
    double *wave;
    float *weights[MAX_WEIGHTS];
    size_t nweights;
    double *hull_data[RVS_LIBRARY_MAX_HULLS];
    double *lsf_nodes; /* LSF table: wave then sigma, 2 x lsf.nnodes */
    char *traincmd;
};

/* ------------------------------------------------------------------ messages */

static int refuse(const char *path, const char *hdu, const char *hint, const char *fmt, ...)
    RVS_PRINTF_LIKE(4, 5);

/* Logs "<path>: HDU <hdu>: <what>; <hint>" and returns RVS_ERR_FORMAT. */
static int refuse(const char *path, const char *hdu, const char *hint, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (hdu)
        rvs_log(RVS_LOG_ERROR, MOD, "%s: HDU %s: %s; %s", path, hdu, what, hint);
    else
        rvs_log(RVS_LOG_ERROR, MOD, "%s: %s; %s", path, what, hint);
    return RVS_ERR_FORMAT;
}

/* A failed cfitsio call: its status text and message stack go to the log with the file and what
 * was being done. Returns RVS_ERR_IO (unreadable file), RVS_ERR_NOMEM or RVS_ERR_FORMAT. */
static int fits_fail(int fst, const char *path, const char *hdu, const char *what)
{
    char text[FLEN_STATUS] = "", msg[FLEN_ERRMSG];
    fits_get_errstatus(fst, text);
    rvs_log(RVS_LOG_ERROR, MOD, "%s%s%s: %s: %s (cfitsio status %d)", path, hdu ? ": HDU " : "",
            hdu ? hdu : "", what, text, fst);
    while (fits_read_errmsg(msg))
        rvs_log(RVS_LOG_ERROR, MOD, "%s: cfitsio: %s", path, msg);
    switch (fst) {
    case FILE_NOT_OPENED:
    case FILE_NOT_CREATED:
    case READ_ERROR:
    case WRITE_ERROR:
    case END_OF_FILE:
        return RVS_ERR_IO;
    case MEMORY_ALLOCATION:
        return RVS_ERR_NOMEM;
    default:
        return RVS_ERR_FORMAT;
    }
}

#define FITS_TRY(path, hdu, what)                                                                  \
    do {                                                                                           \
        if (fst != 0) {                                                                            \
            status = fits_fail(fst, (path), (hdu), (what));                                        \
            goto cleanup;                                                                          \
        }                                                                                          \
    } while (0)

/* ------------------------------------------------------------------ the network's arrays */

/* Lists the weight arrays of desc in rvs-import's order (doc §1; NNInterpolator.initLayers). */
static size_t weight_entries(struct rvs_nn_desc *d, struct weight_entry *e)
{
    size_t n = 0, nlin = d->nlayers + 2;
    for (size_t i = 0; i < nlin; i++) {
        size_t out = i + 1 < nlin ? d->width : d->npc;
        size_t in = i == 0 ? d->indim : d->width;
        e[n] = (struct weight_entry){.rows = out, .cols = in, .slot = &d->lin[i].weight};
        snprintf(e[n].name, sizeof e[n].name, "LIN%zu_W", i);
        snprintf(e[n++].srckey, sizeof e[0].srckey, "model.lin_%zu.weight", i);
        e[n] = (struct weight_entry){.rows = out, .cols = 0, .slot = &d->lin[i].bias};
        snprintf(e[n].name, sizeof e[n].name, "LIN%zu_B", i);
        snprintf(e[n++].srckey, sizeof e[0].srckey, "model.lin_%zu.bias", i);
        if (d->with_batchnorm && i > 0 && i + 1 < nlin) {
            static const char *const suffix[4] = {"W", "B", "MEAN", "VAR"};
            static const char *const key[4] = {"weight", "bias", "running_mean", "running_var"};
            const float **slots[4] = {&d->bn[i].weight, &d->bn[i].bias, &d->bn[i].running_mean,
                                      &d->bn[i].running_var};
            for (int k = 0; k < 4; k++) {
                e[n] = (struct weight_entry){.rows = d->width, .cols = 0, .slot = slots[k]};
                snprintf(e[n].name, sizeof e[n].name, "BN%zu_%s", i, suffix[k]);
                snprintf(e[n++].srckey, sizeof e[0].srckey, "model.bn_%zu.%s", i, key[k]);
            }
        }
    }
    e[n] = (struct weight_entry){.rows = d->npix, .cols = d->npc, .slot = &d->pc.weight};
    snprintf(e[n].name, sizeof e[n].name, "PC_W");
    snprintf(e[n++].srckey, sizeof e[0].srckey, "pc_layer.weight");
    e[n] = (struct weight_entry){.rows = d->npix, .cols = 0, .slot = &d->pc.bias};
    snprintf(e[n].name, sizeof e[n].name, "PC_B");
    snprintf(e[n++].srckey, sizeof e[0].srckey, "pc_layer.bias");
    return n;
}

/* ------------------------------------------------------------------ value checks (§6.4, 6.6, 6.7) */

/* Checks sizes and every value of c (loader and writer alike); `path` and `hint` go into the
 * message. */
static int validate_content(const struct rvs_library_content *c, const char *path,
                            const char *hint)
{
    const struct rvs_nn_desc *d = &c->nn;
    if (c->nparam < 1 || c->nparam > RVS_NN_MAX_INPUTS || d->indim != c->nparam)
        return refuse(path, NULL, hint, "NPARAM = %zu, INDIM = %zu: need NPARAM = INDIM in 1..%d",
                      c->nparam, d->indim, RVS_NN_MAX_INPUTS);
    if (d->nlayers > RVS_NN_MAX_HIDDEN)
        return refuse(path, NULL, hint, "NLAYERS = %zu: this rvsfit-cl supports at most %d",
                      d->nlayers, RVS_NN_MAX_HIDDEN);
    if (d->width < 1 || d->npc < 1 || c->npix < 1 || d->npix != c->npix)
        return refuse(path, NULL, hint, "WIDTH = %zu, NPC = %zu, NPIX = %zu: all must be >= 1",
                      d->width, d->npc, c->npix);
    if (c->nhull > RVS_LIBRARY_MAX_HULLS)
        return refuse(path, NULL, hint, "NHULL = %zu: this rvsfit-cl supports at most %d",
                      c->nhull, RVS_LIBRARY_MAX_HULLS);
    if (!(c->log_step > 0) || !isfinite(c->log_step))
        return refuse(path, NULL, hint, "LOGSTEP = %.17g: must be a positive number",
                      c->log_step);

    /* LSF (§2.1) */
    const struct rvs_library_lsf *lsf = &c->lsf;
    if (lsf->kind != RVS_LIBRARY_LSF_UNKNOWN && lsf->kind != RVS_LIBRARY_LSF_GAUSSIAN)
        return refuse(path, NULL, hint, "LSF kind %d: must be unknown or Gaussian", lsf->kind);
    if (lsf->kind == RVS_LIBRARY_LSF_UNKNOWN && (lsf->nnodes || lsf->resolution_matrix))
        return refuse(path, NULL, hint, "LSFTYPE = 'UNKNOWN' with %s: a library made for the "
                      "resolution-matrix path, or with an LSF table, must state its LSF",
                      lsf->nnodes ? "an LSF table" : "LSFRMAT = T");
    if (lsf->kind == RVS_LIBRARY_LSF_GAUSSIAN) {
        if (!(lsf->sigma > 0 && lsf->sigma < 100))
            return refuse(path, NULL, hint, "LSFSIG = %g: the Gaussian sigma must be in (0, 100) "
                          "Angstrom", lsf->sigma);
        if (lsf->nnodes == 1 || lsf->nnodes > RVS_LIBRARY_LSF_MAX_NODES)
            return refuse(path, "LSF", hint, "%zu rows: an LSF table needs 2..%d", lsf->nnodes,
                          RVS_LIBRARY_LSF_MAX_NODES);
        for (size_t j = 0; j < lsf->nnodes; j++) {
            if (!(lsf->node_wave[j] > 0) || !isfinite(lsf->node_wave[j]) ||
                !(lsf->node_sigma[j] > 0 && lsf->node_sigma[j] < 100))
                return refuse(path, "LSF", hint, "row %zu: WAVE = %g, SIGMA = %g: need a positive "
                              "wavelength and a sigma in (0, 100) Angstrom", j, lsf->node_wave[j],
                              lsf->node_sigma[j]);
            if (j > 0 && !(lsf->node_wave[j] > lsf->node_wave[j - 1]))
                return refuse(path, "LSF", hint, "row %zu: WAVE must increase strictly", j);
        }
    }

    /* WAVE: positive, increasing, log-uniform with the stated step */
    for (size_t j = 0; j < c->npix; j++) {
        if (!isfinite(c->wave[j]) || !(c->wave[j] > 0))
            return refuse(path, "WAVE", hint, "pixel %zu is %g: wavelengths must be positive", j,
                          c->wave[j]);
        if (j > 0) {
            if (!(c->wave[j] > c->wave[j - 1]))
                return refuse(path, "WAVE", hint, "not strictly increasing at pixel %zu", j);
            double r = log(c->wave[j] / c->wave[j - 1]) / c->log_step - 1;
            if (fabs(r) > LOGSTEP_TOL)
                return refuse(path, "WAVE", hint,
                              "step %zu deviates from LOGSTEP = %.17g by %.3g (relative): the "
                              "grid must be log-uniform within %g",
                              j, c->log_step, r, LOGSTEP_TOL);
        }
    }

    /* PARAMS */
    for (size_t p = 0; p < c->nparam; p++) {
        const struct rvs_library_param *q = &c->params[p];
        if (!q->name[0])
            return refuse(path, "PARAMS", hint, "row %zu: empty NAME", p);
        for (size_t k = 0; k < p; k++)
            if (strcmp(c->params[k].name, q->name) == 0)
                return refuse(path, "PARAMS", hint, "parameter name '%s' appears twice",
                              q->name);
        if (!isfinite(q->m) || !isfinite(q->s) || q->s == 0)
            return refuse(path, "PARAMS", hint,
                          "row %zu (%s): M = %g, S = %g: both must be finite and S non-zero", p,
                          q->name, q->m, q->s);
        if (!isfinite(q->train_min) || !isfinite(q->train_max))
            return refuse(path, "PARAMS", hint, "row %zu (%s): TRAINMIN/TRAINMAX not finite", p,
                          q->name);
        if (d->log_input[p] != q->log10 || d->map_center[p] != q->m || d->map_scale[p] != q->s)
            return refuse(path, "PARAMS", hint,
                          "row %zu: the network's mapping differs from the PARAMS table", p);
    }

    /* weights: finite, BatchNorm variances >= 0 and eps > 0 */
    struct weight_entry e[MAX_WEIGHTS];
    size_t nw = weight_entries((struct rvs_nn_desc *)d, e);
    for (size_t w = 0; w < nw; w++) {
        const float *v = *e[w].slot;
        size_t n = e[w].rows * (e[w].cols ? e[w].cols : 1);
        if (!v)
            return refuse(path, e[w].name, hint, "no data");
        int is_var = strstr(e[w].name, "_VAR") != NULL;
        for (size_t k = 0; k < n; k++) {
            if (!isfinite(v[k]))
                return refuse(path, e[w].name, hint, "element %zu is %g: weights must be finite",
                              k, (double)v[k]);
            if (is_var && v[k] < 0)
                return refuse(path, e[w].name, hint,
                              "element %zu is %g: BatchNorm variances must be >= 0", k,
                              (double)v[k]);
        }
    }
    if (d->with_batchnorm)
        for (size_t i = 1; i <= d->nlayers; i++)
            if (!(d->bn[i].eps > 0) || !isfinite(d->bn[i].eps))
                return refuse(path, NULL, hint, "BNEPS = %g: must be a positive number",
                              d->bn[i].eps);

    /* hulls: closed, counter-clockwise, convex polygons with unit outward normals */
    for (size_t k = 0; k < c->nhull; k++) {
        const struct rvs_library_hull *h = &c->hulls[k];
        char hdu[16];
        snprintf(hdu, sizeof hdu, "HULL%zu", k + 1);
        if (h->n < 3)
            return refuse(path, hdu, hint, "%zu rows: a hull needs at least 3 vertices", h->n);
        if (h->i1 == h->i2 || h->i1 >= c->nparam || h->i2 >= c->nparam)
            return refuse(path, hdu, hint,
                          "HULLI1 = %zu, HULLI2 = %zu: must differ and be < NPARAM = %zu", h->i1,
                          h->i2, c->nparam);
        double area2 = 0;
        for (size_t j = 0; j < h->n; j++) {
            size_t j1 = (j + 1) % h->n;
            double vals[5] = {h->x[j], h->y[j], h->nx[j], h->ny[j], h->offset[j]};
            for (int t = 0; t < 5; t++)
                if (!isfinite(vals[t]))
                    return refuse(path, hdu, hint, "row %zu holds a non-finite value", j);
            double len = hypot(h->nx[j], h->ny[j]);
            if (fabs(len - 1) > HULL_TOL)
                return refuse(path, hdu, hint,
                              "row %zu: |(NX, NY)| = %.17g, must be 1 within %g", j, len,
                              HULL_TOL);
            double tol0 = HULL_TOL * (1 + fabs(h->x[j]) + fabs(h->y[j]));
            double tol1 = HULL_TOL * (1 + fabs(h->x[j1]) + fabs(h->y[j1]));
            double r0 = h->nx[j] * h->x[j] + h->ny[j] * h->y[j] + h->offset[j];
            double r1 = h->nx[j] * h->x[j1] + h->ny[j] * h->y[j1] + h->offset[j];
            if (fabs(r0) > tol0 || fabs(r1) > tol1)
                return refuse(path, hdu, hint,
                              "row %zu: the facet does not join vertex %zu to vertex %zu "
                              "(residuals %.3g, %.3g): the polygon is not closed",
                              j, j, j1, r0, r1);
            for (size_t v = 0; v < h->n; v++) {
                double r = h->nx[j] * h->x[v] + h->ny[j] * h->y[v] + h->offset[j];
                if (r > HULL_TOL * (1 + fabs(h->x[v]) + fabs(h->y[v])))
                    return refuse(path, hdu, hint,
                                  "vertex %zu lies outside facet %zu by %.3g: the polygon is "
                                  "not convex",
                                  v, j, r);
            }
            area2 += h->x[j] * h->y[j1] - h->x[j1] * h->y[j];
        }
        if (!(area2 > 0))
            return refuse(path, hdu, hint, "vertices are not in counter-clockwise order");
    }
    return RVS_OK;
}

/* ------------------------------------------------------------------ reading */

enum key_type { KEY_STRING, KEY_INT, KEY_REAL, KEY_LOGICAL };

/* Reads keyword `key` of the current HDU checking its FITS type (a real may be written as an
 * integer). *present = 0 for a missing optional keyword; a missing required one is an error. */
static int read_key(fitsfile *f, const char *path, const char *hdu, const char *key,
                    enum key_type type, int required, void *value, int *present)
{
    int status = RVS_OK, fst = 0;
    char raw[FLEN_VALUE], comment[FLEN_COMMENT], dtype = 0;
    static const char *const type_name[] = {"a string", "an integer", "a real number",
                                            "a logical (T/F)"};
    if (present)
        *present = 0;
    fits_read_keyword(f, key, raw, comment, &fst);
    if (fst == KEY_NO_EXIST) {
        fits_clear_errmsg();
        if (required)
            return refuse(path, hdu, hint_load, "required keyword %s is missing", key);
        return RVS_OK;
    }
    FITS_TRY(path, hdu, key);
    fits_get_keytype(raw, &dtype, &fst);
    if (fst) {
        fits_clear_errmsg();
        dtype = 0;
        fst = 0;
    }
    int ok = (type == KEY_STRING && dtype == 'C') || (type == KEY_INT && dtype == 'I') ||
             (type == KEY_REAL && (dtype == 'I' || dtype == 'F')) ||
             (type == KEY_LOGICAL && dtype == 'L');
    if (!ok)
        return refuse(path, hdu, hint_load, "keyword %s = %s is not %s", key, raw,
                      type_name[type]);
    switch (type) {
    case KEY_STRING: {
        char s[FLEN_VALUE];
        fits_read_key(f, TSTRING, key, s, NULL, &fst);
        FITS_TRY(path, hdu, key);
        snprintf(value, RVS_LIBRARY_STRLEN, "%s", s);
        break;
    }
    case KEY_INT:
        fits_read_key(f, TLONG, key, value, NULL, &fst);
        break;
    case KEY_REAL:
        fits_read_key(f, TDOUBLE, key, value, NULL, &fst);
        break;
    case KEY_LOGICAL:
        fits_read_key(f, TLOGICAL, key, value, NULL, &fst);
        break;
    }
    FITS_TRY(path, hdu, key);
    if (present)
        *present = 1;
cleanup:
    return status;
}

/* Moves to the HDU with EXTNAME `name`; RVS_ERR_FORMAT naming it when absent. */
static int move_to(fitsfile *f, const char *path, const char *name, int want_type)
{
    int status = RVS_OK, fst = 0, type = 0;
    fits_movnam_hdu(f, ANY_HDU, (char *)name, 0, &fst);
    if (fst == BAD_HDU_NUM) {
        fits_clear_errmsg();
        return refuse(path, name, hint_load, "missing (no extension with EXTNAME = '%s')", name);
    }
    FITS_TRY(path, name, "move to the HDU");
    fits_get_hdu_type(f, &type, &fst);
    FITS_TRY(path, name, "HDU type");
    if (type != want_type)
        return refuse(path, name, hint_load, "is %s, expected %s",
                      type == IMAGE_HDU ? "an image" : "a table",
                      want_type == IMAGE_HDU ? "an image" : "a binary table");
cleanup:
    return status;
}

/* 1 when an HDU of that EXTNAME exists. */
static int hdu_exists(fitsfile *f, const char *name)
{
    int fst = 0;
    fits_movnam_hdu(f, ANY_HDU, (char *)name, 0, &fst);
    fits_clear_errmsg();
    return fst == 0;
}

/* Reads image `name` of data type bitpix (FLOAT_IMG / DOUBLE_IMG) and shape [rows, cols]
 * (cols == 0: 1-D of rows values) into a new array of floats or doubles. */
static int read_image(fitsfile *f, const char *path, const char *name, int bitpix, size_t rows,
                      size_t cols, void **out)
{
    int status = RVS_OK, fst = 0, got_bitpix = 0, naxis = 0, anynul = 0;
    long naxes[3] = {0, 0, 0};
    void *buf = NULL;
    *out = NULL;
    RVS_TRY(move_to(f, path, name, IMAGE_HDU));
    fits_get_img_param(f, 3, &got_bitpix, &naxis, naxes, &fst);
    FITS_TRY(path, name, "image size");
    int want_naxis = cols ? 2 : 1;
    long want0 = (long)(cols ? cols : rows), want1 = cols ? (long)rows : 0;
    if (got_bitpix != bitpix) {
        status = refuse(path, name, hint_load, "BITPIX = %d, expected %d (%s)", got_bitpix,
                        bitpix, bitpix == FLOAT_IMG ? "float32" : "float64");
        goto cleanup;
    }
    if (naxis != want_naxis || naxes[0] != want0 || (cols && naxes[1] != want1)) {
        char got[64], want[64];
        if (naxis == 1)
            snprintf(got, sizeof got, "[%ld]", naxes[0]);
        else if (naxis == 2)
            snprintf(got, sizeof got, "[%ld, %ld]", naxes[1], naxes[0]);
        else
            snprintf(got, sizeof got, "NAXIS = %d", naxis);
        if (cols)
            snprintf(want, sizeof want, "[%zu, %zu]", rows, cols);
        else
            snprintf(want, sizeof want, "[%zu]", rows);
        status = refuse(path, name, hint_load, "shape %s, expected %s from the primary header",
                        got, want);
        goto cleanup;
    }
    size_t n = rows * (cols ? cols : 1);
    size_t es = bitpix == FLOAT_IMG ? sizeof(float) : sizeof(double);
    buf = rvs_malloc(n * es);
    if (!buf) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    /* no null value: NaN passes through and is refused by validate_content */
    fits_read_img(f, bitpix == FLOAT_IMG ? TFLOAT : TDOUBLE, 1, (LONGLONG)n, NULL, buf, &anynul,
                  &fst);
    FITS_TRY(path, name, "read the data");
    *out = buf;
    buf = NULL;
cleanup:
    free(buf);
    return status;
}

/* Column `col` of the current table must have cfitsio type `type` (TDOUBLE, TLOGICAL, TSTRING)
 * and one element per row; its number goes to *colnum. */
static int find_column(fitsfile *f, const char *path, const char *hdu, const char *col, int type,
                       int *colnum)
{
    int status = RVS_OK, fst = 0, typecode = 0;
    long repeat = 0, width = 0;
    fits_get_colnum(f, CASESEN, (char *)col, colnum, &fst);
    if (fst == COL_NOT_FOUND || fst == COL_NOT_UNIQUE) {
        fits_clear_errmsg();
        return refuse(path, hdu, hint_load, "column %s is missing", col);
    }
    FITS_TRY(path, hdu, col);
    fits_get_coltype(f, *colnum, &typecode, &repeat, &width, &fst);
    FITS_TRY(path, hdu, col);
    if (typecode != type || (type != TSTRING && repeat != 1) || (type == TSTRING && width < 1))
        return refuse(path, hdu, hint_load, "column %s has the wrong type (TFORM %s expected)",
                      col, type == TDOUBLE ? "D" : type == TLOGICAL ? "L" : "nA");
cleanup:
    return status;
}

static int read_double_column(fitsfile *f, const char *path, const char *hdu, const char *col,
                              size_t nrows, double *out)
{
    int status = RVS_OK, fst = 0, colnum = 0, anynul = 0;
    RVS_TRY(find_column(f, path, hdu, col, TDOUBLE, &colnum));
    fits_read_col(f, TDOUBLE, colnum, 1, 1, (LONGLONG)nrows, NULL, out, &anynul, &fst);
    FITS_TRY(path, hdu, col);
cleanup:
    return status;
}

static int table_rows(fitsfile *f, const char *path, const char *hdu, size_t *nrows)
{
    int status = RVS_OK, fst = 0;
    long n = 0;
    fits_get_num_rows(f, &n, &fst);
    FITS_TRY(path, hdu, "number of rows");
    *nrows = (size_t)n;
cleanup:
    return status;
}

/* §6.1: CHECKSUM and DATASUM present and correct in every HDU. */
static int verify_checksums(fitsfile *f, const char *path)
{
    int status = RVS_OK, fst = 0, nhdu = 0;
    fits_get_num_hdus(f, &nhdu, &fst);
    FITS_TRY(path, NULL, "count the HDUs");
    for (int i = 1; i <= nhdu; i++) {
        int dataok = 0, hduok = 0;
        char name[FLEN_VALUE] = "PRIMARY";
        fits_movabs_hdu(f, i, NULL, &fst);
        FITS_TRY(path, NULL, "move to an HDU");
        if (i > 1) {
            fits_read_key(f, TSTRING, "EXTNAME", name, NULL, &fst);
            if (fst) {
                fits_clear_errmsg();
                fst = 0;
                snprintf(name, sizeof name, "number %d", i);
            }
        }
        fits_verify_chksum(f, &dataok, &hduok, &fst);
        FITS_TRY(path, name, "verify the checksums");
        if (dataok == 0 || hduok == 0)
            return refuse(path, name, hint_load, "%s keyword missing (every HDU must carry "
                          "CHECKSUM and DATASUM)", dataok == 0 ? "DATASUM" : "CHECKSUM");
        if (dataok < 0 || hduok < 0)
            return refuse(path, name,
                          "copy the file again from its source or re-create it with rvs-import",
                          "%s does not match: the file is damaged or was edited",
                          dataok < 0 ? "DATASUM" : "CHECKSUM");
    }
cleanup:
    return status;
}

/* Base name of a path. */
static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static int check_fixed_string(const char *path, const char *key, const char *got,
                              const char *want)
{
    if (strcmp(got, want) != 0)
        return refuse(path, "PRIMARY", hint_load,
                      "%s = '%s': format version 1 knows only '%s'", key, got, want);
    return RVS_OK;
}

static int size_key(fitsfile *f, const char *path, const char *key, long min, size_t *out)
{
    long v = 0;
    int status = read_key(f, path, "PRIMARY", key, KEY_INT, 1, &v, NULL);
    if (status)
        return status;
    if (v < min || v > 1000000000L)
        return refuse(path, "PRIMARY", hint_load, "%s = %ld is out of range (>= %ld)", key, v,
                      min);
    *out = (size_t)v;
    return RVS_OK;
}

static int read_primary(fitsfile *f, struct rvs_library_arm *a)
{
    int status = RVS_OK, fst = 0, present = 0;
    const char *path = a->path;
    struct rvs_library_content *c = &a->c;
    struct rvs_library_provenance *p = &c->prov;
    char s[RVS_LIBRARY_STRLEN];
    long version = 0;
    char *longstr = NULL;

    /* name and version first: a foreign or newer file gets its own message */
    fits_movabs_hdu(f, 1, NULL, &fst);
    FITS_TRY(path, "PRIMARY", "move to the primary HDU");
    RVS_TRY(read_key(f, path, "PRIMARY", "RVSFMT", KEY_STRING, 0, s, &present));
    if (!present || strcmp(s, RVS_LIBRARY_FORMAT_NAME) != 0) {
        status = refuse(path, NULL, "give the directory of an rvsfit-cl library, or convert an "
                        "rvspecfit library with rvs-import",
                        "not an rvsfit-cl template library (primary keyword RVSFMT %s%s%s)",
                        present ? "= '" : "is missing", present ? s : "", present ? "'" : "");
        goto cleanup;
    }
    RVS_TRY(read_key(f, path, "PRIMARY", "RVSFVER", KEY_INT, 1, &version, NULL));
    if (version < 1 || version > RVS_LIBRARY_FORMAT_VERSION) {
        rvs_log(RVS_LOG_ERROR, MOD,
                "%s: template-library format version %ld; this rvsfit-cl (%s) reads versions 1 "
                "to %d only. Install a newer rvsfit-cl, or re-create the library with this "
                "version's rvs-import.",
                path, version, PACKAGE_VERSION, RVS_LIBRARY_FORMAT_VERSION);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    c->format_version = version;

    RVS_TRY(verify_checksums(f, path));
    fits_movabs_hdu(f, 1, NULL, &fst);
    FITS_TRY(path, "PRIMARY", "move to the primary HDU");

    /* fixed-value strings (§6.3) */
    static const char *const fixed[][2] = {{"EMULATOR", "NN"},        {"NONLIN", "SiLU"},
                                           {"OUTPUT", "log_flux"},    {"BNPOS", "after_nonlin"},
                                           {"HULLSPC", "mapped"},     {"WAVEREF", "vacuum"}};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        RVS_TRY(read_key(f, path, "PRIMARY", fixed[i][0], KEY_STRING, 1, s, NULL));
        RVS_TRY(check_fixed_string(path, fixed[i][0], s, fixed[i][1]));
    }
    RVS_TRY(read_key(f, path, "PRIMARY", "SETUP", KEY_STRING, 1, c->setup, NULL));
    char want_name[RVS_LIBRARY_STRLEN + 16];
    snprintf(want_name, sizeof want_name, "rvsfit_%s.fits", c->setup);
    if (strcmp(base_name(path), want_name) != 0) {
        status = refuse(path, "PRIMARY", "rename the file or re-create it",
                        "SETUP = '%s' but the file is not called %s", c->setup, want_name);
        goto cleanup;
    }

    struct rvs_nn_desc *d = &c->nn;
    size_t indim = 0, nhull = 0;
    RVS_TRY(size_key(f, path, "NPARAM", 1, &c->nparam));
    RVS_TRY(size_key(f, path, "INDIM", 1, &indim));
    RVS_TRY(size_key(f, path, "NPIX", 1, &c->npix));
    RVS_TRY(size_key(f, path, "NLAYERS", 0, &d->nlayers));
    RVS_TRY(size_key(f, path, "WIDTH", 1, &d->width));
    RVS_TRY(size_key(f, path, "NPC", 1, &d->npc));
    RVS_TRY(size_key(f, path, "NHULL", 0, &nhull));
    if (c->nparam != indim) {
        status = refuse(path, "PRIMARY", hint_load, "NPARAM = %zu but INDIM = %zu", c->nparam,
                        indim);
        goto cleanup;
    }
    if (c->nparam > RVS_NN_MAX_INPUTS || d->nlayers > RVS_NN_MAX_HIDDEN ||
        nhull > RVS_LIBRARY_MAX_HULLS) {
        status = refuse(path, "PRIMARY", "use a library within these limits",
                        "NPARAM = %zu, NLAYERS = %zu, NHULL = %zu: this rvsfit-cl supports at "
                        "most %d, %d, %d",
                        c->nparam, d->nlayers, nhull, RVS_NN_MAX_INPUTS, RVS_NN_MAX_HIDDEN,
                        RVS_LIBRARY_MAX_HULLS);
        goto cleanup;
    }
    d->indim = indim;
    d->npix = c->npix;
    c->nhull = nhull;
    int withbn = 0;
    double eps = 0, logclip = 0;
    RVS_TRY(read_key(f, path, "PRIMARY", "WITHBN", KEY_LOGICAL, 1, &withbn, NULL));
    d->with_batchnorm = withbn != 0;
    RVS_TRY(read_key(f, path, "PRIMARY", "BNEPS", KEY_REAL, 1, &eps, NULL));
    RVS_TRY(read_key(f, path, "PRIMARY", "LOGSTEP", KEY_REAL, 1, &c->log_step, NULL));
    RVS_TRY(read_key(f, path, "PRIMARY", "LOGCLIP", KEY_REAL, 1, &logclip, NULL));
    if (!(eps > 0) || !isfinite(eps)) {
        status = refuse(path, "PRIMARY", hint_load, "BNEPS = %g: must be > 0", eps);
        goto cleanup;
    }
    if (!(logclip > 0)) {
        status = refuse(path, "PRIMARY", hint_load, "LOGCLIP = %g: must be > 0", logclip);
        goto cleanup;
    }
    if (logclip != SUPPORTED_LOGCLIP) {
        status = refuse(path, "PRIMARY", "re-create the library with LOGCLIP = 300",
                        "LOGCLIP = %g: this rvsfit-cl's network evaluation clips at %g only",
                        logclip, SUPPORTED_LOGCLIP);
        goto cleanup;
    }
    for (size_t i = 0; i < RVS_NN_MAX_LINEAR; i++)
        d->bn[i].eps = eps;

    /* required provenance (§2) and the optional keywords */
    RVS_TRY(read_key(f, path, "PRIMARY", "CREATOR", KEY_STRING, 1, p->creator, NULL));
    RVS_TRY(read_key(f, path, "PRIMARY", "CREATVER", KEY_STRING, 1, p->creator_version, NULL));
    RVS_TRY(read_key(f, path, "PRIMARY", "DATE", KEY_STRING, 1, p->date, NULL));
    RVS_TRY(read_key(f, path, "PRIMARY", "GRIDNAME", KEY_STRING, 1, p->grid_name, NULL));
    struct {
        const char *key;
        char *dest;
    } opt[] = {{"LIBREV", p->librev}, {"SRCSOFT", p->srcsoft},   {"SRCVER", p->srcver},
               {"SRCH5", p->srch5},   {"SRCH5SHA", p->srch5sha}, {"SRCNN", p->srcnn},
               {"SRCNNSHA", p->srcnnsha}};
    for (size_t i = 0; i < sizeof opt / sizeof opt[0]; i++)
        RVS_TRY(read_key(f, path, "PRIMARY", opt[i].key, KEY_STRING, 0, opt[i].dest, NULL));
    RVS_TRY(read_key(f, path, "PRIMARY", "CKPTVER", KEY_INT, 0, &p->ckptver, &present));
    if (!present)
        p->ckptver = -1;
    RVS_TRY(read_key(f, path, "PRIMARY", "NNARCHV", KEY_INT, 0, &p->nnarchv, &present));
    if (!present)
        p->nnarchv = -1;
    RVS_TRY(read_key(f, path, "PRIMARY", "TRNLOSS", KEY_REAL, 0, &p->trnloss, &present));
    if (!present)
        p->trnloss = NAN;
    RVS_TRY(read_key(f, path, "PRIMARY", "VALERR", KEY_REAL, 0, &p->valerr, &present));
    if (!present)
        p->valerr = NAN;
    /* the trainer's held-out emulation error (written by rvsfit-cl-train, read for reports
     * and tests; the library writer leaves them to the trainer) */
    RVS_TRY(read_key(f, path, "PRIMARY", "VALMED", KEY_REAL, 0, &p->valmed, &present));
    if (!present)
        p->valmed = NAN;
    RVS_TRY(read_key(f, path, "PRIMARY", "VAL99", KEY_REAL, 0, &p->val99, &present));
    if (!present)
        p->val99 = NAN;
    RVS_TRY(read_key(f, path, "PRIMARY", "VDWMODE", KEY_STRING, 0, p->grid_vdw, NULL));
    RVS_TRY(read_key(f, path, "PRIMARY", "SAMPBRD", KEY_REAL, 0, &p->grid_sampling, &present));
    if (!present)
        p->grid_sampling = NAN;
    struct {
        const char *key;
        long *dest;
    } counts[] = {{"NTRAIN", &p->ntrain}, {"NVALID", &p->nvalid}, {"NEPOCH", &p->nepoch}};
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
        RVS_TRY(read_key(f, path, "PRIMARY", counts[i].key, KEY_INT, 0, counts[i].dest,
                         &present));
        if (!present)
            *counts[i].dest = -1;
    }
    /* the templates' LSF (§2.1): required from version 2 on; version 1 did not record it */
    c->lsf.kind = RVS_LIBRARY_LSF_UNKNOWN;
    c->lsf.sigma = NAN;
    if (version >= 2) {
        int rmat = 0;
        RVS_TRY(read_key(f, path, "PRIMARY", "LSFTYPE", KEY_STRING, 1, s, NULL));
        if (strcmp(s, "GAUSSIAN") == 0) {
            c->lsf.kind = RVS_LIBRARY_LSF_GAUSSIAN;
            RVS_TRY(read_key(f, path, "PRIMARY", "LSFSIG", KEY_REAL, 1, &c->lsf.sigma, NULL));
        } else if (strcmp(s, "UNKNOWN") != 0) {
            status = refuse(path, "PRIMARY", hint_load,
                            "LSFTYPE = '%s': must be 'GAUSSIAN' or 'UNKNOWN'", s);
            goto cleanup;
        }
        RVS_TRY(read_key(f, path, "PRIMARY", "LSFRMAT", KEY_LOGICAL, 1, &rmat, NULL));
        c->lsf.resolution_matrix = rmat != 0;
    }
    fits_read_key_longstr(f, "TRAINCMD", &longstr, NULL, &fst);
    if (fst == KEY_NO_EXIST) {
        fits_clear_errmsg();
        fst = 0;
    } else {
        FITS_TRY(path, "PRIMARY", "TRAINCMD");
        a->traincmd = rvs_strdup(longstr);
        if (!a->traincmd) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        p->traincmd = a->traincmd;
    }
cleanup:
    if (longstr)
        fits_free_memory(longstr, &fst);
    return status;
}

static int read_params(fitsfile *f, struct rvs_library_arm *a)
{
    int status = RVS_OK, fst = 0, colnum = 0, anynul = 0;
    const char *path = a->path;
    struct rvs_library_content *c = &a->c;
    size_t nrows = 0, np = c->nparam;
    double m[RVS_NN_MAX_INPUTS], s[RVS_NN_MAX_INPUTS], lo[RVS_NN_MAX_INPUTS],
        hi[RVS_NN_MAX_INPUTS];
    char lg[RVS_NN_MAX_INPUTS];
    char names[RVS_NN_MAX_INPUTS][RVS_LIBRARY_STRLEN];
    char *name_ptr[RVS_NN_MAX_INPUTS];
    RVS_TRY(move_to(f, path, "PARAMS", BINARY_TBL));
    RVS_TRY(table_rows(f, path, "PARAMS", &nrows));
    if (nrows != np) {
        status = refuse(path, "PARAMS", hint_load, "%zu rows, NPARAM = %zu", nrows, np);
        goto cleanup;
    }
    RVS_TRY(find_column(f, path, "PARAMS", "NAME", TSTRING, &colnum));
    {
        int tc = 0;
        long rep = 0, width = 0;
        fits_get_coltype(f, colnum, &tc, &rep, &width, &fst);
        FITS_TRY(path, "PARAMS", "NAME");
        if (rep >= RVS_LIBRARY_STRLEN) {
            status = refuse(path, "PARAMS", hint_load, "column NAME is %ld characters wide", rep);
            goto cleanup;
        }
    }
    for (size_t i = 0; i < np; i++)
        name_ptr[i] = names[i];
    fits_read_col(f, TSTRING, colnum, 1, 1, (LONGLONG)np, "", name_ptr, &anynul, &fst);
    FITS_TRY(path, "PARAMS", "NAME");
    RVS_TRY(find_column(f, path, "PARAMS", "LOG10", TLOGICAL, &colnum));
    char no_null = 0;
    fits_read_col(f, TLOGICAL, colnum, 1, 1, (LONGLONG)np, &no_null, lg, &anynul, &fst);
    FITS_TRY(path, "PARAMS", "LOG10");
    RVS_TRY(read_double_column(f, path, "PARAMS", "M", np, m));
    RVS_TRY(read_double_column(f, path, "PARAMS", "S", np, s));
    RVS_TRY(read_double_column(f, path, "PARAMS", "TRAINMIN", np, lo));
    RVS_TRY(read_double_column(f, path, "PARAMS", "TRAINMAX", np, hi));
    for (size_t i = 0; i < np; i++) {
        struct rvs_library_param *q = &c->params[i];
        /* cfitsio strips trailing blanks; a name is a bare identifier */
        memcpy(q->name, names[i], sizeof q->name);
        q->name[sizeof q->name - 1] = 0;
        q->log10 = lg[i] != 0;
        q->m = m[i];
        q->s = s[i];
        q->train_min = lo[i];
        q->train_max = hi[i];
        c->nn.log_input[i] = q->log10;
        c->nn.map_center[i] = m[i];
        c->nn.map_scale[i] = s[i];
    }
cleanup:
    return status;
}

static int read_weights(fitsfile *f, struct rvs_library_arm *a)
{
    int status = RVS_OK;
    struct weight_entry e[MAX_WEIGHTS];
    size_t n = weight_entries(&a->c.nn, e);
    for (size_t w = 0; w < n; w++) {
        void *data = NULL;
        RVS_TRY(read_image(f, a->path, e[w].name, FLOAT_IMG, e[w].rows, e[w].cols, &data));
        a->weights[a->nweights++] = data;
        *e[w].slot = data;
    }
    /* §6.5: BatchNorm HDUs present iff WITHBN */
    if (!a->c.nn.with_batchnorm && a->c.nn.nlayers > 0 && hdu_exists(f, "BN1_W")) {
        status = refuse(a->path, "BN1_W", hint_load,
                        "present although WITHBN = F: the network description is inconsistent");
        goto cleanup;
    }
cleanup:
    return status;
}

static int read_hulls(fitsfile *f, struct rvs_library_arm *a)
{
    int status = RVS_OK;
    const char *path = a->path;
    struct rvs_library_content *c = &a->c;
    for (size_t k = 0; k < c->nhull; k++) {
        char hdu[16], p1[RVS_LIBRARY_STRLEN], p2[RVS_LIBRARY_STRLEN];
        long i1 = 0, i2 = 0;
        size_t n = 0;
        snprintf(hdu, sizeof hdu, "HULL%zu", k + 1);
        RVS_TRY(move_to(f, path, hdu, BINARY_TBL));
        RVS_TRY(read_key(f, path, hdu, "HULLI1", KEY_INT, 1, &i1, NULL));
        RVS_TRY(read_key(f, path, hdu, "HULLI2", KEY_INT, 1, &i2, NULL));
        RVS_TRY(read_key(f, path, hdu, "HULLP1", KEY_STRING, 1, p1, NULL));
        RVS_TRY(read_key(f, path, hdu, "HULLP2", KEY_STRING, 1, p2, NULL));
        if (i1 < 0 || i2 < 0 || i1 == i2 || (size_t)i1 >= c->nparam ||
            (size_t)i2 >= c->nparam) {
            status = refuse(path, hdu, hint_load,
                            "HULLI1 = %ld, HULLI2 = %ld: must differ and be in 0..%zu", i1, i2,
                            c->nparam - 1);
            goto cleanup;
        }
        if (strcmp(p1, c->params[i1].name) != 0 || strcmp(p2, c->params[i2].name) != 0) {
            status = refuse(path, hdu, hint_load,
                            "HULLP1/HULLP2 = '%s', '%s' but PARAMS rows %ld, %ld are '%s', '%s'",
                            p1, p2, i1, i2, c->params[i1].name, c->params[i2].name);
            goto cleanup;
        }
        RVS_TRY(table_rows(f, path, hdu, &n));
        if (n < 3) {
            status = refuse(path, hdu, hint_load, "%zu rows: a hull needs at least 3 vertices",
                            n);
            goto cleanup;
        }
        double *data = rvs_malloc(5 * n * sizeof *data);
        if (!data) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        a->hull_data[k] = data;
        static const char *const cols[5] = {"X", "Y", "NX", "NY", "OFFSET"};
        for (int t = 0; t < 5; t++)
            RVS_TRY(read_double_column(f, path, hdu, cols[t], n, data + (size_t)t * n));
        struct rvs_library_hull *h = &c->hulls[k];
        h->i1 = (size_t)i1;
        h->i2 = (size_t)i2;
        h->n = n;
        h->x = data;
        h->y = data + n;
        h->nx = data + 2 * n;
        h->ny = data + 3 * n;
        h->offset = data + 4 * n;
    }
cleanup:
    return status;
}

/* The optional LSF HDU (§2.1): sigma(lambda) nodes of a Gaussian LSF. */
static int read_lsf_table(fitsfile *f, struct rvs_library_arm *a)
{
    int status = RVS_OK;
    const char *path = a->path;
    size_t n = 0;
    if (a->c.format_version < 2 || !hdu_exists(f, "LSF"))
        return RVS_OK;
    if (a->c.lsf.kind != RVS_LIBRARY_LSF_GAUSSIAN)
        return refuse(path, "LSF", hint_load, "an LSF table needs LSFTYPE = 'GAUSSIAN'");
    RVS_TRY(move_to(f, path, "LSF", BINARY_TBL));
    RVS_TRY(table_rows(f, path, "LSF", &n));
    if (n < 2 || n > RVS_LIBRARY_LSF_MAX_NODES)
        return refuse(path, "LSF", hint_load, "%zu rows: an LSF table needs 2..%d", n,
                      RVS_LIBRARY_LSF_MAX_NODES);
    a->lsf_nodes = rvs_malloc(2 * n * sizeof *a->lsf_nodes);
    if (!a->lsf_nodes)
        return RVS_ERR_NOMEM;
    RVS_TRY(read_double_column(f, path, "LSF", "WAVE", n, a->lsf_nodes));
    RVS_TRY(read_double_column(f, path, "LSF", "SIGMA", n, a->lsf_nodes + n));
    a->c.lsf.nnodes = n;
    a->c.lsf.node_wave = a->lsf_nodes;
    a->c.lsf.node_sigma = a->lsf_nodes + n;
cleanup:
    return status;
}

int rvs_library_open_file(const char *path, struct rvs_library_arm **arm)
{
    int status = RVS_OK, fst = 0;
    fitsfile *f = NULL;
    struct rvs_library_arm *a = NULL;
    if (!arm || !path)
        return RVS_ERR_INVALID_ARGUMENT;
    *arm = NULL;
    a = rvs_calloc(1, sizeof *a);
    if (!a || !(a->path = rvs_strdup(path))) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    rvs_nn_desc_init(&a->c.nn);
    if (access(path, R_OK) != 0) {
        rvs_log(RVS_LOG_ERROR, MOD,
                "%s: cannot read the template-library file: %s; check the library directory "
                "given (rvsfit-cl --template-lib, rvsfit-cl-mock --library): it must hold "
                "rvsfit_<setup>.fits for every arm fitted",
                path, strerror(errno));
        status = RVS_ERR_IO;
        goto cleanup;
    }
    RVS_TRY(rvs_fits_guard(path, MOD, "the template-library file is damaged: copy it again or "
                                      "re-create it (rvs-import, rvsfit-cl-train)",
                           NULL));
    /* the disk-file variant takes the name literally (no extended filename syntax) */
    fits_open_diskfile(&f, path, READONLY, &fst);
    FITS_TRY(path, NULL, "open the template-library file");
    RVS_TRY(read_primary(f, a));
    RVS_TRY(read_params(f, a));
    {
        void *w = NULL;
        RVS_TRY(read_image(f, path, "WAVE", DOUBLE_IMG, a->c.npix, 0, &w));
        a->wave = w;
        a->c.wave = a->wave;
    }
    RVS_TRY(read_weights(f, a));
    RVS_TRY(read_hulls(f, a));
    RVS_TRY(read_lsf_table(f, a));
    RVS_TRY(validate_content(&a->c, path, hint_load));
    rvs_log(RVS_LOG_INFO, MOD,
            "%s: setup %s, %zu pixels %.2f-%.2f A, network %zu-%zux%zu-%zu%s, %zu hulls, "
            "grid '%s', created by %s %s on %s",
            path, a->c.setup, a->c.npix, a->c.wave[0], a->c.wave[a->c.npix - 1], a->c.nparam,
            a->c.nn.nlayers, a->c.nn.width, a->c.nn.npc, a->c.nn.with_batchnorm ? " (BN)" : "",
            a->c.nhull, a->c.prov.grid_name, a->c.prov.creator, a->c.prov.creator_version,
            a->c.prov.date);
    *arm = a;
    a = NULL;
cleanup:
    if (f) {
        int fst2 = 0;
        fits_close_file(f, &fst2);
        if (fst2)
            fits_clear_errmsg();
    }
    rvs_library_close(&a);
    return status;
}

int rvs_library_open(const char *dir, const char *setup, struct rvs_library_arm **arm)
{
    if (!arm)
        return RVS_ERR_INVALID_ARGUMENT;
    *arm = NULL;
    if (!dir || !setup || !setup[0] || strchr(setup, '/')) {
        rvs_log(RVS_LOG_ERROR, MOD, "template library: bad directory or setup name '%s'",
                setup ? setup : "(null)");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    size_t len = strlen(dir) + strlen(setup) + 32;
    char *path = rvs_malloc(len);
    if (!path)
        return RVS_ERR_NOMEM;
    snprintf(path, len, "%s/rvsfit_%s.fits", dir, setup);
    int status = rvs_library_open_file(path, arm);
    free(path);
    return status;
}

void rvs_library_close(struct rvs_library_arm **arm)
{
    if (!arm || !*arm)
        return;
    struct rvs_library_arm *a = *arm;
    for (size_t i = 0; i < a->nweights; i++)
        free(a->weights[i]);
    for (size_t k = 0; k < RVS_LIBRARY_MAX_HULLS; k++)
        free(a->hull_data[k]);
    free(a->wave);
    free(a->lsf_nodes);
    free(a->traincmd);
    free(a->path);
    free(a);
    *arm = NULL;
}

int rvs_library_check_desi(const struct rvs_library_arm *arm)
{
    static const char *const want[4] = {"teff", "logg", "feh", "alpha"};
    int ok = arm->c.nparam == 4;
    for (size_t i = 0; ok && i < 4; i++)
        ok = strcmp(arm->c.params[i].name, want[i]) == 0;
    if (!ok) {
        char got[4 * RVS_LIBRARY_STRLEN] = "";
        for (size_t i = 0; i < arm->c.nparam; i++) {
            strncat(got, i ? ", " : "", sizeof got - strlen(got) - 1);
            strncat(got, arm->c.params[i].name, sizeof got - strlen(got) - 1);
        }
        return refuse(arm->path, "PARAMS", "use a library trained on these four parameters",
                      "parameters (%s): the DESI fit needs (teff, logg, feh, alpha) in this order",
                      got);
    }
    return RVS_OK;
}

/* ------------------------------------------------------------------ accessors */

const char *rvs_library_path(const struct rvs_library_arm *arm) { return arm->path; }
const char *rvs_library_setup(const struct rvs_library_arm *arm) { return arm->c.setup; }
const struct rvs_library_content *rvs_library_content(const struct rvs_library_arm *arm)
{
    return &arm->c;
}
size_t rvs_library_npix(const struct rvs_library_arm *arm) { return arm->c.npix; }
const double *rvs_library_wave(const struct rvs_library_arm *arm) { return arm->c.wave; }
double rvs_library_log_step(const struct rvs_library_arm *arm) { return arm->c.log_step; }
size_t rvs_library_nparam(const struct rvs_library_arm *arm) { return arm->c.nparam; }
const char *rvs_library_param_name(const struct rvs_library_arm *arm, size_t i)
{
    return i < arm->c.nparam ? arm->c.params[i].name : NULL;
}
int rvs_library_param_index(const struct rvs_library_arm *arm, const char *name)
{
    for (size_t i = 0; i < arm->c.nparam; i++)
        if (strcmp(arm->c.params[i].name, name) == 0)
            return (int)i;
    return -1;
}
const struct rvs_library_provenance *rvs_library_provenance(const struct rvs_library_arm *arm)
{
    return &arm->c.prov;
}

const struct rvs_library_lsf *rvs_library_lsf(const struct rvs_library_arm *arm)
{
    return &arm->c.lsf;
}

double rvs_library_lsf_sigma_at(const struct rvs_library_lsf *lsf, double lambda)
{
    if (lsf->kind != RVS_LIBRARY_LSF_GAUSSIAN)
        return NAN;
    size_t n = lsf->nnodes;
    if (n < 2)
        return lsf->sigma;
    const double *w = lsf->node_wave, *sg = lsf->node_sigma;
    if (!(lambda > w[0]))
        return sg[0];
    if (!(lambda < w[n - 1]))
        return sg[n - 1];
    size_t lo = 0, hi = n - 1; /* w[lo] < lambda < w[hi] */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (w[mid] <= lambda)
            lo = mid;
        else
            hi = mid;
    }
    double t = (lambda - w[lo]) / (w[hi] - w[lo]);
    return sg[lo] + t * (sg[hi] - sg[lo]);
}

void rvs_library_lsf_describe(const struct rvs_library_lsf *lsf, char *buf, size_t size)
{
    const double fwhm = 2.0 * sqrt(2.0 * log(2.0));
    if (lsf->kind != RVS_LIBRARY_LSF_GAUSSIAN) {
        snprintf(buf, size, "unknown");
    } else if (lsf->nnodes < 2) {
        snprintf(buf, size, "Gaussian sigma %.4g A (FWHM %.4g A)", lsf->sigma, lsf->sigma * fwhm);
    } else {
        double lo = lsf->node_sigma[0], hi = lo;
        for (size_t j = 1; j < lsf->nnodes; j++) {
            lo = fmin(lo, lsf->node_sigma[j]);
            hi = fmax(hi, lsf->node_sigma[j]);
        }
        snprintf(buf, size, "Gaussian sigma %.4g-%.4g A (table of %zu nodes)", lo, hi,
                 lsf->nnodes);
    }
}
const struct rvs_nn_desc *rvs_library_nn_desc(const struct rvs_library_arm *arm)
{
    return &arm->c.nn;
}

/* ------------------------------------------------------------------ mapping and penalty */

void rvs_library_map(const struct rvs_library_arm *arm, const double *theta, double *x)
{
    for (size_t p = 0; p < arm->c.nparam; p++) {
        /* Mapper.forward: float32 parameters, log10 in float32, (y - M) / S against float64 M, S */
        float t = (float)theta[p];
        float y = arm->c.params[p].log10 ? log10f(t) : t;
        x[p] = ((double)y - arm->c.params[p].m) / arm->c.params[p].s;
    }
}

double rvs_library_outside(const struct rvs_library_arm *arm, const double *theta)
{
    double x[RVS_NN_MAX_INPUTS];
    rvs_library_map(arm, theta, x);
    for (size_t p = 0; p < arm->c.nparam; p++)
        if (!isfinite(x[p]))
            return NAN;
    /* OutsideInterpolator.__call__: largest facet value over both hulls, squared when > 0 */
    double worst = 0;
    for (size_t k = 0; k < arm->c.nhull; k++) {
        const struct rvs_library_hull *h = &arm->c.hulls[k];
        double u = x[h->i1], v = x[h->i2];
        for (size_t j = 0; j < h->n; j++) {
            double dist = h->nx[j] * u + h->ny[j] * v + h->offset[j];
            if (dist > worst)
                worst = dist;
        }
    }
    return worst * worst;
}

void rvs_library_outside_many(const struct rvs_library_arm *arm, const double *theta,
                              size_t count, double *out)
{
    for (size_t e = 0; e < count; e++)
        out[e] = rvs_library_outside(arm, theta + e * arm->c.nparam);
}

/* ------------------------------------------------------------------ writing */

static int put_key(fitsfile *f, int type, const char *key, const void *value, const char *comment,
                   int *fst)
{
    fits_write_key(f, type, key, (void *)value, comment, fst);
    return *fst;
}

static int write_primary(fitsfile *f, const struct rvs_library_content *c, const char *path)
{
    int status = RVS_OK, fst = 0;
    const struct rvs_nn_desc *d = &c->nn;
    const struct rvs_library_provenance *p = &c->prov;
    long n_param = (long)c->nparam, n_pix = (long)c->npix, indim = (long)d->indim;
    long nlayers = (long)d->nlayers, width = (long)d->width, npc = (long)d->npc;
    long nhull = (long)c->nhull, version = RVS_LIBRARY_FORMAT_VERSION;
    int withbn = d->with_batchnorm ? 1 : 0;
    double eps = d->with_batchnorm && d->nlayers > 0 ? d->bn[1].eps : 1e-5;
    double logclip = SUPPORTED_LOGCLIP, log_step = c->log_step;
    const char *creator = p->creator[0] ? p->creator : "rvsfit-cl";
    const char *creatver = p->creator[0] ? p->creator_version : PACKAGE_VERSION;
    const char *grid = p->grid_name[0] ? p->grid_name : "unknown";

    fits_create_img(f, BYTE_IMG, 0, NULL, &fst);
    FITS_TRY(path, "PRIMARY", "create the primary HDU");
    /* the order and comments of tools/rvs-import (build_hdus) */
    put_key(f, TSTRING, "RVSFMT", RVS_LIBRARY_FORMAT_NAME, "file format name", &fst);
    put_key(f, TLONG, "RVSFVER", &version, "file format version", &fst);
    put_key(f, TSTRING, "SETUP", c->setup, "spectrograph arm setup", &fst);
    put_key(f, TSTRING, "EMULATOR", "NN", "template emulator type", &fst);
    put_key(f, TLONG, "NPARAM", &n_param, "number of stellar parameters", &fst);
    put_key(f, TLONG, "NPIX", &n_pix, "template pixels (length of WAVE)", &fst);
    fits_write_key_dbl(f, "LOGSTEP", log_step, -17, "[ln(Angstrom)] natural-log wavelength step",
                       &fst);
    put_key(f, TSTRING, "WAVEREF", "vacuum", "wavelength reference", &fst);
    put_key(f, TLONG, "INDIM", &indim, "network inputs", &fst);
    put_key(f, TLONG, "NLAYERS", &nlayers, "hidden width x width layers", &fst);
    put_key(f, TLONG, "WIDTH", &width, "hidden layer width", &fst);
    put_key(f, TLONG, "NPC", &npc, "bottleneck (principal component) width", &fst);
    put_key(f, TLOGICAL, "WITHBN", &withbn, "BatchNorm1d in the hidden layers", &fst);
    put_key(f, TSTRING, "BNPOS", "after_nonlin", "BatchNorm position in a hidden layer", &fst);
    fits_write_key_dbl(f, "BNEPS", eps, -17, "BatchNorm epsilon", &fst);
    put_key(f, TSTRING, "NONLIN", "SiLU", "activation function", &fst);
    put_key(f, TSTRING, "OUTPUT", "log_flux", "network output: natural log of flux", &fst);
    fits_write_key_dbl(f, "LOGCLIP", logclip, -17, "flux = exp(clip(output, -LOGCLIP, LOGCLIP))",
                       &fst);
    put_key(f, TLONG, "NHULL", &nhull, "number of HULLn extensions", &fst);
    put_key(f, TSTRING, "HULLSPC", "mapped", "hull coordinate space", &fst);
    {
        /* §2.1: the templates' own LSF, and whether the library is meant for the
         * resolution-matrix path */
        int gauss = c->lsf.kind == RVS_LIBRARY_LSF_GAUSSIAN, rmat = c->lsf.resolution_matrix != 0;
        put_key(f, TSTRING, "LSFTYPE", gauss ? "GAUSSIAN" : "UNKNOWN",
                "line-spread function of the templates", &fst);
        if (gauss)
            fits_write_key_dbl(f, "LSFSIG", c->lsf.sigma, -12,
                               "[Angstrom] its Gaussian sigma (table: median)", &fst);
        put_key(f, TLOGICAL, "LSFRMAT", &rmat, "made for the resolution-matrix fit", &fst);
    }
    put_key(f, TSTRING, "CREATOR", creator, "software that wrote this file", &fst);
    put_key(f, TSTRING, "CREATVER", creatver, "version of CREATOR (rvsfit-cl)", &fst);
    FITS_TRY(path, "PRIMARY", "write the keywords");
    {
        /* DATE = now, UTC, YYYY-MM-DDThh:mm:ss (fits_get_system_time's form) */
        char date[FLEN_VALUE];
        int timeref = 0;
        fits_get_system_time(date, &timeref, &fst);
        put_key(f, TSTRING, "DATE", date, "UTC creation time", &fst);
    }
    put_key(f, TSTRING, "GRIDNAME", grid, "synthetic spectral grid", &fst);
    FITS_TRY(path, "PRIMARY", "write the keywords");
    struct {
        const char *key, *value, *comment;
    } opt[] = {{"LIBREV", p->librev, "library revision"},
               {"SRCSOFT", p->srcsoft, "software that trained the network"},
               {"SRCVER", p->srcver, "its version"},
               {"SRCH5", p->srch5, "imported rvspecfit interpolator file"},
               {"SRCH5SHA", p->srch5sha, ""},
               {"SRCNN", p->srcnn, "imported PyTorch checkpoint"},
               {"SRCNNSHA", p->srcnnsha, ""}};
    /* LIBREV always (rvs-import's files and the trainer's have it, empty or not), the rest
     * when known */
    for (size_t i = 0; i < sizeof opt / sizeof opt[0]; i++)
        if (opt[i].value[0] || i == 0)
            put_key(f, TSTRING, opt[i].key, opt[i].value, opt[i].comment, &fst);
    if (p->ckptver >= 0)
        put_key(f, TLONG, "CKPTVER", &p->ckptver, "checkpoint_version (0: legacy bare state dict)",
                &fst);
    if (p->nnarchv >= 0)
        put_key(f, TLONG, "NNARCHV", &p->nnarchv, "nn_arch_version (0: legacy, not recorded)",
                &fst);
    if (isfinite(p->trnloss))
        fits_write_key_dbl(f, "TRNLOSS", p->trnloss, -17, "final training loss", &fst);
    if (p->grid_vdw[0]) {
        put_key(f, TSTRING, "VDWMODE", p->grid_vdw, "grid's van der Waals widths (mkgrid)", &fst);
        if (isfinite(p->grid_sampling))
            fits_write_key_dbl(f, "SAMPBRD", p->grid_sampling, 3,
                               "grid's sampling broadening [pixels] (mkgrid)", &fst);
    }
    if (isfinite(p->valerr))
        fits_write_key_dbl(f, "VALERR", p->valerr, -17, "validation error", &fst);
    /* the trainer's held-out emulation error and counts, kept when a file is rewritten */
    if (isfinite(p->valmed))
        fits_write_key_dbl(f, "VALMED", p->valmed, -6, "held-out median |dflux|/flux per pixel",
                           &fst);
    if (isfinite(p->val99))
        fits_write_key_dbl(f, "VAL99", p->val99, -6, "held-out 99th percentile |dflux|/flux",
                           &fst);
    if (p->ntrain >= 0)
        put_key(f, TLONG, "NTRAIN", &p->ntrain, "training spectra", &fst);
    if (p->nvalid >= 0)
        put_key(f, TLONG, "NVALID", &p->nvalid, "held-out validation spectra", &fst);
    if (p->nepoch >= 0)
        put_key(f, TLONG, "NEPOCH", &p->nepoch, "training epochs (resumed runs included)", &fst);
    /* no comment: cfitsio would otherwise spend an extra CONTINUE card on it */
    if (p->traincmd && p->traincmd[0])
        fits_write_key_longstr(f, "TRAINCMD", p->traincmd, NULL, &fst);
    FITS_TRY(path, "PRIMARY", "write the provenance keywords");
    fits_write_chksum(f, &fst);
    FITS_TRY(path, "PRIMARY", "write the checksums");
cleanup:
    return status;
}

static int write_image(fitsfile *f, const char *path, const char *name, int bitpix, size_t rows,
                       size_t cols, const void *data, const char *srckey)
{
    int status = RVS_OK, fst = 0;
    long naxes[2] = {(long)(cols ? cols : rows), (long)rows};
    fits_create_img(f, bitpix, cols ? 2 : 1, naxes, &fst);
    put_key(f, TSTRING, "EXTNAME", name, "extension name", &fst);
    if (srckey)
        put_key(f, TSTRING, "SRCKEY", srckey, "PyTorch state-dict key", &fst);
    else
        put_key(f, TSTRING, "BUNIT", "Angstrom", "vacuum wavelength", &fst);
    FITS_TRY(path, name, "create the HDU");
    fits_write_img(f, bitpix == FLOAT_IMG ? TFLOAT : TDOUBLE, 1,
                   (LONGLONG)(rows * (cols ? cols : 1)), (void *)data, &fst);
    FITS_TRY(path, name, "write the data");
    fits_write_chksum(f, &fst);
    FITS_TRY(path, name, "write the checksums");
cleanup:
    return status;
}

static int write_params(fitsfile *f, const char *path, const struct rvs_library_content *c)
{
    int status = RVS_OK, fst = 0;
    char *ttype[6] = {"NAME", "LOG10", "M", "S", "TRAINMIN", "TRAINMAX"};
    char *tform[6] = {"16A", "L", "D", "D", "D", "D"};
    size_t np = c->nparam;
    char *names[RVS_NN_MAX_INPUTS];
    char lg[RVS_NN_MAX_INPUTS];
    double col[4][RVS_NN_MAX_INPUTS];
    for (size_t i = 0; i < np; i++) {
        if (strlen(c->params[i].name) > 16)
            return refuse(path, "PARAMS", hint_write, "parameter name '%s' exceeds 16 characters",
                          c->params[i].name);
        names[i] = (char *)c->params[i].name;
        lg[i] = (char)(c->params[i].log10 != 0);
        col[0][i] = c->params[i].m;
        col[1][i] = c->params[i].s;
        col[2][i] = c->params[i].train_min;
        col[3][i] = c->params[i].train_max;
    }
    fits_create_tbl(f, BINARY_TBL, (LONGLONG)np, 6, ttype, tform, NULL, "PARAMS", &fst);
    FITS_TRY(path, "PARAMS", "create the table");
    fits_write_col(f, TSTRING, 1, 1, 1, (LONGLONG)np, names, &fst);
    fits_write_col(f, TLOGICAL, 2, 1, 1, (LONGLONG)np, lg, &fst);
    for (int k = 0; k < 4; k++)
        fits_write_col(f, TDOUBLE, 3 + k, 1, 1, (LONGLONG)np, col[k], &fst);
    FITS_TRY(path, "PARAMS", "write the columns");
    fits_write_chksum(f, &fst);
    FITS_TRY(path, "PARAMS", "write the checksums");
cleanup:
    return status;
}

static int write_hull(fitsfile *f, const char *path, const struct rvs_library_content *c,
                      size_t k)
{
    int status = RVS_OK, fst = 0;
    const struct rvs_library_hull *h = &c->hulls[k];
    char *ttype[5] = {"X", "Y", "NX", "NY", "OFFSET"};
    char *tform[5] = {"D", "D", "D", "D", "D"};
    char hdu[16];
    long i1 = (long)h->i1, i2 = (long)h->i2;
    snprintf(hdu, sizeof hdu, "HULL%zu", k + 1);
    fits_create_tbl(f, BINARY_TBL, (LONGLONG)h->n, 5, ttype, tform, NULL, hdu, &fst);
    FITS_TRY(path, hdu, "create the table");
    const double *cols[5] = {h->x, h->y, h->nx, h->ny, h->offset};
    for (int t = 0; t < 5; t++)
        fits_write_col(f, TDOUBLE, t + 1, 1, 1, (LONGLONG)h->n, (void *)cols[t], &fst);
    put_key(f, TLONG, "HULLI1", &i1, "PARAMS row (0-based) of X", &fst);
    put_key(f, TLONG, "HULLI2", &i2, "PARAMS row (0-based) of Y", &fst);
    put_key(f, TSTRING, "HULLP1", c->params[h->i1].name, "parameter of X", &fst);
    put_key(f, TSTRING, "HULLP2", c->params[h->i2].name, "parameter of Y", &fst);
    FITS_TRY(path, hdu, "write the table");
    fits_write_chksum(f, &fst);
    FITS_TRY(path, hdu, "write the checksums");
cleanup:
    return status;
}

static int write_lsf_table(fitsfile *f, const char *path, const struct rvs_library_lsf *lsf)
{
    int status = RVS_OK, fst = 0;
    char *ttype[2] = {"WAVE", "SIGMA"};
    char *tform[2] = {"D", "D"};
    char *tunit[2] = {"Angstrom", "Angstrom"};
    fits_create_tbl(f, BINARY_TBL, (LONGLONG)lsf->nnodes, 2, ttype, tform, tunit, "LSF", &fst);
    FITS_TRY(path, "LSF", "create the table");
    fits_write_col(f, TDOUBLE, 1, 1, 1, (LONGLONG)lsf->nnodes, (void *)lsf->node_wave, &fst);
    fits_write_col(f, TDOUBLE, 2, 1, 1, (LONGLONG)lsf->nnodes, (void *)lsf->node_sigma, &fst);
    FITS_TRY(path, "LSF", "write the columns");
    fits_write_chksum(f, &fst);
    FITS_TRY(path, "LSF", "write the checksums");
cleanup:
    return status;
}

int rvs_library_write_arm(const char *path, const struct rvs_library_content *content,
                          int overwrite)
{
    int status = RVS_OK, fst = 0;
    fitsfile *f = NULL;
    char *tmp = NULL;
    if (!path || !content)
        return RVS_ERR_INVALID_ARGUMENT;
    char want_name[RVS_LIBRARY_STRLEN + 16];
    snprintf(want_name, sizeof want_name, "rvsfit_%s.fits", content->setup);
    if (!content->setup[0] || strchr(content->setup, '/') ||
        strcmp(base_name(path), want_name) != 0) {
        rvs_log(RVS_LOG_ERROR, MOD, "%s: a library file for setup '%s' must be called %s", path,
                content->setup, want_name);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (content->nn.npix != content->npix || content->nn.indim != content->nparam ||
        content->nparam > RVS_NN_MAX_INPUTS || content->nn.nlayers > RVS_NN_MAX_HIDDEN ||
        content->nhull > RVS_LIBRARY_MAX_HULLS) {
        rvs_log(RVS_LOG_ERROR, MOD, "%s: inconsistent sizes in the library content; %s", path,
                hint_write);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    status = validate_content(content, path, hint_write);
    if (status)
        return RVS_ERR_INVALID_ARGUMENT;
    if (!overwrite && access(path, F_OK) == 0) {
        rvs_log(RVS_LOG_ERROR, MOD, "%s exists; remove it or allow overwriting", path);
        return RVS_ERR_IO;
    }
    RVS_TRY(rvs_file_reserve_tmp(path, &tmp));
    unlink(tmp);
    fits_create_diskfile(&f, tmp, &fst);
    FITS_TRY(tmp, NULL, "create the file");
    RVS_TRY(write_primary(f, content, tmp));
    RVS_TRY(write_image(f, tmp, "WAVE", DOUBLE_IMG, content->npix, 0, content->wave, NULL));
    RVS_TRY(write_params(f, tmp, content));
    {
        struct rvs_nn_desc d = content->nn;
        struct weight_entry e[MAX_WEIGHTS];
        size_t n = weight_entries(&d, e);
        for (size_t w = 0; w < n; w++)
            RVS_TRY(write_image(f, tmp, e[w].name, FLOAT_IMG, e[w].rows, e[w].cols, *e[w].slot,
                                e[w].srckey));
    }
    for (size_t k = 0; k < content->nhull; k++)
        RVS_TRY(write_hull(f, tmp, content, k));
    if (content->lsf.kind == RVS_LIBRARY_LSF_GAUSSIAN && content->lsf.nnodes >= 2)
        RVS_TRY(write_lsf_table(f, tmp, &content->lsf));
    fits_close_file(f, &fst);
    f = NULL;
    FITS_TRY(tmp, NULL, "finish writing the file");
    RVS_TRY(rvs_file_commit(tmp, path));
    free(tmp);
    tmp = NULL;
cleanup:
    if (f) {
        int fst2 = 0;
        fits_close_file(f, &fst2);
        fits_clear_errmsg();
    }
    if (tmp) {
        unlink(tmp);
        rvs_file_tmp_done(tmp);
        free(tmp);
    }
    return status;
}
