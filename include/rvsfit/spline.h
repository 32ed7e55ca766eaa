/* rvsfit/spline.h: batched natural cubic splines on a template wavelength grid, as rvspecfit's
 * spliner.c defines them (construct: the tridiagonal system of the second derivatives, solved by
 * one of three kernels with the same result; evaler: knot index from the uniform (log-)step),
 * evaluated at Doppler-shifted data wavelengths. */
#ifndef RVSFIT_SPLINE_H
#define RVSFIT_SPLINE_H

#include <stddef.h>

#include "rvsfit/context.h"
#include "rvsfit/physics.h"

#ifdef __cplusplus
extern "C" {
#endif


/* One knot grid (the template wavelengths of one arm) on the device, with the parts of the
 * tridiagonal solve that depend only on the knots. Private layout. */
struct rvs_spline_grid;

/* Validates xs (n >= 3 knots, strictly increasing, uniform in log when log_step != 0, else
 * uniform; the step test is spliner.c's: the first two steps agree within 1e-10) and uploads
 * the grid. Returns RVS_ERR_INVALID_ARGUMENT with a logged reason for a bad grid. Chooses the
 * construction kernel for the grid: fir (parallel over knots) on GPUs, segmented elsewhere,
 * RVSFIT_CL_SPLINE_KERNEL=serial|segmented|fir to override (src/engine/spline.c). */
int rvs_spline_grid_create(struct rvs_context *ctx, const double *xs, size_t n, int log_step,
                           struct rvs_spline_grid **grid);
/* Releases the grid; accepts NULL and sets *grid to NULL. */
void rvs_spline_grid_destroy(struct rvs_spline_grid **grid);
/* Number of knots of the grid. */
size_t rvs_spline_grid_size(const struct rvs_spline_grid *grid);

/* Bytes of the coefficient buffer for ntemplates splines on this grid (rvs_real storage; the
 * layout is private to the module). */
size_t rvs_spline_coeffs_bytes(const struct rvs_context *ctx, const struct rvs_spline_grid *grid,
                               size_t ntemplates);

/* Coefficients of T natural splines, one launch: templates holds T rows of N rvs_real (row
 * t = the values at the knots), coeffs at least rvs_spline_coeffs_bytes(ctx, grid, T). Enqueued
 * on ctx->queue; returns without waiting. */
int rvs_spline_construct(struct rvs_context *ctx, const struct rvs_spline_grid *grid,
                         cl_mem templates, size_t T, cl_mem coeffs);

/* The n evaluation wavelengths lam as rvs_spline_eval reads them: a read-only buffer of 2 n
 * rvs_real, the wavelengths (rounded to rvs_real) and then their logarithms (the knot index of
 * a log grid without a logarithm per pixel and request). Rejects non-positive or non-finite
 * wavelengths with a logged reason. */
int rvs_spline_points_create(struct rvs_context *ctx, const double *lam, size_t n,
                             cl_mem *points);

/* E evaluations, one launch: request e evaluates spline template_index[e] (cl_int, < T) at
 * lam[j] * sqrt((1 - b) / (1 + b)), b = velocity[e] / c (velocity in km/s, rvs_real), for the n
 * wavelengths lam (from rvs_spline_points_create) into out[e * n + j] (rvs_real). Points outside [xs[0], xs[N-1])
 * and requests with a template index outside [0, T) give NaN. Enqueued; returns without
 * waiting. In forced fp32 the shift is carried in compensated float: values stay within a few
 * 1e-7 of max|value| for |v| up to ~5000 km/s, degrading as v^2 beyond (1e-4 at 40000 km/s). */
int rvs_spline_eval(struct rvs_context *ctx, const struct rvs_spline_grid *grid, cl_mem coeffs,
                    size_t T, cl_mem template_index, cl_mem velocity, size_t E, cl_mem lam,
                    size_t n, cl_mem out);

/* rvs_spline_eval and the exact derivative of each value with respect to the request's velocity,
 * for the fitter's gradient in v (issue 18): dout[e * n + j] = S'(x) dx/dv (per km/s), S the
 * spline template_index[e], x = lam[j] f(v) the shifted wavelength of rvs_spline_eval,
 * f = sqrt((1 - b) / (1 + b)), b = v / c, so dx/dv = -x / (c (1 - b^2)), and
 * S'(x) = 3 A dxl^2 - 3 B dxr^2 + C - D on the interval that holds x (the natural spline is
 * C^2, so this is continuous across knots). out (may be NULL: derivatives only) receives the
 * same values as rvs_spline_eval, bit for bit. NaN where rvs_spline_eval gives NaN. Spline
 * construction is linear in the template values, so the tangents of the template parameters
 * (rvs_nn_forward_tangent's rows, rotated) are splines of their own, built by
 * rvs_spline_construct and evaluated by rvs_spline_eval at the same velocity. */
int rvs_spline_eval_dv(struct rvs_context *ctx, const struct rvs_spline_grid *grid,
                       cl_mem coeffs, size_t T, cl_mem template_index, cl_mem velocity, size_t E,
                       cl_mem lam, size_t n, cl_mem out, cl_mem dout);

/* Reads T templates' coefficients back into abcd[(t * (N - 1) + i) * 4 + 0..3] = A, B, C, D of
 * interval i (spliner.c's A, B, C, D), whatever the device layout; for tests and debugging. */
int rvs_spline_coeffs_read(struct rvs_context *ctx, const struct rvs_spline_grid *grid,
                           cl_mem coeffs, size_t T, double *abcd);

/* Known-answer check for src/device/selftest.c: a linear template (reproduced exactly by a natural
 * spline) evaluated at a known velocity. */
int rvs_spline_selftest(struct rvs_context *ctx, char *detail, size_t detail_size);

#ifdef __cplusplus
}
#endif

#endif
