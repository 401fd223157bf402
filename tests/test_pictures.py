"""Pictures for learners: Value graphs (the lecture's draw_dot), gradients on the graph, module clusters and
collapsed big graphs, the matplotlib fallback, and the one drawing façade."""

import html
import re

import matplotlib
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from models import encoder, mlp_ce, transformer

import autogradlens as lens
from autogradlens import _deps, plots, render, report
from autogradlens.diffing import GraphDiff
from autogradlens.mirror import MirrorReport
from autogradlens.render import Drawable, _drawn
from autogradlens.tracing import Trace


def lecture_expression(V):
    a, b, c, f = V(2.0), V(-3.0), V(10.0), V(-2.0)
    L = (a * b + c) * f
    L.backward()
    return L, (a, b, c, f)


# ----------------------------------------------------------------------------- Value graphs

@pytest.mark.parametrize("engine", ["lens", "micrograd"])
def test_value_trace_carries_data_grad_label_and_draws_the_lecture_picture(engine):
    V = lens.Value if engine == "lens" else pytest.importorskip("micrograd.engine").Value
    L, (a, b, c, f) = lecture_expression(V)
    t = lens.trace(L)
    g = t.graph
    assert len(t) == 7 and t.root == "*:0"
    for _, d in g.nodes(data=True):
        assert {"data", "grad", "label", "type", "module", "name", "is_leaf", "saved"} <= set(d)
    assert sorted((d["data"], d["grad"]) for _, d in g.nodes(data=True) if d["is_leaf"]) == \
        sorted((v.data, v.grad) for v in (a, b, c, f))
    assert {d["type"] for _, d in g.nodes(data=True)} == {"*", "+", "leaf"}
    dot = t.to_dot()
    assert 'rankdir="LR"' in dot and "data -8.0000 | grad 1.0000" in dot and 'shape="record"' in dot
    assert dot.count('"*:0/op" [label="*"') == 1  # the small op node between
    assert t.to_dot() == lens.trace(L).to_dot()  # deterministic
    assert "*:0  data=-8.0000 grad=1.0000  ROOT" in t.to_text()


def test_value_labels_are_read_when_the_value_has_them():
    L, (a, *_rest) = lecture_expression(lens.Value)
    try:
        a.label = "a"
    except AttributeError:  # a Value without labels: the picture names it by id
        assert lens.trace(L).graph.nodes["leaf:1"]["label"] is None
        return
    t = lens.trace(L)
    [nid] = [n for n, d in t.graph.nodes(data=True) if d["label"] == "a"]
    assert "{ a | data 2.0000 | grad 6.0000 }" in t.to_dot()


def test_value_a_times_a_and_deep_chains():
    a = lens.Value(3.0)
    y = a
    for _ in range(5_000):  # iterative walk: no recursion limit (1000)
        y = y + 0.0
    (y * a).backward()
    t = lens.trace(y * a)
    assert len(t) > 5_000 and isinstance(lens.trace(a * a).to_dot(), str)


def test_value_trace_rejects_mixed_roots():
    with pytest.raises(lens.LensError, match="expected a Value"):
        lens.trace([lens.Value(1.0), 3.0])


def test_value_picture_renders(tmp_path):
    L, _ = lecture_expression(lens.Value)
    assert b"grad 6.0000" in lens.trace(L).render(tmp_path / "v.svg").read_bytes()


# ----------------------------------------------------------------------------- gradients on the graph

def test_grads_true_leaves_every_grad_as_it_was_and_matches_pytorch():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    m[0].weight.grad = torch.full_like(m[0].weight, 7.0)
    before = m[0].weight.grad
    h = m[1](m[0](x))
    h.retain_grad()
    loss = m[2](h).pow(2).sum()
    t = lens.trace(loss, params=m, grads=True)
    assert m[0].weight.grad is before and bool((before == 7).all()) and m[2].weight.grad is None
    assert h.grad is None  # the retain_grad() tensor too
    ref = torch.autograd.grad(loss, [m[0].weight, h], retain_graph=True)
    gw = t.graph.nodes["param:0.weight"]["grad"]
    assert gw["norm"] == pytest.approx(ref[0].norm().item(), rel=1e-12)
    assert gw["abs_max"] == pytest.approx(ref[0].abs().max().item(), rel=1e-12)
    assert gw["mean"] == pytest.approx(ref[0].mean().item(), rel=1e-12)
    assert "values" not in gw  # 12 elements
    tanh = next(n for n, d in t.graph.nodes(data=True) if d["type"] == "TanhBackward0")
    assert t.graph.nodes[tanh]["grad"]["norm"] == pytest.approx(ref[1].norm().item(), rel=1e-12)
    bias = t.graph.nodes["param:2.bias"]["grad"]
    assert len(bias["values"]) == 2
    root = t.graph.nodes[t.root]["grad"]
    assert root["values"] == 1.0 and "grad 1.0000" in t.to_dot() and "‖grad‖" in t.to_dot()
    loss.backward()  # the graph is still there, and backward gives PyTorch's numbers
    assert torch.allclose(m[0].weight.grad - 7.0, ref[0])


