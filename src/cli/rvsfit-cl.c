/* rvsfit-cl.c: the command-line program, a replacement for rvspecfit's rvs_desi_fit
 * (py/rvspecfit/desi/desi_fit.py: main, proc_many). Options come from one table (names,
 * arguments, group, help); getopt_long's table and --help are both generated from it.
 * rvs_desi_fit spells options with underscores, so "--log_level" is accepted as "--log-level".
 *
 * Settings are merged in one place (build_settings): command line over the YAML configuration
 * (--config, else ./config.yaml when present, as rvspecfit's read_config) over rvspecfit's
 * defaults. --show-config prints the result with where each value came from. */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <regex.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "options.h"
#ifdef HAVE_MPI
#include "mpi_ranks.h"
#endif
#include "rvsfit.h"
#include "rvsfit/config.h"
#include "rvsfit/fit.h"
#include "rvsfit/run.h"

/* Exit codes (also in --help and the man page). */
enum rvs_exit {
    RVS_EXIT_OK = 0,      /* everything asked for was done */
    RVS_EXIT_FAILURE = 1, /* a file or target could not be processed, or an output not written */
    RVS_EXIT_USAGE = 2,   /* bad command line or configuration */
    RVS_EXIT_DEVICE = 3   /* no usable OpenCL device, kernel build or self-test failure */
};

enum option_id {
    OPT_HELP = 'h',
    OPT_VERSION = 'V',
    OPT_QUIET = 'q',
    OPT_VERBOSE = 'v',
    OPT_LIST_DEVICES = 256,
    OPT_DEVICE,
    OPT_SELF_TEST,
    OPT_FP32,
    OPT_LOG_LEVEL,
    OPT_LOG,
    OPT_INPUT_FILE_FROM,
    OPT_QUEUE_FILE,
    OPT_OUTPUT_DIR,
    OPT_OUTPUT_TAB_PREFIX,
    OPT_OUTPUT_MOD_PREFIX,
    OPT_NO_SUBDIRS,
    OPT_SKIPEXISTING,
    OPT_PROCESS_STATUS_FILE,
    OPT_THROW_EXCEPTIONS,
    OPT_CONFIG,
    OPT_TEMPLATE_LIB,
    OPT_SHOW_CONFIG,
    OPT_TARGETID,
    OPT_TARGETID_FILE_FROM,
    OPT_MINSN,
    OPT_MINEXPID,
    OPT_MAXEXPID,
    OPT_OBJTYPES,
    OPT_ZBEST_SELECT,
    OPT_ZBEST_INCLUDE,
    OPT_FITARM,
    OPT_NPOLY,
    OPT_PARAM_INIT,
    OPT_RESOLUTION_MATRIX,
    OPT_NO_RESOLUTION_MATRIX,
    OPT_NO_CCF_CONTINUUM_NORMALIZE,
    OPT_BATCH_SIZE,
    OPT_CLIP_SIGMA,
    OPT_OPTIMIZER,
    OPT_RVSPECFIT_LIKELIHOOD,
    OPT_NO_OVERLAP,
    OPT_PROFILE,
    OPT_DOPLOT,
    OPT_FIGURE_DIR,
    OPT_FIGURE_PREFIX,
    OPT_NTHREADS,
    OPT_OVERWRITE,
    OPT_MPI
};


static const char G_INPUT[] = "Input and output";
static const char G_CONFIG[] = "Configuration";
static const char G_SELECT[] = "Target selection";
static const char G_FIT[] = "Fit";
static const char G_DEVICE[] = "Device and speed";
static const char G_FIGURES[] = "Figures";
static const char G_MSG[] = "Messages";
static const char G_COMPAT[] = "Accepted for rvs_desi_fit compatibility";
static const char G_INFO[] = "Information";

