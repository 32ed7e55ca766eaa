/* spline.c: batched natural cubic splines (rvspecfit py/rvspecfit/src/spliner.c) on OpenCL:
 * grid validation and the template-independent parts of the tridiagonal solve on the host
 * (Thomas pivots; the ratios and diagonal of the inverse for the parallel "fir" kernel), the
 * choice among three construction kernels, one launch that builds the coefficients of many
 * templates, one launch that evaluates many (template, velocity) requests at the data
 * wavelengths of an arm (cl/spline.cl). */
#include <config.h>

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/internal.h"
#include "rvsfit/spline.h"

/* Must match cl/spline.cl. */
enum {
    SPLINE_XS,
    SPLINE_H,
    SPLINE_HINV,
    SPLINE_CCD,
    SPLINE_PIV,
    SPLINE_T1,
    SPLINE_T2,
    SPLINE_LW,
    SPLINE_RW,
    SPLINE_DIAG,
    SPLINE_SECTIONS
};
#define SPLINE_GROUP 32
/* cl/spline.cl's segmented construction: work-items per template, longest segment */
#define SPLINE_SEG_GROUP 16
#define SPLINE_SEG_MAXLEN 512
/* cl/spline.cl's fir construction: knots per work-group, terms per side in fp64 / fp32 */
#define SPLINE_FIR_GROUP 128
#define SPLINE_FIR_K64 29
#define SPLINE_FIR_K32 14

/* The construction kernels (RVSFIT_CL_SPLINE_KERNEL=serial|segmented|fir). */
enum spline_kind { SPLINE_SERIAL, SPLINE_SEGMENTED, SPLINE_FIR };
static const char *const spline_kind_names[] = {"serial", "segmented", "fir"};

/* Pixels per work-group of the evaluation (all of one request), and the per-request values its
 * first work-item computes into local memory (cl/spline.cl rvs_spline_doppler). */
#define SPLINE_EVAL_GROUP 64
#define SPLINE_DOPPLER_VALUES 5
/* spliner.c evaler()'s step-consistency threshold */
#define SPLINE_STEP_TOL 1e-10

struct rvs_spline_grid {
    size_t n;
    int log_step;
    double x0, step; /* step: log(xs[1]/xs[0]) for log grids, xs[1] - xs[0] otherwise */
    cl_mem geom;     /* SPLINE_SECTIONS arrays of n rvs_real */
    cl_kernel construct, eval;
    cl_kernel eval_dv; /* rvs_spline_eval_dv: values and d/dv */
    enum spline_kind kind; /* the construction kernel in use */
    cl_kernel construct_other; /* the segmented or fir kernel when kind says so */
};

size_t rvs_spline_grid_size(const struct rvs_spline_grid *grid) { return grid ? grid->n : 0; }

void rvs_spline_grid_destroy(struct rvs_spline_grid **grid)
{
    if (!grid || !*grid)
        return;
    rvs_buffer_release(&(*grid)->geom);
    if ((*grid)->construct)
        clReleaseKernel((*grid)->construct);
    if ((*grid)->eval)
        clReleaseKernel((*grid)->eval);
    if ((*grid)->eval_dv)
        clReleaseKernel((*grid)->eval_dv);
    if ((*grid)->construct_other)
        clReleaseKernel((*grid)->construct_other);
    free(*grid);
    *grid = NULL;
}

/* Knots as spliner.c requires them: n >= 3, finite, increasing, and (log-)uniform. spliner.c
 * compares only the first two steps; every step is compared here, because evaler's index
 * formula is wrong anywhere the step drifts. */
