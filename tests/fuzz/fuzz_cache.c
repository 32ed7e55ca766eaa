/* fuzz_cache.c: the kernel-cache entry reader (src/device/program_cache.c) on arbitrary bytes written
 * as the entry of a fixed (program, key). Entries are checked for magic, format, key, size and a
 * SHA-256 of the binary; to get past the last two, odd-sized inputs get the key and, where the
 * stated size fits the input, the digest patched in (even-sized ones are read as they are). A
 * corrupt entry is removed by the reader, so every input is written afresh. */
#include <config.h>

#include "fuzz_common.h"
#include "base/internal.h"

static unsigned char fuzz_key[32];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fuzz_quiet();
    setenv("XDG_CACHE_HOME", fuzz_dir(), 1);
    unsetenv("RVSFIT_CL_CACHE");
    struct rvs_sha256 h;
    rvs_sha256_init(&h);
    rvs_sha256_update(&h, "fuzz", 4);
    rvs_sha256_final(&h, fuzz_key);
    return 0;
}

/* layout (src/device/program_cache.c): magic[8] u32 format, key[32], u64 size, sha256[32], binary */
enum { KEY_AT = 12, SIZE_AT = 44, SHA_AT = 52, HEADER = 84 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *dir = rvs_program_cache_dir();
    if (!dir)
        abort(); /* the harness's own directory: not a finding */
    char hex[65], name[128], path[700];
    rvs_sha256_hex(fuzz_key, hex);
    snprintf(name, sizeof name, "fuzzprog-%s.bin", hex);
    unsigned char *entry = malloc(size ? size : 1);
    if (!entry)
        return 0;
    memcpy(entry, data, size);
    if ((size & 1) && size >= HEADER) {
        memcpy(entry + KEY_AT, fuzz_key, 32);
        uint64_t n = 0;
        for (int i = 7; i >= 0; i--)
            n = n << 8 | entry[SIZE_AT + i];
        if (n <= size - HEADER) {
            struct rvs_sha256 h;
            rvs_sha256_init(&h);
            rvs_sha256_update(&h, entry + HEADER, (size_t)n);
            rvs_sha256_final(&h, entry + SHA_AT);
        }
    }
    /* the entry goes where the reader looks: <cache dir>/<program>-<hex key>.bin */
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(entry, 1, size, f) != size) || fclose(f) != 0)
        abort();
    free(entry);
    unsigned char *binary = NULL;
    size_t nbin = 0;
    int corrupt = 0;
    if (rvs_program_cache_load("fuzzprog", fuzz_key, &binary, &nbin, &corrupt) == RVS_OK)
        free(binary);
    return 0;
}
