/* run.c: one input file from open to written outputs, as rvspecfit's proc_desi_wrapper and
 * proc_desi (desi_fit.py) do it, batched: open -> select -> for each batch of selected rows:
 * read spectra -> prepare -> rvs_fitter_fit -> rows and models collected -> after the last batch
 * the atomic rvs_output_write -> status line.
 *
 * Overlap: the fit of batch k runs on the main thread (it drives the device) while a host thread
 * reads and prepares batch k+1 into the other of two buffers. The only object both threads touch
 * is the input file, and never at the same time (the reader runs only between a thread's start
 * and its join), so no locks are needed and every computation happens in the serial order: the
 * results are identical with and without overlap.
 *
 * Differences from rvspecfit: a file whose spectra cannot be read fails as a whole (outputs left
 * untouched), as rvspecfit's exception handler does; the fitter is created once per set of
 * wavelength grids, not per spectrum. */
#include <config.h>

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "figures/figure_queue.h"
#include "base/internal.h"
#include "rvsfit/library.h"
#include "rvsfit/run.h"

#include <clFFT.h>
#include <clblast_c.h>
#include <yaml.h>

#define MODULE "run"
#define DEFAULT_HOST_BATCH_BYTES ((size_t)1 << 30)
/* Files whose figures may wait to be drawn before the fit of the next one waits for them: each
 * holds its prepared spectra and models (about 9 bytes a pixel, 36 MB for 500 DESI targets). */
#define FIGURE_JOBS_PENDING 2

static const struct rvs_run_fitter_ops default_fitter_ops = {
    rvs_fitter_create, rvs_fitter_destroy, rvs_fitter_max_batch, rvs_fitter_fit,
    rvs_fitter_profile};

void rvs_run_options_init(struct rvs_run_options *options)
{
    memset(options, 0, sizeof *options);
    options->arms = RVS_DESI_ARMS_ALL;
    rvs_select_options_init(&options->select);
    rvs_prepare_options_init(&options->prepare);
    rvs_fit_config_init(&options->fit);
    rvs_output_naming_init(&options->naming);
    options->overlap = 1;
    options->prepare.use_resolution = -1;
    rvs_figure_options_init(&options->figures);
}

/* Time spent per stage, summed over files (seconds). */
struct stage_times {
    double open, select, read, prepare, fitter_create, fit, write, wait, wall;
};

/* Device commands per rvs_fitter_fit call (one batch), from the context's counters. */
struct batch_stats {
    size_t batches;
    size_t size_min, size_max; /* spectra per batch */
    unsigned long long cmd_min, cmd_max; /* device commands of one batch */
    size_t cmd_min_size, cmd_max_size;   /* the sizes of those batches */
    unsigned long long engine_calls;
    size_t with_calls;                   /* batches that made engine calls */
    double per_call_min, per_call_max;   /* commands / engine calls of one batch */
};

/* The outputs this run has written or is writing, with the input (its real path) each belongs
 * to: two inputs of the same name under --no-subdirs must not overwrite each other (issue 19). */
struct claimed_output {
    char *tab_path, *input_real, *input;
};

struct rvs_run {
    struct claimed_output *claimed;
    size_t nclaimed, claimed_cap;
    struct rvs_context *ctx;
    struct rvs_run_options options;
    const struct rvs_run_fitter_ops *ops;
    struct rvs_library_arm *library[RVS_DESI_NARMS];

    /* The fitter and the grids it was made for (copies: the file that had them is closed). */
    struct rvs_fitter *fitter;
    double *fitter_wave[RVS_DESI_NARMS];
    size_t fitter_nwave[RVS_DESI_NARMS];
    size_t fitter_ndiag[RVS_DESI_NARMS];
    struct rvs_fit_profile fit_profile_done; /* of fitters already destroyed */

    /* Header contents, built once. */
    char clblast_version[32], clfft_version[32];
    struct rvs_output_dep deps[4];
    size_t ndeps;
    struct rvs_output_template templates[RVS_DESI_NARMS];
    size_t ntemplates;

    /* --doplot: the threads that draw, and figures lost before they reached them */
    struct rvs_figure_queue *figures;
    size_t figure_failures;
    double figure_wait; /* seconds the run waited for the drawing threads */

    struct stage_times times;
    struct batch_stats batch;
    size_t files, failed, targets, spectra_fitted;
};

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ------------------------------------------------------------------ create / destroy */

static void build_header_info(struct rvs_run *run)
{
    snprintf(run->clblast_version, sizeof run->clblast_version, "%d.%d.%d",
             CLBLAST_VERSION_MAJOR, CLBLAST_VERSION_MINOR, CLBLAST_VERSION_PATCH);
    cl_uint major = 0, minor = 0, patch = 0;
    if (clfftGetVersion(&major, &minor, &patch) == CLFFT_SUCCESS)
        snprintf(run->clfft_version, sizeof run->clfft_version, "%u.%u.%u", major, minor, patch);
    else
        snprintf(run->clfft_version, sizeof run->clfft_version, "unknown");
    size_t n = 0;
    run->deps[n++] = (struct rvs_output_dep){"CLBlast", run->clblast_version};
    run->deps[n++] = (struct rvs_output_dep){"clFFT", run->clfft_version};
    run->deps[n++] = (struct rvs_output_dep){"libyaml", yaml_get_version_string()};
    if (run->ctx)
        run->deps[n++] = (struct rvs_output_dep){"OpenCL", run->ctx->caps.platform_version};
    run->ndeps = n;
    run->ntemplates = 0;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        if (!run->library[a])
            continue;
        const struct rvs_library_provenance *p = rvs_library_provenance(run->library[a]);
        run->templates[run->ntemplates++] = (struct rvs_output_template){
            rvs_library_setup(run->library[a]), p->librev, p->srcver[0] ? p->srcver
                                                                         : p->creator_version};
    }
}

static double library_lsf_sigma_at(const void *lsf, double lambda)
{
    return rvs_library_lsf_sigma_at(lsf, lambda);
}

