"""Matrix products, distances, cross products and the matrix inverse."""

from __future__ import annotations

import math

import numpy as np

from .bounds import Mag, unit_roundoff
from .reductions import pnorm_grad
from .table import Unsupported, complex_ok, rule


@rule("AddmmBackward0")
def _addmm(c):
    m1, m2, alpha, beta = c.s.get("mat1"), c.s.get("mat2"), c.a["alpha"], c.a["beta"]
    g = c.g if alpha == 1 else c.g * alpha
    return (c.g if beta == 1 else c.g * beta,
            None if m2 is None else _left(c, "mat1", g, m2),
            None if m1 is None else _right(c, "mat2", g, m1))


@rule("MmBackward0")
def _mm(c):
    a, b = c.s.get("self"), c.s.get("mat2")
    return (None if b is None else _left(c, "self", c.g, b), None if a is None else _right(c, "mat2", c.g, a))


def _left(c, name, g, m2):
    """g @ m2^T, the gradient of the left factor `name`, laid out as PyTorch lays it out (_column_major)."""
    return (m2 @ g.T).T if _column_major(c, name) else g @ m2.T


def _right(c, name, g, m1):
    """m1^T @ g, the gradient of the right factor `name`, laid out as PyTorch lays it out (_column_major)."""
    return (g.T @ m1).T if _column_major(c, name) else m1.T @ g


def _column_major(c, name) -> bool:
    """Was the factor `name` column-major (a transposed weight: nn.Linear's)? PyTorch's mm_mat1/mat2_backward then
    multiply the transposed product and hand the gradient over column-major; the rule does the same, so the two
    gradients share a layout and the checks read them in flat chunks, not tiles (each element is the same dot
    product either way)."""
    st, sz = c.a.get(f"{name}_sym_strides"), c.a.get(f"{name}_sym_sizes")
    return st is not None and len(st) == 2 and st[0] == 1 and st[1] == sz[0]


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


@rule("AddmvBackward0")
def _addmv(c):  # beta self + alpha mat @ vec: slots (self, mat, vec)
    mat, vec, alpha, beta = c.s.get("mat"), c.s.get("vec"), c.a["alpha"], c.a["beta"]
    g = c.g if alpha == 1 else c.g * alpha
    return (c.g if beta == 1 else c.g * beta, None if vec is None else np.outer(g, vec),
            None if mat is None else mat.T @ g)


@rule("AddrBackward0")
def _addr(c):  # beta self + alpha outer(vec1, vec2): slots (self, vec1, vec2)
    v1, v2, alpha, beta = c.s.get("vec1"), c.s.get("vec2"), c.a["alpha"], c.a["beta"]
    g = c.g if alpha == 1 else c.g * alpha
    return (c.g if beta == 1 else c.g * beta, None if v2 is None else g @ v2, None if v1 is None else v1 @ g)


@rule("AddbmmBackward0")
def _addbmm(c):  # beta self + alpha sum_b batch1[b] @ batch2[b]: slots (self, batch1, batch2)
    b1, b2, alpha, beta = c.s.get("batch1"), c.s.get("batch2"), c.a["alpha"], c.a["beta"]
    g = c.g if alpha == 1 else c.g * alpha
    return (c.g if beta == 1 else c.g * beta,
            None if b2 is None else np.einsum("ik,bjk->bij", g, b2),
            None if b1 is None else np.einsum("bji,jk->bik", b1, g))


@rule("TrilinearBackward0")
def _trilinear(c):
    """_trilinear(i1, i2, i3, expand1, expand2, expand3, sumdim) (nn.functional.bilinear): each input unsqueezed at its
    expand dims, the three multiplied and summed over sumdim; each input's gradient is G (unsqueezed at sumdim) times
    the other two, summed over the dims it was expanded along."""
    ins = [c.s.get("i1"), c.s.get("i2"), c.s.get("i3")]
    exps = [c.a["expand1"], c.a["expand2"], c.a["expand3"]]

    def expand(t, dims):
        for d in sorted(dims):
            t = np.expand_dims(t, d)
        return t
    ge = expand(c.g, c.a["sumdim"])
    out = []
    for k in range(3):
        if c.in_shapes[k] is None:
            out.append(None)
            continue
        a, b = [expand(ins[j], exps[j]) for j in range(3) if j != k]
        out.append((ge * a * b).sum(axis=tuple(exps[k])) if exps[k] else ge * a * b)
    return tuple(out)


@rule("VdotBackward0")
def _vdot(c):  # conj(self) . other, for real tensors a dot product
    a, b = c.s.get("self"), c.s.get("other")
    return (None if b is None else c.g * b, None if a is None else c.g * a)


# ----------------------------------------------------------------------------- decompositions and solves
#
# PyTorch's backward formulas (torch/csrc/autograd/FunctionsManual.cpp) evaluated from the same saved factors. Solves
# and inverses go through np.linalg.solve / np.linalg.inv, which bounds.Mag bounds with the matrix's componentwise
# condition number |A^-1||A||A^-1| (a backward-stable solve); coefficients such as 1 / (s_j^2 - s_i^2) carry their
# cancellation through Mag's division. Real tensors only (complex ones: unmirrored with the reason).

def _mT(a):
    return np.swapaxes(a, -1, -2)


def _mH(a):  # the conjugate transpose (a real array, or scalar mode's real Values: the transpose)
    t = _mT(a)
    return t if isinstance(t, np.ndarray) and t.dtype.kind in "fiuO" else np.conj(t)


def _eye_like(a):
    return np.broadcast_to(np.eye(a.shape[-1]), a.shape)


def _lsolve(a, b):  # a^-1 b (for Values, scalar mode: an LU solve written out, as backward stable as LAPACK's)
    if isinstance(b, np.ndarray) and b.dtype.kind == "O":
        return _values_solve(np.asarray(a, dtype=np.float64), b)
    return np.linalg.solve(a, b)


