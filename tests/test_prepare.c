/* test_prepare.c: data preparation against an independent numpy port of rvspecfit's
 * get_specdata (tests/desi_craft.py prepare): dichroic on/off, bad runs at both ends and inside,
 * non-finite values, σ clamping, all-masked, zero median (both fallbacks), all-NaN, zero ivar,
 * and the --resolution-matrix path (deconvolution solved by numpy.linalg.solve there, by our LU
 * here; edge masking and renormalisation). Also hand cases of the interpolation, the batch API
 * and the BAD_SPECTRUM flag. Tolerances: 2e-6 relative on spec/σ (rvspecfit keeps float32),
 * 1e-9 relative + 1e-12 absolute on the resolution matrix (both in double). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "desi_testutil.h"
#include "rvsfit.h"
#include "testutil.h"

static void test_interpolation(void)
{
    double in[8] = {1, 2, 3, 4, 5, 6, 7, 8}, out[8];
    unsigned char bad[8] = {1, 1, 0, 0, 1, 1, 0, 1};
    rvs_prepare_interpolate_bad(in, bad, 8, out);
    /* start run takes in[2]; 4..5 lie on the line 4 -> 7; the end run takes in[6] */
    double want[8] = {3, 3, 3, 4, 5, 6, 7, 7};
    for (int i = 0; i < 8; i++)
        CHECK(fabs(out[i] - want[i]) < 1e-15, "interp[%d] = %g, want %g", i, out[i], want[i]);
    double in2[5] = {0, 10, 20, 30, 0};
    unsigned char bad2[5] = {0, 1, 1, 1, 0};
    rvs_prepare_interpolate_bad(in2, bad2, 5, in2); /* in place */
    CHECK(in2[1] == 0 && in2[2] == 0 && in2[3] == 0, "interior run between equal ends");
    unsigned char all[3] = {1, 1, 1};
    double in3[3] = {1, 2, 3};
    rvs_prepare_interpolate_bad(in3, all, 3, in3);
    CHECK(in3[0] == 1 && in3[2] == 3, "all bad: unchanged");
}

struct arm_case {
    char name[64];
    size_t n, ndiag;
    int dichroic, use_res, used;
    double sigma0;
};

static void test_reference(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/index.txt", dir);
    FILE *idx = fopen(path, "r");
    CHECK(idx != NULL, "index");
    if (!idx)
        return;
    struct arm_case c;
    int ncases = 0;
    while (fscanf(idx, "%63s %zu %zu %d %d %lf %d", c.name, &c.n, &c.ndiag, &c.dichroic,
                  &c.use_res, &c.sigma0, &c.used) == 7) {
        ncases++;
        size_t n = c.n, w = c.ndiag, size = 0;
        snprintf(path, sizeof path, "%s/%s.in", dir, c.name);
        char *in = desi_test_slurp(path, &size);
        CHECK(size == n * 8 + n * 12 + w * n * 4, "%s: input size", c.name);
        const double *wave = (const double *)(void *)in;
        const float *flux = (const float *)(void *)(wave + n);
        const float *ivar = flux + n;
        const uint32_t *mask = (const uint32_t *)(void *)(ivar + n);
        const float *res = (const float *)(void *)(mask + n);
        struct rvs_prepare_options o;
        rvs_prepare_options_init(&o);
        o.mask_dichroic = c.dichroic;
        o.use_resolution = c.use_res;
        double *spec = calloc(n, sizeof *spec), *espec = calloc(n, sizeof *espec);
        double *rout = calloc(w * n, sizeof *rout);
        unsigned char *bad = calloc(n, 1);
        int used = -1, clamped = -1;
        int st = rvs_prepare_arm(wave, n, flux, ivar, mask, res, w, c.sigma0, &o, spec, espec,
                                 bad, rout, &used, &clamped);
        CHECK(st == RVS_OK, "%s: %s", c.name, rvs_strerror(st));
        CHECK(used == c.used, "%s: used %d, reference %d", c.name, used, c.used);
        if (used && c.used) {
            snprintf(path, sizeof path, "%s/%s.out", dir, c.name);
            char *out = desi_test_slurp(path, &size);
            const double *rspec = (const double *)(void *)out;
            const double *respec = rspec + n;
            const unsigned char *rbad = (const unsigned char *)(respec + n);
            /* the reference's R follows n flag bytes: not 8-byte aligned, read by memcpy */
            const unsigned char *rres_bytes = rbad + n;
            CHECK(size == n * 17 + (c.use_res ? w * n * 8 : 0), "%s: reference size", c.name);
            double e_spec = 0, e_espec = 0, e_res = 0;
            size_t nbad = 0, badbits = 0;
            for (size_t p = 0; p < n; p++) {
                double es = fabs(spec[p] - rspec[p]) / (fabs(rspec[p]) + 1e-30);
                double ee = fabs(espec[p] - respec[p]) / fabs(respec[p]);
                e_spec = es > e_spec ? es : e_spec;
                e_espec = ee > e_espec ? ee : e_espec;
                badbits += bad[p] != rbad[p];
                nbad += bad[p];
                CHECK(test_near(spec[p], rspec[p], 1e-30, 2e-6), "%s: spec[%zu] %.9g vs %.9g",
                      c.name, p, spec[p], rspec[p]);
                CHECK(test_near(espec[p], respec[p], 0, 2e-6), "%s: espec[%zu] %.9g vs %.9g",
                      c.name, p, espec[p], respec[p]);
            }
            CHECK(badbits == 0, "%s: %zu bad flags differ", c.name, badbits);
            if (c.use_res) {
                for (size_t k = 0; k < w * n; k++) {
                    double rr;
                    memcpy(&rr, rres_bytes + k * sizeof rr, sizeof rr);
                    double e = fabs(rout[k] - rr);
                    e_res = e > e_res ? e : e_res;
                    CHECK(test_near(rout[k], rr, 1e-12, 1e-9), "%s: R[%zu][%zu] %.15g vs "
                          "%.15g", c.name, k / n, k % n, rout[k], rr);
                }
            }
            printf("%-16s n=%zu bad=%zu clamped=%d  max rel err spec %.2e espec %.2e"
                   "  max abs err R %.2e\n",
                   c.name, n, nbad, clamped, e_spec, e_espec, e_res);
            if (strcmp(c.name, "clamp") == 0)
                CHECK(clamped == 1, "clamp: more than 1%% clamped is reported");
            if (strcmp(c.name, "clean") == 0) {
                CHECK(clamped == 0, "clean: nothing clamped");
                size_t ndic = 0;
                for (size_t p = 0; p < n; p++)
                    ndic += bad[p] && wave[p] > 4300 && wave[p] < 4450;
                CHECK(ndic > 100 && nbad == ndic, "clean: only the dichroic is bad (%zu)", ndic);
            }
            free(out);
        } else {
            printf("%-16s n=%zu skipped (reference agrees)\n", c.name, n);
        }
        free(in);
        free(spec);
        free(espec);
        free(rout);
        free(bad);
    }
    fclose(idx);
    CHECK(ncases == 13, "%d reference cases", ncases);
}