static const struct rvs_cli_option cli_options[] = {
    {"input-file-from", required_argument, OPT_INPUT_FILE_FROM, "LIST", "read the input file names from LIST (one a line) instead of the arguments", G_INPUT},
    {"queue-file", optional_argument, OPT_QUEUE_FILE, "LIST", "treat the --input-file-from list (or LIST) as a queue shared by several processes: each "
     "takes the first name and removes it, under a lock", G_INPUT},
    {"output-dir", required_argument, OPT_OUTPUT_DIR, "DIR", "where outputs go (default ./), in DIR/<last two directories of the input>/", G_INPUT},
    {"output-tab-prefix", required_argument, OPT_OUTPUT_TAB_PREFIX, "PREFIX", "table file names: PREFIX_<input name> (default rvtab)", G_INPUT},
    {"output-mod-prefix", required_argument, OPT_OUTPUT_MOD_PREFIX, "PREFIX", "model file names: PREFIX_<input name> (default rvmod)", G_INPUT},
    {"no-subdirs", no_argument, OPT_NO_SUBDIRS, NULL, "write outputs directly in --output-dir", G_INPUT},
    {"skipexisting", no_argument, OPT_SKIPEXISTING, NULL, "skip an input whose two outputs exist, are complete and come from one run on the input as it is (status EXISTING)", G_INPUT},
    {"process-status-file", required_argument, OPT_PROCESS_STATUS_FILE, "FILE", "emptied at the start, then one line per input: NAME SUCCESS|FAILURE|EXISTING NOBJ SECONDS", G_INPUT},
    {"throw-exceptions", no_argument, OPT_THROW_EXCEPTIONS, NULL, "stop at the first input that fails instead of recording it and going on", G_INPUT},
    {"config", required_argument, OPT_CONFIG, "FILE", "rvspecfit YAML configuration (default ./config.yaml when it exists)", G_CONFIG},
    {"template-lib", required_argument, OPT_TEMPLATE_LIB, "DIR", "template library directory (rvsfit_desi_{b,r,z}.fits); overrides template_lib of the "
     "configuration (default: the installed default library)", G_CONFIG},
    {"show-config", no_argument, OPT_SHOW_CONFIG, NULL, "print the settings in effect and where each comes from, and exit", G_CONFIG},
    {"targetid", required_argument, OPT_TARGETID, "ID", "fit only this TARGETID", G_SELECT},
    {"targetid-file-from", required_argument, OPT_TARGETID_FILE_FROM, "FILE", "fit only the TARGETIDs listed in FILE", G_SELECT},
    {"minsn", required_argument, OPT_MINSN, "SN", "fit only spectra whose best arm has S/N above SN (default -1e9)", G_SELECT},
    {"minexpid", required_argument, OPT_MINEXPID, "N", "fit only exposures with EXPID > N (files with an EXPID column)", G_SELECT},
    {"maxexpid", required_argument, OPT_MAXEXPID, "N", "fit only exposures with EXPID <= N", G_SELECT},
    {"objtypes", required_argument, OPT_OBJTYPES, "LIST", "comma-separated target-bit patterns, e.g. MWS_ANY,STD_*", G_SELECT},
    {"zbest-select", no_argument, OPT_ZBEST_SELECT, NULL, "also fit what redrock calls a star or |z| < 1500 km/s (redrock-*.fits beside the input)", G_SELECT},
    {"zbest-include", no_argument, OPT_ZBEST_INCLUDE, NULL, "copy redrock's Z, SPECTYPE, SUBTYPE into RR_* columns without selecting on them", G_SELECT},
    {"fitarm", required_argument, OPT_FITARM, "ARMS", "comma-separated arms to fit: b, r, z (default all)", G_FIT},
    {"npoly", required_argument, OPT_NPOLY, "N", "continuum basis functions per arm (default 10)", G_FIT},
    {"param-init", required_argument, OPT_PARAM_INIT, "METHOD", "starting point: CCF (default) or bruteforce", G_FIT},
    {"resolution-matrix", no_argument, OPT_RESOLUTION_MATRIX, NULL, "convolve models with the files' resolution matrices (the default for a library made for them, LSFRMAT = T)", G_FIT},
    {"no-resolution-matrix", no_argument, OPT_NO_RESOLUTION_MATRIX, NULL, "do not (the default for other libraries, as rvspecfit)", G_FIT},
    {"clip-sigma", required_argument, OPT_CLIP_SIGMA, "K", "leave out pixels whose residual at the optimum exceeds K robust sigmas (cosmics the mask missed) and refit (default 5; 0: rvspecfit's likelihood, nothing left out)", G_FIT},
    {"optimizer", required_argument, OPT_OPTIMIZER, "KIND", "derivatives of the optimizer: 'exact' (the gradient and Gauss-Newton Hessian through the model, one evaluation per step; default) or 'stencil' (finite differences)", G_FIT},
    {"rvspecfit-likelihood", no_argument, OPT_RVSPECFIT_LIKELIHOOD, NULL, "rvspecfit's exact likelihood, for comparisons: no outlier clipping (--clip-sigma 0) and a flat prior on the continuum coefficients, which depends on the templates' flux scale", G_FIT},
    {"no-ccf-continuum-normalize", no_argument, OPT_NO_CCF_CONTINUUM_NORMALIZE, NULL, "do not divide by the continuum before the CCF", G_FIT},
    {"device", required_argument, OPT_DEVICE, "SPEC", "OpenCL device: index, P:D, name substring, cpu or gpu (default: $RVSFIT_CL_DEVICE, else "
     "the first GPU, else the first CPU)", G_DEVICE},
    {"list-devices", no_argument, OPT_LIST_DEVICES, NULL, "list OpenCL devices and exit", G_DEVICE},
    {"self-test", no_argument, OPT_SELF_TEST, NULL, "build the kernels on the device, run the known-answer self-test, report and exit", G_DEVICE},
    {"fp32", no_argument, OPT_FP32, NULL, "accumulate in compensated fp32 even where the device has fp64 (also RVSFIT_CL_FP32=1)", G_DEVICE},
    {"batch-size", required_argument, OPT_BATCH_SIZE, "N", "at most N spectra per device batch (default: as many as device memory allows)", G_DEVICE},
    {"no-overlap", no_argument, OPT_NO_OVERLAP, NULL, "read and prepare each batch only after the previous fit (default: on a host thread, "
     "during it)", G_DEVICE},
    {"profile", no_argument, OPT_PROFILE, NULL, "print the time of every stage, host and device, the device work (commands, transfers, "
     "memory) and the host memory at the end", G_DEVICE},
    {"doplot", no_argument, OPT_DOPLOT, NULL, "draw a PNG of every fitted target (data, model, residual, velocity posterior) and a "
     "summary of each input (Kiel diagram, VRAD_ERR against S/N, RVS_WARN counts), on host threads while the device fits", G_FIGURES},
    {"figure-dir", required_argument, OPT_FIGURE_DIR, "DIR", "where figures go (default ./), in DIR/<last two directories of the input>/ unless "
     "--no-subdirs", G_FIGURES},
    {"figure-prefix", required_argument, OPT_FIGURE_PREFIX, "PREFIX", "figure names: PREFIX_<BRICKID>_<TARGETID>_<row>.png and "
     "PREFIX_summary_<input name>.png (default fig)", G_FIGURES},
    {"log-level", required_argument, OPT_LOG_LEVEL, "LEVEL", "DEBUG, INFO, WARNING (default), ERROR or CRITICAL", G_MSG},
    {"log", required_argument, OPT_LOG, "FILE", "append messages to FILE instead of stderr", G_MSG},
    {"quiet", no_argument, OPT_QUIET, NULL, "only errors (same as --log-level ERROR)", G_MSG},
    {"verbose", no_argument, OPT_VERBOSE, NULL, "more messages (-v INFO, -vv DEBUG)", G_MSG},
    {"nthreads", required_argument, OPT_NTHREADS, "N", "accepted and ignored: the device does the parallel work (use --queue-file for several "
     "processes)", G_COMPAT},
    {"overwrite", required_argument, OPT_OVERWRITE, "X", "accepted and ignored, as in rvs_desi_fit (outputs are always replaced)", G_COMPAT},
    {"mpi", no_argument, OPT_MPI, NULL, "run as one of the ranks of mpirun/srun: one device per rank (node-local rank "
     "modulo the node's devices of the default kind, or an entry of a --device list such as 0,1,2,3, or of "
     "$RVSFIT_CL_MPI_DEVICES), inputs dealt dynamically; needs a build with MPI", G_DEVICE},
    {"help", no_argument, OPT_HELP, NULL, "show this help and exit", G_INFO},
    {"version", no_argument, OPT_VERSION, NULL, "show the version and exit", G_INFO},
};
enum { NUM_OPTIONS = sizeof cli_options / sizeof cli_options[0] };

static void print_usage_line(FILE *out)
{
    fprintf(out, "Usage: rvsfit-cl [OPTION]... FILE...\n"
                 "  or:  rvsfit-cl [OPTION]... --input-file-from=LIST [--queue-file]\n");
}

/* Prints text from column `indent` (the cursor is there), wrapped at word boundaries to `width`
 * columns, continuation lines indented. */
static void print_wrapped(const char *text, int indent, int width)
{
    int col = indent;
    const char *p = text;
    while (*p) {
        const char *word_end = p;
        while (*word_end && *word_end != ' ')
            word_end++;
        int len = (int)(word_end - p);
        if (col > indent && col + 1 + len > width) {
            printf("\n%*s", indent, "");
            col = indent;
        } else if (col > indent) {
            putchar(' ');
            col++;
        }
        printf("%.*s", len, p);
        col += len;
        p = word_end;
        while (*p == ' ')
            p++;
    }
    putchar('\n');
}

static void print_help(void)
{
    print_usage_line(stdout);
    printf("Measure radial velocities and stellar parameters of DESI spectra\n"
           "(coadd-*.fits, spectra-*.fits) by fitting a neural-network emulator of stellar\n"
           "spectra, batched, on an OpenCL device; writes rvspecfit's rvtab_*.fits and\n"
           "rvmod_*.fits.\n");
    const char *group = NULL;
    for (size_t i = 0; i < NUM_OPTIONS; i++) {
        char left[64];
        const struct rvs_cli_option *o = &cli_options[i];
        if (o->group != group) {
            group = o->group;
            printf("\n%s:\n", group);
        }
        rvs_cli_option_label(o, left, sizeof left);
        if (strlen(left) > 28)
            printf("  %s\n%31s", left, "");
        else
            printf("  %-28s ", left);
        print_wrapped(o->help, 31, 79);
    }
    printf("\nOption names may also be written with underscores (--log_level), as in\n"
           "rvspecfit's rvs_desi_fit. Settings: command line over --config over defaults.\n\n"
           "Environment:\n"
           "  RVSFIT_CL_DEVICE       default device (same forms as --device)\n"
           "  RVSFIT_CL_DATADIR      data directory (default/ library, desitarget/ tables)\n"
           "  RVSFIT_CL_KERNEL_DIR   .cl/.clh files there override the embedded kernels\n"
           "  RVSFIT_CL_CACHE=0      do not use the program-binary cache\n"
           "  XDG_CACHE_HOME         cache location (default ~/.cache; files in rvsfit-cl/)\n"
           "  RVSFIT_CL_FP32=1       same as --fp32\n"
           "  RVSFIT_CL_GEMM         force the GEMM back end: clblast or openblas\n"
           "  RVSFIT_CL_FIGURE_THREADS  threads drawing --doplot's figures (default: the\n"
           "                         online cores less one, at most 8)\n\n"
           "Exit status:\n"
           "  0  success\n"
           "  1  an input could not be processed or an output not written\n"
           "  2  invalid command line or configuration\n"
           "  3  no usable OpenCL device, kernel build or self-test failure, device error\n\n"
           "Report bugs to: %s\n",
           PACKAGE_BUGREPORT);
}

