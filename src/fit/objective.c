/* objective.c: what the fitter's stages share: the objective (rvspecfit's spec_fit.get_chisq with
 * the outside-grid penalty and, in optimizer mode, vel_fit.chisq_func) of many points in one
 * engine call, and the clock of the profile. The stages (ccf.c, optimize.c, velocity.c, clip.c)
 * use this file and fit_internal.h only; the driver (fit.c) sits above them. */
#include <config.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/internal.h"
#include "fit/fit_internal.h"

double rvs_fit_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ------------------------------------------------------------------------------------------ */
/* The objective: rvspecfit's spec_fit.get_chisq (with the outside-grid penalty) and, in
 * optimizer mode, vel_fit.chisq_func (bounds -> 1e30, VSiniMapper.to_vsini's clipping and
 * quadratic penalty). */

static int grow(struct rvs_fitter *f, size_t n)
{
    if (n <= f->cap)
        return RVS_OK;
    size_t cap = n + n / 2 + 64;
    void *r = realloc(f->req, cap * sizeof *f->req);
    if (!r)
        return RVS_ERR_NOMEM;
    f->req = r;
    r = realloc(f->chi, cap * sizeof(double));
    if (!r)
        return RVS_ERR_NOMEM;
    f->chi = r;
    r = realloc(f->chi_arm, cap * f->narm * sizeof(double));
    if (!r)
        return RVS_ERR_NOMEM;
    f->chi_arm = r;
    r = realloc(f->grad, cap * RVS_FIT_NDIM * sizeof(double));
    if (!r)
        return RVS_ERR_NOMEM;
    f->grad = r;
    r = realloc(f->gn, cap * RVS_FIT_NDIM * RVS_FIT_NDIM * sizeof(double));
    if (!r)
        return RVS_ERR_NOMEM;
    f->gn = r;
    f->cap = cap;
    return RVS_OK;
}

/* The engine's request for point q, with vsini as the objective's mapping made it. */
static void to_request(const struct rvs_fit_point *q, double vsini, struct rvs_engine_request *r)
{
    r->spectrum = q->s;
    r->teff = q->th[0];
    r->logg = q->th[1];
    r->feh = q->th[2];
    r->alpha = q->th[3];
    r->vsini = vsini;
    r->vrad = q->v;
}

int rvs_fit_objective(struct rvs_fitter *f, const struct rvs_fit_point *p, size_t n, int mode,
                      double *out, double *arm_out)
{
    int status = RVS_OK;
    size_t *map = NULL;
    size_t m = 0;
    RVS_TRY(grow(f, n));
    map = rvs_malloc((n ? n : 1) * sizeof *map);
    if (!map) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++) {
        const struct rvs_fit_point *q = &p[i];
        double vsini = q->vsini, pen = 0;
        out[i] = 0;
        int finite = isfinite(q->v) && isfinite(q->vsini);
        for (int k = 0; k < 4; k++)
            finite = finite && isfinite(q->th[k]);
        if (mode == RVS_FIT_OPTIMIZER) {
            /* vel_fit.chisq_func: outside the velocity bounds or non-finite parameters */
            if (!finite || q->v > f->cfg.max_vel || q->v < f->cfg.min_vel) {
                out[i] = 1e30;
                map[i] = SIZE_MAX;
                continue;
            }
            /* VSiniMapper.to_vsini */
            if (vsini < 0) {
                pen = vsini * vsini;
                vsini = 0;
            } else if (vsini > f->cfg.max_vsini) {
                pen = (vsini - f->cfg.max_vsini) * (vsini - f->cfg.max_vsini);
                vsini = f->cfg.max_vsini;
            }
        }
        if (!finite || q->v <= f->vcov_lo || q->v >= f->vcov_hi) {
            /* the template does not cover the data: rvspecfit's bad value */
            out[i] = 1000 * f->badchi[q->s] + pen;
            map[i] = SIZE_MAX;
            continue;
        }
        out[i] = pen;
        to_request(q, vsini, &f->req[m]);
        map[i] = m++;
    }
    if (m > 0) {
        double t0 = rvs_fit_now();
        RVS_TRY(rvs_engine_eval(f->engine, f->req, m, f->chi, f->chi_arm));
        f->prof.engine += rvs_fit_now() - t0;
        f->prof.engine_calls++;
        f->prof.evaluations += m;
    }
    for (size_t i = 0; i < n; i++) {
        if (map[i] == SIZE_MAX) {
            if (arm_out)
                for (size_t k = 0; k < f->narm; k++)
                    arm_out[i * f->narm + k] = NAN;
            continue;
        }
        const struct rvs_fit_point *q = &p[i];
        size_t j = map[i];
        double acc = 0, badchi = f->badchi[q->s];
        for (size_t k = 0; k < f->narm; k++) {
            int a = f->engine_arm[k];
            if (!f->used[k][q->s])
                continue;
            /* spec_fit.get_chisq: per arm, non-finite outside -> 1000 badchi; else
             * outside x badchi (always: outside_penalty=True) plus the arm's -2 log L */
            double outside = rvs_library_outside(f->lib[a], q->th);
            double c = f->chi_arm[j * f->narm + k];
            if (!isfinite(outside) || !isfinite(c))
                acc += 1000 * badchi;
            else
                acc += outside * badchi + c;
            if (arm_out)
                arm_out[i * f->narm + k] = c;
        }
        out[i] += acc;
    }
