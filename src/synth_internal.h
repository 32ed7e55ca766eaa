/* synth_internal.h: declarations shared by the synthetic-spectrum modules (synth_*.c, mkgrid.c):
 * physical constants, the Barklem & Collet tables, the line list and the model atmosphere. */
#ifndef RVS_SYNTH_INTERNAL_H
#define RVS_SYNTH_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "rvsfit/synth.h"

/* CGS constants (CODATA 2018). */
#define RVS_K_B 1.380649e-16      /* erg/K */
#define RVS_K_EV 8.617333262e-5   /* eV/K */
#define RVS_H 6.62607015e-27      /* erg s */
#define RVS_C 2.99792458e10       /* cm/s */
#define RVS_C_KMS 299792.458      /* km/s */
#define RVS_ME 9.1093837015e-28   /* g */
#define RVS_E 4.80320471e-10      /* esu */
#define RVS_AMU 1.66053906660e-24 /* g */
#define RVS_A0 5.29177210903e-9   /* cm, Bohr radius */
#define RVS_SIGMA_T 6.6524587321e-25 /* cm^2, Thomson */
#define RVS_EV 1.602176634e-12    /* erg */
#define RVS_HC_EV_A 12398.419843  /* h c in eV Angstrom */
#define RVS_PI 3.14159265358979323846
#define RVS_SQRT_PI 1.77245385090551602729
#define RVS_SAHA_CONST 2.4146830e15 /* (2 pi m_e k / h^2)^{3/2}, cm^-3 K^-3/2 */
#define RVS_PI_E2_MC 0.0265400193 /* pi e^2 / (m_e c), cm^2 s^-1 */

/* Tables generated from Barklem & Collet 2016 (src/synth_tables.c). */
#define RVS_SYNTH_NTEMP 11
#define RVS_SYNTH_MAX_Z 92
enum rvs_synth_molecule {
    RVS_MOL_H2,
    RVS_MOL_CO,
    RVS_MOL_CN,
    RVS_MOL_C2,
    RVS_MOL_N2,
    RVS_MOL_CH,
    RVS_MOL_NH,
    RVS_MOL_OH,
    RVS_MOL_MGH,
    RVS_MOL_SIH,
    RVS_MOL_CAH,
    RVS_MOL_FEH,
    RVS_MOL_TIO,
    RVS_MOL_VO,
    RVS_MOL_ZRO,
    RVS_MOL_SIO,
    RVS_SYNTH_NMOL
};
extern const double rvs_synth_table_temps[RVS_SYNTH_NTEMP];
extern const char *const rvs_synth_element_symbol[RVS_SYNTH_MAX_Z + 1];
extern const double rvs_synth_ionization_energy[RVS_SYNTH_MAX_Z + 1][3];
extern const float rvs_synth_log_partition[RVS_SYNTH_MAX_Z + 1][3][RVS_SYNTH_NTEMP];
extern const char *const rvs_synth_molecule_name[RVS_SYNTH_NMOL];
extern const float rvs_synth_molecule_log_partition[RVS_SYNTH_NMOL][RVS_SYNTH_NTEMP];
extern const float rvs_synth_molecule_log_kp[RVS_SYNTH_NMOL][RVS_SYNTH_NTEMP];

/* Asplund et al. 2009 solar abundances A(X) = log eps, by atomic number (synth_physics.c). */
extern const double rvs_synth_solar_abundance[RVS_SYNTH_MAX_Z + 1];
/* Atomic mass [amu] of element z (standard atomic weights for light elements, a smooth fit
 * above: it only enters thermal Doppler widths). */
double rvs_synth_atomic_mass(int z);
/* Constituents of a molecule (atomic numbers). */
void rvs_synth_molecule_atoms(int mol, int *z1, int *z2);
double rvs_synth_molecule_partition(int mol, double t);
/* K_p = p(A) p(B) / p(AB) [dyn cm^-2]. */
double rvs_synth_molecule_kp(int mol, double t);

/* Exponential integrals E1..E4 at x >= 0 (Abramowitz & Stegun 5.1.53/5.1.56 for E1, upward
 * recurrence for the others); e[0..3] = E1..E4. E1(0) is returned as a large number. */