/* The resolution-matrix path and the templates' σ0 it deconvolves, from the library where the
 * user did not say: the path is on when every fitted arm's library was made for it (LSFRMAT),
 * and σ0 is the library's recorded LSF (a table as a function of wavelength); a library that
 * does not record it keeps rvspecfit's 0.5 Å with a warning. */
static void resolve_lsf(struct rvs_run *run)
{
    struct rvs_prepare_options *p = &run->options.prepare;
    if (p->use_resolution < 0) {
        int all = 1;
        for (int a = 0; a < RVS_DESI_NARMS; a++)
            if (run->library[a] && !rvs_library_lsf(run->library[a])->resolution_matrix)
                all = 0;
        p->use_resolution = all;
        rvs_log(RVS_LOG_INFO, MODULE, "%s: fitting %s resolution matrices (%s)",
                run->options.template_lib, all ? "through the fibres'" : "without",
                all ? "the library is made for them, LSFRMAT = T; --no-resolution-matrix fits "
                      "the templates directly"
                    : "the library does not declare itself made for them; --resolution-matrix "
                      "applies them");
    }
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        p->lsf_sigma0_at[a] = NULL;
        p->lsf_data[a] = NULL;
        if (!run->library[a] || (run->options.lsf_sigma0_given & (1u << a)))
            continue;
        const struct rvs_library_lsf *lsf = rvs_library_lsf(run->library[a]);
        char what[128];
        rvs_library_lsf_describe(lsf, what, sizeof what);
        if (lsf->kind == RVS_LIBRARY_LSF_GAUSSIAN) {
            p->lsf_sigma0[a] = lsf->sigma;
            if (lsf->nnodes >= 2) {
                p->lsf_sigma0_at[a] = library_lsf_sigma_at;
                p->lsf_data[a] = lsf;
            }
            if (p->use_resolution)
                rvs_log(RVS_LOG_INFO, MODULE, "arm %s: the templates' LSF (%s, from %s) is "
                        "deconvolved from each resolution matrix", rvs_desi_arm_name(a), what,
                        rvs_library_path(run->library[a]));
        } else if (p->use_resolution) {
            rvs_log(RVS_LOG_WARNING, MODULE,
                    "%s does not record the LSF of its templates: the resolution matrices of arm "
                    "%s are deconvolved by sigma0 = %g A (rvspecfit's default); give "
                    "lsf_sigma0_angstrom in the configuration, or record the LSF with "
                    "rvsfit-cl-lsf",
                    rvs_library_path(run->library[a]), rvs_desi_arm_name(a), p->lsf_sigma0[a]);
        }
    }
}

/* Drawing threads: as many as asked, else $RVSFIT_CL_FIGURE_THREADS, else one less than the
 * online cores (the main thread drives the device), 1 to 8. */
static size_t figure_threads(const struct rvs_figure_options *o)
{
    if (o->threads > 0)
        return o->threads;
    const char *env = getenv("RVSFIT_CL_FIGURE_THREADS");
    if (env && *env) {
        char *end = NULL;
        unsigned long n = strtoul(env, &end, 10);
        if (*end == '\0' && n >= 1 && n <= 256)
            return n;
        rvs_log(RVS_LOG_WARNING, MODULE,
                "RVSFIT_CL_FIGURE_THREADS='%s' is not a number of threads from 1 to 256; "
                "using the default",
                env);
    }
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    size_t n = ncpu > 2 ? (size_t)ncpu - 1 : 1;
    return n > 8 ? 8 : n;
}

static int start_figures(struct rvs_run *run)
{
    if (!rvs_figures_available()) {
        rvs_log(RVS_LOG_ERROR, MODULE, "--doplot: %s", rvs_figures_unavailable_message());
        return RVS_ERR_UNSUPPORTED;
    }
    /* the figures shade what the preparation masked */
    run->options.figures.mask_dichroic = run->options.prepare.mask_dichroic;
    size_t threads = figure_threads(&run->options.figures);
    rvs_log(RVS_LOG_INFO, MODULE, "figures: drawn on %zu host thread(s) in %s", threads,
            run->options.figures.dir ? run->options.figures.dir : ".");
    return rvs_figure_queue_create(threads, FIGURE_JOBS_PENDING, &run->figures);
}

int rvs_run_create(struct rvs_context *ctx, const struct rvs_run_options *options,
                   struct rvs_run **out)
{
    int status = RVS_OK;
    struct rvs_run *run = NULL;
    *out = NULL;
    if (!options->arms || (options->arms & ~RVS_DESI_ARMS_ALL) || !options->template_lib) {
        rvs_log(RVS_LOG_ERROR, MODULE, "no arm to fit or no template library given");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    run = rvs_calloc(1, sizeof *run);
    if (!run)
        return RVS_ERR_NOMEM;
    run->ctx = ctx;
    run->options = *options;
    run->ops = options->fitter_ops ? options->fitter_ops : &default_fitter_ops;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        if (!(options->arms & (1u << a)))
            continue;
        char setup[16];
        snprintf(setup, sizeof setup, "desi_%s", rvs_desi_arm_name(a));
        status = rvs_library_open(options->template_lib, setup, &run->library[a]);
        if (status != RVS_OK) {
            rvs_log(RVS_LOG_ERROR, MODULE,
                    "cannot use the template library %s for arm %s (--template-lib, or "
                    "template_lib in --config; rvs-import converts rvspecfit's templates)",
                    options->template_lib, rvs_desi_arm_name(a));
            goto cleanup;
        }
        RVS_TRY(rvs_library_check_desi(run->library[a]));
    }
    resolve_lsf(run);
    build_header_info(run);
    if (options->figures.enabled)
        RVS_TRY(start_figures(run));
    *out = run;
    run = NULL;
cleanup:
    rvs_run_destroy(&run);
    return status;
}

