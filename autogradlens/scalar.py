"""Scalar mode: tensors as numpy object arrays of :class:`Value` (micrograd, literally), and its sizing."""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np

from .value import Value

SCALAR_LIMIT = 100_000  # scalar operations mode="scalar" accepts
AUTO_SCALAR = 5_000     # mode="auto" picks scalar mode up to this many


def as_values(a: np.ndarray) -> np.ndarray:
    out = np.empty(a.shape, dtype=object)
    flat = out.reshape(-1)
    for i, x in enumerate(a.reshape(-1).tolist()):
        flat[i] = Value(x)
    return out


_data = np.vectorize(lambda v: v.data if isinstance(v, Value) else v, otypes=[np.float64])


def floats(a) -> np.ndarray:
    a = np.asarray(a)
    return _data(a) if a.dtype == object else a.astype(np.float64, copy=False)


def scalar_cost(nodes) -> int:
    """About how many Values mode="scalar" would create: elementwise work, plus K multiply-adds per output
    element of a matrix product or convolution (for its two gradients)."""
    cost = 0
    for n in nodes:
        outs = sum(math.prod(s) for s in n.out_shapes)
        cost += outs + sum(math.prod(s) for s in n.in_shapes if s is not None)
        last = n.in_shapes[-1] if n.in_shapes else None
        if n.type == "ConvolutionBackward0" and len(n.in_shapes) > 1 and n.in_shapes[1]:
            cost += 4 * outs * math.prod(n.in_shapes[1][1:])
        elif n.type in ("AddmmBackward0", "MmBackward0", "BmmBackward0") and last and len(last) >= 2:
            cost += 4 * outs * last[-2]
    return cost




def choose_mode(mode: str, cost: int) -> tuple[str, str]:
    """("scalar" | "tensor", why) for a graph that would build about `cost` Values in scalar mode."""
    from .errors import LensValueError
    if mode == "scalar" and cost > SCALAR_LIMIT:
        raise LensValueError(f"mode='scalar' would build about {cost:,} Values (limit {SCALAR_LIMIT:,}); "
                             "use mode='tensor' for a graph this size")
    if mode == "auto":
        if cost <= AUTO_SCALAR:
            return "scalar", f"auto: about {cost:,} scalar operations (<= {AUTO_SCALAR:,}), so every element a Value"
        return "tensor", f"auto: about {cost:,} scalar operations (> {AUTO_SCALAR:,}), so float64 arrays"
    return mode, f"{mode}: as asked"


@contextmanager
def running(n_nodes: int, scalar: bool):
    """Context for the mirror's node loop: yields ``tick()``, to be called once per node processed."""
    yield lambda: None
