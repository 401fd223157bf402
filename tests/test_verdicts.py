"""Verdicts from a rounding-error bound: no false alarm on correct graphs, planted changes caught."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from cases import CASES, TORCH_WRONG, Rand
from models import MODELS

import autogradlens as lens
from autogradlens.mirror import bounds, driver, table, verdicts
from autogradlens.mirror.bounds import Mag, MagCtx, gamma
from autogradlens.tracing import traced


def cnn(dtype, norm="batch", scale=1.0):
    """Conv (with bias) -> norm -> ReLU, twice, then Linear (with bias) -> BatchNorm1d: every bias gradient
    is mathematically 0, made of terms of the size of the incoming gradient (scaled by `scale`)."""
    norms = {"batch": lambda c: nn.BatchNorm2d(c), "instance": lambda c: nn.InstanceNorm2d(c, affine=True),
             "group": lambda c: nn.GroupNorm(2, c)}
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), norms[norm](4), nn.ReLU(),
                      nn.Conv2d(4, 4, 3, padding=1), norms[norm](4), nn.ReLU(), nn.Flatten(),
                      nn.Linear(4 * 6 * 6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5)).to(dtype)
    x = torch.randn(6, 3, 6, 6, dtype=dtype)
    return F.cross_entropy(m(x), torch.randint(0, 5, (6,))) * scale, m


class Basic(nn.Module):
    """A ResNet basic block."""

    def __init__(self, c):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


def resnet(dtype):
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                      Basic(8), Basic(8), Basic(8), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).to(dtype)
    return F.cross_entropy(m(torch.randn(8, 3, 8, 8, dtype=dtype)), torch.randint(0, 10, (8,))), m


class Block(nn.Module):
    """A GPT-2 block (pre-norm, causal attention written out, GELU MLP), a final LayerNorm and a head."""

    def __init__(self, d=16, vocab=20):
        super().__init__()
        self.emb, self.ln1, self.qkv, self.proj = nn.Embedding(vocab, d), nn.LayerNorm(d), nn.Linear(d, 3 * d), \
            nn.Linear(d, d)
        self.ln2, self.fc, self.out = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.lnf, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.emb(idx)
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        att = (q @ k.transpose(1, 2)) / d**0.5
        att = att.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf")).softmax(-1)
        x = x + self.proj(att @ v)
        x = x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))
        return self.head(self.lnf(x))


def gpt(dtype):
    m = Block().to(dtype)
    idx = torch.randint(0, 20, (3, 7))
    return F.cross_entropy(m(idx).view(-1, 20), idx.view(-1)), m


def small_mlp(dtype):
    m = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.GELU(), nn.Linear(16, 16), nn.LayerNorm(16),
                      nn.Tanh(), nn.Linear(16, 4)).to(dtype)
    return F.cross_entropy(m(torch.randn(10, 6, dtype=dtype)), torch.randint(0, 4, (10,))), m


def autocast_mlp():
    m = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(torch.randn(16, 8))
    return F.cross_entropy(out.float(), torch.randint(0, 4, (16,))), m


def ok_or_explain(rep):
    bad = [(r["name"], r["type"], r["max_abs"], r["bound"], r["e2e_max_abs"], r["e2e_bound"], r["note"])
           for r in rep.rows if r["status"] == "mismatch" or r["e2e_status"] == "mismatch"
           or (r["note"] or "").startswith(("rule failed", "bound:"))]  # a rule that raises is a failure too
    assert rep.ok and not bad, bad
    assert "a tensor hook?" not in rep.to_text() and rep.diverges_at == []


# ----------------------------------------------------------------------------- no false alarm

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("norm", ["batch", "instance", "group"])
@pytest.mark.parametrize("scale", [1.0, 1e8])
def test_bias_before_a_normalisation_is_no_false_alarm(dtype, norm, scale):
    torch.manual_seed(0)
    loss, m = cnn(dtype, norm, scale)
    rep = lens.mirror(loss, params=m)
    ok_or_explain(rep)
    bias = next(r for r in rep.rows if r["name"] == "0.bias")
    assert bias["status"] == "match" and bias["bound"] > 0  # ~0 made of large terms: the bound covers it


@pytest.mark.parametrize("build", [resnet, gpt, small_mlp], ids=["resnet", "gpt", "mlp"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=["f64", "f32", "bf16", "f16"])
def test_real_models_in_every_dtype_have_no_false_alarm(build, dtype):
    torch.manual_seed(0)
    loss, m = build(dtype)
    ok_or_explain(lens.mirror(loss, params=m))


def test_bf16_autocast_has_no_false_alarm():
    torch.manual_seed(0)
    loss, m = autocast_mlp()
    rep = lens.mirror(loss, params=m)
    ok_or_explain(rep)
    assert {"bfloat16", "float32"} <= {d["dtype"] for _, d in rep.trace.graph.nodes(data=True)}


@pytest.mark.parametrize("seed", range(6))
def test_random_catalogue_runs_have_no_false_alarm_in_float32(seed):
    for name, case in sorted(CASES.items()):
        r = Rand(seed, torch.float32, n=4)
        ok_or_explain(lens.mirror(case(r), params=r.leaves, mode="tensor"))


def test_the_same_root_twice_and_split_outputs_as_roots():
    torch.manual_seed(0)
    loss, m = MODELS["mlp_ce"]()
    rep = lens.mirror([loss, loss], params=m)
    ok_or_explain(rep)
    want = torch.autograd.grad([loss, loss], list(m.parameters()), retain_graph=True)
    for (name, _), g in zip(m.named_parameters(), want):
        np.testing.assert_allclose(rep.grads[name], g.numpy(), rtol=1e-12, atol=1e-15)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    a, b, c = (x.tanh() * 2).split(2)
    rep = lens.mirror([a, c, a], params={"x": x})
    ok_or_explain(rep)
    (want,) = torch.autograd.grad([a, c, a], [x], [torch.ones_like(a), torch.ones_like(c), torch.ones_like(a)],
                                  retain_graph=True)
    np.testing.assert_allclose(rep.grads["x"], want.numpy(), rtol=1e-14)
    assert (want[2:4] == 0).all()


# ----------------------------------------------------------------------------- planted changes are caught

def _planted(dtype, change):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).to(dtype)
    h = m[2](m[1](m[0](torch.randn(7, 5, dtype=dtype))))
    h.register_hook(change)
    return F.cross_entropy(m[4](m[3](h)), torch.randint(0, 3, (7,))), {**dict(m.named_parameters()), "h": h}


@pytest.mark.parametrize("dtype,factor", [(torch.float64, 1 + 1e-6), (torch.float32, 1 + 1e-3)], ids=["f64", "f32"])
def test_a_hook_scaling_one_gradient_is_caught(dtype, factor):
    loss, m = _planted(dtype, lambda g: g * factor)
    rep = lens.mirror(loss, params=m)
    assert not rep.ok
    assert rep.diverges_at == ["AddmmBackward0:1"]  # the node that made h
    assert "a tensor hook?" in rep.to_text()
    assert all(r["status"] != "mismatch" for r in rep.rows if r["kind"] == "node")  # every rule is right
    assert {r["name"] for r in rep.rows if r["kind"] == "leaf" and r["status"] == "mismatch"} >= {"2.bias"}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_a_hook_flipping_one_element_is_caught(dtype):
    def flip(g):
        g = g.clone()
        i = g.abs().argmax()
        g.view(-1)[i] = -g.view(-1)[i]
        return g
    loss, m = _planted(dtype, flip)
    rep = lens.mirror(loss, params=m)
    assert not rep.ok and rep.diverges_at == ["AddmmBackward0:1"]


def _big(dtype, change=None):
    """Convolutions and matrix products of some size (the tests above use tiny ones)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                      nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 128), nn.Tanh(), nn.Linear(128, 10)).to(dtype)
    h = m[:7](torch.randn(32, 3, 8, 8, dtype=dtype))
    if change is not None:
        h.register_hook(change)  # named below: the mirror applies the hooks of the tensors it can see
    return F.cross_entropy(m[7:](h), torch.randint(0, 10, (32,))), {**dict(m.named_parameters()), "h": h}


