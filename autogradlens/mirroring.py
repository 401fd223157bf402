"""`mirror`: re-derive the backward pass of the real graph, node by node, and compare with PyTorch.

Two checks, both reported:
- local: given PyTorch's incoming gradient to a node (captured with a node hook during a real
  backward), the mirror rule's outgoing gradients against PyTorch's;
- end to end: the mirror's own backward from the root to every leaf against PyTorch's leaf gradients,
  with each node's incoming gradient compared on the way (which locates where they part).

Tolerance: |mirror - torch| <= rtol * |torch| + atol, with rtol 1e-12 (float64 graphs) or 1e-5 (float32
graphs, mirrored in float64), and atol = 4 ulp of the largest gradient magnitude involved: the compared
tensor's, and for end-to-end comparisons the largest gradient on the way from the root (rounding errors
made upstream are absolute: when a layer such as LayerNorm cancels a gradient down to almost nothing,
they do not shrink with it). For float32 graphs the float64 mirror is rounded to float32 before it is
compared. "exact" means bitwise equal, reported separately from the tolerance verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from . import report
from ._torch import input_metadata, saved_names
from .capture import capture
from .render import Drawable, trace_spec
from .rules import RULES, Ctx, Unsupported, sum_to
from .scalar import AUTO_SCALAR, SCALAR_LIMIT, as_values, floats, scalar_cost
from .tracing import _decode_attr, _dtype, _trace

__all__ = ["MirrorReport", "mirror"]



# ----------------------------------------------------------------------------- helpers

def _np(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.is_floating_point():
        return t.to("cpu", torch.float64).numpy().copy()
    if t.is_complex():
        raise Unsupported("complex tensors")
    return t.to("cpu").numpy().copy()


def _scale(gs) -> float:
    return max((float(np.max(np.abs(floats(g)), initial=0.0)) for g in gs if g is not None), default=0.0)


def _compare(m, t, dtype: str, ref: float = 0.0) -> tuple[str, bool, float, float]:
    """ref: magnitude of the gradient the computation started from (rounding scales with the operands)."""
    m, t = floats(m), floats(t)
    if m.shape != t.shape:
        try:
            m = np.broadcast_to(m, t.shape)
        except ValueError:
            return "mismatch", False, math.inf, math.inf
    f32 = dtype in ("float32", "float16", "bfloat16")
    if f32:  # compare as the graph would hold it: the float64 mirror rounded to float32
        m = m.astype(np.float32).astype(np.float64)
    exact = bool(np.array_equal(m, t, equal_nan=True))
    diff = np.abs(m - t)
    scale = float(np.max(np.abs(t), initial=0.0))
    max_abs = float(np.max(diff, initial=0.0))
    max_rel = max_abs / scale if scale else (0.0 if max_abs == 0 else math.inf)
    rtol = 1e-5 if f32 else 1e-12
    atol = 4 * float(np.finfo(np.float32 if f32 else np.float64).eps) * max(scale, ref)
    ok = bool(np.all((diff <= rtol * np.abs(t) + atol) | (np.isnan(m) & np.isnan(t))))
    return ("match" if ok else "mismatch"), exact, max_abs, max_rel


@dataclass
class _Node:
    fn: object
    id: str
    type: str
    nexts: tuple
    saved: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    in_shapes: list = field(default_factory=list)
    in_dtypes: list = field(default_factory=list)
    out_shapes: list = field(default_factory=list)
    dtype: str = "float32"
    error: str | None = None


def _snapshot(fn, nid, nf, cache) -> _Node:
    t = type(fn).__name__
    n = _Node(fn, nid, t, nf)
    if t == "AccumulateGrad":
        return n
    meta = input_metadata(fn)
    n.out_shapes = [tuple(m.shape) for m in meta]
    n.dtype = _dtype(meta[0].dtype) if meta else "float32"
    n.in_shapes = [tuple(input_metadata(f)[nr].shape) if f is not None else None for f, nr in nf]
    n.in_dtypes = [_dtype(input_metadata(f)[nr].dtype) if f is not None else None for f, nr in nf]
    if t not in RULES:
        return n
    slots, other = saved_names(fn, cache)
    for a in other:
        n.attrs[a] = _decode_attr(a, getattr(fn, "_saved_" + a))
    try:
        for a in slots:
            v = getattr(fn, "_saved_" + a)
            if isinstance(v, tuple):
                n.saved[a] = tuple(None if x is None else _np(x) for x in v)
            elif v is not None:
                n.saved[a] = _np(v)
    except RuntimeError as e:
        msg = str(e)
        if "freed" in msg or "second time" in msg:
            raise RuntimeError("mirror needs the tensors autograd saved, and backward() has freed them: call "
                               "lens.mirror(loss) before loss.backward() (or backward(retain_graph=True))") from None
        raise RuntimeError(f"{nid}: a saved tensor was changed in place after it was saved ({msg.split('. Hint')[0]}); "
                           "mirror the graph before optimizer.step() or other in-place updates") from None
    except Unsupported as e:
        n.error = str(e)
    return n


# ----------------------------------------------------------------------------- the report

class MirrorReport(Drawable):
    """What the mirror found: ``ok``, ``rows`` (one per node and one per leaf), ``unmirrored``.

    Each row is a dict: ``id``, ``type``, ``name`` (parameter name or type), ``kind`` ("node"/"leaf"),
    ``status`` (match / mismatch / unmirrored), ``exact``, ``max_abs``, ``max_rel`` (the local check
    for nodes, the end-to-end check for leaves) and, for nodes, ``e2e_status`` / ``e2e_max_abs`` (the
    mirror's own incoming gradient at that node vs PyTorch's). ``grads`` maps each leaf's name to the
    mirror's own gradient (a float64 numpy array), ``diverges_at`` lists where the mirror and PyTorch part.
    """

    def __init__(self, rows, trace, mode, diverges_at, grads=None):
        self.rows = rows
        self.grads = grads or {}  # leaf name -> the mirror's own end-to-end gradient (float64 array)
        self.trace = trace
        self.mode = mode
        self.diverges_at = diverges_at

    @property
    def ok(self) -> bool:
        return all(r["status"] != "mismatch" and r.get("e2e_status") != "mismatch" for r in self.rows)

    @property
    def unmirrored(self) -> list[str]:
        return sorted({r["type"] for r in self.rows if r["status"] == "unmirrored"})

    def counts(self) -> dict:
        out = {"match": 0, "mismatch": 0, "unmirrored": 0, "exact": 0}
        for r in self.rows:
            out[r["status"]] += 1
            out["exact"] += bool(r["exact"])
        return out

    def to_text(self) -> str:
        """A table in the spirit of the makemore lecture's `cmp`: name | exact | approximate | maxdiff."""
        w = max([len(r["name"]) for r in self.rows] + [10])
        lines = [f"{'name':{w}s} | exact | approximate | maxdiff   | check"]
        lines.append("-" * len(lines[0]))
        for r in self.rows:
            approx = {"match": "True", "mismatch": "FALSE", "unmirrored": "n/a"}[r["status"]]
            check = "leaf (end to end)" if r["kind"] == "leaf" else "local"
            if r["kind"] == "node" and r.get("e2e_status") == "mismatch":
                check += "; end-to-end input differs"
            lines.append(f"{r['name']:{w}s} | {str(r['exact']):5s} | {approx:11s} | {r['max_abs']:.2e}  | {check}")
        c = self.counts()
        lines.append(f"{'ok' if self.ok else 'NOT OK'}: {c['match']} match ({c['exact']} bit-identical), "
                     f"{c['mismatch']} mismatch, {c['unmirrored']} unmirrored; mode={self.mode}")
        if self.unmirrored:
            lines.append("no rule (PyTorch's gradients passed through): " + ", ".join(self.unmirrored))
        for nid in self.diverges_at:
            lines.append(f"end to end, the mirror and PyTorch part at the gradient flowing into {nid}: "
                         "something between its consumers and it (a tensor hook?) changed PyTorch's gradient")
        return "\n".join(lines)

    def __repr__(self) -> str:
        c = self.counts()
        return f"<MirrorReport {'ok' if self.ok else 'NOT OK'}: {c['match']} match, {c['mismatch']} mismatch, " \
               f"{c['unmirrored']} unmirrored>"

    def __str__(self) -> str:
        return self.to_text()

    def colors(self) -> dict:
        pal = {"match": "#a8e6a3", "mismatch": "#f4a6a6", "unmirrored": "#e5e5e5"}
        return {r["id"]: pal["mismatch" if r.get("e2e_status") == "mismatch" else r["status"]] for r in self.rows}

    # drawing (to_dot, to_graphviz, to_svg, render, notebook display) comes from render.Drawable
    _what = "a mirror report"

    def _spec(self, **opts) -> dict:
        """The traced graph coloured by verdict: green match, red mismatch, grey unmirrored."""
        spec = trace_spec(self.trace, colors=self.colors(), legend=False, **opts)
        spec["legend"] = [("match", "added", "box"), ("mismatch", "removed", "box"), ("unmirrored", "freed", "box")]
        return spec

    def _text_formats(self, **opts) -> dict:
        return {"txt": lambda: self.to_text() + "\n"}

    def _repr_html_(self) -> str:
        cols = ["name", "type", "status", "exact", "max_abs", "max_rel", "e2e_status"]
        return f"<p><b>{report.esc(repr(self))}</b></p>" + report.table(self.rows, cols) + report.svg(self.to_svg())


