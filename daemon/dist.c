/* daemon/dist.c: every MPI call of evowidth (see daemon/dist.h for the scheme).
 *
 * The world (rank, size, whether MPI was initialised) is process-wide by nature, so it is
 * kept here in file statics, set once by dmn_dist_init before any thread starts. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <mpi.h>
#include <zlib.h>

#include "daemon/daemon_internal.h"
#include "daemon/dist.h"
#include "net/codec.h"

#define DMN_DIST_CHUNK (1 << 30) // bytes per MPI call (counts are ints)
#define REPL_VERSION 1u

static int dmn__mpi_on, dmn__rank, dmn__size = 1;
static struct dmn_dist_stats dmn__stats;
static uint32_t *dmn__pre_sums; // (size) checksums gathered before the last surgery, rank 0

int dmn_dist_init(int *argc, char ***argv)
{
    if (!getenv("OMPI_COMM_WORLD_SIZE") && !getenv("PMIX_RANK") && !getenv("PMI_RANK")) return 0;
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS) return -EIO;
    dmn__mpi_on = 1;
    if (provided < MPI_THREAD_SERIALIZED) {
        fprintf(stderr,
                "evowidth: this MPI gives thread level %d, evowidth needs "
                "MPI_THREAD_SERIALIZED\n",
                provided);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &dmn__rank);
    MPI_Comm_size(MPI_COMM_WORLD, &dmn__size);
    return 0;
}

void dmn_dist_finalize(int exit_code)
{
    if (!dmn__mpi_on) return;
    free(dmn__pre_sums);
    dmn__pre_sums = NULL;
    if (exit_code != 0 && dmn__size > 1) MPI_Abort(MPI_COMM_WORLD, exit_code);
    MPI_Finalize();
    dmn__mpi_on = 0;
}

void dmn__dist_fatal(const char *why)
{
    fprintf(stderr, "evowidth rank %d of %d: %s; ending the job\n", dmn__rank, dmn__size, why);
    fflush(stderr);
    if (dmn__mpi_on) MPI_Abort(MPI_COMM_WORLD, 1);
    abort(); // unreachable: MPI_Abort does not return
}

int dmn_dist_rank(void)
{
    return dmn__rank;
}
int dmn_dist_size(void)
{
    return dmn__size;
}
int dmn_dist_is_root(void)
{
    return dmn__rank == 0;
}

void dmn_dist_shard(size_t B, size_t *lo, size_t *n)
{
    const size_t r = (size_t)dmn__rank, W = (size_t)dmn__size;
    *lo = r * B / W;
    *n = (r + 1) * B / W - *lo;
}

int dmn_dist_max_int(int v)
{
    int out = v;
    if (dmn__size > 1) MPI_Allreduce(&v, &out, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return out;
}

uint32_t dmn_dist_param_crc(const struct net *n)
{
    uLong c = crc32(0L, Z_NULL, 0);
    const unsigned char *p = (const unsigned char *)n->params;
    size_t left = n->n_params * sizeof(float);
    while (left) {
        uInt k = left > (1u << 30) ? (1u << 30) : (uInt)left;
        c = crc32(c, p, k);
        p += k;
        left -= k;
    }
    return (uint32_t)c;
}

int dmn__dist_gather(const void *mine, void *all, size_t len)
{
    if (dmn__size == 1) {
        if (all) memcpy(all, mine, len);
        return 0;
    }
    if (len > INT_MAX) return -EINVAL;
    return MPI_Gather(mine, (int)len, MPI_BYTE, all, (int)len, MPI_BYTE, 0, MPI_COMM_WORLD) ==
                   MPI_SUCCESS
               ? 0
               : -EIO;
}

int dmn_dist_gather_u32(uint32_t v, uint32_t *all)
{
    return dmn__dist_gather(&v, all, sizeof(v));
}

/* Waits for a request in short sleeps (Open MPI's blocking calls spin a core). */
static int dmn__wait_poll(MPI_Request *rq)
{
    long ns = 20000;
    for (;;) {
        int done = 0;
        if (MPI_Test(rq, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) return -EIO;
        if (done) return 0;
        struct timespec ts = {0, ns};
        nanosleep(&ts, NULL);
        if (ns < 2000000) ns *= 2;
    }
}

int dmn__dist_bcast(void *p, size_t len, int poll)
{
    if (dmn__size == 1) return 0;
    unsigned char *b = p;
    while (len) {
        int k = len > DMN_DIST_CHUNK ? DMN_DIST_CHUNK : (int)len;
        if (poll) {
            MPI_Request rq;
            if (MPI_Ibcast(b, k, MPI_BYTE, 0, MPI_COMM_WORLD, &rq) != MPI_SUCCESS ||
                dmn__wait_poll(&rq) < 0)
                return -EIO;
        } else if (MPI_Bcast(b, k, MPI_BYTE, 0, MPI_COMM_WORLD) != MPI_SUCCESS) {
            return -EIO;
        }
        b += k;
        len -= (size_t)k;
    }
    return 0;
}

/* A length-prefixed message from rank 0: the header is waited for in sleeps, the payload
 * follows at once. On rank 0 *buf / *len are the message; elsewhere *buf is malloc'ed. */
static int dmn__bcast_msg(int64_t *status, unsigned char **buf, size_t *len)
{
    int64_t head[2] = {*status, (int64_t)*len};
    if (dmn__dist_bcast(head, sizeof(head), 1) < 0) return -EIO;
    *status = head[0];
    if (!dmn__rank) return head[1] ? dmn__dist_bcast(*buf, *len, 0) : 0;
    *len = (size_t)head[1];
    *buf = NULL;
    if (!*len) return 0;
    if (!(*buf = malloc(*len))) dmn__dist_fatal("out of memory for rank 0's message");
    return dmn__dist_bcast(*buf, *len, 0);
}

void dmn_dist_stats(struct dmn_dist_stats *out)
{
    *out = dmn__stats;
}

// ---- the step ---------------------------------------------------------------------------

static double dmn__mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void dmn__dist_step(struct net *net, float *loss, size_t *correct, size_t n, size_t B)
{
    if (dmn__size == 1) return;
    // One small allreduce: the BN running statistics, the shard's summed loss, its count.
    const size_t ns = net->n_state;
    float *buf = malloc((ns + 2) * sizeof(float));
    if (!buf) dmn__dist_fatal("out of memory for the step's statistics");
    memcpy(buf, net->state, ns * sizeof(float));
    buf[ns] = *loss * (float)n;
    buf[ns + 1] = (float)*correct;
    if (MPI_Allreduce(MPI_IN_PLACE, buf, (int)(ns + 2), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD) !=
        MPI_SUCCESS)
        dmn__dist_fatal("allreduce of the step's statistics failed");
    const float inv = 1.0f / (float)dmn__size;
    for (size_t i = 0; i < ns; i++) net->state[i] = buf[i] * inv;
    *loss = buf[ns] / (float)B;
    *correct = (size_t)(buf[ns + 1] + 0.5f);
    free(buf);
}

void dmn__dist_grads(struct net *net, size_t n, size_t B)
{
    if (dmn__size == 1) return;
    const float s = (float)n / (float)B;
    float *g = net->grads;
    for (size_t i = 0; i < net->n_params; i++) g[i] *= s;
    double t0 = dmn__mono();
    size_t left = net->n_params;
    while (left) {
        int k = left > DMN_DIST_CHUNK / 4 ? DMN_DIST_CHUNK / 4 : (int)left;
        if (MPI_Allreduce(MPI_IN_PLACE, g, k, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD) != MPI_SUCCESS)
            dmn__dist_fatal("allreduce of the gradients failed");
        g += k;
        left -= (size_t)k;
    }
    net->grads_zero = 0;
    dmn__stats.allreduce_seconds += dmn__mono() - t0;
    dmn__stats.allreduce_bytes += net->n_params * sizeof(float);
    dmn__stats.allreduce_calls++;
}

// ---- surgery: rank 0's result to every rank ----------------------------------------------

void dmn__dist_presurgery(const struct dmn_trainer *t)
{
    if (dmn__size == 1) return;
    if (!dmn__rank && !dmn__pre_sums && !(dmn__pre_sums = calloc((size_t)dmn__size, 4)))
        dmn__dist_fatal("out of memory for the checksums");
    if (dmn_dist_gather_u32(dmn_dist_param_crc(t->net), dmn__pre_sums) < 0)
        dmn__dist_fatal("gathering the parameter checksums failed");
}

void dmn__dist_event_fields(struct cJSON *event)
{
    if (dmn__size == 1 || !dmn__pre_sums || !event) return;
    cJSON_AddNumberToObject(event, "world_size", dmn__size);
    cJSON *a = cJSON_AddArrayToObject(event, "param_checksums");
    for (int i = 0; a && i < dmn__size; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber((double)dmn__pre_sums[i]));
}

/* REPL: u32 version | u64 rng | f64 adapt_seconds | u64 length | adaptation state. */
static int dmn__replica_encode(struct dmn_trainer *t, struct net_wr *img)
{
    char err[256];
    void *ad = NULL;
    size_t al = 0;
    if (dmn__adapt_serialize(t, &ad, &al) < 0) return -ENOMEM;
    struct net_wr b = {0};
    net_wr_u32(&b, REPL_VERSION);
    net_wr_u64(&b, t->rng);
    net_wr_f64(&b, t->adapt_seconds);
    net_wr_u64(&b, al);
    net_wr_bytes(&b, ad, al);
    free(ad);
    int rc = -ENOMEM;
    if (!b.oom) {
        struct ckpt_blob blob = {"REPL", b.p, b.len};
        rc = ckpt_encode(img, t->net, &t->opt, &blob, 1, "rank 0's replica", err, sizeof(err));
    }
    net_wr_free(&b);
    return rc;
}

static int dmn__replica_apply(struct dmn_trainer *t, const unsigned char *buf, size_t len,
                              char *err, size_t errlen)
{
    struct net *n = NULL;
    struct ckpt_blob *bl = NULL;
    size_t nbl = 0;
    struct net_optim opt = {0};
    int has_opt = 0;
    int rc = ckpt_decode(buf, len, "rank 0's replica", &n, &opt, &has_opt, &bl, &nbl, err, errlen);
    if (rc < 0) return rc;
    const struct ckpt_blob *b = ckpt_blob_find(bl, nbl, "REPL");
    rc = -EINVAL;
    if (!b || !has_opt) {
        snprintf(err, errlen, "rank 0's replica has no %s", b ? "OPTM" : "REPL");
        goto out;
    }
    struct net_rd r = net_rd_make(b->data, b->len);
    uint32_t ver = net_rd_u32(&r);
    uint64_t rng = net_rd_u64(&r);
    double adapt_seconds = net_rd_f64(&r);
    uint64_t al = net_rd_count(&r, SIZE_MAX, 1);
    const void *ad = net_rd_view(&r, (size_t)al);
    if (r.bad || ver != REPL_VERSION || !net_rd_done(&r)) {
        snprintf(err, errlen, "rank 0's replica: bad REPL chunk");
        goto out;
    }
    if ((rc = net_reserve(n, t->cfg.train.batch_size)) < 0 ||
        (rc = dmn__adapt_deserialize(t, ad, (size_t)al)) < 0) {
        snprintf(err, errlen, "rank 0's replica: cannot apply it (%s)", strerror(-rc));
        goto out;
    }
    net_destroy(t->net);
    t->net = n;
    n = NULL;
    t->opt = opt;
    t->rng = rng;
    t->adapt_seconds = adapt_seconds;
    rc = 0;
out:
    net_destroy(n);
    ckpt_blobs_free(bl, nbl);
    return rc;
}

int dmn__dist_surgery(struct dmn_trainer *t, int rc)
{
    if (dmn__size == 1) return rc;
    struct net_wr img = {0};
    if (!dmn__rank && dmn__replica_encode(t, &img) < 0)
        dmn__dist_fatal("out of memory encoding the net after a surgery");
    int64_t status = rc;
    unsigned char *buf = img.p;
    size_t len = img.len;
    if (dmn__bcast_msg(&status, &buf, &len) < 0) dmn__dist_fatal("broadcast of a surgery failed");
    if (dmn__rank) {
        char err[512];
        if (dmn__replica_apply(t, buf, len, err, sizeof(err)) < 0) dmn__dist_fatal(err);
        free(buf);
    }
    net_wr_free(&img);
    return (int)status;
}

// ---- start of a run -----------------------------------------------------------------------

int dmn_dist_share_trainer(struct dmn_trainer **t, int rc, void *extra, size_t extra_len, char *err,
                           size_t errlen)
{
    if (dmn__size == 1) return rc;
    struct net_wr img = {0};
    if (!dmn__rank && rc == 0 &&
        (rc = dmn_trainer_encode(*t, &img, "rank 0's run", err, errlen)) < 0)
        snprintf(err, errlen, "out of memory encoding the run for the other ranks");
    int64_t status = rc;
    unsigned char *buf = img.p;
    size_t len = img.len;
    int erc = dmn__bcast_msg(&status, &buf, &len);
    if (erc == 0 && status == 0 && extra_len) erc = dmn__dist_bcast(extra, extra_len, 0);
    if (erc < 0) {
        snprintf(err, errlen, "broadcast of the run failed");
        rc = erc;
    } else if (status < 0) {
        if (dmn__rank) snprintf(err, errlen, "rank 0 could not start the run");
        rc = (int)status;
    } else if (dmn__rank) {
        char why[768];
        rc = dmn_trainer_decode(t, buf, len, "rank 0's run", why, sizeof(why));
        if (rc < 0) snprintf(err, errlen, "rank %d: %s", dmn__rank, why);
    }
    if (dmn__rank) free(buf);
    net_wr_free(&img);
    return rc;
}
