/* rvsfit-cl-lsf.c: prints, and on request sets, the templates' line-spread function (LSF) that
 * template-library files record (doc/template-library.md §2.1; this command: §9).
 *
 *   rvsfit-cl-lsf FILE...                          setup, format version, LSF, LSFRMAT per file
 *   rvsfit-cl-lsf --fwhm F|--sigma S|--unknown [--[no-]resolution-matrix-library] FILE...
 *
 * Setting loads each file with rvs_library_open_file (which validates it completely), copies its
 * content, sets content.lsf and writes it with rvs_library_write_arm in the current format
 * version. The writer writes only the keywords and HDUs it knows, so whatever else the old file
 * held (keywords of newer writers, a user's notes, HISTORY cards, extra HDUs) is copied over from
 * the old file afterwards; the new file is reloaded (checksums, every rule of §6) and only then
 * renamed over the old one. All of it happens in a private directory next to the file, so a
 * failure at any step leaves the old file as it was. Options come from one table
 * (src/cli/options.h). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fitsio.h>

#include "options.h"
#include "rvsfit.h"

#define PROG "rvsfit-cl-lsf"
#define MOD "lsf"

/* FWHM / sigma of a Gaussian: 2 sqrt(2 ln 2) */
#define LSF_FWHM_PER_SIGMA 2.3548200450309493
/* The format's bound on LSFSIG (§2.1: 0 < sigma < 100 Å). */
#define LSF_SIGMA_MAX 100.0

enum lsf_exit {
    LSF_EXIT_OK = 0,      /* every file was printed or rewritten */
    LSF_EXIT_FAILURE = 1, /* a file could not be read, was refused or could not be rewritten */
    LSF_EXIT_USAGE = 2    /* bad command line */
};

enum option_id {
    OPT_HELP = 'h',
    OPT_VERSION = 'V',
    OPT_QUIET = 'q',
    OPT_VERBOSE = 'v',
    OPT_FWHM = 256,
    OPT_SIGMA,
    OPT_UNKNOWN,
    OPT_RMAT,
    OPT_NO_RMAT,
    OPT_LOG_LEVEL
};

static const char *const group_set = "Setting the LSF (rewrites each FILE)";
static const char *const group_msg = "Messages";

static const struct rvs_cli_option cli_options[] = {
    {"fwhm", required_argument, OPT_FWHM, "F",
     "Gaussian of FWHM F Angstrom (sigma = F / 2.3548)", group_set},
    {"sigma", required_argument, OPT_SIGMA, "S", "Gaussian of sigma S Angstrom (0 < S < 100)",
     group_set},
    {"unknown", no_argument, OPT_UNKNOWN, NULL,
     "not known: LSFTYPE = 'UNKNOWN' (and LSFRMAT = F)", group_set},
    {"resolution-matrix-library", no_argument, OPT_RMAT, NULL,
     "LSFRMAT = T: made for the resolution-matrix fit", group_set},
    {"no-resolution-matrix-library", no_argument, OPT_NO_RMAT, NULL,
     "LSFRMAT = F: fitted directly (rvspecfit's default)", group_set},
    {"log-level", required_argument, OPT_LOG_LEVEL, "LEVEL",
     "DEBUG, INFO, WARNING (default), ERROR or CRITICAL", group_msg},
    {"quiet", no_argument, OPT_QUIET, NULL, "only errors", group_msg},
    {"verbose", no_argument, OPT_VERBOSE, NULL, "more messages (-v INFO, -vv DEBUG)", group_msg},
    {"help", no_argument, OPT_HELP, NULL, "show this help and exit", group_msg},
    {"version", no_argument, OPT_VERSION, NULL, "show the version and exit", group_msg},
};
enum { NUM_OPTIONS = sizeof cli_options / sizeof cli_options[0] };

/* What the command line asks of every file. */
struct request {
    int set_kind;            /* -1: keep the file's LSF; else enum rvs_library_lsf_kind */
    double sigma;            /* with RVS_LIBRARY_LSF_GAUSSIAN, as the writer records it */
    const char *kind_option; /* the option that chose set_kind, for messages */
    int rmat;                /* -1: keep the file's LSFRMAT (--unknown clears it); 0 or 1 */
};

