/* daemon/statedir.c: evowidthd's state dir.
 *
 * Layout of STATE_DIR (names this file owns; nothing else in the dir is touched):
 *   daemon.lock                  flock'ed while a daemon runs on the dir (one at a time);
 *   ckpt-<step, 12 digits>.evow  full run checkpoints (daemon/state.c), written atomically
 *                                (tmp, fsync, rename, dir fsync);
 *   good-<step>.evow             the last-known-good checkpoint (a hard link of a checkpoint
 *                                taken right after a validation pass that was finite and not
 *                                exploding); divergence rolls back to it;
 *   changes.jsonl                accepted runtime changes, one JSON object a line (seq, time,
 *                                step, route, change), fsynced before the change is answered;
 *                                a checkpoint records the change seq it includes, so later
 *                                lines are replayed on resume;
 *   events.jsonl                 the event log (adaptation passes, rollbacks), one JSON object
 *                                a line with seq 1, 2, ...; fsynced before each checkpoint,
 *                                which records the event seq it includes (TRNR version 3);
 *   history.jsonl                the metric history (daemon/history.c), rewritten after
 *                                each checkpoint;
 *   *.corrupt                    checkpoints found unusable at start, set aside (not deleted);
 *   archive-<time>/              an earlier run's files, moved there when a new run starts in
 *                                the dir (--fresh, or every checkpoint unusable).
 * Rules, as a careful database would have them:
 *   - only regular files are read (a FIFO would block open forever);
 *   - rotation deletes only checkpoints known to be valid (written by this process, or
 *     checked at start), keeps the newest DMN_KEEP_CKPTS of them, and never the one just
 *     written; files it has not checked are never deleted;
 *   - a log is the history, a checkpoint a position in it: on resume, events.jsonl is cut
 *     back to the checkpoint's event seq (the resumed run writes those events again) and a
 *     torn last line of either log is cut off (fsynced), so the next append starts a line;
 *   - a new run never inherits an old run's logs: they are archived first.
 * Checkpoints are written on the trainer thread; the change log is written and replayed on
 * the loop thread (it uses cJSON); start-up runs before the trainer thread exists. Every
 * durable write goes through net_io() (tests inject faults and power loss there). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "daemon/server_internal.h"

// ---- names ---------------------------------------------------------------------------------

/* The step of a name prefix<digits>.evow (prefix "ckpt-" or "good-"), or -1. */
static long long dmn__name_step(const char *nm, const char *prefix)
{
    size_t lp = strlen(prefix), ln = strlen(nm);
    if (strncmp(nm, prefix, lp) || ln < lp + 6 || ln > lp + 5 + 18 || strcmp(nm + ln - 5, ".evow"))
        return -1;
    long long v = 0;
    for (const char *p = nm + lp; p < nm + ln - 5; p++) {
        if (*p < '0' || *p > '9') return -1;
        v = v * 10 + (*p - '0');
    }
    return v;
}

static void dmn__file(const struct dmn_server *s, const char *name, char *out, size_t n)
{
    snprintf(out, n, "%s/%s", s->opts.state_dir, name);
}

static int dmn__ckpt_path(const struct dmn_server *s, const char *prefix, size_t step, char *out,
                          size_t n)
{
    return snprintf(out, n, "%s/%s%012zu.evow", s->opts.state_dir, prefix, step) >= (int)n
               ? -ENAMETOOLONG
               : 0;
}

int dmn__sync_dir(const char *dir)
{
    const struct net_io *io = net_io();
    int fd = io->open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int rc = io->fsync(fd) < 0 ? -errno : 0;
    io->close(fd);
    return rc == -EINVAL ? 0 : rc; // some filesystems refuse fsync on directories
}

// ---- the set of known-valid checkpoints -------------------------------------------------

static void dmn__valid_add(struct dmn_server *s, size_t step)
{
    for (size_t i = 0; i < s->n_valid; i++)
        if (s->valid[i] == step) return;
    if (s->n_valid == s->cap_valid) {
        size_t cap = s->cap_valid ? 2 * s->cap_valid : 8;
        size_t *q = realloc(s->valid, cap * sizeof(*q));
        if (!q) return; // not remembered: never rotated away, which is the safe side
        s->valid = q;
        s->cap_valid = cap;
    }
    s->valid[s->n_valid++] = step;
}

