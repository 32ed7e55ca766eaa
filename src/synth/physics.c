/* synth/physics.c: the microphysics of the spectrum generator: abundances, partition functions
 * and Saha-Boltzmann populations, molecular equilibrium constants, continuous opacities (H-,
 * H I bound-free and free-free, Thomson and Rayleigh scattering), the Voigt function, exponential
 * integrals, Planck function, hydrogen oscillator strengths and air/vacuum wavelengths.
 * Sources are cited at each function; doc/mkgrid.md lists them all. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/internal.h"
#include "synth/synth_internal.h"

/* Asplund, Grevesse, Sauval & Scott 2009 (ARA&A 47, 481), Table 1: photospheric values, and
 * meteoritic ones where no photospheric value exists; -5 where neither is given. */
const double rvs_synth_solar_abundance[RVS_SYNTH_MAX_Z + 1] = {
    -99.0,
    12.00, 10.93, 1.05,  1.38,  2.70,  8.43,  7.83,  8.69,  4.56,  7.93, /* H..Ne */
    6.24,  7.60,  6.45,  7.51,  5.41,  7.12,  5.50,  6.40,  5.03,  6.34, /* Na..Ca */
    3.15,  4.95,  3.93,  5.64,  5.43,  7.50,  4.99,  6.22,  4.19,  4.56, /* Sc..Zn */
    3.04,  3.65,  2.30,  3.34,  2.54,  3.25,  2.52,  2.87,  2.21,  2.58, /* Ga..Zr */
    1.46,  1.88,  -5.00, 1.75,  0.91,  1.57,  0.94,  1.71,  0.80,  2.04, /* Nb..Sn */
    1.01,  2.18,  1.55,  2.24,  1.08,  2.18,  1.10,  1.58,  0.72,  1.42, /* Sb..Nd */
    -5.00, 0.96,  0.52,  1.07,  0.30,  1.10,  0.48,  0.92,  0.10,  0.84, /* Pm..Yb */
    0.10,  0.85,  -0.12, 0.85,  0.26,  1.40,  1.38,  1.62,  0.92,  1.17, /* Lu..Hg */
    0.90,  1.75,  0.65,  -5.00, -5.00, -5.00, -5.00, -5.00, -5.00, 0.02, /* Tl..Th */
    -5.00, -0.54};

double rvs_synth_atomic_mass(int z)
{
    /* exact standard weights where they matter most, a smooth A(Z) fit elsewhere (the thermal
     * width goes as A^-1/2, so a few per cent in A is a one per cent width change) */
    static const double light[31] = {0,      1.008,  4.003,  6.94,   9.012,  10.81,  12.011,
                                     14.007, 15.999, 18.998, 20.180, 22.990, 24.305, 26.982,
                                     28.085, 30.974, 32.06,  35.45,  39.948, 39.098, 40.078,
                                     44.956, 47.867, 50.942, 51.996, 54.938, 55.845, 58.933,
                                     58.693, 63.546, 65.38};
    if (z >= 1 && z <= 30)
        return light[z];
    return z * (2.0 + 0.0065 * z);
}

static const int molecule_atoms[RVS_SYNTH_NMOL][2] = {
    {1, 1},  {6, 8},  {6, 7},  {6, 6},  {7, 7},  {6, 1},  {7, 1},  {8, 1},
    {12, 1}, {14, 1}, {20, 1}, {26, 1}, {22, 8}, {23, 8}, {40, 8}, {14, 8}};

void rvs_synth_molecule_atoms(int mol, int *z1, int *z2)
{
    *z1 = molecule_atoms[mol][0];
    *z2 = molecule_atoms[mol][1];
}

/* Linear interpolation of a table on rvs_synth_table_temps; outside it the end value below
 * 1000 K and a (non-negative slope) linear extrapolation above 10000 K, capped at 20000 K. */
static double interp_temp(const float *table, double t)
{
    const double *tt = rvs_synth_table_temps;
    if (t <= tt[0])
        return table[0];
    int n = RVS_SYNTH_NTEMP;
    if (t >= tt[n - 1]) {
        double slope = (table[n - 1] - table[n - 2]) / (tt[n - 1] - tt[n - 2]);
        if (slope < 0)
            slope = 0;
        if (t > 20000.0)
            t = 20000.0;
        return table[n - 1] + slope * (t - tt[n - 1]);
    }
    int i = 0;
    while (t > tt[i + 1])
        i++;
    double w = (t - tt[i]) / (tt[i + 1] - tt[i]);
    return table[i] + w * (table[i + 1] - table[i]);
}