@pytest.mark.parametrize("dtype,factor", [(torch.float64, 1 + 1e-6), (torch.float32, 1 + 1e-3)], ids=["f64", "f32"])
def test_a_hook_scaling_one_gradient_of_a_big_model_is_caught(dtype, factor):
    loss, m = _big(dtype, lambda g: g * factor)
    rep = lens.mirror(loss, params=m, mode="tensor")
    assert not rep.ok and rep.diverges_at == ["AddmmBackward0:1"] and "a tensor hook?" in rep.to_text()  # made h
    assert all(r["status"] != "mismatch" for r in rep.rows if r["kind"] == "node")
    assert {r["name"] for r in rep.rows if r["kind"] == "leaf" and r["status"] == "mismatch"} >= {"6.weight", "6.bias"}


def test_a_wrong_rule_is_caught_locally():
    orig = table.RULES["TanhBackward0"]
    table.RULES["TanhBackward0"] = lambda c: (c.g * (1 - c.s["result"] ** 2) * (1 + 1e-4),)
    try:
        loss, m = _planted(torch.float32, lambda g: g)
        rep = lens.mirror(loss, params=m)
    finally:
        table.RULES["TanhBackward0"] = orig
    tanh = next(r for r in rep.rows if r["type"] == "TanhBackward0")
    assert tanh["status"] == "mismatch" and rep.diverges_at == []


