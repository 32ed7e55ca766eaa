/* registry.c: every kernel routine, for the benchmark's list (one line per family). */
#include <config.h>

#include "routine.h"

extern const struct rvs_routine rvs_routine_gemm;
extern const struct rvs_routine rvs_routine_chisq;

const struct rvs_routine *const rvs_routines[] = {
    &rvs_routine_gemm,
    &rvs_routine_chisq,
    NULL,
};
