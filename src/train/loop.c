/* loop.c: the training loop (rvs_trainer_fit, rvspecfit's train_interpolator.py main and
 * getSchedOptim): epochs on the device (train.c), the held-out loss, the learning-rate
 * scheduler on plateaus, early stopping, and at the wall-time limit a checkpoint (checkpoint.c)
 * for a later run to continue from. */
#include <config.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/internal.h"
#include "rvsfit/train.h"
#include "train/train_internal.h"

/* ------------------------------------------------------------------ the loop */

/* torch.optim.lr_scheduler.ReduceLROnPlateau.step, mode 'min', threshold_mode 'rel',
 * cooldown 0, min_lr 0 (rvspecfit getSchedOptim's settings). */
static void scheduler_step(struct rvs_trainer *tr, double metric)
{
    if (metric < tr->sched_best * (1 - tr->cfg.lr_threshold)) {
        tr->sched_best = metric;
        tr->sched_bad = 0;
    } else
        tr->sched_bad++;
    if (tr->sched_bad > tr->cfg.patience) {
        double next = tr->lr * tr->cfg.lr_factor;
        if (tr->lr - next > tr->cfg.lr_eps) {
            rvs_log(RVS_LOG_INFO, "train", "epoch %zu: learning rate %.3g -> %.3g", tr->epoch,
                    tr->lr, next);
            tr->lr = next;
        }
        tr->sched_bad = 0;
    }
}

int rvs_trainer_fit(struct rvs_trainer *tr, rvs_train_report_fn report, void *user,
                    double *final_train, double *final_val, size_t *epochs_run)
{
    int status = RVS_OK;
    float *best = NULL, *best_mean = NULL, *best_var = NULL;
    size_t W = tr->cfg.width, L = tr->cfg.nlayers;
    double best_val = INFINITY, best_train = NAN, last_train = NAN, last_val = NAN;
    size_t since_best = 0, start = tr->epoch;
    int have_best = 0;
    double fit_start = rvs_train_now();
    tr->resumable = 0;
    best = rvs_malloc(tr->lay.total * sizeof *best);
    best_mean = rvs_malloc((L + 1) * W * sizeof *best_mean);
    best_var = rvs_malloc((L + 1) * W * sizeof *best_var);
    if (!best || !best_mean || !best_var) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    while (tr->epoch < tr->cfg.max_epochs) {
        struct rvs_train_epoch rep = {0};
        double t0 = rvs_train_now();
        rep.lr = tr->lr;
        tr->epoch++;
        RVS_TRY(rvs_trainer_epoch(tr, &rep.train_loss));
        scheduler_step(tr, rep.train_loss);
        rep.val_loss = NAN;
        if (tr->nval) {
            RVS_TRY(rvs_train_evaluate_dev(tr, tr->d_val, tr->nval, &rep.val_loss, NULL));
            if (rep.val_loss < best_val) {
                best_val = rep.val_loss;
                best_train = rep.train_loss;
                since_best = 0;
                rep.improved = 1;
                if (tr->cfg.stop_patience) {
                    RVS_TRY(rvs_trainer_params_read(tr, best));
                    for (size_t l = 1; l <= L; l++)
                        if (rvs_train_has_bn(tr, l))
                            RVS_TRY(rvs_trainer_running_read(tr, l, best_mean + l * W,
                                                             best_var + l * W));
                    have_best = 1;
                }
            } else
                since_best++;
        }
        rep.epoch = tr->epoch;
        rep.seconds = rvs_train_now() - t0;
        last_train = rep.train_loss;
        last_val = rep.val_loss;
        if (!isfinite(rep.train_loss)) {
            rvs_log(RVS_LOG_ERROR, "train", "epoch %zu: the training loss is %g; training "
                    "diverged (lower --lr)", tr->epoch, rep.train_loss);
            status = RVS_ERR_INVALID_ARGUMENT;
            goto cleanup;
        }
        if (report && report(&rep, user) != 0) {
            rvs_log(RVS_LOG_INFO, "train", "stopped by the caller after epoch %zu", tr->epoch);
            break;
        }
        if (tr->cfg.checkpoint_path && tr->cfg.checkpoint_every &&
            tr->epoch % tr->cfg.checkpoint_every == 0)
            RVS_TRY(rvs_trainer_checkpoint_save(tr, tr->cfg.checkpoint_path));
        if (tr->lr < tr->cfg.min_lr) {
            rvs_log(RVS_LOG_INFO, "train", "learning rate %.3g below %.3g: done", tr->lr,
                    tr->cfg.min_lr);
            break;
        }
        if (tr->cfg.time_limit > 0 && rvs_train_now() - fit_start > tr->cfg.time_limit) {
            rvs_log(RVS_LOG_INFO, "train", "time limit of %.0f s reached after epoch %zu",
                    tr->cfg.time_limit, tr->epoch);
            /* Training was cut short, not finished: keep the state it stopped in (not the
             * best weights restored below), so that a run with --resume goes on where this
             * one stopped. This is how a training longer than one job's wall time is done. */
            if (tr->cfg.checkpoint_path) {
                RVS_TRY(rvs_trainer_checkpoint_save(tr, tr->cfg.checkpoint_path));
                tr->resumable = 1;
            }
            break;
        }
        if (tr->nval && tr->cfg.stop_patience && since_best >= tr->cfg.stop_patience) {
            rvs_log(RVS_LOG_INFO, "train",
                    "no better validation loss in %zu epochs: stopping (best %.6g)", since_best,
                    best_val);
            break;
        }
    }
    if (have_best && since_best > 0) {
        RVS_TRY(rvs_trainer_params_write(tr, best));
        for (size_t l = 1; l <= L; l++)
            if (rvs_train_has_bn(tr, l))
                RVS_TRY(rvs_trainer_running_write(tr, l, best_mean + l * W, best_var + l * W));
        last_train = best_train;
        last_val = best_val;
    }
    if (final_train)
        *final_train = last_train;
    if (final_val)
        *final_val = last_val;
    if (epochs_run)
        *epochs_run = tr->epoch - start;
cleanup:
    free(best);
    free(best_mean);
    free(best_var);
    return status;
}

