/* daemon/server_internal.h: what the four files of evowidthd share (owner: daemon/).
 *
 * evowidthd is split by concern:
 *   daemon/queue.c     the command queue (loop -> trainer) and the trainer thread;
 *   daemon/http.c      the HTTP handlers, /metrics, and the answers to finished commands;
 *   daemon/server.c    start-up, signals and shutdown (dmn_server_run);
 *   daemon/statedir.c  the state dir: checkpoints and their rotation, resume, the change
 *                      log and its replay, the event log, the token file;
 *   daemon/history.c   the metric history and its file in the state dir;
 *   daemon/stream.c    GET /v1/stream (Server-Sent Events) and what the loop learns from the
 *                      adaptation events (for /metrics);
 *   daemon/web.c       the dashboard page and its assets (GET /, /dashboard, /assets/...).
 *
 * Design: two threads with one owner each:
 *   - the loop thread (the caller of dmn_server_run) owns the libuv loop, the API server,
 *     every use of cJSON, the effective config copy that PATCH requests edit, and the
 *     change log;
 *   - the trainer thread owns the struct dmn_trainer (model, arenas, data) and nothing else.
 * They share exactly two things, both under `mu`:
 *   1. a FIFO of commands (loop -> trainer), applied only between two optimizer steps. A
 *      command that needs an answer carries a plain-C result the trainer fills; the trainer
 *      moves it to the `done` list and wakes the loop with uv_async_send. Sends coalesce, so
 *      the async callback drains the whole list. The loop turns results into JSON responses.
 *   2. a status snapshot (plain struct, no pointers) the trainer republishes after steps and
 *      after every batch of commands (before answering them), plus the metric history, the
 *      last evaluations and the adaptation event texts, which the loop copies.
 *
 * Checkpoints are full run checkpoints (daemon/state.c) named ckpt-<step>.evow in the state
 * dir, written atomically; on start the newest one that loads is resumed, a corrupt one is
 * reported and set aside. Accepted changes to policy or training settings are appended to
 * changes.jsonl (time, step, sequence number, the change) and fsynced; a checkpoint records
 * the sequence number it includes, so on restart later changes are replayed. The rules of
 * the state dir (rotation, logs, archives) are in daemon/statedir.c.
 *
 * Faults (trainer thread): a failed checkpoint is counted, shown in /v1/status and /metrics
 * and logged at most once a minute; after daemon.checkpoint_failure_limit in a row the run
 * pauses or stops (daemon.on_checkpoint_failure); a failed final checkpoint makes the exit
 * code 1. Divergence (a non-finite loss, or a validation loss daemon.divergence_ratio times
 * the best) rolls back to the last-known-good checkpoint with the learning rate times
 * daemon.rollback_lr_factor: an event in events.jsonl and a "rollback" change in
 * changes.jsonl (the loop thread records it when the trainer's notice arrives).
 *
 * Shutdown: SIGTERM / SIGINT queue a stop; the trainer finishes its step, checkpoints and
 * ends; the loop then stops the API, closes every handle, and uv_loop_close must return 0.
 * A second signal exits at once (_exit: the one deliberate exception to "no exit outside
 * main", since the process is being killed). SIGHUP reloads the runtime knobs of the config
 * file. */
#ifndef DMN_SERVER_INTERNAL_H
#define DMN_SERVER_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdio.h>

#include <uv.h>

#include "api/api.h"
#include "daemon/daemon_internal.h"
#include "net/codec.h"
#include "net/net.h"

#define DMN_HIST_CAP 8192   // history points kept (thinned when full: daemon/history.c)
#define DMN_HIST_WIDTHS 32  // layers whose width a history point records
#define DMN_HIST_MIN_DT 0.5 // seconds between two ordinary points, until the first thinning
#define DMN_EVAL_RING 64    // evaluations the loop can fall behind by (stream events)
#define DMN_STREAM_MAX_CLIENTS 32
#define DMN_STREAM_STATUS_S 1.0 // a status event this often
#define DMN_STREAM_STALL_S 30.0 // a client that took nothing for this long is closed
#define DMN_TICK_MS 200         // the loop's stream / event poll
#define dmn__container_of(p, T, f) ((T *)((char *)(p)-offsetof(T, f)))
#define DMN_KEEP_CKPTS 3

