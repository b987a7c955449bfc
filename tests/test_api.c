/* tests/test_api.c: the api/ HTTP server against raw POSIX socket clients.
 *
 * Each case starts a server on 127.0.0.1:0 in its own uv loop on a separate pthread (the
 * fixture), drives it with blocking sockets from the test thread, checking exact status
 * lines, headers and bodies, then stops it through a uv_async (api_server_stop on the loop
 * thread) and checks that uv_loop_close returns 0 once uv_run has drained. Async handlers
 * complete from a helper thread via uv_async_send, as the daemon's trainer will. Sizes are
 * tested at the caps (exactly at the cap passes, one byte over fails). Pure helpers
 * (routing, token compare, Content-Type, percent-decoding, listen parsing) are table-driven. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "api/api.h"
#include "api/api_internal.h"
#include "tests/test.h"

// ---- fixture: a server on its own loop thread ------------------------------------------------

#define MAX_HELPERS 64
#define MAX_READY 64

struct fx {
    uv_loop_t loop;
    uv_async_t stop_async; // main -> loop: stop the server
    uv_async_t slow_async; // helper -> loop: deferred responses are due
    uv_timer_t late;       // after the stop: complete leftovers once the server is freed
    struct api_server *srv;
    pthread_t th;
    int port;
    int loop_close_rc;
    struct api_async *held; // loop thread only: a handle completed at stop time
    pthread_mutex_t mu;     // guards the fields below
    struct api_async *ready[MAX_READY];
    size_t n_ready;
    pthread_t helpers[MAX_HELPERS];
    size_t n_helpers;
    int n_complete_ok, n_complete_gone;
    int held_rc;
};

struct slow_job {
    struct fx *fx;
    struct api_async *h;
    int ms;
};

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void *slow_helper(void *arg)
{
    struct slow_job *j = arg;
    sleep_ms(j->ms);
    pthread_mutex_lock(&j->fx->mu);
    j->fx->ready[j->fx->n_ready++] = j->h;
    pthread_mutex_unlock(&j->fx->mu);
    uv_async_send(&j->fx->slow_async);
    free(j);
    return NULL;
}

/* Loop thread: complete every handle whose delay has passed. */
static void drain_ready(struct fx *fx)
{
    struct api_async *hs[MAX_READY];
    pthread_mutex_lock(&fx->mu);
    size_t n = fx->n_ready;
    memcpy(hs, fx->ready, n * sizeof hs[0]);
    fx->n_ready = 0;
    pthread_mutex_unlock(&fx->mu);
    for (size_t i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddBoolToObject(o, "slow", 1);
        api_resp_json(api_async_resp(hs[i]), o);
        int rc = api_async_complete(hs[i], 200);
        pthread_mutex_lock(&fx->mu);
        if (rc == 0) fx->n_complete_ok++;
        if (rc == -ENOTCONN) fx->n_complete_gone++;
        pthread_mutex_unlock(&fx->mu);
    }
}

static void on_slow_async(uv_async_t *a)
{
    drain_ready(container_of(a, struct fx, slow_async));
}

/* One loop iteration after the stop, when the server has been freed: complete what is
 * left (orphaned handles must be safe to complete), then close our own handles. */
static void on_late(uv_timer_t *t)
{
    struct fx *fx = container_of(t, struct fx, late);
    if (fx->held) {
        int rc = api_async_complete(fx->held, 200);
        fx->held = NULL;
        pthread_mutex_lock(&fx->mu);
        fx->held_rc = rc;
        pthread_mutex_unlock(&fx->mu);
    }
    drain_ready(fx);
    uv_close((uv_handle_t *)&fx->late, NULL);
    uv_close((uv_handle_t *)&fx->slow_async, NULL);
}

static void on_stop_async(uv_async_t *a)
{
    struct fx *fx = container_of(a, struct fx, stop_async);
    api_server_stop(fx->srv);
    uv_close((uv_handle_t *)&fx->stop_async, NULL);
    if (uv_timer_init(&fx->loop, &fx->late) < 0 || uv_timer_start(&fx->late, on_late, 20, 0) < 0)
        abort();
}

static void *loop_main(void *arg)
{
    struct fx *fx = arg;
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    fx->loop_close_rc = uv_loop_close(&fx->loop);
    return NULL;
}

// ---- test handlers (loop thread) --------------------------------------------------------------

static int h_echo(struct api_req *req, struct api_resp *resp, void *ctx)
{
    (void)ctx;
    char v[256];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "method", req->method_str);
    cJSON_AddStringToObject(o, "path", req->path);
    cJSON_AddStringToObject(o, "query", req->query);
    cJSON *ps = cJSON_AddArrayToObject(o, "params");
    for (size_t i = 0; i < req->n_params; i++)
        cJSON_AddItemToArray(ps, cJSON_CreateString(req->params[i]));
    if (api_req_query(req, "points", v, sizeof v) >= 0) cJSON_AddStringToObject(o, "points", v);
    if (api_req_query(req, "x", v, sizeof v) >= 0) cJSON_AddStringToObject(o, "x", v);
    if (api_req_query(req, "i", v, sizeof v) >= 0) cJSON_AddStringToObject(o, "i", v);
    const char *ua = api_req_header(req, "user-agent");
    if (ua) cJSON_AddStringToObject(o, "ua", ua);
    cJSON_AddNumberToObject(o, "body_len", (double)req->body_len);
    api_resp_json(resp, o);
    return 200;
}

/* PATCH /v1/thing: {"n": number}; n == 409 -> conflict; anything else malformed -> 422. */
static int h_thing(struct api_req *req, struct api_resp *resp, void *ctx)
{
    (void)ctx;
    cJSON *j = NULL;
    int rc = api_req_json(req, &j, resp);
    if (rc) return rc;
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(j, "n");
    if (!cJSON_IsObject(j) || !cJSON_IsNumber(n)) {
        cJSON_Delete(j);
        return api_resp_error(resp, 422, NULL, "field 'n' must be a number");
    }
    double v = n->valuedouble;
    cJSON_Delete(j);
    if (v == 409) return api_resp_error(resp, 409, "conflict", "n=%g is taken", v);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "n", v);
    cJSON_AddNumberToObject(o, "len", (double)req->body_len);
    api_resp_json(resp, o);
    return 200;
}

/* POST /v1/slow[?ms=N][&hold=1]: answers from a helper thread after N ms (default 50), or,
 * with hold=1, only when the fixture stops. */
static int h_slow(struct api_req *req, struct api_resp *resp, void *ctx)
{
    struct fx *fx = ctx;
    char v[32];
    struct api_async *h = api_resp_defer(resp);
    if (!h) return api_resp_error(resp, 503, NULL, "cannot defer");
    if (api_req_query(req, "hold", v, sizeof v) >= 0) {
        fx->held = h;
        return API_ASYNC;
    }
    struct slow_job *j = malloc(sizeof *j);
    j->fx = fx;
    j->h = h;
    j->ms = api_req_query(req, "ms", v, sizeof v) >= 0 ? atoi(v) : 50;
    pthread_mutex_lock(&fx->mu);
    pthread_create(&fx->helpers[fx->n_helpers++], NULL, slow_helper, j);
    pthread_mutex_unlock(&fx->mu);
    return API_ASYNC;
}

/* POST /v1/inline: defers and completes before returning. */
static int h_inline(struct api_req *req, struct api_resp *resp, void *ctx)
{
    (void)req;
    (void)ctx;
    struct api_async *h = api_resp_defer(resp);
    if (!h) return 503;
    api_resp_text(api_async_resp(h), NULL, "inline\n", 7);
    api_async_complete(h, 200);
    return API_ASYNC;
}

