/* rvsfit-cl-eval.c: writes the template spectra of a template library at given stellar
 * parameters, v sin i and (optionally) radial velocity, on the library's own wavelength grid
 * (doc/rvsfit-cl-eval.1). The spectra are those the fit's evaluation engine builds before the
 * spline onto the data grid: the NN emulator (rvs_nn_forward, which maps the parameters on the
 * device), then rotational broadening (rvs_rotation_apply_rows), then, for a non-zero velocity, the
 * natural cubic spline at lambda * sqrt((1 - b) / (1 + b)) (rvs_spline_eval; rvspecfit's evalRV).
 *
 * All parameter sets of a run are evaluated together: one NN forward pass, one rotation call and
 * one spline pass per arm (cut into a few passes only when device memory is short), never one
 * device call per spectrum. Outputs: a FITS file written atomically (temporary name, rename) with
 * checksums in every HDU, or text columns for quick plots. Options come from one table
 * (src/cli/options.h). */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fitsio.h>

#include "base/internal.h"
#include "options.h"
#include "desi/output_files.h"
#include "rvsfit.h"

#define PROG "rvsfit-cl-eval"
#define MOD "eval"

/* Exit codes, as doc/rvsfit-cl.1. */
enum eval_exit {
    EVAL_EXIT_OK = 0,      /* the spectra were written */
    EVAL_EXIT_FAILURE = 1, /* the library could not be read or the output not written */
    EVAL_EXIT_USAGE = 2,   /* bad command line or --params file */
    EVAL_EXIT_DEVICE = 3   /* no usable OpenCL device, kernel build/self-test or device error */
};

/* Per-row warning bits (the WARN column, EVALWARN keyword). */
#define EVAL_WARN_OUTSIDE 1u /* outside the training hull of at least one arm (penalty > 0) */
#define EVAL_WARN_EDGE 2u    /* the Doppler shift leaves NaN pixels at an end of the grid */
#define EVAL_WARN_NONFINITE 4u /* the emulator gave a non-finite flux (overflow) */

/* A row of parameters: teff, logg, feh, alpha (the library's order), vsini, vrad. */
enum { COL_TEFF, COL_LOGG, COL_FEH, COL_ALPHA, COL_VSINI, COL_VRAD, NCOL };
static const char *const col_names[NCOL] = {"teff", "logg", "feh", "alpha", "vsini", "vrad"};

#define EVAL_MAX_ROWS 1000000
#define EVAL_MAX_SETUPS 16
/* Share of the device's global memory one pass plans to use. */
#define EVAL_MEMORY_SHARE 0.5

/* ------------------------------------------------------------------ options */

enum option_id {
    OPT_HELP = 'h',
    OPT_VERSION = 'V',
    OPT_OUT = 'o',
    OPT_QUIET = 'q',
    OPT_VERBOSE = 'v',
    OPT_TEMPLATE_LIB = 256,
    OPT_SETUP,
    OPT_TEFF,
    OPT_LOGG,
    OPT_FEH,
    OPT_ALPHA,
    OPT_VSINI,
    OPT_VRAD,
    OPT_PARAMS,
    OPT_FORMAT,
    OPT_DEVICE,
    OPT_FP32,
    OPT_LOG_LEVEL
};

static const char G_LIB[] = "Template library";
static const char G_PAR[] = "Parameters";
static const char G_OUT[] = "Output";
static const char G_DEV[] = "Device";
static const char G_MSG[] = "Messages";
static const char G_INFO[] = "Information";

static const struct rvs_cli_option cli_options[] = {
    {"template-lib", required_argument, OPT_TEMPLATE_LIB, "DIR",
     "library directory, as rvsfit-cl (default: installed)", G_LIB},
    {"setup", required_argument, OPT_SETUP, "LIST",
     "arms, e.g. desi_b,desi_r (repeatable; default: all)", G_LIB},
    {"teff", required_argument, OPT_TEFF, "K", "effective temperature", G_PAR},
    {"logg", required_argument, OPT_LOGG, "G", "log10 surface gravity (cgs)", G_PAR},
    {"feh", required_argument, OPT_FEH, "F", "[Fe/H]", G_PAR},
    {"alpha", required_argument, OPT_ALPHA, "A", "[alpha/Fe]", G_PAR},
    {"vsini", required_argument, OPT_VSINI, "KMS", "rotation v sin i, km/s (default 0)", G_PAR},
    {"vrad", required_argument, OPT_VRAD, "KMS",
     "radial velocity, km/s (default 0)", G_PAR},
    {"params", required_argument, OPT_PARAMS, "FILE",
     "rows 'teff logg feh alpha vsini [vrad]' ('-': stdin)", G_PAR},
    {"out", required_argument, OPT_OUT, "FILE", "output file (text: default stdout)", G_OUT},
    {"format", required_argument, OPT_FORMAT, "FMT", "fits (default) or text", G_OUT},
    {"device", required_argument, OPT_DEVICE, "SPEC",
     "OpenCL device, as rvsfit-cl --device", G_DEV},
    {"fp32", no_argument, OPT_FP32, NULL, "compensated fp32 even with fp64", G_DEV},
    {"log-level", required_argument, OPT_LOG_LEVEL, "LEVEL",
     "DEBUG, INFO, WARNING (default), ERROR, CRITICAL", G_MSG},
    {"quiet", no_argument, OPT_QUIET, NULL, "only errors", G_MSG},
    {"verbose", no_argument, OPT_VERBOSE, NULL, "more messages (-v INFO, -vv DEBUG)", G_MSG},
    {"help", no_argument, OPT_HELP, NULL, "show this help and exit", G_INFO},
    {"version", no_argument, OPT_VERSION, NULL, "show the version and exit", G_INFO},
};
enum { NUM_OPTIONS = sizeof cli_options / sizeof cli_options[0] };

static void print_usage_line(FILE *out)
{
    fprintf(out, "Usage: " PROG " [OPTION]... --teff=K --logg=G --feh=F --alpha=A -o FILE\n"
                 "  or:  " PROG " [OPTION]... --params=FILE -o FILE\n"
                 "  or:  " PROG " [OPTION]... PARAMETERS --format=text [-o FILE]\n");
}

static void print_help(void)
{
    print_usage_line(stdout);
    printf("Write the template spectra of an rvsfit-cl template library at given stellar\n"
           "parameters, v sin i and radial velocity, on the library's wavelength grid: the\n"
           "models rvsfit-cl fits with (NN emulator, rotation, Doppler shift), all\n"
           "parameter sets in one batched device pass per arm. See doc/rvsfit-cl-eval.1.\n");
    rvs_cli_print_options(stdout, cli_options, NUM_OPTIONS, 24);
    printf("\nFITS output: one table per arm (EXTNAME = setup) with WAVELENGTH (vacuum\n"
           "Angstrom) and FLUX (one value per parameter set) per pixel, and a PARAMS table\n"
           "(one row per parameter set; WARN & 1: outside the library's training hull).\n"
           "With --params, --vrad is the velocity of rows that have no sixth column.\n"
           "Option names may also be written with underscores (--template_lib).\n\n"
           "Environment:\n"
           "  RVSFIT_CL_DEVICE   default device (same forms as --device)\n"
           "  RVSFIT_CL_DATADIR  data directory (its default/ is the default library)\n\n"
           "Exit status:\n"
           "  0  the spectra were written\n"
           "  1  the library could not be read or the output not written\n"
           "  2  invalid command line or --params file\n"
           "  3  no usable OpenCL device, kernel build or self-test failure, device error\n\n"
           "Report bugs to: %s\n",
           PACKAGE_BUGREPORT);
}

static void print_version(void)
{
    printf(PROG " (rvsfit-cl) %s\n"
           "Template spectra from rvsfit-cl template libraries.\n"
           "This is free software: you are free to change and redistribute it.\n",
           PACKAGE_VERSION);
}

