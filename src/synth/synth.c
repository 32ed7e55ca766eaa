/* synth.c: the synthetic spectrum. On a log-uniform vacuum-wavelength grid it sums, in every
 * layer of the model atmosphere (synth/atmosphere.c), the continuous opacity, the line
 * opacity of the selected atomic and molecular lines (Voigt profiles: thermal + microturbulent
 * Doppler width, radiative and Unsoeld van der Waals damping), the hydrogen Balmer and Paschen
 * lines (Doppler, radiative, self-broadening after Barklem, Piskunov & O'Mara 2000, and a
 * quasi-static linear Stark profile) and a smeared TiO band model, then solves the LTE transfer
 * equation with a source function B_lambda(T(tau)) exactly for a piecewise-linear source:
 * F = 2 pi int S E2 dtau. doc/mkgrid.md describes the approximations. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/internal.h"
#include "synth/synth_internal.h"

struct rvs_synth {
    double lnl0, dlnl; /* ln lambda of pixel 0, step */
    size_t npix;
    double *wave;
    struct rvs_synth_linelist list;
    /* per line, independent of the star: centre in pixels, pi e^2/(m c) gf lambda / (c dlnl),
     * Unsoeld's 10^(19.6 + 0.4 log C6) times the species' ABO factor with
     * RVS_SYNTH_VDW_ABO_SCALED (0 without van der Waals damping) */
    double *lcentre, *lk, *lc6;
    double threshold;
    double vmic;
    double sampling_broadening; /* pixels, added in quadrature to every metal line's width */
    enum rvs_synth_vdw vdw;
};

static void tables_init(void);

void rvs_synth_options_init(struct rvs_synth_options *o)
{
    memset(o, 0, sizeof *o);
    o->linelist_dir = NULL;
    o->lambda_min = 3470.0;
    o->lambda_max = 9975.0;
    o->resolution = 120000.0;
    o->vmic = -1.0;
    o->line_threshold = 1e-3;
    o->vdw = RVS_SYNTH_VDW_ABO_SCALED;
    o->sampling_broadening = 0.3;
}

