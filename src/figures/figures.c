/* figures.c: what the --doplot figures show and where they go (rvsfit/figures.h).
 *
 * One figure per fitted target, as rvspecfit's make_plot (desi_fit.py) with its additions: a
 * header with the fitted values and a small inset of the velocity posterior, then per arm the
 * data (black), its ±1σ band (grey), the masked pixels (blue points), the best-fit model (red),
 * the dichroic region the fit leaves out (shaded), and under it the residual (data − model)/σ.
 * The fitter keeps no velocity posterior grid, only its moments, so the inset shows the
 * posterior these columns describe: a Gram–Charlier series from VRAD, VRAD_ERR, VRAD_SKEW and
 * VRAD_KURT (the fitter's moments about the best velocity), negative parts set to zero.
 *
 * One summary per input: Kiel diagram (Teff against log g, both axes as astronomers draw them,
 * hot and low gravity to the upper left, coloured by [Fe/H]), VRAD_ERR against S/N on
 * logarithmic axes, and how many targets have each RVS_WARN bit.
 *
 * Drawing goes through src/figures/plot.c; a figure is written to a temporary name beside its
 * destination and renamed, so a reader never sees half a PNG. */
#include <config.h>

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/internal.h"
#include "base/files.h"
#include "figures/plot.h"
#include "rvsfit/figures.h"

#define MODULE "figures"

void rvs_figure_options_init(struct rvs_figure_options *options)
{
    memset(options, 0, sizeof *options);
    options->dir = ".";
    options->prefix = "fig";
    options->mask_dichroic = 1;
}

int rvs_figures_available(void)
{
#ifdef RVS_HAVE_CAIRO
    return 1;
#else
    return 0;
#endif
}

#ifdef RVS_HAVE_CAIRO
static char backend_name[48];

static void name_backend(void)
{
    snprintf(backend_name, sizeof backend_name, "cairo %s", cairo_version_string());
}
#endif

const char *rvs_figures_backend(void)
{
#ifdef RVS_HAVE_CAIRO
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, name_backend);
    return backend_name;
#else
    return NULL;
#endif
}

const char *rvs_figures_unavailable_message(void)
{
    return "this rvsfit-cl was built without cairo, which draws the --doplot figures: install "
           "it (Debian/Ubuntu: sudo apt-get install libcairo2-dev, or tools/install-deps), then "
           "run ./configure again (it says 'cairo: yes') and make";
}

/* ------------------------------------------------------------------ names */

int rvs_figure_paths(const struct rvs_figure_options *options, const char *input_path,
                     char **dir, char **summary_path)
{
    int status = RVS_OK;
    char *summary_prefix = NULL, *tab = NULL, *mod = NULL, *png = NULL, *d = NULL;
    *dir = NULL;
    *summary_path = NULL;
    const char *prefix = options->prefix && *options->prefix ? options->prefix : "fig";
    size_t n = strlen(prefix) + sizeof "_summary";
    summary_prefix = rvs_malloc(n);
    if (!summary_prefix)
        return RVS_ERR_NOMEM;
    snprintf(summary_prefix, n, "%s_summary", prefix);
    /* the output names' rules (last two directories, --no-subdirs, .gz dropped) with the
     * figure directory for the output directory and "<prefix>_summary" for the table prefix */
    struct rvs_output_naming naming;
    rvs_output_naming_init(&naming);
    naming.output_dir = options->dir && *options->dir ? options->dir : ".";
    naming.tab_prefix = summary_prefix;
    naming.mod_prefix = prefix;
    naming.no_subdirs = options->no_subdirs;
    RVS_TRY(rvs_output_paths(&naming, input_path, &tab, &mod));
    size_t len = strlen(tab);
    if (len > 5 && strcmp(tab + len - 5, ".fits") == 0)
        len -= 5;
    png = rvs_malloc(len + 5);
    if (!png) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    memcpy(png, tab, len);
    strcpy(png + len, ".png");
    const char *slash = strrchr(png, '/'); /* rvs_output_paths always names a directory */
    size_t dlen = slash ? (size_t)(slash - png) : 1;
    d = rvs_malloc(dlen + 1);
    if (!d) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    if (slash)
        memcpy(d, png, dlen);
    else
        d[0] = '.';
    d[dlen] = '\0';
    *dir = d;
    *summary_path = png;
    d = png = NULL;
cleanup:
    free(summary_prefix);
    free(tab);
    free(mod);
    free(png);
    free(d);
    return status;
}

char *rvs_figure_target_path(const char *dir, const char *prefix, int64_t brickid,
                             int64_t targetid, long seqid)
{
    int n = snprintf(NULL, 0, "%s/%s_%lld_%lld_%ld.png", dir, prefix, (long long)brickid,
                     (long long)targetid, seqid);
    char *path = n > 0 ? rvs_malloc((size_t)n + 1) : NULL;
    if (path)
        snprintf(path, (size_t)n + 1, "%s/%s_%lld_%lld_%ld.png", dir, prefix,
                 (long long)brickid, (long long)targetid, seqid);
    return path;
}

#ifdef RVS_HAVE_CAIRO
#include <png.h>

/* ------------------------------------------------------------------ writing a PNG */

/* libpng rather than cairo's own PNG writer: with zlib level 3 and the "up" filter on every row,
 * the figures encode 2.5 times faster than with cairo's defaults (level 6, a filter chosen per
 * row) and come out 5 % smaller (measured on the example's figures). */
enum { PNG_ZLIB_LEVEL = 3 };

struct png_sink {
    FILE *file;
    char why[256]; /* libpng's message when it gives up */
};

static void png_error_message(png_structp png, png_const_charp message)
{
    struct png_sink *sink = png_get_error_ptr(png);
    snprintf(sink->why, sizeof sink->why, "%s", message);
    png_longjmp(png, 1);
}

static void png_warning_message(png_structp png, png_const_charp message)
{
    (void)png;
    rvs_log(RVS_LOG_DEBUG, MODULE, "libpng: %s", message);
}

