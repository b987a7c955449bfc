/* cli/client.c: the client side of `evowidth`: status, layers, history, policy, pause,
 * resume, adapt, checkpoint and stop against a running evowidthd, over HTTP with libcurl.
 *
 * Design. One static const table maps each subcommand to a method, a route and a printer.
 * A command makes one request (stop also polls /v1/healthz until the daemon has gone), then
 * prints the answer as a readable table, or the raw JSON body with --json. Options:
 *   --url URL         base URL (default http://127.0.0.1:7070; env EVOWIDTH_URL). A URL that
 *                     includes a route ("http://127.0.0.1:7070/v1/status", as evowidthd
 *                     prints it) is cut back to its base; a missing scheme means http://.
 *   --token-file F    adds "Authorization: Bearer <first line of F>" (env EVOWIDTH_TOKEN
 *                     holds the token itself); only mutating routes need it.
 *   --json, --timeout S, --points N (history), --no-wait (stop).
 * Exit codes: 0 success; 1 the daemon answered with an error (status code and message on
 * stderr) or could not be reached ("cannot reach evowidthd at URL: ..."); 2 usage.
 *
 * Ownership. Everything is local to one command: the response body is a heap buffer owned by
 * the caller of cli_http, parsed JSON is deleted by whoever parsed it. The process is single-
 * threaded, so cJSON's global error state is not a concern here; curl_global_init/cleanup
 * bracket the command. No state outlives dmn_cmd_client. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "cli/cli.h"

#define CLI_DEFAULT_URL "http://127.0.0.1:7070"
#define CLI_URL_MAX 512
#define CLI_TOKEN_MAX 512
#define CLI_MAX_BODY ((size_t)64 << 20) // refuse absurd answers rather than eat memory
#define CLI_STOP_WAIT_S 300.0           // `stop` waits this long for the process to end

struct cli_opts {
    char url[CLI_URL_MAX];     // base URL, no trailing slash
    char token[CLI_TOKEN_MAX]; // "" = no Authorization header
    int json;                  // print raw JSON bodies
    int no_wait;               // stop: do not wait for the daemon to exit
    long points;               // history: points to ask for
    long timeout_s;            // whole-request timeout
};

/* A response body: NUL-terminated heap text (len bytes), owned by whoever holds the struct. */
struct cli_buf {
    char *data;
    size_t len, cap;
};

// ---- HTTP ---------------------------------------------------------------------------------

static size_t cli_write_cb(char *p, size_t size, size_t n, void *ud)
{
    struct cli_buf *b = ud;
    size_t k = size * n;
    if (k > CLI_MAX_BODY - b->len - 1) return 0; // makes curl fail with a write error
    if (b->len + k + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + k + 1) cap *= 2;
        char *q = realloc(b->data, cap);
        if (!q) return 0;
        b->data = q;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, k);
    b->len += k;
    b->data[b->len] = '\0';
    return k;
}

/* One request: METHOD base-url+path with an optional JSON body (NUL-terminated, copied by
 * curl). Returns 0 and fills *status and *out (caller frees out->data) whatever the HTTP
 * status; or -ECONNREFUSED (nothing listening), -ETIMEDOUT, -EIO (another transport error),
 * -ENOMEM, with the reason in err and the outputs untouched. */
