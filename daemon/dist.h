/* daemon/dist.h: data-parallel training over MPI (owner: daemon/dist.c, prefix dmn_dist_).
 *
 * daemon/dist.c owns every MPI call of evowidth; nothing else includes <mpi.h>. The MPI
 * transport is Open MPI's (no transport of our own). What the other files own:
 *   - daemon/trainer.c shards each global batch and calls dmn__dist_step / _grads;
 *   - daemon/adapt.c calls dmn__dist_surgery around every adaptation pass;
 *   - daemon/queue.c sends each batch of API commands through dmn__dist_commands;
 *   - daemon/server.c (evowidthd) and cli/cmd.c (evowidth train) start the run on every
 *     rank with dmn_dist_share_trainer, and only rank 0 serves HTTP, writes checkpoints,
 *     logs and reports.
 *
 * Launched by mpirun (OMPI_COMM_WORLD_SIZE / PMIX_RANK in the environment) dmn_dist_init
 * calls MPI_Init_thread; otherwise no MPI function is ever called, the world is one rank
 * and every function below is a no-op, so a plain run is exactly what it was.
 *
 * The scheme (docs in README.md "Several machines"):
 *   - every rank draws the same global batch (train.batch_size) from the same batcher
 *     state, so data order and augmentation stay identical, and trains on its shard
 *     [r*B/W, (r+1)*B/W); its mean gradient is scaled by shard/B and the gradient arena is
 *     summed with one MPI_Allreduce, so each rank holds one process's mean gradient (up to
 *     summation order), then the same optimizer step gives bit-identical parameters;
 *   - batch norm normalises each shard with its own batch statistics (as DDP without
 *     SyncBatchNorm: synchronised BN would cost two collectives per BN layer per pass);
 *     the running statistics (the state arena, small) are averaged over the ranks after
 *     every step, so every rank holds the same running statistics, evaluates alike and any
 *     rank's checkpoint is the run's;
 *   - rank 0 alone decides and runs each surgery; then it broadcasts its net, optimizer
 *     moments, RNG and adaptation state (a checkpoint image, net/ckpt.c) and the other
 *     ranks replace theirs, so every rank ends each surgery identical to rank 0.
 * Errors: 0 or negative errno. A rank that cannot apply what rank 0 sent (out of memory)
 * ends the job with MPI_Abort and a message: the ranks could not stay identical. */
#ifndef DMN_DIST_H
#define DMN_DIST_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/daemon.h"

/* MPI_Init_thread (MPI_THREAD_SERIALIZED: evowidthd's trainer thread makes the calls) when
 * launched by mpirun; else nothing. Call first in main, after dmn_omp_passive. 0 or -EIO. */
int dmn_dist_init(int *argc, char ***argv);
/* MPI_Finalize when initialised; exit_code != 0 with several ranks: MPI_Abort instead, so
 * ranks still waiting in a collective do not hang. Call last in main. */
void dmn_dist_finalize(int exit_code);
int dmn_dist_rank(void);    // 0 without MPI
int dmn_dist_size(void);    // 1 without MPI
int dmn_dist_is_root(void); // rank 0

/* This rank's shard of a global batch of B samples: first sample and count. */
void dmn_dist_shard(size_t B, size_t *lo, size_t *n);
/* The largest of v over the ranks (e.g. a signal number: any rank's stop stops all). */
int dmn_dist_max_int(int v);
/* CRC-32 (zlib) of the parameter arena's bytes. */
uint32_t dmn_dist_param_crc(const struct net *n);
/* Every rank's v, gathered into all[0 .. size) on rank 0 (all may be NULL elsewhere). */
int dmn_dist_gather_u32(uint32_t v, uint32_t *all);

/* Start of a run: rank 0 (with rc, its own start-up result) sends its whole run (the bytes
 * of a run checkpoint, daemon/state.c) and extra_len bytes of extra (in-out); the others
 * build *t from it (loading the data themselves) and receive extra. Returns rank 0's rc on
 * every rank when it failed (err: "rank 0 could not start"), else 0 or this rank's error. */
int dmn_dist_share_trainer(struct dmn_trainer **t, int rc, void *extra, size_t extra_len, char *err,
                           size_t errlen);

/* Time and bytes of the gradient allreduce so far (for the report and bench/mpi.sh). */
struct dmn_dist_stats {
    double allreduce_seconds;
    uint64_t allreduce_bytes, allreduce_calls;
};
void dmn_dist_stats(struct dmn_dist_stats *out);

// ---- hooks for daemon/ (trainer.c, adapt.c, queue.c) ----------------------------------

/* After the forward pass on a shard of n of B samples: averages the BN running statistics
 * and sums the shard's loss (mean over it) and correct count: *loss becomes the global mean
 * (non-finite on every rank if any rank's is), *correct the global count. */
void dmn__dist_step(struct net *net, float *loss, size_t *correct, size_t n, size_t B);
/* After the backward pass: scales the gradient arena by n/B and sums it over the ranks. */
void dmn__dist_grads(struct net *net, size_t n, size_t B);
/* Around an adaptation pass: every rank calls it with rc from its own pass (only rank 0
 * runs one); rank 0's net, optimizer, RNG and adaptation state go to the others. Returns
 * rank 0's rc. Before it, dmn__dist_presurgery gathers each rank's parameter checksum,
 * which rank 0 adds to the pass's event (dmn__dist_event_fields). */
void dmn__dist_presurgery(const struct dmn_trainer *t);
int dmn__dist_surgery(struct dmn_trainer *t, int rc);
struct cJSON;
void dmn__dist_event_fields(struct cJSON *event);
/* Rank 0's len bytes at p to every rank. poll = 1: the others wait in short sleeps instead
 * of spinning (a paused daemon, a long surgery). 0 or -EIO. */
int dmn__dist_bcast(void *p, size_t len, int poll);
/* Every rank's len bytes at mine, into all (size * len bytes) on rank 0. 0 or -EIO. */
int dmn__dist_gather(const void *mine, void *all, size_t len);
/* Ends the whole job (MPI_Abort) after printing why; for a state the ranks cannot leave. */
void dmn__dist_fatal(const char *why);

#endif
