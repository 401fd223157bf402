"""Reductions: sum, mean, max/min, cumulative ops, variance, norms, sort/topk, prod."""

from __future__ import annotations

import math

import numpy as np

from .indexing import along
from .table import norm_dims, rule, unsqueeze_to


@rule("SumBackward0")
def _sum(c):
    return (np.broadcast_to(c.g, c.a["self_sym_sizes"]),)


@rule("SumBackward1")
def _sum_dim(c):
    sizes = c.a["self_sym_sizes"]
    return (unsqueeze_to(c.g, sizes, norm_dims(c.a["dim"], len(sizes)), c.a["keepdim"]),)


@rule("MeanBackward0")
def _mean(c):
    return (np.broadcast_to(c.g, c.a["self_sym_sizes"]) / c.a["self_sym_numel"],)


@rule("MeanBackward1")
def _mean_dim(c):
    sizes = c.a["self_sym_sizes"]
    dims = norm_dims(c.a["dim"], len(sizes))
    n = math.prod(sizes[d] for d in dims)
    return (unsqueeze_to(c.g, sizes, dims, c.a["keepdim"]) / n,)


@rule("MaxBackward1", "MinBackward1")
def _max_all(c):
    x, y = c.s["self"], c.s["result"]
    mask = x == y
    return (np.where(mask, c.g / mask.sum(), 0.0),)


@rule("AmaxBackward0", "AminBackward0")
def _amax(c):
    x, y = c.s["self"], c.s["result"]
    dims = norm_dims(c.a["dim"], x.ndim)
    ye = unsqueeze_to(y, x.shape, dims, c.a["keepdim"])
    mask = x == ye
    count = mask.sum(axis=tuple(dims), keepdims=True)
    return (np.where(mask, unsqueeze_to(c.g, x.shape, dims, c.a["keepdim"]) / count, 0.0),)


@rule("MaxBackward0", "MinBackward0")
def _max_dim(c):
    sizes, d = c.a["self_sym_sizes"], c.a["dim"] % len(c.a["self_sym_sizes"])
    idx, g = c.s["indices"], c.g
    if not c.a["keepdim"]:
        idx, g = np.expand_dims(idx, d), np.expand_dims(g, d)
    out = c.zeros(sizes)
    np.put_along_axis(out, idx, g, axis=d)
    return (out,)


def _rcumsum(a, d):  # PyTorch's reversed_cumsum: flip, cumsum, flip
    return np.flip(np.cumsum(np.flip(a, d), axis=d), d)


@rule("CumsumBackward0")
def _cumsum(c):
    return (_rcumsum(c.g, c.a["dim"] % c.g.ndim),)


def _running_product(a, d):  # cumprod as products one after the other (magnitudes count each rounding)
    parts = [np.take(a, [0], axis=d)]
    for k in range(1, a.shape[d]):
        parts.append(parts[-1] * np.take(a, [k], axis=d))
    return np.concatenate(parts, axis=d)


@rule("CumprodBackward0")
def _cumprod(c):
    """y = cumprod(x): dx_k = sum_{j >= k} G_j y_j / x_k when x has no zero (PyTorch's reversed cumsum of y * G,
    divided by x). In a slice with zeros, first at z1, next at z2 (PyTorch's cumprod_backward): before z1 the
    same over [0, z1); at z1, y_{z1-1} * sum_{z1 <= j < z2} G_j prod(x[z1+1..j]); after z1, 0."""
    x, y, g = c.s["self"], c.s["result"], c.g
    if np.ndim(x) == 0 or x.shape[c.a["dim"] % x.ndim] == 1:
        return (g,)
    d = c.a["dim"] % x.ndim
    w = y * g
    zero = x == 0
    if not np.any(zero):
        return (_rcumsum(w, d) / x,)
    run = np.cumsum(zero, axis=d)  # zeros seen so far: 0 before z1, 1 in [z1, z2)
    before, first = run == 0, zero & (run == 1)
    out = np.where(before, _rcumsum(np.where(before, w, 0.0), d) / np.where(before, x, 1.0), 0.0)
    prods = _running_product(np.where((run == 1) & ~first, x, 1.0), d)
    z1 = np.expand_dims(np.argmax(first, axis=d), d)
    prev = np.where(z1 == 0, 1.0, np.take_along_axis(y, np.maximum(z1 - 1, 0), axis=d))
    at_z1 = (prods * np.where(run == 1, g, 0.0)).sum(axis=d, keepdims=True) * prev
    return (np.where(first, at_z1, out),)


