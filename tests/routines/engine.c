/* routines/engine.c: the evaluation engine (src/engine/engine.c) as a routine, and its plain-C
 * reference pipeline: for each request, the template from the NN (see below), rotation by direct
 * 'same'-mode convolution with rvs_rotation_weights in long double, the natural spline of
 * rvspecfit's spliner.c (construct and evaler, ported here in long double) at
 * lam * sqrt((1 - b) / (1 + b)), rvs_resolution_apply_host, and rvspecfit's get_chisq0 by a
 * long-double Cholesky, summed over the arms the spectrum has.
 *
 * The reference takes the NN templates from rvs_nn_forward called here, outside the engine, on
 * the same theta (the NN is float32 in both paths and tested against an unfolded cblas_sgemm
 * network in tests/test_nn.c), and everything the device rounds to rvs_real (data wavelengths,
 * velocities) rounded the same way, so it measures the engine's fp64 or compensated-fp32 chain.
 *
 * Scenario: smooth random networks whose output looks like a spectrum (a continuum with
 * absorption lines in log-flux), log-uniform template grids covering the data with 0.5% margin
 * (1500 km/s), spectra = reference model at a true (theta, vsini, v) times a continuum plus
 * Gaussian noise (S/N 10..80, 1% masked pixels with a 1000-fold sigma), requests in groups of
 * nv velocities sharing (spectrum, theta, vsini), shuffled.
 *
 * args: batch = E requests; n = 0 small arms (500/375/625 data px, ~1150/760/610 template px),
 * 1 DESI arms (2751/2326/2881 data px, ~6000 template px each); m = NN width; k = S spectra;
 * param = nv (velocities per group, low 12 bits) + flags ENG_* below.
 * Error: chi^2 (every arm and the total) relative (fp64) or absolute (fp32); non-finite values
 * must match the reference's exactly (else the error is infinite). */
#include <config.h>

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "routine.h"
#include "testutil.h"

#define ENG_NV_MASK 0xfff
#define ENG_RES (1 << 12)      /* resolution matrices */
#define ENG_TWOARMS (1 << 13)  /* two arms only (b, z) */
#define ENG_MISSING (1 << 14)  /* spectrum 1 lacks arm 1, spectrum S-1 lacks arm 0 */
#define ENG_OUTSIDE (1 << 15)  /* some requests at +-5000 km/s: outside every template */
#define ENG_VSINI (1 << 16)    /* vsini cycles through 0, 5, 50, 200 km/s (else 0) */
#define ENG_SHARED (1 << 17)   /* theta drawn from a pool shared by all spectra */
#define ENG_MODELS (1 << 18)   /* rvs_engine_models: best-fit models and coefficients too */
#define ENG_BN (1 << 19)       /* networks with BatchNorm */
#define ENG_TWOVSINI (1 << 20) /* pairs of groups share theta with vsini 0 and 50 (CCF bank) */

#define NARM_MAX 3
#define NPARAM 4
#define REF_C 299792.458L

/* Results of the last reference comparison beyond the chi^2 error, for tests/test_engine.c. */
struct rvs_engine_routine_errors {
    double chisq;          /* as max_error returns */
    double model;          /* best-fit model: max |dev - ref| / max |ref| per request and arm */
    double coeff;          /* coefficients in model space (as tests/routines/chisq.c) */
    size_t checked;        /* requests compared */
    size_t nonfinite_ref;  /* of those, with a non-finite reference total */
    size_t nonfinite_mismatch;
    size_t missing_nonzero; /* arms a spectrum lacks whose chisq_arm is not exactly 0 */
    size_t unique_theta, unique_templates; /* as the scenario built them */
};
struct rvs_engine_routine_errors rvs_engine_routine_last;

struct arm_case {
    size_t n, tn, ndiag, np;
    double d0, lnstep;
    double *twave, *dwave; /* exact grids, given to the engine */
    double *twave_dev, *dwave_dev; /* rounded to rvs_real as the device keeps them */
    double *basis;                    /* np x n */
    double *spec, *espec;             /* S x n */
    float *rdata;                     /* S x ndiag x n */
    struct rvs_nn_ref_net *net;
    struct rvs_nn *nn;
    double *models_dev, *coeffs_dev; /* E x n, E x np (ENG_MODELS) */
};

struct engine_state {
    struct rvs_routine_args args;
    int fp64, flags;
    size_t es, narm, S, E, nv, G;
    struct arm_case arms[NARM_MAX];
    unsigned char *used; /* S x narm */
    struct rvs_engine_request *req;
    size_t *group_of_req; /* E */
    double *gtheta;       /* G x 4 */
    double *gvsini;       /* G */
    int *gspec;           /* G */
    double *ttheta, *tvsini, *tvel; /* per spectrum: the truth its data were made from */
    double *chisq_total, *chisq_arm; /* device results */
    struct rvs_engine *engine;
    double err;
};

/* The NN reference's helpers (tests/routines/nn.c). */
struct rvs_nn_ref_net {
    struct rvs_nn_desc desc;
    float *store;
};
struct rvs_nn_ref_net *rvs_nn_ref_net_create(size_t nlayers, size_t width, size_t npc,
                                             size_t npix, int flags, unsigned seed);
void rvs_nn_ref_net_free(struct rvs_nn_ref_net *net);
void rvs_nn_ref_params(double *params, size_t count, unsigned seed);

static double gauss_rand(void)
{
    double u = test_uniform(1e-12, 1), v = test_uniform(0, 1);
    return sqrt(-2 * log(u)) * cos(2 * M_PI * v);
}

static double round_real(const struct engine_state *s, double x)
{
    return s->fp64 ? x : (double)(float)x;
}

/* ---------------------------------------------------------------- reference pieces */

