"""Rules for ops that torch 2.14 added: linalg.matrix_sqrth (LinalgMatrixSqrthBackward0) and linalg.polar
(LinalgPolarBackward0).

On any torch the rules are called directly on numpy inputs (float64) and compared with references of their own: finite
differences of a numpy square root / polar decomposition, and closed forms (the Sylvester equation the square root's
derivative solves, a diagonal matrix); their bound is checked against a float32 evaluation of PyTorch's formula in
numpy, and singular or indefinite inputs leave them unmirrored with the reason. Where torch has the ops (2.14), the
mirror is compared with PyTorch in float64 and float32 on several shapes and batches, every such node is checked (not
unmirrored), and a gradient or rule off by a relative 1e-6 in float64 is caught."""

import numpy as np
import pytest
import torch
from cases import a_hooked_input_is_caught, a_rule_off_is_a_mismatch_at_its_node, checked

import autogradlens as lens
from autogradlens.mirror import table
from autogradlens.mirror.bounds import Mag, MagCtx, local_bound

HAS_214 = hasattr(torch.linalg, "matrix_sqrth") and hasattr(torch.linalg, "polar")
SQRTH, POLAR = "LinalgMatrixSqrthBackward0", "LinalgPolarBackward0"


# ----------------------------------------------------------------------------- numpy references (any torch)

def _spd_np(rng, n, cond=10.0, batch=()):
    q, _ = np.linalg.qr(rng.standard_normal(batch + (n, n)))
    lam = np.logspace(0, np.log10(cond), n)
    return (q * lam[..., None, :]) @ np.swapaxes(q, -1, -2)


def _sqrtm(a):  # the principal square root of a symmetric positive-definite matrix (its lower triangle)
    s = np.tril(a) + np.swapaxes(np.tril(a, -1), -1, -2)
    lam, q = np.linalg.eigh(s)
    return (q * np.sqrt(lam)[..., None, :]) @ np.swapaxes(q, -1, -2)


def _polar_np(a):  # (U, H) from the SVD, as PyTorch's CPU kernel computes them
    p, s, vh = np.linalg.svd(a, full_matrices=False)
    return p @ vh, (np.swapaxes(vh, -1, -2) * s[..., None, :]) @ vh


def _sqrth_rule(a, g, dtype="float64"):
    return table.RULES[SQRTH](table.Ctx(SQRTH, [g], {"self": a}, {}, [a.shape], [a.shape], False, (dtype,)))[0]


def _polar_rule(a, gu, gh, dtype="float64"):
    u, h = _polar_np(a)
    c = table.Ctx(POLAR, [gu, gh], {"A": a, "U": u, "H": h}, {}, [a.shape], [u.shape, h.shape], False, (dtype,))
    return table.RULES[POLAR](c)[0]


def _directional(f, a, e, eps=1e-6):  # d/dt f(a + t e) at 0, central differences (fourth order)
    return (8 * (f(a + eps * e) - f(a - eps * e)) - (f(a + 2 * eps * e) - f(a - 2 * eps * e))) / (12 * eps)


@pytest.mark.parametrize("n,batch", [(1, ()), (2, ()), (3, ()), (4, (2,)), (5, (2, 1))])
def test_sqrth_rule_is_the_derivative_of_the_square_root(n, batch):
    """<rule(G), E> = d/dt <G, sqrt(A + t E)> for symmetric directions E (the gradient is symmetric, as PyTorch's:
    only A's lower triangle is read, and a symmetric perturbation moves it consistently)."""
    rng = np.random.default_rng(n)
    a = _spd_np(rng, n, 20.0, batch)
    g = rng.standard_normal(a.shape)
    got = _sqrth_rule(a, g)
    np.testing.assert_allclose(got, np.swapaxes(got, -1, -2), rtol=0, atol=1e-14)
    for _ in range(3):
        e = rng.standard_normal(a.shape)
        e = e + np.swapaxes(e, -1, -2)
        want = _directional(lambda x: np.sum(g * _sqrtm(x), axis=(-2, -1)), a, e)
        np.testing.assert_allclose(np.sum(got * e, axis=(-2, -1)), want, rtol=1e-7, atol=1e-9)


