/* velocity.c: the fitter's stages on velocity grids at fixed (theta, vsini): the scan that picks
 * the optimizer's starting velocity (vel_fit.process's first find_best), the brute-force start
 * (vel_fit.firstguess) and the velocity posterior (vel_fit._minimum_sampler over
 * spec_fit.find_best grids). Each round is one engine call for every spectrum still scanning. */
#include <config.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/internal.h"
#include "fit/fit_internal.h"

/* ------------------------------------------------------------------------------------------ */
/* Small helpers */

/* spec_fit._quadratic_interp_min: the vertex of the parabola through the grid minimum and its
 * neighbours (the grid point itself at the ends or when the parabola is not convex inside). */
static double quad_min(const double *x, const double *y, size_t n, size_t i)
{
    if (i == 0 || i + 1 >= n)
        return x[i];
    double x0 = x[i - 1], x1 = x[i], x2 = x[i + 1];
    double y0 = y[i - 1], y1 = y[i], y2 = y[i + 1];
    double d01 = (y1 - y0) / (x1 - x0), d12 = (y2 - y1) / (x2 - x1);
    double a2 = (d12 - d01) / (x2 - x0);
    if (!(a2 > 0))
        return x[i];
    double a1 = d01 - a2 * (x0 + x1);
    double val = -a1 / (2 * a2);
    if (!(val > x0 && val < x2))
        return x[i];
    return val;
}

/* ------------------------------------------------------------------------------------------ */
/* Velocity scans: for each spectrum s in list[0..n), the grid grid[s] of ngrid[s] velocities at
 * fixed (theta, vsini) in one engine call; find_best's outputs per spectrum. */

static int velocity_scan(struct rvs_fitter *f, const size_t *list, size_t n,
                         const struct rvs_fit_point *at, double *const *grid, const size_t *ngrid,
                         struct rvs_fit_scan *res)
{
    int status = RVS_OK;
    struct rvs_fit_point *pts = NULL;
    double *chi = NULL;
    size_t tot = 0;
    for (size_t i = 0; i < n; i++)
        tot += ngrid[i];
    pts = rvs_malloc((tot ? tot : 1) * sizeof *pts);
    chi = rvs_malloc((tot ? tot : 1) * sizeof *chi);
    if (!pts || !chi) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    size_t o = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t g = 0; g < ngrid[i]; g++) {
            pts[o] = at[list[i]];
            pts[o].v = grid[i][g];
            o++;
        }
    RVS_TRY(rvs_fit_objective(f, pts, tot, RVS_FIT_PLAIN, chi, NULL));
    o = 0;
    for (size_t i = 0; i < n; i++) {
        const double *c = chi + o, *vg = grid[i];
        size_t ng = ngrid[i], ib = 0;
        for (size_t g = 1; g < ng; g++)
            if (c[g] < c[ib])
                ib = g;
        struct rvs_fit_scan *r = &res[i];
        r->best_chi = c[ib];
        r->best_vel = quad_min(vg, c, ng, ib);
        double sp = 0, s2 = 0, s3 = 0, s4 = 0;
        for (size_t g = 0; g < ng; g++) {
            double pr = exp(-0.5 * (c[g] - c[ib]));
            if (!isfinite(pr))
                pr = 0;
            sp += pr;
        }
        for (size_t g = 0; g < ng; g++) {
            double pr = exp(-0.5 * (c[g] - c[ib]));
            if (!isfinite(pr))
                pr = 0;
            pr /= sp;
            double d = vg[g] - r->best_vel;
            s2 += pr * d * d;
            s3 += pr * d * d * d;
            s4 += pr * d * d * d * d;
        }
        r->err = sqrt(s2);
        if (r->err < 1e-10) {
            r->skew = 0;
            r->kurt = 0;
        } else {
            r->kurt = s4 / (r->err * r->err * r->err * r->err);
            r->skew = s3 / (r->err * r->err * r->err);
        }
        o += ng;
    }
cleanup:
    free(pts);
    free(chi);
    return status;
}

/* np.arange(start, stop, step) */
static size_t arange(double start, double stop, double step, double **out)
{
    double nd = ceil((stop - start) / step);
    size_t n = nd > 0 ? (size_t)nd : 0;
    *out = rvs_malloc((n ? n : 1) * sizeof(double));
    if (!*out)
        return SIZE_MAX;
    for (size_t i = 0; i < n; i++)
        (*out)[i] = start + (double)i * step;
    return n;
}