def test_grads_colour_nodes_by_log_magnitude():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    t = lens.trace((x * 1000.0).sum() + (x * 1e-3).sum(), params={"x": x}, grads=True)
    cols, (lo, hi) = render.grad_colors(t.graph)
    assert hi - lo > 3 and len(set(cols.values())) >= 2  # |grad x| = 1000, the rest 1
    dot = t.to_dot()
    assert "colour: ‖grad‖, log scale" in dot and "1e+03" in dot  # the scale as the legend, from 1 to 1000
    assert "operation (grad_fn)" not in dot  # fills are gradient colours, not kinds
    assert lens.trace((x * 2).sum()).graph.nodes["AccumulateGrad:0"]["grad"] is None  # grads=False: the key is None


def test_gradient_flow_figure_from_trace_module_and_dict():
    loss, m = mlp_ce()
    t = lens.trace(loss, params=m, grads=True)
    fig = plots.gradient_flow(t)
    assert isinstance(fig, matplotlib.figure.Figure) and fig.axes[0].get_yscale() == "log"
    assert [x.get_text() for x in fig.axes[0].get_xticklabels()] == ["0.weight", "2.weight"]
    loss.backward()
    assert plots.gradient_flow({"trace": t, "module": m}).axes
    with pytest.raises(lens.LensError, match="grads=True"):
        plots.gradient_flow(lens.trace(F.cross_entropy(m(torch.randn(2, 4, dtype=torch.float64)),
                                                       torch.tensor([0, 1])), params=m))
    with pytest.raises(TypeError):
        plots.gradient_flow("model")
    fig = plots.activations(nn.Sequential(nn.Linear(3, 4), nn.Tanh()), torch.randn(8, 3))
    assert "saturated" in fig.axes[0].get_title()


def _text_sizes(fig) -> list[float]:
    from matplotlib.text import Text

    return [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def test_every_figure_fits_a_notebook_column_at_natural_size_with_readable_text():
    """Each plot as a notebook shows it (its PNG at 100 dpi): at most 840 px wide (the column is 848), no text
    under 8 pt (11 px), a panel per layer for activations, curves that lie on each other told apart."""
    import io

    from matplotlib.image import imread

    from autogradlens.training import History

    torch.manual_seed(0)
    deep = nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(16, 16), nn.Sigmoid())], nn.Linear(16, 2))
    loss, m = mlp_ce()
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    runs = {}
    for name, make in (("SGD", lambda p: torch.optim.SGD(p, lr=0.1)), ("Adam", lambda p: torch.optim.Adam(p))):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        opt, h = make(net.parameters()), History(name)
        with lens.watch(net, optimizer=opt) as w:
            for _ in range(12):
                opt.zero_grad()
                step_loss = F.cross_entropy(net(x), y)
                step_loss.backward()
                opt.step()
                h.loss.append(step_loss.item())
        h.watch, h.test_acc = w, [0.5, 0.6]
        runs[name] = h
    ws = {h.optimizer: h.watch for h in runs.values()}
    figs = {"activations": plots.activations(deep, torch.randn(32, 16)),
            "gradient_flow": plots.gradient_flow(lens.trace(loss, params=m, grads=True), weights_only=False),
            "training_curves": plots.training_curves(runs), "grad_norms": plots.grad_norms(ws),
            "update_ratios": plots.update_ratios(ws), "saved_bytes": plots.saved_bytes(ws["Adam"]),
            "step_sizes": plots.step_sizes(ws)}
    for name, fig in figs.items():
        width = imread(io.BytesIO(fig._repr_png_())).shape[1]
        assert width <= 840 and min(_text_sizes(fig)) >= plots.FONT, (name, width, min(_text_sizes(fig)))
        for ax in fig.axes:  # a legend beside or below the data, never over it
            leg = ax.get_legend()
            assert leg is None or leg.get_bbox_to_anchor().x0 >= ax.get_window_extent().x0, name
    assert len([a for a in figs["activations"].axes if a.get_visible()]) == 8  # one panel per layer
    sgd = [line.get_label() for line in figs["step_sizes"].axes[0].get_lines() if line.get_label().startswith("SGD")]
    assert sgd == ["SGD (every parameter)"]  # SGD's one step size: one line, not four lying on each other
    styles = {line.get_label(): line.get_linestyle() for line in figs["grad_norms"].axes[0].get_lines()
              if not line.get_label().startswith("_")}
    assert styles["0.weight"] != styles["0.bias"]


