/* train.c: NN emulator training on the device (see include/rvsfit/train.h), a port of
 * rvspecfit's nn/train_interpolator.py (main, getSchedOptim, train_step_compiled) with the
 * network of nn/NNInterpolator.py (NNInterpolator.initLayers). The forward pass keeps every
 * layer's pre-activation z, SiLU output a and layer output h (h = a without BatchNorm); the
 * backward pass is, per Linear layer with input x and output gradient dz,
 *   dW = dz^T x,  db = column sums of dz,  dx = dz W,
 * as GEMMs on the mini-batch, with the SiLU and BatchNorm derivatives in small kernels
 * (cl/train.cl). All parameters sit in one flat float buffer so Adam is one launch. The loop
 * over epochs (rvs_trainer_fit) is in loop.c, the trained network's export and the checkpoints
 * in checkpoint.c, the state they share in train_internal.h. */
#include <config.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/internal.h"
#include "base/random.h"
#include "rvsfit/train.h"
#include "train/train_internal.h"

static const char *const kernel_names[N_KERNELS] = {
    "rvs_train_gather",  "rvs_train_bias_silu", "rvs_train_silu_backward",
    "rvs_train_colsum",  "rvs_train_bn_forward", "rvs_train_bn_eval",
    "rvs_train_bn_backward", "rvs_train_loss",  "rvs_train_adam"};

/* ------------------------------------------------------------------ small helpers */

void rvs_train_config_init(struct rvs_train_config *c)
{
    memset(c, 0, sizeof *c);
    c->nlayers = 2;
    c->width = 256;
    c->npc = 200;
    c->bn_eps = 1e-5;
    c->bn_momentum = 0.1;
    c->batch = 100;
    c->max_epochs = 1000000;
    c->lr = 1e-3;
    c->min_lr = 1e-8;
    c->beta1 = 0.9;
    c->beta2 = 0.999;
    c->adam_eps = 1e-8;
    c->patience = 20;
    c->lr_factor = 0.5;
    c->lr_threshold = 1e-5;
    c->lr_eps = 1e-9;
    c->stop_patience = 100;
    c->seed = 343432323;
    c->eval_rows = 1024;
    c->checkpoint_every = 32;
    c->loss = RVS_TRAIN_LOSS_L1;
    c->loss_delta = 0.02;
}

/* xoshiro256** (Blackman & Vigna), seeded through splitmix64: reproducible everywhere. */
static void rng_seed(uint64_t st[4], uint64_t seed) { rvs_xoshiro_seed(st, seed); }
static uint64_t rng_next(uint64_t s[4]) { return rvs_xoshiro_next(s); }
static double rng_uniform(uint64_t s[4]) { return rvs_unit53(rng_next(s)); }
/* uniform integer in [0, n), without modulo bias */
static size_t rng_below(uint64_t s[4], size_t n)
{
    uint64_t lim = UINT64_MAX - UINT64_MAX % n, r;
    do
        r = rng_next(s);
    while (r >= lim);
    return (size_t)(r % n);
}

double rvs_train_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static size_t align64(size_t n) { return (n + 63) / 64 * 64; }

static void make_layout(struct rvs_train_layout *l, const struct rvs_train_config *c,
                        size_t indim, size_t npix)
{
    memset(l, 0, sizeof *l);
    size_t off = 0;
    l->nlin = c->nlayers + 2;
    for (size_t i = 0; i < l->nlin; i++) {
        l->lin_in[i] = i == 0 ? indim : c->width;
        l->lin_out[i] = i == l->nlin - 1 ? c->npc : c->width;
        l->lin_w[i] = off;
        off += align64(l->lin_in[i] * l->lin_out[i]);
        l->lin_b[i] = off;
        off += align64(l->lin_out[i]);
    }
    if (c->with_batchnorm)
        for (size_t i = 1; i <= c->nlayers; i++) {
            l->bn_w[i] = off;
            off += align64(c->width);
            l->bn_b[i] = off;
            off += align64(c->width);
        }
    l->pc_w = off;
    off += align64(npix * c->npc);
    l->pc_b = off;
    off += align64(npix);
    l->total = off;
}

int rvs_train_has_bn(const struct rvs_trainer *tr, size_t layer)
{
    return tr->cfg.with_batchnorm && layer >= 1 && layer <= tr->cfg.nlayers;
}

