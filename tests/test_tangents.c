/* test_tangents.c: the exact derivatives of the model template (issue 18): the NN emulator's
 * forward-mode tangents (rvs_nn_forward_tangent), the rotation kernel's derivative in vsini
 * (rvs_rotation_weights_dR, rvs_rotation_apply_rows_dvsini, direct and FFT paths) and the
 * spline evaluation's derivative in v (rvs_spline_eval_dv), in the default context (fp64 where
 * the device has it) and with forced fp32; then, when the default library is there, the chain
 * theta, vsini, v -> NN -> rotation -> spline at shifted wavelengths on its desi_r network.
 *
 * Every derivative is compared with a central finite difference of the EXISTING routines (the
 * value path) and, where cheap, with a plain-C reference. Errors are max |got - want| over a row
 * divided by the largest |want| of that row (a derivative's natural scale; per parameter for
 * the NN) unless a check says otherwise; every tolerance below says where it comes from, and
 * every check prints its max error. Step choice: a central difference of step h has truncation
 * ~h^2 |f'''| / 6 and rounding ~u |f| / h (u the noise of f), balanced at h ~ (3u)^(1/3) in the
 * variable's natural unit. */
#include <config.h>

#include <float.h>
#include <string.h>
#include <sys/stat.h>

#include "testutil.h"
#include "tolerances.h"

/* from tests/routines/nn.c */
struct rvs_nn_ref_net;
struct rvs_nn_ref_net *rvs_nn_ref_net_create(size_t nlayers, size_t width, size_t npc,
                                             size_t npix, int flags, unsigned seed);
void rvs_nn_ref_net_free(struct rvs_nn_ref_net *net);
void rvs_nn_ref_params(double *params, size_t count, unsigned seed);
#define NET_DESC(net) ((struct rvs_nn_desc *)(void *)(net))
enum { BN = 4, CLIP = 32 };

#define C_KMS RVS_SPEED_OF_LIGHT_KMS
#define LNSTEP 8e-5

/* ------------------------------------------------------------------ tolerances */

/* Reference maths checked against its own central differences in double: truncation of steps
 * ~1e-4 of the natural unit (~1e-8 relative) dominates. */
#define TOL_REF_FD 1e-6
/* Device NN tangents vs the double reference: float32 GEMMs, as for the values
 * (RVS_TOL_NN_FP32_REL); a tangent is a sum of terms of both signs at every layer, so its
 * relative rounding could exceed the values' by their cancellation, but on these networks it
 * stays below 1e-6 (measured <= 7.5e-7, fp64 and fp32). */
#define TOL_NN_TANGENT RVS_TOL_NN_FP32_REL
/* Device NN tangents vs central differences of rvs_nn_forward itself: the forward pass is float32
 * inside whatever rvs_real is, with noise u ~ 1e-6 of max(1, |log-flux|) (several roundings per
 * layer), so the best step is ~1e-2 in network-input units and the difference is good to
 * ~(3u)^(2/3) ~ 2e-4 of the row scale times max(1, max |log-flux|), by which the error is
 * divided (measured <= 5.1e-4 on the random networks): 2e-3. The chain check on the library
 * network uses the fourth-order difference (see check_chain); measured <= 1.4e-3 there. */
#define TOL_NN_FD 2e-3
/* Rotation weights' derivative vs the fourth-order central difference of rvs_rotation_weights,
 * step 1e-4 R. A weight is a difference of primitives times (1 + k) ~ R, so its rounding is
 * ~1e-16 R of O(1) while |dw| ~ 1/R^2: the relative rounding of a difference grows like R^3 / h,
 * and the edge weights (the hat meeting K's square-root edge) have large high derivatives, which
 * defeats the second-order difference at large R (measured 1.3e-7 at R = 57 at best); the
 * fourth order at 1e-4 R gives <= 1.5e-9: 1e-8 of the largest |dw|. */
#define TOL_DW_FD 1e-8
/* Device derivative paths vs the plain-C convolution with the same dweights, relative to
 * max|x| sum|dw| (the size of the terms: the kernel has both signs, so the result itself can be
 * much smaller than the terms): fp64 RVS_TOL_FP64_REL; fp32 RVS_TOL_FP32_REL direct,
 * RVS_TOL_ROTATION_FFT_FP32_REL through clFFT in float (as the values, tests/tolerances.h). */
/* fp64 device derivative vs central differences of rvs_rotation_apply in vsini (step 1e-5
 * vsini: truncation ~1e-10, rounding ~1e-16 / 1e-5): 1e-7. */
#define TOL_ROT_FD 1e-7
/* Spline d/dv vs central differences of rvs_spline_eval, fp64, step 1e-3 km/s (4e-5 of a
 * 24 km/s pixel: truncation (4e-5)^2 |S'''| ~ 1e-8 relative, rounding ~1e-16 x 24 / 1e-3): 1e-6. */
#define TOL_SPLINE_FD 1e-6
/* Spline d/dv vs the plain-C S'(x) dx/dv from the coefficients read back, relative to the row's
 * largest |S'(x) dx/dv|: fp64 RVS_TOL_FP64_REL; fp32 is a difference of four terms of size
 * ~|y|/h (3A dxl^2 - 3B dxr^2 + C - D, C and D large and close), each with a float rounding and
 * a float dxl: measured 2.4e-7 of the row's largest slope; 5e-6 allowed. */
#define TOL_SPLINE_FP32 5e-6
/* Chain on the default library (fp64): theta through the float32 NN as TOL_NN_FD (fourth-order
 * difference, step 3e-2 in network-input units: measured teff 2e-4 ... alpha 1.3e-3); vsini and v
 * through fp64 stages only (the NN row is the same on both sides of the difference) as
 * TOL_ROT_FD and TOL_SPLINE_FD. In fp32 only vsini and v are checked (theta's differences would
 * only measure the float network's noise again), with steps of 1e-2 vsini (half of it below one
 * pixel, where the model is linear in vsini) and 0.3 km/s: float noise ~6e-8 of the model over
 * a step gives ~1e-4 of a derivative (measured 1.1e-4): 1e-3. */
#define TOL_CHAIN_FP32 1e-3

/* ------------------------------------------------------------------ helpers */

static cl_mem upload(struct rvs_context *ctx, const double *x, size_t n)
{
    size_t es = rvs_context_real_size(ctx);
    void *host = malloc(n * es + 1);
    for (size_t i = 0; i < n; i++) {
        if (es == sizeof(float))
            ((float *)host)[i] = (float)x[i];
        else
            ((double *)host)[i] = x[i];
    }
    cl_mem buf = NULL;
    int status = rvs_buffer_create(ctx, CL_MEM_READ_WRITE, n * es, host, &buf);
    CHECK(status == RVS_OK, "upload of %zu reals: %s", n, rvs_strerror(status));
    free(host);
    return buf;
}

static cl_mem alloc_reals(struct rvs_context *ctx, size_t n)
{
    cl_mem buf = NULL;
    int status = rvs_buffer_create(ctx, CL_MEM_READ_WRITE, n * rvs_context_real_size(ctx), NULL,
                                   &buf);
    CHECK(status == RVS_OK, "alloc of %zu reals: %s", n, rvs_strerror(status));
    return buf;
}

/* Reads n elements of size es (rvs_real or float) into doubles. */
static void download(struct rvs_context *ctx, cl_mem buf, size_t n, size_t es, double *x)
{
    void *host = malloc(n * es + 1);
    int status = rvs_buffer_read(ctx, buf, 0, n * es, host);
    CHECK(status == RVS_OK, "read back: %s", rvs_strerror(status));
    for (size_t i = 0; i < n; i++)
        x[i] = es == sizeof(float) ? ((float *)host)[i] : ((double *)host)[i];
    free(host);
}

