/* rvsfit/nn.h: the neural-network template emulator (rvspecfit's NNInterpolator) on the device:
 * parameters (teff, logg, feh, alpha, ...) in, log-flux or flux on the template grid out, for a
 * whole batch of parameter vectors at once.
 *
 * The network (rvspecfit nn/NNInterpolator.py, NNInterpolator.initLayers, with its
 * batchnorm_after_nl = True) is, for E parameter vectors at a time:
 *
 *   u   = map(theta)                                   E x indim   (Mapper.forward)
 *   h0  = SiLU(u W0^T + b0)                            E x width   lin_0
 *   h_i = BN_i(SiLU(h_{i-1} W_i^T + b_i)), i=1..nlayers E x width   lin_i, bn_i (BN optional)
 *   z   = SiLU(h_nlayers W_o^T + b_o)                  E x npc     lin_{nlayers+1}
 *   out = z W_pc^T + b_pc                              E x npix    pc_layer
 *   flux = exp(clip(out, -300, 300))                               (RVSInterpolator.__call__)
 *
 * map(theta)_j = (log10(theta_j) - M_j) / S_j where column j is flagged as logarithmic, else
 * (theta_j - M_j) / S_j. BatchNorm in inference is the per-channel affine map
 * gamma (x - mean) / sqrt(var + eps) + beta; it is folded into the following linear layer when
 * the network is created, so only GEMMs and two small element-wise kernels run.
 *
 * Format-independent meaning of the description (whatever file the weights come from):
 *   lin[i].weight  torch's model.lin_<i>.weight, out x in, row-major float32, i = 0..nlayers+1
 *                  (in x out: indim x width, width x width, ..., width x npc)
 *   lin[i].bias    model.lin_<i>.bias, `out` floats (all layers have a bias in rvspecfit)
 *   bn[i]          model.bn_<i>.{weight, bias, running_mean, running_var} (width floats each)
 *                  and its eps, for i = 1..nlayers when with_batchnorm (bn[0] is unused)
 *   pc.weight      pc_layer.weight, npix x npc row-major; pc.bias pc_layer.bias (npix)
 *   log_input[j]   1 when the Mapper takes log10 of parameter j (rvspecfit's log_ids)
 *   map_center[j], map_scale[j]  the Mapper's M and S (double; rvspecfit keeps them as numpy
 *                  arrays)
 * The host arrays are only read by rvs_nn_create; the caller keeps ownership. */
#ifndef RVSFIT_NN_H
#define RVSFIT_NN_H

#include <stddef.h>

#include "rvsfit/context.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RVS_NN_MAX_INPUTS 8  /* parameters per vector (rvspecfit uses 4) */
#define RVS_NN_MAX_HIDDEN 16 /* width x width layers (nlayers) */
/* lin_0, the hidden layers, and the width -> npc layer */
#define RVS_NN_MAX_LINEAR (RVS_NN_MAX_HIDDEN + 2)

struct rvs_nn_linear {
    const float *weight; /* out x in, row-major (torch's layout) */
    const float *bias;   /* out */
};

struct rvs_nn_batchnorm {
    const float *weight, *bias;             /* gamma, beta: width each */
    const float *running_mean, *running_var; /* width each; var + eps must be > 0 */
    double eps;                              /* torch's default is 1e-5 */
};

struct rvs_nn_desc {
    size_t indim, nlayers, width, npc, npix;
    int with_batchnorm; /* rvspecfit's withbn: bn[1..nlayers] are read only when set */
    struct rvs_nn_linear lin[RVS_NN_MAX_LINEAR]; /* lin[0..nlayers+1] */
    struct rvs_nn_batchnorm bn[RVS_NN_MAX_LINEAR];
    struct rvs_nn_linear pc;
    int log_input[RVS_NN_MAX_INPUTS];
    double map_center[RVS_NN_MAX_INPUTS]; /* M */
    double map_scale[RVS_NN_MAX_INPUTS];  /* S, non-zero */
};

