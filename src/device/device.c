/* device.c: enumerate OpenCL platforms and devices, record their capabilities, and resolve the
 * user's --device spec. Rejected devices are logged with the reason (as darktable does). */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/internal.h"

static const char install_hint[] =
    "no OpenCL platform is installed or registered. An OpenCL program needs the ICD loader\n"
    "  (Debian: ocl-icd-libopencl1) and at least one vendor driver registered in\n"
    "  /etc/OpenCL/vendors/*.icd:\n"
    "  - CPUs: install pocl-opencl-icd (PoCL);\n"
    "  - NVIDIA GPUs: the driver's libnvidia-opencl.so.1; in containers register it with\n"
    "      echo libnvidia-opencl.so.1 > /etc/OpenCL/vendors/nvidia.icd\n"
    "    (or point OCL_ICD_VENDORS at a directory holding such a file);\n"
    "  - AMD GPUs: the ROCm OpenCL runtime (rocm-opencl-icd).\n"
    "  'clinfo -l' lists what the loader sees.";

const char *rvs_device_install_hint(void) { return install_hint; }

/* PoCL keeps its kernel cache under $POCL_CACHE_DIR, else $XDG_CACHE_HOME/pocl, else
 * $HOME/.cache/pocl, and gives up (the loader then reports no platform at all) when that cannot
 * be created. Where no platform shows up, name that cause before the install hint. */
static void log_cache_hint(void)
{
    const char *pocl = getenv("POCL_CACHE_DIR");
    const char *xdg = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    char dir[4096];
    const char *from;
    if (pocl && *pocl) {
        snprintf(dir, sizeof dir, "%s", pocl);
        from = "POCL_CACHE_DIR";
    } else if (xdg && *xdg) {
        snprintf(dir, sizeof dir, "%s", xdg);
        from = "XDG_CACHE_HOME";
    } else if (home && *home) {
        snprintf(dir, sizeof dir, "%s/.cache", home);
        from = "HOME";
    } else {
        return;
    }
    /* the directory itself, or the nearest existing parent, must be a writable directory */
    char probe[4096];
    snprintf(probe, sizeof probe, "%s", dir);
    struct stat st;
    while (stat(probe, &st) != 0) {
        char *slash = strrchr(probe, '/');
        if (!slash || slash == probe)
            return;
        *slash = '\0';
    }
    if (S_ISDIR(st.st_mode) && access(probe, W_OK | X_OK) == 0)
        return;
    rvs_log(RVS_LOG_ERROR, "device",
            "the cache directory %s (from %s) cannot be created or written (%s is %s): PoCL, the "
            "CPU OpenCL driver, fails without one and the loader then finds no platform. Set %s "
            "(or POCL_CACHE_DIR) to a writable directory.",
            dir, from, probe, S_ISDIR(st.st_mode) ? "a read-only directory" : "not a directory",
            from);
}

const char *rvs_device_type_name(cl_device_type type)
{
    if (type & CL_DEVICE_TYPE_GPU)
        return "GPU";
    if (type & CL_DEVICE_TYPE_CPU)
        return "CPU";
    if (type & CL_DEVICE_TYPE_ACCELERATOR)
        return "ACCELERATOR";
    return "OTHER";
}

/* Copies a string property; on failure leaves "?" so a listing never stops at one odd device. */
static void device_string(cl_device_id dev, cl_device_info what, char *buf, size_t size)
{
    if (clGetDeviceInfo(dev, what, size, buf, NULL) != CL_SUCCESS)
        snprintf(buf, size, "?");
    buf[size - 1] = '\0';
}

static void platform_string(cl_platform_id p, cl_platform_info what, char *buf, size_t size)
{
    if (clGetPlatformInfo(p, what, size, buf, NULL) != CL_SUCCESS)
        snprintf(buf, size, "?");
    buf[size - 1] = '\0';
}

