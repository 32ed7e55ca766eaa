/* test_box_errors.c: the errors of theta under the flat prior over the training box
 * (src/fit/box_errors.c, and the weighting of the likelihood scans of src/fit/profile_errors.c)
 * against plain-C references:
 *  - a Gaussian well inside the box keeps its errors exactly;
 *  - a parameter at a bound with the box wide on the other side: the root mean square distance
 *    of a half-Gaussian from its mode is sigma (quadrature reference);
 *  - a parameter the data barely constrain (sigma 5 dex, 3.6x [alpha/Fe]'s box, as the Hessian
 *    gives hot stars at S/N 5): near the flat distribution's sqrt(range^2 / 12 + (centre -
 *    mode)^2) (quadrature reference);
 *  - two strongly correlated parameters ([Fe/H], [alpha/Fe]: rho 0.9, errors 1.5 and 1 dex,
 *    wider than [alpha/Fe]'s box) against a 2-D quadrature of the cut Gaussian: the case the
 *    module exists for, where [alpha/Fe]'s bounds shrink [Fe/H]'s error;
 *  - the same input twice gives the same errors; a covariance that is not positive definite,
 *    a Gaussian far outside the box and one ~10^4 times wider than it (too few draws land in
 *    it) are refused (return 0, errors untouched).
 *  - the scan's RMS distance (rvs_fit_scan_rms) on its 16-point grid: a quadratic -2 log L over
 *    +-5 sigma gives sigma (0.1 %); a likelihood flat over [-4, -1.5] and steep above (a hot
 *    metal-poor star's [Fe/H]) the flat distribution's distance from the optimum (10 %: 8 grid
 *    points on the flat part); bad values (1e30, NaN) weigh nothing; nothing left: NaN.
 * Tolerance 6 % on each error of the sampler: its noise is <= 1.6 % (2048 accepted draws at
 * least), the quadrature's < 0.1 %. */
#include <config.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "fit/fit_internal.h"

static const double LO[4] = {3000, 0, -4, -0.4}, HI[4] = {12000, 5.5, 1, 1};
static int failures;

static void expect_close(const char *what, double got, double want, double rel)
{
    int ok = isfinite(got) && fabs(got - want) <= rel * fabs(want);
    printf("%-48s got %.5g want %.5g (rel %.3f) %s\n", what, got, want,
           isfinite(got) ? fabs(got - want) / fabs(want) : NAN, ok ? "ok" : "FAIL");
    failures += !ok;
}

static void diagonal(double cov[4][4], const double sigma[4])
{
    memset(cov, 0, 16 * sizeof(double));
    for (int k = 0; k < 4; k++)
        cov[k][k] = sigma[k] * sigma[k];
}

/* E[(x - m)^2] of N(m, s^2) cut to [lo, hi], by the midpoint rule */
static double rms_1d(double m, double s, double lo, double hi)
{
    const int n = 200000;
    double w = 0, sum = 0, h = (hi - lo) / n;
    for (int i = 0; i < n; i++) {
        double x = lo + (i + 0.5) * h, d = (x - m) / s, p = exp(-0.5 * d * d);
        w += p;
        sum += p * (x - m) * (x - m);
    }
    return sqrt(sum / w);
}

/* the same in 2-D for a correlated pair: returns both RMS distances */
static void rms_2d(const double m[2], const double c[2][2], const double lo[2], const double hi[2],
                   double out[2])
{
    const int n = 1200;
    double det = c[0][0] * c[1][1] - c[0][1] * c[1][0];
    double i00 = c[1][1] / det, i11 = c[0][0] / det, i01 = -c[0][1] / det;
    double w = 0, s0 = 0, s1 = 0, h0 = (hi[0] - lo[0]) / n, h1 = (hi[1] - lo[1]) / n;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double a = lo[0] + (i + 0.5) * h0 - m[0], b = lo[1] + (j + 0.5) * h1 - m[1];
            double p = exp(-0.5 * (i00 * a * a + 2 * i01 * a * b + i11 * b * b));
            w += p;
            s0 += p * a * a;
            s1 += p * b * b;
        }
    out[0] = sqrt(s0 / w);
    out[1] = sqrt(s1 / w);
}