static void dmn__valid_del(struct dmn_server *s, size_t i)
{
    s->valid[i] = s->valid[--s->n_valid];
}

/* Deletes the known-valid checkpoints beyond the newest `keep`, never `just` (trainer). */
static void dmn__rotate(struct dmn_server *s, size_t just, int keep)
{
    const struct net_io *io = net_io();
    int changed = 0;
    for (;;) {
        size_t newer_count = 0, oldest = (size_t)-1, oi = 0;
        for (size_t i = 0; i < s->n_valid; i++) {
            newer_count++;
            if (s->valid[i] != just && s->valid[i] < oldest) oldest = s->valid[i], oi = i;
        }
        if ((int)newer_count <= keep || oldest == (size_t)-1) break;
        char p[CFG_PATH_MAX + 64];
        dmn__ckpt_path(s, "ckpt-", oldest, p, sizeof(p));
        if (io->unlink(p) < 0 && errno != ENOENT) {
            dmn__log(s, "rotation: cannot delete %s: %s", p, strerror(errno));
            break;
        }
        dmn__valid_del(s, oi);
        changed = 1;
    }
    if (changed) dmn__sync_dir(s->opts.state_dir);
}

void dmn__discard_after(struct dmn_server *s, size_t step, char *list, size_t listlen)
{
    const struct net_io *io = net_io();
    size_t used = 0;
    if (listlen) list[0] = 0;
    for (size_t i = 0; i < s->n_valid;) {
        if (s->valid[i] <= step) {
            i++;
            continue;
        }
        char p[CFG_PATH_MAX + 64];
        dmn__ckpt_path(s, "ckpt-", s->valid[i], p, sizeof(p));
        if (io->unlink(p) == 0 || errno == ENOENT) {
            if (used < listlen)
                used += (size_t)snprintf(list + used, listlen - used, "%s%zu", used ? "," : "",
                                         s->valid[i]);
            dmn__valid_del(s, i);
        } else {
            i++;
        }
    }
    dmn__sync_dir(s->opts.state_dir);
}

// ---- checkpoints (trainer thread) ------------------------------------------------------------

int dmn__checkpoint(struct dmn_server *s, char *path, size_t pathlen, char *err, size_t errlen)
{
    int rc = dmn__ckpt_path(s, "ckpt-", s->t->step, path, pathlen);
    if (rc < 0) {
        snprintf(err, errlen, "state dir path too long");
        return rc;
    }
    // The log first: every event the checkpoint counts is on disk before it.
    if (s->events_file) {
        if (fflush(s->events_file) != 0 || net_io()->fsync(fileno(s->events_file)) < 0) {
            snprintf(err, errlen, "events.jsonl: cannot flush: %s", strerror(errno));
            return -errno;
        }
    }
    if ((rc = dmn_trainer_save(s->t, path, err, errlen)) < 0) return rc;
    pthread_mutex_lock(&s->mu);
    snprintf(s->snap.last_ckpt, sizeof(s->snap.last_ckpt), "%s", path);
    s->snap.last_ckpt_step = s->t->step;
    pthread_mutex_unlock(&s->mu);
    dmn__valid_add(s, s->t->step);
    dmn__rotate(s, s->t->step, DMN_KEEP_CKPTS);
    return 0;
}

int dmn__mark_good(struct dmn_server *s, const char *ckpt, size_t step, char *err, size_t errlen)
{
    const struct net_io *io = net_io();
    char p[CFG_PATH_MAX + 64], tmp[CFG_PATH_MAX + 80];
    dmn__ckpt_path(s, "good-", step, p, sizeof(p));
    snprintf(tmp, sizeof(tmp), "%s.tmp", p);
    io->unlink(tmp);
    if (io->link(ckpt, tmp) < 0 || io->rename(tmp, p) < 0) {
        snprintf(err, errlen, "%s: %s", p, strerror(errno));
        io->unlink(tmp);
        return -errno;
    }
    if (s->good_valid && s->good_step != step) {
        char old[CFG_PATH_MAX + 64];
        dmn__ckpt_path(s, "good-", s->good_step, old, sizeof(old));
        io->unlink(old);
    }
    dmn__sync_dir(s->opts.state_dir);
    s->good_valid = 1;
    s->good_step = step;
    return 0;
}

