/* rotation.c: rotational broadening of template batches, ported from rvspecfit's
 * py/rvspecfit/spec_fit.py (convolve_vsini, compute_vsini_kernel,
 * _integrate_vsini_kernel_segment, _vsini_kernel_primitives).
 *
 * The kernel weights are computed on the host in double (2*ceil(R+1)+1 values per template,
 * one per distinct vsini of the call) and uploaded in one buffer. The device convolves either
 * directly (cl/rotation.cl, O(npix * K) per template) or through clFFT: pad to a length
 * len >= npix + km, in-place real-to-complex transforms of the templates and of the kernels
 * (placed circularly, so the 'same' output lands at indices 0..npix-1), a pointwise product and
 * the inverse transform. Which path a template takes depends on its kernel length K against a
 * threshold measured per device type (see ROTATION_FFT_MIN_* below). */
#include <config.h>

#include "base/internal.h"

#include <float.h>
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rvsfit/rotation.h"

/* Kernel length K = 2 km + 1 from which AUTO uses the FFT, per device type and precision.
 * Measured on PoCL (2 shared cores, 2026-02; T=1024 x 6000 px, second call of each, s):
 *                 K=5    13    17    25    31    41    45
 *   fp64 direct  0.039 0.048 0.077 0.079 0.126 0.165 0.179   FFT (len 6144) 0.33-0.37 at every K
 *   fp32 direct  0.088   -   0.22    -   0.34    -     -     FFT 0.18-0.29
 * (fp32 direct with the TwoSum compensation). The direct cost grows ~3.2 ms (fp64) and ~9 ms
 * (fp32) per weight, so the FFT wins from K ~ 95 in fp64 and K ~ 25 in fp32 here; rotation
 * never needs K > 45 at DESI's sampling (vsini 500 km/s), so on CPUs fp64 stays direct.
 * GPUs (H200, fp64, bench_kernels --routine rotation, 4096 x 6000 px, vsini 300 km/s, K ~ 27):
 * direct 0.63 ms, clFFT 8.5 ms; the direct cost grows ~linearly with K, so it stays ahead up to
 * K of several hundred (the first GPU default, 45, was a guess made before any GPU
 * measurement: it sent templates near the vsini bound, ~500 km/s, through clFFT). */
#define ROTATION_FFT_MIN_CPU_FP64 97
#define ROTATION_FFT_MIN_CPU_FP32 25
#define ROTATION_FFT_MIN_GPU 401
/* CPU devices with the vector-block direct kernel (the context's vector_blocks, the default
 * there since 2026-12-08). PoCL, 2 cores, bench_kernels --routine rotation, 4096 x 6000 px:
 *                  vsini 10 (K ~ 5)  100 (K ~ 11)  300 (K ~ 27)   FFT, any K
 *   fp64 direct       11.8 ms         20.6 ms       41.1 ms       581-613 ms
 *   fp32 direct       15.5 ms         26.8 ms       65.5 ms       413-421 ms
 * (the one-pixel kernel: 95, 165, 398 ms in fp64). ~1.2 ms (fp64) and ~2 ms (fp32) per weight:
 * the FFT would win only from K of a few hundred, as on GPUs. */
#define ROTATION_FFT_MIN_BLOCKS 401

/* Templates per FFT launch: bounds the work buffers (rows x (len+2) reals, ~50 MB at DESI size in
 * double) and, with batch_bucket(), the number of distinct clFFT plans. */
#define ROTATION_FFT_CHUNK 1024
/* clFFT plans kept per object (rvs_fft_plan_cache: least recently used destroyed beyond it) */
#define ROTATION_MAX_PLANS 16

struct rvs_rotation {
    struct rvs_context *ctx; /* where its clFFT plans' work space is counted */
    size_t npix;
    int is_double;
    int vector_blocks; /* k_direct is rvs_rotation_direct_blocks (the context's choice at creation) */
    enum rvs_rotation_path path;
    size_t fft_min_default, fft_min_length;
    cl_kernel k_direct, k_pad, k_kernel_pad, k_multiply, k_crop;
    cl_kernel k_weights; /* fp64 contexts: the direct path's weights on the device */
    cl_mem weights, meta, work, hwork, slot_r;
    size_t weights_bytes, meta_bytes, work_bytes, hwork_bytes, slot_r_bytes;
    struct rvs_fft_plan_cache plans;
};

/* Pixels per work-item of rvs_rotation_direct_blocks (RVS_ROT_BLOCK of the kernel). */
#define ROTATION_BLOCK 8

/* ------------------------------------------------------------------ kernel weights (host) */

/* Primitives of K(x) and x K(x) for the limb-darkened rotation profile normalised over [-1, 1]:
 * K(x) = c1 sqrt(1-x^2) + c2 (1-x^2), c1 = 2(1-eps)/norm, c2 = (pi/2) eps/norm,
 * norm = pi (1 - eps/3) (spec_fit.py, _vsini_kernel_primitives). */
static void vsini_primitives(double x, double eps, double *k0, double *k1)
{
    x = x < -1.0 ? -1.0 : (x > 1.0 ? 1.0 : x);
    double norm = M_PI * (1.0 - eps / 3.0);
    double c1 = 2.0 * (1.0 - eps) / norm;
    double c2 = (M_PI / 2.0) * eps / norm;
    double one_minus = 1.0 - x * x;
    double root = sqrt(one_minus);
    double t1_0 = 0.5 * (x * root + asin(x));
    double t1_1 = -1.0 / 3.0 * one_minus * root;
    double t2_0 = x - x * x * x / 3.0;
    double t2_1 = x * x / 2.0 - x * x * x * x / 4.0;
    *k0 = c1 * t1_0 + c2 * t2_0;
    *k1 = c1 * t1_1 + c2 * t2_1;
}

