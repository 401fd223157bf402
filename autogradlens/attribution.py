"""Which module made each node: stamped during forward by :func:`modules`, else inferred from parameters."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .errors import LensTypeError

__all__ = ["KEY", "infer_modules", "module_of", "modules"]

KEY = "autogradlens.module"  # the key in grad_fn.metadata (a dict PyTorch keeps on the C++ node)
# nodes that only reshape a parameter (Linear's W.t()): they belong to the parameter's module too
_VIEWS = ("TBackward0", "TransposeBackward0", "PermuteBackward0", "ViewBackward0", "ReshapeAliasBackward0",
          "UnsqueezeBackward0", "ExpandBackward0", "SqueezeBackward0", "SqueezeBackward1", "AliasBackward0")


def _grad_fns(x, out: list) -> list:
    stack = [x]
    while stack:
        v = stack.pop()
        if isinstance(v, torch.Tensor):
            if v.grad_fn is not None:
                out.append(v.grad_fn)
        elif isinstance(v, (list, tuple)):
            stack += v
        elif isinstance(v, dict):
            stack += v.values()
    return out


def _stamp(output, name: str, stops: set) -> None:
    """Stamp `name` on every unstamped node between the module's output and its inputs (inner modules,
    which finished first, keep their own names)."""
    stack, seen = _grad_fns(output, []), set()
    while stack:
        fn = stack.pop()
        if fn in seen or fn in stops or type(fn).__name__ == "AccumulateGrad":
            continue
        seen.add(fn)
        meta = fn.metadata
        if KEY not in meta:
            meta[KEY] = name
        stack += [f for f, _ in fn.next_functions if f is not None and f not in seen]


@contextmanager
def modules(model: torch.nn.Module):
    """Record, during the forward passes inside the ``with`` block, which module of `model` made each
    autograd node; ``lens.trace`` then puts nodes in module clusters (and collapses big modules).

    Forward hooks stamp ``grad_fn.metadata["autogradlens.module"]``; they are removed on exit, also when
    the body raises. Without it, ``trace`` still attributes the nodes that use a parameter.

    Example:
        >>> import torch, autogradlens as lens
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        >>> with lens.modules(model):
        ...     loss = model(torch.randn(2, 3)).sum()
        >>> t = lens.trace(loss, params=model)
        >>> t.graph.nodes["TanhBackward0:0"]["module"]
        '1'
    """
    if not isinstance(model, torch.nn.Module):
        raise LensTypeError(f"lens.modules() takes an nn.Module, got {type(model).__name__}")
    pending: dict = {}  # module -> stack of its inputs' grad_fns (a module may run twice, or inside itself)
    handles = []

    def pre(mod, args):
        pending.setdefault(mod, []).append(set(_grad_fns(args, [])))

    def post(name):
        def hook(mod, args, output):
            stops = pending[mod].pop() if pending.get(mod) else set()
            _stamp(output, name, stops)
        return hook

    try:
        for name, m in model.named_modules():
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post(name)))
        yield model
    finally:
        for h in handles:
            h.remove()
        pending.clear()


def module_of(fn) -> str | None:
    """The module name stamped on node `fn` by :func:`modules`, else None."""
    meta = getattr(fn, "metadata", None)
    return meta.get(KEY) if meta else None


def infer_modules(g) -> None:
    """Fill ``module`` from parameter names: a leaf ``0.weight`` belongs to module ``0``, and so do the
    nodes that consume it (through a transpose or view) when nothing better is known. A node between
    two nodes of known modules gets what they share: between ``layers.0.norm1`` and
    ``layers.0.self_attn.out_proj`` lies ``layers.0``."""
    for nid, d in g.nodes(data=True):
        p = d["param"]
        if p is None or not d["is_leaf"] or "." not in p:
            continue
        owner = p.rsplit(".", 1)[0]
        d["module"] = d["module"] or owner
        todo = list(g.predecessors(nid))
        while todo:
            u = todo.pop()
            du = g.nodes[u]
            if du["module"] is not None:
                continue
            du["module"] = owner
            if du["type"] in _VIEWS and g.out_degree(u) == 1:
                todo += g.predecessors(u)
    known = unknown = False
    for _, d in g.nodes(data=True):
        if d["module"] is not None:
            known = True
        elif not d["is_leaf"]:
            unknown = True
    if known and unknown:
        _sandwich(g)


def _common(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a if b is None else b
    pa, pb = a.split("."), b.split(".")
    k = 0
    while k < min(len(pa), len(pb)) and pa[k] == pb[k]:
        k += 1
    return ".".join(pa[:k])


def _sandwich(g) -> None:
    """Unknown op nodes get the common module of the nearest known nodes on both sides."""
    succ, pred = g._succ, g._pred  # plain dicts: networkx's views cost more than the work here
    indeg = {n: len(pred[n]) for n in succ}
    order = [n for n, k in indeg.items() if k == 0]  # Kahn: root first, leaves last
    for n in order:
        for v in succ[n]:
            indeg[v] -= 1
            if not indeg[v]:
                order.append(v)
    mod = {n: d["module"] for n, d in g.nodes(data=True)}
    up: dict = {}  # nearest known module towards the root
    for n in order:
        cands = [mod[u] if mod[u] is not None else up.get(u) for u in pred[n]]
        acc = None
        for c in cands:
            if c is None:
                continue
            acc = c if acc is None else _common(acc, c)
        up[n] = acc
    down: dict = {}  # nearest known module towards the leaves
    for n in reversed(order):
        acc = None
        for v in succ[n]:
            c = mod[v] if mod[v] is not None else down.get(v)
            if c is not None:
                acc = c if acc is None else _common(acc, c)
        down[n] = acc
    for n in order:
        d = g.nodes[n]
        if d["module"] is None and not d["is_leaf"] and up[n] is not None and down[n] is not None:
            d["module"] = _common(up[n], down[n]) or None
