"""Pictures and text for a Trace, and the one drawing façade shared by Trace, MirrorReport and GraphDiff.

Everything drawable builds one *drawing spec* (a plain dict: nodes, edges, nested clusters, a legend, notes);
`Drawable` turns it into DOT text, a ``graphviz.Digraph``, SVG/PNG/PDF (Graphviz's ``dot`` or, without it, a
matplotlib drawing) and the notebook display. A new output format is one entry in :data:`FORMATS`.

Colour legend (also drawn in every picture):
    gold        the root (usually the loss)
    light blue  an operation node (a grad_fn, e.g. AddmmBackward0)
    teal        a parameter (AccumulateGrad of a named leaf)
    pale green  an unnamed leaf tensor that requires grad
    purple      a custom autograd.Function or opaque region (torch.compile, hooks)
    pink note   a saved tensor storage (drawn once however many nodes save it); grey = freed,
                red border = stale (changed in place after it was saved)
    grey box    a module collapsed into one box (``depth=`` expands it), or a long chain of nodes
    with grads  nodes coloured by log10 of the gradient's norm: pale blue (small) -> yellow -> red (large)
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

from . import _deps
from .errors import LensTypeError, LensValueError

COLORS = {"root": "#ffd166", "op": "#dbe7f5", "param": "#8fd3cf", "leaf": "#d8f3dc",
          "custom": "#d7c4ea", "saved": "#fde2e4", "freed": "#e5e5e5", "box": "#eeeeee",
          "removed": "#f4a6a6", "added": "#a8e6a3", "changed": "#ffc98b"}
_OPAQUE = ("CompiledFunctionBackward", "BackwardHookFunctionBackward", "CopySlices")
AUTO_LIMIT = 150  # above this many nodes, saved tensors and attributes are hidden unless asked for
BOXES = 60  # a picture shows at most about this many boxes by default (modules collapse, chains fold)
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
    out = {}
    for n, s in sizes.items():
        if s is None:
            continue
        out[n] = COLORS["freed"] if s == 0 else _ramp(0.5 if hi == lo else (math.log10(s) - lo) / (hi - lo))
    return out, (lo, hi)


def _ramp(x: float) -> str:
    for (x0, c0), (x1, c1) in zip(_RAMP, _RAMP[1:]):
        if x <= x1:
            f = (x - x0) / (x1 - x0)
            return "#" + "".join(f"{round(a + (b - a) * f):02x}" for a, b in zip(c0, c1))
    return "#" + "".join(f"{c:02x}" for c in _RAMP[-1][1])


# ----------------------------------------------------------------------------- text

def to_text(trace, *, show_saved: bool = True, show_attrs: bool = False) -> str:
    """An indented tree from the root(s); a node reached again is referenced, not repeated.

    Time and memory are linear in the graph: below 32 levels the indentation starts again (marked
    ``┆N``), so a 100,000-deep chain prints 100,000 short lines.
    """
    g = trace.graph
    lines, seen = [], set()
    stack = [(r, 0, "", "", None) for r in reversed(trace.roots)]
    while stack:
        nid, depth, prefix, branch, via = stack.pop()
        d = g.nodes[nid]
        if depth and not depth % _INDENT:  # start the indentation again
            prefix, branch = "", f"┆{depth} "
        head = f"{prefix}{branch}{nid}"
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
            if d.get("label"):
                extra.append(f"label={d['label']}")
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
               rankdir: str | None = None, legend: bool = True, prefix: str = "", colors: dict | None = None,
               label: str | None = None, depth: int | None = None, grads: bool | None = None,
               limit: int | None = BOXES) -> dict:
    """A neutral drawing description (nodes, edges, clusters) that DOT, graphviz and matplotlib emit.

    Nodes are grouped in clusters by ``module``. When the graph has more than `limit` nodes, modules
    deeper than `depth` levels are collapsed into one box each (``depth=None`` picks the deepest level
    that fits; ``depth=99`` expands all), then (with ``depth=None`` only) long chains fold into one box,
    then only the nodes nearest the root are drawn; a note says what is hidden. ``limit=None`` draws all.
    """
    g = trace.graph
    if is_value_graph(g):
        from .valuegraph import value_spec
        return value_spec(trace, rankdir=rankdir or "LR", legend=legend, prefix=prefix, colors=colors, label=label)
    n = g.number_of_nodes()
    big = n > AUTO_LIMIT
    show_saved = not big if show_saved is None else show_saved
    show_attrs = not big if show_attrs is None else show_attrs
    has_grads = any(d.get("grad") is not None for _, d in g.nodes(data=True))
    grads = has_grads if grads is None else grads and has_grads
    marks = dict(colors or {})  # the caller's colours (a verdict, a diff): a collapsed box shows the worst
    colors = dict(marks)
    scale = None
    if grads:
        gcol, scale = grad_colors(g)
        colors = {**gcol, **colors}
    item, boxes, notes = _collapse(trace, depth, limit)
    hidden_saved = 0
    nodes, edges, storages, placed = [], [], {}, {}
    pindex = {d["param"]: nid for nid, d in g.nodes(data=True) if d["param"] is not None and nid not in item}
    for nid, d in g.nodes(data=True):
        if nid in item:
            hidden_saved += len(d["saved"])
            continue
        kind = node_kind(d)
        lines = [nid, node_title(nid, d) if d["is_leaf"] and d["param"] is None else short_shape(d["shape"])]
        if d["is_root"]:
            lines[0] = f"{lines[0]}  (root)"
        if show_attrs and not d["is_leaf"]:
            lines += _attr_text(d["attrs"])[:4]
        gt = grad_text(d.get("grad")) if grads else None
        if gt:
            lines.append(gt)
        style = {"label": "\n".join(lines), "fillcolor": colors.get(nid, COLORS[kind]),
                 "shape": "box" if not d["is_leaf"] else "ellipse", "kind": kind, "id": prefix + nid}
        if d["is_root"]:
            style["penwidth"] = "2"
        placed[prefix + nid] = d.get("module")
        nodes.append((prefix + nid, style))
        if not show_saved:
            hidden_saved += len(d["saved"])
            continue
        for s in d["saved"]:
            if s["alias"] in pindex:
                target = prefix + pindex[s["alias"]]
            else:
                key = s["storage"] or f"{nid}.{s['name']}"
                target = f"{prefix}saved:{key}"
                if target not in storages:
                    fill = COLORS["freed"] if s["state"] == "freed" else COLORS["saved"]
                    nb = f"{s['storage_nbytes']} B" if s["storage_nbytes"] is not None else s["state"]
                    storages[target] = {"label": f"saved {short_shape(s['shape'])}\n{s['dtype'] or ''} {nb}",
                                        "fillcolor": fill, "shape": "note", "kind": "saved", "fontsize": "9",
                                        "near": prefix + nid}
                    if s["state"] == "stale":
                        storages[target].update(color="red", penwidth="2")
            edges.append((prefix + nid, target, {"label": s["name"] + (" [stale]" if s["state"] == "stale" else ""),
                                                 "style": "dashed", "arrowhead": "none", "fontsize": "8",
                                                 "color": "red" if s["state"] == "stale" else "#b56576"}))
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
        placed[prefix + bid] = b["parent"]
        fill = _worst([marks.get(n) for n in members.get(bid, ())])
        nodes.append((prefix + bid, {"label": b["label"], "fillcolor": fill, "shape": "box3d",
                                     "kind": "box", "id": prefix + bid}))
    if hidden_saved and show_saved:
        notes.append(f"{hidden_saved} saved tensor slots are inside collapsed boxes")
    elif hidden_saved:
        notes.append(f"{hidden_saved} saved tensor slots not drawn (show_saved=True draws them)")
    top, clusters = _clusters(nodes, placed)
    if scale is not None:
        notes.append(f"colour: log10 of the gradient's norm, from {scale[0]:.1f} (pale) to {scale[1]:.1f} (red)")
    text = "\n".join(x for x in [label, *notes] if x)
    spec = {"attrs": {"rankdir": rankdir or "TB", "ranksep": "0.3", "nodesep": "0.25"},
            "nodes": top + sorted(storages.items()), "edges": edges,
            "clusters": clusters, "label": text or None}
    if legend:
        spec["legend"] = _legend(show_saved, {"collapsed module / chain": "box"} if boxes else None)
    return spec


_SEVERITY = (COLORS["removed"], COLORS["changed"], COLORS["added"])  # mismatch/removed, changed, match/added


def _worst(cols: list) -> str:
    present = set(cols)
    return next((c for c in _SEVERITY if c in present), COLORS["box"])


def _collapse(trace, depth, limit) -> tuple[dict, dict, list]:
    """Which nodes hide in which box: (node -> box id, box id -> {label, parent}, notes)."""
    g = trace.graph
    n = g.number_of_nodes()
    if limit is None or (depth is None and n <= limit):
        return {}, {}, []
    mods = {nid: d.get("module") for nid, d in g.nodes(data=True)}
    paths = {nid: m.split(".") for nid, m in mods.items() if m}
    deepest = max((len(p) for p in paths.values()), default=0)

    def grouping(dp):
        grp = {nid: ".".join(p[: dp + 1]) for nid, p in paths.items() if len(p) > dp}
        count: dict = {}
        for k in grp.values():
            count[k] = count.get(k, 0) + 1
        grp = {nid: k for nid, k in grp.items() if count[k] > 1}
        return grp, n - len(grp) + len(set(grp.values()))

    if depth is not None:
        grp, visible = grouping(depth)
    else:
        grp, visible = {}, n
        for dp in range(deepest - 1, -1, -1):
            grp, visible = grouping(dp)
            if visible <= limit:
                break
    item = {nid: "module:" + k for nid, k in grp.items()}
    members: dict = {}
    for nid, b in item.items():
        members.setdefault(b, []).append(nid)
    boxes = {b: {"label": _box_label(b[len("module:"):], ns, g), "parent": _parent(b[len("module:"):])}
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


def _clusters(nodes: list, placed: dict) -> tuple[list, list]:
    """Nest nodes in clusters by module path; returns (top-level nodes, cluster tree)."""
    root = {"label": None, "nodes": [], "clusters": {}}
    for name, style in nodes:
        mod = placed.get(name)
        if not mod:
            root["nodes"].append((name, style))
            continue
        c = root
        parts = mod.split(".")
        for i in range(len(parts)):
            c = c["clusters"].setdefault(".".join(parts[: i + 1]), {"label": ".".join(parts[: i + 1]),
                                                                     "nodes": [], "clusters": {}})
        c["nodes"].append((name, style))

    def finish(c):
        kids = [finish(k) for k in c["clusters"].values()]
        # a level with no nodes of its own and one sub-cluster adds nothing: lift the sub-cluster
        kids = [k["clusters"][0] if not k["nodes"] and len(k["clusters"]) == 1 else k for k in kids]
        return {"label": c["label"], "nodes": c["nodes"], "clusters": kids}

    top = finish(root)
    return top["nodes"], top["clusters"]


def _legend(show_saved: bool, extra: dict | None = None) -> list:
    items = [("root (loss)", "root", "box"), ("operation (grad_fn)", "op", "box"),
             ("parameter", "param", "ellipse"), ("unnamed leaf", "leaf", "ellipse"),
             ("custom / opaque", "custom", "box")]
    if show_saved:
        items.append(("saved tensor", "saved", "note"))
    for name, kind in (extra or {}).items():
        items.append((name, kind, "box"))
    return items


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


def _dot_cluster(c: dict, out: list, counter: list, indent: str) -> None:
    counter[0] += 1
    out.append(f'{indent}subgraph cluster_{counter[0]} {{ label={_q(c["label"])}; style="rounded"; '
               'color="#999999"; fontcolor="#555555";')
    out += [f"{indent}  {_q(n)} {_attrs(a)};" for n, a in c["nodes"]]
    for k in c.get("clusters", ()):
        _dot_cluster(k, out, counter, indent + "  ")
    out.append(f"{indent}}}")


def spec_to_dot(spec: dict, name: str = "autograd") -> str:
    out = [f"digraph {_q(name)} {{"]
    out.append("  " + "; ".join(f"{k}={_q(v)}" for k, v in spec["attrs"].items()) + ";")
    out.append('  node [style="filled,rounded", fontname="Helvetica", fontsize="11"];')
    out.append('  edge [fontname="Helvetica", fontsize="9", color="#555555"];')
    if spec.get("label"):
        out.append(f"  label={_q(spec['label'])}; labelloc=t; labeljust=l; fontsize=\"10\";")
    counter = [-1]
    for c in spec["clusters"]:
        _dot_cluster(c, out, counter, "  ")
    out += [f"  {_q(n)} {_attrs(a)};" for n, a in spec["nodes"]]
    out += [f"  {_q(u)} -> {_q(v)} {_attrs(a)};" for u, v, a in spec["edges"]]
    out += ["  { rank=same; " + " ".join(_q(n) for n in group) + " }" for group in spec.get("same_rank", [])]
    if spec.get("legend"):
        out.append('  subgraph cluster_legend { label="legend"; style=rounded; color="#bbbbbb"; fontsize="10";')
        prev = None
        for i, (text, kind, shape) in enumerate(spec["legend"]):
            out.append(f"    legend{i} [label={_q(text)}, fillcolor={_q(COLORS.get(kind, kind))}, shape={shape}, "
                       'fontsize="9"];')
            if prev is not None:
                out.append(f"    {prev} -> legend{i} [style=invis];")
            prev = f"legend{i}"
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


def spec_to_graphviz(spec: dict, name: str = "autograd"):
    import graphviz

    dg = graphviz.Digraph(name, graph_attr=dict(spec["attrs"]),
                          node_attr={"style": "filled,rounded", "fontname": "Helvetica", "fontsize": "11"},
                          edge_attr={"fontname": "Helvetica", "fontsize": "9", "color": "#555555"})
    # reuse the one DOT writer: the Digraph body holds exactly the statements of spec_to_dot
    dg.body.extend(line + "\n" for line in spec_to_dot(spec, name).splitlines()[4:-1])
    return dg


# ----------------------------------------------------------------------------- pictures

def spec_picture(spec: dict, fmt: str, name: str = "autograd") -> bytes:
    """Render a spec to svg/png/pdf bytes: with Graphviz's dot when present, else matplotlib."""
    if _deps.dot_available():
        return spec_to_graphviz(spec, name).pipe(format=fmt)
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

    def to_svg(self, **opts) -> str:
        """The picture as SVG text (Graphviz's dot, else matplotlib)."""
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
        return {"image/svg+xml": self.to_svg(), "text/plain": repr(self)}


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


