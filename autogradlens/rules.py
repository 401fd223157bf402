"""Backward rules, one per autograd node type: the table the mirror runs.

Convention: ``RULES[type](c)`` returns one gradient per slot of the node's ``next_functions`` (None where
no gradient flows). ``c`` is a :class:`Ctx`: ``c.g`` (incoming gradient of output 0), ``c.gs`` (all
outputs), ``c.s[name]`` (saved tensors as float64 / int64 numpy arrays), ``c.a[name]`` (decoded saved
attributes), ``c.in_shapes[slot]`` / ``c.in_dtypes[slot]`` (forward inputs), ``c.zeros(shape)``,
``c.rounded(dtype, x)`` (a cast) and ``c.dtype_sum(x, axis)`` (a sum PyTorch accumulates in the dtype itself).
Rules also run on bounds.Mag magnitudes (the mirror's rounding bound): see bounds.py for what they may use.
Gradients are numpy arrays: float64 in tensor mode, object arrays of :class:`Value` in scalar mode;
every rule is linear in the incoming gradient, so the same code serves both. Rules do not reduce
broadcasting: the driver sums each result to its input's shape, as the engine does.
Where it matters for bit-exactness, formulas follow PyTorch's order of operations.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

RULES: dict = {}


class Unsupported(Exception):
    """A rule met a case it does not handle (the mirror then passes PyTorch's gradients through)."""


def rule(*names):
    def register(fn):
        for n in names:
            RULES[n] = fn
        return fn
    return register


class Ctx:
    __slots__ = ("type", "gs", "s", "a", "in_shapes", "in_dtypes", "out_shapes", "scalar")

    def __init__(self, type_, gs, saved, attrs, in_shapes, out_shapes, scalar, in_dtypes=()):
        self.type, self.gs, self.s, self.a = type_, gs, saved, attrs
        self.in_shapes, self.out_shapes, self.scalar, self.in_dtypes = in_shapes, out_shapes, scalar, in_dtypes

    @property
    def g(self):
        return self.gs[0]

    def zeros(self, shape):
        return _ozeros(shape) if self.scalar else np.zeros(shape)

    def rounded(self, dtype: str, a):
        """`a` rounded to `dtype` as PyTorch's cast does (bounds.MagCtx counts it as one rounding)."""
        return round_to(dtype, a)

    def dtype_sum(self, a, axis):
        """A sum PyTorch accumulates in the tensor's own dtype, rounding after every addition (bounds.MagCtx
        counts it so): the CPU layer-norm kernel's per-thread dgamma/dbeta buffers for bfloat16/float16."""
        return a.sum(axis=axis)


def _ozeros(shape):
    z = np.empty(shape, dtype=object)
    z.fill(0.0)
    return z


def sum_to(g, shape):
    """Sum `g` down to `shape` (broadcast reduction, as the autograd engine does)."""
    shape = tuple(shape)
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, s in enumerate(shape) if s == 1 and g.shape[i + lead] != 1)
    out = g.sum(axis=axes, keepdims=True) if axes else g
    return out.reshape(shape)


def _dims(d, ndim):
    d = d if isinstance(d, list) else [d]
    return sorted(x % ndim for x in d) if d else list(range(ndim))


def _unsqueeze_to(g, sizes, dims, keepdim):
    if not keepdim:
        for d in sorted(dims):
            g = np.expand_dims(g, d)
    return np.broadcast_to(g, sizes)


# ============================================================================ elementwise
@rule("NegBackward0")
def _neg(c):
    return (-c.g,)


@rule("CloneBackward0", "AliasBackward0", "SubBackward1", "FracBackward0", "FmodBackward0", "RemainderBackward0")
def _identity(c):  # also x - a number, and x minus a piecewise constant of x (frac, fmod/remainder by a number)
    return (c.g,)


@rule("ToCopyBackward0")
def _to_copy(c):  # the gradient is cast back to the input's dtype, rounding it
    dt = c.in_dtypes[0]
    if dt not in ("float32", "float16", "bfloat16"):
        return (c.g,)
    if c.scalar:
        from .value import Value
        return (np.vectorize(lambda v: Value(float(round_to(dt, np.float64(v.data if isinstance(v, Value) else v)))),
                             otypes=[object])(c.g),)
    return (c.rounded(dt, c.g),)