static int cli_http(const struct cli_opts *o, const char *method, const char *path,
                    const char *body, long timeout_ms, long *status, struct cli_buf *out, char *err,
                    size_t errlen)
{
    CURL *h = NULL;
    struct curl_slist *hl = NULL, *tmp;
    struct cli_buf b = {0};
    char url[CLI_URL_MAX + 256], auth[CLI_TOKEN_MAX + 32], cerr[CURL_ERROR_SIZE] = "";
    int rc = -ENOMEM;

    if (snprintf(url, sizeof(url), "%s%s", o->url, path) >= (int)sizeof(url)) {
        snprintf(err, errlen, "URL too long");
        return -EINVAL;
    }
    if (!(h = curl_easy_init())) goto oom;
    // Headers: JSON bodies, no "Expect: 100-continue" round trip, the token when there is one.
    if (!(tmp = curl_slist_append(hl, "Expect:"))) goto oom;
    hl = tmp;
    if (body) {
        if (!(tmp = curl_slist_append(hl, "Content-Type: application/json"))) goto oom;
        hl = tmp;
    }
    if (o->token[0]) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", o->token);
        if (!(tmp = curl_slist_append(hl, auth))) goto oom;
        hl = tmp;
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, cerr);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms < 5000 ? timeout_ms : 5000L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, cli_write_cb);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "evowidth-client/1");
    // A proxy from the environment must not capture requests to a local daemon.
    curl_easy_setopt(h, CURLOPT_NOPROXY, "127.0.0.1,localhost,::1");
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
    if (strcmp(method, "GET") != 0) {
        // POST/PATCH always carry a body, possibly empty (Content-Length: 0).
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body ? body : "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, body ? (long)strlen(body) : 0L);
        if (strcmp(method, "POST") != 0) curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    }
    CURLcode cc = curl_easy_perform(h);
    if (cc != CURLE_OK) {
        snprintf(err, errlen, "%s", cerr[0] ? cerr : curl_easy_strerror(cc));
        rc = cc == CURLE_COULDNT_CONNECT      ? -ECONNREFUSED
             : cc == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT
             : cc == CURLE_OUT_OF_MEMORY      ? -ENOMEM
                                              : -EIO;
        goto fail;
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    if (!b.data && !(b.data = calloc(1, 1))) goto oom; // an empty body is still a string
    *out = b;
    b.data = NULL;
    rc = 0;
    goto fail;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    free(b.data);
    curl_slist_free_all(hl);
    curl_easy_cleanup(h);
    return rc;
}

// ---- formatting helpers ---------------------------------------------------------------------

static double cli_num(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static const char *cli_str(const cJSON *o, const char *key)
{
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, key));
    return s ? s : "-";
}

/* "1h02m03s" / "4m05s" / "12s"; "-" when unknown. */
static const char *cli_duration(double s, char *buf, size_t n)
{
    if (!isfinite(s) || s < 0) return "-";
    unsigned long t = (unsigned long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, n, "%luh%02lum%02lus", t / 3600, t / 60 % 60, t % 60);
    else if (t >= 60)
        snprintf(buf, n, "%lum%02lus", t / 60, t % 60);
    else
        snprintf(buf, n, "%lus", t);
    return buf;
}

/* A JSON scalar as text ("-" for null or missing). */
static const char *cli_scalar(const cJSON *v, char *buf, size_t n)
{
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v) ? "true" : "false";
    if (cJSON_IsNumber(v)) {
        snprintf(buf, n, "%.6g", v->valuedouble);
        return buf;
    }
    return "-";
}

static void cli_print_raw(const struct cli_buf *b)
{
    fwrite(b->data, 1, b->len, stdout);
    if (!b->len || b->data[b->len - 1] != '\n') putchar('\n');
}

// ---- printers (one per answer shape) ----------------------------------------------------------

static void show_status(const cJSON *o)
{
    char d[32];
    printf("%-14s %s\n", "state", cli_str(o, "state"));
    printf("%-14s %.0f / %.0f  (epoch %.0f / %.0f)\n", "step", cli_num(o, "step"),
           cli_num(o, "total_steps"), cli_num(o, "epoch"), cli_num(o, "epochs"));
    double vl = cli_num(o, "val_loss");
    if (isfinite(cli_num(o, "loss")))
        printf("%-14s %.4g  (accuracy %.2f%%)\n", "loss", cli_num(o, "loss"),
               100.0 * cli_num(o, "accuracy"));
    else
        printf("%-14s not yet measured\n", "loss");
    if (isfinite(vl))
        printf("%-14s %.4g  (accuracy %.2f%%)\n", "validation", vl,
               100.0 * cli_num(o, "val_accuracy"));
    else
        printf("%-14s not yet measured\n", "validation");
    printf("%-14s %.4g\n", "learning rate", cli_num(o, "lr"));
    printf("%-14s %.0f samples/s, ETA %s\n", "speed", cli_num(o, "samples_per_second"),
           cli_duration(cli_num(o, "eta_seconds"), d, sizeof(d)));
    double p = cli_num(o, "params"), p0 = cli_num(o, "initial_params");
    printf("%-14s %.0f (initially %.0f, %.1f%%), %.0f MACs/sample\n", "parameters", p, p0,
           p0 > 0 ? 100.0 * p / p0 : NAN, cli_num(o, "macs_per_sample"));
    printf("%-14s %.0f (%.2f s adapting, %.1f s training)\n", "adaptations",
           cli_num(o, "adaptations"), cli_num(o, "adapt_seconds"), cli_num(o, "train_seconds"));
    printf("%-14s", "widths");
    const cJSON *w, *ws = cJSON_GetObjectItemCaseSensitive(o, "widths");
    int first = 1;
    cJSON_ArrayForEach(w, ws)
    {
        printf("%s %s %.0f", first ? "" : ",", w->string, w->valuedouble);
        first = 0;
    }
    printf("\n");
    const cJSON *pol = cJSON_GetObjectItemCaseSensitive(o, "policy");
    if (pol)
        printf("%-14s %s, mode %s, rule %s, shrink %.4g, expand %.4g\n", "policy",
               cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(pol, "enabled")) ? "enabled"
                                                                              : "disabled",
               cli_str(pol, "mode"), cli_str(pol, "rule"), cli_num(pol, "shrink_threshold"),
               cli_num(pol, "expand_threshold"));
    const char *ck = cli_str(o, "last_checkpoint");
    if (ck[0] && strcmp(ck, "-") != 0)
        printf("%-14s step %.0f: %s\n", "checkpoint", cli_num(o, "last_checkpoint_step"), ck);
    else
        printf("%-14s none yet\n", "checkpoint");
}

