/* test_library.c: the template-library loader and writer (src/library/library.c) on rvspecfit's fixture
 * library converted with tools/rvs-import:
 *  - each arm loads, has the DESI parameters, and the network run on the device through
 *    rvs_nn_create/rvs_nn_forward reproduces rvspecfit's own fluxes at the 20 reference parameter
 *    sets (reference_evals.fits) within 1e-5 relative, in the default (fp64) context and with
 *    forced fp32; rvs_library_outside matches rvspecfit's outside flags within 1e-6;
 *  - broken copies made by tests/library_craft.py (wrong version, foreign file, missing HDU or
 *    keyword, bad shape or type, NaN weight, negative variance, S = 0, WAVE not log-uniform,
 *    open / concave / non-unit hulls, checksums missing or not matching, ...) are refused with
 *    RVS_ERR_FORMAT and a message naming the defect;
 *  - the writer round trip: load -> write -> load gives bit-identical content, writing twice gives
 *    identical bytes except DATE and CHECKSUM, astropy verifies the checksums and sees the same
 *    HDUs, keywords and data as in rvs-import's file; bad content is refused, leaving no file.
 * Needs the fixture ($RVSFIT_TEST_DATA or $top_srcdir/../shared/data), $PYTHON3 with numpy, h5py
 * and astropy, and an OpenCL device; skips (77) only when one of them is absent. */
#include <config.h>

#include <errno.h>
#include <float.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fitsio.h>

#include "rvsfit/library.h"
#include "testutil.h"

#define FLUX_RTOL 1e-5   /* brief of issue #4: float32 network against rvspecfit's torch */
#define OUTSIDE_TOL 1e-6 /* absolute, relative to max(1, |reference|) */
#define NREF 20

static const char *const setups[3] = {"desi_b", "desi_r", "desi_z"};

static char scratch[4096], fixture[4096], python[1024], srcdir[4096];

static void fmt(char *buf, size_t size, const char *format, ...) __attribute__((format(printf, 3, 4)));

/* snprintf that stops the test when a path or command does not fit. */
static void fmt(char *buf, size_t size, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    int n = vsnprintf(buf, size, format, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= size) {
        fprintf(stderr, "FAIL: path or command too long: %.200s...\n", buf);
        exit(1);
    }
}

static int run_cmd(const char *cmd)
{
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
    return rc;
}

static int file_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