/* max |a - b| / max(|b|) over n values; NaN on either side (not both) is an infinite error */
static double row_error(const double *a, const double *b, size_t n)
{
    double err = 0, scale = 0;
    for (size_t i = 0; i < n; i++)
        scale = fmax(scale, fabs(b[i]));
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i]) && isnan(b[i]))
            continue;
        double d = fabs(a[i] - b[i]);
        err = isnan(d) ? INFINITY : fmax(err, d);
    }
    return scale > 0 ? err / scale : err;
}

static const char *prec(const struct rvs_context *ctx) { return ctx->use_fp64 ? "fp64" : "fp32"; }
static int is_cpu(const struct rvs_context *ctx)
{
    return (ctx->caps.type & CL_DEVICE_TYPE_CPU) != 0;
}

/* ------------------------------------------------------------------ NN: double reference */

/* Forward-mode in double on the UNFOLDED network (Linear -> SiLU -> BatchNorm, nn.h): val[npix]
 * the log-flux, tan[k * npix + j] its derivative in theta_k (may be NULL). */
static void ref_nn(const struct rvs_nn_desc *d, const double *theta, double *val, double *tan)
{
    size_t D = d->indim, P = 1 + D;
    size_t cols = d->width > d->npc ? d->width : d->npc;
    if (cols < D)
        cols = D;
    double *a = calloc(P * cols, sizeof *a), *b = calloc(P * cols, sizeof *b);
    for (size_t j = 0; j < D; j++) {
        double x = theta[j], S = d->map_scale[j];
        int lg = d->log_input[j];
        a[j] = ((lg ? log10(x) : x) - d->map_center[j]) / S;
        for (size_t k = 0; k < D; k++)
            a[(1 + k) * cols + j] = k == j ? (lg ? 1 / (S * x * M_LN10) : 1 / S) : 0;
    }
    size_t in = D;
    for (size_t l = 0; l < d->nlayers + 2; l++) {
        size_t out = l == d->nlayers + 1 ? d->npc : d->width;
        const float *w = d->lin[l].weight, *bias = d->lin[l].bias;
        for (size_t o = 0; o < out; o++) {
            double z = bias[o], dz[RVS_NN_MAX_INPUTS] = {0};
            for (size_t i = 0; i < in; i++) {
                z += w[o * in + i] * a[i];
                for (size_t k = 0; k < D; k++)
                    dz[k] += w[o * in + i] * a[(1 + k) * cols + i];
            }
            double s = 1 / (1 + exp(-z)), h = z * s, dh = s + h * (1 - s);
            double g = 1, c = 0;
            if (d->with_batchnorm && l >= 1 && l <= d->nlayers) {
                const struct rvs_nn_batchnorm *bn = &d->bn[l];
                g = bn->weight[o] / sqrt((double)bn->running_var[o] + bn->eps);
                c = bn->bias[o] - bn->running_mean[o] * g;
            }
            b[o] = g * h + c;
            for (size_t k = 0; k < D; k++)
                b[(1 + k) * cols + o] = g * dh * dz[k];
        }
        double *t = a;
        a = b, b = t;
        in = out;
    }
    for (size_t j = 0; j < d->npix; j++) {
        double z = d->pc.bias[j];
        for (size_t i = 0; i < d->npc; i++)
            z += d->pc.weight[j * d->npc + i] * a[i];
        val[j] = z;
        for (size_t k = 0; tan && k < D; k++) {
            double dz = 0;
            for (size_t i = 0; i < d->npc; i++)
                dz += d->pc.weight[j * d->npc + i] * a[(1 + k) * cols + i];
            tan[k * d->npix + j] = dz;
        }
    }
    free(a), free(b);
}

/* Step of parameter k for central differences: hu network-input units (u = map(theta)). */
static double nn_step(const struct rvs_nn_desc *d, const double *theta, size_t k, double hu)
{
    double S = fabs(d->map_scale[k]);
    return hu * S * (d->log_input[k] ? theta[k] * M_LN10 : 1);
}

/* ------------------------------------------------------------------ NN: device */

struct nn_case {
    size_t nlayers, width, npc, npix, count;
    int flags;
    unsigned seed;
};

/* The value rows of a tangent pass are rvs_nn_forward's, bit for bit on CPU devices (the
 * fixed-order GEMM rounds a row by itself), within RVS_TOL_ENGINE_REBATCH_REL elsewhere; a
 * vector alone gives the same rows as in the batch. */
