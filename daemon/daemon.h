/* daemon/daemon.h: the trainer and the process around it (owner: daemon/, prefix dmn_).
 *
 * daemon/ owns the run: the config table (config.c, config.h), the trainer and its run loop
 * (trainer.c), the adaptation glue (adapt.c), full run checkpoints (state.c) and evowidthd
 * (queue.c, http.c, server.c, statedir.c; see server_internal.h), with its metric history
 * (history.c), `/v1/stream` (stream.c) and the dashboard's routes (web.c). The `evowidth`
 * command lives in cli/.
 *
 * A `struct dmn_trainer` owns one run: its config, data sets, net, optimizer, schedule,
 * batcher and counters. It is driven one tick at a time (dmn_trainer_tick: a step, progress,
 * validation, whether to checkpoint), by the foreground `evowidth train` loop (cli/cmd.c) or
 * by the daemon's trainer thread (daemon/queue.c), which applies queued commands between two
 * ticks. Only the thread driving a trainer may touch it.
 * Errors: 0 or negative errno, with a reason in err. Nothing here exits. */
#ifndef DMN_DAEMON_H
#define DMN_DAEMON_H

#include <stdio.h>

#include "daemon/config.h"
#include "net/net.h"

struct dmn_adapt;

struct dmn_trainer {
    struct dmn_config cfg;
    struct net *net;
    struct net_dataset train, val, test; // normalised with the training set's statistics
    struct net_batcher batcher;
    struct net_optim opt;
    struct net_sched sched;
    size_t step, total_steps, steps_per_epoch;
    uint64_t rng;    // the run's own stream (init, adaptation)
    float *xb;       // (batch, C, H, W), owned
    uint8_t *yb;     // (batch), owned
    double lr;       // learning rate of the last step
    double run_loss; // sums since the last progress line
    size_t run_correct, run_n;
    double last_loss, last_acc; // of the last progress window
    double val_loss, val_acc;   // last validation (NAN before the first)
    double train_seconds;       // time inside steps (excludes evaluation)
    double adapt_seconds;       // time inside adaptation
    double adapt_cpu_seconds;   // process CPU time inside adaptation, this process only (on a
                                // shared machine the honest share: wall time counts neighbours)
    double last_log_time;       // dmn_now() of the last progress line
    uint64_t change_seq;        // runtime config changes included (daemon change log)
    size_t initial_params;
    struct dmn_adapt *adapt;  // adaptation state and event log, owned
    FILE *events;             // JSON-lines event log (borrowed), may be NULL
    int events_in_checkpoint; // checkpoints carry the held event texts (evowidth
                              // train: no state dir); the daemon's carry the count
    FILE *log;                // progress lines; NULL = quiet (borrowed)
};

/* Loads data, builds and initialises the net from cfg (copied). */
int dmn_trainer_create(struct dmn_trainer **out, const struct dmn_config *cfg, char *err,
                       size_t errlen);
void dmn_trainer_destroy(struct dmn_trainer *t);
/* One optimizer step on the next mini-batch (and an adaptation when the policy says so).
 * Returns 0, or a negative errno if the step could not run (the model is unchanged). */
int dmn_trainer_step(struct dmn_trainer *t);
/* 1 once step >= total_steps. */
int dmn_trainer_done(const struct dmn_trainer *t);
/* Re-derives total steps and the schedule horizon after cfg.train.epochs changed. */
void dmn_trainer_set_epochs(struct dmn_trainer *t, size_t epochs);
/* Applies every runtime knob (CFG_RUNTIME row) of cfg to the run through the config table's
 * cfg_copy_runtime, then re-derives what depends on them (total steps, the schedule). All or
 * nothing: 0, or -EINVAL with a reason in err if the result would be invalid. */
int dmn_trainer_set_runtime(struct dmn_trainer *t, const struct dmn_config *cfg, char *err,
                            size_t errlen);

/* What a tick of the run loop did besides the step. */
struct dmn_tick {
    int evaluated;      // a validation pass ran: val_loss / val_acc are new
    int checkpoint_due; // daemon.checkpoint_every_steps says so, or the run just ended
};
/* One tick of the run loop that `evowidth train` and evowidthd's trainer thread both run:
 * dmn_trainer_step, the progress line when log_every_seconds has passed, a validation pass
 * every train.eval_every_steps steps (0: at the end of each epoch) when there is a
 * validation set, and whether a checkpoint is due. Returns dmn_trainer_step's code; when the
 * step did not run (the step counter did not move) nothing else is done and *tk is zero. */