static void print_usage_line(FILE *out)
{
    fprintf(out, "Usage: " PROG " [--fwhm F | --sigma S | --unknown] "
                 "[--[no-]resolution-matrix-library] FILE...\n");
}

static void print_help(void)
{
    print_usage_line(stdout);
    printf("Print the line-spread function (LSF) the templates of rvsfit-cl template-library\n"
           "files are convolved with, or set it. Each FILE is a library file rvsfit_<setup>.fits\n"
           "(doc/template-library.md, sections 2.1 and 9).\n\n"
           "Without a setting option, prints one line per FILE: its setup, format version, LSF\n"
           "and LSFRMAT. With one, rewrites each FILE in the current format version (%d) with\n"
           "that LSF; what the option does not name is kept (--fwhm alone keeps LSFRMAT,\n"
           "--resolution-matrix-library alone keeps the LSF), keywords and HDUs the library\n"
           "writer does not know are copied from the old file, and the old file is replaced\n"
           "only when the new one has been written and reloaded without error.\n\n"
           "LSFRMAT = T says the templates' LSF is narrower than the instrument's everywhere\n"
           "and rvsfit-cl applies each fibre's resolution matrix (less that LSF) by default;\n"
           "it needs a known LSF.\n",
           RVS_LIBRARY_FORMAT_VERSION);
    rvs_cli_print_options(stdout, cli_options, NUM_OPTIONS, 34);
    printf("\nrvspecfit's DESI templates: --fwhm 1.55 (desi_b, desi_r), --fwhm 1.8 (desi_z);\n"
           "its resolution-matrix library: --sigma 0.5 --resolution-matrix-library.\n\n"
           "Exit status:\n"
           "  0  every FILE was printed or rewritten\n"
           "  1  a FILE could not be read, was refused, or could not be rewritten (the others\n"
           "     are still processed; a FILE that failed is left as it was)\n"
           "  2  invalid command line\n\n"
           "Report bugs to: %s\n",
           PACKAGE_BUGREPORT);
}

static void print_version(void)
{
    printf(PROG " (rvsfit-cl) %s\n"
           "Prints and sets the LSF of rvsfit-cl template libraries.\n"
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
    return LSF_EXIT_USAGE;
}

/* A finite number filling the whole argument. */
static int parse_number(const char *arg, double *v)
{
    char *end;
    errno = 0;
    *v = strtod(arg, &end);
    return end != arg && *end == '\0' && errno == 0 && isfinite(*v) ? 0 : -1;
}

/* sigma as the library writer records it (LSFSIG with 12 significant digits), so that what
 * the file says after a rewrite is exactly what was asked for. */
static double round_like_writer(double sigma)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%.12g", sigma);
    return strtod(buf, NULL);
}

/* "format version 2, LSF Gaussian sigma 0.6582 A (FWHM 1.55 A), LSFRMAT T" */
static void describe(long version, const struct rvs_library_lsf *lsf, char *buf, size_t size)
{
    char d[160];
    rvs_library_lsf_describe(lsf, d, sizeof d);
    snprintf(buf, size, "format version %ld, LSF %s, LSFRMAT %c", version, d,
             lsf->resolution_matrix ? 'T' : 'F');
}

static int same_lsf(const struct rvs_library_lsf *a, const struct rvs_library_lsf *b)
{
    if (a->kind != b->kind || (a->resolution_matrix != 0) != (b->resolution_matrix != 0) ||
        a->nnodes != b->nnodes)
        return 0;
    if (a->kind == RVS_LIBRARY_LSF_GAUSSIAN && a->sigma != b->sigma)
        return 0;
    for (size_t j = 0; j < a->nnodes; j++)
        if (a->node_wave[j] != b->node_wave[j] || a->node_sigma[j] != b->node_sigma[j])
            return 0;
    return 1;
}

/* ------------------------------------------------------------------ carrying keywords over */

/* Logs cfitsio's message stack at DEBUG and clears it. */
static void drain_fits_messages(void)
{
    char msg[FLEN_ERRMSG];
    while (fits_read_errmsg(msg))
        rvs_log(RVS_LOG_DEBUG, MOD, "cfitsio: %s", msg);
}

