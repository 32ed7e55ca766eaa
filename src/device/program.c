/* program.c: builds cl/<name>.cl for a context: common.clh is prepended, the result is looked
 * up in the binary cache and otherwise compiled from source and stored. A compile failure
 * reports the kernel's name, where its source came from, and the compiler's log. */
#include <config.h>

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/internal.h"

struct rvs_program_entry {
    char name[64];
    cl_program program;
    struct rvs_program_entry *next;
};

void rvs_program_entries_free(struct rvs_program_entry *entries)
{
    while (entries) {
        struct rvs_program_entry *next = entries->next;
        if (entries->program)
            clReleaseProgram(entries->program);
        free(entries);
        entries = next;
    }
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Source given to the compiler: common.clh, then the kernel file; #line keeps the compiler's
 * messages pointing at the right file and line. */
static unsigned count_lines(const char *s)
{
    unsigned n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static int compose_source(const char *name, char **source, char *origin, size_t origin_size,
                          struct rvs_source_lines *lines)
{
    int status = RVS_OK;
    char *common = NULL, *body = NULL, *text = NULL;
    size_t common_size = 0, body_size = 0;
    char common_origin[512], file[80];
    snprintf(file, sizeof file, "%s.cl", name);
    RVS_TRY(rvs_kernel_source_load("common.clh", &common, &common_size, common_origin,
                                   sizeof common_origin));
    RVS_TRY(rvs_kernel_source_load(file, &body, &body_size, origin, origin_size));
    size_t n = common_size + body_size + strlen(file) + 64;
    text = rvs_malloc(n);
    if (!text) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    snprintf(text, n, "#line 1 \"common.clh\"\n%s\n#line 1 \"%s\"\n%s", common, file, body);
    lines->common_last = 1 + count_lines(common) + 1;
    lines->body_first = lines->common_last + 2;
    *source = text;
    text = NULL;
cleanup:
    free(common);
    free(body);
    free(text);
    return status;
}

static void cache_key(const struct rvs_context *ctx, const char *source, unsigned char key[32])
{
    struct rvs_sha256 h;
    const char *parts[] = {PACKAGE_VERSION,
                           ctx->caps.platform_name,
                           ctx->caps.platform_version,
                           ctx->caps.device_name,
                           ctx->caps.device_version,
                           ctx->caps.driver_version,
                           ctx->build_options,
                           source};
    rvs_sha256_init(&h);
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        rvs_sha256_update(&h, parts[i], strlen(parts[i]) + 1); /* NUL separates the fields */
    rvs_sha256_final(&h, key);
}

/* Some compilers (NVIDIA's) ignore #line and report "<kernel>:N:" in the composed source;
 * rewrite those references to "file.cl:M:" / "common.clh:M:" so the log points at real files. */
char *rvs_program_translate_log(const char *log, const char *name,
                                const struct rvs_source_lines *lines)
{
    static const char tag[] = "<kernel>:";
    size_t cap = strlen(log) * 2 + 256, len = 0;
    char *out = rvs_malloc(cap);
    if (!out)
        return NULL;
    const char *p = log;
    while (*p) {
        char *end;
        unsigned long n;
        if (strncmp(p, tag, sizeof tag - 1) == 0 &&
            (n = strtoul(p + sizeof tag - 1, &end, 10)) > 0 && *end == ':' && len + 128 < cap) {
            if (n >= lines->body_first)
                len += (size_t)snprintf(out + len, cap - len, "%s.cl:%lu", name,
                                        n - lines->body_first + 1);
            else if (n >= 2 && n <= lines->common_last)
                len += (size_t)snprintf(out + len, cap - len, "common.clh:%lu", n - 1);
            else
                len += (size_t)snprintf(out + len, cap - len, "<kernel>:%lu", n);
            p = end;
            continue;
        }
        if (len + 2 >= cap)
            break;
        out[len++] = *p++;
    }
    out[len] = '\0';
    return out;
}

static void log_build_failure(const struct rvs_context *ctx, cl_program program, const char *name,
                              const char *origin, const struct rvs_source_lines *lines)
{
    size_t log_size = 0;
    char *log = NULL;
    if (clGetProgramBuildInfo(program, ctx->caps.device, CL_PROGRAM_BUILD_LOG, 0, NULL,
                              &log_size) == CL_SUCCESS &&
        (log = rvs_malloc(log_size + 1)) != NULL &&
        clGetProgramBuildInfo(program, ctx->caps.device, CL_PROGRAM_BUILD_LOG, log_size, log,
                              NULL) == CL_SUCCESS) {
        log[log_size] = '\0';
    } else if (log) {
        snprintf(log, log_size + 1, "(no build log)");
    }
    char *readable = log ? rvs_program_translate_log(log, name, lines) : NULL;
    rvs_log(RVS_LOG_ERROR, "kernels",
            "kernel '%s' (%s source) failed to compile for %s with options '%s'.\n"
            "--- compiler log ---\n%s\n--- end of compiler log ---",
            name, origin, ctx->caps.device_name, ctx->build_options,
            readable ? readable : log ? log : "(no build log)");
    free(readable);
    free(log);
}

/* Tries the cache; on success *program is built and ready. */
static int build_from_cache(struct rvs_context *ctx, const char *name, const unsigned char key[32],
                            cl_program *program)
{
    unsigned char *binary = NULL;
    size_t size = 0;
    int corrupt = 0;
    int status = rvs_program_cache_load(name, key, &binary, &size, &corrupt);
    if (corrupt)
        ctx->stats.cache_rejected++;
    if (status != RVS_OK)
        return status;
    cl_int err, binary_status = CL_SUCCESS;
    const unsigned char *bins[1] = {binary};
    cl_program p = clCreateProgramWithBinary(ctx->context, 1, &ctx->caps.device, &size, bins,
                                             &binary_status, &err);
    free(binary);
    if (err == CL_SUCCESS && binary_status == CL_SUCCESS)
        err = clBuildProgram(p, 1, &ctx->caps.device, ctx->build_options, NULL, NULL);
    if (err != CL_SUCCESS || binary_status != CL_SUCCESS) {
        /* The driver refused what it once produced (an update, a damaged file): start over. */
        rvs_log(RVS_LOG_WARNING, "cache",
                "cached binary of '%s' rejected by the driver (%s); removed, rebuilding from "
                "source",
                name, rvs_strerror(err != CL_SUCCESS ? err : binary_status));
        if (p)
            clReleaseProgram(p);
        rvs_program_cache_remove(name, key);
        ctx->stats.cache_rejected++;
        return RVS_ERR_CACHE;
    }
    *program = p;
    return RVS_OK;
}

static void store_binary(struct rvs_context *ctx, cl_program program, const char *name,
                         const unsigned char key[32])
{
    size_t size = 0;
    unsigned char *binary = NULL;
    if (clGetProgramInfo(program, CL_PROGRAM_BINARY_SIZES, sizeof size, &size, NULL) !=
            CL_SUCCESS ||
        size == 0) {
        rvs_log(RVS_LOG_INFO, "cache", "driver offers no binary for '%s'; not cached", name);
        return;
    }
    binary = rvs_malloc(size);
    if (!binary)
        return;
    unsigned char *bins[1] = {binary};
    if (clGetProgramInfo(program, CL_PROGRAM_BINARIES, sizeof bins, bins, NULL) == CL_SUCCESS)
        rvs_program_cache_store(name, key, binary, size);
    else
        rvs_log(RVS_LOG_WARNING, "cache", "cannot read back the binary of '%s'; not cached",
                name);
    free(binary);
}

static int build_program(struct rvs_context *ctx, const char *name, cl_program *out)
{
    int status = RVS_OK;
    char *source = NULL;
    char origin[600];
    cl_program program = NULL;
    unsigned char key[32];
    double t0 = now_seconds();

    struct rvs_source_lines lines;
    RVS_TRY(compose_source(name, &source, origin, sizeof origin, &lines));
    int use_cache = rvs_program_cache_enabled();
    cache_key(ctx, source, key);
    if (use_cache && build_from_cache(ctx, name, key, &program) == RVS_OK) {
        ctx->stats.loaded_from_cache++;
        rvs_log(RVS_LOG_INFO, "kernels", "%s: loaded from binary cache in %.2f s", name,
                now_seconds() - t0);
        *out = program;
        program = NULL;
        goto cleanup;
    }
    cl_int err;
    const char *sources[1] = {source};
    program = clCreateProgramWithSource(ctx->context, 1, sources, NULL, &err);
    RVS_CL_CHECK_ERR(err, "clCreateProgramWithSource");
    err = clBuildProgram(program, 1, &ctx->caps.device, ctx->build_options, NULL, NULL);
    if (err == CL_BUILD_PROGRAM_FAILURE || err == CL_INVALID_BUILD_OPTIONS) {
        log_build_failure(ctx, program, name, origin, &lines);
        status = RVS_ERR_KERNEL_BUILD;
        goto cleanup;
    }
    RVS_CL_CHECK_ERR(err, "clBuildProgram");
    ctx->stats.built_from_source++;
    rvs_log(RVS_LOG_INFO, "kernels", "%s: built from %s source in %.2f s", name, origin,
            now_seconds() - t0);
    if (use_cache)
        store_binary(ctx, program, name, key);
    *out = program;
    program = NULL;
cleanup:
    if (program)
        clReleaseProgram(program);
    free(source);
    return status;
}

int rvs_context_program(struct rvs_context *ctx, const char *name, cl_program *program)
{
    if (strlen(name) >= sizeof ctx->programs->name)
        return RVS_ERR_INVALID_ARGUMENT;
    for (struct rvs_program_entry *e = ctx->programs; e; e = e->next)
        if (strcmp(e->name, name) == 0) {
            *program = e->program;
            return RVS_OK;
        }
    struct rvs_program_entry *entry = rvs_calloc(1, sizeof *entry);
    if (!entry)
        return RVS_ERR_NOMEM;
    int status = build_program(ctx, name, &entry->program);
    if (status != RVS_OK) {
        free(entry);
        return status;
    }
    snprintf(entry->name, sizeof entry->name, "%s", name);
    entry->next = ctx->programs;
    ctx->programs = entry;
    *program = entry->program;
    return RVS_OK;
}

int rvs_context_kernel(struct rvs_context *ctx, const char *program_name, const char *kernel_name,
                       cl_kernel *kernel)
{
    int status = RVS_OK;
    cl_program program;
    RVS_TRY(rvs_context_program(ctx, program_name, &program));
    cl_int err;
    *kernel = clCreateKernel(program, kernel_name, &err);
    if (err != CL_SUCCESS) {
        rvs_log(RVS_LOG_ERROR, "kernels", "kernel %s not found in program %s: %s", kernel_name,
                program_name, rvs_strerror(err));
        status = err;
    }
cleanup:
    return status;
}
