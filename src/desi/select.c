/* select.c: the rows of a DESI file that rvs_desi_fit would fit.
 *
 * A port of rvspecfit's desi_fit.py select_fibers_to_fit (with fiberstatus_select,
 * filter_fibermap, get_sns, get_zbest_fname and proc_desi's S/N choice), in the same order and
 * with the same constants: allowed fiber-status bits 3 (RESTRICTED) and 20 (VARIABLE), a
 * redrock star being SPECTYPE == "STAR" or |Z| < 1500 / 3e5 (rvspecfit's 3e5 km/s, not c).
 * Differences: errors are returned instead of raised, and the S/N is computed from the spectra
 * only for rows that survive the cuts before it (the cut result is the same). */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <fitsio.h>

#include "desi/desi_internal.h"
#include "rvsfit/select.h"

#define GOOD_FIBERSTATUS ((1u << 3) | (1u << 20))
#define ZBEST_MAXVEL 1500.0
#define ZBEST_C 3e5
#define SN_BAD (-1e9)

void rvs_select_options_init(struct rvs_select_options *options)
{
    memset(options, 0, sizeof *options);
    options->min_expid = -1;
    options->max_expid = LLONG_MAX;
    options->min_sn = -1e9;
    options->batch_rows = 256;
}

void rvs_selection_free(struct rvs_selection *selection)
{
    if (!selection)
        return;
    free(selection->rows);
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        free(selection->sn[a]);
    free(selection->redrock_path);
    free(selection->rr_z);
    free(selection->rr_spectype);
    free(selection->rr_subtype);
    memset(selection, 0, sizeof *selection);
}

double rvs_select_spectrum_sn(const float *flux, const float *ivar, const uint32_t *mask,
                              size_t n, double *scratch)
{
    size_t m = 0;
    for (size_t p = 0; p < n; p++) {
        /* ivar <= 0 or mask set: excluded; NaN products are ignored as np.nanmedian does. */
        if (!(ivar[p] > 0) && !isnan(ivar[p]))
            continue;
        if (mask[p] != 0)
            continue;
        double v = (double)flux[p] * sqrt((double)ivar[p]);
        if (!isnan(v))
            scratch[m++] = v;
    }
    double med = rvs_desi_median(scratch, m);
    return isfinite(med) ? med : SN_BAD;
}

/* ------------------------------------------------------------------ redrock */

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Python's str.replace: every occurrence of `from` in `s` becomes `to`. */
static char *replace_all(const char *s, const char *from, const char *to)
{
    size_t nf = strlen(from), nt = strlen(to), count = 0;
    for (const char *p = strstr(s, from); p; p = strstr(p + nf, from))
        count++;
    char *out = rvs_malloc(strlen(s) + count * (nt > nf ? nt - nf : 0) + 1);
    if (!out)
        return NULL;
    char *o = out;
    for (const char *p = s;;) {
        const char *q = strstr(p, from);
        if (!q) {
            strcpy(o, p);
            break;
        }
        memcpy(o, p, (size_t)(q - p));
        o += q - p;
        memcpy(o, to, nt);
        o += nt;
        p = q + nf;
    }
    return out;
}

int rvs_select_redrock_path(const char *input, char **path, char hdu[16])
{
    static const char *const zprefixes[] = {"redrock-", "zbest-"};
    static const char *const extnames[] = {"REDSHIFTS", "ZBEST"};
    static const char *const fprefixes[] = {"coadd-", "spectra-"};
    int status = RVS_OK;
    char *base = NULL, *name = NULL, *candidate = NULL;
    *path = NULL;
    hdu[0] = '\0';
    const char *slash = strrchr(input, '/');
    size_t dirlen = slash ? (size_t)(slash - input) + 1 : 0;
    base = rvs_strdup(input + dirlen);
    if (!base) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    size_t len = strlen(base);
    if (len >= 3 && strcmp(base + len - 3, ".gz") == 0)
        base[len - 3] = '\0';
    const char *prefix = NULL;
    for (size_t i = 0; i < 2; i++)
        if (strncmp(base, fprefixes[i], strlen(fprefixes[i])) == 0) {
            prefix = fprefixes[i];
            break;
        }
    if (!prefix)
        goto cleanup;
    for (size_t z = 0; z < 2; z++) {
        free(name);
        name = replace_all(base, prefix, zprefixes[z]);
        if (!name) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        for (int gz = 0; gz < 2; gz++) {
            free(candidate);
            candidate = rvs_malloc(dirlen + strlen(name) + 4);
            if (!candidate) {
                status = RVS_ERR_NOMEM;
                goto cleanup;
            }
            memcpy(candidate, input, dirlen);
            sprintf(candidate + dirlen, "%s%s", name, gz ? ".gz" : "");
            if (file_exists(candidate)) {
                *path = candidate;
                candidate = NULL;
                snprintf(hdu, 16, "%s", extnames[z]);
                goto cleanup;
            }
        }
    }
cleanup:
    free(base);
    free(name);
    free(candidate);
    return status;
}

