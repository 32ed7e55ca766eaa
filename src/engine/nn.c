/* nn.c: rvspecfit's NN template emulator (nn/NNInterpolator.py) on the device. At creation the
 * network is checked, its inference-time BatchNorm layers are folded into the following linear
 * layers (in double), and the weights are uploaded. A forward pass is then one GEMM per layer
 * over the whole batch (rvs_gemm_f32: CLBlast on GPUs, OpenBLAS on CPU devices) with a small
 * fused epilogue after each: bias + SiLU for hidden layers, bias + exp(clip) (or bias only, for
 * log-flux) after the last. See include/rvsfit/nn.h for the network and the description. */
#include <config.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/internal.h"
#include "rvsfit/nn.h"

struct nn_layer {
    size_t in, out;
    cl_mem weight; /* out x in float, BatchNorm of the previous layer folded in */
    cl_mem bias;   /* out float */
};

struct rvs_nn {
    struct rvs_context *ctx; /* the context the buffers and kernels belong to */
    size_t indim, nlayers, width, npc, npix;
    size_t nlin; /* linear+SiLU layers before pc_layer: nlayers + 2 */
    unsigned log_mask;
    cl_mem coef; /* 3 x indim rvs_acc: M, S, 10^M per column */
    struct nn_layer lin[RVS_NN_MAX_LINEAR];
    struct nn_layer pc;
    cl_kernel k_map, k_silu, k_bias, k_flux;
    cl_kernel k_map_t, k_silu_t, k_flux_t; /* rvs_nn_forward_tangent's epilogues */
    /* Work space, grown on demand: two ping-pong activations of rows x ws_cols floats, and
     * the float pc_layer output before widening to rvs_real (fp64 flux output only). */
    size_t ws_cols, ws_rows, pcout_rows;
    cl_mem ws[2], pcout;
};

void rvs_nn_desc_init(struct rvs_nn_desc *desc)
{
    memset(desc, 0, sizeof *desc);
}

size_t rvs_nn_indim(const struct rvs_nn *nn) { return nn->indim; }
size_t rvs_nn_npix(const struct rvs_nn *nn) { return nn->npix; }

/* Every value of a host array is finite; logs which one is not. */
static int check_finite(const float *x, size_t n, const char *what, size_t layer)
{
    if (!x) {
        rvs_log(RVS_LOG_ERROR, "nn", "network description lacks %s of layer %zu", what, layer);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) {
            rvs_log(RVS_LOG_ERROR, "nn",
                    "%s of layer %zu has a non-finite value (%g at index %zu); the network file "
                    "is corrupt or the training diverged",
                    what, layer, (double)x[i], i);
            return RVS_ERR_INVALID_ARGUMENT;
        }
    return RVS_OK;
}

