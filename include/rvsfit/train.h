/* rvsfit/train.h: training the NN template emulator (the network of rvsfit/nn.h) on an OpenCL
 * device, as rvspecfit's nn/train_interpolator.py does it:
 *
 *   - targets: the log-flux D of the grid spectra, normalised per pixel by the mean d0 and the
 *     standard deviation sd0 over the grid; the network's output y is un-normalised as
 *     R = y sd0 + d0;
 *   - loss: mean |R - D| / spread0 over the mini-batch and pixels (torch's l1_loss), spread0 the
 *     standard deviation of D - d0 over all values (so an untrained network scores about 1);
 *   - Adam (torch defaults: betas 0.9, 0.999, eps 1e-8, no weight decay), learning rate 1e-3,
 *     ReduceLROnPlateau on the epoch's training loss (factor 0.5, patience 20, relative
 *     threshold 1e-5, eps 1e-9), stop when the learning rate falls below min_lr or after
 *     max_epochs (rvspecfit's getSchedOptim and main loop);
 *   - shuffled mini-batches every epoch; BatchNorm (optional; rvspecfit's trainer turns it off)
 *     in training mode with batch statistics and running estimates (momentum 0.1);
 *   - optional PCA initialisation of pc_layer: weight = components^T / sd0, bias 0;
 *   - at the end, pc_layer is folded with the normalisation: W' = sd0 W, b' = d0 + sd0 b.
 * Additions of rvsfit-cl: a validation set scored every epoch, early stopping on it with a
 * patience (the weights of the best validation epoch are kept), and checkpoints.
 *
 * Every mini-batch is a few GEMMs (rvs_gemm_f32: CLBlast on GPUs, OpenBLAS on CPU devices) and
 * small kernels; the host only reads the loss once per epoch. */
#ifndef RVSFIT_TRAIN_H
#define RVSFIT_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "rvsfit/context.h"
#include "rvsfit/nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The loss on the log-flux residual r = R - D: rvspecfit's mean |r| / spread0 (torch l1_loss);
 * mean r^2 / spread0^2 (mse_loss), which weighs the largest residuals more; or
 * mean (|r| + r^2 / (2 delta)) / spread0: L1 below delta, quadratic above, so that residuals
 * beyond delta (e.g. 0.02, the 2% target of the 99th percentile) are pushed down harder while
 * the small ones keep L1's median. */
enum rvs_train_loss { RVS_TRAIN_LOSS_L1 = 0, RVS_TRAIN_LOSS_L2 = 1, RVS_TRAIN_LOSS_L1L2 = 2 };

struct rvs_train_config {
    size_t nlayers, width, npc; /* network shape (rvspecfit defaults 2, 256, 200) */
    int with_batchnorm;         /* BatchNorm after the SiLU of hidden layers 1..nlayers */
    double bn_eps, bn_momentum; /* 1e-5, 0.1 (torch) */
    size_t batch;               /* mini-batch rows */
    size_t max_epochs;
    double lr, min_lr;                      /* 1e-3, 1e-8 */
    double beta1, beta2, adam_eps;          /* 0.9, 0.999, 1e-8 */
    size_t patience;                        /* ReduceLROnPlateau patience, 20 */
    double lr_factor, lr_threshold, lr_eps; /* 0.5, 1e-5 (relative), 1e-9 */
    size_t stop_patience; /* epochs without a better validation loss before stopping; 0: off */
    int pca_init;
    int loss;                  /* enum rvs_train_loss (RVS_TRAIN_LOSS_L1) */
    double loss_delta;         /* delta of RVS_TRAIN_LOSS_L1L2, in ln flux (0.02) */
    uint64_t seed;             /* weights and mini-batch order */
    size_t eval_rows;          /* rows per evaluation chunk (validation), default 1024 */
    size_t checkpoint_every;   /* epochs between checkpoints (with checkpoint_path), 32 */
    double time_limit;         /* > 0: stop after the epoch that ends this many seconds after
                                  rvs_trainer_fit began (wall time); 0: no limit */
    const char *checkpoint_path; /* NULL: no checkpoints */
};

/* rvspecfit's defaults (batch 100) with validation early stopping after 100 epochs. */
void rvs_train_config_init(struct rvs_train_config *cfg);