@rule("VarBackward0", "StdBackward0")
def _var(c):
    x = c.s["self"]
    dims = norm_dims(c.a["dim"] if c.a["dim"] is not None else [], x.ndim)
    n = math.prod(x.shape[d] for d in dims)
    corr = 1 if c.a["correction"] is None else c.a["correction"]
    g = unsqueeze_to(c.g, x.shape, dims, c.a["keepdim"])
    if c.type == "StdBackward0":
        g = g / (2 * unsqueeze_to(c.s["result"], x.shape, dims, c.a["keepdim"]))
    return (g * (2.0 / (n - corr)) * (x - x.mean(axis=tuple(dims), keepdims=True)),)


@rule("LinalgVectorNormBackward0")
def _norm(c):
    x, y = c.s["self"], c.s["result"]
    dims = norm_dims(c.a["dim"] if c.a["dim"] is not None else [], x.ndim)
    ye = unsqueeze_to(y, x.shape, dims, c.a["keepdim"])
    return (pnorm_grad(unsqueeze_to(c.g, x.shape, dims, c.a["keepdim"]), x, ye, float(c.a["ord"]), dims),)


def pnorm_grad(g, x, ye, p, dims):  # d ||x||_p / dx times g, with ye the norm broadcast to x
    if p == 0:
        return g * 0.0
    if p == 1:
        return g * np.sign(x)
    if math.isinf(p):
        mask = np.abs(x) == ye
        return g * (np.sign(x) * mask / mask.sum(axis=tuple(dims), keepdims=True))
    safe = np.where(ye == 0, 1.0, ye)
    d = x / safe if p == 2 else x * np.abs(x) ** (p - 2) / safe ** (p - 1)
    return g * np.where(ye == 0, 0.0, d)


@rule("LogsumexpBackward0")
def _logsumexp(c):
    x, y = c.s["self"], c.s["result"]
    dims = norm_dims(c.a["dim"], x.ndim)
    return (unsqueeze_to(c.g, x.shape, dims, c.a["keepdim"]) * np.exp(x - unsqueeze_to(y, x.shape, dims,
                                                                                         c.a["keepdim"])),)


@rule("NormBackward0", "NormBackward1")
def _pnorm(c):  # torch.norm(x, p[, dim, keepdim])
    x, y = c.s["self"], c.s["result"]
    p = 2.0 if c.a["p"] is None else float(c.a["p"])
    dims = norm_dims(c.a.get("dim", []) or [], x.ndim)
    keep = c.a.get("keepdim", False)
    return (pnorm_grad(unsqueeze_to(c.g, x.shape, dims, keep), x, unsqueeze_to(y, x.shape, dims, keep), p, dims),)


@rule("SortBackward0", "TopkBackward0", "KthvalueBackward0", "MedianBackward1", "ModeBackward0")
def _sort(c):  # gradient to where each selected value came from
    sizes, d = c.a["self_sym_sizes"], c.a["dim"] % len(c.a["self_sym_sizes"])
    idx, g = c.s["indices"], c.g
    if idx.ndim < len(sizes):
        idx, g = np.expand_dims(idx, d), np.expand_dims(g, d)
    out = c.zeros(sizes)
    np.put_along_axis(out, idx, g, axis=d)
    return (out,)


@rule("TraceBackward0")
def _trace_rule(c):
    n, m = c.a["self_sym_sizes"]
    out = c.zeros((n, m))
    k = min(n, m)
    out[np.arange(k), np.arange(k)] = np.broadcast_to(c.g, (k,))
    return (out,)


@rule("CummaxBackward0", "CumminBackward0")
def _cummax(c):  # each output element came from the input at `indices` along dim
    x, idx = c.s["self"], c.s["indices"]
    if np.ndim(x) == 0:
        return (c.g,)
    d = c.a["dim"] % x.ndim
    out = c.zeros(np.shape(x))
    np.add.at(out, along(idx, d), c.g)
    return (out,)


@rule("ProdBackward0", "ProdBackward1")
def _prod(c):  # d prod / dx_k = the product of the others (PyTorch: result / x without zeros, else exclusive products)
    x, y = c.s["self"], c.s["result"]
    if np.ndim(x) == 0:
        return (c.g,)
    full = c.type == "ProdBackward0"
    g = c.g
    if full:
        x, d = x.reshape(-1), 0
    else:
        d = c.a["dim"] % x.ndim
        if not c.a["keepdim"]:
            g, y = np.expand_dims(g, d), np.expand_dims(y, d)
    zero = x == 0
    if not np.any(zero):
        out = g * (y / x)
    elif full and np.count_nonzero(zero) > 1:
        out = x * 0.0 * g
    else:
        n = x.shape[d]
        ones = np.ones(x.shape[:d] + (1,) + x.shape[d + 1:])
        head = _running_product(np.concatenate([ones, np.take(x, np.arange(n - 1), axis=d)], axis=d), d)
        tail = np.flip(_running_product(np.concatenate([ones, np.flip(np.take(x, np.arange(1, n), axis=d), d)],
                                                       axis=d), d), d)
        out = g * (head * tail)
    return (out.reshape(c.in_shapes[0]) if full else out,)
