"""Softmax, log-softmax and the losses (and their double backward)."""

from __future__ import annotations

import numpy as np

from .table import rule, unsigned


@rule("LogSoftmaxBackward0")
def _log_softmax(c):
    d = c.a["dim"]
    return (c.g - np.exp(c.s["result"]) * c.g.sum(axis=d, keepdims=True),)


@rule("SoftmaxBackward0", "SafeSoftmaxBackward0")
def _softmax(c):
    y, d = c.s["result"], c.a["dim"]
    return (y * (c.g - (c.g * y).sum(axis=d, keepdims=True)),)


@rule("NllLossBackward0", "NllLoss2DBackward0")
def _nll(c):  # x (N, C, *) or (C,), target (N, *) or ()
    x, t, w = c.s["self"], c.s["target"], c.s.get("weight")
    red, ignore = c.a["reduction"], unsigned(c.a["ignore_index"])
    xm = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1]) if x.ndim > 1 else x.reshape(1, -1)
    tt = t.reshape(-1)
    keep = tt != ignore
    ts = np.where(keep, tt, 0)
    rows = np.arange(tt.size)
    gi = c.g.reshape(-1) if red == "none" else np.broadcast_to(c.g.reshape(()), tt.shape)
    gi = -gi if w is None else -w[ts] * gi
    if red == "mean":
        gi = gi / float(c.s["total_weight"])
    out = c.zeros(xm.shape)
    out[rows[keep], ts[keep]] = gi[keep]
    if x.ndim > 1:
        return (np.moveaxis(out.reshape(x.shape[:1] + x.shape[2:] + x.shape[1:2]), -1, 1),)
    return (out.reshape(x.shape),)


@rule("BinaryCrossEntropyWithLogitsBackward0")
def _bce_logits(c):
    x, t, w, pw, red = c.s["self"], c.s["target"], c.s.get("weight"), c.s.get("pos_weight"), c.a["reduction"]
    sig = 1 / (1 + np.exp(-x))
    d = sig - t if pw is None else (pw * t + 1 - t) * sig - pw * t
    if w is not None:
        d = d * w
    d = d * c.g if red == "none" else d * (c.g[()] / x.size if red == "mean" else c.g[()])
    return (d, None)


@rule("MseLossBackward0")
def _mse(c):
    x, t, red = c.s["self"], c.s["target"], c.a["reduction"]
    norm = 2.0 / x.size if red == "mean" else 2.0
    d = norm * (x - t) * c.g
    return (d, -d)


def _reduce_factor(c, n):
    red = c.a["reduction"]
    return c.g if red == "none" else (c.g / n if red == "mean" else c.g)


@rule("BinaryCrossEntropyBackward0")
def _bce(c):
    x, t, w = c.s["self"], c.s["target"], c.s.get("weight")
    g = _reduce_factor(c, x.size)
    dx = g * ((x - t) / np.maximum((1 - x) * x, 1e-12))
    dt = g * (np.maximum(np.log1p(-x), -100.0) - np.maximum(np.log(x), -100.0))
    if w is not None:
        dx, dt = dx * w, dt * w
    return (dx, dt)


@rule("LogSoftmaxBackwardDataBackward0")
def _log_softmax_bb(c):  # grad_output - exp(output) * grad_output.sum(dim)
    go, y, d = c.s["grad_output"], c.s["output"], c.a["dim"]
    p = np.exp(y)
    return (c.g - (c.g * p).sum(axis=d, keepdims=True), c.g * (-go.sum(axis=d, keepdims=True) * p))


@rule("SoftmaxBackwardDataBackward0")
def _softmax_bb(c):  # y * (grad_output - sum(grad_output * y))
    go, y, d = c.s["grad_output"], c.s["output"], c.a["dim"]
    gy = (c.g * y).sum(axis=d, keepdims=True)
    dgo = y * (c.g - (c.g * y).sum(axis=d, keepdims=True))
    dy = c.g * (go - (go * y).sum(axis=d, keepdims=True)) - go * gy
    return (dgo, dy)


@rule("NllLossBackwardBackward0")
def _nll_bb(c):  # slots (grad_output, self): the incoming gradient's nll_loss, and zero
    t, w, red = c.s["target"].reshape(-1), c.s.get("weight"), c.a["reduction"]
    ignore = unsigned(c.a["ignore_index"])
    gg = c.g.reshape(-1, c.g.shape[-1])
    keep = t != ignore
    tt = np.where(keep, t, 0)
    wt = np.ones(t.shape) if w is None else w[tt]
    wt = np.where(keep, wt, 0.0)
    picked = gg[np.arange(tt.size), tt] * -wt
    zero = c.zeros(c.in_shapes[1]) if c.in_shapes[1] is not None else None
    if red == "none":
        return (picked.reshape(c.s["target"].shape), zero)
    out = picked.sum()
    return (out / wt.sum() if red == "mean" else out, zero)


def _loss_norm(c, n):
    red = c.a["reduction"]
    return c.g if red == "none" else c.g / n if red == "mean" else c.g


@rule("HuberLossBackward0")
def _huber(c):
    z, dl = c.s["self"] - c.s["target"], c.a["delta"]
    d = _loss_norm(c, z.size) * np.where(z < -dl, -dl, np.where(z > dl, dl, z))
    return (d, -d)


@rule("SmoothL1LossBackward0")
def _smooth_l1(c):
    z, beta = c.s["self"] - c.s["target"], c.a["beta"]
    inner = z / beta if beta else np.zeros(z.shape)
    d = _loss_norm(c, z.size) * np.where(z < -beta, -1.0, np.where(z > beta, 1.0, inner))
    return (d, -d)


@rule("SoftMarginLossBackward0")
def _soft_margin(c):  # mean log(1 + exp(-y x)); the target gets no gradient
    x, t = c.s["self"], c.s["target"]
    norm = 1.0 / x.size if c.a["reduction"] == "mean" else 1.0
    z = np.exp(-t * x)
    return (c.g * (-norm * t * z / (1 + z)),)


@rule("MultiMarginLossBackward0")
def _multi_margin(c):
    """The multiclass SVM loss, sum over j != y of max(0, margin - x_y + x_j)^p (weighted by weight[y]) / classes:
    each violating class j gets h = 1 (p = 1) or 2 z (p = 2) times 1/classes (and 1/samples for the mean), the
    true class minus their sum (PyTorch's CPU kernel, before the incoming gradient multiplies)."""
    x, t, w = c.s["self"], c.s["target"].astype(np.int64).reshape(-1), c.s.get("weight")
    p, red = c.a["p"], c.a["reduction"]
    x2 = x.reshape((1, -1)) if x.ndim == 1 else x
    n, k = x2.shape
    rows = np.arange(n)
    z = c.a["margin"] - x2[rows, t][:, None] + x2
    on = (z > 0) & (np.arange(k)[None, :] != t[:, None])
    g0 = 1.0 / (n * k) if red == "mean" else 1.0 / k
    h = np.where(on, g0 if p == 1 else 2 * g0 * z, 0.0)
    if w is not None:
        h = h * w[t][:, None]
    h = np.where(np.arange(k)[None, :] == t[:, None], -h.sum(axis=1, keepdims=True), h)
    g = c.g.reshape((n, 1)) if red == "none" and x.ndim == 2 else c.g
    return ((g * h).reshape(x.shape),)
