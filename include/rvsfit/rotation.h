/* rvsfit/rotation.h: rotational broadening of template batches (rvspecfit's convolve_vsini):
 * the limb-darkened kernel weights on the host, the convolution on the device, directly for
 * narrow kernels and through batched clFFT for wide ones. */
#ifndef RVSFIT_ROTATION_H
#define RVSFIT_ROTATION_H

#include <stddef.h>

#include "rvsfit/context.h"
#include "rvsfit/physics.h"

#ifdef __cplusplus
extern "C" {
#endif

/* rvspecfit's limb-darkening coefficient (convolve_vsini's default eps). */
#define RVS_ROTATION_EPS 0.6
/* Kernel widths below this many pixels leave the template unchanged (rvspecfit's cut). */
#define RVS_ROTATION_MIN_WIDTH 1e-9

/* Which device path convolves a template. AUTO picks by kernel length (see
 * rvs_rotation_set_fft_threshold); the others force one path (tests, benchmarks). Templates
 * left unchanged (vsini <= 0 or width below RVS_ROTATION_MIN_WIDTH) are copied in any mode. */
enum rvs_rotation_path { RVS_ROTATION_AUTO = 0, RVS_ROTATION_DIRECT = 1, RVS_ROTATION_FFT = 2 };

struct rvs_rotation;

/* Number of weights of the kernel of width R pixels: 2*ceil(R+1)+1, or 1 when R is below
 * RVS_ROTATION_MIN_WIDTH (or not > 0); 0 when R is not finite. */
size_t rvs_rotation_kernel_length(double R);

/* The kernel of width R = (vsini/c)/lnstep pixels and limb darkening eps (rvspecfit's
 * compute_vsini_kernel): weights[j], j = 0..length-1, centred at (length-1)/2, the exact
 * integral of a piecewise-linear spectrum against the kernel, normalised to sum 1. A width below
 * RVS_ROTATION_MIN_WIDTH gives the identity {1}. *length is set even when capacity is too small
 * (then RVS_ERR_INVALID_ARGUMENT and nothing is written); weights may be NULL to ask the length. */
int rvs_rotation_weights(double R, double eps, double *weights, size_t capacity, size_t *length);

/* d weights[j] / dR of rvs_rotation_weights(R, eps), exactly (analytic integrals of the kernel's
 * x K(x) primitives over the hat's legs, and the quotient rule of the normalisation; see
 * src/rotation.c), for the exact derivative of a rotated template with respect to vsini
 * (dR/dvsini = 1 / (c lnstep)). Same length and centre as the weights for R >=
 * RVS_ROTATION_MIN_WIDTH. Behaviour near R = 0: for 0 < R <= 1 every weight is linear in R
 * (w = identity + R m/2 [1, -2, 1], m = integral of |x| K(x)), so the rotated template is
 * linear in vsini there and this derivative is the same constant kernel for any R in (0, 1];
 * a width 0 < R < RVS_ROTATION_MIN_WIDTH, where rvs_rotation_weights cuts to the identity,
 * gives that same kernel (the limit R -> 0+, 5 weights, the outer two zero), the right
 * derivative a fit at vsini -> 0+ needs. R <= 0 (no rotation: the template does not depend on
 * vsini) gives the single weight {0}. *length and NULL dweights as rvs_rotation_weights. */
int rvs_rotation_weights_dR(double R, double eps, double *dweights, size_t capacity,
                            size_t *length);

/* A convolution object for templates of npix pixels: kernels, work buffers and clFFT plans are
 * kept in it between calls. Not thread-safe; one per context and thread. */
int rvs_rotation_create(struct rvs_context *ctx, size_t npix, struct rvs_rotation **rot);
/* Releases everything (plans included); accepts NULL and sets *rot to NULL. */
void rvs_rotation_destroy(struct rvs_rotation **rot);

/* Forces a path or returns to AUTO. */
void rvs_rotation_set_path(struct rvs_rotation *rot, enum rvs_rotation_path path);
/* AUTO uses the FFT for kernels of at least min_length weights (0: the device's default, from
 * the measurements documented in src/engine/rotation.c; $RVSFIT_CL_ROTATION_FFT_MIN overrides that
 * default at creation). */
void rvs_rotation_set_fft_threshold(struct rvs_rotation *rot, size_t min_length);
/* The kernel length from which AUTO uses the FFT. */
size_t rvs_rotation_fft_threshold(const struct rvs_rotation *rot);

/* out[t] = in[t] convolved with the kernel of vsini[t] (km/s) for t = 0..ntempl-1, 'same' mode
 * with zero padding (scipy.signal.convolve(templ, kernel, mode='same')); in and out are
 * ntempl x npix rvs_real buffers (rvs_context_real_size), distinct. lnstep is the templates'
 * natural-log wavelength step, eps the limb darkening (RVS_ROTATION_EPS). Enqueued on ctx->queue;
 * the host arrays may be reused on return. */
int rvs_rotation_apply(struct rvs_context *ctx, struct rvs_rotation *rot, cl_mem in, size_t ntempl,
                       const double *vsini, double lnstep, double eps, cl_mem out);
/* The same with template t read from row in_rows[t] (< n_in) of in (host array; NULL: row t):
 * the rows of one emulator output can feed several templates (several vsini for one theta)
 * without a copy of each first. */
int rvs_rotation_apply_rows(struct rvs_context *ctx, struct rvs_rotation *rot, cl_mem in,
                            const int *in_rows, size_t n_in, size_t ntempl, const double *vsini,
                            double lnstep, double eps, cl_mem out);

/* d out[t] / d vsini[t] (per km/s) of rvs_rotation_apply_rows with the same arguments: template
 * in_rows[t] convolved ('same' mode, zero padding) with the kernel of rvs_rotation_weights_dR
 * at R = vsini[t] / (c lnstep), divided by c lnstep; the direct or FFT path is chosen by the
 * kernel length as for the values. vsini[t] <= 0 gives a row of zeros (a NaN or inf pixel of
 * the input gives NaN there, as 0 x NaN); 0 < vsini[t] below the width cut gives the right
 * derivative at vsini -> 0+ (see rvs_rotation_weights_dR). The tangents of theta need no call
 * of their own: rotation is linear, so rvs_rotation_apply_rows with the tangent rows in
 * in_rows and the template's vsini rotates them. */
int rvs_rotation_apply_rows_dvsini(struct rvs_context *ctx, struct rvs_rotation *rot, cl_mem in,
                                   const int *in_rows, size_t n_in, size_t ntempl,
                                   const double *vsini, double lnstep, double eps, cl_mem out);

/* Self-test row: an impulse template broadened at a known vsini must equal the weights. */
int rvs_rotation_selftest(struct rvs_context *ctx, char *detail, size_t detail_size);

#ifdef __cplusplus
}
#endif

#endif
