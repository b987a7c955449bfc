/* api/conn.c: one HTTP/1.1 connection: reading, parsing with http_parser, limits, routing,
 * dispatch to handlers, deferred (async) responses, writing, timeouts and closing.
 *
 * Design. Bytes arrive in `rbuf` and are fed to http_parser, which calls back with pieces of
 * the URL, header names and values (copied, NUL-terminated, into `arena`) and of the body
 * (copied into `body`). The parser is paused twice per request: when the head is complete
 * (so the exact head size is known and Content-Length can be refused with 413 before any
 * body is read) and when the message is complete (so requests are handled one at a time, in
 * arrival order). A handler that defers its answer makes the connection `busy`: later
 * (pipelined) bytes wait in rbuf, and reading continues only while rbuf has room, so a
 * client that disconnects is noticed and the pending handle becomes an orphan.
 *
 * Errors of the request itself (400 parse errors, 408, 413, 431, 503 on OOM) are answered
 * with `Connection: close`; the connection then parses nothing more, half-closes after the
 * last write and drains (discards) input until the client closes or a linger timer fires,
 * so the client reads the error instead of a reset. A parse error is sticky.
 *
 * Invariants. Everything runs on the loop thread. A connection is freed only when both its
 * handles (tcp, timer) have closed; write and shutdown callbacks (also when cancelled) run
 * before those close callbacks, so they may touch the connection. After conn_close nothing
 * is parsed or written; every path re-checks `closing` after calling out (handlers may call
 * api_server_stop). One timer per connection serves as idle, request, or linger timeout. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/api_internal.h"

/* A response in flight: the head and body buffers stay alive until the write callback. */
struct api__wreq {
    uv_write_t w;
    struct api__conn *c;
    char *head;
    char *body;
    int body_cjson;
};

static void conn_process(struct api__conn *c);
static void conn_stream_start(struct api__conn *c);

/* One response sent (or a stream opened), for the counters. */
static void conn_count(struct api__conn *c, int status)
{
    c->srv->stats.requests_total++;
    if (status >= 100 && status <= 599) {
        c->srv->stats.requests_by_class[status / 100]++;
        c->srv->stats.requests_by_code[status]++;
    }
}

// ---- small helpers ----------------------------------------------------------------------

static void conn_timer(struct api__conn *c, uint64_t ms);

static uint64_t linger_ms(const struct api__conn *c)
{
    uint64_t t = c->srv->lim.header_timeout_ms;
    return t < API__LINGER_MAX_MS ? t : API__LINGER_MAX_MS;
}

static const char *conn_header(const struct api__conn *c, const char *name)
{
    for (size_t i = 0; i < c->n_hdrs; i++)
        if (strcasecmp(c->arena + c->hdrs[i].name_off, name) == 0)
            return c->arena + c->hdrs[i].val_off;
    return NULL;
}

/* Bytes of the head area of the arena: URL, names and values, each NUL-terminated. */
static size_t head_area(const struct api_limits *l)
{
    return l->max_header_bytes + 2 * l->max_headers + 2;
}

/* Append to the arena's head area; on overflow fail the parse with 431. */
static int arena_put(struct api__conn *c, const char *d, size_t n)
{
    if (c->arena_len + n > head_area(&c->srv->lim)) {
        c->err_status = 431;
        snprintf(c->errmsg, sizeof c->errmsg, "request head exceeds %zu bytes",
                 c->srv->lim.max_header_bytes);
        return -1;
    }
    memcpy(c->arena + c->arena_len, d, n);
    c->arena_len += n;
    return 0;
}

/* Terminate the string being built: trims the optional whitespace after a header value. */
static int arena_end(struct api__conn *c)
{
    if (c->last_cb == 2) {
        struct api__hdr *h = &c->hdrs[c->n_hdrs - 1];
        while (h->val_len && (c->arena[h->val_off + h->val_len - 1] == ' ' ||
                              c->arena[h->val_off + h->val_len - 1] == '\t')) {
            h->val_len--;
            c->arena_len--;
        }
    }
    return arena_put(c, "", 1);
}

// ---- http_parser callbacks ------------------------------------------------------------------