def round_to(dtype: str, a):
    """float64 values rounded as PyTorch rounds them to `dtype` (through float32, as its casts from double do)."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf, as the cast does
        a32 = np.asarray(a, dtype=np.float64).astype(np.float32)
        if dtype == "float32":
            return a32.astype(np.float64)
        if dtype == "float16":
            return a32.astype(np.float16).astype(np.float64)
    bits = a32.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)  # round to nearest even
    out = rounded.view(np.float32).astype(np.float64)
    return np.where(np.isnan(a32), a32.astype(np.float64), out)


@rule("ReluBackward0")
def _relu(c):
    return (np.where(c.s["result"] > 0, c.g, 0.0),)


@rule("ThresholdBackward0")
def _threshold(c):
    return (np.where(c.s["self"] > c.a["threshold"], c.g, 0.0),)


@rule("TanhBackward0")
def _tanh(c):
    y = c.s["result"]
    return (c.g * (1 - y * y),)


@rule("SigmoidBackward0")
def _sigmoid(c):
    y = c.s["result"]
    return (c.g * (1 - y) * y,)


@rule("GeluBackward0")
def _gelu(c):
    x = c.s["self"]
    if c.a["approximate"] == "tanh":
        k = math.sqrt(2 / math.pi)
        inner = k * (x + 0.044715 * x**3)
        t = np.tanh(inner)
        d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x)
    else:
        cdf = 0.5 * (1 + _erf(x / math.sqrt(2)))
        pdf = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        d = cdf + x * pdf
    return (c.g * d,)


_erf = np.vectorize(math.erf, otypes=[np.float64])


@rule("LeakyReluBackward0", "LeakyReluBackward1")
def _leaky(c):
    x = c.s["self"] if "self" in c.s else c.s["result"]
    return (np.where(x > 0, c.g, c.g * c.a["negative_slope"]),)


@rule("SiluBackward0")
def _silu(c):
    x = c.s["self"]
    s = 1 / (1 + np.exp(-x))
    return (c.g * (s * (1 + x * (1 - s))),)


@rule("HardtanhBackward0")
def _hardtanh(c):
    x = c.s["self"]
    return (np.where((x > c.a["min_val"]) & (x < c.a["max_val"]), c.g, 0.0),)


@rule("EluBackward0")
def _elu(c):
    x, alpha, scale, iscale = c.s["self"], c.a["alpha"], c.a["scale"], c.a["input_scale"]
    return (np.where(x > 0, c.g * scale, c.g * (iscale * alpha * scale * np.exp(x * iscale))),)


@rule("SoftplusBackward0")
def _softplus(c):
    x, beta = c.s["self"], c.a["beta"]
    z = np.exp(np.minimum(x * beta, c.a["threshold"]))
    return (np.where(x * beta > c.a["threshold"], c.g, c.g * (z / (z + 1))),)


@rule("SinBackward0")
def _sin(c):
    return (c.g * np.cos(c.s["self"]),)


@rule("CosBackward0")
def _cos(c):
    return (c.g * -np.sin(c.s["self"]),)


@rule("Log1PBackward0")
def _log1p(c):
    return (c.g / (c.s["self"] + 1),)


@rule("RsqrtBackward0")
def _rsqrt(c):
    y = c.s["result"]
    return (c.g * (-0.5 * y**3),)


@rule("SignBackward0", "SgnBackward0", "FloorBackward0", "CeilBackward0", "RoundBackward0", "RoundBackward1",
      "TruncBackward0")
def _sign(c):  # piecewise constant: zero gradient (PyTorch hands sgn's over as a ZeroTensor)
    return (c.g * 0.0,)


@rule("ExpBackward0")
def _exp(c):
    return (c.g * c.s["result"],)


@rule("LogBackward0")
def _log(c):
    return (c.g / c.s["self"],)


@rule("SqrtBackward0")
def _sqrt(c):
    return (c.g / (2 * c.s["result"]),)


@rule("AbsBackward0")
def _abs(c):
    return (c.g * np.sign(c.s["self"]),)


@rule("ReciprocalBackward0")
def _reciprocal(c):
    y = c.s["result"]
    return (-c.g * (y * y),)


@rule("PowBackward0")
def _pow(c):
    p, x = c.a["exponent"], c.s["self"]
    if p == 0:
        return (c.g * 0.0,)
    return (c.g * (p * x ** (p - 1)),)


@rule("PowBackward1")
def _pow_tensor(c):
    a, b, y = c.s["self"], c.s["exponent"], c.s["result"]
    return (c.g * (b * a ** (b - 1)), c.g * (y * np.log(np.where(a > 0, a, 1.0))))


@rule("PowBackward2")
def _pow_scalar_base(c):
    return (c.g * (c.s["result"] * math.log(c.a["self"])),)


@rule("ClampBackward1", "ClampMinBackward0", "ClampMaxBackward0")
def _clamp(c):
    x, lo, hi = c.s["self"], c.a.get("min"), c.a.get("max")
    keep = np.ones(x.shape, dtype=bool)
    if lo is not None:
        keep &= x >= lo
    if hi is not None:
        keep &= x <= hi
    return (np.where(keep, c.g, 0.0),)


@rule("WhereBackward0")
def _where(c):
    cond = c.s["condition"].astype(bool)
    return (np.where(cond, c.g, 0.0), np.where(cond, 0.0, c.g))


@rule("MaskedFillBackward0")
def _masked_fill(c):
    return (np.where(c.s["mask"].astype(bool), 0.0, c.g),)


@rule("MaskedFillBackward1")
def _masked_fill_tensor(c):
    mask = c.s["mask"].astype(bool)
    return (np.where(mask, 0.0, c.g), np.where(mask, c.g, 0.0).sum())


# ============================================================================ arithmetic
@rule("AddBackward0")
def _add(c):
    alpha = c.a.get("alpha", 1)
    return (c.g, c.g if alpha == 1 else c.g * alpha)


@rule("SubBackward0")
def _sub(c):
    alpha = c.a.get("alpha", 1)
    return (c.g, -c.g if alpha == 1 else -c.g * alpha)


@rule("RsubBackward0")
def _rsub(c):  # other - alpha * self, next_functions: (self, other)
    alpha = c.a.get("alpha", 1)
    return (-c.g if alpha == 1 else -c.g * alpha, c.g)


@rule("RsubBackward1")
def _rsub_scalar(c):
    alpha = c.a.get("alpha", 1)
    return (-c.g if alpha == 1 else -c.g * alpha,)


@rule("MulBackward0", "DotBackward0")
def _mul(c):  # a * b; a dot product has the same rule (the engine sums nothing: G is a scalar)
    a, b = c.s.get("self"), c.s.get("other", c.s.get("tensor"))
    return (None if b is None else c.g * b, None if a is None else c.g * a)


@rule("MulBackward1")
def _mul_scalar(c):
    return (c.g * c.a["other"],)


@rule("DivBackward0")
def _div(c):
    a, b = c.s.get("self"), c.s["other"]
    return (c.g / b, None if a is None else -c.g * ((a / b) / b))


@rule("DivBackward1")
def _div_scalar(c):
    return (c.g / c.a["other"],)


# ============================================================================ reductions
@rule("SumBackward0")
def _sum(c):
    return (np.broadcast_to(c.g, c.a["self_sym_sizes"]),)


@rule("SumBackward1")
def _sum_dim(c):
    sizes = c.a["self_sym_sizes"]
    return (_unsqueeze_to(c.g, sizes, _dims(c.a["dim"], len(sizes)), c.a["keepdim"]),)


@rule("MeanBackward0")
def _mean(c):
    return (np.broadcast_to(c.g, c.a["self_sym_sizes"]) / c.a["self_sym_numel"],)


@rule("MeanBackward1")
def _mean_dim(c):
    sizes = c.a["self_sym_sizes"]
    dims = _dims(c.a["dim"], len(sizes))
    n = math.prod(sizes[d] for d in dims)
    return (_unsqueeze_to(c.g, sizes, dims, c.a["keepdim"]) / n,)


@rule("MaxBackward1", "MinBackward1")
def _max_all(c):
    x, y = c.s["self"], c.s["result"]
    mask = x == y
    return (np.where(mask, c.g / mask.sum(), 0.0),)


@rule("AmaxBackward0", "AminBackward0")
def _amax(c):
    x, y = c.s["self"], c.s["result"]
    dims = _dims(c.a["dim"], x.ndim)
    ye = _unsqueeze_to(y, x.shape, dims, c.a["keepdim"])
    mask = x == ye
    count = mask.sum(axis=tuple(dims), keepdims=True)
    return (np.where(mask, _unsqueeze_to(c.g, x.shape, dims, c.a["keepdim"]) / count, 0.0),)


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
    dims = _dims(c.a["dim"] if c.a["dim"] is not None else [], x.ndim)
    n = math.prod(x.shape[d] for d in dims)
    corr = 1 if c.a["correction"] is None else c.a["correction"]
    g = _unsqueeze_to(c.g, x.shape, dims, c.a["keepdim"])
    if c.type == "StdBackward0":
        g = g / (2 * _unsqueeze_to(c.s["result"], x.shape, dims, c.a["keepdim"]))
    return (g * (2.0 / (n - corr)) * (x - x.mean(axis=tuple(dims), keepdims=True)),)


@rule("LinalgVectorNormBackward0")
def _norm(c):
    x, y = c.s["self"], c.s["result"]
    dims = _dims(c.a["dim"] if c.a["dim"] is not None else [], x.ndim)
    ye = _unsqueeze_to(y, x.shape, dims, c.a["keepdim"])
    return (_pnorm_grad(_unsqueeze_to(c.g, x.shape, dims, c.a["keepdim"]), x, ye, float(c.a["ord"]), dims),)


def _pnorm_grad(g, x, ye, p, dims):  # d ||x||_p / dx times g, with ye the norm broadcast to x
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


@rule("MaximumBackward0", "MinimumBackward0")
def _maximum(c):
    a, b = c.s["self"], c.s["other"]
    win = a > b if c.type == "MaximumBackward0" else a < b
    tie = a == b
    return (np.where(win, c.g, np.where(tie, c.g / 2, 0.0)), np.where(win, 0.0, np.where(tie, c.g / 2, c.g)))


@rule("LogsumexpBackward0")
def _logsumexp(c):
    x, y = c.s["self"], c.s["result"]
    dims = _dims(c.a["dim"], x.ndim)
    return (_unsqueeze_to(c.g, x.shape, dims, c.a["keepdim"]) * np.exp(x - _unsqueeze_to(y, x.shape, dims,
                                                                                         c.a["keepdim"])),)


# ============================================================================ matmul
@rule("AddmmBackward0")
def _addmm(c):
    m1, m2, alpha, beta = c.s.get("mat1"), c.s.get("mat2"), c.a["alpha"], c.a["beta"]
    g = c.g if alpha == 1 else c.g * alpha
    return (c.g if beta == 1 else c.g * beta,
            None if m2 is None else g @ m2.T,
            None if m1 is None else m1.T @ g)


@rule("MmBackward0")
def _mm(c):
    a, b = c.s.get("self"), c.s.get("mat2")
    return (None if b is None else c.g @ b.T, None if a is None else a.T @ c.g)


@rule("BmmBackward0")
def _bmm(c):
    a, b = c.s.get("self"), c.s.get("mat2")
    return (None if b is None else c.g @ b.swapaxes(1, 2), None if a is None else a.swapaxes(1, 2) @ c.g)


@rule("MvBackward0")
def _mv(c):
    a, v = c.s.get("self"), c.s.get("vec")
    return (None if v is None else np.outer(c.g, v), None if a is None else a.T @ c.g)


# ============================================================================ shape
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


@rule("IndexBackward0")
def _index(c):
    out = c.zeros(c.a["self_sym_sizes"])
    idx = tuple(slice(None) if i is None else i for i in c.s["indices"])
    np.add.at(out, idx, c.g)  # duplicate indices add up
    return (out,)


@rule("RepeatBackward0")
def _repeat(c):
    sizes, reps = c.a["self_sym_sizes"], c.a["repeats"]
    lead = len(reps) - len(sizes)
    g = c.g.reshape([x for r, s in zip(reps[lead:], sizes) for x in (r, s)] if not lead else
                    list(reps[:lead]) + [x for r, s in zip(reps[lead:], sizes) for x in (r, s)])
    axes = tuple(range(lead)) + tuple(lead + 2 * i for i in range(len(sizes)))
    return (g.sum(axis=axes).reshape(sizes),)


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


@rule("ConstantPadNdBackward0")
def _pad(c):
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


# ============================================================================ softmax and losses
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
    red, ignore = c.a["reduction"], _unsigned(c.a["ignore_index"])
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


# ============================================================================ layers
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


@rule("MaxPool2DWithIndicesBackward0", "MaxPool3DWithIndicesBackward0")
def _maxpool(c):  # the indices are flat over the last 2 (3) input dimensions
    x, idx, g = c.s["self"], c.s["result1"], c.g
    k = 3 if "3D" in c.type else 2
    flat = c.zeros(x.shape[:-k] + (math.prod(x.shape[-k:]),))
    gi = g.reshape(g.shape[:-k] + (-1,))
    ii = idx.reshape(idx.shape[:-k] + (-1,))
    lead = np.indices(ii.shape[:-1])
    for k in range(ii.shape[-1]):
        np.add.at(flat, tuple(lead) + (ii[..., k],), gi[..., k])
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


# ============================================================================ convolution, any dimension
def _taps(kernel):
    return itertools.product(*(range(k) for k in kernel))


def _win(k, dil, stride, n):  # the input positions kernel tap k meets, for n outputs
    return (slice(None),) * 3 + tuple(slice(a * d, a * d + s * (m - 1) + 1, s) for a, d, s, m in zip(k, dil, stride, n))


def _pad(x, p):
    return np.pad(x, [(0, 0), (0, 0)] + [(a, a) for a in p]) if any(p) else x


def _conv_fwd(x, w, s, p, d, groups, zeros):
    """y = conv(x, w): x (N, C, *S), w (O, C/G, *K) -> (N, O, *So)."""
    xp = _pad(x, p)
    n, ch, o, k = x.shape[0], x.shape[1], w.shape[0], w.shape[2:]
    so = tuple((xp.shape[2 + i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(len(k)))
    xg = xp.reshape((n, groups, ch // groups) + xp.shape[2:])
    wg = w.reshape((groups, o // groups, ch // groups) + tuple(k))
    y = zeros((n, groups, o // groups, math.prod(so)))
    for t in _taps(k):
        y = y + np.einsum("ngcs,goc->ngos", xg[_win(t, d, s, so)].reshape(n, groups, ch // groups, -1),
                          wg[(slice(None),) * 3 + t])
    return y.reshape((n, o) + so)


def _conv_dx(gy, w, xshape, s, p, d, groups, zeros):
    """The adjoint of _conv_fwd in x (a transposed convolution), cropped to xshape."""
    n, o, so, k = gy.shape[0], gy.shape[1], gy.shape[2:], w.shape[2:]
    ch = xshape[1]
    full = tuple(xshape[2 + i] + 2 * p[i] for i in range(len(k)))
    full = tuple(max(f, d[i] * (k[i] - 1) + s[i] * (so[i] - 1) + 1) for i, f in enumerate(full))
    dxp = zeros((n, groups, ch // groups) + full)
    gg = gy.reshape((n, groups, o // groups, -1))
    wg = w.reshape((groups, o // groups, ch // groups) + tuple(k))
    for t in _taps(k):
        dxp[_win(t, d, s, so)] += np.einsum("ngos,goc->ngcs", gg, wg[(slice(None),) * 3 + t]).reshape(
            (n, groups, ch // groups) + tuple(so))
    crop = (slice(None),) * 3 + tuple(slice(a, a + xshape[2 + i]) for i, a in enumerate(p))
    return dxp[crop].reshape(tuple(xshape))


def _conv_dw(x, gy, wshape, s, p, d, groups, zeros):
    """The adjoint of _conv_fwd in w."""
    xp = _pad(x, p)
    n, ch, o, so, k = x.shape[0], x.shape[1], gy.shape[1], gy.shape[2:], tuple(wshape[2:])
    xg = xp.reshape((n, groups, ch // groups) + xp.shape[2:])
    gg = gy.reshape((n, groups, o // groups, -1))
    dw = zeros((groups, o // groups, ch // groups) + k)
    for t in _taps(k):
        dw[(slice(None),) * 3 + t] = np.einsum("ngcs,ngos->goc", xg[_win(t, d, s, so)].reshape(
            n, groups, ch // groups, -1), gg)
    return dw.reshape(tuple(wshape))


def _conv_geom(c):
    a = c.a
    return list(a["stride"]), list(a["padding"]), list(a["dilation"]), a["groups"], a["transposed"]


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


# ============================================================================ more elementwise, shape and matmul
@rule("HardswishBackward0")
def _hardswish(c):
    x = c.s["self"]
    return (np.where(x < -3, 0.0, np.where(x <= 3, c.g * (x / 3 + 0.5), c.g)),)


@rule("HardsigmoidBackward0")
def _hardsigmoid(c):
    x = c.s["self"]
    return (np.where((x > -3) & (x < 3), c.g * _SIXTH, 0.0),)


_SIXTH = float(np.float32(1) / np.float32(6))  # PyTorch's kernel multiplies by the float constant 1.0f / 6.0f


@rule("AddBackward1")
def _add_scalar(c):
    return (c.g,)


@rule("TransposeBackward1")
def _transpose_(c):
    return (np.swapaxes(c.g, c.a["dim0"], c.a["dim1"]),)


@rule("UnsafeSplitBackward0", "UnsafeSplitWithSizesBackward0")
def _unsafe_split(c):
    return _split(c)


@rule("BaddbmmBackward0")
def _baddbmm(c):  # beta * self + alpha * batch1 @ batch2
    b1, b2, alpha, beta = c.s.get("batch1"), c.s.get("batch2"), c.a["alpha"], c.a["beta"]
    g = c.g if alpha == 1 else c.g * alpha
    return (c.g if beta == 1 else c.g * beta,
            None if b2 is None else g @ b2.swapaxes(1, 2),
            None if b1 is None else b1.swapaxes(1, 2) @ g)


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


def _scatter(g, idx, size, axis, zeros):  # out[.., idx[i], ..] += g[.., i, ..] along one axis
    shape = list(g.shape)
    shape[axis] = size
    out = zeros(tuple(shape))
    np.add.at(np.moveaxis(out, axis, 0), idx, np.moveaxis(g, axis, 0))
    return out


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


@rule("AdaptiveMaxPool2DBackward0")
def _adaptive_max(c):
    return _maxpool(c)


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
        g = _scatter(g, src(sizes[ax], g.shape[ax], sc), sizes[ax], ax, c.zeros)
    return (g,)


def _linear_weights(n_in, n_out, align, scale):
    """(n_out, n_in) matrix of PyTorch's linear interpolation (area_pixel_compute_source_index)."""
    if align:
        r = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        src = np.arange(n_out) * r
    else:
        r = 1.0 / scale if scale else n_in / n_out
        src = np.maximum((np.arange(n_out) + 0.5) * r - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1 - lam)
    np.add.at(m, (np.arange(n_out), i1), lam)
    return m


