/* test_counters.c: the context's device-work counters (rvs_context_counters, issue #7) are exact
 * for known sequences, and the evaluation engine's device commands per call do not grow with the
 * number of requests (the batching invariant that --profile and benchmarks/bench-e2e report).
 *
 * Exact counts: N launches of a tiny kernel through each launch helper add N kernel launches and
 * nothing else; buffers made and released bring the held bytes back and leave the peak above;
 * writes, reads, fills, creation from host data add their bytes; one GEMM adds one GEMM call (on
 * the OpenBLAS path three maps of the three buffers' sizes; on CLBlast no map); one FFT-path
 * rotation adds 3 clFFT transforms and 4 kernel launches, and its plans' work space is given
 * back when the rotation is destroyed; reset zeroes the counts and restarts the peaks; a buffer
 * the library did not make and buffers released after their context is gone change nothing.
 *
 * Invariant (src/engine/engine.c): one engine call makes one device pass per chunk, and a pass issues a
 * fixed sequence per arm (uploads, NN: 2 x (layers + 2) + 1 launches and layers + 2 GEMMs,
 * [gather], [rotation], spline construct + evaluate, [resolution], chi^2: 4-7 launches and 2-3
 * GEMMs, downloads) whatever the number of requests, as long as the pass has the same optional
 * stages. So: E = 10 and E = 1000 requests (all rotated, resolution matrices on, one chunk) give
 * exactly the same commands and transfers, and E = 1000 cut into chunks of 100 gives exactly 10x.
 * What does grow with the batch is the number of engine calls a fitter makes per batch; that is
 * checked at the command line by tests/test_profile.sh. Takes ~15 s on PoCL here (two CLBlast
 * and two clFFT kernel builds). */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "routine.h"
#include "rvsfit/engine.h"
#include "rvsfit/rotation.h"
#include "testutil.h"

typedef struct rvs_context_counters counters;

static counters get(struct rvs_context *ctx)
{
    counters c;
    rvs_context_counters_get(ctx, &c);
    return c;
}

/* The difference of two snapshots' counts (memory fields: b's). */
static counters diff(const counters *b, const counters *a)
{
    counters d = *b;
    d.kernel_launches -= a->kernel_launches;
    d.gemm_calls -= a->gemm_calls;
    d.fft_transforms -= a->fft_transforms;
    d.fills -= a->fills;
    d.copies -= a->copies;
    d.writes -= a->writes;
    d.reads -= a->reads;
    d.maps -= a->maps;
    d.bytes_to_device -= a->bytes_to_device;
    d.bytes_from_device -= a->bytes_from_device;
    d.bytes_mapped -= a->bytes_mapped;
    d.buffers_created -= a->buffers_created;
    d.buffers_released -= a->buffers_released;
    return d;
}

/* Counts of d (a diff) other than the ones named in `allowed` (a bit per field, below). */
enum {
    F_LAUNCH = 1, F_GEMM = 2, F_FFT = 4, F_FILL = 8, F_WRITE = 16, F_READ = 32, F_MAP = 64,
    F_BUF = 128
};
static int only(const counters *d, unsigned allowed)
{
    int ok = 1;
    ok &= (allowed & F_LAUNCH) || d->kernel_launches == 0;
    ok &= (allowed & F_GEMM) || d->gemm_calls == 0;
    ok &= (allowed & F_FFT) || d->fft_transforms == 0;
    ok &= (allowed & F_FILL) || d->fills == 0;
    ok &= (allowed & F_WRITE) || (d->writes == 0 && d->bytes_to_device == 0);
    ok &= (allowed & F_READ) || (d->reads == 0 && d->bytes_from_device == 0);
    ok &= (allowed & F_MAP) || (d->maps == 0 && d->bytes_mapped == 0);
    ok &= (allowed & F_BUF) || (d->buffers_created == 0 && d->buffers_released == 0);
    return ok;
}

