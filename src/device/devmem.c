/* devmem.c: small device-memory and launch helpers that log what failed, so kernel modules stay
 * short: buffers, transfers, kernel arguments, and launches rounded to work-group multiples.
 * Every command they enqueue is counted in the context (rvs_context_counters).
 *
 * Held memory: rvs_buffer_release has no context argument, so each buffer made here is recorded
 * in a process-wide table (cl_mem -> size, context) that release consults; a buffer the table
 * does not know (made with clCreateBuffer elsewhere) is released without being counted. The
 * table's lock also guards the memory counters. Destroying a context drops its entries. */
#include <config.h>

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/internal.h"

size_t rvs_context_real_size(const struct rvs_context *ctx)
{
    return ctx->use_fp64 ? sizeof(double) : sizeof(float);
}

/* ------------------------------------------------------------------ held-buffer table */

#define HELD_BUCKETS 1024

struct held {
    cl_mem mem;
    size_t bytes;
    struct rvs_context *ctx;
    struct held *next;
};

static pthread_mutex_t held_lock = PTHREAD_MUTEX_INITIALIZER;
static struct held *held_table[HELD_BUCKETS];

static size_t held_bucket(cl_mem mem)
{
    uintptr_t x = (uintptr_t)mem;
    x ^= x >> 17;
    x *= (uintptr_t)0x9e3779b97f4a7c15ULL;
    return (size_t)(x >> 7) % HELD_BUCKETS;
}

/* With held_lock held: the total of the context's memory moved; peaks updated. */
static void note_peaks(struct rvs_context_counters *c, size_t transient)
{
    if (c->mem_current > c->mem_peak)
        c->mem_peak = c->mem_current;
    size_t total = c->mem_current + c->fft_work + transient;
    if (total > c->mem_peak_total)
        c->mem_peak_total = total;
}

void rvs_devmem_forget_context(struct rvs_context *ctx)
{
    pthread_mutex_lock(&held_lock);
    for (size_t b = 0; b < HELD_BUCKETS; b++) {
        struct held **p = &held_table[b];
        while (*p) {
            if ((*p)->ctx == ctx) {
                struct held *dead = *p;
                *p = dead->next;
                free(dead);
            } else {
                p = &(*p)->next;
            }
        }
    }
    pthread_mutex_unlock(&held_lock);
}

void rvs_devmem_fft_work(struct rvs_context *ctx, size_t bytes, int add)
{
    pthread_mutex_lock(&held_lock);
    struct rvs_context_counters *c = &ctx->counters;
    if (add)
        c->fft_work += bytes;
    else
        c->fft_work -= bytes < c->fft_work ? bytes : c->fft_work;
    note_peaks(c, 0);
    pthread_mutex_unlock(&held_lock);
}

void rvs_devmem_gemm_work(struct rvs_context *ctx, size_t bytes)
{
    pthread_mutex_lock(&held_lock);
    struct rvs_context_counters *c = &ctx->counters;
    if (bytes > c->gemm_work_max)
        c->gemm_work_max = bytes;
    note_peaks(c, bytes);
    pthread_mutex_unlock(&held_lock);
}

void rvs_context_counters_get(const struct rvs_context *ctx, struct rvs_context_counters *out)
{
    pthread_mutex_lock(&held_lock);
    *out = ctx->counters;
    pthread_mutex_unlock(&held_lock);
}

void rvs_context_counters_reset(struct rvs_context *ctx)
{
    pthread_mutex_lock(&held_lock);
    struct rvs_context_counters *c = &ctx->counters;
    size_t current = c->mem_current, fft = c->fft_work;
    memset(c, 0, sizeof *c);
    c->mem_current = c->mem_peak = current;
    c->fft_work = fft;
    c->mem_peak_total = current + fft;
    pthread_mutex_unlock(&held_lock);
}

unsigned long long rvs_context_counters_commands(const struct rvs_context_counters *c)
{
    return c->kernel_launches + c->gemm_calls + c->fft_transforms + c->fills + c->copies;
}

/* ------------------------------------------------------------------ buffers and transfers */