void dmn__good_path(const struct dmn_server *s, char *out, size_t n)
{
    dmn__ckpt_path(s, "good-", s->good_step, out, n);
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

int dmn__check_dir(struct dmn_server *s, char *err, size_t errlen)
{
    const char *d = s->opts.state_dir;
    const struct net_io *io = net_io();
    struct stat st;
    if (stat(d, &st) < 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "state dir %s: %s", d, errno ? strerror(errno) : "not a directory");
        return -ENOTDIR;
    }
    if (st.st_uid != geteuid()) {
        snprintf(err, errlen,
                 "state dir %s is owned by uid %u, not by this user (uid %u): "
                 "refusing to use it (chown it, or choose another --state-dir)",
                 d, (unsigned)st.st_uid, (unsigned)geteuid());
        return -EPERM;
    }
    // The lock: one daemon per state dir.
    char p[CFG_PATH_MAX + 64];
    dmn__file(s, "daemon.lock", p, sizeof(p));
    int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "state dir %s is not writable: %s: %s", d, p, strerror(errno));
        return -errno;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        char pid[32] = "";
        ssize_t k = pread(fd, pid, sizeof(pid) - 1, 0);
        pid[k > 0 ? k : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        snprintf(err, errlen, "state dir %s is in use by another evowidthd (pid %s)", d,
                 pid[0] ? pid : "?");
        close(fd);
        return -EBUSY;
    }
    char line[32];
    int ln = snprintf(line, sizeof(line), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, line, (size_t)ln, 0) != ln) {
        snprintf(err, errlen, "state dir %s is not writable: %s: %s", d, p, strerror(errno));
        close(fd);
        return -EROFS;
    }
    s->lock_fd = fd;
    // A probe: create, write, fsync, remove: what every checkpoint does.
    dmn__file(s, ".write-probe", p, sizeof(p));
    static const char blk[4096];
    int pf = io->open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    long w = pf < 0 ? -1 : io->write(pf, blk, sizeof(blk));
    int e = pf < 0 || w != (long)sizeof(blk) ? (w >= 0 && pf >= 0 ? ENOSPC : errno) : 0;
    if (!e && io->fsync(pf) < 0) e = errno;
    if (pf >= 0) io->close(pf);
    io->unlink(p);
    if (e) {
        snprintf(err, errlen, "state dir %s is not writable: %s", d, strerror(e));
        return -e;
    }
    return 0;
}

int dmn__check_space(struct dmn_server *s, char *err, size_t errlen)
{
    struct statvfs vf;
    if (statvfs(s->opts.state_dir, &vf) < 0) return 0; // nothing to judge by
    const struct dmn_trainer *t = s->t;
    // A checkpoint: parameters, both optimizer moments, BN state, the data order, ~64 KiB.
    double need = (double)(t->net->n_params * 3 + t->net->n_state) * 4.0 +
                  (double)t->batcher.n * 4.0 + 65536.0;
    double have = (double)vf.f_bavail * (double)vf.f_frsize;
    if (have < 2.0 * need) {
        snprintf(err, errlen,
                 "state dir %s: only %.0f KiB free, a checkpoint needs about "
                 "%.0f KiB and twice that must be free (rotation writes before it deletes)",
                 s->opts.state_dir, have / 1024.0, need / 1024.0);
        return -ENOSPC;
    }
    return 0;
}

