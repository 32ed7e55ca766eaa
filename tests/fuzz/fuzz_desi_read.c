/* fuzz_desi_read.c: the DESI spectra reader (src/desi/read.c) on arbitrary bytes: open (every
 * HDU, FIBERMAP, SCORES, the arms' shapes and types, checksums when present), then read the
 * spectra of every row with their resolution matrices, as rvsfit-cl does per batch. The rows
 * read are capped so that one input never asks for more than 64 MB (a claim the reader has
 * already checked against the file's size). */
#include <config.h>

#include "fuzz_common.h"
#include "rvsfit/desi.h"
#include "rvsfit/status.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fuzz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[640];
    fuzz_write("coadd.fits", data, size, path, sizeof path);
    /* all arms, then B alone (a file with one good arm is a real case too) */
    static const unsigned arm_sets[2] = {RVS_DESI_ARMS_ALL, 1u << RVS_DESI_ARM_B};
    for (int s = 0; s < 2; s++) {
        struct rvs_desi_file *f = NULL;
        if (rvs_desi_open(path, arm_sets[s], &f) != RVS_OK)
            continue;
        size_t n = rvs_desi_nrows(f);
        size_t per_row = rvs_desi_bytes_per_row(f, RVS_DESI_READ_RESOLUTION);
        size_t cap = per_row ? ((size_t)64 << 20) / per_row : n;
        size_t nread = n < cap ? n : cap;
        const struct rvs_desi_fibermap *fm = rvs_desi_fibermap(f);
        (void)fm;
        for (int a = 0; a < RVS_DESI_NARMS; a++)
            (void)rvs_desi_scores_sn(f, a);
        size_t *rows = malloc((nread ? nread : 1) * sizeof *rows);
        if (rows) {
            /* backwards: the reader must not assume ascending rows */
            for (size_t i = 0; i < nread; i++)
                rows[i] = nread - 1 - i;
            struct rvs_desi_spectra sp;
            rvs_desi_spectra_init(&sp);
            (void)rvs_desi_read_spectra(f, rows, nread, RVS_DESI_READ_RESOLUTION, &sp);
            rvs_desi_spectra_free(&sp);
            free(rows);
        }
        rvs_desi_close(&f);
        break;
    }
    return 0;
}
