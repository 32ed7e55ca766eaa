/* test_output.c: the rvtab/rvmod writers (src/desi/output.c) and their file handling
 * (src/desi/output_files.c).
 *
 * Without data: output names (subdirectories, --no-subdirs, .gz, prefixes, "." and ".."),
 * --process-status-file lines. With the DESI EDR files under ../shared/data: outputs for a coadd
 * (rows 0, 2, 3 = BAD_SPECTRUM, 4) and a spectra file (arms b, r only, redrock values, no CCF)
 * checked by tests/check_output_schema.py (Debian's /usr/bin/python3 + astropy) against
 * tests/output_schema.txt; the empty cases; --skipexisting; replacing an existing output; and
 * failures that must leave nothing behind: an unwritable output directory, an input whose
 * EXP_FIBERMAP is truncated (the failure comes after most HDUs are written), an input whose
 * FIBERMAP has a variable-length column, a row outside the input.
 * The fit values follow the formulas documented in check_output_schema.py. */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fitsio.h>

#include "rvsfit.h"
#include "testutil.h"

/* snprintf into an array, failing the test outright if the text does not fit. */
#define FMT(buf, ...)                                                                              \
    do {                                                                                           \
        if (snprintf((buf), sizeof(buf), __VA_ARGS__) >= (int)sizeof(buf)) {                      \
            fprintf(stderr, "FAIL: path too long at %s:%d\n", __FILE__, __LINE__);                 \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static char scratch[4096];
static char srcdir[4096];
static const char *python = "/usr/bin/python3";

static char *path_join(const char *a, const char *b)
{
    static char buf[8][4096];
    static int slot;
    char *p = buf[slot++ % 8];
    if (snprintf(p, 4096, "%s/%s", a, b) >= 4096) {
        fprintf(stderr, "FAIL: path too long: %s/%s\n", a, b);
        exit(1);
    }
    return p;
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static ino_t inode_of(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_ino : 0;
}

/* Number of entries in `dir` (other than . and ..); with `tmp_only`, only ".tmp" names. */
static int count_entries(const char *dir, int tmp_only)
{
    DIR *d = opendir(dir);
    int n = 0;
    if (!d)
        return 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        size_t len = strlen(e->d_name);
        if (!tmp_only || (len > 4 && !strcmp(e->d_name + len - 4, ".tmp")))
            n++;
    }
    closedir(d);
    return n;
}

static char *read_text(const char *path)
{
    static char buf[8192];
    FILE *f = fopen(path, "r");
    buf[0] = '\0';
    if (f) {
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        buf[n] = '\0';
        fclose(f);
    }
    return buf;
}

/* ------------------------------------------------------------------ names */

static void expect_paths(const struct rvs_output_naming *n, const char *input, const char *tab,
                         const char *mod)
{
    char *t = NULL, *m = NULL;
    int st = rvs_output_paths(n, input, &t, &m);
    CHECK(st == RVS_OK, "paths for %s: %s", input, rvs_strerror(st));
    if (st == RVS_OK) {
        CHECK(!strcmp(t, tab), "tab path for %s: %s, want %s", input, t, tab);
        CHECK(!strcmp(m, mod), "mod path for %s: %s, want %s", input, m, mod);
    }
    free(t);
    free(m);
}

static void test_names(void)
{
    struct rvs_output_naming n;
    rvs_output_naming_init(&n);
    n.output_dir = "out";
    expect_paths(&n, "/a/b/c/coadd-sv3-dark-1.fits", "out/b/c/rvtab_coadd-sv3-dark-1.fits",
                 "out/b/c/rvmod_coadd-sv3-dark-1.fits");
    expect_paths(&n, "/a/b/c/coadd-x.fits.gz", "out/b/c/rvtab_coadd-x.fits",
                 "out/b/c/rvmod_coadd-x.fits");
    expect_paths(&n, "/b/c//./d/../coadd-x.fits", "out/b/c/rvtab_coadd-x.fits",
                 "out/b/c/rvmod_coadd-x.fits");
    n.output_dir = "out/";
    expect_paths(&n, "/b/c/x.fits", "out/b/c/rvtab_x.fits", "out/b/c/rvmod_x.fits");
    n.output_dir = "/";
    expect_paths(&n, "/b/c/x.fits", "/b/c/rvtab_x.fits", "/b/c/rvmod_x.fits");
    n.output_dir = NULL; /* default "." */
    expect_paths(&n, "/b/c/x.fits", "./b/c/rvtab_x.fits", "./b/c/rvmod_x.fits");

    /* Relative inputs take their parents from the current directory. */
    char cwd[4096], want_t[8192], want_m[8192];
    CHECK(getcwd(cwd, sizeof(cwd)) != NULL, "getcwd");
    const char *last = strrchr(cwd, '/') + 1;
    n.output_dir = "o";
    FMT(want_t, "o/%s/sub/rvtab_f.fits", last);
    FMT(want_m, "o/%s/sub/rvmod_f.fits", last);
    expect_paths(&n, "sub/./dir/../f.fits", want_t, want_m);

    n.no_subdirs = 1;
    n.tab_prefix = "TAB";
    n.mod_prefix = "MOD";
    expect_paths(&n, "/a/b/c/coadd-x.fits.gz", "o/TAB_coadd-x.fits", "o/MOD_coadd-x.fits");
    expect_paths(&n, "/x.fits", "o/TAB_x.fits", "o/MOD_x.fits");
    expect_paths(&n, "x.fits", "o/TAB_x.fits", "o/MOD_x.fits");

    /* Too few parents with subdirectories, and inputs without a file name. */
    char *t = NULL, *m = NULL;
    n.no_subdirs = 0;
    CHECK(rvs_output_paths(&n, "/c/x.fits", &t, &m) == RVS_ERR_INVALID_ARGUMENT && !t && !m,
          "one parent directory must be refused with subdirectories");
    CHECK(rvs_output_paths(&n, "/a/b/", &t, &m) == RVS_ERR_INVALID_ARGUMENT,
          "a directory is not an input file");
    CHECK(rvs_output_paths(&n, "", &t, &m) == RVS_ERR_INVALID_ARGUMENT, "empty input name");
}

/* ------------------------------------------------------------------ status file */

static void test_status_file(void)
{
    const char *path = path_join(scratch, "status.txt");
    CHECK(rvs_output_status_append(path, "x.fits", RVS_OUTPUT_SUCCESS, 1, 0.5) == RVS_OK,
          "append creates the status file");
    CHECK(rvs_output_status_start(path) == RVS_OK, "status start");
    CHECK(!strcmp(read_text(path), ""), "status start empties the file");
    CHECK(rvs_output_status_append(path, "a/coadd-1.fits", RVS_OUTPUT_SUCCESS, 3, 1.234) ==
              RVS_OK,
          "append SUCCESS");
    CHECK(rvs_output_status_append(path, "a/coadd-2.fits", RVS_OUTPUT_FAILURE, 0, 0.5) == RVS_OK,
          "append FAILURE");
    CHECK(rvs_output_status_append(path, "a/coadd-3.fits", RVS_OUTPUT_EXISTING, -1, 0) == RVS_OK,
          "append EXISTING");
    const char *want = "a/coadd-1.fits SUCCESS 3 1.23\n"
                       "a/coadd-2.fits FAILURE 0 0.50\n"
                       "a/coadd-3.fits EXISTING -1 0.00\n";
    const char *got = read_text(path);
    CHECK(!strcmp(got, want), "status file:\n%s\nwant:\n%s", got, want);
    CHECK(rvs_output_status_append(path_join(scratch, "no/such/dir/status"), "x",
                                   RVS_OUTPUT_SUCCESS, 1, 1) == RVS_ERR_IO,
          "an unwritable status file is an I/O error");
}

/* ------------------------------------------------------------------ writing */

static const struct rvs_output_dep test_deps[] = {
    {"OpenCL", "Portable Computing Language 3.1 (pthread)"}, {"CLBlast", "1.6.0"},
    {"clFFT", "2.12.2"}};
static const struct rvs_output_template test_templates[] = {
    {"desi_b", "r1a2b3", "0.7.1"}, {"desi_r", "r1a2b3", "0.7.1"}, {"desi_z", "r1a2b3", "0.7.1"}};
/* Longer than one card: written with the long-string convention. */
static const char *test_cmdline =
    "rvsfit-cl --config /some/long/path/to/the/configuration/directory/config.yaml "
    "--output-dir /some/long/output/directory --fitarm b,r,z --device 0 coadd-sv3-dark-26065.fits";

/* Rows and models per the formulas in check_output_schema.py. */
struct fit_set {
    struct rvs_output_row rows[8];
    float *model[RVS_DESI_NARMS];
    size_t nrows;
};

static void fill_rows(struct fit_set *fs, const long *input_rows, size_t n, long bad_row,
                      unsigned arms, int with_rr, double vrad_offset)
{
    static const long nwave[RVS_DESI_NARMS] = {2751, 2326, 2881};
    fs->nrows = n;
    for (size_t k = 0; k < n; k++) {
        struct rvs_output_row *r = &fs->rows[k];
        long i = input_rows[k];
        rvs_output_row_init(r, i);
        for (int a = 0; a < RVS_DESI_NARMS; a++)
            r->sn[a] = (float)(1.5 * (a + 1) + i);
        if (with_rr) {
            r->rr_z = 0.001 * (i + 1);
            strcpy(r->rr_spectype, "STAR");
            strcpy(r->rr_subtype, "G2");
        }
        if (i == bad_row) {
            r->rvs_warn = RVS_WARN_BAD_SPECTRUM;
            r->vrad = 123; /* must not reach the file */
            continue;
        }
        r->vrad = 10.0 * (i + 1) + vrad_offset;
        r->vrad_err = 0.5;
        r->vrad_skew = 0.01;
        r->vrad_kurt = -0.02;
        r->vsini = 3;
        r->logg = 4.4;
        r->logg_err = 0.1;
        r->teff = 5000.0 + i;
        r->teff_err = 50;
        r->feh = -0.5;
        r->feh_err = 0.05;
        r->alphafe = 0.1;
        r->alphafe_err = 0.03;
        r->npix_tot = 7000 + i;
        r->param_prior = i % 16;
        r->chisq_tot = r->chisq_c_tot = 0;
        for (int a = 0; a < RVS_DESI_NARMS; a++)
            if (arms & (1u << a)) {
                r->chisq[a] = 100.0 * (a + 1) + i;
                r->chisq_c[a] = r->chisq[a] + 60;
                r->chisq_tot += r->chisq[a];
                r->chisq_c_tot += r->chisq_c[a];
            }
        r->vrad_ccf = r->vrad + 1;
        r->rvs_warn = (i == 2) ? RVS_WARN_PARAM : 0;
    }
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        fs->model[a] = NULL;
        if (!(arms & (1u << a)))
            continue;
        fs->model[a] = calloc(n * (size_t)nwave[a] + 1, sizeof(float));
        for (size_t k = 0; k < n; k++)
            for (long j = 0; j < nwave[a]; j++)
                fs->model[a][k * (size_t)nwave[a] + (size_t)j] =
                    (float)((input_rows[k] + 1) + a + 0.001 * j);
    }
}

static void free_models(struct fit_set *fs)
{
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        free(fs->model[a]);
}

static void make_request(struct rvs_output_request *req, struct fit_set *fs, const char *input,
                         const char *tab, const char *mod, unsigned arms)
{
    static const long nwave[RVS_DESI_NARMS] = {2751, 2326, 2881};
    rvs_output_request_init(req);
    req->input_path = input;
    req->tab_path = tab;
    req->mod_path = mod;
    req->arms = arms;
    req->nrows = fs->nrows;
    req->rows = fs->rows;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        req->model[a] = fs->model[a];
        req->nwave[a] = nwave[a];
    }
    req->deps = test_deps;
    req->ndeps = 3;
    req->templates = test_templates;
    req->ntemplates = 3;
    req->config_path = "/etc/rvsfit/config.yaml";
    req->command_line = test_cmdline;
    req->device = "pthread-cpu";
    req->driver = "3.1";
}

