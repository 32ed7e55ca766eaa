/* test_synth_trends.c: the generator's spectra must respond to the parameters the way real stars
 * do, or the fitter could not measure them: Balmer lines strengthen with Teff up to ~9000 K and
 * weaken above; metal lines weaken with [Fe/H] and strengthen with [alpha/Fe] (Mg b); gravity
 * broadens the Balmer wings of A stars and the Mg b lines of cool dwarfs and weakens the Ca II
 * triplet; TiO bands appear below ~4000 K. Spectra are computed in small windows at reduced
 * internal resolution with the linemake list (shared data) or, without it, the built-in list. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "rvsfit.h"
#include "testutil.h"

static char linelist_dir[4096];

static struct rvs_synth *make_synth(double l0, double l1)
{
    struct rvs_synth_options o;
    rvs_synth_options_init(&o);
    o.lambda_min = l0;
    o.lambda_max = l1;
    o.resolution = 40000.0;
    o.linelist_dir = linelist_dir[0] ? linelist_dir : NULL;
    struct rvs_synth *s = NULL;
    if (rvs_synth_create(&o, &s) != RVS_OK) {
        fprintf(stderr, "FAIL: cannot set up the generator for %g-%g A\n", l0, l1);
        exit(1);
    }
    return s;
}

/* Mean of 1 - F/Fc over [a, b] (vacuum A) of a spectrum at p; or of F itself when raw. */
struct spec {
    double *f, *c;
};

static struct spec compute(struct rvs_synth *s, double teff, double logg, double feh,
                           double alpha)
{
    size_t n = rvs_synth_npix(s);
    struct spec sp = {malloc(n * sizeof(double)), malloc(n * sizeof(double))};
    struct rvs_synth_params p = {teff, logg, feh, alpha};
    if (!sp.f || !sp.c || rvs_synth_spectrum(s, &p, sp.f, sp.c) != RVS_OK) {
        fprintf(stderr, "FAIL: spectrum %g/%g/%g/%g\n", teff, logg, feh, alpha);
        exit(1);
    }
    return sp;
}

static double depth(struct rvs_synth *s, struct spec sp, double a, double b)
{
    const double *w = rvs_synth_wavelength(s);
    double sum = 0;
    int n = 0;
    for (size_t i = 0; i < rvs_synth_npix(s); i++)
        if (w[i] >= a && w[i] <= b) {
            sum += 1.0 - sp.f[i] / sp.c[i];
            n++;
        }
    return n ? sum / n : NAN;
}

static double mean_flux(struct rvs_synth *s, struct spec sp, double a, double b)
{
    const double *w = rvs_synth_wavelength(s);
    double sum = 0;
    int n = 0;
    for (size_t i = 0; i < rvs_synth_npix(s); i++)
        if (w[i] >= a && w[i] <= b) {
            sum += sp.f[i];
            n++;
        }
    return n ? sum / n : NAN;
}

static void spec_free(struct spec sp)
{
    free(sp.f);
    free(sp.c);
}