cleanup:
    free(map);
    return status;
}


/* ------------------------------------------------------------------------------------------ */
/* The optimizer's objective with its derivatives (rvs_fit_objective_derivs). */

/* Steps of the outside penalty's finite differences in theta (K, dex, dex, dex): the penalty is
 * a host function of four numbers, cheap to evaluate, smooth inside each facet's region. */
static const double outside_step[4] = {0.5, 1e-4, 1e-4, 1e-4};

/* Arm k's outside penalty at th (theta) and, when it is positive, its gradient and a
 * Gauss-Newton curvature in theta: the penalty is d^2 (d the largest facet value), so
 * grad = 2 d grad(d) and the curvature 2 grad(d) grad(d)^T (the facets are linear in the mapped
 * parameters; the mapping's own curvature is left out). Returns the penalty. */
static double outside_derivs(const struct rvs_fitter *f, size_t k, const double *th, double *g4,
                             double h4[4][4])
{
    const struct rvs_library_arm *lib = f->lib[f->engine_arm[k]];
    double o = rvs_library_outside(lib, th);
    memset(g4, 0, 4 * sizeof *g4);
    memset(h4, 0, 16 * sizeof **h4);
    if (!(o > 0) || !isfinite(o))
        return o;
    double d = sqrt(o), dd[4];
    for (int j = 0; j < 4; j++) {
        double tp[4], tm[4];
        memcpy(tp, th, sizeof tp);
        memcpy(tm, th, sizeof tm);
        tp[j] += outside_step[j];
        tm[j] -= outside_step[j];
        double op = rvs_library_outside(lib, tp), om = rvs_library_outside(lib, tm);
        /* d of each side; 0 inside (where the penalty is 0) */
        double dp = op > 0 ? sqrt(op) : 0, dm = om > 0 ? sqrt(om) : 0;
        dd[j] = (dp - dm) / (2 * outside_step[j]);
        g4[j] = 2 * d * dd[j];
    }
    for (int j = 0; j < 4; j++)
        for (int l = 0; l < 4; l++)
            h4[j][l] = 2 * dd[j] * dd[l];
    return o;
}