/* The batch API on a hand-made batch: target 1 has every arm unusable -> BAD_SPECTRUM. */
static void test_batch(void)
{
    enum { NT = 3, NW = 40 };
    struct rvs_desi_spectra sp;
    rvs_desi_spectra_init(&sp);
    sp.nrows = NT;
    sp.arms = 3; /* b, r */
    double wb[NW], wr[NW];
    for (int a = 0; a < 2; a++) {
        sp.nwave[a] = NW;
        sp.flux[a] = calloc(NT * NW, sizeof(float));
        sp.ivar[a] = calloc(NT * NW, sizeof(float));
        sp.mask[a] = calloc(NT * NW, sizeof(uint32_t));
        for (int t = 0; t < NT; t++)
            for (int p = 0; p < NW; p++) {
                sp.flux[a][t * NW + p] = (float)(5 + p % 3);
                sp.ivar[a][t * NW + p] = 1.0f;
            }
    }
    for (int p = 0; p < NW; p++) {
        wb[p] = 4000 + p;
        wr[p] = 6000 + p;
        sp.mask[0][1 * NW + p] = 1;      /* target 1, b: all masked */
        sp.flux[1][1 * NW + p] = NAN;    /* target 1, r: no finite flux */
        sp.ivar[1][2 * NW + p] = 0.0f;   /* target 2, r: zero ivar -> skipped arm */
    }
    const double *waves[3] = {wb, wr, NULL};
    struct rvs_prepare_options o;
    rvs_prepare_options_init(&o);
    struct rvs_prepared pr;
    rvs_prepared_init(&pr);
    CHECK(rvs_prepare_batch(&sp, waves, &o, &pr) == RVS_OK, "batch");
    CHECK(pr.ntargets == NT && !pr.bad_spectrum[0] && pr.bad_spectrum[1] && !pr.bad_spectrum[2],
          "BAD_SPECTRUM flags %d %d %d", pr.bad_spectrum[0], pr.bad_spectrum[1],
          pr.bad_spectrum[2]);
    CHECK(pr.used[0][0] && pr.used[1][0] && pr.used[0][2] && !pr.used[1][2],
          "per-arm use flags");
    CHECK(pr.spec[0][2 * NW + 3] == sp.flux[0][2 * NW + 3] && pr.espec[0][5] == 1.0,
          "batch values");
    o.use_resolution = 1;
    CHECK(rvs_prepare_batch(&sp, waves, &o, &pr) == RVS_ERR_INVALID_ARGUMENT,
          "resolution asked without RESOLUTION data");
    rvs_prepared_free(&pr);
    rvs_desi_spectra_free(&sp);
}