static void setup_paths(void)
{
    const char *top_src = getenv("top_srcdir"), *top_build = getenv("top_builddir");
    const char *data = getenv("RVSFIT_TEST_DATA"), *py = getenv("PYTHON3");
    fmt(srcdir, sizeof srcdir, "%s", top_src ? top_src : "..");
    char cand[2][4096];
    int nc = 0;
    if (data && data[0])
        fmt(cand[nc++], sizeof cand[0], "%s", data);
    fmt(cand[nc++], sizeof cand[0], "%s/../shared/data", srcdir);
    fixture[0] = 0;
    for (int i = 0; i < nc; i++) {
        char ref[4200];
        fmt(ref, sizeof ref, "%s/rvspecfit-templ/reference_evals.fits", cand[i]);
        if (file_exists(ref)) {
            fmt(fixture, sizeof fixture, "%s/rvspecfit-templ", cand[i]);
            break;
        }
    }
    if (!fixture[0]) {
        fprintf(stderr, "SKIP: rvspecfit fixture library (shared/data/rvspecfit-templ) not found; "
                        "set RVSFIT_TEST_DATA\n");
        exit(TEST_SKIP);
    }
    fmt(python, sizeof python, "%s", py && py[0] ? py : "/usr/bin/python3");
    char cmd[8192];
    fmt(cmd, sizeof cmd, "'%s' -c 'import numpy, h5py, astropy' 2>/dev/null", python);
    if (system(cmd) != 0) {
        /* tools/install-deps installs them: their absence is a broken install, not a skip */
        fprintf(stderr, "FAIL: %s lacks numpy/h5py/astropy; run tools/install-deps\n", python);
        exit(1);
    }
    fmt(scratch, sizeof scratch, "%s/tests/test_library.tmp", top_build ? top_build : ".");
    fmt(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s/lib'", scratch, scratch);
    if (run_cmd(cmd) != 0)
        exit(1);
    fmt(cmd, sizeof cmd,
             "'%s/tools/rvs-import' --grid-name fixture-phoenix-layout '%s' '%s/lib' >'%s/import.log' 2>&1",
             top_build ? top_build : ".", fixture, scratch, scratch);
    if (run_cmd(cmd) != 0) {
        fprintf(stderr, "FAIL: rvs-import could not convert the fixture (see %s/import.log)\n",
                scratch);
        exit(1);
    }
}

/* ------------------------------------------------------------------ reference evaluations */

struct reference {
    double theta[NREF * 4];
    double *flux[3];
    double outside[3][NREF];
    long npix[3];
};

static int read_reference(struct reference *ref)
{
    char path[4200];
    int fst = 0, anynul = 0, col = 0;
    fitsfile *f = NULL;
    fmt(path, sizeof path, "%s/reference_evals.fits", fixture);
    fits_open_diskfile(&f, path, READONLY, &fst);
    fits_movnam_hdu(f, BINARY_TBL, "PARAMS", 0, &fst);
    static const char *const cols[4] = {"TEFF", "LOGG", "FEH", "ALPHA"};
    for (int p = 0; p < 4; p++) {
        double v[NREF];
        fits_get_colnum(f, CASEINSEN, (char *)cols[p], &col, &fst);
        fits_read_col(f, TDOUBLE, col, 1, 1, NREF, NULL, v, &anynul, &fst);
        for (int e = 0; e < NREF; e++)
            ref->theta[e * 4 + p] = v[e];
    }
    for (int a = 0; a < 3; a++) {
        char name[32];
        int naxis = 0;
        long naxes[2] = {0, 0};
        fmt(name, sizeof name, "DESI_%c_FLUX", "BRZ"[a]);
        fits_movnam_hdu(f, IMAGE_HDU, name, 0, &fst);
        fits_get_img_dim(f, &naxis, &fst);
        fits_get_img_size(f, 2, naxes, &fst);
        ref->npix[a] = naxes[0];
        ref->flux[a] = malloc((size_t)(naxes[0] * naxes[1]) * sizeof(double));
        fits_read_img(f, TDOUBLE, 1, naxes[0] * naxes[1], NULL, ref->flux[a], &anynul, &fst);
        fmt(name, sizeof name, "DESI_%c_OUTSIDE", "BRZ"[a]);
        fits_movnam_hdu(f, IMAGE_HDU, name, 0, &fst);
        fits_read_img(f, TDOUBLE, 1, NREF, NULL, ref->outside[a], &anynul, &fst);
    }
    fits_close_file(f, &fst);
    if (fst) {
        char msg[FLEN_ERRMSG];
        while (fits_read_errmsg(msg))
            fprintf(stderr, "cfitsio: %s\n", msg);
    }
    CHECK(fst == 0, "cannot read %s (cfitsio status %d)", path, fst);
    return fst;
}

/* The network of each arm on the device at the reference parameters. */
static void check_forward(struct rvs_context *ctx, struct rvs_library_arm *const arms[3],
                          const struct reference *ref)
{
    size_t es = rvs_context_real_size(ctx);
    for (int a = 0; a < 3; a++) {
        struct rvs_nn *nn = NULL;
        cl_mem dparams = NULL, dout = NULL;
        size_t npix = rvs_library_npix(arms[a]);
        void *host = malloc(NREF * 4 * es), *out = malloc(NREF * npix * es);
        /* rvspecfit rounds the parameters to float32 (Mapper.forward): so do we */
        for (int i = 0; i < NREF * 4; i++) {
            double v = (float)ref->theta[i];
            if (es == sizeof(float))
                ((float *)host)[i] = (float)v;
            else
                ((double *)host)[i] = v;
        }
        int status = rvs_nn_create(ctx, rvs_library_nn_desc(arms[a]), &nn);
        CHECK(status == RVS_OK, "rvs_nn_create(%s): %s", setups[a], rvs_strerror(status));
        if (status == RVS_OK) {
            status = rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                                       NREF * 4 * es, host, &dparams);
            if (!status)
                status = rvs_buffer_create(ctx, CL_MEM_READ_WRITE, NREF * npix * es, NULL, &dout);
            if (!status)
                status = rvs_nn_forward(ctx, nn, dparams, NREF, dout, RVS_NN_FLUX_REAL);
            if (!status)
                status = rvs_buffer_read(ctx, dout, 0, NREF * npix * es, out);
            CHECK(status == RVS_OK, "forward pass %s: %s", setups[a], rvs_strerror(status));
        }
        double worst = 0;
        CHECK((long)npix == ref->npix[a], "%s: %zu pixels, reference %ld", setups[a], npix,
              ref->npix[a]);
        if (status == RVS_OK && (long)npix == ref->npix[a]) {
            for (size_t k = 0; k < NREF * npix; k++) {
                double got = es == sizeof(float) ? ((float *)out)[k] : ((double *)out)[k];
                double rel = fabs(got / ref->flux[a][k] - 1);
                if (!(rel <= worst))
                    worst = isnan(rel) ? INFINITY : rel;
            }
        }
        double oworst = 0;
        int nout = 0;
        for (int e = 0; e < NREF; e++) {
            double o = rvs_library_outside(arms[a], ref->theta + 4 * e);
            double err = fabs(o - ref->outside[a][e]) / fmax(1, fabs(ref->outside[a][e]));
            if (!(err <= oworst))
                oworst = isnan(err) ? INFINITY : err;
            CHECK((o > 0) == (ref->outside[a][e] > 0), "%s point %d: outside %g, rvspecfit %g",
                  setups[a], e, o, ref->outside[a][e]);
            nout += o > 0;
        }
        double many[NREF];
        rvs_library_outside_many(arms[a], ref->theta, NREF, many);
        for (int e = 0; e < NREF; e++)
            CHECK(many[e] == rvs_library_outside(arms[a], ref->theta + 4 * e),
                  "outside_many differs at %d", e);
        printf("%s %s: flux max relative error %.3g (tolerance %g); outside max error %.3g "
               "(tolerance %g), %d of %d outside (last %.8g, rvspecfit %.8g)\n",
               ctx->use_fp64 ? "fp64" : "fp32", setups[a], worst, FLUX_RTOL, oworst, OUTSIDE_TOL,
               nout, NREF, rvs_library_outside(arms[a], ref->theta + 4 * (NREF - 1)),
               ref->outside[a][NREF - 1]);
        CHECK(worst <= FLUX_RTOL, "%s %s: flux error %.3g > %g", ctx->use_fp64 ? "fp64" : "fp32",
              setups[a], worst, FLUX_RTOL);
        CHECK(oworst <= OUTSIDE_TOL, "%s: outside error %.3g > %g", setups[a], oworst,
              OUTSIDE_TOL);
        rvs_buffer_release(&dparams);
        rvs_buffer_release(&dout);
        rvs_nn_destroy(&nn);
        free(host);
        free(out);
    }
}