def _values_solve(a, b):
    """A^-1 B for a float matrix A and an object array B of Values: LU with partial pivoting on A's numbers, then
    forward and back substitution on B's Values (every step a Value operation)."""
    shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a, b = np.broadcast_to(a, shape + a.shape[-2:]), np.broadcast_to(b, shape + b.shape[-2:])
    out = np.empty(b.shape, dtype=object)
    n = a.shape[-1]
    for idx in np.ndindex(*shape):
        lu, perm = a[idx].copy(), np.arange(n)
        for k in range(n):
            p = k + int(np.argmax(np.abs(lu[k:, k])))
            lu[[k, p]], perm[[k, p]] = lu[[p, k]], perm[[p, k]]
            lu[k + 1:, k] /= lu[k, k]
            lu[k + 1:, k + 1:] -= np.outer(lu[k + 1:, k], lu[k, k + 1:])
        y = b[idx][perm].copy()
        for i in range(1, n):
            y[i] = y[i] - lu[i, :i] @ y[:i]
        y[n - 1] = y[n - 1] / lu[n - 1, n - 1]
        for i in range(n - 2, -1, -1):
            y[i] = (y[i] - lu[i, i + 1:] @ y[i + 1:]) / lu[i, i]
        out[idx] = y
    return out


def _solve_left(a, b, adjoint=False):  # a^-1 b, or a^-T b
    return _lsolve(_mT(a) if adjoint else a, b)


def _solve_right(b, a, adjoint=False):  # b a^-1, or b a^-T
    return _mT(_lsolve(a if adjoint else _mT(a), _mT(b)))


def _tri(a, upper, unit=False):  # the triangle a triangular solve reads (its diagonal 1 when unitriangular)
    t = np.triu(a, 1 if unit else 0) if upper else np.tril(a, -1 if unit else 0)
    return t + _eye_like(a) if unit else t


def _vec_rhs(a, b):  # linalg.solve's vector case: B of A's shape minus its last dimension
    return np.ndim(b) == np.ndim(a) - 1


def _nonsingular(d, what):
    if np.any(np.asarray(d) == 0):
        raise Unsupported(f"{what} of a singular matrix: PyTorch takes a different (SVD) path there")


@rule("LinalgDetBackward0")
def _det(c):  # G det(A) A^-T
    a, det = c.s["A"], c.s["result"]
    _nonsingular(det, "det")
    gd = np.reshape(c.g * det, np.shape(det) + (1, 1))  # (a 0-d product of Values is a bare Value)
    return (_solve_left(a, gd * _eye_like(a), adjoint=True),)


@rule("LinalgSlogdetBackward0")
def _slogdet(c):  # outputs (sign, logabsdet): G_logabsdet A^-T (the sign has no gradient for real matrices)
    a, g = c.s["A"], c.gs[1] if len(c.gs) > 1 else None
    _nonsingular(c.s["sign"], "slogdet")
    if g is None:
        return (c.zeros(a.shape),)
    return (_solve_left(a, g[..., None, None] * _eye_like(a), adjoint=True),)


@rule("LinalgSolveExBackward0")
def _solve(c):  # X = A^-1 B (left) or B A^-1: slots (A, B)
    a, x, left = c.s["A"], c.s["result"], c.a["left"]
    g = c.g
    vec = _vec_rhs(a, x)
    if vec:
        g, x = g[..., None], x[..., None]
    gb = _solve_left(a, g, adjoint=True) if left else _solve_right(g, a, adjoint=True)
    ga = -(gb @ _mT(x)) if left else -(_mT(x) @ gb)
    return (ga, gb[..., 0] if vec else gb)


def _unpack(lu, pivots):  # (P, L, U) from LAPACK's packed LU and its 1-based row swaps
    m, n = lu.shape[-2:]
    k = min(m, n)
    lo = np.tril(lu[..., :, :k], -1) + np.eye(m, k)
    up = np.triu(lu[..., :k, :])
    batch = lu.shape[:-2]
    p = np.empty(batch + (m, m))
    for idx in np.ndindex(*batch):
        perm = np.arange(m)
        for i, j in enumerate(np.asarray(pivots[idx]) - 1):
            perm[[i, j]] = perm[[j, i]]
        p[idx] = np.eye(m)[:, perm]
    return p, lo, up


def _lu_backward(gl, gu, p, lo, up, pivot):
    """PyTorch's linalg_lu_backward: A = P L U, gA from the gradients of L (strictly lower) and U (upper)."""
    m, n = lo.shape[-2], up.shape[-1]
    k = min(m, n)
    if m == n:
        ga = None if gl is None else np.tril(_mT(lo) @ gl, -1)
        if gu is not None:
            t = np.triu(gu @ _mT(up))
            ga = t if ga is None else ga + t
        ga = _solve_left(_tri(lo, False, True), _solve_right(ga, up, adjoint=True), adjoint=True)
    elif m < n:  # wide
        u1 = up[..., :k]
        ga = None if gl is None else _mT(lo) @ gl
        if gu is not None:
            t = -(np.triu(gu) @ _mT(up))
            ga = t if ga is None else ga + t
        ga = _solve_right(np.tril(ga, -1), u1, adjoint=True)
        if gu is not None:
            ga = np.concatenate([ga + np.triu(gu[..., :k]), gu[..., k:]], axis=-1)
        ga = _solve_left(_tri(lo, False, True), ga, adjoint=True)
        if gu is None:
            ga = np.concatenate([ga, np.zeros(up[..., k:].shape)], axis=-1)
    else:  # tall
        l1 = lo[..., :k, :]
        ga = None if gu is None else gu @ _mT(up)
        if gl is not None:
            t = -(_mT(lo) @ np.tril(gl, -1))
            ga = t if ga is None else ga + t
        ga = _solve_left(_tri(l1, False, True), np.triu(ga), adjoint=True)
        if gl is not None:
            ga = np.concatenate([ga + np.tril(gl[..., :k, :], -1), gl[..., k:, :]], axis=-2)
        ga = _solve_right(ga, up, adjoint=True)
        if gl is None:
            ga = np.concatenate([ga, np.zeros(lo[..., k:, :].shape)], axis=-2)
    return p @ ga if pivot else ga


@rule("LinalgLuFactorExBackward0")
def _lu_factor(c):  # the packed LU's gradient: its strictly lower part is L's, its upper part U's
    p, lo, up = _unpack(c.s["LU"], c.s["pivots"])
    k = min(lo.shape[-2], up.shape[-1])
    g = c.g
    return (_lu_backward(np.tril(g[..., :, :k], -1), np.triu(g[..., :k, :]), p, lo, up, c.a["pivot"]),)


@rule("LinalgLuBackward0")
def _lu(c):  # differentiable outputs (L, U) of (P, L, U)
    gl, gu = (list(c.gs) + [None, None])[:2]
    if gl is None and gu is None:
        return (c.zeros(c.in_shapes[0]),)
    return (_lu_backward(gl, gu, c.s["P"], c.s["L"], c.s["U"], c.a["pivot"]),)


