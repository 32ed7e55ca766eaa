/* routines/rotation.c: rotational broadening (rvs_rotation_apply) as a routine: T random
 * templates of N pixels broadened at vsini (all equal, or mixed in one batch), against a plain-C
 * reference: direct 'same'-mode convolution in long double with weights evaluated here from the
 * formula (not through the library), so a porting error in either shows.
 * batch=T templates, n=N pixels, m=path (0 auto, 1 direct, 2 FFT), k=0: every template at
 * vsini=param, k=1: mixed vsini in one batch (0, tiny, sub-pixel, and uniform up to param). */
#include <config.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "routine.h"
#include "testutil.h"
#include "tolerances.h"

/* 0.4 A pixels at 5000 A: R = (vsini/c)/lnstep is ~0.04 px at 1 km/s, ~21 px at 500 km/s */
#define ROUTINE_LNSTEP 8e-5
#define REF_C 299792.458L

struct rotation_state {
    struct rvs_routine_args args;
    size_t es;
    int is_double;
    double *x, *y_dev, *y_ref, *vsini;
    struct rvs_rotation *rot;
    cl_mem din, dout;
};

/* Primitives of the unnormalised limb-darkened profile
 * k(x) = 2(1-eps) sqrt(1-x^2) + (pi/2) eps (1-x^2) on [-1, 1] (Gray's rotation profile; its
 * integral is pi(1 - eps/3)): P0 = int k, P1 = int x k. */
static void ref_primitives(long double x, long double eps, long double *p0, long double *p1)
{
    if (x < -1)
        x = -1;
    if (x > 1)
        x = 1;
    long double q = 1 - x * x, s = sqrtl(q);
    long double a = 2 * (1 - eps), b = 0.5L * 3.14159265358979323846264338327950288L * eps;
    *p0 = a * 0.5L * (x * s + asinl(x)) + b * (x - x * x * x / 3);
    *p1 = a * (-q * s / 3) + b * (x * x / 2 - x * x * x * x / 4);
}

/* Reference weights (also used by tests/test_rotation.c) W_k = int Lambda(k - R x) k(x) dx / sum, for every k in [-kmax, kmax]
 * directly (no mirroring), splitting [-1, 1] at the hat's knots (k-1)/R, k/R, (k+1)/R.
 * Returns the number of weights (2 kmax + 1, kmax = ceil(R + 1)) or 1 for the identity. */
size_t rvs_rotation_reference_weights(double R, double eps, double *w, size_t capacity);
size_t rvs_rotation_reference_weights(double R, double eps, double *w, size_t capacity)
{
    if (!(R >= 1e-9)) {
        if (capacity >= 1)
            w[0] = 1;
        return 1;
    }
    long kmax = (long)ceill((long double)R + 1);
    size_t n = (size_t)(2 * kmax + 1);
    if (n > capacity)
        return n;
    long double sum = 0, *tmp = malloc(n * sizeof *tmp);
    for (long k = -kmax; k <= kmax; k++) {
        long double knots[4] = {-1, ((long double)k - 1) / R, (long double)k / R,
                                ((long double)k + 1) / R};
        long double total = 0;
        /* pieces [(k-1)/R, k/R]: Lambda = 1 - k + R x; [k/R, (k+1)/R]: Lambda = 1 + k - R x */
        for (int piece = 0; piece < 2; piece++) {
            long double lo = knots[1 + piece], hi = knots[2 + piece];
            lo = lo < -1 ? -1 : (lo > 1 ? 1 : lo);
            hi = hi < -1 ? -1 : (hi > 1 ? 1 : hi);
            if (!(hi > lo))
                continue;
            long double slope = piece == 0 ? (long double)R : -(long double)R;
            long double icpt = piece == 0 ? 1 - (long double)k : 1 + (long double)k;
            long double a0, a1, b0, b1;
            ref_primitives(lo, eps, &a0, &a1);
            ref_primitives(hi, eps, &b0, &b1);
            total += icpt * (b0 - a0) + slope * (b1 - a1);
        }
        (void)knots[0];
        tmp[k + kmax] = total;
        sum += total;
    }
    for (size_t j = 0; j < n; j++)
        w[j] = (double)(tmp[j] / sum);
    free(tmp);
    return n;
}