@rule("UpsampleLinear1DBackward0", "UpsampleBilinear2DBackward0", "UpsampleTrilinear3DBackward0")
def _upsample_linear(c):
    sizes, g = c.a["self_sym_sizes"], c.g
    k = len(sizes) - 2
    mats = [_linear_weights(sizes[2 + i], g.shape[2 + i], c.a["align_corners"], sc)
            for i, sc in enumerate(_scales(c, k))]
    return (_separable(g, mats),)


def _cubic_weights(n_in, n_out, align, scale, ft):
    """(n_out, n_in) matrix of PyTorch's bicubic interpolation (A = -0.75, the four taps clamped to the border),
    computed in `ft` as the CPU kernel does (float32 for float32 and half tensors, float64 for float64)."""
    one = ft(1)
    if align:
        sc = ft(n_in - 1) / ft(n_out - 1) if n_out > 1 else ft(0)
        real = sc * np.arange(n_out, dtype=ft)
    else:
        sc = ft(1.0 / scale) if scale else ft(n_in) / ft(n_out)
        real = sc * (np.arange(n_out, dtype=ft) + ft(0.5)) - ft(0.5)  # not clamped at 0 for cubic
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


# ============================================================================ more losses and norms
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


def _unsigned(i):  # PyTorch hands some int64 attributes over as uint64 (-1 -> 2**64 - 1)
    return i - 2**64 if i is not None and i >= 2**63 else i