/* Where each tensor starts in the flat parameter (and gradient) vector, in floats. Tensors are
 * torch's, in torch's layout: lin_w[i] out x in, lin_b[i] out, bn_w/bn_b[i] (i = 1..nlayers,
 * with BatchNorm) width, pc_w npix x npc, pc_b npix. Offsets are multiples of 64. */
struct rvs_train_layout {
    size_t total;
    size_t nlin; /* nlayers + 2 */
    size_t lin_in[RVS_NN_MAX_LINEAR], lin_out[RVS_NN_MAX_LINEAR];
    size_t lin_w[RVS_NN_MAX_LINEAR], lin_b[RVS_NN_MAX_LINEAR];
    size_t bn_w[RVS_NN_MAX_LINEAR], bn_b[RVS_NN_MAX_LINEAR];
    size_t pc_w, pc_b;
};

/* Per-epoch report, given to the callback of rvs_trainer_fit. */
struct rvs_train_epoch {
    size_t epoch;         /* 1-based */
    double train_loss;    /* mean over the epoch's mini-batches, weighted by rows */
    double val_loss;      /* NAN without validation rows */
    double lr;            /* learning rate used in this epoch */
    double seconds;       /* wall time of the epoch */
    int improved;         /* validation loss is the best so far */
};

typedef int (*rvs_train_report_fn)(const struct rvs_train_epoch *epoch, void *user);

/* The trained network on the host, ready for rvs_nn_create or a library writer: pc_layer is
 * folded with the normalisation; BatchNorm is left unfolded (as trained). desc points into
 * this structure (its mapping fields are zero: the caller owns the parameter mapping). */
struct rvs_trained_net {
    struct rvs_nn_desc desc;
    float *lin_w[RVS_NN_MAX_LINEAR], *lin_b[RVS_NN_MAX_LINEAR];
    float *bn_w[RVS_NN_MAX_LINEAR], *bn_b[RVS_NN_MAX_LINEAR];
    float *bn_mean[RVS_NN_MAX_LINEAR], *bn_var[RVS_NN_MAX_LINEAR];
    float *pc_w, *pc_b;
};
void rvs_trained_net_free(struct rvs_trained_net *net);

struct rvs_trainer;

/* Allocates the trainer for a network with `indim` inputs and `npix` outputs on ctx's device.
 * The weights are zero until rvs_trainer_init_weights. */
int rvs_trainer_create(struct rvs_context *ctx, const struct rvs_train_config *cfg, size_t indim,
                       size_t npix, struct rvs_trainer **tr);
void rvs_trainer_destroy(struct rvs_trainer **tr);
const struct rvs_train_layout *rvs_trainer_layout(const struct rvs_trainer *tr);

/* The grid: inputs (nspec x indim, mapped parameters) and log-flux (nspec x npix), row-major.
 * Computes d0, sd0 and spread0 over all nspec rows (as rvspecfit does; a pixel with sd0 = 0
 * gets sd0 = 1) and uploads the grid. train_rows / val_rows (0-based, distinct) pick the
 * training and validation spectra (val may be empty). The trainer keeps a pointer to logflux
 * for rvs_trainer_pca_init: it must live as long as the trainer. */
int rvs_trainer_set_data(struct rvs_trainer *tr, size_t nspec, const float *inputs,
                         const float *logflux, const size_t *train_rows, size_t ntrain,
                         const size_t *val_rows, size_t nval);
/* d0, sd0 (npix floats each, owned by the trainer) and spread0. */
void rvs_trainer_normalisation(const struct rvs_trainer *tr, const float **d0, const float **sd0,
                               double *spread0);

/* torch's default initialisation (Linear: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias;
 * BatchNorm: gamma 1, beta 0, running mean 0, running variance 1) from cfg->seed; resets Adam
 * and the schedule. */
int rvs_trainer_init_weights(struct rvs_trainer *tr);
/* pc_layer from the top npc principal components of the training log-flux (rvs_train_pca):
 * weight[j][c] = component_c[j] / sd0[j], bias 0 (rvspecfit's --pca_init). Reports the relative
 * L1 reconstruction error of the components (rvspecfit's "loss0") in *loss0 (may be NULL). */