static int usage_error(const char *fmt, ...) RVS_PRINTF_LIKE(1, 2);
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, PROG ": ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    print_usage_line(stderr);
    fprintf(stderr, "Try '" PROG " --help' for more information.\n");
    return EVAL_EXIT_USAGE;
}

/* A whole string as one finite number. */
static int parse_number(const char *s, double *v)
{
    char *end = NULL;
    errno = 0;
    *v = strtod(s, &end);
    return end != s && *end == '\0' && errno != ERANGE && isfinite(*v);
}

/* ------------------------------------------------------------------ settings */

struct settings {
    const char *template_lib;
    char setups[EVAL_MAX_SETUPS][RVS_LIBRARY_STRLEN];
    size_t nsetup;
    double single[NCOL];
    int have[NCOL];
    const char *params_path;
    const char *out;
    int text;
    struct rvs_context_options ctx;
    int log_level, verbosity;
};

/* A setup name becomes part of a file name (rvsfit_<setup>.fits): letters, digits, '_', '-',
 * '.', not starting with '.'. */
static int setup_name_ok(const char *s, size_t len)
{
    if (len == 0 || len >= RVS_LIBRARY_STRLEN - 12 || s[0] == '.')
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.'))
            return 0;
    }
    return 1;
}

static int add_setups(struct settings *s, const char *list)
{
    const char *p = list;
    for (;;) {
        size_t len = strcspn(p, ",");
        if (!setup_name_ok(p, len))
            return usage_error("invalid --setup '%s': give names such as desi_b,desi_r,desi_z "
                               "(letters, digits, '_', '-', '.')",
                               list);
        int dup = 0;
        for (size_t i = 0; i < s->nsetup; i++)
            dup |= strlen(s->setups[i]) == len && strncmp(s->setups[i], p, len) == 0;
        if (!dup) {
            if (s->nsetup == EVAL_MAX_SETUPS)
                return usage_error("more than %d setups", EVAL_MAX_SETUPS);
            memcpy(s->setups[s->nsetup], p, len);
            s->setups[s->nsetup][len] = '\0';
            s->nsetup++;
        }
        if (p[len] == '\0')
            return EVAL_EXIT_OK;
        p += len + 1;
    }
}

static int set_param(struct settings *s, int col, const char *option, const char *arg)
{
    if (!parse_number(arg, &s->single[col]))
        return usage_error("invalid --%s '%s': expected a finite number", option, arg);
    s->have[col] = 1;
    return EVAL_EXIT_OK;
}

static int apply_option(struct settings *s, int opt, const char *arg, int *stop)
{
    switch (opt) {
    case OPT_HELP:
        print_help();
        *stop = 1;
        return EVAL_EXIT_OK;
    case OPT_VERSION:
        print_version();
        *stop = 1;
        return EVAL_EXIT_OK;
    case OPT_TEMPLATE_LIB:
        if (!*arg)
            return usage_error("--template-lib needs a directory name");
        s->template_lib = arg;
        return EVAL_EXIT_OK;
    case OPT_SETUP:
        return add_setups(s, arg);
    case OPT_TEFF:
        return set_param(s, COL_TEFF, "teff", arg);
    case OPT_LOGG:
        return set_param(s, COL_LOGG, "logg", arg);
    case OPT_FEH:
        return set_param(s, COL_FEH, "feh", arg);
    case OPT_ALPHA:
        return set_param(s, COL_ALPHA, "alpha", arg);
    case OPT_VSINI:
        return set_param(s, COL_VSINI, "vsini", arg);
    case OPT_VRAD:
        return set_param(s, COL_VRAD, "vrad", arg);
    case OPT_PARAMS:
        if (!*arg)
            return usage_error("--params needs a file name ('-' for stdin)");
        s->params_path = arg;
        return EVAL_EXIT_OK;
    case OPT_OUT:
        if (!*arg)
            return usage_error("--out needs a file name");
        s->out = arg;
        return EVAL_EXIT_OK;
    case OPT_FORMAT:
        if (strcmp(arg, "fits") == 0)
            s->text = 0;
        else if (strcmp(arg, "text") == 0)
            s->text = 1;
        else
            return usage_error("invalid --format '%s': use fits or text", arg);
        return EVAL_EXIT_OK;
    case OPT_DEVICE:
        s->ctx.device_spec = arg;
        return EVAL_EXIT_OK;
    case OPT_FP32:
        s->ctx.force_fp32 = 1;
        return EVAL_EXIT_OK;
    case OPT_LOG_LEVEL:
        if (rvs_log_parse_level(arg, &s->log_level) != RVS_OK)
            return usage_error("invalid --log-level '%s': use DEBUG, INFO, WARNING, ERROR or "
                               "CRITICAL",
                               arg);
        return EVAL_EXIT_OK;
    case OPT_QUIET:
        s->log_level = RVS_LOG_ERROR;
        return EVAL_EXIT_OK;
    case OPT_VERBOSE:
        s->verbosity++;
        s->log_level = s->verbosity > 1 ? RVS_LOG_DEBUG : RVS_LOG_INFO;
        return EVAL_EXIT_OK;
    default:
        return EVAL_EXIT_USAGE;
    }
}

/* Ranges every row must satisfy, whatever the library (the library's own checks follow once it
 * is open): 0 <= vsini < c, |vrad| < c. */
static const char *row_range_error(const double *row, int *col)
{
    if (!(row[COL_VSINI] >= 0)) {
        *col = COL_VSINI;
        return "must be >= 0 km/s";
    }
    if (!(row[COL_VSINI] < RVS_SPEED_OF_LIGHT_KMS)) {
        *col = COL_VSINI;
        return "must be below the speed of light (299792.458 km/s)";
    }
    if (!(fabs(row[COL_VRAD]) < RVS_SPEED_OF_LIGHT_KMS)) {
        *col = COL_VRAD;
        return "must be below the speed of light (299792.458 km/s) in absolute value";
    }
    return NULL;
}

static int check_settings(const struct settings *s)
{
    static const char *const opt_names[] = {"--teff", "--logg", "--feh", "--alpha"};
    int any_theta = s->have[COL_TEFF] || s->have[COL_LOGG] || s->have[COL_FEH] ||
                    s->have[COL_ALPHA] || s->have[COL_VSINI];
    if (s->params_path && any_theta)
        return usage_error("give --params FILE or --teff/--logg/--feh/--alpha/--vsini, not "
                           "both (--vrad may go with --params)");
    if (!s->params_path) {
        char missing[64] = "";
        for (int c = 0; c < 4; c++)
            if (!s->have[c]) {
                strcat(missing, missing[0] ? ", " : "");
                strcat(missing, opt_names[c]);
            }
        if (missing[0])
            return usage_error("no parameters: give --teff, --logg, --feh and --alpha (missing "
                               "%s), or --params FILE",
                               missing);
        int col = 0;
        const char *why = row_range_error(s->single, &col);
        if (why)
            return usage_error("invalid --%s %g: %s", col_names[col], s->single[col], why);
    } else if (s->have[COL_VRAD]) {
        double row[NCOL] = {0, 0, 0, 0, 0, s->single[COL_VRAD]};
        int col = 0;
        const char *why = row_range_error(row, &col);
        if (why)
            return usage_error("invalid --vrad %g: %s", s->single[COL_VRAD], why);
    }
    if (!s->text && !s->out)
        return usage_error("--out FILE is required for FITS output (or use --format text to "
                           "print to stdout)");
    if (s->out && strcmp(s->out, "-") == 0 && !s->text)
        return usage_error("FITS output cannot go to stdout: give --out FILE or --format text");
    return EVAL_EXIT_OK;
}

/* ------------------------------------------------------------------ the --params file */