static int fill_caps(struct rvs_device_caps *c)
{
    int status = RVS_OK;
    cl_device_id d = c->device;
    device_string(d, CL_DEVICE_NAME, c->device_name, sizeof c->device_name);
    device_string(d, CL_DEVICE_VENDOR, c->vendor, sizeof c->vendor);
    device_string(d, CL_DEVICE_VERSION, c->device_version, sizeof c->device_version);
    device_string(d, CL_DEVICE_OPENCL_C_VERSION, c->opencl_c_version, sizeof c->opencl_c_version);
    device_string(d, CL_DRIVER_VERSION, c->driver_version, sizeof c->driver_version);
    RVS_CL_TRY(clGetDeviceInfo(d, CL_DEVICE_TYPE, sizeof c->type, &c->type, NULL));
    RVS_CL_TRY(clGetDeviceInfo(d, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof c->global_mem_size,
                               &c->global_mem_size, NULL));
    RVS_CL_TRY(clGetDeviceInfo(d, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof c->max_alloc_size,
                               &c->max_alloc_size, NULL));
    RVS_CL_TRY(clGetDeviceInfo(d, CL_DEVICE_LOCAL_MEM_SIZE, sizeof c->local_mem_size,
                               &c->local_mem_size, NULL));
    RVS_CL_TRY(clGetDeviceInfo(d, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof c->compute_units,
                               &c->compute_units, NULL));
    RVS_CL_TRY(clGetDeviceInfo(d, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof c->max_work_group_size,
                               &c->max_work_group_size, NULL));
    RVS_CL_TRY(clGetDeviceInfo(d, CL_DEVICE_MEM_BASE_ADDR_ALIGN, sizeof c->mem_base_addr_align,
                               &c->mem_base_addr_align, NULL));
    cl_bool unified = CL_FALSE, available = CL_FALSE, compiler = CL_FALSE;
    /* Deprecated in 2.0 but answered by every 1.x/3.0 driver we target; a failure means "no". */
    if (clGetDeviceInfo(d, CL_DEVICE_HOST_UNIFIED_MEMORY, sizeof unified, &unified, NULL) !=
        CL_SUCCESS)
        unified = CL_FALSE;
    c->host_unified_memory = unified == CL_TRUE || (c->type & CL_DEVICE_TYPE_CPU) != 0;
    RVS_CL_TRY(clGetDeviceInfo(d, CL_DEVICE_AVAILABLE, sizeof available, &available, NULL));
    RVS_CL_TRY(
        clGetDeviceInfo(d, CL_DEVICE_COMPILER_AVAILABLE, sizeof compiler, &compiler, NULL));
    c->available = available == CL_TRUE && compiler == CL_TRUE;
    cl_device_fp_config fp64 = 0;
    if (clGetDeviceInfo(d, CL_DEVICE_DOUBLE_FP_CONFIG, sizeof fp64, &fp64, NULL) != CL_SUCCESS)
        fp64 = 0;
    char extensions[8192];
    device_string(d, CL_DEVICE_EXTENSIONS, extensions, sizeof extensions);
    c->has_fp64 = fp64 != 0 || strstr(extensions, "cl_khr_fp64") != NULL;
cleanup:
    return status;
}