static void show_layers(const cJSON *o)
{
    const cJSON *l, *ls = cJSON_GetObjectItemCaseSensitive(o, "layers");
    printf("%-12s %-8s %7s %7s %5s %10s %12s  %s\n", "layer", "kind", "width", "out", "rank",
           "params", "MACs", "top singular values");
    cJSON_ArrayForEach(l, ls)
    {
        char rank[16] = "-";
        double r = cli_num(l, "rank");
        if (isfinite(r)) snprintf(rank, sizeof(rank), "%.0f", r);
        printf("%-12s %-8s %7.0f %7.0f %5s %10.0f %12.0f ", cli_str(l, "name"), cli_str(l, "kind"),
               cli_num(l, "width"), cli_num(l, "out"), rank, cli_num(l, "params"),
               cli_num(l, "macs"));
        const cJSON *v, *top = cJSON_GetObjectItemCaseSensitive(l, "top_singular_values");
        int k = 0;
        cJSON_ArrayForEach(v, top)
        {
            if (k++ == 5) {
                printf(" ...");
                break;
            }
            printf(" %.4g", v->valuedouble);
        }
        printf("\n");
    }
}

/* The series: time from its first point, the training window, the last validation (marked
 * with * on the points where a pass ended), lr, size and speed. */
static void show_history(const cJSON *o)
{
    const cJSON *e, *h = cJSON_GetObjectItemCaseSensitive(o, "history");
    printf("%9s %9s %9s %8s %10s %9s %9s %9s %10s\n", "time_s", "step", "loss", "acc%", "val_loss",
           "val_acc%", "lr", "params", "samples/s");
    double t0 = NAN;
    cJSON_ArrayForEach(e, h)
    {
        if (isnan(t0)) t0 = cli_num(e, "time");
        int ev = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "eval"));
        printf("%9.1f %9.0f %9.4g %8.2f %9.4g%c %9.2f %9.4g %9.0f %10.0f\n",
               cli_num(e, "time") - t0, cli_num(e, "step"), cli_num(e, "loss"),
               100.0 * cli_num(e, "accuracy"), cli_num(e, "val_loss"), ev ? '*' : ' ',
               100.0 * cli_num(e, "val_accuracy"), cli_num(e, "lr"), cli_num(e, "params"),
               cli_num(e, "samples_per_second"));
    }
    printf("(%d of %.0f points; * = a validation pass ended there)\n", cJSON_GetArraySize(h),
           cli_num(o, "points_total"));
}

static void show_policy(const cJSON *o)
{
    const cJSON *v;
    char buf[64];
    cJSON_ArrayForEach(v, o) printf("%-20s %s\n", v->string, cli_scalar(v, buf, sizeof(buf)));
}

static void show_state(const cJSON *o)
{
    printf("%s\n", cli_str(o, "state"));
}