static int u32(size_t v, const char *what, cl_uint *out)
{
    if (v > UINT32_MAX) {
        rvs_log(RVS_LOG_ERROR, "train", "%s = %zu exceeds the kernels' 32-bit indices", what, v);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    *out = (cl_uint)v;
    return RVS_OK;
}

/* Sets kernel arguments from a list: each entry a size and a pointer. */
struct karg {
    size_t size;
    const void *value;
};
static int set_args(cl_kernel k, const struct karg *args, size_t n)
{
    int status = RVS_OK;
    for (size_t i = 0; i < n; i++)
        RVS_TRY(rvs_kernel_arg(k, (cl_uint)i, args[i].size, args[i].value));
cleanup:
    return status;
}
#define KA(v) {sizeof(v), &(v)}
#define SET_ARGS(k, ...)                                                                           \
    set_args(k, (const struct karg[]){__VA_ARGS__},                                                \
             sizeof((const struct karg[]){__VA_ARGS__}) / sizeof(struct karg))

/* ------------------------------------------------------------------ create / destroy */

static void release_ws(struct rvs_trainer *tr)
{
    rvs_buffer_release(&tr->x);
    for (size_t i = 0; i < RVS_NN_MAX_LINEAR; i++) {
        /* h aliases a without BatchNorm */
        if (tr->h[i] == tr->a[i])
            tr->h[i] = NULL;
        rvs_buffer_release(&tr->z[i]);
        rvs_buffer_release(&tr->a[i]);
        rvs_buffer_release(&tr->h[i]);
    }
    rvs_buffer_release(&tr->y);
    rvs_buffer_release(&tr->dh[0]);
    rvs_buffer_release(&tr->dh[1]);
    tr->ws_rows = 0;
}

void rvs_trainer_destroy(struct rvs_trainer **ptr)
{
    if (!ptr || !*ptr)
        return;
    struct rvs_trainer *tr = *ptr;
    release_ws(tr);
    for (int i = 0; i < N_KERNELS; i++)
        if (tr->k[i])
            clReleaseKernel(tr->k[i]);
    cl_mem *bufs[] = {&tr->params, &tr->grads,   &tr->adam_m, &tr->adam_v, &tr->loss_acc,
                      &tr->d_inputs, &tr->d_flux, &tr->d_d0,   &tr->d_sd0,  &tr->d_perm,
                      &tr->d_val,    &tr->d_rows};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        rvs_buffer_release(bufs[i]);
    for (size_t i = 0; i < RVS_NN_MAX_LINEAR; i++) {
        rvs_buffer_release(&tr->run_mean[i]);
        rvs_buffer_release(&tr->run_var[i]);
        rvs_buffer_release(&tr->bn_saved[i]);
    }
    free(tr->train_rows);
    free(tr->val_rows);
    free(tr->perm);
    free(tr->d0);
    free(tr->sd0);
    free(tr);
    *ptr = NULL;
}

static int zero_buffer(struct rvs_context *ctx, cl_mem buf, size_t bytes)
{
    int status = RVS_OK;
    const cl_uint zero = 0;
    RVS_TRY(rvs_buffer_fill(ctx, buf, &zero, sizeof zero, 0, bytes));
cleanup:
    return status;
}

int rvs_trainer_create(struct rvs_context *ctx, const struct rvs_train_config *cfg, size_t indim,
                       size_t npix, struct rvs_trainer **out)
{
    int status = RVS_OK;
    struct rvs_trainer *tr = NULL;
    if (!out)
        return RVS_ERR_INVALID_ARGUMENT;
    *out = NULL;
    if (!ctx || !cfg) {
        rvs_log(RVS_LOG_ERROR, "train", "rvs_trainer_create needs a context and a configuration");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (indim == 0 || indim > RVS_NN_MAX_INPUTS || cfg->nlayers > RVS_NN_MAX_HIDDEN ||
        cfg->width == 0 || cfg->npc == 0 || npix == 0 || cfg->batch == 0 ||
        (cfg->with_batchnorm && cfg->batch < 2)) {
        rvs_log(RVS_LOG_ERROR, "train",
                "network indim=%zu nlayers=%zu width=%zu npc=%zu npix=%zu batch=%zu: sizes must "
                "be positive, indim <= %d, nlayers <= %d, and batch >= 2 with BatchNorm",
                indim, cfg->nlayers, cfg->width, cfg->npc, npix, cfg->batch, RVS_NN_MAX_INPUTS,
                RVS_NN_MAX_HIDDEN);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (!(cfg->lr > 0) || !(cfg->beta1 >= 0 && cfg->beta1 < 1) ||
        !(cfg->beta2 >= 0 && cfg->beta2 < 1) || !(cfg->adam_eps > 0) ||
        !(cfg->lr_factor > 0 && cfg->lr_factor < 1) || !(cfg->bn_eps > 0)) {
        rvs_log(RVS_LOG_ERROR, "train",
                "optimiser settings lr=%g betas=(%g, %g) eps=%g factor=%g bn_eps=%g are invalid",
                cfg->lr, cfg->beta1, cfg->beta2, cfg->adam_eps, cfg->lr_factor, cfg->bn_eps);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    tr = rvs_calloc(1, sizeof *tr);
    if (!tr)
        return RVS_ERR_NOMEM;
    tr->ctx = ctx;
    tr->cfg = *cfg;
    tr->cfg.checkpoint_path = NULL; /* not owned; rvs_trainer_fit takes it from cfg below */
    tr->cfg.checkpoint_path = cfg->checkpoint_path;
    if (tr->cfg.eval_rows == 0)
        tr->cfg.eval_rows = 1024;
    tr->indim = indim;
    tr->npix = npix;
    make_layout(&tr->lay, cfg, indim, npix);
    cl_uint check;
    RVS_TRY(u32(tr->lay.total, "parameter count", &check));
    for (int i = 0; i < N_KERNELS; i++)
        RVS_TRY(rvs_context_kernel(ctx, "train", kernel_names[i], &tr->k[i]));
    size_t pbytes = tr->lay.total * sizeof(float);
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, pbytes, NULL, &tr->params));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, pbytes, NULL, &tr->grads));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, pbytes, NULL, &tr->adam_m));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, pbytes, NULL, &tr->adam_v));
    RVS_TRY(zero_buffer(ctx, tr->params, pbytes));
    RVS_TRY(zero_buffer(ctx, tr->grads, pbytes));
    RVS_TRY(zero_buffer(ctx, tr->adam_m, pbytes));
    RVS_TRY(zero_buffer(ctx, tr->adam_v, pbytes));
    for (size_t l = 1; l <= cfg->nlayers; l++)
        if (rvs_train_has_bn(tr, l)) {
            size_t wb = cfg->width * sizeof(float);
            RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, wb, NULL, &tr->run_mean[l]));
            RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, wb, NULL, &tr->run_var[l]));
            RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, 2 * wb, NULL, &tr->bn_saved[l]));
        }
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, npix * rvs_context_real_size(ctx), NULL,
                              &tr->loss_acc));
    tr->lr = cfg->lr;
    tr->sched_best = INFINITY;
    rng_seed(tr->rng, cfg->seed);
    *out = tr;
    tr = NULL;
