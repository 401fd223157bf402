"""`Value`: micrograd's scalar autograd engine, same fields, same operators, same numbers.

The lecture's own code runs on it unchanged: ``Value(2.0, label='a')``, ``v.label = 'e'``,
``Value(t, (self,), 'tanh')`` with a ``_backward`` closure assigned to ``out._backward``.
Differences from micrograd 0.1.0, none of them visible in its users' arithmetic:

- ``backward()`` is iterative (no recursion limit) and ``_prev`` is a tuple (deterministic order, so the
  gradients are the same bits on every run; micrograd's ``set`` adds shared gradients in hash order);
- values at 0 and overflow follow IEEE as PyTorch does (``x**-1``, ``x**0.5``, ``log`` at 0, ``exp(1000)``
  give inf/nan, in the forward and in the backward) where Python's ``math`` raises;
- ``exp``, ``log``, ``tanh``, ``sigmoid`` exist;
- each node keeps its operands in two slots and a shared backward function instead of a ``set``, a
  ``__dict__`` and a fresh closure: one object per Value, which is what makes it fast. A number
  operand (the ``2`` of ``x * 2``) stays a number until someone reads ``_prev``; then it becomes the
  ``Value`` micrograd would have made, with the gradient micrograd's backward would have given it.
"""

from __future__ import annotations

import math

import numpy as np
from numpy import ndarray

__all__ = ["Value"]


class Value:
    """A scalar and its gradient, as in micrograd.

    Example (the expression from the lecture):
        >>> from autogradlens import Value
        >>> a, b = Value(-4.0, label='a'), Value(2.0, label='b')
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
        >>> g.label = 'g'
        >>> g.backward()
        >>> print(f"{g.data:.4f} {a.grad:.4f} {b.grad:.4f}")
        24.7041 138.8338 645.5773
    """

    # _a, _b: the operands (_b also holds a number operand or the exponent of '**'; _a a tuple when a
    # node built by hand has more than two children); _bw: the backward step, a function of the node
    __slots__ = ("data", "grad", "_a", "_b", "_op", "_bw", "label")

    def __init__(self, data, _children=(), _op="", label=""):
        self.data = data
        self.grad = 0
        self._op = _op
        self.label = label
        self._bw = _b_none  # micrograd: a node built by hand does nothing in backward until _backward is set
        ch = tuple(_children)
        n = len(ch)
        if n == 0:
            self._a = self._b = None
        elif n == 1 and isinstance(ch[0], Value):
            self._a, self._b = ch[0], None
        elif n == 2 and isinstance(ch[0], Value) and isinstance(ch[1], Value):
            self._a, self._b = ch
        else:
            self._a, self._b = ch, None

    # ---- micrograd's primitives
    def __add__(self, other):
        out = _new(Value)
        if isinstance(other, Value):
            out.data = self.data + other.data
            out._bw = _b_add
        elif isinstance(other, ndarray):
            return NotImplemented  # numpy applies it elementwise (object arrays of Values)
        else:
            out.data = self.data + other
            out._bw = _b_addk
        out.grad = 0
        out._a = self
        out._b = other
        out._op = "+"
        out.label = ""
        return out

    def __mul__(self, other):
        out = _new(Value)
        if isinstance(other, Value):
            out.data = self.data * other.data
            out._bw = _b_mul
        elif isinstance(other, ndarray):
            return NotImplemented
        else:
            out.data = self.data * other
            out._bw = _b_mulk
        out.grad = 0
        out._a = self
        out._b = other
        out._op = "*"
        out.label = ""
        return out

    def __pow__(self, other):
        if not isinstance(other, (int, float)) or isinstance(other, bool):
            from .errors import LensTypeError
            raise LensTypeError(f"Value ** {type(other).__name__} is not supported: the exponent must be an int or "
                                "float (for a Value exponent write (x.log() * y).exp())")
        return _node(_pow(self.data, other), self, other, f"**{other}", _b_pow)

    def relu(self):
        return _node(0 if self.data < 0 else self.data, self, None, "ReLU", _b_relu)

    # ---- beyond micrograd
    def exp(self):
        return _node(_exp(self.data), self, None, "exp", _b_exp)

    def log(self):
        return _node(_log(self.data), self, None, "log", _b_log)

    def tanh(self):
        return _node(math.tanh(self.data), self, None, "tanh", _b_tanh)

    def sigmoid(self):
        return _node(1.0 / (1.0 + _exp(-self.data)), self, None, "sigmoid", _b_sigmoid)

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
        return self * (other**-1 if isinstance(other, Value) else _pow(other, -1))

    def __rtruediv__(self, other):
        return other * self**-1

    def __rpow__(self, other):
        from .errors import LensTypeError
        raise LensTypeError(f"{type(other).__name__} ** Value is not supported: write (Value(c).log() * x).exp()")

    # ---- micrograd's fields
    @property
    def _prev(self) -> tuple:
        """The operands, in order (micrograd keeps a set)."""
        a = self._a
        if a is None:
            return ()
        if a.__class__ is tuple:
            return a
        b = self._b
        if b is None:
            return (a,)
        if not isinstance(b, Value):
            if self._bw is not _b_addk and self._bw is not _b_mulk:
                return (a,)  # b is the exponent of '**'
            self._b = b = _constant(self, a, b)
        return (a, b)

    @property
    def _backward(self):
        """The local backward step of this node, callable as in micrograd; assignable as in the lecture."""
        if self._bw is _b_addk or self._bw is _b_mulk:
            self._prev  # noqa: B018 (called by hand, it adds into the number operand too: make it a Value)
        return self._bw.__get__(self, Value)

    @_backward.setter
    def _backward(self, fn):
        if self._bw is _b_addk or self._bw is _b_mulk:
            self._prev  # noqa: B018 (a closure may use the number operand as a Value: make it one)
        self._bw = _Closure(fn)

    # ---- backward
    def backward(self):
        """Backpropagate from this node: sets ``self.grad = 1`` and adds into every ancestor's ``grad``."""
        topo = _topo(self)
        self.grad = 1
        for v in reversed(topo):
            v._bw(v)

    def zero_grad(self):
        """Set ``grad = 0`` on this node and every ancestor (micrograd's backward accumulates)."""
        for v in _topo(self):
            v.grad = 0

    def __repr__(self):
        return f"Value(data={self.data}, grad={self.grad})"


