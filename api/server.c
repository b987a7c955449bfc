/* api/server.c: the listening side: option and route-table validation, bind and listen,
 * accepting (conn.c takes over each connection), counters, and shutdown.
 *
 * Lifetime: the server is one heap object that counts its live handles (the listener plus
 * every connection not yet freed). api_server_stop closes all of them; the close callback
 * of the last one frees the server, so after the caller's uv_run drains nothing of ours is
 * left on the loop and uv_loop_close returns 0. Loop thread only; no globals. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"

#define API__BACKLOG 511

void api_opts_default(struct api_opts *o)
{
    memset(o, 0, sizeof *o);
    o->listen = "127.0.0.1:7070";
    o->token = NULL;
    o->limits = (struct api_limits){
        .max_header_bytes = 16384,
        .max_headers = 64,
        .max_body_bytes = 65536,
        .header_timeout_ms = 10000,
        .idle_timeout_ms = 30000,
        .max_conns = 256,
    };
}

// ---- validation ---------------------------------------------------------------------------

static int limits_check(const struct api_limits *l, char *err, size_t errlen)
{
    // http_parser refuses heads over its own 80 KiB; keep ours below that.
    if (l->max_header_bytes < 64 || l->max_header_bytes > 65536) {
        snprintf(err, errlen, "max_header_bytes %zu outside [64, 65536]", l->max_header_bytes);
        return -EINVAL;
    }
    if (l->max_headers < 1 || l->max_headers > 1024) {
        snprintf(err, errlen, "max_headers %zu outside [1, 1024]", l->max_headers);
        return -EINVAL;
    }
    if (l->max_body_bytes > ((size_t)1 << 30)) {
        snprintf(err, errlen, "max_body_bytes %zu over 1 GiB", l->max_body_bytes);
        return -EINVAL;
    }
    if (l->header_timeout_ms < 1 || l->idle_timeout_ms < 1) {
        snprintf(err, errlen, "timeouts must be at least 1 ms");
        return -EINVAL;
    }
    if (l->max_conns < 1) {
        snprintf(err, errlen, "max_conns must be at least 1");
        return -EINVAL;
    }
    return 0;
}

/* Patterns start with '/', and each `{}` fills a whole segment. */
static int routes_check(const struct api_route *routes, size_t n, char *err, size_t errlen)
{
    if (!routes && n) goto bad_table;
    for (size_t i = 0; i < n; i++) {
        const struct api_route *r = &routes[i];
        if (!r->handler || !r->pattern || r->pattern[0] != '/' ||
            strcmp(api__method_name(r->method), "?") == 0)
            goto bad_row;
        size_t n_par = 0;
        for (const char *p = r->pattern; *p; p++) {
            if (*p == '{') {
                if (p[1] != '}' || p[-1] != '/' || (p[2] != '/' && p[2] != '\0')) goto bad_row;
                n_par++;
                p++;
            } else if (*p == '}' || *p == '?' || *p == '#') {
                goto bad_row;
            }
        }
        if (n_par > API_MAX_PARAMS) goto bad_row;
        continue;
    bad_row:
        snprintf(err, errlen, "route %zu (%s %s) is invalid", i, api__method_name(r->method),
                 r->pattern ? r->pattern : "(null)");
        return -EINVAL;
    }
    return 0;
bad_table:
    snprintf(err, errlen, "route table is NULL");
    return -EINVAL;
}

// ---- lifecycle ----------------------------------------------------------------------------

void api__server_release(struct api_server *srv)
{
    if (--srv->n_live > 0 || !srv->stopping) return;
    free(srv->token);
    free(srv);
}

static void on_listener_close(uv_handle_t *h)
{
    api__server_release(container_of((uv_tcp_t *)h, struct api_server, listener));
}

static void on_connection(uv_stream_t *s, int status)
{
    struct api_server *srv = container_of((uv_tcp_t *)s, struct api_server, listener);
    if (status < 0 || srv->stopping) return; // transient accept errors: the next one may work
    api__conn_accept(srv);
}

int api_server_start(struct api_server **out, uv_loop_t *loop, const struct api_opts *opts,
                     const struct api_route *routes, size_t n_routes, void *ctx, char *err,
                     size_t errlen)
{
    char dummy[1];
    if (!err || !errlen) {
        err = dummy;
        errlen = sizeof dummy;
    }
    err[0] = '\0';
    if (!out || !loop || !opts) {
        snprintf(err, errlen, "NULL argument");
        return -EINVAL;
    }
    int rc;
    if ((rc = limits_check(&opts->limits, err, errlen)) < 0) return rc;
    if ((rc = routes_check(routes, n_routes, err, errlen)) < 0) return rc;
    struct sockaddr_storage addr;
    int loopback = 0;
    if ((rc = api__parse_listen(opts->listen, &addr, &loopback, err, errlen)) < 0) return rc;
    int has_token = opts->token && opts->token[0];
    if (!loopback && !has_token) {
        snprintf(err, errlen,
                 "refusing to listen on non-loopback address %s without a token (set one)",
                 opts->listen);
        return -EPERM;
    }

    struct api_server *srv = calloc(1, sizeof *srv);
    if (!srv) goto oom;
    if (has_token) {
        srv->token = strdup(opts->token);
        if (!srv->token) {
            free(srv);
            goto oom;
        }
        srv->token_len = strlen(srv->token);
    }
    srv->loop = loop;
    srv->routes = routes;
    srv->n_routes = n_routes;
    srv->ctx = ctx;
    srv->lim = opts->limits;
    if ((rc = uv_tcp_init(loop, &srv->listener)) < 0) {
        snprintf(err, errlen, "uv_tcp_init: %s", uv_strerror(rc));
        free(srv->token);
        free(srv);
        return rc;
    }
    srv->n_live = 1;
    // From here a failure must close the handle; its callback frees the server.
    if ((rc = uv_tcp_bind(&srv->listener, (const struct sockaddr *)&addr, 0)) < 0) goto fail;
    if ((rc = uv_listen((uv_stream_t *)&srv->listener, API__BACKLOG, on_connection)) < 0) goto fail;
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    if ((rc = uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &blen)) < 0) goto fail;
    srv->port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                            : ntohs(((struct sockaddr_in *)&bound)->sin_port);
    *out = srv;
    return 0;
fail:
    snprintf(err, errlen, "cannot listen on %s: %s", opts->listen, uv_strerror(rc));
    srv->stopping = 1;
    uv_close((uv_handle_t *)&srv->listener, on_listener_close);
    return rc;
oom:
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
}

int api_server_port(const struct api_server *s)
{
    return s->port;
}

void api_server_stats(const struct api_server *s, struct api_stats *out)
{
    *out = s->stats;
}

void api_server_stop(struct api_server *s)
{
    if (s->stopping) return;
    s->stopping = 1;
    uv_close((uv_handle_t *)&s->listener, on_listener_close);
    while (s->conns) api__conn_close(s->conns); // unlinks itself
}