static void print_version(void)
{
    const char *figures = rvs_figures_backend();
    printf("rvsfit-cl %s\n"
           "figures (--doplot): %s\n"
           "A batched OpenCL port of the DESI path of rvspecfit (S. Koposov, MIT licence).\n"
           "This is free software: you are free to change and redistribute it.\n",
           PACKAGE_VERSION, figures ? figures : "not built (configured without cairo)");
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "rvsfit-cl: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    print_usage_line(stderr);
    fprintf(stderr, "Try 'rvsfit-cl --help' for more information.\n");
    return RVS_EXIT_USAGE;
}

/* A bad option value: the message, then where to look. */
static int bad_value(const char *fmt, ...) RVS_PRINTF_LIKE(1, 2);
static int bad_value(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "rvsfit-cl: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'rvsfit-cl --help' for more information.\n");
    return RVS_EXIT_USAGE;
}


/* ------------------------------------------------------------------ option values */

static int parse_ll(const char *option, const char *text, long long min, long long max,
                    long long *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (end == text || *end || errno == ERANGE || v < min || v > max)
        return bad_value("invalid %s '%s': expected an integer from %lld to %lld", option, text,
                         min, max);
    *out = v;
    return RVS_EXIT_OK;
}

static int parse_double(const char *option, const char *text, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end || errno == ERANGE || !isfinite(v))
        return bad_value("invalid %s '%s': expected a finite number", option, text);
    *out = v;
    return RVS_EXIT_OK;
}

/* Where a setting came from, for --show-config. */
enum origin { FROM_DEFAULT, FROM_CONFIG, FROM_COMMAND_LINE };
static const char *const origin_names[] = {"default", "config", "command line"};

struct settings {
    /* inputs */
    char **files;
    size_t nfiles;
    const char *input_file_from;
    int queue;
    /* outputs */
    const char *output_dir, *tab_prefix, *mod_prefix;
    int no_subdirs, skip_existing, throw_exceptions;
    const char *status_file;
    /* configuration */
    const char *config_arg;
    const char *template_lib_arg;
    int show_config;
    /* selection */
    int have_targetid;
    long long targetid;
    const char *targetid_file;
    int have_minsn, have_minexpid, have_maxexpid;
    double minsn;
    long long minexpid, maxexpid;
    const char *objtypes;
    int zbest_select, zbest_include;
    /* fit */
    const char *fitarm;
    unsigned arms;
    long long npoly;
    int have_npoly;
    enum rvs_fit_init param_init;
    int resolution_matrix;
    int no_ccf_continuum_normalize;
    /* device and run */
    struct rvs_context_options ctx;
    long long batch_size;
    double clip_sigma;
    int exact_derivatives;
    int rvspecfit_likelihood;
    int no_overlap, profile, list_devices, self_test, mpi;
    /* messages */
    int log_level, verbosity;
    const char *log_file;
    /* compatibility */
    int doplot;
    const char *figure_dir, *figure_prefix;
};

static void settings_init(struct settings *s)
{
    memset(s, 0, sizeof *s);
    s->output_dir = "./";
    s->tab_prefix = "rvtab";
    s->mod_prefix = "rvmod";
    s->arms = RVS_DESI_ARMS_ALL;
    s->npoly = 10;
    s->resolution_matrix = -1; /* the library decides (LSFRMAT) */
    s->clip_sigma = 5;
    s->exact_derivatives = 1;
    s->param_init = RVS_FIT_INIT_CCF;
    s->minsn = -1e9;
    s->log_level = -1;
    rvs_context_options_init(&s->ctx);
}

/* Checks a prefix: not empty, no '/'. */
static int check_prefix(const char *option, const char *value)
{
    if (!*value || strchr(value, '/'))
        return bad_value("invalid %s '%s': a non-empty name without '/'", option, value);
    return RVS_EXIT_OK;
}

/* A pattern list that matches no bit name of any DESI survey's desi_mask (main, SV1-3, CMX) is a
 * usage error found here, before any file is read (rvs_targetmask_match would refuse it in
 * every file). Where the bit tables cannot be read, the per-file check still applies. */
static int check_objtypes_known(const char *list)
{
    static const char *const surveys[] = {"main", "sv1", "sv2", "sv3", "cmx"};
    int loaded = 0, matched = 0;
    char *copy = strdup(list);
    if (!copy)
        return RVS_EXIT_FAILURE;
    for (size_t k = 0; k < sizeof surveys / sizeof surveys[0] && !matched; k++) {
        struct rvs_targetmask *mask = NULL;
        int level = rvs_log_get_level();
        rvs_log_set_level(RVS_LOG_CRITICAL); /* a missing table is not this option's problem */
        int rc = rvs_targetmask_load(surveys[k], NULL, &mask);
        rvs_log_set_level(level);
        if (rc != RVS_OK)
            continue;
        loaded++;
        strcpy(copy, list);
        char *save = NULL;
        for (char *tok = strtok_r(copy, ",", &save); tok && !matched;
             tok = strtok_r(NULL, ",", &save)) {
            /* anchored at the start, as Python's re.match and rvs_targetmask_match */
            size_t n = strlen(tok) + 5;
            char *anchored = malloc(n);
            regex_t re;
            if (!anchored)
                break;
            snprintf(anchored, n, "^(%s)", tok);
            if (regcomp(&re, anchored, REG_EXTENDED | REG_NOSUB) == 0) {
                for (size_t i = 0; i < rvs_targetmask_count(mask) && !matched; i++) {
                    int bit;
                    matched = regexec(&re, rvs_targetmask_entry(mask, i, &bit), 0, NULL, 0) == 0;
                }
                regfree(&re);
            }
            free(anchored);
        }
        rvs_targetmask_destroy(&mask);
    }
    free(copy);
    if (loaded && !matched)
        return bad_value("--objtypes '%s' matches no target bit of DESI's desi_mask (main, SV1-3, "
                         "CMX; e.g. MWS_ANY, STD_FAINT, MWS_BROAD): check the names",
                         list);
    return RVS_EXIT_OK;
}

/* --objtypes patterns are POSIX extended regular expressions (Python's re for these simple
 * cases); a syntax error is reported once here instead of failing every file. */
