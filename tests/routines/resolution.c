/* routines/resolution.c: rvs_resolution_apply as a routine (tests/routine.h), with its plain-C
 * reference. batch=E requests, n=pixels, m=ndiag, k=S spectra; param picks the inputs:
 *   0  random R (entries in [-0.1, 1), NaN padding), random models in [-1, 1], requests of one
 *      spectrum adjacent (index e*S/E: runs of E/S, as a velocity scan gives)
 *   1  identity R (data[h][:] = 1, other diagonals 0, NaN padding): out = model exactly
 *   2  random R, impulse models (1 at pixel (e * 7919) mod n): out = one column of R exactly
 *   3  as 0 with the indices shuffled (no two neighbours share a spectrum, in general)
 * The reference is independent of the kernel's loop: it evaluates the dense definition
 * R[i, j] = data[h - (j - i)][j] if |j - i| <= h else 0 for every (i, j) of a row (only the
 * band's j once E n^2 gets large: the other entries are zero by the same definition), summed in
 * long double. Error: max |out - ref| / max |ref| over all requests. */
#include <config.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "routine.h"
#include "testutil.h"

struct res_state {
    size_t E, n, ndiag, S, es;
    float *rdata;
    cl_int *index;
    double *models; /* as the device sees them (rounded to float in fp32 mode) */
    double *dev, *ref;
    void *host; /* models in device precision */
    cl_mem dr, dm, di, dout;
};

/* Used by tests/test_resolution.c as well. */
void rvs_resolution_reference(const float *rdata, size_t ndiag, size_t n, const double *model,
                              double *out, int dense);
double rvs_resolution_check_given(struct rvs_context *ctx, const char *label, const float *rdata,
                                  size_t S, size_t ndiag, size_t n, const cl_int *index,
                                  const double *models, size_t E);

/* R[i, j] straight from the DIA definition, NaN-proof: padding is never addressed. */
static double dense_entry(const float *rdata, size_t ndiag, size_t n, size_t i, size_t j)
{
    long h = (long)(ndiag / 2), d = (long)j - (long)i;
    if (d > h || d < -h)
        return 0.0;
    return rdata[(size_t)(h - d) * n + j];
}

/* out = R model for one spectrum; exported for tests/test_resolution.c. */
void rvs_resolution_reference(const float *rdata, size_t ndiag, size_t n, const double *model,
                              double *out, int dense)
{
    size_t h = ndiag / 2;
    for (size_t i = 0; i < n; i++) {
        size_t j0 = 0, j1 = n;
        if (!dense) {
            j0 = i > h ? i - h : 0;
            j1 = i + h + 1 < n ? i + h + 1 : n;
        }
        long double acc = 0;
        for (size_t j = j0; j < j1; j++) {
            double r = dense_entry(rdata, ndiag, n, i, j);
            if (r != 0.0)
                acc += (long double)r * model[j];
        }
        out[i] = (double)acc;
    }
}

static void res_destroy(void *p)
{
    struct res_state *s = p;
    rvs_buffer_release(&s->dr);
    rvs_buffer_release(&s->dm);
    rvs_buffer_release(&s->di);
    rvs_buffer_release(&s->dout);
    free(s->rdata), free(s->index), free(s->models), free(s->dev), free(s->ref), free(s->host);
    free(s);
}

static struct res_state *res_alloc(struct rvs_context *ctx, size_t E, size_t n, size_t ndiag,
                                   size_t S)
{
    struct res_state *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->E = E, s->n = n, s->ndiag = ndiag, s->S = S, s->es = rvs_context_real_size(ctx);
    s->rdata = malloc(S * ndiag * n * sizeof *s->rdata);
    s->index = malloc((E ? E : 1) * sizeof *s->index);
    s->models = malloc((E * n + 1) * sizeof *s->models);
    s->dev = calloc(E * n + 1, sizeof *s->dev);
    s->ref = calloc(E * n + 1, sizeof *s->ref);
    s->host = malloc((E * n + 1) * s->es);
    if (!s->rdata || !s->index || !s->models || !s->dev || !s->ref || !s->host) {
        res_destroy(s);
        return NULL;
    }
    return s;
}