/* Appends "name" to a comma-separated list (truncated quietly at its size). */
static void list_add(char *list, size_t size, const char *name)
{
    size_t n = strlen(list);
    if (n + 1 < size)
        snprintf(list + n, size - n, "%s%s", n ? ", " : "", name);
}

/* Keywords never copied from the old file: the LSF is what this command sets (an old LSFSIG
 * must not survive --unknown), and LONGSTRN is the writer's business (cfitsio adds it with its
 * own COMMENT cards when it wants the long-string convention announced). */
static int never_carried(const char *name)
{
    static const char *const names[] = {"LSFTYPE", "LSFSIG", "LSFRMAT", "LONGSTRN", "DATE",
                                        "RVSFVER"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(name, names[i]) == 0)
            return 1;
    return 0;
}

/* The COMMENT cards cfitsio and astropy write themselves (the FITS reference of a primary
 * header, the long-string convention's explanation): the writer's business, never copied. */
static int boilerplate(const char *card)
{
    static const char *const texts[] = {
        "FITS (Flexible Image Transport System) format is",
        "and Astrophysics', volume 376, page 359;",
        "This FITS file may contain long string keyword",
        "continued over multiple keywords.",
        "character at the end of each substring",
        "on the next keyword which has the name CONTINUE."};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        if (strstr(card, texts[i]))
            return 1;
    return 0;
}

/* Whether the current header of f holds this exact card (trailing blanks ignored). */
static int has_card(fitsfile *f, const char *card)
{
    int nkeys = 0, fst = 0;
    char c[FLEN_CARD];
    size_t n = strlen(card);
    while (n && card[n - 1] == ' ')
        n--;
    fits_get_hdrspace(f, &nkeys, NULL, &fst);
    for (int k = 1; k <= nkeys && fst == 0; k++) {
        fits_read_record(f, k, c, &fst);
        size_t m = strlen(c);
        while (m && c[m - 1] == ' ')
            m--;
        if (fst == 0 && m == n && strncmp(c, card, n) == 0)
            return 1;
    }
    fits_clear_errmsg();
    return 0;
}

/* Copies the header keywords of old's current HDU that new's current HDU lacks: user keywords
 * (string values through the long-string calls, so CONTINUE cards come along), old's HISTORY
 * cards when new has none, and COMMENT cards new lacks (boilerplate excepted). Structural,
 * checksum, HDU-identity and data-scaling keywords are the writer's. Adds what it copied to
 * `carried` ("KEY" or "HDU:KEY"). Returns the number of keywords copied, or -1 on a cfitsio
 * error (logged). */
