"""PyTorch's backward pass, run node by node from Python, changing nothing.

`run` calls each node's own backward (PyTorch's kernels, through the node object) in the order PyTorch's
engine runs them, and adds the gradients that meet at a node in the order the engine adds them, so what it
computes is what ``loss.backward()`` computes, bit for bit. Unlike the engine it fires no hook, writes no
``.grad`` (AccumulateGrad nodes are never called: their gradients are returned), touches no ``retain_grad()``
tensor, frees nothing, and needs no scan of the heap: observing a graph leaves it as it was, also when other
threads work beside it. The tools use it for PyTorch's gradient at every node (`mirror`, ``trace(grads=True)``)
and for the learner's gradients put in place of PyTorch's (`check`, `force=`).

What the engine does that `run` does too (torch/csrc/autograd/engine.cpp): a ready queue ordered by sequence
number, highest first (a node runs once every consumer has run); gradients meeting at a node summed as they
arrive, in that order (``old + new``); each gradient checked against the metadata of the input it flows into
(summed to its shape when it was broadcast, cast to its dtype); undefined gradients passed as None; grad mode
off. A custom ``autograd.Function`` gets zeros for undefined gradients when it materializes them. The Python
hooks of tensors it can see (the leaves, and the tensors named in ``params``) are applied where the engine
applies them; hooks on unnamed intermediates are not visible from the graph and do not run. A reentrant
checkpoint's backward runs an inner engine: the ``.grad`` of the tensors in `keep` and of the parameters of the
modules the checkpointed function reaches is set aside while it runs and put back after it, untouched.
"""

from __future__ import annotations

import functools
import heapq
import inspect
from typing import NamedTuple

import torch

from ._torch import call_node, checkpoint_function, input_metadata, replay_mark, sequence_nr, tensor_hooks

__all__ = ["UNKNOWN", "Run", "run"]