static void png_write_data(png_structp png, png_bytep data, size_t length)
{
    struct png_sink *sink = png_get_io_ptr(png);
    if (fwrite(data, 1, length, sink->file) != length)
        png_error(png, strerror(errno));
}

static void png_flush_data(png_structp png)
{
    struct png_sink *sink = png_get_io_ptr(png);
    if (fflush(sink->file) != 0)
        png_error(png, strerror(errno));
}

/* The RGB24 surface's pixels as an 8-bit RGB PNG into sink->file; RVS_OK or RVS_ERR_IO with
 * sink->why. libpng reports errors by longjmp to the setjmp below: nothing this function changes
 * after it is read after the jump except through `sink`. */
static int encode_png(cairo_surface_t *surface, struct png_sink *sink, unsigned char *row)
{
    const int width = cairo_image_surface_get_width(surface);
    const int height = cairo_image_surface_get_height(surface);
    const int stride = cairo_image_surface_get_stride(surface);
    const unsigned char *data = cairo_image_surface_get_data(surface);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, sink, png_error_message,
                                              png_warning_message);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info || !data) {
        snprintf(sink->why, sizeof sink->why, "%s",
                 data ? "libpng cannot start (no memory)" : "the drawing has no pixels");
        png_destroy_write_struct(png ? &png : NULL, info ? &info : NULL);
        return RVS_ERR_IO;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return RVS_ERR_IO;
    }
    png_set_write_fn(png, sink, png_write_data, png_flush_data);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_set_compression_level(png, PNG_ZLIB_LEVEL);
    png_set_filter(png, PNG_FILTER_TYPE_BASE, PNG_FILTER_UP);
    png_write_info(png, info);
    for (int y = 0; y < height; y++) {
        /* cairo's RGB24 pixel is a native-endian 32-bit 0x00RRGGBB */
        const unsigned char *line = data + (size_t)y * (size_t)stride;
        for (int x = 0; x < width; x++) {
            uint32_t pixel;
            memcpy(&pixel, line + 4 * (size_t)x, sizeof pixel);
            row[3 * x] = (unsigned char)(pixel >> 16);
            row[3 * x + 1] = (unsigned char)(pixel >> 8);
            row[3 * x + 2] = (unsigned char)pixel;
        }
        png_write_row(png, row);
    }
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return RVS_OK;
}