static void print_counts(const char *what, const counters *d)
{
    printf("  %s: launches %llu, GEMM %llu, FFT %llu, fills %llu, writes %llu (%llu B), reads "
           "%llu (%llu B), maps %llu (%llu B), buffers +%llu -%llu, held %zu B, peak %zu B, "
           "peak with work space %zu B\n",
           what, d->kernel_launches, d->gemm_calls, d->fft_transforms, d->fills, d->writes,
           d->bytes_to_device, d->reads, d->bytes_from_device, d->maps, d->bytes_mapped,
           d->buffers_created, d->buffers_released, d->mem_current, d->mem_peak,
           d->mem_peak_total);
}

/* ---------------------------------------------------------------- exact counts */

static void check_launches(struct rvs_context *ctx)
{
    enum { N = 1000 };
    cl_kernel k = NULL;
    cl_mem dx = NULL, dy = NULL;
    float x[N], a = 2.0f;
    cl_uint n = N;
    for (int i = 0; i < N; i++)
        x[i] = (float)i;
    CHECK(rvs_context_kernel(ctx, "selftest", "rvs_selftest_axpy", &k) == RVS_OK, "kernel");
    CHECK(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, sizeof x, x, &dx) == RVS_OK, "buffer x");
    CHECK(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, sizeof x, x, &dy) == RVS_OK, "buffer y");
    if (!k || !dx || !dy)
        goto done;
    rvs_kernel_arg(k, 0, sizeof a, &a);
    rvs_kernel_arg(k, 1, sizeof dx, &dx);
    rvs_kernel_arg(k, 2, sizeof dy, &dy);
    rvs_kernel_arg(k, 3, sizeof n, &n);
    counters c0 = get(ctx);
    int ok = 1;
    for (int i = 0; i < 7; i++)
        ok &= rvs_kernel_launch_1d(ctx, k, N, 0) == RVS_OK;
    for (int i = 0; i < 3; i++)
        ok &= rvs_kernel_launch_2d(ctx, k, N, 1, 32, 1) == RVS_OK;
    size_t global = 1024, local = 64;
    ok &= rvs_kernel_launch_nd(ctx, k, 1, &global, &local) == RVS_OK;
    ok &= rvs_kernel_launch_1d(ctx, k, 0, 0) == RVS_OK; /* nothing to do: no launch */
    CHECK(ok && clFinish(ctx->queue) == CL_SUCCESS, "launches failed");
    counters c1 = get(ctx), d = diff(&c1, &c0);
    print_counts("11 launches", &d);
    CHECK(d.kernel_launches == 11 && only(&d, F_LAUNCH), "11 launches counted as %llu (or "
          "something else moved)", d.kernel_launches);
    CHECK(rvs_context_counters_commands(&d) == 11, "commands %llu, want 11",
          rvs_context_counters_commands(&d));
done:
    if (k)
        clReleaseKernel(k);
    rvs_buffer_release(&dx);
    rvs_buffer_release(&dy);
}

