"""The rule table: one backward rule per autograd node type, and what every rule is given.

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

The rules themselves live in this package's modules by op family (pointwise, reductions, linalg, shape, indexing,
conv, norm, losses, attention); importing the package registers them all.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

RULES: dict = {}


# Node types whose rule is right for complex tensors too (PyTorch's convention: the gradient of a real loss L with
# respect to z = x + iy is dL/dx + i dL/dy, so a product's rule multiplies by the conjugate): structural rules, and
# those written with conjugates (complex.py lists them). Other rules on complex tensors leave the node unmirrored.
COMPLEX_RULES: set = set()


def complex_ok(*names):
    COMPLEX_RULES.update(names)


class Unsupported(Exception):
    """A rule met a case it does not handle (the mirror then passes PyTorch's gradients through)."""


# Node types whose rule reproduces a CPU kernel's own arithmetic (where a grid point falls, filter weights): the driver
# hands them the node's device (attrs["device"]) and `cpu_only` leaves another device's node unmirrored.
CPU_KERNEL: set = set()


def rule(*names, cpu_kernel: bool = False):
    def register(fn):
        for n in names:
            RULES[n] = fn
        if cpu_kernel:
            CPU_KERNEL.update(names)
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

    def zeros(self, shape):  # a buffer for gradients: complex when they are, float32 when they all are
        if self.scalar:
            return object_zeros(shape)
        gs = [g for g in self.gs if g is not None]
        return np.zeros(shape, dtype=complex if any(np.iscomplexobj(g) for g in gs) else
                        np.float32 if gs and all(getattr(g, "dtype", None) == np.float32 for g in gs) else float)

    def rounded(self, dtype: str, a):
        """`a` rounded to `dtype` as PyTorch's cast does (bounds.MagCtx counts it as one rounding)."""
        return round_to(dtype, a)

    def dtype_sum(self, a, axis):
        """A sum PyTorch accumulates in the tensor's own dtype, rounding after every addition (bounds.MagCtx
        counts it so): the CPU layer-norm kernel's per-thread dgamma/dbeta buffers for bfloat16/float16."""
        return a.sum(axis=axis)


def object_zeros(shape):
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


def norm_dims(d, ndim):
    if ndim == 0:  # a 0-d tensor: dim 0 (or -1) names the tensor itself, nothing to reduce
        return []
    d = d if isinstance(d, list) else [d]
    return sorted(x % ndim for x in d) if d else list(range(ndim))


def unsqueeze_to(g, sizes, dims, keepdim):
    if not keepdim:
        for d in sorted(dims):
            g = np.expand_dims(g, d)
    return np.broadcast_to(g, sizes)


def scatter_axis(g, idx, size, axis, zeros):  # out[.., idx[i], ..] += g[.., i, ..] along one axis
    shape = list(g.shape)
    shape[axis] = size
    out = zeros(tuple(shape))
    np.add.at(np.moveaxis(out, axis, 0), idx, np.moveaxis(g, axis, 0))
    return out


def cpu_only(c, why: str):
    """For a rule that reproduces a CPU kernel's own arithmetic (registered with ``rule(..., cpu_kernel=True)``):
    another device's node, or one whose device is not known, is left unmirrored, with the reason."""
    device = c.a.get("device")
    if device != "cpu":
        raise Unsupported(f"{c.type} on {device or 'an unknown device'}: {why}")


def fma(a, b, c, ft):
    """a b + c rounded once to `ft` (np.float32 or np.float64), as a fused multiply-add, for kernels whose compiler
    fuses the two operations. float64 numbers: through exact rationals. float32 ones: a b + c in float64, rounded to
    float32; the product is exact, so is the sum where its bits span at most 53 (the unnormalisation's (x + 1) s - 1/2
    of grid_sample; the cubic filters' steps unless an argument is tiny, where a double rounding would still need the
    float64 sum to fall exactly halfway between two float32 numbers)."""
    if ft is np.float32:
        return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(np.float32)
    return _fma64(np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(c, np.float64)).astype(np.float64)


_fma64 = np.frompyfunc(lambda a, b, c: float(Fraction(a) * Fraction(b) + Fraction(c)), 3, 1)


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


def unsigned(i):  # PyTorch hands some int64 attributes over as uint64 (-1 -> 2**64 - 1)
    return i - 2**64 if i is not None and i >= 2**63 else i


# A node of a Python torch.autograd.Function without a rule (the user's own, or one a library such as torch's chunked
# linear_cross_entropy defines): its backward is Python code, not a formula the mirror knows.
CUSTOM_FUNCTION = ("a custom autograd.Function: its backward is Python code (yours or a library's), not a formula "
                   "to re-derive")

# Node types real models produce that have no rule, and why (the mirror passes PyTorch's gradients through them).
NO_RULE = {
    "CopySlices": "an in-place op on a view (x[i] = v, x[:, 1].mul_(3), also F.pad(mode='circular') and "
                  "padding_mode='circular' convolutions): the node wraps the in-place op's own backward node and the "
                  "view's geometry (sizes, strides, storage offset) in C++ fields Python does not expose, so what "
                  "to re-derive is unknown",
    "ScaledDotProductFlashAttentionBackward0": "CUDA only (CPU uses ScaledDotProductFlashAttentionForCpuBackward0)",
    "ScaledDotProductEfficientAttentionBackward0": "CUDA only",
    "CudnnRnnBackward0": "CUDA only (CPU uses MkldnnRnnLayerBackward0 or plain ops)",
    "CheckpointFunctionBackward": "a reentrant checkpoint region (use_reentrant=True): its backward runs a forward "
                                  "and a backward of its own, whose nodes are not in this graph",
    "ToSparseBackward0": "a sparse tensor's gradient: its layout (which zeros are structural) is not compared",
    "ToSparseBackward1": "a sparse tensor's gradient: its layout (which zeros are structural) is not compared",
    "ToDenseBackward0": "a sparse tensor's gradient: its layout (which zeros are structural) is not compared",
    "SparseMmReduceImplBackward0": "a sparse tensor's gradient: its layout (which zeros are structural) is not "
                                   "compared",
}