/* The surface as a PNG at `path`, through a temporary file in the same directory. */
static int write_png(cairo_surface_t *surface, const char *path)
{
    int status = RVS_OK;
    char *tmp = NULL;
    unsigned char *row = NULL;
    struct png_sink sink;
    memset(&sink, 0, sizeof sink);
    row = rvs_malloc(3 * (size_t)cairo_image_surface_get_width(surface) + 1);
    if (!row)
        return RVS_ERR_NOMEM;
    RVS_TRY(rvs_file_reserve_tmp(path, &tmp));
    sink.file = fopen(tmp, "wb");
    if (!sink.file) {
        rvs_log(RVS_LOG_ERROR, MODULE, "cannot write %s: %s", tmp, strerror(errno));
        status = RVS_ERR_IO;
        goto cleanup;
    }
    status = encode_png(surface, &sink, row);
    int closed = fclose(sink.file);
    sink.file = NULL;
    if (status == RVS_OK && closed != 0) {
        snprintf(sink.why, sizeof sink.why, "%s", strerror(errno));
        status = RVS_ERR_IO;
    }
    if (status != RVS_OK) {
        rvs_log(RVS_LOG_ERROR, MODULE, "cannot write the figure %s: %s", path, sink.why);
        goto cleanup;
    }
    /* no fsync (unlike the rvtab/rvmod): a figure lost in a crash is drawn again by a rerun */
    if (rename(tmp, path) != 0) {
        rvs_log(RVS_LOG_ERROR, MODULE, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        status = RVS_ERR_IO;
        goto cleanup;
    }
cleanup:
    if (sink.file)
        fclose(sink.file);
    if (tmp) {
        if (status != RVS_OK)
            unlink(tmp);
        rvs_file_tmp_done(tmp);
        free(tmp);
    }
    free(row);
    return status;
}

/* A white canvas of width x height pixels. */
static int canvas_create(int width, int height, cairo_surface_t **surface, cairo_t **cr)
{
    *cr = NULL;
    /* RGB24: no alpha channel; the PNG is 8-bit RGB */
    *surface = cairo_image_surface_create(CAIRO_FORMAT_RGB24, width, height);
    cairo_status_t cs = cairo_surface_status(*surface);
    if (cs == CAIRO_STATUS_SUCCESS) {
        *cr = cairo_create(*surface);
        cs = cairo_status(*cr);
    }
    if (cs != CAIRO_STATUS_SUCCESS) {
        rvs_log(RVS_LOG_ERROR, MODULE, "cannot make a %dx%d drawing surface: %s", width, height,
                cairo_status_to_string(cs));
        return cs == CAIRO_STATUS_NO_MEMORY ? RVS_ERR_NOMEM : RVS_ERR_IO;
    }
    cairo_set_source_rgb(*cr, 1, 1, 1);
    cairo_paint(*cr);
    return RVS_OK;
}

/* Checks what cairo recorded while drawing, then writes the PNG. */
static int canvas_finish(cairo_surface_t *surface, cairo_t *cr, const char *path)
{
    cairo_status_t cs = cairo_status(cr);
    if (cs != CAIRO_STATUS_SUCCESS) {
        rvs_log(RVS_LOG_ERROR, MODULE, "drawing %s failed: %s", path, cairo_status_to_string(cs));
        return cs == CAIRO_STATUS_NO_MEMORY ? RVS_ERR_NOMEM : RVS_ERR_IO;
    }
    cairo_surface_flush(surface);
    return write_png(surface, path);
}

static void canvas_destroy(cairo_surface_t *surface, cairo_t *cr)
{
    if (cr)
        cairo_destroy(cr);
    if (surface)
        cairo_surface_destroy(surface);
}

/* ------------------------------------------------------------------ shared pieces */

static void set_rgb(cairo_t *cr, const double rgb[3])
{
    cairo_set_source_rgb(cr, rgb[0], rgb[1], rgb[2]);
}

static const double BLACK[3] = {0, 0, 0};
static const double GREY_TEXT[3] = {0.35, 0.35, 0.35};
static const double MODEL_RED[3] = {0.84, 0.10, 0.10};
static const double MASK_BLUE[3] = {0.10, 0.30, 0.90};
static const double DICHROIC[3] = {1.00, 0.86, 0.62};
static const double DICHROIC_TEXT[3] = {0.62, 0.40, 0.10};
static const double OK_GREEN[3] = {0.13, 0.52, 0.25};
static const double WARN_ORANGE[3] = {0.85, 0.42, 0.08};

/* What rvspecfit's get_specdata masks as the dichroic's region (mask_dicroic) */
static const double DICHROIC_LO = 4300, DICHROIC_HI = 4450;

/* RVS_WARN bits by name (rvspecfit desi_fit.py `bitmasks`; BAD_ARM is rvsfit-cl's). */
static const struct {
    long long bit;
    const char *name;
} warn_bits[] = {{RVS_WARN_CHISQ, "CHISQ_WARN"},     {RVS_WARN_RV, "RV_WARN"},
                 {RVS_WARN_RVERR, "RVERR_WARN"},     {RVS_WARN_PARAM, "PARAM_WARN"},
                 {RVS_WARN_VSINI, "VSINI_WARN"},     {RVS_WARN_BAD_SPECTRUM, "BAD_SPECTRUM"},
                 {RVS_WARN_BAD_HESSIAN, "BAD_HESSIAN"}, {RVS_WARN_BAD_ARM, "BAD_ARM"}};
enum { NWARN_BITS = sizeof warn_bits / sizeof warn_bits[0] };

/* A number for a label: typographic minus, "nan" spelled as a dash. */
static const char *num(double v, int decimals, char *buf, size_t size)
{
    if (!isfinite(v))
        snprintf(buf, size, "\xe2\x80\x93");
    else
        rvs_plot_format_tick(v, decimals, buf, size);
    return buf;
}

static int compare_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* ------------------------------------------------------------------ one target */

enum {
    T_WIDTH = RVS_FIGURE_TARGET_WIDTH,
    T_HEIGHT = RVS_FIGURE_TARGET_HEIGHT,
    T_HEADER = 132,    /* title lines, legend, posterior inset */
    T_LEFT = 92,       /* tick labels and the axis titles */
    T_RIGHT = 22,
    T_SPECTRUM = 245,  /* the data/model panel of an arm */
    T_RESIDUAL = 85,   /* the residual panel under it */
    T_GAP = 50,        /* tick labels under an arm's residual panel, and space */
    T_FOOTER = 48      /* the wavelength axis title */
};
_Static_assert(T_HEADER + RVS_DESI_NARMS * (T_SPECTRUM + T_RESIDUAL + T_GAP) + T_FOOTER ==
                   T_HEIGHT,
               "the target figure's blocks fill its height");

/* Lower and upper flux limits of an arm's panel: rvspecfit's 0.2 and 99.8 percentiles of the
 * unmasked data (so that a cosmic ray does not squash the spectrum), widened to the model's
 * extremes (deep lines of a good fit stay in view) and so that the label at the top left has
 * room. */
static void flux_limits(const struct rvs_figure_arm *arm, double *lo, double *hi)
{
    float *good = rvs_malloc((arm->n ? arm->n : 1) * sizeof *good);
    size_t m = 0;
    if (good) {
        for (size_t i = 0; i < arm->n; i++)
            if (!arm->bad[i] && isfinite(arm->spec[i]))
                good[m++] = arm->spec[i];
        if (m == 0) /* everything masked: every finite value */
            for (size_t i = 0; i < arm->n; i++)
                if (isfinite(arm->spec[i]))
                    good[m++] = arm->spec[i];
    }
    if (m == 0) {
        *lo = 0;
        *hi = 1;
        free(good);
        return;
    }
    qsort(good, m, sizeof *good, compare_float);
    size_t i0 = (size_t)floor(0.002 * (double)(m - 1)), i1 = (size_t)ceil(0.998 * (double)(m - 1));
    double a = good[i0], b = good[i1];
    free(good);
    for (size_t i = 0; i < arm->n; i++)
        if (!arm->bad[i] && isfinite(arm->model[i])) {
            a = fmin(a, arm->model[i]);
            b = fmax(b, arm->model[i]);
        }
    if (!(b > a)) {
        double half = fabs(a) > 0 ? 0.1 * fabs(a) : 1;
        a -= half;
        b += half;
    }
    double span = b - a;
    *lo = a - 0.05 * span;
    *hi = b + 0.16 * span;
}

/* The dichroic region, shaded, where it overlaps the panel. */
static void shade_dichroic(const struct rvs_plot_axes *ax, int label)
{
    double lo = fmin(ax->xmin, ax->xmax), hi = fmax(ax->xmin, ax->xmax);
    if (DICHROIC_HI <= lo || DICHROIC_LO >= hi)
        return;
    cairo_t *cr = ax->cr;
    set_rgb(cr, DICHROIC);
    rvs_plot_xspan(ax, fmax(DICHROIC_LO, lo), fmin(DICHROIC_HI, hi));
    if (label) {
        set_rgb(cr, DICHROIC_TEXT);
        double x = rvs_plot_px(ax, 0.5 * (fmax(DICHROIC_LO, lo) + fmin(DICHROIC_HI, hi)));
        rvs_plot_text(cr, x, ax->top + ax->height - 8, "dichroic", 11, 0, RVS_PLOT_CENTER,
                      RVS_PLOT_BASELINE, 0);
    }
}

/* One arm: data, band, masked points and model above; the residual below. */
static int draw_arm(cairo_t *cr, const struct rvs_figure_target *t, int a, double top,
                    int last)
{
    const struct rvs_figure_arm *arm = &t->arm[a];
    const double left = T_LEFT, width = T_WIDTH - T_LEFT - T_RIGHT;
    char label[160], b1[32], b2[32];
    /* the residual panel's ±6 keeps its ticks (−5, 0, 5) off its edges */
    struct rvs_plot_axes spec = {cr, left, top, width, T_SPECTRUM, 0, 1, 0, 1, 0, 0, 10};
    struct rvs_plot_axes resid = {cr, left, top + T_SPECTRUM, width, T_RESIDUAL, 0, 1, -6, 6,
                                  0, 0, 0};
    float *lo = NULL, *hi = NULL, *res = NULL;
    unsigned char *gap = NULL;

    int have = arm->spec && arm->n >= 2 && arm->wave;
    if (have) {
        spec.xmin = resid.xmin = arm->wave[0];
        spec.xmax = resid.xmax = arm->wave[arm->n - 1];
        flux_limits(arm, &spec.ymin, &spec.ymax);
    }
    if (!have || !arm->used) {
        rvs_plot_frame(&spec);
        rvs_plot_frame(&resid);
        set_rgb(cr, GREY_TEXT);
        snprintf(label, sizeof label, "%s arm: not fitted (%s)", rvs_desi_arm_name(a),
                 !have ? "not in the file, or left out with --fitarm"
                       : "no usable data in this arm");
        rvs_plot_text(cr, left + width / 2, top + T_SPECTRUM / 2, label, 16, 0, RVS_PLOT_CENTER,
                      RVS_PLOT_MIDDLE, 0);
        if (have) /* the arm's wavelengths, though nothing of it was fitted */
            rvs_plot_xaxis(&resid, 10, 1, last ? "Wavelength [\xc3\x85]" : NULL);
        return RVS_OK;
    }

    size_t n = arm->n;
    lo = rvs_malloc(n * sizeof *lo);
    hi = rvs_malloc(n * sizeof *hi);
    res = rvs_malloc(n * sizeof *res);
    gap = rvs_malloc(n);
    if (!lo || !hi || !res || !gap) {
        free(lo);
        free(hi);
        free(res);
        free(gap);
        return RVS_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        lo[i] = arm->spec[i] - arm->espec[i];
        hi[i] = arm->spec[i] + arm->espec[i];
        res[i] = (arm->spec[i] - arm->model[i]) / arm->espec[i];
        gap[i] = arm->bad[i] || !(arm->espec[i] > 0);
    }

    /* --- data and model */
    rvs_plot_clip(&spec);
    if (t->mask_dichroic)
        shade_dichroic(&spec, 1);
    cairo_set_source_rgba(cr, 0.55, 0.55, 0.55, 0.45);
    rvs_plot_band(&spec, arm->wave, lo, hi, n, gap);
    set_rgb(cr, BLACK);
    cairo_set_line_width(cr, 0.9);
    rvs_plot_polyline(&spec, arm->wave, arm->spec, n, NULL);
    set_rgb(cr, MASK_BLUE);
    for (size_t i = 0; i < n; i++)
        if (arm->bad[i] && isfinite(arm->spec[i]))
            rvs_plot_marker(cr, rvs_plot_px(&spec, arm->wave[i]),
                            rvs_plot_py(&spec, arm->spec[i]), 1.7, 1);
    cairo_set_source_rgba(cr, MODEL_RED[0], MODEL_RED[1], MODEL_RED[2], 0.85);
    cairo_set_line_width(cr, 1.3);
    rvs_plot_polyline(&spec, arm->wave, arm->model, n, NULL);
    rvs_plot_unclip(&spec);
    rvs_plot_frame(&spec);
    rvs_plot_yaxis(&spec, 5, 1, "Flux");
    /* what the arm contributed, at the top left, on a veil that keeps it readable over data */
    const struct rvs_output_row *r = t->row;
    char name[16];
    snprintf(name, sizeof name, "%s arm", rvs_desi_arm_name(a));
    snprintf(label, sizeof label, "\xcf\x87\xc2\xb2 = %s    S/N = %s",
             num(r->chisq[a], 1, b1, sizeof b1), num(r->sn[a], 1, b2, sizeof b2));
    cairo_text_extents_t te;
    cairo_select_font_face(cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr, 14);
    cairo_text_extents(cr, label, &te);
    cairo_set_source_rgba(cr, 1, 1, 1, 0.8);
    cairo_rectangle(cr, left + 4, top + 4, 70 + te.x_advance + 12, 24);
    cairo_fill(cr);
    set_rgb(cr, BLACK);
    double w = rvs_plot_text(cr, left + 10, top + 21, name, 15, 1, RVS_PLOT_LEFT,
                             RVS_PLOT_BASELINE, 0);
    rvs_plot_text(cr, left + 10 + w + 14, top + 21, label, 14, 0, RVS_PLOT_LEFT,
                  RVS_PLOT_BASELINE, 0);

    /* --- residual */
    rvs_plot_clip(&resid);
    if (t->mask_dichroic)
        shade_dichroic(&resid, 0);
    cairo_set_source_rgb(cr, 0.6, 0.6, 0.6);
    cairo_set_line_width(cr, 1);
    double dash = 4;
    cairo_set_dash(cr, &dash, 1, 0);
    rvs_plot_hline(&resid, -1);
    rvs_plot_hline(&resid, 1);
    cairo_set_dash(cr, NULL, 0, 0);
    set_rgb(cr, BLACK);
    cairo_set_line_width(cr, 0.7);
    rvs_plot_polyline(&resid, arm->wave, res, n, gap);
    cairo_set_source_rgba(cr, MODEL_RED[0], MODEL_RED[1], MODEL_RED[2], 0.85);
    cairo_set_line_width(cr, 1.2);
    rvs_plot_hline(&resid, 0);
    rvs_plot_unclip(&resid);
    rvs_plot_frame(&resid);
    rvs_plot_yaxis(&resid, 3, 1, "(d\xe2\x88\x92m)/\xcf\x83");
    rvs_plot_xaxis(&resid, 10, 1, last ? "Wavelength [\xc3\x85]" : NULL);

    free(lo);
    free(hi);
    free(res);
    free(gap);
    return RVS_OK;
}

/* The posterior of VRAD these moments describe: a Gram–Charlier A series, density at z (in
 * units of the width) relative to its peak scale; negative values (strong skew) become 0. */
static double posterior_density(double z, double skew, double kurt)
{
    double he3 = z * z * z - 3 * z, he4 = z * z * z * z - 6 * z * z + 3;
    double excess = isfinite(kurt) ? kurt - 3 : 0;
    double p = exp(-0.5 * z * z) * (1 + (isfinite(skew) ? skew : 0) / 6 * he3 + excess / 24 * he4);
    return p > 0 ? p : 0;
}

static void draw_posterior_inset(cairo_t *cr, const struct rvs_output_row *r)
{
    struct rvs_plot_axes ax = {cr, 1085, 30, 290, 60, 0, 1, 0, 1, 0, 0, 0};
    set_rgb(cr, BLACK);
    rvs_plot_text(cr, ax.left, ax.top - 6, "VRAD posterior [km/s]", 12, 0, RVS_PLOT_LEFT,
                  RVS_PLOT_BASELINE, 0);
    set_rgb(cr, GREY_TEXT);
    rvs_plot_text(cr, ax.left + ax.width, ax.top - 6, "from ERR, SKEW, KURT", 10, 0,
                  RVS_PLOT_RIGHT, RVS_PLOT_BASELINE, 0);
    if (!(isfinite(r->vrad) && isfinite(r->vrad_err) && r->vrad_err > 0)) {
        rvs_plot_frame(&ax);
        rvs_plot_text(cr, ax.left + ax.width / 2, ax.top + ax.height / 2, "no velocity fitted",
                      12, 0, RVS_PLOT_CENTER, RVS_PLOT_MIDDLE, 0);
        return;
    }
    enum { NZ = 161 };
    double x[NZ];
    float y[NZ], zero[NZ];
    double peak = 0;
    for (int i = 0; i < NZ; i++) {
        double z = -4.5 + 9.0 * i / (NZ - 1);
        x[i] = r->vrad + z * r->vrad_err;
        double p = posterior_density(z, r->vrad_skew, r->vrad_kurt);
        y[i] = (float)p;
        zero[i] = 0;
        peak = fmax(peak, p);
    }
    ax.xmin = x[0];
    ax.xmax = x[NZ - 1];
    ax.ymax = peak > 0 ? 1.12 * peak : 1;
    rvs_plot_clip(&ax);
    cairo_set_source_rgba(cr, MODEL_RED[0], MODEL_RED[1], MODEL_RED[2], 0.25);
    rvs_plot_band(&ax, x, zero, y, NZ, NULL);
    cairo_set_source_rgb(cr, 0.6, 0.05, 0.05);
    cairo_set_line_width(cr, 1.5);
    rvs_plot_polyline(&ax, x, y, NZ, NULL);
    set_rgb(cr, BLACK);
    cairo_set_line_width(cr, 1);
    double px = rvs_plot_px(&ax, r->vrad);
    cairo_move_to(cr, px, ax.top);
    cairo_line_to(cr, px, ax.top + ax.height);
    cairo_stroke(cr);
    rvs_plot_unclip(&ax);
    rvs_plot_frame(&ax);
    rvs_plot_xaxis(&ax, 4, 1, NULL);
}

/* Line `k` of the header (baselines 28 px apart). */
static double header_line(int k)
{
    return 26 + 27 * k;
}

/* A short sample of each thing drawn, with its name; returns the x after it. */
static double legend_entry(cairo_t *cr, double x, double y, int kind, const char *name)
{
    switch (kind) {
    case 0: /* data */
        set_rgb(cr, BLACK);
        cairo_set_line_width(cr, 1.5);
        cairo_move_to(cr, x, y - 5);
        cairo_line_to(cr, x + 22, y - 5);
        cairo_stroke(cr);
        break;
    case 1: /* band */
        cairo_set_source_rgba(cr, 0.55, 0.55, 0.55, 0.45);
        cairo_rectangle(cr, x, y - 11, 22, 12);
        cairo_fill(cr);
        break;
    case 2: /* masked */
        set_rgb(cr, MASK_BLUE);
        rvs_plot_marker(cr, x + 11, y - 5, 2.5, 1);
        break;
    case 3: /* model */
        set_rgb(cr, MODEL_RED);
        cairo_set_line_width(cr, 2);
        cairo_move_to(cr, x, y - 5);
        cairo_line_to(cr, x + 22, y - 5);
        cairo_stroke(cr);
        break;
    default: /* dichroic */
        set_rgb(cr, DICHROIC);
        cairo_rectangle(cr, x, y - 11, 22, 12);
        cairo_fill(cr);
        break;
    }
    set_rgb(cr, BLACK);
    double w = rvs_plot_text(cr, x + 28, y, name, 13, 0, RVS_PLOT_LEFT, RVS_PLOT_BASELINE, 0);
    return x + 28 + w + 22;
}

static void draw_header(cairo_t *cr, const struct rvs_figure_target *t)
{
    const struct rvs_output_row *r = t->row;
    char line[512], v[10][32];
    set_rgb(cr, BLACK);
    snprintf(line, sizeof line, "TARGETID %lld    BRICKID %lld    row %ld of %s",
             (long long)t->targetid, (long long)t->brickid, t->seqid,
             t->input_name ? t->input_name : "the input");
    rvs_plot_text(cr, 18, header_line(0), line, 17, 1, RVS_PLOT_LEFT, RVS_PLOT_BASELINE, 0);
    snprintf(line, sizeof line,
             "VRAD = %s \xc2\xb1 %s km/s    Teff = %s \xc2\xb1 %s K    log g = %s \xc2\xb1 %s    "
             "[Fe/H] = %s \xc2\xb1 %s",
             num(r->vrad, 2, v[0], 32), num(r->vrad_err, 2, v[1], 32), num(r->teff, 0, v[2], 32),
             num(r->teff_err, 0, v[3], 32), num(r->logg, 2, v[4], 32),
             num(r->logg_err, 2, v[5], 32), num(r->feh, 2, v[6], 32), num(r->feh_err, 2, v[7], 32));
    rvs_plot_text(cr, 18, header_line(1), line, 15, 0, RVS_PLOT_LEFT, RVS_PLOT_BASELINE, 0);
    double per_pixel = r->npix_tot > 0 ? r->chisq_tot / (double)r->npix_tot : NAN;
    snprintf(line, sizeof line,
             "[\xce\xb1/Fe] = %s \xc2\xb1 %s    v sin i = %s km/s    "
             "\xcf\x87\xc2\xb2/N = %s  (\xcf\x87\xc2\xb2 = %s, N = %lld pixels)",
             num(r->alphafe, 2, v[0], 32), num(r->alphafe_err, 2, v[1], 32),
             num(r->vsini, 1, v[2], 32), num(per_pixel, 3, v[3], 32),
             num(r->chisq_tot, 1, v[4], 32), r->npix_tot);
    rvs_plot_text(cr, 18, header_line(2), line, 15, 0, RVS_PLOT_LEFT, RVS_PLOT_BASELINE, 0);
    /* RVS_WARN, by name, in colour when a bit is set */
    if (r->rvs_warn == 0) {
        snprintf(line, sizeof line, "RVS_WARN = 0");
        set_rgb(cr, OK_GREEN);
    } else {
        int n = snprintf(line, sizeof line, "RVS_WARN = %lld:", r->rvs_warn);
        for (size_t k = 0; k < NWARN_BITS && n > 0 && (size_t)n < sizeof line; k++)
            if (r->rvs_warn & warn_bits[k].bit)
                n += snprintf(line + n, sizeof line - (size_t)n, " %s", warn_bits[k].name);
        set_rgb(cr, WARN_ORANGE);
    }
    double x = 18 + rvs_plot_text(cr, 18, header_line(3), line, 15, 1, RVS_PLOT_LEFT,
                                  RVS_PLOT_BASELINE, 0);
    x = fmax(x + 40, 330);
    double y = header_line(3);
    x = legend_entry(cr, x, y, 0, "data");
    x = legend_entry(cr, x, y, 1, "\xc2\xb1" "1\xcf\x83");
    x = legend_entry(cr, x, y, 2, "masked pixels");
    x = legend_entry(cr, x, y, 3, "best-fit model");
    if (t->mask_dichroic)
        legend_entry(cr, x, y, 4, "dichroic (not fitted)");
    draw_posterior_inset(cr, r);
}

int rvs_figure_draw_target(const struct rvs_figure_target *t, const char *path)
{
    int status = RVS_OK;
    cairo_surface_t *surface = NULL;
    cairo_t *cr = NULL;
    RVS_TRY(canvas_create(T_WIDTH, T_HEIGHT, &surface, &cr));
    draw_header(cr, t);
    int last = RVS_DESI_NARMS - 1;
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        RVS_TRY(draw_arm(cr, t, a, T_HEADER + a * (T_SPECTRUM + T_RESIDUAL + T_GAP), a == last));
    RVS_TRY(canvas_finish(surface, cr, path));
cleanup:
    canvas_destroy(surface, cr);
    return status;
}

/* ------------------------------------------------------------------ the summary */

enum {
    S_WIDTH = RVS_FIGURE_SUMMARY_WIDTH,
    S_HEIGHT = RVS_FIGURE_SUMMARY_HEIGHT,
    S_TOP = 96,    /* title, marker legend, panel titles */
    S_PANEL = 420, /* panels' height */
};

/* Limits around finite values: [min, max] widened by `pad` of the span, at least `min_span`
 * wide; `fallback` when there is no value. Logarithmic: the same on log10 of positive values. */
static void value_limits(const double *v, size_t n, double pad, double min_span, int logarithmic,
                         double fallback_lo, double fallback_hi, double *lo, double *hi)
{
    double a = HUGE_VAL, b = -HUGE_VAL;
    for (size_t i = 0; i < n; i++) {
        double x = v[i];
        if (!isfinite(x) || (logarithmic && !(x > 0)))
            continue;
        x = logarithmic ? log10(x) : x;
        a = fmin(a, x);
        b = fmax(b, x);
    }
    if (!(b >= a)) {
        *lo = fallback_lo;
        *hi = fallback_hi;
        return;
    }
    double span = b - a;
    if (span < min_span) {
        double mid = 0.5 * (a + b);
        a = mid - 0.5 * min_span;
        b = mid + 0.5 * min_span;
        span = min_span;
    }
    a -= pad * span;
    b += pad * span;
    *lo = logarithmic ? pow(10, a) : a;
    *hi = logarithmic ? pow(10, b) : b;
}

/* Filled marker for RVS_WARN = 0, ring for a flagged target. */
static void row_marker(cairo_t *cr, double px, double py, const double rgb[3], int ok)
{
    if (ok) {
        set_rgb(cr, rgb);
        rvs_plot_marker(cr, px, py, 5, 1);
        cairo_set_source_rgb(cr, 0.15, 0.15, 0.15);
        cairo_set_line_width(cr, 0.8);
        rvs_plot_marker(cr, px, py, 5, 0);
    } else {
        set_rgb(cr, rgb);
        cairo_set_line_width(cr, 2);
        rvs_plot_marker(cr, px, py, 5, 0);
    }
}

static void panel_title(cairo_t *cr, const struct rvs_plot_axes *ax, const char *title)
{
    set_rgb(cr, BLACK);
    rvs_plot_text(cr, ax->left, ax->top - 10, title, 16, 1, RVS_PLOT_LEFT, RVS_PLOT_BASELINE, 0);
}

static void note_missing(cairo_t *cr, const struct rvs_plot_axes *ax, size_t missing,
                         const char *what)
{
    if (missing == 0)
        return;
    char line[128];
    snprintf(line, sizeof line, "%zu not shown (%s)", missing, what);
    set_rgb(cr, GREY_TEXT);
    rvs_plot_text(cr, ax->left + ax->width - 8, ax->top + ax->height - 8, line, 12, 0,
                  RVS_PLOT_RIGHT, RVS_PLOT_BASELINE, 0);
}

static int draw_kiel(cairo_t *cr, const struct rvs_figure_summary *s)
{
    size_t n = s->nrows;
    double *teff = rvs_malloc((n ? n : 1) * sizeof *teff);
    double *logg = rvs_malloc((n ? n : 1) * sizeof *logg);
    double *feh = rvs_malloc((n ? n : 1) * sizeof *feh);
    if (!teff || !logg || !feh) {
        free(teff);
        free(logg);
        free(feh);
        return RVS_ERR_NOMEM;
    }
    size_t missing = 0;
    for (size_t i = 0; i < n; i++) {
        teff[i] = s->rows[i].teff;
        logg[i] = s->rows[i].logg;
        feh[i] = s->rows[i].feh;
        if (!isfinite(teff[i]) || !isfinite(logg[i])) {
            teff[i] = logg[i] = NAN;
            missing++;
        }
    }
    struct rvs_plot_axes ax = {cr, 95, S_TOP, 430, S_PANEL, 0, 1, 0, 1, 0, 0, 0};
    double t0, t1, g0, g1, f0, f1;
    value_limits(teff, n, 0.08, 400, 0, 3000, 8000, &t0, &t1);
    value_limits(logg, n, 0.08, 0.5, 0, 0, 5, &g0, &g1);
    value_limits(feh, n, 0.02, 0.4, 0, -2.5, 0.5, &f0, &f1);
    /* hot stars to the left, giants (low log g) at the top */
    ax.xmin = t1;
    ax.xmax = t0;
    ax.ymin = g1;
    ax.ymax = g0;
    panel_title(cr, &ax, "Kiel diagram");
    rvs_plot_clip(&ax);
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(teff[i]))
            continue;
        double rgb[3] = {0.5, 0.5, 0.5}; /* no [Fe/H]: grey */
        if (isfinite(feh[i]))
            rvs_plot_colormap((feh[i] - f0) / (f1 - f0), rgb);
        row_marker(cr, rvs_plot_px(&ax, teff[i]), rvs_plot_py(&ax, logg[i]), rgb,
                   s->rows[i].rvs_warn == 0);
    }
    rvs_plot_unclip(&ax);
    rvs_plot_frame(&ax);
    rvs_plot_xaxis(&ax, 6, 1, "Teff [K]");
    rvs_plot_yaxis(&ax, 6, 1, "log g [dex]");
    note_missing(cr, &ax, missing, "no Teff or log g");

    /* the colour bar, its ticks on the right */
    struct rvs_plot_axes bar = {cr, ax.left + ax.width + 16, S_TOP, 16, S_PANEL, 0, 1, f0, f1,
                                0, 0, 0};
    enum { STEPS = 120 };
    for (int k = 0; k < STEPS; k++) {
        double rgb[3];
        rvs_plot_colormap((k + 0.5) / STEPS, rgb);
        set_rgb(cr, rgb);
        double y0 = bar.top + bar.height * (1 - (double)(k + 1) / STEPS);
        cairo_rectangle(cr, bar.left, floor(y0), bar.width, ceil(bar.height / STEPS) + 1);
        cairo_fill(cr);
    }
    rvs_plot_frame(&bar);
    struct rvs_plot_ticks ticks;
    rvs_plot_nice_ticks(f0, f1, 6, &ticks);
    set_rgb(cr, BLACK);
    cairo_set_line_width(cr, 1);
    double widest = 0;
    for (size_t k = 0; k < ticks.n; k++) {
        double py = floor(rvs_plot_py(&bar, ticks.value[k])) + 0.5;
        cairo_move_to(cr, bar.left + bar.width, py);
        cairo_line_to(cr, bar.left + bar.width + 5, py);
        cairo_stroke(cr);
        char label[32];
        rvs_plot_format_tick(ticks.value[k], ticks.decimals, label, sizeof label);
        widest = fmax(widest, rvs_plot_text(cr, bar.left + bar.width + 8, py, label, 13, 0,
                                            RVS_PLOT_LEFT, RVS_PLOT_MIDDLE, 0));
    }
    rvs_plot_text(cr, bar.left + bar.width + 8 + widest + 22, bar.top + bar.height / 2,
                  "[Fe/H]", 15, 0, RVS_PLOT_CENTER, RVS_PLOT_BASELINE, -M_PI / 2);
    free(teff);
    free(logg);
    free(feh);
    return RVS_OK;
}