static void add_profile(struct rvs_fit_profile *sum, const struct rvs_fit_profile *p)
{
    sum->ccf += p->ccf;
    sum->optimizer += p->optimizer;
    sum->posterior += p->posterior;
    sum->hessian += p->hessian;
    sum->models += p->models;
    sum->engine += p->engine;
    sum->upload += p->upload;
    sum->engine_ccf += p->engine_ccf;
    sum->engine_optimizer += p->engine_optimizer;
    sum->engine_posterior += p->engine_posterior;
    sum->engine_hessian += p->engine_hessian;
    sum->engine_models += p->engine_models;
    sum->engine_calls += p->engine_calls;
    sum->evaluations += p->evaluations;
    sum->eval_ccf += p->eval_ccf;
    sum->eval_optimizer += p->eval_optimizer;
    sum->eval_posterior += p->eval_posterior;
    sum->eval_hessian += p->eval_hessian;
    sum->eval_models += p->eval_models;
    sum->profile_scans += p->profile_scans;
}

static void drop_fitter(struct rvs_run *run)
{
    if (run->fitter) {
        struct rvs_fit_profile p;
        memset(&p, 0, sizeof p);
        run->ops->profile(run->fitter, &p);
        add_profile(&run->fit_profile_done, &p);
        run->ops->destroy(&run->fitter);
    }
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        free(run->fitter_wave[a]);
        run->fitter_wave[a] = NULL;
        run->fitter_nwave[a] = run->fitter_ndiag[a] = 0;
    }
}

void rvs_run_destroy(struct rvs_run **run)
{
    if (!run || !*run)
        return;
    /* the drawing threads read nothing of the run, but they must finish before it ends */
    rvs_figure_queue_destroy(&(*run)->figures);
    drop_fitter(*run);
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        rvs_library_close(&(*run)->library[a]);
    for (size_t i = 0; i < (*run)->nclaimed; i++) {
        free((*run)->claimed[i].tab_path);
        free((*run)->claimed[i].input_real);
        free((*run)->claimed[i].input);
    }
    free((*run)->claimed);
    free(*run);
    *run = NULL;
}

int rvs_run_status_is_fatal(int status)
{
    switch (status) {
    case RVS_OK:
    case RVS_ERR_IO:
    case RVS_ERR_FORMAT:
    case RVS_ERR_INVALID_ARGUMENT:
    case RVS_ERR_UNSUPPORTED:
        return 0;
    default:
        return 1;
    }
}

void rvs_run_totals(const struct rvs_run *run, size_t *files, size_t *failed, size_t *targets)
{
    if (files)
        *files = run->files;
    if (failed)
        *failed = run->failed;
    if (targets)
        *targets = run->targets;
}

/* ------------------------------------------------------------------ the fitter for a file */

/* Keeps the fitter when the file's grids are those it was made for, else makes a new one. */
static int fitter_for_file(struct rvs_run *run, struct rvs_desi_file *file)
{
    int status = RVS_OK;
    int same = run->fitter != NULL;
    size_t ndiag[RVS_DESI_NARMS] = {0};
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        if (!(run->options.arms & (1u << a)))
            continue;
        if (run->options.prepare.use_resolution) {
            ndiag[a] = rvs_desi_ndiag(file, a);
            if (ndiag[a] == 0) {
                rvs_log(RVS_LOG_ERROR, MODULE,
                        "%s: no %c_RESOLUTION HDU, which the fit with resolution matrices needs "
                        "(--resolution-matrix, or this library's default): give "
                        "--no-resolution-matrix to fit without them",
                        rvs_desi_path(file), "BRZ"[a]);
                return RVS_ERR_FORMAT;
            }
        }
        size_t n = rvs_desi_nwave(file, a);
        if (n != run->fitter_nwave[a] || ndiag[a] != run->fitter_ndiag[a] ||
            !run->fitter_wave[a] ||
            memcmp(run->fitter_wave[a], rvs_desi_wavelength(file, a), n * sizeof(double)) != 0)
            same = 0;
    }
    if (same)
        return RVS_OK;

    double t0 = now_seconds();
    drop_fitter(run);
    const double *wave[RVS_DESI_NARMS] = {NULL};
    size_t nwave[RVS_DESI_NARMS] = {0};
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        if (!(run->options.arms & (1u << a)))
            continue;
        nwave[a] = rvs_desi_nwave(file, a);
        run->fitter_wave[a] = rvs_malloc(nwave[a] * sizeof(double));
        if (!run->fitter_wave[a]) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        memcpy(run->fitter_wave[a], rvs_desi_wavelength(file, a), nwave[a] * sizeof(double));
        run->fitter_nwave[a] = nwave[a];
        run->fitter_ndiag[a] = ndiag[a];
        wave[a] = run->fitter_wave[a];
    }
    rvs_log(RVS_LOG_INFO, MODULE, "%s: setting up the fitter for its wavelength grids",
            rvs_desi_path(file));
    status = run->ops->create(run->ctx, &run->options.fit, run->library, wave, nwave, ndiag,
                               &run->fitter);
cleanup:
    if (status != RVS_OK) {
        rvs_log(RVS_LOG_ERROR, MODULE, "%s: cannot set up the fitter: %s", rvs_desi_path(file),
                rvs_strerror(status));
        drop_fitter(run);
    }
    run->times.fitter_create += now_seconds() - t0;
    return status;
}

/* ------------------------------------------------------------------ batches */

/* One of the two batch buffers. */
struct batch_slot {
    struct rvs_desi_spectra spectra;
    struct rvs_prepared prepared;
    size_t first, count; /* rows sel->rows[first .. first + count) */
    int status;
    double t_read, t_prepare;
};

/* What the producer (main thread or the host thread) needs to fill a slot. */
struct producer_job {
    struct rvs_desi_file *file;
    const struct rvs_selection *selection;
    const double *wave[RVS_DESI_NARMS];
    const struct rvs_prepare_options *prepare;
    unsigned read_flags;
    struct batch_slot *slot;
};

