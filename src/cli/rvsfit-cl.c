/* rvsfit-cl.c: the command-line program. Options come from one table (names, arguments, help);
 * getopt_long's table and --help are both generated from it. rvs_desi_fit spells options with
 * underscores, so "--log_level" is accepted as "--log-level". */
#include <config.h>

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rvsfit.h"

/* Exit codes (also in --help and the man page). */
enum rvs_exit {
    RVS_EXIT_OK = 0,      /* everything asked for was done */
    RVS_EXIT_FAILURE = 1, /* a file or target could not be processed, or an output not written */
    RVS_EXIT_USAGE = 2,   /* bad command line */
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
    OPT_LOG
};

struct cli_option {
    const char *name;
    int has_arg;
    int id;
    const char *arg_name;
    const char *help;
};

static const struct cli_option cli_options[] = {
    {"device", required_argument, OPT_DEVICE, "SPEC",
     "OpenCL device: index, P:D, name substring, cpu or gpu (default: $RVSFIT_CL_DEVICE, else "
     "the first GPU, else the first CPU)"},
    {"list-devices", no_argument, OPT_LIST_DEVICES, NULL, "list OpenCL devices and exit"},
    {"self-test", no_argument, OPT_SELF_TEST, NULL,
     "build the kernels on the device, run the known-answer self-test, report and exit"},
    {"fp32", no_argument, OPT_FP32, NULL,
     "accumulate in compensated fp32 even where the device has fp64 (also RVSFIT_CL_FP32=1)"},
    {"log-level", required_argument, OPT_LOG_LEVEL, "LEVEL",
     "DEBUG, INFO, WARNING (default), ERROR or CRITICAL"},
    {"log", required_argument, OPT_LOG, "FILE", "write messages to FILE instead of stderr"},
    {"quiet", no_argument, OPT_QUIET, NULL, "only errors (same as --log-level ERROR)"},
    {"verbose", no_argument, OPT_VERBOSE, NULL, "more messages (-v INFO, -vv DEBUG)"},
    {"help", no_argument, OPT_HELP, NULL, "show this help and exit"},
    {"version", no_argument, OPT_VERSION, NULL, "show the version and exit"},
};
enum { NUM_OPTIONS = sizeof cli_options / sizeof cli_options[0] };

static void print_usage_line(FILE *out)
{
    fprintf(out, "Usage: rvsfit-cl [OPTION]... [FILE]...\n");
}

static void print_help(void)
{
    print_usage_line(stdout);
    printf("Measure radial velocities and stellar parameters of DESI spectra by fitting a\n"
           "neural-network emulator of stellar spectra, batched, on an OpenCL device.\n\n"
           "Options:\n");
    for (size_t i = 0; i < NUM_OPTIONS; i++) {
        char left[64];
        const struct cli_option *o = &cli_options[i];
        if (o->id < 256)
            snprintf(left, sizeof left, "-%c, --%s%s%s", o->id, o->name, o->arg_name ? "=" : "",
                     o->arg_name ? o->arg_name : "");
        else
            snprintf(left, sizeof left, "    --%s%s%s", o->name, o->arg_name ? "=" : "",
                     o->arg_name ? o->arg_name : "");
        printf("  %-26s %s\n", left, o->help);
    }
    printf("\nOption names may also be written with underscores (--log_level), as in\n"
           "rvspecfit's rvs_desi_fit.\n\n"
           "Environment:\n"
           "  RVSFIT_CL_DEVICE       default device (same forms as --device)\n"
           "  RVSFIT_CL_KERNEL_DIR   directory whose .cl/.clh files override the embedded kernels\n"
           "  RVSFIT_CL_CACHE=0      do not use the program-binary cache\n"
           "  XDG_CACHE_HOME         cache location (default ~/.cache; files in rvsfit-cl/)\n"
           "  RVSFIT_CL_FP32=1       same as --fp32\n"
           "  RVSFIT_CL_GEMM         force the GEMM back end: clblast or openblas\n\n"
           "Exit status:\n"
           "  0  success\n"
           "  1  an input could not be processed or an output not written\n"
           "  2  invalid command line\n"
           "  3  no usable OpenCL device, or kernel build or self-test failure\n\n"
           "Report bugs to: %s\n",
           PACKAGE_BUGREPORT);
}