@rule("EmbeddingBagBackward0")
def _embedding_bag(c):
    idx, offsets, mode = c.s["indices"].reshape(-1), c.s["offsets"], c.a["mode"]
    n, g = c.a["weight_sym_argsize_0"], c.g
    pad = _unsigned(c.a.get("padding_idx"))
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


@rule("ScaledDotProductFlashAttentionForCpuBackward0")
def _sdpa(c):
    """The flash-attention backward, as PyTorch's CPU kernel computes it: the probabilities from the saved
    logsumexp (p = exp(s - lse), no second normalisation) and the row term D = sum(dO * O) from the saved
    output (equal to sum(dP * P), but with terms |dO||O| instead of |dO||V||P|)."""
    q, k, v = c.s["query"], c.s["key"], c.s["value"]
    if c.a.get("dropout_p", 0.0):
        raise Unsupported("attention with dropout: the dropout mask is not saved")
    scale = c.a.get("scale") or 1.0 / math.sqrt(q.shape[-1])
    s = np.einsum("...le,...se->...ls", q, k) * scale
    allowed = np.ones(s.shape, dtype=bool)
    mask = c.s.get("attn_mask") if "attn_mask" in c.s else c.s.get("attn_bias")
    if mask is not None:
        if mask.dtype == bool:
            allowed = allowed & np.broadcast_to(mask, s.shape)
        else:
            s = s + mask
            allowed = allowed & np.isfinite(np.broadcast_to(mask, s.shape))
    if c.a.get("is_causal"):
        allowed = allowed & np.tril(np.ones(s.shape[-2:], dtype=bool))
    lse, out, go = c.s["logsumexp"][..., None], c.s["output"], c.g
    live = np.isfinite(lse)  # a fully masked row (lse = -inf) gives zeros, as the fused kernel does
    p = np.where(allowed & live, np.exp(np.where(allowed, s, 0.0) - np.where(live, lse, 0.0)), 0.0)
    dp = np.einsum("...le,...se->...ls", go, v)
    d = (go * out).sum(axis=-1, keepdims=True)
    dv = np.einsum("...ls,...le->...se", p, go)
    ds = p * (dp - d)
    dq = np.einsum("...ls,...se->...le", ds, k) * scale
    dk = np.einsum("...ls,...le->...se", ds, q) * scale
    return (dq, dk, dv)


