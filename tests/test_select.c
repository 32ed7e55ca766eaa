/* test_select.c: target selection on crafted FIBERMAP/SCORES/redrock files (tests/desi_craft.py
 * select): each rule of rvs_desi_fit in turn (EXPID range, fiber status, OBJTYPE, TARGETID list,
 * S/N from SCORES or from the spectra, --objtypes on main/sv1/sv3/cmx tables with start
 * anchoring, redrock selection by row and by TARGETID, .gz and legacy zbest lookup), the
 * desitarget tables and the TARGETID file reader. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "desi_testutil.h"
#include "rvsfit.h"
#include "testutil.h"

static char dir[2048];

static struct rvs_desi_file *open_file(const char *name)
{
    char path[8192];
    struct rvs_desi_file *f = NULL;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int st = rvs_desi_open(path, RVS_DESI_ARMS_ALL, &f);
    CHECK(st == RVS_OK, "open %s: %s", name, rvs_strerror(st));
    if (!f)
        exit(test_finish("test_select"));
    return f;
}

/* Runs the selection and compares the rows with the -1-terminated list. */
static int expect(struct rvs_desi_file *f, const struct rvs_select_options *o,
                  struct rvs_selection *sel, const char *what, ...)
{
    int want[32], nwant = 0;
    va_list ap;
    va_start(ap, what);
    for (int v = va_arg(ap, int); v >= 0; v = va_arg(ap, int))
        want[nwant++] = v;
    va_end(ap);
    int st = rvs_select_targets(f, o, sel);
    CHECK(st == RVS_OK, "%s: %s", what, rvs_strerror(st));
    int same = st == RVS_OK && sel->nselected == (size_t)nwant;
    for (int i = 0; same && i < nwant; i++)
        same = sel->rows[i] == (size_t)want[i];
    if (!same) {
        fprintf(stderr, "  %s: got", what);
        for (size_t i = 0; i < sel->nselected; i++)
            fprintf(stderr, " %zu", sel->rows[i]);
        fprintf(stderr, "\n");
    }
    CHECK(same, "%s: selected rows differ", what);
    return same;
}

static void test_tables(void)
{
    struct rvs_targetmask *m = NULL;
    CHECK(rvs_targetmask_load("main", NULL, &m) == RVS_OK && m, "main table");
    if (m) {
        CHECK(rvs_targetmask_bit(m, "MWS_ANY") == 61 && rvs_targetmask_bit(m, "STD_FAINT") == 33 &&
                  rvs_targetmask_bit(m, "BGS_ANY") == 60 && rvs_targetmask_bit(m, "LRG") == 0,
              "main bits");
        CHECK(rvs_targetmask_bit(m, "LRG_OPT") == -1, "LRG_OPT is not a main bit");
        uint64_t bits = 0;
        CHECK(rvs_targetmask_match(m, "MWS_ANY,STD_*", &bits) == RVS_OK &&
                  bits == ((1ull << 61) | (1ull << 33) | (1ull << 34) | (1ull << 35)),
              "MWS_ANY,STD_* = %llx", (unsigned long long)bits);
        CHECK(rvs_targetmask_match(m, "ANY", &bits) == RVS_ERR_INVALID_ARGUMENT,
              "ANY matches no name at its start");
        CHECK(rvs_targetmask_match(m, "MWS_ANY$", &bits) == RVS_OK && bits == 1ull << 61,
              "explicit end anchor");
        CHECK(rvs_targetmask_match(m, "([", &bits) == RVS_ERR_INVALID_ARGUMENT, "bad regex");
        size_t n = rvs_targetmask_count(m);
        int bit = -1;
        CHECK(n >= 30 && rvs_targetmask_entry(m, 0, &bit) && bit == 0, "main entries %zu", n);
        rvs_targetmask_destroy(&m);
        CHECK(m == NULL, "destroy clears");
    }
    CHECK(rvs_targetmask_load("sv1", NULL, &m) == RVS_OK && rvs_targetmask_bit(m, "LRG_OPT") == 3,
          "sv1 LRG_OPT");
    rvs_targetmask_destroy(&m);
    CHECK(rvs_targetmask_load("cmx", NULL, &m) == RVS_OK && rvs_targetmask_bit(m, "SV0_MWS") == 9,
          "cmx SV0_MWS");
    rvs_targetmask_destroy(&m);
    CHECK(rvs_targetmask_load("sv9", NULL, &m) == RVS_ERR_FORMAT && !m, "unknown survey");
    CHECK(rvs_targetmask_load("main", "/nonexistent", &m) == RVS_ERR_IO && !m, "no data dir");
    rvs_targetmask_destroy(NULL);
}