def test_sqrth_rule_solves_the_sylvester_equation_of_the_square_root():
    """X = rule(G) satisfies S X + X S = (G + G^T) / 2, S = sqrt(A); for a diagonal A, X_ij = sym(G)_ij /
    (sqrt(a_i) + sqrt(a_j))."""
    rng = np.random.default_rng(7)
    a, g = _spd_np(rng, 4, 100.0), rng.standard_normal((4, 4))
    x, s = _sqrth_rule(a, g), _sqrtm(a)
    np.testing.assert_allclose(s @ x + x @ s, (g + g.T) / 2, rtol=0, atol=1e-12)
    d = np.array([0.25, 1.0, 4.0, 9.0])
    want = (g + g.T) / 2 / (np.sqrt(d)[:, None] + np.sqrt(d)[None, :])
    np.testing.assert_allclose(_sqrth_rule(np.diag(d), g), want, rtol=1e-14, atol=1e-15)


def test_sqrth_rule_reads_the_lower_triangle_only():
    rng = np.random.default_rng(3)
    a, g = _spd_np(rng, 3), rng.standard_normal((3, 3))
    junk = a + np.triu(rng.standard_normal((3, 3)), 1) * 10
    np.testing.assert_array_equal(_sqrth_rule(junk, g), _sqrth_rule(a, g))


@pytest.mark.parametrize("shape,which", [((3, 3), "both"), ((5, 3), "both"), ((4, 2), "U"), ((4, 4), "H"),
                                         ((2, 4, 3), "both"), ((1, 1), "both")])
