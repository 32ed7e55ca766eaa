/* rvsfit/status.h: status codes shared by the whole library, and their names.
 *
 * Functions that can fail return an int status: 0 on success, an OpenCL error code (negative,
 * -1..-72 and vendor ranges), a CLBlast code (-1007..-2050), a clFFT code (4096..4105), or one of
 * our own codes below (-30000 range). rvs_strerror() names all of them. */
#ifndef RVSFIT_STATUS_H
#define RVSFIT_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

enum rvs_status {
    RVS_OK = 0,
    RVS_ERR_NOMEM = -30001,            /* host memory allocation failed */
    RVS_ERR_INVALID_ARGUMENT = -30002, /* a caller passed an impossible value */
    RVS_ERR_IO = -30003,               /* a file could not be read or written */
    RVS_ERR_NO_PLATFORM = -30004,      /* no OpenCL platform is installed */
    RVS_ERR_NO_DEVICE = -30005,        /* no usable OpenCL device */
    RVS_ERR_DEVICE_SPEC = -30006,      /* a --device string names no device */
    RVS_ERR_KERNEL_SOURCE = -30007,    /* a kernel source file is missing or unreadable */
    RVS_ERR_KERNEL_BUILD = -30008,     /* a kernel failed to compile */
    RVS_ERR_SELFTEST = -30009,         /* a kernel gave a wrong answer in the self-test */
    RVS_ERR_CACHE = -30010,            /* a program-binary cache entry is unusable */
    RVS_ERR_UNSUPPORTED = -30011,      /* the device lacks something this operation needs */
    RVS_ERR_FORMAT = -30012,           /* a file or string is not in the expected format */
    RVS_ERR_DEVICE_UNAVAILABLE = -30013 /* the device exists but reports itself unusable */
};

/* Human-readable name of any status code the library can return (never NULL). */
const char *rvs_strerror(int status);

#ifdef __cplusplus
}
#endif

#endif