static int grid_validate(const double *xs, size_t n, int log_step)
{
    if (n < 3 || n > INT_MAX / 8) {
        rvs_log(RVS_LOG_ERROR, "spline",
                "a spline grid needs 3 to %d knots, got %zu; check the template wavelength grid",
                INT_MAX / 8, n);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    for (size_t i = 0; i < n; i++)
        if (!isfinite(xs[i]) || (log_step && xs[i] <= 0) || (i > 0 && !(xs[i] > xs[i - 1]))) {
            rvs_log(RVS_LOG_ERROR, "spline",
                    "knot %zu (%.17g) is not finite%s or not above the previous one; the "
                    "template wavelength grid must increase strictly",
                    i, xs[i], log_step ? ", positive" : "");
            return RVS_ERR_INVALID_ARGUMENT;
        }
    double step = log_step ? log(xs[1] / xs[0]) : xs[1] - xs[0];
    for (size_t i = 1; i + 1 < n; i++) {
        double s = log_step ? log(xs[i + 1] / xs[i]) : xs[i + 1] - xs[i];
        if (fabs(s - step) > SPLINE_STEP_TOL) {
            rvs_log(RVS_LOG_ERROR, "spline",
                    "the knots are not uniformly spaced in %s: step %zu is %.17g, step 0 is "
                    "%.17g (tolerance %g, as rvspecfit's spliner.c); resample the templates "
                    "or pass the right grid kind",
                    log_step ? "log(wavelength)" : "wavelength", i, s, step, SPLINE_STEP_TOL);
            return RVS_ERR_INVALID_ARGUMENT;
        }
    }
    return RVS_OK;
}

/* The fir kernel's sections (cl/spline.cl): for the interior knots i = 1..n-2 of the system
 * S M = d (S[i][i] = 2 (h[i-1] + h[i]), S[i][i+1] = h[i]), the left-to-right pivots p[i], the
 * right-to-left pivots q[i], then lw[j] = -h[j-1] / p[j-1] and rw[j] = -h[j-1] / q[j]
 * (j = 2..n-2: the ratios of neighbouring entries of a column of S^-1 on either side of its
 * diagonal) and diag[i] = 1 / (p[i] + q[i] - S[i][i]); zero where a knot has no such entry.
 * In long double: they are computed once per grid. Returns the largest |lw|, |rw|. */
static double fir_sections(size_t n, const double *h, double *lw, double *rw, double *diag)
{
    long double *p = rvs_malloc(2 * n * sizeof *p), *q;
    double ratio = 0;
    if (!p)
        return 1; /* no fir kernel: the caller's bound check fails */
    q = p + n;
    for (size_t i = 0; i < n; i++)
        lw[i] = rw[i] = diag[i] = 0;
    for (size_t i = 1; i + 1 < n; i++) {
        long double a = 2 * ((long double)h[i - 1] + h[i]);
        p[i] = i == 1 ? a : a - (long double)h[i - 1] * h[i - 1] / p[i - 1];
    }
    for (size_t i = n - 2; i >= 1; i--) {
        long double a = 2 * ((long double)h[i - 1] + h[i]);
        q[i] = i == n - 2 ? a : a - (long double)h[i] * h[i] / q[i + 1];
    }
    for (size_t i = 1; i + 1 < n; i++) {
        long double a = 2 * ((long double)h[i - 1] + h[i]);
        diag[i] = (double)(1 / (p[i] + q[i] - a));
        if (i >= 2) {
            lw[i] = (double)(-h[i - 1] / p[i - 1]);
            rw[i] = (double)(-h[i - 1] / q[i]);
            ratio = fmax(ratio, fmax(fabs(lw[i]), fabs(rw[i])));
        }
    }
    free(p);
    return ratio;
}

/* Whether the fir kernel's sums of k terms per side, with ratios at most `ratio`, drop less
 * than u / 8 of the weight (cl/spline.cl): ratio^(k+1) / (1 - ratio) <= u / 8; always true
 * when k terms reach every interior knot (n - 3 <= k). */
static int fir_truncation_ok(size_t n, double ratio, int fp64)
{
    int k = fp64 ? SPLINE_FIR_K64 : SPLINE_FIR_K32;
    double u = fp64 ? 0x1p-53 : 0x1p-24;
    return n - 3 <= (size_t)k || (ratio < 1 && pow(ratio, k + 1) / (1 - ratio) <= u / 8);
}

/* Stores v at element i of an rvs_real array. */
static void put_real(const struct rvs_context *ctx, void *base, size_t i, double v)
{
    if (ctx->use_fp64)
        ((double *)base)[i] = v;
    else
        ((float *)base)[i] = (float)v;
}

/* Loads `name` into grid->construct_other if the device runs `group` work-items of it per
 * work-group; *ok = 0 (and no kernel) otherwise. */
static int load_construction(struct rvs_context *ctx, struct rvs_spline_grid *grid,
                             const char *name, size_t group, int *ok)
{
    int status = RVS_OK;
    size_t wg = 0;
    *ok = 0;
    RVS_TRY(rvs_context_kernel(ctx, "spline", name, &grid->construct_other));
    RVS_CL_TRY(clGetKernelWorkGroupInfo(grid->construct_other, ctx->caps.device,
                                        CL_KERNEL_WORK_GROUP_SIZE, sizeof wg, &wg, NULL));
    *ok = wg >= group;
cleanup:
    if (!*ok && grid->construct_other) {
        clReleaseKernel(grid->construct_other);
        grid->construct_other = NULL;
    }
    return status;
}

/* The construction kernel. Defaults: fir on GPUs, segmented elsewhere (measured:
 * benchmarks/RESULTS.md and the comment below); RVSFIT_CL_SPLINE_KERNEL=serial|segmented|fir
 * overrides it (tests, benchmarks). Each falls back to the next simpler one where it cannot
 * run: fir needs its truncation bound (fir_ok) and 128-item groups, segmented grids of at most
 * 16 x 512 intervals and 16-item groups; serial runs everywhere.
 * History: the segmented kernel (128 work-items per template, 48-row warm-ups) replaced the
 * serial one, whose few thousand 6000-step dependent chains per engine call left ~99 % of an
 * H200 idle (65 % of the engine's time); it still ran at ~200 GB/s there (8.6 s of an 18.5 s
 * engine, 5000 targets), latency-bound. fir has no chain longer than 2 x 29 steps, but does
 * ~4K flops per knot against the sweeps' ~10, so on CPUs segmented stays the fastest (PoCL,
 * 2 cores, 4096 x 6000 knots: fir 1616 / 759 ms fp64 / fp32, segmented 401 / 329 ms, serial
 * 1065 / 751 ms). Session 5: 16 segments of ~375 knots instead of 128 of ~47 (fewer warm-up rows)
 * and no division on the forward chain: segmented 199 -> 94 ms fp64 on the same machine. */
static int choose_construction(struct rvs_context *ctx, struct rvs_spline_grid *grid,
                               double ratio)
{
    const int fir_ok = fir_truncation_ok(grid->n, ratio, ctx->use_fp64);
    int status = RVS_OK, ok = 0, asked = 0;
    size_t n = grid->n;
    enum spline_kind kind = (ctx->caps.type & CL_DEVICE_TYPE_GPU) ? SPLINE_FIR : SPLINE_SEGMENTED;
    const char *choice = getenv("RVSFIT_CL_SPLINE_KERNEL");
    if (choice && *choice) {
        int found = 0;
        for (int k = 0; k < 3; k++)
            if (strcmp(choice, spline_kind_names[k]) == 0)
                kind = (enum spline_kind)k, found = asked = 1;
        if (!found)
            rvs_log(RVS_LOG_WARNING, "spline",
                    "RVSFIT_CL_SPLINE_KERNEL=%s is not serial, segmented or fir; using %s",
                    choice, spline_kind_names[kind]);
    }
    const int level = asked ? RVS_LOG_WARNING : RVS_LOG_DEBUG;
    if (kind == SPLINE_FIR) {
        if (fir_ok)
            RVS_TRY(load_construction(ctx, grid, "rvs_spline_construct_fir", SPLINE_FIR_GROUP,
                                      &ok));
        if (!ok) {
            if (fir_ok)
                rvs_log(level, "spline",
                        "the fir spline construction needs work-groups of %d on %s; using the "
                        "segmented one", SPLINE_FIR_GROUP, ctx->caps.device_name);
            else
                rvs_log(level, "spline",
                        "the fir spline construction would lose precision on this %zu-knot "
                        "grid (steps too coarse: the inverse of its spline system decays by "
                        "only %.4f per knot, too slowly for %d terms; fp64 needs log steps "
                        "below ~0.02); using the segmented one",
                        n, ratio, ctx->use_fp64 ? SPLINE_FIR_K64 : SPLINE_FIR_K32);
            kind = SPLINE_SEGMENTED;
        }
    }
    if (kind == SPLINE_SEGMENTED) {
        if (n - 1 <= (size_t)SPLINE_SEG_GROUP * SPLINE_SEG_MAXLEN)
            RVS_TRY(load_construction(ctx, grid, "rvs_spline_construct_seg", SPLINE_SEG_GROUP,
                                      &ok));
        if (!ok) {
            rvs_log(level, "spline",
                    "the segmented spline construction cannot run on this %zu-knot grid (at "
                    "most %d knots and work-groups of %d); using the serial one", n,
                    SPLINE_SEG_GROUP * SPLINE_SEG_MAXLEN + 1, SPLINE_SEG_GROUP);
            kind = SPLINE_SERIAL;
        }
    }
    grid->kind = kind;
    rvs_log(RVS_LOG_DEBUG, "spline", "%zu-knot grid: %s construction kernel", n,
            spline_kind_names[kind]);
cleanup:
    return status;
}

int rvs_spline_grid_create(struct rvs_context *ctx, const double *xs, size_t n, int log_step,
                           struct rvs_spline_grid **out)
{
    int status = RVS_OK;
    struct rvs_spline_grid *grid = NULL;
    double *x = NULL, *sec = NULL;
    void *host = NULL;
    *out = NULL;
    RVS_TRY(grid_validate(xs, n, log_step));
    grid = rvs_calloc(1, sizeof *grid);
    x = rvs_malloc(n * sizeof *x);
    sec = rvs_calloc(SPLINE_SECTIONS * n, sizeof *sec);
    host = rvs_malloc(SPLINE_SECTIONS * n * rvs_context_real_size(ctx));
    if (!grid || !x || !sec || !host) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    grid->n = n;
    grid->log_step = log_step != 0;
    /* The device sees the knots rounded to rvs_real; the rest is derived in double from those
     * rounded knots, so h matches the xs the evaluation subtracts. */
    for (size_t i = 0; i < n; i++)
        x[i] = ctx->use_fp64 ? xs[i] : (double)(float)xs[i];
    grid->x0 = x[0];
    grid->step = log_step ? log(xs[1] / xs[0]) : xs[1] - xs[0];

    /* spliner.c construct(): h, hinv, diagonal bb[i] = 2 (h[i+1] + h[i]), off-diagonal
     * cc[i] = h[i+1], cc'[i] and the pivots bb[i] - cc[i-1] cc'[i-1] of the symmetric Thomas
     * sweep: all independent of the template values. */
    double *h = sec + SPLINE_H * n, *hinv = sec + SPLINE_HINV * n, *ccd = sec + SPLINE_CCD * n;
    double *piv = sec + SPLINE_PIV * n, *t1 = sec + SPLINE_T1 * n, *t2 = sec + SPLINE_T2 * n;
    const size_t n1 = n - 1, n2 = n - 2, n3 = n - 3;
    memcpy(sec + SPLINE_XS * n, x, n * sizeof *x);
    for (size_t i = 0; i < n1; i++) {
        h[i] = x[i + 1] - x[i];
        hinv[i] = 1. / h[i];
        t1[i] = hinv[i] * (1. / 6);
        t2[i] = h[i] * (1. / 6);
    }
    piv[0] = 2 * (h[1] + h[0]);
    if (n3 > 0)
        ccd[0] = h[1] / piv[0];
    for (size_t i = 1; i < n2; i++) {
        piv[i] = 2 * (h[i + 1] + h[i]) - h[i] * ccd[i - 1];
        if (i < n3)
            ccd[i] = h[i + 1] / piv[i];
    }
    ccd[n3] = 0; /* makes z[N-2] = dd'[N-3] - 0 * z[N-1] exactly spliner.c's z[N-2] = dd'[N-3] */
    double ratio = fir_sections(n, h, sec + SPLINE_LW * n, sec + SPLINE_RW * n,
                                sec + SPLINE_DIAG * n);
    for (size_t i = 0; i < SPLINE_SECTIONS * n; i++)
        put_real(ctx, host, i, sec[i]);

    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, SPLINE_SECTIONS * n * rvs_context_real_size(ctx),
                              host, &grid->geom));
    RVS_TRY(rvs_context_kernel(ctx, "spline", "rvs_spline_construct", &grid->construct));
    RVS_TRY(rvs_context_kernel(ctx, "spline", "rvs_spline_eval", &grid->eval));
    RVS_TRY(rvs_context_kernel(ctx, "spline", "rvs_spline_eval_dv", &grid->eval_dv));
    size_t wg = 0;
    RVS_CL_TRY(clGetKernelWorkGroupInfo(grid->construct, ctx->caps.device,
                                        CL_KERNEL_WORK_GROUP_SIZE, sizeof wg, &wg, NULL));
    if (wg < SPLINE_GROUP) {
        rvs_log(RVS_LOG_ERROR, "spline",
                "%s runs at most %zu work-items of rvs_spline_construct per group; it needs %d",
                ctx->caps.device_name, wg, SPLINE_GROUP);
        status = RVS_ERR_UNSUPPORTED;
        goto cleanup;
    }
    RVS_TRY(choose_construction(ctx, grid, ratio));
    *out = grid;
    grid = NULL;
