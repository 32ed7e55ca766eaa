/* output.c: writes rvtab_*.fits and rvmod_*.fits as rvspecfit's rvs_desi_fit does
 * (py/rvspecfit/desi/desi_fit.py: proc_desi, get_column_desc, comment_filler, get_prim_header,
 * write_hdulist), with cfitsio.
 *
 * rvtab: PRIMARY, RVTAB, FIBERMAP (selected input rows), SCORES (same rows), EXP_FIBERMAP
 * (coadds: every exposure row of a selected TARGETID). rvmod: PRIMARY (plus the input's
 * SPGRP... keywords), per fitted arm X_WAVELENGTH and X_MODEL, FIBERMAP. The input tables are
 * copied header and all, row by row as raw bytes, so every input column survives unchanged.
 *
 * Deliberate differences from rvspecfit, all about bookkeeping:
 *  - X_MODEL has exactly one row per RVTAB row (zeros for a bad spectrum or an arm not fitted);
 *    rvspecfit sizes it by the good spectra but indexes it by all of them.
 *  - RVTAB's columns never depend on which row comes first (astropy sorts the names when the
 *    first row lacks a key); a BAD_SPECTRUM row has NaN fit values and NPIX_TOT 0.
 *  - Empty cases (no target selected, or a --targetid absent from the file) both give the full
 *    HDU layout with zero rows: RVTAB keeps its columns, X_MODEL is [0, nwave]. rvspecfit writes
 *    an RVTAB without columns in the first case and primary-only files in the second.
 *  - RVS_DEV/RVS_DRV record the OpenCL device and driver; DEPNAM00/01 are rvsfit-cl, cfitsio. */
#include <config.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <fitsio.h>

#include "base/internal.h"
#include "base/files.h"
#include "desi/output_files.h"
#include "rvsfit/output.h"

static const char arm_letter[RVS_DESI_NARMS] = {'B', 'R', 'Z'};

/* Logs a failed cfitsio call with the file it concerned and everything on cfitsio's message
 * stack, clears the stack, and returns an rvs status. */
static int fits_fail(int fst, const char *file, const char *what)
{
    char status_text[FLEN_STATUS] = "";
    char msg[FLEN_ERRMSG];
    fits_get_errstatus(fst, status_text);
    rvs_log(RVS_LOG_ERROR, "output", "%s: cannot %s (cfitsio %d: %s)", file, what, fst,
            status_text);
    while (fits_read_errmsg(msg))
        rvs_log(RVS_LOG_ERROR, "output", "%s: cfitsio: %s", file, msg);
    return fst == MEMORY_ALLOCATION ? RVS_ERR_NOMEM : RVS_ERR_IO;
}

/* cfitsio calls report through `fst`; on failure, log and jump to cleanup. */
#define FITS_CHECK(file, ...)                                                                      \
    do {                                                                                           \
        if (fst > 0) {                                                                             \
            char what_[256];                                                                       \
            snprintf(what_, sizeof(what_), __VA_ARGS__);                                           \
            status = fits_fail(fst, (file), what_);                                                \
            goto cleanup;                                                                          \
        }                                                                                          \
    } while (0)

/* FITS header strings must be printable ASCII; anything else (a UTF-8 file name in the command
 * line, say) becomes '?'. */
static char *header_text(const char *s)
{
    char *t = rvs_strdup(s ? s : "");
    if (t)
        for (char *p = t; *p; p++)
            if ((unsigned char)*p < 32 || (unsigned char)*p > 126)
                *p = '?';
    return t;
}

/* A string keyword, with the long-string (CONTINUE) convention when it does not fit a card. */
static int put_string_key(fitsfile *out, const char *file, const char *key, const char *value,
                          const char *comment)
{
    int status = RVS_OK, fst = 0;
    char *text = header_text(value);
    if (!text)
        return RVS_ERR_NOMEM;
    fits_write_key_longstr(out, key, text, comment, &fst);
    FITS_CHECK(file, "write keyword %s", key);
cleanup:
    free(text);
    return status;
}

/* ------------------------------------------------------------------ primary header */

/* Keywords rvmod copies from the input's primary header (get_prim_header, copy_keys). */
static const char *const copied_primary_keys[] = {"SPGRP",   "SPGRPVAL", "TILEID",   "SPECTRO",
                                                  "PETAL",   "NIGHT",    "EXPID",    "HPXPIXEL",
                                                  "HPXNSIDE", "HPXNEST"};

static int needs_long_strings(const struct rvs_output_request *req)
{
    const char *values[] = {req->config_path, req->command_line, req->redrock_path, req->device,
                            req->driver};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++)
        if (values[i] && strlen(values[i]) > 60)
            return 1;
    for (size_t i = 0; i < req->ndeps; i++)
        if ((req->deps[i].version && strlen(req->deps[i].version) > 60) ||
            (req->deps[i].name && strlen(req->deps[i].name) > 60))
            return 1;
    for (size_t i = 0; i < req->ntemplates; i++)
        if ((req->templates[i].config && strlen(req->templates[i].config) > 60) ||
            (req->templates[i].revision && strlen(req->templates[i].revision) > 60) ||
            (req->templates[i].software && strlen(req->templates[i].software) > 60))
            return 1;
    return 0;
}

/* PRIMARY as get_prim_header: DEPNAMnn/DEPVERnn, TMPLCONi/TMPLREVi/TMPLSVRi, RVS_CONF, RVS_CMD,
 * RR_FILE, then ours (RVS_DEV, RVS_DRV), then (rvmod, `in` given) the input's copied keys. */