struct redrock {
    size_t n;
    int64_t *targetid;
    double *z;
    char *spectype, *subtype;
    size_t spectype_width, subtype_width;
};

static void redrock_free(struct redrock *rr)
{
    free(rr->targetid);
    free(rr->z);
    free(rr->spectype);
    free(rr->subtype);
    memset(rr, 0, sizeof *rr);
}

static int rr_column(fitsfile *fp, const char *path, const char *hdu, const char *name,
                     int *colnum, int *typecode, long long *repeat)
{
    int status = RVS_OK, fst = 0;
    long long width = 0;
    fits_get_colnum(fp, CASESEN, (char *)name, colnum, &fst);
    RVS_FITS_CHECK(fst, path, "HDU %s has no usable column %s", hdu, name);
    fits_get_eqcoltypell(fp, *colnum, typecode, repeat, &width, &fst);
    RVS_FITS_CHECK(fst, path, "cannot read the type of %s column %s", hdu, name);
cleanup:
    return status;
}

static int read_redrock(const char *path, const char *hdu, struct redrock *rr)
{
    int status = RVS_OK, fst = 0, col = 0, type = 0;
    long long nrows = 0, repeat = 0;
    fitsfile *fp = NULL;
    char **ptrs = NULL;
    RVS_TRY(rvs_fits_guard(path, "select", "the redrock file is damaged: copy or download it "
                                           "again", NULL));
    fits_open_diskfile(&fp, path, READONLY, &fst);
    if (fst)
        fp = NULL;
    RVS_FITS_CHECK(fst, path, "cannot open the redrock file");
    fits_movnam_hdu(fp, BINARY_TBL, (char *)hdu, 0, &fst);
    RVS_FITS_CHECK(fst, path, "no %s table", hdu);
    fits_get_num_rowsll(fp, &nrows, &fst);
    RVS_FITS_CHECK(fst, path, "cannot read the %s header", hdu);
    rr->n = (size_t)nrows;
    size_t n = rr->n;
    rr->targetid = rvs_malloc(n * sizeof *rr->targetid);
    rr->z = rvs_malloc(n * sizeof *rr->z);
    if (!rr->targetid || !rr->z) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    RVS_TRY(rr_column(fp, path, hdu, "TARGETID", &col, &type, &repeat));
    if (type == TFLOAT || type == TDOUBLE || type == TSTRING || repeat != 1) {
        rvs_log(RVS_LOG_ERROR, "select", "%s: %s column TARGETID is not a scalar integer", path,
                hdu);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    if (n)
        fits_read_col(fp, TLONGLONG, col, 1, 1, nrows, NULL, rr->targetid, NULL, &fst);
    RVS_FITS_CHECK(fst, path, "cannot read %s column TARGETID", hdu);
    RVS_TRY(rr_column(fp, path, hdu, "Z", &col, &type, &repeat));
    if (type == TSTRING || repeat != 1) {
        rvs_log(RVS_LOG_ERROR, "select", "%s: %s column Z is not a scalar number", path, hdu);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    if (n)
        fits_read_col(fp, TDOUBLE, col, 1, 1, nrows, NULL, rr->z, NULL, &fst);
    RVS_FITS_CHECK(fst, path, "cannot read %s column Z", hdu);
    static const char *const strcols[] = {"SPECTYPE", "SUBTYPE"};
    for (int s = 0; s < 2; s++) {
        RVS_TRY(rr_column(fp, path, hdu, strcols[s], &col, &type, &repeat));
        if (type != TSTRING) {
            rvs_log(RVS_LOG_ERROR, "select", "%s: %s column %s is not a string", path, hdu,
                    strcols[s]);
            status = RVS_ERR_FORMAT;
            goto cleanup;
        }
        size_t w = (size_t)repeat;
        char *buf = rvs_calloc(n ? n : 1, w + 1);
        free(ptrs);
        ptrs = rvs_malloc((n ? n : 1) * sizeof *ptrs);
        if (!buf || !ptrs) {
            free(buf);
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        if (s == 0) {
            rr->spectype = buf;
            rr->spectype_width = w;
        } else {
            rr->subtype = buf;
            rr->subtype_width = w;
        }
        for (size_t i = 0; i < n; i++)
            ptrs[i] = buf + i * (w + 1);
        if (n)
            fits_read_col_str(fp, col, 1, 1, nrows, "", ptrs, NULL, &fst);
        RVS_FITS_CHECK(fst, path, "cannot read %s column %s", hdu, strcols[s]);
    }
cleanup:
    free(ptrs);
    if (fp) {
        int cst = 0;
        fits_close_file(fp, &cst);
    }
    if (status != RVS_OK)
        redrock_free(rr);
    return status;
}

static int rr_is_star(const struct redrock *rr, size_t i)
{
    const char *type = rr->spectype + i * (rr->spectype_width + 1);
    return strcmp(type, "STAR") == 0 || fabs(rr->z[i]) < ZBEST_MAXVEL / ZBEST_C;
}

/* Redrock rows sorted by TARGETID, original order kept among equal ids. */
static const struct redrock *sort_rr;
static int cmp_rr_index(const void *a, const void *b)
{
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    int64_t x = sort_rr->targetid[i], y = sort_rr->targetid[j];
    if (x != y)
        return x < y ? -1 : 1;
    return i < j ? -1 : (i > j);
}

/* Fills, for every FIBERMAP row, the redrock star flag and the index of the redrock row whose
 * values are reported (-1: none). By row when the lengths agree (TARGETIDs must then agree),
 * else by TARGETID: selected when any redrock row of that id is a star (np.isin), values from
 * the last such row (a Python dict keeps the last). */
static int match_redrock(const char *input, const struct redrock *rr,
                         const struct rvs_desi_fibermap *fm, unsigned char *star,
                         ptrdiff_t *match)
{
    int status = RVS_OK;
    size_t *order = NULL;
    if (rr->n == fm->nrows) {
        for (size_t i = 0; i < fm->nrows; i++)
            if (rr->targetid[i] != fm->targetid[i]) {
                rvs_log(RVS_LOG_ERROR, "select",
                        "%s: the redrock file has as many rows as FIBERMAP but row %zu has "
                        "TARGETID %lld, FIBERMAP %lld: is it the redrock file of this input?",
                        input, i, (long long)rr->targetid[i], (long long)fm->targetid[i]);
                return RVS_ERR_FORMAT;
            }
        for (size_t i = 0; i < fm->nrows; i++) {
            star[i] = (unsigned char)rr_is_star(rr, i);
            match[i] = (ptrdiff_t)i;
        }
        return RVS_OK;
    }
    order = rvs_malloc((rr->n ? rr->n : 1) * sizeof *order);
    if (!order)
        return RVS_ERR_NOMEM;
    for (size_t i = 0; i < rr->n; i++)
        order[i] = i;
    sort_rr = rr;
    qsort(order, rr->n, sizeof *order, cmp_rr_index);
    for (size_t i = 0; i < fm->nrows; i++) {
        int64_t id = fm->targetid[i];
        size_t lo = 0, hi = rr->n;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (rr->targetid[order[mid]] < id)
                lo = mid + 1;
            else
                hi = mid;
        }
        star[i] = 0;
        match[i] = -1;
        for (size_t k = lo; k < rr->n && rr->targetid[order[k]] == id; k++) {
            star[i] |= (unsigned char)rr_is_star(rr, order[k]);
            match[i] = (ptrdiff_t)order[k];
        }
    }
    free(order);
    return status;
}

/* ------------------------------------------------------------------ selection */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int in_sorted(const int64_t *ids, size_t n, int64_t id)
{
    return bsearch(&id, ids, n, sizeof *ids, cmp_i64) != NULL;
}

/* S/N of the rows still in `keep` from the spectra, read in batches. */
static int sn_from_spectra(struct rvs_desi_file *file, const unsigned char *keep,
                           size_t batch_rows, double *sn[RVS_DESI_NARMS])
{
    int status = RVS_OK;
    size_t n = rvs_desi_nrows(file), maxw = 0;
    unsigned arms = rvs_desi_arms(file);
    size_t *rows = NULL;
    double *scratch = NULL;
    struct rvs_desi_spectra spec;
    rvs_desi_spectra_init(&spec);
    if (!batch_rows)
        batch_rows = 256;
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        if (rvs_desi_nwave(file, a) > maxw)
            maxw = rvs_desi_nwave(file, a);
    rows = rvs_malloc(batch_rows * sizeof *rows);
    scratch = rvs_malloc(maxw * sizeof *scratch);
    if (!rows || !scratch) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t start = 0; start < n;) {
        size_t m = 0;
        while (start < n && m < batch_rows) {
            if (keep[start])
                rows[m++] = start;
            start++;
        }
        if (!m)
            continue;
        RVS_TRY(rvs_desi_read_spectra(file, rows, m, 0, &spec));
        for (int a = 0; a < RVS_DESI_NARMS; a++) {
            if (!(arms & (1u << a)))
                continue;
            size_t nw = spec.nwave[a];
            for (size_t i = 0; i < m; i++)
                sn[a][rows[i]] =
                    rvs_select_spectrum_sn(spec.flux[a] + i * nw, spec.ivar[a] + i * nw,
                                           spec.mask[a] + i * nw, nw, scratch);
        }
    }
cleanup:
    rvs_desi_spectra_free(&spec);
    free(rows);
    free(scratch);
    return status;
}

int rvs_select_targets(struct rvs_desi_file *file, const struct rvs_select_options *options,
                       struct rvs_selection *selection)
{
    int status = RVS_OK;
    const struct rvs_desi_fibermap *fm = rvs_desi_fibermap(file);
    const char *path = rvs_desi_path(file);
    size_t n = fm->nrows;
    unsigned arms = rvs_desi_arms(file);
    unsigned char *keep = NULL, *by_type = NULL, *by_rr = NULL;
    ptrdiff_t *rr_match = NULL;
    double *sn_all[RVS_DESI_NARMS] = {NULL, NULL, NULL};
    int64_t *ids = NULL;
    struct rvs_targetmask *tmask = NULL;
    struct redrock rr = {0};
    struct rvs_select_options defaults;
    char rr_hdu[16] = "";
    memset(selection, 0, sizeof *selection);
    if (!options) {
        rvs_select_options_init(&defaults);
        options = &defaults;
    }

    keep = rvs_malloc(n);
    by_type = rvs_calloc(n, 1);
    by_rr = rvs_calloc(n, 1);
    if (!keep || !by_type || !by_rr) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    if (options->use_targetids && options->ntargetids) {
        ids = rvs_malloc(options->ntargetids * sizeof *ids);
        if (!ids) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        memcpy(ids, options->targetids, options->ntargetids * sizeof *ids);
        qsort(ids, options->ntargetids, sizeof *ids, cmp_i64);
    }

    /* 1-4: EXPID range, fiber status, OBJTYPE, TARGETID list. */
    for (size_t i = 0; i < n; i++) {
        int ok = 1;
        if (fm->expid)
            ok = fm->expid[i] > options->min_expid && fm->expid[i] <= options->max_expid;
        uint32_t st = (uint32_t)fm->fiberstatus[i];
        ok = ok && (st & ~GOOD_FIBERSTATUS) == 0;
        const char *objtype = fm->objtype + i * (fm->objtype_width + 1);
        ok = ok && strcmp(objtype, "SKY") != 0 && strcmp(objtype, "BAD") != 0;
        if (options->use_targetids)
            ok = ok && ids && in_sorted(ids, options->ntargetids, fm->targetid[i]);
        keep[i] = (unsigned char)ok;
    }

    /* 5: S/N, max over the fitted arms (NaN anywhere fails the cut, as np.max would). */
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        if (!(arms & (1u << a)))
            continue;
        sn_all[a] = rvs_malloc(n * sizeof *sn_all[a]);
        if (!sn_all[a]) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        const double *scores = rvs_desi_scores_sn(file, a);
        for (size_t i = 0; i < n; i++)
            sn_all[a][i] = scores ? scores[i] : NAN;
    }
    if (!rvs_desi_scores_sn_source(file))
        RVS_TRY(sn_from_spectra(file, keep, options->batch_rows, sn_all));
    size_t nan_sn = 0;
    char nan_ids[160] = "";
    for (size_t i = 0; i < n; i++) {
        if (!keep[i])
            continue;
        double maxsn = -INFINITY;
        for (int a = 0; a < RVS_DESI_NARMS; a++) {
            if (!sn_all[a])
                continue;
            double v = sn_all[a][i];
            if (isnan(v) || isnan(maxsn))
                maxsn = NAN;
            else if (v > maxsn)
                maxsn = v;
        }
        keep[i] = maxsn > options->min_sn;
        if (isnan(maxsn)) {
            /* rvspecfit drops these silently; say which and why (issue 19) */
            size_t len = strlen(nan_ids);
            if (nan_sn < 5 && len + 24 < sizeof nan_ids)
                snprintf(nan_ids + len, sizeof nan_ids - len, "%s%" PRId64, nan_sn ? ", " : "",
                         fm->targetid[i]);
            nan_sn++;
        }
    }
    if (nan_sn)
        rvs_log(RVS_LOG_WARNING, "select",
                "%s: %zu target(s) skipped because their S/N (%s) is NaN in a fitted arm, which "
                "fails the --minsn cut as in rvspecfit: TARGETID %s%s",
                path, nan_sn,
                rvs_desi_scores_sn_source(file) ? rvs_desi_scores_sn_source(file)
                                                : "from the spectra",
                nan_ids, nan_sn > 5 ? ", ..." : "");

    /* 6: target bits. */
    int selecting_by_type = options->objtypes != NULL;
    if (selecting_by_type) {
        uint64_t bits = 0;
        RVS_TRY(rvs_targetmask_load(fm->survey, options->datadir, &tmask));
        RVS_TRY(rvs_targetmask_match(tmask, options->objtypes, &bits));
        if (!fm->desi_target) {
            rvs_log(RVS_LOG_ERROR, "select",
                    "%s: FIBERMAP has no column %s (survey %s), needed by --objtypes", path,
                    fm->desi_target_column, fm->survey);
            status = RVS_ERR_FORMAT;
            goto cleanup;
        }
        for (size_t i = 0; i < n; i++)
            by_type[i] = ((uint64_t)fm->desi_target[i] & bits) != 0;
    }

    /* 7: redrock. */
    int selecting_by_rr = 0;
    if (options->zbest_select || options->zbest_include) {
        RVS_TRY(rvs_select_redrock_path(path, &selection->redrock_path, rr_hdu));
        if (!selection->redrock_path) {
            rvs_log(RVS_LOG_WARNING, "select",
                    "%s: redrock selection asked for, but no redrock-/zbest- file was found "
                    "beside it",
                    path);
        } else {
            rvs_log(RVS_LOG_INFO, "select", "%s: using redshift file %s", path,
                    selection->redrock_path);
            selecting_by_rr = options->zbest_select;
            RVS_TRY(read_redrock(selection->redrock_path, rr_hdu, &rr));
            rr_match = rvs_malloc((n ? n : 1) * sizeof *rr_match);
            if (!rr_match) {
                status = RVS_ERR_NOMEM;
                goto cleanup;
            }
            RVS_TRY(match_redrock(path, &rr, fm, by_rr, rr_match));
            selection->have_redrock = 1;
        }
    }
    if (!selecting_by_rr)
        memset(by_rr, 0, n);

    /* 8: base cuts AND (type OR redrock) when either selection is on. */
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        if (selecting_by_type || selecting_by_rr)
            keep[i] = keep[i] && (by_type[i] || by_rr[i]);
        count += keep[i];
    }

    selection->rows = rvs_malloc((count ? count : 1) * sizeof *selection->rows);
    if (!selection->rows) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0, k = 0; i < n; i++)
        if (keep[i])
            selection->rows[k++] = i;
    selection->nselected = count;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        if (!sn_all[a])
            continue;
        selection->sn[a] = rvs_malloc((count ? count : 1) * sizeof(double));
        if (!selection->sn[a]) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        for (size_t k = 0; k < count; k++)
            selection->sn[a][k] = sn_all[a][selection->rows[k]];
    }
    if (selection->have_redrock) {
        size_t ws = rr.spectype_width, wu = rr.subtype_width;
        selection->rr_z = rvs_malloc((count ? count : 1) * sizeof *selection->rr_z);
        selection->rr_spectype = rvs_calloc(count ? count : 1, ws + 1);
        selection->rr_subtype = rvs_calloc(count ? count : 1, wu + 1);
        if (!selection->rr_z || !selection->rr_spectype || !selection->rr_subtype) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        selection->rr_spectype_width = ws;
        selection->rr_subtype_width = wu;
        for (size_t k = 0; k < count; k++) {
            ptrdiff_t j = rr_match[selection->rows[k]];
            selection->rr_z[k] = j >= 0 ? rr.z[j] : NAN;
            if (j >= 0) {
                memcpy(selection->rr_spectype + k * (ws + 1), rr.spectype + j * (ws + 1), ws);
                memcpy(selection->rr_subtype + k * (wu + 1), rr.subtype + j * (wu + 1), wu);
            }
        }
    }
    rvs_log(RVS_LOG_INFO, "select", "%s: %zu of %zu rows selected", path, count, n);
