"""lens.check grades the learner's own backward pass: makemore part 4's exercise (tests/lecture.py) and the micrograd
lecture's gradients set by hand, with each kind of bug planted, in both orders (before any backward, and after
loss.backward() as the lecture does), against PyTorch's .grad and karpathy's micrograd."""

import math

import pytest
import torch
import torch.nn.functional as F
from gallery import by_hand, lecture_values
from micrograd.engine import Value as MicrogradValue

import autogradlens as lens
from autogradlens.errors import LensError
from autogradlens.examples import MAKEMORE_BUGS as BUGS
from autogradlens.examples import _makemore, makemore_backward

# bug -> (first wrong line, its diagnosis)
EXPECTED = {"sign": ("logprobs", "sign"), "broadcast": ("counts_sum_inv", "broadcast"),
            "one_path": ("counts", "one_path"), "scale": ("bndiff2", "scale"), "transpose": ("W1", "transpose")}
ORDER = ["logprobs", "probs", "counts_sum_inv", "counts_sum", "counts", "norm_logits", "logit_maxes", "logits"]


def forward(dtype=torch.float32):
    """The lecture's network and seed, the intermediates retained (names.txt replaced by random characters)."""
    return _makemore(32, 10, 64, 3, 27, 2147483647, dtype, True)


def _exercise(order, bug=None, dtype=torch.float32):
    loss, t, Xb, Yb = forward(dtype)
    if order == "after":
        loss.backward()
    d = makemore_backward(t, Xb, Yb, bug)
    grads_before = {k: (v.grad, None if v.grad is None else v.grad.clone()) for k, v in t.items()
                    if v.is_leaf or v.retains_grad}
    rep = lens.check(loss, {k: (t[k], v) for k, v in d.items()})
    for k, (g, val) in grads_before.items():  # no .grad changed: the same objects, the same numbers
        assert t[k].grad is g and (g is None or torch.equal(g, val)), k
    return rep, loss, t, d


