import gc
import math
import warnings
import weakref

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from models import MODELS, saved_storages

import autogradlens as lens
from autogradlens.examples import MLP


def tiny(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


def batch(seed=1, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def train(model, opt, steps=3, zero=True):
    x, y = batch()
    for i in range(steps):
        if zero or i == 0:
            opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


FIELDS = {
    "pack": {"node", "slot", "shape", "dtype", "nbytes", "storage"},
    "unpack": {"node", "slot"},
    "accumulate": {"param", "norm", "accumulated"},
    "retain": {"name", "retained", "norm"},
    "update": {"param", "update_norm", "ratio"},
    "warning": {"message"},
}


def test_events_and_steps_have_the_design_fields():
    model = tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with pytest.warns(UserWarning, match="accumulated across steps"):
        with lens.watch(model, optimizer=opt, retain=["1"]) as w:
            train(model, opt, steps=3, zero=False)
    kinds = {e.kind for e in w.events}
    assert kinds >= set(FIELDS)
    for e in w.events:
        assert e["kind"] == e.kind and isinstance(e.step, int)
        assert FIELDS.get(e.kind, set()) <= set(e), (e.kind, set(e))
        if e.kind == "update":
            assert {"exp_avg_norm", "exp_avg_sq_norm", "adam_step", "effective_lr"} <= set(e)
    assert len(w.steps) == 3 and [s["step"] for s in w.steps] == [0, 1, 2]
    for s in w.steps:
        assert {"saved_tensors", "saved_bytes", "grad_norm", "update_ratio", "loss"} <= set(s)
        assert set(s["grad_norm"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
        # the model's forward saves 4: Linear 0 its input, ReLU its output, Linear 2 its input and weight
        # (the loss, computed outside the model, saves its tensors unrecorded)
        assert s["loss"] > 0 and s["saved_tensors"] == 4


class Whole(nn.Module):
    """A module whose forward is a whole model-and-loss builder: the watch records what its forward saves."""

    def __init__(self, build):
        super().__init__()
        self.build = build

    def forward(self):
        return self.build()


@pytest.mark.parametrize("name", ["mlp_ce", "batchnorm", "layernorm", "attention", "conv", "embedding", "custom",
                                  "residual", "transformer"])
def test_every_pack_is_attributed_to_the_node_and_slot_that_saved_it(name):
    model = Whole(MODELS[name])
    with lens.watch(model) as w:
        torch.manual_seed(0)
        loss, params2 = model()
        # Python numbers an op saves (the 2.45 of `x / 2.45`) bypass saved_tensors_hooks: trace sees them, watch not
        expected = sorted((d["type"], s["name"].split("[")[0]) for _, d in lens.trace(loss).graph.nodes(data=True)
                          for s in d["saved"] if not (s["name"] == "other" and s["shape"] == ()))
        loss.backward()
    packs = [e for e in w.events if e.kind == "pack"]
    assert all(e.node is not None and e.slot is not None for e in packs)
    assert sorted((e.node, e.slot) for e in packs) == expected
    unpacks = [e for e in w.events if e.kind == "unpack"]
    assert len(unpacks) == len(packs) and all(e.node for e in unpacks)


def test_saved_bytes_are_deduplicated_like_a_direct_measurement():
    model = MLP((64, 32, 10))
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    storages, _ = saved_storages(lambda: model(x))  # the model's forward (the loss's are not recorded)
    with lens.watch(model) as w:
        F.cross_entropy(model(x), y).backward()
    (step,) = w.steps
    assert step["saved_bytes"] == sum(storages.values())
    assert sum(step["saved_by_type"].values()) == step["saved_bytes"]
    naive = sum(e.nbytes for e in w.events if e.kind == "pack")
    assert naive > step["saved_bytes"]  # ReLU's result and the next Linear's input share storage


def test_forgetting_zero_grad_warns_once_and_logs():
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="accumulated across steps.*zero_grad") as rec:
        with lens.watch(model, optimizer=opt) as w:
            train(model, opt, steps=3, zero=False)
    assert len([r for r in rec if "accumulated across steps" in str(r.message)]) == 1
    warn_events = [e for e in w.events if e.kind == "warning"]
    assert {e.step for e in warn_events} == {1, 2} and len(warn_events) == 8
    acc = [e for e in w.events if e.kind == "accumulate"]
    assert [e.accumulated for e in acc if e.step == 0] == [False] * 4
    assert all(e.accumulated for e in acc if e.step > 0)
    # with zero_grad: no warning
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with lens.watch(model, optimizer=opt) as w2:
            train(model, opt, steps=3)
    assert not [e for e in w2.events if e.kind == "warning"]


def zero_in_place(model, opt, x, y):
    for _ in range(3):
        opt.zero_grad(set_to_none=False)  # zeroes .grad in place: the same tensor, a new version
        F.cross_entropy(model(x), y).backward()
        opt.step()


def accumulate_within_a_step(model, opt, x, y):
    opt.zero_grad()
    for half in (slice(0, 4), slice(4, 8)):
        F.cross_entropy(model(x[half]), y[half]).backward()
    opt.step()


@pytest.mark.parametrize("loop,accumulated,passes", [
    (zero_in_place, [False] * 4 + [True] * 8, 1),  # added onto the zeroed .grad, which is fine
    (accumulate_within_a_step, [False] * 4 + [True] * 4, 2),  # deliberate accumulation before one step
])
def test_legitimate_accumulation_is_not_a_warning(loop, accumulated, passes):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with lens.watch(model, optimizer=opt) as w:
            loop(model, opt, *batch())
    assert [e.accumulated for e in w.events if e.kind == "accumulate"] == accumulated
    assert w.steps[0]["backward_passes"] == passes
    assert not [e for e in w.events if e.kind == "warning"]


def test_retain_grad_on_named_modules_and_other_intermediates_stay_none():
    model = tiny()
    seen = {}
    model[0].register_forward_hook(lambda m, a, out: seen.__setitem__("linear0", out))
    model[1].register_forward_hook(lambda m, a, out: seen.__setitem__("relu", out))
    with lens.watch(model, retain=["1"]) as w:
        x, y = batch()
        F.cross_entropy(model(x), y).backward()
    relu_out, lin_out = seen.pop("relu"), seen.pop("linear0")
    assert relu_out.grad is not None and relu_out.retains_grad
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch warns when reading a non-leaf .grad
        assert lin_out.grad is None
    (e,) = [e for e in w.events if e.kind == "retain"]
    assert e.retained and e.norm == pytest.approx(float(relu_out.grad.norm()), rel=1e-6)
    assert "other intermediate" in e.note
    with pytest.raises(ValueError, match="choose from"):
        lens.watch(model, retain=["nope"])


def test_sgd_momentum_and_adam_state_equal_hand_computation():
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    w0 = model[0].weight.detach().clone()
    with lens.watch(model, optimizer=opt) as w:
        x, y = batch()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        g = model[0].weight.grad.clone()
        opt.step()
    (u,) = [e for e in w.events if e.kind == "update" and e.param == "0.weight"]
    assert u.update_norm == pytest.approx(float((0.1 * g).double().norm()), rel=1e-6)
    assert u.momentum_norm == pytest.approx(float(g.double().norm()), rel=1e-6)  # first step: buffer = grad
    assert u.ratio == pytest.approx(u.update_norm / float((w0 - 0.1 * g).double().norm()), rel=1e-6)

    model = tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    m = v = None
    with lens.watch(model, optimizer=opt) as w:
        x, y = batch()
        for t in (1, 2):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            g = model[2].bias.grad.detach().double().clone()
            m = (1 - 0.9) * g if m is None else 0.9 * m + 0.1 * g
            v = (1 - 0.999) * g * g if v is None else 0.999 * v + 0.001 * g * g
            opt.step()
    ups = [e for e in w.events if e.kind == "update" and e.param == "2.bias"]
    assert [e.adam_step for e in ups] == [1, 2]
    last = ups[-1]
    assert last.exp_avg_norm == pytest.approx(float(m.norm()), rel=1e-5)
    assert last.exp_avg_sq_norm == pytest.approx(float(v.norm()), rel=1e-5)
    eff = (1e-2 / (1 - 0.9**2)) / (v.sqrt() / math.sqrt(1 - 0.999**2) + 1e-8)
    assert last.effective_lr == pytest.approx(float(np.median(eff.numpy())), rel=1e-5)


def test_adams_effective_lr_follows_its_state_in_a_channels_last_layout():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 3).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(conv.parameters(), lr=1e-2)
    with lens.watch(conv, optimizer=opt, sample=1) as w:
        for step in range(4):
            opt.zero_grad()
            x = torch.randn(3, 2, 6, 6).to(memory_format=torch.channels_last) * 10**step  # v grows each step
            conv(x).pow(2).mean().backward()
            opt.step()
    state = opt.state[conv.weight]
    assert not state["exp_avg_sq"].is_contiguous()  # Adam keeps the parameter's layout
    t = int(state["step"])
    v = float(state["exp_avg_sq"].flatten().median())  # (the lower middle of 72: as the watch takes it)
    eff = (1e-2 / (1 - 0.9**t)) / (math.sqrt(v) / math.sqrt(1 - 0.999**t) + 1e-8)
    last = [e for e in w.events if e.kind == "update" and e.param == "weight"][-1]
    assert last.effective_lr == pytest.approx(eff, rel=1e-5)


def test_record_loss_names_the_loss_of_a_step_whose_backward_had_none():
    m = nn.Linear(3, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with lens.watch(m) as w:
        out = m(torch.randn(4, 3))
        w.record_loss(torch.tensor(0.25))  # without an optimizer the backward ends the step
        out.backward(torch.ones_like(out))  # no one-element loss to read
    with lens.watch(m, optimizer=opt) as w2:
        for _ in range(2):
            opt.zero_grad()
            out = m(torch.randn(4, 3))
            out.backward(torch.ones_like(out))
            w2.record_loss(0.5)
            opt.step()
    assert w.steps[0]["loss"] == 0.25 and [s["loss"] for s in w2.steps] == [0.5, 0.5]


def test_hooks_removed_on_exit_and_on_exception():
    model = tiny()
    opt = torch.optim.Adam(model.parameters())
    original = torch.autograd.backward, torch.autograd.graph.disable_saved_tensors_hooks
    with pytest.raises(ZeroDivisionError):
        with lens.watch(model, optimizer=opt, retain=["1"]) as w:
            train(model, opt, steps=1)
            raise ZeroDivisionError("the body fails")
    assert (torch.autograd.backward, torch.autograd.graph.disable_saved_tensors_hooks) == original  # never patched
    for p in model.parameters():
        assert not p._backward_hooks and not (p._post_accumulate_grad_hooks or {})
    assert not model[1]._forward_hooks
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    n = len(w.events)
    train(model, opt, steps=1)  # nothing is recorded any more
    assert len(w.events) == n and len(w.steps) == 1
    packs = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packs.append(1) or t, lambda t: t):
        model(batch()[0]).sum()
    assert packs  # the user's own saved-tensor hooks work again (ours were popped)


def test_nesting_and_reentry_are_refused():
    model = tiny()
    with lens.watch(model) as w:
        with pytest.raises(RuntimeError, match="cannot be nested"):
            with lens.watch(model):
                pass
    with pytest.raises(RuntimeError, match="already run"):
        with w:
            pass
    with pytest.raises(TypeError, match="nn.Module"):
        lens.watch("model")


def test_watch_keeps_no_tensor_alive():
    def run():
        model = tiny()
        opt = torch.optim.Adam(model.parameters())
        with lens.watch(model, optimizer=opt, retain=["1"]) as w:
            train(model, opt, steps=2)
        return w, weakref.ref(model), weakref.ref(model[0].weight), weakref.ref(opt)

    w, model_ref, weight_ref, opt_ref = run()
    gc.collect()
    assert model_ref() is None and weight_ref() is None and opt_ref() is None
    assert len(w.steps) == 2
    for e in w.events:
        assert not any(isinstance(v, torch.Tensor) for v in e.values())


def test_numerically_transparent():
    def final(use_watch, opt_cls):
        model = tiny(3)
        opt = opt_cls(model.parameters(), lr=0.05)
        if use_watch:
            with lens.watch(model, optimizer=opt, retain=["1"]):
                train(model, opt, steps=5)
        else:
            train(model, opt, steps=5)
        return [p.detach().clone() for p in model.parameters()]

    for opt_cls in (torch.optim.SGD, torch.optim.Adam):
        for a, b in zip(final(False, opt_cls), final(True, opt_cls)):
            assert torch.equal(a, b)


def test_without_optimizer_a_step_is_a_backward():
    model = tiny()
    with lens.watch(model) as w:
        for _ in range(2):
            x, y = batch()
            F.cross_entropy(model(x), y).backward()
            model.zero_grad()
    assert len(w.steps) == 2 and not [e for e in w.events if e.kind == "update"]


def test_records_save_and_plots(tmp_path):
    import json

    model = tiny()
    opt = torch.optim.Adam(model.parameters())
    with lens.watch(model, optimizer=opt) as w:
        train(model, opt, steps=3)
    recs = w.to_records()
    assert recs[0]["kind"] == "pack" and isinstance(recs[0]["shape"], list)
    lines = w.save(tmp_path / "e.jsonl").read_text().splitlines()
    assert len(lines) == len(w.events) and json.loads(lines[0])["kind"] == "pack"
    csv_text = w.save(tmp_path / "e.csv").read_text()
    assert csv_text.splitlines()[0].startswith("kind,step") and len(csv_text.splitlines()) == len(w.events) + 1
    with pytest.raises(ValueError, match="jsonl or .csv"):
        w.save(tmp_path / "e.xlsx")
    import matplotlib.figure

    from autogradlens import plots

    for fig in (w.plot_grad_norms(), w.plot_update_ratios(), w.plot_saved_bytes(),
                plots.step_sizes({"adam": w})):
        assert isinstance(fig, matplotlib.figure.Figure)
        assert fig.axes[0].lines or fig.axes[0].collections
    assert "steps" in repr(w)


def test_every_event_has_the_fields_its_kind_declares_in_one_table(tmp_path):
    from autogradlens.watching import EVENTS, FIELDS

    model = tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with pytest.warns(UserWarning, match="accumulated across steps"):
        with lens.watch(model, optimizer=opt, retain=["1"], keep=2) as w:
            train(model, opt, steps=4, zero=False)
    seen = set()
    for e in w.events:
        fields = EVENTS[e.kind][1].split()
        required = {f for f in fields if not f.startswith("[")}
        optional = {f.strip("[]") for f in fields if f.startswith("[")}
        assert required <= set(e) - {"kind", "step"} <= required | optional, (e.kind, set(e))
        seen.add(e.kind)
    assert seen == set(EVENTS)  # note: the steps dropped by keep=2
    assert all(f.strip("[]") in FIELDS for _, fs in EVENTS.values() for f in fs.split())
    header = w.save(tmp_path / "w.csv").read_text().splitlines()[0].split(",")
    order = [f.strip("[]") for _, fs in EVENTS.values() for f in fs.split()]
    assert header[:2] == ["kind", "step"]
    assert [order.index(c) for c in header[2:]] == sorted(order.index(c) for c in header[2:])


def test_steps_are_a_compact_sequence_of_dicts():
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with lens.watch(model, optimizer=opt) as w:
        train(model, opt, steps=3)
    s = w.steps
    assert len(s) == 3 and s[-1]["step"] == 2 and [x["step"] for x in s[1:]] == [1, 2]
    assert s[0]["update_ratio"]["0.weight"] == pytest.approx(s[0]["update_norm"]["0.weight"]
                                                            / s[0]["param_norm"]["0.weight"])
    with pytest.raises(IndexError, match="recorded 3 steps"):
        s[3]
