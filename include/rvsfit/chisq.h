/* rvsfit/chisq.h: the continuum-marginalised chi^2 (-2 log L) of rvspecfit's get_chisq0, for
 * many (model, spectrum) requests of one spectrograph arm at once.
 *
 * For a request with model T (at the data pixels), spectrum F with errors sigma and the
 * continuum basis P (npoly x n): D = F/sigma, S_j = T P_j / sigma, G = S^T S,
 * a = G^-1 S^T D and
 *     chi^2 = log det G + 2 sum_i log sigma_i + |D - S a|^2
 * (rvspecfit py/rvspecfit/spec_fit.py, get_chisq0 and its two solvers). G and S^T D are two
 * GEMMs over all requests; each request then gets a small Cholesky solve, or an eigen-
 * decomposition (rvspecfit's SVD path) where Cholesky fails, and a residual pass.
 *
 * Rank-deficient G (npoly > n, or a template that vanishes where a basis function lives):
 * rvspecfit's SVD then takes the log of singular values at the rounding level and returns a
 * finite number that is rounding noise. We flag such requests instead: chi^2 = +infinity (which
 * rvspecfit's get_chisq treats as "not finite"), and the coefficients are the minimum-norm
 * least-squares ones (the best-fit model is still the projection of the data on the span). */
#ifndef RVSFIT_CHISQ_H
#define RVSFIT_CHISQ_H

#include <stddef.h>

#include "rvsfit/context.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest continuum basis the solver kernels accept (rvspecfit's default is 10). */
#define RVS_CHISQ_MAX_NPOLY 32

struct rvs_chisq_arm; /* one wavelength grid and basis, its spectra, its workspace: private */

/* The continuum basis of rvspecfit's get_poly_basis on a wavelength grid, on the host in
 * double: basis[j * n + i]. x = 2 (lam - lam[0]) / (lam[n-1] - lam[0]) - 1; rbf != 0: 1, x, x^2,
 * then npoly - 3 Gaussians with centres linspace(-1, 1, npoly - 3) and sigma 1/(npoly - 3);
 * rbf == 0: Chebyshev T_0..T_{npoly-1}. For n == 1 (where rvspecfit divides 0 by 0) x = -1. */
int rvs_chisq_basis(const double *lam, size_t n, size_t npoly, int rbf, double *basis);

/* An arm on wavelength grid lam[n] with an npoly-term basis; uploads the basis. */
int rvs_chisq_arm_create(struct rvs_context *ctx, const double *lam, size_t n, size_t npoly,
                         int rbf, struct rvs_chisq_arm **arm);
/* Releases the arm and its device memory; accepts NULL and sets *arm to NULL. */
void rvs_chisq_arm_destroy(struct rvs_chisq_arm **arm);

/* The spectra of this arm (row s of spec and espec, S x n): uploads D = spec/espec, 1/espec
 * and 1/espec^2 and computes 2 sum log espec per spectrum on the host in double. espec must be
 * positive and finite (rvspecfit masks pixels with a huge sigma, not a zero one). */
int rvs_chisq_arm_set_data(struct rvs_context *ctx, struct rvs_chisq_arm *arm, const double *spec,
                           const double *espec, size_t S);

/* Forces the eigen-decomposition fallback for every request (tests and debugging). */
void rvs_chisq_arm_force_fallback(struct rvs_chisq_arm *arm, int on);

/* The continuum prior. Off (rvspecfit's likelihood): -2 log L = log det G + 2 sum log sigma +
 * |D - S a|^2 with G = S^T S, the marginal likelihood of a flat prior on the continuum
 * coefficients. That prior is not invariant to the template's scale: log det G grows by
 * 2 npoly log c when the template is multiplied by c, so with templates in surface-flux units
 * (F ~ Teff^4) it pulls the fit towards fainter, cooler templates (~80/Teff per K in -2 log L,
 * a bias of a third of an error bar in Teff at S/N 20). rvspecfit's own templates are continuum
 * normalised, which hides this. On: log det G - npoly log tr G, the marginal likelihood of a
 * prior flat in the coefficients times the template's scale; unchanged for a template of
 * constant scale, and invariant to it. */
void rvs_chisq_arm_set_scale_free(struct rvs_chisq_arm *arm, int on);

/* Number of rvs_real elements rvs_chisq_eval writes to `chisq` per request: the value as an
 * unevaluated sum hi + lo (a float cannot hold 1e4 to 1e-3; lo is 0 with fp64). */
#define RVS_CHISQ_VALUES_PER_REQUEST 2

/* chi^2 of E requests: request e is model row e of `models` (E x n rvs_real, at the data
 * pixels) against spectrum spectrum_index[e] (cl_int, 0..S-1). Writes chisq (2 E rvs_real, see
 * rvs_chisq_read) and, when not NULL, coeffs (E x npoly rvs_real: the continuum coefficients)
 * and best_model (E x n rvs_real: T * sum_j a_j P_j in data units). Enqueued on ctx->queue;
 * returns once enqueued (CPU GEMMs wait). Workspace grows with E; a device allocation failure
 * returns its status (CL_MEM_OBJECT_ALLOCATION_FAILURE, CL_OUT_OF_RESOURCES...) so the caller
 * can halve the batch. chi^2 is +inf for a rank-deficient Gram matrix and NaN for non-finite
 * input. */
int rvs_chisq_eval(struct rvs_context *ctx, struct rvs_chisq_arm *arm, cl_mem models,
                   cl_mem spectrum_index, size_t E, cl_mem chisq, cl_mem coeffs,
                   cl_mem best_model);