_new = object.__new__


def _node(data, a, b, op, bw):
    out = _new(Value)
    out.data = data
    out.grad = 0
    out._a = a
    out._b = b
    out._op = op
    out._bw = bw
    out.label = ""
    return out


def _topo(root) -> list:
    """Every Value `root` depends on, children before parents (iterative depth-first post-order)."""
    topo, visited, stack, exit_ = [], set(), [root], _EXIT
    while stack:
        v = stack.pop()
        if v is exit_:
            topo.append(stack.pop())
            continue
        if v in visited:
            continue
        visited.add(v)
        stack.append(v)
        stack.append(exit_)
        a = v._a
        if a is not None:
            if a.__class__ is tuple:
                stack.extend(c for c in reversed(a) if isinstance(c, Value) and c not in visited)
                continue
            b = v._b
            if b is not None and isinstance(b, Value) and b not in visited:
                stack.append(b)
            if a not in visited:
                stack.append(a)
    return topo


_EXIT = object()


def _constant(v, a, k):
    """The Value micrograd makes of a number operand, with the gradient its backward would have added."""
    c = Value(k)
    g = v.grad
    if v._bw is _b_addk:
        c.grad, v._bw = (g if g else 0), _b_add
    else:
        c.grad, v._bw = (a.data * g if g else 0), _b_mul
    return c


class _Closure:
    """A lecture-style ``_backward`` closure (no arguments), stored where the shared functions go."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, v):
        self.fn()

    def __get__(self, obj, cls=None):
        return self.fn


# ---- IEEE arithmetic where Python raises (PyTorch gives inf/nan)
def _ieee(f, *xs) -> float:
    with np.errstate(all="ignore"):
        return float(f(*(np.float64(x) for x in xs)))


def _pow(x, p):
    try:
        y = x**p
    except (ZeroDivisionError, OverflowError):
        return _ieee(np.power, x, p)
    return _ieee(np.power, x, p) if y.__class__ is complex else y  # a negative base: nan, not a complex


def _div(x, y):
    try:
        return x / y
    except ZeroDivisionError:
        return _ieee(np.divide, x, y)


def _exp(x):
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _log(x):
    try:
        return math.log(x)
    except ValueError:
        return -math.inf if x == 0 else math.nan


# ---- the local backward steps (micrograd's closures, as shared functions of the node)
def _b_none(v):
    pass


def _b_add(v):
    g = v.grad
    v._a.grad += g
    v._b.grad += g


def _b_addk(v):
    v._a.grad += v.grad


def _b_mul(v):
    a, b, g = v._a, v._b, v.grad
    a.grad += b.data * g
    b.grad += a.data * g


def _b_mulk(v):
    v._a.grad += v._b * v.grad


def _b_pow(v):
    a, p = v._a, v._b
    if p == 0 and a.data == 0:
        a.grad += 0.0 * v.grad  # d(x**0)/dx is 0, also at 0 (PyTorch; micrograd raises)
    else:
        a.grad += (p * _pow(a.data, p - 1)) * v.grad


def _b_relu(v):
    v._a.grad += (v.data > 0) * v.grad


def _b_exp(v):
    v._a.grad += v.data * v.grad


def _b_log(v):
    v._a.grad += _div(v.grad, v._a.data)


def _b_tanh(v):
    v._a.grad += (1 - v.data**2) * v.grad


def _b_sigmoid(v):
    v._a.grad += v.data * (1 - v.data) * v.grad