static int on_message_begin(http_parser *p)
{
    struct api__conn *c = p->data;
    c->in_request = 1;
    c->arena_len = 0;
    c->url_off = c->url_len = 0;
    c->n_hdrs = 0;
    c->last_cb = 0;
    c->body_len = 0;
    c->is_head = 0;
    c->http10 = 0;
    conn_timer(c, c->srv->lim.header_timeout_ms);
    return c->closing ? -1 : 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
    struct api__conn *c = p->data;
    c->url_len += n;
    return arena_put(c, at, n);
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    struct api__conn *c = p->data;
    if (c->last_cb != 1) {
        if (arena_end(c) < 0) return -1; // ends the URL or the previous value
        if (c->n_hdrs == c->srv->lim.max_headers) {
            c->err_status = 431;
            snprintf(c->errmsg, sizeof c->errmsg, "more than %zu header fields",
                     c->srv->lim.max_headers);
            return -1;
        }
        struct api__hdr *h = &c->hdrs[c->n_hdrs++];
        h->name_off = c->arena_len;
        h->name_len = 0;
        h->val_off = h->val_len = 0;
        c->last_cb = 1;
    }
    c->hdrs[c->n_hdrs - 1].name_len += n;
    return arena_put(c, at, n);
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    struct api__conn *c = p->data;
    if (c->last_cb != 2) {
        if (arena_end(c) < 0) return -1; // ends the name
        c->hdrs[c->n_hdrs - 1].val_off = c->arena_len;
        c->last_cb = 2;
    }
    c->hdrs[c->n_hdrs - 1].val_len += n;
    return arena_put(c, at, n);
}

static int on_headers_complete(http_parser *p)
{
    struct api__conn *c = p->data;
    if (arena_end(c) < 0) return -1;
    c->head_done = 1;
    c->keep_alive = http_should_keep_alive(p) != 0;
    c->http10 = p->http_major == 1 && p->http_minor == 0;
    c->is_head = p->method == HTTP_HEAD;
    c->paused_at = 1;
    http_parser_pause(p, 1);
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    struct api__conn *c = p->data;
    size_t max = c->srv->lim.max_body_bytes;
    if (n > max - c->body_len) {
        c->err_status = 413;
        snprintf(c->errmsg, sizeof c->errmsg, "request body exceeds %zu bytes", max);
        return -1;
    }
    if (c->body_len + n > c->body_cap) { // chunked: grow geometrically up to the cap
        size_t cap = c->body_cap ? 2 * c->body_cap : 1024;
        if (cap < c->body_len + n) cap = c->body_len + n;
        if (cap > max) cap = max;
        char *b = realloc(c->body, cap);
        if (!b) {
            c->err_status = 503;
            snprintf(c->errmsg, sizeof c->errmsg, "out of memory for the request body");
            return -1;
        }
        c->body = b;
        c->body_cap = cap;
    }
    memcpy(c->body + c->body_len, at, n);
    c->body_len += n;
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct api__conn *c = p->data;
    c->paused_at = 2;
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings SETTINGS = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

// ---- closing ------------------------------------------------------------------------------

static void conn_release(struct api__conn *c)
{
    if (--c->n_open_handles > 0) return;
    struct api_server *srv = c->srv;
    if (c->stream) { // the embedder forgets the stream here, never during one of its calls
        c->stream->on_close(c->stream, c->stream->ud);
        free(c->stream);
    }
    api__resp_free(&c->resp);
    free(c->body);
    free(c->hdrs);
    free(c->arena);
    free(c->rbuf);
    free(c);
    api__server_release(srv);
}

static void on_tcp_close(uv_handle_t *h)
{
    conn_release(container_of((uv_tcp_t *)h, struct api__conn, tcp));
}

static void on_timer_close(uv_handle_t *h)
{
    conn_release(container_of((uv_timer_t *)h, struct api__conn, timer));
}

void api__conn_close(struct api__conn *c)
{
    if (c->closing) return;
    struct api_server *srv = c->srv;
    c->closing = 1;
    c->reading = 0;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
    if (c->rejected)
        srv->n_rejecting--;
    else if (c->counted)
        srv->stats.conns_current--;
    if (c->stream) c->stream->conn = NULL; // writes fail from now on; on_close comes later
    if (c->pending) {                      // the daemon still holds the handle: make it an orphan
        c->pending->conn = NULL;
        c->pending = NULL;
    }
    uv_close((uv_handle_t *)&c->tcp, on_tcp_close);
    if (c->timer_inited)
        uv_close((uv_handle_t *)&c->timer, on_timer_close);
    else
        c->n_open_handles--; // only tcp will call back
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct api__conn *c = container_of(req, struct api__conn, shutdown_req);
    if (c->closing) return;
    if (status < 0 || c->eof) api__conn_close(c);
    // Otherwise keep draining input until EOF or the linger timer.
}

/* All responses of a closing connection are written: half-close, then linger. */
static void conn_finish(struct api__conn *c)
{
    if (c->shut || c->closing) return;
    c->shut = 1;
    if (c->eof) {
        api__conn_close(c);
        return;
    }
    int rc = uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown);
    if (rc < 0) api__conn_close(c);
}