void rvs_synth_expint(double x, double e[4]);

/* Planck function B_lambda [erg s^-1 cm^-2 A^-1 sr^-1]. */
double rvs_synth_planck(double lambda_a, double t);

/* Tabulated Voigt function (synth_physics.c): H(a, v) for |v| < RVS_VOIGT_VMAX and
 * a < RVS_VOIGT_AMAX from a table of rvs_synth_voigt (error < 9e-5 H(a, 0)), elsewhere
 * rvs_synth_voigt itself, which is cheap there (Humlicek's rational regions, no exp/cos). The
 * table is built once by rvs_synth_voigt_table_init (call it before threads start); until then
 * every value is computed directly. */
#if defined(__GNUC__)
#define RVS_SYNTH_INLINE __attribute__((always_inline)) static inline /* hot inner loops */
#else
#define RVS_SYNTH_INLINE static inline
#endif
#define RVS_VOIGT_VMAX 8
#define RVS_VOIGT_VSTEPS 64
#define RVS_VOIGT_AMIN 1e-4
#define RVS_VOIGT_AMAX 30.0
#define RVS_VOIGT_ARATIO 1.03
int rvs_synth_voigt_table_init(void);
/* H(a, .) for one a: the two table rows around a and the weight of the upper one. */
struct rvs_synth_voigt_a {
    const float *r0, *r1; /* NULL: evaluate directly */
    float w1, scale;      /* the rows hold (1 + a) H: scale = 1 / (1 + a) */
    double a;
};
void rvs_synth_voigt_prepare(double a, struct rvs_synth_voigt_a *va);
RVS_SYNTH_INLINE double rvs_synth_voigt_eval(const struct rvs_synth_voigt_a *va, double v)
{
    v = v < 0 ? -v : v;
    double a = va->a;
    if (v >= (double)RVS_VOIGT_VMAX) {
        /* Humlicek's regions 1 (a + v >= 15) and 2 (5.5 <= a + v < 15), as rvs_synth_voigt
         * computes them, in real arithmetic (t = a - i v, u = t^2) */
        double a2 = a * a, v2 = v * v;
        if (a + v >= 15.0) {
            double d = 0.5 + a2 - v2; /* w = t / (sqrt(pi) (1/2 + u)) */
            return 0.5641896 * a * (0.5 + a2 + v2) / (d * d + 4.0 * a2 * v2);
        }
        double ur = a2 - v2, ui = -2.0 * a * v; /* w = t (1.410474 + u / sqrt(pi)) / */
        double qr = 1.410474 + 0.5641896 * ur, qi = 0.5641896 * ui; /* (0.75 + u (3 + u)) */
        double nr = a * qr + v * qi, ni = a * qi - v * qr;
        double dr = 0.75 + ur * (3.0 + ur) - ui * ui, di = ur * ui + ui * (3.0 + ur);
        return (nr * dr + ni * di) / (dr * dr + di * di);
    }
    if (!va->r0)
        return rvs_synth_voigt(a, v);
    float x = (float)v * (float)RVS_VOIGT_VSTEPS;
    int i = (int)x;
    float t = x - (float)i;
    const float *p = va->r0 + i, *q = va->r1 + i;
    float h0 = p[0] + t * (p[1] - p[0]), h1 = q[0] + t * (q[1] - q[0]);
    return (double)((h0 + va->w1 * (h1 - h0)) * va->scale);
}

/* Hydrogen (n_lower -> n_upper) absorption oscillator strength: Kramers' formula times the
 * Johnson (1972) bound-bound Gaunt factor. */
double rvs_synth_hydrogen_f(int n_lower, int n_upper);

/* ---------------------------------------------------------------- line list */
/* Species: atoms are (z, ion) with ion 0/1/2; molecules have z = -1 - enum rvs_synth_molecule. */
struct rvs_synth_line {
    double lambda;   /* vacuum, Angstrom */
    float loggf;     /* includes the isotopic fraction for molecules */
    float ep;        /* lower excitation potential, eV */
    float gamma_rad; /* FWHM, s^-1 */
    float log_c6;    /* log10 C6 [cgs] for van der Waals (Unsoeld), or 0 where not used */
    int16_t z;       /* atomic number, or -1 - molecule */
    int8_t ion;      /* ionization stage (0 neutral) */
    uint8_t pad;
    float mass;      /* amu */
};

