/* util.c: allocation helpers that log, C-locale formatting, OpenCL failure logging, version. */
#include <config.h>

#include <locale.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/internal.h"

void *rvs_malloc(size_t size)
{
    void *p = malloc(size ? size : 1);
    if (!p)
        rvs_log(RVS_LOG_ERROR, "memory", "cannot allocate %zu bytes of host memory", size);
    return p;
}

void *rvs_calloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        rvs_log(RVS_LOG_ERROR, "memory", "cannot allocate %zu x %zu bytes of host memory", count,
                size);
    return p;
}

char *rvs_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = rvs_malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

int rvs_snprintf_c(char *buf, size_t size, const char *fmt, ...)
{
    /* uselocale() switches only this thread; the process locale stays as the user set it. */
    locale_t c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    locale_t previous = c_locale ? uselocale(c_locale) : (locale_t)0;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    if (c_locale) {
        uselocale(previous);
        freelocale(c_locale);
    }
    return n;
}

void rvs_cl_log_failure(int err, const char *call, const char *file, int line)
{
    rvs_log(RVS_LOG_ERROR, "opencl", "%s failed: %s (%d) at %s:%d", call, rvs_strerror(err), err,
            file, line);
}

const char *rvs_version(void) { return PACKAGE_VERSION; }
