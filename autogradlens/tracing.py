"""`trace`: the real autograd graph behind a tensor, as a plain networkx graph.

Schema (documented once, consumed by render, mirror, watch and diff):

node id   "<Type>:<k>" (k counts nodes of that type in walk order) or "param:<name>" for named leaves
node      type, is_leaf, param, name, shape, dtype, device, saved, attrs, seq, is_root, module, grad
          (name: the leaf's parameter name, or the `params` name of the intermediate tensor the node made)
          (seq: autograd sequence number counted from the graph's first node; forward creation order)
          + outputs (shape per forward output), not_saved (slots that hold None, with the reason)
saved     name, shape, dtype, device, nbytes, storage, storage_nbytes, is_output, alias, state, version,
          unmeasured (None, or what cannot be measured for this slot and why: sparse, nested, meta)
edge      u -> v: u sends gradient to v; key = slot = position in u.next_functions; input_nr
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import networkx as nx
import numpy as np
import torch

from ._files import dumps
from ._freeing import keep_freeable
from ._guard import collector_paused
from ._torch import input_metadata, read_slot, saved_attr, saved_names, sequence_nr, storage_of, version
from ._tracejson import SCHEMA, read_trace
from .attribution import infer_modules, module_of
from .capture import capture
from .errors import LensRuntimeError, LensTypeError, LensValueError
from .render import Drawable, trace_spec
from .render import to_text as _to_text
from .valuegraph import is_value, trace_value

__all__ = ["Trace", "Walk", "assign_ids", "short_name", "trace", "traced", "walk"]

_U64 = 2**64
_REDUCTION = {0: "none", 1: "mean", 2: "sum"}
# Binary ops save each input only for the other's gradient (conditional saving): node type -> input pair.
_PAIRS = {"AddmmBackward0": ("mat1", "mat2"), "MmBackward0": ("self", "mat2"), "BmmBackward0": ("self", "mat2"),
          "MvBackward0": ("self", "vec"), "DotBackward0": ("self", "tensor"), "MulBackward0": ("self", "other"),
          "DivBackward0": ("self", "other")}


# ----------------------------------------------------------------------------- walking

def _node_type(fn) -> str:
    return type(fn).__name__


def walk(roots: list) -> tuple[list, list]:
    """Nodes reachable from `roots` (grad_fns) in deterministic DFS pre-order (iterative), with their
    next_functions (read once: each access builds a new tuple).

    Reading next_functions gives every node a Python wrapper for life, which makes PyTorch free a chain of such
    nodes by recursion (a SIGSEGV around 50,000 deep): a graph deeper than ``_freeing.DEEP`` gets a hold on each
    node that turns that recursion into a loop (see ``_freeing``)."""
    order, nexts, seen, stack = [], [], set(), list(reversed(roots))
    push, add = stack.append, seen.add
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        add(fn)
        nf = fn.next_functions
        order.append(fn)
        nexts.append(nf)
        for f, _ in reversed(nf):
            if f is not None and f not in seen:
                push(f)
    keep_freeable(order, nexts)
    return order, nexts


def assign_ids(order: list, names: dict[int, str]) -> dict:
    ids, counts = {}, {}
    for fn in order:
        t = _node_type(fn)
        var = getattr(fn, "variable", None) if t == "AccumulateGrad" else None
        if var is not None and id(var) in names:
            ids[fn] = f"param:{names[id(var)]}"
            continue
        k = counts.get(t, 0)
        counts[t] = k + 1
        ids[fn] = f"{t}:{k}"
    return ids


def _named(params) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs from a module, mapping or iterable of pairs; one name never covers two tensors."""
    if params is None:
        return []
    if isinstance(params, torch.nn.Module):
        pairs = params.named_parameters()
    elif isinstance(params, Mapping):
        pairs = params.items()
    elif isinstance(params, Iterable) and not isinstance(params, (str, torch.Tensor)):
        pairs = params
    else:
        raise LensTypeError(f"params must be an nn.Module, a mapping name -> tensor or (name, tensor) pairs, "
                            f"got {type(params).__name__}")
    out, seen = [], {}
    for item in pairs:
        try:
            name, t = item
        except (TypeError, ValueError):
            raise LensTypeError(f"params entries must be (name, tensor) pairs, got {item!r:.60}") from None
        if not isinstance(t, torch.Tensor):
            raise LensTypeError(f"params[{name!r}] is a {type(t).__name__}, expected a tensor")
        name = str(name)
        if name in seen:
            if seen[name] is not t:
                raise LensValueError(f"params names two different tensors {name!r}: give each tensor its own name")
            continue
        seen[name] = t
        out.append((name, t))
    return out


