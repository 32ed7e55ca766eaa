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
    f->cap = cap;
    return RVS_OK;
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
        struct rvs_engine_request *r = &f->req[m];
        r->spectrum = q->s;
        r->teff = q->th[0];
        r->logg = q->th[1];
        r->feh = q->th[2];
        r->alpha = q->th[3];
        r->vsini = vsini;
        r->vrad = q->v;
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

