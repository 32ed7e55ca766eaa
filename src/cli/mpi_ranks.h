/* mpi_ranks.h: rvsfit-cl --mpi (issue 20): one rank per device, inputs dealt dynamically.
 * Built only when configure found MPI (HAVE_MPI); see src/cli/mpi_ranks.c. */
#ifndef RVSFIT_CLI_MPI_RANKS_H
#define RVSFIT_CLI_MPI_RANKS_H

#include <stddef.h>

struct mpi_ranks {
    int rank, size;             /* in MPI_COMM_WORLD */
    int local_rank, local_size; /* among the ranks of this node (MPI_COMM_TYPE_SHARED) */
    void *window;               /* MPI_Win: rank 0's dealing counter and stop flag */
    long *window_memory;
    char device_spec[64];       /* the device this rank chose, when it chose one */
};

/* MPI_Init_thread (funnelled: only the main thread calls MPI), the node-local rank, and the
 * shared counter the inputs are dealt from. 0, or -1 with the reason printed. */
int mpi_ranks_start(int *argc, char ***argv, struct mpi_ranks *m);

/* The OpenCL device spec for this rank (rvs_device_select's syntax). user_spec: --device as
 * given (NULL: none). A comma-separated list gives rank r its entry (local rank mod the list's
 * length); else $RVSFIT_CL_MPI_DEVICES the same way; else a single spec is shared by every rank
 * of the node (e.g. "cpu"); else the node's devices of the default kind (every usable GPU, else
 * every usable CPU) are dealt by local rank modulo their number. A batch system that shows each
 * rank only its own GPU (CUDA_VISIBLE_DEVICES, ROCR_VISIBLE_DEVICES) needs nothing. Returns the
 * spec to pass on, NULL with a message when no device can be named. */
const char *mpi_ranks_device(struct mpi_ranks *m, const char *user_spec);

/* The next input index for this rank (rank 0's counter, atomically), or -1 once a rank asked
 * every rank to stop (--throw-exceptions). */
long mpi_ranks_take(struct mpi_ranks *m);

/* Asks every rank to take no further input (a failure under --throw-exceptions). */
void mpi_ranks_request_stop(struct mpi_ranks *m);

void mpi_ranks_barrier(struct mpi_ranks *m);

/* Sums the totals over the ranks and combines the exit codes (the worst: device > failure >
 * usage > ok, as rvsfit-cl's codes are ordered) on every rank. */
void mpi_ranks_combine(struct mpi_ranks *m, size_t totals[3], int *code);

/* Frees the window and finalises MPI. */
void mpi_ranks_end(struct mpi_ranks *m);

#endif
