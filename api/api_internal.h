/* api/api_internal.h: private structures and cross-file helpers of api/ (never included by
 * other folders). Everything here lives on the loop thread. */
#ifndef API_API_INTERNAL_H
#define API_API_INTERNAL_H

#include <http_parser.h>
#include <stddef.h>
#include <sys/socket.h>

#include "api/api.h"

#define API__RBUF_SIZE 16384      // per-connection read buffer (unparsed bytes wait here)
#define API__EXTRA_HDRS 512       // bytes of handler-added response headers
#define API__WQ_HIGH (256 * 1024) // stop reading while more than this waits to be written
#define API__LINGER_MAX_MS 2000   // after a closing response: drain input at most this long
#define API__DISCARD_SIZE 4096

#ifndef container_of
#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#endif

/* The response under construction. The body is owned here until it moves to a write
 * request; `body_cjson` says whether it came from cJSON (freed by cJSON_free) or malloc. */
struct api_resp {
    char *body;
    size_t body_len;
    int body_cjson;
    int forced_status;           // 503 once a helper ran out of memory; 0 otherwise
    char ctype[64];              // "" = application/json
    char extra[API__EXTRA_HDRS]; // "Name: value\r\n" lines
    size_t extra_len;
};

/* One header of the current request: offsets into the connection's arena, NUL-terminated. */
struct api__hdr {
    size_t name_off, name_len, val_off, val_len;
};

/* A deferred response. `conn` is NULL once the connection has gone (orphan). */
struct api_async {
    struct api_resp resp;
    struct api__conn *conn;
};

/* A streamed response (api_resp_stream). `conn` is NULL once the connection is closing. */
struct api_stream {
    struct api__conn *conn;
    api_stream_close_fn on_close;
    void *ud;
    size_t max_queued;
};

#define API__STREAM_SNDBUF 65536    // SO_SNDBUF of a stream's socket (the kernel may double it)
#define API__NO_LENGTH ((size_t)-1) // api__resp_head: no Content-Length (a streamed body)

/* One accepted TCP connection. Freed when both of its handles (tcp, timer) have closed.
 * Requests are handled one at a time in arrival order; bytes of later (pipelined) requests
 * wait in rbuf while an async handler is pending. */
struct api__conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown_req;
    http_parser parser;
    struct api_server *srv;
    struct api__conn *prev, *next; // server's list of open (not closing) connections
    int n_open_handles;            // 2 until the close callbacks have run

    unsigned rejected : 1;   // over max_conns: answer 503 and close
    unsigned closing : 1;    // uv_close called
    unsigned want_close : 1; // a closing response is queued: parse nothing more
    unsigned discard : 1;    // reads go to the server's discard buffer
    unsigned eof : 1;        // client finished sending
    unsigned busy : 1;       // an async handler owns the current request
    unsigned reading : 1;    // uv_read_start active
    unsigned wq_full : 1;    // write queue above API__WQ_HIGH: reading paused
    unsigned in_request : 1; // a request has begun and is not complete
    unsigned head_done : 1;  // the current request's head is complete
    unsigned in_process : 1; // conn_process is on the stack (guards re-entrance)
    unsigned keep_alive : 1; // http_should_keep_alive for the current request
    unsigned is_head : 1;    // current request is HEAD: send no body
    unsigned http10 : 1;     // current request is HTTP/1.0
    unsigned counted : 1;    // counted in stats.conns_current
    unsigned timer_inited : 1;
    unsigned shut : 1;          // uv_shutdown issued
    unsigned in_handler : 1;    // a handler is running for this connection
    unsigned async_inline : 1;  // the handler's deferred response completed before it returned
    unsigned pending_close : 1; // close after the deferred response
    unsigned streaming : 1;     // the response is a stream: nothing more is parsed

    char *rbuf; // [API__RBUF_SIZE] bytes received, [rpos, rlen) not yet parsed
    size_t rpos, rlen;
    char *arena; // [arena_cap] URL and header strings of the current request
    size_t arena_cap, arena_len;
    struct api__hdr *hdrs; // [srv->lim.max_headers]
    size_t n_hdrs;
    int last_cb; // 0 none, 1 header field, 2 header value (for split callbacks)
    size_t url_off, url_len;
    char *body; // [body_cap] the current request's body
    size_t body_len, body_cap;
    size_t head_bytes;         // raw bytes of the current head seen so far
    int err_status;            // status to answer when a callback aborts the parser
    char errmsg[128];          // and its message
    int paused_at;             // 1 headers complete, 2 message complete
    size_t n_writes;           // write requests in flight
    struct api_async *pending; // set while busy
    struct api_stream *stream; // set from api_resp_stream until the connection is freed
    struct api_resp resp;
    struct api_req req;
};

struct api_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    const struct api_route *routes;
    size_t n_routes;
    void *ctx;
    struct api_limits lim;
    char *token; // NULL = none
    size_t token_len;
    int port;
    int stopping;
    size_t n_live;      // listener + connections not yet freed; the server is freed at 0
    size_t n_rejecting; // rejected connections still open
    struct api__conn *conns;
    struct api_stats stats;
    char discard[API__DISCARD_SIZE]; // sink for drained input; never read
};

// ---- conn.c
void api__conn_accept(struct api_server *srv);
void api__conn_close(struct api__conn *c);

// ---- server.c
void api__server_release(struct api_server *srv); // one live handle gone; frees at zero

// ---- resp.c
void api__resp_init(struct api_resp *r);
void api__resp_free(struct api_resp *r); // frees the body; r stays usable
/* Format the status line and headers into a malloc'd buffer. */
char *api__resp_head(const struct api_resp *r, int status, size_t body_len, int close,
                     int http10_keep_alive, size_t *len);

// ---- route.c
const char *api__method_name(enum api_method m);
int api__method_from_http(unsigned http_method); // 0 if not one of ours
/* Match a pattern against a path; on success fill starts/lens of `{}` segments and return 1. */
int api__route_match(const char *pattern, const char *path, const char **starts, size_t *lens,
                     size_t *n_params);
int api__token_eq(const char *a, size_t alen, const char *b, size_t blen);
int api__ctype_is_json(const char *ct);
size_t api__pct_decode(char *dst, const char *src, size_t n, int plus_is_space);
/* 1 when every '%' in src[0..n) starts a two-hex-digit escape and none decodes to NUL. */
int api__pct_valid(const char *src, size_t n);
int api__parse_listen(const char *s, struct sockaddr_storage *ss, int *loopback, char *err,
                      size_t errlen);

#endif
