/* fit_internal.h: the fitter's state and the objective its stages share (objective.c), and the
 * stages the driver (fit.c) calls: the CCF start (ccf.c), the velocity grids (velocity.c), the
 * optimizer and errors (optimize.c), the outlier clipping (clip.c). The stages depend on the
 * state and the objective, never on the driver. Not installed. */
#ifndef RVS_FIT_INTERNAL_H
#define RVS_FIT_INTERNAL_H

#include <stddef.h>

#include "rvsfit/engine.h"
#include "rvsfit/fit.h"

/* The fit parameters x = (v, vsini, teff, logg, feh, alpha) of the optimizer (src/fit/optimize.c,
 * one walker per start): the engine's derivative order (enum rvs_engine_param). */
#define RVS_FIT_NDIM RVS_ENGINE_NDERIV

/* One point of the objective: spectrum, velocity, vsini, theta (teff, logg, feh, alpha). */
struct rvs_fit_point {
    int s;
    double v, vsini;
    double th[4];
};

enum rvs_fit_mode {
    RVS_FIT_PLAIN = 0,    /* spec_fit.get_chisq with the outside penalty */
    RVS_FIT_OPTIMIZER = 1 /* vel_fit.chisq_func: velocity bounds, vsini clipping + penalty */
};

struct rvs_fit_ccf; /* src/fit/ccf.c */

struct rvs_fitter {
    struct rvs_context *ctx;
    struct rvs_fit_config cfg;
    struct rvs_library_arm *lib[RVS_DESI_NARMS]; /* borrowed */
    struct rvs_nn *nn[RVS_DESI_NARMS];
    struct rvs_engine *engine;
    size_t narm;                      /* engine arms */
    int arm_engine[RVS_DESI_NARMS];   /* DESI arm -> engine arm, -1 when not fitted */
    int engine_arm[RVS_DESI_NARMS];   /* engine arm -> DESI arm */
    size_t nwave[RVS_DESI_NARMS], ndiag[RVS_DESI_NARMS];
    double *data_wave[RVS_DESI_NARMS];
    double vcov_lo, vcov_hi;          /* velocities where every template covers its data */
    /* the libraries' training range of teff, logg, feh, alpha (the widest of the arms'): the
     * box of the errors' flat prior (src/fit/profile_errors.c, PARAM_PRIOR) */
    double prior_lo[4], prior_hi[4];
    float *res_f[RVS_DESI_NARMS];     /* the batch's resolution matrices in float */
    /* current batch */
    double *badchi;                      /* per target: 10 x its pixels */
    unsigned char *used[RVS_DESI_NARMS]; /* per engine arm, per target */
    /* request scratch */
    struct rvs_engine_request *req;
    double *chi, *chi_arm;
    double *grad, *gn; /* rvs_fit_objective_derivs: per request 6 and 36 */
    size_t cap;
    /* statistics */
    struct rvs_fit_profile prof;
    size_t newton_calls, newton_iter_max, newton_unconverged, posterior_rounds;
    size_t derivative_evaluations; /* requests of rvs_fit_objective_derivs */
    struct rvs_fit_ccf *ccf;
    /* outlier clipping of the current batch (src/fit/clip.c), per engine arm [nt][npix] */
    unsigned char *clip[RVS_DESI_NARMS]; /* 1: left out as an outlier */
    double *espec_clip[RVS_DESI_NARMS];  /* the batch's σ with clipped pixels made "bad" */
    size_t *nclip;                       /* per target: pixels clipped */
};

/* objective.c: a monotonic clock (seconds) for the profile, and the objective. */
double rvs_fit_now(void);
/* Objective values of n points in as few engine calls as the engine needs (one call). */
int rvs_fit_objective(struct rvs_fitter *f, const struct rvs_fit_point *p, size_t n, int mode,
                      double *out, double *arm_out);
