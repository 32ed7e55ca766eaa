/* run_files.c: the input lists of rvs_desi_fit: --input-file-from (a text file of names, one a
 * line) and --queue-file (the same file shared by several processes, each popping the first
 * line; rvspecfit's utils.FileQueue.read_next).
 *
 * rvspecfit locks the queue by renaming it to a per-process name and retries for a while when it
 * is gone; a process killed in between leaves the queue renamed. Here the queue keeps its name
 * and is locked with fcntl (POSIX record locks, which also work on NFS through lockd); the kernel
 * drops the lock when a process dies. The pop rewrites the file in place under the lock. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/internal.h"
#include "rvsfit/run.h"

#define MODULE "run"

void rvs_run_free_lines(char **lines, size_t count)
{
    if (!lines)
        return;
    for (size_t i = 0; i < count; i++)
        free(lines[i]);
    free(lines);
}

/* Splits text into trimmed non-empty lines. */
static int split_lines(const char *text, size_t size, char ***lines, size_t *count)
{
    int status = RVS_OK;
    char **out = NULL;
    size_t n = 0, cap = 0;
    size_t i = 0;
    while (i < size) {
        size_t start = i;
        while (i < size && text[i] != '\n')
            i++;
        size_t end = i;
        i++; /* past '\n' */
        while (end > start && (text[end - 1] == ' ' || text[end - 1] == '\t' ||
                               text[end - 1] == '\r'))
            end--;
        if (end == start)
            continue;
        if (n == cap) {
            size_t ncap = cap ? 2 * cap : 16;
            char **grown = realloc(out, ncap * sizeof *grown);
            if (!grown) {
                rvs_log(RVS_LOG_ERROR, MODULE, "out of memory reading a file list");
                status = RVS_ERR_NOMEM;
                goto cleanup;
            }
            out = grown;
            cap = ncap;
        }
        out[n] = rvs_malloc(end - start + 1);
        if (!out[n]) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        memcpy(out[n], text + start, end - start);
        out[n][end - start] = '\0';
        n++;
    }
    *lines = out;
    *count = n;
    out = NULL;
    n = 0;
cleanup:
    rvs_run_free_lines(out, n);
    return status;
}

/* Reads what is left of an open descriptor into a NUL-terminated buffer. */
static int read_all(int fd, const char *path, char **text, size_t *size)
{
    size_t cap = 4096, n = 0;
    char *buf = rvs_malloc(cap + 1);
    if (!buf)
        return RVS_ERR_NOMEM;
    for (;;) {
        if (n == cap) {
            char *grown = realloc(buf, 2 * cap + 1);
            if (!grown) {
                free(buf);
                rvs_log(RVS_LOG_ERROR, MODULE, "out of memory reading %s", path);
                return RVS_ERR_NOMEM;
            }
            buf = grown;
            cap *= 2;
        }
        ssize_t got = read(fd, buf + n, cap - n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            rvs_log(RVS_LOG_ERROR, MODULE, "cannot read %s: %s", path, strerror(errno));
            free(buf);
            return RVS_ERR_IO;
        }
        if (got == 0)
            break;
        n += (size_t)got;
    }
    buf[n] = '\0';
    *text = buf;
    *size = n;
    return RVS_OK;
}

int rvs_run_read_lines(const char *path, char ***lines, size_t *count)
{
    int status = RVS_OK;
    char *text = NULL;
    size_t size = 0;
    *lines = NULL;
    *count = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        rvs_log(RVS_LOG_ERROR, MODULE, "cannot open the file list %s: %s", path,
                strerror(errno));
        return RVS_ERR_IO;
    }
    RVS_TRY(read_all(fd, path, &text, &size));
    if (memchr(text, '\0', size)) {
        rvs_log(RVS_LOG_ERROR, MODULE,
                "%s is not a text file of names (one a line); is it a FITS file given to "
                "--input-file-from by mistake?",
                path);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    RVS_TRY(split_lines(text, size, lines, count));
cleanup:
    free(text);
    close(fd);
    return status;
}

