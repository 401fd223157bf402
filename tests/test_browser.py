"""The pictures as a learner sees them: each notebook display opened in a real headless Chromium, in the output
column of JupyterLab at a 1280×900 window (848 px), then measured: nothing overflows the column sideways and
nearly all text is drawn at 8 px or more. (The tutorials' pictures: test_tutorials.py; the report: test_demo.py.)"""

import gallery
import pytest
from browser import COLUMN, problems

from autogradlens import render
from autogradlens.examples import makemore


def readable(m, px: float = 8.0) -> None:
    """What every display promises in the column."""
    assert m["pics"], "the display shows a picture"
    assert m.width <= COLUMN and not problems(m, px), (m.summary(), problems(m, px))


def texts(m) -> set:
    return {t["text"] for t in m["texts"]}


@pytest.mark.parametrize("name", sorted(gallery.CASES))
def test_the_pictures_learners_look_at_fit_a_notebook_column(name, browser):
    m = browser.notebook(gallery.CASES[name]())
    readable(m)
    shown = texts(m)
    if name.startswith("lecture"):  # the lecture's draw_dot: label | data | grad records, names first
        labels = {"lecture_expression": {"a", "b", "c", "d", "e", "f", "L"},
                  "lecture_neuron": {"x1", "w1", "x1*w1 + x2*w2", "n", "o"},
                  "lecture_neuron_exp": {"x1", "w2", "n", "o", "exp"}}[name]
        assert labels <= shown and "grad 1.0000" in shown
    if name == "makemore_trace":  # the lecture's names come first on their nodes
        assert {"logprobs", "counts_sum_inv", "bnvar_inv", "hpreact", "emb"} <= shown
    if name in ("deep_bn_mlp", "resnet18_trace", "makemore_trace"):  # gradient colours, their scale as legend
        assert "colour: ‖grad‖, log scale" in shown
    if name == "deep_bn_mlp":  # every BatchNorm node drawn (it fits), named by its module
        assert sum(t.startswith("NativeBatchNormBackward0:") for t in shown) == 8
        assert any(t.endswith("· BatchNorm1d") for t in shown)
    if name.startswith("resnet18"):  # blocks collapse, titled by path and class
        assert any("layer1.0 · BasicBlock" in t for t in shown)


def test_a_graded_picture_colours_marks_and_names_what_the_learner_wrote(browser):
    """What lens.check draws: the learner's names first, a colour per verdict (and a legend of only those
    drawn), the first wrong line marked with a thick border; the picture fits the column."""
    import autogradlens as lens

    loss, names = makemore()
    t = lens.trace(loss, params=names)
    by_name = {d["name"]: n for n, d in t.graph.nodes(data=True) if d["name"]}
    right, wrong, inherits = "#a8e6a3", "#f4a6a6", "#ffe08a"
    colors = {by_name[k]: right for k in ("logprobs", "probs", "counts_sum_inv")}
    colors[by_name["counts_sum"]] = wrong
    colors[by_name["counts"]] = inherits
    legend = [("right", right, "box"), ("wrong", wrong, "box"), ("inherits", inherits, "box"),
              ("unknown", "#e5e5e5", "box")]

    class Graded(render.Drawable):
        def _spec(self, **opts):
            return render.trace_spec(t, colors=colors, legend=legend, mark={by_name["counts_sum"]: "first wrong"},
                                     names={by_name["logprobs"]: "dlogprobs"}, **opts)

    g = Graded()
    spec = g._spec()
    items = [x[0] for x in render.legend_items(spec)]
    assert {"right", "wrong", "inherits", "thick border: first wrong"} <= set(items) and "unknown" not in items
    marked = [s for _, s in render._drawn(spec) if s.get("color") == render.MARK]
    assert len(marked) == 1 and marked[0]["label"].startswith("first wrong\ncounts_sum\n")
    assert "dlogprobs" in dict(render._drawn(spec))[by_name["logprobs"]]["label"].split("\n")[0]
    m = browser.notebook(g)
    readable(m)
    assert {"dlogprobs", "first wrong", "right", "wrong", "inherits", "counts_sum"} <= texts(m)
    # a Value graph graded the same way (the lecture's hand-set grads)
    v = gallery.lecture_expression()
    leaf = next(n for n, d in v.graph.nodes(data=True) if d["label"] == "a")
    vspec = render.trace_spec(v, colors={leaf: wrong}, legend=legend, mark={leaf: "first wrong"})
    assert [x[0] for x in render.legend_items(vspec)] == ["wrong", "thick border: first wrong"]
    assert dict(render._drawn(vspec))[leaf]["label"].startswith("{ first wrong: a | data 2.0000")


def test_a_diff_fits_the_column_side_by_side(browser):
    import autogradlens as lens
    from autogradlens.examples import neuron, neuron_formula

    o, p = neuron()
    f, q = neuron_formula()
    readable(browser.notebook(lens.diff(lens.trace(o, params=p), lens.trace(f, params=q))))


def test_lens_check_pictures_fit_the_column(browser):
    """lens.check's display: makemore part 4's exercise with a planted bug (the learner's names, coloured by
    status, the first wrong line outlined) and the micrograd lecture's gradients set by hand."""
    import autogradlens as lens
    from autogradlens.examples import makemore_exercise

    loss, grads, names = makemore_exercise("one_path")
    rep = lens.check(loss, grads, params=names)
    m = browser.notebook(rep)
    readable(m)
    assert rep.first_wrong in texts(m) and "logprobs" in texts(m)
    vs = gallery.lecture_values(lens.Value)
    gallery.by_hand(vs, a=-3.0)  # a.grad forgets e.grad: b.data, the local derivative only
    m = browser.notebook(lens.check(vs["L"]))
    readable(m)
    assert {"first wrong: a", "b", "L"} <= texts(m)  # the marked value says so on its first line