/* The optimizer-mode objective of n points (rvs_fit_objective's RVS_FIT_OPTIMIZER) with its
 * gradient g[i] and a Gauss-Newton Hessian H[i] in x = (v, vsini, teff, logg, feh, alpha), in
 * one engine call (rvs_engine_derivs): chi^2's exact gradient and its Gauss-Newton matrix, the
 * outside penalty's by finite differences on the host, the vsini clipping penalty's exactly.
 * Points with the bad values (bounds, not covering the data, a non-finite arm) get NaN
 * gradients. With `penalty_curvature` 0 the outside penalty's curvature stays out of H (the
 * errors: the box is their prior, src/fit/box_errors.c, not a 10 x npix-stiff wall). */
int rvs_fit_objective_derivs(struct rvs_fitter *f, const struct rvs_fit_point *p, size_t n,
                             double *out, double (*g)[RVS_FIT_NDIM],
                             double (*H)[RVS_FIT_NDIM][RVS_FIT_NDIM], int penalty_curvature);

/* The optimizer's full stencil (src/fit/optimize.c): 28 points, of which 21 distinct
 * (theta, vsini) templates: the two velocity steps and the five (velocity, other) cross points
 * reuse the template of a point without the velocity step. The batch sizing needs both. */
#define RVS_FIT_STENCIL_POINTS (1 + 2 * RVS_FIT_NDIM + RVS_FIT_NDIM * (RVS_FIT_NDIM - 1) / 2)
#define RVS_FIT_STENCIL_TEMPLATES (RVS_FIT_STENCIL_POINTS - 2 - (RVS_FIT_NDIM - 1))
struct rvs_fit_walker {
    int s;                    /* spectrum of the batch */
    double x[RVS_FIT_NDIM];   /* current (best) point */
    double fx;                /* objective (-2 log L + penalties) at x */
    double h[RVS_FIT_NDIM];   /* stencil steps for the next stencil */
    double hx[RVS_FIT_NDIM];  /* steps g and H were measured with */
    double g[RVS_FIT_NDIM], H[RVS_FIT_NDIM][RVS_FIT_NDIM]; /* derivatives of the objective at x */
    double lambda;            /* Levenberg-Marquardt damping */
    int done, converged, failed, rejects, restarts, refines;
    int resample; /* next stencil re-measures at x: 1 coarser (stall), 2 finer (rejection),
                   * 3 full (confirms a stop reached on carried-over couplings) */
    int diag_run;  /* consecutive diagonal stencils since the last full one */
    int full_next; /* the next stencil must be full (the last step's quadratic model was poor) */
    size_t iter;
};
void rvs_fit_walker_init(struct rvs_fit_walker *w, int s, const double x[RVS_FIT_NDIM]);
/* Damped Newton iterations of all walkers in lockstep, one engine call per iteration, at most
 * maxiter iterations. With `stencils` RVS_FIT_STENCIL_DIAG most iterations measure only the
 * gradient and the curvatures (13 points) and carry the couplings over from the last full
 * stencil (28 points): the screening of the starts, where it halves the cost; convergence uses
 * RVS_FIT_STENCIL_FULL (every iteration measures the couplings: a precise end point). */
enum rvs_fit_stencils { RVS_FIT_STENCIL_FULL, RVS_FIT_STENCIL_DIAG };
int rvs_fit_newton(struct rvs_fitter *f, struct rvs_fit_walker *w, size_t nw, size_t maxiter,
                   enum rvs_fit_stencils stencils);
/* The same iteration on exact derivatives (rvs_fit_objective_derivs): one point per walker and
 * iteration, the Gauss-Newton Hessian in place of the stencil's. With group > 1 the walkers are
 * the starts of targets, `group` consecutive ones per target, and a start that cannot beat its
 * target's leader stops early (prune_behind); group 1 walks every walker to its end. */
int rvs_fit_gauss_newton(struct rvs_fitter *f, struct rvs_fit_walker *w, size_t nw,
                         size_t group, size_t maxiter);