double rvs_synth_partition(int z, int ion, double t)
{
    if (z < 1 || z > RVS_SYNTH_MAX_Z || ion < 0 || ion > 2)
        return 1.0;
    return pow(10.0, interp_temp(rvs_synth_log_partition[z][ion], t));
}

double rvs_synth_molecule_partition(int mol, double t)
{
    return pow(10.0, interp_temp(rvs_synth_molecule_log_partition[mol], t));
}

double rvs_synth_molecule_kp(int mol, double t)
{
    /* log K_p is close to linear in 1/T (it is dominated by D0/kT), so interpolate in 1/T */
    const double *tt = rvs_synth_table_temps;
    const float *k = rvs_synth_molecule_log_kp[mol];
    int n = RVS_SYNTH_NTEMP;
    if (t < tt[0])
        t = tt[0];
    if (t > tt[n - 1])
        t = tt[n - 1];
    int i = 0;
    while (i < n - 2 && t > tt[i + 1])
        i++;
    double w = (1.0 / t - 1.0 / tt[i]) / (1.0 / tt[i + 1] - 1.0 / tt[i]);
    return pow(10.0, k[i] + w * (k[i + 1] - k[i]));
}

double rvs_synth_saha(int z, int ion, double t, double ne)
{
    if (ion < 0 || ion > 1)
        return 0.0;
    double chi = rvs_synth_ionization_energy[z][ion];
    if (chi <= 0)
        return 0.0;
    double u0 = rvs_synth_partition(z, ion, t), u1 = rvs_synth_partition(z, ion + 1, t);
    return 2.0 * u1 / u0 * RVS_SAHA_CONST * t * sqrt(t) * exp(-chi / (RVS_K_EV * t)) / ne;
}

double rvs_synth_boltzmann(int z, int ion, double g, double ep, double t)
{
    return g * exp(-ep / (RVS_K_EV * t)) / rvs_synth_partition(z, ion, t);
}

void rvs_synth_ion_fractions(int z, double t, double ne, double frac[3])
{
    double r1 = rvs_synth_saha(z, 0, t, ne);
    double r2 = z > 1 ? rvs_synth_saha(z, 1, t, ne) : 0.0;
    double d = 1.0 + r1 + r1 * r2;
    frac[0] = 1.0 / d;
    frac[1] = r1 / d;
    frac[2] = r1 * r2 / d;
}

/* ---------------------------------------------------------------- special functions */

void rvs_synth_expint(double x, double e[4])
{
    double ex = exp(-x);
    double e1;
    if (x <= 0.0) {
        e[0] = 1e30;
        e[1] = 1.0;
        e[2] = 0.5;
        e[3] = 1.0 / 3.0;
        return;
    }
    if (x <= 1.0) {
        /* Abramowitz & Stegun 5.1.53, |error| < 2e-7 */
        e1 = -log(x) - 0.57721566 +
             x * (0.99999193 + x * (-0.24991055 + x * (0.05519968 +
                                                        x * (-0.00976004 + x * 0.00107857))));
    } else {
        /* Abramowitz & Stegun 5.1.56, relative error < 2e-8 */
        double num = x * (x * (x * (x + 8.5733287401) + 18.0590169730) + 8.6347608925) +
                     0.2677737343;
        double den = x * (x * (x * (x + 9.5733223454) + 25.6329561486) + 21.0996530827) +
                     3.9584969228;
        e1 = ex / x * num / den;
    }
    e[0] = e1;
    if (x > 30.0) {
        /* the upward recurrence loses digits here; the asymptotic series is better */
        for (int n = 2; n <= 4; n++) {
            double y = 1.0 / (x + n);
            e[n - 1] = ex * y * (1.0 + n * y * y * (1.0 + (n - 2.0 * x) * y * y));
        }
        return;
    }
    e[1] = ex - x * e[0];
    e[2] = 0.5 * (ex - x * e[1]);
    e[3] = (ex - x * e[2]) / 3.0;
}