/* Reads rows of 5 (teff logg feh alpha vsini) or 6 (... vrad) numbers, separated by blanks or
 * commas; '#' starts a comment; blank lines are skipped. Rows without vrad get default_vrad.
 * Returns EVAL_EXIT_OK or EVAL_EXIT_USAGE with a message naming the file and line. */
static int read_params(const char *path, double default_vrad, double **rows_out, size_t *n_out)
{
    FILE *fp = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
    const char *name = fp == stdin ? "(stdin)" : path;
    char *line = NULL;
    size_t cap = 0, n = 0, alloc = 0;
    double *rows = NULL;
    long lineno = 0;
    int code = EVAL_EXIT_OK;
    *rows_out = NULL;
    *n_out = 0;
    if (!fp) {
        fprintf(stderr, PROG ": cannot read --params %s: %s\n", path, strerror(errno));
        return EVAL_EXIT_USAGE;
    }
    errno = 0;
    while (getline(&line, &cap, fp) != -1) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        double v[NCOL];
        int k = 0;
        char *save = NULL;
        for (char *tok = strtok_r(line, " \t\r\n,", &save); tok;
             tok = strtok_r(NULL, " \t\r\n,", &save)) {
            if (k == NCOL) {
                fprintf(stderr, PROG ": %s:%ld: more than %d values; a row is 'teff logg feh "
                        "alpha vsini [vrad]'\n", name, lineno, NCOL);
                code = EVAL_EXIT_USAGE;
                goto cleanup;
            }
            if (!parse_number(tok, &v[k])) {
                fprintf(stderr, PROG ": %s:%ld: %s '%s' is not a finite number (comment a "
                        "header line out with '#')\n", name, lineno, col_names[k], tok);
                code = EVAL_EXIT_USAGE;
                goto cleanup;
            }
            k++;
        }
        if (k == 0)
            continue;
        if (k < NCOL - 1) {
            fprintf(stderr, PROG ": %s:%ld: %d value%s; a row is 'teff logg feh alpha vsini "
                    "[vrad]'\n", name, lineno, k, k == 1 ? "" : "s");
            code = EVAL_EXIT_USAGE;
            goto cleanup;
        }
        if (k == NCOL - 1)
            v[COL_VRAD] = default_vrad;
        int col = 0;
        const char *why = row_range_error(v, &col);
        if (why) {
            fprintf(stderr, PROG ": %s:%ld: %s = %g %s\n", name, lineno, col_names[col], v[col],
                    why);
            code = EVAL_EXIT_USAGE;
            goto cleanup;
        }
        if (n == EVAL_MAX_ROWS) {
            fprintf(stderr, PROG ": %s: more than %d rows; split the file\n", name,
                    EVAL_MAX_ROWS);
            code = EVAL_EXIT_USAGE;
            goto cleanup;
        }
        if (n == alloc) {
            size_t na = alloc ? 2 * alloc : 64;
            double *r = realloc(rows, na * NCOL * sizeof *r);
            if (!r) {
                fprintf(stderr, PROG ": out of memory reading %s\n", name);
                code = EVAL_EXIT_FAILURE;
                goto cleanup;
            }
            rows = r;
            alloc = na;
        }
        memcpy(rows + n * NCOL, v, sizeof v);
        n++;
        errno = 0;
    }
    if (ferror(fp)) {
        fprintf(stderr, PROG ": cannot read --params %s: %s\n", name, strerror(errno));
        code = EVAL_EXIT_USAGE;
        goto cleanup;
    }
    if (n == 0) {
        fprintf(stderr, PROG ": %s holds no parameter rows ('teff logg feh alpha vsini [vrad]' "
                "per line)\n", name);
        code = EVAL_EXIT_USAGE;
        goto cleanup;
    }
    *rows_out = rows;
    *n_out = n;
    rows = NULL;
cleanup:
    free(line);
    free(rows);
    if (fp && fp != stdin)
        fclose(fp);
    return code;
}

/* ------------------------------------------------------------------ the library */

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

/* The setups a library directory holds (rvsfit_<setup>.fits): desi_b, desi_r, desi_z first in
 * that order, then the others alphabetically. */
static int library_setups(const char *dir, char (*names)[RVS_LIBRARY_STRLEN], size_t *count)
{
    static const char *const desi[] = {"desi_b", "desi_r", "desi_z"};
    char found[EVAL_MAX_SETUPS][RVS_LIBRARY_STRLEN];
    size_t nfound = 0;
    *count = 0;
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len <= 12 || strncmp(e->d_name, "rvsfit_", 7) != 0 ||
            strcmp(e->d_name + len - 5, ".fits") != 0 || !setup_name_ok(e->d_name + 7, len - 12))
            continue;
        if (nfound < EVAL_MAX_SETUPS) {
            memcpy(found[nfound], e->d_name + 7, len - 12);
            found[nfound][len - 12] = '\0';
            nfound++;
        }
    }
    closedir(d);
    qsort(found, nfound, sizeof found[0], cmp_str);
    for (size_t k = 0; k < 3; k++)
        for (size_t i = 0; i < nfound; i++)
            if (strcmp(found[i], desi[k]) == 0)
                memcpy(names[(*count)++], found[i], sizeof found[i]);
    for (size_t i = 0; i < nfound; i++)
        if (strcmp(found[i], "desi_b") && strcmp(found[i], "desi_r") && strcmp(found[i], "desi_z"))
            memcpy(names[(*count)++], found[i], sizeof found[i]);
    return 0;
}

/* One arm of the run: the open library file and its per-row results. */
struct eval_arm {
    struct rvs_library_arm *lib;
    double *outside;  /* per row: rvspecfit's outside-grid penalty (0 inside the hulls) */
    unsigned *warn;   /* per row: EVAL_WARN_* of this arm */
    size_t noutside;  /* rows with penalty > 0 */
    float *flux;      /* rows x npix, while the arm is being written */
};

/* ------------------------------------------------------------------ device evaluation */

/* Everything of one arm that lives across passes. */
struct arm_device {
    struct rvs_nn *nn;
    struct rvs_rotation *rot;
    struct rvs_spline_grid *grid; /* only when some row has vrad != 0 */
    cl_mem lam;                   /* the template grid (rvs_spline_points_create): where the
                                   * shift evaluates */
    size_t npix, width;
    double lnstep;
};

/* Rows one pass can take: half the device memory, the largest single buffer, 32-bit pixel
 * indices. */
static size_t rows_per_pass(const struct rvs_context *ctx, const struct arm_device *d)
{
    size_t es = rvs_context_real_size(ctx), np = d->npix;
    /* emulator output and one row per request (rotated or copied), parameters, the NN's float
     * work space, the rotation's FFT rows, indices */
    size_t per_row = es * np * 2 + es * (RVS_NN_MAX_INPUTS + 1) + 4 * (2 * d->width + np) +
                     2 * es * (np + 2) + 2 * sizeof(cl_int);
    if (d->grid)
        per_row += rvs_spline_coeffs_bytes(ctx, d->grid, 2) -
                   rvs_spline_coeffs_bytes(ctx, d->grid, 1) + es * np + es + sizeof(cl_int);
    size_t budget = (size_t)((double)ctx->caps.global_mem_size * EVAL_MEMORY_SHARE);
    size_t n = budget / per_row;
    size_t by_alloc = (size_t)ctx->caps.max_alloc_size / (es * np);
    size_t by_index = (size_t)INT32_MAX / np;
    n = n < by_alloc ? n : by_alloc;
    n = n < by_index ? n : by_index;
    return n ? n : 1;
}

/* Parameter vectors ordered by bit pattern, then row: equal ones become adjacent. */
struct theta_key {
    double th[4];
    size_t row;
};

