/* rvsfit-cl-mock.c: the command that writes DESI mock coadds (doc/mock.md). Options come from
 * one table (names, arguments, help); getopt_long's table and --help are generated from it. */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/options.h"
#include "mock/mock.h"
#include "rvsfit.h"

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_DEVICE = 3 };

enum option_id {
    OPT_HELP = 'h',
    OPT_VERSION = 'V',
    OPT_LIBRARY = 256,
    OPT_NTARGETS,
    OPT_PARAMS,
    OPT_SNR,
    OPT_VRAD,
    OPT_VSINI,
    OPT_LSF,
    OPT_LSF_ON_TOP,
    OPT_COSMICS,
    OPT_CONTINUUM,
    OPT_CONTINUUM_MODEL,
    OPT_SEED,
    OPT_REDROCK,
    OPT_HEALPIX,
    OPT_SURVEY,
    OPT_PROGRAM,
    OPT_DEVICE,
    OPT_FP32,
    OPT_OUT,
    OPT_LOG_LEVEL
};


static const struct rvs_cli_option cli_options[] = {
    {"library", required_argument, OPT_LIBRARY, "DIR",
     "template library: DIR/rvsfit_desi_{b,r,z}.fits (required)", NULL},
    {"out", required_argument, OPT_OUT, "PATH",
     "the coadd to write (required); truth-* and redrock-* go beside it", NULL},
    {"ntargets", required_argument, OPT_NTARGETS, "N", "number of random targets (default 10)", NULL},
    {"params", required_argument, OPT_PARAMS, "FILE",
     "true parameters from a FITS (HDU 1) or CSV table: teff, logg, feh, alpha, optional vrad, "
     "vsini, snr, targetid (missing ones are drawn at random)", NULL},
    {"snr-range", required_argument, OPT_SNR, "LO:HI",
     "per-pixel S/N, log-uniform (default 5:100)", NULL},
    {"vrad-range", required_argument, OPT_VRAD, "LO:HI",
     "radial velocity in km/s, uniform (default -300:300)", NULL},
    {"vsini-range", required_argument, OPT_VSINI, "LO:HI",
     "rotation in km/s, uniform (default 0:30)", NULL},
    {"lsf-scale", required_argument, OPT_LSF, "S",
     "multiply the LSF width of the resolution matrix R (default 1; 0: identity R, the templates "
     "as they are); S > 0: the spectra's total LSF is R (needs the library's own LSF, narrower "
     "than R)", NULL},
    {"lsf-on-top", no_argument, OPT_LSF_ON_TOP, NULL,
     "apply R on top of the templates' own LSF (the earlier model, for comparisons)", NULL},
    {"unflagged-cosmics", required_argument, OPT_COSMICS, "N",
     "cosmics per arm left out of the mask (default 1; 0..5)", NULL},
    {"continuum", required_argument, OPT_CONTINUUM_MODEL, "MODEL",
     "realistic (default: extinction x flux-calibration error) or legendre (per arm "
     "exp(cubic), the earlier model)", NULL},
    {"continuum-scale", required_argument, OPT_CONTINUUM, "S",
     "multiply E(B-V) and the continuum coefficients (default 1; 0: flat continuum)", NULL},
    {"seed", required_argument, OPT_SEED, "N", "random seed (default 1)", NULL},
    {"redrock", no_argument, OPT_REDROCK, NULL, "also write redrock-*.fits (REDSHIFTS)", NULL},
    {"healpix", required_argument, OPT_HEALPIX, "PIX", "HPXPIXEL/SPGRPVAL (default 10000)", NULL},
    {"survey", required_argument, OPT_SURVEY, "NAME", "SURVEY keyword (default main)", NULL},
    {"program", required_argument, OPT_PROGRAM, "NAME", "PROGRAM keyword (default bright)", NULL},
    {"device", required_argument, OPT_DEVICE, "SPEC",
     "OpenCL device, as rvsfit-cl --device (default $RVSFIT_CL_DEVICE, else the first GPU, else "
     "the first CPU)", NULL},
    {"fp32", no_argument, OPT_FP32, NULL, "compute in compensated fp32 even with fp64", NULL},
    {"log-level", required_argument, OPT_LOG_LEVEL, "LEVEL",
     "DEBUG, INFO, WARNING (default), ERROR or CRITICAL", NULL},
    {"help", no_argument, OPT_HELP, NULL, "show this help and exit", NULL},
    {"version", no_argument, OPT_VERSION, NULL, "show the version and exit", NULL},
};
enum { NUM_OPTIONS = sizeof cli_options / sizeof cli_options[0] };