/* Port of spliner.c construct() in long double: abcd[i*4 + 0..3] = A, B, C, D of interval i. */
static int ref_spline_construct(const double *xs, const double *ys, size_t N, long double *abcd)
{
    size_t N1 = N - 1, N2 = N - 2, N3 = N - 3;
    long double *w = malloc(7 * N * sizeof *w);
    if (!w)
        return RVS_ERR_NOMEM;
    long double *h = w, *hinv = w + N, *bs = w + 2 * N, *vs = w + 3 * N, *us = w + 4 * N;
    long double *ccd = w + 5 * N, *ddd = w + 6 * N, *zs = bs;
    for (size_t i = 0; i < N1; i++) {
        h[i] = (long double)xs[i + 1] - xs[i];
        hinv[i] = 1.0L / h[i];
        bs[i] = ((long double)ys[i + 1] - ys[i]) * hinv[i];
    }
    for (size_t i = 0; i < N2; i++) {
        vs[i] = 2 * (h[i + 1] + h[i]);
        us[i] = 6 * (bs[i + 1] - bs[i]);
    }
    const long double *cc = h + 1, *bb = vs, *dd = us;
    ccd[0] = N3 > 0 ? cc[0] / bb[0] : 0;
    for (size_t i = 1; i < N3; i++)
        ccd[i] = cc[i] / (bb[i] - cc[i - 1] * ccd[i - 1]);
    ddd[0] = dd[0] / bb[0];
    for (size_t i = 1; i < N2; i++)
        ddd[i] = (dd[i] - cc[i - 1] * ddd[i - 1]) / (bb[i] - cc[i - 1] * ccd[i - 1]);
    zs[N1] = 0;
    zs[0] = 0;
    zs[N2] = ddd[N3];
    for (size_t i = N3; i >= 1; i--)
        zs[i] = ddd[i - 1] - ccd[i - 1] * zs[i + 1];
    for (size_t i = 0; i < N1; i++) {
        long double tmp1 = hinv[i] / 6, tmp2 = h[i] / 6;
        abcd[4 * i + 0] = zs[i + 1] * tmp1;
        abcd[4 * i + 1] = zs[i] * tmp1;
        abcd[4 * i + 2] = ys[i + 1] * hinv[i] - zs[i + 1] * tmp2;
        abcd[4 * i + 3] = ys[i] * hinv[i] - zs[i] * tmp2;
    }
    free(w);
    return RVS_OK;
}

/* Port of spliner.c evaler() at x: NaN outside [xs[0], xs[N-1]). */
static long double ref_spline_eval(const double *xs, size_t N, const long double *abcd,
                                   long double x)
{
    if (!(x >= xs[0]) || !(x < xs[N - 1]))
        return NAN;
    long double u = (logl(x) - logl(xs[0])) / logl((long double)xs[1] / xs[0]);
    long pos = (long)u;
    pos = pos < 0 ? 0 : pos > (long)N - 2 ? (long)N - 2 : pos;
    while (pos > 0 && x < xs[pos])
        pos--;
    while (pos < (long)N - 2 && x > xs[pos + 1])
        pos++;
    long double dxl = x - xs[pos], dxr = xs[pos + 1] - x;
    const long double *c = abcd + 4 * pos;
    return c[0] * dxl * dxl * dxl + c[1] * dxr * dxr * dxr + c[2] * dxl + c[3] * dxr;
}

/* rvspecfit's convolve_vsini: 'same'-mode convolution with the kernel of width
 * R = (vsini/c)/lnstep pixels, in long double; a copy for vsini <= 0. */
static int ref_rotate(const double *in, size_t n, double vsini, double lnstep, double *out)
{
    double R = vsini > 0 ? vsini / (double)REF_C / lnstep : 0.0;
    size_t len = 0;
    rvs_rotation_weights(R, RVS_ROTATION_EPS, NULL, 0, &len);
    double *w = malloc(len * sizeof *w);
    if (!w)
        return RVS_ERR_NOMEM;
    int status = rvs_rotation_weights(R, RVS_ROTATION_EPS, w, len, &len);
    long km = (long)(len - 1) / 2;
    for (long i = 0; i < (long)n && status == RVS_OK; i++) {
        long double acc = 0;
        for (long d = -km; d <= km; d++)
            if (i - d >= 0 && i - d < (long)n)
                acc += (long double)w[km + d] * in[i - d];
        out[i] = (double)acc;
    }
    free(w);
    return status;
}

/* get_chisq0 for one model of one spectrum and arm, long double; fills coef and best. */
static long double ref_chisq(const struct arm_case *c, size_t sp, const double *model,
                             long double *coef, double *best)
{
    size_t n = c->n, np = c->np;
    long double g[32 * 32] = {0}, b[32] = {0}, L[32 * 32] = {0}, y[32];
    const double *f = c->spec + sp * n, *sg = c->espec + sp * n;
    long double logsig = 0;
    for (size_t i = 0; i < n; i++) {
        long double t = (long double)model[i] / sg[i], d = (long double)f[i] / sg[i];
        for (size_t j = 0; j < np; j++) {
            long double sj = t * c->basis[j * n + i];
            b[j] += sj * d;
            for (size_t k = 0; k <= j; k++)
                g[j * np + k] += sj * t * c->basis[k * n + i];
        }
        logsig += 2 * logl(sg[i]);
    }
    long double logdet = 0;
    for (size_t j = 0; j < np; j++) {
        for (size_t k = 0; k <= j; k++) {
            long double v = g[j * np + k];
            for (size_t q = 0; q < k; q++)
                v -= L[j * np + q] * L[k * np + q];
            if (j == k) {
                if (!(v > 0))
                    return INFINITY;
                L[j * np + j] = sqrtl(v);
                logdet += 2 * logl(L[j * np + j]);
            } else {
                L[j * np + k] = v / L[k * np + k];
            }
        }
    }
    for (size_t j = 0; j < np; j++) {
        long double v = b[j];
        for (size_t q = 0; q < j; q++)
            v -= L[j * np + q] * y[q];
        y[j] = v / L[j * np + j];
    }
    for (size_t j = np; j-- > 0;) {
        long double v = y[j];
        for (size_t q = j + 1; q < np; q++)
            v -= L[q * np + j] * coef[q];
        coef[j] = v / L[j * np + j];
    }
    long double res = 0;
    for (size_t i = 0; i < n; i++) {
        long double cont = 0;
        for (size_t j = 0; j < np; j++)
            cont += coef[j] * c->basis[j * n + i];
        long double m = model[i] * cont;
        if (best)
            best[i] = (double)m;
        long double r = ((long double)f[i] - m) / sg[i];
        res += r * r;
    }
    return logdet + logsig + res;
}

/* Template (after rotation) -> model at the data pixels for velocity v (rounded as the device
 * rounds it), with spectrum sp's resolution matrix when the arm has one. */
static int ref_model(const struct engine_state *s, const struct arm_case *c,
                     const long double *abcd, double v, size_t sp, double *work, double *out)
{
    long double b = (long double)round_real(s, v) / REF_C;
    long double fac = sqrtl((1 - b) / (1 + b));
    double *m = c->ndiag ? work : out;
    for (size_t i = 0; i < c->n; i++)
        m[i] = (double)ref_spline_eval(c->twave_dev, c->tn, abcd, c->dwave_dev[i] * fac);
    if (c->ndiag)
        rvs_resolution_apply_host(c->rdata + sp * c->ndiag * c->n, c->ndiag, c->n, m, out);
    return RVS_OK;
}