cleanup:
    if (status != RVS_OK)
        rvs_selection_free(selection);
    free(keep);
    free(by_type);
    free(by_rr);
    free(rr_match);
    free(ids);
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        free(sn_all[a]);
    rvs_targetmask_destroy(&tmask);
    redrock_free(&rr);
    return status;
}

int rvs_select_read_targetids(const char *path, int64_t **ids, size_t *count)
{
    int status = RVS_OK;
    FILE *fp = NULL;
    int64_t *list = NULL;
    size_t n = 0, cap = 0;
    char token[64];
    *ids = NULL;
    *count = 0;
    fp = fopen(path, "r");
    if (!fp) {
        rvs_log(RVS_LOG_ERROR, "select", "--targetid-file-from %s: %s", path, strerror(errno));
        return RVS_ERR_IO;
    }
    size_t line = 1;
    for (;;) {
        int c = fgetc(fp);
        while (c != EOF && isspace(c)) {
            line += c == '\n';
            c = fgetc(fp);
        }
        if (c == EOF)
            break;
        size_t len = 0;
        while (c != EOF && !isspace(c)) {
            if (len + 1 < sizeof token)
                token[len] = (char)c;
            len++;
            c = fgetc(fp);
        }
        if (c != EOF)
            ungetc(c, fp);
        char *end = NULL;
        errno = 0;
        long long v = 0;
        if (len < sizeof token) {
            token[len] = '\0';
            v = strtoll(token, &end, 10);
        }
        if (len >= sizeof token || errno || !end || *end) {
            rvs_log(RVS_LOG_ERROR, "select",
                    "--targetid-file-from %s:%zu: '%.*s' is not an integer TARGETID (the file "
                    "holds whitespace-separated integers)",
                    path, line, (int)(len < sizeof token ? len : sizeof token - 1), token);
            status = RVS_ERR_FORMAT;
            goto cleanup;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            int64_t *grown = realloc(list, cap * sizeof *list);
            if (!grown) {
                status = RVS_ERR_NOMEM;
                goto cleanup;
            }
            list = grown;
        }
        list[n++] = (int64_t)v;
    }
    if (ferror(fp)) {
        rvs_log(RVS_LOG_ERROR, "select", "--targetid-file-from %s: read error", path);
        status = RVS_ERR_IO;
        goto cleanup;
    }
    if (n)
        qsort(list, n, sizeof *list, cmp_i64);
    size_t u = 0;
    for (size_t i = 0; i < n; i++)
        if (u == 0 || list[i] != list[u - 1])
            list[u++] = list[i];
    if (!u)
        rvs_log(RVS_LOG_WARNING, "select", "--targetid-file-from %s holds no TARGETID", path);
    *ids = list;
    *count = u;
    list = NULL;
cleanup:
    free(list);
    fclose(fp);
    return status;
}
