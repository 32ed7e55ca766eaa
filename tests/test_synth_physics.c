/* test_synth_physics.c: unit tests of the spectrum generator's physics pieces: the Voigt
 * function against a direct numerical integral, air/vacuum wavelengths against NIST values,
 * Saha and Boltzmann populations against hand-computed cases, the H- opacity fits (threshold,
 * peak, continuity of the two free-free sets), hydrogen oscillator strengths against exact
 * values, exponential integrals and the Planck function, the MOOG line parser, and (when the
 * shared data exist) the linemake reader. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "synth/synth_internal.h"
#include "testutil.h"

/* H(a, v) = 1/sqrt(pi) int_0^inf exp(-a s - s^2/4) cos(v s) ds: a smooth integrand, Simpson. */
static double voigt_reference(double a, double v)
{
    const int n = 200000;
    const double smax = 40.0, h = smax / n;
    double sum = 0.0;
    for (int i = 0; i <= n; i++) {
        double s = i * h;
        double f = exp(-a * s - 0.25 * s * s) * cos(v * s);
        sum += f * (i == 0 || i == n ? 1.0 : (i % 2 ? 4.0 : 2.0));
    }
    return sum * h / 3.0 / RVS_SQRT_PI;
}

static void test_voigt(void)
{
    static const double as[] = {1e-3, 1e-2, 0.1, 0.5, 1.0, 3.0, 10.0};
    static const double vs[] = {0.0, 0.3, 1.0, 2.0, 3.0, 4.5, 6.0, 10.0, 20.0};
    double maxrel = 0.0;
    for (size_t i = 0; i < sizeof as / sizeof as[0]; i++)
        for (size_t j = 0; j < sizeof vs / sizeof vs[0]; j++) {
            double ref = voigt_reference(as[i], vs[j]);
            double got = rvs_synth_voigt(as[i], vs[j]);
            /* Humlicek's W4 is good to ~1e-4 relative; an absolute floor for the deep
             * Gaussian-wing values where both are ~1e-10 */
            double err = fabs(got - ref) / (fabs(ref) + 1e-9);
            if (err > maxrel)
                maxrel = err;
            CHECK(test_near(got, ref, 1e-9, 2e-4), "H(%g,%g) = %.8g, integral %.8g", as[i],
                  vs[j], got, ref);
            CHECK(got == rvs_synth_voigt(as[i], -vs[j]), "H(a,v) must be even in v");
        }
    printf("voigt: max relative error %.2e (tolerance 2e-4)\n", maxrel);
    /* normalisation: int H dv = sqrt(pi) (wings beyond |v| = 2000 hold a/(sqrt(pi) 1000)) */
    double sum = 0.0, h = 0.01;
    for (double v = -2000.0; v <= 2000.0; v += h)
        sum += rvs_synth_voigt(0.1, v) * h;
    CHECK(test_near(sum, RVS_SQRT_PI, 0.0, 2e-4), "int H(0.1, v) dv = %.6f", sum);
}

/* The tabulated Voigt function (rvs_synth_voigt_eval) against rvs_synth_voigt: inside the
 * table within 2e-4 of H(a, 0) (W4's own accuracy; measured 9e-5, mostly W4's jumps between its
 * regions, which the table's interpolation smooths), beyond it to rounding (the same rational
 * regions in real arithmetic). */