/* Runs check_output_schema.py; returns its exit status. */
static int run_schema_check(const char *input, const char *tab, const char *mod,
                            const char *extra)
{
    char cmd[16384];
    snprintf(cmd, sizeof(cmd),
             "'%s' '%s/tests/check_output_schema.py' --schema '%s/tests/output_schema.txt' "
             "--input '%s' --tab '%s' --mod '%s' --header 'RVS_CMD=%s' "
             "--header 'RVS_CONF=/etc/rvsfit/config.yaml' --header 'RVS_DEV=pthread-cpu' "
             "--header 'RVS_DRV=3.1' --header 'DEPNAM02=OpenCL' "
             "--header 'DEPVER02=Portable Computing Language 3.1 (pthread)' "
             "--header 'TMPLCON2=desi_z' --header 'TMPLREV0=r1a2b3' --header 'TMPLSVR1=0.7.1' %s",
             python, srcdir, srcdir, input, tab, mod, test_cmdline, extra);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 1;
}

static double read_first_vrad(const char *tab)
{
    fitsfile *f = NULL;
    int fst = 0, col = 0, anynul = 0;
    double v = NAN;
    fits_open_file(&f, tab, READONLY, &fst);
    fits_movnam_hdu(f, BINARY_TBL, "RVTAB", 0, &fst);
    fits_get_colnum(f, CASESEN, "VRAD", &col, &fst);
    fits_read_col(f, TDOUBLE, col, 1, 1, 1, NULL, &v, &anynul, &fst);
    if (f) {
        int st2 = 0;
        fits_close_file(f, &st2);
    }
    fits_clear_errmsg();
    return fst ? NAN : v;
}

