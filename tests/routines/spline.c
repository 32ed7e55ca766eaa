/* routines/spline.c: the natural-spline family (src/engine/spline.c) as two routines, spline_construct
 * and spline_eval, with a plain-C long-double port of rvspecfit's spliner.c (construct, evaler)
 * as the reference. Inputs are rounded to rvs_real first, so the reference sees what the device
 * sees; the reference evaluates at lam * sqrt((1 - b) / (1 + b)) in long double.
 *
 * args: batch = T templates (construct) or E requests (eval); n = data pixels (eval);
 * m = knots N; k = number of templates (eval, low 24 bits; 0 means 1) | case flags below;
 * param = largest |velocity| in km/s (eval). */
#include <config.h>

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "routine.h"
#include "testutil.h"

#define SPLINE_CASE_LINEAR (1u << 24)  /* linearly spaced knots (default: log-uniform) */
#define SPLINE_CASE_IMPULSE (1u << 25) /* templates with one non-zero knot each */
#define SPLINE_CASE_KNOTS (1u << 26)   /* v = 0, data at knots, next to the last knot, outside */
#define SPLINE_CASE_OUTSIDE (1u << 27) /* data beyond both ends, bad template indices */
#define SPLINE_CASE_COARSE (1u << 28)  /* log grid with 3 % steps (fir's truncation fails) */
#define SPLINE_CASE_COUNT(k) ((size_t)((k) & ((1u << 24) - 1)))

struct spline_state {
    struct rvs_routine_args args;
    int eval; /* which routine */
    int fp64;
    size_t es, N, T, E, n;
    unsigned flags;
    double *xs, *y;  /* rounded knots, T x N rounded template values */
    double *lam, *v; /* rounded data wavelengths and velocities */
    cl_int *idx;
    double *dev; /* device result: coefficients (construct) or E x n values (eval) */
    long double *ref;
    struct rvs_spline_grid *grid;
    cl_mem dy, dc, didx, dv, dl, dout;
};

static void spline_destroy(void *p)
{
    struct spline_state *s = p;
    rvs_spline_grid_destroy(&s->grid);
    rvs_buffer_release(&s->dy);
    rvs_buffer_release(&s->dc);
    rvs_buffer_release(&s->didx);
    rvs_buffer_release(&s->dv);
    rvs_buffer_release(&s->dl);
    rvs_buffer_release(&s->dout);
    free(s->xs), free(s->y), free(s->lam), free(s->v), free(s->idx), free(s->dev), free(s->ref);
    free(s);
}

static double round_real(const struct spline_state *s, double x)
{
    return s->fp64 ? x : (double)(float)x;
}

/* Uploads a rounded double array as rvs_real. */
static int upload(struct rvs_context *ctx, const struct spline_state *s, const double *x,
                  size_t count, cl_mem *buf)
{
    void *host = malloc(count * s->es + 1);
    if (!host)
        return RVS_ERR_NOMEM;
    for (size_t i = 0; i < count; i++) {
        if (s->fp64)
            ((double *)host)[i] = x[i];
        else
            ((float *)host)[i] = (float)x[i];
    }
    int status = rvs_buffer_create(ctx, CL_MEM_READ_ONLY, count * s->es, host, buf);
    free(host);
    return status;
}

/* Knots and templates; spacing wide enough that +-param km/s still leaves data inside. */
static int make_templates(struct rvs_context *ctx, struct spline_state *s)
{
    size_t N = s->N, T = s->T;
    int log_step = !(s->flags & SPLINE_CASE_LINEAR);
    double x0 = 3500.0;
    double *exact = malloc(N * sizeof *exact);
    s->xs = malloc(N * sizeof *s->xs);
    s->y = malloc(T * N * sizeof *s->y);
    if (!exact || !s->xs || !s->y) {
        free(exact);
        return RVS_ERR_NOMEM;
    }
    double lstep = fmax(5e-5, 0.05 / (double)N), step = fmax(0.4, 0.05 * x0 / (double)N);
    if (s->flags & SPLINE_CASE_COARSE)
        lstep = 0.03;
    for (size_t i = 0; i < N; i++) {
        exact[i] = log_step ? x0 * exp((double)i * lstep) : x0 + (double)i * step;
        s->xs[i] = round_real(s, exact[i]);
    }
    for (size_t t = 0; t < T; t++) {
        size_t hot = (size_t)(test_uniform(0, 1) * (double)N) % N;
        for (size_t i = 0; i < N; i++) {
            double v = (s->flags & SPLINE_CASE_IMPULSE) ? (i == hot ? 1.0 : 0.0)
                                                         : test_uniform(0.2, 1.5);
            s->y[t * N + i] = round_real(s, v);
        }
    }
    int status = rvs_spline_grid_create(ctx, exact, N, log_step, &s->grid);
    free(exact);
    if (status == RVS_OK)
        status = upload(ctx, s, s->y, T * N, &s->dy);
    if (status == RVS_OK)
        status = rvs_buffer_create(ctx, CL_MEM_READ_WRITE,
                                   rvs_spline_coeffs_bytes(ctx, s->grid, T), NULL, &s->dc);
    return status;
}

