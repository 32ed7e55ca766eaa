/* nn.cl: the element-wise parts of the NN emulator (src/engine/nn.c): the parameter mapping, and the
 * bias + activation epilogues that follow each GEMM. The GEMMs themselves go through
 * rvs_gemm_f32. Matrices are row-major, one parameter vector per row; 2-D launches put the
 * column in dimension 0 (contiguous accesses) and the row in dimension 1. */

/* inputs = map(params), rvspecfit nn/NNInterpolator.py, Mapper.forward. coef holds, per column
 * j, M_j, S_j and 10^M_j. A log column is computed as log10(theta / 10^M): theta and 10^M are
 * close, so the quotient is near 1 and there is no cancellation between log10(theta) and M.
 * That matters only in fp32, where log10(theta) - M would lose ~3 bits for teff ~ 10^M. */
__kernel void rvs_nn_map(__global const rvs_real *params, uint count, uint indim, uint log_mask,
                         __global const rvs_acc *coef, __global float *inputs)
{
    size_t e = get_global_id(0);
    if (e >= count)
        return;
    for (uint j = 0; j < indim; j++) {
        rvs_acc x = params[e * indim + j], y;
        if ((log_mask >> j) & 1u)
            y = log10(x / coef[3 * j + 2]);
        else
            y = x - coef[3 * j];
        inputs[e * indim + j] = (float)(y / coef[3 * j + 1]);
    }
}

/* h = SiLU(h + bias) in place; h is rows x cols. SiLU(v) = v sigmoid(v) (torch.nn.SiLU); for
 * v < -88 exp(-v) overflows to inf and the result is -0 where torch gives ~1e-37: negligible. */
__kernel void rvs_nn_bias_silu(__global float *h, __global const float *bias, uint cols,
                               uint rows)
{
    size_t j = get_global_id(0), e = get_global_id(1);
    if (j >= cols || e >= rows)
        return;
    size_t i = e * cols + j;
    float v = h[i] + bias[j];
    h[i] = v / (1.0f + exp(-v));
}

/* h = h + bias in place: the log-flux output. */
__kernel void rvs_nn_bias(__global float *h, __global const float *bias, uint cols, uint rows)
{
    size_t j = get_global_id(0), e = get_global_id(1);
    if (j >= cols || e >= rows)
        return;
    size_t i = e * cols + j;
    h[i] = h[i] + bias[j];
}

/* flux = exp(clip(h + bias, -300, 300)) (rvspecfit nn/RVSInterpolator.py,
 * RVSInterpolator.__call__: the float32 network output is widened, clipped, exponentiated).
 * The comparisons keep a NaN a NaN, as numpy's clip does. In fp32 builds flux may be the same
 * buffer as h (each item reads its element before writing it). */
__kernel void rvs_nn_bias_flux(__global const float *h, __global const float *bias, uint cols,
                               uint rows, __global rvs_real *flux)
{
    size_t j = get_global_id(0), e = get_global_id(1);
    if (j >= cols || e >= rows)
        return;
    size_t i = e * cols + j;
    rvs_real v = (rvs_real)(h[i] + bias[j]);
    if (v > (rvs_real)300)
        v = (rvs_real)300;
    else if (v < (rvs_real)-300)
        v = (rvs_real)-300;
    flux[i] = exp(v);
}

/* ------------------------------------------------------------------ forward-mode tangents
 * rvs_nn_forward_tangent (src/nn.c) runs the network on (1 + indim) x count rows in block
 * layout: rows [0, count) carry the values, rows [(1 + k) count, (2 + k) count) the tangents
 * d/dtheta_k of the same vectors. The GEMMs are linear, so they carry the tangent rows
 * unchanged; only these element-wise steps differ from the plain pass. */

/* The primal rows exactly as rvs_nn_map writes them, and the tangent rows: input j of
 * tangent k is d u_j / d theta_k = [j == k] / (S_j theta_j ln 10) for a log10 column,
 * [j == k] / S_j otherwise (Mapper.forward differentiated). */
__kernel void rvs_nn_map_tangent(__global const rvs_real *params, uint count, uint indim,
                                 uint log_mask, __global const rvs_acc *coef,
                                 __global float *inputs)
{
    size_t e = get_global_id(0);
    if (e >= count)
        return;
#if RVS_HAVE_FP64
    const rvs_acc ln10 = M_LN10;
#else
    const rvs_acc ln10 = M_LN10_F;
#endif
    for (uint j = 0; j < indim; j++) {
        rvs_acc x = params[e * indim + j], y, dy;
        if ((log_mask >> j) & 1u) {
            y = log10(x / coef[3 * j + 2]);
            dy = 1 / (x * ln10 * coef[3 * j + 1]);
        } else {
            y = x - coef[3 * j];
            dy = 1 / coef[3 * j + 1];
        }
        inputs[e * indim + j] = (float)(y / coef[3 * j + 1]);
        for (uint k = 0; k < indim; k++)
            inputs[((1 + k) * (size_t)count + e) * indim + j] = k == j ? (float)dy : 0.0f;
    }
}

/* Hidden-layer epilogue with tangents: for the value a = h + bias of vector e, channel j,
 * h = SiLU(a) exactly as rvs_nn_bias_silu computes it, and each of the ntan tangent rows
 * (no bias: the bias does not depend on theta) is multiplied by
 * SiLU'(a) = s + SiLU(a) (1 - s), s = sigmoid(a) = 1 / (1 + exp(-a)). For a < -88, exp(-a) is
 * inf, s = 0 and SiLU' = 0 (the exact value, a e^a, is below 1e-36). */
__kernel void rvs_nn_bias_silu_tangent(__global float *h, __global const float *bias, uint cols,
                                       uint count, uint ntan)
{
    size_t j = get_global_id(0), e = get_global_id(1);
    if (j >= cols || e >= count)
        return;
    size_t i = e * cols + j, plane = (size_t)count * cols;
    float v = h[i] + bias[j];
    float ex = 1.0f + exp(-v);
    float y = v / ex, s = 1.0f / ex;
    float d = s + y * (1.0f - s);
    h[i] = y;
    for (uint k = 1; k <= ntan; k++)
        h[i + k * plane] *= d;
}

/* Flux output with tangents: flux = exp(clip(o)), o = h + bias, as rvs_nn_bias_flux, and
 * d flux = flux do where -300 < o < 300, 0 where the clip holds o constant (or o is NaN,
 * which leaves flux NaN). In fp32 builds flux may be the same buffer as h (each item reads
 * its elements before writing them). */
__kernel void rvs_nn_bias_flux_tangent(__global const float *h, __global const float *bias,
                                       uint cols, uint count, uint ntan,
                                       __global rvs_real *flux)
{
    size_t j = get_global_id(0), e = get_global_id(1);
    if (j >= cols || e >= count)
        return;
    size_t i = e * cols + j, plane = (size_t)count * cols;
    rvs_real v = (rvs_real)(h[i] + bias[j]);
    int inside = v > (rvs_real)-300 && v < (rvs_real)300;
    if (v > (rvs_real)300)
        v = (rvs_real)300;
    else if (v < (rvs_real)-300)
        v = (rvs_real)-300;
    rvs_real f = exp(v);
    for (uint k = 1; k <= ntan; k++) {
        rvs_real dv = (rvs_real)h[i + k * plane];
        flux[i + k * plane] = inside ? f * dv : (rvs_real)0;
    }
    flux[i] = f;
}
