/* tests/fuzz/fuzz_http.c: HTTP request parsing and routing (api/).
 *
 * One server on the harness's own libuv loop, on an ephemeral loopback port, with a route
 * table that exercises every request helper (path parameters, query decoding, headers, JSON
 * bodies, an inline deferred answer). Input: raw bytes a client sends on one connection,
 * which then half-closes. The harness runs the loop until the server has closed the
 * connection. Properties: never a crash, leak, hang or undefined behaviour; every answer
 * starts with an HTTP/1.1 status line; the connection count returns to zero. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

#include "api/api.h"
#include "tests/fuzz/fuzz_common.h"

static int h_echo(struct api_req *req, struct api_resp *resp, void *ctx)
{
    (void)ctx;
    char v[64];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "path", req->path);
    for (size_t i = 0; i < req->n_params; i++) cJSON_AddStringToObject(o, "p", req->params[i]);
    if (api_req_query(req, "points", v, sizeof v) >= 0) cJSON_AddStringToObject(o, "q", v);
    const char *h = api_req_header(req, "x-test");
    if (h) cJSON_AddStringToObject(o, "h", h);
    if (api_resp_header(resp, "X-Echo", req->query) < 0) api_resp_header(resp, "X-Echo", "bad");
    api_resp_json(resp, o);
    return 200;
}

static int h_json(struct api_req *req, struct api_resp *resp, void *ctx)
{
    (void)ctx;
    cJSON *body = NULL;
    int rc = api_req_json(req, &body, resp);
    if (rc) return rc;
    if (!cJSON_IsObject(body)) {
        cJSON_Delete(body);
        return api_resp_error(resp, 422, NULL, "not an object");
    }
    api_resp_json(resp, body);
    return 200;
}

static int h_inline(struct api_req *req, struct api_resp *resp, void *ctx)
{
    (void)req;
    (void)ctx;
    struct api_async *a = api_resp_defer(resp);
    if (!a) return api_resp_error(resp, 503, NULL, "no handle");
    api_resp_text(api_async_resp(a), NULL, "done", 4);
    api_async_complete(a, 200);
    return API_ASYNC;
}

static const struct api_route ROUTES[] = {
    {API_GET, "/v1/echo", h_echo, 0},
    {API_GET, "/v1/layers/{}/spectrum", h_echo, 0},
    {API_PATCH, "/v1/policy", h_json, API_MUTATING},
    {API_POST, "/v1/inline", h_inline, 0},
};

static uv_loop_t loop;
static struct api_server *srv;
static int port;

static void setup(void)
{
    char err[256];
    struct api_opts o;
    FUZZ_CHECK(uv_loop_init(&loop) == 0);
    api_opts_default(&o);
    o.listen = "127.0.0.1:0";
    o.token = "t0ken";
    o.limits.max_body_bytes = 4096;
    o.limits.max_header_bytes = 2048;
    o.limits.max_headers = 16;
    FUZZ_CHECK(api_server_start(&srv, &loop, &o, ROUTES, sizeof ROUTES / sizeof ROUTES[0], NULL,
                                err, sizeof err) == 0);
    port = api_server_port(srv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!srv) setup();
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    FUZZ_CHECK(fd >= 0);
    /* Close with a reset, not a FIN: a fast run opens ~10k connections a second, and client
     * sockets left in TIME_WAIT would use up the loopback ephemeral ports within seconds
     * (connect then fails with EADDRNOTAVAIL). */
    const struct linger lg = {1, 0};
    FUZZ_CHECK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    // The backlog accepts it once the server has caught up with its closes: let the loop run.
    int cr = -1;
    for (int tries = 0; tries < 1000 && (cr = connect(fd, (struct sockaddr *)&a, sizeof a)) != 0;
         tries++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        close(fd);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        FUZZ_CHECK(fd >= 0);
        FUZZ_CHECK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
        usleep(1000);
    }
    FUZZ_CHECK(cr == 0);
    FUZZ_CHECK(fcntl(fd, F_SETFL, O_NONBLOCK) == 0);
    size_t sent = 0, got = 0;
    int shut = 0, eof = 0;
    char first[16] = "";
    for (int it = 0; it < 200000 && !eof; it++) {
        if (sent < size) {
            ssize_t w = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
            if (w > 0)
                sent += (size_t)w;
            else if (w < 0 && errno != EAGAIN)
                sent = size; // the server closed on us
        }
        if (sent == size && !shut) shut = shutdown(fd, SHUT_WR) == 0 || 1;
        uv_run(&loop, UV_RUN_NOWAIT);
        char b[4096];
        ssize_t r = recv(fd, b, sizeof b, 0);
        if (r > 0) {
            if (got < sizeof first - 1) {
                size_t k = sizeof first - 1 - got < (size_t)r ? sizeof first - 1 - got : (size_t)r;
                memcpy(first + got, b, k);
            }
            got += (size_t)r;
        } else if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
            eof = 1;
        } else {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            poll(&p, 1, it < 1000 ? 0 : 1);
        }
    }
    FUZZ_CHECK(eof); // the server always ends the connection once the client has
    FUZZ_CHECK(got == 0 || strncmp(first, "HTTP/1.1 ", got < 9 ? got : 9) == 0);
    close(fd);
    // Let the server free the connection before the next input.
    struct api_stats st;
    for (int it = 0; it < 100000; it++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        api_server_stats(srv, &st);
        if (st.conns_current == 0) break;
    }
    FUZZ_CHECK(st.conns_current == 0);
    return 0;
}
