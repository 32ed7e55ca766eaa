/* fft.c: clFFT's process-wide runtime, set up by the first context and torn down by the last
 * (clfftSetup/clfftTeardown must happen once per process, not per plan). */
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