/* Why a group kept its width, in words (svd_reason_name's codes). */
static const char *cli_reason_text(const char *r)
{
    static const char *const map[][2] = {
        {"rank_rule", "the rank rule keeps fewer directions"},
        {"saturated", "saturated on consecutive checks"},
        {"target", "moved towards target_params"},
        {"fits", "neither redundant nor saturated"},
        {"patience", "saturated, waiting for grow_patience"},
        {"cooldown", "changed recently (cooldown)"},
        {"min_width", "redundant but at min_width"},
        {"max_width", "saturated but at max_width"},
        {"budget", "growth would pass the parameter budget"},
        {"target_met", "target_params reached"},
        {"disabled", "shrink / grow disabled"},
        {"error", "the decomposition or surgery failed"},
        {"protected", "redundant, but grown less than protect_steps ago"},
        {"no_gain", "the loss did not need its last growth (grow_gain): cut back, grows no more"},
        {"settled", "saturated, but the rank rule has cut this net: no growth after a shrink"},
    };
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(r, map[i][0]) == 0) return map[i][1];
    return r;
}

/* POST /v1/adapt: one line for the pass, then one per group: width before -> after, what was
 * done and why, and the rank rule's cut. */
static void show_adapt(const cJSON *o)
{
    double kept = cli_num(o, "surgeries_kept");
    const cJSON *ev = cJSON_GetObjectItemCaseSensitive(o, "last_event");
    printf("adaptation at step %.0f: %.0f surger%s kept", cli_num(o, "step"), kept,
           kept == 1 ? "y" : "ies");
    if (!ev || cJSON_IsNull(ev)) {
        printf("\n");
        return;
    }
    printf(", parameters %.0f -> %.0f (%s mode, %.2f s)\n", cli_num(ev, "params_before"),
           cli_num(ev, "params_after"), cli_str(ev, "mode"), cli_num(ev, "seconds"));
    const cJSON *c, *ch = cJSON_GetObjectItemCaseSensitive(ev, "changes");
    cJSON_ArrayForEach(c, ch)
    {
        const char *act = cli_str(c, "action"), *err = cli_str(c, "error");
        char cut[48] = "";
        double k = cli_num(c, "kept");
        if (isfinite(k)) snprintf(cut, sizeof(cut), "; rank rule keeps %.0f", k);
        const char *note = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "rolled_back"))
                               ? " (rolled back: validation loss rose)"
                               : "";
        printf("  %-12s %5.0f -> %-5.0f %-11s %s%s%s%s%s\n", cli_str(c, "group"),
               cli_num(c, "from"), cli_num(c, "to"), act, cli_reason_text(cli_str(c, "reason")),
               cut, note, strcmp(err, "-") ? ": " : "", strcmp(err, "-") ? err : "");
    }
}

static void show_checkpoint(const cJSON *o)
{
    printf("checkpoint at step %.0f: %s\n", cli_num(o, "step"), cli_str(o, "path"));
}

// ---- commands -----------------------------------------------------------------------------

enum cli_kind { CLI_PLAIN, CLI_HISTORY, CLI_POLICY, CLI_STOP };

struct cli_cmd {
    const char *name;
    enum cli_kind kind;
    const char *method;
    const char *path;
    void (*show)(const cJSON *o);
    const char *help;
};

static const struct cli_cmd CLI_CMDS[] = {
    {"status", CLI_PLAIN, "GET", "/v1/status", show_status, "progress, speed, widths"},
    {"layers", CLI_PLAIN, "GET", "/v1/layers", show_layers, "per-layer widths and spectra"},
    {"history", CLI_HISTORY, "GET", "/v1/history", show_history, "metric history (--points N)"},
    {"policy", CLI_POLICY, "GET", "/v1/policy", show_policy, "policy [get | set KEY=VALUE ...]"},
    {"pause", CLI_PLAIN, "POST", "/v1/pause", show_state, "pause training"},
    {"resume", CLI_PLAIN, "POST", "/v1/resume", show_state, "resume training"},
    {"adapt", CLI_PLAIN, "POST", "/v1/adapt", show_adapt, "run a width adaptation now"},
    {"checkpoint", CLI_PLAIN, "POST", "/v1/checkpoint", show_checkpoint,
     "write a checkpoint and print its path"},
    {"stop", CLI_STOP, "POST", "/v1/stop", show_state,
     "checkpoint and exit (waits for the exit unless --no-wait)"},
};

