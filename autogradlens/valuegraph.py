"""Traces of micrograd-style scalar values (``lens.Value``, karpathy's micrograd ``Value``, anything with
``data``, ``grad``, ``_prev`` and ``_op``), in the Trace schema, and the lecture's ``draw_dot`` picture.

Each value is one node: ``type`` is the op that made it (``"+"``, ``"*"``, ``"tanh"``, …) or ``"leaf"``,
with ``data``, ``grad`` and ``label`` besides the usual keys. An edge ``u -> v`` means value `u` was made
from `v` (gradient flows from u to v), keyed by the position of v in ``u._prev``.
"""

from __future__ import annotations

import networkx as nx
import torch

from .errors import LensTypeError

__all__ = ["is_value", "trace_value", "value_spec", "walk_values"]


def is_value(x) -> bool:
    """Duck typing: a micrograd-style scalar value."""
    if isinstance(x, torch.Tensor):
        return False
    return all(hasattr(x, a) for a in ("data", "grad", "_prev", "_op"))


def _children(v) -> list:
    prev = v._prev
    if isinstance(prev, (set, frozenset)):  # micrograd keeps a set: order it by what the values hold
        return sorted(prev, key=lambda c: (str(getattr(c, "label", "") or ""), str(c._op), _num(c.data),
                                           _num(c.grad)))
    return list(prev)


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return 0.0


def _type(v) -> str:
    return str(v._op) if v._op else "leaf"


def walk_values(roots: list) -> tuple[list, dict, dict]:
    """The values behind `roots` in DFS pre-order (iterative), each one's children, and their ids "<op>:<k>"
    (keyed by id() inside this call only, to know which objects are the same value)."""
    for i, r in enumerate(roots):
        if not is_value(r):
            raise LensTypeError(f"root[{i}] is a {type(r).__name__}: expected a Value (data, grad, _prev, _op) "
                                "like the others")
    order, kids, seen, stack = [], {}, set(), list(reversed(roots))
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        order.append(v)
        ks = kids[id(v)] = _children(v)
        stack += [c for c in reversed(ks) if id(c) not in seen]
    ids, counts = {}, {}
    for v in order:
        t = _type(v)
        k = counts.get(t, 0)
        counts[t] = k + 1
        ids[id(v)] = f"{t}:{k}"
    return order, kids, ids


def trace_value(root) -> nx.MultiDiGraph:
    """The graph of values behind `root` (iterative walk, deterministic ids "<op>:<k>" in DFS pre-order)."""
    roots = list(root) if isinstance(root, (list, tuple)) else [root]
    order, kids, ids = walk_values(roots)
    g = nx.MultiDiGraph()
    root_ids = {ids[id(r)] for r in roots}
    for v in order:
        nid = ids[id(v)]
        label = getattr(v, "label", None)
        g.add_node(nid, type=_type(v), is_leaf=not v._op, param=None, shape=(), dtype="float", device=None,
                   saved=[], attrs={}, seq=None, is_root=nid in root_ids, name=label or None, module=None,
                   data=_num(v.data), grad=_num(v.grad), label=label or None, outputs=[()], not_saved=[])
    for v in order:
        for slot, c in enumerate(kids[id(v)]):
            g.add_edge(ids[id(v)], ids[id(c)], key=slot, input_nr=0, slot=slot)
    return g


def _esc(s: str) -> str:
    for a, b in (("{", "("), ("}", ")"), ("|", "/"), ("<", "‹"), (">", "›")):
        s = s.replace(a, b)
    return s


