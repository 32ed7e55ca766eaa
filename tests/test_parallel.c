/* test_parallel.c: rvs_parallel_run runs every share exactly once, k = 0 on the calling thread,
 * with the share count it was given (capped at 64); rvs_parallel_threads stays within its
 * bounds. */
#include <config.h>

#include <pthread.h>
#include <string.h>

#include "base/internal.h"
#include "testutil.h"

enum { MAX_SHARES = 64 };

struct record {
    int runs[MAX_SHARES + 8];
    size_t seen_n[MAX_SHARES + 8];
    pthread_t caller, thread0;
    pthread_mutex_t lock;
};

static void work(void *arg, size_t k, size_t n)
{
    struct record *r = arg;
    pthread_mutex_lock(&r->lock);
    r->runs[k]++;
    r->seen_n[k] = n;
    if (k == 0)
        r->thread0 = pthread_self();
    pthread_mutex_unlock(&r->lock);
}

int main(void)
{
    static const size_t counts[] = {1, 2, 3, 16, 64, 100};
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
        struct record r;
        memset(&r, 0, sizeof r);
        pthread_mutex_init(&r.lock, NULL);
        r.caller = pthread_self();
        rvs_parallel_run(counts[c], work, &r);
        size_t n = counts[c] < MAX_SHARES ? counts[c] : MAX_SHARES;
        for (size_t k = 0; k < MAX_SHARES + 8; k++) {
            int want = k < n;
            CHECK(r.runs[k] == want, "n %zu: share %zu ran %d times", counts[c], k, r.runs[k]);
            CHECK(!want || r.seen_n[k] == n, "n %zu: share %zu saw n = %zu", counts[c], k,
                  r.seen_n[k]);
        }
        CHECK(pthread_equal(r.thread0, r.caller), "n %zu: share 0 not on the caller", counts[c]);
        pthread_mutex_destroy(&r.lock);
    }
    rvs_parallel_run(0, work, NULL); /* nothing to do: no call */

    CHECK(rvs_parallel_threads(0, 16, 16) == 1, "no items: one thread");
    CHECK(rvs_parallel_threads(15, 16, 16) == 1, "fewer items than one share: one thread");
    size_t t = rvs_parallel_threads(1000000, 1, 4);
    CHECK(t >= 1 && t <= 4, "cap 4: %zu threads", t);
    t = rvs_parallel_threads(1000000, 1, 0);
    CHECK(t >= 1, "no cap: %zu threads", t);
    CHECK(rvs_parallel_threads(40, 16, 0) <= 2, "40 items of 16: at most 2 threads");
    printf("threads for 10^6 items here: %zu\n", t);
    return test_finish("test_parallel");
}
