/* rvsfit/device.h: OpenCL platform and device discovery, selection, and capabilities. */
#ifndef RVSFIT_DEVICE_H
#define RVSFIT_DEVICE_H

#include <stddef.h>
#include <stdio.h>

#include "rvsfit/opencl.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What later stages need to know about a device to size batches and choose precision. */
struct rvs_device_caps {
    cl_platform_id platform;
    cl_device_id device;
    unsigned flat_index;     /* position in the enumeration over all platforms */
    unsigned platform_index; /* P of P:D */
    unsigned device_index;   /* D of P:D */
    char platform_name[256];
    char platform_version[128];
    char device_name[256];
    char vendor[128];
    char device_version[128];   /* "OpenCL 3.0 CUDA" */
    char opencl_c_version[128]; /* "OpenCL C 1.2" */
    char driver_version[128];
    cl_device_type type;
    int available;            /* CL_DEVICE_AVAILABLE and a compiler present */
    int has_fp64;             /* cl_khr_fp64 (or OpenCL 1.2 double config) */
    cl_ulong global_mem_size; /* bytes */
    cl_ulong max_alloc_size;  /* bytes, largest single buffer */
    cl_ulong local_mem_size;  /* bytes per work-group */
    cl_uint compute_units;
    size_t max_work_group_size;
    size_t preferred_work_group_multiple; /* measured on a built kernel; 0 until a context has one */
    cl_uint mem_base_addr_align;          /* bits, alignment needed for sub-buffers */
    int host_unified_memory;              /* buffers live in host memory (CPU devices) */
};

struct rvs_device_list {
    struct rvs_device_caps *devices;
    size_t count;
    unsigned platform_count;
};

/* Enumerates every device of every platform. RVS_ERR_NO_PLATFORM when the ICD loader finds none. */
int rvs_device_list_query(struct rvs_device_list *list);
void rvs_device_list_free(struct rvs_device_list *list);

/* Picks a device from a user's spec: a flat index ("0"), "P:D" (each side an index or a
 * case-insensitive name substring), a name substring, or "cpu"/"gpu". A NULL or empty spec means
 * the default: $RVSFIT_CL_DEVICE, else the first usable GPU, else the first usable CPU. A device
 * named explicitly that cannot be used is an error, never replaced by another one. */
int rvs_device_select(const struct rvs_device_list *list, const char *spec, size_t *index);

/* "GPU", "CPU", "ACCELERATOR", ... */
const char *rvs_device_type_name(cl_device_type type);

/* The --list-devices table. */
void rvs_device_list_print(const struct rvs_device_list *list, FILE *out);

/* Message for users when no platform or no device is found: what to install, how to register. */
const char *rvs_device_install_hint(void);

#ifdef __cplusplus
}
#endif

#endif