static void test_voigt_table(void)
{
    CHECK(rvs_synth_voigt_table_init() == RVS_OK, "Voigt table");
    double maxtab = 0.0, maxfar = 0.0;
    for (int i = 0; i < 200000; i++) {
        double a = i % 10 == 0 ? test_uniform(0.0, RVS_VOIGT_AMIN)
                               : exp(test_uniform(log(1e-5), log(RVS_VOIGT_AMAX)));
        double v = test_uniform(-RVS_VOIGT_VMAX, RVS_VOIGT_VMAX);
        struct rvs_synth_voigt_a va;
        rvs_synth_voigt_prepare(a, &va);
        double err = fabs(rvs_synth_voigt_eval(&va, v) - rvs_synth_voigt(a, v)) /
                     rvs_synth_voigt(a, 0.0);
        if (err > maxtab)
            maxtab = err;
        double vf = RVS_VOIGT_VMAX * exp(test_uniform(0.0, log(50.0)));
        double ref = rvs_synth_voigt(a, vf);
        double errf = fabs(rvs_synth_voigt_eval(&va, -vf) - ref) / ref;
        if (errf > maxfar)
            maxfar = errf;
    }
    printf("voigt table: max error %.2e of H(a,0) for |v| < %d (tolerance 2e-4), %.2e relative "
           "beyond (tolerance 1e-12)\n", maxtab, RVS_VOIGT_VMAX, maxfar);
    CHECK(maxtab < 2e-4, "tabulated H(a, v) off by %.3g of H(a, 0)", maxtab);
    CHECK(maxfar < 1e-12, "H(a, v) beyond the table off by %.3g relative", maxfar);
    /* a beyond the table: evaluated directly */
    struct rvs_synth_voigt_a va;
    rvs_synth_voigt_prepare(50.0, &va);
    CHECK(rvs_synth_voigt_eval(&va, 3.0) == rvs_synth_voigt(50.0, 3.0), "H(50, 3) direct");
}

static void test_air_vacuum(void)
{
    /* NIST Atomic Spectra Database (air, vacuum) pairs */
    static const double pairs[][2] = {
        {5889.951, 5891.583}, /* Na I D2 */
        {3933.663, 3934.777}, /* Ca II K */
        {8542.091, 8544.438}, /* Ca II IR triplet */
        {6562.819, 6564.630}, /* H alpha (fine-structure mean quoted by NIST) */
        {5183.604, 5185.048}, /* Mg I b1 */
        {7698.974, 7701.093}, /* K I */
    };
    double maxerr = 0.0;
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        double v = rvs_synth_air_to_vacuum(pairs[i][0]);
        double a = rvs_synth_vacuum_to_air(pairs[i][1]);
        maxerr = fmax(maxerr, fmax(fabs(v - pairs[i][1]), fabs(a - pairs[i][0])));
        CHECK(fabs(v - pairs[i][1]) < 0.01, "air %.3f -> vacuum %.4f, NIST %.3f", pairs[i][0],
              v, pairs[i][1]);
        CHECK(fabs(a - pairs[i][0]) < 0.01, "vacuum %.3f -> air %.4f, NIST %.3f", pairs[i][1],
              a, pairs[i][0]);
        CHECK(fabs(rvs_synth_vacuum_to_air(v) - pairs[i][0]) < 1e-7, "round trip at %.3f",
              pairs[i][0]);
    }
    printf("air/vacuum: max difference from NIST %.4f A (tolerance 0.01)\n", maxerr);
}