static int h_stats(struct api_req *req, struct api_resp *resp, void *ctx)
{
    (void)req;
    struct fx *fx = ctx;
    struct api_stats st;
    api_server_stats(fx->srv, &st);
    char buf[512];
    int n = snprintf(
        buf, sizeof buf,
        "requests_total %llu\nclass_2xx %llu\nclass_4xx %llu\nclass_5xx %llu\n"
        "conns_current %llu\nconns_accepted %llu\nconns_rejected %llu\n",
        (unsigned long long)st.requests_total, (unsigned long long)st.requests_by_class[2],
        (unsigned long long)st.requests_by_class[4], (unsigned long long)st.requests_by_class[5],
        (unsigned long long)st.conns_current, (unsigned long long)st.conns_accepted_total,
        (unsigned long long)st.conns_rejected_total);
    api_resp_text(resp, "text/plain; version=0.0.4", buf, (size_t)n);
    return 200;
}

static const struct api_route ROUTES[] = {
    {API_GET, "/v1/echo", h_echo, 0},
    {API_GET, "/v1/layers/{}/spectrum", h_echo, 0},
    {API_GET, "/v1/thing", h_echo, 0},
    {API_PATCH, "/v1/thing", h_thing, API_MUTATING},
    {API_POST, "/v1/slow", h_slow, API_MUTATING},
    {API_POST, "/v1/inline", h_inline, 0},
    {API_GET, "/v1/stats", h_stats, 0},
};
#define N_ROUTES (sizeof ROUTES / sizeof ROUTES[0])

static void opts_test(struct api_opts *o)
{
    api_opts_default(o);
    o->listen = "127.0.0.1:0";
}

/* Start a server on its own loop thread. The fixture lives on the heap and is freed by
 * fx_stop; a failing case that returns early leaks it (and its running thread) rather than
 * leaving the loop thread with a dangling stack frame. */
static struct fx *fx_new(const struct api_opts *o)
{
    char err[256];
    struct fx *fx = calloc(1, sizeof *fx);
    if (!fx) return NULL;
    pthread_mutex_init(&fx->mu, NULL);
    if (uv_loop_init(&fx->loop) < 0) return NULL;
    if (uv_async_init(&fx->loop, &fx->stop_async, on_stop_async) < 0) return NULL;
    if (uv_async_init(&fx->loop, &fx->slow_async, on_slow_async) < 0) return NULL;
    int rc = api_server_start(&fx->srv, &fx->loop, o, ROUTES, N_ROUTES, fx, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "api_server_start: %s\n", err);
        return NULL;
    }
    fx->port = api_server_port(fx->srv);
    fx->loop_close_rc = -12345;
    return pthread_create(&fx->th, NULL, loop_main, fx) == 0 ? fx : NULL;
}

/* Join the helper threads, stop the server on its loop, join the loop thread, and free the
 * fixture after copying out what the checks need. Returns uv_loop_close's result. */
struct fx_result {
    int loop_close_rc, held_rc, n_complete_ok, n_complete_gone;
};

static struct fx_result fx_stop(struct fx *fx)
{
    for (;;) {
        pthread_mutex_lock(&fx->mu);
        size_t n = fx->n_helpers;
        pthread_t t = n ? fx->helpers[n - 1] : 0;
        if (n) fx->n_helpers--;
        pthread_mutex_unlock(&fx->mu);
        if (!n) break;
        pthread_join(t, NULL);
    }
    uv_async_send(&fx->stop_async);
    pthread_join(fx->th, NULL);
    struct fx_result r = {fx->loop_close_rc, fx->held_rc, fx->n_complete_ok, fx->n_complete_gone};
    pthread_mutex_destroy(&fx->mu);
    free(fx);
    return r;
}

/* A server with opts_test's options; NULL on failure. */
static struct fx *fx_open(void)
{
    struct api_opts o;
    opts_test(&o);
    return fx_new(&o);
}

static int fx_counter(struct fx *fx, const int *field)
{
    pthread_mutex_lock(&fx->mu);
    int v = *field;
    pthread_mutex_unlock(&fx->mu);
    return v;
}

// ---- raw socket client -----------------------------------------------------------------------

struct cl {
    int fd;
    size_t len;
    char buf[1 << 17];
};

struct reply {
    int status;
    char head[8192];
    char body[8192]; // NUL-terminated copy (truncated if longer)
    size_t body_len;
};

static int raw_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        close(fd);
        return -1;
    }
    struct timeval tv = {3, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static struct cl *cl_open(int port)
{
    struct cl *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->fd = raw_connect(port);
    if (c->fd < 0) {
        free(c);
        return NULL;
    }
    return c;
}

static void cl_close(struct cl *c)
{
    if (!c) return;
    if (c->fd >= 0) close(c->fd);
    free(c);
}

/* The fixture of most cases: a server with opts_test's options on its own loop thread (fx)
 * and one client connected to it (c). FX_END closes the client, stops the server and checks
 * that its loop closed cleanly. */
#define FX_BEGIN(fx, c)                                                                            \
    struct fx *fx = fx_open();                                                                     \
    ASSERT(fx);                                                                                    \
    struct cl *c = cl_open(fx->port);                                                              \
    ASSERT(c)
#define FX_END(fx, c)                                                                              \
    do {                                                                                           \
        cl_close(c);                                                                               \
        ASSERT_EQ(fx_stop(fx).loop_close_rc, 0);                                                   \
    } while (0)

static int cl_send(struct cl *c, const char *s, size_t n)
{
    while (n) {
        ssize_t k = send(c->fd, s, n, MSG_NOSIGNAL);
        if (k <= 0) return -1;
        s += k;
        n -= (size_t)k;
    }
    return 0;
}

static int cl_sends(struct cl *c, const char *s)
{
    return cl_send(c, s, strlen(s));
}

/* Read one response (all of ours carry Content-Length, except 1xx). */
static int cl_recv(struct cl *c, struct reply *r)
{
    memset(r, 0, sizeof *r);
    for (;;) {
        char *e = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (e) {
            size_t hl = (size_t)(e + 4 - c->buf);
            if (hl >= sizeof r->head) return -1;
            memcpy(r->head, c->buf, hl);
            r->head[hl] = '\0';
            if (sscanf(r->head, "HTTP/1.1 %d", &r->status) != 1) return -1;
            const char *cl = strcasestr(r->head, "\r\nContent-Length:");
            size_t blen = cl ? strtoul(cl + 17, NULL, 10) : 0;
            if (c->len >= hl + blen) {
                size_t keep = blen < sizeof r->body - 1 ? blen : sizeof r->body - 1;
                memcpy(r->body, c->buf + hl, keep);
                r->body[keep] = '\0';
                r->body_len = blen;
                memmove(c->buf, c->buf + hl + blen, c->len - hl - blen);
                c->len -= hl + blen;
                return 0;
            }
        }
        if (c->len == sizeof c->buf) return -1;
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
        if (n <= 0) return -1;
        c->len += (size_t)n;
    }
}

/* 1 if the server closed (EOF or reset) with no further bytes, 0 if bytes came, -1 on
 * timeout. */
static int fd_eof(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, ms) <= 0) return -1;
    char b[256];
    ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno == ECONNRESET)) return 1;
    return n > 0 ? 0 : -1;
}

static int cl_eof(struct cl *c, int ms)
{
    return c->len ? 0 : fd_eof(c->fd, ms);
}

/* Value of a response header, copied into out ("" if absent). */
static const char *reply_header(const struct reply *r, const char *name, char *out, size_t n)
{
    char pat[128];
    snprintf(pat, sizeof pat, "\r\n%s:", name);
    const char *p = strcasestr(r->head, pat);
    out[0] = '\0';
    if (!p) return out;
    p += strlen(pat);
    while (*p == ' ') p++;
    size_t i = 0;
    while (p[i] && p[i] != '\r' && i + 1 < n) {
        out[i] = p[i];
        i++;
    }
    out[i] = '\0';
    return out;
}

