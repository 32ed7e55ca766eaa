/* test_nn.c: the NN emulator (src/engine/nn.c) against the unfolded float32 OpenBLAS reference of
 * tests/routines/nn.c, in the default context (fp64 where the device has it) and with forced
 * fp32: batches E = 1..4099, npix 1..6000, nlayers 0..2 with and without BatchNorm, both
 * outputs, an impulse pc_layer and the +-300 clip edge. Also the parameter mapping alone, work
 * space growth and reuse on one network, the self-test row, and rejection of bad descriptions
 * and calls.
 * Tolerance: RVS_TOL_NN_FP32_REL on log-flux, relative to max(1, max |log-flux|); flux is
 * compared after exp on both sides with the same bound on its relative error (see the routine).
 * The mapping, relative to max(1, |input|): one float ulp (FLT_EPSILON) with fp64, where the
 * result is rounded once from double like the reference's; RVS_TOL_FP32_REL in fp32. */
#include <config.h>

#include <float.h>
#include <string.h>

#include "routine.h"
#include "testutil.h"
#include "tolerances.h"

extern const struct rvs_routine rvs_routine_nn;

/* from tests/routines/nn.c */
struct rvs_nn_ref_net;
struct rvs_nn_ref_net *rvs_nn_ref_net_create(size_t nlayers, size_t width, size_t npc,
                                             size_t npix, int flags, unsigned seed);
void rvs_nn_ref_net_free(struct rvs_nn_ref_net *net);
void rvs_nn_ref_params(double *params, size_t count, unsigned seed);
void rvs_nn_ref_map(const struct rvs_nn_desc *d, const double *params, size_t count,
                    float *inputs);
int rvs_nn_ref_forward(const struct rvs_nn_desc *d, const double *params, size_t count,
                       float *logflux);
/* the description is the first member of the net */
#define NET_DESC(net) ((struct rvs_nn_desc *)(void *)(net))

enum { BN = 4, LOGFLUX = 8, IMPULSE = 16, CLIP = 32 };

static const struct rvs_routine_args cases[] = {
    {.batch = 1, .n = 7, .m = 16, .k = 8, .param = 0, .seed = 1},
    {.batch = 1, .n = 1, .m = 7, .k = 3, .param = 1 + BN + LOGFLUX, .seed = 2},
    {.batch = 7, .n = 1, .m = 7, .k = 5, .param = 1 + BN, .seed = 3},
    {.batch = 7, .n = 7, .m = 33, .k = 13, .param = 2 + LOGFLUX, .seed = 4},
    {.batch = 64, .n = 1000, .m = 64, .k = 20, .param = 2 + BN, .seed = 5},
    {.batch = 64, .n = 1000, .m = 64, .k = 20, .param = 2 + BN + LOGFLUX, .seed = 5},
    {.batch = 1000, .n = 1000, .m = 256, .k = 200, .param = 2 + BN + LOGFLUX, .seed = 6},
    {.batch = 1000, .n = 2751, .m = 100, .k = 50, .param = 2, .seed = 7},
    {.batch = 1000, .n = 7, .m = 64, .k = 20, .param = 0 + BN, .seed = 8},
    {.batch = 4099, .n = 6000, .m = 256, .k = 200, .param = 2 + BN, .seed = 9},
    {.batch = 4099, .n = 7, .m = 256, .k = 200, .param = 1 + BN + LOGFLUX, .seed = 10},
    {.batch = 64, .n = 1000, .m = 64, .k = 20, .param = 1 + BN + IMPULSE + LOGFLUX, .seed = 11},
    {.batch = 64, .n = 1000, .m = 64, .k = 20, .param = 1 + BN + IMPULSE, .seed = 12},
    {.batch = 64, .n = 6000, .m = 64, .k = 20, .param = 2 + BN + CLIP, .seed = 13},
    {.batch = 7, .n = 1, .m = 16, .k = 8, .param = 2 + BN + CLIP, .seed = 14},
    {.batch = 64, .n = 2881, .m = 64, .k = 20, .param = 2 + BN + CLIP + LOGFLUX, .seed = 15},
};

