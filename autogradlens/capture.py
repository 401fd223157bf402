"""PyTorch's own gradients at every node of a graph, from one real backward pass with node hooks.

Shared by `mirror` (the per-node checks) and `trace(..., grads=True)` (gradients drawn on the graph).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["capture", "to_numpy"]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A float64 (or integer) numpy copy of `t`, detached and on the CPU."""
    t = t.detach()
    if t.is_floating_point():
        return t.to("cpu", torch.float64).numpy().copy()
    return t.to("cpu").numpy().copy()


def capture(roots: list, ops: dict, leaves: dict, backward: bool = False):
    """Run one backward pass from `roots` (seeded with ones) and record, keyed by node id:

    - ``seen_in[id]``: the gradients flowing into op node `id` (one per forward output, None where none);
    - ``seen_out[id]``: the gradients it sends to its inputs (one per ``next_functions`` slot);
    - ``leaf_in[id]``: each leaf's gradient.

    `ops` and `leaves` map grad_fn objects to ids. With ``backward=False`` leaf gradients come from
    ``torch.autograd.grad`` (``.grad`` untouched, graph retained); with ``backward=True`` a real backward
    runs. Hooks are removed whatever happens.
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

    try:
        for fn, nid in ops.items():
            handles.append(fn.register_hook(post_hook(nid)))
        grads = [torch.ones_like(r) for r in roots]
        if backward:
            for fn, nid in leaves.items():
                handles.append(fn.register_prehook(acc_hook(nid)))
            torch.autograd.backward(roots, grads)
        else:
            fns = list(leaves)
            got = torch.autograd.grad(roots, [fn.variable for fn in fns], grads, retain_graph=True,
                                      allow_unused=True)
            for fn, g in zip(fns, got):
                leaf_in[leaves[fn]] = None if g is None else to_numpy(g)
    finally:
        for h in handles:
            h.remove()
    return seen_in, seen_out, leaf_in
