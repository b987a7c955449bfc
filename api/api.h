/* api/api.h: the HTTP/1.1 API server (owner: api/). Knows nothing of the maths or the trainer.
 *
 * The embedder owns a uv_loop_t (its own, never uv_default_loop), calls api_server_start with
 * a `static const` route table and a context pointer, and runs the loop on its thread. All
 * functions here, and every handler, run on that loop thread only; cJSON is used there only.
 * Errors are 0 or a negative errno; functions taking `err, errlen` also write a reason.
 *
 * Limits and errors: header bytes (431), header count (431), body bytes (413, by
 * Content-Length up front and by streamed size for chunked bodies), a request timeout from a
 * request's first byte to its last (408, then close), an idle keep-alive timeout (silent
 * close), and a connection cap (excess connections get 503 and are closed; while as many
 * rejected ones are still draining, further ones are closed at once). Malformed requests get
 * 400 and the connection is closed. Every error body has one shape:
 *   {"error":{"code":"not_found","message":"no route for GET /v1/nope"}}
 * Keep-alive follows HTTP/1.1 (Connection: close honoured; HTTP/1.0 only with keep-alive);
 * pipelined requests are answered in order. Chunked request bodies are supported (decoded by
 * http_parser, capped like any body), and Expect: 100-continue is answered. */
#ifndef API_API_H
#define API_API_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include <cjson/cJSON.h>

struct api_server; // opaque; created by api_server_start, freed by the loop after api_server_stop
struct api_resp;   // opaque; the response a handler fills through the helpers below
struct api_async;  // opaque; a deferred response (see api_resp_defer)
struct api_stream; // opaque; an open-ended response body (see api_resp_stream)
struct api__conn;  // private

enum api_method { API_GET = 1, API_HEAD, API_POST, API_PUT, API_PATCH, API_DELETE, API_OPTIONS };

#define API_MUTATING 1u  // route flag: needs `Authorization: Bearer <token>` when a token is set
#define API_ASYNC 1      // handler return value: "I will answer later through api_async_complete"
#define API_STREAM 2     // handler return value: the response became a stream (api_resp_stream)
#define API_MAX_PARAMS 4 // most `{}` segments in one route pattern

/* One request, borrowed by the handler: every pointer is valid only during the handler call
 * (copy what an async handler needs later). Strings are NUL-terminated. */
struct api_req {
    enum api_method method;
    const char *method_str;             // "GET", "PATCH", ...
    const char *path;                   // raw path without the query: "/v1/layers/fc1/spectrum"
    const char *query;                  // raw query after '?', "" if none (see api_req_query)
    const char *params[API_MAX_PARAMS]; // segments matched by `{}`, percent-decoded, in order
    size_t n_params;
    const char *body; // request body (ptr, len), NOT NUL-terminated; NULL when empty
    size_t body_len;
    struct api__conn *conn_; // private
};

/* A handler returns an HTTP status (100..599) after filling `resp`, or API_ASYNC after
 * api_resp_defer. A response with no body gets Content-Length: 0 (an error status with no
 * body gets the standard error body). Any other return value becomes 500. */
typedef int (*api_handler_fn)(struct api_req *req, struct api_resp *resp, void *ctx);

/* One row of the caller's `static const` route table. `pattern` is a path whose segments are
 * literals or `{}` (matches one non-empty segment), e.g. "/v1/layers/{}/spectrum". An unknown
 * path gets 404; a known path with another method gets 405 with an Allow header. HEAD runs
 * the GET row and sends only the head. Checked in order: route, bearer token (401 with
 * WWW-Authenticate: Bearer), then for POST/PUT/PATCH with a non-empty body Content-Type
 * application/json (parameters allowed; else 415). Handlers must not block the loop. */
struct api_route {
    enum api_method method;
    const char *pattern;
    api_handler_fn handler;
    unsigned flags; // API_MUTATING or 0
};

struct api_limits {
    size_t max_header_bytes;    // request line + headers + blank line; default 16384 (431)
    size_t max_headers;         // header fields per request; default 64 (431)
    size_t max_body_bytes;      // default 65536 (413)
    uint64_t header_timeout_ms; // first byte of a request to its last; default 10000 (408)
    uint64_t idle_timeout_ms;   // between requests, and before the first; default 30000
    size_t max_conns;           // served connections; default 256 (more get 503 and close)
};

struct api_opts {
    const char *listen; // "127.0.0.1:7070", "[::1]:7070", "localhost:0" (0 = ephemeral port)
    const char *token;  // bearer token for API_MUTATING routes; NULL or "" = none (copied)
    struct api_limits limits;
};

/* Counters for /metrics. A "request" is one response sent, including the server's own
 * errors (400, 408, 431, 503 to rejected connections, ...). */
struct api_stats {
    uint64_t requests_total;
    uint64_t requests_by_class[6];  // [1..5] = 1xx..5xx; [0] unused
    uint64_t requests_by_code[600]; // by status code (100..599); a stream counts when it opens
    uint64_t conns_current;         // served connections open now
    uint64_t conns_accepted_total;  // served connections ever accepted
    uint64_t conns_rejected_total;  // connections refused by max_conns (503 or plain close)
};

// ---- server lifecycle -------------------------------------------------------------------

/* Fill `o` with the defaults above, listen "127.0.0.1:7070", no token. */
void api_opts_default(struct api_opts *o);

/* Bind, listen and start accepting on `loop`. `routes` (n_routes rows) and `ctx` are borrowed
 * and must outlive the server; handlers get `ctx`. Refuses (-EPERM) a non-loopback address
 * when no token is set. Returns 0 and sets *out, or a negative errno (-EINVAL bad address,
 * limits or route; -EADDRINUSE; ...) with a reason in err, *out untouched. After a failure
 * the loop may hold a closing handle: run it (uv_run returns at once) before uv_loop_close. */
