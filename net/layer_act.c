/* net/layer_act.c: ReLU, element-wise in any layout. No tensors, no workspace: backward
 * reads the saved input. The derivative at exactly 0 is taken as 1 (GradMax's "relu1"): a
 * unit grown with zero incoming weights then still receives gradient, and nothing else
 * changes since an input is exactly 0 with probability zero. */
#include "net/net_internal.h"

static int relu_shape(struct net_layer *l, char *err, size_t errlen)
{
    l->out = l->in;
    return 0;
}

static size_t relu_tensors(const struct net_layer *l, struct net__tdesc *t)
{
    return 0;
}

static size_t relu_zero(const struct net_layer *l, size_t B)
{
    return 0;
}

static void relu_forward(struct net *n, struct net_layer *l, float *out, const float *inp, size_t B,
                         int training)
{
    const size_t N = B * l->in.c * l->in.h * l->in.w;
#pragma omp parallel for schedule(static) if (N > 65536)
    for (size_t i = 0; i < N; i++) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}

static void relu_backward(struct net *n, struct net_layer *l, float *dinp, const float *dout,
                          const float *inp, const float *out, size_t B)
{
    if (!dinp) return;
    const size_t N = B * l->in.c * l->in.h * l->in.w;
#pragma omp parallel for schedule(static) if (N > 65536)
    for (size_t i = 0; i < N; i++) dinp[i] = inp[i] >= 0.0f ? dout[i] : 0.0f;
}

static size_t relu_macs(const struct net_layer *l)
{
    return 0;
}

const struct net__ops net__relu_ops = {relu_shape, relu_tensors, relu_zero,     relu_zero,
                                       NULL,       relu_forward, relu_backward, relu_macs};
