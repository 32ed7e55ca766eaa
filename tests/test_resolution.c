/* test_resolution.c: rvs_resolution_apply (the batched DESI resolution matrix) against the dense
 * long-double reference of tests/routines/resolution.c, in the default context (fp64 where the
 * device has it) and in forced fp32, both kernels (tiled for GPUs, vector blocks for CPU devices);
 * the host primitives; argument checks; real DESI matrices.
 *
 * Tolerances (tests/tolerances.h), relative to the largest |output| of a case:
 *   fp64 path: RVS_TOL_FP64_REL; fp32 path: RVS_TOL_FP32_REL;
 *   identity R and impulse models: exactly 0 in both (products with 1 and 0 are exact);
 *   host primitives (double) vs the long-double reference: RVS_TOL_FP64_REL.
 * Real matrices come from every coadd-*.fits / spectra-*.fits under
 * $RVSFIT_TEST_SHARED_DATA/desi-edr (default $top_srcdir/../shared/data/desi-edr); when that
 * directory is absent the rest still runs and the test exits 77 at the end, unless something
 * failed. */
#include <config.h>

#include <dirent.h>
#include <fitsio.h>
#include <string.h>
#include <sys/stat.h>

#include "routine.h"
#include "testutil.h"
#include "tolerances.h"

/* from tests/routines/resolution.c */
extern const struct rvs_routine rvs_routine_resolution;
void rvs_resolution_reference(const float *rdata, size_t ndiag, size_t n, const double *model,
                              double *out, int dense);
double rvs_resolution_check_given(struct rvs_context *ctx, const char *label, const float *rdata,
                                  size_t S, size_t ndiag, size_t n, const cl_int *index,
                                  const double *models, size_t E);

static double tolerance(const struct rvs_context *ctx)
{
    return ctx->use_fp64 ? RVS_TOL_FP64_REL : RVS_TOL_FP32_REL;
}

static void check_case(struct rvs_context *ctx, size_t E, size_t n, size_t ndiag, size_t S,
                       int kind, unsigned seed)
{
    struct rvs_routine_args args = {.batch = E, .n = n, .m = ndiag, .k = S, .param = kind,
                                    .seed = seed};
    double err = rvs_routine_check(ctx, &rvs_routine_resolution, &args);
    double tol = kind == 1 || kind == 2 ? 0.0 : tolerance(ctx);
    CHECK(err >= 0 && err <= tol, "%s E=%zu n=%zu ndiag=%zu S=%zu kind=%d: error %.3g > %.3g",
          ctx->use_fp64 ? "fp64" : "fp32", E, n, ndiag, S, kind, err, tol);
}

/* Sizes of issue #3 and the DESI arms, every ndiag against every n (ndiag > n included), then
 * batches from 1 to thousands with several requests per spectrum, shuffled requests, and the
 * exact cases. */
static void check_grid(struct rvs_context *ctx)
{
    static const size_t sizes[] = {1, 7, 64, 1000, 4099, 2751, 2326, 2881};
    static const size_t diags[] = {1, 3, 11, 21};
    unsigned seed = 1;
    for (size_t a = 0; a < sizeof sizes / sizeof sizes[0]; a++)
        for (size_t b = 0; b < sizeof diags / sizeof diags[0]; b++) {
            size_t n = sizes[a], E = n < 100 ? 300 : 13, S = n < 100 ? 100 : 5;
            check_case(ctx, E, n, diags[b], S, 0, seed++);
        }
    check_case(ctx, 1, 2881, 11, 1, 0, seed++);     /* one request */
    check_case(ctx, 3000, 2881, 11, 300, 0, seed++); /* runs of 10 per spectrum */
    check_case(ctx, 2000, 2751, 11, 700, 3, seed++); /* shuffled */
    check_case(ctx, 40, 2326, 11, 200, 0, seed++);   /* fewer requests than spectra */
    check_case(ctx, 500, 1000, 21, 3, 3, seed++);
    check_case(ctx, 64, 2751, 11, 8, 1, seed++);     /* identity */
    check_case(ctx, 9, 7, 21, 2, 1, seed++);
    check_case(ctx, 1, 1, 11, 1, 1, seed++);
    check_case(ctx, 200, 64, 11, 7, 2, seed++);      /* impulses */
    check_case(ctx, 30, 4099, 21, 4, 2, seed++);
    check_case(ctx, 50, 2881, 11, 50, 2, seed++);
}