static int write_primary(fitsfile *out, const char *file, const struct rvs_output_request *req,
                         fitsfile *in, const struct rvs_output_pair_id *pair)
{
    int status = RVS_OK, fst = 0;
    char key[FLEN_KEYWORD], version[32];
    fits_create_img(out, BYTE_IMG, 0, NULL, &fst);
    FITS_CHECK(file, "create the primary HDU");
    if (needs_long_strings(req)) {
        fits_write_key_longwarn(out, &fst);
        FITS_CHECK(file, "write LONGSTRN");
    }

    float v = 0;
    fits_get_version(&v);
    int major = (int)v, minor = (int)lround((v - major) * 100.0);
    int micro = (int)lround(((v - major) * 100.0 - minor) * 100.0);
    if (micro < 0)
        micro = 0;
    snprintf(version, sizeof(version), "%d.%d.%d", major, minor, micro);
    const char *own_names[] = {"rvsfit-cl", "cfitsio"};
    const char *own_versions[] = {rvs_version(), version};
    size_t ndep = 2 + req->ndeps;
    if (ndep > 100) {
        rvs_log(RVS_LOG_ERROR, "output", "%s: too many DEPNAMnn entries (%zu, at most 98)", file,
                req->ndeps);
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    for (size_t i = 0; i < ndep; i++) {
        const char *name = i < 2 ? own_names[i] : req->deps[i - 2].name;
        const char *ver = i < 2 ? own_versions[i] : req->deps[i - 2].version;
        snprintf(key, sizeof(key), "DEPNAM%02zu", i);
        RVS_TRY(put_string_key(out, file, key, name, "Software"));
        snprintf(key, sizeof(key), "DEPVER%02zu", i);
        RVS_TRY(put_string_key(out, file, key, ver, "Version"));
    }
    if (req->ntemplates > 10) {
        rvs_log(RVS_LOG_ERROR, "output", "%s: too many template configurations (%zu, at most 10)",
                file, req->ntemplates);
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    for (size_t i = 0; i < req->ntemplates; i++) {
        snprintf(key, sizeof(key), "TMPLCON%zu", i);
        RVS_TRY(put_string_key(out, file, key, req->templates[i].config, "Spec arm config name"));
        snprintf(key, sizeof(key), "TMPLREV%zu", i);
        RVS_TRY(put_string_key(out, file, key, req->templates[i].revision,
                               "Spec template revision"));
        snprintf(key, sizeof(key), "TMPLSVR%zu", i);
        RVS_TRY(put_string_key(out, file, key, req->templates[i].software,
                               "Spec template soft version"));
    }
    if (req->config_path)
        RVS_TRY(put_string_key(out, file, "RVS_CONF", req->config_path, NULL));
    if (req->command_line)
        RVS_TRY(put_string_key(out, file, "RVS_CMD", req->command_line, NULL));
    RVS_TRY(put_string_key(out, file, "RR_FILE", req->redrock_path ? req->redrock_path : "",
                           "Redrock redshift file"));
    if (req->device)
        RVS_TRY(put_string_key(out, file, "RVS_DEV", req->device, "OpenCL device used"));
    if (req->driver)
        RVS_TRY(put_string_key(out, file, "RVS_DRV", req->driver, "OpenCL driver version"));
    /* the pair and its input (issue 19): --skipexisting accepts two files only when both carry
     * the same RVS_PAIR and the input still has the RVS_INID they were made from */
    RVS_TRY(put_string_key(out, file, "RVS_PAIR", pair->pair, "same in the rvtab and rvmod of a run"));
    RVS_TRY(put_string_key(out, file, "RVS_INID", pair->input, "input size:mtime they come from"));

    if (in) {
        fits_movabs_hdu(in, 1, NULL, &fst);
        FITS_CHECK(req->input_path, "read the primary header");
        for (size_t i = 0; i < sizeof(copied_primary_keys) / sizeof(copied_primary_keys[0]);
             i++) {
            char card[FLEN_CARD];
            fits_write_errmark();
            fits_read_card(in, copied_primary_keys[i], card, &fst);
            if (fst == KEY_NO_EXIST) { /* absent keys are simply not copied */
                fst = 0;
                fits_clear_errmark();
                continue;
            }
            FITS_CHECK(req->input_path, "read keyword %s", copied_primary_keys[i]);
            fits_write_record(out, card, &fst);
            FITS_CHECK(file, "write keyword %s", copied_primary_keys[i]);
        }
    }
    fits_write_chksum(out, &fst);
    FITS_CHECK(file, "write the checksum of the primary HDU");
cleanup:
    return status;
}

/* ------------------------------------------------------------------ table copies */

/* Moves `in` to the binary table `extname`. *present = 0 (and RVS_OK) when it is absent and
 * `optional`. */
static int move_to_table(fitsfile *in, const char *path, const char *extname, int optional,
                         int *present)
{
    int status = RVS_OK, fst = 0;
    *present = 0;
    fits_write_errmark();
    fits_movnam_hdu(in, BINARY_TBL, (char *)extname, 0, &fst);
    if (fst == BAD_HDU_NUM) {
        fits_clear_errmark();
        if (optional)
            return RVS_OK;
        rvs_log(RVS_LOG_ERROR, "output",
                "%s: no %s table; this is not a DESI coadd or spectra file", path, extname);
        return RVS_ERR_FORMAT;
    }
    FITS_CHECK(path, "move to HDU %s", extname);
    *present = 1;
cleanup:
    return status;
}

/* Copies the current table of `in` (header and all) to a new HDU of `out`, keeping only the
 * input rows `rows[0..nrows)` (0-based), in that order. Rows are copied as raw bytes: every
 * column, TNULL and scaling survive. Tables with variable-length columns (never seen in DESI
 * files) are refused, since their rows point into a heap that is not copied. */
static int copy_table_rows(fitsfile *in, const char *in_path, const char *extname, fitsfile *out,
                           const char *out_path, const long *rows, size_t nrows)
{
    int status = RVS_OK, fst = 0, ncols = 0;
    long in_rows = 0, rowlen = 0;
    unsigned char *buf = NULL;
    fits_get_num_rows(in, &in_rows, &fst);
    fits_get_num_cols(in, &ncols, &fst);
    fits_read_key_lng(in, "NAXIS1", &rowlen, NULL, &fst);
    FITS_CHECK(in_path, "read the size of HDU %s", extname);
    for (int c = 1; c <= ncols; c++) {
        int type;
        long repeat, width;
        fits_get_coltype(in, c, &type, &repeat, &width, &fst);
        FITS_CHECK(in_path, "read the type of column %d of HDU %s", c, extname);
        if (type < 0) {
            char name[FLEN_VALUE] = "", key[FLEN_KEYWORD];
            snprintf(key, sizeof(key), "TTYPE%d", c);
            fits_read_key_str(in, key, name, NULL, &fst);
            fst = 0;
            fits_clear_errmsg();
            rvs_log(RVS_LOG_ERROR, "output",
                    "%s: HDU %s column %d (%s) has variable-length arrays, which the output "
                    "writer cannot copy; rewrite the table with fixed-length columns",
                    in_path, extname, c, name);
            status = RVS_ERR_FORMAT;
            goto cleanup;
        }
    }
    for (size_t k = 0; k < nrows; k++)
        if (rows[k] < 0 || rows[k] >= in_rows) {
            rvs_log(RVS_LOG_ERROR, "output", "%s: row %ld is outside HDU %s (%ld rows)", in_path,
                    rows[k], extname, in_rows);
            status = RVS_ERR_INVALID_ARGUMENT;
            goto cleanup;
        }

    fits_copy_header(in, out, &fst);
    FITS_CHECK(out_path, "copy the header of HDU %s from %s", extname, in_path);
    /* The copied header still describes the input's row count (and a heap, if any); shrink it to
     * the selected rows, then let cfitsio re-read the structure. */
    fits_modify_key_lng(out, "NAXIS2", (long)nrows, "&", &fst);
    fits_modify_key_lng(out, "PCOUNT", 0L, "&", &fst);
    FITS_CHECK(out_path, "resize HDU %s", extname);
    fits_write_errmark();
    fits_delete_key(out, "THEAP", &fst);
    if (fst == KEY_NO_EXIST) {
        fst = 0;
        fits_clear_errmark();
    }
    FITS_CHECK(out_path, "remove THEAP from HDU %s", extname);
    fits_set_hdustruc(out, &fst);
    FITS_CHECK(out_path, "resize HDU %s", extname);

    if (rowlen > 0 && nrows > 0) {
        buf = rvs_malloc((size_t)rowlen);
        if (!buf) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        for (size_t k = 0; k < nrows; k++) {
            fits_read_tblbytes(in, (LONGLONG)rows[k] + 1, 1, rowlen, buf, &fst);
            FITS_CHECK(in_path, "read row %ld of HDU %s", rows[k] + 1, extname);
            fits_write_tblbytes(out, (LONGLONG)k + 1, 1, rowlen, buf, &fst);
            FITS_CHECK(out_path, "write row %zu of HDU %s", k + 1, extname);
        }
    }
    fits_write_chksum(out, &fst);
    FITS_CHECK(out_path, "write the checksum of HDU %s", extname);
cleanup:
    free(buf);
    return status;
}

static int compare_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* Sorted TARGETIDs of the selected FIBERMAP rows (for EXP_FIBERMAP). `in` is at FIBERMAP. */
static int read_selected_targetids(fitsfile *in, const char *path,
                                   const struct rvs_output_request *req, long long **ids)
{
    int status = RVS_OK, fst = 0, col = 0;
    long long *t = rvs_malloc((req->nrows ? req->nrows : 1) * sizeof(*t));
    *ids = NULL;
    if (!t)
        return RVS_ERR_NOMEM;
    fits_get_colnum(in, CASEINSEN, "TARGETID", &col, &fst);
    FITS_CHECK(path, "find column TARGETID in HDU FIBERMAP");
    for (size_t k = 0; k < req->nrows; k++) {
        fits_read_col(in, TLONGLONG, col, (LONGLONG)req->rows[k].input_row + 1, 1, 1, NULL, &t[k],
                      NULL, &fst);
        FITS_CHECK(path, "read TARGETID of FIBERMAP row %ld", req->rows[k].input_row + 1);
    }
    qsort(t, req->nrows, sizeof(*t), compare_ll);
    *ids = t;
    t = NULL;
cleanup:
    free(t);
    return status;
}

/* Rows of the current table (EXP_FIBERMAP) whose TARGETID is in `ids`, in file order; read in
 * batches so memory stays bounded by the output. */
static int select_rows_by_targetid(fitsfile *in, const char *path, const char *extname,
                                   const long long *ids, size_t nids, long **rows, size_t *nrows)
{
    enum { BATCH = 4096 };
    int status = RVS_OK, fst = 0, col = 0;
    long total = 0;
    long long *batch = NULL;
    long *out = NULL;
    size_t n = 0, cap = 0;
    *rows = NULL;
    *nrows = 0;
    fits_get_num_rows(in, &total, &fst);
    fits_get_colnum(in, CASEINSEN, "TARGETID", &col, &fst);
    FITS_CHECK(path, "find column TARGETID in HDU %s", extname);
    batch = rvs_malloc(BATCH * sizeof(*batch));
    if (!batch) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (long first = 0; first < total && nids > 0; first += BATCH) {
        long count = total - first < BATCH ? total - first : BATCH;
        fits_read_col(in, TLONGLONG, col, (LONGLONG)first + 1, 1, count, NULL, batch, NULL, &fst);
        FITS_CHECK(path, "read TARGETID of HDU %s rows %ld-%ld", extname, first + 1,
                   first + count);
        for (long i = 0; i < count; i++) {
            if (!bsearch(&batch[i], ids, nids, sizeof(*ids), compare_ll))
                continue;
            if (n == cap) {
                size_t ncap = cap ? 2 * cap : 64;
                long *grown = realloc(out, ncap * sizeof(*out));
                if (!grown) {
                    rvs_log(RVS_LOG_ERROR, "memory", "cannot allocate %zu row indices", ncap);
                    status = RVS_ERR_NOMEM;
                    goto cleanup;
                }
                out = grown;
                cap = ncap;
            }
            out[n++] = first + i;
        }
    }
    *rows = out;
    *nrows = n;
    out = NULL;
cleanup:
    free(batch);
    free(out);
    return status;
}

/* ------------------------------------------------------------------ RVTAB */

enum col_kind {
    COL_DOUBLE,   /* a double field of the row (NaN for a bad spectrum) */
    COL_NPIX,     /* NPIX_TOT */
    COL_NCLIP,    /* NPIX_CLIP */
    COL_PRIOR,    /* PARAM_PRIOR */
    COL_ARM,      /* chisq[arm] / chisq_c[arm] (field offset of the array) */
    COL_WARN,     /* RVS_WARN */
    COL_COPY,     /* copied from the input FIBERMAP */
    COL_SN,       /* sn[arm] */
    COL_SUCCESS,  /* RVS_WARN == 0 */
    COL_RR_Z,     /* rr_z, kept for bad spectra too */
    COL_RR_STRING /* rr_spectype / rr_subtype (field offset) */
};

struct rvtab_col {
    char name[24];
    char tform[16];
    const char *unit; /* "" for none */
    char desc[80];    /* TCOMMn; "" where rvspecfit has none */
    enum col_kind kind;
    size_t offset; /* field offset in struct rvs_output_row */
    int arm;
    int in_col, datatype; /* COL_COPY: input column and cfitsio type */
    long width;           /* strings */
};

struct rvtab_field {
    const char *name;
    const char *unit;
    const char *desc;
    size_t offset;
};

#define FIELD(n, u, d, f) {n, u, d, offsetof(struct rvs_output_row, f)}
/* Order of proc_onespec's outdict; descriptions from get_column_desc. */
static const struct rvtab_field leading_fields[] = {
    FIELD("VRAD", "km s-1", "Radial velocity", vrad),
    FIELD("VRAD_ERR", "km s-1", "Radial velocity error", vrad_err),
    FIELD("VRAD_SKEW", "", "Radial velocity posterior skewness", vrad_skew),
    FIELD("VRAD_KURT", "", "Radial velocity posterior kurtosis", vrad_kurt),
    FIELD("VSINI", "km s-1", "Stellar rotation velocity", vsini),
    FIELD("LOGG", "", "Log of surface gravity", logg),
    FIELD("LOGG_ERR", "", "Log of surface gravity uncertainty", logg_err),
    FIELD("TEFF", "K", "Effective temperature", teff),
    FIELD("TEFF_ERR", "K", "Effective temperature uncertainty", teff_err),
    FIELD("FEH", "", "[Fe/H] from template fitting", feh),
    FIELD("FEH_ERR", "", "[Fe/H] uncertainty from template fitting", feh_err),
    FIELD("ALPHAFE", "", "[alpha/Fe] from template fitting", alphafe),
    FIELD("ALPHAFE_ERR", "", "[alpha/Fe] uncertainty from template fitting", alphafe_err),
    FIELD("CHISQ_TOT", "", "Total chi-square for all arms", chisq_tot),
    FIELD("CHISQ_C_TOT", "", "Total chi-square for all arms for polynomial only fit",
          chisq_c_tot),
};

/* Columns proc_desi copies from FIBERMAP when present (columnsCopy), with their descriptions. */
static const struct {
    const char *name;
    const char *desc;
} copied_columns[] = {{"FIBER", ""},      {"REF_ID", ""},   {"REF_CAT", ""},
                      {"TARGET_RA", ""},  {"TARGET_DEC", ""}, {"TARGETID", "DESI targetid"},
                      {"EXPID", "DESI exposure id"}};

/* cfitsio type of a copied column (its equivalent type, so scaled unsigned columns stay
 * unsigned) and the TFORM letter that recreates it. */
static int copy_type(int eqtype, char *letter, size_t *size)
{
    switch (eqtype) {
    case TLOGICAL: *letter = 'L'; *size = 1; return TLOGICAL;
    case TBYTE: *letter = 'B'; *size = 1; return TBYTE;
    case TSBYTE: *letter = 'S'; *size = 1; return TSBYTE;
    case TSHORT: *letter = 'I'; *size = 2; return TSHORT;
    case TUSHORT: *letter = 'U'; *size = 2; return TUSHORT;
    case TINT:
    case TLONG: *letter = 'J'; *size = sizeof(int); return TINT;
    case TUINT:
    case TULONG: *letter = 'V'; *size = sizeof(unsigned); return TUINT;
    case TLONGLONG: *letter = 'K'; *size = 8; return TLONGLONG;
    case TULONGLONG: *letter = 'W'; *size = 8; return TULONGLONG;
    case TFLOAT: *letter = 'E'; *size = 4; return TFLOAT;
    case TDOUBLE: *letter = 'D'; *size = 8; return TDOUBLE;
    default: return 0;
    }
}

static struct rvtab_col *add_col(struct rvtab_col *cols, int *ncols, const char *name,
                                 const char *tform, const char *unit, const char *desc,
                                 enum col_kind kind)
{
    struct rvtab_col *c = &cols[(*ncols)++];
    memset(c, 0, sizeof(*c));
    snprintf(c->name, sizeof(c->name), "%s", name);
    snprintf(c->tform, sizeof(c->tform), "%s", tform);
    c->unit = unit;
    snprintf(c->desc, sizeof(c->desc), "%s", desc);
    c->kind = kind;
    return c;
}

/* The RVTAB column list, in rvspecfit's order (a good first row of proc_desi's outdf). `in` is
 * at FIBERMAP. */
static int build_rvtab_columns(fitsfile *in, const struct rvs_output_request *req,
                               struct rvtab_col *cols, int *ncols)
{
    int status = RVS_OK, fst = 0;
    char name[32], desc[80];
    *ncols = 0;
    for (size_t i = 0; i < sizeof(leading_fields) / sizeof(leading_fields[0]); i++) {
        struct rvtab_col *c = add_col(cols, ncols, leading_fields[i].name, "D",
                                      leading_fields[i].unit, leading_fields[i].desc, COL_DOUBLE);
        c->offset = leading_fields[i].offset;
    }
    add_col(cols, ncols, "NPIX_TOT", "K", "", "Total number of unmasked pixels fitted", COL_NPIX);
    /* not in rvspecfit's table: outlier pixels rvsfit-cl left out of the fit (--clip-sigma) */
    add_col(cols, ncols, "NPIX_CLIP", "K", "", "Pixels left out of the fit as outliers",
            COL_NCLIP);
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        if (!(req->arms & (1u << a)))
            continue;
        snprintf(name, sizeof(name), "CHISQ_%c", arm_letter[a]);
        snprintf(desc, sizeof(desc), "Chi-square in the %c arm", arm_letter[a]);
        struct rvtab_col *c = add_col(cols, ncols, name, "D", "", desc, COL_ARM);
        c->offset = offsetof(struct rvs_output_row, chisq);
        c->arm = a;
        snprintf(name, sizeof(name), "CHISQ_C_%c", arm_letter[a]);
        snprintf(desc, sizeof(desc), "Chi-square in the %c arm after fitting continuum only",
                 arm_letter[a]);
        c = add_col(cols, ncols, name, "D", "", desc, COL_ARM);
        c->offset = offsetof(struct rvs_output_row, chisq_c);
        c->arm = a;
    }
    if (req->vrad_ccf) {
        struct rvtab_col *c = add_col(cols, ncols, "VRAD_CCF", "D", "km s-1",
                                      "Initial velocity from cross-correlation", COL_DOUBLE);
        c->offset = offsetof(struct rvs_output_row, vrad_ccf);
    }
    add_col(cols, ncols, "RVS_WARN", "K", "", "RVSpecFit warning flag", COL_WARN);
    /* not in rvspecfit's table: which *_ERR the prior range sets (enum rvs_prior_bit) */
    add_col(cols, ncols, "PARAM_PRIOR", "K", "",
            "Error set by the prior range: 1 TEFF, 2 LOGG, 4 FEH, 8 ALPHAFE", COL_PRIOR);
    for (size_t i = 0; i < sizeof(copied_columns) / sizeof(copied_columns[0]); i++) {
        int colnum = 0, type = 0;
        long repeat = 0, width = 0;
        fits_write_errmark();
        fits_get_colnum(in, CASESEN, (char *)copied_columns[i].name, &colnum, &fst);
        if (fst == COL_NOT_FOUND) {
            fst = 0;
            fits_clear_errmark();
            continue;
        }
        FITS_CHECK(req->input_path, "find column %s in HDU FIBERMAP", copied_columns[i].name);
        fits_get_eqcoltype(in, colnum, &type, &repeat, &width, &fst);
        FITS_CHECK(req->input_path, "read the type of FIBERMAP column %s",
                   copied_columns[i].name);
        char tform[16];
        struct rvtab_col *c;
        if (type == TSTRING) {
            snprintf(tform, sizeof(tform), "%ldA", repeat);
            c = add_col(cols, ncols, copied_columns[i].name, tform, "", copied_columns[i].desc,
                        COL_COPY);
            c->datatype = TSTRING;
            c->width = repeat;
        } else {
            char letter = 0;
            size_t size = 0;
            int datatype = copy_type(type, &letter, &size);
            if (!datatype || repeat != 1) {
                rvs_log(RVS_LOG_ERROR, "output",
                        "%s: FIBERMAP column %s is not a scalar number or string (type %d, "
                        "repeat %ld); it cannot be copied to RVTAB",
                        req->input_path, copied_columns[i].name, type, repeat);
                status = RVS_ERR_FORMAT;
                goto cleanup;
            }
            snprintf(tform, sizeof(tform), "%c", letter);
            c = add_col(cols, ncols, copied_columns[i].name, tform, "", copied_columns[i].desc,
                        COL_COPY);
            c->datatype = datatype;
            c->width = (long)size;
        }
        c->in_col = colnum;
    }
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        if (!(req->arms & (1u << a)))
            continue;
        snprintf(name, sizeof(name), "SN_%c", arm_letter[a]);
        snprintf(desc, sizeof(desc), "Median S/N in the %c arm", arm_letter[a]);
        add_col(cols, ncols, name, "E", "", desc, COL_SN)->arm = a;
    }
    add_col(cols, ncols, "SUCCESS", "L", "", "Did we succeed or fail", COL_SUCCESS);
    add_col(cols, ncols, "RR_Z", "D", "", "Redrock redshift", COL_RR_Z);
    /* Strings as wide as the longest value (astropy's choice for a list of str), at least 1. */
    const char *rr_names[] = {"RR_SPECTYPE", "RR_SUBTYPE"};
    const char *rr_desc[] = {"Redrock spectype", "Redrock spectroscopic subtype"};
    size_t rr_off[] = {offsetof(struct rvs_output_row, rr_spectype),
                       offsetof(struct rvs_output_row, rr_subtype)};
    for (int s = 0; s < 2; s++) {
        size_t w = 1;
        for (size_t k = 0; k < req->nrows; k++) {
            const char *v = (const char *)&req->rows[k] + rr_off[s];
            size_t len = strnlen(v, RVS_OUTPUT_RR_LEN);
            if (len > w)
                w = len;
        }
        char tform[16];
        snprintf(tform, sizeof(tform), "%dA", (int)w);
        struct rvtab_col *c = add_col(cols, ncols, rr_names[s], tform, "", rr_desc[s],
                                      COL_RR_STRING);
        c->offset = rr_off[s];
        c->width = (long)w;
    }
cleanup:
    return status;
}