static int check_desc(const struct rvs_nn_desc *d)
{
    if (d->indim == 0 || d->width == 0 || d->npc == 0 || d->npix == 0) {
        rvs_log(RVS_LOG_ERROR, "nn",
                "network shape indim=%zu width=%zu npc=%zu npix=%zu: every size must be positive",
                d->indim, d->width, d->npc, d->npix);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (d->indim > RVS_NN_MAX_INPUTS || d->nlayers > RVS_NN_MAX_HIDDEN) {
        rvs_log(RVS_LOG_ERROR, "nn",
                "network has %zu inputs and %zu hidden layers; this build supports at most %d "
                "and %d (RVS_NN_MAX_INPUTS, RVS_NN_MAX_HIDDEN)",
                d->indim, d->nlayers, RVS_NN_MAX_INPUTS, RVS_NN_MAX_HIDDEN);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    /* the kernels index columns with uint; far beyond any real network */
    size_t limit = (size_t)1 << 24;
    if (d->width > limit || d->npc > limit || d->npix > limit) {
        rvs_log(RVS_LOG_ERROR, "nn", "network sizes width=%zu npc=%zu npix=%zu are implausible",
                d->width, d->npc, d->npix);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    int status;
    for (size_t l = 0; l < d->nlayers + 2; l++) {
        size_t in = l == 0 ? d->indim : d->width, out = l == d->nlayers + 1 ? d->npc : d->width;
        if ((status = check_finite(d->lin[l].weight, in * out, "weight", l)) != RVS_OK ||
            (status = check_finite(d->lin[l].bias, out, "bias", l)) != RVS_OK)
            return status;
    }
    if ((status = check_finite(d->pc.weight, d->npc * d->npix, "pc_layer weight", 0)) != RVS_OK ||
        (status = check_finite(d->pc.bias, d->npix, "pc_layer bias", 0)) != RVS_OK)
        return status;
    if (d->with_batchnorm)
        for (size_t l = 1; l <= d->nlayers; l++) {
            const struct rvs_nn_batchnorm *bn = &d->bn[l];
            if ((status = check_finite(bn->weight, d->width, "BatchNorm weight", l)) != RVS_OK ||
                (status = check_finite(bn->bias, d->width, "BatchNorm bias", l)) != RVS_OK ||
                (status = check_finite(bn->running_mean, d->width, "BatchNorm running_mean",
                                       l)) != RVS_OK ||
                (status = check_finite(bn->running_var, d->width, "BatchNorm running_var", l)) !=
                    RVS_OK)
                return status;
            for (size_t k = 0; k < d->width; k++)
                if (!(isfinite(bn->eps) && (double)bn->running_var[k] + bn->eps > 0)) {
                    rvs_log(RVS_LOG_ERROR, "nn",
                            "BatchNorm of layer %zu: running_var[%zu] + eps = %g + %g is not "
                            "positive",
                            l, k, (double)bn->running_var[k], bn->eps);
                    return RVS_ERR_INVALID_ARGUMENT;
                }
        }
    for (size_t j = 0; j < d->indim; j++)
        if (!isfinite(d->map_center[j]) || !isfinite(d->map_scale[j]) || d->map_scale[j] == 0 ||
            (d->log_input[j] && !isfinite(pow(10.0, d->map_center[j])))) {
            rvs_log(RVS_LOG_ERROR, "nn",
                    "parameter mapping of input %zu (M = %g, S = %g%s) is unusable: M and S "
                    "must be finite and S non-zero",
                    j, d->map_center[j], d->map_scale[j], d->log_input[j] ? ", log10" : "");
            return RVS_ERR_INVALID_ARGUMENT;
        }
    return RVS_OK;
}

/* Layer l's weights with the BatchNorm that follows the previous layer's SiLU folded in
 * (when there is one): BN(h) = a h + c per channel with a = gamma / sqrt(var + eps),
 * c = beta - mean a (torch.nn.BatchNorm1d in eval mode), so W (a h + c) + b =
 * (W diag(a)) h + (b + W c). Computed in double, rounded to float once. ac holds 2 x in
 * doubles of scratch. */
static int fold_layer(const struct rvs_nn_desc *d, size_t l, size_t in, size_t out, double *ac,
                      float *w, float *b)
{
    const float *w0 = d->lin[l].weight, *b0 = d->lin[l].bias;
    int has_bn = d->with_batchnorm && l >= 2 && l - 1 <= d->nlayers;
    if (!has_bn) {
        memcpy(w, w0, in * out * sizeof *w);
        memcpy(b, b0, out * sizeof *b);
        return RVS_OK;
    }
    const struct rvs_nn_batchnorm *bn = &d->bn[l - 1];
    double *a = ac, *c = ac + in;
    for (size_t k = 0; k < in; k++) {
        a[k] = (double)bn->weight[k] / sqrt((double)bn->running_var[k] + bn->eps);
        c[k] = (double)bn->bias[k] - (double)bn->running_mean[k] * a[k];
    }
    for (size_t o = 0; o < out; o++) {
        double acc = b0[o];
        for (size_t k = 0; k < in; k++) {
            double wk = w0[o * in + k];
            w[o * in + k] = (float)(wk * a[k]);
            acc += wk * c[k];
            if (!isfinite(w[o * in + k])) {
                rvs_log(RVS_LOG_ERROR, "nn",
                        "folding BatchNorm %zu into layer %zu overflows float (weight %g times "
                        "gamma/sqrt(var+eps) = %g); running_var is too small",
                        l - 1, l, wk, a[k]);
                return RVS_ERR_INVALID_ARGUMENT;
            }
        }
        b[o] = (float)acc;
        if (!isfinite(b[o])) {
            rvs_log(RVS_LOG_ERROR, "nn", "folding BatchNorm %zu into layer %zu overflows float",
                    l - 1, l);
            return RVS_ERR_INVALID_ARGUMENT;
        }
    }
    return RVS_OK;
}

static void release_layer(struct nn_layer *layer)
{
    rvs_buffer_release(&layer->weight);
    rvs_buffer_release(&layer->bias);
}

static void release_kernel(cl_kernel *k)
{
    if (*k)
        clReleaseKernel(*k);
    *k = NULL;
}

void rvs_nn_destroy(struct rvs_nn **nn)
{
    if (!nn || !*nn)
        return;
    struct rvs_nn *n = *nn;
    for (size_t l = 0; l < RVS_NN_MAX_LINEAR; l++)
        release_layer(&n->lin[l]);
    release_layer(&n->pc);
    rvs_buffer_release(&n->coef);
    rvs_buffer_release(&n->ws[0]);
    rvs_buffer_release(&n->ws[1]);
    rvs_buffer_release(&n->pcout);
    release_kernel(&n->k_map);
    release_kernel(&n->k_silu);
    release_kernel(&n->k_bias);
    release_kernel(&n->k_flux);
    release_kernel(&n->k_map_t);
    release_kernel(&n->k_silu_t);
    release_kernel(&n->k_flux_t);
    free(n);
    *nn = NULL;
}

int rvs_nn_create(struct rvs_context *ctx, const struct rvs_nn_desc *desc, struct rvs_nn **out)
{
    int status = RVS_OK;
    struct rvs_nn *nn = NULL;
    float *w = NULL, *b = NULL;
    double *ac = NULL;
    if (!out)
        return RVS_ERR_INVALID_ARGUMENT;
    *out = NULL;
    if (!ctx || !desc) {
        rvs_log(RVS_LOG_ERROR, "nn", "rvs_nn_create needs a context and a description");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    RVS_TRY(check_desc(desc));
    nn = rvs_calloc(1, sizeof *nn);
    if (!nn)
        return RVS_ERR_NOMEM;
    nn->ctx = ctx;
    nn->indim = desc->indim;
    nn->nlayers = desc->nlayers;
    nn->width = desc->width;
    nn->npc = desc->npc;
    nn->npix = desc->npix;
    nn->nlin = desc->nlayers + 2;
    nn->ws_cols = desc->width > desc->npc ? desc->width : desc->npc;
    if (desc->indim > nn->ws_cols)
        nn->ws_cols = desc->indim;

    /* the mapping constants, in the kernels' accumulation type */
    double coef[3 * RVS_NN_MAX_INPUTS];
    float coef_f[3 * RVS_NN_MAX_INPUTS];
    for (size_t j = 0; j < desc->indim; j++) {
        coef[3 * j] = desc->map_center[j];
        coef[3 * j + 1] = desc->map_scale[j];
        coef[3 * j + 2] = pow(10.0, desc->map_center[j]);
        for (int t = 0; t < 3; t++)
            coef_f[3 * j + t] = (float)coef[3 * j + t];
        if (desc->log_input[j])
            nn->log_mask |= 1u << j;
    }
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, 3 * desc->indim * rvs_context_real_size(ctx),
                              ctx->use_fp64 ? (void *)coef : (void *)coef_f, &nn->coef));

    size_t max_w = desc->npc * desc->npix, max_b = desc->npix;
    for (size_t l = 0; l < nn->nlin; l++) {
        struct nn_layer *layer = &nn->lin[l];
        layer->in = l == 0 ? desc->indim : desc->width;
        layer->out = l == nn->nlin - 1 ? desc->npc : desc->width;
        if (layer->in * layer->out > max_w)
            max_w = layer->in * layer->out;
        if (layer->out > max_b)
            max_b = layer->out;
    }
    w = rvs_malloc(max_w * sizeof *w);
    b = rvs_malloc(max_b * sizeof *b);
    ac = rvs_malloc(2 * (desc->width > desc->indim ? desc->width : desc->indim) * sizeof *ac);
    if (!w || !b || !ac) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t l = 0; l < nn->nlin; l++) {
        struct nn_layer *layer = &nn->lin[l];
        RVS_TRY(fold_layer(desc, l, layer->in, layer->out, ac, w, b));
        RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, layer->in * layer->out * sizeof *w, w,
                                  &layer->weight));
        RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, layer->out * sizeof *b, b,
                                  &layer->bias));
    }
    nn->pc.in = desc->npc;
    nn->pc.out = desc->npix;
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, desc->npc * desc->npix * sizeof(float),
                              desc->pc.weight, &nn->pc.weight));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, desc->npix * sizeof(float), desc->pc.bias,
                              &nn->pc.bias));

    RVS_TRY(rvs_context_kernel(ctx, "nn", "rvs_nn_map", &nn->k_map));
    RVS_TRY(rvs_context_kernel(ctx, "nn", "rvs_nn_bias_silu", &nn->k_silu));
    RVS_TRY(rvs_context_kernel(ctx, "nn", "rvs_nn_bias", &nn->k_bias));
    RVS_TRY(rvs_context_kernel(ctx, "nn", "rvs_nn_bias_flux", &nn->k_flux));
    RVS_TRY(rvs_context_kernel(ctx, "nn", "rvs_nn_map_tangent", &nn->k_map_t));
    RVS_TRY(rvs_context_kernel(ctx, "nn", "rvs_nn_bias_silu_tangent", &nn->k_silu_t));
    RVS_TRY(rvs_context_kernel(ctx, "nn", "rvs_nn_bias_flux_tangent", &nn->k_flux_t));
    rvs_log(RVS_LOG_DEBUG, "nn",
            "network indim=%zu nlayers=%zu width=%zu npc=%zu npix=%zu%s on %s", nn->indim,
            nn->nlayers, nn->width, nn->npc, nn->npix,
            desc->with_batchnorm ? " (BatchNorm folded)" : "", ctx->caps.device_name);
    *out = nn;
    nn = NULL;
