/* test_desi_read.c: the DESI reader on the four EDR files (shapes, hard facts, and every value
 * of a few rows against astropy's reading), and on broken copies crafted by tests/desi_craft.py:
 * missing file, not FITS, truncated, missing HDU, wrong shapes and types, empty FIBERMAP,
 * duplicate TARGETIDs, reordered HDUs, gzip, signed int32 masks. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "desi_testutil.h"
#include "rvsfit.h"
#include "testutil.h"

static const char *const edr_files[] = {"coadd-5-169-thru20210419", "coadd-sv3-dark-26065",
                                        "spectra-5-169-thru20210419", "spectra-sv3-dark-26065"};
static const size_t nwave_expected[3] = {2751, 2326, 2881};

static void check_edr(const char *edr, const char *ref, const char *stem)
{
    char path[8192];
    struct rvs_desi_file *f = NULL;
    snprintf(path, sizeof path, "%s/%s.fits", edr, stem);
    int st = rvs_desi_open(path, RVS_DESI_ARMS_ALL, &f);
    CHECK(st == RVS_OK && f, "%s: open: %s", stem, rvs_strerror(st));
    if (!f)
        return;
    int coadd = strncmp(stem, "coadd", 5) == 0;
    CHECK(rvs_desi_nrows(f) == 5, "%s: %zu rows", stem, rvs_desi_nrows(f));
    CHECK(rvs_desi_is_coadd(f) == coadd, "%s: coadd flag", stem);
    for (int a = 0; a < 3; a++) {
        CHECK(rvs_desi_nwave(f, a) == nwave_expected[a], "%s arm %d: nwave %zu", stem, a,
              rvs_desi_nwave(f, a));
        CHECK(rvs_desi_ndiag(f, a) == 11, "%s arm %d: ndiag %zu", stem, a, rvs_desi_ndiag(f, a));
    }
    const struct rvs_desi_fibermap *fm = rvs_desi_fibermap(f);
    CHECK(strcmp(fm->fiberstatus_column, coadd ? "COADD_FIBERSTATUS" : "FIBERSTATUS") == 0,
          "%s: status column %s", stem, fm->fiberstatus_column);
    CHECK((fm->expid != NULL) == !coadd, "%s: EXPID presence", stem);
    CHECK(strcmp(fm->survey, "sv3") == 0 && strcmp(fm->desi_target_column, "SV3_DESI_TARGET") == 0
              && fm->desi_target,
          "%s: survey %s column %s", stem, fm->survey, fm->desi_target_column);
    CHECK((fm->target_ra && fm->target_dec && fm->ref_id && fm->ref_cat) || !coadd,
          "%s: TARGET_RA/DEC/REF_ID/REF_CAT", stem);
    CHECK(strcmp(rvs_desi_scores_sn_source(f) ? rvs_desi_scores_sn_source(f) : "",
                 coadd ? "MEDIAN_COADD_SNR" : "MEDIAN_CALIB_SNR") == 0,
          "%s: S/N source", stem);
    const struct rvs_desi_keyword *kw = rvs_desi_keyword(f, strstr(stem, "sv3") ? "HPXPIXEL"
                                                                                  : "TILEID");
    CHECK(kw && kw->present &&
              strcmp(kw->value, strstr(stem, "sv3") ? "26065" : "169") == 0,
          "%s: keyword", stem);
    if (strstr(stem, "sv3")) {
        kw = rvs_desi_keyword(f, "SURVEY");
        CHECK(kw && kw->present && strcmp(kw->value, "sv3") == 0, "%s: SURVEY '%s'", stem,
              kw ? kw->value : "");
        kw = rvs_desi_keyword(f, "TILEID");
        CHECK(kw && !kw->present, "%s: no TILEID in a healpix file", stem);
    }

    /* Fibermap against astropy. */
    snprintf(path, sizeof path, "%s/%s.fm.bin", ref, stem);
    size_t size = 0;
    char *fmref = desi_test_slurp(path, &size);
    const int64_t *tid = (const int64_t *)(void *)fmref;
    const int64_t *fs = tid + 5;
    const double *sn = (const double *)(void *)(fs + 5);
    for (size_t i = 0; i < 5; i++) {
        CHECK(fm->targetid[i] == tid[i], "%s: TARGETID[%zu]", stem, i);
        CHECK(fm->fiberstatus[i] == fs[i], "%s: status[%zu]", stem, i);
        for (int a = 0; a < 3; a++) {
            double got = rvs_desi_scores_sn(f, a)[i], want = sn[a * 5 + i];
            CHECK(got == want || (isnan(got) && isnan(want)), "%s: SN[%d][%zu] %g vs %g", stem,
                  a, i, got, want);
        }
    }
    free(fmref);
    snprintf(path, sizeof path, "%s/%s.txt", ref, stem);
    char *txt = desi_test_slurp(path, &size);
    txt = realloc(txt, size + 1);
    txt[size] = '\0';
    const char *line = strchr(txt, '\n') + 1;
    for (size_t i = 0; i < 5; i++) {
        const char *ot = fm->objtype + i * (fm->objtype_width + 1);
        CHECK(line[0] == '[' && strncmp(line + 1, ot, strlen(ot)) == 0 &&
                  line[1 + strlen(ot)] == ']',
              "%s: OBJTYPE[%zu] '%s'", stem, i, ot);
        line = strchr(line, '\n') + 1;
    }
    free(txt);

    /* Rows 4, 0, 1, 2 (two runs) of every arm against astropy. */
    size_t rows[4] = {4, 0, 1, 2};
    struct rvs_desi_spectra sp;
    rvs_desi_spectra_init(&sp);
    st = rvs_desi_read_spectra(f, rows, 4, RVS_DESI_READ_RESOLUTION, &sp);
    CHECK(st == RVS_OK, "%s: read_spectra: %s", stem, rvs_strerror(st));
    for (int a = 0; a < 3 && st == RVS_OK; a++) {
        snprintf(path, sizeof path, "%s/%s.%c.bin", ref, stem, "BRZ"[a]);
        char *buf = desi_test_slurp(path, &size);
        size_t nw = nwave_expected[a];
        const double *wave = (const double *)(void *)buf;
        const float *flux = (const float *)(void *)(wave + nw);
        const float *ivar = flux + 4 * nw;
        const uint32_t *mask = (const uint32_t *)(void *)(ivar + 4 * nw);
        const float *res = (const float *)(void *)(mask + 4 * nw);
        CHECK(size == nw * 8 + 4 * nw * 12 + 4 * 11 * nw * 4, "%s: reference size", stem);
        size_t bad = 0;
        for (size_t p = 0; p < nw; p++)
            bad += rvs_desi_wavelength(f, a)[p] != wave[p];
        for (size_t p = 0; p < 4 * nw; p++) {
            bad += memcmp(&sp.flux[a][p], &flux[p], 4) != 0;
            bad += memcmp(&sp.ivar[a][p], &ivar[p], 4) != 0;
            bad += sp.mask[a][p] != mask[p];
        }
        for (size_t p = 0; p < 4 * 11 * nw; p++)
            bad += memcmp(&sp.resolution[a][p], &res[p], 4) != 0;
        CHECK(bad == 0, "%s arm %c: %zu values differ from astropy", stem, "BRZ"[a], bad);
        free(buf);
    }
    /* A second, smaller batch reuses the buffers; without resolution. */
    size_t one = 3;
    st = rvs_desi_read_spectra(f, &one, 1, 0, &sp);
    CHECK(st == RVS_OK && sp.nrows == 1, "%s: second batch", stem);
    size_t out_of_range = 5;
    CHECK(rvs_desi_read_spectra(f, &out_of_range, 1, 0, &sp) == RVS_ERR_INVALID_ARGUMENT,
          "%s: row out of range", stem);
    rvs_desi_spectra_free(&sp);
    rvs_desi_close(&f);
    CHECK(f == NULL, "close clears the pointer");
}

