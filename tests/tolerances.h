/* tolerances.h: every kernel test's tolerance, in one place, against its plain-C reference.
 * Issue #3 fixes the first three; the rest follow from the precision of each path. */
#ifndef RVS_TOLERANCES_H
#define RVS_TOLERANCES_H

/* fp64 device paths (spline, rotation, resolution, chi^2) vs fp64 reference: relative */
#define RVS_TOL_FP64_REL 1e-10
/* NN log-flux in fp32 vs an OpenBLAS fp32 reference: relative (of max |log-flux|) */
#define RVS_TOL_NN_FP32_REL 1e-5
/* chi^2 in forced-fp32 mode on values ~1e4: absolute */
#define RVS_TOL_CHISQ_FP32_ABS 1e-3
/* other fp32 paths (spline, rotation, resolution) vs the fp64 reference: relative to the
 * largest magnitude of the output (a few ulp of float, times the operation's depth) */
#define RVS_TOL_FP32_REL 2e-6
/* rotation's FFT path in fp32 (clFFT single precision), relative to the largest magnitude of
 * the output: FFT rounding is ~eps*log2(len) of the input's magnitude, and a kernel much wider
 * than the template shrinks a random template's output up to ~20-fold (N=7, K=87: 4.4e-6
 * measured; DESI-size cases stay below 6e-7, within RVS_TOL_FP32_REL) */
#define RVS_TOL_ROTATION_FFT_FP32_REL 1e-5
/* evaluation engine (NN -> rotation -> spline -> resolution -> chi^2) vs the reference chain on
 * the same NN rows: fp64 chi^2 relative (measured <= 1e-13: the chain of fp64 stages);
 * forced-fp32 chi^2 absolute, on chi^2 of 1e2..1e5 per arm at S/N up to 80: the chi^2 kernel's
 * own ~1e-3 plus fp32 models within ~2e-7 of their maximum (~2e-5 sigma per pixel at S/N 80)
 * summed against the residuals, so it grows with the pixels and the misfit: measured <= 3e-3
 * on the test's arms (375..625 px), 9e-3..1.2e-2 at DESI sizes (bench_kernels, 3 arms of
 * ~2650 px, rotation through the fp32 FFT); best-fit models use RVS_TOL_FP32_REL (2e-7) */
#define RVS_TOL_ENGINE_FP64_REL 1e-9
#define RVS_TOL_ENGINE_FP32_ABS 2e-2
/* the same engine request evaluated in another batch (chunked passes, retries): relative on chi^2.
 * A new tolerance because it is not a precision path: the NN's float32 GEMM rounds a row
 * differently by ~1 ulp (6e-8 relative flux) when other rows share the call (OpenBLAS; CLBlast
 * tiles alike), which moves chi^2 by up to ~1.3e-7 relative (measured, chi^2 up to 1e5) */
#define RVS_TOL_ENGINE_REBATCH_REL 1e-6
/* rvs_engine_derivs' gradient vs a central difference of rvs_engine_eval with a 1-sigma step
 * (tests/test_engine.c), in units of the gradient's scale sqrt(GN_kk): the difference's cubic
 * term and the float32 emulator's noise in chi^2 over the step. */
#define RVS_TOL_ENGINE_GRAD 2e-2
/* the same in forced fp32, where chi^2 itself carries ~RVS_TOL_ENGINE_FP32_ABS of rounding:
 * over the difference's 0.28-unit step that is ~0.05 units */
#define RVS_TOL_ENGINE_GRAD_FP32 1e-1
/* rvsfit-cl-mkgrid spectra at DESI resolution vs values stored from the code before its
 * speed-up (tests/test_mkgrid_reference.c): relative (measured <= 1.9e-4) */
#define RVS_TOL_MKGRID_REF 1e-3
/* CCF start (tests/test_ccf.c) in fp32: chi^2(shift) through two single-precision clFFT
 * transforms of length 8192 (forward, then the inverse shared by the two correlations) vs the
 * double reference, relative to the spectrum's largest |chi^2|. An FFT's error is ~c eps log2(n)
 * of the sequence's norm (eps = 6e-8, log2 n = 13; c, a few, depends on how the implementation
 * makes its twiddles); the raw-flux chi^2 = -s0^2 / s1 carries three such errors (2 of s0, 1 of
 * s1): 3 x 13 x eps = 2.3e-6 c. The bound takes c = 13. Measured: 2.7e-6 continuum-normalised,
 * 4.2e-6 raw flux (PoCL, c ~ 2); 1.2e-5 raw flux with NVIDIA's OpenCL on an H200 (c ~ 5). */
#define RVS_TOL_CCF_FP32_REL 3e-5
/* rvs_chisq_eval_deriv (tests/test_chisq_deriv.c says what each error is normalised by):
 * chi^2 vs rvs_chisq_eval relative (the same sum; measured 0, bitwise); gradient vs the
 * long-double reference over its rounding scale, fp64 (measured 3e-15) and fp32 (6e-9); vs
 * Richardson finite differences of rvs_chisq_eval, fp64 only (1.3e-13); Gauss-Newton matrix
 * over max 2|y_k|^2, fp64 (5.7e-15) and fp32 (4.5e-7); its smallest eigenvalue over its
 * largest diagonal (9e-18, 4.5e-10: rounding of cf cf^T); the scale tangent's closed form
 * 2 npoly or 0, absolute (6e-9, 2e-6) */
#define RVS_TOL_CHISQ_DERIV_CHISQ 1e-13
#define RVS_TOL_CHISQ_DERIV_GRAD_FP64 1e-11
#define RVS_TOL_CHISQ_DERIV_GRAD_FP32 1e-7
#define RVS_TOL_CHISQ_DERIV_GRAD_FD 1e-7
#define RVS_TOL_CHISQ_DERIV_GN_FP64 1e-11
#define RVS_TOL_CHISQ_DERIV_GN_FP32 4e-6
#define RVS_TOL_CHISQ_DERIV_PSD_FP64 1e-12
#define RVS_TOL_CHISQ_DERIV_PSD_FP32 1e-6
/* the closed form of the scale tangent (2 npoly or 0), absolute: fp64 5e-8 of 2 npoly = 20,
 * fp32 5e-6 (the sum's terms carry a float's rounding; a's error enters at first order) */
#define RVS_TOL_CHISQ_DERIV_SCALE_FP64 1e-6
#define RVS_TOL_CHISQ_DERIV_SCALE_FP32 1e-4
/* GEMM: eps * 4k relative to the scale of the inputs (see tests/test_gemm.c) */

#endif