double rvs_synth_planck(double lambda_a, double t)
{
    double lcm = lambda_a * 1e-8;
    double x = RVS_H * RVS_C / (lcm * RVS_K_B * t);
    /* 2 h c^2 / lambda^5 per cm, times 1e-8 per Angstrom */
    return 2.0 * RVS_H * RVS_C * RVS_C / (lcm * lcm * lcm * lcm * lcm) / expm1(x) * 1e-8;
}

/* Complex arithmetic on a plain struct: C99 complex division carries Annex G's inf/nan
 * checks (__divdc3), which cost a third of the run time here; our operands are always finite. */
struct cplx {
    double re, im;
};

static inline struct cplx c_mul(struct cplx a, struct cplx b)
{
    return (struct cplx){a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re};
}

static inline struct cplx c_add(struct cplx a, double r)
{
    return (struct cplx){a.re + r, a.im};
}

/* Re(a / b) */
static inline double c_div_re(struct cplx a, struct cplx b)
{
    return (a.re * b.re + a.im * b.im) / (b.re * b.re + b.im * b.im);
}

/* Voigt function after Humlicek (1982, JQSRT 27, 437), the four-region rational approximation
 * of the complex probability function w(z), z = v + i a; H = Re w. */
double rvs_synth_voigt(double a, double v)
{
    double x = fabs(v), y = a;
    struct cplx t = {y, -x};
    double s = x + y;
    if (s >= 15.0) {
        /* w = t 0.5641896 / (0.5 + t^2) */
        struct cplx num = {0.5641896 * t.re, 0.5641896 * t.im};
        return c_div_re(num, c_add(c_mul(t, t), 0.5));
    }
    if (s >= 5.5) {
        /* w = t (1.410474 + 0.5641896 u) / (0.75 + u (3 + u)), u = t^2 */
        struct cplx u = c_mul(t, t);
        struct cplx num = c_mul(t, c_add((struct cplx){0.5641896 * u.re, 0.5641896 * u.im},
                                         1.410474));
        struct cplx den = c_add(c_mul(u, c_add(u, 3.0)), 0.75);
        return c_div_re(num, den);
    }
    if (y >= 0.195 * x - 0.176) {
        struct cplx num = c_add((struct cplx){0.5642236 * t.re, 0.5642236 * t.im}, 3.778987);
        num = c_add(c_mul(num, t), 11.96482);
        num = c_add(c_mul(num, t), 20.20933);
        num = c_add(c_mul(num, t), 16.4955);
        struct cplx den = c_add(t, 6.699398);
        den = c_add(c_mul(den, t), 21.69274);
        den = c_add(c_mul(den, t), 39.27121);
        den = c_add(c_mul(den, t), 38.82363);
        den = c_add(c_mul(den, t), 16.4955);
        return c_div_re(num, den);
    }
    /* w = exp(u) - t P(u) / Q(u) */
    struct cplx u = c_mul(t, t);
    struct cplx mu = {-u.re, -u.im};
    struct cplx p = c_add((struct cplx){0.56419 * mu.re, 0.56419 * mu.im}, 1.320522);
    p = c_add(c_mul(mu, p), 35.76683);
    p = c_add(c_mul(mu, p), 219.0313);
    p = c_add(c_mul(mu, p), 1540.787);
    p = c_add(c_mul(mu, p), 3321.9905);
    p = c_add(c_mul(mu, p), 36183.31);
    /* P = 36183.31 - u (3321.9905 - u (...)): the nested minus signs are the -u above */
    struct cplx q = c_add(mu, 1.841439);
    q = c_add(c_mul(mu, q), 61.57037);
    q = c_add(c_mul(mu, q), 364.2191);
    q = c_add(c_mul(mu, q), 2186.181);
    q = c_add(c_mul(mu, q), 9022.228);
    q = c_add(c_mul(mu, q), 24322.84);
    q = c_add(c_mul(mu, q), 32066.6);
    double eu = exp(u.re);
    return eu * cos(u.im) - c_div_re(c_mul(t, p), q);
}

/* ---------------------------------------------------------------- tabulated Voigt */