/* The S/N of a row: its best arm's, as the selection's --minsn uses it. */
static double row_sn(const struct rvs_output_row *r)
{
    double best = NAN;
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        if (isfinite(r->sn[a]) && !(r->sn[a] <= best))
            best = r->sn[a];
    return best;
}

static int draw_rverr(cairo_t *cr, const struct rvs_figure_summary *s)
{
    size_t n = s->nrows;
    double *sn = rvs_malloc((n ? n : 1) * sizeof *sn);
    double *err = rvs_malloc((n ? n : 1) * sizeof *err);
    if (!sn || !err) {
        free(sn);
        free(err);
        return RVS_ERR_NOMEM;
    }
    size_t missing = 0;
    for (size_t i = 0; i < n; i++) {
        sn[i] = row_sn(&s->rows[i]);
        err[i] = s->rows[i].vrad_err;
        if (!(sn[i] > 0) || !(err[i] > 0) || !isfinite(sn[i]) || !isfinite(err[i])) {
            sn[i] = err[i] = NAN;
            missing++;
        }
    }
    struct rvs_plot_axes ax = {cr, 700, S_TOP, 470, S_PANEL, 1, 100, 0.1, 100, 1, 1, 0};
    value_limits(sn, n, 0.12, 1, 1, 1, 100, &ax.xmin, &ax.xmax);
    value_limits(err, n, 0.12, 1, 1, 0.1, 100, &ax.ymin, &ax.ymax);
    panel_title(cr, &ax, "Velocity error against S/N");
    rvs_plot_clip(&ax);
    for (size_t i = 0; i < n; i++)
        if (isfinite(sn[i]))
            row_marker(cr, rvs_plot_px(&ax, sn[i]), rvs_plot_py(&ax, err[i]),
                       s->rows[i].rvs_warn == 0 ? (const double[3]){0.25, 0.25, 0.3}
                                                : WARN_ORANGE,
                       s->rows[i].rvs_warn == 0);
    rvs_plot_unclip(&ax);
    rvs_plot_frame(&ax);
    rvs_plot_xaxis(&ax, 5, 1, "S/N (best arm)");
    rvs_plot_yaxis(&ax, 5, 1, "VRAD_ERR [km/s]");
    note_missing(cr, &ax, missing, "no S/N or error");
    free(sn);
    free(err);
    return RVS_OK;
}