static void test_saha_boltzmann(void)
{
    /* hydrogen, U_I = 2, U_II = 1: N_II/N_I = 2 (1/2) 2.41468e15 T^1.5 exp(-13.5984 eV/kT)/ne */
    double t = 10000.0, ne = 1e14;
    double hand = 2.0 * 0.5 * 2.4146830e15 * pow(t, 1.5) * exp(-13.5984 / (8.617333262e-5 * t)) / ne;
    double got = rvs_synth_saha(1, 0, t, ne);
    CHECK(test_near(got, hand, 0.0, 1e-4), "Saha H 10000 K: %g, hand %g", got, hand);
    CHECK(test_near(hand, 3.381, 0.0, 2e-3), "hand-computed Saha H: %g (expected 3.381)", hand);
    /* Na at 5000 K, ne = 1e13: U(Na I) ~ 2.0, U(Na II) = 1, chi = 5.1391 eV */
    t = 5000.0;
    ne = 1e13;
    double una = rvs_synth_partition(11, 0, t);
    CHECK(una > 1.95 && una < 2.2, "U(Na I, 5000 K) = %g", una);
    hand = 2.0 * 1.0 / una * 2.4146830e15 * pow(t, 1.5) * exp(-5.1391 / (8.617333262e-5 * t)) / ne;
    got = rvs_synth_saha(11, 0, t, ne);
    CHECK(test_near(got, hand, 0.0, 1e-3), "Saha Na 5000 K: %g, hand %g", got, hand);
    CHECK(got > 450 && got < 650, "Na II/Na I at 5000 K, ne 1e13 is %g (expected ~550)", got);
    /* partition functions against textbook magnitudes (Gray 2005, Table D.2): Fe I ~ 25-35 at
     * 5000-6000 K, Fe II ~ 40-50, Ti I ~ 25-40, Ca II ~ 2 */
    double ufe = rvs_synth_partition(26, 0, 5040.0), ufe2 = rvs_synth_partition(26, 1, 5040.0);
    CHECK(ufe > 22 && ufe < 35, "U(Fe I, 5040 K) = %g", ufe);
    CHECK(ufe2 > 35 && ufe2 < 55, "U(Fe II, 5040 K) = %g", ufe2);
    CHECK(fabs(rvs_synth_partition(20, 1, 5040.0) - 2.1) < 0.3, "U(Ca II, 5040 K) = %g",
          rvs_synth_partition(20, 1, 5040.0));
    /* Boltzmann: H n = 2 at 10000 K: g = 8, U = 2, E = 10.1988 eV */
    hand = 8.0 / 2.0 * exp(-10.1988 / (8.617333262e-5 * 1e4));
    got = rvs_synth_boltzmann(1, 0, 8.0, 10.1988, 1e4);
    /* (the tabulated U(H I) at 10000 K is 2.0001: excited levels) */
    CHECK(test_near(got, hand, 0.0, 2e-4), "Boltzmann H n=2: %g, hand %g", got, hand);
    CHECK(test_near(hand, 2.898e-5, 0.0, 1e-3), "hand-computed Boltzmann: %g", hand);
    /* ionization fractions sum to one and follow the Saha ratio */
    double fr[3];
    rvs_synth_ion_fractions(26, 6000.0, 1e13, fr);
    CHECK(test_near(fr[0] + fr[1] + fr[2], 1.0, 1e-12, 0), "fractions sum %g", fr[0] + fr[1] + fr[2]);
    CHECK(test_near(fr[1] / fr[0], rvs_synth_saha(26, 0, 6000.0, 1e13), 0, 1e-12),
          "fraction ratio");
    /* molecular equilibrium constant of H2 at 4000 K: D0 = 4.478 eV dominates; the
     * Barklem & Collet value is log10 Kp(cgs) = 6.39 */
    CHECK(fabs(log10(rvs_synth_molecule_kp(RVS_MOL_H2, 4000.0)) - 6.394) < 0.01,
          "log Kp(H2, 4000 K) = %g", log10(rvs_synth_molecule_kp(RVS_MOL_H2, 4000.0)));
}

