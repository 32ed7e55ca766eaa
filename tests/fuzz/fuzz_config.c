/* fuzz_config.c: the YAML configuration reader (src/run/config.c, libyaml) on arbitrary bytes:
 * rvs_config_read as rvsfit-cl --config calls it, then the configuration is freed. */
#include <config.h>

#include "fuzz_common.h"
#include "rvsfit/config.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fuzz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[640];
    fuzz_write("config.yaml", data, size, path, sizeof path);
    struct rvs_config c;
    rvs_config_init(&c);
    (void)rvs_config_read(path, &c);
    rvs_config_free(&c);
    return 0;
}