static void nn_device_case(struct rvs_context *ctx, const struct rvs_nn_desc *d,
                           const double *params, size_t count, const char *name)
{
    size_t D = d->indim, P = 1 + D, npix = d->npix, es = rvs_context_real_size(ctx);
    struct rvs_nn *nn = NULL;
    int status = rvs_nn_create(ctx, d, &nn);
    CHECK(status == RVS_OK, "%s: rvs_nn_create: %s", name, rvs_strerror(status));
    if (status != RVS_OK)
        return;
    double *theta = malloc(count * D * sizeof *theta);
    for (size_t i = 0; i < count * D; i++) /* what the device sees */
        theta[i] = ctx->use_fp64 ? params[i] : (double)(float)params[i];
    cl_mem dp = upload(ctx, theta, count * D), dt = alloc_reals(ctx, P * count * npix);
    cl_mem dv = alloc_reals(ctx, count * npix), dt1 = alloc_reals(ctx, P * npix);
    double *tg = malloc(P * count * npix * sizeof *tg), *fw = malloc(count * npix * sizeof *fw);
    double *t1 = malloc(P * npix * sizeof *t1);
    double *rv = malloc(npix * sizeof *rv), *rt = malloc(D * npix * sizeof *rt);
    double *rp = malloc(npix * sizeof *rp), *rm = malloc(npix * sizeof *rm);
    double *fd = malloc(npix * sizeof *fd), *an = malloc(npix * sizeof *an);

    for (int kind = 0; kind < 2; kind++) {
        enum rvs_nn_output what = kind ? RVS_NN_FLUX_REAL : RVS_NN_LOGFLUX_F32;
        size_t oes = kind ? es : sizeof(float);
        const char *wname = kind ? "flux" : "log-flux";
        status = rvs_nn_forward_tangent(ctx, nn, dp, count, dt, what);
        CHECK(status == RVS_OK, "%s: tangent pass: %s", name, rvs_strerror(status));
        download(ctx, dt, P * count * npix, oes, tg);
        CHECK(rvs_nn_forward(ctx, nn, dp, count, dv, what) == RVS_OK, "%s: forward", name);
        download(ctx, dv, count * npix, oes, fw);
        /* value rows against rvs_nn_forward */
        size_t differ = 0;
        double verr = 0;
        for (size_t i = 0; i < count * npix; i++) {
            differ += memcmp(&tg[i], &fw[i], sizeof tg[i]) != 0;
            if (fw[i] != 0 || tg[i] != 0)
                verr = fmax(verr, fabs(tg[i] - fw[i]) / fmax(fabs(fw[i]), 1e-300));
        }
        if (is_cpu(ctx))
            CHECK(differ == 0, "%s %s %s: %zu value rows differ from rvs_nn_forward", name,
                  prec(ctx), wname, differ);
        else
            CHECK(verr <= RVS_TOL_ENGINE_REBATCH_REL, "%s: value rows off by %.3g", name, verr);
        /* the last vector alone */
        cl_mem dlast = upload(ctx, theta + (count - 1) * D, D);
        CHECK(rvs_nn_forward_tangent(ctx, nn, dlast, 1, dt1, what) == RVS_OK, "%s: alone", name);
        download(ctx, dt1, P * npix, oes, t1);
        size_t alone_differ = 0;
        double aerr = 0;
        for (size_t p = 0; p < P; p++)
            for (size_t j = 0; j < npix; j++) {
                double x = t1[p * npix + j], y = tg[(p * count + count - 1) * npix + j];
                alone_differ += memcmp(&x, &y, sizeof x) != 0;
                if (x != y)
                    aerr = fmax(aerr, fabs(x - y) / fmax(fabs(y), 1e-300));
            }
        if (is_cpu(ctx))
            CHECK(alone_differ == 0, "%s %s: %zu values of a vector alone differ from its batch",
                  name, wname, alone_differ);
        else
            CHECK(aerr <= RVS_TOL_ENGINE_REBATCH_REL, "%s: alone vs batch %.3g", name, aerr);
        rvs_buffer_release(&dlast);

        /* against the double reference and central differences of rvs_nn_forward; flux
         * tangents are compared as d flux / flux (a log-flux tangent), where the flux is not
         * clipped; where the reference clips, the tangent must be 0 */
        double err_ref = 0, err_fd = 0, err_rfd = 0;
        size_t clip_bad = 0;
        for (size_t e = 0; e < count; e++) {
            const double *th = theta + e * D;
            ref_nn(d, th, rv, rt);
            for (size_t k = 0; k < D; k++) {
                const double *g = tg + ((1 + k) * count + e) * npix, *f0 = tg + e * npix;
                double *want = rt + k * npix;
                for (size_t j = 0; j < npix; j++) {
                    /* +-300: the float network may sit either side of the clip; flux beyond
                     * 1e+-30 over- or underflows in fp32 */
                    int clipped = fabs(rv[j]) > 299 || (kind && !(f0[j] > 1e-30 && f0[j] < 1e30));
                    an[j] = kind ? g[j] / f0[j] : g[j];
                    if (clipped) {
                        if (fabs(rv[j]) > 301 && kind)
                            clip_bad += g[j] != 0;
                        an[j] = want[j] = 0;
                    }
                }
                err_ref = fmax(err_ref, row_error(an, want, npix));
                if (kind == 0) {
                    /* the reference against its own central difference (step 1e-4 in u) */
                    double tp[RVS_NN_MAX_INPUTS], h = nn_step(d, th, k, 1e-4);
                    memcpy(tp, th, D * sizeof *tp);
                    tp[k] = th[k] + h;
                    ref_nn(d, tp, rp, NULL);
                    tp[k] = th[k] - h;
                    ref_nn(d, tp, rm, NULL);
                    for (size_t j = 0; j < npix; j++)
                        fd[j] = fabs(rv[j]) > 299 ? 0 : (rp[j] - rm[j]) / (2 * h);
                    err_rfd = fmax(err_rfd, row_error(fd, want, npix));
                }
            }
        }
        /* central differences of the device's forward pass: step 1e-2 in u (see TOL_NN_FD),
         * only a few vectors (each costs two passes of the whole batch) */
        double *pp = malloc(count * D * sizeof *pp), *fp = malloc(count * npix * sizeof *fp);
        double *fm = malloc(count * npix * sizeof *fm);
        for (size_t k = 0; k < D; k++) {
            double hs[64];
            size_t nv = count < 64 ? count : 64;
            for (int sgn = -1; sgn <= 1; sgn += 2) {
                memcpy(pp, theta, count * D * sizeof *pp);
                for (size_t e = 0; e < nv; e++) {
                    double want_h = nn_step(d, theta + e * D, k, 1e-2), x = theta[e * D + k];
                    /* the step the device sees, rounded to rvs_real */
                    double xp = ctx->use_fp64 ? x + want_h : (double)(float)(x + want_h);
                    double xm = ctx->use_fp64 ? x - want_h : (double)(float)(x - want_h);
                    hs[e] = xp - xm;
                    pp[e * D + k] = sgn > 0 ? xp : xm;
                }
                cl_mem dpp = upload(ctx, pp, count * D);
                CHECK(rvs_nn_forward(ctx, nn, dpp, count, dv, what) == RVS_OK, "fd pass");
                download(ctx, dv, count * npix, oes, sgn > 0 ? fp : fm);
                rvs_buffer_release(&dpp);
            }
            for (size_t e = 0; e < nv; e++) {
                const double *g = tg + ((1 + k) * count + e) * npix;
                for (size_t j = 0; j < npix; j++) {
                    double a = fp[e * npix + j], b = fm[e * npix + j], f0 = tg[e * npix + j];
                    double deriv = (a - b) / hs[e];
                    int clipped = kind ? !(a > 1e-30 && a < 1e30 && b > 1e-30 && b < 1e30)
                                       : fabs(a) > 299 || fabs(b) > 299;
                    fd[j] = clipped ? 0 : kind ? deriv / f0 : deriv;
                    an[j] = clipped ? 0 : kind ? g[j] / f0 : g[j];
                }
                /* the forward pass's noise is relative to max(1, |log-flux|) (as
                 * RVS_TOL_NN_FP32_REL's scale): the error is divided by it */
                double lmax = 1;
                for (size_t j = 0; j < npix; j++) {
                    double f0 = tg[e * npix + j], lf = kind ? log(f0) : f0;
                    if (isfinite(lf))
                        lmax = fmax(lmax, fabs(lf));
                }
                err_fd = fmax(err_fd, row_error(an, fd, npix) / lmax);
            }
        }
        free(pp), free(fp), free(fm);
        printf("nn tangents %s %s %s: vs double reference %.3e (tol %.0e), vs central "
               "differences of rvs_nn_forward %.3e (tol %.0e)%s\n",
               name, prec(ctx), wname, err_ref, TOL_NN_TANGENT, err_fd, TOL_NN_FD,
               kind ? "" : "");
        if (kind == 0)
            printf("nn reference %s: tangent vs its own central differences %.3e (tol %.0e)\n",
                   name, err_rfd, TOL_REF_FD);
        CHECK(err_ref <= TOL_NN_TANGENT, "%s %s %s: tangents vs reference %.3g > %.1g", name,
              prec(ctx), wname, err_ref, TOL_NN_TANGENT);
        CHECK(err_fd <= TOL_NN_FD, "%s %s %s: tangents vs central differences %.3g > %.1g",
              name, prec(ctx), wname, err_fd, TOL_NN_FD);
        CHECK(kind || err_rfd <= TOL_REF_FD, "%s: reference tangent vs differences %.3g", name,
              err_rfd);
        CHECK(clip_bad == 0, "%s: %zu clipped flux pixels with a non-zero tangent", name,
              clip_bad);
    }
    rvs_buffer_release(&dp), rvs_buffer_release(&dt), rvs_buffer_release(&dv);
    rvs_buffer_release(&dt1);
    free(theta), free(tg), free(fw), free(t1), free(rv), free(rt), free(rp), free(rm);
    free(fd), free(an);
    rvs_nn_destroy(&nn);
}

