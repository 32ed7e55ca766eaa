/* fft.c: clFFT's process-wide runtime, set up by the first context and torn down by the last
 * (clfftSetup/clfftTeardown must happen once per process, not per plan), the clFFT calls
 * that the context counts: baking and destroying plans (their work space), transforms, and the
 * plan cache of the modules that transform (rotation, CCF start). */
#include <config.h>

/* first: it fixes the OpenCL API level before clblast_c.h or clFFT.h include CL/cl.h */
#include "base/internal.h"

#include <clFFT.h>
#include <pthread.h>


static pthread_mutex_t fft_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned fft_users;

int rvs_fft_acquire(void)
{
    int status = RVS_OK;
    pthread_mutex_lock(&fft_lock);
    if (fft_users == 0) {
        clfftSetupData setup;
        clfftStatus s = clfftInitSetupData(&setup);
        if (s == CLFFT_SUCCESS)
            s = clfftSetup(&setup);
        if (s != CLFFT_SUCCESS) {
            rvs_log(RVS_LOG_ERROR, "fft", "clfftSetup failed: %s (%d)", rvs_strerror(s), (int)s);
            status = s;
        }
    }
    if (status == RVS_OK)
        fft_users++;
    pthread_mutex_unlock(&fft_lock);
    return status;
}

void rvs_fft_release(void)
{
    pthread_mutex_lock(&fft_lock);
    if (fft_users > 0 && --fft_users == 0) {
        clfftStatus s = clfftTeardown();
        if (s != CLFFT_SUCCESS)
            rvs_log(RVS_LOG_WARNING, "fft", "clfftTeardown failed: %s (%d)", rvs_strerror(s),
                    (int)s);
    }
    pthread_mutex_unlock(&fft_lock);
}

/* clfftPlanHandle travels as size_t through internal.h, which does not include clFFT.h. */
_Static_assert(_Generic((clfftPlanHandle)0, size_t: 1, default: 0),
               "clfftPlanHandle is expected to be size_t");

int rvs_fft_plan_bake(struct rvs_context *ctx, size_t plan)
{
    clfftStatus s = clfftBakePlan(plan, 1, &ctx->queue, NULL, NULL);
    if (s != CLFFT_SUCCESS)
        return s;
    size_t work = 0;
    if (clfftGetTmpBufSize(plan, &work) == CLFFT_SUCCESS && work > 0)
        rvs_devmem_fft_work(ctx, work, 1);
    return CLFFT_SUCCESS;
}

void rvs_fft_plan_destroy(struct rvs_context *ctx, size_t *plan)
{
    size_t work = 0;
    /* fails (work stays 0) for a plan that was never baked, which holds no work space */
    if (clfftGetTmpBufSize(*plan, &work) == CLFFT_SUCCESS && work > 0)
        rvs_devmem_fft_work(ctx, work, 0);
    clfftStatus s = clfftDestroyPlan(plan);
    if (s != CLFFT_SUCCESS)
        rvs_log(RVS_LOG_WARNING, "fft", "clfftDestroyPlan failed: %s (%d)", rvs_strerror(s),
                (int)s);
}

int rvs_fft_transform(struct rvs_context *ctx, size_t plan, int forward, cl_mem buffer)
{
    clfftStatus s = clfftEnqueueTransform(plan, forward ? CLFFT_FORWARD : CLFFT_BACKWARD, 1,
                                          &ctx->queue, 0, NULL, NULL, &buffer, NULL, NULL);
    if (s == CLFFT_SUCCESS)
        ctx->counters.fft_transforms++;
    return s;
}

int rvs_fft_check(int s, const char *module, const char *call, size_t len, size_t batch)
{
    if (s != CLFFT_SUCCESS)
        rvs_log(RVS_LOG_ERROR, module, "%s (length %zu, batch %zu) failed: %s", call, len, batch,
                rvs_strerror(s));
    return s;
}

void rvs_fft_plan_drop(struct rvs_context *ctx, struct rvs_fft_plan_cache *cache, size_t handle)
{
    for (size_t i = 0; i < cache->capacity; i++)
        if (cache->plan[i].used && cache->plan[i].handle == handle) {
            rvs_fft_plan_destroy(ctx, &cache->plan[i].handle);
            cache->plan[i].used = 0;
        }
}

void rvs_fft_plan_cache_clear(struct rvs_context *ctx, struct rvs_fft_plan_cache *cache)
{
    for (size_t i = 0; i < cache->capacity; i++)
        if (cache->plan[i].used) {
            rvs_fft_plan_destroy(ctx, &cache->plan[i].handle);
            cache->plan[i].used = 0;
        }
}