static void draw_warn_counts(cairo_t *cr, const struct rvs_figure_summary *s)
{
    enum { NBARS = NWARN_BITS + 1 };
    size_t count[NBARS] = {0};
    const char *names[NBARS];
    names[0] = "none (0)";
    for (size_t k = 0; k < NWARN_BITS; k++)
        names[k + 1] = warn_bits[k].name;
    for (size_t i = 0; i < s->nrows; i++) {
        long long w = s->rows[i].rvs_warn;
        if (w == 0)
            count[0]++;
        for (size_t k = 0; k < NWARN_BITS; k++)
            if (w & warn_bits[k].bit)
                count[k + 1]++;
    }
    size_t most = 0;
    for (size_t k = 0; k < NBARS; k++)
        most = count[k] > most ? count[k] : most;
    /* at least 5, so that the count axis has whole-number ticks */
    double top = fmax(5, 1.15 * (double)most);
    struct rvs_plot_axes ax = {cr, 1265, S_TOP, 505, S_PANEL, 0, NBARS, 0, top, 0, 0, 0};
    panel_title(cr, &ax, "RVS_WARN bits set");
    for (size_t k = 0; k < NBARS; k++) {
        double x0 = rvs_plot_px(&ax, k + 0.18), x1 = rvs_plot_px(&ax, k + 0.82);
        double y0 = rvs_plot_py(&ax, 0), y1 = rvs_plot_py(&ax, (double)count[k]);
        set_rgb(cr, k == 0 ? OK_GREEN : WARN_ORANGE);
        cairo_rectangle(cr, x0, y1, x1 - x0, y0 - y1);
        cairo_fill(cr);
        char label[32];
        snprintf(label, sizeof label, "%zu", count[k]);
        set_rgb(cr, BLACK);
        rvs_plot_text(cr, 0.5 * (x0 + x1), y1 - 5, label, 13, 0, RVS_PLOT_CENTER,
                      RVS_PLOT_BASELINE, 0);
        /* the bit's name under its bar, slanted so that long names do not collide */
        rvs_plot_text(cr, 0.5 * (x0 + x1) + 4, ax.top + ax.height + 12, names[k], 13, 0,
                      RVS_PLOT_RIGHT, RVS_PLOT_TOP, -M_PI / 5);
    }
    rvs_plot_frame(&ax);
    rvs_plot_yaxis(&ax, 5, 1, "targets");
}

