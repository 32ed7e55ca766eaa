/* fft.c: clFFT's process-wide runtime, set up by the first context and torn down by the last
 * (clfftSetup/clfftTeardown must happen once per process, not per plan), and the clFFT calls
 * that the context counts: baking and destroying plans (their work space), transforms. */
#include <config.h>

/* first: it fixes the OpenCL API level before clblast_c.h or clFFT.h include CL/cl.h */
#include "internal.h"

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