/* H(a, v) tabulated once from rvs_synth_voigt: rows in a (row 0: a = 0; row k >= 1:
 * a = RVS_VOIGT_AMIN * RVS_VOIGT_ARATIO^(k - 1)) holding (1 + a) H(a, v) at v = j /
 * RVS_VOIGT_VSTEPS, j = 0 ... RVS_VOIGT_VMAX * RVS_VOIGT_VSTEPS + 1; linear interpolation in v
 * and in a (the factor 1 + a makes the rows nearly linear in a where a is large). Against
 * rvs_synth_voigt on 2e5 random (a, v), a in [0, 30], v in [0, 8] (tests/test_synth_physics.c):
 * |error| < 9e-5 H(a, 0), most of it at the internal region boundaries of Humlicek's W4, whose
 * own error is of that size; 5 ns per value instead of ~25 ns. Table: 429 rows of 514 floats
 * (0.9 MB), shared by all threads. */
#define VT_NV (RVS_VOIGT_VMAX * RVS_VOIGT_VSTEPS + 2)
static float *voigt_table;
static double *voigt_row_a; /* a of each row */
static int voigt_rows;
static double voigt_log_amin, voigt_inv_log_ratio;

int rvs_synth_voigt_table_init(void)
{
    if (voigt_table)
        return RVS_OK;
    int rows = 2 + (int)ceil(log(RVS_VOIGT_AMAX / RVS_VOIGT_AMIN) / log(RVS_VOIGT_ARATIO));
    float *t = malloc((size_t)rows * VT_NV * sizeof *t);
    double *ra = malloc((size_t)rows * sizeof *ra);
    if (!t || !ra) {
        free(t);
        free(ra);
        return RVS_ERR_NOMEM;
    }
    for (int k = 0; k < rows; k++) {
        double a = k == 0 ? 0.0 : RVS_VOIGT_AMIN * pow(RVS_VOIGT_ARATIO, k - 1);
        ra[k] = a;
        for (int j = 0; j < VT_NV; j++)
            t[(size_t)k * VT_NV + j] =
                (float)((1.0 + a) * rvs_synth_voigt(a, (double)j / RVS_VOIGT_VSTEPS));
    }
    voigt_log_amin = log(RVS_VOIGT_AMIN);
    voigt_inv_log_ratio = 1.0 / log(RVS_VOIGT_ARATIO);
    voigt_rows = rows;
    voigt_row_a = ra;
    voigt_table = t;
    return RVS_OK;
}

void rvs_synth_voigt_prepare(double a, struct rvs_synth_voigt_a *va)
{
    va->a = a;
    va->r0 = va->r1 = NULL;
    va->w1 = 0.0f;
    va->scale = (float)(1.0 / (1.0 + a));
    if (!voigt_table || !(a >= 0.0) || a >= RVS_VOIGT_AMAX)
        return; /* direct evaluation */
    int k;
    double w;
    if (a < RVS_VOIGT_AMIN) {
        k = 0;
        w = a / RVS_VOIGT_AMIN;
    } else {
        /* the row from a rough log2 (exponent + quadratic in the mantissa, |error| < 0.01),
         * then corrected against the rows' a */
        uint64_t bits;
        memcpy(&bits, &a, sizeof bits);
        double f = (double)(bits & 0xfffffffffffffULL) * 0x1p-52;
        double log2a = (double)((int)((bits >> 52) & 0x7ff) - 1023) + f * (1.3465 - 0.3465 * f);
        double x = (log2a * 0.6931471805599453 - voigt_log_amin) * voigt_inv_log_ratio;
        int i = (int)x;
        if (i > voigt_rows - 3)
            i = voigt_rows - 3;
        k = i + 1;
        if (i < 0)
            i = 0;
        if (a < voigt_row_a[i + 1]) /* rounding of the logarithm near a row */
            i = i > 0 ? i - 1 : 0;
        else if (i + 2 < voigt_rows && a >= voigt_row_a[i + 2])
            i++;
        k = i + 1;
        w = (a - voigt_row_a[k]) / (voigt_row_a[k + 1] - voigt_row_a[k]);
    }
    va->r0 = voigt_table + (size_t)k * VT_NV;
    va->r1 = va->r0 + VT_NV;
    va->w1 = (float)w;
}

/* ---------------------------------------------------------------- wavelengths */

double rvs_synth_vacuum_to_air(double lambda_vac)
{
    if (lambda_vac < 2000.0)
        return lambda_vac;
    double s2 = 1e8 / (lambda_vac * lambda_vac); /* (10^4 / lambda)^2, lambda in Angstrom */
    double n = 1.0 + 8.34254e-5 + 2.406147e-2 / (130.0 - s2) + 1.5998e-4 / (38.9 - s2);
    return lambda_vac / n;
}