static int roundtrip(struct cl *c, const char *req, struct reply *r)
{
    if (cl_sends(c, req) < 0) return -1;
    return cl_recv(c, r);
}

static const char GET_ECHO[] = "GET /v1/echo HTTP/1.1\r\nHost: t\r\n\r\n";

// ---- pure helpers ------------------------------------------------------------------------

TEST(route_match_table)
{
    static const struct {
        const char *pattern, *path;
        int match;
        size_t n;
        const char *p0;
    } T[] = {
        {"/v1/status", "/v1/status", 1, 0, NULL},
        {"/v1/status", "/v1/status/", 0, 0, NULL},
        {"/v1/status", "/v1/statu", 0, 0, NULL},
        {"/v1/status", "/v1/statusx", 0, 0, NULL},
        {"/v1/layers/{}/spectrum", "/v1/layers/fc1/spectrum", 1, 1, "fc1"},
        {"/v1/layers/{}/spectrum", "/v1/layers//spectrum", 0, 0, NULL},
        {"/v1/layers/{}/spectrum", "/v1/layers/a/b/spectrum", 0, 0, NULL},
        {"/v1/layers/{}", "/v1/layers/conv%201", 1, 1, "conv%201"},
        {"/v1/layers/{}", "/v1/layers/", 0, 0, NULL},
        {"/{}/{}", "/a/b", 1, 2, "a"},
        {"/", "/", 1, 0, NULL},
    };
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        const char *s[API_MAX_PARAMS];
        size_t l[API_MAX_PARAMS], n = 99;
        int m = api__route_match(T[i].pattern, T[i].path, s, l, &n);
        if (m != T[i].match) TEST_FAIL_("row %zu: %s vs %s gave %d", i, T[i].pattern, T[i].path, m);
        if (m) {
            ASSERT_EQ(n, T[i].n);
            if (T[i].p0) {
                ASSERT_EQ(l[0], strlen(T[i].p0));
                ASSERT(memcmp(s[0], T[i].p0, l[0]) == 0);
            }
        }
    }
}

TEST(small_helpers_table)
{
    ASSERT(api__token_eq("abc", 3, "abc", 3));
    ASSERT(!api__token_eq("abc", 3, "abd", 3));
    ASSERT(!api__token_eq("abc", 3, "abcd", 4));
    ASSERT(!api__token_eq("", 0, "a", 1));
    static const struct {
        const char *ct;
        int ok;
    } CT[] = {
        {"application/json", 1},
        {"Application/JSON", 1},
        {"application/json; charset=utf-8", 1},
        {" application/json ;x=y", 1},
        {"application/jsonx", 0},
        {"text/plain", 0},
        {"", 0},
    };
    for (size_t i = 0; i < sizeof CT / sizeof CT[0]; i++)
        if (api__ctype_is_json(CT[i].ct) != CT[i].ok) TEST_FAIL_("ctype row %zu '%s'", i, CT[i].ct);
    ASSERT(!api__ctype_is_json(NULL));
    char out[32];
    ASSERT_EQ(api__pct_decode(out, "a%20b+c%2", 9, 1), 7);
    ASSERT_STR_EQ(out, "a b c%2");
    ASSERT_EQ(api__pct_decode(out, "a+b%zz", 6, 0), 6);
    ASSERT_STR_EQ(out, "a+b%zz");
    ASSERT_EQ(api__pct_decode(NULL, "%41%42", 6, 0), 2);
}

TEST(listen_address_table)
{
    static const struct {
        const char *listen, *token;
        int rc;
        const char *msg;
    } T[] = {
        {"0.0.0.0:0", NULL, -EPERM, "non-loopback"},
        {"192.0.2.1:7070", "", -EPERM, "without a token"},
        {"nonsense", NULL, -EINVAL, "bad listen address"},
        {"127.0.0.1:99999", NULL, -EINVAL, "bad listen address"},
        {"127.0.0.1:", NULL, -EINVAL, "bad listen address"},
        {"[::1:0", NULL, -EINVAL, "bad listen address"},
        {"127.0.0.1:0", NULL, 0, ""},
        {"localhost:0", NULL, 0, ""},
        {"[::1]:0", NULL, 0, ""}, // or EADDRNOTAVAIL/EAFNOSUPPORT without IPv6
        {"0.0.0.0:0", "tok", 0, ""},
    };
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        uv_loop_t loop;
        ASSERT_EQ(uv_loop_init(&loop), 0);
        struct api_opts o;
        api_opts_default(&o);
        o.listen = T[i].listen;
        o.token = T[i].token;
        struct api_server *s = NULL;
        char err[256] = "";
        int rc = api_server_start(&s, &loop, &o, ROUTES, N_ROUTES, NULL, err, sizeof err);
        int no_v6 = T[i].listen[0] == '[' && (rc == UV_EADDRNOTAVAIL || rc == UV_EAFNOSUPPORT);
        if (rc != T[i].rc && !no_v6)
            TEST_FAIL_("row %zu (%s): rc %d, err '%s'", i, T[i].listen, rc, err);
        ASSERT_CONTAINS(err, no_v6 ? "cannot listen" : T[i].msg);
        if (rc == 0) {
            ASSERT_GT(api_server_port(s), 0);
            api_server_stop(s);
        } else {
            ASSERT(s == NULL);
        }
        uv_run(&loop, UV_RUN_DEFAULT);
        ASSERT_EQ(uv_loop_close(&loop), 0);
    }
}

TEST(start_errors_port_in_use_and_bad_routes)
{
    uv_loop_t loop;
    ASSERT_EQ(uv_loop_init(&loop), 0);
    struct api_opts o;
    opts_test(&o);
    struct api_server *a = NULL, *b = NULL;
    char err[256], addr[64];
    ASSERT_EQ(api_server_start(&a, &loop, &o, ROUTES, N_ROUTES, NULL, err, sizeof err), 0);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", api_server_port(a));
    o.listen = addr;
    int rc = api_server_start(&b, &loop, &o, ROUTES, N_ROUTES, NULL, err, sizeof err);
    ASSERT_EQ(rc, UV_EADDRINUSE);
    ASSERT_CONTAINS(err, "cannot listen");
    ASSERT(b == NULL);

    static const struct api_route BAD[][1] = {
        {{API_GET, "v1/x", h_echo, 0}},
        {{API_GET, "/v1/{x}", h_echo, 0}},
        {{API_GET, "/v1/a{}", h_echo, 0}},
        {{API_GET, "/v1/x", NULL, 0}},
        {{(enum api_method)0, "/v1/x", h_echo, 0}},
    };
    opts_test(&o);
    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
        rc = api_server_start(&b, &loop, &o, BAD[i], 1, NULL, err, sizeof err);
        if (rc != -EINVAL) TEST_FAIL_("bad route %zu accepted (rc %d)", i, rc);
        ASSERT_CONTAINS(err, "route 0");
    }
    o.limits.max_header_bytes = 10;
    ASSERT_EQ(api_server_start(&b, &loop, &o, ROUTES, N_ROUTES, NULL, err, sizeof err), -EINVAL);
    ASSERT_CONTAINS(err, "max_header_bytes");

    api_server_stop(a);
    uv_run(&loop, UV_RUN_DEFAULT);
    ASSERT_EQ(uv_loop_close(&loop), 0);
}

// ---- basic requests ------------------------------------------------------------------------

