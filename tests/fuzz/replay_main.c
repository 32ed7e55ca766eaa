/* replay_main.c: a main() for the fuzz targets without libFuzzer: runs LLVMFuzzerTestOneInput
 * once on every file named, or on every file of every directory named (a corpus). Without
 * arguments (make check runs it so) it replays the kept findings of its target,
 * $top_srcdir/tests/fuzz/regress/<target>/ (the program is named replay_<target>);
 * tests/test_fuzz.sh replays the seeds too. Exit 0 when every input ran; a finding aborts. */
#include <config.h>

#include <dirent.h>

#include "fuzz_common.h"

static size_t replayed;

static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return 1;
    }
    size_t cap = 1 << 16, n = 0;
    unsigned char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            unsigned char *more = realloc(buf, cap *= 2);
            if (!more) {
                free(buf);
                buf = NULL;
            }
            buf = more;
        }
    }
    int bad = ferror(f) || !buf;
    fclose(f);
    if (bad) {
        fprintf(stderr, "%s: cannot read\n", path);
        free(buf);
        return 1;
    }
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    replayed++;
    return 0;
}

int main(int argc, char **argv)
{
    int bad = 0;
    char kept[4096];
    char *kept_argv[3] = {argv[0], kept, NULL};
    if (argc < 2) {
        const char *base = strrchr(argv[0], '/');
        base = base ? base + 1 : argv[0];
        if (strncmp(base, "replay_", 7) == 0)
            base += 7;
        const char *top = getenv("top_srcdir");
        snprintf(kept, sizeof kept, "%s/tests/fuzz/regress/%s", top ? top : ".", base);
        struct stat st;
        if (stat(kept, &st) != 0) {
            printf("%s: no kept findings for this target (%s)\n", argv[0], kept);
            return 0;
        }
        argc = 2;
        argv = kept_argv;
    }
    LLVMFuzzerInitialize(&argc, &argv);
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            perror(argv[i]);
            bad = 1;
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            bad |= replay_file(argv[i]);
            continue;
        }
        DIR *d = opendir(argv[i]);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", argv[i], e->d_name);
            bad |= replay_file(p);
        }
        if (d)
            closedir(d);
    }
    printf("%s: %zu inputs replayed\n", argv[0], replayed);
    return bad;
}