static int carry_keywords(fitsfile *old, fitsfile *new, const char *hdu, const char *tmp_path,
                          char *carried, size_t carried_size)
{
    int nkeys = 0, fst = 0, copied = 0, new_has_history = 0;
    char card[FLEN_CARD], name[FLEN_KEYWORD], comment[FLEN_COMMENT];
    fits_get_hdrspace(new, &nkeys, NULL, &fst);
    for (int k = 1; k <= nkeys && fst == 0; k++) {
        fits_read_record(new, k, card, &fst);
        if (strncmp(card, "HISTORY ", 8) == 0)
            new_has_history = 1;
    }
    fits_get_hdrspace(old, &nkeys, NULL, &fst);
    if (fst) {
        rvs_log(RVS_LOG_ERROR, MOD, "%s: HDU %s: cannot read the header", tmp_path, hdu);
        drain_fits_messages();
        return -1;
    }
    for (int k = 1; k <= nkeys; k++) {
        int len = 0;
        fits_read_record(old, k, card, &fst);
        fits_get_keyname(card, name, &len, &fst);
        if (fst) {
            /* a card cfitsio cannot name is no keyword of ours: skip it */
            fst = 0;
            fits_clear_errmsg();
            continue;
        }
        if (strcmp(name, "HISTORY") == 0 || strcmp(name, "COMMENT") == 0) {
            int history = name[0] == 'H';
            if ((history && new_has_history) || (!history && (boilerplate(card) ||
                                                              has_card(new, card))))
                continue;
            fits_write_record(new, card, &fst);
            if (fst)
                break;
            char label[FLEN_KEYWORD + 72];
            snprintf(label, sizeof label, "%s%s%s", hdu[0] ? hdu : "", hdu[0] ? ":" : "", name);
            if (!strstr(carried, label))
                list_add(carried, carried_size, label);
            copied++;
            continue;
        }
        int cls = fits_get_keyclass(card);
        if (!name[0] || never_carried(name) || cls == TYP_STRUC_KEY || cls == TYP_CMPRS_KEY ||
            cls == TYP_SCAL_KEY || cls == TYP_NULL_KEY || cls == TYP_DIM_KEY ||
            cls == TYP_HDUID_KEY || cls == TYP_CKSUM_KEY || cls == TYP_COMM_KEY ||
            cls == TYP_CONT_KEY)
            continue;
        char have[FLEN_CARD];
        fits_read_card(new, name, have, &fst);
        if (fst == 0)
            continue; /* the writer wrote it: its value is the new file's */
        if (fst != KEY_NO_EXIST)
            break;
        fst = 0;
        fits_clear_errmsg();
        char value[FLEN_VALUE];
        fits_parse_value(card, value, comment, &fst);
        if (fst)
            break;
        if (value[0] == '\'') {
            char *longstr = NULL;
            fits_read_key_longstr(old, name, &longstr, comment, &fst);
            if (fst == 0)
                fits_write_key_longstr(new, name, longstr, comment[0] ? comment : NULL, &fst);
            if (longstr) {
                int fst_free = 0; /* fits_free_memory does nothing when given a failed status */
                fits_free_memory(longstr, &fst_free);
            }
        } else {
            fits_write_record(new, card, &fst);
        }
        if (fst)
            break;
        char label[FLEN_KEYWORD + 72];
        snprintf(label, sizeof label, "%s%s%s", hdu[0] ? hdu : "", hdu[0] ? ":" : "", name);
        list_add(carried, carried_size, label);
        copied++;
    }
    if (fst) {
        rvs_log(RVS_LOG_ERROR, MOD, "%s: HDU %s: cannot copy keyword %s from the old file",
                tmp_path, hdu[0] ? hdu : "PRIMARY", name);
        drain_fits_messages();
        return -1;
    }
    return copied;
}

/* Moves f to the HDU called extname: 1 when there is one, else 0. */
static int move_to_named(fitsfile *f, const char *extname)
{
    int fst = 0;
    fits_movnam_hdu(f, ANY_HDU, (char *)extname, 0, &fst);
    if (fst) {
        fits_clear_errmsg();
        return 0;
    }
    return 1;
}

/* Copies into the freshly written `tmp_path` what the writer left out of `old_path`: keywords
 * (carry_keywords) of every HDU both have, and whole HDUs only the old file has (an old LSF
 * table excepted: the new content decides the LSF). Checksums of every HDU it changes are
 * rewritten. `carried` lists what was copied. */