int rvs_trainer_pca_init(struct rvs_trainer *tr, double *loss0);

/* The whole parameter / gradient vector (layout.total floats) between host and device. */
int rvs_trainer_params_read(struct rvs_trainer *tr, float *host);
int rvs_trainer_params_write(struct rvs_trainer *tr, const float *host);
int rvs_trainer_grads_read(struct rvs_trainer *tr, float *host);
/* Running mean and variance of BatchNorm layer `layer` (1..nlayers), width floats each. */
int rvs_trainer_running_read(struct rvs_trainer *tr, size_t layer, float *mean, float *var);
int rvs_trainer_running_write(struct rvs_trainer *tr, size_t layer, const float *mean,
                              const float *var);

/* One training-mode forward and backward pass over the grid rows `rows` (count >= 2 with
 * BatchNorm): leaves the gradient of the loss in the gradient vector, updates the BatchNorm
 * running estimates, and returns the batch loss in *loss (may be NULL). */
int rvs_trainer_gradient(struct rvs_trainer *tr, const size_t *rows, size_t count, double *loss);
/* One Adam step with the current gradient vector and learning rate. */
int rvs_trainer_adam_step(struct rvs_trainer *tr);
/* One epoch: shuffled mini-batches of the training rows, each a gradient + Adam step. */
int rvs_trainer_epoch(struct rvs_trainer *tr, double *train_loss);
/* Inference-mode loss over `rows` (running BatchNorm statistics); with pred != NULL also the
 * un-normalised log-flux prediction, count x npix. */
int rvs_trainer_evaluate(struct rvs_trainer *tr, const size_t *rows, size_t count, double *loss,
                         float *pred);
double rvs_trainer_lr(const struct rvs_trainer *tr);
/* Epochs trained in all, those of the runs a checkpoint carried over included. */
size_t rvs_trainer_epochs_done(const struct rvs_trainer *tr);
/* Whether the last rvs_trainer_fit stopped at its time limit and saved a checkpoint of the
 * state it stopped in (the configuration's checkpoint_path), for a later run to resume. */
int rvs_trainer_resumable(const struct rvs_trainer *tr);
/* Changes the configuration's time_limit (seconds, 0: none) of an existing trainer. */
void rvs_trainer_set_time_limit(struct rvs_trainer *tr, double seconds);

/* The training loop: epochs until max_epochs, the learning rate below min_lr, the time limit,
 * or (with validation rows and stop_patience) no better validation loss for stop_patience
 * epochs, with
 * the schedule, checkpoints, and the best validation weights restored at the end. Stopped by
 * the time limit, it first saves a checkpoint of the state it stopped in (when the
 * configuration has a checkpoint_path): see rvs_trainer_resumable. report (may
 * be NULL) is called after every epoch; a non-zero return stops training. *final_train and
 * *final_val (may be NULL) get the losses of the weights kept. */
int rvs_trainer_fit(struct rvs_trainer *tr, rvs_train_report_fn report, void *user,
                    double *final_train, double *final_val, size_t *epochs_run);

/* Checkpoint (weights, Adam moments, running statistics, schedule, epoch and random state) to
 * `path` via a temporary file and rename; resume reads it back after checking the shapes. */
int rvs_trainer_checkpoint_save(struct rvs_trainer *tr, const char *path);
int rvs_trainer_checkpoint_load(struct rvs_trainer *tr, const char *path);

/* The current network on the host with pc_layer un-normalised (see struct rvs_trained_net). */
int rvs_trainer_export(struct rvs_trainer *tr, struct rvs_trained_net *net);

/* Principal components of the rows `rows` of data (row-major, `ld` floats per row, npix
 * columns) by randomized subspace iteration in double (OpenBLAS dgemm over row chunks, a Jacobi
 * eigen-decomposition of the small projected matrix): the k leading unit components (k x npix,
 * sign: largest |value| positive) and the column mean (may be NULL). Exact, to rounding, when
 * the centred data have rank <= k. Needs k <= min(count, npix). */
int rvs_train_pca(const float *data, size_t ld, const size_t *rows, size_t count, size_t npix,
                  size_t k, uint64_t seed, double *components, double *mean);

#ifdef __cplusplus
}
#endif

#endif