# ----------------------------------------------------------------------------- the bound itself

def fallback(row):
    return (row["note"] or "").startswith(("rule failed", "bound:"))


def test_every_rule_runs_on_magnitudes_without_fallback():
    """Each rule the catalogue and the zoo exercise evaluates on bounds.Mag (no relative fallback)."""
    seen = set()
    for name, case in sorted(CASES.items()):
        r = Rand(2, torch.float32)
        rep = lens.mirror(case(r), params=r.leaves, mode="tensor")
        assert not [x for x in rep.rows if x["note"]], name
        seen |= {x["type"] for x in rep.rows}
    for name, build in MODELS.items():
        torch.manual_seed(0)
        loss, params = build(torch.float32)
        rep = lens.mirror(loss, params=params, mode="tensor")
        assert not [x for x in rep.rows if fallback(x)], name
        seen |= {x["type"] for x in rep.rows}
    for name, case in TORCH_WRONG.items():  # a rule PyTorch's own backward disagrees with
        r = Rand(2, torch.float32)
        rep = lens.mirror(case(r), params=r.leaves, mode="tensor")
        assert not [x for x in rep.rows if fallback(x)], name
        seen |= {x["type"] for x in rep.rows}
    for build in (autocast_mlp, lambda: (torch.randn(3, requires_grad=True).double() ** 2).sum()):
        out = build()
        loss, params = out if isinstance(out, tuple) else (out, None)
        rep = lens.mirror(loss, params=params)
        assert rep.ok and not [x for x in rep.rows if fallback(x)]
        seen |= {x["type"] for x in rep.rows}
    assert {t for t in table.RULES if hasattr(torch._C._functions, t)} <= seen  # the types this torch has


def test_mag_gives_the_size_of_the_terms_and_counts_roundings():
    g = Mag.grad(np.array([1.0, -2.0]))
    y = Mag.of(np.array([0.5, -0.9]))
    out = g * (1 - y * y)  # tanh's rule: terms 1 and y*y, not their difference
    np.testing.assert_allclose(out.m, [1 * (1 + 0.25), 2 * (1 + 0.81)])
    assert out.n == 3 and out.v is None
    s = Mag.grad(np.ones((4, 5))).sum(axis=0)
    assert s.n == 3 and s.m.tolist() == [4.0] * 5
    mm = Mag.grad(np.ones((2, 7))) @ Mag.of(-np.ones((7, 3)))
    assert mm.n == 7 and (mm.m == 7).all()
    assert np.asarray(np.where(y > 0, g, 0.0).m).tolist() == [1.0, 0.0]
    with pytest.raises(TypeError):
        np.exp(g)  # a rule is linear in G: an elementwise function of G has no magnitude
    c = MagCtx("X", [g], {}, {}, [(2,)], [(2,)], False)
    assert isinstance(c.zeros((2,)), Mag)
    q, k = Mag.grad(np.ones((2, 3, 4, 5))), Mag.of(-np.ones((2, 3, 6, 5)))
    e = np.einsum("...le,...se->...ls", q, k)  # attention scores: a length-5 dot product per element
    assert e.shape == (2, 3, 4, 6) and e.n == 6 and (e.m == 5).all()
    assert np.einsum("...le,...le->...l", q, Mag.of(np.ones((2, 3, 4, 5)))).n == 5 + 1
    assert Mag.grad(np.ones((1, 8, 2))).reshape((1, 2, 2, 2, 2)).transpose((0, 1, 3, 2, 4)).shape == (1, 2, 2, 2, 2)
    cast = c.rounded("bfloat16", g)
    assert cast.n == 1 and cast.r == 1 and cast.m.tolist() == [1.0, 2.0]
    s, t = c.dtype_sum(Mag.grad(np.ones((7, 3))), 0), Mag.grad(np.ones((7, 3))).sum(axis=0)
    assert (s.n, s.r) == (6, 6) and (t.n, t.r) == (6, 1)  # accumulated in the dtype: every addition rounds to it


