/* runner.c: the check loop shared by every kernel test. */
#include <config.h>

#include <stdio.h>

#include "routine.h"

double rvs_routine_check(struct rvs_context *ctx, const struct rvs_routine *routine,
                         const struct rvs_routine_args *args)
{
    void *state = NULL;
    struct rvs_routine_args sized = *args;
    sized.real_size = rvs_context_real_size(ctx);
    args = &sized;
    int status = routine->setup(ctx, args, &state);
    if (status == RVS_OK)
        status = routine->run(ctx, state);
    if (status == RVS_OK)
        status = routine->reference(ctx, state);
    double err = status == RVS_OK ? routine->max_error(state) : -1.0;
    if (state)
        routine->destroy(state);
    if (status != RVS_OK)
        printf("%-22s %s batch=%zu n=%zu m=%zu k=%zu param=%g: FAILED TO RUN: %s\n",
               routine->name, ctx->use_fp64 ? "fp64" : "fp32", args->batch, args->n, args->m,
               args->k, args->param, rvs_strerror(status));
    else
        printf("%-22s %s batch=%zu n=%zu m=%zu k=%zu param=%g: %s error %.3e\n", routine->name,
               ctx->use_fp64 ? "fp64" : "fp32", args->batch, args->n, args->m, args->k,
               args->param, routine->error_kind, err);
    fflush(stdout);
    return err;
}