class _Unknown:
    """A gradient that could not be computed (a node whose saved tensors backward() freed): adding anything to it
    gives it back, and a node that receives it sends it on."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN"

    def __add__(self, other):
        return self

    __radd__ = __add__


UNKNOWN = _Unknown()


class Run(NamedTuple):
    """What `run` computed, keyed by node object (the caller maps them to ids).

    ``incoming[fn]``: the gradients flowing into op node `fn` (one per forward output, None where none), after
    any forcing (what the node was called with); ``reached[fn]``: the same before forcing (PyTorch's, where
    nothing upstream was forced; a leaf's too, when forced); ``outgoing[fn]``: what it sent to each
    ``next_functions`` slot (summed to the input's shape and cast, as the engine passes it on); ``leaves[acc]``:
    each AccumulateGrad node's gradient;
    ``parts[(fn, nr)]``: for the positions asked for, the gradients that were added there, in order, each as
    (sending node, slot, gradient); ``failed[fn]``: the error of a node that could not run (with
    ``strict=False``); ``ran``: the nodes in the order they ran (AccumulateGrad nodes included)."""
    incoming: dict
    reached: dict
    outgoing: dict
    leaves: dict
    parts: dict
    failed: dict
    ran: list


def consumer_counts(order: list, nexts: list) -> tuple[dict, list]:
    """(node -> its position in `order`, per position how many next_functions slots point at the node): the
    dependencies the engine waits for before it runs a node."""
    index = {fn: i for i, fn in enumerate(order)}
    counts = [0] * len(order)
    for nf in nexts:
        for f, _ in nf:
            if f is not None:
                counts[index[f]] += 1
    return index, counts


def run(order: list, nexts: list, seeds: dict, *, force: dict | None = None, parts: set | None = None,
        hooks: dict | None = None, keep: tuple = (), strict: bool = True) -> Run:
    """PyTorch's backward over a walked graph (`order`: its nodes, `nexts`: their next_functions, as
    ``tracing.walk`` gives them).

    `seeds` maps (node, output nr) to the root gradients (a list of tensors is summed in order, as
    ``torch.autograd.backward`` sums a root listed twice). `force` maps (node, output nr) to a gradient used
    instead of the one that reached there (the learner's, for `check`); it may also be a function
    ``force(node, nr, reached)`` returning the gradient to go on with. `parts` lists positions whose separate
    contributions to record. `hooks` maps (node, output nr) to a tensor whose Python hooks apply there (a leaf's
    under its AccumulateGrad node, output 0). With ``strict=False`` a node that raises (saved tensors freed)
    sends UNKNOWN on instead of raising.
    """
    force, parts, hooks, ran = force or {}, parts or set(), hooks or {}, []
    index, deps = consumer_counts(order, nexts)
    buffers: dict = {}
    got: dict = {}
    for (fn, nr), gs in seeds.items():
        for g in (gs if isinstance(gs, list) else [gs]):
            _add(buffers, got, parts, fn, nr, None, None, g)
    incoming, reached, outgoing, leaves, failed = {}, {}, {}, {}, {}
    ready = [(_key(fn), index[fn]) for fn in order if deps[index[fn]] == 0]
    heapq.heapify(ready)
    replay_mark(True)  # a watch takes neither this run nor a backward PyTorch runs inside it for training
    try:
        with torch.no_grad():
            while ready:
                _, i = heapq.heappop(ready)
                fn = order[i]
                n_in = _n_inputs(fn)
                grads = [buffers.pop((fn, nr), None) for nr in range(n_in)]
                for nr in range(n_in):
                    h = hooks.get((fn, nr))
                    if h is not None and grads[nr] is not None and grads[nr] is not UNKNOWN:
                        grads[nr] = _apply_hooks(h, grads[nr])
                ran.append(fn)
                if _is_leaf(fn):
                    if callable(force):
                        reached[fn] = [grads[0]]
                        grads[0] = force(fn, 0, grads[0])
                    elif (fn, 0) in force:
                        reached[fn], grads[0] = [grads[0]], force[(fn, 0)]
                    leaves[fn] = grads[0]
                else:
                    reached[fn] = list(grads)
                    for nr in range(n_in):
                        if callable(force):
                            grads[nr] = force(fn, nr, grads[nr])
                        elif (fn, nr) in force:
                            grads[nr] = force[(fn, nr)]
                    incoming[fn] = grads
                    outs = _call(fn, grads, keep, strict, failed)
                    sent = []
                    for slot, ((f, nr), g) in enumerate(zip(nexts[i], outs)):
                        if f is None or g is None:
                            sent.append(None)
                            continue
                        if g is not UNKNOWN:
                            g = _validate(g, f, nr)
                        sent.append(g)
                        _add(buffers, got, parts, f, nr, fn, slot, g)
                    outgoing[fn] = sent
                for f, _ in nexts[i]:
                    if f is not None:
                        j = index[f]
                        deps[j] -= 1
                        if deps[j] == 0:
                            heapq.heappush(ready, (_key(f), j))
    finally:
        replay_mark(False)
    return Run(incoming, reached, outgoing, leaves, {k: got[k] for k in parts if k in got}, failed, ran)


def _key(fn) -> int:
    return -(2**63) if _is_leaf(fn) else -sequence_nr(fn)  # AccumulateGrad runs first when ready, as in the engine


def _is_leaf(fn) -> bool:
    return type(fn).__name__ == "AccumulateGrad"


def _n_inputs(fn) -> int:
    return max(1, len(input_metadata(fn)))


def _add(buffers, got, parts, fn, nr, sender, slot, g) -> None:
    key = (fn, nr)
    if key in parts:
        got.setdefault(key, []).append((sender, slot, g))
    old = buffers.get(key)
    buffers[key] = g if old is None else old + g


def _apply_hooks(t: torch.Tensor, g):
    for h in tensor_hooks(t):
        out = h(g)
        if out is not None:
            g = out
    return g


def _call(fn, grads: list, keep: tuple, strict: bool, failed: dict) -> list:
    if any(g is UNKNOWN for g in grads):
        return [UNKNOWN] * len(fn.next_functions)
    region = checkpoint_function(fn)
    saved = [(t, t.grad) for t in _region_leaves(region, keep)] if region is not None else ()
    for t, _ in saved:  # the inner backward then makes new .grad tensors (it would add into the old ones in place)
        t.grad = None
    try:
        out = call_node(fn, grads)
    except Exception as e:  # noqa: BLE001 - a node that cannot run (freed) is the caller's to report
        if strict:
            raise
        failed[fn] = e
        return [UNKNOWN] * len(fn.next_functions)
    finally:
        for t, g in saved:
            t.grad = g
    return list(out)


def _region_leaves(run, keep) -> list:
    """Leaves whose .grad a reentrant checkpoint's inner backward may write: the tensors named (`keep`) and the
    parameters of the modules its function reaches: the function itself, a bound method's module, a partial's parts,
    its closure and the globals it names, two steps deep."""
    found, seen, todo = {id(t): t for t in keep}, set(), [(run, 0)]
    while todo:
        x, depth = todo.pop()
        if id(x) in seen or x is None:
            continue
        seen.add(id(x))
        if isinstance(x, torch.nn.Module):
            found.update((id(p), p) for p in x.parameters())
        elif isinstance(x, torch.Tensor):
            if x.is_leaf and x.requires_grad:
                found[id(x)] = x
        elif depth < 2:
            parts = []
            if isinstance(x, functools.partial):
                parts += [x.func, *x.args, *x.keywords.values()]
            elif isinstance(x, (list, tuple)):
                parts += list(x)
            elif inspect.ismethod(x):
                parts += [x.__self__, x.__func__]
            elif inspect.isfunction(x):
                for c in x.__closure__ or ():
                    try:
                        parts.append(c.cell_contents)
                    except ValueError:  # an empty cell
                        pass
                parts += [x.__globals__.get(n) for n in x.__code__.co_names]
            todo.extend((p, depth + 1) for p in parts if p is not None)
    return list(found.values())


def _validate(g: torch.Tensor, f, nr: int) -> torch.Tensor:
    """What engine.cpp's validate_outputs does with a gradient flowing into input `nr` of node `f`."""
    meta = input_metadata(f)
    if nr >= len(meta):
        return g
    m = meta[nr]
    shape = tuple(m.shape)
    if tuple(g.shape) != shape:
        g = g.sum_to_size(shape)
    if g.dtype != m.dtype:
        g = g.to(m.dtype)
    return g
