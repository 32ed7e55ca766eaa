/* mock.h: the DESI mock-coadd generator behind rvsfit-cl-mock (doc/mock.md), as a module so
 * that the tests can compare what it holds in memory with what the files hold. Not installed. */
#ifndef RVS_MOCK_H
#define RVS_MOCK_H

#include <stddef.h>
#include <stdint.h>

#include "rvsfit.h"

#define RVS_MOCK_NDIAG 11 /* resolution-matrix diagonals, as DESI coadds */

/* DESI specmask bits (desispec maskbits.py) the mock sets. */
enum rvs_mock_maskbit {
    RVS_MOCK_SOMEBADPIX = 1, /* bit 0: some inputs masked (the dichroic region) */
    RVS_MOCK_ALLBADPIX = 2,  /* bit 1: all inputs masked (bad columns): IVAR 0, FLUX 0 */
    RVS_MOCK_COSMIC = 4      /* bit 2: a masked cosmic */
};

/* The continuum multiplier (doc/mock.md, "The model"). */
enum rvs_mock_continuum {
    RVS_MOCK_CONTINUUM_REALISTIC = 0, /* extinction (CCM89 + O'Donnell 94) x a smooth flux-
                                       * calibration error across the three arms (default) */
    RVS_MOCK_CONTINUUM_LEGENDRE = 1   /* per arm exp(cubic Legendre), the earlier model */
};

struct rvs_mock_options {
    const char *library_dir; /* rvsfit_desi_{b,r,z}.fits */
    size_t ntargets;         /* random targets (ignored with params_path) */
    const char *params_path; /* FITS or CSV table of true parameters, or NULL */
    double snr_lo, snr_hi;   /* per-pixel S/N, log-uniform */
    double vrad_lo, vrad_hi; /* km/s, uniform */
    double vsini_lo, vsini_hi; /* km/s, uniform */
    double lsf_scale;        /* multiplies the mock LSF FWHM; 0: identity RESOLUTION */
    int lsf_on_top;          /* 1: R applied on top of the templates' own LSF (the earlier
                              * model); 0 (default): the spectra's total LSF is R */
    int continuum;           /* enum rvs_mock_continuum (default realistic) */
    int unflagged_cosmics;   /* cosmics per arm left out of the mask (default 1; 0..5) */
    double continuum_scale;  /* multiplies E(B-V) and the continuum coefficients (default 1;
                              * 0: flat) */
    uint64_t seed;
    long healpix, nside;
    const char *survey, *program;
};

/* Defaults: 10 targets, S/N 5..100, vrad -300..300, vsini 0..30, lsf_scale 1 (total LSF = R),
 * realistic continuum of scale 1, seed 1, healpix 10000, nside 64, main/bright. */
void rvs_mock_options_init(struct rvs_mock_options *o);

struct rvs_mock_target {
    int64_t targetid;
    double theta[4]; /* teff, logg, feh, alpha */
    double vrad, vsini, snr;
    double flux_level;        /* median of the noiseless r-arm model (1e-17 erg/s/cm2/Å) */
    double flux_scale;        /* the factor on (emulator flux x continuum) giving that level */
    /* continuum coefficients: legendre: exp(sum_k cont[a][k] P_{k+1}(x)), x across arm a;
     * realistic: cont[0][k] are the calibration error's c_{k+1} (u across 3600-9824 A), the
     * other six 0 */
    double cont[RVS_DESI_NARMS][3];
    double ebv;               /* E(B-V) of the realistic continuum (0 with legendre) */
    double contmiss[RVS_DESI_NARMS]; /* rms relative residual of the continuum multiplier after
                                      * an unweighted fit by rvsfit-cl's basis (npoly 10, RBF) */
    double lsf_factor;        /* fibre-to-fibre LSF width factor */
    double sn[RVS_DESI_NARMS]; /* get_sns on the mock: SCORES MEDIAN_COADD_SNR_X */
    double outside[RVS_DESI_NARMS]; /* library outside penalty of theta (0: inside) */
    int ncosmic_flagged[RVS_DESI_NARMS], ncosmic_unflagged[RVS_DESI_NARMS];
    double ra, dec;
    int64_t ref_id;
    int nexp;
};

