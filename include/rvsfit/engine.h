/* rvsfit/engine.h: the evaluation engine (DESIGN.md section 4): the one component every fit stage
 * asks for model evaluations. A request is (spectrum s, theta = (teff, logg, feh, alpha), vsini,
 * v); the engine returns -2 log L of the request per arm and summed over the arms the spectrum
 * has, and on demand the best-fit models (data units) and the continuum coefficients.
 *
 * Per arm (desi_b, desi_r, desi_z or any subset), on the device, for a whole batch of requests:
 *   NN (one row per unique theta) -> rotation (one row per unique (theta, vsini))
 *   -> spline construction (per unique (theta, vsini)) -> spline evaluation at the Doppler-shifted
 *   data wavelengths (per request) -> resolution matrix (optional, the request's spectrum)
 *   -> marginalised chi^2 (per request, the request's spectrum).
 * The arms are summed on the host in double. This is rvspecfit's spec_fit.get_chisq without the
 * outside-the-grid penalty and priors (the caller adds them: they need the library's training
 * hulls, not the device).
 *
 * Traffic: rvs_engine_set_data uploads a batch of prepared spectra once; each evaluation uploads
 * only the request parameters (unique theta rows, per-request template index, velocity,
 * spectrum index) and downloads only the chi^2 values (and models/coefficients when asked).
 *
 * Sharing: requests are deduplicated on the host by the exact bit patterns of theta (one NN row)
 * and of (theta, vsini) (one rotation and one spline). vsini <= 0 is one key (no rotation). A
 * velocity scan of 400 velocities for one (theta, vsini) costs one NN row, one rotation, one
 * spline construction and 400 spline evaluations per arm.
 *
 * Non-finite results: a request whose model is not finite at some data pixel (the template does
 * not cover the data at that velocity: the spline gives NaN outside the template grid), whose
 * parameters are not finite, whose |v| >= c, or whose Gram matrix is rank-deficient, gets a
 * non-finite chi^2 (NaN or +inf) in that arm and in the total; the other requests of the batch
 * are unaffected. The caller decides what to do (rvspecfit adds a large "bad" value,
 * 10 x total pixels x 1000, or raises). */
#ifndef RVSFIT_ENGINE_H
#define RVSFIT_ENGINE_H

#include <stddef.h>

#include "rvsfit/context.h"
#include "rvsfit/nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Arms per engine (DESI has three). */
#define RVS_ENGINE_MAX_ARMS 8
/* Parameters of theta (teff, logg, feh, alpha): the networks must have this input dimension. */
#define RVS_ENGINE_NPARAM 4

/* One spectrograph arm. The engine copies everything it keeps; the network stays owned by the
 * caller and must outlive the engine. */
struct rvs_engine_arm_config {
    const char *name;            /* "desi_b", ...: for messages */
    struct rvs_nn *nn;           /* the arm's emulator (indim 4, npix = template_npix) */
    const double *template_wave; /* template_npix wavelengths, log-uniform */
    size_t template_npix;
    double template_lnstep;      /* ln(w[1]/w[0]); 0: taken from template_wave */
    const double *data_wave;     /* data_npix wavelengths shared by every spectrum of a batch */
    size_t data_npix;
    size_t npoly; /* continuum terms (rvspecfit's default is 10); 1..RVS_CHISQ_MAX_NPOLY */
    int rbf;      /* 1: rvspecfit's RBF continuum basis (default), 0: Chebyshev */
    int scale_free; /* 1: the scale-free continuum prior (rvs_chisq_arm_set_scale_free); 0:
                     * rvspecfit's flat prior */
    size_t ndiag; /* diagonals of the resolution matrices (odd), 0 = no resolution matrix */
};

/* One model evaluation. */
struct rvs_engine_request {
    int spectrum;                   /* 0..nspec-1 of the current batch */
    double teff, logg, feh, alpha;  /* theta, physical units (the network maps them) */
    double vsini;                   /* km/s; <= 0: no rotation */
    double vrad;                    /* km/s */
};

/* Stages whose device calls and times are counted. */
enum rvs_engine_stage {
    RVS_ENGINE_STAGE_UPLOAD = 0,   /* request parameters to the device */
    RVS_ENGINE_STAGE_NN,           /* rvs_nn_forward */
    RVS_ENGINE_STAGE_ROTATION,     /* rvs_rotation_apply_rows: one row per (theta, vsini) */
    RVS_ENGINE_STAGE_SPLINE_BUILD, /* rvs_spline_construct */
    RVS_ENGINE_STAGE_SPLINE_EVAL,  /* rvs_spline_eval */
    RVS_ENGINE_STAGE_RESOLUTION,   /* rvs_resolution_apply */
    RVS_ENGINE_STAGE_CHISQ,        /* rvs_chisq_eval */
    RVS_ENGINE_STAGE_DOWNLOAD,     /* chi^2, models, coefficients back to the host */
    RVS_ENGINE_NSTAGES
};

