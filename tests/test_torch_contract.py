"""The PyTorch private APIs autogradlens relies on (all read in autogradlens/_torch.py), each asserted to still
behave as assumed on the installed torch: a new release that changes one breaks one test here, loudly."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from autogradlens import _torch


def test_input_metadata_gives_shape_dtype_device_per_forward_output():
    x = torch.randn(4, 3, requires_grad=True)
    a, b = x.split(2)
    meta = _torch.input_metadata(a.grad_fn)
    assert [list(m.shape) for m in meta] == [[2, 3], [2, 3]]
    assert meta[0].dtype == torch.float32 and meta[0].device == torch.device("cpu")


def test_sequence_nr_counts_nodes_in_creation_order():
    x = torch.randn(3, requires_grad=True)
    y = x.exp()
    z = y.sin()
    assert isinstance(_torch.sequence_nr(y.grad_fn), int)
    assert _torch.sequence_nr(z.grad_fn) > _torch.sequence_nr(y.grad_fn)


def test_version_counter_bumps_on_in_place_ops():
    t = torch.zeros(3)
    v = _torch.version(t)
    t.add_(1)
    assert _torch.version(t) == v + 1


def test_saved_fields_are_named_saved_and_raw_saved():
    x = torch.randn(4, 3, requires_grad=True)
    y = F.softmax(x, dim=-1)
    slots, other = _torch.saved_names(y.grad_fn, {})
    assert slots == ["result"] and "dim" in other
    assert _torch.saved_attr(y.grad_fn, "dim") == 2**64 - 1  # negative ints read as unsigned 64-bit
    assert torch.equal(_torch.saved_value(y.grad_fn, "result"), y)
    idx = x[torch.tensor([0, 2])]
    assert _torch.saved_names(idx.grad_fn, {})[0] == ["indices"]
    assert isinstance(_torch.saved_value(idx.grad_fn, "indices"), tuple)


def test_custom_functions_are_backward_c_functions_with_saved_tensors():
    class Sq(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2 * x * g

    x = torch.randn(3, requires_grad=True)
    y = Sq.apply(x)
    assert isinstance(y.grad_fn, torch.autograd.function.BackwardCFunction)
    assert _torch.saved_names(y.grad_fn, {})[0] == ["saved_tensors"]
    assert _torch.saved_value(y.grad_fn, "saved_tensors")[0] is x
    y.sum().backward()
    with pytest.raises(RuntimeError) as e:
        _torch.saved_value(y.grad_fn, "saved_tensors")
    assert _torch.is_freed(e.value)
    assert [s[2] for s in _torch.read_slot(y.grad_fn, "saved_tensors")] == ["freed"]


def test_freed_text_after_backward_also_for_raw_saved_indices():
    x = torch.randn(4, 3, requires_grad=True)
    y = x[torch.tensor([0, 2])].exp()
    y.sum().backward()
    node = y.grad_fn.next_functions[0][0]
    with pytest.raises(RuntimeError) as e:
        _torch.saved_value(node, "indices")
    assert _torch.is_freed(e.value) and not _torch.is_stale(e.value)
    with pytest.raises(RuntimeError):
        getattr(node, "_raw_saved_indices")  # noqa: B009 - why _torch._unreadable guards the raw read too
    assert [s[2] for s in _torch.read_slot(node, "indices")] == ["freed"]


def test_stale_text_after_an_in_place_change():
    lin = nn.Linear(3, 2)
    out = lin(torch.randn(4, 3, requires_grad=True)).tanh()
    with torch.no_grad():
        lin.weight.add_(1)
    node = out.grad_fn.next_functions[0][0]  # Addmm, which saved W.t()
    with pytest.raises(RuntimeError) as e:
        _torch.saved_value(node, "mat2")
    assert _torch.is_stale(e.value) and not _torch.is_freed(e.value)
    assert [s[2] for s in _torch.read_slot(node, "mat2")] == ["stale"]


def test_reentrant_checkpoint_refuses_autograd_grad_with_the_text_we_match():
    from torch.utils.checkpoint import checkpoint
    x = torch.randn(2, 3, requires_grad=True)
    y = checkpoint(nn.Linear(3, 3), x, use_reentrant=True).sum()
    with pytest.raises(RuntimeError) as e:
        torch.autograd.grad(y, [x])
    assert _torch.is_checkpoint_refusal(e.value)


def test_a_reentrant_checkpoint_node_holds_the_function_it_runs_again():
    from torch.utils.checkpoint import checkpoint
    lin = nn.Linear(3, 3)
    y = checkpoint(lin, torch.randn(2, 3, requires_grad=True), use_reentrant=True)
    assert _torch.checkpoint_function(y.grad_fn) is lin
    assert _torch.checkpoint_function(y.sum().grad_fn) is None


def test_current_autograd_node_inside_hooks():
    x = torch.randn(3, requires_grad=True)
    y = x.exp()
    seen = []
    h = y.grad_fn.register_prehook(lambda g: seen.append(_torch.current_node()))
    y.sum().backward()
    h.remove()
    assert seen == [y.grad_fn] and _torch.current_node() is None


@pytest.mark.parametrize("removable", [True, False], ids=["torch>=2.13", "no _remove_obj_from_tls"])
def test_a_marked_thread_is_seen_there_and_in_its_backward_only(monkeypatch, removable):
    import threading

    if not removable:  # torch 2.11 has no _remove_obj_from_tls (seen on the GPU machine): unmarking stashes False
        monkeypatch.setattr(_torch, "_REMOVE", None)
    seen = {}
    x = torch.randn(3, requires_grad=True)
    try:
        _torch.mark_thread(True)
        y = x.exp()
        y.register_hook(lambda g: seen.update(backward=_torch.in_marked_thread()))
        other = threading.Thread(target=lambda: seen.setdefault("other thread", _torch.in_marked_thread()))
        other.start()
        other.join()
        y.sum().backward()
        seen["marked"] = _torch.in_marked_thread()
    finally:
        _torch.mark_thread(False)
    seen["unmarked"] = _torch.in_marked_thread()
    _torch.mark_thread(False)  # twice is harmless
    assert seen == {"backward": True, "other thread": False, "marked": True, "unmarked": False}


@pytest.mark.parametrize("removable", [True, False], ids=["torch>=2.13", "no _remove_obj_from_tls"])
def test_the_replay_mark_nests_and_reaches_a_backward_run_inside_it(monkeypatch, removable):
    if not removable:
        monkeypatch.setattr(_torch, "_REMOVE", None)
    seen = []
    x = torch.randn(3, requires_grad=True)
    y = x.exp()
    y.register_hook(lambda g: seen.append(_torch.in_replay()))
    assert not _torch.in_replay()
    _torch.replay_mark(True)
    _torch.replay_mark(True)  # (lens.check inside lens.mirror's hooks, say)
    _torch.replay_mark(False)
    try:
        assert _torch.in_replay()
        y.sum().backward(retain_graph=True)
    finally:
        _torch.replay_mark(False)
    assert not _torch.in_replay()
    _torch.replay_mark(False)  # one too many is harmless
    y.sum().backward()
    assert seen == [True, False] and not _torch.in_replay()


def test_the_in_place_error_names_nodes_as_this_torch_does(monkeypatch):
    """torch 2.13 says "output 0 of Exp", torch 2.11 (seen on the GPU machine) "output 0 of ExpBackward0":
    inplace_error follows the style found by asking PyTorch once."""
    w = torch.zeros(2, requires_grad=True)
    a = w.exp()
    a.add_(1)
    with pytest.raises(RuntimeError) as e:
        a.sum().backward()
    assert _torch.inplace_error(a, "ExpBackward0", 0, 0) == str(e.value)
    assert _torch.names_ops() == ("of Exp," in str(e.value))
    monkeypatch.setattr(_torch, "_NAMES_OPS", [False])
    assert ", which is output 0 of ExpBackward0, is at version 1;" in _torch.inplace_error(a, "ExpBackward0", 0, 0)


def test_nodes_are_called_directly_and_custom_functions_map_their_gradients_to_tensor_inputs():
    """engine.run calls nodes itself: a C++ node is callable (a multi-output node takes None for an undefined
    gradient); a custom Function's node runs `apply`, returns one value per forward input, and `needs_input_grad`
    says which of them have an edge in next_functions."""
    x = torch.randn(4, 3, requires_grad=True)
    a, _ = x.split(2)
    with torch.no_grad():
        (g,) = _torch.call_node(a.grad_fn, [torch.ones(2, 3), None])
    assert torch.equal(g, torch.cat([torch.ones(2, 3), torch.zeros(2, 3)]))

    class Scale(torch.autograd.Function):
        @staticmethod
        def forward(ctx, k, x, flag, w):
            return k * x * w

        @staticmethod
        def backward(ctx, g):
            return None, g * 2, None, g * 3

    w = torch.randn(4, 3, requires_grad=True)
    y = Scale.apply(2.0, x, True, w)
    assert y.grad_fn.needs_input_grad == (False, True, False, True)
    assert len(y.grad_fn.next_functions) == 2
    gx, gw = _torch.call_node(y.grad_fn, [torch.ones(4, 3)])
    assert torch.equal(gx, torch.full((4, 3), 2.0)) and torch.equal(gw, torch.full((4, 3), 3.0))


def test_a_tensors_python_hooks_are_in_backward_hooks():
    x = torch.randn(3, requires_grad=True)
    assert _torch.tensor_hooks(x) == []
    h = x.register_hook(lambda g: g * 2)
    (hook,) = _torch.tensor_hooks(x)
    assert torch.equal(hook(torch.ones(3)), torch.full((3,), 2.0))
    h.remove()
    assert _torch.tensor_hooks(x) == []


def test_graph_task_ids_and_end_callbacks_inside_backward():
    x = torch.randn(3, requires_grad=True)
    seen, ended = [], []

    def hook(g):
        seen.append(_torch.graph_task_id())
        _torch.queue_callback(lambda: ended.append(_torch.graph_task_id()))

    x.register_hook(hook)
    x.exp().sum().backward()
    x.sin().sum().backward()
    assert len(seen) == 2 and seen[0] >= 0 and seen[1] != seen[0] and ended == seen
    assert _torch.graph_task_id() == -1  # outside a backward


def test_the_engine_frame_gives_roots_kind_and_nesting():
    import threading

    tid = threading.get_ident()
    calls = []
    x = torch.randn(3, requires_grad=True)
    x.register_hook(lambda g: calls.append(_torch.engine_call(tid)))
    loss = x.exp().sum()
    loss.backward(retain_graph=True)
    torch.autograd.grad(loss, x)
    assert calls[0].roots[0] is loss and calls[0].accumulate and not calls[0].nested
    assert calls[1].roots[0] is loss and not calls[1].accumulate

    class Inner(torch.autograd.Function):  # a backward that runs a backward: nested, as reentrant checkpoint does
        @staticmethod
        def forward(ctx, t):
            return t * 2

        @staticmethod
        def backward(ctx, g):
            with torch.enable_grad():
                y = torch.randn(2, requires_grad=True)
                y.register_hook(lambda gy: calls.append(_torch.engine_call(tid)))
                y.pow(2).sum().backward()
            return g * 2

    calls.clear()
    Inner.apply(x).sum().backward()
    assert [c.nested for c in calls] == [True, False]  # the inner backward's hook, then x's


def test_saved_tensor_hooks_are_disabled_inside_torch_func():
    seen = []
    torch.func.grad(lambda t: (seen.append(_torch.saved_hooks_enabled()) or t.sin()).sum())(torch.randn(3))
    assert seen == [False] and _torch.saved_hooks_enabled()


def test_remove_hook_finds_each_kind_of_hook_by_identity():
    model = nn.Linear(2, 2)
    p = model.weight
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def fn(*a):
        return None

    model.register_forward_pre_hook(fn)
    model.register_forward_hook(fn, always_call=True)
    p.register_hook(fn)
    p.register_post_accumulate_grad_hook(fn)
    opt.register_step_pre_hook(fn)
    opt.register_step_post_hook(fn)
    for owner, kind in ((model, "forward_pre"), (model, "forward"), (p, "tensor"), (p, "post_accumulate"),
                        (opt, "step_pre"), (opt, "step_post")):
        _torch.remove_hook(owner, kind, fn)
        for name in _torch.HOOK_DICTS[kind]:
            assert fn not in (getattr(owner, name, None) or {}).values()
    assert not model._forward_hooks_always_called and not p._backward_hooks


def test_no_compile_marks_the_code_instead_of_wrapping():
    def hook(g):
        return None

    assert _torch.no_compile(hook) is hook and hook.__code__ in _torch._SKIPPED
