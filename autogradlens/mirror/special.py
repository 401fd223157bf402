"""Special functions: gamma family (lgamma, digamma, polygamma, mvlgamma), Bessel (i0, i1 and their scaled forms),
erfinv, the normal distribution's ndtri and log_ndtr, erfcx, xlog1py.

Their derivatives are other special functions of the saved input, taken from scipy.special (a dependency of
scikit-learn), imported when a rule first runs.
"""

from __future__ import annotations

import math

import numpy as np

from .bounds import Reduced
from .table import rule


def _sp():
    from scipy import special
    return special


def _polygamma(n):  # polygamma(n, x) and its derivative polygamma(n + 1, x), n >= 0 (n = 0: digamma)
    if n == 1:
        return _trigamma
    return Reduced(lambda x: _sp().polygamma(n, x), lambda x: _sp().polygamma(n + 1, x))


def _trigamma(x):
    """polygamma(1, x) as PyTorch's CPU kernel computes it (calc_trigamma): the reflection below 1/2, six steps of the
    recurrence, then the asymptotic series cut after its x^-7 term; about 1e-10 off the true value at worst, so the
    mirror takes PyTorch's approximation, not scipy's exact one."""
    neg = x < 0.5
    sx = np.sin(math.pi * x)
    refl = (math.pi * math.pi) / (sx * sx)
    x = np.where(neg, 1 - x, x)
    r = 1 / (x * x)
    for _ in range(5):
        x = x + 1
        r = r + 1 / (x * x)
    x = x + 1
    ixx = 1 / (x * x)
    r = r + (1 + 1 / (2 * x) + ixx * (1 / 6 - ixx * (1 / 30 - ixx * (1 / 42)))) / x
    return np.where(neg, refl - r, r)


_psi = _polygamma(0)
_i0 = Reduced(lambda x: _sp().i0(x), lambda x: _sp().i1(x))
_i1 = Reduced(lambda x: _sp().i1(x), lambda x: _sp().i0(x) - _sp().i1(x) / np.where(x == 0, 1.0, x))
_i0e = Reduced(lambda x: _sp().i0e(x), lambda x: _sp().i1e(x) - np.sign(x) * _sp().i0e(x))
_i1e = Reduced(lambda x: _sp().i1e(x),
               lambda x: _sp().i0e(x) - _sp().i1e(x) * (np.sign(x) + 1 / np.where(x == 0, 1.0, x)))
_erfinv = Reduced(lambda x: _sp().erfinv(x), lambda x: 0.5 * math.sqrt(math.pi) * np.exp(_sp().erfinv(x) ** 2))


@rule("LgammaBackward0")
def _lgamma(c):
    return (c.g * _psi(c.s["self"]),)


@rule("DigammaBackward0")
def _digamma(c):
    return (c.g * _polygamma(1)(c.s["self"]),)


@rule("PolygammaBackward0")
def _polygamma_rule(c):
    return (c.g * _polygamma(c.a["n"] + 1)(c.s["self"]),)


@rule("MvlgammaBackward0")
def _mvlgamma(c):  # log of the multivariate gamma function of order p: sum_j digamma(x - j/2), j < p
    x, p = c.s["self"], c.a["p"]
    d = _psi(x)
    for j in range(1, p):
        d = d + _psi(x - j / 2)
    return (c.g * d,)


@rule("I0Backward0")
def _i0_rule(c):
    return (c.g * _i1(c.s["self"]),)


@rule("SpecialI0EBackward0")
def _i0e_rule(c):  # d/dx e^-|x| I0(x) = I1e(x) - sign(x) I0e(x)
    x = c.s["self"]
    return (c.g * (_i1e(x) - np.sign(x) * c.s["result"]),)


@rule("SpecialI1Backward0")
def _i1_rule(c):  # I0(x) - I1(x) / x, 1/2 at 0
    x = c.s["self"]
    safe = np.where(x == 0, 1.0, x)
    return (c.g * np.where(x == 0, 0.5, _i0(x) - c.s["result"] / safe),)


@rule("SpecialI1EBackward0")
def _i1e_rule(c):  # I0e(x) - I1e(x) (sign(x) + 1/x), 1/2 at 0
    x = c.s["self"]
    safe = np.where(x == 0, 1.0, x)
    return (c.g * np.where(x == 0, 0.5, _i0e(x) - c.s["result"] * (np.sign(x) + 1 / safe)),)


@rule("ErfinvBackward0")
def _erfinv_rule(c):  # sqrt(pi) / 2 exp(erfinv(x)^2)
    y = _erfinv(c.s["self"])
    return (c.g * (0.5 * math.sqrt(math.pi) * np.exp(y * y)),)


@rule("SpecialNdtriBackward0")
def _ndtri(c):  # sqrt(2 pi) exp(y^2 / 2)
    y = c.s["result"]
    return (c.g * (math.sqrt(2 * math.pi) * np.exp(y * y / 2)),)


@rule("SpecialLogNdtrBackward0")
def _log_ndtr(c):  # the normal density over its distribution function: exp(-(y + x^2/2)) / sqrt(2 pi)
    x, y = c.s["self"], c.s["result"]
    return (c.g * (np.exp(-(y + x * x / 2)) / math.sqrt(2 * math.pi)),)


@rule("SpecialErfcxBackward0")
def _erfcx(c):  # 2 x erfcx(x) - 2 / sqrt(pi)
    x, y = c.s["self"], c.s["result"]
    return (c.g * (2 * x * y - 2 / math.sqrt(math.pi)),)


@rule("SpecialXlog1PyBackward0")
def _xlog1py(c):  # x log1p(y): slots (self, other); log1p(y) for x, 0 where x == 0 and y <= -1 (as xlogy)
    x, y = c.s.get("self"), c.s.get("other")
    dx = None
    if y is not None:
        off = np.zeros(y.shape, dtype=bool) if x is None else (x == 0) & (y <= -1)
        dx = np.where(off, 0.0, c.g * np.log1p(np.where(off, 0.0, y)))
    return (dx, None if x is None or y is None else c.g * (x / (y + 1)))