static void check_buffers(struct rvs_context *ctx)
{
    enum { BIG = 1 << 20, SMALL = 4096 };
    static unsigned char host[SMALL];
    unsigned char back[SMALL];
    cl_mem big = NULL, small = NULL;
    memset(host, 7, sizeof host);
    counters c0 = get(ctx);
    CHECK(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, BIG, NULL, &big) == RVS_OK, "big buffer");
    CHECK(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, SMALL, host, &small) == RVS_OK,
          "small buffer");
    if (!big || !small)
        goto done;
    counters c1 = get(ctx), d = diff(&c1, &c0);
    print_counts("two buffers made", &d);
    CHECK(d.buffers_created == 2 && d.buffers_released == 0 &&
              d.mem_current == c0.mem_current + BIG + SMALL && d.mem_peak >= d.mem_current &&
              d.mem_peak_total >= d.mem_peak && d.bytes_to_device == SMALL && d.writes == 0 &&
              only(&d, F_BUF | F_WRITE),
          "two buffers: held %zu (was %zu), peak %zu, %llu bytes to the device", d.mem_current,
          c0.mem_current, d.mem_peak, d.bytes_to_device);

    unsigned pattern = 0x01020304u;
    int ok = rvs_buffer_write(ctx, big, 100, 1000, host) == RVS_OK;
    ok &= rvs_buffer_write_async(ctx, big, 0, 24, host) == RVS_OK;
    ok &= rvs_buffer_fill(ctx, big, &pattern, sizeof pattern, 4096, 8192) == RVS_OK;
    ok &= rvs_buffer_read(ctx, small, 0, 512, back) == RVS_OK;
    ok &= rvs_buffer_write(ctx, big, 0, 0, host) == RVS_OK; /* empty: not a command */
    CHECK(ok, "transfers failed");
    counters c2 = get(ctx);
    d = diff(&c2, &c1);
    print_counts("2 writes, a fill, a read", &d);
    CHECK(d.writes == 2 && d.bytes_to_device == 1024 && d.fills == 1 && d.reads == 1 &&
              d.bytes_from_device == 512 && only(&d, F_WRITE | F_READ | F_FILL),
          "transfers: %llu writes (%llu B), %llu fills, %llu reads (%llu B)", d.writes,
          d.bytes_to_device, d.fills, d.reads, d.bytes_from_device);

    rvs_buffer_release(&big);
    rvs_buffer_release(&small);
    counters c3 = get(ctx);
    d = diff(&c3, &c2);
    CHECK(d.buffers_released == 2 && c3.mem_current == c0.mem_current &&
              c3.mem_peak >= c0.mem_current + BIG + SMALL,
          "after release: held %zu (want %zu), peak %zu", c3.mem_current, c0.mem_current,
          c3.mem_peak);

    /* a buffer the library did not make: released without being counted */
    cl_int err;
    cl_mem foreign = clCreateBuffer(ctx->context, CL_MEM_READ_WRITE, SMALL, NULL, &err);
    CHECK(err == CL_SUCCESS, "clCreateBuffer");
    rvs_buffer_release(&foreign);
    counters c4 = get(ctx);
    d = diff(&c4, &c3);
    CHECK(only(&d, 0) && c4.mem_current == c3.mem_current && foreign == NULL,
          "a foreign buffer changed the counts");

    /* reset: counts zero, peaks restart from what is held now */
    CHECK(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, SMALL, NULL, &small) == RVS_OK, "buffer");
    rvs_context_counters_reset(ctx);
    counters c5 = get(ctx);
    CHECK(only(&c5, 0) && c5.mem_current == c3.mem_current + SMALL &&
              c5.mem_peak == c5.mem_current && c5.mem_peak_total == c5.mem_current + c5.fft_work &&
              c5.gemm_work_max == 0,
          "after reset: held %zu, peak %zu, total peak %zu", c5.mem_current, c5.mem_peak,
          c5.mem_peak_total);
done:
    rvs_buffer_release(&big);
    rvs_buffer_release(&small);
}