struct rvs_synth_linelist {
    struct rvs_synth_line *lines; /* sorted by wavelength */
    size_t count;
    int from_files; /* 0: the built-in fallback list */
};

/* Reads the MOOG-format files of a linemake directory restricted to [lmin, lmax] (vacuum Å);
 * dir == NULL or "" gives the built-in list of strong lines. */
int rvs_synth_linelist_load(const char *dir, double lmin, double lmax,
                            struct rvs_synth_linelist *list);
void rvs_synth_linelist_free(struct rvs_synth_linelist *list);
/* Parses one MOOG line; returns 1 for a line, 0 for a comment/blank, -1 for garbage. */
int rvs_synth_parse_moog_line(const char *text, double *lambda_air, double *code, double *ep,
                              double *loggf, double *damping);

/* ---------------------------------------------------------------- model atmosphere */
#define RVS_SYNTH_NLAYER 28

struct rvs_synth_atmosphere {
    double logtau[RVS_SYNTH_NLAYER]; /* log10 tau_5000 (continuum optical depth at 5000 A) */
    double tau[RVS_SYNTH_NLAYER];
    double t[RVS_SYNTH_NLAYER];
    double pg[RVS_SYNTH_NLAYER];     /* gas pressure, dyn cm^-2 */
    double ne[RVS_SYNTH_NLAYER];     /* electrons, cm^-3 */
    double nhtot[RVS_SYNTH_NLAYER];  /* hydrogen nuclei, cm^-3 */
    double nhi[RVS_SYNTH_NLAYER];    /* neutral atomic H */
    double nhii[RVS_SYNTH_NLAYER];
    double nh2[RVS_SYNTH_NLAYER];
    double kref[RVS_SYNTH_NLAYER];   /* continuum opacity at 5000 A, cm^-1 */
    double eps[RVS_SYNTH_MAX_Z + 1]; /* number abundances relative to H */
    double vmic;                     /* km/s */
};

/* Scaled-solar LTE atmosphere in hydrostatic equilibrium (synth_atmosphere.c). */
int rvs_synth_atmosphere_build(const struct rvs_synth_params *p, double vmic,
                               struct rvs_synth_atmosphere *atm);
/* Charge and particle balance at (T, Pg): fills ne, nhtot, nhi, nhii, nh2. */
void rvs_synth_eos(const double *eps, double t, double pg, double *ne, double *nhtot,
                   double *nhi, double *nhii, double *nh2);
/* Ionization fractions of element z (stages I, II, III) at (T, ne). */
void rvs_synth_ion_fractions(int z, double t, double ne, double frac[3]);
/* Continuum absorption coefficient [cm^-1] of one layer at lambda (vacuum Å). */
double rvs_synth_continuum_opacity(double lambda_a, double t, double ne, double nhi,
                                   double nhii, double nh2);
/* The same in two steps: the wavelength-independent factors of one layer (level populations,
 * temperature powers), then the opacity at any wavelength from them. */
#define RVS_SYNTH_CONT_NLEVEL 30 /* H I bound-free from n = 1 ... 30 */
struct rvs_synth_continuum_layer {
    double t, alpha_t, hm_bf, hm_ff_theta[6], pe_nhi, h_k_t;
    double hbf[RVS_SYNTH_CONT_NLEVEL + 1];
    double ff, thomson, nhi, nh2;
};
void rvs_synth_continuum_prepare(double t, double ne, double nhi, double nhii, double nh2,
                                 struct rvs_synth_continuum_layer *c);
double rvs_synth_continuum_eval(const struct rvs_synth_continuum_layer *c, double lambda_a);
/* H- free-free as rvs_synth_hminus_ff with the powers theta^((n+2)/2), n = 0..5, of
 * theta = 5040/T given. */
double rvs_synth_hminus_ff_theta(double lambda_a, const double theta_pow[6]);

#endif
