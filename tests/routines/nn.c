/* routines/nn.c: the NN emulator (src/engine/nn.c) as a routine, and its plain-C reference: the
 * network computed UNFOLDED in torch's order (Linear -> SiLU -> BatchNorm, rvspecfit
 * nn/NNInterpolator.py with batchnorm_after_nl = True) with OpenBLAS cblas_sgemm in float32, so
 * the BatchNorm folding of rvs_nn_create is tested, and the parameter mapping (Mapper.forward)
 * in double rounded to float.
 *
 * batch = E parameter vectors, n = npix, m = width, k = npc, indim = 4 (teff with log10, logg,
 * feh, alpha). param is a bit set: nlayers (0..3) + 4 BatchNorm + 8 log-flux output (else
 * flux) + 16 impulse (pc_layer with one non-zero column, no bias) + 32 clip edge (pc_layer
 * biases spread over [-400, 400], so log-flux crosses +-300).
 *
 * Error: max |x_dev - x_ref| / max(1, max |x_ref|) on log-flux x (RVS_TOL_NN_FP32_REL). For
 * flux output both sides are exponentiated (exp(clip(x, -300, 300)), in rvs_real) and the error
 * is max |f_dev - f_ref| / f_ref / max(1, max |x_ref|): exp turns an absolute log error into the
 * same relative flux error, so the same tolerance applies. */
#include <config.h>

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "routine.h"
#include "testutil.h"
#include "tolerances.h"

#define NN_INDIM 4

enum {
    NN_LAYERS_MASK = 3,
    NN_WITH_BN = 4,
    NN_LOGFLUX = 8,
    NN_IMPULSE = 16,
    NN_CLIP = 32
};

/* A random network with its host arrays (the description points into them). */
struct rvs_nn_ref_net {
    struct rvs_nn_desc desc; /* first: tests/test_nn.c reads it through the pointer */
    float *store;            /* every array of the description, back to back */
};

/* The reference's entry points, also used by tests/test_nn.c (which repeats these lines). */
struct rvs_nn_ref_net *rvs_nn_ref_net_create(size_t nlayers, size_t width, size_t npc,
                                             size_t npix, int flags, unsigned seed);
void rvs_nn_ref_net_free(struct rvs_nn_ref_net *net);
void rvs_nn_ref_params(double *params, size_t count, unsigned seed);
void rvs_nn_ref_map(const struct rvs_nn_desc *d, const double *params, size_t count,
                    float *inputs);
int rvs_nn_ref_forward(const struct rvs_nn_desc *d, const double *params, size_t count,
                       float *logflux);

void rvs_nn_ref_net_free(struct rvs_nn_ref_net *net)
{
    if (net)
        free(net->store);
    free(net);
}

/* Weights of torch's default scale (uniform +-1/sqrt(in)), non-trivial BatchNorm statistics of
 * the size SiLU activations have, pc_layer biases like a log normalised flux; rvspecfit's
 * 4-parameter Mapper (log10 teff). Returns NULL without memory. */
