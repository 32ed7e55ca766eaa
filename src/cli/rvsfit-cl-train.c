/* rvsfit-cl-train.c: the NN emulator trainer's command (rvspecfit's rvs_train_nn_interpolator,
 * nn/train_interpolator.py main, on an OpenCL device). Reads a grid of spectra, trains the
 * network (include/rvsfit/train.h), reports every epoch, measures the emulation error on the
 * held-out spectra through the inference path the fit uses (rvs_nn_forward), and writes the
 * template library (doc/template-library.md). Options come from one table. */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <fitsio.h>

#include "options.h"
#include "rvsfit.h"
#include "rvsfit/library.h"
#include "rvsfit/train.h"
#include "rvsfit/train_io.h"

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_DEVICE = 3 };

enum option_id {
    OPT_HELP = 'h',
    OPT_VERSION = 'V',
    OPT_QUIET = 'q',
    OPT_VERBOSE = 'v',
    OPT_GRID = 256,
    OPT_SETUP,
    OPT_OUT,
    OPT_WIDTH,
    OPT_NLAYERS,
    OPT_NPC,
    OPT_BATCH,
    OPT_EPOCHS,
    OPT_LR,
    OPT_MIN_LR,
    OPT_PATIENCE,
    OPT_STOP_PATIENCE,
    OPT_PCA_INIT,
    OPT_LOSS,
    OPT_BATCHNORM,
    OPT_SEED,
    OPT_VAL_FRAC,
    OPT_PARAMS,
    OPT_LOG_PARAMS,
    OPT_REVISION,
    OPT_FORCE,
    OPT_RESUME,
    OPT_CHECKPOINT_EVERY,
    OPT_TIME_LIMIT,
    OPT_PREDICTIONS,
    OPT_REPORT,
    OPT_LSF_SIGMA,
    OPT_RESMAT_LIBRARY,
    OPT_INIT_FROM,
    OPT_DEVICE,
    OPT_FP32,
    OPT_LOG_LEVEL
};


static const struct rvs_cli_option cli_options[] = {
    {"grid", required_argument, OPT_GRID, "FILE", "grid of spectra (FITS, see doc/trainer.md)", NULL},
    {"setup", required_argument, OPT_SETUP, "NAME", "arm setup, e.g. desi_b (names the output)", NULL},
    {"out", required_argument, OPT_OUT, "DIR", "library directory; writes DIR/rvsfit_NAME.fits", NULL},
    {"width", required_argument, OPT_WIDTH, "N", "hidden width (256)", NULL},
    {"nlayers", required_argument, OPT_NLAYERS, "N", "hidden width x width layers (2)", NULL},
    {"npc", required_argument, OPT_NPC, "N", "bottleneck (principal components) width (200)", NULL},
    {"batch", required_argument, OPT_BATCH, "N", "mini-batch size (256)", NULL},
    {"epochs", required_argument, OPT_EPOCHS, "N", "at most N epochs (1000000)", NULL},
    {"lr", required_argument, OPT_LR, "X", "initial learning rate (1e-3)", NULL},
    {"min-lr", required_argument, OPT_MIN_LR, "X",
     "stop when the learning rate falls below X (1e-8)", NULL},
    {"patience", required_argument, OPT_PATIENCE, "N",
     "halve the learning rate after N epochs without a lower training loss (20)", NULL},
    {"stop-patience", required_argument, OPT_STOP_PATIENCE, "N",
     "stop after N epochs without a lower validation loss, keeping the best weights (100; 0: "
     "off)", NULL},
    {"pca-init", no_argument, OPT_PCA_INIT, NULL,
     "initialise the last layer with principal components of the training spectra", NULL},
    {"loss", required_argument, OPT_LOSS, "KIND[:DELTA]",
     "l1: mean |d ln flux| (rvspecfit's, the default); l2: mean squared; l1l2[:DELTA]: "
     "|d| + d^2 / (2 DELTA), L1 below DELTA (0.02) and quadratic above", NULL},
    {"batchnorm", no_argument, OPT_BATCHNORM, NULL,
     "BatchNorm after the hidden layers (rvspecfit's trainer has it off)", NULL},
    {"seed", required_argument, OPT_SEED, "S", "random seed for weights, split and batches", NULL},
    {"val-frac", required_argument, OPT_VAL_FRAC, "F",
     "fraction of the grid held out for validation (0.1)", NULL},
    {"params", required_argument, OPT_PARAMS, "LIST",
     "parameter columns, in network order (teff,logg,feh,alpha)", NULL},
    {"log-params", required_argument, OPT_LOG_PARAMS, "LIST",
     "parameters mapped through log10 (teff; 'none' for none)", NULL},
    {"revision", required_argument, OPT_REVISION, "STR", "library revision string (LIBREV)", NULL},
    {"force", no_argument, OPT_FORCE, NULL, "replace an existing library file", NULL},
    {"resume", no_argument, OPT_RESUME, NULL, "continue from the checkpoint in DIR", NULL},
    {"checkpoint-every", required_argument, OPT_CHECKPOINT_EVERY, "N",
     "write a checkpoint every N epochs (32; 0: only when --time-limit stops training)", NULL},
    {"time-limit", required_argument, OPT_TIME_LIMIT, "SECONDS",
     "stop training so that the whole run (reading, training, writing) ends within about "
     "SECONDS of wall time, keeping the best weights so far and the state it stopped in as a "
     "checkpoint that --resume continues", NULL},
    {"predictions", required_argument, OPT_PREDICTIONS, "FILE",
     "also write the held-out spectra and their predicted log-flux to FILE (FITS)", NULL},
    {"report", required_argument, OPT_REPORT, "FILE",
     "also write the breakdown of the held-out error (by parameter and wavelength) to FILE",
     NULL},
    {"lsf-sigma", required_argument, OPT_LSF_SIGMA, "A",
     "Gaussian LSF sigma of the grid's spectra in Angstrom, recorded in the library (default: "
     "from the grid's FWHM or LSFSIG keyword; 0: unknown)", NULL},
    {"resolution-matrix-library", no_argument, OPT_RESMAT_LIBRARY, NULL,
     "declare the library made for the resolution-matrix fit (LSFRMAT = T: its LSF is narrower "
     "than the instrument's; rvsfit-cl then applies each fibre's R by default)", NULL},
    {"init-from", required_argument, OPT_INIT_FROM, "FILE",
     "start from the weights of an existing library file of the same shape, wavelength grid "
     "and parameter mapping (fine-tuning to a changed grid) instead of a fresh initialisation",
     NULL},
    {"device", required_argument, OPT_DEVICE, "SPEC",
     "OpenCL device: index, P:D, name substring, cpu or gpu", NULL},
    {"fp32", no_argument, OPT_FP32, NULL, "compensated fp32 accumulation even with fp64", NULL},
    {"log-level", required_argument, OPT_LOG_LEVEL, "LEVEL",
     "DEBUG, INFO (default), WARNING, ERROR or CRITICAL", NULL},
    {"quiet", no_argument, OPT_QUIET, NULL, "no per-epoch lines; only errors", NULL},
    {"verbose", no_argument, OPT_VERBOSE, NULL, "more messages (DEBUG)", NULL},
    {"help", no_argument, OPT_HELP, NULL, "show this help and exit", NULL},
    {"version", no_argument, OPT_VERSION, NULL, "show the version and exit", NULL},
};
enum { NUM_OPTIONS = sizeof cli_options / sizeof cli_options[0] };

