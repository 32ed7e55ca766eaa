/* rvsfit/library.h: template libraries in rvsfit-cl's own format (doc/template-library.md):
 * the loader, which validates a file completely before anything uses it, the accessors the fit
 * needs (wavelength grid, parameters and their mapping, the network description for
 * rvs_nn_create, provenance for the output header), rvspecfit's outside-grid penalty, and the
 * writer the trainer uses.
 *
 * One file holds one arm setup: <dir>/rvsfit_<setup>.fits. Host-only module (cfitsio); the
 * network itself goes to the device through rvs_nn_create(ctx, rvs_library_nn_desc(arm), ...). */
#ifndef RVSFIT_LIBRARY_H
#define RVSFIT_LIBRARY_H

#include <stddef.h>

#include "rvsfit/nn.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RVS_LIBRARY_FORMAT_NAME "rvsfit-cl template library"
#define RVS_LIBRARY_FORMAT_VERSION 2 /* RVSFVER the writer writes; the loader reads 1 and 2 */
#define RVS_LIBRARY_LSF_MAX_NODES 4096 /* rows of an LSF table */
#define RVS_LIBRARY_MAX_HULLS 8      /* HULL<k> extensions per file */
#define RVS_LIBRARY_STRLEN 72        /* room for any FITS string value (68 chars) */

/* One network input (a PARAMS row). */
struct rvs_library_param {
    char name[RVS_LIBRARY_STRLEN]; /* "teff", "logg", "feh", "alpha" */
    int log10;                     /* LOG10: mapped through log10 before scaling */
    double m, s;                   /* x = (y - M) / S */
    double train_min, train_max;   /* physical training range (informational) */
};

/* One convex polygon of the outside-grid penalty (a HULL<k> extension), in mapped coordinates.
 * Row j: vertex (x[j], y[j]) and the facet from vertex j to j+1 (the last one closes the polygon):
 * inside <=> nx[j] * X + ny[j] * Y + offset[j] <= 0 for all j. */
struct rvs_library_hull {
    size_t i1, i2; /* PARAMS rows of the X and Y coordinates */
    size_t n;      /* vertices, >= 3 */
    const double *x, *y, *nx, *ny, *offset;
};

/* Provenance keywords (§2). Strings are "" when the file lacks the keyword; the numbers are -1
 * (ckptver, nnarchv) or NaN (trnloss, valerr, valmed, val99) when absent. */
struct rvs_library_provenance {
    char creator[RVS_LIBRARY_STRLEN], creator_version[RVS_LIBRARY_STRLEN];
    char date[RVS_LIBRARY_STRLEN], grid_name[RVS_LIBRARY_STRLEN];
    char librev[RVS_LIBRARY_STRLEN];   /* LIBREV: the output header's TMPLREV */
    char srcsoft[RVS_LIBRARY_STRLEN];  /* SRCSOFT */
    char srcver[RVS_LIBRARY_STRLEN];   /* SRCVER: the output header's TMPLSVR */
    char srch5[RVS_LIBRARY_STRLEN], srch5sha[RVS_LIBRARY_STRLEN];
    char srcnn[RVS_LIBRARY_STRLEN], srcnnsha[RVS_LIBRARY_STRLEN];
    long ckptver, nnarchv;
    const char *traincmd; /* TRAINCMD (long string) or NULL */
    double trnloss, valerr;
    double valmed, val99; /* VALMED, VAL99: held-out median and 99th percentile |dflux|/flux */
    long ntrain, nvalid, nepoch; /* NTRAIN, NVALID, NEPOCH of rvsfit-cl-train (-1: absent) */
    /* VDWMODE, SAMPBRD: the physics of an rvsfit-cl-mkgrid grid ("" and NAN when absent;
     * written only when grid_vdw is not empty) */
    char grid_vdw[RVS_LIBRARY_STRLEN];
    double grid_sampling;
};

/* The templates' line-spread function (format version 2, doc/template-library.md §2.1): what
 * the emulator's spectra are already convolved with. Version-1 files load as unknown. */
enum rvs_library_lsf_kind {
    RVS_LIBRARY_LSF_UNKNOWN = 0, /* LSFTYPE = 'UNKNOWN' (or a version-1 file) */
    RVS_LIBRARY_LSF_GAUSSIAN = 1 /* LSFTYPE = 'GAUSSIAN': sigma, or sigma(lambda) by a table */
};
struct rvs_library_lsf {
    int kind;                /* enum rvs_library_lsf_kind */
    double sigma;            /* LSFSIG: Gaussian sigma in Å (with a table: its median); NaN if
                              * unknown */
    size_t nnodes;           /* rows of the LSF table HDU; 0: sigma is constant */
    const double *node_wave; /* nnodes vacuum Å, strictly increasing */
    const double *node_sigma; /* nnodes sigma in Å (> 0), linear between nodes, flat beyond */
    int resolution_matrix;   /* LSFRMAT: the library is made to be fitted through each fibre's
                              * resolution matrix (its LSF is narrower than the instrument's) */
};

/* Everything a file holds, as the loader returns it and the writer takes it. Arrays are
 * borrowed: the loader's point into the open arm, the writer only reads them. */