int rvs_buffer_create(struct rvs_context *ctx, cl_mem_flags flags, size_t bytes,
                      const void *host, cl_mem *buffer)
{
    cl_int err;
    if (host)
        flags |= CL_MEM_COPY_HOST_PTR;
    size_t size = bytes ? bytes : 1;
    *buffer = clCreateBuffer(ctx->context, flags, size, (void *)host, &err);
    if (err != CL_SUCCESS) {
        rvs_log(RVS_LOG_ERROR, "devmem", "cannot allocate %zu bytes on %s: %s", bytes,
                ctx->caps.device_name, rvs_strerror(err));
        *buffer = NULL;
        return err;
    }
    struct held *h = malloc(sizeof *h);
    if (!h) {
        rvs_log(RVS_LOG_ERROR, "devmem", "out of host memory recording a device buffer");
        clReleaseMemObject(*buffer);
        *buffer = NULL;
        return RVS_ERR_NOMEM;
    }
    *h = (struct held){*buffer, size, ctx, NULL};
    pthread_mutex_lock(&held_lock);
    size_t b = held_bucket(*buffer);
    h->next = held_table[b];
    held_table[b] = h;
    struct rvs_context_counters *c = &ctx->counters;
    c->buffers_created++;
    c->mem_current += size;
    if (host)
        c->bytes_to_device += bytes;
    note_peaks(c, 0);
    pthread_mutex_unlock(&held_lock);
    return err;
}

/* The one counted host-to-device write; blocking or not. */
static int buffer_write(struct rvs_context *ctx, cl_mem buffer, size_t offset, size_t bytes,
                        const void *host, cl_bool blocking)
{
    if (bytes == 0)
        return RVS_OK;
    cl_int err =
        clEnqueueWriteBuffer(ctx->queue, buffer, blocking, offset, bytes, host, 0, NULL, NULL);
    if (err != CL_SUCCESS) {
        rvs_log(RVS_LOG_ERROR, "devmem", "writing %zu bytes to the device failed: %s", bytes,
                rvs_strerror(err));
        return err;
    }
    ctx->counters.writes++;
    ctx->counters.bytes_to_device += bytes;
    return err;
}

int rvs_buffer_write(struct rvs_context *ctx, cl_mem buffer, size_t offset, size_t bytes,
                     const void *host)
{
    return buffer_write(ctx, buffer, offset, bytes, host, CL_TRUE);
}

int rvs_buffer_write_async(struct rvs_context *ctx, cl_mem buffer, size_t offset, size_t bytes,
                           const void *host)
{
    return buffer_write(ctx, buffer, offset, bytes, host, CL_FALSE);
}

int rvs_buffer_fill(struct rvs_context *ctx, cl_mem buffer, const void *pattern,
                    size_t pattern_size, size_t offset, size_t bytes)
{
    if (bytes == 0)
        return RVS_OK;
    cl_int err = clEnqueueFillBuffer(ctx->queue, buffer, pattern, pattern_size, offset, bytes, 0,
                                     NULL, NULL);
    if (err != CL_SUCCESS) {
        rvs_log(RVS_LOG_ERROR, "devmem", "filling %zu bytes on the device failed: %s", bytes,
                rvs_strerror(err));
        return err;
    }
    ctx->counters.fills++;
    return err;
}

int rvs_buffer_copy(struct rvs_context *ctx, cl_mem src, size_t src_offset, cl_mem dst,
                    size_t dst_offset, size_t bytes)
{
    if (bytes == 0)
        return RVS_OK;
    cl_int err = clEnqueueCopyBuffer(ctx->queue, src, dst, src_offset, dst_offset, bytes, 0, NULL,
                                     NULL);
    if (err != CL_SUCCESS) {
        rvs_log(RVS_LOG_ERROR, "devmem", "copying %zu bytes on the device failed: %s", bytes,
                rvs_strerror(err));
        return err;
    }
    ctx->counters.copies++;
    return err;
}

int rvs_buffer_read(struct rvs_context *ctx, cl_mem buffer, size_t offset, size_t bytes,
                    void *host)
{
    if (bytes == 0)
        return RVS_OK;
    cl_int err =
        clEnqueueReadBuffer(ctx->queue, buffer, CL_TRUE, offset, bytes, host, 0, NULL, NULL);
    if (err != CL_SUCCESS) {
        rvs_log(RVS_LOG_ERROR, "devmem", "reading %zu bytes from the device failed: %s", bytes,
                rvs_strerror(err));
        return err;
    }
    ctx->counters.reads++;
    ctx->counters.bytes_from_device += bytes;
    return err;
}

