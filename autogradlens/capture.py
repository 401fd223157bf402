"""PyTorch's own gradients at every node of a graph, for `mirror` (the per-node checks) and ``trace(grads=True)``
(gradients drawn on the graph).

Observing never changes what is observed: the gradients come from `engine.run`, which calls each node's backward
itself (no hook, no ``.grad`` written, ``retain_grad()`` tensors untouched, nothing freed, no scan of the heap).
Only ``backward=True`` runs PyTorch's real backward, for a mirror asked to leave ``.grad`` as ``backward()`` does.
"""

from __future__ import annotations

import numpy as np
import torch

from . import engine
from ._torch import tensor_hooks

__all__ = ["capture", "read_only", "to_numpy"]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A float64 (or integer, complex) numpy copy of `t`, detached, dense, C-contiguous and on the CPU (NaN for a
    meta tensor, which has no values): one copy, the conversion itself."""
    t = t.detach()
    if t.device.type == "meta":
        return np.full(tuple(t.shape), np.nan)
    if t.layout != torch.strided:
        t = t.to_dense()
    t = t.resolve_conj().resolve_neg()  # (a view of the bits: no copy unless they were set)
    to = torch.float64 if t.is_floating_point() else torch.complex128 if t.is_complex() else t.dtype
    # force: PyTorch hands some all-zero gradients over as "ZeroTensors" (sgn's, for one) that refuse a plain .numpy()
    # (complex32 has no numpy type: complex128)
    return t.to("cpu", to, copy=True, memory_format=torch.contiguous_format).numpy(force=True)


# Gradients compared as they are (no conversion): a float32 or float64 array is exact, and numpy's mixed arithmetic
# with the mirror's float64 arrays is float64.
_AS_IS = (torch.float32, torch.float64)


def read_only(t: torch.Tensor) -> np.ndarray:
    """`t`'s numbers as a read-only numpy array for comparisons: PyTorch's own memory where it is a float32 or float64
    CPU tensor (no copy), else `to_numpy`. Its dtype may be float32: arithmetic with a float64 array is float64."""
    if t.dtype in _AS_IS and t.device.type == "cpu" and t.layout == torch.strided and not (t.is_conj() or t.is_neg()):
        try:
            a = t.numpy()  # (PyTorch's gradients need no grad)
        except (RuntimeError, TypeError):
            a = t.detach().numpy(force=True)  # a ZeroTensor, a tensor that requires grad
    else:
        a = to_numpy(t)
    a.flags.writeable = False
    return a


def _np(g):
    return None if g is None else to_numpy(g)


def capture(walk, roots: list, ops: dict, leaves: dict, backward: bool = False, keep: tuple = (), lazy: bool = False):
    """PyTorch's backward from `roots` (each seeded with ones, as ``torch.autograd.backward(roots)`` seeds them:
    a tensor listed twice counts twice) over the graph `walk` (``tracing.traced``), keyed by node id:

    - ``seen_in[id]``: the gradients flowing into op node `id` (one per forward output, None where none);
    - ``seen_out[id]``: the gradients it sends to its inputs (one per ``next_functions`` slot);
    - ``leaf_in[id]``: each leaf's gradient.

    `ops` and `leaves` map grad_fn objects to ids; `keep` lists named tensors (their Python hooks apply, and a
    reentrant checkpoint's inner backward leaves their ``.grad`` as it was). With ``backward=True`` PyTorch's
    real backward runs afterwards, so ``.grad`` ends up as after ``torch.autograd.backward(roots)``. With
    ``lazy=True`` the gradients stay PyTorch's tensors (converted, and dropped, node by node by their reader:
    `read_only`, `to_numpy`).
    """
    seeds: dict = {}
    for r in roots:
        seeds.setdefault((r.grad_fn, r.output_nr), []).append(torch.ones_like(r))
    hooks = {(fn, 0): fn.variable for fn in leaves if _hooked(fn.variable)}
    hooks.update({(t.grad_fn, t.output_nr): t for t in keep if t.grad_fn is not None and _hooked(t)})
    run = engine.run(walk.order, walk.nexts, seeds, hooks=hooks, keep=tuple(t for t in keep if t.grad_fn is None))
    conv = (lambda g: g) if lazy else _np
    seen_in = {ops[fn]: [conv(g) for g in gs] for fn, gs in run.incoming.items() if fn in ops}
    seen_out = {ops[fn]: [conv(g) for g in gs] for fn, gs in run.outgoing.items() if fn in ops}
    leaf_in = {leaves[fn]: conv(g) for fn, g in run.leaves.items() if fn in leaves}
    del run
    if backward:
        torch.autograd.backward(roots, [torch.ones_like(r) for r in roots])
    return seen_in, seen_out, leaf_in


def _hooked(t: torch.Tensor) -> bool:
    return bool(tensor_hooks(t))
