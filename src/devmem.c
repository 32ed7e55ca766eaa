/* devmem.c: small device-memory and launch helpers that log what failed, so kernel modules stay
 * short: buffers, transfers, kernel arguments, and launches rounded to work-group multiples. */
#include <config.h>

#include "internal.h"

size_t rvs_context_real_size(const struct rvs_context *ctx)
{
    return ctx->use_fp64 ? sizeof(double) : sizeof(float);
}

int rvs_buffer_create(struct rvs_context *ctx, cl_mem_flags flags, size_t bytes,
                      const void *host, cl_mem *buffer)
{
    cl_int err;
    if (host)
        flags |= CL_MEM_COPY_HOST_PTR;
    *buffer = clCreateBuffer(ctx->context, flags, bytes ? bytes : 1, (void *)host, &err);
    if (err != CL_SUCCESS) {
        rvs_log(RVS_LOG_ERROR, "devmem", "cannot allocate %zu bytes on %s: %s", bytes,
                ctx->caps.device_name, rvs_strerror(err));
        *buffer = NULL;
    }
    return err;
}

int rvs_buffer_write(struct rvs_context *ctx, cl_mem buffer, size_t offset, size_t bytes,
                     const void *host)
{
    if (bytes == 0)
        return RVS_OK;
    cl_int err =
        clEnqueueWriteBuffer(ctx->queue, buffer, CL_TRUE, offset, bytes, host, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        rvs_log(RVS_LOG_ERROR, "devmem", "writing %zu bytes to the device failed: %s", bytes,
                rvs_strerror(err));
    return err;
}

int rvs_buffer_read(struct rvs_context *ctx, cl_mem buffer, size_t offset, size_t bytes,
                    void *host)
{
    if (bytes == 0)
        return RVS_OK;
    cl_int err =
        clEnqueueReadBuffer(ctx->queue, buffer, CL_TRUE, offset, bytes, host, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        rvs_log(RVS_LOG_ERROR, "devmem", "reading %zu bytes from the device failed: %s", bytes,
                rvs_strerror(err));
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
    if (buffer && *buffer) {
        clReleaseMemObject(*buffer);
        *buffer = NULL;
    }
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
    cl_int err = clEnqueueNDRangeKernel(ctx->queue, kernel, n1 > 1 || local1 > 1 ? 2 : 1, NULL,
                                        global, local, 0, NULL, NULL);
    if (err != CL_SUCCESS) {
        char name[128];
        kernel_name(kernel, name, sizeof name);
        rvs_log(RVS_LOG_ERROR, "devmem", "launch of %s (%zu x %zu, local %zu x %zu) failed: %s",
                name, global[0], global[1], local0, local1, rvs_strerror(err));
    }
    return err;
}