def _roots(root) -> list:
    """The distinct grad_fns of the root tensor(s), in order of first appearance."""
    tensors = list(root) if isinstance(root, (list, tuple)) else [root]
    if not tensors:
        raise LensValueError("nothing to trace: got an empty list of roots; pass the loss tensor")
    fns = []
    for i, t in enumerate(tensors):
        where = f"root[{i}]" if isinstance(root, (list, tuple)) else "root"
        if not isinstance(t, torch.Tensor):
            raise LensTypeError(f"{where} must be a torch.Tensor with a grad_fn (usually the loss), "
                                f"got {type(t).__name__}")
        if not t.requires_grad:
            raise LensValueError(f"nothing to trace: {where} does not require grad (was it created under "
                                 "torch.no_grad() or from tensors without requires_grad=True?)")
        if t.grad_fn is None:
            raise LensValueError(f"a leaf has no graph: {where} is a leaf tensor {tuple(t.shape)}; "
                                 "trace the loss computed from it instead")
        if t.grad_fn not in fns:
            fns.append(t.grad_fn)
    return fns


# ----------------------------------------------------------------------------- decoding

_STR: dict = {}  # torch.dtype / torch.device -> display string (str() of a device costs ~0.5 us)


def short_name(d) -> str:
    """A dtype or device as trace attributes spell it: "float32", "cpu"."""
    s = _STR.get(d)
    if s is None:
        s = _STR[d] = str(d).removeprefix("torch.")
    return s