static void test_hminus(void)
{
    /* John (1988) fits: zero at and beyond the 1.6419 micron threshold; the cross-section
     * peaks near 8500 A at ~4e-17 cm^2 (Wishart 1979; Gray 2005, Fig. 8.3) */
    CHECK(rvs_synth_hminus_bf_cross_section(16419.0) == 0.0, "bf above threshold");
    CHECK(rvs_synth_hminus_bf_cross_section(20000.0) == 0.0, "bf beyond threshold");
    double peak = 0.0, lpeak = 0.0;
    for (double l = 3000.0; l < 16000.0; l += 10.0) {
        double s = rvs_synth_hminus_bf_cross_section(l);
        if (s > peak) {
            peak = s;
            lpeak = l;
        }
    }
    printf("H- bf: peak %.3e cm^2 at %.0f A; sigma(5000 A) = %.3e\n", peak, lpeak,
           rvs_synth_hminus_bf_cross_section(5000.0));
    CHECK(lpeak > 8000 && lpeak < 9000, "H- bf peak at %g A", lpeak);
    CHECK(peak > 3.8e-17 && peak < 4.2e-17, "H- bf peak %g", peak);
    /* the two free-free coefficient sets meet at 0.3645 micron */
    for (double t = 3000.0; t <= 10000.0; t += 1000.0) {
        double lo = rvs_synth_hminus_ff(3644.9, t), hi = rvs_synth_hminus_ff(3645.1, t);
        CHECK(test_near(lo, hi, 0.0, 0.05), "H- ff discontinuous at 3645 A, T=%g: %g vs %g",
              t, lo, hi);
    }
    /* free-free exceeds bound-free only towards the threshold (Gray 2005, Fig. 8.5) */
    CHECK(rvs_synth_hminus_ff(5000.0, 6300.0) < 0.2 * rvs_synth_hminus_bf(5000.0, 6300.0),
          "H- ff/bf at 5000 A too large");
    CHECK(rvs_synth_hminus_ff(16000.0, 6300.0) > rvs_synth_hminus_bf(16000.0, 6300.0),
          "H- ff/bf at 1.6 micron too small");
    /* the bound-free coefficient per H atom per unit Pe in Gray's (2005, eq. 8.12) form,
     * 4.158e-10 sigma theta^5/2 10^(0.754 theta) (1 - 10^(-chi theta)), equals John's */
    double bf = rvs_synth_hminus_bf(5000.0, 5040.0), ff = rvs_synth_hminus_ff(5000.0, 5040.0);
    double gray = 4.158e-10 * rvs_synth_hminus_bf_cross_section(5000.0) * pow(10.0, 0.754) *
                  (1.0 - pow(10.0, -1.2398e4 / 5000.0));
    printf("H- at 5000 A, 5040 K: bf %.3e (Gray's form %.3e), ff %.3e cm^4/dyn\n", bf, gray, ff);
    CHECK(test_near(bf, gray, 0, 0.01), "H- bf(5000 A, 5040 K) = %g, Gray's form %g", bf, gray);
    CHECK(ff > 5e-28 && ff < 3e-27, "H- ff(5000 A, 5040 K) = %g", ff);
}

static void test_hydrogen_f(void)
{
    /* exact values (Wiese & Fuhr 2009) */
    static const double f[][3] = {{2, 3, 0.6407}, {2, 4, 0.1193}, {2, 5, 0.04467},
                                  {2, 6, 0.02209}, {3, 4, 0.8421}, {3, 5, 0.1506}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        double got = rvs_synth_hydrogen_f((int)f[i][0], (int)f[i][1]);
        CHECK(test_near(got, f[i][2], 0, 0.01), "f(%g->%g) = %g, exact %g", f[i][0], f[i][1],
              got, f[i][2]);
    }
}

static void test_expint_planck(void)
{
    double e[4];
    rvs_synth_expint(0.5, e);
    CHECK(test_near(e[0], 0.5597735948, 0, 1e-6), "E1(0.5) = %.10f", e[0]);
    rvs_synth_expint(1.0, e);
    CHECK(test_near(e[1], 0.1484955068, 0, 1e-6), "E2(1) = %.10f", e[1]);
    CHECK(test_near(e[2], 0.1096919672, 0, 1e-6), "E3(1) = %.10f", e[2]);
    rvs_synth_expint(2.0, e);
    CHECK(test_near(e[3], 0.0250228412, 0, 1e-5), "E4(2) = %.10f", e[3]);
    rvs_synth_expint(0.01, e);
    CHECK(test_near(e[2], 0.4902765642, 0, 1e-6), "E3(0.01) = %.10f", e[2]);
    rvs_synth_expint(40.0, e);
    CHECK(test_near(e[1], 1.012612095e-19, 0, 1e-3), "E2(40) = %g", e[1]);
    /* int B_lambda dlambda = sigma T^4 / pi */
    double t = 5800.0, sum = 0.0;
    for (double ll = log(500.0); ll < log(1e6); ll += 1e-3) {
        double l = exp(ll);
        sum += rvs_synth_planck(l, t) * l * 1e-3;
    }
    double want = 5.670374419e-5 * pow(t, 4) / RVS_PI;
    CHECK(test_near(sum, want, 0, 1e-3), "int B = %g, sigma T^4/pi = %g", sum, want);
}

