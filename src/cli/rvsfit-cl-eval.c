/* rvsfit-cl-eval.c: writes the template spectra of a template library at given stellar
 * parameters, v sin i and (optionally) radial velocity, on the library's own wavelength grid
 * (doc/rvsfit-cl-eval.1). The spectra are those the fit's evaluation engine builds before the
 * spline onto the data grid: the NN emulator (rvs_nn_forward, which maps the parameters on the
 * device), then rotational broadening (rvs_rotation_apply_rows), then, for a non-zero velocity, the
 * natural cubic spline at lambda * sqrt((1 - b) / (1 + b)) (rvs_spline_eval; rvspecfit's evalRV).
 *
 * All parameter sets of a run are evaluated together: one NN forward pass, one rotation call and
 * one spline pass per arm (cut into a few passes only when device memory is short), never one
 * device call per spectrum (eval_device.c). Outputs (eval_output.c): a FITS file written
 * atomically (temporary name, rename) with checksums in every HDU, or text columns for quick
 * plots. This file: the options (one table, src/cli/options.h), the --params rows, the library,
 * and the steps of a run. */
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

#include "base/internal.h"
#include "eval.h"
#include "options.h"
#include "rvsfit.h"

const char *const col_names[NCOL] = {"teff", "logg", "feh", "alpha", "vsini", "vrad"};

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
        status = eval_arm_spectra(r->ctx, arm, r->rows, r->nrows);
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
    struct eval_output o = {r.libdir, r.command, r.ctx, r.nrows, r.rows,
                            r.arms, r.narms, r.outside, r.warn};
    code = r.s.text ? eval_write_text(&o, r.s.out) : eval_write_fits(&o, r.s.out);
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
