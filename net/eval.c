/* net/eval.c: loss, accuracy, confusion matrix and per-class precision / recall / F1 of a net
 * on a data set, in eval mode (BN running statistics), batch by batch. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "net/net.h"

void net_eval_free(struct net_eval *ev)
{
    if (!ev) return;
    free(ev->confusion);
    free(ev->precision);
    free(ev->recall);
    free(ev->f1);
    memset(ev, 0, sizeof(*ev));
}

int net_evaluate(struct net *n, const struct net_dataset *d, size_t batch, struct net_eval *ev)
{
    const size_t K = n->n_classes, D = d->shape.c * d->shape.h * d->shape.w;
    memset(ev, 0, sizeof(*ev));
    if (d->n == 0 || batch == 0) return -EINVAL;
    // A data set of another shape, or labels beyond the classes, would be read out of
    // bounds by the forward pass (a model file and its data come from different places).
    if (D != n->in_shape.c * n->in_shape.h * n->in_shape.w) return -EINVAL;
    for (size_t i = 0; i < d->n; i++)
        if (d->y[i] >= K) return -EINVAL;
    ev->n_classes = K;
    ev->confusion = calloc(K * K, sizeof(size_t));
    ev->precision = calloc(K, sizeof(double));
    ev->recall = calloc(K, sizeof(double));
    ev->f1 = calloc(K, sizeof(double));
    if (!ev->confusion || !ev->precision || !ev->recall || !ev->f1 || net_reserve(n, batch) < 0) {
        net_eval_free(ev);
        return -ENOMEM;
    }
    double loss = 0.0;
    size_t correct = 0;
    for (size_t i = 0; i < d->n; i += batch) {
        size_t B = d->n - i < batch ? d->n - i : batch;
        float l = net_forward(n, d->x + i * D, d->y + i, B, 0);
        loss += (double)l * (double)B;
        for (size_t b = 0; b < B; b++) {
            const float *p = n->probs + b * K;
            size_t best = 0;
            for (size_t k = 1; k < K; k++)
                if (p[k] > p[best]) best = k;
            size_t t = d->y[i + b];
            ev->confusion[t * K + best]++;
            correct += best == t;
        }
    }
    ev->n = d->n;
    ev->loss = loss / (double)d->n;
    ev->accuracy = (double)correct / (double)d->n;
    for (size_t k = 0; k < K; k++) {
        size_t tp = ev->confusion[k * K + k], col = 0, row = 0;
        for (size_t j = 0; j < K; j++) {
            col += ev->confusion[j * K + k];
            row += ev->confusion[k * K + j];
        }
        ev->precision[k] = col ? (double)tp / (double)col : 0.0;
        ev->recall[k] = row ? (double)tp / (double)row : 0.0;
        double s = ev->precision[k] + ev->recall[k];
        ev->f1[k] = s > 0.0 ? 2.0 * ev->precision[k] * ev->recall[k] / s : 0.0;
    }
    return 0;
}
