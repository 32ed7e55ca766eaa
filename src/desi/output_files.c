/* output_files.c: names of the rvtab/rvmod files (rvspecfit desi_fit.py, proc_many), whether
 * existing ones are complete, the signal handler that removes the temporaries of an interrupted
 * run (src/base/files.c reserves and commits them) and names the input in flight, and the
 * --process-status-file lines (update_process_status_file). */
#include <config.h>

#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <fitsio.h>

#include "base/internal.h"
#include "base/files.h"
#include "desi/output_files.h"
#include "rvsfit/output.h"

void rvs_output_row_init(struct rvs_output_row *row, long input_row)
{
    memset(row, 0, sizeof(*row));
    row->input_row = input_row;
    double *nan_fields[] = {&row->vrad,    &row->vrad_err,    &row->vrad_skew, &row->vrad_kurt,
                            &row->vsini,   &row->logg,        &row->logg_err,  &row->teff,
                            &row->teff_err, &row->feh,        &row->feh_err,   &row->alphafe,
                            &row->alphafe_err, &row->chisq_tot, &row->chisq_c_tot,
                            &row->vrad_ccf, &row->rr_z};
    for (size_t i = 0; i < sizeof(nan_fields) / sizeof(nan_fields[0]); i++)
        *nan_fields[i] = NAN;
    for (int a = 0; a < RVS_DESI_NARMS; a++) {
        row->chisq[a] = NAN;
        row->chisq_c[a] = NAN;
        row->sn[a] = NAN;
    }
}

void rvs_output_request_init(struct rvs_output_request *req)
{
    memset(req, 0, sizeof(*req));
    req->arms = RVS_DESI_ARMS_ALL;
    req->vrad_ccf = 1;
}

void rvs_output_naming_init(struct rvs_output_naming *naming)
{
    naming->output_dir = ".";
    naming->tab_prefix = "rvtab";
    naming->mod_prefix = "rvmod";
    naming->no_subdirs = 0;
}

/* Absolute form of `path` with "." and ".." resolved lexically (like Python's os.path.abspath),
 * so "./x.fits" or "../d/x.fits" still name two real parent directories, and a ".." never walks
 * the output out of --output-dir. Symbolic links are kept as named. */
static char *absolute_path(const char *path)
{
    char *joined = NULL, *result = NULL;
    char **parts = NULL;
    if (path[0] == '/') {
        joined = rvs_strdup(path);
    } else {
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof(cwd))) {
            rvs_log(RVS_LOG_ERROR, "output", "cannot read the current directory: %s",
                    strerror(errno));
            return NULL;
        }
        joined = rvs_malloc(strlen(cwd) + strlen(path) + 2);
        if (joined)
            sprintf(joined, "%s/%s", cwd, path);
    }
    if (!joined)
        return NULL;
    size_t len = strlen(joined);
    parts = rvs_calloc(len / 2 + 2, sizeof(*parts));
    result = rvs_malloc(len + 2);
    if (!parts || !result) {
        free(result);
        result = NULL;
        goto done;
    }
    size_t nparts = 0;
    for (char *save = NULL, *tok = strtok_r(joined, "/", &save); tok;
         tok = strtok_r(NULL, "/", &save)) {
        if (strcmp(tok, ".") == 0)
            continue;
        if (strcmp(tok, "..") == 0) {
            if (nparts > 0)
                nparts--;
            continue;
        }
        parts[nparts++] = tok;
    }
    char *p = result;
    for (size_t i = 0; i < nparts; i++)
        p += sprintf(p, "/%s", parts[i]);
    if (nparts == 0)
        strcpy(result, "/");
done:
    free(parts);
    free(joined);
    return result;
}