/* Largest number of tangents (fit parameters) rvs_chisq_eval_deriv accepts per request. */
#define RVS_CHISQ_MAX_TANGENTS 8

/* chi^2 of E requests as rvs_chisq_eval, with its exact derivatives along K tangents.
 *
 * Inputs. models: E x n rvs_real, the template T of request e at the data pixels in row e (the
 * layout of rvs_chisq_eval, so one buffer serves both). tangents: rows of n rvs_real, T_k =
 * dT/dx_k of request e in row tangent_row0 + k E + e (K blocks of E rows, the layout in which
 * the engine's spline and resolution passes write them); tangents may be the models buffer
 * itself with tangent_row0 >= E. spectrum_index: E cl_int, as rvs_chisq_eval.
 * 1 <= K <= RVS_CHISQ_MAX_TANGENTS.
 *
 * Outputs. chisq: 2 E rvs_real (hi, lo), the value rvs_chisq_eval returns (the same bits
 * when the derivative kernel runs at the residual pass's work-group size, as on CPU devices;
 * else to rounding). grad: E x K rvs_real, grad[e K + k] = d chi^2 / dx_k. gn (may be NULL):
 * E x K x K rvs_real, gn[(e K + k) K + l], a symmetric positive semi-definite Gauss-Newton
 * approximation of the Hessian d^2 chi^2 / dx_k dx_l.
 *
 * What is computed, with t = T/sigma, t_k = T_k/sigma, S = diag(t) P^T, S_k = diag(t_k) P^T,
 * G = S^T S, a = G^-1 S^T D, c = P^T a (the continuum), r = D - S a, the hat values
 * h_i = p_i^T G^-1 p_i (p_i the basis at pixel i), dG_k = S_k^T S + S^T S_k:
 *   gradient = -2 r^T S_k a + tr(G^-1 dG_k) [- npoly tr(dG_k) / tr G]
 *            = sum_i t_ki z_i,  z_i = 2 (t_i h_i - r_i c_i) [- 2 npoly t_i |q_i|^2 / tr G],
 * exact for the profiled objective: a is the minimiser of |r|^2, so its own change does not
 * enter (envelope theorem). The bracket is the scale-free prior (rvs_chisq_arm_set_scale_free),
 * with tr G and q_i, as in rvs_chisq_eval, in the arm's orthonormalised basis Q (|q_i|^2 is
 * the unweighted hat value p_i^T (P P^T)^-1 p_i, so it depends on the basis's span only).
 *   GN = 2 J^T J, J_k = -(I - Pi_S) S_k a, Pi_S = S G^-1 S^T:
 *      = 2 (Y^T Y - U^T G^-1 U), Y = [S_1 a .. S_K a] (n x K), U = S^T Y,
 * the variable-projection Jacobian of Kaufman (1975). Left out of the Hessian: the
 * Golub-Pereyra term of dr/dx (-S G^-1 S_k^T r, zero at a perfect fit), the residual's
 * curvature r^T d^2r/dx_k dx_l (second derivatives of T, not available here), and all second
 * derivatives of log det G and of the scale-free term (they are not positive semi-definite
 * and, at S/N >~ 10, much smaller than J^T J; tests/test_chisq_deriv.c measures the total
 * against a finite-difference Hessian). Pivots of the Schur complement Y^T Y - U^T G^-1 U
 * below 4 (npoly + K) eps of the unprojected |y_k|^2 (eps of rvs_real) are taken as zero:
 * a tangent whose y_k lies in the continuum's span to rounding (a pure scale change of the
 * template, say) gets an exactly zero row and column rather than rounding noise of either
 * sign; a tangent whose projection is a combination of earlier ones' keeps its couplings.
 *
 * Rank-deficient G: chi^2 +inf, grad and gn NaN. Non-finite model or tangent values, or a bad
 * spectrum index: grad and gn NaN (chi^2 as rvs_chisq_eval: NaN unless only a tangent is bad).
 *
 * Cost: rvs_chisq_eval's Gram GEMMs and per-request solve, then one fused pass over the pixels
 * that reads T, the K tangents, D, 1/sigma and the basis once and sums |r|^2, the gradient,
 * Y^T Y and U together (O(n (npoly^2 + K npoly + K^2)) per request). Enqueued on ctx->queue;
 * workspace and allocation failures as rvs_chisq_eval. */
int rvs_chisq_eval_deriv(struct rvs_context *ctx, struct rvs_chisq_arm *arm, cl_mem models,
                         cl_mem tangents, size_t tangent_row0, size_t K, cl_mem spectrum_index,
                         size_t E, cl_mem chisq, cl_mem grad, cl_mem gn);

/* Reads E chi^2 values written by rvs_chisq_eval into doubles (hi + lo summed in double). */
int rvs_chisq_read(struct rvs_context *ctx, cl_mem chisq, size_t E, double *out);

/* How many of the last rvs_chisq_eval's requests took the fallback (eigen) path, and how many
 * of those were flagged rank-deficient; waits for the queue. For tests and diagnostics. */
int rvs_chisq_fallback_count(struct rvs_context *ctx, struct rvs_chisq_arm *arm,
                             size_t *fallback, size_t *rank_deficient);

size_t rvs_chisq_arm_npoly(const struct rvs_chisq_arm *arm);
size_t rvs_chisq_arm_npix(const struct rvs_chisq_arm *arm);

/* Self-test row (src/device/selftest.c): data = template x a continuum in the basis, so the residual
 * vanishes and chi^2 = log det G + 2 sum log sigma, known on the host. */
int rvs_chisq_selftest(struct rvs_context *ctx, char *detail, size_t detail_size);

#ifdef __cplusplus
}
#endif

#endif