// ---- timers -------------------------------------------------------------------------------

static void conn_fail(struct api__conn *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void on_timer(uv_timer_t *t)
{
    struct api__conn *c = container_of(t, struct api__conn, timer);
    if (c->closing) return;
    if (c->want_close || c->busy)
        api__conn_close(c); // linger over (or a stuck closing write)
    else if (c->in_request)
        conn_fail(c, 408, "request not complete within %llu ms",
                  (unsigned long long)c->srv->lim.header_timeout_ms);
    else
        api__conn_close(c); // idle keep-alive timeout: close silently
}

static void conn_timer(struct api__conn *c, uint64_t ms)
{
    if (c->closing) return;
    if (uv_timer_start(&c->timer, on_timer, ms, 0) < 0) api__conn_close(c);
}

static void conn_timer_stop(struct api__conn *c)
{
    if (!c->closing && uv_timer_stop(&c->timer) < 0) api__conn_close(c);
}

// ---- reading ------------------------------------------------------------------------------

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct api__conn *c = container_of((uv_tcp_t *)h, struct api__conn, tcp);
    (void)hint;
    if (c->discard || !c->rbuf) {
        *buf = uv_buf_init(c->srv->discard, sizeof c->srv->discard);
        return;
    }
    if (c->rpos > 0) { // compact: parsed bytes are never referenced again
        memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
        c->rlen -= c->rpos;
        c->rpos = 0;
    }
    *buf = uv_buf_init(c->rbuf + c->rlen, (unsigned)(API__RBUF_SIZE - c->rlen));
}

static void on_eof(struct api__conn *c)
{
    c->eof = 1;
    c->reading = 0; // libuv stops reading at EOF
    if (c->busy || c->streaming || c->n_writes == 0) {
        api__conn_close(c); // nothing more to answer (an async handle becomes an orphan)
    } else {
        c->want_close = 1; // close once the queued responses are written; a partial
        c->discard = 1;    // request is abandoned
    }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct api__conn *c = container_of((uv_tcp_t *)s, struct api__conn, tcp);
    if (c->closing) return;
    if (nread > 0) {
        if (buf->base == c->srv->discard) return;
        c->rlen += (size_t)nread;
        conn_process(c);
    } else if (nread == UV_EOF) {
        on_eof(c);
    } else if (nread < 0) {
        api__conn_close(c); // ECONNRESET and friends; UV_ENOBUFS cannot happen (see below)
    }
}

/* Read while there is room and a reason to: input is parsed, buffered behind an async
 * request (which also reveals a client that hangs up), or drained before closing. */
static void conn_update_reading(struct api__conn *c)
{
    if (c->closing) return;
    int room = c->discard || (c->rbuf && c->rlen - c->rpos < API__RBUF_SIZE);
    int want = !c->eof && !c->wq_full && room;
    if (want && !c->reading) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0) {
            api__conn_close(c);
            return;
        }
        c->reading = 1;
    } else if (!want && c->reading) {
        if (uv_read_stop((uv_stream_t *)&c->tcp) < 0) {
            api__conn_close(c);
            return;
        }
        c->reading = 0;
    }
}

// ---- writing ------------------------------------------------------------------------------

/* Frees a write request with its head and body (the body by the allocator that made it). */
static void wreq_free(struct api__wreq *wr)
{
    free(wr->head);
    if (wr->body_cjson)
        cJSON_free(wr->body);
    else
        free(wr->body);
    free(wr);
}