int rvs_fit_objective_derivs(struct rvs_fitter *f, const struct rvs_fit_point *p, size_t n,
                             double *out, double (*g)[RVS_FIT_NDIM],
                             double (*H)[RVS_FIT_NDIM][RVS_FIT_NDIM], int penalty_curvature)
{
    enum { ND = RVS_FIT_NDIM };
    int status = RVS_OK;
    size_t *map = NULL, m = 0;
    RVS_TRY(grow(f, n));
    map = rvs_malloc((n ? n : 1) * sizeof *map);
    if (!map) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++) {
        const struct rvs_fit_point *q = &p[i];
        double vsini = q->vsini;
        memset(g[i], 0, sizeof g[i]);
        memset(H[i], 0, sizeof H[i]);
        out[i] = 0;
        int finite = isfinite(q->v) && isfinite(q->vsini);
        for (int k = 0; k < 4; k++)
            finite = finite && isfinite(q->th[k]);
        /* as rvs_fit_objective's optimizer mode; the bad values have no derivatives (NaN: a
         * walker never accepts a step there) */
        if (!finite || q->v > f->cfg.max_vel || q->v < f->cfg.min_vel) {
            out[i] = 1e30;
            map[i] = SIZE_MAX;
            continue;
        }
        /* VSiniMapper.to_vsini's clipping: the objective's vsini dependence is the penalty's */
        if (vsini < 0) {
            out[i] = vsini * vsini;
            g[i][1] = 2 * vsini;
            H[i][1][1] = 2;
            vsini = 0;
        } else if (vsini > f->cfg.max_vsini) {
            double e = vsini - f->cfg.max_vsini;
            out[i] = e * e;
            g[i][1] = 2 * e;
            H[i][1][1] = 2;
            vsini = f->cfg.max_vsini;
        }
        if (q->v <= f->vcov_lo || q->v >= f->vcov_hi) {
            out[i] += 1000 * f->badchi[q->s];
            map[i] = SIZE_MAX;
            continue;
        }
        to_request(q, vsini, &f->req[m]);
        map[i] = m++;
    }
    if (m > 0) {
        double t0 = rvs_fit_now();
        RVS_TRY(rvs_engine_derivs(f->engine, f->req, m, f->chi, f->chi_arm, f->grad, f->gn));
        f->prof.engine += rvs_fit_now() - t0;
        f->prof.engine_calls++;
        f->prof.evaluations += m;
        f->derivative_evaluations += m;
    }
    for (size_t i = 0; i < n; i++) {
        if (map[i] == SIZE_MAX) {
            for (int k = 0; k < ND; k++)
                g[i][k] = NAN;
            continue;
        }
        const struct rvs_fit_point *q = &p[i];
        size_t j = map[i];
        double acc = 0, badchi = f->badchi[q->s];
        int clipped = q->vsini < 0 || q->vsini > f->cfg.max_vsini, ok = 1;
        for (size_t k = 0; k < f->narm; k++) {
            if (!f->used[k][q->s])
                continue;
            double g4[4], h4[4][4];
            double outside = outside_derivs(f, k, q->th, g4, h4);
            double c = f->chi_arm[j * f->narm + k];
            if (!isfinite(outside) || !isfinite(c)) {
                acc += 1000 * badchi;
                ok = 0;
                continue;
            }
            acc += outside * badchi + c;
            for (int a = 0; a < 4; a++) {
                g[i][2 + a] += badchi * g4[a];
                for (int b = 0; b < 4 && penalty_curvature; b++)
                    H[i][2 + a][2 + b] += badchi * h4[a][b];
            }
        }
        out[i] += acc;
        const double *gr = f->grad + j * ND, *gn = f->gn + j * ND * ND;
        for (int k = 0; k < ND && ok; k++) {
            /* a clipped vsini does not reach the template: no chi^2 derivative along it */
            if (k == 1 && clipped)
                continue;
            g[i][k] += gr[k];
            for (int l = 0; l < ND; l++)
                if (!(clipped && l == 1))
                    H[i][k][l] += gn[k * ND + l];
        }
        if (!ok)
            for (int k = 0; k < ND; k++)
                g[i][k] = NAN;
    }
cleanup:
    free(map);
    return status;
}
