/* fit/clip.c: pixels that the data's mask missed (cosmic rays, hot columns, sky residuals) are
 * left out of the fit. rvspecfit's likelihood has no outlier model: one unflagged 50σ cosmic adds
 * 2500 to -2 log L and drags the parameters until the model bends towards it, so DESI coadds, which
 * miss some cosmics, get biased fits and too-narrow errors. Here the optimum of every target is
 * checked once for outlying residuals: with the residuals r = (data - model)/σ over the pixels
 * fitted, a robust scale s = 1.4826 median |r| (at least 1: χ² per pixel above 1 from template
 * mismatch widens the threshold instead of clipping line cores), every pixel with |r| > κ s and
 * its two neighbours (a cosmic spreads over the resolution element) are given the "bad pixel"
 * error of rvspecfit's get_specdata (1000 x the arm's median |flux|), so they no longer weigh in;
 * (medians by selection, rvs_desi_median: sorting 8000 residuals per arm cost more than the
 * refit's device work);
 * at most a fraction RVS_FIT_CLIP_MAX_FRAC of an arm's pixels, the largest residuals first. The
 * targets that lost pixels walk to their new optimum from the old one; the errors and the velocity
 * posterior that follow use the clipped data. A target's clipping depends on its own data and
 * model only, so its result does not depend on the batch. κ = 0 keeps rvspecfit's exact
 * likelihood (--clip-sigma 0). */
#include <config.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "desi/desi_internal.h"
#include "fit/fit_internal.h"
#include "base/internal.h"

#define RVS_FIT_CLIP_MAX_FRAC 0.02 /* of an arm's fitted pixels */
#define RVS_FIT_CLIP_BAD_ERROR 1000.0 /* rvspecfit get_specdata: bad pixels' error / median flux */
#define RVS_FIT_CLIP_ITER 40       /* Newton iterations of a refit from the old optimum */
#define RVS_FIT_CLIP_ROUNDS 2      /* clip, refit; clip again what the new model shows, refit */

void rvs_fit_clip_free(struct rvs_fitter *f)
{
    for (int k = 0; k < RVS_DESI_NARMS; k++) {
        free(f->clip[k]);
        free(f->espec_clip[k]);
        f->clip[k] = NULL;
        f->espec_clip[k] = NULL;
    }
    free(f->nclip);
    f->nclip = NULL;
}

/* Marks the outliers of target t, engine arm k, given its model m; returns how many were new. */
static size_t clip_arm(struct rvs_fitter *f, const struct rvs_prepared *b, size_t k, size_t t,
                       const double *m, double *work, size_t *order)
{
    int a = f->engine_arm[k];
    size_t np = f->nwave[a];
    const double *sp = b->spec[a] + t * np, *es0 = b->espec[a] + t * np;
    const unsigned char *bd = b->bad[a] + t * np;
    unsigned char *cl = f->clip[k] + t * np;
    double *es = f->espec_clip[k] + t * np;
    size_t ng = 0;
    for (size_t j = 0; j < np; j++)
        if (!bd[j] && !cl[j] && isfinite(m[j]))
            work[ng++] = fabs((sp[j] - m[j]) / es0[j]);
    if (ng < 10)
        return 0;
    double s = 1.4826 * rvs_desi_median(work, ng);
    double thr = f->cfg.clip_sigma * fmax(s, 1.0);
    /* candidates beyond the threshold, largest first, at most the cap */
    size_t nc = 0;
    for (size_t j = 0; j < np; j++)
        if (!bd[j] && !cl[j] && isfinite(m[j]) && fabs((sp[j] - m[j]) / es0[j]) > thr)
            order[nc++] = j;
    if (nc == 0)
        return 0;
    size_t cap = (size_t)(RVS_FIT_CLIP_MAX_FRAC * (double)ng);
    if (nc > cap) {
        /* keep the largest residuals: sort the candidates by |r| (a few, rarely many) */
        for (size_t i = 0; i < cap; i++) {
            size_t best = i;
            double rb = fabs((sp[order[i]] - m[order[i]]) / es0[order[i]]);
            for (size_t q = i + 1; q < nc; q++) {
                double r = fabs((sp[order[q]] - m[order[q]]) / es0[order[q]]);
                if (r > rb) {
                    rb = r;
                    best = q;
                }
            }
            size_t tmp = order[i];
            order[i] = order[best];
            order[best] = tmp;
        }
        nc = cap;
    }
    if (nc == 0)
        return 0;
    /* the bad-pixel error of get_specdata: 1000 x the median |flux| of the arm's good pixels */
    size_t nf = 0;
    for (size_t j = 0; j < np; j++)
        if (!bd[j])
            work[nf++] = fabs(sp[j]);
    double med = nf ? rvs_desi_median(work, nf) : 1.0;
    double big = RVS_FIT_CLIP_BAD_ERROR * (med > 0 ? med : 1.0);
    size_t added = 0;
    for (size_t i = 0; i < nc; i++) {
        size_t j0 = order[i];
        for (size_t j = j0 > 0 ? j0 - 1 : 0; j <= j0 + 1 && j < np; j++)
            if (!bd[j] && !cl[j]) {
                cl[j] = 1;
                es[j] = big;
                added++;
            }
    }
    return added;
}

