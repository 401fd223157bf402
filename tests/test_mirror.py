import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from cases import CASES, COMPLEX_CASES, EXPECTED_TYPES, TORCH_WRONG, Rand
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from models import MODELS

import autogradlens as lens
from autogradlens.errors import LensRuntimeError, LensValueError
from autogradlens.mirror import table
from autogradlens.mirror.scalar import SCALAR_LIMIT


def check(rep, allowed_unmirrored=()):
    bad = [r for r in rep.rows if r["status"] == "mismatch" or r.get("e2e_status") == "mismatch"
           or (r["note"] or "").startswith(("rule failed", "bound:"))]  # a rule that raises fails the test
    assert not bad, rep.to_text()
    assert set(rep.unmirrored) <= set(allowed_unmirrored), rep.unmirrored
    assert rep.ok


@pytest.mark.parametrize("mode", ["tensor", "scalar"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_rule_agrees_with_pytorch_locally_and_end_to_end(name, dtype, mode):
    r = Rand(0, dtype)
    rep = lens.mirror(CASES[name](r), params=r.leaves, mode=mode)
    scalar_complex = {x["type"] for x in rep.rows if "scalar mode's Values are real" in (x["note"] or "")}
    check(rep, scalar_complex if name in COMPLEX_CASES and mode == "scalar" else ())
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
        loss = None
    assume(loss is not None)  # a shape this case cannot take (e.g. batchnorm with one sample): drawn again
    check(lens.mirror(loss, params=r.leaves, mode="tensor"))


def test_catalogue_covers_the_issue_list_and_every_type_has_a_rule():
    seen = set()
    for name, case in CASES.items():
        r = Rand(1)
        seen |= {row["type"] for row in lens.mirror(case(r), params=r.leaves, mode="tensor").rows}
    assert EXPECTED_TYPES <= seen
    assert EXPECTED_TYPES <= set(table.RULES)
    for name, build in MODELS.items():  # the zoo adds e.g. SafeSoftmaxBackward0 (attention)
        torch.manual_seed(0)
        loss, params = build()
        seen |= {row["type"] for row in lens.mirror(loss, params=params, mode="tensor").rows}
    for name, case in TORCH_WRONG.items():  # test_pytorchs_own_wrong_gradients_are_caught
        r = Rand(1)
        seen |= {row["type"] for row in lens.mirror(case(r), params=r.leaves, mode="tensor").rows}
    assert existing(table.RULES) <= seen, f"rules no test exercises: {sorted(existing(table.RULES) - seen)}"


def existing(types) -> set:
    """The node types the running torch has (a rule may serve an older one: CholeskyBackward0 before 2.14)."""
    return {t for t in types if hasattr(torch._C._functions, t)}


class _Nudged(Rand):
    """The same values as Rand(0), with element `i` of the first leaf one larger."""

    def __init__(self, i):
        super().__init__(0)
        self.i = i

    def __call__(self, *shape, **kw):
        t = super().__call__(*shape, **kw)
        if len(self.leaves) == 1 and not self.nudged:
            with torch.no_grad():
                t.view(-1)[self.i] += 1.0
        self.nudged = True
        return t

    nudged = False


@pytest.mark.parametrize("name", sorted(TORCH_WRONG))
def test_pytorchs_own_wrong_gradients_are_caught(name):
    """as_strided_scatter's backward in PyTorch sends the gradient to the overwritten places of self and 0 to the kept
    ones (OpInfo marks its gradient test an expected failure): the mirror's rule gives the true gradient (the loss is
    linear in self: unit steps measure it exactly) and reports the node as a mismatch."""
    r = Rand(0)
    loss = TORCH_WRONG[name](r)
    x = r.leaves["p0"]
    (got,) = torch.autograd.grad(loss, [x], retain_graph=True)
    true = torch.tensor([TORCH_WRONG[name](_Nudged(i)).item() - loss.item() for i in range(x.numel())],
                        dtype=torch.float64).view(x.shape)
    assert not torch.allclose(got, true)  # PyTorch is wrong here
    rep = lens.mirror(loss, params=r.leaves)
    np.testing.assert_allclose(rep.grads["p0"], true.numpy(), atol=1e-12)
    assert not rep.ok
    assert next(row for row in rep.rows if row["type"] == "AsStridedScatterBackward0")["status"] == "mismatch"


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
    orig = table.RULES["ReluBackward0"]

    def spy(c):
        out = orig(c)
        captured.append(out[0])
        return out

    table.RULES["ReluBackward0"] = spy
    try:
        x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
        lens.mirror(torch.relu(x).sum(), mode="scalar")
    finally:
        table.RULES["ReluBackward0"] = orig
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
    rep = lens.mirror(loss, params={**dict(m.named_parameters()), "h": h})  # a hook runs where the mirror sees it
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
    assert row["note"].startswith("a custom autograd.Function: its backward is Python code")  # why, not "no rule"
    assert "unmirrored (PyTorch's gradients passed through): CubeBackward" in rep.to_text()
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
    assert "<table" in rep._repr_html_()
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


# ----------------------------------------------------------------------------- never crash, never touch .grad

def test_mirror_after_backward_says_what_to_do():
    loss, m = MODELS["mlp_ce"]()
    loss.backward()
    with pytest.raises(LensRuntimeError, match=r"before loss.backward\(\), or backward\(retain_graph=True\)"):
        lens.mirror(loss, params=m)


def test_reentrant_checkpoint_is_mirrored_and_grad_untouched():
    from torch.utils.checkpoint import checkpoint
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    head = nn.Linear(2, 1).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    loss = head(checkpoint(body, x, use_reentrant=True)).pow(2).sum()
    params = {**dict(body.named_parameters()), **{"head." + n: p for n, p in head.named_parameters()}, "x": x}
    rep = lens.mirror(loss, params=params)
    assert rep.ok and rep.unmirrored == ["CheckpointFunctionBackward"]
    row = next(r for r in rep.rows if r["type"] == "CheckpointFunctionBackward")
    assert row["note"].startswith("a reentrant checkpoint region")
    assert {r["name"] for r in rep.rows if r["kind"] == "leaf" and r["status"] == "match"} >= {"head.weight", "x"}
    assert all(p.grad is None for p in params.values())  # also the checkpointed body's, outside the graph
    loss.backward()  # the user's own backward still works, once
    assert body[0].weight.grad is not None


def test_complex_nodes_are_checked_and_sparse_and_meta_nodes_are_unmirrored_with_a_note():
    z = torch.randn(3, dtype=torch.complex128, requires_grad=True)
    loss = (z * z.conj()).real.sum()
    rep = lens.mirror(loss, params={"z": z})
    check(rep)
    assert rep.mode == "tensor" and "complex" in rep.mode_reason  # auto: Values hold real numbers
    (want,) = torch.autograd.grad(loss, [z], retain_graph=True)
    np.testing.assert_allclose(rep.grads["z"], want.numpy(), rtol=1e-15)  # 2 z: dL/dx + i dL/dy
    s = torch.eye(4, dtype=torch.float64).to_sparse().requires_grad_()
    w = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    rep = lens.mirror(torch.sparse.mm(s, w).tanh().sum(), params={"w": w, "s": s})
    assert rep.ok and rep.unmirrored == ["SparseAddmmBackward0"]
    emb = nn.Embedding(10, 3, sparse=True).double()
    assert lens.mirror(emb(torch.tensor([1, 2, 2])).pow(2).sum(), params=emb).ok
    m = torch.randn(3, 2, device="meta", requires_grad=True)
    rep = lens.mirror((m.tanh() * 2).sum(), params={"m": m})
    assert rep.ok and {r["status"] for r in rep.rows} == {"unmirrored"}
    assert {r["note"] for r in rep.rows} == {"a meta tensor (no values)"}


def test_a_rule_that_raises_is_a_note_not_a_crash():
    orig = table.RULES["TanhBackward0"]
    table.RULES["TanhBackward0"] = lambda c: (c.g[99],)
    try:
        x = torch.randn(3, dtype=torch.float64, requires_grad=True)
        rep = lens.mirror(x.tanh().sum(), params={"x": x})
    finally:
        table.RULES["TanhBackward0"] = orig
    row = next(r for r in rep.rows if r["type"] == "TanhBackward0")
    assert row["status"] == "unmirrored" and row["note"].startswith("rule failed: IndexError")
    assert rep.ok


def test_retained_intermediates_keep_their_grad_and_a_later_backward_is_unchanged():
    from autogradlens.examples import MAKEMORE_NAMES, makemore
    loss, names = makemore(retain_grad=True)
    rep = lens.mirror(loss, params=names)
    assert rep.ok
    assert sum(names[k].retains_grad for k in MAKEMORE_NAMES) == 19
    assert all(names[k].grad is None for k in names)
    loss.backward()
    loss2, names2 = makemore(retain_grad=True)
    loss2.backward()
    for k in names:
        assert torch.equal(names[k].grad, names2[k].grad), k
    # retained but not named: found on the graph all the same
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    h = x.tanh()
    h.retain_grad()
    lens.mirror((h * h).sum(), params={"x": x})
    assert h.grad is None


def test_one_name_for_two_tensors_is_a_value_error():
    a, b = torch.randn(2, requires_grad=True), torch.randn(2, requires_grad=True)
    loss = (a * b).sum()
    with pytest.raises(LensValueError, match="'w'"):
        lens.mirror(loss, params=[("w", a), ("w", b)])
    assert lens.mirror(loss, params=[("w", a), ("w", a), ("b", b)]).ok  # the same tensor twice is fine


def test_named_intermediates_give_the_lectures_cmp_table():
    from autogradlens.examples import MAKEMORE_NAMES, makemore
    loss, names = makemore()
    rep = lens.mirror(loss, params=names)
    rows = {r["name"]: r for r in rep.rows}
    assert set(MAKEMORE_NAMES) <= set(rows)
    assert rows["logprobs"]["type"] == "LogBackward0" and rows["emb"]["type"] == "IndexBackward0"
    assert all(rows[k]["e2e_status"] == "match" for k in MAKEMORE_NAMES)
    assert rows["logprobs"]["e2e_exact"]  # dlogprobs: -1/n at the targets, bit for bit
    text = rep.to_text()
    assert "dbnvar_inv (end to end)" in text and "\nhprebn " in text and rep.mode_reason in text
    assert rep.trace.graph.nodes[rows["h"]["id"]]["name"] == "h"


def test_zero_tensor_gradients_are_read_as_zeros():
    """PyTorch hands sgn's gradient over as a ZeroTensor, which refuses a plain .numpy(): mirror and
    trace(grads=True) read it as zeros instead of failing."""
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    loss = (torch.sgn(x) * x).sum()
    rep = lens.mirror(loss, params={"x": x})
    check(rep)
    node = next(r for r in rep.rows if r["type"] == "SgnBackward0")
    assert node["status"] == "match" and node["exact"]
    t = lens.trace(loss, params={"x": x}, grads=True)
    sgn = next(d for _, d in t.graph.nodes(data=True) if d["type"] == "SgnBackward0")
    assert sgn["grad"] is not None


def test_a_complex_region_in_scalar_mode_passes_pytorch_gradients_quietly():
    import warnings

    a = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "casting complex values to real" from the Values
        rep = lens.mirror(torch.view_as_real(torch.view_as_complex(a) * 2).sum(), params={"a": a}, mode="scalar")
    assert rep.ok and {"MulBackward0", "ViewAsComplexBackward0"} <= {r["type"] for r in rep.rows
                                                                     if r["status"] == "unmirrored"}
    assert all("scalar mode's Values are real" in r["note"] for r in rep.rows if r["status"] == "unmirrored")
    assert next(r for r in rep.rows if r["kind"] == "leaf")["status"] == "match"


class _SomeConstant(Rand):
    """Every other leaf needs no gradient (as data would): PyTorch then saves only what the other slots need."""

    def __init__(self, seed, off):
        super().__init__(seed)
        self.off, self.made = off, 0

    def __call__(self, *shape, grad=True, positive=False, name=None):
        self.made += 1
        return super().__call__(*shape, grad=grad and (self.made + self.off) % 2 == 1, positive=positive, name=name)


def test_rules_work_when_some_inputs_need_no_gradient():
    problems = []
    for name, case in sorted(CASES.items()):
        for off in (0, 1):
            r = _SomeConstant(0, off)
            try:
                loss = case(r)
            except (RuntimeError, IndexError):
                continue  # a case whose ops need these inputs to require grad
            if not loss.requires_grad:
                continue
            for row in lens.mirror(loss, params=r.leaves or None, mode="tensor").rows:
                if row["status"] == "mismatch" or "rule failed" in (row["note"] or ""):
                    problems.append((name, off, row["type"], row["status"], row["note"]))
    assert not problems, problems


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_padding_valid_convolutions_are_checked(dims):
    """PyTorch saves one padding value, (0,), for padding='valid' whatever the dimension: the rule reads it for
    every spatial dimension (an IndexError left every such convolution unchecked)."""
    torch.manual_seed(0)
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1](2, 3, 3, padding="valid", dilation=(1, 2, 1)[dims - 1])
    conv = conv.double()
    x = torch.randn(2, 2, *(7,) * dims, dtype=torch.float64, requires_grad=True)
    assert conv(x).grad_fn._saved_padding == (0,)  # what the rule has to read
    rep = lens.mirror(conv(x).pow(2).sum(), params={**dict(conv.named_parameters()), "x": x}, mode="tensor")
    check(rep)
    row = next(r for r in rep.rows if r["type"] == "ConvolutionBackward0")
    assert row["status"] == "match" and row["note"] is None
    assert {r["name"] for r in rep.rows if r["kind"] == "leaf" and r["status"] == "match"} == {"x", "weight", "bias"}