/* Bad arguments to the resolution preparation are errors, not crashes. */
static void test_resolution_args(void)
{
    float res[4 * 10] = {0};
    double out[4 * 10];
    CHECK(rvs_prepare_resolution(res, 4, 10, 0.8, 0.5, out) == RVS_ERR_INVALID_ARGUMENT,
          "even ndiag");
    CHECK(rvs_prepare_resolution(res, 3, 2, 0.8, 0.5, out) == RVS_ERR_INVALID_ARGUMENT,
          "too few pixels");
    CHECK(rvs_prepare_resolution(res, 3, 10, 0.8, 0.0, out) == RVS_ERR_INVALID_ARGUMENT,
          "zero sigma0");
    /* A delta-function R "deconvolved" by a narrow Gaussian: rvspecfit's Gaussian matrix holds
     * the density 1/(sqrt(2 pi) s) exp(-x^2/2s^2), not unit sums, so with s = 0.2 pixels (off-
     * diagonal terms e^-12.5) the centre becomes sqrt(2 pi) * 0.2 = 0.50133. */
    float delta[3 * 10];
    for (int j = 0; j < 10; j++) {
        delta[0 * 10 + j] = 0;
        delta[1 * 10 + j] = 1;
        delta[2 * 10 + j] = 0;
    }
    CHECK(rvs_prepare_resolution(delta, 3, 10, 1.0, 0.2, out) == RVS_OK, "delta R");
    CHECK(fabs(out[1 * 10 + 5] - sqrt(2 * M_PI) * 0.2) < 1e-4, "delta centre: %g", out[15]);
    CHECK(fabs(out[0 * 10 + 5]) < 1e-4 && fabs(out[2 * 10 + 5]) < 1e-4, "delta sides");
}


/* Rows of R no wider than the templates' LSF are counted (they cannot be deconvolved): Gaussian
 * rows of sigma 1 pixel (0.8 A) against a template sigma0 of 0.5 A (none), 0.9 A (all interior
 * rows), and a per-pixel sigma0 of 0.5 A on the first half and 0.9 A on the second (about half).
 * A constant per-pixel sigma0 must give exactly what the scalar path gives. */
static void test_resolution_narrow(void)
{
    enum { W = 11, N = 200, H = W / 2 };
    static float res[W * N];
    static double out1[W * N], out2[W * N], sig[N];
    for (int j = 0; j < N; j++) {
        double sum = 0, row[W];
        for (int d = -H; d <= H; d++)
            sum += row[d + H] = exp(-0.5 * d * d);
        /* DIA: R[i, j] = data[H - (j - i)][j]; row i's offset d sits at column i + d */
        for (int d = -H; d <= H; d++)
            res[(H - d) * N + j] = (float)(row[d + H] / sum);
    }
    size_t narrow = 99;
    CHECK(rvs_prepare_resolution_lsf(res, W, N, 0.8, NULL, 0.5, out1, &narrow) == RVS_OK &&
              narrow == 0,
          "sigma0 0.5 A under R's 0.8 A: %zu narrow rows", narrow);
    CHECK(rvs_prepare_resolution_lsf(res, W, N, 0.8, NULL, 0.9, out1, &narrow) == RVS_OK &&
              narrow == N - 2 * H,
          "sigma0 0.9 A over R's 0.8 A: %zu narrow rows of %d", narrow, N - 2 * H);
    for (int i = 0; i < N; i++)
        sig[i] = i < N / 2 ? 0.5 : 0.9;
    CHECK(rvs_prepare_resolution_lsf(res, W, N, 0.8, sig, 0.5, out1, &narrow) == RVS_OK &&
              narrow == N / 2 - H,
          "half the rows narrow: %zu", narrow);
    for (int i = 0; i < N; i++)
        sig[i] = 0.6;
    CHECK(rvs_prepare_resolution_lsf(res, W, N, 0.8, sig, 0.1, out1, NULL) == RVS_OK &&
              rvs_prepare_resolution(res, W, N, 0.8, 0.6, out2) == RVS_OK &&
              memcmp(out1, out2, sizeof out1) == 0,
          "a constant per-pixel sigma0 differs from the scalar path");
    sig[7] = -1;
    CHECK(rvs_prepare_resolution_lsf(res, W, N, 0.8, sig, 0.6, out1, NULL) ==
              RVS_ERR_INVALID_ARGUMENT,
          "a negative per-pixel sigma0 was accepted");
}

int main(void)
{
    char dir[2048];
    snprintf(dir, sizeof dir, "%s/crafted", desi_test_scratch_dir("test_prepare"));
    desi_test_craft("prepare", dir, NULL);
    test_interpolation();
    test_reference(dir);
    test_batch();
    test_resolution_args();
    test_resolution_narrow();
    return test_finish("test_prepare");
}