static int open_status(const char *dir, const char *name, unsigned arms)
{
    char path[8192];
    struct rvs_desi_file *f = NULL;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int st = rvs_desi_open(path, arms, &f);
    if (st == RVS_OK) {
        /* A file that opens must also give its spectra, or fail cleanly. */
        size_t rows[5] = {0, 1, 2, 3, 4};
        struct rvs_desi_spectra sp;
        rvs_desi_spectra_init(&sp);
        size_t n = rvs_desi_nrows(f) < 5 ? rvs_desi_nrows(f) : 5;
        st = rvs_desi_read_spectra(f, rows, n, RVS_DESI_READ_RESOLUTION, &sp);
        rvs_desi_spectra_free(&sp);
        rvs_desi_close(&f);
    }
    CHECK(f == NULL, "%s: no file handle left after failure", name);
    return st;
}

/* open_status with the messages captured in msg (issue 19: what the user is told) */
static int open_message(const char *dir, const char *name, unsigned arms, char *msg, size_t size)
{
    FILE *log = tmpfile();
    msg[0] = '\0';
    if (log)
        rvs_log_set_stream(log);
    int st = open_status(dir, name, arms);
    rvs_log_set_stream(NULL);
    if (log) {
        rewind(log);
        size_t n = fread(msg, 1, size - 1, log);
        msg[n] = '\0';
        fclose(log);
    }
    fputs(msg, stderr);
    return st;
}

