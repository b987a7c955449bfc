/* daemon/dist_server.c: evowidthd on several MPI ranks (see daemon/dist.h).
 *
 * Rank 0 is the daemon everybody talks to: it serves HTTP, owns the state dir, writes
 * checkpoints, logs and the change and event logs. Ranks above 0 run the same trainer loop
 * (dmn__trainer_main) on their main thread, with no HTTP and no files: at the top of every
 * iteration rank 0 sends them the commands it took from its queue, so each command reaches
 * every rank at the same step boundary and the loops take the same decisions (pause,
 * stop, adapt, new runtime settings) in the same order. Commands that only read or write
 * files (layers, spectrum, checkpoint, eval) stay on rank 0.
 *
 * Commands on the wire (net/codec.h): u32 count | per command: u32 kind | u64 seq |
 * for DMN_CMD_CONFIG the struct dmn_config's bytes (every rank runs the same build). */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/dist.h"
#include "daemon/server_internal.h"
#include "net/codec.h"

struct dmn_dist_start {
    struct dmn_config cfg;
    uint64_t change_seq;
};

int dmn__dist_lead(struct dmn_server *s, char *err, size_t errlen)
{
    if (dmn_dist_size() == 1) return 0;
    struct dmn_dist_start *x = malloc(sizeof(*x));
    if (!x) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    x->cfg = s->cfg;
    x->change_seq = s->change_seq;
    int rc = dmn_dist_share_trainer(&s->t, 0, x, sizeof(*x), err, errlen);
    free(x);
    s->dist_pending = 1; // the first gather at the first loop iteration, as on the others
    return rc;
}

static void dmn__noop_async(uv_async_t *h)
{
    (void)h;
}

int dmn__dist_follow(struct dmn_server *s)
{
    char err[1024];
    struct dmn_dist_start *x = calloc(1, sizeof(*x));
    if (!x) return 1;
    int rc = dmn_dist_share_trainer(&s->t, 0, x, sizeof(*x), err, sizeof(err));
    if (rc < 0) {
        if (strncmp(err, "rank 0 could not", 16) != 0) fprintf(stderr, "evowidthd: %s\n", err);
        free(x);
        return 1;
    }
    s->cfg = x->cfg;
    s->change_seq = x->change_seq;
    free(x);
    s->dist_pending = 1;
    s->opts.quiet = 1; // rank 0 logs for the job
    // mpirun passes SIGTERM / SIGINT to every rank: rank 0 turns it into a stop that reaches
    // this rank at a step boundary (if mpirun's SIGKILL does not come first).
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    s->t->log = NULL;
    s->t->events = NULL;
    dmn_trainer_set_epochs(s->t, s->cfg.train.epochs);
    struct dmn_cmd c = {.kind = DMN_CMD_CONFIG, .cfg = s->cfg, .seq = s->change_seq};
    dmn__apply(s, &c); // as rank 0 does at start-up
    // The trainer loop wakes the (absent) HTTP loop when it ends: a handle that is never run.
    if (uv_loop_init(&s->loop) < 0) return 1;
    if (uv_async_init(&s->loop, &s->wake, dmn__noop_async) < 0) {
        uv_loop_close(&s->loop);
        return 1;
    }
    dmn__trainer_main(s);
    uv_close((uv_handle_t *)&s->wake, NULL);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    return uv_loop_close(&s->loop) == 0 ? 0 : 1;
}

static int dmn__dist_forwarded(enum dmn_cmd_kind k)
{
    return k == DMN_CMD_PAUSE || k == DMN_CMD_RESUME || k == DMN_CMD_ADAPT || k == DMN_CMD_STOP ||
           k == DMN_CMD_CONFIG;
}

/* Every rank's checksum, step, change_seq and lr into s->dist_ranks (rank 0). */
static void dmn__dist_gather_ranks(struct dmn_server *s)
{
    struct dmn_trainer *t = s->t;
    struct dmn_dist_rankinfo mine = {dmn_dist_param_crc(t->net), 0, t->step, t->change_seq,
                                     net_sched_lr(&t->sched, t->step)};
    const size_t W = (size_t)dmn_dist_size();
    struct dmn_dist_rankinfo *all = dmn_dist_is_root() ? calloc(W, sizeof(*all)) : NULL;
    if (dmn_dist_is_root() && !all) dmn__dist_fatal("out of memory for the ranks' checksums");
    if (dmn__dist_gather(&mine, all, sizeof(mine)) < 0)
        dmn__dist_fatal("gathering the ranks' checksums failed");
    s->dist_step = t->step;
    s->dist_pending = 0;
    if (!all) return;
    pthread_mutex_lock(&s->mu);
    struct dmn_dist_rankinfo *old = s->dist_ranks;
    s->dist_ranks = all;
    pthread_mutex_unlock(&s->mu);
    free(old);
}

struct dmn_cmd *dmn__dist_commands(struct dmn_server *s, struct dmn_cmd *q)
{
    if (dmn_dist_size() == 1) return q;
    const size_t step = s->t->step;
    // Only state every rank shares decides (the gather is a collective).
    if (s->dist_pending || (step != s->dist_step && step % DMN_DIST_CHECK_STEPS == 0))
        dmn__dist_gather_ranks(s);
    struct net_wr w = {0};
    if (dmn_dist_is_root()) {
        uint32_t n = 0;
        for (struct dmn_cmd *c = q; c; c = c->next) n += (uint32_t)dmn__dist_forwarded(c->kind);
        if (n) {
            net_wr_u32(&w, n);
            for (struct dmn_cmd *c = q; c; c = c->next) {
                if (!dmn__dist_forwarded(c->kind)) continue;
                net_wr_u32(&w, (uint32_t)c->kind);
                net_wr_u64(&w, c->seq);
                if (c->kind == DMN_CMD_CONFIG) net_wr_bytes(&w, &c->cfg, sizeof(c->cfg));
            }
            if (w.oom) dmn__dist_fatal("out of memory sending the commands");
        }
    }
    unsigned char *buf = w.p;
    size_t len = w.len;
    // The followers wait here in short sleeps (a paused daemon must not spin a core).
    if (dmn__dist_bcast(&len, sizeof(len), 1) < 0 ||
        (len && dmn_dist_is_root() && dmn__dist_bcast(buf, len, 0) < 0))
        dmn__dist_fatal("broadcast of the commands failed");
    if (len) s->dist_pending = 1;
    if (dmn_dist_is_root()) {
        net_wr_free(&w);
        return q;
    }
    if (!len) return NULL;
    if (!(buf = malloc(len))) dmn__dist_fatal("out of memory receiving the commands");
    if (dmn__dist_bcast(buf, len, 0) < 0) dmn__dist_fatal("broadcast of the commands failed");
    struct net_rd r = net_rd_make(buf, len);
    uint32_t n = net_rd_u32(&r);
    struct dmn_cmd *head = NULL, **tail = &head;
    for (uint32_t i = 0; i < n && !r.bad; i++) {
        struct dmn_cmd *c = dmn__cmd_new((enum dmn_cmd_kind)net_rd_u32(&r));
        if (!c) dmn__dist_fatal("out of memory receiving the commands");
        c->seq = net_rd_u64(&r);
        if (c->kind == DMN_CMD_CONFIG) net_rd_bytes(&r, &c->cfg, sizeof(c->cfg));
        *tail = c;
        tail = &c->next;
    }
    if (!net_rd_done(&r)) dmn__dist_fatal("rank 0's commands are malformed");
    free(buf);
    return head;
}