/* Marginal errors of (teff, logg, feh, alpha) from a final Hessian stencil at each walker's
 * point (one engine call), or with exact derivatives from the Gauss-Newton Hessian there, and
 * the covariance of x (a held vsini: zero row and column; all NaN where bad); bad[i] as
 * vel_fit's bad_hessian. Updates the walkers' g, H. */
int rvs_fit_param_errors(struct rvs_fitter *f, struct rvs_fit_walker *w, size_t nw,
                         double (*err)[4], double (*cov)[RVS_FIT_NDIM][RVS_FIT_NDIM], int *bad);

/* Cholesky factorisation of the leading n x n block of the symmetric matrix a into the lower
 * triangle of l (src/fit/optimize.c); 0 on success, -1 when a is not positive definite. */
int rvs_fit_cholesky(int n, const double a[RVS_FIT_NDIM][RVS_FIT_NDIM],
                     double l[RVS_FIT_NDIM][RVS_FIT_NDIM]);

/* The errors of (teff, logg, feh, alpha) of the batch's n optima pt (one engine call, src/fit/
 * profile_errors.c) under the flat prior over the training box: err holds the Hessian's on
 * entry (cov its covariance of x), the box's on return; bits[i] the RVS_PRIOR_* bits (the
 * Hessian's error wider than the prior's). */
int rvs_fit_prior_errors(struct rvs_fitter *f, const struct rvs_fit_point *pt, size_t n,
                         double (*cov)[RVS_FIT_NDIM][RVS_FIT_NDIM], double (*err)[4],
                         long long *bits);

/* The root mean square distance from `mode` of a scan's grid values t[0..n) under the weights
 * exp(-(val - ref) / 2) (val: -2 log L; bad values from 1e29 up and non-finite ones weigh
 * nothing); NaN when nothing weighs or ref is not finite. */
double rvs_fit_scan_rms(const double *t, const double *val, size_t n, double mode, double ref);

/* The errors of (teff, logg, feh, alpha) under a flat prior over the box [lo, hi] (src/fit/
 * box_errors.c): the root mean square distance from `mode` of the Gaussian N(mode, cov) cut to
 * the box, by rejection sampling seeded from mode and cov (a target's errors depend on its fit
 * only). Returns 1 with err set, 0 when cov is not positive definite or the Gaussian barely
 * meets the box (err untouched). */
int rvs_fit_box_errors(const double mode[4], const double cov[4][4], const double lo[4],
                       const double hi[4], double err[4]);

/* Outlier clipping (src/fit/clip.c) after the optimizer: marks pixels whose residual at the
 * walkers' optimum exceeds cfg.clip_sigma robust sigmas (and their neighbours), re-uploads the
 * batch with those pixels' errors made "bad", and walks the affected targets to their new
 * optimum (wk updated). f->clip, f->espec_clip and f->nclip describe what was clipped (all NULL
 * or zero with clip_sigma 0). specp is the batch's flux as rvs_engine_set_data got it; only the
 * errors go to the device again (rvs_engine_set_errors). */
int rvs_fit_clip_outliers(struct rvs_fitter *f, const struct rvs_prepared *b, const size_t *list,
                          size_t n, struct rvs_fit_walker *wk, const double *const *specp);
void rvs_fit_clip_free(struct rvs_fitter *f);

int rvs_fit_ccf_create(struct rvs_fitter *f);
void rvs_fit_ccf_destroy(struct rvs_fitter *f);
/* Start (theta, vsini in start[t], the CCF velocity in vstart[t]) of the targets list[0..n),
 * and nalt alternative starts per target in alt[t * nalt + j] (best templates of other bank
 * temperatures, best first; s = -1 where there is none). */
int rvs_fit_ccf_start(struct rvs_fitter *f, const struct rvs_prepared *b, const size_t *list,
                      size_t n, struct rvs_fit_point *start, double *vstart,
                      struct rvs_fit_point *alt, size_t nalt);