static void check_nn(struct rvs_context *ctx)
{
    static const struct nn_case cases[] = {
        {0, 8, 5, 7, 1, 0, 1},
        {1, 16, 8, 37, 13, BN, 2},
        {2, 33, 11, 101, 29, BN, 3},
        {2, 24, 9, 301, 7, BN | CLIP, 4}, /* pixels clipped at +-300: tangent 0 there */
        {2, 64, 20, 250, 70, BN, 5},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const struct nn_case *nc = &cases[c];
        struct rvs_nn_ref_net *net =
            rvs_nn_ref_net_create(nc->nlayers, nc->width, nc->npc, nc->npix, nc->flags, nc->seed);
        double *params = malloc(nc->count * 4 * sizeof *params);
        rvs_nn_ref_params(params, nc->count, nc->seed);
        if (c == 1) { /* grid corners */
            static const double edge[8] = {3000, 0, -4, -0.4, 12000, 5, 1, 1};
            memcpy(params, edge, sizeof edge);
        }
        char name[64];
        snprintf(name, sizeof name, "net%zu (E=%zu npix=%zu)", c, nc->count, nc->npix);
        nn_device_case(ctx, NET_DESC(net), params, nc->count, name);
        free(params);
        rvs_nn_ref_net_free(net);
    }
}

/* ------------------------------------------------------------------ rotation */

/* Host: d weights / dR against central differences of rvs_rotation_weights, sum(dw) = 0, and
 * the R -> 0+ limit (every R in (0, 1] and any R below the cut give the same kernel). Widths
 * keep >= 0.2 from integers, where a weight's second derivative is singular (K's square root
 * edge crossing a hat's corner). */
static void check_dweights(void)
{
    static const double widths[] = {0.01, 0.3, 0.77, 1.5, 2.3, 4.6, 12.5, 20.7, 57.3};
    double w[256], wp[256], wm[256], dw[256], lim[256], half[256];
    size_t n, np, nm, nl, nh;
    double worst = 0, worst_sum = 0;
    for (size_t c = 0; c < sizeof widths / sizeof widths[0]; c++) {
        double R = widths[c], h = 1e-4 * R;
        double wp2[256], wm2[256];
        size_t np2, nm2;
        CHECK(rvs_rotation_weights_dR(R, RVS_ROTATION_EPS, dw, 256, &n) == RVS_OK, "dR(%g)", R);
        CHECK(rvs_rotation_weights(R, RVS_ROTATION_EPS, w, 256, &np) == RVS_OK && np == n,
              "R=%g: derivative has %zu weights, the kernel %zu", R, n, np);
        CHECK(rvs_rotation_weights(R + h, RVS_ROTATION_EPS, wp, 256, &np) == RVS_OK, "w(R+h)");
        CHECK(rvs_rotation_weights(R - h, RVS_ROTATION_EPS, wm, 256, &nm) == RVS_OK, "w(R-h)");
        CHECK(rvs_rotation_weights(R + 2 * h, RVS_ROTATION_EPS, wp2, 256, &np2) == RVS_OK, "w");
        CHECK(rvs_rotation_weights(R - 2 * h, RVS_ROTATION_EPS, wm2, 256, &nm2) == RVS_OK, "w");
        if (np != n || nm != n || np2 != n || nm2 != n)
            continue;
        double fd[256], sum = 0, abs_sum = 0;
        for (size_t j = 0; j < n; j++) {
            fd[j] = (8 * (wp[j] - wm[j]) - (wp2[j] - wm2[j])) / (12 * h);
            sum += dw[j], abs_sum += fabs(dw[j]);
        }
        worst = fmax(worst, row_error(dw, fd, n));
        worst_sum = fmax(worst_sum, fabs(sum) / abs_sum);
    }
    printf("rotation dweights/dR vs central differences: %.3e (tol %.0e); |sum dw| / sum |dw| "
           "%.3e (tol 1e-14)\n", worst, TOL_DW_FD, worst_sum);
    CHECK(worst <= TOL_DW_FD, "dweights/dR vs differences %.3g > %.1g", worst, TOL_DW_FD);
    CHECK(worst_sum <= 1e-14, "derivative weights sum to %.3g of their size", worst_sum);
    /* sub-pixel: linear in R, so one kernel for all of (0, 1] and below the cut */
    CHECK(rvs_rotation_weights_dR(1e-12, RVS_ROTATION_EPS, lim, 256, &nl) == RVS_OK, "dR(1e-12)");
    CHECK(rvs_rotation_weights_dR(0.5, RVS_ROTATION_EPS, half, 256, &nh) == RVS_OK, "dR(0.5)");
    double dlim = 0;
    CHECK(nl == 5 && nh == 5, "sub-pixel derivative kernels of %zu and %zu weights", nl, nh);
    for (size_t j = 0; j < 5 && nl == 5 && nh == 5; j++)
        dlim = fmax(dlim, fabs(lim[j] - half[j]));
    printf("rotation dweights/dR: R=1e-12 vs R=0.5 differ by %.3e (tol 1e-14); outer weights "
           "%g %g\n", dlim, lim[0], lim[4]);
    CHECK(dlim <= 1e-14 && lim[0] == 0 && lim[4] == 0, "R -> 0+ limit kernel differs by %.3g",
          dlim);
    CHECK(rvs_rotation_weights_dR(0, RVS_ROTATION_EPS, lim, 256, &nl) == RVS_OK && nl == 1 &&
              lim[0] == 0,
          "R = 0: want the single weight 0");
    CHECK(rvs_rotation_weights_dR(-3, RVS_ROTATION_EPS, lim, 256, &nl) == RVS_OK && nl == 1 &&
              lim[0] == 0,
          "R < 0: want the single weight 0");
}

/* Plain C: 'same' convolution of x (npix) with the vsini-derivative kernel (per km/s). */
static double conv_dvsini(const double *x, size_t npix, double vsini, double *out)
{
    double dw[512];
    size_t n;
    double R = vsini > 0 ? vsini / C_KMS / LNSTEP : 0;
    CHECK(rvs_rotation_weights_dR(R, RVS_ROTATION_EPS, dw, 512, &n) == RVS_OK, "dR");
    long km = (long)(n - 1) / 2;
    double xmax = 0, wsum = 0;
    for (size_t i = 0; i < n; i++)
        wsum += fabs(dw[i] / (C_KMS * LNSTEP));
    for (size_t i = 0; i < npix; i++) {
        double s = 0;
        xmax = fmax(xmax, fabs(x[i]));
        for (long dd = -km; dd <= km; dd++) {
            long j = (long)i + dd;
            if (j >= 0 && j < (long)npix)
                s += dw[km + dd] / (C_KMS * LNSTEP) * x[j];
        }
        out[i] = s;
    }
    return xmax * wsum; /* the size of the terms */
}