# ----------------------------------------------------------------------------- modules and big graphs

def test_modules_context_stamps_nodes_and_removes_its_hooks():
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    with lens.modules(m):
        loss = m(torch.randn(2, 3)).sum()
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    t = lens.trace(loss, params=m)
    mods = {d["type"]: d["module"] for _, d in t.graph.nodes(data=True) if not d["is_leaf"]}
    assert mods["TanhBackward0"] == "1" and mods["SumBackward0"] is None
    assert {d["module"] for n, d in t.graph.nodes(data=True) if d["type"] == "AddmmBackward0"} == {"0", "2"}
    with pytest.raises(ZeroDivisionError), lens.modules(m):
        _ = 1 / 0
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    with pytest.raises(lens.LensError, match="nn.Module"):
        with lens.modules("model"):
            pass


def test_modules_from_parameters_alone():
    loss, m = transformer()
    t = lens.trace(loss, params=m)
    mods = {d["module"] for _, d in t.graph.nodes(data=True)}
    assert {"layers.0.self_attn", "layers.0.linear1", "layers.0.norm1", "layers.0"} <= mods
    bmm = [d["module"] for _, d in t.graph.nodes(data=True) if d["type"] == "BmmBackward0"]
    assert bmm and set(bmm) == {"layers.0.self_attn"}  # between out_proj and in_proj: the attention itself


def _transformer2():
    torch.manual_seed(0)
    return encoder(8, 2, 16, 2)


@pytest.mark.parametrize("record", [False, True])
def test_a_two_layer_transformer_collapses_into_modules_and_fits(record):
    m = _transformer2()
    x = torch.randn(2, 4, 8)
    if record:
        with lens.modules(m):
            loss = m(x).pow(2).mean()
    else:
        loss = m(x).pow(2).mean()
    t = lens.trace(loss, params=m)
    assert len(t) > 140
    spec = render.trace_spec(t)
    boxes = [n for n, s in _drawn(spec) if s["kind"] == "box"]
    assert len(_drawn(spec)) <= render.BOXES + 10 and boxes
    assert "collapsed modules" in spec["label"] and "saved tensor slots" in spec["label"]
    assert any("layers.0.self_attn" in s["label"] for _, s in _drawn(spec) if s["kind"] == "box")
    full = render.trace_spec(t, depth=99)
    assert len(_drawn(full)) > len(_drawn(spec)) and not [1 for _, s in _drawn(full) if s["kind"] == "box"]
    if _deps.dot_available():  # shown in a notebook's column: readable there (the browser test measures it too)
        f = render.fit(t)
        assert f.fits and f.natural * f.scale <= render.COLUMN and f.text_px >= render.MIN_TEXT_PX


