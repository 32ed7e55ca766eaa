/* test_run_pipeline.c: the per-file pipeline of src/run/run.c apart from the fit itself. A recording
 * fitter stands in for fit.h (through rvs_run_options.fitter_ops) and writes, for each target it
 * is given, sums of the prepared spectrum into the row and the prepared flux as the model. Then:
 * every selected row reaches the fitter exactly once, with the data that a single read and
 * preparation of all rows gives (bit for bit), for batch limits 1, 3 and more than the file,
 * --batch-size, with and without overlapped reading; the written rvtab (VRAD) and rvmod
 * (X_MODEL rows) carry each row's values in selection order; a fit failing in the second batch
 * fails the file (status FAILURE, no outputs, the reader thread joined). Host-only. */
#include <config.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <fitsio.h>

#include "rvsfit/run.h"
#include "desi_testutil.h"
#include "testutil.h"

#define MAXROWS 64

/* What the recording fitter saw, per input row. */
struct seen {
    int count;
    double sum_spec, sum_espec;
    long long nbad;
};
static struct seen seen[MAXROWS];
static size_t fake_max = 3;
static int fail_at_call = -1, calls, show_progress;

struct rvs_fitter {
    size_t nwave[RVS_DESI_NARMS];
};

static int fake_create(struct rvs_context *ctx, const struct rvs_fit_config *config,
                       struct rvs_library_arm *const arms[RVS_DESI_NARMS],
                       const double *const data_wave[RVS_DESI_NARMS],
                       const size_t nwave[RVS_DESI_NARMS], const size_t ndiag[RVS_DESI_NARMS],
                       struct rvs_fitter **fitter)
{
    (void)ctx, (void)config, (void)data_wave, (void)ndiag;
    *fitter = calloc(1, sizeof **fitter);
    if (!*fitter)
        return RVS_ERR_NOMEM;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        CHECK(!!arms[a] == !!nwave[a], "arm %d: library and grid disagree", a);
        (*fitter)->nwave[a] = nwave[a];
    }
    return RVS_OK;
}

static void fake_destroy(struct rvs_fitter **fitter)
{
    free(*fitter);
    *fitter = NULL;
}

static size_t fake_max_batch(const struct rvs_fitter *fitter)
{
    (void)fitter;
    return fake_max;
}

/* Weighted sums, so that a pixel or target shift changes them. */
static void sums(const struct rvs_prepared *b, size_t t, double *s, double *e, long long *nbad)
{
    *s = *e = 0;
    *nbad = 0;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        if (!b->spec[a])
            continue;
        size_t n = b->nwave[a];
        for (size_t p = 0; p < n; p++) {
            *s += b->spec[a][t * n + p] * (double)(p % 7 + 1 + a);
            *e += b->espec[a][t * n + p] * (double)(p % 5 + 1);
            *nbad += b->bad[a][t * n + p];
        }
    }
}

static int fake_fit(struct rvs_fitter *fitter, const struct rvs_prepared *batch,
                    struct rvs_output_row *rows, float *const models[RVS_DESI_NARMS])
{
    if (calls++ == fail_at_call)
        return RVS_ERR_INVALID_ARGUMENT;
    CHECK(batch->ntargets >= 1 && batch->ntargets <= fake_max, "batch of %zu, limit %zu",
          batch->ntargets, fake_max);
    for (size_t t = 0; t < batch->ntargets; t++) {
        long row = rows[t].input_row;
        CHECK(row >= 0 && row < MAXROWS, "input row %ld", row);
        if (row < 0 || row >= MAXROWS)
            continue;
        struct seen *s = &seen[row];
        s->count++;
        sums(batch, t, &s->sum_spec, &s->sum_espec, &s->nbad);
        rows[t].vrad = s->sum_spec;
        rows[t].teff = s->sum_espec;
        rows[t].npix_tot = s->nbad;
        rows[t].rvs_warn = 0;
        for (int a = 0; a < RVS_DESI_NARMS; a++)
            if (models[a])
                for (size_t p = 0; p < fitter->nwave[a]; p++)
                    models[a][t * fitter->nwave[a] + p] =
                        (float)batch->spec[a][t * fitter->nwave[a] + p];
    }
    return RVS_OK;
}

static void fake_profile(const struct rvs_fitter *fitter, struct rvs_fit_profile *profile)
{
    (void)fitter;
    memset(profile, 0, sizeof *profile);
}

static const struct rvs_run_fitter_ops fake_ops = {fake_create, fake_destroy, fake_max_batch,
                                                   fake_fit, fake_profile};

/* The reference: all selected rows read and prepared in one batch. */
static struct rvs_selection ref_sel;
static struct rvs_prepared ref;
static struct seen ref_seen[MAXROWS];