/* Moves the old run's files (checkpoints, set-aside ones, logs) into archive-<time>/. */
static int dmn__archive(struct dmn_server *s, const char *why, char *err, size_t errlen)
{
    const struct net_io *io = net_io();
    DIR *d = opendir(s->opts.state_dir);
    if (!d) {
        snprintf(err, errlen, "state dir %s: %s", s->opts.state_dir, strerror(errno));
        return -errno;
    }
    char arch[CFG_PATH_MAX + 64] = "";
    int moved = 0, rc = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *nm = e->d_name;
        size_t ln = strlen(nm);
        int run_file = !strcmp(nm, "changes.jsonl") || !strcmp(nm, "events.jsonl") ||
                       !strcmp(nm, "history.jsonl") ||
                       ((!strncmp(nm, "ckpt-", 5) || !strncmp(nm, "good-", 5)) &&
                        (strstr(nm, ".evow") != NULL)) ||
                       (ln > 8 && !strcmp(nm + ln - 8, ".corrupt"));
        if (!run_file) continue;
        if (!arch[0]) {
            time_t now = time(NULL);
            struct tm tm;
            char ts[32];
            localtime_r(&now, &tm);
            strftime(ts, sizeof(ts), "%Y%m%d-%H%M%S", &tm);
            for (int k = 0; k < 100; k++) {
                snprintf(arch, sizeof(arch), "%s/archive-%s%s%.0d", s->opts.state_dir, ts,
                         k ? "-" : "", k);
                if (mkdir(arch, 0755) == 0) break;
                if (errno != EEXIST || k == 99) {
                    snprintf(err, errlen, "cannot create %s: %s", arch, strerror(errno));
                    closedir(d);
                    return -errno;
                }
            }
        }
        char from[CFG_PATH_MAX + 300], to[CFG_PATH_MAX + 400];
        snprintf(from, sizeof(from), "%s/%s", s->opts.state_dir, nm);
        snprintf(to, sizeof(to), "%s/%s", arch, nm);
        if (io->rename(from, to) < 0) {
            snprintf(err, errlen, "cannot move %s to %s: %s", from, arch, strerror(errno));
            rc = -errno;
            break;
        }
        moved++;
    }
    closedir(d);
    if (moved) {
        dmn__sync_dir(arch);
        dmn__sync_dir(s->opts.state_dir);
        dmn__log(s, "%s: the old run's %d file(s) moved to %s", why, moved, arch);
    }
    return rc;
}

/* One checkpoint file found at start. */
struct dmn_found {
    size_t step;
    int good;
    char name[64];
};

static int dmn__found_cmp(const void *a, const void *b)
{
    const struct dmn_found *x = a, *y = b;
    if (x->step != y->step) return x->step < y->step ? 1 : -1; // newest first
    return x->good - y->good;                                  // ckpt before good
}

/* Knobs that make a run what it is: every immutable knob but the daemon's own. */
static int dmn__run_diff(const struct dmn_config *run, const struct dmn_config *file, char *out,
                         size_t n)
{
    return cfg_diff(run, file, CFG_IMMUTABLE, "daemon", out, n);
}

/* Cuts a JSON-lines log back to its complete lines with seq <= keep (all when keep is
 * UINT64_MAX; lines without seq count 1, 2, ...), fsyncs the cut, and hands the kept lines
 * to cb. Returns the last kept seq; *torn the bytes of a torn tail cut off, *dropped the
 * complete lines past keep cut off, *bad the complete lines that are not JSON objects. */
struct dmn_log_scan {
    uint64_t last, dropped, bad, torn;
};
static int dmn__scan_log(struct dmn_server *s, const char *name, uint64_t keep,
                         void (*cb)(struct dmn_server *, uint64_t seq, const char *line, cJSON *o),
                         struct dmn_log_scan *r)
{
    char path[CFG_PATH_MAX + 64];
    memset(r, 0, sizeof(*r));
    dmn__file(s, name, path, sizeof(path));
    struct stat st;
    if (stat(path, &st) < 0) return 0;
    if (!S_ISREG(st.st_mode)) {
        dmn__log(s, "%s: not a regular file, ignored", path);
        return -EINVAL;
    }
    FILE *f = fopen(path, "r");
    if (!f) return -errno;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long long off = 0, cut = -1, good_end = 0;
    uint64_t idx = 0;
    while ((len = getline(&line, &cap, f)) > 0) {
        if (line[len - 1] != '\n') { // a torn last line
            r->torn = (uint64_t)len;
            cut = off;
            break;
        }
        idx++;
        cJSON *o = cJSON_ParseWithLength(line, (size_t)len);
        const cJSON *sq = cJSON_GetObjectItem(o, "seq");
        double v = cJSON_IsNumber(sq) ? sq->valuedouble : (double)idx;
        if (!cJSON_IsObject(o) || !(v >= 1 && v <= 9007199254740992.0 && v == floor(v)) ||
            (uint64_t)v <= r->last) {
            // Not a record: a torn line glued to the next one (an older daemon) or damage.
            r->bad++;
            cJSON_Delete(o);
            off += len;
            if (cut < 0) good_end = off; // keep it in the file (not ours to destroy), skip it
            continue;
        }
        if ((uint64_t)v > keep) {
            r->dropped++;
            if (cut < 0) cut = off;
        } else if (cut < 0) {
            r->last = (uint64_t)v;
            line[len - 1] = 0;
            if (cb) cb(s, r->last, line, o);
            good_end = off + len;
        }
        cJSON_Delete(o);
        off += len;
    }
    free(line);
    fclose(f);
    if (cut >= 0 && cut < good_end) cut = good_end;
    if (cut >= 0) {
        const struct net_io *io = net_io();
        int fd = io->open(path, O_WRONLY | O_CLOEXEC, 0);
        if (fd < 0 || io->ftruncate(fd, cut) < 0 || io->fsync(fd) < 0) {
            int e = errno;
            if (fd >= 0) io->close(fd);
            dmn__log(s, "%s: cannot cut back to %lld bytes: %s", path, cut, strerror(e));
            return -e;
        }
        io->close(fd);
    }
    return 0;
}