static void check_rotation(struct rvs_context *ctx)
{
    /* vsini: 0, below the width cut, sub-pixel (R 0.01, 0.5), 1 ... 500 km/s; templates of 61
     * and 997 px (FFT lengths 128 and 1024: the kernels longer than N = 61 included) */
    static const double vs[] = {0, 1e-12, 0.24, 12.0, 30.0, 100.0, 210.0, 500.0};
    const size_t nv = sizeof vs / sizeof vs[0];
    static const size_t sizes[] = {61, 997};
    for (size_t si = 0; si < 2; si++) {
        size_t npix = sizes[si], T = 2 * nv; /* two random templates per vsini */
        double *x = malloc(T * npix * sizeof *x), *vsini = malloc(T * sizeof *vsini);
        int *rows = malloc(T * sizeof *rows);
        for (size_t t = 0; t < T; t++) {
            vsini[t] = vs[t % nv];
            rows[t] = (int)(T - 1 - t); /* read the inputs through in_rows, reversed */
        }
        for (size_t i = 0; i < T * npix; i++)
            x[i] = 1 + test_uniform(-0.5, 0.5);
        if (ctx->use_fp64 == 0)
            for (size_t i = 0; i < T * npix; i++)
                x[i] = (double)(float)x[i];
        struct rvs_rotation *rot = NULL;
        CHECK(rvs_rotation_create(ctx, npix, &rot) == RVS_OK, "rotation create");
        cl_mem din = upload(ctx, x, T * npix), dout = alloc_reals(ctx, T * npix);
        cl_mem dp = alloc_reals(ctx, T * npix), dm = alloc_reals(ctx, T * npix);
        double *got = malloc(T * npix * sizeof *got), *ref = malloc(npix * sizeof *ref);
        double *fp = malloc(T * npix * sizeof *fp), *fm = malloc(T * npix * sizeof *fm);
        double *fd = malloc(npix * sizeof *fd), *vp = malloc(T * sizeof *vp);
        double *vm = malloc(T * sizeof *vm), *hs = malloc(T * sizeof *hs);
        for (int path = RVS_ROTATION_DIRECT; path <= RVS_ROTATION_FFT; path++) {
            rvs_rotation_set_path(rot, (enum rvs_rotation_path)path);
            int status = rvs_rotation_apply_rows_dvsini(ctx, rot, din, rows, T, T, vsini, LNSTEP,
                                                        RVS_ROTATION_EPS, dout);
            CHECK(status == RVS_OK, "apply_rows_dvsini: %s", rvs_strerror(status));
            download(ctx, dout, T * npix, rvs_context_real_size(ctx), got);
            /* finite differences of the values: step 1e-5 vsini (linear below one pixel, so
             * any step is exact there); vsini 0 and below the cut are not differentiable in
             * the code (0: flat; below: the cut), checked against zero / the limit instead */
            for (size_t t = 0; t < T; t++) {
                hs[t] = 1e-5 * vsini[t];
                vp[t] = vsini[t] + hs[t], vm[t] = vsini[t] - hs[t];
            }
            CHECK(rvs_rotation_apply_rows(ctx, rot, din, rows, T, T, vp, LNSTEP,
                                          RVS_ROTATION_EPS, dp) == RVS_OK, "apply(v+h)");
            CHECK(rvs_rotation_apply_rows(ctx, rot, din, rows, T, T, vm, LNSTEP,
                                          RVS_ROTATION_EPS, dm) == RVS_OK, "apply(v-h)");
            download(ctx, dp, T * npix, rvs_context_real_size(ctx), fp);
            download(ctx, dm, T * npix, rvs_context_real_size(ctx), fm);
            double err_ref = 0, err_fd = 0;
            size_t zero_bad = 0;
            for (size_t t = 0; t < T; t++) {
                const double *g = got + t * npix;
                double scale = conv_dvsini(x + (size_t)rows[t] * npix, npix, vsini[t], ref);
                double e = 0;
                for (size_t i = 0; i < npix; i++)
                    e = fmax(e, fabs(g[i] - ref[i]));
                err_ref = fmax(err_ref, scale > 0 ? e / scale : e);
                if (vsini[t] <= 0) {
                    for (size_t i = 0; i < npix; i++)
                        zero_bad += g[i] != 0;
                    continue;
                }
                if (vsini[t] < 1e-6 || !ctx->use_fp64)
                    continue;
                for (size_t i = 0; i < npix; i++)
                    fd[i] = (fp[t * npix + i] - fm[t * npix + i]) / (2 * hs[t]);
                err_fd = fmax(err_fd, row_error(g, fd, npix));
            }
            double tol = ctx->use_fp64 ? RVS_TOL_FP64_REL
                         : path == RVS_ROTATION_FFT ? RVS_TOL_ROTATION_FFT_FP32_REL
                                                    : RVS_TOL_FP32_REL;
            printf("rotation d/dvsini %s %s N=%zu: vs plain C %.3e (tol %.0e)", prec(ctx),
                   path == RVS_ROTATION_FFT ? "fft" : "direct", npix, err_ref, tol);
            if (ctx->use_fp64)
                printf(", vs central differences of rvs_rotation_apply_rows %.3e (tol %.0e)",
                       err_fd, TOL_ROT_FD);
            printf("\n");
            CHECK(err_ref <= tol, "rotation d/dvsini %s path %d N=%zu: %.3g > %.1g", prec(ctx),
                  path, npix, err_ref, tol);
            CHECK(err_fd <= TOL_ROT_FD, "rotation d/dvsini vs differences %.3g > %.1g", err_fd,
                  TOL_ROT_FD);
            CHECK(zero_bad == 0, "vsini 0: %zu non-zero derivative pixels", zero_bad);
        }
        rvs_rotation_destroy(&rot);
        rvs_buffer_release(&din), rvs_buffer_release(&dout);
        rvs_buffer_release(&dp), rvs_buffer_release(&dm);
        free(x), free(vsini), free(rows), free(got), free(ref), free(fp), free(fm), free(fd);
        free(vp), free(vm), free(hs);
    }
}

/* ------------------------------------------------------------------ spline */

/* S'(x) dx/dv in double from the coefficients read back, at x = lam f(v) in double: the
 * reference of rvs_spline_eval_dv's derivative (the interval found by search). */
static double ref_spline_dv(const double *xs, size_t N, const double *abcd, double lam,
                            double v)
{
    double b = v / C_KMS, f = sqrt((1 - b) / (1 + b)), x = lam * f;
    if (!(x >= xs[0] && x < xs[N - 1]))
        return NAN;
    size_t lo = 0, hi = N - 1;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (xs[mid] <= x)
            lo = mid;
        else
            hi = mid;
    }
    const double *c = abcd + 4 * lo;
    double dxl = x - xs[lo], dxr = xs[lo + 1] - x;
    double slope = 3 * c[0] * dxl * dxl - 3 * c[1] * dxr * dxr + c[2] - c[3];
    return slope * (-x / (C_KMS * (1 - b * b)));
}