static void test_moog_parser(void)
{
    double l, code, ep, gf, damp;
    CHECK(rvs_synth_parse_moog_line("  5889.951      11.0     0.000     0.117\n", &l, &code, &ep,
                                    &gf, &damp) == 1 &&
              l == 5889.951 && code == 11.0 && ep == 0.0 && gf == 0.117 && damp == 0.0,
          "atomic MOOG line");
    CHECK(rvs_synth_parse_moog_line(
              "  5000.026 607.01214     0.630    -3.380               7.724          0902Pb0225\n",
              &l, &code, &ep, &gf, &damp) == 1 &&
              fabs(code - 607.01214) < 1e-9 && gf == -3.38 && damp == 0.0,
          "molecular MOOG line (D0 is not a damping constant)");
    CHECK(rvs_synth_parse_moog_line("  6000.000      26.0     1.000    -1.000     2.500\n", &l,
                                    &code, &ep, &gf, &damp) == 1 &&
              damp == 2.5,
          "damping column");
    CHECK(rvs_synth_parse_moog_line("\n", &l, &code, &ep, &gf, &damp) == 0, "blank line");
    CHECK(rvs_synth_parse_moog_line("Title line of a MOOG list\n", &l, &code, &ep, &gf, &damp) < 0,
          "garbage line");
    CHECK(rvs_synth_parse_moog_line("  5889.951  11.0\n", &l, &code, &ep, &gf, &damp) < 0,
          "short line");
}

static void test_linelists(void)
{
    struct rvs_synth_linelist list;
    CHECK(rvs_synth_linelist_load(NULL, 3500, 10000, &list) == RVS_OK && list.count > 50,
          "built-in list: %zu lines", list.count);
    int nad = 0;
    for (size_t i = 0; i < list.count; i++) {
        if (i)
            CHECK(list.lines[i].lambda >= list.lines[i - 1].lambda, "built-in list unsorted");
        if (list.lines[i].z == 11 && fabs(list.lines[i].lambda - 5891.583) < 0.01)
            nad++;
    }
    CHECK(nad == 1, "Na D2 at vacuum 5891.583 in the built-in list");
    rvs_synth_linelist_free(&list);
    CHECK(rvs_synth_linelist_load("/nonexistent/linemake", 3500, 10000, &list) == RVS_ERR_IO,
          "missing directory must be an I/O error");

    /* the shared data: $RVSFIT_CL_SHARED_DATA, else $top_srcdir/../shared/data */
    const char *data = getenv("RVSFIT_CL_SHARED_DATA");
    const char *top = getenv("top_srcdir");
    char dir[4096];
    if (data)
        snprintf(dir, sizeof dir, "%s/linelists/linemake", data);
    else
        snprintf(dir, sizeof dir, "%s/../shared/data/linelists/linemake", top ? top : ".");
    struct stat st;
    if (stat(dir, &st) != 0) {
        printf("linemake reader: skipped (no shared data)\n");
        return;
    }
    CHECK(rvs_synth_linelist_load(dir, 3500, 10000, &list) == RVS_OK, "linemake load");
    size_t ncn = 0, nch = 0, nfeh = 0, nfe = 0, dup = 0;
    for (size_t i = 0; i < list.count; i++) {
        const struct rvs_synth_line *ln = &list.lines[i];
        if (ln->z == -1 - RVS_MOL_CN)
            ncn++;
        if (ln->z == -1 - RVS_MOL_CH)
            nch++;
        if (ln->z == -1 - RVS_MOL_FEH)
            nfeh++;
        if (ln->z == 26 && ln->ion == 0)
            nfe++;
        /* the overlap of neighbouring files must not double lines: the Fe I 3981.77 line
         * lies in both moogatom03000 and moogatom04000 */
        if (ln->z == 26 && fabs(rvs_synth_vacuum_to_air(ln->lambda) - 3981.771) < 0.0005)
            dup++;
    }
    printf("linemake: %zu lines (%zu Fe I, %zu CN, %zu CH, %zu FeH)\n", list.count, nfe, ncn,
           nch, nfeh);
    CHECK(list.count > 250000, "linemake count %zu", list.count);
    CHECK(ncn > 50000 && nch > 30000 && nfeh > 10000 && nfe > 10000, "species counts");
    CHECK(dup <= 1, "file-overlap line counted %zu times", dup);
    rvs_synth_linelist_free(&list);
}