enum rvs_nn_output {
    RVS_NN_FLUX_REAL = 0,  /* exp(clip(out, -300, 300)) as rvs_real, E x npix: the template the
                            * rotation and spline stages read (in fp32 mode float, where
                            * out > 88.7 overflows to +inf and out < -103 gives 0) */
    RVS_NN_LOGFLUX_F32 = 1 /* out itself as float32, E x npix (tests, training) */
};

struct rvs_nn; /* weights on the device, BatchNorm folded, plus work space */

/* Zeroes a description (then fill in shapes and pointers). */
void rvs_nn_desc_init(struct rvs_nn_desc *desc);

/* Validates shapes and values (every weight finite, var + eps > 0, S finite and non-zero),
 * folds BatchNorm into the next layer in double, and uploads the network to ctx's device.
 * On failure *nn is NULL and the reason has been logged. */
int rvs_nn_create(struct rvs_context *ctx, const struct rvs_nn_desc *desc, struct rvs_nn **nn);
/* Releases the network and its work space; accepts NULL and sets *nn to NULL. */
void rvs_nn_destroy(struct rvs_nn **nn);

size_t rvs_nn_indim(const struct rvs_nn *nn);
size_t rvs_nn_npix(const struct rvs_nn *nn);

/* Maps raw parameters to network inputs on the device: params is E x indim rvs_real
 * (row-major, one vector per row), inputs E x indim float32. Computed in rvs_acc and rounded
 * to float once (rvspecfit rounds the raw parameters to float32 first; the difference is below
 * one float ulp of the result). A flagged column with theta <= 0 gives NaN / -inf, like numpy. */
int rvs_nn_map(struct rvs_context *ctx, struct rvs_nn *nn, cl_mem params, size_t count,
               cl_mem inputs);

/* Evaluates the network for `count` parameter vectors (params: count x indim rvs_real) and
 * writes count x npix values to `out` (rvs_real or float, per `what`). Enqueued on ctx->queue;
 * returns without waiting on GPUs. Work space grows with count and is kept for the next call;
 * when it cannot be allocated the device's status (e.g. CL_MEM_OBJECT_ALLOCATION_FAILURE) is
 * returned and the network stays usable, so the caller can retry with a smaller batch. */
int rvs_nn_forward(struct rvs_context *ctx, struct rvs_nn *nn, cl_mem params, size_t count,
                   cl_mem out, enum rvs_nn_output what);

/* The network's values and their exact derivatives with respect to the parameters (forward-mode
 * differentiation), for the fitter's gradients (issue 18) in place of finite differences.
 * `out` holds (1 + indim) x count rows of npix values (rvs_real or float, per `what`) in block
 * layout:
 *   row e                     (e < count)  what rvs_nn_forward writes for vector e (the same
 *                                          bits on CPU devices, whose GEMM rounds each row
 *                                          independently of its batch-mates);
 *   row (1 + k) count + e     (k < indim)  d(row e) / d theta_k in the parameter's own units
 *                                          (per K for teff, per dex for logg, [Fe/H], ...).
 * Computed by carrying indim tangent rows per vector through the same float32 GEMMs (one GEMM
 * per layer over (1 + indim) count rows), with the derivatives of the mapping
 * (1 / (S theta ln 10) for a log10 column, 1 / S otherwise), of SiLU (s + SiLU(a) (1 - s),
 * s = sigmoid(a)) and of the output (flux d(out) inside the clip, 0 where it clips; the
 * log-flux tangent is d(out) itself) applied exactly; the folded BatchNorm is affine and rides
 * in the GEMMs. The tangents therefore carry float32 rounding like the values (~1e-6 relative
 * to the row's scale). Rows are in the layout that rvs_rotation_apply_rows (tangents share the
 * template's vsini) and rvs_spline_construct (any rows) take as they are. Work space grows to
 * (1 + indim) count rows, as for rvs_nn_forward. */
int rvs_nn_forward_tangent(struct rvs_context *ctx, struct rvs_nn *nn, cl_mem params,
                           size_t count, cl_mem out, enum rvs_nn_output what);

/* Known-answer check of a tiny network, for the context's self-test table. */
int rvs_nn_selftest(struct rvs_context *ctx, char *detail, size_t detail_size);

#ifdef __cplusplus
}
#endif

#endif
