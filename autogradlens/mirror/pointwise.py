"""Elementwise rules: activations, arithmetic, several-input pointwise ops (and their double backward)."""

from __future__ import annotations

import math

import numpy as np

from .table import round_to, rule


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
        from ..value import Value
        return (np.vectorize(lambda v: Value(float(round_to(dt, np.float64(v.data if isinstance(v, Value) else v)))),
                             otypes=[object])(c.g),)
    return (c.rounded(dt, c.g),)


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


@rule("MaximumBackward0", "MinimumBackward0")
def _maximum(c):
    a, b = c.s["self"], c.s["other"]
    win = a > b if c.type == "MaximumBackward0" else a < b
    tie = a == b
    return (np.where(win, c.g, np.where(tie, c.g / 2, 0.0)), np.where(win, 0.0, np.where(tie, c.g / 2, c.g)))


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