/* ------------------------------------------------------------------ refused files */

/* Opens path with the log going to a temporary file; returns the status and the log text. */
static int open_logged(const char *path, char *log, size_t log_size)
{
    FILE *tmp = tmpfile();
    rvs_log_set_stream(tmp);
    struct rvs_library_arm *arm = NULL;
    int status = rvs_library_open_file(path, &arm);
    rvs_log_set_stream(stderr);
    CHECK(status != RVS_OK || arm != NULL, "%s: success without an arm", path);
    CHECK(status == RVS_OK || arm == NULL, "%s: failure but an arm", path);
    rvs_library_close(&arm);
    rewind(tmp);
    size_t n = fread(log, 1, log_size - 1, tmp);
    log[n] = 0;
    fclose(tmp);
    return status;
}

static void check_bad_files(void)
{
    char cmd[8192], list[4200], line[1024], log[16384];
    fmt(cmd, sizeof cmd, "'%s' '%s/tests/library_craft.py' bad '%s/lib/rvsfit_desi_b.fits' '%s/bad'",
             python, srcdir, scratch, scratch);
    if (run_cmd(cmd) != 0) {
        CHECK(0, "library_craft.py bad failed");
        return;
    }
    fmt(list, sizeof list, "%s/bad/cases.txt", scratch);
    FILE *f = fopen(list, "r");
    CHECK(f != NULL, "cannot read %s", list);
    if (!f)
        return;
    int ncases = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *bar = strchr(line, '|');
        if (!bar)
            continue;
        *bar = 0;
        const char *expect = bar + 1;
        char path[4400];
        fmt(path, sizeof path, "%s/bad/%s/rvsfit_desi_b.fits", scratch, line);
        int status = open_logged(path, log, sizeof log);
        if (strcmp(expect, "OK") == 0) {
            /* a valid variant (the fixture with BatchNorm added): loads and folds */
            CHECK(status == RVS_OK, "case %s: refused: %s\n%s", line, rvs_strerror(status), log);
            printf("accepted %-10s\n", line);
            continue;
        }
        CHECK(status == RVS_ERR_FORMAT, "case %s: status %s, expected RVS_ERR_FORMAT", line,
              rvs_strerror(status));
        CHECK(strstr(log, expect) != NULL, "case %s: message lacks '%s':\n%s", line, expect, log);
        CHECK(strstr(log, path) != NULL, "case %s: message does not name the file", line);
        const char *last = log;
        for (const char *p = log; *p; p++)
            if (p[0] == '\n' && p[1])
                last = p + 1;
        printf("refused %-10s %s", line, last);
        ncases++;
    }
    fclose(f);
    CHECK(ncases >= 20, "only %d bad-file cases", ncases);

    /* absent file and directory */
    struct rvs_library_arm *arm = NULL;
    FILE *tmp = tmpfile();
    rvs_log_set_stream(tmp);
    char dir[4300];
    fmt(dir, sizeof dir, "%s/no-such-dir", scratch);
    int status = rvs_library_open(dir, "desi_b", &arm);
    rvs_log_set_stream(stderr);
    rewind(tmp);
    size_t n = fread(log, 1, sizeof log - 1, tmp);
    log[n] = 0;
    fclose(tmp);
    CHECK(status == RVS_ERR_IO && !arm, "missing directory: %s", rvs_strerror(status));
    CHECK(strstr(log, "rvsfit_desi_b.fits: cannot read") != NULL, "missing file message: %s",
          log);
    printf("refused missing    %s", log);
    CHECK(rvs_library_open(scratch, "../lib/x", &arm) == RVS_ERR_INVALID_ARGUMENT,
          "a setup with '/' must be refused");
}

