/* api/route.c: the small pure pieces of the server: method names, route pattern matching,
 * constant-time token comparison, Content-Type check, percent-decoding and the listen
 * address parser. None of them allocate or touch libuv state, so tests call them directly. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"

// ---- methods -----------------------------------------------------------------------------

static const char *const METHOD_NAMES[] = {
    [API_GET] = "GET",     [API_HEAD] = "HEAD",     [API_POST] = "POST",       [API_PUT] = "PUT",
    [API_PATCH] = "PATCH", [API_DELETE] = "DELETE", [API_OPTIONS] = "OPTIONS",
};

const char *api__method_name(enum api_method m)
{
    if ((int)m <= 0 || (size_t)m >= sizeof METHOD_NAMES / sizeof METHOD_NAMES[0]) return "?";
    return METHOD_NAMES[m];
}

int api__method_from_http(unsigned http_method)
{
    switch (http_method) {
    case HTTP_GET: return API_GET;
    case HTTP_HEAD: return API_HEAD;
    case HTTP_POST: return API_POST;
    case HTTP_PUT: return API_PUT;
    case HTTP_PATCH: return API_PATCH;
    case HTTP_DELETE: return API_DELETE;
    case HTTP_OPTIONS: return API_OPTIONS;
    default: return 0;
    }
}

// ---- routing ----------------------------------------------------------------------------

/* Walk pattern and path together. A `{}` in the pattern (validated at start to fill a whole
 * segment) swallows one non-empty path segment; everything else must match byte for byte,
 * so "/v1/status/" does not match "/v1/status". */
int api__route_match(const char *pattern, const char *path, const char **starts, size_t *lens,
                     size_t *n_params)
{
    const char *p = pattern, *q = path;
    size_t n = 0;
    for (;;) {
        if (p[0] == '{' && p[1] == '}') {
            const char *e = q;
            while (*e && *e != '/') e++;
            if (e == q || n >= API_MAX_PARAMS) return 0;
            starts[n] = q;
            lens[n] = (size_t)(e - q);
            n++;
            p += 2;
            q = e;
            continue;
        }
        if (*p != *q) return 0;
        if (*p == '\0') break;
        p++;
        q++;
    }
    *n_params = n;
    return 1;
}

// ---- auth and content type ------------------------------------------------------------------

/* Compare without an early exit, so timing reveals at most whether the lengths differ. */
int api__token_eq(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t n = alen > blen ? alen : blen;
    unsigned char diff = (unsigned char)(alen != blen);
    for (size_t i = 0; i < n; i++) {
        unsigned char x = i < alen ? (unsigned char)a[i] : 0;
        unsigned char y = i < blen ? (unsigned char)b[i] : 0;
        diff |= (unsigned char)(x ^ y);
    }
    return diff == 0;
}

/* "application/json", any case, optionally followed by parameters ("; charset=utf-8"). */
int api__ctype_is_json(const char *ct)
{
    static const char want[] = "application/json";
    if (!ct) return 0;
    while (*ct == ' ' || *ct == '\t') ct++;
    if (strncasecmp(ct, want, sizeof want - 1) != 0) return 0;
    ct += sizeof want - 1;
    while (*ct == ' ' || *ct == '\t') ct++;
    return *ct == '\0' || *ct == ';';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decode %XX (and '+' when asked) from src[0..n) into dst (room for n + 1 bytes); a '%' not
 * followed by two hex digits is kept as is. Returns the decoded length; dst is terminated.
 * With dst NULL, only count. */
size_t api__pct_decode(char *dst, const char *src, size_t n, int plus_is_space)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int h, l;
        if (src[i] == '%' && i + 2 < n && (h = hexval(src[i + 1])) >= 0 &&
            (l = hexval(src[i + 2])) >= 0) {
            if (dst) dst[o] = (char)(h * 16 + l);
            i += 2;
        } else if (dst) {
            dst[o] = plus_is_space && src[i] == '+' ? ' ' : src[i];
        }
        o++;
    }
    if (dst) dst[o] = '\0';
    return o;
}

// ---- listen address ----------------------------------------------------------------------

/* "host:port" or "[v6]:port"; host "localhost" means 127.0.0.1. */
int api__parse_listen(const char *s, struct sockaddr_storage *ss, int *loopback, char *err,
                      size_t errlen)
{
    char host[64];
    const char *colon, *hs, *he;
    if (!s || !*s) {
        snprintf(err, errlen, "empty listen address");
        return -EINVAL;
    }
    if (s[0] == '[') {
        hs = s + 1;
        he = strchr(hs, ']');
        if (!he || he[1] != ':') goto bad;
        colon = he + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon) goto bad;
        hs = s;
        he = colon;
    }
    if ((size_t)(he - hs) >= sizeof host || he == hs) goto bad;
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = '\0';

    const char *ps = colon + 1;
    if (!*ps || strlen(ps) > 5) goto bad;
    long port = 0;
    for (const char *c = ps; *c; c++) {
        if (!isdigit((unsigned char)*c)) goto bad;
        port = port * 10 + (*c - '0');
    }
    if (port > 65535) goto bad;

    struct sockaddr_storage tmp;
    memset(&tmp, 0, sizeof tmp);
    if (strcmp(host, "localhost") == 0) snprintf(host, sizeof host, "127.0.0.1");
    if (s[0] == '[') {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&tmp;
        if (uv_ip6_addr(host, (int)port, a6) != 0) goto bad;
        static const unsigned char v6_lo[16] = {[15] = 1};
        const unsigned char *b = a6->sin6_addr.s6_addr;
        *loopback = memcmp(b, v6_lo, 16) == 0 ||
                    (memcmp(b, "\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0 && b[12] == 127);
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)&tmp;
        if (uv_ip4_addr(host, (int)port, a4) != 0) goto bad;
        *loopback = ((const unsigned char *)&a4->sin_addr.s_addr)[0] == 127;
    }
    *ss = tmp;
    return 0;
bad:
    snprintf(err, errlen, "bad listen address '%s' (want host:port or [v6]:port, numeric host)", s);
    return -EINVAL;
}