cleanup:
    if (status != RVS_OK && tr)
        rvs_log(RVS_LOG_ERROR, "train", "could not set up training on %s: %s",
                ctx->caps.device_name, rvs_strerror(status));
    rvs_trainer_destroy(&tr);
    return status;
}

const struct rvs_train_layout *rvs_trainer_layout(const struct rvs_trainer *tr)
{
    return &tr->lay;
}

double rvs_trainer_lr(const struct rvs_trainer *tr) { return tr->lr; }
int rvs_trainer_resumable(const struct rvs_trainer *tr) { return tr->resumable; }
size_t rvs_trainer_epochs_done(const struct rvs_trainer *tr) { return tr->epoch; }
void rvs_trainer_set_time_limit(struct rvs_trainer *tr, double seconds)
{
    tr->cfg.time_limit = seconds > 0 ? seconds : 0.0;
}

void rvs_trainer_normalisation(const struct rvs_trainer *tr, const float **d0, const float **sd0,
                               double *spread0)
{
    if (d0)
        *d0 = tr->d0;
    if (sd0)
        *sd0 = tr->sd0;
    if (spread0)
        *spread0 = tr->spread0;
}

/* Work space for `rows` rows (grown on demand). */
static int ensure_ws(struct rvs_trainer *tr, size_t rows)
{
    int status = RVS_OK;
    if (tr->ws_rows >= rows)
        return RVS_OK;
    release_ws(tr);
    struct rvs_context *ctx = tr->ctx;
    size_t f = sizeof(float), maxw = tr->cfg.width > tr->cfg.npc ? tr->cfg.width : tr->cfg.npc;
    if (tr->indim > maxw)
        maxw = tr->indim;
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, rows * tr->indim * f, NULL, &tr->x));
    for (size_t l = 0; l < tr->lay.nlin; l++) {
        size_t bytes = rows * tr->lay.lin_out[l] * f;
        RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, bytes, NULL, &tr->z[l]));
        RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, bytes, NULL, &tr->a[l]));
        if (rvs_train_has_bn(tr, l))
            RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, bytes, NULL, &tr->h[l]));
        else
            tr->h[l] = tr->a[l];
    }
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, rows * tr->npix * f, NULL, &tr->y));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, rows * maxw * f, NULL, &tr->dh[0]));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, rows * maxw * f, NULL, &tr->dh[1]));
    tr->ws_rows = rows;
cleanup:
    if (status != RVS_OK) {
        release_ws(tr);
        rvs_log(RVS_LOG_ERROR, "train",
                "no device memory for training work space of %zu rows; use a smaller --batch",
                rows);
    }
    return status;
}

/* ------------------------------------------------------------------ data */

