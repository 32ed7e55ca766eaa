/* test_run_files.c: the YAML configuration reader (rvspecfit's keys and defaults, unknown-key
 * warnings, bad-value errors naming the key) and the input lists (--input-file-from) and shared
 * queue (--queue-file): sequential pops, blank lines, and several processes popping one queue at
 * once, each name going to exactly one of them. Host-only; files under the build tree. */
#include <config.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rvsfit/config.h"
#include "rvsfit/run.h"
#include "desi_testutil.h"
#include "testutil.h"

static char scratch[4096];
static char logbuf[65536];
static FILE *logfp;

static void write_file(const char *name, const char *text, char *path, size_t size)
{
    snprintf(path, size, "%s/%s", scratch, name);
    FILE *fp = fopen(path, "wb");
    if (!fp || fputs(text, fp) < 0 || fclose(fp) != 0) {
        fprintf(stderr, "FAIL: cannot write %s\n", path);
        exit(1);
    }
}

/* Messages go to a temporary file so that tests can look for words in them. */
static void log_capture_start(void)
{
    logfp = tmpfile();
    rvs_log_set_stream(logfp);
}

static const char *log_capture_end(void)
{
    rvs_log_set_stream(NULL);
    size_t n = 0;
    if (logfp) {
        rewind(logfp);
        n = fread(logbuf, 1, sizeof logbuf - 1, logfp);
        fclose(logfp);
        logfp = NULL;
    }
    logbuf[n] = '\0';
    return logbuf;
}

/* Reads `text` as a configuration; returns the status; *log gets the messages. */
static int read_text(const char *text, struct rvs_config *c, const char **log)
{
    char path[4200];
    write_file("config.yaml", text, path, sizeof path);
    rvs_config_free(c);
    rvs_config_init(c);
    log_capture_start();
    int status = rvs_config_read(path, c);
    *log = log_capture_end();
    return status;
}