static int check_objtypes(const char *list)
{
    char *copy = strdup(list);
    if (!copy)
        return RVS_EXIT_FAILURE;
    int code = RVS_EXIT_OK;
    char *save = NULL;
    int count = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        regex_t re;
        int rc = regcomp(&re, tok, REG_EXTENDED | REG_NOSUB);
        if (rc != 0) {
            char why[128];
            regerror(rc, &re, why, sizeof why);
            code = bad_value("invalid --objtypes pattern '%s': %s", tok, why);
            break;
        }
        regfree(&re);
        count++;
    }
    if (code == RVS_EXIT_OK && count == 0) {
        code = bad_value("--objtypes needs at least one pattern, e.g. MWS_ANY,STD_*");
    }
    free(copy);
    if (code == RVS_EXIT_OK)
        code = check_objtypes_known(list);
    return code;
}

/* Handles one parsed option; RVS_EXIT_OK or a usage error (message printed). */
static int apply_option(struct settings *s, int opt, const char *arg, int *stop_ok)
{
    long long v;
    switch (opt) {
    case OPT_HELP:
        print_help();
        *stop_ok = 1;
        return RVS_EXIT_OK;
    case OPT_VERSION:
        print_version();
        *stop_ok = 1;
        return RVS_EXIT_OK;
    case OPT_LIST_DEVICES:
        s->list_devices = 1;
        return RVS_EXIT_OK;
    case OPT_SELF_TEST:
        s->self_test = 1;
        return RVS_EXIT_OK;
    case OPT_DEVICE:
        if (!*arg)
            return usage_error("--device needs a value (%s)", "see --list-devices");
        s->ctx.device_spec = arg;
        return RVS_EXIT_OK;
    case OPT_FP32:
        s->ctx.force_fp32 = 1;
        return RVS_EXIT_OK;
    case OPT_LOG_LEVEL:
        if (rvs_log_parse_level(arg, &s->log_level) != RVS_OK)
            return usage_error("invalid --log-level '%s' (DEBUG, INFO, WARNING, ERROR, "
                               "CRITICAL)",
                               arg);
        return RVS_EXIT_OK;
    case OPT_LOG:
        if (!*arg)
            return usage_error("--log needs a file name%s", "");
        s->log_file = arg;
        return RVS_EXIT_OK;
    case OPT_QUIET:
        s->log_level = RVS_LOG_ERROR;
        return RVS_EXIT_OK;
    case OPT_VERBOSE:
        s->verbosity++;
        return RVS_EXIT_OK;
    case OPT_INPUT_FILE_FROM:
        if (!*arg)
            return usage_error("--input-file-from needs a file name%s", "");
        s->input_file_from = arg;
        return RVS_EXIT_OK;
    case OPT_QUEUE_FILE:
        s->queue = 1;
        if (arg) {
            if (!*arg)
                return usage_error("--queue-file=LIST needs a file name%s", "");
            if (s->input_file_from && strcmp(s->input_file_from, arg) != 0)
                return usage_error("--queue-file=%s names another list than --input-file-from",
                                   arg);
            s->input_file_from = arg;
        }
        return RVS_EXIT_OK;
    case OPT_OUTPUT_DIR:
        if (!*arg)
            return usage_error("--output-dir needs a directory name%s", "");
        s->output_dir = arg;
        return RVS_EXIT_OK;
    case OPT_OUTPUT_TAB_PREFIX:
        s->tab_prefix = arg;
        return check_prefix("--output-tab-prefix", arg);
    case OPT_OUTPUT_MOD_PREFIX:
        s->mod_prefix = arg;
        return check_prefix("--output-mod-prefix", arg);
    case OPT_NO_SUBDIRS:
        s->no_subdirs = 1;
        return RVS_EXIT_OK;
    case OPT_SKIPEXISTING:
        s->skip_existing = 1;
        return RVS_EXIT_OK;
    case OPT_PROCESS_STATUS_FILE:
        if (!*arg)
            return usage_error("--process-status-file needs a file name%s", "");
        s->status_file = arg;
        return RVS_EXIT_OK;
    case OPT_THROW_EXCEPTIONS:
        s->throw_exceptions = 1;
        return RVS_EXIT_OK;
    case OPT_CONFIG:
        if (!*arg)
            return usage_error("--config needs a file name%s", "");
        s->config_arg = arg;
        return RVS_EXIT_OK;
    case OPT_TEMPLATE_LIB:
        if (!*arg)
            return usage_error("--template-lib needs a directory name%s", "");
        s->template_lib_arg = arg;
        return RVS_EXIT_OK;
    case OPT_SHOW_CONFIG:
        s->show_config = 1;
        return RVS_EXIT_OK;
    case OPT_TARGETID:
        if (parse_ll("--targetid", arg, INT64_MIN, INT64_MAX, &s->targetid) != RVS_EXIT_OK)
            return RVS_EXIT_USAGE;
        s->have_targetid = 1;
        return RVS_EXIT_OK;
    case OPT_TARGETID_FILE_FROM:
        if (!*arg)
            return usage_error("--targetid-file-from needs a file name%s", "");
        s->targetid_file = arg;
        return RVS_EXIT_OK;
    case OPT_MINSN:
        s->have_minsn = 1;
        return parse_double("--minsn", arg, &s->minsn);
    case OPT_MINEXPID:
        s->have_minexpid = 1;
        return parse_ll("--minexpid", arg, LLONG_MIN, LLONG_MAX, &s->minexpid);
    case OPT_MAXEXPID:
        s->have_maxexpid = 1;
        return parse_ll("--maxexpid", arg, LLONG_MIN, LLONG_MAX, &s->maxexpid);
    case OPT_OBJTYPES:
        s->objtypes = arg;
        return check_objtypes(arg);
    case OPT_ZBEST_SELECT:
        s->zbest_select = 1;
        return RVS_EXIT_OK;
    case OPT_ZBEST_INCLUDE:
        s->zbest_include = 1;
        return RVS_EXIT_OK;
    case OPT_FITARM:
        s->fitarm = arg;
        if (rvs_desi_parse_arms(arg, &s->arms) != RVS_OK)
            return usage_error("invalid --fitarm '%s': use a comma-separated list of b, r, z",
                               arg);
        return RVS_EXIT_OK;
    case OPT_NPOLY:
        s->have_npoly = 1;
        return parse_ll("--npoly", arg, 1, 100, &s->npoly);
    case OPT_PARAM_INIT:
        if (strcasecmp(arg, "CCF") == 0)
            s->param_init = RVS_FIT_INIT_CCF;
        else if (strcasecmp(arg, "bruteforce") == 0)
            s->param_init = RVS_FIT_INIT_BRUTEFORCE;
        else
            return usage_error("invalid --param-init '%s': use CCF or bruteforce", arg);
        return RVS_EXIT_OK;
    case OPT_RESOLUTION_MATRIX:
        s->resolution_matrix = 1;
        return RVS_EXIT_OK;
    case OPT_NO_RESOLUTION_MATRIX:
        s->resolution_matrix = 0;
        return RVS_EXIT_OK;
    case OPT_NO_CCF_CONTINUUM_NORMALIZE:
        s->no_ccf_continuum_normalize = 1;
        return RVS_EXIT_OK;
    case OPT_CLIP_SIGMA:
        if (parse_double("--clip-sigma", arg, &s->clip_sigma) != RVS_EXIT_OK)
            return RVS_EXIT_USAGE;
        if (!(s->clip_sigma == 0 || (s->clip_sigma >= 2 && s->clip_sigma <= 1000)))
            return usage_error("invalid --clip-sigma '%s': 0 (no clipping) or 2..1000", arg);
        return RVS_EXIT_OK;
    case OPT_OPTIMIZER:
        if (strcmp(arg, "exact") == 0)
            s->exact_derivatives = 1;
        else if (strcmp(arg, "stencil") == 0)
            s->exact_derivatives = 0;
        else
            return usage_error("invalid --optimizer '%s': 'stencil' or 'exact'", arg);
        return RVS_EXIT_OK;
    case OPT_RVSPECFIT_LIKELIHOOD:
        s->rvspecfit_likelihood = 1;
        return RVS_EXIT_OK;
    case OPT_BATCH_SIZE:
        return parse_ll("--batch-size", arg, 1, 100000000, &s->batch_size);
    case OPT_NO_OVERLAP:
        s->no_overlap = 1;
        return RVS_EXIT_OK;
    case OPT_PROFILE:
        s->profile = 1;
        return RVS_EXIT_OK;
    case OPT_DOPLOT:
        s->doplot = 1;
        return RVS_EXIT_OK;
    case OPT_FIGURE_DIR:
        if (!*arg)
            return usage_error("--figure-dir needs a directory name%s", "");
        s->figure_dir = arg;
        return RVS_EXIT_OK;
    case OPT_FIGURE_PREFIX:
        s->figure_prefix = arg;
        return check_prefix("--figure-prefix", arg);
    case OPT_NTHREADS:
        if (parse_ll("--nthreads", arg, 1, INT_MAX, &v) != RVS_EXIT_OK)
            return RVS_EXIT_USAGE;
        if (v > 1)
            rvs_log(RVS_LOG_WARNING, "cli",
                    "--nthreads %lld ignored: the fits run in batches on the device; to use "
                    "several devices run one process per device sharing a --queue-file",
                    v);
        return RVS_EXIT_OK;
    case OPT_OVERWRITE:
        rvs_log(RVS_LOG_WARNING, "cli",
                "--overwrite is meaningless (as in rvs_desi_fit): outputs are always replaced; "
                "use --skipexisting to keep them");
        return RVS_EXIT_OK;
    case OPT_MPI:
#ifdef HAVE_MPI
        s->mpi = 1;
        return RVS_EXIT_OK;
#else
        return usage_error("--mpi: this rvsfit-cl was built without MPI: %s",
                           "install the Debian packages libopenmpi-dev and openmpi-bin "
                           "(tools/install-deps does), run ./configure and make again; or run "
                           "several rvsfit-cl processes sharing --queue-file=LIST");
#endif
    default:
        return RVS_EXIT_USAGE;
    }
}

