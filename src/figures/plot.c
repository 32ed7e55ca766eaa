/* plot.c: the 2-D plotting layer of the --doplot figures (plot.h): nice tick values, tick labels,
 * the colour map, and, with cairo, axes, lines that break at gaps, bands, markers and text.
 *
 * cairo's drawing calls return nothing: an error sticks in the cairo_t and every later call does
 * nothing, so the figures check cairo_status once per figure before writing it (src/figures/figures.c). */
#include <config.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "figures/plot.h"

/* ------------------------------------------------------------------ ticks */

/* 1, 2, 5 or 10 times `magnitude`, whichever is nearest to raw (geometrically). */
static double nice_step(double raw)
{
    double magnitude = pow(10.0, floor(log10(raw)));
    double r = raw / magnitude;
    double nice = r < 1.4142 ? 1 : r < 3.1623 ? 2 : r < 7.0711 ? 5 : 10;
    return nice * magnitude;
}

/* The next smaller step of the 1-2-5 sequence. */
static double smaller_step(double step)
{
    double magnitude = pow(10.0, floor(log10(step) + 1e-9));
    double r = step / magnitude;
    if (r > 4.5)
        return 2 * magnitude;
    if (r > 1.5)
        return magnitude;
    return 0.5 * magnitude;
}

static int decimals_for(double step)
{
    int d = -(int)floor(log10(step) + 1e-9);
    return d > 0 ? d : 0;
}

static void fill_linear(double lo, double hi, double step, struct rvs_plot_ticks *t)
{
    t->n = 0;
    t->step = step;
    t->decimals = decimals_for(step);
    double first = ceil(lo / step - 1e-9);
    for (double k = first; t->n < RVS_PLOT_MAX_TICKS; k += 1) {
        double v = k * step; /* from the index, so that no rounding error accumulates */
        if (v > hi + 1e-9 * step)
            break;
        if (fabs(v) < 1e-9 * step)
            v = 0;
        t->value[t->n++] = v;
    }
}

void rvs_plot_nice_ticks(double lo, double hi, size_t target, struct rvs_plot_ticks *ticks)
{
    memset(ticks, 0, sizeof *ticks);
    if (!isfinite(lo) || !isfinite(hi))
        return;
    if (lo > hi) {
        double t = lo;
        lo = hi;
        hi = t;
    }
    if (hi - lo <= 1e-12 * fmax(fabs(lo), fabs(hi)) || hi == lo) {
        ticks->n = 1;
        ticks->value[0] = lo;
        ticks->decimals = lo == floor(lo) ? 0 : 2;
        return;
    }
    if (target < 2)
        target = 2;
    double step = nice_step((hi - lo) / (double)target);
    fill_linear(lo, hi, step, ticks);
    /* a narrow interval between two ticks of the chosen step: go down the 1-2-5 sequence */
    for (int tries = 0; tries < 4 && ticks->n < 2; tries++) {
        step = smaller_step(step);
        fill_linear(lo, hi, step, ticks);
    }
    /* more than the table holds (a target beyond it): a coarser step */
    while (ticks->n == RVS_PLOT_MAX_TICKS && ticks->value[ticks->n - 1] < hi - step) {
        step = nice_step(step * 2.5);
        fill_linear(lo, hi, step, ticks);
    }
}

void rvs_plot_log_ticks(double lo, double hi, struct rvs_plot_ticks *major,
                        struct rvs_plot_ticks *minor)
{
    memset(major, 0, sizeof *major);
    memset(minor, 0, sizeof *minor);
    if (!(lo > 0) || !(hi > 0) || !isfinite(lo) || !isfinite(hi))
        return;
    if (lo > hi) {
        double t = lo;
        lo = hi;
        hi = t;
    }
    double span = log10(hi) - log10(lo);
    int d0 = (int)floor(log10(lo)), d1 = (int)ceil(log10(hi));
    for (int d = d0; d <= d1; d++) {
        for (int m = 1; m <= 9; m++) {
            double v = m * pow(10.0, d);
            if (v < lo * (1 - 1e-9) || v > hi * (1 + 1e-9))
                continue;
            int is_major = m == 1 || (span < 2 && (m == 2 || m == 5));
            struct rvs_plot_ticks *t = is_major ? major : minor;
            if (t->n < RVS_PLOT_MAX_TICKS)
                t->value[t->n++] = v;
        }
    }
    if (major->n < 2) {
        /* less than a decade between 1-2-5 values: linear ticks read better */
        rvs_plot_nice_ticks(lo, hi, 4, major);
        minor->n = 0;
        return;
    }
    double smallest = major->value[0];
    major->decimals = decimals_for(smallest);
}