int rvs_figure_draw_summary(const struct rvs_figure_summary *s, const char *path)
{
    int status = RVS_OK;
    cairo_surface_t *surface = NULL;
    cairo_t *cr = NULL;
    char line[512];
    RVS_TRY(canvas_create(S_WIDTH, S_HEIGHT, &surface, &cr));
    size_t ok = 0;
    for (size_t i = 0; i < s->nrows; i++)
        ok += s->rows[i].rvs_warn == 0;
    snprintf(line, sizeof line, "%s: %zu target%s fitted, %zu with RVS_WARN = 0",
             s->input_name ? s->input_name : "input", s->nrows, s->nrows == 1 ? "" : "s", ok);
    set_rgb(cr, BLACK);
    rvs_plot_text(cr, 24, 32, line, 19, 1, RVS_PLOT_LEFT, RVS_PLOT_BASELINE, 0);
    /* what the markers mean */
    double x = 24, y = 58;
    row_marker(cr, x + 6, y - 5, (const double[3]){0.25, 0.25, 0.3}, 1);
    set_rgb(cr, BLACK);
    x += 18 + rvs_plot_text(cr, x + 18, y, "RVS_WARN = 0", 13, 0, RVS_PLOT_LEFT,
                            RVS_PLOT_BASELINE, 0);
    row_marker(cr, x + 26, y - 5, WARN_ORANGE, 0);
    set_rgb(cr, BLACK);
    rvs_plot_text(cr, x + 38, y, "a warning bit set (Kiel diagram: ring in the [Fe/H] colour)",
                  13, 0, RVS_PLOT_LEFT, RVS_PLOT_BASELINE, 0);
    RVS_TRY(draw_kiel(cr, s));
    RVS_TRY(draw_rverr(cr, s));
    draw_warn_counts(cr, s);
    RVS_TRY(canvas_finish(surface, cr, path));
cleanup:
    canvas_destroy(surface, cr);
    return status;
}

#else /* no cairo */

int rvs_figure_draw_target(const struct rvs_figure_target *t, const char *path)
{
    (void)t;
    rvs_log(RVS_LOG_ERROR, MODULE, "cannot draw %s: %s", path, rvs_figures_unavailable_message());
    return RVS_ERR_UNSUPPORTED;
}

int rvs_figure_draw_summary(const struct rvs_figure_summary *s, const char *path)
{
    (void)s;
    rvs_log(RVS_LOG_ERROR, MODULE, "cannot draw %s: %s", path, rvs_figures_unavailable_message());
    return RVS_ERR_UNSUPPORTED;
}

#endif /* RVS_HAVE_CAIRO */