int rvs_trainer_set_data(struct rvs_trainer *tr, size_t nspec, const float *inputs,
                         const float *logflux, const size_t *train_rows, size_t ntrain,
                         const size_t *val_rows, size_t nval)
{
    int status = RVS_OK;
    unsigned char *seen = NULL;
    uint32_t *val32 = NULL;
    double *sum = NULL, *sum2 = NULL;
    struct rvs_context *ctx = tr->ctx;
    size_t npix = tr->npix;
    if (nspec == 0 || ntrain == 0 || !inputs || !logflux || !train_rows ||
        (nval && !val_rows) || nspec > UINT32_MAX) {
        rvs_log(RVS_LOG_ERROR, "train", "training needs at least one training spectrum");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (tr->cfg.with_batchnorm && ntrain < 2) {
        rvs_log(RVS_LOG_ERROR, "train", "BatchNorm needs at least 2 training spectra");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    seen = rvs_calloc(nspec, 1);
    if (!seen)
        return RVS_ERR_NOMEM;
    for (size_t i = 0; i < ntrain + nval; i++) {
        size_t r = i < ntrain ? train_rows[i] : val_rows[i - ntrain];
        if (r >= nspec || seen[r]) {
            rvs_log(RVS_LOG_ERROR, "train", "row %zu of the training/validation split is %s", r,
                    r >= nspec ? "outside the grid" : "used twice");
            status = RVS_ERR_INVALID_ARGUMENT;
            goto cleanup;
        }
        seen[r] = 1;
    }
    for (size_t i = 0; i < nspec * tr->indim; i++)
        if (!isfinite(inputs[i])) {
            rvs_log(RVS_LOG_ERROR, "train", "network input %zu of spectrum %zu is not finite",
                    i % tr->indim, i / tr->indim);
            status = RVS_ERR_INVALID_ARGUMENT;
            goto cleanup;
        }
    free(tr->train_rows);
    free(tr->val_rows);
    free(tr->perm);
    free(tr->d0);
    free(tr->sd0);
    tr->train_rows = rvs_malloc(ntrain * sizeof(size_t));
    tr->val_rows = rvs_malloc((nval ? nval : 1) * sizeof(size_t));
    tr->perm = rvs_malloc(ntrain * sizeof(uint32_t));
    tr->d0 = rvs_malloc(npix * sizeof(float));
    tr->sd0 = rvs_malloc(npix * sizeof(float));
    sum = rvs_calloc(npix, sizeof *sum);
    sum2 = rvs_calloc(npix, sizeof *sum2);
    val32 = rvs_malloc((nval ? nval : 1) * sizeof *val32);
    if (!tr->train_rows || !tr->val_rows || !tr->perm || !tr->d0 || !tr->sd0 || !sum || !sum2 ||
        !val32) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    memcpy(tr->train_rows, train_rows, ntrain * sizeof(size_t));
    if (nval)
        memcpy(tr->val_rows, val_rows, nval * sizeof(size_t));
    for (size_t i = 0; i < nval; i++)
        val32[i] = (uint32_t)val_rows[i];
    tr->ntrain = ntrain;
    tr->nval = nval;
    tr->nspec = nspec;
    tr->logflux = logflux;

    /* d0, sd0 per pixel and spread0 = std(D - d0) over everything (rvspecfit main: D_0, SD_0,
     * spread0 over all spectra of the grid); two passes in double */
    for (size_t s = 0; s < nspec; s++)
        for (size_t j = 0; j < npix; j++) {
            double v = logflux[s * npix + j];
            if (!isfinite(v)) {
                rvs_log(RVS_LOG_ERROR, "train", "log-flux of spectrum %zu, pixel %zu is not "
                        "finite", s, j);
                status = RVS_ERR_INVALID_ARGUMENT;
                goto cleanup;
            }
            sum[j] += v;
        }
    for (size_t j = 0; j < npix; j++)
        sum[j] /= (double)nspec;
    for (size_t s = 0; s < nspec; s++)
        for (size_t j = 0; j < npix; j++) {
            double d = logflux[s * npix + j] - sum[j];
            sum2[j] += d * d;
        }
    double total2 = 0;
    size_t flat = 0;
    for (size_t j = 0; j < npix; j++) {
        total2 += sum2[j];
        double sd = sqrt(sum2[j] / (double)nspec);
        tr->d0[j] = (float)sum[j];
        tr->sd0[j] = (float)sd;
        if (!(tr->sd0[j] > 0)) {
            tr->sd0[j] = 1.0f; /* a pixel equal in every spectrum: nothing to normalise */
            flat++;
        }
    }
    if (flat)
        rvs_log(RVS_LOG_WARNING, "train", "%zu pixels have the same log-flux in every spectrum",
                flat);
    /* np.std of D - D_0 about its own mean, which is zero up to rounding */
    tr->spread0 = sqrt(total2 / ((double)nspec * (double)npix));
    if (!(tr->spread0 > 0)) {
        rvs_log(RVS_LOG_ERROR, "train", "all grid spectra are identical: nothing to learn");
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }

    rvs_buffer_release(&tr->d_inputs);
    rvs_buffer_release(&tr->d_flux);
    rvs_buffer_release(&tr->d_d0);
    rvs_buffer_release(&tr->d_sd0);
    rvs_buffer_release(&tr->d_perm);
    rvs_buffer_release(&tr->d_val);
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, nspec * tr->indim * sizeof(float),
                              (void *)inputs, &tr->d_inputs));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, nspec * npix * sizeof(float),
                              (void *)logflux, &tr->d_flux));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, npix * sizeof(float), tr->d0, &tr->d_d0));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, npix * sizeof(float), tr->sd0, &tr->d_sd0));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, ntrain * sizeof(uint32_t), NULL,
                              &tr->d_perm));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, (nval ? nval : 1) * sizeof(uint32_t), val32,
                              &tr->d_val));
    rvs_log(RVS_LOG_INFO, "train", "grid: %zu spectra (%zu training, %zu validation) x %zu px, "
            "spread0 = %.6g", nspec, ntrain, nval, npix, tr->spread0);
cleanup:
    free(seen);
    free(val32);
    free(sum);
    free(sum2);
    return status;
}

/* ------------------------------------------------------------------ parameters */

int rvs_trainer_params_read(struct rvs_trainer *tr, float *host)
{
    return rvs_buffer_read(tr->ctx, tr->params, 0, tr->lay.total * sizeof(float), host);
}
int rvs_trainer_params_write(struct rvs_trainer *tr, const float *host)
{
    return rvs_buffer_write(tr->ctx, tr->params, 0, tr->lay.total * sizeof(float), host);
}
int rvs_trainer_grads_read(struct rvs_trainer *tr, float *host)
{
    return rvs_buffer_read(tr->ctx, tr->grads, 0, tr->lay.total * sizeof(float), host);
}

int rvs_trainer_running_read(struct rvs_trainer *tr, size_t layer, float *mean, float *var)
{
    int status = RVS_OK;
    if (!rvs_train_has_bn(tr, layer))
        return RVS_ERR_INVALID_ARGUMENT;
    RVS_TRY(rvs_buffer_read(tr->ctx, tr->run_mean[layer], 0, tr->cfg.width * sizeof(float), mean));
    RVS_TRY(rvs_buffer_read(tr->ctx, tr->run_var[layer], 0, tr->cfg.width * sizeof(float), var));
cleanup:
    return status;
}

int rvs_trainer_running_write(struct rvs_trainer *tr, size_t layer, const float *mean,
                              const float *var)
{
    int status = RVS_OK;
    if (!rvs_train_has_bn(tr, layer))
        return RVS_ERR_INVALID_ARGUMENT;
    RVS_TRY(rvs_buffer_write(tr->ctx, tr->run_mean[layer], 0, tr->cfg.width * sizeof(float),
                             mean));
    RVS_TRY(rvs_buffer_write(tr->ctx, tr->run_var[layer], 0, tr->cfg.width * sizeof(float), var));
cleanup:
    return status;
}

static void reset_optimiser(struct rvs_trainer *tr)
{
    tr->adam_t = 0;
    tr->lr = tr->cfg.lr;
    tr->sched_best = INFINITY;
    tr->sched_bad = 0;
    tr->epoch = 0;
}