/* ------------------------------------------------------------------ writer round trip */

static int same_floats(const float *a, const float *b, size_t n)
{
    return (a == NULL) == (b == NULL) && (!a || memcmp(a, b, n * sizeof *a) == 0);
}

/* Every field and array of two contents, bit for bit. */
static void compare_content(const struct rvs_library_content *a,
                            const struct rvs_library_content *b, const char *what)
{
    CHECK(strcmp(a->setup, b->setup) == 0, "%s: setup", what);
    CHECK(a->npix == b->npix && memcmp(a->wave, b->wave, a->npix * sizeof(double)) == 0,
          "%s: WAVE", what);
    CHECK(memcmp(&a->log_step, &b->log_step, sizeof(double)) == 0, "%s: LOGSTEP %.17g %.17g",
          what, a->log_step, b->log_step);
    CHECK(a->nparam == b->nparam, "%s: nparam", what);
    for (size_t p = 0; p < a->nparam && p < RVS_NN_MAX_INPUTS; p++) {
        const struct rvs_library_param *x = &a->params[p], *y = &b->params[p];
        CHECK(strcmp(x->name, y->name) == 0 && x->log10 == y->log10 &&
                  memcmp(&x->m, &y->m, sizeof x->m) == 0 &&
                  memcmp(&x->s, &y->s, sizeof x->s) == 0 &&
                  memcmp(&x->train_min, &y->train_min, sizeof x->train_min) == 0 &&
                  memcmp(&x->train_max, &y->train_max, sizeof x->train_max) == 0,
              "%s: PARAMS row %zu", what, p);
    }
    const struct rvs_nn_desc *d = &a->nn, *e = &b->nn;
    CHECK(d->indim == e->indim && d->nlayers == e->nlayers && d->width == e->width &&
              d->npc == e->npc && d->npix == e->npix && d->with_batchnorm == e->with_batchnorm,
          "%s: network shape", what);
    for (size_t i = 0; i < d->nlayers + 2; i++) {
        size_t out = i + 1 < d->nlayers + 2 ? d->width : d->npc;
        size_t in = i == 0 ? d->indim : d->width;
        CHECK(same_floats(d->lin[i].weight, e->lin[i].weight, out * in) &&
                  same_floats(d->lin[i].bias, e->lin[i].bias, out),
              "%s: LIN%zu", what, i);
        if (d->with_batchnorm && i >= 1 && i <= d->nlayers)
            CHECK(same_floats(d->bn[i].weight, e->bn[i].weight, d->width) &&
                      same_floats(d->bn[i].bias, e->bn[i].bias, d->width) &&
                      same_floats(d->bn[i].running_mean, e->bn[i].running_mean, d->width) &&
                      same_floats(d->bn[i].running_var, e->bn[i].running_var, d->width) &&
                      d->bn[i].eps == e->bn[i].eps,
                  "%s: BN%zu", what, i);
    }
    CHECK(same_floats(d->pc.weight, e->pc.weight, d->npix * d->npc) &&
              same_floats(d->pc.bias, e->pc.bias, d->npix),
          "%s: PC", what);
    CHECK(a->nhull == b->nhull, "%s: nhull", what);
    for (size_t k = 0; k < a->nhull && k < RVS_LIBRARY_MAX_HULLS; k++) {
        const struct rvs_library_hull *g = &a->hulls[k], *h = &b->hulls[k];
        size_t n = g->n * sizeof(double);
        CHECK(g->i1 == h->i1 && g->i2 == h->i2 && g->n == h->n && memcmp(g->x, h->x, n) == 0 &&
                  memcmp(g->y, h->y, n) == 0 && memcmp(g->nx, h->nx, n) == 0 &&
                  memcmp(g->ny, h->ny, n) == 0 && memcmp(g->offset, h->offset, n) == 0,
              "%s: HULL%zu", what, k + 1);
    }
    const struct rvs_library_provenance *p = &a->prov, *q = &b->prov;
    CHECK(strcmp(p->creator, q->creator) == 0 && strcmp(p->creator_version, q->creator_version) == 0 &&
              strcmp(p->grid_name, q->grid_name) == 0 && strcmp(p->librev, q->librev) == 0 &&
              strcmp(p->srcsoft, q->srcsoft) == 0 && strcmp(p->srcver, q->srcver) == 0 &&
              strcmp(p->srch5, q->srch5) == 0 && strcmp(p->srch5sha, q->srch5sha) == 0 &&
              strcmp(p->srcnn, q->srcnn) == 0 && strcmp(p->srcnnsha, q->srcnnsha) == 0 &&
              p->ckptver == q->ckptver && p->nnarchv == q->nnarchv,
          "%s: provenance", what);
    CHECK((p->traincmd == NULL) == (q->traincmd == NULL) &&
              (!p->traincmd || strcmp(p->traincmd, q->traincmd) == 0),
          "%s: TRAINCMD '%s' / '%s'", what, p->traincmd ? p->traincmd : "(none)",
          q->traincmd ? q->traincmd : "(none)");
}

