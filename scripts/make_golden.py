#!/usr/bin/python3
"""Golden forward values for tests/test_net.c (the golden_* cases).

Regenerate (from the repository root, with Debian's python3-numpy; not the pyenv python3):
    /usr/bin/python3 scripts/make_golden.py
This rewrites tests/golden/*.txt; commit them together with any change to this script.

Each case is one layer of the engine computed here independently in float64 numpy from
float32-rounded inputs and parameters, so the C side can regenerate the same inputs without
files. The deterministic fill, which tests/test_net.c reproduces exactly:
  * input x of shape (B, C, H, W), flat index i in row-major order: x[i] = sin(0.37 i + 0.1)
  * the tested layer's trainable tensors in the engine's declaration order (BN running
    statistics are not trainable and are skipped), tensor j = 0, 1, 2, ..., flat index i
    in row-major order of its dims: t_j[i] = 0.5 sin(0.37 i + 0.7 (j + 1))
    (all values rounded to float32 before use)
  * labels (softmax_ce only): y[b] = b mod K
Declaration orders (see net/layer_*.c):
  conv  w (O,C,K,K) [b (O)]           factorized: u (O,R,1,1) v (R,C,K,K) [b]
  dense w (O,IN) [b]                  factorized: u (O,R) v (R,IN) [b]
  bn    gamma (C) beta (C)
  res   bn=0: c1.w (m,C,3,3) c1.b c2.w (O,m,3,3) c2.b [p.w (O,C,1,1) p.b]
        bn=1: c1.w bn1.gamma bn1.beta c2.w bn2.gamma bn2.beta [p.w bnp.gamma bnp.beta]
BN is in training mode (batch mean, biased variance, eps 1e-5).

File format: '#' comment lines (the first names the case), then whitespace-separated
numbers. Spatial outputs are written in (B, C, H, W) order, flat ones in (B, F) order; the
softmax_ce case holds the mean loss followed by the probabilities (B, K).
"""
import os
import numpy as np

EPS = 1e-5
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests', 'golden')


def f32(a):
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def fill_input(shape):
    n = int(np.prod(shape))
    return f32(np.sin(0.37 * np.arange(n) + 0.1)).reshape(shape)


def fill_params(shapes):
    out = []
    for j, shp in enumerate(shapes):
        n = int(np.prod(shp))
        out.append(f32(0.5 * np.sin(0.37 * np.arange(n) + 0.7 * (j + 1))).reshape(shp))
    return out


# ---- reference layers, all on (B, C, H, W) float64 ------------------------------------

def conv2d(x, w, b, s, p):
    B, C, H, W = x.shape
    O, _, K, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    OH, OW = (H + 2 * p - K) // s + 1, (W + 2 * p - K) // s + 1
    out = np.zeros((B, O, OH, OW))
    for i in range(OH):
        for j in range(OW):
            patch = xp[:, :, i * s:i * s + K, j * s:j * s + K]
            out[:, :, i, j] = np.einsum('bckl,ockl->bo', patch, w)
    if b is not None:
        out += b[None, :, None, None]
    return out


def bn_train(x, g, b):
    axes = (0, 2, 3) if x.ndim == 4 else (0,)
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    shp = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
    return (x - mu) / np.sqrt(var + EPS) * g.reshape(shp) + b.reshape(shp)


def relu(x):
    return np.maximum(x, 0.0)


def maxpool(x, k, s):
    B, C, H, W = x.shape
    OH, OW = (H - k) // s + 1, (W - k) // s + 1
    out = np.zeros((B, C, OH, OW))
    for i in range(OH):
        for j in range(OW):
            out[:, :, i, j] = x[:, :, i * s:i * s + k, j * s:j * s + k].max(axis=(2, 3))
    return out


def res(x, P, width, out, stride, bn):
    C = x.shape[1]
    proj = C != out or stride != 1
    if bn:
        c1w, g1, b1, c2w, g2, b2 = P[:6]
        h1 = relu(bn_train(conv2d(x, c1w, None, stride, 1), g1, b1))
        a2 = bn_train(conv2d(h1, c2w, None, 1, 1), g2, b2)
        sc = bn_train(conv2d(x, P[6], None, stride, 0), P[7], P[8]) if proj else x
    else:
        c1w, c1b, c2w, c2b = P[:4]
        h1 = relu(conv2d(x, c1w, c1b, stride, 1))
        a2 = conv2d(h1, c2w, c2b, 1, 1)
        sc = conv2d(x, P[4], P[5], stride, 0) if proj else x
    return relu(a2 + sc)


def res_shapes(C, width, out, stride, bn):
    proj = C != out or stride != 1
    if bn:
        s = [(width, C, 3, 3), (width,), (width,), (out, width, 3, 3), (out,), (out,)]
        if proj:
            s += [(out, C, 1, 1), (out,), (out,)]
    else:
        s = [(width, C, 3, 3), (width,), (out, width, 3, 3), (out,)]
        if proj:
            s += [(out, C, 1, 1), (out,)]
    return s


# ---- the cases (names and shapes must match the golden table in tests/test_net.c) ------