cleanup:
    if (status != RVS_OK && nn)
        rvs_log(RVS_LOG_ERROR, "nn", "could not set up the NN emulator on %s: %s",
                ctx->caps.device_name, rvs_strerror(status));
    rvs_nn_destroy(&nn);
    free(w);
    free(b);
    free(ac);
    return status;
}

/* (Re)allocates *buf for rows x cols floats when *cap_rows < rows. On failure the buffer is
 * gone and *cap_rows is 0, so the next call tries again. */
static int grow(struct rvs_context *ctx, cl_mem *buf, size_t *cap_rows, size_t rows, size_t cols)
{
    if (*cap_rows >= rows && *buf)
        return RVS_OK;
    rvs_buffer_release(buf);
    *cap_rows = 0;
    int status = rvs_buffer_create(ctx, CL_MEM_READ_WRITE, rows * cols * sizeof(float), NULL, buf);
    if (status == RVS_OK)
        *cap_rows = rows;
    else
        rvs_log(RVS_LOG_WARNING, "nn",
                "no device memory for NN work space of %zu x %zu floats; use a smaller batch",
                rows, cols);
    return status;
}

/* Both ping-pong activation buffers hold at least `rows` rows; ws_rows counts only once both
 * exist. */
static int grow_ws(struct rvs_context *ctx, struct rvs_nn *nn, size_t rows)
{
    int status = RVS_OK;
    if (nn->ws_rows < rows) {
        size_t rows0 = 0, rows1 = 0;
        nn->ws_rows = 0;
        RVS_TRY(grow(ctx, &nn->ws[0], &rows0, rows, nn->ws_cols));
        RVS_TRY(grow(ctx, &nn->ws[1], &rows1, rows, nn->ws_cols));
        nn->ws_rows = rows;
    }
cleanup:
    return status;
}

