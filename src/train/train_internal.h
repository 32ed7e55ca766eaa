/* train_internal.h: the trainer's state, shared by train.c (creation, data, steps), loop.c (the
 * epochs, scheduler, early stopping) and checkpoint.c (the trained network out, checkpoints in
 * and out). Not installed. */
#ifndef RVS_TRAIN_INTERNAL_H
#define RVS_TRAIN_INTERNAL_H

#include <stdint.h>

#include "base/internal.h"
#include "rvsfit/train.h"


enum { N_KERNELS = 9 };
enum {
    K_GATHER,
    K_BIAS_SILU,
    K_SILU_BACK,
    K_COLSUM,
    K_BN_FWD,
    K_BN_EVAL,
    K_BN_BACK,
    K_LOSS,
    K_ADAM
};

struct rvs_trainer {
    struct rvs_context *ctx;
    struct rvs_train_config cfg;
    size_t indim, npix;
    struct rvs_train_layout lay;
    cl_kernel k[N_KERNELS];
    cl_mem params, grads, adam_m, adam_v;
    cl_mem run_mean[RVS_NN_MAX_LINEAR], run_var[RVS_NN_MAX_LINEAR], bn_saved[RVS_NN_MAX_LINEAR];
    /* work space for ws_rows rows */
    size_t ws_rows;
    cl_mem x, z[RVS_NN_MAX_LINEAR], a[RVS_NN_MAX_LINEAR], h[RVS_NN_MAX_LINEAR], y, dh[2];
    cl_mem loss_acc; /* npix rvs_acc */
    /* the grid */
    size_t nspec, ntrain, nval;
    const float *logflux; /* host, caller's */
    size_t *train_rows, *val_rows;
    uint32_t *perm; /* host copy of the epoch's order */
    float *d0, *sd0;
    double spread0;
    cl_mem d_inputs, d_flux, d_d0, d_sd0, d_perm, d_val, d_rows;
    size_t d_rows_cap;
    /* optimiser state */
    uint64_t adam_t;
    double lr, sched_best;
    size_t sched_bad, epoch;
    uint64_t rng[4];
    /* the last rvs_trainer_fit stopped at its time limit and left a checkpoint of the state it
     * stopped in, for a later run to continue */
    int resumable;
};


/* train.c: a monotonic clock (seconds); the loss (and, when pred is not NULL, the predictions)
 * of the count rows whose indices are on the device in idx, in evaluation mode. */
double rvs_train_now(void);
int rvs_train_evaluate_dev(struct rvs_trainer *tr, cl_mem idx, size_t count, double *loss,
                           float *pred);
/* Hidden layer `layer` (1..nlayers) has a BatchNorm when the configuration asks for them. */
int rvs_train_has_bn(const struct rvs_trainer *tr, size_t layer);

#endif