static int theta_key_cmp(const void *a, const void *b)
{
    const struct theta_key *x = a, *y = b;
    int c = memcmp(x->th, y->th, sizeof x->th);
    return c ? c : (x->row > y->row) - (x->row < y->row);
}

/* The distinct (teff, logg, feh, alpha) of rows[0..n) in order of first appearance, as the engine
 * deduplicates them: first[u] is the first row with vector u, uid[i] the vector of row i.
 * Returns their number; when every row differs, uid is the identity. */
static size_t unique_theta(const double *rows, size_t n, struct theta_key *keys, size_t *rep,
                           cl_int *uid, size_t *first)
{
    for (size_t i = 0; i < n; i++) {
        memcpy(keys[i].th, rows + i * NCOL, sizeof keys[i].th);
        keys[i].row = i;
    }
    qsort(keys, n, sizeof *keys, theta_key_cmp);
    for (size_t k = 0; k < n; k++)
        rep[keys[k].row] = k > 0 && memcmp(keys[k].th, keys[k - 1].th, sizeof keys[k].th) == 0
                               ? rep[keys[k - 1].row]
                               : keys[k].row;
    size_t u = 0;
    for (size_t i = 0; i < n; i++) {
        if (rep[i] == i) {
            first[u] = i;
            uid[i] = (cl_int)u++;
        } else
            uid[i] = uid[rep[i]];
    }
    return u;
}

/* One pass: rows[0..n) of the arm into flux[0..n*npix) (float) and warn bits. The NN runs once
 * per distinct parameter vector (one GEMM chain for all of them), one rotation call makes one
 * row per request from those rows, and the rows with vrad != 0 are shifted in one spline pass. */
static int eval_pass(struct rvs_context *ctx, struct arm_device *d, const double *rows, size_t n,
                     float *flux, unsigned *warn)
{
    int status = RVS_OK, fp64 = ctx->use_fp64;
    size_t es = rvs_context_real_size(ctx), np = d->npix, nshift = 0, nu = 0;
    int any_rot = 0;
    cl_mem dparams = NULL, dtempl = NULL, drot = NULL, dcoef = NULL, didx = NULL, dvel = NULL,
           dshift = NULL;
    void *hparams = rvs_malloc(n * 4 * es), *hvel = rvs_malloc(n * es);
    void *hout = rvs_malloc(n * np * es);
    double *vsini = rvs_malloc(n * sizeof *vsini);
    cl_int *idx = rvs_malloc(n * sizeof *idx), *uid = rvs_malloc(n * sizeof *uid);
    size_t *shift_row = rvs_malloc(n * sizeof *shift_row), *rep = rvs_malloc(n * sizeof *rep);
    size_t *first = rvs_malloc(n * sizeof *first);
    struct theta_key *keys = rvs_malloc(n * sizeof *keys);
    if (!hparams || !hvel || !hout || !vsini || !idx || !uid || !shift_row || !rep || !first ||
        !keys) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    nu = unique_theta(rows, n, keys, rep, uid, first);
    /* the parameters as the engine passes them: physical values, mapped on the device */
    for (size_t u = 0; u < nu; u++)
        for (int p = 0; p < 4; p++)
            rvs_real_put(fp64, hparams, u * 4 + p, rows[first[u] * NCOL + (size_t)p]);
    for (size_t i = 0; i < n; i++) {
        const double *r = rows + i * NCOL;
        vsini[i] = r[COL_VSINI];
        any_rot |= r[COL_VSINI] > 0;
        if (r[COL_VRAD] != 0) {
            idx[nshift] = (cl_int)i;
            rvs_real_put(fp64, hvel, nshift, r[COL_VRAD]);
            shift_row[nshift++] = i;
        }
    }
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, nu * 4 * es, hparams,
                              &dparams));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, nu * np * es, NULL, &dtempl));
    RVS_TRY(rvs_nn_forward(ctx, d->nn, dparams, nu, dtempl, RVS_NN_FLUX_REAL));
    cl_mem src = dtempl;
    if (nu < n || any_rot) {
        /* one row per request: rotated, or copied from its parameter vector's emulator row */
        RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, n * np * es, NULL, &drot));
        RVS_TRY(rvs_rotation_apply_rows(ctx, d->rot, dtempl, nu < n ? uid : NULL, nu, n, vsini,
                                        d->lnstep, RVS_ROTATION_EPS, drot));
        src = drot;
    }
    if (nshift > 0) {
        RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, rvs_spline_coeffs_bytes(ctx, d->grid, n),
                                  NULL, &dcoef));
        RVS_TRY(rvs_spline_construct(ctx, d->grid, src, n, dcoef));
        RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                                  nshift * sizeof *idx, idx, &didx));
        RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, nshift * es, hvel,
                                  &dvel));
        RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, nshift * np * es, NULL, &dshift));
        RVS_TRY(rvs_spline_eval(ctx, d->grid, dcoef, n, didx, dvel, nshift, d->lam, np, dshift));
    }
    RVS_TRY(rvs_buffer_read(ctx, src, 0, n * np * es, hout));
    for (size_t k = 0; k < n * np; k++)
        flux[k] = (float)rvs_real_get(fp64, hout, k);
    if (nshift > 0) {
        RVS_TRY(rvs_buffer_read(ctx, dshift, 0, nshift * np * es, hout));
        for (size_t s = 0; s < nshift; s++)
            for (size_t j = 0; j < np; j++)
                flux[shift_row[s] * np + j] = (float)rvs_real_get(fp64, hout, s * np + j);
    }
    for (size_t i = 0; i < n; i++) {
        const float *f = flux + i * np;
        int edge = 0;
        if (rows[i * NCOL + COL_VRAD] != 0)
            edge = isnan(f[0]) || isnan(f[np - 1]);
        /* edge NaNs are the shift's; anything else non-finite is the emulator's */
        size_t lo = 0, hi = np;
        while (edge && lo < np && isnan(f[lo]))
            lo++;
        while (edge && hi > lo && isnan(f[hi - 1]))
            hi--;
        int bad = 0;
        for (size_t j = lo; j < hi; j++)
            bad |= !isfinite(f[j]);
        warn[i] |= (edge ? EVAL_WARN_EDGE : 0u) | (bad ? EVAL_WARN_NONFINITE : 0u);
    }
    rvs_log(RVS_LOG_DEBUG, MOD, "pass of %zu rows: %zu distinct parameter vectors, %zu shifted",
            n, nu, nshift);
cleanup:
    rvs_buffer_release(&dparams);
    rvs_buffer_release(&dtempl);
    rvs_buffer_release(&drot);
    rvs_buffer_release(&dcoef);
    rvs_buffer_release(&didx);
    rvs_buffer_release(&dvel);
    rvs_buffer_release(&dshift);
    free(hparams);
    free(hvel);
    free(hout);
    free(vsini);
    free(idx);
    free(uid);
    free(shift_row);
    free(rep);
    free(first);
    free(keys);
    return status;
}

/* All rows of one arm: a pass over as many rows as the device holds (normally all of them); an
 * allocation failure halves the pass and retries it. */
