/* daemon/history.c: evowidthd's metric history: the series behind /v1/history, the
 * dashboard's charts and the stream's evaluations, kept in the state dir across restarts.
 *
 * Design. The series is one array of at most DMN_HIST_CAP points, oldest first, under the
 * server's mutex. The trainer adds a point when it republishes its snapshot, at most one per
 * `min_dt` seconds, and always at a validation pass (eval points) and when a width changed.
 * When the array is full it is thinned in place: every other point that is not an eval point
 * goes and min_dt doubles, so a run of any length keeps its whole span at a resolution that
 * halves as it grows (the idea of a round-robin database), in bounded memory.
 *
 * Persistence. STATE_DIR/history.jsonl is rewritten atomically (net_write_atomic) right
 * after every checkpoint, on the trainer thread, from a copy taken under the mutex. It is
 * therefore the history of the newest checkpoint: on start-up it is read back and cut at the
 * resumed step (a crash after a checkpoint replays the steps after it, which add their
 * points again), and it is dropped when no checkpoint was resumed or when it names other
 * layers (another model). Format: a first line {"history":1,"layers":[names]}, then one
 * JSON object a point: t (Unix seconds), step, loss, acc, lr, sps, params, val_loss,
 * val_acc (null before the first validation), eval (1 at a validation pass), w (widths in
 * the order of "layers"). Writing uses printf only; reading (start-up, before the trainer
 * thread) uses cJSON. A line that does not parse (a torn tail) ends the read. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/server_internal.h"
#include "net/codec.h"

int dmn__hist_init(struct dmn_history *h)
{
    memset(h, 0, sizeof(*h));
    h->pts = calloc(DMN_HIST_CAP, sizeof(*h->pts));
    h->min_dt = DMN_HIST_MIN_DT;
    return h->pts ? 0 : -ENOMEM;
}

void dmn__hist_free(struct dmn_history *h)
{
    free(h->pts);
    h->pts = NULL;
    h->n = 0;
}

/* Every other non-eval point goes (the newest always stays) and the spacing doubles; when
 * nearly all points are eval points (eval_every_steps 1), the older half of them goes. */
static void dmn__hist_thin(struct dmn_history *h)
{
    size_t k = 0, plain = 0;
    for (size_t i = 0; i < h->n; i++) {
        const struct dmn_hist *p = &h->pts[i];
        if (p->eval || i == h->n - 1 || plain++ % 2 == 0) h->pts[k++] = *p;
    }
    if (k > DMN_HIST_CAP / 4 * 3) {
        size_t drop = k / 2;
        memmove(h->pts, h->pts + drop, (k - drop) * sizeof(*h->pts));
        k -= drop;
    }
    h->n = k;
    h->min_dt *= 2;
}

void dmn__hist_add(struct dmn_history *h, const struct dmn_hist *p, int force)
{
    if (!h->pts) return;
    if (!force && h->n && p->time - h->last_time < h->min_dt) return;
    if (h->n && p->step < h->pts[h->n - 1].step) return; // never out of order
    if (h->n && p->step == h->pts[h->n - 1].step && !force) return;
    if (h->n == DMN_HIST_CAP) dmn__hist_thin(h);
    h->pts[h->n++] = *p;
    h->last_time = p->time;
}

size_t dmn__hist_layer_names(const struct dmn_snapshot *sn, char names[][NET_NAME_MAX],
                             uint32_t *widths)
{
    size_t k = 0;
    for (size_t i = 0; i < sn->n_layers && k < DMN_HIST_WIDTHS; i++) {
        const struct dmn_layer_info *l = &sn->layers[i];
        if (strcmp(l->kind, "dense") && strcmp(l->kind, "conv") && strcmp(l->kind, "res")) continue;
        if (names) snprintf(names[k], NET_NAME_MAX, "%s", l->name);
        if (widths) widths[k] = (uint32_t)l->width;
        k++;
    }
    return k;
}

// ---- the file -------------------------------------------------------------------------------

static void dmn__put_num(FILE *f, const char *key, double v)
{
    if (isfinite(v))
        fprintf(f, ",\"%s\":%.17g", key, v); // exact: a reload gives the same series
    else
        fprintf(f, ",\"%s\":null", key);
}

