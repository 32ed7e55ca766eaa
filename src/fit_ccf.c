/* fit_ccf.c: the CCF start of the fitter (rvspecfit fitter_ccf.fit / make_ccf). */
#include <config.h>

#include <stdlib.h>

#include "internal.h"
#include "fit_internal.h"

int rvs_fit_ccf_create(struct rvs_fitter *f)
{
    (void)f;
    return RVS_OK;
}

void rvs_fit_ccf_destroy(struct rvs_fitter *f)
{
    (void)f;
}

int rvs_fit_ccf_start(struct rvs_fitter *f, const struct rvs_prepared *b, const size_t *list,
                      size_t n, struct rvs_fit_point *start, double *vstart)
{
    (void)b;
    return rvs_fit_start_bruteforce(f, list, n, start, vstart);
}
