"""Rounding-error bounds for the mirror: each backward rule evaluated once more, on magnitudes.

A rule is linear in its incoming gradient G and is written with numpy operations. Run on a :class:`Mag`
instead of an array, the same code computes, for every output element, M = the sum of the absolute values
of the terms the rule adds up (the classic dot-product bound |fl(x.y) - x.y| <= gamma_n |x|.|y|), and n =
how many roundings a result can have gone through. A ``Mag`` holds

- ``m``: magnitudes (a float64 array): ``a - b`` gives |a| + |b|, ``a * b`` gives |a| |b|, a sum of k
  terms the sum of their magnitudes, a matrix product |A| @ |B|;
- ``v``: the values, for quantities computed from saved tensors only (the rule's coefficients: ``1 - y*y``,
  ``x - mean``), so that comparisons, ``where`` and elementary functions see real numbers; None for anything
  that depends on G (a rule never branches on G or applies exp to it: it is linear in G);
- ``n``: a count of roundings per element (the largest over the array): +1 per addition or multiplication,
  + k - 1 for a sum of k terms, + K for a length-K dot product, + ``ELEMENTARY_UNITS`` for exp/log/tanh/...

Two rule-context methods say what plain numpy cannot: ``c.rounded(dtype, x)`` (a cast, as PyTorch rounds it:
one rounding on magnitudes) and ``c.dtype_sum(x, axis)`` (a sum PyTorch accumulates in the tensor's own dtype,
rounding after every addition: r = n, e.g. the CPU layer-norm kernel's per-thread dgamma/dbeta buffers for
bfloat16/float16, measured bit for bit against torch 2.13: each thread adds its rows one by one in bfloat16,
then the buffers are added).

Conventions for rule authors (the rule modules of this package): use numpy functions and operators only
(``np.where``, ``np.einsum`` with explicit output subscripts, ``...`` allowed, ``np.add.at``,
``.sum(axis=...)``, slicing and slice assignment, ``c.zeros(shape)`` for buffers); never turn G into Python
floats or branch on its values; elementwise functions of saved tensors may be anything (unknown numpy functions
of coefficients run on their values). A rule that cannot run on a ``Mag`` makes the mirror
fall back to a relative bound for that node (noted on its row); tests/test_verdicts.py checks every rule.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..errors import LensTypeError
from .scalar import floats
from .table import Ctx, round_to

__all__ = ["CHUNK", "MOVES_ONLY", "REAL_OF", "Mag", "MagCtx", "Reduced", "chunks", "gamma", "local_bound", "rounding",
           "unit_roundoff"]

# Unit roundoff u = eps / 2 (half the distance from 1 to the next float) per dtype, and the smallest
# subnormal / 2: the absolute error one rounding may add near underflow (fl(x op y) = (x op y)(1 + d) + e).
UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
UNDERFLOW = {"float64": 2.0**-1075, "float32": 2.0**-150, "float16": 2.0**-25, "bfloat16": 2.0**-134}
# An elementary function (exp, log, tanh, sqrt, erf, ...) from libm or PyTorch's vectorised kernels: within
# 2 ulp = 4 unit roundoffs, plus the propagated error of its argument (first order, |f'(x)| * error of x).
ELEMENTARY_UNITS = 4


# PyTorch accumulates sums and products of half-precision tensors in float32 (its "opmath" type): a sum of
# k bfloat16 terms rounds k - 1 times in float32 and once in bfloat16.
OPMATH = {"bfloat16": "float32", "float16": "float32"}

# On CUDA, float32 convolutions (torch.backends.cudnn.allow_tf32, on by default) and matrix products
# (torch.backends.cuda.matmul.allow_tf32 / set_float32_matmul_precision("high")) may run on tensor cores in
# TensorFloat-32: each factor keeps 10 of its 23 mantissa bits (rounded or truncated, so within 2^-10
# relative), the products are summed in float32. A product of two such factors is off by gamma_2(2^-10).
TF32_TRUNCATION = 2.0**-10


def unit_roundoff(dtype: str) -> float:
    return UNIT_ROUNDOFF.get(dtype, UNIT_ROUNDOFF["float32"])


def local_bound(x: Mag, dtype: str, tf32: bool = False, atomic: bool = False) -> np.ndarray:
    """B for the magnitudes `x` of a rule's result (bound_of)."""
    m, factor, add = bound_of(x, dtype, tf32, atomic)
    b = np.multiply(m, factor, dtype=np.float64)
    b += add  # (in place: one array, not three)
    return b


