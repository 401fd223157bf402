"""Pictures and text for a Trace, and the one drawing façade shared by Trace, MirrorReport and GraphDiff.

Everything drawable builds one *drawing spec* (a plain dict: nodes, edges, nested clusters, a legend, notes);
`Drawable` turns it into DOT text, a ``graphviz.Digraph``, SVG/PNG/PDF (Graphviz's ``dot`` or, without it, a
matplotlib drawing) and the notebook display. A new output format is one entry in :data:`FORMATS`.

A picture fits the column it is shown in: the notebook display (``to_svg(width=COLUMN)``) tries layouts from
the most detailed (left to right or top to bottom, then saved tensors hidden, then modules collapsed further)
and keeps the first whose text is still drawn at ``MIN_TEXT_PX`` or more once scaled to the column; the SVG
scales down to the column, never above its natural size.

Colours (each picture's legend lists only those it uses):
    gold        the root (usually the loss)
    light blue  an operation node (a grad_fn, e.g. AddmmBackward0)
    teal        a parameter (AccumulateGrad of a named leaf)
    pale green  an unnamed leaf tensor that requires grad
    purple      a custom autograd.Function or opaque region (torch.compile, hooks)
    pink note   a saved tensor storage (drawn once however many nodes save it); grey = freed,
                red border = stale (changed in place after it was saved)
    grey box    a module collapsed into one box (``depth=`` expands it), or a long chain of nodes
    with grads  nodes coloured by log10 of the gradient's norm: pale blue (small) -> yellow -> red (large),
                the scale drawn as the legend
"""

from __future__ import annotations

import io
import math
import re
import time
from pathlib import Path

from . import _deps
from .errors import LensTypeError, LensValueError

COLORS = {"root": "#ffd166", "op": "#dbe7f5", "param": "#8fd3cf", "leaf": "#d8f3dc",
          "custom": "#d7c4ea", "saved": "#fde2e4", "freed": "#e5e5e5", "box": "#eeeeee",
          "removed": "#f4a6a6", "added": "#a8e6a3", "changed": "#ffc98b"}
MARK = "#b00020"  # the border of a marked node (lens.check's first wrong line)
_OPAQUE = ("CompiledFunctionBackward", "BackwardHookFunctionBackward", "CopySlices")
AUTO_LIMIT = 150  # above this many nodes, saved tensors and attributes are hidden unless asked for
BOXES = 60  # a picture written to a file shows at most about this many boxes by default
COLUMN = 828  # px: what a picture gets in a notebook (JupyterLab's 848 px output column at a 1280 px window, less
#               the 20 px its HTML outputs keep free on the right); displays fit it
MIN_TEXT_PX = 8.0  # the smallest text a fitted picture draws
COMFORT_PX = 10.0  # a display collapses further while that gives text at least this big
MAX_HEIGHT_PX = 6000  # a fitted picture taller than this (once scaled) collapses further
FONT = {"node": 11, "note": 10, "edge": 9, "cluster": 10, "legend": 10}  # points (1 pt = 4/3 px at 100 %)
_RAMP = ((0.0, (0xdb, 0xe7, 0xf5)), (0.5, (0xff, 0xd1, 0x66)), (1.0, (0xe4, 0x57, 0x2e)))
_INDENT = 32  # to_text: deeper levels restart the indentation, so output stays linear in the graph size


def short_shape(shape) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _is_custom(d: dict) -> bool:
    t = d["type"]
    return t.startswith(_OPAQUE) or (not t.endswith(("Backward0", "Backward1", "Backward2", "Backward3"))
                                     and t != "AccumulateGrad")


def node_kind(d: dict) -> str:
    if d["is_root"]:
        return "root"
    if d["is_leaf"]:
        return "param" if d["param"] is not None else "leaf"
    return "custom" if _is_custom(d) else "op"


def node_title(nid: str, d: dict) -> str:
    if d["is_leaf"]:
        return d["param"] if d["param"] is not None else f"leaf{short_shape(d['shape'])}"
    return d["type"]


def user_name(d: dict) -> str | None:
    """The name the user gave the tensor or value a node makes (a ``params`` name, a Value's label), if any."""
    return d.get("label") or d.get("name") or None


def is_value_graph(g) -> bool:
    """True for a trace of micrograd-style Values (nodes carry `data`)."""
    return any("data" in d for _, d in g.nodes(data=True))


def _attr_text(attrs: dict, width: int = 40) -> list[str]:
    out = []
    for k, v in attrs.items():
        if "_sym_" in k or k.endswith(("_sizes", "_strides", "_numel")) or v is None:
            continue
        if k in ("alpha", "beta") and v == 1:
            continue
        s = f"{k}={v}"
        out.append(s if len(s) <= width else s[: width - 1] + "…")
    return out


def _saved_text(s: dict) -> str:
    txt = f"{s['name']} {short_shape(s['shape'])}"
    if s["alias"]:
        txt += f" ={s['alias']}"
    if s["state"] != "live":
        txt += f" [{s['state']}]"
    return txt


def grad_text(gd) -> str | None:
    """'grad 0.1234' for a one-element gradient, '‖grad‖ 1.2e-03' otherwise; None without one."""
    if gd is None:
        return None
    if isinstance(gd, (int, float)):
        return f"grad {gd:.4f}"
    vals = gd.get("values")
    if vals is not None:
        flat = vals
        while isinstance(flat, list) and len(flat) == 1:
            flat = flat[0]
        if not isinstance(flat, list) and flat is not None:
            return f"grad {flat:.4f}"
    return f"‖grad‖ {gd['norm']:.3g}"


def _grad_size(gd) -> float | None:
    if gd is None:
        return None
    v = abs(gd) if isinstance(gd, (int, float)) else gd.get("norm")
    return None if v is None or not math.isfinite(v) else v


def grad_colors(g) -> tuple[dict, tuple | None]:
    """Node -> fill colour by log10 of its gradient's size, and the (low, high) exponents of the scale."""
    sizes = {n: _grad_size(d.get("grad")) for n, d in g.nodes(data=True)}
    logs = [math.log10(s) for s in sizes.values() if s]
    if not logs:
        return {}, None
    lo, hi = min(logs), max(logs)
    return {n: grad_color(s, lo, hi) for n, s in sizes.items() if s is not None}, (lo, hi)


def grad_color(size: float, lo: float, hi: float) -> str:
    """The fill of a gradient of this size on a log10 scale from `lo` to `hi` (grey for exactly 0)."""
    if size == 0:
        return COLORS["freed"]
    return _ramp(0.5 if hi == lo else min(1.0, max(0.0, (math.log10(size) - lo) / (hi - lo))))


def _ramp(x: float) -> str:
    for (x0, c0), (x1, c1) in zip(_RAMP, _RAMP[1:]):
        if x <= x1:
            f = (x - x0) / (x1 - x0)
            return "#" + "".join(f"{round(a + (b - a) * f):02x}" for a, b in zip(c0, c1))
    return "#" + "".join(f"{c:02x}" for c in _RAMP[-1][1])


# ----------------------------------------------------------------------------- text