/* The CCF's pieces, for tests/test_ccf.c and its plain-C reference. Per (spectrum list[i],
 * bank template j), res[3 (i nb + j) + 0..2] = the smallest chi^2 over the allowed shifts, its
 * shift index s in 0..2 smax (shift s - smax grid pixels; -1 when none is defined) and the
 * parabola-refined shift in pixels (on the device, one batch). */
int rvs_fit_ccf_pairs(struct rvs_fitter *f, const struct rvs_prepared *b, const size_t *list,
                      size_t n, double *res);
/* The starts from those per-pair results (host): per spectrum the best template and its refined
 * velocity, and the best template of each other bank temperature (unrefined shift) as the
 * alternatives, best first. rvs_fit_ccf_start = rvs_fit_ccf_pairs + this. */
void rvs_fit_ccf_select(const struct rvs_fitter *f, const size_t *list, size_t n,
                        const double *res, struct rvs_fit_point *start, double *vstart,
                        struct rvs_fit_point *alt, size_t nalt);
/* Spectrum t's input on the CCF grid (n values each): data x weight and weight. */
int rvs_fit_ccf_input(const struct rvs_fitter *f, const struct rvs_prepared *b, size_t t,
                      double *dw, double *w);
struct rvs_fit_ccf_info {
    size_t n, nb, smax; /* grid points, bank templates, largest shift */
    double ln0, dln;    /* ln(lambda_k) = ln0 + k dln */
    const double (*bank_theta)[5]; /* teff, logg, feh, alpha, vsini */
    const size_t *bank_node;       /* temperature class of each template */
    const double *bank_t;          /* nb x n: continuum-normalised templates on the grid */
    size_t chunk;                  /* pairs per device chunk */
};
void rvs_fit_ccf_info(const struct rvs_fitter *f, struct rvs_fit_ccf_info *info);
/* Pairs per device chunk: the largest power of two <= pairs and <= the memory bound (tests). */
void rvs_fit_ccf_set_chunk(struct rvs_fitter *f, size_t pairs);

/* velocity.c: the stages on velocity grids at fixed (theta, vsini). */
/* find_best's outputs for one spectrum's velocity grid */
struct rvs_fit_scan {
    double best_chi, best_vel, err, skew, kurt;
};
/* km/s around the CCF velocity scanned at vel_step0 for the optimizer's start */
#define RVS_FIT_START_SCAN_HALFWIDTH 150.0
/* Indexing: the points at[] and centres are per batch spectrum (at[list[i]]); sigv, res and out
 * per list entry (res[i] belongs to list[i]). */
/* The velocity scan at the start (theta, vsini) at[list[i]] of each spectrum that picks the
 * optimizer's starting velocity (vel_fit.process's first find_best): the grid
 * arange(min_vel, max_vel, vel_step0), restricted to +-halfwidth around center[list[i]] when
 * center is not NULL and halfwidth > 0 (the CCF already located the velocity to a fraction of
 * its ~35 km/s grid pixel: the full 400-point range would cost more than the whole optimizer). */
int rvs_fit_start_scan(struct rvs_fitter *f, const size_t *list, size_t n,
                       const struct rvs_fit_point *at, const double *center, double halfwidth,
                       struct rvs_fit_scan *res);
/* vel_fit.firstguess: the library's template grid x vsini grid x velocity grid. */
int rvs_fit_start_bruteforce(struct rvs_fitter *f, const size_t *list, size_t n,
                             struct rvs_fit_point *start, double *vstart);
/* The velocity posterior (vel_fit._minimum_sampler over spec_fit.find_best grids) at at[list[i]]
 * with sigv[i] the velocity error guess (NULL or not positive: none), one engine call per round
 * for all spectra still refining; out[i] gets the best velocity, its error, skewness and
 * kurtosis. */
int rvs_fit_posterior(struct rvs_fitter *f, const size_t *list, size_t n,
                      const struct rvs_fit_point *at, const double *sigv, struct rvs_fit_scan *out);

#endif
