/* files.c: writing a file so that it appears whole or not at all: directories made on the way,
 * a reserved hidden temporary beside the destination (stale ones of dead processes removed),
 * flushed and renamed over the destination; the live temporaries are kept in a table the signal
 * handler (src/desi/output_files.c) can empty. Used by every writer: rvtab/rvmod, libraries,
 * figures, mocks. */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "base/files.h"
#include "base/internal.h"

int rvs_file_mkdirs(const char *dir)
{
    int status = RVS_OK;
    char *copy = rvs_strdup(dir);
    if (!copy)
        return RVS_ERR_NOMEM;
    /* Create each prefix in turn; an existing one is fine when it is a directory. */
    for (char *p = copy + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char saved = *p;
        *p = '\0';
        struct stat st;
        if (mkdir(copy, 0777) != 0 && errno != EEXIST) {
            rvs_log(RVS_LOG_ERROR, "output",
                    "cannot create output directory '%s': %s; choose a writable --output-dir",
                    copy, strerror(errno));
            status = RVS_ERR_IO;
            goto cleanup;
        }
        if (stat(copy, &st) != 0 || !S_ISDIR(st.st_mode)) {
            rvs_log(RVS_LOG_ERROR, "output",
                    "output path '%s' exists and is not a directory; choose another --output-dir",
                    copy);
            status = RVS_ERR_IO;
            goto cleanup;
        }
        *p = saved;
        if (saved == '\0')
            break;
    }
cleanup:
    free(copy);
    return status;
}

int rvs_file_mkdirs_for(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return RVS_OK;
    if (slash == path)
        return RVS_OK; /* the root */
    char *dir = rvs_malloc((size_t)(slash - path) + 1);
    if (!dir)
        return RVS_ERR_NOMEM;
    memcpy(dir, path, (size_t)(slash - path));
    dir[slash - path] = '\0';
    int status = rvs_file_mkdirs(dir);
    free(dir);
    return status;
}

/* Temporary outputs being written, so that SIGINT/SIGTERM/SIGHUP can remove them: a fixed
 * table (no allocation in the handler), slots claimed with atomics by the writer threads. */
enum { TMP_SLOTS = 64, TMP_PATH_MAX = 4096 };
static char tmp_slot_path[TMP_SLOTS][TMP_PATH_MAX];
static atomic_int tmp_slot_state[TMP_SLOTS]; /* 0 free, 1 being filled, 2 a live temporary */

static void tmp_register(const char *path)
{
    if (strlen(path) >= TMP_PATH_MAX)
        return;
    for (int i = 0; i < TMP_SLOTS; i++) {
        int expect = 0;
        if (atomic_compare_exchange_strong(&tmp_slot_state[i], &expect, 1)) {
            memcpy(tmp_slot_path[i], path, strlen(path) + 1);
            atomic_store(&tmp_slot_state[i], 2);
            return;
        }
    }
}

static void tmp_unregister(const char *path)
{
    for (int i = 0; i < TMP_SLOTS; i++)
        if (atomic_load(&tmp_slot_state[i]) == 2 && strcmp(tmp_slot_path[i], path) == 0) {
            atomic_store(&tmp_slot_state[i], 0);
            return;
        }
}

void rvs_file_remove_reserved(void)
{
    /* async-signal-safe: atomics and unlink only */
    for (int i = 0; i < TMP_SLOTS; i++)
        if (atomic_load(&tmp_slot_state[i]) == 2)
            unlink(tmp_slot_path[i]);
}

void rvs_file_tmp_done(const char *tmp_path)
{
    if (tmp_path)
        tmp_unregister(tmp_path);
}

/* Removes the ".<name>.<pid>.<n>.tmp" files of a destination directory left by processes that
 * no longer run (killed with SIGKILL, or a crash): they are never anyone's output. Each
 * directory is scanned once per process (the first write into it), not at every write: with
 * --no-subdirs one directory can hold the outputs of thousands of inputs. */
static pthread_mutex_t stale_lock = PTHREAD_MUTEX_INITIALIZER;
static char **stale_scanned;
static size_t stale_nscanned;