static int row_is_bad(const struct rvs_output_row *r)
{
    return (r->rvs_warn & RVS_WARN_BAD_SPECTRUM) != 0;
}

/* Writes RVTAB (in: at FIBERMAP). */
static int write_rvtab_hdu(fitsfile *out, const char *file, fitsfile *in,
                       const struct rvs_output_request *req)
{
    enum { MAX_COLS = 64 };
    int status = RVS_OK, fst = 0, ncols = 0;
    struct rvtab_col cols[MAX_COLS];
    char *ttype[MAX_COLS], *tform[MAX_COLS], *tunit[MAX_COLS];
    size_t n = req->nrows;
    unsigned char *values = NULL;
    char **strings = NULL;
    char *string_store = NULL;

    RVS_TRY(build_rvtab_columns(in, req, cols, &ncols));
    for (int i = 0; i < ncols; i++) {
        ttype[i] = cols[i].name;
        tform[i] = cols[i].tform;
        tunit[i] = (char *)cols[i].unit;
    }
    fits_create_tbl(out, BINARY_TBL, (LONGLONG)n, ncols, ttype, tform, tunit, "RVTAB", &fst);
    FITS_CHECK(file, "create HDU RVTAB");
    for (int i = 0; i < ncols; i++) {
        char key[FLEN_KEYWORD];
        snprintf(key, sizeof(key), "TCOMM%d", i + 1);
        fits_write_key_str(out, key, cols[i].desc, NULL, &fst);
        FITS_CHECK(file, "write %s of HDU RVTAB", key);
    }

    /* One string buffer per row, as wide as the widest string column. */
    size_t swidth = RVS_OUTPUT_RR_LEN;
    for (int i = 0; i < ncols; i++)
        if ((cols[i].kind == COL_COPY && cols[i].datatype == TSTRING) ||
            cols[i].kind == COL_RR_STRING)
            if ((size_t)cols[i].width > swidth)
                swidth = (size_t)cols[i].width;
    if (n > 0) {
        values = rvs_malloc(n * 8);
        strings = rvs_malloc(n * sizeof(*strings));
        string_store = rvs_malloc(n * (swidth + 1));
        if (!values || !strings || !string_store) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        for (size_t k = 0; k < n; k++)
            strings[k] = string_store + k * (swidth + 1);
    }
    for (int i = 0; i < ncols && n > 0; i++) {
        const struct rvtab_col *c = &cols[i];
        double *d = (double *)values;
        long long *ll = (long long *)values;
        float *f = (float *)values;
        char *l = (char *)values;
        int datatype = TDOUBLE;
        void *array = values;
        for (size_t k = 0; k < n; k++) {
            const struct rvs_output_row *r = &req->rows[k];
            const unsigned char *base = (const unsigned char *)r;
            int bad = row_is_bad(r);
            switch (c->kind) {
            case COL_DOUBLE:
                d[k] = bad ? NAN : *(const double *)(base + c->offset);
                break;
            case COL_ARM:
                d[k] = bad ? NAN : ((const double *)(base + c->offset))[c->arm];
                break;
            case COL_NPIX:
                datatype = TLONGLONG;
                ll[k] = bad ? 0 : r->npix_tot;
                break;
            case COL_NCLIP:
                datatype = TLONGLONG;
                ll[k] = bad ? 0 : r->npix_clip;
                break;
            case COL_PRIOR:
                datatype = TLONGLONG;
                ll[k] = bad ? 0 : r->param_prior;
                break;
            case COL_WARN:
                datatype = TLONGLONG;
                ll[k] = r->rvs_warn;
                break;
            case COL_SN:
                datatype = TFLOAT;
                f[k] = r->sn[c->arm];
                break;
            case COL_SUCCESS:
                datatype = TLOGICAL;
                l[k] = r->rvs_warn == 0;
                break;
            case COL_RR_Z:
                d[k] = r->rr_z;
                break;
            case COL_RR_STRING:
                datatype = TSTRING;
                array = strings;
                snprintf(strings[k], swidth + 1, "%.*s", RVS_OUTPUT_RR_LEN,
                         (const char *)(base + c->offset));
                for (char *p = strings[k]; *p; p++)
                    if ((unsigned char)*p < 32 || (unsigned char)*p > 126)
                        *p = '?';
                break;
            case COL_COPY:
                datatype = c->datatype;
                if (datatype == TSTRING) {
                    array = strings;
                    fits_read_col(in, TSTRING, c->in_col, (LONGLONG)r->input_row + 1, 1, 1, NULL,
                                  &strings[k], NULL, &fst);
                } else {
                    fits_read_col(in, datatype, c->in_col, (LONGLONG)r->input_row + 1, 1, 1, NULL,
                                  values + k * (size_t)c->width, NULL, &fst);
                }
                FITS_CHECK(req->input_path, "read FIBERMAP column %s row %ld", c->name,
                           r->input_row + 1);
                break;
            }
        }
        fits_write_col(out, datatype, i + 1, 1, 1, (LONGLONG)n, array, &fst);
        FITS_CHECK(file, "write column %s of HDU RVTAB", c->name);
    }
    fits_write_chksum(out, &fst);
    FITS_CHECK(file, "write the checksum of HDU RVTAB");
cleanup:
    free(values);
    free(strings);
    free(string_store);
    return status;
}