static char *slurp(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    *size = fread(buf, 1, (size_t)n, f);
    fclose(f);
    return buf;
}

/* Two files equal card by card and byte by byte, except DATE and CHECKSUM cards. */
static void compare_bytes(const char *p1, const char *p2)
{
    size_t n1 = 0, n2 = 0, differ = 0, skipped = 0;
    char *a = slurp(p1, &n1), *b = slurp(p2, &n2);
    CHECK(a && b && n1 == n2 && n1 % 2880 == 0, "round-trip files: sizes %zu, %zu", n1, n2);
    if (a && b && n1 == n2) {
        for (size_t off = 0; off < n1; off += 80) {
            if (memcmp(a + off, b + off, 80) == 0)
                continue;
            /* DATASUM's value must agree; its comment holds the time of writing */
            int datasum = strncmp(a + off, "DATASUM =", 9) == 0 && memcmp(a + off, b + off, 31) == 0;
            if (strncmp(a + off, "DATE    =", 9) == 0 || strncmp(a + off, "CHECKSUM=", 9) == 0 ||
                datasum) {
                skipped++;
                continue;
            }
            differ++;
        }
    }
    printf("write twice: %zu bytes, %zu DATE/CHECKSUM/DATASUM-comment cards differ, %zu other 80-byte blocks\n",
           n1, skipped, differ);
    CHECK(differ == 0, "%zu blocks differ between %s and %s", differ, p1, p2);
    free(a);
    free(b);
}

