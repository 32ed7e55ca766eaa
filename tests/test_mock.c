/* test_mock.c: rvsfit-cl-mock (src/mock/) on rvspecfit's fixture library converted with
 * tools/rvs-import (a version-1 file: its LSF unknown) and rewritten with its LSF recorded
 * (Gaussian FWHM 1.55, 1.55, 1.8 Å: how the fixture was made, tests/../shared/data/rvspecfit-templ/
 * README.md); the main mock uses --lsf-scale 1.2, because the fixture's z LSF (1.8 Å) is wider
 * than the mock's R at 7520 Å (1.83 Å) for fibres with an LSF factor below 0.98:
 *  - a 12-target mock read back with the project's DESI reader (rvs_desi_open/read_spectra) and
 *    independently with astropy (tests/mock_check.py dump) is bit-identical to what the
 *    generator holds in memory (wavelengths, flux, ivar, mask, resolution, TARGETID, S/N);
 *  - the truth table holds the generator's values (EBV and CONTMISS included); the coadd, truth
 *    and redrock files agree (mock_check.py check: TARGETIDs, Z = VRAD/c, numpy get_sns = SCORES
 *    within 1e-6, MOCKLSFM/MOCKCONT, EBV in [0, 0.5], CONTMISS finite);
 *  - same seed -> identical bytes except CHECKSUM/DATASUM cards (in-process and through the
 *    command); another seed -> other data;
 *  - measured S/N per arm within 10% of the requested S/N (the dichroic region and masks bias
 *    b low by a few per cent); chi^2 of (flux - noiseless model) * sqrt(ivar) per pixel over
 *    unmasked pixels without unflagged cosmics within 0.02 of 1 (4 sigma at ~9e4 pixels);
 *  - resolution rows sum to 1 (1e-6) and equal the documented Gaussian (1e-7), and their second
 *    moment is the LSF sigma^2 within 3% (sampling and truncation at +-5 pixels);
 *  - the realistic continuum: E(B-V) in [0, 0.5], CONTMISS (what rvsfit-cl's continuum basis
 *    misses) finite and below 0.5 %;
 *  - the total LSF: libraries crafted here whose emulator returns one absorption line per arm
 *    whatever the parameters (all weights 0, PC_B = ln(1 - 0.5 exp(-(l - l0)^2 / (2 s^2))),
 *    declared LSF Gaussian s): with vrad = vsini = 0 the line's width in the noiseless model
 *    (sqrt of the second moment of 1 - model/continuum within +-12 Å) is R's sigma at l0 within
 *    LSF_RTOL for s = 0.3 Å (sigma_K ~ 0.7 Å) and s = 0.72 Å (sigma_K 0.2-0.4 Å, below one
 *    template pixel) and a table LSF (0.3 Å at 3500 Å to 0.7 Å at 9900 Å), and sqrt(sigma_R^2 +
 *    s^2) with --lsf-on-top; its equivalent width is kept within EW_RTOL;
 *  - refusals (exit 1, no file, the message names the file, the arm and what to do): a library
 *    whose LSF (s = 1 Å) is wider than R, and one whose LSF is unknown (the imported fixture);
 *  - --params CSV values reach the truth table; command-line errors exit 2 or 1 with messages.
 * Needs the fixture ($RVSFIT_TEST_DATA or $top_srcdir/../shared/data), $PYTHON3 with numpy, h5py
 * and astropy, and an OpenCL device; skips (77) only when one of them is absent. */
#include <config.h>

#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>

#include <fitsio.h>

#include "mock/mock.h"
#include "testutil.h"

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

#define NT 12
#define SNR_RTOL 0.10
#define CHI2_TOL 0.02
#define ROWSUM_TOL 1e-6
#define ROW_TOL 1e-7
#define LSF_RTOL 0.005  /* line width vs sigma_R (or sqrt(sigma_R^2 + s^2)): expected ~1e-4 */
#define EW_RTOL 0.001   /* the line's equivalent width against 0.5 s sqrt(2 pi) */
#define CONTMISS_MAX 0.005
#define MAIN_LSF_SCALE 1.2
#define FWHM_PER_SIGMA 2.3548200450309493

static char scratch[4096], fixture[4096], python[1024], srcdir[4096], libdir[4200];
/* libv1: the imported fixture (LSF unknown); libdir: the same with its LSF recorded; line
 * libraries with one absorption line per arm and a declared Gaussian LSF of 0.3, 0.72, 1.0 Å */
static char libv1[4200], libline03[4200], libline072[4200], libline10[4200], liblinetab[4200];
static const char *const setups[RVS_DESI_NARMS] = {"desi_b", "desi_r", "desi_z"};
static const double line_center[RVS_DESI_NARMS] = {4702.33, 6650.71, 8612.94};
static const char *mock_cmd;

static void fmt(char *buf, size_t size, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

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
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 255;
}