int api_server_start(struct api_server **out, uv_loop_t *loop, const struct api_opts *opts,
                     const struct api_route *routes, size_t n_routes, void *ctx, char *err,
                     size_t errlen);

/* The bound TCP port (useful with port 0). */
int api_server_port(const struct api_server *s);

/* Copy the counters into *out (loop thread). */
void api_server_stats(const struct api_server *s, struct api_stats *out);

/* Close the listener and every connection (responses not yet written are dropped). Call it
 * exactly once; `s` is freed by the loop once all its handles have closed, so do not use it
 * afterwards. Pending async handles become orphans and must still be completed. After the
 * caller's uv_run drains, uv_loop_close returns 0. Call this before any uv_walk that closes
 * handles, and let such a walk skip handles that are already closing (uv_is_closing). */
void api_server_stop(struct api_server *s);

// ---- request helpers (handler only) ---------------------------------------------------

/* Value of the first header named `name` (case-insensitive), or NULL. Borrowed. */
const char *api_req_header(const struct api_req *req, const char *name);

/* Find `key` in the query string and copy its percent-decoded value ('+' = space) into out.
 * Returns the value's length, -ENOENT if absent, -ENOSPC if it does not fit in outlen-1. */
int api_req_query(const struct api_req *req, const char *key, char *out, size_t outlen);

/* Parse the body as JSON (cJSON_ParseWithLengthOpts; trailing whitespace only). Returns 0 and
 * sets *out (caller owns it: cJSON_Delete), or 400 after writing the error into resp (empty
 * body, malformed JSON at byte N, trailing bytes), *out untouched: `return rc;` from there. */
int api_req_json(const struct api_req *req, cJSON **out, struct api_resp *resp);

// ---- response helpers -----------------------------------------------------------------
// A helper that runs out of memory turns the response into a 503 whatever the handler returns.

/* Serialise `obj` (cJSON_PrintUnformatted) as the body, application/json. Takes ownership of
 * obj: it is deleted here, also on failure. Returns 0 or -ENOMEM. */
int api_resp_json(struct api_resp *resp, cJSON *obj);

/* Body = a copy of s[0..n) with Content-Type `ctype` (NULL = "text/plain; charset=utf-8").
 * Returns 0, -ENOMEM, or -EINVAL (ctype longer than 63 bytes or holding CR/LF). */
int api_resp_text(struct api_resp *resp, const char *ctype, const char *s, size_t n);

/* Body = the standard error JSON with `code` (NULL = the usual one for `status`: bad_request,
 * unauthorized, not_found, method_not_allowed, request_timeout, conflict, payload_too_large,
 * unsupported_media_type, unprocessable, headers_too_large, internal, unavailable) and a
 * printf-formatted message. Returns `status`, so a handler can `return api_resp_error(...)`. */
int api_resp_error(struct api_resp *resp, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Add a response header (copied). Returns 0, -EINVAL (CR/LF/empty name) or -ENOSPC. */
int api_resp_header(struct api_resp *resp, const char *name, const char *value);

// ---- deferred (async) responses -----------------------------------------------------------

/* In a handler: take over the response and return API_ASYNC. The connection handles no
 * further request until the handle completes (pipelined requests stay in order); if the client
 * closes meanwhile, the handle becomes an orphan. Returns the handle, owned by the caller until
 * api_async_complete, or NULL (OOM, already deferred, or not inside a handler): then answer
 * synchronously. */
struct api_async *api_resp_defer(struct api_resp *resp);

/* The response to fill (with the helpers above) before completing. Borrowed; valid until
 * api_async_complete. */
struct api_resp *api_async_resp(struct api_async *h);

/* Send the response with `status` and free the handle (on the loop thread, e.g. from a
 * uv_async callback; exactly once per handle, also after api_server_stop). Returns 0 if the
 * response was queued, -ENOTCONN if the client had gone (the response is discarded). */
int api_async_complete(struct api_async *h, int status);

// ---- streamed responses (Server-Sent Events) ----------------------------------------------

/* Called once when a stream's connection has gone, for whatever reason (the client closed,
 * a write failed, api_stream_close, api_server_stop), from a libuv close callback on the
 * loop thread, never from inside api_stream_write. `st` is freed when it returns. */
typedef void (*api_stream_close_fn)(struct api_stream *st, void *ud);

/* In a handler: turn the response into an open-ended stream and return API_STREAM. When the
 * handler returns, the head is sent: 200, Content-Type `ctype` (NULL = text/event-stream),
 * Cache-Control: no-cache, Connection: close, the headers added so far and no
 * Content-Length; the body is then whatever api_stream_write sends until either side closes.
 * The connection reads no further requests (its input is drained, so a client that hangs up
 * is noticed), has no idle timeout, and its kernel send buffer is kept small, so the bytes a
 * client that stops reading can hold in this process are bounded by about max_queued plus
 * that buffer. Returns the handle, owned by the connection and valid until on_close has run,
 * or NULL (not inside a handler, already deferred or streaming, a HEAD request, OOM, or an
 * invalid ctype): then answer normally. */
struct api_stream *api_resp_stream(struct api_resp *resp, const char *ctype, size_t max_queued,
                                   api_stream_close_fn on_close, void *ud);

/* Queues n bytes (copied) for the client. Returns 0; -EAGAIN when more than max_queued bytes
 * already wait for this client (nothing was queued: drop it, or send a note later); -ENOMEM;
 * -ENOTCONN once the stream is closing. */
int api_stream_write(struct api_stream *st, const char *data, size_t n);

/* Ends the stream: the connection closes once the queued bytes are written (or after a short
 * linger). on_close runs later, as for any close. */
void api_stream_close(struct api_stream *st);

#endif
