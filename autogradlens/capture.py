"""PyTorch's own gradients at every node of a graph, from one real backward pass with node hooks.

Shared by `mirror` (the per-node checks) and `trace(..., grads=True)` (gradients drawn on the graph).
Observing never changes what is observed: every ``.grad`` (leaves, ``retain_grad()`` intermediates, and
parameters a reentrant checkpoint reaches outside the graph) is as it was afterwards, unless ``backward=True``.
"""

from __future__ import annotations

import gc
import sys
from itertools import compress

import numpy as np
import torch

from ._torch import is_checkpoint_refusal

__all__ = ["capture", "to_numpy"]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A float64 (or integer, complex) numpy copy of `t`, detached, dense and on the CPU (NaN for a meta
    tensor, which has no values)."""
    t = t.detach()
    if t.device.type == "meta":
        return np.full(tuple(t.shape), np.nan)
    if t.layout != torch.strided:
        t = t.to_dense()
    t = t.resolve_conj().resolve_neg()
    if t.is_floating_point():
        t = t.to("cpu", torch.float64)
    elif t.is_complex():  # complex32 (chalf) has no numpy type
        t = t.to("cpu", torch.complex128)
    # force: PyTorch hands some all-zero gradients over as "ZeroTensors" (sgn's, for one) that refuse a plain .numpy()
    return t.to("cpu").numpy(force=True).copy()


# Graphs with at least this many op nodes get a full scan of the collector's objects for retained tensors
# (tens of ms on a notebook-size heap: small next to mirroring such a graph); smaller ones a cheap one.
FULL_SCAN_NODES = 64
_TENSOR_TYPES = frozenset({torch.Tensor, torch.nn.Parameter})


def _retaining(fns: set) -> list:
    """Tensors that called ``retain_grad()`` and were made by a node of this graph (autograd writes their
    ``.grad`` on every backward pass, ``torch.autograd.grad`` included). Nothing lists them but the garbage
    collector. A big graph scans all its objects (C-level iterators); a small one scans the young
    generations (its forward pass just made them) and the variables of the calling frames (a notebook's
    globals, a function's locals), one container deep."""
    if len(fns) >= FULL_SCAN_NODES:
        objs = gc.get_objects()
    else:
        objs = gc.get_objects(0) + gc.get_objects(1)
        frame = sys._getframe(1)
        while frame is not None:
            for space in (frame.f_locals, frame.f_globals):
                for v in list(space.values()):
                    objs.append(v)
                    if isinstance(v, (dict, list, tuple)) and len(v) < 10_000:
                        objs.extend(v.values() if isinstance(v, dict) else v)
            frame = frame.f_back
    found = compress(objs, map(_TENSOR_TYPES.__contains__, map(type, objs)))
    return list({id(t): t for t in found if t.grad_fn in fns and t.retains_grad}.values())


def capture(roots: list, ops: dict, leaves: dict, backward: bool = False, keep: tuple = ()):
    """Run one backward pass from `roots` (each seeded with ones, as ``torch.autograd.backward(roots)``
    seeds them: a tensor listed twice counts twice) and record, keyed by node id:

    - ``seen_in[id]``: the gradients flowing into op node `id` (one per forward output, None where none);
    - ``seen_out[id]``: the gradients it sends to its inputs (one per ``next_functions`` slot);
    - ``leaf_in[id]``: each leaf's gradient.

    `ops` and `leaves` map grad_fn objects to ids; `keep` lists more tensors whose ``.grad`` must survive.
    With ``backward=False`` leaf gradients come from ``torch.autograd.grad`` (graph retained; a reentrant
    checkpoint, which refuses it, gets a retained ``backward`` whose ``.grad`` writes are undone); with
    ``backward=True`` a real backward runs. Hooks are removed whatever happens.
    """
    seen_in, seen_out, leaf_in, handles = {}, {}, {}, []

    def post_hook(nid):
        def hook(grad_inputs, grad_outputs):
            seen_in[nid] = [None if g is None else to_numpy(g) for g in grad_outputs]
            seen_out[nid] = [None if g is None else to_numpy(g) for g in grad_inputs]
        return hook

    def acc_hook(nid):
        def hook(grad_outputs):
            leaf_in[nid] = None if grad_outputs[0] is None else to_numpy(grad_outputs[0])
        return hook

    grads = [torch.ones_like(r) for r in roots]
    guarded = [] if backward else ([fn.variable for fn in leaves] + _retaining(set(ops))
                                   + [t for t in keep if t.grad_fn is None or t.retains_grad])
    saved = [(t, t.grad) for t in guarded]
    try:
        for fn, nid in ops.items():
            handles.append(fn.register_hook(post_hook(nid)))
        if backward:
            for fn, nid in leaves.items():
                handles.append(fn.register_prehook(acc_hook(nid)))
            torch.autograd.backward(roots, grads)
        else:
            fns = list(leaves)
            try:
                got = torch.autograd.grad(roots, [fn.variable for fn in fns], grads, retain_graph=True,
                                          allow_unused=True)
            except RuntimeError as e:
                if not is_checkpoint_refusal(e):
                    raise
                seen_in.clear()
                seen_out.clear()
                got = _backward_undone(roots, grads, fns, guarded)
            for fn, g in zip(fns, got):
                leaf_in[leaves[fn]] = None if g is None else to_numpy(g)
    finally:
        for h in handles:
            h.remove()
        for t, g in saved:
            t.grad = g
    return seen_in, seen_out, leaf_in


def _backward_undone(roots, grads, fns, guarded) -> list:
    """Leaf gradients from a retained ``torch.autograd.backward`` into fresh ``.grad`` slots (the caller puts
    every guarded ``.grad`` back)."""
    variables = [fn.variable for fn in fns]
    for t in {id(t): t for t in variables + guarded}.values():
        t.grad = None
    torch.autograd.backward(roots, grads, retain_graph=True)
    return [v.grad for v in variables]