int dmn__hist_save(struct dmn_server *s, char *err, size_t errlen)
{
    struct dmn_history copy;
    char path[CFG_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/history.jsonl", s->state_dir);
    pthread_mutex_lock(&s->mu);
    copy = s->hist;
    copy.pts = malloc((s->hist.n + 1) * sizeof(*copy.pts));
    if (copy.pts) memcpy(copy.pts, s->hist.pts, s->hist.n * sizeof(*copy.pts));
    pthread_mutex_unlock(&s->mu);
    if (!copy.pts) {
        snprintf(err, errlen, "out of memory for the history");
        return -ENOMEM;
    }
    // Built in memory, written by the codec's atomic write (and its write layer).
    char *text = NULL;
    size_t text_len = 0;
    FILE *f = open_memstream(&text, &text_len);
    if (!f) {
        snprintf(err, errlen, "out of memory for the history");
        free(copy.pts);
        return -ENOMEM;
    }
    fprintf(f, "{\"history\":1,\"layers\":[");
    for (size_t j = 0; j < copy.n_layers; j++)
        fprintf(f, "%s\"%s\"", j ? "," : "", copy.names[j]); // names are [A-Za-z0-9_.-]
    fprintf(f, "]}\n");
    for (size_t i = 0; i < copy.n; i++) {
        const struct dmn_hist *p = &copy.pts[i];
        fprintf(f, "{\"t\":%.3f,\"step\":%zu", p->time, p->step);
        dmn__put_num(f, "loss", p->loss);
        dmn__put_num(f, "acc", p->acc);
        dmn__put_num(f, "lr", p->lr);
        dmn__put_num(f, "sps", p->sps);
        fprintf(f, ",\"params\":%zu", p->params);
        dmn__put_num(f, "val_loss", p->val_loss);
        dmn__put_num(f, "val_acc", p->val_acc);
        if (p->eval) fprintf(f, ",\"eval\":1");
        fprintf(f, ",\"w\":[");
        for (size_t j = 0; j < copy.n_layers; j++) fprintf(f, "%s%u", j ? "," : "", p->widths[j]);
        fprintf(f, "]}\n");
    }
    free(copy.pts);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad || !text) {
        free(text);
        snprintf(err, errlen, "out of memory for the history");
        return -ENOMEM;
    }
    int rc = net_write_atomic(path, text, text_len, err, errlen);
    free(text);
    return rc;
}

static double dmn__get_num(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

int dmn__hist_load(struct dmn_server *s, size_t max_step)
{
    char path[CFG_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/history.jsonl", s->state_dir);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char *line = NULL;
    size_t cap = 0, n = 0;
    ssize_t len;
    int header_ok = 0;
    struct dmn_history *h = &s->hist; // start-up: the trainer thread does not exist yet
    while ((len = getline(&line, &cap, f)) > 0) {
        cJSON *o = cJSON_ParseWithLength(line, (size_t)len);
        if (!o) break; // a torn tail
        if (!header_ok) {
            const cJSON *ls = cJSON_GetObjectItemCaseSensitive(o, "layers"), *v;
            size_t k = 0;
            header_ok = cJSON_IsArray(ls) && (size_t)cJSON_GetArraySize(ls) == h->n_layers;
            cJSON_ArrayForEach(v, ls)
            {
                if (!header_ok) break;
                header_ok =
                    cJSON_IsString(v) && k < h->n_layers && !strcmp(v->valuestring, h->names[k]);
                k++;
            }
            cJSON_Delete(o);
            if (!header_ok) {
                dmn__log(s, "history %s is of other layers; starting a new one", path);
                break;
            }
            continue;
        }
        struct dmn_hist p = {0};
        double step = dmn__get_num(o, "step"), params = dmn__get_num(o, "params");
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(o, "w"), *v;
        int good = isfinite(step) && step >= 0 && isfinite(params) && cJSON_IsArray(w) &&
                   (size_t)cJSON_GetArraySize(w) == h->n_layers;
        if (good) {
            p.step = (size_t)step;
            p.params = (size_t)params;
            p.time = dmn__get_num(o, "t");
            p.loss = dmn__get_num(o, "loss");
            p.acc = dmn__get_num(o, "acc");
            p.lr = dmn__get_num(o, "lr");
            p.sps = dmn__get_num(o, "sps");
            p.val_loss = dmn__get_num(o, "val_loss");
            p.val_acc = dmn__get_num(o, "val_acc");
            p.eval = cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(o, "eval"));
            size_t k = 0;
            cJSON_ArrayForEach(v, w) p.widths[k++] =
                cJSON_IsNumber(v) ? (uint32_t)v->valuedouble : 0;
        }
        cJSON_Delete(o);
        if (!good) break;
        if (p.step > max_step) break; // after the checkpoint: those steps run again
        if (h->n && p.step < h->pts[h->n - 1].step) break;
        if (h->n == DMN_HIST_CAP) dmn__hist_thin(h);
        h->pts[h->n++] = p;
        n++;
    }
    free(line);
    fclose(f);
    if (n) {
        h->last_time = h->pts[h->n - 1].time;
        dmn__log(s, "history: %zu points up to step %zu", h->n, h->pts[h->n - 1].step);
    }
    return (int)n;
}