TEST(get_keepalive_two_requests)
{
    FX_BEGIN(fx, c);
    struct reply r;
    char h[128];
    for (int i = 0; i < 2; i++) {
        ASSERT_EQ(
            roundtrip(c, "GET /v1/echo?i=7 HTTP/1.1\r\nHost: t\r\nUser-Agent: tst\r\n\r\n", &r), 0);
        ASSERT_EQ(r.status, 200);
        ASSERT(strncmp(r.head, "HTTP/1.1 200 OK\r\n", 17) == 0);
        ASSERT_STR_EQ(reply_header(&r, "Content-Type", h, sizeof h), "application/json");
        ASSERT_STR_EQ(reply_header(&r, "Connection", h, sizeof h), "");
        ASSERT_STR_EQ(r.body, "{\"method\":\"GET\",\"path\":\"/v1/echo\",\"query\":\"i=7\","
                              "\"params\":[],\"i\":\"7\",\"ua\":\"tst\",\"body_len\":0}");
    }
    ASSERT_EQ(cl_eof(c, 50), -1); // still open
    FX_END(fx, c);
}

TEST(query_and_path_params)
{
    FX_BEGIN(fx, c);
    struct reply r;
    ASSERT_EQ(roundtrip(c,
                        "GET /v1/layers/conv%201/spectrum?points=100&x=a%20b+c#frag HTTP/1.1"
                        "\r\n\r\n",
                        &r),
              0);
    ASSERT_EQ(r.status, 200);
    ASSERT_CONTAINS(r.body, "\"path\":\"/v1/layers/conv%201/spectrum\"");
    ASSERT_CONTAINS(r.body, "\"query\":\"points=100&x=a%20b+c\"");
    ASSERT_CONTAINS(r.body, "\"params\":[\"conv 1\"]");
    ASSERT_CONTAINS(r.body, "\"points\":\"100\"");
    ASSERT_CONTAINS(r.body, "\"x\":\"a b c\"");
    // Absolute-form request target.
    ASSERT_EQ(roundtrip(c, "GET http://h:1/v1/echo?i=2 HTTP/1.1\r\n\r\n", &r), 0);
    ASSERT_EQ(r.status, 200);
    ASSERT_CONTAINS(r.body, "\"path\":\"/v1/echo\"");
    FX_END(fx, c);
}

TEST(not_found_and_method_not_allowed)
{
    FX_BEGIN(fx, c);
    struct reply r;
    char h[128];
    ASSERT_EQ(roundtrip(c, "GET /v1/nope HTTP/1.1\r\n\r\n", &r), 0);
    ASSERT_EQ(r.status, 404);
    ASSERT(strncmp(r.head, "HTTP/1.1 404 Not Found\r\n", 24) == 0);
    ASSERT_STR_EQ(r.body,
                  "{\"error\":{\"code\":\"not_found\",\"message\":\"no route for GET /v1/nope\"}}");
    ASSERT_EQ(roundtrip(c, "DELETE /v1/thing HTTP/1.1\r\n\r\n", &r), 0);
    ASSERT_EQ(r.status, 405);
    ASSERT_STR_EQ(reply_header(&r, "Allow", h, sizeof h), "GET, PATCH");
    ASSERT_CONTAINS(r.body, "\"code\":\"method_not_allowed\"");
    ASSERT_EQ(roundtrip(c, "PUT /v1/layers/x/spectrum HTTP/1.1\r\n\r\n", &r), 0);
    ASSERT_EQ(r.status, 405);
    ASSERT_STR_EQ(reply_header(&r, "Allow", h, sizeof h), "GET");
    cl_close(c);
    // HEAD runs the GET route and sends its head only (read by hand: it announces a length
    // but carries no body), so the next response on the connection starts right after it.
    c = cl_open(fx->port);
    ASSERT(c);
    ASSERT_EQ(cl_sends(c, "HEAD /v1/echo HTTP/1.1\r\n\r\nGET /v1/echo HTTP/1.1\r\n\r\n"), 0);
    char buf[4096] = "";
    size_t got = 0;
    double t0 = now_ms();
    while (now_ms() - t0 < 2000 && !strstr(buf, "\"body_len\":0}")) {
        ssize_t n = recv(c->fd, buf + got, sizeof buf - 1 - got, 0);
        if (n <= 0) break;
        got += (size_t)n;
        buf[got] = '\0';
    }
    ASSERT(strncmp(buf, "HTTP/1.1 200 OK", 15) == 0);
    ASSERT_CONTAINS(buf, "Content-Length: 71\r\n");
    char *second = strstr(buf, "\r\n\r\n");
    ASSERT(second);
    ASSERT(strncmp(second + 4, "HTTP/1.1 200 OK", 15) == 0);
    FX_END(fx, c);
}

TEST(bad_request_table_closes)
{
    static const char *const BAD[] = {
        "GARBAGE\r\n\r\n",
        "GET /v1/echo XTTP/1.1\r\n\r\n",
        "GET /v1/echo HTTP/1.1\r\nBad Header\r\n\r\n",
        "GET /v1/echo HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        "GET /v1/echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "POST /v1/inline HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        "GET /v1/\001echo HTTP/1.1\r\n\r\n",
        "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        "PATCH /v1/thing HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "CONNECT example.org:443 HTTP/1.1\r\n\r\n",
    };
    struct fx *fx = fx_open();
    ASSERT(fx);
    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
        struct cl *c = cl_open(fx->port);
        ASSERT(c);
        struct reply r;
        int rc = roundtrip(c, BAD[i], &r);
        if (rc != 0 || r.status != 400) TEST_FAIL_("row %zu: rc %d status %d", i, rc, r.status);
        char h[64];
        ASSERT_STR_EQ(reply_header(&r, "Connection", h, sizeof h), "close");
        ASSERT_CONTAINS(r.body,
                        "{\"error\":{\"code\":\"bad_request\",\"message\":\"malformed request");
        ASSERT_EQ(cl_eof(c, 2000), 1);
        cl_close(c);
    }
    ASSERT_EQ(fx_stop(fx).loop_close_rc, 0);
}

// ---- bodies, JSON, content type --------------------------------------------------------------

static int patch_thing(struct cl *c, const char *ctype, const char *body, struct reply *r)
{
    char req[1024];
    snprintf(req, sizeof req, "PATCH /v1/thing HTTP/1.1\r\n%s%s%sContent-Length: %zu\r\n\r\n%s",
             ctype ? "Content-Type: " : "", ctype ? ctype : "", ctype ? "\r\n" : "", strlen(body),
             body);
    return roundtrip(c, req, r);
}

TEST(json_bodies_and_content_type)
{
    static const struct {
        const char *ctype, *body;
        int status;
        const char *needle;
    } T[] = {
        {"application/json", "{\"n\":5}", 200, "{\"n\":5,\"len\":7}"},
        {"application/json; charset=utf-8", " {\"n\":1} \n", 200, "\"n\":1"},
        {"Application/JSON", "{\"n\":2}", 200, "\"n\":2"},
        {"application/json", "{\"n\":", 400, "malformed JSON at byte"},
        {"application/json", "{\"n\":1} x", 400, "trailing characters after JSON at byte 8"},
        {"application/json", "[1,2]", 422, "\"code\":\"unprocessable\""},
        {"application/json", "{\"n\":\"x\"}", 422, "field 'n' must be a number"},
        {"application/json", "{\"n\":409}", 409,
         "{\"error\":{\"code\":\"conflict\",\"message\":\"n=409 is taken\"}}"},
        {"text/plain", "{\"n\":1}", 415, "\"code\":\"unsupported_media_type\""},
        {NULL, "{\"n\":1}", 415, "got '(none)'"},
        {"application/jsonp", "{\"n\":1}", 415, "application/jsonp"},
        {NULL, "", 400, "request body is empty"},
    };
    FX_BEGIN(fx, c);
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        struct reply r;
        ASSERT_EQ(patch_thing(c, T[i].ctype, T[i].body, &r), 0);
        if (r.status != T[i].status || !strstr(r.body, T[i].needle))
            TEST_FAIL_("row %zu: status %d body %s", i, r.status, r.body);
    }
    cl_close(c); // all of these kept the connection alive
    ASSERT_EQ(fx_stop(fx).loop_close_rc, 0);
}