struct rvs_nn_ref_net *rvs_nn_ref_net_create(size_t nlayers, size_t width, size_t npc,
                                             size_t npix, int flags, unsigned seed)
{
    struct rvs_nn_ref_net *net = calloc(1, sizeof *net);
    if (!net)
        return NULL;
    struct rvs_nn_desc *d = &net->desc;
    rvs_nn_desc_init(d);
    d->indim = NN_INDIM;
    d->nlayers = nlayers;
    d->width = width;
    d->npc = npc;
    d->npix = npix;
    d->with_batchnorm = (flags & NN_WITH_BN) != 0;
    size_t total = npc * npix + npix + nlayers * 4 * width;
    for (size_t l = 0; l < nlayers + 2; l++) {
        size_t in = l == 0 ? NN_INDIM : width, out = l == nlayers + 1 ? npc : width;
        total += in * out + out;
    }
    float *p = net->store = malloc(total * sizeof *p);
    if (!p) {
        free(net);
        return NULL;
    }
    test_rng_state = 0x2545F4914F6CDD1DULL + seed;
    for (size_t l = 0; l < nlayers + 2; l++) {
        size_t in = l == 0 ? NN_INDIM : width, out = l == nlayers + 1 ? npc : width;
        double r = 1.0 / sqrt((double)in);
        float *w = p, *b = p + in * out;
        p += in * out + out;
        for (size_t i = 0; i < in * out; i++)
            w[i] = (float)test_uniform(-r, r);
        for (size_t i = 0; i < out; i++)
            b[i] = (float)test_uniform(-r, r);
        d->lin[l].weight = w;
        d->lin[l].bias = b;
    }
    for (size_t l = 1; l <= nlayers; l++) {
        float *g = p, *be = p + width, *mean = p + 2 * width, *var = p + 3 * width;
        p += 4 * width;
        for (size_t i = 0; i < width; i++) {
            g[i] = (float)test_uniform(0.5, 1.5);
            be[i] = (float)test_uniform(-0.5, 0.5);
            mean[i] = (float)test_uniform(0.0, 0.3);
            var[i] = (float)test_uniform(0.02, 0.3);
        }
        d->bn[l] = (struct rvs_nn_batchnorm){g, be, mean, var, 1e-5};
    }
    float *w = p, *b = p + npc * npix;
    double r = 1.0 / sqrt((double)npc);
    size_t j0 = npc / 3;
    for (size_t i = 0; i < npix; i++) {
        for (size_t j = 0; j < npc; j++)
            w[i * npc + j] = (float)((flags & NN_IMPULSE) ? (j == j0 ? test_uniform(-2, 2) : 0.0)
                                                           : test_uniform(-r, r));
        if (flags & NN_CLIP)
            b[i] = npix > 1 ? (float)(-400.0 + 800.0 * (double)i / (double)(npix - 1)) : 350.0f;
        else
            b[i] = (flags & NN_IMPULSE) ? 0.0f : (float)test_uniform(-1.0, 0.5);
    }
    d->pc.weight = w;
    d->pc.bias = b;
    static const double center[NN_INDIM] = {3.7781512503836436, 2.5, -1.5, 0.3};
    static const double scale[NN_INDIM] = {0.2, 1.5, 1.4, 0.4};
    for (int j = 0; j < NN_INDIM; j++) {
        d->log_input[j] = j == 0;
        d->map_center[j] = center[j];
        d->map_scale[j] = scale[j];
    }
    return net;
}

/* E random parameter vectors inside the ranges of the DESI grids. */
void rvs_nn_ref_params(double *params, size_t count, unsigned seed)
{
    static const double lo[NN_INDIM] = {3000, 0, -4, -0.4}, hi[NN_INDIM] = {12000, 5, 1, 1};
    test_rng_state = 0x9E3779B97F4A7C15ULL ^ (seed * 0x100000001B3ULL);
    for (size_t i = 0; i < count * NN_INDIM; i++)
        params[i] = test_uniform(lo[i % NN_INDIM], hi[i % NN_INDIM]);
}

/* Mapper.forward in double, rounded to float: the network's inputs. */
void rvs_nn_ref_map(const struct rvs_nn_desc *d, const double *params, size_t count,
                    float *inputs)
{
    for (size_t e = 0; e < count; e++)
        for (size_t j = 0; j < d->indim; j++) {
            double x = params[e * d->indim + j];
            double y = d->log_input[j] ? log10(x) : x;
            inputs[e * d->indim + j] = (float)((y - d->map_center[j]) / d->map_scale[j]);
        }
}

static float silu(float v) { return v / (1.0f + expf(-v)); }

/* Y (rows x out) = X W^T + b, then SiLU when `act`. */
static void linear(const float *x, size_t rows, size_t in, size_t out, const float *w,
                   const float *b, int act, float *y)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)rows, (blasint)out,
                (blasint)in, 1.0f, x, (blasint)in, w, (blasint)in, 0.0f, y, (blasint)out);
    for (size_t e = 0; e < rows; e++)
        for (size_t o = 0; o < out; o++) {
            float v = y[e * out + o] + b[o];
            y[e * out + o] = act ? silu(v) : v;
        }
}