static void test_main(void)
{
    struct rvs_desi_file *f = open_file("main/coadd-main-1.fits");
    struct rvs_select_options o;
    struct rvs_selection s;
    rvs_select_options_init(&o);
    CHECK(strcmp(rvs_desi_fibermap(f)->survey, "main") == 0, "main survey");
    expect(f, &o, &s, "defaults", 0, 1, 2, 7, 8, 9, 10, 11, -1);
    CHECK(s.sn[0] && s.sn[0][0] == 5 && s.sn[1][0] == 1 && s.sn[2][0] == 2, "S/N carried");
    CHECK(!s.have_redrock && !s.redrock_path, "no redrock unless asked");
    rvs_selection_free(&s);
    o.min_sn = 3;
    expect(f, &o, &s, "minsn 3", 0, 1, 2, 8, 9, 10, -1);
    rvs_selection_free(&s);
    o.min_sn = -1e9;
    o.objtypes = "MWS_ANY,STD_*";
    expect(f, &o, &s, "MWS_ANY,STD_*", 0, 1, 2, 7, 8, 11, -1);
    rvs_selection_free(&s);
    o.objtypes = "STD";
    expect(f, &o, &s, "STD", 2, 8, 11, -1);
    rvs_selection_free(&s);
    o.objtypes = "(BGS|MWS)_ANY";
    expect(f, &o, &s, "(BGS|MWS)_ANY", 0, 1, 7, 9, -1);
    rvs_selection_free(&s);
    o.objtypes = "_ANY";
    CHECK(rvs_select_targets(f, &o, &s) == RVS_ERR_INVALID_ARGUMENT && s.nselected == 0,
          "_ANY is anchored at the start: no match, an error");
    o.objtypes = "LRG_OPT";
    CHECK(rvs_select_targets(f, &o, &s) == RVS_ERR_INVALID_ARGUMENT,
          "LRG_OPT is an sv1 name only");
    o.objtypes = NULL;

    int64_t ids[] = {1005, 1000, 9999, 1002};
    o.use_targetids = 1;
    o.targetids = ids;
    o.ntargetids = 4;
    expect(f, &o, &s, "TARGETID list", 0, 2, -1);
    rvs_selection_free(&s);
    o.ntargetids = 0;
    expect(f, &o, &s, "empty TARGETID list", -1);
    rvs_selection_free(&s);
    o.use_targetids = 0;

    /* Redrock, row-matched: stars at 0 and 2, |z| < 1500/3e5 at 9 (not 11: 0.0051). */
    o.zbest_select = 1;
    expect(f, &o, &s, "zbest-select", 0, 2, 9, -1);
    CHECK(s.have_redrock && s.redrock_path && strstr(s.redrock_path, "redrock-main-1.fits"),
          "redrock file found");
    if (s.have_redrock && s.nselected == 3)
        CHECK(s.rr_z[0] == 1e-4 && strcmp(s.rr_spectype, "STAR") == 0 &&
                  strcmp(s.rr_subtype, "G") == 0 && s.rr_z[2] == 0.004 &&
                  strcmp(s.rr_spectype + 2 * (s.rr_spectype_width + 1), "GALAXY") == 0,
              "redrock values");
    rvs_selection_free(&s);
    o.objtypes = "MWS_ANY";
    expect(f, &o, &s, "zbest-select OR objtypes", 0, 1, 2, 7, 9, -1);
    rvs_selection_free(&s);
    o.objtypes = NULL;
    o.zbest_select = 0;
    o.zbest_include = 1;
    expect(f, &o, &s, "zbest-include keeps the base selection", 0, 1, 2, 7, 8, 9, 10, 11, -1);
    CHECK(s.have_redrock && s.rr_z[6] == 2.0 &&
              strcmp(s.rr_spectype + 6 * (s.rr_spectype_width + 1), "QSO") == 0,
          "zbest-include values");
    rvs_selection_free(&s);
    rvs_desi_close(&f);
}