# ----------------------------------------------------------------------------- the mirror

def mirror(root, *, params=None, mode: str = "auto", backward: bool = False) -> MirrorReport:
    """Re-derive every node's gradient with micrograd-style rules and compare with PyTorch.

    `mode` is "scalar" (every element a :class:`Value`, micrograd exactly; small graphs), "tensor"
    (float64 arrays) or "auto". `.grad` is left untouched unless ``backward=True``, which leaves
    ``.grad`` as ``root.backward()`` would (so mirror can stand in for backward in a training loop).

    Example:
        >>> import torch, autogradlens as lens
        >>> w = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
        >>> r = lens.mirror((w.tanh() * w).sum(), params={"w": w})
        >>> r.ok, r.counts()["mismatch"], w.grad is None
        (True, 0, True)
    """
    if mode not in ("auto", "scalar", "tensor"):
        raise ValueError(f"mode must be 'auto', 'scalar' or 'tensor', got {mode!r}")
    tr, walk = _trace(root, params)  # one walk: the report's graph and the live nodes the rules need
    fns, names = walk.fns, walk.names
    roots = list(root) if isinstance(root, (list, tuple)) else [root]
    cache: dict = {}
    nodes = [_snapshot(fn, walk.ids[fn], nf, cache) for fn, nf in zip(walk.order, walk.nexts)]
    ops = [n for n in nodes if n.type != "AccumulateGrad"]
    cost = scalar_cost(ops)
    if mode == "scalar" and cost > SCALAR_LIMIT:
        raise ValueError(f"mode='scalar' would build about {cost:,} Values (limit {SCALAR_LIMIT:,}); "
                         "use mode='tensor' for a graph this size")
    if mode == "auto":
        mode = "scalar" if cost <= AUTO_SCALAR else "tensor"
    scalar = mode == "scalar"

    leaves = [n for n in nodes if n.type == "AccumulateGrad"]
    seen_in, seen_out, leaf_in = capture(roots, {n.fn: n.id for n in ops}, {n.fn: n.id for n in leaves}, backward)
    wrap = as_values if scalar else (lambda a: a)
    pos = {n.fn: i for i, n in enumerate(nodes)}

    # 2. local checks, and 3. the mirror's own backward (nodes in topological order: consumers first)
    rows = []
    incoming: dict = {}  # node index -> list per output of accumulated gradient (mirror's own)
    for r, g in zip(fns, roots):
        incoming.setdefault(pos[r], [None] * max(1, len(nodes[pos[r]].out_shapes)))
        incoming[pos[r]][g.output_nr] = wrap(np.ones(tuple(g.shape)))
    topo = _topological(nodes, pos)
    consumers: dict = {}
    for n in nodes:
        for f, _ in n.nexts:
            if f is not None:
                consumers.setdefault(pos[f], []).append(pos[n.fn])
    upstream: dict = {}  # index -> largest gradient magnitude PyTorch saw on any path from the root to it
    e2e: dict = {}
    for i in topo:
        n = nodes[i]
        if n.type == "AccumulateGrad":
            continue
        if n.id not in seen_in:
            continue  # PyTorch did not run this node (no leaf needs it)
        torch_in = seen_in[n.id]
        torch_out = seen_out[n.id]
        upstream[i] = max([_scale(torch_in)] + [upstream.get(u, 0.0) for u in consumers.get(i, ())])
        # local check
        status, exact, max_abs, max_rel = "unmirrored", False, 0.0, 0.0
        local_out = None
        if n.type in RULES and n.error is None:
            gs = [wrap(g) if g is not None else None for g in torch_in]
            try:
                local_out = _apply(n, gs, scalar)
            except Unsupported as e:
                n.error = str(e)
        if local_out is not None:
            status, exact, max_abs, max_rel = "match", True, 0.0, 0.0
            for slot, (m, t) in enumerate(zip(local_out, torch_out)):
                if t is None or n.nexts[slot][0] is None:
                    continue
                if m is None:
                    status, exact, max_abs, max_rel = "mismatch", False, math.inf, math.inf
                    continue
                st, ex, ma, mr = _compare(sum_to(m, t.shape), t, n.dtype, _scale(torch_in))
                status = "mismatch" if st == "mismatch" or status == "mismatch" else "match"
                exact, max_abs, max_rel = exact and ex, max(max_abs, ma), max(max_rel, mr)
        # end to end: the mirror's own incoming gradient
        mine_in = incoming.get(i)
        e2e_status, e2e_abs = None, None
        if mine_in is not None:
            ref = max((upstream.get(u, 0.0) for u in consumers.get(i, ())), default=0.0)
            checks = [_compare(m, t, n.dtype, ref) for m, t in zip(mine_in, torch_in)
                      if m is not None and t is not None]
            if checks:
                e2e_status = "mismatch" if any(c[0] == "mismatch" for c in checks) else "match"
                e2e_abs = max(c[2] for c in checks)
            out = None
            if n.type in RULES and n.error is None and local_out is not None:
                try:
                    out = _apply(n, mine_in, scalar)
                except Unsupported:
                    out = None
            if out is None:  # no rule: pass PyTorch's own gradients through
                out = [None if t is None else wrap(t) for t in torch_out]
            for slot, (f, nr) in enumerate(n.nexts):
                if f is None or out[slot] is None:
                    continue
                j = pos[f]
                shape = nodes[j].out_shapes[nr] if nodes[j].type != "AccumulateGrad" else \
                    tuple(f.variable.shape)
                g = sum_to(np.asarray(out[slot]), shape)
                lst = incoming.setdefault(j, [None] * max(1, len(nodes[j].out_shapes)))
                lst[nr] = g if lst[nr] is None else lst[nr] + g
        e2e[n.id] = e2e_status
        rows.append({"id": n.id, "type": n.type, "name": n.id, "kind": "node", "status": status, "exact": exact,
                     "max_abs": max_abs, "max_rel": max_rel, "e2e_status": e2e_status, "e2e_max_abs": e2e_abs,
                     "note": n.error})
    grads = {}
    for n in leaves:
        t = leaf_in.get(n.id)
        mine = incoming.get(pos[n.fn], [None])[0]
        var = n.fn.variable
        name = names.get(id(var), n.id)
        dtype = _dtype(var.dtype)
        if mine is not None:
            grads[name] = floats(mine)
        if t is None or mine is None:
            row = ("unmirrored", False, 0.0, 0.0)
        else:
            ref = max((upstream.get(u, 0.0) for u in consumers.get(pos[n.fn], ())), default=0.0)
            row = _compare(mine, t, dtype, ref)
        rows.append({"id": n.id, "type": "AccumulateGrad", "name": name, "kind": "leaf", "status": row[0],
                     "exact": row[1], "max_abs": row[2], "max_rel": row[3], "e2e_status": row[0],
                     "e2e_max_abs": row[2], "note": None})
    diverges = _divergence(nodes, pos, e2e, rows)
    return MirrorReport(rows, tr, mode, diverges, grads)


