import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from models import MODELS

import autogradlens as lens
from autogradlens import cli
from autogradlens.examples import neuron, neuron_formula


def net(act=nn.ReLU, batch=16, extra=False, train=True):
    torch.manual_seed(0)
    layers = [nn.Linear(8, 6), nn.BatchNorm1d(6), act(), nn.Dropout(0.3)]
    if extra:
        layers += [nn.Linear(6, 6), act()]
    m = nn.Sequential(*layers, nn.Linear(6, 3)).train(train)
    return lens.trace(F.cross_entropy(m(torch.randn(batch, 8)), torch.randint(0, 3, (batch,))), params=m)


def types(t, ids):
    return sorted(t.graph.nodes[n]["type"] for n in ids)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_same_program_twice_and_self_are_empty(name):
    torch.manual_seed(0)
    a = lens.trace(*MODELS[name]()[:1], params=None)
    assert lens.diff(a, a).is_empty
    torch.manual_seed(0)
    loss1, p1 = MODELS[name]()
    torch.manual_seed(0)
    loss2, p2 = MODELS[name]()
    d = lens.diff(lens.trace(loss1, params=p1), lens.trace(loss2, params=p2))
    assert d.is_empty, d.to_text()
    assert len(d.matched) == len(a)


def test_tanh_vs_formula():
    (o, p), (f, q) = neuron(), neuron_formula()
    d = lens.diff(lens.trace(o, params=p), lens.trace(f, params=q))
    assert [(c["a"], c["b"]) for c in d.changed] == [("TanhBackward0:0", "DivBackward0:0")]
    assert d.changed[0]["what"]["type"] == ("TanhBackward0", "DivBackward0")
    assert types(d.b, d.added) == ["AddBackward0", "ExpBackward0", "MulBackward0", "SubBackward0"]
    assert d.removed == []
    # every parameter leaf matched to its namesake
    assert {("param:" + k, "param:" + k) for k in p} <= set(d.matched)


def test_train_vs_eval():
    d = lens.diff(net(), net(train=False))
    assert types(d.a, d.removed) == ["MulBackward0"] and d.added == []  # dropout disappears
    (c,) = d.changed
    assert c["a"].startswith("NativeBatchNormBackward0")
    assert c["what"]["attrs"]["training"] == (True, False)
    saved_a, saved_b = c["what"]["saved"]
    assert ("result1", (6,)) in [(n, s) for n, s, _, _ in saved_a]
    assert ("result1", (0,)) in [(n, s) for n, s, _, _ in saved_b]
    s = d.summary()
    assert s["saved_bytes_b"] < s["saved_bytes_a"]


def test_relu_vs_gelu():
    d = lens.diff(net(), net(nn.GELU))
    (c,) = d.changed
    assert c["what"]["type"] == ("ReluBackward0", "GeluBackward0") and not d.added and not d.removed


def test_x_plus_x_vs_two_x():
    x = torch.randn(3, requires_grad=True)
    d = lens.diff((x + x).sum(), (2 * x).sum())  # root tensors, traced on the fly
    assert [c["what"]["type"] for c in d.changed] == [("AddBackward0", "MulBackward0")]
    assert not d.added and not d.removed


def test_larger_batch_changes_shapes_only():
    d = lens.diff(net(), net(batch=32))
    assert not d.added and not d.removed and len(d.matched) == len(d.a)
    assert all(set(c["what"]) <= {"shape", "saved", "attrs"} for c in d.changed)
    assert any(c["what"].get("shape") == ((16, 6), (32, 6)) for c in d.changed)


def test_layer_added():
    d = lens.diff(net(), net(extra=True))
    assert d.removed == []
    assert types(d.b, d.added) == ["AccumulateGrad", "AccumulateGrad", "AddmmBackward0", "ReluBackward0",
                                   "TBackward0"]
    assert {c["what"]["param"] for c in d.changed} == {("4.bias", "6.bias"), ("4.weight", "6.weight")}


