/* rvsfit/mkgrid.h: the grid generator rvsfit-cl-mkgrid is built on: the DESI arms, degrading a
 * synthetic spectrum to an arm, the parameter designs (regular grid or Latin hypercube), the
 * multi-threaded run and the FITS output (doc/mkgrid.md). */
#ifndef RVSFIT_MKGRID_H
#define RVSFIT_MKGRID_H

#include <stddef.h>
#include <stdint.h>

#include "rvsfit/synth.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One spectrograph arm: vacuum wavelength range, nominal pixel step and Gaussian FWHM [A]. */
struct rvs_mkgrid_arm {
    const char *name;   /* "desi_b" */
    const char *prefix; /* HDU name prefix "B" */
    double lambda_min, lambda_max, step, fwhm;
};
#define RVS_MKGRID_NARMS 3
/* b 3500-5900, r 5660-7720, z 7420-9924 A, step 0.4 A, FWHM 1.55/1.55/1.8 A (rvspecfit's
 * surveys/desi/make_desi.sh). */
extern const struct rvs_mkgrid_arm rvs_mkgrid_desi_arms[RVS_MKGRID_NARMS];

/* The arm's log-uniform grid as rvspecfit's make_interpol builds it: ln-step ln(1 + step /
 * mid), from lambda_min / (1 + 1000 km/s / c) to below lambda_max * (1 + 1000 km/s / c).
 * *wave is allocated (free()). */
int rvs_mkgrid_arm_wavelength(const struct rvs_mkgrid_arm *arm, double **wave, size_t *npix);

/* Convolves (hw, hf) (hn points, increasing wavelength) with a Gaussian of the given FWHM [A]
 * and evaluates it at wave[0..n-1], which must lie inside hw with 4 sigma to spare. */
int rvs_mkgrid_degrade(const double *hw, const double *hf, size_t hn, double fwhm,
                       const double *wave, size_t n, float *out);

/* A parameter range: step > 0 for a regular grid axis; min == max for a fixed value. */
struct rvs_mkgrid_range {
    double min, max, step;
};
#define RVS_MKGRID_MAX_KNOTS 8
struct rvs_mkgrid_design {
    struct rvs_mkgrid_range teff, logg, feh, alpha;
    size_t nrandom;        /* > 0: Latin hypercube of this many points instead of a grid */
    uint64_t seed;         /* for the Latin hypercube */
    /* Latin hypercube only: the fraction of points below each knot Teff (increasing, inside
     * the Teff range; fractions increasing in (0, 1)), log Teff uniform between knots; no
     * knots: log Teff uniform over the range */
    size_t teff_nknots;
    double teff_knot[RVS_MKGRID_MAX_KNOTS], teff_frac[RVS_MKGRID_MAX_KNOTS];
};
/* Points of the design that pass rvs_synth_params_check (unphysical corners are skipped; a
 * Latin hypercube is redrawn for them, so its strata are only approximately kept).
 * *points is allocated (free()). RVS_ERR_INVALID_ARGUMENT for an empty or impossible design. */
int rvs_mkgrid_design_points(const struct rvs_mkgrid_design *design,
                             struct rvs_synth_params **points, size_t *npoints);

/* Where the grid goes: path ending in ".fits" (or ".fit", ".fits.gz") -> one file with every
 * arm; otherwise an existing directory -> one file per arm, DIR/rvsfit-grid-<arm>.fits. */
struct rvs_mkgrid_output_options {
    const char *path;
    unsigned arms;     /* bit i: rvs_mkgrid_desi_arms[i]; 0 means all */
    int nthreads;      /* <= 0: one */
    size_t batch;      /* spectra per batch held in memory (0: 64 per thread) */
    const char *mode;  /* "single", "grid" or "random", recorded in the header */
    uint64_t seed;     /* recorded in the header */
    const char *teff_cdf; /* the --teff-cdf knots, recorded as TEFFCDF (NULL: none) */
    double fwhm[RVS_MKGRID_NARMS]; /* Gaussian LSF FWHM per arm in Å; 0: the arm's default */
};

/* Computes every point, degrades it to the arms and writes the file(s) atomically (temporary
 * name, then rename). A spectrum that fails is logged, its flux row set to NaN and its FLAG
 * set to 1; the run goes on. *nfailed (optional) gets their number. */
int rvs_mkgrid_run(const struct rvs_synth *synth, const struct rvs_synth_params *points,
                   size_t npoints, const struct rvs_mkgrid_output_options *out, size_t *nfailed);

#ifdef __cplusplus
}
#endif

#endif
