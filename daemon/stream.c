/* daemon/stream.c: GET /v1/stream (Server-Sent Events) and what the loop learns from the
 * adaptation events. Loop thread only.
 *
 * Design. A timer on the loop (every DMN_TICK_MS) takes in what the trainer published since
 * the last tick: new adaptation event texts (counted for /metrics and sent as "adapt"
 * events) and new validation passes (the "eval" events, from a ring of DMN_EVAL_RING); every
 * DMN_STREAM_STATUS_S it sends a "status" event (the /v1/status object). Accepted changes
 * are sent by the handler that accepted them ("change"). Each event is
 *   id: N \n event: KIND \n data: ONE-LINE-JSON \n \n
 * so `curl -N` shows it and a browser's EventSource takes it as is.
 *
 * Slow and vanished clients. The trainer never waits for the loop, and the loop never waits
 * for a client: api_stream_write refuses (-EAGAIN) once daemon.stream_queue_bytes wait for a
 * client, and that client then misses events, counted; before its next event it gets one
 * "dropped" event ({"dropped": N}) saying how many it missed, so a page can reload the
 * history. A client that took nothing for DMN_STREAM_STALL_S is closed; one that hangs up is
 * noticed by the API (its input is read) and removed in on_close. Memory per client is thus
 * bounded by the queue limit plus the socket's small send buffer. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/server_internal.h"

struct dmn_client {
    struct dmn_server *s;
    struct api_stream *st;
    struct dmn_client *prev, *next;
    uint64_t missed; // events not sent since the last "dropped" note
    double stalled;  // dmn_now() of the first refused write since the last accepted one
    int fresh;       // connected since the last tick: greet it with the status
};

/* The first bytes a client gets: the reconnection delay and the status. */
static void dmn__client_greet(struct dmn_client *c, const char *status)
{
    static const char hello[] = "retry: 3000\n\n";
    struct dmn_server *s = c->s;
    api_stream_write(c->st, hello, sizeof(hello) - 1);
    size_t n = strlen(status) + 64;
    char *msg = malloc(n);
    if (!msg) return;
    int k = snprintf(msg, n, "id: %llu\nevent: status\ndata: %s\n\n",
                     (unsigned long long)++s->stream_seq, status);
    api_stream_write(c->st, msg, (size_t)k);
    free(msg);
}

// ---- sending --------------------------------------------------------------------------------

/* Writes text to one client, first the note about what it missed; counts what it misses. */
static void dmn__client_put(struct dmn_client *c, const char *text, size_t n)
{
    struct dmn_server *s = c->s;
    if (c->missed) {
        char note[96];
        int k = snprintf(note, sizeof(note), "event: dropped\ndata: {\"dropped\":%llu}\n\n",
                         (unsigned long long)c->missed);
        if (api_stream_write(c->st, note, (size_t)k) == 0) c->missed = 0;
    }
    int rc = c->missed ? -EAGAIN : api_stream_write(c->st, text, n);
    if (rc == 0) {
        c->stalled = 0;
    } else if (rc == -EAGAIN || rc == -ENOMEM) {
        c->missed++;
        s->stream_dropped++;
        if (c->stalled == 0) c->stalled = dmn_now();
    }
}

void dmn__stream_send(struct dmn_server *s, const char *event, const char *json)
{
    if (!s->clients) return;
    size_t n = strlen(json) + strlen(event) + 48;
    char *text = malloc(n);
    if (!text) return;
    int k = snprintf(text, n, "id: %llu\nevent: %s\ndata: %s\n\n",
                     (unsigned long long)++s->stream_seq, event, json);
    for (struct dmn_client *c = s->clients, *next; c; c = next) {
        next = c->next;
        dmn__client_put(c, text, (size_t)k);
    }
    free(text);
}

static void dmn__stream_send_json(struct dmn_server *s, const char *event, cJSON *o)
{
    char *text = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (text) dmn__stream_send(s, event, text);
    cJSON_free(text);
}