static void print_version(void)
{
    printf("rvsfit-cl %s\n"
           "A batched OpenCL port of the DESI path of rvspecfit (S. Koposov, MIT licence).\n"
           "This is free software: you are free to change and redistribute it.\n",
           PACKAGE_VERSION);
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

/* "--log_level=INFO" -> "--log-level=INFO": only the option name, never its value. */
static void normalise_underscores(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            break;
        if (strncmp(argv[i], "--", 2) != 0)
            continue;
        for (char *p = argv[i] + 2; *p && *p != '='; p++)
            if (*p == '_')
                *p = '-';
    }
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

int main(int argc, char **argv)
{
    struct option long_options[NUM_OPTIONS + 1];
    /* a leading ':' makes getopt report a missing argument as ':' */
    char short_options[3 * NUM_OPTIONS + 2] = ":";
    for (size_t i = 0; i < NUM_OPTIONS; i++) {
        long_options[i] = (struct option){cli_options[i].name, cli_options[i].has_arg, NULL,
                                          cli_options[i].id};
        if (cli_options[i].id < 256) {
            size_t n = strlen(short_options);
            short_options[n] = (char)cli_options[i].id;
            short_options[n + 1] = '\0';
            if (cli_options[i].has_arg)
                strcat(short_options, ":");
        }
    }
    memset(&long_options[NUM_OPTIONS], 0, sizeof long_options[0]);
    normalise_underscores(argc, argv);

    struct rvs_context_options ctx_options;
    rvs_context_options_init(&ctx_options);
    int action_list = 0, action_self_test = 0, verbosity = 0, log_level = -1;
    const char *log_file = NULL;
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, short_options, long_options, NULL)) != -1) {
        switch (opt) {
        case OPT_HELP:
            print_help();
            return fflush(stdout) == 0 ? RVS_EXIT_OK : RVS_EXIT_FAILURE;
        case OPT_VERSION:
            print_version();
            return fflush(stdout) == 0 ? RVS_EXIT_OK : RVS_EXIT_FAILURE;
        case OPT_LIST_DEVICES:
            action_list = 1;
            break;
        case OPT_SELF_TEST:
            action_self_test = 1;
            break;
        case OPT_DEVICE:
            if (!*optarg)
                return usage_error("--device needs a value (%s)", "see --list-devices");
            ctx_options.device_spec = optarg;
            break;
        case OPT_FP32:
            ctx_options.force_fp32 = 1;
            break;
        case OPT_LOG_LEVEL:
            if (rvs_log_parse_level(optarg, &log_level) != RVS_OK)
                return usage_error("invalid --log-level '%s' (DEBUG, INFO, WARNING, ERROR, "
                                   "CRITICAL)",
                                   optarg);
            break;
        case OPT_LOG:
            log_file = optarg;
            break;
        case OPT_QUIET:
            log_level = RVS_LOG_ERROR;
            break;
        case OPT_VERBOSE:
            verbosity++;
            break;
        case ':':
            return usage_error("option '%s' requires an argument", argv[optind - 1]);
        default:
            return usage_error("unrecognized option '%s'", argv[optind - 1]);
        }
    }
    if (log_level < 0)
        log_level = verbosity >= 2 ? RVS_LOG_DEBUG : verbosity == 1 ? RVS_LOG_INFO
                                                                     : RVS_LOG_WARNING;
    rvs_log_set_level(log_level);
    FILE *log_stream = NULL;
    if (log_file) {
        log_stream = fopen(log_file, "a");
        if (!log_stream) {
            perror(log_file);
            return usage_error("cannot open --log file '%s'", log_file);
        }
        rvs_log_set_stream(log_stream);
    }

    int code;
    if (action_list)
        code = list_devices();
    else if (action_self_test)
        code = self_test(&ctx_options);
    else if (optind < argc) {
        fprintf(stderr,
                "rvsfit-cl: fitting input files is not part of version %s yet; this version "
                "provides --list-devices and --self-test\n",
                PACKAGE_VERSION);
        code = RVS_EXIT_FAILURE;
    } else
        code = usage_error("%s", "no input files");
    if (log_stream) {
        rvs_log_set_stream(NULL);
        if (fclose(log_stream) != 0 && code == RVS_EXIT_OK)
            code = RVS_EXIT_FAILURE;
    }
    return code;
}
