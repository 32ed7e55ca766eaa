/* rvsfit/desi.h: reader of DESI coadd-*.fits and spectra-*.fits files (cfitsio).
 *
 * A file is opened once: the headers of the requested arms are checked against each other, the
 * wavelength grids, the FIBERMAP columns the fit needs, the SCORES S/N columns and the primary
 * keywords copied into the outputs are read. The spectra themselves (flux, ivar, mask and, when
 * asked, the resolution matrix) are read afterwards for any list of rows, so a caller can walk
 * a file of any size in batches of bounded memory. HDUs are found by EXTNAME, never position. */
#ifndef RVSFIT_DESI_H
#define RVSFIT_DESI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The three DESI spectrograph arms, in rvspecfit's order. */
enum rvs_desi_arm { RVS_DESI_ARM_B = 0, RVS_DESI_ARM_R = 1, RVS_DESI_ARM_Z = 2, RVS_DESI_NARMS = 3 };

/* Arm sets are bit sets: 1u << enum rvs_desi_arm. */
#define RVS_DESI_ARMS_ALL 7u

/* "b", "r", "z" for an arm (lower case, as rvspecfit's setups). */
const char *rvs_desi_arm_name(int arm);

/* Parses an --fitarm value: comma-separated arm letters in any case ("b,r,z", "Z"); an unknown
 * or empty entry is RVS_ERR_INVALID_ARGUMENT with a message. */
int rvs_desi_parse_arms(const char *text, unsigned *arms);

/* FIBERMAP columns used by selection and copied into RVTAB. Arrays have nrows entries; an
 * optional column that the file lacks is NULL. Strings are stored NUL-terminated with a stride
 * of width + 1 bytes (row i at objtype + i * (objtype_width + 1)). */
struct rvs_desi_target_column {
    char name[24];   /* e.g. "DESI_TARGET", "SV3_MWS_TARGET", "CMX_TARGET" */
    int64_t *values; /* read as 64-bit integers */
};

#define RVS_DESI_MAX_TARGET_COLUMNS 20

struct rvs_desi_fibermap {
    size_t nrows;
    int64_t *targetid;
    int32_t *fiberstatus;        /* FIBERSTATUS (spectra) or COADD_FIBERSTATUS (coadd) */
    char fiberstatus_column[24]; /* which of the two */
    char *objtype;               /* OBJTYPE */
    size_t objtype_width;
    int64_t *expid;  /* EXPID (spectra and tile files) or NULL */
    int32_t *fiber;  /* FIBER or NULL */
    int64_t *ref_id; /* REF_ID or NULL */
    char *ref_cat;   /* REF_CAT or NULL */
    size_t ref_cat_width;
    double *target_ra;  /* TARGET_RA or NULL */
    double *target_dec; /* TARGET_DEC or NULL */
    /* Target-bit columns present: DESI/BGS/MWS/SCND_TARGET, their SV1_/SV2_/SV3_ forms, CMX_TARGET. */
    size_t ntarget_columns;
    struct rvs_desi_target_column target_columns[RVS_DESI_MAX_TARGET_COLUMNS];
    /* The survey as desitarget's main_cmx_or_sv decides it from the column names ("main", "cmx",
     * "sv1", ...) and the column holding its desi_mask bits ("DESI_TARGET", "SV3_DESI_TARGET",
     * "CMX_TARGET"); desi_target points to that column's values, NULL when the file lacks it. */
    char survey[16];
    char desi_target_column[72];
    const int64_t *desi_target;
    int64_t *brickid; /* BRICKID or NULL (names the --doplot figures, as rvspecfit's) */
};

/* Primary-header keywords copied later into the outputs (DESI-DATAMODEL.md). */
#define RVS_DESI_NKEYWORDS 12
extern const char *const rvs_desi_keyword_names[RVS_DESI_NKEYWORDS];

struct rvs_desi_keyword {
    char name[9];
    int present;
    char card[81];  /* the whole header card as read, for copying with its type and comment */
    char value[71]; /* the value, string quotes removed */
};

/* An open input file (opaque). */
struct rvs_desi_file;