static void setup(void)
{
    const char *top_src = getenv("top_srcdir"), *top_build = getenv("top_builddir");
    const char *data = getenv("RVSFIT_TEST_DATA"), *py = getenv("PYTHON3");
    struct stat st;
    char ref[4400], cmd[16384];
    fmt(srcdir, sizeof srcdir, "%s", top_src ? top_src : "..");
    fixture[0] = 0;
    if (data && data[0]) {
        fmt(ref, sizeof ref, "%s/rvspecfit-templ/reference_evals.fits", data);
        if (stat(ref, &st) == 0)
            fmt(fixture, sizeof fixture, "%s/rvspecfit-templ", data);
    }
    if (!fixture[0]) {
        fmt(ref, sizeof ref, "%s/../shared/data/rvspecfit-templ/reference_evals.fits", srcdir);
        if (stat(ref, &st) == 0)
            fmt(fixture, sizeof fixture, "%s/../shared/data/rvspecfit-templ", srcdir);
    }
    if (!fixture[0]) {
        fprintf(stderr, "SKIP: rvspecfit fixture library not found; set RVSFIT_TEST_DATA\n");
        exit(TEST_SKIP);
    }
    fmt(python, sizeof python, "%s", py && py[0] ? py : "/usr/bin/python3");
    fmt(cmd, sizeof cmd, "'%s' -c 'import numpy, h5py, astropy' 2>/dev/null", python);
    if (system(cmd) != 0) {
        /* tools/install-deps installs them: their absence is a broken install, not a skip */
        fprintf(stderr, "FAIL: %s lacks numpy/h5py/astropy; run tools/install-deps\n", python);
        exit(1);
    }
    mock_cmd = getenv("RVSFIT_CL_MOCK");
    if (!mock_cmd)
        mock_cmd = "./rvsfit-cl-mock";
    fmt(scratch, sizeof scratch, "%s/tests/test_mock.tmp", top_build ? top_build : ".");
    fmt(libv1, sizeof libv1, "%s/lib-v1", scratch);
    fmt(libdir, sizeof libdir, "%s/lib", scratch);
    fmt(libline03, sizeof libline03, "%s/lib-line03", scratch);
    fmt(libline072, sizeof libline072, "%s/lib-line072", scratch);
    fmt(libline10, sizeof libline10, "%s/lib-line10", scratch);
    fmt(liblinetab, sizeof liblinetab, "%s/lib-linetab", scratch);
    fmt(cmd, sizeof cmd,
        "rm -rf '%s' && mkdir -p '%s' && '%s/tools/rvs-import' '%s' '%s' >'%s/import.log' 2>&1",
        scratch, libv1, top_build ? top_build : ".", fixture, libv1, scratch);
    if (run_cmd(cmd) != 0) {
        fprintf(stderr, "FAIL: rvs-import could not convert the fixture (%s/import.log)\n",
                scratch);
        exit(1);
    }
}

/* ------------------------------------------------------------------ crafted libraries */

/* An LSF to record: constant sigma[a] per arm, or (nnodes >= 2) one table for every arm. */
struct test_lsf {
    double sigma[RVS_DESI_NARMS];
    size_t nnodes;
    const double *wave, *node_sigma;
};

/* Rewrites the imported fixture into dir with the LSF `lsf`; with `line` the network is replaced
 * by one that returns one absorption line of depth 0.5 at line_center[a] whatever the
 * parameters, its Gaussian sigma s the recorded LSF's at line_center[a]: every weight and bias 0
 * but the output layer's bias PC_B = ln(1 - 0.5 exp(-(l - l0)^2 / (2 s^2))). The PARAMS mapping
 * and the hulls stay the fixture's. */
static void write_library(const char *dir, const struct test_lsf *lsf, int line)
{
    char in[4400], out[4400];
    mkdir(dir, 0777);
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        struct rvs_library_arm *arm = NULL;
        fmt(in, sizeof in, "%s/rvsfit_%s.fits", libv1, setups[a]);
        fmt(out, sizeof out, "%s/rvsfit_%s.fits", dir, setups[a]);
        int status = rvs_library_open_file(in, &arm);
        if (status != RVS_OK) {
            fprintf(stderr, "FAIL: cannot open %s: %s\n", in, rvs_strerror(status));
            exit(1);
        }
        struct rvs_library_content c = *rvs_library_content(arm);
        c.lsf.kind = RVS_LIBRARY_LSF_GAUSSIAN;
        c.lsf.nnodes = lsf->nnodes;
        c.lsf.node_wave = lsf->wave;
        c.lsf.node_sigma = lsf->node_sigma;
        c.lsf.sigma = lsf->nnodes ? lsf->node_sigma[lsf->nnodes / 2] : lsf->sigma[a];
        c.lsf.resolution_matrix = 0;
        float *zeros = NULL, *bias = NULL;
        if (line) {
            double s = rvs_library_lsf_sigma_at(&c.lsf, line_center[a]);
            size_t big = c.nn.width * (c.nn.width > c.nn.indim ? c.nn.width : c.nn.indim);
            if (c.nn.npix * c.nn.npc > big)
                big = c.nn.npix * c.nn.npc;
            zeros = calloc(big, sizeof *zeros);
            bias = malloc(c.nn.npix * sizeof *bias);
            if (!zeros || !bias) {
                fprintf(stderr, "FAIL: out of memory\n");
                exit(1);
            }
            for (size_t i = 0; i <= c.nn.nlayers + 1; i++)
                c.nn.lin[i].weight = c.nn.lin[i].bias = zeros;
            c.nn.pc.weight = zeros;
            for (size_t j = 0; j < c.nn.npix; j++) {
                double d = (c.wave[j] - line_center[a]) / s;
                bias[j] = (float)log(1 - 0.5 * exp(-0.5 * d * d));
            }
            c.nn.pc.bias = bias;
        }
        status = rvs_library_write_arm(out, &c, 1);
        rvs_library_close(&arm);
        free(zeros);
        free(bias);
        if (status != RVS_OK) {
            fprintf(stderr, "FAIL: cannot write %s: %s\n", out, rvs_strerror(status));
            exit(1);
        }
    }
}

/* A table LSF rising from 0.3 Å (3500 Å) to 0.7 Å (9900 Å): 0.375, 0.497, 0.620 Å at the lines */
static const double tab_wave[2] = {3500, 9900}, tab_sigma[2] = {0.3, 0.7};

