/* rvsfit/train_io.h: files of the NN trainer: the grid of spectra it reads (doc/trainer.md),
 * the parameter mapping it derives from the grid, and the template library it writes
 * (doc/template-library.md). Host-only (cfitsio). */
#ifndef RVSFIT_TRAIN_IO_H
#define RVSFIT_TRAIN_IO_H

#include <stddef.h>
#include <stdio.h>

#include "rvsfit/nn.h"
#include "rvsfit/train.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RVS_TRAIN_NAME_MAX 16 /* PARAMS.NAME is 16A */

struct rvs_train_grid {
    size_t nspec, npix, nparam;
    char names[RVS_NN_MAX_INPUTS][RVS_TRAIN_NAME_MAX + 1]; /* lower case, as requested */
    double *params;   /* nspec x nparam, physical units */
    float *logflux;   /* nspec x npix, natural log of the (normalised) flux */
    double *wave;     /* npix, vacuum Angstrom, log-uniform */
    double logstep;   /* (ln wave[N-1] - ln wave[0]) / (N - 1) */
    char gridname[72];
    char setup[72];   /* the grid's SETUP keyword, "" when absent */
    double lsf_sigma; /* Gaussian LSF sigma in Å from the flux HDU's FWHM keyword (rvsfit-cl-mkgrid
                       * writes it) or LSFSIG; NAN when the grid does not say */
    /* the generator physics rvsfit-cl-mkgrid records (VDWMODE, SAMPBRD): "" and NAN when absent */
    char vdw_mode[72];
    double sampling_broadening;
};

/* Reads a grid file: parameter columns `names` (case-insensitive) of the PARAMS table (rows with
 * a non-zero FLAG column are skipped), the FLUX
 * image [nspec, npix] (FLUXTYPE 'LINEAR': flux, its log is taken; 'LOG': natural log) and WAVE, or
 * for a multi-arm rvsfit-cl-mkgrid file <ARM>_FLUX and <ARM>_WAVELENGTH of `setup`'s arm.
 * Every problem is reported with the file, HDU and column or pixel. */
int rvs_train_grid_read(const char *path, const char *setup, const char *const *names,
                        size_t nparam, struct rvs_train_grid *grid);
void rvs_train_grid_free(struct rvs_train_grid *grid);

/* rvspecfit's Mapper (nn/NNInterpolator.py) with the constants of train_interpolator.py getData:
 * y = log10(theta) for flagged parameters, else theta; M = mean of y, S = standard deviation of
 * y (numpy's, ddof 0) over the whole grid; x = (y - M) / S. */
struct rvs_train_mapping {
    size_t nparam;
    int log10[RVS_NN_MAX_INPUTS];
    double m[RVS_NN_MAX_INPUTS], s[RVS_NN_MAX_INPUTS];
    double trainmin[RVS_NN_MAX_INPUTS], trainmax[RVS_NN_MAX_INPUTS];
};
/* Computes the mapping and the mapped grid (nspec x nparam doubles; and as floats, the network
 * inputs, when inputs_f is not NULL). Fails on a parameter that is constant or not positive
 * where log10 is asked for. */
int rvs_train_mapping_compute(const struct rvs_train_grid *grid, const int *log10,
                              struct rvs_train_mapping *map, double *mapped, float *inputs_f);

/* A convex hull in the format's convention (doc/template-library.md sec. 5). */
struct rvs_train_hull {
    size_t n;
    double *x, *y, *nx, *ny, *off;
};
/* Hull of points (px[i], py[i]) by Andrew's monotone chain: counter-clockwise, collinear points
 * dropped, with outward unit normals and offsets. Fails when fewer than 3 vertices remain. */
int rvs_train_hull_compute(const double *px, const double *py, size_t n,
                           struct rvs_train_hull *hull);
void rvs_train_hull_free(struct rvs_train_hull *hull);

/* What the library records besides the network. */
struct rvs_train_provenance {
    const char *setup;    /* arm setup, names the file rvsfit_<setup>.fits */
    const char *gridname; /* GRIDNAME */
    const char *traincmd; /* TRAINCMD (may be NULL) */
    const char *librev;   /* LIBREV (may be NULL: "") */
    double train_loss;    /* TRNLOSS (NAN: not written) */
    double val_loss;      /* VALERR: validation loss (NAN: not written) */
    double err_median, err_p99; /* VALMED, VAL99: |dflux|/flux of held-out spectra (NAN: none) */
    size_t ntrain, nval, epochs;
    double lsf_sigma;      /* LSFSIG: the templates' Gaussian sigma in Å (NAN: LSFTYPE UNKNOWN) */
    int resolution_matrix; /* LSFRMAT: made for the resolution-matrix path */
    const char *grid_vdw;  /* VDWMODE, SAMPBRD: the grid's generator physics (NULL: unknown) */
    double grid_sampling;
};

/* Writes <dir>/rvsfit_<setup>.fits (doc/template-library.md, version 2, with the LSF keywords): WAVE, PARAMS, the
 * trained weights (BatchNorm unfolded), hulls of the mapped grid points (pairs of parameters
 * (0,1), (2,3), ... as rvspecfit's OutsideInterpolator), provenance and checksums; through a
 * temporary file in dir and a rename. An existing file is replaced only with `force`. */
int rvs_train_library_write(const char *dir, const struct rvs_train_grid *grid,
                            const struct rvs_train_mapping *map, const double *mapped,
                            const struct rvs_trained_net *net,
                            const struct rvs_train_provenance *prov, int force);

/* The quantile q (0..1) of v[0..n-1], linear between order statistics (numpy's default);
 * reorders v. NAN for n = 0. */
double rvs_train_quantile(float *v, size_t n, double q);

/* Where the emulation error comes from (src/train/report.c): err holds |dflux|/flux of the
 * spectra rows[0..count-1] of g, count x npix; writes to out the overall median and 99th
 * percentile, the same per bin of each parameter (teff, logg, feh, alpha: fixed physical bins;
 * other names: six equal-width bins) and per twelfth of the wavelength range, each bin's share
 * of the pixels above the overall 99th percentile, that share on a Teff x log g grid, and the
 * ten spectra with the largest 99th percentile. `what` names the spectra ("held-out"). */
int rvs_train_error_report(FILE *out, const struct rvs_train_grid *g, const size_t *rows,
                           size_t count, const float *err, const char *what);

#ifdef __cplusplus
}
#endif

#endif
