/* tests/test_statedir.c: the state dir under power loss and a full disk (issue 15).
 *
 * A recording write layer (net_set_io) passes every operation to the file system and keeps
 * what a power cut would leave: a file's content as of its last fsync, a directory's
 * entries as of its last fsync (a rename or create that was not followed by fsync of the
 * directory did not happen). After every fsync the test takes that image; each image is
 * then restored into an empty dir and the daemon's start-up (dmn__open_run) must resume
 * from it: at least at the last checkpoint that had been reported written, with every
 * change that had been acknowledged. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/server_internal.h"
#include "tests/test.h"
#include "tests/util.h"

// ---- the recording layer ------------------------------------------------------------------

#define MAX_FD 256
#define MAX_INO 512
#define MAX_ENT 64
#define MAX_IMG 400

struct blob {
    unsigned long ino;
    unsigned char *data;
    size_t len;
};
struct ent {
    char name[64];
    unsigned long ino;
};
struct image {
    struct ent e[MAX_ENT];
    size_t n;
    unsigned char *data[MAX_ENT];
    size_t len[MAX_ENT];
    size_t acked_step;  // the last checkpoint reported written ((size_t)-1: none)
    double acked_value; // the last acknowledged change's shrink_threshold (0: none)
    uint64_t acked_seq;
};

static struct {
    char dir[TMP_PATH_MAX];
    char fd_path[MAX_FD][TMP_PATH_MAX];
    struct blob durable[MAX_INO]; // content as of the last fsync, by inode
    size_t n_durable;
    struct ent dir_ents[MAX_ENT]; // the directory as of its last fsync
    size_t n_dir_ents;
    struct image *img;
    size_t n_img;
    size_t acked_step;
    double acked_value;
    uint64_t acked_seq;
    int fail_writes; // ENOSPC for writes into the dir when set
} R;

static struct blob *durable_of(unsigned long ino)
{
    for (size_t i = 0; i < R.n_durable; i++)
        if (R.durable[i].ino == ino) return &R.durable[i];
    if (R.n_durable == MAX_INO) return NULL;
    R.durable[R.n_durable] = (struct blob){ino, NULL, 0};
    return &R.durable[R.n_durable++];
}

static void snap_image(void)
{
    if (!R.img || R.n_img == MAX_IMG) return;
    struct image *im = &R.img[R.n_img++];
    memset(im, 0, sizeof(*im));
    for (size_t i = 0; i < R.n_dir_ents; i++) {
        im->e[im->n] = R.dir_ents[i];
        struct blob *b = durable_of(R.dir_ents[i].ino);
        im->len[im->n] = b ? b->len : 0;
        im->data[im->n] = b && b->len ? malloc(b->len) : NULL;
        if (im->data[im->n]) memcpy(im->data[im->n], b->data, b->len);
        im->n++;
    }
    im->acked_step = R.acked_step;
    im->acked_value = R.acked_value;
    im->acked_seq = R.acked_seq;
}

static int in_dir(const char *p)
{
    size_t n = strlen(R.dir);
    return !strncmp(p, R.dir, n) && (p[n] == '/' || p[n] == 0);
}

static int rec_open(const char *p, int fl, unsigned m)
{
    int existed = access(p, F_OK) == 0;
    int fd = open(p, fl, (mode_t)m);
    if (fd >= 0 && fd < MAX_FD) {
        snprintf(R.fd_path[fd], TMP_PATH_MAX, "%s", p);
        struct stat st;
        if (in_dir(p) && (!existed || (fl & O_TRUNC)) && fstat(fd, &st) == 0 &&
            S_ISREG(st.st_mode)) {
            struct blob *b = durable_of(st.st_ino); // a new file: nothing of it is durable
            if (b) {
                free(b->data);
                b->data = NULL;
                b->len = 0;
            }
        }
    }
    return fd;
}

static long rec_write(int fd, const void *p, size_t n)
{
    if (R.fail_writes && fd < MAX_FD && in_dir(R.fd_path[fd])) {
        errno = ENOSPC;
        return n > 1 ? (long)write(fd, p, n / 2) : -1; // a short write, as a full disk does
    }
    return (long)write(fd, p, n);
}

static int rec_fsync(int fd)
{
    if (fsync(fd) < 0) return -1;
    struct stat st;
    if (fd >= MAX_FD || !in_dir(R.fd_path[fd]) || fstat(fd, &st) < 0) return 0;
    if (S_ISDIR(st.st_mode)) {
        if (strcmp(R.fd_path[fd], R.dir)) return 0;
        R.n_dir_ents = 0;
        DIR *d = opendir(R.dir);
        struct dirent *e;
        while (d && (e = readdir(d)) && R.n_dir_ents < MAX_ENT) {
            char p[TMP_PATH_MAX + 64];
            struct stat es;
            snprintf(p, sizeof(p), "%s/%s", R.dir, e->d_name);
            if (stat(p, &es) == 0 && S_ISREG(es.st_mode) && strcmp(e->d_name, "daemon.lock")) {
                snprintf(R.dir_ents[R.n_dir_ents].name, 64, "%.63s", e->d_name);
                R.dir_ents[R.n_dir_ents++].ino = es.st_ino;
            }
        }
        if (d) closedir(d);
    } else if (S_ISREG(st.st_mode)) {
        struct blob *b = durable_of(st.st_ino);
        if (!b) return 0;
        free(b->data);
        b->len = (size_t)st.st_size;
        b->data = malloc(b->len + 1);
        char self[64];
        snprintf(self, sizeof self, "/proc/self/fd/%d", fd); // the fd may be write-only
        int rd = open(self, O_RDONLY | O_CLOEXEC);
        if (!b->data || rd < 0 || pread(rd, b->data, b->len, 0) != (ssize_t)b->len) b->len = 0;
        if (rd >= 0) close(rd);
    }
    snap_image();
    return 0;
}

static const struct net_io REC_IO = {rec_open, rec_write, rec_fsync, NULL, NULL, NULL, NULL, NULL};

// ---- a daemon's state-dir side, without the HTTP loop -------------------------------------

static struct dmn_server *server_new(const char *dir, const struct dmn_config *cfg)
{
    struct dmn_server *s = calloc(1, sizeof(*s));
    s->opts.state_dir = s->state_dir;
    s->opts.quiet = 1;
    snprintf(s->state_dir, sizeof(s->state_dir), "%s", dir);
    s->cfg = *cfg;
    s->best_val = NAN;
    pthread_mutex_init(&s->mu, NULL);
    if (dmn__hist_init(&s->hist) < 0) abort();
    return s;
}

static void server_free(struct dmn_server *s)
{
    dmn_trainer_destroy(s->t);
    if (s->events_file) fclose(s->events_file);
    if (s->lock_fd > 0) close(s->lock_fd);
    free(s->valid);
    dmn__hist_free(&s->hist);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static int tiny(struct dmn_config *c)
{
    char err[512];
    if (cfg_load_file(c, EW_SOURCE_DIR "/configs/tiny.json", err, sizeof err) < 0) return -1;
    c->train.epochs = 1000;
    return 0;
}

static int change(struct dmn_server *s, double thr)
{
    char body[64], err[512];
    snprintf(body, sizeof body, "{\"shrink_threshold\": %.17g}", thr);
    cJSON *b = cJSON_Parse(body);
    int rc = cfg_patch(&s->cfg, "adapt", b, CFG_RUNTIME, err, sizeof err);
    if (rc == 0) rc = dmn__log_change(s, "PATCH /v1/policy", b, err, sizeof err);
    cJSON_Delete(b);
    return rc;
}

/* Trains, checkpoints and records changes through the recording layer; then every image a
 * power cut could leave must resume. */