static void make_libraries(void)
{
    /* the fixture's own LSF (rvs_make_interpol --resol_func x/1.55,x/1.55,x/1.8) */
    const struct test_lsf fixture_lsf = {
        {1.55 / FWHM_PER_SIGMA, 1.55 / FWHM_PER_SIGMA, 1.8 / FWHM_PER_SIGMA}, 0, NULL, NULL};
    const struct test_lsf s03 = {{0.3, 0.3, 0.3}, 0, NULL, NULL},
                          s072 = {{0.72, 0.72, 0.72}, 0, NULL, NULL},
                          s10 = {{1, 1, 1}, 0, NULL, NULL},
                          tab = {{0, 0, 0}, 2, tab_wave, tab_sigma};
    write_library(libdir, &fixture_lsf, 0);
    write_library(libline03, &s03, 1);
    write_library(libline072, &s072, 1);
    write_library(libline10, &s10, 1);
    write_library(liblinetab, &tab, 1);
}

static struct rvs_mock_options base_options(void)
{
    struct rvs_mock_options o;
    rvs_mock_options_init(&o);
    o.library_dir = libdir;
    o.ntargets = NT;
    o.seed = 7;
    o.snr_lo = 10;
    o.snr_hi = 80;
    o.vsini_hi = 40;
    o.lsf_scale = MAIN_LSF_SCALE;
    return o;
}

/* ------------------------------------------------------------------ read back */

static void check_reader(const struct rvs_mock *m, const char *path)
{
    struct rvs_desi_file *f = NULL;
    struct rvs_desi_spectra sp;
    rvs_desi_spectra_init(&sp);
    int status = rvs_desi_open(path, RVS_DESI_ARMS_ALL, &f);
    CHECK(status == RVS_OK, "rvs_desi_open(%s): %s", path, rvs_strerror(status));
    if (!f)
        return;
    CHECK(rvs_desi_nrows(f) == m->n && rvs_desi_is_coadd(f), "rows %zu, coadd %d",
          rvs_desi_nrows(f), rvs_desi_is_coadd(f));
    size_t rows[NT * 4];
    for (size_t i = 0; i < m->n; i++)
        rows[i] = i;
    status = rvs_desi_read_spectra(f, rows, m->n, RVS_DESI_READ_RESOLUTION, &sp);
    CHECK(status == RVS_OK, "read spectra: %s", rvs_strerror(status));
    size_t ndiff = 0;
    for (int a = 0; a < RVS_DESI_NARMS && status == RVS_OK; a++) {
        size_t nw = m->nwave[a], n = m->n;
        CHECK(rvs_desi_nwave(f, a) == nw && rvs_desi_ndiag(f, a) == RVS_MOCK_NDIAG,
              "arm %d: %zu px, %zu diagonals", a, rvs_desi_nwave(f, a), rvs_desi_ndiag(f, a));
        CHECK(memcmp(rvs_desi_wavelength(f, a), m->wave[a], nw * 8) == 0, "arm %d wavelength", a);
        ndiff += memcmp(sp.flux[a], m->flux[a], n * nw * 4) != 0;
        ndiff += memcmp(sp.ivar[a], m->ivar[a], n * nw * 4) != 0;
        ndiff += memcmp(sp.mask[a], m->mask[a], n * nw * 4) != 0;
        ndiff += memcmp(sp.resolution[a], m->resolution[a], n * RVS_MOCK_NDIAG * nw * 4) != 0;
        const double *sn = rvs_desi_scores_sn(f, a);
        for (size_t t = 0; sn && t < n; t++)
            CHECK(sn[t] == (double)(float)m->t[t].sn[a], "SCORES S/N arm %d row %zu", a, t);
        CHECK(sn != NULL, "no SCORES S/N for arm %d", a);
    }
    CHECK(ndiff == 0, "%zu arrays differ between the DESI reader and memory", ndiff);
    const struct rvs_desi_fibermap *fm = rvs_desi_fibermap(f);
    for (size_t t = 0; t < m->n; t++)
        CHECK(fm->targetid[t] == m->t[t].targetid && fm->fiberstatus[t] == 0 &&
                  strcmp(fm->objtype + t * (fm->objtype_width + 1), "TGT") == 0 &&
                  fm->desi_target && ((fm->desi_target[t] >> 61) & 1),
              "FIBERMAP row %zu", t);
    const struct rvs_desi_keyword *kw = rvs_desi_keyword(f, "SPGRP");
    CHECK(kw && kw->present && strcmp(kw->value, "healpix") == 0, "SPGRP keyword");
    kw = rvs_desi_keyword(f, "HPXPIXEL");
    CHECK(kw && kw->present && strcmp(kw->value, "10000") == 0, "HPXPIXEL keyword");
    printf("DESI reader: %zu rows x 3 arms, flux/ivar/mask/resolution/wavelength/S/N bit-identical "
           "to memory (%zu differing arrays)\n",
           m->n, ndiff);
    rvs_desi_spectra_free(&sp);
    rvs_desi_close(&f);
}