/* Bad indices give NaN rows; the other rows are still right. */
static void check_bad_index(struct rvs_context *ctx)
{
    enum { N = 37, ND = 5, S = 3, E = 6 };
    size_t es = rvs_context_real_size(ctx);
    float rdata[S * ND * N];
    double model[E * N], ref[N];
    unsigned char host[E * N * sizeof(double)];
    const cl_int index[E] = {0, -1, 2, 3, 1, 1000000};
    for (size_t i = 0; i < S * ND * N; i++)
        rdata[i] = (float)test_uniform(0, 1);
    for (size_t i = 0; i < E * N; i++) {
        model[i] = es == sizeof(double) ? test_uniform(-1, 1) : (float)test_uniform(-1, 1);
        if (es == sizeof(double))
            ((double *)host)[i] = model[i];
        else
            ((float *)host)[i] = (float)model[i];
    }
    cl_mem dr = NULL, dm = NULL, di = NULL, dout = NULL;
    int status = rvs_buffer_create(ctx, CL_MEM_READ_ONLY, sizeof rdata, rdata, &dr);
    status |= rvs_buffer_create(ctx, CL_MEM_READ_ONLY, E * N * es, host, &dm);
    status |= rvs_buffer_create(ctx, CL_MEM_READ_ONLY, sizeof index, index, &di);
    status |= rvs_buffer_create(ctx, CL_MEM_READ_WRITE, E * N * es, NULL, &dout);
    CHECK(status == RVS_OK, "bad-index buffers");
    status = rvs_resolution_apply(ctx, dr, S, ND, N, dm, di, E, dout);
    CHECK(status == RVS_OK, "bad-index apply: %s", rvs_strerror(status));
    status = rvs_buffer_read(ctx, dout, 0, E * N * es, host);
    CHECK(status == RVS_OK, "bad-index read");
    double worst = 0;
    for (int e = 0; e < E; e++) {
        int bad = index[e] < 0 || index[e] >= S;
        if (!bad)
            rvs_resolution_reference(rdata + (size_t)index[e] * ND * N, ND, N, model + e * N, ref,
                                     1);
        for (int i = 0; i < N; i++) {
            double got = es == sizeof(double) ? ((double *)host)[e * N + i]
                                              : ((float *)host)[e * N + i];
            if (bad)
                CHECK(isnan(got), "request %d with index %d: pixel %d = %g, want NaN", e,
                      index[e], i, got);
            else
                worst = fmax(worst, fabs(got - ref[i]) / 5.0); /* |out| <= 5 */
        }
    }
    CHECK(worst <= tolerance(ctx), "bad-index case: good rows off by %.3g", worst);
    printf("resolution             %s bad indices -> NaN rows; other rows error %.3e\n",
           ctx->use_fp64 ? "fp64" : "fp32", worst);
    rvs_buffer_release(&dr);
    rvs_buffer_release(&dm);
    rvs_buffer_release(&di);
    rvs_buffer_release(&dout);
}

/* Invalid shapes, aliasing and short buffers are refused before anything is enqueued. */
static void check_arguments(struct rvs_context *ctx)
{
    size_t es = rvs_context_real_size(ctx);
    cl_mem dr = NULL, dm = NULL, di = NULL, dout = NULL, small = NULL;
    int status = rvs_buffer_create(ctx, CL_MEM_READ_WRITE, 2 * 3 * 10 * sizeof(float), NULL, &dr);
    status |= rvs_buffer_create(ctx, CL_MEM_READ_WRITE, 4 * 10 * es, NULL, &dm);
    status |= rvs_buffer_create(ctx, CL_MEM_READ_WRITE, 4 * sizeof(cl_int), NULL, &di);
    status |= rvs_buffer_create(ctx, CL_MEM_READ_WRITE, 4 * 10 * es, NULL, &dout);
    status |= rvs_buffer_create(ctx, CL_MEM_READ_WRITE, 8, NULL, &small);
    CHECK(status == RVS_OK, "argument-check buffers");
    const struct {
        const char *what;
        cl_mem r, m, i, o;
        size_t S, ndiag, n, E;
    } bad[] = {
        {"even ndiag", dr, dm, di, dout, 2, 2, 10, 4},
        {"ndiag 0", dr, dm, di, dout, 2, 0, 10, 4},
        {"n 0", dr, dm, di, dout, 2, 3, 0, 4},
        {"S 0", dr, dm, di, dout, 0, 3, 10, 4},
        {"in place", dr, dm, di, dm, 2, 3, 10, 4},
        {"out = rdata", dr, dm, di, dr, 2, 3, 10, 4},
        {"short rdata", dr, dm, di, dout, 3, 3, 10, 4},
        {"short models", dr, small, di, dout, 2, 3, 10, 4},
        {"short index", dr, dm, small, dout, 2, 3, 10, 4},
        {"short output", dr, dm, di, small, 2, 3, 10, 4},
        {"NULL buffer", NULL, dm, di, dout, 2, 3, 10, 4},
    };
    for (size_t c = 0; c < sizeof bad / sizeof bad[0]; c++) {
        status = rvs_resolution_apply(ctx, bad[c].r, bad[c].S, bad[c].ndiag, bad[c].n, bad[c].m,
                                      bad[c].i, bad[c].E, bad[c].o);
        CHECK(status == RVS_ERR_INVALID_ARGUMENT, "%s: got %s, want invalid argument",
              bad[c].what, rvs_strerror(status));
    }
    status = rvs_resolution_apply(ctx, dr, 2, 3, 10, dm, di, 0, dout);
    CHECK(status == RVS_OK, "E = 0: %s", rvs_strerror(status));
    printf("resolution             %s %zu invalid calls refused, E = 0 accepted\n",
           ctx->use_fp64 ? "fp64" : "fp32", sizeof bad / sizeof bad[0]);
    rvs_buffer_release(&dr);
    rvs_buffer_release(&dm);
    rvs_buffer_release(&di);
    rvs_buffer_release(&dout);
    rvs_buffer_release(&small);
}

