/* train.cl: the element-wise and per-column parts of NN emulator training (src/train/train.c); the
 * GEMMs of the forward and backward passes go through rvs_gemm_f32. The network is float32
 * (as rvspecfit trains it); column sums accumulate in rvs_acc. Matrices are row-major with one
 * spectrum per row. All trainable parameters live in one flat float buffer (and their gradients
 * in another of the same layout), so kernels that touch a parameter tensor take its offset.
 * Per-column kernels (one work-item per column, looping over the rows of the mini-batch) keep
 * column sums deterministic: the same seed gives bit-identical weights. */

/* x[e, :] = inputs[rows[rows_off + e], :], the mini-batch's network inputs. */
__kernel void rvs_train_gather(__global const float *inputs, __global const uint *rows,
                               uint rows_off, uint count, uint indim, __global float *x)
{
    size_t e = get_global_id(0);
    if (e >= count)
        return;
    uint r = rows[rows_off + e];
    for (uint j = 0; j < indim; j++)
        x[e * indim + j] = inputs[(size_t)r * indim + j];
}

/* z += bias (the Linear layer's bias, kept in z for the SiLU derivative), a = SiLU(z).
 * SiLU(v) = v sigmoid(v) (torch.nn.SiLU). */
__kernel void rvs_train_bias_silu(__global float *z, __global const float *params, uint bias_off,
                                  uint cols, uint rows, __global float *a)
{
    size_t j = get_global_id(0), e = get_global_id(1);
    if (j >= cols || e >= rows)
        return;
    size_t i = e * cols + j;
    float v = z[i] + params[bias_off + j];
    z[i] = v;
    a[i] = v / (1.0f + exp(-v));
}

/* d = d * SiLU'(z) in place, SiLU'(z) = s (1 + z (1 - s)) with s = sigmoid(z). */
__kernel void rvs_train_silu_backward(__global float *d, __global const float *z, uint cols,
                                      uint rows)
{
    size_t j = get_global_id(0), e = get_global_id(1);
    if (j >= cols || e >= rows)
        return;
    size_t i = e * cols + j;
    float v = z[i], s = 1.0f / (1.0f + exp(-v));
    d[i] = d[i] * (s * (1.0f + v * (1.0f - s)));
}

/* out[j] = sum over rows of d[e, j] (a bias gradient), one work-item per column. */
__kernel void rvs_train_colsum(__global const float *d, uint cols, uint rows,
                               __global float *out, uint out_off)
{
    size_t j = get_global_id(0);
    if (j >= cols)
        return;
    rvs_ksum s;
    rvs_ksum_init(&s);
    for (uint e = 0; e < rows; e++)
        rvs_ksum_add(&s, d[(size_t)e * cols + j]);
    out[out_off + j] = (float)rvs_ksum_value(&s);
}

/* BatchNorm1d in training mode on a (rows x cols), torch semantics: per-column batch mean and
 * biased variance normalise the batch; the running estimates move by `momentum` towards the
 * batch mean and the unbiased variance (torch.nn.functional.batch_norm). Writes h = gamma xhat
 * + beta and keeps mean and 1/sqrt(var + eps) for the backward pass. rows >= 2. */
__kernel void rvs_train_bn_forward(__global const float *a, uint cols, uint rows,
                                   __global const float *params, uint gamma_off, uint beta_off,
                                   float eps, float momentum, __global float *run_mean,
                                   __global float *run_var, __global float *saved,
                                   __global float *h)
{
    size_t j = get_global_id(0);
    if (j >= cols)
        return;
    rvs_ksum s;
    rvs_ksum_init(&s);
    for (uint e = 0; e < rows; e++)
        rvs_ksum_add(&s, a[(size_t)e * cols + j]);
    rvs_acc mean = rvs_ksum_value(&s) / (rvs_acc)rows;
    rvs_ksum_init(&s);
    for (uint e = 0; e < rows; e++) {
        rvs_acc dv = (rvs_acc)a[(size_t)e * cols + j] - mean;
        rvs_ksum_add(&s, dv * dv);
    }
    rvs_acc var = rvs_ksum_value(&s) / (rvs_acc)rows;
    rvs_acc inv = (rvs_acc)1 / sqrt(var + (rvs_acc)eps);
    float g = params[gamma_off + j], b = params[beta_off + j];
    float meanf = (float)mean, invf = (float)inv;
    for (uint e = 0; e < rows; e++) {
        size_t i = (size_t)e * cols + j;
        h[i] = g * ((a[i] - meanf) * invf) + b;
    }
    saved[j] = meanf;
    saved[cols + j] = invf;
    rvs_acc unbiased = var * (rvs_acc)rows / (rvs_acc)(rows - 1);
    run_mean[j] = (float)((1 - (rvs_acc)momentum) * run_mean[j] + (rvs_acc)momentum * mean);
    run_var[j] = (float)((1 - (rvs_acc)momentum) * run_var[j] + (rvs_acc)momentum * unbiased);
}

/* BatchNorm1d in inference mode (running statistics), for validation. */
__kernel void rvs_train_bn_eval(__global const float *a, uint cols, uint rows,
                                __global const float *params, uint gamma_off, uint beta_off,
                                float eps, __global const float *run_mean,
                                __global const float *run_var, __global float *h)
{
    size_t j = get_global_id(0), e = get_global_id(1);
    if (j >= cols || e >= rows)
        return;
    size_t i = e * cols + j;
    float inv = 1.0f / sqrt(run_var[j] + eps);
    h[i] = params[gamma_off + j] * ((a[i] - run_mean[j]) * inv) + params[beta_off + j];
}

