"""Renderers for a Trace: text tree, DOT text, graphviz.Digraph, SVG/PNG/PDF, matplotlib fallback.

Colour legend (also drawn in every picture):
    gold        the root (usually the loss)
    light blue  an operation node (a grad_fn, e.g. AddmmBackward0)
    teal        a parameter (AccumulateGrad of a named leaf)
    pale green  an unnamed leaf tensor that requires grad
    purple      a custom autograd.Function or opaque region (torch.compile, hooks)
    pink note   a saved tensor storage (drawn once however many nodes save it); grey = freed,
                red border = stale (changed in place after it was saved)
"""

from __future__ import annotations

import io
from pathlib import Path

from ._deps import INSTALL_DOT, dot_available, warn_no_dot

COLORS = {"root": "#ffd166", "op": "#dbe7f5", "param": "#8fd3cf", "leaf": "#d8f3dc",
          "custom": "#d7c4ea", "saved": "#fde2e4", "freed": "#e5e5e5",
          "removed": "#f4a6a6", "added": "#a8e6a3", "changed": "#ffc98b"}
_OPAQUE = ("CompiledFunctionBackward", "BackwardHookFunctionBackward", "CopySlices")
AUTO_LIMIT = 150  # above this many nodes, saved tensors and attributes are hidden unless asked for


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


# ----------------------------------------------------------------------------- text

def to_text(trace, *, show_saved: bool = True, show_attrs: bool = False) -> str:
    """An indented tree from the root(s); a node reached again is referenced, not repeated."""
    g = trace.graph
    lines, seen = [], set()
    stack = [(r, "", "", None) for r in reversed(trace.roots)]
    while stack:
        nid, prefix, branch, via = stack.pop()
        d = g.nodes[nid]
        head = f"{prefix}{branch}{nid}"
        if d["is_leaf"]:
            head = f"{prefix}{branch}{node_title(nid, d)} {short_shape(d['shape'])}  [leaf: {nid}]"
        if via:
            head += f"  (output {via})"
        if nid in seen:
            lines.append(f"{head}  ↺ shown above")
            continue
        seen.add(nid)
        extra = []
        if not d["is_leaf"]:
            extra.append(short_shape(d["shape"]))
        if d["is_root"]:
            extra.append("ROOT")
        if show_saved and d["saved"]:
            extra.append("saved: " + ", ".join(_saved_text(s) for s in d["saved"]))
        if show_attrs and d["attrs"]:
            extra.append(" ".join(_attr_text(d["attrs"])))
        lines.append(head + ("  " + "  ".join(extra) if extra else ""))
        child_prefix = prefix + ("" if not branch else ("    " if branch.startswith("└") else "│   "))
        kids = sorted(g.out_edges(nid, keys=True, data=True), key=lambda e: e[2])
        for i, (_, v, _k, ed) in reversed(list(enumerate(kids))):
            last = i == len(kids) - 1
            via_nr = ed["input_nr"] if len(g.nodes[v]["outputs"]) > 1 else None
            stack.append((v, child_prefix, "└── " if last else "├── ", via_nr))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- drawing spec

def trace_spec(trace, *, show_saved: bool | None = None, show_attrs: bool | None = None,
               rankdir: str = "TB", legend: bool = True, prefix: str = "", colors: dict | None = None,
               label: str | None = None) -> dict:
    """A neutral drawing description (nodes, edges, clusters) that DOT, graphviz and matplotlib emit."""
    g = trace.graph
    big = g.number_of_nodes() > AUTO_LIMIT
    show_saved = not big if show_saved is None else show_saved
    show_attrs = not big if show_attrs is None else show_attrs
    colors = colors or {}
    nodes, edges, storages = [], [], {}
    pindex = {d["param"]: n for n, d in g.nodes(data=True) if d["param"] is not None}
    for nid, d in g.nodes(data=True):
        kind = node_kind(d)
        lines = [node_title(nid, d)] + ([] if d["is_leaf"] and d["param"] is None else [short_shape(d["shape"])])
        if d["is_root"]:
            lines[0] = f"{lines[0]}  (root)"
        if show_attrs and not d["is_leaf"]:
            lines += _attr_text(d["attrs"])[:4]
        style = {"label": "\n".join(lines), "fillcolor": colors.get(nid, COLORS[kind]),
                 "shape": "box" if not d["is_leaf"] else "ellipse", "kind": kind}
        if d["is_root"]:
            style["penwidth"] = "2"
        nodes.append((prefix + nid, style))
        if show_saved:
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
                                            "fillcolor": fill, "shape": "note", "kind": "saved",
                                            "fontsize": "9"}
                        if s["state"] == "stale":
                            storages[target].update(color="red", penwidth="2")
                edges.append((prefix + nid, target, {"label": s["name"] + (" [stale]" if s["state"] == "stale"
                                                                          else ""), "style": "dashed",
                                                     "color": "red" if s["state"] == "stale" else "#b56576",
                                                     "arrowhead": "none",
                                                     "fontsize": "8"}))
    for u, v, k, ed in sorted(g.edges(keys=True, data=True), key=lambda e: (e[0], e[2])):
        edges.append((prefix + u, prefix + v, {"slot": k}))
    spec = {"attrs": {"rankdir": rankdir}, "nodes": nodes + sorted(storages.items()), "edges": edges,
            "clusters": [], "label": label}
    if legend:
        spec["legend"] = _legend(show_saved)
    return spec