static void check_spline(struct rvs_context *ctx)
{
    /* a template-like log grid (LNSTEP), 3 templates, requests at +-500 km/s, 0 and random
     * velocities (E = 9, not a multiple of anything), n = 803 wavelengths (not a multiple of
     * the 64-pixel groups) inside the grid at every velocity, then 4 outside (NaN) */
    enum { N = 1037, T = 3, E = 9, NIN = 803, NOUT = 4, NL = NIN + NOUT };
    static const double vel[E] = {-500, 500, 0, 37.3, -211.9, 499.99, -0.001, 123.4, -333};
    double *xs = malloc(N * sizeof *xs), *y = malloc(T * N * sizeof *y), lam[NL];
    for (size_t i = 0; i < N; i++)
        xs[i] = 5000 * exp(LNSTEP * (double)i);
    for (size_t i = 0; i < T * N; i++)
        y[i] = 1 + 0.3 * sin(0.05 * (double)(i % N) * (1 + (double)(i / N))) +
               test_uniform(-0.2, 0.2);
    /* 500 km/s moves a point by 1.7e-3 of its wavelength: keep 2e-3 from the ends */
    double lo = xs[0] * 1.002, hi = xs[N - 1] / 1.002;
    for (size_t j = 0; j < NIN; j++)
        lam[j] = lo + (hi - lo) * ((double)j + test_uniform(0, 1)) / NIN;
    lam[NIN] = xs[0] * 0.99, lam[NIN + 1] = xs[N - 1] * 1.01;
    lam[NIN + 2] = xs[0] * 0.9, lam[NIN + 3] = xs[N - 1] * 1.1;
    cl_int idx[E];
    for (size_t e = 0; e < E; e++)
        idx[e] = (cl_int)(e % T);
    struct rvs_spline_grid *grid = NULL;
    size_t es = rvs_context_real_size(ctx);
    CHECK(rvs_spline_grid_create(ctx, xs, N, 1, &grid) == RVS_OK, "grid");
    cl_mem dy = upload(ctx, y, T * N), dc = NULL, didx = NULL, dpts = NULL;
    CHECK(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, rvs_spline_coeffs_bytes(ctx, grid, T), NULL,
                            &dc) == RVS_OK, "coeffs");
    CHECK(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, sizeof idx, idx, &didx) == RVS_OK, "idx");
    CHECK(rvs_spline_points_create(ctx, lam, NL, &dpts) == RVS_OK, "points");
    cl_mem dv = upload(ctx, vel, E), dval = alloc_reals(ctx, E * NL), dder = alloc_reals(ctx, E * NL);
    cl_mem dref = alloc_reals(ctx, E * NL), dder2 = alloc_reals(ctx, E * NL);
    CHECK(rvs_spline_construct(ctx, grid, dy, T, dc) == RVS_OK, "construct");
    CHECK(rvs_spline_eval(ctx, grid, dc, T, didx, dv, E, dpts, NL, dref) == RVS_OK, "eval");
    int status = rvs_spline_eval_dv(ctx, grid, dc, T, didx, dv, E, dpts, NL, dval, dder);
    CHECK(status == RVS_OK, "eval_dv: %s", rvs_strerror(status));
    CHECK(rvs_spline_eval_dv(ctx, grid, dc, T, didx, dv, E, dpts, NL, NULL, dder2) == RVS_OK,
          "eval_dv without values");
    double *val = malloc(E * NL * sizeof *val), *ref = malloc(E * NL * sizeof *ref);
    double *der = malloc(E * NL * sizeof *der), *der2 = malloc(E * NL * sizeof *der2);
    download(ctx, dval, E * NL, es, val);
    download(ctx, dref, E * NL, es, ref);
    download(ctx, dder, E * NL, es, der);
    download(ctx, dder2, E * NL, es, der2);
    size_t differ = 0, nan_bad = 0;
    for (size_t i = 0; i < E * NL; i++) {
        differ += memcmp(&val[i], &ref[i], sizeof val[i]) != 0 && !(isnan(val[i]) && isnan(ref[i]));
        differ += memcmp(&der[i], &der2[i], sizeof der[i]) != 0 && !(isnan(der[i]) && isnan(der2[i]));
        nan_bad += (size_t)((i % NL) >= NIN) != (size_t)isnan(der[i]);
        nan_bad += isnan(der[i]) != isnan(val[i]);
    }
    printf("spline eval_dv %s: %zu values differ from rvs_spline_eval (want 0), %zu NaN "
           "mismatches (want 0)\n", prec(ctx), differ, nan_bad);
    CHECK(differ == 0, "eval_dv values differ from rvs_spline_eval at %zu pixels", differ);
    CHECK(nan_bad == 0, "eval_dv: %zu pixels NaN where they should not be or not where they "
          "should", nan_bad);

    /* plain C from the coefficients read back */
    double *abcd = malloc(T * 4 * (N - 1) * sizeof *abcd), *want = malloc(NL * sizeof *want);
    double *xr = malloc(N * sizeof *xr);
    for (size_t i = 0; i < N; i++)
        xr[i] = ctx->use_fp64 ? xs[i] : (double)(float)xs[i]; /* the knots the device has */
    CHECK(rvs_spline_coeffs_read(ctx, grid, dc, T, abcd) == RVS_OK, "coeffs read");
    double err_ref = 0;
    for (size_t e = 0; e < E; e++) {
        for (size_t j = 0; j < NL; j++) {
            double l = ctx->use_fp64 ? lam[j] : (double)(float)lam[j];
            double v = ctx->use_fp64 ? vel[e] : (double)(float)vel[e];
            want[j] = ref_spline_dv(xr, N, abcd + (size_t)idx[e] * 4 * (N - 1), l, v);
        }
        err_ref = fmax(err_ref, row_error(der + e * NL, want, NL));
    }
    double tol = ctx->use_fp64 ? RVS_TOL_FP64_REL : TOL_SPLINE_FP32;
    printf("spline d/dv %s vs plain C: %.3e (tol %.0e)\n", prec(ctx), err_ref, tol);
    CHECK(err_ref <= tol, "spline d/dv %s vs plain C: %.3g > %.1g", prec(ctx), err_ref, tol);

    if (ctx->use_fp64) {
        /* central differences of rvs_spline_eval, h = 1e-3 km/s (TOL_SPLINE_FD) */
        double vp[E], vm[E], h = 1e-3;
        for (size_t e = 0; e < E; e++)
            vp[e] = vel[e] + h, vm[e] = vel[e] - h;
        cl_mem dvp = upload(ctx, vp, E), dvm = upload(ctx, vm, E);
        double *fp = malloc(E * NL * sizeof *fp), *fm = malloc(E * NL * sizeof *fm);
        CHECK(rvs_spline_eval(ctx, grid, dc, T, didx, dvp, E, dpts, NL, dval) == RVS_OK, "v+h");
        download(ctx, dval, E * NL, es, fp);
        CHECK(rvs_spline_eval(ctx, grid, dc, T, didx, dvm, E, dpts, NL, dval) == RVS_OK, "v-h");
        download(ctx, dval, E * NL, es, fm);
        double err_fd = 0;
        for (size_t e = 0; e < E; e++) {
            for (size_t j = 0; j < NL; j++)
                want[j] = (fp[e * NL + j] - fm[e * NL + j]) / (2 * h);
            err_fd = fmax(err_fd, row_error(der + e * NL, want, NL));
        }
        printf("spline d/dv fp64 vs central differences of rvs_spline_eval: %.3e (tol %.0e)\n",
               err_fd, TOL_SPLINE_FD);
        CHECK(err_fd <= TOL_SPLINE_FD, "spline d/dv vs differences %.3g > %.1g", err_fd,
              TOL_SPLINE_FD);
        rvs_buffer_release(&dvp), rvs_buffer_release(&dvm);
        free(fp), free(fm);
    }
    rvs_buffer_release(&dy), rvs_buffer_release(&dc), rvs_buffer_release(&didx);
    rvs_buffer_release(&dpts), rvs_buffer_release(&dv), rvs_buffer_release(&dval);
    rvs_buffer_release(&dder), rvs_buffer_release(&dref), rvs_buffer_release(&dder2);
    rvs_spline_grid_destroy(&grid);
    free(xs), free(y), free(val), free(ref), free(der), free(der2), free(abcd), free(want);
    free(xr);
}

/* ------------------------------------------------------------------ chain on the library */

/* The model of S stars at the data wavelengths, m = eval(spline(rotate(NN(theta), vsini)), v),
 * through the existing routines: model[s * n + j]. */
struct chain {
    struct rvs_context *ctx;
    struct rvs_nn *nn;
    struct rvs_rotation *rot;
    struct rvs_spline_grid *grid;
    cl_mem pts;
    size_t npix, n, D;
    double lnstep;
};

