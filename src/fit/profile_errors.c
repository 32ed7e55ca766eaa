/* fit/profile_errors.c: the errors of (teff, logg, feh, alpha) under the flat prior over the
 * training box, for a batch (issue 24, parts 2 and 3).
 *
 * First every target gets the Gauss-Newton Gaussian cut to the box (src/fit/box_errors.c, on
 * the host's cores). That is exact while the likelihood is Gaussian over the range the box
 * leaves, which fails where it matters most: a hot metal-poor star at S/N 5-10 has a [Fe/H]
 * likelihood flat from -4 up to where its few metal lines would show (~ -1.5) and steep above,
 * so the Gaussian of its curvature at the optimum (1-2 dex wide) spreads over the metal-rich
 * part of the box that the data exclude. Realistic 5000-target mock: such stars' FEH pulls had
 * a width of 0.53-0.60 (errors almost twice too large).
 *
 * So where a parameter's Gaussian is wide (sigma > RVS_PROFILE_MIN_FRACTION of its range) and
 * meets an edge of the box, the likelihood itself is scanned along it: RVS_PROFILE_POINTS
 * points across [mode - 5 sigma, mode + 5 sigma] within the box, the other parameters (v and
 * vsini included) following the Gaussian's regression on it (its profile path: the maximum of
 * the Gaussian at each value), held in the box. The error is the root mean square distance of
 * the scanned parameter from the optimum under exp(-(-2 log L - its minimum) / 2) on that grid:
 * the flat prior's posterior along the profile. One engine call for the batch (plain
 * evaluations: ~16 per scanned parameter). */
#include <config.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fit/fit_internal.h"
#include "base/internal.h"

#define RVS_PROFILE_POINTS 16
#define RVS_PROFILE_HALF_WIDTH 5.0    /* sigma */
#define RVS_PROFILE_MIN_FRACTION 0.05 /* of the range: narrower Gaussians are left to the cut */
#define RVS_PROFILE_INSIDE_SIGMA 4.0  /* as RVS_BOX_INSIDE_SIGMA */
#define RVS_PROFILE_BAD 1e29          /* objective values from here up: the bad values (1e30) */

enum { ND = RVS_FIT_NDIM };

/* the box errors of one share of the batch */
struct box_job {
    const struct rvs_fitter *f;
    const struct rvs_fit_point *pt;
    double (*cov)[ND][ND];
    double (*err)[4];
    long long *bits;
    size_t n;
};

/* The standard deviation of the flat prior over the box along parameter k: range / sqrt(12). */
static double prior_sigma(const struct rvs_fitter *f, int k)
{
    return (f->prior_hi[k] - f->prior_lo[k]) / sqrt(12.0);
}

static void box_share(void *arg, size_t k, size_t nshares)
{
    struct box_job *j = arg;
    const struct rvs_fitter *f = j->f;
    for (size_t i = k * j->n / nshares; i < (k + 1) * j->n / nshares; i++) {
        double c4[4][4];
        long long bits = 0;
        for (int a = 0; a < 4; a++) {
            if (!(j->err[i][a] <= prior_sigma(f, a)))
                bits |= 1LL << a;
            for (int b = 0; b < 4; b++)
                c4[a][b] = j->cov[i][2 + a][2 + b];
        }
        /* without a usable covariance an error wider than the prior's, or none, is the prior's */
        if (!rvs_fit_box_errors(j->pt[i].th, c4, f->prior_lo, f->prior_hi, j->err[i]))
            for (int a = 0; a < 4; a++)
                if (!(j->err[i][a] <= prior_sigma(f, a)))
                    j->err[i][a] = prior_sigma(f, a);
        j->bits[i] = bits;
    }
}

/* Whether parameter k of point p with covariance c gets a scan. */
static int wants_scan(const struct rvs_fitter *f, const struct rvs_fit_point *p,
                      const double c[ND][ND], int k)
{
    double s = sqrt(c[2 + k][2 + k]), lo = f->prior_lo[k], hi = f->prior_hi[k];
    if (!(s > RVS_PROFILE_MIN_FRACTION * (hi - lo)) || !isfinite(s))
        return 0;
    return p->th[k] - RVS_PROFILE_INSIDE_SIGMA * s < lo ||
           p->th[k] + RVS_PROFILE_INSIDE_SIGMA * s > hi;
}