static void make_reference(const char *input)
{
    struct rvs_desi_file *file = NULL;
    struct rvs_select_options so;
    struct rvs_prepare_options po;
    struct rvs_desi_spectra sp;
    rvs_select_options_init(&so);
    rvs_prepare_options_init(&po);
    rvs_desi_spectra_init(&sp);
    rvs_prepared_init(&ref);
    memset(&ref_sel, 0, sizeof ref_sel);
    if (rvs_desi_open(input, RVS_DESI_ARMS_ALL, &file) != RVS_OK ||
        rvs_select_targets(file, &so, &ref_sel) != RVS_OK ||
        rvs_desi_read_spectra(file, ref_sel.rows, ref_sel.nselected, 0, &sp) != RVS_OK) {
        fprintf(stderr, "FAIL: cannot read the reference from %s\n", input);
        exit(1);
    }
    const double *wave[RVS_DESI_NARMS];
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        wave[a] = rvs_desi_wavelength(file, a);
    CHECK(rvs_prepare_batch(&sp, wave, &po, &ref) == RVS_OK, "reference preparation");
    CHECK(ref_sel.nselected >= 7 && ref_sel.nselected <= MAXROWS, "%zu rows selected",
          ref_sel.nselected);
    for (size_t k = 0; k < ref_sel.nselected; k++) {
        struct seen *s = &ref_seen[ref_sel.rows[k]];
        s->count = 1;
        sums(&ref, k, &s->sum_spec, &s->sum_espec, &s->nbad);
    }
    rvs_desi_spectra_free(&sp);
    rvs_desi_close(&file);
}

/* Reads VRAD of RVTAB and row k of B_MODEL back and compares them with the reference. */
static void check_written(const char *tab, const char *mod, const char *what)
{
    fitsfile *f = NULL;
    int fst = 0, col = 0, anynul = 0;
    long nrows = 0;
    fits_open_file(&f, tab, READONLY, &fst);
    fits_movnam_hdu(f, BINARY_TBL, "RVTAB", 0, &fst);
    fits_get_num_rows(f, &nrows, &fst);
    fits_get_colnum(f, CASESEN, "VRAD", &col, &fst);
    CHECK(fst == 0 && nrows == (long)ref_sel.nselected, "%s: %s has %ld rows (cfitsio %d)",
          what, tab, nrows, fst);
    for (long k = 0; fst == 0 && k < nrows; k++) {
        double v = NAN;
        fits_read_col(f, TDOUBLE, col, k + 1, 1, 1, NULL, &v, &anynul, &fst);
        CHECK(v == ref_seen[ref_sel.rows[k]].sum_spec, "%s: VRAD of row %ld is %.17g, not %.17g",
              what, k, v, ref_seen[ref_sel.rows[k]].sum_spec);
    }
    fst = 0;
    fits_close_file(f, &fst);

    fst = 0;
    f = NULL;
    fits_open_file(&f, mod, READONLY, &fst);
    fits_movnam_hdu(f, IMAGE_HDU, "B_MODEL", 0, &fst);
    long naxes[2] = {0, 0};
    int naxis = 0;
    fits_get_img_dim(f, &naxis, &fst);
    fits_get_img_size(f, 2, naxes, &fst);
    size_t nw = ref.nwave[0];
    CHECK(fst == 0 && naxis == 2 && (size_t)naxes[0] == nw &&
              naxes[1] == (long)ref_sel.nselected,
          "%s: B_MODEL is %ld x %ld", what, naxes[1], naxes[0]);
    float *row = malloc(nw * sizeof *row);
    for (long k = 0; row && fst == 0 && k < naxes[1]; k++) {
        long first[2] = {1, k + 1};
        fits_read_pix(f, TFLOAT, first, (long)nw, NULL, row, &anynul, &fst);
        size_t bad = 0;
        for (size_t p = 0; p < nw; p++)
            bad += row[p] != (float)ref.spec[0][(size_t)k * nw + p];
        CHECK(bad == 0, "%s: B_MODEL row %ld differs in %zu pixels", what, k, bad);
    }
    free(row);
    fst = 0;
    fits_close_file(f, &fst);
}