static void chain_model(struct chain *c, const double *theta, const double *vsini,
                        const double *v, size_t S, double *model)
{
    struct rvs_context *ctx = c->ctx;
    cl_mem dp = upload(ctx, theta, S * c->D), dt = alloc_reals(ctx, S * c->npix);
    cl_mem dr = alloc_reals(ctx, S * c->npix), dv = upload(ctx, v, S), dc = NULL, didx = NULL;
    cl_mem dout = alloc_reals(ctx, S * c->n);
    cl_int idx[16];
    for (size_t s = 0; s < S; s++)
        idx[s] = (cl_int)s;
    CHECK(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, rvs_spline_coeffs_bytes(ctx, c->grid, S),
                            NULL, &dc) == RVS_OK, "coeffs");
    CHECK(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, S * sizeof(cl_int), idx, &didx) == RVS_OK,
          "idx");
    CHECK(rvs_nn_forward(ctx, c->nn, dp, S, dt, RVS_NN_FLUX_REAL) == RVS_OK, "chain nn");
    CHECK(rvs_rotation_apply(ctx, c->rot, dt, S, vsini, c->lnstep, RVS_ROTATION_EPS, dr) ==
              RVS_OK, "chain rotation");
    CHECK(rvs_spline_construct(ctx, c->grid, dr, S, dc) == RVS_OK, "chain construct");
    CHECK(rvs_spline_eval(ctx, c->grid, dc, S, didx, dv, S, c->pts, c->n, dout) == RVS_OK,
          "chain eval");
    download(ctx, dout, S * c->n, rvs_context_real_size(ctx), model);
    rvs_buffer_release(&dp), rvs_buffer_release(&dt), rvs_buffer_release(&dr);
    rvs_buffer_release(&dv), rvs_buffer_release(&dc), rvs_buffer_release(&didx);
    rvs_buffer_release(&dout);
}

/* The derivatives by the new routines: grad[(s * (D + 2) + p) * n + j], p = theta_0..D-1,
 * vsini, v. The NN's rows (values and tangents, block layout) are rotated with their star's
 * vsini and become splines evaluated at the star's v: the tangent rows give d/dtheta, the value
 * rows through rvs_spline_eval_dv d/dv; d/dvsini is the value rows through
 * rvs_rotation_apply_rows_dvsini, then spline and evaluation like any row. */
static void chain_tangents(struct chain *c, const double *theta, const double *vsini,
                           const double *v, size_t S, double *grad)
{
    struct rvs_context *ctx = c->ctx;
    size_t D = c->D, P = 1 + D, Q = D + 2, npix = c->npix, n = c->n, R = P * S;
    size_t es = rvs_context_real_size(ctx);
    cl_mem dp = upload(ctx, theta, S * D), dt = alloc_reals(ctx, R * npix);
    cl_mem dr = alloc_reals(ctx, R * npix), ds = alloc_reals(ctx, S * npix);
    cl_mem dc = NULL, dcs = NULL, didx = NULL, dv = NULL;
    cl_mem dgrad = alloc_reals(ctx, R * n), dgs = alloc_reals(ctx, S * n);
    cl_mem dgv = alloc_reals(ctx, S * n);
    int in_rows[64];
    double vrow[64], velrow[64];
    cl_int idx[64];
    for (size_t r = 0; r < R; r++)
        in_rows[r] = (int)r, vrow[r] = vsini[r % S], velrow[r] = v[r % S], idx[r] = (cl_int)r;
    CHECK(rvs_nn_forward_tangent(ctx, c->nn, dp, S, dt, RVS_NN_FLUX_REAL) == RVS_OK,
          "chain tangent pass");
    CHECK(rvs_rotation_apply_rows(ctx, c->rot, dt, in_rows, R, R, vrow, c->lnstep,
                                  RVS_ROTATION_EPS, dr) == RVS_OK, "chain rotation rows");
    CHECK(rvs_rotation_apply_rows_dvsini(ctx, c->rot, dt, in_rows, S, S, vsini, c->lnstep,
                                         RVS_ROTATION_EPS, ds) == RVS_OK, "chain dvsini");
    CHECK(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, rvs_spline_coeffs_bytes(ctx, c->grid, R),
                            NULL, &dc) == RVS_OK, "coeffs");
    CHECK(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, rvs_spline_coeffs_bytes(ctx, c->grid, S),
                            NULL, &dcs) == RVS_OK, "coeffs");
    CHECK(rvs_spline_construct(ctx, c->grid, dr, R, dc) == RVS_OK, "chain construct");
    CHECK(rvs_spline_construct(ctx, c->grid, ds, S, dcs) == RVS_OK, "chain construct dvsini");
    dv = upload(ctx, velrow, R);
    CHECK(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, R * sizeof(cl_int), idx, &didx) == RVS_OK,
          "idx");
    /* requests 0..S-1 are (row s, v[s]): the same index and velocity arrays serve all three */
    CHECK(rvs_spline_eval(ctx, c->grid, dc, R, didx, dv, R, c->pts, n, dgrad) == RVS_OK,
          "chain eval");
    CHECK(rvs_spline_eval(ctx, c->grid, dcs, S, didx, dv, S, c->pts, n, dgs) == RVS_OK,
          "chain eval dvsini");
    CHECK(rvs_spline_eval_dv(ctx, c->grid, dc, R, didx, dv, S, c->pts, n, NULL, dgv) ==
              RVS_OK, "chain eval_dv");
    double *g = malloc(R * n * sizeof *g), *gs = malloc(S * n * sizeof *gs);
    double *gv = malloc(S * n * sizeof *gv);
    download(ctx, dgrad, R * n, es, g);
    download(ctx, dgs, S * n, es, gs);
    download(ctx, dgv, S * n, es, gv);
    for (size_t s = 0; s < S; s++) {
        for (size_t k = 0; k < D; k++)
            memcpy(grad + (s * Q + k) * n, g + ((1 + k) * S + s) * n, n * sizeof *g);
        memcpy(grad + (s * Q + D) * n, gs + s * n, n * sizeof *g);
        memcpy(grad + (s * Q + D + 1) * n, gv + s * n, n * sizeof *g);
    }
    free(g), free(gs), free(gv);
    rvs_buffer_release(&dp), rvs_buffer_release(&dt), rvs_buffer_release(&dr);
    rvs_buffer_release(&ds), rvs_buffer_release(&dc), rvs_buffer_release(&dcs);
    rvs_buffer_release(&didx), rvs_buffer_release(&dv), rvs_buffer_release(&dgrad);
    rvs_buffer_release(&dgs), rvs_buffer_release(&dgv);
}