# ============================================================================ double backward (gradient of a gradient)
@rule("TanhBackwardBackward0")
def _tanh_bb(c):  # tanh_backward(grad_output, output) = grad_output * (1 - output^2)
    go, y = c.s["grad_output"], c.s["output"]
    return (c.g * (1 - y * y), c.g * (go * (-2 * y)))


@rule("SigmoidBackwardBackward0")
def _sigmoid_bb(c):  # grad_output * (1 - y) * y
    go, y = c.s["grad_output"], c.s["output"]
    return (c.g * ((1 - y) * y), c.g * (go * (1 - 2 * y)))


def _gelu_d12(x, approximate):
    if approximate == "tanh":
        k, a = math.sqrt(2 / math.pi), 0.044715
        t = np.tanh(k * (x + a * x**3))
        u1, u2 = k * (1 + 3 * a * x * x), 6 * k * a * x
        d1 = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * u1
        d2 = (1 - t * t) * (u1 + 0.5 * x * (u2 - 2 * t * u1 * u1))
    else:
        pdf = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        d1 = 0.5 * (1 + _erf(x / math.sqrt(2))) + x * pdf
        d2 = pdf * (2 - x * x)
    return d1, d2


@rule("GeluBackwardBackward0")
def _gelu_bb(c):
    d1, d2 = _gelu_d12(c.s["self"], c.a["approximate"])
    return (c.g * d1, c.g * (c.s["grad_output"] * d2))


@rule("SoftplusBackwardBackward0")
def _softplus_bb(c):
    x, go, beta, th = c.s["self"], c.s["grad_output"], c.a["beta"], c.a["threshold"]
    lin = x * beta > th
    sg = 1 / (1 + np.exp(-np.minimum(x * beta, th)))
    return (np.where(lin, c.g, c.g * sg), np.where(lin, 0.0, c.g * (go * (beta * sg * (1 - sg)))))


@rule("ThresholdBackwardBackward0")
def _threshold_bb(c):  # threshold_backward(grad_output, self, threshold)
    return (np.where(c.s["self"] > c.a["threshold"], c.g, 0.0), c.zeros(c.s["self"].shape))


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
    ignore = _unsigned(c.a["ignore_index"])
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


# ============================================================================ the fused CPU LSTM layer
def _sig(z):
    return 1 / (1 + np.exp(-z))