int rvs_trainer_init_weights(struct rvs_trainer *tr)
{
    int status = RVS_OK;
    float *p = NULL, *ones = NULL, *zeros = NULL;
    size_t pbytes = tr->lay.total * sizeof(float);
    p = rvs_calloc(tr->lay.total, sizeof *p);
    ones = rvs_malloc(tr->cfg.width * sizeof *ones);
    zeros = rvs_calloc(tr->cfg.width, sizeof *zeros);
    if (!p || !ones || !zeros) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    rng_seed(tr->rng, tr->cfg.seed);
    /* torch.nn.Linear.reset_parameters: kaiming_uniform_(a = sqrt(5)) gives the bound
     * sqrt(6 / ((1 + 5) fan_in)) = 1/sqrt(fan_in) for the weight; the bias uses the same bound */
    for (size_t l = 0; l <= tr->lay.nlin; l++) {
        size_t in = l < tr->lay.nlin ? tr->lay.lin_in[l] : tr->cfg.npc;
        size_t out = l < tr->lay.nlin ? tr->lay.lin_out[l] : tr->npix;
        size_t wo = l < tr->lay.nlin ? tr->lay.lin_w[l] : tr->lay.pc_w;
        size_t bo = l < tr->lay.nlin ? tr->lay.lin_b[l] : tr->lay.pc_b;
        double bound = 1.0 / sqrt((double)in);
        for (size_t i = 0; i < in * out; i++)
            p[wo + i] = (float)(bound * (2 * rng_uniform(tr->rng) - 1));
        for (size_t i = 0; i < out; i++)
            p[bo + i] = (float)(bound * (2 * rng_uniform(tr->rng) - 1));
    }
    for (size_t i = 0; i < tr->cfg.width; i++)
        ones[i] = 1.0f;
    for (size_t l = 1; l <= tr->cfg.nlayers; l++)
        if (rvs_train_has_bn(tr, l)) {
            for (size_t i = 0; i < tr->cfg.width; i++) {
                p[tr->lay.bn_w[l] + i] = 1.0f;
                p[tr->lay.bn_b[l] + i] = 0.0f;
            }
            RVS_TRY(rvs_trainer_running_write(tr, l, zeros, ones));
        }
    RVS_TRY(rvs_trainer_params_write(tr, p));
    RVS_TRY(zero_buffer(tr->ctx, tr->grads, pbytes));
    RVS_TRY(zero_buffer(tr->ctx, tr->adam_m, pbytes));
    RVS_TRY(zero_buffer(tr->ctx, tr->adam_v, pbytes));
    reset_optimiser(tr);
cleanup:
    free(p);
    free(ones);
    free(zeros);
    return status;
}

