import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from cases import CASES, EXPECTED_TYPES, Rand
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import MODELS

import autogradlens as lens
from autogradlens import rules
from autogradlens.scalar import SCALAR_LIMIT


def check(rep, allowed_unmirrored=()):
    bad = [r for r in rep.rows if r["status"] == "mismatch" or r.get("e2e_status") == "mismatch"]
    assert not bad, rep.to_text()
    assert set(rep.unmirrored) <= set(allowed_unmirrored), rep.unmirrored
    assert rep.ok


@pytest.mark.parametrize("mode", ["tensor", "scalar"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_rule_agrees_with_pytorch_locally_and_end_to_end(name, dtype, mode):
    r = Rand(0, dtype)
    rep = lens.mirror(CASES[name](r), params=r.leaves, mode=mode)
    check(rep)
    assert rep.mode == mode
    leaves = [x for x in rep.rows if x["kind"] == "leaf"]
    assert leaves and all(x["status"] == "match" for x in leaves)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(CASES)), seed=st.integers(0, 2**16), n=st.integers(1, 5))
def test_rules_hold_for_random_shapes_and_values(name, seed, n):
    r = Rand(seed, torch.float64, n=max(n, 3) if "cross_entropy" in name else n)
    try:
        loss = CASES[name](r)
    except (RuntimeError, IndexError):
        return  # a shape this case cannot take (e.g. batchnorm with one sample)
    check(lens.mirror(loss, params=r.leaves, mode="tensor"))


def test_catalogue_covers_the_issue_list_and_every_type_has_a_rule():
    seen = set()
    for name, case in CASES.items():
        r = Rand(1)
        seen |= {row["type"] for row in lens.mirror(case(r), params=r.leaves, mode="tensor").rows}
    assert EXPECTED_TYPES <= seen
    assert EXPECTED_TYPES <= set(rules.RULES)
    for name, build in MODELS.items():  # the zoo adds e.g. SafeSoftmaxBackward0 (attention)
        torch.manual_seed(0)
        loss, params = build()
        seen |= {row["type"] for row in lens.mirror(loss, params=params, mode="tensor").rows}
    assert set(rules.RULES) <= seen, f"rules no test exercises: {sorted(set(rules.RULES) - seen)}"


def test_end_to_end_leaf_gradients_equal_torch_autograd_grad():
    loss, m = MODELS["attention"]()
    params = list(m.parameters())
    expected = torch.autograd.grad(loss, params, retain_graph=True)
    rep = lens.mirror(loss, params=m, mode="tensor")
    leaf_rows = {r["name"]: r for r in rep.rows if r["kind"] == "leaf"}
    assert set(leaf_rows) == {n for n, _ in m.named_parameters()}
    assert all(r["status"] == "match" for r in leaf_rows.values())
    assert all(p.grad is None for p in params) and all(e is not None for e in expected)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_whole_models(name, dtype):
    torch.manual_seed(0)
    loss, params = MODELS[name](dtype)
    rep = lens.mirror(loss, params=params)
    check(rep, allowed_unmirrored={"CubeBackward", "CopySlices"})


def test_scalar_and_tensor_modes_give_the_same_verdicts():
    torch.manual_seed(0)
    loss, m = MODELS["mlp_ce"]()
    a, b = lens.mirror(loss, params=m, mode="scalar"), lens.mirror(loss, params=m, mode="tensor")
    assert [(r["id"], r["status"]) for r in a.rows] == [(r["id"], r["status"]) for r in b.rows]
    assert a.mode == "scalar" and b.mode == "tensor"


def test_scalar_mode_is_literally_values():
    captured = []
    orig = rules.RULES["ReluBackward0"]

    def spy(c):
        out = orig(c)
        captured.append(out[0])
        return out

    rules.RULES["ReluBackward0"] = spy
    try:
        x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
        lens.mirror(torch.relu(x).sum(), mode="scalar")
    finally:
        rules.RULES["ReluBackward0"] = orig
    assert captured[0].dtype == object
    assert any(isinstance(v, lens.Value) for v in captured[0].ravel())


def test_auto_picks_by_size_and_scalar_refuses_big_graphs():
    small = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert lens.mirror(small.tanh().sum()).mode == "scalar"
    m = nn.Linear(784, 256)
    loss = m(torch.randn(128, 784)).pow(2).mean()
    assert lens.mirror(loss, params=m).mode == "tensor"
    with pytest.raises(ValueError, match="use mode='tensor'"):
        lens.mirror(loss, params=m, mode="scalar")
    assert SCALAR_LIMIT >= 1_000_000  # issue 11: the makemore network (about a million Values) fits
    with pytest.raises(ValueError, match="mode must be"):
        lens.mirror(loss, mode="fast")


