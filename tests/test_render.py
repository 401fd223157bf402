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
    assert dot.startswith('digraph "autograd"') and "legend" in dot
    assert '"param:2.weight" [label="param:2.weight\\n(3, 5)"' in dot
    assert "NllLossBackward0:0  (root)" in dot
    assert 'label="mat2"' in dot and '"AddmmBackward0:0" -> "param:2.weight"' in dot  # mat2 = view of weight
    # ReLU result and Addmm mat1 share one storage: drawn once, two dashed edges to it
    relu_store = next(s["storage"] for s in t.graph.nodes["ReluBackward0:0"]["saved"])
    assert dot.count(f'\n  "saved:{relu_store}" [') == 1
    assert dot.count(f'-> "saved:{relu_store}"') == 2
    assert "ignore_index=-100" in dot and "reduction=mean" in dot


def test_hide_saved_and_attrs_and_rankdir(t):
    dot = t.to_dot(show_saved=False, show_attrs=False, rankdir="LR", legend=False)
    assert "saved:" not in dot and "ignore_index" not in dot and 'rankdir="LR"' in dot and "legend" not in dot


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
    assert '"param:0.weight"' in g.source and "legend" in g.source


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