int rvs_buffer_check_size(const char *module, cl_mem buffer, size_t bytes, const char *what)
{
    size_t size = 0;
    cl_int err = clGetMemObjectInfo(buffer, CL_MEM_SIZE, sizeof size, &size, NULL);
    if (err != CL_SUCCESS) {
        rvs_cl_log_failure(err, "clGetMemObjectInfo(CL_MEM_SIZE)", __FILE__, __LINE__);
        return err;
    }
    if (size < bytes) {
        rvs_log(RVS_LOG_ERROR, module, "the %s buffer holds %zu bytes, %zu needed", what, size,
                bytes);
        return RVS_ERR_INVALID_ARGUMENT;
    }
    return RVS_OK;
}

void rvs_buffer_release(cl_mem *buffer)
{
    if (!buffer || !*buffer)
        return;
    pthread_mutex_lock(&held_lock);
    for (struct held **p = &held_table[held_bucket(*buffer)]; *p; p = &(*p)->next) {
        if ((*p)->mem != *buffer)
            continue;
        struct held *h = *p;
        struct rvs_context_counters *c = &h->ctx->counters;
        c->mem_current -= h->bytes;
        c->buffers_released++;
        *p = h->next;
        free(h);
        break;
    }
    pthread_mutex_unlock(&held_lock);
    clReleaseMemObject(*buffer);
    *buffer = NULL;
}

static void kernel_name(cl_kernel kernel, char *name, size_t size)
{
    if (clGetKernelInfo(kernel, CL_KERNEL_FUNCTION_NAME, size, name, NULL) != CL_SUCCESS)
        snprintf(name, size, "?");
    name[size - 1] = '\0';
}

int rvs_kernel_arg(cl_kernel kernel, cl_uint index, size_t size, const void *value)
{
    cl_int err = clSetKernelArg(kernel, index, size, value);
    if (err != CL_SUCCESS) {
        char name[128];
        kernel_name(kernel, name, sizeof name);
        rvs_log(RVS_LOG_ERROR, "devmem", "clSetKernelArg(%s, %u) failed: %s", name, index,
                rvs_strerror(err));
    }
    return err;
}

static size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

int rvs_kernel_launch_1d(struct rvs_context *ctx, cl_kernel kernel, size_t n, size_t local_hint)
{
    return rvs_kernel_launch_2d(ctx, kernel, n, 1, local_hint, 1);
}

int rvs_kernel_launch_2d(struct rvs_context *ctx, cl_kernel kernel, size_t n0, size_t n1,
                         size_t local0, size_t local1)
{
    if (n0 == 0 || n1 == 0)
        return RVS_OK;
    if (local1 == 0)
        local1 = 1;
    if (local0 == 0)
        local0 = ctx->caps.preferred_work_group_multiple ? ctx->caps.preferred_work_group_multiple
                                                         : 64;
    while (local0 * local1 > ctx->caps.max_work_group_size && local0 > 1)
        local0 /= 2;
    while (local0 * local1 > ctx->caps.max_work_group_size && local1 > 1)
        local1 /= 2;
    size_t global[2] = {round_up(n0, local0), round_up(n1, local1)};
    size_t local[2] = {local0, local1};
    return rvs_kernel_launch_nd(ctx, kernel, n1 > 1 || local1 > 1 ? 2 : 1, global, local);
}

/* The one place our kernels are enqueued (and counted). */
int rvs_kernel_launch_nd(struct rvs_context *ctx, cl_kernel kernel, cl_uint dims,
                         const size_t *global, const size_t *local)
{
    cl_int err =
        clEnqueueNDRangeKernel(ctx->queue, kernel, dims, NULL, global, local, 0, NULL, NULL);
    if (err != CL_SUCCESS) {
        char name[128];
        kernel_name(kernel, name, sizeof name);
        rvs_log(RVS_LOG_ERROR, "devmem", "launch of %s (%u-D, %zu x %zu, local %zu x %zu) "
                "failed: %s", name, dims, global[0], dims > 1 ? global[1] : 1,
                local ? local[0] : 0, local && dims > 1 ? local[1] : local ? 1 : 0,
                rvs_strerror(err));
        return err;
    }
    ctx->counters.kernel_launches++;
    return err;
}
