"""Sampling at computed positions: grid_sample (GridSampler2D/3D, and the scalar 2-d CPU kernel's
GridSampler2DCpuFallback: bilinear, nearest, bicubic; zeros, border and reflection padding; either align_corners).

Where a grid point falls (which pixels it reads, which side of a border or a reflection it lands on) is decided
as PyTorch's CPU kernels decide it: the coordinates computed in the grid's dtype with their steps (the 2-d kernel
is vectorised and unnormalises as (x + 1) s - 1/2, the scalar ones as ((x + 1) W - 1) / 2), with a fused
multiply-add where the kernel was compiled to use one (_fuses asks it; a kernel neither reproduces leaves the node
unmirrored). The weights and the coordinates' own values are then
computed again from the grid in float64, on magnitudes too, so the bound counts the roundings of PyTorch's
coordinate arithmetic (a weight 1 - t, t = x - floor(x), is off by a few roundings of x, not of t). The gradient
for the grid at a kink of the interpolation (a grid point exactly on a pixel, or on a border) is the one-sided one
PyTorch takes. CUDA's kernels round their coordinates otherwise (a point within a rounding of a pixel boundary may
fall on the other side there): a node on another device than the CPU is left unmirrored.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch

from .bounds import Mag, gamma, unit_roundoff
from .table import Unsupported, cpu_only, fma, rule

_BILINEAR, _NEAREST, _BICUBIC = 0, 1, 2
_ZEROS, _BORDER, _REFLECTION = 0, 1, 2


def _unnormalize(x, size, align, vec, f):
    """Grid values -> pixel coordinates, as the kernel writes it (`vec`: the vectorised 2-d kernel), constants
    made by `f` (the dtype's scalar type, or float for the float64 and magnitude runs)."""
    if vec:
        if align:
            return (x + f(1)) * (f(size - 1) / f(2))
        return (x + f(1)) * (f(size) / f(2)) - f(0.5)
    if align:
        return ((x + f(1)) / f(2)) * f(size - 1)
    return ((x + f(1)) * f(size) - f(1)) / f(2)


def _unnormalize_dtype(v32, size, align, vec, ft, fused):
    """The coordinates in the grid's dtype, as PyTorch's kernel computes them: `fused` where its compiler fused the
    multiply and the subtraction into one rounding (see _fuses)."""
    if align or not fused:
        return _unnormalize(v32, size, align, vec, ft).astype(ft)
    a = (v32 + ft(1)).astype(ft)
    if vec:
        return fma(a, ft(size) / ft(2), -0.5, ft)
    return (fma(a, ft(size), -1.0, ft) / ft(2)).astype(ft)


@functools.cache
def _fuses(dtype: str, kernel: str) -> bool | None:
    """Does this PyTorch's CPU grid_sample `kernel` ("vec2d": the vectorised 2-d one; "scalar3d"; "fallback2d": the
    scalar 2-d one) compute the unnormalisation (x + 1) s - 1/2 with a fused multiply-add (a build for AVX2 does in
    its vectorised kernels, its compiler contracting the two operations)? Asked of the kernel itself, once: sampling
    width-one-hot channels at grid points gives each point's weight x - floor(x) exactly, which tells the two
    arithmetics apart. None: neither reproduces the kernel."""
    ft, dt = (np.float64, torch.float64) if dtype == "float64" else (np.float32, torch.float32)
    w, dims = 37, 3 if kernel == "scalar3d" else 2
    g = np.random.default_rng(0).uniform(-1, 1, 4096).astype(ft)
    grid = np.zeros((1, 1, g.size, dims), dtype=ft)
    grid[..., 0] = g
    eye = torch.eye(w, dtype=dt, device="cpu").reshape((1, w) + (1,) * (dims - 1) + (w,))
    grid = torch.from_numpy(grid if dims == 2 else grid[:, None])
    with torch.no_grad():
        out = (torch._grid_sampler_2d_cpu_fallback(eye, grid, 0, 0, False) if kernel == "fallback2d" else
               torch.nn.functional.grid_sample(eye, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    out = out.reshape(w, g.size).numpy()
    seen = {}
    for fused in (False, True):
        x = _unnormalize_dtype(g, w, False, kernel == "vec2d", ft, fused)
        i0 = np.floor(x).astype(np.int64)
        keep = (x >= 0) & (i0 + 1 < w)
        seen[fused] = np.array_equal(out[i0[keep] + 1, np.nonzero(keep)[0]], (x - np.floor(x))[keep])
    return False if seen[False] else True if seen[True] else None


def _scale(size, align):  # d coordinate / d grid value (exact: a half-integer)
    return (size - 1) / 2 if align else size / 2


def _clip(x32, x, size, ft):
    """Clip to [0, size - 1], the borders counting as outside (gradient 0), as the kernels do: (x32, x, factor)."""
    lo = x32 <= 0
    x32 = np.maximum(x32, ft(0))
    hi = x32 >= ft(size - 1)
    x32 = np.minimum(x32, ft(size - 1))
    return x32, np.where(lo, 0.0, np.where(hi, float(size - 1), x)), (~lo & ~hi).astype(np.float64)


def _reflect(x32, x, size, align, vec, ft):
    """Reflect into [low, low + span] (low = 0 or -1/2), as the kernel does: (x32, x, factor ±1)."""
    if align and size <= 1:  # an empty span: every coordinate is 0, its gradient 0
        z = np.zeros(np.shape(x32))
        return z.astype(ft), z, z
    low = 0.0 if align else -0.5
    span = float(size - 1 if align else size)  # exact in any dtype
    iml32 = x32 - ft(low)
    neg = iml32 < 0
    a32 = np.abs(iml32)
    a = np.where(neg, -(x - low), x - low)
    if vec:  # double flips: extra = |x - low| - trunc(|x - low| / 2 span) 2 span, then the nearer of the two images
        ts = ft(2 * span)
        k = np.trunc(a32 / ts)
        e32 = a32 - k * ts
        r32 = ts - e32
        flip = e32 > r32
        e = a - k.astype(np.float64) * (2 * span)
        out32 = np.where(flip, r32, e32) + ft(low)
        out = np.where(flip, 2 * span - e, e) + low
    else:  # fmod by the span, its parity from floor(|x - low| / span)
        e32 = np.fmod(a32, ft(span))
        q = np.rint((a32.astype(np.float64) - e32.astype(np.float64)) / span)  # fmod's own (exact) quotient
        flip = (np.floor(a32 / ft(span)).astype(np.int64) % 2) == 1
        e = a - q * span
        out32 = np.where(flip, ft(span) - e32 + ft(low), e32 + ft(low))
        out = np.where(flip, span - e, e) + low
    return out32.astype(ft), out, np.where(flip != neg, -1.0, 1.0)


def _locate(v32, v, size, pad, align, vec, ft, fused, padded=True):
    """One grid component -> (coordinate in the dtype, coordinate in float64 / magnitudes, d coordinate / d grid)."""
    x32 = _unnormalize_dtype(v32, size, align, vec, ft, fused)
    x = _unnormalize(v, size, align, vec, float)
    mult = np.full(np.shape(v32), _scale(size, align))
    if padded and pad == _REFLECTION:
        x32, x, f = _reflect(x32, x, size, align, vec, ft)
        mult = mult * f
    if padded and pad in (_BORDER, _REFLECTION):
        x32, x, f = _clip(x32, x, size, ft)
        mult = mult * f
    return x32, x, mult


def _tap(i32, size, pad, align, vec, ft):
    """A bicubic tap's pixel index (an integer-valued coordinate, padded as the kernel's compute_coordinates)."""
    if pad == _REFLECTION:
        i32 = _reflect(i32, i32.astype(np.float64), size, align, vec, ft)[0]
    if pad in (_BORDER, _REFLECTION):
        i32 = np.minimum(np.maximum(i32, ft(0)), ft(size - 1))
    return np.trunc(i32).astype(np.int64)


# The bicubic weights (A = -0.75) as polynomials of t in [0, 1), each as (value, the polynomial with its coefficients'
# absolute values: its terms' magnitudes at |argument|, and its derivative); the argument is t shifted, within [-1, 3].
_A = -0.75
_NEAR = (lambda x: ((_A + 2) * x - (_A + 3)) * x * x + 1.0, lambda x: (1.25 * x + 2.25) * x * x + 1.0,
         lambda x: (3.75 * x - 4.5) * x)
_FAR = (lambda x: ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A, lambda x: ((0.75 * x + 3.75) * x + 6.0) * x + 3.0,
        lambda x: (-2.25 * x + 7.5) * x - 6.0)
_DNEAR = (lambda x: (3 * (_A + 2) * x - 2 * (_A + 3)) * x, lambda x: (3.75 * x + 4.5) * x, lambda x: 7.5 * x - 4.5)
_DFAR = (lambda x: (3 * _A * x - 10 * _A) * x + 8 * _A, lambda x: (2.25 * x + 7.5) * x + 6.0, lambda x: -4.5 * x + 7.5)
_CURVE = 30.0  # |second derivative| of each of these polynomials on [-1, 3] (at most 18)


def _err_scale(x: Mag, ft) -> np.ndarray:
    """A bound on the error of `x` (gamma_n m on magnitudes, in the dtype's unit roundoff)."""
    return gamma(x.n, unit_roundoff("float64" if ft is np.float64 else "float32")) * x.m


def _lift(t, poly, sign, shift, ft):
    """poly(sign t + shift), computed from t; on magnitudes, the polynomial's own rounding (its terms at the argument's
    size), then t's error carried through it: t is a few roundings of a coordinate of any size, so its error, not its
    size, counts, times |poly'| over the interval that error allows (|poly'(x)| + _CURVE |error|)."""
    f, fabs, df = poly
    if not isinstance(t, Mag):
        return f(sign * t + shift)
    x = sign * t.v + shift
    return Mag(fabs(np.abs(x)) + (np.abs(df(x)) + _CURVE * _err_scale(t, ft)) * t.m, f(x), t.c + 8)


def _prod(ws, ft):
    """The product of interpolation weights; on magnitudes each factor's error times the others' sizes (each at most
    its value plus its own error), and the products' roundings."""
    if len(ws) == 1:
        return ws[0]
    if not any(isinstance(w, Mag) for w in ws):
        out = ws[0]
        for w in ws[1:]:
            out = out * w
        return out
    ws = [Mag.of(w) for w in ws]
    size = [np.abs(w.v) + _err_scale(w, ft) for w in ws]
    m = np.prod([np.abs(w.v) for w in ws], axis=0)
    for j, w in enumerate(ws):
        m = m + w.m * np.prod([s for i, s in enumerate(size) if i != j] or [1.0], axis=0)
    return Mag(m, np.prod([w.v for w in ws], axis=0), max(w.n for w in ws) + len(ws) - 1)


def _cubic(t, ft):
    """The four bicubic weights at t and their derivatives d/dt."""
    w = [_lift(t, _FAR, 1, 1.0, ft), _lift(t, _NEAR, 1, 0.0, ft), _lift(t, _NEAR, -1, 1.0, ft),
         _lift(t, _FAR, -1, 2.0, ft)]
    d = [_lift(t, _DFAR, 1, 1.0, ft), _lift(t, _DNEAR, 1, 0.0, ft), -_lift(t, _DNEAR, -1, 1.0, ft),
         -_lift(t, _DFAR, -1, 2.0, ft)]
    return w, d


class _Pixels:
    """The input read at integer positions: gathers and scatter-adds over (N, spatial..., C)."""

    def __init__(self, c, inp, sizes):
        self.c, self.inp, self.sizes = c, inp, sizes
        self.n, self.ch = inp.shape[0], inp.shape[1]
        self.p = math.prod(sizes)
        self.grad = None

    def where(self, idx, like):
        """idx: per spatial axis, integer arrays of the grid's shape (N, out...): flat index and in-bounds mask."""
        valid = np.ones(like, dtype=bool)
        flat = np.zeros(like, dtype=np.int64)
        for i, s in zip(idx, self.sizes):
            valid &= (i >= 0) & (i < s)
            flat = flat * s + np.clip(i, 0, s - 1)
        return flat, valid

    def batch(self, like):
        return np.broadcast_to(np.arange(self.n).reshape((self.n,) + (1,) * (len(like) - 1)), like)

    def read(self, flat, valid):  # (N, out..., C), 0 outside
        x = np.moveaxis(self.inp.reshape(self.n, self.ch, self.p), 1, -1)
        return np.where(valid[..., None], x[self.batch(flat.shape), flat], 0.0)

    def add(self, flat, valid, vals):  # grad[n, flat, :] += vals (N, out..., C) where valid
        if self.grad is None:
            self.grad = self.c.zeros((self.n, self.p, self.ch))
        np.add.at(self.grad, (self.batch(flat.shape)[valid], flat[valid]), vals[valid])

    def result(self):
        if self.grad is None:
            return self.c.zeros(self.inp.shape)
        return np.moveaxis(self.grad.reshape((self.n,) + tuple(self.sizes) + (self.ch,)), -1, 1)


@rule("GridSampler2DBackward0", "GridSampler3DBackward0", "GridSampler2DCpuFallbackBackward0", cpu_kernel=True)
def _grid_sample(c):
    cpu_only(c, "the rule decides which pixels a point reads as the CPU kernel does (CUDA's rounds its coordinates "
                "otherwise)")
    inp, grid, g = c.s["input"], c.s["grid"], c.g
    mode, pad, align = c.a["interpolation_mode"], c.a["padding_mode"], bool(c.a["align_corners"])
    if mode not in (_BILINEAR, _NEAREST, _BICUBIC) or pad not in (_ZEROS, _BORDER, _REFLECTION):
        raise Unsupported(f"grid_sample with interpolation mode {mode}, padding mode {pad}")
    k = grid.shape[-1]
    sizes = tuple(inp.shape[2:])
    # CPU: 2-d grids take the vectorised kernel (the scalar one for inputs whose offsets overflow 32 bits: the
    # fallback op), 3-d ones the scalar one
    kernel = "scalar3d" if k == 3 else "fallback2d" if c.type == "GridSampler2DCpuFallbackBackward0" else "vec2d"
    vec = kernel == "vec2d"
    dtype = next((d for d in c.in_dtypes if d), None)
    if dtype not in ("float32", "float64"):  # (float16 and bfloat16 grids pick their pixels in their own precision)
        raise Unsupported(f"grid_sample in {dtype}: the CPU kernel computes the coordinates in {dtype}, which the rule "
                          "does not reproduce (float32 and float64 only)")
    ft = np.float64 if dtype == "float64" else np.float32
    want_in = len(c.in_shapes) > 0 and c.in_shapes[0] is not None
    want_grid = len(c.in_shapes) > 1 and c.in_shapes[1] is not None
    gv = np.asarray(grid)  # the grid's values (on magnitudes too)
    if not np.all(np.isfinite(gv)):
        raise Unsupported("grid_sample at a NaN or infinite grid value (the kernels clamp a NaN coordinate to 0 or "
                          "leave it out, by padding mode)")
    fused = not align and _fuses(dtype, kernel)
    if fused is None:
        raise Unsupported("this PyTorch's grid_sample kernel computes its coordinates otherwise than the rule "
                          "reproduces (neither (x + 1) s - 1/2 rounded twice nor fused)")
    comps = range(k)  # component j of the grid addresses spatial axis k - 1 - j (x: width)
    size_of = [sizes[k - 1 - j] for j in comps]
    gm = np.moveaxis(g, 1, -1)  # (N, out..., C)
    like = gv.shape[:-1]
    px = _Pixels(c, inp, sizes)

    def spatial(per_comp):  # per-component index arrays -> per spatial axis
        return [per_comp[k - 1 - a] for a in range(k)]

    if mode == _NEAREST:
        if want_in:
            idx = [np.rint(_locate(gv[..., j].astype(ft), grid[..., j], size_of[j], pad, align, vec, ft, fused)[0])
                   .astype(np.int64) for j in comps]
            flat, valid = px.where(spatial(idx), like)
            px.add(flat, valid, gm)
        return (px.result() if want_in else None, c.zeros(grid.shape) if want_grid else None)

    if mode == _BICUBIC:
        if k != 2:
            raise Unsupported("bicubic grid_sample of a 3-d input")
        locs = [_locate(gv[..., j].astype(ft), grid[..., j], size_of[j], pad, align, vec, ft, fused, padded=False)
                for j in comps]
        i0 = [np.floor(x32) for x32, _, _ in locs]
        wd = [_cubic(x - i.astype(np.float64), ft) for (_, x, _), i in zip(locs, i0)]
        taps = [[_tap(i0[j] + ft(t - 1), size_of[j], pad, align, vec, ft) for t in range(4)] for j in comps]
        terms = [[] for _ in comps]
        for tx, ty in itertools.product(range(4), range(4)):
            flat, valid = px.where([taps[1][ty], taps[0][tx]], like)
            if want_in:
                px.add(flat, valid, gm * _prod([wd[0][0][tx], wd[1][0][ty]], ft)[..., None])
            if want_grid:
                val = px.read(flat, valid) * gm
                terms[0].append(val * _prod([wd[0][1][tx], wd[1][0][ty]], ft)[..., None])
                terms[1].append(val * _prod([wd[0][0][tx], wd[1][1][ty]], ft)[..., None])
        mults = [m for _, _, m in locs]
    else:  # bilinear (trilinear for 3-d)
        locs = [_locate(gv[..., j].astype(ft), grid[..., j], size_of[j], pad, align, vec, ft, fused) for j in comps]
        i0 = [np.floor(x32).astype(np.int64) for x32, _, _ in locs]
        hi = [x - i for (_, x, _), i in zip(locs, i0)]  # weight of the upper neighbour along each component
        lo = [1.0 - h for h in hi]
        terms = [[] for _ in comps]
        for bits in itertools.product((0, 1), repeat=k):
            flat, valid = px.where(spatial([i + b for i, b in zip(i0, bits)]), like)
            ws = [hi[j] if b else lo[j] for j, b in enumerate(bits)]
            if want_in:
                px.add(flat, valid, gm * _prod(ws, ft)[..., None])
            if want_grid:
                val = px.read(flat, valid)
                for j in comps:
                    d = _prod([x for i, x in enumerate(ws) if i != j], ft)
                    terms[j].append(val * (d if bits[j] else -d)[..., None])
        if want_grid:
            terms = [[t * gm for t in ts] for ts in terms]
        mults = [m for _, _, m in locs]
    if not want_grid:
        return (px.result() if want_in else None, None)
    # the kernels add the terms of every pixel and channel into one sum per grid component, then scale it
    out = [np.stack(ts, axis=-2).sum(axis=(-2, -1)) * m for ts, m in zip(terms, mults)]
    return (px.result() if want_in else None, np.stack(out, axis=-1))
