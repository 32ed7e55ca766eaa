/* desi/read.c: reader of DESI coadd-*.fits / spectra-*.fits files with cfitsio.
 *
 * What is read and checked follows the shared DESI-DATAMODEL.md and rvspecfit's
 * desi_fit.py (valid_file, read_data, proc_desi's S/N column choice). Differences, on purpose:
 * only the arms asked for must be present (rvspecfit requires all three), SCORES is optional (the
 * S/N is then computed from the spectra), and RESOLUTION is read only when a caller asks. */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <fcntl.h>
#include <fitsio.h>
#include <unistd.h>

#include "desi/desi_internal.h"
#include "rvsfit/desi.h"

_Static_assert(sizeof(unsigned int) == 4, "MASK is read through cfitsio's TUINT/TINT");

const char *const rvs_desi_keyword_names[RVS_DESI_NKEYWORDS] = {
    "SURVEY", "PROGRAM", "SPGRP",   "SPGRPVAL", "HPXPIXEL", "HPXNSIDE",
    "HPXNEST", "TILEID", "SPECTRO", "PETAL",    "NIGHT",    "EXPID"};

static const char *const arm_names[RVS_DESI_NARMS] = {"b", "r", "z"};
static const char arm_upper[RVS_DESI_NARMS] = {'B', 'R', 'Z'};

/* Where each arm's HDUs are (absolute HDU numbers, found by EXTNAME at open). */
struct arm_info {
    int open;
    size_t nwave;
    size_t ndiag;
    double *wave;
    int hdu_flux, hdu_ivar, hdu_mask, hdu_res; /* hdu_res 0 when absent */
    int mask_datatype;                         /* TUINT or TINT */
};

struct rvs_desi_file {
    char *path;
    fitsfile *fptr;
    size_t nrows;
    unsigned arms;
    int is_coadd;
    struct arm_info arm[RVS_DESI_NARMS];
    struct rvs_desi_fibermap fm;
    struct rvs_desi_keyword keywords[RVS_DESI_NKEYWORDS];
    double *sn[RVS_DESI_NARMS];
    char sn_source[32];
    /* the bytes cfitsio sees: the file's size, or a gzipped file's uncompressed size */
    long long logical_size;
};

int rvs_desi_fits_error(int fits_status, const char *path, const char *what, ...)
{
    char text[FLEN_STATUS] = "";
    char buf[512];
    va_list ap;
    va_start(ap, what);
    vsnprintf(buf, sizeof buf, what, ap);
    va_end(ap);
    fits_get_errstatus(fits_status, text);
    rvs_log(RVS_LOG_ERROR, "desi", "%s: %s: %s (cfitsio status %d)", path, buf, text, fits_status);
    char msg[FLEN_ERRMSG];
    while (fits_read_errmsg(msg))
        rvs_log(RVS_LOG_ERROR, "desi", "%s: cfitsio: %s", path, msg);
    switch (fits_status) {
    case FILE_NOT_OPENED:
    case READ_ERROR:
    case MEMORY_ALLOCATION:
        return fits_status == MEMORY_ALLOCATION ? RVS_ERR_NOMEM : RVS_ERR_IO;
    default:
        return RVS_ERR_FORMAT;
    }
}

/* Quickselect of the k-th smallest value (0-based) with a three-way partition, reordering x so
 * that x[0..k) <= x[k] <= x[k+1..n). x holds no NaN. */
static double select_kth(double *x, size_t n, size_t k)
{
    ptrdiff_t lo = 0, hi = (ptrdiff_t)n - 1, kk = (ptrdiff_t)k;
    while (hi > lo) {
        double pivot = x[lo + (hi - lo) / 2];
        ptrdiff_t lt = lo, i = lo, gt = hi;
        while (i <= gt) {
            double v = x[i];
            if (v < pivot) {
                x[i++] = x[lt];
                x[lt++] = v;
            } else if (v > pivot) {
                x[i] = x[gt];
                x[gt--] = v;
            } else {
                i++;
            }
        }
        if (kk < lt)
            hi = lt - 1;
        else if (kk > gt)
            lo = gt + 1;
        else
            return pivot;
    }
    return x[k];
}

double rvs_desi_median(double *x, size_t n)
{
    if (n == 0)
        return NAN;
    double upper = select_kth(x, n, n / 2);
    if (n % 2)
        return upper;
    /* The lower middle is the largest value of the lower part left by the selection. */
    double lower = x[0];
    for (size_t i = 1; i < n / 2; i++)
        if (x[i] > lower)
            lower = x[i];
    return 0.5 * (lower + upper);
}

const char *rvs_desi_arm_name(int arm)
{
    return arm >= 0 && arm < RVS_DESI_NARMS ? arm_names[arm] : "?";
}

int rvs_desi_parse_arms(const char *text, unsigned *arms)
{
    unsigned set = 0;
    const char *p = text ? text : "";
    for (;;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        while (len && isspace((unsigned char)*p)) {
            p++;
            len--;
        }
        while (len && isspace((unsigned char)p[len - 1]))
            len--;
        int arm = -1;
        if (len == 1)
            for (int a = 0; a < RVS_DESI_NARMS; a++)
                if (tolower((unsigned char)*p) == arm_names[a][0])
                    arm = a;
        if (arm < 0) {
            rvs_log(RVS_LOG_ERROR, "desi",
                    "--fitarm '%s': '%.*s' is not an arm; give a comma-separated list of b, r, z",
                    text ? text : "", (int)len, p);
            return RVS_ERR_INVALID_ARGUMENT;
        }
        set |= 1u << arm;
        if (!end)
            break;
        p = end + 1;
    }
    *arms = set;
    return RVS_OK;
}

/* ------------------------------------------------------------------ small cfitsio helpers */

/* Moves to the HDU named `name`; *found = 0 (and no error) when the file has none. */
static int move_to(struct rvs_desi_file *f, const char *name, int *found)
{
    int status = RVS_OK, fst = 0;
    fits_write_errmark();
    fits_movnam_hdu(f->fptr, ANY_HDU, (char *)name, 0, &fst);
    if (fst == BAD_HDU_NUM) {
        fits_clear_errmark();
        *found = 0;
        return RVS_OK;
    }
    RVS_FITS_CHECK(fst, f->path, "cannot move to HDU %s", name);
    *found = 1;
cleanup:
    return status;
}

/* 1 when the file ends before the data of its last readable HDU: a truncated copy, which
 * cfitsio reports only as "HDU not found" when searching past the end. */