def test_polar_rule_is_the_derivative_of_the_polar_decomposition(shape, which):
    rng = np.random.default_rng(len(shape) + shape[-1])
    a = rng.standard_normal(shape) + 2 * np.eye(*shape[-2:])
    gu = rng.standard_normal(shape) if which != "H" else None
    gh = rng.standard_normal(shape[:-2] + (shape[-1], shape[-1])) if which != "U" else None
    got = _polar_rule(a, gu, gh)

    def loss(x):
        u, h = _polar_np(x)
        out = 0 if gu is None else np.sum(gu * u, axis=(-2, -1))
        return out + (0 if gh is None else np.sum(gh * h, axis=(-2, -1)))
    for _ in range(3):
        e = rng.standard_normal(shape)
        np.testing.assert_allclose(np.sum(got * e, axis=(-2, -1)), _directional(loss, a, e), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("node", [SQRTH, POLAR])
def test_rules_are_linear_in_the_incoming_gradient(node):
    rng = np.random.default_rng(11)
    if node == SQRTH:
        a = _spd_np(rng, 4, 5.0, (2,))
        g, h = rng.standard_normal(a.shape), rng.standard_normal(a.shape)
        np.testing.assert_allclose(_sqrth_rule(a, 2 * g + 3 * h), 2 * _sqrth_rule(a, g) + 3 * _sqrth_rule(a, h),
                                   rtol=1e-12, atol=1e-12)
        return
    a = rng.standard_normal((2, 5, 3)) + 2 * np.eye(5, 3)
    gu, hu = rng.standard_normal(a.shape), rng.standard_normal(a.shape)
    gh, hh = rng.standard_normal((2, 3, 3)), rng.standard_normal((2, 3, 3))
    np.testing.assert_allclose(_polar_rule(a, 2 * gu + 3 * hu, 2 * gh + 3 * hh),
                               2 * _polar_rule(a, gu, gh) + 3 * _polar_rule(a, hu, hh), rtol=1e-12, atol=1e-12)


def _f32(x):
    return np.asarray(x, dtype=np.float32)


def _sqrth_in_float32(a, g):  # PyTorch's formula evaluated in float32 (its eigendecomposition in float32, LAPACK)
    lam, q = np.linalg.eigh(_f32(a))
    s = np.sqrt(np.maximum(lam, 0))
    gs = _f32(0.5) * (_f32(g) + _f32(g).T)
    return (q @ ((q.T @ gs @ q) / (s[:, None] + s[None, :])) @ q.T).astype(np.float64)


def _polar_in_float32(a, u, h, gu, gh):
    a, u, h, gu, gh = map(_f32, (a, u, h, gu, gh))
    lam, q = np.linalg.eigh(h)

    def sylv(r):
        return q @ ((q.T @ r @ q) / (lam[:, None] + lam[None, :])) @ q.T
    c = u.T @ gu
    out = np.linalg.solve(h, (gu - u @ c).T).T + u @ sylv(c - c.T) + a @ sylv(gh + gh.T)
    return out.astype(np.float64)


def _bound(node, gs, saved, shapes, out_shapes, dtype):
    c = MagCtx(node, [None if g is None else Mag.grad(g) for g in gs], {k: Mag.of(v) for k, v in saved.items()}, {},
               shapes, out_shapes, False, (dtype,))
    return local_bound(table.RULES[node](c)[0], dtype)


@pytest.mark.parametrize("n,cond", [(2, 1.0), (3, 10.0), (4, 100.0), (6, 1000.0)])
def test_the_bound_covers_a_float32_evaluation_and_is_not_vacuous(n, cond):
    """The rules' bounds on magnitudes (float32) hold against PyTorch's formula computed in float32 by numpy (its
    eigendecomposition recomputed in float32), and stay well below the gradient's size for a moderate condition."""
    rng = np.random.default_rng(n)
    for seed in range(4):
        a = _f32(_spd_np(rng, n, cond)).astype(np.float64)
        g = _f32(rng.standard_normal((n, n))).astype(np.float64)
        exact = _sqrth_rule(a, g, "float32")
        b = _bound(SQRTH, [g], {"self": a}, [a.shape], [a.shape], "float32")
        assert np.all(np.abs(_sqrth_in_float32(a, g) - exact) <= b)
        assert b.max() < 1e-2 * cond * np.abs(exact).max()

        x = _f32(rng.standard_normal((n + 1, n)) + 3 * np.sqrt(cond) * np.eye(n + 1, n)).astype(np.float64)
        u, h = (_f32(t).astype(np.float64) for t in _polar_np(x))
        gu, gh = (_f32(rng.standard_normal(s)).astype(np.float64) for s in (u.shape, h.shape))
        c = table.Ctx(POLAR, [gu, gh], {"A": x, "U": u, "H": h}, {}, [x.shape], [u.shape, h.shape], False,
                      ("float32",))
        exact = table.RULES[POLAR](c)[0]
        b = _bound(POLAR, [gu, gh], {"A": x, "U": u, "H": h}, [x.shape], [u.shape, h.shape], "float32")
        assert np.all(np.abs(_polar_in_float32(x, u, h, gu, gh) - exact) <= b)
        assert b.max() < 1e-2 * np.abs(exact).max()


def test_polar_bound_is_the_same_for_an_absent_and_a_zero_gradient_of_U():
    """The eigensolver allowance (NOTE [recomputed eigendecomposition]) is added whichever outputs have gradients: an
    absent gU (only H used) bounds like a zero one, within rounding-count differences."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 3)) @ np.diag([1.0, 0.1, 0.02])
    u, h = _polar_np(x)
    gh = rng.standard_normal((3, 3))
    saved, shapes = {"A": x, "U": u, "H": h}, ([x.shape], [u.shape, h.shape])
    absent = _bound(POLAR, [None, gh], saved, *shapes, "float32")
    zero = _bound(POLAR, [np.zeros(u.shape), gh], saved, *shapes, "float32")
    assert 0.2 < absent.max() / zero.max() < 5


def test_a_singular_or_indefinite_matrix_is_unmirrored_with_the_reason():
    rng = np.random.default_rng(5)
    g = rng.standard_normal((3, 3))
    for a in (np.diag([2.0, 1.0, -1.0]), np.diag([1.0, 1.0, 0.0]), np.diag([1.0, 1.0, 1e-20])):
        with pytest.raises(table.Unsupported, match="not positive definite"):
            _sqrth_rule(a, g)
    with pytest.raises(table.Unsupported, match="float32"):  # fine in float64, indistinguishable from 0 in float32
        _sqrth_rule(np.diag([1.0, 1.0, 1e-9]), g, "float32")
    _sqrth_rule(np.diag([1.0, 1.0, 1e-9]), g)
    x = np.array([[1.0, 2.0], [2.0, 4.0], [0.0, 0.0]])  # rank 1
    with pytest.raises(table.Unsupported, match="polar of a matrix that is singular"):
        _polar_rule(x, rng.standard_normal((3, 2)), None)
    with pytest.raises(table.Unsupported, match="NaN"):
        _sqrth_rule(np.full((2, 2), np.nan), g[:2, :2])


def test_empty_matrices_get_empty_gradients():
    assert _sqrth_rule(np.zeros((2, 0, 0)), np.zeros((2, 0, 0))).shape == (2, 0, 0)
    assert _polar_rule(np.zeros((3, 0)), np.zeros((3, 0)), np.zeros((0, 0))).shape == (3, 0)


# ----------------------------------------------------------------------------- against PyTorch (torch >= 2.14)


def _sqrth_loss(shape, cond, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.from_numpy(_spd_np(np.random.default_rng(seed), shape[-1], cond, tuple(shape[:-2]))).to(dtype)
    a.requires_grad_()
    w = torch.randn(*shape, dtype=dtype, generator=g)
    return {"a": a}, (torch.linalg.matrix_sqrth(a) * w).sum()


def _polar_loss(shape, dtype, which="both", seed=0):
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(*shape, dtype=dtype, generator=g) + 2 * torch.eye(*shape[-2:], dtype=dtype)).requires_grad_()
    u, h = torch.linalg.polar(a)
    loss = 0
    if which != "H":
        loss = loss + (u * torch.randn(u.shape, dtype=dtype, generator=g)).sum()
    if which != "U":
        loss = loss + (h * torch.randn(h.shape, dtype=dtype, generator=g)).sum()
    return {"a": a}, loss


if HAS_214:
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
    @pytest.mark.parametrize("shape,cond", [((1, 1), 1.0), ((2, 2), 3.0), ((3, 3), 10.0), ((2, 4, 4), 50.0),
                                            ((2, 1, 5, 5), 100.0)])
    def test_matrix_sqrth_agrees_with_pytorch(shape, cond, dtype):
        params, loss = _sqrth_loss(shape, cond, dtype)
        checked(lens.mirror(loss, params=params, mode="tensor"), SQRTH, notes_ok=True)

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
    @pytest.mark.parametrize("shape,which", [((3, 3), "both"), ((5, 3), "both"), ((4, 2), "U"), ((4, 4), "H"),
                                             ((2, 4, 3), "both"), ((2, 1, 3, 3), "U"), ((1, 1), "both")])
    def test_polar_agrees_with_pytorch(shape, which, dtype):
        params, loss = _polar_loss(shape, dtype, which)
        checked(lens.mirror(loss, params=params, mode="tensor"), POLAR, notes_ok=True)

    def test_both_agree_with_pytorch_in_scalar_mode():
        params, loss = _sqrth_loss((3, 3), 10.0, torch.float64, seed=2)
        rep = lens.mirror(loss, params=params, mode="scalar")
        assert rep.mode == "scalar"
        checked(rep, SQRTH, notes_ok=True)
        params, loss = _polar_loss((4, 3), torch.float64, seed=2)
        checked(lens.mirror(loss, params=params, mode="scalar"), POLAR, notes_ok=True)

    @pytest.mark.parametrize("build", [lambda: _sqrth_loss((3, 3), 10.0, torch.float64, seed=3),
                                       lambda: _polar_loss((4, 3), torch.float64, seed=3),
                                       lambda: _polar_loss((3, 3), torch.float64, "H", seed=3)],
                             ids=["matrix_sqrth", "polar", "polar_H"])
    def test_a_gradient_off_by_one_part_in_a_million_is_caught(build):
        a_hooked_input_is_caught(*build())

    @pytest.mark.parametrize("node,build", [(SQRTH, lambda: _sqrth_loss((2, 3, 3), 10.0, torch.float64, seed=4)),
                                            (POLAR, lambda: _polar_loss((5, 3), torch.float64, seed=4)),
                                            (POLAR, lambda: _polar_loss((3, 3), torch.float64, "U", seed=4))])
    def test_a_rule_off_by_one_part_in_a_million_is_a_mismatch_at_its_node(node, build, monkeypatch):
        a_rule_off_is_a_mismatch_at_its_node(node, *build(), monkeypatch)

    def test_a_matrix_that_is_not_positive_definite_in_float32_is_unmirrored_with_the_reason():
        a = torch.diag(torch.tensor([1.0, 1.0, 1e-6])).requires_grad_()
        rep = lens.mirror((torch.linalg.matrix_sqrth(a) * torch.arange(9.0).reshape(3, 3)).sum(), params={"a": a},
                          mode="tensor")
        row = next(r for r in rep.rows if r["type"] == SQRTH)
        assert row["status"] == "unmirrored" and "not positive definite to float32" in row["note"]