static void check_bad(const char *bad)
{
    CHECK(open_status(bad, "does-not-exist.fits", 7) == RVS_ERR_IO, "missing file");
    CHECK(open_status(bad, "", 7) == RVS_ERR_IO, "a directory is not a file");
    CHECK(open_status(bad, "notfits.fits", 7) == RVS_ERR_FORMAT, "not FITS");
    int st = open_status(bad, "truncated.fits", 7);
    CHECK(st == RVS_ERR_FORMAT || st == RVS_ERR_IO, "truncated: %s", rvs_strerror(st));
    CHECK(open_status(bad, "no-rflux.fits", 7) == RVS_ERR_FORMAT, "R_FLUX missing");
    CHECK(open_status(bad, "no-rflux.fits", 5) == RVS_OK, "R_FLUX missing, arms b,z");
    CHECK(open_status(bad, "no-fibermap.fits", 7) == RVS_ERR_FORMAT, "FIBERMAP missing");
    CHECK(open_status(bad, "no-resolution.fits", 7) == RVS_ERR_FORMAT,
          "B_RESOLUTION missing, resolution asked");
    CHECK(open_status(bad, "no-resolution.fits", 6) == RVS_OK, "B_RESOLUTION missing, arms r,z");
    CHECK(open_status(bad, "bad-shape.fits", 7) == RVS_ERR_FORMAT, "IVAR rows != FIBERMAP rows");
    CHECK(open_status(bad, "bad-wavelength.fits", 7) == RVS_ERR_FORMAT,
          "WAVELENGTH length != FLUX width");
    CHECK(open_status(bad, "int-flux.fits", 7) == RVS_ERR_FORMAT, "integer FLUX");
    CHECK(open_status(bad, "even-ndiag.fits", 7) == RVS_ERR_FORMAT, "even ndiag");
    CHECK(open_status(bad, "empty-fibermap.fits", 7) == RVS_ERR_FORMAT, "empty FIBERMAP");
    CHECK(open_status(bad, "no-fiberstatus.fits", 7) == RVS_ERR_FORMAT, "no fiber status");
    CHECK(open_status(bad, "short-scores.fits", 7) == RVS_ERR_FORMAT, "SCORES rows");
    /* issue 19 item 10: damaged headers are named as damaged, never as a missing HDU with a
     * --fitarm hint; the hint is only for an arm's HDUs (not for a missing FIBERMAP) */
    {
        static const char *const damaged[] = {"negative-naxis2.fits", "bitpix17.fits",
                                              "no-end.fits", "corrupt.fits.gz"};
        char msg[4096];
        for (size_t k = 0; k < sizeof damaged / sizeof damaged[0]; k++) {
            int st = open_message(bad, damaged[k], 7, msg, sizeof msg);
            CHECK(st == RVS_ERR_FORMAT || st == RVS_ERR_IO, "%s: %s", damaged[k], rvs_strerror(st));
            CHECK(!strstr(msg, "--fitarm") && !strstr(msg, "is missing"),
                  "%s reported as a missing HDU: %s", damaged[k], msg);
        }
        open_message(bad, "no-fibermap.fits", 7, msg, sizeof msg);
        CHECK(strstr(msg, "FIBERMAP is missing") && !strstr(msg, "--fitarm"),
              "missing FIBERMAP: %s", msg);
        open_message(bad, "no-rflux.fits", 7, msg, sizeof msg);
        CHECK(strstr(msg, "R_FLUX is missing") && strstr(msg, "--fitarm"), "missing R_FLUX: %s",
              msg);
    }
    /* issue 19 item 1: a header claiming more data than the file holds is a format error, found
     * before the reader tries to allocate it */
    CHECK(open_status(bad, "huge-fibermap.fits", 7) == RVS_ERR_FORMAT,
          "FIBERMAP claiming 4e9 rows: %s", rvs_strerror(open_status(bad, "huge-fibermap.fits", 7)));
    CHECK(open_status(bad, "dup-targetid.fits", 7) == RVS_OK, "duplicate TARGETIDs are kept");
    /* issue 19 item 12: SCORES rows belong to targets by TARGETID, not by position */
    CHECK(open_status(bad, "scores-foreign.fits", 7) == RVS_ERR_FORMAT,
          "SCORES with a TARGETID that FIBERMAP lacks");
    {
        char p1[8192], p2[8192];
        struct rvs_desi_file *f1 = NULL, *f2 = NULL;
        snprintf(p2, sizeof p2, "%s/scores-reversed.fits", bad);
        CHECK(rvs_desi_open(p2, RVS_DESI_ARMS_ALL, &f2) == RVS_OK, "reversed SCORES opens");
        snprintf(p1, sizeof p1, "%s/reordered.fits", bad); /* same rows, SCORES in order */
        CHECK(rvs_desi_open(p1, RVS_DESI_ARMS_ALL, &f1) == RVS_OK, "reference opens");
        if (f1 && f2) {
            size_t n = rvs_desi_nrows(f1), same = 0;
            for (int a = 0; a < 3; a++)
                for (size_t i = 0; i < n; i++) {
                    double x = rvs_desi_scores_sn(f1, a)[i], y = rvs_desi_scores_sn(f2, a)[i];
                    same += x == y || (isnan(x) && isnan(y));
                }
            CHECK(same == 3 * n, "reversed SCORES: %zu of %zu S/N values on their own targets",
                  same, 3 * n);
        }
        rvs_desi_close(&f1);
        rvs_desi_close(&f2);
    }
    CHECK(open_status(bad, "reordered.fits", 7) == RVS_OK, "HDUs in reverse order");
    CHECK(open_status(bad, "coadd-gz.fits.gz", 7) == RVS_OK, "gzipped file");
    CHECK(open_status(bad, "bad-arms.fits", 7) == RVS_OK, "NaN/zero-ivar/masked arms read");

    /* A signed int32 mask: the bit pattern comes back, bit 31 included. */
    char path[8192];
    struct rvs_desi_file *f = NULL;
    snprintf(path, sizeof path, "%s/int32-mask.fits", bad);
    CHECK(rvs_desi_open(path, 1, &f) == RVS_OK, "int32 mask opens");
    if (f) {
        size_t row = 0;
        struct rvs_desi_spectra sp;
        rvs_desi_spectra_init(&sp);
        CHECK(rvs_desi_read_spectra(f, &row, 1, 0, &sp) == RVS_OK, "int32 mask read");
        CHECK(sp.mask[0][0] == 0x80000000u && sp.mask[0][1] == 5u, "int32 mask bits %x %x",
              sp.mask[0][0], sp.mask[0][1]);
        CHECK(sp.flux[1] == NULL && sp.flux[2] == NULL, "only arm b read");
        rvs_desi_spectra_free(&sp);
        rvs_desi_close(&f);
    }
    rvs_desi_close(&f);
    rvs_desi_close(NULL);

    /* Every arm unusable (b all masked, r NaN flux, z zero ivar): each target is flagged
     * BAD_SPECTRUM by the preparation; the file itself is fine. */
    snprintf(path, sizeof path, "%s/bad-arms.fits", bad);
    CHECK(rvs_desi_open(path, RVS_DESI_ARMS_ALL, &f) == RVS_OK, "bad-arms opens");
    if (f) {
        size_t rows[5] = {0, 1, 2, 3, 4};
        struct rvs_desi_spectra sp;
        struct rvs_prepared pr;
        struct rvs_prepare_options o;
        rvs_desi_spectra_init(&sp);
        rvs_prepared_init(&pr);
        rvs_prepare_options_init(&o);
        o.use_resolution = 1;
        const double *w[3] = {rvs_desi_wavelength(f, 0), rvs_desi_wavelength(f, 1),
                              rvs_desi_wavelength(f, 2)};
        CHECK(rvs_desi_read_spectra(f, rows, 5, RVS_DESI_READ_RESOLUTION, &sp) == RVS_OK &&
                  rvs_prepare_batch(&sp, w, &o, &pr) == RVS_OK,
              "bad-arms read and prepared");
        for (size_t t = 0; t < pr.ntargets; t++)
            CHECK(pr.bad_spectrum[t] == 1, "bad-arms target %zu flagged", t);
        rvs_prepared_free(&pr);
        rvs_desi_spectra_free(&sp);
        rvs_desi_close(&f);
    }
}