/* The host primitives against the reference: apply, row sums (R times ones), row scaling. */
static void check_host(const float *rdata_in, size_t ndiag, size_t n, const char *label)
{
    float *rdata = malloc(ndiag * n * sizeof *rdata);
    double *model = calloc(n, sizeof *model), *ref = malloc(n * sizeof *ref);
    double *got = malloc(n * sizeof *got), *sums = malloc(n * sizeof *sums);
    memcpy(rdata, rdata_in, ndiag * n * sizeof *rdata);
    double err = 0, scale = 0;
    for (size_t i = 0; i < n; i++)
        model[i] = test_uniform(-1, 1);
    rvs_resolution_reference(rdata, ndiag, n, model, ref, n <= 3000);
    rvs_resolution_apply_host(rdata, ndiag, n, model, got);
    for (size_t i = 0; i < n; i++)
        err = fmax(err, fabs(got[i] - ref[i])), scale = fmax(scale, fabs(ref[i]));
    double apply_err = scale > 0 ? err / scale : err;
    for (size_t i = 0; i < n; i++)
        model[i] = 1.0;
    rvs_resolution_reference(rdata, ndiag, n, model, ref, 0);
    rvs_resolution_row_sums_host(rdata, ndiag, n, sums);
    err = scale = 0;
    for (size_t i = 0; i < n; i++)
        err = fmax(err, fabs(sums[i] - ref[i])), scale = fmax(scale, fabs(ref[i]));
    double sum_err = scale > 0 ? err / scale : err;
    /* scale the first and the last row (the edge rows rvspecfit renormalises) and one inside */
    size_t rows[3] = {0, n / 2, n - 1};
    double factor[3] = {2.0, 0.5, 4.0}, scale_err = 0;
    for (int r = 0; r < 3; r++)
        rvs_resolution_scale_row_host(rdata, ndiag, n, rows[r], factor[r]);
    double *after = malloc(n * sizeof *after);
    rvs_resolution_row_sums_host(rdata, ndiag, n, after);
    for (size_t i = 0; i < n; i++) {
        double f = 1.0;
        for (int r = 0; r < 3; r++)
            if (rows[r] == i && (n > 1 || r == 0))
                f *= factor[r];
        if (n == 1)
            f = 2.0 * 0.5 * 4.0;
        scale_err = fmax(scale_err, fabs(after[i] - f * sums[i]) / (fabs(f * sums[i]) + 1e-30));
    }
    /* padding untouched */
    size_t h = ndiag / 2, padding_changed = 0;
    for (size_t k = 0; k < ndiag; k++)
        for (size_t j = 0; j < n; j++) {
            long i = (long)j - (long)h + (long)k;
            if (i < 0 || i >= (long)n)
                padding_changed += memcmp(&rdata[k * n + j], &rdata_in[k * n + j],
                                          sizeof(float)) != 0;
        }
    CHECK(apply_err <= RVS_TOL_FP64_REL, "%s host apply error %.3g", label, apply_err);
    CHECK(sum_err <= RVS_TOL_FP64_REL, "%s host row sums error %.3g", label, sum_err);
    CHECK(scale_err <= 1e-6, "%s row scaling error %.3g", label, scale_err); /* float storage */
    CHECK(padding_changed == 0, "%s row scaling changed %zu padding entries", label,
          padding_changed);
    printf("resolution             host %s n=%zu ndiag=%zu: apply %.3e, row sums %.3e, "
           "row scaling %.3e\n", label, n, ndiag, apply_err, sum_err, scale_err);
    free(rdata), free(model), free(ref), free(got), free(sums), free(after);
}