/* Counters since creation or the last rvs_engine_stats_reset. calls[] counts calls into the
 * kernel families (each is a fixed handful of launches: NN 2 x (layers + 2) + 1, chi^2 4 to 7,
 * the others 1 or 2) and transfers (UPLOAD, DOWNLOAD: one per buffer). seconds[] is host wall
 * time per stage, measured only while profiling is on (then each stage ends with clFinish, so
 * asynchronous devices are charged to the right stage; without profiling only total_seconds is
 * kept). Bytes exclude rvs_engine_set_data (data_bytes_in) and the rotation's own upload of its
 * kernel weights (a few hundred bytes per distinct vsini). */
struct rvs_engine_stats {
    unsigned long long evals;          /* rvs_engine_eval / rvs_engine_models calls */
    unsigned long long requests;       /* requests received */
    unsigned long long invalid;        /* requests answered NaN on the host (bad parameters) */
    unsigned long long unique_theta;   /* unique theta per call, summed over calls */
    unsigned long long unique_templates; /* unique (theta, vsini) per call, summed */
    unsigned long long nn_rows;        /* NN evaluations, summed over arms and chunks */
    unsigned long long templates_built; /* spline constructions, summed over arms and chunks */
    unsigned long long spline_evals;   /* requests x arms that reached the spline evaluation */
    unsigned long long chunks;         /* device passes (one per chunk of a call) */
    unsigned long long retries;        /* chunks retried at half size after an allocation failure */
    unsigned long long calls[RVS_ENGINE_NSTAGES];
    double seconds[RVS_ENGINE_NSTAGES];
    /* of seconds[]: the host's part, up to the stage's clFinish (preparing and enqueueing;
     * blocking transfers included); the rest is waiting for the device */
    double host_seconds[RVS_ENGINE_NSTAGES];
    double total_seconds;              /* wall time inside eval/models calls */
    unsigned long long bytes_in, bytes_out; /* host <-> device during evaluations */
    unsigned long long data_bytes_in;  /* rvs_engine_set_data uploads */
};

struct rvs_engine;

/* Creates the engine for narms arms on ctx's device: checks the configuration (networks of
 * indim 4 whose npix matches the template grid, log-uniform template grids that cover the data
 * grids), builds the spline grids, rotation objects and chi^2 arms, uploads the data
 * wavelengths. On failure *engine is NULL and the reason has been logged. */
int rvs_engine_create(struct rvs_context *ctx, const struct rvs_engine_arm_config *arms,
                      size_t narms, struct rvs_engine **engine);
/* Releases everything the engine allocated (not the networks); accepts NULL, sets *engine NULL. */
void rvs_engine_destroy(struct rvs_engine **engine);

size_t rvs_engine_narms(const struct rvs_engine *engine);
/* Data pixels and npoly of arm a. */
size_t rvs_engine_arm_npix(const struct rvs_engine *engine, size_t a);
size_t rvs_engine_arm_npoly(const struct rvs_engine *engine, size_t a);

/* The velocities (km/s) for which arm a's template grid covers its whole data grid: outside
 * (vmin, vmax) every request's chi^2 is NaN in that arm. Fit bounds must stay inside, with the
 * rotation kernel's half-width to spare (rvspecfit's _overlap_check). */
int rvs_engine_arm_velocity_range(const struct rvs_engine *engine, size_t a, double *vmin,
                                  double *vmax);

/* Uploads a batch of nspec prepared spectra (replacing the previous batch):
 *   spec[a], espec[a]  nspec x data_npix(a) doubles, row s = spectrum s (espec > 0, finite, as
 *                      data preparation leaves them); rows of spectra that lack arm a are not
 *                      read, and spec[a]/espec[a] may be NULL when no spectrum has arm a
 *   resolution         NULL, or per arm NULL or nspec x ndiag x data_npix floats (DESI's DIA
 *                      layout, see rvsfit/resolution.h; all nspec blocks are uploaded, those of
 *                      spectra without the arm are never used); required for arms with ndiag > 0
 *   arm_used           nspec x narms flags (row-major), NULL = every spectrum has every arm.
 * An arm a spectrum lacks contributes nothing to that spectrum's chi^2. */
int rvs_engine_set_data(struct rvs_engine *engine, size_t nspec, const double *const *spec,
                        const double *const *espec, const float *const *resolution,
                        const unsigned char *arm_used);

/* New errors for the batch already set (same spectra, arms and resolution matrices): only the
 * data the chi^2 depends on through sigma are uploaded again, not the resolution matrices (the
 * fit's outlier clipping gives clipped pixels a "bad" error this way). */
int rvs_engine_set_errors(struct rvs_engine *engine, const double *const *spec,
                          const double *const *espec);

/* -2 log L of E requests: chisq_total[e] (summed over the arms spectrum s has) and, when not
 * NULL, chisq_arm[e * narms + a] (0 for an arm the spectrum lacks). See the file comment for
 * non-finite values; a spectrum that has no arm at all gets 0. Blocks until the results are on
 * the host. Not thread-safe: one engine per thread (and per context queue). */
int rvs_engine_eval(struct rvs_engine *engine, const struct rvs_engine_request *req, size_t E,
                    double *chisq_total, double *chisq_arm);