static int truncated(struct rvs_desi_file *f, long long *need, long long *have)
{
    int fst = 0, nhdus = 0;
    long long head = 0, data = 0, end = 0;
    fits_write_errmark();
    fits_get_num_hdus(f->fptr, &nhdus, &fst);
    if (nhdus > 0)
        fits_movabs_hdu(f->fptr, nhdus, NULL, &fst);
    fits_get_hduaddrll(f->fptr, &head, &data, &end, &fst);
    fits_clear_errmark();
    if (fst)
        return 0;
    *need = end;
    *have = f->logical_size;
    return end > f->logical_size;
}

/* The current HDU's header claims a data size (NAXISn, PCOUNT) that the file must hold: a damaged
 * header (e.g. a FIBERMAP of 4e9 rows in a 5 MB file) is refused here, before any allocation of
 * that size is tried. Plain files only (a gzipped file is smaller than its content). */
static int check_hdu_size(struct rvs_desi_file *f, const char *name)
{
    int status = RVS_OK, fst = 0;
    long long head = 0, data = 0, end = 0;
    fits_get_hduaddrll(f->fptr, &head, &data, &end, &fst);
    RVS_FITS_CHECK(fst, f->path, "cannot read the extent of HDU %s", name);
    if (end > f->logical_size) {
        rvs_log(RVS_LOG_ERROR, "desi",
                "%s: HDU %s claims %lld bytes of data but the file has only %lld bytes after its "
                "header: the header is damaged or the file truncated; copy or download it again",
                f->path, name, end - data, f->logical_size - data);
        status = RVS_ERR_FORMAT;
    }
cleanup:
    return status;
}

/* 1 when walking the HDUs from the first stops at one whose header cfitsio cannot parse (a
 * negative NAXIS2, BITPIX 17, no END card, a corrupt compressed stream) rather than at the end
 * of the file: *hdu gets its number (1-based), *code and why cfitsio's error. The file is left
 * positioned at the primary HDU when possible. */
static int damaged_header(struct rvs_desi_file *f, int *hdu, int *code, char *why)
{
    int fst = 0, type = 0, n = 1;
    fits_write_errmark();
    fits_movabs_hdu(f->fptr, 1, &type, &fst);
    while (fst == 0) {
        fits_movrel_hdu(f->fptr, 1, &type, &fst);
        n++;
    }
    int damaged = fst != END_OF_FILE;
    if (damaged) {
        *hdu = n;
        *code = fst;
        fits_get_errstatus(fst, why);
    }
    fits_clear_errmark();
    fst = 0;
    fits_movabs_hdu(f->fptr, 1, &type, &fst);
    return damaged;
}

/* DESI writes CHECKSUM/DATASUM in every HDU: where present they are verified, and a mismatch
 * is a warning naming the HDU (the file may be damaged; the fit goes on with what it holds). */
static void verify_checksums(struct rvs_desi_file *f)
{
    int fst = 0, nhdu = 0;
    fits_write_errmark();
    fits_get_num_hdus(f->fptr, &nhdu, &fst);
    for (int h = 1; h <= nhdu && !fst; h++) {
        int type = 0, dataok = 0, hduok = 0;
        fits_movabs_hdu(f->fptr, h, &type, &fst);
        fits_verify_chksum(f->fptr, &dataok, &hduok, &fst);
        if (fst == 0 && (dataok < 0 || hduok < 0)) {
            char extname[FLEN_VALUE] = "PRIMARY";
            int kst = 0;
            if (h > 1 && fits_read_key_str(f->fptr, "EXTNAME", extname, NULL, &kst) != 0)
                snprintf(extname, sizeof extname, "number %d", h);
            rvs_log(RVS_LOG_WARNING, "desi",
                    "%s: HDU %s does not match its %s: the file may be damaged (copy or "
                    "download it again); fitting what it holds",
                    f->path, extname, dataok < 0 ? "DATASUM" : "CHECKSUM");
        }
    }
    fits_clear_errmark();
}