/* ------------------------------------------------------------------ rvmod images */

/* X_WAVELENGTH (from the input) and X_MODEL for one arm. */
static int write_arm_images(fitsfile *out, const char *file, fitsfile *in,
                            const struct rvs_output_request *req, int arm)
{
    int status = RVS_OK, fst = 0, naxis = 0;
    long naxes[2] = {0, 0};
    char extname[32], bunit[FLEN_VALUE] = "";
    double *wave = NULL;
    float *zeros = NULL;
    snprintf(extname, sizeof(extname), "%c_WAVELENGTH", arm_letter[arm]);
    fits_write_errmark();
    fits_movnam_hdu(in, IMAGE_HDU, extname, 0, &fst);
    if (fst == BAD_HDU_NUM) {
        fits_clear_errmark();
        rvs_log(RVS_LOG_ERROR, "output",
                "%s: no %s HDU, but arm %c was fitted; check --fitarm against the file",
                req->input_path, extname, arm_letter[arm] + 'a' - 'A');
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    fits_get_img_dim(in, &naxis, &fst);
    fits_get_img_size(in, 1, naxes, &fst);
    FITS_CHECK(req->input_path, "read the size of HDU %s", extname);
    long nwave = naxes[0];
    if (naxis != 1 || nwave <= 0) {
        rvs_log(RVS_LOG_ERROR, "output", "%s: HDU %s is not a 1-d wavelength array",
                req->input_path, extname);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    if (req->model[arm] && req->nwave[arm] != nwave) {
        rvs_log(RVS_LOG_ERROR, "output",
                "%s: arm %c model rows have %ld pixels but %s has %ld", req->input_path,
                arm_letter[arm] + 'a' - 'A', req->nwave[arm], extname, nwave);
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    wave = rvs_malloc((size_t)nwave * sizeof(*wave));
    zeros = rvs_calloc((size_t)nwave, sizeof(*zeros));
    if (!wave || !zeros) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    fits_read_img(in, TDOUBLE, 1, nwave, NULL, wave, NULL, &fst);
    FITS_CHECK(req->input_path, "read HDU %s", extname);
    fits_write_errmark();
    fits_read_key_str(in, "BUNIT", bunit, NULL, &fst);
    if (fst == KEY_NO_EXIST) {
        fst = 0;
        fits_clear_errmark();
        bunit[0] = '\0';
    }
    FITS_CHECK(req->input_path, "read BUNIT of HDU %s", extname);

    fits_create_img(out, DOUBLE_IMG, 1, &nwave, &fst);
    fits_write_key_str(out, "EXTNAME", extname, "extension name", &fst);
    if (bunit[0])
        fits_write_key_str(out, "BUNIT", bunit, NULL, &fst);
    fits_write_img(out, TDOUBLE, 1, nwave, wave, &fst);
    fits_write_chksum(out, &fst);
    FITS_CHECK(file, "write HDU %s", extname);

    snprintf(extname, sizeof(extname), "%c_MODEL", arm_letter[arm]);
    long model_axes[2] = {nwave, (long)req->nrows};
    fits_create_img(out, FLOAT_IMG, 2, model_axes, &fst);
    fits_write_key_str(out, "EXTNAME", extname, "extension name", &fst);
    FITS_CHECK(file, "create HDU %s", extname);
    for (size_t k = 0; k < req->nrows; k++) {
        const float *src = zeros;
        if (req->model[arm] && !row_is_bad(&req->rows[k]))
            src = req->model[arm] + k * (size_t)nwave;
        fits_write_img(out, TFLOAT, (LONGLONG)k * nwave + 1, nwave, (void *)src, &fst);
        FITS_CHECK(file, "write row %zu of HDU %s", k + 1, extname);
    }
    fits_write_chksum(out, &fst);
    FITS_CHECK(file, "write the checksum of HDU %s", extname);
cleanup:
    free(wave);
    free(zeros);
    return status;
}

/* ------------------------------------------------------------------ the two files */

static int create_fits(const char *tmp_path, fitsfile **out)
{
    int status = RVS_OK, fst = 0;
    /* The empty file that reserved the name goes, and cfitsio creates it anew (its disk-file
     * variant takes the name literally: no extended filename syntax, no "!" clobbering). The
     * name holds our pid and a counter, so nobody else takes it in between. */
    unlink(tmp_path);
    fits_create_diskfile(out, tmp_path, &fst);
    FITS_CHECK(tmp_path, "create the file");
cleanup:
    return status;
}

static int close_fits(fitsfile **f, const char *path)
{
    int status = RVS_OK, fst = 0;
    if (!*f)
        return RVS_OK;
    fits_close_file(*f, &fst);
    *f = NULL;
    FITS_CHECK(path, "finish writing the file");
cleanup:
    return status;
}

static int write_rvmod(fitsfile *in, const struct rvs_output_request *req, const char *tmp,
                       const long *fib_rows, const struct rvs_output_pair_id *pair)
{
    int status = RVS_OK, present = 0;
    fitsfile *out = NULL;
    RVS_TRY(create_fits(tmp, &out));
    RVS_TRY(write_primary(out, tmp, req, in, pair));
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        if (req->arms & (1u << a))
            RVS_TRY(write_arm_images(out, tmp, in, req, a));
    RVS_TRY(move_to_table(in, req->input_path, "FIBERMAP", 0, &present));
    RVS_TRY(copy_table_rows(in, req->input_path, "FIBERMAP", out, tmp, fib_rows, req->nrows));
    status = close_fits(&out, tmp);
cleanup:
    if (out) {
        int fst = 0;
        fits_close_file(out, &fst);
        fits_clear_errmsg();
    }
    return status;
}

/* The SCORES rows of the FIBERMAP rows fib_rows[0..n) (the current HDU is SCORES, with nrows
 * rows as FIBERMAP): the same rows where SCORES has no TARGETID column or its TARGETIDs follow
 * FIBERMAP's; else each FIBERMAP row's own TARGETID row (the k-th occurrence of a repeated
 * TARGETID paired with the k-th), as the reader matches them. */
struct out_id_row {
    long long id;
    long row;
};

static int cmp_out_id_row(const void *a, const void *b)
{
    const struct out_id_row *x = a, *y = b;
    if (x->id != y->id)
        return x->id < y->id ? -1 : 1;
    return (x->row > y->row) - (x->row < y->row);
}

static int scores_rows(fitsfile *in, const char *path, const long *fib_rows, size_t n, long nrows,
                       long **out_rows)
{
    int status = RVS_OK, fst = 0, scol = 0, fcol = 0, hdu = 0;
    long long *sid = NULL, *fid = NULL;
    struct out_id_row *a = NULL, *b = NULL;
    long *map = NULL, *rows = rvs_malloc((n ? n : 1) * sizeof *rows);
    *out_rows = NULL;
    if (!rows)
        return RVS_ERR_NOMEM;
    for (size_t k = 0; k < n; k++)
        rows[k] = fib_rows[k];
    fits_write_errmark();
    fits_get_colnum(in, CASEINSEN, "TARGETID", &scol, &fst);
    fits_clear_errmark();
    if (fst) { /* no TARGETID in SCORES: by position, as DESI writes them */
        fst = 0;
        goto done;
    }
    fits_get_hdu_num(in, &hdu);
    sid = rvs_malloc((nrows ? nrows : 1) * sizeof *sid);
    fid = rvs_malloc((nrows ? nrows : 1) * sizeof *fid);
    if (!sid || !fid) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    fits_read_col(in, TLONGLONG, scol, 1, 1, nrows, NULL, sid, NULL, &fst);
    FITS_CHECK(path, "read TARGETID of HDU SCORES");
    RVS_TRY(move_to_table(in, path, "FIBERMAP", 0, &(int){0}));
    fits_get_colnum(in, CASEINSEN, "TARGETID", &fcol, &fst);
    fits_read_col(in, TLONGLONG, fcol, 1, 1, nrows, NULL, fid, NULL, &fst);
    FITS_CHECK(path, "read TARGETID of HDU FIBERMAP");
    fits_movabs_hdu(in, hdu, NULL, &fst);
    FITS_CHECK(path, "move back to HDU SCORES");
    if (memcmp(sid, fid, (size_t)nrows * sizeof *sid) == 0)
        goto done;
    a = rvs_malloc((size_t)nrows * sizeof *a);
    b = rvs_malloc((size_t)nrows * sizeof *b);
    map = rvs_malloc((size_t)nrows * sizeof *map);
    if (!a || !b || !map) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (long i = 0; i < nrows; i++) {
        a[i] = (struct out_id_row){fid[i], i};
        b[i] = (struct out_id_row){sid[i], i};
    }
    qsort(a, (size_t)nrows, sizeof *a, cmp_out_id_row);
    qsort(b, (size_t)nrows, sizeof *b, cmp_out_id_row);
    for (long i = 0; i < nrows; i++) {
        if (a[i].id != b[i].id) {
            rvs_log(RVS_LOG_ERROR, "output",
                    "%s: SCORES and FIBERMAP hold different TARGETIDs (%lld); the file is "
                    "inconsistent",
                    path, a[i].id);
            status = RVS_ERR_FORMAT;
            goto cleanup;
        }
        map[a[i].row] = b[i].row;
    }
    for (size_t k = 0; k < n; k++)
        rows[k] = map[fib_rows[k]];
done:
    *out_rows = rows;
    rows = NULL;
cleanup:
    free(rows);
    free(sid);
    free(fid);
    free(a);
    free(b);
    free(map);
    return status;
}

static int write_rvtab_file(fitsfile *in, const struct rvs_output_request *req, const char *tmp,
                            const long *fib_rows, const struct rvs_output_pair_id *pair)
{
    int status = RVS_OK, present = 0, fst = 0;
    fitsfile *out = NULL;
    long long *ids = NULL;
    long *exp_rows = NULL;
    size_t nexp = 0;
    long fib_n = 0, scores_n = 0;
    long *score_rows = NULL;
    RVS_TRY(create_fits(tmp, &out));
    RVS_TRY(write_primary(out, tmp, req, NULL, pair));
    RVS_TRY(move_to_table(in, req->input_path, "FIBERMAP", 0, &present));
    fits_get_num_rows(in, &fib_n, &fst);
    FITS_CHECK(req->input_path, "read the size of HDU FIBERMAP");
    RVS_TRY(write_rvtab_hdu(out, tmp, in, req));
    RVS_TRY(read_selected_targetids(in, req->input_path, req, &ids));
    RVS_TRY(copy_table_rows(in, req->input_path, "FIBERMAP", out, tmp, fib_rows, req->nrows));
    /* SCORES is optional, as for the reader (the S/N then came from the spectra); its rows
     * belong to targets by TARGETID (issue 19) */
    RVS_TRY(move_to_table(in, req->input_path, "SCORES", 1, &present));
    if (present) {
        fits_get_num_rows(in, &scores_n, &fst);
        FITS_CHECK(req->input_path, "read the size of HDU SCORES");
        if (scores_n != fib_n) {
            rvs_log(RVS_LOG_ERROR, "output",
                    "%s: SCORES has %ld rows but FIBERMAP has %ld; they must be row-matched",
                    req->input_path, scores_n, fib_n);
            status = RVS_ERR_FORMAT;
            goto cleanup;
        }
        RVS_TRY(scores_rows(in, req->input_path, fib_rows, req->nrows, fib_n, &score_rows));
        RVS_TRY(copy_table_rows(in, req->input_path, "SCORES", out, tmp, score_rows, req->nrows));
    }
    RVS_TRY(move_to_table(in, req->input_path, "EXP_FIBERMAP", 1, &present));
    if (present) {
        RVS_TRY(select_rows_by_targetid(in, req->input_path, "EXP_FIBERMAP", ids, req->nrows,
                                        &exp_rows, &nexp));
        RVS_TRY(copy_table_rows(in, req->input_path, "EXP_FIBERMAP", out, tmp, exp_rows, nexp));
    }
    status = close_fits(&out, tmp);
cleanup:
    if (out) {
        fst = 0;
        fits_close_file(out, &fst);
        fits_clear_errmsg();
    }
    free(ids);
    free(exp_rows);
    free(score_rows);
    return status;
}


int rvs_output_write(const struct rvs_output_request *req)
{
    int status = RVS_OK, fst = 0, present = 0;
    fitsfile *in = NULL;
    long *fib_rows = NULL;
    char *tmp_mod = NULL, *tmp_tab = NULL;
    long fib_n = 0;

    if (!req || !req->input_path || !req->tab_path || !req->mod_path ||
        (req->nrows > 0 && !req->rows) || (req->arms & ~RVS_DESI_ARMS_ALL) || !req->arms) {
        rvs_log(RVS_LOG_ERROR, "output",
                "output request needs an input, both output names, rows and at least one arm");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    fits_open_diskfile(&in, req->input_path, READONLY, &fst);
    FITS_CHECK(req->input_path, "open the input file");
    RVS_TRY(move_to_table(in, req->input_path, "FIBERMAP", 0, &present));
    fits_get_num_rows(in, &fib_n, &fst);
    FITS_CHECK(req->input_path, "read the size of HDU FIBERMAP");
    fib_rows = rvs_malloc((req->nrows ? req->nrows : 1) * sizeof(*fib_rows));
    if (!fib_rows) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t k = 0; k < req->nrows; k++) {
        fib_rows[k] = req->rows[k].input_row;
        if (fib_rows[k] < 0 || fib_rows[k] >= fib_n) {
            rvs_log(RVS_LOG_ERROR, "output", "%s: output row %zu names FIBERMAP row %ld of %ld",
                    req->input_path, k, fib_rows[k], fib_n);
            status = RVS_ERR_INVALID_ARGUMENT;
            goto cleanup;
        }
    }

    RVS_TRY(rvs_file_mkdirs_for(req->mod_path));
    RVS_TRY(rvs_file_mkdirs_for(req->tab_path));
    RVS_TRY(rvs_file_reserve_tmp(req->mod_path, &tmp_mod));
    RVS_TRY(rvs_file_reserve_tmp(req->tab_path, &tmp_tab));
    struct rvs_output_pair_id pair;
    RVS_TRY(rvs_output_pair_id_make(req->input_path, &pair));
    /* Both files complete before either replaces anything (rvspecfit: rvmod, then rvtab). */
    RVS_TRY(write_rvmod(in, req, tmp_mod, fib_rows, &pair));
    RVS_TRY(write_rvtab_file(in, req, tmp_tab, fib_rows, &pair));
    RVS_TRY(rvs_file_commit(tmp_mod, req->mod_path));
    free(tmp_mod);
    tmp_mod = NULL;
    status = rvs_file_commit(tmp_tab, req->tab_path);
    if (status != RVS_OK) {
        /* the new rvmod is in place but its rvtab is not: remove it rather than leave a pair
         * from two different runs (an older rvtab may still be there; without its rvmod it is
         * never taken for a finished result) */
        if (unlink(req->mod_path) != 0)
            rvs_log(RVS_LOG_ERROR, "output", "cannot remove '%s' after its rvtab failed: %s",
                    req->mod_path, strerror(errno));
        goto cleanup;
    }
    free(tmp_tab);
    tmp_tab = NULL;
    rvs_log(RVS_LOG_INFO, "output", "wrote %s and %s (%zu rows)", req->tab_path, req->mod_path,
            req->nrows);
cleanup:
    if (in) {
        fst = 0;
        fits_close_file(in, &fst);
        fits_clear_errmsg();
    }
    if (tmp_mod) {
        unlink(tmp_mod);
        rvs_file_tmp_done(tmp_mod);
    }
    if (tmp_tab) {
        unlink(tmp_tab);
        rvs_file_tmp_done(tmp_tab);
    }
    if (status != RVS_OK)
        rvs_log(RVS_LOG_ERROR, "output", "%s: no output written for this file (%s)",
                req->input_path, rvs_strerror(status));
    free(tmp_mod);
    free(tmp_tab);
    free(fib_rows);
    return status;
}
