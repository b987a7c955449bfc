/* api/resp.c: what handlers call: response helpers (JSON, text, the one error shape, extra
 * headers), request helpers (header lookup, query values, JSON body parsing), and the
 * formatting of a response head.
 *
 * Ownership: a response owns its body until the connection moves it into a write request,
 * which frees it in the write callback. cJSON is used here, on the loop thread only. When a
 * helper runs out of memory it marks the response `forced_status = 503`; the connection then
 * answers 503 whatever the handler returned, so handlers need not check every helper. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/api_internal.h"

// ---- response object ---------------------------------------------------------------------

void api__resp_init(struct api_resp *r)
{
    memset(r, 0, sizeof *r);
}

void api__resp_free(struct api_resp *r)
{
    if (r->body_cjson)
        cJSON_free(r->body);
    else
        free(r->body);
    r->body = NULL;
    r->body_len = 0;
    r->body_cjson = 0;
}

static void resp_oom(struct api_resp *r)
{
    api__resp_free(r);
    r->forced_status = 503;
}

int api_resp_json(struct api_resp *resp, cJSON *obj)
{
    char *s = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (!s) {
        resp_oom(resp);
        return -ENOMEM;
    }
    api__resp_free(resp);
    resp->body = s;
    resp->body_len = strlen(s);
    resp->body_cjson = 1;
    resp->ctype[0] = '\0';
    return 0;
}

static int ctype_ok(const char *ct)
{
    return strlen(ct) < sizeof((struct api_resp *)0)->ctype && !strpbrk(ct, "\r\n");
}

int api_resp_text(struct api_resp *resp, const char *ctype, const char *s, size_t n)
{
    if (!ctype) ctype = "text/plain; charset=utf-8";
    if (!ctype_ok(ctype)) return -EINVAL;
    char *b = malloc(n ? n : 1);
    if (!b) {
        resp_oom(resp);
        return -ENOMEM;
    }
    if (n) memcpy(b, s, n);
    api__resp_free(resp);
    resp->body = b;
    resp->body_len = n;
    snprintf(resp->ctype, sizeof resp->ctype, "%s", ctype);
    return 0;
}

int api_resp_header(struct api_resp *resp, const char *name, const char *value)
{
    if (!name || !*name || !value || strpbrk(name, "\r\n: ") || strpbrk(value, "\r\n"))
        return -EINVAL;
    size_t need = strlen(name) + 2 + strlen(value) + 2;
    if (resp->extra_len + need >= sizeof resp->extra) return -ENOSPC;
    snprintf(resp->extra + resp->extra_len, sizeof resp->extra - resp->extra_len, "%s: %s\r\n",
             name, value);
    resp->extra_len += need;
    return 0;
}

// ---- errors ------------------------------------------------------------------------------

/* The error code string for each status we produce (README, "The daemon": one JSON error shape). */
static const struct {
    int status;
    const char *code;
} STATUS_CODES[] = {
    {400, "bad_request"},
    {401, "unauthorized"},
    {403, "forbidden"},
    {404, "not_found"},
    {405, "method_not_allowed"},
    {408, "request_timeout"},
    {409, "conflict"},
    {411, "length_required"},
    {413, "payload_too_large"},
    {415, "unsupported_media_type"},
    {422, "unprocessable"},
    {429, "too_many_requests"},
    {431, "headers_too_large"},
    {500, "internal"},
    {501, "not_implemented"},
    {503, "unavailable"},
    {505, "http_version_not_supported"},
};

static const char *api__status_code(int status)
{
    for (size_t i = 0; i < sizeof STATUS_CODES / sizeof STATUS_CODES[0]; i++)
        if (STATUS_CODES[i].status == status) return STATUS_CODES[i].code;
    return status >= 500 ? "server_error" : status >= 400 ? "client_error" : "ok";
}