static void check_host_random(void)
{
    static const size_t cases[][2] = {{1, 1}, {1, 11}, {7, 21}, {64, 3}, {2881, 11}, {4099, 21}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t n = cases[c][0], ndiag = cases[c][1];
        float *r = malloc(ndiag * n * sizeof *r);
        for (size_t i = 0; i < ndiag * n; i++)
            r[i] = (float)test_uniform(-0.1, 1);
        check_host(r, ndiag, n, "random");
        free(r);
    }
}

/* ---------------------------------------------------------------- real DESI matrices */

struct desi_arm {
    char label[160];
    float *rdata; /* nspec x ndiag x n, as in the file */
    size_t nspec, ndiag, n;
};

static int read_arm(const char *path, const char *arm, struct desi_arm *out)
{
    fitsfile *f = NULL;
    int status = 0, naxis = 0;
    long naxes[3] = {0, 0, 0};
    char hdu[32];
    snprintf(hdu, sizeof hdu, "%s_RESOLUTION", arm);
    fits_open_file(&f, path, READONLY, &status);
    fits_movnam_hdu(f, IMAGE_HDU, hdu, 0, &status);
    fits_get_img_dim(f, &naxis, &status);
    if (status == 0 && naxis != 3) {
        fprintf(stderr, "%s[%s]: %d axes, expected 3\n", path, hdu, naxis);
        status = BAD_NAXIS;
    }
    fits_get_img_size(f, 3, naxes, &status);
    if (status == 0) {
        out->n = (size_t)naxes[0], out->ndiag = (size_t)naxes[1], out->nspec = (size_t)naxes[2];
        out->rdata = malloc(out->nspec * out->ndiag * out->n * sizeof(float));
        int anynul = 0;
        fits_read_img(f, TFLOAT, 1, (LONGLONG)(out->nspec * out->ndiag * out->n), NULL,
                      out->rdata, &anynul, &status);
        const char *base = strrchr(path, '/');
        snprintf(out->label, sizeof out->label, "%.120s %s", base ? base + 1 : path, arm);
    }
    if (status) {
        char msg[FLEN_ERRMSG];
        while (fits_read_errmsg(msg))
            fprintf(stderr, "cfitsio: %s\n", msg);
    }
    int close_status = 0;
    if (f)
        fits_close_file(f, &close_status);
    return status;
}

/* Each arm of each file: its spectra, 3 requests each (a flux-like positive model, a signed
 * random one, a constant one whose result is the row sums), then the host path on one matrix. */
static void check_desi_arm(struct rvs_context *ctx, const struct desi_arm *a)
{
    size_t S = a->nspec, n = a->n, E = 3 * S;
    cl_int *index = malloc(E * sizeof *index);
    double *models = malloc(E * n * sizeof *models);
    for (size_t e = 0; e < E; e++) {
        index[e] = (cl_int)(e / 3);
        for (size_t i = 0; i < n; i++) {
            double x = (double)i / (double)n, v;
            switch (e % 3) {
            case 0: /* continuum with absorption lines and noise */
                v = 1.0 + 0.3 * x - 0.6 * exp(-0.5 * pow((x - 0.37) * 400, 2)) -
                    0.4 * exp(-0.5 * pow((x - 0.81) * 250, 2)) + 0.01 * test_uniform(-1, 1);
                break;
            case 1: v = test_uniform(-1, 1); break;
            default: v = 1.0;
            }
            models[e * n + i] = v;
        }
    }
    double err = rvs_resolution_check_given(ctx, a->label, a->rdata, S, a->ndiag, n, index,
                                            models, E);
    CHECK(err >= 0 && err <= tolerance(ctx), "%s: error %.3g > %.3g", a->label, err,
          tolerance(ctx));
    /* the host path once, on the first matrix that is not all zero (masked fibres are) */
    for (size_t s = 0; ctx->use_fp64 && s < S; s++) {
        const float *r = a->rdata + s * a->ndiag * n;
        size_t nz = 0;
        for (size_t i = 0; i < a->ndiag * n; i++)
            nz += r[i] != 0;
        if (nz) {
            check_host(r, a->ndiag, n, a->label);
            break;
        }
    }
    free(index), free(models);
}