static char *json_of_len(size_t n)
{
    // {"n":1,"pad":"xxx..."} of exactly n bytes (n >= 16)
    char *s = malloc(n + 1);
    size_t pre = strlen("{\"n\":1,\"pad\":\"");
    memcpy(s, "{\"n\":1,\"pad\":\"", pre);
    memset(s + pre, 'x', n - pre - 2);
    memcpy(s + n - 2, "\"}", 3);
    return s;
}

TEST(body_limit_content_length)
{
    struct fx *fx = fx_open();
    ASSERT(fx);
    static const struct {
        size_t len;
        int status;
    } T[] = {{65536, 200}, {65535, 200}, {65537, 413}, {1u << 30, 413}};
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        struct cl *c = cl_open(fx->port);
        ASSERT(c);
        char head[256];
        snprintf(head, sizeof head,
                 "PATCH /v1/thing HTTP/1.1\r\nContent-Type: application/json\r\n"
                 "Content-Length: %zu\r\n\r\n",
                 T[i].len);
        ASSERT_EQ(cl_sends(c, head), 0);
        struct reply r;
        if (T[i].status == 413) { // refused from the head alone: no body is sent
            ASSERT_EQ(cl_recv(c, &r), 0);
            ASSERT_EQ(r.status, 413);
            ASSERT_CONTAINS(r.body, "\"code\":\"payload_too_large\"");
            ASSERT_EQ(cl_eof(c, 2000), 1);
        } else {
            char *b = json_of_len(T[i].len);
            ASSERT_EQ(cl_send(c, b, T[i].len), 0);
            free(b);
            ASSERT_EQ(cl_recv(c, &r), 0);
            if (r.status != 200) TEST_FAIL_("len %zu: %d %s", T[i].len, r.status, r.body);
        }
        cl_close(c);
    }
    // A 413 while the client is still sending its body: the reply arrives, not a reset.
    struct cl *c = cl_open(fx->port);
    ASSERT(c);
    char *b = json_of_len(100000);
    char head[256];
    snprintf(head, sizeof head,
             "PATCH /v1/thing HTTP/1.1\r\nContent-Type: application/json\r\n"
             "Content-Length: 100000\r\n\r\n");
    ASSERT_EQ(cl_sends(c, head), 0);
    cl_send(c, b, 100000); // may fail part-way once the server has closed
    free(b);
    struct reply r;
    ASSERT_EQ(cl_recv(c, &r), 0);
    ASSERT_EQ(r.status, 413);
    FX_END(fx, c);
}

/* Send `total` bytes of JSON as chunks of `chunk` bytes. */
static int send_chunked(struct cl *c, size_t total, size_t chunk)
{
    char *b = json_of_len(total);
    int rc = cl_sends(c, "PATCH /v1/thing HTTP/1.1\r\nContent-Type: application/json\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n");
    for (size_t off = 0; rc == 0 && off < total; off += chunk) {
        size_t n = total - off < chunk ? total - off : chunk;
        char sz[32];
        snprintf(sz, sizeof sz, "%zx\r\n", n);
        rc = cl_sends(c, sz);
        if (rc == 0) rc = cl_send(c, b + off, n);
        if (rc == 0) rc = cl_sends(c, "\r\n");
    }
    if (rc == 0) rc = cl_sends(c, "0\r\n\r\n");
    free(b);
    return rc;
}

TEST(body_limit_chunked)
{
    struct fx *fx = fx_open();
    ASSERT(fx);
    static const struct {
        size_t len, chunk;
        int status;
    } T[] = {{65536, 10000, 200}, {100, 7, 200}, {65537, 10000, 413}, {90000, 30000, 413}};
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        struct cl *c = cl_open(fx->port);
        ASSERT(c);
        send_chunked(c, T[i].len, T[i].chunk); // may fail part-way after a 413
        struct reply r;
        ASSERT_EQ(cl_recv(c, &r), 0);
        if (r.status != T[i].status) TEST_FAIL_("row %zu: %d %s", i, r.status, r.body);
        if (r.status == 200) {
            char want[64];
            snprintf(want, sizeof want, "\"len\":%zu", T[i].len);
            ASSERT_CONTAINS(r.body, want);
        } else {
            ASSERT_CONTAINS(r.body, "request body exceeds 65536 bytes");
            ASSERT_EQ(cl_eof(c, 2000), 1);
        }
        cl_close(c);
    }
    ASSERT_EQ(fx_stop(fx).loop_close_rc, 0);
}

TEST(expect_100_continue)
{
    FX_BEGIN(fx, c);
    ASSERT_EQ(cl_sends(c, "PATCH /v1/thing HTTP/1.1\r\nContent-Type: application/json\r\n"
                          "Expect: 100-continue\r\nContent-Length: 7\r\n\r\n"),
              0);
    struct reply r;
    ASSERT_EQ(cl_recv(c, &r), 0);
    ASSERT_STR_EQ(r.head, "HTTP/1.1 100 Continue\r\n\r\n");
    ASSERT_EQ(cl_sends(c, "{\"n\":3}"), 0);
    ASSERT_EQ(cl_recv(c, &r), 0);
    ASSERT_EQ(r.status, 200);
    FX_END(fx, c);
}

// ---- head limits -----------------------------------------------------------------------------

/* A GET whose head is exactly `total` bytes, padded by one X-Pad header. */
static char *head_of_len(size_t total)
{
    static const char pre[] = "GET /v1/echo HTTP/1.1\r\nHost: t\r\nX-Pad: ";
    size_t fixed = sizeof pre - 1 + 4;
    char *s = malloc(total + 1);
    memcpy(s, pre, sizeof pre - 1);
    memset(s + sizeof pre - 1, 'p', total - fixed);
    memcpy(s + total - 4, "\r\n\r\n", 5);
    return s;
}

TEST(header_limits_at_cap)
{
    struct fx *fx = fx_open();
    ASSERT(fx);
    static const struct {
        size_t bytes;
        int status;
    } T[] = {{16384, 200}, {16383, 200}, {16385, 431}, {40000, 431}, {100000, 431}};
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        struct cl *c = cl_open(fx->port);
        ASSERT(c);
        char *req = head_of_len(T[i].bytes);
        cl_send(c, req, T[i].bytes); // the server may close before the tail of 100000
        free(req);
        struct reply r;
        ASSERT_EQ(cl_recv(c, &r), 0);
        if (r.status != T[i].status) TEST_FAIL_("%zu bytes: %d %s", T[i].bytes, r.status, r.body);
        if (r.status == 431) {
            ASSERT_CONTAINS(r.body, "\"code\":\"headers_too_large\"");
            ASSERT_EQ(cl_eof(c, 2000), 1);
        }
        cl_close(c);
    }
    // Header count: 64 fields pass, 65 fail.
    static const struct {
        int n;
        int status;
    } N[] = {{64, 200}, {65, 431}};
    for (size_t i = 0; i < 2; i++) {
        struct cl *c = cl_open(fx->port);
        ASSERT(c);
        char req[4096];
        size_t o2 = (size_t)snprintf(req, sizeof req, "GET /v1/echo HTTP/1.1\r\nHost: t\r\n");
        for (int k = 1; k < N[i].n; k++)
            o2 += (size_t)snprintf(req + o2, sizeof req - o2, "X-H%d: v\r\n", k);
        snprintf(req + o2, sizeof req - o2, "\r\n");
        struct reply r;
        ASSERT_EQ(roundtrip(c, req, &r), 0);
        ASSERT_EQ(r.status, N[i].status);
        if (r.status == 431) ASSERT_CONTAINS(r.body, "more than 64 header fields");
        cl_close(c);
    }
    ASSERT_EQ(fx_stop(fx).loop_close_rc, 0);
}