static void run_cases(struct rvs_context *ctx)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double err = rvs_routine_check(ctx, &rvs_routine_nn, &cases[i]);
        CHECK(err >= 0 && err <= RVS_TOL_NN_FP32_REL,
              "nn %s case %zu (E=%zu npix=%zu width=%zu npc=%zu flags=%g): error %.3g > %.1g",
              ctx->use_fp64 ? "fp64" : "fp32", i, cases[i].batch, cases[i].n, cases[i].m,
              cases[i].k, cases[i].param, err, RVS_TOL_NN_FP32_REL);
    }
}

/* Uploads E parameter vectors in the context's rvs_real; `params` is rounded to what the
 * device sees. */
static cl_mem upload_params(struct rvs_context *ctx, double *params, size_t count)
{
    size_t es = rvs_context_real_size(ctx), n = count * 4;
    void *host = malloc(n * es);
    for (size_t i = 0; i < n; i++) {
        if (es == sizeof(float))
            params[i] = ((float *)host)[i] = (float)params[i];
        else
            ((double *)host)[i] = params[i];
    }
    cl_mem buf = NULL;
    int status = rvs_buffer_create(ctx, CL_MEM_READ_ONLY, n * es, host, &buf);
    CHECK(status == RVS_OK, "parameter upload: %s", rvs_strerror(status));
    free(host);
    return buf;
}

/* rvs_nn_map alone, with the extremes of the parameter ranges appended. */
static void check_map(struct rvs_context *ctx)
{
    enum { E = 1003 };
    struct rvs_nn_ref_net *net = rvs_nn_ref_net_create(1, 8, 4, 5, BN, 21);
    struct rvs_nn *nn = NULL;
    double *params = malloc(E * 4 * sizeof *params);
    float got[E * 4], want[E * 4];
    rvs_nn_ref_params(params, E - 3, 21);
    const double edges[12] = {3000, 0, -4, -0.4, 12000, 5, 1, 1, 5999.99, 2.5, -1.5, 0.3};
    memcpy(params + (E - 3) * 4, edges, sizeof edges);
    CHECK(rvs_nn_create(ctx, NET_DESC(net), &nn) == RVS_OK, "create for the mapping test");
    cl_mem dp = upload_params(ctx, params, E), din = NULL;
    CHECK(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, sizeof got, NULL, &din) == RVS_OK, "alloc");
    int status = rvs_nn_map(ctx, nn, dp, E, din);
    CHECK(status == RVS_OK, "rvs_nn_map: %s", rvs_strerror(status));
    CHECK(rvs_buffer_read(ctx, din, 0, sizeof got, got) == RVS_OK, "read back");
    rvs_nn_ref_map(NET_DESC(net), params, E, want);
    double err = 0, ulps = 0;
    for (size_t i = 0; i < E * 4; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        err = fmax(err, d / fmax(1.0, fabs((double)want[i])));
        ulps = fmax(ulps, d / (FLT_EPSILON * fmax(1.0, fabs((double)want[i]))));
        if (isnan(d))
            err = INFINITY;
    }
    printf("nn map %s E=%d: max error %.3e (%.1f float ulp)\n", ctx->use_fp64 ? "fp64" : "fp32",
           E, err, ulps);
    double tol = ctx->use_fp64 ? FLT_EPSILON : RVS_TOL_FP32_REL;
    CHECK(err <= tol, "mapping error %.3g > %.3g", err, tol);
    rvs_buffer_release(&dp);
    rvs_buffer_release(&din);
    rvs_nn_destroy(&nn);
    rvs_nn_ref_net_free(net);
    free(params);
}