def _port(p, q, lr: bool):
    """Where an edge from p towards q leaves p's box (boxes are about 0.5 high, 1.2 wide in data units)."""
    (x1, y1), (x2, y2) = p, q
    if lr:
        return (x1 + (0.75 if x2 > x1 else -0.75 if x2 < x1 else 0), y1 + (0.2 if y2 > y1 else -0.2 if y2 < y1 else 0))
    if y1 == y2:  # side by side (a saved note beside its node)
        return (x1 + (0.6 if x2 > x1 else -0.6), y1)
    return (x1 + (0.3 if x2 > x1 + 0.5 else -0.3 if x2 < x1 - 0.5 else 0), y1 + (0.22 if y2 > y1 else -0.22))


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
    width = max((len(r) + sum(len(notes_of.get(x, ())) for x in r) for r in rows.values()), default=1)
    pos = {}
    for li, row in rows.items():
        slots = []
        for x in row:
            slots.append(x)
            slots += notes_of.get(x, [])  # saved notes right beside the node that saved them
        for i, x in enumerate(slots):
            a, b = li * 1.0, (i - (len(slots) - 1) / 2) * 1.0
            pos[x] = (a * 2.2, -b) if lr else (b * 1.6, -a)
    for n in styles:  # notes of nodes not drawn (should not happen): park them on top
        pos.setdefault(n, (0.0, 1.0))
    depth = max(rows, default=0) + 1
    w, h = (depth * 2.4, width * 0.9) if lr else (width * 1.9, depth * 1.0)
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
        arrow = FancyArrowPatch(_port(pos[u], pos[v], lr), _port(pos[v], pos[u], lr),
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
    if spec.get("legend"):
        handles = [Patch(facecolor=COLORS.get(k, k), edgecolor="#444444", label=t) for t, k, _ in spec["legend"]]
        ax.legend(handles=handles, loc="lower right", fontsize=fs, framealpha=0.9)
    xs, ys = [p[0] for p in pos.values()], [p[1] for p in pos.values()]
    ax.set_xlim(min(xs, default=0) - 1.2, max(xs, default=0) + 1.2)
    ax.set_ylim(min(ys, default=0) - 0.8, max(ys, default=0) + 0.8)
    ax.axis("off")
    fig.suptitle("drawn with matplotlib (Graphviz's dot not found): " + _deps.INSTALL_DOT.split(": ")[0],
                 fontsize=7, color="#777777", x=0.01, ha="left")
    return fig
