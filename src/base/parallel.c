/* parallel.c: a parallel loop on host threads for the per-batch work that runs while the device
 * waits (the CCF inputs, the batch's data upload). POSIX threads, one per share; no pool: the
 * callers run a few times per batch, where thread start-up (~10 us) does not matter. */
#include <config.h>

#include <pthread.h>
#include <unistd.h>

#include "base/internal.h"

size_t rvs_parallel_threads(size_t items, size_t min_items, size_t max)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    size_t n = ncpu > 1 ? (size_t)ncpu : 1;
    if (max > 0 && n > max)
        n = max;
    if (min_items == 0)
        min_items = 1;
    size_t useful = items / min_items;
    if (n > useful)
        n = useful;
    return n ? n : 1;
}

struct share {
    void (*work)(void *arg, size_t k, size_t n);
    void *arg;
    size_t k, n;
};

static void *run_share(void *p)
{
    struct share *s = p;
    s->work(s->arg, s->k, s->n);
    return NULL;
}

void rvs_parallel_run(size_t n, void (*work)(void *arg, size_t k, size_t n), void *arg)
{
    enum { MAX_SHARES = 64 };
    if (n == 0)
        return;
    if (n > MAX_SHARES)
        n = MAX_SHARES;
    struct share shares[MAX_SHARES];
    pthread_t tid[MAX_SHARES];
    int started[MAX_SHARES] = {0};
    for (size_t k = 0; k < n; k++)
        shares[k] = (struct share){work, arg, k, n};
    for (size_t k = 1; k < n; k++)
        started[k] = pthread_create(&tid[k], NULL, run_share, &shares[k]) == 0;
    work(arg, 0, n);
    for (size_t k = 1; k < n; k++) {
        if (started[k])
            pthread_join(tid[k], NULL);
        else
            work(arg, k, n); /* no thread for this share: it runs here */
    }
}
