/* synth/atmosphere.c: the model atmosphere of the spectrum generator: plane-parallel, with a
 * scaled-solar temperature law T(tau_5000) = Teff * T_sun(tau_5000) / Teff_sun (the MARCS solar
 * model's run, which carries the surface cooling by line blanketing that a grey Eddington law
 * T^4 = 3/4 Teff^4 (tau + 2/3) lacks), in hydrostatic equilibrium dP/dtau_5000 = g rho /
 * kappa_5000 with the continuous opacity of synth/physics.c, and the electron density from
 * charge conservation with Saha ionization of the abundant elements (stages I-III) and H2
 * formation. Radiation pressure and turbulent pressure are ignored (doc/mkgrid.md). */
#include <math.h>

#include "base/internal.h"
#include "synth/synth_internal.h"

/* Elements that donate electrons or count as particles: every element with A(X) > 0 up to Zn
 * plus a few heavier ones with low ionization energies; the rest changes ne by < 1e-4. */
static const int eos_elements[] = {2,  6,  7,  8,  10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
                                   21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 38, 39, 40, 56};
enum { N_EOS = sizeof eos_elements / sizeof eos_elements[0] };

void rvs_synth_eos(const double *eps, double t, double pg, double *ne_out, double *nhtot_out,
                   double *nhi_out, double *nhii_out, double *nh2_out)
{
    double ntot = pg / (RVS_K_B * t);
    double sum_other = 0.0;
    for (int i = 0; i < N_EOS; i++)
        sum_other += eps[eos_elements[i]];
    double ch2 = RVS_K_B * t / rvs_synth_molecule_kp(RVS_MOL_H2, t);
    /* Saha factors without the 1/ne, computed once */
    double sh = rvs_synth_saha(1, 0, t, 1.0);
    double s1[N_EOS], s2[N_EOS];
    for (int i = 0; i < N_EOS; i++) {
        s1[i] = rvs_synth_saha(eos_elements[i], 0, t, 1.0);
        s2[i] = rvs_synth_saha(eos_elements[i], 1, t, 1.0);
    }
    /* bisection on ln ne: the electrons released fall as ne rises, so the residual is
     * monotonic and the root unique */
    double lo = log(1e-4), hi = log(ntot);
    double ne = 0, nhi = 0, nhii = 0, nh2 = 0, nhtot = 0;
    for (int it = 0; it < 64; it++) {
        double lne = 0.5 * (lo + hi);
        ne = exp(lne);
        double r = sh / ne;
        /* particles: nhi (1+r)(1+S) + c nhi^2 (1+2S) + ne = ntot, S = sum of other eps */
        double qa = ch2 * (1.0 + 2.0 * sum_other), qb = (1.0 + r) * (1.0 + sum_other);
        double qc = ne - ntot;
        if (qc >= 0) {
            hi = lne;
            continue;
        }
        nhi = qa > 0 ? 2.0 * (-qc) / (qb + sqrt(qb * qb - 4.0 * qa * qc)) : -qc / qb;
        nhii = nhi * r;
        nh2 = ch2 * nhi * nhi;
        nhtot = nhi + nhii + 2.0 * nh2;
        double released = nhii;
        for (int i = 0; i < N_EOS; i++) {
            double a1 = s1[i] / ne, a2 = s2[i] / ne;
            double d = 1.0 + a1 + a1 * a2;
            released += eps[eos_elements[i]] * nhtot * (a1 + 2.0 * a1 * a2) / d;
        }
        if (released > ne)
            lo = lne;
        else
            hi = lne;
        if (hi - lo < 1e-7)
            break;
    }
    *ne_out = ne;
    *nhtot_out = nhtot;
    *nhi_out = nhi;
    *nhii_out = nhii;
    *nh2_out = nh2;
}

/* Reference opacity: the continuum at 5000 A, the depth scale of the temperature law below. */
static double layer_opacity(const double *eps, double t, double pg, double *ne, double *nhtot,
                            double *nhi, double *nhii, double *nh2)
{
    rvs_synth_eos(eps, t, pg, ne, nhtot, nhi, nhii, nh2);
    return rvs_synth_continuum_opacity(5000.0, t, *ne, *nhi, *nhii, *nh2);
}

/* T / Teff of the MARCS solar model (Gustafsson et al. 2008, A&A 486, 951; file sun.mod as
 * distributed with Korg.jl's test data, BSD-3) interpolated in its log tau_5000 column at the
 * layers -5.25, -5.0, ..., +1.5 (the top value held constant above the model's top). */