/* Cross-option checks, after all options are read. */
static int check_settings(const struct settings *s)
{
    if (s->have_targetid && s->targetid_file)
        return usage_error("give --targetid or --targetid-file-from, not both%s", "");
    if (s->have_minexpid && s->have_maxexpid && s->minexpid >= s->maxexpid)
        return usage_error("--minexpid must be below --maxexpid (EXPID > min and <= max)%s",
                           "");
    if (strcmp(s->tab_prefix, s->mod_prefix) == 0)
        return usage_error("--output-tab-prefix and --output-mod-prefix are both '%s'; the "
                           "two outputs need different names",
                           s->tab_prefix);
    if (s->list_devices || s->self_test || s->show_config)
        return RVS_EXIT_OK;
    if (s->nfiles > 0 && s->input_file_from)
        return usage_error("give input files as arguments or with --input-file-from, not "
                           "both%s",
                           "");
    if (s->queue && !s->input_file_from)
        return usage_error("--queue-file needs the list: --input-file-from=LIST or "
                           "--queue-file=LIST%s",
                           "");
    if (s->nfiles == 0 && !s->input_file_from)
        return usage_error("%s", "no input files");
    return RVS_EXIT_OK;
}

/* ------------------------------------------------------------------ configuration */

/* Everything the run needs once options and the YAML file are merged. */
struct effective {
    struct rvs_config config;
    const char *config_source; /* "--config", "./config.yaml" or NULL */
    char *template_lib;
    enum origin template_lib_from;
    enum origin ccf_norm_from;
    int64_t *targetids;
    size_t ntargetids;
};

static void effective_free(struct effective *e)
{
    rvs_config_free(&e->config);
    free(e->template_lib);
    free(e->targetids);
}

static int build_effective(const struct settings *s, struct effective *e)
{
    memset(e, 0, sizeof *e);
    rvs_config_init(&e->config);
    const char *path = s->config_arg;
    if (path)
        e->config_source = "--config";
    else if (access("config.yaml", F_OK) == 0) {
        /* rvspecfit's read_config reads ./config.yaml when no file is named */
        path = "config.yaml";
        e->config_source = "./config.yaml";
        rvs_log(RVS_LOG_INFO, "cli", "reading ./config.yaml (no --config given)");
    }
    if (path && rvs_config_read(path, &e->config) != RVS_OK) {
        fprintf(stderr, "rvsfit-cl: invalid configuration %s (see the message above)\n", path);
        return RVS_EXIT_USAGE;
    }

    const char *lib;
    if (s->template_lib_arg) {
        lib = s->template_lib_arg;
        e->template_lib_from = FROM_COMMAND_LINE;
    } else if (e->config.template_lib) {
        lib = e->config.template_lib;
        e->template_lib_from = FROM_CONFIG;
    } else {
        lib = NULL;
        e->template_lib_from = FROM_DEFAULT;
    }
    if (lib)
        e->template_lib = strdup(lib);
    else {
        const char *dir = rvs_data_dir();
        size_t n = strlen(dir) + sizeof "/default";
        e->template_lib = malloc(n);
        if (e->template_lib)
            snprintf(e->template_lib, n, "%s/default", dir);
    }
    if (!e->template_lib)
        return RVS_EXIT_FAILURE;

    if (s->no_ccf_continuum_normalize) {
        e->config.ccf_continuum_normalize = 0;
        e->ccf_norm_from = FROM_COMMAND_LINE;
    } else
        e->ccf_norm_from = (e->config.set & RVS_CONFIG_CCF_CONTINUUM_NORMALIZE) ? FROM_CONFIG
                                                                                : FROM_DEFAULT;

    if (s->targetid_file) {
        if (rvs_select_read_targetids(s->targetid_file, &e->targetids, &e->ntargetids) !=
            RVS_OK) {
            fprintf(stderr, "rvsfit-cl: cannot use --targetid-file-from %s\n", s->targetid_file);
            return RVS_EXIT_USAGE;
        }
    } else if (s->have_targetid) {
        e->targetids = malloc(sizeof *e->targetids);
        if (!e->targetids)
            return RVS_EXIT_FAILURE;
        e->targetids[0] = (int64_t)s->targetid;
        e->ntargetids = 1;
    }
    return RVS_EXIT_OK;
}

static enum origin config_origin(const struct effective *e, unsigned key)
{
    return (e->config.set & key) ? FROM_CONFIG : FROM_DEFAULT;
}