static void produce(struct producer_job *job)
{
    struct batch_slot *s = job->slot;
    double t0 = now_seconds();
    s->status = rvs_desi_read_spectra(job->file, job->selection->rows + s->first, s->count,
                                      job->read_flags, &s->spectra);
    double t1 = now_seconds();
    s->t_read = t1 - t0;
    s->t_prepare = 0;
    if (s->status != RVS_OK)
        return;
    s->status = rvs_prepare_batch(&s->spectra, job->wave, job->prepare, &s->prepared);
    s->t_prepare = now_seconds() - t1;
}

static void *produce_thread(void *arg)
{
    produce(arg);
    return NULL;
}

/* Rows per batch: the device's limit, --batch-size, and the host budget for one buffer (raw
 * spectra plus their prepared form, about twice the raw size in doubles). */
static size_t batch_rows(const struct rvs_run *run, struct rvs_desi_file *file, unsigned flags)
{
    size_t rows = run->ops->max_batch(run->fitter);
    if (run->options.fit.batch_size > 0 && run->options.fit.batch_size < rows)
        rows = run->options.fit.batch_size;
    size_t budget = run->options.host_batch_bytes ? run->options.host_batch_bytes
                                                  : DEFAULT_HOST_BATCH_BYTES;
    size_t per_row = 3 * rvs_desi_bytes_per_row(file, flags) + 1;
    if (budget / per_row < rows)
        rows = budget / per_row;
    return rows > 0 ? rows : 1;
}

static void progress_line(const struct rvs_run *run, const char *input, size_t done,
                          size_t total, double t_start)
{
    const char *base = strrchr(input, '/');
    base = base ? base + 1 : input;
    double elapsed = now_seconds() - t_start;
    double rate = elapsed > 0 ? (double)done / elapsed : 0;
    char eta[32] = "?";
    if (rate > 0) {
        double left = (double)(total - done) / rate;
        snprintf(eta, sizeof eta, "%d:%02d", (int)(left / 60), (int)fmod(left, 60));
    }
    fprintf(stderr, "\rrvsfit-cl: file %zu: %s: %zu/%zu targets, %.1f spectra/s, ETA %s   ",
            run->files + 1, base, done, total, rate, eta);
    fflush(stderr);
}

static void progress_clear(void)
{
    fprintf(stderr, "\r%79s\r", "");
    fflush(stderr);
}

/* Counters before a batch's fit, and what the batch did, for --profile. */
static void batch_begin(const struct rvs_run *run, struct rvs_context_counters *c0,
                        struct rvs_fit_profile *p0)
{
    memset(c0, 0, sizeof *c0);
    memset(p0, 0, sizeof *p0);
    if (run->ctx)
        rvs_context_counters_get(run->ctx, c0);
    run->ops->profile(run->fitter, p0);
}

static void batch_end(struct rvs_run *run, const struct rvs_context_counters *c0,
                      const struct rvs_fit_profile *p0, size_t count)
{
    struct rvs_context_counters c1;
    struct rvs_fit_profile p1;
    memset(&c1, 0, sizeof c1);
    memset(&p1, 0, sizeof p1);
    if (run->ctx)
        rvs_context_counters_get(run->ctx, &c1);
    run->ops->profile(run->fitter, &p1);
    unsigned long long cmd = rvs_context_counters_commands(&c1) - rvs_context_counters_commands(c0);
    unsigned long long calls = p1.engine_calls - p0->engine_calls;
    struct batch_stats *b = &run->batch;
    if (b->batches == 0 || count < b->size_min)
        b->size_min = count;
    if (b->batches == 0 || count > b->size_max)
        b->size_max = count;
    if (b->batches == 0 || cmd < b->cmd_min) {
        b->cmd_min = cmd;
        b->cmd_min_size = count;
    }
    if (b->batches == 0 || cmd > b->cmd_max) {
        b->cmd_max = cmd;
        b->cmd_max_size = count;
    }
    if (calls > 0) {
        double per_call = (double)cmd / (double)calls;
        if (b->with_calls == 0 || per_call < b->per_call_min)
            b->per_call_min = per_call;
        if (b->with_calls == 0 || per_call > b->per_call_max)
            b->per_call_max = per_call;
        b->with_calls++;
    }
    b->engine_calls += calls;
    b->batches++;
}

/* Fits every selected row; rows and models (zeroed, [nsel][nwave]) are filled. */
static int fit_selection(struct rvs_run *run, struct rvs_desi_file *file,
                         const struct rvs_selection *sel, struct rvs_output_row *rows,
                         float *const models[RVS_DESI_NARMS], const char *input,
                         struct rvs_figure_job *figures)
{
    int status = RVS_OK;
    struct batch_slot slots[2];
    int thread_running = 0;
    pthread_t thread;
    struct producer_job jobs[2];
    size_t narrow[RVS_DESI_NARMS] = {0}, checked[RVS_DESI_NARMS] = {0};
    for (int i = 0; i < 2; i++) {
        memset(&slots[i], 0, sizeof slots[i]);
        rvs_desi_spectra_init(&slots[i].spectra);
        rvs_prepared_init(&slots[i].prepared);
    }

    unsigned flags = run->options.prepare.use_resolution ? RVS_DESI_READ_RESOLUTION : 0;
    size_t per_batch = batch_rows(run, file, flags);
    size_t nbatches = (sel->nselected + per_batch - 1) / per_batch;
    int overlap = run->options.overlap && nbatches > 1;
    rvs_log(RVS_LOG_INFO, MODULE, "%s: %zu targets in %zu batch(es) of up to %zu%s", input,
            sel->nselected, nbatches, per_batch, overlap ? ", reading overlapped with fitting" : "");
    for (int i = 0; i < 2; i++) {
        jobs[i] = (struct producer_job){.file = file,
                                        .selection = sel,
                                        .prepare = &run->options.prepare,
                                        .read_flags = flags,
                                        .slot = &slots[i]};
        for (int a = 0; a < RVS_DESI_NARMS; a++)
            jobs[i].wave[a] =
                (run->options.arms & (1u << a)) ? rvs_desi_wavelength(file, a) : NULL;
    }
    double t_start = now_seconds();

