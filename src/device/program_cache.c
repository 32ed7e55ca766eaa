/* program_cache.c: compiled program binaries, one file per (program, key) under
 * ${XDG_CACHE_HOME:-~/.cache}/rvsfit-cl/. The key hashes source, build options, platform,
 * device, driver and our version (src/device/program.c). An entry is written to a temporary file and
 * renamed, so readers never see half a file; an entry that fails validation is removed. */
#include <config.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/internal.h"

/* File layout: magic[8] | u32 format | key[32] | u64 size | sha256(binary)[32] | binary */
static const char cache_magic[8] = {'R', 'V', 'S', 'C', 'L', 'B', 'I', 'N'};
enum { CACHE_FORMAT = 1, CACHE_HEADER = 8 + 4 + 32 + 8 + 32 };

int rvs_program_cache_enabled(void)
{
    const char *env = getenv("RVSFIT_CL_CACHE");
    if (!env || !*env)
        return 1;
    if (strcmp(env, "0") == 0 || strcasecmp(env, "off") == 0 || strcasecmp(env, "no") == 0)
        return 0;
    if (strcmp(env, "1") != 0 && strcasecmp(env, "on") != 0 && strcasecmp(env, "yes") != 0) {
        /* e.g. a directory: the cache's place is XDG_CACHE_HOME, which a user may not know */
        static int warned;
        if (!warned)
            rvs_log(RVS_LOG_WARNING, "cache",
                    "RVSFIT_CL_CACHE=%s is neither 0/off/no nor 1/on/yes: the cache stays on; its "
                    "directory is ${XDG_CACHE_HOME:-~/.cache}/rvsfit-cl (set XDG_CACHE_HOME to move "
                    "it)", env);
        warned = 1;
    }
    return 1;
}

static int make_dir(const char *path)
{
    if (mkdir(path, 0755) == 0 || errno == EEXIST)
        return 1;
    return 0;
}

const char *rvs_program_cache_dir(void)
{
    static char dir[4096 + 16];
    static int resolved; /* 1 = usable, -1 = not */
    if (resolved)
        return resolved > 0 ? dir : NULL;
    const char *base = getenv("XDG_CACHE_HOME");
    char parent[4096];
    if (base && *base) {
        snprintf(parent, sizeof parent, "%s", base);
    } else {
        const char *home = getenv("HOME");
        if (!home || !*home) {
            rvs_log(RVS_LOG_WARNING, "cache",
                    "neither XDG_CACHE_HOME nor HOME is set: kernels will be compiled every run");
            resolved = -1;
            return NULL;
        }
        snprintf(parent, sizeof parent, "%s/.cache", home);
    }
    if ((size_t)snprintf(dir, sizeof dir, "%s/rvsfit-cl", parent) >= sizeof dir) {
        rvs_log(RVS_LOG_WARNING, "cache", "cache path too long: kernels will be compiled every run");
        resolved = -1;
        return NULL;
    }
    if (!make_dir(parent) || !make_dir(dir)) {
        rvs_log(RVS_LOG_WARNING, "cache",
                "cannot create cache directory %s (%s): kernels will be compiled every run", dir,
                strerror(errno));
        resolved = -1;
        return NULL;
    }
    resolved = 1;
    return dir;
}

static int entry_path(const char *program_name, const unsigned char key[32], char *path,
                      size_t size)
{
    const char *dir = rvs_program_cache_dir();
    if (!dir)
        return 0;
    char hex[65];
    rvs_sha256_hex(key, hex);
    snprintf(path, size, "%s/%s-%s.bin", dir, program_name, hex);
    return 1;
}

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

void rvs_program_cache_remove(const char *program_name, const unsigned char key[32])
{
    char path[4300];
    if (entry_path(program_name, key, path, sizeof path) && unlink(path) != 0 && errno != ENOENT)
        rvs_log(RVS_LOG_WARNING, "cache", "cannot remove %s: %s", path, strerror(errno));
}