static void check_chain(struct rvs_context *ctx)
{
    const char *top = getenv("top_srcdir");
    char dir[4096];
    struct stat st;
    snprintf(dir, sizeof dir, "%s/data/default", top ? top : ".");
    if (stat(dir, &st) != 0) {
        printf("chain: no default library at %s; skipped\n", dir);
        return;
    }
    struct rvs_library_arm *arm = NULL;
    int status = rvs_library_open(dir, "desi_r", &arm);
    CHECK(status == RVS_OK, "chain: cannot open the default library: %s", rvs_strerror(status));
    if (status != RVS_OK)
        return;
    struct chain c = {.ctx = ctx};
    const struct rvs_nn_desc *d = rvs_library_nn_desc(arm);
    c.npix = rvs_library_npix(arm);
    c.D = d->indim;
    c.lnstep = rvs_library_log_step(arm);
    const double *wave = rvs_library_wave(arm);
    CHECK(c.D == 4, "chain: the library has %zu parameters", c.D);
    CHECK(rvs_nn_create(ctx, d, &c.nn) == RVS_OK, "chain nn");
    CHECK(rvs_rotation_create(ctx, c.npix, &c.rot) == RVS_OK, "chain rotation");
    CHECK(rvs_spline_grid_create(ctx, wave, c.npix, 1, &c.grid) == RVS_OK, "chain grid");
    /* data wavelengths: between the knots, 2e-3 inside the ends (|v| <= 500 km/s) */
    size_t n = 0;
    double *lam = malloc(c.npix * sizeof *lam);
    for (size_t i = 0; i + 1 < c.npix; i += 2) {
        double l = wave[i] + 0.37 * (wave[i + 1] - wave[i]);
        if (l > wave[0] * 1.002 && l < wave[c.npix - 1] / 1.002)
            lam[n++] = l;
    }
    c.n = n;
    CHECK(rvs_spline_points_create(ctx, lam, n, &c.pts) == RVS_OK, "chain points");
    /* the Sun at 3 km/s (sub-pixel kernel) and -500 km/s; a K giant at 60 km/s and +500 */
    enum { S = 2 };
    const double theta[S * 4] = {5772, 4.44, 0.0, 0.0, 4500, 2.0, -0.5, 0.2};
    const double vsini[S] = {3.0, 60.0}, vel[S] = {-500.0, 500.0};
    size_t Q = c.D + 2;
    double *grad = malloc(S * Q * n * sizeof *grad), *mp = malloc(S * n * sizeof *mp);
    double *mm = malloc(S * n * sizeof *mm), *fd = malloc(n * sizeof *fd);
    double *mp2 = malloc(S * n * sizeof *mp2), *mm2 = malloc(S * n * sizeof *mm2);
    chain_tangents(&c, theta, vsini, vel, S, grad);
    static const char *const names[6] = {"teff", "logg", "feh", "alpha", "vsini", "v"};
    for (size_t p = 0; p < Q; p++) {
        if (p < c.D && !ctx->use_fp64)
            continue; /* theta through the float NN: fp64 only (see TOL_CHAIN_FP32) */
        /* theta: the fourth-order central difference (8 (m(h) - m(-h)) - (m(2h) - m(-2h)))
         * / 12h, whose O(h^4) truncation lets the step grow to 3e-2 in network-input units,
         * where the float32 network's noise (~1e-6 of a value) over the step stays below
         * ~1e-3 of a derivative even for alpha, the weakest parameter (the second-order
         * difference could not satisfy both teff's truncation and alpha's noise). vsini, v:
         * second order (fp64 stages, no float noise) */
        double h[S], *m[4] = {mp, mm, mp2, mm2};
        static const double mult[4] = {1, -1, 2, -2};
        int order4 = p < c.D;
        for (size_t s = 0; s < S; s++) {
            /* fp32: below one pixel (R < 1) the model is linear in vsini, so half of it is
             * an exact step; above, 1e-2 of it; v: 0.3 km/s (1/80 of a pixel) */
            if (p < c.D)
                h[s] = nn_step(d, theta + s * 4, p, 3e-2);
            else if (p == c.D)
                h[s] = ctx->use_fp64 ? 1e-5 * vsini[s]
                       : vsini[s] < C_KMS * c.lnstep ? 0.5 * vsini[s] : 1e-2 * vsini[s];
            else
                h[s] = ctx->use_fp64 ? 1e-3 : 0.3;
        }
        for (int q = 0; q < (order4 ? 4 : 2); q++) {
            double tp[S * 4], vp[S], vv[S];
            memcpy(tp, theta, sizeof tp), memcpy(vp, vsini, sizeof vp), memcpy(vv, vel, sizeof vv);
            for (size_t s = 0; s < S; s++) {
                double step = mult[q] * h[s];
                if (p < c.D)
                    tp[s * 4 + p] += step;
                else if (p == c.D)
                    vp[s] += step;
                else
                    vv[s] += step;
            }
            chain_model(&c, tp, vp, vv, S, m[q]);
        }
        double err = 0;
        for (size_t s = 0; s < S; s++) {
            for (size_t j = 0; j < n; j++) {
                size_t i = s * n + j;
                fd[j] = order4 ? (8 * (mp[i] - mm[i]) - (mp2[i] - mm2[i])) / (12 * h[s])
                               : (mp[i] - mm[i]) / (2 * h[s]);
            }
            err = fmax(err, row_error(grad + (s * Q + p) * n, fd, n));
        }
        double tol = !ctx->use_fp64 ? TOL_CHAIN_FP32
                     : p < c.D      ? TOL_NN_FD
                     : p == c.D     ? TOL_ROT_FD
                                    : TOL_SPLINE_FD;
        printf("chain desi_r %s d model / d %s vs central differences: %.3e (tol %.0e)\n",
               prec(ctx), names[p], err, tol);
        CHECK(err <= tol, "chain %s d/d%s: %.3g > %.1g", prec(ctx), names[p], err, tol);
    }
    free(grad), free(mp), free(mm), free(mp2), free(mm2), free(fd), free(lam);
    rvs_buffer_release(&c.pts);
    rvs_spline_grid_destroy(&c.grid);
    rvs_rotation_destroy(&c.rot);
    rvs_nn_destroy(&c.nn);
    rvs_library_close(&arm);
}

/* ------------------------------------------------------------------ bad calls */

static void check_rejects(struct rvs_context *ctx)
{
    int level = rvs_log_get_level();
    rvs_log_set_level(RVS_LOG_CRITICAL + 1);
    struct rvs_nn_ref_net *net = rvs_nn_ref_net_create(1, 8, 4, 5, BN, 41);
    struct rvs_nn *nn = NULL;
    CHECK(rvs_nn_create(ctx, NET_DESC(net), &nn) == RVS_OK, "create");
    double params[3 * 4];
    rvs_nn_ref_params(params, 3, 41);
    cl_mem dp = upload(ctx, params, 12), small = alloc_reals(ctx, 3 * 5); /* values only */
    CHECK(rvs_nn_forward_tangent(ctx, nn, dp, 3, small, RVS_NN_FLUX_REAL) ==
              RVS_ERR_INVALID_ARGUMENT, "tangent output without room for the tangents accepted");
    CHECK(rvs_nn_forward_tangent(ctx, nn, dp, 3, small, (enum rvs_nn_output)7) ==
              RVS_ERR_INVALID_ARGUMENT, "unknown output kind accepted");
    CHECK(rvs_nn_forward_tangent(ctx, nn, dp, 0, small, RVS_NN_FLUX_REAL) == RVS_OK, "E = 0");
    size_t n;
    CHECK(rvs_rotation_weights_dR(NAN, RVS_ROTATION_EPS, NULL, 0, &n) ==
              RVS_ERR_INVALID_ARGUMENT, "NaN width accepted");
    double w[3];
    CHECK(rvs_rotation_weights_dR(4.5, RVS_ROTATION_EPS, w, 3, &n) == RVS_ERR_INVALID_ARGUMENT &&
              n == rvs_rotation_kernel_length(4.5), "short capacity accepted (length %zu)", n);
    rvs_buffer_release(&dp), rvs_buffer_release(&small);
    rvs_nn_destroy(&nn);
    rvs_nn_ref_net_free(net);
    rvs_log_set_level(level);
}

static void run_context(int force_fp32)
{
    if (force_fp32)
        setenv("RVSFIT_CL_FP32", "1", 1);
    struct rvs_context *ctx = test_context(1);
    printf("--- %s on %s\n", prec(ctx), ctx->caps.device_name);
    check_rejects(ctx);
    check_nn(ctx);
    check_rotation(ctx);
    check_spline(ctx);
    check_chain(ctx);
    rvs_context_destroy(&ctx);
    unsetenv("RVSFIT_CL_FP32");
}

int main(void)
{
    check_dweights();
    run_context(0);
    run_context(1);
    return test_finish("test_tangents");
}