/* out = x convolved with w (n weights, centred), 'same' mode with zeros outside, long double */
static void reference_convolve(const double *x, size_t npix, const double *w, size_t n,
                                     double *out)
{
    long km = (long)(n - 1) / 2;
    for (long i = 0; i < (long)npix; i++) {
        long double acc = 0;
        for (long d = -km; d <= km; d++)
            if (i + d >= 0 && i + d < (long)npix)
                acc += (long double)w[km + d] * x[i + d];
        out[i] = (double)acc;
    }
}

static void rotation_destroy(void *p)
{
    struct rotation_state *s = p;
    rvs_buffer_release(&s->din);
    rvs_buffer_release(&s->dout);
    rvs_rotation_destroy(&s->rot);
    free(s->x), free(s->y_dev), free(s->y_ref), free(s->vsini);
    free(s);
}

static int rotation_setup(struct rvs_context *ctx, const struct rvs_routine_args *args, void **out)
{
    struct rotation_state *s = calloc(1, sizeof *s);
    if (!s)
        return RVS_ERR_NOMEM;
    *out = s;
    s->args = *args;
    s->is_double = ctx->use_fp64;
    s->es = rvs_context_real_size(ctx);
    size_t t = args->batch, n = args->n;
    s->x = malloc(t * n * sizeof *s->x);
    s->y_dev = calloc(t * n, sizeof *s->y_dev);
    s->y_ref = calloc(t * n, sizeof *s->y_ref);
    s->vsini = malloc(t * sizeof *s->vsini);
    void *host = malloc(t * n * s->es);
    if (!s->x || !s->y_dev || !s->y_ref || !s->vsini || !host) {
        free(host);
        return RVS_ERR_NOMEM;
    }
    test_rng_state = 0x51ee7ULL + args->seed;
    for (size_t i = 0; i < t * n; i++) {
        double v = test_uniform(-1, 1);
        if (!s->is_double)
            v = (float)v; /* the reference sees the rounded inputs */
        s->x[i] = v;
        if (s->is_double)
            ((double *)host)[i] = v;
        else
            ((float *)host)[i] = (float)v;
    }
    for (size_t i = 0; i < t; i++) {
        double v = args->param;
        if (args->k == 1) {
            static const double special[] = {0.0, -5.0, 1e-12, 0.5, 1.0, 3.0};
            v = i % 4 == 0 && i / 4 < 6 ? special[i / 4] : test_uniform(0, args->param);
        }
        s->vsini[i] = v;
    }
    int status = rvs_buffer_create(ctx, CL_MEM_READ_ONLY, t * n * s->es, host, &s->din);
    free(host);
    if (status == RVS_OK)
        status = rvs_buffer_create(ctx, CL_MEM_READ_WRITE, t * n * s->es, NULL, &s->dout);
    if (status == RVS_OK)
        status = rvs_rotation_create(ctx, n, &s->rot);
    if (status == RVS_OK)
        rvs_rotation_set_path(s->rot, (enum rvs_rotation_path)args->m);
    return status;
}

static int rotation_run(struct rvs_context *ctx, void *p)
{
    struct rotation_state *s = p;
    int status = rvs_rotation_apply(ctx, s->rot, s->din, s->args.batch, s->vsini, ROUTINE_LNSTEP,
                                    RVS_ROTATION_EPS, s->dout);
    if (status == RVS_OK)
        status = clFinish(ctx->queue);
    return status;
}

