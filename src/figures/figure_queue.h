/* figure_queue.h: the host threads that draw --doplot's figures (not installed). The run loop
 * (src/run/run.c) collects, while it fits an input file, what the figures need (the prepared
 * spectra of each batch, then the rows and models the writer wrote), and after the rvtab/rvmod
 * pair is written hands it over as one job; the threads draw its targets and its summary while
 * the device fits the next file. A job holds a file's data until its last figure is drawn; at
 * most `max_pending` jobs wait, so that the fit stops (and says how long) rather than let the
 * memory of undrawn files grow when drawing is slower than fitting. */
#ifndef RVS_FIGURE_QUEUE_H
#define RVS_FIGURE_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#include "rvsfit/figures.h"
#include "rvsfit/output.h"
#include "rvsfit/prepare.h"

/* One input file's figures. */
struct rvs_figure_job;

/* A job for `nrows` selected rows of `input`: the figure directory is made now (an error is
 * returned and logged). wave[a] (nwave[a] values) is copied for each arm in `arms`. */
int rvs_figure_job_create(const struct rvs_figure_options *options, const char *input,
                          size_t nrows, unsigned arms, const double *const wave[RVS_DESI_NARMS],
                          const size_t nwave[RVS_DESI_NARMS], struct rvs_figure_job **job);
void rvs_figure_job_destroy(struct rvs_figure_job **job);

/* Copies a fitted batch's prepared spectra (rows first .. first + batch->ntargets). */
void rvs_figure_job_add_batch(struct rvs_figure_job *job, const struct rvs_prepared *batch,
                              size_t first);

/* Takes the rows and the models (*rows and models[a] become NULL: the job frees them), and the
 * BRICKID and TARGETID of each row from the input's FIBERMAP columns (indexed by input row;
 * brickid may be NULL: 0 is used). */
void rvs_figure_job_take_results(struct rvs_figure_job *job, struct rvs_output_row **rows,
                                 float *models[RVS_DESI_NARMS], const int64_t *brickid,
                                 const int64_t *targetid);

struct rvs_figure_queue;

/* Starts `threads` drawing threads (at least 1). */
int rvs_figure_queue_create(size_t threads, size_t max_pending, struct rvs_figure_queue **queue);

/* Queues the job (*job becomes NULL), first waiting while max_pending jobs are queued; *waited
 * gets the seconds that took. */
void rvs_figure_queue_submit(struct rvs_figure_queue *queue, struct rvs_figure_job **job,
                             double *waited);

/* Waits until every queued figure is drawn. */
void rvs_figure_queue_wait(struct rvs_figure_queue *queue);

/* Waits, stops the threads and frees; accepts NULL. */
void rvs_figure_queue_destroy(struct rvs_figure_queue **queue);

struct rvs_figure_queue_stats {
    size_t threads;
    size_t drawn, failed;  /* figures (targets and summaries) */
    double draw_seconds;   /* summed over the threads */
    double first_to_last;  /* wall seconds from the first job's arrival to the last figure */
};
void rvs_figure_queue_stats(struct rvs_figure_queue *queue, struct rvs_figure_queue_stats *stats);

#endif
