/* fuzz_common.h: what the fuzz targets share. Each target is a libFuzzer entry point
 * (LLVMFuzzerTestOneInput) over one of rvsfit-cl's parsers, which all read files: the input is
 * written to a file of this process's own scratch directory and the parser opens it by path, as
 * rvsfit-cl does. Built with clang -fsanitize=fuzzer by tools/fuzz, or with any compiler and
 * tests/fuzz/replay_main.c to replay a corpus (make check). */
#ifndef RVSFIT_FUZZ_COMMON_H
#define RVSFIT_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rvsfit/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* This process's scratch directory ($TMPDIR or /tmp, then rvsfit-fuzz-<pid>), made once. */
static inline const char *fuzz_dir(void)
{
    static char dir[512];
    if (!dir[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/rvsfit-fuzz-%ld", tmp && *tmp ? tmp : "/tmp",
                 (long)getpid());
        if (mkdir(dir, 0700) != 0 && access(dir, W_OK) != 0) {
            perror(dir);
            abort();
        }
    }
    return dir;
}

/* Writes data to <fuzz_dir>/<name>; the path in path. Aborts on a failed write (not a
 * finding: the harness cannot work). */
static inline void fuzz_write(const char *name, const uint8_t *data, size_t size, char *path,
                       size_t path_size)
{
    snprintf(path, path_size, "%s/%s", fuzz_dir(), name);
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        perror(path);
        abort();
    }
}

/* Parsers log every problem they find; a fuzzer finds thousands a second. Messages are
 * checked by the tests, so here they go nowhere unless RVSFIT_FUZZ_VERBOSE is set. */
static inline void fuzz_quiet(void)
{
    if (!getenv("RVSFIT_FUZZ_VERBOSE"))
        rvs_log_set_level(RVS_LOG_CRITICAL + 1);
}

#endif