/* Rounds the models to the device precision and uploads everything. */
static int res_upload(struct rvs_context *ctx, struct res_state *s)
{
    size_t En = s->E * s->n;
    for (size_t i = 0; i < En; i++) {
        if (s->es == sizeof(double)) {
            ((double *)s->host)[i] = s->models[i];
        } else {
            ((float *)s->host)[i] = (float)s->models[i];
            s->models[i] = (float)s->models[i]; /* the reference sees the rounded inputs */
        }
    }
    int status = rvs_buffer_create(ctx, CL_MEM_READ_ONLY,
                                   s->S * s->ndiag * s->n * sizeof(float), s->rdata, &s->dr);
    if (status == RVS_OK)
        status = rvs_buffer_create(ctx, CL_MEM_READ_ONLY, En * s->es, s->host, &s->dm);
    if (status == RVS_OK)
        status = rvs_buffer_create(ctx, CL_MEM_READ_ONLY, s->E * sizeof(cl_int), s->index, &s->di);
    if (status == RVS_OK)
        status = rvs_buffer_create(ctx, CL_MEM_READ_WRITE, En * s->es, NULL, &s->dout);
    return status;
}

static int res_setup(struct rvs_context *ctx, const struct rvs_routine_args *args, void **out)
{
    size_t E = args->batch, n = args->n, ndiag = args->m, S = args->k ? args->k : 1;
    int kind = (int)args->param;
    struct res_state *s = res_alloc(ctx, E, n, ndiag, S);
    *out = s;
    if (!s)
        return RVS_ERR_NOMEM;
    test_rng_state = 0x5eed0f7ULL + args->seed;
    long h = (long)(ndiag / 2);
    for (size_t sp = 0; sp < S; sp++)
        for (size_t k = 0; k < ndiag; k++)
            for (size_t j = 0; j < n; j++) {
                long i = (long)j - h + (long)k; /* the row this entry belongs to */
                float v;
                if (i < 0 || i >= (long)n)
                    v = NAN; /* padding: must never reach the result */
                else if (kind == 1)
                    v = (long)k == h ? 1.0f : 0.0f;
                else
                    v = (float)test_uniform(-0.1, 1.0);
                s->rdata[(sp * ndiag + k) * n + j] = v;
            }
    for (size_t e = 0; e < E; e++)
        s->index[e] = (cl_int)(e * S / E);
    if (kind == 3)
        for (size_t e = E; e > 1; e--) { /* Fisher-Yates */
            size_t r = (size_t)test_uniform(0, (double)e);
            cl_int t = s->index[e - 1];
            s->index[e - 1] = s->index[r], s->index[r] = t;
        }
    for (size_t e = 0; e < E; e++)
        for (size_t i = 0; i < n; i++)
            s->models[e * n + i] = kind == 2 ? (i == (e * 7919) % n ? 1.0 : 0.0)
                                             : test_uniform(-1, 1);
    return res_upload(ctx, s);
}

static int res_run(struct rvs_context *ctx, void *p)
{
    struct res_state *s = p;
    int status = rvs_resolution_apply(ctx, s->dr, s->S, s->ndiag, s->n, s->dm, s->di, s->E,
                                      s->dout);
    if (status == RVS_OK)
        status = clFinish(ctx->queue);
    return status;
}

