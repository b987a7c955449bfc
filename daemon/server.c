/* daemon/server.c: evowidthd's process lifecycle (loop thread): start-up (config, state
 * dir, resume or a new run, the API, the trainer thread), signals (SIGTERM / SIGINT stop,
 * a second one exits at once, SIGHUP reloads the runtime knobs) and the orderly shutdown.
 * The design of the two threads is in daemon/server_internal.h. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon/dist.h"
#include "daemon/server_internal.h"

// ---- logging ------------------------------------------------------------------------------

void dmn__log(struct dmn_server *s, const char *fmt, ...)
{
    if (s->opts.quiet) return;
    time_t now = time(NULL);
    struct tm tm;
    char ts[32];
    localtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%H:%M:%S", &tm);
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "evowidthd %s ", ts);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

// ---- loop thread: signals and shutdown ------------------------------------------------------

static void dmn__close_cb(uv_handle_t *h)
{
    (void)h;
}

static void dmn__walk_close(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h)) uv_close(h, dmn__close_cb);
}

void dmn__shutdown_handles(struct dmn_server *s)
{
    if (s->api) {
        api_server_stop(s->api);
        s->api = NULL;
    }
    uv_walk(&s->loop, dmn__walk_close, NULL);
}

void dmn__request_stop(struct dmn_server *s, const char *why)
{
    if (s->stopping) return;
    s->stopping = 1;
    dmn__log(s, "%s: finishing the step, then checkpoint and exit", why);
    struct dmn_cmd *c = dmn__cmd_new(DMN_CMD_STOP);
    if (c) dmn__enqueue(s, c);
}

static void dmn__reload(struct dmn_server *s)
{
    struct dmn_config *n = malloc(sizeof(*n)), *tmp = malloc(sizeof(*tmp));
    char err[512];
    if (!n || !tmp) goto out;
    if (cfg_load_file(n, s->opts.config_path, err, sizeof(err)) < 0) {
        dmn__log(s, "SIGHUP: config not reloaded: %s", err);
        goto out;
    }
    *tmp = s->cfg;
    if (cfg_copy_runtime(tmp, n, err, sizeof(err)) < 0) {
        dmn__log(s, "SIGHUP: config not reloaded: %s", err);
        goto out;
    }
    cJSON *body = cJSON_CreateObject();
    cJSON_AddItemToObject(body, "adapt", cfg_section_to_json(tmp, "adapt"));
    cJSON_AddItemToObject(body, "train", cfg_section_to_json(tmp, "train"));
    cJSON_AddNumberToObject(body, "lr", tmp->optimizer.lr);
    if (dmn__log_change(s, "SIGHUP", body, err, sizeof(err)) < 0) {
        cJSON_Delete(body);
        dmn__log(s, "SIGHUP: config not reloaded: %s", err);
        goto out;
    }
    dmn__stream_change(s, "SIGHUP", body);
    cJSON_Delete(body);
    s->cfg = *tmp;
    dmn__push_config(s);
    dmn__log(s, "SIGHUP: runtime settings reloaded from %s", s->opts.config_path);
out:
    free(n);
    free(tmp);
}

static void dmn__signal_cb(uv_signal_t *h, int signum)
{
    struct dmn_server *s = h->data;
    if (signum == SIGHUP) {
        dmn__reload(s);
        return;
    }
    if (++s->n_signals > 1) {
        // Second SIGINT / SIGTERM: leave at once, as promised to the operator.
        static const char msg[] = "evowidthd: second signal, exiting now\n";
        if (write(2, msg, sizeof(msg) - 1) < 0) { /* nothing more to do */
        }
        _exit(128 + signum);
    }
    dmn__request_stop(s, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

// ---- start-up and the run -------------------------------------------------------------------

int dmn_server_run(const struct dmn_server_opts *o)
{
    struct dmn_server *s = calloc(1, sizeof(*s));
    char err[1024];
    int rc, loop_ok = 0, code = 1;
    if (!s) return 1;
    s->opts = *o;
    s->start_time = dmn_now();
    s->best_val = NAN;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->start_unix = (double)time(NULL);
    if (dmn__hist_init(&s->hist) < 0) goto out;
    if ((rc = cfg_load_file(&s->cfg, o->config_path, err, sizeof(err))) < 0) {
        fprintf(stderr, "evowidthd: %s\n", err);
        goto out;
    }
    snprintf(s->state_dir, sizeof(s->state_dir), "%s",
             s->opts.state_dir ? s->opts.state_dir : s->cfg.daemon.state_dir);
    snprintf(s->listen, sizeof(s->listen), "%s",
             s->opts.listen ? s->opts.listen : s->cfg.daemon.listen);
    snprintf(s->token_file, sizeof(s->token_file), "%s",
             s->opts.token_file ? s->opts.token_file : s->cfg.daemon.token_file);
    s->opts.state_dir = s->state_dir;
    s->opts.listen = s->listen;
    s->opts.token_file = s->token_file;
    if (!dmn_dist_is_root()) { // several MPI ranks: this one trains beside rank 0
        code = dmn__dist_follow(s);
        goto out;
    }
    if (s->opts.token_file[0] &&
        dmn__read_token(s->opts.token_file, s->token, sizeof(s->token), err, sizeof(err)) < 0) {
        fprintf(stderr, "evowidthd: %s\n", err);
        goto out;
    }
    if (dmn__mkdirs(s->opts.state_dir, err, sizeof(err)) < 0 ||
        dmn__check_dir(s, err, sizeof(err)) < 0) {
        fprintf(stderr, "evowidthd: %s\n", err);
        goto out;
    }
    // Resume (the checkpoint's config is the run's; later runtime changes are replayed), or
    // start a new run from the config.
    if ((rc = dmn__open_run(s, err, sizeof(err))) < 0 ||
        dmn__check_space(s, err, sizeof(err)) < 0) {
        fprintf(stderr, "evowidthd: %s\n", err);
        goto out;
    }
    const int resumed = rc == 1;
    if ((rc = dmn__dist_lead(s, err, sizeof(err))) < 0) { // the run to the other ranks
        fprintf(stderr, "evowidthd: %s\n", err);
        goto out;
    }
    s->t->log = s->opts.quiet ? NULL : stderr;
    s->events_file = dmn__open_events(s);
    s->t->events = s->events_file;
    dmn__sync_events(s);
    dmn__publish(s, 0);
    // The history of the resumed checkpoint (daemon/history.c); a new run starts a new one.
    s->hist.n_layers = dmn__hist_layer_names(&s->snap, s->hist.names, NULL);
    if (resumed) dmn__hist_load(s, s->t->step);
    dmn__publish(s, 1);
    // Apply replayed settings through the same path as PATCH.
    {
        struct dmn_cmd c = {.kind = DMN_CMD_CONFIG, .cfg = s->cfg, .seq = s->change_seq};
        dmn__apply(s, &c);
    }

    if ((rc = uv_loop_init(&s->loop)) < 0) {
        fprintf(stderr, "evowidthd: uv_loop_init: %s\n", uv_strerror(rc));
        goto out;
    }
    loop_ok = 1;
    if ((rc = uv_async_init(&s->loop, &s->wake, dmn__wake_cb)) < 0) goto uverr;
    if ((rc = dmn__stream_start(s)) < 0) goto uverr;
    static const int sigs[3] = {SIGINT, SIGTERM, SIGHUP};
    for (int i = 0; i < 3; i++) {
        if ((rc = uv_signal_init(&s->loop, &s->sig[i])) < 0) goto uverr;
        s->sig[i].data = s;
        if ((rc = uv_signal_start(&s->sig[i], dmn__signal_cb, sigs[i])) < 0) goto uverr;
    }
    struct api_opts ao;
    api_opts_default(&ao);
    ao.listen = s->opts.listen;
    ao.token = s->token[0] ? s->token : NULL;
    ao.limits.header_timeout_ms = s->cfg.daemon.header_timeout_ms;
    ao.limits.idle_timeout_ms = s->cfg.daemon.idle_timeout_ms;
    ao.limits.max_conns = s->cfg.daemon.max_connections;
    if ((rc = api_server_start(&s->api, &s->loop, &ao, DMN_ROUTES, DMN_N_ROUTES, s, err,
                               sizeof(err))) < 0) {
        fprintf(stderr, "evowidthd: cannot listen on %s: %s\n", s->opts.listen, err);
        s->api = NULL;
        goto close_loop;
    }
    if ((rc = pthread_create(&s->thread, NULL, dmn__trainer_main, s)) != 0) {
        fprintf(stderr, "evowidthd: cannot start the trainer thread: %s\n", strerror(rc));
        goto close_loop;
    }
    s->thread_started = 1;
    // The line scripts wait for: the address to poll.
    printf("evowidthd: training %s, state in %s, listening on http://%s:%d/v1/status\n",
           o->config_path, s->opts.state_dir,
           strncmp(s->opts.listen, "[::1]", 5) == 0 ? "[::1]" : "127.0.0.1",
           api_server_port(s->api));
    printf("evowidthd: the dashboard: http://%s:%d/\n",
           strncmp(s->opts.listen, "[::1]", 5) == 0 ? "[::1]" : "127.0.0.1",
           api_server_port(s->api));
    fflush(stdout);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    pthread_join(s->thread, NULL);
    s->thread_started = 0;
    code = s->final_ckpt_failed ? 1 : 0;
    goto close_loop;
uverr:
    fprintf(stderr, "evowidthd: libuv: %s\n", uv_strerror(rc));
close_loop:
    if (s->thread_started) {
        dmn__request_stop(s, "start-up failure");
        pthread_join(s->thread, NULL);
    }
    dmn__shutdown_handles(s);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    // Replies still queued (the loop ended first) are dropped with their handles.
    while (s->done) {
        struct dmn_cmd *d = s->done;
        s->done = d->next;
        if (d->reply) api_async_complete(d->reply, 503); // (a rollback notice has none)
        free(d->layers);
        free(d->spectrum);
        free(d);
    }
    if (loop_ok && (rc = uv_loop_close(&s->loop)) != 0) {
        fprintf(stderr, "evowidthd: uv_loop_close: %s\n", uv_strerror(rc));
        code = 1;
    }
out:
    while (s->q_head) {
        struct dmn_cmd *c = s->q_head;
        s->q_head = c->next;
        free(c);
    }
    for (size_t i = 0; i < s->ev_n; i++) free(s->events[(s->ev_head + i) % DMN_EVENT_RING]);
    dmn_trainer_destroy(s->t);
    if (s->events_file) fclose(s->events_file);
    dmn__hist_free(&s->hist);
    free(s->valid);
    if (s->lock_fd > 0) close(s->lock_fd); // releases the flock
    free(s->dist_ranks);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
    return code;
}