int rvs_device_list_query(struct rvs_device_list *list)
{
    int status = RVS_OK;
    cl_platform_id *platforms = NULL;
    cl_device_id *ids = NULL;
    memset(list, 0, sizeof *list);

    cl_uint nplat = 0;
    cl_int err = clGetPlatformIDs(0, NULL, &nplat);
    /* The ICD loader answers CL_PLATFORM_NOT_FOUND_KHR (-1001) when no vendor is registered. */
    if (err == -1001 || (err == CL_SUCCESS && nplat == 0)) {
        log_cache_hint();
        rvs_log(RVS_LOG_ERROR, "device", "%s", install_hint);
        return RVS_ERR_NO_PLATFORM;
    }
    RVS_CL_CHECK_ERR(err, "clGetPlatformIDs");
    platforms = rvs_calloc(nplat, sizeof *platforms);
    if (!platforms) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    RVS_CL_TRY(clGetPlatformIDs(nplat, platforms, NULL));
    list->platform_count = nplat;

    for (cl_uint p = 0; p < nplat; p++) {
        cl_uint ndev = 0;
        err = clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, 0, NULL, &ndev);
        if (err == CL_DEVICE_NOT_FOUND || ndev == 0) {
            char pname[256];
            platform_string(platforms[p], CL_PLATFORM_NAME, pname, sizeof pname);
            rvs_log(RVS_LOG_INFO, "device", "platform %u (%s) has no devices", p, pname);
            continue;
        }
        RVS_CL_CHECK_ERR(err, "clGetDeviceIDs");
        free(ids);
        ids = rvs_calloc(ndev, sizeof *ids);
        if (!ids) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        RVS_CL_TRY(clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, ndev, ids, NULL));
        struct rvs_device_caps *grown =
            realloc(list->devices, (list->count + ndev) * sizeof *list->devices);
        if (!grown) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        list->devices = grown;
        for (cl_uint d = 0; d < ndev; d++) {
            struct rvs_device_caps *c = &list->devices[list->count];
            memset(c, 0, sizeof *c);
            c->platform = platforms[p];
            c->device = ids[d];
            c->platform_index = p;
            c->device_index = d;
            c->flat_index = (unsigned)list->count;
            platform_string(platforms[p], CL_PLATFORM_NAME, c->platform_name,
                            sizeof c->platform_name);
            platform_string(platforms[p], CL_PLATFORM_VERSION, c->platform_version,
                            sizeof c->platform_version);
            RVS_TRY(fill_caps(c));
            if (!c->available)
                rvs_log(RVS_LOG_INFO, "device",
                        "device %u (%s) reports itself unavailable or without a compiler",
                        c->flat_index, c->device_name);
            list->count++;
        }
    }
    if (list->count == 0) {
        log_cache_hint();
        rvs_log(RVS_LOG_ERROR, "device", "OpenCL platforms found, but none has a device.\n%s",
                install_hint);
        status = RVS_ERR_NO_DEVICE;
    }
cleanup:
    free(platforms);
    free(ids);
    if (status != RVS_OK)
        rvs_device_list_free(list);
    return status;
}

void rvs_device_list_free(struct rvs_device_list *list)
{
    if (!list)
        return;
    free(list->devices);
    memset(list, 0, sizeof *list);
}

/* Parses a non-negative decimal index that fills the whole string. */
static int parse_index(const char *s, unsigned *out)
{
    if (!*s || !isdigit((unsigned char)*s))
        return 0;
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (*end || errno || v > UINT_MAX)
        return 0;
    *out = (unsigned)v;
    return 1;
}

static int contains_ci(const char *haystack, const char *needle)
{
    size_t n = strlen(needle);
    for (const char *h = haystack; *h; h++)
        if (strncasecmp(h, needle, n) == 0)
            return 1;
    return n == 0;
}

static int type_matches(const char *word, cl_device_type type, int *is_type_word)
{
    *is_type_word = 1;
    if (strcasecmp(word, "gpu") == 0)
        return (type & CL_DEVICE_TYPE_GPU) != 0;
    if (strcasecmp(word, "cpu") == 0)
        return (type & CL_DEVICE_TYPE_CPU) != 0;
    if (strcasecmp(word, "accelerator") == 0)
        return (type & CL_DEVICE_TYPE_ACCELERATOR) != 0;
    *is_type_word = 0;
    return 0;
}

/* Does device c match one "word" of a spec on the device side: index, type or name substring? */
static int device_matches(const struct rvs_device_caps *c, const char *word, int by_flat_index)
{
    unsigned idx;
    if (parse_index(word, &idx))
        return by_flat_index ? c->flat_index == idx : c->device_index == idx;
    int is_type;
    int t = type_matches(word, c->type, &is_type);
    if (is_type)
        return t;
    return contains_ci(c->device_name, word);
}

static int platform_matches(const struct rvs_device_caps *c, const char *word)
{
    unsigned idx;
    if (parse_index(word, &idx))
        return c->platform_index == idx;
    return contains_ci(c->platform_name, word) || contains_ci(c->vendor, word);
}

static int select_default(const struct rvs_device_list *list, size_t *index)
{
    static const cl_device_type preference[] = {CL_DEVICE_TYPE_GPU, CL_DEVICE_TYPE_CPU};
    for (size_t t = 0; t < sizeof preference / sizeof preference[0]; t++)
        for (size_t i = 0; i < list->count; i++) {
            const struct rvs_device_caps *c = &list->devices[i];
            if (!(c->type & preference[t]))
                continue;
            if (!c->available) {
                rvs_log(RVS_LOG_INFO, "device", "skipping device %zu (%s): unavailable", i,
                        c->device_name);
                continue;
            }
            *index = i;
            return RVS_OK;
        }
    rvs_log(RVS_LOG_ERROR, "device", "no usable GPU or CPU OpenCL device among the %zu found",
            list->count);
    return RVS_ERR_NO_DEVICE;
}