/* astropy's independent read, compared byte for byte (little-endian host) */
static void check_astropy(const struct rvs_mock *m, const char *path)
{
    char bin[4400], cmd[16384];
    fmt(bin, sizeof bin, "%s/astropy.bin", scratch);
    fmt(cmd, sizeof cmd, "'%s' '%s/tests/mock_check.py' dump '%s' '%s'", python, srcdir, path,
        bin);
    CHECK(run_cmd(cmd) == 0, "mock_check.py dump failed (astropy cannot open it or checksums)");
    FILE *fp = fopen(bin, "rb");
    CHECK(fp != NULL, "no %s", bin);
    if (!fp)
        return;
    size_t ndiff = 0;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        size_t nw = m->nwave[a], n = m->n;
        const void *mine[5] = {m->wave[a], m->flux[a], m->ivar[a], m->mask[a], m->resolution[a]};
        size_t bytes[5] = {nw * 8, n * nw * 4, n * nw * 4, n * nw * 4,
                           n * RVS_MOCK_NDIAG * nw * 4};
        for (int k = 0; k < 5; k++) {
            void *buf = malloc(bytes[k]);
            size_t got = fread(buf, 1, bytes[k], fp);
            ndiff += got != bytes[k] || memcmp(buf, mine[k], bytes[k]) != 0;
            free(buf);
        }
    }
    int64_t tid[NT * 4];
    float sn[NT * 4];
    ndiff += fread(tid, 8, m->n, fp) != m->n;
    for (size_t t = 0; t < m->n; t++)
        ndiff += tid[t] != m->t[t].targetid;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        ndiff += fread(sn, 4, m->n, fp) != m->n;
        for (size_t t = 0; t < m->n; t++)
            ndiff += sn[t] != (float)m->t[t].sn[a];
    }
    fclose(fp);
    printf("astropy: %zu differences from memory\n", ndiff);
    CHECK(ndiff == 0, "astropy read differs from memory in %zu arrays/values", ndiff);
}

static void check_truth(const struct rvs_mock *m, const char *path)
{
    int fst = 0, anynul = 0, col = 0;
    fitsfile *f = NULL;
    fits_open_diskfile(&f, path, READONLY, &fst);
    fits_movnam_hdu(f, BINARY_TBL, "TRUTH", 0, &fst);
    static const char *const names[] = {"TEFF", "LOGG", "FEH", "ALPHAFE", "VRAD", "VSINI", "SNR",
                                        "LSFFAC"};
    size_t bad = 0;
    for (int k = 0; k < 8; k++) {
        double v[NT * 4];
        fits_get_colnum(f, CASESEN, (char *)names[k], &col, &fst);
        fits_read_col(f, TDOUBLE, col, 1, 1, (LONGLONG)m->n, NULL, v, &anynul, &fst);
        for (size_t t = 0; t < m->n && fst == 0; t++) {
            const struct rvs_mock_target *g = &m->t[t];
            double want = k < 4 ? g->theta[k] : k == 4 ? g->vrad : k == 5 ? g->vsini
                                              : k == 6 ? g->snr : g->lsf_factor;
            bad += v[t] != want;
        }
    }
    {
        double ebv[NT * 4], cm[NT * 4 * 3];
        fits_get_colnum(f, CASESEN, "EBV", &col, &fst);
        fits_read_col(f, TDOUBLE, col, 1, 1, (LONGLONG)m->n, NULL, ebv, &anynul, &fst);
        fits_get_colnum(f, CASESEN, "CONTMISS", &col, &fst);
        fits_read_col(f, TDOUBLE, col, 1, 1, (LONGLONG)m->n * 3, NULL, cm, &anynul, &fst);
        for (size_t t = 0; t < m->n && fst == 0; t++) {
            bad += ebv[t] != m->t[t].ebv;
            for (int a = 0; a < RVS_DESI_NARMS; a++)
                bad += cm[t * 3 + a] != m->t[t].contmiss[a];
        }
    }
    long long tid[NT * 4];
    fits_get_colnum(f, CASESEN, "TARGETID", &col, &fst);
    fits_read_col(f, TLONGLONG, col, 1, 1, (LONGLONG)m->n, NULL, tid, &anynul, &fst);
    for (size_t t = 0; t < m->n && fst == 0; t++)
        bad += tid[t] != m->t[t].targetid;
    unsigned long long seed = 0;
    fits_movabs_hdu(f, 1, NULL, &fst);
    fits_read_key(f, TULONGLONG, "MOCKSEED", &seed, NULL, &fst);
    fits_close_file(f, &fst);
    CHECK(fst == 0, "reading the truth table: cfitsio status %d", fst);
    CHECK(bad == 0 && seed == m->opt.seed, "truth table: %zu values differ, seed %llu", bad, seed);
    printf("truth table: %zu targets x 11 columns equal to memory (%zu differ), seed %llu\n", m->n,
           bad, seed);
}

/* ------------------------------------------------------------------ statistics */