def test_rules_said_to_be_exact_round_nothing_on_magnitudes(monkeypatch):
    """bounds.MOVES_ONLY skips the run on magnitudes (B = 0): each of its rules, run on magnitudes anyway wherever the
    catalogue and the zoo's models use it, counts no rounding (n = r = 0), and nodes outside it run on magnitudes."""
    counts, ran = {}, []
    orig = driver.run_rule

    def recording(op, gs, saved, ctx=table.Ctx, scalar=False):
        out = orig(op, gs, saved, ctx, scalar)
        if ctx is MagCtx:
            ran.append(op.type)
            counts.setdefault(op.type, set()).update((x.n, x.r) for x in out if x is not None)
        return out
    monkeypatch.setattr(driver, "MOVES_ONLY", frozenset())  # every node runs on magnitudes
    monkeypatch.setattr(driver, "run_rule", recording)
    for name, case in sorted(CASES.items()):
        r = Rand(1, torch.float32)
        lens.mirror(case(r), params=r.leaves, mode="tensor")
    for build in MODELS.values():
        torch.manual_seed(0)
        lens.mirror(build(torch.float32)[0], mode="tensor")
    assert bounds.MOVES_ONLY <= set(table.RULES) and bounds.MOVES_ONLY <= set(counts), bounds.MOVES_ONLY - set(counts)
    assert {t: c for t, c in counts.items() if t in bounds.MOVES_ONLY and c != {(0, 0)}} == {}
    ran.clear()
    monkeypatch.undo()
    torch.manual_seed(0)
    monkeypatch.setattr(driver, "run_rule", recording)
    lens.mirror(MODELS["mlp_ce"](torch.float32)[0], mode="tensor")
    assert ran and not set(ran) & bounds.MOVES_ONLY


def test_judging_element_by_element_whole_or_chunk_by_chunk_gives_the_same_rows(monkeypatch):
    """Few elements are judged in Python floats, big arrays chunk by chunk (bounds.CHUNK), the rest as whole arrays:
    the same arithmetic, so the same rows, bit for bit (with infinities and NaNs, planted changes, broadcasting)."""
    def planted(g):
        return g * (1 + 1e-3)

    def builds():
        for name in ("broadcast_arith", "pow_exp_log_sqrt", "nan_to_num_logit", "log_softmax", "conv2d", "embedding",
                     "index_duplicates", "max_pool2d", "layernorm", "split_chunk"):
            yield name, lambda name=name: (lambda r: (CASES[name](r), r.leaves))(Rand(3, torch.float32))
        yield "big", lambda: _big(torch.float32)
        yield "big-hook", lambda: _big(torch.float32, planted)
        yield "ieee", lambda: ((torch.tensor([0.0, 1.0, 4.0], requires_grad=True).sqrt() * 2).sum(), None)

    def rows(small, chunk):
        monkeypatch.setattr(verdicts, "SMALL", small)
        monkeypatch.setattr(driver, "_SMALL", small)
        for mod in (bounds, verdicts, driver):
            monkeypatch.setattr(mod, "CHUNK", chunk)
        out = {}
        for name, build in builds():
            torch.manual_seed(0)
            loss, params = build()
            rep = lens.mirror(loss, params=params, mode="tensor")
            out[name] = [tuple(repr(r[k]) for k in ("id", "status", "exact", "max_abs", "max_rel", "bound",
                                                    "e2e_status", "e2e_max_abs", "e2e_bound")) for r in rep.rows]
        return out
    whole = rows(0, 10**12)
    assert rows(0, 7) == whole  # (7: chunks end mid-row)
    assert rows(16, 10**12) == whole
    assert any(r[1] == "'mismatch'" or r[6] == "'mismatch'" for r in whole["big-hook"])