int rvs_synth_create(const struct rvs_synth_options *o, struct rvs_synth **out)
{
    int status = RVS_OK;
    struct rvs_synth *s = NULL;
    *out = NULL;
    if (!(o->lambda_min >= 3000.0) || !(o->lambda_max <= 11000.0) ||
        !(o->lambda_max > o->lambda_min)) {
        rvs_log(RVS_LOG_ERROR, "mkgrid",
                "wavelength range %g-%g A is outside 3000-11000 A or empty", o->lambda_min,
                o->lambda_max);
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    if (!(o->resolution >= 1000.0 && o->resolution <= 1e6)) {
        rvs_log(RVS_LOG_ERROR, "mkgrid", "internal resolution %g is outside 1000-1e6",
                o->resolution);
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    s = rvs_calloc(1, sizeof *s);
    if (!s) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    s->dlnl = 1.0 / o->resolution;
    s->lnl0 = log(o->lambda_min);
    s->npix = (size_t)floor((log(o->lambda_max) - s->lnl0) / s->dlnl) + 1;
    s->wave = rvs_malloc(s->npix * sizeof *s->wave);
    if (!s->wave) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < s->npix; i++)
        s->wave[i] = exp(s->lnl0 + s->dlnl * i);
    s->threshold = o->line_threshold > 0 ? o->line_threshold : 1e-3;
    s->vmic = o->vmic;
    if (!(o->sampling_broadening >= 0.0 && o->sampling_broadening <= 2.0) ||
        (o->vdw != RVS_SYNTH_VDW_UNSOELD && o->vdw != RVS_SYNTH_VDW_ABO_SCALED)) {
        rvs_log(RVS_LOG_ERROR, "mkgrid",
                "sampling broadening %g pixels is outside 0-2, or unknown van der Waals mode %d",
                o->sampling_broadening, (int)o->vdw);
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    s->sampling_broadening = o->sampling_broadening;
    s->vdw = o->vdw;
    /* lines up to 30 A outside the grid still reach it with their wings */
    RVS_TRY(rvs_synth_linelist_load(o->linelist_dir, o->lambda_min - 30.0,
                                    o->lambda_max + 30.0, &s->list));
    size_t nlines = s->list.count ? s->list.count : 1;
    s->lcentre = rvs_malloc(nlines * sizeof *s->lcentre);
    s->lk = rvs_malloc(nlines * sizeof *s->lk);
    s->lc6 = rvs_malloc(nlines * sizeof *s->lc6);
    if (!s->lcentre || !s->lk || !s->lc6) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < s->list.count; i++) {
        const struct rvs_synth_line *ln = &s->list.lines[i];
        s->lcentre[i] = (log(ln->lambda) - s->lnl0) / s->dlnl;
        s->lk[i] = RVS_PI_E2_MC * pow(10.0, ln->loggf) * ln->lambda * 1e-8 / (RVS_C * s->dlnl);
        s->lc6[i] = ln->z > 0 && ln->log_c6 < 0 ? pow(10.0, 19.6 + 0.4 * ln->log_c6) : 0.0;
        /* Unsoeld underestimates the van der Waals width of most neutral metal lines (by
         * 1.2-2.5 for Fe I, Mg I, Si I, Na I): scale it by the median ABO/Unsoeld ratio of the
         * species' lines that carry ABO values (synth/vdw.c, doc/mkgrid.md) */
        if (o->vdw == RVS_SYNTH_VDW_ABO_SCALED && ln->z > 0)
            s->lc6[i] *= rvs_synth_vdw_enhancement[ln->z][ln->ion];
    }
    tables_init();
    rvs_log(RVS_LOG_INFO, "mkgrid", "%zu lines (%s), %zu pixels %.1f-%.1f A", s->list.count,
            s->list.from_files ? o->linelist_dir : "built-in list", s->npix, s->wave[0],
            s->wave[s->npix - 1]);
    *out = s;
    s = NULL;
cleanup:
    rvs_synth_destroy(&s);
    return status;
}

void rvs_synth_destroy(struct rvs_synth **ps)
{
    if (!ps || !*ps)
        return;
    rvs_synth_linelist_free(&(*ps)->list);
    free((*ps)->lcentre);
    free((*ps)->lk);
    free((*ps)->lc6);
    free((*ps)->wave);
    free(*ps);
    *ps = NULL;
}

size_t rvs_synth_npix(const struct rvs_synth *s) { return s->npix; }
const double *rvs_synth_wavelength(const struct rvs_synth *s) { return s->wave; }
size_t rvs_synth_line_count(const struct rvs_synth *s) { return s->list.count; }
int rvs_synth_uses_linelist_files(const struct rvs_synth *s) { return s->list.from_files; }

double rvs_synth_vmic(const struct rvs_synth *s, const struct rvs_synth_params *p)
{
    /* APOGEE DR12 calibration vmic = 2.478 - 0.325 log g (Holtzman et al. 2015, AJ 150, 148) */
    return s->vmic >= 0 ? s->vmic : fmax(0.5, 2.478 - 0.325 * p->logg);
}

enum rvs_synth_vdw rvs_synth_vdw_mode(const struct rvs_synth *synth)
{
    return synth->vdw;
}

double rvs_synth_sampling_broadening(const struct rvs_synth *synth)
{
    return synth->sampling_broadening;
}

int rvs_synth_params_check(const struct rvs_synth_params *p, const char **why)
{
    *why = NULL;
    if (!(p->teff >= RVS_SYNTH_TEFF_MIN && p->teff <= RVS_SYNTH_TEFF_MAX))
        *why = "Teff outside 2800-12500 K";
    else if (!(p->logg >= RVS_SYNTH_LOGG_MIN && p->logg <= RVS_SYNTH_LOGG_MAX))
        *why = "log g outside -0.5..6";
    else if (!(p->feh >= RVS_SYNTH_FEH_MIN && p->feh <= RVS_SYNTH_FEH_MAX))
        *why = "[Fe/H] outside -4.5..1";
    else if (!(p->alpha >= RVS_SYNTH_ALPHA_MIN && p->alpha <= RVS_SYNTH_ALPHA_MAX))
        *why = "[alpha/Fe] outside -0.5..1.2";
    else if (p->logg < 4.0 * log10(p->teff / 4000.0))
        *why = "log g below 4 log10(Teff/4000): too close to the Eddington limit for a "
               "hydrostatic model";
    return *why ? RVS_ERR_INVALID_ARGUMENT : RVS_OK;
}

/* ---------------------------------------------------------------- per-layer populations */

/* Number density / partition function of each absorber in one layer: n(species)/U(T), so
 * that the lower-level population is pop * g * exp(-E/kT). */
struct layer_pop {
    double atom[RVS_SYNTH_MAX_Z + 1][2];
    double mol[RVS_SYNTH_NMOL];
    double mol_n[RVS_SYNTH_NMOL]; /* number densities */
};

/* Molecular equilibrium of the trace molecules with H (and H2) fixed by the EOS: the fraction
 * of each element left as atoms is found by damped fixed-point iteration of its conservation
 * equation. Fills phi[z] (atomic fraction of element z) and the molecule densities. */
static void molecules(const struct rvs_synth_atmosphere *atm, int l, const double f0[],
                      double phi[], double nmol[])
{
    double t = atm->t[l], kt = RVS_K_B * t;
    double kfac[RVS_SYNTH_NMOL];
    for (int m = 0; m < RVS_SYNTH_NMOL; m++)
        kfac[m] = t < 9000.0 ? kt / rvs_synth_molecule_kp(m, t) : 0.0;
    for (int z = 0; z <= RVS_SYNTH_MAX_Z; z++)
        phi[z] = 1.0;
    double n0[RVS_SYNTH_MAX_Z + 1];
    for (int it = 0; it < 60; it++) {
        for (int z = 2; z <= RVS_SYNTH_MAX_Z; z++)
            n0[z] = atm->eps[z] * atm->nhtot[l] * phi[z] * f0[z];
        n0[1] = atm->nhi[l];
        double change = 0.0;
        for (int z = 2; z <= RVS_SYNTH_MAX_Z; z++) {
            double sum = 0.0;
            int any = 0;
            for (int m = 1; m < RVS_SYNTH_NMOL; m++) { /* H2 is in the EOS */
                int z1, z2;
                rvs_synth_molecule_atoms(m, &z1, &z2);
                if (z1 != z && z2 != z)
                    continue;
                any = 1;
                if (z1 == z2)
                    sum += 2.0 * n0[z] * kfac[m];
                else
                    sum += n0[z1 == z ? z2 : z1] * kfac[m];
            }
            if (!any || atm->eps[z] <= 0)
                continue;
            double target = 1.0 / (1.0 + f0[z] * sum);
            double next = sqrt(phi[z] * target); /* geometric damping against oscillation */
            change = fmax(change, fabs(log(next / phi[z])));
            phi[z] = next;
        }
        if (change < 1e-6)
            break;
    }
    for (int z = 2; z <= RVS_SYNTH_MAX_Z; z++)
        n0[z] = atm->eps[z] * atm->nhtot[l] * phi[z] * f0[z];
    n0[1] = atm->nhi[l];
    for (int m = 0; m < RVS_SYNTH_NMOL; m++) {
        int z1, z2;
        rvs_synth_molecule_atoms(m, &z1, &z2);
        nmol[m] = m == RVS_MOL_H2 ? atm->nh2[l] : n0[z1] * n0[z2] * kfac[m];
    }
}

static void layer_populations(const struct rvs_synth_atmosphere *atm, int l,
                              struct layer_pop *pop)
{
    double t = atm->t[l];
    double f0[RVS_SYNTH_MAX_Z + 1], f1[RVS_SYNTH_MAX_Z + 1], phi[RVS_SYNTH_MAX_Z + 1];
    f0[0] = f1[0] = 0;
    for (int z = 1; z <= RVS_SYNTH_MAX_Z; z++) {
        double fr[3];
        rvs_synth_ion_fractions(z, t, atm->ne[l], fr);
        f0[z] = fr[0];
        f1[z] = fr[1];
    }
    molecules(atm, l, f0, phi, pop->mol_n);
    for (int z = 1; z <= RVS_SYNTH_MAX_Z; z++) {
        double n = atm->eps[z] * atm->nhtot[l] * phi[z];
        pop->atom[z][0] = n * f0[z] / rvs_synth_partition(z, 0, t);
        pop->atom[z][1] = n * f1[z] / rvs_synth_partition(z, 1, t);
    }
    for (int m = 0; m < RVS_SYNTH_NMOL; m++)
        pop->mol[m] = pop->mol_n[m] / rvs_synth_molecule_partition(m, t);
}

/* ---------------------------------------------------------------- profiles */

#define N_STARK 16

/* Parameters of one line in one layer, in pixel units. */
struct line_layer {
    double k;      /* centre coefficient: opacity = k * profile(dx) */
    double dop;    /* Doppler width (1/e half width) in pixels */
    double a;      /* damping parameter */
    double stark;  /* Stark scale (t-distribution s) in pixels, 0 for metal lines */
};

/* Student-t (nu = 3/2) as a mixture of Gaussians: precisions w ~ Gamma(3/4, rate 3/4),
 * discretised on a log grid (weights normalised to 1). */
static double stark_w[N_STARK], stark_prec[N_STARK];

static void stark_init(void)
{
    double sum = 0.0;
    const double lo = log(10.0) * -3.5, hi = log(10.0) * 1.0;
    for (int k = 0; k < N_STARK; k++) {
        double lw = lo + (hi - lo) * (k + 0.5) / N_STARK;
        double w = exp(lw);
        /* Gamma(shape 3/4, rate 3/4) density times w (the d ln w Jacobian) */
        double d = pow(w, 0.75) * exp(-0.75 * w);
        stark_prec[k] = w;
        stark_w[k] = d;
        sum += d;
    }
    for (int k = 0; k < N_STARK; k++)
        stark_w[k] /= sum;
}

/* One line in one layer, ready to evaluate: opacity per pixel at offset dx (pixels) from the
 * centre = sum over components k of coef[k] H(a_k, dx inv_w[k]). Metal lines have one
 * component; hydrogen lines the N_STARK Gaussian components of the Stark profile, each
 * convolved with the Doppler/Lorentz core. */
struct prof {
    int n;
    double coef[N_STARK], inv_w[N_STARK];
    struct rvs_synth_voigt_a va[N_STARK];
};

static void prof_prepare(const struct line_layer *p, struct prof *pr)
{
    if (p->stark <= 0.0) {
        pr->n = 1;
        pr->coef[0] = p->k / (RVS_SQRT_PI * p->dop);
        pr->inv_w[0] = 1.0 / p->dop;
        rvs_synth_voigt_prepare(p->a, &pr->va[0]);
        return;
    }
    double s2 = p->stark * p->stark;
    pr->n = N_STARK;
    for (int k = 0; k < N_STARK; k++) {
        /* a Gaussian of variance s^2/w has 1/e half width sqrt(2 s^2 / w) */
        double width = sqrt(p->dop * p->dop + 2.0 * s2 / stark_prec[k]);
        pr->coef[k] = p->k * stark_w[k] / (RVS_SQRT_PI * width);
        pr->inv_w[k] = 1.0 / width;
        rvs_synth_voigt_prepare(p->a * p->dop / width, &pr->va[k]);
    }
}

/* Opacity (k times the unit-area profile per pixel) at pixel offset dx. */
RVS_SYNTH_INLINE double prof_eval(const struct prof *pr, double dx)
{
    if (pr->n == 1)
        return pr->coef[0] * rvs_synth_voigt_eval(&pr->va[0], dx * pr->inv_w[0]);
    double sum = 0.0;
    for (int k = 0; k < pr->n; k++)
        sum += pr->coef[k] * rvs_synth_voigt_eval(&pr->va[k], dx * pr->inv_w[k]);
    return sum;
}

#define CSTEP 16 /* continuum, TiO bands and Planck function sampled every CSTEP pixels */

/* Adds the line at the pixels of one side (side = +1: centre and right, -1: left) out to dmax
 * pixels from the rounded centre c: every pixel within `core`, then nodes spaced ~1/16 of the
 * distance with linear interpolation between them (the wing shape changes slowly there). Node
 * values go to row[]; the straight segments between nodes go to h2[] as second differences
 * (four entries per segment, whatever its length; the transfer sums them up), or to row[]
 * when h2 is NULL. */
static void add_fine(float *row, double *h2, long npix, double centre, long c,
                     const struct prof *pr, long core, long dmax, int side)
{
    long prev_d = -1;
    double prev_v = 0.0;
    long d = side < 0 ? 1 : 0;
    while (d <= dmax) {
        long px = c + side * d;
        double v = prof_eval(pr, (double)px - centre);
        if (px >= 0 && px < npix)
            row[px] += (float)v;
        if (prev_d >= 0 && d - prev_d > 1) {
            /* the segment between the nodes as a function of the pixel index: value fa at
             * pixel pa, slope b per pixel; clipped to the row */
            long pa = c + side * (prev_d + 1), pb = c + side * (d - 1);
            double b = side * (v - prev_v) / (double)(d - prev_d);
            double fa = prev_v + side * b;
            if (pa > pb) {
                long t = pa;
                pa = pb;
                pb = t;
                fa = prev_v + (v - prev_v) * (double)(d - 1 - prev_d) / (double)(d - prev_d);
            }
            if (pa < 0) {
                fa += b * (double)(-pa);
                pa = 0;
            }
            if (pb > npix - 1)
                pb = npix - 1;
            if (pa <= pb) {
                double fb = fa + b * (double)(pb - pa);
                if (h2) {
                    h2[pa] += fa;
                    h2[pa + 1] += b - fa;
                    h2[pb + 1] -= b + fb;
                    h2[pb + 2] += fb;
                } else {
                    for (long q = pa; q <= pb; q++)
                        row[q] += (float)(fa + b * (double)(q - pa));
                }
            }
        }
        prev_d = d;
        prev_v = v;
        long step = d <= core ? 1 : d / 16;
        if (step < 1)
            step = 1;
        if (d < dmax && d + step > dmax)
            step = dmax - d;
        if (step < 1)
            step = 1;
        d += step;
    }
}

/* Adds the line's opacity over centre +- half pixels to row[] and h2[] (see add_fine; h2 has
 * npix + 2 entries). */
static void add_line(float *row, double *h2, size_t npix, double centre, const struct prof *pr,
                     double dop, double half)
{
    long c = lround(centre), n = (long)npix;
    long lo = (long)floor(centre - half), hi = (long)ceil(centre + half);
    if (hi < 0 || lo >= n)
        return;
    long core = (long)ceil(4.0 * dop) + 4;
    add_fine(row, h2, n, centre, c, pr, core, hi - c, 1);
    add_fine(row, h2, n, centre, c, pr, core, c - lo, -1);
}

/* ---------------------------------------------------------------- hydrogen */

/* <|n_u k_u - n_l k_l|^(3/2)> over the parabolic sublevels (weights n - |k|): the mean linear
 * Stark displacement of the components, in units of 3/2 e a0 F. */
static double stark_mean_x15(int nl, int nu)
{
    double sum = 0.0, wsum = 0.0;
    for (int ku = -(nu - 1); ku <= nu - 1; ku++)
        for (int kl = -(nl - 1); kl <= nl - 1; kl++) {
            double w = (double)(nu - abs(ku)) * (nl - abs(kl));
            sum += w * pow(fabs((double)nu * ku - (double)nl * kl), 1.5);
            wsum += w;
        }
    return sum / wsum;
}

/* ---------------------------------------------------------------- TiO band model */

/* Heads (air A) of the TiO bands that shape M-star spectra in 4700-9300 A, band oscillator
 * strengths f_el * q(v',v'') (rounded: f_el ~ 0.05-0.15 per Jorgensen 1994 and Plez 1998, with
 * approximate Franck-Condon factors), lower-level energy (eV) and electronic weight of the
 * lower state (X3Delta: 6, a1Delta: 2). Each band absorbs as a smeared, red-degraded sawtooth
 * exp(-(lambda - head) / 80 A). A band model, not a line list: see doc/mkgrid.md. */
static const double tio_bands[][4] = {
    {4761.0, 0.020, 0.000, 6}, /* alpha (2,0) */
    {4954.6, 0.040, 0.000, 6}, /* alpha (1,0) */
    {5166.7, 0.060, 0.000, 6}, /* alpha (0,0) */
    {5448.2, 0.040, 0.125, 6}, /* alpha (0,1) */
    {5597.0, 0.040, 0.430, 2}, /* beta (0,0) */
    {5847.0, 0.030, 0.000, 6}, /* gamma' (1,0) */
    {6158.6, 0.070, 0.000, 6}, /* gamma' (0,0) */
    {6268.0, 0.010, 0.000, 6}, /* gamma (2,0) */
    {6651.3, 0.035, 0.000, 6}, /* gamma (1,0) */
    {7053.8, 0.070, 0.000, 6}, /* gamma (0,0) */
    {7589.3, 0.025, 0.125, 6}, /* gamma (0,1) */
    {8206.0, 0.008, 0.250, 6}, /* gamma (0,2) */
    {8432.0, 0.010, 0.000, 6}, /* epsilon (0,0) */
    {8859.6, 0.035, 0.430, 2}, /* delta (0,0) */
    {9209.0, 0.004, 0.125, 6}, /* epsilon (0,1) */
};
enum { N_TIO = sizeof tio_bands / sizeof tio_bands[0] };
static double tio_head_vac[N_TIO]; /* set by tables_init() */
#define TIO_DECAY 80.0 /* A */
/* Smearing the band's lines into a continuum overestimates its absorption, since the real lines
 * saturate one by one; this factor scales the smeared opacity so that the 7054 A band depth of
 * Teff 3200-3800 K dwarfs falls in the range of M0-M4 dwarfs (TiO5-like ratio ~0.7-0.4). */
#define TIO_SCALE 0.1
#define TIO_B 0.535    /* rotational constant, cm^-1 */

/* Constant tables, computed once before any thread runs (rvs_synth_create). */
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static void tables_fill(void)
{
    stark_init();
    /* without memory for the table every Voigt value is computed directly: slower, same result
     * to 1e-4 */
    if (rvs_synth_voigt_table_init() != RVS_OK)
        rvs_log(RVS_LOG_WARNING, "mkgrid", "no memory for the Voigt table; computing directly");
    for (int b = 0; b < N_TIO; b++)
        tio_head_vac[b] = rvs_synth_air_to_vacuum(tio_bands[b][0]);
}

static void tables_init(void) { pthread_once(&tables_once, tables_fill); }

static double tio_opacity(double lambda, double t, double n_tio, double u_tio)
{
    if (n_tio <= 0)
        return 0.0;
    double sum = 0.0;
    double qrot = RVS_K_B * t / (RVS_H * RVS_C * TIO_B);
    for (int b = 0; b < N_TIO; b++) {
        double head = tio_head_vac[b];
        double d = lambda - head;
        if (d < -2.0 || d > 8.0 * TIO_DECAY)
            continue;
        /* a 2 A linear ramp at the head, then exponential decay; area 1 per A (approx.) */
        double shape = d < 0 ? (d + 2.0) / 2.0 : exp(-d / TIO_DECAY);
        shape /= TIO_DECAY;
        double nlow = n_tio * tio_bands[b][3] * exp(-tio_bands[b][2] / (RVS_K_EV * t)) * qrot /
                      u_tio;
        double lcm = lambda * 1e-8;
        /* pi e^2/(m c^2) lambda^2 f n per unit wavelength; shape per A -> per cm: 1e8 */
        sum += TIO_SCALE * 8.8526e-13 * lcm * lcm * tio_bands[b][1] * nlow * shape * 1e8;
    }
    return sum;
}

/* Wavelength-independent constants of one layer for the metal lines. */
struct layer_const {
    double beta;      /* 1 / (k T) in 1/eV */
    double vth2_amu;  /* 2 k T / amu in (km/s)^2: thermal speed^2 of a particle of 1 amu */
    double vdw;       /* Pg / T^0.7: the layer's factor of Unsoeld's gamma6 */
};

static void layer_const_init(const struct rvs_synth_atmosphere *atm, int l, struct layer_const *lc)
{
    double t = atm->t[l];
    lc->beta = 1.0 / (RVS_K_EV * t);
    lc->vth2_amu = 2.0 * RVS_K_B * t / RVS_AMU * 1e-10;
    lc->vdw = pow(10.0, log10(atm->pg[l]) - 0.7 * log10(t));
}

/* Opacity coefficient, widths and damping of line i in layer l. The line's own constants
 * (s->lk, s->lc6) are computed once in rvs_synth_create. vxi2 = vmic^2 + the sampling term,
 * stim = 1 - exp(-h nu / k T). */
static void metal_line_layer(const struct rvs_synth *s, const struct layer_pop *pop,
                             const struct layer_const *lc, size_t i, double vxi2, double cpx,
                             double stim, struct line_layer *out)
{
    const struct rvs_synth_line *ln = &s->list.lines[i];
    double n_over_u = ln->z > 0 ? pop->atom[ln->z][ln->ion] : pop->mol[-1 - ln->z];
    double xi = sqrt(lc->vth2_amu / ln->mass + vxi2); /* km/s */
    /* kappa = pi e^2/(m c) gf n/U exp(-E/kT) stim phi_nu, and phi_nu = profile per pixel /
     * (nu dlnl): s->lk holds pi e^2/(m c) gf lambda / (c dlnl) */
    out->k = s->lk[i] * n_over_u * exp(-ln->ep * lc->beta) * stim;
    /* Unsoeld: log gamma6 = 19.6 + 0.4 log C6 + log Pg - 0.7 log T (Gray 2005, eq. 11.29) */
    double gamma = ln->gamma_rad + s->lc6[i] * lc->vdw;
    double dnu_d = xi * 1e5 / (ln->lambda * 1e-8); /* Hz: xi / c * c / lambda */
    out->dop = xi / cpx;
    out->a = gamma / (4.0 * RVS_PI * dnu_d);
    out->stark = 0.0;
}

/* Line / continuum ratio at the peak of the profile, and the half width [pixels] where the
 * profile (Gaussian core exp(-v^2), Lorentz wing a / (sqrt(pi) v^2)) falls to eps of the
 * continuum kc. */
static double line_ratio_half(const struct line_layer *ll, double kc, double eps, double *half)
{
    double ratio = ll->k / (RVS_SQRT_PI * ll->dop) / kc;
    double hw = 3.0;
    if (ratio > eps)
        hw = fmax(hw, sqrt(log(ratio / eps)));
    *half = fmax(hw, sqrt(ratio * ll->a / (RVS_SQRT_PI * eps))) * ll->dop;
    return ratio;
}

/* ---------------------------------------------------------------- the spectrum */

static double cpu_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

struct rvs_synth_work {
    size_t npix;
    struct layer_pop *pop; /* [NLAYER] */
    float *kl;    /* [NLAYER][npix] line opacity (zero between spectra) */
    double *h2;   /* [NLAYER][npix + 2] line opacity, second differences (zero between) */
    double *kc;   /* [NLAYER][ncoarse] continuum */
    double *kx;   /* [NLAYER][ncoarse] TiO bands */
    double *bc;   /* [NLAYER][ncoarse] Planck function */
    double *tauc; /* [NLAYER][ncoarse] continuum optical depth */
    double *stim; /* [NLAYER][ncoarse] stimulated-emission factor 1 - exp(-h nu / k T) */
    float *shape; /* [npix] scratch: one line's unit profile */
    size_t ncoarse;
};

void rvs_synth_work_destroy(struct rvs_synth_work **pw)
{
    if (!pw || !*pw)
        return;
    struct rvs_synth_work *w = *pw;
    free(w->pop);
    free(w->kl);
    free(w->h2);
    free(w->kc);
    free(w->kx);
    free(w->bc);
    free(w->tauc);
    free(w->stim);
    free(w->shape);
    free(w);
    *pw = NULL;
}

int rvs_synth_work_create(const struct rvs_synth *s, struct rvs_synth_work **out)
{
    int status = RVS_OK;
    const size_t npix = s->npix, nl = RVS_SYNTH_NLAYER;
    struct rvs_synth_work *w = rvs_calloc(1, sizeof *w);
    *out = NULL;
    if (!w) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    w->npix = npix;
    w->ncoarse = (npix - 1) / CSTEP + 2;
    w->pop = rvs_malloc(nl * sizeof *w->pop);
    w->kl = rvs_calloc(nl * npix, sizeof *w->kl);
    w->h2 = rvs_calloc(nl * (npix + 2), sizeof *w->h2);
    w->kc = rvs_malloc(nl * w->ncoarse * sizeof *w->kc);
    w->kx = rvs_malloc(nl * w->ncoarse * sizeof *w->kx);
    w->bc = rvs_malloc(nl * w->ncoarse * sizeof *w->bc);
    w->tauc = rvs_malloc(nl * w->ncoarse * sizeof *w->tauc);
    w->stim = rvs_malloc(nl * w->ncoarse * sizeof *w->stim);
    w->shape = rvs_calloc(npix, sizeof *w->shape);
    if (!w->pop || !w->kl || !w->h2 || !w->kc || !w->kx || !w->bc || !w->tauc || !w->stim ||
        !w->shape) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    *out = w;
    w = NULL;
cleanup:
    rvs_synth_work_destroy(&w);
    return status;
}

/* row[] between coarse nodes j and j + 1, at fraction f */
static inline double coarse_node(const double *row, size_t j, double f)
{
    return row[j] + f * (row[j + 1] - row[j]);
}

static double coarse_at(const double *row, size_t ncoarse, size_t px)
{
    size_t j = px / CSTEP;
    if (j + 1 >= ncoarse)
        return row[ncoarse - 1];
    double f = (double)(px - j * CSTEP) / CSTEP;
    return row[j] + f * (row[j + 1] - row[j]);
}

/* Optical depth at each layer for the opacity kappa[l] (the formal solution's quadrature). */
static void optical_depth(const struct rvs_synth_atmosphere *atm, const double *kappa,
                          double *tau)
{
    double r_prev = kappa[0] / atm->kref[0];
    tau[0] = r_prev * atm->tau[0];
    const double h = 0.25 * log(10.0);
    for (int l = 1; l < RVS_SYNTH_NLAYER; l++) {
        double r = kappa[l] / atm->kref[l];
        tau[l] = tau[l - 1] + 0.5 * h * (r_prev * atm->tau[l - 1] + r * atm->tau[l]);
        r_prev = r;
    }
}

/* Emergent flux at one pixel from the opacity kappa and the source function s (B_lambda) in
 * each layer. */
static double formal(const struct rvs_synth_atmosphere *atm, const double *kappa, const double *s)
{
    double tau[RVS_SYNTH_NLAYER];
    optical_depth(atm, kappa, tau);
    /* F/(2 pi) = int S E2 dt: constant S above the top layer, linear between layers, linear
     * extrapolation below the bottom one */
    double e[4], ea[4];
    rvs_synth_expint(tau[0], ea);
    double f = s[0] * (0.5 - ea[2]);
    int l;
    for (l = 0; l < RVS_SYNTH_NLAYER - 1; l++) {
        double a = tau[l], b = tau[l + 1];
        if (a > 60.0)
            break;
        rvs_synth_expint(b, e);
        double dt = b - a;
        double slope = dt > 0 ? (s[l + 1] - s[l]) / dt : 0.0;
        f += s[l] * (ea[2] - e[2]) + slope * (ea[3] - e[3] - dt * e[2]);
        memcpy(ea, e, sizeof e);
    }
    if (l == RVS_SYNTH_NLAYER - 1) {
        int n = RVS_SYNTH_NLAYER - 1;
        double dt = tau[n] - tau[n - 1];
        double slope = dt > 0 ? (s[n] - s[n - 1]) / dt : 0.0;
        f += s[n] * ea[2] + slope * ea[3];
    }
    return 2.0 * RVS_PI * f;
}

/* A line is kept when its peak opacity exceeds the threshold option (1e-3) of the continuum
 * in one of four test layers; its profile is cut where it falls to 3e-4 of the continuum in
 * the test layer where it reaches farthest (at most 300 A). Numerical short cuts, each
 * measured against the spectra of the plain computation at DESI resolution
 * (tests/test_mkgrid_reference.c):
 *   - a layer gets no opacity from a line whose peak there is below LAYER_EPS of the
 *     continuum or whose peak times the continuum optical depth is below TAU_EPS (the line
 *     adds < 1e-6 to tau there): together < 2e-5 relative flux;
 *   - a line whose peak stays below WEAK_RATIO of the continuum in every layer (optically
 *     thin: the flux responds to its opacity linearly) gets one profile shape, that of the
 *     layer with the largest weight ratio * tau_c / (1 + tau_c)^3, scaled by its opacity in
 *     each layer, instead of a profile per layer: < 1.3e-4 relative flux, 10-15% of the
 *     time. */
#define LAYER_EPS 1e-4
#define TAU_EPS 1e-6
#define WEAK_RATIO 0.1

int rvs_synth_spectrum(const struct rvs_synth *s, const struct rvs_synth_params *p,
                       double *flux, double *continuum)
{
    struct rvs_synth_work *w = NULL;
    int status = rvs_synth_work_create(s, &w);
    if (status == RVS_OK)
        status = rvs_synth_spectrum_work(s, w, p, flux, continuum);
    rvs_synth_work_destroy(&w);
    return status;
}

int rvs_synth_spectrum_work(const struct rvs_synth *s, struct rvs_synth_work *wk,
                            const struct rvs_synth_params *p, double *flux, double *continuum)
{
    int status = RVS_OK;
    struct rvs_synth_work w = *wk; /* the buffers, by value: shorter names below */
    struct layer_pop *pop = wk->pop;
    struct rvs_synth_atmosphere atm;
    const char *why;
    if (rvs_synth_params_check(p, &why) != RVS_OK) {
        rvs_log(RVS_LOG_ERROR, "mkgrid", "Teff=%g logg=%g [Fe/H]=%g [a/Fe]=%g: %s", p->teff,
                p->logg, p->feh, p->alpha, why);
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    tables_init();
    double tm0 = cpu_seconds();
    double vmic = rvs_synth_vmic(s, p);
    RVS_TRY(rvs_synth_atmosphere_build(p, vmic, &atm));

    const size_t npix = s->npix, nl = RVS_SYNTH_NLAYER;
    if (wk->npix != npix) {
        rvs_log(RVS_LOG_ERROR, "mkgrid", "work space made for another generator");
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    struct layer_const lconst[RVS_SYNTH_NLAYER];
    for (size_t l = 0; l < nl; l++) {
        layer_populations(&atm, (int)l, &pop[l]);
        layer_const_init(&atm, (int)l, &lconst[l]);
        double u_tio = rvs_synth_molecule_partition(RVS_MOL_TIO, atm.t[l]);
        struct rvs_synth_continuum_layer cl;
        rvs_synth_continuum_prepare(atm.t[l], atm.ne[l], atm.nhi[l], atm.nhii[l], atm.nh2[l],
                                    &cl);
        for (size_t j = 0; j < w.ncoarse; j++) {
            double lam = exp(s->lnl0 + s->dlnl * (double)(j * CSTEP));
            w.kc[l * w.ncoarse + j] = rvs_synth_continuum_eval(&cl, lam);
            w.kx[l * w.ncoarse + j] =
                tio_opacity(lam, atm.t[l], pop[l].mol_n[RVS_MOL_TIO], u_tio);
            w.bc[l * w.ncoarse + j] = rvs_synth_planck(lam, atm.t[l]);
            w.stim[l * w.ncoarse + j] = -expm1(-RVS_HC_EV_A / lam * lconst[l].beta);
        }
    }
    for (size_t j = 0; j < w.ncoarse; j++) {
        double kap[RVS_SYNTH_NLAYER], tau[RVS_SYNTH_NLAYER];
        for (size_t l = 0; l < nl; l++)
            kap[l] = w.kc[l * w.ncoarse + j];
        optical_depth(&atm, kap, tau);
        for (size_t l = 0; l < nl; l++)
            w.tauc[l * w.ncoarse + j] = tau[l];
    }

    double tm1 = cpu_seconds();
    /* atomic and molecular lines */
    const double cpx = RVS_C_KMS * s->dlnl; /* km/s per pixel */
    const double vfloor = s->sampling_broadening * cpx;
    const double vfloor2 = vfloor * vfloor, vxi2 = vmic * vmic + vfloor2;
    size_t kept = 0, layers = 0;
    for (size_t i = 0; i < s->list.count; i++) {
        const struct rvs_synth_line *ln = &s->list.lines[i];
        double centre = s->lcentre[i];
        struct line_layer ll[RVS_SYNTH_NLAYER];
        double best = 0.0;
        size_t px = centre < 0 ? 0 : centre >= (double)npix ? npix - 1 : (size_t)centre;
        /* the coarse-grid interpolation at the line centre, for kc, stim and tauc */
        size_t jc = px / CSTEP;
        double fc = (double)(px - jc * CSTEP) / CSTEP;
#define AT(arr, l) coarse_node(&(arr)[(l) * w.ncoarse], jc, fc)
        /* strength test at a few layers against the local continuum first: most lines of the
         * list are far too weak in any given star */
        static const size_t test_layers[] = {0, 9, 18, RVS_SYNTH_NLAYER - 1};
        double half = 0.0, kcl[RVS_SYNTH_NLAYER];
        for (size_t q = 0; q < 4; q++) {
            size_t l = test_layers[q];
            metal_line_layer(s, &pop[l], &lconst[l], i, vxi2, cpx, AT(w.stim, l), &ll[l]);
            kcl[l] = AT(w.kc, l);
            best = fmax(best, ll[l].k / (RVS_SQRT_PI * ll[l].dop) / kcl[l]);
        }
        if (best < s->threshold)
            continue;
        for (size_t q = 0; q < 4; q++) {
            double hw;
            line_ratio_half(&ll[test_layers[q]], kcl[test_layers[q]], 3e-4, &hw);
            half = fmax(half, hw);
        }
        double maxhalf = 300.0 / ln->lambda / s->dlnl; /* 300 A */
        half = fmin(half, maxhalf);
        kept++;
        double ratio[RVS_SYNTH_NLAYER], rmax = 0.0, wbest = -1.0;
        size_t lbest = 0;
        for (size_t l = 0; l < nl; l++) {
            if (l != 0 && l != 9 && l != 18 && l != nl - 1) {
                metal_line_layer(s, &pop[l], &lconst[l], i, vxi2, cpx, AT(w.stim, l), &ll[l]);
                kcl[l] = AT(w.kc, l);
            }
            ratio[l] = ll[l].k / (RVS_SQRT_PI * ll[l].dop * kcl[l]);
            double tc = AT(w.tauc, l);
            if (ratio[l] < LAYER_EPS || ratio[l] * tc < TAU_EPS)
                ratio[l] = 0.0;
            rmax = fmax(rmax, ratio[l]);
            double wt = ratio[l] * tc / ((1.0 + tc) * (1.0 + tc) * (1.0 + tc));
            if (wt > wbest) {
                wbest = wt;
                lbest = l;
            }
        }
        if (rmax == 0.0)
            continue;
        if (rmax < WEAK_RATIO) {
            /* optically thin: one shape for every layer (see WEAK_RATIO) */
            struct line_layer unit = ll[lbest];
            unit.k = 1.0;
            struct prof pr;
            prof_prepare(&unit, &pr);
            add_line(w.shape, NULL, npix, centre, &pr, unit.dop, half);
            long lo = (long)floor(centre - half), hi = (long)ceil(centre + half);
            if (lo < 0)
                lo = 0;
            if (hi > (long)npix - 1)
                hi = (long)npix - 1;
            for (size_t l = 0; l < nl; l++) {
                if (ratio[l] == 0.0)
                    continue;
                layers++;
                float k = (float)ll[l].k, *row = &w.kl[l * npix];
                for (long q = lo; q <= hi; q++)
                    row[q] += k * w.shape[q];
            }
            for (long q = lo; q <= hi; q++)
                w.shape[q] = 0.0f;
            continue;
        }
        for (size_t l = 0; l < nl; l++) {
            if (ratio[l] == 0.0)
                continue;
            layers++;
            struct prof pr;
            prof_prepare(&ll[l], &pr);
            add_line(&w.kl[l * npix], &w.h2[l * (npix + 2)], npix, centre, &pr, ll[l].dop,
                     half);
        }
#undef AT
    }

    double tm2 = cpu_seconds();
    /* hydrogen: Balmer (n_lower 2) and Paschen (3) series */
    for (int nlow = 2; nlow <= 3; nlow++) {
        for (int nup = nlow + 1; nup <= 40; nup++) {
            const double rh = 109677.583; /* cm^-1 */
            double lam = 1e8 / (rh * (1.0 / (nlow * nlow) - 1.0 / ((double)nup * nup)));
            if (lam < s->wave[0] - 300.0 || lam > s->wave[npix - 1] + 300.0)
                continue;
            double f = rvs_synth_hydrogen_f(nlow, nup);
            double x15 = stark_mean_x15(nlow, nup);
            double centre = (log(lam) - s->lnl0) / s->dlnl;
            /* self-broadening cross-sections (a0^2) and velocity exponents, Barklem,
             * Piskunov & O'Mara 2000 (Table 1) for H alpha, beta, gamma; the H gamma values
             * for the higher Balmer lines; none for Paschen lines */
            double sig = 0.0, alp = 0.0;
            if (nlow == 2) {
                sig = nup == 3 ? 1180.0 : nup == 4 ? 2320.0 : 4208.0;
                alp = nup == 3 ? 0.677 : nup == 4 ? 0.455 : 0.380;
            }
            struct line_layer ll[RVS_SYNTH_NLAYER];
            double half = 0.0;
            for (size_t l = 0; l < nl; l++) {
                double t = atm.t[l], ne = atm.ne[l];
                double lcm = lam * 1e-8;
                double chi = 13.598434 * (1.0 - 1.0 / (nlow * nlow));
                double uh = rvs_synth_partition(1, 0, t);
                double npop = atm.nhi[l] * 2.0 * nlow * nlow * exp(-chi / (RVS_K_EV * t)) / uh;
                /* occupation of the upper level: a smooth Inglis-Teller cut, log ne =
                 * 23.26 - 7.5 log n_max (Inglis & Teller 1939) */
                double nmax = pow(10.0, (23.26 - log10(ne)) / 7.5);
                double occ = 1.0 / (1.0 + pow(nup / nmax, 7.5));
                double stim = -expm1(-RVS_HC_EV_A / (lam * RVS_K_EV * t));
                double k = RVS_PI_E2_MC * f * npop * stim * occ * lcm / (RVS_C * s->dlnl);
                double vth2 = 2.0 * RVS_K_B * t / (1.008 * RVS_AMU) * 1e-10;
                double xi = sqrt(vth2 + vmic * vmic + vfloor2);
                double dnu_d = xi / RVS_C_KMS * RVS_C / lcm;
                double gamma = 2.223e15 / (lam * lam);
                if (sig > 0) {
                    /* Anstee & O'Mara: FWHM = 2 (4/pi)^(a/2) Gamma((4-a)/2) v0 sigma
                     * (vbar/v0)^(1-a) n_H, vbar for H-H collisions */
                    double v0 = 1e6;
                    double vbar = sqrt(8.0 * RVS_K_B * t / RVS_PI / (0.5 * 1.008 * RVS_AMU));
                    gamma += 2.0 * pow(4.0 / RVS_PI, 0.5 * alp) * tgamma(0.5 * (4.0 - alp)) * v0 *
                             sig * RVS_A0 * RVS_A0 * pow(vbar / v0, 1.0 - alp) * atm.nhi[l];
                }
                /* linear Stark effect, quasi-static ions: Holtsmark field F0 = 2.603 e N^(2/3)
                 * (N = ne); component shifts 3/2 e a0 F X lambda^2/(h c); the t(3/2)
                 * profile of scale s reproduces the Holtsmark wing 1.5 beta^(-5/2) when
                 * s^(3/2) = 1.3266 <X^(3/2)> (C F0)^(3/2) */
                double f0 = 2.603 * RVS_E * pow(ne, 2.0 / 3.0);
                /* displacement per unit field, cm per (statvolt/cm) */
                double c_unit = 1.5 * RVS_E * RVS_A0 * lcm * lcm / (RVS_H * RVS_C);
                double s_cm = pow(1.3266 * x15, 2.0 / 3.0) * c_unit * f0;
                ll[l].k = k;
                ll[l].dop = xi / RVS_C_KMS / s->dlnl;
                ll[l].a = gamma / (4.0 * RVS_PI * dnu_d);
                ll[l].stark = s_cm / lcm / s->dlnl;
                size_t px = centre < 0 ? 0 : centre >= (double)npix ? npix - 1 : (size_t)centre;
                double kc = coarse_at(&w.kc[l * w.ncoarse], w.ncoarse, px);
                double ratio = k / kc; /* times a unit-area profile (per pixel) */
                double eps = 3e-4;
                /* t wing 0.5654 s^1.5 x^-2.5 and Lorentz wing (a dop / pi) x^-2 */
                double hs = pow(0.5654 * pow(ll[l].stark, 1.5) * ratio / eps, 0.4);
                double hl = sqrt(ll[l].a * ll[l].dop / RVS_PI * ratio / eps);
                double hw = fmax(fmax(hs, hl), 4.0 * ll[l].dop);
                if (hw > half)
                    half = hw;
            }
            double maxhalf = 400.0 / lam / s->dlnl;
            if (half > maxhalf)
                half = maxhalf;
            for (size_t l = 0; l < nl; l++) {
                struct prof pr;
                prof_prepare(&ll[l], &pr);
                add_line(&w.kl[l * npix], &w.h2[l * (npix + 2)], npix, centre, &pr,
                         ll[l].dop, half);
            }
        }
    }

    double tm3 = cpu_seconds();
    /* transfer; the line opacity arrays are zeroed as they are read, ready for the next
     * spectrum (also after an error) */
    double g[RVS_SYNTH_NLAYER] = {0}, f[RVS_SYNTH_NLAYER] = {0};
    for (size_t i = 0; i < npix; i++) {
        double kap[RVS_SYNTH_NLAYER], kcont[RVS_SYNTH_NLAYER], src[RVS_SYNTH_NLAYER];
        /* coarse-grid interpolation (as coarse_at: node j + 1 exists for every pixel) */
        size_t j = i / CSTEP;
        double fr = (double)(i - j * CSTEP) / CSTEP;
        for (size_t l = 0; l < nl; l++) {
            size_t b = l * w.ncoarse + j;
            double *h = &w.h2[l * (npix + 2) + i];
            float *k = &w.kl[l * npix + i];
            g[l] += *h;
            f[l] += g[l];
            kcont[l] = w.kc[b] + fr * (w.kc[b + 1] - w.kc[b]);
            kap[l] = kcont[l] + w.kx[b] + fr * (w.kx[b + 1] - w.kx[b]) + (double)*k + f[l];
            src[l] = w.bc[b] + fr * (w.bc[b + 1] - w.bc[b]);
            *h = 0.0;
            *k = 0.0f;
        }
        flux[i] = formal(&atm, kap, src);
        if (continuum)
            continuum[i] = formal(&atm, kcont, src);
        if (!isfinite(flux[i]) && status == RVS_OK) {
            rvs_log(RVS_LOG_ERROR, "mkgrid", "non-finite flux at %.2f A for Teff=%g logg=%g",
                    s->wave[i], p->teff, p->logg);
            status = RVS_ERR_INVALID_ARGUMENT;
        }
    }
    for (size_t l = 0; l < nl; l++)
        w.h2[l * (npix + 2) + npix] = w.h2[l * (npix + 2) + npix + 1] = 0.0;
    if (status != RVS_OK)
        goto cleanup;
    rvs_log(RVS_LOG_DEBUG, "mkgrid",
            "Teff=%g logg=%g: %zu of %zu lines above threshold (%zu line-layers); CPU s: "
            "atmosphere+continuum %.3f, lines %.3f, hydrogen %.3f, transfer %.3f",
            p->teff, p->logg, kept, s->list.count, layers, tm1 - tm0, tm2 - tm1, tm3 - tm2,
            cpu_seconds() - tm3);
cleanup:
    return status;
}
