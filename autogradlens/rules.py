"""Backward rules, one per autograd node type: the table the mirror runs.

Convention: ``RULES[type](c)`` returns one gradient per slot of the node's ``next_functions`` (None where
no gradient flows). ``c`` is a :class:`Ctx`: ``c.g`` (incoming gradient of output 0), ``c.gs`` (all
outputs), ``c.s[name]`` (saved tensors as float64 / int64 numpy arrays), ``c.a[name]`` (decoded saved
attributes), ``c.in_shapes[slot]`` / ``c.in_dtypes[slot]`` (forward inputs), ``c.zeros(shape)``.
Gradients are numpy arrays: float64 in tensor mode, object arrays of :class:`Value` in scalar mode;
every rule is linear in the incoming gradient, so the same code serves both. Rules do not reduce
broadcasting: the driver sums each result to its input's shape, as the engine does.
Where it matters for bit-exactness, formulas follow PyTorch's order of operations.
"""

from __future__ import annotations

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


@rule("CloneBackward0", "AliasBackward0")
def _identity(c):
    return (c.g,)


@rule("ToCopyBackward0")
def _to_copy(c):  # the gradient is cast back to the input's dtype, rounding it
    dt = c.in_dtypes[0]
    if dt not in ("float32", "float16", "bfloat16"):
        return (c.g,)
    rnd = {"float32": np.float32, "float16": np.float16}.get(dt)
    if rnd is None:
        raise Unsupported("a cast to bfloat16")
    if c.scalar:
        from .value import Value
        return (np.vectorize(lambda v: Value(float(rnd(v.data if isinstance(v, Value) else v))), otypes=[object])(c.g),)
    return (c.g.astype(rnd).astype(np.float64),)


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


@rule("SignBackward0")
def _sign(c):
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


@rule("CumsumBackward0")
def _cumsum(c):
    d = c.a["dim"] % c.g.ndim
    return (np.flip(np.cumsum(np.flip(c.g, d), axis=d), d),)


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
    if c.a["ord"] != 2:
        raise Unsupported("vector norms other than ord=2")
    x, y = c.s["self"], c.s["result"]
    dims = _dims(c.a["dim"] if c.a["dim"] is not None else [], x.ndim)
    ye = _unsqueeze_to(y, x.shape, dims, c.a["keepdim"])
    return (_unsqueeze_to(c.g, x.shape, dims, c.a["keepdim"]) * np.where(ye == 0, 0.0, x / np.where(ye == 0, 1, ye)),)


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


@rule("NllLossBackward0")
def _nll(c):
    x, t, w = c.s["self"], c.s["target"], c.s.get("weight")
    red, ignore = c.a["reduction"], c.a["ignore_index"]
    if x.ndim not in (1, 2):
        raise Unsupported("nll_loss with more than 2 dimensions")
    x2, t1 = (x[None], t.reshape(1)) if x.ndim == 1 else (x, t)
    out, g, tw = c.zeros(x2.shape), c.g, float(c.s["total_weight"])
    for i, ti in enumerate(t1.tolist()):
        if ti == ignore:
            continue
        gi = g.reshape(-1)[i] if red == "none" else g[()]
        gi = -gi if w is None else -float(w[ti]) * gi
        out[i, ti] = gi / tw if red == "mean" else gi
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
    return (dx, None if w is None else (g * xhat).sum(axis=rows), (g.sum(axis=rows) if w is not None else None))


@rule("ConvolutionBackward0")
def _conv(c):
    x, w, g = c.s.get("input"), c.s.get("weight"), c.g
    if c.a["transposed"] or c.a["groups"] != 1 or g.ndim != 4:
        raise Unsupported("only 2-d, non-transposed, groups=1 convolutions have a rule")
    (sh, sw), (ph, pw), (dh, dw_) = c.a["stride"], c.a["padding"], c.a["dilation"]
    n, o, ho, wo = g.shape
    kh, kw = c.in_shapes[1][2:] if c.in_shapes[1] is not None else w.shape[2:]
    xs = c.in_shapes[0] if c.in_shapes[0] is not None else x.shape
    dx = None
    if w is not None and c.in_shapes[0] is not None:
        dxp = c.zeros((n, xs[1], xs[2] + 2 * ph, xs[3] + 2 * pw))
        for i in range(kh):
            for j in range(kw):
                dxp[:, :, i * dh: i * dh + sh * ho: sh, j * dw_: j * dw_ + sw * wo: sw] += \
                    np.einsum("nohw,oc->nchw", g, w[:, :, i, j])
        dx = dxp[:, :, ph: ph + xs[2], pw: pw + xs[3]]
    dwt = None
    if x is not None:
        xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        dwt = c.zeros((o, xs[1], kh, kw))
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, :, i * dh: i * dh + sh * ho: sh, j * dw_: j * dw_ + sw * wo: sw]
                dwt[:, :, i, j] = np.einsum("nohw,nchw->oc", g, patch)
    return (dx, dwt, g.sum(axis=(0, 2, 3)))


@rule("MaxPool2DWithIndicesBackward0")
def _maxpool(c):
    x, idx, g = c.s["self"], c.s["result1"], c.g
    flat = c.zeros(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))
    gi = g.reshape(g.shape[:-2] + (-1,))
    ii = idx.reshape(idx.shape[:-2] + (-1,))
    lead = np.indices(ii.shape[:-1])
    for k in range(ii.shape[-1]):
        np.add.at(flat, tuple(lead) + (ii[..., k],), gi[..., k])
    return (flat.reshape(x.shape),)


@rule("AvgPool2DBackward0")
def _avgpool(c):
    x, g = c.s["self"], c.g
    (kh, kw) = c.a["kernel_size"] if len(c.a["kernel_size"]) == 2 else c.a["kernel_size"] * 2
    stride = c.a["stride"] or [kh, kw]
    (sh, sw) = stride if len(stride) == 2 else stride * 2
    pad = c.a["padding"] if len(c.a["padding"]) == 2 else c.a["padding"] * 2
    if c.a["ceil_mode"] or (any(pad) and not c.a["count_include_pad"]):
        raise Unsupported("avg_pool2d with ceil_mode or padding excluded from the count")
    div = c.a["divisor_override"] or kh * kw
    ph, pw = pad
    ho, wo = g.shape[-2:]
    outp = c.zeros(x.shape[:-2] + (x.shape[-2] + 2 * ph, x.shape[-1] + 2 * pw))
    for i in range(kh):
        for j in range(kw):
            outp[..., i: i + sh * ho: sh, j: j + sw * wo: sw] += g / div
    return (outp[..., ph: ph + x.shape[-2], pw: pw + x.shape[-1]],)
