"""Scalar mode: tensors as numpy object arrays of :class:`Value` (micrograd, literally), and its sizing.

In ``mode="scalar"`` the mirror turns every element of every gradient into a ``Value`` and runs the same
rules on those object arrays, so every scalar operation of the backward pass is one micrograd node
(``data``, ``_prev``, ``_op``). The helpers here are the seam the mirror uses:

- ``scalar_cost(nodes)``: about how many Values a graph would build; ``choose_mode`` turns it into a mode
  and a sentence saying why;
- ``as_values`` / ``floats``: float arrays to object arrays of Values and back;
- ``running(n, scalar)``: the context around the node loop (collector paused, a progress bar).

The rules need no fast path of their own: numpy's object-array loops (``@``, ``*``, ``sum``) call
``Value.__mul__``/``__add__`` from C, about 0.3 µs per Value once the collector is paused.

Sizing. A Value made by a rule costs about 144 bytes, measured with tracemalloc
(``benchmarks/bench_scalar.py`` prints it): 88 for the Value (7 slots, no ``__dict__``), 24 for its float,
24 for the float operand it keeps (micrograd's constant), 8 for its place in an object array.
``SCALAR_LIMIT`` = 4,000,000 Values is then about 0.6 GB, and at the measured 1 to 1.5 µs per Value
(collector paused, a loaded 2-core machine) 4 to 6 s of work: the largest graph that stays comfortable on
a laptop. Karpathy's makemore part 4 network at batch 32 makes about a million.
"""

from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager

import numpy as np

from .._guard import collector_paused
from ..value import Value, _b_none, _new

SCALAR_LIMIT = 4_000_000  # Values mode="scalar" accepts (about 0.6 GB; see the module docstring)
AUTO_SCALAR = 5_000       # mode="auto" picks scalar mode up to this many (a few milliseconds)
BYTES_PER_VALUE = 144     # measured: the Value, its float, its number operand, its place in an object array


def _leaf(x):
    v = _new(Value)
    v.data = x
    v.grad = 0
    v._a = v._b = None
    v._op = v.label = ""
    v._bw = _b_none
    return v


def as_values(a) -> np.ndarray:
    """An object array of leaf Values holding the elements of `a` as Python floats.

    Example:
        >>> import numpy as np
        >>> v = as_values(np.array([[1.0, 2.0]]))
        >>> v.shape, v[0, 1]
        ((1, 2), Value(data=2.0, grad=0))
    """
    a = np.asarray(a)
    out = np.empty(a.size, dtype=object)
    out[:] = [_leaf(x) for x in a.astype(np.float64, copy=False).ravel().tolist()]
    return out.reshape(a.shape)


def floats(a) -> np.ndarray:
    """The numbers in `a` (an object array of Values and numbers, or any array) as float64.

    Example:
        >>> floats(as_values(np.array([0.5, -1.0])) * 2)
        array([ 1., -2.])
    """
    a = np.asarray(a)
    if a.dtype != object:
        return a.astype(np.complex128 if np.iscomplexobj(a) else np.float64, copy=False)  # complex stays complex
    flat = [v.data if isinstance(v, Value) else v for v in a.ravel().tolist()]
    return np.array(flat, dtype=np.float64).reshape(a.shape)


def numbers(a) -> np.ndarray:
    """An array as the checks read it: a float32 or float64 array as it is (exact in float64 arithmetic), anything
    else through `floats`."""
    return a if isinstance(a, np.ndarray) and a.dtype in (np.float32, np.float64) else floats(a)