static void on_write(uv_write_t *w, int status)
{
    struct api__wreq *wr = container_of(w, struct api__wreq, w);
    struct api__conn *c = wr->c;
    wreq_free(wr);
    c->n_writes--;
    if (c->closing) return;
    if (status < 0) {
        api__conn_close(c);
        return;
    }
    if (c->wq_full && uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) <= API__WQ_HIGH / 2) {
        c->wq_full = 0;
        conn_process(c);
    }
    if (c->want_close && c->n_writes == 0) conn_finish(c);
}

/* Queue `status` with the body and headers of `r` (moved out; r is reset). With `close`,
 * the connection parses nothing more and closes after this response. */
static void conn_respond(struct api__conn *c, int status, struct api_resp *r, int close)
{
    if (c->closing) {
        api__resp_free(r);
        api__resp_init(r);
        return;
    }
    if (r->forced_status) {
        status = r->forced_status;
        api__resp_init(r); // drops the extra headers too; the body was freed by the helper
        api_resp_error(r, status, NULL, "out of memory");
    }
    if (status >= 400 && !r->body)
        api_resp_error(r, status, NULL, "%s", http_status_str((enum http_status)status));
    if (status < 200 || status == 204 || status == 304) api__resp_free(r);

    size_t head_len = 0;
    char *head = api__resp_head(r, status, r->body_len, close, c->http10 && !close, &head_len);
    struct api__wreq *wr = head ? malloc(sizeof *wr) : NULL;
    if (!wr) {
        free(head);
        api__resp_free(r);
        api__resp_init(r);
        api__conn_close(c);
        return;
    }
    wr->c = c;
    wr->head = head;
    wr->body = r->body;
    wr->body_cjson = r->body_cjson;
    uv_buf_t bufs[2] = {uv_buf_init(head, (unsigned)head_len),
                        uv_buf_init(r->body, (unsigned)r->body_len)};
    unsigned nbufs = (r->body_len && !c->is_head) ? 2 : 1;
    api__resp_init(r); // the body now belongs to the write request
    int rc = uv_write(&wr->w, (uv_stream_t *)&c->tcp, bufs, nbufs, on_write);
    if (rc < 0) {
        wreq_free(wr);
        api__conn_close(c);
        return;
    }
    c->n_writes++;
    conn_count(c, status);
    if (close) {
        c->want_close = 1;
        c->discard = 1;
        conn_timer(c, linger_ms(c));
    } else {
        conn_timer(c, c->srv->lim.idle_timeout_ms);
    }
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > API__WQ_HIGH) c->wq_full = 1;
}

/* Answer an error with the standard body and close the connection afterwards. */
static void conn_fail(struct api__conn *c, int status, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct api_resp r;
    api__resp_init(&r);
    api_resp_error(&r, status, NULL, "%s", msg);
    if (status == 503) api_resp_header(&r, "Retry-After", "1");
    conn_respond(c, status, &r, 1);
    conn_update_reading(c);
}

static void write_continue(struct api__conn *c)
{
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    struct api__wreq *wr = malloc(sizeof *wr);
    if (!wr) {
        api__conn_close(c);
        return;
    }
    *wr = (struct api__wreq){.c = c};
    uv_buf_t b = uv_buf_init((char *)cont, sizeof cont - 1); // never written to by libuv
    if (uv_write(&wr->w, (uv_stream_t *)&c->tcp, &b, 1, on_write) < 0) {
        free(wr);
        api__conn_close(c);
        return;
    }
    c->n_writes++;
}

// ---- dispatch -----------------------------------------------------------------------------

