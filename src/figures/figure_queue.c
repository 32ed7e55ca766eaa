/* figure_queue.c: host threads drawing the --doplot figures of written files (figure_queue.h).
 *
 * Jobs (one per input file) wait in a list; a thread takes the next figure of the first job
 * that has one left (a target's, or last the file's summary), so one file's figures spread over
 * every thread, and the thread that finishes a job's last figure frees it. The list, the
 * counters and the statistics are under one mutex; figures are drawn without it. */
#include <config.h>

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "figures/figure_queue.h"
#include "base/internal.h"
#include "base/files.h"

#define MODULE "figures"

struct rvs_figure_job {
    struct rvs_figure_job *next;
    char *input_name; /* the input's file name, for the figures' titles */
    char *dir, *summary_path, *prefix;
    int mask_dichroic;
    size_t nrows;
    unsigned arms;
    size_t nwave[RVS_DESI_NARMS];
    double *wave[RVS_DESI_NARMS];
    /* per arm [nrows][nwave]: the prepared data as the fit saw them */
    float *spec[RVS_DESI_NARMS], *espec[RVS_DESI_NARMS];
    unsigned char *bad[RVS_DESI_NARMS];
    unsigned char *used[RVS_DESI_NARMS]; /* [nrows] */
    struct rvs_output_row *rows;
    float *models[RVS_DESI_NARMS];
    int64_t *brickid, *targetid; /* [nrows] */
    /* progress, under the queue's lock: figures 0..nrows-1 are the targets', nrows the summary */
    size_t next_figure, figures_done, failed;
};

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ------------------------------------------------------------------ jobs */

void rvs_figure_job_destroy(struct rvs_figure_job **job)
{
    if (!job || !*job)
        return;
    struct rvs_figure_job *j = *job;
    free(j->input_name);
    free(j->dir);
    free(j->summary_path);
    free(j->prefix);
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        free(j->wave[a]);
        free(j->spec[a]);
        free(j->espec[a]);
        free(j->bad[a]);
        free(j->used[a]);
        free(j->models[a]);
    }
    free(j->rows);
    free(j->brickid);
    free(j->targetid);
    free(j);
    *job = NULL;
}

int rvs_figure_job_create(const struct rvs_figure_options *options, const char *input,
                          size_t nrows, unsigned arms, const double *const wave[RVS_DESI_NARMS],
                          const size_t nwave[RVS_DESI_NARMS], struct rvs_figure_job **out)
{
    int status = RVS_OK;
    struct rvs_figure_job *job = NULL;
    *out = NULL;
    job = rvs_calloc(1, sizeof *job);
    if (!job)
        return RVS_ERR_NOMEM;
    RVS_TRY(rvs_figure_paths(options, input, &job->dir, &job->summary_path));
    RVS_TRY(rvs_file_mkdirs(job->dir));
    const char *base = strrchr(input, '/');
    job->input_name = rvs_strdup(base ? base + 1 : input);
    job->prefix = rvs_strdup(options->prefix && *options->prefix ? options->prefix : "fig");
    job->brickid = rvs_calloc(nrows ? nrows : 1, sizeof *job->brickid);
    job->targetid = rvs_calloc(nrows ? nrows : 1, sizeof *job->targetid);
    if (!job->input_name || !job->prefix || !job->brickid || !job->targetid) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    job->mask_dichroic = options->mask_dichroic;
    job->nrows = nrows;
    job->arms = arms;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        if (!(arms & (1u << a)) || !wave[a] || nwave[a] == 0)
            continue;
        size_t n = nwave[a], cells = nrows * n;
        job->nwave[a] = n;
        job->wave[a] = rvs_malloc(n * sizeof(double));
        job->spec[a] = rvs_calloc(cells ? cells : 1, sizeof(float));
        job->espec[a] = rvs_calloc(cells ? cells : 1, sizeof(float));
        job->bad[a] = rvs_calloc(cells ? cells : 1, 1);
        job->used[a] = rvs_calloc(nrows ? nrows : 1, 1);
        if (!job->wave[a] || !job->spec[a] || !job->espec[a] || !job->bad[a] || !job->used[a]) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        memcpy(job->wave[a], wave[a], n * sizeof(double));
    }
    *out = job;
    job = NULL;
cleanup:
    rvs_figure_job_destroy(&job);
    return status;
}