int main(void)
{
    double cov[4][4], err[4];

    /* well inside: the Gaussian errors, exactly */
    {
        const double mode[4] = {5500, 4.2, -0.5, 0.2}, sig[4] = {50, 0.1, 0.05, 0.04};
        diagonal(cov, sig);
        int ok = rvs_fit_box_errors(mode, cov, LO, HI, err);
        int same = ok;
        for (int k = 0; k < 4; k++)
            same &= err[k] == sig[k];
        printf("%-48s %s\n", "inside: Gaussian errors unchanged", same ? "ok" : "FAIL");
        failures += !same;
    }
    /* [Fe/H] at its lower bound: the half-Gaussian's RMS distance from the mode */
    {
        const double mode[4] = {5500, 4.2, -4, 0.2}, sig[4] = {50, 0.1, 0.5, 0.04};
        diagonal(cov, sig);
        if (!rvs_fit_box_errors(mode, cov, LO, HI, err))
            failures++, printf("at a bound: refused FAIL\n");
        expect_close("at a bound: FEH", err[2], rms_1d(-4, 0.5, -4, 1), 0.06);
        expect_close("at a bound: TEFF (independent, inside)", err[0], 50, 0.06);
    }
    /* [alpha/Fe] barely constrained: close to the flat distribution's RMS distance */
    {
        const double mode[4] = {9000, 4.0, -1.0, 0.9}, sig[4] = {150, 0.2, 0.3, 5};
        diagonal(cov, sig);
        if (!rvs_fit_box_errors(mode, cov, LO, HI, err))
            failures++, printf("unconstrained: refused FAIL\n");
        double c = 0.5 * (LO[3] + HI[3]), r = HI[3] - LO[3];
        expect_close("unconstrained: ALPHAFE", err[3], rms_1d(0.9, 5, LO[3], HI[3]), 0.06);
        expect_close("unconstrained: ALPHAFE near the flat limit", err[3],
                     sqrt(r * r / 12 + (c - 0.9) * (c - 0.9)), 0.1);
        expect_close("unconstrained: FEH (independent, inside)", err[2], 0.3, 0.06);
    }
    /* [Fe/H] and [alpha/Fe] correlated, [alpha/Fe] cut by its box on both sides */
    {
        const double mode[4] = {8000, 4.0, -2.0, 0.3};
        const double sf = 1.5, sa = 1.0, rho = 0.9;
        const double sig[4] = {100, 0.1, sf, sa};
        diagonal(cov, sig);
        cov[2][3] = cov[3][2] = rho * sf * sa;
        if (!rvs_fit_box_errors(mode, cov, LO, HI, err))
            failures++, printf("correlated: refused FAIL\n");
        const double m2[2] = {-2.0, 0.3};
        const double c2[2][2] = {{sf * sf, rho * sf * sa}, {rho * sf * sa, sa * sa}};
        const double lo2[2] = {LO[2], LO[3]}, hi2[2] = {HI[2], HI[3]};
        double ref[2];
        rms_2d(m2, c2, lo2, hi2, ref);
        expect_close("correlated: FEH", err[2], ref[0], 0.06);
        expect_close("correlated: ALPHAFE", err[3], ref[1], 0.06);
        int shrunk = err[2] < 0.7 * sf;
        printf("%-48s %.3f < %.3f %s\n", "correlated: FEH error shrunk by ALPHAFE's box", err[2],
               0.7 * sf, shrunk ? "ok" : "FAIL");
        failures += !shrunk;
        double again[4];
        rvs_fit_box_errors(mode, cov, LO, HI, again);
        int same = memcmp(err, again, sizeof err) == 0;
        printf("%-48s %s\n", "same input, same errors", same ? "ok" : "FAIL");
        failures += !same;
    }
    /* refusals */
    {
        const double mode[4] = {5500, 4.2, -0.5, 0.2}, sig[4] = {50, 0.1, 0.05, 0.04};
        diagonal(cov, sig);
        cov[2][3] = cov[3][2] = 0.05 * 0.04 * 1.5; /* |rho| > 1 */
        err[0] = 42;
        int r1 = rvs_fit_box_errors(mode, cov, LO, HI, err);
        const double far[4] = {5500, 4.2, 9.0, 0.2};
        diagonal(cov, sig);
        int r2 = rvs_fit_box_errors(far, cov, LO, HI, err);
        const double wide[4] = {50, 0.1, 0.05, 1e4};
        diagonal(cov, wide);
        int r3 = rvs_fit_box_errors(mode, cov, LO, HI, err);
        int ok = r1 == 0 && r2 == 0 && r3 == 0 && err[0] == 42;
        printf("%-48s %s\n", "not pos. definite / far outside / too wide: refused",
               ok ? "ok" : "FAIL");
        failures += !ok;
    }
    /* the scan's weighting */
    {
        enum { G = 16 };
        double t[G], v[G];
        const double m = 0.3, sg = 0.2;
        for (int j = 0; j < G; j++) {
            t[j] = m - 5 * sg + (j + 0.5) * 10 * sg / G;
            v[j] = 100 + (t[j] - m) * (t[j] - m) / (sg * sg);
        }
        expect_close("scan: quadratic -2 log L", rvs_fit_scan_rms(t, v, G, m, 100), sg, 1e-3);
        v[3] = 1e30;
        v[12] = NAN;
        double e = rvs_fit_scan_rms(t, v, G, m, 100);
        expect_close("scan: bad points weigh nothing", e, sg, 0.05);
        const double a = -4, b = 1, top = -1.5, mode = -2.9;
        for (int j = 0; j < G; j++) {
            t[j] = a + (j + 0.5) * (b - a) / G;
            double over = t[j] > top ? (t[j] - top) / 0.05 : 0;
            v[j] = 50 + over * over;
        }
        double c = 0.5 * (a + top), w = top - a;
        expect_close("scan: flat, then steep", rvs_fit_scan_rms(t, v, G, mode, 50),
                     sqrt(w * w / 12 + (c - mode) * (c - mode)), 0.1);
        for (int j = 0; j < G; j++)
            v[j] = 1e30;
        int none = isnan(rvs_fit_scan_rms(t, v, G, mode, 50)) &&
                   isnan(rvs_fit_scan_rms(t, t, G, mode, NAN));
        printf("%-48s %s\n", "scan: nothing weighs / no reference: NaN", none ? "ok" : "FAIL");
        failures += !none;
    }
    printf("%d failure(s)\n", failures);
    return failures ? 1 : 0;
}