/* Check a complete head: size, Content-Length against the body cap, Expect. 0 = go on. */
static int conn_head_checks(struct api__conn *c)
{
    const struct api_limits *l = &c->srv->lim;
    // http_parser takes any one-digit version; we speak HTTP/1.0 and HTTP/1.1 only.
    if (c->parser.http_major != 1 || c->parser.http_minor > 1) {
        conn_fail(c, 505, "HTTP/%u.%u is not supported (HTTP/1.0 and HTTP/1.1 are)",
                  c->parser.http_major, c->parser.http_minor);
        return -1;
    }
    if (c->head_bytes > l->max_header_bytes) {
        conn_fail(c, 431, "request head is %zu bytes; the limit is %zu", c->head_bytes,
                  l->max_header_bytes);
        return -1;
    }
    int chunked = (c->parser.flags & F_CHUNKED) != 0;
    if (!chunked && (c->parser.flags & F_CONTENTLENGTH)) {
        uint64_t cl = c->parser.content_length;
        if (cl > l->max_body_bytes) {
            conn_fail(c, 413, "request body of %llu bytes exceeds the limit of %zu bytes",
                      (unsigned long long)cl, l->max_body_bytes);
            return -1;
        }
        if (cl > 0) {
            c->body = malloc((size_t)cl);
            if (!c->body) {
                conn_fail(c, 503, "out of memory for a %llu-byte body", (unsigned long long)cl);
                return -1;
            }
            c->body_cap = (size_t)cl;
        }
    }
    const char *ex = conn_header(c, "Expect");
    if (ex && strcasecmp(ex, "100-continue") == 0 &&
        (chunked || ((c->parser.flags & F_CONTENTLENGTH) && c->parser.content_length > 0)))
        write_continue(c);
    return 0;
}

static int route_auth_ok(const struct api__conn *c)
{
    const struct api_server *srv = c->srv;
    const char *a = conn_header(c, "Authorization");
    if (!a || strncasecmp(a, "Bearer ", 7) != 0) return 0;
    a += 7;
    while (*a == ' ') a++;
    return api__token_eq(a, strlen(a), srv->token, srv->token_len);
}

/* A whole request is in: route it, check auth and Content-Type, call the handler, and queue
 * its answer (or go busy when it defers). */