/* Integral over [a, b] of (slope x + intercept) K(x) (_integrate_vsini_kernel_segment). */
static double vsini_segment(double a, double b, double slope, double intercept, double eps)
{
    double k0a, k1a, k0b, k1b;
    vsini_primitives(b, eps, &k0b, &k1b);
    vsini_primitives(a, eps, &k0a, &k1a);
    return slope * (k1b - k1a) + intercept * (k0b - k0a);
}

static double clip1(double x) { return x < -1.0 ? -1.0 : (x > 1.0 ? 1.0 : x); }

size_t rvs_rotation_kernel_length(double R)
{
    if (isnan(R) || isinf(R))
        return 0;
    if (!(R >= RVS_ROTATION_MIN_WIDTH))
        return 1;
    return 2 * (size_t)ceil(R + 1.0) + 1;
}

int rvs_rotation_weights(double R, double eps, double *weights, size_t capacity, size_t *length)
{
    size_t n = rvs_rotation_kernel_length(R);
    *length = n;
    if (n == 0 || R > 1e7) {
        rvs_log(RVS_LOG_ERROR, "rotation", "kernel width %g pixels is not usable", R);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (!weights)
        return RVS_OK;
    if (capacity < n) {
        rvs_log(RVS_LOG_ERROR, "rotation", "kernel of %zu weights does not fit in %zu", n,
                capacity);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (n == 1) {
        weights[0] = 1.0;
        return RVS_OK;
    }
    /* W_k = integral over x of Lambda(k - R x) K(x), Lambda the unit hat: the rising leg
     * (k - R x in [-1, 0]) and the falling leg (k - R x in [0, 1]) for k = 0..k_max
     * (compute_vsini_kernel), mirrored to negative k. */
    size_t k_max = (n - 1) / 2;
    for (size_t k = 0; k <= k_max; k++) {
        double kd = (double)k, w = 0.0;
        double lo = clip1(kd / R), hi = clip1((kd + 1.0) / R);
        if (hi > lo)
            w += vsini_segment(lo, hi, -R, 1.0 + kd, eps);
        lo = clip1((kd - 1.0) / R), hi = clip1(kd / R);
        if (hi > lo)
            w += vsini_segment(lo, hi, R, 1.0 - kd, eps);
        weights[k_max + k] = w;
        weights[k_max - k] = w;
    }
    double sum = 0.0;
    for (size_t j = 0; j < n; j++)
        sum += weights[j];
    for (size_t j = 0; j < n; j++)
        weights[j] /= sum;
    return RVS_OK;
}

/* d w_k / dR of rvs_rotation_weights (see rotation.h). With Lambda the unit hat,
 * W_k(R) = integral of Lambda(k - R x) K(x) dx; the hat is continuous and vanishes where its
 * legs end, and the clipped limits x = +-1 do not move, so no boundary term appears and
 * dW_k/dR = integral of Lambda'(k - R x) (-x) K(x) dx: -x K(x) on the rising leg
 * (Lambda' = +1), +x K(x) on the falling leg (Lambda' = -1), i.e. vsini_segment with slope -+1
 * and intercept 0 over the same intervals as the weights. The weights are W / sum(W), so
 * dw_k/dR = (W'_k - w_k sum(W')) / sum(W). Analytically sum(W) = 1 (the hats partition unity
 * and K is normalised) and sum(W') = 0; the quotient rule is kept so that the result is the
 * derivative of what rvs_rotation_weights computes, rounding included. */
int rvs_rotation_weights_dR(double R, double eps, double *dweights, size_t capacity,
                            size_t *length)
{
    if (isnan(R) || isinf(R) || R > 1e7) {
        *length = 0;
        rvs_log(RVS_LOG_ERROR, "rotation", "kernel width %g pixels is not usable", R);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    /* below the cut the kernel is linear in R (see rotation.h): its derivative is the same
     * for every R in (0, 1], so the cut itself stands for the limit R -> 0+ */
    if (R > 0 && R < RVS_ROTATION_MIN_WIDTH)
        R = RVS_ROTATION_MIN_WIDTH;
    size_t n = R > 0 ? rvs_rotation_kernel_length(R) : 1;
    *length = n;
    if (!dweights)
        return RVS_OK;
    if (capacity < n) {
        rvs_log(RVS_LOG_ERROR, "rotation", "kernel of %zu weights does not fit in %zu", n,
                capacity);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    if (n == 1) {
        dweights[0] = 0.0; /* no rotation: the template does not depend on vsini */
        return RVS_OK;
    }
    double *w = rvs_malloc(n * sizeof *w);
    if (!w)
        return RVS_ERR_NOMEM;
    size_t k_max = (n - 1) / 2;
    for (size_t k = 0; k <= k_max; k++) {
        /* W_k exactly as rvs_rotation_weights forms it, and W'_k on the same intervals */
        double kd = (double)k, v = 0.0, dv = 0.0;
        double lo = clip1(kd / R), hi = clip1((kd + 1.0) / R);
        if (hi > lo) {
            v += vsini_segment(lo, hi, -R, 1.0 + kd, eps);
            dv += vsini_segment(lo, hi, -1.0, 0.0, eps);
        }
        lo = clip1((kd - 1.0) / R), hi = clip1(kd / R);
        if (hi > lo) {
            v += vsini_segment(lo, hi, R, 1.0 - kd, eps);
            dv += vsini_segment(lo, hi, 1.0, 0.0, eps);
        }
        w[k_max + k] = w[k_max - k] = v;
        dweights[k_max + k] = dweights[k_max - k] = dv;
    }
    double sum = 0.0, dsum = 0.0;
    for (size_t j = 0; j < n; j++)
        sum += w[j], dsum += dweights[j];
    for (size_t j = 0; j < n; j++)
        dweights[j] = (dweights[j] - w[j] / sum * dsum) / sum;
    free(w);
    return RVS_OK;
}

/* ------------------------------------------------------------------ object */

static size_t rotation_default_threshold(const struct rvs_context *ctx)
{
    if (ctx->caps.type & CL_DEVICE_TYPE_GPU)
        return ROTATION_FFT_MIN_GPU;
    if (ctx->vector_blocks)
        return ROTATION_FFT_MIN_BLOCKS;
    return ctx->use_fp64 ? ROTATION_FFT_MIN_CPU_FP64 : ROTATION_FFT_MIN_CPU_FP32;
}

int rvs_rotation_create(struct rvs_context *ctx, size_t npix, struct rvs_rotation **out)
{
    int status = RVS_OK;
    struct rvs_rotation *rot = NULL;
    *out = NULL;
    if (npix == 0 || npix > (size_t)(1 << 26)) {
        rvs_log(RVS_LOG_ERROR, "rotation", "template length %zu is not supported", npix);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    rot = rvs_calloc(1, sizeof *rot);
    if (!rot)
        return RVS_ERR_NOMEM;
    rot->ctx = ctx;
    rot->npix = npix;
    rot->is_double = ctx->use_fp64;
    rot->plans.capacity = ROTATION_MAX_PLANS;
    rot->plans.is_double = rot->is_double;
    rot->plans.module = "rotation";
    rot->fft_min_default = rotation_default_threshold(ctx);
    const char *env = getenv("RVSFIT_CL_ROTATION_FFT_MIN");
    if (env && *env) {
        char *end;
        unsigned long v = strtoul(env, &end, 10);
        if (*end || v == 0)
            rvs_log(RVS_LOG_WARNING, "rotation",
                    "ignoring RVSFIT_CL_ROTATION_FFT_MIN='%s' (want a kernel length >= 1)", env);
        else
            rot->fft_min_default = v;
    }
    rot->fft_min_length = rot->fft_min_default;
    /* CPU devices: the vector blocks of 8 pixels (the same sums; 1 pixel per work-item left
     * PoCL's code scalar) */
    rot->vector_blocks = ctx->vector_blocks;
    RVS_TRY(rvs_context_kernel(ctx, "rotation",
                               ctx->vector_blocks ? "rvs_rotation_direct_blocks"
                                                  : "rvs_rotation_direct",
                               &rot->k_direct));
    RVS_TRY(rvs_context_kernel(ctx, "rotation", "rvs_rotation_pad", &rot->k_pad));
    RVS_TRY(rvs_context_kernel(ctx, "rotation", "rvs_rotation_kernel_pad", &rot->k_kernel_pad));
    RVS_TRY(rvs_context_kernel(ctx, "rotation", "rvs_rotation_multiply", &rot->k_multiply));
    RVS_TRY(rvs_context_kernel(ctx, "rotation", "rvs_rotation_crop", &rot->k_crop));
    if (ctx->use_fp64)
        RVS_TRY(rvs_context_kernel(ctx, "rotation", "rvs_rotation_weights", &rot->k_weights));
    *out = rot;
    rot = NULL;
cleanup:
    rvs_rotation_destroy(&rot);
    return status;
}

void rvs_rotation_destroy(struct rvs_rotation **rotp)
{
    if (!rotp || !*rotp)
        return;
    struct rvs_rotation *rot = *rotp;
    rvs_fft_plan_cache_clear(rot->ctx, &rot->plans);
    cl_kernel *kernels[] = {&rot->k_direct, &rot->k_pad, &rot->k_kernel_pad, &rot->k_multiply,
                            &rot->k_crop, &rot->k_weights};
    for (size_t i = 0; i < sizeof kernels / sizeof kernels[0]; i++)
        if (*kernels[i])
            clReleaseKernel(*kernels[i]);
    rvs_buffer_release(&rot->weights);
    rvs_buffer_release(&rot->meta);
    rvs_buffer_release(&rot->work);
    rvs_buffer_release(&rot->hwork);
    rvs_buffer_release(&rot->slot_r);
    free(rot);
    *rotp = NULL;
}

void rvs_rotation_set_path(struct rvs_rotation *rot, enum rvs_rotation_path path)
{
    rot->path = path;
}

void rvs_rotation_set_fft_threshold(struct rvs_rotation *rot, size_t min_length)
{
    rot->fft_min_length = min_length ? min_length : rot->fft_min_default;
}

size_t rvs_rotation_fft_threshold(const struct rvs_rotation *rot) { return rot->fft_min_length; }

/* ------------------------------------------------------------------ helpers */

/* Grows a device buffer to at least `bytes` (contents are not kept). */
static int ensure_buffer(struct rvs_context *ctx, cl_mem *buf, size_t *have, size_t bytes)
{
    if (*buf && *have >= bytes)
        return RVS_OK;
    rvs_buffer_release(buf);
    *have = 0;
    int status = rvs_buffer_create(ctx, CL_MEM_READ_WRITE, bytes, NULL, buf);
    if (status == RVS_OK)
        *have = bytes;
    return status;
}

/* FFT length for n = npix + km points: the smallest 2^a or 3 * 2^a >= max(n, 128). Few distinct
 * lengths matter more than the last few percent of work: clFFT generates and compiles kernels per
 * length, which takes 5-15 s per length and precision on PoCL (measured here: 1024 7 s, 6144 14 s,
 * 6048 = 2^5 3^3 7 46 s, 8192 18 s), while at DESI size 6144 is only 1.5% above the 7-smooth 6048.
 * All lengths are even, as the in-place real layout (len + 2 reals a row) wants. */
static size_t fft_length(size_t n)
{
    size_t len = 128;
    while (len < n) {
        if (len / 2 * 3 >= n)
            return len / 2 * 3;
        len *= 2;
    }
    return len;
}

/* Rows per FFT launch rounded up (powers of two to 64, then multiples of 64), so that a few
 * plans serve every batch; the extra rows are zeros and their output is dropped. */
static size_t batch_bucket(size_t n)
{
    if (n <= 64) {
        size_t b = 1;
        while (b < n)
            b *= 2;
        return b;
    }
    return (n + 63) / 64 * 64;
}

/* ------------------------------------------------------------------ apply */

struct width_key {
    double R; /* 0 for templates left unchanged */
    size_t n; /* kernel length 2 km + 1 (checked usable) */
    size_t t;
};

static int width_key_compare(const void *a, const void *b)
{
    const struct width_key *x = a, *y = b;
    if (x->R != y->R)
        return x->R < y->R ? -1 : 1;
    return x->t < y->t ? -1 : (x->t > y->t);
}

/* Launches the FFT path over rows fft[0..nfft) (template indices, sorted by width so that a
 * chunk holds few distinct kernels). */
static int apply_fft(struct rvs_context *ctx, struct rvs_rotation *rot, cl_mem in, cl_mem out,
                     const int *meta_host, size_t off_slot_woff, size_t off_slot_km,
                     size_t off_fft, size_t off_local, size_t off_chunk_slots,
                     const size_t *chunk_nslots, size_t nfft, size_t km_max, size_t off_in_row)
{
    const cl_int in_row_i = (cl_int)off_in_row;
    int status = RVS_OK;
    size_t es = rvs_context_real_size(ctx);
    size_t len = fft_length(rot->npix + km_max), stride = len + 2, nfreq = len / 2 + 1;
    cl_int npix_i = (cl_int)rot->npix, len_i = (cl_int)len, stride_i = (cl_int)stride;
    cl_int nfreq_i = (cl_int)nfreq, woff_i = (cl_int)off_slot_woff, km_i = (cl_int)off_slot_km;
    if (len > (size_t)INT32_MAX / 2) {
        rvs_log(RVS_LOG_ERROR, "rotation", "FFT length %zu is too long", len);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    (void)meta_host;
    size_t slot_base = off_chunk_slots;
    for (size_t c = 0, first = 0; first < nfft; c++, first += ROTATION_FFT_CHUNK) {
        size_t nrows = nfft - first < ROTATION_FFT_CHUNK ? nfft - first : ROTATION_FFT_CHUNK;
        size_t nslots = chunk_nslots[c];
        size_t rows_b = batch_bucket(nrows), slots_b = batch_bucket(nslots);
        RVS_TRY(ensure_buffer(ctx, &rot->work, &rot->work_bytes, rows_b * stride * es));
        RVS_TRY(ensure_buffer(ctx, &rot->hwork, &rot->hwork_bytes, slots_b * stride * es));
        cl_int rows_i = (cl_int)(off_fft + first), nrows_i = (cl_int)nrows;
        cl_int local_i = (cl_int)(off_local + first);
        cl_int slots_i = (cl_int)slot_base, nslots_i = (cl_int)nslots;
        size_t fwd_rows, fwd_slots, inv_rows; /* clFFT plan handles */
        RVS_TRY(rvs_fft_plan_get(ctx, &rot->plans, RVS_FFT_REAL_TO_HERMITIAN, len, rows_b, &fwd_rows));
        RVS_TRY(rvs_fft_plan_get(ctx, &rot->plans, RVS_FFT_REAL_TO_HERMITIAN, len, slots_b, &fwd_slots));
        RVS_TRY(rvs_fft_plan_get(ctx, &rot->plans, RVS_FFT_HERMITIAN_TO_REAL, len, rows_b, &inv_rows));

        cl_kernel k = rot->k_pad;
        RVS_TRY(rvs_kernel_arg(k, 0, sizeof in, &in));
        RVS_TRY(rvs_kernel_arg(k, 1, sizeof rot->work, &rot->work));
        RVS_TRY(rvs_kernel_arg(k, 2, sizeof rot->meta, &rot->meta));
        RVS_TRY(rvs_kernel_arg(k, 3, sizeof rows_i, &rows_i));
        RVS_TRY(rvs_kernel_arg(k, 4, sizeof nrows_i, &nrows_i));
        RVS_TRY(rvs_kernel_arg(k, 5, sizeof npix_i, &npix_i));
        RVS_TRY(rvs_kernel_arg(k, 6, sizeof stride_i, &stride_i));
        RVS_TRY(rvs_kernel_arg(k, 7, sizeof in_row_i, &in_row_i));
        RVS_TRY(rvs_kernel_launch_2d(ctx, k, stride, rows_b, 0, 1));

        k = rot->k_kernel_pad;
        RVS_TRY(rvs_kernel_arg(k, 0, sizeof rot->weights, &rot->weights));
        RVS_TRY(rvs_kernel_arg(k, 1, sizeof rot->hwork, &rot->hwork));
        RVS_TRY(rvs_kernel_arg(k, 2, sizeof rot->meta, &rot->meta));
        RVS_TRY(rvs_kernel_arg(k, 3, sizeof slots_i, &slots_i));
        RVS_TRY(rvs_kernel_arg(k, 4, sizeof nslots_i, &nslots_i));
        RVS_TRY(rvs_kernel_arg(k, 5, sizeof woff_i, &woff_i));
        RVS_TRY(rvs_kernel_arg(k, 6, sizeof km_i, &km_i));
        RVS_TRY(rvs_kernel_arg(k, 7, sizeof len_i, &len_i));
        RVS_TRY(rvs_kernel_arg(k, 8, sizeof stride_i, &stride_i));
        RVS_TRY(rvs_kernel_launch_2d(ctx, k, stride, slots_b, 0, 1));

        RVS_TRY(rvs_fft_check(rvs_fft_transform(ctx, fwd_slots, 1, rot->hwork), "rotation",
                              "clfftEnqueueTransform(kernels)", len, slots_b));
        RVS_TRY(rvs_fft_check(rvs_fft_transform(ctx, fwd_rows, 1, rot->work), "rotation",
                              "clfftEnqueueTransform(templates)", len, rows_b));

        k = rot->k_multiply;
        RVS_TRY(rvs_kernel_arg(k, 0, sizeof rot->work, &rot->work));
        RVS_TRY(rvs_kernel_arg(k, 1, sizeof rot->hwork, &rot->hwork));
        RVS_TRY(rvs_kernel_arg(k, 2, sizeof rot->meta, &rot->meta));
        RVS_TRY(rvs_kernel_arg(k, 3, sizeof local_i, &local_i));
        RVS_TRY(rvs_kernel_arg(k, 4, sizeof nrows_i, &nrows_i));
        RVS_TRY(rvs_kernel_arg(k, 5, sizeof nfreq_i, &nfreq_i));
        RVS_TRY(rvs_kernel_arg(k, 6, sizeof stride_i, &stride_i));
        RVS_TRY(rvs_kernel_launch_2d(ctx, k, nfreq, nrows, 0, 1));

        /* clFFT's default backward scale is 1/len, which completes the inverse */
        RVS_TRY(rvs_fft_check(rvs_fft_transform(ctx, inv_rows, 0, rot->work), "rotation",
                              "clfftEnqueueTransform(inverse)", len, rows_b));

        k = rot->k_crop;
        RVS_TRY(rvs_kernel_arg(k, 0, sizeof rot->work, &rot->work));
        RVS_TRY(rvs_kernel_arg(k, 1, sizeof out, &out));
        RVS_TRY(rvs_kernel_arg(k, 2, sizeof rot->meta, &rot->meta));
        RVS_TRY(rvs_kernel_arg(k, 3, sizeof rows_i, &rows_i));
        RVS_TRY(rvs_kernel_arg(k, 4, sizeof nrows_i, &nrows_i));
        RVS_TRY(rvs_kernel_arg(k, 5, sizeof npix_i, &npix_i));
        RVS_TRY(rvs_kernel_arg(k, 6, sizeof stride_i, &stride_i));
        RVS_TRY(rvs_kernel_launch_2d(ctx, k, rot->npix, nrows, 0, 1));
        slot_base += nslots;
    }
cleanup:
    return status;
}

/* Enqueues the direct convolution of templates 0..T-1 (meta's row list) with the slots' weights
 * already on the device. */
static int launch_direct(struct rvs_context *ctx, struct rvs_rotation *rot, cl_mem in,
                         cl_mem out, size_t off_tmpl, size_t off_woff, size_t off_km,
                         size_t off_rows, size_t nrows, size_t off_in_row)
{
    int status = RVS_OK;
    cl_kernel k = rot->k_direct;
    cl_int a_tmpl = (cl_int)off_tmpl, a_woff = (cl_int)off_woff, a_km = (cl_int)off_km;
    cl_int a_rows = (cl_int)off_rows, a_nrows = (cl_int)nrows, a_npix = (cl_int)rot->npix;
    cl_int a_in_row = (cl_int)off_in_row;
    RVS_TRY(rvs_kernel_arg(k, 0, sizeof in, &in));
    RVS_TRY(rvs_kernel_arg(k, 1, sizeof out, &out));
    RVS_TRY(rvs_kernel_arg(k, 2, sizeof rot->weights, &rot->weights));
    RVS_TRY(rvs_kernel_arg(k, 3, sizeof rot->meta, &rot->meta));
    RVS_TRY(rvs_kernel_arg(k, 4, sizeof a_tmpl, &a_tmpl));
    RVS_TRY(rvs_kernel_arg(k, 5, sizeof a_woff, &a_woff));
    RVS_TRY(rvs_kernel_arg(k, 6, sizeof a_km, &a_km));
    RVS_TRY(rvs_kernel_arg(k, 7, sizeof a_rows, &a_rows));
    RVS_TRY(rvs_kernel_arg(k, 8, sizeof a_nrows, &a_nrows));
    RVS_TRY(rvs_kernel_arg(k, 9, sizeof a_npix, &a_npix));
    RVS_TRY(rvs_kernel_arg(k, 10, sizeof a_in_row, &a_in_row));
    RVS_TRY(rvs_kernel_launch_2d(ctx, k,
                                 rot->vector_blocks ? (rot->npix + ROTATION_BLOCK - 1) / ROTATION_BLOCK
                                                    : rot->npix,
                                 nrows, 0, 1));
cleanup:
    return status;
}

/* The direct path with fp64: distinct widths become slots through a hash of their bits (no
 * sort: rows stay in template order, which the direct kernel does not care about), the device
 * computes the weights (rvs_rotation_weights in cl/rotation.cl), and the host only uploads the
 * widths and the small index arrays. keys[t] is template t's (unsorted). */
static int apply_direct_device_weights(struct rvs_context *ctx, struct rvs_rotation *rot,
                                       cl_mem in, const int *in_rows, size_t ntempl,
                                       const struct width_key *keys, double eps, cl_mem out)
{
    int status = RVS_OK;
    size_t cap = 64;
    while (cap < 2 * ntempl)
        cap *= 2;
    int *table = rvs_malloc(cap * sizeof *table);
    double *slot_r = rvs_malloc(ntempl * sizeof *slot_r);
    /* meta: tmpl_slot[T] slot_woff[T] slot_km[T] rows[T] in_row[T] (at most T slots) */
    size_t off_tmpl = 0, off_woff = ntempl, off_km = 2 * ntempl, off_rows = 3 * ntempl;
    size_t off_in_row = 4 * ntempl, nmeta = 5 * ntempl;
    int *meta = rvs_malloc(nmeta * sizeof *meta);
    if (!table || !slot_r || !meta) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < cap; i++)
        table[i] = -1;
    size_t nslots = 0, nweights = 0;
    for (size_t t = 0; t < ntempl; t++) {
        const double R = keys[t].R;
        uint64_t bits;
        memcpy(&bits, &R, sizeof bits);
        uint64_t h = bits + 0x9e3779b97f4a7c15ULL;
        h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
        h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
        size_t at = (size_t)(h ^ (h >> 31)) & (cap - 1);
        while (table[at] >= 0 && memcmp(&slot_r[table[at]], &R, sizeof bits) != 0)
            at = (at + 1) & (cap - 1);
        if (table[at] < 0) {
            size_t n = keys[t].n;
            if (nweights + n > (size_t)INT32_MAX) {
                rvs_log(RVS_LOG_ERROR, "rotation", "%zu templates need more than 2^31 kernel "
                        "weights; rotate them in smaller calls", ntempl);
                status = RVS_ERR_INVALID_ARGUMENT;
                goto cleanup;
            }
            table[at] = (int)nslots;
            slot_r[nslots] = R;
            meta[off_woff + nslots] = (int)nweights;
            meta[off_km + nslots] = (int)((n - 1) / 2);
            nweights += n;
            nslots++;
        }
        meta[off_tmpl + t] = table[at];
        meta[off_rows + t] = (int)t;
        meta[off_in_row + t] = in_rows ? in_rows[t] : (int)t;
    }
    RVS_TRY(ensure_buffer(ctx, &rot->weights, &rot->weights_bytes, nweights * sizeof(double)));
    RVS_TRY(ensure_buffer(ctx, &rot->meta, &rot->meta_bytes, nmeta * sizeof *meta));
    RVS_TRY(ensure_buffer(ctx, &rot->slot_r, &rot->slot_r_bytes, nslots * sizeof *slot_r));
    RVS_TRY(rvs_buffer_write(ctx, rot->meta, 0, nmeta * sizeof *meta, meta));
    RVS_TRY(rvs_buffer_write(ctx, rot->slot_r, 0, nslots * sizeof *slot_r, slot_r));
    cl_kernel k = rot->k_weights;
    cl_int a_woff = (cl_int)off_woff, a_km = (cl_int)off_km, a_nslots = (cl_int)nslots;
    RVS_TRY(rvs_kernel_arg(k, 0, sizeof rot->slot_r, &rot->slot_r));
    RVS_TRY(rvs_kernel_arg(k, 1, sizeof rot->meta, &rot->meta));
    RVS_TRY(rvs_kernel_arg(k, 2, sizeof a_woff, &a_woff));
    RVS_TRY(rvs_kernel_arg(k, 3, sizeof a_km, &a_km));
    RVS_TRY(rvs_kernel_arg(k, 4, sizeof a_nslots, &a_nslots));
    RVS_TRY(rvs_kernel_arg(k, 5, sizeof eps, &eps));
    RVS_TRY(rvs_kernel_arg(k, 6, sizeof rot->weights, &rot->weights));
    RVS_TRY(rvs_kernel_launch_1d(ctx, k, nslots, 0));
    RVS_TRY(launch_direct(ctx, rot, in, out, off_tmpl, off_woff, off_km, off_rows, ntempl,
                          off_in_row));
cleanup:
    free(table);
    free(slot_r);
    free(meta);
    return status;
}

int rvs_rotation_apply(struct rvs_context *ctx, struct rvs_rotation *rot, cl_mem in, size_t ntempl,
                       const double *vsini, double lnstep, double eps, cl_mem out)
{
    return rvs_rotation_apply_rows(ctx, rot, in, NULL, ntempl, ntempl, vsini, lnstep, eps, out);
}

/* rvs_rotation_apply_rows (deriv = 0) and rvs_rotation_apply_rows_dvsini (deriv = 1): the same
 * slots, paths and launches; only the weights differ. */
static int apply_rows(struct rvs_context *ctx, struct rvs_rotation *rot, cl_mem in,
                      const int *in_rows, size_t n_in, size_t ntempl, const double *vsini,
                      double lnstep, double eps, cl_mem out, int deriv)
{
    int status = RVS_OK;
    struct width_key *keys = NULL;
    int *meta = NULL;
    double *w = NULL;
    size_t *chunk_nslots = NULL;
    void *w_dev = NULL;
    if (ntempl == 0)
        return RVS_OK;
    if (in == out || !(lnstep > 0) || !isfinite(lnstep) || !(eps >= 0 && eps <= 1) ||
        ntempl > (size_t)INT32_MAX / 8 || rot->npix > (size_t)INT32_MAX) {
        rvs_log(RVS_LOG_ERROR, "rotation",
                "invalid call: in and out must differ, lnstep (%g) be > 0, eps (%g) in [0, 1]",
                lnstep, eps);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    for (size_t t = 0; in_rows && t < ntempl; t++)
        if (in_rows[t] < 0 || (size_t)in_rows[t] >= n_in) {
            rvs_log(RVS_LOG_ERROR, "rotation", "template %zu reads input row %d of %zu", t,
                    in_rows[t], n_in);
            return RVS_ERR_INVALID_ARGUMENT;
        }
    keys = rvs_malloc(ntempl * sizeof *keys);
    if (!keys)
        return RVS_ERR_NOMEM;
    size_t use_fft_from = rot->path == RVS_ROTATION_FFT      ? 2
                          : rot->path == RVS_ROTATION_DIRECT ? SIZE_MAX
                                                             : rot->fft_min_length;
    if (use_fft_from < 2)
        use_fft_from = 2; /* the identity is always a copy */
    int all_direct = 1;
    /* convolve_vsini: unchanged when vsini <= 0 or R < 1e-9, else R = (vsini/c)/lnstep */
    for (size_t t = 0; t < ntempl; t++) {
        if (isnan(vsini[t]) || isinf(vsini[t])) {
            rvs_log(RVS_LOG_ERROR, "rotation", "vsini of template %zu is %g", t, vsini[t]);
            status = RVS_ERR_INVALID_ARGUMENT;
            goto cleanup;
        }
        double R = vsini[t] > 0 ? vsini[t] / RVS_SPEED_OF_LIGHT_KMS / lnstep : 0.0;
        if (!deriv) {
            keys[t].R = R < RVS_ROTATION_MIN_WIDTH ? 0.0 : R;
            keys[t].n = rvs_rotation_kernel_length(keys[t].R);
        } else {
            /* vsini > 0 below the cut: the limit R -> 0+ (rvs_rotation_weights_dR) */
            keys[t].R = vsini[t] > 0 ? fmax(R, RVS_ROTATION_MIN_WIDTH) : 0.0;
            keys[t].n = keys[t].R > 0 ? rvs_rotation_kernel_length(keys[t].R) : 1;
        }
        keys[t].t = t;
        if (keys[t].n == 0 || keys[t].R > 1e7 || keys[t].n > (size_t)INT32_MAX / 4) {
            rvs_log(RVS_LOG_ERROR, "rotation", "kernel width %g px (template %zu) is not usable",
                    keys[t].R, t);
            status = RVS_ERR_INVALID_ARGUMENT;
            goto cleanup;
        }
        all_direct &= keys[t].n < use_fft_from;
    }
    if (rot->k_weights && all_direct && !deriv) {
        /* the usual case: weights on the device */
        status = apply_direct_device_weights(ctx, rot, in, in_rows, ntempl, keys, eps, out);
        goto cleanup;
    }
    qsort(keys, ntempl, sizeof *keys, width_key_compare);

    /* Distinct widths become kernel slots; count slots and weights first. */
    size_t nslots = 0, nweights = 0;
    for (size_t i = 0; i < ntempl; i++)
        if (i == 0 || keys[i].R != keys[i - 1].R) {
            nslots++;
            nweights += keys[i].n;
        }
    if (nweights > (size_t)INT32_MAX) {
        rvs_log(RVS_LOG_ERROR, "rotation", "%zu templates need more than 2^31 kernel "
                "weights; rotate them in smaller calls", ntempl);
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    /* meta: tmpl_slot[T] slot_woff[S] slot_km[S] direct[T] fft[T] local_slot[T] chunk_slots[T]
     * in_row[T] */
    size_t off_tmpl = 0, off_woff = ntempl, off_km = off_woff + nslots, off_direct = off_km + nslots;
    size_t off_fft = off_direct + ntempl, off_local = off_fft + ntempl;
    size_t off_chunk = off_local + ntempl, off_in_row = off_chunk + ntempl;
    size_t nmeta = off_in_row + ntempl;
    meta = rvs_malloc(nmeta * sizeof *meta);
    w = rvs_malloc(nweights * sizeof *w);
    chunk_nslots = rvs_calloc(ntempl / ROTATION_FFT_CHUNK + 1, sizeof *chunk_nslots);
    if (!meta || !w || !chunk_nslots) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t t = 0; t < ntempl; t++)
        meta[off_in_row + t] = in_rows ? in_rows[t] : (int)t;
    size_t s = 0, woff = 0, ndirect = 0, nfft = 0, km_max_fft = 0;
    for (size_t i = 0; i < ntempl; i++) {
        if (i == 0 || keys[i].R != keys[i - 1].R) {
            if (i > 0)
                s++;
            size_t n;
            if (!deriv) {
                RVS_TRY(rvs_rotation_weights(keys[i].R, eps, w + woff, nweights - woff, &n));
            } else {
                /* d/dvsini = d/dR dR/dvsini, R = vsini / (c lnstep) */
                RVS_TRY(rvs_rotation_weights_dR(keys[i].R, eps, w + woff, nweights - woff, &n));
                for (size_t j = 0; j < n; j++)
                    w[woff + j] /= RVS_SPEED_OF_LIGHT_KMS * lnstep;
            }
            meta[off_woff + s] = (int)woff;
            meta[off_km + s] = (int)((n - 1) / 2);
            woff += n;
        }
        size_t t = keys[i].t;
        meta[off_tmpl + t] = (int)s;
        if (keys[i].n >= use_fft_from) {
            meta[off_fft + nfft++] = (int)t;
            if ((size_t)meta[off_km + s] > km_max_fft)
                km_max_fft = (size_t)meta[off_km + s];
        } else {
            meta[off_direct + ndirect++] = (int)t;
        }
    }
    /* Each FFT chunk lists its distinct slots; rows refer to them by local index. Rows are in
     * width order, so equal slots are adjacent. */
    size_t nchunk_slots = 0;
    for (size_t first = 0, c = 0; first < nfft; first += ROTATION_FFT_CHUNK, c++) {
        size_t end = first + ROTATION_FFT_CHUNK < nfft ? first + ROTATION_FFT_CHUNK : nfft;
        size_t chunk_start = nchunk_slots;
        for (size_t r = first; r < end; r++) {
            int slot = meta[off_tmpl + (size_t)meta[off_fft + r]];
            if (r == first || slot != meta[off_chunk + nchunk_slots - 1])
                meta[off_chunk + nchunk_slots++] = slot;
            meta[off_local + r] = (int)(nchunk_slots - 1 - chunk_start);
        }
        chunk_nslots[c] = nchunk_slots - chunk_start;
    }

    size_t es = rvs_context_real_size(ctx);
    if (rot->is_double) {
        w_dev = w;
    } else {
        float *wf = rvs_malloc(nweights * sizeof *wf);
        if (!wf) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        for (size_t j = 0; j < nweights; j++)
            wf[j] = (float)w[j];
        w_dev = wf;
    }
    RVS_TRY(ensure_buffer(ctx, &rot->weights, &rot->weights_bytes, nweights * es));
    RVS_TRY(ensure_buffer(ctx, &rot->meta, &rot->meta_bytes, nmeta * sizeof *meta));
    RVS_TRY(rvs_buffer_write(ctx, rot->weights, 0, nweights * es, w_dev));
    RVS_TRY(rvs_buffer_write(ctx, rot->meta, 0, nmeta * sizeof *meta, meta));

    if (ndirect > 0)
        RVS_TRY(launch_direct(ctx, rot, in, out, off_tmpl, off_woff, off_km, off_direct, ndirect,
                              off_in_row));
    if (nfft > 0)
        RVS_TRY(apply_fft(ctx, rot, in, out, meta, off_woff, off_km, off_fft, off_local, off_chunk,
                          chunk_nslots, nfft, km_max_fft, off_in_row));
cleanup:
    if (w_dev && w_dev != w)
        free(w_dev);
    free(keys);
    free(meta);
    free(w);
    free(chunk_nslots);
    return status;
}

int rvs_rotation_apply_rows(struct rvs_context *ctx, struct rvs_rotation *rot, cl_mem in,
                            const int *in_rows, size_t n_in, size_t ntempl, const double *vsini,
                            double lnstep, double eps, cl_mem out)
{
    return apply_rows(ctx, rot, in, in_rows, n_in, ntempl, vsini, lnstep, eps, out, 0);
}

int rvs_rotation_apply_rows_dvsini(struct rvs_context *ctx, struct rvs_rotation *rot, cl_mem in,
                                   const int *in_rows, size_t n_in, size_t ntempl,
                                   const double *vsini, double lnstep, double eps, cl_mem out)
{
    return apply_rows(ctx, rot, in, in_rows, n_in, ntempl, vsini, lnstep, eps, out, 1);
}

/* ------------------------------------------------------------------ self-test */

int rvs_rotation_selftest(struct rvs_context *ctx, char *detail, size_t detail_size)
{
    enum { NPIX = 41, CENTRE = 20 };
    int status = RVS_OK;
    struct rvs_rotation *rot = NULL;
    cl_mem din = NULL, dout = NULL;
    double x[NPIX] = {0}, y[NPIX], weights[NPIX];
    float xf[NPIX], yf[NPIX];
    size_t es = rvs_context_real_size(ctx), n;
    /* R = 5.3 px: 13 weights, so the impulse's image lies well inside the template */
    const double lnstep = 1e-4, R = 5.3, vsini = R * lnstep * RVS_SPEED_OF_LIGHT_KMS;
    x[CENTRE] = 1.0;
    for (int i = 0; i < NPIX; i++)
        xf[i] = (float)x[i];
    RVS_TRY(rvs_rotation_weights(R, RVS_ROTATION_EPS, weights, NPIX, &n));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, NPIX * es, ctx->use_fp64 ? (void *)x : xf,
                              &din));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, NPIX * es, NULL, &dout));
    RVS_TRY(rvs_rotation_create(ctx, NPIX, &rot));
    RVS_TRY(rvs_rotation_apply(ctx, rot, din, 1, &vsini, lnstep, RVS_ROTATION_EPS, dout));
    RVS_TRY(rvs_buffer_read(ctx, dout, 0, NPIX * es, ctx->use_fp64 ? (void *)y : yf));
    double tol = ctx->use_fp64 ? 1e-14 : 1e-6;
    for (int i = 0; i < NPIX; i++) {
        double got = ctx->use_fp64 ? y[i] : yf[i];
        int j = i - CENTRE + (int)(n - 1) / 2;
        double want = j >= 0 && j < (int)n ? weights[j] : 0.0;
        if (!(fabs(got - want) <= tol)) {
            snprintf(detail, detail_size, "impulse at vsini %.3f km/s: pixel %d = %.17g, want %.17g",
                     vsini, i, got, want);
            status = RVS_ERR_SELFTEST;
            break;
        }
    }
cleanup:
    rvs_rotation_destroy(&rot);
    rvs_buffer_release(&din);
    rvs_buffer_release(&dout);
    return status;
}