@rule("LuUnpackBackward0")
def _lu_unpack(c):  # differentiable outputs (L, U): L's strictly lower part and U's upper part back into one
    gl, gu = (list(c.gs) + [None, None])[:2]
    m, n = c.a["LU_data_sym_argsize_minus_2"], c.a["LU_data_sym_argsize_minus_1"]
    k = min(m, n)
    shape = c.in_shapes[0]
    out = c.zeros(shape)
    if gl is not None:
        out[..., :, :k] = out[..., :, :k] + np.tril(gl, -1)
    if gu is not None:
        out[..., :k, :] = out[..., :k, :] + np.triu(gu)
    return (out,)


@rule("LinalgLuSolveBackward0")
def _lu_solve(c):
    """X from the packed LU (A = P L U) and B: slots (LU, B). B's gradient is a solve with op(A)^T; LU's follows
    PyTorch's linalg_lu_solve_LU (an auxiliary gR, split into its triangles)."""
    lu_, x, left, adj = c.s["LU"], c.s["result"], c.a["left"], c.a["adjoint"]
    p, lo, up = _unpack(lu_, c.s["pivots"])
    a = p @ lo @ up
    g = c.g
    # left, not adjoint: A X = B; left, adjoint: A^T X = B; right: X A = B (adjoint: X A^T = B)
    if left:
        gb = _solve_left(a, g, adjoint=not adj)
    else:
        gb = _solve_right(g, a, adjoint=not adj)
    if c.in_shapes[0] is None:
        return (None, gb)
    lt, ut = _tri(lo, False, True), up
    if left != adj:  # gR = U^-H op2(-gX) op2(X)^H, gU = triu(gR), gL = tril(L^-H gR U^H, -1)
        op2 = (lambda t: t) if left else _mT
        gr = _solve_left(ut, op2(-g) @ _mT(op2(x)), adjoint=True)
        gu, gl = np.triu(gr), np.tril(_solve_left(lt, gr @ _mT(ut), adjoint=True), -1)
    else:  # gR = -P^T op3(X) op1(op2(gX)) P L^-H, gU = triu(L^H gR U^-H), gL = tril(gR, -1)
        if left:  # adjoint: op1 = ^H, op2 = id, op3 = id
            inner = x @ _mT(g)
        else:  # not adjoint: op1 = id, op2 = ^H, op3 = ^H
            inner = _mT(x) @ g
        gr = _solve_right(-(_mT(p) @ inner @ p), lt, adjoint=True)
        gu, gl = np.triu(_solve_right(_mT(lt) @ gr, ut, adjoint=True)), np.tril(gr, -1)
    return (gl + gu, gb)


def _cholesky_grad(gl, lo):
    """gA = L^-H Phi(L^H gL) L^-1, Phi(X) = (tril(X) + tril(X, -1)^H) / 2 (PyTorch's cholesky_backward, lower L)."""
    ga = np.tril(_mT(lo) @ gl)
    ga = 0.5 * (ga + _mT(np.tril(ga, -1)))
    return _solve_right(_solve_left(lo, ga, adjoint=True), lo)


@rule("CholeskyBackward0", "LinalgCholeskyExBackward0")
def _cholesky(c):
    lo, upper = c.s["result"] if "result" in c.s else c.s["L"], c.a["upper"]
    g = c.g
    if upper:
        lo, g = _mT(lo), _mT(g)
    return (_cholesky_grad(g, lo),)


@rule("CholeskyInverseBackward0")
def _cholesky_inverse(c):  # inverse = (L L^H)^-1: gL = -(G + G^H) inv-sandwiched times L
    lo, inv, upper = c.s["self"], c.s["result"], c.a["upper"]
    common = inv @ ((c.g + _mT(c.g)) @ inv)
    return (-(lo @ common) if upper else -(common @ lo),)


@rule("CholeskySolveBackward0")
def _cholesky_solve(c):  # X = (L L^H)^-1 B: slots (self = B, input2 = L)
    lo, x, upper = c.s["input2"], c.s["result"], c.a["upper"]
    a = _mT(lo) @ lo if upper else lo @ _mT(lo)
    gb = _solve_left(a, c.g)
    common = gb @ _mT(x)
    common = common + _mT(common)
    return (gb, -(lo @ common) if upper else -(common @ lo))


@rule("TriangularSolveBackward0")
def _triangular_solve(c):  # torch.triangular_solve(b, A) -> (X, A clone): slots (b, A)
    a, x = c.s["A"], c.s["solution"]
    upper, trans, unit = c.a["upper"], c.a["transpose"], c.a["unitriangular"]
    gx, gm = (list(c.gs) + [None, None])[:2]
    t = _tri(a, upper, unit)
    gb = ga = None
    if gx is not None:
        gb = _solve_left(t, gx, adjoint=not trans)
        ga = -(x @ _mT(gb)) if trans else -(gb @ _mT(x))
        ga = np.triu(ga, int(unit)) if upper else np.tril(ga, -int(unit))
    if gm is not None:
        ga = gm if ga is None else ga + gm
    return (gb, ga)


@rule("LinalgSolveTriangularBackward0")
def _solve_triangular(c):  # X = A^-1 B (left) or B A^-1: slots (A, B)
    a, x = c.s["self"], c.s["result"]
    upper, left, unit = c.a["upper"], c.a["left"], c.a["unitriangular"]
    t = _tri(a, upper, unit)
    gb = _solve_left(t, c.g, adjoint=True) if left else _solve_right(c.g, t, adjoint=True)
    ga = -(gb @ _mT(x)) if left else -(_mT(x) @ gb)
    return (np.triu(ga, int(unit)) if upper else np.tril(ga, -int(unit)), gb)


def _pinv_grad(g, pinv, a):  # PyTorch's pinv_backward (products only)
    m, n = a.shape[-2:]
    pinvh, gh = _mT(pinv), _mT(g)
    if m <= n:
        k = gh @ pinv
        kp = k @ pinvh
        return -_mT(pinv @ k) + kp - (a @ pinv) @ kp + (pinvh @ pinv) @ (gh - k @ a)
    k = pinv @ gh
    pk = pinvh @ k
    return -_mT(k @ pinv) + pk - (pk @ pinv) @ a + ((gh - a @ k) @ pinv) @ pinvh


@rule("LinalgPinvBackward0")
def _pinv(c):
    return (_pinv_grad(c.g, c.s["result"], c.s["self"]),)