def _legend(show_saved: bool, extra: dict | None = None) -> list:
    items = [("root (loss)", "root", "box"), ("operation (grad_fn)", "op", "box"),
             ("parameter", "param", "ellipse"), ("unnamed leaf", "leaf", "ellipse"),
             ("custom / opaque", "custom", "box")]
    if show_saved:
        items.append(("saved tensor", "saved", "note"))
    for name, kind in (extra or {}).items():
        items.append((name, kind, "box"))
    return items


# ----------------------------------------------------------------------------- emitters

def _q(s: str) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(d: dict) -> str:
    d = {k: v for k, v in d.items() if k not in ("kind", "slot")}
    return "[" + ", ".join(f"{k}={_q(v)}" for k, v in d.items()) + "]" if d else ""


def spec_to_dot(spec: dict, name: str = "autograd") -> str:
    out = [f"digraph {_q(name)} {{"]
    out.append("  " + "; ".join(f"{k}={_q(v)}" for k, v in spec["attrs"].items()) + ";")
    out.append('  node [style="filled,rounded", fontname="Helvetica", fontsize="11"];')
    out.append('  edge [fontname="Helvetica", fontsize="9", color="#555555"];')
    if spec.get("label"):
        out.append(f"  label={_q(spec['label'])}; labelloc=t;")
    for i, c in enumerate(spec["clusters"]):
        out.append(f"  subgraph cluster_{i} {{ label={_q(c['label'])}; style=rounded; color=\"#999999\";")
        out += [f"    {_q(n)} {_attrs(a)};" for n, a in c["nodes"]]
        out.append("  }")
    out += [f"  {_q(n)} {_attrs(a)};" for n, a in spec["nodes"]]
    out += [f"  {_q(u)} -> {_q(v)} {_attrs(a)};" for u, v, a in spec["edges"]]
    out += ["  { rank=same; " + " ".join(_q(n) for n in group) + " }" for group in spec.get("same_rank", [])]
    if spec.get("legend"):
        out.append('  subgraph cluster_legend { label="legend"; style=rounded; color="#bbbbbb"; fontsize="10";')
        prev = None
        for i, (text, kind, shape) in enumerate(spec["legend"]):
            out.append(f"    legend{i} [label={_q(text)}, fillcolor={_q(COLORS[kind])}, shape={shape}, "
                       'fontsize="9"];')
            if prev is not None:
                out.append(f"    {prev} -> legend{i} [style=invis];")
            prev = f"legend{i}"
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


def spec_to_graphviz(spec: dict, name: str = "autograd"):
    try:
        import graphviz
    except ImportError:  # pragma: no cover - graphviz is a dependency
        raise ImportError("to_graphviz() needs the `graphviz` Python package: pip install graphviz") from None
    return _digraph(graphviz, spec, name)


def _digraph(graphviz, spec, name):
    dg = graphviz.Digraph(name, graph_attr=dict(spec["attrs"]),
                          node_attr={"style": "filled,rounded", "fontname": "Helvetica", "fontsize": "11"},
                          edge_attr={"fontname": "Helvetica", "fontsize": "9", "color": "#555555"})
    # reuse the one DOT writer: the Digraph body holds exactly the statements of spec_to_dot
    body = spec_to_dot(spec, name).splitlines()[4:-1]
    dg.body.extend(line + "\n" for line in body)
    return dg


def to_dot(trace, **opts) -> str:
    """DOT text for the graph (no dependency needed). Options as in :func:`trace_spec`."""
    return spec_to_dot(trace_spec(trace, **opts))


def to_graphviz(trace, **opts):
    """A ``graphviz.Digraph`` of the graph."""
    return spec_to_graphviz(trace_spec(trace, **opts))


# ----------------------------------------------------------------------------- pictures