def test_symmetric():
    a, b = net(), net(extra=True, train=False)
    ab, ba = lens.diff(a, b), lens.diff(b, a)
    assert sorted(ab.removed) == sorted(ba.added) and sorted(ab.added) == sorted(ba.removed)
    assert sorted(ab.matched) == sorted((y, x) for x, y in ba.matched)


def chain(n, change_at=None):
    torch.manual_seed(0)
    ws = [torch.randn(8, 8, requires_grad=True) for _ in range(n)]
    h = torch.randn(4, 8, requires_grad=True)
    for i, w in enumerate(ws):
        h = h @ w
        h = torch.tanh(h) if i == change_at else torch.relu(h)
    return lens.trace(h.sum(), params={f"w{i}": w for i, w in enumerate(ws)})


def test_five_thousand_nodes_one_op_differs():
    """Correctness at size; the time it takes is measured by benchmarks/bench_diff.py, not asserted here."""
    a, b = chain(1667), chain(1667, change_at=900)
    assert len(a) >= 5000
    d = lens.diff(a, b)
    assert [(d.a.graph.nodes[c["a"]]["type"], d.b.graph.nodes[c["b"]]["type"]) for c in d.changed] == \
        [("ReluBackward0", "TanhBackward0")]
    assert not d.added and not d.removed


def test_renderers(tmp_path, no_dot):
    d = lens.diff(chain(3), chain(3, change_at=1))
    assert "cluster_0" in d.to_dot() and "cluster_1" in d.to_dot() and "#ffc98b" in d.to_dot()
    assert 'label="a"' in d.to_graphviz().source
    with pytest.warns(UserWarning, match="Graphviz"):
        html = d.to_html()
    assert html.startswith("<!doctype html>") and "<svg" in html and "TanhBackward0" in html
    for suffix in ("html", "svg", "png", "dot", "txt"):
        assert d.render(tmp_path / f"d.{suffix}").stat().st_size > 100
    with pytest.raises(ValueError, match="use a .svg, .png, .pdf, .dot, .html or .txt file"):
        d.render(tmp_path / "d.bmp")
    assert "changed" in d._repr_html_() and "changed" in d.to_text()


def test_renderers_with_dot_if_present(tmp_path):
    d = lens.diff(chain(2), chain(2, change_at=0))
    svg = d.to_svg()
    assert "<svg" in svg and "TanhBackward0" in svg


def test_bad_input():
    with pytest.raises(TypeError, match="takes a Trace .* or a tensor"):
        lens.diff("a.json", chain(1))


def test_cli_round_trip_through_json(tmp_path, capsys):
    prog = tmp_path / "progs.py"
    prog.write_text("import torch\n"
                    "def relu():\n    x = torch.ones(3, requires_grad=True)\n    return torch.relu(x).sum(), {'x': x}\n"
                    "def tanh():\n    x = torch.ones(3, requires_grad=True)\n"
                    "    return torch.tanh(x).sum(), {'x': x}\n")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert cli.main(["trace", f"{prog}:relu", "-o", str(a)]) == 0
    assert cli.main(["trace", f"{prog}:tanh", "-o", str(b)]) == 0
    out = tmp_path / "d.html"
    assert cli.main(["diff", str(a), str(b), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ReluBackward0:0 -> TanhBackward0:0" in text and out.read_text().startswith("<!doctype html>")
    assert cli.main(["diff", str(a), f"{prog}:relu"]) == 0
    assert "the graphs are the same" in capsys.readouterr().out
    assert cli.main(["diff", str(a), f"{prog}:missing"]) == 2
    assert "has no function 'missing'" in capsys.readouterr().err


def test_cli_mirror(capsys):
    assert cli.main(["mirror", "autogradlens.examples:lecture_expression"]) == 0
    out = capsys.readouterr().out
    assert "ok: 28 match" in out
