/* rvsfit/output.h: the rvtab_*.fits and rvmod_*.fits files that rvspecfit's rvs_desi_fit writes
 * (HDUs, columns, units, header keywords), their names, and the --process-status-file lines.
 *
 * Use: fill one struct rvs_output_row per selected input row (rvs_output_row_init first), the
 * per-arm model arrays and the header information, compute the names with rvs_output_paths, then
 * rvs_output_write writes both files atomically. rvs_output_status_append records the outcome. */
#ifndef RVSFIT_OUTPUT_H
#define RVSFIT_OUTPUT_H

#include <stddef.h>

#include "rvsfit/desi.h" /* enum rvs_desi_arm: arms are always b, r, z in this order */

#ifdef __cplusplus
extern "C" {
#endif

/* RVS_WARN bits (rvspecfit desi_fit.py, `bitmasks`). */
enum rvs_warn_bit {
    RVS_WARN_CHISQ = 1,
    RVS_WARN_RV = 2,
    RVS_WARN_RVERR = 4,
    RVS_WARN_PARAM = 8,
    RVS_WARN_VSINI = 16,
    RVS_WARN_BAD_SPECTRUM = 32,
    RVS_WARN_BAD_HESSIAN = 64,
    /* rvsfit-cl's own: an arm with data was left out of the fit because its resolution matrix
     * holds non-finite values (the other arms were fitted) */
    RVS_WARN_BAD_ARM = 128
};

/* PARAM_PRIOR bits (rvsfit-cl's column): the data do not constrain the parameter. Its error from
 * the Hessian alone exceeds the standard deviation of a flat prior over the library's training
 * range, range / sqrt(12) (or the Hessian gave none), so *_ERR is set by that prior: the
 * Gaussian of the Hessian cut to the training box (src/fit/box_errors.c), or range / sqrt(12)
 * where the Hessian gave no covariance. The fit is not a failure: [alpha/Fe] of a hot star is
 * simply not in its spectrum. */
enum rvs_prior_bit {
    RVS_PRIOR_TEFF = 1,
    RVS_PRIOR_LOGG = 2,
    RVS_PRIOR_FEH = 4,
    RVS_PRIOR_ALPHAFE = 8
};

#define RVS_OUTPUT_RR_LEN 32 /* room for redrock's SPECTYPE (6A) and SUBTYPE (20A) */

/* One RVTAB row: one selected input spectrum. Columns copied from the input FIBERMAP (FIBER,
 * REF_ID, REF_CAT, TARGET_RA, TARGET_DEC, TARGETID, EXPID) are read by the writer from
 * `input_row`. A row with RVS_WARN_BAD_SPECTRUM is written with NaN fit values, NPIX_TOT 0 and
 * a zero model, whatever it holds. */
struct rvs_output_row {
    long input_row; /* 0-based row of the input FIBERMAP (and SCORES) */
    double vrad, vrad_err, vrad_skew, vrad_kurt, vsini;       /* km/s except skew, kurt */
    double logg, logg_err, teff, teff_err, feh, feh_err, alphafe, alphafe_err; /* teff in K */
    double chisq_tot, chisq_c_tot;
    long long npix_tot;
    long long npix_clip; /* pixels left out as outliers (--clip-sigma), not in npix_tot */
    long long param_prior; /* RVS_PRIOR_* bits: *_ERR is set by the prior range, not the data */
    double chisq[RVS_DESI_NARMS], chisq_c[RVS_DESI_NARMS]; /* NaN for an arm not fitted for this row */
    double vrad_ccf;                             /* km/s */
    long long rvs_warn;                          /* RVS_WARN_* bits; SUCCESS = (rvs_warn == 0) */
    float sn[RVS_DESI_NARMS];                         /* S/N used for the selection */
    double rr_z;                                 /* NaN unless redrock was requested */
    char rr_spectype[RVS_OUTPUT_RR_LEN];         /* "" unless redrock was requested */
    char rr_subtype[RVS_OUTPUT_RR_LEN];
};

/* Sets every float to NaN, integers to 0, strings to "" and input_row to `input_row`. */
void rvs_output_row_init(struct rvs_output_row *row, long input_row);

/* A DEPNAMnn/DEPVERnn pair: one piece of software that produced the file. */
struct rvs_output_dep {
    const char *name;
    const char *version;
};

/* TMPLCONi/TMPLREVi/TMPLSVRi: one template configuration (e.g. "desi_b"), its revision and the
 * software version that built it. */
struct rvs_output_template {
    const char *config;
    const char *revision;
    const char *software;
};

struct rvs_output_request {
    const char *input_path; /* the DESI coadd/spectra file the rows come from */
    const char *tab_path;   /* destination names, from rvs_output_paths */
    const char *mod_path;
    unsigned arms; /* fitted arms: bit (1u << RVS_ARM_x); at least one */

    size_t nrows; /* 0: no target selected (files with empty tables) */
    const struct rvs_output_row *rows;
    /* Best-fit models in data units, row-major [nrows][nwave[arm]], row k matching rows[k];
     * NULL writes zeros. nwave[arm] must equal the input's {B,R,Z}_WAVELENGTH length when
     * model[arm] is given. */
    const float *model[RVS_DESI_NARMS];
    long nwave[RVS_DESI_NARMS];
    int vrad_ccf; /* write the VRAD_CCF column (the start came from the CCF) */

    /* Primary header. The writer itself adds rvsfit-cl's and cfitsio's versions first. */
    const struct rvs_output_dep *deps;
    size_t ndeps;
    const struct rvs_output_template *templates;
    size_t ntemplates;
    const char *config_path;  /* RVS_CONF; NULL: keyword left out */
    const char *command_line; /* RVS_CMD; NULL: left out */
    const char *redrock_path; /* RR_FILE; NULL: written empty */
    const char *device;       /* RVS_DEV: the OpenCL device; NULL: left out */
    const char *driver;       /* RVS_DRV: its driver version; NULL: left out */
};

/* Sets every field to its default (all arms, CCF start, everything else empty). */
void rvs_output_request_init(struct rvs_output_request *req);

/* How output names are made (rvs_desi_fit's --output-dir, --output-tab-prefix,
 * --output-mod-prefix, --no-subdirs). */
struct rvs_output_naming {
    const char *output_dir; /* default "." */
    const char *tab_prefix; /* default "rvtab" */
    const char *mod_prefix; /* default "rvmod" */
    int no_subdirs;         /* 0: <output_dir>/<parent2>/<parent1>/<prefix>_<basename> */
};

void rvs_output_naming_init(struct rvs_output_naming *naming);

/* <output_dir>/[<last two parent directories of the input>/]<prefix>_<input basename less .gz>.
 * The parents come from the input's absolute, lexically normalised path. *tab_path and
 * *mod_path are allocated (free them). RVS_ERR_INVALID_ARGUMENT when the input has no file name
 * or, with subdirectories, fewer than two parent directories. */
int rvs_output_paths(const struct rvs_output_naming *naming, const char *input_path,
                     char **tab_path, char **mod_path);

/* 1 when both files exist, else 0. */
int rvs_output_exist(const char *tab_path, const char *mod_path);
/* 1 when both outputs of input_path are there and finished (--skipexisting): readable FITS
 * files whose every HDU passes its checksum, with the same RVS_PAIR (one write made both) and,
 * when they record it, the input's present RVS_INID (size and modification time). Else 0, with
 * a warning naming the file and what is wrong (the input is then fitted again). Outputs of
 * older versions, without RVS_PAIR in either, are accepted on their checksums. */
int rvs_output_done(const char *tab_path, const char *mod_path, const char *input_path);

/* RVS_OK when the directories of both outputs exist or can be made and a file can be created in
 * each (checked before a fit, so that an unwritable destination costs no fitting); else the
 * error, with a message naming the directory. */
int rvs_output_check_writable(const char *tab_path, const char *mod_path);

/* Installs handlers of SIGINT, SIGTERM and SIGHUP that remove the temporary outputs being
 * written, say so on stderr, and end the process with the signal. Temporaries left by a process
 * killed otherwise (SIGKILL) are removed by the next write to the same name. */
void rvs_output_install_signal_cleanup(void);

/* The input being fitted now (NULL: none), and the --process-status-file (NULL: none): a signal
 * that ends the process then names it on stderr and appends its FAILURE status line. */
void rvs_output_set_in_flight(const char *input_path, const char *status_path);

/* Writes rvmod then rvtab, each to a temporary name in its destination directory (created as
 * needed) with CHECKSUM/DATASUM on every HDU, and renames both only when both are complete. On
 * any error the temporary files are removed, existing outputs are left as they were, the reason
 * is logged and a status returned. */
int rvs_output_write(const struct rvs_output_request *req);

/* --process-status-file (rvspecfit update_process_status_file). */
enum rvs_output_status { RVS_OUTPUT_SUCCESS = 0, RVS_OUTPUT_FAILURE = 1, RVS_OUTPUT_EXISTING = 2 };

/* Creates or empties the status file at the start of a run. */
int rvs_output_status_start(const char *status_path);

/* Appends "<input> SUCCESS|FAILURE|EXISTING <nobj> <seconds, 2 decimals>\n" with one O_APPEND
 * write, so concurrent processes never interleave within a line. rvspecfit writes nobj -1 and
 * 0.00 s for EXISTING, and 0 objects for FAILURE. */
int rvs_output_status_append(const char *status_path, const char *input_path,
                             enum rvs_output_status status, long nobj, double seconds);

#ifdef __cplusplus
}
#endif

#endif