int main(void)
{
    const char *data = getenv("RVSFIT_CL_SHARED_DATA");
    const char *top = getenv("top_srcdir");
    if (data)
        snprintf(linelist_dir, sizeof linelist_dir, "%s/linelists/linemake", data);
    else
        snprintf(linelist_dir, sizeof linelist_dir, "%s/../shared/data/linelists/linemake",
                 top ? top : ".");
    struct stat st;
    if (stat(linelist_dir, &st) != 0)
        linelist_dir[0] = '\0';
    printf("line list: %s\n", linelist_dir[0] ? linelist_dir : "built-in");

    /* ---- Balmer lines against Teff (H beta, vacuum 4862.7 A), log g 4 */
    struct rvs_synth *sb = make_synth(4780.0, 5360.0);
    static const double teffs[] = {5500, 6500, 8000, 9000, 12000};
    double hb[5];
    for (int i = 0; i < 5; i++) {
        struct spec sp = compute(sb, teffs[i], 4.0, 0.0, 0.0);
        hb[i] = depth(sb, sp, 4857.7, 4867.7);
        spec_free(sp);
    }
    printf("H beta depth (+-5 A) at Teff 5500..12000: %.3f %.3f %.3f %.3f %.3f\n", hb[0], hb[1],
           hb[2], hb[3], hb[4]);
    for (int i = 0; i < 3; i++)
        CHECK(hb[i + 1] > hb[i] * 1.05, "H beta must strengthen from %g to %g K: %g -> %g",
              teffs[i], teffs[i + 1], hb[i], hb[i + 1]);
    CHECK(hb[4] < hb[3], "H beta must weaken from 9000 to 12000 K: %g -> %g", hb[3], hb[4]);

    /* ---- gravity: the Stark wings of H beta in an A star (15-25 A from the centre) */
    {
        struct spec lo = compute(sb, 9000, 3.0, 0.0, 0.0), hi = compute(sb, 9000, 4.5, 0.0, 0.0);
        double wlo = depth(sb, lo, 4877.7, 4887.7), whi = depth(sb, hi, 4877.7, 4887.7);
        printf("H beta wing depth at 9000 K: log g 3.0 %.4f, 4.5 %.4f\n", wlo, whi);
        CHECK(whi > 1.2 * wlo, "A-star Balmer wings must broaden with log g: %g vs %g", wlo, whi);
        spec_free(lo);
        spec_free(hi);
    }

    /* ---- metals: Mg b + Fe 5270/5328 (5160-5340 A) against [Fe/H] at 5000 K, log g 2.5 */
    double met[4];
    static const double fehs[] = {0.0, -1.0, -2.0, -3.0};
    for (int i = 0; i < 4; i++) {
        struct spec sp = compute(sb, 5000, 2.5, fehs[i], 0.0);
        met[i] = depth(sb, sp, 5160.0, 5340.0);
        spec_free(sp);
    }
    printf("metal index at [Fe/H] 0, -1, -2, -3: %.4f %.4f %.4f %.4f\n", met[0], met[1], met[2],
           met[3]);
    for (int i = 0; i < 3; i++)
        CHECK(met[i + 1] < 0.8 * met[i], "metal lines must weaken from [Fe/H] %g to %g: %g -> %g",
              fehs[i], fehs[i + 1], met[i], met[i + 1]);
    /* [alpha/Fe]: Mg b (vacuum 5168-5186 A) at [Fe/H] = -1 */
    {
        struct spec a0 = compute(sb, 5000, 2.5, -1.0, 0.0), a4 = compute(sb, 5000, 2.5, -1.0, 0.4);
        double m0 = depth(sb, a0, 5166.0, 5188.0), m4 = depth(sb, a4, 5166.0, 5188.0);
        printf("Mg b at [alpha/Fe] 0 and +0.4: %.4f %.4f\n", m0, m4);
        CHECK(m4 > 1.05 * m0, "Mg b must strengthen with [alpha/Fe]: %g -> %g", m0, m4);
        spec_free(a0);
        spec_free(a4);
    }
    /* gravity in a cool star: the pressure-broadened Mg b wings */
    {
        struct spec g2 = compute(sb, 4800, 2.0, 0.0, 0.0), g5 = compute(sb, 4800, 4.6, 0.0, 0.0);
        double d2 = depth(sb, g2, 5166.0, 5188.0), d5 = depth(sb, g5, 5166.0, 5188.0);
        printf("Mg b at 4800 K, log g 2.0 and 4.6: %.4f %.4f\n", d2, d5);
        CHECK(d5 > 1.05 * d2, "Mg b must be stronger in a dwarf: %g vs %g", d2, d5);
        spec_free(g2);
        spec_free(g5);
    }
    rvs_synth_destroy(&sb);

    /* ---- Ca II triplet (vacuum 8500.4, 8544.4, 8664.5 A) against gravity at 4500 K */
    {
        struct rvs_synth *sc = make_synth(8480.0, 8690.0);
        struct spec g1 = compute(sc, 4500, 1.5, 0.0, 0.0), g4 = compute(sc, 4500, 4.5, 0.0, 0.0);
        double c1 = depth(sc, g1, 8540.4, 8548.4) + depth(sc, g1, 8660.5, 8668.5);
        double c4 = depth(sc, g4, 8540.4, 8548.4) + depth(sc, g4, 8660.5, 8668.5);
        printf("Ca II triplet cores (+-4 A) at 4500 K, log g 1.5 and 4.5: %.4f %.4f\n", c1, c4);
        CHECK(c1 > c4, "the Ca II triplet must be stronger in a giant: %g vs %g", c1, c4);
        spec_free(g1);
        spec_free(g4);
        rvs_synth_destroy(&sc);
    }

    /* ---- TiO: the gamma (0,0) head at 7055.7 A (vacuum) */
    {
        struct rvs_synth *st2 = make_synth(6990.0, 7120.0);
        static const double tt[] = {3300, 3600, 4000, 4500};
        double r[4];
        for (int i = 0; i < 4; i++) {
            struct spec sp = compute(st2, tt[i], i < 3 ? 5.0 : 4.5, 0.0, 0.0);
            r[i] = mean_flux(st2, sp, 7062.0, 7092.0) / mean_flux(st2, sp, 7022.0, 7052.0);
            spec_free(sp);
        }
        printf("TiO 7055 band ratio at 3300, 3600, 4000, 4500 K: %.3f %.3f %.3f %.3f\n", r[0],
               r[1], r[2], r[3]);
        CHECK(r[0] < 0.8, "TiO must be strong at 3300 K: ratio %g", r[0]);
        CHECK(r[0] < r[1] && r[1] < r[2] && r[2] < r[3], "TiO must fade with Teff");
        CHECK(r[3] > 0.97, "no TiO at 4500 K: ratio %g", r[3]);
        rvs_synth_destroy(&st2);
    }
    return test_finish("test_synth_trends");
}