void rvs_figure_job_add_batch(struct rvs_figure_job *job, const struct rvs_prepared *batch,
                              size_t first)
{
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        size_t n = job->nwave[a];
        if (!job->spec[a] || !(batch->arms & (1u << a)) || batch->nwave[a] != n)
            continue;
        for (size_t t = 0; t < batch->ntargets && first + t < job->nrows; t++) {
            size_t row = first + t;
            const double *spec = batch->spec[a] + t * n, *espec = batch->espec[a] + t * n;
            float *dspec = job->spec[a] + row * n, *despec = job->espec[a] + row * n;
            for (size_t i = 0; i < n; i++) {
                dspec[i] = (float)spec[i];
                despec[i] = (float)espec[i];
            }
            memcpy(job->bad[a] + row * n, batch->bad[a] + t * n, n);
            job->used[a][row] = batch->used[a][t];
        }
    }
}

void rvs_figure_job_take_results(struct rvs_figure_job *job, struct rvs_output_row **rows,
                                 float *models[RVS_DESI_NARMS], const int64_t *brickid,
                                 const int64_t *targetid)
{
    job->rows = *rows;
    *rows = NULL;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        job->models[a] = models[a];
        models[a] = NULL;
    }
    for (size_t k = 0; k < job->nrows && job->rows; k++) {
        long row = job->rows[k].input_row;
        job->brickid[k] = brickid ? brickid[row] : 0;
        job->targetid[k] = targetid ? targetid[row] : 0;
    }
}

/* Draws figure k of the job: a target's, or (k == nrows) the summary. */
static int draw_figure(const struct rvs_figure_job *job, size_t k)
{
    if (k == job->nrows) {
        struct rvs_figure_summary s = {job->input_name, job->nrows, job->rows};
        return rvs_figure_draw_summary(&s, job->summary_path);
    }
    struct rvs_figure_target t;
    memset(&t, 0, sizeof t);
    t.input_name = job->input_name;
    t.brickid = job->brickid[k];
    t.targetid = job->targetid[k];
    t.seqid = job->rows[k].input_row;
    t.row = &job->rows[k];
    t.mask_dichroic = job->mask_dichroic;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        size_t n = job->nwave[a];
        if (!job->spec[a] || !job->models[a])
            continue;
        t.arm[a] = (struct rvs_figure_arm){n,
                                           job->wave[a],
                                           job->spec[a] + k * n,
                                           job->espec[a] + k * n,
                                           job->bad[a] + k * n,
                                           job->models[a] + k * n,
                                           job->used[a][k]};
    }
    char *path = rvs_figure_target_path(job->dir, job->prefix, t.brickid, t.targetid, t.seqid);
    if (!path)
        return RVS_ERR_NOMEM;
    int status = rvs_figure_draw_target(&t, path);
    free(path);
    return status;
}

/* ------------------------------------------------------------------ the queue */

struct rvs_figure_queue {
    pthread_mutex_t lock;
    pthread_cond_t work;  /* a figure to draw, or time to stop */
    pthread_cond_t space; /* a job finished */
    struct rvs_figure_job *head, *tail;
    size_t njobs, max_pending;
    int stopping;
    size_t drawn, failed;
    double draw_seconds, first_arrival, last_done;
    size_t nthreads;
    pthread_t *threads;
};

static void remove_job(struct rvs_figure_queue *q, struct rvs_figure_job *job)
{
    struct rvs_figure_job **p = &q->head;
    while (*p && *p != job)
        p = &(*p)->next;
    if (*p)
        *p = job->next;
    q->tail = NULL;
    for (struct rvs_figure_job *j = q->head; j; j = j->next)
        q->tail = j;
    q->njobs--;
}

/* The drawing threads take only CPU time nothing else wants: on a CPU device (PoCL) the fit's
 * kernels run on the same cores, and a work-group stalled behind a figure stalls the whole
 * kernel (the example's three-file fit on two cores took 52.6 s of device time instead of 32.8 s
 * with drawing at normal priority). Linux's SCHED_IDLE gives way at once to any other thread;
 * elsewhere the threads run at normal priority. */
static void yield_to_the_fit(void)
{
#ifdef SCHED_IDLE
    struct sched_param param;
    memset(&param, 0, sizeof param);
    int rc = pthread_setschedparam(pthread_self(), SCHED_IDLE, &param);
    if (rc != 0)
        rvs_log(RVS_LOG_DEBUG, MODULE, "figures drawn at normal priority (SCHED_IDLE: %s)",
                strerror(rc));
#endif
}