static void check_gemm(struct rvs_context *ctx)
{
    /* C (3x4) = A (3x2) B (2x4), each in its own buffer */
    const double a[6] = {1, 2, 3, 4, 5, 6}, b[8] = {1, 0, 2, 1, 0, 1, 1, 2};
    double c[12] = {0};
    float af[6], bf[8], cf[12] = {0};
    for (int i = 0; i < 6; i++)
        af[i] = (float)a[i];
    for (int i = 0; i < 8; i++)
        bf[i] = (float)b[i];
    int dbl = ctx->caps.has_fp64;
    size_t es = dbl ? sizeof(double) : sizeof(float);
    cl_mem da = NULL, db = NULL, dc = NULL;
    CHECK(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, 6 * es, dbl ? (void *)a : af, &da) == RVS_OK &&
              rvs_buffer_create(ctx, CL_MEM_READ_WRITE, 8 * es, dbl ? (void *)b : bf, &db) ==
                  RVS_OK &&
              rvs_buffer_create(ctx, CL_MEM_READ_WRITE, 12 * es, dbl ? (void *)c : cf, &dc) ==
                  RVS_OK,
          "GEMM buffers");
    if (!da || !db || !dc)
        goto done;
    counters c0 = get(ctx);
    int st = dbl ? rvs_gemm_f64(ctx, RVS_NO_TRANS, RVS_NO_TRANS, 3, 4, 2, 1.0, da, 0, 2, db, 0, 4,
                                0.0, dc, 0, 4)
                 : rvs_gemm_f32(ctx, RVS_NO_TRANS, RVS_NO_TRANS, 3, 4, 2, 1.0f, da, 0, 2, db, 0,
                                4, 0.0f, dc, 0, 4);
    CHECK(st == RVS_OK, "GEMM: %s", rvs_strerror(st));
    /* m = 0: nothing to do, not a call */
    CHECK(rvs_gemm_real(ctx, RVS_NO_TRANS, RVS_NO_TRANS, 0, 4, 2, 1.0, da, 0, 2, db, 0, 4, 0.0,
                        dc, 0, 4) == RVS_OK,
          "empty GEMM");
    CHECK(clFinish(ctx->queue) == CL_SUCCESS, "clFinish");
    counters c1 = get(ctx), d = diff(&c1, &c0);
    print_counts(ctx->gemm_backend != RVS_GEMM_CLBLAST ? "one GEMM (host)"
                                                        : "one GEMM (CLBlast)",
                 &d);
    if (ctx->gemm_backend != RVS_GEMM_CLBLAST)
        CHECK(d.gemm_calls == 1 && d.maps == 3 && d.bytes_mapped == 26 * es &&
                  only(&d, F_GEMM | F_MAP),
              "host GEMM: %llu calls, %llu maps of %llu bytes", d.gemm_calls, d.maps,
              d.bytes_mapped);
    else
        CHECK(d.gemm_calls == 1 && only(&d, F_GEMM) &&
                  c1.mem_peak_total >= c1.mem_current + c1.gemm_work_max,
              "CLBlast GEMM: %llu calls; total peak %zu < held %zu + work %zu", d.gemm_calls,
              c1.mem_peak_total, c1.mem_current, c1.gemm_work_max);
    printf("    largest CLBlast work space %zu B\n", c1.gemm_work_max);
done:
    rvs_buffer_release(&da);
    rvs_buffer_release(&db);
    rvs_buffer_release(&dc);
}

