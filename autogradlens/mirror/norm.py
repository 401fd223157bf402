"""Normalisation layers: batch, layer, group and weight norm (and their double backward)."""

from __future__ import annotations

import math

import numpy as np

from .table import Unsupported, rule


def _bn_axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _bcast(v, x):
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


@rule("NativeBatchNormBackward0")
def _batchnorm(c):
    x, w, g = c.s["input"], c.s.get("weight"), c.g
    ax = _bn_axes(x)
    if c.a["training"]:
        mean, invstd = _bcast(c.s["result1"], x), _bcast(c.s["result2"], x)
    else:
        mean = _bcast(c.s["running_mean"], x)
        invstd = _bcast(1 / np.sqrt(c.s["running_var"] + c.a["eps"]), x)
    xmu = x - mean
    dot = (g * xmu).sum(axis=ax)
    gsum = g.sum(axis=ax)
    wv = 1.0 if w is None else _bcast(w, x)
    if c.a["training"]:
        n = x.size // x.shape[1]
        k = _bcast(dot, x) * invstd * invstd / n
        dx = (g - _bcast(gsum, x) / n - xmu * k) * invstd * wv
    else:
        dx = g * invstd * wv
    dw = dot * invstd.reshape(-1)
    return (dx, dw, gsum)


@rule("NativeLayerNormBackward0")
def _layernorm(c):
    x, w, g = c.s["input"], c.s.get("weight"), c.g
    k = len(c.a["normalized_shape"])
    ax = tuple(range(x.ndim - k, x.ndim))
    n = math.prod(x.shape[x.ndim - k:])
    mean, rstd = c.s["result1"], c.s["result2"]
    xhat = (x - mean) * rstd
    gh = g if w is None else g * w
    dx = rstd / n * (n * gh - gh.sum(axis=ax, keepdims=True) - xhat * (gh * xhat).sum(axis=ax, keepdims=True))
    rows = tuple(range(x.ndim - k))
    return (dx, None if w is None else c.dtype_sum(g * xhat, rows), c.dtype_sum(g, rows) if w is not None else None)


def _proj(v, xh, ax):  # v - mean(v) - xhat * mean(v * xhat) over the normalised axes
    return v - v.mean(axis=ax, keepdims=True) - xh * (v * xh).mean(axis=ax, keepdims=True)


@rule("NativeGroupNormBackward0")
def _groupnorm(c):
    x, w, g, groups = c.s["input"], c.s.get("weight"), c.g, c.a["group"]
    n, ch = x.shape[0], x.shape[1]
    xs = x.reshape(n, groups, -1)
    mean, rstd = c.s["result1"].reshape(n, groups, 1), c.s["result2"].reshape(n, groups, 1)
    xh = (xs - mean) * rstd
    gh = g if w is None else g * w.reshape((1, ch) + (1,) * (x.ndim - 2))
    dx = (rstd * _proj(gh.reshape(n, groups, -1), xh, 2)).reshape(x.shape)
    ax = (0,) + tuple(range(2, x.ndim))
    dw = (g * xh.reshape(x.shape)).sum(axis=ax)
    return (dx, dw, g.sum(axis=ax))


def _norm_double(go, x, w, xh, r, ggx, ggw, ggb, ax, wshape, wax):
    """Gradients of (dx, dw, db) = norm_backward(go, x, w) w.r.t. go, x, w: the normalisation over `ax` with
    r = 1/std and xh = (x - mean) r; w broadcasts to x with shape wshape and sums back over `wax`."""
    n = math.prod(x.shape[a] for a in ax)
    wb = None if w is None else w.reshape(wshape)
    gh = go if wb is None else go * wb
    d_go = d_x = d_w = None
    if ggx is not None:
        pg = _proj(ggx, xh, ax)
        d_go = r * pg if wb is None else r * pg * wb
        m1, m2 = gh.mean(axis=ax, keepdims=True), (gh * xh).mean(axis=ax, keepdims=True)
        a = (ggx * (gh - m1 - xh * m2)).sum(axis=ax, keepdims=True)
        sx = (ggx * xh).sum(axis=ax, keepdims=True)
        d_x = -(r * r / n) * (xh * a + n * m2 * pg + sx * (gh - m1 - xh * m2))
        if wb is not None:
            d_w = (go * r * pg).sum(axis=wax).reshape(w.shape)
    if ggw is not None:
        u = go * ggw.reshape(wshape)
        t = r * _proj(u, xh, ax)
        d_x = t if d_x is None else d_x + t
        t = xh * ggw.reshape(wshape)
        d_go = t if d_go is None else d_go + t
    if ggb is not None:
        t = np.broadcast_to(ggb.reshape(wshape), x.shape)
        d_go = t if d_go is None else d_go + t
    return d_go, d_x, d_w