    slots[0].first = 0;
    slots[0].count = per_batch < sel->nselected ? per_batch : sel->nselected;
    produce(&jobs[0]);
    for (size_t k = 0; k < nbatches; k++) {
        struct batch_slot *cur = &slots[overlap ? k % 2 : 0];
        run->times.read += cur->t_read;
        run->times.prepare += cur->t_prepare;
        if (cur->status != RVS_OK) {
            status = cur->status;
            rvs_log(RVS_LOG_ERROR, MODULE, "%s: cannot read or prepare rows %zu..%zu: %s", input,
                    cur->first, cur->first + cur->count - 1, rvs_strerror(status));
            goto cleanup;
        }
        /* In serial mode `next` is `cur`: it is refilled only after the fit. */
        struct batch_slot *next = &slots[overlap ? (k + 1) % 2 : 0];
        int next_pending = k + 1 < nbatches;
        size_t next_first = (k + 1) * per_batch, done = cur->first + cur->count;
        size_t next_count = next_pending && sel->nselected - next_first < per_batch
                                ? sel->nselected - next_first
                                : per_batch;
        if (overlap && next_pending) {
            next->first = next_first;
            next->count = next_count;
            if (pthread_create(&thread, NULL, produce_thread, &jobs[(k + 1) % 2]) == 0)
                thread_running = 1;
            else
                rvs_log(RVS_LOG_DEBUG, MODULE, "no reader thread; reading after the fit");
        }

        float *batch_models[RVS_DESI_NARMS] = {NULL};
        for (int a = 0; a < RVS_DESI_NARMS; a++)
            if (models[a])
                batch_models[a] = models[a] + cur->first * run->fitter_nwave[a];
        struct rvs_context_counters c0;
        struct rvs_fit_profile p0;
        batch_begin(run, &c0, &p0);
        double t0 = now_seconds();
        status = run->ops->fit(run->fitter, &cur->prepared, rows + cur->first, batch_models);
        run->times.fit += now_seconds() - t0;
        if (status == RVS_OK)
            batch_end(run, &c0, &p0, cur->count);
        if (status != RVS_OK) {
            rvs_log(RVS_LOG_ERROR, MODULE, "%s: fitting rows %zu..%zu failed: %s", input,
                    cur->first, cur->first + cur->count - 1, rvs_strerror(status));
            goto cleanup;
        }
        run->spectra_fitted += cur->count;
        /* the figures show the data as the fit saw them: kept before the buffer is refilled */
        if (figures)
            rvs_figure_job_add_batch(figures, &cur->prepared, cur->first);
        for (int a = 0; a < RVS_DESI_NARMS; a++) {
            narrow[a] += cur->prepared.narrow_rows[a];
            checked[a] += cur->prepared.checked_rows[a];
        }

        if (thread_running) {
            double tw = now_seconds();
            pthread_join(thread, NULL);
            thread_running = 0;
            run->times.wait += now_seconds() - tw;
        } else if (next_pending) {
            next->first = next_first;
            next->count = next_count;
            produce(&jobs[overlap ? (k + 1) % 2 : 0]);
        }
        if (run->options.progress)
            progress_line(run, input, done, sel->nselected, t_start);
    }
    /* once per file and arm: where R is narrower than the templates, nothing can be deconvolved */
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        if (narrow[a])
            rvs_log(RVS_LOG_WARNING, MODULE,
                    "%s: arm %s: the resolution matrix is not wider than the templates' LSF "
                    "(sigma0 %.3g A) at %.2f%% of the pixels fitted: no deconvolution exists "
                    "there, and the solve sharpens the templates instead (as rvspecfit does); "
                    "use a library with a narrower LSF",
                    input, rvs_desi_arm_name(a), run->options.prepare.lsf_sigma0[a],
                    100.0 * (double)narrow[a] / (double)(checked[a] ? checked[a] : 1));
cleanup:
    if (thread_running)
        pthread_join(thread, NULL);
    if (run->options.progress)
        progress_clear();
    for (int i = 0; i < 2; i++) {
        rvs_desi_spectra_free(&slots[i].spectra);
        rvs_prepared_free(&slots[i].prepared);
    }
    return status;
}

/* ------------------------------------------------------------------ one file */

static void copy_rr(char *dst, const char *src)
{
    snprintf(dst, RVS_OUTPUT_RR_LEN, "%s", src);
}

/* The figure job of a file, or NULL (with a message, counted as failed figures) when its
 * figures cannot be made; the fit goes on either way. */
static struct rvs_figure_job *figure_job_for_file(struct rvs_run *run, struct rvs_desi_file *file,
                                                  const char *input, size_t nselected)
{
    const double *wave[RVS_DESI_NARMS] = {NULL};
    size_t nwave[RVS_DESI_NARMS] = {0};
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        if (run->options.arms & (1u << a)) {
            wave[a] = rvs_desi_wavelength(file, a);
            nwave[a] = rvs_desi_nwave(file, a);
        }
    struct rvs_figure_job *job = NULL;
    int status = rvs_figure_job_create(&run->options.figures, input, nselected,
                                       run->options.arms, wave, nwave, &job);
    if (status != RVS_OK) {
        rvs_log(RVS_LOG_ERROR, MODULE, "%s: no figures (%s); the fit goes on", input,
                rvs_strerror(status));
        run->figure_failures += nselected + 1;
    }
    return job;
}

