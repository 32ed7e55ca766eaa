/* fit_pending.c: placeholder for rvsfit/fit.h until the batched fitter (src/fit.c) is merged.
 * Every fit fails with a message; nothing is ever produced in its place. Delete this file and its
 * line in mk/cli.am when merging the fitter. */
#include <config.h>

#include <string.h>

#include "internal.h"
#include "rvsfit/fit.h"

void rvs_fit_config_init(struct rvs_fit_config *config)
{
    memset(config, 0, sizeof *config);
    config->min_vel = -1000;
    config->max_vel = 1000;
    config->vel_step0 = 5;
    config->min_vel_step = 0.2;
    config->min_vsini = 0.01;
    config->max_vsini = 500;
    config->npoly = 10;
    config->rbf_continuum = 1;
    config->param_init = RVS_FIT_INIT_CCF;
    config->ccf_continuum_normalize = 1;
    config->second_minimizer = 1;
}

int rvs_fitter_create(struct rvs_context *ctx, const struct rvs_fit_config *config,
                      struct rvs_library_arm *const arms[RVS_DESI_NARMS],
                      const double *const data_wave[RVS_DESI_NARMS],
                      const size_t nwave[RVS_DESI_NARMS], const size_t ndiag[RVS_DESI_NARMS],
                      struct rvs_fitter **fitter)
{
    (void)ctx, (void)config, (void)arms, (void)data_wave, (void)nwave, (void)ndiag;
    *fitter = NULL;
    rvs_log(RVS_LOG_ERROR, "fit", "this build of rvsfit-cl has no fitter yet (src/fit.c)");
    return RVS_ERR_UNSUPPORTED;
}

void rvs_fitter_destroy(struct rvs_fitter **fitter)
{
    if (fitter)
        *fitter = NULL;
}

size_t rvs_fitter_max_batch(const struct rvs_fitter *fitter)
{
    (void)fitter;
    return 1;
}

int rvs_fitter_fit(struct rvs_fitter *fitter, const struct rvs_prepared *batch,
                   struct rvs_output_row *rows, float *const models[RVS_DESI_NARMS])
{
    (void)fitter, (void)batch, (void)rows, (void)models;
    return RVS_ERR_UNSUPPORTED;
}

void rvs_fitter_profile(const struct rvs_fitter *fitter, struct rvs_fit_profile *profile)
{
    (void)fitter;
    memset(profile, 0, sizeof *profile);
}
