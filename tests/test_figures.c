/* test_figures.c: the parts of --doplot that need no fit (issue 22): nice tick values on random
 * and edge intervals, logarithmic ticks, tick labels, the colour map, the relative data path of
 * an installed program, figure names as rvs_desi_fit makes them, the message of a build without
 * cairo, and synthetic figures (an unfitted arm, a bad spectrum, an empty summary) written where
 * asked with the documented size, no temporary left, and an unwritable destination refused.
 * The pixels of real figures are checked by tests/test_doplot.sh. Needs no device. */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/internal.h"
#include "figures/plot.h"
#include "testutil.h"

static char scratch[4096];

/* ------------------------------------------------------------------ ticks */

/* step is 1, 2 or 5 times a power of ten */
static int is_nice_step(double step)
{
    double m = step / pow(10.0, floor(log10(step) + 1e-9));
    return fabs(m - 1) < 1e-9 || fabs(m - 2) < 1e-9 || fabs(m - 5) < 1e-9;
}

static void expect_ticks(double lo, double hi, size_t target, const double *want, size_t nwant)
{
    struct rvs_plot_ticks t;
    rvs_plot_nice_ticks(lo, hi, target, &t);
    int same = t.n == nwant;
    for (size_t i = 0; same && i < nwant; i++)
        same = fabs(t.value[i] - want[i]) <= 1e-9 * fmax(1, fabs(want[i]));
    CHECK(same, "ticks of [%g, %g] (about %zu): got %zu values starting %g, want %zu starting %g",
          lo, hi, target, t.n, t.n ? t.value[0] : NAN, nwant, want[0]);
}

static void test_nice_ticks(void)
{
    expect_ticks(0, 10, 5, (const double[]){0, 2, 4, 6, 8, 10}, 6);
    expect_ticks(0.13, 0.87, 5, (const double[]){0.2, 0.4, 0.6, 0.8}, 4);
    expect_ticks(-6, 6, 3, (const double[]){-5, 0, 5}, 3);
    expect_ticks(10, 0, 5, (const double[]){0, 2, 4, 6, 8, 10}, 6); /* reversed axis */
    expect_ticks(3600, 5800, 10, (const double[]){3600, 3800, 4000, 4200, 4400, 4600, 4800,
                                                  5000, 5200, 5400, 5600, 5800}, 12);
    expect_ticks(3, 3, 5, (const double[]){3}, 1);
    struct rvs_plot_ticks t;
    rvs_plot_nice_ticks(NAN, 1, 5, &t);
    CHECK(t.n == 0, "no ticks on a NaN interval (got %zu)", t.n);
    /* a narrow interval between two ticks of the first step still gets two */
    rvs_plot_nice_ticks(1.0012, 1.0019, 2, &t);
    CHECK(t.n >= 2, "[1.0012, 1.0019]: %zu tick(s)", t.n);
    CHECK(t.decimals == 4, "[1.0012, 1.0019]: %d decimals, want 4", t.decimals);
    rvs_plot_nice_ticks(-0.37, 0.52, 6, &t);
    CHECK(t.n > 0 && t.decimals == 1, "[-0.37, 0.52]: %d decimals, want 1", t.decimals);

    /* random intervals of every scale: inside, evenly spaced by a nice step, a sane count */
    double worst_count = 0;
    for (int k = 0; k < 20000; k++) {
        double scale = pow(10.0, test_uniform(-6, 6));
        double lo = test_uniform(-1, 1) * scale, hi = lo + test_uniform(1e-3, 3) * scale;
        size_t target = 2 + (size_t)test_uniform(0, 9);
        rvs_plot_nice_ticks(lo, hi, target, &t);
        int ok = t.n >= 2 && t.n <= 3 * target + 1 && is_nice_step(t.step);
        for (size_t i = 0; ok && i < t.n; i++) {
            double tol = 1e-9 * t.step;
            ok = t.value[i] >= lo - tol && t.value[i] <= hi + tol &&
                 (i == 0 || fabs(t.value[i] - t.value[i - 1] - t.step) <= 1e-6 * t.step);
        }
        /* nothing finer than needed: the step is within a factor 2.5 of (hi - lo) / target */
        double ratio = t.step / ((hi - lo) / (double)target);
        ok = ok && ratio > 0.3 && ratio < 3.2;
        worst_count = fmax(worst_count, (double)t.n / (double)target);
        if (!ok) {
            CHECK(0, "ticks of [%.17g, %.17g] about %zu: n %zu, step %g", lo, hi, target, t.n,
                  t.step);
            break;
        }
    }
    printf("nice ticks: 20000 random intervals, at most %.2f x the ticks asked for\n",
           worst_count);
}