static int eval_arm(struct rvs_context *ctx, struct eval_arm *arm, const double *rows, size_t n)
{
    int status = RVS_OK;
    struct arm_device d;
    memset(&d, 0, sizeof d);
    const struct rvs_library_content *c = rvs_library_content(arm->lib);
    d.npix = c->npix;
    d.width = c->nn.width;
    d.lnstep = c->log_step;
    int any_shift = 0;
    for (size_t i = 0; i < n; i++)
        any_shift |= rows[i * NCOL + COL_VRAD] != 0;
    RVS_TRY(rvs_nn_create(ctx, rvs_library_nn_desc(arm->lib), &d.nn));
    RVS_TRY(rvs_rotation_create(ctx, d.npix, &d.rot));
    if (any_shift) {
        RVS_TRY(rvs_spline_grid_create(ctx, c->wave, d.npix, 1, &d.grid));
        RVS_TRY(rvs_spline_points_create(ctx, c->wave, d.npix, &d.lam));
    }
    size_t per = rows_per_pass(ctx, &d), passes = 0;
    for (size_t start = 0; start < n;) {
        size_t m = n - start < per ? n - start : per;
        status = eval_pass(ctx, &d, rows + start * NCOL, m, arm->flux + start * d.npix,
                           arm->warn + start);
        if (status != RVS_OK && rvs_is_alloc_failure(status) && m > 1) {
            per = m / 2;
            rvs_log(RVS_LOG_INFO, MOD, "%s: %zu rows did not fit on the device (%s); trying %zu",
                    c->setup, m, rvs_strerror(status), per);
            status = RVS_OK;
            continue;
        }
        RVS_TRY(status);
        start += m;
        passes++;
    }
    RVS_CL_TRY(clFinish(ctx->queue));
    rvs_log(RVS_LOG_INFO, MOD, "%s: %zu spectra of %zu pixels in %zu device pass%s", c->setup, n,
            d.npix, passes, passes == 1 ? "" : "es");
cleanup:
    rvs_buffer_release(&d.lam);
    rvs_spline_grid_destroy(&d.grid);
    rvs_rotation_destroy(&d.rot);
    rvs_nn_destroy(&d.nn);
    return status;
}

/* ------------------------------------------------------------------ FITS output */

static int fits_fail(int fst, const char *file, const char *what)
{
    char status_text[FLEN_STATUS] = "";
    char msg[FLEN_ERRMSG];
    fits_get_errstatus(fst, status_text);
    rvs_log(RVS_LOG_ERROR, MOD, "%s: cannot %s (cfitsio %d: %s)", file, what, fst, status_text);
    while (fits_read_errmsg(msg))
        rvs_log(RVS_LOG_ERROR, MOD, "%s: cfitsio: %s", file, msg);
    return fst == MEMORY_ALLOCATION ? RVS_ERR_NOMEM : RVS_ERR_IO;
}

#define FITS_CHECK(file, ...)                                                                      \
    do {                                                                                           \
        if (fst > 0) {                                                                             \
            char what_[256];                                                                       \
            snprintf(what_, sizeof what_, __VA_ARGS__);                                            \
            status = fits_fail(fst, (file), what_);                                                \
            goto cleanup;                                                                          \
        }                                                                                          \
    } while (0)

/* What every header needs to know about the run. */
struct run_info {
    const char *path;   /* the temporary file being written */
    const char *libdir;
    const char *command;
    const struct rvs_context *ctx;
    size_t nrows;
    const double *rows;
};

/* A string keyword (long-string convention when long), printable ASCII only. */
static int key_str(fitsfile *f, const char *file, const char *key, const char *value,
                   const char *comment)
{
    int status = RVS_OK, fst = 0;
    char *text = rvs_strdup(value ? value : "");
    if (!text)
        return RVS_ERR_NOMEM;
    for (char *p = text; *p; p++)
        if ((unsigned char)*p < 32 || (unsigned char)*p > 126)
            *p = '?';
    if (strlen(text) <= 68)
        fits_write_key_str(f, key, text, comment, &fst);
    else
        fits_write_key_longstr(f, key, text, comment, &fst);
    FITS_CHECK(file, "write keyword %s", key);
cleanup:
    free(text);
    return status;
}

static int key_dbl(fitsfile *f, const char *file, const char *key, double v, const char *comment)
{
    int status = RVS_OK, fst = 0;
    fits_write_key_dbl(f, key, v, -15, comment, &fst);
    FITS_CHECK(file, "write keyword %s", key);
cleanup:
    return status;
}

static int key_lng(fitsfile *f, const char *file, const char *key, long v, const char *comment)
{
    int status = RVS_OK, fst = 0;
    fits_write_key_lng(f, key, v, comment, &fst);
    FITS_CHECK(file, "write keyword %s", key);
cleanup:
    return status;
}

/* The parameters of a one-row run as keywords (TEFF ... VRAD, then OUTSIDE and EVALWARN). */
static int keys_single(fitsfile *f, const struct run_info *ri, double outside, unsigned warn)
{
    int status = RVS_OK;
    if (ri->nrows != 1)
        return RVS_OK;
    const double *r = ri->rows;
    RVS_TRY(key_dbl(f, ri->path, "TEFF", r[COL_TEFF], "effective temperature [K]"));
    RVS_TRY(key_dbl(f, ri->path, "LOGG", r[COL_LOGG], "log10 surface gravity [cgs]"));
    RVS_TRY(key_dbl(f, ri->path, "FEH", r[COL_FEH], "[Fe/H]"));
    RVS_TRY(key_dbl(f, ri->path, "ALPHAFE", r[COL_ALPHA], "[alpha/Fe]"));
    RVS_TRY(key_dbl(f, ri->path, "VSINI", r[COL_VSINI], "v sin i [km/s]"));
    RVS_TRY(key_dbl(f, ri->path, "VRAD", r[COL_VRAD], "radial velocity [km/s]"));
    RVS_TRY(key_dbl(f, ri->path, "OUTSIDE", outside, "outside-hull penalty (0: inside)"));
    RVS_TRY(key_lng(f, ri->path, "EVALWARN", (long)warn,
                    "1 outside hull, 2 edge NaN, 4 nonfinite"));
cleanup:
    return status;
}

static int write_primary(fitsfile *f, const struct run_info *ri, struct eval_arm *arms,
                         size_t narms, const double *outside, const unsigned *warn)
{
    int status = RVS_OK, fst = 0;
    char setups[EVAL_MAX_SETUPS * RVS_LIBRARY_STRLEN] = "";
    const struct rvs_library_provenance *p = rvs_library_provenance(arms[0].lib);
    fits_create_img(f, BYTE_IMG, 0, NULL, &fst);
    FITS_CHECK(ri->path, "create the primary HDU");
    for (size_t a = 0; a < narms; a++) {
        strcat(setups, a ? "," : "");
        strcat(setups, rvs_library_setup(arms[a].lib));
    }
    RVS_TRY(key_str(f, ri->path, "CREATOR", PROG, "software that wrote the file"));
    RVS_TRY(key_str(f, ri->path, "CREATVER", PACKAGE_VERSION, "its version"));
    fits_write_date(f, &fst);
    FITS_CHECK(ri->path, "write keyword DATE");
    RVS_TRY(key_str(f, ri->path, "TMPLLIB", ri->libdir, "template library directory"));
    RVS_TRY(key_str(f, ri->path, "TMPLREV", p->librev, "template library revision (LIBREV)"));
    RVS_TRY(key_str(f, ri->path, "TMPLSVR", p->srcver, "software version that trained it"));
    RVS_TRY(key_str(f, ri->path, "SETUPS", setups, "arm HDUs, in order"));
    RVS_TRY(key_lng(f, ri->path, "NROWS", (long)ri->nrows, "parameter sets (PARAMS rows)"));
    RVS_TRY(key_dbl(f, ri->path, "ROTEPS", RVS_ROTATION_EPS, "limb darkening of the rotation"));
    RVS_TRY(key_str(f, ri->path, "DEVICE", ri->ctx->caps.device_name, "OpenCL device"));
    fits_write_key_log(f, "DEVFP64", ri->ctx->use_fp64, "device accumulates in fp64", &fst);
    FITS_CHECK(ri->path, "write keyword DEVFP64");
    RVS_TRY(keys_single(f, ri, outside[0], warn[0]));
    if (ri->command)
        RVS_TRY(key_str(f, ri->path, "EVALCMD", ri->command, "command line"));
    fits_write_chksum(f, &fst);
    FITS_CHECK(ri->path, "write the checksum of the primary HDU");
cleanup:
    return status;
}