static void print_usage_line(FILE *out)
{
    fprintf(out, "Usage: rvsfit-cl-mock --library DIR --out PATH [OPTION]...\n");
}

static void print_help(void)
{
    print_usage_line(stdout);
    printf("Write a DESI-format mock coadd (and its truth table) from an rvsfit-cl template\n"
           "library: emulator spectra, rotation, a Gaussian convolution that makes the spectra's\n"
           "total line-spread function equal to the written resolution matrix (the library must\n"
           "record its own LSF, narrower than DESI's), Doppler shift, a continuum (extinction x\n"
           "flux-calibration error), noise for the chosen S/N, masks, cosmics. Reproducible\n"
           "with --seed. See doc/mock.md.\n\nOptions:\n");
    rvs_cli_print_options(stdout, cli_options, NUM_OPTIONS, 26);
    printf("\nExit status: 0 written, 1 failure (message on stderr), 2 usage error, 3 device "
           "unusable.\n");
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "rvsfit-cl-mock: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    print_usage_line(stderr);
    fprintf(stderr, "Try 'rvsfit-cl-mock --help' for more information.\n");
    return EXIT_USAGE;
}

static int parse_double(const char *s, double *v)
{
    char *end = NULL;
    errno = 0;
    *v = strtod(s, &end);
    return end != s && *end == 0 && errno == 0 && isfinite(*v);
}

static int parse_range(const char *s, double *lo, double *hi)
{
    char buf[128];
    const char *colon = strchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof buf)
        return 0;
    memcpy(buf, s, (size_t)(colon - s));
    buf[colon - s] = 0;
    return parse_double(buf, lo) && parse_double(colon + 1, hi) && *lo <= *hi;
}

static int parse_ulong(const char *s, unsigned long long *v)
{
    char *end = NULL;
    errno = 0;
    if (*s == '-')
        return 0;
    *v = strtoull(s, &end, 10);
    return end != s && *end == 0 && errno == 0;
}

