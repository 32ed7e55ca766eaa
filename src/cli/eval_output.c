/* eval_output.c: rvsfit-cl-eval's files: FITS (PRIMARY with the run's keywords, one table per
 * arm, PARAMS, checksums in every HDU) or text columns, each written to a temporary name and
 * renamed when complete. */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <fitsio.h>

#include "base/files.h"
#include "base/internal.h"
#include "eval.h"


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

/* Text to stdout, or to a temporary file renamed when complete. */
int eval_write_text(const struct eval_output *o, const char *out)
{
    int to_stdout = !out || strcmp(out, "-") == 0, code = EVAL_EXIT_OK;
    char *tmp = NULL;
    FILE *fp = stdout;
    struct run_info ri = {"(stdout)", o->libdir, o->command, o->ctx, o->nrows, o->rows};
    if (!to_stdout) {
        if (rvs_file_reserve_tmp(out, &tmp) != RVS_OK)
            return EVAL_EXIT_FAILURE;
        if (!(fp = fopen(tmp, "w"))) {
            fprintf(stderr, PROG ": cannot write %s: %s\n", tmp, strerror(errno));
            code = EVAL_EXIT_FAILURE;
            goto cleanup;
        }
        ri.path = tmp;
    }
    text_header(fp, &ri, o->arms, o->outside, o->warn);
    for (size_t a = 0; a < o->narms; a++)
        text_arm(fp, &ri, &o->arms[a], a == 0);
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
        if (rvs_file_commit(tmp, out) != RVS_OK) {
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
int eval_write_fits(const struct eval_output *o, const char *out)
{
    int status = RVS_OK, fst = 0;
    char *tmp = NULL;
    fitsfile *ff = NULL;
    struct run_info ri = {NULL, o->libdir, o->command, o->ctx, o->nrows, o->rows};
    RVS_TRY(rvs_file_reserve_tmp(out, &tmp));
    ri.path = tmp;
    /* cfitsio creates the file anew (the disk-file variant takes the name literally) */
    unlink(tmp);
    fits_create_diskfile(&ff, tmp, &fst);
    FITS_CHECK(tmp, "create the file");
    RVS_TRY(write_primary(ff, &ri, o->arms, o->narms, o->outside, o->warn));
    for (size_t a = 0; a < o->narms; a++)
        RVS_TRY(write_arm_hdu(ff, &ri, &o->arms[a]));
    RVS_TRY(write_params_hdu(ff, &ri, o->outside, o->warn));
    fits_close_file(ff, &fst);
    ff = NULL;
    FITS_CHECK(tmp, "finish writing the file");
    RVS_TRY(rvs_file_commit(tmp, out));
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
        fprintf(stderr, PROG ": cannot write %s (see the message above)\n", out);
        return EVAL_EXIT_FAILURE;
    }
    return EVAL_EXIT_OK;
}