def scalar_cost(nodes) -> int:
    """About how many Values mode="scalar" creates: the mirror runs every rule twice (the local check from
    PyTorch's incoming gradient, then its own end-to-end pass), each time making about one Value per element
    of the node's inputs and outputs, and two (a product and a sum) per multiply-add of a matrix product's or
    convolution's two gradients. Within a few percent on the makemore network (1.05 million estimated,
    1.01 million made at batch 32).

    Example:
        >>> from types import SimpleNamespace as N
        >>> scalar_cost([N(type="MmBackward0", in_shapes=[(32, 64), (64, 27)], out_shapes=[(32, 27)])])
        451648
    """
    cost = 0
    for n in nodes:
        outs = sum(math.prod(s) for s in n.out_shapes if s is not None)
        cost += outs + sum(math.prod(s) for s in n.in_shapes if s is not None)
        last = n.in_shapes[-1] if n.in_shapes else None
        if n.type == "ConvolutionBackward0" and len(n.in_shapes) > 1 and n.in_shapes[1]:
            cost += 4 * outs * math.prod(n.in_shapes[1][1:])
        elif n.type in ("AddmmBackward0", "MmBackward0", "BmmBackward0") and last and len(last) >= 2:
            cost += 4 * outs * last[-2]
    return 2 * cost


def choose_mode(mode: str, cost: int) -> tuple[str, str]:
    """``("scalar" | "tensor", why)`` for a graph that would build about `cost` Values in scalar mode.

    Example:
        >>> choose_mode("auto", 1_200)[0], choose_mode("auto", 524_908)
        ('scalar', ('tensor', "auto chose tensor mode: about 524,908 scalar operations, more than 5,000; \
tensor mode gives the same verdicts faster (mode='scalar' re-derives every one with Value, up to 4,000,000)"))
    """
    from ..errors import LensValueError
    if mode not in ("auto", "scalar", "tensor"):
        raise LensValueError(f"mode must be 'auto', 'scalar' or 'tensor', got {mode!r}")
    if mode == "scalar":
        if cost > SCALAR_LIMIT:
            raise LensValueError(
                f"mode='scalar' would build about {cost:,} Values, more than SCALAR_LIMIT = {SCALAR_LIMIT:,} "
                f"(about {SCALAR_LIMIT * BYTES_PER_VALUE / 1e9:.1f} GB); use mode='tensor' for a graph this size "
                "(the same verdicts, from float64 arrays), or mirror a smaller batch in scalar mode")
        return "scalar", f"scalar mode as asked: about {cost:,} scalar operations, each one a Value"
    if mode == "tensor":
        return "tensor", "tensor mode as asked: float64 arrays, one Value per tensor"
    if cost <= AUTO_SCALAR:
        return "scalar", (f"auto chose scalar mode: about {cost:,} scalar operations (at most {AUTO_SCALAR:,}), "
                          "so every element is a Value, as in micrograd")
    return "tensor", (f"auto chose tensor mode: about {cost:,} scalar operations, more than {AUTO_SCALAR:,}; "
                      f"tensor mode gives the same verdicts faster (mode='scalar' re-derives every one with "
                      f"Value, up to {SCALAR_LIMIT:,})")


def _progress_wanted() -> bool:
    return sys.stderr is not None and sys.stderr.isatty() and "PYTEST_CURRENT_TEST" not in os.environ


@contextmanager
def running(n_nodes: int, scalar: bool):
    """Context for the mirror's node loop; yields ``tick()``, to be called once per node.

    In scalar mode the garbage collector is paused (the Values form no cycles; its passes over the young
    Values would take most of the time) and restored as it was, also on exceptions; a progress bar
    appears when the work takes longer than a second and stderr is a terminal (not under pytest).

    Example:
        >>> import gc
        >>> with running(3, scalar=True) as tick:
        ...     paused = not gc.isenabled()
        ...     for _ in range(3):
        ...         tick()
        >>> paused, gc.isenabled()
        (True, True)
    """
    if not scalar:
        yield _nothing
        return
    bar = None
    with collector_paused():
        try:
            if _progress_wanted():
                from tqdm import tqdm
                bar = tqdm(total=n_nodes, desc="mirror (scalar mode)", unit="node", delay=1.0, leave=False)
                yield bar.update
            else:
                yield _nothing
        finally:
            if bar is not None:
                bar.close()


def _nothing(n=1):
    pass