int rvs_fft_plan_get(struct rvs_context *ctx, struct rvs_fft_plan_cache *cache, int layout,
                     size_t len, size_t batch, size_t *handle)
{
    int status = RVS_OK;
    const char *m = cache->module;
    size_t slot = 0;
    for (size_t i = 0; i < cache->capacity; i++) {
        if (cache->plan[i].used && cache->plan[i].layout == layout && cache->plan[i].len == len &&
            cache->plan[i].batch == batch) {
            cache->plan[i].last_use = ++cache->clock;
            *handle = cache->plan[i].handle;
            return RVS_OK;
        }
    }
    /* a free slot, else the least recently used one */
    for (size_t i = 0; i < cache->capacity; i++) {
        if (!cache->plan[i].used) {
            slot = i;
            break;
        }
        if (cache->plan[i].last_use < cache->plan[slot].last_use)
            slot = i;
    }
    if (cache->plan[slot].used) {
        rvs_fft_plan_destroy(ctx, &cache->plan[slot].handle);
        cache->plan[slot].used = 0;
    }
    clfftPlanHandle h;
    size_t lengths[1] = {len}, unit[1] = {1};
    size_t real_dist = len + 2, complex_dist = len / 2 + 1;
    RVS_TRY(rvs_fft_check(clfftCreateDefaultPlan(&h, ctx->context, CLFFT_1D, lengths), m,
                          "clfftCreateDefaultPlan", len, batch));
    cache->plan[slot].handle = h;
    cache->plan[slot].len = len;
    cache->plan[slot].batch = batch;
    cache->plan[slot].layout = layout;
    cache->plan[slot].used = 1;
    cache->plan[slot].last_use = ++cache->clock;
    RVS_TRY(rvs_fft_check(clfftSetPlanPrecision(h, cache->is_double ? CLFFT_DOUBLE : CLFFT_SINGLE),
                          m, "clfftSetPlanPrecision", len, batch));
    /* input and output layouts and distances between transforms (in elements of each layout):
     * real rows padded to len + 2, Hermitian rows of len / 2 + 1 complex values */
    clfftLayout in = CLFFT_COMPLEX_INTERLEAVED, out = CLFFT_COMPLEX_INTERLEAVED;
    size_t in_dist = len, out_dist = len;
    if (layout == RVS_FFT_REAL_TO_HERMITIAN) {
        in = CLFFT_REAL, out = CLFFT_HERMITIAN_INTERLEAVED;
        in_dist = real_dist, out_dist = complex_dist;
    } else if (layout == RVS_FFT_HERMITIAN_TO_REAL) {
        in = CLFFT_HERMITIAN_INTERLEAVED, out = CLFFT_REAL;
        in_dist = complex_dist, out_dist = real_dist;
    }
    RVS_TRY(rvs_fft_check(clfftSetLayout(h, in, out), m, "clfftSetLayout", len, batch));
    RVS_TRY(rvs_fft_check(clfftSetResultLocation(h, CLFFT_INPLACE), m, "clfftSetResultLocation",
                          len, batch));
    RVS_TRY(rvs_fft_check(clfftSetPlanInStride(h, CLFFT_1D, unit), m, "clfftSetPlanInStride", len,
                          batch));
    RVS_TRY(rvs_fft_check(clfftSetPlanOutStride(h, CLFFT_1D, unit), m, "clfftSetPlanOutStride",
                          len, batch));
    RVS_TRY(rvs_fft_check(clfftSetPlanDistance(h, in_dist, out_dist), m, "clfftSetPlanDistance",
                          len, batch));
    RVS_TRY(rvs_fft_check(clfftSetPlanBatchSize(h, batch), m, "clfftSetPlanBatchSize", len,
                          batch));
    RVS_TRY(rvs_fft_check(rvs_fft_plan_bake(ctx, h), m, "clfftBakePlan", len, batch));
    rvs_log(RVS_LOG_DEBUG, m, "baked FFT plan: layout %d, length %zu, batch %zu, %s", layout, len,
            batch, cache->is_double ? "double" : "single");
    *handle = h;
cleanup:
    if (status != RVS_OK && cache->plan[slot].used) { /* never keep a half-made plan */
        rvs_fft_plan_destroy(ctx, &cache->plan[slot].handle);
        cache->plan[slot].used = 0;
    }
    return status;
}