/* One arm: a row per pixel, WAVELENGTH and FLUX[nrows]. */
static int write_arm_hdu(fitsfile *f, const struct run_info *ri, const struct eval_arm *arm)
{
    int status = RVS_OK, fst = 0;
    const struct rvs_library_content *c = rvs_library_content(arm->lib);
    size_t np = c->npix, n = ri->nrows;
    float *cells = NULL;
    char tform_flux[32];
    snprintf(tform_flux, sizeof tform_flux, "%zuE", n);
    char *ttype[] = {"WAVELENGTH", "FLUX"}, *tform[] = {"1D", tform_flux},
         *tunit[] = {"Angstrom", ""};
    fits_create_tbl(f, BINARY_TBL, (LONGLONG)np, 2, ttype, tform, tunit, c->setup, &fst);
    FITS_CHECK(ri->path, "create HDU %s", c->setup);
    RVS_TRY(key_str(f, ri->path, "SETUP", c->setup, "arm setup of the library file"));
    RVS_TRY(key_lng(f, ri->path, "NPIX", (long)np, "template pixels (rows)"));
    RVS_TRY(key_dbl(f, ri->path, "LOGSTEP", c->log_step, "ln wavelength step"));
    RVS_TRY(key_str(f, ri->path, "WAVEREF", "vacuum", "wavelength reference"));
    RVS_TRY(key_lng(f, ri->path, "NROWS", (long)n, "parameter sets (FLUX elements)"));
    RVS_TRY(key_lng(f, ri->path, "NOUTSIDE", (long)arm->noutside,
                    "rows outside this arm's training hull"));
    RVS_TRY(key_str(f, ri->path, "LIBFILE", rvs_library_path(arm->lib), "library file"));
    RVS_TRY(key_str(f, ri->path, "LIBREV", c->prov.librev, "library revision"));
    RVS_TRY(key_str(f, ri->path, "LIBDATE", c->prov.date, "library file creation date"));
    RVS_TRY(key_str(f, ri->path, "SRCSOFT", c->prov.srcsoft, "software that trained it"));
    RVS_TRY(key_str(f, ri->path, "SRCVER", c->prov.srcver, "its version"));
    RVS_TRY(key_str(f, ri->path, "GRIDNAME", c->prov.grid_name, "training grid"));
    RVS_TRY(keys_single(f, ri, arm->outside[0], arm->warn[0]));
    fits_write_col(f, TDOUBLE, 1, 1, 1, (LONGLONG)np, (void *)c->wave, &fst);
    FITS_CHECK(ri->path, "write WAVELENGTH of HDU %s", c->setup);
    /* FLUX cell j = pixel j of every row: the transpose of the device's row-major result */
    cells = rvs_malloc(np * n * sizeof *cells);
    if (!cells) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < np; j++)
            cells[j * n + i] = arm->flux[i * np + j];
    fits_write_col(f, TFLOAT, 2, 1, 1, (LONGLONG)(np * n), cells, &fst);
    FITS_CHECK(ri->path, "write FLUX of HDU %s", c->setup);
    fits_write_chksum(f, &fst);
    FITS_CHECK(ri->path, "write the checksum of HDU %s", c->setup);
cleanup:
    free(cells);
    return status;
}

static int write_params_hdu(fitsfile *f, const struct run_info *ri, const double *outside,
                            const unsigned *warn)
{
    int status = RVS_OK, fst = 0;
    size_t n = ri->nrows;
    double *col = NULL;
    int *w = NULL;
    char *ttype[] = {"TEFF", "LOGG", "FEH", "ALPHAFE", "VSINI", "VRAD", "OUTSIDE", "WARN"};
    char *tform[] = {"D", "D", "D", "D", "D", "D", "D", "J"};
    char *tunit[] = {"K", "", "", "", "km/s", "km/s", "", ""};
    fits_create_tbl(f, BINARY_TBL, (LONGLONG)n, 8, ttype, tform, tunit, "PARAMS", &fst);
    FITS_CHECK(ri->path, "create HDU PARAMS");
    RVS_TRY(key_str(f, ri->path, "WARNBIT0", "OUTSIDE_HULL", "WARN 1: outside a training hull"));
    RVS_TRY(key_str(f, ri->path, "WARNBIT1", "EDGE_NAN", "WARN 2: shift leaves NaN at an end"));
    RVS_TRY(key_str(f, ri->path, "WARNBIT2", "NONFINITE", "WARN 4: non-finite emulator flux"));
    col = rvs_malloc(n * sizeof *col);
    w = rvs_malloc(n * sizeof *w);
    if (!col || !w) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (int k = 0; k < NCOL; k++) {
        for (size_t i = 0; i < n; i++)
            col[i] = ri->rows[i * NCOL + k];
        fits_write_col(f, TDOUBLE, k + 1, 1, 1, (LONGLONG)n, col, &fst);
        FITS_CHECK(ri->path, "write column %s of PARAMS", ttype[k]);
    }
    fits_write_col(f, TDOUBLE, 7, 1, 1, (LONGLONG)n, (void *)outside, &fst);
    FITS_CHECK(ri->path, "write column OUTSIDE of PARAMS");
    for (size_t i = 0; i < n; i++)
        w[i] = (int)warn[i];
    fits_write_col(f, TINT, 8, 1, 1, (LONGLONG)n, w, &fst);
    FITS_CHECK(ri->path, "write column WARN of PARAMS");
    fits_write_chksum(f, &fst);
    FITS_CHECK(ri->path, "write the checksum of HDU PARAMS");
cleanup:
    free(col);
    free(w);
    return status;
}

/* ------------------------------------------------------------------ text output */

static void text_header(FILE *out, const struct run_info *ri, const struct eval_arm *arms,
                        const double *outside, const unsigned *warn)
{
    const struct rvs_library_provenance *p = rvs_library_provenance(arms[0].lib);
    fprintf(out, "# " PROG " %s: template spectra of library %s (revision %s)\n",
            PACKAGE_VERSION, ri->libdir, p->librev[0] ? p->librev : "unknown");
    fprintf(out, "# %zu parameter set%s (flux column flux_k: set k):\n", ri->nrows,
            ri->nrows == 1 ? "" : "s");
    for (size_t i = 0; i < ri->nrows; i++) {
        const double *r = ri->rows + i * NCOL;
        fprintf(out, "# flux_%zu: teff %.10g logg %.10g feh %.10g alpha %.10g vsini %.10g vrad "
                "%.10g outside %.6g warn %u\n", i + 1, r[COL_TEFF], r[COL_LOGG], r[COL_FEH],
                r[COL_ALPHA], r[COL_VSINI], r[COL_VRAD], outside[i], warn[i]);
    }
}

static void text_arm(FILE *out, const struct run_info *ri, const struct eval_arm *arm, int first)
{
    const struct rvs_library_content *c = rvs_library_content(arm->lib);
    size_t np = c->npix, n = ri->nrows;
    if (!first)
        fputs("\n\n", out); /* gnuplot: a new data block (index) per arm */
    fprintf(out, "# setup %s: %zu pixels; columns: wavelength (vacuum Angstrom)", c->setup, np);
    for (size_t i = 0; i < n; i++)
        fprintf(out, " flux_%zu", i + 1);
    fputc('\n', out);
    for (size_t j = 0; j < np; j++) {
        fprintf(out, "%.12g", c->wave[j]);
        for (size_t i = 0; i < n; i++)
            fprintf(out, " %.9g", (double)arm->flux[i * np + j]);
        fputc('\n', out);
    }
}

/* ------------------------------------------------------------------ main */

