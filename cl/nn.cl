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