static void check_fft(struct rvs_context *ctx)
{
    enum { NPIX = 100 };
    double x[NPIX];
    float xf[NPIX];
    for (int i = 0; i < NPIX; i++) {
        x[i] = 1.0 + 0.01 * i;
        xf[i] = (float)x[i];
    }
    size_t es = rvs_context_real_size(ctx);
    cl_mem din = NULL, dout = NULL;
    struct rvs_rotation *rot = NULL;
    CHECK(rvs_buffer_create(ctx, CL_MEM_READ_ONLY, NPIX * es, ctx->use_fp64 ? (void *)x : xf,
                            &din) == RVS_OK &&
              rvs_buffer_create(ctx, CL_MEM_READ_WRITE, NPIX * es, NULL, &dout) == RVS_OK,
          "rotation buffers");
    CHECK(rvs_rotation_create(ctx, NPIX, &rot) == RVS_OK, "rotation");
    if (!din || !dout || !rot)
        goto done;
    rvs_rotation_set_path(rot, RVS_ROTATION_FFT);
    counters c0 = get(ctx);
    const double vsini = 100.0, lnstep = 1e-4; /* R = 3.3 px: 11 weights */
    CHECK(rvs_rotation_apply(ctx, rot, din, 1, &vsini, lnstep, RVS_ROTATION_EPS, dout) == RVS_OK,
          "FFT rotation");
    CHECK(clFinish(ctx->queue) == CL_SUCCESS, "clFinish");
    counters c1 = get(ctx), d = diff(&c1, &c0);
    print_counts("one FFT-path rotation", &d);
    printf("    clFFT plans' work space %zu B\n", c1.fft_work);
    CHECK(d.fft_transforms == 3 && d.kernel_launches == 4 && d.writes == 2 &&
              only(&d, F_FFT | F_LAUNCH | F_WRITE | F_BUF) &&
              c1.mem_peak_total >= c1.mem_current + c1.fft_work,
          "FFT rotation: %llu transforms, %llu launches, %llu writes", d.fft_transforms,
          d.kernel_launches, d.writes);
    rvs_rotation_destroy(&rot);
    counters c2 = get(ctx);
    CHECK(c2.fft_work == c0.fft_work && c2.mem_current == c0.mem_current,
          "after the rotation: clFFT work %zu (was %zu), held %zu (was %zu)", c2.fft_work,
          c0.fft_work, c2.mem_current, c0.mem_current);
done:
    rvs_rotation_destroy(&rot);
    rvs_buffer_release(&din);
    rvs_buffer_release(&dout);
}

/* Buffers that outlive their context are released without touching it (no use after free:
 * run under --enable-asan to see). */
static void check_outliving(void)
{
    struct rvs_context *ctx = test_context(1);
    cl_mem b = NULL;
    CHECK(rvs_buffer_create(ctx, CL_MEM_READ_WRITE, 4096, NULL, &b) == RVS_OK, "buffer");
    rvs_context_destroy(&ctx);
    rvs_buffer_release(&b);
    CHECK(b == NULL, "release after the context");
}

/* ---------------------------------------------------------------- engine invariant */

#define ENG_RES (1 << 12) /* tests/routines/engine.c: resolution matrices */
extern const struct rvs_routine rvs_routine_engine;
struct rvs_engine *rvs_engine_routine_engine(void *state);
const struct rvs_engine_request *rvs_engine_routine_requests(void *state);

/* Commands and transfers of one rvs_engine_eval over the first E requests of `req`. */
static counters eval_counts(struct rvs_context *ctx, struct rvs_engine *g,
                            const struct rvs_engine_request *req, size_t E, double *out,
                            unsigned long long *chunks)
{
    struct rvs_engine_stats st;
    rvs_engine_stats_reset(g);
    counters c0 = get(ctx);
    CHECK(rvs_engine_eval(g, req, E, out, NULL) == RVS_OK, "engine call of %zu requests", E);
    counters c1 = get(ctx);
    rvs_engine_stats_get(g, &st);
    *chunks = st.chunks;
    return diff(&c1, &c0);
}

