/* eval_device.c: rvsfit-cl-eval's device work: the template spectra of one library arm at many
 * parameter rows, as the fit's engine builds them before the spline onto the data grid (NN, then
 * rotation, then the Doppler shift on the template grid), in as few passes as memory allows. */
#include <config.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/internal.h"
#include "eval.h"


/* Everything of one arm that lives across passes. */
struct arm_device {
    struct rvs_nn *nn;
    struct rvs_rotation *rot;
    struct rvs_spline_grid *grid; /* only when some row has vrad != 0 */
    cl_mem lam;                   /* the template grid (rvs_spline_points_create): where the
                                   * shift evaluates */
    size_t npix, width;
    double lnstep;
};

/* Rows one pass can take: half the device memory, the largest single buffer, 32-bit pixel
 * indices. */
static size_t rows_per_pass(const struct rvs_context *ctx, const struct arm_device *d)
{
    size_t es = rvs_context_real_size(ctx), np = d->npix;
    /* emulator output and one row per request (rotated or copied), parameters, the NN's float
     * work space, the rotation's FFT rows, indices */
    size_t per_row = es * np * 2 + es * (RVS_NN_MAX_INPUTS + 1) + 4 * (2 * d->width + np) +
                     2 * es * (np + 2) + 2 * sizeof(cl_int);
    if (d->grid)
        per_row += rvs_spline_coeffs_bytes(ctx, d->grid, 2) -
                   rvs_spline_coeffs_bytes(ctx, d->grid, 1) + es * np + es + sizeof(cl_int);
    size_t budget = (size_t)((double)ctx->caps.global_mem_size * EVAL_MEMORY_SHARE);
    size_t n = budget / per_row;
    size_t by_alloc = (size_t)ctx->caps.max_alloc_size / (es * np);
    size_t by_index = (size_t)INT32_MAX / np;
    n = n < by_alloc ? n : by_alloc;
    n = n < by_index ? n : by_index;
    return n ? n : 1;
}

/* Parameter vectors ordered by bit pattern, then row: equal ones become adjacent. */
struct theta_key {
    double th[4];
    size_t row;
};

static int theta_key_cmp(const void *a, const void *b)
{
    const struct theta_key *x = a, *y = b;
    int c = memcmp(x->th, y->th, sizeof x->th);
    return c ? c : (x->row > y->row) - (x->row < y->row);
}

/* The distinct (teff, logg, feh, alpha) of rows[0..n) in order of first appearance, as the engine
 * deduplicates them: first[u] is the first row with vector u, uid[i] the vector of row i.
 * Returns their number; when every row differs, uid is the identity. */
static size_t unique_theta(const double *rows, size_t n, struct theta_key *keys, size_t *rep,
                           cl_int *uid, size_t *first)
{
    for (size_t i = 0; i < n; i++) {
        memcpy(keys[i].th, rows + i * NCOL, sizeof keys[i].th);
        keys[i].row = i;
    }
    qsort(keys, n, sizeof *keys, theta_key_cmp);
    for (size_t k = 0; k < n; k++)
        rep[keys[k].row] = k > 0 && memcmp(keys[k].th, keys[k - 1].th, sizeof keys[k].th) == 0
                               ? rep[keys[k - 1].row]
                               : keys[k].row;
    size_t u = 0;
    for (size_t i = 0; i < n; i++) {
        if (rep[i] == i) {
            first[u] = i;
            uid[i] = (cl_int)u++;
        } else
            uid[i] = uid[rep[i]];
    }
    return u;
}

/* One pass: rows[0..n) of the arm into flux[0..n*npix) (float) and warn bits. The NN runs once
 * per distinct parameter vector (one GEMM chain for all of them), one rotation call makes one
 * row per request from those rows, and the rows with vrad != 0 are shifted in one spline pass. */