static void cli_usage(FILE *f, const char *name)
{
    fprintf(f, "usage: evowidth %s%s [--url URL] [--token-file F] [--json] [--timeout S]%s%s\n",
            name, strcmp(name, "policy") == 0 ? " [get | set KEY=VALUE ...]" : "",
            strcmp(name, "history") == 0 ? " [--points N]" : "",
            strcmp(name, "stop") == 0 ? " [--no-wait]" : "");
    fprintf(f, "Talks to a running evowidthd (default %s; env EVOWIDTH_URL, EVOWIDTH_TOKEN).\n",
            CLI_DEFAULT_URL);
}

/* JSON value of a `policy set` argument: true/false are booleans, text that reads wholly as
 * a finite number is a number, anything else a string. NULL on OOM. */
static cJSON *cli_value(const char *v)
{
    if (strcmp(v, "true") == 0) return cJSON_CreateTrue();
    if (strcmp(v, "false") == 0) return cJSON_CreateFalse();
    if ((v[0] >= '0' && v[0] <= '9') || v[0] == '-' || v[0] == '+' || v[0] == '.') {
        char *end = NULL;
        double d = strtod(v, &end);
        if (end != v && *end == '\0' && isfinite(d)) return cJSON_CreateNumber(d);
    }
    return cJSON_CreateString(v);
}

/* The body of `policy set k=v ...` as JSON text (caller frees with cJSON_free), or NULL with
 * a reason in err. */
static char *cli_policy_body(int n, char **kv, char *err, size_t errlen)
{
    cJSON *o = cJSON_CreateObject();
    char *text = NULL;
    if (!o) goto oom;
    for (int i = 0; i < n; i++) {
        const char *eq = strchr(kv[i], '=');
        if (!eq || eq == kv[i]) {
            snprintf(err, errlen, "\"%s\": expected KEY=VALUE", kv[i]);
            goto fail;
        }
        char key[128];
        size_t kl = (size_t)(eq - kv[i]);
        if (kl >= sizeof(key)) {
            snprintf(err, errlen, "\"%.40s...\": key too long", kv[i]);
            goto fail;
        }
        memcpy(key, kv[i], kl);
        key[kl] = '\0';
        cJSON *v = cli_value(eq + 1);
        if (!v) goto oom;
        cJSON_DeleteItemFromObjectCaseSensitive(o, key); // the last k=v wins
        cJSON_AddItemToObject(o, key, v);
    }
    if ((text = cJSON_PrintUnformatted(o))) goto fail;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    cJSON_Delete(o);
    return text;
}

/* Base URL: scheme added when missing; a route ("/v1/...") and trailing slashes cut. */
static int cli_set_url(struct cli_opts *o, const char *u, char *err, size_t errlen)
{
    int has_scheme = strncmp(u, "http://", 7) == 0 || strncmp(u, "https://", 8) == 0;
    if (!u[0] || (strstr(u, "://") && !has_scheme)) {
        snprintf(err, errlen, "--url \"%s\": expected http://HOST:PORT", u);
        return -EINVAL;
    }
    if (snprintf(o->url, sizeof(o->url), "%s%s", has_scheme ? "" : "http://", u) >=
        (int)sizeof(o->url)) {
        snprintf(err, errlen, "--url: too long");
        return -EINVAL;
    }
    char *host = strstr(o->url, "://") + 3;
    char *v1 = strstr(host, "/v1/");
    if (!v1 && (v1 = strstr(host, "/v1")) && v1[3] != '\0') v1 = NULL;
    if (v1) *v1 = '\0';
    size_t n = strlen(o->url);
    while (n && o->url[n - 1] == '/') o->url[--n] = '\0';
    return 0;
}

/* The token from a file: its first line, surrounding blanks trimmed. */
static int cli_read_token(struct cli_opts *o, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    char buf[CLI_TOKEN_MAX];
    if (!f) {
        snprintf(err, errlen, "--token-file %s: %s", path, strerror(errno));
        return -errno;
    }
    if (!fgets(buf, sizeof(buf), f)) buf[0] = '\0';
    fclose(f);
    size_t n = strcspn(buf, "\r\n");
    while (n && (buf[n - 1] == ' ' || buf[n - 1] == '\t')) n--;
    buf[n] = '\0';
    const char *s = buf + strspn(buf, " \t");
    if (!*s) {
        snprintf(err, errlen, "--token-file %s: empty", path);
        return -EINVAL;
    }
    snprintf(o->token, sizeof(o->token), "%s", s);
    return 0;
}