def _decode(v):
    tv = type(v)
    if tv is int:
        return v - _U64 if v >= 2**63 else v
    if tv is bool or v is None or tv is float or tv is str:
        return v
    if tv is tuple and all(type(x) is int and x < 2**63 for x in v):
        return list(v)
    if isinstance(v, int):
        return v - _U64 if v >= 2**63 else v
    if isinstance(v, (tuple, list, torch.Size)):
        return [_decode(x) for x in v]
    if isinstance(v, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
        return str(v).removeprefix("torch.")
    if isinstance(v, torch.SymInt):
        return int(v)
    return f"<{type(v).__name__}>"


def _decode_attr(name: str, v):
    v = _decode(v)
    if name == "reduction" and v in _REDUCTION:
        return _REDUCTION[v]
    return v


def _ctx_attrs(fn) -> dict:
    d = getattr(fn, "__dict__", None) or {}
    return {k: _decode(v) for k, v in sorted(d.items()) if not k.startswith("_")
            and not isinstance(v, torch.Tensor)}


# ----------------------------------------------------------------------------- saved tensors

class _Ledger:
    """Canonical storage keys ("s0", "s1", ... in order of first sight) and aliases."""

    def __init__(self, param_ptrs: dict[int, str]):
        self.keys: dict[int, str] = {}
        self.first: dict[str, str] = {}
        self.param_ptrs = param_ptrs

    def slot(self, nid: str, name: str, t: torch.Tensor | None, state: str, fn=None, sizes=None) -> dict:
        if t is None:
            return {"name": name, "shape": tuple(sizes) if sizes is not None else None, "dtype": None,
                    "device": None, "nbytes": None, "storage": None, "storage_nbytes": None,
                    "is_output": False, "alias": None, "state": state, "version": None, "unmeasured": None}
        ptr, snb, why = storage_of(t)
        key = alias = None
        if why is None:
            key = self.keys.setdefault(ptr if snb else -len(self.keys) - 1, f"s{len(self.keys)}")
            alias = self.param_ptrs.get(ptr) if snb else None
            if alias is None:
                alias = self.first.get(key)
            self.first.setdefault(key, f"{nid}.{name}")
        sparse = t.layout not in (torch.strided, torch.jagged)  # numel() counts the zeros: not its bytes
        return {"name": name, "shape": _shape(t), "dtype": short_name(t.dtype), "device": short_name(t.device),
                "nbytes": None if sparse else t.numel() * t.element_size(), "storage": key, "storage_nbytes": snb,
                "is_output": fn is not None and t.grad_fn is fn, "alias": alias, "state": state,
                "version": version(t), "unmeasured": why}


def _shape(t: torch.Tensor):
    try:
        return tuple(int(s) for s in t.shape)
    except Exception:  # nested tensors: no single shape (RuntimeError, or AttributeError on a jagged size)
        return None


def _not_saved_reason(ntype: str, slot: str) -> str:
    pair = _PAIRS.get(ntype, ())
    if slot in pair:
        partner = pair[1 - pair.index(slot)]
        return f"not saved: only needed for the gradient of {partner}, which does not require grad"
    return "not saved: optional input not given, or no gradient needs it"


# ----------------------------------------------------------------------------- the graph

def _node_attrs(fn, nid: str, ledger: _Ledger, cache: dict, names: dict, inter: dict) -> dict:
    """Every key of DESIGN §1 for one node; never raises (freed or stale saved tensors are states)."""
    t = _node_type(fn)
    saved, not_saved, attrs = [], [], {}
    if t == "AccumulateGrad":
        var = fn.variable
        shapes = [tuple(var.shape)]
        dtype, device, seq = short_name(var.dtype), short_name(var.device), None
        param = name = names.get(id(var))
    else:
        meta = input_metadata(fn)
        shapes = [tuple(m.shape) for m in meta]
        dtype = short_name(meta[0].dtype) if meta else None
        device = short_name(meta[0].device) if meta else None
        seq, param, name = sequence_nr(fn), None, inter.get(fn)
        slots, other = saved_names(fn, cache)
        for a in other:
            try:
                attrs[a] = _decode_attr(a, saved_attr(fn, a))
            except RuntimeError:
                attrs[a] = "<freed>"
        for a in slots:
            for sname, tensor, state, none in read_slot(fn, a):
                if none == "none":
                    not_saved.append({"name": sname, "reason": _not_saved_reason(t, sname)})
                    continue
                sizes = attrs.get(f"{sname}_sym_sizes") if tensor is None else None
                saved.append(ledger.slot(nid, sname, tensor, state, fn, sizes))
        if "saved_tensors" in slots:  # a custom Function's ctx: its plain attributes
            attrs.update(_ctx_attrs(fn))
    return {"type": t, "is_leaf": t == "AccumulateGrad", "param": param, "name": name,
            "shape": shapes[0] if shapes else None, "dtype": dtype, "device": device,
            "saved": saved, "attrs": attrs, "seq": seq, "is_root": False,
            "module": None if t == "AccumulateGrad" else module_of(fn),
            "grad": None,
            "outputs": shapes, "not_saved": not_saved}


def trace(root, *, params=None, grads: bool = False) -> Trace:
    """Trace the autograd graph behind `root` into a :class:`Trace`.

    `root` is a tensor with a ``grad_fn`` (usually the loss) or a list of them. `params` names tensors:
    an ``nn.Module``, a mapping name -> tensor, or ``(name, tensor)`` pairs. A named leaf becomes node
    ``param:<name>``; a named intermediate (``logprobs``, ``h``, ...) gives its producing node ``name``.
    Works before and after ``backward()``: freed saved tensors are reported with state ``freed``.

    With ``grads=True`` one backward pass records on each node the gradient flowing into it (``grad``:
    norm, abs_max, mean, values when it has at most 8 elements); every ``.grad`` is left as it was.

    `root` may also be a micrograd-style scalar (a ``lens.Value`` or anything with ``data``, ``grad``,
    ``_prev``, ``_op``): then each node is one value with ``data``, ``grad``, ``label``, and the picture
    is the lecture's ``draw_dot``.

    Raises:
        LensTypeError: `root` is not a tensor (or a micrograd-style value), `params` is not a module, a
            mapping or (name, tensor) pairs.
        LensValueError: no roots, a root that does not require grad or is a leaf, two different tensors
            under one name, `params`/`grads` given with a Value root.
        LensRuntimeError: ``grads=True`` on a graph whose saved tensors backward() has freed or an
            in-place change has made stale.

    Example:
        >>> import torch, autogradlens as lens
        >>> w = torch.tensor([2.0, -3.0], requires_grad=True)
        >>> t = lens.trace((w * w).sum(), params={"w": w})
        >>> sorted(t.graph.nodes)
        ['MulBackward0:0', 'SumBackward0:0', 'param:w']
        >>> t.graph.number_of_edges("MulBackward0:0", "param:w")   # a * a: two edges
        2
        >>> round(lens.trace((w * w).sum(), params={"w": w}, grads=True).graph.nodes["param:w"]["grad"]["norm"], 3)
        7.211
        >>> a = lens.Value(2.0); b = a * 3.0; b.backward()
        >>> lens.trace(b).graph.nodes["*:0"]["data"], lens.trace(b).graph.nodes["leaf:0"]["grad"]
        (6.0, 3.0)
    """
    first = root[0] if isinstance(root, (list, tuple)) and root else root
    if is_value(first):
        if params is not None or grads:
            raise LensValueError("params= and grads= are for tensor graphs: a Value carries its own label, data "
                                 "and grad; call root.backward() before tracing to see the gradients")
        g = trace_value(root)
        ids = [n for n, d in g.nodes(data=True) if d["is_root"]]
        return Trace(g, ids if isinstance(root, (list, tuple)) else ids[0])
    t, w = traced(root, params)
    if grads:
        _attach_grads(t, w, list(root) if isinstance(root, (list, tuple)) else [root])
    return t


def _grad_stats(gs: list) -> dict | None:
    gs = [x for x in gs if x is not None]
    if not gs:
        return None
    n = sum(x.size for x in gs)
    cplx = any(np.iscomplexobj(x) for x in gs)  # complex gradients: sizes from |x|, no mean and no values
    with np.errstate(over="ignore", invalid="ignore"):  # infinite or NaN gradients give inf / NaN, quietly
        sq = sum(float(((np.abs(x) if cplx else x).astype("float64") ** 2).sum()) for x in gs)
        out = {"norm": math.sqrt(sq), "abs_max": max(float(abs(x).max()) if x.size else 0.0 for x in gs),
               "mean": None if cplx else sum(float(x.sum()) for x in gs) / n if n else 0.0}
    if n <= 8 and not cplx:
        out["values"] = gs[0].tolist() if len(gs) == 1 else [x.tolist() for x in gs]
    return out


def _attach_grads(t: Trace, w: Walk, roots: list) -> None:
    ops = {fn: w.ids[fn] for fn in w.order if _node_type(fn) != "AccumulateGrad"}
    leaves = {fn: w.ids[fn] for fn in w.order if _node_type(fn) == "AccumulateGrad"}
    if not leaves:
        raise LensValueError("grads=True needs a graph that reaches at least one leaf tensor with requires_grad")
    gone = {s["state"] for _, d in t.graph.nodes(data=True) for s in d["saved"]} & {"freed", "stale"}
    if gone:
        raise LensRuntimeError(f"grads=True runs a backward pass, but saved tensors of this graph are "
                               f"{' and '.join(sorted(gone))}: trace with grads=True before backward() (or "
                               "backward(retain_graph=True)) and before changing its tensors in place")
    seen_in, _, leaf_in = capture(w, roots, ops, leaves, keep=tuple(t for _, t in w.named))  # changes no .grad
    g = t.graph
    for nid, gs in seen_in.items():
        g.nodes[nid]["grad"] = _grad_stats(gs)
    for nid, gv in leaf_in.items():
        g.nodes[nid]["grad"] = _grad_stats([gv])


class Walk(NamedTuple):
    """What a trace walked, for the mirror (live node objects: never stored on a Trace)."""
    fns: list
    order: list
    nexts: list
    ids: dict
    names: dict
    named: list  # the (name, tensor) pairs of `params`, leaves and intermediates


def traced(root, params) -> tuple[Trace, Walk]:
    """The one walk the other tools share: the Trace of `root` and what it walked (the live nodes, their
    next_functions and ids, the named tensors), for the mirror and the check. Raises as `trace` does."""
    fns = _roots(root)
    named = _named(params)
    names: dict[int, str] = {}  # id(leaf tensor) -> name, for this call only (never stored)
    inter: dict = {}  # grad_fn -> name of the intermediate tensor it produced (params may name non-leaves)
    for n, t in named:
        if t.grad_fn is not None:
            inter.setdefault(t.grad_fn, n)
        else:
            names.setdefault(id(t), n)
    param_ptrs = {ptr: n for n, p in named if p.grad_fn is None for ptr, snb, _ in [storage_of(p)] if snb}
    order, nexts = walk(fns)
    ids = assign_ids(order, names)
    g = nx.MultiDiGraph()
    ledger, cache = _Ledger(param_ptrs), {}
    with collector_paused():  # many small dicts and no cycles: the collector would only rescan them
        g.add_nodes_from((ids[fn], _node_attrs(fn, ids[fn], ledger, cache, names, inter)) for fn in order)
        g.add_edges_from((ids[fn], ids[f], slot, {"input_nr": nr, "slot": slot})
                         for fn, nf in zip(order, nexts) for slot, (f, nr) in enumerate(nf) if f is not None)
    seqs = [d["seq"] for _, d in g.nodes(data=True) if d["seq"] is not None]
    base = min(seqs, default=0)  # the counter is per thread and global: keep it relative, so reruns agree
    for _, d in g.nodes(data=True):
        if d["seq"] is not None:
            d["seq"] -= base
    infer_modules(g)
    root_ids = [ids[f] for f in fns]
    for r in root_ids:
        g.nodes[r]["is_root"] = True
    t = Trace(g, root_ids[0] if not isinstance(root, (list, tuple)) else root_ids)
    if isinstance(params, torch.nn.Module):  # pictures title modules by path and class: "layer1.0 · BasicBlock"
        g.graph["module_types"] = {n: type(m).__name__ for n, m in params.named_modules() if n}
    return t, Walk(fns, order, nexts, ids, names, named)


class Trace(Drawable):
    """The autograd graph of one (or several) roots. ``graph`` is a ``networkx.MultiDiGraph``.

    Example:
        >>> import torch, autogradlens as lens
        >>> x = torch.randn(3, 2, requires_grad=True)
        >>> t = lens.trace(x.tanh().sum())
        >>> t.summary()["by_type"]
        {'AccumulateGrad': 1, 'SumBackward0': 1, 'TanhBackward0': 1}
    """

    def __init__(self, graph: nx.MultiDiGraph, root):
        self.graph = graph
        self.root = root

    @property
    def roots(self) -> list[str]:
        return list(self.root) if isinstance(self.root, list) else [self.root]

    def __len__(self) -> int:
        return self.graph.number_of_nodes()

    def summary(self) -> dict:
        """Counts: nodes, edges, by_type, leaves, params, saved_tensors, saved_bytes (deduplicated)."""
        g = self.graph
        by_type: dict[str, int] = {}
        storages: dict[str, int] = {}
        n_saved = 0
        for _, d in g.nodes(data=True):
            by_type[d["type"]] = by_type.get(d["type"], 0) + 1
            for s in d["saved"]:
                n_saved += 1
                if s["storage"] is not None and s["state"] != "freed":
                    storages[s["storage"]] = s["storage_nbytes"]
        leaves = [n for n, d in g.nodes(data=True) if d["is_leaf"]]
        return {"nodes": g.number_of_nodes(), "edges": g.number_of_edges(),
                "by_type": dict(sorted(by_type.items())), "leaves": len(leaves),
                "params": sum(1 for n in leaves if g.nodes[n]["param"] is not None),
                "saved_tensors": n_saved, "saved_bytes": sum(storages.values()),
                "saved_storages": len(storages)}

    def to_text(self, **opts) -> str:
        """An indented tree (shared subgraphs shown once, then referenced), names the user gave first.
        Options: show_saved, show_attrs, limit (lines)."""
        return _to_text(self, **opts)

    # drawing (to_dot, to_graphviz, to_svg, render, notebook display) comes from render.Drawable
    _what = "a trace"

    def _spec(self, **opts) -> dict:
        """Options: show_saved, show_attrs, rankdir, legend, depth (module levels expanded), grads, limit."""
        return trace_spec(self, **opts)

    def _text_formats(self, **opts) -> dict:
        return {"json": lambda: self.to_json(indent=1), "txt": lambda: self.to_text() + "\n"}

    def __repr__(self) -> str:
        s = self.summary()
        return (f"<Trace {s['nodes']} nodes, root {self.root}, {s['saved_tensors']} saved tensors, "
                f"{s['saved_bytes']} bytes>")

    STR_LINES = 60  # print(trace) shows the whole tree up to this many nodes, else its first lines

    def __str__(self) -> str:
        """The text tree (``to_text()``); for a big trace its first lines and a note saying how to get all."""
        n = len(self)
        if n <= self.STR_LINES:
            return self.to_text()
        head = self.to_text(limit=self.STR_LINES // 2)
        return (f"{repr(self)}\n{head}\n… the tree goes on ({n:,} nodes): to_text() gives all of it, "
                "render('graph.txt') writes it to a file")

    # ---- JSON: plain, lossless for the graph
    def to_json(self, indent: int | None = None) -> str:
        """Plain, strict JSON (never pickle); ``Trace.from_json`` gives back an equal graph.

        Non-finite numbers (an attribute ``ord=inf``, a gradient norm) are written as "inf", "-inf", "nan"
        and read back as floats.
        """
        g = self.graph
        nodes = [{"id": n, **d} for n, d in g.nodes(data=True)]
        edges = [{"u": u, "v": v, "key": k, **d} for u, v, k, d in g.edges(keys=True, data=True)]
        doc = {"schema": SCHEMA, "root": self.root, "nodes": nodes, "edges": edges}
        if g.graph.get("module_types"):  # pictures of a trace read back title modules by path and class too
            doc["module_types"] = g.graph["module_types"]
        return dumps(doc, indent=indent)

    @classmethod
    def from_json(cls, s: str | bytes) -> Trace:
        """Rebuild a Trace from ``to_json()`` output, checking its structure first.

        Raises:
            LensValueError: (a ``ValueError``) when `s` is not JSON, not a trace, or damaged; the message
                names the place, e.g. ``nodes[3].saved[0]: missing key 'state'`` or
                ``edges[7].v: 'MulBackward0:9' is not a node``.

        Example:
            >>> import torch, autogradlens as lens
            >>> x = torch.randn(2, requires_grad=True)
            >>> t = lens.trace(x.exp().sum())
            >>> lens.Trace.from_json(t.to_json()).to_text() == t.to_text()
            True
            >>> lens.Trace.from_json('{"schema": "autogradlens.trace/1", "root": "A", "nodes": 5, "edges": []}')
            Traceback (most recent call last):
            ...
            autogradlens.errors.LensValueError: damaged trace JSON: nodes: expected a list, got int; ...
        """
        return cls(*read_trace(s))
