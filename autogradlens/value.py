"""`Value`: micrograd's scalar autograd engine, same fields, same operators, same numbers.

Differences from micrograd 0.1.0, all invisible to its users' arithmetic:
- ``backward()`` is iterative (no recursion limit) and ``_prev`` is a tuple (deterministic order);
- ``exp``, ``log``, ``tanh``, ``sigmoid`` exist;
- each node stores its op and operands instead of a fresh closure, so building and backpropagating are
  faster; ``_backward`` is still there and callable, as in micrograd;
- ``Value ** Value`` raises a TypeError that says what to do, instead of an ``assert``.
"""

from __future__ import annotations

import math

from numpy import ndarray

__all__ = ["Value"]


class Value:
    """A scalar and its gradient, as in micrograd.

    Example (the expression from the lecture):
        >>> from autogradlens import Value
        >>> a, b = Value(-4.0), Value(2.0)
        >>> c = a + b
        >>> d = a * b + b**3
        >>> c += c + 1
        >>> c += 1 + c + (-a)
        >>> d += d * 2 + (b + a).relu()
        >>> d += 3 * d + (b - a).relu()
        >>> e = c - d
        >>> f = e**2
        >>> g = f / 2.0
        >>> g += 10.0 / f
        >>> g.backward()
        >>> print(f"{g.data:.4f} {a.grad:.4f} {b.grad:.4f}")
        24.7041 138.8338 645.5773
    """

    __slots__ = ("data", "grad", "_prev", "_op", "_aux", "__weakref__")

    def __init__(self, data, _children=(), _op="", _aux=None):
        self.data = data
        self.grad = 0
        self._prev = tuple(_children)
        self._op = _op
        self._aux = _aux  # the exponent of '**'

    # ---- micrograd's primitives
    def __add__(self, other):
        if not isinstance(other, Value):
            if isinstance(other, ndarray):
                return NotImplemented  # let numpy apply it elementwise (object arrays of Values)
            other = Value(other)
        return Value(self.data + other.data, (self, other), "+")

    def __mul__(self, other):
        if not isinstance(other, Value):
            if isinstance(other, ndarray):
                return NotImplemented
            other = Value(other)
        return Value(self.data * other.data, (self, other), "*")

    def __pow__(self, other):
        if not isinstance(other, (int, float)) or isinstance(other, bool):
            raise TypeError(f"Value ** {type(other).__name__} is not supported: the exponent must be an int or "
                            "float (for a Value exponent write (x.log() * y).exp())")
        return Value(self.data**other, (self,), f"**{other}", other)

    def relu(self):
        return Value(0 if self.data < 0 else self.data, (self,), "ReLU")

    # ---- beyond micrograd
    def exp(self):
        return Value(math.exp(self.data), (self,), "exp")

    def log(self):
        return Value(math.log(self.data), (self,), "log")

    def tanh(self):
        return Value(math.tanh(self.data), (self,), "tanh")

    def sigmoid(self):
        return Value(1.0 / (1.0 + math.exp(-self.data)), (self,), "sigmoid")

    # ---- derived, exactly as micrograd composes them (so the numbers agree)
    def __neg__(self):
        return self * -1

    def __radd__(self, other):
        return self + other

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return other + (-self)

    def __rmul__(self, other):
        return self * other

    def __truediv__(self, other):
        return self * other**-1

    def __rtruediv__(self, other):
        return other * self**-1

    def __rpow__(self, other):
        raise TypeError(f"{type(other).__name__} ** Value is not supported: write (Value(c).log() * x).exp()")

    # ---- backward
    @property
    def _backward(self):
        """The local backward step of this node (micrograd keeps it as a closure; here it is computed)."""
        return lambda: _BACKWARD[_kind(self._op)](self)

    def backward(self):
        """Backpropagate from this node: sets ``self.grad = 1`` and adds into every ancestor's ``grad``."""
        topo, visited, stack = [], set(), [(self, False)]
        while stack:
            v, expanded = stack.pop()
            if expanded:
                topo.append(v)
                continue
            if v in visited:
                continue
            visited.add(v)
            stack.append((v, True))
            stack.extend((c, False) for c in reversed(v._prev) if c not in visited)
        self.grad = 1
        table = _BACKWARD
        for v in reversed(topo):
            table[_kind(v._op)](v)

    def zero_grad(self):
        """Set ``grad = 0`` on this node and every ancestor (micrograd's backward accumulates)."""
        seen, stack = set(), [self]
        while stack:
            v = stack.pop()
            if v not in seen:
                seen.add(v)
                v.grad = 0
                stack.extend(v._prev)

    def __repr__(self):
        return f"Value(data={self.data}, grad={self.grad})"


def _kind(op: str) -> str:
    return "**" if op.startswith("**") else op


def _b_leaf(v):
    pass


def _b_add(v):
    a, b = v._prev
    a.grad += v.grad
    b.grad += v.grad


def _b_mul(v):
    a, b = v._prev
    a.grad += b.data * v.grad
    b.grad += a.data * v.grad


def _b_pow(v):
    (a,) = v._prev
    p = v._aux
    a.grad += (p * a.data ** (p - 1)) * v.grad


def _b_relu(v):
    v._prev[0].grad += (v.data > 0) * v.grad


def _b_exp(v):
    v._prev[0].grad += v.data * v.grad


def _b_log(v):
    v._prev[0].grad += (1 / v._prev[0].data) * v.grad


def _b_tanh(v):
    v._prev[0].grad += (1 - v.data**2) * v.grad


def _b_sigmoid(v):
    v._prev[0].grad += v.data * (1 - v.data) * v.grad


_BACKWARD = {"": _b_leaf, "+": _b_add, "*": _b_mul, "**": _b_pow, "ReLU": _b_relu, "exp": _b_exp, "log": _b_log,
             "tanh": _b_tanh, "sigmoid": _b_sigmoid}
