/* net/optim.c: optimizers and learning-rate schedules.
 *
 * The update is one flat loop over the parameter arena; weight decay applies only where
 * the tensor table says so (weights, not biases or BN), so the loop walks tensor by tensor.
 * SGD:   g' = g + wd*w; m = mu*m + g'; step = nesterov ? g' + mu*m : m; w -= lr*step.
 * AdamW: m, v moments with bias correction; decoupled decay w -= lr*wd*w. */
#include <math.h>

#include "net/net.h"
#include "net/net_internal.h"

void net_optim_step(struct net *n, struct net_optim *o, float lr)
{
    o->t++;
    const float mu = o->momentum, wd = o->weight_decay;
    const float b1 = o->beta1, b2 = o->beta2, eps = o->eps;
    const float bc1 = 1.0f - powf(b1, (float)o->t), bc2 = 1.0f - powf(b2, (float)o->t);
    // Each gradient is zeroed as it is used, so the next net_zero_grad has nothing to do.
    for (size_t ti = 0; ti < n->n_tensors; ti++) {
        const struct net_tensor *t = &n->tensors[ti];
        if (t->arena != NET_ARENA_PARAM) continue;
        float *w = n->params + t->off, *g = n->grads + t->off;
        float *m = n->m + t->off, *v = n->v + t->off;
        const float d = t->decay ? wd : 0.0f;
        const size_t N = t->n;
        if (o->kind == NET_SGD) {
            if (n->tensors[ti].fused) { // stepped by net_backward_update already
                n->tensors[ti].fused = 0;
                continue;
            }
            const struct net__sgd s = {w, m, lr, mu, d, o->nesterov};
            const size_t CH = 4096;
#pragma omp parallel for schedule(static) if (N > 32768)
            for (size_t c = 0; c < N; c += CH) net__sgd_span(&s, g + c, c, N - c < CH ? N - c : CH);
        } else {
#pragma omp parallel for schedule(static) if (N > 32768)
            for (size_t i = 0; i < N; i++) {
                const float gi = g[i];
                g[i] = 0.0f;
                m[i] = b1 * m[i] + (1.0f - b1) * gi;
                v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
                float mh = m[i] / bc1, vh = v[i] / bc2;
                w[i] -= lr * (mh / (sqrtf(vh) + eps) + d * w[i]);
            }
        }
    }
    n->grads_zero = 1;
}

size_t net_backward_update(struct net *n, const uint8_t *y, size_t B, struct net_optim *o, float lr)
{
    n->fuse = o->kind == NET_SGD && n->grads_zero ? o : NULL;
    n->fuse_lr = lr;
    net_backward(n, y, B);
    n->fuse = NULL;
    size_t fused = 0;
    for (size_t ti = 0; ti < n->n_tensors; ti++) fused += n->tensors[ti].fused != 0;
    net_optim_step(n, o, lr);
    return fused;
}

float net_sched_lr(const struct net_sched *s, size_t step)
{
    if (s->warmup_steps && step < s->warmup_steps)
        return s->lr * (float)(step + 1) / (float)s->warmup_steps;
    switch (s->kind) {
    case NET_SCHED_STEP: {
        size_t k = s->step_size ? (step - s->warmup_steps) / s->step_size : 0;
        return s->lr * powf(s->gamma, (float)k);
    }
    case NET_SCHED_COSINE: {
        size_t span = s->total_steps > s->warmup_steps ? s->total_steps - s->warmup_steps : 1;
        double p = (double)(step - s->warmup_steps) / (double)span;
        if (p > 1.0) p = 1.0;
        return s->min_lr + (s->lr - s->min_lr) * 0.5f * (1.0f + (float)cos(M_PI * p));
    }
    case NET_SCHED_CONST:
    default: return s->lr;
    }
}

// ---- group lasso -------------------------------------------------------------------------

/* One group: elements w[i * stride] for i < count. Returns ||w_g|| and adds its gradient. */
static double gl_group(float *g, const float *w, size_t count, size_t stride, float lambda)
{
    double s = 0.0;
    for (size_t i = 0; i < count; i++) s += (double)w[i * stride] * w[i * stride];
    double nrm = sqrt(s);
    if (nrm > 0.0) {
        float k = (float)(lambda / nrm);
        for (size_t i = 0; i < count; i++) g[i * stride] += k * w[i * stride];
    }
    return nrm;
}

double net_group_lasso(struct net *n, float lambda)
{
    if (lambda <= 0.0f) return 0.0;
    n->grads_zero = 0;
    double pen = 0.0;
    for (size_t li = 0; li < n->n_layers; li++) {
        const struct net_layer *l = &n->layers[li];
        if ((l->spec.kind != NET_DENSE && l->spec.kind != NET_CONV) || l->spec.rank) continue;
        const struct net_tensor *t = net_tensor_get(n, li, "w");
        float *w = n->params + t->off, *g = n->grads + t->off;
        const size_t OUT = t->dims[0], IN = t->dims[1], KK = t->dims[2] * t->dims[3];
        // Rows: unit o owns w[o, :, :, :] (contiguous IN*KK values).
        for (size_t o = 0; o < OUT; o++)
            pen += gl_group(g + o * IN * KK, w + o * IN * KK, IN * KK, 1, lambda);
        // Columns: input channel c owns w[:, c, :, :] (OUT runs of KK values).
        for (size_t c = 0; c < IN; c++) {
            double nrm = sqrt(net_mid_sqnorm(w, OUT, IN, KK, c));
            pen += nrm;
            if (nrm == 0.0) continue;
            float kf = (float)(lambda / nrm);
            for (size_t o = 0; o < OUT; o++)
                for (size_t k = 0; k < KK; k++)
                    g[(o * IN + c) * KK + k] += kf * w[(o * IN + c) * KK + k];
        }
    }
    return (double)lambda * pen;
}