/* The unfolded network on the host, in float32 like torch: logflux is count x npix. */
int rvs_nn_ref_forward(const struct rvs_nn_desc *d, const double *params, size_t count,
                       float *logflux)
{
    size_t cols = d->width > d->npc ? d->width : d->npc;
    float *a = malloc(count * (cols > d->indim ? cols : d->indim) * sizeof *a);
    float *b = malloc(count * cols * sizeof *b);
    if (!a || !b) {
        free(a), free(b);
        return RVS_ERR_NOMEM;
    }
    rvs_nn_ref_map(d, params, count, a);
    for (size_t l = 0; l < d->nlayers + 2; l++) {
        size_t in = l == 0 ? d->indim : d->width, out = l == d->nlayers + 1 ? d->npc : d->width;
        linear(a, count, in, out, d->lin[l].weight, d->lin[l].bias, 1, b);
        if (d->with_batchnorm && l >= 1 && l <= d->nlayers) {
            const struct rvs_nn_batchnorm *bn = &d->bn[l];
            for (size_t o = 0; o < out; o++) {
                float invstd = 1.0f / sqrtf(bn->running_var[o] + (float)bn->eps);
                for (size_t e = 0; e < count; e++) {
                    float *v = &b[e * out + o];
                    *v = (*v - bn->running_mean[o]) * invstd * bn->weight[o] + bn->bias[o];
                }
            }
        }
        float *t = a;
        a = b;
        b = t;
    }
    linear(a, count, d->npc, d->npix, d->pc.weight, d->pc.bias, 0, logflux);
    free(a), free(b);
    return RVS_OK;
}

/* ---------------------------------------------------------------- the routine */

struct nn_state {
    struct rvs_routine_args args;
    int flags;
    size_t es;     /* bytes of the output element */
    size_t real;   /* bytes of rvs_real */
    struct rvs_nn_ref_net *net;
    struct rvs_nn *nn;
    double *params;  /* as the device sees them (rounded to rvs_real) */
    double *got;     /* device output, widened */
    float *ref;      /* reference log-flux */
    cl_mem dparams, dout;
};

static void nn_destroy(void *p)
{
    struct nn_state *s = p;
    rvs_nn_destroy(&s->nn);
    rvs_nn_ref_net_free(s->net);
    rvs_buffer_release(&s->dparams);
    rvs_buffer_release(&s->dout);
    free(s->params), free(s->got), free(s->ref);
    free(s);
}

static int nn_setup(struct rvs_context *ctx, const struct rvs_routine_args *args, void **out)
{
    struct nn_state *s = calloc(1, sizeof *s);
    if (!s)
        return RVS_ERR_NOMEM;
    *out = s;
    s->args = *args;
    s->flags = (int)args->param;
    s->real = rvs_context_real_size(ctx);
    s->es = (s->flags & NN_LOGFLUX) ? sizeof(float) : s->real;
    size_t E = args->batch, npix = args->n;
    s->net = rvs_nn_ref_net_create((size_t)(s->flags & NN_LAYERS_MASK), args->m, args->k, npix,
                                   s->flags, args->seed);
    s->params = malloc(E * NN_INDIM * sizeof *s->params);
    s->got = malloc(E * npix * sizeof *s->got);
    s->ref = malloc(E * npix * sizeof *s->ref);
    void *host = malloc(E * NN_INDIM * s->real);
    if (!s->net || !s->params || !s->got || !s->ref || !host) {
        free(host);
        return RVS_ERR_NOMEM;
    }
    rvs_nn_ref_params(s->params, E, args->seed);
    for (size_t i = 0; i < E * NN_INDIM; i++) {
        if (s->real == sizeof(float))
            s->params[i] = ((float *)host)[i] = (float)s->params[i];
        else
            ((double *)host)[i] = s->params[i];
    }
    int status = rvs_nn_create(ctx, &s->net->desc, &s->nn);
    if (status == RVS_OK)
        status = rvs_buffer_create(ctx, CL_MEM_READ_ONLY, E * NN_INDIM * s->real, host,
                                   &s->dparams);
    if (status == RVS_OK)
        status = rvs_buffer_create(ctx, CL_MEM_READ_WRITE, E * npix * s->es, NULL, &s->dout);
    free(host);
    return status;
}

static int nn_run(struct rvs_context *ctx, void *p)
{
    struct nn_state *s = p;
    int status = rvs_nn_forward(ctx, s->nn, s->dparams, s->args.batch, s->dout,
                                (s->flags & NN_LOGFLUX) ? RVS_NN_LOGFLUX_F32 : RVS_NN_FLUX_REAL);
    if (status == RVS_OK)
        status = clFinish(ctx->queue);
    return status;
}