@pytest.mark.parametrize("order", ["before", "after"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_the_lectures_solution_is_all_right_and_exact_means_what_cmp_means(order, dtype):
    rep, loss, t, d = _exercise(order, dtype=dtype)
    assert rep.ok and rep.first_wrong is None, rep.to_text()
    if order == "before":
        loss.backward()
    for r in rep.rows:  # cmp's exact: torch.all(dt == t.grad)
        assert r["exact"] == bool(torch.all(d[r["name"]] == t[r["name"]].grad)), r["name"]
    assert [r["name"] for r in rep.rows][:len(ORDER)] == ORDER  # backward order, the loss's side first
    assert {r["name"] for r in rep.rows} == set(d)


@pytest.mark.parametrize("order", ["before", "after"])
@pytest.mark.parametrize("bug", BUGS)
def test_a_planted_bug_is_the_first_wrong_line_with_its_diagnosis(order, bug):
    rep, *_ = _exercise(order, bug)
    name, diagnosis = EXPECTED[bug]
    row = next(r for r in rep.rows if r["name"] == name)
    assert rep.first_wrong == name and not rep.ok, rep.to_text()
    assert row["status"] == "wrong" and row["diagnosis"] == diagnosis and row["hint"]
    before = [r for r in rep.rows[:rep.rows.index(row)]]
    assert all(r["status"] == "right" for r in before)
    after = rep.rows[rep.rows.index(row) + 1:]
    if order == "before":  # the graph is alive: every later line is judged on its own, and they are all right
        assert all(r["status"] in ("right", "inherits") or "shape is wrong" in r["hint"] for r in after), \
            rep.to_text()
        assert any(r["status"] == "inherits" for r in after) or bug == "transpose"
    else:  # after backward: what can be told is told, the rest says how to know more
        assert all(r["status"] in ("right", "inherits", "unknown") for r in after), rep.to_text()
        assert all("check before loss.backward()" in r["hint"] or "shape is wrong" in r["hint"]
                   for r in after if r["status"] == "unknown")
    if bug == "scale":
        assert row["factor"] == pytest.approx(31 / 32, rel=1e-6) and "31/32" in row["hint"]
    if bug == "broadcast":
        assert "(32, 1)" in row["hint"] and "(32, 27)" in row["hint"] and "keepdim=True" in row["hint"]
    if bug == "one_path":
        assert "counts_sum" in row["hint"] and "+=" in row["hint"]


def test_the_all_in_one_cross_entropy_and_batchnorm_exercises_are_approximately_right():
    """Exercises 2 and 3: the learner's closed forms agree with PyTorch only within rounding (cmp's approximate)."""
    for order in ("before", "after"):
        loss, t, Xb, Yb = forward()
        logits, n = t["logits"], Xb.shape[0]
        fast = F.cross_entropy(logits, Yb)
        if order == "after":  # as the lecture: logits.grad holds the chunked loss's gradient, cmp compares with it
            loss.backward()
        dlogits = F.softmax(logits.detach(), 1)
        dlogits[range(n), Yb] -= 1
        dlogits /= n
        r = lens.check(fast, {"logits": (logits, dlogits)})
        assert r.ok and not r.rows[0]["exact"] and 0 < r.rows[0]["maxdiff"] <= r.rows[0]["bound"]
        dhpreact = makemore_backward(t, Xb, Yb)["hpreact"]
        g, vi, raw = (t[k].detach() for k in ("bngain", "bnvar_inv", "bnraw"))
        dhprebn = g * vi / n * (n * dhpreact - dhpreact.sum(0) - n / (n - 1) * raw * (dhpreact * raw).sum(0))
        r = lens.check(loss, {"hpreact": dhpreact, "hprebn": dhprebn}, params=t)
        assert r.ok, r.to_text()
        wrong = dhprebn.clone()
        wrong[3, 5] *= 1.001  # one element 1e-3 off: far outside rounding
        r = lens.check(loss, {"hpreact": dhpreact, "hprebn": wrong}, params=t)
        assert r.first_wrong == "hprebn"


def test_a_bias_before_batchnorm_whose_gradient_is_rounding_noise_is_right():
    rep, *_ = _exercise("after")
    b1 = next(r for r in rep.rows if r["name"] == "b1")
    assert b1["status"] == "right" and not b1["exact"]  # mathematically zero: both sides are rounding noise


def test_after_backward_a_line_whose_bound_is_estimated_is_never_a_false_alarm():
    # tanh's saved output is no named tensor: after backward its line's rounding is estimated, and 1 - y**2
    # cancels near |y| = 1 (rounding of about one ulp of 1, not of the small result)
    verdicts = []
    for seed in range(20):
        torch.manual_seed(seed)
        w = torch.randn(4, 3, requires_grad=True)
        h = torch.randn(5, 4) @ w * 2
        h.retain_grad()
        loss = h.tanh().sum()
        dh = (1 - h.tanh() ** 2).detach()
        loss.backward()
        row = lens.check(loss, {"h": dh}, params={"h": h}).rows[0]
        verdicts.append(row["status"])
        if row["status"] == "unknown":
            assert "call lens.check before loss.backward()" in row["hint"]
        bad = dh.clone()
        bad[0, 0] += 1e-3
        assert lens.check(loss, {"h": bad}, params={"h": h}).first_wrong == "h"
    assert "wrong" not in verdicts


def test_a_line_right_given_a_wrong_upstream_inherits_and_says_which():
    rep, *_ = _exercise("before", "sign")
    probs = next(r for r in rep.rows if r["name"] == "probs")
    assert probs["status"] == "inherits" and "dlogprobs" in probs["hint"]


# ----------------------------------------------------------------------------- Values (the micrograd lecture)



@pytest.mark.parametrize("V", [lens.Value, MicrogradValue], ids=["lens", "micrograd"])
def test_gradients_set_by_hand_are_graded(V):
    vs = lecture_values(V)
    by_hand(vs)
    rep = lens.check(vs["L"])
    assert rep.ok and [r["name"] for r in rep.rows][0] == "L" and {r["name"] for r in rep.rows} == set("abcdefL")
    assert vs["a"].grad == 6.0  # nothing changed
    by_hand(vs, a=-3.0)  # b.data: the local derivative, without e's gradient
    rep = lens.check(vs["L"])
    a = next(r for r in rep.rows if r["name"] == "a")
    assert rep.first_wrong == "a" and a["diagnosis"] == "local_only" and "chain rule" in a["hint"]
    by_hand(vs, e=2.0, a=-6.0, b=4.0)  # e's sign wrong; a and b follow from it correctly
    rep = lens.check(vs["L"])
    assert rep.first_wrong == "e" and {r["name"]: r["status"] for r in rep.rows if r["name"] in "ab"} == \
        {"a": "inherits", "b": "inherits"}


@pytest.mark.parametrize("V", [lens.Value, MicrogradValue], ids=["lens", "micrograd"])
def test_a_value_used_twice_needs_plus_equals(V):
    a = V(3.0)
    a.label = "a"
    b = a + a  # micrograd keeps one child: two uses of it all the same
    b.label = "b"
    b.grad, a.grad = 1.0, 1.0  # what `=` instead of `+=` leaves
    rep = lens.check(b)
    row = next(r for r in rep.rows if r["name"] == "a")
    assert rep.first_wrong == "a" and row["diagnosis"] == "one_path" and "+=" in row["hint"]
    a.grad = 2.0
    assert lens.check(b).ok


def test_the_lectures_own_backward_with_a_bug_is_caught_after_backward():
    """The lecture's other order: its own _backward closures (here with `=` for `+=`), then backward()."""
    a, b = lens.Value(-2.0, label="a"), lens.Value(3.0, label="b")
    d = lens.Value(a.data * b.data, (a, b), "*", label="d")
    e = lens.Value(a.data + b.data, (a, b), "+", label="e")
    f = lens.Value(d.data * e.data, (d, e), "*", label="f")

    def mul(out, x, y):
        def _backward():
            x.grad = y.data * out.grad  # `=`: the lecture's bug
            y.grad = x.data * out.grad
        return _backward

    def add(out, x, y):
        def _backward():
            x.grad = out.grad
            y.grad = out.grad
        return _backward
    d._backward, e._backward, f._backward = mul(d, a, b), add(e, a, b), mul(f, d, e)
    f.backward()
    rep = lens.check(f)
    assert rep.first_wrong in ("a", "b") and all(r["diagnosis"] == "one_path" for r in rep.rows if r["status"] ==
                                                  "wrong")
    m = MicrogradValue(-2.0)
    n = MicrogradValue(3.0)
    g = (m * n) * (m + n)
    g.backward()  # micrograd's own backward is right
    m.label, n.label, g.label = "a", "b", "f"
    assert lens.check(g).ok


def test_values_agree_with_micrograd_on_the_neuron():
    import math as m
    V = MicrogradValue
    xs = {"x1": 2.0, "x2": 0.0, "w1": -3.0, "w2": 1.0, "b": 6.8813735870195432}
    vs = {k: V(x) for k, x in xs.items()}
    for k, v in vs.items():
        v.label = k
    n = vs["x1"] * vs["w1"] + vs["x2"] * vs["w2"] + vs["b"]
    o = n.relu()
    o.label = "o"
    o.backward()
    assert lens.check(o).ok and m.isfinite(vs["w1"].grad)
    t = lens.Value(2.0, label="t")
    y = (t * 3.0).tanh()
    y.label = "y"
    y.backward()
    assert lens.check(y).ok
    t.grad = 3.0  # the local derivative of 3t only
    assert lens.check(y).first_wrong == "t"


# ----------------------------------------------------------------------------- bad input

def test_bad_input_is_refused_with_what_to_do():
    x = torch.randn(3, requires_grad=True)
    h = x.exp()
    loss = h.sum()
    with pytest.raises(lens.LensError, match="nothing to check"):
        lens.check(loss, {})
    with pytest.raises(ValueError, match="nothing to check"):
        lens.check(loss)
    with pytest.raises(LensError, match="params does not name"):
        lens.check(loss, {"h": torch.ones(3)})
    with pytest.raises(LensError, match="not part of the graph"):
        lens.check(loss, {"z": (torch.randn(3, requires_grad=True), torch.ones(3))})
    with pytest.raises(TypeError, match="float64 but h is float32"):
        lens.check(loss, {"h": (h, torch.ones(3, dtype=torch.float64))})
    with pytest.raises(TypeError, match="on meta"):
        lens.check(loss, {"h": (h, torch.ones(3, device="meta"))})
    with pytest.raises(ValueError, match="does not require grad"):
        lens.check(loss, {"c": (torch.ones(3), torch.ones(3))})
    with pytest.raises(TypeError, match="pass a tensor"):
        lens.check(loss, {"h": (h, [1.0, 1.0, 1.0])})
    with pytest.raises(ValueError, match="the same tensor"):
        lens.check(loss, {"h": (h, torch.ones(3)), "h2": (h, torch.ones(3))})
    z = torch.randn(2, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(ValueError, match="complex"):
        lens.check(z.abs().sum(), {"z": (z, torch.ones(2, dtype=torch.complex64))})
    with pytest.raises(ValueError, match="for tensor graphs"):
        lens.check(lens.Value(1.0), {"a": 1})
    assert x.grad is None


def test_a_gradient_of_the_wrong_shape_is_a_verdict_not_an_exception():
    w = torch.randn(3, 4, requires_grad=True)
    x = torch.randn(5, 3)
    loss = (x @ w).tanh().sum()
    rep = lens.check(loss, {"w": (w, torch.randn(4, 3))})
    assert rep.rows[0]["status"] == "wrong" and rep.rows[0]["diagnosis"] == "transpose"
    rep = lens.check(loss, {"w": (w, torch.randn(7))})
    assert rep.rows[0]["status"] == "wrong" and "shape (7,)" in rep.rows[0]["hint"]


def test_an_intermediate_without_retain_grad_after_backward_is_unknown_not_guessed():
    x = torch.randn(4, requires_grad=True)
    h = x * 2
    y = h.exp()
    loss = y.sum()
    loss.backward()
    rep = lens.check(loss, {"y": (y, torch.ones(4)), "x": (x, x.grad.clone())})
    y_row = next(r for r in rep.rows if r["name"] == "y")
    assert y_row["status"] == "right"  # the sum needs no saved tensor: its gradient is computed anyway
    rep = lens.check(loss, {"h": (h, torch.ones(4))})
    assert rep.rows[0]["status"] in ("unknown", "wrong") and not math.isnan(rep.rows[0]["maxdiff"] or 0)


def test_the_report_reads_as_cmp_and_draws_the_learners_names():
    rep, *_ = _exercise("before", "one_path")
    text = rep.to_text()
    assert text.splitlines()[0].split("|")[:5] == ["name           ", " exact ", " approximate ", " maxdiff  ",
                                                   " status   "]
    assert "first wrong: counts" in text and "one_path" not in text.split("\n")[0]
    dot = rep.to_dot()
    assert "penwidth" in dot and "#f4a6a6" in dot  # the first wrong line outlined, wrong lines red
    html = rep._repr_html_()
    assert "first wrong: counts" in html and "<svg" in html
    assert repr(rep).startswith("<CheckReport first wrong: counts")


def test_the_readme_shows_the_real_output_of_its_check_example(capsys):
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Grade your own backprop")[1]
    code = section.split("```python\n")[1].split("```")[0]
    shown = section.split("```text\n")[1].split("```")[0]
    exec(compile(code, "README", "exec"), {})
    printed = capsys.readouterr().out

    def columns(text):  # all but maxdiff, whose last digits depend on the CPU's BLAS
        return [[c.strip() for i, c in enumerate(line.split("|")) if i != 3] for line in text.splitlines()]
    assert columns(printed) == columns(shown)
