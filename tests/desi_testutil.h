/* desi_testutil.h: helpers of the DESI input tests: the scratch directory under the build tree,
 * the shared data directory, running tests/desi_craft.py with Debian's Python, reading the raw
 * arrays it writes. */
#ifndef RVS_DESI_TESTUTIL_H
#define RVS_DESI_TESTUTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char desi_test_scratch[1024];

static inline const char *desi_test_srcdir(void)
{
    const char *s = getenv("top_srcdir");
    return s && *s ? s : ".";
}

/* <top_builddir>/tests/<name>.tmp, emptied and created. */
static inline const char *desi_test_scratch_dir(const char *name)
{
    const char *b = getenv("top_builddir");
    char cmd[8300];
    snprintf(desi_test_scratch, sizeof desi_test_scratch, "%s/tests/%s.tmp", b && *b ? b : ".",
             name);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", desi_test_scratch,
             desi_test_scratch);
    if (system(cmd) != 0) {
        fprintf(stderr, "FAIL: cannot create %s\n", desi_test_scratch);
        exit(1);
    }
    return desi_test_scratch;
}

/* The EDR files: <shared data>/desi-edr, the shared data being $RVSFIT_CL_SHARED_DATA when set
 * (a worktree outside the project's usual place) or $top_srcdir/../shared/data; exits 77 only
 * when it is absent. */
static inline const char *desi_test_edr_dir(void)
{
    static char dir[4096];
    struct stat st;
    const char *shared = getenv("RVSFIT_CL_SHARED_DATA");
    if (shared && *shared)
        snprintf(dir, sizeof dir, "%s/desi-edr", shared);
    else
        snprintf(dir, sizeof dir, "%s/../shared/data/desi-edr", desi_test_srcdir());
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "SKIP: %s is absent\n", dir);
        exit(77);
    }
    return dir;
}

/* Runs tests/desi_craft.py MODE ARGS with Debian's interpreter (numpy + astropy). */
static inline void desi_test_craft(const char *mode, const char *a1, const char *a2)
{
    char cmd[3 * 8192 + 4096];
    const char *py = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && %s '%s/tests/desi_craft.py' %s '%s' %s%s%s",
             a2 ? a2 : a1, py, desi_test_srcdir(), mode, a1, a2 ? "'" : "", a2 ? a2 : "",
             a2 ? "'" : "");
    if (system(cmd) != 0) {
        fprintf(stderr, "FAIL: %s failed\n", cmd);
        exit(1);
    }
}

/* Reads a whole file; *size gets its length. Exits on failure. */
static inline void *desi_test_slurp(const char *path, size_t *size)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        fprintf(stderr, "FAIL: cannot open %s\n", path);
        exit(1);
    }
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    void *buf = malloc(n > 0 ? (size_t)n : 1);
    if (!buf || fread(buf, 1, (size_t)n, fp) != (size_t)n) {
        fprintf(stderr, "FAIL: cannot read %s\n", path);
        exit(1);
    }
    fclose(fp);
    if (size)
        *size = (size_t)n;
    return buf;
}

#endif
