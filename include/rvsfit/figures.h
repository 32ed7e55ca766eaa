/* rvsfit/figures.h: the --doplot figures (rvspecfit desi_fit.py make_plot, and more): one PNG per
 * fitted target with a panel per arm (data, its ±1σ band, masked pixels, the best-fit model, the
 * residual (data − model)/σ under it, the dichroic region shaded) and an inset of the velocity
 * posterior, and one summary PNG per input file (Kiel diagram, VRAD_ERR against S/N, RVS_WARN
 * counts). Drawn with cairo on host threads from what the writer of the rvtab/rvmod pair holds,
 * never inside the device loop (rvs_run does that; these functions draw one figure each).
 *
 * Names follow rvs_desi_fit: <dir>/[<last two directories of the input>/]<prefix>_<BRICKID>_
 * <TARGETID>_<seqid>.png, seqid the target's row in the input; the summary is
 * <prefix>_summary_<input name less .fits[.gz]>.png beside them.
 *
 * A build without cairo has these functions too: rvs_figures_available() is 0 and the drawing
 * functions log rvs_figures_unavailable_message() and return RVS_ERR_UNSUPPORTED. */
#ifndef RVSFIT_FIGURES_H
#define RVSFIT_FIGURES_H

#include <stddef.h>
#include <stdint.h>

#include "rvsfit/desi.h"
#include "rvsfit/output.h"

#ifdef __cplusplus
extern "C" {
#endif

/* --doplot, --figure-dir, --figure-prefix (rvs_desi_fit's defaults: ".", "fig"). */
struct rvs_figure_options {
    int enabled;        /* --doplot */
    const char *dir;    /* --figure-dir */
    const char *prefix; /* --figure-prefix */
    int no_subdirs;     /* --no-subdirs: figures directly in dir */
    int mask_dichroic;  /* shade 4300 < λ < 4450 Å, which the fit left out (as the run's
                         * preparation: rvs_prepare_options.mask_dichroic) */
    size_t threads;     /* host threads that draw; 0: $RVSFIT_CL_FIGURE_THREADS, else one less
                         * than the online cores (1 to 8) */
};

void rvs_figure_options_init(struct rvs_figure_options *options);

/* 1 when this build draws figures (configured with cairo), else 0. */
int rvs_figures_available(void);

/* The drawing library and its version ("cairo 1.16.0"), NULL without it. */
const char *rvs_figures_backend(void);

/* What a user who asked for figures from a build without cairo is told: what is missing and how
 * to get it (the same text whether or not this build has cairo, so that it can be tested). */
const char *rvs_figures_unavailable_message(void);

/* The directory of the figures of `input` (allocated) and the summary's path (allocated), from
 * the options as rvs_output_paths makes output names; RVS_ERR_INVALID_ARGUMENT as it does. */
int rvs_figure_paths(const struct rvs_figure_options *options, const char *input_path,
                     char **dir, char **summary_path);

/* <dir>/<prefix>_<brickid>_<targetid>_<seqid>.png (allocated). */
char *rvs_figure_target_path(const char *dir, const char *prefix, int64_t brickid,
                             int64_t targetid, long seqid);

/* One arm of one target as the fit saw it (rvs_prepare_arm's outputs) and its model: n pixels
 * each; spec NULL when the file has no such arm. */
struct rvs_figure_arm {
    size_t n;
    const double *wave;       /* Å */
    const float *spec;        /* the prepared data (bad runs interpolated) */
    const float *espec;       /* its σ */
    const unsigned char *bad; /* 1: masked (bad data, dichroic, resolution edges) */
    const float *model;       /* best fit in data units (the rvmod row) */
    int used;                 /* the arm was fitted */
};

struct rvs_figure_target {
    const char *input_name; /* shown in the header: the input file's name */
    int64_t brickid, targetid;
    long seqid;                       /* the row of the input */
    const struct rvs_output_row *row; /* the fitted values, as written to the rvtab */
    struct rvs_figure_arm arm[RVS_DESI_NARMS];
    int mask_dichroic;
};

/* Draws one target's figure into `path` (written to a temporary name and renamed). */
int rvs_figure_draw_target(const struct rvs_figure_target *target, const char *path);

struct rvs_figure_summary {
    const char *input_name;
    size_t nrows;
    const struct rvs_output_row *rows;
};

/* Draws one input file's summary into `path`. */
int rvs_figure_draw_summary(const struct rvs_figure_summary *summary, const char *path);

/* Sizes of the PNGs in pixels (fixed, so that scripts and tests can rely on them). */
enum {
    RVS_FIGURE_TARGET_WIDTH = 1400,
    RVS_FIGURE_TARGET_HEIGHT = 1320,
    RVS_FIGURE_SUMMARY_WIDTH = 1800,
    RVS_FIGURE_SUMMARY_HEIGHT = 620
};

#ifdef __cplusplus
}
#endif

#endif
