/* desi_internal.h: helpers shared by the DESI input modules (desi/read.c, select.c,
 * targetmask.c, prepare.c); not installed. */
#ifndef RVS_DESI_INTERNAL_H
#define RVS_DESI_INTERNAL_H

#include <stddef.h>

#include "base/internal.h"

/* Logs a failed cfitsio call ("path: what: cfitsio's text (status N)"), drains cfitsio's message
 * stack into the log, and returns RVS_ERR_IO (file cannot be opened or read) or RVS_ERR_FORMAT. */
int rvs_desi_fits_error(int fits_status, const char *path, const char *what, ...)
    RVS_PRINTF_LIKE(3, 4);

/* After a cfitsio call that set `fst`: on failure, log and jump to cleanup with the status. */
#define RVS_FITS_CHECK(fst, path, ...)                                                             \
    do {                                                                                           \
        if ((fst) != 0) {                                                                          \
            status = rvs_desi_fits_error((fst), (path), __VA_ARGS__);                              \
            goto cleanup;                                                                          \
        }                                                                                          \
    } while (0)

/* Median of x[0..n) (partially reorders x); NaN for n == 0. numpy's definition: the mean of the
 * two middle values when n is even. */
double rvs_desi_median(double *x, size_t n);

#endif