/* The grid value j of parameter k's scan and the point there on the Gaussian's profile path. */
static double scan_point(const struct rvs_fitter *f, const struct rvs_fit_point *p,
                         const double c[ND][ND], int k, int j, struct rvs_fit_point *q)
{
    double s = sqrt(c[2 + k][2 + k]);
    double a = fmax(f->prior_lo[k], p->th[k] - RVS_PROFILE_HALF_WIDTH * s);
    double b = fmin(f->prior_hi[k], p->th[k] + RVS_PROFILE_HALF_WIDTH * s);
    double t = a + (j + 0.5) * (b - a) / RVS_PROFILE_POINTS, d = t - p->th[k];
    *q = *p;
    double x[ND] = {p->v, p->vsini, p->th[0], p->th[1], p->th[2], p->th[3]};
    for (int o = 0; o < ND; o++)
        x[o] += c[o][2 + k] / c[2 + k][2 + k] * d;
    x[2 + k] = t;
    q->v = fmin(fmax(x[0], f->cfg.min_vel), f->cfg.max_vel);
    q->vsini = fmin(fmax(x[1], 0), f->cfg.max_vsini);
    for (int o = 0; o < 4; o++)
        q->th[o] = fmin(fmax(x[2 + o], f->prior_lo[o]), f->prior_hi[o]);
    return t;
}

double rvs_fit_scan_rms(const double *t, const double *val, size_t n, double mode, double ref)
{
    double sw = 0, sd = 0;
    for (size_t j = 0; j < n; j++) {
        double dv = val[j] - ref;
        if (!isfinite(dv) || val[j] >= RVS_PROFILE_BAD)
            continue; /* a bad point (bounds, no coverage) weighs nothing */
        double w = exp(-0.5 * dv), d = t[j] - mode;
        sw += w;
        sd += w * d * d;
    }
    return sw > 0 && isfinite(ref) ? sqrt(sd / sw) : NAN;
}

/* One scan: target i's parameter k; its grid's objective values start at val[at], its optimum's
 * at val[ref] (one per target, shared by its scans). */
struct scan {
    size_t i, at, ref;
    int k;
};

int rvs_fit_prior_errors(struct rvs_fitter *f, const struct rvs_fit_point *pt, size_t n,
                         double (*cov)[RVS_FIT_NDIM][RVS_FIT_NDIM], double (*err)[4],
                         long long *bits)
{
    int status = RVS_OK;
    struct scan *sc = NULL;
    struct rvs_fit_point *q = NULL;
    double *val = NULL, *grid = NULL;
    if (n == 0)
        return RVS_OK;
    struct box_job job = {f, pt, cov, err, bits, n};
    rvs_parallel_run(rvs_parallel_threads(n, 64, 0), box_share, &job);

    /* the scans: per target with any, its optimum, then RVS_PROFILE_POINTS per parameter */
    size_t nscan = 0, npts = 0;
    for (size_t i = 0; i < n; i++) {
        int any = 0;
        for (int k = 0; k < 4; k++)
            if (wants_scan(f, &pt[i], cov[i], k)) {
                nscan++;
                any = 1;
            }
        npts += (size_t)any;
    }
    if (nscan == 0)
        return RVS_OK;
    npts += nscan * RVS_PROFILE_POINTS;
    sc = rvs_malloc(nscan * sizeof *sc);
    q = rvs_malloc(npts * sizeof *q);
    val = rvs_malloc(npts * sizeof *val);
    grid = rvs_malloc(npts * sizeof *grid); /* the scanned parameter's value at each point */
    if (!sc || !q || !val || !grid) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    size_t m = 0, ns = 0;
    for (size_t i = 0; i < n; i++) {
        size_t ref = m;
        for (int k = 0; k < 4; k++) {
            if (!wants_scan(f, &pt[i], cov[i], k))
                continue;
            if (m == ref) {
                grid[m] = NAN; /* not a grid point */
                q[m++] = pt[i]; /* the optimum, evaluated as the scan is */
            }
            sc[ns++] = (struct scan){i, m, ref, k};
            for (int j = 0; j < RVS_PROFILE_POINTS; j++, m++)
                grid[m] = scan_point(f, &pt[i], cov[i], k, j, &q[m]);
        }
    }
    RVS_TRY(rvs_fit_objective(f, q, npts, RVS_FIT_OPTIMIZER, val, NULL));
    /* per target (its scans are consecutive and share ref): -2 log L's minimum over its
     * points, the optimum or lower where a scan found it, then each scan's error */
    for (size_t g0 = 0, g1; g0 < nscan; g0 = g1) {
        for (g1 = g0 + 1; g1 < nscan && sc[g1].ref == sc[g0].ref; g1++)
            ;
        double best = val[sc[g0].ref];
        for (size_t u = sc[g0].ref; u < sc[g1 - 1].at + RVS_PROFILE_POINTS; u++)
            if (val[u] < best && val[u] < RVS_PROFILE_BAD)
                best = val[u];
        for (size_t r = g0; r < g1; r++) {
            double e = rvs_fit_scan_rms(grid + sc[r].at, val + sc[r].at, RVS_PROFILE_POINTS,
                                        pt[sc[r].i].th[sc[r].k], best);
            if (isfinite(e))
                err[sc[r].i][sc[r].k] = e;
        }
    }
    f->prof.profile_scans += nscan;
cleanup:
    free(sc);
    free(q);
    free(val);
    free(grid);
    return status;
}
