import warnings

import graphviz
import pytest
import torch
from models import MODELS, mlp_ce

import autogradlens as lens
from autogradlens import render


@pytest.fixture
def t():
    loss, m = mlp_ce()
    return lens.trace(loss, params=m)


def test_text_tree_shows_shared_nodes_once():
    x = torch.randn(3, requires_grad=True)
    h = x.exp()
    txt = lens.trace((h * h.sin()).sum()).to_text()
    assert txt.count("ExpBackward0:0") == 2 and "↺ shown above" in txt
    assert txt.splitlines()[0].startswith("SumBackward0:0") and "ROOT" in txt.splitlines()[0]


def test_dot_labels_params_shapes_saved_aliases_and_legend(t):
    dot = t.to_dot()
    assert dot.startswith('digraph "autograd"')
    # the legend lists the kinds this picture draws, and only those
    assert all(k in dot for k in ("root (loss)", "operation (grad_fn)", "parameter", "saved tensor"))
    assert "unnamed leaf" not in dot and "custom / opaque" not in dot and "collapsed module" not in dot
    assert '"param:2.weight" [label="param:2.weight\\n(3, 5)"' in dot
    assert "NllLossBackward0:0  (root)" in dot
    assert "mat2 = 2.weight" in dot  # Addmm saved a view of the weight: named, not drawn again
    # ReLU result and Addmm mat1 share one storage: described once (mat1), the other slot refers to it
    assert dot.count("mat1 (6, 5) float64 240 B") == 1 and "result = AddmmBackward0:0.mat1" in dot
    # one note per node that saved something, beside it (same rank), joined by a dashed line
    savers = [n for n, d in t.graph.nodes(data=True) if d["saved"]]
    for n in savers:
        assert f'{{ rank=same; "{n}" "saved:{n}" }}' in dot and f'"{n}" -> "saved:{n}" [style="dashed"' in dot
    assert dot.count('shape="note"') == len(savers)
    assert "ignore_index=-100" in dot and "reduction=mean" in dot


def test_hide_saved_and_attrs_and_rankdir(t):
    dot = t.to_dot(show_saved=False, show_attrs=False, rankdir="LR", legend=False)
    assert "saved:" not in dot and "ignore_index" not in dot and 'rankdir="LR"' in dot
    assert "operation (grad_fn)" not in dot and "bgcolor" not in dot  # no legend


def test_big_graphs_stay_compact():
    x = torch.randn(2, 3, requires_grad=True)
    h = x
    for _ in range(100):
        h = torch.relu(h * 1.5)
    t = lens.trace(h.sum())
    assert t.summary()["nodes"] > render.AUTO_LIMIT
    dot = t.to_dot()
    assert '"saved:' not in dot and "saved tensor slots not drawn" in dot and "folded into chains" in dot
    assert dot.count("->") < 20  # the chain is one box
    full = t.to_dot(show_saved=True, limit=None)
    assert '"saved:' in full and '"MulBackward0:99"' in full


def test_to_graphviz_is_a_digraph_with_the_same_statements(t):
    g = t.to_graphviz()
    assert isinstance(g, graphviz.Digraph)
    assert '"param:0.weight"' in g.source and "operation (grad_fn)" in g.source


@pytest.mark.parametrize("suffix", ["svg", "png", "pdf", "dot", "json", "txt"])
def test_render_by_suffix(t, tmp_path, suffix):
    p = t.render(tmp_path / f"g.{suffix}")
    data = p.read_bytes()
    assert len(data) > 100
    magic = {"svg": b"<svg", "png": b"\x89PNG", "pdf": b"%PDF", "dot": b"digraph", "json": b'"schema"',
             "txt": b"NllLoss"}[suffix]
    assert magic in data[:400]


def test_render_rejects_unknown_suffix(t, tmp_path):
    with pytest.raises(lens.LensError, match="use a .svg"):
        t.render(tmp_path / "g.bmp")


@pytest.mark.parametrize("suffix", ["svg", "png"])
def test_without_dot_matplotlib_draws_and_says_how_to_install(t, tmp_path, no_dot, suffix):
    with pytest.warns(UserWarning, match="apt-get install graphviz"):
        p = t.render(tmp_path / f"g.{suffix}")
    assert (b"<svg" if suffix == "svg" else b"\x89PNG") in p.read_bytes()[:400]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once only
        t.render(tmp_path / "again.svg")


def test_notebook_display_with_and_without_dot(t, no_dot):
    with pytest.warns(UserWarning):
        bundle = t._repr_mimebundle_()
    assert "<svg" in bundle["image/svg+xml"] and bundle["text/plain"].startswith("<Trace")


def test_notebook_display_as_found(t):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        svg = t._repr_mimebundle_()["image/svg+xml"]
    assert "<svg" in svg and "NllLossBackward0" in svg


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_renders_everywhere(name, tmp_path):
    loss, params = MODELS[name]()
    t = lens.trace(loss, params=params)
    assert t.to_text() and t.to_dot()
    fig = render.spec_to_matplotlib(render.trace_spec(t))
    assert fig.axes
    import matplotlib.pyplot as plt
    plt.close(fig)