/* One network, batches 7, 1000, 7, 1000: the work space grows once and is reused. */
static void check_reuse(struct rvs_context *ctx)
{
    enum { NPIX = 301, EMAX = 1000 };
    struct rvs_nn_ref_net *net = rvs_nn_ref_net_create(2, 48, 12, NPIX, BN, 31);
    struct rvs_nn *nn = NULL;
    double *params = malloc(EMAX * 4 * sizeof *params);
    float *got = malloc(EMAX * NPIX * sizeof *got), *want = malloc(EMAX * NPIX * sizeof *want);
    rvs_nn_ref_params(params, EMAX, 31);
    CHECK(rvs_nn_create(ctx, NET_DESC(net), &nn) == RVS_OK, "create for the reuse test");
    cl_mem dp = upload_params(ctx, params, EMAX), dout = NULL;
    CHECK(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, EMAX * NPIX * sizeof *got, NULL, &dout) ==
              RVS_OK,
          "alloc");
    CHECK(rvs_nn_ref_forward(NET_DESC(net), params, EMAX, want) == RVS_OK, "reference");
    static const size_t batches[4] = {7, EMAX, 7, EMAX};
    for (int t = 0; t < 4; t++) {
        size_t E = batches[t];
        int status = rvs_nn_forward(ctx, nn, dp, E, dout, RVS_NN_LOGFLUX_F32);
        CHECK(status == RVS_OK, "forward E=%zu: %s", E, rvs_strerror(status));
        CHECK(rvs_buffer_read(ctx, dout, 0, E * NPIX * sizeof *got, got) == RVS_OK, "read");
        double scale = 1, err = 0;
        for (size_t i = 0; i < E * NPIX; i++)
            scale = fmax(scale, fabs((double)want[i]));
        for (size_t i = 0; i < E * NPIX; i++) {
            double d = fabs((double)got[i] - (double)want[i]) / scale;
            err = isnan(d) ? INFINITY : fmax(err, d);
        }
        printf("nn reuse %s E=%zu: max error %.3e\n", ctx->use_fp64 ? "fp64" : "fp32", E, err);
        CHECK(err <= RVS_TOL_NN_FP32_REL, "reuse E=%zu: error %.3g", E, err);
    }
    rvs_buffer_release(&dp);
    rvs_buffer_release(&dout);
    rvs_nn_destroy(&nn);
    rvs_nn_ref_net_free(net);
    free(params), free(got), free(want);
}