static int require_hdu(struct rvs_desi_file *f, const char *name, int *hdunum)
{
    int status = RVS_OK, found = 0;
    long long need = 0, have = 0;
    RVS_TRY(move_to(f, name, &found));
    if (!found && truncated(f, &need, &have)) {
        rvs_log(RVS_LOG_ERROR, "desi",
                "%s: the file is truncated (%lld bytes, its HDUs need at least %lld); HDU %s is "
                "not there: copy or download it again",
                f->path, have, need, name);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    if (!found) {
        int bad_hdu = 0, code = 0;
        char why[FLEN_ERRMSG] = "";
        if (damaged_header(f, &bad_hdu, &code, why)) {
            rvs_log(RVS_LOG_ERROR, "desi",
                    "%s: the header of HDU %d is damaged (cfitsio %d: %s), so HDU %s cannot be "
                    "reached: the file is corrupt; copy or download it again",
                    f->path, bad_hdu, code, why, name);
        } else {
            /* only an arm's HDUs can be done without (--fitarm); FIBERMAP and the rest cannot */
            int arm_hdu = (name[0] == 'B' || name[0] == 'R' || name[0] == 'Z') && name[1] == '_';
            rvs_log(RVS_LOG_ERROR, "desi", "%s: HDU %s is missing: not a complete DESI coadd/spectra "
                    "file%s",
                    f->path, name, arm_hdu ? " (or drop that arm with --fitarm)" : "");
        }
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    RVS_TRY(check_hdu_size(f, name));
    fits_get_hdu_num(f->fptr, hdunum);
cleanup:
    return status;
}

/* Image geometry of the current HDU: equivalent type, axes (NAXIS1 first). */
static int image_shape(struct rvs_desi_file *f, const char *name, int *equivtype, int *naxis,
                       long long axes[3])
{
    int status = RVS_OK, fst = 0, hdutype = 0;
    fits_get_hdu_type(f->fptr, &hdutype, &fst);
    RVS_FITS_CHECK(fst, f->path, "HDU %s", name);
    if (hdutype != IMAGE_HDU) {
        rvs_log(RVS_LOG_ERROR, "desi", "%s: HDU %s is a table, expected an image", f->path, name);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    fits_get_img_equivtype(f->fptr, equivtype, &fst);
    fits_get_img_dim(f->fptr, naxis, &fst);
    RVS_FITS_CHECK(fst, f->path, "cannot read the image header of HDU %s", name);
    if (*naxis < 1 || *naxis > 3) {
        rvs_log(RVS_LOG_ERROR, "desi", "%s: HDU %s has NAXIS = %d", f->path, name, *naxis);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    axes[0] = axes[1] = axes[2] = 1;
    fits_get_img_sizell(f->fptr, 3, axes, &fst);
    RVS_FITS_CHECK(fst, f->path, "cannot read the image size of HDU %s", name);
cleanup:
    return status;
}

static int is_float_type(int t) { return t == FLOAT_IMG || t == DOUBLE_IMG; }

/* Checks an arm's [nspec, nwave] image: float (flux/ivar) or 32-bit integer (mask). */
static int check_2d(struct rvs_desi_file *f, int arm, const char *kind, int want_float,
                    int *hdunum, int *mask_datatype)
{
    int status = RVS_OK, equiv = 0, naxis = 0;
    long long axes[3];
    char name[32];
    snprintf(name, sizeof name, "%c_%s", arm_upper[arm], kind);
    RVS_TRY(require_hdu(f, name, hdunum));
    RVS_TRY(image_shape(f, name, &equiv, &naxis, axes));
    if (naxis != 2 || (size_t)axes[0] != f->arm[arm].nwave || (size_t)axes[1] != f->nrows) {
        rvs_log(RVS_LOG_ERROR, "desi",
                "%s: HDU %s has shape [%lld, %lld] (NAXIS %d), expected [%zu rows of FIBERMAP, "
                "%zu wavelengths of %c_WAVELENGTH]",
                f->path, name, axes[1], axes[0], naxis, f->nrows, f->arm[arm].nwave,
                arm_upper[arm]);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    if (want_float && !is_float_type(equiv)) {
        rvs_log(RVS_LOG_ERROR, "desi", "%s: HDU %s holds integers (BITPIX %d), expected floats",
                f->path, name, equiv);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    if (!want_float) {
        /* Masks: int32 in new files, uint32 (BITPIX 32 + BZERO 2^31) in older ones, or
         * tile-compressed; narrower integers are accepted too. Only the bit pattern matters. */
        if (equiv == ULONG_IMG || equiv == USHORT_IMG || equiv == BYTE_IMG)
            *mask_datatype = TUINT;
        else if (equiv == LONG_IMG || equiv == SHORT_IMG || equiv == SBYTE_IMG)
            *mask_datatype = TINT;
        else {
            rvs_log(RVS_LOG_ERROR, "desi",
                    "%s: HDU %s has BITPIX %d, expected 32-bit integers (int32 or uint32)",
                    f->path, name, equiv);
            status = RVS_ERR_FORMAT;
            goto cleanup;
        }
    }
cleanup:
    return status;
}

static int open_arm(struct rvs_desi_file *f, int arm)
{
    int status = RVS_OK, fst = 0, equiv = 0, naxis = 0, hdu = 0, found = 0;
    long long axes[3];
    char name[32];
    struct arm_info *a = &f->arm[arm];

    snprintf(name, sizeof name, "%c_WAVELENGTH", arm_upper[arm]);
    RVS_TRY(require_hdu(f, name, &hdu));
    RVS_TRY(image_shape(f, name, &equiv, &naxis, axes));
    if (naxis != 1 || axes[0] < 2 || !is_float_type(equiv)) {
        rvs_log(RVS_LOG_ERROR, "desi",
                "%s: HDU %s must be a 1-d floating-point array of at least 2 wavelengths "
                "(NAXIS %d, NAXIS1 %lld, BITPIX %d)",
                f->path, name, naxis, axes[0], equiv);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    a->nwave = (size_t)axes[0];
    a->wave = rvs_malloc(a->nwave * sizeof *a->wave);
    if (!a->wave) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    long long first = 1;
    fits_read_pixll(f->fptr, TDOUBLE, &first, (long long)a->nwave, NULL, a->wave, NULL, &fst);
    RVS_FITS_CHECK(fst, f->path, "cannot read HDU %s", name);
    for (size_t i = 0; i < a->nwave; i++)
        if (!isfinite(a->wave[i]) || (i > 0 && !(a->wave[i] > a->wave[i - 1]))) {
            rvs_log(RVS_LOG_ERROR, "desi",
                    "%s: HDU %s is not a finite increasing grid (pixel %zu: %g)", f->path, name,
                    i, a->wave[i]);
            status = RVS_ERR_FORMAT;
            goto cleanup;
        }

    RVS_TRY(check_2d(f, arm, "FLUX", 1, &a->hdu_flux, NULL));
    RVS_TRY(check_2d(f, arm, "IVAR", 1, &a->hdu_ivar, NULL));
    RVS_TRY(check_2d(f, arm, "MASK", 0, &a->hdu_mask, &a->mask_datatype));

    snprintf(name, sizeof name, "%c_RESOLUTION", arm_upper[arm]);
    RVS_TRY(move_to(f, name, &found));
    if (found) {
        fits_get_hdu_num(f->fptr, &a->hdu_res);
        RVS_TRY(image_shape(f, name, &equiv, &naxis, axes));
        if (naxis != 3 || (size_t)axes[0] != a->nwave || (size_t)axes[2] != f->nrows ||
            axes[1] < 1 || axes[1] % 2 == 0 || !is_float_type(equiv)) {
            rvs_log(RVS_LOG_ERROR, "desi",
                    "%s: HDU %s has shape [%lld, %lld, %lld] (NAXIS %d, BITPIX %d), expected "
                    "floats [%zu rows, an odd number of diagonals, %zu wavelengths]",
                    f->path, name, axes[2], axes[1], axes[0], naxis, equiv, f->nrows, a->nwave);
            status = RVS_ERR_FORMAT;
            goto cleanup;
        }
        a->ndiag = (size_t)axes[1];
    }
    a->open = 1;
cleanup:
    return status;
}

/* Column number of `name` in the current table; 0 when absent (no error left on the stack). */
static int column_number(struct rvs_desi_file *f, const char *name, int *colnum)
{
    int status = RVS_OK, fst = 0;
    *colnum = 0;
    fits_write_errmark();
    fits_get_colnum(f->fptr, CASESEN, (char *)name, colnum, &fst);
    if (fst == COL_NOT_FOUND || fst == COL_NOT_UNIQUE) {
        /* COL_NOT_UNIQUE only arises with wildcards; names here have none. */
        fits_clear_errmark();
        *colnum = 0;
        return RVS_OK;
    }
    RVS_FITS_CHECK(fst, f->path, "cannot look up column %s", name);
cleanup:
    return status;
}

enum col_kind { COL_INT, COL_FLOAT, COL_STRING };

/* Column type check: scalar integer / floating / string. */
static int check_column(struct rvs_desi_file *f, const char *hdu, const char *name, int colnum,
                        enum col_kind kind, size_t *width)
{
    int status = RVS_OK, fst = 0, typecode = 0;
    long long repeat = 0, w = 0;
    fits_get_eqcoltypell(f->fptr, colnum, &typecode, &repeat, &w, &fst);
    RVS_FITS_CHECK(fst, f->path, "cannot read the type of %s column %s", hdu, name);
    int ok;
    switch (kind) {
    case COL_INT:
        ok = repeat == 1 && (typecode == TBYTE || typecode == TSBYTE || typecode == TSHORT ||
                             typecode == TUSHORT || typecode == TINT || typecode == TUINT ||
                             typecode == TLONG || typecode == TULONG || typecode == TLONGLONG);
        break;
    case COL_FLOAT:
        ok = repeat == 1 && (typecode == TFLOAT || typecode == TDOUBLE || typecode == TINT ||
                             typecode == TLONG || typecode == TSHORT || typecode == TLONGLONG);
        break;
    default:
        ok = typecode == TSTRING;
        if (width)
            *width = (size_t)repeat;
        break;
    }
    if (!ok) {
        static const char *const want[] = {"a scalar integer", "a scalar number", "a string"};
        rvs_log(RVS_LOG_ERROR, "desi", "%s: %s column %s has type code %d x %lld, expected %s",
                f->path, hdu, name, typecode, repeat, want[kind]);
        status = RVS_ERR_FORMAT;
    }
cleanup:
    return status;
}

/* Reads a whole numeric column of the current table (nrows) as int64 or double. `required`
 * turns absence into an error; otherwise *out stays NULL. */
static int read_numeric(struct rvs_desi_file *f, const char *hdu, const char *name, int required,
                        enum col_kind kind, size_t nrows, void **out)
{
    int status = RVS_OK, fst = 0, colnum = 0;
    void *values = NULL;
    RVS_TRY(column_number(f, name, &colnum));
    if (!colnum) {
        if (required) {
            rvs_log(RVS_LOG_ERROR, "desi", "%s: %s has no column %s", f->path, hdu, name);
            status = RVS_ERR_FORMAT;
        }
        goto cleanup;
    }
    RVS_TRY(check_column(f, hdu, name, colnum, kind, NULL));
    values = rvs_malloc(nrows * 8);
    if (!values) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    fits_read_col(f->fptr, kind == COL_INT ? TLONGLONG : TDOUBLE, colnum, 1, 1, (long long)nrows,
                  NULL, values, NULL, &fst);
    RVS_FITS_CHECK(fst, f->path, "cannot read %s column %s", hdu, name);
    *out = values;
    values = NULL;
cleanup:
    free(values);
    return status;
}

static int read_string(struct rvs_desi_file *f, const char *hdu, const char *name, int required,
                       size_t nrows, char **out, size_t *width)
{
    int status = RVS_OK, fst = 0, colnum = 0;
    char *buf = NULL;
    char **ptrs = NULL;
    RVS_TRY(column_number(f, name, &colnum));
    if (!colnum) {
        if (required) {
            rvs_log(RVS_LOG_ERROR, "desi", "%s: %s has no column %s", f->path, hdu, name);
            status = RVS_ERR_FORMAT;
        }
        goto cleanup;
    }
    size_t w = 0;
    RVS_TRY(check_column(f, hdu, name, colnum, COL_STRING, &w));
    buf = rvs_calloc(nrows, w + 1);
    ptrs = rvs_malloc(nrows * sizeof *ptrs);
    if (!buf || !ptrs) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < nrows; i++)
        ptrs[i] = buf + i * (w + 1);
    fits_read_col_str(f->fptr, colnum, 1, 1, (long long)nrows, "", ptrs, NULL, &fst);
    RVS_FITS_CHECK(fst, f->path, "cannot read %s column %s", hdu, name);
    *out = buf;
    *width = w;
    buf = NULL;
cleanup:
    free(buf);
    free(ptrs);
    return status;
}

/* The survey as desitarget.targets.main_cmx_or_sv decides it: the first column whose name
 * contains "SV" or "CMX" names it by its prefix before '_' (lower case); none means "main". The
 * desi_mask column is DESI_TARGET (main), SVn_DESI_TARGET (svn) or that first column (cmx). */
static int decide_survey(struct rvs_desi_file *f)
{
    int status = RVS_OK, fst = 0, ncols = 0;
    struct rvs_desi_fibermap *fm = &f->fm;
    fits_get_num_cols(f->fptr, &ncols, &fst);
    RVS_FITS_CHECK(fst, f->path, "cannot count the columns of FIBERMAP");
    snprintf(fm->survey, sizeof fm->survey, "main");
    snprintf(fm->desi_target_column, sizeof fm->desi_target_column, "DESI_TARGET");
    for (int c = 1; c <= ncols; c++) {
        char key[FLEN_KEYWORD], colname[FLEN_VALUE];
        fits_make_keyn("TTYPE", c, key, &fst);
        fits_read_key(f->fptr, TSTRING, key, colname, NULL, &fst);
        RVS_FITS_CHECK(fst, f->path, "cannot read FIBERMAP keyword %s", key);
        if (!strstr(colname, "SV") && !strstr(colname, "CMX"))
            continue;
        size_t len = strcspn(colname, "_");
        if (len >= sizeof fm->survey)
            len = sizeof fm->survey - 1;
        for (size_t i = 0; i < len; i++)
            fm->survey[i] = (char)tolower((unsigned char)colname[i]);
        fm->survey[len] = '\0';
        if (strncmp(fm->survey, "sv", 2) == 0) {
            char upper[16];
            for (size_t i = 0; i <= len; i++)
                upper[i] = (char)toupper((unsigned char)fm->survey[i]);
            snprintf(fm->desi_target_column, sizeof fm->desi_target_column, "%s_DESI_TARGET",
                     upper);
        } else {
            snprintf(fm->desi_target_column, sizeof fm->desi_target_column, "%s", colname);
        }
        break;
    }
cleanup:
    return status;
}

static int cmp_pair(const void *a, const void *b)
{
    const int64_t *x = a, *y = b;
    if (x[0] != y[0])
        return x[0] < y[0] ? -1 : 1;
    if (x[1] != y[1])
        return x[1] < y[1] ? -1 : 1;
    return 0;
}

/* Duplicate TARGETIDs (per EXPID when the file has one) are kept, as rvspecfit keeps them, but
 * said once: each row is fitted and written separately. */
static int warn_duplicates(struct rvs_desi_file *f)
{
    const struct rvs_desi_fibermap *fm = &f->fm;
    int64_t *pairs = rvs_malloc(2 * fm->nrows * sizeof *pairs);
    if (!pairs)
        return RVS_ERR_NOMEM;
    for (size_t i = 0; i < fm->nrows; i++) {
        pairs[2 * i] = fm->targetid[i];
        pairs[2 * i + 1] = fm->expid ? fm->expid[i] : 0;
    }
    qsort(pairs, fm->nrows, 2 * sizeof *pairs, cmp_pair);
    size_t ndup = 0;
    for (size_t i = 1; i < fm->nrows; i++)
        if (cmp_pair(pairs + 2 * i, pairs + 2 * (i - 1)) == 0)
            ndup++;
    if (ndup)
        rvs_log(RVS_LOG_WARNING, "desi",
                "%s: FIBERMAP has %zu duplicate TARGETID%s; every row is kept and fitted "
                "separately",
                f->path, ndup, fm->expid ? " (with the same EXPID)" : "");
    free(pairs);
    return RVS_OK;
}

static int read_fibermap(struct rvs_desi_file *f)
{
    int status = RVS_OK, fst = 0, hdu = 0;
    long long nrows = 0;
    struct rvs_desi_fibermap *fm = &f->fm;
    const char *H = "FIBERMAP";
    RVS_TRY(require_hdu(f, H, &hdu));
    int hdutype = 0;
    fits_get_hdu_type(f->fptr, &hdutype, &fst);
    fits_get_num_rowsll(f->fptr, &nrows, &fst);
    RVS_FITS_CHECK(fst, f->path, "cannot read the FIBERMAP header");
    if (hdutype != BINARY_TBL) {
        rvs_log(RVS_LOG_ERROR, "desi", "%s: FIBERMAP is not a binary table", f->path);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    if (nrows <= 0) {
        rvs_log(RVS_LOG_ERROR, "desi", "%s: FIBERMAP has no rows: nothing to fit in this file",
                f->path);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    f->nrows = fm->nrows = (size_t)nrows;
    size_t n = fm->nrows;

    RVS_TRY(read_numeric(f, H, "TARGETID", 1, COL_INT, n, (void **)&fm->targetid));
    /* rvspecfit's fiberstatus_select prefers FIBERSTATUS, then COADD_FIBERSTATUS. */
    int64_t *status64 = NULL;
    RVS_TRY(read_numeric(f, H, "FIBERSTATUS", 0, COL_INT, n, (void **)&status64));
    snprintf(fm->fiberstatus_column, sizeof fm->fiberstatus_column, "FIBERSTATUS");
    if (!status64) {
        RVS_TRY(read_numeric(f, H, "COADD_FIBERSTATUS", 0, COL_INT, n, (void **)&status64));
        snprintf(fm->fiberstatus_column, sizeof fm->fiberstatus_column, "COADD_FIBERSTATUS");
    }
    if (!status64) {
        rvs_log(RVS_LOG_ERROR, "desi",
                "%s: FIBERMAP has neither FIBERSTATUS nor COADD_FIBERSTATUS", f->path);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    fm->fiberstatus = rvs_malloc(n * sizeof *fm->fiberstatus);
    if (!fm->fiberstatus) {
        free(status64);
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++)
        fm->fiberstatus[i] = (int32_t)status64[i];
    free(status64);
    RVS_TRY(read_string(f, H, "OBJTYPE", 1, n, &fm->objtype, &fm->objtype_width));
    RVS_TRY(read_numeric(f, H, "EXPID", 0, COL_INT, n, (void **)&fm->expid));
    int64_t *fiber64 = NULL;
    RVS_TRY(read_numeric(f, H, "FIBER", 0, COL_INT, n, (void **)&fiber64));
    if (fiber64) {
        fm->fiber = rvs_malloc(n * sizeof *fm->fiber);
        if (!fm->fiber) {
            free(fiber64);
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        for (size_t i = 0; i < n; i++)
            fm->fiber[i] = (int32_t)fiber64[i];
        free(fiber64);
    }
    RVS_TRY(read_numeric(f, H, "REF_ID", 0, COL_INT, n, (void **)&fm->ref_id));
    RVS_TRY(read_string(f, H, "REF_CAT", 0, n, &fm->ref_cat, &fm->ref_cat_width));
    RVS_TRY(read_numeric(f, H, "TARGET_RA", 0, COL_FLOAT, n, (void **)&fm->target_ra));
    RVS_TRY(read_numeric(f, H, "TARGET_DEC", 0, COL_FLOAT, n, (void **)&fm->target_dec));
    RVS_TRY(read_numeric(f, H, "BRICKID", 0, COL_INT, n, (void **)&fm->brickid));

    RVS_TRY(decide_survey(f));
    static const char *const prefixes[] = {"", "SV1_", "SV2_", "SV3_"};
    static const char *const bases[] = {"DESI_TARGET", "BGS_TARGET", "MWS_TARGET", "SCND_TARGET"};
    char names[RVS_DESI_MAX_TARGET_COLUMNS][24];
    size_t nnames = 0;
    for (size_t p = 0; p < 4; p++)
        for (size_t b = 0; b < 4; b++)
            snprintf(names[nnames++], sizeof names[0], "%s%s", prefixes[p], bases[b]);
    snprintf(names[nnames++], sizeof names[0], "CMX_TARGET");
    int listed = 0;
    for (size_t i = 0; i < nnames; i++)
        listed |= strcmp(names[i], fm->desi_target_column) == 0;
    size_t dlen = strlen(fm->desi_target_column);
    if (!listed && dlen < sizeof names[0])
        memcpy(names[nnames++], fm->desi_target_column, dlen + 1);
    for (size_t i = 0; i < nnames; i++) {
        struct rvs_desi_target_column *tc = &fm->target_columns[fm->ntarget_columns];
        RVS_TRY(read_numeric(f, H, names[i], 0, COL_INT, n, (void **)&tc->values));
        if (!tc->values)
            continue;
        memcpy(tc->name, names[i], sizeof tc->name);
        if (strcmp(names[i], fm->desi_target_column) == 0)
            fm->desi_target = tc->values;
        fm->ntarget_columns++;
    }
    RVS_TRY(warn_duplicates(f));
cleanup:
    return status;
}

/* Sort key of the SCORES/FIBERMAP matching: a TARGETID and its row. */
struct id_row {
    int64_t id;
    size_t row;
};

static int cmp_id_row(const void *a, const void *b)
{
    const struct id_row *x = a, *y = b;
    if (x->id != y->id)
        return x->id < y->id ? -1 : 1;
    return x->row < y->row ? -1 : x->row > y->row;
}

/* SCORES rows belong to targets by TARGETID, not by position: where SCORES has a TARGETID column
 * whose order differs from FIBERMAP's, the S/N columns are put in FIBERMAP's order (a TARGETID
 * that occurs several times pairs its occurrences in order); a TARGETID of FIBERMAP that SCORES
 * lacks is an error naming it. Without the column, rows are matched by position, as DESI writes
 * them. */
static int match_scores_to_fibermap(struct rvs_desi_file *f)
{
    int status = RVS_OK;
    int64_t *sid = NULL;
    struct id_row *a = NULL, *b = NULL;
    double *tmp = NULL;
    size_t n = f->nrows;
    RVS_TRY(read_numeric(f, "SCORES", "TARGETID", 0, COL_INT, n, (void **)&sid));
    if (!sid)
        goto cleanup;
    if (memcmp(sid, f->fm.targetid, n * sizeof *sid) == 0)
        goto cleanup; /* the usual case: same order */
    a = rvs_malloc(n * sizeof *a);
    b = rvs_malloc(n * sizeof *b);
    tmp = rvs_malloc(n * sizeof *tmp);
    if (!a || !b || !tmp) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++) {
        a[i] = (struct id_row){f->fm.targetid[i], i};
        b[i] = (struct id_row){sid[i], i};
    }
    qsort(a, n, sizeof *a, cmp_id_row);
    qsort(b, n, sizeof *b, cmp_id_row);
    for (size_t i = 0; i < n; i++)
        if (a[i].id != b[i].id) {
            rvs_log(RVS_LOG_ERROR, "desi",
                    "%s: SCORES and FIBERMAP hold different TARGETIDs (FIBERMAP's %" PRId64
                    " has no SCORES row of its own): the file is inconsistent; remake it or "
                    "drop SCORES (the S/N is then computed from the spectra)",
                    f->path, a[i].id);
            status = RVS_ERR_FORMAT;
            goto cleanup;
        }
    for (int arm = 0; arm < RVS_DESI_NARMS; arm++) {
        if (!f->sn[arm])
            continue;
        for (size_t i = 0; i < n; i++)
            tmp[a[i].row] = f->sn[arm][b[i].row];
        memcpy(f->sn[arm], tmp, n * sizeof *tmp);
    }
    rvs_log(RVS_LOG_INFO, "desi", "%s: SCORES rows are not in FIBERMAP's order; matched by TARGETID",
            f->path);
cleanup:
    free(sid);
    free(a);
    free(b);
    free(tmp);
    return status;
}

static int read_scores(struct rvs_desi_file *f)
{
    int status = RVS_OK, fst = 0, found = 0, colnum = 0;
    long long nrows = 0;
    static const char *const families[] = {"MEDIAN_CALIB_SNR", "MEDIAN_COADD_SNR",
                                           "MEDIAN_COADD_FLUX_SNR"};
    RVS_TRY(move_to(f, "SCORES", &found));
    if (!found) {
        rvs_log(RVS_LOG_INFO, "desi", "%s: no SCORES HDU; S/N computed from the spectra",
                f->path);
        goto cleanup;
    }
    RVS_TRY(check_hdu_size(f, "SCORES"));
    fits_get_num_rowsll(f->fptr, &nrows, &fst);
    RVS_FITS_CHECK(fst, f->path, "cannot read the SCORES header");
    if ((size_t)nrows != f->nrows) {
        rvs_log(RVS_LOG_ERROR, "desi", "%s: SCORES has %lld rows but FIBERMAP has %zu", f->path,
                nrows, f->nrows);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    int first_arm = -1;
    for (int a = RVS_DESI_NARMS - 1; a >= 0; a--)
        if (f->arms & (1u << a))
            first_arm = a;
    /* rvspecfit picks the family by the first fitted arm's column, then reads every arm's. */
    for (size_t k = 0; k < sizeof families / sizeof families[0]; k++) {
        char name[48];
        snprintf(name, sizeof name, "%s_%c", families[k], arm_upper[first_arm]);
        RVS_TRY(column_number(f, name, &colnum));
        if (!colnum)
            continue;
        snprintf(f->sn_source, sizeof f->sn_source, "%s", families[k]);
        for (int a = 0; a < RVS_DESI_NARMS; a++) {
            if (!(f->arms & (1u << a)))
                continue;
            snprintf(name, sizeof name, "%s_%c", families[k], arm_upper[a]);
            RVS_TRY(read_numeric(f, "SCORES", name, 1, COL_FLOAT, f->nrows, (void **)&f->sn[a]));
        }
        break;
    }
    RVS_TRY(match_scores_to_fibermap(f));
cleanup:
    return status;
}

static void unquote(const char *in, char *out, size_t size)
{
    size_t len = strlen(in), o = 0;
    if (len >= 2 && in[0] == '\'' && in[len - 1] == '\'') {
        for (size_t i = 1; i + 1 < len && o + 1 < size; i++) {
            out[o++] = in[i];
            if (in[i] == '\'' && in[i + 1] == '\'')
                i++;
        }
        while (o > 0 && out[o - 1] == ' ')
            o--;
        out[o] = '\0';
    } else {
        snprintf(out, size, "%s", in);
    }
}

static int read_keywords(struct rvs_desi_file *f)
{
    int status = RVS_OK, fst = 0;
    fits_movabs_hdu(f->fptr, 1, NULL, &fst);
    RVS_FITS_CHECK(fst, f->path, "cannot read the primary header");
    for (int k = 0; k < RVS_DESI_NKEYWORDS; k++) {
        struct rvs_desi_keyword *kw = &f->keywords[k];
        char value[FLEN_VALUE];
        snprintf(kw->name, sizeof kw->name, "%s", rvs_desi_keyword_names[k]);
        fits_write_errmark();
        fits_read_card(f->fptr, kw->name, kw->card, &fst);
        if (fst == KEY_NO_EXIST) {
            fits_clear_errmark();
            fst = 0;
            continue;
        }
        fits_read_keyword(f->fptr, kw->name, value, NULL, &fst);
        RVS_FITS_CHECK(fst, f->path, "cannot read primary keyword %s", kw->name);
        unquote(value, kw->value, sizeof kw->value);
        kw->present = 1;
    }
cleanup:
    return status;
}

/* The whole file at once, before anything is read from it: every header cfitsio must parse to
 * walk the HDUs (a damaged one hides every HDU after it), and the file's end against the data of
 * its last HDU (a truncated copy, or a header claiming more data than the file holds, loses the
 * HDUs after it). Either used to surface only when a later HDU was asked for, and not at all
 * when that HDU was SCORES or an arm left out with --fitarm: outputs without SCORES, or an arm's
 * last rows unreadable (tests/test_corpus.sh). */
static int check_file_integrity(struct rvs_desi_file *f)
{
    int status = RVS_OK, fst = 0, type = 0;
    char previous[FLEN_VALUE] = "PRIMARY";
    fits_write_errmark();
    for (int h = 1;; h++) {
        fits_movabs_hdu(f->fptr, h, &type, &fst);
        if (fst == END_OF_FILE && h > 1)
            break;
        char name[FLEN_VALUE] = "PRIMARY";
        if (fst) {
            char why[FLEN_STATUS] = "";
            fits_get_errstatus(fst, why);
            rvs_log(RVS_LOG_ERROR, "desi",
                    "%s: the header of HDU %d (after HDU %s) is damaged (cfitsio %d: %s): it and "
                    "the HDUs after it cannot be read; the file is corrupt or truncated: copy or "
                    "download it again",
                    f->path, h, previous, fst, why);
            status = RVS_ERR_FORMAT;
            break;
        }
        int kst = 0;
        if (h > 1 && fits_read_key_str(f->fptr, "EXTNAME", name, NULL, &kst) != 0)
            snprintf(name, sizeof name, "number %d", h);
        long long head = 0, data = 0, end = 0;
        fits_get_hduaddrll(f->fptr, &head, &data, &end, &fst);
        if (fst == 0 && end > f->logical_size) {
            rvs_log(RVS_LOG_ERROR, "desi",
                    "%s: HDU %s claims %lld bytes of data but the file has only %lld bytes after "
                    "its header: the header is damaged or the file truncated; copy or download "
                    "it again",
                    f->path, name, end - data, f->logical_size - data);
            status = RVS_ERR_FORMAT;
            break;
        }
        fst = 0;
        snprintf(previous, sizeof previous, "%s", name);
    }
    fits_clear_errmark();
    fst = 0;
    fits_movabs_hdu(f->fptr, 1, &type, &fst);
    if (fst && status == RVS_OK) {
        rvs_desi_fits_error(fst, f->path, "cannot return to the primary HDU");
        status = RVS_ERR_FORMAT;
    }
    return status;
}

int rvs_desi_open(const char *path, unsigned arms, struct rvs_desi_file **file)
{
    int status = RVS_OK, fst = 0, found = 0;
    struct rvs_desi_file *f = NULL;
    struct stat st;
    *file = NULL;
    arms &= RVS_DESI_ARMS_ALL;
    if (!path || !arms) {
        rvs_log(RVS_LOG_ERROR, "desi", "rvs_desi_open: no file name or no arm asked for");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (stat(path, &st) != 0) {
        rvs_log(RVS_LOG_ERROR, "desi", "%s: cannot open: %s", path, strerror(errno));
        return RVS_ERR_IO;
    }
    if (!S_ISREG(st.st_mode)) {
        rvs_log(RVS_LOG_ERROR, "desi", "%s: cannot open: not a regular file", path);
        return RVS_ERR_IO;
    }
    /* a file cfitsio cannot open is only "could not open the named file" to it: say why */
    int probe = open(path, O_RDONLY);
    if (probe < 0) {
        rvs_log(RVS_LOG_ERROR, "desi", "%s: cannot open: %s", path, strerror(errno));
        return RVS_ERR_IO;
    }
    close(probe);
    long long uncompressed = -1;
    RVS_TRY(rvs_fits_guard(path, "desi", "copy or download it again", &uncompressed));
    f = rvs_calloc(1, sizeof *f);
    if (!f || !(f->path = rvs_strdup(path))) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    f->logical_size = uncompressed >= 0 ? uncompressed : (long long)st.st_size;
    f->arms = arms;
    /* The disk-file form takes the name literally: no cfitsio extended-syntax surprises with
     * brackets in names. Gzipped files are still recognised and uncompressed in memory. */
    fits_open_diskfile(&f->fptr, path, READONLY, &fst);
    if (fst) {
        /* FITS files are whole 2880-byte blocks: a cut one is named for what it is */
        int cut = f->logical_size % 2880 != 0;
        rvs_desi_fits_error(fst, path, cut ? "cannot open as FITS: the file is truncated (%lld "
                                             "bytes, not whole 2880-byte FITS blocks)"
                                           : "cannot open as FITS (is it a DESI coadd/spectra "
                                             "file?)",
                            f->logical_size);
        f->fptr = NULL;
        status = fst == FILE_NOT_OPENED ? RVS_ERR_IO : RVS_ERR_FORMAT;
        goto cleanup;
    }
    RVS_TRY(check_file_integrity(f));
    RVS_TRY(read_keywords(f));
    RVS_TRY(read_fibermap(f));
    RVS_TRY(move_to(f, "EXP_FIBERMAP", &found));
    f->is_coadd = found;
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        if (arms & (1u << a))
            RVS_TRY(open_arm(f, a));
    RVS_TRY(read_scores(f));
    verify_checksums(f);
    *file = f;
    f = NULL;
cleanup:
    rvs_desi_close(&f);
    return status;
}

void rvs_desi_close(struct rvs_desi_file **file)
{
    if (!file || !*file)
        return;
    struct rvs_desi_file *f = *file;
    if (f->fptr) {
        int fst = 0;
        fits_close_file(f->fptr, &fst);
        fits_clear_errmsg();
    }
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        free(f->arm[a].wave);
        free(f->sn[a]);
    }
    struct rvs_desi_fibermap *fm = &f->fm;
    free(fm->targetid);
    free(fm->fiberstatus);
    free(fm->objtype);
    free(fm->expid);
    free(fm->fiber);
    free(fm->ref_id);
    free(fm->ref_cat);
    free(fm->target_ra);
    free(fm->target_dec);
    free(fm->brickid);
    for (size_t i = 0; i < fm->ntarget_columns; i++)
        free(fm->target_columns[i].values);
    free(f->path);
    free(f);
    *file = NULL;
}

const char *rvs_desi_path(const struct rvs_desi_file *file) { return file->path; }
size_t rvs_desi_nrows(const struct rvs_desi_file *file) { return file->nrows; }
unsigned rvs_desi_arms(const struct rvs_desi_file *file) { return file->arms; }
int rvs_desi_is_coadd(const struct rvs_desi_file *file) { return file->is_coadd; }

size_t rvs_desi_nwave(const struct rvs_desi_file *file, int arm)
{
    return arm >= 0 && arm < RVS_DESI_NARMS && file->arm[arm].open ? file->arm[arm].nwave : 0;
}

size_t rvs_desi_ndiag(const struct rvs_desi_file *file, int arm)
{
    return arm >= 0 && arm < RVS_DESI_NARMS && file->arm[arm].open ? file->arm[arm].ndiag : 0;
}

const double *rvs_desi_wavelength(const struct rvs_desi_file *file, int arm)
{
    return arm >= 0 && arm < RVS_DESI_NARMS && file->arm[arm].open ? file->arm[arm].wave : NULL;
}

const struct rvs_desi_fibermap *rvs_desi_fibermap(const struct rvs_desi_file *file)
{
    return &file->fm;
}

const struct rvs_desi_keyword *rvs_desi_keyword(const struct rvs_desi_file *file,
                                                const char *name)
{
    for (int k = 0; k < RVS_DESI_NKEYWORDS; k++)
        if (name && strcmp(name, rvs_desi_keyword_names[k]) == 0)
            return &file->keywords[k];
    return NULL;
}

const double *rvs_desi_scores_sn(const struct rvs_desi_file *file, int arm)
{
    return arm >= 0 && arm < RVS_DESI_NARMS ? file->sn[arm] : NULL;
}

const char *rvs_desi_scores_sn_source(const struct rvs_desi_file *file)
{
    return file->sn_source[0] ? file->sn_source : NULL;
}

/* ------------------------------------------------------------------ spectra */

void rvs_desi_spectra_init(struct rvs_desi_spectra *spectra)
{
    memset(spectra, 0, sizeof *spectra);
}

void rvs_desi_spectra_free(struct rvs_desi_spectra *spectra)
{
    if (!spectra)
        return;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        free(spectra->flux[a]);
        free(spectra->ivar[a]);
        free(spectra->mask[a]);
        free(spectra->resolution[a]);
    }
    rvs_desi_spectra_init(spectra);
}

size_t rvs_desi_bytes_per_row(const struct rvs_desi_file *file, unsigned flags)
{
    size_t bytes = 0;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        if (!file->arm[a].open)
            continue;
        bytes += 12 * file->arm[a].nwave;
        if (flags & RVS_DESI_READ_RESOLUTION)
            bytes += 4 * file->arm[a].ndiag * file->arm[a].nwave;
    }
    return bytes;
}

/* Reads `count` consecutive spectrum rows starting at `row` from an image HDU whose rows hold
 * `row_elems` values each. */
static int read_rows(struct rvs_desi_file *f, int hdunum, int naxis, int datatype, size_t row,
                     size_t count, size_t row_elems, void *dest, const char *what)
{
    int status = RVS_OK, fst = 0;
    long long first[3] = {1, 1, 1};
    first[naxis - 1] = (long long)row + 1;
    fits_movabs_hdu(f->fptr, hdunum, NULL, &fst);
    fits_read_pixll(f->fptr, datatype, first, (long long)(count * row_elems), NULL, dest, NULL,
                    &fst);
    RVS_FITS_CHECK(fst, f->path, "cannot read rows %zu..%zu of %s (truncated file?)", row,
                   row + count - 1, what);
cleanup:
    return status;
}

/* realloc that logs; on failure the old block stays valid (and owned by the caller). */
static void *grow(void *p, size_t count, size_t size, int *status)
{
    void *q = realloc(p, (count ? count : 1) * size);
    if (!q) {
        rvs_log(RVS_LOG_ERROR, "memory", "cannot allocate %zu x %zu bytes for spectra", count,
                size);
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

int rvs_desi_read_spectra(struct rvs_desi_file *file, const size_t *rows, size_t nrows,
                          unsigned flags, struct rvs_desi_spectra *out)
{
    int status = RVS_OK;
    int with_res = (flags & RVS_DESI_READ_RESOLUTION) != 0;
    for (size_t i = 0; i < nrows; i++)
        if (rows[i] >= file->nrows) {
            rvs_log(RVS_LOG_ERROR, "desi", "%s: row %zu asked for, the file has %zu", file->path,
                    rows[i], file->nrows);
            return RVS_ERR_INVALID_ARGUMENT;
        }
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        if (with_res && file->arm[a].open && !file->arm[a].hdu_res) {
            rvs_log(RVS_LOG_ERROR, "desi",
                    "%s: HDU %c_RESOLUTION is missing; it is needed with --resolution-matrix",
                    file->path, arm_upper[a]);
            return RVS_ERR_FORMAT;
        }
    /* Buffers grow when the batch is larger, or the arm shapes differ from the last file. */
    int regrow = nrows > out->capacity || out->arms != file->arms ||
               (with_res && !out->with_resolution);
    for (int a = 0; a < RVS_DESI_NARMS && !regrow; a++)
        regrow = out->nwave[a] != rvs_desi_nwave(file, a) ||
               (with_res && out->ndiag[a] != file->arm[a].ndiag);
    if (regrow) {
        size_t cap = nrows > out->capacity ? nrows : out->capacity;
        for (int a = 0; a < RVS_DESI_NARMS; a++) {
            const struct arm_info *ai = &file->arm[a];
            if (!ai->open) {
                free(out->flux[a]);
                free(out->ivar[a]);
                free(out->mask[a]);
                free(out->resolution[a]);
                out->flux[a] = out->ivar[a] = out->resolution[a] = NULL;
                out->mask[a] = NULL;
                continue;
            }
            GROW(out->flux[a], cap * ai->nwave);
            GROW(out->ivar[a], cap * ai->nwave);
            GROW(out->mask[a], cap * ai->nwave);
            if (with_res)
                GROW(out->resolution[a], cap * ai->ndiag * ai->nwave);
        }
        out->capacity = cap;
        out->with_resolution = with_res;
    }
    out->arms = file->arms;
    out->nrows = 0;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        out->nwave[a] = rvs_desi_nwave(file, a);
        out->ndiag[a] = file->arm[a].open ? file->arm[a].ndiag : 0;
    }
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        const struct arm_info *ai = &file->arm[a];
        if (!ai->open)
            continue;
        size_t nw = ai->nwave, nd = ai->ndiag;
        char what[4][24];
        snprintf(what[0], sizeof what[0], "%c_FLUX", arm_upper[a]);
        snprintf(what[1], sizeof what[1], "%c_IVAR", arm_upper[a]);
        snprintf(what[2], sizeof what[2], "%c_MASK", arm_upper[a]);
        snprintf(what[3], sizeof what[3], "%c_RESOLUTION", arm_upper[a]);
        for (size_t i = 0; i < nrows;) {
            size_t run = 1;
            while (i + run < nrows && rows[i + run] == rows[i] + run)
                run++;
            RVS_TRY(read_rows(file, ai->hdu_flux, 2, TFLOAT, rows[i], run, nw,
                              out->flux[a] + i * nw, what[0]));
            RVS_TRY(read_rows(file, ai->hdu_ivar, 2, TFLOAT, rows[i], run, nw,
                              out->ivar[a] + i * nw, what[1]));
            /* TINT and TUINT both fill 32 bits; the bit pattern is what a mask means. */
            RVS_TRY(read_rows(file, ai->hdu_mask, 2, ai->mask_datatype, rows[i], run, nw,
                              out->mask[a] + i * nw, what[2]));
            if (with_res)
                RVS_TRY(read_rows(file, ai->hdu_res, 3, TFLOAT, rows[i], run, nd * nw,
                                  out->resolution[a] + i * nd * nw, what[3]));
            i += run;
        }
    }
    out->nrows = nrows;
cleanup:
    return status;
}