/* NN templates (rvs_real, widened) of `count` theta rows for arm c, via rvs_nn_forward. */
static int nn_templates(struct rvs_context *ctx, const struct engine_state *s,
                        const struct arm_case *c, const double *theta, size_t count, double *out)
{
    int status = RVS_OK;
    cl_mem dp = NULL, dout = NULL;
    void *h = malloc(count * c->tn * s->es + count * NPARAM * s->es);
    if (!h)
        return RVS_ERR_NOMEM;
    for (size_t i = 0; i < count * NPARAM; i++) {
        if (s->fp64)
            ((double *)h)[i] = theta[i];
        else
            ((float *)h)[i] = (float)theta[i];
    }
    status = rvs_buffer_create(ctx, CL_MEM_READ_ONLY, count * NPARAM * s->es, h, &dp);
    if (status == RVS_OK)
        status = rvs_buffer_create(ctx, CL_MEM_READ_WRITE, count * c->tn * s->es, NULL, &dout);
    if (status == RVS_OK)
        status = rvs_nn_forward(ctx, c->nn, dp, count, dout, RVS_NN_FLUX_REAL);
    if (status == RVS_OK)
        status = rvs_buffer_read(ctx, dout, 0, count * c->tn * s->es, h);
    for (size_t i = 0; i < count * c->tn && status == RVS_OK; i++)
        out[i] = s->fp64 ? ((double *)h)[i] : (double)((float *)h)[i];
    rvs_buffer_release(&dp);
    rvs_buffer_release(&dout);
    free(h);
    return status;
}

/* ---------------------------------------------------------------- scenario */

/* With $RVSFIT_ENGINE_PROFILE set, the engine profiles its stages and the routine prints them
 * when the case ends (for benchmarks/bench_kernels: where an evaluation's time goes). */
static void print_profile(const struct engine_state *s)
{
    struct rvs_engine_stats st;
    rvs_engine_stats_get(s->engine, &st);
    printf("# engine profile: %llu calls, %llu requests, %llu unique theta, %llu templates, "
           "%llu chunks, %.3f s in calls; per call: %.0f bytes in, %.0f bytes out\n",
           st.evals, st.requests, st.unique_theta, st.unique_templates, st.chunks,
           st.total_seconds, (double)st.bytes_in / (double)st.evals,
           (double)st.bytes_out / (double)st.evals);
    for (int k = 0; k < RVS_ENGINE_NSTAGES; k++)
        printf("#   %-13s %6.2f device calls/eval %8.2f ms/eval\n", rvs_engine_stage_name(k),
               (double)st.calls[k] / (double)st.evals, 1e3 * st.seconds[k] / (double)st.evals);
}

static void engine_destroy_state(void *p)
{
    struct engine_state *s = p;
    if (s->engine && getenv("RVSFIT_ENGINE_PROFILE"))
        print_profile(s);
    rvs_engine_destroy(&s->engine);
    for (size_t a = 0; a < NARM_MAX; a++) {
        struct arm_case *c = &s->arms[a];
        rvs_nn_destroy(&c->nn);
        rvs_nn_ref_net_free(c->net);
        free(c->twave), free(c->twave_dev), free(c->dwave), free(c->dwave_dev), free(c->basis);
        free(c->spec), free(c->espec), free(c->rdata), free(c->models_dev), free(c->coeffs_dev);
    }
    free(s->used), free(s->req), free(s->group_of_req), free(s->gtheta), free(s->gvsini);
    free(s->gspec), free(s->ttheta), free(s->tvsini), free(s->tvel);
    free(s->chisq_total), free(s->chisq_arm);
    free(s);
}

/* A network whose log-flux is spectrum-like: pc components are smooth waves, the pc bias a
 * continuum with absorption lines (Gaussians in pixels). */
static int make_network(struct rvs_context *ctx, struct engine_state *s, struct arm_case *c,
                        size_t a)
{
    int desi = s->args.n == 1;
    size_t width = s->args.m ? s->args.m : 16, npc = desi ? 200 : 12;
    size_t nlayers = desi ? 2 : 1;
    c->net = rvs_nn_ref_net_create(nlayers, width, npc, c->tn, (s->flags & ENG_BN) ? 4 : 0,
                                   s->args.seed * 31 + (unsigned)a + 1);
    if (!c->net)
        return RVS_ERR_NOMEM;
    float *w = (float *)c->net->desc.pc.weight, *b = (float *)c->net->desc.pc.bias;
    double r = 0.3 / sqrt((double)npc);
    for (size_t j = 0; j < npc; j++) {
        double om = 2 * M_PI / test_uniform(8, 300), ph = test_uniform(0, 6.3);
        for (size_t i = 0; i < c->tn; i++)
            w[i * npc + j] = (float)(r * cos(om * (double)i + ph));
    }
    for (size_t i = 0; i < c->tn; i++)
        b[i] = (float)(-0.1 + 0.05 * sin((double)i / 400.0));
    size_t nline = c->tn / 25 + 1;
    for (size_t l = 0; l < nline; l++) {
        double cen = test_uniform(0, (double)c->tn), wid = test_uniform(1.2, 4);
        double depth = test_uniform(0.05, 0.9);
        long lo = (long)(cen - 6 * wid), hi = (long)(cen + 6 * wid);
        for (long i = lo < 0 ? 0 : lo; i <= hi && i < (long)c->tn; i++) {
            double d = ((double)i - cen) / wid;
            b[i] -= (float)(depth * exp(-0.5 * d * d));
        }
    }
    return rvs_nn_create(ctx, &c->net->desc, &c->nn);
}

static const double small_d0[NARM_MAX] = {3600, 5800, 7600};
static const size_t small_n[NARM_MAX] = {500, 375, 625};
static const double small_lnstep[NARM_MAX] = {1e-4, 8e-5, 1.2e-4};
static const double desi_d0[NARM_MAX] = {3600, 5760, 7520};
static const size_t desi_n[NARM_MAX] = {2751, 2326, 2881};
static const size_t arm_ndiag[NARM_MAX] = {11, 9, 11};
static const size_t arm_npoly[NARM_MAX] = {10, 10, 8};
#define TEMPLATE_MARGIN 0.005 /* ln-wavelength margin each side: 1500 km/s */
#define DESI_TEMPLATE_NPIX 6000