/* The van der Waals factors (synth/vdw.c, tools/mkgrid-vdw.py) are sane, and with them the wings
 * of Mg b in the Sun are deeper than with Unsoeld's widths alone. */
static void test_vdw(void)
{
    for (int z = 0; z <= RVS_SYNTH_MAX_Z; z++)
        for (int st = 0; st < 2; st++)
            CHECK(rvs_synth_vdw_enhancement[z][st] >= 0.2f &&
                      rvs_synth_vdw_enhancement[z][st] <= 4.0f,
                  "vdW factor of Z=%d stage %d: %g", z, st, rvs_synth_vdw_enhancement[z][st]);
    /* ABO widths of Fe I are 1.32x Unsoeld's in the median (281 GALAH lines), Mg I 2.46x */
    CHECK(rvs_synth_vdw_enhancement[26][0] > 1.1f && rvs_synth_vdw_enhancement[26][0] < 1.6f,
          "Fe I factor %g", rvs_synth_vdw_enhancement[26][0]);
    CHECK(rvs_synth_vdw_enhancement[12][0] > 1.5f, "Mg I factor %g",
          rvs_synth_vdw_enhancement[12][0]);

    double wing[2];
    for (int mode = 0; mode < 2; mode++) {
        struct rvs_synth_options o;
        rvs_synth_options_init(&o);
        o.resolution = 20000;
        o.lambda_min = 5100;
        o.lambda_max = 5250;
        o.vdw = mode ? RVS_SYNTH_VDW_ABO_SCALED : RVS_SYNTH_VDW_UNSOELD;
        struct rvs_synth *s = NULL;
        CHECK(rvs_synth_create(&o, &s) == RVS_OK, "generator for the vdW check");
        if (!s)
            return;
        size_t n = rvs_synth_npix(s);
        const double *w = rvs_synth_wavelength(s);
        double *f = malloc(n * sizeof *f), *c = malloc(n * sizeof *c);
        struct rvs_synth_params p = {5772.0, 4.44, 0.0, 0.0};
        CHECK(f && c && rvs_synth_spectrum(s, &p, f, c) == RVS_OK, "solar spectrum");
        double sum = 0.0;
        int cnt = 0;
        for (size_t i = 0; f && c && i < n; i++)
            if (w[i] > 5177.0 && w[i] < 5182.0) { /* between Mg b 5174.1 and 5185.0 (vacuum) */
                sum += f[i] / c[i];
                cnt++;
            }
        wing[mode] = cnt ? sum / cnt : NAN;
        free(f);
        free(c);
        rvs_synth_destroy(&s);
    }
    printf("Mg b wing 5177-5182 A, F/Fc: Unsoeld %.4f, ABO-scaled %.4f\n", wing[0], wing[1]);
    CHECK(wing[1] < wing[0] - 0.01, "ABO-scaled Mg b wings deeper than Unsoeld's (%.4f vs %.4f)",
          wing[1], wing[0]);
}

int main(void)
{
    test_voigt();
    test_voigt_table();
    test_air_vacuum();
    test_saha_boltzmann();
    test_hminus();
    test_hydrogen_f();
    test_expint_planck();
    test_moog_parser();
    test_vdw();
    test_linelists();
    return test_finish("test_synth_physics");
}