int dmn_trainer_tick(struct dmn_trainer *t, struct dmn_tick *tk);
/* Runs one adaptation pass now (the daemon's POST /adapt); returns surgeries kept or <0. */
int dmn_trainer_adapt_now(struct dmn_trainer *t);
/* Evaluates on d (eval mode) at the training batch size. */
int dmn_trainer_eval(struct dmn_trainer *t, const struct net_dataset *d, struct net_eval *ev);

/* Full checkpoint: model, optimizer, step, RNG and data order, config (policy included). */
int dmn_trainer_save(struct dmn_trainer *t, const char *path, char *err, size_t errlen);
/* Restores a checkpoint written by dmn_trainer_save into a trainer built from its own stored
 * config; the data are reloaded. The result continues bit-identically. */
int dmn_trainer_load(struct dmn_trainer **out, const char *path, char *err, size_t errlen);
/* The same in memory (daemon/dist.c sends a run to the other MPI ranks this way): encode
 * fills the zeroed writer *img with the bytes dmn_trainer_save writes; decode builds a
 * trainer from such bytes (borrowed) as dmn_trainer_load does. path names the image in err. */
struct net_wr;
int dmn_trainer_encode(struct dmn_trainer *t, struct net_wr *img, const char *path, char *err,
                       size_t errlen);
int dmn_trainer_decode(struct dmn_trainer **out, const unsigned char *buf, size_t len,
                       const char *path, char *err, size_t errlen);

/* Like dmn_trainer_load, but the run is rebuilt from *as (a config of the same run, e.g.
 * the live one, whose runtime knobs then apply) instead of the stored config, so nothing is
 * parsed as JSON: the daemon's trainer thread rolls back this way. */
int dmn_trainer_load_as(struct dmn_trainer **out, const char *path, const struct dmn_config *as,
                        char *err, size_t errlen);
/* What a run checkpoint says about itself, read without building a trainer (no data load). */
struct dmn_ckpt_info {
    size_t step, params;
    uint64_t change_seq;   // changes.jsonl seq included
    uint64_t events;       // events.jsonl seq included ((uint64_t)-1: older file, unknown)
    double val_loss;       // of the last validation (NAN before the first)
    struct dmn_config cfg; // the stored config
};
/* 0; -EINVAL if the file is not a usable run checkpoint (corrupt, truncated, a model file),
 * another negative errno if it could not be read (reason in err). */
int dmn_trainer_peek(const char *path, struct dmn_ckpt_info *info, char *err, size_t errlen);

/* Prints a progress line to t->log if log_every_seconds passed since the last one, or always
 * when force is set. */
void dmn_trainer_progress(struct dmn_trainer *t, int force);

// ---- the daemon (daemon/server.c) ---------------------------------------------------

struct dmn_server_opts {
    const char *config_path; // config file (also re-read on SIGHUP)
    const char *listen;      // NULL: the config's daemon.listen
    const char *state_dir;   // NULL: the config's daemon.state_dir
    const char *token_file;  // NULL: the config's daemon.token_file ("" = no token)
    int quiet;               // no log lines on stderr
    int resume_anyway;       // --resume-anyway: continue a stored run whose config differs
    int fresh;               // --fresh: archive the state dir's run and start a new one
};
/* Runs evowidthd until it is stopped (POST /v1/stop, SIGTERM, SIGINT) and returns the process
 * exit code: 0 after a clean stop, 1 on a start-up error (reason printed to stderr) or when
 * the final checkpoint failed (or daemon.on_checkpoint_failure "stop" ended the run). */
int dmn_server_run(const struct dmn_server_opts *o);

/* libgomp reads OMP_WAIT_POLICY once, when it loads, before main. Its default spins between
 * parallel regions, which stalls every step behind a descheduled thread as soon as another
 * process wants a core. Measured on ref_resnet, 2 cores: alone, passive 763 / spin-limited
 * (GOMP_SPINCOUNT=20000) 932 / active 947 samples/s; beside one busy process, 405 / 240 / 171.
 * A workstation daemon shares its machine, so unless the user chose a policy this re-executes
 * the program once with "passive" (set OMP_WAIT_POLICY=active on a dedicated machine).
 * Call it first thing in main. Returns only if nothing was done or exec failed. */
void dmn_omp_passive(char **argv);

/* Seconds from a monotonic clock. */
double dmn_now(void);
/* CPU seconds this process has used (every thread), for shares a loaded machine does not
 * distort. */
double dmn_cpu_now(void);

#endif