@rule("LinalgLstsqBackward0")
def _lstsq(c):  # outputs (solution, residuals, rank, singular values): slots (self = A, b)
    a, b = c.s["self"], c.s["b"]
    g = c.g
    vec = _vec_rhs(a, b)
    if vec:
        g, b = g[..., None], b[..., None]
    if np.any(np.linalg.matrix_rank(np.asarray(a)) < min(a.shape[-2:])):
        raise Unsupported("lstsq of a rank-deficient matrix (its pseudo-inverse is PyTorch's SVD's)")
    if a.shape[-2] >= a.shape[-1]:  # full column rank: (A^T A)^-1 A^T
        pinv = _lsolve(_mT(a) @ a, _mT(a))
    else:  # full row rank: A^T (A A^T)^-1
        pinv = _mT(np.linalg.solve(a @ _mT(a), a))
    gb = _mT(pinv) @ g
    ga = _pinv_grad(g @ _mT(b), pinv, a)
    gr = c.gs[1] if len(c.gs) > 1 else None
    if gr is not None and gr.size:  # the residuals ||A x_j - b_j||^2 (x optimal: only their explicit terms)
        x = c.s["solution"][..., None] if vec else c.s["solution"]
        res = (a @ x - b) * (gr[..., None] if vec else gr)[..., None, :]
        ga, gb = ga + 2 * (res @ _mT(x)), gb - 2 * res
    return (ga, gb[..., 0] if vec else gb)


@rule("LinalgSvdBackward0")
def _svd(c):
    """PyTorch's svd_backward from the saved (U, S, Vh), singular values assumed distinct: the skew parts of U^T gU and
    Vh gVh^T divided by E_ij = s_j^2 - s_i^2, gS on the diagonal, and the projections for a non-square A."""
    u, s, vh = c.s["U"], c.s["S"], c.s["Vh"]
    gu, gs, gvh = (list(c.gs) + [None] * 3)[:3]
    k = s.shape[-1]
    if c.a["full_matrices"]:
        u, vh = u[..., :k], vh[..., :k, :]
        gu = None if gu is None else gu[..., :k]
        gvh = None if gvh is None else gvh[..., :k, :]
    m, n = u.shape[-2], vh.shape[-1]
    if gu is None and gvh is None:
        gs = c.zeros(s.shape) if gs is None else gs
        return (u @ (gs[..., :, None] * vh) if m >= n else (u * gs[..., None, :]) @ vh,)
    s2 = s * s
    e = s2[..., None, :] - s2[..., :, None]
    eye = np.eye(k, dtype=bool)
    e = np.where(eye, 1.0, e)
    uhgu = None if gu is None else _mT(u) @ gu
    vhgv = None if gvh is None else vh @ _mT(gvh)
    uhgu = None if uhgu is None else uhgu - _mT(uhgu)
    vhgv = None if vhgv is None else vhgv - _mT(vhgv)
    if uhgu is not None and vhgv is not None:
        ret = (uhgu * s[..., None, :] + s[..., :, None] * vhgv) / e
    elif uhgu is not None:
        ret = uhgu * (s[..., None, :] / e)
    else:
        ret = s[..., :, None] * (vhgv / e)
    if gs is not None:
        ret = ret + gs[..., :, None] * np.eye(k)
    if m > n and gu is not None:
        ga = u @ ret
        gus = gu / s[..., None, :]
        ga = (ga + gus - u @ (_mT(u) @ gus)) @ vh
    elif m < n and gvh is not None:
        ga = ret @ vh
        sgvh = gvh / s[..., :, None]
        ga = u @ (ga + sgvh - (sgvh @ _mT(vh)) @ vh)
    else:
        ga = u @ (ret @ vh) if m >= n else (u @ ret) @ vh
    return (ga,)


@rule("LinalgEighBackward0")
def _eigh(c):  # PyTorch's linalg_eig_backward for a symmetric matrix: V ((V^T gV skew) / E + diag(gL)) V^T
    lam, v = c.s["eigenvalues"], c.s["eigenvectors"]
    gl, gv = (list(c.gs) + [None, None])[:2]
    if gv is None:
        gl = c.zeros(lam.shape) if gl is None else gl
        return ((v * gl[..., None, :]) @ _mT(v),)
    vhgv = _mT(v) @ gv
    vhgv = 0.5 * (vhgv - _mT(vhgv))
    n = lam.shape[-1]
    eye = np.eye(n, dtype=bool)
    e = np.where(eye, 1.0, lam[..., None, :] - lam[..., :, None])
    ga = np.where(eye, 0.0, vhgv / e)
    if gl is not None:
        ga = ga + gl[..., :, None] * np.eye(n)
    return (v @ (ga @ _mT(v)),)


# NOTE [recomputed eigendecomposition] linalg.matrix_sqrth's backward (linalg_matrix_sqrth_differential) and
# linalg.polar's (linalg_polar_backward) do not use saved factors: PyTorch computes an eigendecomposition Q diag(l) Q^H
# of a saved symmetric positive-definite matrix (matrix_sqrth's input, polar's H) in its dtype, then
# Q ((Q^H R Q) / D) Q^H with D_ij = f(l_i) + f(l_j) (f = sqrt for the square root's derivative, the identity for the
# Sylvester solve H X + X H = R). The mirror computes the same from the saved matrix in float64 (numpy's eigh, which
# reads its lower triangle, as PyTorch's does); the run on magnitudes bounds the products and the divisions (D's own
# rounding included) as for eigh above, and adds what neither run sees: PyTorch's eigenvectors are those of a nearby
# matrix, not its own. A backward-stable symmetric eigensolver gives Q~ within p u of an orthogonal Q^ with
# Q^ diag(l~) Q^^H = S + E, ||E||_2 <= p u ||S||_2; p = 4 n^2 + 8 is assumed (Householder tridiagonalisation's normwise
# backward error is gamma~_{cn^2}, Higham Thm 19.4; in practice it is a few n u). By the resolvent integrals
# S^(1/2) = (2/pi) int_0^inf S (S + t^2)^-1 dt and X = int_0^inf e^-tS R e^-tS dt, the result moves under E by at most
# ||E||_2 ||R||_F / (4 l_min^(3/2)) (square root) or ||E||_2 ||R||_F / (2 l_min^2) (Sylvester), and under Q~ - Q^ by
# at most 4 p u ||R||_F max 1/D; l_min is taken as l_min - p u ||S||_2 (a perturbed matrix's smallest eigenvalue; the
# rules refuse l_min <= 2 p u ||S||_2, which PyTorch's eigensolver may return as zero or negative, where its backward
# divides by zero). That sum, ||R||_F taken as the Frobenius norm of R's magnitudes, divided by the run's rounding count
# n, is added to every element's magnitudes: the bound's factor gamma_n(u) >= n u turns it back into the absolute error
# it allows. Normwise, so a matrix's elements of very different sizes get a generous bound for the small ones, and an
# ill-conditioned matrix (large ||S|| / l_min) a wide one: honest, but too wide to catch much in float32 beyond a
# condition number of about 1e3 (polar: its Sylvester term grows with ||H|| / l_min^2).

