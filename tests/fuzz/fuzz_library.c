/* fuzz_library.c: the template-library loader (src/library/library.c) on arbitrary bytes. The loader
 * checks every HDU's CHECKSUM/DATASUM before anything else, so a mutated file would almost never
 * get further; each input is therefore loaded twice: as it is (the checksum path), and after
 * cfitsio has written fresh checksums into every HDU it can reach (the keywords, shapes, values,
 * network and hulls behind them). A library that loads is then used as the fitter uses it:
 * parameter mapping and the outside-grid penalty at a few points. */
#include <config.h>

#include <fitsio.h>
#include <math.h>

#include "fuzz_common.h"
#include "base/internal.h"
#include "rvsfit/status.h"
#include "rvsfit/library.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fuzz_quiet();
    return 0;
}

static void load_and_use(const char *path)
{
    struct rvs_library_arm *arm = NULL;
    if (rvs_library_open_file(path, &arm) != RVS_OK)
        return;
    (void)rvs_library_check_desi(arm);
    size_t np = rvs_library_nparam(arm);
    double theta[4 * 8] = {0}, out[4], x[8];
    if (np <= 8) {
        static const double probe[4][4] = {
            {5800, 4.4, 0, 0}, {3000, 0, -4, -0.5}, {NAN, 1, 1, 1}, {1e30, -1e30, 5, 9}};
        for (size_t i = 0; i < 4; i++)
            for (size_t k = 0; k < np; k++)
                theta[i * np + k] = probe[i][k % 4];
        rvs_library_outside_many(arm, theta, 4, out);
        rvs_library_map(arm, theta, x);
    }
    rvs_library_close(&arm);
}

/* fresh CHECKSUM/DATASUM in every HDU cfitsio can move to; 0 when the file is not FITS enough */
static int refresh_checksums(const char *path)
{
    fitsfile *f = NULL;
    int st = 0, nhdu = 0;
    if (fits_open_diskfile(&f, path, READWRITE, &st) != 0) {
        fits_clear_errmsg();
        return 0;
    }
    fits_get_num_hdus(f, &nhdu, &st);
    for (int i = 1; i <= nhdu && st == 0; i++) {
        fits_movabs_hdu(f, i, NULL, &st);
        if (st == 0)
            fits_write_chksum(f, &st);
    }
    int cst = 0;
    fits_close_file(f, &cst);
    fits_clear_errmsg();
    return st == 0 && cst == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[640];
    /* the loader wants the file named rvsfit_<SETUP>.fits; the seeds are desi_b */
    fuzz_write("rvsfit_desi_b.fits", data, size, path, sizeof path);
    load_and_use(path);
    /* cfitsio 4.2.0 aborts on some non-ASCII headers (src/base/fits_guard.c): the harness's own
     * cfitsio calls go only where the loader's guard would let cfitsio go */
    char why[400];
    if (rvs_fits_check_headers(path, why, sizeof why) == RVS_OK && refresh_checksums(path))
        load_and_use(path);
    return 0;
}
