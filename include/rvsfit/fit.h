/* rvsfit/fit.h: rvspecfit's DESI fit (rvs_desi_fit: proc_onespec and vel_fit.process) of a batch
 * of prepared spectra, batched on the device: every stage (CCF start, optimizer, velocity
 * posterior, Hessian errors, final models) asks the evaluation engine for many model evaluations
 * at once; no stage calls the device once per spectrum. Contract between the fitter
 * (src/fit*.c) and the command line (src/cli/rvsfit-cl.c). */
#ifndef RVSFIT_FIT_H
#define RVSFIT_FIT_H

#include <stddef.h>

#include "rvsfit/context.h"
#include "rvsfit/desi.h"
#include "rvsfit/library.h"
#include "rvsfit/output.h"
#include "rvsfit/prepare.h"

#ifdef __cplusplus
extern "C" {
#endif

enum rvs_fit_init { RVS_FIT_INIT_CCF = 0, RVS_FIT_INIT_BRUTEFORCE = 1 };

/* rvspecfit's configuration keys and rvs_desi_fit's options that change the fit. */
struct rvs_fit_config {
    double min_vel, max_vel;     /* km/s (config min_vel/max_vel: -1000, 1000) */
    double vel_step0;            /* km/s, velocity grid step of the posterior (5) */
    double min_vel_step;         /* km/s, finest refinement step (0.2) */
    double min_vsini, max_vsini; /* km/s (0.01, 500) */
    size_t npoly;                /* continuum basis size (--npoly, 10) */
    int rbf_continuum;           /* RBF continuum basis (1) or Chebyshev (0) */
    enum rvs_fit_init param_init; /* --param-init CCF (default) or bruteforce */
    int ccf_continuum_normalize; /* 1 unless --no-ccf-continuum-normalize */
    int second_minimizer;        /* config second_minimizer (1) */
    size_t batch_size;           /* --batch-size: spectra per device batch, 0 = from memory */
    int scale_free_continuum;    /* the continuum prior that does not depend on the templates'
                                  * flux scale (1, rvs_chisq_arm_set_scale_free); 0: rvspecfit's
                                  * flat prior (--rvspecfit-likelihood) */
    double clip_sigma;           /* --clip-sigma: residuals beyond this many robust sigmas at the
                                  * optimum are left out and the fit redone (5; 0: rvspecfit's
                                  * likelihood, no clipping) */
    int exact_derivatives;       /* the optimizer's derivatives: 1 exact (rvs_engine_derivs: the
                                  * gradient and the Gauss-Newton Hessian at each point; the
                                  * default), 0 the finite-difference stencils (--optimizer) */
};

void rvs_fit_config_init(struct rvs_fit_config *config);

/* Device state for one set of data wavelength grids: the libraries' networks, the evaluation
 * engine, the CCF template bank. Created once per run (again only when a file's grids differ). */
struct rvs_fitter;

/* arms[a] is the template library of arm a (NULL: arm not fitted); data_wave[a]/nwave[a] the
 * file's wavelength grid of that arm; ndiag[a] > 0 when resolution matrices are used. */
int rvs_fitter_create(struct rvs_context *ctx, const struct rvs_fit_config *config,
                      struct rvs_library_arm *const arms[RVS_DESI_NARMS],
                      const double *const data_wave[RVS_DESI_NARMS],
                      const size_t nwave[RVS_DESI_NARMS], const size_t ndiag[RVS_DESI_NARMS],
                      struct rvs_fitter **fitter);
void rvs_fitter_destroy(struct rvs_fitter **fitter);

/* Largest number of spectra per rvs_fitter_fit call that fits in the device's memory. */
size_t rvs_fitter_max_batch(const struct rvs_fitter *fitter);

/* Fits every target of `batch` (at most rvs_fitter_max_batch). rows[t] must be initialised by
 * the caller (rvs_output_row_init, input_row, sn, rr_*); the fitter fills the fit values, χ²s,
 * NPIX_TOT, VRAD_CCF and RVS_WARN (BAD_SPECTRUM for batch->bad_spectrum[t]: NaN values).
 * models[a] (when not NULL) receives ntargets x nwave[a] best-fit models in data units (zeros
 * for bad rows). A bad spectrum never fails the call; only device or memory errors do. */
int rvs_fitter_fit(struct rvs_fitter *fitter, const struct rvs_prepared *batch,
                   struct rvs_output_row *rows, float *const models[RVS_DESI_NARMS]);

/* Time per stage for --profile (seconds, device work included, since creation). */
struct rvs_fit_profile {
    double ccf, optimizer, posterior, hessian, models;
    /* wall seconds of the batches' spectra going to the device (rvs_engine_set_data) */
    double upload;
    /* wall seconds inside the evaluation engine (rvs_engine_eval, waiting for the device
     * included); the stages' remaining time is the fitter's own host work and the CCF */
    double engine;
    /* of each stage's seconds, those inside the evaluation engine */
    double engine_ccf, engine_optimizer, engine_posterior, engine_hessian, engine_models;
    unsigned long long engine_calls, evaluations;
    /* model evaluations per stage (their sum is `evaluations`) */
    unsigned long long eval_ccf, eval_optimizer, eval_posterior, eval_hessian, eval_models;
    /* parameters whose errors came from a likelihood scan (issue 24; part of the Hessian
     * stage's evaluations) */
    unsigned long long profile_scans;
};
void rvs_fitter_profile(const struct rvs_fitter *fitter, struct rvs_fit_profile *profile);

#ifdef __cplusplus
}
#endif

#endif