def bound_of(x: Mag, dtype: str, tf32: bool = False, atomic: bool = False) -> BoundOf:
    """B = (gamma_n(u_opmath) + gamma_r(u_dtype) + 3 gamma_n(u_64)) * M + n * eta: PyTorch's rounding of a
    rule's result in `dtype`, plus the float64 mirror's own (two runs and their difference); `tf32` adds
    the rounding of the factors to TensorFloat-32 (a float32 convolution or matrix product on CUDA).
    `atomic`: a CUDA backward kernel that adds with atomics in the half-precision dtype itself (upsampling,
    index, gather and pooling backward; seen on an H100), so every addition rounds to the dtype."""
    u, n, r = unit_roundoff(dtype), x.n, x.r
    acc = (gamma(n, unit_roundoff(OPMATH[dtype])) + gamma(r, u) if dtype in OPMATH and not atomic
           else gamma(n, u))
    if tf32:
        acc += gamma(2, TF32_TRUNCATION)
    coef = acc + 3 * gamma(n, UNIT_ROUNDOFF["float64"])
    if x._m is None and x.m32 is not None:  # float32 magnitudes (NOTE [float32 magnitudes]): F m32 + A
        f, a = x.s32
        return BoundOf(x.m32, coef * f, coef * a + n * UNDERFLOW.get(dtype, 0.0))
    return BoundOf(x.m, coef, n * UNDERFLOW.get(dtype, 0.0))


class BoundOf(NamedTuple):
    """B = m factor + add (local_bound's arithmetic), made by `array`, or chunk by chunk by whoever reads it once."""
    m: np.ndarray
    factor: float
    add: float

    def array(self, m=None) -> np.ndarray:
        b = np.multiply(self.m if m is None else m, self.factor, dtype=np.float64)
        b += self.add  # (in place: one array, not three)
        return b


# Node types whose rules only move, select or negate the elements of the incoming gradient (views, slices,
# concatenation, masks): no rounding anywhere (n = r = 0 on magnitudes), so B = 0 without the run on magnitudes.
# tests/test_verdicts.py checks each on magnitudes.
MOVES_ONLY = frozenset({
    "AliasBackward0", "CatBackward0", "CloneBackward0", "ConstantPadNdBackward0", "FlipBackward0", "NegBackward0",
    "PermuteBackward0", "PixelShuffleBackward0", "PixelUnshuffleBackward0", "ReluBackward0", "ReshapeAliasBackward0",
    "RollBackward0", "SelectBackward0", "SliceBackward0", "SplitBackward0", "SplitWithSizesBackward0",
    "SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward2", "StackBackward0", "SumBackward0", "SumBackward1",
    "TBackward0", "ThresholdBackward0", "TransposeBackward0", "TransposeBackward1", "UnbindBackward0",
    "UnsafeSplitBackward0", "UnsafeSplitWithSizesBackward0", "UnsafeViewBackward0", "UnsqueezeBackward0",
    "ViewBackward0", "MaskedFillBackward0", "TrilBackward0", "TriuBackward0"})


CHUNK = 1 << 16  # elements: arrays larger than this are judged chunk by chunk (the temporaries stay in cache)


def chunks(*arrays, out=0):
    """Iterate over equal chunks of `arrays` broadcast together (any layout; None and numbers as 0-d), with
    `out` more (True: one), written, float64 chunks of new arrays (``it.operands[-out:]`` after the loop). The
    chunks are 1-d, or 2-d tiles where the arrays' layouts disagree (a matrix and a transposed one: `_Tiles`);
    reduce them with ``axis=None``."""
    ops = [np.float64(0.0) if a is None else a for a in arrays]
    tiles = _Tiles.of(ops, out)
    if tiles is not None:
        return tiles
    flags = [["readonly"]] * len(ops)
    ops += [None] * int(out)
    flags = flags + [["writeonly", "allocate"]] * int(out)
    return np.nditer(ops, flags=["external_loop", "buffered", "zerosize_ok", "refs_ok"], op_flags=flags,
                     op_dtypes=[None] * len(arrays) + [np.float64] * int(out), buffersize=CHUNK)


class _Tiles:
    """`chunks` over arrays whose last two axes are laid out differently (one row-major, one column-major: PyTorch
    hands over a transposed weight's gradient so): square tiles of the last two axes, in which both layouts stay
    in cache (a flat chunk of one reads the other a whole row apart per element: four times slower)."""

    T = 256  # a tile is T x T elements (= CHUNK)

    def __init__(self, ops, shape, out):
        self.ops = [np.broadcast_to(a, shape) for a in ops]
        self.shape = shape
        if out:
            like = next(a for a in ops if np.shape(a) == shape)
            self.ops += [np.empty_like(like, dtype=np.float64) for _ in range(int(out))]
        self.operands = self.ops

    @classmethod
    def of(cls, ops, out):
        arrays = [a for a in ops if isinstance(a, np.ndarray)]
        if not arrays or max(a.size for a in arrays) <= CHUNK:
            return None
        try:
            shape = np.broadcast_shapes(*(np.shape(a) for a in ops))
        except ValueError:
            return None
        if len(shape) < 2 or shape[-1] < 2 or shape[-2] < 2:
            return None
        rows = {a.strides[-1] < a.strides[-2] for a in arrays if a.shape == shape and a.strides[-1] and a.strides[-2]}
        return cls(ops, shape, out) if len(rows) == 2 else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __iter__(self):
        t, (h, w) = self.T, self.shape[-2:]
        for lead in np.ndindex(*self.shape[:-2]):
            for i in range(0, h, t):
                for j in range(0, w, t):
                    idx = lead + (slice(i, i + t), slice(j, j + t))
                    yield tuple(a[idx] for a in self.ops)


