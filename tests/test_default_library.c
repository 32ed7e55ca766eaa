/* test_default_library.c: the bundled default template library (data/default/) loads with full
 * validation, carries the default-library provenance and held-out emulation error within issue
 * #4's targets (median < 0.5 %, 99th percentile < 2 %), and its emulator gives finite positive
 * fluxes on the device for stars across the grid, with the Sun inside the training hulls. */
#include <config.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

int main(void)
{
    const char *top = getenv("top_srcdir");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/data/default", top ? top : ".");
    struct rvs_context *ctx = test_context(1);
    static const char *const setups[] = {"desi_b", "desi_r", "desi_z"};
    /* Sun, a K giant, an A star, a metal-poor turn-off star, an M dwarf */
    static const double stars[][4] = {{5772, 4.44, 0.0, 0.0},   {4500, 2.0, -0.5, 0.2},
                                      {9000, 4.0, 0.0, 0.0},    {6300, 4.0, -2.0, 0.4},
                                      {3600, 4.8, 0.0, 0.0}};
    const size_t nstar = sizeof stars / sizeof stars[0];
    for (size_t a = 0; a < 3; a++) {
        struct rvs_library_arm *arm = NULL;
        int status = rvs_library_open(dir, setups[a], &arm);
        CHECK(status == RVS_OK, "%s: cannot open the default library: %s", setups[a],
              rvs_strerror(status));
        if (status != RVS_OK)
            continue;
        CHECK(rvs_library_check_desi(arm) == RVS_OK, "%s: parameters are not DESI's", setups[a]);
        const struct rvs_library_provenance *prov = rvs_library_provenance(arm);
        CHECK(strncmp(prov->librev, "default-", 8) == 0, "%s: LIBREV '%s'", setups[a],
              prov->librev);
        /* issue #4's emulation-error target, as the trainer measured it on the held-out grid
         * spectra (1185 of 12000) */
        CHECK(prov->valmed < 0.005 && prov->val99 < 0.02,
              "%s: held-out |dflux|/flux median %.4g, 99th percentile %.4g (targets 0.005, 0.02)",
              setups[a], prov->valmed, prov->val99);
        CHECK(rvs_library_outside(arm, stars[0]) == 0.0, "%s: the Sun is outside the hulls",
              setups[a]);
        struct rvs_nn *nn = NULL;
        status = rvs_nn_create(ctx, rvs_library_nn_desc(arm), &nn);
        CHECK(status == RVS_OK, "%s: rvs_nn_create: %s", setups[a], rvs_strerror(status));
        size_t npix = rvs_library_npix(arm), es = rvs_context_real_size(ctx);
        double theta[5 * 4];
        float thetaf[5 * 4];
        for (size_t i = 0; i < nstar * 4; i++)
            thetaf[i] = (float)(theta[i] = stars[i / 4][i % 4]);
        cl_mem dp = NULL, dout = NULL;
        void *out = malloc(nstar * npix * es);
        if (status == RVS_OK)
            status = rvs_buffer_create(ctx, CL_MEM_READ_ONLY, nstar * 4 * es,
                                       es == 8 ? (void *)theta : (void *)thetaf, &dp);
        if (status == RVS_OK)
            status = rvs_buffer_create(ctx, CL_MEM_READ_WRITE, nstar * npix * es, NULL, &dout);
        if (status == RVS_OK)
            status = rvs_nn_forward(ctx, nn, dp, nstar, dout, RVS_NN_FLUX_REAL);
        if (status == RVS_OK)
            status = rvs_buffer_read(ctx, dout, 0, nstar * npix * es, out);
        CHECK(status == RVS_OK, "%s: forward pass: %s", setups[a], rvs_strerror(status));
        size_t bad = 0;
        for (size_t i = 0; status == RVS_OK && i < nstar * npix; i++) {
            double v = es == 8 ? ((double *)out)[i] : ((float *)out)[i];
            bad += !(isfinite(v) && v > 0);
        }
        CHECK(bad == 0, "%s: %zu non-finite or non-positive flux values", setups[a], bad);
        printf("%s: %zu px, LIBREV %s, held-out median %.3f %%, p99 %.3f %%, %zu stars "
               "evaluated\n", setups[a], npix, prov->librev, 100 * prov->valmed,
               100 * prov->val99, nstar);
        free(out);
        rvs_buffer_release(&dp);
        rvs_buffer_release(&dout);
        rvs_nn_destroy(&nn);
        rvs_library_close(&arm);
    }
    rvs_context_destroy(&ctx);
    return test_finish("test_default_library");
}
