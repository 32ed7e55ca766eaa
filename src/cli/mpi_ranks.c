/* mpi_ranks.c: rvsfit-cl --mpi (issue 20): K ranks, one device each, dealing the inputs among
 * themselves.
 *
 * Dealing. Rank 0 exposes one counter in an MPI-3 window; a rank that is free takes the next
 * input with an atomic fetch-and-add on it (MPI_Fetch_and_op, passive target). No rank waits for
 * a dispatcher and none is set aside for dispatching: a rank that finishes early simply takes
 * more, which balances files of any size. (--queue-file keeps its own file queue: several MPI
 * jobs, or MPI ranks and plain processes, can then share one queue.)
 *
 * Results. Each rank writes the outputs of what it fitted, atomically, as a single process does,
 * and appends its status lines to the shared --process-status-file (one write() each with
 * O_APPEND: lines never mix); rank 0 empties that file before anyone starts and logs the summary
 * gathered from every rank. A target's fit does not depend on its batch-mates (issue 19), so the
 * tables are those of one process, byte for byte.
 *
 * Failures. A rank whose device fails stops taking inputs and says so; the others go on and take
 * what is left. Under --throw-exceptions a failure sets a stop flag in the same window, and every
 * rank stops at its next input. A rank killed outright ends the whole job (Open MPI's mpirun does
 * that); the inputs it held then have no status line, and --skipexisting fits exactly those on
 * the next run. */
#include <config.h>

#include <mpi.h>
#include <sched.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mpi_ranks.h"
#include "rvsfit/device.h"
#include "rvsfit/log.h"
#include "rvsfit/status.h"

enum { SLOT_NEXT = 0, SLOT_STOP = 1, NSLOTS = 2 };

static void mpi_failure(const char *what, int err)
{
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(err, text, &len) != MPI_SUCCESS)
        snprintf(text, sizeof text, "error %d", err);
    fprintf(stderr, "rvsfit-cl: --mpi: %s failed: %s\n", what, text);
}

#define MPI_TRY(call, what)                                                                        \
    do {                                                                                           \
        int mpi_err_ = (call);                                                                     \
        if (mpi_err_ != MPI_SUCCESS) {                                                             \
            mpi_failure(what, mpi_err_);                                                           \
            return -1;                                                                             \
        }                                                                                          \
    } while (0)