@rule("MkldnnRnnLayerBackward0")
def _mkldnn_lstm(c):
    """One LSTM layer and direction (gates i, f, g, o): the gates are recomputed in float64 from the saved input,
    weights, initial state and PyTorch's own hidden states (result0), then back-propagated through time."""
    if c.a["mode"] != 2:
        raise Unsupported("the fused RNN layer in a mode other than LSTM")
    x, wih, whh, h0, c0, hs = (c.s[k] for k in ("input", "weight0", "weight1", "hx_", "cx_", "result0"))
    bias = c.s["weight2"] + c.s["weight3"] if c.a["has_biases"] else 0.0
    steps, batch, hid = hs.shape[0], hs.shape[1], c.a["hidden_size"]
    order = list(range(steps))[::-1] if c.a["reverse"] else list(range(steps))
    h_prev, c_prev, gates, cs = {}, {}, {}, {}
    h, cell = h0, c0
    for t in order:  # forward, keeping what the backward needs
        z = x[t] @ wih.T + h @ whh.T + bias
        i, f, gg, o = _sig(z[:, :hid]), _sig(z[:, hid:2 * hid]), np.tanh(z[:, 2 * hid:3 * hid]), _sig(z[:, 3 * hid:])
        h_prev[t], c_prev[t] = h, cell
        cell = f * cell + i * gg
        gates[t], cs[t] = (i, f, gg, o), cell
        h = hs[t]
    g_out, g_hy, g_cy = (list(c.gs) + [None] * 3)[:3]
    dh = c.zeros((batch, hid)) if g_hy is None else g_hy
    dc = c.zeros((batch, hid)) if g_cy is None else g_cy
    dxs, dwih, dwhh, db = [None] * steps, None, None, None
    for t in order[::-1]:
        i, f, gg, o = gates[t]
        if g_out is not None:
            dh = dh + g_out[t]
        tc = np.tanh(cs[t])
        dc = dc + dh * (o * (1 - tc * tc))
        dz = np.concatenate([dc * (gg * i * (1 - i)), dc * (c_prev[t] * f * (1 - f)), dc * (i * (1 - gg * gg)),
                             dh * (tc * o * (1 - o))], axis=1)
        dxs[t] = dz @ wih
        dh, dc = dz @ whh, dc * f
        dwih = dz.T @ x[t] if dwih is None else dwih + dz.T @ x[t]
        dwhh = dz.T @ h_prev[t] if dwhh is None else dwhh + dz.T @ h_prev[t]
        db = dz.sum(axis=0) if db is None else db + dz.sum(axis=0)
    has_b = c.a["has_biases"]
    return (np.stack(dxs), dwih, dwhh, db if has_b else None, db if has_b else None, dh, dc)


# Node types real models produce that have no rule, and why (the mirror passes PyTorch's gradients through them).
NO_RULE = {
    "CopySlices": "an in-place op on a view (x[i] = v, x[:, 1].mul_(3), also F.pad(mode='circular') and "
                  "padding_mode='circular' convolutions): the node wraps the in-place op's own backward node and the "
                  "view's geometry (sizes, strides, storage offset) in C++ fields Python does not expose, so what "
                  "to re-derive is unknown",
    "ScaledDotProductFlashAttentionBackward0": "CUDA only (CPU uses ScaledDotProductFlashAttentionForCpuBackward0)",
    "ScaledDotProductEfficientAttentionBackward0": "CUDA only",
    "CudnnRnnBackward0": "CUDA only (CPU uses MkldnnRnnLayerBackward0 or plain ops)",
}


# ============================================================================ more activations, losses and shape ops
@rule("MishBackward0")
def _mish(c):
    x = c.s["self"]
    ts = np.tanh(np.log1p(np.exp(x)))
    return (c.g * (ts + x * (1 / (1 + np.exp(-x))) * (1 - ts * ts)),)


@rule("LogSigmoidBackward0")
def _log_sigmoid(c):
    return (c.g * (1 / (1 + np.exp(c.s["self"]))),)


@rule("ErfBackward0")
def _erf_rule(c):
    x = c.s["self"]
    return (c.g * (2 / math.sqrt(math.pi) * np.exp(-x * x)),)


@rule("PreluKernelBackward0")
def _prelu(c):  # slots (self, weight); weight saved in its broadcast shape
    x, w = c.s["self"], c.s["weight"]
    return (np.where(x > 0, c.g, c.g * w), np.where(x > 0, 0.0, c.g * x))


@rule("GluBackward0")
def _glu(c):
    x, d = c.s["self"], c.a["dim"] % c.s["self"].ndim
    a, b = np.split(x, 2, axis=d)
    sb = 1 / (1 + np.exp(-b))
    return (np.concatenate([c.g * sb, c.g * (a * sb * (1 - sb))], axis=d),)


@rule("XlogyBackward0")
def _xlogy(c):  # x * log(y); PyTorch's x-gradient is log(y) even where x == 0, and 0 where x == 0 and y <= 0
    x, y = c.s.get("self"), c.s.get("other")
    with np.errstate(divide="ignore", invalid="ignore"):
        logy = np.where((x == 0) & (y <= 0), 0.0, np.log(np.where((x == 0) & (y <= 0), 1.0, y)))
        return (c.g * logy, c.g * (x / y))


@rule("CdistBackward0")
def _cdist(c):
    """torch.cdist, d_ij = ||x1_i - x2_j||_p: each distance pulls x1_i along w(x1_i - x2_j) and x2_j the other way,
    w as PyTorch's _cdist_backward has it: diff / d (p = 2), sign (p = 1), sign where |diff| = d (p = inf),
    diff |diff|^(p-2) / d^(p-1) otherwise; 0 where d = 0, and for p < 1 also where a component of diff is 0."""
    p = float(c.a["p"])
    diff = _rounded_diff(c, c.s["x1"][..., :, None, :], c.s["x2"][..., None, :, :])  # (..., P, R, M)
    t = c.g[..., None] * _dist_weights(diff, c.s["result"][..., None], p)
    return (t.sum(axis=-2), -t.sum(axis=-3))


def _dist_weights(diff, d, p):  # d ||diff||_p / d diff, as PyTorch's cdist and pdist backward kernels have it
    if p == 0:
        return diff * 0.0
    if p == 1:
        return np.sign(diff)
    if math.isinf(p):
        return np.sign(diff) * (np.abs(diff) == d)
    safe = np.where(d == 0, 1.0, d)
    if p == 2:
        w = diff / safe
    elif p < 1:
        nz = np.where(diff == 0, 1.0, diff)
        w = np.where(diff == 0, 0.0, np.sign(diff) * np.abs(nz) ** (p - 1)) / safe ** (p - 1)
    else:
        w = diff * np.abs(diff) ** (p - 2) / safe ** (p - 1)
    return np.where(d == 0, 0.0, w)


def _rounded_diff(c, a, b):  # a - b rounded to the inputs' dtype, as PyTorch computes it (p = inf compares exactly)
    dt = next((d for d in c.in_dtypes if d in ("float32", "float16", "bfloat16")), None)
    return a - b if dt is None else c.rounded(dt, a - b)