static void show_config(const struct settings *s, const struct effective *e)
{
    const struct rvs_config *c = &e->config;
    printf("config_file = %s\n", c->path ? c->path : "none");
    printf("template_lib = %s (%s)\n", e->template_lib, origin_names[e->template_lib_from]);
    printf("min_vel = %g (%s)\n", c->min_vel, origin_names[config_origin(e, RVS_CONFIG_MIN_VEL)]);
    printf("max_vel = %g (%s)\n", c->max_vel, origin_names[config_origin(e, RVS_CONFIG_MAX_VEL)]);
    printf("vel_step0 = %g (%s)\n", c->vel_step0,
           origin_names[config_origin(e, RVS_CONFIG_VEL_STEP0)]);
    printf("min_vel_step = %g (%s)\n", c->min_vel_step,
           origin_names[config_origin(e, RVS_CONFIG_MIN_VEL_STEP)]);
    printf("min_vsini = %g (%s)\n", c->min_vsini,
           origin_names[config_origin(e, RVS_CONFIG_MIN_VSINI)]);
    printf("max_vsini = %g (%s)\n", c->max_vsini,
           origin_names[config_origin(e, RVS_CONFIG_MAX_VSINI)]);
    printf("second_minimizer = %s (%s)\n", c->second_minimizer ? "true" : "false",
           origin_names[config_origin(e, RVS_CONFIG_SECOND_MINIMIZER)]);
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        printf("lsf_sigma0_angstrom.%s = %g (%s)\n", rvs_desi_arm_name(a), c->lsf_sigma0[a],
               origin_names[(c->lsf_sigma0_arms & (1u << a)) ? FROM_CONFIG : FROM_DEFAULT]);
    printf("ccf_continuum_normalize = %s (%s)\n", c->ccf_continuum_normalize ? "true" : "false",
           origin_names[e->ccf_norm_from]);
    char arms[8] = "";
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        if (s->arms & (1u << a)) {
            if (*arms)
                strcat(arms, ",");
            strcat(arms, rvs_desi_arm_name(a));
        }
    printf("fitarm = %s (%s)\n", arms, origin_names[s->fitarm ? FROM_COMMAND_LINE : FROM_DEFAULT]);
    printf("npoly = %lld (%s)\n", s->npoly,
           origin_names[s->have_npoly ? FROM_COMMAND_LINE : FROM_DEFAULT]);
    printf("param_init = %s\n", s->param_init == RVS_FIT_INIT_CCF ? "CCF" : "bruteforce");
    printf("resolution_matrix = %s\n", s->resolution_matrix < 0 ? "auto (the library's LSFRMAT)"
                                       : s->resolution_matrix ? "true" : "false");
    printf("minsn = %g\n", s->minsn);
    if (s->have_minexpid)
        printf("minexpid = %lld\n", s->minexpid);
    else
        printf("minexpid = none\n");
    if (s->have_maxexpid)
        printf("maxexpid = %lld\n", s->maxexpid);
    else
        printf("maxexpid = none\n");
    printf("targetids = %zu%s\n", e->ntargetids,
           s->have_targetid || s->targetid_file ? "" : " (all)");
    printf("objtypes = %s\n", s->objtypes ? s->objtypes : "none");
    printf("zbest_select = %s\n", s->zbest_select ? "true" : "false");
    printf("zbest_include = %s\n", s->zbest_include ? "true" : "false");
    printf("output_dir = %s\n", s->output_dir);
    printf("output_tab_prefix = %s\n", s->tab_prefix);
    printf("output_mod_prefix = %s\n", s->mod_prefix);
    printf("subdirs = %s\n", s->no_subdirs ? "false" : "true");
    printf("doplot = %s\n", s->doplot ? "true" : "false");
    printf("figure_dir = %s\n", s->figure_dir ? s->figure_dir : "./");
    printf("figure_prefix = %s\n", s->figure_prefix ? s->figure_prefix : "fig");
    printf("likelihood = %s\n", s->rvspecfit_likelihood ? "rvspecfit (flat continuum prior, no "
           "clipping)" : "scale-free continuum prior, outlier clipping");
    printf("clip_sigma = %g%s\n", s->rvspecfit_likelihood ? 0 : s->clip_sigma,
           s->clip_sigma > 0 && !s->rvspecfit_likelihood ? "" : " (off)");
    printf("optimizer = %s\n", s->exact_derivatives ? "exact" : "stencil");
    if (s->batch_size > 0)
        printf("batch_size = %lld\n", s->batch_size);
    else
        printf("batch_size = auto\n");
    printf("overlap = %s\n", s->no_overlap ? "false" : "true");
}

/* ------------------------------------------------------------------ actions */

/* Monotonic seconds; main() records its start for --profile's end-to-end line. */
static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double program_start;

/* --profile's last lines: what only the program knows (host memory, its whole run). */
static void print_process_profile(const struct rvs_run *run, FILE *out)
{
    struct rusage ru;
    long rss_kib = getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss : -1; /* KiB on Linux */
    double elapsed = now_seconds() - program_start;
    size_t targets = 0;
    rvs_run_totals(run, NULL, NULL, &targets);
    double rate = elapsed > 0 ? (double)targets / elapsed : 0.0;
    fprintf(out, "  host peak RSS %.1f MiB\n", rss_kib >= 0 ? (double)rss_kib / 1024.0 : -1.0);
    fprintf(out, "  end to end %.3f s (program start to now: device set-up, self-test and "
                 "libraries included), %.2f spectra/s\n",
            elapsed, rate);
    fprintf(out, "rvsfit-cl profile-data: rss_max_kib=%ld e2e_s=%.6f e2e_spectra_per_s=%.6f\n",
            rss_kib, elapsed, rate);
}

static int exit_for_status(int status)
{
    return status == RVS_OK ? RVS_EXIT_OK : RVS_EXIT_DEVICE;
}

static int list_devices(void)
{
    struct rvs_device_list list;
    int status = rvs_device_list_query(&list);
    if (status != RVS_OK)
        return exit_for_status(status);
    rvs_device_list_print(&list, stdout);
    rvs_device_list_free(&list);
    return fflush(stdout) == 0 ? RVS_EXIT_OK : RVS_EXIT_FAILURE;
}

static int self_test(const struct rvs_context_options *options)
{
    struct rvs_context *ctx = NULL;
    int status = rvs_context_create(options, &ctx);
    if (status != RVS_OK) {
        fprintf(stderr, "rvsfit-cl: self-test failed: %s\n", rvs_strerror(status));
        return exit_for_status(status);
    }
    const struct rvs_device_caps *c = &ctx->caps;
    printf("device: %u (%u:%u) %s [%s] on %s\n", c->flat_index, c->platform_index,
           c->device_index, c->device_name, rvs_device_type_name(c->type), c->platform_name);
    printf("driver: %s; %s; %s\n", c->driver_version, c->device_version, c->opencl_c_version);
    printf("accumulation: %s\n", ctx->use_fp64 ? "fp64" : "compensated fp32");
    printf("gemm: %s\n", rvs_gemm_backend_name(ctx->gemm_backend));
    printf("preferred work-group multiple: %zu\n", c->preferred_work_group_multiple);
    printf("programs: %u built from source, %u loaded from cache, %u cache entries rejected\n",
           ctx->stats.built_from_source, ctx->stats.loaded_from_cache, ctx->stats.cache_rejected);
    printf("self-test: passed\n");
    rvs_context_destroy(&ctx);
    return fflush(stdout) == 0 ? RVS_EXIT_OK : RVS_EXIT_FAILURE;
}