static void check_writer(void)
{
    char src[4400], p1[4400], p2[4400], cmd[16384];
    struct rvs_library_arm *orig = NULL, *back = NULL, *back2 = NULL;
    fmt(src, sizeof src, "%s/lib/rvsfit_desi_b.fits", scratch);
    fmt(cmd, sizeof cmd, "mkdir -p '%s/rt1' '%s/rt2' '%s/rt3'", scratch, scratch, scratch);
    run_cmd(cmd);
    fmt(p1, sizeof p1, "%s/rt1/rvsfit_desi_b.fits", scratch);
    fmt(p2, sizeof p2, "%s/rt2/rvsfit_desi_b.fits", scratch);
    CHECK(rvs_library_open_file(src, &orig) == RVS_OK, "open %s", src);
    if (!orig)
        return;
    int status = rvs_library_write_arm(p1, rvs_library_content(orig), 0);
    CHECK(status == RVS_OK, "write %s: %s", p1, rvs_strerror(status));
    CHECK(rvs_library_open_file(p1, &back) == RVS_OK, "reopen %s", p1);
    if (back) {
        compare_content(rvs_library_content(orig), rvs_library_content(back), "round trip");
        status = rvs_library_write_arm(p2, rvs_library_content(back), 0);
        CHECK(status == RVS_OK, "write %s: %s", p2, rvs_strerror(status));
        CHECK(rvs_library_open_file(p2, &back2) == RVS_OK, "reopen %s", p2);
        if (back2)
            compare_content(rvs_library_content(orig), rvs_library_content(back2), "second trip");
        compare_bytes(p1, p2);
    }
    fmt(cmd, sizeof cmd, "'%s' '%s/tests/library_craft.py' verify '%s' '%s'", python, srcdir,
             p1, src);
    CHECK(run_cmd(cmd) == 0, "astropy check of the C-written file against rvs-import's");

    /* an existing file is kept without overwrite; with it, replaced */
    FILE *tmp = tmpfile();
    rvs_log_set_stream(tmp);
    status = rvs_library_write_arm(p1, rvs_library_content(orig), 0);
    CHECK(status == RVS_ERR_IO, "existing file without overwrite: %s", rvs_strerror(status));
    status = rvs_library_write_arm(p1, rvs_library_content(orig), 1);
    CHECK(status == RVS_OK, "overwrite: %s", rvs_strerror(status));

    /* bad content: a NaN weight, a wrong file name; nothing is written */
    struct rvs_library_content c = *rvs_library_content(orig);
    size_t nw = c.npix * c.nn.npc;
    float *w = malloc(nw * sizeof *w);
    memcpy(w, c.nn.pc.weight, nw * sizeof *w);
    w[17] = NAN;
    c.nn.pc.weight = w;
    char p3[4400];
    fmt(p3, sizeof p3, "%s/rt3/rvsfit_desi_b.fits", scratch);
    status = rvs_library_write_arm(p3, &c, 0);
    CHECK(status == RVS_ERR_INVALID_ARGUMENT, "NaN weight written: %s", rvs_strerror(status));
    c = *rvs_library_content(orig);
    fmt(p3, sizeof p3, "%s/rt3/rvsfit_desi_r.fits", scratch);
    status = rvs_library_write_arm(p3, &c, 0);
    CHECK(status == RVS_ERR_INVALID_ARGUMENT, "wrong file name accepted: %s",
          rvs_strerror(status));
    rvs_log_set_stream(stderr);
    fclose(tmp);
    fmt(cmd, sizeof cmd, "test -z \"$(ls -A '%s/rt3')\"", scratch);
    CHECK(run_cmd(cmd) == 0, "refused writes left files in rt3");
    fmt(cmd, sizeof cmd, "test -z \"$(ls -A '%s/rt1' | grep -v '^rvsfit_desi_b.fits$')\"",
             scratch);
    CHECK(run_cmd(cmd) == 0, "temporary files left in rt1");
    free(w);
    rvs_library_close(&orig);
    rvs_library_close(&back);
    rvs_library_close(&back2);
}


/* Format version 2: the templates' LSF is written and read back (constant and as a table), a
 * version-1 file loads with an unknown LSF, and inconsistent LSF content is refused. */
