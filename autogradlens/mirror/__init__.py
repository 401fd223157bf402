"""`lens.mirror`: re-derive every node's gradient of the real graph with micrograd-style rules, and compare.

This package is `lens.mirror` itself: calling it runs :func:`mirror` (its docstring below). Inside:

- ``table``: the rule table (``RULES``), what a rule is given (``Ctx``), the helpers rules share;
- the rules by op family: ``pointwise``, ``special``, ``reductions``, ``linalg``, ``shape``, ``indexing``, ``conv``,
  ``sampling``, ``norm``, ``losses``, ``attention``, ``complex``;
- ``driver``: the graph as the mirror reads it and its own backward pass (``replay``);
- ``bounds``: rules run on magnitudes, the rounding bound; ``verdicts``: the comparisons (NOTE [bound]);
- ``scalar``: scalar mode (every element a ``Value``); ``report``: ``MirrorReport``.
"""

from __future__ import annotations

import inspect
import sys
import types

import numpy as np

from .._guard import collector_paused
from ..capture import capture
from ..errors import LensValueError
from ..tracing import short_name, traced
from . import attention, complex, conv, indexing, linalg, losses, norm, pointwise, reductions, sampling, shape, special  # noqa: F401,E501
from .bounds import unit_roundoff
from .driver import Flow, Step, consumers_first, is_complex, read_ops, replay
from .report import MirrorReport
from .scalar import as_values, choose_mode, floats, running, scalar_cost
from .table import NO_RULE, RULES
from .verdicts import divergence, verdict_rows

__all__ = ["NO_RULE", "RULES", "MirrorReport", "mirror", "replay"]




def mirror(root, *, params=None, mode: str = "auto", backward: bool = False) -> MirrorReport:
    """Re-derive every node's gradient with micrograd-style rules and compare with PyTorch.

    `root` is the loss (or a list of roots, seeded as ``torch.autograd.backward(roots)`` seeds them).
    `params` names tensors, leaves and intermediates (``{"logprobs": logprobs, ...}``): rows use the names.
    `mode` is "scalar" (every element a :class:`Value`, micrograd exactly; small graphs), "tensor"
    (float64 arrays) or "auto". A difference is a mismatch only beyond a bound on the rounding error of
    the computation (NOTE [bound] in autogradlens.mirror.verdicts). `.grad` is left untouched (``retain_grad()`` tensors
    included) unless ``backward=True``, which leaves ``.grad`` as ``root.backward()`` would.

    Raises:
        LensTypeError: `root` is not a tensor with a ``grad_fn`` (or `params` has the wrong type).
        LensValueError: an unknown `mode`, ``mode="scalar"`` over ``SCALAR_LIMIT`` Values, two different
            tensors under one name.
        LensRuntimeError: backward() has freed the saved tensors (mirror before it, or retain the graph),
            or a saved tensor was changed in place (mirror before ``optimizer.step()``).

    Example:
        >>> import torch, autogradlens as lens
        >>> w = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
        >>> r = lens.mirror((w.tanh() * w).sum(), params={"w": w})
        >>> r.ok, r.counts()["mismatch"], w.grad is None
        (True, 0, True)
    """
    if mode not in ("auto", "scalar", "tensor"):
        raise LensValueError(f"mode must be 'auto', 'scalar' or 'tensor', got {mode!r}")
    with collector_paused():  # thousands of short-lived arrays, no cycles: a collection would only rescan the heap
        return _mirror(root, params, mode, backward)


def _mirror(root, params, mode: str, backward: bool) -> MirrorReport:
    tr, walk = traced(root, params)  # one walk: the report's graph and the live nodes
    ops = read_ops(tr, walk)
    asked = mode
    mode, reason = choose_mode(mode, scalar_cost(list(ops.values())))
    if asked == "auto" and mode == "scalar" and any(is_complex(op) for op in ops.values()):
        mode, reason = "tensor", "auto chose tensor mode: the graph has complex tensors (a Value holds a real number)"
    scalar = mode == "scalar"
    roots = list(root) if isinstance(root, (list, tuple)) else [root]
    live = {fn: walk.ids[fn] for fn in walk.order}
    seen_in, seen_out, leaf_in = capture(
        walk, roots, {fn: i for fn, i in live.items() if i in ops}, {fn: i for fn, i in live.items() if i not in ops},
        backward, keep=tuple(t for _, t in walk.named), lazy=True)
    seeds: dict = {}
    for r in roots:  # the same tensor twice counts twice, as in torch.autograd.backward
        key = (walk.ids[r.grad_fn], r.output_nr)
        f = Flow((as_values if scalar else np.asarray)(np.ones(tuple(r.shape))), np.zeros(tuple(r.shape)),
                 np.ones(tuple(r.shape)), unit_roundoff(short_name(r.dtype)))
        seeds[key] = f if key not in seeds else seeds[key] + f
    order = consumers_first(walk.order, walk.nexts, walk.ids)
    step = Step(seen_in, seen_out, scalar, ops)
    with running(len(ops), scalar) as tick:
        def ticking(op, incoming):
            tick()
            return step(op, incoming)
        with np.errstate(all="ignore"):  # IEEE infinities and NaNs are values here, as in PyTorch
            grads = replay(order, ops, seeds, ticking)
    rows = verdict_rows(tr, order, ops, step, seen_in, seen_out, leaf_in, grads)
    mine = {r["name"]: _own(floats(grads[(r["id"], 0)].g)) for r in rows
            if r["kind"] == "leaf" and (r["id"], 0) in grads and not r["note"]}
    return MirrorReport(rows, tr, mode, divergence(ops, rows), mine, reason)


def _own(a: np.ndarray) -> np.ndarray:
    """The report's own writable array (the mirror may have read a gradient in PyTorch's memory, read-only)."""
    return a if a.flags.writeable and a.base is None else np.array(a)


class _Package(types.ModuleType):
    """`lens.mirror` is this package and the function at once: calling the package runs `mirror`."""

    def __call__(self, root, *, params=None, mode: str = "auto", backward: bool = False) -> MirrorReport:
        return mirror(root, params=params, mode=mode, backward=backward)


__signature__ = inspect.signature(mirror)
__doc__ = f"{inspect.cleandoc(mirror.__doc__)}\n\n{__doc__}"  # `lens.mirror?` and help() show the function first
sys.modules[__name__].__class__ = _Package