void rvs_plot_format_tick(double value, int decimals, char *buf, size_t size)
{
    char text[64];
    if (decimals < 0)
        decimals = 0;
    if (decimals > 12)
        decimals = 12;
    snprintf(text, sizeof text, "%.*f", decimals, value);
    const char *digits = text;
    int negative = text[0] == '-';
    if (negative) {
        digits = text + 1;
        /* "-0", "-0.00": the value rounds to zero, which has no sign */
        if (strspn(digits, "0.") == strlen(digits))
            negative = 0;
    }
    snprintf(buf, size, "%s%s", negative ? "\xe2\x88\x92" : "", digits);
}

/* ------------------------------------------------------------------ colour map */

void rvs_plot_colormap(double t, double rgb[3])
{
    /* anchors: dark violet-blue, blue, teal, yellow, dark red */
    static const double anchors[5][3] = {{0.19, 0.07, 0.42},
                                         {0.13, 0.40, 0.75},
                                         {0.15, 0.68, 0.57},
                                         {0.93, 0.80, 0.22},
                                         {0.72, 0.11, 0.11}};
    if (!isfinite(t))
        t = 0.5;
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    double s = t * 4;
    int i = (int)floor(s);
    if (i >= 4)
        i = 3;
    double f = s - i;
    for (int c = 0; c < 3; c++)
        rgb[c] = anchors[i][c] * (1 - f) + anchors[i + 1][c] * f;
}

#ifdef RVS_HAVE_CAIRO

/* ------------------------------------------------------------------ axes */

static double fraction(double v, double lo, double hi, int logarithmic)
{
    if (logarithmic) {
        v = v > 0 ? log10(v) : -HUGE_VAL;
        lo = log10(lo);
        hi = log10(hi);
    }
    return (v - lo) / (hi - lo);
}

double rvs_plot_px(const struct rvs_plot_axes *a, double x)
{
    return a->left + a->width * fraction(x, a->xmin, a->xmax, a->xlog);
}

double rvs_plot_py(const struct rvs_plot_axes *a, double y)
{
    return a->top + a->height * (1 - fraction(y, a->ymin, a->ymax, a->ylog));
}

void rvs_plot_clip(const struct rvs_plot_axes *a)
{
    cairo_save(a->cr);
    cairo_rectangle(a->cr, a->left, a->top, a->width, a->height);
    cairo_clip(a->cr);
}

void rvs_plot_unclip(const struct rvs_plot_axes *a)
{
    cairo_restore(a->cr);
}

/* A 1-pixel line drawn on pixel centres, so that it stays sharp. */
static double crisp(double v)
{
    return floor(v) + 0.5;
}

void rvs_plot_frame(const struct rvs_plot_axes *a)
{
    cairo_t *cr = a->cr;
    cairo_save(cr);
    cairo_set_source_rgb(cr, 0, 0, 0);
    cairo_set_line_width(cr, 1);
    cairo_rectangle(cr, crisp(a->left), crisp(a->top), floor(a->width), floor(a->height));
    cairo_stroke(cr);
    cairo_restore(cr);
}

enum { TICK_LABEL_SIZE = 13, AXIS_TITLE_SIZE = 15 };

/* The axis' ticks: major (with labels) and, on logarithmic axes, minor ones. */
static void axis_ticks(double lo, double hi, int logarithmic, size_t target,
                       struct rvs_plot_ticks *major, struct rvs_plot_ticks *minor)
{
    if (logarithmic) {
        rvs_plot_log_ticks(lo, hi, major, minor);
    } else {
        rvs_plot_nice_ticks(lo, hi, target, major);
        minor->n = 0;
    }
}

/* A label of a tick: logarithmic axes give each value the decimals it needs (0.1, 1, 10). */
static void tick_label(double v, const struct rvs_plot_ticks *t, int logarithmic, char *buf,
                       size_t size)
{
    int decimals = t->decimals;
    if (logarithmic && t->step == 0) {
        decimals = -(int)floor(log10(v) + 1e-9);
        if (decimals < 0)
            decimals = 0;
    }
    rvs_plot_format_tick(v, decimals, buf, size);
}