static int make_arm(struct rvs_context *ctx, struct engine_state *s, struct arm_case *c,
                    size_t a, size_t slot)
{
    int desi = s->args.n == 1;
    c->d0 = desi ? desi_d0[slot] : small_d0[slot];
    c->n = desi ? desi_n[slot] : small_n[slot];
    c->np = arm_npoly[slot];
    c->ndiag = (s->flags & ENG_RES) ? arm_ndiag[slot] : 0;
    double d1 = c->d0 + 0.8 * (double)(c->n - 1);
    double span = log(d1 / c->d0) + 2 * TEMPLATE_MARGIN;
    c->lnstep = desi ? span / (DESI_TEMPLATE_NPIX - 1) : small_lnstep[slot];
    c->tn = (size_t)ceil(span / c->lnstep) + 1;
    c->twave = malloc(c->tn * sizeof(double));
    c->twave_dev = malloc(c->tn * sizeof(double));
    c->dwave = malloc(c->n * sizeof(double));
    c->dwave_dev = malloc(c->n * sizeof(double));
    c->basis = malloc(c->np * c->n * sizeof(double));
    if (!c->twave || !c->twave_dev || !c->dwave || !c->dwave_dev || !c->basis)
        return RVS_ERR_NOMEM;
    for (size_t i = 0; i < c->tn; i++) {
        c->twave[i] = exp(log(c->d0) - TEMPLATE_MARGIN + (double)i * c->lnstep);
        c->twave_dev[i] = round_real(s, c->twave[i]);
    }
    for (size_t i = 0; i < c->n; i++) {
        c->dwave[i] = c->d0 + 0.8 * (double)i;
        c->dwave_dev[i] = round_real(s, c->dwave[i]);
    }
    int status = rvs_chisq_basis(c->dwave, c->n, c->np, 1, c->basis);
    if (status == RVS_OK)
        status = make_network(ctx, s, c, a);
    return status;
}

/* Random banded resolution matrices: Gaussian rows of varying width, junk in the padding. */
static void make_resolution(struct arm_case *c, size_t S)
{
    size_t n = c->n, nd = c->ndiag;
    long h = (long)nd / 2;
    for (size_t sp = 0; sp < S; sp++) {
        float *R = c->rdata + sp * nd * n;
        for (size_t k = 0; k < nd * n; k++)
            R[k] = (float)test_uniform(-1, 1); /* padding stays junk */
        double ph = test_uniform(0, 6.3);
        for (long i = 0; i < (long)n; i++) {
            double sig = 0.9 + 0.3 * sin((double)i / 150.0 + ph), sum = 0;
            for (long d = -h; d <= h; d++)
                if (i + d >= 0 && i + d < (long)n)
                    sum += exp(-0.5 * (double)(d * d) / (sig * sig));
            for (long d = -h; d <= h; d++) {
                long j = i + d;
                if (j < 0 || j >= (long)n)
                    continue;
                R[(size_t)(h - d) * n + (size_t)j] =
                    (float)(exp(-0.5 * (double)(d * d) / (sig * sig)) / sum);
            }
        }
    }
}

/* Reference model of one group's template at velocity v for spectrum sp (templates built on the
 * fly: rotation, spline). Used for the data and for checking. */
struct group_ref {
    double *tmpl, *rot, *work;
    long double *abcd;
};

static int group_ref_alloc(struct group_ref *r, size_t tn, size_t n)
{
    r->tmpl = malloc(tn * sizeof(double));
    r->rot = malloc(tn * sizeof(double));
    r->work = malloc(n * sizeof(double));
    r->abcd = malloc(4 * tn * sizeof(long double));
    return r->tmpl && r->rot && r->work && r->abcd ? RVS_OK : RVS_ERR_NOMEM;
}

static void group_ref_free(struct group_ref *r)
{
    free(r->tmpl), free(r->rot), free(r->work), free(r->abcd);
}

static int make_data(struct rvs_context *ctx, struct engine_state *s)
{
    int status = RVS_OK;
    size_t S = s->S;
    const double *theta = s->ttheta;
    double *tm = NULL;
    for (size_t a = 0; a < s->narm && status == RVS_OK; a++) {
        struct arm_case *c = &s->arms[a];
        size_t n = c->n;
        struct group_ref r = {0};
        double *model = malloc(n * sizeof(double));
        tm = malloc(S * c->tn * sizeof(double));
        c->spec = malloc(S * n * sizeof(double));
        c->espec = malloc(S * n * sizeof(double));
        if (c->ndiag)
            c->rdata = malloc(S * c->ndiag * n * sizeof(float));
        status = group_ref_alloc(&r, c->tn, n);
        if (!model || !tm || !c->spec || !c->espec || (c->ndiag && !c->rdata))
            status = RVS_ERR_NOMEM;
        if (status == RVS_OK && c->ndiag)
            make_resolution(c, S);
        if (status == RVS_OK)
            status = nn_templates(ctx, s, c, theta, S, tm);
        for (size_t sp = 0; sp < S && status == RVS_OK; sp++) {
            status = ref_rotate(tm + sp * c->tn, c->tn, s->tvsini[sp], c->lnstep, r.rot);
            if (status == RVS_OK)
                status = ref_spline_construct(c->twave_dev, r.rot, c->tn, r.abcd);
            if (status == RVS_OK)
                status = ref_model(s, c, r.abcd, s->tvel[sp], sp, r.work, model);
            double snr = test_uniform(10, 80), level = test_uniform(20, 500);
            double ph = test_uniform(0, 6.3), med = 0;
            for (size_t i = 0; i < n; i++)
                med += model[i] / (double)n;
            for (size_t i = 0; i < n && status == RVS_OK; i++) {
                double cont = level * (1 + 0.3 * sin(c->dwave[i] / 300 + ph));
                double m = model[i] * cont;
                double sig = cont * (0.5 * model[i] + 0.5 * med) / snr;
                if (test_uniform(0, 1) < 0.01)
                    sig *= 1000; /* masked, as rvspecfit's preparation leaves it */
                c->spec[sp * n + i] = m + sig * gauss_rand();
                c->espec[sp * n + i] = sig;
            }
        }
        group_ref_free(&r);
        free(model);
        free(tm);
        tm = NULL;
    }
    return status;
}

static void shuffle(struct engine_state *s)
{
    for (size_t e = s->E; e > 1; e--) {
        size_t j = (size_t)(test_uniform(0, 1) * (double)e) % e;
        struct rvs_engine_request t = s->req[e - 1];
        s->req[e - 1] = s->req[j];
        s->req[j] = t;
        size_t g = s->group_of_req[e - 1];
        s->group_of_req[e - 1] = s->group_of_req[j];
        s->group_of_req[j] = g;
    }
}