static int process_file(struct rvs_run *run, const char *input, const char *tab_path,
                        const char *mod_path, long *nfit)
{
    int status = RVS_OK;
    struct rvs_desi_file *file = NULL;
    struct rvs_selection sel;
    struct rvs_output_row *rows = NULL;
    float *models[RVS_DESI_NARMS] = {NULL};
    struct rvs_figure_job *figures = NULL;
    memset(&sel, 0, sizeof sel);

    double t0 = now_seconds();
    status = rvs_desi_open(input, run->options.arms, &file);
    double t1 = now_seconds();
    run->times.open += t1 - t0;
    if (status != RVS_OK)
        goto cleanup;
    status = rvs_select_targets(file, &run->options.select, &sel);
    run->times.select += now_seconds() - t1;
    if (status != RVS_OK)
        goto cleanup;
    if (sel.nselected == 0)
        rvs_log(RVS_LOG_WARNING, MODULE, "%s: no fibers selected; writing empty outputs", input);
    else
        rvs_log(RVS_LOG_INFO, MODULE, "%s: selected %zu of %zu fibers", input, sel.nselected,
                rvs_desi_nrows(file));

    struct rvs_output_request req;
    rvs_output_request_init(&req);
    req.input_path = input;
    req.tab_path = tab_path;
    req.mod_path = mod_path;
    req.arms = run->options.arms;
    req.vrad_ccf = run->options.fit.param_init == RVS_FIT_INIT_CCF;
    req.deps = run->deps;
    req.ndeps = run->ndeps;
    req.templates = run->templates;
    req.ntemplates = run->ntemplates;
    req.config_path = run->options.config_path;
    req.command_line = run->options.command_line;
    req.redrock_path = sel.redrock_path;
    if (run->ctx) {
        req.device = run->ctx->caps.device_name;
        req.driver = run->ctx->caps.driver_version;
    }
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        if (run->options.arms & (1u << a))
            req.nwave[a] = (long)rvs_desi_nwave(file, a);
    if (run->figures)
        figures = figure_job_for_file(run, file, input, sel.nselected);

    if (sel.nselected > 0) {
        RVS_TRY(fitter_for_file(run, file));
        rows = rvs_calloc(sel.nselected, sizeof *rows);
        if (!rows) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        for (size_t k = 0; k < sel.nselected; k++) {
            struct rvs_output_row *r = &rows[k];
            rvs_output_row_init(r, (long)sel.rows[k]);
            for (int a = 0; a < RVS_DESI_NARMS; a++)
                if (sel.sn[a])
                    r->sn[a] = (float)sel.sn[a][k];
            if (sel.have_redrock) {
                r->rr_z = sel.rr_z[k];
                if (sel.rr_spectype)
                    copy_rr(r->rr_spectype, sel.rr_spectype + k * (sel.rr_spectype_width + 1));
                if (sel.rr_subtype)
                    copy_rr(r->rr_subtype, sel.rr_subtype + k * (sel.rr_subtype_width + 1));
            }
        }
        for (int a = 0; a < RVS_DESI_NARMS; a++) {
            if (!(run->options.arms & (1u << a)))
                continue;
            models[a] = rvs_calloc(sel.nselected * (size_t)req.nwave[a], sizeof(float));
            if (!models[a]) {
                status = RVS_ERR_NOMEM;
                goto cleanup;
            }
        }
        RVS_TRY(fit_selection(run, file, &sel, rows, models, input, figures));
        req.nrows = sel.nselected;
        req.rows = rows;
        for (int a = 0; a < RVS_DESI_NARMS; a++)
            req.model[a] = models[a];
    }
    /* the figures take the rows and models (still the request's until the write is done) and
     * the FIBERMAP's names for them, which go with the file */
    if (figures) {
        const struct rvs_desi_fibermap *fm = rvs_desi_fibermap(file);
        rvs_figure_job_take_results(figures, &rows, models, fm->brickid, fm->targetid);
    }
    /* The writer reopens the input for its tables; ours is closed first to keep one handle. */
    rvs_desi_close(&file);
    double tw = now_seconds();
    status = rvs_output_write(&req);
    run->times.write += now_seconds() - tw;
    if (status == RVS_OK) {
        *nfit = (long)sel.nselected;
        /* drawn on the figure threads while the next file is fitted */
        if (figures) {
            double waited = 0;
            rvs_figure_queue_submit(run->figures, &figures, &waited);
            run->figure_wait += waited;
        }
    }
cleanup:
    rvs_figure_job_destroy(&figures);
    rvs_desi_close(&file);
    rvs_selection_free(&sel);
    free(rows);
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        free(models[a]);
    return status;
}

/* RVS_OK when tab_path is this input's or nobody's yet in this run (and claims it), else
 * RVS_ERR_INVALID_ARGUMENT with a message naming the other input. */
static int claim_output(struct rvs_run *run, const char *input, const char *tab_path)
{
    char *real = realpath(input, NULL);
    if (!real && !(real = rvs_strdup(input)))
        return RVS_ERR_NOMEM;
    for (size_t i = 0; i < run->nclaimed; i++) {
        if (strcmp(run->claimed[i].tab_path, tab_path) != 0)
            continue;
        int same = strcmp(run->claimed[i].input_real, real) == 0;
        if (!same)
            rvs_log(RVS_LOG_ERROR, MODULE,
                    "%s: its outputs %s would replace those of %s, fitted earlier in this run "
                    "(the same file name%s); not fitted: drop --no-subdirs or give the files "
                    "different names",
                    input, tab_path, run->claimed[i].input,
                    run->options.naming.no_subdirs ? " with --no-subdirs" : "");
        free(real);
        return same ? RVS_OK : RVS_ERR_INVALID_ARGUMENT;
    }
    if (run->nclaimed == run->claimed_cap) {
        size_t cap = run->claimed_cap ? 2 * run->claimed_cap : 16;
        struct claimed_output *grown = realloc(run->claimed, cap * sizeof *grown);
        if (!grown) {
            free(real);
            return RVS_ERR_NOMEM;
        }
        run->claimed = grown;
        run->claimed_cap = cap;
    }
    char *tab = rvs_strdup(tab_path), *given = rvs_strdup(input);
    if (!tab || !given) {
        free(tab);
        free(given);
        free(real);
        return RVS_ERR_NOMEM;
    }
    run->claimed[run->nclaimed++] = (struct claimed_output){tab, real, given};
    return RVS_OK;
}