/* Width in pixels of the widest label of `t`. */
static double widest_label(cairo_t *cr, const struct rvs_plot_ticks *t, int logarithmic)
{
    double widest = 0;
    cairo_text_extents_t te;
    cairo_select_font_face(cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr, TICK_LABEL_SIZE);
    for (size_t i = 0; i < t->n; i++) {
        char text[64];
        tick_label(t->value[i], t, logarithmic, text, sizeof text);
        cairo_text_extents(cr, text, &te);
        widest = fmax(widest, te.x_advance);
    }
    return widest;
}

void rvs_plot_xaxis(const struct rvs_plot_axes *a, size_t target, int labels, const char *title)
{
    cairo_t *cr = a->cr;
    struct rvs_plot_ticks major, minor;
    axis_ticks(a->xmin, a->xmax, a->xlog, target, &major, &minor);
    /* fewer ticks while neighbouring labels would touch (long labels on a narrow axis) */
    while (labels && !a->xlog && target > 2 && major.n > 1 &&
           widest_label(cr, &major, 0) + 14 >
               fabs(rvs_plot_px(a, major.value[1]) - rvs_plot_px(a, major.value[0]))) {
        target--;
        axis_ticks(a->xmin, a->xmax, a->xlog, target, &major, &minor);
    }
    double bottom = crisp(a->top + a->height);
    cairo_save(cr);
    cairo_set_source_rgb(cr, 0, 0, 0);
    cairo_set_line_width(cr, 1);
    for (int pass = 0; pass < 2; pass++) {
        const struct rvs_plot_ticks *t = pass ? &minor : &major;
        for (size_t i = 0; i < t->n; i++) {
            double px = rvs_plot_px(a, t->value[i]);
            if (px < a->left - 0.5 || px > a->left + a->width + 0.5)
                continue;
            cairo_move_to(cr, crisp(px), bottom);
            cairo_line_to(cr, crisp(px), bottom + (pass ? 3 : 6));
        }
    }
    cairo_stroke(cr);
    if (labels) {
        for (size_t i = 0; i < major.n; i++) {
            double px = rvs_plot_px(a, major.value[i]);
            if (px < a->left - 0.5 || px > a->left + a->width + 0.5)
                continue;
            char text[64];
            tick_label(major.value[i], &major, a->xlog, text, sizeof text);
            rvs_plot_text(cr, px, bottom + 9, text, TICK_LABEL_SIZE, 0, RVS_PLOT_CENTER,
                          RVS_PLOT_TOP, 0);
        }
    }
    if (title)
        rvs_plot_text(cr, a->left + a->width / 2, bottom + (labels ? 30 : 10), title,
                      AXIS_TITLE_SIZE, 0, RVS_PLOT_CENTER, RVS_PLOT_TOP, 0);
    cairo_restore(cr);
}

void rvs_plot_yaxis(const struct rvs_plot_axes *a, size_t target, int labels, const char *title)
{
    cairo_t *cr = a->cr;
    struct rvs_plot_ticks major, minor;
    axis_ticks(a->ymin, a->ymax, a->ylog, target, &major, &minor);
    double left = crisp(a->left);
    double widest = 0;
    cairo_save(cr);
    cairo_set_source_rgb(cr, 0, 0, 0);
    cairo_set_line_width(cr, 1);
    for (int pass = 0; pass < 2; pass++) {
        const struct rvs_plot_ticks *t = pass ? &minor : &major;
        for (size_t i = 0; i < t->n; i++) {
            double py = rvs_plot_py(a, t->value[i]);
            if (py < a->top - 0.5 || py > a->top + a->height + 0.5)
                continue;
            cairo_move_to(cr, left, crisp(py));
            cairo_line_to(cr, left - (pass ? 3 : 6), crisp(py));
        }
    }
    cairo_stroke(cr);
    if (labels) {
        for (size_t i = 0; i < major.n; i++) {
            double py = rvs_plot_py(a, major.value[i]);
            if (py < a->top - 0.5 || py > a->top + a->height + 0.5 ||
                py > a->top + a->height - a->label_margin)
                continue;
            char text[64];
            tick_label(major.value[i], &major, a->ylog, text, sizeof text);
            double w = rvs_plot_text(cr, left - 9, py, text, TICK_LABEL_SIZE, 0, RVS_PLOT_RIGHT,
                                     RVS_PLOT_MIDDLE, 0);
            widest = fmax(widest, w);
        }
    }
    if (title)
        rvs_plot_text(cr, left - 9 - widest - 8, a->top + a->height / 2, title, AXIS_TITLE_SIZE,
                      0, RVS_PLOT_CENTER, RVS_PLOT_BASELINE, -M_PI / 2);
    cairo_restore(cr);
}

/* ------------------------------------------------------------------ data */