/* A copy of `src` with HDUs in a new order (EXP_FIBERMAP last), then cut in the middle of
 * EXP_FIBERMAP's data: everything before it stays readable. */
static int make_truncated_input(const char *src, const char *dst)
{
    fitsfile *in = NULL, *out = NULL;
    int fst = 0, nhdu = 0, exp_hdu = 0;
    char name[4096];
    FMT(name, "!%s", dst);
    fits_open_file(&in, src, READONLY, &fst);
    fits_create_file(&out, name, &fst);
    fits_get_num_hdus(in, &nhdu, &fst);
    for (int h = 1; h <= nhdu && !fst; h++) {
        char ext[FLEN_VALUE] = "";
        fits_movabs_hdu(in, h, NULL, &fst);
        if (h > 1)
            fits_read_key_str(in, "EXTNAME", ext, NULL, &fst);
        if (!strcmp(ext, "EXP_FIBERMAP")) {
            exp_hdu = h;
            continue;
        }
        fits_copy_hdu(in, out, 0, &fst);
    }
    if (exp_hdu) {
        fits_movabs_hdu(in, exp_hdu, NULL, &fst);
        fits_copy_hdu(in, out, 0, &fst);
    }
    fits_close_file(out, &fst);
    fits_close_file(in, &fst);
    if (fst || !exp_hdu)
        return -1;
    struct stat st;
    if (stat(dst, &st) != 0)
        return -1;
    /* The last 2880-byte block holds EXP_FIBERMAP's rows; keep a little of it. */
    return truncate(dst, st.st_size - 2880 + 100);
}

