/* test_sha256.c: the cache's hash against FIPS 180-4 test vectors. */
#include <config.h>

#include <string.h>

#include "base/internal.h"
#include "testutil.h"

static void check_vector(const char *msg, size_t repeat, const char *want)
{
    struct rvs_sha256 h;
    unsigned char digest[32];
    char hex[65];
    rvs_sha256_init(&h);
    for (size_t i = 0; i < repeat; i++)
        rvs_sha256_update(&h, msg, strlen(msg));
    rvs_sha256_final(&h, digest);
    rvs_sha256_hex(digest, hex);
    CHECK(strcmp(hex, want) == 0, "sha256(\"%s\" x %zu) = %s, want %s", msg, repeat, hex, want);
}

int main(void)
{
    check_vector("", 1, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    check_vector("abc", 1, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    check_vector("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 1,
                 "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    check_vector("a", 1000000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    return test_finish("test_sha256");
}