int rvs_run_file(struct rvs_run *run, const char *input, enum rvs_output_status *outcome,
                 long *nfit)
{
    int status = RVS_OK;
    char *tab_path = NULL, *mod_path = NULL;
    double t0 = now_seconds();
    long n = 0;
    enum rvs_output_status result = RVS_OUTPUT_FAILURE;

    rvs_log(RVS_LOG_INFO, MODULE, "processing %s", input);
    status = rvs_output_paths(&run->options.naming, input, &tab_path, &mod_path);
    if (status == RVS_OK)
        status = claim_output(run, input, tab_path);
    /* an output directory that cannot be made or written is found now, not after the fit */
    if (status == RVS_OK && !(run->options.skip_existing && rvs_output_exist(tab_path, mod_path)))
        status = rvs_output_check_writable(tab_path, mod_path);
    if (status == RVS_OK && run->options.skip_existing && rvs_output_done(tab_path, mod_path, input)) {
        rvs_log(RVS_LOG_INFO, MODULE, "skipping %s: %s and %s exist", input, tab_path, mod_path);
        result = RVS_OUTPUT_EXISTING;
        n = -1;
    } else if (status == RVS_OK) {
        status = process_file(run, input, tab_path, mod_path, &n);
        result = status == RVS_OK ? RVS_OUTPUT_SUCCESS : RVS_OUTPUT_FAILURE;
    }
    double seconds = now_seconds() - t0;
    if (status != RVS_OK) {
        rvs_log(RVS_LOG_ERROR, MODULE, "%s: failed (%s); its outputs were not written", input,
                rvs_strerror(status));
        n = 0;
        run->failed++;
    } else if (result == RVS_OUTPUT_SUCCESS) {
        run->targets += (size_t)n;
    }
    run->files++;
    run->times.wall += seconds;
    if (run->options.status_path) {
        int st = rvs_output_status_append(run->options.status_path, input, result, n,
                                          result == RVS_OUTPUT_EXISTING ? 0.0 : seconds);
        if (st != RVS_OK && status == RVS_OK)
            status = st;
    }
    free(tab_path);
    free(mod_path);
    if (outcome)
        *outcome = result;
    if (nfit)
        *nfit = n;
    return status;
}

int rvs_run_wait_figures(struct rvs_run *run, size_t *failed)
{
    size_t lost = run->figure_failures;
    if (run->figures) {
        double t0 = now_seconds();
        rvs_figure_queue_wait(run->figures);
        run->figure_wait += now_seconds() - t0;
        struct rvs_figure_queue_stats st;
        rvs_figure_queue_stats(run->figures, &st);
        lost += st.failed;
    }
    if (failed)
        *failed = lost;
    return lost ? RVS_ERR_IO : RVS_OK;
}

/* ------------------------------------------------------------------ --profile */

/* bytes with a binary unit, e.g. "12.3 MiB" */
static const char *format_bytes(unsigned long long bytes, char *buf, size_t size)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    size_t u = 0;
    while (v >= 1024 && u + 1 < sizeof units / sizeof units[0]) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, size, "%llu B", bytes);
    else
        snprintf(buf, size, "%.1f %s", v, units[u]);
    return buf;
}

/* Device commands, per-batch spread, transfers and device memory (the context's counters since
 * the caller's last rvs_context_counters_reset), then every number once more as key=value pairs
 * on one "rvsfit-cl profile-data:" line for scripts (benchmarks/bench-e2e). */
static void print_device_work(const struct rvs_run *run, const struct rvs_fit_profile *p,
                              FILE *out)
{
    const struct stage_times *t = &run->times;
    const struct batch_stats *b = &run->batch;
    struct rvs_context_counters c;
    char b1[32], b2[32], b3[32], b4[32];
    memset(&c, 0, sizeof c);
    if (run->ctx)
        rvs_context_counters_get(run->ctx, &c);
    unsigned long long commands = rvs_context_counters_commands(&c);
    fprintf(out, "  device commands %llu: kernel launches %llu, GEMM calls %llu, FFT transforms "
                 "%llu, buffer fills %llu, buffer copies %llu\n",
            commands, c.kernel_launches, c.gemm_calls, c.fft_transforms, c.fills, c.copies);
    if (b->batches > 0) {
        fprintf(out, "  per batch: %zu batch(es) of %zu..%zu spectra; %llu (batch of %zu) to %llu "
                     "(batch of %zu) commands",
                b->batches, b->size_min, b->size_max, b->cmd_min, b->cmd_min_size, b->cmd_max,
                b->cmd_max_size);
        if (b->with_calls > 0)
            fprintf(out, ", %.1f to %.1f per engine call", b->per_call_min, b->per_call_max);
        fputc('\n', out);
    } else {
        fprintf(out, "  per batch: no batch fitted\n");
    }
    fprintf(out, "  transfers: %s to the device in %llu writes, %s back in %llu reads; %s "
                 "mapped in %llu maps (OpenBLAS path; no copy on CPU devices)\n",
            format_bytes(c.bytes_to_device, b1, sizeof b1), c.writes,
            format_bytes(c.bytes_from_device, b2, sizeof b2), c.reads,
            format_bytes(c.bytes_mapped, b3, sizeof b3), c.maps);
    fprintf(out, "  device memory: peak %s in rvsfit-cl's buffers (%llu made, %llu released), "
                 "%s with the libraries' work space (clFFT plans %s now, largest CLBlast GEMM "
                 "%s)\n",
            format_bytes(c.mem_peak, b1, sizeof b1), c.buffers_created, c.buffers_released,
            format_bytes(c.mem_peak_total, b2, sizeof b2), format_bytes(c.fft_work, b3, sizeof b3),
            format_bytes(c.gemm_work_max, b4, sizeof b4));
    fprintf(out, "rvsfit-cl profile-data: files=%zu failed=%zu targets=%zu spectra=%zu "
                 "wall_s=%.6f open_s=%.6f select_s=%.6f read_s=%.6f prepare_s=%.6f "
                 "write_s=%.6f setup_s=%.6f fit_s=%.6f wait_s=%.6f ccf_s=%.6f optimizer_s=%.6f "
                 "posterior_s=%.6f hessian_s=%.6f models_s=%.6f engine_s=%.6f upload_s=%.6f "
                 "engine_ccf_s=%.6f engine_optimizer_s=%.6f engine_posterior_s=%.6f "
                 "engine_hessian_s=%.6f engine_models_s=%.6f "
                 "engine_calls=%llu "
                 "evaluations=%llu commands=%llu kernel_launches=%llu gemm_calls=%llu "
                 "fft_transforms=%llu fills=%llu copies=%llu batches=%zu batch_min=%zu batch_max=%zu "
                 "batch_commands_min=%llu batch_commands_max=%llu commands_per_call_min=%.3f "
                 "commands_per_call_max=%.3f writes=%llu reads=%llu maps=%llu "
                 "bytes_to_device=%llu bytes_from_device=%llu bytes_mapped=%llu "
                 "buffers_created=%llu buffers_released=%llu mem_peak=%zu mem_peak_total=%zu "
                 "fft_work=%zu gemm_work_max=%zu eval_ccf=%llu eval_optimizer=%llu "
                 "eval_posterior=%llu eval_hessian=%llu eval_models=%llu profile_scans=%llu\n",
            run->files, run->failed, run->targets, run->spectra_fitted, t->wall, t->open,
            t->select, t->read, t->prepare, t->write, t->fitter_create, t->fit, t->wait, p->ccf,
            p->optimizer, p->posterior, p->hessian, p->models, p->engine, p->upload,
            p->engine_ccf, p->engine_optimizer, p->engine_posterior, p->engine_hessian,
            p->engine_models, p->engine_calls,
            p->evaluations,
            commands, c.kernel_launches, c.gemm_calls, c.fft_transforms, c.fills, c.copies, b->batches,
            b->size_min, b->size_max, b->cmd_min, b->cmd_max, b->per_call_min, b->per_call_max,
            c.writes, c.reads, c.maps, c.bytes_to_device, c.bytes_from_device, c.bytes_mapped,
            c.buffers_created, c.buffers_released, c.mem_peak, c.mem_peak_total, c.fft_work,
            c.gemm_work_max, p->eval_ccf, p->eval_optimizer, p->eval_posterior, p->eval_hessian,
            p->eval_models, p->profile_scans);
}