/* Real resolution matrices through the --resolution-matrix preparation: finite, the edges
 * masked, rows summing to about one away from the edges. */
static void check_edr_prepare(const char *edr)
{
    char path[8192];
    struct rvs_desi_file *f = NULL;
    snprintf(path, sizeof path, "%s/coadd-5-169-thru20210419.fits", edr);
    CHECK(rvs_desi_open(path, RVS_DESI_ARMS_ALL, &f) == RVS_OK, "open for prepare");
    if (!f)
        return;
    size_t rows[5] = {0, 1, 2, 3, 4};
    struct rvs_desi_spectra sp;
    struct rvs_prepared pr;
    struct rvs_prepare_options o;
    rvs_desi_spectra_init(&sp);
    rvs_prepared_init(&pr);
    rvs_prepare_options_init(&o);
    o.use_resolution = 1;
    const double *w[3] = {rvs_desi_wavelength(f, 0), rvs_desi_wavelength(f, 1),
                          rvs_desi_wavelength(f, 2)};
    CHECK(rvs_desi_read_spectra(f, rows, 5, RVS_DESI_READ_RESOLUTION, &sp) == RVS_OK &&
              rvs_prepare_batch(&sp, w, &o, &pr) == RVS_OK,
          "EDR prepared with the resolution matrix");
    size_t nused = 0, nonfinite = 0;
    double worst = 0;
    for (int a = 0; a < 3; a++)
        for (size_t t = 0; t < pr.ntargets; t++) {
            if (!pr.used[a][t])
                continue;
            nused++;
            size_t nw = pr.nwave[a], nd = pr.ndiag[a];
            const double *R = pr.resolution[a] + t * nd * nw;
            for (size_t k = 0; k < nd * nw; k++)
                nonfinite += !isfinite(R[k]);
            CHECK(pr.bad[a][t * nw] && pr.bad[a][t * nw + 4] && pr.bad[a][t * nw + nw - 1],
                  "edge pixels masked");
            for (size_t i = 20; i + 20 < nw; i += 97) {
                double sum = 0; /* row i of R: data[h - d][i + d] */
                for (size_t d = 0; d < nd; d++)
                    sum += R[d * nw + i + nd / 2 - d];
                worst = fabs(sum - 1) > worst ? fabs(sum - 1) : worst;
            }
        }
    CHECK(nused > 0 && nonfinite == 0, "%zu arms used, %zu non-finite R values", nused,
          nonfinite);
    printf("EDR --resolution-matrix: %zu arms prepared, max |row sum - 1| %.3g\n", nused, worst);
    rvs_prepared_free(&pr);
    rvs_desi_spectra_free(&sp);
    rvs_desi_close(&f);
}

