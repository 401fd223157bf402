"""Indexed reads and writes: index, gather, scatter, embeddings, masked ops, take."""

from __future__ import annotations

import math

import numpy as np

from .table import Unsupported, rule, unsigned


@rule("IndexBackward0")
def _index(c):
    out = c.zeros(c.a["self_sym_sizes"])
    idx = tuple(slice(None) if i is None else i for i in c.s["indices"])
    np.add.at(out, idx, c.g)  # duplicate indices add up
    return (out,)


@rule("GatherBackward0")
def _gather(c):
    x, idx, d = c.s["self"], c.s["index"], c.a["dim"] % c.s["self"].ndim
    out = c.zeros(x.shape)
    lead = list(np.indices(idx.shape))
    lead[d] = idx
    np.add.at(out, tuple(lead), c.g)
    return (out,)


@rule("IndexSelectBackward0")
def _index_select(c):
    out = c.zeros(c.a["self_sym_sizes"])
    d = c.a["dim"] % out.ndim
    np.add.at(np.moveaxis(out, d, 0), c.s["index"], np.moveaxis(c.g, d, 0))
    return (out,)


@rule("EmbeddingBackward0")
def _embedding(c):
    idx, n, pad = c.s["indices"], c.a["weight_sym_argsize_0"], c.a["padding_idx"]
    if c.a.get("scale_grad_by_freq"):
        raise Unsupported("embedding with scale_grad_by_freq")
    d = c.g.shape[-1]
    out = c.zeros((n, d))
    np.add.at(out, idx.reshape(-1), c.g.reshape(-1, d))
    if pad is not None and pad >= 0:
        out[pad] = 0.0
    return (out,)


@rule("EmbeddingBagBackward0")
def _embedding_bag(c):
    idx, offsets, mode = c.s["indices"].reshape(-1), c.s["offsets"], c.a["mode"]
    n, g = c.a["weight_sym_argsize_0"], c.g
    pad = unsigned(c.a.get("padding_idx"))
    if c.a.get("scale_grad_by_freq"):
        raise Unsupported("embedding_bag with scale_grad_by_freq")
    bags = g.shape[0]
    if mode == 2:  # max: each output element came from one row
        mi = c.s["result3"]
        out = c.zeros((n, g.shape[1]))
        valid = np.broadcast_to((c.s["result2"] > 0)[:, None], mi.shape)  # an empty bag holds index 0
        cols = np.broadcast_to(np.arange(g.shape[1]), mi.shape)
        np.add.at(out, (mi[valid], cols[valid]), g[valid])
        return (out, None)
    bag = np.searchsorted(offsets[:bags], np.arange(idx.size), side="right") - 1
    keep = idx != pad if pad is not None and pad >= 0 else np.ones(idx.size, dtype=bool)
    rows = g[bag]
    psw = c.s.get("per_sample_weights")
    if mode == 1:
        cnt = np.bincount(bag[keep], minlength=bags).astype(np.float64)
        rows = rows / np.maximum(cnt, 1)[bag][:, None]
    elif psw is not None:
        rows = rows * psw[:, None]
    out = c.zeros((n, g.shape[1]))
    np.add.at(out, idx[keep], rows[keep])
    dpsw = None
    if psw is not None and c.s.get("weight") is not None:
        dpsw = np.where(keep, (g[bag] * c.s["weight"][idx]).sum(axis=1), 0.0)
    return (out, dpsw)


@rule("IndexAddBackward0")
def _index_add(c):  # self.index_add(dim, index, source, alpha): slots (self, source)
    d, idx, alpha = c.a["dim"], c.s["index"], c.a["alpha"]
    d = d % max(c.g.ndim, 1)
    src = np.moveaxis(np.moveaxis(c.g, d, 0)[idx], 0, d) if c.g.ndim else c.g
    src = src if alpha == 1 else src * alpha
    return (c.g, src.reshape(c.in_shapes[1]) if c.in_shapes[1] is not None else src)


def _hit(shape, index):  # bool mask of the positions an index expression reaches
    m = np.zeros(shape, dtype=bool)
    m[index] = True
    return m


def along(idx, d):  # the index tuple that gathers / scatters along dim d with `idx`
    lead = list(np.indices(idx.shape))
    lead[d] = idx
    return tuple(lead)


@rule("IndexPutBackward0")
def _index_put(c):  # self[indices] = values (or += with accumulate): slots (self, values)
    idx = tuple(slice(None) if i is None else i for i in c.s["indices"])
    dself = c.g if c.a["accumulate"] else np.where(_hit(c.g.shape, idx), 0.0, c.g)
    return (dself, c.g[idx])