static void check_statistics(const struct rvs_mock *m)
{
    double worst = 0, worst_arm[3] = {0, 0, 0}, chi2 = 0;
    size_t npix = 0;
    for (size_t t = 0; t < m->n; t++)
        for (int a = 0; a < RVS_DESI_NARMS; a++) {
            double r = m->t[t].sn[a] / m->t[t].snr - 1;
            if (fabs(r) > fabs(worst_arm[a]))
                worst_arm[a] = r;
            worst = fmax(worst, fabs(r));
            size_t nw = m->nwave[a];
            for (size_t i = 0; i < nw; i++) {
                size_t k = t * nw + i;
                if (m->ivar[a][k] > 0 && m->mask[a][k] == 0 && !m->cosmic_unflagged[a][k]) {
                    double d = ((double)m->flux[a][k] - m->model[a][k]);
                    chi2 += d * d * m->ivar[a][k];
                    npix++;
                }
            }
        }
    double red = chi2 / (double)npix;
    printf("S/N per arm vs requested: worst relative deviation b %+.3f r %+.3f z %+.3f "
           "(tolerance %.2f)\n",
           worst_arm[0], worst_arm[1], worst_arm[2], SNR_RTOL);
    printf("chi2 per pixel of (flux - model) sqrt(ivar): %.4f over %zu pixels (tolerance %.2f, "
           "1 sigma %.4f)\n",
           red, npix, CHI2_TOL, sqrt(2.0 / (double)npix));
    CHECK(worst <= SNR_RTOL, "S/N off by %.3f", worst);
    CHECK(fabs(red - 1) <= CHI2_TOL, "chi2 per pixel %.4f", red);

    /* masks and cosmics: every target has flagged cosmics and dichroic flags; unflagged cosmics
     * stand far out of the noise */
    size_t flagged = 0, dichroic = 0, big = 0, unfl = 0;
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        for (size_t k = 0; k < m->n * m->nwave[a]; k++) {
            flagged += (m->mask[a][k] & RVS_MOCK_COSMIC) != 0;
            dichroic += (m->mask[a][k] & RVS_MOCK_SOMEBADPIX) != 0;
            if (m->cosmic_unflagged[a][k] && m->mask[a][k] == 0) {
                unfl++;
                big += ((double)m->flux[a][k] - m->model[a][k]) * sqrt(m->ivar[a][k]) > 8;
            }
        }
    printf("masks: %zu flagged cosmic px, %zu dichroic SOMEBADPIX px, %zu unflagged cosmic px "
           "(%zu above 8 sigma)\n",
           flagged, dichroic, unfl, big);
    CHECK(flagged >= 2 * 3 * m->n && dichroic > 0 && unfl > 0 && big * 10 >= unfl * 8,
          "mask statistics");
}

static void check_resolution(const struct rvs_mock *m)
{
    double worst_sum = 0, worst_row = 0, worst_mom = 0;
    double w[RVS_MOCK_NDIAG], sums[3000];
    const int h = RVS_MOCK_NDIAG / 2;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        size_t nw = m->nwave[a];
        for (size_t t = 0; t < m->n; t++) {
            const float *data = m->resolution[a] + t * RVS_MOCK_NDIAG * nw;
            rvs_resolution_row_sums_host(data, RVS_MOCK_NDIAG, nw, sums);
            for (size_t i = 0; i < nw; i++) {
                worst_sum = fmax(worst_sum, fabs(sums[i] - 1));
                /* doc/mock.md: FWHM linear in wavelength between the arm's end values, times
                 * the fibre's factor and --lsf-scale */
                double x = (m->wave[a][i] - m->wave[a][0]) / (m->wave[a][nw - 1] - m->wave[a][0]);
                double fwhm = rvs_mock_lsf_fwhm[a][0] +
                              x * (rvs_mock_lsf_fwhm[a][1] - rvs_mock_lsf_fwhm[a][0]);
                double sigma = m->opt.lsf_scale * m->t[t].lsf_factor * fwhm / 2.3548200450309493;
                double mom = 0, tot = 0;
                for (int d = -h; d <= h; d++) {
                    long j = (long)i + d;
                    double got = j >= 0 && j < (long)nw ? data[(size_t)(h - d) * nw + (size_t)j]
                                                        : 0;
                    /* the Gaussian, computed here directly */
                    double dl = j >= 0 && j < (long)nw ? m->wave[a][j] - m->wave[a][i] : 0;
                    w[d + h] = j >= 0 && j < (long)nw ? exp(-0.5 * dl * dl / (sigma * sigma)) : 0;
                    tot += w[d + h];
                    mom += got * dl * dl;
                }
                for (int d = -h; d <= h; d++) {
                    long j = (long)i + d;
                    double got = j >= 0 && j < (long)nw ? data[(size_t)(h - d) * nw + (size_t)j]
                                                        : 0;
                    worst_row = fmax(worst_row, fabs(got - w[d + h] / tot));
                }
                if (i >= (size_t)h && i + (size_t)h < nw)
                    worst_mom = fmax(worst_mom, fabs(mom / (sigma * sigma) - 1));
            }
        }
    }
    printf("resolution: row sums within %.2g of 1 (tol %g), rows vs Gaussian %.2g (tol %g), "
           "second moment vs sigma^2 %.3f (tol 0.03)\n",
           worst_sum, ROWSUM_TOL, worst_row, ROW_TOL, worst_mom);
    CHECK(worst_sum <= ROWSUM_TOL && worst_row <= ROW_TOL && worst_mom <= 0.03,
          "resolution matrix");
}

/* ------------------------------------------------------------------ continuum */

static void check_continuum(const struct rvs_mock *m)
{
    double ebv_lo = INFINITY, ebv_hi = -INFINITY, miss[3] = {0, 0, 0}, worst_rel = 0;
    size_t bad = 0;
    for (size_t t = 0; t < m->n; t++) {
        const struct rvs_mock_target *g = &m->t[t];
        ebv_lo = fmin(ebv_lo, g->ebv);
        ebv_hi = fmax(ebv_hi, g->ebv);
        bad += !(g->ebv >= 0 && g->ebv <= 0.5);
        for (int a = 0; a < RVS_DESI_NARMS; a++) {
            bad += !(isfinite(g->contmiss[a]) && g->contmiss[a] < CONTMISS_MAX);
            miss[a] = fmax(miss[a], g->contmiss[a]);
            /* the model is continuum x (a positive template): continuum positive, finite */
            size_t nw = m->nwave[a];
            for (size_t i = 0; i < nw; i++) {
                double c = m->continuum[a][t * nw + i];
                bad += !(c > 0 && isfinite(c));
                worst_rel = fmax(worst_rel, fabs(c / g->flux_scale - 1));
            }
        }
    }
    printf("realistic continuum: E(B-V) %.4f..%.4f (allowed 0..0.5), CONTMISS max b %.2e r %.2e "
           "z %.2e (tolerance %.1e), continuum/flux scale within %.3f of 1\n",
           ebv_lo, ebv_hi, miss[0], miss[1], miss[2], CONTMISS_MAX, worst_rel);
    CHECK(bad == 0, "realistic continuum: %zu bad values", bad);
    CHECK(ebv_hi > ebv_lo, "E(B-V) does not vary");
}