int api_resp_error(struct api_resp *resp, int status, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    cJSON *root = cJSON_CreateObject();
    cJSON *e = root ? cJSON_AddObjectToObject(root, "error") : NULL;
    if (!e || !cJSON_AddStringToObject(e, "code", code ? code : api__status_code(status)) ||
        !cJSON_AddStringToObject(e, "message", msg)) {
        cJSON_Delete(root);
        resp_oom(resp);
        return status;
    }
    api_resp_json(resp, root);
    return status;
}

// ---- response head -----------------------------------------------------------------------

char *api__resp_head(const struct api_resp *r, int status, size_t body_len, int close,
                     int http10_keep_alive, size_t *len)
{
    size_t cap = 256 + r->extra_len;
    char *h = malloc(cap);
    if (!h) return NULL;
    const char *reason = http_status_str((enum http_status)status);
    int n;
    if (status == 204 || status == 304 || status < 200)
        n = snprintf(h, cap, "HTTP/1.1 %d %s\r\n", status, reason);
    else if (body_len == API__NO_LENGTH) // a stream: the body ends when the connection does
        n = snprintf(h, cap, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nCache-Control: no-cache\r\n",
                     status, reason, r->ctype[0] ? r->ctype : "text/event-stream");
    else
        n = snprintf(h, cap, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n",
                     status, reason, r->ctype[0] ? r->ctype : "application/json", body_len);
    size_t o = (size_t)n;
    if (close)
        o += (size_t)snprintf(h + o, cap - o, "Connection: close\r\n");
    else if (http10_keep_alive)
        o += (size_t)snprintf(h + o, cap - o, "Connection: keep-alive\r\n");
    memcpy(h + o, r->extra, r->extra_len);
    o += r->extra_len;
    memcpy(h + o, "\r\n", 2);
    *len = o + 2;
    return h;
}

// ---- request helpers ---------------------------------------------------------------------

const char *api_req_header(const struct api_req *req, const char *name)
{
    const struct api__conn *c = req->conn_;
    for (size_t i = 0; i < c->n_hdrs; i++)
        if (strcasecmp(c->arena + c->hdrs[i].name_off, name) == 0)
            return c->arena + c->hdrs[i].val_off;
    return NULL;
}

int api_req_query(const struct api_req *req, const char *key, char *out, size_t outlen)
{
    size_t klen = strlen(key);
    const char *q = req->query;
    while (*q) {
        const char *amp = strchr(q, '&');
        size_t plen = amp ? (size_t)(amp - q) : strlen(q);
        const char *eq = memchr(q, '=', plen);
        size_t nlen = eq ? (size_t)(eq - q) : plen;
        if (nlen == klen && memcmp(q, key, klen) == 0) {
            const char *v = eq ? eq + 1 : q + plen;
            size_t vlen = (size_t)(q + plen - v);
            // Decoding never lengthens; count first when the raw value might not fit.
            size_t dl = vlen < outlen ? api__pct_decode(out, v, vlen, 1)
                                      : api__pct_decode(NULL, v, vlen, 1);
            if (dl + 1 > outlen) return -ENOSPC;
            if (vlen >= outlen) api__pct_decode(out, v, vlen, 1);
            return (int)dl;
        }
        if (!amp) break;
        q = amp + 1;
    }
    return -ENOENT;
}

int api_req_json(const struct api_req *req, cJSON **out, struct api_resp *resp)
{
    if (req->body_len == 0)
        return api_resp_error(resp, 400, "bad_request", "request body is empty; expected JSON");
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(req->body, req->body_len, &end, 0);
    if (!j) {
        size_t pos = end ? (size_t)(end - req->body) : 0;
        return api_resp_error(resp, 400, "bad_request", "malformed JSON at byte %zu", pos);
    }
    const char *stop = req->body + req->body_len;
    while (end < stop && (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n')) end++;
    if (end < stop) {
        size_t pos = (size_t)(end - req->body);
        cJSON_Delete(j);
        return api_resp_error(resp, 400, "bad_request",
                              "trailing characters after JSON at byte %zu", pos);
    }
    *out = j;
    return 0;
}
