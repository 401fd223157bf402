"""Softmax, log-softmax and the losses (and their double backward)."""

from __future__ import annotations

import numpy as np

from .bounds import Mag
from .table import Unsupported, round_to, rule, unsigned


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
    # the target's: -x, or log(1 - sigmoid(x)) - pos_weight log(sigmoid(x)) (PyTorch's ..._target_backward)
    dt = -x if pw is None else np.log(1 - sig) - pw * np.log(sig)
    g = c.g if red == "none" else c.g[()] / x.size if red == "mean" else c.g[()]
    if w is not None:
        d, dt = d * w, dt * w
    return (d * g, dt * g)


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
    x2 = x.reshape((1, -1)) if x.ndim <= 1 else x
    n, k = x2.shape
    rows = np.arange(n)
    z = c.a["margin"] - x2[rows, t][:, None] + x2
    on = (z > 0) & (np.arange(k)[None, :] != t[:, None])
    g0 = 1.0 / (n * k) if red == "mean" else 1.0 / k
    dt = c.in_dtypes[0] if c.in_dtypes and c.in_dtypes[0] in ("float32", "float16", "bfloat16") else None
    if dt is not None:  # PyTorch computes the coefficient in the tensor's dtype
        g0 = float(round_to(dt, np.float64(g0)))
    h = np.where(on, g0 if p == 1 else 2 * g0 * z, 0.0)
    if w is not None:
        h = h * w[t][:, None]
    h = np.where(np.arange(k)[None, :] == t[:, None], -h.sum(axis=1, keepdims=True), h)
    g = c.g.reshape((n, 1)) if red == "none" and x.ndim == 2 else c.g
    return ((g * h).reshape(x.shape),)


@rule("MultilabelMarginLossBackward0")
def _multilabel_margin(c):
    """sum over the targets j (up to the first -1) and the other classes i of max(0, 1 - (x_j - x_i)) / classes: each
    violating pair adds 1/classes to i and takes it from j (and 1/samples for the mean), as PyTorch's CPU kernel."""
    x, t, is_t = c.s["self"], c.s["target"].astype(np.int64), c.s["is_target"].astype(bool)
    red = c.a["reduction"]
    x2, t2, m2 = (x.reshape(1, -1), t.reshape(1, -1), is_t.reshape(1, -1)) if x.ndim <= 1 else (x, t, is_t)
    n, k = x2.shape
    xv = np.asarray(x2, dtype=np.float64)
    h = c.zeros((n, k))
    scale = 1.0 / k / (n if red == "mean" else 1)
    for s in range(n):
        for j in t2[s]:
            if j < 0:
                break
            on = (1 - xv[s, j] + xv[s] > 0) & ~m2[s]
            idx = np.nonzero(on)[0]
            np.add.at(h, (np.full(idx.size, s), idx), scale)
            np.add.at(h, (np.full(idx.size, s), np.full(idx.size, j)), -scale)
    g = c.g.reshape(n, 1) if red == "none" else c.g
    return ((g * h).reshape(x.shape),)


def _lse(xs, fs):
    """log(sum_k exp(x_k - m)) + m, m the largest x_k, over the x_k whose mask in `fs` is set (the others are -inf:
    their values are 0 here, so that magnitudes stay finite), each step as the CTC kernel takes it: (values, mask).
    On magnitudes: the error of a log-sum-exp is at most the largest error of its terms (it is 1-Lipschitz in each)
    plus its own roundings (exp, the sums and log: a few units of |log sum| + |m| + 1), so the magnitude is the
    largest of the terms' plus that, with 10 more roundings (the generic rules would add the terms' errors and m's
    again at every step: a bound doubling with every time step of the recursion)."""
    vals = [np.where(f, np.asarray(x), -np.inf) for x, f in zip(xs, fs)]
    fin = np.logical_or.reduce(fs)
    mx = np.where(fin, np.maximum.reduce(vals), 0.0)
    e = 0.0
    for v, f in zip(vals, fs):
        e = e + np.where(f, np.exp(np.where(f, v, 0.0) - mx), 0.0)
    lg = np.log(np.where(fin, e, 1.0))
    r = np.where(fin, lg + mx, 0.0)
    mags = [x for x in xs if isinstance(x, Mag)]
    if not mags:
        return r, fin
    worst = np.maximum.reduce([np.where(f, Mag.of(x).m, 0.0) for x, f in zip(xs, fs)])
    m = np.where(fin, worst + np.abs(lg) + np.abs(mx) + 1.0, 0.0)
    return Mag(m, r, max(x.n for x in mags) + 10), fin