static void conn_dispatch(struct api__conn *c)
{
    struct api_server *srv = c->srv;
    struct api_req *req = &c->req;
    int close = !c->keep_alive || c->parser.upgrade || srv->stopping;
    unsigned hm = c->parser.method;

    c->in_request = 0;
    c->head_done = 0;
    c->head_bytes = 0;
    memset(req, 0, sizeof *req);
    req->conn_ = c;
    req->method = (enum api_method)api__method_from_http(hm);
    req->method_str = http_method_str((enum http_method)hm);

    // Split the URL in place: the byte after the path ('?', '#' or NUL) becomes a NUL.
    char *url = c->arena + c->url_off;
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(url, c->url_len, hm == HTTP_CONNECT, &u) != 0 ||
        !(u.field_set & (1u << UF_PATH))) {
        conn_fail(c, 400, "malformed request target");
        goto done;
    }
    size_t poff = u.field_data[UF_PATH].off, plen = u.field_data[UF_PATH].len;
    req->query = "";
    if (u.field_set & (1u << UF_QUERY)) {
        size_t qoff = u.field_data[UF_QUERY].off, qlen = u.field_data[UF_QUERY].len;
        url[qoff + qlen] = '\0';
        req->query = url + qoff;
    }
    url[poff + plen] = '\0';
    req->path = url + poff;
    req->body = c->body_len ? c->body : NULL;
    req->body_len = c->body_len;

    // Route: the first row whose pattern and method match (HEAD also runs a GET route, without
    // sending the body); collect the other methods for Allow.
    const struct api_route *route = NULL;
    const char *starts[API_MAX_PARAMS];
    size_t lens[API_MAX_PARAMS], n_params = 0;
    char allow[128] = "";
    size_t alen = 0;
    int path_known = 0;
    for (size_t i = 0; i < srv->n_routes && !route; i++) {
        const struct api_route *r = &srv->routes[i];
        const char *s2[API_MAX_PARAMS];
        size_t l2[API_MAX_PARAMS], n2;
        if (!api__route_match(r->pattern, req->path, s2, l2, &n2)) continue;
        path_known = 1;
        if (req->method != 0 && ((int)r->method == (int)req->method ||
                                 (req->method == API_HEAD && r->method == API_GET))) {
            route = r;
            memcpy(starts, s2, sizeof s2);
            memcpy(lens, l2, sizeof l2);
            n_params = n2;
        } else {
            const char *mn = api__method_name(r->method);
            if (!strstr(allow, mn) && alen + strlen(mn) + 3 < sizeof allow)
                alen += (size_t)snprintf(allow + alen, sizeof allow - alen, "%s%s",
                                         alen ? ", " : "", mn);
        }
    }
    struct api_resp *resp = &c->resp;
    int st;
    if (!route && !path_known) {
        st = api_resp_error(resp, 404, NULL, "no route for %s %s", req->method_str, req->path);
    } else if (!route) {
        api_resp_header(resp, "Allow", allow);
        st = api_resp_error(resp, 405, NULL, "method %s not allowed for %s (allowed: %s)",
                            req->method_str, req->path, allow);
    } else if (srv->token && (route->flags & API_MUTATING) && !route_auth_ok(c)) {
        api_resp_header(resp, "WWW-Authenticate", "Bearer");
        st = api_resp_error(resp, 401, NULL, "%s %s needs 'Authorization: Bearer <token>'",
                            req->method_str, req->path);
    } else if ((req->method == API_POST || req->method == API_PATCH || req->method == API_PUT) &&
               req->body_len > 0 && !api__ctype_is_json(conn_header(c, "Content-Type"))) {
        const char *ct = conn_header(c, "Content-Type");
        st = api_resp_error(resp, 415, NULL, "Content-Type must be application/json, got '%s'",
                            ct ? ct : "(none)");
    } else {
        // Path parameters: percent-decoded copies after the head area of the arena. A
        // malformed escape or one that decodes to NUL (which would cut the name short) is
        // refused, not passed on.
        size_t off = head_area(&srv->lim);
        for (size_t i = 0; i < n_params; i++) {
            if (!api__pct_valid(starts[i], lens[i])) {
                conn_fail(c, 400,
                          "path segment '%.*s' is not valid percent-encoding (or "
                          "holds a NUL)",
                          (int)(lens[i] < 64 ? lens[i] : 64), starts[i]);
                goto done;
            }
            req->params[i] = c->arena + off;
            off += api__pct_decode(c->arena + off, starts[i], lens[i], 0) + 1;
        }
        req->n_params = n_params;
        c->in_handler = 1;
        c->async_inline = 0;
        st = route->handler(req, resp, srv->ctx);
        c->in_handler = 0;
        if (c->closing) { // the handler stopped the server
            api__resp_free(resp);
            api__resp_init(resp);
            goto done;
        }
        if (c->stream && st == API_STREAM) {
            conn_stream_start(c);
            goto done;
        }
        if (c->stream) { // made a stream but answered normally: a handler bug; forget it
            free(c->stream);
            c->stream = NULL;
        }
        if (st == API_ASYNC && c->pending) {
            c->busy = 1;
            c->pending_close = close != 0;
            conn_timer_stop(c);
            goto done;
        }
        if (st == API_ASYNC && c->async_inline) goto done; // completed inside the handler
        if (c->pending) { // deferred but answered: a handler bug; its later completion is a no-op
            c->pending->conn = NULL;
            c->pending = NULL;
            api__resp_free(resp);
            api__resp_init(resp);
            st = api_resp_error(resp, 500, NULL, "handler deferred and also answered");
        } else if (st < 100 || st > 599) {
            api__resp_free(resp);
            api__resp_init(resp);
            st = api_resp_error(resp, 500, NULL, "handler returned invalid status %d", st);
        }
    }
    conn_respond(c, st, resp, close);
done:
    free(c->body); // the handler has copied what it needs (req is only valid during the call)
    c->body = NULL;
    c->body_len = c->body_cap = 0;
}

/* Parse buffered input, one request at a time, until it runs out or the connection must
 * wait (async handler, full write queue) or stop (closing response). Not re-entrant. */