@rule("NativeLayerNormBackwardBackward0")
def _layernorm_bb(c):  # slots (grad_out, input, mean, rstd, weight, bias)
    go, x, w = c.s["grad_out"], c.s["input"], c.s.get("weight")
    k = len(c.a["normalized_shape"])
    ax = tuple(range(x.ndim - k, x.ndim))
    xh = (x - c.s["mean"]) * c.s["rstd"]
    ggx, ggw, ggb = (list(c.gs) + [None] * 3)[:3]
    d_go, d_x, d_w = _norm_double(go, x, w, xh, c.s["rstd"], ggx, ggw, ggb, ax, x.shape[x.ndim - k:],
                                  tuple(range(x.ndim - k)))
    return (d_go, d_x, None, None, d_w, None)


@rule("NativeBatchNormBackwardBackward0")
def _batchnorm_bb(c):  # slots (grad_out, input, weight, save_mean, save_invstd)
    go, x, w = c.s["grad_out"], c.s["input"], c.s.get("weight")
    ggx, ggw, ggb = (list(c.gs) + [None] * 3)[:3]
    ax = _bn_axes(x)
    wshape = (1, -1) + (1,) * (x.ndim - 2)
    if c.a["train"]:
        mean, r = _bcast(c.s["save_mean"], x), _bcast(c.s["save_invstd"], x)
        d_go, d_x, d_w = _norm_double(go, x, w, (x - mean) * r, r, ggx, ggw, ggb, ax, wshape, ax)
    else:  # dx = go w r, dw = sum(go (x - mean) r), db = sum(go): bilinear in go and (w, x)
        r = _bcast(1 / np.sqrt(c.s["running_var"] + c.a["eps"]), x)
        xh = (x - _bcast(c.s["running_mean"], x)) * r
        wb = 1.0 if w is None else _bcast(w, x)
        d_go = d_x = d_w = None
        if ggx is not None:
            d_go = ggx * (r * wb)
            d_w = None if w is None else (ggx * (go * r)).sum(axis=ax)
        if ggw is not None:
            t = xh * ggw.reshape(wshape)
            d_go = t if d_go is None else d_go + t
            d_x = go * (r * ggw.reshape(wshape))
        if ggb is not None:
            t = np.broadcast_to(ggb.reshape(wshape), x.shape)
            d_go = t if d_go is None else d_go + t
    return (d_go, d_x, d_w, None, None)


@rule("WeightNormInterfaceBackward0")
def _weight_norm(c):  # w = g v / ||v||, the norm over all axes but `dim` (PyTorch's fused path): slots (v, g)
    if len(c.gs) > 1 and c.gs[1] is not None:
        raise Unsupported("a gradient flowing into weight norm's second output (the norms)")
    v, g, norm = c.s["v"], c.s["g"], c.s["result1"]
    dim = c.a["dim"] % v.ndim
    shape = tuple(v.shape[a] if a == dim else 1 for a in range(v.ndim))
    n, a = norm.reshape(shape), (g / norm).reshape(shape)
    s = (c.g * v).sum(axis=tuple(a for a in range(v.ndim) if a != dim), keepdims=True)
    return (c.g * a - v * (a * s / (n * n)), (s / n).reshape(g.shape))