void rvs_run_print_profile(const struct rvs_run *run, FILE *out)
{
    const struct stage_times *t = &run->times;
    struct rvs_fit_profile p = run->fit_profile_done;
    if (run->fitter) {
        struct rvs_fit_profile cur;
        memset(&cur, 0, sizeof cur);
        run->ops->profile(run->fitter, &cur);
        add_profile(&p, &cur);
    }
    double host = t->open + t->select + t->read + t->prepare + t->write;
    fprintf(out, "rvsfit-cl profile: %zu file(s), %zu failed, %zu target(s) written, %zu "
                 "spectra fitted, %.2f s\n",
            run->files, run->failed, run->targets, run->spectra_fitted, t->wall);
    fprintf(out, "  host   open (headers, fibermap)  %9.3f s\n", t->open);
    fprintf(out, "  host   select                    %9.3f s\n", t->select);
    fprintf(out, "  host   read spectra              %9.3f s\n", t->read);
    fprintf(out, "  host   prepare                   %9.3f s\n", t->prepare);
    fprintf(out, "  host   write outputs             %9.3f s\n", t->write);
    if (run->figures) {
        /* drawn on their own threads: their time is not the fit's, only the waits are */
        struct rvs_figure_queue_stats f;
        rvs_figure_queue_stats(run->figures, &f);
        fprintf(out, "  host   figures (%zu thread(s))    %9.3f s of thread time for %zu figure(s)"
                     " (%zu failed), %.3f s from the first to the last; the run waited %.3f s "
                     "for them\n",
                f.threads, f.draw_seconds, f.drawn, f.failed + run->figure_failures,
                f.first_to_last, run->figure_wait);
    }
    fprintf(out, "  device fitter set-up             %9.3f s\n", t->fitter_create);
    fprintf(out, "  device fit (all stages)          %9.3f s\n", t->fit);
    /* evaluations per fitted spectrum, per stage: where the model evaluations go */
    double per = run->spectra_fitted ? 1.0 / (double)run->spectra_fitted : 0.0;
    fprintf(out, "           spectra to the device   %9.3f s\n", p.upload);
    const struct {
        const char *name;
        double seconds, engine;
        unsigned long long evaluations;
    } stages[] = {{"CCF start", p.ccf, p.engine_ccf, p.eval_ccf},
                  {"optimizer", p.optimizer, p.engine_optimizer, p.eval_optimizer},
                  {"velocity posterior", p.posterior, p.engine_posterior, p.eval_posterior},
                  {"Hessian errors", p.hessian, p.engine_hessian, p.eval_hessian},
                  {"best-fit models", p.models, p.engine_models, p.eval_models}};
    for (size_t k = 0; k < sizeof stages / sizeof stages[0]; k++)
        fprintf(out, "           %-22s %9.3f s  %7.1f evaluations/spectrum, %.3f s in the "
                     "engine\n",
                stages[k].name, stages[k].seconds, (double)stages[k].evaluations * per,
                stages[k].engine);
    fprintf(out, "           errors from a likelihood scan: %llu parameter(s), %.1f per 100 "
                 "spectra\n",
            p.profile_scans, 100.0 * (double)p.profile_scans * per);
    fprintf(out, "           engine calls %llu, model evaluations %llu, %.3f s in the engine "
                 "(%.1f %% of the fit)\n",
            p.engine_calls, p.evaluations, p.engine, t->fit > 0 ? 100 * p.engine / t->fit : 0.0);
    fprintf(out, "  host total %.3f s, device total %.3f s; waited %.3f s for overlapped reads\n",
            host, t->fit + t->fitter_create, t->wait);
    if (t->fit > 0)
        fprintf(out, "  throughput %.1f spectra/s of fit time, %.1f spectra/s overall\n",
                (double)run->spectra_fitted / t->fit,
                t->wall > 0 ? (double)run->spectra_fitted / t->wall : 0.0);
    print_device_work(run, &p, out);
}