/* Prints a non-2xx answer readably: "evowidth: PATCH /v1/policy: 422 unprocessable: ...". */
static void cli_print_error(const char *method, const char *path, long status,
                            const struct cli_buf *b)
{
    cJSON *o = cJSON_ParseWithLength(b->data, b->len);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(o, "error");
    const char *code = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "code"));
    const char *msg = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "message"));
    if (msg)
        fprintf(stderr, "evowidth: %s %s: %ld %s: %s\n", method, path, status, code ? code : "",
                msg);
    else
        fprintf(stderr, "evowidth: %s %s: HTTP %ld: %.300s\n", method, path, status,
                b->len ? b->data : "(empty body)");
    cJSON_Delete(o);
}

/* One request and its printing. Returns the process exit code. */
static int cli_call(const struct cli_opts *o, const char *method, const char *path,
                    const char *body, void (*show)(const cJSON *))
{
    char err[CURL_ERROR_SIZE + 64];
    struct cli_buf b = {0};
    long status = 0;
    int rc = cli_http(o, method, path, body, o->timeout_s * 1000, &status, &b, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "evowidth: cannot reach evowidthd at %s: %s\n", o->url, err);
        return 1;
    }
    int code = 0;
    if (status < 200 || status > 299) {
        if (o->json) cli_print_raw(&b);
        cli_print_error(method, path, status, &b);
        code = 1;
    } else if (o->json) {
        cli_print_raw(&b);
    } else {
        cJSON *j = cJSON_ParseWithLength(b.data, b.len);
        if (j)
            show(j);
        else
            cli_print_raw(&b);
        cJSON_Delete(j);
    }
    free(b.data);
    return code;
}

/* After POST /v1/stop: poll /v1/healthz until nothing listens any more. */
static int cli_wait_gone(const struct cli_opts *o)
{
    struct timespec nap = {0, 200 * 1000000L};
    double deadline = dmn_now() + CLI_STOP_WAIT_S;
    char err[CURL_ERROR_SIZE + 64];
    while (dmn_now() < deadline) {
        struct cli_buf b = {0};
        long status = 0;
        int rc = cli_http(o, "GET", "/v1/healthz", NULL, 2000, &status, &b, err, sizeof(err));
        free(b.data);
        if (rc == -ECONNREFUSED || rc == -EIO) return 0; // refused, or reset while closing
        nanosleep(&nap, NULL);
    }
    fprintf(stderr, "evowidth: evowidthd at %s is still answering after %.0f s\n", o->url,
            CLI_STOP_WAIT_S);
    return 1;
}

static int cli_run(const struct cli_cmd *c, struct cli_opts *o, int n_pos, char **pos)
{
    char path[128], err[256];
    switch (c->kind) {
    case CLI_PLAIN: break;
    case CLI_HISTORY:
        snprintf(path, sizeof(path), "%s?points=%ld", c->path, o->points);
        return cli_call(o, c->method, path, NULL, c->show);
    case CLI_POLICY:
        if (n_pos == 0 || strcmp(pos[0], "get") == 0) {
            if (n_pos > 1) break;
            return cli_call(o, "GET", c->path, NULL, c->show);
        }
        if (strcmp(pos[0], "set") == 0 && n_pos > 1) {
            char *body = cli_policy_body(n_pos - 1, pos + 1, err, sizeof(err));
            if (!body) {
                fprintf(stderr, "evowidth policy set: %s\n", err);
                return 2;
            }
            int rc = cli_call(o, "PATCH", c->path, body, c->show);
            cJSON_free(body);
            return rc;
        }
        cli_usage(stderr, c->name);
        return 2;
    case CLI_STOP: {
        int rc = cli_call(o, c->method, c->path, NULL, c->show);
        if (rc != 0 || o->no_wait) return rc;
        if ((rc = cli_wait_gone(o)) == 0 && !o->json) printf("stopped\n");
        return rc;
    }
    }
    if (n_pos > 0) {
        cli_usage(stderr, c->name);
        return 2;
    }
    return cli_call(o, c->method, c->path, NULL, c->show);
}

