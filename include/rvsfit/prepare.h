/* rvsfit/prepare.h: per-arm data preparation before the fit, as rvspecfit's get_specdata
 * (desi_fit.py): usable-arm test, bad-pixel mask, interpolation over bad runs, error floor, and
 * the --resolution-matrix variant (template-LSF deconvolution, edge renormalisation). Host code. */
#ifndef RVSFIT_PREPARE_H
#define RVSFIT_PREPARE_H

#include <stddef.h>
#include <stdint.h>

#include "rvsfit/desi.h"

#ifdef __cplusplus
extern "C" {
#endif

struct rvs_prepare_options {
    int mask_dichroic;                      /* mask 4300 < λ < 4450 Å (default 1) */
    int use_resolution;                     /* --resolution-matrix (default 0) */
    double lsf_sigma0[RVS_DESI_NARMS];      /* templates' Gaussian LSF σ in Å (default 0.5) */
    /* A wavelength-dependent template LSF (the library's LSF table), or NULL: σ in Å at vacuum
     * wavelength λ, evaluated once per pixel of the file's grid; `lsf_data` is its argument. */
    double (*lsf_sigma0_at[RVS_DESI_NARMS])(const void *lsf_data, double lambda);
    const void *lsf_data[RVS_DESI_NARMS];
};

void rvs_prepare_options_init(struct rvs_prepare_options *options);

/* One arm of one spectrum. Inputs: wavelength (n), flux/ivar/mask (n), and when
 * options->use_resolution the DESI resolution data res [ndiag][n]. Outputs (n each): spec,
 * espec (σ), bad (1 = masked: bad data, dichroic, resolution edges); res_out [ndiag][n] the
 * prepared resolution in the same DIA convention (only with use_resolution). *used = 0 when the
 * arm is skipped: all masked, unusable median flux, no good pixel at all, or a non-finite
 * resolution matrix. *clamped = 1 when more than 1% of good pixels had σ raised to the floor. */
int rvs_prepare_arm(const double *wave, size_t n, const float *flux, const float *ivar,
                    const uint32_t *mask, const float *res, size_t ndiag, double sigma0,
                    const struct rvs_prepare_options *options, double *spec, double *espec,
                    unsigned char *bad, double *res_out, int *used, int *clamped);

/* Linear interpolation over runs of bad pixels (rvspecfit's interpolate_bad_regions): a run
 * touching the start takes the first good value after it, one touching the end the last good
 * value before it, others the straight line between their two neighbours. All-bad or no-bad
 * input is copied unchanged. in and out may be the same array. */
void rvs_prepare_interpolate_bad(const double *in, const unsigned char *bad, size_t n,
                                 double *out);

/* The prepared resolution matrix (rvspecfit's construct_resolution_sparse_matrix with its
 * deconvolve_resolution_matrix): DIA data res [ndiag][n] (row d holds offset ndiag/2 - d, indexed
 * by column) -> out [ndiag][n], the Gaussian σ0 = sigma0_angstrom / pix_angstrom pixels removed
 * by a ndiag x ndiag linear solve, then the ndiag/2 edge rows at each end rescaled to the median
 * row sum. */
int rvs_prepare_resolution(const float *res, size_t ndiag, size_t n, double pix_angstrom,
                           double sigma0_angstrom, double *out);
/* The same with a template LSF that may vary along the arm: sigma0_pixel[i] (Å) for row i when
 * not NULL, else sigma0_angstrom everywhere. *narrow_rows (optional) gets the number of interior
 * rows (at least ndiag/2 from the ends) whose own Gaussian width, the square root of the row's
 * second moment, is not larger than σ0: there no deconvolution exists and the solve sharpens the
 * templates instead (rvspecfit does the same solve without a word). */
int rvs_prepare_resolution_lsf(const float *res, size_t ndiag, size_t n, double pix_angstrom,
                               const double *sigma0_pixel, double sigma0_angstrom, double *out,
                               size_t *narrow_rows);

/* A batch of prepared spectra: per arm contiguous [ntargets][nwave] (resolution
 * [ntargets][ndiag][nwave]); used[arm][t] says whether arm `arm` of target t is fitted;
 * bad_spectrum[t] = 1 when no arm is (RVS_WARN BAD_SPECTRUM). Buffers are kept between calls. */
struct rvs_prepared {
    size_t ntargets;
    size_t capacity;
    unsigned arms;
    int with_resolution;
    size_t nwave[RVS_DESI_NARMS];
    size_t ndiag[RVS_DESI_NARMS];
    double *spec[RVS_DESI_NARMS];
    double *espec[RVS_DESI_NARMS];
    unsigned char *bad[RVS_DESI_NARMS];
    unsigned char *used[RVS_DESI_NARMS];
    double *resolution[RVS_DESI_NARMS];
    unsigned char *bad_spectrum;
    /* per target, bit (1u << arm) set when that arm had data but a non-finite resolution matrix
     * and was left out (RVS_WARN_BAD_ARM) */
    unsigned char *dropped_arms;
    size_t nclamped; /* arms with more than 1% of σ clamped in the last batch */
    /* With the resolution matrix, per arm in the last batch: interior rows whose R is not wider
     * than the templates' LSF, and the interior rows looked at (used arms only). */
    size_t narrow_rows[RVS_DESI_NARMS], checked_rows[RVS_DESI_NARMS];
    double *sigma0_pixel[RVS_DESI_NARMS]; /* per-pixel template σ0 (Å) of a varying LSF */
};

void rvs_prepared_init(struct rvs_prepared *prepared);
void rvs_prepared_free(struct rvs_prepared *prepared);

/* Prepares every row of `spectra` (read with RVS_DESI_READ_RESOLUTION when use_resolution);
 * wave[arm] is the file's grid of each arm read. Bad spectra are flagged, not errors. */
int rvs_prepare_batch(const struct rvs_desi_spectra *spectra,
                      const double *const wave[RVS_DESI_NARMS],
                      const struct rvs_prepare_options *options, struct rvs_prepared *out);

#ifdef __cplusplus
}
#endif

#endif