/* Exit code of a failed library or device call. */
static int exit_code_of(int status)
{
    return rvs_run_status_is_fatal(status) && status != RVS_ERR_NOMEM ? EVAL_EXIT_DEVICE
                                                                       : EVAL_EXIT_FAILURE;
}

/* Everything one run holds; each step below returns an exit code. */
struct run {
    struct settings s;
    char *command, *libdir;
    double *rows; /* nrows x NCOL */
    size_t nrows, narms;
    struct eval_arm arms[EVAL_MAX_SETUPS];
    double *outside; /* per row: the largest penalty over the arms */
    unsigned *warn;  /* per row: EVAL_WARN_* of any arm */
    struct rvs_context *ctx;
};

static void run_free(struct run *r)
{
    for (size_t a = 0; a < EVAL_MAX_SETUPS; a++) {
        rvs_library_close(&r->arms[a].lib);
        free(r->arms[a].outside);
        free(r->arms[a].warn);
        free(r->arms[a].flux);
    }
    rvs_context_destroy(&r->ctx);
    free(r->rows);
    free(r->outside);
    free(r->warn);
    free(r->libdir);
    free(r->command);
}

/* The library directory (--template-lib, else <datadir>/default, as rvsfit-cl) and the setups
 * to evaluate (--setup, else all it holds). */
static int resolve_library(struct run *r)
{
    struct settings *s = &r->s;
    char present[EVAL_MAX_SETUPS][RVS_LIBRARY_STRLEN];
    size_t npresent = 0;
    if (s->template_lib)
        r->libdir = strdup(s->template_lib);
    else {
        const char *dd = rvs_data_dir();
        size_t len = strlen(dd) + sizeof "/default";
        r->libdir = malloc(len);
        if (r->libdir)
            snprintf(r->libdir, len, "%s/default", dd);
    }
    if (!r->libdir)
        return EVAL_EXIT_FAILURE;
    if (!is_dir(r->libdir) || library_setups(r->libdir, present, &npresent) != 0) {
        const char *why = is_dir(r->libdir) ? "cannot list the directory" : "no such directory";
        fprintf(stderr, PROG ": template library %s: %s; give --template-lib DIR (a directory "
                "holding rvsfit_<setup>.fits files)\n", r->libdir, why);
        return EVAL_EXIT_FAILURE;
    }
    if (npresent == 0) {
        fprintf(stderr, PROG ": %s holds no template library (no rvsfit_<setup>.fits files); "
                "give --template-lib DIR\n", r->libdir);
        return EVAL_EXIT_FAILURE;
    }
    if (s->nsetup == 0) {
        for (size_t i = 0; i < npresent; i++)
            memcpy(s->setups[i], present[i], sizeof present[i]);
        s->nsetup = npresent;
    }
    for (size_t a = 0; a < s->nsetup; a++) {
        int found = 0;
        for (size_t i = 0; i < npresent; i++)
            found |= strcmp(s->setups[a], present[i]) == 0;
        if (!found) {
            char list[EVAL_MAX_SETUPS * RVS_LIBRARY_STRLEN] = "";
            for (size_t i = 0; i < npresent; i++) {
                strcat(list, i ? ", " : "");
                strcat(list, present[i]);
            }
            return usage_error("unknown setup '%s': library %s has %s", s->setups[a], r->libdir,
                               list);
        }
    }
    r->narms = s->nsetup;
    return EVAL_EXIT_OK;
}

/* The parameter rows: the --params file, or the one set of the options. */
static int load_rows(struct run *r)
{
    const struct settings *s = &r->s;
    if (s->params_path)
        return read_params(s->params_path, s->have[COL_VRAD] ? s->single[COL_VRAD] : 0, &r->rows,
                           &r->nrows);
    r->rows = malloc(NCOL * sizeof *r->rows);
    if (!r->rows)
        return EVAL_EXIT_FAILURE;
    memcpy(r->rows, s->single, NCOL * sizeof *r->rows);
    r->nrows = 1;
    return EVAL_EXIT_OK;
}

/* Opens and validates every arm before the device starts; the rows must suit its mapping. */
static int open_arms(struct run *r)
{
    for (size_t a = 0; a < r->narms; a++) {
        struct eval_arm *arm = &r->arms[a];
        int status = rvs_library_open(r->libdir, r->s.setups[a], &arm->lib);
        if (status == RVS_OK)
            status = rvs_library_check_desi(arm->lib);
        if (status != RVS_OK) {
            fprintf(stderr, PROG ": cannot use the template library file for setup %s in %s "
                    "(see the message above)\n", r->s.setups[a], r->libdir);
            return EVAL_EXIT_FAILURE;
        }
        const struct rvs_library_content *c = rvs_library_content(arm->lib);
        /* parameters the library takes log10 of must be positive */
        for (size_t i = 0; i < r->nrows; i++)
            for (size_t p = 0; p < 4; p++) {
                double v = r->rows[i * NCOL + p];
                if (!c->params[p].log10 || v > 0)
                    continue;
                if (!r->s.params_path)
                    return usage_error("invalid --%s %g: must be > 0 (the library maps it "
                                       "through log10)", col_names[p], v);
                fprintf(stderr, PROG ": %s: row %zu: %s = %g must be > 0 (the library maps it "
                        "through log10)\n", r->s.params_path, i + 1, col_names[p], v);
                return EVAL_EXIT_USAGE;
            }
        arm->outside = calloc(r->nrows, sizeof *arm->outside);
        arm->warn = calloc(r->nrows, sizeof *arm->warn);
        if (!arm->outside || !arm->warn)
            return EVAL_EXIT_FAILURE;
    }
    r->outside = calloc(r->nrows, sizeof *r->outside);
    r->warn = calloc(r->nrows, sizeof *r->warn);
    return r->outside && r->warn ? EVAL_EXIT_OK : EVAL_EXIT_FAILURE;
}

/* rvspecfit's outside-grid penalty of every row in every arm (host; cheap), the flags, and one
 * warning for the run. */
static void flag_outside(struct run *r)
{
    size_t nout = 0, first = 0;
    for (size_t a = 0; a < r->narms; a++)
        for (size_t i = 0; i < r->nrows; i++) {
            double o = rvs_library_outside(r->arms[a].lib, r->rows + i * NCOL);
            r->arms[a].outside[i] = o;
            if (o > 0) {
                r->arms[a].warn[i] |= EVAL_WARN_OUTSIDE;
                r->arms[a].noutside++;
            }
            if (!(o <= r->outside[i]))
                r->outside[i] = o;
        }
    for (size_t i = 0; i < r->nrows; i++)
        if (r->outside[i] > 0) {
            r->warn[i] |= EVAL_WARN_OUTSIDE;
            if (nout++ == 0)
                first = i;
        }
    if (nout == 1 && r->nrows == 1)
        rvs_log(RVS_LOG_WARNING, MOD, "the parameters lie outside the training hull of %s "
                "(penalty %g): the emulator extrapolates there (WARN & 1)", r->libdir,
                r->outside[0]);
    else if (nout > 0)
        rvs_log(RVS_LOG_WARNING, MOD, "%zu of %zu parameter sets lie outside the training hull "
                "of %s (first: row %zu, penalty %g): the emulator extrapolates there (WARN & 1)",
                nout, r->nrows, r->libdir, first + 1, r->outside[first]);
}

