/* train/report.c: where the emulation error of the held-out spectra comes from. Given the
 * per-pixel error |exp(pred - true) - 1| of each held-out spectrum, tabulates its median and
 * 99th percentile in bins of each stellar parameter, in wavelength regions and in a Teff x log g
 * grid, with the share of the pixels above the overall 99th percentile that fall in each bin
 * (against the bin's share of all pixels), and lists the worst spectra. rvsfit-cl-train prints
 * it at the end of training (and writes it with --report); doc/trainer.md shows an example. */
#include <config.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/internal.h"
#include "rvsfit/train_io.h"

/* k-th smallest of v[0..n-1] (0-based), partially reordering v (Hoare's selection). */
static float select_kth(float *v, size_t n, size_t k)
{
    size_t lo = 0, hi = n - 1;
    while (lo < hi) {
        float pivot = v[lo + (hi - lo) / 2];
        size_t i = lo, j = hi;
        for (;;) {
            while (v[i] < pivot)
                i++;
            while (v[j] > pivot)
                j--;
            if (i >= j)
                break;
            float t = v[i];
            v[i] = v[j];
            v[j] = t;
            i++;
            j--;
        }
        /* v[lo..j] <= pivot <= v[j+1..hi] */
        if (k <= j)
            hi = j;
        else
            lo = j + 1;
    }
    return v[k];
}

double rvs_train_quantile(float *v, size_t n, double q)
{
    if (n == 0)
        return NAN;
    double pos = q * (double)(n - 1);
    size_t i = (size_t)pos;
    double a = select_kth(v, n, i);
    if (i + 1 >= n || pos == (double)i)
        return a;
    /* the next order statistic is the smallest of the part above i */
    float b = v[i + 1];
    for (size_t j = i + 2; j < n; j++)
        if (v[j] < b)
            b = v[j];
    return a + (pos - (double)i) * ((double)b - a);
}

/* Bin edges of a parameter: physical ones for the names rvspecfit uses, else six equal-width
 * bins over the values. Returns the number of bins (edges has nbins + 1 entries). */
static size_t param_edges(const char *name, double vmin, double vmax, double *edges)
{
    static const double teff[] = {3000, 3500, 4000, 4500, 5000, 5500, 6000, 7000, 8500, 10000,
                                  12500};
    static const double logg[] = {0, 1, 2, 3, 4, 4.5, 5, 6};
    static const double feh[] = {-4.5, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1};
    static const double alpha[] = {-0.5, -0.2, 0, 0.2, 0.4, 0.6, 0.8, 1.2};
    const double *e = NULL;
    size_t n = 0;
    if (strcmp(name, "teff") == 0) {
        e = teff;
        n = sizeof teff / sizeof teff[0];
    } else if (strcmp(name, "logg") == 0) {
        e = logg;
        n = sizeof logg / sizeof logg[0];
    } else if (strcmp(name, "feh") == 0) {
        e = feh;
        n = sizeof feh / sizeof feh[0];
    } else if (strcmp(name, "alpha") == 0) {
        e = alpha;
        n = sizeof alpha / sizeof alpha[0];
    }
    if (e) {
        memcpy(edges, e, n * sizeof *e);
        return n - 1;
    }
    for (size_t i = 0; i <= 6; i++)
        edges[i] = vmin + (vmax - vmin) * (double)i / 6.0;
    return 6;
}

/* Bin of value x (values outside the edges go to the first or last bin). */
static size_t bin_of(const double *edges, size_t nbins, double x)
{
    size_t b = 0;
    while (b + 1 < nbins && x >= edges[b + 1])
        b++;
    return b;
}

#define REPORT_MAX_BINS 16
#define REPORT_WAVE_BINS 12
#define REPORT_WORST 10

struct bin_stats {
    size_t nspec, npix, ntop;
    double median, p99;
};

/* Median and 99th percentile of the pixels pix_lo..pix_hi-1 of the spectra selected by spec_in
 * (NULL: all), and how many of them exceed the overall threshold `top`; buf holds them all. */