static int make_requests(struct engine_state *s)
{
    size_t E = s->E, G = s->G, nv = s->nv;
    s->req = malloc(E * sizeof *s->req);
    s->group_of_req = malloc(E * sizeof *s->group_of_req);
    s->gtheta = malloc(G * NPARAM * sizeof(double));
    s->gvsini = malloc(G * sizeof(double));
    s->gspec = malloc(G * sizeof(int));
    if (!s->req || !s->group_of_req || !s->gtheta || !s->gvsini || !s->gspec)
        return RVS_ERR_NOMEM;
    /* truth per spectrum; groups sit near their spectrum's truth (as a fit does), except with
     * ENG_SHARED, where theta comes from a pool shared by all spectra (mostly bad fits) */
    size_t S = s->S, pool = G / 4 ? G / 4 : 1;
    static const double vsini_cycle[4] = {0, 5, 50, 200};
    s->ttheta = malloc(S * NPARAM * sizeof(double));
    s->tvsini = malloc(S * sizeof(double));
    s->tvel = malloc(S * sizeof(double));
    if (!s->ttheta || !s->tvsini || !s->tvel)
        return RVS_ERR_NOMEM;
    rvs_nn_ref_params(s->ttheta, S, s->args.seed + 5);
    rvs_nn_ref_params(s->gtheta, G, s->args.seed + 17);
    for (size_t sp = 0; sp < S; sp++) {
        s->tvsini[sp] = (s->flags & ENG_VSINI) ? vsini_cycle[sp % 4] : 0.0;
        s->tvel[sp] = test_uniform(-200, 200);
    }
    for (size_t g = 0; g < G; g++) {
        size_t sp = g % S;
        s->gspec[g] = (int)sp;
        s->gvsini[g] = s->tvsini[sp];
        double *th = s->gtheta + g * NPARAM;
        if ((s->flags & ENG_TWOVSINI) && (g & 1)) {
            memcpy(th, th - NPARAM, NPARAM * sizeof(double));
            s->gvsini[g] = s->gvsini[g - 1] > 0 ? 0.0 : 50.0;
            s->gspec[g] = s->gspec[g - 1];
        } else if (s->flags & ENG_SHARED) {
            memcpy(th, s->gtheta + (g % pool) * NPARAM, NPARAM * sizeof(double));
        } else {
            const double *t = s->ttheta + sp * NPARAM;
            int exact = g < S;
            th[0] = t[0] * (1 + (exact ? 0 : test_uniform(-0.02, 0.02)));
            th[1] = t[1] + (exact ? 0 : test_uniform(-0.1, 0.1));
            th[2] = t[2] + (exact ? 0 : test_uniform(-0.1, 0.1));
            th[3] = t[3] + (exact ? 0 : test_uniform(-0.05, 0.05));
        }
    }
    for (size_t e = 0; e < E; e++) {
        size_t g = e / nv, j = e % nv;
        struct rvs_engine_request *q = &s->req[e];
        double v0 = s->tvel[s->gspec[g]];
        /* scans: +-30 km/s around the truth, or the whole +-400 km/s for long ones */
        double half = nv >= 100 ? 400.0 : 30.0;
        q->spectrum = s->gspec[g];
        q->teff = s->gtheta[g * NPARAM + 0];
        q->logg = s->gtheta[g * NPARAM + 1];
        q->feh = s->gtheta[g * NPARAM + 2];
        q->alpha = s->gtheta[g * NPARAM + 3];
        q->vsini = s->gvsini[g];
        q->vrad = nv > 1 ? v0 - half + 2 * half * (double)j / (double)(nv - 1) + 0.37
                         : v0 + test_uniform(-20, 20);
        if (nv >= 100)
            q->vrad = -half + 2 * half * (double)j / (double)(nv - 1) + 0.37;
        if ((s->flags & ENG_OUTSIDE) && e % 97 == 13)
            q->vrad = (e & 1) ? 5000.0 : -5000.0;
        s->group_of_req[e] = g;
    }
    shuffle(s);
    return RVS_OK;
}

static int engine_setup(struct rvs_context *ctx, const struct rvs_routine_args *args, void **out)
{
    struct engine_state *s = calloc(1, sizeof *s);
    if (!s)
        return RVS_ERR_NOMEM;
    *out = s;
    s->args = *args;
    s->fp64 = ctx->use_fp64;
    s->es = rvs_context_real_size(ctx);
    s->flags = (int)args->param;
    s->nv = (size_t)(s->flags & ENG_NV_MASK) ? (size_t)(s->flags & ENG_NV_MASK) : 1;
    s->E = args->batch;
    s->S = args->k ? args->k : 1;
    s->G = (s->E + s->nv - 1) / s->nv;
    s->narm = (s->flags & ENG_TWOARMS) ? 2 : 3;
    test_rng_state = 0xe1e1e1e1ULL + args->seed * 7919ULL + args->batch * 31 + args->k;
    int status = make_requests(s);
    struct rvs_engine_arm_config cfg[NARM_MAX];
    static const char *names[NARM_MAX] = {"b", "r", "z"};
    for (size_t a = 0; a < s->narm && status == RVS_OK; a++) {
        size_t slot = (s->flags & ENG_TWOARMS) && a == 1 ? 2 : a;
        struct arm_case *c = &s->arms[a];
        status = make_arm(ctx, s, c, a, slot);
        cfg[a] = (struct rvs_engine_arm_config){
            .name = names[slot], .nn = c->nn, .template_wave = c->twave,
            .template_npix = c->tn, .template_lnstep = c->lnstep, .data_wave = c->dwave,
            .data_npix = c->n, .npoly = c->np, .rbf = 1, .ndiag = c->ndiag};
    }
    if (status == RVS_OK)
        status = make_data(ctx, s);
    s->used = malloc(s->S * s->narm);
    s->chisq_total = malloc(s->E * sizeof(double));
    s->chisq_arm = malloc(s->E * s->narm * sizeof(double));
    if (!s->used || !s->chisq_total || !s->chisq_arm)
        return RVS_ERR_NOMEM;
    memset(s->used, 1, s->S * s->narm);
    if (s->flags & ENG_MISSING) {
        if (s->S > 1)
            s->used[1 * s->narm + 1] = 0;
        if (s->S > 2)
            s->used[(s->S - 1) * s->narm + 0] = 0;
    }
    if (status == RVS_OK)
        status = rvs_engine_create(ctx, cfg, s->narm, &s->engine);
    const double *spec[NARM_MAX], *espec[NARM_MAX];
    const float *res[NARM_MAX];
    for (size_t a = 0; a < s->narm; a++) {
        spec[a] = s->arms[a].spec;
        espec[a] = s->arms[a].espec;
        res[a] = s->arms[a].rdata;
    }
    if (status == RVS_OK)
        status = rvs_engine_set_data(s->engine, s->S, spec, espec, res, s->used);
    if (status == RVS_OK && getenv("RVSFIT_ENGINE_PROFILE"))
        rvs_engine_set_profiling(s->engine, 1);
    for (size_t a = 0; a < s->narm && status == RVS_OK && (s->flags & ENG_MODELS); a++) {
        struct arm_case *c = &s->arms[a];
        c->models_dev = malloc(s->E * c->n * sizeof(double));
        c->coeffs_dev = malloc(s->E * c->np * sizeof(double));
        if (!c->models_dev || !c->coeffs_dev)
            status = RVS_ERR_NOMEM;
    }
    return status;
}