TEST(power_loss_keeps_every_acknowledged_checkpoint_and_change)
{
    struct dmn_config cfg;
    struct tmpd live, crash;
    char err[1024];
    ASSERT_EQ(tiny(&cfg), 0);
    ASSERT_EQ(tmp_make(&live, "ew_plive"), 0);
    memset(&R, 0, sizeof R);
    R.img = calloc(MAX_IMG, sizeof(struct image));
    snprintf(R.dir, sizeof R.dir, "%s", live.dir);
    R.acked_step = (size_t)-1;
    net_set_io(&REC_IO);
    struct dmn_server *s = server_new(live.dir, &cfg);
    ASSERT_EQ(dmn__check_dir(s, err, sizeof err), 0);
    ASSERT_EQ(dmn__open_run(s, err, sizeof err), 0); // a new run
    s->events_file = dmn__open_events(s);
    s->t->events = s->events_file;
    for (int round = 0; round < 10; round++) {
        for (int k = 0; k < 7; k++) ASSERT_EQ(dmn_trainer_step(s->t), 0);
        char path[1024];
        ASSERT_EQ(dmn__checkpoint(s, path, sizeof path, err, sizeof err), 0);
        R.acked_step = s->t->step;
        double thr = (round + 1) / 100.0; // change k sets k / 100
        ASSERT_EQ(change(s, thr), 0);
        R.acked_value = thr;
        R.acked_seq = s->change_seq;
        // What DMN_CMD_CONFIG does: the trainer takes the change (the next checkpoint has it).
        ASSERT_EQ(dmn_trainer_set_runtime(s->t, &s->cfg, err, sizeof err), 0);
        s->t->change_seq = s->change_seq;
    }
    net_set_io(NULL);
    server_free(s);
    printf("    %zu power-cut images\n", R.n_img);
    ASSERT_GE(R.n_img, 40);

    size_t resumed = 0;
    for (size_t i = 0; i < R.n_img; i++) {
        const struct image *im = &R.img[i];
        ASSERT_EQ(tmp_make(&crash, "ew_pcrash"), 0);
        for (size_t k = 0; k < im->n; k++) {
            char p[TMP_PATH_MAX + 64];
            snprintf(p, sizeof p, "%s/%s", crash.dir, im->e[k].name);
            FILE *f = fopen(p, "wb");
            ASSERT(f != NULL);
            if (im->len[k]) ASSERT_EQ(fwrite(im->data[k], 1, im->len[k], f), im->len[k]);
            fclose(f);
        }
        struct dmn_server *c = server_new(crash.dir, &cfg);
        c->opts.quiet = !getenv("EW_VERBOSE");
        if (getenv("EW_VERBOSE"))
            for (size_t k = 0; k < im->n; k++)
                printf("    [%zu] %s %zu\n", i, im->e[k].name, im->len[k]);
        ASSERT_EQ(dmn__check_dir(c, err, sizeof err), 0);
        int rc = dmn__open_run(c, err, sizeof err);
        if (rc < 0) printf("    image %zu: %s\n", i, err);
        ASSERT_GE(rc, 0);
        if (im->acked_step != (size_t)-1) {
            ASSERT_EQ(rc, 1);                      // 1: resumed
            ASSERT_GE(c->t->step, im->acked_step); // resumed, not started over
            resumed++;
        }
        if (im->acked_seq) {
            ASSERT_GE(c->change_seq, im->acked_seq);
            // Acknowledged changes are all there; one durable but not yet answered may be too.
            ASSERT_LE(c->change_seq, im->acked_seq + 1);
            ASSERT_FLT_OP(c->cfg.adapt.shrink_threshold, ==, (double)c->change_seq / 100.0);
        }
        server_free(c);
        tmp_remove(&crash);
    }
    ASSERT_GE(resumed, 30);
    for (size_t i = 0; i < R.n_img; i++)
        for (size_t k = 0; k < R.img[i].n; k++) free(R.img[i].data[k]);
    free(R.img);
    for (size_t i = 0; i < R.n_durable; i++) free(R.durable[i].data);
    tmp_remove(&live);
}