static void test_sv1(void)
{
    struct rvs_desi_file *f = open_file("sv1/spectra-sv1-2.fits");
    struct rvs_select_options o;
    struct rvs_selection s;
    rvs_select_options_init(&o);
    const struct rvs_desi_fibermap *fm = rvs_desi_fibermap(f);
    CHECK(strcmp(fm->survey, "sv1") == 0 && strcmp(fm->desi_target_column, "SV1_DESI_TARGET") == 0,
          "sv1 survey: %s %s", fm->survey, fm->desi_target_column);
    CHECK(strcmp(rvs_desi_scores_sn_source(f), "MEDIAN_CALIB_SNR") == 0, "calib S/N");
    expect(f, &o, &s, "EXPID > -1 by default", 0, 1, 2, 3, 4, 5, 6, -1);
    rvs_selection_free(&s);
    o.min_expid = 10;
    o.max_expid = 11;
    expect(f, &o, &s, "EXPID in (10, 11]", 3, 4, 5, -1);
    rvs_selection_free(&s);
    rvs_select_options_init(&o);
    o.objtypes = "LRG_OPT";
    expect(f, &o, &s, "sv1 LRG_OPT", 0, 1, 2, 3, -1);
    rvs_selection_free(&s);
    o.objtypes = NULL;
    /* Gzipped redrock with other rows: matched by TARGETID; ids 1 and 3 are stars. */
    o.zbest_select = 1;
    expect(f, &o, &s, "zbest by TARGETID", 0, 2, 3, 5, -1);
    CHECK(s.redrock_path && strstr(s.redrock_path, "redrock-sv1-2.fits.gz"), "gz redrock");
    if (s.have_redrock && s.nselected == 4)
        CHECK(s.rr_z[0] == 2e-4 && strcmp(s.rr_subtype, "F") == 0 && s.rr_z[1] == 1e-4 &&
                  strcmp(s.rr_subtype + (s.rr_subtype_width + 1), "M") == 0,
              "TARGETID-matched values (last row of an id wins)");
    rvs_selection_free(&s);
    o.zbest_select = 0;
    o.zbest_include = 1;
    expect(f, &o, &s, "zbest-include by TARGETID", 0, 1, 2, 3, 4, 5, 6, -1);
    if (s.have_redrock && s.nselected == 7)
        CHECK(isnan(s.rr_z[1]) && s.rr_spectype[1 * (s.rr_spectype_width + 1)] == '\0' &&
                  s.rr_z[6] == 0.2,
              "unmatched TARGETID gives NaN and ''");
    rvs_selection_free(&s);
    rvs_desi_close(&f);
}

static void test_computed_sn(void)
{
    char path[8192];
    size_t size = 0;
    snprintf(path, sizeof path, "%s/sn_ref.txt", dir);
    char *txt = desi_test_slurp(path, &size);
    txt = realloc(txt, size + 1);
    txt[size] = '\0';
    double ref[3][6];
    char *p = txt;
    for (int a = 0; a < 3; a++)
        for (int i = 0; i < 6; i++)
            ref[a][i] = strtod(p, &p);
    free(txt);
    static const char *const files[] = {"cmx/coadd-cmx-3.fits", "sv3/coadd-sv3-3.fits"};
    for (int k = 0; k < 2; k++) {
        struct rvs_desi_file *f = open_file(files[k]);
        struct rvs_select_options o;
        struct rvs_selection s;
        rvs_select_options_init(&o);
        o.batch_rows = 4; /* two batches of reads */
        CHECK(rvs_desi_scores_sn_source(f) == NULL, "no SCORES");
        expect(f, &o, &s, "computed S/N, defaults", 0, 1, 2, 3, 4, 5, -1);
        double maxerr = 0;
        for (int a = 0; a < 3 && s.nselected == 6; a++)
            for (int i = 0; i < 6; i++) {
                double e = fabs(s.sn[a][i] - ref[a][i]);
                maxerr = e > maxerr ? e : maxerr;
                CHECK(test_near(s.sn[a][i], ref[a][i], 1e-12, 1e-6), "%s sn[%d][%d] %g vs %g",
                      files[k], a, i, s.sn[a][i], ref[a][i]);
            }
        printf("%s: computed S/N max abs error %.3g (tolerance 1e-6 relative)\n", files[k],
               maxerr);
        rvs_selection_free(&s);
        o.min_sn = 4.0;
        o.batch_rows = 256;
        int want4[6], n4 = 0;
        for (int i = 0; i < 6; i++) {
            double mx = fmax(ref[0][i], fmax(ref[1][i], ref[2][i]));
            if (mx > 4.0)
                want4[n4++] = i;
        }
        CHECK(rvs_select_targets(f, &o, &s) == RVS_OK && s.nselected == (size_t)n4 && n4 > 0 &&
                  n4 < 6,
              "computed S/N cut: %zu rows, want %d", s.nselected, n4);
        for (int i = 0; i < n4 && s.nselected == (size_t)n4; i++)
            CHECK(s.rows[i] == (size_t)want4[i], "S/N cut row %d", i);
        rvs_selection_free(&s);
        rvs_select_options_init(&o);
        if (k == 0) {
            const struct rvs_desi_fibermap *fm = rvs_desi_fibermap(f);
            CHECK(strcmp(fm->survey, "cmx") == 0 && strcmp(fm->desi_target_column, "CMX_TARGET") == 0,
                  "cmx survey");
            o.objtypes = "STD_GAIA";
            expect(f, &o, &s, "cmx STD_GAIA", 0, 4, -1);
            rvs_selection_free(&s);
            o.objtypes = "SV0_MWS$,STD_TEST";
            expect(f, &o, &s, "cmx SV0_MWS$,STD_TEST", 2, 5, -1);
            rvs_selection_free(&s);
            /* No redrock file beside it: a warning, and no redrock selection. */
            o.objtypes = NULL;
            o.zbest_select = 1;
            expect(f, &o, &s, "zbest-select without a redrock file", 0, 1, 2, 3, 4, 5, -1);
            CHECK(!s.have_redrock, "no redrock values");
            rvs_selection_free(&s);
        } else {
            o.objtypes = "LRG_LOWDENS";
            expect(f, &o, &s, "sv3 LRG_LOWDENS", 0, 3, -1);
            rvs_selection_free(&s);
            o.objtypes = "MWS";
            expect(f, &o, &s, "sv3 MWS", 2, -1);
            rvs_selection_free(&s);
        }
        rvs_desi_close(&f);
    }
}