_EIG_P = (4, 8)  # p(n) = 4 n^2 + 8 (NOTE [recomputed eigendecomposition])


def _spd_eigh(s, dtype, what):
    """(l, Q, p) of the lower triangle of a saved symmetric matrix (values; Mags' values), refusing one that is not
    positive definite to the precision of `dtype` (NOTE [recomputed eigendecomposition])."""
    v = s.v if isinstance(s, Mag) else np.asarray(s, dtype=np.float64)  # (complex inputs: refused by the driver)
    if not np.all(np.isfinite(v)):
        raise Unsupported(f"{what} of a matrix with a NaN or an infinity")
    n = v.shape[-1]
    lam, q = np.linalg.eigh(np.tril(v) + _mT(np.tril(v, -1)))
    p = _EIG_P[0] * n * n + _EIG_P[1]
    if lam.size and np.any(lam[..., 0] <= 2 * p * unit_roundoff(dtype) * np.abs(lam).max(axis=-1)):
        raise Unsupported(f"{what} of a matrix that is singular or not positive definite to {dtype} precision "
                          f"(smallest eigenvalue {float(lam[..., 0].min()):.3g}): PyTorch's eigendecomposition may "
                          "return it as zero or negative, where its backward divides by zero")
    return lam, q, p


def _spectral(q, d, r):  # Q ((Q^T R Q) / D) Q^T
    return q @ ((_mT(q) @ (r @ q)) / d) @ _mT(q)


def _divisors(f_lam):  # D_ij = f(l_i) + f(l_j), on magnitudes with its own rounding (f_lam: a Mag, or values)
    return f_lam[..., :, None] + f_lam[..., None, :]


def _fro(x):
    """The Frobenius norm of each matrix of a batch of magnitudes, as a 1 x 1 matrix: an upper bound of ||R||_F for
    every R within them (|R| <= x.m elementwise), homogeneous and subadditive in them like the rule's other results."""
    return np.sqrt(np.sum(np.square(x.m), axis=(-2, -1), keepdims=True))


def _perturbed_range(lam, p, dtype):
    """(l_min - p u l_max, l_max) per matrix, 1 x 1: the smallest eigenvalue of any matrix within the eigensolver's
    backward error (_spd_eigh refused l_min <= 2 p u l_max, so it is at least half of l_min), and the largest."""
    hi = np.abs(lam).max(axis=-1)[..., None, None]
    return lam[..., 0, None, None] - p * unit_roundoff(dtype) * hi, hi


def _plus_uniform(x, extra):
    """Magnitudes x (a Mag) plus a nonnegative absolute allowance per matrix, divided by x's rounding count n: the
    bound multiplies magnitudes by gamma_n(u) >= n u (bounds.bound_of), which gives the allowance times u back."""
    x = Mag.of(x)
    return Mag(x.m + np.broadcast_to(extra / max(1, x.n), x.shape), None, x.c)


@rule("LinalgMatrixSqrthBackward0")
def _matrix_sqrth(c):
    """PyTorch's linalg_matrix_sqrth_differential: S = A's lower triangle made symmetric, S = Q diag(l) Q^T, the
    gradient Q ((Q^T sym(G) Q) / (sqrt(l_i) + sqrt(l_j))) Q^T, sym(G) = (G + G^T) / 2 (the square root's Frechet
    derivative at S is self-adjoint). S recomputed from the saved input (NOTE [recomputed eigendecomposition])."""
    a = c.s["self"]
    dtype = c.in_dtypes[0] if c.in_dtypes else "float64"
    if not np.size(a):  # no matrix, or 0 x 0 ones
        return (c.zeros(a.shape),)
    lam, q, p = _spd_eigh(a, dtype, "matrix_sqrth")
    mag = isinstance(c.g, Mag)
    root = np.sqrt(Mag.of(lam) if mag else lam)
    gs = 0.5 * (c.g + _mT(c.g))
    ga = _spectral(q, _divisors(root), gs)
    if not mag:
        return (ga,)
    lo, hi = _perturbed_range(lam, p, dtype)
    k = p * (hi / (4 * lo**1.5) + 4 / (2 * np.sqrt(lo)))
    return (_plus_uniform(ga, k * _fro(Mag.of(c.g))),)


@rule("LinalgPolarBackward0")
def _polar(c):
    """PyTorch's linalg_polar_backward, A = U H (m >= n, full column rank): outputs (U, H). With C = U^T gU,
    gA = (gU - U C) H^-1 + U X(C - C^T) + A X(gH + gH^T), X(R) the solution of H X + X H = R, from H's
    eigendecomposition (NOTE [recomputed eigendecomposition]); H^-1 by a solve (LU, as linalg.solve)."""
    a, h, u = c.s["A"], c.s["H"], c.s["U"]
    gu, gh = (list(c.gs) + [None, None])[:2]
    dtype = c.in_dtypes[0] if c.in_dtypes else "float64"
    if (gu is None and gh is None) or not np.size(h) or not np.size(a):  # (or no matrix, or no column)
        return (c.zeros(a.shape),)
    lam, q, p = _spd_eigh(h, dtype, "polar")
    mag = isinstance(gh if gu is None else gu, Mag)
    d = _divisors(Mag.of(lam) if mag else lam)
    ga, r_fro = None, None
    if gu is not None:
        cm = _mT(u) @ gu
        ga = _solve_right(gu - u @ cm, h) + u @ _spectral(q, d, cm - _mT(cm))
    if gh is not None:
        t = a @ _spectral(q, d, gh + _mT(gh))
        ga = t if ga is None else ga + t
    if not mag:
        return (ga,)
    uv, av = (x.v if isinstance(x, Mag) else np.asarray(x) for x in (u, a))
    lo, hi = _perturbed_range(lam, p, dtype)
    k = p * (hi / (2 * lo**2) + 4 / (2 * lo))  # the Sylvester solution's allowance per unit of ||R||_F
    if gu is not None:
        nu = np.linalg.norm(uv, ord=2, axis=(-2, -1))[..., None, None]
        r_fro = 2 * nu * nu * _fro(Mag.of(gu))  # ||U X(R)||: ||U|| (||R|| <= 2 ||U|| ||gU||)
    if gh is not None:
        na = np.linalg.norm(av, ord=2, axis=(-2, -1))[..., None, None]
        t = 2 * na * _fro(Mag.of(gh))  # ||A X(R)||: ||A|| (||R|| <= 2 ||gH||)
        r_fro = t if r_fro is None else r_fro + t
    return (_plus_uniform(ga, k * r_fro),)


