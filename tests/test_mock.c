/* test_mock.c: rvsfit-cl-mock (src/mock/) on rvspecfit's fixture library converted with
 * tools/rvs-import:
 *  - a 12-target mock read back with the project's DESI reader (rvs_desi_open/read_spectra) and
 *    independently with astropy (tests/mock_check.py dump) is bit-identical to what the
 *    generator holds in memory (wavelengths, flux, ivar, mask, resolution, TARGETID, S/N);
 *  - the truth table holds the generator's values; the coadd, truth and redrock files agree
 *    (mock_check.py check: TARGETIDs, Z = VRAD/c, numpy get_sns = SCORES within 1e-6);
 *  - same seed -> identical bytes except CHECKSUM/DATASUM cards (in-process and through the
 *    command); another seed -> other data;
 *  - measured S/N per arm within 10% of the requested S/N (the dichroic region and masks bias
 *    b low by a few per cent); chi^2 of (flux - noiseless model) * sqrt(ivar) per pixel over
 *    unmasked pixels without unflagged cosmics within 0.02 of 1 (4 sigma at ~9e4 pixels);
 *  - resolution rows sum to 1 (1e-6) and equal the documented Gaussian (1e-7), and their second
 *    moment is the LSF sigma^2 within 3% (sampling and truncation at +-5 pixels);
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

#define NT 12
#define SNR_RTOL 0.10
#define CHI2_TOL 0.02
#define ROWSUM_TOL 1e-6
#define ROW_TOL 1e-7

static char scratch[4096], fixture[4096], python[1024], srcdir[4096], libdir[4200];
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
        fprintf(stderr, "SKIP: %s lacks numpy/h5py/astropy\n", python);
        exit(TEST_SKIP);
    }
    mock_cmd = getenv("RVSFIT_CL_MOCK");
    if (!mock_cmd)
        mock_cmd = "./rvsfit-cl-mock";
    fmt(scratch, sizeof scratch, "%s/tests/test_mock.tmp", top_build ? top_build : ".");
    fmt(libdir, sizeof libdir, "%s/lib", scratch);
    fmt(cmd, sizeof cmd,
        "rm -rf '%s' && mkdir -p '%s' && '%s/tools/rvs-import' '%s' '%s' >'%s/import.log' 2>&1",
        scratch, libdir, top_build ? top_build : ".", fixture, libdir, scratch);
    if (run_cmd(cmd) != 0) {
        fprintf(stderr, "FAIL: rvs-import could not convert the fixture (%s/import.log)\n",
                scratch);
        exit(1);
    }
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
    printf("truth table: %zu targets x 9 columns equal to memory (%zu differ), seed %llu\n", m->n,
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
            "--ntargets 5 --seed 11 --redrock >'%s/cli.out' 2>&1",
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
        "'%s' --library '%s' --out '%s/cli2/coadd-x.fits' --ntargets 5 --seed 12 >/dev/null 2>&1",
        mock_cmd, libdir, scratch);
    CHECK(run_cmd(cmd) == 0, "seed 12 run failed");
    fmt(p3, sizeof p3, "%s/cli2/coadd-x.fits", scratch);
    fmt(p1, sizeof p1, "%s/cli0/coadd-x.fits", scratch);
    CHECK(diff_blocks(p1, p3) > 100, "another seed gives (almost) the same file");

    /* errors: usage (2), and a failure (1) that names the problem and leaves no file */
    struct {
        const char *args;
        int rc;
        const char *msg;
    } cases[] = {
        {"--out X/coadd-e.fits", 2, "--library DIR is required"},
        {"--library L --out X/coadd-e.fits --snr-range 5", 2, "--snr-range '5'"},
        {"--library L --out X/coadd-e.fits --ntargets 0", 2, "--ntargets '0'"},
        {"--library L --out X/coadd-e.fits --bogus", 2, "unknown option '--bogus'"},
        {"--library L/nope --out X/coadd-e.fits", 1, "rvsfit_desi_b.fits: cannot read"},
        {"--library L --out X/coadd-e.fits --params X/none.csv", 1, "cannot read the parameter"},
        {"--library L --out X/coadd-e.fits --vrad-range -4900:-4000", 1, "reduce |vrad|"},
        {"--help", 0, "--snr-range=LO:HI"},
        {"--version", 0, "rvsfit-cl-mock (rvsfit-cl)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char args[2048], out[4400];
        /* L = the library, X = the scratch directory */
        size_t k = 0;
        for (const char *s = cases[i].args; *s && k + 1 < sizeof args; s++) {
            const char *rep = *s == 'L' && (s == cases[i].args || s[-1] == ' ') ? libdir
                              : *s == 'X' && (s == cases[i].args || s[-1] == ' ') ? scratch
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
    rvs_context_destroy(&ctx);
    check_cli();
    return test_finish("test_mock");
}