def _ctc_coefficients(lp, la, nll, lab, n_in):
    """(T, C) d nll / d log_probs of one batch element as PyTorch's CPU kernel computes it: exp(lp) minus the
    posterior exp(log sum over the states s of label c of alpha + beta + nll - lp), beta by the recursion of
    eq. (10)-(11) of Graves et al. in log space, every log-sum-exp in the kernel's order (_lse); -inf entries are
    carried as masks."""
    ns = lab.size
    lpl = lp[:, lab]  # (T, ns): each state's label's log-probability
    skip = np.zeros(ns, dtype=bool)
    skip[:-2] = lab[2:] != lab[:-2]  # beta[t][s] adds beta[t + 1][s + 2]
    fin = np.zeros(ns, dtype=bool)
    fin[max(ns - 2, 0):] = True
    beta, fins = [None] * n_in, [None] * n_in
    beta[n_in - 1], fins[n_in - 1] = np.where(fin, lpl[n_in - 1], 0.0), fin
    for t in range(n_in - 2, -1, -1):
        b1, f1 = beta[t + 1], fins[t + 1]
        b2, b3 = (np.concatenate([b1[k:], np.zeros(min(k, ns))]) for k in (1, 2))  # beta[t + 1][s + k]
        f2, f3 = (np.concatenate([f1[k:], np.zeros(min(k, ns), dtype=bool)]) for k in (1, 2))
        lse, fin = _lse([b1, b2, b3], [f1, f2, f3 & skip])
        beta[t], fins[t] = np.where(fin, lse + lpl[t], 0.0), fin
    fin_a = np.isfinite(np.asarray(la))
    ab = [np.where(fin_a[:, s], la[:, s], 0.0) + np.stack([beta[t][s] for t in range(n_in)]) for s in range(ns)]
    fab = [fin_a[:, s] & np.array([fins[t][s] for t in range(n_in)]) for s in range(ns)]
    cols = []
    for k in range(np.shape(lp)[-1]):
        states = [s for s in range(ns - 1, -1, -1) if lab[s] == k]  # the kernel adds them in descending s
        if not states:
            cols.append(np.exp(lp[:, k]))
            continue
        acc, fa = np.where(fab[states[0]], ab[states[0]], 0.0), fab[states[0]]
        for s in states[1:]:
            acc, fa = _lse([acc, ab[s]], [fa, fab[s]])
        post = np.where(fa, np.exp(np.where(fa, acc + nll - lp[:, k], 0.0)), 0.0)
        cols.append(np.exp(lp[:, k]) - post)
    return np.stack(cols, axis=-1)


@rule("CtcLossBackward0", "CtcLossBackward1")
def _ctc_loss(c):
    """F.ctc_loss: the gradient PyTorch's kernel gives log_probs (exp(lp) - posterior, the one for logits under a
    log_softmax), times each batch element's incoming gradient; 0 beyond an element's input length."""
    lp, la, nll, g = c.s["log_probs"], c.s["result1"], c.s["result0"], c.g
    blank, zero_inf = c.a["blank"], c.a["zero_infinity"]
    targets = c.s["targets"]
    lengths = [c.a.get(k) if c.a.get(k) is not None else c.s.get(k) for k in ("input_lengths", "target_lengths")]
    n_in, n_tg = (np.asarray(x).reshape(-1).astype(np.int64) for x in lengths)
    lpv, nllv = np.asarray(lp), np.asarray(nll).reshape(-1)
    if lpv.ndim != 3:
        raise Unsupported("ctc_loss of unbatched log_probs")
    if not np.all(np.isfinite(lpv)):
        raise Unsupported("ctc_loss with infinite or NaN log_probs")
    coef = c.zeros(lpv.shape)
    off = np.concatenate([[0], np.cumsum(n_tg)])
    for b in range(lpv.shape[1]):
        if zero_inf and nllv[b] == np.inf:
            continue
        if not np.isfinite(nllv[b]):
            raise Unsupported("ctc_loss with an impossible alignment (an infinite loss) without zero_infinity")
        t_b, l_b = int(n_in[b]), int(n_tg[b])
        if t_b == 0:
            continue
        tg = targets[off[b]: off[b + 1]] if targets.ndim == 1 else targets[b, :l_b]
        lab = np.full(2 * l_b + 1, blank, dtype=np.int64)
        lab[1::2] = tg
        coef[:t_b, b, :] = _ctc_coefficients(lp[:t_b, b, :], la[b, :t_b, :2 * l_b + 1], nll[b], lab, t_b)
    gb = g.reshape(-1)
    return (coef * gb[None, :, None],) + (None,) * (len(c.in_shapes) - 1)
