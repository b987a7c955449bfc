/* daemon/statedir.c: evowidthd's state dir.
 *
 * Layout of STATE_DIR:
 *   ckpt-<step, 12 digits>.evow  full run checkpoints (daemon/state.c), written atomically;
 *                                the newest DMN_KEEP_CKPTS are kept, names sort by step;
 *   changes.jsonl                accepted runtime changes, one JSON object a line (seq, time,
 *                                step, route, change), fsynced; a checkpoint records the seq
 *                                it includes, so later lines are replayed on resume;
 *   events.jsonl                 the adaptation event log (appended by svd_adapt).
 * The token file (daemon.token_file) is read here too. Checkpoints are written on the trainer
 * thread; the change log is written and replayed on the loop thread (it uses cJSON). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "daemon/server_internal.h"

// ---- names ---------------------------------------------------------------------------------

/* 1 if a directory entry is named like a checkpoint (ckpt-*.evow). */
static int dmn__is_ckpt_name(const char *nm)
{
    size_t ln = strlen(nm);
    return !strncmp(nm, "ckpt-", 5) && ln > 5 && !strcmp(nm + ln - 5, ".evow");
}

static int dmn__ckpt_path(const struct dmn_server *s, size_t step, char *out, size_t n)
{
    return snprintf(out, n, "%s/ckpt-%012zu.evow", s->opts.state_dir, step) >= (int)n
               ? -ENAMETOOLONG
               : 0;
}

// ---- checkpoints (trainer thread) ------------------------------------------------------------

/* Deletes all but the newest `keep` checkpoints of dir. */
static void dmn__rotate(const char *dir, int keep)
{
    struct dirent **list = NULL;
    int nl = scandir(dir, &list, NULL, alphasort);
    int kept = 0;
    for (int i = nl - 1; i >= 0; i--) {
        const char *nm = list[i]->d_name;
        if (dmn__is_ckpt_name(nm) && ++kept > keep) {
            char p[1024];
            snprintf(p, sizeof(p), "%s/%s", dir, nm);
            unlink(p);
        }
        free(list[i]);
    }
    free(list);
}

int dmn__checkpoint(struct dmn_server *s, char *path, size_t pathlen, char *err, size_t errlen)
{
    int rc = dmn__ckpt_path(s, s->t->step, path, pathlen);
    if (rc < 0) {
        snprintf(err, errlen, "state dir path too long");
        return rc;
    }
    if ((rc = dmn_trainer_save(s->t, path, err, errlen)) < 0) return rc;
    pthread_mutex_lock(&s->mu);
    snprintf(s->snap.last_ckpt, sizeof(s->snap.last_ckpt), "%s", path);
    s->snap.last_ckpt_step = s->t->step;
    pthread_mutex_unlock(&s->mu);
    dmn__rotate(s->opts.state_dir, DMN_KEEP_CKPTS);
    return 0;
}

// ---- start-up (loop thread, before the trainer thread) --------------------------------------

int dmn__mkdirs(const char *dir, char *err, size_t errlen)
{
    char p[1024];
    snprintf(p, sizeof(p), "%s", dir);
    for (char *q = p + 1; *q; q++) {
        if (*q != '/') continue;
        *q = 0;
        if (mkdir(p, 0755) < 0 && errno != EEXIST) goto fail;
        *q = '/';
    }
    if (mkdir(p, 0755) < 0 && errno != EEXIST) goto fail;
    return 0;
fail:
    snprintf(err, errlen, "state dir %s: %s", dir, strerror(errno));
    return -errno;
}

int dmn__read_token(const char *path, char *out, size_t n, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "token file %s: %s", path, strerror(errno));
        return -errno;
    }
    size_t k = fread(out, 1, n - 1, f);
    fclose(f);
    out[k] = 0;
    while (k && (out[k - 1] == '\n' || out[k - 1] == '\r' || out[k - 1] == ' ')) out[--k] = 0;
    if (!k) {
        snprintf(err, errlen, "token file %s is empty", path);
        return -EINVAL;
    }
    return 0;
}

