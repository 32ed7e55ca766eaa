/* datadir.c: where the installed data are (the default template library in default/, desitarget's
 * bit tables in desitarget/): $RVSFIT_CL_DATADIR; else the data directory beside the running
 * program, found from its own path the way the install laid them out (bindir -> pkgdatadir,
 * "../share/rvsfit-cl" by default); else the pkgdatadir compiled in; else the source tree's
 * data/ (a build that was never installed, as after the README's quick start).
 *
 * Why beside the program first: an installed tree that is moved, unpacked elsewhere or staged
 * (make install DESTDIR=..., a relocatable tarball, a container layer) still finds its own data,
 * and a program never reads another installation's data that happens to sit at the compiled-in
 * path. The compiled-in path stays the answer for programs that are not rvsfit-cl's (a user's
 * program linked with librvsfit, whose bin/ has no data beside it). */
#include <config.h>

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/internal.h"

#ifndef RVS_PKGDATADIR
#define RVS_PKGDATADIR "/usr/local/share/rvsfit-cl"
#endif
#ifndef RVS_BINDIR
#define RVS_BINDIR "/usr/local/bin"
#endif

static int is_directory(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Next component of an absolute path: *p moves past it; its length, 0 at the end. */
static size_t next_component(const char **p)
{
    while (**p == '/')
        (*p)++;
    const char *start = *p;
    while (**p && **p != '/')
        (*p)++;
    return (size_t)(*p - start);
}

int rvs_data_dir_relative(const char *from, const char *to, char *out, size_t size)
{
    const char *f = from, *t = to;
    /* skip the components both share */
    for (;;) {
        const char *f0 = f, *t0 = t;
        size_t nf = next_component(&f), nt = next_component(&t);
        if (nf == 0 || nf != nt || memcmp(f - nf, t - nt, nf) != 0) {
            f = f0;
            t = t0;
            break;
        }
    }
    size_t len = 0;
    out[0] = '\0';
    while (next_component(&f) > 0) {
        if (len + 4 > size)
            return -1;
        memcpy(out + len, "../", 4);
        len += 3;
    }
    while (*t == '/')
        t++;
    size_t rest = strlen(t);
    if (len + rest + 1 > size)
        return -1;
    memcpy(out + len, t, rest + 1);
    len += rest;
    while (len > 0 && out[len - 1] == '/') /* "../" alone: from lies below to */
        out[--len] = '\0';
    if (len == 0 && size >= 2)
        strcpy(out, ".");
    return 0;
}

static pthread_once_t beside_once = PTHREAD_ONCE_INIT;
static char beside_program[PATH_MAX];

static void find_beside_program(void)
{
    char exe[PATH_MAX], rel[PATH_MAX];
    /* Linux names the running executable here; elsewhere the lookup is simply skipped */
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash)
        return;
    *slash = '\0';
    if (rvs_data_dir_relative(RVS_BINDIR, RVS_PKGDATADIR, rel, sizeof rel) != 0)
        return;
    char candidate[2 * PATH_MAX + 2];
    snprintf(candidate, sizeof candidate, "%s/%s", exe, rel);
    /* "/opt/x/share/rvsfit-cl", not "/opt/x/bin/../share/rvsfit-cl", in messages */
    if (is_directory(candidate) && !realpath(candidate, beside_program))
        beside_program[0] = '\0';
}

const char *rvs_data_dir(void)
{
    const char *env = getenv("RVSFIT_CL_DATADIR");
    if (env && *env)
        return env;
    pthread_once(&beside_once, find_beside_program);
    if (beside_program[0])
        return beside_program;
    if (is_directory(RVS_PKGDATADIR))
        return RVS_PKGDATADIR;
    return RVS_SRCDATADIR;
}
