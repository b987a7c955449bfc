/* daemon/daemon_internal.h: what daemon/ sources share (owner: daemon/). */
#ifndef DMN_INTERNAL_H
#define DMN_INTERNAL_H

#include "daemon/daemon.h"

/* Adaptation glue (daemon/adapt.c): sets up t->adapt from t->cfg.adapt. */
int dmn__adapt_init(struct dmn_trainer *t, char *err, size_t errlen);
void dmn__adapt_free(struct dmn_trainer *t);
/* Runs an adaptation when the policy's schedule says so; 0 or negative errno. */
int dmn__adapt_maybe(struct dmn_trainer *t);
/* Adaptation state (policy counters, event log) as bytes for the checkpoint's TRNR chunk,
 * and back; *out is malloc'ed (NULL with len 0 when there is nothing). */
int dmn__adapt_serialize(struct dmn_trainer *t, void **out, size_t *len);
int dmn__adapt_deserialize(struct dmn_trainer *t, const void *data, size_t len);
/* The adaptation events so far as a JSON array (caller owns), NULL when none / OOM. */
cJSON *dmn__adapt_events_json(struct dmn_trainer *t);
/* Events kept in memory (texts); older ones are in the event log file only. */
#define DMN_EVENT_RING 1024
/* Number of events so far (= the seq of the newest), and event i's JSON text (seq i + 1;
 * borrowed, valid until the next event), NULL when it is no longer (or not) held. */
size_t dmn__adapt_n_events(const struct dmn_trainer *t);
const char *dmn__adapt_event(const struct dmn_trainer *t, size_t i);
/* Records an event (j is consumed; NULL on OOM still counts): adds "seq", appends the line
 * to t->events and holds the text. Returns its seq. Adaptation passes and the daemon's
 * rollbacks are events. */
uint64_t dmn__adapt_record(struct dmn_trainer *t, cJSON *j);
/* Holds an already logged event's text again (resume: the tail of events.jsonl); seq must
 * be above the held ones and at most the count. 0, -EINVAL or -ENOMEM. */
int dmn__adapt_hold(struct dmn_trainer *t, uint64_t seq, const char *text);
/* Sets the event count (texts above it are dropped): the resumed checkpoint's, or a
 * rolled-back run continuing the seq of the run it replaces. */
void dmn__adapt_set_count(struct dmn_trainer *t, uint64_t n);
/* After loading a checkpoint: its texts (if any) are the newest events, the last one event n;
 * the count becomes n. -EINVAL (nothing changed) when n is below the texts held. */
int dmn__adapt_renumber(struct dmn_trainer *t, uint64_t n);
/* An adaptation pass as JSON (caller owns): step, time, seconds, mode, params, widths before
 * and after, and per group its action, reason, spectrum summary and judged losses. */
struct svd_event;
cJSON *dmn_event_json(const struct svd_event *e);
/* Adds the configured group-lasso gradient (optimizer.group_lasso) to the net's grads. */
void dmn__group_lasso(struct dmn_trainer *t);

#endif