static void check_lsf(void)
{
    char src[4400], p1[4400], p2[4400], cmd[9000], v1[4400];
    struct rvs_library_arm *orig = NULL, *back = NULL, *old = NULL;
    fmt(src, sizeof src, "%s/lib/rvsfit_desi_z.fits", scratch);
    fmt(cmd, sizeof cmd, "mkdir -p '%s/lsf1' '%s/lsf2' '%s/lsf3'", scratch, scratch, scratch);
    run_cmd(cmd);
    fmt(p1, sizeof p1, "%s/lsf1/rvsfit_desi_z.fits", scratch);
    fmt(p2, sizeof p2, "%s/lsf2/rvsfit_desi_z.fits", scratch);
    CHECK(rvs_library_open_file(src, &orig) == RVS_OK, "open %s", src);
    if (!orig)
        return;
    /* a version-1 file (the fixture's converter wrote version 1 before; the bundled library is
     * version 1 or 2): whatever it is, version 1 means unknown */
    fmt(v1, sizeof v1, "%s/data/default/rvsfit_desi_b.fits", srcdir);
    if (rvs_library_open_file(v1, &old) == RVS_OK) {
        const struct rvs_library_content *c = rvs_library_content(old);
        if (c->format_version == 1)
            CHECK(c->lsf.kind == RVS_LIBRARY_LSF_UNKNOWN && isnan(c->lsf.sigma) &&
                      !c->lsf.resolution_matrix &&
                      isnan(rvs_library_lsf_sigma_at(&c->lsf, 5000.0)),
                  "version-1 file: LSF must load as unknown");
        else
            CHECK(c->format_version == 2 && c->lsf.kind == RVS_LIBRARY_LSF_GAUSSIAN,
                  "the bundled library (version %ld) must record its LSF", c->format_version);
        rvs_library_close(&old);
    }

    /* constant Gaussian, made for the resolution-matrix path */
    struct rvs_library_content c = *rvs_library_content(orig);
    c.lsf = (struct rvs_library_lsf){.kind = RVS_LIBRARY_LSF_GAUSSIAN, .sigma = 0.5,
                                     .resolution_matrix = 1};
    int status = rvs_library_write_arm(p1, &c, 1);
    CHECK(status == RVS_OK, "write %s: %s", p1, rvs_strerror(status));
    CHECK(rvs_library_open_file(p1, &back) == RVS_OK, "reopen %s", p1);
    if (back) {
        const struct rvs_library_lsf *l = rvs_library_lsf(back);
        CHECK(rvs_library_content(back)->format_version == RVS_LIBRARY_FORMAT_VERSION,
              "written version %ld", rvs_library_content(back)->format_version);
        CHECK(l->kind == RVS_LIBRARY_LSF_GAUSSIAN && l->sigma == 0.5 && l->resolution_matrix &&
                  l->nnodes == 0 && rvs_library_lsf_sigma_at(l, 8000.0) == 0.5,
              "constant LSF read back: kind %d sigma %g rmat %d", l->kind, l->sigma,
              l->resolution_matrix);
        char d[128];
        rvs_library_lsf_describe(l, d, sizeof d);
        CHECK(strstr(d, "sigma 0.5 A") != NULL, "describe: '%s'", d);
        rvs_library_close(&back);
    }

    /* a table: linear between the nodes, flat beyond */
    double nw[3] = {7500.0, 8500.0, 9900.0}, ns[3] = {0.4, 0.5, 0.6};
    c.lsf = (struct rvs_library_lsf){.kind = RVS_LIBRARY_LSF_GAUSSIAN, .sigma = 0.5,
                                     .nnodes = 3, .node_wave = nw, .node_sigma = ns};
    status = rvs_library_write_arm(p2, &c, 1);
    CHECK(status == RVS_OK, "write %s: %s", p2, rvs_strerror(status));
    CHECK(rvs_library_open_file(p2, &back) == RVS_OK, "reopen %s", p2);
    if (back) {
        const struct rvs_library_lsf *l = rvs_library_lsf(back);
        CHECK(l->nnodes == 3 && !l->resolution_matrix, "table: %zu nodes", l->nnodes);
        CHECK(fabs(rvs_library_lsf_sigma_at(l, 8000.0) - 0.45) < 1e-12 &&
                  rvs_library_lsf_sigma_at(l, 7000.0) == 0.4 &&
                  rvs_library_lsf_sigma_at(l, 9950.0) == 0.6 &&
                  fabs(rvs_library_lsf_sigma_at(l, 9200.0) - 0.55) < 1e-12,
              "table interpolation");
        rvs_library_close(&back);
    }

    /* refused: unknown yet made for the resolution matrix; sigma <= 0; a decreasing table */
    FILE *tmp = tmpfile();
    rvs_log_set_stream(tmp);
    fmt(p1, sizeof p1, "%s/lsf3/rvsfit_desi_z.fits", scratch);
    c.lsf = (struct rvs_library_lsf){.kind = RVS_LIBRARY_LSF_UNKNOWN, .sigma = NAN,
                                     .resolution_matrix = 1};
    CHECK(rvs_library_write_arm(p1, &c, 1) == RVS_ERR_INVALID_ARGUMENT,
          "unknown LSF with LSFRMAT = T written");
    c.lsf = (struct rvs_library_lsf){.kind = RVS_LIBRARY_LSF_GAUSSIAN, .sigma = 0};
    CHECK(rvs_library_write_arm(p1, &c, 1) == RVS_ERR_INVALID_ARGUMENT, "sigma 0 written");
    double bw[3] = {7500.0, 7400.0, 9900.0};
    c.lsf = (struct rvs_library_lsf){.kind = RVS_LIBRARY_LSF_GAUSSIAN, .sigma = 0.5,
                                     .nnodes = 3, .node_wave = bw, .node_sigma = ns};
    CHECK(rvs_library_write_arm(p1, &c, 1) == RVS_ERR_INVALID_ARGUMENT,
          "decreasing LSF table written");
    rvs_log_set_stream(stderr);
    fclose(tmp);
    fmt(cmd, sizeof cmd, "test -z \"$(ls -A '%s/lsf3')\"", scratch);
    CHECK(run_cmd(cmd) == 0, "refused LSF writes left files");
    rvs_library_close(&orig);
}

