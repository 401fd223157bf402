"""Reductions: sum, mean, max/min, cumulative ops, variance, norms, sort/topk, prod."""

from __future__ import annotations

import math

import numpy as np

from .indexing import along
from .table import Unsupported, norm_dims, rule, unsqueeze_to


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


@rule("MaxBackward1", "MinBackward1", "MedianBackward0", "NanmedianBackward0")
def _max_all(c):  # PyTorch's evenly_distribute_backward: shared among the elements equal to the result (NaN: the NaNs)
    x, y = c.s["self"], c.s["result"]
    mask = np.isnan(x) if np.isnan(y) else x == y
    return (np.where(mask, c.g / mask.sum(), 0.0),)


@rule("AmaxBackward0", "AminBackward0")
def _amax(c):
    x, y = c.s["self"], c.s["result"]
    dims = norm_dims(c.a["dim"], x.ndim)
    ye = unsqueeze_to(y, x.shape, dims, c.a["keepdim"])
    mask = x == ye
    count = mask.sum(axis=tuple(dims), keepdims=True)  # 0 in a slice whose result is NaN: G / 0 * 0, NaN, as PyTorch
    return (unsqueeze_to(c.g, x.shape, dims, c.a["keepdim"]) / count * mask,)


@rule("MaxBackward0", "MinBackward0")
def _max_dim(c):
    if not c.a["self_sym_sizes"]:  # a 0-d tensor: its one value is selected
        return (c.g,)
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
    if c.g.ndim == 0:
        return (c.g,)
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


@rule("VarBackward0", "StdBackward0", "VarMeanBackward0", "StdMeanBackward0")
def _var(c):  # var/std, and var_mean/std_mean (outputs (var or std, mean))
    x = c.s["self"]
    dims = norm_dims(c.a["dim"] if c.a["dim"] is not None else [], x.ndim)
    n = math.prod(x.shape[d] for d in dims)
    corr = 1 if c.a["correction"] is None else c.a["correction"]
    gv, gm = (list(c.gs) + [None, None])[:2] if c.type.endswith("MeanBackward0") else (c.g, None)
    out = None
    if gv is not None:
        g = unsqueeze_to(gv, x.shape, dims, c.a["keepdim"])
        if c.type.startswith("Std"):
            y = c.s["result"] if "result" in c.s else c.s["result0"]
            g = g / (2 * unsqueeze_to(y, x.shape, dims, c.a["keepdim"]))
        out = g * (2.0 / (n - corr)) * (x - x.mean(axis=tuple(dims), keepdims=True))
    if gm is not None:
        t = unsqueeze_to(gm, x.shape, dims, c.a["keepdim"]) / n
        out = t if out is None else out + t
    return (c.zeros(x.shape) if out is None else out,)


@rule("NansumBackward0")
def _nansum(c):  # nansum/nanmean's sum: G where the input is not NaN
    x = c.s["self"]
    dims = norm_dims(c.a["dim"] if c.a["dim"] is not None else [], x.ndim)
    return (np.where(np.isnan(x), 0.0, unsqueeze_to(c.g, x.shape, dims, c.a["keepdim"])),)


@rule("AminmaxBackward0")
def _aminmax(c):  # outputs (min, max): each shared among the elements equal to it along dim (or everywhere)
    x = c.s["self"]
    dims = norm_dims(c.a["dim"] if c.a["dim"] is not None else [], x.ndim)
    out = None
    for g, v in zip(c.gs, (c.s.get("min"), c.s.get("max"))):
        if g is None:
            continue
        mask = x == unsqueeze_to(v, x.shape, dims, c.a["keepdim"])
        count = mask.sum(axis=tuple(dims), keepdims=True)
        t = np.where(mask, unsqueeze_to(g, x.shape, dims, c.a["keepdim"]) / count, 0.0)
        out = t if out is None else out + t
    return (out,)


@rule("LogcumsumexpBackward0")
def _logcumsumexp(c):  # y_j = log sum_{i <= j} e^{x_i}: dx_i = sum_{j >= i} G_j e^{x_i - y_j}
    x, y = c.s["self"], c.s["result"]
    if np.ndim(x) == 0:
        return (c.g,)
    d = c.a["dim"] % x.ndim
    xm, ym, gm = np.moveaxis(x, d, -1), np.moveaxis(y, d, -1), np.moveaxis(c.g, d, -1)
    n = xm.shape[-1]
    upper = np.triu(np.ones((n, n), dtype=bool))
    w = np.where(upper, np.exp(np.where(upper, xm[..., :, None] - ym[..., None, :], 0.0)), 0.0)
    return (np.moveaxis(np.einsum("...ij,...j->...i", w, gm), -1, d),)


