/* checkpoint.c: the trainer's results out of the device: the trained network as the library
 * writer takes it (rvs_trainer_export, BatchNorm running statistics included) and checkpoints of
 * the whole training state (parameters, Adam moments, scheduler, random state, epoch) that a
 * later run continues from, checksummed with SHA-256 so that a damaged file is refused. */
#include <config.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/internal.h"
#include "rvsfit/train.h"
#include "train/train_internal.h"

/* ------------------------------------------------------------------ export */

void rvs_trained_net_free(struct rvs_trained_net *net)
{
    if (!net)
        return;
    for (size_t i = 0; i < RVS_NN_MAX_LINEAR; i++) {
        free(net->lin_w[i]);
        free(net->lin_b[i]);
        free(net->bn_w[i]);
        free(net->bn_b[i]);
        free(net->bn_mean[i]);
        free(net->bn_var[i]);
    }
    free(net->pc_w);
    free(net->pc_b);
    memset(net, 0, sizeof *net);
}

static float *dup_floats(const float *src, size_t n)
{
    float *d = rvs_malloc(n * sizeof *d);
    if (d)
        memcpy(d, src, n * sizeof *d);
    return d;
}

int rvs_trainer_export(struct rvs_trainer *tr, struct rvs_trained_net *net)
{
    int status = RVS_OK;
    float *p = NULL;
    const struct rvs_train_layout *L = &tr->lay;
    size_t npc = tr->cfg.npc, npix = tr->npix, W = tr->cfg.width;
    memset(net, 0, sizeof *net);
    if (!tr->d0) {
        rvs_log(RVS_LOG_ERROR, "train", "export needs the grid normalisation (set_data first)");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    p = rvs_malloc(L->total * sizeof *p);
    if (!p)
        return RVS_ERR_NOMEM;
    RVS_TRY(rvs_trainer_params_read(tr, p));
    struct rvs_nn_desc *d = &net->desc;
    rvs_nn_desc_init(d);
    d->indim = tr->indim;
    d->nlayers = tr->cfg.nlayers;
    d->width = W;
    d->npc = npc;
    d->npix = npix;
    d->with_batchnorm = tr->cfg.with_batchnorm;
    for (size_t l = 0; l < L->nlin; l++) {
        net->lin_w[l] = dup_floats(p + L->lin_w[l], L->lin_in[l] * L->lin_out[l]);
        net->lin_b[l] = dup_floats(p + L->lin_b[l], L->lin_out[l]);
        if (!net->lin_w[l] || !net->lin_b[l]) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        d->lin[l] = (struct rvs_nn_linear){net->lin_w[l], net->lin_b[l]};
        if (rvs_train_has_bn(tr, l)) {
            net->bn_w[l] = dup_floats(p + L->bn_w[l], W);
            net->bn_b[l] = dup_floats(p + L->bn_b[l], W);
            net->bn_mean[l] = rvs_malloc(W * sizeof(float));
            net->bn_var[l] = rvs_malloc(W * sizeof(float));
            if (!net->bn_w[l] || !net->bn_b[l] || !net->bn_mean[l] || !net->bn_var[l]) {
                status = RVS_ERR_NOMEM;
                goto cleanup;
            }
            RVS_TRY(rvs_trainer_running_read(tr, l, net->bn_mean[l], net->bn_var[l]));
            d->bn[l] = (struct rvs_nn_batchnorm){net->bn_w[l], net->bn_b[l], net->bn_mean[l],
                                                 net->bn_var[l], tr->cfg.bn_eps};
        }
    }
    /* rvspecfit main, after training: pc_layer.weight = SD_0 * weight, bias = D_0 + bias SD_0 */
    net->pc_w = rvs_malloc(npix * npc * sizeof(float));
    net->pc_b = rvs_malloc(npix * sizeof(float));
    if (!net->pc_w || !net->pc_b) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t j = 0; j < npix; j++) {
        for (size_t c = 0; c < npc; c++)
            net->pc_w[j * npc + c] = tr->sd0[j] * p[L->pc_w + j * npc + c];
        net->pc_b[j] = tr->d0[j] + p[L->pc_b + j] * tr->sd0[j];
    }
    d->pc = (struct rvs_nn_linear){net->pc_w, net->pc_b};
cleanup:
    free(p);
    if (status != RVS_OK)
        rvs_trained_net_free(net);
    return status;
}