int dmn_cmd_client(int argc, char **argv)
{
    const struct cli_cmd *c = NULL;
    for (size_t i = 0; i < sizeof(CLI_CMDS) / sizeof(CLI_CMDS[0]); i++)
        if (strcmp(argv[0], CLI_CMDS[i].name) == 0) c = &CLI_CMDS[i];
    if (!c) {
        fprintf(stderr, "evowidth: \"%s\" is not a client command\n", argv[0]);
        return 2;
    }
    struct cli_opts o = {.points = 20, .timeout_s = 120};
    char err[512];
    const char *env_url = getenv("EVOWIDTH_URL"), *env_tok = getenv("EVOWIDTH_TOKEN");
    const char *url = env_url && env_url[0] ? env_url : CLI_DEFAULT_URL, *token_file = NULL;
    if (env_tok) snprintf(o.token, sizeof(o.token), "%s", env_tok);
    char **pos = calloc((size_t)argc, sizeof(char *));
    int n_pos = 0, code = 2;
    if (!pos) return 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        const char *eq = strncmp(a, "--", 2) == 0 ? strchr(a, '=') : NULL;
        size_t an = eq ? (size_t)(eq - a) : strlen(a);
#define CLI_OPT(name) (an == strlen(name) && strncmp(a, name, an) == 0)
#define CLI_VAL()                                                                                  \
    do {                                                                                           \
        if (eq)                                                                                    \
            val = eq + 1;                                                                          \
        else if (i + 1 < argc)                                                                     \
            val = argv[++i];                                                                       \
        else {                                                                                     \
            fprintf(stderr, "evowidth %s: %s needs a value\n", c->name, a);                        \
            goto out;                                                                              \
        }                                                                                          \
    } while (0)
        if (CLI_OPT("--help") || CLI_OPT("-h")) {
            cli_usage(stdout, c->name);
            code = 0;
            goto out;
        } else if (CLI_OPT("--json")) {
            o.json = 1;
        } else if (CLI_OPT("--no-wait")) {
            o.no_wait = 1;
        } else if (CLI_OPT("--url")) {
            CLI_VAL();
            url = val;
        } else if (CLI_OPT("--token-file")) {
            CLI_VAL();
            token_file = val;
        } else if (CLI_OPT("--points") || CLI_OPT("--timeout")) {
            int is_points = CLI_OPT("--points");
            CLI_VAL();
            char *end;
            long v = strtol(val, &end, 10);
            if (!val[0] || *end || v < 1 || v > 100000) {
                fprintf(stderr, "evowidth %s: %s \"%s\": expected an integer in [1, 100000]\n",
                        c->name, is_points ? "--points" : "--timeout", val);
                goto out;
            }
            if (is_points)
                o.points = v;
            else
                o.timeout_s = v;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "evowidth %s: unknown option %s\n", c->name, a);
            cli_usage(stderr, c->name);
            goto out;
        } else {
            pos[n_pos++] = argv[i];
        }
#undef CLI_OPT
#undef CLI_VAL
    }
    if (cli_set_url(&o, url, err, sizeof(err)) < 0 ||
        (token_file && cli_read_token(&o, token_file, err, sizeof(err)) < 0)) {
        fprintf(stderr, "evowidth %s: %s\n", c->name, err);
        goto out;
    }
    for (const char *t = o.token; *t; t++) {
        if ((unsigned char)*t < 0x20 || *t == 0x7f) { // it goes into a header line
            fprintf(stderr, "evowidth %s: the token holds control characters\n", c->name);
            goto out;
        }
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "evowidth: libcurl failed to initialise\n");
        code = 1;
        goto out;
    }
    code = cli_run(c, &o, n_pos, pos);
    curl_global_cleanup();
out:
    free(pos);
    return code;
}

int dmn_cmd_layers_any(int argc, char **argv)
{
    // `evowidth layers MODEL` reads a saved model; without a file it asks the daemon.
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] != '-') {
            if (i > 1 &&
                (strcmp(argv[i - 1], "--url") == 0 || strcmp(argv[i - 1], "--token-file") == 0))
                continue;
            return dmn_cmd_layers(argc, argv);
        }
    }
    if (argc == 2 && strcmp(argv[1], "--help") == 0) {
        printf("usage: evowidth layers MODEL   (a saved model or checkpoint)\n");
        cli_usage(stdout, "layers");
        return 0;
    }
    return dmn_cmd_client(argc, argv);
}