@rule("PdistBackward0")
def _pdist(c):  # pdist(x)[k] = ||x_i - x_j||_p over the pairs i < j, row by row
    x, p = c.s["self"], float(c.a["p"])
    n = x.shape[0]
    i, j = np.triu_indices(n, 1)
    d, g = np.zeros((n, n)), c.zeros((n, n))
    d[i, j] = d[j, i] = c.s["result"]  # values only: the distances are saved, exact
    g[i, j] = c.g
    g[j, i] = c.g
    w = _dist_weights(_rounded_diff(c, x[:, None, :], x[None, :, :]), d[..., None], p)
    return ((g[..., None] * w).sum(axis=1),)


@rule("DistBackward0")
def _dist(c):  # torch.dist(self, other, p) = ||self - other||_p: PyTorch's norm backward on the difference
    diff = _rounded_diff(c, c.s["self"], c.s["other"])
    dims = list(range(diff.ndim))
    gx = _pnorm_grad(np.broadcast_to(c.g, diff.shape), diff, np.broadcast_to(c.s["result"], diff.shape),
                     float(c.a["p"]), dims)
    return (gx, -gx)


@rule("EuclideanDistBackward0")
def _euclidean_dist(c):
    """torch.cdist for p = 2 with more than 25 rows, through a matrix product: r = G / d (0 where d = 0),
    dx1 = x1 * sum_j r - r @ x2 (PyTorch's _euclidean_dist_backward)."""
    x1, x2, d = c.s["x1"], c.s["x2"], c.s["result"]
    r = np.where(d == 0, 0.0, c.g / np.where(d == 0, 1.0, d))
    return (x1 * r.sum(axis=-1, keepdims=True) - r @ x2,
            x2 * r.sum(axis=-2)[..., None] - np.swapaxes(r, -1, -2) @ x1)


@rule("NormBackward0", "NormBackward1")
def _pnorm(c):  # torch.norm(x, p[, dim, keepdim])
    x, y = c.s["self"], c.s["result"]
    p = 2.0 if c.a["p"] is None else float(c.a["p"])
    dims = _dims(c.a.get("dim", []) or [], x.ndim)
    keep = c.a.get("keepdim", False)
    return (_pnorm_grad(_unsqueeze_to(c.g, x.shape, dims, keep), x, _unsqueeze_to(y, x.shape, dims, keep), p, dims),)


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


@rule("SortBackward0", "TopkBackward0", "KthvalueBackward0", "MedianBackward1", "ModeBackward0")
def _sort(c):  # gradient to where each selected value came from
    sizes, d = c.a["self_sym_sizes"], c.a["dim"] % len(c.a["self_sym_sizes"])
    idx, g = c.s["indices"], c.g
    if idx.ndim < len(sizes):
        idx, g = np.expand_dims(idx, d), np.expand_dims(g, d)
    out = c.zeros(sizes)
    np.put_along_axis(out, idx, g, axis=d)
    return (out,)


@rule("IndexAddBackward0")
def _index_add(c):  # self.index_add(dim, index, source, alpha): slots (self, source)
    d, idx, alpha = c.a["dim"], c.s["index"], c.a["alpha"]
    d = d % max(c.g.ndim, 1)
    src = np.moveaxis(np.moveaxis(c.g, d, 0)[idx], 0, d) if c.g.ndim else c.g
    src = src if alpha == 1 else src * alpha
    return (c.g, src.reshape(c.in_shapes[1]) if c.in_shapes[1] is not None else src)


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
    xp = _pad(x, pad)
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
        g = _scatter(g, _pad_src(shape[ax], pad[2 * i], pad[2 * i + 1], mode), shape[ax], ax, c.zeros)
    return (g,)


# ============================================================================ indexed writes (not through a view)
def _hit(shape, index):  # bool mask of the positions an index expression reaches
    m = np.zeros(shape, dtype=bool)
    m[index] = True
    return m


def _along(idx, d):  # the index tuple that gathers / scatters along dim d with `idx`
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
    where = _along(idx, d)
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


# ============================================================================ pointwise with several inputs, shrinks
@rule("AddcmulBackward0")
def _addcmul(c):  # self + value * t1 * t2: slots (self, tensor1, tensor2); PyTorch saves only what they need
    v, t1, t2 = c.a["value"], c.s.get("tensor1"), c.s.get("tensor2")
    return (c.g, None if t2 is None else c.g * (v * t2), None if t1 is None else c.g * (v * t1))


@rule("AddcdivBackward0")
def _addcdiv(c):  # self + value * t1 / t2
    v, t1, t2 = c.a["value"], c.s.get("tensor1"), c.s.get("tensor2")
    return (c.g, None if t2 is None else c.g * (v / t2),
            None if t1 is None or t2 is None else -c.g * (v * t1 / (t2 * t2)))


@rule("LerpBackward0")
def _lerp(c):  # self + w (end - self), w a number: slots (self, end)
    w = c.a["weight"]
    return (c.g * (1 - w), c.g * w)


@rule("LerpBackward1")
def _lerp_tensor(c):  # w a tensor: slots (self, end, weight)
    x, end, w = c.s.get("self"), c.s.get("end"), c.s.get("weight")
    return (None if w is None else c.g * (1 - w), None if w is None else c.g * w,
            None if x is None or end is None else c.g * (end - x))


@rule("HypotBackward0")
def _hypot(c):
    r, x, y = c.s["result"], c.s.get("self"), c.s.get("other")
    return (None if x is None else c.g * (x / r), None if y is None else c.g * (y / r))


@rule("Atan2Backward0")
def _atan2(c):  # atan2(self, other)
    y, x = c.s["self"], c.s["other"]
    r2 = x * x + y * y
    return (c.g * (x / r2), c.g * (-y / r2))


@rule("CeluBackward0")
def _celu(c):  # elu with input scale 1/alpha, as PyTorch computes it
    x, alpha = c.s["self"], c.a["alpha"]
    return (np.where(x > 0, c.g, c.g * ((1 / alpha) * alpha * np.exp(x * (1 / alpha)))),)


@rule("HardshrinkBackward0", "SoftshrinkBackward0")
def _shrink(c):
    x, lam = c.s["self"], c.a["lambd"]
    return (np.where((x >= -lam) & (x <= lam), 0.0, c.g),)