double rvs_synth_air_to_vacuum(double lambda_air)
{
    if (lambda_air < 2000.0)
        return lambda_air;
    /* fixed-point inversion of Morton's vacuum->air relation; n - 1 ~ 3e-4 so each step gains
     * about four digits */
    double v = lambda_air;
    for (int i = 0; i < 6; i++)
        v += lambda_air - rvs_synth_vacuum_to_air(v);
    return v;
}

/* ---------------------------------------------------------------- hydrogen */

double rvs_synth_hydrogen_f(int nl, int nu)
{
    /* Kramers' semi-classical value; Johnson (1972, J. Phys. B 5, 2079) Gaunt factor */
    double g0, g1, g2;
    if (nl == 1) {
        g0 = 1.1330;
        g1 = -0.4059;
        g2 = 0.07014;
    } else if (nl == 2) {
        g0 = 1.0785;
        g1 = -0.2319;
        g2 = 0.02947;
    } else {
        double n = nl;
        g0 = 0.9935 + 0.2328 / n - 0.1296 / (n * n);
        g1 = -(0.6282 - 0.5598 / n + 0.5299 / (n * n)) / n;
        g2 = (0.3887 - 1.181 / n + 1.470 / (n * n)) / (n * n);
    }
    double x = 1.0 - (double)(nl * nl) / (double)(nu * nu);
    double g = g0 + g1 / x + g2 / (x * x);
    double d = 1.0 / (nl * nl) - 1.0 / ((double)nu * nu);
    double kramers = 32.0 / (3.0 * sqrt(3.0) * RVS_PI) / (pow(nl, 5) * pow(nu, 3)) / (d * d * d);
    return kramers * g;
}

/* ---------------------------------------------------------------- continuum */

double rvs_synth_hminus_bf_cross_section(double lambda_a)
{
    /* John (1988) eq. 4 and Table 1: lambda in micron, threshold lambda0 = 1.6419 micron */
    static const double c[6] = {152.519, 49.534, -118.858, 92.536, -34.194, 4.982};
    const double l0 = 1.6419;
    double l = lambda_a * 1e-4;
    if (l >= l0 || l <= 0.125)
        return 0.0;
    double x = 1.0 / l - 1.0 / l0;
    double sx = sqrt(x), f = 0.0, p = 1.0;
    for (int n = 0; n < 6; n++) {
        f += c[n] * p;
        p *= sx;
    }
    return 1e-18 * l * l * l * x * sx * f;
}

double rvs_synth_hminus_bf(double lambda_a, double t)
{
    const double alpha = 1.439e4, l0 = 1.6419; /* micron K; micron */
    double l = lambda_a * 1e-4;
    return 0.750 * pow(t, -2.5) * exp(alpha / (l0 * t)) * (-expm1(-alpha / (l * t))) *
           rvs_synth_hminus_bf_cross_section(lambda_a);
}

double rvs_synth_hminus_ff(double lambda_a, double t)
{
    double theta = 5040.0 / t, tp[6];
    for (int n = 0; n < 6; n++)
        tp[n] = pow(theta, (n + 2) / 2.0);
    return rvs_synth_hminus_ff_theta(lambda_a, tp);
}

double rvs_synth_hminus_ff_theta(double lambda_a, const double theta_pow[6])
{
    /* John (1988) eq. 6 and Table 3: two wavelength ranges, split at 0.3645 micron */
    static const double red[6][6] = {
        {0, 0, 0, 0, 0, 0},
        {2483.346, 285.827, -2054.291, 2827.776, -1341.537, 208.952},
        {-3449.889, -1158.382, 8746.523, -11485.632, 5303.609, -812.939},
        {2200.040, 2427.719, -13651.105, 16755.524, -7510.494, 1132.738},
        {-696.271, -1841.400, 8624.970, -10051.530, 4400.067, -655.020},
        {88.283, 444.517, -1863.864, 2095.288, -901.788, 132.985}};
    static const double blue[6][6] = {
        {518.1021, -734.8666, 1021.1775, -479.0721, 93.1373, -6.4285},
        {473.2636, 1443.4137, -1977.3395, 922.3575, -178.9275, 12.3600},
        {-482.2089, -737.1616, 1096.8827, -521.1341, 101.7963, -7.0571},
        {115.5291, 169.6374, -245.6490, 114.2430, -21.9972, 1.5097},
        {0, 0, 0, 0, 0, 0},
        {0, 0, 0, 0, 0, 0}};
    double l = lambda_a * 1e-4;
    if (l < 0.1823)
        l = 0.1823; /* the fit's lower limit; the ff term is negligible there */
    const double(*tab)[6] = l > 0.3645 ? red : blue;
    double sum = 0.0;
    for (int n = 0; n < 6; n++) {
        const double *a = tab[n];
        double term = l * l * a[0] + a[1] + a[2] / l + a[3] / (l * l) + a[4] / (l * l * l) +
                      a[5] / (l * l * l * l);
        sum += theta_pow[n] * term;
    }
    return 1e-29 * sum;
}