int main(int argc, char **argv)
{
    /* OpenBLAS on its generic kernels (new CPUs): run again with vector ones (src/device/gemm.c) */
    rvs_openblas_reexec_if_generic(argv);
    struct option long_options[NUM_OPTIONS + 1];
    char short_options[3 * NUM_OPTIONS + 2];
    struct rvs_mock_options o;
    struct rvs_context_options co;
    const char *out = NULL;
    int redrock = 0, log_level = RVS_LOG_WARNING;
    unsigned long long u = 0;
    rvs_mock_options_init(&o);
    rvs_context_options_init(&co);
    rvs_cli_getopt_tables(cli_options, NUM_OPTIONS, long_options, short_options);
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, short_options, long_options, NULL)) != -1) {
        switch (c) {
        case OPT_HELP:
            print_help();
            return EXIT_OK;
        case OPT_VERSION:
            printf("rvsfit-cl-mock (rvsfit-cl) %s\nDESI mock coadds from rvsfit-cl template "
                   "libraries.\nThis is free software: you are free to change and redistribute "
                   "it.\n",
                   PACKAGE_VERSION);
            return EXIT_OK;
        case OPT_LIBRARY:
            o.library_dir = optarg;
            break;
        case OPT_OUT:
            out = optarg;
            break;
        case OPT_NTARGETS:
            if (!parse_ulong(optarg, &u) || u < 1 || u > 1000000)
                return usage_error("--ntargets '%s': give a number from 1 to 1000000", optarg);
            o.ntargets = (size_t)u;
            break;
        case OPT_PARAMS:
            o.params_path = optarg;
            break;
        case OPT_SNR:
            if (!parse_range(optarg, &o.snr_lo, &o.snr_hi) || !(o.snr_lo > 0))
                return usage_error("--snr-range '%s': give LO:HI with 0 < LO <= HI", optarg);
            break;
        case OPT_VRAD:
            if (!parse_range(optarg, &o.vrad_lo, &o.vrad_hi) || o.vrad_lo < -5000 ||
                o.vrad_hi > 5000)
                return usage_error("--vrad-range '%s': give LO:HI (km/s) within -5000:5000",
                                   optarg);
            break;
        case OPT_VSINI:
            if (!parse_range(optarg, &o.vsini_lo, &o.vsini_hi) || o.vsini_lo < 0)
                return usage_error("--vsini-range '%s': give LO:HI (km/s) with 0 <= LO <= HI",
                                   optarg);
            break;
        case OPT_LSF:
            if (!parse_double(optarg, &o.lsf_scale) || o.lsf_scale < 0 || o.lsf_scale > 5)
                return usage_error("--lsf-scale '%s': give a number from 0 to 5", optarg);
            break;
        case OPT_LSF_ON_TOP:
            o.lsf_on_top = 1;
            break;
        case OPT_CONTINUUM_MODEL:
            if (strcmp(optarg, "realistic") == 0)
                o.continuum = RVS_MOCK_CONTINUUM_REALISTIC;
            else if (strcmp(optarg, "legendre") == 0)
                o.continuum = RVS_MOCK_CONTINUUM_LEGENDRE;
            else
                return usage_error("--continuum '%s': give realistic or legendre", optarg);
            break;
        case OPT_COSMICS:
            if (!parse_ulong(optarg, &u) || u > 5)
                return usage_error("--unflagged-cosmics '%s': give an integer from 0 to 5",
                                   optarg);
            o.unflagged_cosmics = (int)u;
            break;
        case OPT_CONTINUUM:
            if (!parse_double(optarg, &o.continuum_scale) || o.continuum_scale < 0 ||
                o.continuum_scale > 10)
                return usage_error("--continuum-scale '%s': give a number from 0 to 10", optarg);
            break;
        case OPT_SEED:
            if (!parse_ulong(optarg, &u))
                return usage_error("--seed '%s': give a non-negative integer", optarg);
            o.seed = (uint64_t)u;
            break;
        case OPT_REDROCK:
            redrock = 1;
            break;
        case OPT_HEALPIX:
            if (!parse_ulong(optarg, &u) || u > 0x7fffffffULL)
                return usage_error("--healpix '%s': give a non-negative integer", optarg);
            o.healpix = (long)u;
            break;
        case OPT_SURVEY:
            o.survey = optarg;
            break;
        case OPT_PROGRAM:
            o.program = optarg;
            break;
        case OPT_DEVICE:
            co.device_spec = optarg;
            break;
        case OPT_FP32:
            co.force_fp32 = 1;
            break;
        case OPT_LOG_LEVEL:
            if (rvs_log_parse_level(optarg, &log_level) != RVS_OK)
                return usage_error("--log-level '%s': give DEBUG, INFO, WARNING, ERROR or "
                                   "CRITICAL",
                                   optarg);
            break;
        case ':':
            return usage_error("option '%s' needs an argument", argv[optind - 1]);
        default:
            return usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (!o.library_dir)
        return usage_error("%s", "--library DIR is required");
    if (!out)
        return usage_error("%s", "--out PATH is required");
    rvs_log_set_level(log_level);

    /* the command line, for the MOCKCMD keyword */
    size_t len = 1;
    for (int i = 0; i < argc; i++)
        len += strlen(argv[i]) + 1;
    char *cmd = malloc(len);
    if (!cmd)
        return EXIT_FAIL;
    cmd[0] = 0;
    for (int i = 0; i < argc; i++) {
        strcat(cmd, argv[i]);
        if (i + 1 < argc)
            strcat(cmd, " ");
    }

    struct rvs_context *ctx = NULL;
    struct rvs_mock *m = NULL;
    int status = rvs_context_create(&co, &ctx);
    if (status != RVS_OK) {
        fprintf(stderr, "rvsfit-cl-mock: no usable OpenCL device (%s); see rvsfit-cl "
                        "--list-devices\n",
                rvs_strerror(status));
        free(cmd);
        return EXIT_DEVICE;
    }
    status = rvs_mock_generate(ctx, &o, &m);
    if (status == RVS_OK)
        status = rvs_mock_write(m, out, redrock, cmd);
    if (status == RVS_OK)
        printf("wrote %s: %zu targets, seed %llu\n", out, m->n, (unsigned long long)o.seed);
    else
        fprintf(stderr, "rvsfit-cl-mock: failed (%s)\n",
                rvs_strerror(status));
    rvs_mock_free(&m);
    rvs_context_destroy(&ctx);
    free(cmd);
    return status == RVS_OK ? EXIT_OK : EXIT_FAIL;
}