static void print_help(void)
{
    printf("Usage: rvsfit-cl-train --grid FILE --setup NAME --out DIR [OPTION]...\n"
           "Train the neural-network emulator of stellar spectra (rvspecfit's network, loss,\n"
           "optimiser and schedule) on an OpenCL device and write a template library.\n\n"
           "Options:\n");
    rvs_cli_print_options(stdout, cli_options, NUM_OPTIONS, 26);
    printf("\nEach epoch prints its training and validation loss (mean |delta ln flux| over\n"
           "pixels, divided by the grid's spread; with --loss l2 the mean square divided by\n"
           "the spread squared; with l1l2 the mean of |d| + d^2 / (2 DELTA) over the spread).\n"
           "At the end the held-out spectra are emulated as the fit does, the median and 99th\n"
           "percentile of |dflux|/flux per pixel are printed and stored in the library (VALMED,\n"
           "VAL99), and their breakdown by parameter and wavelength is printed (and written\n"
           "with --report).\n\n"
           "Exit status:\n"
           "  0  library written\n"
           "  1  a file could not be read or written, or training failed\n"
           "  2  invalid command line\n"
           "  3  no usable OpenCL device\n\n"
           "Report bugs to: %s\n",
           PACKAGE_BUGREPORT);
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "rvsfit-cl-train: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    fprintf(stderr, "Usage: rvsfit-cl-train --grid FILE --setup NAME --out DIR [OPTION]...\n"
                    "Try 'rvsfit-cl-train --help' for more information.\n");
    return EXIT_USAGE;
}

static int parse_size(const char *s, size_t lo, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *end || errno || s[0] == '-' || v < lo || v > (1ULL << 40))
        return -1;
    *out = (size_t)v;
    return 0;
}

static int parse_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

/* Splits a comma list into at most max names (pointers into buf). */
static int split_list(char *buf, char **names, size_t max, size_t *n)
{
    *n = 0;
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        if (*n == max)
            return -1;
        names[(*n)++] = tok;
    }
    return *n ? 0 : -1;
}

struct report_state {
    int quiet;
};

static int report_epoch(const struct rvs_train_epoch *e, void *user)
{
    const struct report_state *st = user;
    if (!st->quiet) {
        printf("epoch %6zu  train %.6f  val %.6f%s  lr %.3g  %.2f s\n", e->epoch, e->train_loss,
               e->val_loss, e->improved ? "*" : " ", e->lr, e->seconds);
        fflush(stdout);
    }
    return 0;
}