@rule("RenormBackward0")
def _renorm(c):
    """renorm(p, dim, maxnorm): slices along dim whose p-norm exceeds maxnorm are scaled to it (by maxnorm / (norm +
    1e-7)): their gradient is that factor times G minus the factor / (norm + 1e-7) times the norm's gradient applied to
    the slice's sum of x G (PyTorch's renorm_backward); other slices pass G."""
    x, p, maxnorm = c.s["self"], float(c.a["p"]), c.a["maxnorm"]
    d = c.a["dim"] % x.ndim
    dims = [a for a in range(x.ndim) if a != d]
    ax = tuple(dims)
    if math.isinf(p):
        norm = np.max(np.abs(x), axis=ax, keepdims=True) if dims else np.abs(x)
    elif p == 2:
        norm = np.sqrt((x * x).sum(axis=ax, keepdims=True))
    else:
        norm = ((np.abs(x) ** p).sum(axis=ax, keepdims=True)) ** (1 / p)
    ne = np.broadcast_to(norm, x.shape)
    go = np.broadcast_to((x * c.g).sum(axis=ax, keepdims=True), x.shape)
    nb = pnorm_grad(go, x, ne, p, dims)
    inv = 1 / (ne + 1e-7)
    factor = inv * maxnorm
    return (np.where(ne > maxnorm, factor * c.g - (factor * inv) * nb, c.g),)


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


@rule("SortBackward0", "SortBackward1", "TopkBackward0", "KthvalueBackward0", "MedianBackward1", "NanmedianBackward1",
      "ModeBackward0")
def _sort(c):  # gradient to where each selected value came from
    if not c.a["self_sym_sizes"]:  # a 0-d tensor: its one value is selected
        return (np.reshape(c.g, ()),)
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


@rule("SegmentReduceBackward0")
def _segment_reduce(c):
    """torch.segment_reduce along `axis`: each segment's gradient to its elements (sum: as is; mean: divided by the
    segment's length; max/min: to the element equal to the result, or a NaN; prod: times result / element)."""
    x, res, g, red = c.s["data"], c.s["result"], c.g, c.a["reduce"]
    axis = c.a["axis"] % x.ndim
    xv, rv = np.asarray(x), np.asarray(res)
    outer, n, inner = math.prod(x.shape[:axis]), x.shape[axis], math.prod(x.shape[axis + 1:])
    if c.s.get("offsets") is not None:
        off = c.s["offsets"].reshape(outer, -1)
        start, end = off[:, :-1], off[:, 1:]
    else:
        lengths = c.s["lengths"].reshape(outer, -1)
        end = np.cumsum(lengths, axis=1)
        start = end - lengths
    segs = start.shape[1]
    pos = np.arange(n)
    inside = (pos[None, None, :] >= start[:, :, None]) & (pos[None, None, :] < end[:, :, None])  # (outer, segs, n)
    covered = inside.any(axis=1)  # (outer, n): elements in no segment get no gradient
    seg = np.where(covered, inside.argmax(axis=1), 0)  # (outer, n): the segment of each element
    valid = covered[:, :, None]
    rows = np.arange(outer)[:, None]
    gx = g.reshape(outer, segs, inner)[rows, seg]  # (outer, n, inner): each element's segment's gradient
    xs, rs = xv.reshape(outer, n, inner), rv.reshape(outer, segs, inner)[rows, seg]
    if red == "sum":
        out = gx
    elif red == "mean":
        out = gx / np.maximum(end - start, 1)[rows, seg][..., None]
    elif red in ("max", "min"):
        hit = (np.isnan(xs) | (xs == rs)) & valid
        count = np.zeros((outer, segs, inner), dtype=np.int64)
        np.add.at(count, (rows, seg), hit.astype(np.int64))  # ((outer, n) positions, each an inner row)
        if count.max(initial=0) > 1:  # PyTorch then divides only the positive gradients by the count: not linear
            raise Unsupported(f"segment_reduce {red} with a tie in a segment (PyTorch divides only the positive "
                              "gradients by the number of tied elements, which is not linear in the gradient)")
        out = np.where(hit, gx, 0.0)
    elif red == "prod":
        if np.any((np.isnan(xs) | (xs == 0)) & valid):
            raise Unsupported("segment_reduce prod with a zero or NaN element (PyTorch multiplies out the other "
                              "elements of the segment in its dtype)")
        out = gx * rs / x.reshape(outer, n, inner)
    else:
        raise Unsupported(f"segment_reduce {red!r}")
    return (np.where(valid, out, 0.0).reshape(x.shape),)