/* Backward of the training-mode BatchNorm: with xhat = (a - mean) inv and g = dL/dh,
 *   dgamma = sum g xhat, dbeta = sum g,
 *   dL/da = gamma inv / n (n g - sum g - xhat sum(g xhat)).
 * g is overwritten with dL/da. */
__kernel void rvs_train_bn_backward(__global float *g, __global const float *a, uint cols,
                                    uint rows, __global const float *params, uint gamma_off,
                                    __global const float *saved, __global float *grads,
                                    uint beta_off)
{
    size_t j = get_global_id(0);
    if (j >= cols)
        return;
    float meanf = saved[j], invf = saved[cols + j], gamma = params[gamma_off + j];
    rvs_ksum sg, sgx;
    rvs_ksum_init(&sg);
    rvs_ksum_init(&sgx);
    for (uint e = 0; e < rows; e++) {
        size_t i = (size_t)e * cols + j;
        rvs_acc x = (a[i] - meanf) * invf;
        rvs_ksum_add(&sg, g[i]);
        rvs_ksum_add(&sgx, g[i] * x);
    }
    rvs_acc sum_g = rvs_ksum_value(&sg), sum_gx = rvs_ksum_value(&sgx);
    grads[gamma_off + j] = (float)sum_gx;
    grads[beta_off + j] = (float)sum_g;
    rvs_acc n = (rvs_acc)rows, scale = (rvs_acc)gamma * (rvs_acc)invf / n;
    for (uint e = 0; e < rows; e++) {
        size_t i = (size_t)e * cols + j;
        rvs_acc x = (a[i] - meanf) * invf;
        g[i] = (float)(scale * (n * (rvs_acc)g[i] - sum_g - x * sum_gx));
    }
}

/* The loss of rvspecfit (nn/train_interpolator.py, train_step_compiled): the network output y
 * (rows x cols, pc_layer without its bias) is un-normalised as R = (y + b) sd0 + d0 and compared
 * with the log-flux row `rows_idx[rows_off + e]` of `data`: loss = mean |R - D| / spread0
 * (kind 0; kind 1: mean (R - D)^2 / spread0^2; kind 2: mean (|R - D| + (R - D)^2 / (2 delta)) /
 * spread0, see include/rvsfit/train.h). One work-item per pixel: adds its column's sum to
 * loss_acc[j] (summed over the epoch, read once per epoch); when with_grad, replaces y by
 * dloss/dy = (sign(R - D), 2 (R - D) or sign(R - D) + (R - D) / delta) sd0 * gscale (gscale =
 * 1 / (scale rows cols), scale spread0 or spread0^2) and writes the pc_layer bias gradient,
 * their column sum. */
__kernel void rvs_train_loss(__global float *y, __global const float *params, uint bias_off,
                             __global const float *d0, __global const float *sd0,
                             __global const float *data, __global const uint *rows_idx,
                             uint rows_off, uint cols, uint rows, float gscale, uint with_grad,
                             uint kind, float inv_delta, __global rvs_acc *loss_acc,
                             __global float *grads)
{
    size_t j = get_global_id(0);
    if (j >= cols)
        return;
    float b = params[bias_off + j], s = sd0[j], m = d0[j];
    rvs_ksum l, gs;
    rvs_ksum_init(&l);
    rvs_ksum_init(&gs);
    for (uint e = 0; e < rows; e++) {
        size_t i = (size_t)e * cols + j;
        float r = (y[i] + b) * s + m - data[(size_t)rows_idx[rows_off + e] * cols + j];
        /* kind 0: |r| (torch l1_loss); 1: r^2 (mse_loss); 2: |r| + r^2 / (2 delta) */
        float sg = r > 0.0f ? 1.0f : r < 0.0f ? -1.0f : 0.0f;
        rvs_ksum_add(&l, kind == 1u ? r * r : kind == 2u ? fabs(r) + 0.5f * r * r * inv_delta
                                                           : fabs(r));
        if (with_grad) {
            float g = (kind == 1u ? 2.0f * r : kind == 2u ? sg + r * inv_delta : sg) * s * gscale;
            y[i] = g;
            rvs_ksum_add(&gs, g);
        }
    }
    loss_acc[j] += rvs_ksum_value(&l);
    if (with_grad)
        grads[bias_off + j] = (float)rvs_ksum_value(&gs);
}

/* out[e, j] = (y[e, j] + b[j]) (the log-flux in normalised units) for evaluation. */
__kernel void rvs_train_add_bias(__global float *y, __global const float *params, uint bias_off,
                                 uint cols, uint rows)
{
    size_t j = get_global_id(0), e = get_global_id(1);
    if (j >= cols || e >= rows)
        return;
    y[e * cols + j] += params[bias_off + j];
}

/* Adam (torch.optim.Adam, no weight decay, no amsgrad): with t the step number,
 *   m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2,
 *   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
 * The bias corrections come from the host (step_size = lr / (1 - b1^t), c2 = sqrt(1 - b2^t)). */
__kernel void rvs_train_adam(__global float *p, __global const float *g, __global float *m,
                             __global float *v, uint n, float b1, float b2, float step_size,
                             float c2, float eps)
{
    size_t i = get_global_id(0);
    if (i >= n)
        return;
    float gi = g[i];
    float mi = b1 * m[i] + (1.0f - b1) * gi;
    float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] - step_size * mi / (sqrt(vi) / c2 + eps);
}