def value_spec(trace, *, rankdir: str = "LR", legend=True, prefix: str = "", colors: dict | None = None,
               label: str | None = None, limit: int | None = 60, mark: dict | None = None,
               names: dict | None = None, **tensor_options) -> dict:
    """The lecture's draw_dot: a record ``label | data | grad`` per value (an empty label for a value without
    one, as draw_dot shows it; the id is the tooltip), a small op node between, left to right (inputs on the
    left, the output on the right) or top to bottom.

    A graph of more than `limit` values draws the `limit` nearest the root and one box for the rest (with a
    note saying how to draw all: ``render(path, limit=None)``; dot needs minutes for tens of thousands).
    `colors`, `legend`, `mark` and `names` work as in ``trace_spec``; its options for tensor graphs
    (``show_saved``, ``depth``, ...) change nothing here.
    """
    from .render import MARK

    g = trace.graph
    colors, mark, names = colors or {}, mark or {}, names or {}
    keep = _nearest_values(trace, limit)
    lr = rankdir in ("LR", "RL")
    nodes, edges = [], []
    drawn = list(g.nodes) if keep is None else keep
    keepset = None if keep is None else set(keep)
    for nid in drawn:
        d = g.nodes[nid]
        name = names.get(nid) or d.get("label") or ""
        fields = [_esc(str(name)), f"data {d['data']:.4f}", f"grad {d['grad']:.4f}"]
        if nid in mark:
            fields[0] = _esc(f"{mark[nid]}: {name}" if name else str(mark[nid]))
        body = " | ".join(fields)
        style = {"label": f"{{ {body} }}" if lr else body,
                 "shape": "record", "style": "filled", "fillcolor": colors.get(nid, "#ffd166" if d["is_root"]
                                                                                 else "#ffffff"),
                 "kind": "value", "id": prefix + nid, "tooltip": nid}
        if nid in mark:
            style.update(penwidth="4", color=MARK, fontcolor=MARK)
        nodes.append((prefix + nid, style))
        if not d["is_leaf"]:
            op = f"{prefix}{nid}/op"
            nodes.append((op, {"label": _esc(d["type"]), "shape": "ellipse", "fillcolor": "#dbe7f5",
                               "fontsize": "10", "width": "0.3", "height": "0.3", "margin": "0.02", "kind": "op",
                               "tooltip": f"{nid} = {d['type']}(…)"}))
            edges.append((op, prefix + nid, {}))
    hidden = 0 if keep is None else g.number_of_nodes() - len(keep)
    notes = [label] if label else []
    if hidden:
        more = f"{prefix}more:0"
        nodes.append((more, {"label": f"… {hidden:,} more values not drawn", "shape": "box3d", "style": "filled",
                             "fillcolor": "#eeeeee", "kind": "box", "id": more}))
        notes.append(f"the {len(keep)} values nearest the output drawn, {hidden:,} not: render(path, limit=None) "
                     "draws all (Graphviz needs minutes for tens of thousands)")
    linked = set()
    for u, v, k in sorted(g.edges(drawn, keys=True), key=lambda e: (e[0], e[2])):
        if keepset is not None and v not in keepset:
            if u not in linked:  # one edge from each drawn value whose inputs are not drawn
                linked.add(u)
                edges.append((f"{prefix}more:0", f"{prefix}{u}/op", {"style": "dashed"}))
            continue
        edges.append((prefix + v, f"{prefix}{u}/op", {"slot": k}))
    spec = {"attrs": {"rankdir": rankdir}, "nodes": nodes, "edges": edges, "clusters": [],
            "label": "\n".join(notes) or None}
    if legend:
        spec["legend"] = list(legend) if isinstance(legend, (list, tuple)) else []
        if mark:
            spec["legend"].append((f"thick border: {next(iter(mark.values()))}", "mark", "box"))
    return spec


def _nearest_values(trace, limit: int | None) -> list | None:
    """The `limit` values nearest the root(s), breadth first (None: all)."""
    g = trace.graph
    if limit is None or g.number_of_nodes() <= limit:
        return None
    keep, queue, i = {}, list(trace.roots), 0
    while i < len(queue) and len(keep) < limit:
        x = queue[i]
        i += 1
        if x not in keep:
            keep[x] = True
            queue += [v for _, v, _k in sorted(g.out_edges(x, keys=True), key=lambda e: e[2])]
    order = {n: i for i, n in enumerate(g.nodes)}  # drawn in the graph's own order (deterministic DOT)
    return sorted(keep, key=order.__getitem__)