/* ------------------------------------------------------------------ checkpoints */

/* File: magic "RVSFTCK1", then uint64 fields (indim, npix, nlayers, width, npc, withbn, total,
 * adam_t, epoch, sched_bad, rng[4]), doubles (lr, sched_best), then params, adam m, adam v
 * (total floats each), running mean/var per BatchNorm layer, and a SHA-256 of everything
 * before it. */
static const char ckpt_magic[8] = {'R', 'V', 'S', 'F', 'T', 'C', 'K', '1'};

static int write_all(FILE *f, const void *p, size_t n, struct rvs_sha256 *h)
{
    rvs_sha256_update(h, p, n);
    return fwrite(p, 1, n, f) == n ? RVS_OK : RVS_ERR_IO;
}
static int read_all(FILE *f, void *p, size_t n, struct rvs_sha256 *h)
{
    if (fread(p, 1, n, f) != n)
        return RVS_ERR_FORMAT;
    rvs_sha256_update(h, p, n);
    return RVS_OK;
}

int rvs_trainer_checkpoint_save(struct rvs_trainer *tr, const char *path)
{
    int status = RVS_OK;
    FILE *f = NULL;
    float *buf = NULL;
    char *tmp = NULL;
    size_t n = tr->lay.total, W = tr->cfg.width;
    struct rvs_sha256 h;
    rvs_sha256_init(&h);
    size_t tl = strlen(path) + 16;
    tmp = rvs_malloc(tl);
    buf = rvs_malloc((n > 2 * W ? n : 2 * W) * sizeof *buf);
    if (!tmp || !buf) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    snprintf(tmp, tl, "%s.tmp", path);
    f = fopen(tmp, "wb");
    if (!f) {
        rvs_log(RVS_LOG_ERROR, "train", "cannot write checkpoint %s", tmp);
        status = RVS_ERR_IO;
        goto cleanup;
    }
    uint64_t hdr[14] = {tr->indim, tr->npix, tr->cfg.nlayers, tr->cfg.width, tr->cfg.npc,
                        (uint64_t)tr->cfg.with_batchnorm, n, tr->adam_t, tr->epoch,
                        tr->sched_bad, tr->rng[0], tr->rng[1], tr->rng[2], tr->rng[3]};
    double dv[2] = {tr->lr, tr->sched_best};
    RVS_TRY(write_all(f, ckpt_magic, sizeof ckpt_magic, &h));
    RVS_TRY(write_all(f, hdr, sizeof hdr, &h));
    RVS_TRY(write_all(f, dv, sizeof dv, &h));
    cl_mem bufs[3] = {tr->params, tr->adam_m, tr->adam_v};
    for (int i = 0; i < 3; i++) {
        RVS_TRY(rvs_buffer_read(tr->ctx, bufs[i], 0, n * sizeof(float), buf));
        RVS_TRY(write_all(f, buf, n * sizeof(float), &h));
    }
    for (size_t l = 1; l <= tr->cfg.nlayers; l++)
        if (rvs_train_has_bn(tr, l)) {
            RVS_TRY(rvs_trainer_running_read(tr, l, buf, buf + W));
            RVS_TRY(write_all(f, buf, 2 * W * sizeof(float), &h));
        }
    unsigned char digest[32];
    rvs_sha256_final(&h, digest);
    if (fwrite(digest, 1, 32, f) != 32)
        status = RVS_ERR_IO;
    if (fclose(f) != 0)
        status = RVS_ERR_IO;
    f = NULL;
    if (status != RVS_OK)
        goto cleanup;
    if (rename(tmp, path) != 0) {
        rvs_log(RVS_LOG_ERROR, "train", "cannot rename %s to %s", tmp, path);
        status = RVS_ERR_IO;
    }
cleanup:
    if (f)
        fclose(f);
    if (status != RVS_OK && tmp) {
        remove(tmp);
        rvs_log(RVS_LOG_ERROR, "train", "writing checkpoint %s failed", path);
    }
    free(tmp);
    free(buf);
    return status;
}