struct clip_job {
    struct rvs_fitter *f;
    const struct rvs_prepared *b;
    const size_t *list;
    const struct rvs_fit_walker *wk;
    const size_t *who; /* the targets (indices into list and wk) of this round */
    size_t nwho;
    double *const *mod; /* their models, entry q of who at row q */
    size_t *added;      /* per entry of who: pixels newly clipped */
    size_t maxnp;
    int nomem;          /* a share could not get its scratch */
};

/* Share k of n: the targets who[q] with q = k, k + n, ... */
static void clip_share(void *arg, size_t k, size_t n)
{
    struct clip_job *j = arg;
    struct rvs_fitter *f = j->f;
    double *work = malloc(j->maxnp * sizeof *work);
    size_t *order = malloc(j->maxnp * sizeof *order);
    if (!work || !order)
        j->nomem = 1; /* a plain store of 1: every writer writes the same value */
    for (size_t q = k; q < j->nwho; q += n) {
        size_t i = j->who[q], t = j->list[i], sum = 0;
        if (work && order && !j->wk[i].failed && isfinite(j->wk[i].fx))
            for (size_t a = 0; a < f->narm; a++)
                if (f->clip[a] && f->used[a][t])
                    sum += clip_arm(f, j->b, a, t, j->mod[a] + q * f->nwave[f->engine_arm[a]],
                                    work, order);
        j->added[q] = sum;
    }
    free(work);
    free(order);
}