/* Held-out emulation error through rvs_nn (BatchNorm folded, mapping on the device: the fit's
 * path): err = |exp(pred - true) - 1| per pixel (count x npix; a non-finite value counts as
 * infinite), its median and 99th percentile; also the largest difference between that
 * prediction and the trainer's own (trainer_pred, log-flux). */
static int emulation_error(struct rvs_context *ctx, const struct rvs_trained_net *net,
                           const struct rvs_train_mapping *map, const struct rvs_train_grid *g,
                           const size_t *rows, size_t count, const float *trainer_pred,
                           float *err, double *median, double *p99, double *max_dev)
{
    int status = RVS_OK;
    struct rvs_nn *nn = NULL;
    cl_mem dparams = NULL, dout = NULL;
    size_t P = g->nparam, npix = g->npix, es = rvs_context_real_size(ctx);
    unsigned char *hp = malloc(count * P * es);
    float *pred = malloc(count * npix * sizeof *pred);
    float *tmp = malloc(count * npix * sizeof *tmp);
    if (!hp || !pred || !tmp) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    struct rvs_nn_desc d = net->desc;
    for (size_t p = 0; p < P; p++) {
        d.log_input[p] = map->log10[p];
        d.map_center[p] = map->m[p];
        d.map_scale[p] = map->s[p];
    }
    for (size_t i = 0; i < count; i++)
        for (size_t p = 0; p < P; p++) {
            double t = g->params[rows[i] * P + p];
            if (es == sizeof(double))
                ((double *)hp)[i * P + p] = t;
            else
                ((float *)hp)[i * P + p] = (float)t;
        }
    if ((status = rvs_nn_create(ctx, &d, &nn)) != RVS_OK ||
        (status = rvs_buffer_create(ctx, CL_MEM_READ_ONLY, count * P * es, hp, &dparams)) !=
            RVS_OK ||
        (status = rvs_buffer_create(ctx, CL_MEM_WRITE_ONLY, count * npix * sizeof(float), NULL,
                                    &dout)) != RVS_OK ||
        (status = rvs_nn_forward(ctx, nn, dparams, count, dout, RVS_NN_LOGFLUX_F32)) != RVS_OK ||
        (status = rvs_buffer_read(ctx, dout, 0, count * npix * sizeof(float), pred)) != RVS_OK)
        goto cleanup;
    double dev = 0;
    for (size_t i = 0; i < count; i++)
        for (size_t j = 0; j < npix; j++) {
            double pv = pred[i * npix + j], tv = g->logflux[rows[i] * npix + j];
            double e = fabs(expm1(pv - tv));
            err[i * npix + j] = isfinite(e) ? (float)e : INFINITY;
            double dd = fabs(pv - (double)trainer_pred[i * npix + j]);
            dev = dd > dev ? dd : dev;
        }
    memcpy(tmp, err, count * npix * sizeof *tmp);
    *median = rvs_train_quantile(tmp, count * npix, 0.5);
    memcpy(tmp, err, count * npix * sizeof *tmp);
    *p99 = rvs_train_quantile(tmp, count * npix, 0.99);
    *max_dev = dev;
cleanup:
    rvs_nn_destroy(&nn);
    rvs_buffer_release(&dparams);
    rvs_buffer_release(&dout);
    free(hp);
    free(pred);
    free(tmp);
    return status;
}

/* The error breakdown to stdout (unless quiet) and to `path` (when given). */
/* --init-from: the weights of an existing library as the starting point. The first layer absorbs
 * a change of the parameter mapping exactly (x_old = (x_new S_new + M_new - M_old) / S_old), and
 * the output layer is un-normalised with this grid's d0 and sd0, so the network starts out
 * computing exactly what the library computes. */