int rvs_trainer_checkpoint_load(struct rvs_trainer *tr, const char *path)
{
    int status = RVS_OK;
    FILE *f = NULL;
    float *buf = NULL;
    size_t n = tr->lay.total, W = tr->cfg.width, nbn = 0;
    struct rvs_sha256 h;
    rvs_sha256_init(&h);
    f = fopen(path, "rb");
    if (!f) {
        rvs_log(RVS_LOG_ERROR, "train", "cannot open checkpoint %s", path);
        return RVS_ERR_IO;
    }
    for (size_t l = 1; l <= tr->cfg.nlayers; l++)
        nbn += rvs_train_has_bn(tr, l) ? 1 : 0;
    buf = rvs_malloc((3 * n + 2 * W * nbn) * sizeof *buf);
    if (!buf) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    char magic[8];
    uint64_t hdr[14];
    double dv[2];
    unsigned char digest[32], want[32];
    if (read_all(f, magic, 8, &h) != RVS_OK || memcmp(magic, ckpt_magic, 8) != 0 ||
        read_all(f, hdr, sizeof hdr, &h) != RVS_OK || read_all(f, dv, sizeof dv, &h) != RVS_OK) {
        rvs_log(RVS_LOG_ERROR, "train", "%s is not an rvsfit-cl-train checkpoint", path);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    if (hdr[0] != tr->indim || hdr[1] != tr->npix || hdr[2] != tr->cfg.nlayers ||
        hdr[3] != tr->cfg.width || hdr[4] != tr->cfg.npc ||
        hdr[5] != (uint64_t)tr->cfg.with_batchnorm || hdr[6] != n) {
        rvs_log(RVS_LOG_ERROR, "train",
                "checkpoint %s is for another network (indim %llu, npix %llu, nlayers %llu, "
                "width %llu, npc %llu, batchnorm %llu); start without --resume or use the same "
                "options",
                path, (unsigned long long)hdr[0], (unsigned long long)hdr[1],
                (unsigned long long)hdr[2], (unsigned long long)hdr[3],
                (unsigned long long)hdr[4], (unsigned long long)hdr[5]);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    if (read_all(f, buf, (3 * n + 2 * W * nbn) * sizeof *buf, &h) != RVS_OK ||
        fread(want, 1, 32, f) != 32) {
        rvs_log(RVS_LOG_ERROR, "train", "checkpoint %s is truncated", path);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    rvs_sha256_final(&h, digest);
    if (memcmp(digest, want, 32) != 0) {
        rvs_log(RVS_LOG_ERROR, "train", "checkpoint %s is corrupt (checksum mismatch)", path);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    RVS_TRY(rvs_buffer_write(tr->ctx, tr->params, 0, n * sizeof(float), buf));
    RVS_TRY(rvs_buffer_write(tr->ctx, tr->adam_m, 0, n * sizeof(float), buf + n));
    RVS_TRY(rvs_buffer_write(tr->ctx, tr->adam_v, 0, n * sizeof(float), buf + 2 * n));
    const float *rb = buf + 3 * n;
    for (size_t l = 1; l <= tr->cfg.nlayers; l++)
        if (rvs_train_has_bn(tr, l)) {
            RVS_TRY(rvs_trainer_running_write(tr, l, rb, rb + W));
            rb += 2 * W;
        }
    tr->adam_t = hdr[7];
    tr->epoch = (size_t)hdr[8];
    tr->sched_bad = (size_t)hdr[9];
    for (int i = 0; i < 4; i++)
        tr->rng[i] = hdr[10 + i];
    tr->lr = dv[0];
    tr->sched_best = dv[1];
    rvs_log(RVS_LOG_INFO, "train", "resumed from %s at epoch %zu (lr %.3g)", path, tr->epoch,
            tr->lr);
cleanup:
    if (f)
        fclose(f);
    free(buf);
    return status;
}