cleanup:
    rvs_spline_grid_destroy(&grid);
    free(x);
    free(sec);
    free(host);
    return status;
}

size_t rvs_spline_coeffs_bytes(const struct rvs_context *ctx, const struct rvs_spline_grid *grid,
                               size_t ntemplates)
{
    /* A, B, C, D per interval and template (cl/spline.cl's layout) */
    return ntemplates * 4 * (grid->n - 1) * rvs_context_real_size(ctx);
}

int rvs_spline_construct(struct rvs_context *ctx, const struct rvs_spline_grid *grid,
                         cl_mem templates, size_t T, cl_mem coeffs)
{
    int status = RVS_OK;
    if (T == 0)
        return RVS_OK;
    if (T > INT_MAX - SPLINE_GROUP) {
        rvs_log(RVS_LOG_ERROR, "spline", "%zu templates in one launch is too many", T);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    size_t es = rvs_context_real_size(ctx);
    RVS_TRY(rvs_buffer_check_size("spline", templates, T * grid->n * es, "template"));
    RVS_TRY(rvs_buffer_check_size("spline", coeffs, rvs_spline_coeffs_bytes(ctx, grid, T), "spline coefficient"));
    cl_int n = (cl_int)grid->n, nt = (cl_int)T;
    RVS_TRY(rvs_kernel_arg(grid->construct, 0, sizeof(cl_mem), &grid->geom));
    RVS_TRY(rvs_kernel_arg(grid->construct, 1, sizeof n, &n));
    RVS_TRY(rvs_kernel_arg(grid->construct, 2, sizeof(cl_mem), &templates));
    RVS_TRY(rvs_kernel_arg(grid->construct, 3, sizeof nt, &nt));
    RVS_TRY(rvs_kernel_arg(grid->construct, 4, sizeof(cl_mem), &coeffs));
    if (grid->kind != SPLINE_SERIAL) {
        cl_kernel k = grid->construct_other;
        RVS_TRY(rvs_kernel_arg(k, 0, sizeof(cl_mem), &grid->geom));
        RVS_TRY(rvs_kernel_arg(k, 1, sizeof n, &n));
        RVS_TRY(rvs_kernel_arg(k, 2, sizeof(cl_mem), &templates));
        RVS_TRY(rvs_kernel_arg(k, 3, sizeof nt, &nt));
        RVS_TRY(rvs_kernel_arg(k, 4, sizeof(cl_mem), &coeffs));
        if (grid->kind == SPLINE_SEGMENTED) {
            size_t local = SPLINE_SEG_GROUP, global = T * SPLINE_SEG_GROUP;
            RVS_TRY(rvs_kernel_launch_nd(ctx, k, 1, &global, &local));
        } else {
            /* tiles of SPLINE_FIR_GROUP knots overlapping by one (GROUP - 1 intervals each),
             * one group per tile and template, 1-D */
            size_t tiles = (grid->n - 2) / (SPLINE_FIR_GROUP - 1) + 1;
            size_t local = SPLINE_FIR_GROUP, global = T * tiles * SPLINE_FIR_GROUP;
            RVS_TRY(rvs_kernel_launch_nd(ctx, k, 1, &global, &local));
        }
        goto cleanup;
    }
    /* the kernel requires exactly SPLINE_GROUP work-items per group; checked at grid creation */
    size_t local = SPLINE_GROUP, global = (T + SPLINE_GROUP - 1) / SPLINE_GROUP * SPLINE_GROUP;
    RVS_TRY(rvs_kernel_launch_nd(ctx, grid->construct, 1, &global, &local));
cleanup:
    return status;
}

int rvs_spline_points_create(struct rvs_context *ctx, const double *lam, size_t n,
                             cl_mem *points)
{
    int status = RVS_OK;
    size_t es = rvs_context_real_size(ctx);
    void *host = NULL;
    *points = NULL;
    if (!lam || n == 0 || n > INT_MAX) {
        rvs_log(RVS_LOG_ERROR, "spline", "evaluation points: need 1..%d wavelengths", INT_MAX);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    host = rvs_malloc(2 * n * es);
    if (!host)
        return RVS_ERR_NOMEM;
    for (size_t j = 0; j < n; j++) {
        if (!(lam[j] > 0) || !isfinite(lam[j])) {
            rvs_log(RVS_LOG_ERROR, "spline", "evaluation wavelength %zu is %g; wavelengths must "
                    "be positive and finite", j, lam[j]);
            status = RVS_ERR_INVALID_ARGUMENT;
            goto cleanup;
        }
        rvs_real_put(ctx->use_fp64, host, j, lam[j]);
        /* the logarithm of the wavelength the kernel sees, so index and offsets agree */
        rvs_real_put(ctx->use_fp64, host, n + j, log(rvs_real_get(ctx->use_fp64, host, j)));
    }
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, 2 * n * es, host,
                              points));
cleanup:
    free(host);
    return status;
}