# A complex dtype rounds its real and imaginary parts as the real dtype of the same precision.
REAL_OF = {"complex128": "float64", "complex64": "float32", "complex32": "float16"}


def rounding(x, dtype) -> np.ndarray | float:
    """What the local check allows for rounding the float64 mirror to `dtype` (also carried on); a complex number
    rounds in its two parts."""
    dtype = REAL_OF.get(dtype, dtype)
    if x is None or dtype in (None, "float64") or dtype not in UNDERFLOW:
        return 0.0
    x = floats(x)
    r = np.abs(x)
    r *= (1 + np.iscomplexobj(x)) * unit_roundoff(dtype)
    r += UNDERFLOW[dtype]
    return r


def gamma(n: int, u: float) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of n roundings."""
    nu = n * u
    return nu / (1 - nu) if nu < 1 else math.inf


_DERIV = {  # elementwise functions: derivative from (x, f(x)), for the propagated error of the argument
    np.exp: lambda x, r: r, np.expm1: lambda x, r: r + 1, np.log: lambda x, r: 1 / x,
    np.log1p: lambda x, r: 1 / (1 + x), np.log2: lambda x, r: 1 / (x * math.log(2)),
    np.log10: lambda x, r: 1 / (x * math.log(10)), np.sqrt: lambda x, r: 0.5 / r,
    np.tanh: lambda x, r: 1 - r * r, np.sin: lambda x, r: np.cos(x), np.cos: lambda x, r: np.sin(x),
    np.tan: lambda x, r: 1 + r * r, np.arctan: lambda x, r: 1 / (1 + x * x), np.sinh: lambda x, r: np.cosh(x),
    np.cosh: lambda x, r: np.sinh(x), np.reciprocal: lambda x, r: r * r, np.cbrt: lambda x, r: r / (3 * x),
    np.exp2: lambda x, r: r * math.log(2),
}
_PLAIN = {np.greater, np.greater_equal, np.less, np.less_equal, np.equal, np.not_equal, np.logical_and,
          np.logical_or, np.logical_not, np.logical_xor, np.isnan, np.isinf, np.isfinite, np.signbit}
_EXACT = {np.sign, np.floor, np.ceil, np.rint, np.trunc}
_STRUCT = {np.reshape, np.transpose, np.swapaxes, np.moveaxis, np.expand_dims, np.squeeze, np.broadcast_to,
           np.flip, np.concatenate, np.stack, np.split, np.array_split, np.pad, np.take, np.take_along_axis,
           np.copy, np.ravel, np.tile, np.repeat, np.roll, np.diagonal, np.tril, np.triu, np.atleast_1d,
           np.atleast_2d, np.atleast_3d, np.ascontiguousarray, np.rot90, np.hstack, np.vstack, np.fliplr,
           np.flipud, np.squeeze, np.zeros_like, np.diag, np.tensordot}
_STRUCT.discard(np.tensordot)


class Mag:
    """Magnitudes (``m``), values when G-free (``v``) and a rounding count (``n``) of one array in a rule.

    ``m32``, ``s32`` = (F, A): the magnitudes held in float32 instead, at most F m32 + A (exactly F m32 when A = 0,
    F a power of two: PyTorch's float32, float16 and bfloat16 gradients and saved tensors); ``m`` is made from them
    when first read. Matrix products and convolutions of two exact ones run in float32 (`_product`, NOTE [float32
    magnitudes])."""

    __slots__ = ("_m", "v", "_n", "m32", "s32")
    __array_priority__ = 1000
    __hash__ = None

    def __init__(self, m, v=None, n=0, box=None, m32=None, s32=(1.0, 0.0)):
        self._m, self.v, self.m32, self.s32 = m, v, m32, s32
        self._n = box if box is not None else [_count(n)]

    @property
    def m(self) -> np.ndarray:
        m = self._m
        if m is None:
            f, a = self.s32
            m = self.m32.astype(np.float64)
            if f != 1.0:
                m *= f
            if a:
                m += a
            self._m = m
        return m

    @m.setter
    def m(self, x):
        self._m, self.m32 = x, None

    @property
    def exact32(self) -> bool:
        return self.m32 is not None and self.s32[1] == 0.0

    def _any(self) -> np.ndarray:  # the magnitudes in either precision, for shapes
        return self._m if self._m is not None else self.m32

    @classmethod
    def of(cls, x, n: int = 0) -> Mag:
        """A Mag for a plain value (a saved tensor, a constant): exact, magnitudes |x|."""
        if isinstance(x, Mag):
            return x
        x = np.asarray(x)
        if x.dtype == object:
            raise LensTypeError("a Mag of Python objects")
        return cls(np.abs(x).astype(np.float64, copy=False), x, n)

    @classmethod
    def grad(cls, g, f32: bool = False) -> Mag:
        """The incoming gradient (or its error bound): magnitudes only, no values. With `f32`, a float32 `g` keeps
        them in float32 (``m32``), scaled by a power of two to a largest element near 2^60 (exact): a float32
        product then neither meets subnormal numbers (slow) nor overflows (NOTE [float32 magnitudes])."""
        g = np.asarray(g)
        if f32 and g.dtype == np.float32 and g.size:
            a = np.abs(g, order="C")
            top = float(np.max(a))
            f = 1.0
            if top > 0 and math.isfinite(top):
                e = 60 - math.frexp(top)[1]
                np.ldexp(a, e, out=a)  # (exact; 2^e itself may be out of float32's range)
                f = 2.0**-e
            return cls(None, None, 0, m32=a, s32=(f, 0.0))
        return cls(np.abs(g, dtype=np.float64), None, 0)  # (|z| of a complex gradient)

    @property
    def n(self) -> int:
        """Roundings per element, sums of k terms counted k - 1 times (accumulation in the dtype's opmath)."""
        return int(self._n[0][0])

    @property
    def r(self) -> int:
        """Roundings per element to the tensor's own dtype (a sum or dot product counts once)."""
        return int(self._n[0][1])

    @property
    def c(self) -> _Count:
        return self._n[0]

    @c.setter
    def c(self, k):
        self._n[0] = _count(k)

    # -- array protocol
    shape = property(lambda s: s._any().shape)
    ndim = property(lambda s: s._any().ndim)
    size = property(lambda s: s._any().size)
    dtype = property(lambda s: np.dtype(np.float64))
    T = property(lambda s: s.transpose())

    def __len__(self):
        return len(self._any())

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __array__(self, dtype=None, copy=None):
        if self.v is None:
            raise LensTypeError("a gradient magnitude cannot become a plain array (the rule is not linear in G?)")
        return np.asarray(self.v, dtype=dtype)

    def __float__(self):
        return float(np.asarray(self))

    def tolist(self):
        return np.asarray(self).tolist()

    def item(self):
        return np.asarray(self).item()

    def __repr__(self):
        return f"Mag(n={self.n}, m={self.m!r})"

    def _view(self, m, v, m32=None) -> Mag:  # a view of self (shares the rounding count)
        mine, new = self._any(), m if m is not None else m32
        base = mine if mine.base is None else mine.base
        return Mag(m, v, box=self._n if new is mine or new.base is base else [self.c], m32=m32, s32=self.s32)

    def _apply(self, f) -> tuple:
        """f applied to the magnitudes in the precisions at hand: (m or None, m32 or None)."""
        return (None if self._m is None else f(self._m)), (None if self.m32 is None else f(self.m32))

    def __getitem__(self, idx):
        idx = _values(idx)
        m, m32 = self._apply(lambda a: a[idx])
        return self._view(m, None if self.v is None else self.v[idx], m32)

    def __setitem__(self, idx, val):
        idx, val = _values(idx), Mag.of(val)
        self.m[idx] = val.m
        self.m32 = None  # (changed in place: the float64 magnitudes only)
        if self.v is not None and val.v is not None:
            self.v[idx] = val.v
        else:
            self.v = None
        self.c = _cmax(self.c, val.c)

    def reshape(self, *shape, **kw):
        return np.reshape(self, shape[0] if len(shape) == 1 else shape, **kw)

    def transpose(self, *axes):
        return np.transpose(self, axes[0] if len(axes) == 1 and not isinstance(axes[0], int) else axes or None)

    def swapaxes(self, a, b):
        return np.swapaxes(self, a, b)

    def squeeze(self, axis=None):
        return np.squeeze(self, axis)

    def ravel(self):
        return np.ravel(self)

    def flatten(self):
        return np.ravel(self).copy()

    def copy(self):
        m, m32 = self._apply(np.copy)
        return Mag(m, None if self.v is None else self.v.copy(), self.c, m32=m32, s32=self.s32)

    def sum(self, axis=None, keepdims=False, **kw):
        return np.sum(self, axis=axis, keepdims=keepdims, **kw)

    def mean(self, axis=None, keepdims=False, **kw):
        return np.mean(self, axis=axis, keepdims=keepdims, **kw)

    def astype(self, dtype, copy=True):
        dt = np.dtype(dtype)
        if dt.kind != "f":
            return np.asarray(self).astype(dt)
        if dt == np.float64:
            return self
        return Mag(self.m, None if self.v is None else self.v.astype(dt).astype(np.float64), self.c + 1)

    # -- operators: all through the ufuncs below
    def __add__(s, o): return np.add(s, o)  # noqa: E704
    def __radd__(s, o): return np.add(o, s)  # noqa: E704
    def __sub__(s, o): return np.subtract(s, o)  # noqa: E704
    def __rsub__(s, o): return np.subtract(o, s)  # noqa: E704
    def __mul__(s, o): return np.multiply(s, o)  # noqa: E704
    def __rmul__(s, o): return np.multiply(o, s)  # noqa: E704
    def __truediv__(s, o): return np.divide(s, o)  # noqa: E704
    def __rtruediv__(s, o): return np.divide(o, s)  # noqa: E704
    def __matmul__(s, o): return np.matmul(s, o)  # noqa: E704
    def __rmatmul__(s, o): return np.matmul(o, s)  # noqa: E704
    def __pow__(s, o): return np.power(s, o)  # noqa: E704
    def __rpow__(s, o): return np.power(o, s)  # noqa: E704
    def __neg__(s): return np.negative(s)  # noqa: E704
    def __pos__(s): return s  # noqa: E704
    def __abs__(s): return np.absolute(s)  # noqa: E704
    def __gt__(s, o): return np.greater(s, o)  # noqa: E704
    def __ge__(s, o): return np.greater_equal(s, o)  # noqa: E704
    def __lt__(s, o): return np.less(s, o)  # noqa: E704
    def __le__(s, o): return np.less_equal(s, o)  # noqa: E704
    def __eq__(s, o): return np.equal(s, o)  # noqa: E704
    def __ne__(s, o): return np.not_equal(s, o)  # noqa: E704
    def __and__(s, o): return np.logical_and(s, o)  # noqa: E704
    def __or__(s, o): return np.logical_or(s, o)  # noqa: E704
    def __invert__(s): return np.logical_not(s)  # noqa: E704

    def __array_ufunc__(self, uf, method, *args, **kw):
        if kw.get("out") is not None:
            return NotImplemented
        if method == "at" and uf is np.add:
            return _add_at(*args)
        if method == "reduce" and uf is np.add:
            return np.sum(args[0], **kw)
        if method != "__call__":
            raise LensTypeError(f"np.{uf.__name__}.{method} on magnitudes")
        if uf in _PLAIN:
            return uf(*(_value(a) for a in args), **kw)
        xs = [Mag.of(a) for a in args]
        known = all(x.v is not None for x in xs)
        vals = [x.v for x in xs] if known else None
        n = _top(xs)
        if uf in (np.add, np.subtract):
            return Mag(xs[0].m + xs[1].m, uf(*vals) if known else None, n + 1)
        if uf is np.multiply:
            return Mag(xs[0].m * xs[1].m, uf(*vals) if known else None, xs[0].c + xs[1].c + 1)
        if uf in (np.negative, np.positive, np.absolute, np.conjugate):
            return Mag(xs[0]._m, uf(vals[0]) if known else None, n, m32=xs[0].m32, s32=xs[0].s32)
        if uf is np.matmul:
            k = xs[0].shape[-1] if xs[0].ndim else 1
            return _product(np.matmul, xs[0], xs[1], k, np.matmul(*vals) if known else None,
                            xs[0].c + xs[1].c + (k, 1))
        if uf in (np.divide, np.true_divide):
            b = xs[1]
            if b.v is None:
                raise LensTypeError("division by a gradient (the rule is not linear in G?)")
            q = xs[0].m / np.abs(b.v)
            m = q + q * b.m / np.abs(b.v) if b.n else q  # an inexact divisor: its error, relative, adds on
            return Mag(m, uf(*vals) if known else None, xs[0].c + b.c + 1)
        if uf is np.square:
            return Mag(xs[0].m * xs[0].m, np.square(vals[0]) if known else None, 2 * n + 1)
        if not known:
            raise LensTypeError(f"np.{uf.__name__} of a gradient (the rule is not linear in G?)")
        r = uf(*vals, **kw)
        if uf in _EXACT:
            return Mag(np.abs(r).astype(np.float64), r, 0)
        if uf in (np.maximum, np.minimum, np.fmax, np.fmin):
            first = (vals[0] >= vals[1]) == (uf in (np.maximum, np.fmax))
            return Mag(np.where(first, xs[0].m, xs[1].m), r, n)
        m = np.abs(r)
        if uf is np.power and n.any():
            p = vals[1]
            m = m + np.abs(p * np.power(vals[0], p - 1)) * xs[0].m
        elif uf in _DERIV and n.any():
            m = m + np.abs(_DERIV[uf](vals[0], r)) * xs[0].m
        return Mag(np.asarray(m, dtype=np.float64), r, n + ELEMENTARY_UNITS)

    def __array_function__(self, func, types, args, kw):
        if func in _STRUCT:
            mags = _mags(args) + _mags(kw)
            known = all(x.v is not None for x in mags)
            v = func(*_swap(args, "v"), **_swap(kw, "v")) if known else None
            n = _top(mags)
            if len(mags) == 1 and mags[0].m32 is not None:  # (a reshaping view of float32 magnitudes stays one)
                x = mags[0]
                m, m32 = x._apply(lambda a: func(*_put(args, a), **_put(kw, a)))
                if not isinstance(m32, (list, tuple)):
                    return x._view(m, v, m32)
            m = func(*_swap(args, "m"), **_swap(kw, "m"))
            if isinstance(m, (list, tuple)):
                return [Mag(a, None if v is None else b, n) for a, b in zip(m, v if v is not None else m)]
            if len(mags) == 1:
                return mags[0]._view(m, v)
            return Mag(m, v, n)
        if func in (np.real, np.imag):  # a part of a complex number is no larger than the number
            x = args[0]
            return x._view(x._m, None if x.v is None else func(x.v), x.m32)
        if func is np.fft.fftn:
            return _fftn(Mag.of(args[0]), kw["axes"])
        if func in (np.linalg.solve, np.linalg.inv):
            return _solve(Mag.of(args[0]), None if func is np.linalg.inv else Mag.of(args[1]))
        if func is np.where:
            cond, a, b = (list(args) + [None, None])[:3]
            a, b = Mag.of(a), Mag.of(b)
            cond = _value(cond)
            known = a.v is not None and b.v is not None
            return Mag(np.where(cond, a.m, b.m), np.where(cond, a.v, b.v) if known else None, _top([a, b]))
        if func in (np.sum, np.mean, np.cumsum):
            x = Mag.of(args[0])
            m = func(x.m, *args[1:], **kw)
            v = func(x.v, *args[1:], **kw) if x.v is not None else None
            k = max(1, x.size // max(1, np.size(m)))
            if func is np.cumsum:
                ax = kw.get("axis", args[1] if len(args) > 1 else None)
                k = x.size if ax is None else x.shape[ax]
            return Mag(np.asarray(m, dtype=np.float64), v, x.c + (k - 1 + (func is np.mean), 1 + (func is np.mean)))
        if func is np.einsum:
            return _einsum(args, kw)
        if func in (np.outer, np.dot, np.inner, np.tensordot, np.matmul):
            xs = [Mag.of(a) for a in args[:2]]
            known = all(x.v is not None for x in xs)
            v = func(xs[0].v, xs[1].v, *args[2:], **kw) if known else None
            def dots(size):  # the dot length
                return 1 if func is np.outer else max(1, xs[0].size * xs[1].size // max(1, size))
            out = _product(lambda a, b: func(a, b, *args[2:], **kw), xs[0], xs[1], dots, v, (0, 0))
            out.c = xs[0].c + xs[1].c + (dots(out.size), 1)
            return out
        if func is np.put_along_axis:
            arr, idx, vals = args[0], _value(args[1]), Mag.of(args[2])
            np.put_along_axis(arr.m, idx, np.broadcast_to(vals.m, np.shape(idx)) if vals.m.ndim else vals.m,
                              *args[3:], **kw)
            arr.m32 = None  # (changed in place)
            if arr.v is not None and vals.v is not None:
                np.put_along_axis(arr.v, idx, vals.v, *args[3:], **kw)
            else:
                arr.v = None
            arr.c = _cmax(arr.c, vals.c)
            return None
        mags = _mags(args) + _mags(kw)
        if any(x.v is None for x in mags):
            raise LensTypeError(f"np.{func.__name__} of a gradient on magnitudes")
        return func(*_swap(args, "v"), **_swap(kw, "v"))  # a coefficient: computed on values, exact


# NOTE [float32 magnitudes] A matrix product or convolution of magnitudes whose factors are both float32 numbers
# exactly (Mag.exact32: PyTorch's float32, float16 and bfloat16 gradients, scaled by a power of two, and saved
# tensors) runs in float32: twice the speed of float64 and half the memory traffic. Its terms are nonnegative, so
# each of the at most k roundings a term goes through (k: the dot length, plus col2im's additions for a
# convolution) lowers it by at most a factor (1 - u32), u32 = 2^-24, and an underflowing one adds at most 2^-150:
# the exact result is at most F (m32 (1 + gamma_k(u32)) + k 2^-150), F the factors' scales. The product is kept
# so (Mag.s32 = (F (1 + gamma_k(u32)) (1 + 2^-50), k 2^-148 F): the slack covers the float64 arithmetic that
# uses it) and local_bound reads it directly. The float32 result errs either way by at most gamma_k(u32), so the
# bound is looser than the float64 run's by at most the factor (1 + gamma_k(u32))^2 (1.0006 for ResNet-18's longest
# dot product, K = 4608; 1.00006 the most measured over the zoo and the bench models) and the tiny underflow term
# (the gradient is scaled to a largest element near 2^60, so F ~ 2^-60 |G|max: far below B's own k eta). A result that
# overflows float32 (or has a NaN) is computed again in float64. Float64 gradients have no m32: float64 graphs never
# take this path.
_PRODUCT32_MIN = 1 << 16  # (size of a) x (size of b) below which a float32 product is not worth its conversions


def _product(f, a: Mag, b: Mag, k, v, count) -> Mag:
    """Mag(f(a.m, b.m), v, count), f a product with nonnegative coefficients: in float32 where both factors are
    exact float32 magnitudes (NOTE [float32 magnitudes]), else in float64. `k`: the roundings per term (an int, or a
    function of the result's size)."""
    if a.exact32 and b.exact32 and a.size * b.size >= _PRODUCT32_MIN:
        m32 = np.asarray(f(a.m32, b.m32))
        if m32.dtype == np.float32 and (not m32.size or math.isfinite(float(np.max(m32)))):
            k = k if isinstance(k, int) else k(m32.size)
            scale = a.s32[0] * b.s32[0]
            return Mag(None, v, count, m32=m32,
                       s32=(scale * (1 + gamma(k, UNIT_ROUNDOFF["float32"])) * (1 + 2.0**-50), k * 2.0**-148 * scale))
    return Mag(np.asarray(f(a.m, b.m), dtype=np.float64), v, count)


class Reduced:
    """A special function of a coefficient whose implementations reduce or reflect the argument on the way (digamma,
    polygamma, Bessel functions, erfinv): their results err like the function at an argument a few ulps off, so on
    magnitudes it gives |f(x)| + |x f'(x)| with ELEMENTARY_UNITS roundings (the conditioning of f at x), not |f(x)|
    alone. `f` and `deriv` take and return plain arrays; on plain arrays the call is just f(x)."""

    def __init__(self, f, deriv):
        self.f, self.deriv = f, deriv

    def __call__(self, x):
        if not isinstance(x, Mag):
            return self.f(x)
        if x.v is None:
            raise LensTypeError("a special function of a gradient (the rule is not linear in G?)")
        with np.errstate(all="ignore"):
            r = np.asarray(self.f(x.v), dtype=np.float64)
            m = np.abs(r) + np.nan_to_num(np.abs(x.v * self.deriv(x.v)), nan=np.inf) + np.abs(self.deriv(x.v)) * x.m \
                * (x.n > 0)
        return Mag(m, r, x.c + ELEMENTARY_UNITS)


def _fftn(x: Mag, axes) -> Mag:
    """A discrete Fourier transform over `axes` (np.fft.fftn, unnormalised): every output element is a sum of N terms
    of the size of the inputs (|e^-i..| = 1), so M = sum |x| over the axes and n = N + 2 (the sum, and the twiddle
    factors' own rounding): the dot-product bound, which covers the fast transform's smaller error."""
    axes = tuple(a % x.ndim for a in axes)
    n = math.prod(x.shape[a] for a in axes)
    m = np.broadcast_to(x.m.sum(axis=axes, keepdims=True), x.shape).copy()
    return Mag(m, None if x.v is None else np.fft.fftn(x.v, axes=axes), x.c + (n + 1, 2))


def _solve(a: Mag, b: Mag | None) -> Mag:
    """A^-1 B (np.linalg.solve) or A^-1 (np.linalg.inv), A a coefficient (values known), B anything. A backward-stable
    solve of size n (LU, or a triangular solve) errs by at most gamma_3n |A^-1| |L||U| |x| (Higham, Thm 9.4 and 8.5);
    with |L||U| taken as |A| (a pivoted LU of a matrix that is not pathological) and |x| <= |A^-1| |B|, the magnitude
    is |A^-1| |A| |A^-1| |B|: Skeel's componentwise condition number times the size of B, so an ill-conditioned
    matrix gets the allowance it needs. An inexact A (from earlier roundings) counts through its magnitudes."""
    if a.v is None:
        raise LensTypeError("a solve with a gradient as the matrix (the rule is not linear in G?)")
    inv = np.linalg.inv(a.v)
    ai, n = np.abs(inv), a.shape[-1]
    right = ai if b is None else ai @ b.m
    m = ai @ (np.maximum(a.m, np.abs(a.v)) @ right)
    known = b is None or b.v is not None
    v = inv if b is None else np.linalg.solve(a.v, b.v) if known else None
    c = a.c if b is None else _cmax(a.c, b.c)
    return Mag(np.asarray(m, dtype=np.float64), v, c + (3 * n + 2, 2))


class _Count(tuple):
    """(n, r) rounding counts (see Mag.n, Mag.r): + adds elementwise (an int to both), * scales both."""

    __slots__ = ()

    def __new__(cls, n, r):
        return tuple.__new__(cls, (n, r))

    def __add__(self, o):
        if isinstance(o, tuple):
            return _Count(self[0] + o[0], self[1] + o[1])
        return _Count(self[0] + o, self[1] + o)

    __radd__ = __add__

    def __mul__(self, k):
        return _Count(self[0] * k, self[1] * k)

    __rmul__ = __mul__

    def any(self) -> bool:
        return bool(self[0] or self[1])


def _count(k) -> _Count:
    """(n, r) from an int k (meaning (k, k)) or a pair."""
    if isinstance(k, _Count):
        return k
    if np.ndim(k) == 0:
        return _Count(int(k), int(k))
    return _Count(int(k[0]), int(k[1]))


def _cmax(*cs) -> _Count:
    return _Count(max(c[0] for c in cs), max(c[1] for c in cs))


def _top(xs) -> _Count:
    return _cmax(*[x.c for x in xs])


def _value(x):
    if isinstance(x, Mag):
        return np.asarray(x)
    if isinstance(x, tuple):
        return tuple(_value(a) for a in x)
    return x


_values = _value


def _mags(x) -> list:
    if isinstance(x, Mag):
        return [x]
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        return [m for a in x for m in _mags(a)]
    return []


def _swap(x, attr):
    if isinstance(x, Mag):
        return getattr(x, attr)
    if isinstance(x, dict):
        return {k: _swap(a, attr) for k, a in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_swap(a, attr) for a in x)
    return x


def _put(x, arr):
    """`x` (arguments) with its one Mag replaced by the array `arr`."""
    if isinstance(x, Mag):
        return arr
    if isinstance(x, dict):
        return {k: _put(a, arr) for k, a in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_put(a, arr) for a in x)
    return x


def _add_at(out, idx, b=None):
    if not isinstance(out, Mag):
        raise LensTypeError("np.add.at into a plain array with magnitudes (use c.zeros(shape) for buffers)")
    idx, b = _value(idx), Mag.of(b)
    np.add.at(out.m, idx, b.m)
    out.m32 = None  # (changed in place)
    if out.v is not None and b.v is not None:
        np.add.at(out.v, idx, b.v)
    else:
        out.v = None
    count = np.zeros(out.shape, dtype=np.int64)
    np.add.at(count, idx, 1)  # duplicate indices add up: that many roundings
    out.c = _cmax(out.c, b.c) + int(count.max(initial=0))


def _einsum(args, kw):
    subs, ops = args[0], [Mag.of(a) for a in args[1:]]
    if not isinstance(subs, str) or "->" not in subs:
        raise LensTypeError("np.einsum on magnitudes needs explicit subscripts 'ab,bc->ac' (or '...ab,...bc->...ac')")
    ins, out = subs.replace(" ", "").split("->")
    sizes = {}  # label -> size; '...' dimensions are never summed (numpy keeps them in the output)
    for term, x in zip(ins.split(","), ops):
        a, _, b = term.partition("...")
        for c, size in zip(a + b, x.shape[:len(a)] + x.shape[x.ndim - len(b):]):
            sizes[c] = max(sizes.get(c, 1), size)
    k = math.prod(s for c, s in sizes.items() if c not in out)
    m = np.einsum(subs, *(x.m for x in ops), **kw)
    known = all(x.v is not None for x in ops)
    v = np.einsum(subs, *(x.v for x in ops), **kw) if known else None
    return Mag(np.asarray(m, dtype=np.float64), v, sum(x.c for x in ops) + (len(ops) - 1 + k, len(ops)))


class MagCtx(Ctx):
    """The rule context on magnitudes: buffers from ``c.zeros`` are Mags."""

    __slots__ = ()

    def zeros(self, shape):
        return Mag(np.zeros(shape), np.zeros(shape), 0)

    def rounded(self, dtype, a):
        a = Mag.of(a)
        return Mag(a.m, None if a.v is None else round_to(dtype, a.v), a.c + 1)

    def dtype_sum(self, a, axis):
        s = Mag.of(a).sum(axis=axis)
        s.c = (s.n, s.n)  # every addition rounds to the dtype itself (r = n)
        return s