/* Writes all of buf at the start of fd and truncates after it. */
static int rewrite(int fd, const char *path, const char *buf, size_t size)
{
    if (lseek(fd, 0, SEEK_SET) < 0)
        goto fail;
    size_t done = 0;
    while (done < size) {
        ssize_t w = write(fd, buf + done, size - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            goto fail;
        done += (size_t)w;
    }
    if (ftruncate(fd, (off_t)size) != 0 || fsync(fd) != 0)
        goto fail;
    return RVS_OK;
fail:
    rvs_log(RVS_LOG_ERROR, MODULE, "cannot rewrite the queue file %s: %s", path,
            strerror(errno));
    return RVS_ERR_IO;
}

/* The claims ledger of a queue (issue 19): "<pid> <host> <name>" per input a worker has popped
 * and not finished, in LIST.claims, read and rewritten only under the queue's lock. A claim of a
 * process on this host that no longer runs goes back to the head of the queue at the next pop,
 * so an input is never lost when its worker is killed. (Claims of other hosts cannot be checked
 * from here; they stay until their worker finishes or a process on their host pops.) */
static char *claims_path(const char *path)
{
    size_t n = strlen(path) + 8;
    char *p = rvs_malloc(n);
    if (p)
        snprintf(p, n, "%s.claims", path);
    return p;
}

static int read_text_file(const char *path, char **text, size_t *size)
{
    *text = NULL;
    *size = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        if (errno == ENOENT)
            return RVS_OK;
        rvs_log(RVS_LOG_ERROR, MODULE, "cannot read %s: %s", path, strerror(errno));
        return RVS_ERR_IO;
    }
    int status = read_all(fd, path, text, size);
    close(fd);
    return status;
}

static int write_text_file(const char *path, const char *text, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    if (fd < 0) {
        rvs_log(RVS_LOG_ERROR, MODULE, "cannot write the queue's claims %s: %s", path,
                strerror(errno));
        return RVS_ERR_IO;
    }
    int status = rewrite(fd, path, text, size);
    close(fd);
    return status;
}

/* Splits the ledger into the claims kept (appended to *keep) and the names of dead local
 * workers (appended to *back, one a line). */
static int sort_claims(const char *text, size_t size, const char *host, char **keep, size_t *nk,
                       char **back, size_t *nb)
{
    *keep = rvs_malloc(size + 1);
    *back = rvs_malloc(size + 1);
    *nk = *nb = 0;
    if (!*keep || !*back)
        return RVS_ERR_NOMEM;
    size_t i = 0;
    while (i < size) {
        size_t start = i;
        while (i < size && text[i] != '\n')
            i++;
        size_t len = i - start;
        if (i < size)
            i++;
        char line[8192];
        if (len == 0 || len >= sizeof line)
            continue;
        memcpy(line, text + start, len);
        line[len] = '\0';
        char *end = NULL;
        long pid = strtol(line, &end, 10);
        char *h = end && *end == ' ' ? end + 1 : NULL;
        char *nm = h ? strchr(h, ' ') : NULL;
        if (!nm)
            continue; /* not a claim line */
        int local = (size_t)(nm - h) == strlen(host) && strncmp(h, host, strlen(host)) == 0;
        int dead = local && pid > 0 && kill((pid_t)pid, 0) != 0 && errno == ESRCH;
        if (dead) {
            rvs_log(RVS_LOG_WARNING, MODULE,
                    "%s was taken by process %ld, which no longer runs: back in the queue",
                    nm + 1, pid);
            size_t l = strlen(nm + 1);
            memcpy(*back + *nb, nm + 1, l);
            (*back)[*nb + l] = '\n';
            *nb += l + 1;
        } else {
            memcpy(*keep + *nk, line, len);
            (*keep)[*nk + len] = '\n';
            *nk += len + 1;
        }
    }
    return RVS_OK;
}

static void host_name(char *host, size_t size)
{
    if (gethostname(host, size) != 0 || !host[0])
        snprintf(host, size, "localhost");
    host[size - 1] = '\0';
    for (char *c = host; *c; c++)
        if (*c == ' ' || *c == '\n')
            *c = '_';
}

/* Opens the queue for update and takes its lock (waiting for other workers); *fd stays open
 * (and is the caller's to close) even when locking fails. */
static int queue_lock(const char *path, int *fd)
{
    *fd = open(path, O_RDWR);
    if (*fd < 0) {
        rvs_log(RVS_LOG_ERROR, MODULE, "cannot open the queue file %s for update: %s", path,
                strerror(errno));
        return RVS_ERR_IO;
    }
    struct flock lock = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    while (fcntl(*fd, F_SETLKW, &lock) != 0) {
        if (errno == EINTR)
            continue;
        rvs_log(RVS_LOG_ERROR, MODULE, "cannot lock the queue file %s: %s", path,
                strerror(errno));
        return RVS_ERR_IO;
    }
    return RVS_OK;
}

