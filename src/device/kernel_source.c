/* kernel_source.c: kernel sources come embedded in the binary (generated from cl/ at build
 * time) or, per file, from $RVSFIT_CL_KERNEL_DIR, so a kernel can be tried without rebuilding. */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/internal.h"

/* the largest kernel source an override may be (the embedded ones are below 100 kB) */
#define RVS_KERNEL_SOURCE_MAX (16 << 20)

static int read_whole_file(const char *path, char **text, size_t *size)
{
    int status = RVS_OK;
    char *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        rvs_log(RVS_LOG_ERROR, "kernels", "cannot open kernel source %s: %s", path,
                strerror(errno));
        return RVS_ERR_KERNEL_SOURCE;
    }
    if (fseek(f, 0, SEEK_END) != 0) {
        status = RVS_ERR_KERNEL_SOURCE;
        goto cleanup;
    }
    long len = ftell(f);
    if (len < 0 || fseek(f, 0, SEEK_SET) != 0) {
        status = RVS_ERR_KERNEL_SOURCE;
        goto cleanup;
    }
    buf = rvs_malloc((size_t)len + 1);
    if (!buf) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    if (fread(buf, 1, (size_t)len, f) != (size_t)len) {
        rvs_log(RVS_LOG_ERROR, "kernels", "cannot read kernel source %s", path);
        status = RVS_ERR_KERNEL_SOURCE;
        goto cleanup;
    }
    buf[len] = '\0';
    *text = buf;
    *size = (size_t)len;
    buf = NULL;
cleanup:
    free(buf);
    fclose(f);
    return status;
}

int rvs_kernel_source_load(const char *file_name, char **text, size_t *size, char *origin,
                           size_t origin_size)
{
    const char *dir = getenv("RVSFIT_CL_KERNEL_DIR");
    if (dir && *dir) {
        struct stat st;
        if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
            rvs_log(RVS_LOG_ERROR, "kernels",
                    "RVSFIT_CL_KERNEL_DIR=%s is not a directory; unset it to use the embedded "
                    "kernels",
                    dir);
            return RVS_ERR_KERNEL_SOURCE;
        }
        size_t n = strlen(dir) + strlen(file_name) + 2;
        char *path = rvs_malloc(n);
        if (!path)
            return RVS_ERR_NOMEM;
        snprintf(path, n, "%s/%s", dir, file_name);
        if (stat(path, &st) == 0) {
            /* a directory or device of that name (ftell on a directory gives LONG_MAX on
             * glibc: reading it would ask for 2^63 bytes) or an absurd size is refused */
            if (!S_ISREG(st.st_mode) || st.st_size > RVS_KERNEL_SOURCE_MAX) {
                rvs_log(RVS_LOG_ERROR, "kernels",
                        "%s in RVSFIT_CL_KERNEL_DIR is %s; an override must be a regular kernel "
                        "source file (at most %d MB): remove it or unset RVSFIT_CL_KERNEL_DIR",
                        path, !S_ISREG(st.st_mode) ? "not a regular file" : "too large",
                        RVS_KERNEL_SOURCE_MAX >> 20);
                free(path);
                return RVS_ERR_KERNEL_SOURCE;
            }
            int status = read_whole_file(path, text, size);
            if (status == RVS_OK) {
                snprintf(origin, origin_size, "override %s", path);
                rvs_log(RVS_LOG_INFO, "kernels", "%s: using override source %s", file_name, path);
            }
            free(path);
            return status;
        }
        free(path);
    }
    for (size_t i = 0; i < rvs_embedded_source_count; i++) {
        if (strcmp(rvs_embedded_sources[i].name, file_name) != 0)
            continue;
        char *buf = rvs_malloc(rvs_embedded_sources[i].size + 1);
        if (!buf)
            return RVS_ERR_NOMEM;
        memcpy(buf, rvs_embedded_sources[i].data, rvs_embedded_sources[i].size);
        buf[rvs_embedded_sources[i].size] = '\0';
        *text = buf;
        *size = rvs_embedded_sources[i].size;
        snprintf(origin, origin_size, "embedded");
        rvs_log(RVS_LOG_DEBUG, "kernels", "%s: using embedded source", file_name);
        return RVS_OK;
    }
    rvs_log(RVS_LOG_ERROR, "kernels", "no kernel source named %s (embedded or override)",
            file_name);
    return RVS_ERR_KERNEL_SOURCE;
}