// ---- commands -----------------------------------------------------------------------------

enum dmn_cmd_kind {
    DMN_CMD_PAUSE,
    DMN_CMD_RESUME,
    DMN_CMD_ADAPT,
    DMN_CMD_CHECKPOINT,
    DMN_CMD_EVAL,
    DMN_CMD_STOP,
    DMN_CMD_CONFIG,
    DMN_CMD_LAYERS,
    DMN_CMD_SPECTRUM,
    DMN_CMD_ROLLBACK, // trainer -> loop notice: the run rolled back, lr is now c->loss
};

struct dmn_layer_info {
    char name[NET_NAME_MAX];
    const char *kind;
    size_t width, out, rank, params, macs;
    size_t n_top;
    float top[8];
};

struct dmn_cmd {
    enum dmn_cmd_kind kind;
    struct dmn_config cfg;       // DMN_CMD_CONFIG: the new effective config ...
    uint64_t seq;                // ... which includes the changes up to this sequence number
    char name[NET_NAME_MAX + 8]; // DMN_CMD_SPECTRUM: layer name
    struct api_async *reply;     // loop-owned; NULL for fire-and-forget
    // results, written by the trainer
    int rc;
    char err[256];
    size_t step;
    char path[1024];
    double loss, acc, val_loss, val_acc;
    int kept;
    size_t n_layers;
    struct dmn_layer_info *layers; // DMN_CMD_LAYERS (n_layers), malloc'ed by the trainer
    float *spectrum;               // DMN_CMD_SPECTRUM (n_spec)
    size_t n_spec;
    struct dmn_cmd *next;
};

/* One point of the metric history. */
struct dmn_hist {
    double time; // seconds since the Unix epoch
    size_t step, params;
    double loss, acc, lr, val_loss, val_acc, sps; // val_*: the latest validation (NAN before)
    uint32_t widths[DMN_HIST_WIDTHS];             // (n_layers of the history), in its names' order
    int eval; // a validation pass ended here: val_* are its results
};

/* The series (daemon/history.c): pts[0..n) oldest first, at most DMN_HIST_CAP. */
struct dmn_history {
    struct dmn_hist *pts;
    size_t n;
    double min_dt, last_time; // spacing of ordinary points; time of the newest
    size_t n_layers;
    char names[DMN_HIST_WIDTHS][NET_NAME_MAX];
};

/* One validation pass, for the stream. */
struct dmn_evalrec {
    size_t step;
    double time, loss, acc;
};

/* What the loop learned from the adaptation events (daemon/stream.c), for /metrics. */
struct dmn_event_stats {
    size_t n_seen;                                     // events taken in so far
    uint64_t shrinks, grows, rank_shrinks, rank_grows; // surgeries kept
    uint64_t rolled_back, failed; // surgeries undone (validation loss) or failed
    size_t n_ranks;               // per group: the rank rule's cut at its last pass
    char rank_names[DMN_HIST_WIDTHS][SVD_EV_NAME];
    size_t ranks[DMN_HIST_WIDTHS];
};

struct dmn_client; // a GET /v1/stream client (daemon/stream.c)

/* One MPI rank as rank 0 last gathered it (daemon/dist_server.c), for /v1/status. */
struct dmn_dist_rankinfo {
    uint32_t param_crc; // dmn_dist_param_crc
    uint32_t pad;
    uint64_t step, change_seq;
    double lr; // in effect at that step
};

struct dmn_snapshot {
    char state[16];
    size_t step, total_steps, epoch, epochs, steps_per_epoch;
    double loss, acc, lr, sps, eta, val_loss, val_acc;
    size_t params, initial_params, macs;
    double train_seconds, adapt_seconds, uptime;
    size_t n_layers;
    struct dmn_layer_info layers[CFG_MAX_LAYERS];
    size_t last_ckpt_step;
    char last_ckpt[1024];
    size_t n_events;
    // Checkpoint faults and why the run paused (kept across republishing).
    size_t ckpt_failures, ckpt_failures_total, rollbacks;
    char ckpt_error[512];
    char pause_reason[768];
};

