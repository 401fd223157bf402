"""engine.run computes what loss.backward() computes, bit for bit, and changes nothing."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from zoo import AUTOCAST, ZOO, build

from autogradlens import engine
from autogradlens.tracing import traced


def _run(loss, params=None, **kw):
    _, w = traced(loss, params)
    return w, engine.run(w.order, w.nexts, {(loss.grad_fn, loss.output_nr): torch.ones_like(loss)}, **kw)


def _params(params):
    return list(params.parameters()) if isinstance(params, nn.Module) else list(params.values())


@pytest.mark.parametrize("variant", ["float32", "bfloat16", "autocast"])
def test_leaf_gradients_equal_backward_bit_for_bit_over_the_zoo(variant):
    differ = []
    for name in ZOO:
        if variant == "autocast" and name not in AUTOCAST:
            continue
        loss, params = build(name, variant)
        ps = _params(params)
        _, r = _run(loss, params, keep=tuple(ps))
        assert all(p.grad is None for p in ps)  # nothing written (a reentrant checkpoint's inner backward too)
        mine = {fn.variable: g for fn, g in r.leaves.items()}
        loss.backward()
        differ += [(name, tuple(v.shape)) for v, g in mine.items()
                   if (g is None) != (v.grad is None) or (g is not None and not torch.equal(g, v.grad))]
    assert differ == []


def test_three_consumers_are_summed_in_the_engines_order():
    """(a + b) + c differs from a + (b + c) in float32: the sums must arrive as the engine adds them."""
    torch.manual_seed(0)
    x = torch.randn(1000, requires_grad=True)
    h = x * 1.0
    h.retain_grad()
    loss = (h * 3.1).sum() + (h.exp() * 1e4).sum() + (h.sin() * 1e-4).sum()
    _, r = _run(loss)
    loss.backward()
    assert torch.equal(r.incoming[h.grad_fn][0], h.grad) and h.grad is not None


def test_forced_gradients_replace_what_reached_and_parts_are_recorded():
    x = torch.randn(3, requires_grad=True)
    a = x * 2
    loss = (a * a).sum() + a.sum()
    w, r = _run(loss, force={(a.grad_fn, 0): torch.ones(3)}, parts={(a.grad_fn, 0)})
    assert torch.equal(r.reached[a.grad_fn][0], (4 * x + 1).detach())  # 2a + 1 reached a
    assert torch.equal(r.incoming[a.grad_fn][0], torch.ones(3))  # the forced gradient went on
    assert torch.equal(r.leaves[a.grad_fn.next_functions[0][0]], torch.full((3,), 2.0))
    assert len(r.parts[(a.grad_fn, 0)]) == 3  # a * a sends twice (two slots), a.sum() once


def test_leaf_hooks_apply_and_broadcast_gradients_are_summed_to_shape():
    x = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    b.register_hook(lambda g: g * 10)
    loss = (x + b).pow(2).sum()
    _, r = _run(loss, hooks={(b.grad_fn or _acc(loss, b), 0): b})
    loss.backward()
    assert torch.equal(r.leaves[_acc(loss, b)], b.grad)


def _acc(loss, t):
    stack, seen = [loss.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        if getattr(fn, "variable", None) is t:
            return fn
        stack += [f for f, _ in fn.next_functions if f is not None]
    raise LookupError


def test_after_backward_freed_nodes_send_unknown_unless_strict():
    x = torch.randn(3, requires_grad=True)
    y = x.tanh()
    loss = (y.sum(0, keepdim=True) + 2).sum()  # sum and add save no tensor: they still run after backward
    loss.backward()
    w, r = _run(loss, strict=False)
    assert r.incoming[y.grad_fn][0] is not None and r.leaves[y.grad_fn.next_functions[0][0]] is engine.UNKNOWN
    assert y.grad_fn in r.failed
    with pytest.raises(RuntimeError, match="freed|second time"):
        _run(loss)


def test_a_checkpoint_regions_inner_backward_leaves_kept_grads_alone():
    from torch.utils.checkpoint import checkpoint
    body = nn.Linear(3, 3)
    x = torch.randn(2, 3, requires_grad=True)
    loss = F.relu(checkpoint(body, x, use_reentrant=True)).sum()
    _, r = _run(loss, keep=tuple(body.parameters()))
    assert body.weight.grad is None and body.bias.grad is None
    loss.backward()
    assert torch.equal(r.leaves[_acc(loss, x)], x.grad)