static void conn_process(struct api__conn *c)
{
    if (c->in_process) return;
    c->in_process = 1;
    while (!c->closing && !c->busy && !c->want_close && !c->wq_full && c->rpos < c->rlen) {
        int was_head = !c->head_done;
        c->paused_at = 0;
        c->err_status = 0;
        size_t n = http_parser_execute(&c->parser, &SETTINGS, c->rbuf + c->rpos, c->rlen - c->rpos);
        c->rpos += n;
        if (was_head) c->head_bytes += n;
        if (c->closing) break;
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        if (e == HPE_PAUSED) {
            http_parser_pause(&c->parser, 0);
            if (c->paused_at == 1) {
                c->head_bytes += 1; // the head's final LF is consumed on resume
                conn_head_checks(c);
            } else if (c->paused_at == 2) {
                conn_dispatch(c);
            }
        } else if (e != HPE_OK) {
            if (c->err_status)
                conn_fail(c, c->err_status, "%s", c->errmsg);
            else if (e == HPE_HEADER_OVERFLOW)
                conn_fail(c, 431, "request head exceeds %zu bytes", c->srv->lim.max_header_bytes);
            else
                conn_fail(c, 400, "malformed request: %s", http_errno_description(e));
        } else if (!c->head_done && c->head_bytes > c->srv->lim.max_header_bytes) {
            conn_fail(c, 431, "request head exceeds %zu bytes", c->srv->lim.max_header_bytes);
        }
    }
    if (c->rpos == c->rlen) c->rpos = c->rlen = 0;
    c->in_process = 0;
    conn_update_reading(c);
}

// ---- streams ------------------------------------------------------------------------------

/* The handler returned API_STREAM: send the head, then only what api_stream_write sends.
 * Input is drained (EOF closes at once) and there is no idle timeout. */
static void conn_stream_start(struct api__conn *c)
{
    struct api_resp *r = &c->resp;
    api__resp_free(r); // a stream's body is what api_stream_write sends
    size_t head_len = 0;
    char *head = api__resp_head(r, 200, API__NO_LENGTH, 1, 0, &head_len);
    struct api__wreq *wr = head ? malloc(sizeof *wr) : NULL;
    api__resp_init(r);
    if (!wr) {
        free(head);
        api__conn_close(c);
        return;
    }
    *wr = (struct api__wreq){.c = c, .head = head};
    uv_buf_t b = uv_buf_init(head, (unsigned)head_len);
    if (uv_write(&wr->w, (uv_stream_t *)&c->tcp, &b, 1, on_write) < 0) {
        free(head);
        free(wr);
        api__conn_close(c);
        return;
    }
    c->n_writes++;
    conn_count(c, 200);
    c->streaming = 1;
    c->busy = 1;    // parse nothing more
    c->discard = 1; // but keep reading, to see the client hang up
    int sndbuf = API__STREAM_SNDBUF;
    uv_send_buffer_size((uv_handle_t *)&c->tcp, &sndbuf); // best effort: a bound, not a must
    conn_timer_stop(c);
}

struct api_stream *api_resp_stream(struct api_resp *resp, const char *ctype, size_t max_queued,
                                   api_stream_close_fn on_close, void *ud)
{
    struct api__conn *c = container_of(resp, struct api__conn, resp);
    if (!c->in_handler || c->pending || c->stream || c->is_head || !on_close) return NULL;
    if (!ctype) ctype = "text/event-stream";
    if (strlen(ctype) >= sizeof resp->ctype || strpbrk(ctype, "\r\n")) return NULL;
    struct api_stream *st = malloc(sizeof *st);
    if (!st) return NULL;
    *st = (struct api_stream){.conn = c, .on_close = on_close, .ud = ud, .max_queued = max_queued};
    snprintf(resp->ctype, sizeof resp->ctype, "%s", ctype);
    c->stream = st;
    return st;
}

int api_stream_write(struct api_stream *st, const char *data, size_t n)
{
    struct api__conn *c = st->conn;
    if (!c || c->closing || c->want_close || !c->streaming) return -ENOTCONN;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > st->max_queued) return -EAGAIN;
    if (n == 0) return 0;
    struct api__wreq *wr = malloc(sizeof *wr);
    char *copy = malloc(n);
    if (!wr || !copy) {
        free(wr);
        free(copy);
        return -ENOMEM;
    }
    memcpy(copy, data, n);
    *wr = (struct api__wreq){.c = c, .body = copy};
    uv_buf_t b = uv_buf_init(copy, (unsigned)n);
    int rc = uv_write(&wr->w, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (rc < 0) {
        free(copy);
        free(wr);
        api__conn_close(c); // on_close runs from the close callback, not from here
        return -ENOTCONN;
    }
    c->n_writes++;
    return 0;
}

void api_stream_close(struct api_stream *st)
{
    struct api__conn *c = st->conn;
    if (!c || c->closing || c->want_close) return;
    c->want_close = 1;
    conn_timer(c, linger_ms(c));
    if (c->n_writes == 0) conn_finish(c);
}