static int nn_reference(struct rvs_context *ctx, void *p)
{
    struct nn_state *s = p;
    size_t n = s->args.batch * s->args.n;
    void *host = malloc(n * s->es);
    if (!host)
        return RVS_ERR_NOMEM;
    int status = rvs_buffer_read(ctx, s->dout, 0, n * s->es, host);
    for (size_t i = 0; i < n; i++)
        s->got[i] = s->es == sizeof(float) ? ((float *)host)[i] : ((double *)host)[i];
    free(host);
    if (status == RVS_OK)
        status = rvs_nn_ref_forward(&s->net->desc, s->params, s->args.batch, s->ref);
    return status;
}

static double clip300(double x) { return x > 300 ? 300 : x < -300 ? -300 : x; }

static double nn_max_error(void *p)
{
    struct nn_state *s = p;
    size_t n = s->args.batch * s->args.n;
    double scale = 1, e = 0;
    for (size_t i = 0; i < n; i++)
        scale = fmax(scale, fabs((double)s->ref[i]));
    int single = s->real == sizeof(float);
    /* below this, flux is compared absolutely: fp32 subnormals may be flushed to zero */
    double floor = single ? 1e-30 : 1e-300, big = single ? log(FLT_MAX) : log(DBL_MAX);
    for (size_t i = 0; i < n; i++) {
        double d;
        if (s->flags & NN_LOGFLUX) {
            d = fabs(s->got[i] - (double)s->ref[i]) / scale;
        } else {
            double x = clip300((double)s->ref[i]);
            double want = single ? (double)(float)exp(x) : exp(x);
            if (s->got[i] == want)
                d = 0;
            else if (isinf(want) || isinf(s->got[i])) /* overflow of fp32 right at its edge */
                d = x > big - RVS_TOL_NN_FP32_REL * scale ? 0 : INFINITY;
            else
                d = fabs(s->got[i] - want) / (fmax(want, floor) * scale);
        }
        if (isnan(d))
            d = INFINITY;
        e = fmax(e, d);
    }
    return e;
}

static double nn_flops(const struct rvs_routine_args *a)
{
    double E = (double)a->batch, w = (double)a->m, npc = (double)a->k, npix = (double)a->n;
    double nl = (double)((int)a->param & NN_LAYERS_MASK);
    return 2.0 * E * (NN_INDIM * w + nl * w * w + w * npc + npc * npix);
}

/* What the GEMMs and epilogues move at least: each layer reads its input and weights and writes
 * its output, which the epilogue reads and writes again. */
static double nn_bytes(const struct rvs_routine_args *a)
{
    double E = (double)a->batch, w = (double)a->m, npc = (double)a->k, npix = (double)a->n;
    int nl = (int)a->param & NN_LAYERS_MASK;
    double out_es = ((int)a->param & NN_LOGFLUX) ? 4.0 : (double)a->real_size;
    double bytes = 4.0 * E * NN_INDIM * (a->real_size / 4.0 + 1.0); /* the mapping */
    for (int l = 0; l < nl + 2; l++) {
        double in = l == 0 ? NN_INDIM : w, out = l == nl + 1 ? npc : w;
        bytes += 4.0 * (E * in + in * out + out + 3.0 * E * out);
    }
    return bytes + 4.0 * (E * npc + npc * npix + npix + 2.0 * E * npix) + out_es * E * npix;
}

static double nn_evaluations(const struct rvs_routine_args *a) { return (double)a->batch; }

static const struct rvs_routine_args nn_bench[] = {
    {.batch = 4096, .n = 6000, .m = 256, .k = 200, .param = 2 + NN_WITH_BN},
    {.batch = 4096, .n = 2881, .m = 256, .k = 200, .param = 2 + NN_WITH_BN}, /* DESI z arm */
    {.batch = 4096, .n = 6000, .m = 256, .k = 200, .param = 2 + NN_WITH_BN + NN_LOGFLUX},
    {0}};

const struct rvs_routine rvs_routine_nn = {
    .name = "nn",
    .args_doc = "batch=E n=npix m=width k=npc param=nlayers+4bn+8logflux+16impulse+32clip",
    .error_kind = "max |dlogflux|/max(1,max|logflux|)",
    .setup = nn_setup,
    .run = nn_run,
    .reference = nn_reference,
    .max_error = nn_max_error,
    .flops = nn_flops,
    .bytes = nn_bytes,
    .destroy = nn_destroy,
    .evaluations = nn_evaluations,
    .bench_cases = nn_bench,
};