/* The arguments rvs_spline_eval and rvs_spline_eval_dv share (0..11), after the size checks. */
static int eval_common_args(struct rvs_context *ctx, const struct rvs_spline_grid *grid,
                            cl_kernel k, cl_mem coeffs, size_t T, cl_mem template_index,
                            cl_mem velocity, size_t E, cl_mem lam, size_t n)
{
    int status = RVS_OK;
    if (T > INT_MAX || E > INT_MAX || n > INT_MAX) {
        rvs_log(RVS_LOG_ERROR, "spline", "evaluation sizes T=%zu E=%zu n=%zu exceed the int range",
                T, E, n);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    size_t es = rvs_context_real_size(ctx);
    RVS_TRY(rvs_buffer_check_size("spline", coeffs, rvs_spline_coeffs_bytes(ctx, grid, T), "spline coefficient"));
    RVS_TRY(rvs_buffer_check_size("spline", template_index, E * sizeof(cl_int), "template index"));
    RVS_TRY(rvs_buffer_check_size("spline", velocity, E * es, "velocity"));
    RVS_TRY(rvs_buffer_check_size("spline", lam, 2 * n * es, "wavelength"));
    cl_int nk = (cl_int)grid->n, logs = grid->log_step, nt = (cl_int)T, ne = (cl_int)E,
           nn = (cl_int)n;
    double x0 = grid->x0, step = grid->step;
    float x0f = (float)x0, stepf = (float)step;
    RVS_TRY(rvs_kernel_arg(k, 0, sizeof(cl_mem), &grid->geom));
    RVS_TRY(rvs_kernel_arg(k, 1, sizeof nk, &nk));
    RVS_TRY(rvs_kernel_arg(k, 2, sizeof logs, &logs));
    RVS_TRY(rvs_kernel_arg(k, 3, es, ctx->use_fp64 ? (const void *)&x0 : (const void *)&x0f));
    RVS_TRY(rvs_kernel_arg(k, 4, es, ctx->use_fp64 ? (const void *)&step : (const void *)&stepf));
    RVS_TRY(rvs_kernel_arg(k, 5, sizeof(cl_mem), &coeffs));
    RVS_TRY(rvs_kernel_arg(k, 6, sizeof nt, &nt));
    RVS_TRY(rvs_kernel_arg(k, 7, sizeof(cl_mem), &template_index));
    RVS_TRY(rvs_kernel_arg(k, 8, sizeof(cl_mem), &velocity));
    RVS_TRY(rvs_kernel_arg(k, 9, sizeof ne, &ne));
    RVS_TRY(rvs_kernel_arg(k, 10, sizeof(cl_mem), &lam));
    RVS_TRY(rvs_kernel_arg(k, 11, sizeof nn, &nn));
cleanup:
    return status;
}

int rvs_spline_eval(struct rvs_context *ctx, const struct rvs_spline_grid *grid, cl_mem coeffs,
                    size_t T, cl_mem template_index, cl_mem velocity, size_t E, cl_mem lam,
                    size_t n, cl_mem out)
{
    int status = RVS_OK;
    if (E == 0 || n == 0)
        return RVS_OK;
    cl_kernel k = grid->eval;
    RVS_TRY(eval_common_args(ctx, grid, k, coeffs, T, template_index, velocity, E, lam, n));
    size_t es = rvs_context_real_size(ctx);
    RVS_TRY(rvs_buffer_check_size("spline", out, E * n * es, "spline output"));
    RVS_TRY(rvs_kernel_arg(k, 12, sizeof(cl_mem), &out));
    RVS_TRY(rvs_kernel_arg(k, 13, SPLINE_DOPPLER_VALUES * es, NULL));
    /* pixels along dimension 0: neighbouring work-items read neighbouring wavelengths and
     * coefficient vectors and write neighbouring outputs; a group's pixels share one request,
     * whose Doppler factor is computed once per group */
    RVS_TRY(rvs_kernel_launch_2d(ctx, k, n, E, SPLINE_EVAL_GROUP, 1));
cleanup:
    return status;
}

int rvs_spline_eval_dv(struct rvs_context *ctx, const struct rvs_spline_grid *grid,
                       cl_mem coeffs, size_t T, cl_mem template_index, cl_mem velocity, size_t E,
                       cl_mem lam, size_t n, cl_mem out, cl_mem dout)
{
    int status = RVS_OK;
    if (E == 0 || n == 0)
        return RVS_OK;
    cl_kernel k = grid->eval_dv;
    RVS_TRY(eval_common_args(ctx, grid, k, coeffs, T, template_index, velocity, E, lam, n));
    size_t es = rvs_context_real_size(ctx);
    if (out)
        RVS_TRY(rvs_buffer_check_size("spline", out, E * n * es, "spline output"));
    RVS_TRY(rvs_buffer_check_size("spline", dout, E * n * es, "spline derivative output"));
    cl_int write_value = out != NULL;
    /* without values the kernel never touches its value argument; a NULL buffer is allowed
     * for a __global pointer argument (OpenCL 1.2, clSetKernelArg) */
    RVS_TRY(rvs_kernel_arg(k, 12, sizeof(cl_mem), &out));
    RVS_TRY(rvs_kernel_arg(k, 13, sizeof write_value, &write_value));
    RVS_TRY(rvs_kernel_arg(k, 14, sizeof(cl_mem), &dout));
    /* rvs_spline_doppler's values and -1 / (c (1 - b^2)) */
    RVS_TRY(rvs_kernel_arg(k, 15, (SPLINE_DOPPLER_VALUES + 1) * es, NULL));
    RVS_TRY(rvs_kernel_launch_2d(ctx, k, n, E, SPLINE_EVAL_GROUP, 1));
cleanup:
    return status;
}

int rvs_spline_coeffs_read(struct rvs_context *ctx, const struct rvs_spline_grid *grid,
                           cl_mem coeffs, size_t T, double *abcd)
{
    int status = RVS_OK;
    size_t count = T * 4 * (grid->n - 1), bytes = rvs_spline_coeffs_bytes(ctx, grid, T);
    void *host = rvs_malloc(bytes ? bytes : 1);
    if (!host)
        return RVS_ERR_NOMEM;
    RVS_TRY(rvs_buffer_read(ctx, coeffs, 0, bytes, host));
    /* the device layout is already [t][i][A,B,C,D]; only the element type changes */
    for (size_t i = 0; i < count; i++)
        abcd[i] = ctx->use_fp64 ? ((double *)host)[i] : ((float *)host)[i];
cleanup:
    free(host);
    return status;
}

/* y = 2 + 3e-3 x on 9 log-uniform knots is reproduced exactly by a natural spline (its second
 * derivatives solve to zero), so the evaluation at v = 150 km/s must give 2 + 3e-3 lam f; a
 * point shifted below the first knot must give NaN. */
int rvs_spline_selftest(struct rvs_context *ctx, char *detail, size_t detail_size)
{
    enum { N = 9, M = 4 };
    int status = RVS_OK;
    struct rvs_spline_grid *grid = NULL;
    cl_mem dy = NULL, dc = NULL, didx = NULL, dv = NULL, dl = NULL, dout = NULL;
    double xs[N], y[N], lam[M] = {5000.0, 5003.0, 5004.0, 5005.5}, v = 150.0;
    double f = sqrt((1 - v / RVS_SPEED_OF_LIGHT_KMS) / (1 + v / RVS_SPEED_OF_LIGHT_KMS));
    unsigned char hy[N * sizeof(double)], hv[sizeof(double)], hout[M * sizeof(double)];
    cl_int idx = 0;
    size_t es = rvs_context_real_size(ctx);
    for (int i = 0; i < N; i++) {
        xs[i] = 5000.0 * exp(1e-4 * i);
        y[i] = 2 + 3e-3 * xs[i];
        put_real(ctx, hy, (size_t)i, y[i]);
    }
    put_real(ctx, hv, 0, v);
    RVS_TRY(rvs_spline_grid_create(ctx, xs, N, 1, &grid));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, N * es, hy, &dy));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, rvs_spline_coeffs_bytes(ctx, grid, 1), NULL,
                              &dc));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, sizeof idx, &idx, &didx));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, es, hv, &dv));
    RVS_TRY(rvs_spline_points_create(ctx, lam, M, &dl));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_WRITE_ONLY, M * es, NULL, &dout));
    RVS_TRY(rvs_spline_construct(ctx, grid, dy, 1, dc));
    RVS_TRY(rvs_spline_eval(ctx, grid, dc, 1, didx, dv, 1, dl, M, dout));
    RVS_TRY(rvs_buffer_read(ctx, dout, 0, M * es, hout));
    /* lam[0] f < xs[0]: outside; the others lie inside. fp32: a few ulp of ~17 */
    double tol = ctx->use_fp64 ? 1e-12 : 1e-5;
    for (int j = 0; j < M; j++) {
        double got = ctx->use_fp64 ? ((double *)hout)[j] : ((float *)hout)[j];
        double want = j == 0 ? NAN : 2 + 3e-3 * lam[j] * f;
        int ok = j == 0 ? isnan(got) : fabs(got - want) <= tol * fabs(want);
        if (!ok) {
            snprintf(detail, detail_size, "linear spline at %.1f A, v = %g km/s gave %.17g, "
                     "expected %.17g", lam[j], v, got, want);
            status = RVS_ERR_SELFTEST;
            break;
        }
    }
cleanup:
    rvs_buffer_release(&dy);
    rvs_buffer_release(&dc);
    rvs_buffer_release(&didx);
    rvs_buffer_release(&dv);
    rvs_buffer_release(&dl);
    rvs_buffer_release(&dout);
    rvs_spline_grid_destroy(&grid);
    return status;
}