/* A copy of `src` whose FIBERMAP gains a variable-length column. */
static int make_vla_input(const char *src, const char *dst)
{
    fitsfile *in = NULL, *out = NULL;
    int fst = 0, ncols = 0;
    char name[4096];
    FMT(name, "!%s", dst);
    fits_open_file(&in, src, READONLY, &fst);
    fits_create_file(&out, name, &fst);
    fits_copy_file(in, out, 1, 1, 1, &fst);
    fits_close_file(in, &fst);
    fits_movnam_hdu(out, BINARY_TBL, "FIBERMAP", 0, &fst);
    fits_get_num_cols(out, &ncols, &fst);
    fits_insert_col(out, ncols + 1, "EXTRA_VLA", "1PE(3)", &fst);
    float v[3] = {1, 2, 3};
    fits_write_col(out, TFLOAT, ncols + 1, 1, 1, 3, v, &fst);
    fits_close_file(out, &fst);
    return fst ? -1 : 0;
}

static void test_with_data(const char *edr)
{
    char coadd[4096], spectra[4096];
    FMT(coadd, "%s/coadd-sv3-dark-26065.fits", edr);
    FMT(spectra, "%s/spectra-sv3-dark-26065.fits", edr);
    struct rvs_output_naming naming;
    rvs_output_naming_init(&naming);
    naming.output_dir = path_join(scratch, "out");
    char *tab = NULL, *mod = NULL;
    int st;

    /* 1. Coadd, subdirectories: rows 0, 2, 3 (bad), 4; all arms; CCF start. */
    CHECK(rvs_output_paths(&naming, coadd, &tab, &mod) == RVS_OK, "coadd paths");
    /* Parents: the last two directories of the data path (no symbolic links there). */
    char edr_abs[4096], want_tail[8192];
    CHECK(realpath(edr, edr_abs) != NULL, "realpath %s", edr);
    char *last = strrchr(edr_abs, '/');
    *last = '\0';
    char *parent2 = strrchr(edr_abs, '/') + 1;
    FMT(want_tail, "/out/%s/%s/rvtab_coadd-sv3-dark-26065.fits", parent2,
             last + 1);
    CHECK(strstr(tab, want_tail) != NULL && !strcmp(strstr(tab, want_tail), want_tail),
          "coadd output %s does not end in %s", tab, want_tail);
    CHECK(rvs_output_exist(tab, mod) == 0, "outputs must not exist yet");
    long rows1[] = {0, 2, 3, 4};
    struct fit_set fs;
    struct rvs_output_request req;
    fill_rows(&fs, rows1, 4, 3, RVS_DESI_ARMS_ALL, 0, 0);
    make_request(&req, &fs, coadd, tab, mod, RVS_DESI_ARMS_ALL);
    st = rvs_output_write(&req);
    CHECK(st == RVS_OK, "coadd write: %s", rvs_strerror(st));
    CHECK(rvs_output_exist(tab, mod) == 1, "coadd outputs exist (skipexisting sees them)");
    char dir[4096];
    FMT(dir, "%.*s", (int)(strrchr(tab, '/') - tab), tab);
    CHECK(count_entries(dir, 0) == 2 && count_entries(dir, 1) == 0,
          "exactly the two outputs in %s, no temporary files", dir);
    CHECK(run_schema_check(coadd, tab, mod, "--rows 0,2,3,4 --bad 3 --values") == 0,
          "coadd outputs fail the schema check");

    /* 2. Replacing an existing output: a new inode with the new content, nothing else left. */
    ino_t old_tab = inode_of(tab), old_mod = inode_of(mod);
    free_models(&fs);
    fill_rows(&fs, rows1, 4, 3, RVS_DESI_ARMS_ALL, 0, 1000.0);
    make_request(&req, &fs, coadd, tab, mod, RVS_DESI_ARMS_ALL);
    CHECK(rvs_output_write(&req) == RVS_OK, "rewrite");
    CHECK(inode_of(tab) != old_tab && inode_of(mod) != old_mod,
          "an existing output is replaced by rename, not rewritten in place");
    CHECK(read_first_vrad(tab) == 1010.0, "rewritten VRAD %g", read_first_vrad(tab));
    CHECK(count_entries(dir, 0) == 2, "no temporary files after a rewrite");

    /* 3. A failed write over existing outputs leaves them as they were. */
    char truncated[4096];
    FMT(truncated, "%s/truncated-coadd.fits", scratch);
    CHECK(make_truncated_input(coadd, truncated) == 0, "cannot craft the truncated input");
    old_tab = inode_of(tab);
    old_mod = inode_of(mod);
    make_request(&req, &fs, truncated, tab, mod, RVS_DESI_ARMS_ALL);
    fprintf(stderr, "(expected errors follow: truncated EXP_FIBERMAP)\n");
    st = rvs_output_write(&req);
    CHECK(st != RVS_OK, "a truncated EXP_FIBERMAP must fail the write");
    CHECK(inode_of(tab) == old_tab && inode_of(mod) == old_mod &&
              read_first_vrad(tab) == 1010.0,
          "a failed write must leave the existing outputs untouched");
    CHECK(count_entries(dir, 0) == 2, "a failed write leaves no temporary file in %s", dir);

    /* 4. The same failure into a fresh directory leaves nothing; so does a VLA FIBERMAP. */
    char *t2 = NULL, *m2 = NULL;
    struct rvs_output_naming flat = naming;
    flat.no_subdirs = 1;
    flat.output_dir = path_join(scratch, "fail");
    CHECK(rvs_output_paths(&flat, truncated, &t2, &m2) == RVS_OK, "paths");
    make_request(&req, &fs, truncated, t2, m2, RVS_DESI_ARMS_ALL);
    CHECK(rvs_output_write(&req) != RVS_OK, "truncated input must fail");
    CHECK(count_entries(flat.output_dir, 0) == 0, "failed write left files in %s",
          flat.output_dir);
    free(t2);
    free(m2);
    char vla[4096];
    FMT(vla, "%s/vla-coadd.fits", scratch);
    CHECK(make_vla_input(coadd, vla) == 0, "cannot craft the VLA input");
    CHECK(rvs_output_paths(&flat, vla, &t2, &m2) == RVS_OK, "paths");
    make_request(&req, &fs, vla, t2, m2, RVS_DESI_ARMS_ALL);
    fprintf(stderr, "(expected errors follow: variable-length FIBERMAP column)\n");
    CHECK(rvs_output_write(&req) == RVS_ERR_FORMAT, "a VLA FIBERMAP must be a format error");
    CHECK(count_entries(flat.output_dir, 0) == 0, "VLA failure left files in %s",
          flat.output_dir);

    /* 5. A row outside the input, and an impossible request. */
    struct rvs_output_row bad_row;
    rvs_output_row_init(&bad_row, 5);
    make_request(&req, &fs, coadd, t2, m2, RVS_DESI_ARMS_ALL);
    req.rows = &bad_row;
    req.nrows = 1;
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        req.model[a] = NULL;
    CHECK(rvs_output_write(&req) == RVS_ERR_INVALID_ARGUMENT, "row 5 of 5 must be refused");
    req.arms = 0;
    CHECK(rvs_output_write(&req) == RVS_ERR_INVALID_ARGUMENT, "no arms must be refused");
    CHECK(count_entries(flat.output_dir, 0) == 0, "refused requests left files");
    free(t2);
    free(m2);

    /* 6. Unwritable output directory: a path through a regular file (fails even as root), and
     * a read-only directory when not root. */
    char blocker[4096];
    FMT(blocker, "%s/blocker", scratch);
    FILE *bf = fopen(blocker, "w");
    if (bf)
        fclose(bf);
    flat.output_dir = path_join(blocker, "sub");
    CHECK(rvs_output_paths(&flat, coadd, &t2, &m2) == RVS_OK, "paths");
    make_request(&req, &fs, coadd, t2, m2, RVS_DESI_ARMS_ALL);
    fprintf(stderr, "(expected errors follow: unwritable output directory)\n");
    CHECK(rvs_output_write(&req) == RVS_ERR_IO, "an output dir below a file must fail with I/O");
    free(t2);
    free(m2);
    if (geteuid() != 0) {
        char ro[4096];
        FMT(ro, "%s/readonly", scratch);
        mkdir(ro, 0555);
        flat.output_dir = ro;
        CHECK(rvs_output_paths(&flat, coadd, &t2, &m2) == RVS_OK, "paths");
        make_request(&req, &fs, coadd, t2, m2, RVS_DESI_ARMS_ALL);
        CHECK(rvs_output_write(&req) == RVS_ERR_IO, "a read-only output dir must fail");
        CHECK(count_entries(ro, 0) == 0, "read-only dir gained files");
        chmod(ro, 0755);
        free(t2);
        free(m2);
    }
    free_models(&fs);
    free(tab);
    free(mod);

    /* 7. Spectra file, flat, custom prefixes: arms b and r, redrock values, no VRAD_CCF. */
    flat.output_dir = path_join(scratch, "flat");
    flat.tab_prefix = "mytab";
    flat.mod_prefix = "mymod";
    CHECK(rvs_output_paths(&flat, spectra, &tab, &mod) == RVS_OK, "spectra paths");
    CHECK(strstr(tab, "/flat/mytab_spectra-sv3-dark-26065.fits") != NULL, "spectra tab %s", tab);
    long rows2[] = {1, 3};
    unsigned br = (1u << RVS_DESI_ARM_B) | (1u << RVS_DESI_ARM_R);
    fill_rows(&fs, rows2, 2, -1, br, 1, 0);
    make_request(&req, &fs, spectra, tab, mod, br);
    req.vrad_ccf = 0;
    req.redrock_path = "/some/dir/redrock-sv3-dark-26065.fits";
    st = rvs_output_write(&req);
    CHECK(st == RVS_OK, "spectra write: %s", rvs_strerror(st));
    CHECK(run_schema_check(spectra, tab, mod,
                           "--rows 1,3 --arms br --ccf 0 --values --rr "
                           "--header RR_FILE=/some/dir/redrock-sv3-dark-26065.fits") == 0,
          "spectra outputs fail the schema check");
    free_models(&fs);
    free(tab);
    free(mod);

    /* 8. Empty cases: nothing selected (coadd and spectra layouts). */
    flat.output_dir = path_join(scratch, "empty");
    flat.tab_prefix = "rvtab";
    flat.mod_prefix = "rvmod";
    const char *inputs[] = {coadd, spectra};
    for (int i = 0; i < 2; i++) {
        CHECK(rvs_output_paths(&flat, inputs[i], &tab, &mod) == RVS_OK, "empty paths");
        fill_rows(&fs, NULL, 0, -1, RVS_DESI_ARMS_ALL, 0, 0);
        make_request(&req, &fs, inputs[i], tab, mod, RVS_DESI_ARMS_ALL);
        st = rvs_output_write(&req);
        CHECK(st == RVS_OK, "empty write: %s", rvs_strerror(st));
        CHECK(run_schema_check(inputs[i], tab, mod, "--rows ''") == 0,
              "empty outputs for %s fail the schema check", inputs[i]);
        free_models(&fs);
        free(tab);
        free(mod);
    }

    /* 9. A gzip-compressed input: names lose .gz, contents are the same. */
    char gzdir[4096], gz[8192], cmd[16384];
    FMT(gzdir, "%s/in/d1/d2", scratch);
    FMT(gz, "%s/coadd-sv3-dark-26065.fits.gz", gzdir);
    FMT(cmd, "mkdir -p '%s' && gzip -c '%s' > '%s'", gzdir, coadd, gz);
    if (system(cmd) == 0) {
        naming.output_dir = path_join(scratch, "gzout");
        CHECK(rvs_output_paths(&naming, gz, &tab, &mod) == RVS_OK, "gz paths");
        CHECK(strstr(tab, "/gzout/d1/d2/rvtab_coadd-sv3-dark-26065.fits") != NULL &&
                  tab[strlen(tab) - 1] == 's',
              "gz tab %s", tab);
        long rows3[] = {1};
        fill_rows(&fs, rows3, 1, -1, RVS_DESI_ARMS_ALL, 0, 0);
        make_request(&req, &fs, gz, tab, mod, RVS_DESI_ARMS_ALL);
        st = rvs_output_write(&req);
        CHECK(st == RVS_OK, "gz write: %s", rvs_strerror(st));
        CHECK(run_schema_check(coadd, tab, mod, "--rows 1 --values") == 0,
              "outputs from the .gz input fail the schema check");
        free_models(&fs);
        free(tab);
        free(mod);
    } else {
        fprintf(stderr, "note: gzip unavailable, .gz input not tested\n");
    }
}