int rvs_fit_clip_outliers(struct rvs_fitter *f, const struct rvs_prepared *b, const size_t *list,
                          size_t n, struct rvs_fit_walker *wk, const double *const *specp)
{
    int status = RVS_OK;
    size_t nt = b->ntargets;
    struct rvs_engine_request *req = NULL;
    double *chi = NULL, *chi_arm = NULL, *mod[RVS_DESI_NARMS] = {0};
    size_t *added = NULL, *who = NULL;
    struct rvs_fit_walker *sub = NULL;
    const double *especp[RVS_DESI_NARMS] = {0};
    size_t maxnp = 1;
    rvs_fit_clip_free(f);
    f->nclip = rvs_calloc(nt + 1, sizeof *f->nclip);
    if (!f->nclip)
        return RVS_ERR_NOMEM;
    if (!(f->cfg.clip_sigma > 0) || n == 0)
        return RVS_OK;
    for (size_t k = 0; k < f->narm; k++) {
        int a = f->engine_arm[k];
        size_t np = f->nwave[a];
        if (!specp[k])
            continue;
        f->clip[k] = rvs_calloc(nt * np, 1);
        f->espec_clip[k] = rvs_malloc(nt * np * sizeof(double));
        mod[k] = rvs_malloc(n * np * sizeof(double));
        if (!f->clip[k] || !f->espec_clip[k] || !mod[k]) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        memcpy(f->espec_clip[k], b->espec[a], nt * np * sizeof(double));
        especp[k] = f->espec_clip[k];
        if (np > maxnp)
            maxnp = np;
    }
    req = rvs_calloc(n, sizeof *req);
    chi = rvs_malloc(n * sizeof *chi);
    chi_arm = rvs_malloc(n * f->narm * sizeof *chi_arm);
    added = rvs_malloc(n * sizeof *added);
    who = rvs_malloc(n * sizeof *who);
    sub = rvs_malloc(n * sizeof *sub);
    if (!req || !chi || !chi_arm || !added || !who || !sub) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    /* round r looks at the targets of `who` (all of them first, then those refitted) */
    size_t nwho = n;
    for (size_t i = 0; i < n; i++)
        who[i] = i;
    for (int round = 0; round < RVS_FIT_CLIP_ROUNDS && nwho > 0; round++) {
        for (size_t q = 0; q < nwho; q++) {
            const struct rvs_fit_walker *w = &wk[who[q]];
            req[q] = (struct rvs_engine_request){.spectrum = w->s,
                                                 .vrad = w->x[0],
                                                 .vsini = fmin(fmax(w->x[1], 0),
                                                               f->cfg.max_vsini),
                                                 .teff = w->x[2],
                                                 .logg = w->x[3],
                                                 .feh = w->x[4],
                                                 .alpha = w->x[5]};
        }
        double t0 = rvs_fit_now();
        RVS_TRY(rvs_engine_models(f->engine, req, nwho, chi, chi_arm, mod, NULL));
        f->prof.engine += rvs_fit_now() - t0;
        f->prof.engine_calls++;
        f->prof.evaluations += nwho;
        /* the residuals of every target on host threads (each target's own arrays only) */
        struct clip_job job = {f, b, list, wk, who, nwho, mod, added, maxnp, 0};
        rvs_parallel_run(rvs_parallel_threads(nwho, 8, 0), clip_share, &job);
        if (job.nomem) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        size_t nre = 0;
        for (size_t q = 0; q < nwho; q++) {
            size_t i = who[q];
            if (added[q]) {
                f->nclip[list[i]] += added[q];
                who[nre++] = i;
            }
        }
        nwho = nre;
        if (nwho == 0)
            break;
        /* the clipped errors go to the device (one upload per batch and round) */
        t0 = rvs_fit_now();
        RVS_TRY(rvs_engine_set_errors(f->engine, specp, especp));
        f->prof.upload += rvs_fit_now() - t0;
        /* the refit starts at the old optimum with the old stencil steps (matched to the
         * curvature there): the clipped pixels move the optimum by a fraction of an error bar,
         * so it converges in a few iterations instead of re-learning the scales */
        for (size_t q = 0; q < nwho; q++) {
            rvs_fit_walker_init(&sub[q], wk[who[q]].s, wk[who[q]].x);
            memcpy(sub[q].h, wk[who[q]].h, sizeof sub[q].h);
        }
        RVS_TRY(rvs_fit_newton(f, sub, nwho, RVS_FIT_CLIP_ITER, RVS_FIT_STENCIL_FULL));
        for (size_t q = 0; q < nwho; q++) {
            size_t it = wk[who[q]].iter;
            if (sub[q].failed || !isfinite(sub[q].fx)) {
                /* keep the old point but its objective on the clipped data is unknown: the
                 * Hessian stage re-measures it */
                continue;
            }
            wk[who[q]] = sub[q];
            wk[who[q]].iter += it;
        }
    }
cleanup:
    for (int k = 0; k < RVS_DESI_NARMS; k++)
        free(mod[k]);
    free(req);
    free(chi);
    free(chi_arm);
    free(added);
    free(who);
    free(sub);
    return status;
}
