"""`diff`: match two autograd graphs structurally and say what was removed, added and changed.

Matching, never by id and never by graph-edit search (each phase is linear in the graph size):
1. identical subgraphs: a canonical number for every node's subgraph towards the leaves (type, shape,
   and its children by slot), computed leaves-first; equal numbers match wholesale, biggest first,
   preferring equal parameter names, then walk order;
2. anchors: the roots pairwise, and leaves with the same parameter name;
3. growth along edges from matched pairs: children by slot (from the roots down), then consumers by
   slot and type where the choice is unique;
4. then growth to children of another type (a changed op: ReLU -> GELU, x + x -> 2 * x), and again.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from . import report
from .errors import LensTypeError
from .render import COLORS, COLUMN, Drawable, _drawn, short_shape, trace_spec
from .tracing import Trace, trace

__all__ = ["GraphDiff", "diff"]

_COMPARED = ("type", "shape", "dtype", "param")
ALIGN_LIMIT = 400  # up to this many matched pairs, the picture puts each pair on one rank


def _as_trace(x, which: str) -> Trace:
    if isinstance(x, Trace):
        return x
    if isinstance(x, torch.Tensor):
        return trace(x)
    raise LensTypeError(f"diff({which}=...) takes a Trace (lens.trace(loss)) or a tensor with a grad_fn, "
                        f"got {type(x).__name__}")


def _children(g) -> dict:
    """node -> [(slot, input_nr, child)] sorted by slot; consumers: node -> [(consumer, slot)]."""
    kids: dict = {n: [] for n in g}
    for u, v, k, d in g.edges(keys=True, data=True):
        kids[u].append((k, d["input_nr"], v))
    for lst in kids.values():
        lst.sort(key=lambda e: e[0])
    return kids


def _consumers(g) -> dict:
    ups: dict = {n: [] for n in g}
    for u, v, k in g.edges(keys=True):
        ups[v].append((u, k))
    return ups


def _canonical(g, kids, order, canon: dict, named: bool) -> dict:
    """Canonical subgraph number per node (equal numbers = identical subgraphs), leaves first."""
    h = {}
    nodes = g.nodes
    for n in reversed(order):
        d = nodes[n]
        key = (d["type"], d["shape"], d["param"] if named else None, tuple((k, nr, h[v]) for k, nr, v in kids[n]))
        h[n] = canon.setdefault(key, len(canon))
    return h


def _topo(g) -> list:
    """Consumers before producers, ties broken by walk order (the trace's node order): deterministic."""
    import networkx as nx
    idx = {n: i for i, n in enumerate(g.nodes)}
    return list(nx.lexicographical_topological_sort(g, key=idx.__getitem__))


def _attr_diff(da: dict, db: dict) -> dict:
    out = {}
    for k in _COMPARED:
        if da.get(k) != db.get(k):
            out[k] = (da.get(k), db.get(k))
    sa = [(s["name"], s["shape"], s["dtype"], s["nbytes"]) for s in da["saved"]]
    sb = [(s["name"], s["shape"], s["dtype"], s["nbytes"]) for s in db["saved"]]
    if sa != sb:
        out["saved"] = (sa, sb)
    keys = sorted(set(da["attrs"]) | set(db["attrs"]))
    attrs = {k: (da["attrs"].get(k), db["attrs"].get(k)) for k in keys if da["attrs"].get(k) != db["attrs"].get(k)}
    if attrs:
        out["attrs"] = attrs
    return out


class _Matcher:
    def __init__(self, a: Trace, b: Trace):
        self.a, self.b = a, b
        self.ga, self.gb = a.graph, b.graph
        self.oa, self.ob = _topo(self.ga), _topo(self.gb)
        self.pos_a = {n: i for i, n in enumerate(self.oa)}
        self.pos_b = {n: i for i, n in enumerate(self.ob)}
        self.ka, self.kb = _children(self.ga), _children(self.gb)
        self.ua, self.ub = _consumers(self.ga), _consumers(self.gb)
        self.ab: dict = {}
        self.ba: dict = {}

    def pair(self, x, y) -> bool:
        if x in self.ab or y in self.ba:
            return False
        self.ab[x], self.ba[y] = y, x
        return True

    def pair_subgraphs(self, x, y):
        stack = [(x, y)]
        while stack:
            u, v = stack.pop()
            if not self.pair(u, v):
                continue
            for (_, _, cu), (_, _, cv) in zip(self.ka[u], self.kb[v]):
                stack.append((cu, cv))

    def identical(self):
        for named in (True, False):
            canon: dict = {}
            ha = _canonical(self.ga, self.ka, self.oa, canon, named)
            hb = _canonical(self.gb, self.kb, self.ob, canon, named)
            pool = defaultdict(list)
            for n in reversed(self.ob):
                pool[hb[n]].append(n)
            for n in self.oa:  # parents first: the biggest subgraphs match first
                if n in self.ab:
                    continue
                cands = pool.get(ha[n])
                while cands and cands[-1] in self.ba:
                    cands.pop()
                if cands:
                    self.pair_subgraphs(n, cands.pop())

    def anchors(self):
        for x, y in zip(self.a.roots, self.b.roots):
            self.pair(x, y)
        by_name = {d["param"]: n for n, d in self.gb.nodes(data=True) if d["param"] is not None}
        for n, d in self.ga.nodes(data=True):
            if d["param"] is not None and d["param"] in by_name:
                self.pair(n, by_name[d["param"]])

    def _frontier(self):
        return sorted(self.ab.items(), key=lambda p: self.pos_a[p[0]])

    def grow_down(self, same_type: bool) -> int:
        """Children of matched pairs, by slot (from the roots towards the leaves)."""
        added, frontier = 0, self._frontier()
        while frontier:
            nxt = []
            for u, v in frontier:
                cb = {k: c for k, _, c in self.kb[v]}
                for k, _, cu in self.ka[u]:
                    cv = cb.get(k)
                    if cv is not None and cu not in self.ab and cv not in self.ba and self._ok(cu, cv, same_type):
                        self.pair(cu, cv)
                        nxt.append((cu, cv))
            added += len(nxt)
            frontier = nxt
        return added

    def grow_up(self) -> int:
        """Consumers of matched pairs with the same slot and type, when the choice is unique."""
        added, frontier = 0, self._frontier()
        while frontier:
            nxt = []
            for u, v in frontier:
                pb = defaultdict(list)
                for p, k in self.ub[v]:
                    if p not in self.ba:
                        pb[(k, self.gb.nodes[p]["type"])].append(p)
                for p, k in self.ua[u]:
                    cands = pb.get((k, self.ga.nodes[p]["type"]), [])
                    if p not in self.ab and len(cands) == 1 and cands[0] not in self.ba:
                        self.pair(p, cands[0])
                        nxt.append((p, cands[0]))
            added += len(nxt)
            frontier = nxt
        return added

    def _ok(self, x, y, same_type: bool) -> bool:
        dx, dy = self.ga.nodes[x], self.gb.nodes[y]
        if dx["is_leaf"] != dy["is_leaf"]:
            return False
        return dx["type"] == dy["type"] or not same_type

    def run(self):
        self.identical()
        self.anchors()
        while self.grow_down(True) + self.grow_up() + self.grow_down(False):
            pass


class GraphDiff(Drawable):
    """The difference between two traced graphs.

    ``matched`` (pairs of ids), ``removed`` (ids in a only), ``added`` (ids in b only), ``changed``
    (matched pairs that differ: dicts with ``a``, ``b`` and ``what`` = {field: (in a, in b)}).
    """

    def __init__(self, a: Trace, b: Trace, matched, removed, added, changed):
        self.a, self.b = a, b
        self.matched, self.removed, self.added, self.changed = matched, removed, added, changed

    @property
    def is_empty(self) -> bool:
        return not (self.removed or self.added or self.changed)

    def summary(self) -> dict:
        sa, sb = self.a.summary(), self.b.summary()
        return {"nodes_a": sa["nodes"], "nodes_b": sb["nodes"], "matched": len(self.matched),
                "removed": len(self.removed), "added": len(self.added), "changed": len(self.changed),
                "saved_bytes_a": sa["saved_bytes"], "saved_bytes_b": sb["saved_bytes"]}

    def __repr__(self) -> str:
        s = self.summary()
        return (f"<GraphDiff {'empty' if self.is_empty else 'different'}: {s['matched']} matched, "
                f"{s['removed']} removed, {s['added']} added, {s['changed']} changed>")

    def to_text(self) -> str:
        """A readable list of the differences."""
        s = self.summary()
        lines = [f"a: {s['nodes_a']} nodes, {s['saved_bytes_a']:,} saved bytes | b: {s['nodes_b']} nodes, "
                 f"{s['saved_bytes_b']:,} saved bytes",
                 f"{s['matched']} matched, {s['removed']} removed, {s['added']} added, {s['changed']} changed"]
        if self.is_empty:
            lines.append("the graphs are the same")
        ga, gb = self.a.graph, self.b.graph
        for n in self.removed:
            lines.append(f"- removed  {n}  {_brief(ga.nodes[n])}")
        for n in self.added:
            lines.append(f"+ added    {n}  {_brief(gb.nodes[n])}")
        for c in self.changed:
            lines.append(f"~ changed  {c['a']} -> {c['b']}")
            lines += [f"      {w}" for w in _what(c["what"])]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    # drawing (to_dot, to_graphviz, to_svg, render, notebook display) comes from render.Drawable
    _dot_name = "diff"
    _what = "a diff"

    def _spec(self, **opts) -> dict:
        """The two graphs side by side in two clusters: removed red, added green, changed orange."""
        ca = {n: COLORS["removed"] for n in self.removed}
        cb = {n: COLORS["added"] for n in self.added}
        for c in self.changed:
            ca[c["a"]] = cb[c["b"]] = COLORS["changed"]
        opts.setdefault("show_saved", False)
        sa = trace_spec(self.a, prefix="a/", colors=ca, legend=False, **opts)
        sb = trace_spec(self.b, prefix="b/", colors=cb, legend=False, **opts)
        spec = {"attrs": dict(sa["attrs"]), "nodes": [], "edges": sa["edges"] + sb["edges"], "label": None,
                "clusters": [{"label": "a", "nodes": sa["nodes"], "clusters": sa["clusters"]},
                             {"label": "b", "nodes": sb["nodes"], "clusters": sb["clusters"]}],
                "legend": [("removed (only in a)", "removed", "box"), ("added (only in b)", "added", "box"),
                           ("changed", "changed", "box"), ("same", "op", "box")]}
        shown = {n for n, _ in _drawn(spec)}
        pairs = [("a/" + x, "b/" + y) for x, y in self.matched if "a/" + x in shown and "b/" + y in shown]
        if len(pairs) <= ALIGN_LIMIT:  # matched pairs side by side (newrank lets ranks cross clusters)
            spec["attrs"]["newrank"] = "true"
            spec["same_rank"] = pairs
        return spec

    def _text_formats(self, **opts) -> dict:
        return {"html": lambda: self.to_html(**opts), "txt": lambda: self.to_text() + "\n"}

    def to_html(self, **opts) -> str:
        """A self-contained page: both graphs side by side and the table of differences."""
        rows = [{"kind": "removed", "a": n, "b": "", "what": _brief(self.a.graph.nodes[n])} for n in self.removed]
        rows += [{"kind": "added", "a": "", "b": n, "what": _brief(self.b.graph.nodes[n])} for n in self.added]
        rows += [{"kind": "changed", "a": c["a"], "b": c["b"], "what": "; ".join(_what(c["what"]))}
                 for c in self.changed]
        return report.page("autogradlens diff", [("Side by side", report.svg(self.to_svg(**opts))),
                                                 ("Differences", report.pre(self.to_text()) + report.table(rows))])

    def _repr_html_(self) -> str:
        return (f"<p><b>{report.esc(repr(self))}</b></p>" + report.svg(self.to_svg(width=COLUMN))
                + report.pre(self.to_text()))


def _brief(d: dict) -> str:
    name = d["param"] or d["type"]
    return f"{name} {short_shape(d['shape'])}"


def _slots(s) -> str:
    return "[" + ", ".join(f"{n} {tuple(sh) if sh is not None else '?'}" for n, sh, _, _ in s) + "]"


def _what(w: dict) -> list[str]:
    out = []
    for k, v in w.items():
        if k == "attrs":
            out += [f"attr {ak}: {ax!r} -> {ay!r}" for ak, (ax, ay) in v.items()]
        elif k == "saved":
            out.append(f"saved {_slots(v[0])} -> {_slots(v[1])}")
        else:
            out.append(f"{k}: {v[0]!r} -> {v[1]!r}")
    return out


def diff(a, b) -> GraphDiff:
    """Structurally match two graphs (Traces, or root tensors traced on the fly) and list the differences.

    Raises:
        LensTypeError: `a` or `b` is neither a Trace nor a tensor (a tensor is traced: see :func:`trace`
            for what it raises).

    Example:
        >>> import torch, autogradlens as lens
        >>> x = torch.randn(3, requires_grad=True)
        >>> d = lens.diff(lens.trace((x + x).sum()), lens.trace((2 * x).sum()))
        >>> [(c["a"], c["b"], c["what"]["type"]) for c in d.changed]
        [('AddBackward0:0', 'MulBackward0:0', ('AddBackward0', 'MulBackward0'))]
        >>> lens.diff(lens.trace((x + x).sum()), lens.trace((x + x).sum())).is_empty
        True
    """
    ta, tb = _as_trace(a, "a"), _as_trace(b, "b")
    m = _Matcher(ta, tb)
    m.run()
    matched = [(x, m.ab[x]) for x in m.oa if x in m.ab]
    removed = [x for x in m.oa if x not in m.ab]
    added = [y for y in m.ob if y not in m.ba]
    changed = []
    for x, y in matched:
        what = _attr_diff(ta.graph.nodes[x], tb.graph.nodes[y])
        if what:
            changed.append({"a": x, "b": y, "what": what})
    return GraphDiff(ta, tb, matched, removed, added, changed)