def to_text(trace, *, show_saved: bool = True, show_attrs: bool = False, limit: int | None = None) -> str:
    """An indented tree from the root(s); a node reached again is referenced, not repeated. A name the user
    gave (a ``params`` name, a Value's label) comes first: ``logprobs = LogBackward0:0  (32, 27)``.

    Time and memory are linear in the graph: below 32 levels the indentation starts again (marked
    ``┆N``), so a 100,000-deep chain prints 100,000 short lines. `limit` stops after that many lines.
    """
    g = trace.graph
    lines, seen = [], set()
    stack = [(r, 0, "", "", None) for r in reversed(trace.roots)]
    while stack and (limit is None or len(lines) < limit):
        nid, depth, prefix, branch, via = stack.pop()
        d = g.nodes[nid]
        if depth and not depth % _INDENT:  # start the indentation again
            prefix, branch = "", f"┆{depth} "
        name = user_name(d)
        head = f"{prefix}{branch}{name} = {nid}" if name else f"{prefix}{branch}{nid}"
        if d["is_leaf"] and "data" not in d:
            head = f"{prefix}{branch}{node_title(nid, d)} {short_shape(d['shape'])}  [leaf: {nid}]"
        if via is not None:
            head += f"  (output {via})"
        if nid in seen:
            lines.append(f"{head}  ↺ shown above")
            continue
        seen.add(nid)
        extra = []
        if "data" in d:
            extra.append(f"data={d['data']:.4f} grad={d['grad']:.4f}")
        elif not d["is_leaf"]:
            extra.append(short_shape(d["shape"]))
        if d["is_root"]:
            extra.append("ROOT")
        if show_saved and d["saved"]:
            extra.append("saved: " + ", ".join(_saved_text(s) for s in d["saved"]))
        if show_attrs and d["attrs"]:
            extra.append(" ".join(_attr_text(d["attrs"])))
        gt = grad_text(d.get("grad")) if "data" not in d else None
        if gt:
            extra.append(gt)
        lines.append(head + ("  " + "  ".join(extra) if extra else ""))
        child_prefix = prefix + ("" if not branch or branch.startswith("┆") else
                                 "    " if branch.startswith("└") else "│   ")
        kids = sorted(g.out_edges(nid, keys=True, data=True), key=lambda e: e[2])
        for i, (_, v, _k, ed) in reversed(list(enumerate(kids))):
            via_nr = ed["input_nr"] if len(g.nodes[v].get("outputs", ())) > 1 else None
            stack.append((v, depth + 1, child_prefix, "└── " if i == len(kids) - 1 else "├── ", via_nr))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- drawing spec

def trace_spec(trace, *, show_saved: bool | None = None, show_attrs: bool | None = None,
               rankdir: str | None = None, legend=True, prefix: str = "", colors: dict | None = None,
               label: str | None = None, depth: int | None = None, grads: bool | None = None,
               limit: int | None = BOXES, mark: dict | None = None, names: dict | None = None) -> dict:
    """A neutral drawing description (nodes, edges, clusters) that DOT, graphviz and matplotlib emit.

    Nodes are grouped in clusters by ``module`` (titled by path and class: ``layer1.0 · BasicBlock``). When
    the graph has more than `limit` nodes, modules deeper than `depth` levels are collapsed into one box each
    (``depth=None`` picks the deepest level that fits; ``depth=99`` expands all), then (with ``depth=None``
    only) long chains fold into one box, then only the nodes nearest the root are drawn; a note says what is
    hidden. ``limit=None`` draws all.

    A node shows the name the user gave first (``params`` names, a Value's label), then its id. For pictures
    that grade or compare: `colors` (node id -> fill) overrides the kind's colour; `legend` is True (the
    kinds drawn), False, or a list of ``(text, fill, shape)`` items for the caller's colours (each listed only
    when a drawn node has that fill); `mark` (node id -> text, e.g. ``{"TanhBackward0:0": "first wrong"}``)
    draws that node with a thick dark-red border and the text on its first line; `names` (node id -> text)
    replaces the name shown first (e.g. the learner's ``dlogprobs``).
    """
    g = trace.graph
    if is_value_graph(g):
        from .valuegraph import value_spec
        return value_spec(trace, rankdir=rankdir or "LR", legend=legend, prefix=prefix, colors=colors, label=label,
                          limit=limit, mark=mark, names=names)
    n = g.number_of_nodes()
    big = n > AUTO_LIMIT
    show_saved = not big if show_saved is None else show_saved
    show_attrs = not big if show_attrs is None else show_attrs
    has_grads = any(d.get("grad") is not None for _, d in g.nodes(data=True))
    grads = has_grads if grads is None else grads and has_grads
    mark, names = mark or {}, names or {}
    marks = dict(colors or {})  # the caller's colours (a verdict, a diff): a collapsed box shows the worst
    colors = dict(marks)
    scale = None
    if grads:
        gcol, scale = grad_colors(g)
        colors = {**gcol, **colors}
    types = module_types(trace)
    dmods = drawing_modules(g, types)
    item, boxes, notes = _collapse(trace, depth, limit, types, dmods)
    hidden_saved = 0
    home = _homes(g, item, boxes, dmods)
    nodes, edges, placed, rank_pairs = [], [], {}, []
    for nid, d in g.nodes(data=True):
        if nid in item:
            hidden_saved += len(d["saved"])
            continue
        kind = node_kind(d)
        shown = names.get(nid) or d.get("name")
        lines = [nid, node_title(nid, d) if d["is_leaf"] and d["param"] is None else short_shape(d["shape"])]
        if d["is_root"]:
            lines[0] = f"{lines[0]}  (root)"
        if shown and nid != f"param:{shown}":
            lines.insert(0, shown)
        mod = dmods[nid]
        if mod and home(mod) != mod and not d["is_leaf"] and d["type"] not in _VIEWS:
            lines.insert(-1, module_title(mod, types))  # no cluster of its own: the module named on the node
        if show_attrs and not d["is_leaf"]:
            lines += _attr_text(d["attrs"])[:4]
        gt = grad_text(d.get("grad")) if grads else None
        if gt:
            lines.append(gt)
        if nid in mark:
            lines.insert(0, str(mark[nid]))
        style = {"label": "\n".join(lines), "fillcolor": colors.get(nid, COLORS[kind]),
                 "shape": "box" if not d["is_leaf"] else "ellipse", "kind": kind, "id": prefix + nid}
        if d["is_root"]:
            style["penwidth"] = "2"
        if nid in mark:
            style.update(penwidth="4", color=MARK, fontcolor=MARK)
        placed[prefix + nid] = home(mod)
        nodes.append((prefix + nid, style))
        if not show_saved:
            hidden_saved += len(d["saved"])
            continue
        if d["saved"]:  # one note beside the node (same cluster, same rank): what it saved for backward
            note = prefix + f"saved:{nid}"
            placed[note] = home(mod)
            nodes.append((note, _saved_note(d["saved"], prefix + nid)))
            rank_pairs.append((prefix + nid, note))
            edges.append((prefix + nid, note, {"style": "dashed", "arrowhead": "none", "color": "#b56576"}))
    multi = {nid for nid, d in g.nodes(data=True) if len(d.get("outputs", ())) > 1}
    seen_box_edges = set()
    for u, v, k, ed in sorted(g.edges(keys=True, data=True), key=lambda e: (e[0], e[2])):
        iu, iv = item.get(u, u), item.get(v, v)
        if iu == iv:
            continue
        if u in item or v in item:
            if (iu, iv) in seen_box_edges:
                continue
            seen_box_edges.add((iu, iv))
            edges.append((prefix + iu, prefix + iv, {"slot": k}))
            continue
        a = {"slot": k}
        if v in multi:
            a["label"] = f":{ed['input_nr']}"
        edges.append((prefix + u, prefix + v, a))
    members: dict = {}
    for nid, bid in item.items():
        members.setdefault(bid, []).append(nid)
    for bid, b in boxes.items():
        placed[prefix + bid] = home(b["parent"])
        inside = members.get(bid, ())
        fill = _worst([marks.get(x) for x in inside])
        if fill == COLORS["box"] and scale is not None:  # with gradients: the largest one flowing inside
            sizes = [s for s in (_grad_size(g.nodes[x].get("grad")) for x in inside) if s is not None]
            fill = grad_color(max(sizes), *scale) if sizes else fill
        style = {"label": b["label"], "fillcolor": fill, "shape": "box3d", "kind": "box", "id": prefix + bid}
        hit = [x for x in inside if x in mark]
        if hit:
            style.update(label=f"{mark[hit[0]]}: {hit[0]}\n{b['label']}", penwidth="4", color=MARK, fontcolor=MARK)
        nodes.append((prefix + bid, style))
    if hidden_saved and show_saved:
        notes.append(f"{hidden_saved} saved tensor slots are inside collapsed boxes")
    elif hidden_saved:
        notes.append(f"{hidden_saved} saved tensor slots not drawn (show_saved=True draws them)")
    _spine(edges, {name for name, st in nodes if st["kind"] in ("param", "leaf")})
    top, clusters, top_pairs = _clusters(nodes, placed, types, rank_pairs)
    text = "\n".join(x for x in [label, *notes] if x)
    spec = {"attrs": {"rankdir": rankdir or "TB", "ranksep": "0.3", "nodesep": "0.25"},
            "nodes": top, "edges": edges, "clusters": clusters, "label": text or None,
            "same_rank": top_pairs}
    if scale is not None:
        spec["scale"] = {"lo": scale[0], "hi": scale[1], "what": "‖grad‖"}
    if legend:
        kinds = _legend(show_saved)
        if scale is not None:  # the fills are gradient colours: only the shapes keep their meaning
            kinds = [k for k in kinds if k[2] in ("note", "box3d")]
        spec["legend"] = kinds + (list(legend) if isinstance(legend, (list, tuple)) else [])
        if mark:
            spec["legend"].append((f"thick border: {next(iter(mark.values()))}", "mark", "box"))
    return spec