/* Bad descriptions and calls are refused with RVS_ERR_INVALID_ARGUMENT. */
static void check_rejects(struct rvs_context *ctx)
{
    int level = rvs_log_get_level();
    rvs_log_set_level(RVS_LOG_CRITICAL + 1); /* the expected errors would only be noise */
    struct rvs_nn_ref_net *net = rvs_nn_ref_net_create(2, 8, 4, 5, BN, 41);
    struct rvs_nn_desc *d = NET_DESC(net), bad;
    struct rvs_nn *nn = NULL;
    float nan_w[8 * 8], neg_var[8];

    bad = *d, bad.npix = 0;
    CHECK(rvs_nn_create(ctx, &bad, &nn) == RVS_ERR_INVALID_ARGUMENT && !nn, "npix 0 accepted");
    bad = *d, bad.nlayers = RVS_NN_MAX_HIDDEN + 1;
    CHECK(rvs_nn_create(ctx, &bad, &nn) == RVS_ERR_INVALID_ARGUMENT, "too many layers accepted");
    bad = *d, bad.indim = RVS_NN_MAX_INPUTS + 1;
    CHECK(rvs_nn_create(ctx, &bad, &nn) == RVS_ERR_INVALID_ARGUMENT, "too many inputs accepted");
    memcpy(nan_w, d->lin[1].weight, sizeof nan_w);
    nan_w[17] = NAN;
    bad = *d, bad.lin[1].weight = nan_w;
    CHECK(rvs_nn_create(ctx, &bad, &nn) == RVS_ERR_INVALID_ARGUMENT, "NaN weight accepted");
    bad = *d, bad.lin[3].bias = NULL;
    CHECK(rvs_nn_create(ctx, &bad, &nn) == RVS_ERR_INVALID_ARGUMENT, "missing bias accepted");
    memcpy(neg_var, d->bn[2].running_var, sizeof neg_var);
    neg_var[3] = -1.0f;
    bad = *d, bad.bn[2].running_var = neg_var;
    CHECK(rvs_nn_create(ctx, &bad, &nn) == RVS_ERR_INVALID_ARGUMENT, "var + eps < 0 accepted");
    bad.with_batchnorm = 0; /* then the BatchNorm arrays are not read */
    CHECK(rvs_nn_create(ctx, &bad, &nn) == RVS_OK, "BatchNorm read without with_batchnorm");
    rvs_nn_destroy(&nn);
    bad = *d, bad.map_scale[2] = 0;
    CHECK(rvs_nn_create(ctx, &bad, &nn) == RVS_ERR_INVALID_ARGUMENT, "S = 0 accepted");
    bad = *d, bad.map_center[0] = 400; /* 10^400 does not exist */
    CHECK(rvs_nn_create(ctx, &bad, &nn) == RVS_ERR_INVALID_ARGUMENT, "M = 400 (log) accepted");

    CHECK(rvs_nn_create(ctx, d, &nn) == RVS_OK, "good description refused");
    double params[3 * 4];
    rvs_nn_ref_params(params, 3, 41);
    cl_mem dp = upload_params(ctx, params, 3), small = NULL;
    CHECK(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, 3 * 5 * sizeof(float), NULL, &small) ==
              RVS_OK,
          "alloc");
    CHECK(rvs_nn_forward(ctx, nn, dp, 3, small, RVS_NN_LOGFLUX_F32) == RVS_OK, "fitting out");
    CHECK(rvs_nn_forward(ctx, nn, dp, 4, small, RVS_NN_LOGFLUX_F32) == RVS_ERR_INVALID_ARGUMENT,
          "too many parameter vectors for the buffers accepted");
    if (ctx->use_fp64)
        CHECK(rvs_nn_forward(ctx, nn, dp, 3, small, RVS_NN_FLUX_REAL) ==
                  RVS_ERR_INVALID_ARGUMENT,
              "float-sized output accepted for double flux");
    CHECK(rvs_nn_forward(ctx, nn, dp, 3, small, (enum rvs_nn_output)7) ==
              RVS_ERR_INVALID_ARGUMENT,
          "unknown output kind accepted");
    CHECK(rvs_nn_forward(ctx, nn, dp, 0, small, RVS_NN_FLUX_REAL) == RVS_OK, "E = 0 refused");
    CHECK(clFinish(ctx->queue) == CL_SUCCESS, "queue");
    rvs_buffer_release(&dp);
    rvs_buffer_release(&small);
    rvs_nn_destroy(&nn);
    rvs_nn_destroy(&nn); /* NULL is fine */
    rvs_nn_ref_net_free(net);
    rvs_log_set_level(level);
    printf("nn %s: bad descriptions and calls refused\n", ctx->use_fp64 ? "fp64" : "fp32");
}

static void run_context(int force_fp32)
{
    if (force_fp32)
        setenv("RVSFIT_CL_FP32", "1", 1);
    struct rvs_context *ctx = test_context(1);
    char detail[256] = "";
    int status = rvs_nn_selftest(ctx, detail, sizeof detail);
    CHECK(status == RVS_OK, "self-test: %s %s", rvs_strerror(status), detail);
    check_rejects(ctx);
    check_map(ctx);
    check_reuse(ctx);
    run_cases(ctx);
    rvs_context_destroy(&ctx);
    unsetenv("RVSFIT_CL_FP32");
}

int main(void)
{
    run_context(0);
    run_context(1);
    return test_finish("test_nn");
}