def cases():
    c = {}

    def conv_case(name, inshape, O, K, S, P, bias):
        x = fill_input(inshape)
        shapes = [(O, inshape[1], K, K)] + ([(O,)] if bias else [])
        p = fill_params(shapes)
        c[name] = ('conv %d->%d k%d s%d p%d%s, input %s' %
                   (inshape[1], O, K, S, P, ' bias' if bias else '', inshape),
                   conv2d(x, p[0], p[1] if bias else None, S, P))

    conv_case('conv_k3s1p1', (2, 2, 5, 5), 3, 3, 1, 1, True)
    conv_case('conv_k3s2p1', (2, 2, 5, 5), 3, 3, 2, 1, True)
    conv_case('conv_k5s1p2', (2, 2, 5, 5), 2, 5, 1, 2, True)
    conv_case('conv_k1', (2, 3, 4, 4), 2, 1, 1, 0, False)

    # factorized conv: k3 p1 to rank 2, then 1x1 to 3, bias
    x = fill_input((2, 2, 4, 4))
    u, v, b = fill_params([(3, 2, 1, 1), (2, 2, 3, 3), (3,)])
    c['conv_factorized'] = ('factorized conv 2->rank 2->3 k3 s1 p1 bias, input (2, 2, 4, 4)',
                            conv2d(conv2d(x, v, None, 1, 1), u, b, 1, 0))

    x = fill_input((2, 2, 4, 4))
    c['maxpool_k2'] = ('maxpool k2 s2, input (2, 2, 4, 4)', maxpool(x, 2, 2))
    x = fill_input((2, 2, 7, 7))
    c['maxpool_k3s2'] = ('maxpool k3 s2, input (2, 2, 7, 7)', maxpool(x, 3, 2))
    x = fill_input((2, 3, 3, 4))
    c['gap'] = ('global average pool, input (2, 3, 3, 4)', x.mean(axis=(2, 3)))

    x = fill_input((3, 2, 3, 3))
    g, b = fill_params([(2,), (2,)])
    c['bn_spatial'] = ('batch norm, training mode, input (3, 2, 3, 3)', bn_train(x, g, b))
    # flat BN: input (4, 1, 2, 3) flattened to (4, 6) features
    x = fill_input((4, 1, 2, 3)).reshape(4, 6)
    g, b = fill_params([(6,), (6,)])
    c['bn_flat'] = ('batch norm on flat features, training mode, input (4, 1, 2, 3) flattened',
                    bn_train(x, g, b))

    x = fill_input((2, 1, 3, 4)).reshape(2, 12)
    w, b = fill_params([(4, 12), (4,)])
    c['dense'] = ('dense 12->4 bias, input (2, 1, 3, 4) flattened', x @ w.T + b)
    u, v, b = fill_params([(4, 3), (3, 12), (4,)])
    c['dense_factorized'] = ('factorized dense 12->rank 3->4 bias, input (2, 1, 3, 4) flattened',
                             (x @ v.T) @ u.T + b)

    def res_case(name, inshape, width, out, stride, bn):
        x = fill_input(inshape)
        p = fill_params(res_shapes(inshape[1], width, out, stride, bn))
        c[name] = ('res width %d out %d stride %d bn %d, input %s' %
                   (width, out, stride, bn, inshape), res(x, p, width, out, stride, bn))

    res_case('res_identity', (2, 3, 4, 4), 2, 3, 1, 0)
    res_case('res_identity_bn', (2, 3, 4, 4), 2, 3, 1, 1)
    res_case('res_proj', (2, 2, 4, 4), 3, 3, 1, 0)
    res_case('res_proj_s2_bn', (2, 2, 5, 5), 2, 3, 2, 1)

    # softmax cross-entropy on the logits of a dense 6->5 (bias), labels b mod 5
    x = fill_input((3, 1, 2, 3)).reshape(3, 6)
    w, b = fill_params([(5, 6), (5,)])
    z = x @ w.T + b
    mx = z.max(axis=1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(z - mx).sum(axis=1))
    y = np.arange(3) % 5
    loss = np.mean(lse - z[np.arange(3), y])
    probs = np.exp(z - lse[:, None])
    c['softmax_ce'] = ('softmax cross-entropy: dense 6->5 bias on input (3, 1, 2, 3) flattened, '
                       'labels b mod 5; mean loss then probabilities (3, 5)',
                       np.concatenate([[loss], probs.ravel()]))
    return c


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    total = 0
    for name, (desc, val) in sorted(cases().items()):
        val = np.asarray(val, dtype=np.float64).ravel()
        lines = ['# %s: %s' % (name, desc),
                 '# generated by scripts/make_golden.py (float64 numpy); %d values' % val.size]
        for i in range(0, val.size, 6):
            lines.append(' '.join('%.9e' % v for v in val[i:i + 6]))
        text = '\n'.join(lines) + '\n'
        with open(os.path.join(OUT_DIR, name + '.txt'), 'w') as f:
            f.write(text)
        total += len(text)
    print('wrote %d cases, %d bytes, to %s' % (len(cases()), total, os.path.normpath(OUT_DIR)))


if __name__ == '__main__':
    main()