void rvs_synth_continuum_prepare(double t, double ne, double nhi, double nhii, double nh2,
                                 struct rvs_synth_continuum_layer *c)
{
    const double alpha = 1.439e4, l0 = 1.6419; /* H- bound-free: micron K; micron */
    c->t = t;
    c->alpha_t = alpha / t;
    c->hm_bf = 0.750 * pow(t, -2.5) * exp(alpha / (l0 * t)) * ne * RVS_K_B * t * nhi;
    double theta = 5040.0 / t;
    for (int n = 0; n < 6; n++)
        c->hm_ff_theta[n] = pow(theta, (n + 2) / 2.0);
    c->pe_nhi = ne * RVS_K_B * t * nhi;
    c->h_k_t = RVS_H / (RVS_K_B * t);
    double kt_ev = RVS_K_EV * t;
    double uh = rvs_synth_partition(1, 0, t);
    for (int n = 1; n <= RVS_SYNTH_CONT_NLEVEL; n++) {
        double chi = 13.598434 * (1.0 - 1.0 / ((double)n * n));
        double pop = 2.0 * n * n * exp(-chi / kt_ev) / uh;
        c->hbf[n] = pop * 2.815e29 / pow(n, 5) * nhi;
    }
    c->ff = 3.69e8 / sqrt(t) * ne * nhii;
    c->thomson = RVS_SIGMA_T * ne;
    c->nhi = nhi;
    c->nh2 = nh2;
}

double rvs_synth_continuum_eval(const struct rvs_synth_continuum_layer *c, double lambda_a)
{
    double l = lambda_a * 1e-4;
    /* H- bound-free (John 1988 eq. 3) and free-free (eq. 6), per unit electron pressure */
    double kappa = c->hm_bf * (-expm1(-c->alpha_t / l)) *
                   rvs_synth_hminus_bf_cross_section(lambda_a);
    kappa += rvs_synth_hminus_ff_theta(lambda_a, c->hm_ff_theta) * c->pe_nhi;
    double nu = RVS_C / (lambda_a * 1e-8);
    double stim = -expm1(-c->h_k_t * nu);
    double lr = lambda_a * 1e-8 * 1.0968e5;
    double lr13 = cbrt(lr);
    double bf = 0.0;
    for (int n = 1; n <= RVS_SYNTH_CONT_NLEVEL; n++) {
        double edge = 911.7636 * n * n; /* Angstrom, vacuum */
        if (lambda_a > edge)
            continue;
        double g = 1.0 - 0.3456 / lr13 * (lr / (n * n) - 0.5);
        bf += c->hbf[n] * g;
    }
    double nu3 = nu * nu * nu;
    kappa += bf / nu3 * stim;
    kappa += c->ff / nu3 * stim;
    kappa += c->thomson;
    double l2 = lambda_a * lambda_a, l4 = l2 * l2, l6 = l4 * l2, l8 = l4 * l4;
    if (lambda_a > 1300.0) {
        kappa += (5.799e-13 / l4 + 1.422e-6 / l6 + 2.784 / l8) * c->nhi;
        kappa += (8.14e-13 / l4 + 1.28e-6 / l6 + 1.61 / l8) * c->nh2;
    }
    return kappa;
}

double rvs_synth_continuum_opacity(double lambda_a, double t, double ne, double nhi,
                                   double nhii, double nh2)
{
    struct rvs_synth_continuum_layer c;
    rvs_synth_continuum_prepare(t, ne, nhi, nhii, nh2, &c);
    return rvs_synth_continuum_eval(&c, lambda_a);
}