int rvs_program_cache_load(const char *program_name, const unsigned char key[32],
                           unsigned char **binary, size_t *size, int *was_corrupt)
{
    int status = RVS_ERR_CACHE;
    char path[4300];
    unsigned char header[CACHE_HEADER];
    unsigned char *data = NULL;
    FILE *f = NULL;
    const char *why = NULL;
    *was_corrupt = 0;
    if (!entry_path(program_name, key, path, sizeof path))
        return RVS_ERR_CACHE;
    f = fopen(path, "rb");
    if (!f)
        return RVS_ERR_CACHE; /* a miss, not an error */
    if (fread(header, 1, sizeof header, f) != sizeof header) {
        why = "truncated header";
        goto cleanup;
    }
    if (memcmp(header, cache_magic, 8) != 0) {
        why = "bad magic";
        goto cleanup;
    }
    if (get_u32(header + 8) != CACHE_FORMAT) {
        why = "other cache format version";
        goto cleanup;
    }
    if (memcmp(header + 12, key, 32) != 0) {
        why = "key mismatch";
        goto cleanup;
    }
    uint64_t n = get_u64(header + 44);
    struct stat st;
    /* the size claimed must be what the file holds before anything that large is allocated
     * (tests/fuzz/fuzz_cache: a 93-byte entry claiming 2 GB was allocated) */
    if (n == 0 || n > ((uint64_t)1 << 31) || fstat(fileno(f), &st) != 0 ||
        (uint64_t)st.st_size != CACHE_HEADER + n) {
        why = "implausible binary size";
        goto cleanup;
    }
    data = rvs_malloc((size_t)n);
    if (!data) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    if (fread(data, 1, (size_t)n, f) != (size_t)n) {
        why = "truncated binary";
        goto cleanup;
    }
    if (fgetc(f) != EOF) {
        why = "trailing bytes";
        goto cleanup;
    }
    struct rvs_sha256 h;
    unsigned char digest[32];
    rvs_sha256_init(&h);
    rvs_sha256_update(&h, data, (size_t)n);
    rvs_sha256_final(&h, digest);
    if (memcmp(digest, header + 52, 32) != 0) {
        why = "checksum mismatch";
        goto cleanup;
    }
    *binary = data;
    *size = (size_t)n;
    data = NULL;
    status = RVS_OK;
cleanup:
    if (f)
        fclose(f);
    free(data);
    if (why) {
        rvs_log(RVS_LOG_WARNING, "cache", "removing corrupt cache entry %s (%s); rebuilding from source",
                path, why);
        *was_corrupt = 1;
        if (unlink(path) != 0 && errno != ENOENT)
            rvs_log(RVS_LOG_WARNING, "cache", "cannot remove %s: %s", path, strerror(errno));
    }
    return status;
}

int rvs_program_cache_store(const char *program_name, const unsigned char key[32],
                            const unsigned char *binary, size_t size)
{
    char path[4300], tmp[4400];
    if (!entry_path(program_name, key, path, sizeof path))
        return RVS_ERR_CACHE;
    snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        rvs_log(RVS_LOG_WARNING, "cache", "cannot create %s: %s", tmp, strerror(errno));
        return RVS_ERR_IO;
    }
    unsigned char header[CACHE_HEADER];
    memcpy(header, cache_magic, 8);
    put_u32(header + 8, CACHE_FORMAT);
    memcpy(header + 12, key, 32);
    put_u64(header + 44, size);
    struct rvs_sha256 h;
    rvs_sha256_init(&h);
    rvs_sha256_update(&h, binary, size);
    rvs_sha256_final(&h, header + 52);
    FILE *f = fdopen(fd, "wb");
    int ok = f != NULL;
    if (!f)
        close(fd);
    ok = ok && fwrite(header, 1, sizeof header, f) == sizeof header;
    ok = ok && fwrite(binary, 1, size, f) == size;
    if (f && fclose(f) != 0)
        ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        rvs_log(RVS_LOG_WARNING, "cache", "cannot write cache entry %s: %s", path,
                strerror(errno));
        unlink(tmp);
        return RVS_ERR_IO;
    }
    rvs_log(RVS_LOG_DEBUG, "cache", "stored %s (%zu bytes)", path, size);
    return RVS_OK;
}