int main(void)
{
    const char *edr = desi_test_edr_dir();
    const char *tmp = desi_test_scratch_dir("test_desi_read");
    char ref[2048], bad[2048];
    snprintf(ref, sizeof ref, "%s/ref", tmp);
    snprintf(bad, sizeof bad, "%s/bad", tmp);
    desi_test_craft("read-ref", edr, ref);
    desi_test_craft("bad", edr, bad);

    unsigned arms = 0;
    CHECK(rvs_desi_parse_arms("b,r,z", &arms) == RVS_OK && arms == 7, "parse b,r,z");
    CHECK(rvs_desi_parse_arms(" Z , b", &arms) == RVS_OK && arms == 5, "parse Z,b");
    CHECK(rvs_desi_parse_arms("b,x", &arms) == RVS_ERR_INVALID_ARGUMENT, "parse b,x");
    CHECK(rvs_desi_parse_arms("", &arms) == RVS_ERR_INVALID_ARGUMENT, "parse empty");
    CHECK(rvs_desi_parse_arms("b,,r", &arms) == RVS_ERR_INVALID_ARGUMENT, "parse b,,r");

    for (size_t i = 0; i < 4; i++)
        check_edr(edr, ref, edr_files[i]);
    check_bad(bad);
    check_edr_prepare(edr);
    return test_finish("test_desi_read");
}