TEST(one_byte_writes)
{
    FX_BEGIN(fx, c);
    static const char req[] = "PATCH /v1/thing?i=1 HTTP/1.1\r\nHost: t\r\n"
                              "Content-Type: application/json\r\nContent-Length: 8\r\n\r\n"
                              "{\"n\":42}"
                              "GET /v1/layers/fc9/spectrum HTTP/1.1\r\n\r\n";
    for (size_t i = 0; i < sizeof req - 1; i++) {
        ASSERT_EQ(cl_send(c, req + i, 1), 0);
        if (i % 8 == 0) sleep_ms(1);
    }
    struct reply r;
    ASSERT_EQ(cl_recv(c, &r), 0);
    ASSERT_EQ(r.status, 200);
    ASSERT_STR_EQ(r.body, "{\"n\":42,\"len\":8}");
    ASSERT_EQ(cl_recv(c, &r), 0);
    ASSERT_EQ(r.status, 200);
    ASSERT_CONTAINS(r.body, "\"params\":[\"fc9\"]");
    FX_END(fx, c);
}

TEST(pipelining_in_order_with_async)
{
    FX_BEGIN(fx, c);
    ASSERT_EQ(cl_sends(c, "GET /v1/echo?i=1 HTTP/1.1\r\n\r\n"
                          "POST /v1/slow HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
                          "GET /v1/echo?i=3 HTTP/1.1\r\n\r\n"
                          "POST /v1/inline HTTP/1.1\r\n\r\n"
                          "GET /v1/echo?i=5 HTTP/1.1\r\nConnection: close\r\n\r\n"
                          "GET /v1/echo?i=6 HTTP/1.1\r\n\r\n"),
              0);
    struct reply r;
    ASSERT_EQ(cl_recv(c, &r), 0);
    ASSERT_CONTAINS(r.body, "\"i\":\"1\"");
    ASSERT_EQ(cl_recv(c, &r), 0);
    ASSERT_STR_EQ(r.body, "{\"slow\":true}");
    ASSERT_EQ(cl_recv(c, &r), 0);
    ASSERT_CONTAINS(r.body, "\"i\":\"3\"");
    ASSERT_EQ(cl_recv(c, &r), 0);
    ASSERT_STR_EQ(r.body, "inline\n");
    ASSERT_EQ(cl_recv(c, &r), 0);
    ASSERT_CONTAINS(r.body, "\"i\":\"5\"");
    char h[64];
    ASSERT_STR_EQ(reply_header(&r, "Connection", h, sizeof h), "close");
    ASSERT_EQ(cl_eof(c, 2000), 1); // the request after Connection: close is not answered
    cl_close(c);
    ASSERT_EQ(fx_counter(fx, &fx->n_complete_ok), 1);
    ASSERT_EQ(fx_stop(fx).loop_close_rc, 0);
}

struct pipe_job {
    int fd, n;
    size_t qlen;
    int rc;
};

static void *pipe_sender(void *arg)
{
    struct pipe_job *j = arg;
    size_t cap = j->qlen + 128;
    char *req = malloc(cap);
    j->rc = 0;
    for (int i = 0; i < j->n && j->rc == 0; i++) {
        int n = snprintf(req, cap, "GET /v1/echo?i=%d&pad=", i);
        memset(req + n, 'q', j->qlen);
        size_t len = (size_t)n + j->qlen;
        len += (size_t)snprintf(req + len, cap - len, " HTTP/1.1\r\n\r\n");
        for (size_t off = 0; off < len;) {
            ssize_t k = send(j->fd, req + off, len - off, MSG_NOSIGNAL);
            if (k <= 0) {
                j->rc = -1;
                break;
            }
            off += (size_t)k;
        }
    }
    free(req);
    return NULL;
}

/* A client that pipelines many requests with large answers and reads nothing for a while:
 * the server stops reading once its write queue is long, then resumes, all in order. */
TEST(pipelining_backpressure)
{
    struct fx *fx = fx_open();
    ASSERT(fx);
    struct cl *c = calloc(1, sizeof *c);
    ASSERT(c);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)fx->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(c->fd, (struct sockaddr *)&a, sizeof a), 0);
    struct timeval tv = {3, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct pipe_job j = {.fd = c->fd, .n = 400, .qlen = 8000};
    pthread_t th;
    ASSERT_EQ(pthread_create(&th, NULL, pipe_sender, &j), 0);
    sleep_ms(300); // ~3.2 MB of answers pile up meanwhile
    int in_order = 1;
    for (int i = 0; i < j.n; i++) {
        struct reply r;
        if (cl_recv(c, &r) != 0 || r.status != 200) {
            in_order = 0;
            break;
        }
        char want[32];
        snprintf(want, sizeof want, "\"query\":\"i=%d&", i);
        if (!strstr(r.body, want)) in_order = 0;
    }
    pthread_join(th, NULL);
    ASSERT_EQ(j.rc, 0);
    ASSERT(in_order);
    FX_END(fx, c);
}