struct rvs_library_content {
    char setup[RVS_LIBRARY_STRLEN]; /* SETUP; the file is rvsfit_<setup>.fits */
    size_t npix;
    const double *wave; /* npix vacuum wavelengths (Å), log-uniform */
    double log_step;    /* LOGSTEP = ln(wave[j+1] / wave[j]) */
    size_t nparam;
    struct rvs_library_param params[RVS_NN_MAX_INPUTS];
    /* The network as trained (BatchNorm not folded): shapes, weights, BN eps, and the mapping
     * (log_input, map_center, map_scale mirror params[]). */
    struct rvs_nn_desc nn;
    size_t nhull;
    struct rvs_library_hull hulls[RVS_LIBRARY_MAX_HULLS];
    struct rvs_library_provenance prov;
    struct rvs_library_lsf lsf;
    long format_version; /* RVSFVER of the file read (the writer writes the current one) */
};

/* An open, validated library file (opaque). */
struct rvs_library_arm;

/* Opens <dir>/rvsfit_<setup>.fits and validates everything doc/template-library.md §6 asks
 * (checksums of every HDU, format name and version, keywords and their types, HDU shapes and
 * data types, finite values, S != 0, BatchNorm variances >= 0, log-uniform WAVE, closed convex
 * counter-clockwise hulls with unit normals). A failure is logged naming the file, the HDU and
 * keyword or column and what to do, and returned as RVS_ERR_IO (cannot read), RVS_ERR_FORMAT
 * (not a valid library file) or RVS_ERR_NOMEM; *arm is then NULL. */
int rvs_library_open(const char *dir, const char *setup, struct rvs_library_arm **arm);
/* The same for a file given by its path (its name must still be rvsfit_<SETUP>.fits). */
int rvs_library_open_file(const char *path, struct rvs_library_arm **arm);
/* Frees everything; accepts NULL and *arm == NULL, sets *arm to NULL. */
void rvs_library_close(struct rvs_library_arm **arm);

/* RVS_OK when the parameters are (teff, logg, feh, alpha) in this order, as rvsfit-cl's DESI
 * fit requires; else RVS_ERR_FORMAT with a message naming the file. */
int rvs_library_check_desi(const struct rvs_library_arm *arm);

const char *rvs_library_path(const struct rvs_library_arm *arm);
const char *rvs_library_setup(const struct rvs_library_arm *arm);
/* The whole content (borrowed, valid until rvs_library_close). */
const struct rvs_library_content *rvs_library_content(const struct rvs_library_arm *arm);
size_t rvs_library_npix(const struct rvs_library_arm *arm);
const double *rvs_library_wave(const struct rvs_library_arm *arm);
double rvs_library_log_step(const struct rvs_library_arm *arm);
size_t rvs_library_nparam(const struct rvs_library_arm *arm);
/* Parameter i's name, or NULL when i >= nparam. */
const char *rvs_library_param_name(const struct rvs_library_arm *arm, size_t i);
/* Index of a parameter by name, or -1. */
int rvs_library_param_index(const struct rvs_library_arm *arm, const char *name);
const struct rvs_library_provenance *rvs_library_provenance(const struct rvs_library_arm *arm);
/* The templates' LSF (kind UNKNOWN for a version-1 file or LSFTYPE = 'UNKNOWN'). */
const struct rvs_library_lsf *rvs_library_lsf(const struct rvs_library_arm *arm);
/* Gaussian sigma in Å of an LSF at vacuum wavelength lambda (a table is interpolated linearly and
 * held flat beyond its ends); NaN when the LSF is unknown. */
double rvs_library_lsf_sigma_at(const struct rvs_library_lsf *lsf, double lambda);
/* A one-line description for messages: "Gaussian sigma 0.658 Å (FWHM 1.55 Å)", "Gaussian sigma
 * 0.45-0.55 Å (table of 12 nodes)" or "unknown". */
void rvs_library_lsf_describe(const struct rvs_library_lsf *lsf, char *buf, size_t size);
/* The network in the form rvs_nn_create takes (weights as trained; rvs_nn_create folds the
 * BatchNorm). */
const struct rvs_nn_desc *rvs_library_nn_desc(const struct rvs_library_arm *arm);

/* The mapping of §3 as rvspecfit's Mapper.forward computes it: theta (nparam physical values) is
 * rounded to float32, log10 of flagged entries is taken in float32, then x = (y - M) / S in
 * double. */
void rvs_library_map(const struct rvs_library_arm *arm, const double *theta, double *x);
/* rvspecfit's outside-grid penalty of theta (physical units): the square of the largest facet
 * value max_k,j (NX_j x[i1] + NY_j x[i2] + OFFSET_j) over all hulls when positive, else 0, on
 * the mapped vector of rvs_library_map. NaN when a mapped value is not finite. */
double rvs_library_outside(const struct rvs_library_arm *arm, const double *theta);
/* The same for count vectors theta[e * nparam ...] into out[e] (host loop; cheap). */
void rvs_library_outside_many(const struct rvs_library_arm *arm, const double *theta,
                              size_t count, double *out);

/* Validates `content` with the loader's rules and writes it to `path` in the current format
 * version (2: with the LSF keywords of content->lsf, and its LSF table HDU when nnodes > 0): the
 * HDUs and keywords rvs-import writes (SRCKEY with the PyTorch state-dict key of every weight),
 * CHECKSUM/DATASUM in every HDU, DATE = now, CREATOR/CREATVER = content->prov's or
 * "rvsfit-cl"/the package version when empty. Written to a temporary file in the destination
 * directory and renamed, so a failure leaves no partial file; an existing file is replaced only
 * when `overwrite` is set. The base name of path must be rvsfit_<setup>.fits. */
int rvs_library_write_arm(const char *path, const struct rvs_library_content *content,
                          int overwrite);

#ifdef __cplusplus
}
#endif

#endif