static void stats_of(const float *err, size_t count, size_t npix, const unsigned char *spec_in,
                     size_t pix_lo, size_t pix_hi, double top, float *buf, struct bin_stats *st)
{
    size_t m = 0, ntop = 0, nspec = 0;
    for (size_t i = 0; i < count; i++) {
        if (spec_in && !spec_in[i])
            continue;
        nspec++;
        for (size_t j = pix_lo; j < pix_hi; j++) {
            float e = err[i * npix + j];
            buf[m++] = e;
            ntop += e > top;
        }
    }
    st->nspec = nspec;
    st->npix = m;
    st->ntop = ntop;
    st->median = m ? rvs_train_quantile(buf, m, 0.5) : NAN;
    st->p99 = m ? rvs_train_quantile(buf, m, 0.99) : NAN;
}

static void print_row(FILE *out, const char *label, size_t n, const struct bin_stats *st,
                      size_t ntop_all, size_t npix_all)
{
    if (st->npix == 0) {
        fprintf(out, "  %-20s %7zu        -        -       -       -\n", label, n);
        return;
    }
    fprintf(out, "  %-20s %7zu %7.3f%% %7.2f%% %6.1f%% %6.1f%%\n", label, n, 100 * st->median,
            100 * st->p99, ntop_all ? 100.0 * (double)st->ntop / (double)ntop_all : 0.0,
            100.0 * (double)st->npix / (double)npix_all);
}

struct worst {
    size_t i;
    double p99, max;
};

static int cmp_worst(const void *a, const void *b)
{
    double x = ((const struct worst *)a)->p99, y = ((const struct worst *)b)->p99;
    return x < y ? 1 : x > y ? -1 : 0;
}

