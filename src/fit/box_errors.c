/* fit/box_errors.c: the errors of (teff, logg, feh, alpha) under the flat prior over the
 * libraries' training box (issue 24).
 *
 * The Gauss-Newton covariance C describes the likelihood near the optimum as a Gaussian with no
 * bounds. Where a parameter is barely constrained (the [alpha/Fe] of hot or metal-poor stars at
 * low S/N) its Gaussian extends far beyond the box the fit can reach, and through the
 * correlations it widens the others: a [Fe/H] error of 1-7 dex because [alpha/Fe] could trade
 * for it over +-3 dex, where the fit and the truth both live in [-0.4, 1]. Realistic
 * 1000-target mocks (S/N 5-7): the FEH pulls of such stars had widths 0.36-0.65 (errors twice
 * too large), the FEH cell as a whole 0.78.
 *
 * The posterior of a flat prior over the box is that Gaussian cut to the box. The error written
 * is its root mean square distance from the reported optimum, sqrt(E[(theta_k - mode_k)^2]):
 * the scale of (fit - truth) that a pull divides by. (Its standard deviation about the posterior
 * mean would be smaller at a bound, where the optimum sits off the mean: a fit at the edge of
 * the box is as uncertain as the half-Gaussian says, not less.) For a well-constrained
 * parameter far from the bounds it is the Gaussian error; for one the data do not constrain at
 * all it tends to the distance of a flat distribution over the box from the optimum
 * (range / sqrt(12) at the centre).
 *
 * The moments come from rejection sampling of the Gaussian (2^12 draws, up to 2^16 until 2048
 * are accepted): relative noise <= 1.6 % on an error. The generator is seeded by the bits of the
 * optimum and its covariance, so a target's errors depend on its own fit only, not on its batch
 * or the run. Targets whose Gaussian lies inside the box by RVS_BOX_INSIDE_SIGMA marginal errors
 * keep the Gaussian errors (the cut changes them by < 1e-4); at S/N >= 20 that is most. */
#include <config.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fit/fit_internal.h"
#include "base/random.h"

#define RVS_BOX_INSIDE_SIGMA 4.0
#define RVS_BOX_DRAWS 4096      /* first round */
#define RVS_BOX_MAX_DRAWS 65536 /* when the box accepts few draws */
#define RVS_BOX_MIN_ACCEPT 2048 /* accepted draws: ~1.6 % noise on an error */

/* uniform in (0, 1) from splitmix64 (enough for 2^16 draws): 53 random bits, never 0 (the
 * logarithm of Box-Muller) */
static double box_uniform(uint64_t *state)
{
    return rvs_unit53(rvs_splitmix64(state)) + 0x1.0p-54;
}

/* The seed: the bit patterns of mode and cov, folded through the generator's mixer */
static uint64_t box_seed(const double mode[4], const double cov[4][4])
{
    uint64_t state = 0x6a09e667f3bcc909ULL, h = 0;
    for (int k = 0; k < 20; k++) {
        double v = k < 4 ? mode[k] : cov[(k - 4) / 4][(k - 4) % 4];
        uint64_t bits;
        memcpy(&bits, &v, sizeof bits);
        state ^= bits;
        h ^= rvs_splitmix64(&state);
    }
    return h;
}

int rvs_fit_box_errors(const double mode[4], const double cov[4][4], const double lo[4],
                       const double hi[4], double err[4])
{
    /* the covariance's lower Cholesky factor (in the fitter's 6 x 6 layout) */
    double c6[RVS_FIT_NDIM][RVS_FIT_NDIM] = {{0}}, l[RVS_FIT_NDIM][RVS_FIT_NDIM] = {{0}};
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 4; b++)
            c6[a][b] = cov[a][b];
    if (rvs_fit_cholesky(4, c6, l) != 0)
        return 0;
    int inside = 1;
    for (int k = 0; k < 4; k++) {
        if (!isfinite(mode[k]))
            return 0;
        double s = sqrt(cov[k][k]);
        if (mode[k] - RVS_BOX_INSIDE_SIGMA * s < lo[k] ||
            mode[k] + RVS_BOX_INSIDE_SIGMA * s > hi[k])
            inside = 0;
    }
    if (inside) {
        for (int k = 0; k < 4; k++)
            err[k] = sqrt(cov[k][k]);
        return 1;
    }
    uint64_t state = box_seed(mode, cov);
    double sum[4] = {0, 0, 0, 0};
    long accepted = 0, drawn = 0;
    while (drawn < RVS_BOX_MAX_DRAWS && (drawn < RVS_BOX_DRAWS || accepted < RVS_BOX_MIN_ACCEPT)) {
        double z[4], d[4];
        for (int k = 0; k < 4; k += 2) { /* Box-Muller: two normal deviates per pair */
            double r = sqrt(-2 * log(box_uniform(&state))), a = 2 * M_PI * box_uniform(&state);
            z[k] = r * cos(a);
            z[k + 1] = r * sin(a);
        }
        drawn++;
        int in = 1;
        for (int k = 0; k < 4 && in; k++) {
            d[k] = 0;
            for (int j = 0; j <= k; j++)
                d[k] += l[k][j] * z[j];
            double t = mode[k] + d[k];
            in = t >= lo[k] && t <= hi[k];
        }
        if (!in)
            continue;
        accepted++;
        for (int k = 0; k < 4; k++)
            sum[k] += d[k] * d[k];
    }
    if (accepted < RVS_BOX_MIN_ACCEPT / 4)
        return 0; /* the Gaussian barely meets the box: no estimate worth its noise */
    for (int k = 0; k < 4; k++)
        err[k] = sqrt(sum[k] / (double)accepted);
    return 1;
}
