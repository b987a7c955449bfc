/* cli/safetensors.c: a net's tensors as a safetensors file, for people who want raw arrays.
 *
 * The format: an unsigned 64-bit little-endian header length, a JSON header (padded with
 * spaces to a multiple of 8 bytes so the data are aligned), then the tensors' bytes. The
 * header maps each tensor name to {"dtype": "F32", "shape": [...], "data_offsets": [begin,
 * end]} (offsets into the data part) and "__metadata__" to string values: the layers as
 * JSON, the input shape, the class count and the input normalisation. Tensors are the net's
 * own, in arena order, with its names and shapes (conv weights (OUT, IN, K, K), dense
 * (OUT, IN), factorized "u" (OUT, R) and "v" (R, IN)); BN statistics included. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli/onnx.h"

static cJSON *st_layers(const struct net *n)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; arr && i < n->n_layers; i++) {
        const struct net_layer_spec *s = &n->layers[i].spec;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", s->name);
        cJSON_AddStringToObject(o, "type", net_kind_name(s->kind));
        if (s->kind == NET_DENSE || s->kind == NET_CONV || s->kind == NET_RES)
            cJSON_AddNumberToObject(o, "out", (double)s->out);
        if (s->kind == NET_RES) {
            cJSON_AddNumberToObject(o, "width", (double)s->width);
            cJSON_AddBoolToObject(o, "bn", s->bn);
        }
        if (s->rank) cJSON_AddNumberToObject(o, "rank", (double)s->rank);
        if (s->kind == NET_CONV || s->kind == NET_MAXPOOL)
            cJSON_AddNumberToObject(o, "k", (double)s->k);
        if (s->kind == NET_CONV || s->kind == NET_MAXPOOL || s->kind == NET_RES)
            cJSON_AddNumberToObject(o, "stride", (double)(s->stride ? s->stride : s->k));
        if (s->kind == NET_CONV) cJSON_AddNumberToObject(o, "pad", (double)s->pad);
        if (s->kind == NET_DENSE || s->kind == NET_CONV) cJSON_AddBoolToObject(o, "bias", s->bias);
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

/* The metadata object: every value a string, as the format requires. */
static cJSON *st_meta(const struct net *n)
{
    cJSON *m = cJSON_CreateObject();
    cJSON *layers = st_layers(n);
    char *ls = layers ? cJSON_PrintUnformatted(layers) : NULL;
    char buf[256], mean[128] = "", sd[128] = "";
    cJSON_Delete(layers);
    if (!m || !ls) {
        cJSON_Delete(m);
        free(ls);
        return NULL;
    }
    cJSON_AddStringToObject(m, "producer", "evowidth");
    cJSON_AddStringToObject(m, "layers", ls);
    free(ls);
    snprintf(buf, sizeof(buf), "[%zu,%zu,%zu]", n->in_shape.c, n->in_shape.h, n->in_shape.w);
    cJSON_AddStringToObject(m, "input_shape", buf);
    snprintf(buf, sizeof(buf), "%zu", n->n_classes);
    cJSON_AddStringToObject(m, "classes", buf);
    for (size_t c = 0; c < n->in_shape.c && c < 4; c++) {
        size_t lm = strlen(mean), lsd = strlen(sd);
        snprintf(mean + lm, sizeof(mean) - lm, "%s%.9g", c ? "," : "", (double)n->norm_mean[c]);
        snprintf(sd + lsd, sizeof(sd) - lsd, "%s%.9g", c ? "," : "", (double)n->norm_std[c]);
    }
    snprintf(buf, sizeof(buf), "[%s]", mean);
    cJSON_AddStringToObject(m, "normalize_mean", buf);
    snprintf(buf, sizeof(buf), "[%s]", sd);
    cJSON_AddStringToObject(m, "normalize_std", buf);
    cJSON_AddStringToObject(m, "input",
                            "x = (pixels / 255 - normalize_mean[c]) / normalize_std[c], NCHW");
    return m;
}

static void st_put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

int cli_safetensors_save(const char *path, const struct net *n, char *err, size_t errlen)
{
    cJSON *h = cJSON_CreateObject(), *meta = st_meta(n);
    char *hs = NULL;
    unsigned char *buf = NULL;
    int rc = -ENOMEM;
    if (!h || !meta) goto out;
    cJSON_AddItemToObject(h, "__metadata__", meta);
    meta = NULL;
    size_t off = 0;
    for (size_t i = 0; i < n->n_tensors; i++) {
        const struct net_tensor *t = &n->tensors[i];
        cJSON *o = cJSON_CreateObject(), *shape = cJSON_CreateArray(), *offs = cJSON_CreateArray();
        if (!o || !shape || !offs) {
            cJSON_Delete(o);
            cJSON_Delete(shape);
            cJSON_Delete(offs);
            goto out;
        }
        cJSON_AddStringToObject(o, "dtype", "F32");
        for (int d = 0; d < t->nd; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->dims[d]));
        cJSON_AddItemToObject(o, "shape", shape);
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        off += t->n * 4;
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToObject(o, "data_offsets", offs);
        cJSON_AddItemToObject(h, t->name, o);
    }
    if (!(hs = cJSON_PrintUnformatted(h))) goto out;
    size_t hl = strlen(hs), padded = (hl + 7) / 8 * 8, total = 8 + padded + off;
    if (!(buf = malloc(total))) goto out;
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, hs, hl);
    memset(buf + 8 + hl, ' ', padded - hl);
    unsigned char *p = buf + 8 + padded;
    for (size_t i = 0; i < n->n_tensors; i++) {
        const struct net_tensor *t = &n->tensors[i];
        const float *v = net_tensor_data(n, t);
        for (size_t k = 0; k < t->n; k++, p += 4) {
            uint32_t u;
            memcpy(&u, &v[k], 4);
            st_put_le32(p, u);
        }
    }
    rc = cli_write_atomic(path, buf, total, err, errlen);
out:
    if (rc == -ENOMEM) snprintf(err, errlen, "%s: out of memory", path);
    cJSON_Delete(meta);
    cJSON_Delete(h);
    free(hs);
    free(buf);
    return rc;
}