static void check_engine_invariant(struct rvs_context *ctx)
{
    enum { EMAX = 1000 };
    /* 8 spectra, 3 small arms with resolution matrices, one theta per request */
    const struct rvs_routine_args args = {.batch = EMAX, .n = 0, .m = 16, .k = 8,
                                          .param = 1 | ENG_RES};
    struct rvs_routine_args a = args;
    a.real_size = rvs_context_real_size(ctx);
    void *state = NULL;
    struct rvs_engine_request *req = malloc(EMAX * sizeof *req);
    double *out = malloc(EMAX * sizeof *out);
    CHECK(req && out, "out of memory");
    int status = req && out ? rvs_routine_engine.setup(ctx, &a, &state) : RVS_ERR_NOMEM;
    CHECK(status == RVS_OK, "engine scenario: %s", rvs_strerror(status));
    if (status != RVS_OK)
        goto done;
    struct rvs_engine *g = rvs_engine_routine_engine(state);
    memcpy(req, rvs_engine_routine_requests(state), EMAX * sizeof *req);
    for (size_t e = 0; e < EMAX; e++)
        req[e].vsini = 10; /* every template rotated (direct path), no gather */
    unsigned long long k10, k1000, kchunked;
    counters d10 = eval_counts(ctx, g, req, 10, out, &k10);
    counters d1000 = eval_counts(ctx, g, req, EMAX, out, &k1000);
    rvs_engine_set_chunk_limits(g, 100, 0);
    counters dch = eval_counts(ctx, g, req, EMAX, out, &kchunked);
    rvs_engine_set_chunk_limits(g, 0, 0);
    print_counts("engine call, E = 10", &d10);
    print_counts("engine call, E = 1000", &d1000);
    print_counts("engine call, E = 1000 in chunks of 100", &dch);
    unsigned long long n10 = rvs_context_counters_commands(&d10);
    unsigned long long n1000 = rvs_context_counters_commands(&d1000);
    unsigned long long nch = rvs_context_counters_commands(&dch);
    printf("  device commands per engine call: %llu (E = 10), %llu (E = 1000), %llu (E = 1000 "
           "in %llu passes)\n", n10, n1000, nch, kchunked);
    CHECK(k10 == 1 && k1000 == 1 && kchunked == 10, "passes %llu, %llu, %llu (want 1, 1, 10)",
          k10, k1000, kchunked);
    CHECK(n10 > 0 && n10 == n1000 && d10.kernel_launches == d1000.kernel_launches &&
              d10.gemm_calls == d1000.gemm_calls && d10.fft_transforms == d1000.fft_transforms &&
              d10.writes == d1000.writes && d10.reads == d1000.reads,
          "commands per engine call grow with the requests: %llu for E = 10, %llu for E = 1000",
          n10, n1000);
    CHECK(nch == 10 * n10 && dch.writes == 10 * d10.writes && dch.reads == 10 * d10.reads,
          "10 passes made %llu commands, want 10 x %llu", nch, n10);
    /* transfers grow with the requests, not the command count */
    CHECK(d1000.bytes_to_device > d10.bytes_to_device &&
              d1000.bytes_from_device == 100 * d10.bytes_from_device,
          "bytes: %llu / %llu in, %llu / %llu out", d10.bytes_to_device, d1000.bytes_to_device,
          d10.bytes_from_device, d1000.bytes_from_device);
done:
    if (state)
        rvs_routine_engine.destroy(state);
    free(req);
    free(out);
}

int main(void)
{
    struct rvs_context *ctx = test_context(0);
    printf("%s, GEMM through %s, %s\n", ctx->caps.device_name,
           rvs_gemm_backend_name(ctx->gemm_backend), ctx->use_fp64 ? "fp64" : "fp32");
    counters c = get(ctx);
    print_counts("context creation and self-test", &c);
    CHECK(c.kernel_launches > 0 && c.gemm_calls > 0 && c.buffers_created > 0 &&
              c.mem_peak > 0 && c.mem_current <= c.mem_peak,
          "the self-test's work was not counted");
    enum rvs_gemm_backend first = ctx->gemm_backend;
    check_launches(ctx);
    check_buffers(ctx);
    check_gemm(ctx);
    check_fft(ctx);
    check_engine_invariant(ctx);
    rvs_context_destroy(&ctx);

    /* CPU devices: the CLBlast path too (it runs everywhere; GPUs took it above) */
    if (first != RVS_GEMM_CLBLAST && !getenv("RVSFIT_CL_GEMM")) {
        setenv("RVSFIT_CL_GEMM", "clblast", 1);
        ctx = test_context(1);
        if (ctx->gemm_backend == RVS_GEMM_CLBLAST)
            check_gemm(ctx);
        rvs_context_destroy(&ctx);
        unsetenv("RVSFIT_CL_GEMM");
    }
    check_outliving();
    return test_finish("test_counters");
}
