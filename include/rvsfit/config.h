/* rvsfit/config.h: rvspecfit's YAML configuration file (utils.py: read_config and
 * get_default_config; desi_fit.py reads lsf_sigma0_angstrom), read with libyaml.
 *
 * Keys: template_lib, min_vel, max_vel, vel_step0, min_vel_step, min_vsini, max_vsini,
 * second_minimizer, lsf_sigma0_angstrom ({b: σ, r: σ, z: σ} in Å) and ccf_continuum_normalize.
 * An unknown key is a warning (rvspecfit ignores what it does not use); a value of the wrong type
 * or out of range is an error that names the file and the key. */
#ifndef RVSFIT_CONFIG_H
#define RVSFIT_CONFIG_H

#include "rvsfit/desi.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bits of struct rvs_config.set: which keys the file gave. */
enum rvs_config_key {
    RVS_CONFIG_TEMPLATE_LIB = 1u << 0,
    RVS_CONFIG_MIN_VEL = 1u << 1,
    RVS_CONFIG_MAX_VEL = 1u << 2,
    RVS_CONFIG_VEL_STEP0 = 1u << 3,
    RVS_CONFIG_MIN_VEL_STEP = 1u << 4,
    RVS_CONFIG_MIN_VSINI = 1u << 5,
    RVS_CONFIG_MAX_VSINI = 1u << 6,
    RVS_CONFIG_SECOND_MINIMIZER = 1u << 7,
    RVS_CONFIG_LSF_SIGMA0 = 1u << 8,
    RVS_CONFIG_CCF_CONTINUUM_NORMALIZE = 1u << 9
};

struct rvs_config {
    char *template_lib;          /* NULL: not given (the caller's default library is used) */
    double min_vel, max_vel;     /* km/s: -1000, 1000 */
    double vel_step0;            /* km/s: 5 */
    double min_vel_step;         /* km/s: 0.2 */
    double min_vsini, max_vsini; /* km/s: 0.01, 500 */
    int second_minimizer;        /* 1 */
    int ccf_continuum_normalize; /* 1 */
    double lsf_sigma0[RVS_DESI_NARMS]; /* Å: 0.5 each (rvspecfit's fallback in proc_desi) */
    unsigned set;                /* RVS_CONFIG_* bits of the keys the file gave */
    unsigned lsf_sigma0_arms;    /* arms (1u << arm) lsf_sigma0_angstrom gave */
    char *path;                  /* absolute path of the file read; NULL when none was */
};

/* rvspecfit's defaults (get_default_config), nothing read. */
void rvs_config_init(struct rvs_config *config);
void rvs_config_free(struct rvs_config *config);

/* Reads `path` over the defaults already in *config. A missing or unreadable file, YAML syntax
 * errors (with line and column), a top level that is not a mapping, values of the wrong type,
 * non-finite numbers, and inconsistent values (min_vel >= max_vel, steps <= 0, min_vsini <= 0,
 * max_vsini <= min_vsini, negative σ) are RVS_ERR_IO or RVS_ERR_FORMAT with a message naming the
 * file and key; an empty file is a warning (defaults kept), as in rvspecfit. */
int rvs_config_read(const char *path, struct rvs_config *config);

/* The YAML name of a key bit ("min_vel"), or NULL. */
const char *rvs_config_key_name(unsigned key);

#ifdef __cplusplus
}
#endif

#endif
