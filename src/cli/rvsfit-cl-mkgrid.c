/* rvsfit-cl-mkgrid.c: the synthetic-grid command. Options come from one table (names,
 * arguments, help); getopt_long's table and --help are generated from it. Writes one spectrum
 * (--single) or a regular/Latin-hypercube grid of spectra degraded to the DESI arms. */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "options.h"
#include "rvsfit.h"
#include "rvsfit/mkgrid.h"

enum mkgrid_exit {
    MKGRID_EXIT_OK = 0,      /* the file(s) were written */
    MKGRID_EXIT_FAILURE = 1, /* the line list could not be read or the output not written */
    MKGRID_EXIT_USAGE = 2    /* bad command line */
};

enum option_id {
    OPT_HELP = 'h',
    OPT_VERSION = 'V',
    OPT_QUIET = 'q',
    OPT_VERBOSE = 'v',
    OPT_OUT = 'o',
    OPT_SINGLE = 256,
    OPT_TEFF,
    OPT_LOGG,
    OPT_FEH,
    OPT_ALPHA,
    OPT_RANDOM,
    OPT_TEFF_CDF,
    OPT_SEED,
    OPT_THREADS,
    OPT_LINELIST,
    OPT_RESOLUTION,
    OPT_ARMS,
    OPT_VMIC,
    OPT_FWHM,
    OPT_VDW,
    OPT_SAMPLING_BROADENING,
    OPT_LOG_LEVEL
};


static const struct rvs_cli_option cli_options[] = {
    {"out", required_argument, OPT_OUT, "PATH",
     "output: NAME.fits (all arms in one file) or an existing directory (one file per arm)", NULL},
    {"single", required_argument, OPT_SINGLE, "T,G,F,A",
     "one spectrum at Teff,logg,[Fe/H],[alpha/Fe]", NULL},
    {"teff", required_argument, OPT_TEFF, "MIN,MAX[,STEP]", "Teff range in K (3000,12000)", NULL},
    {"logg", required_argument, OPT_LOGG, "MIN,MAX[,STEP]", "log g range (0,5.5)", NULL},
    {"feh", required_argument, OPT_FEH, "MIN,MAX[,STEP]", "[Fe/H] range (-4,1)", NULL},
    {"alpha", required_argument, OPT_ALPHA, "MIN,MAX[,STEP]", "[alpha/Fe] range (-0.4,1)", NULL},
    {"random", required_argument, OPT_RANDOM, "N",
     "N points of a Latin hypercube (log Teff uniform) instead of a regular grid", NULL},
    {"teff-cdf", required_argument, OPT_TEFF_CDF, "T1,F1[,T2,F2...]",
     "with --random: a fraction F of the points below each Teff T (log Teff uniform between; "
     "default: uniform over the whole range)", NULL},
    {"seed", required_argument, OPT_SEED, "N", "seed of the Latin hypercube (default 1)", NULL},
    {"threads", required_argument, OPT_THREADS, "N", "worker threads (default: all CPUs)", NULL},
    {"linelist", required_argument, OPT_LINELIST, "DIR",
     "linemake MOOG directory (default $RVSFIT_CL_LINELIST_DIR; 'builtin' for the built-in "
     "strong-line list)", NULL},
    {"resolution", required_argument, OPT_RESOLUTION, "R",
     "internal sampling 1/d(ln lambda) (default 120000)", NULL},
    {"arms", required_argument, OPT_ARMS, "LIST", "arms to write: any of b,r,z (default b,r,z)", NULL},
    {"fwhm", required_argument, OPT_FWHM, "B,R,Z",
     "Gaussian LSF FWHM of the b, r and z arms in Angstrom (default 1.55,1.55,1.8; the "
     "template library records it)",
     NULL},
    {"vmic", required_argument, OPT_VMIC, "KMS",
     "microturbulence in km/s (default 2.478 - 0.325 log g, at least 0.5)", NULL},
    {"vdw", required_argument, OPT_VDW, "MODE",
     "van der Waals widths of metal lines: abo-scaled (default: Unsoeld times the species' "
     "median ABO/Unsoeld ratio) or unsoeld",
     NULL},
    {"sampling-broadening", required_argument, OPT_SAMPLING_BROADENING, "PIX",
     "internal pixels added in quadrature to each metal line's Doppler width (default 0.3)",
     NULL},
    {"log-level", required_argument, OPT_LOG_LEVEL, "LEVEL",
     "DEBUG, INFO, WARNING (default), ERROR or CRITICAL", NULL},
    {"quiet", no_argument, OPT_QUIET, NULL, "only errors", NULL},
    {"verbose", no_argument, OPT_VERBOSE, NULL, "more messages (-v INFO, -vv DEBUG)", NULL},
    {"help", no_argument, OPT_HELP, NULL, "show this help and exit", NULL},
    {"version", no_argument, OPT_VERSION, NULL, "show the version and exit", NULL},
};
enum { NUM_OPTIONS = sizeof cli_options / sizeof cli_options[0] };