static int stale_first_visit(const char *dpath)
{
    int first = 1;
    pthread_mutex_lock(&stale_lock);
    for (size_t i = 0; i < stale_nscanned && first; i++)
        first = strcmp(stale_scanned[i], dpath) != 0;
    if (first) {
        char **grown = realloc(stale_scanned, (stale_nscanned + 1) * sizeof *grown);
        char *copy = grown ? strdup(dpath) : NULL;
        if (grown)
            stale_scanned = grown;
        if (copy)
            stale_scanned[stale_nscanned++] = copy;
    }
    pthread_mutex_unlock(&stale_lock);
    return first;
}

static void remove_stale_tmp(const char *dir, size_t dir_len)
{
    char dpath[TMP_PATH_MAX];
    snprintf(dpath, sizeof dpath, "%.*s", dir_len ? (int)dir_len : 1, dir_len ? dir : ".");
    if (!stale_first_visit(dpath))
        return;
    DIR *d = opendir(dpath);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        size_t len = strlen(n);
        if (n[0] != '.' || len < 8 || strcmp(n + len - 4, ".tmp") != 0)
            continue;
        /* ".<name>.<pid>.<n>.tmp": the pid is the field before the counter */
        const char *dot2 = n + len - 4, *dot1 = dot2;
        while (dot1 > n && dot1[-1] != '.')
            dot1--;
        if (dot1 <= n + 1)
            continue;
        const char *p = dot1 - 1;
        while (p > n && p[-1] != '.')
            p--;
        char *end = NULL;
        long pid = strtol(p, &end, 10);
        if (p <= n + 1 || end != dot1 - 1 || pid <= 0)
            continue;
        if (pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        char full[2 * TMP_PATH_MAX];
        snprintf(full, sizeof full, "%s/%s", dpath, n);
        if (unlink(full) == 0)
            rvs_log(RVS_LOG_INFO, "output", "removed %s, left by process %ld that no longer runs",
                    full, pid);
    }
    closedir(d);
}

int rvs_file_reserve_tmp(const char *final_path, char **tmp_path)
{
    static atomic_uint counter;
    *tmp_path = NULL;
    const char *slash = strrchr(final_path, '/');
    size_t dir_len = slash ? (size_t)(slash - final_path) + 1 : 0;
    const char *base = final_path + dir_len;
    size_t cap = strlen(final_path) + 64;
    char *name = rvs_malloc(cap);
    if (!name)
        return RVS_ERR_NOMEM;
    /* Hidden, in the destination directory (so rename() stays within one file system), unique
     * per process and call; O_EXCL makes the reservation race-free against other writers. */
    remove_stale_tmp(final_path, dir_len);
    for (int attempt = 0; attempt < 100; attempt++) {
        unsigned n = atomic_fetch_add(&counter, 1u);
        snprintf(name, cap, "%.*s.%s.%ld.%u.tmp", (int)dir_len, final_path, base, (long)getpid(),
                 n);
        int fd = open(name, O_WRONLY | O_CREAT | O_EXCL, 0666);
        if (fd >= 0) {
            close(fd);
            tmp_register(name);
            *tmp_path = name;
            return RVS_OK;
        }
        if (errno != EEXIST) {
            rvs_log(RVS_LOG_ERROR, "output",
                    "cannot create a file in the directory of '%s': %s; check that the output "
                    "directory is writable",
                    final_path, strerror(errno));
            free(name);
            return RVS_ERR_IO;
        }
    }
    rvs_log(RVS_LOG_ERROR, "output", "cannot find a free temporary name for '%s'", final_path);
    free(name);
    return RVS_ERR_IO;
}

int rvs_file_commit(const char *tmp_path, const char *final_path)
{
    /* fsync first: after a system crash the renamed file must not be empty. */
    int fd = open(tmp_path, O_RDONLY);
    if (fd < 0 || fsync(fd) != 0) {
        rvs_log(RVS_LOG_ERROR, "output", "cannot flush '%s' to disk: %s", tmp_path,
                strerror(errno));
        if (fd >= 0)
            close(fd);
        return RVS_ERR_IO;
    }
    close(fd);
    if (rename(tmp_path, final_path) != 0) {
        rvs_log(RVS_LOG_ERROR, "output", "cannot rename '%s' to '%s': %s", tmp_path, final_path,
                strerror(errno));
        return RVS_ERR_IO;
    }
    tmp_unregister(tmp_path);
    return RVS_OK;
}