static void test_config(void)
{
    struct rvs_config c;
    const char *log;
    rvs_config_init(&c);
    /* defaults: rvspecfit's get_default_config (and proc_desi's 0.5 A sigma) */
    CHECK(c.min_vel == -1000 && c.max_vel == 1000 && c.vel_step0 == 5 && c.min_vel_step == 0.2 &&
              c.min_vsini == 0.01 && c.max_vsini == 500 && c.second_minimizer == 1 &&
              c.ccf_continuum_normalize == 1 && c.lsf_sigma0[2] == 0.5 && !c.template_lib &&
              !c.path && c.set == 0,
          "defaults differ from rvspecfit's");

    /* rvspecfit's own py/rvspecfit/config.yaml (facts: its keys and values) */
    int st = read_text("template_lib: 'PATH_TO_DIR_WITH_TEMPLATES/'\n"
                       "min_vel: -1000 # minimum velocity to consider\n"
                       "max_vel: 1000\nmin_vel_step: 0.2\nvel_step0: 5\nmin_vsini: 0.1\n"
                       "max_vsini: 500\nsecond_minimizer: 1\n",
                       &c, &log);
    CHECK(st == RVS_OK, "rvspecfit's config.yaml: %s (%s)", rvs_strerror(st), log);
    CHECK(c.template_lib && strcmp(c.template_lib, "PATH_TO_DIR_WITH_TEMPLATES/") == 0,
          "template_lib read as %s", c.template_lib ? c.template_lib : "(null)");
    CHECK(c.min_vsini == 0.1 && c.second_minimizer == 1, "min_vsini %g second_minimizer %d",
          c.min_vsini, c.second_minimizer);
    CHECK(c.path && c.path[0] == '/', "path not absolute: %s", c.path ? c.path : "(null)");
    CHECK((c.set & RVS_CONFIG_MIN_VSINI) && !(c.set & RVS_CONFIG_LSF_SIGMA0),
          "set bits 0x%x", c.set);
    CHECK(!strstr(log, "WARNING"), "warnings for a valid file: %s", log);

    st = read_text("lsf_sigma0_angstrom: {b: 0.6, z: 0.7}\nsecond_minimizer: false\n"
                   "ccf_continuum_normalize: no\nmin_vel: -500.5\nmax_vel: 6e2\n",
                   &c, &log);
    CHECK(st == RVS_OK && c.lsf_sigma0[0] == 0.6 && c.lsf_sigma0[1] == 0.5 &&
              c.lsf_sigma0[2] == 0.7 && c.lsf_sigma0_arms == 5u && !c.second_minimizer &&
              !c.ccf_continuum_normalize && c.min_vel == -500.5 && c.max_vel == 600,
          "mapping/bools/floats: st %d lsf %g %g %g arms %u", st, c.lsf_sigma0[0],
          c.lsf_sigma0[1], c.lsf_sigma0[2], c.lsf_sigma0_arms);

    st = read_text("min_vel: -800\nnot_a_key: 3\n", &c, &log);
    CHECK(st == RVS_OK && c.min_vel == -800, "unknown key must not fail: %s", rvs_strerror(st));
    CHECK(strstr(log, "WARNING") && strstr(log, "not_a_key"), "no warning naming the key: %s",
          log);

    st = read_text("", &c, &log);
    CHECK(st == RVS_OK && strstr(log, "empty"), "empty file: %s / %s", rvs_strerror(st), log);

    /* bad values: an error naming the key */
    static const struct {
        const char *text, *key;
    } bad[] = {
        {"min_vel: abc\n", "min_vel"},
        {"max_vel: '1000'\n", "max_vel"},
        {"vel_step0:\n", "vel_step0"},
        {"min_vel_step: [1, 2]\n", "min_vel_step"},
        {"max_vsini: .inf\n", "max_vsini"},
        {"second_minimizer: maybe\n", "second_minimizer"},
        {"ccf_continuum_normalize: 2\n", "ccf_continuum_normalize"},
        {"template_lib: ''\n", "template_lib"},
        {"lsf_sigma0_angstrom: 0.5\n", "lsf_sigma0_angstrom"},
        {"lsf_sigma0_angstrom: {x: 0.5}\n", "lsf_sigma0_angstrom"},
        {"lsf_sigma0_angstrom: {b: -1}\n", "lsf_sigma0_angstrom.b"},
        {"min_vel: 10\nmax_vel: 5\n", "min_vel"},
        {"vel_step0: 0\n", "vel_step0"},
        {"min_vsini: 0\n", "min_vsini"},
        {"min_vsini: 10\nmax_vsini: 5\n", "max_vsini"},
        {"- a\n- b\n", "mapping"},
        {"min_vel: [1, 2\n", "YAML"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        st = read_text(bad[i].text, &c, &log);
        CHECK(st == RVS_ERR_FORMAT, "'%s' accepted (status %s)", bad[i].text, rvs_strerror(st));
        CHECK(strstr(log, bad[i].key) && strstr(log, "config.yaml"),
              "message for '%s' does not name '%s' and the file: %s", bad[i].text, bad[i].key,
              log);
    }

    rvs_config_free(&c);
    rvs_config_init(&c);
    char missing[4200];
    snprintf(missing, sizeof missing, "%s/no-such-config.yaml", scratch);
    log_capture_start();
    st = rvs_config_read(missing, &c);
    log = log_capture_end();
    CHECK(st == RVS_ERR_IO && strstr(log, "no-such-config.yaml"), "missing file: %s / %s",
          rvs_strerror(st), log);
    rvs_config_free(&c);
}

static void test_lines(void)
{
    char path[4200];
    char **lines = NULL;
    size_t n = 0;
    write_file("list.txt", "a/b/coadd-1.fits\n\n  \nc/d/coadd-2.fits  \r\n/x/y/z.fits", path,
               sizeof path);
    int st = rvs_run_read_lines(path, &lines, &n);
    CHECK(st == RVS_OK && n == 3, "list: status %d, %zu lines", st, n);
    if (n == 3)
        CHECK(strcmp(lines[0], "a/b/coadd-1.fits") == 0 &&
                  strcmp(lines[1], "c/d/coadd-2.fits") == 0 && strcmp(lines[2], "/x/y/z.fits") == 0,
              "lines: '%s' '%s' '%s'", lines[0], lines[1], lines[2]);
    rvs_run_free_lines(lines, n);

    snprintf(path, sizeof path, "%s/binary.fits", scratch);
    FILE *fp = fopen(path, "wb");
    fwrite("SIMPLE\0\0\0", 1, 9, fp);
    fclose(fp);
    log_capture_start();
    st = rvs_run_read_lines(path, &lines, &n);
    log_capture_end();
    CHECK(st == RVS_ERR_FORMAT, "a binary file read as a list");

    snprintf(path, sizeof path, "%s/absent.txt", scratch);
    log_capture_start();
    st = rvs_run_read_lines(path, &lines, &n);
    log_capture_end();
    CHECK(st == RVS_ERR_IO, "an absent list: status %d", st);
}

static void test_queue_sequential(void)
{
    char path[4200];
    write_file("queue.txt", "\none\n\ntwo  \nthree", path, sizeof path);
    const char *want[] = {"one", "two", "three"};
    for (int i = 0; i < 3; i++) {
        char *name = NULL;
        int st = rvs_run_queue_pop(path, &name);
        CHECK(st == RVS_OK && name && strcmp(name, want[i]) == 0, "pop %d: %s", i,
              name ? name : "(null)");
        free(name);
    }
    char *name = NULL;
    int st = rvs_run_queue_pop(path, &name);
    CHECK(st == RVS_OK && !name, "an empty queue gave %s", name ? name : "an error");
    free(name);
    FILE *fp = fopen(path, "rb");
    CHECK(fp && fgetc(fp) == EOF, "the queue file is not empty at the end");
    if (fp)
        fclose(fp);
}

/* NPROC processes pop one queue of NNAMES names as fast as they can. */
enum { NPROC = 4, NNAMES = 400 };

static void test_queue_concurrent(void)
{
    char path[4200], text[NNAMES * 16];
    size_t len = 0;
    for (int i = 0; i < NNAMES; i++)
        len += (size_t)snprintf(text + len, sizeof text - len, "file-%03d\n", i);
    write_file("shared-queue.txt", text, path, sizeof path);
    pid_t pids[NPROC];
    for (int p = 0; p < NPROC; p++) {
        pids[p] = fork();
        if (pids[p] == 0) {
            char out[4300];
            snprintf(out, sizeof out, "%s/popped-%d.txt", scratch, p);
            FILE *fp = fopen(out, "w");
            char *name = NULL;
            while (fp && rvs_run_queue_pop(path, &name) == RVS_OK && name) {
                fprintf(fp, "%s\n", name);
                free(name);
                name = NULL;
            }
            _exit(fp && fclose(fp) == 0 ? 0 : 1);
        }
    }
    for (int p = 0; p < NPROC; p++) {
        int ws = 0;
        waitpid(pids[p], &ws, 0);
        CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "popping process %d failed", p);
    }
    int count[NNAMES] = {0};
    int total = 0, busy = 0;
    for (int p = 0; p < NPROC; p++) {
        char out[4300], line[64];
        snprintf(out, sizeof out, "%s/popped-%d.txt", scratch, p);
        FILE *fp = fopen(out, "r");
        int mine = 0;
        while (fp && fgets(line, sizeof line, fp)) {
            int i = -1;
            if (sscanf(line, "file-%d", &i) == 1 && i >= 0 && i < NNAMES)
                count[i]++;
            total++;
            mine++;
        }
        busy += mine > 0;
        if (fp)
            fclose(fp);
    }
    int dup = 0, lost = 0;
    for (int i = 0; i < NNAMES; i++) {
        dup += count[i] > 1;
        lost += count[i] == 0;
    }
    CHECK(total == NNAMES && dup == 0 && lost == 0,
          "concurrent pops: %d names popped, %d twice, %d lost", total, dup, lost);
    printf("concurrent queue: %d processes, %d of them got names, %d names popped, %d twice\n",
           NPROC, busy, total, dup);
}

int main(void)
{
    snprintf(scratch, sizeof scratch, "%s", desi_test_scratch_dir("test_run_files"));
    test_config();
    test_lines();
    test_queue_sequential();
    test_queue_concurrent();
    return test_finish("test_run_files");
}