/* Opens `path` and reads everything but the spectra for the arms in `arms` (a bit set). Each arm
 * needs its WAVELENGTH, FLUX, IVAR and MASK HDUs; RESOLUTION is checked when present and needed
 * only by rvs_desi_read_spectra with RVS_DESI_READ_RESOLUTION. Any problem (missing file, not
 * FITS, missing HDU or column, shapes or types that disagree, empty FIBERMAP) is logged with the
 * file and HDU and returned as RVS_ERR_IO or RVS_ERR_FORMAT; *file is then NULL. */
int rvs_desi_open(const char *path, unsigned arms, struct rvs_desi_file **file);

/* Closes the file and frees everything it owns; accepts NULL and *file == NULL. */
void rvs_desi_close(struct rvs_desi_file **file);

const char *rvs_desi_path(const struct rvs_desi_file *file);
size_t rvs_desi_nrows(const struct rvs_desi_file *file);
unsigned rvs_desi_arms(const struct rvs_desi_file *file);
/* 1 when the file has an EXP_FIBERMAP HDU (a coadd). */
int rvs_desi_is_coadd(const struct rvs_desi_file *file);
/* Number of wavelength pixels of an arm (0 for an arm not opened). */
size_t rvs_desi_nwave(const struct rvs_desi_file *file, int arm);
/* Resolution diagonals (NAXIS2 of X_RESOLUTION), 0 when the file has no RESOLUTION HDU. */
size_t rvs_desi_ndiag(const struct rvs_desi_file *file, int arm);
/* The wavelength grid of an arm (Å), nwave values, owned by the file. */
const double *rvs_desi_wavelength(const struct rvs_desi_file *file, int arm);
const struct rvs_desi_fibermap *rvs_desi_fibermap(const struct rvs_desi_file *file);
/* One of rvs_desi_keyword_names, or NULL for another name. */
const struct rvs_desi_keyword *rvs_desi_keyword(const struct rvs_desi_file *file,
                                                const char *name);
/* S/N of an arm from SCORES (MEDIAN_CALIB_SNR_X, else MEDIAN_COADD_SNR_X, else
 * MEDIAN_COADD_FLUX_SNR_X; the family is chosen by the first requested arm, as rvspecfit does),
 * nrows values; NULL when SCORES has none of them (then the S/N is computed from the spectra). */
const double *rvs_desi_scores_sn(const struct rvs_desi_file *file, int arm);
/* The SCORES column family used ("MEDIAN_CALIB_SNR", ...), or NULL. */
const char *rvs_desi_scores_sn_source(const struct rvs_desi_file *file);

/* Spectra of a list of rows, per arm contiguous: flux[arm][i * nwave + p] for the i-th row asked,
 * resolution[arm][(i * ndiag + d) * nwave + p] (DESI's [nspec, ndiag, nwave] order). The struct
 * keeps its buffers between calls (capacity in rows), so a batch loop allocates once. Arms not
 * opened have NULL arrays. */
struct rvs_desi_spectra {
    size_t nrows;
    size_t capacity;
    unsigned arms;
    int with_resolution;
    size_t nwave[RVS_DESI_NARMS];
    size_t ndiag[RVS_DESI_NARMS];
    float *flux[RVS_DESI_NARMS];
    float *ivar[RVS_DESI_NARMS];
    uint32_t *mask[RVS_DESI_NARMS]; /* int32, uint32 (BZERO) or tile-compressed: bit pattern */
    float *resolution[RVS_DESI_NARMS];
};

enum rvs_desi_read_flags { RVS_DESI_READ_RESOLUTION = 1 };

/* Zeroes a spectra struct before first use. */
void rvs_desi_spectra_init(struct rvs_desi_spectra *spectra);
void rvs_desi_spectra_free(struct rvs_desi_spectra *spectra);

/* Reads rows[0..nrows) (any order, each < rvs_desi_nrows) of every opened arm into `out`.
 * Consecutive rows are read with one cfitsio call. Memory is nrows times
 * rvs_desi_bytes_per_row(file, flags): callers choose nrows to bound it. */
int rvs_desi_read_spectra(struct rvs_desi_file *file, const size_t *rows, size_t nrows,
                          unsigned flags, struct rvs_desi_spectra *out);

/* Host bytes one row takes in a struct rvs_desi_spectra read with `flags`. */
size_t rvs_desi_bytes_per_row(const struct rvs_desi_file *file, unsigned flags);

#ifdef __cplusplus
}
#endif

#endif