int rvs_train_error_report(FILE *out, const struct rvs_train_grid *g, const size_t *rows,
                           size_t count, const float *err, const char *what)
{
    int status = RVS_OK;
    size_t npix = g->npix, P = g->nparam, total = count * npix;
    float *buf = rvs_malloc((total ? total : 1) * sizeof *buf);
    unsigned char *in = rvs_malloc(count ? count : 1);
    size_t *tl_top = NULL;
    struct worst *worst = rvs_malloc((count ? count : 1) * sizeof *worst);
    if (!buf || !in || !worst) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    if (count == 0 || npix == 0) {
        fprintf(out, "no %s spectra: no error report\n", what);
        goto cleanup;
    }
    memcpy(buf, err, total * sizeof *buf);
    double median = rvs_train_quantile(buf, total, 0.5);
    memcpy(buf, err, total * sizeof *buf);
    double top = rvs_train_quantile(buf, total, 0.99);
    size_t ntop = 0;
    for (size_t k = 0; k < total; k++)
        ntop += err[k] > top;
    fprintf(out,
            "emulation error |dflux|/flux of %zu %s spectra x %zu pixels: median %.3f%%, 99th "
            "percentile %.2f%%\n"
            "by region: median and 99th percentile of the region's pixels; top1 = its share of "
            "the %zu pixels above the overall 99th percentile; all = its share of all pixels\n",
            count, what, npix, 100 * median, 100 * top, ntop);

    /* parameters */
    double edges[RVS_NN_MAX_INPUTS][REPORT_MAX_BINS + 1];
    size_t nb[RVS_NN_MAX_INPUTS];
    for (size_t p = 0; p < P; p++) {
        double vmin = INFINITY, vmax = -INFINITY;
        for (size_t i = 0; i < count; i++) {
            double x = g->params[rows[i] * P + p];
            vmin = fmin(vmin, x);
            vmax = fmax(vmax, x);
        }
        nb[p] = param_edges(g->names[p], vmin, vmax, edges[p]);
        fprintf(out, "%-22s spectra   median      p99    top1     all\n", g->names[p]);
        for (size_t b = 0; b < nb[p]; b++) {
            size_t n = 0;
            for (size_t i = 0; i < count; i++) {
                in[i] = bin_of(edges[p], nb[p], g->params[rows[i] * P + p]) == b;
                n += in[i];
            }
            struct bin_stats st;
            stats_of(err, count, npix, in, 0, npix, top, buf, &st);
            char label[64];
            snprintf(label, sizeof label, "%g .. %g", edges[p][b], edges[p][b + 1]);
            print_row(out, label, n, &st, ntop, total);
        }
    }

    /* wavelength regions */
    fprintf(out, "%-22s  pixels   median      p99    top1     all\n", "wavelength [A]");
    for (size_t b = 0; b < REPORT_WAVE_BINS; b++) {
        size_t lo = npix * b / REPORT_WAVE_BINS, hi = npix * (b + 1) / REPORT_WAVE_BINS;
        if (hi <= lo)
            continue;
        struct bin_stats st;
        stats_of(err, count, npix, NULL, lo, hi, top, buf, &st);
        char label[64];
        snprintf(label, sizeof label, "%.0f .. %.0f", g->wave[lo], g->wave[hi - 1]);
        print_row(out, label, hi - lo, &st, ntop, total);
    }

    /* Teff x log g: share of the pixels above the overall 99th percentile */
    size_t pt = P, pg = P;
    for (size_t p = 0; p < P; p++) {
        if (strcmp(g->names[p], "teff") == 0)
            pt = p;
        if (strcmp(g->names[p], "logg") == 0)
            pg = p;
    }
    if (pt < P && pg < P) {
        tl_top = rvs_calloc(nb[pt] * nb[pg] * 2, sizeof *tl_top);
        if (!tl_top) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        size_t *tl_spec = tl_top + nb[pt] * nb[pg];
        for (size_t i = 0; i < count; i++) {
            size_t bt = bin_of(edges[pt], nb[pt], g->params[rows[i] * P + pt]);
            size_t bg = bin_of(edges[pg], nb[pg], g->params[rows[i] * P + pg]);
            size_t n = 0;
            for (size_t j = 0; j < npix; j++)
                n += err[i * npix + j] > top;
            tl_top[bt * nb[pg] + bg] += n;
            tl_spec[bt * nb[pg] + bg]++;
        }
        fprintf(out, "share of the pixels above the 99th percentile [%%] (spectra), Teff rows x "
                "log g columns\n%-14s", "teff \\ logg");
        for (size_t bg = 0; bg < nb[pg]; bg++) {
            char label[32];
            snprintf(label, sizeof label, "%g..%g", edges[pg][bg], edges[pg][bg + 1]);
            fprintf(out, " %12s", label);
        }
        fputc('\n', out);
        for (size_t bt = 0; bt < nb[pt]; bt++) {
            char label[32];
            snprintf(label, sizeof label, "%g..%g", edges[pt][bt], edges[pt][bt + 1]);
            fprintf(out, "%-14s", label);
            for (size_t bg = 0; bg < nb[pg]; bg++) {
                size_t k = bt * nb[pg] + bg;
                if (tl_spec[k] == 0)
                    fprintf(out, " %12s", "-");
                else
                    fprintf(out, "  %5.1f (%4zu)", 100.0 * (double)tl_top[k] / (double)ntop,
                            tl_spec[k]);
            }
            fputc('\n', out);
        }
    }

    /* the worst spectra */
    for (size_t i = 0; i < count; i++) {
        memcpy(buf, err + i * npix, npix * sizeof *buf);
        float mx = 0.0f;
        for (size_t j = 0; j < npix; j++)
            mx = buf[j] > mx ? buf[j] : mx;
        worst[i].i = i;
        worst[i].max = mx;
        worst[i].p99 = rvs_train_quantile(buf, npix, 0.99);
    }
    qsort(worst, count, sizeof *worst, cmp_worst);
    fprintf(out, "worst %s spectra (by their own 99th percentile):\n", what);
    for (size_t k = 0; k < count && k < REPORT_WORST; k++) {
        size_t i = worst[k].i;
        fprintf(out, " ");
        for (size_t p = 0; p < P; p++)
            fprintf(out, " %s %-7.4g", g->names[p], g->params[rows[i] * P + p]);
        fprintf(out, "  p99 %6.2f%%  max %7.2f%%  (grid row %zu)\n", 100 * worst[k].p99,
                100 * worst[k].max, rows[i]);
    }
cleanup:
    free(buf);
    free(in);
    free(tl_top);
    free(worst);
    return status;
}