/* A disk that fills up: the checkpoint fails with the reason, leaves no half file behind,
 * the previous checkpoint stays; so does the metric history; a change that cannot be
 * recorded is refused and the log keeps whole lines only. */
TEST(full_disk_fails_cleanly)
{
    struct dmn_config cfg;
    struct tmpd d;
    char err[1024], path[1024];
    ASSERT_EQ(tiny(&cfg), 0);
    ASSERT_EQ(tmp_make(&d, "ew_full"), 0);
    memset(&R, 0, sizeof R);
    snprintf(R.dir, sizeof R.dir, "%s", d.dir);
    net_set_io(&REC_IO);
    struct dmn_server *s = server_new(d.dir, &cfg);
    ASSERT_EQ(dmn__check_dir(s, err, sizeof err), 0);
    ASSERT_EQ(dmn__open_run(s, err, sizeof err), 0); // a new run
    for (int k = 0; k < 5; k++) ASSERT_EQ(dmn_trainer_step(s->t), 0);
    ASSERT_EQ(dmn__checkpoint(s, path, sizeof path, err, sizeof err), 0);
    ASSERT_EQ(change(s, 0.02), 0);
    ASSERT_EQ(dmn__hist_save(s, err, sizeof err), 0);
    char hp[TMP_PATH_MAX];
    size_t hlen = 0;
    unsigned char *hist = read_all(tmp_path(&d, "history.jsonl", hp), &hlen);
    ASSERT(hist != NULL && hlen > 0);
    R.fail_writes = 1;
    // The history goes through the codec's atomic write, so through the same write layer:
    // it fails too, and the one on disk stays whole.
    s->hist.n_layers = 1;
    snprintf(s->hist.names[0], sizeof s->hist.names[0], "other");
    ASSERT_EQ(dmn__hist_save(s, err, sizeof err), -ENOSPC);
    size_t hlen2 = 0;
    unsigned char *hist2 = read_all(hp, &hlen2);
    ASSERT(hist2 != NULL);
    ASSERT_EQ(hlen2, hlen);
    ASSERT_EQ(memcmp(hist, hist2, hlen), 0);
    free(hist);
    free(hist2);
    close(s->lock_fd); // (the probe again, as a restart would run it)
    s->lock_fd = 0;
    ASSERT_EQ(dmn__check_dir(s, err, sizeof err) < 0, 1); // the start-up probe sees it too
    ASSERT_CONTAINS(err, "not writable");
    for (int k = 0; k < 5; k++) ASSERT_EQ(dmn_trainer_step(s->t), 0);
    ASSERT_EQ(dmn__checkpoint(s, path, sizeof path, err, sizeof err), -ENOSPC);
    ASSERT_CONTAINS(err, "No space left");
    ASSERT_EQ(file_exists(path), 0);
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    ASSERT_EQ(file_exists(tmp), 0);
    ASSERT(change(s, 0.03) < 0);
    ASSERT_EQ(s->change_seq, 1);
    R.fail_writes = 0;
    net_set_io(NULL);
    size_t len = 0;
    char p[TMP_PATH_MAX];
    unsigned char *log = read_all(tmp_path(&d, "changes.jsonl", p), &len);
    ASSERT(log != NULL);
    ASSERT(len > 0 && log[len - 1] == '\n');
    ASSERT(memchr(log, '\n', len) == log + len - 1); // one whole line, nothing of the second
    free(log);
    server_free(s);
    tmp_remove(&d);
}

TEST_MAIN()