int rvs_trainer_pca_init(struct rvs_trainer *tr, double *loss0)
{
    int status = RVS_OK;
    size_t npc = tr->cfg.npc, npix = tr->npix;
    double *comp = NULL, *mean = NULL, *coef = NULL;
    float *p = NULL;
    if (!tr->logflux) {
        rvs_log(RVS_LOG_ERROR, "train", "PCA initialisation needs the grid (set_data first)");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (npc > tr->ntrain || npc > npix) {
        rvs_log(RVS_LOG_ERROR, "train",
                "PCA initialisation of %zu components needs at least as many training spectra "
                "and pixels (have %zu and %zu); lower --npc or drop --pca-init",
                npc, tr->ntrain, npix);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    comp = rvs_malloc(npc * npix * sizeof *comp);
    mean = rvs_malloc(npix * sizeof *mean);
    coef = rvs_malloc(npc * sizeof *coef);
    p = rvs_malloc(tr->lay.total * sizeof *p);
    if (!comp || !mean || !coef || !p) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    RVS_TRY(rvs_train_pca(tr->logflux, npix, tr->train_rows, tr->ntrain, npix, npc,
                          tr->cfg.seed ^ 0x5ca1ab1eULL, comp, mean));
    RVS_TRY(rvs_trainer_params_read(tr, p));
    /* rvspecfit main (pca_init): pc_layer.weight = components^T / SD_0, bias 0 (the bias is the
     * PCA mean times zero there) */
    for (size_t j = 0; j < npix; j++)
        for (size_t c = 0; c < npc; c++)
            p[tr->lay.pc_w + j * npc + c] = (float)(comp[c * npix + j] / tr->sd0[j]);
    for (size_t j = 0; j < npix; j++)
        p[tr->lay.pc_b + j] = 0.0f;
    RVS_TRY(rvs_trainer_params_write(tr, p));
    if (loss0) {
        /* mean |D - reconstruction| / spread0 over the training rows (rvspecfit's loss0) */
        double acc = 0;
        for (size_t i = 0; i < tr->ntrain; i++) {
            const float *row = tr->logflux + tr->train_rows[i] * npix;
            for (size_t c = 0; c < npc; c++) {
                double s = 0;
                for (size_t j = 0; j < npix; j++)
                    s += comp[c * npix + j] * (row[j] - mean[j]);
                coef[c] = s;
            }
            for (size_t j = 0; j < npix; j++) {
                double r = mean[j];
                for (size_t c = 0; c < npc; c++)
                    r += coef[c] * comp[c * npix + j];
                acc += fabs(row[j] - r);
            }
        }
        *loss0 = acc / ((double)tr->ntrain * (double)npix) / tr->spread0;
    }
cleanup:
    free(comp);
    free(mean);
    free(coef);
    free(p);
    return status;
}

/* ------------------------------------------------------------------ forward / backward */

static int launch2(struct rvs_trainer *tr, int k, size_t cols, size_t rows)
{
    return rvs_kernel_launch_2d(tr->ctx, tr->k[k], cols, rows, 0, 1);
}

/* Forward pass over `rows` rows given by idx[off ...] (device uint list): training mode
 * (batch statistics, running estimates updated) or inference mode (running statistics). Leaves
 * pc_layer's output without its bias in tr->y. */
static int forward(struct rvs_trainer *tr, cl_mem idx, size_t off, size_t rows, int training)
{
    int status = RVS_OK;
    struct rvs_context *ctx = tr->ctx;
    const struct rvs_train_layout *L = &tr->lay;
    cl_uint r, o, indim = (cl_uint)tr->indim;
    RVS_TRY(u32(rows, "batch rows", &r));
    RVS_TRY(u32(off, "row offset", &o));
    RVS_TRY(SET_ARGS(tr->k[K_GATHER], KA(tr->d_inputs), KA(idx), KA(o), KA(r), KA(indim),
                     KA(tr->x)));
    RVS_TRY(rvs_kernel_launch_1d(ctx, tr->k[K_GATHER], rows, 0));
    cl_mem in = tr->x;
    for (size_t l = 0; l < L->nlin; l++) {
        size_t nin = L->lin_in[l], nout = L->lin_out[l];
        /* z = x W^T (+ b in the epilogue) */
        RVS_TRY(rvs_gemm_f32(ctx, RVS_NO_TRANS, RVS_TRANS, rows, nout, nin, 1.0f, in, 0, nin,
                             tr->params, L->lin_w[l], nin, 0.0f, tr->z[l], 0, nout));
        cl_uint boff = (cl_uint)L->lin_b[l], cols = (cl_uint)nout;
        RVS_TRY(SET_ARGS(tr->k[K_BIAS_SILU], KA(tr->z[l]), KA(tr->params), KA(boff), KA(cols),
                         KA(r), KA(tr->a[l])));
        RVS_TRY(launch2(tr, K_BIAS_SILU, nout, rows));
        if (rvs_train_has_bn(tr, l)) {
            cl_uint go = (cl_uint)L->bn_w[l], bo = (cl_uint)L->bn_b[l];
            float eps = (float)tr->cfg.bn_eps, mom = (float)tr->cfg.bn_momentum;
            if (training) {
                RVS_TRY(SET_ARGS(tr->k[K_BN_FWD], KA(tr->a[l]), KA(cols), KA(r), KA(tr->params),
                                 KA(go), KA(bo), KA(eps), KA(mom), KA(tr->run_mean[l]),
                                 KA(tr->run_var[l]), KA(tr->bn_saved[l]), KA(tr->h[l])));
                RVS_TRY(rvs_kernel_launch_1d(ctx, tr->k[K_BN_FWD], nout, 0));
            } else {
                RVS_TRY(SET_ARGS(tr->k[K_BN_EVAL], KA(tr->a[l]), KA(cols), KA(r),
                                 KA(tr->params), KA(go), KA(bo), KA(eps), KA(tr->run_mean[l]),
                                 KA(tr->run_var[l]), KA(tr->h[l])));
                RVS_TRY(launch2(tr, K_BN_EVAL, nout, rows));
            }
        }
        in = tr->h[l];
    }
    RVS_TRY(rvs_gemm_f32(ctx, RVS_NO_TRANS, RVS_TRANS, rows, tr->npix, tr->cfg.npc, 1.0f, in, 0,
                         tr->cfg.npc, tr->params, L->pc_w, tr->cfg.npc, 0.0f, tr->y, 0,
                         tr->npix));
cleanup:
    return status;
}

/* What the summed loss is divided by, besides rows x pixels: spread0 (L1, L1L2) or spread0^2
 * (L2). */
static double loss_scale(const struct rvs_trainer *tr)
{
    return tr->cfg.loss == RVS_TRAIN_LOSS_L2 ? tr->spread0 * tr->spread0 : tr->spread0;
}

/* The loss kernel over tr->y: adds to loss_acc; with_grad turns y into dL/dy and writes the
 * pc_layer bias gradient. */
static int loss_kernel(struct rvs_trainer *tr, cl_mem idx, size_t off, size_t rows, int with_grad)
{
    int status = RVS_OK;
    cl_uint o = (cl_uint)off, r = (cl_uint)rows, cols = (cl_uint)tr->npix;
    cl_uint boff = (cl_uint)tr->lay.pc_b, wg = with_grad ? 1u : 0u;
    cl_uint kind = (cl_uint)tr->cfg.loss;
    float inv_delta = tr->cfg.loss_delta > 0 ? (float)(1.0 / tr->cfg.loss_delta) : 0.0f;
    float gscale = (float)(1.0 / (loss_scale(tr) * (double)rows * (double)tr->npix));
    RVS_TRY(SET_ARGS(tr->k[K_LOSS], KA(tr->y), KA(tr->params), KA(boff), KA(tr->d_d0),
                     KA(tr->d_sd0), KA(tr->d_flux), KA(idx), KA(o), KA(cols), KA(r), KA(gscale),
                     KA(wg), KA(kind), KA(inv_delta), KA(tr->loss_acc), KA(tr->grads)));
    RVS_TRY(rvs_kernel_launch_1d(tr->ctx, tr->k[K_LOSS], tr->npix, 0));
cleanup:
    return status;
}

static int colsum(struct rvs_trainer *tr, cl_mem d, size_t cols, size_t rows, size_t out_off)
{
    int status = RVS_OK;
    cl_uint c = (cl_uint)cols, r = (cl_uint)rows, o = (cl_uint)out_off;
    RVS_TRY(SET_ARGS(tr->k[K_COLSUM], KA(d), KA(c), KA(r), KA(tr->grads), KA(o)));
    RVS_TRY(rvs_kernel_launch_1d(tr->ctx, tr->k[K_COLSUM], cols, 0));
cleanup:
    return status;
}

/* Backward pass after forward(training) and loss_kernel(with_grad): tr->y holds dL/dy. */
static int backward(struct rvs_trainer *tr, size_t rows)
{
    int status = RVS_OK;
    struct rvs_context *ctx = tr->ctx;
    const struct rvs_train_layout *L = &tr->lay;
    size_t npc = tr->cfg.npc, npix = tr->npix, last = L->nlin - 1;
    cl_uint r = (cl_uint)rows;
    /* pc_layer: dW = dy^T h_last (npix x npc), dh_last = dy W (rows x npc) */
    RVS_TRY(rvs_gemm_f32(ctx, RVS_TRANS, RVS_NO_TRANS, npix, npc, rows, 1.0f, tr->y, 0, npix,
                         tr->h[last], 0, npc, 0.0f, tr->grads, L->pc_w, npc));
    RVS_TRY(rvs_gemm_f32(ctx, RVS_NO_TRANS, RVS_NO_TRANS, rows, npc, npix, 1.0f, tr->y, 0, npix,
                         tr->params, L->pc_w, npc, 0.0f, tr->dh[0], 0, npc));
    int cur = 0;
    for (size_t l = L->nlin; l-- > 0;) {
        size_t nin = L->lin_in[l], nout = L->lin_out[l];
        cl_uint cols = (cl_uint)nout;
        cl_mem d = tr->dh[cur];
        if (rvs_train_has_bn(tr, l)) {
            cl_uint go = (cl_uint)L->bn_w[l], bo = (cl_uint)L->bn_b[l];
            RVS_TRY(SET_ARGS(tr->k[K_BN_BACK], KA(d), KA(tr->a[l]), KA(cols), KA(r),
                             KA(tr->params), KA(go), KA(tr->bn_saved[l]), KA(tr->grads), KA(bo)));
            RVS_TRY(rvs_kernel_launch_1d(ctx, tr->k[K_BN_BACK], nout, 0));
        }
        RVS_TRY(SET_ARGS(tr->k[K_SILU_BACK], KA(d), KA(tr->z[l]), KA(cols), KA(r)));
        RVS_TRY(launch2(tr, K_SILU_BACK, nout, rows));
        cl_mem x = l == 0 ? tr->x : tr->h[l - 1];
        RVS_TRY(rvs_gemm_f32(ctx, RVS_TRANS, RVS_NO_TRANS, nout, nin, rows, 1.0f, d, 0, nout, x,
                             0, nin, 0.0f, tr->grads, L->lin_w[l], nin));
        RVS_TRY(colsum(tr, d, nout, rows, L->lin_b[l]));
        if (l > 0)
            RVS_TRY(rvs_gemm_f32(ctx, RVS_NO_TRANS, RVS_NO_TRANS, rows, nin, nout, 1.0f, d, 0,
                                 nout, tr->params, L->lin_w[l], nin, 0.0f, tr->dh[1 - cur], 0,
                                 nin));
        cur = 1 - cur;
    }
cleanup:
    return status;
}

/* Sum of loss_acc (npix values), read back to the host. */
static int read_loss(struct rvs_trainer *tr, double *total)
{
    int status = RVS_OK;
    size_t es = rvs_context_real_size(tr->ctx);
    void *buf = rvs_malloc(tr->npix * es);
    if (!buf)
        return RVS_ERR_NOMEM;
    RVS_TRY(rvs_buffer_read(tr->ctx, tr->loss_acc, 0, tr->npix * es, buf));
    double s = 0;
    for (size_t j = 0; j < tr->npix; j++)
        s += es == sizeof(double) ? ((double *)buf)[j] : (double)((float *)buf)[j];
    *total = s;
cleanup:
    free(buf);
    return status;
}

static int upload_rows(struct rvs_trainer *tr, const size_t *rows, size_t count)
{
    int status = RVS_OK;
    uint32_t *tmp = NULL;
    if (tr->d_rows_cap < count) {
        rvs_buffer_release(&tr->d_rows);
        tr->d_rows_cap = 0;
        RVS_TRY(rvs_buffer_create(tr->ctx, CL_MEM_READ_ONLY, count * sizeof(uint32_t), NULL,
                                  &tr->d_rows));
        tr->d_rows_cap = count;
    }
    tmp = rvs_malloc(count * sizeof *tmp);
    if (!tmp) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < count; i++) {
        if (rows[i] >= tr->nspec) {
            rvs_log(RVS_LOG_ERROR, "train", "row %zu is outside the grid of %zu spectra", rows[i],
                    tr->nspec);
            status = RVS_ERR_INVALID_ARGUMENT;
            goto cleanup;
        }
        tmp[i] = (uint32_t)rows[i];
    }
    RVS_TRY(rvs_buffer_write(tr->ctx, tr->d_rows, 0, count * sizeof(uint32_t), tmp));
cleanup:
    free(tmp);
    return status;
}

static int check_ready(struct rvs_trainer *tr, size_t count)
{
    if (!tr->d_flux) {
        rvs_log(RVS_LOG_ERROR, "train", "no grid: call rvs_trainer_set_data first");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (count == 0 || (tr->cfg.with_batchnorm && count < 2)) {
        rvs_log(RVS_LOG_ERROR, "train", "a training batch needs %s rows",
                tr->cfg.with_batchnorm ? "at least 2" : "at least 1");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    return RVS_OK;
}

/* forward + loss + backward on device rows idx[off .. off+count) */
static int gradient_dev(struct rvs_trainer *tr, cl_mem idx, size_t off, size_t count)
{
    int status = RVS_OK;
    RVS_TRY(ensure_ws(tr, count));
    RVS_TRY(forward(tr, idx, off, count, 1));
    RVS_TRY(loss_kernel(tr, idx, off, count, 1));
    RVS_TRY(backward(tr, count));
cleanup:
    return status;
}

int rvs_trainer_gradient(struct rvs_trainer *tr, const size_t *rows, size_t count, double *loss)
{
    int status = RVS_OK;
    RVS_TRY(check_ready(tr, count));
    RVS_TRY(upload_rows(tr, rows, count));
    RVS_TRY(zero_buffer(tr->ctx, tr->loss_acc, tr->npix * rvs_context_real_size(tr->ctx)));
    RVS_TRY(gradient_dev(tr, tr->d_rows, 0, count));
    if (loss) {
        double total;
        RVS_TRY(read_loss(tr, &total));
        *loss = total / ((double)count * (double)tr->npix) / loss_scale(tr);
    }
cleanup:
    return status;
}

int rvs_trainer_adam_step(struct rvs_trainer *tr)
{
    int status = RVS_OK;
    tr->adam_t++;
    double b1 = tr->cfg.beta1, b2 = tr->cfg.beta2, t = (double)tr->adam_t;
    float fb1 = (float)b1, fb2 = (float)b2, eps = (float)tr->cfg.adam_eps;
    float step = (float)(tr->lr / (1 - pow(b1, t))), c2 = (float)sqrt(1 - pow(b2, t));
    cl_uint n = (cl_uint)tr->lay.total;
    RVS_TRY(SET_ARGS(tr->k[K_ADAM], KA(tr->params), KA(tr->grads), KA(tr->adam_m),
                     KA(tr->adam_v), KA(n), KA(fb1), KA(fb2), KA(step), KA(c2), KA(eps)));
    RVS_TRY(rvs_kernel_launch_1d(tr->ctx, tr->k[K_ADAM], tr->lay.total, 0));
cleanup:
    return status;
}

int rvs_trainer_epoch(struct rvs_trainer *tr, double *train_loss)
{
    int status = RVS_OK;
    size_t n = tr->ntrain, batch = tr->cfg.batch, used = 0;
    RVS_TRY(check_ready(tr, n < batch ? n : batch));
    /* a new order every epoch (torch DataLoader with shuffle=True): Fisher-Yates */
    for (size_t i = 0; i < n; i++)
        tr->perm[i] = (uint32_t)tr->train_rows[i];
    for (size_t i = n - 1; i > 0; i--) {
        size_t j = rng_below(tr->rng, i + 1);
        uint32_t t = tr->perm[i];
        tr->perm[i] = tr->perm[j];
        tr->perm[j] = t;
    }
    RVS_TRY(rvs_buffer_write(tr->ctx, tr->d_perm, 0, n * sizeof(uint32_t), tr->perm));
    RVS_TRY(zero_buffer(tr->ctx, tr->loss_acc, tr->npix * rvs_context_real_size(tr->ctx)));
    RVS_TRY(ensure_ws(tr, batch < n ? batch : n));
    for (size_t off = 0; off < n; off += batch) {
        size_t count = n - off < batch ? n - off : batch;
        /* torch's BatchNorm refuses a batch of one in training mode; skip such a remainder */
        if (count < 2 && tr->cfg.with_batchnorm)
            break;
        RVS_TRY(gradient_dev(tr, tr->d_perm, off, count));
        RVS_TRY(rvs_trainer_adam_step(tr));
        used += count;
    }
    if (train_loss) {
        double total;
        RVS_TRY(read_loss(tr, &total));
        *train_loss = total / ((double)used * (double)tr->npix) / loss_scale(tr);
    } else
        RVS_CL_TRY(clFinish(tr->ctx->queue));
cleanup:
    return status;
}

int rvs_train_evaluate_dev(struct rvs_trainer *tr, cl_mem idx, size_t count, double *loss,
                           float *pred)
{
    int status = RVS_OK;
    float *tmp = NULL, *pcb = NULL;
    size_t chunk = tr->cfg.eval_rows, npix = tr->npix;
    if (pred) {
        pcb = rvs_malloc(npix * sizeof *pcb);
        if (!pcb)
            return RVS_ERR_NOMEM;
        RVS_TRY(rvs_buffer_read(tr->ctx, tr->params, tr->lay.pc_b * sizeof(float),
                                npix * sizeof(float), pcb));
    }
    RVS_TRY(ensure_ws(tr, count < chunk ? count : chunk));
    RVS_TRY(zero_buffer(tr->ctx, tr->loss_acc, npix * rvs_context_real_size(tr->ctx)));
    for (size_t off = 0; off < count; off += chunk) {
        size_t rows = count - off < chunk ? count - off : chunk;
        RVS_TRY(forward(tr, idx, off, rows, 0));
        RVS_TRY(loss_kernel(tr, idx, off, rows, 0));
        if (pred) {
            float *dst = pred + off * npix;
            RVS_TRY(rvs_buffer_read(tr->ctx, tr->y, 0, rows * npix * sizeof(float), dst));
            for (size_t e = 0; e < rows; e++)
                for (size_t j = 0; j < npix; j++)
                    dst[e * npix + j] = (dst[e * npix + j] + pcb[j]) * tr->sd0[j] + tr->d0[j];
        }
    }
    if (loss) {
        double total;
        RVS_TRY(read_loss(tr, &total));
        *loss = total / ((double)count * (double)npix) / loss_scale(tr);
    }
cleanup:
    free(tmp);
    free(pcb);
    return status;
}

int rvs_trainer_evaluate(struct rvs_trainer *tr, const size_t *rows, size_t count, double *loss,
                         float *pred)
{
    int status = RVS_OK;
    if (!tr->d_flux || count == 0) {
        rvs_log(RVS_LOG_ERROR, "train", "evaluation needs a grid and at least one row");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    RVS_TRY(upload_rows(tr, rows, count));
    RVS_TRY(rvs_train_evaluate_dev(tr, tr->d_rows, count, loss, pred));
cleanup:
    return status;
}
