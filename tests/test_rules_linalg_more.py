"""Rules of the linear-algebra family beyond the basic ones (matrix_exp, linalg.eig, householder_product, ormqr): the
mirror agrees with PyTorch in float64 and float32 (and complex) on several shapes and batches, every such node is
checked (not unmirrored), and a gradient or rule off by a relative 1e-6 in float64 is caught."""

import numpy as np
import pytest
import torch
from cases import a_hooked_input_is_caught, a_rule_off_is_a_mismatch_at_its_node, checked

import autogradlens as lens
from autogradlens.mirror import table


def _matrix_exp_loss(shape, scale, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(*shape, dtype=dtype, generator=g) * scale).requires_grad_()
    w = torch.randn(*shape, dtype=dtype, generator=g)
    return a, (torch.linalg.matrix_exp(a) * w).real.sum()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.complex128, torch.complex64],
                         ids=["f64", "f32", "c128", "c64"])
@pytest.mark.parametrize("shape,scale", [((2, 2), 0.01), ((3, 3), 0.3), ((4, 4), 1.0), ((2, 5, 5), 2.0),
                                         ((2, 1, 3, 3), 4.0), ((6, 6), 0.5)])
def test_matrix_exp_agrees_with_pytorch(shape, scale, dtype):
    a, loss = _matrix_exp_loss(shape, scale, dtype)
    checked(lens.mirror(loss, params={"a": a}, mode="tensor"), "LinalgMatrixExpBackward0", notes_ok=True)


def test_matrix_exp_agrees_with_pytorch_in_scalar_mode():
    a, loss = _matrix_exp_loss((3, 3), 0.8, torch.float64, seed=5)
    rep = lens.mirror(loss, params={"a": a}, mode="scalar")
    assert rep.mode == "scalar"
    checked(rep, "LinalgMatrixExpBackward0", notes_ok=True)


def test_matrix_exp_with_a_large_incoming_gradient_is_checked():
    """PyTorch scales by 2^-s from the block matrix's norm, G included: a large G means more squarings."""
    g = torch.Generator().manual_seed(1)
    a = (torch.randn(4, 4, dtype=torch.float64, generator=g) * 0.5).requires_grad_()
    loss = (torch.linalg.matrix_exp(a) * torch.randn(4, 4, dtype=torch.float64, generator=g) * 1e4).sum()
    checked(lens.mirror(loss, params={"a": a}, mode="tensor"), "LinalgMatrixExpBackward0", notes_ok=True)


def test_matrix_exp_rule_is_linear_in_the_incoming_gradient():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 3, 3))
    g, h = rng.standard_normal((2, 3, 3)), rng.standard_normal((2, 3, 3))
    rule = table.RULES["LinalgMatrixExpBackward0"]

    def run(x):
        return rule(table.Ctx("LinalgMatrixExpBackward0", [x], {"self": a}, {}, [a.shape], [a.shape], False,
                              ("float64",)))[0]
    np.testing.assert_allclose(run(2 * g + 3 * h), 2 * run(g) + 3 * run(h), rtol=1e-12, atol=1e-12)


def test_matrix_exp_rule_is_the_frechet_derivative():
    """Against the exponential of the block matrix, computed independently (scipy-free: a long Taylor series)."""
    rng = np.random.default_rng(2)
    a, g = rng.standard_normal((3, 3)) * 0.7, rng.standard_normal((3, 3))
    m = np.block([[a.T, g], [np.zeros((3, 3)), a.T]])
    e, t = np.eye(6), np.eye(6)
    for k in range(1, 60):
        t = t @ m / k
        e = e + t
    got = table.RULES["LinalgMatrixExpBackward0"](
        table.Ctx("LinalgMatrixExpBackward0", [g], {"self": a}, {}, [a.shape], [a.shape], False, ("float64",)))[0]
    np.testing.assert_allclose(got, e[:3, 3:], rtol=1e-12, atol=1e-13)


