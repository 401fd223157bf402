"""Matrix products, distances, cross products and the matrix inverse."""

from __future__ import annotations

import math

import numpy as np

from .reductions import pnorm_grad
from .table import rule


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


@rule("BaddbmmBackward0")
def _baddbmm(c):  # beta * self + alpha * batch1 @ batch2
    b1, b2, alpha, beta = c.s.get("batch1"), c.s.get("batch2"), c.a["alpha"], c.a["beta"]
    g = c.g if alpha == 1 else c.g * alpha
    return (c.g if beta == 1 else c.g * beta,
            None if b2 is None else g @ b2.swapaxes(1, 2),
            None if b1 is None else b1.swapaxes(1, 2) @ g)


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
    gx = pnorm_grad(np.broadcast_to(c.g, diff.shape), diff, np.broadcast_to(c.s["result"], diff.shape),
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


@rule("LinalgInvExBackward0")
def _inv(c):  # d A^-1 = -A^-1 dA A^-1: the gradient is -A^-T G A^-T, from the saved inverse
    t = np.swapaxes(c.s["inverse"], -1, -2)
    return (-(t @ (c.g @ t)),)
