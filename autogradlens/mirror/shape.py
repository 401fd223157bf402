"""Shape and view ops: transposes, views, slicing, cat/stack/split, padding, shuffles, triangles."""

from __future__ import annotations

import math

import numpy as np

from .table import Unsupported, rule, scatter_axis, sum_to


@rule("TBackward0")
def _t(c):
    return (c.g.T,)


@rule("TransposeBackward0")
def _transpose(c):
    return (np.swapaxes(c.g, c.a["dim0"], c.a["dim1"]),)


@rule("PermuteBackward0")
def _permute(c):
    dims = [d % c.g.ndim for d in c.a["dims"]]
    return (np.transpose(c.g, np.argsort(dims)),)


@rule("ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "SqueezeBackward0", "SqueezeBackward1",
      "SqueezeBackward2")
def _view(c):
    return (c.g.reshape(c.in_shapes[0] if c.in_shapes[0] is not None else c.a["self_sym_sizes"]),)


@rule("UnsqueezeBackward0")
def _unsqueeze(c):
    return (np.squeeze(c.g, axis=c.a["dim"] % c.g.ndim),)


@rule("ExpandBackward0")
def _expand(c):
    return (sum_to(c.g, c.a["self_sym_sizes"]),)


@rule("FlipBackward0")
def _flip(c):
    return (np.flip(c.g, axis=tuple(c.a["dims"])),)


@rule("SelectBackward0")
def _select(c):
    out = c.zeros(c.a["self_sym_sizes"])
    idx = [slice(None)] * out.ndim
    idx[c.a["dim"] % out.ndim] = c.a["index"]
    out[tuple(idx)] = c.g
    return (out,)


@rule("SliceBackward0")
def _slice(c):
    out = c.zeros(c.a["self_sym_sizes"])
    idx = [slice(None)] * out.ndim
    idx[c.a["dim"] % out.ndim] = slice(c.a["start"], c.a["end"], c.a["step"])
    out[tuple(idx)] = c.g
    return (out,)


@rule("RepeatBackward0")
def _repeat(c):
    sizes, reps = c.a["self_sym_sizes"], c.a["repeats"]
    lead = len(reps) - len(sizes)
    g = c.g.reshape([x for r, s in zip(reps[lead:], sizes) for x in (r, s)] if not lead else
                    list(reps[:lead]) + [x for r, s in zip(reps[lead:], sizes) for x in (r, s)])
    axes = tuple(range(lead)) + tuple(lead + 2 * i for i in range(len(sizes)))
    return (g.sum(axis=axes).reshape(sizes),)