def _spine(edges: list, leaves: set) -> None:
    """Weigh the edges of the longest path down from each node, so that dot draws a chain as a straight line
    with the parameters and side branches beside it (without this, each level drifts sideways)."""
    kids: dict = {}
    for u, v, a in edges:
        if a.get("style") != "dashed" and v not in leaves:
            kids.setdefault(u, []).append((v, a))
    height: dict = {}
    seen: set = set()
    for start in kids:  # longest path below each node: iterative post-order, each node expanded once
        stack = [(start, False)]
        while stack:
            x, done = stack.pop()
            if done:
                height[x] = 1 + max((height.get(v, 0) for v, _ in kids.get(x, ())), default=0)
                continue
            if x in seen:
                continue
            seen.add(x)
            stack.append((x, True))
            stack += [(v, False) for v, _ in kids.get(x, ()) if v not in seen]
    for u, vs in kids.items():
        v, a = max(vs, key=lambda va: height.get(va[0], 0))
        a["weight"] = "8"


SAVED_LINES = 6  # slots a saved-tensor note lists (then "… k more")


def _bytes(n) -> str:
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _saved_note(saved: list, near: str) -> dict:
    """The note beside a node: one line per saved slot, ``mat1 (6, 5) float64 240 B``, or ``mat2 = 2.weight``
    when the slot shares memory with a parameter or with a slot drawn before (the same storage, counted once)."""
    lines = ["saved for backward:"]
    for s in saved[:SAVED_LINES]:
        if s["alias"]:
            txt = f"{s['name']} = {s['alias']}"
        else:
            txt = f"{s['name']} {short_shape(s['shape'])} {s['dtype'] or ''} {_bytes(s['nbytes'])}".rstrip()
        if s["state"] != "live":
            txt += f" [{s['state']}]"
        lines.append(txt)
    if len(saved) > SAVED_LINES:
        lines.append(f"… {len(saved) - SAVED_LINES} more")
    freed = all(s["state"] == "freed" for s in saved)
    note = {"label": "\n".join(lines), "fillcolor": COLORS["freed"] if freed else COLORS["saved"],
            "shape": "note", "kind": "saved", "fontsize": str(FONT["note"]), "near": near}
    if any(s["state"] == "stale" for s in saved):
        note.update(color="red", penwidth="2")
    return note


# nodes that only reshape a parameter (Linear's W.t()) and, with the parameters, never make a module a cluster
_VIEWS = ("TBackward0", "TransposeBackward0", "PermuteBackward0", "ViewBackward0", "ReshapeAliasBackward0",
          "UnsqueezeBackward0", "ExpandBackward0", "SqueezeBackward0", "SqueezeBackward1", "AliasBackward0")


def _homes(g, item: dict, boxes: dict, dmods: dict):
    """Module path -> the cluster its nodes are drawn in: the module itself when it holds two or more
    operations (a block, an attention layer), else its nearest such ancestor, else None (top level). A
    cluster around one operation and its parameters adds a frame, no information, and makes dot push the
    next layer sideways; such a node names its module on its own label instead."""
    ops: dict = {}

    def count(path):
        parts = path.split(".")
        for i in range(len(parts)):
            key = ".".join(parts[: i + 1])
            ops[key] = ops.get(key, 0) + 1

    for nid, d in g.nodes(data=True):
        if nid not in item and dmods[nid] and not d["is_leaf"] and d["type"] not in _VIEWS:
            count(dmods[nid])
    for b in boxes.values():
        if b.get("parent"):
            count(b["parent"])
    for b in boxes:
        if b.startswith("module:"):
            count(b[len("module:"):])
    cache: dict = {}

    def home(path):
        if not path:
            return None
        if path not in cache:
            parts = path.split(".")
            cache[path] = next((".".join(parts[:i]) for i in range(len(parts), 0, -1)
                                if ops.get(".".join(parts[:i]), 0) >= 2), None)
        return cache[path]

    return home


def drawing_modules(g, types: dict | None = None) -> dict:
    """Node -> the module a picture groups it in: its ``module``, or for an operation whose module is unknown
    (a ReLU or residual add between blocks, without ``lens.modules``), the module its inputs have in common,
    one level up from a module that holds parameters itself (a ReLU after ``layer1.0.bn1`` belongs to
    ``layer1.0``), so that a block collapses with everything it computes."""
    mods = {nid: d.get("module") for nid, d in g.nodes(data=True)}
    known = set(types or ()) | {m for m in mods.values() if m}
    inner = set()  # modules that contain other modules
    for m in known:
        parts = m.split(".")
        inner.update(".".join(parts[:i]) for i in range(1, len(parts)))
    order = sorted((d["seq"], nid) for nid, d in g.nodes(data=True) if d.get("seq") is not None)
    for _, nid in order:  # forward order: inputs before the nodes that use them
        d = g.nodes[nid]
        if mods[nid] is not None or d["is_leaf"] or d["is_root"] or not _used_in_module(g, nid):
            continue  # the loss and what leads only to it stay outside every module
        ins = [mods[v] for v in g.successors(nid) if not g.nodes[v]["is_leaf"] and mods[v] is not None]
        if not ins:
            continue
        acc = ins[0].split(".")
        for m in ins[1:]:
            parts, k = m.split("."), 0
            while k < min(len(acc), len(parts)) and acc[k] == parts[k]:
                k += 1
            acc = acc[:k]
        path = ".".join(acc)
        if path and path not in inner and path in known:  # a module with parameters of its own: its caller
            path = path.rsplit(".", 1)[0] if "." in path else ""
        mods[nid] = path or None
    _convex_modules(g, mods)
    return mods