static int check_call(struct rvs_context *ctx, struct rvs_nn *nn, cl_mem params, size_t count,
                      cl_mem out, size_t out_bytes_per_row, const char *out_name)
{
    int status = RVS_OK;
    if (!ctx || !nn || !params || !out) {
        rvs_log(RVS_LOG_ERROR, "nn", "NN call without a context, network or buffer");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (ctx != nn->ctx) {
        rvs_log(RVS_LOG_ERROR, "nn", "the network was created on another context");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    /* row counts reach OpenBLAS as a 32-bit int and the kernels as uint */
    if (count > INT32_MAX || count > SIZE_MAX / out_bytes_per_row) {
        rvs_log(RVS_LOG_ERROR, "nn", "batch of %zu parameter vectors is too large", count);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    RVS_TRY(rvs_buffer_check_size("nn", params, count * nn->indim * rvs_context_real_size(ctx), "parameter"));
    RVS_TRY(rvs_buffer_check_size("nn", out, count * out_bytes_per_row, out_name));
cleanup:
    return status;
}

static int launch_map(struct rvs_context *ctx, struct rvs_nn *nn, cl_mem params, size_t count,
                      cl_mem inputs)
{
    int status = RVS_OK;
    cl_uint n = (cl_uint)count, indim = (cl_uint)nn->indim, mask = nn->log_mask;
    RVS_TRY(rvs_kernel_arg(nn->k_map, 0, sizeof params, &params));
    RVS_TRY(rvs_kernel_arg(nn->k_map, 1, sizeof n, &n));
    RVS_TRY(rvs_kernel_arg(nn->k_map, 2, sizeof indim, &indim));
    RVS_TRY(rvs_kernel_arg(nn->k_map, 3, sizeof mask, &mask));
    RVS_TRY(rvs_kernel_arg(nn->k_map, 4, sizeof nn->coef, &nn->coef));
    RVS_TRY(rvs_kernel_arg(nn->k_map, 5, sizeof inputs, &inputs));
    RVS_TRY(rvs_kernel_launch_1d(ctx, nn->k_map, count, 0));
cleanup:
    return status;
}

int rvs_nn_map(struct rvs_context *ctx, struct rvs_nn *nn, cl_mem params, size_t count,
               cl_mem inputs)
{
    int status = RVS_OK;
    if (count == 0)
        return RVS_OK;
    RVS_TRY(check_call(ctx, nn, params, count, inputs, nn ? nn->indim * sizeof(float) : 1,
                       "network input"));
    RVS_TRY(launch_map(ctx, nn, params, count, inputs));
cleanup:
    return status;
}

/* Epilogue over rows x cols of h: kernel(h, bias, cols, rows[, extra]). */
static int launch_epilogue(struct rvs_context *ctx, cl_kernel k, cl_mem h, cl_mem bias,
                           size_t cols, size_t rows, cl_mem extra)
{
    int status = RVS_OK;
    cl_uint c = (cl_uint)cols, r = (cl_uint)rows;
    RVS_TRY(rvs_kernel_arg(k, 0, sizeof h, &h));
    RVS_TRY(rvs_kernel_arg(k, 1, sizeof bias, &bias));
    RVS_TRY(rvs_kernel_arg(k, 2, sizeof c, &c));
    RVS_TRY(rvs_kernel_arg(k, 3, sizeof r, &r));
    if (extra)
        RVS_TRY(rvs_kernel_arg(k, 4, sizeof extra, &extra));
    RVS_TRY(rvs_kernel_launch_2d(ctx, k, cols, rows, 0, 1));
cleanup:
    return status;
}

/* Y (rows x out) = X (rows x in) W^T, torch's Linear without its bias. */
static int layer_gemm(struct rvs_context *ctx, const struct nn_layer *layer, size_t rows,
                      cl_mem x, cl_mem y)
{
    return rvs_gemm_f32(ctx, RVS_NO_TRANS, RVS_TRANS, rows, layer->out, layer->in, 1.0f, x, 0,
                        layer->in, layer->weight, 0, layer->in, 0.0f, y, 0, layer->out);
}

int rvs_nn_forward(struct rvs_context *ctx, struct rvs_nn *nn, cl_mem params, size_t count,
                   cl_mem out, enum rvs_nn_output what)
{
    int status = RVS_OK;
    if (what != RVS_NN_FLUX_REAL && what != RVS_NN_LOGFLUX_F32) {
        rvs_log(RVS_LOG_ERROR, "nn", "unknown NN output kind %d", (int)what);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (count == 0)
        return RVS_OK;
    size_t out_es = what == RVS_NN_FLUX_REAL && ctx ? rvs_context_real_size(ctx) : sizeof(float);
    RVS_TRY(check_call(ctx, nn, params, count, out, nn ? nn->npix * out_es : 1, "output"));
    RVS_TRY(grow_ws(ctx, nn, count));
    /* the float pc_layer output goes straight into `out` unless it must be widened to double */
    cl_mem pc_dest = out;
    if (what == RVS_NN_FLUX_REAL && out_es != sizeof(float)) {
        RVS_TRY(grow(ctx, &nn->pcout, &nn->pcout_rows, count, nn->npix));
        pc_dest = nn->pcout;
    }

    RVS_TRY(launch_map(ctx, nn, params, count, nn->ws[0]));
    int cur = 0;
    for (size_t l = 0; l < nn->nlin; l++) {
        RVS_TRY(layer_gemm(ctx, &nn->lin[l], count, nn->ws[cur], nn->ws[1 - cur]));
        RVS_TRY(launch_epilogue(ctx, nn->k_silu, nn->ws[1 - cur], nn->lin[l].bias,
                                nn->lin[l].out, count, NULL));
        cur = 1 - cur;
    }
    RVS_TRY(layer_gemm(ctx, &nn->pc, count, nn->ws[cur], pc_dest));
    if (what == RVS_NN_LOGFLUX_F32)
        RVS_TRY(launch_epilogue(ctx, nn->k_bias, out, nn->pc.bias, nn->npix, count, NULL));
    else
        RVS_TRY(launch_epilogue(ctx, nn->k_flux, pc_dest, nn->pc.bias, nn->npix, count, out));
cleanup:
    return status;
}

/* Tangent epilogue over count x cols values and their ntan tangent planes:
 * kernel(h, bias, cols, count, ntan[, out]). */
static int launch_tangent_epilogue(struct rvs_context *ctx, cl_kernel k, cl_mem h, cl_mem bias,
                                   size_t cols, size_t count, size_t ntan, cl_mem out)
{
    int status = RVS_OK;
    cl_uint c = (cl_uint)cols, n = (cl_uint)count, t = (cl_uint)ntan;
    RVS_TRY(rvs_kernel_arg(k, 0, sizeof h, &h));
    RVS_TRY(rvs_kernel_arg(k, 1, sizeof bias, &bias));
    RVS_TRY(rvs_kernel_arg(k, 2, sizeof c, &c));
    RVS_TRY(rvs_kernel_arg(k, 3, sizeof n, &n));
    RVS_TRY(rvs_kernel_arg(k, 4, sizeof t, &t));
    if (out)
        RVS_TRY(rvs_kernel_arg(k, 5, sizeof out, &out));
    RVS_TRY(rvs_kernel_launch_2d(ctx, k, cols, count, 0, 1));
cleanup:
    return status;
}

/* Forward-mode differentiation (see nn.h): the tangent rows ride through the same GEMMs as the
 * values, one GEMM per layer over rows = (1 + indim) count. Each row of a GEMM result depends
 * on that row of its input only (src/gemm_fixed.c on CPU devices), so a vector's value rows are
 * rvs_nn_forward's and neither depends on the rest of the batch. */
int rvs_nn_forward_tangent(struct rvs_context *ctx, struct rvs_nn *nn, cl_mem params,
                           size_t count, cl_mem out, enum rvs_nn_output what)
{
    int status = RVS_OK;
    if (what != RVS_NN_FLUX_REAL && what != RVS_NN_LOGFLUX_F32) {
        rvs_log(RVS_LOG_ERROR, "nn", "unknown NN output kind %d", (int)what);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (count == 0)
        return RVS_OK;
    if (!nn) {
        rvs_log(RVS_LOG_ERROR, "nn", "NN call without a network");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    size_t planes = 1 + nn->indim;
    if (count > INT32_MAX / planes) {
        rvs_log(RVS_LOG_ERROR, "nn", "batch of %zu parameter vectors is too large for "
                "tangents (%zu rows each); split it", count, planes);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    size_t rows = planes * count;
    size_t out_es = what == RVS_NN_FLUX_REAL && ctx ? rvs_context_real_size(ctx) : sizeof(float);
    RVS_TRY(check_call(ctx, nn, params, count, out, planes * nn->npix * out_es, "output"));
    RVS_TRY(grow_ws(ctx, nn, rows));
    cl_mem pc_dest = out;
    if (what == RVS_NN_FLUX_REAL && out_es != sizeof(float)) {
        RVS_TRY(grow(ctx, &nn->pcout, &nn->pcout_rows, rows, nn->npix));
        pc_dest = nn->pcout;
    }

    /* the map kernel has rvs_nn_map's arguments */
    cl_uint n = (cl_uint)count, indim = (cl_uint)nn->indim, mask = nn->log_mask;
    cl_kernel k = nn->k_map_t;
    RVS_TRY(rvs_kernel_arg(k, 0, sizeof params, &params));
    RVS_TRY(rvs_kernel_arg(k, 1, sizeof n, &n));
    RVS_TRY(rvs_kernel_arg(k, 2, sizeof indim, &indim));
    RVS_TRY(rvs_kernel_arg(k, 3, sizeof mask, &mask));
    RVS_TRY(rvs_kernel_arg(k, 4, sizeof nn->coef, &nn->coef));
    RVS_TRY(rvs_kernel_arg(k, 5, sizeof nn->ws[0], &nn->ws[0]));
    RVS_TRY(rvs_kernel_launch_1d(ctx, k, count, 0));
    int cur = 0;
    for (size_t l = 0; l < nn->nlin; l++) {
        RVS_TRY(layer_gemm(ctx, &nn->lin[l], rows, nn->ws[cur], nn->ws[1 - cur]));
        RVS_TRY(launch_tangent_epilogue(ctx, nn->k_silu_t, nn->ws[1 - cur], nn->lin[l].bias,
                                        nn->lin[l].out, count, nn->indim, NULL));
        cur = 1 - cur;
    }
    RVS_TRY(layer_gemm(ctx, &nn->pc, rows, nn->ws[cur], pc_dest));
    if (what == RVS_NN_LOGFLUX_F32) /* log-flux tangents are the GEMM's rows as they are */
        RVS_TRY(launch_epilogue(ctx, nn->k_bias, out, nn->pc.bias, nn->npix, count, NULL));
    else
        RVS_TRY(launch_tangent_epilogue(ctx, nn->k_flux_t, pc_dest, nn->pc.bias, nn->npix,
                                        count, nn->indim, out));
cleanup:
    return status;
}

/* Self-test: a 2-input network with one BatchNorm layer (weights in the table below) on two
 * parameter vectors. The expected log-flux was computed unfolded, in long double, from the same
 * float weights; the third pixel's bias of 400 checks the clip (flux = e^300 in fp64, +inf in
 * fp32, where e^300 does not exist). */
int rvs_nn_selftest(struct rvs_context *ctx, char *detail, size_t detail_size)
{
    static const float w0[6] = {0.5f, -0.25f, 0.75f, 0.125f, -0.5f, 1.0f};
    static const float b0[3] = {0.1f, -0.2f, 0.05f};
    static const float w1[9] = {0.25f, -0.5f, 0.75f, 1.0f, 0.5f, -0.25f, -0.75f, 0.25f, 0.5f};
    static const float b1[3] = {0.0f, 0.1f, -0.1f};
    static const float gamma[3] = {1.5f, 0.75f, 1.0f}, beta[3] = {0.1f, -0.1f, 0.2f};
    static const float mean[3] = {0.2f, 0.1f, 0.3f}, var[3] = {0.5f, 0.25f, 2.0f};
    static const float w2[6] = {0.5f, 0.25f, -0.5f, -1.0f, 0.75f, 0.25f};
    static const float b2[2] = {0.05f, -0.05f};
    static const float wp[6] = {1.0f, -0.5f, 0.25f, 2.0f, -1.5f, 0.5f};
    static const float bp[3] = {-0.5f, 0.25f, 400.0f};
    static const double theta[4] = {5000, 2.5, 8000, 4.5};
    static const double want[6] = {-0.5971149374, 0.4382779954, 400.1206657,
                                   -0.6009568939, 0.6020028209, 400.1070539};
    int status = RVS_OK;
    struct rvs_nn *nn = NULL;
    cl_mem dp = NULL, dout = NULL;
    struct rvs_nn_desc d;
    rvs_nn_desc_init(&d);
    d.indim = 2, d.nlayers = 1, d.width = 3, d.npc = 2, d.npix = 3, d.with_batchnorm = 1;
    d.lin[0] = (struct rvs_nn_linear){w0, b0};
    d.lin[1] = (struct rvs_nn_linear){w1, b1};
    d.lin[2] = (struct rvs_nn_linear){w2, b2};
    d.bn[1] = (struct rvs_nn_batchnorm){gamma, beta, mean, var, 1e-5};
    d.pc = (struct rvs_nn_linear){wp, bp};
    d.log_input[0] = 1;
    d.map_center[0] = 3.7, d.map_scale[0] = 0.2;
    d.map_center[1] = 3.0, d.map_scale[1] = 1.5;
    size_t es = rvs_context_real_size(ctx);
    unsigned char params[4 * sizeof(double)], out[6 * sizeof(double)];
    for (int i = 0; i < 4; i++) {
        if (es == sizeof(double))
            ((double *)params)[i] = theta[i];
        else
            ((float *)params)[i] = (float)theta[i];
    }
    RVS_TRY(rvs_nn_create(ctx, &d, &nn));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, 4 * es, params, &dp));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, 6 * es, NULL, &dout));
    for (int kind = 0; kind < 2; kind++) {
        enum rvs_nn_output what = kind ? RVS_NN_FLUX_REAL : RVS_NN_LOGFLUX_F32;
        RVS_TRY(rvs_nn_forward(ctx, nn, dp, 2, dout, what));
        size_t oes = kind ? es : sizeof(float);
        RVS_TRY(rvs_buffer_read(ctx, dout, 0, 6 * oes, out));
        for (int i = 0; i < 6; i++) {
            double got = oes == sizeof(double) ? ((double *)out)[i] : ((float *)out)[i];
            double x = want[i] > 300 ? 300 : want[i];
            double expect = kind ? (es == sizeof(double) ? exp(x) : (double)(float)exp(x)) : want[i];
            /* log-flux: 1e-5 of (1 + |x|); flux: the same log error, relative */
            double tol = kind ? 1e-5 * (1 + fabs(x)) * expect : 1e-5 * (1 + fabs(want[i]));
            if (!(fabs(got - expect) <= tol || got == expect)) {
                snprintf(detail, detail_size, "NN %s[%d] = %.9g, expected %.9g",
                         kind ? "flux" : "log-flux", i, got, expect);
                status = RVS_ERR_SELFTEST;
                goto cleanup;
            }
        }
    }
cleanup:
    rvs_nn_destroy(&nn);
    rvs_buffer_release(&dp);
    rvs_buffer_release(&dout);
    return status;
}