/* Loads one checkpoint into s->t; 0, or <0 with the reason logged. */
static int dmn__resume_from(struct dmn_server *s, const char *p)
{
    char why[512];
    if (dmn_trainer_load(&s->t, p, why, sizeof(why)) < 0) {
        dmn__log(s, "skipping unusable checkpoint: %s", why);
        return -EINVAL;
    }
    dmn__log(s, "resumed from %s at step %zu (%zu parameters)", p, s->t->step, s->t->net->n_params);
    snprintf(s->snap.last_ckpt, sizeof(s->snap.last_ckpt), "%s", p);
    s->snap.last_ckpt_step = s->t->step;
    return 0;
}

int dmn__resume(struct dmn_server *s, char *err, size_t errlen)
{
    struct dirent **list = NULL;
    int nl = scandir(s->opts.state_dir, &list, NULL, alphasort), found = 0;
    for (int i = nl - 1; i >= 0; i--) {
        const char *nm = list[i]->d_name;
        if (!found && dmn__is_ckpt_name(nm)) {
            char p[1024];
            snprintf(p, sizeof(p), "%s/%s", s->opts.state_dir, nm);
            found = dmn__resume_from(s, p) == 0;
        }
        free(list[i]);
    }
    free(list);
    return found;
}

FILE *dmn__open_events(const struct dmn_server *s)
{
    char evp[1024];
    snprintf(evp, sizeof(evp), "%s/events.jsonl", s->opts.state_dir);
    return fopen(evp, "a");
}

// ---- the change log (loop thread) -----------------------------------------------------------

/* Applies one logged change (its route names the section) to s->cfg. */
static int dmn__replay_one(struct dmn_server *s, const char *route, const cJSON *ch)
{
    char err[512];
    if (route && !strcmp(route, "PATCH /v1/policy"))
        return cfg_patch(&s->cfg, "adapt", ch, CFG_RUNTIME, err, sizeof(err));
    if (route && !strcmp(route, "PATCH /v1/train"))
        return cfg_patch(&s->cfg, "train", ch, CFG_RUNTIME, err, sizeof(err));
    if (route && !strcmp(route, "SIGHUP"))
        return cfg_patch(&s->cfg, NULL, ch, CFG_RUNTIME, err, sizeof(err));
    return -EINVAL;
}

void dmn__replay_changes(struct dmn_server *s)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/changes.jsonl", s->opts.state_dir);
    FILE *f = fopen(path, "r");
    if (!f) return;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0) {
        cJSON *o = cJSON_ParseWithLength(line, (size_t)len);
        double seq = cJSON_GetNumberValue(cJSON_GetObjectItem(o, "seq"));
        if (o && isfinite(seq) && (uint64_t)seq > s->change_seq) {
            const char *route = cJSON_GetStringValue(cJSON_GetObjectItem(o, "route"));
            if (dmn__replay_one(s, route, cJSON_GetObjectItem(o, "change")) == 0)
                dmn__log(s, "replayed change %.0f (%s)", seq, route);
            s->change_seq = (uint64_t)seq;
        }
        cJSON_Delete(o);
    }
    free(line);
    fclose(f);
}

/* Appends one line (line[n] is writable: it becomes the newline) to path and fsyncs it. */
static void dmn__append_line(struct dmn_server *s, const char *path, char *line, size_t n)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return;
    line[n] = '\n';
    if (write(fd, line, n + 1) != (ssize_t)(n + 1)) dmn__log(s, "cannot append to %s", path);
    fsync(fd);
    close(fd);
}

void dmn__log_change(struct dmn_server *s, const char *route, const cJSON *body)
{
    s->change_seq++;
    size_t step;
    pthread_mutex_lock(&s->mu);
    step = s->snap.step;
    pthread_mutex_unlock(&s->mu);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "seq", (double)s->change_seq);
    cJSON_AddNumberToObject(o, "time", (double)time(NULL));
    cJSON_AddNumberToObject(o, "step", (double)step);
    cJSON_AddStringToObject(o, "route", route);
    cJSON_AddItemToObject(o, "change", cJSON_Duplicate(body, 1));
    char *line = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!line) return;
    char path[1024];
    snprintf(path, sizeof(path), "%s/changes.jsonl", s->opts.state_dir);
    dmn__append_line(s, path, line, strlen(line));
    dmn__log(s, "change %llu at step %zu via %s", (unsigned long long)s->change_seq, step, route);
    cJSON_free(line);
}