int rvs_device_select(const struct rvs_device_list *list, const char *spec, size_t *index)
{
    const char *origin = "--device";
    if (!spec || !*spec) {
        spec = getenv("RVSFIT_CL_DEVICE");
        origin = "RVSFIT_CL_DEVICE";
        if (!spec || !*spec)
            return select_default(list, index);
    }
    char platform_word[256] = "", device_word[256];
    const char *colon = strchr(spec, ':');
    if (strlen(spec) >= sizeof device_word) {
        rvs_log(RVS_LOG_ERROR, "device", "%s '%.40s...' is too long", origin, spec);
        return RVS_ERR_DEVICE_SPEC;
    }
    if (colon) {
        snprintf(platform_word, sizeof platform_word, "%.*s", (int)(colon - spec), spec);
        snprintf(device_word, sizeof device_word, "%s", colon + 1);
        if (!*platform_word || !*device_word || strchr(device_word, ':')) {
            rvs_log(RVS_LOG_ERROR, "device",
                    "%s '%s' is malformed: use an index (0), P:D (0:1), a name substring, "
                    "cpu or gpu; 'rvsfit-cl --list-devices' shows the choices",
                    origin, spec);
            return RVS_ERR_DEVICE_SPEC;
        }
    } else {
        snprintf(device_word, sizeof device_word, "%s", spec);
    }

    size_t found = list->count;
    size_t nmatch = 0;
    for (size_t i = 0; i < list->count; i++) {
        const struct rvs_device_caps *c = &list->devices[i];
        int ok = colon ? platform_matches(c, platform_word) && device_matches(c, device_word, 0)
                       : device_matches(c, device_word, 1);
        if (ok) {
            if (nmatch == 0)
                found = i;
            nmatch++;
        }
    }
    if (nmatch == 0) {
        rvs_log(RVS_LOG_ERROR, "device",
                "%s '%s' matches none of the %zu OpenCL device(s); 'rvsfit-cl --list-devices' "
                "shows them",
                origin, spec, list->count);
        return RVS_ERR_DEVICE_SPEC;
    }
    if (nmatch > 1)
        rvs_log(RVS_LOG_INFO, "device", "%s '%s' matches %zu devices; using the first, %zu (%s)",
                origin, spec, nmatch, found, list->devices[found].device_name);
    if (!list->devices[found].available) {
        /* Named explicitly: never fall back to another device. */
        rvs_log(RVS_LOG_ERROR, "device",
                "device %zu (%s) named by %s '%s' is not available or has no compiler", found,
                list->devices[found].device_name, origin, spec);
        return RVS_ERR_DEVICE_UNAVAILABLE;
    }
    *index = found;
    return RVS_OK;
}

static void format_bytes(cl_ulong bytes, char *buf, size_t size)
{
    if (bytes >= (cl_ulong)1 << 30)
        snprintf(buf, size, "%.1f GiB", (double)bytes / (double)((cl_ulong)1 << 30));
    else
        snprintf(buf, size, "%.0f MiB", (double)bytes / (double)((cl_ulong)1 << 20));
}

void rvs_device_list_print(const struct rvs_device_list *list, FILE *out)
{
    fprintf(out, "%-5s %-5s %-28s %-40s %-6s %-16s %10s %4s %5s\n", "index", "P:D", "platform",
            "device", "type", "OpenCL", "global mem", "CUs", "fp64");
    for (size_t i = 0; i < list->count; i++) {
        const struct rvs_device_caps *c = &list->devices[i];
        char mem[32], pd[24];
        format_bytes(c->global_mem_size, mem, sizeof mem);
        snprintf(pd, sizeof pd, "%u:%u", c->platform_index, c->device_index);
        fprintf(out, "%-5zu %-5s %-28.28s %-40.40s %-6s %-16.16s %10s %4u %5s%s\n", i, pd,
                c->platform_name, c->device_name, rvs_device_type_name(c->type),
                c->device_version, mem, c->compute_units, c->has_fp64 ? "yes" : "no",
                c->available ? "" : "  (unavailable)");
    }
}