/* See fit_internal.h. */
int rvs_fit_start_scan(struct rvs_fitter *f, const size_t *list, size_t n,
                       const struct rvs_fit_point *at, const double *center, double halfwidth,
                       struct rvs_fit_scan *res)
{
    int status = RVS_OK;
    double *vg = NULL, **grids = NULL;
    size_t *ng = NULL;
    size_t nv = arange(f->cfg.min_vel, f->cfg.max_vel, f->cfg.vel_step0, &vg);
    if (nv == SIZE_MAX)
        return RVS_ERR_NOMEM;
    grids = rvs_malloc((n ? n : 1) * sizeof *grids);
    ng = rvs_malloc((n ? n : 1) * sizeof *ng);
    if (!grids || !ng) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++) {
        grids[i] = vg;
        ng[i] = nv;
        if (halfwidth > 0 && center && isfinite(center[list[i]])) {
            size_t lo = 0, hi = nv;
            while (lo < nv && vg[lo] < center[list[i]] - halfwidth)
                lo++;
            while (hi > lo && vg[hi - 1] > center[list[i]] + halfwidth)
                hi--;
            if (hi - lo >= 3) {
                grids[i] = vg + lo;
                ng[i] = hi - lo;
            }
        }
    }
    RVS_TRY(velocity_scan(f, list, n, at, grids, ng, res));
cleanup:
    free(vg);
    free(grids);
    free(ng);
    return status;
}

/* ------------------------------------------------------------------------------------------ */
/* Start: vel_fit.firstguess. Parameter grid {logg 1..5} x {teff 3000, 5000, 8000, 10000} x
 * {feh -2, -1, 0} x {alpha 0}, vsini grid (None, 10, 100) (None = no rotation = 0 here), the
 * velocity grid arange(min_vel, max_vel, vel_step0). Per vsini the best grid chi^2 over
 * templates and velocities; the vsini with the lowest wins. The spectra are processed in groups
 * so that one engine call carries at most ~2M requests. */
int rvs_fit_start_bruteforce(struct rvs_fitter *f, const size_t *list, size_t n,
                            struct rvs_fit_point *start, double *vstart)
{
    static const double loggs[] = {1, 2, 3, 4, 5};
    static const double teffs[] = {3000, 5000, 8000, 10000};
    static const double fehs[] = {-2, -1, 0};
    static const double vsinis[] = {0, 10, 100};
    int status = RVS_OK;
    double *vg = NULL, *chi = NULL, *best = NULL;
    struct rvs_fit_point *pts = NULL;
    size_t nv = arange(f->cfg.min_vel, f->cfg.max_vel, f->cfg.vel_step0, &vg);
    if (nv == SIZE_MAX)
        return RVS_ERR_NOMEM;
    const size_t ntmpl = 5 * 4 * 3, per = ntmpl * nv;
    size_t group = (size_t)2000000 / (per ? per : 1);
    if (group < 1)
        group = 1;
    if (group > n)
        group = n;
    pts = rvs_malloc((group * per > 0 ? group * per : 1) * sizeof *pts);
    chi = rvs_malloc((group * per > 0 ? group * per : 1) * sizeof *chi);
    best = rvs_malloc((n ? n : 1) * sizeof *best);
    if (!pts || !chi || !best) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++)
        best[i] = HUGE_VAL;
    for (size_t iv = 0; iv < 3; iv++)
        for (size_t g0 = 0; g0 < n; g0 += group) {
            size_t g1 = g0 + group < n ? g0 + group : n, o = 0;
            for (size_t i = g0; i < g1; i++)
                for (size_t l = 0; l < 5; l++)
                    for (size_t t = 0; t < 4; t++)
                        for (size_t m = 0; m < 3; m++)
                            for (size_t v = 0; v < nv; v++) {
                                struct rvs_fit_point *q = &pts[o++];
                                q->s = (int)list[i];
                                q->th[0] = teffs[t];
                                q->th[1] = loggs[l];
                                q->th[2] = fehs[m];
                                q->th[3] = 0;
                                q->vsini = vsinis[iv];
                                q->v = vg[v];
                            }
            RVS_TRY(rvs_fit_objective(f, pts, o, RVS_FIT_PLAIN, chi, NULL));
            for (size_t i = g0; i < g1; i++) {
                const double *c = chi + (i - g0) * per;
                size_t ib = 0;
                for (size_t k = 1; k < per; k++)
                    if (c[k] < c[ib])
                        ib = k;
                if (c[ib] < best[i]) {
                    best[i] = c[ib];
                    start[list[i]] = pts[(i - g0) * per + ib];
                    size_t tmpl = ib / nv, vi = ib % nv;
                    vstart[list[i]] = quad_min(vg, c + tmpl * nv, nv, vi);
                }
            }
        }