def test_grad_untouched_by_default_and_backward_true_equals_backward():
    torch.manual_seed(0)
    loss, m = MODELS["batchnorm"]()
    lens.mirror(loss, params=m)
    assert all(p.grad is None for p in m.parameters())
    loss.backward(retain_graph=True)  # the graph is still usable after a default mirror
    want = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    rep = lens.mirror(loss, params=m, backward=True)
    assert rep.ok
    for n, p in m.named_parameters():
        assert torch.equal(p.grad, want[n]), n
    # accumulation, as backward() does
    torch.manual_seed(0)
    loss2, m2 = MODELS["mlp_ce"]()
    loss2.backward(retain_graph=True)
    g1 = {n: p.grad.clone() for n, p in m2.named_parameters()}
    lens.mirror(loss2, params=m2, backward=True)
    for n, p in m2.named_parameters():
        assert torch.equal(p.grad, 2 * g1[n])


def test_planted_disagreement_is_detected_and_located():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    h = m[1](m[0](torch.randn(6, 4, dtype=torch.float64)))
    h.register_hook(lambda g: g * 2)  # PyTorch's gradient no longer follows the mathematics
    loss = F.cross_entropy(m[2](h), torch.tensor([0, 1, 2, 0, 1, 2]))
    rep = lens.mirror(loss, params=m)
    assert not rep.ok
    bad_leaves = {r["name"] for r in rep.rows if r["kind"] == "leaf" and r["status"] == "mismatch"}
    assert bad_leaves == {"0.weight", "0.bias"}
    assert all(r["status"] == "match" for r in rep.rows if r["kind"] == "node")  # each rule is still right
    assert rep.diverges_at == ["TanhBackward0:0"]
    assert "TanhBackward0:0" in rep.to_text() and "NOT OK" in rep.to_text()


def test_unknown_nodes_are_reported_not_crashed_and_passed_through():
    loss, params = MODELS["custom"]()
    w = params["w"]
    out = (loss * 2).exp()  # nodes after the custom one are still checked
    rep = lens.mirror(out, params=params)
    assert rep.unmirrored == ["CubeBackward"] and rep.ok
    row = next(r for r in rep.rows if r["type"] == "CubeBackward")
    assert row["status"] == "unmirrored"
    assert next(r for r in rep.rows if r["name"] == "w")["status"] == "match"
    assert w.grad is None


def test_saved_tensors_needed_clear_errors():
    loss, m = MODELS["mlp_ce"]()
    loss.backward()
    with pytest.raises(RuntimeError, match="before loss.backward"):
        lens.mirror(loss, params=m)
    loss, m = MODELS["mlp_ce"]()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    loss.backward(retain_graph=True)
    opt.step()
    with pytest.raises(RuntimeError, match="changed in place"):
        lens.mirror(loss, params=m)
    with pytest.raises(TypeError):
        lens.mirror(3.0)


def test_report_text_html_and_coloured_graph(tmp_path):
    torch.manual_seed(0)
    loss, m = MODELS["mlp_ce"]()
    rep = lens.mirror(loss, params=m)
    txt = rep.to_text()
    assert txt.splitlines()[0].startswith("name") and "exact | approximate | maxdiff" in txt
    assert "0.weight" in txt and txt.splitlines()[-1].startswith("ok:")
    assert "<table>" in rep._repr_html_()
    dot = rep.to_dot()
    assert "#a8e6a3" in dot  # match colour
    assert rep.render(tmp_path / "m.svg").read_bytes().count(b"<svg") == 1
    assert rep.render(tmp_path / "m.txt").read_text().startswith("name")
    with pytest.raises(ValueError):
        rep.render(tmp_path / "m.xyz")


def test_exact_is_reported_separately_from_approximate():
    x = torch.randn(50, dtype=torch.float64, requires_grad=True)
    rep = lens.mirror((torch.relu(x) * 3).sum(), mode="tensor")
    relu = next(r for r in rep.rows if r["type"] == "ReluBackward0")
    assert relu["exact"] and relu["max_abs"] == 0.0
    y = torch.randn(64, 784, dtype=torch.float64)
    lin = nn.Linear(784, 64).double()
    rep = lens.mirror(torch.tanh(lin(y)).sum(), params=lin, mode="tensor")
    w = next(r for r in rep.rows if r["name"] == "weight")
    assert w["status"] == "match" and not w["exact"] and 0 < w["max_rel"] < 1e-13
    assert np.isfinite(w["max_abs"])