static void test_redrock_lookup(void)
{
    char path[8192], hdu[16];
    char *rr = NULL;
    snprintf(path, sizeof path, "%s/legacy/coadd-x.fits", dir);
    CHECK(rvs_select_redrock_path(path, &rr, hdu) == RVS_OK && rr &&
              strstr(rr, "legacy/zbest-x.fits") && strcmp(hdu, "ZBEST") == 0,
          "legacy zbest lookup");
    free(rr);
    snprintf(path, sizeof path, "%s/sv1/spectra-sv1-2.fits.gz", dir);
    CHECK(rvs_select_redrock_path(path, &rr, hdu) == RVS_OK && rr &&
              strstr(rr, "sv1/redrock-sv1-2.fits.gz") && strcmp(hdu, "REDSHIFTS") == 0,
          "a .gz input looks up redrock-*.fits[.gz]");
    free(rr);
    snprintf(path, sizeof path, "%s/main/other-main-1.fits", dir);
    CHECK(rvs_select_redrock_path(path, &rr, hdu) == RVS_OK && !rr && !hdu[0],
          "neither coadd- nor spectra-");

    /* Same length, other TARGETIDs: the row match must fail for the file. */
    struct rvs_desi_file *f = open_file("legacy/coadd-x.fits");
    struct rvs_select_options o;
    struct rvs_selection s;
    rvs_select_options_init(&o);
    o.zbest_select = 1;
    CHECK(rvs_select_targets(f, &o, &s) == RVS_ERR_FORMAT && s.nselected == 0,
          "row-matched redrock with other TARGETIDs");
    rvs_desi_close(&f);
}

static void test_targetid_file(void)
{
    char path[8192];
    int64_t *ids = NULL;
    size_t n = 0;
    snprintf(path, sizeof path, "%s/ids_good.txt", dir);
    CHECK(rvs_select_read_targetids(path, &ids, &n) == RVS_OK && n == 3 && ids[0] == 1000 &&
              ids[1] == 1002 && ids[2] == 1005,
          "TARGETID file: sorted, unique");
    free(ids);
    snprintf(path, sizeof path, "%s/ids_junk.txt", dir);
    CHECK(rvs_select_read_targetids(path, &ids, &n) == RVS_ERR_FORMAT && !ids, "junk in file");
    snprintf(path, sizeof path, "%s/no-such-file.txt", dir);
    CHECK(rvs_select_read_targetids(path, &ids, &n) == RVS_ERR_IO, "missing TARGETID file");
}

int main(void)
{
    char datadir[4096];
    snprintf(datadir, sizeof datadir, "%s/data", desi_test_srcdir());
    setenv("RVSFIT_CL_DATADIR", datadir, 1);
    snprintf(dir, sizeof dir, "%s/crafted", desi_test_scratch_dir("test_select"));
    desi_test_craft("select", dir, NULL);
    test_tables();
    test_main();
    test_sv1();
    test_computed_sn();
    test_redrock_lookup();
    test_targetid_file();
    return test_finish("test_select");
}