cleanup:
    free(vg);
    free(chi);
    free(best);
    free(pts);
    return status;
}

/* ------------------------------------------------------------------------------------------ */
/* See fit_internal.h: vel_fit._minimum_sampler (crit_ratio 5, goal_width 10). */
int rvs_fit_posterior(struct rvs_fitter *f, const size_t *list, size_t n,
                      const struct rvs_fit_point *at, const double *sigv, struct rvs_fit_scan *out)
{
    int status = RVS_OK;
    const double crit = 5, goal = 10;
    double *lo = rvs_malloc((n + 1) * sizeof(double)), *hi = rvs_malloc((n + 1) * sizeof(double));
    double *step = rvs_malloc((n + 1) * sizeof(double)), *bv = rvs_malloc((n + 1) * sizeof(double));
    double **grids = rvs_calloc(n + 1, sizeof *grids);
    size_t *ng = rvs_malloc((n + 1) * sizeof *ng), *act = rvs_malloc((n + 1) * sizeof *act);
    size_t *actl = rvs_malloc((n + 1) * sizeof *actl);
    struct rvs_fit_scan *res = rvs_malloc((n + 1) * sizeof *res);
    unsigned char *done = rvs_calloc(n + 1, 1);
    if (!lo || !hi || !step || !bv || !grids || !ng || !act || !actl || !res || !done) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++) {
        lo[i] = f->cfg.min_vel;
        hi[i] = f->cfg.max_vel;
        step[i] = f->cfg.vel_step0;
        bv[i] = fmin(fmax(at[list[i]].v, lo[i]), hi[i]);
        if (sigv && isfinite(sigv[i]) && sigv[i] > 0) {
            /* the optimizer measured the curvature in velocity at this (theta, vsini): start
             * where _minimum_sampler's refinement would arrive (step err/crit, +-goal err)
             * instead of the whole velocity range at vel_step0 */
            double w = fmax(goal * sigv[i], 5 * f->cfg.min_vel_step);
            lo[i] = fmax(bv[i] - w, f->cfg.min_vel);
            hi[i] = fmin(bv[i] + w, f->cfg.max_vel);
            step[i] = fmax(sigv[i] / crit * 0.8, f->cfg.min_vel_step);
        }
    }
    for (int it = 0; it < 10; it++) {
        size_t na = 0;
        for (size_t i = 0; i < n; i++) {
            if (done[i])
                continue;
            free(grids[na]);
            grids[na] = NULL;
            double start = ceil((lo[i] - bv[i]) / step[i]) * step[i];
            size_t m = arange(start, hi[i] - bv[i], step[i], &grids[na]);
            if (m == SIZE_MAX) {
                status = RVS_ERR_NOMEM;
                goto cleanup;
            }
            for (size_t g = 0; g < m; g++)
                grids[na][g] += bv[i];
            if (m == 0) { /* degenerate window: evaluate the current velocity */
                free(grids[na]);
                grids[na] = rvs_malloc(sizeof(double));
                if (!grids[na]) {
                    status = RVS_ERR_NOMEM;
                    goto cleanup;
                }
                grids[na][0] = bv[i];
                m = 1;
            }
            ng[na] = m;
            act[na] = i;
            actl[na] = list[i];
            na++;
        }
        if (na == 0)
            break;
        RVS_TRY(velocity_scan(f, actl, na, at, grids, ng, res));
        f->posterior_rounds++;
        for (size_t q = 0; q < na; q++) {
            size_t i = act[q];
            out[i] = res[q];
            bv[i] = res[q].best_vel;
            double err = res[q].err;
            if (step[i] < err / crit || step[i] < f->cfg.min_vel_step || it == 9) {
                done[i] = 1;
                continue;
            }
            double nstep, width;
            if (step[i] > err) {
                nstep = step[i] / crit;
                width = step[i] * goal;
            } else {
                nstep = err / crit * 0.8;
                width = err * goal;
            }
            lo[i] = fmax(bv[i] - width, lo[i]);
            hi[i] = fmin(bv[i] + width, hi[i]);
            step[i] = nstep;
        }
    }
cleanup:
    if (grids)
        for (size_t i = 0; i <= n; i++)
            free(grids[i]);
    free(grids);
    free(lo);
    free(hi);
    free(step);
    free(bv);
    free(ng);
    free(act);
    free(actl);
    free(res);
    free(done);
    return status;
}