def _apply(n: _Node, gs, scalar: bool):
    if all(g is None for g in gs):
        return [None] * len(n.nexts)
    c = Ctx(n.type, gs, n.saved, n.attrs, n.in_shapes, n.out_shapes, scalar, n.in_dtypes)
    out = RULES[n.type](c)
    if len(out) != len(n.nexts):
        raise Unsupported(f"rule for {n.type} returned {len(out)} gradients for {len(n.nexts)} inputs")
    return [None if o is None else np.asarray(o) for o in out]


def _topological(nodes, pos) -> list[int]:
    """Indices with every consumer before its producers (Kahn, iterative, deterministic)."""
    indeg = [0] * len(nodes)
    for n in nodes:
        for f, _ in n.nexts:
            if f is not None:
                indeg[pos[f]] += 1
    ready = sorted((i for i, d in enumerate(indeg) if d == 0), reverse=True)
    out = []
    while ready:
        i = ready.pop()
        out.append(i)
        for f, _ in nodes[i].nexts:
            if f is not None:
                j = pos[f]
                indeg[j] -= 1
                if indeg[j] == 0:
                    ready.append(j)
    return out


def _divergence(nodes, pos, e2e, rows) -> list[str]:
    """Nodes whose end-to-end input differs although every consumer's input and rule agreed."""
    consumers: dict = {}
    for n in nodes:
        for f, _ in n.nexts:
            if f is not None:
                consumers.setdefault(pos[f], []).append(n)
    local = {r["id"]: r["status"] for r in rows}
    out = []
    for i, n in enumerate(nodes):
        if e2e.get(n.id) != "mismatch":
            continue
        ups = consumers.get(i, [])
        if all(e2e.get(u.id) != "mismatch" and local.get(u.id) != "mismatch" for u in ups):
            out.append(n.id)
    index = {n.id: i for i, n in enumerate(nodes)}
    for r in rows:  # a leaf whose gradient differs while everything feeding it agreed
        if r["kind"] == "leaf" and r["status"] == "mismatch":
            ups = consumers.get(index[r["id"]], [])
            if all(e2e.get(u.id) != "mismatch" and local.get(u.id) != "mismatch" for u in ups):
                out.append(r["id"])
    return out
