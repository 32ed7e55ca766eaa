/* rvsfit/synth.h: the synthetic stellar-spectrum generator behind rvsfit-cl-mkgrid (issue #4):
 * LTE line formation in a scaled-solar model atmosphere, computed on a log-uniform grid,
 * then degraded to the DESI arms. doc/mkgrid.md describes the physics and the output file. */
#ifndef RVSFIT_SYNTH_H
#define RVSFIT_SYNTH_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Stellar parameters of one spectrum. */
struct rvs_synth_params {
    double teff;  /* K */
    double logg;  /* cgs */
    double feh;   /* [Fe/H] */
    double alpha; /* [alpha/Fe], applied to O, Ne, Mg, Si, S, Ca, Ti */
};

/* Van der Waals broadening of metal lines (linemake's files carry no damping constants). */
enum rvs_synth_vdw {
    RVS_SYNTH_VDW_UNSOELD = 0,   /* Unsoeld's approximation (Gray 2005, eqs. 11.29-11.31) */
    RVS_SYNTH_VDW_ABO_SCALED = 1 /* Unsoeld times the species' median ABO/Unsoeld ratio */
};

/* Where the generator works and with what. */
struct rvs_synth_options {
    const char *linelist_dir; /* linemake MOOG files; NULL or "": the built-in strong-line list */
    double lambda_min;        /* vacuum Angstrom (default 3470) */
    double lambda_max;        /* vacuum Angstrom (default 9975) */
    double resolution;        /* internal sampling: d(ln lambda) = 1/resolution (default 120000) */
    double vmic;              /* microturbulence km/s; < 0: 2.478 - 0.325 log g, at least 0.5 */
    double line_threshold;    /* keep lines with peak line/continuum opacity above this (1e-3) */
    enum rvs_synth_vdw vdw;   /* van der Waals widths (default RVS_SYNTH_VDW_ABO_SCALED) */
    /* internal pixels added in quadrature to each metal line's Doppler width, so that lines
     * narrower than a pixel stay sampled (default 0.3; 0.6 before 2026-12-07) */
    double sampling_broadening;
};

/* Parameter limits the generator accepts (the grid's outer box). */
#define RVS_SYNTH_TEFF_MIN 2800.0
#define RVS_SYNTH_TEFF_MAX 12500.0
#define RVS_SYNTH_LOGG_MIN -0.5
#define RVS_SYNTH_LOGG_MAX 6.0
#define RVS_SYNTH_FEH_MIN -4.5
#define RVS_SYNTH_FEH_MAX 1.0
#define RVS_SYNTH_ALPHA_MIN -0.5
#define RVS_SYNTH_ALPHA_MAX 1.2

struct rvs_synth; /* the wavelength grid and the line list, shared read-only by threads */

void rvs_synth_options_init(struct rvs_synth_options *options);
/* Reads the line list and sets up the grid. RVS_ERR_IO when the line-list directory has no
 * MOOG files, RVS_ERR_INVALID_ARGUMENT for an impossible range or resolution. */
int rvs_synth_create(const struct rvs_synth_options *options, struct rvs_synth **synth);
void rvs_synth_destroy(struct rvs_synth **synth);

size_t rvs_synth_npix(const struct rvs_synth *synth);
/* Vacuum wavelengths [Angstrom] of the internal grid (npix values). */
const double *rvs_synth_wavelength(const struct rvs_synth *synth);
size_t rvs_synth_line_count(const struct rvs_synth *synth);
/* The physics options the generator was created with (recorded in grid files). */
enum rvs_synth_vdw rvs_synth_vdw_mode(const struct rvs_synth *synth);
double rvs_synth_sampling_broadening(const struct rvs_synth *synth);
/* 1 when the lines came from linemake files, 0 for the built-in list. */
int rvs_synth_uses_linelist_files(const struct rvs_synth *synth);

/* Checks parameters against the limits above and the unphysical corner
 * log g < 4 log10(Teff / 4000) (near the Eddington limit, where a static model without
 * radiation pressure is meaningless). Returns RVS_OK or RVS_ERR_INVALID_ARGUMENT; *why gets a static reason. */
int rvs_synth_params_check(const struct rvs_synth_params *p, const char **why);

/* Microturbulence [km/s] used for p: the option's value, or the log g relation. */
double rvs_synth_vmic(const struct rvs_synth *synth, const struct rvs_synth_params *p);

/* Emergent surface flux F_lambda [erg s^-1 cm^-2 A^-1] on the internal grid; `continuum`
 * (optional, may be NULL) gets the same without lines. Thread-safe for one `synth`. */
int rvs_synth_spectrum(const struct rvs_synth *synth, const struct rvs_synth_params *p,
                       double *flux, double *continuum);

/* The same with the caller's work space (about 52 MB: opacities of every layer), which a
 * thread keeps from one spectrum to the next instead of allocating it each time. A work space
 * belongs to one synth and one thread at a time. */
struct rvs_synth_work;
int rvs_synth_work_create(const struct rvs_synth *synth, struct rvs_synth_work **work);
void rvs_synth_work_destroy(struct rvs_synth_work **work);
int rvs_synth_spectrum_work(const struct rvs_synth *synth, struct rvs_synth_work *work,
                            const struct rvs_synth_params *p, double *flux, double *continuum);

/* Physics pieces, exposed for the tests. */
/* Voigt function H(a, v) (Humlicek 1982, W4 algorithm), normalised to integral sqrt(pi). */
double rvs_synth_voigt(double a, double v);
/* Air <-> vacuum wavelengths [Angstrom], Morton (2000, ApJS 130, 403) eq. 8; air->vacuum by
 * inverting it. Below 2000 A wavelengths are left as they are (vacuum by convention). */
double rvs_synth_vacuum_to_air(double lambda_vac);
double rvs_synth_air_to_vacuum(double lambda_air);
/* H- bound-free cross-section [cm^2] (John 1988, A&A 193, 189, eq. 4). */
double rvs_synth_hminus_bf_cross_section(double lambda_a);
/* H- free-free absorption per H atom per unit electron pressure [cm^4 dyn^-1] including
 * stimulated emission (John 1988, eq. 6). */
double rvs_synth_hminus_ff(double lambda_a, double t);
/* H- bound-free absorption per H atom per unit electron pressure [cm^4 dyn^-1], including
 * stimulated emission (John 1988, eq. 3). */
double rvs_synth_hminus_bf(double lambda_a, double t);
/* Partition function of element z in stage ion (0 = neutral) at T (Barklem & Collet 2016). */
double rvs_synth_partition(int z, int ion, double t);
/* Saha ratio N(ion+1)/N(ion) at T and electron density ne [cm^-3]. */
double rvs_synth_saha(int z, int ion, double t, double ne);
/* Boltzmann fraction of stage (z, ion) in a level of excitation ep [eV] and weight g. */
double rvs_synth_boltzmann(int z, int ion, double g, double ep, double t);

#ifdef __cplusplus
}
#endif

#endif