static int is_desi_file(const char *name)
{
    size_t len = strlen(name);
    return (strncmp(name, "coadd-", 6) == 0 || strncmp(name, "spectra-", 8) == 0) && len > 5 &&
           strcmp(name + len - 5, ".fits") == 0;
}

/* Returns 0 when the shared data directory is absent (nothing checked), else 1. */
static int check_desi(struct rvs_context *ctx)
{
    char root[1024], dir[1100];
    const char *env = getenv("RVSFIT_TEST_SHARED_DATA"), *top = getenv("top_srcdir");
    if (env && *env)
        snprintf(root, sizeof root, "%s", env);
    else
        snprintf(root, sizeof root, "%s/../shared/data", top ? top : ".");
    struct stat st;
    if (stat(root, &st) != 0) {
        printf("resolution             %s: no shared data at %s; real DESI matrices skipped\n",
               ctx->use_fp64 ? "fp64" : "fp32", root);
        return 0;
    }
    snprintf(dir, sizeof dir, "%s/desi-edr", root);
    DIR *d = opendir(dir);
    CHECK(d != NULL, "shared data present but %s cannot be opened", dir);
    if (!d)
        return 1;
    size_t arms = 0;
    struct dirent *ent;
    char *names[64];
    size_t count = 0;
    while ((ent = readdir(d)) && count < 64)
        if (is_desi_file(ent->d_name))
            names[count++] = strdup(ent->d_name);
    closedir(d);
    for (size_t f = 0; f < count; f++) {
        for (const char *arm = "BRZ"; *arm; arm++) {
            char path[1400], a[2] = {*arm, 0};
            snprintf(path, sizeof path, "%s/%s", dir, names[f]);
            struct desi_arm da = {0};
            int status = read_arm(path, a, &da);
            CHECK(status == 0, "%s: cannot read %s_RESOLUTION (cfitsio %d)", path, a, status);
            if (status == 0) {
                CHECK(da.ndiag % 2 == 1, "%s: %zu diagonals", da.label, da.ndiag);
                check_desi_arm(ctx, &da);
                arms++;
            }
            free(da.rdata);
        }
        free(names[f]);
    }
    CHECK(arms > 0, "no DESI resolution matrices found under %s", dir);
    return 1;
}

static int run_all(struct rvs_context *ctx)
{
    char detail[256] = "";
    int status = rvs_resolution_selftest(ctx, detail, sizeof detail);
    CHECK(status == RVS_OK, "self-test: %s %s", rvs_strerror(status), detail);
    printf("resolution             %s self-test: %s\n", ctx->use_fp64 ? "fp64" : "fp32",
           status == RVS_OK ? "ok" : detail);
    check_arguments(ctx);
    check_bad_index(ctx);
    check_grid(ctx);
    return check_desi(ctx);
}

/* Both kernels (the tiled one GPUs use, the vector blocks of CPU devices) through every case. */
static int run_kernels(struct rvs_context *ctx)
{
    int have_data = 1, saved = ctx->vector_blocks;
    for (int blocks = 0; blocks < 2; blocks++) {
        ctx->vector_blocks = blocks;
        printf("resolution             kernel %s\n", blocks ? "blocks" : "tiled");
        have_data &= run_all(ctx);
    }
    ctx->vector_blocks = saved;
    return have_data;
}

int main(void)
{
    check_host_random();
    struct rvs_context *ctx = test_context(1);
    int have_data = run_kernels(ctx);
    int was_fp64 = ctx->use_fp64;
    rvs_context_destroy(&ctx);
    setenv("RVSFIT_CL_FP32", "1", 1);
    ctx = test_context(1);
    CHECK(!ctx->use_fp64, "RVSFIT_CL_FP32=1 did not force fp32");
    if (was_fp64) /* without fp64 the first pass already was fp32 */
        run_kernels(ctx);
    rvs_context_destroy(&ctx);
    int rc = test_finish("test_resolution");
    if (rc == 0 && !have_data) {
        printf("test_resolution: exit 77: the real-data part could not run\n");
        return TEST_SKIP;
    }
    return rc;
}
