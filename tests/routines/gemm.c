/* routines/gemm.c: the GEMM dispatch (rvs_gemm_real) as a routine, so the benchmark measures the
 * back end's ceiling at the shapes the kernels use. batch=M rows, n=N columns, m=K inner. */
#include <config.h>

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "routine.h"
#include "testutil.h"

struct gemm_state {
    struct rvs_routine_args args;
    size_t es;
    int is_double;
    double *a, *b, *c_dev, *c_ref;
    void *host;
    cl_mem da, db, dc;
};

static void gemm_destroy(void *p)
{
    struct gemm_state *s = p;
    rvs_buffer_release(&s->da);
    rvs_buffer_release(&s->db);
    rvs_buffer_release(&s->dc);
    free(s->a), free(s->b), free(s->c_dev), free(s->c_ref), free(s->host);
    free(s);
}

static int gemm_setup(struct rvs_context *ctx, const struct rvs_routine_args *args, void **out)
{
    struct gemm_state *s = calloc(1, sizeof *s);
    if (!s)
        return RVS_ERR_NOMEM;
    *out = s;
    s->args = *args;
    s->is_double = ctx->use_fp64;
    s->es = rvs_context_real_size(ctx);
    size_t m = args->batch, n = args->n, k = args->m;
    s->a = malloc(m * k * sizeof(double));
    s->b = malloc(k * n * sizeof(double));
    s->c_dev = calloc(m * n, sizeof(double));
    s->c_ref = calloc(m * n, sizeof(double));
    s->host = malloc((m * k + k * n) * s->es);
    if (!s->a || !s->b || !s->c_dev || !s->c_ref || !s->host)
        return RVS_ERR_NOMEM;
    test_rng_state = 0x1234567ULL + args->seed;
    for (size_t i = 0; i < m * k; i++)
        s->a[i] = test_uniform(-1, 1);
    for (size_t i = 0; i < k * n; i++)
        s->b[i] = test_uniform(-1, 1);
    for (size_t i = 0; i < m * k + k * n; i++) {
        double v = i < m * k ? s->a[i] : s->b[i - m * k];
        if (s->is_double)
            ((double *)s->host)[i] = v;
        else
            ((float *)s->host)[i] = (float)v;
        if (!s->is_double) /* the reference sees the rounded inputs */
            *(i < m * k ? &s->a[i] : &s->b[i - m * k]) = (float)v;
    }
    int status = rvs_buffer_create(ctx, CL_MEM_READ_ONLY, m * k * s->es, s->host, &s->da);
    if (status == RVS_OK)
        status = rvs_buffer_create(ctx, CL_MEM_READ_ONLY, k * n * s->es,
                                   (char *)s->host + m * k * s->es, &s->db);
    if (status == RVS_OK)
        status = rvs_buffer_create(ctx, CL_MEM_READ_WRITE, m * n * s->es, NULL, &s->dc);
    return status;
}

static int gemm_run(struct rvs_context *ctx, void *p)
{
    struct gemm_state *s = p;
    size_t m = s->args.batch, n = s->args.n, k = s->args.m;
    int status = rvs_gemm_real(ctx, RVS_NO_TRANS, RVS_NO_TRANS, m, n, k, 1.0, s->da, 0, k, s->db,
                               0, n, 0.0, s->dc, 0, n);
    if (status == RVS_OK)
        status = clFinish(ctx->queue);
    return status;
}

static int gemm_reference(struct rvs_context *ctx, void *p)
{
    struct gemm_state *s = p;
    size_t m = s->args.batch, n = s->args.n, k = s->args.m;
    void *out = malloc(m * n * s->es);
    if (!out)
        return RVS_ERR_NOMEM;
    int status = rvs_buffer_read(ctx, s->dc, 0, m * n * s->es, out);
    for (size_t i = 0; i < m * n; i++)
        s->c_dev[i] = s->is_double ? ((double *)out)[i] : ((float *)out)[i];
    free(out);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)m, (blasint)n, (blasint)k,
                1.0, s->a, (blasint)k, s->b, (blasint)n, 0.0, s->c_ref, (blasint)n);
    return status;
}

/* absolute error over sqrt(k): inputs are uniform in [-1, 1], so |C| ~ sqrt(k/3) */
static double gemm_max_error(void *p)
{
    struct gemm_state *s = p;
    double e = 0;
    for (size_t i = 0; i < s->args.batch * s->args.n; i++)
        e = fmax(e, fabs(s->c_dev[i] - s->c_ref[i]));
    return e / sqrt((double)s->args.m);
}

static double gemm_flops(const struct rvs_routine_args *a) { return 2.0 * a->batch * a->n * a->m; }

static double gemm_bytes(const struct rvs_routine_args *a)
{
    return (double)a->real_size * ((double)a->batch * a->m + (double)a->m * a->n + (double)a->batch * a->n);
}

static double gemm_evaluations(const struct rvs_routine_args *a) { return (double)a->batch; }

static const struct rvs_routine_args gemm_bench[] = {
    {.batch = 4096, .n = 6000, .m = 200},  /* the NN's last layer at DESI size */
    {.batch = 4096, .n = 256, .m = 256},   /* a hidden layer */
    {.batch = 2048, .n = 2048, .m = 2048}, /* square, for the ceiling */
    {0}};

const struct rvs_routine rvs_routine_gemm = {
    .name = "gemm",
    .args_doc = "batch=M rows, n=N columns, m=K inner",
    .error_kind = "max absolute/sqrt(k)",
    .setup = gemm_setup,
    .run = gemm_run,
    .reference = gemm_reference,
    .max_error = gemm_max_error,
    .flops = gemm_flops,
    .bytes = gemm_bytes,
    .destroy = gemm_destroy,
    .evaluations = gemm_evaluations,
    .bench_cases = gemm_bench,
};
