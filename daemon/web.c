/* daemon/web.c: the dashboard: GET / and /dashboard answer web/index.html, GET /assets/NAME
 * its script, style sheet and uPlot (all embedded in the binary at build time by
 * scripts/embed_assets.py, so the page works offline and matches the daemon it comes from).
 * The page reads /v1/status, /v1/history, /v1/events, /v1/policy and the layers' spectra,
 * then follows GET /v1/stream; with the token it PATCHes the policy and POSTs the actions.
 * Loop thread. */
#include <string.h>

#include "daemon/server_internal.h"

static const struct dmn_asset *dmn__asset(const char *name)
{
    for (size_t i = 0; i < DMN_N_ASSETS; i++)
        if (!strcmp(DMN_ASSETS[i].name, name)) return &DMN_ASSETS[i];
    return NULL;
}

static int dmn__send_asset(struct api_resp *r, const struct dmn_asset *a)
{
    // The assets change only with the binary: a reload after an upgrade must not mix versions.
    api_resp_header(r, "Cache-Control", "no-cache");
    return api_resp_text(r, a->ctype, (const char *)a->data, a->len) < 0
               ? api_resp_error(r, 503, NULL, "out of memory")
               : 200;
}

int dmn__h_page(struct api_req *q, struct api_resp *r, void *ctx)
{
    const struct dmn_asset *a = dmn__asset("index.html");
    if (!a) return api_resp_error(r, 404, NULL, "this evowidthd was built without its dashboard");
    return dmn__send_asset(r, a);
}

int dmn__h_asset(struct api_req *q, struct api_resp *r, void *ctx)
{
    const struct dmn_asset *a = dmn__asset(q->params[0]);
    if (!a || !strcmp(q->params[0], "index.html"))
        return api_resp_error(r, 404, NULL, "no asset named \"%.64s\"", q->params[0]);
    return dmn__send_asset(r, a);
}