static int engine_run(struct rvs_context *ctx, void *p)
{
    struct engine_state *s = p;
    (void)ctx;
    if (s->flags & ENG_MODELS) {
        double *models[NARM_MAX], *coeffs[NARM_MAX];
        for (size_t a = 0; a < s->narm; a++) {
            models[a] = s->arms[a].models_dev;
            coeffs[a] = s->arms[a].coeffs_dev;
        }
        return rvs_engine_models(s->engine, s->req, s->E, s->chisq_total, s->chisq_arm, models,
                                 coeffs);
    }
    return rvs_engine_eval(s->engine, s->req, s->E, s->chisq_total, s->chisq_arm);
}

/* Error of one chi^2 value against the reference: relative (fp64) or absolute (fp32); a
 * non-finite reference needs a non-finite device value. */
static double chisq_error(const struct engine_state *s, double got, long double ref)
{
    if (!isfinite((double)ref))
        return isfinite(got) ? INFINITY : 0;
    if (!isfinite(got))
        return INFINITY;
    double e = fabs(got - (double)ref);
    return s->fp64 ? e / fabs((double)ref) : e;
}

static int engine_reference(struct rvs_context *ctx, void *p)
{
    struct engine_state *s = p;
    int status = RVS_OK;
    struct rvs_engine_routine_errors *r = &rvs_engine_routine_last;
    memset(r, 0, sizeof *r);
    size_t narm = s->narm, E = s->E;
    /* at large sizes check a spread subset of the requests */
    double work = (double)E * (double)(s->arms[0].n + s->arms[1].n + s->arms[2].n);
    size_t stride = work > 4e6 ? (size_t)(work / 4e6) + 1 : 1;
    /* The NN rows exactly as the engine batches them in one pass: every unique theta in the
     * order of first appearance among the requests (float32 GEMM rows are reproducible only
     * for the same batch: OpenBLAS rounds a row differently by ~1 ulp with other rows beside
     * it). gsel[g] = 1 + the NN row of group g's theta, for the groups checked. */
    size_t *gsel = calloc(s->G, sizeof *gsel), *row_of_group = calloc(s->G, sizeof(size_t));
    double *theta = malloc(s->G * NPARAM * sizeof(double));
    if (!gsel || !theta || !row_of_group) {
        free(gsel), free(theta), free(row_of_group);
        return RVS_ERR_NOMEM;
    }
    size_t ng = 0;
    for (size_t e = 0; e < E; e++) {
        size_t g = s->group_of_req[e];
        if (row_of_group[g])
            continue;
        size_t row = ng;
        for (size_t t = 0; t < ng; t++)
            if (memcmp(theta + t * NPARAM, s->gtheta + g * NPARAM, NPARAM * sizeof(double)) ==
                0) {
                row = t;
                break;
            }
        if (row == ng)
            memcpy(theta + ng++ * NPARAM, s->gtheta + g * NPARAM, NPARAM * sizeof(double));
        row_of_group[g] = row + 1;
    }
    for (size_t e = 0; e < E; e += stride)
        gsel[s->group_of_req[e]] = row_of_group[s->group_of_req[e]];
    free(row_of_group);
    /* the scenario's own dedup counts, for the test */
    {
        size_t ut = 0, uv = 0;
        for (size_t g = 0; g < s->G; g++) {
            int new_t = 1, new_v = 1;
            for (size_t h = 0; h < g; h++) {
                int same = memcmp(s->gtheta + h * NPARAM, s->gtheta + g * NPARAM,
                                  NPARAM * sizeof(double)) == 0;
                new_t &= !same;
                new_v &= !(same && s->gvsini[h] == s->gvsini[g]);
            }
            ut += new_t;
            uv += new_v;
        }
        r->unique_theta = ut;
        r->unique_templates = uv;
    }
    long double *tot = malloc(E * sizeof *tot);
    if (!tot) {
        free(gsel), free(theta);
        return RVS_ERR_NOMEM;
    }
    for (size_t e = 0; e < E; e++)
        tot[e] = 0;
    double err = 0;
    for (size_t a = 0; a < narm && status == RVS_OK; a++) {
        struct arm_case *c = &s->arms[a];
        size_t n = c->n, np = c->np;
        struct group_ref gr = {0};
        double *tm = malloc(ng * c->tn * sizeof(double)), *model = malloc(n * sizeof(double));
        double *best = malloc(n * sizeof(double));
        long double coef[32];
        status = group_ref_alloc(&gr, c->tn, n);
        if (!tm || !model || !best)
            status = RVS_ERR_NOMEM;
        if (status == RVS_OK)
            status = nn_templates(ctx, s, c, theta, ng, tm);
        /* group by group, so each group's spline is built once */
        for (size_t g = 0; g < s->G && status == RVS_OK; g++) {
            if (!gsel[g])
                continue;
            int have = 0;
            for (size_t e = 0; e < E && status == RVS_OK; e += stride) {
                if (s->group_of_req[e] != g)
                    continue;
                const struct rvs_engine_request *q = &s->req[e];
                size_t sp = (size_t)q->spectrum;
                if (!s->used[sp * narm + a]) {
                    if (s->chisq_arm[e * narm + a] != 0)
                        r->missing_nonzero++;
                    continue;
                }
                if (!have) {
                    status = ref_rotate(tm + (gsel[g] - 1) * c->tn, c->tn, q->vsini, c->lnstep,
                                        gr.rot);
                    if (status == RVS_OK)
                        status = ref_spline_construct(c->twave_dev, gr.rot, c->tn, gr.abcd);
                    have = 1;
                }
                ref_model(s, c, gr.abcd, q->vrad, sp, gr.work, model);
                long double ref = ref_chisq(c, sp, model, coef, best);
                int finite = 1;
                for (size_t i = 0; i < n; i++)
                    finite &= isfinite(model[i]);
                if (!finite)
                    ref = NAN;
                tot[e] += ref;
                double ee = chisq_error(s, s->chisq_arm[e * narm + a], ref);
                err = fmax(err, ee);
                if ((s->flags & ENG_MODELS) && finite) {
                    double mmax = 0, dmax = 0;
                    const double *dm = c->models_dev + e * n;
                    for (size_t i = 0; i < n; i++) {
                        mmax = fmax(mmax, fabs(best[i]));
                        dmax = fmax(dmax, fabs(dm[i] - best[i]));
                    }
                    r->model = fmax(r->model, mmax > 0 ? dmax / mmax : dmax);
                    long double num = 0, den = 0;
                    const double *sg = c->espec + sp * n;
                    for (size_t i = 0; i < n; i++) {
                        long double dc = 0, cc = 0;
                        for (size_t j = 0; j < np; j++) {
                            dc += ((long double)c->coeffs_dev[e * np + j] - coef[j]) *
                                  c->basis[j * n + i];
                            cc += fabsl(coef[j] * c->basis[j * n + i]);
                        }
                        num += powl(model[i] * dc / sg[i], 2);
                        den += powl(model[i] * cc / sg[i], 2);
                    }
                    r->coeff = fmax(r->coeff, den > 0 ? (double)sqrtl(num / den) : 0);
                }
            }
        }
        group_ref_free(&gr);
        free(tm), free(model), free(best);
    }
    for (size_t e = 0; e < E && status == RVS_OK; e += stride) {
        r->checked++;
        if (!isfinite((double)tot[e]))
            r->nonfinite_ref++;
        if (isfinite((double)tot[e]) != isfinite(s->chisq_total[e]))
            r->nonfinite_mismatch++;
        err = fmax(err, chisq_error(s, s->chisq_total[e], tot[e]));
    }
    if (r->missing_nonzero)
        err = INFINITY;
    free(tot);
    free(gsel);
    free(theta);
    r->chisq = err;
    s->err = err;
    return status;
}