int main(void)
{
    const char *builddir = getenv("top_builddir");
    const char *top_src = getenv("top_srcdir");
    FMT(srcdir, "%s", top_src ? top_src : ".");
    FMT(scratch, "%s/tests/test_output.tmp", builddir ? builddir : ".");
    char cmd[8192];
    FMT(cmd, "rm -rf '%s' && mkdir -p '%s'", scratch, scratch);
    if (system(cmd) != 0) {
        fprintf(stderr, "FAIL: cannot create %s\n", scratch);
        return 1;
    }
    rvs_log_set_level(RVS_LOG_ERROR);
    test_names();
    test_status_file();

    /* The shared data sit beside the checkout: ../shared/data (main tree) or ../../shared/data
     * (a worktree); RVSFIT_TEST_DATA overrides. */
    char edr[8192] = "";
    const char *env = getenv("RVSFIT_TEST_DATA");
    const char *candidates[] = {env, path_join(srcdir, "../shared/data"),
                                path_join(srcdir, "../../shared/data")};
    for (int i = 0; i < 3 && !edr[0]; i++) {
        char probe[8192];
        if (!candidates[i])
            continue;
        FMT(probe, "%s/desi-edr/coadd-sv3-dark-26065.fits", candidates[i]);
        if (file_exists(probe))
            FMT(edr, "%s/desi-edr", candidates[i]);
    }
    FMT(cmd, "'%s' -c 'import astropy.io.fits, numpy' 2>/dev/null", python);
    int have_python = system(cmd) == 0;
    if (!have_python) {
        /* tools/install-deps installs them: their absence is a broken install, not a skip */
        fprintf(stderr, "FAIL: %s lacks astropy/numpy; run tools/install-deps\n", python);
        return 1;
    }
    if (!edr[0]) {
        if (test_failures)
            return test_finish("test_output");
        fprintf(stderr, "SKIP: no shared data (../shared/data/desi-edr)\n");
        return TEST_SKIP;
    }
    test_with_data(edr);
    return test_finish("test_output");
}