int rvs_output_paths(const struct rvs_output_naming *naming, const char *input_path,
                     char **tab_path, char **mod_path)
{
    int status = RVS_OK;
    char *abs = NULL, *tab = NULL, *mod = NULL;
    *tab_path = NULL;
    *mod_path = NULL;
    if (!naming || !input_path || !*input_path || !naming->tab_prefix || !naming->mod_prefix) {
        rvs_log(RVS_LOG_ERROR, "output", "output names need an input file name and prefixes");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    const char *dir = naming->output_dir && *naming->output_dir ? naming->output_dir : ".";
    abs = absolute_path(input_path);
    if (!abs) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    /* abs is "/c1/c2/.../base": the file name and up to two parents, from the end. */
    char *base = strrchr(abs, '/');
    if (!base || !base[1] || input_path[strlen(input_path) - 1] == '/') {
        rvs_log(RVS_LOG_ERROR, "output", "input '%s' names no file", input_path);
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    *base++ = '\0';
    size_t base_len = strlen(base);
    if (base_len > 3 && strcmp(base + base_len - 3, ".gz") == 0)
        base[base_len - 3] = '\0';
    const char *sub = "";
    if (!naming->no_subdirs) {
        char *p1 = strrchr(abs, '/');
        char *p2 = NULL;
        if (p1 && p1 != abs) {
            *p1 = '\0';
            p2 = strrchr(abs, '/');
            *p1 = '/';
        }
        if (!p1 || !p2 || p1 == abs) {
            rvs_log(RVS_LOG_ERROR, "output",
                    "input '%s' has fewer than two parent directories, which name the output "
                    "subdirectories; use --no-subdirs to write into --output-dir directly",
                    input_path);
            status = RVS_ERR_INVALID_ARGUMENT;
            goto cleanup;
        }
        sub = p2 + 1; /* "parent2/parent1" */
    }
    size_t dlen = strlen(dir);
    while (dlen > 1 && dir[dlen - 1] == '/')
        dlen--;
    size_t cap = dlen + strlen(sub) + strlen(base) + 4 +
                 (strlen(naming->tab_prefix) > strlen(naming->mod_prefix)
                      ? strlen(naming->tab_prefix)
                      : strlen(naming->mod_prefix));
    tab = rvs_malloc(cap);
    mod = rvs_malloc(cap);
    if (!tab || !mod) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    const char *slash = (dlen == 1 && dir[0] == '/') ? "" : "/";
    snprintf(tab, cap, "%.*s%s%s%s%s_%s", (int)dlen, dir, slash, sub, *sub ? "/" : "",
             naming->tab_prefix, base);
    snprintf(mod, cap, "%.*s%s%s%s%s_%s", (int)dlen, dir, slash, sub, *sub ? "/" : "",
             naming->mod_prefix, base);
    *tab_path = tab;
    *mod_path = mod;
    tab = mod = NULL;
cleanup:
    free(abs);
    free(tab);
    free(mod);
    return status;
}

static int input_identity(const char *input_path, char *out, size_t size)
{
    struct stat st;
    if (stat(input_path, &st) != 0)
        return -1;
    snprintf(out, size, "%lld:%lld.%09ld", (long long)st.st_size, (long long)st.st_mtim.tv_sec,
             (long)st.st_mtim.tv_nsec);
    return 0;
}

int rvs_output_pair_id_make(const char *input_path, struct rvs_output_pair_id *id)
{
    static atomic_uint counter;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    snprintf(id->pair, sizeof id->pair, "%ld-%lld.%09ld-%u", (long)getpid(),
             (long long)now.tv_sec, (long)now.tv_nsec, atomic_fetch_add(&counter, 1u));
    if (input_identity(input_path, id->input, sizeof id->input) != 0) {
        rvs_log(RVS_LOG_ERROR, "output", "cannot stat the input '%s': %s", input_path,
                strerror(errno));
        return RVS_ERR_IO;
    }
    return RVS_OK;
}

/* Reads one output's RVS_PAIR and RVS_INID ("" when absent) and verifies the checksums of all
 * its HDUs; 0 when it is a complete, readable FITS file, else -1 with *why set. */
static int check_output(const char *path, char *pair, char *inid, const char **why)
{
    int fst = 0, nhdu = 0, ok = 0;
    fitsfile *f = NULL;
    pair[0] = inid[0] = '\0';
    char guard_why[400];
    if (rvs_fits_check_headers(path, guard_why, sizeof guard_why) != RVS_OK) {
        *why = "a damaged FITS header (not printable ASCII)";
        return -1;
    }
    fits_write_errmark();
    fits_open_diskfile(&f, path, READONLY, &fst);
    if (fst) {
        *why = "not a readable FITS file";
        goto done;
    }
    fits_get_num_hdus(f, &nhdu, &fst);
    if (fst || nhdu < 2) {
        *why = "incomplete (fewer than two HDUs)";
        goto done;
    }
    for (int h = 1; h <= nhdu; h++) {
        int type = 0, dataok = 0, hduok = 0;
        fits_movabs_hdu(f, h, &type, &fst);
        fits_verify_chksum(f, &dataok, &hduok, &fst);
        if (fst || dataok < 0 || hduok < 0) {
            *why = fst ? "truncated or damaged" : "its checksums do not match its content";
            goto done;
        }
    }
    fits_movabs_hdu(f, 1, NULL, &fst);
    char value[FLEN_VALUE];
    if (fits_read_key_str(f, "RVS_PAIR", value, NULL, &fst) == 0)
        snprintf(pair, 64, "%.63s", value);
    fst = 0;
    if (fits_read_key_str(f, "RVS_INID", value, NULL, &fst) == 0)
        snprintf(inid, 64, "%.63s", value);
    fst = 0;
    ok = 1;
done:
    if (f) {
        int cst = 0;
        fits_close_file(f, &cst);
    }
    fits_clear_errmark();
    return ok ? 0 : -1;
}

int rvs_output_exist(const char *tab_path, const char *mod_path)
{
    struct stat st;
    return stat(tab_path, &st) == 0 && stat(mod_path, &st) == 0;
}

int rvs_output_check_writable(const char *tab_path, const char *mod_path)
{
    const char *paths[2] = {mod_path, tab_path};
    for (int i = 0; i < 2; i++) {
        char *tmp = NULL;
        int status = rvs_file_mkdirs_for(paths[i]);
        if (status == RVS_OK)
            status = rvs_file_reserve_tmp(paths[i], &tmp);
        if (tmp) {
            unlink(tmp);
            rvs_file_tmp_done(tmp);
            free(tmp);
        }
        if (status != RVS_OK)
            return status;
    }
    return RVS_OK;
}

int rvs_output_done(const char *tab_path, const char *mod_path, const char *input_path)
{
    if (!rvs_output_exist(tab_path, mod_path))
        return 0;
    char tpair[64], tin[64], mpair[64], min[64], now[64];
    const char *why = NULL;
    const char *bad = tab_path;
    if (check_output(tab_path, tpair, tin, &why) == 0) {
        bad = mod_path;
        check_output(mod_path, mpair, min, &why);
    }
    if (!why && strcmp(tpair, mpair) != 0)
        why = "the rvtab and the rvmod come from different runs (RVS_PAIR differs)";
    if (!why && tin[0] && (input_identity(input_path, now, sizeof now) != 0 || strcmp(tin, now)))
        why = "the input changed since they were written (RVS_INID)";
    if (why) {
        rvs_log(RVS_LOG_WARNING, "output", "existing output %s: %s; fitting %s again", bad, why,
                input_path);
        return 0;
    }
    return 1;
}

/* The input being fitted, for the handler: its message and its status line, made beforehand
 * (a handler may only write); state 2 = ready, anything else = none. */
static char inflight_message[4096 + 200], inflight_line[4096 + 64], inflight_status[4096];
static atomic_int inflight_state;

void rvs_output_set_in_flight(const char *input_path, const char *status_path)
{
    atomic_store(&inflight_state, 0);
    if (!input_path)
        return;
    int n = snprintf(inflight_message, sizeof inflight_message,
                     "rvsfit-cl: interrupted while fitting %s: it has no outputs; its status line "
                     "says FAILURE, and --skipexisting fits it again\n",
                     input_path);
    int m = snprintf(inflight_line, sizeof inflight_line, "%s FAILURE 0 0.00\n", input_path);
    int k = snprintf(inflight_status, sizeof inflight_status, "%s", status_path ? status_path : "");
    if (n < 0 || (size_t)n >= sizeof inflight_message || m < 0 ||
        (size_t)m >= sizeof inflight_line || k < 0 || (size_t)k >= sizeof inflight_status)
        return; /* too long a name: the general message only */
    atomic_store(&inflight_state, 2);
}

static void write_all(int fd, const char *text)
{
    size_t len = strlen(text), done = 0;
    while (done < len) {
        ssize_t w = write(fd, text + done, len - done);
        if (w <= 0)
            return;
        done += (size_t)w;
    }
}

static void on_signal(int sig)
{
    /* async-signal-safe only: unlink, open, write, close, signal, raise */
    rvs_file_remove_reserved();
    if (atomic_load(&inflight_state) == 2) {
        /* the input in hand is named and recorded, so that nothing is lost silently (under
         * mpirun, a rank that dies makes mpirun end the others with SIGTERM) */
        write_all(STDERR_FILENO, inflight_message);
        if (inflight_status[0]) {
            int fd = open(inflight_status, O_WRONLY | O_APPEND);
            if (fd >= 0) {
                write_all(fd, inflight_line);
                close(fd);
            }
        }
    } else {
        write_all(STDERR_FILENO, "rvsfit-cl: interrupted: temporary outputs removed\n");
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

void rvs_output_install_signal_cleanup(void)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(sigs[i], &sa, NULL);
    }
}

int rvs_output_status_start(const char *status_path)
{
    int fd = open(status_path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    if (fd < 0) {
        rvs_log(RVS_LOG_ERROR, "output",
                "cannot create process status file '%s': %s; check --process-status-file",
                status_path, strerror(errno));
        return RVS_ERR_IO;
    }
    if (close(fd) != 0) {
        rvs_log(RVS_LOG_ERROR, "output", "cannot write process status file '%s': %s",
                status_path, strerror(errno));
        return RVS_ERR_IO;
    }
    return RVS_OK;
}

int rvs_output_status_append(const char *status_path, const char *input_path,
                             enum rvs_output_status status_code, long nobj, double seconds)
{
    static const char *const names[] = {"SUCCESS", "FAILURE", "EXISTING"};
    int status = RVS_OK;
    char *line = NULL;
    int fd = -1;
    if (!status_path || !input_path || (unsigned)status_code > RVS_OUTPUT_EXISTING) {
        rvs_log(RVS_LOG_ERROR, "output", "invalid process-status record");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    size_t cap = strlen(input_path) + 96;
    line = rvs_malloc(cap);
    if (!line)
        return RVS_ERR_NOMEM;
    /* rvspecfit: f'{processed_file} {status} {nobjects} {time_sec:.2f}' */
    int len = rvs_snprintf_c(line, cap, "%s %s %ld %.2f\n", input_path, names[status_code], nobj,
                             seconds);
    if (len < 0 || (size_t)len >= cap) {
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    fd = open(status_path, O_WRONLY | O_CREAT | O_APPEND, 0666);
    if (fd < 0) {
        rvs_log(RVS_LOG_ERROR, "output",
                "cannot open process status file '%s': %s; check --process-status-file",
                status_path, strerror(errno));
        status = RVS_ERR_IO;
        goto cleanup;
    }
    /* One write() of the whole line: with O_APPEND, lines from concurrent processes never mix. */
    ssize_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, line + done, (size_t)(len - done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rvs_log(RVS_LOG_ERROR, "output", "cannot append to process status file '%s': %s",
                    status_path, n < 0 ? strerror(errno) : "short write");
            status = RVS_ERR_IO;
            goto cleanup;
        }
        done += n;
    }
cleanup:
    if (fd >= 0 && close(fd) != 0 && status == RVS_OK) {
        rvs_log(RVS_LOG_ERROR, "output", "cannot write process status file '%s': %s", status_path,
                strerror(errno));
        status = RVS_ERR_IO;
    }
    free(line);
    return status;
}