/* ------------------------------------------------------------------ total LSF */

/* R's sigma for target t at lambda, as doc/mock.md gives it (computed here directly). */
static double r_sigma(const struct rvs_mock *m, int a, size_t t, double lambda)
{
    size_t nw = m->nwave[a];
    double x = (lambda - m->wave[a][0]) / (m->wave[a][nw - 1] - m->wave[a][0]);
    double fwhm = rvs_mock_lsf_fwhm[a][0] + x * (rvs_mock_lsf_fwhm[a][1] - rvs_mock_lsf_fwhm[a][0]);
    return m->opt.lsf_scale * m->t[t].lsf_factor * fwhm / FWHM_PER_SIGMA;
}

/* Width (sqrt of the second moment about its mean) and equivalent width (Å) of y = 1 -
 * model/continuum within +-12 Å of lam0 on the DESI grid. */
static void line_moments(const struct rvs_mock *m, int a, size_t t, double lam0, double *width,
                         double *ew)
{
    size_t nw = m->nwave[a];
    double s0 = 0, s1 = 0, s2 = 0;
    for (size_t i = 0; i < nw; i++) {
        double l = m->wave[a][i];
        if (fabs(l - lam0) > 12)
            continue;
        double y = 1 - m->model[a][t * nw + i] / m->continuum[a][t * nw + i];
        s0 += y;
        s1 += y * (l - lam0);
        s2 += y * (l - lam0) * (l - lam0);
    }
    double mu = s1 / s0;
    *width = sqrt(s2 / s0 - mu * mu);
    *ew = s0 * RVS_MOCK_WAVE_STEP;
}