def _convex_modules(g, mods: dict) -> None:
    """A node on a path that leaves a module and comes back into it is drawn inside that module (dot draws a
    cluster that a path leaves and re-enters with edges pointing up). Level by level, linear in the graph."""
    import networkx as nx

    paths = {n: m.split(".") for n, m in mods.items() if m}
    deepest = max((len(p) for p in paths.values()), default=0)
    for level in range(deepest):
        key = {n: ".".join(p[: level + 1]) for n, p in ((n, mods[n].split(".")) for n in paths if mods[n])
               if len(p) > level}
        h = nx.DiGraph()
        h.add_nodes_from(key.get(n, n) for n in g.nodes)
        h.add_edges_from((key.get(u, u), key.get(v, v)) for u, v in g.edges() if key.get(u, u) != key.get(v, v))
        groups = set(key.values())
        for scc in nx.strongly_connected_components(h):
            inside = sorted(k for k in scc if k in groups)
            if len(scc) < 2 or not inside:
                continue
            target = inside[0]
            for n in scc:
                if n in groups or g.nodes[n]["is_leaf"]:
                    continue
                cur = mods.get(n)
                if cur is None or target.startswith(cur + "."):
                    mods[n] = target
                    paths[n] = target.split(".")


def _used_in_module(g, nid, hops: int = 3) -> bool:
    """Whether a module's operation uses what `nid` makes (looking through up to `hops` unknown nodes)."""
    todo, seen = [(nid, 0)], {nid}
    while todo:
        x, k = todo.pop()
        for u in g.predecessors(x):  # the nodes that use x's output
            if u in seen:
                continue
            seen.add(u)
            if g.nodes[u]["module"] is not None:
                return True
            if k + 1 < hops:
                todo.append((u, k + 1))
    return False


def module_types(trace) -> dict:
    """Module path -> class name, as ``lens.trace(..., params=model)`` recorded them (empty when unknown)."""
    return trace.graph.graph.get("module_types") or {}


def module_title(path: str, types: dict) -> str:
    """``layer1.0 · BasicBlock``: a module's path and class (the path alone when the class is unknown)."""
    cls = types.get(path)
    return f"{path} · {cls}" if cls else path


_SEVERITY = (COLORS["removed"], COLORS["changed"], COLORS["added"])  # mismatch/removed, changed, match/added


def _worst(cols: list) -> str:
    present = set(cols)
    return next((c for c in _SEVERITY if c in present), COLORS["box"])


def _collapse(trace, depth, limit, types=None, mods=None) -> tuple[dict, dict, list]:
    """Which nodes hide in which box: (node -> box id, box id -> {label, parent}, notes)."""
    g = trace.graph
    types = types or {}
    n = g.number_of_nodes()
    if limit is None or (depth is None and n <= limit):
        return {}, {}, []
    mods = mods or {nid: d.get("module") for nid, d in g.nodes(data=True)}
    paths = {nid: m.split(".") for nid, m in mods.items() if m}
    deepest = max((len(p) for p in paths.values()), default=0)

    def grouping(dp):
        grp = {nid: ".".join(p[: dp + 1]) for nid, p in paths.items() if len(p) > dp}
        count: dict = {}
        for k in grp.values():
            count[k] = count.get(k, 0) + 1
        grp = {nid: k for nid, k in grp.items() if count[k] > 1}
        return grp, n - len(grp) + len(set(grp.values()))

    dp = 0
    if depth is not None:
        grp, visible = grouping(depth)
    else:
        grp, visible = {}, n
        for dp in range(deepest - 1, -1, -1):
            grp, visible = grouping(dp)
            if visible <= limit:
                break
    item = {nid: "module:" + k for nid, k in grp.items()}
    _convex(g, item)
    members: dict = {}
    for nid, b in item.items():
        members.setdefault(b, []).append(nid)
    boxes = {b: {"label": _box_label(module_title(b[len("module:"):], types), ns, g),
                 "parent": _parent(b[len("module:"):])}
             for b, ns in members.items()}
    notes = [f"{len(item)} nodes inside {len(boxes)} collapsed modules (depth={depth if depth is not None else dp}; "
             "depth=99 expands all)"] if boxes else []
    if depth is not None:  # the user chose what to expand: no folding, no cut
        return item, boxes, notes
    if visible > limit:
        folded = _fold_chains(g, item, boxes)
        if folded:
            notes.append(f"{folded} nodes folded into chains")
            visible = len(set(item.get(v, v) for v in g.nodes))
    if visible > limit:
        cut = _nearest(trace, item, limit)
        if cut:
            boxes["more:0"] = {"label": f"… {cut} more nodes not drawn\n(render(path, limit=None) draws all)",
                               "parent": None}
            notes.append(f"only the {limit} boxes nearest the root drawn; {cut} nodes not drawn")
    return item, boxes, notes


def _convex(g, item: dict) -> None:
    """A node on a path from a box back into the same box joins it (a reshape between a module's parts that
    the trace could not attribute): otherwise the boxes make a cycle, which dot draws with edges pointing up."""
    import networkx as nx

    if not item:
        return
    h = nx.DiGraph()
    h.add_nodes_from(item.get(n, n) for n in g.nodes)
    h.add_edges_from((item.get(u, u), item.get(v, v)) for u, v in g.edges() if item.get(u, u) != item.get(v, v))
    boxes = set(item.values())
    for scc in nx.strongly_connected_components(h):
        if len(scc) < 2:
            continue
        inside = [k for k in scc if k in boxes]
        if not inside:
            continue
        size: dict = {}
        for b in item.values():
            if b in scc:
                size[b] = size.get(b, 0) + 1
        keep = max(inside, key=lambda b: (size.get(b, 0), b))
        for n in g.nodes:  # plain nodes and other boxes of the cycle join the largest box in it
            if item.get(n, n) in scc:
                item[n] = keep


def _parent(path: str):
    return path.rsplit(".", 1)[0] if "." in path else None


def _box_label(name: str, ns: list, g) -> str:
    types: dict = {}
    saved = 0
    for nid in ns:
        types[g.nodes[nid]["type"]] = types.get(g.nodes[nid]["type"], 0) + 1
        saved += len(g.nodes[nid]["saved"])
    top = sorted(types.items(), key=lambda kv: (-kv[1], kv[0]))
    kinds = ", ".join(f"{t} ×{c}" for t, c in top[:3]) + (", …" if len(top) > 3 else "")
    return f"{name}\n{len(ns)} nodes: {kinds}" + (f"\n{saved} saved tensors" if saved else "")