static double engine_max_error(void *p) { return ((struct engine_state *)p)->err; }

/* ---------------------------------------------------------------- counts for the benchmark */

struct shape {
    size_t narm, n[NARM_MAX], tn[NARM_MAX], G, Uth, Ut, width, npc, nlayers, ndiag;
};

static struct shape shape_of(const struct rvs_routine_args *a)
{
    struct shape sh = {0};
    int flags = (int)a->param, desi = a->n == 1;
    size_t nv = (size_t)(flags & ENG_NV_MASK) ? (size_t)(flags & ENG_NV_MASK) : 1;
    sh.narm = (flags & ENG_TWOARMS) ? 2 : 3;
    for (size_t i = 0; i < sh.narm; i++) {
        size_t slot = (flags & ENG_TWOARMS) && i == 1 ? 2 : i;
        sh.n[i] = desi ? desi_n[slot] : small_n[slot];
        sh.tn[i] = desi ? DESI_TEMPLATE_NPIX : 2 * sh.n[i];
    }
    sh.G = (a->batch + nv - 1) / nv;
    sh.Ut = (flags & ENG_SHARED) ? (sh.G / 4 ? sh.G / 4 : 1) : sh.G;
    sh.Uth = (flags & ENG_TWOVSINI) ? (sh.Ut + 1) / 2 : sh.Ut;
    sh.width = a->m ? a->m : 16;
    sh.npc = desi ? 200 : 12;
    sh.nlayers = desi ? 2 : 1;
    sh.ndiag = (flags & ENG_RES) ? 11 : 0;
    return sh;
}

static double engine_flops(const struct rvs_routine_args *a)
{
    struct shape sh = shape_of(a);
    double f = 0, E = (double)a->batch;
    for (size_t i = 0; i < sh.narm; i++) {
        double n = (double)sh.n[i], tn = (double)sh.tn[i], w = (double)sh.width;
        double npc = (double)sh.npc, np = 10, npair = 55;
        f += 2 * (double)sh.Uth * (4 * w + (double)sh.nlayers * w * w + w * npc + npc * tn);
        f += (double)sh.Ut * tn * (2 * 25 + 20); /* rotation (~25 weights), spline build */
        f += E * n * (20 + 2 * (npair + np) + 2 * (double)sh.ndiag + 4 * np + 8);
    }
    return f;
}

static double engine_bytes(const struct rvs_routine_args *a)
{
    struct shape sh = shape_of(a);
    double b = 0, E = (double)a->batch, es = (double)a->real_size;
    for (size_t i = 0; i < sh.narm; i++) {
        b += es * (double)sh.Ut * (double)sh.tn[i] * 8; /* NN out, rotation, coefficients */
        b += es * E * (double)sh.n[i] * (sh.ndiag ? 8 : 6); /* model, chi^2 passes */
    }
    return b;
}

static double engine_evaluations(const struct rvs_routine_args *a) { return (double)a->batch; }

#define BENCH_FLAGS (ENG_VSINI)
static const struct rvs_routine_args engine_bench[] = {
    /* DESI: 256 spectra, 16 velocities x 256 theta; then 4096 distinct theta */
    {.batch = 4096, .n = 1, .m = 256, .k = 256, .param = 16 | BENCH_FLAGS},
    {.batch = 4096, .n = 1, .m = 256, .k = 256, .param = 1 | BENCH_FLAGS},
    /* with resolution matrices */
    {.batch = 4096, .n = 1, .m = 256, .k = 256, .param = 16 | BENCH_FLAGS | ENG_RES},
    {0}};

const struct rvs_routine rvs_routine_engine = {
    .name = "engine",
    .args_doc = "batch=E requests, n=0 small arms / 1 DESI arms, m=NN width, k=spectra, "
                "param=velocities per theta + flags (see tests/routines/engine.c)",
    .error_kind = "chi^2 rel(fp64)/abs(fp32)",
    .setup = engine_setup,
    .run = engine_run,
    .reference = engine_reference,
    .max_error = engine_max_error,
    .flops = engine_flops,
    .bytes = engine_bytes,
    .destroy = engine_destroy_state,
    .evaluations = engine_evaluations,
    .bench_cases = engine_bench,
};

/* The engine of the last setup, for tests/test_engine.c's extra checks (counters, chunking).
 * Valid between setup and destroy. */
