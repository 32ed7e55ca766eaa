/* plot.h: a small 2-D plotting layer on cairo for the --doplot figures (src/figures/figures.c); not
 * installed. Axes map data to pixels (linear or logarithmic, either direction), get "nice" tick
 * values (1, 2 or 5 times a power of ten), and draw lines that break at gaps, bands, markers and
 * text in the system's fonts.
 *
 * Text uses cairo's toy text API with the "DejaVu Sans" family (fontconfig finds it, Debian's
 * fonts-dejavu-core): the figures' labels are short single lines in one font, which needs no
 * layout engine, and it spares the library pango and glib. DejaVu Sans has every character the
 * labels use (σ, α, χ², Å, ±, −); the toy API has no fallback to other fonts.
 *
 * Ticks, their labels and the colour map need no cairo and are built in every configuration;
 * the drawing functions only with RVS_HAVE_CAIRO. */
#ifndef RVS_PLOT_H
#define RVS_PLOT_H

#include <stddef.h>

enum { RVS_PLOT_MAX_TICKS = 48 };

struct rvs_plot_ticks {
    size_t n;
    double value[RVS_PLOT_MAX_TICKS];
    double step;  /* between linear ticks (0 for logarithmic ones) */
    int decimals; /* digits after the point that tell the labels apart */
};

/* Ticks at multiples of a step of 1, 2 or 5 times a power of ten inside [lo, hi] (either order),
 * about `target` of them (at least 2 where the interval allows). A degenerate interval gets the
 * single value. */
void rvs_plot_nice_ticks(double lo, double hi, size_t target, struct rvs_plot_ticks *ticks);

/* Ticks of a logarithmic axis over [lo, hi] (both > 0): `major` at powers of ten, with 2 and 5
 * times them when the interval spans less than two decades; `minor` at the other integers times
 * a power of ten. */
void rvs_plot_log_ticks(double lo, double hi, struct rvs_plot_ticks *major,
                        struct rvs_plot_ticks *minor);

/* A tick label with `decimals` digits after the point (C locale), a typographic minus (U+2212)
 * for negative values and never "-0". */
void rvs_plot_format_tick(double value, int decimals, char *buf, size_t size);

/* The colour of t in [0, 1] (clamped): dark blue through teal and yellow to dark red, rising
 * in lightness to the yellow, so that neighbouring values stay apart in grey too. */
void rvs_plot_colormap(double t, double rgb[3]);

#ifdef RVS_HAVE_CAIRO
#include <cairo.h>

/* A panel: its rectangle in pixels and the data range it shows. xmin > xmax (or ymin > ymax)
 * reverses an axis; logarithmic axes need positive limits. */
struct rvs_plot_axes {
    cairo_t *cr;
    double left, top, width, height;
    double xmin, xmax, ymin, ymax;
    int xlog, ylog;
    double label_margin; /* y tick labels closer than this (pixels) to the panel's bottom are
                          * left out: a panel right above another would mix their labels */
};

/* Data to pixels; a value outside the range maps outside the rectangle. */
double rvs_plot_px(const struct rvs_plot_axes *axes, double x);
double rvs_plot_py(const struct rvs_plot_axes *axes, double y);

/* cairo_save and a clip to the panel's rectangle; rvs_plot_unclip restores. */
void rvs_plot_clip(const struct rvs_plot_axes *axes);
void rvs_plot_unclip(const struct rvs_plot_axes *axes);

/* The panel's frame. */
void rvs_plot_frame(const struct rvs_plot_axes *axes);

/* Ticks (outside the frame) on the bottom axis, with their labels when `labels`, and `title`
 * centred under them (NULL for none). About `target` ticks on a linear axis. */
void rvs_plot_xaxis(const struct rvs_plot_axes *axes, size_t target, int labels,
                    const char *title);
/* The same on the left axis, the title turned a quarter. */
void rvs_plot_yaxis(const struct rvs_plot_axes *axes, size_t target, int labels,
                    const char *title);

/* A polyline through (x[i], y[i]); it breaks at non-finite points and where skip[i] != 0
 * (skip may be NULL). The caller sets colour and width. */
void rvs_plot_polyline(const struct rvs_plot_axes *axes, const double *x, const float *y,
                       size_t n, const unsigned char *skip);
/* The region between lo[i] and hi[i], filled run by run (breaks as rvs_plot_polyline). */
void rvs_plot_band(const struct rvs_plot_axes *axes, const double *x, const float *lo,
                   const float *hi, size_t n, const unsigned char *skip);
/* A vertical strip over x in [x0, x1], the panel's whole height. */
void rvs_plot_xspan(const struct rvs_plot_axes *axes, double x0, double x1);
/* A horizontal line at y across the panel. */
void rvs_plot_hline(const struct rvs_plot_axes *axes, double y);

/* Horizontal anchor of text: left, centre or right at x; vertical: the baseline at y, or the
 * text's top or middle at y. */
enum rvs_plot_halign { RVS_PLOT_LEFT, RVS_PLOT_CENTER, RVS_PLOT_RIGHT };
enum rvs_plot_valign { RVS_PLOT_BASELINE, RVS_PLOT_TOP, RVS_PLOT_MIDDLE };

/* Text in DejaVu Sans of `size` pixels (bold when `bold`), turned by `angle` radians about the
 * anchor; returns its advance width in pixels. The caller sets the colour. */
double rvs_plot_text(cairo_t *cr, double x, double y, const char *text, double size, int bold,
                     enum rvs_plot_halign h, enum rvs_plot_valign v, double angle);

/* A filled circle (fill) or a ring at (px, py) pixels, radius r. */
void rvs_plot_marker(cairo_t *cr, double px, double py, double r, int fill);

#endif /* RVS_HAVE_CAIRO */

#endif
