/* rvsfit/run.h: rvs_desi_fit's file loop (desi_fit.py proc_many, proc_desi_wrapper, proc_desi)
 * on top of the reader, selection, preparation, fitter and writers: one call processes one
 * input file from open to the atomic write of its rvtab/rvmod pair and its status line.
 *
 * Within a file the selected rows are fitted in batches (rvs_fitter_max_batch, --batch-size and a
 * host-memory budget); with `overlap` a host thread reads and prepares batch k+1 while the
 * device fits batch k (two buffers), with results identical to the serial order. The input-list
 * helpers (--input-file-from, --queue-file) are here too. */
#ifndef RVSFIT_RUN_H
#define RVSFIT_RUN_H

#include <stddef.h>
#include <stdio.h>

#include "rvsfit/context.h"
#include "rvsfit/figures.h"
#include "rvsfit/fit.h"
#include "rvsfit/output.h"
#include "rvsfit/prepare.h"
#include "rvsfit/select.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The fitter's entry points (rvsfit/fit.h). A test can substitute its own to check the pipeline
 * (batching, overlap, row and model bookkeeping) apart from the fit itself. */
struct rvs_run_fitter_ops {
    int (*create)(struct rvs_context *ctx, const struct rvs_fit_config *config,
                  struct rvs_library_arm *const arms[RVS_DESI_NARMS],
                  const double *const data_wave[RVS_DESI_NARMS],
                  const size_t nwave[RVS_DESI_NARMS], const size_t ndiag[RVS_DESI_NARMS],
                  struct rvs_fitter **fitter);
    void (*destroy)(struct rvs_fitter **fitter);
    size_t (*max_batch)(const struct rvs_fitter *fitter);
    int (*fit)(struct rvs_fitter *fitter, const struct rvs_prepared *batch,
               struct rvs_output_row *rows, float *const models[RVS_DESI_NARMS]);
    void (*profile)(const struct rvs_fitter *fitter, struct rvs_fit_profile *profile);
};

struct rvs_run_options {
    unsigned arms;                      /* --fitarm, bit set (1u << arm) */
    struct rvs_select_options select;   /* its pointers must outlive the run */
    struct rvs_prepare_options prepare; /* use_resolution: --resolution-matrix (1), off (0), or
                                         * -1: the library decides (LSFRMAT of every fitted arm) */
    unsigned lsf_sigma0_given;          /* arms (1u << arm) whose prepare.lsf_sigma0 the user gave
                                         * (lsf_sigma0_angstrom); the others take the library's */
    struct rvs_fit_config fit;
    struct rvs_output_naming naming;
    const char *template_lib; /* directory with rvsfit_desi_<arm>.fits */
    int skip_existing;        /* --skipexisting */
    int overlap;              /* read/prepare on a host thread while the device fits (1) */
    int progress;             /* progress line on stderr (the caller checks it is a terminal) */
    const char *status_path;  /* --process-status-file, NULL for none (the caller starts it) */
    const char *config_path;  /* RVS_CONF, NULL for none */
    const char *command_line; /* RVS_CMD */
    size_t host_batch_bytes;  /* host memory for one batch buffer; 0: 1 GiB */
    const struct rvs_run_fitter_ops *fitter_ops; /* NULL: fit.h's functions */
    /* --doplot: after a file's outputs are written, its figures (rvsfit/figures.h) are drawn on
     * host threads while the next file is fitted; rvs_run_create refuses them
     * (RVS_ERR_UNSUPPORTED, with rvs_figures_unavailable_message) in a build without cairo */
    struct rvs_figure_options figures;
};

/* Defaults: all arms, rvspecfit's selection/preparation/fit defaults, overlap on. */
void rvs_run_options_init(struct rvs_run_options *options);

struct rvs_run;

/* Opens the template library of every requested arm (checked with rvs_library_check_desi) and
 * keeps `ctx` (borrowed; must outlive the run). A library that cannot be opened is logged and
 * returned (RVS_ERR_IO / RVS_ERR_FORMAT). */
int rvs_run_create(struct rvs_context *ctx, const struct rvs_run_options *options,
                   struct rvs_run **run);
void rvs_run_destroy(struct rvs_run **run);

/* Processes one input file: output names; with skip_existing and both outputs present, nothing
 * else (outcome EXISTING); else open, select, fit every selected row in batches, write both files
 * atomically (outcome SUCCESS, *nfit = selected rows; no selection writes the empty layout).
 * A failure leaves existing outputs untouched, is logged with the file name and returned
 * (outcome FAILURE). The status line is appended in every case when status_path is set. */
int rvs_run_file(struct rvs_run *run, const char *input, enum rvs_output_status *outcome,
                 long *nfit);

/* 1 when a failure of rvs_run_file concerns the run rather than the file (device errors, host
 * memory), so that later files would fail the same way: the caller stops. File problems
 * (RVS_ERR_IO, RVS_ERR_FORMAT, RVS_ERR_INVALID_ARGUMENT, RVS_ERR_UNSUPPORTED) give 0. */
int rvs_run_status_is_fatal(int status);

/* Waits until every figure queued so far is drawn (rvs_run_destroy does too); *failed (optional)
 * gets the number of figures that could not be written in the whole run (each was logged).
 * RVS_OK when none failed, else RVS_ERR_IO. */
int rvs_run_wait_figures(struct rvs_run *run, size_t *failed);

/* Time per stage (--profile): host stages, the fitter's device stages, throughput. */
void rvs_run_print_profile(const struct rvs_run *run, FILE *out);

/* Totals so far. */
void rvs_run_totals(const struct rvs_run *run, size_t *files, size_t *failed, size_t *targets);

/* ------------------------------------------------------------------ input lists */

/* Non-empty lines of a text file (trailing white space removed), for --input-file-from.
 * *lines (an array of *count strings) is freed with rvs_run_free_lines. */
int rvs_run_read_lines(const char *path, char ***lines, size_t *count);
void rvs_run_free_lines(char **lines, size_t count);

/* Pops the first non-empty line of a queue file shared by several processes (--queue-file): the
 * file is locked (fcntl, whole file), read, rewritten without that line, and unlocked, so each
 * name goes to exactly one process. *name is NULL when the queue is empty (caller frees). */
int rvs_run_queue_pop(const char *path, char **name);
/* The same, and the name is claimed (LIST.claims: pid, host, name) until rvs_run_queue_done:
 * a claim of a process (of this host) that no longer runs is put back at the head of the queue
 * by the next pop or claim, so an input is never lost with its worker. rvsfit-cl claims. */
int rvs_run_queue_claim(const char *path, char **name);
/* Marks `name`, claimed by this process, as finished: its claim leaves LIST.claims. */
int rvs_run_queue_done(const char *path, const char *name);

#ifdef __cplusplus
}
#endif

#endif