def _fold_chains(g, item: dict, boxes: dict) -> int:
    """Fold runs of >= 3 single-in single-out visible nodes into one box each; returns nodes folded."""
    vis_out: dict = {}
    vis_in: dict = {}
    for u, v in g.edges():
        iu, iv = item.get(u, u), item.get(v, v)
        if iu != iv:
            vis_out.setdefault(iu, set()).add(iv)
            vis_in.setdefault(iv, set()).add(iu)

    def plain(x):
        return x in g and x not in item and len(vis_out.get(x, ())) == 1 and len(vis_in.get(x, ())) == 1

    folded, done = 0, set()
    for start in list(g.nodes):
        if start in done or not plain(start):
            continue
        p = next(iter(vis_in[start]))
        if plain(p):
            continue  # not the head of its chain
        run, x = [], start
        while plain(x) and x not in done:
            run.append(x)
            done.add(x)
            x = next(iter(vis_out[x]))
        if len(run) >= 3:
            bid = f"chain:{len(boxes)}"
            for r in run:
                item[r] = bid
            boxes[bid] = {"label": _box_label(f"chain {run[0]} … {run[-1]}", run, g), "parent": None}
            folded += len(run)
    return folded


def _nearest(trace, item: dict, limit: int) -> int:
    """Keep the `limit` boxes nearest the root (breadth first); every other node goes into one 'more' box."""
    g = trace.graph
    succ: dict = {}
    for u, v in g.edges():
        iu, iv = item.get(u, u), item.get(v, v)
        if iu != iv:
            succ.setdefault(iu, []).append(iv)
    keep, queue, i = {}, [item.get(r, r) for r in trace.roots], 0
    while i < len(queue) and len(keep) < limit:
        x = queue[i]
        i += 1
        if x not in keep:
            keep[x] = True
            queue += succ.get(x, ())
    cut = 0
    for nid in g.nodes:
        if item.get(nid, nid) not in keep:
            item[nid] = "more:0"
            cut += 1
    return cut



def _clusters(nodes: list, placed: dict, types: dict | None = None, pairs=()) -> tuple[list, list, list]:
    """Nest nodes in clusters by module path (titled by path and class); returns (top-level nodes, cluster
    tree, top-level rank pairs). A pair (node, its saved note) goes to the cluster both are in."""
    types = types or {}
    root = {"label": None, "nodes": [], "clusters": {}, "same_rank": []}
    home = {}
    for name, style in nodes:
        mod = placed.get(name)
        c = root
        if mod:
            parts = mod.split(".")
            for i in range(len(parts)):
                path = ".".join(parts[: i + 1])
                c = c["clusters"].setdefault(path, {"label": module_title(path, types), "nodes": [], "clusters": {},
                                                    "same_rank": []})
        c["nodes"].append((name, style))
        home[name] = c
    for a, b in pairs:
        if home.get(a) is not None and home.get(a) is home.get(b):
            home[a]["same_rank"].append((a, b))

    def finish(c):
        kids = [finish(k) for k in c["clusters"].values()]
        # a level with no nodes of its own and one sub-cluster adds nothing: lift the sub-cluster
        kids = [k["clusters"][0] if not k["nodes"] and len(k["clusters"]) == 1 else k for k in kids]
        return {"label": c["label"], "nodes": c["nodes"], "clusters": kids, "same_rank": c["same_rank"]}

    top = finish(root)
    return top["nodes"], top["clusters"], top["same_rank"]


def _legend(show_saved: bool) -> list:
    """Every kind a trace picture may draw; a picture lists those it draws (:func:`legend_items`)."""
    items = [("root (loss)", "root", "box"), ("operation (grad_fn)", "op", "box"),
             ("parameter", "param", "ellipse"), ("unnamed leaf", "leaf", "ellipse"),
             ("custom / opaque", "custom", "box")]
    if show_saved:
        items += [("saved tensor", "saved", "note"), ("saved, freed", "freed", "note")]
    items.append(("collapsed module / chain", "box", "box3d"))
    return items


def _drawn(spec: dict) -> list:
    """Every (name, style) a spec (or one of its clusters) draws, clusters included."""
    out, stack = list(spec["nodes"]), list(spec.get("clusters", []))
    while stack:
        c = stack.pop()
        out += c["nodes"]
        stack += c.get("clusters", [])
    return out


def legend_items(spec: dict) -> list:
    """The legend entries of `spec` that its picture uses: (text, fill colour, shape), in order, once each."""
    drawn = [s for _, s in _drawn(spec)]
    out, seen = [], set()
    for text, kind, shape in spec.get("legend") or ():
        fill = COLORS.get(kind, kind)
        if kind == "mark":
            used = any(s.get("color") == MARK for s in drawn)
        elif kind == "box" or shape == "box3d":
            used = any(s.get("kind") == "box" for s in drawn)
        elif shape == "note":
            used = any(s.get("kind") == "saved" and s.get("fillcolor") == fill for s in drawn)
        else:
            used = any(s.get("fillcolor") == fill and s.get("kind") not in ("saved", "box") for s in drawn)
        if used and text not in seen:
            seen.add(text)
            out.append((text, "#ffffff" if kind == "mark" else fill, shape))
    return out


def scale_stops(scale: dict, n: int = 5) -> list[tuple[str, str]]:
    """(label, colour) swatches of a log10 colour scale, from its low end to its high end."""
    lo, hi = scale["lo"], scale["hi"]
    if hi == lo:
        return [(f"{10 ** lo:.0e}", _ramp(0.5))]
    return [(f"{10 ** (lo + (hi - lo) * i / (n - 1)):.0e}", _ramp(i / (n - 1))) for i in range(n)]


# ----------------------------------------------------------------------------- DOT

def _q(s: str) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_SKIP = ("kind", "slot", "near")


def _attrs(d: dict) -> str:
    d = {k: (_html_id(v) if k == "id" else v) for k, v in d.items() if k not in _SKIP}
    return "[" + ", ".join(f"{k}={_q(v)}" for k, v in d.items()) + "]" if d else ""


def _html_id(nid: str) -> str:
    """The id a node's SVG element gets (the report links timeline rows to it)."""
    return "node-" + re.sub(r"[^A-Za-z0-9.:-]", lambda m: f"_{ord(m.group()):x}", nid)


def _h(s: str) -> str:
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _wrap(line: str, width: int = 90) -> list[str]:
    out = []
    while len(line) > width:
        cut = line.rfind(" ", 0, width)
        cut = cut if cut > width // 2 else width
        out.append(line[:cut])
        line = line[cut:].lstrip()
    return out + [line]