static int carry_over(const char *old_path, const char *tmp_path, char *carried,
                      size_t carried_size)
{
    fitsfile *old = NULL, *new = NULL;
    int fst = 0, status = RVS_OK, nold = 0;
    carried[0] = '\0';
    fits_open_diskfile(&old, old_path, READONLY, &fst);
    fits_open_diskfile(&new, tmp_path, READWRITE, &fst);
    fits_get_num_hdus(old, &nold, &fst);
    if (fst) {
        rvs_log(RVS_LOG_ERROR, MOD, "%s: cannot reopen it, or %s, to copy the keywords the "
                "library writer does not write", old_path, tmp_path);
        status = RVS_ERR_IO;
        goto cleanup;
    }
    for (int i = 1; i <= nold; i++) {
        char extname[FLEN_VALUE] = "";
        fits_movabs_hdu(old, i, NULL, &fst);
        if (i > 1) {
            fits_read_key_str(old, "EXTNAME", extname, NULL, &fst);
            if (fst == KEY_NO_EXIST) {
                fst = 0;
                fits_clear_errmsg();
                snprintf(extname, sizeof extname, "#%d (no EXTNAME)", i);
            }
        }
        if (fst)
            break;
        if (i == 1) {
            fits_movabs_hdu(new, 1, NULL, &fst);
        } else if (extname[0] == '#' || !move_to_named(new, extname)) {
            /* an HDU the writer does not know, or one without EXTNAME (no part of the format):
             * appended as it is, its checksums still valid (header and data copied byte for
             * byte); an old LSF table is not, the new LSF decides */
            if (strcmp(extname, "LSF") == 0)
                continue;
            int nnew = 0;
            fits_get_num_hdus(new, &nnew, &fst);
            fits_movabs_hdu(new, nnew, NULL, &fst);
            fits_copy_hdu(old, new, 0, &fst);
            if (fst)
                break;
            char label[FLEN_VALUE + 8];
            snprintf(label, sizeof label, "HDU %s", extname);
            list_add(carried, carried_size, label);
            continue;
        }
        if (fst)
            break;
        int n = carry_keywords(old, new, extname, tmp_path, carried, carried_size);
        if (n < 0) {
            status = RVS_ERR_IO;
            goto cleanup;
        }
        if (n > 0)
            fits_write_chksum(new, &fst);
        if (fst)
            break;
    }
    if (fst) {
        rvs_log(RVS_LOG_ERROR, MOD, "%s: cannot copy the keywords and HDUs of %s that the "
                "library writer does not write", tmp_path, old_path);
        status = RVS_ERR_IO;
    }
cleanup:
    drain_fits_messages();
    fst = 0;
    if (new)
        fits_close_file(new, &fst);
    if (fst && status == RVS_OK) {
        rvs_log(RVS_LOG_ERROR, MOD, "%s: cannot finish writing", tmp_path);
        status = RVS_ERR_IO;
    }
    fst = 0;
    if (old)
        fits_close_file(old, &fst);
    drain_fits_messages();
    return status;
}

/* A HISTORY card saying what this command changed, with the checksums updated. */
static int add_history(const char *tmp_path, const char *was, const char *now)
{
    fitsfile *f = NULL;
    int fst = 0;
    char text[640];
    snprintf(text, sizeof text, PROG " %s set %s (was %s)", PACKAGE_VERSION, now, was);
    fits_open_diskfile(&f, tmp_path, READWRITE, &fst);
    fits_write_history(f, text, &fst);
    fits_write_chksum(f, &fst);
    if (f) {
        int cst = 0;
        fits_close_file(f, &cst);
        if (!fst)
            fst = cst;
    }
    if (fst) {
        rvs_log(RVS_LOG_ERROR, MOD, "%s: cannot add the HISTORY card", tmp_path);
        drain_fits_messages();
        return RVS_ERR_IO;
    }
    return RVS_OK;
}

/* ------------------------------------------------------------------ per file */

static int print_file(const char *path)
{
    struct rvs_library_arm *arm = NULL;
    if (rvs_library_open_file(path, &arm) != RVS_OK) {
        fprintf(stderr, PROG ": %s: not printed (see the message above)\n", path);
        return LSF_EXIT_FAILURE;
    }
    const struct rvs_library_content *c = rvs_library_content(arm);
    char d[256];
    describe(c->format_version, &c->lsf, d, sizeof d);
    printf("%s: setup %s, %s\n", path, c->setup, d);
    rvs_library_close(&arm);
    return LSF_EXIT_OK;
}

/* The directory part of an absolute path (malloc'ed). */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, path, n);
        d[n] = '\0';
    }
    return d;
}