static int rotation_reference(struct rvs_context *ctx, void *p)
{
    struct rotation_state *s = p;
    size_t t = s->args.batch, n = s->args.n;
    void *host = malloc(t * n * s->es);
    if (!host)
        return RVS_ERR_NOMEM;
    int status = rvs_buffer_read(ctx, s->dout, 0, t * n * s->es, host);
    for (size_t i = 0; i < t * n; i++)
        s->y_dev[i] = s->is_double ? ((double *)host)[i] : ((float *)host)[i];
    free(host);
    size_t cap = 64;
    double *w = malloc(cap * sizeof *w);
    for (size_t i = 0; i < t && w; i++) {
        /* convolve_vsini: unchanged for vsini <= 0, R = (vsini / c) / lnstep */
        double R = s->vsini[i] > 0 ? (double)(s->vsini[i] / REF_C / ROUTINE_LNSTEP) : 0.0;
        size_t nw = rvs_rotation_reference_weights(R, RVS_ROTATION_EPS, w, cap);
        if (nw > cap) {
            cap = nw;
            double *grown = realloc(w, cap * sizeof *w);
            if (!grown)
                break;
            w = grown;
            rvs_rotation_reference_weights(R, RVS_ROTATION_EPS, w, cap);
        }
        reference_convolve(s->x + i * n, n, w, nw, s->y_ref + i * n);
    }
    if (!w)
        status = RVS_ERR_NOMEM;
    free(w);
    return status;
}

/* max over templates of max |device - reference| / max |reference| of that template */
static double rotation_max_error(void *p)
{
    struct rotation_state *s = p;
    size_t n = s->args.n;
    double worst = 0;
    for (size_t t = 0; t < s->args.batch; t++) {
        double e = 0, scale = 0;
        for (size_t i = 0; i < n; i++) {
            double d = s->y_dev[t * n + i], r = s->y_ref[t * n + i];
            e = isnan(d) ? INFINITY : fmax(e, fabs(d - r));
            scale = fmax(scale, fabs(r));
        }
        worst = fmax(worst, scale > 0 ? e / scale : e);
    }
    return worst;
}

/* Direct-convolution work, 2 N K per template with the kernel at param (what the FFT replaces) */
static double rotation_flops(const struct rvs_routine_args *a)
{
    double R = a->param / 299792.458 / ROUTINE_LNSTEP;
    double k = a->param > 0 ? 2.0 * ceil(R + 1.0) + 1.0 : 1.0;
    return 2.0 * (double)a->batch * (double)a->n * k;
}

static double rotation_bytes(const struct rvs_routine_args *a)
{
    return 2.0 * (double)a->real_size * (double)a->batch * (double)a->n;
}

static double rotation_evaluations(const struct rvs_routine_args *a) { return (double)a->batch; }

/* T=4096 templates of one DESI arm (~6000 px) at vsini 10, 100, 300 km/s (R = 0.4, 4.2, 12.5 px;
 * K = 5, 13, 31 weights), through each path and through AUTO's choice. */
static const struct rvs_routine_args rotation_bench[] = {
    {.batch = 4096, .n = 6000, .m = 1, .param = 10},  {.batch = 4096, .n = 6000, .m = 2, .param = 10},
    {.batch = 4096, .n = 6000, .m = 1, .param = 100}, {.batch = 4096, .n = 6000, .m = 2, .param = 100},
    {.batch = 4096, .n = 6000, .m = 1, .param = 300}, {.batch = 4096, .n = 6000, .m = 2, .param = 300},
    {.batch = 4096, .n = 6000, .m = 0, .param = 300}, {.batch = 4096, .n = 6000, .m = 0, .k = 1, .param = 500},
    {0}};

const struct rvs_routine rvs_routine_rotation = {
    .name = "rotation",
    .args_doc = "batch=T templates, n=N px, m=path (0 auto, 1 direct, 2 FFT), k=1 mixed vsini, "
                "param=vsini km/s",
    .error_kind = "max relative (of max |value|)",
    .setup = rotation_setup,
    .run = rotation_run,
    .reference = rotation_reference,
    .max_error = rotation_max_error,
    .flops = rotation_flops,
    .bytes = rotation_bytes,
    .destroy = rotation_destroy,
    .evaluations = rotation_evaluations,
    .bench_cases = rotation_bench,
};