static void *draw_thread(void *arg)
{
    struct rvs_figure_queue *q = arg;
    yield_to_the_fit();
    pthread_mutex_lock(&q->lock);
    for (;;) {
        struct rvs_figure_job *job = q->head;
        while (job && job->next_figure > job->nrows)
            job = job->next;
        if (!job) {
            if (q->stopping)
                break;
            pthread_cond_wait(&q->work, &q->lock);
            continue;
        }
        size_t k = job->next_figure++;
        pthread_mutex_unlock(&q->lock);
        double t0 = now_seconds();
        int status = draw_figure(job, k);
        double t1 = now_seconds();
        pthread_mutex_lock(&q->lock);
        q->draw_seconds += t1 - t0;
        q->last_done = t1;
        q->drawn++;
        if (status != RVS_OK) {
            q->failed++;
            job->failed++;
        }
        if (++job->figures_done == job->nrows + 1) {
            remove_job(q, job);
            pthread_cond_broadcast(&q->space);
            pthread_mutex_unlock(&q->lock);
            rvs_log(job->failed ? RVS_LOG_WARNING : RVS_LOG_INFO, MODULE,
                    "%s: %zu figure(s) and the summary in %s%s", job->input_name, job->nrows,
                    job->dir, job->failed ? " (some could not be written: see above)" : "");
            rvs_figure_job_destroy(&job);
            pthread_mutex_lock(&q->lock);
        }
    }
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

int rvs_figure_queue_create(size_t threads, size_t max_pending, struct rvs_figure_queue **out)
{
    *out = NULL;
    struct rvs_figure_queue *q = rvs_calloc(1, sizeof *q);
    if (!q)
        return RVS_ERR_NOMEM;
    q->threads = rvs_calloc(threads ? threads : 1, sizeof *q->threads);
    if (!q->threads) {
        free(q);
        return RVS_ERR_NOMEM;
    }
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->work, NULL);
    pthread_cond_init(&q->space, NULL);
    q->max_pending = max_pending ? max_pending : 1;
    for (size_t i = 0; i < (threads ? threads : 1); i++) {
        if (pthread_create(&q->threads[q->nthreads], NULL, draw_thread, q) != 0)
            break;
        q->nthreads++;
    }
    if (q->nthreads == 0) {
        rvs_log(RVS_LOG_ERROR, MODULE, "cannot start a thread to draw the figures");
        rvs_figure_queue_destroy(&q);
        return RVS_ERR_NOMEM;
    }
    *out = q;
    return RVS_OK;
}

void rvs_figure_queue_submit(struct rvs_figure_queue *q, struct rvs_figure_job **job,
                             double *waited)
{
    double t0 = now_seconds();
    pthread_mutex_lock(&q->lock);
    while (q->njobs >= q->max_pending)
        pthread_cond_wait(&q->space, &q->lock);
    double t1 = now_seconds();
    if (q->first_arrival == 0)
        q->first_arrival = t1;
    (*job)->next = NULL;
    if (q->tail)
        q->tail->next = *job;
    else
        q->head = *job;
    q->tail = *job;
    q->njobs++;
    *job = NULL;
    pthread_cond_broadcast(&q->work);
    pthread_mutex_unlock(&q->lock);
    if (waited)
        *waited = t1 - t0;
}

void rvs_figure_queue_wait(struct rvs_figure_queue *q)
{
    pthread_mutex_lock(&q->lock);
    while (q->njobs > 0)
        pthread_cond_wait(&q->space, &q->lock);
    pthread_mutex_unlock(&q->lock);
}

void rvs_figure_queue_destroy(struct rvs_figure_queue **queue)
{
    if (!queue || !*queue)
        return;
    struct rvs_figure_queue *q = *queue;
    if (q->nthreads > 0)
        rvs_figure_queue_wait(q);
    pthread_mutex_lock(&q->lock);
    q->stopping = 1;
    pthread_cond_broadcast(&q->work);
    pthread_mutex_unlock(&q->lock);
    for (size_t i = 0; i < q->nthreads; i++)
        pthread_join(q->threads[i], NULL);
    /* jobs never drawn (no thread could start): freed with the queue */
    while (q->head) {
        struct rvs_figure_job *j = q->head;
        q->head = j->next;
        rvs_figure_job_destroy(&j);
    }
    pthread_cond_destroy(&q->work);
    pthread_cond_destroy(&q->space);
    pthread_mutex_destroy(&q->lock);
    free(q->threads);
    free(q);
    *queue = NULL;
}

void rvs_figure_queue_stats(struct rvs_figure_queue *q, struct rvs_figure_queue_stats *s)
{
    pthread_mutex_lock(&q->lock);
    s->threads = q->nthreads;
    s->drawn = q->drawn;
    s->failed = q->failed;
    s->draw_seconds = q->draw_seconds;
    s->first_to_last = q->drawn ? q->last_done - q->first_arrival : 0;
    pthread_mutex_unlock(&q->lock);
}