/* As rvs_engine_eval, and also, per arm a where the pointer is not NULL: models[a] (E x
 * data_npix(a)): the best-fit model T * sum_j c_j P_j in data units; coeffs[a] (E x npoly(a)):
 * the continuum coefficients in rvspecfit's basis. Rows of arms a spectrum lacks are NaN.
 * models and coeffs may themselves be NULL. Meant for the final models, not for every step. */
int rvs_engine_models(struct rvs_engine *engine, const struct rvs_engine_request *req, size_t E,
                      double *chisq_total, double *chisq_arm, double *const *models,
                      double *const *coeffs);

/* The parameters the derivatives are taken with respect to, in this order (the fitter's x). */
enum rvs_engine_param {
    RVS_ENGINE_D_VRAD = 0, /* km/s */
    RVS_ENGINE_D_VSINI,    /* km/s */
    RVS_ENGINE_D_TEFF,     /* K */
    RVS_ENGINE_D_LOGG,     /* dex */
    RVS_ENGINE_D_FEH,      /* dex */
    RVS_ENGINE_D_ALPHA,    /* dex */
    RVS_ENGINE_NDERIV
};

/* As rvs_engine_eval, and the exact derivatives of -2 log L along (v, vsini, teff, logg, feh,
 * alpha), summed over the arms the spectrum has: grad[e * RVS_ENGINE_NDERIV + k] and, when gn
 * is not NULL, gn[(e * RVS_ENGINE_NDERIV + k) * RVS_ENGINE_NDERIV + l], the Gauss-Newton matrix
 * (symmetric, positive semi-definite; rvs_chisq_eval_deriv says what it leaves out). The
 * template's tangents come from the emulator's forward-mode tangents (theta), the rotation
 * kernel's derivative (vsini; at vsini <= 0, where the template is not rotated, the derivative
 * from the right, at vsini -> 0+, so that a fit at 0 can leave it) and the
 * spline's derivative at the Doppler-shifted wavelengths (v); they go through the resolution
 * matrix like the template. A request whose chi^2 is not finite in some arm gets NaN
 * derivatives. One device pass per chunk, as rvs_engine_eval, with about six times its
 * template work and seven times its per-request work. */
int rvs_engine_derivs(struct rvs_engine *engine, const struct rvs_engine_request *req, size_t E,
                      double *chisq_total, double *chisq_arm, double *grad, double *gn);

/* The continuum-only fit of every spectrum of the batch (rvspecfit's get_chisq_continuum: a
 * template of ones, through the resolution matrix when the arm has one): chisq_arm[s * narms + a]
 * is -2 log L of that fit (0 for an arm the spectrum lacks) and, per arm where not NULL,
 * models[a] (nspec x data_npix(a)) and coeffs[a] (nspec x npoly(a)) as in rvs_engine_models.
 * rvspecfit's CHISQ_C_* columns are sum ((model - spec) / espec)^2 over the good pixels of these
 * models, which the caller computes with its bad-pixel mask. */
int rvs_engine_continuum(struct rvs_engine *engine, double *chisq_arm, double *const *models,
                         double *const *coeffs);

/* The largest number of spectra per batch for which the resident data plus the work space of
 * one device pass over requests_per_spectrum x nspec requests, among which
 * templates_per_spectrum x nspec distinct (theta, vsini) templates (0: every request its own),
 * fit in the engine's share of device memory (half of the global memory, each buffer below the
 * largest allocation). A larger batch still works (calls are chunked); it only costs more
 * passes. At least 1. */
size_t rvs_engine_max_batch(const struct rvs_engine *engine, size_t requests_per_spectrum,
                            size_t templates_per_spectrum);

/* Profiling: on = each stage ends with clFinish and its wall time is added to stats.seconds. */
void rvs_engine_set_profiling(struct rvs_engine *engine, int on);
/* Short name of a stage (enum rvs_engine_stage) for profile tables. */
const char *rvs_engine_stage_name(int stage);
void rvs_engine_stats_get(const struct rvs_engine *engine, struct rvs_engine_stats *stats);
void rvs_engine_stats_reset(struct rvs_engine *engine);

/* Caps the requests and unique templates per device pass (0 = automatic, from the memory
 * budget). For tests (chunked results must equal one big pass) and tuning. */
void rvs_engine_set_chunk_limits(struct rvs_engine *engine, size_t max_requests,
                                 size_t max_templates);
/* Test hook: a device pass over more than max_requests requests fails as if the device had
 * returned CL_MEM_OBJECT_ALLOCATION_FAILURE (0 = off), to exercise the halving retry. */
void rvs_engine_simulate_alloc_limit(struct rvs_engine *engine, size_t max_requests);

/* Self-test row (src/device/selftest.c): a one-arm engine over a constant network; the best-fit model
 * of a spectrum equal to a basis function must reproduce it exactly, at two velocities sharing
 * one template. */
int rvs_engine_selftest(struct rvs_context *ctx, char *detail, size_t detail_size);

#ifdef __cplusplus
}
#endif

#endif