def _syminvadj(x):  # X + X^H with the diagonal halved
    return x + _mT(x) - np.eye(x.shape[-1]) * x


@rule("LinalgQrBackward0")
def _qr(c):  # PyTorch's linalg_qr_backward (reduced or square complete mode)
    q, r = c.s["Q"], c.s["R"]
    gq, gr = (list(c.gs) + [None, None])[:2]
    m, n = q.shape[-2], r.shape[-1]
    if c.a["mode"] == "complete" and m > n:
        raise Unsupported("QR in complete mode of a tall matrix: not differentiable in PyTorch")
    mh = None if gr is None else gr @ _mT(r)
    if gq is not None:
        t = -(_mT(q) @ gq)
        mh = t if mh is None else mh + t
    if mh is None:
        return (c.zeros(c.in_shapes[0]),)
    if m >= n:
        b = q @ _syminvadj(np.triu(mh))
        if gq is not None:
            b = b + gq
        return (_solve_right(b, _tri(r, True), adjoint=True),)
    b = q @ np.tril(-mh + _mT(mh))
    res = _solve_right(b, _tri(r[..., :, :m], True), adjoint=True)
    res = np.concatenate([res, np.zeros(res.shape[:-1] + (n - m,))], axis=-1)
    return (res if gr is None else res + q @ gr,)


# ----------------------------------------------------------------------------- the matrix exponential
#
# NOTE [matrix_exp bound] PyTorch's backward of exp(A) is the top-right block of exp([[A^H, G], [0, A^H]]), the
# Frechet derivative L(A^H, G) (linalg_matrix_exp_differential). The mirror computes L itself, linear in G: A^H and G
# scaled by 2^-s (||A / 2^s||_1 <= 1/2), the Taylor series of exp and of its derivative to degree 18 (truncation below
# 2^-80 of the series' magnitudes), then s squarings P <- P P, L <- P L + L P. Its bound also covers PyTorch's own
# evaluation, which differs from the mirror's: exp of the 2n x 2n block matrix M by Bader, Blanes & Casas's optimised
# Taylor polynomials (degree 1 to 18, picked by ||M||_1, to which G's column sums count) and, above theta_18, scaling
# by 2^s, s = ceil(log2(||M||_1 / theta_18)), and s squarings. Run on magnitudes, such an evaluation gives
# p~(|M| / 2^s)^(2^s), p~ the polynomial with the absolute values of the scheme's coefficients: expanding PyTorch's
# degree-18 and degree-12 schemes so gives the coefficients c~_k k! of _ABS18 and _ABS12 (rounded up; its schemes of
# degree 8 and below: c~_k <= 1 / k!). The magnitudes run evaluates exactly that on |M| (it knows |G|, and PyTorch's
# scaling depends on it: a large G costs PyTorch accuracy through the extra squarings), for ||M||_1 taken 2^-10
# smaller and larger (PyTorch rounds it in its dtype; the larger of the two results). Rounding count: the degree-18
# scheme's products (dot length k = 2n) chain to at most 23 k + 24 roundings, each squaring doubles the count and adds
# k: 2^s (25 k + 24) (Mag's convention). Assumed, not proven componentwise: the approximants' truncation error (Bader
# et al. pick theta_m so that the backward error is below the unit roundoff, normwise) stays within that allowance.
# Complex matrices too (A^H: PyTorch's conjugate convention; the driver widens complex bounds). Being componentwise,
# the bound follows exp(|A|) rather than exp(A): for a matrix of mixed signs and large norm (|A|'s spectral radius
# well above A's largest real eigenvalue) it is honest but too wide to catch anything; the node's row shows it.

_ABS18 = (1.0001, 1.3039, 4.4897, 6.35, 2.5585, 1.7768, 2.5984, 1.609, 1.4554, 1.9731, 1.5768, 1.548, 1.9332, 1.4875,
          1.546, 1.9099, 1.0001, 1.0001, 1.0001)
_ABS12 = (1.0001, 1.0001, 1.804, 1.5549) + (1.0001,) * 9
_THETAS = {"float64": (0.04991228871115323, 0.2996158913811580, 1.090863719290036),  # theta_8, theta_12, theta_18
           "float32": (0.5800524627688768, 1.461661507209034, 3.010066362817634)}


def _expm_frechet(x, e, s, degree=18):
    """(exp(X), L(X, E)) by Taylor series of degree `degree` on X / 2^s, E / 2^s and s squarings (plain products:
    arrays or magnitudes). `s` is an int: one scaling for the whole batch."""
    f = 2.0 ** -s
    xs, es = x * f, e * f
    t = p = _eye_like(xs)
    d = lsum = None
    for k in range(1, degree + 1):
        d = (t @ es) / k if d is None else (d @ xs + t @ es) / k
        t = (t @ xs) / k
        p, lsum = p + t, d if lsum is None else lsum + d
    for _ in range(s):
        lsum, p = p @ lsum + lsum @ p, p @ p
    return p, lsum


def _scaling(norm, theta):  # PyTorch's s from a 1-norm (0 below theta_18, and for a non-finite one)
    return max(0, math.ceil(math.log2(norm / theta))) if theta < norm < math.inf else 0


def _torch_expm_mags(m, norm, thetas):
    """p~(M / 2^s)^(2^s) for a nonnegative block matrix M (NOTE [matrix_exp bound]), and s."""
    t8, t12, t18 = thetas
    coef = _ABS18 if norm > t12 else _ABS12 if norm > t8 else (1.0,) * 9
    s = _scaling(norm, t18)
    z = m * 2.0**-s
    p, power = np.eye(m.shape[-1]) * coef[0], np.eye(m.shape[-1])
    for k in range(1, len(coef)):
        power = power @ z
        p = p + power * (coef[k] / math.factorial(k))
    for _ in range(s):
        p = p @ p
    return p, s


