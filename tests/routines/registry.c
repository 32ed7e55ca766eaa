/* registry.c: every kernel routine, for the benchmark's list (one line per family). */
#include <config.h>

#include "routine.h"

extern const struct rvs_routine rvs_routine_gemm;
extern const struct rvs_routine rvs_routine_chisq;
extern const struct rvs_routine rvs_routine_nn;
extern const struct rvs_routine rvs_routine_resolution;
extern const struct rvs_routine rvs_routine_rotation;
extern const struct rvs_routine rvs_routine_spline_construct;
extern const struct rvs_routine rvs_routine_spline_eval;
extern const struct rvs_routine rvs_routine_engine;

const struct rvs_routine *const rvs_routines[] = {
    &rvs_routine_gemm,
    &rvs_routine_chisq,
    &rvs_routine_nn,
    &rvs_routine_resolution,
    &rvs_routine_rotation,
    &rvs_routine_spline_construct,
    &rvs_routine_spline_eval,
    &rvs_routine_engine,
    NULL,
};