static void dmn__hold_event(struct dmn_server *s, uint64_t seq, const char *line, cJSON *o)
{
    (void)o;
    if (seq + DMN_EVENT_RING > dmn__adapt_n_events(s->t)) dmn__adapt_hold(s->t, seq, line);
}

/* Loads one checkpoint into s->t; 0, or <0 with the reason logged. */
static int dmn__resume_from(struct dmn_server *s, const char *p)
{
    char why[512];
    int rc = dmn_trainer_load(&s->t, p, why, sizeof(why));
    if (rc < 0) {
        dmn__log(s, "skipping unusable checkpoint: %s", why);
        return rc;
    }
    dmn__log(s, "resumed from %s at step %zu (%zu parameters)", p, s->t->step, s->t->net->n_params);
    snprintf(s->snap.last_ckpt, sizeof(s->snap.last_ckpt), "%s", p);
    s->snap.last_ckpt_step = s->t->step;
    return 0;
}

int dmn__open_run(struct dmn_server *s, char *err, size_t errlen)
{
    const struct net_io *io = net_io();
    const char *dir = s->opts.state_dir;
    struct dmn_found *found = NULL;
    size_t nf = 0, capf = 0;
    int rc = 0, run_files = 0;
    struct dmn_ckpt_info *info = malloc(sizeof(*info));
    DIR *d = info ? opendir(dir) : NULL;
    if (!d) {
        snprintf(err, errlen, "state dir %s: %s", dir, info ? strerror(errno) : "out of memory");
        free(info);
        return -EIO;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *nm = e->d_name;
        size_t ln = strlen(nm);
        char p[CFG_PATH_MAX + 300];
        snprintf(p, sizeof(p), "%s/%s", dir, nm);
        if (ln > 9 && !strcmp(nm + ln - 9, ".evow.tmp") &&
            (!strncmp(nm, "ckpt-", 5) || !strncmp(nm, "good-", 5))) {
            io->unlink(p); // an unfinished write: never renamed into place
            continue;
        }
        if (!strcmp(nm, "changes.jsonl") || !strcmp(nm, "events.jsonl") ||
            !strcmp(nm, "history.jsonl") || (ln > 8 && !strcmp(nm + ln - 8, ".corrupt")))
            run_files++;
        long long ck = dmn__name_step(nm, "ckpt-"), gd = dmn__name_step(nm, "good-");
        if (ck < 0 && gd < 0) continue;
        run_files++;
        struct stat st;
        if (stat(p, &st) < 0 || !S_ISREG(st.st_mode)) {
            dmn__log(s, "skipping unusable checkpoint: %s: not a regular file", p);
            continue;
        }
        if (nf == capf) {
            capf = capf ? 2 * capf : 16;
            struct dmn_found *q = realloc(found, capf * sizeof(*q));
            if (!q) {
                rc = -ENOMEM;
                break;
            }
            found = q;
        }
        found[nf].step = (size_t)(ck >= 0 ? ck : gd);
        found[nf].good = ck < 0;
        snprintf(found[nf].name, sizeof(found[nf].name), "%s", nm);
        nf++;
    }
    closedir(d);
    if (rc < 0) {
        snprintf(err, errlen, "out of memory listing %s", dir);
        goto out;
    }
    if (nf) qsort(found, nf, sizeof(*found), dmn__found_cmp);

    // Check every candidate; set corrupt ones aside; the newest usable one is the run.
    long best = -1;
    int unreadable = 0;
    for (size_t i = 0; i < nf; i++) {
        char p[CFG_PATH_MAX + 300], why[512];
        snprintf(p, sizeof(p), "%s/%s", dir, found[i].name);
        int r = dmn_trainer_peek(p, info, why, sizeof(why));
        if (r == -EINVAL || r == -EBADMSG) {
            char q[CFG_PATH_MAX + 320];
            snprintf(q, sizeof(q), "%s.corrupt", p);
            int mv = io->rename(p, q);
            dmn__log(s, "skipping unusable checkpoint: %s%s%s", why, mv == 0 ? "; moved to " : "",
                     mv == 0 ? q : "");
            found[i].step = (size_t)-1; // not a candidate
            continue;
        }
        if (r < 0) {
            dmn__log(s, "cannot read checkpoint %s: %s (left as it is)", p, why);
            unreadable++;
            found[i].step = (size_t)-1;
            continue;
        }
        if (found[i].good) {
            if (!s->good_valid) {
                s->good_valid = 1;
                s->good_step = found[i].step;
                s->best_val = info->val_loss;
            } else {
                io->unlink(p); // an older good checkpoint (a crash between link and unlink)
            }
        } else {
            dmn__valid_add(s, found[i].step);
        }
        if (best < 0) {
            best = (long)i;
            char diff[1024];
            if (!s->opts.fresh && dmn__run_diff(&info->cfg, &s->cfg, diff, sizeof(diff)) > 0) {
                if (!s->opts.resume_anyway) {
                    snprintf(err, errlen,
                             "state dir %s holds a run (step %zu) with a different config: %s. "
                             "Pass --resume-anyway to continue the stored run as it was, or "
                             "--fresh to start over (the old run is moved to %s/archive-*)",
                             dir, found[i].step, diff, dir);
                    rc = -EEXIST;
                    goto out;
                }
                dmn__log(s,
                         "--resume-anyway: continuing the stored run; the config file "
                         "differs in %s",
                         diff);
            }
        }
    }
    dmn__sync_dir(dir);
    if (s->opts.fresh && run_files) {
        s->n_valid = 0;
        s->good_valid = 0;
        best = -1;
        if ((rc = dmn__archive(s, "--fresh", err, errlen)) < 0) goto out;
    }

    // Resume: the newest usable candidate that loads.
    int resumed = 0, load_failed = 0;
    for (size_t i = best < 0 ? nf : (size_t)best; i < nf && !resumed; i++) {
        if (found[i].step == (size_t)-1) continue;
        char p[CFG_PATH_MAX + 300];
        snprintf(p, sizeof(p), "%s/%s", dir, found[i].name);
        resumed = dmn__resume_from(s, p) == 0;
        load_failed += !resumed;
    }
    if (!resumed && (load_failed || unreadable)) {
        snprintf(err, errlen,
                 "state dir %s: no checkpoint could be resumed (see above); fix "
                 "the cause, or pass --fresh to start over",
                 dir);
        rc = -EIO;
        goto out;
    }
    if (!resumed) {
        if (run_files && (rc = dmn__archive(s, "no usable checkpoint: a new run", err, errlen)) < 0)
            goto out;
        s->n_valid = 0;
        s->good_valid = 0;
        rc = dmn_trainer_create(&s->t, &s->cfg, err, errlen);
        goto out;
    }
    // The run's config is the checkpoint's; its logs are cut back to what it includes.
    s->cfg = s->t->cfg;
    s->change_seq = s->t->change_seq;
    struct dmn_log_scan ls;
    const uint64_t E = dmn__adapt_n_events(s->t);
    if (dmn__scan_log(s, "events.jsonl", E, dmn__hold_event, &ls) == 0) {
        if (ls.torn)
            dmn__log(s, "events.jsonl: dropped a torn last line (%llu bytes)",
                     (unsigned long long)ls.torn);
        if (ls.dropped)
            dmn__log(s,
                     "events.jsonl: %llu event(s) after the checkpoint's seq %llu dropped "
                     "(the resumed run records them again)",
                     (unsigned long long)ls.dropped, (unsigned long long)E);
        if (ls.last < E)
            dmn__log(s, "events.jsonl: holds events up to seq %llu, the checkpoint counts %llu",
                     (unsigned long long)ls.last, (unsigned long long)E);
    }
    dmn__replay_changes(s);
    dmn_trainer_set_epochs(s->t, s->cfg.train.epochs);
    rc = 1;
out:
    free(found);
    free(info);
    return rc;
}