struct rvs_mock {
    size_t n;
    struct rvs_mock_target *t;
    size_t nwave[RVS_DESI_NARMS];
    double *wave[RVS_DESI_NARMS];
    /* n x nwave, row-major, as written */
    float *flux[RVS_DESI_NARMS], *ivar[RVS_DESI_NARMS];
    int32_t *mask[RVS_DESI_NARMS];
    float *resolution[RVS_DESI_NARMS]; /* n x NDIAG x nwave, DESI's DIA layout */
    /* not written: the noiseless model (continuum and flux scale included), its continuum
     * multiplier (flux scale included: model = continuum x the LSF-convolved shifted template)
     * and the unflagged-cosmic pixels */
    double *model[RVS_DESI_NARMS];
    double *continuum[RVS_DESI_NARMS];
    unsigned char *cosmic_unflagged[RVS_DESI_NARMS];
    double lsf_fwhm[RVS_DESI_NARMS][2]; /* FWHM (Å) of the mock LSF at the arm's ends */
    char lib_lsf[RVS_DESI_NARMS][96];   /* rvs_library_lsf_describe of each arm's library */
    struct rvs_mock_options opt;
    char setups_rev[256]; /* the libraries' LIBREV/SRCVER for the headers */
};

/* FWHM in Å of the mock's Gaussian LSF at the two ends of each arm (before lsf_scale and the
 * per-fibre factor), and the arm grids (DESI standard values). */
extern const double rvs_mock_lsf_fwhm[RVS_DESI_NARMS][2];
extern const double rvs_mock_wave_start[RVS_DESI_NARMS];
extern const size_t rvs_mock_wave_count[RVS_DESI_NARMS];
#define RVS_MOCK_WAVE_STEP 0.8

/* Gaussian sigma (Å) of target t's resolution-matrix row at wavelength lambda of arm a, as
 * make_resolution builds it: lsf_scale x the fibre's factor x FWHM(lambda) / 2.3548, FWHM linear
 * in lambda between the arm's end values and held at them beyond the ends. */
double rvs_mock_lsf_sigma(const struct rvs_mock *m, int a, size_t t, double lambda);

/* The Gaussian row weights of the mock's resolution matrix: row i of an arm with LSF width sigma
 * (Å) at pixel i; w[d + h] for d = -h..h (h = NDIAG / 2), normalised over the entries with
 * 0 <= i + d < n. */
void rvs_mock_resolution_row(const double *wave, size_t n, size_t i, double sigma, double *w);

/* Draws or reads the targets and makes every array (model on ctx's device). With lsf_scale > 0
 * and not lsf_on_top, refuses (RVS_ERR_INVALID_ARGUMENT, message logged) a library whose LSF is
 * unknown or not narrower than R's everywhere in an arm. */
int rvs_mock_generate(struct rvs_context *ctx, const struct rvs_mock_options *o,
                      struct rvs_mock **mock);
void rvs_mock_free(struct rvs_mock **mock);

/* Writes the coadd to out_path, the truth table beside it (truth-<name>, see doc/mock.md) and,
 * when redrock is set, redrock-<name>; each atomically (temporary file + rename). */
int rvs_mock_write(const struct rvs_mock *mock, const char *out_path, int redrock,
                   const char *command_line);
/* The names of the companion files of out_path ("truth" or "redrock"); caller frees. */
char *rvs_mock_companion_path(const char *out_path, const char *kind);

/* rvspecfit's get_sns for one spectrum (desi_fit.py): median of flux * sqrt(ivar) in float32
 * over pixels with ivar > 0 and mask == 0; -1e9 when there are none. */
double rvs_mock_get_sn(const float *flux, const float *ivar, const int32_t *mask, size_t n);

#endif