void dmn__stream_change(struct dmn_server *s, const char *route, const cJSON *body)
{
    if (!s->clients) return;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "seq", (double)s->change_seq);
    pthread_mutex_lock(&s->mu);
    size_t step = s->snap.step;
    pthread_mutex_unlock(&s->mu);
    cJSON_AddNumberToObject(o, "step", (double)step);
    cJSON_AddStringToObject(o, "route", route);
    cJSON_AddItemToObject(o, "change", cJSON_Duplicate(body, 1));
    dmn__stream_send_json(s, "change", o);
}

// ---- what the trainer published ----------------------------------------------------------------

/* Counts one event's surgeries and remembers each group's rank-rule cut. */
static void dmn__count_event(struct dmn_event_stats *e, const cJSON *ev)
{
    const cJSON *c, *ch = cJSON_GetObjectItemCaseSensitive(ev, "changes");
    cJSON_ArrayForEach(c, ch)
    {
        const char *group = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(c, "group"));
        const char *act = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(c, "action"));
        const cJSON *kept = cJSON_GetObjectItemCaseSensitive(c, "kept");
        if (!group || !act) continue;
        if (cJSON_IsNumber(kept) && kept->valuedouble > 0) {
            size_t i = 0;
            while (i < e->n_ranks && strcmp(e->rank_names[i], group)) i++;
            if (i == e->n_ranks && i < DMN_HIST_WIDTHS)
                snprintf(e->rank_names[e->n_ranks++], SVD_EV_NAME, "%s", group);
            if (i < e->n_ranks) e->ranks[i] = (size_t)kept->valuedouble;
        }
        if (!strcmp(act, "keep") || !strcmp(act, "skip")) continue;
        if (cJSON_GetObjectItemCaseSensitive(c, "error")) {
            e->failed++;
        } else if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "rolled_back"))) {
            e->rolled_back++;
        } else {
            e->shrinks += !strcmp(act, "shrink");
            e->grows += !strcmp(act, "grow");
            e->rank_shrinks += !strcmp(act, "shrink_rank");
            e->rank_grows += !strcmp(act, "grow_rank");
        }
    }
}

void dmn__ingest_events(struct dmn_server *s)
{
    // The shared texts are a ring the trainer overwrites: copy the new ones under the lock
    // (at most the ring's worth: a loop that fell further behind skips the oldest).
    pthread_mutex_lock(&s->mu);
    size_t from = s->evs.n_seen, total = s->n_events;
    size_t n_new = total > from ? total - from : 0;
    if (n_new > s->ev_n) n_new = s->ev_n;
    char **texts = n_new ? calloc(n_new, sizeof(char *)) : NULL;
    for (size_t i = 0; texts && i < n_new; i++)
        texts[i] = strdup(s->events[(s->ev_head + s->ev_n - n_new + i) % DMN_EVENT_RING]);
    pthread_mutex_unlock(&s->mu);
    s->evs.n_seen = total;
    if (!texts) return;
    for (size_t i = 0; i < n_new; i++) {
        if (!texts[i]) continue;
        cJSON *ev = cJSON_Parse(texts[i]);
        const char *kind = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ev, "kind"));
        const int rollback = kind && !strcmp(kind, "rollback");
        if (ev && !rollback) dmn__count_event(&s->evs, ev);
        cJSON_Delete(ev);
        dmn__stream_send(s, rollback ? "rollback" : "adapt", texts[i]);
        free(texts[i]);
    }
    free(texts);
}

static cJSON *dmn__num_or_null(double v)
{
    return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull();
}