struct dmn_server {
    struct dmn_server_opts opts;
    int lock_fd;           // daemon.lock, flock'ed (0: none)
    struct dmn_config cfg; // loop thread: the effective config (PATCH edits this)
    uint64_t change_seq;   // loop thread: changes accepted so far
    char token[256];
    // Own copies of the start-up paths: s->cfg is rewritten by PATCH on the loop thread while
    // the trainer thread reads the state dir (a data race ThreadSanitizer caught).
    char state_dir[CFG_PATH_MAX], listen[CFG_ADDR_MAX], token_file[CFG_PATH_MAX];
    uv_loop_t loop;
    uv_async_t wake;
    uv_signal_t sig[3];
    struct api_server *api;
    int n_signals;
    int stopping;       // loop thread: the trainer was asked to stop
    int trainer_exited; // loop thread: the trainer's final notice arrived
    pthread_t thread;
    int thread_started;
    int exit_code;
    double start_time;
    double start_unix; // time(2) at start-up, for /metrics
    // loop thread: the stream and the event statistics (daemon/stream.c)
    uv_timer_t tick;
    struct dmn_client *clients;
    size_t n_clients;
    uint64_t stream_seq, stream_dropped, n_evals_seen;
    double next_status;
    struct dmn_event_stats evs;

    // ---- shared, under mu ----
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct dmn_cmd *q_head, *q_tail; // loop -> trainer
    struct dmn_cmd *done;            // trainer -> loop (LIFO; order does not matter)
    int trainer_done;                // the trainer thread has ended
    struct dmn_snapshot snap;
    struct dmn_history hist;
    struct dmn_evalrec evals[DMN_EVAL_RING]; // ring: evaluation i is at i % DMN_EVAL_RING
    uint64_t n_evals;
    char *events[DMN_EVENT_RING]; // the newest event texts (copied in), a ring ...
    size_t ev_n, ev_head;         // ... of ev_n held from ev_head
    size_t n_events;              // events so far (the newest one's seq)
    int final_ckpt_failed;

    // Several MPI ranks (daemon/dist_server.c): rank 0's view of every rank, under mu.
    struct dmn_dist_rankinfo *dist_ranks; // (dmn_dist_size()), NULL before the first gather

    // ---- trainer thread only ----
    struct dmn_trainer *t;
    int dist_pending; // a batch of commands went to every rank: gather their state next
    size_t dist_step; // step of the last gather
    int paused;
    int eval_new;    // a validation pass ran since the last publish
    int have_window; // a training window has been measured since start-up
    FILE *events_file;
    size_t *valid, n_valid, cap_valid; // steps of the ckpt-*.evow known to be valid
    int good_valid;                    // good-<good_step>.evow exists and is valid
    size_t good_step;
    double best_val; // best validation loss of the run so far (NAN: none)
    size_t rollbacks_in_row;
    double ckpt_last_log; // dmn_now() of the last failure logged
    size_t ckpt_unlogged; // failures since then
};

// ---- daemon/server.c: process lifecycle (loop thread) ------------------------------------