def test_gamma_and_unit_roundoffs():
    assert bounds.UNIT_ROUNDOFF["float32"] == np.finfo(np.float32).eps / 2
    assert bounds.UNIT_ROUNDOFF["float64"] == np.finfo(np.float64).eps / 2
    assert bounds.UNIT_ROUNDOFF["float16"] == np.finfo(np.float16).eps / 2
    assert bounds.UNIT_ROUNDOFF["bfloat16"] == torch.finfo(torch.bfloat16).eps / 2
    assert gamma(0, 0.1) == 0 and gamma(2, 0.1) == pytest.approx(0.25) and gamma(20, 0.1) == np.inf


def _tf32(a: np.ndarray) -> np.ndarray:
    """float32 -> TensorFloat-32 by truncation (the low 13 of 23 mantissa bits dropped), the worse of the two
    conversions tensor cores see."""
    return (np.asarray(a, np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


def test_the_bound_covers_tensorfloat32_products_and_the_float32_bound_would_not():
    """A float32 CUDA convolution or matmul may run in TF32 (cudnn.allow_tf32 is on by default): the bound
    with tf32=True holds for products of truncated factors summed in float32, the plain float32 one fails."""
    rng = np.random.default_rng(0)
    g, w = rng.standard_normal((64, 300)).astype(np.float32), rng.standard_normal((300, 40)).astype(np.float32)
    exact = g.astype(np.float64) @ w.astype(np.float64)
    tf32 = (_tf32(g) @ _tf32(w)).astype(np.float64)  # float32 accumulation of the truncated factors
    mag = Mag.grad(g.astype(np.float64)) @ Mag.of(w.astype(np.float64))
    err = np.abs(tf32 - exact)
    assert np.all(err <= bounds.local_bound(mag, "float32", tf32=True))
    assert np.mean(err > bounds.local_bound(mag, "float32")) > 0.5
    # the zoo on an H100 (benchmarks/gpu_check.py --zoo) needs it for its float32 convolutions
    assert driver._TF32_CONV <= table.RULES.keys() and driver._TF32_MATMUL <= table.RULES.keys()


def test_the_atomic_bound_covers_half_precision_sums_rounded_at_every_addition():
    """CUDA's upsampling backward adds with bfloat16 atomics (one false alarm in a decoder on an H100 under the
    CPU bound, which sums in float32): the atomic bound holds for a sum rounded to bfloat16 at every addition,
    and applies to such nodes only on CUDA."""
    rng = np.random.default_rng(1)
    terms = torch.from_numpy(rng.standard_normal((64, 500))).to(torch.bfloat16)
    acc = torch.zeros(500, dtype=torch.bfloat16)
    for t in terms:  # in the dtype, one rounding per addition
        acc = acc + t
    exact = terms.double().sum(0).numpy()
    mag = Mag.grad(terms.double().numpy()).sum(axis=0)
    err = np.abs(acc.double().numpy() - exact)
    assert np.all(err <= bounds.local_bound(mag, "bfloat16", atomic=True))
    assert np.any(err > bounds.local_bound(mag, "bfloat16"))
    assert all(t.startswith(driver._ATOMIC) for t in ("UpsampleBilinear2DBackward0", "CummaxBackward0"))
    assert not "MmBackward0".startswith(driver._ATOMIC)  # cuBLAS sums in float32: the usual bound
    loss, m = cnn(torch.bfloat16)
    assert not any(op.atomic for op in driver.read_ops(*traced(loss, m)).values())  # not on CPU


def test_tensorfloat32_applies_to_cuda_nodes_under_the_settings_that_enable_it(monkeypatch):
    loss, m = cnn(torch.float32)
    ops = driver.read_ops(*traced(loss, m))
    assert not any(op.tf32 for op in ops.values())  # on CPU never
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert driver._tf32_types() == driver._TF32_CONV  # PyTorch's defaults
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    try:
        torch.set_float32_matmul_precision("high")
        assert driver._tf32_types() == driver._TF32_MATMUL
    finally:
        torch.set_float32_matmul_precision("highest")
    assert driver._tf32_types() == frozenset()


def test_scalar_and_tensor_modes_agree_on_a_bias_before_batchnorm():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).float()
    loss = F.cross_entropy(m(torch.randn(5, 3)) * 1e4, torch.randint(0, 2, (5,)))
    a, b = lens.mirror(loss, params=m, mode="scalar"), lens.mirror(loss, params=m, mode="tensor")
    assert a.mode == "scalar" and a.ok and b.ok
    assert [(r["id"], r["status"], r["e2e_status"]) for r in a.rows] == \
        [(r["id"], r["status"], r["e2e_status"]) for r in b.rows]
    for ra, rb in zip(a.rows, b.rows):
        assert ra["bound"] == pytest.approx(rb["bound"], rel=1e-9)


# ----------------------------------------------------------------------------- values at 0

@pytest.mark.parametrize("f", [torch.sqrt, torch.log, torch.reciprocal, lambda w: w**-2, lambda w: 1 / w,
                               lambda w: (w * 1000).exp()], ids=["sqrt", "log", "reciprocal", "pow-2", "div", "exp"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_ieee_values_at_zero_match_pytorch_in_tensor_mode(f, dtype):
    w = torch.tensor([0.0, 1.0, 2.0], dtype=dtype, requires_grad=True)
    loss = f(w).sum()
    (want,) = torch.autograd.grad(loss, [w], retain_graph=True)
    rep = lens.mirror(loss, params={"w": w}, mode="tensor")
    assert rep.ok, rep.to_text()
    leaf = next(r for r in rep.rows if r["name"] == "w")
    assert leaf["status"] == "match" and leaf["exact"] or not np.isfinite(want.numpy()).all()
    np.testing.assert_array_equal(np.isinf(rep.grads["w"]), np.isinf(want.numpy()))
    np.testing.assert_array_equal(np.isnan(rep.grads["w"]), np.isnan(want.numpy()))
    assert np.isfinite(leaf["max_abs"])


def _exact_products(a, b):
    """a @ b for float32 matrices, each element the exactly rounded sum of exact float64 products (math.fsum)."""
    import math
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.array([[math.fsum(a[i] * b[:, j]) for j in range(b.shape[1])] for i in range(a.shape[0])])


def test_float32_magnitude_products_bound_the_exact_ones_within_the_documented_factor():
    """bounds.NOTE [float32 magnitudes]: a product of float32 magnitudes, kept rounded up, is never below the exact
    product and at most (1 + gamma_k(u32))^2 above it (plus k 2^-148 of underflow), also for subnormal gradients
    (scaled to normal numbers first) and gradients far from 1; a product that would overflow float32 runs in
    float64."""
    rng = np.random.default_rng(0)
    k = 700
    w = np.abs(rng.standard_normal((k, 9))).astype(np.float32)
    w[rng.random(w.shape) < 0.3] = 0
    for scale in (1.0, 1e-40, 1e-30, 1e25):  # 1e-40: subnormal float32 gradients
        g = (rng.standard_normal((12, k)) * scale).astype(np.float32)
        g[rng.random(g.shape) < 0.2] = 0
        out = Mag.grad(g, f32=True) @ Mag(None, None, 0, m32=w)
        assert out.m32 is not None and out.s32[1] > 0  # (computed in float32, kept rounded up)
        exact = _exact_products(np.abs(g), w)
        m = out.m
        assert np.all(m >= exact), scale
        assert np.all(m <= exact * (1 + gamma(k, bounds.UNIT_ROUNDOFF["float32"])) ** 2 * (1 + 2.0**-48)
                      + k * 2.0**-147 * out.s32[0]), scale
        b = bounds.local_bound(out, "float32")
        assert np.array_equal(b, bounds.bound_of(Mag(m, None, out.c), "float32").array()) or \
            np.all(b <= bounds.bound_of(Mag(m, None, out.c), "float32").array() * (1 + 2.0**-50))
    big = np.full((2, k), 3e37, dtype=np.float32)  # |g| @ |w| overflows float32: float64 instead
    with np.errstate(over="ignore"):  # (the mirror runs so)
        out = Mag(None, None, 0, m32=big) @ Mag(None, None, 0, m32=w)
    assert out.m32 is None and np.all(np.isfinite(out.m))
    assert np.array_equal(out.m, big.astype(np.float64) @ w.astype(np.float64))


def test_float64_magnitudes_never_take_the_float32_path():
    g = np.abs(np.random.default_rng(1).standard_normal((40, 300)))
    a = Mag.grad(g, f32=True)
    assert a.m32 is None
    out = a @ Mag.of(np.ones((300, 50)))
    assert out.m32 is None and np.array_equal(out.m, g @ np.ones((300, 50)))


def test_the_mirrors_own_gradient_by_linearity_in_float32_changes_no_verdict(monkeypatch):
    """A float32 node's own gradient is local + rule(d) with rule(d) in float32 (Step._mine32): the same verdicts as the
    rule run on the mirror's gradient in float64, the leaves' gradients equal far below the rounding allowed for them,
    bounds equal to within the float32 rounding of |rule(d)| (a planted hook still caught)."""
    def run(on):
        monkeypatch.setattr(driver, "_MINE32_MIN", 1 << 12 if on else 1 << 62)
        out = {}
        for name, change in (("plain", None), ("hook", lambda g: g * (1 + 1e-3))):
            loss, params = _big(torch.float32, change)
            out[name] = lens.mirror(loss, params=params, mode="tensor")
        return out
    calls = []
    orig = driver.Step._mine32
    monkeypatch.setattr(driver.Step, "_mine32", lambda self, *a: calls.append(1) or orig(self, *a))
    new, old = run(True), run(False)
    assert calls
    for name in new:
        assert [(r["id"], r["status"], r["e2e_status"]) for r in new[name].rows] == \
            [(r["id"], r["status"], r["e2e_status"]) for r in old[name].rows]
        for r, s in zip(new[name].rows, old[name].rows):
            if s["e2e_bound"]:
                assert r["e2e_bound"] == pytest.approx(s["e2e_bound"], rel=1e-6)
        allowed = {r["name"]: r["e2e_bound"] for r in old[name].rows if r["kind"] == "leaf"}
        for leaf, g in old[name].grads.items():  # (a bias before BatchNorm: 0 made of large terms, so E is the scale)
            assert np.abs(new[name].grads[leaf] - g).max() <= 1e-3 * allowed[leaf], leaf
    assert not new["hook"].ok and new["hook"].diverges_at == ["AddmmBackward0:1"]


def test_a_rule_that_rounds_to_a_dtype_takes_the_float64_path():
    """rule(d) = rule(G_mirror) - rule(G_torch) holds for linear rules only: one that rounds (a cast) steps aside."""
    d = np.ones((4, 3), dtype=np.float32)
    c = driver._LinearCtx("ToCopyBackward0", [d], {}, {}, [(4, 3)], [(4, 3)], False, ["bfloat16"])
    with pytest.raises(driver._NotLinear):
        table.RULES["ToCopyBackward0"](c)


def test_the_mirror_keeps_none_of_pytorchs_memory_after_it_returns():
    """Float32 saved tensors are read in PyTorch's own memory (no copy): nothing of them is kept after the mirror."""
    from autogradlens.mirror import conv
    loss, params = _big(torch.float32)
    rep = lens.mirror(loss, params=params, mode="tensor")
    assert rep.ok and conv._LAST_COLS == []
    assert all(g.flags.writeable and g.base is None for g in rep.grads.values())


def test_matrix_product_gradients_are_laid_out_as_pytorch_lays_them_out(monkeypatch):
    """A column-major factor (nn.Linear's transposed weight, a transposed input) gets its gradient column-major from
    PyTorch (mm_mat1/mat2_backward); the rule's local result comes out the same way, so the checks read the two in
    flat chunks rather than tiles (bench_mirror.py measures what that saves), with the same numbers either way."""
    ours = {}
    orig = driver.run_rule

    def recording(op, gs, saved, ctx=table.Ctx, scalar=False):
        out = orig(op, gs, saved, ctx, scalar)
        if ctx is table.Ctx and op.type in ("MmBackward0", "AddmmBackward0") and op.type not in ours:
            ours[op.type] = out
        return out
    monkeypatch.setattr(driver, "run_rule", recording)
    torch.manual_seed(0)
    w, h, b = (torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in ((7, 5), (5, 4), (7,)))
    for y in (h.t() @ w.t(), torch.addmm(b, h.t(), w.t()), F.linear(h.t(), w, b), h.t().contiguous() @ w.t()):
        ours.clear()
        theirs = {}
        y.grad_fn.register_hook(lambda gi, go: theirs.update(gi=gi))
        loss = (y * torch.randn(y.shape, dtype=torch.float64)).sum()
        assert lens.mirror(loss, mode="tensor").ok
        loss.backward()
        (got,) = ours.values()
        for o, t in zip(got, theirs["gi"]):
            if t is None or t.ndim < 2:
                continue
            assert np.allclose(o, t.numpy(), rtol=1e-12, atol=0)
            assert (o.strides[0] < o.strides[1]) == (t.stride(0) < t.stride(1)), (y.grad_fn, o.strides, t.stride())


def _token_model(dtype, pad=None, tied=True):
    """A big token table (5,000 x 32 > bounds.CHUNK elements) of which a batch names a few rows, tied to the head as
    GPT-2's is (the weight's gradient is then the sum of both)."""
    torch.manual_seed(0)
    emb = nn.Embedding(5000, 32, padding_idx=pad).to(dtype)
    idx = torch.randint(0, 5000, (3, 9))
    idx[0, :3] = idx[1, 0]  # a row named several times: its gradient is a sum
    if pad is not None:
        idx[2, 4] = pad
    h = torch.tanh(emb(idx))
    logits = h @ (emb.weight if tied else torch.randn(5000, 32, dtype=dtype)).t()
    return F.cross_entropy(logits.reshape(-1, 5000), torch.randint(0, 5000, (27,))), {"weight": emb.weight}


@pytest.mark.parametrize("dtype,pad,tied", [(torch.float64, None, True), (torch.float32, None, True),
                                            (torch.float32, 7, False), (torch.bfloat16, None, True)],
                         ids=["f64", "f32", "f32-padding", "bf16"])
def test_a_big_embedding_is_run_on_the_rows_its_indices_name_with_the_same_numbers(monkeypatch, dtype, pad, tied):
    """driver._few_rows: the rule, its magnitudes and the mirror's own gradient on the named rows and one other, spread
    over the table: every row, verdict and gradient as the run on the whole table gives them."""
    taken = []
    orig = driver._few_rows

    def spy(op, torch_out):
        got = orig(op, torch_out)
        if op.type == "EmbeddingBackward0":
            taken.append(got is not None)
        return got
    flows = []  # what reached the leaves: the mirror's gradient and its carried bound E

    def replay(*a):
        flows.append(driver.replay(*a))
        return flows[-1]
    monkeypatch.setattr(driver, "_few_rows", spy)
    monkeypatch.setattr(lens.mirror, "replay", replay)
    loss, params = _token_model(dtype, pad, tied)
    few = lens.mirror(loss, params=params, mode="tensor")
    assert taken == [True]
    monkeypatch.setattr(driver, "_few_rows", lambda op, torch_out: None)
    whole = lens.mirror(loss, params=params, mode="tensor")
    assert few.ok and whole.ok
    assert few.rows == whole.rows
    assert few.grads.keys() == whole.grads.keys() == {"weight"}
    assert few.grads["weight"].tobytes() == whole.grads["weight"].tobytes()
    assert flows[0].keys() == flows[1].keys()
    for k, f in flows[0].items():
        other = flows[1][k]
        assert f.g.tobytes() == other.g.tobytes() and np.asarray(f.e).tobytes() == np.asarray(other.e).tobytes()
    if pad is not None:
        assert not few.grads["weight"][pad].any()


def test_a_stray_value_in_a_row_no_index_names_is_a_mismatch(monkeypatch):
    """PyTorch's embedding gradient with a value in a row the indices do not name: _few_rows counts it and hands the
    node to the run on the whole table, whose local check reports it (as it would without _few_rows)."""
    loss, params = _token_model(torch.float32, tied=False)
    orig = driver.Step.__call__

    def planted(self, op, flows):
        if op.type == "EmbeddingBackward0":
            (t,) = self.seen_out[op.id]
            named = set(op.saved["indices"].reshape(-1).tolist())
            row = max(set(range(5000)) - named)  # (not the first unnamed row: _few_rows runs that one)
            t = t.clone()
            t[row, 3] = 0.25
            self.seen_out[op.id] = (t,)
        return orig(self, op, flows)
    monkeypatch.setattr(driver.Step, "__call__", planted)
    rep = lens.mirror(loss, params=params, mode="tensor")
    (row,) = [r for r in rep.rows if r["type"] == "EmbeddingBackward0"]
    assert row["status"] == "mismatch" and row["max_abs"] == 0.25
    assert not rep.ok