/* The device part: every arm, all rows at once. */
static int evaluate(struct run *r)
{
    int status = rvs_context_create(&r->s.ctx, &r->ctx);
    if (status != RVS_OK) {
        fprintf(stderr, PROG ": no usable OpenCL device: %s (see " PROG " --help, rvsfit-cl "
                "--list-devices)\n", rvs_strerror(status));
        return EVAL_EXIT_DEVICE;
    }
    rvs_log(RVS_LOG_INFO, MOD, "device: %s (%s)", r->ctx->caps.device_name,
            r->ctx->caps.platform_name);
    for (size_t a = 0; a < r->narms; a++) {
        struct eval_arm *arm = &r->arms[a];
        size_t np = rvs_library_npix(arm->lib);
        arm->flux = rvs_malloc(r->nrows * np * sizeof *arm->flux);
        if (!arm->flux) {
            fprintf(stderr, PROG ": %zu spectra of %zu pixels do not fit in memory; split "
                    "--params\n", r->nrows, np);
            return EVAL_EXIT_FAILURE;
        }
        status = eval_arm(r->ctx, arm, r->rows, r->nrows);
        if (status != RVS_OK) {
            fprintf(stderr, PROG ": evaluating setup %s failed: %s\n", r->s.setups[a],
                    rvs_strerror(status));
            return exit_code_of(status);
        }
        for (size_t i = 0; i < r->nrows; i++)
            r->warn[i] |= arm->warn[i];
    }
    size_t nedge = 0, nbad = 0;
    for (size_t i = 0; i < r->nrows; i++) {
        nedge += (r->warn[i] & EVAL_WARN_EDGE) != 0;
        nbad += (r->warn[i] & EVAL_WARN_NONFINITE) != 0;
    }
    if (nedge)
        rvs_log(RVS_LOG_INFO, MOD, "%zu spectra: the Doppler shift moves an end of the template "
                "grid inside it; those pixels are NaN (WARN & 2)", nedge);
    if (nbad)
        rvs_log(RVS_LOG_WARNING, MOD, "%zu spectra hold non-finite emulator fluxes (WARN & 4)%s",
                nbad, r->ctx->use_fp64 ? "" : "; fp32 overflows above exp(88)");
    return EVAL_EXIT_OK;
}

/* Text to stdout, or to a temporary file renamed when complete. */
static int write_text(struct run *r)
{
    const char *out = r->s.out;
    int to_stdout = !out || strcmp(out, "-") == 0, code = EVAL_EXIT_OK;
    char *tmp = NULL;
    FILE *fp = stdout;
    struct run_info ri = {"(stdout)", r->libdir, r->command, r->ctx, r->nrows, r->rows};
    if (!to_stdout) {
        if (rvs_output_reserve_tmp(out, &tmp) != RVS_OK)
            return EVAL_EXIT_FAILURE;
        if (!(fp = fopen(tmp, "w"))) {
            fprintf(stderr, PROG ": cannot write %s: %s\n", tmp, strerror(errno));
            code = EVAL_EXIT_FAILURE;
            goto cleanup;
        }
        ri.path = tmp;
    }
    text_header(fp, &ri, r->arms, r->outside, r->warn);
    for (size_t a = 0; a < r->narms; a++)
        text_arm(fp, &ri, &r->arms[a], a == 0);
    int bad = fflush(fp) != 0 || ferror(fp);
    if (!to_stdout) {
        bad |= fclose(fp) != 0;
        fp = NULL;
    }
    if (bad) {
        fprintf(stderr, PROG ": cannot write %s: %s\n", to_stdout ? "stdout" : out,
                strerror(errno));
        code = EVAL_EXIT_FAILURE;
        goto cleanup;
    }
    if (!to_stdout) {
        if (rvs_output_commit(tmp, out) != RVS_OK) {
            code = EVAL_EXIT_FAILURE;
            goto cleanup;
        }
        free(tmp);
        tmp = NULL;
    }
cleanup:
    if (fp && fp != stdout)
        fclose(fp);
    if (tmp) {
        unlink(tmp);
        free(tmp);
    }
    return code;
}

/* FITS: PRIMARY, one table per arm, PARAMS, checksums; temporary name, then rename. */
static int write_fits(struct run *r)
{
    int status = RVS_OK, fst = 0;
    char *tmp = NULL;
    fitsfile *ff = NULL;
    struct run_info ri = {NULL, r->libdir, r->command, r->ctx, r->nrows, r->rows};
    RVS_TRY(rvs_output_reserve_tmp(r->s.out, &tmp));
    ri.path = tmp;
    /* cfitsio creates the file anew (the disk-file variant takes the name literally) */
    unlink(tmp);
    fits_create_diskfile(&ff, tmp, &fst);
    FITS_CHECK(tmp, "create the file");
    RVS_TRY(write_primary(ff, &ri, r->arms, r->narms, r->outside, r->warn));
    for (size_t a = 0; a < r->narms; a++)
        RVS_TRY(write_arm_hdu(ff, &ri, &r->arms[a]));
    RVS_TRY(write_params_hdu(ff, &ri, r->outside, r->warn));
    fits_close_file(ff, &fst);
    ff = NULL;
    FITS_CHECK(tmp, "finish writing the file");
    RVS_TRY(rvs_output_commit(tmp, r->s.out));
    free(tmp);
    tmp = NULL;
cleanup:
    if (ff) {
        int ignored = 0;
        fits_close_file(ff, &ignored);
    }
    if (tmp) {
        unlink(tmp);
        free(tmp);
    }
    if (status != RVS_OK) {
        fprintf(stderr, PROG ": cannot write %s (see the message above)\n", r->s.out);
        return EVAL_EXIT_FAILURE;
    }
    return EVAL_EXIT_OK;
}

int main(int argc, char **argv)
{
    /* OpenBLAS on its generic kernels (new CPUs): run again with vector ones (src/device/gemm.c) */
    rvs_openblas_reexec_if_generic(argv);
    struct option long_options[NUM_OPTIONS + 1];
    char short_options[3 * NUM_OPTIONS + 2];
    struct run r;
    memset(&r, 0, sizeof r);
    rvs_context_options_init(&r.s.ctx);
    r.s.log_level = RVS_LOG_WARNING;
    rvs_cli_getopt_tables(cli_options, NUM_OPTIONS, long_options, short_options);
    r.command = rvs_cli_join_arguments(PROG, argc, argv);
    rvs_cli_normalise_underscores(argc, argv);

    int code = EVAL_EXIT_OK, stop = 0, opt;
    opterr = 0;
    while (!stop && (opt = getopt_long(argc, argv, short_options, long_options, NULL)) != -1) {
        if (opt == ':')
            code = usage_error("option '%s' requires an argument", argv[optind - 1]);
        else if (opt == '?')
            code = usage_error("unrecognized option '%s'", argv[optind - 1]);
        else
            code = apply_option(&r.s, opt, optarg, &stop);
        if (code != EVAL_EXIT_OK)
            goto done;
    }
    if (stop)
        goto done;
    if (optind < argc) {
        code = usage_error("unexpected argument '%s'", argv[optind]);
        goto done;
    }
    if ((code = check_settings(&r.s)) != EVAL_EXIT_OK)
        goto done;
    rvs_log_set_level(r.s.log_level);

    if ((code = resolve_library(&r)) != EVAL_EXIT_OK || (code = load_rows(&r)) != EVAL_EXIT_OK ||
        (code = open_arms(&r)) != EVAL_EXIT_OK)
        goto done;
    flag_outside(&r);
    if ((code = evaluate(&r)) != EVAL_EXIT_OK)
        goto done;
    code = r.s.text ? write_text(&r) : write_fits(&r);
    if (code == EVAL_EXIT_OK && r.s.out && strcmp(r.s.out, "-") != 0)
        rvs_log(RVS_LOG_INFO, MOD, "wrote %s: %zu parameter set%s, %zu arm%s", r.s.out, r.nrows,
                r.nrows == 1 ? "" : "s", r.narms, r.narms == 1 ? "" : "s");
done:
    run_free(&r);
    if (code == EVAL_EXIT_OK && (fflush(stdout) != 0 || ferror(stdout))) {
        fprintf(stderr, PROG ": write error on stdout\n");
        code = EVAL_EXIT_FAILURE;
    }
    return code;
}