static void print_usage_line(FILE *out)
{
    fprintf(out, "Usage: rvsfit-cl-mkgrid --out PATH (--single T,G,F,A | [GRID OPTION]...)\n");
}

static void print_help(void)
{
    print_usage_line(stdout);
    printf("Compute synthetic stellar spectra (LTE, scaled-solar model atmospheres, linemake\n"
           "line list) and write them degraded to the DESI b, r and z arms, as the training\n"
           "grid of rvsfit-cl's emulator. See doc/mkgrid.md for the physics and the file.\n\n"
           "Options:\n");
    rvs_cli_print_options(stdout, cli_options, NUM_OPTIONS, 28);
    printf("\nA regular grid needs a STEP on every range that is not a single value; points\n"
           "with log g < 4 log10(Teff/4000) are skipped (near the Eddington limit).\n\n"
           "Environment:\n"
           "  RVSFIT_CL_LINELIST_DIR  default --linelist directory\n\n"
           "Exit status:\n"
           "  0  the output was written (failed spectra are flagged in it)\n"
           "  1  the line list could not be read or the output not written\n"
           "  2  invalid command line\n\n"
           "Report bugs to: %s\n",
           PACKAGE_BUGREPORT);
}

static void print_version(void)
{
    printf("rvsfit-cl-mkgrid (rvsfit-cl) %s\n"
           "This is free software: you are free to change and redistribute it.\n",
           PACKAGE_VERSION);
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "rvsfit-cl-mkgrid: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    print_usage_line(stderr);
    fprintf(stderr, "Try 'rvsfit-cl-mkgrid --help' for more information.\n");
    return MKGRID_EXIT_USAGE;
}

/* "a,b[,c]" of finite numbers; returns how many were read (2..max), 0 on garbage. */
static int parse_list(const char *s, double *v, int max)
{
    int n = 0;
    const char *p = s;
    while (n < max) {
        char *end;
        errno = 0;
        double x = strtod(p, &end);
        if (end == p || errno || !isfinite(x))
            return 0;
        v[n++] = x;
        if (*end == '\0')
            return n;
        if (*end != ',')
            return 0;
        p = end + 1;
    }
    return 0;
}

static int parse_range(const char *name, const char *arg, struct rvs_mkgrid_range *r)
{
    double v[3];
    int n = parse_list(arg, v, 3);
    (void)name;
    if (n < 2)
        return -1;
    r->min = v[0];
    r->max = v[1];
    r->step = n == 3 ? v[2] : 0.0;
    if (r->min > r->max || (n == 3 && !(r->step > 0)))
        return -1;
    return 0;
}

static int parse_count(const char *arg, unsigned long long *out)
{
    char *end;
    errno = 0;
    if (!*arg || *arg == '-')
        return -1;
    unsigned long long v = strtoull(arg, &end, 10);
    if (*end || errno)
        return -1;
    *out = v;
    return 0;
}