static int init_from_library(struct rvs_trainer *tr, const char *path,
                             const struct rvs_train_grid *g, const struct rvs_train_mapping *map)
{
    int status = RVS_OK;
    struct rvs_library_arm *lib = NULL;
    float *p = NULL;
    const struct rvs_train_layout *L = rvs_trainer_layout(tr);
    const float *d0 = NULL, *sd0 = NULL;
    double spread0 = 0;
    if ((status = rvs_library_open_file(path, &lib)) != RVS_OK)
        goto cleanup;
    const struct rvs_library_content *c = rvs_library_content(lib);
    const struct rvs_nn_desc *d = &c->nn;
    size_t P = g->nparam, npc = L->lin_out[L->nlin - 1];
    if (d->with_batchnorm || d->indim != P || d->nlayers + 2 != L->nlin || d->npix != g->npix ||
        d->npc != npc || d->width != L->lin_out[0]) {
        rvs_log(RVS_LOG_ERROR, "train", "--init-from %s: its network (%zu inputs, %zu hidden "
                "layers of %zu, bottleneck %zu, %zu pixels%s) differs from this one (%zu, %zu, "
                "%zu, %zu, %zu, no BatchNorm); give the same --width, --nlayers and --npc",
                path, d->indim, d->nlayers, d->width, d->npc, d->npix,
                d->with_batchnorm ? ", BatchNorm" : "", P, L->nlin - 2, L->lin_out[0], npc,
                g->npix);
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    for (size_t j = 0; j < g->npix; j++)
        if (fabs(c->wave[j] / g->wave[j] - 1) > 1e-9) {
            rvs_log(RVS_LOG_ERROR, "train", "--init-from %s: its wavelength grid differs from "
                    "the grid's at pixel %zu (%.6f vs %.6f A)", path, j, c->wave[j], g->wave[j]);
            status = RVS_ERR_INVALID_ARGUMENT;
            goto cleanup;
        }
    for (size_t i = 0; i < P; i++)
        if (strcmp(c->params[i].name, g->names[i]) != 0 ||
            (c->params[i].log10 != 0) != (map->log10[i] != 0)) {
            rvs_log(RVS_LOG_ERROR, "train", "--init-from %s: parameter %zu is %s%s there, %s%s "
                    "here; give the same --params and --log-params", path, i,
                    c->params[i].log10 ? "log10 " : "", c->params[i].name,
                    map->log10[i] ? "log10 " : "", g->names[i]);
            status = RVS_ERR_INVALID_ARGUMENT;
            goto cleanup;
        }
    p = malloc(L->total * sizeof *p);
    if (!p) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    if ((status = rvs_trainer_params_read(tr, p)) != RVS_OK)
        goto cleanup;
    for (size_t l = 0; l < L->nlin; l++) {
        size_t nin = L->lin_in[l], nout = L->lin_out[l];
        const float *w = d->lin[l].weight, *b = d->lin[l].bias;
        for (size_t o = 0; o < nout; o++) {
            double bias = b[o];
            for (size_t k = 0; k < nin; k++) {
                double wk = w[o * nin + k];
                if (l == 0) { /* remap the inputs */
                    bias += wk * (map->m[k] - c->params[k].m) / c->params[k].s;
                    wk *= map->s[k] / c->params[k].s;
                }
                p[L->lin_w[l] + o * nin + k] = (float)wk;
            }
            p[L->lin_b[l] + o] = (float)bias;
        }
    }
    rvs_trainer_normalisation(tr, &d0, &sd0, &spread0);
    for (size_t j = 0; j < g->npix; j++) {
        for (size_t k = 0; k < npc; k++)
            p[L->pc_w + j * npc + k] = d->pc.weight[j * npc + k] / sd0[j];
        p[L->pc_b + j] = (d->pc.bias[j] - d0[j]) / sd0[j];
    }
    if ((status = rvs_trainer_params_write(tr, p)) != RVS_OK)
        goto cleanup;
    rvs_log(RVS_LOG_INFO, "train", "weights initialised from %s", path);
cleanup:
    free(p);
    rvs_library_close(&lib);
    return status;
}

static int error_report(const char *path, int quiet, const struct rvs_train_grid *g,
                        const size_t *rows, size_t count, const float *err, const char *what)
{
    int status = RVS_OK;
    if (!quiet && (status = rvs_train_error_report(stdout, g, rows, count, err, what)) != RVS_OK)
        return status;
    if (!path)
        return RVS_OK;
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "rvsfit-cl-train: cannot write the report %s: %s\n", path,
                strerror(errno));
        return RVS_ERR_IO;
    }
    status = rvs_train_error_report(f, g, rows, count, err, what);
    if (fclose(f) != 0 && status == RVS_OK) {
        fprintf(stderr, "rvsfit-cl-train: cannot write the report %s: %s\n", path,
                strerror(errno));
        status = RVS_ERR_IO;
    }
    return status;
}

/* Held-out spectra and the trainer's predictions, for checks outside (tests/train_check.py). */
static int write_predictions(const char *path, const struct rvs_train_grid *g, const size_t *rows,
                             size_t count, const float *pred)
{
    int fst = 0;
    fitsfile *f = NULL;
    char bang[4096];
    snprintf(bang, sizeof bang, "!%s", path);
    double *par = malloc(count * g->nparam * sizeof *par);
    float *truth = malloc(count * g->npix * sizeof *truth);
    long *rowl = malloc(count * sizeof *rowl);
    if (!par || !truth || !rowl) {
        free(par);
        free(truth);
        free(rowl);
        return RVS_ERR_NOMEM;
    }
    for (size_t i = 0; i < count; i++) {
        memcpy(par + i * g->nparam, g->params + rows[i] * g->nparam, g->nparam * sizeof *par);
        memcpy(truth + i * g->npix, g->logflux + rows[i] * g->npix, g->npix * sizeof *truth);
        rowl[i] = (long)rows[i];
    }
    long ax[2] = {(long)g->nparam, (long)count}, axf[2] = {(long)g->npix, (long)count};
    long n1 = (long)count;
    fits_create_file(&f, bang, &fst);
    fits_create_img(f, 8, 0, NULL, &fst);
    fits_create_img(f, DOUBLE_IMG, 2, ax, &fst);
    fits_update_key_str(f, "EXTNAME", "PARAMS", "physical parameters, one row per spectrum", &fst);
    fits_write_img(f, TDOUBLE, 1, (LONGLONG)(count * g->nparam), par, &fst);
    fits_create_img(f, LONG_IMG, 1, &n1, &fst);
    fits_update_key_str(f, "EXTNAME", "ROWS", "0-based grid rows", &fst);
    fits_write_img(f, TLONG, 1, (LONGLONG)count, rowl, &fst);
    fits_create_img(f, FLOAT_IMG, 2, axf, &fst);
    fits_update_key_str(f, "EXTNAME", "PRED", "trainer's log-flux prediction", &fst);
    fits_write_img(f, TFLOAT, 1, (LONGLONG)(count * g->npix), (void *)pred, &fst);
    fits_create_img(f, FLOAT_IMG, 2, axf, &fst);
    fits_update_key_str(f, "EXTNAME", "TRUE", "grid log-flux", &fst);
    fits_write_img(f, TFLOAT, 1, (LONGLONG)(count * g->npix), truth, &fst);
    fits_close_file(f, &fst);
    free(par);
    free(truth);
    free(rowl);
    if (fst) {
        char text[FLEN_STATUS];
        fits_get_errstatus(fst, text);
        fprintf(stderr, "rvsfit-cl-train: cannot write %s: %s\n", path, text);
        return RVS_ERR_IO;
    }
    return RVS_OK;
}

