/* rvsfit/select.h: which rows of a DESI file to fit, in rvs_desi_fit's order
 * (rvspecfit desi_fit.py: select_fibers_to_fit, fiberstatus_select, filter_fibermap, get_sns),
 * and the desitarget bit tables behind --objtypes. */
#ifndef RVSFIT_SELECT_H
#define RVSFIT_SELECT_H

#include <stddef.h>
#include <stdint.h>

#include "rvsfit/desi.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ desitarget bit tables */

/* Directory of the installed data files (default/, desitarget/): $RVSFIT_CL_DATADIR when set and
 * not empty, else the data directory beside the running program (<its bin>/../share/rvsfit-cl
 * as installed), else the pkgdatadir chosen at configure time, else the source tree's data/. */
const char *rvs_data_dir(void);

/* The desi_mask bits of one survey (opaque). */
struct rvs_targetmask;

/* Loads the desi_mask of `survey` ("main", "sv1", "sv2", "sv3", "cmx") from
 * <datadir>/desitarget/{targetmask,svN_targetmask,cmx_targetmask}.yaml (datadir NULL:
 * rvs_data_dir()). An unknown survey or an unreadable file is an error with a message. */
int rvs_targetmask_load(const char *survey, const char *datadir, struct rvs_targetmask **mask);
void rvs_targetmask_destroy(struct rvs_targetmask **mask);

size_t rvs_targetmask_count(const struct rvs_targetmask *mask);
/* Name and bit number of the i-th entry, in file order. */
const char *rvs_targetmask_entry(const struct rvs_targetmask *mask, size_t i, int *bit);
/* Bit number of a name, -1 when the table has no such name. */
int rvs_targetmask_bit(const struct rvs_targetmask *mask, const char *name);

/* OR of the bits whose names match one of the comma-separated POSIX extended regular expressions
 * in `objtypes`, each anchored at the start of the name (Python's re.match, as rvspecfit
 * uses it: "MWS_ANY,STD_*"). A bad expression, or one set of expressions that matches no name,
 * is RVS_ERR_INVALID_ARGUMENT with a message. */
int rvs_targetmask_match(const struct rvs_targetmask *mask, const char *objtypes,
                         uint64_t *bits);

/* ------------------------------------------------------------------ selection */

struct rvs_select_options {
    long long min_expid;     /* keep EXPID > min_expid (default -1, as rvs_desi_fit) */
    long long max_expid;     /* keep EXPID <= max_expid (default LLONG_MAX: no upper limit) */
    int use_targetids;       /* restrict to targetids[0..ntargetids) (an empty list keeps none) */
    const int64_t *targetids;
    size_t ntargetids;
    double min_sn;           /* keep max-over-arms S/N > min_sn (default -1e9) */
    const char *objtypes;    /* --objtypes, NULL for no type selection */
    int zbest_select;        /* --zbest-select */
    int zbest_include;       /* --zbest-include: RR_* values without selecting on them */
    const char *datadir;     /* NULL: rvs_data_dir() */
    size_t batch_rows;       /* rows per read when the S/N comes from the spectra (default 256) */
};

void rvs_select_options_init(struct rvs_select_options *options);

/* Selected rows of one file. Per-row arrays have nselected entries, in file order. */
struct rvs_selection {
    size_t nselected;
    size_t *rows;                 /* row indices into FIBERMAP, ascending */
    double *sn[RVS_DESI_NARMS];   /* S/N per arm used by the cut (NULL for arms not fitted) */
    char *redrock_path;           /* the redrock/zbest file used, NULL when none */
    int have_redrock;             /* rr_* below hold values (file found and read) */
    double *rr_z;                 /* NaN where the target is not in the redrock file */
    char *rr_spectype;            /* strings with stride width + 1, "" where not matched */
    size_t rr_spectype_width;
    char *rr_subtype;
    size_t rr_subtype_width;
};

/* Applies, in order: EXPID range (only when FIBERMAP has EXPID); fiber status
 * (status & ~(1<<3 | 1<<20)) == 0; OBJTYPE not SKY or BAD; TARGETID list; S/N cut; then, when
 * --objtypes or --zbest-select is given, keeps rows passing either of those. A missing redrock
 * file is a warning (the redrock selection is then off), as in rvspecfit. Errors (a bad regular
 * expression, a redrock file whose rows disagree with FIBERMAP, unreadable spectra for the S/N)
 * are logged and returned; the selection is then empty. */
int rvs_select_targets(struct rvs_desi_file *file, const struct rvs_select_options *options,
                       struct rvs_selection *selection);

void rvs_selection_free(struct rvs_selection *selection);

/* The redrock file of an input (rvspecfit's get_zbest_fname): for <dir>/coadd-X.fits[.gz] or
 * spectra-X.fits[.gz], the first existing of <dir>/redrock-X.fits, redrock-X.fits.gz (HDU
 * REDSHIFTS), zbest-X.fits, zbest-X.fits.gz (HDU ZBEST). *path (caller frees) is NULL and *hdu
 * "" when none exists or the name is neither coadd- nor spectra-. */
int rvs_select_redrock_path(const char *input, char **path, char hdu[16]);

/* Reads whitespace-separated integer TARGETIDs from a file (--targetid-file-from); returns them
 * sorted without duplicates (caller frees *ids). Anything that is not an integer is an error
 * naming the line. */
int rvs_select_read_targetids(const char *path, int64_t **ids, size_t *count);

/* Median of flux * sqrt(ivar) over pixels with ivar > 0 and mask == 0 (NaN values ignored);
 * -1e9 when none is finite (rvspecfit's get_sns for one spectrum). */
double rvs_select_spectrum_sn(const float *flux, const float *ivar, const uint32_t *mask,
                              size_t n, double *scratch);

#ifdef __cplusplus
}
#endif

#endif