static int res_reference(struct rvs_context *ctx, void *p)
{
    struct res_state *s = p;
    size_t En = s->E * s->n;
    int status = rvs_buffer_read(ctx, s->dout, 0, En * s->es, s->host);
    for (size_t i = 0; i < En; i++)
        s->dev[i] = s->es == sizeof(double) ? ((double *)s->host)[i] : ((float *)s->host)[i];
    int dense = (double)s->E * (double)s->n * (double)s->n <= 2e7;
    for (size_t e = 0; e < s->E; e++)
        rvs_resolution_reference(s->rdata + (size_t)s->index[e] * s->ndiag * s->n, s->ndiag,
                                 s->n, s->models + e * s->n, s->ref + e * s->n, dense);
    return status;
}

static double res_max_error(void *p)
{
    struct res_state *s = p;
    double err = 0, scale = 0;
    for (size_t i = 0; i < s->E * s->n; i++) {
        if (!isfinite(s->dev[i]))
            return INFINITY;
        err = fmax(err, fabs(s->dev[i] - s->ref[i]));
        scale = fmax(scale, fabs(s->ref[i]));
    }
    return scale > 0 ? err / scale : err;
}

/* For tests/test_resolution.c: a case with given inputs (real DESI matrices) through the same
 * upload / run / reference / error steps; prints one line like rvs_routine_check. */
double rvs_resolution_check_given(struct rvs_context *ctx, const char *label, const float *rdata,
                                  size_t S, size_t ndiag, size_t n, const cl_int *index,
                                  const double *models, size_t E)
{
    struct res_state *s = res_alloc(ctx, E, n, ndiag, S);
    if (!s)
        return -1.0;
    memcpy(s->rdata, rdata, S * ndiag * n * sizeof *rdata);
    memcpy(s->index, index, E * sizeof *index);
    memcpy(s->models, models, E * n * sizeof *models);
    int status = res_upload(ctx, s);
    if (status == RVS_OK)
        status = res_run(ctx, s);
    if (status == RVS_OK)
        status = res_reference(ctx, s);
    double err = status == RVS_OK ? res_max_error(s) : -1.0;
    res_destroy(s);
    if (status != RVS_OK)
        printf("%-22s %s %s: FAILED TO RUN: %s\n", "resolution", ctx->use_fp64 ? "fp64" : "fp32",
               label, rvs_strerror(status));
    else
        printf("%-22s %s %s batch=%zu n=%zu m=%zu k=%zu: max relative error %.3e\n", "resolution",
               ctx->use_fp64 ? "fp64" : "fp32", label, E, n, ndiag, S, err);
    fflush(stdout);
    return err;
}

static double res_flops(const struct rvs_routine_args *a)
{
    return 2.0 * (double)a->batch * (double)a->n * (double)a->m;
}

/* Ideal traffic: models in, results out, indices, and each spectrum's R block once. */
static double res_bytes(const struct rvs_routine_args *a)
{
    return 2.0 * (double)a->real_size * (double)a->batch * (double)a->n + 4.0 * (double)a->batch +
           4.0 * (double)(a->k ? a->k : 1) * (double)a->m * (double)a->n;
}

static double res_evaluations(const struct rvs_routine_args *a) { return (double)a->batch; }

static const struct rvs_routine_args res_bench[] = {
    {.batch = 4096, .n = 2881, .m = 11, .k = 1024}, /* z arm: 4 requests per spectrum */
    {.batch = 4096, .n = 2751, .m = 11, .k = 1024}, /* b arm */
    {.batch = 4096, .n = 2326, .m = 11, .k = 1024}, /* r arm */
    {.batch = 4096, .n = 2881, .m = 11, .k = 1024, .param = 3}, /* z, requests shuffled */
    {0}};

const struct rvs_routine rvs_routine_resolution = {
    .name = "resolution",
    .args_doc = "batch=E requests, n=pixels, m=ndiag, k=S spectra, param=input kind",
    .error_kind = "max relative",
    .setup = res_setup,
    .run = res_run,
    .reference = res_reference,
    .max_error = res_max_error,
    .flops = res_flops,
    .bytes = res_bytes,
    .destroy = res_destroy,
    .evaluations = res_evaluations,
    .bench_cases = res_bench,
};