int main(int argc, char **argv)
{
    /* OpenBLAS on its generic kernels (new CPUs): run again with vector ones (src/device/gemm.c) */
    rvs_openblas_reexec_if_generic(argv);
    struct option long_options[NUM_OPTIONS + 1];
    char short_options[3 * NUM_OPTIONS + 2] = ":";
    rvs_cli_getopt_tables(cli_options, NUM_OPTIONS, long_options, short_options);

    struct rvs_train_config cfg;
    rvs_train_config_init(&cfg);
    cfg.batch = 256;
    struct rvs_context_options copt;
    rvs_context_options_init(&copt);
    const char *grid_path = NULL, *setup = NULL, *out_dir = NULL, *revision = "",
               *pred_path = NULL, *report_path = NULL;
    char params_buf[256] = "teff,logg,feh,alpha", logp_buf[256] = "teff";
    double val_frac = 0.1, time_limit = 0.0, lsf_sigma = NAN;
    int resmat_library = 0;
    const char *init_from = NULL;
    struct timespec prog_start;
    clock_gettime(CLOCK_MONOTONIC, &prog_start);
    int force = 0, resume = 0, quiet = 0, log_level = RVS_LOG_INFO;
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, short_options, long_options, NULL)) != -1) {
        switch (opt) {
        case OPT_HELP:
            print_help();
            return fflush(stdout) == 0 ? EXIT_OK : EXIT_FAIL;
        case OPT_VERSION:
            printf("rvsfit-cl-train (rvsfit-cl) %s\n"
                   "Trains rvspecfit's NN emulator (S. Koposov, MIT licence) on OpenCL.\n"
                   "This is free software: you are free to change and redistribute it.\n",
                   PACKAGE_VERSION);
            return fflush(stdout) == 0 ? EXIT_OK : EXIT_FAIL;
        case OPT_GRID: grid_path = optarg; break;
        case OPT_SETUP: setup = optarg; break;
        case OPT_OUT: out_dir = optarg; break;
        case OPT_WIDTH:
            if (parse_size(optarg, 1, &cfg.width))
                return usage_error("invalid --width '%s'", optarg);
            break;
        case OPT_NLAYERS:
            if (parse_size(optarg, 0, &cfg.nlayers) || cfg.nlayers > RVS_NN_MAX_HIDDEN)
                return usage_error("invalid --nlayers '%s' (0 to 16)", optarg);
            break;
        case OPT_NPC:
            if (parse_size(optarg, 1, &cfg.npc))
                return usage_error("invalid --npc '%s'", optarg);
            break;
        case OPT_BATCH:
            if (parse_size(optarg, 1, &cfg.batch))
                return usage_error("invalid --batch '%s'", optarg);
            break;
        case OPT_EPOCHS:
            if (parse_size(optarg, 1, &cfg.max_epochs))
                return usage_error("invalid --epochs '%s'", optarg);
            break;
        case OPT_LR:
            if (parse_double(optarg, &cfg.lr) || !(cfg.lr > 0))
                return usage_error("invalid --lr '%s'", optarg);
            break;
        case OPT_MIN_LR:
            if (parse_double(optarg, &cfg.min_lr) || cfg.min_lr < 0)
                return usage_error("invalid --min-lr '%s'", optarg);
            break;
        case OPT_PATIENCE:
            if (parse_size(optarg, 0, &cfg.patience))
                return usage_error("invalid --patience '%s'", optarg);
            break;
        case OPT_STOP_PATIENCE:
            if (parse_size(optarg, 0, &cfg.stop_patience))
                return usage_error("invalid --stop-patience '%s'", optarg);
            break;
        case OPT_PCA_INIT: cfg.pca_init = 1; break;
        case OPT_LOSS:
            if (strcmp(optarg, "l1") == 0)
                cfg.loss = RVS_TRAIN_LOSS_L1;
            else if (strcmp(optarg, "l2") == 0)
                cfg.loss = RVS_TRAIN_LOSS_L2;
            else if (strncmp(optarg, "l1l2", 4) == 0 &&
                     (optarg[4] == '\0' ||
                      (optarg[4] == ':' && parse_double(optarg + 5, &cfg.loss_delta) == 0 &&
                       cfg.loss_delta > 0)))
                cfg.loss = RVS_TRAIN_LOSS_L1L2;
            else
                return usage_error("invalid --loss '%s' (l1, l2 or l1l2[:DELTA], DELTA > 0)",
                                   optarg);
            break;
        case OPT_BATCHNORM: cfg.with_batchnorm = 1; break;
        case OPT_SEED: {
            size_t s;
            if (parse_size(optarg, 0, &s))
                return usage_error("invalid --seed '%s'", optarg);
            cfg.seed = s;
            break;
        }
        case OPT_VAL_FRAC:
            if (parse_double(optarg, &val_frac) || val_frac < 0 || val_frac >= 1)
                return usage_error("invalid --val-frac '%s' (0 <= F < 1)", optarg);
            break;
        case OPT_PARAMS:
            if (strlen(optarg) >= sizeof params_buf)
                return usage_error("--params '%s' is too long", optarg);
            strcpy(params_buf, optarg);
            break;
        case OPT_LOG_PARAMS:
            if (strlen(optarg) >= sizeof logp_buf)
                return usage_error("--log-params '%s' is too long", optarg);
            strcpy(logp_buf, optarg);
            break;
        case OPT_REVISION: revision = optarg; break;
        case OPT_FORCE: force = 1; break;
        case OPT_RESUME: resume = 1; break;
        case OPT_CHECKPOINT_EVERY:
            if (parse_size(optarg, 0, &cfg.checkpoint_every))
                return usage_error("invalid --checkpoint-every '%s'", optarg);
            break;
        case OPT_TIME_LIMIT:
            if (parse_double(optarg, &time_limit) || !(time_limit > 0))
                return usage_error("invalid --time-limit '%s' (seconds > 0)", optarg);
            break;
        case OPT_PREDICTIONS: pred_path = optarg; break;
        case OPT_LSF_SIGMA:
            if (parse_double(optarg, &lsf_sigma) || !(lsf_sigma >= 0 && lsf_sigma < 100))
                return usage_error("invalid --lsf-sigma '%s' (Angstrom, 0 <= sigma < 100; 0: "
                                   "unknown)", optarg);
            break;
        case OPT_RESMAT_LIBRARY: resmat_library = 1; break;
        case OPT_INIT_FROM: init_from = optarg; break;
        case OPT_REPORT: report_path = optarg; break;
        case OPT_DEVICE:
            if (!*optarg)
                return usage_error("--device needs a value (%s)", "see rvsfit-cl --list-devices");
            copt.device_spec = optarg;
            break;
        case OPT_FP32: copt.force_fp32 = 1; break;
        case OPT_LOG_LEVEL:
            if (rvs_log_parse_level(optarg, &log_level) != RVS_OK)
                return usage_error("invalid --log-level '%s'", optarg);
            break;
        case OPT_QUIET:
            quiet = 1;
            log_level = RVS_LOG_ERROR;
            break;
        case OPT_VERBOSE: log_level = RVS_LOG_DEBUG; break;
        case ':': return usage_error("option '%s' requires an argument", argv[optind - 1]);
        default: return usage_error("unrecognized option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (!grid_path || !setup || !out_dir)
        return usage_error("%s", "--grid, --setup and --out are required");
    if (!*setup || strchr(setup, '/'))
        return usage_error("invalid --setup '%s'", setup);
    rvs_log_set_level(log_level);

    char *names[RVS_NN_MAX_INPUTS], *lognames[RVS_NN_MAX_INPUTS];
    size_t nparam = 0, nlog = 0;
    if (split_list(params_buf, names, RVS_NN_MAX_INPUTS, &nparam))
        return usage_error("--params must list 1 to 8 names, got '%s'", params_buf);
    int log10_flags[RVS_NN_MAX_INPUTS] = {0};
    if (strcmp(logp_buf, "none") != 0) {
        if (split_list(logp_buf, lognames, RVS_NN_MAX_INPUTS, &nlog))
            return usage_error("invalid --log-params '%s'", logp_buf);
        for (size_t i = 0; i < nlog; i++) {
            size_t p = 0;
            while (p < nparam && strcasecmp(names[p], lognames[i]) != 0)
                p++;
            if (p == nparam)
                return usage_error("--log-params names '%s', which is not in --params",
                                   lognames[i]);
            log10_flags[p] = 1;
        }
    }
    struct stat st;
    if (stat(out_dir, &st) != 0 || !S_ISDIR(st.st_mode) || access(out_dir, W_OK) != 0) {
        fprintf(stderr, "rvsfit-cl-train: output directory '%s' does not exist or is not "
                        "writable; create it first\n", out_dir);
        return EXIT_FAIL;
    }

    /* the command line, for TRAINCMD */
    size_t cl_len = 1;
    for (int i = 0; i < argc; i++)
        cl_len += strlen(argv[i]) + 1;
    char *cmdline = calloc(cl_len, 1);
    if (!cmdline)
        return EXIT_FAIL;
    for (int i = 0; i < argc; i++) {
        strcat(cmdline, argv[i]);
        if (i + 1 < argc)
            strcat(cmdline, " ");
    }

    int code = EXIT_FAIL, status;
    struct rvs_train_grid grid;
    struct rvs_train_mapping map;
    struct rvs_trained_net net;
    struct rvs_context *ctx = NULL;
    struct rvs_trainer *tr = NULL;
    double *mapped = NULL;
    float *inputs = NULL, *vpred = NULL, *verr = NULL;
    size_t *train_rows = NULL, *val_rows = NULL;
    char ckpt[4096];
    memset(&net, 0, sizeof net);
    memset(&grid, 0, sizeof grid);
    snprintf(ckpt, sizeof ckpt, "%s/.rvsfit-cl-train_%s.ckpt", out_dir, setup);

    if ((status = rvs_train_grid_read(grid_path, setup, (const char *const *)names, nparam, &grid)) !=
        RVS_OK)
        goto done;
    if (grid.setup[0] && strcmp(grid.setup, setup) != 0) {
        rvs_log(RVS_LOG_ERROR, "train", "%s is a grid for setup '%s', not '%s'", grid_path,
                grid.setup, setup);
        goto done;
    }
    size_t n = grid.nspec;
    mapped = malloc(n * nparam * sizeof *mapped);
    inputs = malloc(n * nparam * sizeof *inputs);
    train_rows = malloc(n * sizeof *train_rows);
    val_rows = malloc(n * sizeof *val_rows);
    if (!mapped || !inputs || !train_rows || !val_rows)
        goto done;
    if ((status = rvs_train_mapping_compute(&grid, log10_flags, &map, mapped, inputs)) != RVS_OK)
        goto done;
    /* the validation split (rvspecfit: a uniform draw per spectrum against the fraction) */
    size_t ntrain = 0, nval = 0;
    uint64_t s = cfg.seed ^ 0xa5a5a5a5a5a5a5a5ULL;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        double u = (double)(s >> 11) * 0x1.0p-53;
        if (u < val_frac)
            val_rows[nval++] = i;
        else
            train_rows[ntrain++] = i;
    }
    if (ntrain < 2) {
        rvs_log(RVS_LOG_ERROR, "train", "only %zu training spectra; the grid is too small",
                ntrain);
        goto done;
    }
    /* periodic checkpoints follow --checkpoint-every; the one a run stopped by --time-limit
     * leaves is always written (rvs_trainer_fit) */
    cfg.checkpoint_path = ckpt;
    if ((status = rvs_context_create(&copt, &ctx)) != RVS_OK) {
        fprintf(stderr, "rvsfit-cl-train: no usable OpenCL device: %s\n", rvs_strerror(status));
        code = EXIT_DEVICE;
        goto done;
    }
    rvs_log(RVS_LOG_INFO, "train", "device %s (%s GEMM)", ctx->caps.device_name,
            rvs_gemm_backend_name(ctx->gemm_backend));
    if (cfg.batch > ntrain)
        cfg.batch = ntrain;
    if ((status = rvs_trainer_create(ctx, &cfg, nparam, grid.npix, &tr)) != RVS_OK ||
        (status = rvs_trainer_set_data(tr, n, inputs, grid.logflux, train_rows, ntrain, val_rows,
                                       nval)) != RVS_OK ||
        (status = rvs_trainer_init_weights(tr)) != RVS_OK)
        goto done;
    if (resume) {
        if ((status = rvs_trainer_checkpoint_load(tr, ckpt)) != RVS_OK)
            goto done;
    } else if (init_from) {
        if ((status = init_from_library(tr, init_from, &grid, &map)) != RVS_OK)
            goto done;
    } else if (cfg.pca_init) {
        double loss0;
        if ((status = rvs_trainer_pca_init(tr, &loss0)) != RVS_OK)
            goto done;
        rvs_log(RVS_LOG_INFO, "train", "PCA initialisation: reconstruction loss (L1 / spread0) %.3g", loss0);
    }
    if (time_limit > 0) {
        /* what is left of the run's wall time, less a reserve for the final evaluation and
         * writing the library (a few seconds, more for big grids) */
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        double used = (double)(t.tv_sec - prog_start.tv_sec) +
                      1e-9 * (double)(t.tv_nsec - prog_start.tv_nsec);
        double reserve = 5.0 + 2e-8 * (double)grid.nspec * (double)grid.npix;
        cfg.time_limit = time_limit - used - reserve;
        if (cfg.time_limit < 1.0)
            cfg.time_limit = 1.0; /* at least one epoch */
        rvs_trainer_set_time_limit(tr, cfg.time_limit);
        rvs_log(RVS_LOG_INFO, "train", "time limit: %.0f s of training left", cfg.time_limit);
    }
    struct report_state rs = {quiet};
    double final_train = NAN, final_val = NAN;
    size_t epochs = 0;
    if ((status = rvs_trainer_fit(tr, report_epoch, &rs, &final_train, &final_val, &epochs)) !=
        RVS_OK)
        goto done;
    if ((status = rvs_trainer_export(tr, &net)) != RVS_OK)
        goto done;

    /* held-out emulation error (the training spectra when nothing is held out) */
    const size_t *erows = nval ? val_rows : train_rows;
    size_t ecount = nval ? nval : ntrain;
    if (!nval)
        rvs_log(RVS_LOG_WARNING, "train", "no validation spectra: the emulation error below is "
                "measured on the training spectra");
    vpred = malloc(ecount * grid.npix * sizeof *vpred);
    verr = malloc(ecount * grid.npix * sizeof *verr);
    double eval_loss, med = NAN, p99 = NAN, dev = NAN;
    if (!vpred || !verr ||
        (status = rvs_trainer_evaluate(tr, erows, ecount, &eval_loss, vpred)) != RVS_OK ||
        (status = emulation_error(ctx, &net, &map, &grid, erows, ecount, vpred, verr, &med,
                                  &p99, &dev)) != RVS_OK)
        goto done;
    if (resume)
        printf("final: %zu epochs (%zu in this run), train loss %.6f, validation loss %.6f\n",
               rvs_trainer_epochs_done(tr), epochs, final_train, final_val);
    else
        printf("final: %zu epochs, train loss %.6f, validation loss %.6f\n", epochs, final_train,
               final_val);
    printf("emulation error on %zu %s spectra, |dflux|/flux per pixel: median %.4f%%, 99th "
           "percentile %.4f%%\n", ecount, nval ? "held-out" : "training", 100 * med, 100 * p99);
    rvs_log(RVS_LOG_INFO, "train", "inference path vs trainer forward: max |d ln flux| = %.3g",
            dev);
    if ((status = error_report(report_path, quiet, &grid, erows, ecount, verr,
                               nval ? "held-out" : "training")) != RVS_OK)
        goto done;
    if (pred_path && (status = write_predictions(pred_path, &grid, erows, ecount, vpred)) !=
                         RVS_OK)
        goto done;
    struct rvs_train_provenance prov = {
        .grid_vdw = grid.vdw_mode[0] ? grid.vdw_mode : NULL,
        .grid_sampling = grid.sampling_broadening,
        .setup = setup, .gridname = grid.gridname, .traincmd = cmdline, .librev = revision,
        .train_loss = final_train, .val_loss = nval ? final_val : NAN,
        .err_median = nval ? med : NAN, .err_p99 = nval ? p99 : NAN, .ntrain = ntrain,
        .nval = nval, .epochs = rvs_trainer_epochs_done(tr),
        .lsf_sigma = isfinite(lsf_sigma) ? (lsf_sigma > 0 ? lsf_sigma : NAN) : grid.lsf_sigma,
        .resolution_matrix = resmat_library};
    if (!isfinite(prov.lsf_sigma))
        rvs_log(RVS_LOG_WARNING, "train", "the LSF of the grid's spectra is not known (no FWHM or "
                "LSFSIG keyword in the grid, no --lsf-sigma): the library records it as unknown, "
                "and the resolution-matrix fit will have to be told lsf_sigma0_angstrom");
    if (resmat_library && !isfinite(prov.lsf_sigma)) {
        rvs_log(RVS_LOG_ERROR, "train", "--resolution-matrix-library needs the templates' LSF "
                "(--lsf-sigma or the grid's FWHM keyword)");
        goto done;
    }
    if ((status = rvs_train_library_write(out_dir, &grid, &map, mapped, &net, &prov, force)) !=
        RVS_OK)
        goto done;
    if (rvs_trainer_resumable(tr))
        rvs_log(RVS_LOG_INFO, "train", "training stopped at the time limit, not finished: "
                "checkpoint %s kept; the same command with --resume continues it", ckpt);
    else
        remove(ckpt);
    printf("wrote %s/rvsfit_%s.fits\n", out_dir, setup);
    code = EXIT_OK;
done:
    if (code != EXIT_OK && code != EXIT_DEVICE)
        fprintf(stderr, "rvsfit-cl-train: training for setup '%s' failed; see the messages "
                        "above\n", setup);
    rvs_trained_net_free(&net);
    rvs_trainer_destroy(&tr);
    rvs_context_destroy(&ctx);
    rvs_train_grid_free(&grid);
    free(mapped);
    free(inputs);
    free(train_rows);
    free(val_rows);
    free(vpred);
    free(verr);
    free(cmdline);
    if (fflush(stdout) != 0 && code == EXIT_OK)
        code = EXIT_FAIL;
    return code;
}