static int fsync_path(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

static int set_file(const char *path, const struct request *req)
{
    struct rvs_library_arm *arm = NULL, *check = NULL;
    char *real = NULL, *dir = NULL, *tmpdir = NULL, *tmp = NULL;
    char was[256], now[256], carried[1024];
    int code = LSF_EXIT_FAILURE, wrote = 0;

    if (rvs_library_open_file(path, &arm) != RVS_OK) {
        fprintf(stderr, PROG ": %s: left as it was (see the message above)\n", path);
        return LSF_EXIT_FAILURE;
    }
    struct rvs_library_content content = *rvs_library_content(arm);
    describe(content.format_version, &content.lsf, was, sizeof was);

    struct rvs_library_lsf lsf = content.lsf;
    if (req->set_kind == RVS_LIBRARY_LSF_UNKNOWN) {
        lsf = (struct rvs_library_lsf){.kind = RVS_LIBRARY_LSF_UNKNOWN, .sigma = NAN};
    } else if (req->set_kind == RVS_LIBRARY_LSF_GAUSSIAN) {
        lsf = (struct rvs_library_lsf){.kind = RVS_LIBRARY_LSF_GAUSSIAN,
                                       .sigma = req->sigma,
                                       .resolution_matrix = content.lsf.resolution_matrix};
    }
    if (req->rmat >= 0)
        lsf.resolution_matrix = req->rmat;
    if (lsf.kind == RVS_LIBRARY_LSF_UNKNOWN && lsf.resolution_matrix) {
        fprintf(stderr,
                PROG ": %s: --resolution-matrix-library needs a known LSF, and this file's is "
                     "unknown; give --fwhm F or --sigma S as well. The file is left as it was.\n",
                path);
        goto cleanup;
    }
    content.lsf = lsf;
    describe(RVS_LIBRARY_FORMAT_VERSION, &lsf, now, sizeof now);
    if (content.format_version == RVS_LIBRARY_FORMAT_VERSION &&
        same_lsf(&lsf, rvs_library_lsf(arm))) {
        printf("%s: setup %s, %s (unchanged)\n", path, content.setup, now);
        code = LSF_EXIT_OK;
        goto cleanup;
    }

    /* Write next to the file, in a directory of our own: the writer wants the file's own base
     * name, and rename() within one file system is atomic. A symbolic link stays a link: the file
     * it points to is rewritten. */
    real = realpath(path, NULL);
    dir = real ? dir_of(real) : NULL;
    const char *base = real ? strrchr(real, '/') + 1 : NULL;
    if (!real || !dir) {
        fprintf(stderr, PROG ": %s: cannot resolve the path: %s\n", path, strerror(errno));
        goto cleanup;
    }
    struct stat st;
    if (stat(real, &st) != 0) {
        fprintf(stderr, PROG ": %s: %s\n", path, strerror(errno));
        goto cleanup;
    }
    size_t n = strlen(dir) + 32;
    tmpdir = malloc(n);
    tmp = tmpdir ? malloc(n + strlen(base) + 2) : NULL;
    if (!tmp) {
        fprintf(stderr, PROG ": out of memory\n");
        goto cleanup;
    }
    snprintf(tmpdir, n, "%s/.%s.XXXXXX", strcmp(dir, "/") ? dir : "", PROG);
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr,
                PROG ": %s: cannot create a temporary directory in %s (%s); the file is rewritten "
                     "in its own directory, which must be writable. The file is left as it was.\n",
                path, dir, strerror(errno));
        free(tmpdir);
        tmpdir = NULL;
        goto cleanup;
    }
    sprintf(tmp, "%s/%s", tmpdir, base);
    if (rvs_library_write_arm(tmp, &content, 0) != RVS_OK) {
        fprintf(stderr, PROG ": %s: the new file could not be written (see the message above); "
                        "the file is left as it was\n",
                path);
        goto cleanup;
    }
    wrote = 1;
    if (carry_over(real, tmp, carried, sizeof carried) != RVS_OK ||
        add_history(tmp, was, now) != RVS_OK) {
        fprintf(stderr, PROG ": %s: left as it was\n", path);
        goto cleanup;
    }
    if (carried[0])
        rvs_log(RVS_LOG_INFO, MOD,
                "%s: kept from the old file what the library writer does not write: %s", path,
                carried);
    /* the new file must load, with the LSF asked for, before it replaces the old one */
    if (rvs_library_open_file(tmp, &check) != RVS_OK ||
        !same_lsf(rvs_library_lsf(check), &lsf)) {
        fprintf(stderr, PROG ": %s: the rewritten file does not load back as written; the file "
                        "is left as it was. Please report this.\n",
                path);
        goto cleanup;
    }
    rvs_library_close(&check);
    if (chmod(tmp, st.st_mode & 07777) != 0 || fsync_path(tmp) != 0 || rename(tmp, real) != 0) {
        fprintf(stderr, PROG ": %s: cannot replace it with %s: %s; the file is left as it was\n",
                path, tmp, strerror(errno));
        goto cleanup;
    }
    wrote = 0;
    printf("%s: setup %s, %s (was: %s)\n", path, content.setup, now, was);
    code = LSF_EXIT_OK;