def _dot_label(spec: dict) -> str | None:
    """The picture's caption and legend as one Graphviz HTML-like label over the graph: the notes, then a row
    of coloured swatches for what the picture draws, then the colour scale (when nodes are coloured by one)."""
    notes = [w for x in (spec.get("label") or "").split("\n") if x for w in _wrap(x)]
    items, scale = legend_items(spec), spec.get("scale")
    if not (notes or items or scale):
        return None
    rows = [f'<tr><td align="left">{_h(x)}</td></tr>' for x in notes]

    def strip(cells):
        return ('<tr><td align="left"><table border="0" cellspacing="4" cellpadding="3"><tr>' + "".join(cells)
                + "</tr></table></td></tr>")

    cells = []
    for text, fill, shape in items:
        if text.startswith("thick border"):
            cells.append(f'<td border="3" color="{MARK}"><font color="{MARK}">{_h(text)}</font></td>')
        else:
            style = ' style="rounded"' if shape in ("ellipse",) else ""
            cells.append(f'<td bgcolor="{fill}" border="1" color="#777777"{style}>{_h(text)}</td>')
    for i in range(0, len(cells), 4):
        rows.append(strip(cells[i: i + 4]))
    if scale:
        stops = [f'<td bgcolor="{c}" border="1" color="#777777">{_h(t)}</td>' for t, c in scale_stops(scale)]
        rows.append(strip([f"<td>colour: {_h(scale['what'])}, log scale</td>", *stops]))
    return '<<table border="0" cellspacing="0" cellpadding="1">' + "".join(rows) + "</table>>"


def _dot_cluster(c: dict, out: list, counter: list, indent: str) -> None:
    counter[0] += 1
    out.append(f'{indent}subgraph cluster_{counter[0]} {{ label={_q(c["label"])}; style="rounded"; '
               f'color="#999999"; fontcolor="#444444"; fontsize="{FONT["cluster"]}";')
    out += [f"{indent}  {_q(n)} {_attrs(a)};" for n, a in c["nodes"]]
    out += [f"{indent}  {{ rank=same; {_q(a)}; {_q(b)}; }}" for a, b in c.get("same_rank", ())]
    for k in c.get("clusters", ()):
        _dot_cluster(k, out, counter, indent + "  ")
    out.append(f"{indent}}}")


def spec_to_dot(spec: dict, name: str = "autograd") -> str:
    out = [f"digraph {_q(name)} {{"]
    out.append("  " + "; ".join(f"{k}={_q(v)}" for k, v in spec["attrs"].items()) + ";")
    out.append(f'  node [style="filled,rounded", fontname="Helvetica", fontsize="{FONT["node"]}"];')
    out.append(f'  edge [fontname="Helvetica", fontsize="{FONT["edge"]}", color="#555555"];')
    label = _dot_label(spec)
    if label:
        out.append(f'  label={label}; labelloc=t; labeljust=l; fontname="Helvetica"; fontsize="{FONT["legend"]}";')
    counter = [-1]
    for c in spec["clusters"]:
        _dot_cluster(c, out, counter, "  ")
    out += [f"  {_q(n)} {_attrs(a)};" for n, a in spec["nodes"]]
    out += [f"  {_q(u)} -> {_q(v)} {_attrs(a)};" for u, v, a in spec["edges"]]
    out += ["  { rank=same; " + " ".join(_q(n) for n in group) + " }" for group in spec.get("same_rank", [])]
    out.append("}")
    return "\n".join(out) + "\n"


def spec_to_graphviz(spec: dict, name: str = "autograd"):
    import graphviz

    dg = graphviz.Digraph(name, graph_attr=dict(spec["attrs"]),
                          node_attr={"style": "filled,rounded", "fontname": "Helvetica", "fontsize": str(FONT["node"])},
                          edge_attr={"fontname": "Helvetica", "fontsize": str(FONT["edge"]), "color": "#555555"})
    # reuse the one DOT writer: the Digraph body holds exactly the statements of spec_to_dot
    dg.body.extend(line + "\n" for line in spec_to_dot(spec, name).splitlines()[4:-1])
    return dg


# ----------------------------------------------------------------------------- pictures

DOT_SECONDS = 20.0  # a display gives one layout this long before it tries a more collapsed one
FIT_SECONDS = 30.0  # and stops trying layouts after this long (the best so far is shown): a safety net only


def spec_picture(spec: dict, fmt: str, name: str = "autograd", timeout: float | None = None) -> bytes:
    """Render a spec to svg/png/pdf bytes: with Graphviz's dot when present, else matplotlib."""
    if _deps.dot_available():
        return _deps.run_dot(spec_to_dot(spec, name), fmt, timeout=timeout)
    _deps.warn_no_dot()
    buf = io.BytesIO()
    spec_to_matplotlib(spec).savefig(buf, format=fmt, bbox_inches="tight")
    return buf.getvalue()


def _svg(spec, name):
    return spec_picture(spec, "svg", name)


def _dot(spec, name):
    return spec_to_dot(spec, name).encode()


# suffix -> writer(spec, name) -> bytes. A new output format is one line here.
FORMATS = {"svg": _svg, "png": lambda s, n: spec_picture(s, "png", n), "pdf": lambda s, n: spec_picture(s, "pdf", n),
           "dot": _dot, "gv": _dot}


_SVG_SIZE = re.compile(r'<svg\b[^>]*?\bwidth="([\d.]+)(pt|px)?"[^>]*?\bheight="([\d.]+)(pt|px)?"')
_VIEWBOX = re.compile(r'<svg\b[^>]*?\bviewBox="[-\d.]+[ ,]+[-\d.]+[ ,]+([\d.]+)')
_FONT = re.compile(r'<text\b[^>]*?font-size="([\d.]+)"')


def svg_size(svg: str) -> tuple[float, float, float | None]:
    """(natural width, natural height, smallest text) of an SVG picture, in CSS px (1 pt = 4/3 px)."""
    m = _SVG_SIZE.search(svg)
    if not m:
        return 0.0, 0.0, None
    unit = 4 / 3 if m.group(2) == "pt" else 1.0
    w, h = float(m.group(1)) * unit, float(m.group(3)) * unit
    vb = _VIEWBOX.search(svg)
    per = w / float(vb.group(1)) if vb and float(vb.group(1)) else unit  # px per user unit
    fonts = [float(x) for x in _FONT.findall(svg)]
    return w, h, (min(fonts) * per if fonts else None)


class Fitted:
    """A picture fitted to a column: ``svg`` (it scales down to the column, never above its natural size),
    ``natural`` and ``height`` (px at full size), ``scale`` (drawn / natural), ``text_px`` (its smallest text
    as drawn in the column), ``options`` (the layout chosen), ``tried`` (layouts drawn), ``seconds``."""

    def __init__(self, svg, natural, height, scale, text_px, options, tried, seconds, width):
        self.svg, self.natural, self.height, self.scale, self.text_px = svg, natural, height, scale, text_px
        self.options, self.tried, self.seconds, self.width = options, tried, seconds, width

    @property
    def fits(self) -> bool:
        """Its text is drawn at MIN_TEXT_PX or more and it is at most MAX_HEIGHT_PX tall, in the column."""
        return self.readable(MIN_TEXT_PX)

    def readable(self, px: float) -> bool:
        return (self.text_px is None or self.text_px >= px) and self.height * self.scale <= MAX_HEIGHT_PX

    def __repr__(self) -> str:
        tp = "?" if self.text_px is None else f"{self.text_px:.1f}"
        return (f"<Fitted {self.natural:.0f}x{self.height:.0f} px at {100 * self.scale:.0f}% in {self.width} px, "
                f"text {tp} px, {self.options}, {self.tried} layouts, {self.seconds:.2f} s>")


def _flip(rankdir: str) -> str:
    return "TB" if rankdir in ("LR", "RL") else "LR"


FIT_LIMITS = (100, 60, 36, 20, 10)  # boxes (values, for a Value graph) a display tries, most first