static int usable(const double *x, const float *y, const unsigned char *skip, size_t i)
{
    return isfinite(x[i]) && isfinite(y[i]) && !(skip && skip[i]);
}

void rvs_plot_polyline(const struct rvs_plot_axes *a, const double *x, const float *y, size_t n,
                       const unsigned char *skip)
{
    cairo_t *cr = a->cr;
    int drawing = 0;
    cairo_save(cr);
    /* a spectrum has about two points per pixel column: cairo's fast antialiasing strokes such
     * dense lines four times faster than its default, with no difference to see at this width
     * (measured on the example's figures) */
    cairo_set_antialias(cr, CAIRO_ANTIALIAS_FAST);
    cairo_new_path(cr);
    for (size_t i = 0; i < n; i++) {
        if (!usable(x, y, skip, i)) {
            drawing = 0;
            continue;
        }
        double px = rvs_plot_px(a, x[i]), py = rvs_plot_py(a, y[i]);
        if (drawing)
            cairo_line_to(cr, px, py);
        else
            cairo_move_to(cr, px, py);
        drawing = 1;
    }
    cairo_stroke(cr);
    cairo_restore(cr);
}

void rvs_plot_band(const struct rvs_plot_axes *a, const double *x, const float *lo,
                   const float *hi, size_t n, const unsigned char *skip)
{
    cairo_t *cr = a->cr;
    cairo_save(cr);
    cairo_set_antialias(cr, CAIRO_ANTIALIAS_FAST); /* as dense as the polylines */
    cairo_new_path(cr);
    size_t i = 0;
    while (i < n) {
        while (i < n && !(usable(x, lo, skip, i) && isfinite(hi[i])))
            i++;
        size_t start = i;
        while (i < n && usable(x, lo, skip, i) && isfinite(hi[i]))
            i++;
        if (i - start < 2)
            continue;
        cairo_move_to(cr, rvs_plot_px(a, x[start]), rvs_plot_py(a, hi[start]));
        for (size_t k = start + 1; k < i; k++)
            cairo_line_to(cr, rvs_plot_px(a, x[k]), rvs_plot_py(a, hi[k]));
        for (size_t k = i; k-- > start;)
            cairo_line_to(cr, rvs_plot_px(a, x[k]), rvs_plot_py(a, lo[k]));
        cairo_close_path(cr);
    }
    cairo_fill(cr);
    cairo_restore(cr);
}

void rvs_plot_xspan(const struct rvs_plot_axes *a, double x0, double x1)
{
    double p0 = rvs_plot_px(a, x0), p1 = rvs_plot_px(a, x1);
    cairo_rectangle(a->cr, fmin(p0, p1), a->top, fabs(p1 - p0), a->height);
    cairo_fill(a->cr);
}

void rvs_plot_hline(const struct rvs_plot_axes *a, double y)
{
    double py = rvs_plot_py(a, y);
    cairo_move_to(a->cr, a->left, py);
    cairo_line_to(a->cr, a->left + a->width, py);
    cairo_stroke(a->cr);
}

/* ------------------------------------------------------------------ text, markers */

double rvs_plot_text(cairo_t *cr, double x, double y, const char *text, double size, int bold,
                     enum rvs_plot_halign h, enum rvs_plot_valign v, double angle)
{
    cairo_text_extents_t te;
    cairo_font_extents_t fe;
    cairo_select_font_face(cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL,
                           bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr, size);
    cairo_text_extents(cr, text, &te);
    cairo_font_extents(cr, &fe);
    double dx = h == RVS_PLOT_LEFT ? 0 : h == RVS_PLOT_CENTER ? -te.x_advance / 2 : -te.x_advance;
    /* the font's ascent rather than this text's: labels side by side share one baseline */
    double dy = v == RVS_PLOT_BASELINE ? 0
                : v == RVS_PLOT_TOP    ? fe.ascent * 0.8
                                       : fe.ascent * 0.36;
    cairo_save(cr);
    cairo_translate(cr, x, y);
    cairo_rotate(cr, angle);
    cairo_move_to(cr, dx, dy);
    cairo_show_text(cr, text);
    cairo_restore(cr);
    return te.x_advance;
}

void rvs_plot_marker(cairo_t *cr, double px, double py, double r, int fill)
{
    cairo_new_sub_path(cr);
    cairo_arc(cr, px, py, r, 0, 2 * M_PI);
    if (fill)
        cairo_fill(cr);
    else
        cairo_stroke(cr);
}

#endif /* RVS_HAVE_CAIRO */