static const double solar_t_ratio[RVS_SYNTH_NLAYER] = {
    0.7040, 0.7040, 0.7092, 0.7188, 0.7290, 0.7393, 0.7497, 0.7599, 0.7701, 0.7800,
    0.7900, 0.7998, 0.8099, 0.8204, 0.8322, 0.8465, 0.8646, 0.8885, 0.9217, 0.9677,
    1.0325, 1.1211, 1.2487, 1.3779, 1.4682, 1.5376, 1.5991, 1.6575};

int rvs_synth_atmosphere_build(const struct rvs_synth_params *p, double vmic,
                               struct rvs_synth_atmosphere *atm)
{
    int status = RVS_OK;
    /* abundances: scaled solar, alpha elements shifted by [alpha/Fe] */
    static const int alpha_el[] = {8, 10, 12, 14, 16, 20, 22};
    for (int z = 0; z <= RVS_SYNTH_MAX_Z; z++) {
        double a = rvs_synth_solar_abundance[z];
        if (z >= 3)
            a += p->feh;
        atm->eps[z] = z == 0 || a < -4.0 ? 0.0 : pow(10.0, a - 12.0);
    }
    for (size_t i = 0; i < sizeof alpha_el / sizeof alpha_el[0]; i++)
        atm->eps[alpha_el[i]] *= pow(10.0, p->alpha);
    atm->vmic = vmic;

    double g = pow(10.0, p->logg);
    const double dlt = 0.25, lt0 = -5.25;
    for (int i = 0; i < RVS_SYNTH_NLAYER; i++) {
        atm->logtau[i] = lt0 + dlt * i;
        atm->tau[i] = pow(10.0, atm->logtau[i]);
        atm->t[i] = p->teff * solar_t_ratio[i];
    }
    /* top boundary: P = g tau / kappa(P), iterated (kappa grows with P, so it converges) */
    double ne, nhtot, nhi, nhii, nh2;
    double mass = 0.0; /* amu per hydrogen nucleus */
    for (int z = 1; z <= RVS_SYNTH_MAX_Z; z++)
        mass += atm->eps[z] * rvs_synth_atomic_mass(z);
    double pg = g * atm->tau[0] * 1e2;
    for (int it = 0; it < 40; it++) {
        double k = layer_opacity(atm->eps, atm->t[0], pg, &ne, &nhtot, &nhi, &nhii, &nh2);
        double pnew = g * atm->tau[0] * nhtot * RVS_AMU * mass / k;
        if (fabs(pnew / pg - 1.0) < 1e-6) {
            pg = pnew;
            break;
        }
        pg = sqrt(pg * pnew); /* geometric damping */
    }
    /* integrate d P / d ln tau = g tau rho / kappa with a predictor-corrector step */
    for (int i = 0; i < RVS_SYNTH_NLAYER; i++) {
        double k = layer_opacity(atm->eps, atm->t[i], pg, &ne, &nhtot, &nhi, &nhii, &nh2);
        atm->pg[i] = pg;
        atm->ne[i] = ne;
        atm->nhtot[i] = nhtot;
        atm->nhi[i] = nhi;
        atm->nhii[i] = nhii;
        atm->nh2[i] = nh2;
        atm->kref[i] = k;
        if (i == RVS_SYNTH_NLAYER - 1)
            break;
        double h = dlt * log(10.0);
        double f0 = g * atm->tau[i] * nhtot * RVS_AMU * mass / k;
        double pp = pg + h * f0;
        double f1 = 0.0;
        for (int it = 0; it < 3; it++) {
            double ne1, nht1, nhi1, nhii1, nh21;
            double k1 = layer_opacity(atm->eps, atm->t[i + 1], pp, &ne1, &nht1, &nhi1, &nhii1,
                                      &nh21);
            f1 = g * atm->tau[i + 1] * nht1 * RVS_AMU * mass / k1;
            pp = pg + 0.5 * h * (f0 + f1);
        }
        pg = pp;
    }
    for (int i = 0; i < RVS_SYNTH_NLAYER; i++) {
        if (!(atm->pg[i] > 0) || !isfinite(atm->pg[i]) || !(atm->ne[i] > 0) ||
            !(atm->kref[i] > 0)) {
            rvs_log(RVS_LOG_ERROR, "mkgrid",
                    "model atmosphere failed at layer %d for Teff=%g logg=%g [Fe/H]=%g", i,
                    p->teff, p->logg, p->feh);
            status = RVS_ERR_INVALID_ARGUMENT;
            goto cleanup;
        }
    }
cleanup:
    return status;
}