@rule("LinalgMatrixExpBackward0")
def _matrix_exp(c):
    a = c.s["self"]
    x = _mH(a)
    ax = np.abs(np.asarray(x))
    s = _scaling(float(np.max(ax.sum(axis=-2), initial=0.0)), 0.5)
    if not isinstance(c.g, Mag):
        return (_expm_frechet(x, c.g, s)[1],)
    mine = _expm_frechet(Mag.of(x), c.g, s)[1]  # the mirror's own magnitudes and rounding count
    n = x.shape[-1]
    ag = np.broadcast_to(c.g.m, x.shape)
    thetas = _THETAS["float32" if c.in_dtypes and c.in_dtypes[0] in ("float32", "complex64") else "float64"]
    out, top = np.zeros(x.shape), 0
    for idx in np.ndindex(*x.shape[:-2]):  # PyTorch's (NOTE [matrix_exp bound]), matrix by matrix
        m = np.block([[ax[idx], ag[idx]], [np.zeros((n, n)), ax[idx]]])
        norm = float(np.max(m.sum(axis=0)))
        for f in (1 - 2.0**-10, 1 + 2.0**-10):
            p, s_pt = _torch_expm_mags(m, norm * f, thetas)
            out[idx] = np.maximum(out[idx], p[:n, n:])
            top = max(top, s_pt)
    return (Mag(np.maximum(mine.m, out), None, max(mine.n, 2**top * (25 * 2 * n + 24))),)


# ----------------------------------------------------------------------------- eigenvalues of a general matrix
#
# Complex throughout (eigenvalues and eigenvectors of a real matrix are complex too), in PyTorch's conjugate
# convention: the rule is written with V^H and conj(L), so it is right for complex tensors (complex_ok). Its bound is
# the solves' and divisions' above: the solve with V^H carries the eigenvector matrix's conditioning (Mag's Skeel
# bound), 1 / E the eigenvalue gaps' cancellation; near-equal eigenvalues give a large bound (and PyTorch a large
# gradient), equal ones inf, as PyTorch's.

@rule("LinalgEigBackward0")
def _eig(c):
    """PyTorch's linalg_eig_backward, A = V diag(L) V^-1 with unit eigenvector columns (complex; a real A keeps the
    real part): gA = V^-H (Vh gV projected, / E with E_ij = conj(L_j - L_i), its diagonal gL) V^H, the projection
    Vh gV - V^H V diag(Re diag(Vh gV)) removing the eigenvectors' norm direction (their phase is the loss's to ignore:
    PyTorch refuses a loss that depends on it). Eigenvalues only (eigvals): gA = V^-H diag(gL) V^H."""
    lam, v = c.s["eigenvalues"], c.s["eigenvectors"]
    gl, gv = (list(c.gs) + [None, None])[:2]
    vh = _mH(v)
    if gv is None:
        gl = c.zeros(lam.shape) if gl is None else gl
        return (_lsolve(vh, gl[..., :, None] * vh),)
    vhgv = vh @ gv
    n = lam.shape[-1]
    eye = np.eye(n, dtype=bool)
    vhgv = vhgv - vh @ (v * np.real(np.diagonal(vhgv, axis1=-2, axis2=-1))[..., None, :])
    lc = np.conj(lam)
    e = np.where(eye, 1.0, lc[..., None, :] - lc[..., :, None])
    ga = vhgv / e
    if gl is not None:
        ga = np.where(eye, 0.0, ga) + gl[..., :, None] * np.eye(n)
    return (_lsolve(vh, ga @ vh),)


complex_ok("LinalgEigBackward0", "LinalgMatrixExpBackward0")


# ----------------------------------------------------------------------------- products of Householder reflectors
#
# NOTE [reflector bound] householder_product(V, tau) = H_0 ... H_{k-1} restricted to its first n columns, ormqr
# applies H_0 ... H_{k-1} (or its adjoint) to a matrix; H_i = I - tau_i v_i v_i^H, v_i column i of V below the
# diagonal with a unit diagonal entry. The mirror's gradients come from prefix and suffix products of the reflectors
# (no inverses): with Q = P_i H_i S_i, W_i = P_i^H G_Q S_i^H, dL/dtau_i = -v_i^H W_i v_i and dL/dv_i = -conj(tau_i)
# W_i v_i - tau_i W_i^H v_i (rows below the diagonal). PyTorch (householder_product_backward) gets the same numbers
# another way: K = Q G_Q^H, then K <- H_{i+1}^-1 K H_i reflector by reflector, with H_i^-1 = I - sigma_i v_i v_i^H,
# sigma_i = tau_i / (tau_i ||v_i||^2 - 1): for reflectors that are not unitary (tau from anywhere but geqrf) that
# recursion's intermediate magnitudes can be far larger than the mirror's. The run on magnitudes therefore evaluates
# both, the mirror's products and PyTorch's recursion (sigma's cancellation included), and bounds with the larger
# magnitudes and rounding count. A singular reflector (tau_i ||v_i||^2 = 1 exactly: PyTorch divides by zero) is
# unmirrored with that reason. The reflectors are applied as rank-one updates (the suffix products kept: k m x cols
# elements, refused above _REFLECTOR_LIMIT). Componentwise magnitudes of a long product of reflectors grow
# geometrically even when they are unitary (|H| has norm up to about 1 + 2m), so for many reflectors (tens, in float32)
# the bound is honest but too wide to catch anything: the node's row shows it.

def _reflectors(a, tau):
    """The reflectors' vectors: the first k columns of V below the diagonal with a unit diagonal, (..., m, k)."""
    m, n = a.shape[-2:]
    return (np.tril(a, -1) + np.eye(m, n))[..., :, :tau.shape[-1]]


def _reflect(mat, v, t, left=True):  # (I - t v v^H) mat, or mat (I - t v v^H): a rank-one update
    return mat - (t * v) @ (_mH(v) @ mat) if left else mat - (mat @ (t * v)) @ _mH(v)


_REFLECTOR_LIMIT = 1 << 26  # elements of the suffix products the mirror keeps (k of m x cols)