static int eval_pass(struct rvs_context *ctx, struct arm_device *d, const double *rows, size_t n,
                     float *flux, unsigned *warn)
{
    int status = RVS_OK, fp64 = ctx->use_fp64;
    size_t es = rvs_context_real_size(ctx), np = d->npix, nshift = 0, nu = 0;
    int any_rot = 0;
    cl_mem dparams = NULL, dtempl = NULL, drot = NULL, dcoef = NULL, didx = NULL, dvel = NULL,
           dshift = NULL;
    void *hparams = rvs_malloc(n * 4 * es), *hvel = rvs_malloc(n * es);
    void *hout = rvs_malloc(n * np * es);
    double *vsini = rvs_malloc(n * sizeof *vsini);
    cl_int *idx = rvs_malloc(n * sizeof *idx), *uid = rvs_malloc(n * sizeof *uid);
    size_t *shift_row = rvs_malloc(n * sizeof *shift_row), *rep = rvs_malloc(n * sizeof *rep);
    size_t *first = rvs_malloc(n * sizeof *first);
    struct theta_key *keys = rvs_malloc(n * sizeof *keys);
    if (!hparams || !hvel || !hout || !vsini || !idx || !uid || !shift_row || !rep || !first ||
        !keys) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    nu = unique_theta(rows, n, keys, rep, uid, first);
    /* the parameters as the engine passes them: physical values, mapped on the device */
    for (size_t u = 0; u < nu; u++)
        for (int p = 0; p < 4; p++)
            rvs_real_put(fp64, hparams, u * 4 + p, rows[first[u] * NCOL + (size_t)p]);
    for (size_t i = 0; i < n; i++) {
        const double *r = rows + i * NCOL;
        vsini[i] = r[COL_VSINI];
        any_rot |= r[COL_VSINI] > 0;
        if (r[COL_VRAD] != 0) {
            idx[nshift] = (cl_int)i;
            rvs_real_put(fp64, hvel, nshift, r[COL_VRAD]);
            shift_row[nshift++] = i;
        }
    }
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, nu * 4 * es, hparams,
                              &dparams));
    RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, nu * np * es, NULL, &dtempl));
    RVS_TRY(rvs_nn_forward(ctx, d->nn, dparams, nu, dtempl, RVS_NN_FLUX_REAL));
    cl_mem src = dtempl;
    if (nu < n || any_rot) {
        /* one row per request: rotated, or copied from its parameter vector's emulator row */
        RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, n * np * es, NULL, &drot));
        RVS_TRY(rvs_rotation_apply_rows(ctx, d->rot, dtempl, nu < n ? uid : NULL, nu, n, vsini,
                                        d->lnstep, RVS_ROTATION_EPS, drot));
        src = drot;
    }
    if (nshift > 0) {
        RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, rvs_spline_coeffs_bytes(ctx, d->grid, n),
                                  NULL, &dcoef));
        RVS_TRY(rvs_spline_construct(ctx, d->grid, src, n, dcoef));
        RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                                  nshift * sizeof *idx, idx, &didx));
        RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, nshift * es, hvel,
                                  &dvel));
        RVS_TRY(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, nshift * np * es, NULL, &dshift));
        RVS_TRY(rvs_spline_eval(ctx, d->grid, dcoef, n, didx, dvel, nshift, d->lam, np, dshift));
    }
    RVS_TRY(rvs_buffer_read(ctx, src, 0, n * np * es, hout));
    for (size_t k = 0; k < n * np; k++)
        flux[k] = (float)rvs_real_get(fp64, hout, k);
    if (nshift > 0) {
        RVS_TRY(rvs_buffer_read(ctx, dshift, 0, nshift * np * es, hout));
        for (size_t s = 0; s < nshift; s++)
            for (size_t j = 0; j < np; j++)
                flux[shift_row[s] * np + j] = (float)rvs_real_get(fp64, hout, s * np + j);
    }
    for (size_t i = 0; i < n; i++) {
        const float *f = flux + i * np;
        int edge = 0;
        if (rows[i * NCOL + COL_VRAD] != 0)
            edge = isnan(f[0]) || isnan(f[np - 1]);
        /* edge NaNs are the shift's; anything else non-finite is the emulator's */
        size_t lo = 0, hi = np;
        while (edge && lo < np && isnan(f[lo]))
            lo++;
        while (edge && hi > lo && isnan(f[hi - 1]))
            hi--;
        int bad = 0;
        for (size_t j = lo; j < hi; j++)
            bad |= !isfinite(f[j]);
        warn[i] |= (edge ? EVAL_WARN_EDGE : 0u) | (bad ? EVAL_WARN_NONFINITE : 0u);
    }
    rvs_log(RVS_LOG_DEBUG, MOD, "pass of %zu rows: %zu distinct parameter vectors, %zu shifted",
            n, nu, nshift);
cleanup:
    rvs_buffer_release(&dparams);
    rvs_buffer_release(&dtempl);
    rvs_buffer_release(&drot);
    rvs_buffer_release(&dcoef);
    rvs_buffer_release(&didx);
    rvs_buffer_release(&dvel);
    rvs_buffer_release(&dshift);
    free(hparams);
    free(hvel);
    free(hout);
    free(vsini);
    free(idx);
    free(uid);
    free(shift_row);
    free(rep);
    free(first);
    free(keys);
    return status;
}

/* All rows of one arm: a pass over as many rows as the device holds (normally all of them); an
 * allocation failure halves the pass and retries it. */
int eval_arm_spectra(struct rvs_context *ctx, struct eval_arm *arm, const double *rows, size_t n)
{
    int status = RVS_OK;
    struct arm_device d;
    memset(&d, 0, sizeof d);
    const struct rvs_library_content *c = rvs_library_content(arm->lib);
    d.npix = c->npix;
    d.width = c->nn.width;
    d.lnstep = c->log_step;
    int any_shift = 0;
    for (size_t i = 0; i < n; i++)
        any_shift |= rows[i * NCOL + COL_VRAD] != 0;
    RVS_TRY(rvs_nn_create(ctx, rvs_library_nn_desc(arm->lib), &d.nn));
    RVS_TRY(rvs_rotation_create(ctx, d.npix, &d.rot));
    if (any_shift) {
        RVS_TRY(rvs_spline_grid_create(ctx, c->wave, d.npix, 1, &d.grid));
        RVS_TRY(rvs_spline_points_create(ctx, c->wave, d.npix, &d.lam));
    }
    size_t per = rows_per_pass(ctx, &d), passes = 0;
    for (size_t start = 0; start < n;) {
        size_t m = n - start < per ? n - start : per;
        status = eval_pass(ctx, &d, rows + start * NCOL, m, arm->flux + start * d.npix,
                           arm->warn + start);
        if (status != RVS_OK && rvs_is_alloc_failure(status) && m > 1) {
            per = m / 2;
            rvs_log(RVS_LOG_INFO, MOD, "%s: %zu rows did not fit on the device (%s); trying %zu",
                    c->setup, m, rvs_strerror(status), per);
            status = RVS_OK;
            continue;
        }
        RVS_TRY(status);
        start += m;
        passes++;
    }
    RVS_CL_TRY(clFinish(ctx->queue));
    rvs_log(RVS_LOG_INFO, MOD, "%s: %zu spectra of %zu pixels in %zu device pass%s", c->setup, n,
            d.npix, passes, passes == 1 ? "" : "es");
cleanup:
    rvs_buffer_release(&d.lam);
    rvs_spline_grid_destroy(&d.grid);
    rvs_rotation_destroy(&d.rot);
    rvs_nn_destroy(&d.nn);
    return status;
}
