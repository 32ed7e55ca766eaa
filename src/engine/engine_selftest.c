/* engine_selftest.c: the engine's row of the start-up self-test (src/device/selftest.c): a
 * one-arm engine over a constant network; the best-fit model of a spectrum equal to a basis
 * function must reproduce it exactly, at two velocities sharing one template. A user of the
 * engine's public calls, apart from engine.c and evaluate.c. */
#include <config.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/internal.h"
#include "engine/engine_internal.h"
#include "rvsfit/chisq.h"
#include "rvsfit/engine.h"
#include "rvsfit/physics.h"
#include "rvsfit/resolution.h"
#include "rvsfit/rotation.h"
#include "rvsfit/spline.h"

/* ------------------------------------------------------------------ self-test */

/* det of a small symmetric positive matrix by Cholesky in long double; log of it */
static long double selftest_logdet(const long double *g, size_t np)
{
    long double l[16], logdet = 0;
    for (size_t j = 0; j < np; j++)
        for (size_t k = 0; k <= j; k++) {
            long double v = g[j * np + k];
            for (size_t q = 0; q < k; q++)
                v -= l[j * np + q] * l[k * np + q];
            if (j == k) {
                l[j * np + j] = sqrtl(v);
                logdet += 2 * logl(l[j * np + j]);
            } else {
                l[j * np + k] = v / l[k * np + k];
            }
        }
    return logdet;
}

/* One arm, a network whose weights are all zero (flux exp(0) = 1 at every template pixel) and a
 * spectrum that is a continuum in the basis: the best-fit model is the spectrum itself and
 * chi^2 = log det(P^T P / sigma^2) + 2 sum log sigma, for requests at v = 0 and 30 km/s (one
 * shared template) and vsini 10 km/s (a second template; a constant stays constant away from
 * the edges, whose darkening rings into the natural spline by a factor 2 - sqrt(3) per knot). */
int rvs_engine_selftest(struct rvs_context *ctx, char *detail, size_t detail_size)
{
    enum { TN = 96, N = 16, NP = 3, WIDTH = 2, NPC = 2, E = 3 };
    int status = RVS_OK;
    struct rvs_nn *nn = NULL;
    struct rvs_engine *g = NULL;
    static const float zeros[TN * NPC + WIDTH * WIDTH + RVS_ENGINE_NPARAM * WIDTH + TN] = {0};
    double tw[TN], dw[N], basis[NP * N], spec[N], espec[N], model[N], coef[NP];
    struct rvs_nn_desc d;
    rvs_nn_desc_init(&d);
    d.indim = RVS_ENGINE_NPARAM;
    d.nlayers = 0;
    d.width = WIDTH;
    d.npc = NPC;
    d.npix = TN;
    d.lin[0] = (struct rvs_nn_linear){zeros, zeros};
    d.lin[1] = (struct rvs_nn_linear){zeros, zeros};
    d.pc = (struct rvs_nn_linear){zeros, zeros};
    for (size_t j = 0; j < RVS_ENGINE_NPARAM; j++)
        d.map_scale[j] = 1;
    for (size_t i = 0; i < TN; i++)
        tw[i] = 5000.0 * exp(1e-4 * (double)i);
    for (size_t i = 0; i < N; i++)
        dw[i] = 5015.0 + (double)i; /* 30 knots from either end: no edge ringing */
    RVS_TRY(rvs_chisq_basis(dw, N, NP, 1, basis));
    long double gram[NP * NP] = {0}, logsig = 0;
    for (size_t i = 0; i < N; i++) {
        espec[i] = 0.25 + 0.0625 * (double)(i % 3);
        spec[i] = 3 * basis[i] + 0.5 * basis[N + i] + 0.25 * basis[2 * N + i];
        logsig += 2 * logl(espec[i]);
        for (size_t j = 0; j < NP; j++)
            for (size_t k = 0; k < NP; k++)
                gram[j * NP + k] +=
                    (long double)basis[j * N + i] * basis[k * N + i] / (espec[i] * espec[i]);
    }
    double want = (double)(selftest_logdet(gram, NP) + logsig);
    RVS_TRY(rvs_nn_create(ctx, &d, &nn));
    struct rvs_engine_arm_config arm = {.name = "selftest", .nn = nn, .template_wave = tw,
                                        .template_npix = TN, .data_wave = dw, .data_npix = N,
                                        .npoly = NP, .rbf = 1};
    RVS_TRY(rvs_engine_create(ctx, &arm, 1, &g));
    const double *ps = spec, *pe = espec;
    RVS_TRY(rvs_engine_set_data(g, 1, &ps, &pe, NULL, NULL));
    const struct rvs_engine_request req[E] = {{0, 5000, 4, 0, 0, 0, 0},
                                              {0, 5000, 4, 0, 0, 0, 30},
                                              {0, 5000, 4, 0, 0, 10, -30}};
    double chisq[E], models[E * N], coeffs[E * NP];
    double *mp = models, *cp = coeffs;
    RVS_TRY(rvs_engine_models(g, req, E, chisq, NULL, &mp, &cp));
    /* fp32: chi^2 ~ -90 to ~1e-4 (the chi^2 self-test's bound), models to a few float ulp */
    double tol = ctx->use_fp64 ? 1e-9 : 1e-3, mtol = ctx->use_fp64 ? 1e-12 : 1e-5;
    for (size_t e = 0; e < E && status == RVS_OK; e++) {
        memcpy(model, models + e * N, sizeof model);
        memcpy(coef, coeffs + e * NP, sizeof coef);
        double merr = 0;
        for (size_t i = 0; i < N; i++)
            merr = fmax(merr, fabs(model[i] - spec[i]) / 3.75);
        if (!(fabs(chisq[e] - want) <= tol) || !(merr <= mtol) ||
            !(fabs(coef[0] - 3) <= 1e3 * mtol)) {
            snprintf(detail, detail_size, "request %zu: chi^2 %.9g (expected %.9g), model error "
                     "%.3g, first coefficient %.9g (expected 3)", e, chisq[e], want, merr,
                     coef[0]);
            status = RVS_ERR_SELFTEST;
        }
    }
    if (status == RVS_OK && (g->stats.unique_theta != 1 || g->stats.unique_templates != 2)) {
        snprintf(detail, detail_size, "3 requests gave %llu theta and %llu templates, expected "
                 "1 and 2", g->stats.unique_theta, g->stats.unique_templates);
        status = RVS_ERR_SELFTEST;
    }
cleanup:
    rvs_engine_destroy(&g);
    rvs_nn_destroy(&nn);
    return status;
}