def fit(drawable, width: int = COLUMN, **opts) -> Fitted:
    """The most detailed layout of `drawable` whose text is drawn at COMFORT_PX or more in a column `width`
    px wide (else the most detailed at MIN_TEXT_PX or more, else the one with the largest text). Options the
    caller gives are kept; the others are tried in this order: up to FIT_LIMITS[0] boxes, left to right and
    top to bottom (the drawing's own direction first), then without the saved-tensor notes, then with fewer
    boxes (modules collapsed, chains folded). The picture scales down to the column, never up."""
    t0 = time.perf_counter()
    name = drawable._dot_name
    if not _deps.dot_available():  # the matplotlib fallback: one drawing, scaled to the column
        svg = _svg(drawable._spec(**opts), name).decode("utf-8")
        w, h, _ = svg_size(svg)
        s = min(1.0, width / w) if w else 1.0
        return Fitted(_scalable(svg), w, h, s, None, dict(opts), 1, time.perf_counter() - t0, width)
    best, floor, tried, seen = None, None, 0, set()
    comfort = COMFORT_PX
    for o in _candidates(drawable, opts):
        spec = drawable._spec(**o)
        if any(st.get("kind") == "value" for _, st in spec["nodes"]):
            comfort = MIN_TEXT_PX  # a Value graph draws every value while readable: hiding some costs more
        src = spec_to_dot(spec, name)
        if src in seen:  # a small graph: fewer boxes change nothing
            continue
        seen.add(src)
        try:
            svg = _deps.run_dot(src, "svg", timeout=DOT_SECONDS).decode("utf-8")
        except _deps.DotTimeout:
            continue
        tried += 1
        w, h, font = svg_size(svg)
        s = min(1.0, width / w) if w else 1.0
        got = Fitted(svg, w, h, s, None if font is None else font * s, o, tried, 0.0, width)
        if floor is None and got.fits:
            floor = got  # the most detailed readable one, should nothing be comfortable
        if best is None or got.readable(comfort) or _better(got, best):
            best = got
        if got.readable(comfort) or time.perf_counter() - t0 > FIT_SECONDS:
            break
    if best is not None and not best.readable(comfort) and floor is not None:
        best = floor
    if best is None:
        raise LensValueError(f"Graphviz's dot took over {DOT_SECONDS:.0f} s for every layout of this picture; "
                             "draw a part of it (limit=, depth=) or write it with render(path)")
    best.svg, best.seconds, best.tried = _scalable(best.svg), time.perf_counter() - t0, tried
    return best


def _candidates(drawable, opts: dict) -> list[dict]:
    """The layouts `fit` tries, most detailed first; options the caller gave stay fixed."""
    first = drawable._spec(**opts)["attrs"].get("rankdir", "TB")
    dirs = [opts["rankdir"]] if "rankdir" in opts else [first, _flip(first)]
    saved = [opts["show_saved"]] if "show_saved" in opts else [None, False]
    limits = [None] if ("limit" in opts or "depth" in opts) else list(FIT_LIMITS)
    out = []
    for limit in limits:
        for sv in saved:
            for rd in dirs:
                o = {**opts, "rankdir": rd}
                if limit is not None:
                    o["limit"] = limit
                if sv is not None:
                    o["show_saved"] = sv
                out.append(o)
    return out


def _better(a: Fitted, b: Fitted) -> bool:
    ta, tb = a.text_px or 0.0, b.text_px or 0.0
    if (a.height * a.scale <= MAX_HEIGHT_PX) != (b.height * b.scale <= MAX_HEIGHT_PX):
        return a.height * a.scale <= MAX_HEIGHT_PX
    return ta > tb


def _scalable(svg: str) -> str:
    """The SVG element alone (no XML prolog), drawn at most as wide as its container."""
    svg = re.sub(r"^.*?(?=<svg\b)", "", svg, count=1, flags=re.S)
    return re.sub(r"<svg\b", '<svg style="max-width:100%;height:auto"', svg, count=1)


def picture_html(f: Fitted) -> str:
    """A fitted picture for a notebook's HTML output: scaled to the column, with a line saying so."""
    note = ""
    if f.scale < 0.999:
        note = (f'<div style="font-size:12px;color:#666">drawn at {100 * f.scale:.0f}% of its natural '
                f'{f.natural:.0f} px to fit; .render("graph.svg") writes it at full size</div>')
    return f'<div style="max-width:100%;overflow-x:auto">{f.svg}{note}</div>'


class Drawable:
    """The drawing façade: a class defines ``_spec(**opts)`` (and optionally ``_text_formats`` and
    ``_repr_html_``) and gets to_dot, to_graphviz, to_svg, render and the notebook display."""

    _dot_name = "autograd"
    _what = "a graph"

    def _spec(self, **opts) -> dict:
        raise LensTypeError(f"{type(self).__name__} must define _spec(**opts) to be drawn")

    def _text_formats(self, **opts) -> dict:
        return {}

    def to_dot(self, **opts) -> str:
        """Graphviz DOT source (no dependency needed)."""
        return spec_to_dot(self._spec(**opts), self._dot_name)

    def to_graphviz(self, **opts):
        """A ``graphviz.Digraph`` (shows itself in a notebook when Graphviz's ``dot`` is installed)."""
        return spec_to_graphviz(self._spec(**opts), self._dot_name)

    def to_svg(self, width: int | None = None, **opts) -> str:
        """The picture as SVG text (Graphviz's dot, else matplotlib), at its natural size.

        With `width` (px: the column it will be shown in, e.g. ``render.COLUMN`` = 848 for a JupyterLab
        notebook), the picture fits that column as the notebook display does: the layout (left to right or
        top to bottom), the saved-tensor notes and how much is collapsed are chosen so that its text stays
        readable there, and the SVG scales down to the column.
        """
        if width is not None:
            return fit(self, width, **opts).svg
        return _svg(self._spec(**opts), self._dot_name).decode("utf-8")

    def render(self, path, **opts) -> Path:
        """Write to `path`; the suffix picks the format (svg, png, pdf, dot, and the text formats of the object).

        Raises:
            LensValueError: a suffix that names no format this object can be written in.
        """
        path = Path(path)
        fmt = path.suffix.lower().lstrip(".")
        texts = self._text_formats(**opts)
        if fmt in FORMATS:
            path.write_bytes(FORMATS[fmt](self._spec(**opts), self._dot_name))
        elif fmt in texts:
            path.write_text(texts[fmt](), encoding="utf-8")
        else:
            fmts = [f".{f}" for f in (*FORMATS, *texts) if f != "gv"]
            raise LensValueError(f"cannot write {self._what} to {path.name!r}: use a {', '.join(fmts[:-1])} or "
                                 f"{fmts[-1]} file")
        return path

    def _repr_mimebundle_(self, include=None, exclude=None):
        html = getattr(self, "_repr_html_", None)
        if html is not None:
            return {"text/html": html(), "text/plain": repr(self)}
        f = fit(self, COLUMN)
        return {"text/html": picture_html(f), "image/svg+xml": f.svg, "text/plain": repr(self)}


# ----------------------------------------------------------------------------- matplotlib fallback