@rule("ScatterAddBackward0", "ScatterBackward0", "ScatterBackward1")
def _scatter_rule(c):  # slots (self, src) or (self,) for a scalar value
    d, idx = c.a["dim"] % max(c.g.ndim, 1), c.s.get("index")
    if idx is None:  # scatter_add saves the index only for src's gradient: self's is G
        return (c.g, None)
    where = along(idx, d)
    dself = c.g if c.type == "ScatterAddBackward0" else np.where(_hit(c.g.shape, where), 0.0, c.g)
    return (dself,) if c.type == "ScatterBackward1" else (dself, c.g[where])


@rule("IndexFillBackward0")
def _index_fill(c):
    d, idx = c.a["dim"] % max(c.g.ndim, 1), c.s["index"]
    sel = [slice(None)] * c.g.ndim
    sel[d] = idx
    return (np.where(_hit(c.g.shape, tuple(sel)), 0.0, c.g),)


@rule("MaskedScatterBackward0")
def _masked_scatter(c):  # slots (self, source): source's first k elements went to the k True places, in order
    mask = np.broadcast_to(c.s["mask"].astype(bool), c.g.shape)
    n = math.prod(c.a["source_sym_sizes"])
    taken = c.g[mask]
    src = np.concatenate([taken, c.zeros((n - taken.size,))]) if n > taken.size else taken
    return (np.where(mask, 0.0, c.g), src.reshape(c.a["source_sym_sizes"]))


@rule("TakeBackward0")
def _take(c):  # self.take(index): flat indices, negative from the end
    shape = c.in_shapes[0]
    out = c.zeros((math.prod(shape),))
    np.add.at(out, c.s["index"].reshape(-1) % max(1, out.size), c.g.reshape(-1))
    return (out.reshape(shape),)


@rule("MaskedSelectBackward0")
def _masked_select(c):  # the selected elements, in order, back to the True places of the (broadcast) mask
    x, mask = c.s["self"], c.s["mask"].astype(bool)
    shape = np.broadcast_shapes(np.shape(x), mask.shape)
    out = c.zeros(shape)
    out[np.broadcast_to(mask, shape)] = c.g
    return (out,)


@rule("ScatterReduceBackward0", "IndexReduceBackward0")
def _scatter_reduce(c):
    """self.scatter_reduce(dim, index, src, reduce) / self.index_reduce(dim, index, source, reduce): slots (self, src).
    sum: G back to self and gathered for src; mean: divided by the count each position averaged; amax/amin: shared
    among the elements equal to the result (PyTorch's scatter_reduce_backward)."""
    x, res, red, keep = c.s["self"], c.s["result"], c.a["reduce"], c.a["include_self"]
    src = c.s["src"] if c.type == "ScatterReduceBackward0" else c.s["source"]
    d = c.a["dim"] % max(1, x.ndim)
    idx = c.s["index"]
    if c.type == "IndexReduceBackward0":  # index picks whole slices: the same index for every element of one
        shape = tuple(-1 if a == d else 1 for a in range(src.ndim))
        idx = np.broadcast_to(idx.reshape(shape), src.shape)
    if idx.shape != src.shape:
        raise Unsupported("scatter_reduce with an index smaller than src")
    where = along(idx, d)
    hit = _hit(x.shape, where)
    if red in ("sum", "add"):
        gx, gs = c.g, c.g[where]
    elif red == "mean":
        n = np.full(x.shape, 1.0 if keep else 0.0)
        np.add.at(n, where, 1.0)
        n[n == 0] = 1.0
        gx, gs = c.g / n, c.g[where] / n[where]
        if not keep:
            gx = np.where(hit, 0.0, gx)
        return (gx, gs)
    elif red in ("amax", "amin"):
        self_is, src_is = (x == res).astype(np.float64), (src == res[where]).astype(np.float64)
        if not keep and np.any(self_is[hit]):
            raise Unsupported(f"scatter_reduce {red} with include_self=False where an excluded self equals the "
                              "result: PyTorch still counts it among the ties (its backward halves the gradient)")
        n = self_is.copy()
        np.add.at(n, where, src_is)
        share = c.g / np.where(n == 0, 1.0, n)
        gx, gs = self_is * share, src_is * share[where]
    else:
        raise Unsupported(f"scatter_reduce with reduce={red!r}")
    return (np.where(hit, 0.0, gx) if not keep else gx, gs)