/* Checks a range against the generator's limits. */
static int range_inside(const struct rvs_mkgrid_range *r, double lo, double hi)
{
    return r->min >= lo && r->max <= hi;
}

int main(int argc, char **argv)
{
    struct option long_options[NUM_OPTIONS + 1];
    char short_options[3 * NUM_OPTIONS + 2] = ":";
    rvs_cli_getopt_tables(cli_options, NUM_OPTIONS, long_options, short_options);
    rvs_cli_normalise_underscores(argc, argv); /* "--log_level" -> "--log-level" */

    struct rvs_synth_options sopt;
    rvs_synth_options_init(&sopt);
    struct rvs_mkgrid_design design = {.teff = {3000, 12000, 0},
                                       .logg = {0, 5.5, 0},
                                       .feh = {-4, 1, 0},
                                       .alpha = {-0.4, 1, 0},
                                       .nrandom = 0,
                                       .seed = 1,
                                       .teff_nknots = 0};
    struct rvs_mkgrid_output_options oopt = {0};
    const char *out = NULL, *single = NULL, *linelist = getenv("RVSFIT_CL_LINELIST_DIR");
    const char *teff_cdf = NULL;
    int verbosity = 0, log_level = -1, have_range = 0;
    long nthreads = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned arms = 0;
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, short_options, long_options, NULL)) != -1) {
        unsigned long long u;
        double v[1];
        switch (opt) {
        case OPT_HELP:
            print_help();
            return fflush(stdout) == 0 ? MKGRID_EXIT_OK : MKGRID_EXIT_FAILURE;
        case OPT_VERSION:
            print_version();
            return fflush(stdout) == 0 ? MKGRID_EXIT_OK : MKGRID_EXIT_FAILURE;
        case OPT_OUT:
            out = optarg;
            break;
        case OPT_SINGLE:
            single = optarg;
            break;
        case OPT_TEFF:
        case OPT_LOGG:
        case OPT_FEH:
        case OPT_ALPHA: {
            struct rvs_mkgrid_range *r = opt == OPT_TEFF   ? &design.teff
                                         : opt == OPT_LOGG ? &design.logg
                                         : opt == OPT_FEH  ? &design.feh
                                                           : &design.alpha;
            const char *name = opt == OPT_TEFF ? "teff" : opt == OPT_LOGG ? "logg"
                               : opt == OPT_FEH ? "feh" : "alpha";
            if (parse_range(name, optarg, r) != 0)
                return usage_error("invalid range '%s': give MIN,MAX[,STEP] with MIN <= MAX "
                                   "and STEP > 0",
                                   optarg);
            have_range = 1;
            break;
        }
        case OPT_RANDOM:
            if (parse_count(optarg, &u) != 0 || u == 0 || u > 10000000)
                return usage_error("--random needs a count of 1..10000000 (got '%s')", optarg);
            design.nrandom = (size_t)u;
            break;
        case OPT_TEFF_CDF: {
            double kv[2 * RVS_MKGRID_MAX_KNOTS];
            int nk = parse_list(optarg, kv, 2 * RVS_MKGRID_MAX_KNOTS);
            if (nk < 2 || nk % 2)
                return usage_error("--teff-cdf needs pairs T,F (at most 8; got '%s')", optarg);
            design.teff_nknots = (size_t)nk / 2;
            for (int k = 0; k < nk / 2; k++) {
                design.teff_knot[k] = kv[2 * k];
                design.teff_frac[k] = kv[2 * k + 1];
            }
            teff_cdf = optarg;
            break;
        }
        case OPT_SEED:
            if (parse_count(optarg, &u) != 0)
                return usage_error("--seed needs a non-negative integer (got '%s')", optarg);
            design.seed = u;
            break;
        case OPT_THREADS:
            if (parse_count(optarg, &u) != 0 || u == 0 || u > 1024)
                return usage_error("--threads needs 1..1024 (got '%s')", optarg);
            nthreads = (long)u;
            break;
        case OPT_LINELIST:
            linelist = optarg;
            break;
        case OPT_RESOLUTION:
            if (parse_list(optarg, v, 1) != 1 || !(v[0] >= 1000 && v[0] <= 1e6))
                return usage_error("--resolution needs a number in 1000..1e6 (got '%s')",
                                   optarg);
            sopt.resolution = v[0];
            break;
        case OPT_VMIC:
            if (parse_list(optarg, v, 1) != 1 || !(v[0] >= 0 && v[0] <= 10))
                return usage_error("--vmic needs km/s in 0..10 (got '%s')", optarg);
            sopt.vmic = v[0];
            break;
        case OPT_VDW:
            if (strcmp(optarg, "abo-scaled") == 0)
                sopt.vdw = RVS_SYNTH_VDW_ABO_SCALED;
            else if (strcmp(optarg, "unsoeld") == 0)
                sopt.vdw = RVS_SYNTH_VDW_UNSOELD;
            else
                return usage_error("--vdw needs abo-scaled or unsoeld (got '%s')", optarg);
            break;
        case OPT_SAMPLING_BROADENING:
            if (parse_list(optarg, v, 1) != 1 || !(v[0] >= 0 && v[0] <= 2))
                return usage_error("--sampling-broadening needs pixels in 0..2 (got '%s')",
                                   optarg);
            sopt.sampling_broadening = v[0];
            break;
        case OPT_FWHM: {
            double f[RVS_MKGRID_NARMS];
            if (parse_list(optarg, f, RVS_MKGRID_NARMS) != RVS_MKGRID_NARMS ||
                !(f[0] >= 0.1 && f[0] <= 20) || !(f[1] >= 0.1 && f[1] <= 20) ||
                !(f[2] >= 0.1 && f[2] <= 20))
                return usage_error("--fwhm needs three FWHM in Å of 0.1..20, for b, r and z "
                                   "(got '%s')",
                                   optarg);
            for (int a = 0; a < RVS_MKGRID_NARMS; a++)
                oopt.fwhm[a] = f[a];
            break;
        }
        case OPT_ARMS: {
            arms = 0;
            const char *p = optarg;
            while (*p) {
                if ((*p == 'b' || *p == 'r' || *p == 'z') && (p[1] == ',' || p[1] == '\0'))
                    arms |= 1u << (*p == 'b' ? 0 : *p == 'r' ? 1 : 2);
                else
                    return usage_error("--arms takes a list of b, r, z (got '%s')", optarg);
                p += p[1] == ',' ? 2 : 1;
            }
            if (!arms)
                return usage_error("--arms takes a list of b, r, z (got '%s')", optarg);
            break;
        }
        case OPT_LOG_LEVEL:
            if (rvs_log_parse_level(optarg, &log_level) != RVS_OK)
                return usage_error("invalid --log-level '%s'", optarg);
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
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (!out || !*out)
        return usage_error("%s", "--out is required");
    if (single && (have_range || design.nrandom))
        return usage_error("%s", "--single cannot be combined with ranges or --random");
    if (teff_cdf && !design.nrandom)
        return usage_error("%s", "--teff-cdf needs --random");
    if (log_level < 0)
        log_level = verbosity >= 2 ? RVS_LOG_DEBUG : verbosity == 1 ? RVS_LOG_INFO
                                                                     : RVS_LOG_WARNING;
    rvs_log_set_level(log_level);

    struct rvs_synth_params *points = NULL;
    size_t npoints = 0;
    if (single) {
        double v[4];
        if (parse_list(single, v, 4) != 4)
            return usage_error("--single needs Teff,logg,[Fe/H],[alpha/Fe] (got '%s')", single);
        struct rvs_synth_params p = {v[0], v[1], v[2], v[3]};
        const char *why;
        if (rvs_synth_params_check(&p, &why) != RVS_OK) {
            fprintf(stderr, "rvsfit-cl-mkgrid: --single %s: %s\n", single, why);
            return MKGRID_EXIT_USAGE;
        }
        points = malloc(sizeof *points);
        if (!points)
            return MKGRID_EXIT_FAILURE;
        points[0] = p;
        npoints = 1;
    } else {
        if (!range_inside(&design.teff, RVS_SYNTH_TEFF_MIN, RVS_SYNTH_TEFF_MAX) ||
            !range_inside(&design.logg, RVS_SYNTH_LOGG_MIN, RVS_SYNTH_LOGG_MAX) ||
            !range_inside(&design.feh, RVS_SYNTH_FEH_MIN, RVS_SYNTH_FEH_MAX) ||
            !range_inside(&design.alpha, RVS_SYNTH_ALPHA_MIN, RVS_SYNTH_ALPHA_MAX))
            return usage_error("%s", "a range is outside the generator's limits (Teff 2800-12500, "
                                     "log g -0.5..6, [Fe/H] -4.5..1, [alpha/Fe] -0.5..1.2)");
        if (rvs_mkgrid_design_points(&design, &points, &npoints) != RVS_OK)
            return usage_error("%s", "the grid design is invalid (see the message above)");
    }

    int code = MKGRID_EXIT_OK;
    struct rvs_synth *synth = NULL;
    if (linelist && strcmp(linelist, "builtin") == 0)
        linelist = NULL;
    if (!linelist)
        rvs_log(RVS_LOG_WARNING, "mkgrid",
                "no line list directory (--linelist or RVSFIT_CL_LINELIST_DIR): using the "
                "built-in list of strong lines only");
    sopt.linelist_dir = linelist;
    if (arms && arms != (1u << RVS_MKGRID_NARMS) - 1) {
        /* Only some arms: synthesise only their wavelengths (with the arms' 1000 km/s padding
         * and 20 Å for the degradation kernel), which makes a z-only grid ~3x cheaper. */
        double lo = sopt.lambda_max, hi = sopt.lambda_min;
        for (int a = 0; a < RVS_MKGRID_NARMS; a++) {
            if (!(arms & (1u << a)))
                continue;
            double fac = 1.0 + 1000.0 / 299792.458;
            lo = fmin(lo, rvs_mkgrid_desi_arms[a].lambda_min / fac - 20.0);
            hi = fmax(hi, rvs_mkgrid_desi_arms[a].lambda_max * fac + 20.0);
        }
        sopt.lambda_min = fmax(lo, sopt.lambda_min);
        sopt.lambda_max = fmin(hi, sopt.lambda_max);
    }
    if (rvs_synth_create(&sopt, &synth) != RVS_OK) {
        code = MKGRID_EXIT_FAILURE;
        goto done;
    }
    oopt.path = out;
    oopt.arms = arms;
    oopt.nthreads = (int)(nthreads > 0 ? nthreads : 1);
    oopt.mode = single ? "single" : design.nrandom ? "random" : "grid";
    oopt.seed = design.seed;
    oopt.teff_cdf = teff_cdf;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    size_t failed = 0;
    if (rvs_mkgrid_run(synth, points, npoints, &oopt, &failed) != RVS_OK) {
        fprintf(stderr, "rvsfit-cl-mkgrid: the output %s was not written\n", out);
        code = MKGRID_EXIT_FAILURE;
        goto done;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    rvs_log(RVS_LOG_INFO, "mkgrid",
            "%zu spectra (%zu failed) in %.1f s with %d threads: %.2f s per spectrum per thread",
            npoints, failed, secs, oopt.nthreads, secs * oopt.nthreads / (double)npoints);
done:
    rvs_synth_destroy(&synth);
    free(points);
    if (fflush(stdout) != 0)
        code = MKGRID_EXIT_FAILURE;
    return code;
}