static int run_once(const char *input, const char *outdir, size_t max_batch, size_t batch_size,
                    int overlap, const char *status_path, int *outcome)
{
    struct rvs_run_options o;
    struct rvs_run *run = NULL;
    rvs_run_options_init(&o);
    o.fitter_ops = &fake_ops;
    o.template_lib = getenv("RVS_TEST_LIBRARY");
    /* the reference is prepared without resolution matrices; the bundled library would turn
     * them on (LSFRMAT) */
    o.prepare.use_resolution = 0;
    o.naming.output_dir = outdir;
    o.naming.no_subdirs = 1;
    o.overlap = overlap;
    o.fit.batch_size = batch_size;
    o.status_path = status_path;
    o.progress = show_progress; /* the line goes to stderr, as on a terminal */
    fake_max = max_batch;
    calls = 0;
    memset(seen, 0, sizeof seen);
    int status = rvs_run_create(NULL, &o, &run);
    CHECK(status == RVS_OK, "rvs_run_create: %s", rvs_strerror(status));
    if (status != RVS_OK)
        return status;
    enum rvs_output_status result = RVS_OUTPUT_FAILURE;
    long nfit = -5;
    status = rvs_run_file(run, input, &result, &nfit);
    *outcome = (int)result;
    if (status == RVS_OK)
        CHECK(result == RVS_OUTPUT_SUCCESS && nfit == (long)ref_sel.nselected,
              "outcome %d, %ld fitted", (int)result, nfit);
    rvs_run_destroy(&run);
    return status;
}

int main(void)
{
    char scratch[4096], input[4200], lib[4200];
    snprintf(scratch, sizeof scratch, "%s", desi_test_scratch_dir("test_run_pipeline"));
    const char *src = getenv("top_srcdir");
    src = src && *src ? src : "..";
    snprintf(input, sizeof input, "%s/examples/coadd-main-bright-10000.fits", src);
    snprintf(lib, sizeof lib, "%s/data/default", src);
    setenv("RVS_TEST_LIBRARY", lib, 1);
    char datadir[4200];
    snprintf(datadir, sizeof datadir, "%s/data", src);
    setenv("RVSFIT_CL_DATADIR", datadir, 1);
    make_reference(input);

    static const struct {
        size_t max_batch, batch_size;
        int overlap;
    } cases[] = {{3, 0, 1}, {3, 0, 0}, {1, 0, 1}, {1, 0, 0}, {100, 0, 1}, {100, 2, 1}, {4, 0, 1}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char out[4300], what[128], tab[4400], mod[4400];
        snprintf(out, sizeof out, "%s/case%zu", scratch, c);
        snprintf(what, sizeof what, "limit %zu, --batch-size %zu, overlap %d", cases[c].max_batch,
                 cases[c].batch_size, cases[c].overlap);
        int outcome = -1;
        show_progress = c == 0;
        int st = run_once(input, out, cases[c].max_batch, cases[c].batch_size, cases[c].overlap,
                          NULL, &outcome);
        CHECK(st == RVS_OK, "%s: %s", what, rvs_strerror(st));
        size_t per = cases[c].batch_size ? cases[c].batch_size : cases[c].max_batch;
        size_t want_calls = (ref_sel.nselected + per - 1) / per;
        CHECK((size_t)calls == want_calls, "%s: %d fit calls, expected %zu", what, calls,
              want_calls);
        for (size_t r = 0; r < MAXROWS; r++) {
            CHECK(seen[r].count == ref_seen[r].count, "%s: row %zu fitted %d times, expected %d",
                  what, r, seen[r].count, ref_seen[r].count);
            if (ref_seen[r].count)
                CHECK(seen[r].sum_spec == ref_seen[r].sum_spec &&
                          seen[r].sum_espec == ref_seen[r].sum_espec &&
                          seen[r].nbad == ref_seen[r].nbad,
                      "%s: row %zu prepared differently from the single-batch reference", what,
                      r);
        }
        snprintf(tab, sizeof tab, "%s/rvtab_coadd-main-bright-10000.fits", out);
        snprintf(mod, sizeof mod, "%s/rvmod_coadd-main-bright-10000.fits", out);
        check_written(tab, mod, what);
        printf("%s: %d batches, every row once, values as the reference\n", what, calls);
    }

    /* a fit failing in the second batch, with the reader of the third running */
    char out[4300], status_path[4300], line[8192] = "";
    snprintf(out, sizeof out, "%s/failing", scratch);
    snprintf(status_path, sizeof status_path, "%s/status.txt", scratch);
    CHECK(rvs_output_status_start(status_path) == RVS_OK, "status file");
    fail_at_call = 1;
    int outcome = -1;
    int st = run_once(input, out, 3, 0, 1, status_path, &outcome);
    fail_at_call = -1;
    CHECK(st == RVS_ERR_INVALID_ARGUMENT && outcome == RVS_OUTPUT_FAILURE,
          "a failing fit gave %s, outcome %d", rvs_strerror(st), outcome);
    char tab[4400];
    snprintf(tab, sizeof tab, "%s/rvtab_coadd-main-bright-10000.fits", out);
    CHECK(access(tab, F_OK) != 0, "outputs written for a failed file");
    FILE *fp = fopen(status_path, "r");
    CHECK(fp && fgets(line, sizeof line, fp) && strstr(line, " FAILURE 0 "),
          "status line: %s", line);
    if (fp)
        fclose(fp);

    rvs_selection_free(&ref_sel);
    rvs_prepared_free(&ref);
    return test_finish("test_run_pipeline");
}