struct rvs_engine *rvs_engine_routine_engine(void *state);
struct rvs_engine *rvs_engine_routine_engine(void *state)
{
    return ((struct engine_state *)state)->engine;
}

/* The device results of the last run: E, chisq_total (E) and chisq_arm (E x narms). */
void rvs_engine_routine_results(void *state, size_t *E, size_t *narm, const double **total,
                                const double **arm);
void rvs_engine_routine_results(void *state, size_t *E, size_t *narm, const double **total,
                                const double **arm)
{
    struct engine_state *s = state;
    *E = s->E;
    *narm = s->narm;
    *total = s->chisq_total;
    *arm = s->chisq_arm;
}

/* The requests of the scenario (the test perturbs copies of them). */
const struct rvs_engine_request *rvs_engine_routine_requests(void *state);
const struct rvs_engine_request *rvs_engine_routine_requests(void *state)
{
    return ((struct engine_state *)state)->req;
}

/* rvs_engine_continuum against the reference (a template of ones through the resolution
 * matrix, then get_chisq0): the largest chi^2 error (as max_error) and best-fit model error
 * (relative to each model's maximum); missing arms must give 0 and NaN models. */
int rvs_engine_routine_check_continuum(void *state, double *err_chisq, double *err_model);
int rvs_engine_routine_check_continuum(void *state, double *err_chisq, double *err_model)
{
    struct engine_state *s = state;
    int status = RVS_OK;
    size_t narm = s->narm, S = s->S;
    double *chisq = malloc(S * narm * sizeof *chisq), *models[NARM_MAX] = {0};
    double *coeffs[NARM_MAX] = {0};
    *err_chisq = *err_model = 0;
    for (size_t a = 0; a < narm; a++) {
        models[a] = malloc(S * s->arms[a].n * sizeof(double));
        coeffs[a] = malloc(S * s->arms[a].np * sizeof(double));
        if (!models[a] || !coeffs[a])
            status = RVS_ERR_NOMEM;
    }
    if (!chisq)
        status = RVS_ERR_NOMEM;
    if (status == RVS_OK)
        status = rvs_engine_continuum(s->engine, chisq, models, coeffs);
    for (size_t a = 0; a < narm && status == RVS_OK; a++) {
        struct arm_case *c = &s->arms[a];
        double *ones = malloc(c->n * sizeof(double)), *model = malloc(c->n * sizeof(double));
        double *best = malloc(c->n * sizeof(double));
        long double coef[32];
        if (!ones || !model || !best)
            status = RVS_ERR_NOMEM;
        for (size_t i = 0; i < c->n && status == RVS_OK; i++)
            ones[i] = 1;
        for (size_t sp = 0; sp < S && status == RVS_OK; sp++) {
            if (!s->used[sp * narm + a]) {
                if (chisq[sp * narm + a] != 0 || !isnan(models[a][sp * c->n]))
                    *err_chisq = INFINITY;
                continue;
            }
            if (c->ndiag)
                rvs_resolution_apply_host(c->rdata + sp * c->ndiag * c->n, c->ndiag, c->n, ones,
                                          model);
            else
                memcpy(model, ones, c->n * sizeof(double));
            long double ref = ref_chisq(c, sp, model, coef, best);
            *err_chisq = fmax(*err_chisq, chisq_error(s, chisq[sp * narm + a], ref));
            double mmax = 0, dmax = 0;
            for (size_t i = 0; i < c->n; i++) {
                mmax = fmax(mmax, fabs(best[i]));
                dmax = fmax(dmax, fabs(models[a][sp * c->n + i] - best[i]));
            }
            *err_model = fmax(*err_model, dmax / mmax);
        }
        free(ones), free(model), free(best);
    }
    for (size_t a = 0; a < narm; a++)
        free(models[a]), free(coeffs[a]);
    free(chisq);
    return status;
}

/* rvs_engine_set_errors against a fresh rvs_engine_set_data: the errors of every spectrum
 * scaled by a factor (1.5 on even pixels, 1 elsewhere), the same requests evaluated both ways;
 * *diff gets the largest |difference| of -2 log L (they must agree exactly: the same uploads
 * but the resolution matrices), then the original errors are restored. */
int rvs_engine_routine_check_set_errors(void *state, double *diff);
int rvs_engine_routine_check_set_errors(void *state, double *diff)
{
    struct engine_state *s = state;
    int status = RVS_OK;
    const double *spec[NARM_MAX], *espec[NARM_MAX], *espec0[NARM_MAX];
    const float *res[NARM_MAX];
    double *scaled[NARM_MAX] = {0}, *a = malloc(s->E * sizeof *a), *b = malloc(s->E * sizeof *b);
    *diff = INFINITY;
    for (size_t k = 0; k < s->narm; k++) {
        const struct arm_case *c = &s->arms[k];
        scaled[k] = malloc(s->S * c->n * sizeof(double));
        if (!scaled[k])
            status = RVS_ERR_NOMEM;
        for (size_t i = 0; scaled[k] && i < s->S * c->n; i++)
            scaled[k][i] = c->espec[i] * (i % 2 ? 1.0 : 1.5);
        spec[k] = c->spec;
        espec0[k] = c->espec;
        espec[k] = scaled[k];
        res[k] = c->rdata;
    }
    if (!a || !b)
        status = RVS_ERR_NOMEM;
    if (status == RVS_OK)
        status = rvs_engine_set_errors(s->engine, spec, espec);
    if (status == RVS_OK)
        status = rvs_engine_eval(s->engine, s->req, s->E, a, NULL);
    if (status == RVS_OK)
        status = rvs_engine_set_data(s->engine, s->S, spec, espec, res, s->used);
    if (status == RVS_OK)
        status = rvs_engine_eval(s->engine, s->req, s->E, b, NULL);
    if (status == RVS_OK) {
        *diff = 0;
        for (size_t e = 0; e < s->E; e++)
            if (isfinite(a[e]) || isfinite(b[e]))
                *diff = fmax(*diff, isfinite(a[e] - b[e]) ? fabs(a[e] - b[e]) : INFINITY);
        /* the scaling changed something: -2 log L holds 2 sum log sigma */
        if (s->E > 0 && a[0] == s->chisq_total[0])
            *diff = INFINITY;
    }
    if (status == RVS_OK)
        status = rvs_engine_set_data(s->engine, s->S, spec, espec0, res, s->used);
    for (size_t k = 0; k < s->narm; k++)
        free(scaled[k]);
    free(a);
    free(b);
    return status;
}