/* Port of spliner.c construct() in long double: abcd[i*4 + 0..3] = A, B, C, D of interval i. */
static int reference_construct(const double *xs, const double *ys, size_t N, long double *abcd)
{
    size_t N1 = N - 1, N2 = N - 2, N3 = N - 3;
    long double *w = malloc(7 * N * sizeof *w);
    if (!w)
        return RVS_ERR_NOMEM;
    long double *h = w, *hinv = w + N, *bs = w + 2 * N, *vs = w + 3 * N, *us = w + 4 * N;
    long double *ccd = w + 5 * N, *ddd = w + 6 * N, *zs = bs; /* bs is dead once us is known */
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
    ccd[0] = N3 > 0 ? cc[0] / bb[0] : 0; /* spliner.c writes cc'[0] even when N = 3 */
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

static long double doppler(double v)
{
    long double b = (long double)v / RVS_SPEED_OF_LIGHT_KMS;
    return sqrtl((1 - b) / (1 + b));
}

/* Port of spliner.c evaler() for one point x (long double): NaN outside [xs[0], xs[N-1]); the
 * index from the uniform step, clamped, then moved to the interval holding x (the device does
 * the same; it only matters at rounding level). */
static long double reference_eval(const double *xs, size_t N, int log_step, const long double *abcd,
                                  long double x)
{
    if (!(x >= xs[0]) || !(x < xs[N - 1]))
        return NAN;
    long double u = log_step ? (logl(x) - logl(xs[0])) / logl((long double)xs[1] / xs[0])
                             : (x - xs[0]) / ((long double)xs[1] - xs[0]);
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

static int spline_setup_common(struct rvs_context *ctx, const struct rvs_routine_args *args,
                               void **out, int eval)
{
    struct spline_state *s = calloc(1, sizeof *s);
    if (!s)
        return RVS_ERR_NOMEM;
    *out = s;
    s->args = *args;
    s->eval = eval;
    s->fp64 = ctx->use_fp64;
    s->es = rvs_context_real_size(ctx);
    s->N = args->m;
    s->flags = (unsigned)(args->k & ~((1u << 24) - 1));
    s->T = eval ? (SPLINE_CASE_COUNT(args->k) ? SPLINE_CASE_COUNT(args->k) : 1) : args->batch;
    test_rng_state = 0x5151ab1eULL + args->seed * 7919 + args->batch * 31 + args->m;
    return make_templates(ctx, s);
}

static int construct_setup(struct rvs_context *ctx, const struct rvs_routine_args *args,
                           void **out)
{
    return spline_setup_common(ctx, args, out, 0);
}

static int construct_run(struct rvs_context *ctx, void *p)
{
    struct spline_state *s = p;
    int status = rvs_spline_construct(ctx, s->grid, s->dy, s->T, s->dc);
    return status == RVS_OK ? clFinish(ctx->queue) : status;
}

static int construct_reference(struct rvs_context *ctx, void *p)
{
    struct spline_state *s = p;
    size_t per = 4 * (s->N - 1);
    s->dev = malloc(s->T * per * sizeof *s->dev);
    s->ref = malloc(s->T * per * sizeof *s->ref);
    if (!s->dev || !s->ref)
        return RVS_ERR_NOMEM;
    int status = rvs_spline_coeffs_read(ctx, s->grid, s->dc, s->T, s->dev);
    for (size_t t = 0; t < s->T && status == RVS_OK; t++)
        status = reference_construct(s->xs, s->y + t * s->N, s->N, s->ref + t * per);
    return status;
}

/* Each coefficient's error times the largest factor it meets in the evaluation (h^3 for A, B;
 * h for C, D), relative to max |y|: the error it can put into a spline value. */
static double construct_max_error(void *p)
{
    struct spline_state *s = p;
    size_t per = 4 * (s->N - 1);
    double ymax = 0, e = 0;
    for (size_t i = 0; i < s->T * s->N; i++)
        ymax = fmax(ymax, fabs(s->y[i]));
    for (size_t t = 0; t < s->T; t++)
        for (size_t i = 0; i + 1 < s->N; i++) {
            double h = s->xs[i + 1] - s->xs[i];
            for (int c = 0; c < 4; c++) {
                size_t o = t * per + 4 * i + c;
                double d = fabs((double)((long double)s->dev[o] - s->ref[o]));
                e = fmax(e, isnan(d) ? INFINITY : d * (c < 2 ? h * h * h : h));
            }
        }
    return e / (ymax > 0 ? ymax : 1);
}

static int eval_setup(struct rvs_context *ctx, const struct rvs_routine_args *args, void **out)
{
    int status = spline_setup_common(ctx, args, out, 1);
    struct spline_state *s = *out;
    if (status != RVS_OK)
        return status;
    size_t N = s->N, E = args->batch, n = args->n;
    s->E = E;
    s->n = n;
    s->lam = malloc(n * sizeof *s->lam);
    s->v = malloc(E * sizeof *s->v);
    s->idx = malloc(E * sizeof *s->idx);
    if (!s->lam || !s->v || !s->idx)
        return RVS_ERR_NOMEM;
    double vmax = args->param, b = vmax / RVS_SPEED_OF_LIGHT_KMS, fmin = sqrt((1 - b) / (1 + b));
    double lo = s->xs[0] / fmin * (1 + 1e-6), hi = s->xs[N - 1] * fmin * (1 - 1e-6);
    if (s->flags & SPLINE_CASE_OUTSIDE)
        lo = s->xs[0] * 0.99, hi = s->xs[N - 1] * 1.01;
    for (size_t j = 0; j < n; j++)
        s->lam[j] = round_real(s, n == 1 ? 0.5 * (lo + hi) : lo + (hi - lo) * (double)j / (double)(n - 1));
    if (s->flags & SPLINE_CASE_KNOTS) {
        /* first knot, just below the last knot, the last knot (outside), the second to last,
         * below the first (outside), then random knots */
        double last = s->xs[N - 1];
        double below = s->fp64 ? nextafter(last, 0) : (double)nextafterf((float)last, 0);
        const double fixed[5] = {s->xs[0], below, last, s->xs[N - 2], round_real(s, s->xs[0] * 0.999)};
        for (size_t j = 0; j < n; j++)
            s->lam[j] = j < 5 ? fixed[j] : s->xs[(size_t)(test_uniform(0, 1) * (double)N) % N];
    }
    for (size_t e = 0; e < E; e++) {
        double v = e == 0 ? 0 : e == 1 ? vmax : e == 2 ? -vmax : test_uniform(-vmax, vmax);
        s->v[e] = (s->flags & SPLINE_CASE_KNOTS) ? 0 : round_real(s, v);
        s->idx[e] = (cl_int)((size_t)(test_uniform(0, 1) * (double)s->T) % s->T);
    }
    if ((s->flags & SPLINE_CASE_OUTSIDE) && E >= 2) {
        s->idx[E - 1] = (cl_int)s->T; /* no such template */
        s->idx[E - 2] = -1;
    }
    status = rvs_spline_construct(ctx, s->grid, s->dy, s->T, s->dc);
    if (status == RVS_OK)
        status = clFinish(ctx->queue);
    if (status == RVS_OK)
        status = rvs_spline_points_create(ctx, s->lam, n, &s->dl);
    if (status == RVS_OK)
        status = upload(ctx, s, s->v, E, &s->dv);
    if (status == RVS_OK)
        status = rvs_buffer_create(ctx, CL_MEM_READ_ONLY, E * sizeof(cl_int), s->idx, &s->didx);
    if (status == RVS_OK)
        status = rvs_buffer_create(ctx, CL_MEM_WRITE_ONLY, E * n * s->es, NULL, &s->dout);
    return status;
}

static int eval_run(struct rvs_context *ctx, void *p)
{
    struct spline_state *s = p;
    int status = rvs_spline_eval(ctx, s->grid, s->dc, s->T, s->didx, s->dv, s->E, s->dl, s->n,
                                 s->dout);
    return status == RVS_OK ? clFinish(ctx->queue) : status;
}

static int eval_reference(struct rvs_context *ctx, void *p)
{
    struct spline_state *s = p;
    size_t per = 4 * (s->N - 1), total = s->E * s->n;
    long double *abcd = malloc(s->T * per * sizeof *abcd);
    void *host = malloc(total * s->es + 1);
    s->dev = malloc(total * sizeof *s->dev + 1);
    s->ref = malloc(total * sizeof *s->ref + 1);
    int status = RVS_ERR_NOMEM;
    if (!abcd || !host || !s->dev || !s->ref)
        goto done;
    status = rvs_buffer_read(ctx, s->dout, 0, total * s->es, host);
    for (size_t i = 0; i < total && status == RVS_OK; i++)
        s->dev[i] = s->fp64 ? ((double *)host)[i] : ((float *)host)[i];
    for (size_t t = 0; t < s->T && status == RVS_OK; t++)
        status = reference_construct(s->xs, s->y + t * s->N, s->N, abcd + t * per);
    int log_step = !(s->flags & SPLINE_CASE_LINEAR);
    for (size_t e = 0; e < s->E && status == RVS_OK; e++) {
        long double f = doppler(s->v[e]);
        int bad = s->idx[e] < 0 || (size_t)s->idx[e] >= s->T;
        for (size_t j = 0; j < s->n; j++)
            s->ref[e * s->n + j] =
                bad ? NAN
                    : reference_eval(s->xs, s->N, log_step, abcd + (size_t)s->idx[e] * per,
                                     s->lam[j] * f);
    }
done:
    free(abcd);
    free(host);
    return status;
}

/* max |dev - ref| / max |ref| over the points inside the grid. NaN must match, except for a
 * point within rounding (of the working precision) of either end, where both answers are
 * right. A mismatch elsewhere is an infinite error. */
static double eval_max_error(void *p)
{
    struct spline_state *s = p;
    double scale = 0, e = 0, margin = s->fp64 ? 1e-14 : 1e-6;
    for (size_t i = 0; i < s->E * s->n; i++)
        if (!isnan((double)s->ref[i]))
            scale = fmax(scale, fabs((double)s->ref[i]));
    for (size_t ei = 0; ei < s->E; ei++)
        for (size_t j = 0; j < s->n; j++) {
            size_t i = ei * s->n + j;
            int rn = isnan((double)s->ref[i]), dn = isnan(s->dev[i]);
            if (rn && dn)
                continue;
            if (rn != dn) {
                double x = (double)(s->lam[j] * doppler(s->v[ei]));
                int bad = s->idx[ei] < 0 || (size_t)s->idx[ei] >= s->T;
                if (!bad && (fabs(x - s->xs[0]) <= margin * x ||
                             fabs(x - s->xs[s->N - 1]) <= margin * x))
                    continue;
                return INFINITY;
            }
            e = fmax(e, fabs((double)((long double)s->dev[i] - s->ref[i])));
        }
    return e / (scale > 0 ? scale : 1);
}

/* ~20 operations per knot over the two sweeps: the Thomas algorithm's count, whichever kernel
 * runs, so GFLOP/s compares the kernels by time (the fir kernel does ~4K + 15 per knot,
 * K = 29 in fp64 and 14 in fp32: ~131 / ~71) */
static double construct_flops(const struct rvs_routine_args *a) { return 20.0 * a->batch * a->m; }

/* templates read once, coefficients written once: 5 N rvs_real per build, the compulsory traffic
 * (not counted: the serial and segmented kernels' dd' scratch round trip, the fir kernel's tile
 * halos and grid sections, which the cache serves) */
static double construct_bytes(const struct rvs_routine_args *a)
{
    return (double)a->real_size * a->batch * (a->m + 4.0 * (a->m - 1));
}

static double construct_evaluations(const struct rvs_routine_args *a) { return (double)a->batch; }

/* ~25 operations per point besides the log and sqrt */
static double eval_flops(const struct rvs_routine_args *a) { return 25.0 * a->batch * a->n; }

/* outputs written plus one coefficient vector and two knots per point (no cache reuse) */
static double eval_bytes(const struct rvs_routine_args *a)
{
    return (double)a->real_size * a->batch * a->n * 7.0;
}

static double eval_evaluations(const struct rvs_routine_args *a) { return (double)a->batch; }

static const struct rvs_routine_args construct_bench[] = {
    {.batch = 4096, .m = 6000}, /* a DESI template arm, log-uniform */
    {0}};

static const struct rvs_routine_args eval_bench[] = {
    {.batch = 4096, .n = 2881, .m = 6000, .k = 100, .param = 1000}, /* DESI z arm */
    {.batch = 4096, .n = 2751, .m = 6000, .k = 1, .param = 1000},   /* b arm, one-template scan */
    {0}};

const struct rvs_routine rvs_routine_spline_construct = {
    .name = "spline_construct",
    .args_doc = "batch=T templates, m=N knots, k=flags (linear grid 1<<24, impulses 1<<25, "
                "coarse log grid 1<<28)",
    .error_kind = "max coeff error x h^k / max|y|",
    .setup = construct_setup,
    .run = construct_run,
    .reference = construct_reference,
    .max_error = construct_max_error,
    .flops = construct_flops,
    .bytes = construct_bytes,
    .destroy = spline_destroy,
    .evaluations = construct_evaluations,
    .bench_cases = construct_bench,
};

const struct rvs_routine rvs_routine_spline_eval = {
    .name = "spline_eval",
    .args_doc = "batch=E requests, n=data px, m=N knots, k=templates | flags (linear 1<<24, "
                "impulses 1<<25, at knots 1<<26, outside 1<<27), param=max |v| km/s",
    .error_kind = "max relative (of max|value|)",
    .setup = eval_setup,
    .run = eval_run,
    .reference = eval_reference,
    .max_error = eval_max_error,
    .flops = eval_flops,
    .bytes = eval_bytes,
    .destroy = spline_destroy,
    .evaluations = eval_evaluations,
    .bench_cases = eval_bench,
};