/* A timestamped line on stderr (nothing with opts.quiet). Either thread. */
void dmn__log(struct dmn_server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Stops the API and closes every libuv handle, so uv_run returns. */
void dmn__shutdown_handles(struct dmn_server *s);
/* Queues a stop once: the trainer finishes its step, checkpoints and ends. */
void dmn__request_stop(struct dmn_server *s, const char *why);

// ---- daemon/queue.c: the command queue and the trainer thread ----------------------------

/* A zeroed command of kind k, or NULL on OOM. */
struct dmn_cmd *dmn__cmd_new(enum dmn_cmd_kind k);
/* Appends c to the FIFO and wakes the trainer (loop thread). */
void dmn__enqueue(struct dmn_server *s, struct dmn_cmd *c);
/* Sends the effective config s->cfg (with s->change_seq) to the trainer; 0 or -ENOMEM. */
int dmn__push_config(struct dmn_server *s);
/* Applies one command between steps; returns 1 when the trainer must stop. Trainer thread
 * (or start-up, before the thread exists). */
int dmn__apply(struct dmn_server *s, struct dmn_cmd *c);
/* Republishes the status snapshot, and adds a history point when add_history is set or a
 * validation pass ran (s->eval_new); trainer thread. */
void dmn__publish(struct dmn_server *s, int add_history);
/* Copies the adaptation event texts produced since the last call into the shared list. */
void dmn__sync_events(struct dmn_server *s);
/* The trainer thread's body (pthread_create). */
void *dmn__trainer_main(void *arg);

// ---- daemon/dist_server.c: evowidthd on several MPI ranks (daemon/dist.h) ---------------

#define DMN_DIST_CHECK_STEPS 50 // every rank's checksum is gathered this often (and after commands)
/* Rank 0, after its run is built or resumed: sends it, s->cfg and s->change_seq to the
 * other ranks. 0, or an error in err. */
int dmn__dist_lead(struct dmn_server *s, char *err, size_t errlen);
/* Ranks above 0: takes the run from rank 0 and runs the same trainer loop without HTTP,
 * checkpoints or logs, its commands coming from rank 0. Returns the exit code. */
int dmn__dist_follow(struct dmn_server *s);
/* At the top of each trainer-loop iteration on every rank: rank 0 sends the batch of
 * commands q (those the other ranks must apply: pause, resume, adapt, config, stop) and
 * returns q; the others return the batch they received (no replies). When due, every
 * rank's checksum, step, change_seq and lr are gathered into s->dist_ranks first. */
struct dmn_cmd *dmn__dist_commands(struct dmn_server *s, struct dmn_cmd *q);

// ---- daemon/http.c: routes and answers (loop thread) -------------------------------------

extern const struct api_route DMN_ROUTES[];
extern const size_t DMN_N_ROUTES;
/* The uv_async callback: answers finished commands; after the trainer's final notice, shuts
 * the handles down. */
void dmn__wake_cb(uv_async_t *h);

// ---- daemon/statedir.c: the state dir ------------------------------------------------------

/* Creates the state dir and its parents (mkdir -p). */
int dmn__mkdirs(const char *dir, char *err, size_t errlen);
/* Reads the bearer token (trailing blanks and newlines stripped); an empty file is an error. */
int dmn__read_token(const char *path, char *out, size_t n, char *err, size_t errlen);
/* Refuses a state dir this user does not own, that another daemon holds (takes the lock:
 * daemon.lock) or that cannot be written (a probe file is written, fsynced and removed). */
int dmn__check_dir(struct dmn_server *s, char *err, size_t errlen);
/* Refuses a state dir with less than twice a checkpoint's size free (s->t must exist). */
int dmn__check_space(struct dmn_server *s, char *err, size_t errlen);
/* Opens the run: checks every checkpoint (regular files only; unusable ones are renamed
 * *.corrupt), compares the newest usable one's config with s->cfg (a difference in an
 * immutable knob is refused unless opts.resume_anyway; opts.fresh archives the old run),
 * resumes it, cuts events.jsonl back to it and replays later changes; with none, archives
 * the old run's files and creates a new run from s->cfg. 1 (resumed), 0 (a new run), or <0
 * with the reason in err. */
int dmn__open_run(struct dmn_server *s, char *err, size_t errlen);
/* Replays changes.jsonl entries newer than s->t->change_seq into s->cfg, after cutting off a
 * torn last line (loop thread, start-up). */
void dmn__replay_changes(struct dmn_server *s);
/* Appends an accepted change to changes.jsonl and fsyncs it (loop thread): 0, or <0 with the
 * reason in err and nothing recorded (the caller must not apply the change). */
int dmn__log_change(struct dmn_server *s, const char *route, const cJSON *body, char *err,
                    size_t errlen);
/* Opens events.jsonl for appending (NULL if it cannot be opened). */
FILE *dmn__open_events(const struct dmn_server *s);
/* fsyncs a directory (0 or -errno). */
int dmn__sync_dir(const char *dir);
/* Writes a checkpoint of s->t into the state dir (events.jsonl fsynced first), records it
 * in the snapshot, and deletes known-valid ones beyond the newest DMN_KEEP_CKPTS, never the
 * new one (trainer thread). path receives the file's name. */
int dmn__checkpoint(struct dmn_server *s, char *path, size_t pathlen, char *err, size_t errlen);
/* Makes checkpoint ckpt (at step) the last-known-good one: good-<step>.evow, a hard link,
 * replacing the previous one (trainer thread). */
int dmn__mark_good(struct dmn_server *s, const char *ckpt, size_t step, char *err, size_t errlen);
/* The last-known-good checkpoint's path. */
void dmn__good_path(const struct dmn_server *s, char *out, size_t n);
/* Deletes the known-valid checkpoints after step (a rollback abandons them); their steps go
 * to list as "a,b,c" (trainer thread). */
void dmn__discard_after(struct dmn_server *s, size_t step, char *list, size_t listlen);
/* Writes a checkpoint of s->t into the state dir, records it in the snapshot, and prunes all
 * but the newest DMN_KEEP_CKPTS (trainer thread). path receives the file's name. */
int dmn__checkpoint(struct dmn_server *s, char *path, size_t pathlen, char *err, size_t errlen);

// ---- daemon/history.c: the metric history -------------------------------------------------

int dmn__hist_init(struct dmn_history *h);
void dmn__hist_free(struct dmn_history *h);
/* Adds p (copied) unless it comes sooner than min_dt after the newest (force: always). */
void dmn__hist_add(struct dmn_history *h, const struct dmn_hist *p, int force);
/* The layers a history point records (dense, conv, res) of a snapshot: their names into
 * names and widths into widths (either may be NULL); returns how many (<= DMN_HIST_WIDTHS). */
size_t dmn__hist_layer_names(const struct dmn_snapshot *sn, char names[][NET_NAME_MAX],
                             uint32_t *widths);
/* Writes STATE_DIR/history.jsonl atomically from a copy of s->hist (trainer thread). */
int dmn__hist_save(struct dmn_server *s, char *err, size_t errlen);
/* Reads STATE_DIR/history.jsonl into s->hist (whose layer names are set), up to max_step;
 * start-up only. Returns the points read. */
int dmn__hist_load(struct dmn_server *s, size_t max_step);

// ---- daemon/stream.c: Server-Sent Events, event statistics (loop thread) -------------------

/* Starts the loop's tick (events, evaluations, status to the stream clients). */
int dmn__stream_start(struct dmn_server *s);
/* GET /v1/stream. */
int dmn__h_stream(struct api_req *q, struct api_resp *r, void *ctx);
/* Takes in adaptation events not seen yet: statistics, and an "adapt" event to the clients. */
void dmn__ingest_events(struct dmn_server *s);
/* Sends one event (data: one line of JSON) to every client. */
void dmn__stream_send(struct dmn_server *s, const char *event, const char *json);
/* An accepted change (route and body as logged) as a "change" event. */
void dmn__stream_change(struct dmn_server *s, const char *route, const cJSON *body);

// ---- daemon/http.c, daemon/web.c -------------------------------------------------------------

/* /v1/status as a new JSON object (caller owns), NULL on OOM. */
cJSON *dmn__status_json(struct dmn_server *s);
/* One embedded file of the dashboard (generated web_assets.c, scripts/embed_assets.py). */
struct dmn_asset {
    const char *name, *ctype;
    const unsigned char *data; // (len), NUL-terminated beyond len
    size_t len;
};
extern const struct dmn_asset DMN_ASSETS[];
extern const size_t DMN_N_ASSETS;
/* The dashboard's routes (daemon/web.c). */
int dmn__h_page(struct api_req *q, struct api_resp *r, void *ctx);
int dmn__h_asset(struct api_req *q, struct api_resp *r, void *ctx);

#endif