static void test_log_ticks(void)
{
    struct rvs_plot_ticks major, minor;
    rvs_plot_log_ticks(6, 60, &major, &minor);
    CHECK(major.n == 3 && major.value[0] == 10 && major.value[1] == 20 && major.value[2] == 50,
          "log ticks of [6, 60]: %zu major, first %g", major.n, major.n ? major.value[0] : NAN);
    CHECK(minor.n > 0, "log ticks of [6, 60]: no minor ticks");
    rvs_plot_log_ticks(0.1, 100, &major, &minor);
    CHECK(major.n == 4 && fabs(major.value[0] - 0.1) < 1e-12 && major.value[3] == 100,
          "log ticks of [0.1, 100]: %zu major", major.n);
    CHECK(major.decimals == 1, "labels of [0.1, 100] need 1 decimal (got %d)", major.decimals);
    CHECK(minor.n == 3 * 8 - 0, "[0.1, 100] has 24 minor ticks (got %zu)", minor.n);
    rvs_plot_log_ticks(3, 4, &major, &minor);
    CHECK(major.n >= 2 && major.value[0] >= 3 && major.value[major.n - 1] <= 4,
          "log ticks of [3, 4] fall back to linear ones inside (%zu)", major.n);
    rvs_plot_log_ticks(-1, 10, &major, &minor);
    CHECK(major.n == 0, "no log ticks for a non-positive limit");
}

static void expect_label(double v, int decimals, const char *want)
{
    char buf[32];
    rvs_plot_format_tick(v, decimals, buf, sizeof buf);
    CHECK(strcmp(buf, want) == 0, "label of %g with %d decimals: '%s', want '%s'", v, decimals,
          buf, want);
}

static void test_labels_and_colours(void)
{
    expect_label(0.2, 1, "0.2");
    expect_label(-1.5, 1, "\xe2\x88\x92" "1.5");
    expect_label(-0.0001, 2, "0.00"); /* no "-0.00" */
    expect_label(-0.0, 0, "0");
    expect_label(5800, 0, "5800");
    double a[3], b[3], c[3];
    rvs_plot_colormap(-3, a);
    rvs_plot_colormap(0, b);
    CHECK(memcmp(a, b, sizeof a) == 0, "the colour map clamps below 0");
    rvs_plot_colormap(7, a);
    rvs_plot_colormap(1, b);
    CHECK(memcmp(a, b, sizeof a) == 0, "the colour map clamps above 1");
    /* luminance rises from the dark blue end to the yellow, then falls to the red */
    double last = -1;
    for (int k = 0; k <= 75; k++) {
        rvs_plot_colormap(k / 100.0, c);
        double y = 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
        CHECK(y > last, "colour map luminance not rising at t = %.2f", k / 100.0);
        last = y;
        for (int j = 0; j < 3; j++)
            CHECK(c[j] >= 0 && c[j] <= 1, "colour component outside [0, 1]");
    }
}

/* ------------------------------------------------------------------ names */

static void expect_relative(const char *from, const char *to, const char *want)
{
    char out[256];
    int rc = rvs_data_dir_relative(from, to, out, sizeof out);
    CHECK(rc == 0 && strcmp(out, want) == 0, "from %s to %s: '%s' (%d), want '%s'", from, to,
          rc == 0 ? out : "", rc, want);
}