def test_huge_chains_fold_and_labels_carry_full_ids():
    x = torch.randn(2, requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0001
    t = lens.trace(y.sum())
    spec = render.trace_spec(t)
    assert len(_drawn(spec)) <= render.BOXES + 2 and "folded into chains" in spec["label"]
    assert any("MulBackward0:0 … MulBackward0:4999" in s["label"] for _, s in _drawn(spec))
    assert max(len(line) for line in t.to_text().splitlines()) < 200  # linear: the indentation restarts
    loss, mm = mlp_ce()
    dot = lens.trace(loss, params=mm).to_dot()
    assert 'label="AddmmBackward0:1\\n' in dot and 'id="node-AddmmBackward0:1"' in dot


def test_multi_output_edges_are_labelled_with_input_nr():
    x = torch.randn(4, 3, requires_grad=True)
    a, b = x.split(2)
    dot = lens.trace((b * 2 + a).sum()).to_dot()
    assert re.search(r'-> "SplitBackward0:0" \[[^]]*label=":1"', dot)
    assert re.search(r'-> "SplitBackward0:0" \[[^]]*label=":0"', dot)


# ----------------------------------------------------------------------------- fallback and façade

def test_matplotlib_fallback_draws_on_a_figure_without_touching_the_backend(no_dot):
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    backend, figs = matplotlib.get_backend(), plt.get_fignums()
    loss, m = mlp_ce()
    t = lens.trace(loss, params=m)
    spec = render.trace_spec(t)
    fig = render.spec_to_matplotlib(spec)
    assert type(fig) is matplotlib.figure.Figure and matplotlib.get_backend() == backend
    assert plt.get_fignums() == figs
    arrows = [p for p in fig.axes[0].patches if isinstance(p, FancyArrowPatch)]
    graph_edges = [e for e in spec["edges"] if e[2].get("style") != "dashed"]
    assert sum(a.get_arrowstyle().__class__.__name__ == "CurveFilledB" for a in arrows) == len(graph_edges)
    texts = {x.get_text() for x in fig.axes[0].texts}
    assert any("mat1 (6, 5)" in x and "mat2 = 2.weight" in x for x in texts)  # the slots, in the node's note
    pos = {x.get_text(): x.get_position() for x in fig.axes[0].texts}
    notes = [s for _, s in spec["nodes"] if s["kind"] == "saved"]
    assert notes
    for n in notes:  # each note beside (same row, next slot) the first node that saved it
        near, note = pos[dict(_drawn(spec))[n["near"]]["label"]], pos[n["label"]]
        assert note[1] == near[1] and 0 < note[0] - near[0] < 5
    L, _ = lecture_expression(lens.Value)
    vfig = render.spec_to_matplotlib(render.trace_spec(lens.trace(L)))
    assert any("data -8.0000 | grad 1.0000" in x.get_text() for x in vfig.axes[0].texts)


def test_missing_dot_warning_points_at_the_callers_line(no_dot):
    loss, m = mlp_ce()
    t = lens.trace(loss, params=m)
    with pytest.warns(UserWarning, match="Graphviz") as rec:
        t.to_svg()
    assert rec[0].filename == __file__


def test_one_facade_for_trace_mirror_report_and_diff(monkeypatch, tmp_path):
    for cls in (Trace, MirrorReport, GraphDiff):
        assert issubclass(cls, Drawable)
        for name in ("to_dot", "to_graphviz", "to_svg", "render", "_repr_mimebundle_"):
            assert name not in vars(cls), f"{cls.__name__}.{name} is written twice"
    # a new output format is one entry
    monkeypatch.setitem(render.FORMATS, "nodes", lambda spec, name: str(len(_drawn(spec))).encode())
    loss, m = mlp_ce()
    t = lens.trace(loss, params=m)
    objs = [t, lens.mirror(loss, params=m), lens.diff(t, t)]
    for i, o in enumerate(objs):
        assert int(o.render(tmp_path / f"{i}.nodes").read_text()) > 5
    bundle = t._repr_mimebundle_()
    assert "<svg" in bundle["image/svg+xml"]
    assert "<table" in objs[1]._repr_mimebundle_()["text/html"]
    assert "<svg" in objs[2]._repr_mimebundle_()["text/html"]


def test_report_links_timeline_rows_to_svg_nodes():
    loss, m = mlp_ce()
    svg = lens.trace(loss, params=m).to_svg()
    link = report.link("AddmmBackward0:1")
    target = re.search(r'href="#([^"]+)"', link).group(1)
    assert f'id="{target}"' in html.unescape(svg)  # Graphviz writes '-' as &#45;, which a browser reads back
    assert report.link(None) == ""
    table = report.table([{"node": link, "x": "<b>"}], html_columns=("node",))
    assert link in table and "&lt;b&gt;" in table


def test_value_and_gradient_traces_round_trip_through_json():
    L, _ = lecture_expression(lens.Value)
    t = lens.trace(L)
    assert Trace.from_json(t.to_json()).to_dot() == t.to_dot()
    x = torch.randn(3, requires_grad=True)
    tg = lens.trace((x * x).sum(), params={"x": x}, grads=True)
    back = Trace.from_json(tg.to_json())
    assert back.graph.nodes["param:x"]["grad"] == tg.graph.nodes["param:x"]["grad"]
    assert back.to_dot() == tg.to_dot()
    with pytest.raises(lens.LensError, match="carries its own label"):
        lens.trace(L, params={"x": x})


def test_grads_after_backward_says_what_to_do():
    x = torch.randn(3, requires_grad=True)
    loss = (x.exp() * 2).sum()
    loss.backward()
    with pytest.raises(lens.LensError, match="before backward") as e:
        lens.trace(loss, grads=True)
    assert isinstance(e.value, RuntimeError)
    assert lens.trace(loss).graph.nodes["ExpBackward0:0"]["grad"] is None  # structure still readable


def test_a_collapsed_box_shows_the_worst_verdict_inside_it():
    m = _transformer2()
    x = torch.randn(2, 4, 8)
    with lens.modules(m):
        loss = m(x).pow(2).mean()
    t = lens.trace(loss, params=m)
    inside = next(n for n, d in t.graph.nodes(data=True) if d["module"] == "layers.1.self_attn")
    spec = render.trace_spec(t, colors={inside: render.COLORS["removed"]})
    boxes = {s["label"].split("\n")[0].split(" · ")[0]: s["fillcolor"] for _, s in _drawn(spec)
             if s["kind"] == "box"}
    assert boxes["layers.1.self_attn"] == render.COLORS["removed"]
    assert boxes["layers.0.self_attn"] == render.COLORS["box"]