// ---- async handles ------------------------------------------------------------------------

struct api_async *api_resp_defer(struct api_resp *resp)
{
    struct api__conn *c = container_of(resp, struct api__conn, resp);
    if (c->pending || !c->in_handler) return NULL;
    struct api_async *h = malloc(sizeof *h);
    if (!h) return NULL;
    h->resp = c->resp; // move the headers or body set so far
    api__resp_init(&c->resp);
    h->conn = c;
    c->pending = h;
    return h;
}

struct api_resp *api_async_resp(struct api_async *h)
{
    return &h->resp;
}

int api_async_complete(struct api_async *h, int status)
{
    struct api__conn *c = h->conn;
    if (!c || c->closing) {
        if (c) c->pending = NULL;
        api__resp_free(&h->resp);
        free(h);
        return -ENOTCONN;
    }
    c->pending = NULL;
    if (status < 100 || status > 599) {
        api__resp_free(&h->resp);
        api__resp_init(&h->resp);
        status =
            api_resp_error(&h->resp, 500, NULL, "async handler completed with status %d", status);
    }
    int close = c->in_handler ? (!c->keep_alive || c->parser.upgrade || c->srv->stopping)
                              : c->pending_close;
    conn_respond(c, status, &h->resp, close);
    api__resp_free(&h->resp);
    free(h);
    if (c->in_handler) { // completed before the handler returned: dispatch continues
        c->async_inline = 1;
        return 0;
    }
    c->busy = 0;
    conn_process(c); // later pipelined requests, then reading resumes
    return 0;
}

// ---- accept -------------------------------------------------------------------------------

static void *xcalloc(size_t n, const char *file, int line)
{
    void *p = calloc(1, n);
    if (!p) {
        fprintf(stderr, "%s:%d: out of memory (%zu bytes)\n", file, line, n);
        abort();
    }
    return p;
}

void api__conn_accept(struct api_server *srv)
{
    // A small fixed-size struct: OOM aborts; the buffers below are checked.
    struct api__conn *c = xcalloc(sizeof *c, __FILE__, __LINE__);
    c->srv = srv;
    if (uv_tcp_init(srv->loop, &c->tcp) < 0) {
        free(c);
        return;
    }
    srv->n_live++;
    c->n_open_handles = 2;
    c->next = srv->conns;
    if (srv->conns) srv->conns->prev = c;
    srv->conns = c;
    if (uv_timer_init(srv->loop, &c->timer) < 0) {
        api__conn_close(c);
        return;
    }
    c->timer_inited = 1;
    if (uv_accept((uv_stream_t *)&srv->listener, (uv_stream_t *)&c->tcp) < 0) {
        api__conn_close(c);
        return;
    }

    const struct api_limits *l = &srv->lim;
    if (srv->stats.conns_current < l->max_conns) {
        c->arena_cap = head_area(l) + l->max_header_bytes + API_MAX_PARAMS + 1;
        c->rbuf = malloc(API__RBUF_SIZE);
        c->arena = malloc(c->arena_cap);
        c->hdrs = calloc(l->max_headers, sizeof *c->hdrs);
        if (c->rbuf && c->arena && c->hdrs) {
            c->counted = 1;
            srv->stats.conns_current++;
            srv->stats.conns_accepted_total++;
            http_parser_init(&c->parser, HTTP_REQUEST);
            c->parser.data = c;
            // Before its first byte a connection is both idle and inside a request head: the
            // shorter of the two timeouts applies, so silent sockets cannot hold max_conns
            // slots for idle_timeout_ms when the header timeout is shorter.
            conn_timer(c, l->header_timeout_ms < l->idle_timeout_ms ? l->header_timeout_ms
                                                                    : l->idle_timeout_ms);
            conn_update_reading(c);
            return;
        }
    }
    // Over the cap (or out of memory): answer 503 and close, while few such are pending.
    srv->stats.conns_rejected_total++;
    if (srv->n_rejecting >= l->max_conns) {
        api__conn_close(c);
        return;
    }
    c->rejected = 1;
    srv->n_rejecting++;
    c->discard = 1;
    conn_fail(c, 503, "too many connections (limit %zu)", l->max_conns);
}