cleanup:
    if (wrote && tmp)
        unlink(tmp);
    if (tmpdir && rmdir(tmpdir) != 0)
        rvs_log(RVS_LOG_WARNING, MOD, "cannot remove the temporary directory %s: %s", tmpdir,
                strerror(errno));
    rvs_library_close(&check);
    rvs_library_close(&arm);
    free(tmp);
    free(tmpdir);
    free(dir);
    free(real);
    return code;
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    struct option long_options[NUM_OPTIONS + 1];
    char short_options[3 * NUM_OPTIONS + 2];
    rvs_cli_getopt_tables(cli_options, NUM_OPTIONS, long_options, short_options);
    rvs_cli_normalise_underscores(argc, argv); /* "--log_level" -> "--log-level" */

    struct request req = {.set_kind = -1, .sigma = NAN, .kind_option = NULL, .rmat = -1};
    int verbosity = 0, log_level = -1, opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, short_options, long_options, NULL)) != -1) {
        double v;
        switch (opt) {
        case OPT_HELP:
            print_help();
            return fflush(stdout) == 0 ? LSF_EXIT_OK : LSF_EXIT_FAILURE;
        case OPT_VERSION:
            print_version();
            return fflush(stdout) == 0 ? LSF_EXIT_OK : LSF_EXIT_FAILURE;
        case OPT_FWHM:
        case OPT_SIGMA:
        case OPT_UNKNOWN: {
            const char *name = opt == OPT_FWHM ? "--fwhm" : opt == OPT_SIGMA ? "--sigma"
                                                                              : "--unknown";
            if (req.kind_option && strcmp(req.kind_option, name) != 0)
                return usage_error("%s and %s both set the LSF: give one of --fwhm, --sigma, "
                                   "--unknown",
                                   req.kind_option, name);
            req.kind_option = name;
            if (opt == OPT_UNKNOWN) {
                req.set_kind = RVS_LIBRARY_LSF_UNKNOWN;
                break;
            }
            double max = opt == OPT_FWHM ? LSF_SIGMA_MAX * LSF_FWHM_PER_SIGMA : LSF_SIGMA_MAX;
            if (parse_number(optarg, &v) != 0 || !(v > 0 && v < max))
                return usage_error("%s needs a number of Angstrom in (0, %.4g), got '%s'", name,
                                   max, optarg);
            req.set_kind = RVS_LIBRARY_LSF_GAUSSIAN;
            req.sigma = round_like_writer(opt == OPT_FWHM ? v / LSF_FWHM_PER_SIGMA : v);
            break;
        }
        case OPT_RMAT:
            req.rmat = 1;
            break;
        case OPT_NO_RMAT:
            req.rmat = 0;
            break;
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
    if (optind >= argc)
        return usage_error("no FILE given: name one or more rvsfit_<setup>.fits files");
    if (req.set_kind == RVS_LIBRARY_LSF_UNKNOWN && req.rmat == 1)
        return usage_error("--unknown with --resolution-matrix-library: a library made for the "
                           "resolution-matrix fit must state its LSF (--fwhm or --sigma)");
    if (req.set_kind == RVS_LIBRARY_LSF_UNKNOWN)
        req.rmat = 0;
    if (log_level < 0)
        log_level = verbosity >= 2 ? RVS_LOG_DEBUG : verbosity == 1 ? RVS_LOG_INFO
                                                                     : RVS_LOG_WARNING;
    rvs_log_set_level(log_level);

    int setting = req.set_kind >= 0 || req.rmat >= 0, code = LSF_EXIT_OK;
    for (int i = optind; i < argc; i++) {
        int rc = setting ? set_file(argv[i], &req) : print_file(argv[i]);
        if (rc != LSF_EXIT_OK)
            code = LSF_EXIT_FAILURE;
        fflush(stdout);
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, PROG ": cannot write the standard output\n");
        code = LSF_EXIT_FAILURE;
    }
    return code;
}