def _eig_loss(shape, dtype, which, seed=0):
    """A real loss of linalg.eig's eigenvalues and/or eigenvectors (phase-invariant in the eigenvectors: |V| and the
    products of two rows' entries, one conjugated, column by column)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*shape, dtype=dtype, generator=g).requires_grad_()
    if which == "eigvals":
        lam = torch.linalg.eigvals(a)
        w = torch.randn(lam.shape, dtype=lam.dtype, generator=g)
        return a, (lam * w).real.sum() + lam.abs().sum()
    lam, v = torch.linalg.eig(a)
    rw = torch.randn(v.shape, dtype=lam.real.dtype, generator=g)
    cross = v[..., 0, :] * v[..., 1, :].conj()
    vecs = (v.abs() * rw).sum() + (cross.real * rw[..., 0, :]).sum() + (cross.imag * rw[..., 1, :]).sum()
    return a, vecs if which == "vectors" else vecs + (lam * lam).real.sum()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.complex128],
                         ids=["f64", "f32", "c128"])
@pytest.mark.parametrize("which", ["eigvals", "vectors", "both"])
@pytest.mark.parametrize("shape", [(2, 2), (4, 4), (3, 5, 5), (2, 1, 3, 3)])
def test_eig_agrees_with_pytorch(shape, which, dtype):
    a, loss = _eig_loss(shape, dtype, which)
    checked(lens.mirror(loss, params={"a": a}, mode="tensor"), "LinalgEigBackward0", notes_ok=True)


def test_eig_rule_is_linear_in_complex_incoming_gradients():
    rng = np.random.default_rng(0)
    lam, v = np.linalg.eig(rng.standard_normal((2, 4, 4)))
    v = v / np.linalg.norm(v, axis=-2, keepdims=True)
    rule = table.RULES["LinalgEigBackward0"]

    def cplx():
        return rng.standard_normal((2, 4, 4)) + 1j * rng.standard_normal((2, 4, 4))

    def run(gl, gv):
        return rule(table.Ctx("LinalgEigBackward0", [gl, gv], {"eigenvalues": lam, "eigenvectors": v}, {},
                              [(2, 4, 4)], [(2, 4), (2, 4, 4)], False, ("float64",)))[0]
    (g1, h1), (g2, h2) = (cplx()[..., 0], cplx()), (cplx()[..., 0], cplx())
    np.testing.assert_allclose(run(2 * g1 + 3 * g2, 2 * h1 + 3 * h2), 2 * run(g1, h1) + 3 * run(g2, h2),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(run(2 * g1 + 3 * g2, None), 2 * run(g1, None) + 3 * run(g2, None), rtol=1e-12,
                               atol=1e-12)


def _householder_loss(shape, k, dtype, from_geqrf, seed=0):
    """householder_product(V, tau), tau from geqrf (unitary reflectors) or random (any reflectors)."""
    g = torch.Generator().manual_seed(seed)
    if from_geqrf:
        a, tau = torch.geqrf(torch.randn(*shape, dtype=dtype, generator=g))
        a, tau = a.requires_grad_(), tau[..., :k].clone().requires_grad_()
    else:
        a = torch.randn(*shape, dtype=dtype, generator=g).requires_grad_()
        tau = torch.randn(*shape[:-2], k, dtype=dtype, generator=g).requires_grad_()
    q = torch.linalg.householder_product(a, tau)
    return {"a": a, "tau": tau}, (q * torch.randn(q.shape, dtype=dtype, generator=g)).real.sum()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.complex128],
                         ids=["f64", "f32", "c128"])
@pytest.mark.parametrize("from_geqrf", [True, False], ids=["geqrf", "random"])
@pytest.mark.parametrize("shape,k", [((4, 3), 2), ((5, 5), 5), ((2, 6, 3), 3), ((3, 3), 1), ((2, 1, 4, 4), 3)])
def test_householder_product_agrees_with_pytorch(shape, k, from_geqrf, dtype):
    params, loss = _householder_loss(shape, k, dtype, from_geqrf)
    checked(lens.mirror(loss, params=params, mode="tensor"), "LinalgHouseholderProductBackward0", notes_ok=True)


def test_no_reflectors_give_zero_gradients_to_them():
    a = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    tau = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss = (torch.linalg.householder_product(a, tau) * torch.randn(4, 2, dtype=torch.float64)).sum()
    loss = loss + (torch.ormqr(a[:, :0], tau, c) * torch.randn(4, 3, dtype=torch.float64)).sum()
    rep = lens.mirror(loss, params={"a": a, "tau": tau, "c": c}, mode="tensor")
    checked(rep, "LinalgHouseholderProductBackward0", notes_ok=True)
    checked(rep, "OrmqrBackward0", notes_ok=True)


def test_householder_product_with_a_singular_reflector_is_unmirrored_with_the_reason():
    a = torch.tensor([[0.0], [1.0]], dtype=torch.float64, requires_grad=True)  # ||v||^2 = 2
    tau = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)  # tau ||v||^2 = 1
    loss = torch.linalg.householder_product(a, tau).sum()
    rep = lens.mirror(loss, params={"a": a, "tau": tau}, mode="tensor")
    row = next(r for r in rep.rows if r["type"] == "LinalgHouseholderProductBackward0")
    assert row["status"] == "unmirrored" and "singular Householder reflector" in row["note"]


def _ormqr_loss(m, n, p, batch, left, trans, dtype, from_geqrf, seed=0):
    g = torch.Generator().manual_seed(seed)
    if from_geqrf:
        a, tau = torch.geqrf(torch.randn(*batch, m, n, dtype=dtype, generator=g))
        a, tau = a.requires_grad_(), tau.clone().requires_grad_()
    else:
        a = torch.randn(*batch, m, n, dtype=dtype, generator=g).requires_grad_()
        tau = torch.randn(*batch, min(m, n), dtype=dtype, generator=g).requires_grad_()
    c = torch.randn(*batch, *((m, p) if left else (p, m)), dtype=dtype, generator=g).requires_grad_()
    z = torch.ormqr(a, tau, c, left=left, transpose=trans)
    return {"a": a, "tau": tau, "c": c}, (z * torch.randn(z.shape, dtype=dtype, generator=g)).real.sum()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.complex128],
                         ids=["f64", "f32", "c128"])
@pytest.mark.parametrize("from_geqrf", [True, False], ids=["geqrf", "random"])
@pytest.mark.parametrize("left,trans", [(True, False), (True, True), (False, False), (False, True)],
                         ids=["QC", "QhC", "CQ", "CQh"])
@pytest.mark.parametrize("m,n,p,batch", [(4, 3, 2, ()), (5, 5, 3, (2,)), (3, 4, 1, (1, 2))])
def test_ormqr_agrees_with_pytorch(m, n, p, batch, left, trans, from_geqrf, dtype):
    params, loss = _ormqr_loss(m, n, p, batch, left, trans, dtype, from_geqrf)
    checked(lens.mirror(loss, params=params, mode="tensor"), "OrmqrBackward0", notes_ok=True)


def test_ormqr_with_32_reflectors_is_unmirrored_with_the_reason():
    params, loss = _ormqr_loss(34, 32, 2, (), True, False, torch.float64, True)
    rep = lens.mirror(loss, params=params, mode="tensor")
    row = next(r for r in rep.rows if r["type"] == "OrmqrBackward0")
    assert row["status"] == "unmirrored" and "blockwise" in row["note"]


@pytest.mark.parametrize("build", [lambda: _matrix_exp_loss((3, 3), 0.3, torch.float64, seed=3),
                                   lambda: _eig_loss((4, 4), torch.float64, "both", seed=3),
                                   lambda: _householder_loss((4, 3), 3, torch.float64, True, seed=3),
                                   lambda: _ormqr_loss(4, 3, 2, (), True, False, torch.float64, True, seed=3)],
                         ids=["matrix_exp", "eig", "householder_product", "ormqr"])
def test_a_gradient_off_by_one_part_in_a_million_is_caught(build):
    params, loss = build()
    a_hooked_input_is_caught(params if isinstance(params, dict) else {"a": params}, loss)


@pytest.mark.parametrize("node,build", [
    ("LinalgMatrixExpBackward0", lambda: _matrix_exp_loss((3, 3), 0.3, torch.float64, seed=4)),
    ("LinalgMatrixExpBackward0", lambda: _matrix_exp_loss((2, 3, 3), 0.5, torch.complex128, seed=4)),
    ("LinalgEigBackward0", lambda: _eig_loss((4, 4), torch.float64, "both", seed=4)),
    ("LinalgEigBackward0", lambda: _eig_loss((3, 3), torch.float64, "eigvals", seed=4)),
    ("LinalgEigBackward0", lambda: _eig_loss((3, 3), torch.complex128, "vectors", seed=4)),
    ("LinalgHouseholderProductBackward0", lambda: _householder_loss((5, 4), 3, torch.float64, True, seed=4)),
    ("LinalgHouseholderProductBackward0", lambda: _householder_loss((4, 4), 2, torch.float64, False, seed=4)),
    ("OrmqrBackward0", lambda: _ormqr_loss(4, 3, 2, (), True, False, torch.float64, True, seed=4)),
    ("OrmqrBackward0", lambda: _ormqr_loss(5, 4, 3, (), False, True, torch.float64, False, seed=4)),
])
def test_a_rule_off_by_one_part_in_a_million_is_a_mismatch_at_its_node(node, build, monkeypatch):
    """The bound is tight enough that a rule 1e-6 off (relative) in float64 is flagged at the node itself."""
    params, loss = build()
    a_rule_off_is_a_mismatch_at_its_node(node, params if isinstance(params, dict) else {"a": params}, loss,
                                         monkeypatch)