static void test_names(void)
{
    expect_relative("/usr/local/bin", "/usr/local/share/rvsfit-cl", "../share/rvsfit-cl");
    expect_relative("/opt/x/bin/", "/srv/data", "../../../srv/data");
    expect_relative("/a/b", "/a/b", ".");
    expect_relative("/a/b/c", "/a/b", "..");
    expect_relative("/a/bc", "/a/b/d", "../b/d"); /* components, not characters, are shared */
    char tiny[4];
    CHECK(rvs_data_dir_relative("/a/b/c", "/x/y", tiny, sizeof tiny) == -1,
          "a path that does not fit is refused");

    struct rvs_figure_options o;
    rvs_figure_options_init(&o);
    CHECK(strcmp(o.dir, ".") == 0 && strcmp(o.prefix, "fig") == 0,
          "rvs_desi_fit's defaults: figure_dir '.', figure_prefix 'fig'");
    o.dir = "figs";
    char *dir = NULL, *summary = NULL;
    CHECK(rvs_figure_paths(&o, "/data/tiles/80605/coadd-a.fits.gz", &dir, &summary) == RVS_OK,
          "figure paths");
    CHECK(dir && strcmp(dir, "figs/tiles/80605") == 0, "figure dir '%s'", dir ? dir : "");
    CHECK(summary && strcmp(summary, "figs/tiles/80605/fig_summary_coadd-a.png") == 0,
          "summary '%s'", summary ? summary : "");
    free(dir);
    free(summary);
    o.no_subdirs = 1;
    o.prefix = "im";
    CHECK(rvs_figure_paths(&o, "coadd-b.fits", &dir, &summary) == RVS_OK, "--no-subdirs paths");
    CHECK(dir && strcmp(dir, "figs") == 0, "--no-subdirs dir '%s'", dir ? dir : "");
    CHECK(summary && strcmp(summary, "figs/im_summary_coadd-b.png") == 0, "summary '%s'",
          summary ? summary : "");
    free(dir);
    free(summary);
    o.no_subdirs = 0;
    rvs_log_set_level(RVS_LOG_CRITICAL); /* the refusal below logs an error, as it should */
    CHECK(rvs_figure_paths(&o, "/coadd-c.fits", &dir, &summary) == RVS_ERR_INVALID_ARGUMENT,
          "an input without two parent directories is refused, as for the outputs");
    rvs_log_set_level(RVS_LOG_ERROR);
    CHECK(!dir && !summary, "nothing returned on refusal");
    char *p = rvs_figure_target_path("d", "fig", 330000, 39627000000000332LL, 7);
    CHECK(p && strcmp(p, "d/fig_330000_39627000000000332_7.png") == 0, "target path '%s'",
          p ? p : "");
    free(p);

    const char *msg = rvs_figures_unavailable_message();
    CHECK(strstr(msg, "cairo") && strstr(msg, "libcairo2-dev") && strstr(msg, "configure"),
          "the message of a build without cairo says how to get it: %s", msg);
    CHECK(rvs_figures_available() == (rvs_figures_backend() != NULL),
          "available exactly when a backend is named");
}

/* ------------------------------------------------------------------ drawing */

/* 1 when `path` starts with the PNG signature and an IHDR of width x height. */
static int png_header_is(const char *path, unsigned width, unsigned height)
{
    unsigned char h[24];
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    size_t n = fread(h, 1, sizeof h, f);
    fclose(f);
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (n != sizeof h || memcmp(h, sig, 8) != 0 || memcmp(h + 12, "IHDR", 4) != 0)
        return 0;
    unsigned w = (unsigned)h[16] << 24 | (unsigned)h[17] << 16 | (unsigned)h[18] << 8 | h[19];
    unsigned ht = (unsigned)h[20] << 24 | (unsigned)h[21] << 16 | (unsigned)h[22] << 8 | h[23];
    return w == width && ht == height;
}

static size_t count_tmp(const char *dir)
{
    size_t n = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        n += len > 4 && strcmp(e->d_name + len - 4, ".tmp") == 0;
    }
    if (d)
        closedir(d);
    return n;
}

enum { NPIX = 400 };