TEST(http10_and_connection_close)
{
    struct fx *fx = fx_open();
    ASSERT(fx);
    struct reply r;
    char h[64];
    struct cl *c = cl_open(fx->port);
    ASSERT(c);
    ASSERT_EQ(cl_sends(c, "GET /v1/echo HTTP/1.0\r\n\r\n"), 0);
    ASSERT_EQ(cl_recv(c, &r), 0);
    ASSERT_EQ(r.status, 200);
    ASSERT_STR_EQ(reply_header(&r, "Connection", h, sizeof h), "close");
    ASSERT_EQ(cl_eof(c, 2000), 1);
    cl_close(c);

    c = cl_open(fx->port);
    ASSERT(c);
    for (int i = 0; i < 2; i++) {
        ASSERT_EQ(roundtrip(c, "GET /v1/echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &r), 0);
        ASSERT_EQ(r.status, 200);
        ASSERT_STR_EQ(reply_header(&r, "Connection", h, sizeof h), "keep-alive");
    }
    cl_close(c);

    static const char *const CLOSING[] = {
        "GET /v1/echo HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /v1/echo HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    };
    for (size_t i = 0; i < 2; i++) {
        c = cl_open(fx->port);
        ASSERT(c);
        ASSERT_EQ(roundtrip(c, CLOSING[i], &r), 0);
        ASSERT_EQ(r.status, 200);
        ASSERT_STR_EQ(reply_header(&r, "Connection", h, sizeof h), "close");
        ASSERT_EQ(cl_eof(c, 2000), 1);
        cl_close(c);
    }
    ASSERT_EQ(fx_stop(fx).loop_close_rc, 0);
}

// ---- timeouts ------------------------------------------------------------------------------

TEST(timeouts_request_408_and_idle)
{
    // The request timeout (200 ms) is far below the idle one (3 s): a 408 that comes after
    // about 200 ms proves the timer switched when the request began.
    struct api_opts o;
    opts_test(&o);
    o.limits.header_timeout_ms = 200;
    o.limits.idle_timeout_ms = 3000;
    struct fx *fx = fx_new(&o);
    ASSERT(fx);
    static const char *const PARTIAL[] = {
        "GET /v1/echo HTTP/1.1\r\nHost:", // stalls in the head
        "PATCH /v1/thing HTTP/1.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 10\r\n\r\n{\"n\"", // stalls in the body
    };
    for (size_t i = 0; i < 2; i++) {
        struct cl *c = cl_open(fx->port);
        ASSERT(c);
        struct reply r;
        ASSERT_EQ(roundtrip(c, GET_ECHO, &r), 0); // first a complete request
        double t0 = now_ms();
        ASSERT_EQ(cl_sends(c, PARTIAL[i]), 0);
        ASSERT_EQ(cl_recv(c, &r), 0);
        double dt = now_ms() - t0;
        ASSERT_EQ(r.status, 408);
        ASSERT_CONTAINS(r.body, "{\"error\":{\"code\":\"request_timeout\"");
        ASSERT_GE(dt, 150);
        ASSERT_LT(dt, 1000);
        ASSERT_EQ(cl_eof(c, 2000), 1);
        cl_close(c);
    }
    ASSERT_EQ(fx_stop(fx).loop_close_rc, 0);

    // Idle (300 ms) below the request timeout (3 s): a fresh connection that sends nothing,
    // and one idle after a request, are closed silently after about 300 ms.
    o.limits.header_timeout_ms = 3000;
    o.limits.idle_timeout_ms = 300;
    fx = fx_new(&o);
    ASSERT(fx);
    struct cl *a = cl_open(fx->port), *b = cl_open(fx->port);
    ASSERT(a && b);
    struct reply r;
    ASSERT_EQ(roundtrip(b, GET_ECHO, &r), 0);
    double t0 = now_ms();
    ASSERT_EQ(cl_eof(a, 2000), 1);
    ASSERT_EQ(cl_eof(b, 2000), 1);
    ASSERT_LT(now_ms() - t0, 1000);
    cl_close(a);
    cl_close(b);
    ASSERT_EQ(fx_stop(fx).loop_close_rc, 0);
}

// ---- issue 15 D14: version, path escapes, silent sockets ---------------------------------------

/* HTTP versions other than 1.0 / 1.1 get 505 and the connection closes; path parameters
 * with a NUL escape or a malformed one get 400 (they used to reach the handler cut at the
 * NUL: conv1%00junk answered for conv1); good escapes still decode. */
TEST(http_version_and_path_escapes)
{
    struct api_opts o;
    opts_test(&o);
    struct fx *fx = fx_new(&o);
    ASSERT(fx);
    static const struct {
        const char *req;
        int status;
        const char *body;
    } CASES[] = {
        {"GET /v1/echo HTTP/9.9\r\n\r\n", 505, "HTTP/9.9 is not supported"},
        {"GET /v1/echo HTTP/2.0\r\n\r\n", 505, "HTTP/2.0 is not supported"},
        {"GET /v1/echo HTTP/1.2\r\n\r\n", 505, "\"code\":\"http_version_not_supported\""},
        {"GET /v1/echo HTTP/0.9\r\n\r\n", 505, "HTTP/0.9"},
        {"GET /v1/layers/conv1%00junk/spectrum HTTP/1.1\r\n\r\n", 400, "conv1%00junk"},
        {"GET /v1/layers/conv1%zz/spectrum HTTP/1.1\r\n\r\n", 400, "percent-encoding"},
        {"GET /v1/layers/conv1%4/spectrum HTTP/1.1\r\n\r\n", 400, "percent-encoding"},
        {"GET /v1/layers/conv%31/spectrum HTTP/1.1\r\n\r\n", 200, "\"params\":[\"conv1\"]"},
        {"GET /v1/echo HTTP/1.0\r\n\r\n", 200, "\"path\":\"/v1/echo\""},
    };
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        struct cl *c = cl_open(fx->port);
        ASSERT(c);
        struct reply r;
        ASSERT_EQ(roundtrip(c, CASES[i].req, &r), 0);
        if (r.status != CASES[i].status || !strstr(r.body, CASES[i].body))
            TEST_FAIL_("%s: got %d %s, want %d with %s", CASES[i].req, r.status, r.body,
                       CASES[i].status, CASES[i].body);
        if (CASES[i].status >= 400) ASSERT_EQ(cl_eof(c, 2000), 1);
        cl_close(c);
    }
    ASSERT_EQ(fx_stop(fx).loop_close_rc, 0);
}

/* max_conns silent sockets hold their slots only for the header timeout (from accept), not
 * the idle timeout: a new client is served again once it has passed. */
TEST(silent_sockets_release_slots_after_the_header_timeout)
{
    struct api_opts o;
    opts_test(&o);
    o.limits.max_conns = 8;
    o.limits.header_timeout_ms = 300;
    o.limits.idle_timeout_ms = 30000;
    struct fx *fx = fx_new(&o);
    ASSERT(fx);
    int fds[8];
    double t0 = now_ms();
    for (int i = 0; i < 8; i++) ASSERT_GE(fds[i] = raw_connect(fx->port), 0);
    sleep_ms(100);
    struct cl *c = cl_open(fx->port);
    ASSERT(c);
    struct reply r;
    ASSERT_EQ(roundtrip(c, GET_ECHO, &r), 0);
    ASSERT_EQ(r.status, 503); // the cap is full of silent sockets
    cl_close(c);
    // Each silent socket is closed by the server after about 300 ms.
    for (int i = 0; i < 8; i++) {
        struct cl q = {.fd = fds[i]};
        ASSERT_EQ(cl_eof(&q, 3000), 1);
        close(fds[i]);
    }
    ASSERT_LT(now_ms() - t0, 3000);
    c = cl_open(fx->port);
    ASSERT(c);
    ASSERT_EQ(roundtrip(c, GET_ECHO, &r), 0);
    ASSERT_EQ(r.status, 200);
    cl_close(c);
    ASSERT_EQ(fx_stop(fx).loop_close_rc, 0);
}

// ---- connection cap --------------------------------------------------------------------------

#define N_IDLE 500
#define CAP 64

TEST(conn_cap_500_idle)
{
    struct rlimit rl;
    ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < 4096) {
        rl.rlim_cur = rl.rlim_max < 4096 ? rl.rlim_max : 4096;
        ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
    ASSERT_GE(rl.rlim_cur, 2 * N_IDLE + 64);
    struct api_opts o;
    opts_test(&o);
    o.limits.max_conns = CAP;
    struct fx *fx = fx_new(&o);
    ASSERT(fx);
    static int fds[N_IDLE];
    static struct pollfd pf[N_IDLE];
    for (int i = 0; i < N_IDLE; i++) {
        fds[i] = raw_connect(fx->port);
        ASSERT_GE(fds[i], 0);
    }
    // Wait until every connection beyond the cap has been answered (503) or closed.
    int n_ready = 0;
    for (double t0 = now_ms(); now_ms() - t0 < 5000;) {
        for (int i = 0; i < N_IDLE; i++) pf[i] = (struct pollfd){.fd = fds[i], .events = POLLIN};
        n_ready = poll(pf, N_IDLE, 0);
        if (n_ready >= N_IDLE - CAP) break;
        sleep_ms(20);
    }
    sleep_ms(100);
    for (int i = 0; i < N_IDLE; i++) pf[i] = (struct pollfd){.fd = fds[i], .events = POLLIN};
    n_ready = poll(pf, N_IDLE, 0);
    ASSERT_EQ(n_ready, N_IDLE - CAP);
    int n503 = 0, n_closed = 0, served[CAP], n_served = 0;
    for (int i = 0; i < N_IDLE; i++) {
        if (!(pf[i].revents & (POLLIN | POLLHUP | POLLERR))) {
            served[n_served++] = fds[i];
            continue;
        }
        char b[512];
        ssize_t n = recv(fds[i], b, sizeof b - 1, MSG_DONTWAIT);
        if (n > 0) {
            b[n] = '\0';
            if (strncmp(b, "HTTP/1.1 503 Service Unavailable\r\n", 34) == 0 &&
                strstr(b, "too many connections (limit 64)"))
                n503++;
        } else if (n == 0 || errno == ECONNRESET) {
            n_closed++;
        }
    }
    ASSERT_EQ(n503 + n_closed, N_IDLE - CAP);
    ASSERT_GT(n503, 0);
    ASSERT_EQ(n_served, CAP);
    // A served connection still answers while the cap is full.
    struct cl *c = calloc(1, sizeof *c);
    c->fd = served[0];
    struct reply r;
    ASSERT_EQ(roundtrip(c, "GET /v1/stats HTTP/1.1\r\n\r\n", &r), 0);
    ASSERT_EQ(r.status, 200);
    ASSERT_CONTAINS(r.body, "conns_current 64\n");
    ASSERT_CONTAINS(r.body, "conns_rejected 436\n");
    free(c);
    // Free some slots: a new client gets served once the server has seen them go.
    for (int i = 0; i < 10; i++) close(served[i]);
    int ok = 0;
    for (double t0 = now_ms(); !ok && now_ms() - t0 < 3000;) {
        struct cl *n = cl_open(fx->port);
        if (n && roundtrip(n, GET_ECHO, &r) == 0 && r.status == 200) ok = 1;
        cl_close(n);
        if (!ok) sleep_ms(50);
    }
    ASSERT(ok);
    for (int i = 0; i < N_IDLE; i++) {
        int keep = 0;
        for (int k = 0; k < 10; k++) keep |= fds[i] == served[k];
        if (!keep) close(fds[i]);
    }
    ASSERT_EQ(fx_stop(fx).loop_close_rc, 0);
}

// ---- auth ------------------------------------------------------------------------------------

TEST(auth_bearer_token)
{
    struct api_opts o;
    opts_test(&o);
    o.token = "s3cret-token";
    struct fx *fx = fx_new(&o);
    ASSERT(fx);
    static const struct {
        const char *auth;
        int status;
    } T[] = {
        {"", 401},
        {"Authorization: Bearer wrong\r\n", 401},
        {"Authorization: Bearer s3cret-toke\r\n", 401},
        {"Authorization: Bearer s3cret-token2\r\n", 401},
        {"Authorization: Basic s3cret-token\r\n", 401},
        {"Authorization: Bearer s3cret-token\r\n", 200},
        {"authorization: bearer s3cret-token\r\n", 200},
    };
    struct cl *c = cl_open(fx->port);
    ASSERT(c);
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        char req[512];
        snprintf(req, sizeof req,
                 "PATCH /v1/thing HTTP/1.1\r\n%sContent-Type: application/json\r\n"
                 "Content-Length: 7\r\n\r\n{\"n\":1}",
                 T[i].auth);
        struct reply r;
        ASSERT_EQ(roundtrip(c, req, &r), 0);
        if (r.status != T[i].status) TEST_FAIL_("row %zu: %d %s", i, r.status, r.body);
        if (r.status == 401) {
            char h[64];
            ASSERT_STR_EQ(reply_header(&r, "WWW-Authenticate", h, sizeof h), "Bearer");
            ASSERT_CONTAINS(r.body, "\"code\":\"unauthorized\"");
        }
    }
    struct reply r;
    ASSERT_EQ(roundtrip(c, GET_ECHO, &r), 0); // reads need no token
    ASSERT_EQ(r.status, 200);
    ASSERT_EQ(roundtrip(c, "POST /v1/inline HTTP/1.1\r\n\r\n", &r), 0); // not flagged mutating
    ASSERT_EQ(r.status, 200);
    FX_END(fx, c);
}

// ---- async -----------------------------------------------------------------------------------

TEST(async_completion)
{
    FX_BEGIN(fx, c);
    struct reply r;
    double t0 = now_ms();
    ASSERT_EQ(roundtrip(c, "POST /v1/slow HTTP/1.1\r\n\r\n", &r), 0);
    ASSERT_GE(now_ms() - t0, 45);
    ASSERT_EQ(r.status, 200);
    ASSERT_STR_EQ(r.body, "{\"slow\":true}");
    ASSERT_EQ(roundtrip(c, GET_ECHO, &r), 0); // keep-alive continues after an async answer
    ASSERT_EQ(r.status, 200);
    ASSERT_EQ(roundtrip(c, "POST /v1/inline HTTP/1.1\r\n\r\n", &r), 0);
    ASSERT_EQ(r.status, 200);
    ASSERT_STR_EQ(r.body, "inline\n");
    FX_END(fx, c);
}

TEST(async_client_gone)
{
    struct fx *fx = fx_open();
    ASSERT(fx);
    for (int i = 0; i < 3; i++) {
        struct cl *c = cl_open(fx->port);
        ASSERT(c);
        // The handler answers after 1 s, far after the close (at 100 ms a loaded machine
        // delivered the timer before the EOF now and then: a flaky complete_ok).
        ASSERT_EQ(cl_sends(c, "POST /v1/slow?ms=1000 HTTP/1.1\r\n\r\n"), 0);
        if (i == 2) { // a reset rather than a FIN
            struct linger lg = {1, 0};
            setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        sleep_ms(20);
        cl_close(c);
    }
    for (double t0 = now_ms(); now_ms() - t0 < 6000;) {
        if (fx_counter(fx, &fx->n_complete_gone) == 3) break;
        sleep_ms(10);
    }
    ASSERT_EQ(fx_counter(fx, &fx->n_complete_gone), 3);
    ASSERT_EQ(fx_counter(fx, &fx->n_complete_ok), 0);
    struct cl *c = cl_open(fx->port);
    ASSERT(c);
    struct reply r;
    ASSERT_EQ(roundtrip(c, "GET /v1/stats HTTP/1.1\r\n\r\n", &r), 0);
    ASSERT_EQ(r.status, 200);
    ASSERT_CONTAINS(r.body, "conns_current 1\n");
    FX_END(fx, c);
}

// ---- counters and shutdown ------------------------------------------------------------------

TEST(stats_counters)
{
    FX_BEGIN(fx, c);
    struct reply r;
    ASSERT_EQ(roundtrip(c, GET_ECHO, &r), 0);
    ASSERT_EQ(roundtrip(c, "GET /nope HTTP/1.1\r\n\r\n", &r), 0);
    ASSERT_EQ(roundtrip(c, "GET /nope HTTP/1.1\r\n\r\n", &r), 0);
    ASSERT_EQ(roundtrip(c, "GET /v1/stats HTTP/1.1\r\n\r\n", &r), 0);
    ASSERT_STR_EQ(r.body, "requests_total 3\nclass_2xx 1\nclass_4xx 2\nclass_5xx 0\n"
                          "conns_current 1\nconns_accepted 1\nconns_rejected 0\n");
    char h[64];
    ASSERT_STR_EQ(reply_header(&r, "Content-Type", h, sizeof h), "text/plain; version=0.0.4");
    FX_END(fx, c);
}

TEST(shutdown_with_open_connections_and_pending_async)
{
    struct fx *fx = fx_open();
    ASSERT(fx);
    struct cl *idle = cl_open(fx->port), *mid = cl_open(fx->port), *held = cl_open(fx->port);
    ASSERT(idle && mid && held);
    struct reply r;
    ASSERT_EQ(roundtrip(idle, GET_ECHO, &r), 0);
    ASSERT_EQ(cl_sends(mid, "GET /v1/echo HTTP/1.1\r\nHo"), 0);
    ASSERT_EQ(cl_sends(held, "POST /v1/slow?hold=1 HTTP/1.1\r\n\r\n"), 0);
    sleep_ms(100); // let the server see all of it
    struct fx_result res = fx_stop(fx);
    ASSERT_EQ(res.loop_close_rc, 0);
    ASSERT_EQ(res.held_rc, -ENOTCONN);
    ASSERT_EQ(cl_eof(idle, 1000), 1);
    ASSERT_EQ(cl_eof(mid, 1000), 1);
    ASSERT_EQ(cl_eof(held, 1000), 1);
    cl_close(idle);
    cl_close(mid);
    cl_close(held);
}

TEST_MAIN()