def spec_picture(spec: dict, fmt: str) -> bytes:
    """Render a spec to svg/png/pdf bytes: with Graphviz's dot when present, else matplotlib."""
    if dot_available():
        return spec_to_graphviz(spec).pipe(format=fmt)
    warn_no_dot()
    fig = spec_to_matplotlib(spec)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return buf.getvalue()


def to_svg(trace, **opts) -> str:
    return spec_picture(trace_spec(trace, **opts), "svg").decode("utf-8")


def save(path, what: str, spec, *, name: str = "autograd", **writers) -> Path:
    """Write `path` by its suffix: svg/png/pdf (the picture of ``spec()``), dot, or one of `writers`
    (suffix -> function returning the text, e.g. txt=..., json=..., html=...)."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt in ("svg", "png", "pdf"):
        path.write_bytes(spec_picture(spec(), fmt))
    elif fmt in ("dot", "gv"):
        path.write_text(spec_to_dot(spec(), name))
    elif fmt in writers:
        path.write_text(writers[fmt](), encoding="utf-8")
    else:
        fmts = [f".{f}" for f in ("svg", "png", "pdf", "dot", *writers)]
        raise ValueError(f"cannot write {what} to {path.name!r}: use a {', '.join(fmts[:-1])} or {fmts[-1]} file")
    return path


def render(trace, path, **opts) -> Path:
    """Write `trace` to `path`; the suffix picks the format: svg, png, pdf, dot, json, txt."""
    return save(path, "a trace", lambda: trace_spec(trace, **opts), json=lambda: trace.to_json(indent=1),
                txt=lambda: to_text(trace) + "\n")


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


def spec_to_matplotlib(spec: dict):
    """The fallback picture: a layered drawing with matplotlib (no Graphviz needed)."""
    import matplotlib
    if matplotlib.get_backend().lower() not in ("agg", "svg", "pdf", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    groups = [(spec.get("label") or "", spec["nodes"], spec["edges"])]
    groups += [(c["label"], c["nodes"], []) for c in spec["clusters"]]
    all_edges = spec["edges"] + [e for c in spec["clusters"] for e in c.get("edges", [])]
    pos, styles, x0, max_layer, titles = {}, {}, 0.0, 0, []
    for title, nodes, _ in groups:
        if not nodes:
            continue
        titles.append((x0, title))
        names = [n for n, _ in nodes]
        styles.update(dict(nodes))
        lay = layers(names, [(u, v) for u, v, a in all_edges if a.get("style") != "dashed"])
        rows: dict = {}
        for n in names:
            rows.setdefault(lay[n], []).append(n)
        width = max(len(r) for r in rows.values())
        for li, row in rows.items():
            for i, n in enumerate(row):
                pos[n] = (x0 + (i - (len(row) - 1) / 2) * 1.0 + width / 2, -li)
        max_layer = max(max_layer, max(rows))
        x0 += width + 1.5
    fw, fh = min(max(6.0, 1.9 * x0), 80.0), min(max(3.0, 1.0 * (max_layer + 1)), 80.0)
    fig, ax = plt.subplots(figsize=(fw, fh))
    fs = 8 if len(pos) < 60 else 6 if len(pos) < 200 else 4
    for u, v, a in all_edges:
        if u in pos and v in pos:
            (x1, y1), (x2, y2) = pos[u], pos[v]
            ax.annotate("", xy=(x2, y2 + 0.18), xytext=(x1, y1 - 0.18),
                        arrowprops={"arrowstyle": "-" if a.get("style") == "dashed" else "->",
                                    "color": a.get("color", "#666666"), "lw": 0.7,
                                    "linestyle": "--" if a.get("style") == "dashed" else "-"})
    for n, (x, y) in pos.items():
        s = styles[n]
        ax.text(x, y, s["label"], ha="center", va="center", fontsize=fs,
                bbox={"boxstyle": "round,pad=0.3", "fc": s.get("fillcolor", "#ffffff"),
                      "ec": s.get("color", "#444444"), "lw": float(s.get("penwidth", 1))})
    for x, title in titles:
        if title:
            ax.text(x + 0.2, 0.7, title, fontsize=fs + 2, weight="bold")
    if spec.get("legend"):
        handles = [matplotlib.patches.Patch(facecolor=COLORS[k], edgecolor="#444444", label=t)
                   for t, k, _ in spec["legend"]]
        ax.legend(handles=handles, loc="upper right", fontsize=fs, framealpha=0.9)
    ax.set_xlim(-1, x0 + 0.5)
    ax.set_ylim(-max_layer - 1, 1.2)
    ax.axis("off")
    ax.set_title("drawn with matplotlib (Graphviz's dot not found): " + INSTALL_DOT.split(": ")[0],
                 fontsize=7, color="#777777", loc="left")
    return fig