/* The next input: from the arguments, the list, or the shared queue. *name NULL at the end. */
struct input_source {
    char **names;
    size_t count, next;
    char **owned; /* lines read from --input-file-from */
    const char *queue_path;
    char *popped;
};

static int next_input(struct input_source *src, const char **name)
{
    *name = NULL;
    if (src->queue_path) {
        free(src->popped);
        src->popped = NULL;
        int status = rvs_run_queue_claim(src->queue_path, &src->popped);
        if (status != RVS_OK)
            return status;
        *name = src->popped;
        return RVS_OK;
    }
    if (src->next < src->count)
        *name = src->names[src->next++];
    return RVS_OK;
}

/* MPI ranks (--mpi), or NULL for one process. Opaque where MPI is not built. */
#ifdef HAVE_MPI
typedef struct mpi_ranks mpi_ranks_t;
#else
typedef struct mpi_ranks_absent mpi_ranks_t;
#endif

/* The next input of an argument or --input-file-from list for this rank: dealt by rank 0's
 * counter under --mpi (each index once, to whichever rank asks first). */
static int next_dealt_input(struct input_source *src, mpi_ranks_t *ranks, const char **name)
{
#ifdef HAVE_MPI
    if (ranks && !src->queue_path) {
        long i = mpi_ranks_take(ranks);
        *name = i >= 0 && (size_t)i < src->count ? src->names[i] : NULL;
        return RVS_OK;
    }
#else
    (void)ranks;
#endif
    return next_input(src, name);
}

/* Fits every input; returns the exit code, and the files, failures and targets in totals. */
static int run_files(const struct settings *s, const struct effective *e, const char *cmdline,
                     mpi_ranks_t *ranks, size_t totals[3])
{
    int code = RVS_EXIT_OK, status;
    struct rvs_context *ctx = NULL;
    struct rvs_run *run = NULL;
    struct input_source src;
    memset(&src, 0, sizeof src);

    if (s->input_file_from && s->queue) {
        src.queue_path = s->input_file_from;
    } else if (s->input_file_from) {
        status = rvs_run_read_lines(s->input_file_from, &src.owned, &src.count);
        if (status != RVS_OK) {
            code = RVS_EXIT_USAGE;
            goto cleanup;
        }
        src.names = src.owned;
        if (src.count == 0)
            rvs_log(RVS_LOG_WARNING, "cli", "%s lists no input files", s->input_file_from);
    } else {
        src.names = s->files;
        src.count = s->nfiles;
    }

    int lead = 1; /* the process that empties the status file and logs the summary */
#ifdef HAVE_MPI
    lead = !ranks || ranks->rank == 0;
#endif
    int status_ready = !s->status_file || !lead || rvs_output_status_start(s->status_file) == RVS_OK;
#ifdef HAVE_MPI
    if (ranks)
        mpi_ranks_barrier(ranks); /* nobody appends before the file is emptied */
#endif
    if (!status_ready) {
        code = RVS_EXIT_FAILURE;
        goto cleanup;
    }

    struct rvs_context_options ctx_options = s->ctx;
#ifdef HAVE_MPI
    if (ranks) {
        ctx_options.device_spec = mpi_ranks_device(ranks, s->ctx.device_spec);
        if (!ctx_options.device_spec) {
            code = RVS_EXIT_DEVICE;
            goto cleanup;
        }
        rvs_log(RVS_LOG_INFO, "mpi", "rank %d of %d (node-local %d of %d): device %s", ranks->rank,
                ranks->size, ranks->local_rank, ranks->local_size, ctx_options.device_spec);
    }
#endif
    status = rvs_context_create(&ctx_options, &ctx);
    if (status != RVS_OK) {
        fprintf(stderr, "rvsfit-cl: no usable OpenCL device: %s\n", rvs_strerror(status));
        code = RVS_EXIT_DEVICE;
        goto cleanup;
    }
    rvs_log(RVS_LOG_INFO, "cli", "device: %s (%s), driver %s", ctx->caps.device_name,
            ctx->caps.platform_name, ctx->caps.driver_version);
    /* --profile counts the run's device work, not the self-test's */
    rvs_context_counters_reset(ctx);

    struct rvs_run_options ro;
    rvs_run_options_init(&ro);
    ro.arms = s->arms;
    if (s->have_minexpid)
        ro.select.min_expid = s->minexpid;
    if (s->have_maxexpid)
        ro.select.max_expid = s->maxexpid;
    if (e->targetids || s->have_targetid || s->targetid_file) {
        ro.select.use_targetids = 1;
        ro.select.targetids = e->targetids;
        ro.select.ntargetids = e->ntargetids;
    }
    ro.select.min_sn = s->minsn;
    ro.select.objtypes = s->objtypes;
    ro.select.zbest_select = s->zbest_select;
    ro.select.zbest_include = s->zbest_include;
    /* the run takes the library's LSF and LSFRMAT where the user said nothing */
    ro.prepare.use_resolution = s->resolution_matrix;
    ro.lsf_sigma0_given = e->config.lsf_sigma0_arms;
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        ro.prepare.lsf_sigma0[a] = e->config.lsf_sigma0[a];
    ro.fit.min_vel = e->config.min_vel;
    ro.fit.max_vel = e->config.max_vel;
    ro.fit.vel_step0 = e->config.vel_step0;
    ro.fit.min_vel_step = e->config.min_vel_step;
    ro.fit.min_vsini = e->config.min_vsini;
    ro.fit.max_vsini = e->config.max_vsini;
    ro.fit.second_minimizer = e->config.second_minimizer;
    ro.fit.ccf_continuum_normalize = e->config.ccf_continuum_normalize;
    ro.fit.npoly = (size_t)s->npoly;
    ro.fit.param_init = s->param_init;
    ro.fit.batch_size = (size_t)s->batch_size;
    ro.fit.clip_sigma = s->rvspecfit_likelihood ? 0 : s->clip_sigma;
    ro.fit.exact_derivatives = s->exact_derivatives;
    ro.fit.scale_free_continuum = !s->rvspecfit_likelihood;
    ro.naming.output_dir = s->output_dir;
    ro.naming.tab_prefix = s->tab_prefix;
    ro.naming.mod_prefix = s->mod_prefix;
    ro.naming.no_subdirs = s->no_subdirs;
    ro.figures.enabled = s->doplot;
    ro.figures.dir = s->figure_dir ? s->figure_dir : "./";
    ro.figures.prefix = s->figure_prefix ? s->figure_prefix : "fig";
    ro.figures.no_subdirs = s->no_subdirs;
    ro.template_lib = e->template_lib;
    ro.skip_existing = s->skip_existing;
    ro.overlap = !s->no_overlap;
    ro.progress = isatty(STDERR_FILENO) && !s->log_file && rvs_log_get_level() <= RVS_LOG_WARNING;
    ro.status_path = s->status_file;
    ro.config_path = e->config.path;
    ro.command_line = cmdline;

    status = rvs_run_create(ctx, &ro, &run);
    if (status != RVS_OK) {
        code = rvs_run_status_is_fatal(status) ? RVS_EXIT_DEVICE : RVS_EXIT_FAILURE;
        goto cleanup;
    }

    for (;;) {
        const char *input = NULL;
        status = next_dealt_input(&src, ranks, &input);
        if (status != RVS_OK) {
            code = RVS_EXIT_FAILURE;
            break;
        }
        if (!input)
            break;
        rvs_output_set_in_flight(input, s->status_file);
        status = rvs_run_file(run, input, NULL, NULL);
        rvs_output_set_in_flight(NULL, NULL);
        /* finished, whatever the outcome (its status line is written): the claim goes */
        if (src.queue_path && rvs_run_queue_done(src.queue_path, input) != RVS_OK)
            code = RVS_EXIT_FAILURE;
        if (status == RVS_OK)
            continue;
        code = RVS_EXIT_FAILURE;
        if (rvs_run_status_is_fatal(status)) {
            fprintf(stderr, "rvsfit-cl: stopping: %s is not a problem of %s alone\n",
                    rvs_strerror(status), input);
            if (status != RVS_ERR_NOMEM)
                code = RVS_EXIT_DEVICE;
            break;
        }
        if (s->throw_exceptions) {
            fprintf(stderr, "rvsfit-cl: stopping at %s (--throw-exceptions)\n", input);
#ifdef HAVE_MPI
            if (ranks)
                mpi_ranks_request_stop(ranks); /* the other ranks stop at their next input */
#endif
            break;
        }
    }
    /* the last files' figures are still being drawn */
    size_t figures_failed = 0;
    if (rvs_run_wait_figures(run, &figures_failed) != RVS_OK) {
        fprintf(stderr, "rvsfit-cl: %zu figure(s) could not be written (see the messages above)\n",
                figures_failed);
        code = code == RVS_EXIT_OK ? RVS_EXIT_FAILURE : code;
    }
    rvs_run_totals(run, &totals[0], &totals[1], &totals[2]);
    if (s->profile) {
        rvs_run_print_profile(run, stderr);
        print_process_profile(run, stderr);
    }
cleanup:
    rvs_run_destroy(&run);
    rvs_context_destroy(&ctx);
    rvs_run_free_lines(src.owned, src.count);
    free(src.popped);
    return code;
}