static void check_lsf_model(struct rvs_context *ctx)
{
    char csv[4400];
    fmt(csv, sizeof csv, "%s/lsf.csv", scratch);
    FILE *f = fopen(csv, "w");
    fprintf(f, "teff,logg,feh,alpha,vrad,vsini,snr\n");
    for (int k = 0; k < 8; k++)
        fprintf(f, "5000,4.5,-0.5,0.2,0,0,50\n");
    fclose(f);
    const struct {
        const char *lib;
        double s; /* the library's sigma; 0: the table tab_wave/tab_sigma */
        int on_top;
        const char *what;
    } cases[] = {
        {libline03, 0.3, 0, "total, library sigma 0.3 A"},
        {libline072, 0.72, 0, "total, library sigma 0.72 A"},
        {liblinetab, 0, 0, "total, library sigma 0.3-0.7 A (table)"},
        {libline072, 0.72, 1, "--lsf-on-top, library sigma 0.72 A"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct rvs_mock_options o;
        rvs_mock_options_init(&o);
        o.library_dir = cases[c].lib;
        o.params_path = csv;
        o.seed = 5;
        o.lsf_on_top = cases[c].on_top;
        struct rvs_mock *m = NULL;
        int status = rvs_mock_generate(ctx, &o, &m);
        CHECK(status == RVS_OK && m, "%s: generate: %s", cases[c].what, rvs_strerror(status));
        if (!m)
            continue;
        double worst = 0, worst_ew = 0, kmin = INFINITY, kmax = 0, fmin_ = INFINITY, fmax_ = 0;
        for (size_t t = 0; t < m->n; t++) {
            fmin_ = fmin(fmin_, m->t[t].lsf_factor);
            fmax_ = fmax(fmax_, m->t[t].lsf_factor);
            for (int a = 0; a < RVS_DESI_NARMS; a++) {
                double l0 = line_center[a], w, ew, sr = r_sigma(m, a, t, l0);
                double s = cases[c].s > 0 ? cases[c].s
                                          : tab_sigma[0] + (l0 - tab_wave[0]) /
                                                               (tab_wave[1] - tab_wave[0]) *
                                                               (tab_sigma[1] - tab_sigma[0]);
                double want = cases[c].on_top ? sqrt(sr * sr + s * s) : sr;
                line_moments(m, a, t, l0, &w, &ew);
                double rel = w / want - 1, rel_ew = ew / (0.5 * s * sqrt(2 * M_PI)) - 1;
                if (fabs(rel) > fabs(worst))
                    worst = rel;
                if (fabs(rel_ew) > fabs(worst_ew))
                    worst_ew = rel_ew;
                kmin = fmin(kmin, sqrt(sr * sr - s * s));
                kmax = fmax(kmax, sqrt(sr * sr - s * s));
                if (t == 0)
                    printf("  %s, %s, target 1: line at %.2f A (library sigma %.3f A) width "
                           "%.5f A, expected %.5f A (%+.2e)\n",
                           cases[c].what, setups[a], l0, s, w, want, rel);
            }
        }
        char kernel[64] = "";
        if (!cases[c].on_top)
            fmt(kernel, sizeof kernel, ", sigma_K %.3f..%.3f A", kmin, kmax);
        printf("line width (%s): %zu targets x 3 arms, LSF factors %.3f..%.3f%s: worst relative "
               "deviation %+.2e (tolerance %.1e), equivalent width %+.2e (tolerance %.1e)\n",
               cases[c].what, m->n, fmin_, fmax_, kernel, worst, LSF_RTOL, worst_ew, EW_RTOL);
        CHECK(fabs(worst) <= LSF_RTOL, "%s: line width off by %+.2e", cases[c].what, worst);
        CHECK(fabs(worst_ew) <= EW_RTOL, "%s: equivalent width off by %+.2e", cases[c].what,
              worst_ew);
        rvs_mock_free(&m);
    }
}

/* ------------------------------------------------------------------ reproducibility */

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

/* Number of 80-byte blocks that differ, CHECKSUM cards and DATASUM comments aside; -1 when the
 * sizes differ. */
static long diff_blocks(const char *p1, const char *p2)
{
    size_t n1 = 0, n2 = 0;
    char *a = slurp(p1, &n1), *b = slurp(p2, &n2);
    long differ = 0;
    if (!a || !b || n1 != n2)
        differ = -1;
    else
        for (size_t off = 0; off < n1; off += 80) {
            if (memcmp(a + off, b + off, 80) == 0 || strncmp(a + off, "CHECKSUM=", 9) == 0 ||
                (strncmp(a + off, "DATASUM =", 9) == 0 && memcmp(a + off, b + off, 31) == 0))
                continue;
            differ++;
        }
    free(a);
    free(b);
    return differ;
}

static void check_cli(void)
{
    char cmd[16384], p1[4400], p2[4400], p3[4400];
    static const char *const kinds[3] = {"coadd", "truth", "redrock"};
    for (int k = 0; k < 2; k++) {
        /* the same command line in two directories (MOCKCMD records it) */
        fmt(cmd, sizeof cmd,
            "mkdir -p '%s/cli%d' && cd '%s/cli%d' && '%s' --library '%s' --out coadd-x.fits "
            "--ntargets 5 --seed 11 --lsf-scale 1.2 --redrock >'%s/cli.out' 2>&1",
            scratch, k, scratch, k, mock_cmd, libdir, scratch);
        CHECK(run_cmd(cmd) == 0, "rvsfit-cl-mock run %d failed", k);
    }
    for (int k = 0; k < 3; k++) {
        fmt(p1, sizeof p1, "%s/cli0/%s-x.fits", scratch, kinds[k]);
        fmt(p2, sizeof p2, "%s/cli1/%s-x.fits", scratch, kinds[k]);
        long d = diff_blocks(p1, p2);
        CHECK(d == 0, "command, same seed: %s files differ in %ld blocks", kinds[k], d);
        printf("command twice, seed 11: %s files differ in %ld blocks besides checksums\n",
               kinds[k], d);
    }
    fmt(cmd, sizeof cmd, "'%s' '%s/tests/mock_check.py' check '%s/cli0/coadd-x.fits' "
        "'%s/cli0/truth-x.fits' '%s/cli0/redrock-x.fits'", python, srcdir, scratch, scratch, scratch);
    CHECK(run_cmd(cmd) == 0, "mock_check.py check failed");
    fmt(cmd, sizeof cmd,
        "'%s' --library '%s' --out '%s/cli2/coadd-x.fits' --ntargets 5 --seed 12 --lsf-scale 1.2 "
        ">/dev/null 2>&1",
        mock_cmd, libdir, scratch);
    CHECK(run_cmd(cmd) == 0, "seed 12 run failed");
    fmt(p3, sizeof p3, "%s/cli2/coadd-x.fits", scratch);
    fmt(p1, sizeof p1, "%s/cli0/coadd-x.fits", scratch);
    CHECK(diff_blocks(p1, p3) > 100, "another seed gives (almost) the same file");

    /* errors: usage (2), and a failure (1) that names the problem and leaves no file */
    struct {
        const char *args;
        int rc;
        const char *msg, *msg2;
    } cases[] = {
        {"--out X/coadd-e.fits", 2, "--library DIR is required", NULL},
        {"--library L --out X/coadd-e.fits --snr-range 5", 2, "--snr-range '5'", NULL},
        {"--library L --out X/coadd-e.fits --ntargets 0", 2, "--ntargets '0'", NULL},
        {"--library L --out X/coadd-e.fits --bogus", 2, "unknown option '--bogus'", NULL},
        {"--library L --out X/coadd-e.fits --continuum flat", 2, "--continuum 'flat'", NULL},
        {"--library L/nope --out X/coadd-e.fits", 1, "rvsfit_desi_b.fits: cannot read", NULL},
        {"--library L --out X/coadd-e.fits --lsf-scale 1.2 --params X/none.csv", 1,
         "cannot read the parameter", NULL},
        {"--library L --out X/coadd-e.fits --lsf-scale 1.2 --vrad-range -4900:-4000", 1,
         "reduce |vrad|", NULL},
        /* the library's LSF unknown (version 1): refused with what to do */
        {"--library U --out X/coadd-e.fits", 1, "lib-v1/rvsfit_desi_b.fits (arm desi_b): the "
         "library does not record its templates' line-spread function",
         "rvsfit-cl-lsf --fwhm F [--resolution-matrix-library]"},
        /* ... wider than R (1 A against 0.70-0.83 A): refused naming the arm, the wavelength and
         * both sigmas */
        {"--library W --out X/coadd-e.fits --ntargets 3", 1, "lib-line10/rvsfit_desi_b.fits (arm "
         "desi_b): the library's LSF (Gaussian sigma 1 A (FWHM 2.355 A)) is not narrower than "
         "the mock's resolution matrix R for 3 of 3 targets: at ",
         " A and the library's "},
        {"--library W --out X/coadd-e.fits --ntargets 3", 1, "Use a library whose LSF is "
         "narrower than DESI's (e.g. rvsfit-cl-mkgrid --fwhm), or a larger --lsf-scale",
         NULL},
        /* both still work with R on top of the templates or with the identity */
        {"--library U --out X/coadd-ok.fits --ntargets 2 --lsf-on-top", 0, "wrote ", NULL},
        {"--library W --out X/coadd-ok.fits --ntargets 2 --lsf-scale 0", 0, "wrote ", NULL},
        {"--help", 0, "--snr-range=LO:HI", "--lsf-on-top"},
        {"--version", 0, "rvsfit-cl-mock (rvsfit-cl)", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char args[2048], out[4400];
        /* L = the library (LSF recorded), U = the same with its LSF unknown, W = the line
         * library of sigma 1 A, X = the scratch directory */
        size_t k = 0;
        for (const char *s = cases[i].args; *s && k + 1 < sizeof args; s++) {
            int start = s == cases[i].args || s[-1] == ' ';
            const char *rep = !start ? NULL
                              : *s == 'L' ? libdir
                              : *s == 'U' ? libv1
                              : *s == 'W' ? libline10
                              : *s == 'X' ? scratch
                                          : NULL;
            if (rep) {
                k += (size_t)snprintf(args + k, sizeof args - k, "%s", rep);
                if (k >= sizeof args)
                    k = sizeof args - 1;
            } else {
                args[k++] = *s;
            }
        }
        args[k] = 0;
        fmt(out, sizeof out, "%s/err.out", scratch);
        fmt(cmd, sizeof cmd, "'%s' %s >'%s' 2>&1", mock_cmd, args, out);
        int rc = run_cmd(cmd);
        size_t n = 0;
        char *text = slurp(out, &n);
        if (text)
            text[n] = 0;
        CHECK(rc == cases[i].rc, "'%s': exit %d, expected %d\n%s", cases[i].args, rc,
              cases[i].rc, text ? text : "");
        CHECK(text && strstr(text, cases[i].msg), "'%s': output lacks '%s':\n%s", cases[i].args,
              cases[i].msg, text ? text : "");
        CHECK(!cases[i].msg2 || (text && strstr(text, cases[i].msg2)),
              "'%s': output lacks '%s':\n%s", cases[i].args, cases[i].msg2, text ? text : "");
        if (cases[i].rc == 1 && cases[i].msg2 && text)
            printf("refused as expected (exit %d): %s", rc, text);
        free(text);
    }
    fmt(p1, sizeof p1, "%s/coadd-e.fits", scratch);
    struct stat st;
    CHECK(stat(p1, &st) != 0, "a failed run left %s", p1);
    fmt(cmd, sizeof cmd, "test -z \"$(ls -A '%s' | grep '\\.tmp$')\"", scratch);
    CHECK(run_cmd(cmd) == 0, "temporary files left in %s", scratch);
}

static void check_params_table(struct rvs_context *ctx)
{
    char csv[4400];
    fmt(csv, sizeof csv, "%s/params.csv", scratch);
    FILE *f = fopen(csv, "w");
    fprintf(f, "targetid,teff,logg,feh,alpha,vrad,vsini,snr\n"
               "1001,5000,4.5,-0.5,0.2,-120.5,3,40\n"
               "1002,6200,4.0,-1.5,0.3,55,12.5,20\n"
               "# a comment\n"
               "1003,4500,2.0,-0.2,0.1,0,0,60\n");
    fclose(f);
    struct rvs_mock_options o = base_options();
    o.params_path = csv;
    struct rvs_mock *m = NULL;
    int status = rvs_mock_generate(ctx, &o, &m);
    CHECK(status == RVS_OK && m && m->n == 3, "generate from %s: %s", csv, rvs_strerror(status));
    if (m) {
        CHECK(m->t[0].targetid == 1001 && m->t[1].theta[0] == 6200 && m->t[1].vsini == 12.5 &&
                  m->t[0].vrad == -120.5 && m->t[2].snr == 60 && m->t[2].theta[1] == 2.0,
              "table values not used");
        printf("params table: 3 rows used (S/N measured r %.1f, %.1f, %.1f for 40, 20, 60)\n",
               m->t[0].sn[1], m->t[1].sn[1], m->t[2].sn[1]);
    }
    rvs_mock_free(&m);
}

int main(void)
{
    setup();
    struct rvs_context *ctx = test_context(1);
    make_libraries();
    struct rvs_mock_options o = base_options();
    struct rvs_mock *m = NULL, *m2 = NULL;
    char pa[4400], pb[4400], truth[4400];
    fmt(pa, sizeof pa, "%s/a/coadd-mock.fits", scratch);
    fmt(pb, sizeof pb, "%s/b/coadd-mock.fits", scratch);
    fmt(truth, sizeof truth, "%s/a/truth-mock.fits", scratch);
    int status = rvs_mock_generate(ctx, &o, &m);
    CHECK(status == RVS_OK, "generate: %s", rvs_strerror(status));
    if (status == RVS_OK) {
        CHECK(rvs_mock_write(m, pa, 1, "test") == RVS_OK, "write %s", pa);
        check_reader(m, pa);
        check_astropy(m, pa);
        check_truth(m, truth);
        check_statistics(m);
        check_resolution(m);
        check_continuum(m);
        /* same seed, in-process: same bytes */
        CHECK(rvs_mock_generate(ctx, &o, &m2) == RVS_OK, "second generation");
        if (m2) {
            CHECK(rvs_mock_write(m2, pb, 1, "test") == RVS_OK, "write %s", pb);
            long d = diff_blocks(pa, pb);
            printf("same seed twice: coadd differs in %ld blocks besides checksums\n", d);
            CHECK(d == 0, "same seed: %ld blocks differ", d);
        }
    }
    rvs_mock_free(&m);
    rvs_mock_free(&m2);
    check_params_table(ctx);
    check_lsf_model(ctx);
    rvs_context_destroy(&ctx);
    check_cli();
    return test_finish("test_mock");
}