static void queue_unlock(int fd)
{
    struct flock lock = {.l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    fcntl(fd, F_SETLK, &lock);
}

static int queue_pop(const char *path, char **name, int claim);

int rvs_run_queue_pop(const char *path, char **name)
{
    return queue_pop(path, name, 0);
}

int rvs_run_queue_claim(const char *path, char **name)
{
    return queue_pop(path, name, 1);
}

/* Pops the first name; with `claim`, records it in the ledger until rvs_run_queue_done. Either
 * way, claims of dead local workers go back to the head of the queue first. */
static int queue_pop(const char *path, char **name, int claim)
{
    int status = RVS_OK, locked = 0, requeued = 0;
    char *text = NULL, *cpath = NULL, *ctext = NULL, *keep = NULL, *back = NULL;
    size_t size = 0, csize = 0, nkeep = 0, nback = 0;
    *name = NULL;
    int fd = -1;
    RVS_TRY(queue_lock(path, &fd));
    locked = 1;
    RVS_TRY(read_all(fd, path, &text, &size));
    /* claims of workers that died go back to the head of the queue */
    char host[256];
    host_name(host, sizeof host);
    cpath = claims_path(path);
    if (!cpath) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    RVS_TRY(read_text_file(cpath, &ctext, &csize));
    if (ctext) {
        RVS_TRY(sort_claims(ctext, csize, host, &keep, &nkeep, &back, &nback));
        if (nback) {
            char *joined = rvs_malloc(nback + size + 1);
            if (!joined) {
                status = RVS_ERR_NOMEM;
                goto cleanup;
            }
            memcpy(joined, back, nback);
            memcpy(joined + nback, text, size);
            joined[nback + size] = '\0';
            free(text);
            text = joined;
            size += nback;
            requeued = 1;
        }
    }
    /* the first non-empty line, trailing white space removed; blank lines before it go too */
    size_t i = 0;
    while (i < size) {
        size_t start = i;
        while (i < size && text[i] != '\n')
            i++;
        size_t end = i;
        if (i < size)
            i++;
        while (end > start &&
               (text[end - 1] == ' ' || text[end - 1] == '\t' || text[end - 1] == '\r'))
            end--;
        if (end > start) {
            *name = rvs_malloc(end - start + 1);
            if (!*name) {
                status = RVS_ERR_NOMEM;
                goto cleanup;
            }
            memcpy(*name, text + start, end - start);
            (*name)[end - start] = '\0';
            break;
        }
    }
    if (i > 0 || requeued) {
        status = rewrite(fd, path, text + i, size - i);
        if (status != RVS_OK) {
            free(*name);
            *name = NULL;
            goto cleanup;
        }
    }
    if ((*name && claim) || nback) {
        /* the ledger: the claims kept, and this worker's new one */
        size_t extra = *name && claim ? strlen(*name) + strlen(host) + 32 : 0;
        char *ledger = rvs_malloc(nkeep + extra + 1);
        if (!ledger) {
            status = RVS_ERR_NOMEM;
            goto cleanup;
        }
        if (nkeep)
            memcpy(ledger, keep, nkeep);
        size_t n = nkeep;
        if (*name && claim)
            n += (size_t)snprintf(ledger + n, extra + 1, "%ld %s %s\n", (long)getpid(), host,
                                  *name);
        status = write_text_file(cpath, ledger, n);
        free(ledger);
    }
cleanup:
    if (locked)
        queue_unlock(fd);
    free(text);
    free(cpath);
    free(ctext);
    free(keep);
    free(back);
    if (fd >= 0)
        close(fd);
    return status;
}

int rvs_run_queue_done(const char *path, const char *name)
{
    int status = RVS_OK, locked = 0;
    char *cpath = NULL, *ctext = NULL, *out = NULL;
    size_t csize = 0;
    int fd = -1;
    RVS_TRY(queue_lock(path, &fd));
    locked = 1;
    cpath = claims_path(path);
    if (!cpath) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    RVS_TRY(read_text_file(cpath, &ctext, &csize));
    if (!ctext)
        goto cleanup;
    char host[256], mine[8448];
    host_name(host, sizeof host);
    int len = snprintf(mine, sizeof mine, "%ld %s %s", (long)getpid(), host, name);
    out = rvs_malloc(csize + 1);
    if (!out) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    size_t n = 0, i = 0;
    int removed = 0;
    while (i < csize) {
        size_t start = i;
        while (i < csize && ctext[i] != '\n')
            i++;
        size_t l = i - start;
        if (i < csize)
            i++;
        if (l == 0)
            continue;
        if (!removed && (int)l == len && memcmp(ctext + start, mine, l) == 0) {
            removed = 1;
            continue;
        }
        memcpy(out + n, ctext + start, l);
        out[n + l] = '\n';
        n += l + 1;
    }
    if (removed)
        status = write_text_file(cpath, out, n);
cleanup:
    if (locked)
        queue_unlock(fd);
    free(cpath);
    free(ctext);
    free(out);
    if (fd >= 0)
        close(fd);
    return status;
}