int main(void)
{
    setup_paths();
    struct rvs_library_arm *arms[3] = {NULL, NULL, NULL};
    char dir[4300];
    fmt(dir, sizeof dir, "%s/lib", scratch);
    for (int a = 0; a < 3; a++) {
        int status = rvs_library_open(dir, setups[a], &arms[a]);
        CHECK(status == RVS_OK, "open %s: %s", setups[a], rvs_strerror(status));
        if (status != RVS_OK)
            return test_finish("test_library");
        CHECK(rvs_library_check_desi(arms[a]) == RVS_OK, "%s: DESI parameters", setups[a]);
        const struct rvs_library_provenance *p = rvs_library_provenance(arms[a]);
        CHECK(strcmp(rvs_library_setup(arms[a]), setups[a]) == 0, "setup name");
        CHECK(strcmp(p->creator, "rvs-import") == 0 && strcmp(p->srcsoft, "rvspecfit") == 0 &&
                  strcmp(p->grid_name, "fixture-phoenix-layout") == 0 && p->ckptver == 1 &&
                  p->nnarchv == 1 && p->traincmd && p->traincmd[0],
              "%s provenance", setups[a]);
        CHECK(rvs_library_param_index(arms[a], "feh") == 2 &&
                  rvs_library_param_index(arms[a], "vrad") == -1 &&
                  strcmp(rvs_library_param_name(arms[a], 3), "alpha") == 0 &&
                  rvs_library_param_name(arms[a], 4) == NULL,
              "parameter accessors");
        const double *w = rvs_library_wave(arms[a]);
        size_t n = rvs_library_npix(arms[a]);
        CHECK(fabs(log(w[n - 1] / w[0]) / (double)(n - 1) / rvs_library_log_step(arms[a]) - 1) <
                  1e-9,
              "log step");
        printf("%s: %zu px %.3f-%.3f A, log step %.9g, LIBREV '%s', SRCVER '%s', %zu hulls\n",
               setups[a], n, w[0], w[n - 1], rvs_library_log_step(arms[a]), p->librev, p->srcver,
               rvs_library_content(arms[a])->nhull);
    }
    struct reference ref;
    memset(&ref, 0, sizeof ref);
    if (read_reference(&ref) == 0) {
        struct rvs_context *ctx = test_context(1);
        check_forward(ctx, arms, &ref);
        rvs_context_destroy(&ctx);
        setenv("RVSFIT_CL_FP32", "1", 1);
        ctx = test_context(1);
        CHECK(!ctx->use_fp64, "forced fp32 context uses fp64");
        check_forward(ctx, arms, &ref);
        rvs_context_destroy(&ctx);
        unsetenv("RVSFIT_CL_FP32");
    }
    check_bad_files();
    check_writer();
    check_lsf();
    for (int a = 0; a < 3; a++) {
        free(ref.flux[a]);
        rvs_library_close(&arms[a]);
    }
    return test_finish("test_library");
}
