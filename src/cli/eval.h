/* eval.h: what the parts of rvsfit-cl-eval share (not installed): rvsfit-cl-eval.c reads the
 * options, the --params rows and the library and runs the steps; eval_device.c evaluates the
 * spectra on the device; eval_output.c writes them, as FITS or as text. */
#ifndef RVS_CLI_EVAL_H
#define RVS_CLI_EVAL_H

#include <stddef.h>

#include "rvsfit.h"

#define PROG "rvsfit-cl-eval"
#define MOD "eval"

/* Exit codes, as doc/rvsfit-cl.1. */
enum eval_exit {
    EVAL_EXIT_OK = 0,      /* the spectra were written */
    EVAL_EXIT_FAILURE = 1, /* the library could not be read or the output not written */
    EVAL_EXIT_USAGE = 2,   /* bad command line or --params file */
    EVAL_EXIT_DEVICE = 3   /* no usable OpenCL device, kernel build/self-test or device error */
};

/* Per-row warning bits (the WARN column, EVALWARN keyword). */
#define EVAL_WARN_OUTSIDE 1u /* outside the training hull of at least one arm (penalty > 0) */
#define EVAL_WARN_EDGE 2u    /* the Doppler shift leaves NaN pixels at an end of the grid */
#define EVAL_WARN_NONFINITE 4u /* the emulator gave a non-finite flux (overflow) */

/* A row of parameters: teff, logg, feh, alpha (the library's order), vsini, vrad. */
enum { COL_TEFF, COL_LOGG, COL_FEH, COL_ALPHA, COL_VSINI, COL_VRAD, NCOL };
extern const char *const col_names[NCOL];

#define EVAL_MAX_ROWS 1000000
#define EVAL_MAX_SETUPS 16
/* Share of the device's global memory one pass plans to use. */
#define EVAL_MEMORY_SHARE 0.5

/* One arm of the run: the open library file and its per-row results. */
struct eval_arm {
    struct rvs_library_arm *lib;
    double *outside;  /* per row: rvspecfit's outside-grid penalty (0 inside the hulls) */
    unsigned *warn;   /* per row: EVAL_WARN_* of this arm */
    size_t noutside;  /* rows with penalty > 0 */
    float *flux;      /* rows x npix, while the arm is being written */
};

/* What the writers need to know about the run. */
struct eval_output {
    const char *libdir;
    const char *command;
    const struct rvs_context *ctx;
    size_t nrows;
    const double *rows; /* nrows x NCOL */
    struct eval_arm *arms;
    size_t narms;
    const double *outside; /* per row: the largest penalty over the arms */
    const unsigned *warn;  /* per row: EVAL_WARN_* of any arm */
};

/* The spectra of arm->lib at the n rows (nrows x NCOL) into arm->flux (n x npix, allocated by
 * the caller), with arm->outside and arm->warn per row: one NN pass, one rotation call and one
 * spline pass per device pass, the rows cut into as few passes as device memory allows. */
int eval_arm_spectra(struct rvs_context *ctx, struct eval_arm *arm, const double *rows, size_t n);

/* Text columns to stdout (out NULL or "-") or to `out` through a temporary renamed when
 * complete; FITS (PRIMARY, one table per arm, PARAMS, checksums) likewise. Both return an
 * EVAL_EXIT_* code and have said what went wrong. */
int eval_write_text(const struct eval_output *o, const char *out);
int eval_write_fits(const struct eval_output *o, const char *out);

#endif