/* The run's summary (under --mpi: every rank's, by rank 0). */
static void log_summary(const size_t totals[3], int nranks)
{
    size_t nfiles = totals[0], nfailed = totals[1], ntargets = totals[2];
    if (nranks > 1)
        rvs_log(RVS_LOG_INFO, "cli", "%zu file(s) processed by %d ranks, %zu failed, %zu target(s) "
                "written", nfiles, nranks, nfailed, ntargets);
    else
        rvs_log(RVS_LOG_INFO, "cli", "%zu file(s) processed, %zu failed, %zu target(s) written",
                nfiles, nfailed, ntargets);
    if (nfailed)
        rvs_log(RVS_LOG_WARNING, "cli", "%zu of %zu file(s) failed", nfailed, nfiles);
}

int main(int argc, char **argv)
{
    /* OpenBLAS on its generic kernels (new CPUs): run again with vector ones (src/device/gemm.c) */
    rvs_openblas_reexec_if_generic(argv);
    program_start = now_seconds();
    /* an interrupt removes the outputs being written and says so (issue 19) */
    rvs_output_install_signal_cleanup();
    struct option long_options[NUM_OPTIONS + 1];
    /* a leading ':' makes getopt report a missing argument as ':' */
    char short_options[3 * NUM_OPTIONS + 2] = ":";
    rvs_cli_getopt_tables(cli_options, NUM_OPTIONS, long_options, short_options);
    char *cmdline = rvs_cli_join_arguments(NULL, argc, argv);
    rvs_cli_normalise_underscores(argc, argv);

    struct settings s;
    settings_init(&s);
    int opt, code = RVS_EXIT_OK, stop = 0;
    opterr = 0;
    while (!stop && (opt = getopt_long(argc, argv, short_options, long_options, NULL)) != -1) {
        if (opt == ':')
            code = usage_error("option '%s' requires an argument", argv[optind - 1]);
        else if (opt == '?')
            code = usage_error("unrecognized option '%s'", argv[optind - 1]);
        else {
            code = apply_option(&s, opt, optarg, &stop);
        }
        if (code != RVS_EXIT_OK)
            break;
    }
    if (stop) {
        free(cmdline);
        return fflush(stdout) == 0 ? RVS_EXIT_OK : RVS_EXIT_FAILURE;
    }
    if (code != RVS_EXIT_OK) {
        free(cmdline);
        return code;
    }
    s.files = argv + optind;
    s.nfiles = (size_t)(argc - optind);
    code = check_settings(&s);
    if (code != RVS_EXIT_OK) {
        free(cmdline);
        return code;
    }

    int level = s.log_level;
    if (level < 0)
        level = s.verbosity >= 2 ? RVS_LOG_DEBUG : s.verbosity == 1 ? RVS_LOG_INFO
                                                                    : RVS_LOG_WARNING;
    rvs_log_set_level(level);
    FILE *log_stream = NULL;
    if (s.log_file) {
        log_stream = fopen(s.log_file, "a");
        if (!log_stream) {
            perror(s.log_file);
            free(cmdline);
            return usage_error("cannot open --log file '%s'", s.log_file);
        }
        rvs_log_set_stream(log_stream);
    }

    struct effective e;
    if (s.list_devices)
        code = list_devices();
    else if (s.self_test)
        code = self_test(&s.ctx);
    else {
        code = build_effective(&s, &e);
        if (code == RVS_EXIT_OK && s.show_config)
            show_config(&s, &e);
        else if (code == RVS_EXIT_OK) {
            if (s.doplot && !rvs_figures_available()) {
                /* found before any device work: the build cannot draw what was asked for */
                fprintf(stderr, "rvsfit-cl: --doplot: %s\n", rvs_figures_unavailable_message());
                code = RVS_EXIT_USAGE;
            } else {
                if (!s.doplot && (s.figure_dir || s.figure_prefix))
                    rvs_log(RVS_LOG_WARNING, "cli",
                            "--figure-dir and --figure-prefix do nothing without --doplot (as "
                            "in rvs_desi_fit): no figures are drawn");
                size_t totals[3] = {0, 0, 0};
                int nranks = 1, lead = 1;
                mpi_ranks_t *ranks = NULL;
#ifdef HAVE_MPI
                struct mpi_ranks mpi;
                if (s.mpi) {
                    if (mpi_ranks_start(&argc, &argv, &mpi) != 0) {
                        effective_free(&e);
                        free(cmdline);
                        return RVS_EXIT_FAILURE;
                    }
                    ranks = &mpi;
                    nranks = mpi.size;
                    lead = mpi.rank == 0;
                }
#endif
                code = run_files(&s, &e, cmdline, ranks, totals);
#ifdef HAVE_MPI
                if (ranks)
                    mpi_ranks_combine(ranks, totals, &code);
#endif
                if (lead)
                    log_summary(totals, nranks);
#ifdef HAVE_MPI
                if (ranks)
                    mpi_ranks_end(ranks);
#endif
            }
        }
        effective_free(&e);
        if (s.show_config && fflush(stdout) != 0 && code == RVS_EXIT_OK)
            code = RVS_EXIT_FAILURE;
    }
    if (log_stream) {
        rvs_log_set_stream(NULL);
        if (fclose(log_stream) != 0 && code == RVS_EXIT_OK)
            code = RVS_EXIT_FAILURE;
    }
    free(cmdline);
    return code;
}