# ============================================================================ more shape ops
@rule("TraceBackward0")
def _trace_rule(c):
    n, m = c.a["self_sym_sizes"]
    out = c.zeros((n, m))
    k = min(n, m)
    out[np.arange(k), np.arange(k)] = np.broadcast_to(c.g, (k,))
    return (out,)


@rule("DiagEmbedBackward0")
def _diag_embed(c):  # the gradient of diag_embed is the diagonal it filled
    return (np.diagonal(c.g, c.a["offset"], c.a["dim1"], c.a["dim2"]),)


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


@rule("CummaxBackward0", "CumminBackward0")
def _cummax(c):  # each output element came from the input at `indices` along dim
    x, idx = c.s["self"], c.s["indices"]
    if np.ndim(x) == 0:
        return (c.g,)
    d = c.a["dim"] % x.ndim
    out = c.zeros(np.shape(x))
    np.add.at(out, _along(idx, d), c.g)
    return (out,)


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


@rule("LinalgCrossBackward0")
def _cross(c):  # self x other along dim: slots (self, other)
    d, x, y = c.a["dim"], c.s.get("self"), c.s.get("other")
    return (None if y is None else _cross3(y, c.g, d), None if x is None else _cross3(c.g, x, d))


def _cross3(a, b, d):  # a x b along axis d (length 3), as numpy arrays or magnitudes
    shape = np.broadcast_shapes(a.shape, b.shape)
    a, b = np.moveaxis(np.broadcast_to(a, shape), d, -1), np.moveaxis(np.broadcast_to(b, shape), d, -1)
    out = np.stack([a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1], a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
                    a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]], axis=-1)
    return np.moveaxis(out, -1, d)


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


@rule("SoftMarginLossBackward0")
def _soft_margin(c):  # mean log(1 + exp(-y x)); the target gets no gradient
    x, t = c.s["self"], c.s["target"]
    norm = 1.0 / x.size if c.a["reduction"] == "mean" else 1.0
    z = np.exp(-t * x)
    return (c.g * (-norm * t * z / (1 + z)),)


@rule("MaxUnpool2DBackward0", "MaxUnpool3DBackward0")
def _max_unpool(c):  # each input element went to its index in the flattened spatial output
    idx = c.s["indices"]
    k = 2 if c.type == "MaxUnpool2DBackward0" else 3
    lead = idx.shape[: idx.ndim - k]
    g = c.g.reshape(lead + (-1,))
    return (np.take_along_axis(g, idx.reshape(lead + (-1,)), axis=-1).reshape(idx.shape),)


# ============================================================================ more pointwise
@rule("FmodBackward1", "RemainderBackward1")
def _fmod(c):  # self - other * q, q = self / other rounded toward zero (fmod) or down (remainder)
    x, y = c.s.get("self"), c.s.get("other")
    if x is None or y is None:  # saved only for other's gradient
        return (c.g, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = x / y
    q = np.trunc(q) if c.type == "FmodBackward1" else np.floor(q)
    return (c.g, -c.g * q)


@rule("NanToNumBackward0")
def _nan_to_num(c):
    return (np.where(np.isfinite(c.s["self"]), c.g, 0.0),)


@rule("LogitBackward0")
def _logit(c):  # g / (x (1 - x)); outside [eps, 1 - eps] 0, outside [0, 1] without eps NaN
    x, eps = c.s["self"], c.a["eps"]
    lo, hi = (0.0, 1.0) if eps is None else (eps, 1 - eps)
    outside = (x < lo) | (x > hi)
    with np.errstate(divide="ignore"):
        d = 1 / (x * (1 - x))
    return (np.where(outside, np.nan if eps is None else 0.0, c.g * d),)


@rule("Exp2Backward0")
def _exp2(c):
    return (c.g * c.s["result"] * math.log(2),)


@rule("Deg2RadBackward0", "Rad2DegBackward0")
def _deg2rad(c):
    return (c.g * (math.pi / 180 if c.type == "Deg2RadBackward0" else 180 / math.pi),)


@rule("SincBackward0")
def _sinc(c):  # (pi x cos(pi x) - sin(pi x)) / (pi x^2), 0 at x = 0
    x = c.s["self"]
    px = math.pi * x
    safe = np.where(x == 0, 1.0, x)
    d = (px * np.cos(px) - np.sin(px)) / (math.pi * safe * safe)
    return (np.where(x == 0, 0.0, c.g * d),)


@rule("XlogyBackward2")
def _xlogy_number(c):  # x * log(a number): log(other), also where x == 0 unless other <= 0 (then 0 there)
    x, other = c.s["self"], float(c.a["other"])
    if other > 0:
        return (c.g * math.log(other),)
    return (np.where(x == 0, 0.0, c.g * (-math.inf if other == 0 else math.nan)),)


@rule("CopysignBackward0", "CopysignBackward1")
def _copysign(c):  # result / self (0 where self == 0); a tensor `other` gets 0
    x, y = c.s.get("self"), c.s.get("result")
    ratio = None if x is None else np.where(x == 0, 0.0, y / np.where(x == 0, 1.0, x))
    dx = None if ratio is None else c.g * ratio
    return (dx, c.g * 0.0) if c.type == "CopysignBackward0" else (dx,)


@rule("SpecialEntrBackward0")
def _entr(c):  # -x log x: -(1 + log x)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (c.g * (-(1 + np.log(c.s["self"]))),)


@rule("LogaddexpBackward0", "Logaddexp2Backward0")
def _logaddexp(c):  # log(e^a + e^b): each side's share, 1 / (1 + e^(other - self)) (base 2 for logaddexp2)
    a, b = c.s["self"], c.s["other"]
    up = np.exp if c.type == "LogaddexpBackward0" else np.exp2
    return (c.g / (1 + up(b - a)), c.g / (1 + up(a - b)))


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
    where = _along(idx, d)
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


@rule("LinalgInvExBackward0")
def _inv(c):  # d A^-1 = -A^-1 dA A^-1: the gradient is -A^-T G A^-T, from the saved inverse
    t = np.swapaxes(c.s["inverse"], -1, -2)
    return (-(t @ (c.g @ t)),)


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