FILE *dmn__open_events(const struct dmn_server *s)
{
    char evp[CFG_PATH_MAX + 64];
    dmn__file(s, "events.jsonl", evp, sizeof(evp));
    const struct net_io *io = net_io();
    struct stat st;
    int existed = stat(evp, &st) == 0;
    int fd = io->open(evp, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return NULL;
    if (!existed) dmn__sync_dir(s->opts.state_dir);
    FILE *f = fdopen(fd, "a");
    if (!f) io->close(fd);
    return f;
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
    if (route && (!strcmp(route, "SIGHUP") || !strcmp(route, "rollback")))
        return cfg_patch(&s->cfg, NULL, ch, CFG_RUNTIME, err, sizeof(err));
    return -EINVAL;
}

static void dmn__replay_cb(struct dmn_server *s, uint64_t seq, const char *line, cJSON *o)
{
    (void)line;
    if (seq <= s->t->change_seq) return;
    const char *route = cJSON_GetStringValue(cJSON_GetObjectItem(o, "route"));
    if (dmn__replay_one(s, route, cJSON_GetObjectItem(o, "change")) == 0)
        dmn__log(s, "replayed change %llu (%s)", (unsigned long long)seq, route);
    else
        dmn__log(s, "change %llu (%s) cannot be replayed, skipped", (unsigned long long)seq,
                 route ? route : "no route");
}

void dmn__replay_changes(struct dmn_server *s)
{
    struct dmn_log_scan ls;
    if (dmn__scan_log(s, "changes.jsonl", UINT64_MAX, dmn__replay_cb, &ls) < 0) return;
    if (ls.torn)
        dmn__log(s, "changes.jsonl: dropped a torn last line (%llu bytes, never answered)",
                 (unsigned long long)ls.torn);
    if (ls.bad)
        dmn__log(s, "changes.jsonl: %llu line(s) are not changes, skipped",
                 (unsigned long long)ls.bad);
    if (ls.last > s->change_seq) s->change_seq = ls.last; // a seq is never given out twice
}

/* Appends one line (line[n] is writable: it becomes the newline) to path and fsyncs it; a
 * failed append is cut back off, so the log never holds half a line. 0 or -errno. */
static int dmn__append_line(struct dmn_server *s, const char *path, char *line, size_t n, char *err,
                            size_t errlen)
{
    const struct net_io *io = net_io();
    struct stat st;
    int existed = stat(path, &st) == 0;
    int fd = io->open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "cannot record the change in %s: %s", path, strerror(errno));
        return -errno;
    }
    line[n] = '\n';
    long w = io->write(fd, line, n + 1);
    int e = w == (long)(n + 1) ? 0 : w < 0 ? errno : ENOSPC;
    if (!e && io->fsync(fd) < 0) e = errno;
    if (e) {
        if (existed) io->ftruncate(fd, (long long)st.st_size);
        io->close(fd);
        if (!existed) io->unlink(path);
        snprintf(err, errlen, "cannot record the change in %s: %s", path, strerror(e));
        dmn__log(s, "%s", err);
        return -e;
    }
    io->close(fd);
    if (!existed) dmn__sync_dir(s->opts.state_dir);
    return 0;
}

int dmn__log_change(struct dmn_server *s, const char *route, const cJSON *body, char *err,
                    size_t errlen)
{
    size_t step;
    pthread_mutex_lock(&s->mu);
    step = s->snap.step;
    pthread_mutex_unlock(&s->mu);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "seq", (double)(s->change_seq + 1));
    cJSON_AddNumberToObject(o, "time", (double)time(NULL));
    cJSON_AddNumberToObject(o, "step", (double)step);
    cJSON_AddStringToObject(o, "route", route);
    cJSON_AddItemToObject(o, "change", cJSON_Duplicate(body, 1));
    char *line = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!line) {
        snprintf(err, errlen, "out of memory recording the change");
        return -ENOMEM;
    }
    char path[CFG_PATH_MAX + 64];
    dmn__file(s, "changes.jsonl", path, sizeof(path));
    int rc = dmn__append_line(s, path, line, strlen(line), err, errlen);
    cJSON_free(line);
    if (rc < 0) return rc;
    s->change_seq++;
    dmn__log(s, "change %llu at step %zu via %s", (unsigned long long)s->change_seq, step, route);
    return 0;
}