static void test_drawing(void)
{
    static double wave[RVS_DESI_NARMS][NPIX];
    static float spec[RVS_DESI_NARMS][NPIX], espec[RVS_DESI_NARMS][NPIX],
        model[RVS_DESI_NARMS][NPIX];
    static unsigned char bad[RVS_DESI_NARMS][NPIX];
    const double start[RVS_DESI_NARMS] = {4200, 5800, 7600};
    struct rvs_output_row rows[3];
    for (int r = 0; r < 3; r++)
        rvs_output_row_init(&rows[r], r);
    rows[0].vrad = -23.4;
    rows[0].vrad_err = 1.2;
    rows[0].vrad_skew = 0.4;
    rows[0].vrad_kurt = 3.5;
    rows[0].teff = 5200;
    rows[0].logg = 4.4;
    rows[0].feh = -0.8;
    rows[0].alphafe = 0.2;
    rows[0].vsini = 4;
    rows[0].chisq_tot = 1000;
    rows[0].npix_tot = 790;
    rows[0].sn[0] = 12;
    rows[1] = rows[0];
    rows[1].teff = 4100;
    rows[1].logg = 1.6;
    rows[1].rvs_warn = RVS_WARN_CHISQ | RVS_WARN_BAD_HESSIAN;
    rows[2].rvs_warn = RVS_WARN_BAD_SPECTRUM; /* NaN everywhere */
    struct rvs_figure_target t;
    memset(&t, 0, sizeof t);
    t.input_name = "coadd-synthetic.fits";
    t.brickid = 1;
    t.targetid = 2;
    t.seqid = 0;
    t.row = &rows[0];
    t.mask_dichroic = 1;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        for (int i = 0; i < NPIX; i++) {
            wave[a][i] = start[a] + 0.8 * i;
            model[a][i] = (float)(50 - 20 * exp(-0.5 * pow((i - 200) / 3.0, 2)));
            espec[a][i] = 2;
            spec[a][i] = model[a][i] + (float)test_uniform(-2, 2);
            bad[a][i] = i < 5 || i >= NPIX - 5;
        }
        t.arm[a] = (struct rvs_figure_arm){NPIX, wave[a], spec[a], espec[a], bad[a], model[a],
                                           a != RVS_DESI_ARM_Z}; /* z: data, not fitted */
    }
    t.arm[RVS_DESI_ARM_R].spec = NULL; /* r: not in the file */
    char path[4200];
    snprintf(path, sizeof path, "%s/target.png", scratch);
    int rc = rvs_figure_draw_target(&t, path);
    if (!rvs_figures_available()) {
        CHECK(rc == RVS_ERR_UNSUPPORTED, "a build without cairo refuses to draw (%d)", rc);
        return;
    }
    CHECK(rc == RVS_OK, "draw a target: %s", rvs_strerror(rc));
    CHECK(png_header_is(path, RVS_FIGURE_TARGET_WIDTH, RVS_FIGURE_TARGET_HEIGHT),
          "%s: a PNG of %dx%d", path, RVS_FIGURE_TARGET_WIDTH, RVS_FIGURE_TARGET_HEIGHT);

    t.row = &rows[2]; /* a bad spectrum: no arm fitted, no velocity */
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        t.arm[a].used = 0;
    snprintf(path, sizeof path, "%s/bad.png", scratch);
    rc = rvs_figure_draw_target(&t, path);
    CHECK(rc == RVS_OK && png_header_is(path, RVS_FIGURE_TARGET_WIDTH, RVS_FIGURE_TARGET_HEIGHT),
          "draw a bad spectrum: %s", rvs_strerror(rc));

    struct rvs_figure_summary s = {"coadd-synthetic.fits", 3, rows};
    snprintf(path, sizeof path, "%s/summary.png", scratch);
    rc = rvs_figure_draw_summary(&s, path);
    CHECK(rc == RVS_OK &&
              png_header_is(path, RVS_FIGURE_SUMMARY_WIDTH, RVS_FIGURE_SUMMARY_HEIGHT),
          "draw a summary: %s", rvs_strerror(rc));
    s.nrows = 0;
    snprintf(path, sizeof path, "%s/empty.png", scratch);
    rc = rvs_figure_draw_summary(&s, path);
    CHECK(rc == RVS_OK &&
              png_header_is(path, RVS_FIGURE_SUMMARY_WIDTH, RVS_FIGURE_SUMMARY_HEIGHT),
          "draw the summary of a file without targets: %s", rvs_strerror(rc));
    CHECK(count_tmp(scratch) == 0, "no temporary left in %s", scratch);

    rvs_log_set_level(RVS_LOG_CRITICAL);
    snprintf(path, sizeof path, "%s/no/such/dir/x.png", scratch);
    rc = rvs_figure_draw_summary(&s, path);
    rvs_log_set_level(RVS_LOG_ERROR);
    CHECK(rc == RVS_ERR_IO, "a figure into a missing directory fails with RVS_ERR_IO (%s)",
          rvs_strerror(rc));
}

int main(void)
{
    const char *builddir = getenv("top_builddir");
    snprintf(scratch, sizeof scratch, "%s/tests/test_figures.tmp", builddir ? builddir : ".");
    mkdir(scratch, 0777);
    if (count_tmp(scratch) > 0 || access(scratch, W_OK) != 0) {
        fprintf(stderr, "FAIL: cannot use the scratch directory %s\n", scratch);
        return 1;
    }
    rvs_log_set_level(RVS_LOG_ERROR);
    test_nice_ticks();
    test_log_ticks();
    test_labels_and_colours();
    test_names();
    test_drawing();
    return test_finish("test_figures");
}