def layers(nodes: list, edges: list) -> dict:
    """Longest-path layer of each node from the sources (iterative Kahn order)."""
    indeg = {n: 0 for n in nodes}
    out: dict = {n: [] for n in nodes}
    for u, v in edges:
        if u in indeg and v in indeg:
            indeg[v] += 1
            out[u].append(v)
    layer = {n: 0 for n in nodes}
    ready = [n for n in nodes if indeg[n] == 0]
    while ready:
        u = ready.pop()
        for v in out[u]:
            layer[v] = max(layer[v], layer[u] + 1)
            indeg[v] -= 1
            if indeg[v] == 0:
                ready.append(v)
    return layer


def _flat(spec: dict) -> tuple[list, list]:
    """(cluster title, nodes) groups of a spec, nested clusters flattened."""
    groups, stack = [(spec.get("label") or "", spec["nodes"])], [(c, "") for c in reversed(spec["clusters"])]
    while stack:
        c, up = stack.pop()
        groups.append((c["label"], c["nodes"]))
        stack += [(k, c["label"]) for k in reversed(c.get("clusters", []))]
    return groups, spec["edges"] + [e for c in spec["clusters"] for e in c.get("edges", [])]


def _record_text(label: str) -> str:
    return " | ".join(p.strip() for p in label.strip("{} ").split("|"))


def _port(p, q, half):
    """Where the line from p towards q leaves p's box (`half`: the box's half width and half height)."""
    (x1, y1), (x2, y2), (hw, hh) = p, q, half
    dx, dy = x2 - x1, y2 - y1
    if not dx and not dy:
        return p
    t = min(hw / abs(dx) if dx else math.inf, hh / abs(dy) if dy else math.inf)
    return (x1 + t * dx, y1 + t * dy)


def spec_to_matplotlib(spec: dict):
    """The fallback picture, drawn on a ``matplotlib.figure.Figure`` (the user's backend is left alone):
    a layered drawing with arrowheads on every edge, slot labels, saved tensors beside their node."""
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, Patch

    groups, all_edges = _flat(spec)
    lr = spec["attrs"].get("rankdir") == "LR"
    styles = {n: s for _, ns in groups for n, s in ns}
    main = [n for n, s in styles.items() if s.get("kind") != "saved"]
    graph_edges = [(u, v) for u, v, a in all_edges if a.get("style") != "dashed" and a.get("style") != "invis"]
    lay = layers(main, graph_edges)
    rows: dict = {}
    for n in main:  # nodes of one cluster stay next to each other within a layer
        rows.setdefault(lay[n], []).append(n)
    notes_of: dict = {}
    for n, s in styles.items():
        if s.get("kind") == "saved":
            notes_of.setdefault(s.get("near"), []).append(n)
    def size(n):  # (width, height) of a node's text box, in inches at 8 pt (1 data unit = 1 inch)
        s = styles[n]
        lines = (_record_text(s["label"]) if s.get("shape") == "record" else s["label"]).split("\n")
        return max(len(x) for x in lines) * 0.075 + 0.3, len(lines) * 0.16 + 0.25

    pos, offset, half = {}, 0.0, {}
    for li in sorted(rows):
        slots = []
        for x in rows[li]:
            slots.append(x)
            slots += notes_of.get(x, [])  # saved notes right beside the node that saved them
        sizes = [size(x) for x in slots]
        half.update({x: (w / 2, h / 2) for x, (w, h) in zip(slots, sizes)})
        if lr:  # a column per layer, its boxes stacked
            total = sum(h for _, h in sizes) + 0.2 * (len(slots) - 1)
            y, col = total / 2, max(w for w, _ in sizes)
            for x, (_, h) in zip(slots, sizes):
                pos[x] = (offset + col / 2, y - h / 2)
                y -= h + 0.2
            offset += col + 0.6
        else:  # a row per layer, its boxes side by side
            total = sum(w for w, _ in sizes) + 0.25 * (len(slots) - 1)
            x0, row = -total / 2, max(h for _, h in sizes)
            for x, (w, _) in zip(slots, sizes):
                pos[x] = (x0 + w / 2, -offset - row / 2)
                x0 += w + 0.25
            offset += row + 0.45
    for n in styles:  # notes of nodes not drawn (should not happen): park them on top
        pos.setdefault(n, (0.0, 1.0))
    xs, ys = [p[0] for p in pos.values()], [p[1] for p in pos.values()]
    w = (max(xs, default=0) - min(xs, default=0)) + 2.5
    h = (max(ys, default=0) - min(ys, default=0)) + 1.6
    fig = Figure(figsize=(min(max(6.0, w), 60.0), min(max(3.0, h + 0.8), 60.0)))
    ax = fig.add_subplot()
    n_nodes = len(pos)
    fs = 8 if n_nodes < 60 else 6 if n_nodes < 200 else 4
    artists = {}
    for n, (x, y) in pos.items():
        s = styles[n]
        text = _record_text(s["label"]) if s.get("shape") == "record" else s["label"]
        artists[n] = ax.text(x, y, text, ha="center", va="center", fontsize=fs if s.get("kind") != "saved" else fs - 1,
                             zorder=3, bbox={"boxstyle": "round,pad=0.3", "fc": s.get("fillcolor", "#ffffff"),
                                             "ec": s.get("color", "#444444"), "lw": float(s.get("penwidth", 1)),
                                             "ls": "--" if s.get("kind") == "saved" else "-"})
    for u, v, a in all_edges:
        if u not in pos or v not in pos or a.get("style") == "invis":
            continue
        dashed = a.get("style") == "dashed"
        start = _port(pos[u], pos[v], half.get(u, (0.3, 0.2)))
        arrow = FancyArrowPatch(start, _port(pos[v], pos[u], half.get(v, (0.3, 0.2))),
                                arrowstyle="-" if dashed else "-|>", mutation_scale=10, lw=0.8, zorder=5,
                                shrinkA=0, shrinkB=0, color=a.get("color", "#555555"),
                                linestyle="--" if dashed else "-")
        ax.add_patch(arrow)
        if a.get("label"):
            (x1, y1), (x2, y2) = pos[u], pos[v]
            ax.text((x1 + x2) / 2, (y1 + y2) / 2, a["label"], fontsize=max(fs - 2, 4), color="#444444",
                    ha="center", va="center", zorder=4, bbox={"fc": "white", "ec": "none", "pad": 0.5, "alpha": 0.8})
    titles = [t for t, ns in groups[1:] if t and ns]
    if spec.get("label") or titles:
        lines = [spec.get("label") or ""] + ([f"modules: {', '.join(titles[:12])}"] if titles else [])
        ax.text(0.0, 1.0, "\n".join(x for x in lines if x), transform=ax.transAxes, fontsize=fs, va="bottom")
    handles = [Patch(facecolor=fill, edgecolor=MARK if t.startswith("thick border") else "#444444", label=t)
               for t, fill, _ in legend_items(spec)]
    if spec.get("scale"):
        handles += [Patch(facecolor=c, edgecolor="#444444", label=f"{spec['scale']['what']} {t}")
                    for t, c in scale_stops(spec["scale"])]
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=fs, framealpha=0.9)
    ax.set_xlim(min(xs, default=0) - 1.2, max(xs, default=0) + 1.2)
    ax.set_ylim(min(ys, default=0) - 0.8, max(ys, default=0) + 0.8)
    ax.axis("off")
    fig.suptitle("drawn with matplotlib (Graphviz's dot not found): " + _deps.INSTALL_DOT.split(": ")[0],
                 fontsize=7, color="#777777", x=0.01, ha="left")
    return fig