@rule("ConstantPadNdBackward0")
def _constant_pad(c):
    pad, g = c.a["pad"], c.g
    idx = [slice(None)] * g.ndim
    for i in range(len(pad) // 2):
        d = g.ndim - 1 - i
        lo, hi = pad[2 * i], pad[2 * i + 1]
        idx[d] = slice(lo, g.shape[d] - hi)
    if any(p < 0 for p in pad):
        raise Unsupported("negative padding")
    return (g[tuple(idx)],)


@rule("CatBackward0")
def _cat(c):
    d = c.a["dim"] % c.g.ndim
    sizes = [s[d] if s is not None else None for s in c.in_shapes]
    if sizes.count(None) > 1:
        raise Unsupported("cat with several inputs that need no gradient: their sizes are not recorded")
    if None in sizes:
        sizes[sizes.index(None)] = c.g.shape[d] - sum(s for s in sizes if s is not None)
    return tuple(np.split(c.g, np.cumsum(sizes)[:-1], axis=d))


@rule("StackBackward0")
def _stack(c):
    d = c.a["dim"] % c.g.ndim
    return tuple(np.moveaxis(c.g, d, 0))


def _outs(c):
    return [g if g is not None else c.zeros(s) for g, s in zip(c.gs, c.out_shapes)]


@rule("SplitBackward0", "SplitWithSizesBackward0")
def _split(c):
    return (np.concatenate(_outs(c), axis=c.a["dim"] % len(c.a["self_sym_sizes"])),)


@rule("UnbindBackward0")
def _unbind(c):
    return (np.stack(_outs(c), axis=c.a["dim"]),)


@rule("TransposeBackward1")
def _transpose_(c):
    return (np.swapaxes(c.g, c.a["dim0"], c.a["dim1"]),)


@rule("UnsafeSplitBackward0", "UnsafeSplitWithSizesBackward0")
def _unsafe_split(c):
    return _split(c)


@rule("AsStridedBackward0")
def _as_strided(c):
    """The input's own geometry is not exposed to Python: the rule takes it as contiguous at offset 0."""
    shape = c.in_shapes[0]
    n = math.prod(shape)
    size, stride, off = c.a["size"], c.a["stride"], c.a["storage_offset"] or 0
    idx = off + sum(np.arange(m).reshape((-1,) + (1,) * (len(size) - 1 - i)) * st
                    for i, (m, st) in enumerate(zip(size, stride)))
    idx = np.broadcast_to(idx, tuple(size))
    if idx.size and (idx.max() >= n or idx.min() < 0):
        raise Unsupported("as_strided reaching outside a contiguous input")
    flat = c.zeros((n,))
    np.add.at(flat, idx.reshape(-1), c.g.reshape(-1))
    return (flat.reshape(shape),)


@rule("PixelShuffleBackward0")
def _pixel_shuffle(c):  # (.., C r r, H, W) -> (.., C, H r, W r)
    return (_unshuffle(c.g, c.a["upscale_factor"]),)


@rule("PixelUnshuffleBackward0")
def _pixel_unshuffle(c):
    return (_shuffle(c.g, c.a["downscale_factor"]),)


def _shuffle(g, r):
    *lead, ch, h, w = g.shape
    g = g.reshape(tuple(lead) + (ch // (r * r), r, r, h, w))
    k = len(lead)
    g = g.transpose(tuple(range(k)) + (k, k + 3, k + 1, k + 4, k + 2))
    return g.reshape(tuple(lead) + (ch // (r * r), h * r, w * r))


def _unshuffle(g, r):
    *lead, ch, h, w = g.shape
    g = g.reshape(tuple(lead) + (ch, h // r, r, w // r, r))
    k = len(lead)
    g = g.transpose(tuple(range(k)) + (k, k + 2, k + 4, k + 1, k + 3))
    return g.reshape(tuple(lead) + (ch * r * r, h // r, w // r))


@rule("TrilBackward0", "TriuBackward0")
def _tril(c):
    n, m = c.g.shape[-2:]
    keep = np.tri(n, m, c.a["diagonal"], dtype=bool)
    return (np.where(keep if c.type == "TrilBackward0" else ~np.tri(n, m, c.a["diagonal"] - 1, dtype=bool),
                     c.g, 0.0),)


@rule("RollBackward0")
def _roll(c):  # y[i] = x[(i - s) % n], so dx[j] = g[(j + s) % n]
    g, shifts, dims = c.g, list(c.a["shifts"]), list(c.a["dims"])
    if not dims:
        flat = g.reshape(-1)
        return (flat[(np.arange(flat.size) + shifts[0]) % flat.size].reshape(g.shape),)
    for s, d in zip(shifts, dims):
        n = g.shape[d]
        g = np.moveaxis(np.moveaxis(g, d, 0)[(np.arange(n) + s) % n], 0, d)
    return (g,)


def _pad_src(n_in, lo, hi, mode):  # for each padded position, the input position it copies
    j = np.arange(-lo, n_in + hi)
    if mode == "reflect":
        j = np.abs(j)
        return np.where(j > n_in - 1, 2 * (n_in - 1) - j, j)
    return np.clip(j, 0, n_in - 1)


@rule("ReflectionPad1DBackward0", "ReflectionPad2DBackward0", "ReflectionPad3DBackward0",
      "ReplicationPad1DBackward0", "ReplicationPad2DBackward0", "ReplicationPad3DBackward0")
def _pad_reflect(c):
    pad, g = list(c.a["padding"]), c.g
    shape = c.in_shapes[0] if c.in_shapes[0] is not None else c.s["self"].shape
    mode = "reflect" if c.type.startswith("Reflection") else "replicate"
    for i in range(len(pad) // 2):
        ax = g.ndim - 1 - i
        g = scatter_axis(g, _pad_src(shape[ax], pad[2 * i], pad[2 * i + 1], mode), shape[ax], ax, c.zeros)
    return (g,)


@rule("DiagEmbedBackward0")
def _diag_embed(c):  # the gradient of diag_embed is the diagonal it filled
    return (np.diagonal(c.g, c.a["offset"], c.a["dim1"], c.a["dim2"]),)


@rule("UnfoldBackward0")
def _unfold_rule(c):  # Tensor.unfold(dimension, size, step): window w, element k came from w * step + k
    sizes, d, size, step = c.a["self_sym_sizes"], c.a["dimension"], c.a["size"], c.a["step"]
    out = c.zeros(sizes)
    if len(sizes) == 0:
        return (c.g.reshape(()) if c.g.size == 1 else c.g.sum(),)
    d %= len(sizes)
    g = np.moveaxis(c.g, d, -2)  # (..., windows, size) with the other axes in place
    o = np.moveaxis(out, d, -1)  # a view: additions land in out
    for w in range(g.shape[-2]):
        o[..., w * step: w * step + size] += g[..., w, :]
    return (out,)


@rule("BlockDiagBackward0")
def _block_diag(c):  # each input's block of the gradient, in order along the diagonal
    sizes = [None if s is None else (1, s[0]) if len(s) == 1 else tuple(s) if len(s) == 2 else (1, 1)
             for s in c.in_shapes]
    unknown = [i for i, s in enumerate(sizes) if s is None]  # inputs without a gradient: no shape recorded
    if len(unknown) > 1:
        raise Unsupported("block_diag with several inputs that need no gradient (their sizes are not recorded)")
    if unknown:  # one: whatever the others leave of the output
        sizes[unknown[0]] = tuple(c.g.shape[a] - sum(s[a] for s in sizes if s is not None) for a in (0, 1))
    out, r, k = [], 0, 0
    for shape, (rows, cols) in zip(c.in_shapes, sizes):
        out.append(None if shape is None else c.g[r:r + rows, k:k + cols].reshape(shape))
        r, k = r + rows, k + cols
    return tuple(out)
