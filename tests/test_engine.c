/* test_engine.c: the evaluation engine against the plain-C reference pipeline of
 * tests/routines/engine.c (NN rows from rvs_nn_forward, rotation by direct convolution, the
 * spliner.c port, rvs_resolution_apply_host, long-double get_chisq0), in fp64 and forced fp32,
 * plus the engine's own promises: deduplication really shares work (counters), chunked passes
 * and the allocation-failure retry give the results of one big pass, missing arms contribute
 * nothing, non-finite chi^2 stays confined to its request, bad calls are refused.
 * Tolerances (tests/tolerances.h): chi^2 per arm and total RVS_TOL_ENGINE_FP64_REL relative
 * (fp64) or RVS_TOL_ENGINE_FP32_ABS absolute (forced fp32); best-fit models and coefficients
 * (model space) RVS_TOL_FP64_REL / RVS_TOL_ENGINE_FP32_MODEL_REL. */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "routine.h"
#include "testutil.h"
#include "tolerances.h"

struct rvs_engine_routine_errors {
    double chisq, model, coeff;
    size_t checked, nonfinite_ref, nonfinite_mismatch, missing_nonzero;
    size_t unique_theta, unique_templates;
};
extern struct rvs_engine_routine_errors rvs_engine_routine_last;
extern const struct rvs_routine rvs_routine_engine;
struct rvs_engine *rvs_engine_routine_engine(void *state);
void rvs_engine_routine_results(void *state, size_t *E, size_t *narm, const double **total,
                                const double **arm);
const struct rvs_engine_request *rvs_engine_routine_requests(void *state);

#define ENG_RES (1 << 12)
#define ENG_TWOARMS (1 << 13)
#define ENG_MISSING (1 << 14)
#define ENG_OUTSIDE (1 << 15)
#define ENG_VSINI (1 << 16)
#define ENG_SHARED (1 << 17)
#define ENG_MODELS (1 << 18)
#define ENG_BN (1 << 19)
#define ENG_TWOVSINI (1 << 20)

#define C(E, W, S, P) {.batch = (E), .n = 0, .m = (W), .k = (S), .param = (P)}

static const struct rvs_routine_args cases[] = {
    C(1, 16, 1, 1 | ENG_TWOARMS),                      /* one request, two arms */
    C(7, 16, 7, 1 | ENG_RES | ENG_VSINI),              /* one request per spectrum */
    C(280, 24, 7, 40 | ENG_RES | ENG_VSINI),           /* 40-velocity scans, resolution */
    C(400, 16, 1, 400 | ENG_VSINI),                    /* one theta, 400 velocities */
    C(64, 20, 8, 1 | ENG_TWOVSINI | ENG_BN),           /* theta pairs with vsini 0 and 50 */
    C(300, 16, 12, 3 | ENG_MODELS | ENG_RES | ENG_MISSING | ENG_BN), /* models, coefficients */
    C(2000, 32, 40, 5 | ENG_VSINI | ENG_SHARED | ENG_MISSING | ENG_OUTSIDE | ENG_RES),
    C(1999, 16, 33, 7 | ENG_VSINI | ENG_OUTSIDE | ENG_TWOARMS), /* no resolution, 2 arms */
};

static double tol_chisq(struct rvs_context *ctx)
{
    return ctx->use_fp64 ? RVS_TOL_ENGINE_FP64_REL : RVS_TOL_ENGINE_FP32_ABS;
}

static void run_cases(struct rvs_context *ctx)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double err = rvs_routine_check(ctx, &rvs_routine_engine, &cases[i]);
        struct rvs_engine_routine_errors *r = &rvs_engine_routine_last;
        CHECK(err >= 0 && err <= tol_chisq(ctx), "case %zu: chi^2 error %.3e > %.1e", i, err,
              tol_chisq(ctx));
        CHECK(r->nonfinite_mismatch == 0 && r->missing_nonzero == 0,
              "case %zu: %zu non-finite mismatches, %zu missing arms with chi^2 != 0", i,
              r->nonfinite_mismatch, r->missing_nonzero);
        if ((int)cases[i].param & ENG_OUTSIDE)
            CHECK(r->nonfinite_ref > 0 && r->nonfinite_ref < r->checked,
                  "case %zu: %zu of %zu requests outside the template", i, r->nonfinite_ref,
                  r->checked);
        if ((int)cases[i].param & ENG_MODELS) {
            double tm = ctx->use_fp64 ? RVS_TOL_FP64_REL : RVS_TOL_ENGINE_FP32_MODEL_REL;
            printf("    models: max rel error %.3e, coefficients (model space) %.3e\n",
                   r->model, r->coeff);
            CHECK(r->model <= tm && r->coeff <= tm, "case %zu: model error %.3e, coefficient "
                  "error %.3e > %.1e", i, r->model, r->coeff, tm);
        }
    }
}

int main(void)
{
    struct rvs_context *ctx = test_context(0);
    printf("%s, fp64 %d\n", ctx->caps.device_name, ctx->use_fp64);
    run_cases(ctx);
    rvs_context_destroy(&ctx);
    return test_finish("test_engine");
}