def _reflector_grads(gq, vk, tau, cols):
    """(dL/dV (first k columns, unmasked), dL/dtau) for Q = H_0 ... H_{k-1} I[:, :cols] and dL/dQ = gq."""
    m, k = vk.shape[-2], vk.shape[-1]
    if k * m * cols > _REFLECTOR_LIMIT:
        raise Unsupported(f"{k} Householder reflectors of length {m}: too large for the mirror's suffix products")
    batch = np.broadcast_shapes(vk.shape[:-2], np.shape(tau)[:-1])
    suffix = [None] * (k + 1)
    suffix[k] = np.broadcast_to(np.eye(m, cols), batch + (m, cols))
    for i in range(k - 1, -1, -1):
        suffix[i] = _reflect(suffix[i + 1], vk[..., :, i:i + 1], tau[..., i:i + 1, None])
    prefix = np.broadcast_to(np.eye(m), batch + (m, m))
    gv, gt = [], []
    for i in range(k):
        w = _mH(prefix) @ (gq @ _mH(suffix[i + 1]))
        v, t = vk[..., :, i:i + 1], tau[..., i:i + 1, None]
        gv.append(-(np.conj(t) * (w @ v)) - t * (_mH(w) @ v))
        gt.append(-(_mH(v) @ (w @ v))[..., 0, 0])
        prefix = _reflect(prefix, v, t, left=False)
    return np.concatenate(gv, axis=-1), np.stack(gt, axis=-1)


def _torch_reflector_grads(k_mat, vk, tau, sigma, flip=False):
    """PyTorch's recursion (NOTE [reflector bound]), for the run on magnitudes: K <- H_0^-1 K, then per reflector
    its gradients from K and K <- H_{i+1}^-1 K H_i (`flip`: the reflectors from the last, sides swapped)."""
    k = vk.shape[-1]

    def apply(i, t, mat, left):
        return _reflect(mat, vk[..., :, i:i + 1], t[..., i:i + 1, None], left)
    order = list(range(k))[::-1] if flip else list(range(k))
    k_mat = apply(order[0], sigma, k_mat, not flip)
    gv, gt = [None] * k, [None] * k
    for j, i in enumerate(order):
        v, t = vk[..., :, i:i + 1], tau[..., i:i + 1, None]
        gv[i] = -(np.conj(t) * (_mH(k_mat) @ v)) - t * (k_mat @ v)
        gt[i] = -np.conj(_mH(v) @ (k_mat @ v))[..., 0, 0]
        if j + 1 < k:
            k_mat = apply(i, tau, apply(order[j + 1], sigma, k_mat, not flip), flip)
    return np.concatenate(gv, axis=-1), np.stack(gt, axis=-1)


def _widest(a, b):
    """The larger magnitudes and rounding count of two bounds for one result (bounds.Mag)."""
    a, b = Mag.of(a), Mag.of(b)
    return Mag(np.maximum(a.m, b.m), None, (max(a.n, b.n), max(a.r, b.r)))


def _sigma(vk, tau):
    nrm = np.sum(vk * np.conj(vk), axis=-2)
    den = tau * nrm - 1.0
    if np.any(np.asarray(den) == 0):
        raise Unsupported("a singular Householder reflector (tau ||v||^2 = 1): PyTorch's backward inverts it")
    return tau / den


def _pad_cols(gv, n):  # dL/dV's first k columns to all n, strictly below the diagonal
    k = gv.shape[-1]
    if k < n:
        gv = np.concatenate([gv, np.zeros(gv.shape[:-1] + (n - k,))], axis=-1)
    return np.tril(gv, -1)


@rule("LinalgHouseholderProductBackward0")
def _householder_product(c):  # slots (input, tau)
    a, tau = c.s["input"], c.s["tau"]
    n = a.shape[-1]
    if not tau.shape[-1] or not a.size:  # no reflectors: Q does not depend on them
        return (c.zeros(a.shape), c.zeros(tau.shape))
    vk = _reflectors(a, tau)
    sigma = _sigma(vk, tau)
    gv, gt = _reflector_grads(c.g, vk, tau, n)
    if isinstance(c.g, Mag):
        tv, tt = _torch_reflector_grads(c.s["result"] @ _mH(c.g), vk, tau, sigma)
        gv, gt = _widest(gv, tv), _widest(gt, tt)
    return (_pad_cols(gv, n), gt)


complex_ok("LinalgHouseholderProductBackward0")


@rule("OrmqrBackward0")
def _ormqr(c):
    """ormqr(V, tau, C, left, transpose) = op(Q) C (left) or C op(Q), Q = H_0 ... H_{k-1} (m x m), op(Q) = Q^H when
    transposing: slots (V, tau, C). C's gradient is op(Q)^H G (or G op(Q)^H), Q formed from the reflectors; V's and
    tau's as householder_product's with dL/dQ = G C^H, C G^H, C^H G or G^H C (NOTE [reflector bound]). PyTorch applies
    the reflectors to G with LAPACK's ormqr, one by one for fewer than 32 of them (the products' magnitudes); a blocked
    application of more (compact WY form) is not what the bound follows: unmirrored."""
    a, tau, other, result = c.s["self"], c.s["input2"], c.s["input3"], c.s["result"]
    left, trans = c.a["left"], c.a["transpose"]
    g, n = c.g, a.shape[-1]
    vk = _reflectors(a, tau)
    k, m = vk.shape[-1], vk.shape[-2]
    gc = None
    if c.in_shapes[2] is not None:
        if k >= 32:
            raise Unsupported("ormqr with 32 or more reflectors: LAPACK applies them blockwise (compact WY form), "
                              "whose rounding the bound does not follow")
        q = np.broadcast_to(np.eye(m), np.broadcast_shapes(vk.shape[:-2], tau.shape[:-1]) + (m, m))
        for i in range(k):
            q = _reflect(q, vk[..., :, i:i + 1], tau[..., i:i + 1, None], left=False)
        # gC = op(Q)^H G (left) or G op(Q)^H (right)
        gc = (q if trans else _mH(q)) @ g if left else g @ (q if trans else _mH(q))
    if c.in_shapes[0] is None and c.in_shapes[1] is None:
        return (None, None, gc)
    if not k or not a.size:  # no reflectors: the result does not depend on them
        return (c.zeros(a.shape), c.zeros(tau.shape), gc)
    sigma = _sigma(vk, tau)
    gq = (g @ _mH(other) if not trans else other @ _mH(g)) if left else \
        (_mH(other) @ g if not trans else _mH(g) @ other)
    gv, gt = _reflector_grads(gq, vk, tau, m)
    if isinstance(c.g, Mag):  # PyTorch's recursion, as ormqr_backward calls it
        if left != trans:
            kmat = result @ _mH(g) if left else _mH(result) @ g
        else:
            kmat = _mH(g) @ result if not trans else g @ _mH(result)
        tv, tt = _torch_reflector_grads(kmat, vk, tau, sigma, flip=left == trans)
        gv, gt = _widest(gv, tv), _widest(gt, tt)
    return (_pad_cols(gv, n), gt, gc)


complex_ok("OrmqrBackward0")
