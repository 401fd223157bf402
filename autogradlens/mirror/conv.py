"""Convolution (any dimension, transposed, double backward), pooling, upsampling, fold/unfold."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import itertools
import math

import numpy as np
import torch

from .bounds import Mag, _product
from .table import Unsupported, cpu_only, fma, rule, scatter_axis


@rule("MaxPool2DWithIndicesBackward0", "MaxPool3DWithIndicesBackward0", "FractionalMaxPool2DBackward0",
      "FractionalMaxPool3DBackward0")
def _maxpool(c):  # the indices are flat over the last 2 (3) input dimensions
    x, idx, g = c.s["self"], c.s["result1"], c.g
    k = 3 if "3D" in c.type else 2
    size = math.prod(x.shape[-k:])
    flat = c.zeros((math.prod(x.shape[:-k]) * size,))
    ii = idx.reshape(-1, math.prod(idx.shape[-k:])) + (np.arange(math.prod(idx.shape[:-k])) * size)[:, None]
    np.add.at(flat, ii.reshape(-1), g.reshape(-1))  # one scatter: an input picked by w windows adds w terms
    return (flat.reshape(x.shape),)


@rule("AvgPool2DBackward0", "AvgPool3DBackward0")
def _avgpool(c):  # any padding, ceil_mode, count_include_pad, divisor_override: separable window matrices
    x, g = c.s["self"], c.g
    k = 3 if "3D" in c.type else 2
    def per_axis(v):
        v = list(v)
        return v * k if len(v) == 1 else v
    ks = per_axis(c.a["kernel_size"])
    st = per_axis(c.a["stride"] or ks)
    pad = per_axis(c.a["padding"])
    mats, divs = [], []
    for i in range(k):
        n_in, n_out = x.shape[-k + i], g.shape[-k + i]
        m, full, clip = np.zeros((n_out, n_in)), np.zeros(n_out), np.zeros(n_out)
        for o in range(n_out):
            lo = o * st[i] - pad[i]
            hi = min(lo + ks[i], n_in + pad[i])
            full[o] = hi - lo
            lo, hi = max(lo, 0), min(hi, n_in)
            m[o, lo:hi] = 1.0
            clip[o] = hi - lo
        mats.append(m)
        divs.append(full if c.a["count_include_pad"] else clip)
    if c.a["divisor_override"]:
        return (_separable(g / c.a["divisor_override"], mats),)
    div = divs[0]
    for d in divs[1:]:
        div = np.multiply.outer(div, d)
    return (_separable(g / div, mats),)


def _taps(kernel):
    return itertools.product(*(range(k) for k in kernel))


def _win(k, dil, stride, n):  # the input positions kernel tap k meets, for n outputs
    return (slice(None),) * 3 + tuple(slice(a * d, a * d + s * (m - 1) + 1, s) for a, d, s, m in zip(k, dil, stride, n))


def _pad_spatial(x, p):
    return np.pad(x, [(0, 0), (0, 0)] + [(a, a) for a in p]) if any(p) else x


# The three convolution products below are BLAS-shaped: the input's windows gathered once (im2col), then one
# matrix product per group. On magnitudes (bounds.Mag) they run on |x| and |w| and count the roundings as the
# per-tap loop they replaced did (a sum over the group's channels per tap, then one addition per tap), so the
# bound is unchanged.

def _windows(xp, k, s, d, so):
    """(N, G, Cg, *So, *K) view of the padded input `xp` (N, G, Cg, *Sp): element [.., o, t] = xp[.., o s + t d]."""
    st = xp.strides
    sp = st[3:]
    return np.lib.stride_tricks.as_strided(
        xp, xp.shape[:3] + tuple(so) + tuple(k),
        st[:3] + tuple(a * b for a, b in zip(sp, s)) + tuple(a * b for a, b in zip(sp, d)), writeable=False)


def _cols(xg, k, s, d, so):
    """(G, N prod(So), Cg prod(K)) copy of the windows of `xg` (N, G, Cg, *Sp), rows (n, o), columns (c, t)."""
    v = _windows(xg, k, s, d, so)
    nk, ns = len(k), len(so)
    order = (1, 0) + tuple(range(3, 3 + ns)) + (2,) + tuple(range(3 + ns, 3 + ns + nk))
    g = xg.shape[1]
    return np.ascontiguousarray(v.transpose(order)).reshape(g, -1, xg.shape[2] * math.prod(k))


def _input_cols(x, k, s, p, d, so, groups):
    """The windows of the padded input `x` as one matrix per group: for float32 numbers (G, Cg prod(K), N prod(So)),
    rows (c, t), columns (n, o), gathered tap by tap (long runs along the last spatial axis, not runs of the kernel's
    width: twice as fast); else (G, N prod(So), Cg prod(K)) (_cols), the layout whose float64 products the mirror has
    always computed (BLAS rounds small products of the two layouts differently). The last one is kept, for the same
    saved input meets the local run, the mirror's own and (where it has no negative element) the run on magnitudes
    one after the other."""
    key = (id(x), x.shape, x.strides, x.dtype, tuple(k), tuple(s), tuple(p), tuple(d), tuple(so), groups)
    if _LAST_COLS and _LAST_COLS[0] == key and _LAST_COLS[1] is x:
        return _LAST_COLS[2]
    xp = _pad_spatial(x, p)
    if x.dtype != np.float32:
        n, cg = x.shape[0], x.shape[1] // groups
        cols = _cols(xp.reshape((n, groups, cg) + xp.shape[2:]), k, s, d, so)
        if x.dtype != object and not x.flags.writeable:  # a saved tensor's array (read-only): safe to keep
            _LAST_COLS[:] = [key, x, cols]
        return cols
    n, cg, nd = x.shape[0], x.shape[1] // groups, len(k)
    xg = xp.reshape((n, groups, cg) + xp.shape[2:]).transpose((1, 2, 0) + tuple(range(3, 3 + nd)))  # (G, Cg, N, *Sp)
    cols = np.empty((groups, cg) + tuple(k) + (n,) + tuple(so), dtype=x.dtype)
    for t in _taps(k):
        cols[(slice(None),) * 2 + t] = xg[(slice(None),) * 3 + tuple(
            slice(a * dd, a * dd + ss * (m - 1) + 1, ss) for a, dd, ss, m in zip(t, d, s, so))]
    cols = cols.reshape(groups, cg * math.prod(k), n * math.prod(so))
    if x.dtype != object and not x.flags.writeable:  # a saved tensor's array (read-only): safe to keep
        _LAST_COLS[:] = [key, x, cols]
    return cols


_LAST_COLS: list = []


def forget(arrays):
    """Drop the kept windows if they are of one of `arrays` (a saved tensor's arrays, done with: a float32 one is
    PyTorch's own memory, which the mirror must not keep alive)."""
    if _LAST_COLS and any(_LAST_COLS[1] is a for a in arrays):
        _LAST_COLS.clear()


def _grad_rows(gy, groups):
    """(G, N prod(So), Og) of a gradient (N, O, *So): rows (n, o), as _cols'."""
    n, o = gy.shape[:2]
    return gy.reshape(n, groups, o // groups, -1).transpose(1, 0, 3, 2).reshape(groups, -1, o // groups)


def _on_mags(f, a, b, n, r, k):
    """f(a, b), f bilinear with nonnegative coefficients, where a or b is a Mag: f(|a|, |b|), counts + (n, r); in
    float32 where both are float32 numbers exactly (bounds.NOTE [float32 magnitudes]), `k` bounding the roundings
    a term goes through there (one product, the additions of its matrix product and of col2im)."""
    a, b = Mag.of(a), Mag.of(b)
    v = f(a.v, b.v) if a.v is not None and b.v is not None else None
    return _product(f, a, b, k, v, a.c + b.c + (n, r))


def _zeros(a):
    """Buffers in the dtype of the run: float32 on float32 magnitudes, else float64."""
    return functools.partial(np.zeros, dtype=np.float32 if a.dtype == np.float32 else np.float64)


def _conv_fwd(x, w, s, p, d, groups, zeros):
    """y = conv(x, w): x (N, C, *S), w (O, C/G, *K) -> (N, O, *So)."""
    k, cg, o = tuple(w.shape[2:]), w.shape[1], w.shape[0]
    if isinstance(x, Mag) or isinstance(w, Mag):
        nk = math.prod(k)
        return _on_mags(lambda a, b: _conv_fwd(a, b, s, p, d, groups, _zeros(a)), x, w, 1 + cg + nk, 2 + nk,
                        cg * nk)
    xp = _pad_spatial(x, p)
    n = x.shape[0]
    so = tuple((xp.shape[2 + i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(len(k)))
    cols = _cols(xp.reshape((n, groups, cg) + xp.shape[2:]), k, s, d, so)
    y = cols @ w.reshape(groups, o // groups, -1).transpose(0, 2, 1)  # (G, N So, Og)
    return y.reshape((groups, n, -1, o // groups)).transpose(1, 0, 3, 2).reshape((n, o) + so)


def _conv_dx(gy, w, xshape, s, p, d, groups, zeros):
    """The adjoint of _conv_fwd in x (a transposed convolution), cropped to xshape."""
    k, o = tuple(w.shape[2:]), w.shape[0]
    if isinstance(gy, Mag) or isinstance(w, Mag):
        nk = math.prod(k)
        return _on_mags(lambda a, b: _conv_dx(a, b, xshape, s, p, d, groups, _zeros(a)), gy, w,
                        1 + o // groups + nk, 2 + nk, o // groups + nk)
    n, so, ch = gy.shape[0], tuple(gy.shape[2:]), xshape[1]
    cg = ch // groups
    full = tuple(xshape[2 + i] + 2 * p[i] for i in range(len(k)))
    full = tuple(max(f, d[i] * (k[i] - 1) + s[i] * (so[i] - 1) + 1) for i, f in enumerate(full))
    if _flat_ok(gy, w, s, so, full):
        return _conv_dx_flat(gy, w, xshape, p, d, groups, zeros, full)
    cols = w.reshape(groups, o // groups, -1).transpose(0, 2, 1) @ _grad_rows(gy, groups).transpose(0, 2, 1)
    cols = cols.reshape((groups, cg) + k + (n,) + so)  # (G, Cg, *K, N, *So)
    dxp = zeros((n, groups, cg) + full)
    for t in _taps(k):  # col2im: each tap's products back onto the input positions it met
        dxp[_win(t, d, s, so)] += np.moveaxis(cols[(slice(None),) * 2 + t], 2, 0)
    crop = (slice(None),) * 3 + tuple(slice(a, a + xshape[2 + i]) for i, a in enumerate(p))
    return dxp[crop].reshape(tuple(xshape))


def _flat_ok(gy, w, s, so, full) -> bool:
    """Can _conv_dx_flat run: stride 1, float numbers, a finite weight (its junk products must be 0), and an output
    grid that the padded input's rows do not widen by more than a quarter (they cost as many products)?"""
    return (all(a == 1 for a in s) and gy.dtype in (np.float32, np.float64) and w.dtype == gy.dtype
            and math.prod(full[1:]) <= 1.25 * math.prod(so[1:]) and bool(np.isfinite(w).all()))


def _conv_dx_flat(gy, w, xshape, p, d, groups, zeros, full):
    """_conv_dx for stride 1 with col2im as one contiguous addition per tap: the gradient is laid out on the padded
    input's grid (rows of the padded width, zeros in the extra columns), so every tap's products land at one flat
    offset of the padded input. The products and the additions per position are the same, in the same order (the
    extra columns add exact zeros)."""
    k, o, nd = tuple(w.shape[2:]), w.shape[0], len(w.shape) - 2
    n, so, og, cg = gy.shape[0], tuple(gy.shape[2:]), o // groups, xshape[1] // groups
    grid = (so[0],) + full[1:]  # the outputs, rows as wide as the padded input's
    fs = [math.prod(full[i + 1:]) for i in range(nd)]  # flat strides of the padded input
    size, length = math.prod(grid), math.prod(full) + sum((k[i] - 1) * d[i] * fs[i] for i in range(1, nd))
    gp = zeros((groups, og, n) + grid)
    gp[(slice(None),) * 3 + tuple(slice(0, m) for m in so)] = \
        gy.reshape((n, groups, og) + so).transpose((1, 2, 0) + tuple(range(3, 3 + nd)))
    cols = w.reshape(groups, og, -1).transpose(0, 2, 1) @ gp.reshape(groups, og, -1)  # (G, Cg K, N P)
    cols = cols.reshape(groups, cg, math.prod(k), n, size)
    buf = zeros((n, groups, cg, length))
    for i, t in enumerate(_taps(k)):
        off = sum(t[j] * d[j] * fs[j] for j in range(nd))
        buf[..., off:off + size] += cols[:, :, i].transpose(2, 0, 1, 3)
    dxp = buf[..., :math.prod(full)].reshape((n, groups, cg) + full)
    crop = (slice(None),) * 3 + tuple(slice(a, a + xshape[2 + i]) for i, a in enumerate(p))
    return dxp[crop].reshape(tuple(xshape))


def _conv_dw(x, gy, wshape, s, p, d, groups, zeros):
    """The adjoint of _conv_fwd in w."""
    k = tuple(wshape[2:])
    if isinstance(x, Mag) or isinstance(gy, Mag):
        n_terms = gy.shape[0] * math.prod(gy.shape[2:])
        return _on_mags(lambda a, b: _conv_dw(a, b, wshape, s, p, d, groups, _zeros(a)), x, gy, 1 + n_terms, 2,
                        n_terms)
    so = tuple(gy.shape[2:])
    cols = _input_cols(x, k, s, p, d, so, groups)
    if x.dtype != np.float32:
        dw = _grad_rows(gy, groups).transpose(0, 2, 1) @ cols  # (G, Og, Cg K)
        return dw.reshape(tuple(wshape))
    n, o = gy.shape[:2]  # cols (G, Cg K, N So)
    rows = gy.reshape(n, groups, o // groups, -1).transpose(1, 2, 0, 3).reshape(groups, o // groups, -1)
    dw = rows @ cols.transpose(0, 2, 1)  # (G, Og, Cg K)
    return dw.reshape(tuple(wshape))


def _conv_geom(c):
    """stride, padding, dilation (one per spatial dimension), groups, transposed. PyTorch saves a single padding
    for ``padding='valid'`` (0,) whatever the dimension: it stands for every spatial dimension (the stride is
    saved in full)."""
    a = c.a
    nd = len(a["stride"])

    def per_dim(v):
        v = list(v)
        return v * nd if len(v) == 1 else v
    return per_dim(a["stride"]), per_dim(a["padding"]), per_dim(a["dilation"]), a["groups"], a["transposed"]


def _conv_shape(c, slot, saved):
    return c.in_shapes[slot] if c.in_shapes[slot] is not None else c.s[saved].shape


@rule("ConvolutionBackward0")
def _conv(c):  # 1-d/2-d/3-d, stride, padding, dilation, groups, transposed (with output_padding)
    x, w, g = c.s.get("input"), c.s.get("weight"), c.g
    s, p, d, groups, tr = _conv_geom(c)
    need_x, need_w = c.in_shapes[0] is not None, c.in_shapes[1] is not None
    dx = dw = None
    if not tr:
        if need_x:
            dx = _conv_dx(g, w, c.in_shapes[0], s, p, d, groups, c.zeros)
        if need_w:
            dw = _conv_dw(x, g, c.in_shapes[1], s, p, d, groups, c.zeros)
    else:  # y = the adjoint of a convolution from y-space to x-space with the same weight
        if need_x:
            xs = c.in_shapes[0]
            dx = _conv_fwd(g, w, s, p, d, groups, c.zeros)[(slice(None),) * 2 + tuple(slice(0, n) for n in xs[2:])]
        if need_w:
            dw = _conv_dw(g, x, c.in_shapes[1], s, p, d, groups, c.zeros)
    bias = g.sum(axis=(0,) + tuple(range(2, g.ndim))) if len(c.in_shapes) > 2 and c.in_shapes[2] is not None else None
    return (dx, dw, bias)


@rule("ConvolutionBackwardBackward0")
def _conv_double(c):  # slots (grad_output, input, weight); incoming: gradients of (grad_input, grad_weight, grad_bias)
    go, x, w = c.s["grad_output"], c.s["input"], c.s["weight"]
    ggx, ggw, ggb = (list(c.gs) + [None] * 3)[:3]
    s, p, d, groups, tr = _conv_geom(c)
    z = c.zeros
    d_go = d_x = d_w = None
    if not tr:  # grad_input = _conv_dx(go, w), grad_weight = _conv_dw(x, go)
        terms = [] if ggx is None else [_conv_fwd(ggx, w, s, p, d, groups, z)]
        if ggw is not None:
            terms.append(_conv_fwd(x, ggw, s, p, d, groups, z))
            d_x = _conv_dx(go, ggw, x.shape, s, p, d, groups, z)
        if ggx is not None:
            d_w = _conv_dw(ggx, go, w.shape, s, p, d, groups, z)
        terms = [t[(slice(None),) * 2 + tuple(slice(0, n) for n in go.shape[2:])] for t in terms]
    else:  # grad_input = _conv_fwd(go, w), grad_weight = _conv_dw(go, x)
        terms = [] if ggx is None else [_conv_dx(ggx, w, go.shape, s, p, d, groups, z)]
        if ggw is not None:
            terms.append(_conv_dx(x, ggw, go.shape, s, p, d, groups, z))
            d_x = _conv_fwd(go, ggw, s, p, d, groups, z)[(slice(None),) * 2 + tuple(slice(0, n) for n in x.shape[2:])]
        if ggx is not None:
            d_w = _conv_dw(go, ggx, w.shape, s, p, d, groups, z)
    if ggb is not None:
        terms.append(np.broadcast_to(ggb.reshape((1, -1) + (1,) * (go.ndim - 2)), go.shape))
    for t in terms:
        d_go = t if d_go is None else d_go + t
    return (d_go, d_x, d_w)


def _bins(n_in, n_out):  # adaptive pooling windows: [floor(i n_in / n_out), ceil((i + 1) n_in / n_out))
    return [(i * n_in // n_out, -(-(i + 1) * n_in // n_out)) for i in range(n_out)]


@rule("AdaptiveAvgPool2DBackward0", "AdaptiveAvgPool3DBackward0")
def _adaptive_avg(c):
    x, g = c.s["self"], c.g
    k = 2 if c.type == "AdaptiveAvgPool2DBackward0" else 3
    mats = []
    for n_in, n_out in zip(x.shape[-k:], g.shape[-k:]):
        m = np.zeros((n_out, n_in))
        for i, (a, b) in enumerate(_bins(n_in, n_out)):
            m[i, a:b] = 1.0 / (b - a)
        mats.append(m)
    return (_separable(g, mats),)


def _separable(g, mats):  # apply m.T along each of the last len(mats) axes
    for i, m in enumerate(mats):
        ax = g.ndim - len(mats) + i
        g = np.moveaxis(np.tensordot(np.moveaxis(g, ax, -1), m, axes=([g.ndim - 1], [0])), -1, ax)
    return g


@rule("AdaptiveMaxPool2DBackward0", "AdaptiveMaxPool3DBackward0")
def _adaptive_max(c):
    return _maxpool(c)


@rule("MaxPool2DWithIndicesBackwardBackward0", "MaxPool3DWithIndicesBackwardBackward0")
def _maxpool_bb(c):  # max_pool_backward(grad_output, self, ..., indices): linear in grad_output, a gather at indices
    idx = c.s["indices"]
    k = 3 if "3D" in c.type else 2
    g = c.g.reshape(c.g.shape[:-k] + (-1,))
    out = np.take_along_axis(g, idx.reshape(idx.shape[:-k] + (-1,)), axis=-1).reshape(idx.shape)
    return (out, None if len(c.in_shapes) < 2 or c.in_shapes[1] is None else c.zeros(c.in_shapes[1]))


def _nearest_src(n_in, n_out, scale):  # PyTorch's nearest_idx, in float32 as its CPU kernel computes it
    if n_in == n_out:
        return np.arange(n_out)
    if n_out == 2 * n_in:
        return np.arange(n_out) >> 1
    sc = np.float32(1.0 / scale) if scale else np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * sc).astype(np.int64), n_in - 1)


def _scales(c, k):
    names = {1: ["scales"], 2: ["scales_h", "scales_w"], 3: ["scales_d", "scales_h", "scales_w"]}[k]
    return [c.a.get(n) for n in names]


def _nearest_exact_src(n_in, n_out, scale):  # PyTorch's nearest_exact_idx: floorf((i + 0.5) * scale)
    sc = np.float32(1.0 / scale) if scale else np.float32(n_in) / np.float32(n_out)
    src = ((np.arange(n_out) + 0.5) * np.float64(sc)).astype(np.float32)  # a double product, rounded by floorf
    return np.minimum(np.floor(src).astype(np.int64), n_in - 1)


@rule("UpsampleNearest1DBackward0", "UpsampleNearest2DBackward0", "UpsampleNearest3DBackward0",
      "UpsampleNearestExact1DBackward0", "UpsampleNearestExact2DBackward0", "UpsampleNearestExact3DBackward0")
def _upsample_nearest(c):
    sizes, g = c.a["self_sym_sizes"], c.g
    k = len(sizes) - 2
    src = _nearest_exact_src if "Exact" in c.type else _nearest_src
    for i, sc in enumerate(_scales(c, k)):
        ax = 2 + i
        g = scatter_axis(g, src(sizes[ax], g.shape[ax], sc), sizes[ax], ax, c.zeros)
    return (g,)


def _pixel_scale(n_in, n_out, align, scale, ft):
    """PyTorch's area_pixel_compute_scale in `ft`: input pixels per output pixel."""
    if align:
        return ft(n_in - 1) / ft(n_out - 1) if n_out > 1 else ft(0)
    return ft(1.0 / scale) if scale else ft(n_in) / ft(n_out)


def _linear_weights(n_in, n_out, align, scale, ft=np.float64):
    """(n_out, n_in) matrix of PyTorch's linear interpolation (area_pixel_compute_source_index), computed in `ft` as
    the CPU kernel does (its opmath type: float32 for float32 and half tensors, float64 for float64)."""
    r = _pixel_scale(n_in, n_out, align, scale, ft)
    src = r * np.arange(n_out, dtype=ft) if align else \
        np.maximum(r * (np.arange(n_out, dtype=ft) + ft(0.5)) - ft(0.5), ft(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = (src - i0.astype(ft)).astype(ft)
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), (ft(1) - lam).astype(np.float64))
    np.add.at(m, (np.arange(n_out), i1), lam.astype(np.float64))
    return m


@rule("UpsampleLinear1DBackward0", "UpsampleBilinear2DBackward0", "UpsampleTrilinear3DBackward0")
def _upsample_linear(c):
    sizes, g = c.a["self_sym_sizes"], c.g
    k = len(sizes) - 2
    ft = np.float64 if c.in_dtypes[0] == "float64" else np.float32
    mats = [_linear_weights(sizes[2 + i], g.shape[2 + i], c.a["align_corners"], sc, ft)
            for i, sc in enumerate(_scales(c, k))]
    return (_separable(g, mats),)


def _cubic_weights(n_in, n_out, align, scale, ft):
    """(n_out, n_in) matrix of PyTorch's bicubic interpolation (A = -0.75, the four taps clamped to the border),
    computed in `ft` as the CPU kernel does (float32 for float32 and half tensors, float64 for float64)."""
    one = ft(1)
    sc = _pixel_scale(n_in, n_out, align, scale, ft)
    real = sc * np.arange(n_out, dtype=ft) if align else \
        sc * (np.arange(n_out, dtype=ft) + ft(0.5)) - ft(0.5)  # not clamped at 0 for cubic
    i0 = np.minimum(np.floor(real).astype(np.int64), n_in - 1)
    t = np.clip(real - i0.astype(ft), ft(0), one)
    a = ft(-0.75)

    def near(x):  # |x| <= 1
        return ((a + ft(2)) * x - (a + ft(3))) * x * x + one

    def far(x):  # 1 < |x| < 2
        return ((a * x - ft(5) * a) * x + ft(8) * a) * x - ft(4) * a

    m = np.zeros((n_out, n_in))
    for k, w in enumerate((far(t + one), near(t), near(one - t), far(one - t + one))):
        np.add.at(m, (np.arange(n_out), np.clip(i0 - 1 + k, 0, n_in - 1)), w.astype(np.float64))
    return m


@rule("UpsampleBicubic2DBackward0")
def _upsample_bicubic(c):
    sizes, g = c.a["self_sym_sizes"], c.g
    ft = np.float64 if c.in_dtypes[0] == "float64" else np.float32
    mats = [_cubic_weights(sizes[2 + i], g.shape[2 + i], c.a["align_corners"], sc, ft)
            for i, sc in enumerate(_scales(c, 2))]
    return (_separable(g, mats),)


def _horner(x, coefs, mags):
    """((c0 x + c1) x + c2) x + c3 at an exact x; with `mags`, a Mag whose magnitude adds the running error bound of
    the evaluation (each rounding at most one unit of its result, carried through the later products): near a root
    of the polynomial far below the a-priori bound (the terms at |x|), which the filter's tails meet."""
    r, e = np.full(np.shape(x), coefs[0]), np.zeros(np.shape(x))
    for cf in coefs[1:]:
        r = r * x
        e = e * np.abs(x) + np.abs(r)
        r = r + cf
        e = e + np.abs(r)
    return Mag(np.abs(r) + e, r, 1) if mags else r


def _keys(x, ft, fused: bool):
    """The Keys cubic filter (a = -0.5) at x = |argument| in `ft`, as the kernel evaluates it (`fused`: its compiler
    fusing each multiply and add into one rounding, as an AVX2 build's does)."""
    a = ft(-0.5)
    if fused:
        near = fma(fma(a + ft(2), x, -(a + ft(3)), ft) * x, x, ft(1), ft)
        far = fma(fma(fma(a, x, -(ft(5) * a), ft), x, ft(8) * a, ft), x, -(ft(4) * a), ft)
    else:
        near = ((a + ft(2)) * x - (a + ft(3))) * x * x + ft(1)
        far = ((a * x - ft(5) * a) * x + ft(8) * a) * x - ft(4) * a
    return np.where(x < 1, near, np.where(x < 2, far, ft(0))).astype(ft)


@functools.cache
def _libm_sin():
    """The C library's sinf and sin (what the kernel's std::sin calls), or None where ctypes cannot reach them."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("m"))
        fns = []
        for name, t in (("sinf", ctypes.c_float), ("sin", ctypes.c_double)):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = t, [t]
            fns.append(np.frompyfunc(fn, 1, 1))
        return tuple(fns)
    except (OSError, AttributeError, TypeError):
        return None


def _sin(y, t):
    """sin in `t` as the C library computes it (correctly rounded float64 sin otherwise)."""
    fns = _libm_sin()
    if fns is None or not np.size(y):
        return np.sin(np.asarray(y, np.float64)).astype(t)
    return fns[t is np.float64](np.asarray(y, t)).astype(t)


def _lanczos(x, ft):
    """The Lanczos-3 filter sinc(x) sinc(x / 3) at x = |argument| in `ft`, as the kernel evaluates it: sinc(v) =
    sin(pi v) / (pi v) in v's type (pi, the product, the C library's sin), x / 3 a double (so that sinc in double),
    the product in double rounded to `ft`."""
    def sinc(v, t):
        y = (v * t(np.pi)).astype(t)
        return np.where(v == 0, t(1), _sin(y, t) / np.where(v == 0, t(1), y)).astype(t)
    w = sinc(x, ft).astype(np.float64) * sinc(x.astype(np.float64) / 3.0, np.float64)
    return np.where(x < 3, w.astype(ft), ft(0))


_TAPS = {"bilinear": 2, "bicubic": 4, "lanczos": 6}


def _aa_weights(n_in, n_out, align, scale, ft, kind, mags, arith):
    """(n_out, n_in) matrix of PyTorch's antialiased interpolation (F.interpolate(antialias=True): a triangle, Keys
    cubic (a = -0.5) or Lanczos-3 filter stretched by the scale when downsampling, each row normalised to sum 1),
    computed in `ft` (the tensor's dtype) with the CPU kernel's mixed float/double steps
    (_compute_indices_min_size_weights_aa), bit for bit: the cubic filter with fused multiply-adds where `arith` is
    "fused" (_aa_arithmetic). `arith` None (a kernel whose filter arithmetic is not reproduced): the filter and the
    normalisation in float64, and with `mags` on magnitudes (a Mag), bounded as the rule's own arithmetic."""
    taps = _TAPS[kind]
    sc = _pixel_scale(n_in, n_out, align, scale, ft)
    big = float(sc) >= 1.0
    support = ft(taps * 0.5 * float(sc)) if big else ft(taps * 0.5)
    width = int(math.ceil(float(support))) * 2 + 1
    inv = ft(1.0 / float(sc)) if big else ft(1.0)
    center = (float(sc) * (np.arange(n_out) + 0.5)).astype(ft)
    lo = np.maximum(np.trunc((center - support).astype(np.float64) + 0.5).astype(np.int64), 0)
    hi = np.minimum(np.trunc((center + support).astype(np.float64) + 0.5).astype(np.int64), n_in)
    size = np.clip(hi - lo, 0, width)
    exact = kind == "bilinear" or arith is not None
    mags = mags and not exact

    def filt(x):  # x = |argument| >= 0, in ft
        if kind == "bilinear":
            return np.where(x < 1, (1.0 - x.astype(np.float64)).astype(ft), ft(0))
        if exact:
            return _keys(x, ft, arith == "fused") if kind == "bicubic" else _lanczos(x, ft)
        x = x.astype(np.float64)
        if kind == "lanczos":
            w = _lanczos(x, np.float64)
            if not mags:
                return w
            # pi x rounded (2 units of it), sin (2 units of its result), the quotient and the product (a unit each):
            # 5 units of w, and sin's slope times pi x's rounding, 2 |cos(pi x)| |sinc(x / 3)|, where sin is near 0
            slope = 2 * np.abs(np.cos(np.pi * x) * np.sinc(x / 3.0)) * (x < 3)
            return Mag(6 * np.abs(w) + slope, w, 1)
        near = _horner(x, (1.5, -2.5, 0.0, 1.0), mags)
        far = _horner(x, (-0.5, 2.5, -4.0, 2.0), mags)
        return np.where(x < 1, near, np.where(x < 2, far, 0.0))

    ws, total = [], ft(0) if exact else 0.0
    for j in range(width):
        arg = ((((j + lo).astype(ft) - center).astype(np.float64) + 0.5) * float(inv)).astype(ft)
        w = np.where(j < size, filt(np.abs(arg)), 0.0)
        if exact:
            w = w.astype(ft)
        total = total + w  # (one by one, as the kernel adds them)
        ws.append(w)
    tv = np.asarray(total)
    safe = np.where(tv != 0, total, 1.0)
    m = Mag(np.zeros((n_out, n_in)), np.zeros((n_out, n_in))) if mags else np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    for j, w in enumerate(ws):
        keep = j < size
        q = (w / safe.astype(ft)).astype(ft).astype(np.float64) if exact else w / safe
        np.add.at(m, (rows[keep], (lo + j)[keep]), q[keep])
    return m


@functools.cache
def _aa_arithmetic(kind: str, dtype: str):
    """How this PyTorch's CPU kernel evaluates an antialiasing filter: "plain" (each operation rounded), "fused"
    (the cubic's multiply-adds fused) or None (neither reproduces it bit for bit). Asked of the kernel itself, once:
    its forward pass over one-hot rows gives its weights exactly."""
    if kind == "bilinear":
        return "plain"
    ft, dt = (np.float64, torch.float64) if dtype == "float64" else (np.float32, torch.float32)
    seen = {"plain": True, "fused": kind == "bicubic"}
    for n_in, n_out, align in ((17, 5, False), (7, 16, False), (9, 4, True), (5, 3, False), (30, 7, True)):
        if kind == "lanczos" and align:
            continue
        x = torch.eye(n_in, dtype=dt, device="cpu").reshape(n_in, 1, 1, n_in)
        with torch.no_grad():
            y = torch.nn.functional.interpolate(x, size=(1, n_out), mode=kind, align_corners=align, antialias=True)
        y = y[:, 0, 0, :].numpy().T.astype(np.float64)
        for arith in [a for a, ok in seen.items() if ok]:
            seen[arith] = np.array_equal(y, _aa_weights(n_in, n_out, align, None, ft, kind, False, arith))
    return "plain" if seen["plain"] else "fused" if seen["fused"] else None


_AA_KINDS = {"UpsampleBilinear2DAaBackward0": "bilinear", "UpsampleBicubic2DAaBackward0": "bicubic",
             "UpsampleLanczos2DAaBackward0": "lanczos"}


@rule(*_AA_KINDS, cpu_kernel=True)
def _upsample_aa(c):  # the CPU kernel adds (wx wy) g into each input element the filter reaches
    cpu_only(c, "the rule computes the CPU kernel's filter weights (CUDA's compute them otherwise)")
    sizes, g = c.a["self_sym_sizes"], c.g
    dtype = c.in_dtypes[0]
    if dtype not in ("float32", "float64"):
        raise Unsupported(f"antialiased upsampling in {dtype}: the rule computes the CPU kernel's float32 and float64 "
                          "filter weights only")
    ft = np.float64 if dtype == "float64" else np.float32
    kind = _AA_KINDS[c.type]
    arith = _aa_arithmetic(kind, dtype)
    mats = [_aa_weights(sizes[2 + i], g.shape[2 + i], c.a["align_corners"], sc, ft, kind, isinstance(g, Mag), arith)
            for i, sc in enumerate(_scales(c, 2))]
    return (_separable(g, mats),)


def _fold_geom(c):
    return [list(c.a[k]) for k in ("kernel_size", "dilation", "padding", "stride")]


def _col2im(g, size, k, dil, pad, st, zeros):  # (N, C kh kw, L) -> (N, C, H, W), adding overlaps
    n, ckk, _ = g.shape
    ch = ckk // (k[0] * k[1])
    oh, ow = ((size[i] + 2 * pad[i] - dil[i] * (k[i] - 1) - 1) // st[i] + 1 for i in range(2))
    g6 = g.reshape(n, ch, k[0], k[1], oh, ow)
    out = zeros((n, ch, size[0] + 2 * pad[0], size[1] + 2 * pad[1]))
    for i in range(k[0]):
        for j in range(k[1]):
            out[:, :, i * dil[0]: i * dil[0] + st[0] * (oh - 1) + 1: st[0],
                j * dil[1]: j * dil[1] + st[1] * (ow - 1) + 1: st[1]] += g6[:, :, i, j]
    return out[:, :, pad[0]: pad[0] + size[0], pad[1]: pad[1] + size[1]]


def _im2col(x, k, dil, pad, st):  # (N, C, H, W) -> (N, C kh kw, L)
    xp = _pad_spatial(x, pad)
    n, ch = x.shape[:2]
    oh, ow = ((xp.shape[2 + i] - dil[i] * (k[i] - 1) - 1) // st[i] + 1 for i in range(2))
    cols = [xp[:, :, i * dil[0]: i * dil[0] + st[0] * (oh - 1) + 1: st[0],
               j * dil[1]: j * dil[1] + st[1] * (ow - 1) + 1: st[1]] for i in range(k[0]) for j in range(k[1])]
    return np.stack(cols, axis=2).reshape(n, ch * k[0] * k[1], oh * ow)


@rule("Im2ColBackward0")
def _unfold(c):  # F.unfold
    shape = c.in_shapes[0]
    g = c.g if c.g.ndim == 3 else c.g[None]
    size = (c.a["self_sym_argsize_minus_2"], c.a["self_sym_argsize_minus_1"])
    return (_col2im(g, size, *_fold_geom(c), c.zeros).reshape(shape),)


@rule("Col2ImBackward0")
def _fold(c):  # F.fold
    g = c.g if c.g.ndim == 4 else c.g[None]
    return (_im2col(g, *_fold_geom(c)).reshape(c.in_shapes[0]),)


@rule("MaxUnpool2DBackward0", "MaxUnpool3DBackward0")
def _max_unpool(c):  # each input element went to its index in the flattened spatial output
    idx = c.s["indices"]
    k = 2 if c.type == "MaxUnpool2DBackward0" else 3
    lead = idx.shape[: idx.ndim - k]
    g = c.g.reshape(lead + (-1,))
    return (np.take_along_axis(g, idx.reshape(lead + (-1,)), axis=-1).reshape(idx.shape),)