/* New validation passes as "eval" events. */
static void dmn__ingest_evals(struct dmn_server *s)
{
    struct dmn_evalrec ring[DMN_EVAL_RING];
    pthread_mutex_lock(&s->mu);
    uint64_t total = s->n_evals;
    memcpy(ring, s->evals, sizeof(ring));
    pthread_mutex_unlock(&s->mu);
    uint64_t from = s->n_evals_seen;
    if (total - from > DMN_EVAL_RING) from = total - DMN_EVAL_RING; // fell behind: the newest
    for (uint64_t i = from; i < total; i++) {
        const struct dmn_evalrec *e = &ring[i % DMN_EVAL_RING];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "step", (double)e->step);
        cJSON_AddNumberToObject(o, "time", e->time);
        cJSON_AddItemToObject(o, "val_loss", dmn__num_or_null(e->loss));
        cJSON_AddItemToObject(o, "val_accuracy", dmn__num_or_null(e->acc));
        dmn__stream_send_json(s, "eval", o);
    }
    s->n_evals_seen = total;
}

static void dmn__tick_cb(uv_timer_t *h)
{
    struct dmn_server *s = dmn__container_of(h, struct dmn_server, tick);
    dmn__ingest_events(s);
    dmn__ingest_evals(s);
    if (!s->clients) return;
    double now = dmn_now();
    int any_fresh = 0;
    for (struct dmn_client *c = s->clients; c; c = c->next) any_fresh |= c->fresh;
    if (any_fresh) {
        cJSON *o = dmn__status_json(s);
        char *text = o ? cJSON_PrintUnformatted(o) : NULL;
        cJSON_Delete(o);
        for (struct dmn_client *c = s->clients; text && c; c = c->next)
            if (c->fresh) {
                c->fresh = 0;
                dmn__client_greet(c, text);
            }
        cJSON_free(text);
    }
    if (now >= s->next_status) {
        s->next_status = now + DMN_STREAM_STATUS_S;
        dmn__stream_send_json(s, "status", dmn__status_json(s));
    }
    for (struct dmn_client *c = s->clients; c; c = c->next)
        if (c->stalled > 0 && now - c->stalled > DMN_STREAM_STALL_S) {
            dmn__log(s, "stream client took nothing for %.0f s; closing it", DMN_STREAM_STALL_S);
            c->stalled = 0;
            api_stream_close(c->st); // removed in dmn__client_gone
        }
}

int dmn__stream_start(struct dmn_server *s)
{
    int rc = uv_timer_init(&s->loop, &s->tick);
    if (rc < 0) return rc;
    // The events restored from a checkpoint count for /metrics but are not news.
    dmn__ingest_events(s);
    pthread_mutex_lock(&s->mu);
    s->n_evals_seen = s->n_evals;
    pthread_mutex_unlock(&s->mu);
    return uv_timer_start(&s->tick, dmn__tick_cb, DMN_TICK_MS, DMN_TICK_MS);
}

// ---- clients --------------------------------------------------------------------------------

static void dmn__client_gone(struct api_stream *st, void *ud)
{
    struct dmn_client *c = ud;
    struct dmn_server *s = c->s;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->clients = c->next;
    if (c->next) c->next->prev = c->prev;
    s->n_clients--;
    free(c);
}

int dmn__h_stream(struct api_req *q, struct api_resp *r, void *ctx)
{
    struct dmn_server *s = ctx;
    if (s->n_clients >= DMN_STREAM_MAX_CLIENTS) {
        api_resp_header(r, "Retry-After", "5");
        return api_resp_error(r, 503, NULL, "%d stream clients already", DMN_STREAM_MAX_CLIENTS);
    }
    struct dmn_client *c = calloc(1, sizeof(*c));
    if (!c) return api_resp_error(r, 503, NULL, "out of memory");
    c->s = s;
    c->st = api_resp_stream(r, "text/event-stream", s->cfg.daemon.stream_queue_bytes,
                            dmn__client_gone, c);
    if (!c->st) {
        free(c);
        return api_resp_error(r, 503, NULL, "cannot stream on this request");
    }
    c->next = s->clients;
    if (s->clients) s->clients->prev = c;
    s->clients = c;
    s->n_clients++;
    c->fresh = 1; // greeted at the next tick, once the head has gone out
    return API_STREAM;
}