int mpi_ranks_start(int *argc, char ***argv, struct mpi_ranks *m)
{
    memset(m, 0, sizeof *m);
    int provided = 0;
    MPI_TRY(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    /* errors come back as codes, so every call below can say what failed */
    MPI_TRY(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    if (provided < MPI_THREAD_FUNNELED) {
        fprintf(stderr, "rvsfit-cl: --mpi: the MPI library cannot be used from a threaded "
                        "program (thread level %d)\n", provided);
        return -1;
    }
    MPI_TRY(MPI_Comm_rank(MPI_COMM_WORLD, &m->rank), "MPI_Comm_rank");
    MPI_TRY(MPI_Comm_size(MPI_COMM_WORLD, &m->size), "MPI_Comm_size");
    MPI_Comm node;
    MPI_TRY(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, m->rank, MPI_INFO_NULL,
                                &node),
            "MPI_Comm_split_type");
    MPI_TRY(MPI_Comm_rank(node, &m->local_rank), "MPI_Comm_rank (node)");
    MPI_TRY(MPI_Comm_size(node, &m->local_size), "MPI_Comm_size (node)");
    MPI_TRY(MPI_Comm_free(&node), "MPI_Comm_free");
    MPI_Aint bytes = m->rank == 0 ? (MPI_Aint)(NSLOTS * sizeof(long)) : 0;
    MPI_Win *win = malloc(sizeof *win);
    if (!win) {
        fprintf(stderr, "rvsfit-cl: --mpi: out of host memory\n");
        return -1;
    }
    m->window = win;
    MPI_TRY(MPI_Win_allocate(bytes, sizeof(long), MPI_INFO_NULL, MPI_COMM_WORLD,
                             &m->window_memory, win),
            "MPI_Win_allocate");
    if (m->rank == 0)
        memset(m->window_memory, 0, NSLOTS * sizeof(long));
    /* the counter is set before anyone takes from it */
    MPI_TRY(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
    MPI_TRY(MPI_Win_lock_all(0, *win), "MPI_Win_lock_all");
    char tag[32];
    snprintf(tag, sizeof tag, "rank %d", m->rank);
    if (m->size > 1)
        rvs_log_set_tag(tag);
    /* Open MPI binds each rank to one core by default when there are few ranks; a rank's host
     * work (reading, preparing the resolution matrices, the optimizer's steps) runs on threads
     * and then shares that core: on an H100 node one rank ran 167 s instead of 150 s, and two
     * ranks on one GPU 118 s instead of 110 s (benchmarks/RESULTS.md) */
    cpu_set_t cpus;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    if (sched_getaffinity(0, sizeof cpus, &cpus) == 0 && CPU_COUNT(&cpus) == 1 && online > 1 &&
        m->local_rank == 0)
        rvs_log(RVS_LOG_WARNING, "mpi",
                "this rank may use 1 of the node's %ld cores (mpirun binds ranks to cores by "
                "default); its host threads then share it: run mpirun --bind-to none (or give "
                "each rank several cores: --map-by slot:PE=N)",
                online);
    return 0;
}

/* entry `index` (mod count) of a comma-separated list, into buf */
static const char *list_entry(const char *list, int index, char *buf, size_t size)
{
    int count = 1;
    for (const char *c = list; *c; c++)
        count += *c == ',';
    int want = index % count;
    const char *start = list;
    for (int i = 0; i < want; i++)
        start = strchr(start, ',') + 1;
    const char *end = strchr(start, ',');
    size_t len = end ? (size_t)(end - start) : strlen(start);
    if (len == 0 || len >= size)
        return NULL;
    memcpy(buf, start, len);
    buf[len] = 0;
    return buf;
}

const char *mpi_ranks_device(struct mpi_ranks *m, const char *user_spec)
{
    const char *env = getenv("RVSFIT_CL_MPI_DEVICES");
    const char *list = user_spec && strchr(user_spec, ',') ? user_spec
                       : !user_spec && env && *env ? env
                                                   : NULL;
    if (list) {
        if (!list_entry(list, m->local_rank, m->device_spec, sizeof m->device_spec)) {
            fprintf(stderr, "rvsfit-cl: --mpi: bad device list '%s' (comma-separated specs, "
                            "as --device takes them)\n", list);
            return NULL;
        }
        return m->device_spec;
    }
    if (user_spec)
        return user_spec; /* one device named: every rank of the node shares it */
    /* the default kind: every usable GPU of the node, else every usable CPU */
    struct rvs_device_list devices;
    if (rvs_device_list_query(&devices) != RVS_OK)
        return NULL; /* the context creation that follows says what to install */
    size_t first;
    if (rvs_device_select(&devices, NULL, &first) != RVS_OK) {
        rvs_device_list_free(&devices);
        return NULL;
    }
    cl_device_type kind = devices.devices[first].type;
    size_t same[256], n = 0;
    for (size_t i = 0; i < devices.count && n < 256; i++)
        if (devices.devices[i].available && devices.devices[i].type == kind)
            same[n++] = i;
    size_t pick = n ? same[(size_t)m->local_rank % n] : first;
    snprintf(m->device_spec, sizeof m->device_spec, "%u", devices.devices[pick].flat_index);
    if (m->local_size > (int)n && n > 0 && m->local_rank == 0)
        rvs_log(RVS_LOG_WARNING, "mpi", "%d ranks on this node share %zu %s device(s)",
                m->local_size, n, rvs_device_type_name(kind));
    rvs_device_list_free(&devices);
    return m->device_spec;
}

long mpi_ranks_take(struct mpi_ranks *m)
{
    MPI_Win win = *(MPI_Win *)m->window;
    long one = 1, next = -1, stop = 0;
    int err = MPI_Fetch_and_op(NULL, &stop, MPI_LONG, 0, SLOT_STOP, MPI_NO_OP, win);
    if (err == MPI_SUCCESS)
        err = MPI_Win_flush(0, win);
    if (err == MPI_SUCCESS && stop)
        return -1;
    if (err == MPI_SUCCESS)
        err = MPI_Fetch_and_op(&one, &next, MPI_LONG, 0, SLOT_NEXT, MPI_SUM, win);
    if (err == MPI_SUCCESS)
        err = MPI_Win_flush(0, win);
    if (err != MPI_SUCCESS) {
        mpi_failure("taking the next input (MPI_Fetch_and_op)", err);
        return -1;
    }
    return next;
}

void mpi_ranks_request_stop(struct mpi_ranks *m)
{
    MPI_Win win = *(MPI_Win *)m->window;
    long one = 1;
    int err = MPI_Accumulate(&one, 1, MPI_LONG, 0, SLOT_STOP, 1, MPI_LONG, MPI_REPLACE, win);
    if (err == MPI_SUCCESS)
        err = MPI_Win_flush(0, win);
    if (err != MPI_SUCCESS)
        mpi_failure("asking the other ranks to stop (MPI_Accumulate)", err);
}

void mpi_ranks_barrier(struct mpi_ranks *m)
{
    (void)m;
    int err = MPI_Barrier(MPI_COMM_WORLD);
    if (err != MPI_SUCCESS)
        mpi_failure("MPI_Barrier", err);
}

void mpi_ranks_combine(struct mpi_ranks *m, size_t totals[3], int *code)
{
    (void)m;
    unsigned long long in[3] = {totals[0], totals[1], totals[2]}, sum[3] = {0, 0, 0};
    int err = MPI_Allreduce(in, sum, 3, MPI_UNSIGNED_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    if (err != MPI_SUCCESS) {
        mpi_failure("gathering the totals (MPI_Allreduce)", err);
        if (*code == 0)
            *code = 1;
        return;
    }
    for (int i = 0; i < 3; i++)
        totals[i] = (size_t)sum[i];
    int worst = *code;
    err = MPI_Allreduce(code, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (err != MPI_SUCCESS) {
        mpi_failure("gathering the exit codes (MPI_Allreduce)", err);
        if (*code == 0)
            *code = 1;
        return;
    }
    *code = worst;
}

void mpi_ranks_end(struct mpi_ranks *m)
{
    if (m->window) {
        MPI_Win *win = m->window;
        MPI_Win_unlock_all(*win);
        MPI_Win_free(win);
        free(win);
        m->window = NULL;
    }
    MPI_Finalize();
}
